//! Login protection, end to end: the real binary on loopback in front of a login API
//! that answers 401 or 200 by password, clients speaking from distinct 127.x.y.z
//! addresses.

#![allow(clippy::disallowed_methods)] // a held attempt is timed with Instant

mod support;

use ratewarden_testkit::RedisServer;
use std::time::{Duration, Instant};
use support::{eventually, free_port, Gateway, LoginApp, Receiver, Reply, GOOD_PASSWORD};

const SECRET: &str = "login-test-privacy-secret-0123456789";

fn config(app: &LoginApp, login: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{}"
upstream = "http://127.0.0.1:{}"
admin_listen = "127.0.0.1:{}"

[privacy]
secret = "{SECRET}"

[[login]]
name = "web_login"
match = {{ path = "/api/v1/auth/login", methods = ["POST"] }}
account = "json:username"
{login}

{extra}
"#,
        free_port(),
        app.port,
        free_port()
    )
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.body))
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", reply.headers))
}

fn metric(gw: &Gateway, line_start: &str) -> f64 {
    gw.metrics()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn five_failures_from_different_addresses_lock_the_account() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(
        &app,
        r#"per_account = { failures = 5, window = "1h", lockout = "1h" }"#,
        "[abuse]\nalert_after = 100\n[[alerts]]\nkind = \"log\"\n",
    ));
    for i in 1..=5 {
        let reply = gw.login(&format!("127.0.1.{i}"), "alice@example.com", "guess");
        assert_eq!(reply.status, 401, "attempt {i} reaches the upstream");
    }
    // Whatever the address and the spelling, and even with the right password.
    let reply = gw.login("127.0.1.9", " ALICE@Example.com", GOOD_PASSWORD);
    assert_eq!(reply.status, 429, "{}", reply.body);
    let body = json(&reply);
    assert_eq!(body["error"], "account_locked");
    assert_eq!(body["login"], "web_login");
    assert!((3500..=3600).contains(&retry_after(&reply)));
    assert_eq!(app.seen().len(), 5, "a locked account's attempts stop here");
    // Other accounts, and the same addresses, are untouched.
    assert_eq!(gw.login("127.0.1.1", "bob", GOOD_PASSWORD).status, 200);
    assert_eq!(
        metric(
            &gw,
            r#"ratewarden_login_attempts_total{login="web_login",result="locked"}"#
        ),
        1.0
    );
    // The refusal is the client's violation, as a rule's 429 is; the 401s are not.
    assert_eq!(
        metric(
            &gw,
            r#"ratewarden_abuse_violations_total{source="gateway"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            r#"ratewarden_abuse_violations_total{source="upstream"}"#
        ),
        0.0
    );
}

#[test]
fn a_success_resets_the_failures() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(&app, "", ""));
    for _ in 0..4 {
        assert_eq!(gw.login("127.0.2.1", "carol", "wrong").status, 401);
    }
    assert_eq!(gw.login("127.0.2.1", "carol", GOOD_PASSWORD).status, 200);
    for _ in 0..4 {
        assert_eq!(gw.login("127.0.2.1", "carol", "wrong").status, 401);
    }
    assert_eq!(gw.login("127.0.2.1", "carol", GOOD_PASSWORD).status, 200);
}

#[test]
fn an_attempt_through_a_trusted_proxy_reaches_the_login_api_with_the_vouched_chain() {
    let app = LoginApp::start(Duration::ZERO);
    let body = serde_json::json!({ "username": "dave", "password": GOOD_PASSWORD }).to_string();
    // A good attempt from `peer` claiming `forwarded_for`: what the login API heard.
    let heard = |clients: &str, peer: &str, forwarded_for: &str| {
        let gw = Gateway::start(&config(&app, "", clients));
        let headers = [("X-Forwarded-For", forwarded_for)];
        let reply = gw.post(
            peer,
            "/api/v1/auth/login",
            "application/json",
            body.as_bytes(),
            &headers,
        );
        assert_eq!(reply.status, 200);
        app.seen()
            .last()
            .and_then(|seen| seen.forwarded_for.clone())
    };
    // Left of the identified client, what the client wrote is dropped; our peer is
    // appended.
    assert_eq!(
        heard(
            "[clients]\ntrusted_proxies = [\"127.0.0.0/8\"]",
            "127.0.0.4",
            "6.6.6.6, 203.0.113.60, 127.0.0.9"
        )
        .as_deref(),
        Some("203.0.113.60, 127.0.0.9, 127.0.0.4")
    );
    // From an untrusted peer, the header names the peer alone.
    assert_eq!(
        heard("", "127.0.0.5", "203.0.113.61").as_deref(),
        Some("127.0.0.5")
    );
    assert_eq!(app.seen().len(), 2);
}

#[test]
fn concurrent_guesses_never_exceed_the_failure_limit() {
    // The API takes 300 ms per answer, so twenty guesses fired at once all arrive
    // before any failure is known.
    let app = LoginApp::start(Duration::from_millis(300));
    let gw = std::sync::Arc::new(Gateway::start(&config(&app, "", "")));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let gw = gw.clone();
            std::thread::spawn(move || gw.login(&format!("127.0.3.{}", i + 1), "dave", "x").status)
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .map(|t| t.join().expect("join"))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(app.seen().len(), 5);
    let reply = gw.login("127.0.3.99", "dave", GOOD_PASSWORD);
    assert_eq!(json(&reply)["error"], "account_locked");
}

#[test]
fn the_delay_grows_from_the_last_failure_and_is_capped() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(
        &app,
        r#"per_account = { failures = 20 }
progressive_delay = { after = 2, base = "1s", max = "2s", mode = "reject" }"#,
        "",
    ));
    let source = "127.0.4.1";
    assert_eq!(gw.login(source, "erin", "a").status, 401);
    assert_eq!(
        gw.login(source, "erin", "b").status,
        401,
        "no delay before `after`"
    );
    let mut waits = Vec::new();
    for _ in 0..3 {
        let refused = gw.login(source, "erin", "c");
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(json(&refused)["error"], "login_throttled");
        let wait = retry_after(&refused);
        waits.push(wait);
        std::thread::sleep(Duration::from_millis(wait * 1000 + 100));
        assert_eq!(
            gw.login(source, "erin", "c").status,
            401,
            "after the wait the attempt goes through"
        );
    }
    assert_eq!(waits, [1, 2, 2], "base, doubled, then capped at max");
    assert_eq!(app.seen().len(), 5, "refused attempts never reach the API");
}

#[test]
fn a_held_attempt_is_delayed_then_forwarded() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(
        &app,
        r#"progressive_delay = { after = 1, base = "600ms", max = "5s" }"#,
        "",
    ));
    assert_eq!(gw.login("127.0.5.1", "frank", "a").status, 401);
    let started = Instant::now();
    assert_eq!(gw.login("127.0.5.1", "frank", "b").status, 401);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "held for about the base delay: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_full_hold_queue_answers_503_at_once_without_blaming_the_client() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = std::sync::Arc::new(Gateway::start(
        &config(
            &app,
            r#"progressive_delay = { after = 1, base = "2s", max = "5s" }"#,
            "",
        )
        .replacen("[server]\n", "[server]\nmax_delayed = 1\n", 1),
    ));
    assert_eq!(gw.login("127.0.5.9", "gina", "a").status, 401);
    // Two more attempts at once: the first is held for the delay, and takes the only
    // place; the second finds none.
    let handles: Vec<_> = (0..2_u64)
        .map(|i| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300 * i));
                let started = Instant::now();
                (gw.login("127.0.5.9", "gina", "b"), started.elapsed())
            })
        })
        .collect();
    let answers: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    let (held, held_for) = &answers[0];
    assert_eq!(held.status, 401, "held, then forwarded: {}", held.body);
    assert!(*held_for >= Duration::from_millis(1500), "{held_for:?}");
    let (refused, refused_after) = &answers[1];
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        *refused_after < Duration::from_secs(1),
        "refused at once, not held: {refused_after:?}"
    );
    assert!(retry_after(refused) >= 1);
    assert!(
        refused.body.contains("delay_queue_full"),
        "{}",
        refused.body
    );
    assert_eq!(
        metric(
            &gw,
            r#"ratewarden_login_attempts_total{login="web_login",result="delay_queue_full"}"#
        ),
        1.0
    );
    // The refusal was the gateway's capacity, not the account's conduct: the right
    // password still goes through (held while a delay runs).
    assert_eq!(gw.login("127.0.5.9", "gina", GOOD_PASSWORD).status, 200);
}

#[test]
fn the_challenge_header_comes_only_from_the_gateway() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(&app, "challenge_after = 2", ""));
    let body = br#"{"username":"grace","password":"x"}"#;
    let forged = [("X-Ratewarden-Challenge", "passed")];
    for _ in 0..2 {
        let reply = gw.post(
            "127.0.6.1",
            "/api/v1/auth/login",
            "application/json",
            body,
            &forged,
        );
        assert_eq!(reply.status, 401);
    }
    let reply = gw.post(
        "127.0.6.1",
        "/api/v1/auth/login",
        "application/json",
        body,
        &forged,
    );
    assert_eq!(reply.status, 401);
    let challenges: Vec<Option<String>> = app.seen().into_iter().map(|s| s.challenge).collect();
    assert_eq!(
        challenges,
        [None, None, Some("required".to_owned())],
        "the client's own header is stripped; the gateway adds it from the 2nd failure"
    );
    // Elsewhere too, a client cannot send it.
    gw.post("127.0.6.1", "/other", "application/json", b"{}", &forged);
    assert_eq!(app.seen().last().and_then(|s| s.challenge.clone()), None);
}

#[test]
fn ambiguous_bodies_are_refused_and_odd_ones_pass_untouched() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(&app, r#"max_body = "16KiB""#, ""));
    let path = "/api/v1/auth/login";
    // The API would read the last username, we would count the first.
    let twice = br#"{"username":"decoy","username":"henry","password":"x"}"#;
    let reply = gw.post("127.0.7.1", path, "application/json", twice, &[]);
    assert_eq!(reply.status, 400, "{}", reply.body);
    let batched = br#"[{"username":"a","password":"x"},{"username":"b","password":"y"}]"#;
    assert_eq!(
        gw.post("127.0.7.1", path, "application/json", batched, &[])
            .status,
        400
    );
    assert!(app.seen().is_empty(), "neither reached the API");
    // Not JSON: passed on as it came, counted.
    let form = b"username=henry&password=x";
    let reply = gw.post(
        "127.0.7.1",
        path,
        "application/x-www-form-urlencoded",
        form,
        &[],
    );
    assert_eq!(
        reply.status, 401,
        "the API's own answer (it reads forms too)"
    );
    // 10 MiB: passed on byte for byte without being held in memory.
    let mut big = br#"{"username":"henry","password":"x","pad":""#.to_vec();
    big.resize(10 << 20, b'a');
    big.extend_from_slice(br#""}"#);
    let reply = gw.post("127.0.7.1", path, "application/json", &big, &[]);
    assert_eq!(reply.status, 401, "{}", reply.body);
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body_len, form.len());
    assert_eq!(seen[1].body_len, big.len());
    assert_eq!(
        metric(
            &gw,
            r#"ratewarden_login_attempts_total{login="web_login",result="oversized"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            r#"ratewarden_login_attempts_total{login="web_login",result="refused_ambiguous"}"#
        ),
        2.0
    );
}

#[test]
fn stuffing_from_one_address_is_flagged_without_leaking_credentials() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(
        &app,
        "stuffing = { accounts_per_ip = 20 }",
        r#"[[rules]]
name = "everything"
match = { path_prefix = "/" }
rate = "1000/s"
"#,
    ));
    let canary_password = "Canary-Pa55word-7f3a";
    let webhook = Receiver::start(200, Duration::ZERO);
    let gw_alerting = Gateway::start(&config(
        &app,
        "stuffing = { accounts_per_ip = 20 }",
        &format!(
            "[abuse]\nalert_after = 1000\n[[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\n",
            webhook.port
        ),
    ));
    for i in 0..30 {
        let user = format!("canary-user-{i}@example.com");
        assert_eq!(
            gw_alerting
                .login("127.0.8.2", &user, canary_password)
                .status,
            401
        );
    }
    eventually(
        "the stuffing alert is delivered",
        Duration::from_secs(5),
        || !webhook.received().is_empty(),
    );
    let alerts = webhook.alerts();
    assert_eq!(alerts.len(), 1, "one alert per attacker: {alerts:?}");
    assert_eq!(alerts[0]["kind"], "credential_stuffing");
    assert_eq!(alerts[0]["client_ip"], "127.0.8.2");
    assert_eq!(alerts[0]["login"]["login"], "web_login");
    let accounts = alerts[0]["login"]["distinct_accounts"]
        .as_u64()
        .unwrap_or(0);
    assert!((20..=23).contains(&accounts), "{accounts}");
    for received in webhook.received() {
        let text = received.text();
        assert!(
            !text.contains("canary-user") && !text.contains(canary_password),
            "{text}"
        );
    }
    for i in 0..50 {
        let user = format!("canary-user-{i}@example.com");
        assert_eq!(gw.login("127.0.8.1", &user, canary_password).status, 401);
    }
    assert_eq!(
        metric(
            &gw,
            r#"ratewarden_login_attacks_total{login="web_login",result="stuffing"}"#
        ),
        1.0,
        "one alert per attacker per window"
    );
    let log = gw.log();
    assert!(log.contains("credential_stuffing"), "{log}");
    assert!(
        !log.contains("canary-user"),
        "an account name reached the log"
    );
    assert!(!log.contains(canary_password), "a password reached the log");
    assert!(
        !gw.metrics().contains("canary"),
        "a credential reached the metrics"
    );
}

#[test]
fn stuffing_raises_the_threat_level_until_the_client_is_blocked() {
    let app = LoginApp::start(Duration::ZERO);
    let token = "login-test-admin-token-0123";
    let gw = Gateway::start(&config(
        &app,
        "stuffing = { accounts_per_ip = 10 }",
        &format!(
            r#"[admin]
token = "{token}"

[threat]
"#
        ),
    ));
    let mut statuses = Vec::new();
    for i in 0..60 {
        let reply = gw.login("127.0.9.1", &format!("user-{i}"), "Summer2026!");
        statuses.push(reply.status);
        if reply.status == 403 {
            break;
        }
        // Give the observation flusher (every 200 ms) a chance to score the client.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        statuses.last(),
        Some(&403),
        "the stuffer ends up blocked: {statuses:?}"
    );
    let standing = gw.admin("GET", "/admin/clients/127.0.9.1", Some(token), "");
    assert_eq!(standing.status, 200, "{}", standing.body);
    let standing = json(&standing);
    let reasons = standing.to_string();
    assert!(reasons.contains("credential_stuffing="), "{reasons}");
    // A user logging in normally from elsewhere is untouched.
    assert_eq!(gw.login("127.0.9.2", "user-0", GOOD_PASSWORD).status, 200);
}

#[test]
fn two_instances_on_redis_share_failures_and_lockouts() {
    let redis = RedisServer::start();
    let app = LoginApp::start(Duration::ZERO);
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    let a = Gateway::start(&config(&app, "", &store));
    let b = Gateway::start(&config(&app, "", &store));
    for i in 0..5 {
        let gw = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            gw.login(&format!("127.0.10.{}", i + 1), "ivan", "x").status,
            401
        );
    }
    for gw in [&a, &b] {
        let reply = gw.login("127.0.10.50", "ivan", GOOD_PASSWORD);
        assert_eq!(json(&reply)["error"], "account_locked", "{}", reply.body);
    }
    assert_eq!(app.seen().len(), 5);
    // The store holds pseudonyms, never the account name.
    let keys = std::process::Command::new("redis-cli")
        .args(["-u", &redis.url(), "--scan"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(keys.contains(":login"), "{keys}");
    assert!(!keys.contains("ivan"), "{keys}");
}

#[test]
fn one_address_spraying_many_accounts_meets_the_per_address_limit() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(
        &app,
        r#"per_ip = { attempts = 10, window = "1h" }"#,
        "",
    ));
    for i in 0..10 {
        assert_eq!(
            gw.login("127.0.11.1", &format!("sprayed-{i}"), "123456")
                .status,
            401
        );
    }
    let reply = gw.login("127.0.11.1", "sprayed-10", "123456");
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(json(&reply)["rule"], "web_login:per_ip");
    assert_eq!(app.seen().len(), 10);
    // Another address is not held back.
    assert_eq!(
        gw.login("127.0.11.2", "sprayed-0", GOOD_PASSWORD).status,
        200
    );
}

#[test]
fn account_and_ip_scope_lets_the_real_user_in_during_a_lockout() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(&app, r#"lockout_scope = "account+ip""#, ""));
    let (home, attacker, elsewhere) = ("127.0.12.1", "127.0.12.66", "127.0.12.2");
    assert_eq!(gw.login(home, "judy", GOOD_PASSWORD).status, 200);
    for _ in 0..5 {
        assert_eq!(gw.login(attacker, "judy", "guess").status, 401);
    }
    assert_eq!(
        json(&gw.login(attacker, "judy", GOOD_PASSWORD))["error"],
        "account_locked"
    );
    assert_eq!(
        json(&gw.login(elsewhere, "judy", GOOD_PASSWORD))["error"],
        "account_locked"
    );
    assert_eq!(
        gw.login(home, "judy", GOOD_PASSWORD).status,
        200,
        "the address that logged in before still gets in"
    );
}

#[test]
fn unidentified_attempts_can_be_refused_so_padding_does_not_escape_the_account_limit() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(
        &app,
        r#"max_body = "1KiB"
unidentified = "reject""#,
        "",
    ));
    let path = "/api/v1/auth/login";
    let mut padded = br#"{"username":"kate","password":"x","pad":""#.to_vec();
    padded.resize(4096, b'a');
    padded.extend_from_slice(br#""}"#);
    let reply = gw.post("127.0.13.1", path, "application/json", &padded, &[]);
    assert_eq!(reply.status, 413, "{}", reply.body);
    // JSON that a lenient parser takes (Python's reads NaN) but ours does not.
    let lenient = br#"{"username":"kate","password":"x","n":NaN}"#;
    assert_eq!(
        gw.post("127.0.13.1", path, "application/json", lenient, &[])
            .status,
        400
    );
    let nameless = br#"{"email":"kate@example.com","password":"x"}"#;
    assert_eq!(
        gw.post("127.0.13.1", path, "application/json", nameless, &[])
            .status,
        400
    );
    assert!(app.seen().is_empty());
    assert_eq!(gw.login("127.0.13.1", "kate", GOOD_PASSWORD).status, 200);
}

#[test]
fn a_chunked_body_longer_than_max_body_is_streamed_on_intact() {
    let app = LoginApp::start(Duration::ZERO);
    let gw = Gateway::start(&config(&app, r#"max_body = "1KiB""#, ""));
    let mut body = br#"{"username":"leo","password":"x","pad":""#.to_vec();
    body.resize(100_000, b'b');
    body.extend_from_slice(br#""}"#);
    let mut request = b"POST /api/v1/auth/login HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(3000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let reply = gw.raw("127.0.14.1", &request);
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert_eq!(app.seen().first().map(|s| s.body_len), Some(body.len()));
}

#[test]
fn form_and_header_sources_name_the_account_too() {
    let app = LoginApp::start(Duration::ZERO);
    let form_login = r#"
[[login]]
name = "form_login"
match = { path = "/form/login", methods = ["POST"] }
account = "form:username"
per_account = { failures = 2 }

[[login]]
name = "header_login"
match = { path = "/header/login", methods = ["POST"] }
account = "header:X-Username"
per_account = { failures = 2 }
"#;
    let gw = Gateway::start(&config(&app, "", form_login));
    let form = "application/x-www-form-urlencoded";
    for _ in 0..2 {
        let body = b"username=Mallory%40Example.com&password=x";
        assert_eq!(
            gw.post("127.0.15.1", "/form/login", form, body, &[]).status,
            401
        );
    }
    let body = b"username=mallory@example.com&password=x";
    let reply = gw.post("127.0.15.2", "/form/login", form, body, &[]);
    assert_eq!(
        json(&reply)["error"],
        "account_locked",
        "one account, however encoded"
    );
    assert_eq!(json(&reply)["login"], "form_login");
    let body = br#"{"username":"nina","password":"x"}"#;
    for _ in 0..2 {
        let reply = gw.post(
            "127.0.15.3",
            "/header/login",
            "application/json",
            body,
            &[("X-Username", "Nina")],
        );
        assert_eq!(reply.status, 401);
    }
    let reply = gw.post(
        "127.0.15.4",
        "/header/login",
        "application/json",
        body,
        &[("X-Username", "nina")],
    );
    assert_eq!(json(&reply)["error"], "account_locked");
    let twice = [("X-Username", "nina"), ("X-Username", "other")];
    let reply = gw.post(
        "127.0.15.4",
        "/header/login",
        "application/json",
        body,
        &twice,
    );
    assert_eq!(reply.status, 400, "a repeated account header is refused");
}
