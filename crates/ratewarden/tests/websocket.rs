//! WebSocket (HTTP/1.1 `Upgrade`) through the real binary: the handshake is limited like
//! any request, an admitted one becomes a tunnel that carries bytes both ways, and only
//! the allowed protocols pass.
//!
//! The upstream here speaks just enough of the handshake: it answers `101` to
//! `Upgrade: websocket` (or switches to what `/switch/NAME` says) and then echoes every
//! read back with an `echo:` prefix. Past the 101 the gateway copies bytes without
//! reading them, so no framing is needed to prove the tunnel.
#![allow(clippy::disallowed_methods)] // tests measure wall time with Instant

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{config, eventually, free_port, Gateway};

/// The handshake requests the upstream received, as header blocks (lower-case names).
type Heads = Arc<Mutex<Vec<String>>>;

/// An upstream that switches to WebSocket and echoes; returns its port and what it saw.
fn echo_upstream() -> (u16, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let heads: Heads = Arc::default();
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let seen = seen.clone();
            std::thread::spawn(move || serve_one(stream, &seen));
        }
    });
    (port, heads)
}

fn serve_one(mut stream: TcpStream, seen: &Heads) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    loop {
        let Some((head, rest)) = read_head(&mut stream) else {
            return;
        };
        let lower = head.to_ascii_lowercase();
        seen.lock().expect("heads").push(lower.clone());
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        if path == "/hold" {
            // Never answers: a request in flight for as long as a test needs.
            std::thread::sleep(Duration::from_secs(20));
            return;
        }
        let switch_to = match path.strip_prefix("/switch/") {
            Some(name) => Some(name.to_owned()),
            // An endpoint that answers a handshake without switching.
            None if path == "/no-switch" => None,
            None if lower.contains("\r\nupgrade: websocket") => Some("websocket".to_owned()),
            None => None,
        };
        let Some(protocol) = switch_to else {
            let body = format!("plain {path}");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            continue;
        };
        // A greeting straight after the 101, before the client says anything: it must
        // reach a client whose tunnel opened, and nobody else.
        let _ = write!(
            stream,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n{GREETING}"
        );
        if !rest.is_empty() && stream.write_all(&[b"echo:", &rest[..]].concat()).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&[b"echo:", &buf[..n]].concat()).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads one message head; returns it and whatever bytes came after it.
fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            return Some((String::from_utf8_lossy(&data).into_owned(), rest));
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// What the upstream sends as soon as it has switched.
const GREETING: &str = "hello-from-upstream;";

const RULES: &str = r#"
[[rules]]
name = "chat"
match = { path_prefix = "/chat" }
rate = "1/h"
burst = 2
"#;

fn start(extra: &str) -> (Gateway, Heads) {
    let (port, heads) = echo_upstream();
    let gateway = Gateway::start(&config(free_port(), port, free_port(), extra));
    (gateway, heads)
}

fn connect(gw: &Gateway) -> TcpStream {
    let stream = TcpStream::connect(gw.address()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

const WEBSOCKET: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\n";

/// Sends a handshake for `path` with these extra header lines; returns the response
/// head, and the stream for what follows. After a 101, the upstream's greeting has
/// been read (and checked) too.
fn handshake(gw: &Gateway, path: &str, extra: &str) -> (String, TcpStream) {
    handshake_from(gw, "127.0.0.1", path, extra)
}

/// [`handshake`] from the client address `source`.
fn handshake_from(gw: &Gateway, source: &str, path: &str, extra: &str) -> (String, TcpStream) {
    let mut stream = gw.connect_from(source);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: api.test\r\n{extra}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write");
    let (head, mut rest) = read_head(&mut stream).unwrap_or_default();
    if head.starts_with("HTTP/1.1 101") {
        let mut buf = [0u8; 64];
        while rest.len() < GREETING.len() {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(rest, GREETING.as_bytes(), "{head}");
    }
    (head, stream)
}

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `message` into the tunnel and reads the echo.
fn echo(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).expect("write");
    let want = message.len() + 5;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Sends a message of `x`s and reads its echo, which the upstream may split over
/// several reads (each with its own `echo:` prefix); returns it without the prefixes.
fn echo_long(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    assert!(message.iter().all(|b| *b == b'x'));
    let writer = {
        let mut stream = stream.try_clone().expect("clone");
        let message = message.to_vec();
        std::thread::spawn(move || stream.write_all(&message).expect("write"))
    };
    let mut got = Vec::new();
    let mut xs = 0;
    let mut buf = [0u8; 65536];
    while xs < message.len() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                xs += buf[..n].iter().filter(|b| **b == b'x').count();
                got.extend_from_slice(&buf[..n]);
            }
        }
    }
    writer.join().expect("writer");
    String::from_utf8_lossy(&got)
        .replace("echo:", "")
        .into_bytes()
}

fn metric(gw: &Gateway, line_start: &str) -> Option<u64> {
    gw.metrics()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until the harness's start-up probes have closed their connections.
fn no_connections_open(gw: &Gateway) {
    eventually("probes still open", Duration::from_secs(5), || {
        metric(gw, "ratewarden_open_connections") == Some(0)
    });
}

/// The head of the last request the upstream received.
fn last_seen(heads: &Heads) -> String {
    heads
        .lock()
        .expect("heads")
        .last()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn an_admitted_handshake_becomes_a_tunnel_that_carries_bytes_both_ways() {
    let (gw, heads) = start(RULES);
    no_connections_open(&gw);
    let (head, mut stream) = handshake(&gw, "/chat", WEBSOCKET);
    let lower = head.to_ascii_lowercase();
    assert_eq!(status(&head), 101, "{head}");
    assert!(lower.contains("\r\nupgrade: websocket"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade"), "{head}");
    assert!(
        lower.contains("\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "the upstream's handshake answer passes: {head}"
    );
    assert!(
        lower.contains("\r\nratelimit: \"chat\";r=1;"),
        "the handshake was counted: {head}"
    );
    assert_eq!(echo(&mut stream, b"hello"), b"echo:hello");
    assert_eq!(echo(&mut stream, &[0x81, 0x00, 0xff]), b"echo:\x81\x00\xff");
    let big = vec![b'x'; 200_000];
    assert_eq!(
        echo_long(&mut stream, &big),
        big,
        "a large message comes back whole"
    );

    let upstream_saw = heads.lock().expect("heads")[0].clone();
    for line in [
        "\r\nupgrade: websocket",
        "\r\nconnection: upgrade",
        "\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==",
        "\r\nx-forwarded-for: 127.0.0.1",
    ] {
        assert!(upstream_saw.contains(line), "{line:?} in {upstream_saw}");
    }
    assert_eq!(metric(&gw, "ratewarden_tunnels_total"), Some(1));
    assert_eq!(metric(&gw, "ratewarden_tunnels_open"), Some(1));
    // The tunnel holds its place under the connection cap.
    assert_eq!(metric(&gw, "ratewarden_open_connections"), Some(1));
    drop(stream);
    // Well within the idle timeout (60 s): the client's close ends the tunnel.
    eventually("the tunnel did not close", Duration::from_secs(5), || {
        metric(&gw, "ratewarden_tunnels_open") == Some(0)
            && metric(&gw, "ratewarden_open_connections") == Some(0)
    });
}

#[test]
fn handshakes_are_rate_limited_and_a_refused_one_never_reaches_the_upstream() {
    let (gw, heads) = start(RULES);
    let mut open = Vec::new();
    for _ in 0..2 {
        let (head, stream) = handshake(&gw, "/chat", WEBSOCKET);
        assert_eq!(status(&head), 101, "{head}");
        open.push(stream);
    }
    let (head, _) = handshake(&gw, "/chat", WEBSOCKET);
    assert_eq!(status(&head), 429, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: "),
        "{head}"
    );
    assert_eq!(heads.lock().expect("heads").len(), 2);
    assert_eq!(metric(&gw, "ratewarden_tunnels_total"), Some(2));
}

#[test]
fn only_allowed_upgrades_pass_and_h2c_never_does() {
    let (gw, heads) = start(RULES.replace("burst = 2", "burst = 50").as_str());
    let cases = [
        // Asks to switch to HTTP/2 behind the gateway: removed, served as HTTP/1.1.
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        // An Upgrade the client did not name in Connection (RFC 9110, section 7.8).
        "Upgrade: websocket\r\n",
        // Not allowed by default.
        "Connection: Upgrade\r\nUpgrade: IRC/6.9\r\n",
        "Connection: Upgrade\r\nUpgrade: HTTP/2.0\r\n",
        "Connection: Upgrade\r\nUpgrade: TLS/1.0\r\n",
    ];
    for (i, extra) in cases.iter().enumerate() {
        let (head, _) = handshake(&gw, &format!("/chat/{i}"), extra);
        assert_eq!(status(&head), 200, "{extra}: {head}");
        let seen = last_seen(&heads);
        assert!(seen.starts_with(&format!("get /chat/{i} ")), "{seen}");
        for gone in [
            "\r\nupgrade:",
            "\r\nhttp2-settings:",
            "\r\nconnection: upgrade",
        ] {
            assert!(
                !seen.contains(gone),
                "{extra}: {gone:?} reached the upstream: {seen}"
            );
        }
    }
    // Offered among others, only the allowed protocol goes on; two Upgrade lines are
    // read as one list.
    let (head, _) = handshake(
        &gw,
        "/chat/mixed",
        "Connection: keep-alive\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nUpgrade: websocket\r\n",
    );
    assert_eq!(status(&head), 101, "{head}");
    let seen = last_seen(&heads);
    assert!(seen.starts_with("get /chat/mixed "), "{seen}");
    assert!(seen.contains("\r\nupgrade: websocket\r\n"), "{seen}");
    assert_eq!(metric(&gw, "ratewarden_tunnels_total"), Some(1));
}

#[test]
fn a_handshake_with_a_body_or_over_http_1_0_is_not_switched() {
    let (gw, heads) = start(RULES);
    for (version, body) in [("1.1", "Content-Length: 5\r\n\r\nhello"), ("1.0", "\r\n")] {
        let mut stream = connect(&gw);
        write!(
            stream,
            "GET /chat HTTP/{version}\r\nHost: api.test\r\n{WEBSOCKET}{body}"
        )
        .expect("write");
        let (head, _) = read_head(&mut stream).unwrap_or_default();
        assert_eq!(status(&head), 200, "HTTP/{version}: {head}");
        let seen = last_seen(&heads);
        assert!(!seen.contains("\r\nupgrade:"), "{seen}");
    }
}

#[test]
fn an_upstream_that_switches_unasked_or_to_a_protocol_not_offered_gets_a_502() {
    let (gw, _) = start(RULES.replace("burst = 2", "burst = 50").as_str());
    let (head, mut stream) = handshake(&gw, "/switch/h2c", WEBSOCKET);
    assert_eq!(status(&head), 502, "{head}");
    // Nothing of the upstream's other protocol reaches the client, even when the
    // client sends more.
    let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("echo:") && !rest.contains(GREETING),
        "{head}{rest}"
    );
    // An upstream that switches for a request that did not ask is refused the same way.
    let (head, _) = handshake(&gw, "/switch/websocket", "");
    assert_eq!(status(&head), 502, "{head}");
    assert_eq!(metric(&gw, "ratewarden_tunnels_total"), Some(0));
    assert!(gw
        .metrics()
        .contains(r#"ratewarden_upstream_errors_total{kind="bad_switch"} 2"#));
}

#[test]
fn upgrades_can_be_turned_off() {
    let (gw, heads) = start(&format!("upgrades = []\n{RULES}"));
    let (head, _) = handshake(&gw, "/chat", WEBSOCKET);
    assert_eq!(status(&head), 200, "{head}");
    assert!(!last_seen(&heads).contains("\r\nupgrade:"));
}

#[test]
fn a_tunnel_that_carries_nothing_for_its_idle_timeout_is_closed() {
    let (gw, _) = start(&format!("tunnel_idle_timeout = \"2s\"\n{RULES}"));
    let (head, mut stream) = handshake(&gw, "/chat", WEBSOCKET);
    assert_eq!(status(&head), 101, "{head}");
    // Traffic keeps it open past the timeout.
    let started = Instant::now();
    loop {
        assert_eq!(echo(&mut stream, b"ping"), b"echo:ping");
        if started.elapsed() >= Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Then silence closes it, counted from the last echo.
    let quiet = Instant::now();
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf);
    assert!(
        matches!(read, Ok(0)),
        "the gateway closed the idle tunnel: {read:?}"
    );
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "closed after {waited:?} of silence (timeout 2 s)"
    );
    eventually(
        "the tunnel was not counted closed",
        Duration::from_secs(5),
        || metric(&gw, "ratewarden_tunnels_open") == Some(0),
    );
}

#[test]
fn tunnels_count_under_the_connection_cap() {
    let (gw, _) = start(&format!("max_connections = 2\nmax_tunnels = 2\n{RULES}"));
    no_connections_open(&gw);
    let (first, mut a) = handshake(&gw, "/chat", WEBSOCKET);
    let (second, _b) = handshake(&gw, "/chat", WEBSOCKET);
    assert_eq!((status(&first), status(&second)), (101, 101));
    assert_eq!(echo(&mut a, b"still here"), b"echo:still here");
    let third = gw.get("127.0.6.1", "/other", &[]);
    assert_eq!(third.status, 0, "a third connection is closed at once");
    drop(a);
    eventually(
        "a closed tunnel's place was not freed",
        Duration::from_secs(5),
        || gw.get("127.0.6.2", "/other", &[]).status == 200,
    );
}

#[test]
fn one_client_may_hold_only_so_many_tunnels_and_all_clients_so_many_in_all() {
    let (gw, heads) = start(&format!(
        "max_tunnels_per_client = 2\nmax_tunnels = 3\n{}",
        RULES.replace("burst = 2", "burst = 50")
    ));
    let forwarded = || heads.lock().expect("heads").len();
    // A handshake the upstream does not switch gives its place back: answered as a
    // plain request, or switched to a protocol not offered (a 502).
    for _ in 0..2 {
        let (plain, _) = handshake(&gw, "/no-switch", WEBSOCKET);
        assert_eq!(status(&plain), 200, "{plain}");
        let (wrong, _) = handshake(&gw, "/switch/other", WEBSOCKET);
        assert_eq!(status(&wrong), 502, "{wrong}");
    }
    let forwarded = || forwarded() - 4;
    assert_eq!(forwarded(), 0);
    let (a, a_stream) = handshake(&gw, "/chat", WEBSOCKET);
    let (b, _b) = handshake(&gw, "/chat", WEBSOCKET);
    let (c, _) = handshake(&gw, "/chat", WEBSOCKET);
    assert_eq!((status(&a), status(&b), status(&c)), (101, 101, 503), "{c}");
    assert!(c.to_ascii_lowercase().contains("\r\nretry-after: 5"), "{c}");
    // Refused before it was forwarded: the upstream never opened a session for it.
    assert_eq!(forwarded(), 2, "the refused handshake reached the upstream");
    // Another client is not held back by the first one's tunnels, but by the total.
    let (d, _d) = handshake_from(&gw, "127.0.7.1", "/chat", WEBSOCKET);
    assert_eq!(status(&d), 101, "{d}");
    let (e, _) = handshake_from(&gw, "127.0.7.2", "/chat", WEBSOCKET);
    assert_eq!(status(&e), 503, "{e}");
    assert_eq!(forwarded(), 3, "the refused handshake reached the upstream");
    let metrics = gw.metrics();
    for reason in ["tunnel_limit_per_client", "tunnel_limit"] {
        assert!(
            metrics.contains(&format!(
                "ratewarden_refused_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
    // A closed tunnel gives its places back.
    drop(a_stream);
    eventually(
        "the closed tunnel's places did not come back",
        Duration::from_secs(5),
        || status(&handshake(&gw, "/chat", WEBSOCKET).0) == 101,
    );
}

#[test]
fn stopping_the_gateway_closes_its_tunnels_without_waiting_for_them() {
    let (mut gw, heads) = start(RULES);
    let (head, mut stream) = handshake(&gw, "/chat", WEBSOCKET);
    assert_eq!(status(&head), 101, "{head}");
    // A request in flight keeps the gateway draining until the upstream timeout (2 s)
    // answers it: the tunnel must close before that, on the stop signal itself.
    let mut held = connect(&gw);
    held.write_all(b"GET /hold HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .expect("write");
    eventually(
        "the held request never reached the upstream",
        Duration::from_secs(5),
        || last_seen(&heads).starts_with("get /hold "),
    );
    let stopped = Instant::now();
    gw.signal("TERM");
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf);
    let closed_after = stopped.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        closed_after < Duration::from_secs(5),
        "the tunnel closed {closed_after:?} after SIGTERM"
    );
    // Closed while the gateway still drains: the held request has no answer yet.
    held.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let early = held.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the tunnel closed only when the gateway stopped: {early:?}"
    );
    // The held request is then answered (504, the upstream timeout), and the gateway
    // stops.
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (answer, _) = read_head(&mut held).unwrap_or_default();
    assert_eq!(status(&answer), 504, "{answer}");
    assert_eq!(gw.terminate(), Some(0));
}

#[test]
fn connect_is_refused_and_never_reaches_the_upstream() {
    let (gw, heads) = start(RULES);
    let reply = gw.raw(
        "127.0.0.1",
        b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 501 "), "{reply}");
    assert!(
        reply.contains("\"error\":\"method_not_supported\""),
        "{reply}"
    );
    assert!(heads.lock().expect("heads").is_empty());
}

#[test]
fn a_handshake_through_a_trusted_proxy_is_limited_as_its_client_and_forwards_the_vouched_chain() {
    // 127.0.0.4 to 127.0.0.7 are the trusted proxies; 127.0.0.9 is not.
    let (gw, heads) = start(&format!(
        "[clients]\ntrusted_proxies = [\"127.0.0.4/30\"]\n{RULES}"
    ));
    let through = |peer: &str, chain: &str| {
        let (head, stream) = handshake_from(
            &gw,
            peer,
            "/chat",
            &format!("{WEBSOCKET}X-Forwarded-For: {chain}\r\n"),
        );
        (status(&head), stream, last_seen(&heads))
    };
    let (status_1, _tunnel_1, seen) = through("127.0.0.4", "6.6.6.6, 203.0.113.60, 127.0.0.5");
    assert_eq!(status_1, 101);
    // The client (the first address from the right that is not a trusted proxy) and
    // the proxies that vouch for it, with the peer appended; the spoofable part before
    // the client is dropped.
    assert!(
        seen.contains("\r\nx-forwarded-for: 203.0.113.60, 127.0.0.5, 127.0.0.4\r\n"),
        "{seen}"
    );
    // The same client through another proxy takes the second of its burst of 2, then
    // is refused; another client through the same proxy is not.
    let (status_2, _tunnel_2, _) = through("127.0.0.6", "203.0.113.60");
    assert_eq!(status_2, 101);
    let (status_3, _, _) = through("127.0.0.7", "203.0.113.60");
    assert_eq!(status_3, 429);
    let (status_4, _tunnel_4, seen) = through("127.0.0.4", "198.51.100.1");
    assert_eq!(status_4, 101);
    assert!(
        seen.contains("\r\nx-forwarded-for: 198.51.100.1, 127.0.0.4\r\n"),
        "{seen}"
    );
    // From a peer that is not trusted, the header is ignored: the client it names is
    // out of handshakes, but the peer, the client limited here, is not; and the
    // upstream hears the peer alone.
    let (status_5, _tunnel_5, seen) = through("127.0.0.9", "203.0.113.60");
    assert_eq!(status_5, 101);
    assert!(
        seen.contains("\r\nx-forwarded-for: 127.0.0.9\r\n"),
        "{seen}"
    );
    assert!(!seen.contains("203.0.113.60"), "{seen}");
    assert_eq!(
        heads.lock().expect("heads").len(),
        4,
        "the 429 never reached it"
    );
}

#[test]
fn a_handshake_holds_its_tunnel_place_while_it_is_forwarded() {
    let (gw, heads) = start("max_tunnels_per_client = 1\n");
    // The upstream never answers this one: it holds the client's one place until the
    // upstream timeout (2 s) answers it 504.
    let held = {
        let address = gw.address();
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            write!(
                stream,
                "GET /hold HTTP/1.1\r\nHost: api.test\r\n{WEBSOCKET}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .expect("write");
            read_head(&mut stream).unwrap_or_default().0
        })
    };
    eventually(
        "the held handshake did not arrive",
        Duration::from_secs(5),
        || heads.lock().expect("heads").len() == 1,
    );
    let (refused, _) = handshake(&gw, "/chat", WEBSOCKET);
    assert_eq!(status(&refused), 503, "{refused}");
    assert_eq!(
        heads.lock().expect("heads").len(),
        1,
        "the refused one was forwarded"
    );
    let timed_out = held.join().expect("held");
    assert_eq!(status(&timed_out), 504, "{timed_out}");
    let (admitted, _tunnel) = handshake(&gw, "/chat", WEBSOCKET);
    assert_eq!(
        status(&admitted),
        101,
        "the place came back after the 504: {admitted}"
    );
}
