//! What a gateway remembers, for a second or so, of clients' standing (level, block) as
//! read from a shared store (Redis): without it, every request would cost one more
//! round trip before its rules. Observations confirm or drop what is remembered, so an
//! active client's entry stays fresh; a block placed by another gateway is enforced here
//! within the cache's lifetime.

use parking_lot::Mutex;
use ratewarden_core::threat::Level;
use ratewarden_core::{Nanos, Timestamp};
use ratewarden_store::threat::{ClientStatus, Observed};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

const SHARDS: usize = 16;

struct Entry {
    status: ClientStatus,
    /// When it was read, by this gateway's clock.
    read_at: Timestamp,
}

/// Standing read from the store, kept for `ttl`.
pub struct StatusCache {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    hasher: RandomState,
    ttl: Nanos,
    per_shard: usize,
}

impl StatusCache {
    /// Keeps at most about `capacity` clients for `ttl` each.
    pub fn new(ttl: Nanos, capacity: usize) -> StatusCache {
        StatusCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            ttl,
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, client: &str) -> &Mutex<HashMap<String, Entry>> {
        &self.shards[(self.hasher.hash_one(client) % SHARDS as u64) as usize]
    }

    /// The client's standing if read less than `ttl` ago, its store time moved on by
    /// the time since (so a block's remaining time stays right whatever the clocks).
    pub fn get(&self, client: &str, local_now: Timestamp) -> Option<ClientStatus> {
        let shard = self.shard(client).lock();
        let entry = shard.get(client)?;
        let age = local_now.saturating_since(entry.read_at);
        if age >= self.ttl {
            return None;
        }
        let mut status = entry.status.clone();
        status.now = status.now.saturating_add(age);
        Some(status)
    }

    /// Remembers a standing just read.
    pub fn put(&self, client: &str, status: ClientStatus, local_now: Timestamp) {
        let mut shard = self.shard(client).lock();
        if shard.len() >= self.per_shard && !shard.contains_key(client) {
            // Full: start over rather than track ages; the price is one read each.
            shard.clear();
        }
        shard.insert(
            client.to_owned(),
            Entry {
                status,
                read_at: local_now,
            },
        );
    }

    /// An observation's view of the client: refreshes the entry if it agrees (same
    /// level, same block), drops it if not; a normal, unblocked client is remembered.
    pub fn confirm(&self, client: &str, observed: &Observed, local_now: Timestamp) {
        let mut shard = self.shard(client).lock();
        let room = shard.len() < self.per_shard;
        match shard.get_mut(client) {
            Some(entry)
                if entry.status.level == observed.recorded
                    && entry.status.block.as_ref().map(|b| b.until) == observed.blocked_until =>
            {
                entry.status.now = observed.now;
                entry.read_at = local_now;
            }
            Some(_) => {
                shard.remove(client);
            }
            None if observed.recorded == Level::Normal
                && observed.blocked_until.is_none()
                && room =>
            {
                shard.insert(
                    client.to_owned(),
                    Entry {
                        status: ClientStatus {
                            now: observed.now,
                            ..ClientStatus::default()
                        },
                        read_at: local_now,
                    },
                );
            }
            None => {}
        }
    }

    /// Forgets the client (its standing changed here: a block, a level, a lift).
    pub fn forget(&self, client: &str) {
        self.shard(client).lock().remove(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratewarden_store::threat::Block;

    fn at(secs: u64) -> Timestamp {
        Timestamp(secs * 1_000_000_000)
    }

    #[test]
    fn entries_live_for_the_ttl_and_their_time_moves_on() {
        let cache = StatusCache::new(Nanos::from_secs(1), 100);
        let block = Block {
            client: "c".into(),
            until: at(110),
            offence: 1,
            reasons: vec![],
        };
        let status = ClientStatus {
            level: Level::High,
            reasons: vec![],
            block: Some(block),
            now: at(100),
        };
        cache.put("c", status, at(5));
        let later = Timestamp(at(5).0 + 500_000_000);
        let seen = cache.get("c", later).expect("fresh");
        assert_eq!(seen.now, Timestamp(at(100).0 + 500_000_000));
        assert!(cache.get("c", at(6)).is_none(), "expired");
    }

    #[test]
    fn observations_confirm_or_drop() {
        let cache = StatusCache::new(Nanos::from_secs(1), 100);
        let observed = |recorded, blocked_until| Observed {
            signals: Default::default(),
            recorded,
            blocked_until,
            now: at(100),
        };
        cache.confirm("a", &observed(Level::Normal, None), at(1));
        assert_eq!(cache.get("a", at(1)).map(|s| s.level), Some(Level::Normal));
        // Another gateway blocked it: what this one remembered no longer holds.
        cache.confirm("a", &observed(Level::Normal, Some(at(200))), at(1));
        assert!(cache.get("a", at(1)).is_none());
        // A raised client is not guessed from an observation (its reasons are unknown).
        cache.confirm("b", &observed(Level::High, None), at(1));
        assert!(cache.get("b", at(1)).is_none());
    }
}
