//! The sharded, bounded map from counter to state.
//!
//! Counters are identified by a 64-bit SipHash-1-3 of the client, keyed at random per
//! process and per rule, rather than by the strings themselves: 24 bytes an entry whatever
//! the key's length, and no allocation per key. Two counters with one hash would share a bucket
//! (both stricter, neither looser); by chance that happens with probability about
//! n² / 2^65 (3 in 100 million for a full store of a million keys), and with the key
//! secret an attacker can neither predict nor aim a collision.
//!
//! Each shard is a `RwLock` around a `hashbrown` table. Deciding on a known counter takes
//! the shard's read lock (shared with every other decision) and updates the state by CAS;
//! only a first sight of a counter, eviction and reclaiming take the write lock, of one
//! shard. There is no global lock.
//!
//! Bound: each shard holds at most `max_keys / shards` entries. Its table is never more
//! than the smallest power-of-two size in which that many entries fill at most half the
//! slots: at that size `hashbrown` clears tombstones by rehashing in place rather than
//! growing, so churn cannot grow it further. That is at most 4.6 slots of 25 bytes per
//! allowed entry, and about half that until deletions have churned the table. A full shard first drops
//! its expired entries; if that frees nothing it evicts a batch of the stalest (earliest
//! expiry: the counters closest to their reset), so a flood of new keys costs the oldest
//! state, never memory.

use crate::check::CounterKey;
use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::RwLock;
use ratewarden_core::algorithm::StateBits;
use ratewarden_core::time::NANOS_PER_SEC;
use ratewarden_core::Timestamp;
use siphasher::sip::SipHasher13;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One counter: 24 bytes.
pub(crate) struct Entry {
    key: u64,
    /// The algorithm's state.
    pub(crate) state: AtomicU64,
    /// Whole seconds since the Unix epoch from which the state means nothing (rounded up,
    /// so never early; 32 bits last until 2106). Only ever raised, and raised *before*
    /// the state it covers is stored: whoever reads a state (with acquire) sees an expiry
    /// at least as late as that state's.
    pub(crate) expiry: AtomicU32,
}

impl Entry {
    fn new(key: u64, state: StateBits, expires_at: Timestamp) -> Entry {
        Entry {
            key,
            state: AtomicU64::new(state.0),
            expiry: AtomicU32::new(expiry_secs(expires_at)),
        }
    }

    fn expired(&self, now: Timestamp) -> bool {
        is_expired(self.expiry.load(Ordering::Relaxed), now)
    }
}

/// An expiry in the entry's representation.
pub(crate) fn expiry_secs(at: Timestamp) -> u32 {
    u32::try_from(at.as_secs_ceil()).unwrap_or(u32::MAX)
}

/// Whether a state with this expiry means nothing at `now`.
#[inline]
pub(crate) fn is_expired(expiry: u32, now: Timestamp) -> bool {
    u64::from(expiry) * NANOS_PER_SEC <= now.as_nanos()
}

/// What eviction and reclaiming did, for the store's statistics.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) reclaimed: AtomicU64,
    pub(crate) evicted_live: AtomicU64,
}

pub(crate) struct Table {
    shards: Box<[CachePadded<RwLock<Shard>>]>,
    shard_mask: usize,
    per_shard: usize,
    hash_keys: (u64, u64),
    pub(crate) counters: Counters,
}

/// Entries evicted at once from a full shard, as a fraction of its capacity: large enough
/// that a flood pays for the scan rarely, small enough to keep most state.
const EVICTION_BATCH_DIVISOR: usize = 16;

/// One shard: its part of the map, and a buffer reused by eviction.
#[derive(Default)]
pub(crate) struct Shard {
    map: HashTable<Entry>,
    scratch: Vec<u32>,
}

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
                .map(|_| CachePadded::new(RwLock::new(Shard::default())))
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

    /// The counter's identity: SipHash-1-3 of the client under the store's secret key
    /// tweaked by the rule's fingerprint, so each rule hashes with its own key and the
    /// request path hashes one short string once.
    #[inline]
    pub(crate) fn hash(&self, key: CounterKey<'_>) -> u64 {
        SipHasher13::new_with_keys(self.hash_keys.0 ^ key.rule.fingerprint(), self.hash_keys.1)
            .hash(key.client.as_bytes())
    }

    fn shard(&self, key: u64) -> &RwLock<Shard> {
        // Bits 32 and up: hashbrown uses the low bits for the bucket and the top seven
        // for its tags, so the shard index takes bits neither relies on.
        &self.shards[((key >> 32) as usize) & self.shard_mask]
    }

    /// Runs `f` on the counter's entry if it exists, under the shard's read lock.
    #[inline]
    pub(crate) fn with_existing<R>(&self, key: u64, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let shard = self.shard(key).read();
        shard.map.find(key, |e| e.key == key).map(f)
    }

    /// Runs `f` on the counter's entry under the shard's write lock. `f` receives the
    /// entry if it exists; if it does not, `f` returns the state to create and its expiry
    /// (or `None` to create nothing), and room is made first if the shard is full.
    pub(crate) fn with_exclusive<R>(
        &self,
        key: u64,
        now: Timestamp,
        f: impl FnOnce(Option<&Entry>) -> (R, Option<(StateBits, Timestamp)>),
    ) -> R {
        let mut shard = self.shard(key).write();
        if let Some(entry) = shard.map.find(key, |e| e.key == key) {
            return f(Some(entry)).0;
        }
        let (result, created) = f(None);
        if let Some((state, expires_at)) = created {
            if shard.map.len() >= self.per_shard {
                let keep = self.per_shard - (self.per_shard / EVICTION_BATCH_DIVISOR).max(1);
                self.shed(&mut shard, now, keep);
            }
            shard
                .map
                .insert_unique(key, Entry::new(key, state, expires_at), |e| e.key);
        }
        result
    }

    /// Makes room in a shard: drops every expired entry, then, if more than `keep`
    /// remain, the stalest live ones down to `keep`. Two passes over the shard, amortised
    /// over the entries freed.
    fn shed(&self, shard: &mut Shard, now: Timestamp, keep: usize) {
        let now_secs = now.as_nanos() / NANOS_PER_SEC;
        let Shard { map, scratch, .. } = shard;
        scratch.clear();
        scratch.extend(map.iter().map(|e| e.expiry.load(Ordering::Relaxed)));
        let expired = scratch
            .iter()
            .filter(|&&x| u64::from(x) <= now_secs)
            .count();
        let before = map.len();
        let excess = before.saturating_sub(keep);
        if expired >= excess {
            map.retain(|e| u64::from(e.expiry.load(Ordering::Relaxed)) > now_secs);
        } else {
            // The expired ones are the smallest, so they are all among those dropped.
            let (_, &mut threshold, _) = scratch.select_nth_unstable(excess - 1);
            let below = scratch.iter().filter(|&&x| x < threshold).count();
            // Everything below the threshold goes, then entries at it until enough are
            // gone: many counters share an expiry (one window's end), and all of them
            // must not go.
            let mut at_threshold_left = excess - below;
            map.retain(|e| {
                let expiry = e.expiry.load(Ordering::Relaxed);
                if expiry < threshold {
                    false
                } else if expiry == threshold && at_threshold_left > 0 {
                    at_threshold_left -= 1;
                    false
                } else {
                    true
                }
            });
        }
        let removed = before - map.len();
        self.counters
            .reclaimed
            .fetch_add(expired as u64, Ordering::Relaxed);
        self.counters
            .evicted_live
            .fetch_add(removed.saturating_sub(expired) as u64, Ordering::Relaxed);
    }

    /// Drops the expired entries of shard `index`; returns how many.
    pub(crate) fn purge_shard(&self, index: usize, now: Timestamp) -> usize {
        let Some(shard) = self.shards.get(index) else {
            return 0;
        };
        let mut shard = shard.write();
        let map = &mut shard.map;
        let before = map.len();
        map.retain(|e| !e.expired(now));
        let purged = before - map.len();
        // Give memory back after a flood, but keep room for normal traffic.
        if map.capacity() > 4 * map.len().max(64) {
            map.shrink_to_fit(|e| e.key);
            shard.scratch = Vec::new();
        }
        drop(shard);
        self.counters
            .reclaimed
            .fetch_add(purged as u64, Ordering::Relaxed);
        purged
    }

    /// Bytes allocated for the tables and their eviction buffers.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = s.read();
                shard.map.allocation_size() + shard.scratch.capacity() * std::mem::size_of::<u32>()
            })
            .sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map.len()).sum()
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
