//! `ratewarden demo`: simulated clients against the real limiter and memory store.
//!
//! Time is simulated with a manual clock, so a minute of traffic runs in an instant and
//! every run prints the same figures. The clients: steady users who stay under the limit,
//! a bursty mobile app that the burst allowance absorbs, a scraper hammering the API, and
//! a password guesser on the login route. Each request is checked against every rule that
//! matches it, all-or-nothing, exactly as the gateway will.

use clap::Args;
use ratewarden_core::clock::ManualClock;
use ratewarden_core::{FixedWindow, Gcra, Limit, Nanos, SlidingWindow, Timestamp};
use ratewarden_store::{Check, CounterKey, Decisions, MemoryStore, RuleName};
use std::num::NonZeroUsize;

/// Options of the demo.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated seconds of traffic.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

struct Rule {
    name: RuleName,
    description: &'static str,
    limit: Limit,
    login_only: bool,
}

struct Client {
    name: &'static str,
    ip: &'static str,
    /// Requests sent at each simulated tick (10 ticks per second), as a function of the tick.
    pattern: fn(u64) -> u32,
    login: bool,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    admitted: u64,
    last_denial: Option<Decisions>,
}

const TICKS_PER_SEC: u64 = 10;

/// Runs the demo and prints its summary.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let rules = [
        Rule {
            name: RuleName::new("api_general"),
            description: "gcra 10/s, burst 20, per IP",
            limit: Limit::Gcra(Gcra::new("10/s".parse()?, 20)?),
            login_only: false,
        },
        Rule {
            name: RuleName::new("login"),
            description: "sliding_window 5/m, per IP",
            limit: Limit::SlidingWindow(SlidingWindow::new("5/m".parse()?)?),
            login_only: true,
        },
        Rule {
            name: RuleName::new("hourly_quota"),
            description: "fixed_window 1000/h, per IP",
            limit: Limit::FixedWindow(FixedWindow::new("1000/h".parse()?)?),
            login_only: false,
        },
    ];
    let clients = [
        Client {
            name: "steady user (3 req/s)",
            ip: "198.51.100.10",
            pattern: |t| u32::from(t % 10 < 3),
            login: false,
        },
        Client {
            name: "bursty app (25 at once every 10 s)",
            ip: "198.51.100.20",
            pattern: |t| if t % 100 == 0 { 25 } else { 0 },
            login: false,
        },
        Client {
            name: "scraper (50 req/s)",
            ip: "203.0.113.66",
            pattern: |_| 5,
            login: false,
        },
        Client {
            name: "password guesser (2 logins/s)",
            ip: "203.0.113.99",
            pattern: |t| u32::from(t % 5 == 0),
            login: true,
        },
    ];

    // 2026-11-23T12:00:00Z: a fixed start so every run prints the same.
    let clock = ManualClock::new(Timestamp(1_795_435_200 * 1_000_000_000));
    let store = MemoryStore::with_clock(
        NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN),
        clock,
    );
    let mut tallies: Vec<Tally> = clients.iter().map(|_| Tally::default()).collect();

    for tick in 0..args.seconds * TICKS_PER_SEC {
        for (client, tally) in clients.iter().zip(&mut tallies) {
            for _ in 0..(client.pattern)(tick) {
                let checks: Vec<Check<'_>> = rules
                    .iter()
                    .filter(|r| !r.login_only || client.login)
                    .map(|r| Check::one(CounterKey::new(&r.name, client.ip), r.limit))
                    .collect();
                let decisions = store.decide_now(&checks);
                tally.sent += 1;
                if decisions.allowed() {
                    tally.admitted += 1;
                } else {
                    tally.last_denial = Some(decisions);
                }
            }
        }
        store.clock().advance(Nanos(1_000_000_000 / TICKS_PER_SEC));
    }

    println!(
        "ratewarden demo: {} simulated seconds, rules:",
        args.seconds
    );
    for rule in &rules {
        let scope = if rule.login_only {
            "login route"
        } else {
            "every route"
        };
        println!("  {:<12} {} ({scope})", rule.name, rule.description);
    }
    println!();
    println!(
        "{:<38} {:>6} {:>9} {:>7}  answer to the last denied request",
        "client", "sent", "admitted", "denied"
    );
    for (client, tally) in clients.iter().zip(&tallies) {
        let answer = tally.last_denial.as_ref().map_or("-".to_owned(), |d| {
            let (i, decision) = d.most_restrictive().unwrap_or((0, &d[0]));
            let rule = rules
                .iter()
                .filter(|r| !r.login_only || client.login)
                .nth(i)
                .map_or("?", |r| r.name.as_str());
            format!(
                "429 rule={rule} Retry-After={} X-RateLimit-Limit={} X-RateLimit-Remaining={}",
                decision.retry_after.as_secs_ceil(),
                decision.limit,
                decision.remaining
            )
        });
        println!(
            "{:<38} {:>6} {:>9} {:>7}  {answer}",
            client.name,
            tally.sent,
            tally.admitted,
            tally.sent - tally.admitted
        );
    }
    let stats = store.stats();
    println!();
    println!(
        "store: {} counters held (cap {}), {} bytes allocated, {} compare-and-swap retries",
        stats.keys, stats.capacity, stats.allocated_bytes, stats.cas_retries
    );
    Ok(())
}
