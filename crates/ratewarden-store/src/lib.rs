//! Where ratewarden keeps limiter state.
//!
//! This crate owns the [`Store`] trait (one typed, async operation: decide a request
//! against all its limits), its backends, and what happens when a backend fails:
//! - [`MemoryStore`]: sharded, bounded by a key cap, expiring, lock-free per key;
//! - [`RedisStore`](redis::RedisStore): shared by every gateway on one Redis or Redis
//!   Cluster, one Lua script per request, server time, circuit breaker;
//! - [`Guarded`](failure::Guarded): a store with its failure policy (fail open, fail
//!   closed, or a local memory limiter meanwhile).
//!
//! It also keeps client behaviour, threat levels and blocks ([`threat`]).
//!
//! It does not own the algorithms (those are pure functions in `ratewarden-core`, which
//! every backend runs unchanged) nor how keys are built from requests (policy).

pub mod check;
pub mod error;
pub mod failure;
pub mod login;
pub mod memory;
pub mod redis;
mod store;
pub mod threat;

pub use check::{Check, CounterKey, Decisions};
pub use error::StoreError;
pub use failure::{Answer, FailurePolicy, Guarded};
pub use memory::{MemoryStats, MemoryStore};
pub use ratewarden_core::RuleName;
pub use store::Store;
