//! One set of behavioural tests, run against every store: memory, a Redis server and a
//! three-node Redis Cluster (both started by the test on free loopback ports).
//!
//! Each case is written once against the `Store` trait; `conformance!` instantiates
//! it per backend. Limits use long periods, so that time passing during a test (Redis
//! keeps the server's time) changes nothing.

#![allow(clippy::unwrap_used)]

use ratewarden_core::clock::SystemClock;
use ratewarden_core::{FixedWindow, Gcra, Limit, Nanos, SlidingWindow};
use ratewarden_store::redis::{RedisSettings, RedisStore, RedisTarget};
use ratewarden_store::{Check, CounterKey, Decisions, MemoryStore, RuleName, Store};
use ratewarden_testkit::{RedisCluster, RedisServer};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

/// A store under test, with whatever it needs kept alive.
struct Backend<S> {
    store: Arc<S>,
    _server: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

fn memory() -> Backend<MemoryStore> {
    Backend {
        store: Arc::new(MemoryStore::new(NonZeroUsize::new(100_000).unwrap())),
        _server: None,
        _cluster: None,
    }
}

fn redis_settings(target: RedisTarget) -> RedisSettings {
    RedisSettings {
        target,
        timeout: Duration::from_secs(2),
        key_prefix: "rwtest".into(),
    }
}

fn redis() -> Backend<RedisStore<SystemClock>> {
    let server = RedisServer::start();
    let store = RedisStore::new(
        redis_settings(RedisTarget::Server(server.url())),
        SystemClock::new(),
    )
    .unwrap();
    Backend {
        store: Arc::new(store),
        _server: Some(server),
        _cluster: None,
    }
}

fn redis_cluster() -> Backend<RedisStore<SystemClock>> {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(
        redis_settings(RedisTarget::Cluster(cluster.urls())),
        SystemClock::new(),
    )
    .unwrap();
    Backend {
        store: Arc::new(store),
        _server: None,
        _cluster: Some(cluster),
    }
}

fn every_algorithm(rate: &str, burst: u32) -> [Limit; 3] {
    let rate = rate.parse().unwrap();
    [
        Limit::Gcra(Gcra::new(rate, burst).unwrap()),
        Limit::SlidingWindow(SlidingWindow::new(rate).unwrap()),
        Limit::FixedWindow(FixedWindow::new(rate).unwrap()),
    ]
}

async fn decide<S: Store>(store: &S, checks: &[Check<'_>]) -> Decisions {
    store.decide(checks).await.expect("the store decides")
}

async fn admits_exactly_the_limit_then_denies_with_a_wait<S: Store>(store: Arc<S>) {
    for (n, limit) in every_algorithm("5/h", 5).into_iter().enumerate() {
        let rule = RuleName::new(&format!("rule{n}"));
        let check = Check::one(CounterKey::new(&rule, "203.0.113.7"), limit);
        for expected_remaining in (0..5).rev() {
            let d = decide(&*store, &[check]).await;
            assert!(d.allowed(), "{limit:?}");
            assert_eq!(d[0].remaining, expected_remaining, "{limit:?}");
            assert_eq!(d[0].limit, 5);
        }
        let denied = decide(&*store, &[check]).await;
        assert!(!denied.allowed(), "{limit:?}");
        assert_eq!(denied[0].remaining, 0);
        let wait = denied[0].retry_after;
        // A sliding window's own count must fade as the previous window's: up to two
        // periods, depending on where in the hour the test runs.
        assert!(
            wait > Nanos::ZERO && wait <= Nanos::from_secs(7_200),
            "{limit:?}: {wait:?}"
        );
    }
}

async fn clients_and_rules_have_their_own_counters<S: Store>(store: Arc<S>) {
    let [limit, ..] = every_algorithm("1/h", 1);
    let (a, b) = (RuleName::new("a"), RuleName::new("b"));
    assert!(
        decide(&*store, &[Check::one(CounterKey::new(&a, "x"), limit)])
            .await
            .allowed()
    );
    assert!(
        !decide(&*store, &[Check::one(CounterKey::new(&a, "x"), limit)])
            .await
            .allowed()
    );
    assert!(
        decide(&*store, &[Check::one(CounterKey::new(&a, "y"), limit)])
            .await
            .allowed()
    );
    assert!(
        decide(&*store, &[Check::one(CounterKey::new(&b, "x"), limit)])
            .await
            .allowed()
    );
}

async fn a_denied_request_charges_none_of_its_limits<S: Store>(store: Arc<S>) {
    // Per-client limit (by IP) and a shared quota (by API key: another client part, so
    // on a cluster another slot).
    let [narrow, ..] = every_algorithm("2/h", 2);
    let [_, _, wide] = every_algorithm("10/h", 10);
    let (per_ip, per_key) = (RuleName::new("per_ip"), RuleName::new("per_key"));
    let both = [
        Check::one(CounterKey::new(&per_ip, "198.51.100.1"), narrow),
        Check::one(CounterKey::new(&per_key, "key-1"), wide),
    ];
    for _ in 0..2 {
        assert!(decide(&*store, &both).await.allowed());
    }
    for _ in 0..5 {
        let d = decide(&*store, &both).await;
        assert!(!d.allowed());
        assert!(!d[0].allowed);
    }
    let alone = decide(&*store, &[both[1]]).await;
    assert!(alone.allowed());
    assert_eq!(
        alone[0].remaining, 7,
        "only the two admitted requests and this one count"
    );
}

async fn costs_take_several_units<S: Store>(store: Arc<S>) {
    for (n, limit) in every_algorithm("10/h", 10).into_iter().enumerate() {
        let rule = RuleName::new(&format!("cost{n}"));
        let key = CounterKey::new(&rule, "c");
        let seven = Check::new(key, limit, 7).unwrap();
        let four = Check::new(key, limit, 4).unwrap();
        let d = decide(&*store, &[seven]).await;
        assert!(d.allowed());
        assert_eq!(d[0].remaining, 3);
        assert!(!decide(&*store, &[four]).await.allowed(), "{limit:?}");
        assert!(decide(&*store, &[Check::new(key, limit, 3).unwrap()])
            .await
            .allowed());
    }
}

async fn concurrent_requests_are_counted_exactly<S: Store>(store: Arc<S>) {
    for (n, limit) in every_algorithm("50/h", 50).into_iter().enumerate() {
        let rule = Arc::new(RuleName::new(&format!("race{n}")));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (store, rule) = (store.clone(), rule.clone());
                tokio::spawn(async move {
                    let check = Check::one(CounterKey::new(&rule, "hot"), limit);
                    store.decide(&[check]).await.expect("decides").allowed()
                })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, 50, "{limit:?}");
    }
}

async fn a_wait_is_honoured<S: Store>(store: Arc<S>) {
    // 20/s, burst 1: the second request must wait about 50 ms, and passes after it.
    let limit = Limit::Gcra(Gcra::new("20/s".parse().unwrap(), 1).unwrap());
    let rule = RuleName::new("wait");
    let check = Check::one(CounterKey::new(&rule, "w"), limit);
    assert!(decide(&*store, &[check]).await.allowed());
    let denied = decide(&*store, &[check]).await;
    assert!(!denied.allowed());
    let wait = denied[0].retry_after;
    assert!(
        wait <= Nanos::from_millis(50) && wait > Nanos::ZERO,
        "{wait:?}"
    );
    tokio::time::sleep(wait.to_duration() + Duration::from_millis(5)).await;
    assert!(decide(&*store, &[check]).await.allowed());
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::memory();
                    super::$case(backend.store.clone()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::redis();
                    super::$case(backend.store.clone()).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::redis_cluster();
                    super::$case(backend.store.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    admits_exactly_the_limit_then_denies_with_a_wait,
    clients_and_rules_have_their_own_counters,
    a_denied_request_charges_none_of_its_limits,
    costs_take_several_units,
    concurrent_requests_are_counted_exactly,
    a_wait_is_honoured,
);
