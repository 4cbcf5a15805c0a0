//! Fixed windows aligned to the calendar in UTC: at most `limit` units per window.
//!
//! Windows are consecutive multiples of the period counted from the Unix epoch, so an
//! hourly window starts on the hour and a daily one at midnight UTC (Unix time has no
//! leap seconds). The count resets at each boundary. This is the algorithm for quotas
//! ("1000 per day"); it admits up to 2 × limit across a boundary, which GCRA and the
//! sliding window avoid.
//!
//! State: the window's index (low 32 bits) and the units admitted in it.

use super::{LimitError, StateBits, WindowPosition};
use crate::decision::{Decision, Outcome};
use crate::rate::Rate;
use crate::time::{Nanos, Timestamp};

/// Fixed-window parameters; build with [`FixedWindow::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedWindow {
    limit: u32,
    period: u64,
}

/// Units admitted in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCount {
    /// Index of the window (time / period), truncated to 32 bits.
    pub window: u32,
    /// Units admitted in that window.
    pub count: u32,
}

impl From<StateBits> for WindowCount {
    fn from(bits: StateBits) -> WindowCount {
        WindowCount {
            window: (bits.0 >> 32) as u32,
            count: bits.0 as u32,
        }
    }
}

impl From<WindowCount> for StateBits {
    fn from(state: WindowCount) -> StateBits {
        StateBits((u64::from(state.window) << 32) | u64::from(state.count))
    }
}

impl FixedWindow {
    /// `rate.count()` units per `rate.period()`.
    pub fn new(rate: Rate) -> Result<FixedWindow, LimitError> {
        Ok(FixedWindow {
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

    /// Units admitted per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window's length.
    pub fn period(&self) -> Nanos {
        Nanos(self.period)
    }

    /// Decides whether `cost` units may pass at `now`.
    #[inline]
    pub fn decide(&self, state: WindowCount, now: Timestamp, cost: u32) -> Outcome<WindowCount> {
        // All zeros is no state (and not window 0 of 1970).
        let stored = (state != WindowCount::default()).then_some(u64::from(state.window));
        let position = WindowPosition::locate(now, self.period, stored, 32);
        let used = if position.behind == 0 { state.count } else { 0 };
        let reset_after = Nanos(position.until(self.period, 1, 0));
        let expires_at = now.saturating_add(reset_after);
        let fits = cost <= self.limit && u64::from(used) + u64::from(cost) <= u64::from(self.limit);
        if fits {
            let count = used + cost;
            return Outcome {
                decision: Decision {
                    allowed: true,
                    limit: self.limit,
                    remaining: self.limit - count,
                    reset_after,
                    retry_after: Nanos::ZERO,
                },
                next: Some(WindowCount {
                    window: position.index as u32,
                    count,
                }),
                expires_at,
            };
        }
        Outcome {
            decision: Decision {
                allowed: false,
                limit: self.limit,
                remaining: self.limit.saturating_sub(used),
                reset_after,
                // A fresh window admits any cost up to the limit.
                retry_after: if cost <= self.limit {
                    reset_after
                } else {
                    Nanos::MAX
                },
            },
            next: None,
            // A denial implies a count in the current window, so the stored state is
            // this window's and expires with it.
            expires_at,
        }
    }

    /// Undoes an admission of `cost` units that wrote `written`: taken off the count if
    /// `current` is still that window; a window that is over has nothing to undo.
    pub fn refund(&self, current: WindowCount, written: WindowCount, cost: u32) -> WindowCount {
        if current.window == written.window {
            WindowCount {
                window: current.window,
                count: current.count.saturating_sub(cost),
            }
        } else {
            current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::NANOS_PER_SEC;

    const SEC: u64 = NANOS_PER_SEC;
    const HOUR: u64 = 3_600 * SEC;

    fn window(rate: &str) -> FixedWindow {
        FixedWindow::new(rate.parse().expect("rate")).expect("window")
    }

    #[test]
    fn hourly_quota_resets_on_the_hour_utc() {
        let w = window("3/h");
        // 2026-11-23T16:59:30Z
        let t = Timestamp(1_795_453_170 * SEC);
        let mut state = WindowCount::default();
        for left in [2, 1, 0] {
            let o = w.decide(state, t, 1);
            assert!(o.decision.allowed);
            assert_eq!(o.decision.remaining, left);
            assert_eq!(o.decision.reset_after, Nanos(30 * SEC));
            assert_eq!(o.expires_at, Timestamp(1_795_453_200 * SEC));
            state = o.next.expect("admitted");
        }
        let denied = w.decide(state, t, 1);
        assert!(!denied.decision.allowed);
        assert_eq!(denied.decision.retry_after, Nanos(30 * SEC));
        assert_eq!(denied.next, None);
        // 17:00:00Z exactly: a new window.
        let next = w.decide(state, Timestamp(1_795_453_200 * SEC), 3);
        assert!(next.decision.allowed);
        assert_eq!(next.decision.remaining, 0);
        assert_eq!(next.decision.reset_after, Nanos(HOUR));
    }

    #[test]
    fn daily_windows_start_at_midnight_utc() {
        let w = window("1/d");
        let midnight = 1_795_392_000 * SEC; // 2026-11-23T00:00:00Z
        let o = w.decide(WindowCount::default(), Timestamp(midnight - 1), 1);
        assert_eq!(o.decision.reset_after, Nanos(1));
        let o = w.decide(WindowCount::default(), Timestamp(midnight), 1);
        assert_eq!(o.decision.reset_after, Nanos(86_400 * SEC));
    }

    #[test]
    fn clock_backwards_keeps_the_count() {
        let w = window("2/m");
        let t = Timestamp(1_000 * 60 * SEC + 5 * SEC);
        let state = w
            .decide(WindowCount::default(), t, 2)
            .next
            .expect("admitted");
        // Two minutes earlier: treated as no time passed, still full.
        let back = w.decide(state, Timestamp(t.0 - 120 * SEC), 1);
        assert!(!back.decision.allowed);
        assert_eq!(back.decision.remaining, 0);
        // Waiting the reported time really is enough: the lag plus the rest of the window.
        assert_eq!(back.decision.retry_after, Nanos(115 * SEC + 60 * SEC));
        for now in [0, 1, u64::MAX] {
            let _ = w.decide(
                WindowCount {
                    window: u32::MAX,
                    count: u32::MAX,
                },
                Timestamp(now),
                u32::MAX,
            );
        }
    }

    #[test]
    fn refund_returns_units_in_the_same_window_only() {
        let w = window("5/m");
        let t = Timestamp(60 * SEC);
        let state = w
            .decide(WindowCount::default(), t, 3)
            .next
            .expect("admitted");
        assert_eq!(w.refund(state, state, 2).count, 1);
        let next_window = w
            .decide(state, Timestamp(t.0 + 60 * SEC), 1)
            .next
            .expect("admitted");
        assert_eq!(w.refund(next_window, state, 2), next_window);
    }
}
