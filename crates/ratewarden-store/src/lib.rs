//! Where ratewarden keeps limiter state.
//!
//! This crate owns the [`Store`] trait (one typed, async operation: decide a request
//! against all its limits) and its backends. Today that is [`MemoryStore`]: sharded,
//! bounded by a key cap, expiring, lock-free per key. The Redis backend and the
//! failure-policy wrapper will live here too.
//!
//! It does not own the algorithms (those are pure functions in `ratewarden-core`, which
//! every backend runs unchanged) nor how keys are built from requests (policy).

pub mod check;
pub mod error;
pub mod memory;
mod store;

pub use check::{Check, CounterKey, Decisions};
pub use error::StoreError;
pub use memory::{MemoryStats, MemoryStore};
pub use ratewarden_core::RuleName;
pub use store::Store;
