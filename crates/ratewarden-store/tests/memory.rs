//! Behaviour of the in-memory store that users rely on: exact counts under concurrency,
//! all-or-nothing requests, bounded memory with stalest-first eviction, and reclaiming.

use ratewarden_core::clock::ManualClock;
use ratewarden_core::{FixedWindow, Gcra, Limit, Nanos, SlidingWindow, Timestamp};
use ratewarden_store::{Check, CounterKey, MemoryStore, RuleName, Store};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

const T0: Timestamp = Timestamp(1_795_453_170_000_000_000);
const HOUR: Nanos = Nanos::from_secs(3_600);

fn store(max_keys: usize) -> MemoryStore<ManualClock> {
    MemoryStore::with_clock(
        NonZeroUsize::new(max_keys).expect("non-zero"),
        ManualClock::new(T0),
    )
}

fn every_algorithm(rate: &str, burst: u32) -> [(&'static str, Limit); 3] {
    let rate = rate.parse().expect("rate");
    [
        ("gcra", Limit::Gcra(Gcra::new(rate, burst).expect("gcra"))),
        (
            "sliding_window",
            Limit::SlidingWindow(SlidingWindow::new(rate).expect("sw")),
        ),
        (
            "fixed_window",
            Limit::FixedWindow(FixedWindow::new(rate).expect("fw")),
        ),
    ]
}

fn one(store: &MemoryStore<ManualClock>, rule: &str, client: &str, limit: Limit) -> bool {
    let rule = RuleName::new(rule);
    store
        .decide_now(&[Check::one(CounterKey::new(&rule, client), limit)])
        .allowed()
}

/// Runs `attempt` `per_thread` times on each of 8 threads started together; returns how
/// many attempts were admitted.
fn admitted_by_eight_threads(per_thread: usize, attempt: impl Fn() -> bool + Sync) -> u64 {
    let admitted = AtomicU64::new(0);
    let start = Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                start.wait();
                for _ in 0..per_thread {
                    if attempt() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    admitted.into_inner()
}

#[test]
fn eight_threads_on_one_key_admit_exactly_the_limit() {
    for (name, limit) in every_algorithm("1000/h", 1000) {
        // Repeat until the compare-and-swap retry path has demonstrably run, so the test
        // proves exactness under real contention, not just under luck.
        let mut retries_seen = false;
        // On a busy 2-core machine the threads may not overlap in a given round.
        for round in 0..500 {
            let store = store(10_000);
            let admitted =
                admitted_by_eight_threads(3_000, || one(&store, "api", "hot-client", limit));
            assert_eq!(admitted, 1_000, "{name}, round {round}");
            if store.stats().cas_retries > 0 {
                retries_seen = true;
                break;
            }
        }
        assert!(
            retries_seen,
            "{name}: no CAS retry in 500 rounds; contention never happened"
        );
    }
}

#[test]
fn a_request_denied_by_one_rule_is_charged_to_none() {
    let [(_, per_user), ..] = every_algorithm("2/h", 2);
    let [(_, shared), ..] = every_algorithm("10/h", 10);
    let store = store(1_000);
    let request = |user: &str| {
        store.decide_now(&[
            Check::one(CounterKey::new(&RuleName::new("per_user"), user), per_user),
            Check::one(CounterKey::new(&RuleName::new("route"), "global"), shared),
        ])
    };
    assert!(request("mallory").allowed());
    assert!(request("mallory").allowed());
    for _ in 0..50 {
        let denied = request("mallory");
        assert!(!denied.allowed());
        assert!(!denied[0].allowed);
    }
    // Mallory's 50 denials took nothing from the shared quota: 8 left for others.
    for i in 0..4 {
        assert!(request(&format!("user{i}")).allowed());
        assert!(request(&format!("user{i}")).allowed());
    }
    let last = request("late");
    assert!(!last.allowed());
    assert!(!last[1].allowed);
    assert_eq!(last[1].remaining, 0);
}

#[test]
fn racing_requests_with_several_rules_never_leak_charges() {
    // Two shared counters that every thread contends for; the second is the tighter, so
    // requests race for its last units and the charges they made on the first must be
    // refunded exactly. The clock stands still, so refunds are exact (nothing drains).
    for (name, wide) in every_algorithm("1000/h", 1000) {
        let [(_, narrow), ..] = every_algorithm("600/h", 600);
        let mut refunds_seen = false;
        for _round in 0..300 {
            let store = store(10_000);
            let (wide_rule, narrow_rule) = (RuleName::new("wide"), RuleName::new("narrow"));
            let admitted = admitted_by_eight_threads(200, || {
                store
                    .decide_now(&[
                        Check::one(CounterKey::new(&wide_rule, "all"), wide),
                        Check::one(CounterKey::new(&narrow_rule, "all"), narrow),
                    ])
                    .allowed()
            });
            assert_eq!(admitted, 600, "{name}");
            let rule = RuleName::new("wide");
            let peek = store
                .decide_now(&[Check::new(CounterKey::new(&rule, "all"), wide, 0).expect("peek")]);
            assert_eq!(
                peek[0].remaining, 400,
                "{name}: the wide counter holds exactly what passed"
            );
            if store.stats().refunds > 0 {
                refunds_seen = true;
                break;
            }
        }
        assert!(
            refunds_seen,
            "{name}: no race for the last unit in 300 rounds"
        );
    }
}

#[test]
fn a_zero_cost_look_leaves_no_counter_behind() {
    let [(_, limit), ..] = every_algorithm("5/m", 5);
    let store = store(100);
    let rule = RuleName::new("api");
    let look = Check::new(CounterKey::new(&rule, "new-client"), limit, 0).expect("peek");
    let d = store.decide_now(&[look]);
    assert!(d.allowed());
    assert_eq!(d[0].remaining, 5);
    assert!(store.is_empty());
}

#[test]
fn memory_stays_under_the_cap_whatever_the_number_of_clients() {
    let [(_, limit), ..] = every_algorithm("10/s", 10);
    let store = store(4_096);
    let capacity = store.stats().capacity;
    assert!((4_000..=4_096).contains(&capacity));
    for i in 0..200_000u32 {
        // An attacker rotating through addresses: every request a new client.
        let client = format!("2001:db8::{:x}:{:x}", i >> 16, i & 0xffff);
        assert!(one(&store, "api", &client, limit));
        if i % 10_000 == 0 {
            assert!(store.len() <= capacity);
        }
    }
    let stats = store.stats();
    assert!(stats.keys <= capacity, "{stats:?}");
    assert!(stats.evicted_live > 0, "{stats:?}");
}

#[test]
fn churn_never_grows_the_tables_past_their_bound() {
    // State that stays live for the whole test, so every new client costs an eviction and
    // the tables fill with tombstones: the case where a hash table keeps doubling.
    let [(_, limit), ..] = every_algorithm("100/h", 100);
    let store = store(4_096);
    // 24-byte entries plus a control byte, at most 32/7 slots per entry, the eviction
    // buffer's 4 bytes per entry, and a little per shard.
    let capacity = store.stats().capacity;
    let bound = capacity * (25 * 32 / 7 + 4) + 32 * 1024;
    for i in 0..300_000u32 {
        assert!(one(
            &store,
            "api",
            &format!("198.51.{}.{}", i >> 8, i & 0xff),
            limit
        ));
        if i % 10_000 == 0 {
            let stats = store.stats();
            assert!(stats.allocated_bytes <= bound, "after {i}: {stats:?}");
        }
    }
    let stats = store.stats();
    assert!(stats.keys <= stats.capacity, "{stats:?}");
    assert!(stats.allocated_bytes <= bound, "{stats:?}");
}

#[test]
fn expired_state_is_reclaimed_before_live_state_is_evicted() {
    let [(_, limit), ..] = every_algorithm("1/h", 10);
    let store = store(1_024);
    let capacity = store.stats().capacity;
    for i in 0..capacity {
        assert!(one(&store, "api", &format!("old{i}"), limit));
    }
    // Shards fill unevenly, so filling to capacity may already have evicted some.
    let before = store.stats();
    store
        .clock()
        .advance(Nanos(HOUR.as_nanos() + 1_000_000_000));
    // A quarter of the capacity: no shard gets more new keys than it holds (a shard holds
    // capacity / shards; overflowing one would rightly evict live new keys).
    for i in 0..capacity / 4 {
        assert!(one(&store, "api", &format!("new{i}"), limit));
    }
    let after = store.stats();
    assert_eq!(after.evicted_live, before.evicted_live, "{after:?}");
    assert!(after.reclaimed > 0, "{after:?}");
}

#[test]
fn a_flood_of_new_clients_evicts_the_stalest_state_first() {
    let [(_, limit), ..] = every_algorithm("1/h", 10);
    let store = store(1_024);
    // The victim has spent 6 of 10: its bucket is full again only in 6 hours, later than
    // any flood key's.
    let api = RuleName::new("api");
    let victim = Check::new(CounterKey::new(&api, "victim"), limit, 6).expect("cost");
    assert!(store.decide_now(&[victim]).allowed());
    store.clock().advance(Nanos::from_secs(1));
    for i in 0..50_000 {
        assert!(one(&store, "api", &format!("flood{i}"), limit));
    }
    assert!(store.stats().evicted_live > 0);
    let peek =
        store.decide_now(&[
            Check::new(CounterKey::new(&RuleName::new("api"), "victim"), limit, 0).expect("peek"),
        ]);
    assert_eq!(
        peek[0].remaining, 4,
        "the victim's state survived the flood"
    );
}

#[test]
fn rule_and_client_are_kept_apart() {
    let [(_, limit), ..] = every_algorithm("1/h", 1);
    let store = store(1_000);
    assert!(one(&store, "ab", "c", limit));
    assert!(one(&store, "a", "bc", limit));
    assert!(!one(&store, "ab", "c", limit));
}

#[test]
fn the_async_trait_answers_like_the_direct_call() {
    let [(_, limit), ..] = every_algorithm("2/m", 2);
    let store = store(100);
    let api = RuleName::new("api");
    let key = CounterKey::new(&api, "10.0.0.1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let decisions = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(
                store
                    .decide(&[Check::one(key, limit)])
                    .await
                    .expect("memory never fails"),
            );
        }
        out
    });
    assert!(decisions[0].allowed() && decisions[1].allowed());
    assert!(!decisions[2].allowed());
    assert_eq!(decisions[2][0].retry_after, Nanos::from_secs(30));
    assert_eq!(decisions[2].most_restrictive().map(|(i, _)| i), Some(0));
}

#[tokio::test(start_paused = true)]
async fn the_janitor_reclaims_expired_state_in_the_background() {
    let [(_, limit), ..] = every_algorithm("10/s", 10);
    let store = Arc::new(store(10_000));
    for i in 0..5_000 {
        assert!(one(&store, "api", &format!("c{i}"), limit));
    }
    assert_eq!(store.len(), 5_000);
    let janitor = store.spawn_janitor(std::time::Duration::from_secs(10));
    store.clock().advance(Nanos::from_secs(2));
    // Paused Tokio time jumps straight to the next tick; the store's clock is manual.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.len(), 0);
    assert_eq!(store.stats().reclaimed, 5_000);
    drop(store);
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    janitor
        .await
        .expect("janitor ends when the store is dropped");
}
