//! One decision on the memory store against `governor`'s keyed limiter and a naive
//! `Mutex<HashMap>`, on the same workloads in the same run:
//! (a) one hot key, (b) 100,000 keys round-robin, (c) 2 threads on distinct keys.
//!
//! Every limiter is a GCRA with the same quota, generous enough that the measured path is
//! the common one (admission). Keys are `String`s for all three.
//!
//! Run: `python3 scripts/bench_ratios.py --runs 3`, which runs this benchmark three
//! times and prints the median ratio per workload.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ratewarden_core::clock::{Clock, SystemClock};
use ratewarden_core::{Gcra, Limit};
use ratewarden_store::{Check, CounterKey, MemoryStore, RuleName};
use std::collections::HashMap;
use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

const RATE_PER_SEC: u32 = 100_000_000;
const KEYS: usize = 100_000;

/// The three limiters behind one interface, so every workload runs the same code.
#[allow(clippy::ptr_arg)] // governor keyed by String takes &String
trait Limiter: Sync {
    fn check(&self, key: &String) -> bool;
}

struct Ours {
    store: MemoryStore,
    rule: RuleName,
    limit: Limit,
}

impl Limiter for Ours {
    #[inline]
    fn check(&self, key: &String) -> bool {
        self.store
            .decide_now(&[Check::one(CounterKey::new(&self.rule, key), self.limit)])
            .allowed()
    }
}

impl Limiter for DefaultKeyedRateLimiter<String> {
    #[inline]
    fn check(&self, key: &String) -> bool {
        self.check_key(key).is_ok()
    }
}

/// The baseline every sharded design must beat: one lock around one map.
struct NaiveMutexMap {
    map: Mutex<HashMap<String, u64>>,
    gcra: Gcra,
    clock: SystemClock,
}

impl Limiter for NaiveMutexMap {
    #[inline]
    fn check(&self, key: &String) -> bool {
        let now = self.clock.now();
        let mut map = self.map.lock().expect("lock");
        let state = ratewarden_core::algorithm::GcraState {
            tat: map.get(key).copied().unwrap_or(0),
        };
        let outcome = self.gcra.decide(state, now, 1);
        if let Some(next) = outcome.next {
            match map.get_mut(key) {
                Some(tat) => *tat = next.tat,
                None => {
                    map.insert(key.clone(), next.tat);
                }
            }
        }
        outcome.decision.allowed
    }
}

fn limiters() -> Vec<(&'static str, Box<dyn Limiter>)> {
    let rate = NonZeroU32::new(RATE_PER_SEC).expect("non-zero");
    let gcra = Gcra::new(
        format!("{RATE_PER_SEC}/s").parse().expect("rate"),
        RATE_PER_SEC,
    )
    .expect("gcra");
    vec![
        (
            "ratewarden",
            Box::new(Ours {
                store: MemoryStore::new(NonZeroUsize::new(1_000_000).expect("non-zero")),
                rule: RuleName::new("bench"),
                limit: Limit::Gcra(gcra),
            }),
        ),
        (
            "governor",
            Box::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(rate),
            )),
        ),
        (
            "mutex_hashmap",
            Box::new(NaiveMutexMap {
                map: Mutex::new(HashMap::new()),
                gcra,
                clock: SystemClock::new(),
            }),
        ),
    ]
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "{prefix}10.{}.{}.{}",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            )
        })
        .collect()
}

/// One group per workload, the three limiters measured back to back in it, so a drift in
/// the machine's speed during the run touches all three alike.
fn decisions(c: &mut Criterion) {
    let hot = "203.0.113.7".to_string();
    let many = keys("", KEYS);
    let per_thread = [keys("a", 1), keys("b", 1)];
    let limiters = limiters();
    for (_, limiter) in &limiters {
        for key in &many {
            limiter.check(key);
        }
    }

    let mut group = c.benchmark_group("a_hot_key");
    configure(&mut group);
    for (name, limiter) in &limiters {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| black_box(limiter.check(black_box(&hot))))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("b_100k_keys_round_robin");
    configure(&mut group);
    for (name, limiter) in &limiters {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut i = 0;
            b.iter(|| {
                i = if i + 1 == KEYS { 0 } else { i + 1 };
                black_box(limiter.check(black_box(&many[i])))
            })
        });
    }
    group.finish();

    // Two threads, each on its own key: the time reported is per decision per thread.
    let mut group = c.benchmark_group("c_2_threads_distinct_keys");
    configure(&mut group);
    for (name, limiter) in &limiters {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| two_threads(limiter.as_ref(), &per_thread, iters))
        });
    }
    group.finish();
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
}

#[allow(clippy::disallowed_methods)] // measuring wall time is the point of a benchmark
fn two_threads(limiter: &dyn Limiter, keys: &[Vec<String>; 2], iters: u64) -> Duration {
    let start = Barrier::new(3);
    std::thread::scope(|s| {
        for own in keys {
            let start = &start;
            s.spawn(move || {
                let key = &own[0];
                start.wait();
                for _ in 0..iters {
                    black_box(limiter.check(black_box(key)));
                }
            });
        }
        start.wait();
        let began = Instant::now();
        // Leaving the scope joins both threads.
        began
    })
    .elapsed()
}

criterion_group!(benches, decisions);
criterion_main!(benches);
