use super::*;
use crate::algorithm::{Gcra, Limit};
use crate::rate::Rate;
use crate::time::{Nanos, Timestamp};
use proptest::prelude::*;

const WINDOW: Nanos = Nanos::from_secs(300);

fn request(at_ms: u64, endpoint: u64, outcome: RequestOutcome) -> Observation {
    Observation {
        at: Timestamp(1_700_000_000_000_000_000 + at_ms * 1_000_000),
        endpoint,
        agent: 7,
        automation_agent: false,
        spoofed_forwarding: false,
        credential_stuffing: false,
        outcome,
    }
}

fn assess(observations: impl IntoIterator<Item = Observation>) -> Assessment {
    let mut w = ClientWindow::default();
    let mut last = Timestamp::EPOCH;
    for o in observations {
        w.observe(&o, WINDOW);
        last = o.at;
    }
    Scoring::default().assess(&w.signals(last, WINDOW))
}

#[test]
fn a_reader_with_bursts_stays_normal() {
    // Bursts of 10 quick requests every 20 s, over a handful of pages.
    let a = assess((0..100).map(|i| {
        let at = (i / 10) * 20_000 + (i % 10) * 150 + (i * 37 % 90);
        request(at, i % 12, RequestOutcome::Answered(200))
    }));
    assert_eq!(a.level, Level::Normal, "{a:?}");
}

#[test]
fn a_password_guesser_is_high_and_says_why() {
    let a =
        assess((0..14).map(|i| request(i * 3_000 + i * i * 97, 1, RequestOutcome::Answered(401))));
    assert_eq!(a.level, Level::High, "{a:?}");
    assert_eq!(
        a.reasons.first().map(String::as_str),
        Some("auth_failures=14")
    );
}

#[test]
fn an_enumerator_rises_on_distinct_endpoints() {
    let a = assess((0..212).map(|i| {
        request(
            i * 1_000 + (i * 7919 % 700),
            (1000 + i).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            RequestOutcome::Answered(404),
        )
    }));
    assert!(a.level >= Level::High, "{a:?}");
    assert!(
        a.reasons.iter().any(|r| r.starts_with("endpoints=")),
        "{a:?}"
    );
}

#[test]
fn a_clockwork_bot_is_flagged() {
    let a = assess((0..60).map(|i| request(i * 100, 1, RequestOutcome::Answered(200))));
    assert!(a.level >= Level::Elevated, "{a:?}");
    assert!(
        a.reasons.iter().any(|r| r.starts_with("timing_cv=")),
        "{a:?}"
    );
}

#[test]
fn a_rhythm_weighs_more_the_longer_it_is_kept_but_alone_never_blocks_outright() {
    let clockwork = |n: u64, automation: bool| {
        let mut w = ClientWindow::default();
        let mut last = Timestamp::EPOCH;
        for i in 0..n {
            let mut o = request(i * 1_000, 1, RequestOutcome::Answered(200));
            o.automation_agent = automation;
            w.observe(&o, WINDOW);
            last = o.at;
        }
        Scoring::default().assess(&w.signals(last, WINDOW))
    };
    // 20 gaps: the weight; 30 gaps: one and a half times it.
    assert_eq!(clockwork(21, false).level, Level::Elevated);
    assert_eq!(clockwork(31, false).level, Level::High);
    // Kept for 200 gaps, a browser's timer is still only high...
    let browser = clockwork(201, false);
    assert_eq!(browser.level, Level::High, "{browser:?}");
    // ... while an automation tool on the dot reaches critical after 40 gaps.
    assert_eq!(clockwork(40, true).level, Level::High);
    let bot = clockwork(41, true);
    assert_eq!(bot.level, Level::Critical, "{bot:?}");
}

#[test]
fn failing_neighbours_count_from_ten_and_weigh_like_other_signals() {
    let scoring = Scoring::default();
    let with = |neighbours: f64| {
        scoring.assess(&Signals {
            auth_failures: 1.0,
            failing_neighbours: neighbours,
            ..Signals::default()
        })
    };
    assert_eq!(with(9.0).level, Level::Normal);
    assert_eq!(with(12.0).level, Level::Elevated);
    assert_eq!(with(23.0).level, Level::Elevated);
    let rotating = with(25.0);
    assert_eq!(rotating.level, Level::High, "{rotating:?}");
    assert_eq!(rotating.reasons, ["failing_neighbours=25"]);
    // Capped at three times the weight: a network alone, even with an automation
    // user agent, never makes a client critical.
    let scripted = scoring.assess(&Signals {
        auth_failures: 2.0,
        failing_neighbours: 1000.0,
        automation: 1.0,
        ..Signals::default()
    });
    assert_eq!(scripted.score, 95.0);
    assert_eq!(scripted.level, Level::High);
}

#[test]
fn back_to_back_requests_are_not_a_rhythm() {
    let a = assess((0..60).map(|i| request(i * 2, 1, RequestOutcome::Answered(200))));
    assert!(
        !a.reasons.iter().any(|r| r.starts_with("timing_cv=")),
        "{a:?}"
    );
}

#[test]
fn signals_of_an_old_window_fade_out() {
    let mut w = ClientWindow::default();
    for i in 0..20 {
        w.observe(&request(i, 1, RequestOutcome::Answered(401)), WINDOW);
    }
    let start = request(0, 1, RequestOutcome::Limited).at;
    let later = start.saturating_add(Nanos::from_secs(3 * 300));
    assert_eq!(w.signals(later, WINDOW).auth_failures, 0.0);
}

#[test]
fn a_longer_window_after_a_reload_starts_afresh_and_keeps_rolling() {
    let mut w = ClientWindow::default();
    let short = Nanos::from_secs(60);
    for i in 0..10 {
        w.observe(&request(i, 1, RequestOutcome::Answered(401)), short);
    }
    let at = request(10, 1, RequestOutcome::Answered(200)).at;
    w.observe(&request(10, 1, RequestOutcome::Answered(200)), WINDOW);
    assert_eq!(w.signals(at, WINDOW).auth_failures, 0.0);
    let later = at.saturating_add(Nanos::from_secs(3 * 300));
    assert_eq!(w.signals(later, WINDOW).requests, 0.0, "still rolls");
}

#[test]
fn scaled_limits_admit_less_and_keep_the_cost() {
    let rate = Rate::new(10, Nanos::from_secs(1)).expect("rate");
    let limit = Limit::Gcra(Gcra::new(rate, 20).expect("gcra"));
    let half = limit.scaled(0.5, 1);
    assert_eq!(half.capacity(), 10);
    let Limit::Gcra(g) = half else {
        panic!("still gcra")
    };
    assert_eq!(g.emission_interval(), Nanos(200_000_000));
    assert_eq!(limit.scaled(0.01, 3).capacity(), 3);
}

#[test]
fn levels_round_trip_and_raise() {
    for l in Level::ALL {
        assert_eq!(Level::parse(l.as_str()), Some(l));
        assert_eq!(Level::from_index(l.index()), l);
        assert!(l.raised() >= l);
    }
    assert_eq!(Level::Normal.raised(), Level::Elevated);
}

proptest! {
    /// Whatever arrives in whatever order, the signals are finite, non-negative and
    /// never count more requests than were observed.
    #[test]
    fn signals_are_sane(steps in proptest::collection::vec((0u64..600_000, 0u64..50, 0u16..600), 0..200)) {
        let mut w = ClientWindow::default();
        let mut max_at = Timestamp::EPOCH;
        for (at, endpoint, status) in &steps {
            let o = request(*at, *endpoint, RequestOutcome::Answered(*status));
            w.observe(&o, WINDOW);
            max_at = max_at.max(o.at);
        }
        let s = w.signals(max_at, WINDOW);
        prop_assert!(s.requests <= steps.len() as f64);
        for v in [s.requests, s.request_rate, s.errors, s.auth_failures, s.endpoints, s.gaps] {
            prop_assert!(v.is_finite() && v >= 0.0);
        }
        if let Some(cv) = s.timing_cv { prop_assert!(cv.is_finite() && cv >= 0.0); }
        let a = Scoring::default().assess(&s);
        prop_assert!(a.score.is_finite() && a.score >= 0.0);
    }
}
