//! The limiter script: its source (the files in `scripts/`), the arguments a check
//! becomes, and the reading of its reply.
//!
//! The script keeps time in whole microseconds, since Redis's Lua numbers are doubles
//! (exact below 2^53, and nanoseconds since 1970 are above that). Parameters are
//! converted here, rounding every interval up, so Redis is never looser than the Rust
//! algorithms: at most a rounding of one microsecond per unit stricter.

use crate::error::StoreError;
use ratewarden_core::{Decision, Limit, Nanos};
use redis::Value;

/// The script: shared helpers, the three algorithms, then the entry point.
pub const SOURCE: &str = concat!(
    include_str!("../../scripts/common.lua"),
    "\n",
    include_str!("../../scripts/gcra.lua"),
    "\n",
    include_str!("../../scripts/sliding_window.lua"),
    "\n",
    include_str!("../../scripts/fixed_window.lua"),
    "\n",
    include_str!("../../scripts/limiter.lua"),
);

/// The script, hashed once.
pub(crate) static LIMITER: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SOURCE));

/// Values stay below this in the script so that its double arithmetic is exact
/// (`mul_div` needs its operands below 2^45 µs, about 407 days).
const MAX_PERIOD_MICROS: u64 = 1 << 45;
/// GCRA tolerances below this leave room for `now + τ` below 2^53 µs for centuries.
const MAX_TOLERANCE_MICROS: u64 = 1 << 51;

/// A limit the Redis store cannot run exactly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedLimit {
    /// A window longer than the script's arithmetic allows.
    #[error("a window of {0} is longer than the Redis store supports (about 400 days)")]
    PeriodTooLong(Nanos),
    /// A bucket that takes too long to refill.
    #[error("a bucket that takes {0} to refill is longer than the Redis store supports")]
    RefillTooLong(Nanos),
}

/// The script's view of a limit: algorithm name and three parameters, in microseconds.
pub(crate) struct ScriptLimit {
    algorithm: &'static str,
    params: [u64; 3],
}

impl ScriptLimit {
    pub(crate) fn of(limit: &Limit) -> Result<ScriptLimit, UnsupportedLimit> {
        match limit {
            Limit::Gcra(g) => {
                let interval = micros_ceil(g.emission_interval());
                let tolerance = interval.saturating_mul(u64::from(g.capacity()));
                if tolerance >= MAX_TOLERANCE_MICROS {
                    return Err(UnsupportedLimit::RefillTooLong(g.refill_time()));
                }
                Ok(ScriptLimit {
                    algorithm: "gcra",
                    params: [interval, tolerance, u64::from(g.capacity())],
                })
            }
            Limit::SlidingWindow(s) => Ok(ScriptLimit {
                algorithm: "sliding_window",
                params: [u64::from(s.limit()), window_micros(s.period())?, 0],
            }),
            Limit::FixedWindow(f) => Ok(ScriptLimit {
                algorithm: "fixed_window",
                params: [u64::from(f.limit()), window_micros(f.period())?, 0],
            }),
        }
    }
}

fn micros_ceil(n: Nanos) -> u64 {
    n.as_nanos().div_ceil(1000)
}

fn window_micros(period: Nanos) -> Result<u64, UnsupportedLimit> {
    let micros = micros_ceil(period);
    if micros >= MAX_PERIOD_MICROS {
        return Err(UnsupportedLimit::PeriodTooLong(period));
    }
    Ok(micros)
}

/// Checks that the Redis store can run `limit` exactly; configuration calls this so
/// that a rule it cannot run is refused at load time.
pub fn check_limit(limit: &Limit) -> Result<(), UnsupportedLimit> {
    ScriptLimit::of(limit).map(|_| ())
}

/// What the script is asked to do.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// Judge all checks; charge them all or none.
    Decide,
    /// Give back admissions (their written states) that the rest of the request denied.
    Refund,
}

/// Adds one check's key and arguments to an invocation.
pub(crate) fn push_check(
    invocation: &mut redis::ScriptInvocation<'_>,
    key: &str,
    limit: &ScriptLimit,
    cost: u32,
    written: &str,
) {
    invocation
        .key(key)
        .arg(limit.algorithm)
        .arg(cost)
        .arg(limit.params[0])
        .arg(limit.params[1])
        .arg(limit.params[2])
        .arg(written);
}

/// Starts an invocation: the mode, and the time (`None`: the server's clock).
pub(crate) fn begin(mode: Mode, now_micros: Option<u64>) -> redis::ScriptInvocation<'static> {
    let mut invocation = LIMITER.prepare_invoke();
    invocation.arg(match mode {
        Mode::Decide => "decide",
        Mode::Refund => "refund",
    });
    match now_micros {
        Some(now) => invocation.arg(now),
        None => invocation.arg(""),
    };
    invocation
}

/// One check's answer: the decision and the state written ("" when none was).
pub(crate) type Answer = (Decision, String);

const VALUES_PER_CHECK: usize = 6;

/// Reads the decide reply for `expected` checks.
pub(crate) fn read_decisions(reply: Value, expected: usize) -> Result<Vec<Answer>, StoreError> {
    let Value::Array(values) = reply else {
        return Err(unexpected("not an array", &reply));
    };
    if values.len() != expected * VALUES_PER_CHECK {
        return Err(StoreError::Protocol(format!(
            "limiter script answered {} values for {expected} checks",
            values.len()
        )));
    }
    values
        .chunks_exact(VALUES_PER_CHECK)
        .map(|v| {
            let decision = Decision {
                allowed: int(&v[0])? == 1,
                limit: u32::try_from(int(&v[1])?).unwrap_or(u32::MAX),
                remaining: u32::try_from(int(&v[2])?).unwrap_or(0),
                reset_after: micros_to_nanos(int(&v[3])?),
                retry_after: match int(&v[4])? {
                    -1 => Nanos::MAX,
                    wait => micros_to_nanos(wait),
                },
            };
            let written = match &v[5] {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Value::Nil => String::new(),
                other => return Err(unexpected("state", other)),
            };
            Ok((decision, written))
        })
        .collect()
}

fn int(value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected("integer", other)),
    }
}

fn micros_to_nanos(micros: i64) -> Nanos {
    Nanos(u64::try_from(micros).unwrap_or(0).saturating_mul(1000))
}

fn unexpected(what: &str, value: &Value) -> StoreError {
    StoreError::Protocol(format!("limiter script: expected {what}, got {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_round_up_to_whole_microseconds() {
        let limit = Limit::Gcra(
            ratewarden_core::algorithm::Gcra::new("3/s".parse().expect("rate"), 2).expect("gcra"),
        );
        let s = ScriptLimit::of(&limit).expect("supported");
        assert_eq!(s.algorithm, "gcra");
        // 333,333,334 ns rounds up to 333,334 µs.
        assert_eq!(s.params, [333_334, 666_668, 2]);
    }

    #[test]
    fn windows_beyond_the_scripts_arithmetic_are_refused() {
        let year: ratewarden_core::Rate = "10/365d".parse().expect("rate");
        let long: ratewarden_core::Rate = "10/500d".parse().expect("rate");
        let ok =
            Limit::SlidingWindow(ratewarden_core::algorithm::SlidingWindow::new(year).expect("sw"));
        let too_long =
            Limit::FixedWindow(ratewarden_core::algorithm::FixedWindow::new(long).expect("fw"));
        assert!(check_limit(&ok).is_ok());
        assert!(matches!(
            check_limit(&too_long),
            Err(UnsupportedLimit::PeriodTooLong(_))
        ));
    }

    #[test]
    fn a_short_reply_is_a_protocol_error() {
        let reply = Value::Array(vec![Value::Int(1)]);
        assert!(matches!(
            read_decisions(reply, 1),
            Err(StoreError::Protocol(_))
        ));
    }
}
