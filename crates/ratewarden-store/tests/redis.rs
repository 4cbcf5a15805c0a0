//! What only the Redis store has to get right: the Lua script answers exactly as the
//! Rust algorithms do, keys always carry a TTL, `SCRIPT FLUSH` costs nothing but a
//! reload, and outages (server killed, server paused, server demoted to a read-only
//! replica) are bounded by the timeout and recovered from without help.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use proptest::prelude::*;
use ratewarden_core::algorithm::StateBits;
use ratewarden_core::clock::SystemClock;
use ratewarden_core::{Decision, FixedWindow, Gcra, Limit, Nanos, SlidingWindow, Timestamp};
use ratewarden_store::redis::{RedisSettings, RedisStore, RedisTarget};
use ratewarden_store::{Check, CounterKey, RuleName, Store, StoreError};
use ratewarden_testkit::RedisServer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn store(url: String, timeout: Duration) -> RedisStore<SystemClock> {
    RedisStore::new(
        RedisSettings {
            target: RedisTarget::Server(url),
            timeout,
            key_prefix: "rwtest".into(),
        },
        SystemClock::new(),
    )
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn gcra(rate: &str, burst: u32) -> Limit {
    Limit::Gcra(Gcra::new(rate.parse().unwrap(), burst).unwrap())
}

/// Limits whose parameters are whole microseconds, so the script (which counts in
/// microseconds) and the Rust functions (nanoseconds) must agree to the unit.
fn limits() -> impl Strategy<Value = Limit> {
    let gcra_rates = prop::sample::select(vec![
        "10/s", "4/s", "1/s", "100/s", "2/m", "5/m", "8/s", "20/s",
    ]);
    let window_rates =
        prop::sample::select(vec!["3/s", "10/s", "5/m", "7/10s", "2/s", "100/m", "1/s"]);
    prop_oneof![
        (gcra_rates, 1u32..6).prop_map(|(r, b)| gcra(r, b)),
        window_rates
            .clone()
            .prop_map(|r| Limit::SlidingWindow(SlidingWindow::new(r.parse().unwrap()).unwrap())),
        window_rates
            .prop_map(|r| Limit::FixedWindow(FixedWindow::new(r.parse().unwrap()).unwrap())),
    ]
}

/// A step: time moves by this many microseconds (sometimes backwards), then a request
/// of this cost.
fn steps() -> impl Strategy<Value = Vec<(i64, u32)>> {
    prop::collection::vec(
        (
            prop_oneof![8 => 0i64..400_000, 1 => 0i64..5_000_000, 1 => -1_500_000i64..0],
            1u32..4,
        ),
        1..40,
    )
}

fn micros_ceil(n: Nanos) -> u64 {
    n.as_nanos().div_ceil(1000)
}

fn same(rust: &Decision, lua: &Decision) -> bool {
    let wait = |n: Nanos| {
        if n == Nanos::MAX {
            u64::MAX
        } else {
            micros_ceil(n) * 1000
        }
    };
    rust.allowed == lua.allowed
        && rust.limit == lua.limit
        && rust.remaining == lua.remaining
        && wait(rust.reset_after) == lua.reset_after.as_nanos()
        && wait(rust.retry_after)
            == (if lua.retry_after == Nanos::MAX {
                u64::MAX
            } else {
                lua.retry_after.as_nanos()
            })
}

#[test]
fn the_script_answers_as_the_rust_algorithms_do() {
    let server = RedisServer::start();
    let rt = runtime();
    let store = store(server.url(), Duration::from_secs(5));
    let case = AtomicU64::new(0);
    let config = ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    };
    proptest!(config, |(limit in limits(), steps in steps())| {
        let client = format!("case-{}", case.fetch_add(1, Ordering::Relaxed));
        let rule = RuleName::new("equivalence");
        let mut state = StateBits::default();
        let mut now = Timestamp(1_795_453_170_000_000_000);
        for (i, (delta, cost)) in steps.iter().enumerate() {
            now = Timestamp(now.as_nanos().saturating_add_signed(delta * 1000));
            let Ok(check) = Check::new(CounterKey::new(&rule, &client), limit, *cost) else { continue };
            let rust = limit.decide(state, now, *cost);
            if let Some(next) = rust.next {
                state = next;
            }
            let lua = rt.block_on(store.decide_at(&[check], now)).unwrap();
            prop_assert!(same(&rust.decision, &lua[0]), "step {i} at {now:?}, cost {cost}, {limit:?}:\n rust {:?}\n lua  {:?}", rust.decision, lua[0]);
        }
    });
}

#[test]
fn every_key_carries_a_ttl_that_ends_with_its_state() {
    let server = RedisServer::start();
    let rt = runtime();
    let store = store(server.url(), Duration::from_secs(5));
    let limits = [
        (gcra("10/s", 5), 100u64),
        (
            Limit::SlidingWindow(SlidingWindow::new("10/m".parse().unwrap()).unwrap()),
            120_000,
        ),
        (
            Limit::FixedWindow(FixedWindow::new("10/h".parse().unwrap()).unwrap()),
            3_600_000,
        ),
    ];
    for (n, (limit, most_ms)) in limits.into_iter().enumerate() {
        let rule = RuleName::new(&format!("ttl{n}"));
        assert!(rt
            .block_on(store.decide(&[Check::one(CounterKey::new(&rule, "c"), limit)]))
            .unwrap()
            .allowed());
        let keys = server
            .command(&["KEYS", &format!("rwtest:v1:*:ttl{n}:*")])
            .unwrap();
        assert_eq!(keys, "*1", "one key for the counter");
        // KEYS answered one key; read its name through SCAN-free means: the pattern again.
        let ttl = pttl_of_pattern(&server, &format!("rwtest:v1:*:ttl{n}:*"));
        assert!(
            ttl > 0 && ttl <= most_ms as i64 + 1,
            "{limit:?}: PTTL {ttl}"
        );
    }
}

fn pttl_of_pattern(server: &RedisServer, pattern: &str) -> i64 {
    // The Lua one-liner reads the key name and its TTL in one step.
    let script = format!("return redis.call('PTTL', redis.call('KEYS', '{pattern}')[1])");
    server
        .command(&["EVAL", &script, "0"])
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap()
}

#[test]
fn script_flush_costs_one_reload() {
    let server = RedisServer::start();
    let rt = runtime();
    let store = store(server.url(), Duration::from_secs(5));
    let limit = gcra("3/h", 3);
    let rule = RuleName::new("flush");
    let check = Check::one(CounterKey::new(&rule, "c"), limit);
    assert_eq!(rt.block_on(store.decide(&[check])).unwrap()[0].remaining, 2);
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]).as_deref(), Some("+OK"));
    assert_eq!(
        rt.block_on(store.decide(&[check])).unwrap()[0].remaining,
        1,
        "reloaded, and the count went on"
    );
}

/// Polls until the store decides again, or fails after `within`.
fn recovers(
    rt: &tokio::runtime::Runtime,
    store: &RedisStore<SystemClock>,
    check: Check<'_>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        match rt.block_on(store.decide(&[check])) {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "never recovered: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_server_fails_fast_within_the_timeout_and_is_used_again_when_back() {
    let mut server = RedisServer::start();
    let rt = runtime();
    let timeout = Duration::from_millis(200);
    let store = store(server.url(), timeout);
    let rule = RuleName::new("outage");
    let check = Check::one(CounterKey::new(&rule, "c"), gcra("100/s", 100));
    assert!(rt.block_on(store.decide(&[check])).is_ok());
    server.stop();
    let mut kinds = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let e = rt
            .block_on(store.decide(&[check]))
            .expect_err("no Redis, no decision");
        assert!(
            started.elapsed() < timeout + Duration::from_millis(500),
            "answered in {:?}",
            started.elapsed()
        );
        assert!(e.is_transient(), "{e}");
        kinds.push(e.kind());
    }
    assert!(
        kinds.contains(&"circuit_open"),
        "the breaker stops the retries: {kinds:?}"
    );
    assert!(store.is_failing_fast());
    assert!(store.retry_after() > Nanos::ZERO);
    server.restart();
    recovers(&rt, &store, check, Duration::from_secs(15));
    assert!(!store.is_failing_fast());
}

#[test]
fn a_paused_server_times_out_and_the_next_calls_work() {
    let server = RedisServer::start();
    let rt = runtime();
    let timeout = Duration::from_millis(150);
    let store = store(server.url(), timeout);
    let rule = RuleName::new("slow");
    let check = Check::one(CounterKey::new(&rule, "c"), gcra("100/s", 100));
    assert!(rt.block_on(store.decide(&[check])).is_ok());
    assert_eq!(
        server
            .command(&["CLIENT", "PAUSE", "1000", "ALL"])
            .as_deref(),
        Some("+OK")
    );
    let started = Instant::now();
    let e = rt.block_on(store.decide(&[check])).expect_err("paused");
    assert!(matches!(e, StoreError::Timeout(_)), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    recovers(&rt, &store, check, Duration::from_secs(10));
}

#[test]
fn a_server_demoted_to_a_read_only_replica_is_recovered_from() {
    let server = RedisServer::start();
    let primary = RedisServer::start();
    let rt = runtime();
    let store = store(server.url(), Duration::from_millis(500));
    let rule = RuleName::new("failover");
    let check = Check::one(CounterKey::new(&rule, "c"), gcra("100/s", 100));
    assert!(rt.block_on(store.decide(&[check])).is_ok());
    let port = primary.port().to_string();
    assert_eq!(
        server
            .command(&["REPLICAOF", "127.0.0.1", &port])
            .as_deref(),
        Some("+OK")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        match rt.block_on(store.decide(&[check])) {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "a replica kept accepting writes"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(error.kind(), "unavailable", "{error}");
    assert!(
        error.to_string().to_lowercase().contains("read only"),
        "{error}"
    );
    // Promoted back (as a failover would point the name at a writable primary).
    assert_eq!(
        server.command(&["REPLICAOF", "NO", "ONE"]).as_deref(),
        Some("+OK")
    );
    recovers(&rt, &store, check, Duration::from_secs(15));
}
