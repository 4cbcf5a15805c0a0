//! The login store's contract, run against memory, a Redis server and a Redis Cluster
//! (started by the test on free loopback ports): attempts admitted exactly up to the
//! limit under concurrency, lockout, success and known addresses, distinct counts.

#![allow(clippy::unwrap_used)]

mod common;

use common::Backend;

use ratewarden_core::clock::ManualClock;
use ratewarden_core::login::{LockoutScope, Outcome};
use ratewarden_core::{Nanos, Timestamp};
use ratewarden_store::login::{AccountRules, Admission, LoginStore, MemoryLogins};
use std::sync::Arc;

const HOUR: Nanos = Nanos::from_secs(3600);

fn rules(scope: LockoutScope) -> AccountRules {
    AccountRules {
        failures: 5,
        window: HOUR,
        lockout: HOUR,
        scope,
        in_flight_for: Nanos::from_secs(60),
        known_for: HOUR,
    }
}

fn admitted(a: Admission) -> ratewarden_store::login::Attempt {
    match a {
        Admission::Admitted(attempt) => attempt,
        other => panic!("expected an admitted attempt, got {other:?}"),
    }
}

async fn concurrent_attempts_never_exceed_the_limit<S: LoginStore>(b: Backend<S>) {
    let rules = rules(LockoutScope::Account);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = b.stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            store
                .begin("acct_victim", &format!("addr_{i}"), &rules)
                .await
                .unwrap()
        }));
    }
    let mut admitted_from = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Admission::Admitted(_) => admitted_from.push(i),
            Admission::Busy => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        admitted_from.len(),
        5,
        "only as many attempts as failures allowed may be in flight"
    );
    for (n, i) in admitted_from.iter().enumerate() {
        let finished = b.stores[n % 2]
            .finish(
                "acct_victim",
                &format!("addr_{i}"),
                Outcome::Failure,
                &rules,
            )
            .await
            .unwrap();
        if n < 4 {
            assert_eq!(finished.failures, n as u32 + 1);
            assert_eq!(finished.locked_for, None);
        } else {
            assert_eq!(finished.locked_for, Some(HOUR), "the 5th failure locks");
        }
    }
    match b.stores[1]
        .begin("acct_victim", "addr_new", &rules)
        .await
        .unwrap()
    {
        Admission::Locked(remaining) => {
            assert!(remaining > Nanos::from_secs(3500) && remaining <= HOUR)
        }
        other => panic!("expected a lockout, got {other:?}"),
    }
    // Another account is untouched.
    let other = admitted(
        b.stores[0]
            .begin("acct_other", "addr_0", &rules)
            .await
            .unwrap(),
    );
    assert_eq!((other.failures, other.since_failure), (0, None));
}

async fn success_clears_failures_and_remembers_the_address<S: LoginStore>(b: Backend<S>) {
    let strict = rules(LockoutScope::Account);
    let scoped = rules(LockoutScope::AccountAndIp);
    let [one, two] = &b.stores;
    for _ in 0..2 {
        admitted(one.begin("acct_alice", "addr_home", &scoped).await.unwrap());
        one.finish("acct_alice", "addr_home", Outcome::Failure, &scoped)
            .await
            .unwrap();
    }
    let attempt = admitted(two.begin("acct_alice", "addr_home", &scoped).await.unwrap());
    assert_eq!(attempt.failures, 2);
    let since = attempt.since_failure.expect("a failure was recorded");
    assert!(since < Nanos::from_secs(5), "{since:?}");
    assert!(!attempt.known_address);
    let done = two
        .finish("acct_alice", "addr_home", Outcome::Success, &scoped)
        .await
        .unwrap();
    assert_eq!(done.failures, 0, "a success resets the account's failures");
    // An attacker elsewhere locks the account out.
    for _ in 0..5 {
        admitted(
            one.begin("acct_alice", "addr_attacker", &scoped)
                .await
                .unwrap(),
        );
        one.finish("acct_alice", "addr_attacker", Outcome::Failure, &scoped)
            .await
            .unwrap();
    }
    assert!(matches!(
        two.begin("acct_alice", "addr_attacker", &scoped)
            .await
            .unwrap(),
        Admission::Locked(_)
    ));
    assert!(matches!(
        two.begin("acct_alice", "addr_home", &strict).await.unwrap(),
        Admission::Locked(_)
    ));
    // With account+ip scope, the real user's known address still gets in, and its
    // success lifts the lockout.
    let home = admitted(two.begin("acct_alice", "addr_home", &scoped).await.unwrap());
    assert!(home.known_address);
    two.finish("acct_alice", "addr_home", Outcome::Success, &scoped)
        .await
        .unwrap();
    assert_eq!(
        admitted(
            one.begin("acct_alice", "addr_attacker", &scoped)
                .await
                .unwrap()
        )
        .failures,
        0
    );
}

async fn inconclusive_outcomes_release_without_counting<S: LoginStore>(b: Backend<S>) {
    let rules = rules(LockoutScope::Account);
    for _ in 0..20 {
        admitted(
            b.stores[0]
                .begin("acct_bob", "addr_1", &rules)
                .await
                .unwrap(),
        );
        let done = b.stores[1]
            .finish("acct_bob", "addr_1", Outcome::Inconclusive, &rules)
            .await
            .unwrap();
        assert_eq!(done.failures, 0);
    }
}

/// Within four standard errors of `n` for the least precise backend: the memory
/// store's 128-register sketches (about 7% at these counts; Redis is closer). Its hash
/// keys are random per process, so a tighter bound fails a run in several.
fn estimated(estimate: u64, n: u64) -> bool {
    let tolerance = n * 27 / 100;
    (n - tolerance..=n + tolerance).contains(&estimate)
}

async fn distinct_accounts_and_addresses_are_estimated<S: LoginStore>(b: Backend<S>) {
    let rules = rules(LockoutScope::Account);
    let mut accounts = 0;
    for i in 0..50 {
        accounts = b.stores[i % 2]
            .tried("web_login", "addr_stuffer", &format!("acct_{i}"), HOUR)
            .await
            .unwrap();
    }
    assert!(estimated(accounts, 50), "{accounts}");
    let again = b.stores[0]
        .tried("web_login", "addr_stuffer", "acct_0", HOUR)
        .await
        .unwrap();
    assert!(
        again.abs_diff(accounts) <= 1,
        "a repeat is not a new account: {accounts}, then {again}"
    );
    let elsewhere = b.stores[0]
        .tried("other_login", "addr_stuffer", "acct_0", HOUR)
        .await
        .unwrap();
    assert_eq!(elsewhere, 1, "routes are counted apart");
    let mut addresses = 0;
    for i in 0..40 {
        let attempt = admitted(
            b.stores[i % 2]
                .begin("acct_sprayed", &format!("addr_{i}"), &rules)
                .await
                .unwrap(),
        );
        addresses = attempt.addresses;
        b.stores[i % 2]
            .finish(
                "acct_sprayed",
                &format!("addr_{i}"),
                Outcome::Inconclusive,
                &rules,
            )
            .await
            .unwrap();
    }
    assert!(estimated(addresses, 40), "{addresses}");
}

conformance!(
    ratewarden_store::login::MemoryLogins::new(10_000, ratewarden_core::clock::SystemClock::new());
    concurrent_attempts_never_exceed_the_limit,
    success_clears_failures_and_remembers_the_address,
    inconclusive_outcomes_release_without_counting,
    distinct_accounts_and_addresses_are_estimated,
);

/// Time-driven behaviour, on the memory store with a manual clock (Redis keeps its own
/// time; these expiries are Redis key TTLs there).
#[tokio::test]
async fn lockouts_failures_and_stuck_attempts_run_out() {
    let clock = Arc::new(ManualClock::new(Timestamp(1_000_000_000_000)));
    let store = MemoryLogins::new(100, clock.clone());
    let rules = AccountRules {
        lockout: Nanos::from_secs(600),
        ..rules(LockoutScope::Account)
    };
    // Attempts that never finish (a gateway died) stop counting after in_flight_for.
    for _ in 0..5 {
        admitted(store.begin("acct", "addr", &rules).await.unwrap());
    }
    assert_eq!(
        store.begin("acct", "addr", &rules).await.unwrap(),
        Admission::Busy
    );
    clock.advance(Nanos::from_secs(61));
    for _ in 0..5 {
        admitted(store.begin("acct", "addr", &rules).await.unwrap());
        store
            .finish("acct", "addr", Outcome::Failure, &rules)
            .await
            .unwrap();
    }
    clock.advance(Nanos::from_secs(599));
    assert!(matches!(
        store.begin("acct", "addr", &rules).await.unwrap(),
        Admission::Locked(r) if r == Nanos::from_secs(1)
    ));
    clock.advance(Nanos::from_secs(1));
    // The lockout is over and the account starts afresh.
    assert_eq!(
        admitted(store.begin("acct", "addr", &rules).await.unwrap()).failures,
        0
    );
    store
        .finish("acct", "addr", Outcome::Failure, &rules)
        .await
        .unwrap();
    clock.advance(HOUR);
    assert_eq!(
        admitted(store.begin("acct", "addr", &rules).await.unwrap()).failures,
        0,
        "failures are forgotten a window after the last one"
    );
}

/// A flood of made-up accounts in a full store does not push out a locked account.
#[tokio::test]
async fn a_flood_of_accounts_cannot_evict_a_lockout() {
    let clock = Arc::new(ManualClock::new(Timestamp(1_000_000_000_000)));
    let store = MemoryLogins::new(64, clock.clone());
    let rules = rules(LockoutScope::Account);
    for _ in 0..5 {
        admitted(store.begin("acct_victim", "addr", &rules).await.unwrap());
        store
            .finish("acct_victim", "addr", Outcome::Failure, &rules)
            .await
            .unwrap();
    }
    for i in 0..10_000 {
        let account = format!("acct_junk_{i}");
        admitted(store.begin(&account, "addr", &rules).await.unwrap());
        store
            .finish(&account, "addr", Outcome::Inconclusive, &rules)
            .await
            .unwrap();
    }
    assert!(matches!(
        store.begin("acct_victim", "addr", &rules).await.unwrap(),
        Admission::Locked(_)
    ));
}
