//! Login protection's pure parts: the compiled `[[login]]` route, where a request names
//! its account ([`account`]), what an upstream answer means, and how long to hold a
//! request after repeated failures.
//!
//! Reading the body, counting failures and locking accounts out are the gateway's and
//! the store's business; this module only answers questions about bytes and numbers.

mod account;

pub use account::{
    account_in_body, account_in_header, normalize_account, AccountSource, Named, MAX_ACCOUNT_CHARS,
};

use crate::policy::{RequestFacts, RouteMatch};
use crate::time::Nanos;

/// One protected login endpoint (`[[login]]`).
#[derive(Clone, Debug)]
pub struct LoginRoute {
    /// Its name: in metrics, logs, alerts and store keys.
    pub name: String,
    /// Which requests are login attempts.
    pub route: RouteMatch,
    /// Where an attempt names its account.
    pub account: AccountSource,
    /// The most body bytes read to find the account; a larger body goes on untouched.
    pub max_body: usize,
    /// Refuse attempts whose account cannot be found (no field, a body that is not
    /// what the source expects, larger than `max_body`) instead of passing them on
    /// counted against their address only: otherwise padding a body past `max_body`,
    /// or writing JSON that the application's parser accepts and ours does not,
    /// escapes the per-account limits.
    pub refuse_unidentified: bool,
    /// Upstream statuses that mean a failed attempt (2xx means success).
    pub failure_status: Vec<u16>,
    /// Failures per account, and the lockout they lead to.
    pub per_account: AccountLimit,
    /// Holding (or refusing) attempts on an account that keeps failing.
    pub delay: Option<ProgressiveDelay>,
    /// Whether a delay holds the request or refuses it with `Retry-After`.
    pub delay_mode: DelayMode,
    /// From this many failures on, the upstream is told to challenge the client.
    pub challenge_after: Option<u32>,
    /// Whom a lockout shuts out.
    pub lockout_scope: LockoutScope,
    /// The status of a locked-out answer: 429 (the default) or 423.
    pub lockout_status: u16,
    /// Distinct accounts from one address, or addresses on one account, within the
    /// account window that count as credential stuffing or spraying.
    pub stuffing: StuffingThresholds,
}

impl LoginRoute {
    /// Whether `request` is an attempt on this endpoint.
    pub fn matches(&self, request: &RequestFacts<'_>) -> bool {
        self.route.matches(request)
    }

    /// What the upstream's answer `status` says about the attempt.
    pub fn outcome(&self, status: u16) -> Outcome {
        if self.failure_status.contains(&status) {
            Outcome::Failure
        } else if (200..300).contains(&status) {
            Outcome::Success
        } else {
            // A 400, a 5xx, the upstream's own 429: it says nothing of the password.
            Outcome::Inconclusive
        }
    }
}

/// What an attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream refused the credentials.
    Failure,
    /// The upstream accepted them.
    Success,
    /// No answer about the credentials (an error, a malformed request, no answer at all).
    Inconclusive,
}

/// Failures per account within a window, and the lockout they lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountLimit {
    /// Failures that lock the account.
    pub failures: u32,
    /// Failures are forgotten this long after the last one.
    pub window: Nanos,
    /// How long a lockout lasts.
    pub lockout: Nanos,
}

/// Whom a lockout shuts out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockoutScope {
    /// Every attempt on the account, from anywhere: the strongest protection, and an
    /// attacker can lock a victim out on purpose.
    Account,
    /// Attempts from addresses that never logged in to the account successfully: the
    /// real user, from an address they used before, still gets in.
    AccountAndIp,
}

/// Whether a progressive delay holds the request or refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayMode {
    /// Hold the request for the delay, then forward it.
    Hold,
    /// Answer 429 with the delay as `Retry-After`.
    Reject,
}

/// When distinct counts on a login route mean an attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StuffingThresholds {
    /// Distinct accounts one address failed on, or was refused for (credential
    /// stuffing, spraying); successful logins do not count.
    pub accounts_per_ip: u32,
    /// Distinct addresses trying one account (a distributed guess on it).
    pub ips_per_account: u32,
}

/// Holding requests after repeated failures: from the `after`-th failure on, a request
/// waits `base × 2^(failures - after)`, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressiveDelay {
    /// Failures before any delay.
    pub after: u32,
    /// The first delay.
    pub base: Nanos,
    /// The longest delay.
    pub max: Nanos,
}

impl ProgressiveDelay {
    /// The delay for a request on an account that has failed `failures` times.
    pub fn for_failures(&self, failures: u32) -> Nanos {
        // A first attempt is never held, whatever `after` says.
        let after = self.after.max(1);
        if failures < after {
            return Nanos::ZERO;
        }
        let doublings = (failures - after).min(63);
        let delay = self.base.as_nanos().saturating_mul(1u64 << doublings);
        Nanos(delay.min(self.max.as_nanos()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_threshold_up_to_the_cap() {
        let d = ProgressiveDelay {
            after: 3,
            base: Nanos::from_secs(1),
            max: Nanos::from_secs(30),
        };
        let secs: Vec<u64> = (0..10)
            .map(|n| d.for_failures(n).as_nanos() / 1_000_000_000)
            .collect();
        assert_eq!(secs, [0, 0, 0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(d.for_failures(u32::MAX), Nanos::from_secs(30));
    }
}
