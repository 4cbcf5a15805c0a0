//! The three limiting algorithms, as pure state transitions.
//!
//! Each algorithm is a small parameter struct with a `decide(state, now, cost)` method that
//! returns an [`Outcome`]: the [`Decision`](crate::Decision), the next state (none for a
//! denial, which never changes state) and when the state expires. No algorithm reads a
//! clock, allocates or panics, whatever `now` is (time going backwards included).
//!
//! [`Limit`] is the closed set of configured algorithms, dispatched by the stores.
//! [`StateBits`] is the one compact form every algorithm's state fits in (64 bits), so a
//! store can keep any counter in one machine word and update it with one compare-and-swap.
//!
//! Contract with stores: a state is never used after its expiry
//! ([`Outcome::expires_at`]); a store drops or ignores it from then on. Window numbers are
//! kept in few bits and wrap, and this is what makes reading them unambiguous.

mod fixed_window;
mod gcra;
mod sliding_window;

pub use fixed_window::{FixedWindow, WindowCount};
pub use gcra::{Gcra, GcraState};
pub use sliding_window::{SlidingState, SlidingWindow};

use crate::decision::Outcome;
use crate::time::{Nanos, Timestamp};

/// Why limit parameters were refused. Raised at construction, never on the request path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A GCRA burst of zero would admit nothing.
    #[error("burst must be at least 1 (it is the bucket's capacity)")]
    ZeroBurst,
    /// A request costs more than the limit can ever admit.
    #[error("cost {cost} is larger than the limit's capacity {capacity}, so it could never pass")]
    CostAboveCapacity {
        /// The cost asked for.
        cost: u32,
        /// The most the limit admits at once.
        capacity: u32,
    },
    /// A sliding window counts in 24 bits.
    #[error("a sliding window allows at most 16777215 per window, not {limit}; use gcra or fixed_window for larger quotas")]
    SlidingLimitTooLarge {
        /// The limit asked for.
        limit: u32,
    },
    /// burst × (period / count) does not fit in the time representation.
    #[error("burst {burst} at {rate} needs longer than can be represented to refill")]
    RefillTooLong {
        /// The burst asked for.
        burst: u32,
        /// The rate, as displayed.
        rate: String,
    },
}

/// One configured limit: an algorithm with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Generic Cell Rate Algorithm (token bucket).
    Gcra(Gcra),
    /// Two-window weighted counter.
    SlidingWindow(SlidingWindow),
    /// Calendar-aligned fixed windows (UTC).
    FixedWindow(FixedWindow),
}

/// Any algorithm's state packed in 64 bits.
///
/// Zero is "no state": every algorithm treats it as a client never seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StateBits(pub u64);

impl Limit {
    /// The most units the limit admits at once; a cost above it can never pass.
    pub fn capacity(&self) -> u32 {
        match self {
            Limit::Gcra(g) => g.capacity(),
            Limit::SlidingWindow(s) => s.limit(),
            Limit::FixedWindow(f) => f.limit(),
        }
    }

    /// Checks that `cost` can ever pass; use when configuring a cost.
    pub fn check_cost(&self, cost: u32) -> Result<(), LimitError> {
        let capacity = self.capacity();
        if cost > capacity {
            return Err(LimitError::CostAboveCapacity { cost, capacity });
        }
        Ok(())
    }

    /// The time over which the limit's capacity is measured: the window, or for GCRA the
    /// time an empty bucket takes to refill.
    pub fn window(&self) -> Nanos {
        match self {
            Limit::Gcra(g) => g.refill_time(),
            Limit::SlidingWindow(s) => s.period(),
            Limit::FixedWindow(f) => f.period(),
        }
    }

    /// This limit with its rate and capacity multiplied by `factor` (in (0, 1]), the
    /// capacity never below `min_capacity` nor 1, so the request's cost still fits. The
    /// state layout is unchanged, so a counter keeps its state across a change of factor.
    pub fn scaled(&self, factor: f64, min_capacity: u32) -> Limit {
        let factor = factor.clamp(f64::MIN_POSITIVE, 1.0);
        let count = |n: u32| ((f64::from(n) * factor) as u32).max(min_capacity).max(1);
        match self {
            Limit::Gcra(g) => Limit::Gcra(g.scaled(factor, count(g.capacity()))),
            Limit::SlidingWindow(s) => Limit::SlidingWindow(s.with_limit(count(s.limit()))),
            Limit::FixedWindow(f) => Limit::FixedWindow(f.with_limit(count(f.limit()))),
        }
    }

    /// Decides on packed state; see each algorithm's `decide`.
    #[inline]
    pub fn decide(&self, state: StateBits, now: Timestamp, cost: u32) -> Outcome<StateBits> {
        match self {
            Limit::Gcra(g) => pack(g.decide(GcraState::from(state), now, cost)),
            Limit::SlidingWindow(s) => pack(s.decide(SlidingState::from(state), now, cost)),
            Limit::FixedWindow(f) => pack(f.decide(WindowCount::from(state), now, cost)),
        }
    }

    /// Gives back `cost` units of an admission that wrote `written`, because another
    /// limit of the same request denied it; `current` is the state now, at `now`. Never
    /// gives back units that a later admission has since counted on (see each
    /// algorithm's `refund`).
    pub fn refund(
        &self,
        current: StateBits,
        written: StateBits,
        now: Timestamp,
        cost: u32,
    ) -> StateBits {
        match self {
            Limit::Gcra(g) => g.refund(current.into(), written.into(), now, cost).into(),
            Limit::SlidingWindow(s) => s.refund(current.into(), written.into(), cost).into(),
            Limit::FixedWindow(f) => f.refund(current.into(), written.into(), cost).into(),
        }
    }
}

#[inline]
fn pack<S: Into<StateBits>>(outcome: Outcome<S>) -> Outcome<StateBits> {
    Outcome {
        decision: outcome.decision,
        next: outcome.next.map(Into::into),
        expires_at: outcome.expires_at,
    }
}

/// Where a timestamp falls in a sequence of windows of one period, with the window index
/// kept in 32 bits (wrapping) as window states store it.
///
/// Shared by the two window algorithms, so "which window is it?" and "did time go
/// backwards?" are answered once.
#[derive(Clone, Copy, Debug)]
struct WindowPosition {
    /// The window's index, full width.
    index: u64,
    /// Nanoseconds since the window began.
    elapsed: u64,
    /// How many windows the stored window lies behind this one (0: the same window).
    behind: u64,
    /// Time from the real `now` to the effective position (non-zero only when the clock
    /// went backwards and the position was moved forward to the stored window's start).
    lag: u64,
}

impl WindowPosition {
    /// Locates `now` relative to the stored window `stored`, an index kept in its low
    /// `bits` bits (wrapping; `None` when nothing is stored).
    ///
    /// A stored window ahead of `now` means the clock went backwards; the position is then
    /// taken as the start of the stored window, so no time is treated as having passed.
    /// Stored windows are at most two periods old (stores drop expired state), so the
    /// wrapped distance is unambiguous.
    fn locate(now: Timestamp, period: u64, stored: Option<u64>, bits: u32) -> WindowPosition {
        let now = now.as_nanos();
        let index = now / period;
        let elapsed = now % period;
        let Some(stored) = stored else {
            return WindowPosition {
                index,
                elapsed,
                behind: u64::MAX,
                lag: 0,
            };
        };
        let modulus = 1u64 << bits;
        let distance = index.wrapping_sub(stored) & (modulus - 1);
        if distance < modulus / 2 {
            WindowPosition {
                index,
                elapsed,
                behind: distance,
                lag: 0,
            }
        } else {
            let ahead = modulus - distance;
            let index = index.saturating_add(ahead);
            let start = index.saturating_mul(period);
            WindowPosition {
                index,
                elapsed: 0,
                behind: 0,
                lag: start.saturating_sub(now),
            }
        }
    }

    /// Nanoseconds from the real `now` to the point `into` nanoseconds into the window
    /// `windows` after this one (`windows = 0`: this one).
    fn until(&self, period: u64, windows: u64, into: u64) -> u64 {
        self.lag
            .saturating_add(period.saturating_mul(windows))
            .saturating_add(into)
            .saturating_sub(self.elapsed)
    }
}
