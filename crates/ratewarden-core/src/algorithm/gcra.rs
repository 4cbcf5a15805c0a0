//! GCRA, the Generic Cell Rate Algorithm: a token bucket kept as one timestamp.
//!
//! Parameters: the emission interval `T` (period / count: the time one unit takes to
//! refill) and the capacity `burst`; the tolerance `τ = burst × T` is how far ahead of
//! real time the bucket may run. State: the theoretical arrival time `tat`, the time at
//! which the bucket will be full again.
//!
//! A request of cost `n` at `now` passes when `max(tat, now) + n×T − τ ≤ now`, and then
//! `tat` becomes `max(tat, now) + n×T`. Equivalently: a bucket of `burst` tokens that
//! refills one token every `T`, holding `(now + τ − tat) / T` tokens.
//!
//! Bound: for any two admitted requests at `t1 ≤ t2`, the units admitted in `[t1, t2]` are
//! at most `burst + (t2 − t1) / T`, since every admission moves `tat` forward by its cost
//! and an admission at `t2` needs `tat − τ ≤ t2`.
//!
//! Time going backwards: `tat` never moves back, so an earlier `now` only finds fewer
//! tokens; the limiter can become stricter for the length of the step, never looser.

use super::{LimitError, StateBits};
use crate::decision::{Decision, Outcome};
use crate::rate::Rate;
use crate::time::{Nanos, Timestamp};

/// GCRA parameters; build with [`Gcra::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    capacity: u32,
    tolerance: u64,
}

/// GCRA state: the theoretical arrival time. Zero is a full bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcraState {
    /// When the bucket will be full again, in nanoseconds since the Unix epoch.
    pub tat: u64,
}

impl From<StateBits> for GcraState {
    #[inline]
    fn from(bits: StateBits) -> GcraState {
        GcraState { tat: bits.0 }
    }
}

impl From<GcraState> for StateBits {
    #[inline]
    fn from(state: GcraState) -> StateBits {
        StateBits(state.tat)
    }
}

/// Tolerances are kept below this so `now + τ` cannot overflow for any date before the
/// year 2400; arithmetic saturates beyond it anyway.
const MAX_TOLERANCE: u64 = u64::MAX / 2;

impl Gcra {
    /// A bucket of `burst` units refilling at `rate`.
    pub fn new(rate: Rate, burst: u32) -> Result<Gcra, LimitError> {
        if burst == 0 {
            return Err(LimitError::ZeroBurst);
        }
        let interval = rate.emission_interval().as_nanos();
        let tolerance = interval
            .checked_mul(u64::from(burst))
            .filter(|t| *t <= MAX_TOLERANCE)
            .ok_or_else(|| LimitError::RefillTooLong {
                burst,
                rate: rate.to_string(),
            })?;
        Ok(Gcra {
            interval,
            capacity: burst,
            tolerance,
        })
    }

    /// A bucket refilling `factor` times as fast (in (0, 1]) with `capacity` units.
    pub(crate) fn scaled(&self, factor: f64, capacity: u32) -> Gcra {
        let interval = ((self.interval as f64 / factor).ceil() as u64).max(self.interval);
        let tolerance = interval
            .saturating_mul(u64::from(capacity))
            .min(MAX_TOLERANCE);
        Gcra {
            interval,
            capacity,
            tolerance,
        }
    }

    /// The bucket's capacity (`burst`).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The time one unit takes to refill.
    pub fn emission_interval(&self) -> Nanos {
        Nanos(self.interval)
    }

    /// The time an empty bucket takes to fill (`burst × T`).
    pub fn refill_time(&self) -> Nanos {
        Nanos(self.tolerance)
    }

    /// Decides whether `cost` units may pass at `now`.
    #[inline]
    pub fn decide(&self, state: GcraState, now: Timestamp, cost: u32) -> Outcome<GcraState> {
        let now = now.as_nanos();
        let tat = state.tat.max(now);
        // Tokens in the bucket now; saturating, since a clock that went backwards can put
        // `tat` beyond `now + τ`.
        let horizon = now.saturating_add(self.tolerance);
        if cost <= self.capacity {
            // cost × T ≤ τ, so no overflow.
            let new_tat = tat.saturating_add(u64::from(cost) * self.interval);
            if new_tat <= horizon {
                return Outcome {
                    decision: Decision {
                        allowed: true,
                        limit: self.capacity,
                        remaining: to_u32((horizon - new_tat) / self.interval),
                        reset_after: Nanos(new_tat - now),
                        retry_after: Nanos::ZERO,
                    },
                    next: Some(GcraState { tat: new_tat }),
                    expires_at: Timestamp(new_tat),
                };
            }
            return self.deny(
                state,
                now,
                horizon.saturating_sub(tat),
                Nanos(new_tat - horizon),
            );
        }
        self.deny(state, now, horizon.saturating_sub(tat), Nanos::MAX)
    }

    /// A denial: `headroom` is how far `tat` lies before the horizon (tokens × T).
    #[cold]
    fn deny(&self, state: GcraState, now: u64, headroom: u64, wait: Nanos) -> Outcome<GcraState> {
        let available = headroom / self.interval;
        Outcome {
            decision: Decision {
                allowed: false,
                limit: self.capacity,
                remaining: to_u32(available),
                reset_after: Nanos(state.tat.saturating_sub(now)),
                retry_after: wait,
            },
            next: None,
            expires_at: Timestamp(state.tat),
        }
    }

    /// Undoes an admission of `cost` units that wrote `written` (its new `tat`), from
    /// `current`, at `now`.
    ///
    /// Only the part of the charge that has not yet drained at `now` is given back:
    /// `min(cost × T, written − now)`. Had a later admission found the bucket refilled
    /// past `written` and restarted it, the drained part is no longer in `current`, and
    /// giving it back would admit units twice.
    pub fn refund(
        &self,
        current: GcraState,
        written: GcraState,
        now: Timestamp,
        cost: u32,
    ) -> GcraState {
        let charge = u64::from(cost).saturating_mul(self.interval);
        let undrained = written.tat.saturating_sub(now.as_nanos());
        GcraState {
            tat: current.tat.saturating_sub(charge.min(undrained)),
        }
    }
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::NANOS_PER_SEC;

    const SEC: u64 = NANOS_PER_SEC;

    fn gcra(rate: &str, burst: u32) -> Gcra {
        Gcra::new(rate.parse().expect("rate"), burst).expect("gcra")
    }

    #[test]
    fn a_full_bucket_admits_burst_then_one_per_interval() {
        let g = gcra("10/s", 5);
        let mut state = GcraState::default();
        let now = Timestamp(1_000 * SEC);
        for expected_remaining in (0..5).rev() {
            let o = g.decide(state, now, 1);
            assert!(o.decision.allowed);
            assert_eq!(o.decision.remaining, expected_remaining);
            state = o.next.expect("admitted");
        }
        let denied = g.decide(state, now, 1);
        assert!(!denied.decision.allowed);
        assert_eq!(denied.next, None);
        assert_eq!(denied.decision.remaining, 0);
        assert_eq!(denied.decision.retry_after, Nanos(SEC / 10));
        assert_eq!(denied.decision.reset_after, Nanos(SEC / 2));

        let later = g.decide(state, Timestamp(now.0 + SEC / 10), 1);
        assert!(later.decision.allowed);
        assert_eq!(later.decision.remaining, 0);
    }

    #[test]
    fn cost_takes_several_tokens_and_reports_exact_wait() {
        let g = gcra("1/s", 10);
        let now = Timestamp(50 * SEC);
        let o = g.decide(GcraState::default(), now, 7);
        assert!(o.decision.allowed);
        assert_eq!(o.decision.remaining, 3);
        assert_eq!(o.decision.reset_after, Nanos(7 * SEC));
        let state = o.next.expect("admitted");
        let d = g.decide(state, now, 5);
        assert!(!d.decision.allowed);
        assert_eq!(d.decision.remaining, 3);
        assert_eq!(d.decision.retry_after, Nanos(2 * SEC));
        let ok = g.decide(state, Timestamp(now.0 + 2 * SEC), 5);
        assert!(ok.decision.allowed);
        assert_eq!(ok.decision.remaining, 0);
    }

    #[test]
    fn cost_above_capacity_never_passes() {
        let g = gcra("1/s", 3);
        let o = g.decide(GcraState::default(), Timestamp(SEC), 4);
        assert!(!o.decision.allowed);
        assert_eq!(o.decision.retry_after, Nanos::MAX);
        assert_eq!(o.decision.remaining, 3);
    }

    #[test]
    fn zero_cost_peeks() {
        let g = gcra("1/s", 3);
        let o = g.decide(GcraState { tat: 10 * SEC }, Timestamp(9 * SEC), 0);
        assert!(o.decision.allowed);
        assert_eq!(o.decision.remaining, 2);
    }

    #[test]
    fn clock_backwards_is_stricter_never_looser() {
        let g = gcra("1/s", 2);
        let t = Timestamp(100 * SEC);
        let state = g.decide(GcraState::default(), t, 2).next.expect("admitted");
        // One second earlier than the last admission: nothing has refilled.
        let back = g.decide(state, Timestamp(99 * SEC), 1);
        assert!(!back.decision.allowed);
        assert_eq!(back.decision.retry_after, Nanos(2 * SEC));
        // Absurd inputs do not panic.
        for now in [0, 1, u64::MAX - 1, u64::MAX] {
            let _ = g.decide(GcraState { tat: u64::MAX }, Timestamp(now), u32::MAX);
            let _ = g.decide(GcraState { tat: 0 }, Timestamp(now), 1);
            let _ = g.decide(GcraState { tat: u64::MAX }, Timestamp(now), 1);
        }
    }

    #[test]
    fn construction_rejects_bad_parameters() {
        let rate: Rate = "1/s".parse().expect("rate");
        assert_eq!(Gcra::new(rate, 0), Err(LimitError::ZeroBurst));
        let slow: Rate = "1/100000d".parse().expect("rate");
        assert!(matches!(
            Gcra::new(slow, u32::MAX),
            Err(LimitError::RefillTooLong { .. })
        ));
    }

    #[test]
    fn refund_undoes_an_admission() {
        let g = gcra("1/s", 3);
        let now = Timestamp(10 * SEC);
        let charged = g
            .decide(GcraState::default(), now, 2)
            .next
            .expect("admitted");
        let refunded = g.refund(charged, charged, now, 2);
        assert_eq!(g.decide(refunded, now, 3).decision.remaining, 0);
        assert!(g.decide(refunded, now, 3).decision.allowed);
    }

    #[test]
    fn refund_gives_back_only_what_has_not_drained() {
        // 1/s, burst 1: a charge at t=10 s wrote tat = 11 s. At 10.5 s half of it has
        // drained and is given back no more. At 12 s it has all drained, and a later
        // admission (at 11.5 s, tat 12.5 s) keeps its own charge.
        let g = gcra("1/s", 1);
        let written = GcraState { tat: 11 * SEC };
        let half = g.refund(written, written, Timestamp(10 * SEC + SEC / 2), 1);
        assert_eq!(half.tat, 10 * SEC + SEC / 2);
        let later = GcraState {
            tat: 12 * SEC + SEC / 2,
        };
        assert_eq!(g.refund(later, written, Timestamp(12 * SEC), 1), later);
    }
}
