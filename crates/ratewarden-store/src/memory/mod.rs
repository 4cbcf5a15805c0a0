//! The in-memory store: one process's limiter state, bounded and expiring.
//!
//! [`MemoryStore`] runs the core algorithms on slots of a sharded table (see `table`),
//! updating each slot with a compare-and-swap loop, so concurrent decisions on one
//! counter are exact without a lock per counter. A request with several checks is
//! all-or-nothing: the checks are first evaluated without charging; only if all admit is
//! each charged, and if a concurrent request took the last unit in between, the charges
//! already made are refunded.
//!
//! Memory is bounded by `max_keys`; expired state is reclaimed on demand when a shard is
//! full and in the background by [`MemoryStore::spawn_janitor`].

mod table;

use crate::check::{Check, Decisions};
use crate::error::StoreError;
use crate::store::Store;
use ratewarden_core::algorithm::StateBits;
use ratewarden_core::clock::{Clock, SystemClock};
use ratewarden_core::{Decision, Timestamp};
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use table::{expiry_secs, is_expired, Entry, Table};

/// The state word as read, the state it means at `now` (none once expired), and the
/// expiry read with it.
#[inline]
fn live_state(entry: &Entry, now: Timestamp) -> (u64, StateBits, u32) {
    // State before expiry, with acquire: the expiry then covers at least this state.
    let word = entry.state.load(Ordering::Acquire);
    let expiry = entry.expiry.load(Ordering::Acquire);
    let state = if is_expired(expiry, now) {
        StateBits::default()
    } else {
        StateBits(word)
    };
    (word, state, expiry)
}

/// Limiter state held in this process.
pub struct MemoryStore<C: Clock = SystemClock> {
    table: Table,
    clock: C,
    cas_retries: AtomicU64,
    refunds: AtomicU64,
}

/// What the store has done, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Counters held now.
    pub keys: usize,
    /// The most counters it will hold.
    pub capacity: usize,
    /// Bytes allocated for the counters (the tables, not the process): bounded by the
    /// capacity, whatever the traffic.
    pub allocated_bytes: usize,
    /// Expired counters dropped (by the janitor or to make room).
    pub reclaimed: u64,
    /// Live counters evicted because the store was full: each such client starts afresh.
    pub evicted_live: u64,
    /// Compare-and-swap attempts lost to a concurrent update and retried.
    pub cas_retries: u64,
    /// Charges undone because another limit of the same request denied it concurrently.
    pub refunds: u64,
}

impl MemoryStore<SystemClock> {
    /// A store of at most `max_keys` counters on the system clock.
    pub fn new(max_keys: NonZeroUsize) -> MemoryStore<SystemClock> {
        MemoryStore::with_clock(max_keys, SystemClock::new())
    }
}

impl<C: Clock> MemoryStore<C> {
    /// A store of at most `max_keys` counters reading time from `clock`.
    pub fn with_clock(max_keys: NonZeroUsize, clock: C) -> MemoryStore<C> {
        MemoryStore {
            table: Table::new(max_keys.get(), random_hash_keys()),
            clock,
            cas_retries: AtomicU64::new(0),
            refunds: AtomicU64::new(0),
        }
    }

    /// The store's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Decides one request against its checks, now. Never blocks on I/O; the async
    /// [`Store::decide`] is this, ready at once.
    pub fn decide_now(&self, checks: &[Check<'_>]) -> Decisions {
        let now = self.clock.now();
        match checks {
            [] => Decisions::default(),
            [check] => Decisions::one(self.charge(check, now).0),
            _ => self.decide_all_or_nothing(checks, now),
        }
    }

    fn decide_all_or_nothing(&self, checks: &[Check<'_>], now: Timestamp) -> Decisions {
        let preview: Decisions = checks
            .iter()
            .map(|c| self.preview(c, now, c.cost()))
            .collect();
        if !preview.allowed() {
            return self.uncharged(checks, &preview, now);
        }
        let mut charged = Decisions::default();
        let mut written: smallvec::SmallVec<[Option<StateBits>; 3]> = smallvec::SmallVec::new();
        for (i, check) in checks.iter().enumerate() {
            let (decision, wrote) = self.charge(check, now);
            if !decision.allowed {
                // Lost a race for the last unit: undo what this request took.
                for (earlier, wrote) in checks[..i].iter().zip(&written) {
                    if let Some(wrote) = wrote {
                        self.refund(earlier, *wrote);
                    }
                }
                let mut answer = preview.clone();
                answer.set(i, decision);
                return self.uncharged(checks, &answer, now);
            }
            charged.push(decision);
            written.push(wrote);
        }
        charged
    }

    /// The decision a check would get now at `cost`, without charging it.
    fn preview(&self, check: &Check<'_>, now: Timestamp, cost: u32) -> Decision {
        let key = self.table.hash(check.key());
        let state = self
            .table
            .with_existing(key, |entry| live_state(entry, now).1)
            .unwrap_or_default();
        check.limit().decide(state, now, cost).decision
    }

    /// The answer for a request that was charged to none of its limits: the denials as
    /// they are, and for each limit that would have admitted, its state as it stands
    /// (remaining and reset without this request).
    fn uncharged(&self, checks: &[Check<'_>], decisions: &Decisions, now: Timestamp) -> Decisions {
        checks
            .iter()
            .zip(decisions.as_slice())
            .map(|(check, d)| {
                if d.allowed {
                    self.preview(check, now, 0)
                } else {
                    *d
                }
            })
            .collect()
    }

    /// Decides a check and, if it admits, charges it; returns the state written.
    #[inline]
    fn charge(&self, check: &Check<'_>, now: Timestamp) -> (Decision, Option<StateBits>) {
        let key = self.table.hash(check.key());
        if let Some(result) = self
            .table
            .with_existing(key, |entry| self.charge_entry(entry, check, now))
        {
            return result;
        }
        self.table.with_exclusive(key, now, |entry| match entry {
            Some(entry) => (self.charge_entry(entry, check, now), None),
            None => {
                let outcome = check
                    .limit()
                    .decide(StateBits::default(), now, check.cost());
                // A zero-cost check only looks: it leaves no counter behind.
                let created = outcome
                    .next
                    .filter(|_| check.cost() > 0)
                    .map(|next| (next, outcome.expires_at));
                ((outcome.decision, created.map(|c| c.0)), created)
            }
        })
    }

    /// The compare-and-swap loop: the algorithm runs on the state it read and the result
    /// is stored only if nobody changed the state meanwhile.
    #[inline]
    fn charge_entry(
        &self,
        entry: &Entry,
        check: &Check<'_>,
        now: Timestamp,
    ) -> (Decision, Option<StateBits>) {
        loop {
            let (word, state, expiry) = live_state(entry, now);
            let outcome = check.limit().decide(state, now, check.cost());
            let Some(next) = outcome.next else {
                return (outcome.decision, None);
            };
            // Expiry first: a reader that sees the new state must see its expiry.
            let new_expiry = expiry_secs(outcome.expires_at);
            if new_expiry > expiry {
                entry.expiry.fetch_max(new_expiry, Ordering::AcqRel);
            }
            match entry.state.compare_exchange_weak(
                word,
                next.0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (outcome.decision, Some(next)),
                Err(_) => {
                    self.cas_retries.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Gives back a charge that wrote `written`, as far as no later admission counts on it.
    fn refund(&self, check: &Check<'_>, written: StateBits) {
        self.refunds.fetch_add(1, Ordering::Relaxed);
        let key = self.table.hash(check.key());
        self.table.with_existing(key, |entry| {
            let _ = entry
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                    let now = self.clock.now();
                    let state = check
                        .limit()
                        .refund(StateBits(word), written, now, check.cost());
                    Some(state.0)
                });
        });
    }

    /// Drops every expired counter now; returns how many. The janitor calls this.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now();
        (0..self.table.shard_count())
            .map(|i| self.table.purge_shard(i, now))
            .sum()
    }

    /// Counters held now.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the store has done so far.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            keys: self.len(),
            capacity: self.table.capacity(),
            allocated_bytes: self.table.allocated_bytes(),
            reclaimed: self.table.counters.reclaimed.load(Ordering::Relaxed),
            evicted_live: self.table.counters.evicted_live.load(Ordering::Relaxed),
            cas_retries: self.cas_retries.load(Ordering::Relaxed),
            refunds: self.refunds.load(Ordering::Relaxed),
        }
    }

    /// Reclaims expired counters every `every` on the current Tokio runtime, one shard at
    /// a time so no decision waits long. Stops when the store is dropped.
    pub fn spawn_janitor(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let store: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(shards) = store.upgrade().map(|s| s.table.shard_count()) else {
                    return;
                };
                for i in 0..shards {
                    let Some(store) = store.upgrade() else { return };
                    let now = store.clock.now();
                    store.table.purge_shard(i, now);
                    drop(store);
                    tokio::task::yield_now().await;
                }
            }
        })
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    fn decide(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Decisions, StoreError>> + Send {
        std::future::ready(Ok(self.decide_now(checks)))
    }
}

/// Fresh SipHash keys for this store, so counter hashes cannot be predicted from outside.
/// The standard library seeds `RandomState` from the operating system's randomness.
fn random_hash_keys() -> (u64, u64) {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new();
    (seed.hash_one(0x5eed_u64), seed.hash_one(0xcafe_u64))
}
