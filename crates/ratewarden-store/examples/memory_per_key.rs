//! Resident memory per counter, and the store under a flood of distinct keys.
//!
//! `cargo run --release -p ratewarden-store --example memory_per_key` runs each
//! measurement in a fresh child process (so one cannot inherit another's heap) and prints
//! a table:
//!
//! - `ratewarden`: 1,000,000 distinct clients held in the memory store;
//! - `governor`: the same clients in `governor`'s keyed limiter (which also keeps each key
//!   string, as any map keyed by the client must);
//! - `flood`: a store capped at 1,000,000 keys receiving 10,000,000 distinct clients
//!   (an attacker rotating IPv6 addresses), with a hot client's decision time measured
//!   before and after.
#![allow(missing_docs, clippy::disallowed_methods)] // a measurement reads the clock

use governor::{Quota, RateLimiter};
use ratewarden_core::{Gcra, Limit};
use ratewarden_store::{Check, CounterKey, MemoryStore, RuleName};
use std::fmt::Write as _;
use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::process::Command;
use std::time::Instant;

const HELD: usize = 1_000_000;
const FLOOD: usize = 10_000_000;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn client(i: usize, buf: &mut String) -> &str {
    buf.clear();
    let _ = write!(buf, "2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff);
    buf
}

fn limit() -> Limit {
    Limit::Gcra(Gcra::new("10/s".parse().expect("rate"), 10).expect("gcra"))
}

fn ours() {
    let rule = RuleName::new("api");
    let limit = limit();
    let before = rss_bytes();
    // Capacity above the keys held, so no shard evicts (shards fill unevenly).
    let store = MemoryStore::new(NonZeroUsize::new(HELD * 11 / 10).expect("non-zero"));
    let mut buf = String::new();
    for i in 0..HELD {
        let key = CounterKey::new(&rule, client(i, &mut buf));
        assert!(store.decide_now(&[Check::one(key, limit)]).allowed());
    }
    let after = rss_bytes();
    assert_eq!(store.len(), HELD, "every key held");
    println!("ratewarden {} {}", HELD, after.saturating_sub(before));
}

fn governor() {
    let rate = NonZeroU32::new(10).expect("non-zero");
    let before = rss_bytes();
    let limiter = RateLimiter::keyed(Quota::per_second(rate));
    let mut buf = String::new();
    for i in 0..HELD {
        assert!(limiter.check_key(&client(i, &mut buf).to_owned()).is_ok());
    }
    let after = rss_bytes();
    assert_eq!(limiter.len(), HELD);
    println!("governor {} {}", HELD, after.saturating_sub(before));
}

fn flood() {
    let rule = RuleName::new("api");
    // Flood keys stay live for the whole run (a bucket of 100 refilling over an hour), so
    // every one beyond the cap costs a live key: the worst case.
    let flood_limit = Limit::Gcra(Gcra::new("100/h".parse().expect("rate"), 100).expect("gcra"));
    let hot_limit =
        Limit::Gcra(Gcra::new("100000000/s".parse().expect("rate"), 1_000_000).expect("gcra"));
    let rss_start = rss_bytes();
    let store = MemoryStore::new(NonZeroUsize::new(HELD).expect("non-zero"));
    let hot = |n: usize| {
        let started = Instant::now();
        for _ in 0..n {
            let key = CounterKey::new(&rule, "203.0.113.7");
            black_box(store.decide_now(&[Check::one(key, hot_limit)]));
        }
        started.elapsed().as_nanos() as f64 / n as f64
    };
    let hot_before = hot(2_000_000);
    let mut buf = String::new();
    let started = Instant::now();
    for i in 0..FLOOD {
        let key = CounterKey::new(&rule, client(i, &mut buf));
        black_box(store.decide_now(&[Check::one(key, flood_limit)]));
        if i % 1_000_000 == 0 && std::env::var_os("RSS_TRACE").is_some() {
            eprintln!("{i} {}", rss_bytes().saturating_sub(rss_start));
        }
    }
    let flood_ns = started.elapsed().as_nanos() as f64 / FLOOD as f64;
    let rss_end = rss_bytes();
    let hot_after = hot(2_000_000);
    let stats = store.stats();
    assert!(stats.keys <= stats.capacity);
    println!(
        "flood {} {} {} {} {:.1} {:.1} {:.1} {}",
        FLOOD,
        stats.capacity,
        stats.keys,
        stats.evicted_live,
        flood_ns,
        hot_before,
        hot_after,
        rss_end.saturating_sub(rss_start) / stats.capacity as u64
    );
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("ratewarden") => ours(),
        Some("governor") => governor(),
        Some("flood") => flood(),
        _ => {
            let exe = std::env::current_exe().expect("own path");
            let run = |mode: &str| {
                let out = Command::new(&exe).arg(mode).output().expect("child");
                assert!(
                    out.status.success(),
                    "{mode}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            };
            let per_key = |line: String| {
                let f: Vec<f64> = line
                    .split(' ')
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                f[1] / f[0]
            };
            let ours = per_key(run("ratewarden"));
            let theirs = per_key(run("governor"));
            println!("| limiter | keys held | resident bytes per key |");
            println!("|---|---|---|");
            println!("| ratewarden MemoryStore | {HELD} | {ours:.1} |");
            println!("| governor DefaultKeyedRateLimiter<String> | {HELD} | {theirs:.1} |");
            println!("| ratio ratewarden / governor | | {:.2} |", ours / theirs);
            let f: Vec<String> = run("flood").split(' ').map(str::to_owned).collect();
            println!();
            println!("| flood: distinct clients | cap | keys held after | live keys evicted | ns per new-client decision | hot-key ns before | hot-key ns after | resident bytes per cap slot after |");
            println!("|---|---|---|---|---|---|---|---|");
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]
            );
        }
    }
}
