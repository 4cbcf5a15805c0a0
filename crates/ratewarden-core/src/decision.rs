//! What an algorithm answers: a [`Decision`] for the caller and an [`Outcome`] for the store.

use crate::time::{Nanos, Timestamp};

/// The answer to "may this request pass?", with everything the rate-limit headers need.
///
/// A denial is a value, not an error: it carries how long to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may pass (and was charged).
    pub allowed: bool,
    /// The most units that can pass at once: the GCRA burst, or the window's limit.
    pub limit: u32,
    /// Units that could still pass right now, after this request (never negative).
    pub remaining: u32,
    /// Time until the limit is fully restored: the bucket full again, or the window over.
    pub reset_after: Nanos,
    /// For a denial, time until the same request would pass; zero when allowed.
    /// [`Nanos::MAX`] when it never can (its cost is above the limit).
    pub retry_after: Nanos,
}

/// A decision and what it does to the stored state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome<S> {
    /// The answer.
    pub decision: Decision,
    /// The state to store, or `None` when the state must stay as it was (every denial).
    pub next: Option<S>,
    /// From this time on, the state (the new one, or the unchanged one) is equivalent to
    /// no state at all, so a store may forget it: the expiry a store sets on the key.
    pub expires_at: Timestamp,
}
