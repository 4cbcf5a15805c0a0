//! Where client behaviour, threat levels and blocks are kept: the [`ThreatStore`] trait,
//! in this process ([`MemoryThreats`]) or in Redis (shared by every gateway, surviving
//! their restarts; `RedisStore` implements the trait).
//!
//! The store folds observations into window buckets and answers with the client's
//! signals; scoring them is `ratewarden_core::threat`'s job and deciding what a level
//! does is the gateway's. Blocks escalate here, atomically, so two gateways blocking the
//! same client at once count one offence, not two.

mod memory;

pub use memory::MemoryThreats;

use crate::error::StoreError;
use ratewarden_core::threat::{Batch, Level, Signals};
use ratewarden_core::{Nanos, Timestamp};
use std::future::Future;

/// How long a recorded level holds without a new observation refreshing it.
pub const LEVEL_TTL_WINDOWS: u64 = 1;

/// A client's current standing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientStatus {
    /// Its recorded level (normal when nothing is recorded).
    pub level: Level,
    /// Why, as recorded with the level.
    pub reasons: Vec<String>,
    /// Its block, if it is blocked now.
    pub block: Option<Block>,
    /// The store's time when this was read.
    pub now: Timestamp,
}

/// A block in force.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// The client, as the gateway identifies it (its address or network).
    pub client: String,
    /// When it ends.
    pub until: Timestamp,
    /// How many blocks this client has had, this one included, since its past was last
    /// forgotten.
    pub offence: u32,
    /// Why it was blocked.
    pub reasons: Vec<String>,
}

impl Block {
    /// Time left at `now`.
    pub fn remaining(&self, now: Timestamp) -> Nanos {
        self.until.saturating_since(now)
    }
}

/// The result of recording an observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The client's signals, this observation included.
    pub signals: Signals,
    /// The level recorded before it (to tell a change).
    pub recorded: Level,
    /// When the client's block ends, if it is blocked (another gateway may have just
    /// blocked it): lets a gateway tell whether what it remembers of the client still
    /// holds.
    pub blocked_until: Option<Timestamp>,
    /// The store's time.
    pub now: Timestamp,
}

/// What a new block should last: the lengths of a client's 1st, 2nd, ... block (see
/// `Escalation::block_length`); offences beyond the list take its last entry.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockPlan {
    /// Lengths by offence, non-empty.
    pub ladder: Vec<Nanos>,
    /// How long a client's offences are remembered after its block ends.
    pub forget_after: Nanos,
    /// Why.
    pub reasons: Vec<String>,
}

impl BlockPlan {
    /// The length of the `offence`-th block (1-based).
    pub fn length(&self, offence: u32) -> Nanos {
        let i = (offence.max(1) as usize - 1).min(self.ladder.len().saturating_sub(1));
        self.ladder.get(i).copied().unwrap_or(Nanos::ZERO)
    }
}

/// Keeps behaviour, levels and blocks.
///
/// Contract: `observe` is exact under concurrency (every observation counted once);
/// `block` of a client already blocked returns the block in force without counting a new
/// offence; times come from the store (its clock, or the Redis server's), so several
/// gateways agree.
pub trait ThreatStore: Send + Sync + 'static {
    /// The client's level and block now.
    fn status(&self, client: &str)
        -> impl Future<Output = Result<ClientStatus, StoreError>> + Send;

    /// Records a batch of the client's requests over a window of `window` and returns
    /// its signals. Windows turn by the store's time; gaps between requests are timed
    /// by their arrival times (the gateways' clocks).
    fn observe(
        &self,
        client: &str,
        batch: &Batch,
        window: Nanos,
    ) -> impl Future<Output = Result<Observed, StoreError>> + Send;

    /// Records the client's level and reasons, held for `window` unless observations
    /// refresh it (a normal level clears the record), if its recorded level is still
    /// `expected`; whether it was recorded. Of two gateways changing a level at once,
    /// only one succeeds, and only it should announce the change.
    fn set_level(
        &self,
        client: &str,
        expected: Level,
        level: Level,
        reasons: &[String],
        window: Nanos,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Blocks the client per `plan` unless it is blocked already; returns the block in
    /// force and whether this call made it.
    fn block(
        &self,
        client: &str,
        plan: &BlockPlan,
    ) -> impl Future<Output = Result<(Block, bool), StoreError>> + Send;

    /// Lifts the client's block, forgets its offences, its level and its behaviour over
    /// `window` (a clean slate: otherwise the same signals would raise it again at
    /// once); whether there was a block.
    fn lift(
        &self,
        client: &str,
        window: Nanos,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Blocks in force, soonest ending first.
    fn blocks(&self) -> impl Future<Output = Result<Vec<Block>, StoreError>> + Send;

    /// How many distinct addresses of `network` failed authentication in the current
    /// and the previous window (a union: an address failing in both counts once),
    /// after recording `address` (the hash of a client of `network`) as failing now,
    /// if given. Recording an address again changes nothing.
    ///
    /// The network's record is kept apart from its clients' (its own key), holds no
    /// level and no block, and counts its members with the same sketch (a HyperLogLog)
    /// as a client's endpoints.
    fn failing_neighbours(
        &self,
        network: &str,
        address: Option<u64>,
        window: Nanos,
    ) -> impl Future<Output = Result<f64, StoreError>> + Send;
}
