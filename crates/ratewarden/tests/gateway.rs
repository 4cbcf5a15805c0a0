//! The real binary on loopback, in front of a real upstream: what users rely on.
//!
//! Each test writes a config with free ports, starts `ratewarden serve`, and talks raw
//! HTTP/1.1 to it from chosen 127.x.y.z source addresses, so every byte (spoofed headers,
//! path tricks, smuggling attempts) is exactly as a client would send it.

mod support;

use std::time::Duration;
use support::{config, eventually, free_port, Gateway, Upstream};

const AUTH_RULES: &str = r#"
[[rules]]
name = "api"
match = { path_prefix = "/api/v1/" }
rate = "1/h"
burst = 10

[[rules]]
name = "auth"
match = { path_prefix = "/api/v1/auth" }
rate = "1/h"
burst = 2
"#;

fn start(extra: &str) -> (Gateway, Upstream) {
    let upstream = Upstream::start();
    let gateway = Gateway::start(&config(free_port(), upstream.port, free_port(), extra));
    (gateway, upstream)
}

#[test]
fn exact_429_counts_and_headers() {
    let (gw, upstream) = start(AUTH_RULES);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(gw.get("127.0.0.2", "/api/v1/auth/login", &[]).status);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    assert_eq!(upstream.requests(), 2);

    let denied = gw.get("127.0.0.2", "/api/v1/auth/login", &[]);
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(denied.header("retry-after"), Some("3600"));
    assert_eq!(denied.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(denied.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(denied.header("x-ratelimit-reset"), Some("7200"));
    assert_eq!(
        denied.header("ratelimit-policy"),
        Some(r#""api";q=10;w=36000, "auth";q=2;w=7200"#)
    );
    assert_eq!(
        denied.header("ratelimit"),
        Some(r#""api";r=8;t=7200, "auth";r=0;t=7200"#)
    );
    let body: serde_json::Value = serde_json::from_str(&denied.body).expect("json body");
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["rule"], "auth");
    assert_eq!(body["retry_after"], 3600);
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], serde_json::json!(["auth"]));

    // A client over the auth limit has drained nothing of the broader api quota: 8 left.
    let ok = gw.get("127.0.0.2", "/api/v1/users", &[]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("7"));
    assert_eq!(ok.header("ratelimit"), Some(r#""api";r=7;t=10800"#));
}

#[test]
fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let (gw, upstream) = start(AUTH_RULES);
    let mut statuses = Vec::new();
    for i in 0..4 {
        let fake = format!("198.51.100.{i}");
        statuses.push(
            gw.get(
                "127.0.0.3",
                "/api/v1/auth/x",
                &[
                    ("X-Forwarded-For", &fake),
                    ("Forwarded", &format!("for={fake}")),
                    ("X-Real-IP", &fake),
                    ("Client-IP", &fake),
                    ("True-Client-IP", &fake),
                    ("CF-Connecting-IP", &fake),
                    ("X-Forwarded", &format!("for={fake}")),
                    ("X-Original-Forwarded-For", &fake),
                ],
            )
            .status,
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(upstream.last_forwarded_for().as_deref(), Some("127.0.0.3"));
    let heard = upstream.last_header_names();
    for claimed in [
        "forwarded",
        "x-real-ip",
        "client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-forwarded",
        "x-original-forwarded-for",
    ] {
        assert!(
            !heard.iter().any(|h| h == claimed),
            "the upstream heard {claimed} from an untrusted peer: {heard:?}"
        );
    }
    let metrics = gw.metrics();
    assert!(
        metrics.contains("ratewarden_spoofed_forwarding_headers_total 4"),
        "{metrics}"
    );
}

#[test]
fn a_client_address_claimed_in_any_header_by_an_untrusted_peer_counts_as_spoofed() {
    let (gw, upstream) = start(AUTH_RULES);
    // Each claims another address in one header only, none of them the configured
    // forwarding header but the first; the last claims nothing.
    let claims: [&[(&str, &str)]; 5] = [
        &[("X-Forwarded-For", "198.51.100.1")],
        &[("Forwarded", "for=198.51.100.2")],
        &[("X-Real-IP", "198.51.100.3")],
        &[("True-Client-IP", "198.51.100.4")],
        &[("X-Kept", "198.51.100.5")],
    ];
    for (i, headers) in claims.iter().enumerate() {
        let response = gw.get(&format!("127.0.9.{}", i + 1), "/api/v1/orders", headers);
        assert_eq!(response.status, 200, "{headers:?}");
        assert_eq!(
            upstream.last_forwarded_for().as_deref(),
            Some(format!("127.0.9.{}", i + 1).as_str()),
            "{headers:?}"
        );
    }
    let metrics = gw.metrics();
    assert!(
        metrics.contains("ratewarden_spoofed_forwarding_headers_total 4"),
        "{metrics}"
    );
}

#[test]
fn a_trusted_proxy_chain_is_honoured() {
    let (gw, upstream) = start(&format!(
        "[clients]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{AUTH_RULES}"
    ));
    // Two clients behind the same proxy address get separate buckets.
    for client in ["203.0.113.1", "203.0.113.2"] {
        let chain = format!("6.6.6.6, {client}, 127.0.0.9");
        let statuses: Vec<u16> = (0..3)
            .map(|_| {
                gw.get(
                    "127.0.0.4",
                    "/api/v1/auth/x",
                    &[("X-Forwarded-For", &chain), ("CF-Connecting-IP", client)],
                )
                .status
            })
            .collect();
        assert_eq!(statuses, [200, 200, 429], "{client}");
    }
    // The upstream hears the chain the proxies vouch for, our peer appended; the
    // address the client wrote left of its own is dropped.
    assert_eq!(
        upstream.last_forwarded_for().as_deref(),
        Some("203.0.113.2, 127.0.0.9, 127.0.0.4")
    );
    // A trusted proxy (a CDN) is trusted with the other client address headers too.
    assert!(
        upstream
            .last_header_names()
            .iter()
            .any(|h| h == "cf-connecting-ip"),
        "{:?}",
        upstream.last_header_names()
    );
}

#[test]
fn an_allow_listed_client_behind_a_proxy_reaches_the_upstream_with_the_chain() {
    let dir = support::temp_dir();
    std::fs::write(dir.join("allow.txt"), "203.0.113.50\n").expect("write allow list");
    let (gw, upstream) = start(&format!(
        "[clients]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[reputation]\nallow = [\"{}\"]\n{AUTH_RULES}",
        dir.join("allow.txt").display()
    ));
    let reply = gw.get(
        "127.0.0.4",
        "/api/v1/auth/x",
        &[("X-Forwarded-For", "6.6.6.6, 203.0.113.50, 127.0.0.9")],
    );
    assert_eq!(reply.status, 200);
    assert!(gw.metrics().contains("ratewarden_allow_listed_total 1"));
    assert_eq!(
        upstream.last_forwarded_for().as_deref(),
        Some("203.0.113.50, 127.0.0.9, 127.0.0.4")
    );
}

#[test]
fn every_spelling_of_a_limited_path_is_limited() {
    let (gw, _upstream) = start(AUTH_RULES);
    let variants = [
        "/API//v1/%61uth/login",
        "/api/v1/./auth/login",
        "/api/v1/x/../auth/login",
        "/api/v1/auth/login/",
        "/api/v1/auth;x/login",
        "/api%2Fv1%2Fauth/login",
        "/api/v1/auth/login.",
        "/Api/V1/Auth/Login?x=1",
    ];
    for (i, variant) in variants.iter().enumerate() {
        let source = format!("127.0.1.{}", i + 1);
        assert_eq!(gw.get(&source, "/api/v1/auth/login", &[]).status, 200);
        assert_eq!(gw.get(&source, "/api/v1/auth/login", &[]).status, 200);
        assert_eq!(
            gw.get(&source, variant, &[]).status,
            429,
            "{variant} slipped past the auth rule"
        );
    }
    for refused in [
        "/api/v1/%252e%252e/auth",
        "/api/v1/x/%E2%80%A5/auth",
        "/api/v1/x/.../auth",
        "/api/%ff/auth",
        "/api/%zz",
        "/../api/v1/auth",
    ] {
        assert_eq!(gw.get("127.0.2.1", refused, &[]).status, 400, "{refused}");
    }
}

#[test]
fn smuggling_attempts_and_oversized_heads_are_refused() {
    let (gw, upstream) = start(AUTH_RULES);
    // CL.TE desync: a front end that trusted Content-Length would pass the rest of the
    // body on as a second request. Here Transfer-Encoding wins, the body ends at the
    // empty chunk, the length is dropped and the connection closes: the smuggled request
    // never reaches the upstream. The same with `chunked` followed by a tab, whitespace
    // a parser must trim (some front ends did not, and fell back to the length).
    for encoding in ["chunked", "chunked\t"] {
        let before = upstream.requests();
        let request = format!(
            "POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: {encoding}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let desync = gw.raw("127.0.0.5", request.as_bytes());
        assert_eq!(
            desync.matches("HTTP/1.1 ").count(),
            1,
            "{encoding:?}: one answer only: {desync}"
        );
        assert!(
            desync.starts_with("HTTP/1.1 200"),
            "{encoding:?}: read as chunked: {desync}"
        );
        assert!(
            !upstream.paths().iter().any(|p| p.contains("smuggled")),
            "{encoding:?}: {:?}",
            upstream.paths()
        );
        assert!(upstream.saw_no_content_length_with_chunked());
        assert_eq!(
            upstream.requests(),
            before + 1,
            "{encoding:?}: the POST alone"
        );
    }
    let before = upstream.requests();
    // A NUL or a bare CR inside a header value: refused before anything reads it.
    for value in [&b"a\0b"[..], b"a\rb"] {
        let mut request = b"GET /api/v1/users HTTP/1.1\r\nHost: x\r\nX-Odd: ".to_vec();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n\r\n");
        let odd = gw.raw("127.0.0.5", &request);
        assert!(odd.starts_with("HTTP/1.1 400"), "{value:?}: {odd}");
    }
    let two_lengths = gw.raw(
        "127.0.0.5",
        b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    );
    assert!(two_lengths.starts_with("HTTP/1.1 400"), "{two_lengths}");
    let bad_te = gw.raw(
        "127.0.0.5",
        b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    );
    assert!(bad_te.starts_with("HTTP/1.1 400"), "{bad_te}");
    let mut many = String::from("GET /api/v1/users HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-Filler-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    let too_many = gw.raw("127.0.0.5", many.as_bytes());
    assert!(too_many.starts_with("HTTP/1.1 431"), "{too_many}");
    let huge = format!(
        "GET /api/v1/users HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let too_big = gw.raw("127.0.0.5", huge.as_bytes());
    assert!(
        too_big.starts_with("HTTP/1.1 431"),
        "{}",
        &too_big[..too_big.len().min(200)]
    );
    assert_eq!(
        upstream.requests(),
        before,
        "the upstream saw none of the refused requests"
    );
}

#[test]
fn upstream_down_is_a_502_with_a_json_body() {
    let gw = Gateway::start(&config(free_port(), free_port(), free_port(), AUTH_RULES));
    let r = gw.get("127.0.0.6", "/api/v1/users", &[]);
    assert_eq!(r.status, 502);
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(body["error"], "upstream_unavailable");
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"ratewarden_upstream_errors_total{kind="connect"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ratewarden_requests_total{rule="api",decision="allowed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("ratewarden_decision_seconds_count 1"),
        "{metrics}"
    );
}

#[test]
#[allow(clippy::disallowed_methods)] // measures how long the server keeps a silent connection
fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let (gw, _upstream) = start(AUTH_RULES);
    let slow = gw.slow_header("127.0.0.7", Duration::from_millis(400));
    // And clients that connect and then stop before a request head: one that sends
    // nothing, and two that stop partway through the HTTP/2 preface (while the
    // gateway still waits to tell HTTP/1 from HTTP/2).
    let stalled: Vec<_> = [&b""[..], b"P", b"PRI * HTTP/2.0\r\n"]
        .into_iter()
        .map(|sent| {
            let address = gw.address();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(address).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                s.write_all(sent).expect("send");
                let started = std::time::Instant::now();
                let mut buf = [0u8; 1];
                let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
                (
                    String::from_utf8_lossy(sent).into_owned(),
                    closed,
                    started.elapsed(),
                )
            })
        })
        .collect();
    assert_eq!(gw.get("127.0.0.8", "/api/v1/users", &[]).status, 200);
    let cut_after = slow.join().expect("slow client");
    assert!(
        cut_after < Duration::from_secs(4),
        "slow client held on for {cut_after:?}"
    );
    for client in stalled {
        let (sent, closed, held) = client.join().expect("stalled client");
        assert!(
            closed && held < Duration::from_secs(4),
            "a client that sent {sent:?} was held for {held:?}"
        );
    }
}

#[test]
fn reload_applies_a_valid_config_and_keeps_the_old_one_on_errors() {
    let upstream = Upstream::start();
    let (listen, admin) = (free_port(), free_port());
    let gw = Gateway::start(&config(listen, upstream.port, admin, AUTH_RULES));
    assert_eq!(gw.get("127.0.3.1", "/api/v1/auth/x", &[]).status, 200);
    assert_eq!(gw.get("127.0.3.1", "/api/v1/auth/x", &[]).status, 200);
    assert_eq!(gw.get("127.0.3.1", "/api/v1/auth/x", &[]).status, 429);

    // Broken file: logged, running policy unchanged.
    gw.rewrite_config("[server]\nlisten = \"nope\"\n");
    gw.reload();
    assert_eq!(gw.get("127.0.3.2", "/api/v1/auth/x", &[]).status, 200);
    assert_eq!(gw.get("127.0.3.2", "/api/v1/auth/x", &[]).status, 200);
    assert_eq!(gw.get("127.0.3.2", "/api/v1/auth/x", &[]).status, 429);
    assert!(gw.metrics().contains(r#"decision="rejected""#));

    // A valid file with a looser auth rule: applied. The unchanged api rule keeps its
    // counters (127.0.3.1 spent 2 of 10 on it); the changed auth rule starts afresh.
    let looser = AUTH_RULES.replace("burst = 2", "burst = 4");
    gw.rewrite_config(&config(listen, upstream.port, admin, &looser));
    gw.reload();
    let api = gw.get("127.0.3.1", "/api/v1/users", &[]);
    assert_eq!(
        api.header("x-ratelimit-remaining"),
        Some("7"),
        "api counters kept across the reload"
    );
    let statuses: Vec<u16> = (0..5)
        .map(|_| gw.get("127.0.3.1", "/api/v1/auth/x", &[]).status)
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429],
        "the new auth limit applies from a fresh count"
    );
}

#[test]
fn host_ambiguity_is_refused() {
    let (gw, upstream) = start(AUTH_RULES);
    let two = gw.raw(
        "127.0.0.9",
        b"GET /api/v1/users HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    );
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let none = gw.raw(
        "127.0.0.9",
        b"GET /api/v1/users HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    let drop_host = gw.raw(
        "127.0.0.9",
        b"GET /api/v1/users HTTP/1.1\r\nHost: a.test\r\nConnection: close, host\r\n\r\n",
    );
    assert!(drop_host.starts_with("HTTP/1.1 200"), "{drop_host}");
    assert_eq!(
        upstream.requests(),
        1,
        "only the well-formed request reached the upstream"
    );
}

#[test]
fn a_request_that_names_no_host_meets_every_hosts_rules() {
    let (gw, _upstream) = start(
        r#"
[[rules]]
name = "api_host"
match = { path_prefix = "/", hosts = ["api.test"] }
rate = "1/h"
burst = 1
"#,
    );
    let named = gw.raw(
        "127.0.0.10",
        b"GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    );
    assert!(named.starts_with("HTTP/1.1 200"), "{named}");
    // The upstream serves a request without a host as its default host, which may be
    // api.test: leaving the host out, or sending an empty one, must not escape its limit.
    for nameless in [
        &b"GET /x HTTP/1.0\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: :80\r\nConnection: close\r\n\r\n",
    ] {
        let answer = gw.raw("127.0.0.10", nameless);
        assert!(
            answer.starts_with("HTTP/1.0 429") || answer.starts_with("HTTP/1.1 429"),
            "{}: {answer}",
            String::from_utf8_lossy(nameless)
        );
    }
    // A health checker's HTTP/1.0 request without Host is served.
    let check = gw.raw("127.0.0.11", b"GET /x HTTP/1.0\r\n\r\n");
    assert!(
        check.starts_with("HTTP/1.0 200") || check.starts_with("HTTP/1.1 200"),
        "{check}"
    );
    // Another host's requests are not this rule's business.
    let other = gw.raw(
        "127.0.0.10",
        b"GET /x HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n\r\n",
    );
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
}

#[test]
fn check_config_names_every_error_with_its_field() {
    let dir = support::temp_dir();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:1\"\nupstream = \"http://127.0.0.1:2\"\n[[rules]]\nname = \"a\"\nrate = \"10/fortnight\"\n[[rules]]\nname = \"b\"\nrate = \"1/s\"\nburst = 0\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratewarden"))
        .args(["check-config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"rules[0].rate: "10/fortnight" is not a rate: unknown unit "fortnight""#),
        "{stderr}"
    );
    assert!(
        stderr.contains("rules[1].burst: 0 is not a burst"),
        "{stderr}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratewarden"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "serve refuses an invalid config"
    );
}

#[test]
#[allow(clippy::disallowed_methods)] // the delay itself is the behaviour under test
fn delay_holds_requests_until_their_turn_and_log_only_never_rejects() {
    let (gw, _upstream) = start(
        r#"
[[rules]]
name = "paced"
match = { path_prefix = "/paced" }
rate = "4/s"
burst = 4
action = "delay"

[[rules]]
name = "shadow"
match = { path_prefix = "/shadow" }
rate = "1/h"
burst = 1
action = "log_only"
"#,
    );
    let gw = std::sync::Arc::new(gw);
    let started = std::time::Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                let r = gw.get("127.0.4.1", "/paced", &[]);
                (r.status, std::time::Instant::now())
            })
        })
        .collect();
    let results: Vec<(u16, std::time::Instant)> = handles
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    let passed: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    let limited = results.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(
        (passed.len(), limited),
        (4, 2),
        "a burst of 4 is queued, the rest refused"
    );
    let last = passed.iter().map(|(_, t)| *t).max().expect("some passed");
    // The fourth admitted request waits three intervals of 100 ms.
    assert!(
        last.duration_since(started) >= Duration::from_millis(280),
        "{:?}",
        last.duration_since(started)
    );

    for _ in 0..5 {
        assert_eq!(gw.get("127.0.4.2", "/shadow", &[]).status, 200);
    }
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"ratewarden_requests_total{rule="shadow",decision="shadow_limited"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ratewarden_requests_total{rule="paced",decision="delayed"} 3"#),
        "{metrics}"
    );
}

#[test]
fn a_full_delay_queue_answers_503_and_raises_no_violation() {
    let (gw, _upstream) = start(
        r#"max_delayed = 1

[[rules]]
name = "paced"
match = { path_prefix = "/paced" }
rate = "1/s"
burst = 4
action = "delay"

[abuse]
alert_after = 1
[[alerts]]
kind = "log"
"#,
    );
    let gw = std::sync::Arc::new(gw);
    // Within the burst: the first goes at once, the next ones would wait about 1 s, 2 s
    // and 3 s; only one may wait at a time.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50 * i));
                gw.get("127.0.4.3", "/paced", &[])
            })
        })
        .collect();
    let answers: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        2,
        "one at once, one held: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        2,
        "no room to hold the others: {statuses:?}"
    );
    for refused in answers.iter().filter(|a| a.status == 503) {
        assert!(
            refused.header("retry-after").is_some(),
            "{:?}",
            refused.headers
        );
        assert!(
            refused.body.contains("delay_queue_full"),
            "{}",
            refused.body
        );
    }
    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            r#"ratewarden_requests_total{rule="paced",decision="refused_delay_queue_full"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"ratewarden_abuse_violations_total{source="gateway"} "#)
            || metrics.contains(r#"ratewarden_abuse_violations_total{source="gateway"} 0"#),
        "a client within its limits is no violator: {metrics}"
    );
}

#[test]
fn a_slow_upstream_is_a_504_with_a_json_body() {
    let (gw, _upstream) = start(AUTH_RULES);
    let r = gw.get("127.0.0.6", "/slow/5000", &[]);
    assert_eq!(r.status, 504, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(body["error"], "upstream_timeout");
}

#[test]
#[allow(clippy::disallowed_methods)]
fn an_upstream_that_stalls_in_the_middle_of_a_body_is_cut_off() {
    // upstream_timeout is 2s: also the longest silence allowed inside a response body.
    let (gw, _upstream) = start(AUTH_RULES);
    let started = std::time::Instant::now();
    let raw = gw.raw("127.0.0.6", b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n");
    let took = started.elapsed();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("partial"), "{raw}");
    assert!(
        !raw.ends_with("0\r\n\r\n"),
        "a cut-off body must not look complete: {raw:?}"
    );
    assert!(
        took < Duration::from_millis(4_500),
        "closed after {took:?}, not after the 2 s idle timeout"
    );
}

#[test]
fn a_key_header_sent_twice_is_refused() {
    let rules = r#"
[[rules]]
name = "per_key"
key = "header:x-api-key"
rate = "1/h"
burst = 1
"#;
    let (gw, upstream) = start(rules);
    let twice = gw.get(
        "127.0.0.7",
        "/a",
        &[("X-Api-Key", "random-1"), ("X-Api-Key", "real-key")],
    );
    assert_eq!(twice.status, 400, "{}", twice.body);
    assert_eq!(upstream.requests(), 0);
    assert_eq!(
        gw.get("127.0.0.7", "/a", &[("X-Api-Key", "real-key")])
            .status,
        200
    );
    assert_eq!(
        gw.get("127.0.0.7", "/a", &[("X-Api-Key", "real-key")])
            .status,
        429
    );
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let (mut gw, upstream) = start(AUTH_RULES);
    let gw_addr = gw.address();
    let in_flight = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(gw_addr)?;
        stream.write_all(b"GET /slow/700 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok::<_, std::io::Error>(reply.split(' ').nth(1).unwrap_or("").to_owned())
    });
    // Terminate only once the request is in flight: the upstream has it.
    eventually(
        "request never reached the upstream",
        Duration::from_secs(10),
        || upstream.requests() > 0,
    );
    assert_eq!(gw.terminate(), Some(0));
    let status = in_flight.join().expect("client").expect("reply");
    assert_eq!(
        status, "200",
        "the request in flight was answered before the gateway stopped"
    );
}

#[test]
fn h2c_clients_are_limited_like_http1_clients() {
    let (gw, _upstream) = start(AUTH_RULES);
    let addr = gw.address();
    let statuses = gw.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("h2 prior knowledge");
        tokio::spawn(connection);
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let request = http::Request::builder()
                .uri(format!("http://{addr}/api/v1/auth/login"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            statuses.push(
                sender
                    .send_request(request)
                    .await
                    .expect("response")
                    .status()
                    .as_u16(),
            );
        }
        statuses
    });
    assert_eq!(statuses, [200, 200, 429]);
}

#[test]
fn an_idle_http2_connection_is_closed_and_a_busy_one_is_not() {
    let upstream = Upstream::start();
    // header_timeout 1 s; the upstream may take 3.5 s to answer.
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = "127.0.0.1:{}"
upstream = "http://127.0.0.1:{}"
admin_listen = "127.0.0.1:{}"
header_timeout = "1s"
upstream_timeout = "10s"
"#,
        free_port(),
        upstream.port,
        free_port()
    ));
    let addr = gw.address();
    gw.block_on(async move {
        let connect = || async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .expect("h2 prior knowledge");
            (sender, tokio::spawn(connection))
        };
        let get = |sender: &mut hyper::client::conn::http2::SendRequest<_>, path: &str| {
            let request = http::Request::builder()
                .uri(format!("http://{addr}{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            sender.send_request(request)
        };
        // The idle connection goes within two header timeouts.
        let (mut idle, idle_connection) = connect().await;
        assert_eq!(
            get(&mut idle, "/other").await.expect("response").status(),
            200
        );
        // A request still waiting for its answer keeps its connection open.
        let (mut slow, _slow_connection) = connect().await;
        let (mut busy, busy_connection) = connect().await;
        let busy_requests = async {
            for _ in 0..12 {
                assert_eq!(
                    get(&mut busy, "/other").await.expect("response").status(),
                    200
                );
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        };
        let (slow_answer, ()) = tokio::join!(get(&mut slow, "/slow/3500"), busy_requests);
        assert_eq!(
            slow_answer.expect("the slow request was cut off").status(),
            200
        );
        assert!(
            idle_connection.is_finished(),
            "an idle HTTP/2 connection was still open after 3 s"
        );
        assert!(
            !busy_connection.is_finished(),
            "a busy HTTP/2 connection was closed"
        );
    });
}

#[test]
fn connections_past_the_cap_are_closed_at_once() {
    let upstream = Upstream::start();
    // A long header timeout, so the held connections outlast a slow, loaded test run.
    let gw = Gateway::start(
        &config(
            free_port(),
            upstream.port,
            free_port(),
            &format!("max_connections = 2\n{AUTH_RULES}"),
        )
        .replace("header_timeout = \"1s\"", "header_timeout = \"30s\""),
    );
    use std::io::Write;
    let wait_open = |n: usize| {
        eventually(
            &format!("never {n} connections open"),
            Duration::from_secs(5),
            || {
                gw.metrics()
                    .contains(&format!("ratewarden_open_connections {n}\n"))
            },
        );
    };
    // The harness's readiness probes must be gone before the cap is tested.
    wait_open(0);
    // Two clients hold connections open, half-way through a request head.
    let mut held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(gw.address()).expect("connect");
            s.write_all(b"GET /api/v1/users HTTP/1.1\r\n")
                .expect("write");
            s
        })
        .collect();
    wait_open(2);
    let third = gw.get("127.0.5.1", "/api/v1/users", &[]);
    assert_eq!(
        third.status,
        0,
        "a third connection is closed without an answer: {}",
        gw.metrics()
    );
    assert!(gw
        .metrics()
        .contains(r#"ratewarden_refused_total{reason="connection_limit"}"#));
    // Closing the held ones frees their places; service resumes by itself.
    held.clear();
    eventually("service did not resume", Duration::from_secs(5), || {
        gw.get("127.0.5.2", "/api/v1/users", &[]).status == 200
    });
}

#[test]
fn an_http2_rapid_reset_flood_is_cut_off_and_others_are_served() {
    let (gw, _upstream) = start(AUTH_RULES);
    let addr = gw.address();
    // CVE-2023-44487: open streams and reset them at once, as fast as possible.
    let outcome = gw.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
        let driver = tokio::spawn(connection);
        let mut sent = 0u32;
        for _ in 0..20_000 {
            let request = http::Request::builder()
                .uri(format!("http://{addr}/api/v1/users"))
                .body(())
                .expect("request");
            match client.send_request(request, true) {
                Ok((_response, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    sent += 1;
                }
                Err(_) => break,
            }
            if sent % 64 == 0 {
                tokio::task::yield_now().await;
                if driver.is_finished() {
                    break;
                }
            }
        }
        // The server ends the connection (GOAWAY ENHANCE_YOUR_CALM, or a reset once the
        // client keeps going); the client never does.
        let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
        (sent, ended.is_ok())
    });
    assert!(
        outcome.1,
        "the flooding connection was not closed (after {} streams)",
        outcome.0
    );
    assert!(
        outcome.0 < 20_000,
        "the server let all {} resets through",
        outcome.0
    );
    assert_eq!(
        gw.get("127.0.6.1", "/api/v1/users", &[]).status,
        200,
        "others are still served"
    );
}

#[test]
fn an_http2_continuation_flood_is_cut_off_and_others_are_served() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (gw, _upstream) = start(AUTH_RULES);
    // CVE-2024-27316 and its kin: a header block that never ends, one CONTINUATION
    // frame after another, each full of header fields the server must hold or decode.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).expect("length").to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const CONTINUATION: u8 = 0x9;
    const END_STREAM: u8 = 0x1;
    // HPACK: :method GET, :scheme http, :path / (static table), then literal fields
    // without indexing, a new one-letter name with a 100-byte value each.
    let mut field = vec![0x00, 0x01, b'x', 100];
    field.extend_from_slice(&[b'a'; 100]);
    let fields: Vec<u8> = field.repeat(100);
    let mut client = std::net::TcpStream::connect(gw.address()).expect("connect");
    client
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The server's frames, read as they come: the GOAWAY's error code once one
    // arrives, and whether the connection ended.
    let closed = std::sync::Arc::new(AtomicBool::new(false));
    let reader = {
        let (mut client, closed) = (client.try_clone().expect("clone"), closed.clone());
        std::thread::spawn(move || {
            let mut received = Vec::new();
            let mut buffer = [0u8; 4096];
            let mut goaway = None;
            while let Ok(n @ 1..) = client.read(&mut buffer) {
                received.extend_from_slice(&buffer[..n]);
                while received.len() >= 9 {
                    let length = usize::from(received[0]) << 16
                        | usize::from(received[1]) << 8
                        | usize::from(received[2]);
                    if received.len() < 9 + length {
                        break;
                    }
                    let frame: Vec<u8> = received.drain(..9 + length).collect();
                    if frame[3] == 0x7 && length >= 8 {
                        goaway = Some(u32::from_be_bytes([
                            frame[13], frame[14], frame[15], frame[16],
                        ]));
                        closed.store(true, Ordering::SeqCst);
                    }
                }
            }
            closed.store(true, Ordering::SeqCst);
            goaway
        })
    };
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    opening.extend(frame(HEADERS, END_STREAM, 1, &[0x82, 0x86, 0x84]));
    client.write_all(&opening).expect("preface");
    const LIMIT: usize = 20 * 1024 * 1024;
    let continuation = frame(CONTINUATION, 0, 1, &fields);
    let mut sent = 0;
    let mut write_error = None;
    while sent < LIMIT && !closed.load(Ordering::SeqCst) {
        if let Err(e) = client.write_all(&continuation) {
            write_error = Some(e.kind());
            break;
        }
        sent += continuation.len();
    }
    // Ended by the server (its GOAWAY or close seen, or a write refused because it
    // closed), not by a write that timed out on buffers it stopped reading.
    use std::io::ErrorKind;
    assert!(
        closed.load(Ordering::SeqCst)
            || matches!(
                write_error,
                Some(
                    ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                )
            ),
        "the flood was not cut off by the server ({sent} bytes sent, write error {write_error:?})"
    );
    // The reader's clone keeps the socket open: shut it so the reader ends even if the
    // server never does.
    let _ = client.shutdown(std::net::Shutdown::Both);
    let goaway = reader.join().expect("reader");
    // h2 allows a header block a few CONTINUATION frames beyond what the header size
    // limit needs, then sends GOAWAY and ends the connection; the writes after that
    // fail. (Whether the reader saw the GOAWAY before the reset that follows it is a
    // race, and how many bytes went first says more about the kernel's socket buffers
    // than about the server: both are only checked loosely.)
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    assert!(
        sent < LIMIT,
        "the server took the whole {LIMIT}-byte header block"
    );
    assert!(
        matches!(goaway, None | Some(ENHANCE_YOUR_CALM)),
        "GOAWAY with error code {goaway:?}"
    );
    assert_eq!(
        gw.get("127.0.6.2", "/api/v1/users", &[]).status,
        200,
        "others are still served"
    );
}

#[test]
fn reputation_lists_deny_at_once_and_exempt_from_limits() {
    let dir = support::temp_dir();
    std::fs::write(
        dir.join("deny.txt"),
        "# a threat feed\n127.0.3.0/24\n\n127.0.4.9  # one address\n",
    )
    .expect("write deny list");
    std::fs::write(dir.join("allow.txt"), "127.0.5.5\n").expect("write allow list");
    let upstream = Upstream::start();
    let lists = format!(
        "[reputation]\ndeny = [\"{}\"]\nallow = [\"{}\"]\n{AUTH_RULES}",
        dir.join("deny.txt").display(),
        dir.join("allow.txt").display()
    );
    let gw = Gateway::start(&config(free_port(), upstream.port, free_port(), &lists));
    let denied = gw.get("127.0.3.77", "/api/v1/auth/login", &[]);
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(
        denied.body.contains("\"reason\":\"deny_list\""),
        "{}",
        denied.body
    );
    assert_eq!(gw.get("127.0.4.9", "/", &[]).status, 403);
    assert_eq!(
        upstream.requests(),
        0,
        "nothing from a denied client reaches the upstream"
    );
    // The auth rule allows 2 per hour; an allowed address is not limited at all.
    let allowed: Vec<u16> = (0..6)
        .map(|_| gw.get("127.0.5.5", "/api/v1/auth/login", &[]).status)
        .collect();
    assert_eq!(allowed, [200; 6]);
    assert!(gw.metrics().contains("ratewarden_allow_listed_total 6"));
    assert!(gw
        .metrics()
        .contains("ratewarden_refused_total{reason=\"deny_list\"} 2"));
    // Others are limited as usual.
    let others: Vec<u16> = (0..3)
        .map(|_| gw.get("127.0.6.6", "/api/v1/auth/login", &[]).status)
        .collect();
    assert_eq!(others, [200, 200, 429]);
}
