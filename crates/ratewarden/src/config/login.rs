//! `[[login]]`: protected login endpoints, validated into [`LoginRoute`]s, plus the
//! per-address rule each `per_ip` setting becomes (a sliding window keyed by address,
//! checked with every other rule, so it answers with the same 429 and headers).

use super::compile::{parse_duration, route, rule_name_problem, Errors};
use super::raw::{RawLogin, RawPrivacy};
use ratewarden_core::login::{
    AccountLimit, AccountSource, DelayMode, LockoutScope, LoginRoute, ProgressiveDelay,
    StuffingThresholds,
};
use ratewarden_core::policy::{Action, KeyTemplate, Rule};
use ratewarden_core::{Limit, Nanos, Rate, RuleName, SlidingWindow};
use ratewarden_detect::Pseudonymiser;
use std::collections::HashSet;
use std::time::Duration;

/// The largest `max_body`: the body is held in memory while the account is looked for.
const MAX_BODY_LIMIT: u64 = 1 << 20;
/// The default `max_body`.
const DEFAULT_MAX_BODY: u64 = 16 << 10;
/// The longest progressive delay that holds a request (a connection stays open).
const MAX_HELD: Duration = Duration::from_secs(300);

/// Everything `[[login]]` compiles to.
#[derive(Default)]
pub(super) struct Logins {
    pub(super) routes: Vec<LoginRoute>,
    /// The `per_ip` limits, as rules.
    pub(super) rules: Vec<Rule>,
    /// Pseudonyms for accounts and addresses (`[privacy] secret`).
    pub(super) pseudonymiser: Option<Pseudonymiser>,
}

/// Validates every `[[login]]`; `names` holds the rule names taken so far.
pub(super) fn logins(
    raw: &[RawLogin],
    privacy: &RawPrivacy,
    secret_checked_elsewhere: bool,
    names: &mut HashSet<String>,
    errors: &mut Errors,
) -> Logins {
    let mut out = Logins::default();
    if raw.is_empty() {
        return out;
    }
    match &privacy.secret {
        None => errors.add(
            "privacy.secret",
            "[[login]] accounts are pseudonymised with a keyed HMAC before they reach the store, a log or an alert: set [privacy] secret (the same on every gateway)",
        ),
        Some(s) if s.len() < super::abuse::MIN_SECRET && !secret_checked_elsewhere => errors.add(
            "privacy.secret",
            format!(
                "is {} characters long; use at least {} random characters",
                s.len(),
                super::abuse::MIN_SECRET
            ),
        ),
        Some(s) => out.pseudonymiser = Some(Pseudonymiser::new(s.as_bytes())),
    }
    let mut login_names = HashSet::new();
    for (i, login) in raw.iter().enumerate() {
        let field = format!("login[{i}]");
        if !login_names.insert(login.name.clone()) {
            errors.add(
                format!("{field}.name"),
                format!("{:?} is used by an earlier [[login]]", login.name),
            );
        }
        if let Some((route, rule)) = one(login, &field, names, errors) {
            out.routes.push(route);
            out.rules.extend(rule);
        }
    }
    out
}

fn one(
    raw: &RawLogin,
    field: &str,
    names: &mut HashSet<String>,
    errors: &mut Errors,
) -> Option<(LoginRoute, Option<Rule>)> {
    let f = |name: &str| format!("{field}.{name}");
    if let Some(problem) = rule_name_problem(&raw.name) {
        errors.add(f("name"), problem);
    }
    let matcher = route(&raw.route, &f("match"), errors);
    if raw.route.path.is_none() && raw.route.path_prefix.is_none() {
        errors.add(
            f("match"),
            "name the login endpoint: path = \"/api/v1/auth/login\" (or path_prefix)",
        );
    }
    let account = errors.check(&f("account"), AccountSource::parse(&raw.account));
    let refuse_unidentified = match raw.unidentified.as_deref().unwrap_or("pass") {
        "pass" => Some(false),
        "reject" => Some(true),
        other => {
            errors.add(
                f("unidentified"),
                format!("{other:?}: use pass (forward, counted against the address) or reject (400/413)"),
            );
            None
        }
    };
    let max_body = max_body(raw.max_body.as_ref(), &f("max_body"), errors);
    let failure_status = match &raw.failure_status {
        None => Some(vec![401, 403]),
        Some(list) if list.is_empty() => {
            errors.add(
                f("failure_status"),
                "list at least one status, such as [401, 403]",
            );
            None
        }
        Some(list) => {
            let mut statuses = Vec::new();
            for (i, s) in list.iter().enumerate() {
                match u16::try_from(*s) {
                    Ok(s) if (400..600).contains(&s) => statuses.push(s),
                    _ => errors.add(
                        format!("{field}.failure_status[{i}]"),
                        format!("{s} is not a 4xx or 5xx status"),
                    ),
                }
            }
            Some(statuses)
        }
    };
    let duration =
        |errors: &mut Errors, name: &str, value: &Option<String>, default: u64| match value {
            None => Some(Nanos::from_secs(default)),
            Some(v) => errors.check(&f(name), parse_duration(v)).map(Nanos::from),
        };
    let count = |errors: &mut Errors, name: &str, value: Option<i64>, default: u32| match value {
        None => Some(default),
        Some(n) if (1..=1_000_000).contains(&n) => Some(n as u32),
        Some(n) => {
            errors.add(f(name), format!("{n} must be between 1 and 1000000"));
            None
        }
    };
    let per_account = (|| {
        let p = &raw.per_account;
        Some(AccountLimit {
            failures: count(errors, "per_account.failures", p.failures, 5)?,
            window: duration(errors, "per_account.window", &p.window, 3600)?,
            lockout: duration(errors, "per_account.lockout", &p.lockout, 3600)?,
        })
    })();
    let delay = match &raw.progressive_delay {
        None => Some((None, DelayMode::Hold)),
        Some(d) => (|| {
            let after = count(errors, "progressive_delay.after", d.after, 3)?;
            let base = duration(errors, "progressive_delay.base", &d.base, 1)?;
            let max = duration(errors, "progressive_delay.max", &d.max, 30)?;
            let mode = match d.mode.as_deref().unwrap_or("delay") {
                "delay" => DelayMode::Hold,
                "reject" => DelayMode::Reject,
                other => {
                    errors.add(
                        f("progressive_delay.mode"),
                        format!("{other:?} is not a mode; use delay (hold the request) or reject (429 with Retry-After)"),
                    );
                    return None;
                }
            };
            if max < base {
                errors.add(
                    f("progressive_delay.max"),
                    "must be at least progressive_delay.base",
                );
                return None;
            }
            if mode == DelayMode::Hold && max.to_duration() > MAX_HELD {
                errors.add(
                    f("progressive_delay.max"),
                    format!("holds requests (and their connections) for at most {MAX_HELD:?}; lower it, or use mode = \"reject\""),
                );
                return None;
            }
            Some((Some(ProgressiveDelay { after, base, max }), mode))
        })(),
    };
    let challenge_after = match raw.challenge_after {
        None => Some(None),
        Some(n) => count(errors, "challenge_after", Some(n), 0).map(Some),
    };
    let lockout_scope = match raw.lockout_scope.as_deref().unwrap_or("account") {
        "account" => Some(LockoutScope::Account),
        "account+ip" => Some(LockoutScope::AccountAndIp),
        other => {
            errors.add(
                f("lockout_scope"),
                format!("{other:?} is not a scope; use account or account+ip"),
            );
            None
        }
    };
    let lockout_status = match raw.lockout_status {
        None | Some(429) => Some(429),
        Some(423) => Some(423),
        Some(other) => {
            errors.add(f("lockout_status"), format!("{other}: use 429 or 423"));
            None
        }
    };
    let stuffing = (|| {
        Some(StuffingThresholds {
            accounts_per_ip: count(
                errors,
                "stuffing.accounts_per_ip",
                raw.stuffing.accounts_per_ip,
                20,
            )?,
            ips_per_account: count(
                errors,
                "stuffing.ips_per_account",
                raw.stuffing.ips_per_account,
                20,
            )?,
        })
    })();
    let per_ip_rule = match &raw.per_ip {
        None => Some(None),
        Some(p) => {
            let attempts = count(errors, "per_ip.attempts", Some(p.attempts), 0);
            let window = errors
                .check(&f("per_ip.window"), parse_duration(&p.window))
                .map(Nanos::from);
            let name = format!("{}:per_ip", raw.name);
            if !names.insert(name.clone()) {
                errors.add(
                    f("name"),
                    format!("its per-address rule would be named {name:?}, which a [[rules]] entry already uses"),
                );
            }
            match (attempts, window, matcher.clone()) {
                (Some(attempts), Some(window), Some(route)) => {
                    let limit = Rate::new(attempts, window)
                        .ok_or_else(|| "cannot be expressed as a rate".to_owned())
                        .and_then(|rate| SlidingWindow::new(rate).map_err(|e| e.to_string()));
                    errors.check(&f("per_ip"), limit).map(|limit| {
                        let limit = Limit::SlidingWindow(limit);
                        Some(Rule {
                            name: RuleName::versioned(&name, &format!("{limit:?}")),
                            route,
                            key: KeyTemplate::parse("ip").ok()?,
                            limit,
                            cost: 1,
                            action: Action::Reject,
                            allow: Vec::new(),
                            deny: Vec::new(),
                        })
                    })
                }
                _ => None,
            }
        }
    };
    let (delay, delay_mode) = delay?;
    Some((
        LoginRoute {
            name: raw.name.clone(),
            route: matcher?,
            account: account?,
            max_body: max_body?,
            refuse_unidentified: refuse_unidentified?,
            failure_status: failure_status?,
            per_account: per_account?,
            delay,
            delay_mode,
            challenge_after: challenge_after?,
            lockout_scope: lockout_scope?,
            lockout_status: lockout_status?,
            stuffing: stuffing?,
        },
        per_ip_rule?,
    ))
}

/// `max_body`: bytes as a number, or `"16KiB"`, `"1MiB"` (`k`/`KB`/`m`/`MB` are read as
/// powers of 1024, as nginx reads them).
fn max_body(value: Option<&toml::Value>, field: &str, errors: &mut Errors) -> Option<usize> {
    let bytes = match value {
        None => Ok(DEFAULT_MAX_BODY),
        Some(toml::Value::Integer(n)) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
        Some(toml::Value::String(s)) => parse_size(s),
        Some(other) => Err(format!("{other} is not a size, such as \"16KiB\"")),
    };
    match bytes {
        Ok(0) => {
            errors.add(field, "must be more than zero");
            None
        }
        Ok(n) if n > MAX_BODY_LIMIT => {
            errors.add(
                field,
                format!("{n} bytes; at most 1MiB is read to find the account (a larger body goes on unread)"),
            );
            None
        }
        Ok(n) => usize::try_from(n).ok(),
        Err(e) => {
            errors.add(field, e);
            None
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a size, such as \"16KiB\""))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(format!("{text:?} is not a size, such as \"16KiB\"")),
    };
    Ok(n.saturating_mul(factor))
}
