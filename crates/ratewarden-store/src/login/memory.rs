//! Login attempt state in this process: sharded, bounded maps of accounts and addresses.

use super::{AccountRules, Admission, Attempt, Finished, LoginStore, KNOWN_ADDRESSES};
use crate::error::StoreError;
use parking_lot::Mutex;
use ratewarden_core::clock::Clock;
use ratewarden_core::login::{LockoutScope, Outcome};
use ratewarden_core::threat::DistinctSketch;
use ratewarden_core::{Nanos, Timestamp};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

const SHARDS: usize = 16;
/// A full shard is swept for stale records at most this often.
const SWEEP_EVERY: Nanos = Nanos::from_secs(1);
/// Records looked at to choose one to evict when a shard is full.
const EVICTION_SAMPLE: usize = 8;

/// A distinct count over a sliding window: the current fixed window's sketch and the
/// previous one's, weighted by how much of it is still within a window of now.
#[derive(Default)]
struct WindowedSketch {
    index: u64,
    current: DistinctSketch,
    previous: DistinctSketch,
}

impl WindowedSketch {
    /// Adds `hash` at `now` and returns the distinct estimate (as the Redis script
    /// computes it).
    fn add(&mut self, hash: u64, now: Timestamp, window: Nanos) -> u64 {
        let window = window.as_nanos().max(1);
        let index = now.as_nanos() / window;
        if index != self.index {
            self.previous = if index == self.index + 1 {
                std::mem::take(&mut self.current)
            } else {
                DistinctSketch::default()
            };
            self.current = DistinctSketch::default();
            self.index = index;
        }
        self.current.insert(hash);
        let weight = 1.0 - (now.as_nanos() - index * window) as f64 / window as f64;
        (self.current.estimate() + weight * self.previous.estimate()).round() as u64
    }

    fn live_until(&self, window: Nanos) -> Timestamp {
        Timestamp((self.index + 2).saturating_mul(window.as_nanos()))
    }
}

#[derive(Default)]
struct AccountRecord {
    failures: u32,
    failures_until: Timestamp,
    last_failure: Timestamp,
    locked_until: Timestamp,
    in_flight: u32,
    in_flight_until: Timestamp,
    /// Addresses that logged in, with when they stop being known; newest last.
    known: Vec<(u64, Timestamp)>,
    addresses: WindowedSketch,
    window: Nanos,
}

impl AccountRecord {
    /// Drops what has run out at `now`.
    fn settle(&mut self, now: Timestamp) {
        if self.failures_until <= now {
            self.failures = 0;
        }
        if self.in_flight_until <= now {
            self.in_flight = 0;
        }
        self.known.retain(|(_, until)| *until > now);
    }

    fn is_stale(&self, now: Timestamp) -> bool {
        self.failures_until <= now
            && self.locked_until <= now
            && self.in_flight_until <= now
            && self.known.iter().all(|(_, until)| *until <= now)
            && self.addresses.live_until(self.window) <= now
    }

    /// How much losing this record would cost: a locked or failing account least of all
    /// may be forgotten.
    fn worth(&self, now: Timestamp) -> u64 {
        let locked = u64::from(self.locked_until > now) << 40;
        locked + (u64::from(self.failures) << 8) + self.known.len() as u64
    }
}

#[derive(Default)]
struct AddressRecord {
    accounts: WindowedSketch,
    window: Nanos,
}

struct Shard<R> {
    records: HashMap<String, R>,
    last_sweep: Timestamp,
}

/// Login state for at most `max_entries` accounts and as many addresses.
///
/// When a shard is full, stale records go first; if none is stale, the least valuable
/// of a few sampled records is evicted (an account with one old failure before a locked
/// one), so a flood of made-up accounts cannot push a victim's count out wholesale.
pub struct MemoryLogins<C: Clock> {
    accounts: Vec<Mutex<Shard<AccountRecord>>>,
    addresses: Vec<Mutex<Shard<AddressRecord>>>,
    per_shard: usize,
    hasher: RandomState,
    clock: C,
}

impl<C: Clock> MemoryLogins<C> {
    /// Keeps at most `max_entries` accounts and `max_entries` addresses.
    pub fn new(max_entries: usize, clock: C) -> MemoryLogins<C> {
        fn shards<R>() -> Vec<Mutex<Shard<R>>> {
            (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        records: HashMap::new(),
                        last_sweep: Timestamp::EPOCH,
                    })
                })
                .collect()
        }
        MemoryLogins {
            accounts: shards(),
            addresses: shards(),
            per_shard: max_entries.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            clock,
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    /// Runs `work` on the account's record, made if missing.
    fn with_account<T>(
        &self,
        account: &str,
        window: Nanos,
        work: impl FnOnce(&mut AccountRecord, Timestamp) -> T,
    ) -> T {
        let now = self.clock.now();
        let mut shard = self.accounts[self.shard_of(account)].lock();
        // The key is copied only for a new account, not on every attempt.
        if !shard.records.contains_key(account) {
            shard.make_room(self.per_shard, now, |r| r.is_stale(now), |r| r.worth(now));
            shard
                .records
                .insert(account.to_owned(), AccountRecord::default());
        }
        match shard.records.get_mut(account) {
            Some(record) => {
                record.window = window;
                record.settle(now);
                work(record, now)
            }
            // Inserted just above, under the same lock.
            None => work(&mut AccountRecord::default(), now),
        }
    }
}

impl<R> Shard<R> {
    /// Makes room for one more record: drops stale ones (a full sweep at most every
    /// [`SWEEP_EVERY`], so a flood of new keys does not make every request a scan), or
    /// else the least valuable of a few.
    fn make_room(
        &mut self,
        per_shard: usize,
        now: Timestamp,
        stale: impl Fn(&R) -> bool,
        worth: impl Fn(&R) -> u64,
    ) {
        if self.records.len() < per_shard {
            return;
        }
        if now.saturating_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            self.records.retain(|_, r| !stale(r));
            if self.records.len() < per_shard {
                return;
            }
        }
        let victim = self
            .records
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, r)| worth(r))
            .map(|(k, _)| k.clone());
        if let Some(victim) = victim {
            self.records.remove(&victim);
        }
    }
}

impl<C: Clock> LoginStore for MemoryLogins<C> {
    async fn begin(
        &self,
        account: &str,
        address: &str,
        rules: &AccountRules,
    ) -> Result<Admission, StoreError> {
        let address_hash = self.hasher.hash_one(address);
        Ok(self.with_account(account, rules.window, |r, now| {
            let known = r.known.iter().any(|(a, _)| *a == address_hash);
            let exempt = known && rules.scope == LockoutScope::AccountAndIp;
            if r.locked_until > now && !exempt {
                return Admission::Locked(r.locked_until.saturating_since(now));
            }
            if !exempt && r.failures.saturating_add(r.in_flight) >= rules.failures {
                return Admission::Busy;
            }
            r.in_flight += 1;
            r.in_flight_until = now.saturating_add(rules.in_flight_for);
            let addresses = r.addresses.add(address_hash, now, rules.window);
            Admission::Admitted(Attempt {
                failures: r.failures,
                since_failure: (r.failures > 0).then(|| now.saturating_since(r.last_failure)),
                known_address: known,
                addresses,
            })
        }))
    }

    async fn finish(
        &self,
        account: &str,
        address: &str,
        outcome: Outcome,
        rules: &AccountRules,
    ) -> Result<Finished, StoreError> {
        let address_hash = self.hasher.hash_one(address);
        Ok(self.with_account(account, rules.window, |r, now| {
            r.in_flight = r.in_flight.saturating_sub(1);
            match outcome {
                Outcome::Failure => {
                    r.failures += 1;
                    r.failures_until = now.saturating_add(rules.window);
                    r.last_failure = now;
                    if r.failures >= rules.failures {
                        r.failures = 0;
                        r.failures_until = now;
                        r.locked_until = now.saturating_add(rules.lockout);
                        return Finished {
                            failures: 0,
                            locked_for: Some(rules.lockout),
                        };
                    }
                }
                Outcome::Success => {
                    r.failures = 0;
                    r.failures_until = now;
                    r.locked_until = now;
                    r.known.retain(|(a, _)| *a != address_hash);
                    r.known
                        .push((address_hash, now.saturating_add(rules.known_for)));
                    if r.known.len() > KNOWN_ADDRESSES {
                        r.known.remove(0);
                    }
                }
                Outcome::Inconclusive => {}
            }
            Finished {
                failures: r.failures,
                locked_for: None,
            }
        }))
    }

    async fn tried(
        &self,
        route: &str,
        address: &str,
        account: &str,
        window: Nanos,
    ) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let key = format!("{route}\u{0}{address}");
        let account_hash = self.hasher.hash_one(account);
        let mut shard = self.addresses[self.shard_of(&key)].lock();
        if !shard.records.contains_key(&key) {
            shard.make_room(
                self.per_shard,
                now,
                |r| r.accounts.live_until(r.window) <= now,
                |r| r.accounts.current.estimate() as u64,
            );
        }
        let record = shard.records.entry(key).or_default();
        record.window = window;
        Ok(record.accounts.add(account_hash, now, window))
    }
}
