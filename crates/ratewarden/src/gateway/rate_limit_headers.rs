//! The rate-limit headers, rendered in one place: the fields of
//! draft-ietf-httpapi-ratelimit-headers-11 (`RateLimit-Policy`, `RateLimit`, one list
//! item per rule) and the common `X-RateLimit-*` trio, whose `Reset` is in seconds from
//! now (like the draft's `t`), on every response a rule applied to; and the whole
//! header set of a 429, which is built from a template (it is the hot path under
//! attack).

use super::recent::Recent;
use super::responses::PROBLEM_JSON;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use ratewarden_core::{Decision, Limit};
use std::cell::RefCell;
use std::rc::Rc;

/// A rule's decision for the headers.
pub struct RuleOutcome<'a> {
    /// The rule's name.
    pub name: &'a str,
    /// Its limit (for the policy's window).
    pub limit: &'a Limit,
    /// Its decision.
    pub decision: Decision,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Adds the rate-limit headers: the draft fields for every rule, the `X-RateLimit-*`
/// trio for `speaker` (the most restrictive rule).
pub fn add_rate_limit_headers(
    headers: &mut HeaderMap,
    outcomes: &[RuleOutcome<'_>],
    speaker: usize,
) {
    if let Some(values) = RateLimitValues::of(outcomes, speaker) {
        values.insert_into(headers);
    }
}

/// The rate-limit headers' values.
struct RateLimitValues {
    /// `RateLimit-Policy`, one item per rule.
    policy: HeaderValue,
    /// `RateLimit`, one item per rule.
    state: HeaderValue,
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` of the speaking rule, if any.
    speaker: Option<[HeaderValue; 3]>,
}

impl RateLimitValues {
    /// `None` when no rule applied.
    fn of(outcomes: &[RuleOutcome<'_>], speaker: usize) -> Option<RateLimitValues> {
        if outcomes.is_empty() {
            return None;
        }
        let policy = policy_values(outcomes)?;
        let state = item_list(
            outcomes.iter().map(|o| {
                let remaining = u64::from(o.decision.remaining);
                (o.name, remaining, o.decision.reset_after.as_secs_ceil())
            }),
            ["r", "t"],
        )?;
        Some(RateLimitValues {
            policy: policy.field.clone(),
            state,
            speaker: outcomes
                .get(speaker)
                .zip(policy.quotas.get(speaker))
                .map(|(o, quota)| {
                    [
                        quota.clone(),
                        number(u64::from(o.decision.remaining)),
                        number(o.decision.reset_after.as_secs_ceil()),
                    ]
                }),
        })
    }

    /// Adds them to `headers` one by one (each name hashed on insertion).
    fn insert_into(self, headers: &mut HeaderMap) {
        headers.reserve(5);
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        headers.insert(RATELIMIT.clone(), self.state);
        if let Some([limit, remaining, reset]) = self.speaker {
            headers.insert(X_LIMIT.clone(), limit);
            headers.insert(X_REMAINING.clone(), remaining);
            headers.insert(X_RESET.clone(), reset);
        }
    }
}

/// A number as a header value. The small ones (most limits, counts left and seconds)
/// come from a table rendered once: a clone of a static value allocates nothing and
/// touches no shared reference count. A larger one (an hourly or daily quota) is
/// copied once into a block of its length: `HeaderValue::from(u64)` makes two.
fn number(n: u64) -> HeaderValue {
    const RENDERED: usize = 1024;
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    match usize::try_from(n) {
        Ok(i) if i < RENDERED => SMALL.get_or_init(|| {
            (0..RENDERED)
                .map(|i| HeaderValue::from_static(String::leak(i.to_string())))
                .collect()
        })[i]
            .clone(),
        _ => HeaderValue::from_str(itoa::Buffer::new().format(n))
            .unwrap_or_else(|_| HeaderValue::from(n)),
    }
}

/// What a set of rules says whatever the request: the `RateLimit-Policy` field, and
/// each rule's quota (its `X-RateLimit-Limit`).
struct PolicyValues {
    field: HeaderValue,
    quotas: Vec<HeaderValue>,
}

/// The [`PolicyValues`] of `outcomes`: one item per rule in the field, its quota and
/// window; `None` only on a bug (see [`item_list`]).
///
/// They change only with the rules and their quotas (a threat level scales them), not
/// from one request to the next, so each thread keeps the last few it rendered (one per
/// set of rules its routes match, mostly) and gives them again while the rules say the
/// same: a comparison instead of a string and a block for each value.
fn policy_values(outcomes: &[RuleOutcome<'_>]) -> Option<Rc<PolicyValues>> {
    /// The (name, quota, window) of each item, in order.
    type Items = Vec<(String, u64, u64)>;
    thread_local! {
        static RENDERED: RefCell<Recent<Items, Option<Rc<PolicyValues>>, 8>> =
            const { RefCell::new(Recent::new()) };
    }
    let items = outcomes.iter().map(|o| {
        let window = o.limit.window().as_secs_ceil().max(1);
        (o.name, u64::from(o.decision.limit), window)
    });
    let same = |kept: &Items| {
        kept.len() == outcomes.len()
            && kept
                .iter()
                .zip(items.clone())
                .all(|((name, q, w), (n, quota, window))| name == n && *q == quota && *w == window)
    };
    let render = || {
        let values = item_list(items.clone(), ["q", "w"]).map(|field| {
            Rc::new(PolicyValues {
                field,
                quotas: items.clone().map(|(_, quota, _)| number(quota)).collect(),
            })
        });
        let kept = items
            .clone()
            .map(|(n, q, w)| (n.to_owned(), q, w))
            .collect();
        (kept, values)
    };
    RENDERED.with_borrow_mut(|rendered| rendered.get_or_render(same, render))
}

/// A structured-field list with one item per rule, `"name";k=1;l=2, ...`, for `keys`
/// `[k, l]`, as a header value. Written with `push_str` and `itoa` rather than `write!`
/// (every response carries these, and the formatting machinery cost more than the rest
/// of a 429) into a string of its exact length, which then becomes the value's bytes
/// without a copy or a second block.
///
/// Rule names are checked by the configuration, so this is `None` only on a bug.
fn item_list<'a>(
    items: impl Iterator<Item = (&'a str, u64, u64)> + Clone,
    keys: [&str; 2],
) -> Option<HeaderValue> {
    let digits_of = |n: u64| n.checked_ilog10().map_or(1, |d| d as usize + 1);
    let length: usize = items
        .clone()
        .enumerate()
        .map(|(i, (name, first, second))| {
            // `, ` and `"name";k=` and `;l=`.
            let punctuation = if i > 0 { 2 } else { 0 } + 6;
            punctuation
                + name.len()
                + keys[0].len()
                + keys[1].len()
                + digits_of(first)
                + digits_of(second)
        })
        .sum();
    let mut digits = itoa::Buffer::new();
    let mut list = String::with_capacity(length);
    for (i, (name, first, second)) in items.enumerate() {
        if i > 0 {
            list.push_str(", ");
        }
        list.push('"');
        list.push_str(name);
        list.push_str("\";");
        list.push_str(keys[0]);
        list.push('=');
        list.push_str(digits.format(first));
        list.push(';');
        list.push_str(keys[1]);
        list.push('=');
        list.push_str(digits.format(second));
    }
    debug_assert_eq!(list.len(), length, "the length reckoned beforehand");
    let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(list)).ok();
    debug_assert!(value.is_some(), "a rule name the configuration let through");
    value
}

/// The headers a 429 carries besides `Content-Type`, in the order its values are given
/// to [`from_template`].
const REJECTION_HEADERS: [&HeaderName; 6] = [
    &RETRY_AFTER,
    &RATELIMIT_POLICY,
    &RATELIMIT,
    &X_LIMIT,
    &X_REMAINING,
    &X_RESET,
];

/// A 429's headers with `values` (for [`REJECTION_HEADERS`], in that order), cloned from
/// a map built once per thread: a clone makes two allocations and copies a few words
/// per header, where inserting hashes every name again (most of what a 429's headers
/// cost). A clone lists its headers in its template's order, so each value's place is
/// found once, when the template is built, by name.
fn from_template(values: [HeaderValue; 6]) -> HeaderMap {
    struct Template {
        headers: HeaderMap,
        /// For each header as the map lists it, the index of its value, if it takes one.
        slots: Vec<Option<usize>>,
    }
    thread_local! {
        static TEMPLATE: Template = {
            let mut headers = HeaderMap::with_capacity(7);
            headers.insert(CONTENT_TYPE, PROBLEM_JSON);
            for name in REJECTION_HEADERS {
                // A placeholder no real value can be, so a test sees one left behind.
                headers.insert(name.clone(), HeaderValue::from_static("unset"));
            }
            let slots = headers
                .keys()
                .map(|name| REJECTION_HEADERS.iter().position(|n| *n == name))
                .collect();
            Template { headers, slots }
        };
    }
    TEMPLATE.with(|template| {
        let mut headers = template.headers.clone();
        let mut values = values.map(Some);
        for (slot, (_, value)) in template.slots.iter().zip(headers.iter_mut()) {
            if let Some(given) = slot.and_then(|i| values[i].take()) {
                *value = given;
            }
        }
        headers
    })
}

/// The headers of a 429 problem response: `Content-Type`, `Retry-After` (seconds) and
/// the rate-limit headers of `outcomes`.
pub fn rejection_headers(
    outcomes: &[RuleOutcome<'_>],
    speaker: usize,
    retry_after: u64,
) -> HeaderMap {
    let retry_after = number(retry_after);
    match RateLimitValues::of(outcomes, speaker) {
        Some(RateLimitValues {
            policy,
            state,
            speaker: Some([limit, remaining, reset]),
        }) => from_template([retry_after, policy, state, limit, remaining, reset]),
        // No rule to speak for: the headers that apply, one by one.
        values => {
            let mut headers = HeaderMap::with_capacity(7);
            headers.insert(CONTENT_TYPE, PROBLEM_JSON);
            headers.insert(RETRY_AFTER, retry_after);
            if let Some(values) = values {
                values.insert_into(&mut headers);
            }
            headers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratewarden_core::algorithm::{FixedWindow, Gcra};
    use ratewarden_core::{Nanos, Rate};

    fn decision(limit: u32, remaining: u32, reset_secs: u64) -> Decision {
        Decision {
            allowed: remaining > 0,
            limit,
            remaining,
            reset_after: Nanos::from_secs(reset_secs),
            retry_after: Nanos::ZERO,
        }
    }

    #[test]
    fn every_rule_is_an_item_and_the_speaker_fills_the_trio() {
        let gcra = Limit::Gcra(
            Gcra::new(Rate::new(5, Nanos::from_secs(1)).expect("rate"), 5).expect("gcra"),
        );
        let hourly = Limit::FixedWindow(
            FixedWindow::new(Rate::new(3000, Nanos::from_secs(3600)).expect("rate"))
                .expect("window"),
        );
        // Two rules, one with a long name: one item each, in the rules' order.
        let long = "a".repeat(150);
        let outcomes = [
            RuleOutcome {
                name: "auth",
                limit: &gcra,
                decision: decision(5, 0, 2),
            },
            RuleOutcome {
                name: &long,
                limit: &hourly,
                decision: decision(3000, 2999, 1800),
            },
        ];
        let mut headers = HeaderMap::new();
        add_rate_limit_headers(&mut headers, &outcomes, 0);
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            get("ratelimit-policy").as_deref(),
            Some(format!("\"auth\";q=5;w=1, \"{long}\";q=3000;w=3600").as_str())
        );
        assert_eq!(
            get("ratelimit").as_deref(),
            Some(format!("\"auth\";r=0;t=2, \"{long}\";r=2999;t=1800").as_str())
        );
        assert_eq!(get("x-ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(get("x-ratelimit-remaining").as_deref(), Some("0"));
        assert_eq!(get("x-ratelimit-reset").as_deref(), Some("2"));

        let rejected = rejection_headers(&outcomes[..1], 0, 2);
        let get = |name: &str| rejected.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(get("ratelimit-policy"), Some("\"auth\";q=5;w=1"));
        assert_eq!(get("ratelimit"), Some("\"auth\";r=0;t=2"));
        assert_eq!(get("retry-after"), Some("2"));
        assert_eq!(get("content-type"), Some("application/problem+json"));
        assert!(rejected.values().all(|v| v != "unset"), "{rejected:?}");
    }

    #[test]
    fn the_policy_field_follows_the_rules_and_their_quotas() {
        let limit = |per_second: u32| {
            Limit::Gcra(
                Gcra::new(Rate::new(per_second, Nanos::from_secs(1)).expect("rate"), 5)
                    .expect("gcra"),
            )
        };
        let (five, ten) = (limit(5), limit(10));
        let field = |items: &[(&str, &Limit, u32)]| {
            let outcomes: Vec<RuleOutcome<'_>> = items
                .iter()
                .map(|(name, limit, quota)| RuleOutcome {
                    name,
                    limit,
                    decision: decision(*quota, 1, 1),
                })
                .collect();
            let values = policy_values(&outcomes).expect("values");
            let quotas: Vec<_> = values
                .quotas
                .iter()
                .map(|q| q.to_str().expect("text"))
                .collect();
            let expected: Vec<_> = items
                .iter()
                .map(|(_, _, quota)| quota.to_string())
                .collect();
            assert_eq!(quotas, expected, "each rule's quota");
            values.field.to_str().expect("text").to_owned()
        };
        // The same rules twice (the kept value given again), then each call differs from
        // the one before in one thing: a kept value must not be given for it.
        assert_eq!(field(&[("auth", &five, 5)]), "\"auth\";q=5;w=1");
        assert_eq!(field(&[("auth", &five, 5)]), "\"auth\";q=5;w=1");
        assert_eq!(
            field(&[("auth", &five, 2)]),
            "\"auth\";q=2;w=1",
            "a scaled quota"
        );
        assert_eq!(
            field(&[("auti", &five, 2)]),
            "\"auti\";q=2;w=1",
            "another name"
        );
        assert_eq!(
            field(&[("auti", &five, 2), ("api", &ten, 20)]),
            "\"auti\";q=2;w=1, \"api\";q=20;w=1",
            "another rule"
        );
        assert_eq!(
            field(&[("auti", &five, 2)]),
            "\"auti\";q=2;w=1",
            "one rule fewer"
        );
        let hourly = Limit::FixedWindow(
            FixedWindow::new(Rate::new(2, Nanos::from_secs(3600)).expect("rate")).expect("window"),
        );
        assert_eq!(
            field(&[("auti", &hourly, 2)]),
            "\"auti\";q=2;w=3600",
            "another window"
        );
        // Routes taken in turns are each given their own; past the sets remembered, the
        // oldest ones are rendered over, and every answer stays right.
        for round in 0..3 {
            for quota in 1..=12_u32 {
                let name = format!("r{quota}");
                assert_eq!(
                    field(&[(name.as_str(), &five, quota), ("api", &ten, 20)]),
                    format!("\"r{quota}\";q={quota};w=1, \"api\";q=20;w=1"),
                    "round {round}"
                );
                assert_eq!(field(&[("auth", &five, 5)]), "\"auth\";q=5;w=1");
            }
        }
    }

    #[test]
    fn numbers_render_in_decimal_from_the_table_and_beyond_it() {
        for n in [0, 7, 1023, 1024, 86_400, u64::MAX] {
            assert_eq!(super::number(n).to_str().unwrap(), n.to_string());
        }
    }
}
