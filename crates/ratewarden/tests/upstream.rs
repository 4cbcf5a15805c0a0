//! The real binary between clients and bare upstreams whose connections misbehave:
//! keep-alive kept and bounded, connections the upstream closes, requests lost with
//! them, uploads still in progress, hop-by-hop headers in both directions.

mod support;

use std::time::Duration;
use support::{config, eventually, free_port, Gateway};

/// When a [`RawUpstream`] closes a connection.
#[derive(Clone, Copy, PartialEq)]
enum Closing {
    /// When the gateway does.
    Never,
    /// Right after its first answer.
    AfterAnswer,
    /// On reading a second request, unanswered: an upstream whose idle timeout or
    /// restart closed the connection while the gateway was sending on it.
    OnSecondRequest,
}

/// A bare HTTP/1.1 upstream that answers every request head with `answer` at once,
/// without reading any request body (as an API refusing an upload early does), on a
/// keep-alive connection closed as `closing` says. Counts connections opened and
/// closed, keeps request heads.
struct RawUpstream {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RawUpstream {
    fn start(answer: &'static [u8], closing: Closing) -> RawUpstream {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let upstream = RawUpstream {
            port,
            connections: Default::default(),
            closed: Default::default(),
            heads: Default::default(),
        };
        let (connections, closed, heads) = (
            upstream.connections.clone(),
            upstream.closed.clone(),
            upstream.heads.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                let (closed, heads) = (closed.clone(), heads.clone());
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    let mut buffer = [0u8; 4096];
                    let mut answered = 0;
                    while let Ok(n @ 1..) = stream.read(&mut buffer) {
                        pending.extend_from_slice(&buffer[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = pending.drain(..end + 4).collect();
                            heads
                                .lock()
                                .expect("heads")
                                .push(String::from_utf8_lossy(&head).to_lowercase());
                            let hang_up = closing == Closing::OnSecondRequest && answered == 1;
                            if hang_up
                                || stream.write_all(answer).is_err()
                                || closing == Closing::AfterAnswer
                            {
                                drop(stream);
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            answered += 1;
                        }
                    }
                    drop(stream);
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        upstream
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn upstream_connections_are_kept_alive_and_one_the_upstream_closed_costs_no_request() {
    // Kept alive: many requests need no more connections than the gateway has workers.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let upstream = RawUpstream::start(OK, Closing::Never);
    let gw = Gateway::start(&config(free_port(), upstream.port, free_port(), ""));
    for _ in 0..5 * workers {
        assert_eq!(gw.get("127.0.0.2", "/api/items", &[]).status, 200);
    }
    let opened = upstream.connections();
    assert!(
        (1..=workers).contains(&opened),
        "{opened} upstream connections for {} requests and {workers} workers",
        5 * workers
    );
    drop(gw);

    // Closed by the upstream after each answer: every next request finds its pooled
    // connection closed (or closing as it is taken) and goes through on a new one
    // instead of failing with a 502.
    let upstream = RawUpstream::start(OK, Closing::AfterAnswer);
    let gw = Gateway::start(&config(free_port(), upstream.port, free_port(), ""));
    for i in 0..6 {
        let reply = gw.get("127.0.0.3", "/api/items", &[]);
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        eventually(
            "the upstream closed its connection",
            Duration::from_secs(5),
            || upstream.closed() > i,
        );
    }
    assert_eq!(upstream.connections(), 6);
    let metrics = gw.metrics();
    assert!(
        !metrics.contains("ratewarden_upstream_errors_total{"),
        "{metrics}"
    );
}

#[test]
fn upstream_keepalive_settings_bound_the_idle_connections() {
    // None kept: every request opens its own connection, closed after its answer.
    let upstream = RawUpstream::start(OK, Closing::Never);
    let gw = Gateway::start(&config(
        free_port(),
        upstream.port,
        free_port(),
        "upstream_keepalive = 0",
    ));
    for i in 0..4 {
        assert_eq!(gw.get("127.0.0.7", "/api/items", &[]).status, 200, "{i}");
    }
    assert_eq!(upstream.connections(), 4);
    let heads = upstream.heads();
    assert!(
        heads
            .iter()
            .all(|h| h.contains("\r\nconnection: close\r\n")),
        "{heads:?}"
    );
    eventually(
        "the gateway closed each connection",
        Duration::from_secs(5),
        || upstream.closed() == 4,
    );
    drop(gw);

    // Kept for 400 ms: then closed, even with no traffic to notice it. The requests
    // go on one client connection, so one worker and its pool serve them all.
    let upstream = RawUpstream::start(OK, Closing::Never);
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = "127.0.0.1:{}"
upstream = "http://127.0.0.1:{}"
admin_listen = "127.0.0.1:{}"
header_timeout = "10s"
upstream_keepalive_timeout = "400ms"
"#,
        free_port(),
        upstream.port,
        free_port()
    ));
    let mut client = std::net::TcpStream::connect(gw.address()).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut exchange = || {
        use std::io::{Read, Write};
        client
            .write_all(b"GET /api/items HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .expect("write");
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        while !answer.ends_with(b"\r\n\r\nok") {
            let n = client.read(&mut buffer).expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buffer[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    };
    exchange();
    exchange();
    assert_eq!(upstream.connections(), 1, "kept between requests");
    eventually(
        "the gateway closed the connection once idle 400 ms",
        Duration::from_secs(5),
        || upstream.closed() == 1,
    );
    exchange();
    assert_eq!(upstream.connections(), 2);
}

#[test]
fn a_request_lost_with_a_pooled_connection_is_sent_again_only_when_that_is_harmless() {
    // Every pooled connection is closed by the upstream as the next request arrives,
    // after it has read that request.
    let upstream = RawUpstream::start(OK, Closing::OnSecondRequest);
    let gw = Gateway::start(&config(free_port(), upstream.port, free_port(), ""));
    let heads_of = |method: &str| {
        upstream
            .heads()
            .iter()
            .filter(|h| h.starts_with(method))
            .count()
    };
    // A GET (and a bodiless DELETE) is idempotent: sent again on a new connection.
    for i in 0..6 {
        let reply = gw.get("127.0.0.6", "/api/items", &[]);
        assert_eq!(reply.status, 200, "GET {i}: {}", reply.body);
    }
    let answers = gw.raw(
        "127.0.0.6",
        b"GET /api/items HTTP/1.1\r\nHost: api.test\r\n\r\nDELETE /api/items/7 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers}");
    assert!(heads_of("get ") >= 7);
    assert_eq!(heads_of("delete "), 2, "a DELETE lost once, then answered");
    // A POST is not: the upstream may have acted on it, so the client hears of the
    // failure. Sent on the same client connection after a GET, it finds a pooled
    // upstream connection, whichever worker serves it.
    let answers = gw.raw(
        "127.0.0.6",
        b"GET /api/items HTTP/1.1\r\nHost: api.test\r\n\r\nPOST /api/items HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert!(answers.starts_with("HTTP/1.1 200"), "{answers}");
    assert!(answers.contains("HTTP/1.1 502"), "{answers}");
    assert_eq!(heads_of("post "), 1, "the POST went to the upstream once");
    // So is a GET with a body.
    let answers = gw.raw(
        "127.0.0.6",
        b"GET /api/items HTTP/1.1\r\nHost: api.test\r\n\r\nGET /api/search HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert!(answers.contains("HTTP/1.1 502"), "{answers}");
    assert_eq!(
        upstream
            .heads()
            .iter()
            .filter(|h| h.starts_with("get /api/search"))
            .count(),
        1
    );
    // Twelve requests reached the upstream; each one sent again is one more head.
    let retries = upstream.heads().len() - 12;
    assert!(retries >= 1, "{retries}");
    let metrics = gw.metrics();
    assert!(
        metrics.contains(&format!("ratewarden_upstream_retries_total {retries}\n")),
        "{metrics}"
    );
}

#[test]
fn a_connection_still_busy_with_a_slow_upload_is_not_lent_to_the_next_request() {
    // The upstream answers each upload as soon as it has the head; the clients then
    // never send the rest of their bodies, so those connections stay busy.
    let upstream = RawUpstream::start(OK, Closing::Never);
    let gw = Gateway::start(&config(free_port(), upstream.port, free_port(), ""));
    let uploads: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            use std::io::Write;
            let mut stream = std::net::TcpStream::connect(gw.address()).expect("connect");
            stream
                .write_all(b"POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: 10000\r\n\r\n0123456789")
                .expect("write");
            stream
        })
        .collect();
    eventually(
        "the upstream answered every upload",
        Duration::from_secs(5),
        || upstream.heads().len() >= uploads.len(),
    );
    // Each of these would wait for a busy connection and get a 504 after
    // upstream_timeout (2 s) if one were lent to it.
    for i in 0..6 {
        let reply = gw.get("127.0.0.5", "/api/items", &[]);
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
    }
    drop(uploads);
}

#[test]
fn hop_by_hop_headers_stop_at_the_gateway_both_ways() {
    let upstream = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nConnection: X-Upstream-Hop\r\nX-Upstream-Hop: 1\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\nok",
        Closing::Never,
    );
    let gw = Gateway::start(&config(free_port(), upstream.port, free_port(), ""));
    let reply = gw.get(
        "127.0.0.4",
        "/api/items",
        &[
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic c2VjcmV0"),
            ("X-Client-Hop", "1"),
            ("Connection", "X-Client-Hop"),
            ("Upgrade", "websocket"),
            ("X-Kept", "yes"),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-kept"), Some("yes"));
    for name in ["keep-alive", "x-upstream-hop", "proxy-connection"] {
        assert_eq!(reply.header(name), None, "{name} reached the client");
    }
    let heads = upstream.heads();
    let head = heads.last().expect("the upstream saw the request");
    assert!(head.contains("\r\nx-kept: yes\r\n"), "{head}");
    for name in [
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-client-hop",
        "upgrade",
        "connection",
    ] {
        assert!(
            !head.contains(&format!("\r\n{name}:")),
            "{name} reached the upstream: {head}"
        );
    }
}
