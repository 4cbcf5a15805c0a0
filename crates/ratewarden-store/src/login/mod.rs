//! Where login attempts are counted: the [`LoginStore`] trait, in this process
//! ([`MemoryLogins`]) or in Redis (shared by every gateway; `RedisStore` implements it).
//!
//! Per account: failures within a window, the lockout they lead to, attempts in flight,
//! the addresses that logged in successfully, and a sketch of the distinct addresses
//! that tried it. Per address: a sketch of the distinct accounts it tried. Accounts and
//! addresses arrive pseudonymised (the gateway's keyed HMAC): the store never holds a
//! user name or an address in clear.
//!
//! Attempts are counted when they start, not only when they fail: an attacker firing a
//! hundred guesses at once would otherwise have them all forwarded before the first
//! failure came back. An attempt in flight counts against the account's limit until
//! [`LoginStore::finish`] records its outcome (or its in-flight time runs out, for a
//! gateway that died mid-attempt).

mod memory;

pub use memory::MemoryLogins;

use crate::error::StoreError;
use ratewarden_core::login::{LockoutScope, Outcome};
use ratewarden_core::Nanos;
use std::future::Future;

/// Addresses remembered per account as having logged in successfully (the newest).
pub const KNOWN_ADDRESSES: usize = 16;

/// The account-side settings of a login route, as the store applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountRules {
    /// Failures that lock the account.
    pub failures: u32,
    /// Failures are forgotten this long after the last one; distinct counts are
    /// sliding-window estimates over this length.
    pub window: Nanos,
    /// How long a lockout lasts.
    pub lockout: Nanos,
    /// Whom a lockout shuts out.
    pub scope: LockoutScope,
    /// How long an unfinished attempt counts as in flight.
    pub in_flight_for: Nanos,
    /// How long an address that logged in successfully stays known.
    pub known_for: Nanos,
}

/// The store's answer to an attempt starting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Admission {
    /// Go ahead: the attempt counts as in flight until finished.
    Admitted(Attempt),
    /// The account is locked out for this long.
    Locked(Nanos),
    /// Attempts already in flight could take the account to its limit: try again
    /// shortly.
    Busy,
}

/// What is known about an admitted attempt's account.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attempt {
    /// Failures recorded within the window (attempts in flight not included).
    pub failures: u32,
    /// Time since the latest of those failures (`None`: no failure recorded).
    pub since_failure: Option<Nanos>,
    /// Whether the address logged in to this account successfully before.
    pub known_address: bool,
    /// Distinct addresses that tried the account (this one included), estimated.
    pub addresses: u64,
}

/// What recording an outcome did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Failures recorded within the window now (0 after a success or a lockout).
    pub failures: u32,
    /// The lockout this outcome started, if it did.
    pub locked_for: Option<Nanos>,
}

/// Keeps login attempt state.
///
/// Contract: exact under concurrency. Of `failures` attempts admitted at once on an
/// account with no failures, no further one is admitted until some finish; the
/// `failures`-th failure locks the account (and clears the count, so a lockout that
/// ends gives a fresh allowance), a success clears failures and lockout and remembers
/// the address. Times are the store's.
pub trait LoginStore: Send + Sync + 'static {
    /// Starts an attempt on `account` from `address`.
    fn begin(
        &self,
        account: &str,
        address: &str,
        rules: &AccountRules,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send;

    /// Records how an admitted attempt ended.
    fn finish(
        &self,
        account: &str,
        address: &str,
        outcome: Outcome,
        rules: &AccountRules,
    ) -> impl Future<Output = Result<Finished, StoreError>> + Send;

    /// Notes that `address` tried `account` on login route `route`; returns the
    /// distinct accounts it tried there within about `window` (a sliding estimate).
    fn tried(
        &self,
        route: &str,
        address: &str,
        account: &str,
        window: Nanos,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
