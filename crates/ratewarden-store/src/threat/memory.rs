//! Threat state in this process: one record per client in a sharded, bounded map.

use super::{Block, BlockPlan, ClientStatus, Observed, ThreatStore};
use crate::error::StoreError;
use parking_lot::Mutex;
use ratewarden_core::clock::Clock;
use ratewarden_core::threat::{Batch, ClientWindow, Level};
use ratewarden_core::{Nanos, Timestamp};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

const SHARDS: usize = 32;
/// A full shard is swept for stale records at most this often: a flood of new clients
/// must not turn every request into a scan.
const SWEEP_EVERY: Nanos = Nanos::from_secs(1);

#[derive(Default)]
struct Shard {
    records: HashMap<String, Record>,
    last_sweep: Timestamp,
}

#[derive(Default)]
struct Record {
    behaviour: ClientWindow,
    window: Nanos,
    level: Level,
    reasons: Vec<String>,
    level_until: Timestamp,
    block: Option<Block>,
    offences: u32,
    offences_until: Timestamp,
}

impl Record {
    fn level_at(&self, now: Timestamp) -> (Level, &[String]) {
        if now < self.level_until {
            (self.level, &self.reasons)
        } else {
            (Level::Normal, &[])
        }
    }

    fn block_at(&self, now: Timestamp) -> Option<&Block> {
        self.block.as_ref().filter(|b| b.until > now)
    }

    /// Whether the record says nothing any more at `now`.
    fn is_stale(&self, now: Timestamp) -> bool {
        self.behaviour.stale_at(self.window) <= now
            && self.level_until <= now
            && self.offences_until <= now
            && self.block_at(now).is_none()
    }
}

/// Threat state of at most `max_clients` clients, in this process.
///
/// When every slot holds a live record, a new client is not tracked (it keeps its
/// static limits) until records go stale; a block is always recorded, evicting an
/// unblocked client's record if it must, so a flood of addresses cannot disable blocks.
pub struct MemoryThreats<C: Clock> {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
    clock: C,
}

impl<C: Clock> MemoryThreats<C> {
    /// Keeps at most `max_clients` clients (stale ones are dropped to make room; when
    /// all are live, a new client is not tracked until one goes stale).
    pub fn new(max_clients: usize, clock: C) -> MemoryThreats<C> {
        MemoryThreats {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_clients.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            clock,
        }
    }

    fn shard(&self, client: &str) -> &Mutex<Shard> {
        let i = (self.hasher.hash_one(client) % SHARDS as u64) as usize;
        &self.shards[i]
    }

    /// Runs `f` on the client's record, creating it if there is room; with `force`,
    /// making room by evicting an unblocked record.
    fn with_record<T>(
        &self,
        client: &str,
        now: Timestamp,
        force: bool,
        f: impl FnOnce(&mut Record) -> T,
    ) -> Option<T> {
        let mut guard = self.shard(client).lock();
        let shard = &mut *guard;
        if !shard.records.contains_key(client) && shard.records.len() >= self.per_shard {
            if now.saturating_since(shard.last_sweep) >= SWEEP_EVERY {
                shard.last_sweep = now;
                shard.records.retain(|_, r| !r.is_stale(now));
            }
            if shard.records.len() >= self.per_shard {
                if !force {
                    return None;
                }
                let victim = shard
                    .records
                    .iter()
                    .find(|(_, r)| r.block_at(now).is_none())
                    .map(|(k, _)| k.clone());
                if let Some(victim) = victim {
                    shard.records.remove(&victim);
                }
            }
        }
        Some(f(shard.records.entry(client.to_owned()).or_default()))
    }

    /// Drops records that say nothing any more; returns how many are left.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        self.shards
            .iter()
            .map(|s| {
                let mut s = s.lock();
                s.records.retain(|_, r| !r.is_stale(now));
                s.last_sweep = now;
                s.records.len()
            })
            .sum()
    }

    fn status_now(&self, client: &str) -> ClientStatus {
        let now = self.clock.now();
        let shard = self.shard(client).lock();
        let Some(record) = shard.records.get(client) else {
            return ClientStatus {
                now,
                ..ClientStatus::default()
            };
        };
        let (level, reasons) = record.level_at(now);
        ClientStatus {
            level,
            reasons: reasons.to_vec(),
            block: record.block_at(now).cloned(),
            now,
        }
    }
}

impl<C: Clock> ThreatStore for MemoryThreats<C> {
    async fn status(&self, client: &str) -> Result<ClientStatus, StoreError> {
        Ok(self.status_now(client))
    }

    async fn observe(
        &self,
        client: &str,
        batch: &Batch,
        window: Nanos,
    ) -> Result<Observed, StoreError> {
        let now = self.clock.now();
        let observed = self.with_record(client, now, false, |r| {
            r.window = window;
            r.behaviour.add_batch(batch, window, now);
            let recorded = r.level_at(now).0;
            if recorded != Level::Normal {
                r.level_until = now.saturating_add(window);
            }
            Observed {
                signals: r.behaviour.signals(now, window),
                recorded,
                blocked_until: r.block_at(now).map(|b| b.until),
                now,
            }
        });
        // A full table: the client is not tracked (it keeps its static limits).
        Ok(observed.unwrap_or(Observed {
            signals: Default::default(),
            recorded: Level::Normal,
            blocked_until: None,
            now,
        }))
    }

    async fn set_level(
        &self,
        client: &str,
        expected: Level,
        level: Level,
        reasons: &[String],
        window: Nanos,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let set = self.with_record(client, now, false, |r| {
            if r.level_at(now).0 != expected {
                return false;
            }
            r.level = level;
            r.reasons = reasons.to_vec();
            r.level_until = if level == Level::Normal {
                now
            } else {
                now.saturating_add(window)
            };
            true
        });
        Ok(set.unwrap_or(false))
    }

    async fn block(&self, client: &str, plan: &BlockPlan) -> Result<(Block, bool), StoreError> {
        let now = self.clock.now();
        let made = self.with_record(client, now, true, |r| {
            if let Some(b) = r.block_at(now) {
                return (b.clone(), false);
            }
            if r.offences_until <= now {
                r.offences = 0;
            }
            r.offences = r.offences.saturating_add(1);
            let length = plan.length(r.offences);
            let block = Block {
                client: client.to_owned(),
                until: now.saturating_add(length),
                offence: r.offences,
                reasons: plan.reasons.clone(),
            };
            r.offences_until = block.until.saturating_add(plan.forget_after);
            r.block = Some(block.clone());
            (block, true)
        });
        made.ok_or_else(|| StoreError::Unavailable("threat table full of blocked clients".into()))
    }

    async fn lift(&self, client: &str, _window: Nanos) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut shard = self.shard(client).lock();
        Ok(shard
            .records
            .remove(client)
            .is_some_and(|r| r.block_at(now).is_some()))
    }

    async fn failing_neighbours(
        &self,
        network: &str,
        address: Option<u64>,
        window: Nanos,
    ) -> Result<f64, StoreError> {
        let now = self.clock.now();
        let members = self.with_record(network, now, false, |r| {
            r.window = window;
            if let Some(address) = address {
                r.behaviour.add_member(address, window, now);
            }
            r.behaviour.members(now, window)
        });
        // A full table: the network is not tracked (its clients keep their own signals).
        Ok(members.unwrap_or(0.0))
    }

    async fn blocks(&self) -> Result<Vec<Block>, StoreError> {
        let now = self.clock.now();
        let mut all: Vec<Block> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .records
                    .values()
                    .filter_map(|r| r.block_at(now).cloned())
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|b| b.until);
        Ok(all)
    }
}
