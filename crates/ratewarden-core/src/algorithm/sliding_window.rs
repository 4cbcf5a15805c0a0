//! The sliding window as a two-window weighted counter.
//!
//! Time is cut into windows of one period, as for the fixed window, but a request is
//! judged against an estimate of the last full period: the units admitted in the current
//! window plus those of the previous window weighted by how much of it still overlaps
//! the last period, `ceil(previous × (period − elapsed) / period) + current`. The request
//! passes when that estimate plus its cost is at most `limit`.
//!
//! # Admission bound
//!
//! - Within any one aligned window at most `limit` units pass, since the estimate always
//!   includes the current window's count in full.
//! - Within any interval of one period's length, fewer than `2 × limit` units pass.
//!   Take an interval `[t, t + period)` starting a fraction `g` into window `k`; say `a`
//!   units pass in its part of window `k` and `b` in its part of window `k + 1`. Every
//!   admission in window `k + 1` happens less than `g` into it, so it sees window `k`'s
//!   count (at least `a`) weighted by more than `1 − g`; hence `b ≤ limit − a(1 − g)` and
//!   `a + b ≤ limit + g·a < 2 × limit`. The bound is approached only when a client
//!   spends its whole quota at the very end of one window and again at the start of the
//!   next; on evenly spread traffic the estimate is exact.
//!
//! Rounding the weighted count up keeps every admission inside these bounds.
//!
//! State: the window's index (low 16 bits) and two 24-bit counts, so the limit is at most
//! 16,777,215 units per window; larger quotas belong to GCRA or the fixed window.
//!
//! Time going backwards: when `now` falls before the stored window, the position is taken
//! as that window's start (the previous window weighs in full). A denial stores nothing,
//! so when only denials saw a window begin and the clock then steps back across that
//! boundary, the request counts in the earlier window: with such a clock a window can
//! admit up to `2 × limit`, the interval bound above, never more.

use super::{LimitError, StateBits, WindowPosition};
use crate::decision::{Decision, Outcome};
use crate::rate::Rate;
use crate::time::{Nanos, Timestamp};

/// Sliding-window parameters; build with [`SlidingWindow::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlidingWindow {
    limit: u32,
    period: u64,
}

/// Counts of the current window and the one before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlidingState {
    /// Index of the current window (time / period), truncated to 16 bits.
    pub window: u16,
    /// Units admitted in that window (at most [`SlidingWindow::MAX_LIMIT`]).
    pub current: u32,
    /// Units admitted in the window before it (at most [`SlidingWindow::MAX_LIMIT`]).
    pub previous: u32,
}

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl From<StateBits> for SlidingState {
    fn from(bits: StateBits) -> SlidingState {
        SlidingState {
            window: (bits.0 >> (2 * COUNT_BITS)) as u16,
            current: ((bits.0 >> COUNT_BITS) & COUNT_MASK) as u32,
            previous: (bits.0 & COUNT_MASK) as u32,
        }
    }
}

impl From<SlidingState> for StateBits {
    fn from(state: SlidingState) -> StateBits {
        StateBits(
            (u64::from(state.window) << (2 * COUNT_BITS))
                | ((u64::from(state.current) & COUNT_MASK) << COUNT_BITS)
                | (u64::from(state.previous) & COUNT_MASK),
        )
    }
}

impl SlidingWindow {
    /// The largest limit per window: counts are kept in 24 bits.
    pub const MAX_LIMIT: u32 = (1 << COUNT_BITS) - 1;

    /// About `rate.count()` units per any `rate.period()`.
    pub fn new(rate: Rate) -> Result<SlidingWindow, LimitError> {
        if rate.count() > Self::MAX_LIMIT {
            return Err(LimitError::SlidingLimitTooLarge {
                limit: rate.count(),
            });
        }
        Ok(SlidingWindow {
            limit: rate.count(),
            period: rate.period().as_nanos(),
        })
    }

    /// The same window admitting `limit` units (at most the current limit).
    pub(crate) fn with_limit(&self, limit: u32) -> Self {
        Self {
            limit: limit.min(self.limit),
            period: self.period,
        }
    }

    /// Units admitted per period (estimated).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window's length.
    pub fn period(&self) -> Nanos {
        Nanos(self.period)
    }

    /// `ceil(count × (period − elapsed) / period)`: the part of a window's count that
    /// still lies inside the last period.
    fn weigh(&self, count: u32, elapsed: u64) -> u64 {
        let overlap = u128::from(self.period - elapsed);
        (u128::from(count) * overlap).div_ceil(u128::from(self.period)) as u64
    }

    /// Elapsed time into a window from which `ceil(count × (period − e) / period) ≤ room`.
    fn elapsed_needed(&self, count: u32, room: u32) -> u64 {
        if count == 0 {
            return 0;
        }
        let tolerated = u128::from(room) * u128::from(self.period) / u128::from(count);
        self.period
            .saturating_sub(u64::try_from(tolerated).unwrap_or(u64::MAX))
    }

    /// Decides whether `cost` units may pass at `now`.
    #[inline]
    pub fn decide(&self, state: SlidingState, now: Timestamp, cost: u32) -> Outcome<SlidingState> {
        // All zeros is no state (and not window 0 of 1970).
        let stored = (state != SlidingState::default()).then_some(u64::from(state.window));
        let position = WindowPosition::locate(now, self.period, stored, 16);
        let (current, previous) = match position.behind {
            0 => (state.current, state.previous),
            1 => (0, state.current),
            _ => (0, 0),
        };
        let used = self.weigh(previous, position.elapsed) + u64::from(current);
        let limit = u64::from(self.limit);
        if cost <= self.limit && used + u64::from(cost) <= limit {
            let current = current + cost;
            let reset_after = self.reset_after(&position, current, previous);
            return Outcome {
                decision: Decision {
                    allowed: true,
                    limit: self.limit,
                    remaining: (limit - used - u64::from(cost)) as u32,
                    reset_after,
                    retry_after: Nanos::ZERO,
                },
                next: Some(SlidingState {
                    window: position.index as u16,
                    current,
                    previous,
                }),
                expires_at: now.saturating_add(reset_after),
            };
        }
        let retry_after = if cost > self.limit {
            Nanos::MAX
        } else if u64::from(current) + u64::from(cost) <= limit {
            // The previous window's weight must fade enough within this window.
            let needed = self.elapsed_needed(previous, self.limit - current - cost);
            Nanos(position.until(self.period, 0, needed))
        } else {
            // This window's own count must become the (fading) previous one.
            let needed = self.elapsed_needed(current, self.limit - cost);
            Nanos(position.until(self.period, 1, needed))
        };
        let reset_after = self.reset_after(&position, current, previous);
        Outcome {
            decision: Decision {
                allowed: false,
                limit: self.limit,
                remaining: limit.saturating_sub(used) as u32,
                reset_after,
                retry_after,
            },
            next: None,
            expires_at: now.saturating_add(reset_after),
        }
    }

    /// Time until the estimate is back to zero: the current window's units stop counting
    /// at the end of the next window, the previous window's at the end of this one.
    fn reset_after(&self, position: &WindowPosition, current: u32, previous: u32) -> Nanos {
        let windows = if current > 0 {
            2
        } else if previous > 0 {
            1
        } else {
            return Nanos(position.lag);
        };
        Nanos(position.until(self.period, windows, 0))
    }

    /// Undoes an admission of `cost` units that wrote `written`, wherever those units
    /// now sit: the current window if it is still the one written, the previous one if
    /// the window has moved on by one since.
    pub fn refund(&self, current: SlidingState, written: SlidingState, cost: u32) -> SlidingState {
        let mut state = current;
        if current.window == written.window {
            state.current = state.current.saturating_sub(cost);
        } else if current.window == written.window.wrapping_add(1) {
            state.previous = state.previous.saturating_sub(cost);
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::NANOS_PER_SEC;

    const SEC: u64 = NANOS_PER_SEC;
    const MIN: u64 = 60 * SEC;

    fn sliding(rate: &str) -> SlidingWindow {
        SlidingWindow::new(rate.parse().expect("rate")).expect("window")
    }

    fn admit(w: &SlidingWindow, state: SlidingState, now: u64, cost: u32) -> SlidingState {
        let o = w.decide(state, Timestamp(now), cost);
        assert!(o.decision.allowed, "expected admission at {now}: {o:?}");
        o.next.expect("admitted")
    }

    #[test]
    fn previous_window_weighs_by_overlap() {
        let w = sliding("10/m");
        let start = 1_000 * MIN;
        let state = admit(&w, SlidingState::default(), start, 10);
        // A quarter into the next window, 3/4 of the previous 10 still count: ceil(7.5) = 8.
        let o = w.decide(state, Timestamp(start + MIN + 15 * SEC), 1);
        assert!(o.decision.allowed);
        assert_eq!(o.decision.remaining, 1);
        let state = o.next.expect("admitted");
        assert_eq!(state.current, 1);
        assert_eq!(state.previous, 10);
        let state = admit(&w, state, start + MIN + 15 * SEC, 1);
        let denied = w.decide(state, Timestamp(start + MIN + 15 * SEC), 1);
        assert!(!denied.decision.allowed);
        // Needs ceil(10 × (60 − e) / 60) ≤ 7: e ≥ 18 s, three seconds from now.
        assert_eq!(denied.decision.retry_after, Nanos(3 * SEC));
        assert!(
            w.decide(state, Timestamp(start + MIN + 18 * SEC), 1)
                .decision
                .allowed
        );
        assert!(
            !w.decide(state, Timestamp(start + MIN + 18 * SEC - 1), 1)
                .decision
                .allowed
        );
    }

    #[test]
    fn full_current_window_waits_into_the_next() {
        let w = sliding("4/m");
        let start = 500 * MIN + 30 * SEC;
        let state = admit(&w, SlidingState::default(), start, 4);
        let denied = w.decide(state, Timestamp(start), 2);
        assert!(!denied.decision.allowed);
        // 30 s to the boundary, then ceil(4 × (60 − e) / 60) ≤ 2 needs e ≥ 30 s.
        assert_eq!(denied.decision.retry_after, Nanos(60 * SEC));
        assert_eq!(denied.decision.reset_after, Nanos(90 * SEC));
        let retry_at = start + 60 * SEC;
        assert!(w.decide(state, Timestamp(retry_at), 2).decision.allowed);
        assert!(!w.decide(state, Timestamp(retry_at - 1), 2).decision.allowed);
    }

    #[test]
    fn old_state_is_forgotten_after_two_windows() {
        let w = sliding("2/s");
        let state = admit(&w, SlidingState::default(), 10 * SEC, 2);
        let o = w.decide(state, Timestamp(12 * SEC), 2);
        assert!(o.decision.allowed);
        assert_eq!(o.next.map(|s| s.previous), Some(0));
    }

    #[test]
    fn cost_above_limit_never_passes_and_odd_times_do_not_panic() {
        let w = sliding("3/s");
        let o = w.decide(SlidingState::default(), Timestamp(SEC), 4);
        assert!(!o.decision.allowed);
        assert_eq!(o.decision.retry_after, Nanos::MAX);
        let extreme = SlidingState {
            window: u16::MAX,
            current: u32::MAX,
            previous: u32::MAX,
        };
        for now in [0, 1, u64::MAX] {
            for cost in [0, 1, u32::MAX] {
                let _ = w.decide(extreme, Timestamp(now), cost);
            }
        }
    }

    #[test]
    fn bits_round_trip() {
        let s = SlidingState {
            window: 0xbeef,
            current: SlidingWindow::MAX_LIMIT,
            previous: 42,
        };
        assert_eq!(SlidingState::from(StateBits::from(s)), s);
        assert_eq!(
            SlidingWindow::new("16777216/d".parse().expect("rate")),
            Err(LimitError::SlidingLimitTooLarge { limit: 16_777_216 })
        );
    }

    #[test]
    fn refund_finds_the_units_after_a_window_change() {
        let w = sliding("5/s");
        let charged_at = Timestamp(10 * SEC + 999_999_999);
        let state = admit(&w, SlidingState::default(), charged_at.0, 3);
        assert_eq!(w.refund(state, state, 3).current, 0);
        let rolled = admit(&w, state, 11 * SEC, 1);
        let refunded = w.refund(rolled, state, 3);
        assert_eq!((refunded.current, refunded.previous), (1, 0));
    }
}
