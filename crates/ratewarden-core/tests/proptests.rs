//! Property tests: each algorithm over random arrival sequences and costs.
//!
//! Times are checked in "effective time", the running maximum of the clock, because every
//! algorithm treats a step backwards as no time passed: its bounds must hold on that
//! time line even when the clock jumps around.

use proptest::prelude::*;
use ratewarden_core::algorithm::{GcraState, SlidingState, WindowCount};
use ratewarden_core::{
    Decision, FixedWindow, Gcra, Nanos, Outcome, Rate, SlidingWindow, Timestamp,
};

/// An arrival: when (relative to the previous one, possibly backwards) and how many units.
#[derive(Clone, Debug)]
struct Arrival {
    step: i64,
    cost: u32,
}

/// A start around 2026 in nanoseconds, so window indices are realistic.
const START: u64 = 1_795_453_170_000_000_000;

fn arrivals(period: u64, capacity: u32, backwards: bool) -> impl Strategy<Value = Vec<Arrival>> {
    let max_step = (period * 2) as i64;
    let min_step = if backwards { -max_step } else { 0 };
    prop::collection::vec(
        (
            prop_oneof![3 => Just(0i64), 6 => 0..max_step / 8 + 1, 1 => min_step..=max_step],
            0..=capacity,
        )
            .prop_map(|(step, cost)| Arrival { step, cost }),
        1..160,
    )
}

/// A rate, a burst, and arrivals whose costs stay within `capacity(rate, burst)`.
fn case(
    backwards: bool,
    capacity: fn(&Rate, u32) -> u32,
) -> impl Strategy<Value = (Rate, u32, Vec<Arrival>)> {
    (rate(), 1u32..30, any::<bool>()).prop_flat_map(move |(rate, burst, back)| {
        let period = rate.period().as_nanos();
        let seq = arrivals(period, capacity(&rate, burst), back && backwards);
        (Just(rate), Just(burst), seq)
    })
}

/// A rate with a small period in nanoseconds, so sequences cross many windows.
fn rate() -> impl Strategy<Value = Rate> {
    (1u32..40, 1u64..20).prop_filter_map("rate", |(count, scale)| {
        Rate::new(count, Nanos(u64::from(count) * scale * 1_000 + scale * 7))
    })
}

/// Runs a sequence through a pure decide function, returning (real time, effective time,
/// cost, decision, state before, state after) for each arrival.
fn run<S: Copy + PartialEq + std::fmt::Debug>(
    seq: &[Arrival],
    mut state: S,
    decide: impl Fn(S, Timestamp, u32) -> Outcome<S>,
) -> Vec<(u64, u64, u32, Decision)> {
    let mut now = START as i64;
    let mut effective = 0;
    let mut log = Vec::with_capacity(seq.len());
    for a in seq {
        now = (now + a.step).max(0);
        effective = effective.max(now as u64);
        let outcome = decide(state, Timestamp(now as u64), a.cost);
        assert_eq!(
            outcome.decision.allowed,
            outcome.next.is_some(),
            "only admissions change state"
        );
        assert!(outcome.decision.remaining <= outcome.decision.limit);
        if outcome.decision.allowed {
            assert_eq!(outcome.decision.retry_after, Nanos::ZERO);
        } else {
            assert!(outcome.decision.retry_after > Nanos::ZERO);
        }
        if let Some(next) = outcome.next {
            state = next;
        }
        log.push((now as u64, effective, a.cost, outcome.decision));
    }
    log
}

/// Largest number of admitted units among arrivals whose effective times lie in a
/// closed interval starting at an admitted arrival and no longer than `span`.
fn admitted_in_intervals(
    log: &[(u64, u64, u32, Decision)],
    fits: impl Fn(u64, u64) -> bool,
) -> Vec<(u64, u64, u64)> {
    let admitted: Vec<(u64, u32)> = log
        .iter()
        .filter(|e| e.3.allowed)
        .map(|e| (e.1, e.2))
        .collect();
    let mut out = Vec::new();
    for (i, &(first, _)) in admitted.iter().enumerate() {
        let mut total = 0u64;
        for &(t, cost) in &admitted[i..] {
            if !fits(first, t) {
                break;
            }
            total += u64::from(cost);
            out.push((first, t, total));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn gcra_never_exceeds_burst_plus_rate_times_interval(
        (rate, burst, seq) in case(true, |_, burst| burst),
    ) {
        let g = Gcra::new(rate, burst).expect("valid");
        let log = run(&seq, GcraState::default(), |s, now, cost| g.decide(s, now, cost));
        let t = g.emission_interval().as_nanos();
        for (first, last, units) in admitted_in_intervals(&log, |_, _| true) {
            // units × T ≤ (last − first) + burst × T, i.e. units ≤ burst + rate × (last − first).
            prop_assert!(units * t <= (last - first) + u64::from(burst) * t,
                "{units} units in [{first}, {last}] with T={t}, burst={burst}");
        }
    }

    #[test]
    fn fixed_window_never_exceeds_limit_per_window(
        (rate, _burst, seq) in case(true, |rate, _| rate.count()),
    ) {
        let w = FixedWindow::new(rate).expect("valid");
        let period = rate.period().as_nanos();
        let log = run(&seq, WindowCount::default(), |s, now, cost| w.decide(s, now, cost));
        for (_, _, units) in admitted_in_intervals(&log, |a, b| a / period == b / period) {
            prop_assert!(units <= u64::from(rate.count()));
        }
    }

    #[test]
    fn sliding_window_stays_within_its_documented_bound(
        (rate, _burst, seq) in case(false, |rate, _| rate.count()),
    ) {
        let w = SlidingWindow::new(rate).expect("valid");
        let period = rate.period().as_nanos();
        let limit = u64::from(rate.count());
        let log = run(&seq, SlidingState::default(), |s, now, cost| w.decide(s, now, cost));
        for (_, _, units) in admitted_in_intervals(&log, |a, b| a / period == b / period) {
            prop_assert!(units <= limit, "aligned window over limit");
        }
        for (first, last, units) in admitted_in_intervals(&log, |a, b| b - a < period) {
            prop_assert!(units < 2 * limit, "{units} units in [{first}, {last}], period {period}, limit {limit}");
        }
    }

    /// With a clock that jumps back and forth, a window still admits at most twice its limit.
    #[test]
    fn sliding_window_with_backward_clock_stays_within_twice_the_limit(
        (rate, _burst, seq) in case(true, |rate, _| rate.count()),
    ) {
        let w = SlidingWindow::new(rate).expect("valid");
        let period = rate.period().as_nanos();
        let limit = u64::from(rate.count());
        let log = run(&seq, SlidingState::default(), |s, now, cost| w.decide(s, now, cost));
        for (_, _, units) in admitted_in_intervals(&log, |a, b| a / period == b / period) {
            prop_assert!(units <= 2 * limit, "aligned window over twice the limit");
        }
    }

    /// A denied client that waits exactly `retry_after` is admitted, and one nanosecond
    /// less is not enough: the header tells the truth.
    #[test]
    fn retry_after_is_exact(
        (rate, burst, seq) in case(false, |rate, burst| burst.min(rate.count())),
    ) {
        let g = Gcra::new(rate, burst).expect("valid");
        let f = FixedWindow::new(rate).expect("valid");
        let s = SlidingWindow::new(rate).expect("valid");
        check_retry(&seq, GcraState::default(), |st, now, cost| g.decide(st, now, cost))?;
        check_retry(&seq, WindowCount::default(), |st, now, cost| f.decide(st, now, cost))?;
        check_retry(&seq, SlidingState::default(), |st, now, cost| s.decide(st, now, cost))?;
    }
}

fn check_retry<S: Copy>(
    seq: &[Arrival],
    mut state: S,
    decide: impl Fn(S, Timestamp, u32) -> Outcome<S>,
) -> Result<(), TestCaseError> {
    let mut now = START;
    for a in seq {
        now += a.step.max(0) as u64;
        let outcome = decide(state, Timestamp(now), a.cost);
        match outcome.next {
            Some(next) => state = next,
            None => {
                let wait = outcome.decision.retry_after.as_nanos();
                prop_assert!(wait < u64::MAX, "valid cost must pass eventually");
                prop_assert!(
                    decide(state, Timestamp(now + wait), a.cost)
                        .decision
                        .allowed,
                    "still denied after waiting retry_after={wait}"
                );
                prop_assert!(
                    !decide(state, Timestamp(now + wait - 1), a.cost)
                        .decision
                        .allowed,
                    "retry_after={wait} is longer than needed"
                );
            }
        }
    }
    Ok(())
}
