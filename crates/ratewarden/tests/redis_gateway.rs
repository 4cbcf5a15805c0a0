//! Gateways sharing Redis: exact totals across instances, agreement despite clocks
//! seconds apart, Redis Cluster, and each `store.on_error` policy through an outage and
//! back. Every test starts its own `redis-server` on a free port (and kills it when
//! done), so outages are real.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use ratewarden_testkit::{RedisCluster, RedisServer};
use std::time::{Duration, Instant};
use support::{eventually, free_port, Gateway, Upstream};

fn config(upstream: u16, store: &str, rules: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{}"
upstream = "http://127.0.0.1:{upstream}"
admin_listen = "127.0.0.1:{}"
header_timeout = "2s"
upstream_timeout = "2s"

[store]
{store}

{rules}
"#,
        free_port(),
        free_port()
    )
}

fn redis_store(url: &str, on_error: &str) -> String {
    format!("kind = \"redis\"\nurl = \"{url}\"\ntimeout = \"100ms\"\non_error = \"{on_error}\"")
}

const PER_IP: &str = r#"
[[rules]]
name = "per_ip"
key = "ip"
rate = "1/h"
burst = 100
"#;

/// Sends `per_thread` requests from each of `threads` threads to `gateway`, all from
/// 127.0.0.2; returns how many were admitted (200).
fn load(gateway: &Gateway, threads: usize, per_thread: usize) -> usize {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    (0..per_thread)
                        .filter(|_| gateway.get("127.0.0.2", "/api/items", &[]).status == 200)
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

#[test]
fn two_gateways_on_one_redis_admit_exactly_the_limit_in_total() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    let store = redis_store(&redis.url(), "deny");
    let a = Gateway::start(&config(upstream.port, &store, PER_IP));
    let b = Gateway::start(&config(upstream.port, &store, PER_IP));
    let (admitted_a, admitted_b) = std::thread::scope(|s| {
        let a = s.spawn(|| load(&a, 8, 40));
        let b = s.spawn(|| load(&b, 8, 40));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(
        admitted_a + admitted_b,
        100,
        "a {admitted_a} + b {admitted_b}: over-admission across instances"
    );
    assert!(
        admitted_a > 0 && admitted_b > 0,
        "both instances served: a {admitted_a}, b {admitted_b}"
    );
    assert_eq!(upstream.requests(), 100);
}

#[test]
fn gateways_whose_clocks_disagree_by_fifty_seconds_still_agree() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    let rules = r#"
[[rules]]
name = "per_minute"
key = "ip"
algorithm = "fixed_window"
rate = "10/m"
"#;
    let store = redis_store(&redis.url(), "deny");
    // Each instance's own clock would put "now" in a different minute most of the time.
    let behind = Gateway::start_with(
        &config(upstream.port, &store, rules),
        &["--clock-offset-ms", "-25000"],
    );
    let ahead = Gateway::start_with(
        &config(upstream.port, &store, rules),
        &["--clock-offset-ms", "25000"],
    );
    // Stay clear of a minute boundary (by the real clock, which Redis shares here), so
    // the whole exchange falls in one window and the total must be exactly the limit.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute >= 50 {
        std::thread::sleep(Duration::from_secs(61 - into_minute));
    }
    let mut admitted = 0;
    let mut resets = Vec::new();
    for i in 0..30 {
        let gw = if i % 2 == 0 { &behind } else { &ahead };
        let reply = gw.get("127.0.0.3", "/x", &[]);
        admitted += usize::from(reply.status == 200);
        resets.push(
            reply
                .header("x-ratelimit-reset")
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    assert_eq!(admitted, 10);
    let spread = resets.iter().max().unwrap() - resets.iter().min().unwrap();
    assert!(
        spread <= 1,
        "instances disagree on the window's end: {resets:?}"
    );
}

#[test]
fn limits_hold_across_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let upstream = Upstream::start();
    let nodes = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let store =
        format!("kind = \"redis\"\ncluster = [{nodes}]\ntimeout = \"500ms\"\non_error = \"deny\"");
    let rules = r#"
[[rules]]
name = "per_ip"
key = "ip"
rate = "1/h"
burst = 5
[[rules]]
name = "per_user"
key = "header:x-user"
rate = "1/h"
burst = 8
"#;
    let gw = Gateway::start(&config(upstream.port, &store, rules));
    // Ten clients (spread over the cluster's slots), each gets exactly its burst.
    for n in 10..20 {
        let source = format!("127.0.1.{n}");
        let statuses: Vec<u16> = (0..7).map(|_| gw.get(&source, "/a", &[]).status).collect();
        assert_eq!(
            statuses,
            [200, 200, 200, 200, 200, 429, 429],
            "client {source}"
        );
    }
    // A user across clients (another slot than each IP): 8 in total, and the IP
    // limit's denials charged nothing to it.
    let mut admitted = 0;
    for n in 30..40 {
        let source = format!("127.0.2.{n}");
        admitted += (0..2)
            .filter(|_| gw.get(&source, "/a", &[("x-user", "alice")]).status == 200)
            .count();
    }
    assert_eq!(admitted, 8);
}

/// Starts a gateway on its own Redis with `on_error`, checks the limit is shared, kills
/// Redis, returns (gateway, redis, upstream) for the outage checks.
fn outage(on_error: &str) -> (Gateway, RedisServer, Upstream) {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start();
    let rules = r#"
[clients]
trusted_proxies = ["127.0.0.0/8"]

[[rules]]
name = "small"
key = "ip"
rate = "1/h"
burst = 3
"#;
    let gw = Gateway::start(&config(
        upstream.port,
        &redis_store(&redis.url(), on_error),
        rules,
    ));
    let statuses: Vec<u16> = (0..4)
        .map(|_| gw.get("127.0.0.4", "/a", &[]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    redis.stop();
    (gw, redis, upstream)
}

/// A request during the outage, timed.
fn timed(gw: &Gateway, source: &str) -> (support::Reply, Duration) {
    let started = Instant::now();
    let reply = gw.get(source, "/a", &[]);
    (reply, started.elapsed())
}

const ANSWER_WITHIN: Duration = Duration::from_secs(2);

#[test]
fn redis_down_with_on_error_allow_lets_requests_through_and_recovers() {
    let (gw, mut redis, upstream) = outage("allow");
    // Forwarded unchecked, a request from behind a trusted proxy still carries the
    // chain the proxy vouches for, our peer appended.
    let reply = gw.get(
        "127.0.0.7",
        "/a",
        &[("X-Forwarded-For", "6.6.6.6, 203.0.113.70")],
    );
    assert_eq!(reply.status, 200, "fail open");
    assert_eq!(
        upstream.last_forwarded_for().as_deref(),
        Some("203.0.113.70, 127.0.0.7")
    );
    for _ in 0..20 {
        let (reply, took) = timed(&gw, "127.0.0.5");
        assert_eq!(reply.status, 200, "fail open");
        assert!(took < ANSWER_WITHIN, "answered in {took:?}");
        assert!(
            reply.header("x-ratelimit-limit").is_none(),
            "no limit was checked, none is claimed"
        );
    }
    let metrics = gw.metrics();
    assert!(
        metrics.contains("ratewarden_store_fallbacks_total{on_error=\"allow\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ratewarden_store_errors_total{kind=\"circuit_open\"}"),
        "the breaker spared Redis: {metrics}"
    );
    redis.restart();
    // Back to shared, checked limits (a fresh Redis: a fresh count).
    eventually("limits checked again", Duration::from_secs(15), || {
        gw.get("127.0.0.6", "/a", &[]).header("x-ratelimit-limit") == Some("3")
    });
}

#[test]
fn redis_down_with_on_error_deny_answers_503_with_retry_after_never_429() {
    let (gw, mut redis, upstream) = outage("deny");
    let before = upstream.requests();
    for _ in 0..20 {
        let (reply, took) = timed(&gw, "127.0.0.5");
        assert_eq!(
            reply.status, 503,
            "fail closed, and not blaming the client with a 429"
        );
        assert!(took < ANSWER_WITHIN, "answered in {took:?}");
        let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=10).contains(&wait), "Retry-After {wait}");
        assert!(
            reply.body.contains("\"error\":\"limiter_unavailable\""),
            "{}",
            reply.body
        );
    }
    assert_eq!(
        upstream.requests(),
        before,
        "nothing reached the upstream unchecked"
    );
    redis.restart();
    eventually("serving again", Duration::from_secs(15), || {
        gw.get("127.0.0.6", "/a", &[]).status == 200
    });
}

#[test]
fn redis_down_with_on_error_local_keeps_limiting_per_instance() {
    let (gw, mut redis, _upstream) = outage("local");
    let statuses: Vec<u16> = (0..5)
        .map(|_| timed(&gw, "127.0.0.7"))
        .map(|(r, took)| {
            assert!(took < ANSWER_WITHIN, "answered in {took:?}");
            r.status
        })
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429],
        "the same rule, counted locally"
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains("ratewarden_store_fallbacks_total{on_error=\"local\"}"),
        "{metrics}"
    );
    redis.restart();
    eventually("Redis counting again", Duration::from_secs(15), || {
        // A client the local limiter has exhausted gets a fresh count from the new Redis.
        gw.get("127.0.0.7", "/a", &[]).status == 200
    });
}
