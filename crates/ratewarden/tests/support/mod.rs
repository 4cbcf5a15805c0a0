//! Test harness: free ports, a real upstream, the real gateway binary, and a raw HTTP/1.1
//! client that can speak from any 127.x.y.z address.
#![allow(dead_code, clippy::disallowed_methods)] // tests measure wall time with Instant

use http_body_util::{Either, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;

/// A gateway config on these ports with short timeouts (header 1 s, upstream 2 s,
/// connect 1 s) and at most 50 headers; `extra` goes on in `[server]` or after it.
pub fn config(listen: u16, upstream: u16, admin: u16, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{listen}"
upstream = "http://127.0.0.1:{upstream}"
admin_listen = "127.0.0.1:{admin}"
header_timeout = "1s"
upstream_timeout = "2s"
upstream_connect_timeout = "1s"
max_headers = 50
{extra}
"#
    )
}

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A port nobody listens on right now, and never handed out before by this process
/// (tests run in parallel: two gateways must not be given one port).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut given = GIVEN.get_or_init(Mutex::default).lock().expect("ports");
        if given.insert(port) {
            return port;
        }
    }
}

/// Polls `condition` every 10 ms until it holds; fails with `what` after `within`.
pub fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ratewarden-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// An upstream API that answers 200 to everything and remembers what it saw.
pub struct Upstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub forwarded_for: Option<String>,
    pub header_names: Vec<String>,
    pub content_length: bool,
    pub chunked: bool,
}

/// A response body that sends one chunk and then never anything again.
struct StallBody {
    sent: bool,
}

impl hyper::body::Body for StallBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.sent {
            return std::task::Poll::Pending;
        }
        self.sent = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            b"partial",
        )))))
    }
}

/// Serves HTTP/1.1 with `handle` on a free loopback port, on the shared runtime;
/// returns the port.
fn serve<F, Fut, B>(handle: F) -> u16
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, std::convert::Infallible>>
        + Send
        + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = runtime()
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    runtime().spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
    port
}

impl Upstream {
    pub fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let port = serve(move |req: Request<hyper::body::Incoming>| {
            let h = req.headers();
            let seen = Seen {
                path: req.uri().to_string(),
                forwarded_for: h
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                header_names: h.keys().map(|name| name.as_str().to_owned()).collect(),
                content_length: h.contains_key("content-length"),
                chunked: h
                    .get("transfer-encoding")
                    .is_some_and(|v| v.as_bytes().ends_with(b"chunked")),
            };
            if let Ok(mut log) = log.lock() {
                log.push(seen);
            }
            let body = format!("upstream saw {}", req.uri());
            // /slow/N: answer after N milliseconds.
            let pause = req
                .uri()
                .path()
                .strip_prefix("/slow/")
                .and_then(|ms| ms.parse::<u64>().ok());
            // /stall: headers and a first chunk, then nothing, ever.
            let stall = req.uri().path() == "/stall";
            // /status/N: answer with status N.
            let status = req
                .uri()
                .path()
                .strip_prefix("/status/")
                .and_then(|n| hyper::StatusCode::from_bytes(n.as_bytes()).ok());
            async move {
                if let Some(ms) = pause {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let body = if stall {
                    Either::Right(StallBody { sent: false })
                } else {
                    Either::Left(Full::new(Bytes::from(body)))
                };
                let mut response = Response::new(body);
                if let Some(status) = status {
                    *response.status_mut() = status;
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        Upstream { port, seen }
    }

    /// Requests received.
    pub fn requests(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// The `X-Forwarded-For` of the last request.
    pub fn last_forwarded_for(&self) -> Option<String> {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.last().and_then(|r| r.forwarded_for.clone()))
    }

    /// The header names of the last request.
    pub fn last_header_names(&self) -> Vec<String> {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.last().map(|r| r.header_names.clone()))
            .unwrap_or_default()
    }

    /// Paths received.
    pub fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|s| s.iter().map(|r| r.path.clone()).collect())
            .unwrap_or_default()
    }

    /// No request came with both a length and chunked encoding.
    pub fn saw_no_content_length_with_chunked(&self) -> bool {
        self.seen
            .lock()
            .map(|s| !s.iter().any(|r| r.content_length && r.chunked))
            .unwrap_or(false)
    }
}

/// A response as parsed from the wire.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The `ratewarden serve` process.
pub struct Gateway {
    log: PathBuf,
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

fn address_of(config: &str, key: &str) -> SocketAddr {
    config
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix(key).map(|v| {
                v.trim()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"')
                    .to_owned()
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in config"))
}

impl Gateway {
    /// Starts the binary with this configuration and waits until it listens.
    pub fn start(config: &str) -> Gateway {
        Gateway::start_with(config, &[])
    }

    /// Starts the binary with this configuration and extra `serve` arguments.
    pub fn start_with(config: &str, args: &[&str]) -> Gateway {
        let dir = temp_dir();
        let path = dir.join("ratewarden.toml");
        std::fs::write(&path, config).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_ratewarden"))
            .args(["serve", "--config"])
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("log file"))
            .spawn()
            .expect("start ratewarden");
        let gateway = Gateway {
            log: dir.join("stderr.log"),
            child,
            listen: address_of(config, "listen"),
            admin: address_of(config, "admin_listen"),
            config: path,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(gateway.listen).is_err()
            || std::net::TcpStream::connect(gateway.admin).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "gateway did not start listening on {} and {}; its log:\n{}",
                gateway.listen,
                gateway.admin,
                gateway.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gateway
    }

    /// Everything the gateway has logged so far (stderr, RUST_LOG=info).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends raw bytes from `source` and returns everything the gateway answered.
    pub fn raw(&self, source: &str, request: &[u8]) -> String {
        let target = self.listen;
        let source: SocketAddr = format!("{source}:0").parse().expect("source");
        let request = request.to_vec();
        runtime().block_on(async move {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.bind(source).expect("bind source");
            let mut stream = socket.connect(target).await.expect("connect");
            stream.write_all(&request).await.expect("write");
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        })
    }

    /// A GET from `source` with extra headers.
    pub fn get(&self, source: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
        for (n, v) in headers {
            request.push_str(&format!("{n}: {v}\r\n"));
        }
        request.push_str("\r\n");
        parse(&self.raw(source, request.as_bytes()))
    }

    /// Opens a connection from `source` and sends a request head one byte every `pace`,
    /// never finishing; returns how long until the gateway closed it.
    pub fn slow_header(&self, source: &str, pace: Duration) -> std::thread::JoinHandle<Duration> {
        let target = self.listen;
        let source: SocketAddr = format!("{source}:0").parse().expect("source");
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let socket = TcpSocket::new_v4().expect("socket");
                socket.bind(source).expect("bind");
                let mut stream = socket.connect(target).await.expect("connect");
                let started = Instant::now();
                for byte in b"GET /api/v1/users HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter().cycle().take(40) {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return started.elapsed();
                    }
                    tokio::time::sleep(pace).await;
                    let mut buf = [0u8; 1];
                    if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
                        return started.elapsed();
                    }
                }
                started.elapsed()
            })
        })
    }

    /// A request to the admin port, with a bearer token and a JSON body if given.
    pub fn admin(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
        let admin = self.admin;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str("\r\n");
        request.push_str(body);
        let text = runtime().block_on(async move {
            let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        });
        parse(&text)
    }

    /// The admin port's `/metrics` text.
    pub fn metrics(&self) -> String {
        let admin = self.admin;
        let text = runtime().block_on(async move {
            let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        });
        parse(&text).body
    }

    /// Replaces the configuration file.
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("rewrite config");
    }

    /// Where the gateway listens.
    pub fn address(&self) -> SocketAddr {
        self.listen
    }

    /// A blocking connection to the gateway from `source` (a 127.x.y.z address).
    pub fn connect_from(&self, source: &str) -> std::net::TcpStream {
        let target = self.listen;
        let source: SocketAddr = format!("{source}:0").parse().expect("source");
        let stream = runtime().block_on(async move {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.bind(source).expect("bind source");
            socket.connect(target).await.expect("connect")
        });
        let stream = stream.into_std().expect("std stream");
        stream.set_nonblocking(false).expect("blocking");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
    }

    /// Sends a signal (`TERM`, `HUP`...) without waiting for its effect.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "gateway did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `f` on the shared test runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        runtime().block_on(f)
    }

    /// Sends SIGHUP and waits until the gateway has counted the reload.
    pub fn reload(&self) {
        let reloads = |m: String| -> usize {
            m.lines()
                .filter(|l| l.starts_with("ratewarden_config_reloads_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
                .sum()
        };
        let before = reloads(self.metrics());
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
        eventually("reload not seen", Duration::from_secs(10), || {
            reloads(self.metrics()) > before
        });
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// One request a [`Receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP receiver on loopback (a webhook endpoint, a Sentry ingestion endpoint) that
/// records every request and answers `status` after `delay`.
pub struct Receiver {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(status: u16, delay: Duration) -> Receiver {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let port = serve(move |req: Request<hyper::body::Incoming>| {
            let log = log.clone();
            async move {
                use http_body_util::BodyExt;
                let path = req.uri().to_string();
                let headers = req
                    .headers()
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_default();
                if let Ok(mut log) = log.lock() {
                    log.push(Received {
                        path,
                        headers,
                        body,
                    });
                }
                tokio::time::sleep(delay).await;
                let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        Receiver { port, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The alerts a webhook received, in order, from every POST's `{"alerts": [...]}`.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.received()
            .iter()
            .flat_map(|r| {
                let body: serde_json::Value =
                    serde_json::from_slice(&r.body).expect("a JSON webhook body");
                body["alerts"]
                    .as_array()
                    .unwrap_or_else(|| panic!("not {{\"alerts\": [...]}}: {body}"))
                    .clone()
            })
            .collect()
    }
}

/// The one password [`LoginApp`] accepts.
pub const GOOD_PASSWORD: &str = "correct-horse-battery";

/// A login API: `username` and `password` from a JSON or form body; 200 for
/// [`GOOD_PASSWORD`], 401 for any other, 400 for a body it cannot read. It remembers
/// what it saw and answers after `pause` (to let attempts overlap).
pub struct LoginApp {
    pub port: u16,
    seen: Arc<Mutex<Vec<LoginSeen>>>,
}

/// What the login API saw of one request.
#[derive(Clone, Debug)]
pub struct LoginSeen {
    pub path: String,
    pub body_len: usize,
    pub username: Option<String>,
    pub challenge: Option<String>,
    /// Its `X-Forwarded-For`, when it had one.
    pub forwarded_for: Option<String>,
}

impl LoginApp {
    pub fn start(pause: Duration) -> LoginApp {
        use http_body_util::BodyExt;
        let seen: Arc<Mutex<Vec<LoginSeen>>> = Arc::default();
        let log = seen.clone();
        let port = serve(move |req: Request<hyper::body::Incoming>| {
            let log = log.clone();
            async move {
                let path = req.uri().path().to_owned();
                let challenge = req
                    .headers()
                    .get("x-ratewarden-challenge")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let forwarded_for = req
                    .headers()
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let json = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        Some((
                            v.get("username")?.as_str()?.to_owned(),
                            v.get("password")?.as_str()?.to_owned(),
                        ))
                    });
                // Form bodies as the tests write them: plain `name=value&...`.
                let form = || {
                    let text = std::str::from_utf8(&body).ok()?;
                    let field = |name: &str| {
                        text.split('&')
                            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
                            .map(str::to_owned)
                    };
                    Some((field("username")?, field("password")?))
                };
                let fields = json.or_else(form);
                if let Ok(mut log) = log.lock() {
                    log.push(LoginSeen {
                        path,
                        body_len: body.len(),
                        username: fields.as_ref().map(|f| f.0.clone()),
                        challenge,
                        forwarded_for,
                    });
                }
                tokio::time::sleep(pause).await;
                let status = match &fields {
                    Some((_, password)) if password == GOOD_PASSWORD => 200,
                    Some(_) => 401,
                    None => 400,
                };
                let mut response =
                    Response::new(Full::new(Bytes::from(format!("{{\"status\":{status}}}"))));
                *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        LoginApp { port, seen }
    }

    pub fn seen(&self) -> Vec<LoginSeen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Gateway {
    /// A POST from `source` with a body of `content_type`, and extra headers.
    pub fn post(
        &self,
        source: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            request.push_str(&format!("{n}: {v}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        parse(&self.raw(source, &bytes))
    }

    /// A JSON login from `source`.
    pub fn login(&self, source: &str, username: &str, password: &str) -> Reply {
        let body = serde_json::json!({ "username": username, "password": password });
        self.post(
            source,
            "/api/v1/auth/login",
            "application/json",
            body.to_string().as_bytes(),
            &[],
        )
    }
}
