//! Points in time and spans of time, as plain nanosecond counts.
//!
//! Every algorithm works on `u64` nanoseconds: a [`Timestamp`] counts from the Unix epoch
//! (UTC, no leap seconds, so calendar-aligned windows are plain multiples), a [`Nanos`]
//! is a span. All arithmetic saturates: no input can make it panic or wrap.

use std::fmt;
use std::time::Duration;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A span of time in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// No time at all.
    pub const ZERO: Nanos = Nanos(0);
    /// The longest span; a denial that can never turn into an admission waits this long.
    pub const MAX: Nanos = Nanos(u64::MAX);

    /// A span of whole seconds.
    pub const fn from_secs(secs: u64) -> Nanos {
        Nanos(secs.saturating_mul(NANOS_PER_SEC))
    }

    /// A span of whole milliseconds.
    pub const fn from_millis(millis: u64) -> Nanos {
        Nanos(millis.saturating_mul(1_000_000))
    }

    /// The span in nanoseconds.
    #[inline]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded up: what `Retry-After` must say so a client that waits
    /// that long is admitted.
    #[inline]
    pub const fn as_secs_ceil(self) -> u64 {
        self.0.div_ceil(NANOS_PER_SEC)
    }

    /// The span as a standard [`Duration`].
    pub const fn to_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// Saturating sum.
    pub const fn saturating_add(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(other.0))
    }

    /// Saturating difference (zero when `other` is longer).
    pub const fn saturating_sub(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(other.0))
    }
}

impl From<Duration> for Nanos {
    fn from(d: Duration) -> Nanos {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_duration())
    }
}

/// A point in time: nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// Nanoseconds since the Unix epoch.
    #[inline]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch, rounded up.
    #[inline]
    pub const fn as_secs_ceil(self) -> u64 {
        self.0.div_ceil(NANOS_PER_SEC)
    }

    /// The time `span` later, saturating at the end of representable time.
    #[inline]
    pub const fn saturating_add(self, span: Nanos) -> Timestamp {
        Timestamp(self.0.saturating_add(span.0))
    }

    /// The span from `earlier` to `self`, zero when `earlier` is not earlier.
    pub const fn saturating_since(self, earlier: Timestamp) -> Nanos {
        Nanos(self.0.saturating_sub(earlier.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_so_waiting_that_long_is_enough() {
        assert_eq!(Nanos(0).as_secs_ceil(), 0);
        assert_eq!(Nanos(1).as_secs_ceil(), 1);
        assert_eq!(Nanos(NANOS_PER_SEC).as_secs_ceil(), 1);
        assert_eq!(Nanos(NANOS_PER_SEC + 1).as_secs_ceil(), 2);
        assert_eq!(Nanos::MAX.as_secs_ceil(), u64::MAX / NANOS_PER_SEC + 1);
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            Timestamp(u64::MAX).saturating_add(Nanos(5)),
            Timestamp(u64::MAX)
        );
        assert_eq!(Timestamp(3).saturating_since(Timestamp(10)), Nanos::ZERO);
        assert_eq!(Nanos::from_secs(u64::MAX), Nanos::MAX);
        assert_eq!(Nanos::from(Duration::MAX), Nanos::MAX);
    }
}
