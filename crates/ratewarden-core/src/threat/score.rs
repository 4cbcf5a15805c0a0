//! From signals to a threat score, a level and the reasons for it.

use super::signals::Signals;
use std::fmt;

/// How much a client is trusted, from `Normal` to `Critical`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Full limits.
    #[default]
    Normal,
    /// Suspicious.
    Elevated,
    /// Hostile: a limit hit blocks.
    High,
    /// Hostile and persistent.
    Critical,
}

impl Level {
    /// Every level, from the lowest.
    pub const ALL: [Level; 4] = [Level::Normal, Level::Elevated, Level::High, Level::Critical];

    /// The configuration word.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Elevated => "elevated",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }

    /// The level named by a configuration word.
    pub fn parse(word: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == word)
    }

    /// The next level up (critical stays critical).
    pub fn raised(self) -> Level {
        match self {
            Level::Normal => Level::Elevated,
            Level::Elevated => Level::High,
            Level::High | Level::Critical => Level::Critical,
        }
    }

    /// Position from 0 (normal) to 3 (critical), for compact storage and gauges.
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The level at a position; out of range is critical.
    pub fn from_index(i: u8) -> Level {
        Level::ALL
            .get(usize::from(i))
            .copied()
            .unwrap_or(Level::Critical)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One signal's part of the score: nothing below `threshold`; from it, `weight` times
/// the value's multiple of the threshold, capped at [`MAX_MULTIPLE`] so no single signal
/// outweighs everything.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weighted {
    /// The value from which the signal counts.
    pub threshold: f64,
    /// Points at the threshold.
    pub weight: f64,
}

/// The most multiples of its threshold one signal is credited with.
pub const MAX_MULTIPLE: f64 = 3.0;

/// The most multiples of `min_gaps` clockwork timing is credited with.
pub const MAX_TIMING_MULTIPLE: f64 = 2.0;

impl Weighted {
    const fn new(threshold: f64, weight: f64) -> Weighted {
        Weighted { threshold, weight }
    }

    fn points(&self, value: f64) -> f64 {
        if self.threshold <= 0.0 || value < self.threshold {
            return 0.0;
        }
        self.weight * (value / self.threshold).min(MAX_MULTIPLE)
    }
}

/// Weights and thresholds of the score; defaults are tuned so that one strong signal
/// makes a client `elevated`, and guessing passwords or enumerating makes it `high`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scoring {
    /// Requests per second, averaged over the window.
    pub request_rate: Weighted,
    /// Share of requests the upstream answered with 4xx/5xx (once `min_requests` seen).
    pub error_ratio: Weighted,
    /// Upstream 401/403 answers.
    pub auth_failures: Weighted,
    /// Requests refused by our limits.
    pub limited: Weighted,
    /// Distinct endpoints.
    pub endpoints: Weighted,
    /// Requests with forwarding headers from an untrusted peer.
    pub spoofed_forwarding: Weighted,
    /// User-agent changes.
    pub agent_changes: Weighted,
    /// Login attempts while counted as credential stuffing (login protection).
    pub credential_stuffing: Weighted,
    /// Addresses of the client's network that failed authentication, counted for a
    /// client that failed repeatedly too: one attacker rotating through a block of
    /// addresses. At most 75 points by default: with an automation user agent still
    /// short of `critical`, so a network's failures alone never block for long.
    pub failing_neighbours: Weighted,
    /// Points for a known automation user agent.
    pub automation_agent: f64,
    /// Points for clockwork timing: a gap coefficient of variation at or below
    /// `regular_cv` over at least `min_gaps` gaps. The evidence grows with the rhythm's
    /// length, as other signals grow past their threshold, but only up to
    /// [`MAX_TIMING_MULTIPLE`] times: clockwork alone makes a client `high` at most
    /// (a browser polling on a timer is regular too); with an automation user agent
    /// it reaches `critical`.
    pub regular_timing: f64,
    /// See `regular_timing`.
    pub regular_cv: f64,
    /// See `regular_timing`.
    pub min_gaps: f64,
    /// Regularity counts only for gaps at least this long on average (milliseconds):
    /// back-to-back requests are evenly spaced by the network, not by a scheduler, and
    /// a browser loading a page fires them so.
    pub min_mean_gap_ms: f64,
    /// Requests before ratios (error ratio) mean anything.
    pub min_requests: f64,
    /// Scores from which each level starts: elevated, high, critical.
    pub elevated: f64,
    /// See `elevated`.
    pub high: f64,
    /// See `elevated`.
    pub critical: f64,
}

impl Default for Scoring {
    fn default() -> Scoring {
        Scoring {
            request_rate: Weighted::new(5.0, 20.0),
            error_ratio: Weighted::new(0.5, 20.0),
            auth_failures: Weighted::new(5.0, 30.0),
            limited: Weighted::new(10.0, 15.0),
            endpoints: Weighted::new(60.0, 30.0),
            spoofed_forwarding: Weighted::new(1.0, 15.0),
            agent_changes: Weighted::new(5.0, 20.0),
            credential_stuffing: Weighted::new(1.0, 40.0),
            failing_neighbours: Weighted::new(10.0, 25.0),
            automation_agent: 20.0,
            regular_timing: 40.0,
            regular_cv: 0.1,
            min_gaps: 20.0,
            min_mean_gap_ms: 50.0,
            min_requests: 20.0,
            elevated: 30.0,
            high: 60.0,
            critical: 100.0,
        }
    }
}

/// A client's score, its level and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assessment {
    /// The sum of the signals' points.
    pub score: f64,
    /// The level the score reaches.
    pub level: Level,
    /// Each signal that scored, as `name=value`, strongest first.
    pub reasons: Vec<String>,
}

impl Scoring {
    /// The level a score reaches.
    pub fn level(&self, score: f64) -> Level {
        if score >= self.critical {
            Level::Critical
        } else if score >= self.high {
            Level::High
        } else if score >= self.elevated {
            Level::Elevated
        } else {
            Level::Normal
        }
    }

    /// Scores `signals`. Reasons are only written for signals that score: this runs
    /// after every request.
    pub fn assess(&self, s: &Signals) -> Assessment {
        let mut parts: Vec<(f64, String)> = Vec::new();
        let mut add = |points: f64, reason: &dyn Fn() -> String| {
            if points > 0.0 {
                parts.push((points, reason()));
            }
        };
        add(self.request_rate.points(s.request_rate), &|| {
            format!("request_rate={:.1}/s", s.request_rate)
        });
        if s.requests >= self.min_requests {
            let ratio = s.errors / s.requests;
            add(self.error_ratio.points(ratio), &|| {
                format!("error_ratio={ratio:.2}")
            });
        }
        add(self.auth_failures.points(s.auth_failures), &|| {
            format!("auth_failures={}", s.auth_failures.round())
        });
        add(self.limited.points(s.limited), &|| {
            format!("limited={}", s.limited.round())
        });
        add(self.endpoints.points(s.endpoints), &|| {
            format!("endpoints={}", s.endpoints.round())
        });
        add(self.spoofed_forwarding.points(s.spoofed), &|| {
            format!("spoofed_forwarding={}", s.spoofed.round())
        });
        add(self.agent_changes.points(s.agent_changes), &|| {
            format!("agent_changes={}", s.agent_changes.round())
        });
        add(self.credential_stuffing.points(s.stuffing), &|| {
            format!("credential_stuffing={}", s.stuffing.round())
        });
        add(
            self.failing_neighbours.points(s.failing_neighbours),
            &|| format!("failing_neighbours={}", s.failing_neighbours.round()),
        );
        if s.automation >= 1.0 {
            add(self.automation_agent, &|| "automation_agent".to_owned());
        }
        if let (Some(cv), Some(mean)) = (s.timing_cv, s.mean_gap_ms) {
            if s.gaps >= self.min_gaps && cv <= self.regular_cv && mean >= self.min_mean_gap_ms {
                let evidence = (s.gaps / self.min_gaps).min(MAX_TIMING_MULTIPLE);
                add(self.regular_timing * evidence, &|| {
                    format!("timing_cv={cv:.2}")
                });
            }
        }
        parts.sort_by(|a, b| b.0.total_cmp(&a.0));
        let score: f64 = parts.iter().map(|p| p.0).sum();
        Assessment {
            score,
            level: self.level(score),
            reasons: parts.into_iter().map(|p| p.1).collect(),
        }
    }
}
