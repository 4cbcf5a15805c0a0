//! What happens to a request when the store cannot decide it: the failure policy.
//!
//! - `allow` (fail open): the request passes unlimited; the API stays up while Redis is
//!   down, at the price of no limits meanwhile.
//! - `deny` (fail closed): the request is refused with a service error (the gateway
//!   answers 503 with `Retry-After`, never a 429: the client did nothing wrong).
//! - `local`: each gateway limits on its own, in memory, with the same rules, until the
//!   store answers again. Limits hold per instance (N instances admit up to N times
//!   the limit), which is usually the best available.
//!
//! Whatever the policy, the failure is reported in the [`Answer`], so the caller can
//! count it; the store's own timeout and circuit breaker bound how long it takes.

use crate::check::{Check, Decisions};
use crate::error::StoreError;
use crate::memory::MemoryStore;
use crate::store::Store;
use ratewarden_core::clock::Clock;
use std::time::Duration;

/// The configured reaction to a store failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Let the request through.
    Allow,
    /// Refuse the request with a service error.
    Deny,
    /// Decide with a per-instance memory limiter.
    Local,
}

impl FailurePolicy {
    /// The name used in configuration and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            FailurePolicy::Allow => "allow",
            FailurePolicy::Deny => "deny",
            FailurePolicy::Local => "local",
        }
    }
}

/// How a request was decided.
#[derive(Debug)]
pub enum Answer {
    /// The store decided.
    Decided(Decisions),
    /// The store failed; the local limiter decided.
    Local {
        /// Its decisions.
        decisions: Decisions,
        /// Why the store did not.
        error: StoreError,
    },
    /// The store failed; the request passes without limits.
    FailedOpen(StoreError),
    /// The store failed; the request is refused until about `retry_after`.
    FailedClosed {
        /// Why the store did not decide.
        error: StoreError,
        /// When to try again: the circuit breaker's pause, at least one second.
        retry_after: Duration,
    },
}

/// A store with its failure policy.
pub struct Guarded<S, C: Clock> {
    store: S,
    policy: FailurePolicy,
    local: MemoryStore<C>,
}

impl<S: Store, C: Clock> Guarded<S, C> {
    /// `store`, falling back as `policy` says; `local` is the limiter used by
    /// [`FailurePolicy::Local`] (keep it small: it only bridges an outage).
    pub fn new(store: S, policy: FailurePolicy, local: MemoryStore<C>) -> Guarded<S, C> {
        Guarded {
            store,
            policy,
            local,
        }
    }

    /// The store behind the policy.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The policy.
    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }

    /// Decides `checks`, applying the failure policy if the store cannot.
    pub async fn decide(&self, checks: &[Check<'_>]) -> Answer {
        let error = match self.store.decide(checks).await {
            Ok(decisions) => return Answer::Decided(decisions),
            Err(e) => e,
        };
        match self.policy {
            FailurePolicy::Allow => Answer::FailedOpen(error),
            FailurePolicy::Deny => {
                let pause = match error {
                    StoreError::CircuitOpen(pause) => pause,
                    _ => Duration::ZERO,
                };
                Answer::FailedClosed {
                    error,
                    retry_after: pause.max(Duration::from_secs(1)),
                }
            }
            FailurePolicy::Local => Answer::Local {
                decisions: self.local.decide_now(checks),
                error,
            },
        }
    }
}
