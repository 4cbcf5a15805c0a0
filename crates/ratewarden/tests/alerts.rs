//! Abuse alerts from the real binary to real HTTP receivers on loopback: a webhook that
//! checks the signature, and a Sentry ingestion endpoint that records what the official
//! `sentry` crate sent. Fields, cooldown, the storm bound, secrets kept out of
//! everything, and a dead receiver changing no response.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use ratewarden_detect::privacy::hmac_hex;
use ratewarden_testkit::RedisServer;
use std::time::{Duration, Instant};
use support::{eventually, free_port, Gateway, Receiver, Upstream};

const WEBHOOK_SECRET: &str = "whsec-test-0123456789";
/// Secrets the client sends; none may appear in anything that leaves the gateway.
const CANARIES: &[&str] = &[
    "CANARY-BEARER-7f3a",
    "CANARY-COOKIE-91bc",
    "CANARY-QUERY-TOKEN-55",
    "CANARY-APIKEY-d00d",
    "alice-canary@example.com",
];

fn config(upstream: u16, webhook: u16, sentry: u16, cooldown: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{}"
upstream = "http://127.0.0.1:{upstream}"
admin_listen = "127.0.0.1:{}"

[clients]
trusted_proxies = ["127.0.0.1/32"]

[[rules]]
name = "api"
match = {{ path_prefix = "/api/" }}
key = "ip"
rate = "1/h"
burst = 1

[abuse]
window = "1h"
alert_after = 3
cooldown = "{cooldown}"
clients = ["ip", "user", "api_key"]
user_header = "x-user-id"
api_key_header = "x-api-key"
instance = "gw-test-1"
{extra}

[privacy]
secret = "test-privacy-secret-0123456789"

[[alerts]]
kind = "webhook"
url = "http://127.0.0.1:{webhook}/hooks/security"
secret = "{WEBHOOK_SECRET}"
timeout = "2s"

[[alerts]]
kind = "sentry"
dsn = "http://publickey@127.0.0.1:{sentry}/42"

[[alerts]]
kind = "log"
"#,
        free_port(),
        free_port()
    )
}

fn secret_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Authorization", "Bearer CANARY-BEARER-7f3a"),
        ("Cookie", "session=CANARY-COOKIE-91bc"),
        ("X-Api-Key", "CANARY-APIKEY-d00d"),
        ("X-User-Id", "alice-canary@example.com"),
        ("User-Agent", "evil-scraper/1.0"),
    ]
}

const PATH: &str = "/api/items?page=2&token=CANARY-QUERY-TOKEN-55";

#[test]
fn persistent_429s_raise_one_rich_sanitised_alert_per_identity_and_cooldown() {
    let upstream = Upstream::start();
    let webhook = Receiver::start(200, Duration::ZERO);
    let sentry = Receiver::start(200, Duration::ZERO);
    let gw = Gateway::start(&config(upstream.port, webhook.port, sentry.port, "3s", ""));
    let headers = secret_headers();
    let statuses: Vec<u16> = (0..6)
        .map(|_| gw.get("127.0.0.9", PATH, &headers).status)
        .collect();
    assert_eq!(statuses, [200, 429, 429, 429, 429, 429]);

    // Three identities (ip, user, api key), three violations each reached at the 3rd
    // 429: one alert each; the later 429s fall within the cooldown.
    eventually("three webhook alerts", Duration::from_secs(10), || {
        webhook.alerts().len() >= 3
    });
    std::thread::sleep(Duration::from_millis(500));
    let alerts = webhook.alerts();
    assert_eq!(alerts.len(), 3, "one per identity within the cooldown");
    // Alerts raised together may share a POST; each POST is signed.
    for a in &webhook.received() {
        assert_eq!(a.path, "/hooks/security");
        // The signature covers the timestamp and the body.
        let signature = a.header("x-ratewarden-signature").unwrap();
        let (t, v1) = signature
            .strip_prefix("t=")
            .unwrap()
            .split_once(",v1=")
            .unwrap();
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(&a.body);
        assert_eq!(v1, hmac_hex(WEBHOOK_SECRET.as_bytes(), &signed));
    }
    let by_identity = |kind: &str| {
        alerts
            .iter()
            .find(|j| j["identity"] == kind)
            .unwrap()
            .clone()
    };
    let ip = by_identity("ip");
    assert_eq!(ip["kind"], "rate_limit_abuse");
    assert_eq!(ip["identity_value"], "127.0.0.9");
    assert_eq!(ip["client_ip"], "127.0.0.9");
    assert_eq!(ip["client_network"], "127.0.0.9");
    // Violations are counted in batches (every 500 ms): the first alert comes with the
    // 3rd violation or with the batch that holds it.
    let first = ip["violations"].as_u64().unwrap();
    assert!((3..=5).contains(&first), "{ip}");
    assert_eq!(ip["window_seconds"], 3600);
    assert_eq!(ip["violations_since_last_alert"], first);
    assert_eq!(ip["rules"], serde_json::json!(["api"]));
    assert_eq!(ip["method"], "GET");
    assert_eq!(ip["path"], "/api/items?page=2&token=***");
    assert_eq!(ip["user_agent"], "evil-scraper/1.0");
    assert_eq!(ip["authenticated"], true);
    assert!(ip["user"].as_str().unwrap().starts_with("user_"), "{ip}");
    assert!(
        ip["api_key_id"].as_str().unwrap().starts_with("key_"),
        "{ip}"
    );
    assert_eq!(ip["severity"], "high");
    assert_eq!(ip["instance"], "gw-test-1");
    assert_eq!(ip["source"], "gateway");
    assert!(ip["first_violation"].as_u64().unwrap() <= ip["last_violation"].as_u64().unwrap());
    assert_eq!(by_identity("user")["identity_value"], ip["user"]);
    assert_eq!(by_identity("api_key")["identity_value"], ip["api_key_id"]);

    // Sentry: what the official crate sent to the envelope endpoint.
    eventually("three Sentry events", Duration::from_secs(10), || {
        sentry.received().len() >= 3
    });
    let events = sentry.received();
    assert!(
        events
            .iter()
            .all(|e| e.path.starts_with("/api/42/envelope")),
        "{:?}",
        events[0].path
    );
    let ip_event = events
        .iter()
        .map(support::Received::text)
        .find(|t| t.contains("\"identity\":\"ip\""))
        .unwrap();
    for expected in [
        "\"security_threat\":\"rate_limit_abuse\"",
        "\"client_ip\":\"127.0.0.9\"",
        "\"threat_context\"",
        "\"fingerprint\":[\"rate_limit_abuse\",\"ip\",\"127.0.0.9\"]",
    ] {
        assert!(
            ip_event.contains(expected),
            "{expected} missing from {ip_event}"
        );
    }

    // One alert, one id: the webhook's alert and the Sentry event about it (the event
    // item writes it without hyphens).
    let id = ip["id"].as_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let event_id = format!("\"event_id\":\"{}\"", id.replace('-', ""));
    assert!(
        ip_event.contains(&event_id),
        "{event_id} missing from {ip_event}"
    );
    let ids: std::collections::HashSet<&str> =
        alerts.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "each alert has an id of its own");

    // Level error: the protocol's default, which the crate leaves implicit.
    assert!(
        !ip_event.contains("\"level\":") || ip_event.contains("\"level\":\"error\""),
        "{ip_event}"
    );

    // After the cooldown, the next alert says how many violations it held back.
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(gw.get("127.0.0.9", PATH, &headers).status, 429);
    eventually("a second ip alert", Duration::from_secs(10), || {
        webhook
            .alerts()
            .iter()
            .filter(|j| j["identity"] == "ip")
            .count()
            == 2
    });
    let second = webhook
        .alerts()
        .into_iter()
        .filter(|j| j["identity"] == "ip")
        .nth(1)
        .unwrap();
    assert_eq!(second["violations"], 6);
    assert_ne!(second["id"], ip["id"]);
    assert_eq!(
        second["violations_since_last_alert"].as_u64().unwrap(),
        6 - first,
        "those suppressed by the cooldown, and this one"
    );

    // No secret anywhere: webhook, Sentry, the gateway's own log, the metrics.
    let everything = [
        webhook
            .received()
            .iter()
            .map(|r| format!("{:?}{}", r.headers, r.text()))
            .collect::<String>(),
        sentry
            .received()
            .iter()
            .map(|r| format!("{:?}{}", r.headers, r.text()))
            .collect::<String>(),
        gw.log(),
        gw.metrics(),
    ]
    .concat();
    for canary in CANARIES {
        assert!(!everything.contains(canary), "{canary} leaked");
    }
    assert!(
        gw.log().contains("Rate-limit abuse: ip "),
        "the log sink wrote the alert"
    );
    assert!(
        gw.log().contains("rate limit violation"),
        "violations below the threshold are warned"
    );
    eventually(
        "six webhook deliveries counted",
        Duration::from_secs(10),
        || {
            gw.metrics().contains(
                "ratewarden_abuse_alert_deliveries_total{sink=\"webhook\",outcome=\"sent\"} 6",
            )
        },
    );
}

#[test]
fn dead_receivers_change_no_response_and_count_failures() {
    let upstream = Upstream::start();
    // Nothing listens on these ports.
    let gw = Gateway::start(&config(upstream.port, free_port(), free_port(), "10m", ""));
    let headers = secret_headers();
    three_alerts_without_delay(&gw, "127.0.0.10");
    let sent_to = |sink: &str, outcome: &str| deliveries(&gw, sink, outcome);
    eventually("alerts logged", Duration::from_secs(10), || {
        sent_to("log", "sent") == 3.0
    });
    // Five attempts with backoff (about 4 s), then the failure is counted.
    eventually(
        "webhook failures counted after retries",
        Duration::from_secs(20),
        || sent_to("webhook", "failed") >= 1.0,
    );
    assert_eq!(
        gw.get("127.0.0.12", PATH, &headers).status,
        200,
        "traffic unaffected"
    );
}

#[test]
fn a_hanging_receiver_slows_no_request_and_no_other_sink() {
    let upstream = Upstream::start();
    // Takes every POST and would answer an hour later.
    let webhook = Receiver::start(200, Duration::from_secs(3_600));
    let sentry = Receiver::start(200, Duration::ZERO);
    let text = config(upstream.port, webhook.port, sentry.port, "10m", "")
        .replace("timeout = \"2s\"", "timeout = \"300ms\"");
    assert!(
        text.contains("timeout = \"300ms\""),
        "the webhook gives up on an attempt soon"
    );
    let gw = Gateway::start(&text);
    let headers = secret_headers();
    three_alerts_without_delay(&gw, "127.0.0.11");
    // The other sinks deliver while the webhook is still trying, and requests are
    // answered at once meanwhile.
    eventually(
        "the log and Sentry sinks' alerts",
        Duration::from_secs(10),
        || deliveries(&gw, "log", "sent") == 3.0 && sentry.received().len() >= 3,
    );
    assert_eq!(
        deliveries(&gw, "webhook", "failed"),
        0.0,
        "the webhook was still retrying while the other sinks delivered"
    );
    let during = Instant::now();
    assert_eq!(gw.get("127.0.0.12", PATH, &headers).status, 200);
    assert!(
        during.elapsed() < Duration::from_secs(1),
        "{:?}",
        during.elapsed()
    );
    // Each hung POST times out and is sent again, five times in all; then its alerts
    // are counted as failed.
    eventually(
        "the webhook's alerts counted as failed",
        Duration::from_secs(40),
        || deliveries(&gw, "webhook", "failed") == 3.0,
    );
    let mut attempts: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    for post in webhook.received() {
        *attempts.entry(post.body).or_default() += 1;
    }
    assert!(
        attempts.values().all(|&n| n == 5),
        "{:?}",
        attempts.values()
    );
    assert_eq!(
        webhook.alerts().len(),
        3 * 5,
        "three alerts, each POSTed five times"
    );
    assert_eq!(deliveries(&gw, "webhook", "sent"), 0.0);
}

#[test]
fn a_flood_from_many_clients_is_bounded_work_and_counted_drops() {
    let upstream = Upstream::start();
    // A receiver that takes a second per POST, sent one alert at a time: its queue (500
    // here) fills.
    let webhook = Receiver::start(200, Duration::from_secs(1));
    // One that takes 300 ms per POST, sent the alerts that waited meanwhile together.
    let batched = Receiver::start(200, Duration::from_millis(300));
    let sentry = Receiver::start(200, Duration::ZERO);
    let text = config(
        upstream.port,
        webhook.port,
        sentry.port,
        "10m",
        "queue = 500",
    )
    .replace("timeout = \"2s\"", "timeout = \"2s\"\nbatch = 1")
        + &format!(
            "\n[[alerts]]\nkind = \"webhook\"\nname = \"batched\"\nurl = \"http://127.0.0.1:{}/hooks/batched\"\n",
            batched.port
        );
    assert!(
        text.contains("batch = 1"),
        "the first webhook posts one alert at a time"
    );
    let gw = Gateway::start(&text);
    let clients = 1_500;
    let started = Instant::now();
    let limited: usize = std::thread::scope(|s| {
        let gw = &gw;
        let handles: Vec<_> = (0..8)
            .map(|t| {
                s.spawn(move || {
                    let mut limited = 0;
                    for c in (t..clients).step_by(8) {
                        let xff = format!("10.{}.{}.{}", c / 65536, (c / 256) % 256, c % 256);
                        for _ in 0..4 {
                            let status = gw
                                .get("127.0.0.1", "/api/x", &[("X-Forwarded-For", &xff)])
                                .status;
                            limited += usize::from(status == 429);
                        }
                    }
                    limited
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(limited, clients * 3);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}");
    eventually("every violation counted", Duration::from_secs(20), || {
        let m = gw.metrics();
        metric(&m, "ratewarden_abuse_alerts_raised_total") as usize == clients
    });
    let m = gw.metrics();
    let dropped = metric(
        &m,
        "ratewarden_abuse_alert_deliveries_total{sink=\"webhook\",outcome=\"dropped\"}",
    );
    assert!(
        dropped >= 400.0,
        "the slow webhook's queue (500) overflowed and drops were counted: {dropped}\n{m}"
    );
    assert!(
        webhook.received().len() < 100,
        "delivery stays paced by the receiver"
    );
    // The batched sink's queue held up to 500 of the flood's alerts, and it drains them
    // 100 per POST: at least 500 arrive, many per POST, never more than 100, and each
    // client's at most once.
    eventually(
        "the batched webhook's alerts",
        Duration::from_secs(20),
        || batched.alerts().len() >= 500,
    );
    let posts = batched.received();
    let alerts = batched.alerts();
    assert!(
        posts.len() * 10 <= alerts.len(),
        "{} alerts in {} POSTs",
        alerts.len(),
        posts.len()
    );
    for post in &posts {
        let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
        assert!(body["alerts"].as_array().unwrap().len() <= 100);
    }
    let clients: std::collections::HashSet<&str> = alerts
        .iter()
        .map(|a| a["client_ip"].as_str().unwrap())
        .collect();
    assert_eq!(clients.len(), alerts.len(), "one alert per client");
    // Each webhook's alerts are counted under its own name: the batched one's are all
    // either sent (and received) or dropped, and the slow one's series holds no more
    // than the flood's alerts (sharing a label, the two would add up to more).
    let batched_count = |outcome: &str| deliveries(&gw, "batched", outcome) as usize;
    eventually(
        "the batched webhook's queue drained",
        Duration::from_secs(20),
        || batched_count("sent") + batched_count("dropped") == 1_500,
    );
    assert_eq!(batched_count("sent"), batched.alerts().len());
    let slow: f64 = ["sent", "dropped", "failed"]
        .iter()
        .map(|outcome| deliveries(&gw, "webhook", outcome))
        .sum();
    assert!(slow <= 1_500.0, "{slow}\n{}", gw.metrics());
}

/// Eight requests from `client`: the first admitted, the next seven limited (three
/// alerts: one per identity), all answered at once whatever the sinks are doing.
fn three_alerts_without_delay(gw: &Gateway, client: &str) {
    let started = Instant::now();
    let statuses: Vec<u16> = (0..8)
        .map(|_| gw.get(client, PATH, &secret_headers()).status)
        .collect();
    assert_eq!(statuses, [200, 429, 429, 429, 429, 429, 429, 429]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests were slowed: {:?}",
        started.elapsed()
    );
}

/// Alerts the sink named `sink` counted with `outcome` (sent, failed, dropped).
fn deliveries(gw: &Gateway, sink: &str, outcome: &str) -> f64 {
    metric(
        &gw.metrics(),
        &format!(
            "ratewarden_abuse_alert_deliveries_total{{sink=\"{sink}\",outcome=\"{outcome}\"}}"
        ),
    )
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[test]
fn the_upstreams_own_429s_count_too() {
    let upstream = Upstream::start();
    let webhook = Receiver::start(200, Duration::ZERO);
    let gw = Gateway::start(&config(upstream.port, webhook.port, free_port(), "10m", ""));
    for _ in 0..3 {
        assert_eq!(
            gw.get("127.0.0.11", "/status/429", &[]).status,
            429,
            "the upstream's answer, passed on"
        );
    }
    eventually(
        "an alert for the upstream's 429s",
        Duration::from_secs(10),
        || !webhook.received().is_empty(),
    );
    let alert = &webhook.alerts()[0];
    assert_eq!(alert["source"], "upstream");
    assert_eq!(alert["identity_value"], "127.0.0.11");
    assert_eq!(alert["rules"], serde_json::json!([]));
}

/// Users behind one address (an office's NAT) are counted each on their own: a user
/// who violated once is never blamed for another user's violations from the same
/// address, and the address is counted for all of them.
#[test]
fn users_behind_one_address_are_counted_each_on_their_own() {
    let upstream = Upstream::start();
    let webhook = Receiver::start(200, Duration::ZERO);
    let gw = Gateway::start(&config(upstream.port, webhook.port, free_port(), "10m", ""));
    let as_user = |user: &'static str| vec![("X-User-Id", user)];
    // Within one flush of the violation counts (500 ms), as in a real burst.
    let mut statuses = vec![gw.get("127.0.0.21", "/api/a", &as_user("alice")).status];
    statuses.push(gw.get("127.0.0.21", "/api/a", &as_user("alice")).status);
    for _ in 0..4 {
        statuses.push(gw.get("127.0.0.21", "/api/b", &as_user("bob")).status);
    }
    assert_eq!(statuses, [200, 429, 429, 429, 429, 429]);
    eventually("two alerts", Duration::from_secs(10), || {
        webhook.alerts().len() >= 2
    });
    std::thread::sleep(Duration::from_millis(1500));
    let alerts = webhook.alerts();
    let pseudonyms =
        ratewarden_detect::privacy::Pseudonymiser::new(b"test-privacy-secret-0123456789");
    let (alice, bob) = (
        pseudonyms.pseudonym("user", "alice"),
        pseudonyms.pseudonym("user", "bob"),
    );
    let mut raised: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| {
            (
                a["identity"].as_str().unwrap(),
                a["identity_value"].as_str().unwrap(),
            )
        })
        .collect();
    raised.sort_unstable();
    assert_eq!(
        raised,
        [("ip", "127.0.0.21"), ("user", bob.as_str())],
        "alice violated once: a warning, not an alert; alerts: {alerts:?}"
    );
    let count = |identity: &str| {
        alerts.iter().find(|a| a["identity"] == identity).unwrap()["violations"]
            .as_u64()
            .unwrap()
    };
    // Counted in batches: an alert comes with the 3rd violation or the batch holding it.
    assert!((3..=5).contains(&count("ip")), "{alerts:?}");
    assert!(
        (3..=4).contains(&count("user")),
        "bob's own four: {alerts:?}"
    );
    let bobs = alerts.iter().find(|a| a["identity"] == "user").unwrap();
    assert_eq!(bobs["user"], bob.as_str(), "described by bob's own request");
    assert_eq!(bobs["path"], "/api/b");
    assert!(
        gw.log()
            .lines()
            .any(|l| l.contains("rate limit violation") && l.contains(&alice)),
        "alice's one violation is warned about under her own pseudonym"
    );
    // The address's alert is described by the user who committed most of its
    // violations.
    let address = alerts.iter().find(|a| a["identity"] == "ip").unwrap();
    assert_eq!(address["user"], bob.as_str());
}

/// Several instances agree: on one Redis, a client's violations at either instance
/// add up to one count, and one cooldown holds for both. (Counting in Redis waits on
/// the network, so this also runs the batches that go on as tasks of their own.)
#[test]
fn two_instances_on_one_redis_count_a_client_together_and_alert_once() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    let webhook = Receiver::start(200, Duration::ZERO);
    let sentry = Receiver::start(200, Duration::ZERO);
    // A timeout that covers connecting: a count that fell back to memory would not be
    // shared.
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"\n",
        redis.url()
    );
    let config = || config(upstream.port, webhook.port, sentry.port, "1h", &store);
    let a = Gateway::start(&config());
    let b = Gateway::start(&config().replace("gw-test-1", "gw-test-2"));
    let client = "127.0.0.31";
    let warnings = |gw: &Gateway| gw.log().matches("rate limit violation").count();
    // The limiter's counters are shared too: one admission in all.
    assert_eq!(a.get(client, "/api/x", &[]).status, 200);
    for _ in 0..2 {
        assert_eq!(a.get(client, "/api/x", &[]).status, 429);
    }
    eventually("two warnings at a", Duration::from_secs(5), || {
        warnings(&a) >= 2
    });
    // The third violation, at the other instance: the alert.
    assert_eq!(b.get(client, "/api/x", &[]).status, 429);
    eventually("the alert", Duration::from_secs(5), || {
        !webhook.alerts().is_empty()
    });
    assert_eq!(warnings(&b), 0, "b counted a 3rd violation, not a 1st");
    // More at both, within the cooldown: a's count (4, 5) reaches Redis at a's next
    // flush and finds b's cooldown there; b's own batch waits its quiet time (5 s).
    for gw in [&a, &b, &a, &b] {
        assert_eq!(gw.get(client, "/api/x", &[]).status, 429);
    }
    std::thread::sleep(Duration::from_millis(6500));
    let alerts = webhook.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["identity"], "ip");
    assert_eq!(alerts[0]["identity_value"], client);
    assert_eq!(alerts[0]["violations"], 3);
    assert_eq!(alerts[0]["instance"], "gw-test-2");
    assert_eq!(warnings(&a), 2);
    assert_eq!(warnings(&b), 0);
}
