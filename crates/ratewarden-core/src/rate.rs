//! Rates as users write them: `10/s`, `5/m`, `100/hour`, `1000/d`, `10r/s` (nginx),
//! `5/10m` (django-ratelimit's multiplied unit).
//!
//! A [`Rate`] is a positive count per positive period. Parsing is the only place where the
//! text form is understood; every error quotes the input and says what is wrong with it.

use crate::time::{Nanos, NANOS_PER_SEC};
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

/// A number of events per period, e.g. 10 per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    count: NonZeroU32,
    period: Nanos,
    /// The period as written (`10m` stays `10m`), for display.
    unit: Unit,
    multiplier: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    fn parse(word: &str) -> Option<Unit> {
        Some(match word {
            "s" | "sec" | "second" | "seconds" => Unit::Second,
            "m" | "min" | "minute" | "minutes" => Unit::Minute,
            "h" | "hr" | "hour" | "hours" => Unit::Hour,
            "d" | "day" | "days" => Unit::Day,
            _ => return None,
        })
    }

    fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Unit::Second => "s",
            Unit::Minute => "m",
            Unit::Hour => "h",
            Unit::Day => "d",
        }
    }
}

/// Why a text is not a rate; displays as `"10/fortnight" is not a rate: unknown unit "fortnight"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a rate: {reason}")]
pub struct RateError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: RateErrorReason,
}

/// The specific fault in a rejected rate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateErrorReason {
    /// Nothing but whitespace.
    #[error("it is empty; write a count per unit, such as \"10/s\" or \"100/hour\"")]
    Empty,
    /// No `/` between count and unit.
    #[error("expected COUNT/UNIT, such as \"10/s\", \"5/m\" or \"100/hour\"")]
    MissingSlash,
    /// The count is not a whole number.
    #[error("count {0:?} is not a positive whole number")]
    BadCount(String),
    /// The count is zero.
    #[error("count must be at least 1 (to block everything, use a deny rule)")]
    ZeroCount,
    /// The count does not fit in 32 bits.
    #[error("count {0} is larger than the maximum of {max}", max = u32::MAX)]
    CountTooLarge(String),
    /// The unit is not one of s, m, h, d (or their words).
    #[error("unknown unit {0:?}; use s, m, h, d or second, minute, hour, day")]
    UnknownUnit(String),
    /// The unit multiplier (`10` in `5/10m`) is not a positive whole number.
    #[error("unit multiplier {0:?} is not a positive whole number")]
    BadMultiplier(String),
    /// The period is longer than can be represented.
    #[error("the period is too long")]
    PeriodTooLong,
    /// More than one event per nanosecond.
    #[error("more than one event per nanosecond cannot be limited")]
    TooFast,
}

impl Rate {
    /// `count` events per `period`; `None` if either is zero or the rate exceeds one per
    /// nanosecond. Prefer parsing, which also keeps the unit for display.
    pub fn new(count: u32, period: Nanos) -> Option<Rate> {
        let count = NonZeroU32::new(count)?;
        if period.as_nanos() < u64::from(count.get()) {
            return None;
        }
        Some(Rate {
            count,
            period,
            unit: Unit::Second,
            multiplier: 0,
        })
    }

    /// Events per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period.
    pub fn period(&self) -> Nanos {
        self.period
    }

    /// The time one event "costs" when spread evenly: period / count, rounded up so the
    /// rate enforced is never above the rate configured.
    pub fn emission_interval(&self) -> Nanos {
        Nanos(self.period.as_nanos().div_ceil(u64::from(self.count.get())))
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(input: &str) -> Result<Rate, RateError> {
        parse(input).map_err(|reason| RateError {
            input: input.to_owned(),
            reason,
        })
    }
}

fn parse(input: &str) -> Result<Rate, RateErrorReason> {
    let text = input.trim();
    if text.is_empty() {
        return Err(RateErrorReason::Empty);
    }
    let (count_text, unit_text) = text.split_once('/').ok_or(RateErrorReason::MissingSlash)?;
    let count_text = count_text.trim();
    // nginx writes "10r/s"; the r carries no meaning.
    let count_text = count_text.strip_suffix('r').unwrap_or(count_text).trim();
    let count = parse_count(count_text)?;

    let unit_text = unit_text.trim();
    let digits = unit_text.bytes().take_while(u8::is_ascii_digit).count();
    let (multiplier_text, word) = unit_text.split_at(digits);
    let multiplier = if multiplier_text.is_empty() {
        1
    } else {
        match multiplier_text.parse::<u32>() {
            Ok(m) if m > 0 => m,
            _ => return Err(RateErrorReason::BadMultiplier(multiplier_text.to_owned())),
        }
    };
    let word = word.trim();
    let unit = Unit::parse(&word.to_ascii_lowercase())
        .ok_or_else(|| RateErrorReason::UnknownUnit(word.to_owned()))?;
    let period = unit
        .seconds()
        .checked_mul(u64::from(multiplier))
        .and_then(|s| s.checked_mul(NANOS_PER_SEC))
        .ok_or(RateErrorReason::PeriodTooLong)?;
    if period < u64::from(count.get()) {
        return Err(RateErrorReason::TooFast);
    }
    Ok(Rate {
        count,
        period: Nanos(period),
        unit,
        multiplier: if multiplier_text.is_empty() {
            0
        } else {
            multiplier
        },
    })
}

fn parse_count(text: &str) -> Result<NonZeroU32, RateErrorReason> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RateErrorReason::BadCount(text.to_owned()));
    }
    match text.parse::<u32>() {
        Ok(0) => Err(RateErrorReason::ZeroCount),
        Ok(n) => Ok(NonZeroU32::new(n).ok_or(RateErrorReason::ZeroCount)?),
        // Only digits, so the only way to fail is size.
        Err(_) => Err(RateErrorReason::CountTooLarge(text.to_owned())),
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.multiplier == 0 && self.period.as_nanos() != self.unit.seconds() * NANOS_PER_SEC {
            // Built with Rate::new from a period that is no whole unit.
            return write!(f, "{}/{}ns", self.count, self.period.as_nanos());
        }
        if self.multiplier > 0 {
            write!(
                f,
                "{}/{}{}",
                self.count,
                self.multiplier,
                self.unit.symbol()
            )
        } else {
            write!(f, "{}/{}", self.count, self.unit.symbol())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Rate {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn units_short_and_long() {
        for (text, count, secs) in [
            ("10/s", 10, 1),
            ("5/m", 5, 60),
            ("100/h", 100, 3_600),
            ("1000/d", 1000, 86_400),
            ("10/second", 10, 1),
            ("10/seconds", 10, 1),
            ("3/minute", 3, 60),
            ("3/minutes", 3, 60),
            ("100/hour", 100, 3_600),
            ("2/hours", 2, 3_600),
            ("1/day", 1, 86_400),
            ("7/days", 7, 86_400),
            ("10r/s", 10, 1),
            ("30r/m", 30, 60),
            (" 10 / s ", 10, 1),
            ("10/S", 10, 1),
            ("5/10m", 5, 600),
        ] {
            let r = rate(text);
            assert_eq!(r.count(), count, "{text}");
            assert_eq!(r.period(), Nanos::from_secs(secs), "{text}");
        }
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(rate("10r/s").to_string(), "10/s");
        assert_eq!(rate("100/hour").to_string(), "100/h");
        assert_eq!(rate("5/10m").to_string(), "5/10m");
    }

    #[test]
    fn emission_interval_spreads_the_period() {
        assert_eq!(rate("10/s").emission_interval(), Nanos(100_000_000));
        assert_eq!(rate("1/m").emission_interval(), Nanos::from_secs(60));
    }

    #[test]
    fn rejects_with_the_input_quoted() {
        for (text, reason) in [
            ("0/s", RateErrorReason::ZeroCount),
            ("-1/m", RateErrorReason::BadCount("-1".into())),
            (
                "10/fortnight",
                RateErrorReason::UnknownUnit("fortnight".into()),
            ),
            ("", RateErrorReason::Empty),
            ("   ", RateErrorReason::Empty),
            ("10", RateErrorReason::MissingSlash),
            ("/s", RateErrorReason::BadCount("".into())),
            ("1.5/s", RateErrorReason::BadCount("1.5".into())),
            (
                "99999999999999999999/s",
                RateErrorReason::CountTooLarge("99999999999999999999".into()),
            ),
            (
                "4294967296/d",
                RateErrorReason::CountTooLarge("4294967296".into()),
            ),
            ("10/0m", RateErrorReason::BadMultiplier("0".into())),
            (
                "10/99999999999999d",
                RateErrorReason::BadMultiplier("99999999999999".into()),
            ),
            ("1/4294967295d", RateErrorReason::PeriodTooLong),
            ("10/", RateErrorReason::UnknownUnit("".into())),
            ("10/s/s", RateErrorReason::UnknownUnit("s/s".into())),
        ] {
            let err = text.parse::<Rate>().expect_err(text);
            assert_eq!(err.reason, reason, "{text}");
            assert_eq!(err.input, text);
            assert!(err
                .to_string()
                .starts_with(&format!("{text:?} is not a rate: ")));
        }
    }

    #[test]
    fn error_message_reads_well() {
        let err = "10/fortnight".parse::<Rate>().expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "\"10/fortnight\" is not a rate: unknown unit \"fortnight\"; use s, m, h, d or second, minute, hour, day"
        );
    }

    #[test]
    fn count_larger_than_nanoseconds_is_too_fast() {
        assert!(Rate::new(10, Nanos(5)).is_none());
        assert!(Rate::new(0, Nanos(5)).is_none());
        assert_eq!(
            Rate::new(2, Nanos(1_500_000_000)).map(|r| r.to_string()),
            Some("2/1500000000ns".into())
        );
        assert_eq!(
            Rate::new(2, Nanos::from_secs(1)).map(|r| r.to_string()),
            Some("2/s".into())
        );
        assert!("1000000000/s".parse::<Rate>().is_ok());
        assert_eq!(
            "4294967295/s".parse::<Rate>().map_err(|e| e.reason),
            Err(RateErrorReason::TooFast)
        );
    }
}
