//! The [`Store`] trait: the one operation every backend implements.

use crate::check::{Check, Decisions};
use crate::error::StoreError;
use std::future::Future;

/// Keeps limiter state and decides requests against it.
///
/// Contract for implementations:
/// - `decide` takes all the checks of one request and is all-or-nothing: if every limit
///   admits, each is charged its cost; if any denies, none is charged (a client over its
///   own limit must not drain a shared quota).
/// - Concurrent calls on the same counter are exact: N admissions of cost 1 against a
///   limit of L units never admit more than L.
/// - The backend supplies the time (its clock, or the Redis server's), so that several
///   gateways sharing a backend agree.
/// - A denial is an `Ok` decision; `Err` means the backend could not decide, and says
///   whether that is transient.
pub trait Store: Send + Sync + 'static {
    /// Decides one request against its checks.
    fn decide(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Decisions, StoreError>> + Send;
}
