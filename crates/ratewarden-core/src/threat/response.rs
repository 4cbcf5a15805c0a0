//! What a threat level does: scale a client's limits, and block it for a while when it
//! hits one; and how blocks grow for repeat offenders.

use super::score::Level;
use crate::algorithm::Limit;
use crate::time::Nanos;

/// The answer to one level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelResponse {
    /// Multiplier on every rule's rate and burst (1.0: unchanged; 0.0: nothing passes).
    pub rate_factor: f64,
    /// When set, hitting a limit at this level blocks the client this long (before
    /// escalation); with a zero `rate_factor`, any request does.
    pub block_for: Option<Nanos>,
}

impl LevelResponse {
    /// Whether a client at this level is refused whatever it asks.
    pub fn refuses_everything(&self) -> bool {
        self.rate_factor <= 0.0
    }

    /// `limit` as this level enforces it (see [`Limit::scaled`]); `None` when nothing
    /// passes.
    pub fn scale(&self, limit: &Limit, min_capacity: u32) -> Option<Limit> {
        if self.refuses_everything() {
            return None;
        }
        if self.rate_factor >= 1.0 {
            return Some(*limit);
        }
        Some(limit.scaled(self.rate_factor, min_capacity))
    }
}

/// The responses of all four levels.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelResponses([LevelResponse; 4]);

impl Default for LevelResponses {
    fn default() -> LevelResponses {
        let minutes = |m: u64| Some(Nanos::from_secs(m * 60));
        LevelResponses([
            LevelResponse {
                rate_factor: 1.0,
                block_for: None,
            },
            LevelResponse {
                rate_factor: 0.5,
                block_for: None,
            },
            LevelResponse {
                rate_factor: 0.2,
                block_for: minutes(5),
            },
            LevelResponse {
                rate_factor: 0.0,
                block_for: minutes(60),
            },
        ])
    }
}

impl LevelResponses {
    /// The response of `level`.
    pub fn get(&self, level: Level) -> &LevelResponse {
        &self.0[usize::from(level.index())]
    }

    /// Replaces the response of `level`.
    pub fn set(&mut self, level: Level, response: LevelResponse) {
        self.0[usize::from(level.index())] = response;
    }
}

/// How blocks grow for a client blocked again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Escalation {
    /// Each new block lasts this many times the previous one.
    pub repeat_factor: f64,
    /// No block lasts longer.
    pub max_block: Nanos,
    /// A client's past blocks are forgotten this long after its last one ended.
    pub forget_after: Nanos,
}

impl Default for Escalation {
    fn default() -> Escalation {
        let day = Nanos::from_secs(24 * 3600);
        Escalation {
            repeat_factor: 2.0,
            max_block: day,
            forget_after: day,
        }
    }
}

impl Escalation {
    /// How long the `offence`-th block (1 for the first) lasts, when the level asks for
    /// `base`: `base × repeat_factor^(offence-1)`, at most `max_block`.
    pub fn block_length(&self, base: Nanos, offence: u32) -> Nanos {
        let exponent = offence.saturating_sub(1).min(64) as i32;
        let length = base.as_nanos() as f64 * self.repeat_factor.max(1.0).powi(exponent);
        let max = self.max_block.as_nanos();
        if !length.is_finite() || length >= max as f64 {
            Nanos(max)
        } else {
            Nanos(length as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_double_up_to_the_cap() {
        let e = Escalation {
            repeat_factor: 2.0,
            max_block: Nanos::from_secs(3600),
            forget_after: Nanos::from_secs(3600),
        };
        let five = Nanos::from_secs(300);
        assert_eq!(e.block_length(five, 1), five);
        assert_eq!(e.block_length(five, 2), Nanos::from_secs(600));
        assert_eq!(e.block_length(five, 3), Nanos::from_secs(1200));
        assert_eq!(e.block_length(five, 5), Nanos::from_secs(3600));
        assert_eq!(e.block_length(five, u32::MAX), Nanos::from_secs(3600));
    }
}
