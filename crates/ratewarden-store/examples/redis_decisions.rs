//! Decisions per second and latency of the Redis store alone, as one gateway process
//! drives it: many requests in flight at once over the store's one multiplexed
//! connection (so their scripts are pipelined), each request one `decide` of one GCRA
//! check for one of 10,000 clients, with a limit far above the load (every request
//! admitted and written, the expensive case).
//!
//!   cargo run --release -p ratewarden-store --example redis_decisions -- URL SECONDS IN_FLIGHT
//!
//! Prints one line: decisions/s, p50 and p99 latency in microseconds.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use ratewarden_core::clock::SystemClock;
use ratewarden_core::{Gcra, Limit};
use ratewarden_store::redis::{RedisSettings, RedisStore, RedisTarget};
use ratewarden_store::{Check, CounterKey, RuleName, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let seconds: u64 = args.get(2).map_or(5, |s| s.parse().unwrap());
    let in_flight: usize = args.get(3).map_or(64, |s| s.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(
            RedisStore::new(
                RedisSettings {
                    target: RedisTarget::Server(url),
                    timeout: Duration::from_secs(1),
                    key_prefix: "rwbench".into(),
                },
                SystemClock::new(),
            )
            .unwrap(),
        );
        store.ping().await.expect("Redis reachable");
        let rule = Arc::new(RuleName::new("bench"));
        let limit = Limit::Gcra(Gcra::new("1000000/s".parse().unwrap(), 1_000_000).unwrap());
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let workers: Vec<_> = (0..in_flight)
            .map(|w| {
                let (store, rule) = (store.clone(), rule.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(100_000);
                    let mut n = w;
                    while Instant::now() < deadline {
                        let client = format!("client-{}", n % 10_000);
                        n += in_flight;
                        let started = Instant::now();
                        let d = store
                            .decide(&[Check::one(CounterKey::new(&rule, &client), limit)])
                            .await;
                        latencies.push(started.elapsed().as_micros() as u64);
                        assert!(d.expect("decided").allowed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        all.sort_unstable();
        let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        println!(
            "{:.0} decisions/s, p50 {} us, p99 {} us ({} decisions, {in_flight} in flight)",
            all.len() as f64 / seconds as f64,
            at(0.50),
            at(0.99),
            all.len()
        );
    });
}
