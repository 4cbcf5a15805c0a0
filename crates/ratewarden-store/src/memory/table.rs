//! The sharded, bounded map from counter to slot.
//!
//! Counters are identified by a 128-bit keyed SipHash of (rule, client) rather than by
//! the strings themselves: 32 bytes an entry whatever the key's length, no allocation per
//! key, and with a random per-process key an attacker can neither predict nor force a
//! collision (two counters sharing a hash would share a bucket; at 2^-128 per pair).
//!
//! Each shard is a `RwLock` around a `hashbrown` table. Deciding on a known counter takes
//! the shard's read lock (shared with every other decision) and updates the slot by CAS;
//! only a first sight of a counter, eviction and reclaiming take the write lock, of one
//! shard. There is no global lock.
//!
//! Bound: each shard holds at most `max_keys / shards` entries. A full shard first drops
//! its expired entries; if that frees nothing it evicts a batch of the stalest (earliest
//! expiry: the counters closest to their reset), so a flood of new keys costs the oldest
//! state, never memory.

use super::slot::Slot;
use crate::check::CounterKey;
use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::RwLock;
use portable_atomic::AtomicU128;
use ratewarden_core::Timestamp;
use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter.
pub(crate) struct Entry {
    key: u128,
    pub(crate) slot: AtomicU128,
}

/// What eviction and reclaiming did, for the store's statistics.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) reclaimed: AtomicU64,
    pub(crate) evicted_live: AtomicU64,
}

pub(crate) struct Table {
    shards: Box<[CachePadded<RwLock<HashTable<Entry>>>]>,
    shard_mask: usize,
    per_shard: usize,
    hash_keys: (u64, u64),
    pub(crate) counters: Counters,
}

/// Entries evicted at once from a full shard, as a fraction of its capacity: large enough
/// that a flood pays for the scan rarely, small enough to keep most state.
const EVICTION_BATCH_DIVISOR: usize = 32;

impl Table {
    pub(crate) fn new(max_keys: usize, hash_keys: (u64, u64)) -> Table {
        let max_keys = max_keys.max(1);
        // Enough shards that two cores rarely meet on one lock, few enough that each
        // holds a useful number of keys.
        let wanted = (std::thread::available_parallelism().map_or(4, |n| n.get()) * 16)
            .next_power_of_two()
            .clamp(16, 256);
        let shards = wanted.min(prev_power_of_two(max_keys));
        Table {
            shards: (0..shards)
                .map(|_| CachePadded::new(RwLock::new(HashTable::new())))
                .collect(),
            shard_mask: shards - 1,
            per_shard: max_keys / shards,
            hash_keys,
            counters: Counters::default(),
        }
    }

    /// The most entries the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    pub(crate) fn hash(&self, key: CounterKey<'_>) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.hash_keys.0, self.hash_keys.1);
        h.write(key.rule.as_bytes());
        // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") differ.
        h.write_u8(0xff);
        h.write(key.client.as_bytes());
        h.finish128().as_u128()
    }

    fn shard(&self, key: u128) -> &RwLock<HashTable<Entry>> {
        &self.shards[((key >> 64) as usize) & self.shard_mask]
    }

    /// Runs `f` on the counter's slot if it exists, under the shard's read lock.
    #[inline]
    pub(crate) fn with_existing<R>(
        &self,
        key: u128,
        f: impl FnOnce(&AtomicU128) -> R,
    ) -> Option<R> {
        let map = self.shard(key).read();
        map.find(key as u64, |e| e.key == key).map(|e| f(&e.slot))
    }

    /// Runs `f` on the counter's slot under the shard's write lock. `f` receives the slot
    /// if it exists; if it does not, `f` returns the slot to create (or `None` to create
    /// nothing), making room first if the shard is full.
    pub(crate) fn with_exclusive<R>(
        &self,
        key: u128,
        now: Timestamp,
        f: impl FnOnce(Option<&AtomicU128>) -> (R, Option<Slot>),
    ) -> R {
        let mut map = self.shard(key).write();
        if let Some(entry) = map.find(key as u64, |e| e.key == key) {
            return f(Some(&entry.slot)).0;
        }
        let (result, created) = f(None);
        if let Some(slot) = created {
            if map.len() >= self.per_shard {
                self.make_room(&mut map, now);
            }
            map.insert_unique(
                key as u64,
                Entry {
                    key,
                    slot: AtomicU128::new(slot.0),
                },
                |e| e.key as u64,
            );
        }
        result
    }

    fn make_room(&self, map: &mut HashTable<Entry>, now: Timestamp) {
        let before = map.len();
        map.retain(|e| !Slot(e.slot.load(Ordering::Relaxed)).expired(now));
        let reclaimed = before - map.len();
        self.counters
            .reclaimed
            .fetch_add(reclaimed as u64, Ordering::Relaxed);
        if map.len() < self.per_shard {
            return;
        }
        let batch = (self.per_shard / EVICTION_BATCH_DIVISOR).max(1);
        let mut expiries: Vec<u32> = map
            .iter()
            .map(|e| Slot(e.slot.load(Ordering::Relaxed)).expiry_secs())
            .collect();
        let (_, &mut threshold, _) = expiries.select_nth_unstable(batch - 1);
        let below = expiries.iter().filter(|&&x| x < threshold).count();
        // Everything below the threshold goes, then entries at it until the batch is full:
        // many counters share an expiry (one window's end), and all of them must not go.
        let mut at_threshold_left = batch - below;
        let full = map.len();
        map.retain(|e| {
            let expiry = Slot(e.slot.load(Ordering::Relaxed)).expiry_secs();
            if expiry < threshold {
                false
            } else if expiry == threshold && at_threshold_left > 0 {
                at_threshold_left -= 1;
                false
            } else {
                true
            }
        });
        self.counters
            .evicted_live
            .fetch_add((full - map.len()) as u64, Ordering::Relaxed);
    }

    /// Drops the expired entries of shard `index`; returns how many.
    pub(crate) fn purge_shard(&self, index: usize, now: Timestamp) -> usize {
        let Some(shard) = self.shards.get(index) else {
            return 0;
        };
        let mut map = shard.write();
        let before = map.len();
        map.retain(|e| !Slot(e.slot.load(Ordering::Relaxed)).expired(now));
        let purged = before - map.len();
        // Give memory back after a flood, but keep room for normal traffic.
        if map.capacity() > 4 * map.len().max(64) {
            map.shrink_to_fit(|e| e.key as u64);
        }
        drop(map);
        self.counters
            .reclaimed
            .fetch_add(purged as u64, Ordering::Relaxed);
        purged
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

fn prev_power_of_two(n: usize) -> usize {
    if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    }
}
