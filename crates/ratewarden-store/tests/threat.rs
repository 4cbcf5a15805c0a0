//! The threat store's contract, run against memory, a Redis server and a Redis Cluster
//! (started by the test on free loopback ports): exact counts under concurrency, levels,
//! blocks that escalate once per offence, lifting, listing.

#![allow(clippy::unwrap_used)]

mod common;

use common::Backend;

use ratewarden_core::clock::Clock;
use ratewarden_core::clock::SystemClock;
use ratewarden_core::threat::{Batch, Level, Observation, RequestOutcome};
use ratewarden_core::{Nanos, Timestamp};
use ratewarden_store::threat::{BlockPlan, ThreatStore};
use std::time::Duration;

const HOUR: Nanos = Nanos::from_secs(3600);

fn request(endpoint: u64, status: u16) -> Batch {
    Batch::of(&Observation {
        at: SystemClock::new().now(),
        endpoint: endpoint.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        agent: 42,
        automation_agent: false,
        spoofed_forwarding: false,
        credential_stuffing: false,
        outcome: RequestOutcome::Answered(status),
    })
}

fn plan(ladder: &[Nanos]) -> BlockPlan {
    BlockPlan {
        ladder: ladder.to_vec(),
        forget_after: HOUR,
        reasons: vec!["auth_failures=14".into(), "endpoints=212".into()],
    }
}

async fn concurrent_observations_are_all_counted<S: ThreatStore>(b: Backend<S>) {
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let store = b.stores[(i % 2) as usize].clone();
            tokio::spawn(async move {
                let status = if i % 4 == 0 { 401 } else { 200 };
                store
                    .observe("198.51.100.7", &request(i % 50, status), HOUR)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let last = b.stores[0]
        .observe("198.51.100.7", &request(0, 200), HOUR)
        .await
        .unwrap();
    let s = last.signals;
    // The window is an hour: unless the test straddles the turn of an hour, everything is
    // in the current bucket; across it, the previous bucket still weighs almost fully.
    assert!((s.requests - 201.0).abs() < 2.0, "{s:?}");
    assert!((s.auth_failures - 50.0).abs() < 1.0, "{s:?}");
    assert!((s.endpoints - 50.0).abs() < 10.0, "{s:?}");
    // Concurrent requests arrive out of order: only gaps forward in time are timed.
    assert!(s.gaps <= 200.0, "{s:?}");
    let other = b.stores[1]
        .observe("198.51.100.8", &request(0, 200), HOUR)
        .await
        .unwrap();
    assert_eq!(other.signals.requests, 1.0, "clients are apart");
}

async fn levels_are_recorded_and_cleared<S: ThreatStore>(b: Backend<S>) {
    let [a, other] = &b.stores;
    let client = "2001:db8:1::/64";
    assert_eq!(a.status(client).await.unwrap().level, Level::Normal);
    let reasons = vec!["auth_failures=14".to_owned()];
    a.set_level(client, Level::Normal, Level::High, &reasons, HOUR)
        .await
        .unwrap();
    let status = other.status(client).await.unwrap();
    assert_eq!((status.level, status.reasons), (Level::High, reasons));
    let observed = other.observe(client, &request(1, 200), HOUR).await.unwrap();
    assert_eq!(observed.recorded, Level::High);
    // A change from a level no longer recorded does not land (another gateway won).
    assert!(!a
        .set_level(client, Level::Normal, Level::Elevated, &[], HOUR)
        .await
        .unwrap());
    assert_eq!(other.status(client).await.unwrap().level, Level::High);
    assert!(a
        .set_level(client, Level::High, Level::Normal, &[], HOUR)
        .await
        .unwrap());
    assert_eq!(other.status(client).await.unwrap().level, Level::Normal);
}

async fn blocks_escalate_once_per_offence<S: ThreatStore>(b: Backend<S>) {
    let [a, other] = &b.stores;
    let client = "203.0.113.50";
    let short = Nanos::from_millis(30);
    let ladder = [short, HOUR, Nanos::from_secs(7200)];
    let (first, made) = a.block(client, &plan(&ladder)).await.unwrap();
    assert!(made);
    assert_eq!(first.offence, 1);
    assert_eq!(first.client, client);
    // Another gateway blocking the same client meanwhile adds no offence.
    let (again, made) = other.block(client, &plan(&ladder)).await.unwrap();
    assert!(!made);
    assert_eq!(again.offence, 1);
    let status = other.status(client).await.unwrap();
    let block = status.block.expect("blocked");
    assert!(block.remaining(status.now) <= short);
    assert_eq!(block.reasons, plan(&ladder).reasons);
    // Let the 30 ms block end (the store's own clock, which for Redis is the server's).
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(a.status(client).await.unwrap().block, None);
    let (second, made) = other.block(client, &plan(&ladder)).await.unwrap();
    assert!(made);
    assert_eq!(second.offence, 2);
    let status = a.status(client).await.unwrap();
    let left = second.remaining(status.now);
    assert!(left > Nanos::from_secs(3500) && left <= HOUR, "{left:?}");
    let listed = a.blocks().await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.client.as_str()).collect::<Vec<_>>(),
        [client]
    );
    for i in 0..3 {
        a.observe(client, &request(i, 401), HOUR).await.unwrap();
    }
    assert!(other.lift(client, HOUR).await.unwrap());
    assert_eq!(a.status(client).await.unwrap().block, None);
    assert!(a.blocks().await.unwrap().is_empty());
    assert!(!a.lift(client, HOUR).await.unwrap(), "nothing left to lift");
    // Lifting gives a clean slate: behaviour forgotten too.
    let after = a.observe(client, &request(1, 200), HOUR).await.unwrap();
    assert_eq!(after.signals.requests, 1.0);
    // Lifting forgives: the next block is a first offence again.
    let (fresh, _) = a.block(client, &plan(&[HOUR])).await.unwrap();
    assert_eq!(fresh.offence, 1);
}

async fn batches_count_like_the_requests_in_them<S: ThreatStore>(b: Backend<S>) {
    let [a, other] = &b.stores;
    let client = "198.51.100.77";
    let start = SystemClock::new().now();
    let at = |ms: u64| Observation {
        at: Timestamp(start.0 + ms * 1_000_000),
        endpoint: ms,
        agent: 42,
        automation_agent: false,
        spoofed_forwarding: false,
        credential_stuffing: false,
        outcome: RequestOutcome::Answered(401),
    };
    let mut first = Batch::of(&at(0));
    first.add(&at(100));
    first.add(&at(200));
    let mut second = Batch::of(&at(300));
    second.add(&at(400));
    a.observe(client, &first, HOUR).await.unwrap();
    // Another gateway's batch: the gap before its first request is timed against the
    // last request of the first batch.
    let s = other.observe(client, &second, HOUR).await.unwrap().signals;
    assert!((s.requests - 5.0).abs() < 0.01, "{s:?}");
    assert!((s.auth_failures - 5.0).abs() < 0.01, "{s:?}");
    assert!((s.gaps - 4.0).abs() < 0.01, "{s:?}");
    assert_eq!(s.mean_gap_ms.map(f64::round), Some(100.0), "{s:?}");
    assert_eq!(s.timing_cv.map(|cv| cv < 0.01), Some(true), "{s:?}");
    assert!((s.endpoints - 5.0).abs() < 1.0, "{s:?}");
}

async fn a_networks_failing_addresses_are_counted_once_each<S: ThreatStore>(b: Backend<S>) {
    let [a, other] = &b.stores;
    let network = "network:203.0.113.0/24";
    let tasks: Vec<_> = (0..40u64)
        .map(|i| {
            let store = b.stores[(i % 2) as usize].clone();
            // 20 addresses, each recorded twice, by two gateways at once.
            tokio::spawn(async move {
                let address = (i % 20).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                store
                    .failing_neighbours(network, Some(address), HOUR)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let read = a.failing_neighbours(network, None, HOUR).await.unwrap();
    assert!((read - 20.0).abs() < 1.0, "{read}");
    let another = other
        .failing_neighbours("network:198.51.100.0/24", Some(7), HOUR)
        .await
        .unwrap();
    assert!((another - 1.0).abs() < 0.01, "{another}");
    // The network's record is not a client's: no level, no block.
    let status = a.status(network).await.unwrap();
    assert_eq!((status.level, status.block), (Level::Normal, None));
}

async fn a_neighbour_failing_in_two_windows_counts_once<S: ThreatStore>(b: Backend<S>) {
    let [a, other] = &b.stores;
    let network = "network:192.0.2.0/24";
    let window = Nanos::from_secs(2);
    let offset = |now: Timestamp| Duration::from_nanos(now.as_nanos() % window.as_nanos());
    // Start early in a window, so the next one is reached by sleeping past its start.
    let late = offset(SystemClock::new().now());
    if late > Duration::from_millis(1200) {
        tokio::time::sleep(Duration::from_secs(2) - late + Duration::from_millis(100)).await;
    }
    a.failing_neighbours(network, Some(1), window)
        .await
        .unwrap();
    a.failing_neighbours(network, Some(2), window)
        .await
        .unwrap();
    let into = Duration::from_secs(2) - offset(SystemClock::new().now());
    tokio::time::sleep(into + Duration::from_millis(200)).await;
    // The next window: address 1 fails again, address 3 for the first time.
    other
        .failing_neighbours(network, Some(1), window)
        .await
        .unwrap();
    let n = other
        .failing_neighbours(network, Some(3), window)
        .await
        .unwrap();
    assert!((n - 3.0).abs() < 0.5, "three addresses, counted {n}");
}

conformance!(
    ratewarden_store::threat::MemoryThreats::new(10_000, ratewarden_core::clock::SystemClock::new());
    concurrent_observations_are_all_counted,
    levels_are_recorded_and_cleared,
    blocks_escalate_once_per_offence,
    batches_count_like_the_requests_in_them,
    a_networks_failing_addresses_are_counted_once_each,
    a_neighbour_failing_in_two_windows_counts_once,
);
