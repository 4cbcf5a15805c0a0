//! What hyper and tokio alone cost a 429, or a proxied request: the floors under the
//! gateway's rejected and allowed traffic.
//!
//! `cargo run --release -p ratewarden --example hyper_floor -- --listen 127.0.0.1:PORT
//! [--server http1|http1-timeout|auto]` answers every request with the gateway's 429
//! for one rule named `bench` (1 per minute, burst 1) at its longest wait: the same
//! status line, headers and body, with values that never change (the gateway's wait
//! counts down from 60 s, and below 10 s its five numbers are a digit shorter). It
//! does nothing else: no path, no client address, no limiter, no metrics.
//!
//! It is served as the gateway serves: one thread per core, each with its own
//! single-threaded runtime and `SO_REUSEPORT` listener, `TCP_NODELAY`, mimalloc, the
//! headers cloned from a map built once per thread. With `--server http1`, by hyper's
//! HTTP/1 connection alone; `http1-timeout` adds a header-read timeout on tokio's timer;
//! with `--server auto` (the default), the same through hyper-util's automatic HTTP/1
//! and h2c connection, as the gateway does. The gateway's limits on header size and
//! count and its HTTP/2 settings are left out, and its own header timer is cheaper than
//! tokio's.
//!
//! With `--upstream ADDRESS`, it is the floor under allowed traffic instead: every
//! request is passed, as it came, to the upstream at ADDRESS over HTTP/1.1 keep-alive
//! connections that each thread keeps in its own pool (a lease is a pop and a push, as
//! the gateway's), and the upstream's answer comes back as it came, its body streamed.
//! No header is removed or added and no timeout runs upstream: it is hyper's server and
//! client alone, which is less than a proxy must do.
//!
//! `FLOOR=1` loads it in `scripts/bench-gateway.sh` (beside nginx's `limit_req` and the
//! gateway) and counts it in `scripts/bench-instructions.sh`.
#![allow(missing_docs)]

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

// The gateway's allocator, so that the floor's allocations cost what the gateway's do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = concat!(
    r#"{"type":"https://ratewarden.dev/problems/rate-limited","title":"Too Many Requests","#,
    r#""status":429,"detail":"rate limit \"bench\" exceeded; retry in 60 s","#,
    r#""error":"rate_limited","rule":"bench","retry_after":60,"violated-policies":["bench"]}"#,
);

const HEADERS: [(&str, &str); 7] = [
    ("content-type", "application/problem+json"),
    ("retry-after", "60"),
    ("ratelimit-policy", "\"bench\";q=1;w=60"),
    ("ratelimit", "\"bench\";r=0;t=60"),
    ("x-ratelimit-limit", "1"),
    ("x-ratelimit-remaining", "0"),
    ("x-ratelimit-reset", "60"),
];

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Http1,
    Http1Timeout,
    Auto,
}

const USAGE: &str =
    "usage: hyper_floor --listen ADDRESS [--server http1|http1-timeout|auto] [--upstream ADDRESS]";

fn main() -> std::io::Result<()> {
    let mut listen: Option<SocketAddr> = None;
    let mut server = Server::Auto;
    let mut upstream: Option<SocketAddr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(address)) => listen = address.parse().ok(),
            ("--upstream", Some(address)) => {
                upstream = Some(address.parse().unwrap_or_else(|_| {
                    eprintln!("{USAGE}");
                    std::process::exit(2);
                }));
            }
            ("--server", Some(kind)) => {
                server = match kind.as_str() {
                    "http1" => Server::Http1,
                    "http1-timeout" => Server::Http1Timeout,
                    "auto" => Server::Auto,
                    _ => {
                        eprintln!("{USAGE}");
                        std::process::exit(2);
                    }
                }
            }
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let Some(listen) = listen else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let listener = reuseport_listener(listen)?;
                    match upstream {
                        Some(upstream) => proxy_loop(listener, upstream).await,
                        None => accept_loop(listener, server).await,
                    }
                })
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| std::io::Error::other("a worker panicked"))??;
    }
    Ok(())
}

fn reuseport_listener(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

async fn accept_loop(listener: tokio::net::TcpListener, server: Server) -> std::io::Result<()> {
    let mut template = HeaderMap::with_capacity(HEADERS.len());
    for (name, value) in HEADERS {
        template.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    if server == Server::Http1Timeout {
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let template = template.clone();
        let service = service_fn(move |_request| {
            let mut response = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            *response.headers_mut() = template.clone();
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let io = TokioIo::new(stream);
        match server {
            Server::Http1 | Server::Http1Timeout => {
                tokio::spawn(http1.serve_connection(io, service));
            }
            Server::Auto => {
                let auto = auto.clone();
                tokio::spawn(async move {
                    let _ = auto.serve_connection_with_upgrades(io, service).await;
                });
            }
        }
    }
}

/// One thread's idle connections to the upstream, newest last.
type Idle = Arc<Mutex<Vec<SendRequest<Incoming>>>>;

/// Serves as `accept_loop` does with `--server auto`, passing every request upstream.
async fn proxy_loop(
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    let idle: Idle = Arc::default();
    let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let idle = idle.clone();
        let service = service_fn(move |request| forward(request, upstream, idle.clone()));
        let auto = auto.clone();
        tokio::spawn(async move {
            let _ = auto
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `request` sent on an idle connection still open, else on a new one.
async fn forward(
    request: Request<Incoming>,
    upstream: SocketAddr,
    idle: Idle,
) -> Result<Response<PooledBody>, Box<dyn std::error::Error + Send + Sync>> {
    let taken = std::iter::from_fn(|| idle.lock().pop()).find(|sender| sender.is_ready());
    let mut sender = match taken {
        Some(sender) => sender,
        None => {
            let stream = tokio::net::TcpStream::connect(upstream).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            sender
        }
    };
    let response = sender.send_request(request).await?;
    Ok(response.map(|inner| {
        let mut body = PooledBody {
            inner,
            lease: Some((sender, idle)),
        };
        body.release_if_ended();
        body
    }))
}

/// The upstream's body, streamed; its connection goes back to the pool once it ends.
struct PooledBody {
    inner: Incoming,
    lease: Option<(SendRequest<Incoming>, Idle)>,
}

impl PooledBody {
    fn release_if_ended(&mut self) {
        if self.inner.is_end_stream() {
            if let Some((sender, idle)) = self.lease.take() {
                if sender.is_ready() {
                    idle.lock().push(sender);
                }
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if frame.is_ready() {
            self.release_if_ended();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
