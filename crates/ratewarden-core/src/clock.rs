//! The one place that reads time.
//!
//! Algorithms take `now` as an argument; stores and the gateway get it from a [`Clock`].
//! Production uses [`SystemClock`]; tests use [`ManualClock`] and move time by hand, so no
//! test ever sleeps to let time pass. `.clippy.toml` forbids `Instant::now` and
//! `SystemTime::now` everywhere else.

use crate::time::{Nanos, Timestamp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A source of the current time.
///
/// Contract: `now` is cheap (it is called on every decision) and never panics. It should
/// not go backwards, but callers must tolerate it if it does: every algorithm treats a
/// step backwards as "no time has passed".
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// Wall-clock time that never steps backwards.
///
/// Reads the system's wall clock once, at construction, and from then on adds the time
/// elapsed on a monotonic counter (the CPU's time-stamp counter where available, through
/// `quanta`). A later step of the system clock (an NTP jump, an operator's `date -s`)
/// therefore neither repeats nor skips a window; slewing is followed as the monotonic
/// clock follows it.
#[derive(Clone, Debug)]
pub struct SystemClock {
    monotonic: quanta::Clock,
    anchor_raw: u64,
    anchor_unix: u64,
}

/// Added to the wall clock by every [`SystemClock`] made after it is set; see
/// [`shift_system_clocks`].
static SHIFT_NANOS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Makes every [`SystemClock`] created from now on read `by_nanos` later (earlier when
/// negative) than the wall clock, as on a host whose clock is that far off. For tests
/// that run several gateways with disagreeing clocks on one machine; call it once, at
/// startup.
pub fn shift_system_clocks(by_nanos: i64) {
    SHIFT_NANOS.store(by_nanos, std::sync::atomic::Ordering::Relaxed);
}

impl SystemClock {
    /// A clock anchored at the current wall-clock time.
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
    pub fn new() -> SystemClock {
        let anchor_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| Nanos::from(d).as_nanos())
            .unwrap_or(0)
            .saturating_add_signed(SHIFT_NANOS.load(std::sync::atomic::Ordering::Relaxed));
        let monotonic = quanta::Clock::new();
        let anchor_raw = monotonic.raw();
        SystemClock {
            monotonic,
            anchor_raw,
            anchor_unix,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Timestamp {
        let elapsed = self
            .monotonic
            .delta_as_nanos(self.anchor_raw, self.monotonic.raw());
        Timestamp(self.anchor_unix.saturating_add(elapsed))
    }
}

/// A clock that moves only when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            now: AtomicU64::new(start.as_nanos()),
        }
    }

    /// Moves the clock forward by `span`.
    pub fn advance(&self, span: Nanos) {
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(span.as_nanos()))
            });
    }

    /// Sets the clock to `to`, which may be earlier than the current reading.
    pub fn set(&self, to: Timestamp) {
        self.now.store(to.as_nanos(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_near_the_wall_clock_and_never_goes_back() {
        let clock = SystemClock::new();
        let first = clock.now();
        // 2020-01-01 and 2200-01-01: a sanity window, not a timing assertion.
        assert!(first.as_nanos() > 1_577_836_800 * crate::time::NANOS_PER_SEC);
        assert!(first.as_nanos() < 7_258_118_400 * crate::time::NANOS_PER_SEC);
        let mut last = first;
        for _ in 0..10_000 {
            let t = clock.now();
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp(100));
        assert_eq!(clock.now(), Timestamp(100));
        clock.advance(Nanos(50));
        assert_eq!(clock.now(), Timestamp(150));
        clock.set(Timestamp(10));
        assert_eq!(clock.now(), Timestamp(10));
        clock.advance(Nanos::MAX);
        assert_eq!(clock.now(), Timestamp(u64::MAX));
    }
}
