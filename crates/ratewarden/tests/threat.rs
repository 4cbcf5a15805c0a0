//! Adaptive defence, end to end: the real binary on loopback, a real upstream, clients
//! speaking from distinct 127.x.y.z addresses, the admin API and a webhook receiver.

mod support;

use ratewarden_testkit::RedisServer;
use std::time::{Duration, Instant};
use support::{eventually, free_port, Gateway, Receiver, Reply, Upstream};

const TOKEN: &str = "test-admin-token-0123456789";

fn config(upstream: &Upstream, rules: &str, threat: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{}"
upstream = "http://127.0.0.1:{}"
admin_listen = "127.0.0.1:{}"

[admin]
token = "{TOKEN}"

{rules}

[threat]
{threat}
"#,
        free_port(),
        upstream.port,
        free_port()
    )
}

const GENEROUS: &str = r#"[[rules]]
name = "api"
match = { path_prefix = "/" }
key = "ip"
rate = "100/s"
burst = 40
"#;

fn standing(gw: &Gateway, client: &str) -> serde_json::Value {
    let reply = gw.admin("GET", &format!("/admin/clients/{client}"), Some(TOKEN), "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).expect("json")
}

fn level_of(gw: &Gateway, client: &str) -> String {
    standing(gw, client)["level"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.body))
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After")
}

#[test]
fn a_password_guesser_rises_to_high_and_is_blocked_while_a_normal_client_is_untouched() {
    let upstream = Upstream::start();
    let webhook = Receiver::start(200, Duration::ZERO);
    let text = config(&upstream, GENEROUS, "window = \"5m\"")
        + &format!(
            "\n[abuse]\nalert_after = 1000\n[[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\n[[alerts]]\nkind = \"log\"\n",
            webhook.port
        );
    let gw = Gateway::start(&text);
    let guesser = "127.0.6.1";
    // Twelve wrong passwords: the upstream answers 401 each time.
    for _ in 0..12 {
        assert_eq!(gw.get(guesser, "/status/401", &[]).status, 401);
    }
    eventually(
        "the guesser's level rises to high",
        Duration::from_secs(5),
        || level_of(&gw, guesser) == "high",
    );
    let s = standing(&gw, guesser);
    let reasons: Vec<String> = serde_json::from_value(s["reasons"].clone()).expect("reasons");
    // The reasons recorded when the level changed: ten failures or more made it high
    // (how many depends on how the requests fell into flushes).
    let failures: Option<u32> = reasons
        .first()
        .and_then(|r| r.strip_prefix("auth_failures="))
        .and_then(|n| n.parse().ok());
    assert!(failures.is_some_and(|n| (10..=12).contains(&n)), "{s}");

    // At high its limits are a fifth (burst 8): hammering hits one and blocks it.
    let before = upstream.requests();
    let mut blocked = None;
    for _ in 0..30 {
        let reply = gw.get(guesser, "/page", &[]);
        if reply.status == 403 {
            blocked = Some(reply);
            break;
        }
    }
    let blocked = blocked.expect("the guesser was blocked");
    let body = json(&blocked);
    assert_eq!(body["reason"], "blocked", "{body}");
    let wait = retry_after(&blocked);
    assert!((295..=300).contains(&wait), "five minutes at high: {wait}");
    let reached = upstream.requests();
    assert!(
        reached - before <= 12,
        "about the scaled burst reached the upstream"
    );
    // Blocked means blocked: nothing more reaches the upstream.
    for _ in 0..5 {
        assert_eq!(gw.get(guesser, "/anything", &[]).status, 403);
    }
    assert_eq!(upstream.requests(), reached);

    // A normal client on the same rule keeps its full allowance.
    for i in 0..30 {
        let reply = gw.get("127.0.6.2", &format!("/page/{}", i % 5), &[]);
        assert_eq!(reply.status, 200, "normal client, request {i}");
        assert_eq!(reply.header("x-ratelimit-limit"), Some("40"));
    }
    assert_eq!(level_of(&gw, "127.0.6.2"), "normal");

    // The level change and the block went to the security team, with reasons.
    eventually(
        "the webhook received both alerts",
        Duration::from_secs(5),
        || {
            let kinds: Vec<String> = webhook
                .alerts()
                .iter()
                .map(|a| a["kind"].as_str().unwrap_or("").to_owned())
                .collect();
            kinds.iter().any(|k| k == "threat_level_raised")
                && kinds.iter().any(|k| k == "client_blocked")
        },
    );
    let raised: serde_json::Value = webhook
        .alerts()
        .into_iter()
        .find(|a| a["kind"] == "threat_level_raised" && a["threat"]["level"] == "high")
        .expect("a raise to high");
    assert_eq!(raised["client_ip"], guesser);
    assert!(
        ["normal", "elevated"].contains(&raised["threat"]["previous_level"].as_str().unwrap_or("")),
        "{raised}"
    );
    assert!(
        raised["threat"]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("auth_failures=")),
        "{raised}"
    );
    let log = gw.log();
    assert!(log.contains("Client blocked: ip 127.0.6.1"), "{log}");
    let metrics = gw.metrics();
    assert!(
        metrics.contains("ratewarden_blocks_total{origin=\"automatic\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ratewarden_refused_total{reason=\"blocked\"}"),
        "{metrics}"
    );
}

#[test]
fn an_enumerating_scraper_under_the_rate_rises_on_distinct_paths() {
    let upstream = Upstream::start();
    let rules = "[[rules]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\nrate = \"1000/s\"\nburst = 200\n";
    let gw = Gateway::start(&config(&upstream, rules, ""));
    let scraper = "127.0.6.3";
    for i in 0..100 {
        // Under the static limit, which alone would never object.
        assert_eq!(
            gw.get(scraper, &format!("/items/{i}"), &[]).status,
            200,
            "item {i}"
        );
    }
    for i in 100..170 {
        gw.get(scraper, &format!("/items/{i}"), &[]);
    }
    eventually("the scraper rises", Duration::from_secs(5), || {
        level_of(&gw, scraper) == "high"
    });
    let s = standing(&gw, scraper);
    assert!(s["reasons"].to_string().contains("endpoints="), "{s}");
}

#[test]
#[allow(clippy::disallowed_methods)] // the bot's schedule is wall time, by design
fn a_perfectly_periodic_bot_is_flagged_and_its_limits_halved() {
    let upstream = Upstream::start();
    // A scheduler's bot has a coefficient of variation near 0.01; the test allows 0.25
    // so that a CI machine stalling a request or two cannot hide the rhythm. A person
    // reading pages is far above 1.
    let threat = "[threat.scoring]\nregular_timing = { weight = 40, max_cv = 0.25 }\n";
    let gw = Gateway::start(&config(&upstream, GENEROUS, threat));
    let bot = "127.0.6.4";
    let start = Instant::now();
    // 24 gaps: past the 20 that make a rhythm, short of the 30 that make it `high`.
    for i in 0..25u32 {
        // Every 100 ms on the dot, as a scheduler fires.
        let due = start + Duration::from_millis(100) * i;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        assert_eq!(gw.get(bot, "/feed", &[]).status, 200);
    }
    eventually("the bot is flagged", Duration::from_secs(5), || {
        level_of(&gw, bot) == "elevated"
    });
    let s = standing(&gw, bot);
    assert!(s["reasons"].to_string().contains("timing_cv="), "{s}");
    let reply = gw.get(bot, "/feed", &[]);
    assert_eq!(
        reply.header("x-ratelimit-limit"),
        Some("20"),
        "burst 40 halved"
    );
}

#[test]
fn an_attacker_rotating_through_a_network_is_caught_by_its_failing_neighbours() {
    let upstream = Upstream::start();
    let gw = Gateway::start(&config(&upstream, GENEROUS, ""));
    // One wrong password from each of 25 addresses of one /24: no address alone is
    // anywhere near a threshold.
    for i in 1..=25 {
        let address = format!("127.0.12.{i}");
        assert_eq!(gw.get(&address, "/status/401", &[]).status, 401);
    }
    // A careless client in another network fails twice; a user of the rotated
    // network never fails, and one fails once (an expired token): neither is judged
    // by its network.
    let elsewhere = "127.0.13.1";
    for _ in 0..2 {
        assert_eq!(gw.get(elsewhere, "/status/401", &[]).status, 401);
    }
    let bystander = "127.0.12.200";
    assert_eq!(gw.get(bystander, "/ok", &[]).status, 200);
    let expired = "127.0.12.201";
    assert_eq!(gw.get(expired, "/status/401", &[]).status, 401);
    // Once every failure is recorded (flushes run every 200 ms), the first address
    // fails again and is judged with its 24 failing neighbours.
    std::thread::sleep(Duration::from_secs(1));
    let first = "127.0.12.1";
    assert_eq!(gw.get(first, "/status/401", &[]).status, 401);
    eventually("the rotating address rises", Duration::from_secs(5), || {
        level_of(&gw, first) == "high"
    });
    let reasons = standing(&gw, first)["reasons"].to_string();
    let neighbours: f64 = reasons
        .split("failing_neighbours=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no failing_neighbours in {reasons}"));
    assert!((23.0..=27.0).contains(&neighbours), "{reasons}");
    assert_eq!(level_of(&gw, elsewhere), "normal");
    assert_eq!(level_of(&gw, bystander), "normal");
    assert_eq!(level_of(&gw, expired), "normal");
}

#[test]
fn spoofed_forwarding_headers_and_automation_agents_raise_the_score() {
    let upstream = Upstream::start();
    let gw = Gateway::start(&config(&upstream, GENEROUS, ""));
    let client = "127.0.6.5";
    for i in 0..4 {
        let forged = format!("10.9.8.{i}");
        let reply = gw.get(
            client,
            "/api",
            &[
                ("X-Forwarded-For", &forged),
                ("User-Agent", "python-requests/2.31"),
            ],
        );
        assert_eq!(reply.status, 200);
    }
    eventually("the spoofing client rises", Duration::from_secs(5), || {
        level_of(&gw, client) != "normal"
    });
    let reasons = standing(&gw, client)["reasons"].to_string();
    assert!(reasons.contains("spoofed_forwarding="), "{reasons}");
    assert!(reasons.contains("automation_agent"), "{reasons}");
}

#[test]
fn a_repeat_offender_is_blocked_for_longer_each_time() {
    let upstream = Upstream::start();
    let threat = r#"
[threat.levels]
high = { rate_factor = 0.2, block_for = "1s" }
[threat.escalation]
repeat_factor = 3.0
max_block = "1h"
[threat.scoring]
auth_failures = { threshold = 1, weight = 60 }
"#;
    let rules = "[[rules]]\nname = \"login\"\nmatch = { path_prefix = \"/\" }\nrate = \"10/m\"\nburst = 10\n";
    let gw = Gateway::start(&config(&upstream, rules, threat));
    let client = "127.0.6.6";
    assert_eq!(gw.get(client, "/status/401", &[]).status, 401);
    eventually("high after one failure", Duration::from_secs(5), || {
        level_of(&gw, client) == "high"
    });
    let hit = |gw: &Gateway| loop {
        let reply = gw.get(client, "/login", &[]);
        if reply.status == 403 {
            return retry_after(&reply);
        }
        assert_eq!(reply.status, 200);
    };
    assert_eq!(hit(&gw), 1, "first block: block_for");
    std::thread::sleep(Duration::from_millis(1100));
    // Still high, its bucket still empty: the next request is the second offence.
    let second = gw.get(client, "/login", &[]);
    assert_eq!(second.status, 403);
    assert_eq!(retry_after(&second), 3, "second block: three times as long");
    let listed = gw.admin("GET", "/admin/blocks", Some(TOKEN), "");
    let blocks = json(&listed);
    assert_eq!(blocks["blocks"][0]["client"], client, "{blocks}");
    assert_eq!(blocks["blocks"][0]["offence"], 2, "{blocks}");
}

#[test]
fn incident_mode_tightens_every_client_and_lifts() {
    let upstream = Upstream::start();
    let rules =
        "[[rules]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\nrate = \"10/m\"\nburst = 4\n";
    let gw = Gateway::start(&config(&upstream, rules, ""));
    // The token is required, and checked.
    assert_eq!(gw.admin("POST", "/admin/incident", None, "").status, 401);
    assert_eq!(
        gw.admin(
            "POST",
            "/admin/incident",
            Some("wrong-token-0123456789"),
            ""
        )
        .status,
        401
    );
    let on = gw.admin(
        "POST",
        "/admin/incident",
        Some(TOKEN),
        r#"{"level": "elevated", "for": "10m", "reason": "credential stuffing wave"}"#,
    );
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(json(&on)["active"], true);
    assert!(gw.metrics().contains("ratewarden_incident_mode 1"));
    let statuses: Vec<u16> = (0..4)
        .map(|_| gw.get("127.0.6.7", "/x", &[]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429], "elevated: burst 4 halved");
    assert!(gw.log().contains("incident mode on"));

    let off = gw.admin("DELETE", "/admin/incident", Some(TOKEN), "");
    assert_eq!(json(&off)["was_active"], true);
    assert!(gw.metrics().contains("ratewarden_incident_mode 0"));
    let statuses: Vec<u16> = (0..5)
        .map(|_| gw.get("127.0.6.8", "/x", &[]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429], "full limits again");
    let bad = gw.admin(
        "POST",
        "/admin/incident",
        Some(TOKEN),
        r#"{"level": "apocalyptic"}"#,
    );
    assert_eq!(bad.status, 400);
}

#[test]
fn operators_add_list_and_lift_blocks() {
    let upstream = Upstream::start();
    let gw = Gateway::start(&config(&upstream, GENEROUS, ""));
    let client = "127.0.6.9";
    assert_eq!(gw.get(client, "/x", &[]).status, 200);
    let added = gw.admin(
        "POST",
        "/admin/blocks",
        Some(TOKEN),
        &format!(r#"{{"client": "{client}", "for": "1h", "reason": "seen in incident 42"}}"#),
    );
    assert_eq!(added.status, 201, "{}", added.body);
    let blocked = gw.get(client, "/x", &[]);
    assert_eq!(blocked.status, 403);
    assert!((3590..=3600).contains(&retry_after(&blocked)));
    let list = json(&gw.admin("GET", "/admin/blocks", Some(TOKEN), ""));
    assert_eq!(list["blocks"][0]["client"], client);
    assert_eq!(list["blocks"][0]["reasons"][0], "admin:seen in incident 42");
    // A range is refused, not silently narrowed to its first address.
    let range = gw.admin(
        "POST",
        "/admin/blocks",
        Some(TOKEN),
        r#"{"client": "127.0.6.0/24", "for": "1h"}"#,
    );
    assert_eq!(range.status, 400, "{}", range.body);
    assert!(range.body.contains("range"), "{}", range.body);
    assert_eq!(
        gw.admin(
            "POST",
            "/admin/blocks",
            Some(TOKEN),
            r#"{"client": "not-an-ip", "for": "1h"}"#
        )
        .status,
        400
    );
    let lifted = gw.admin(
        "DELETE",
        &format!("/admin/blocks/{client}"),
        Some(TOKEN),
        "",
    );
    assert_eq!(lifted.status, 200, "{}", lifted.body);
    assert_eq!(gw.get(client, "/x", &[]).status, 200);
    assert_eq!(
        gw.admin(
            "DELETE",
            &format!("/admin/blocks/{client}"),
            Some(TOKEN),
            ""
        )
        .status,
        404
    );
}

#[test]
fn blocks_are_shared_by_two_instances_on_redis_and_survive_a_restart() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    let rules = format!("{store}\n{GENEROUS}");
    let a = Gateway::start(&config(&upstream, &rules, ""));
    let mut b = Gateway::start(&config(&upstream, &rules, ""));
    let client = "127.0.6.10";
    // b has seen the client (and remembers it as normal for up to a second).
    assert_eq!(b.get(client, "/x", &[]).status, 200);
    let added = a.admin(
        "POST",
        "/admin/blocks",
        Some(TOKEN),
        &format!(r#"{{"client": "{client}", "for": "1h"}}"#),
    );
    assert_eq!(added.status, 201, "{}", added.body);
    eventually(
        "the other instance enforces it within its status cache (1 s)",
        Duration::from_secs(3),
        || b.get(client, "/x", &[]).status == 403,
    );
    assert_eq!(
        json(&b.admin("GET", "/admin/blocks", Some(TOKEN), ""))["blocks"][0]["client"],
        client
    );
    b.terminate();
    let b = Gateway::start(&config(&upstream, &rules, ""));
    assert_eq!(
        b.get(client, "/x", &[]).status,
        403,
        "a restarted instance still enforces it"
    );
    // Signals are shared too: failures seen by either instance add up.
    let guesser = "127.0.6.11";
    for i in 0..12 {
        let gw = if i % 2 == 0 { &a } else { &b };
        assert_eq!(gw.get(guesser, "/status/401", &[]).status, 401);
    }
    eventually(
        "both instances see the guesser at high",
        Duration::from_secs(5),
        || level_of(&a, guesser) == "high" && level_of(&b, guesser) == "high",
    );
}
