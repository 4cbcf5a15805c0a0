//! The circuit breaker: after repeated failures, stop asking a Redis that is not
//! answering, and probe it now and then until it does.
//!
//! Closed: every call goes through. After `threshold` consecutive failures the breaker
//! opens for a pause (doubling with each reopening, up to a maximum): calls fail at
//! once, without a connection attempt or a timeout to wait out, so the gateway applies
//! its failure policy in microseconds. When the pause is over one call is let through
//! as a probe (the others keep failing fast); its success closes the breaker, its
//! failure reopens it for longer.

use parking_lot::Mutex;
use ratewarden_core::{Nanos, Timestamp};

/// Consecutive failures that open the breaker.
const THRESHOLD: u32 = 3;
/// The first pause; each reopening without a success in between doubles it.
const FIRST_PAUSE: Nanos = Nanos::from_millis(100);
/// The longest pause: a Redis that comes back is used again within this.
const MAX_PAUSE: Nanos = Nanos::from_secs(5);

/// Whether a call may go to Redis now.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// Until when calls fail fast (`None`: closed).
    open_until: Option<Timestamp>,
    /// The current pause, grown by each reopening.
    pause: Nanos,
    /// Whether a probe was let through since the breaker (re)opened.
    probing: bool,
}

impl Breaker {
    /// Whether to try Redis at `now`: always when closed; when open, only once the pause
    /// is over, and then for one caller (the probe) per pause.
    pub(crate) fn admit(&self, now: Timestamp) -> bool {
        let mut state = self.state.lock();
        match state.open_until {
            None => true,
            Some(until) if now >= until => {
                // This caller probes; the others fail fast for one more pause.
                let pause = state.pause;
                state.open_until = Some(now.saturating_add(pause));
                state.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    /// The time until the next probe, for a `Retry-After` (zero when closed).
    pub(crate) fn retry_after(&self, now: Timestamp) -> Nanos {
        match self.state.lock().open_until {
            Some(until) => until.saturating_since(now),
            None => Nanos::ZERO,
        }
    }

    /// Whether calls currently fail fast.
    pub(crate) fn is_open(&self) -> bool {
        self.state.lock().open_until.is_some()
    }

    pub(crate) fn record_success(&self) {
        let mut state = self.state.lock();
        if state.failures != 0 || state.open_until.is_some() {
            *state = State::default();
        }
    }

    /// Records a failure; returns true when it opened (or reopened) the breaker.
    ///
    /// While open, only a probe's failure counts: calls that were already in flight
    /// when the breaker opened fail late, and must not lengthen the pause (a single
    /// stall would otherwise push it to the maximum at once).
    pub(crate) fn record_failure(&self, now: Timestamp) -> bool {
        let mut state = self.state.lock();
        if state.open_until.is_some() {
            if !state.probing {
                return false;
            }
            state.probing = false;
        }
        state.failures = state.failures.saturating_add(1);
        if state.failures < THRESHOLD {
            return false;
        }
        let pause = if state.pause == Nanos::ZERO {
            FIRST_PAUSE
        } else {
            Nanos(
                state
                    .pause
                    .as_nanos()
                    .saturating_mul(2)
                    .min(MAX_PAUSE.as_nanos()),
            )
        };
        state.pause = pause;
        state.open_until = Some(now.saturating_add(pause));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_000_000_000_000);

    fn at(ms: u64) -> Timestamp {
        T0.saturating_add(Nanos::from_millis(ms))
    }

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let b = Breaker::default();
        assert!(!b.record_failure(at(0)));
        assert!(!b.record_failure(at(1)));
        assert!(b.admit(at(2)));
        assert!(b.record_failure(at(2)));
        assert!(!b.admit(at(3)));
        assert_eq!(b.retry_after(at(52)), Nanos::from_millis(50));
    }

    #[test]
    fn one_probe_per_pause_and_a_success_closes() {
        let b = Breaker::default();
        for i in 0..3 {
            b.record_failure(at(i));
        }
        assert!(b.admit(at(102)), "the pause is over: probe");
        assert!(!b.admit(at(103)), "only one probe");
        b.record_success();
        assert!(!b.is_open());
        assert!(b.admit(at(104)));
    }

    #[test]
    fn late_failures_of_calls_already_in_flight_do_not_lengthen_the_pause() {
        let b = Breaker::default();
        for _ in 0..3 {
            b.record_failure(at(0));
        }
        for _ in 0..10 {
            assert!(!b.record_failure(at(1)), "in flight before it opened");
        }
        assert_eq!(b.retry_after(at(0)), Nanos::from_millis(100));
    }

    #[test]
    fn pauses_double_up_to_the_maximum() {
        let b = Breaker::default();
        let mut now = 0;
        let mut pauses = Vec::new();
        for _ in 0..3 {
            b.record_failure(at(now));
        }
        for _ in 0..10 {
            let wait = b.retry_after(at(now));
            pauses.push(wait.as_nanos() / 1_000_000);
            now += wait.as_nanos() / 1_000_000;
            assert!(b.admit(at(now)));
            b.record_failure(at(now));
        }
        assert_eq!(pauses[..4], [100, 200, 400, 800]);
        assert_eq!(*pauses.last().expect("pauses"), 5000);
    }
}
