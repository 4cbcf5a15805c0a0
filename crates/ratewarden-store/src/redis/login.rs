//! [`LoginStore`] on Redis: each operation is one call of `scripts/login.lua` on one
//! subject's keys (an account's, or an address's), so it is atomic and cluster-safe.

use super::keys;
use super::threat::{int, micros};
use super::RedisStore;
use crate::error::StoreError;
use crate::login::{AccountRules, Admission, Attempt, Finished, LoginStore};
use ratewarden_core::clock::Clock;
use ratewarden_core::login::{LockoutScope, Outcome};
use ratewarden_core::Nanos;
use redis::{FromRedisValue, Value};

/// The script, hashed once.
static LOGIN: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("../../scripts/login.lua")));

impl<C: Clock> RedisStore<C> {
    async fn login_call<T: FromRedisValue>(
        &self,
        subject: &str,
        args: &[String],
    ) -> Result<T, StoreError> {
        let key = keys::login_key(&self.settings.key_prefix, subject);
        self.run_script(&LOGIN, key, args).await
    }
}

/// Milliseconds for the script, at least 1 (Redis refuses a zero expiry).
fn millis(span: Nanos) -> String {
    span.as_nanos().div_ceil(1_000_000).max(1).to_string()
}

impl<C: Clock> LoginStore for RedisStore<C> {
    async fn begin(
        &self,
        account: &str,
        address: &str,
        rules: &AccountRules,
    ) -> Result<Admission, StoreError> {
        let scope = match rules.scope {
            LockoutScope::Account => "0",
            LockoutScope::AccountAndIp => "1",
        };
        let args = [
            "begin".to_owned(),
            rules.failures.to_string(),
            millis(rules.window),
            millis(rules.lockout),
            scope.to_owned(),
            millis(rules.in_flight_for),
            address.to_owned(),
        ];
        let reply: Vec<Value> = self.login_call(account, &args).await?;
        let verdict = reply.first().map(text).transpose()?;
        match (verdict.as_deref(), reply.as_slice()) {
            (Some("locked"), [_, remaining]) => {
                Ok(Admission::Locked(Nanos(micros(int(remaining)?).as_nanos())))
            }
            (Some("busy"), _) => Ok(Admission::Busy),
            (Some("ok"), [_, failures, known, addresses, since]) => {
                Ok(Admission::Admitted(Attempt {
                    failures: u32::try_from(int(failures)?).unwrap_or(0),
                    since_failure: u64::try_from(int(since)?)
                        .ok()
                        .map(|us| Nanos(us.saturating_mul(1000))),
                    known_address: int(known)? == 1,
                    addresses: u64::try_from(int(addresses)?).unwrap_or(0),
                }))
            }
            _ => Err(protocol("begin", &reply)),
        }
    }

    async fn finish(
        &self,
        account: &str,
        address: &str,
        outcome: Outcome,
        rules: &AccountRules,
    ) -> Result<Finished, StoreError> {
        let outcome = match outcome {
            Outcome::Failure => "f",
            Outcome::Success => "s",
            Outcome::Inconclusive => "i",
        };
        let args = [
            "finish".to_owned(),
            rules.failures.to_string(),
            millis(rules.window),
            millis(rules.lockout),
            outcome.to_owned(),
            address.to_owned(),
            millis(rules.known_for),
        ];
        let reply: Vec<Value> = self.login_call(account, &args).await?;
        let [failures, locked_ms] = reply.as_slice() else {
            return Err(protocol("finish", &reply));
        };
        let locked_ms = u64::try_from(int(locked_ms)?).unwrap_or(0);
        Ok(Finished {
            failures: u32::try_from(int(failures)?).unwrap_or(0),
            locked_for: (locked_ms > 0).then(|| Nanos::from_millis(locked_ms)),
        })
    }

    async fn tried(
        &self,
        route: &str,
        address: &str,
        account: &str,
        window: Nanos,
    ) -> Result<u64, StoreError> {
        let args = [
            "tried".to_owned(),
            millis(window),
            route.to_owned(),
            account.to_owned(),
        ];
        let distinct: i64 = self.login_call(address, &args).await?;
        Ok(u64::try_from(distinct).unwrap_or(0))
    }
}

fn text(v: &Value) -> Result<String, StoreError> {
    String::from_redis_value(v.clone())
        .map_err(|e| StoreError::Protocol(format!("login script: {e}")))
}

fn protocol(op: &str, reply: &[Value]) -> StoreError {
    StoreError::Protocol(format!("login script: unexpected {op} reply {reply:?}"))
}
