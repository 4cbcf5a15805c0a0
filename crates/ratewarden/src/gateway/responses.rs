//! Every response the gateway writes itself, and the rate-limit headers: one place for
//! status codes, problem bodies (RFC 9457) and header rendering.
//!
//! Headers follow draft-ietf-httpapi-ratelimit-headers-11 (`RateLimit-Policy`,
//! `RateLimit`, one list item per rule) and the common `X-RateLimit-*` trio, whose
//! `Reset` is in seconds from now (like the draft's `t`).

use super::Body;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ratewarden_core::{Decision, Limit};

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
    /// Written with `push_str` and `itoa` rather than `write!`: every response carries
    /// these, and the formatting machinery cost more than the rest of a 429. `None`
    /// when no rule applied.
    fn of(outcomes: &[RuleOutcome<'_>], speaker: usize) -> Option<RateLimitValues> {
        if outcomes.is_empty() {
            return None;
        }
        let mut digits = itoa::Buffer::new();
        let mut policy = String::with_capacity(32 * outcomes.len());
        let mut state = String::with_capacity(32 * outcomes.len());
        for (i, o) in outcomes.iter().enumerate() {
            for field in [&mut policy, &mut state] {
                if i > 0 {
                    field.push_str(", ");
                }
                field.push('"');
                field.push_str(o.name);
                field.push('"');
            }
            let window = o.limit.window().as_secs_ceil().max(1);
            let mut parameter = |field: &mut String, key: &str, value: u64| {
                field.push_str(key);
                field.push_str(digits.format(value));
            };
            parameter(&mut policy, ";q=", u64::from(o.decision.limit));
            parameter(&mut policy, ";w=", window);
            parameter(&mut state, ";r=", u64::from(o.decision.remaining));
            parameter(&mut state, ";t=", o.decision.reset_after.as_secs_ceil());
        }
        Some(RateLimitValues {
            policy: owned_value(policy)?,
            state: owned_value(state)?,
            speaker: outcomes.get(speaker).map(|o| {
                [
                    number(u64::from(o.decision.limit)),
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
/// touches no shared reference count.
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
        _ => HeaderValue::from(n),
    }
}

/// `value` as a header value without copying it (the `String` becomes its bytes).
/// Rule names are checked by the configuration, so this fails only on a bug.
fn owned_value(value: String) -> Option<HeaderValue> {
    let value = HeaderValue::from_maybe_shared(Bytes::from(value)).ok();
    debug_assert!(value.is_some(), "a rule name the configuration let through");
    value
}

/// The headers a 429 carries besides `Content-Type`, in the order its values are given
/// to [`rejection_headers`].
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
fn rejection_headers(values: [HeaderValue; 6]) -> HeaderMap {
    struct Template {
        headers: HeaderMap,
        /// For each header as the map lists it, the index of its value, if it takes one.
        slots: Vec<Option<usize>>,
    }
    thread_local! {
        static TEMPLATE: Template = {
            let mut headers = HeaderMap::with_capacity(7);
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
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

/// 429 with a problem body naming the violated rules.
pub fn too_many_requests(outcomes: &[RuleOutcome<'_>], speaker: usize) -> Response<Body> {
    let violated = outcomes.iter().filter(|o| !o.decision.allowed);
    let retry_after = violated
        .clone()
        .map(|o| o.decision.retry_after.as_secs_ceil())
        .max()
        .unwrap_or(1)
        .clamp(1, 86_400 * 366);
    let rule = outcomes.get(speaker).map_or("", |o| o.name);
    // Written by hand rather than through serde_json or `write!`: this is the hot path
    // under attack. Rule names are restricted by configuration to characters that need
    // no escaping in JSON or in a structured-field string.
    let mut digits = itoa::Buffer::new();
    let retry = digits.format(retry_after);
    let mut body = String::with_capacity(320);
    for part in [
        r#"{"type":"https://ratewarden.dev/problems/rate-limited","title":"Too Many Requests","status":429,"detail":"rate limit \""#,
        rule,
        r#"\" exceeded; retry in "#,
        retry,
        r#" s","error":"rate_limited","rule":""#,
        rule,
        r#"","retry_after":"#,
        retry,
        r#","violated-policies":["#,
    ] {
        body.push_str(part);
    }
    for (i, o) in violated.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push('"');
        body.push_str(o.name);
        body.push('"');
    }
    body.push_str("]}");
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let retry_after = number(retry_after);
    match RateLimitValues::of(outcomes, speaker) {
        Some(RateLimitValues {
            policy,
            state,
            speaker: Some([limit, remaining, reset]),
        }) => {
            *response.headers_mut() =
                rejection_headers([retry_after, policy, state, limit, remaining, reset]);
        }
        // No rule to speak for: the headers that apply, one by one.
        values => {
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            headers.insert(RETRY_AFTER, retry_after);
            if let Some(values) = values {
                values.insert_into(headers);
            }
        }
    }
    response
}

/// 403 for a client on a rule's deny list.
pub fn forbidden(rule: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "https://ratewarden.dev/problems/forbidden",
        "title": "Forbidden",
        "status": 403,
        "detail": "this client is not allowed",
        "error": "forbidden",
        "rule": rule,
    });
    problem(StatusCode::FORBIDDEN, &body)
}

/// 403 for a client on the `[reputation] deny` list.
pub fn deny_listed() -> Response<Body> {
    let body = serde_json::json!({
        "type": "https://ratewarden.dev/problems/forbidden",
        "title": "Forbidden",
        "status": 403,
        "detail": "this client's address is on the gateway's deny list",
        "error": "forbidden",
        "reason": "deny_list",
    });
    problem(StatusCode::FORBIDDEN, &body)
}

/// 403 for a client that adaptive defence has blocked, for `retry_after` more.
pub fn blocked(retry_after: ratewarden_core::Nanos) -> Response<Body> {
    let seconds = retry_after.as_secs_ceil().max(1);
    let body = serde_json::json!({
        "type": "https://ratewarden.dev/problems/blocked",
        "title": "Forbidden",
        "status": 403,
        "detail": "this client is blocked for a while after repeated abuse",
        "error": "forbidden",
        "reason": "blocked",
        "retry_after": seconds,
    });
    let mut response = problem(StatusCode::FORBIDDEN, &body);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// A login attempt refused: the account is locked out (`error = "account_locked"`, at
/// the route's lockout status) or must wait (`"login_throttled"`, 429).
pub fn login_refused(
    status: StatusCode,
    error: &str,
    detail: &str,
    login: &str,
    retry_after: ratewarden_core::Nanos,
) -> Response<Body> {
    let seconds = retry_after.as_secs_ceil().max(1);
    let body = serde_json::json!({
        "type": format!("https://ratewarden.dev/problems/{error}"),
        "title": status.canonical_reason().unwrap_or("Too Many Requests"),
        "status": status.as_u16(),
        "detail": detail,
        "error": error,
        "login": login,
        "retry_after": seconds,
    });
    let mut response = problem(status, &body);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// 413 for a body larger than the gateway will read.
pub fn payload_too_large(detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "https://ratewarden.dev/problems/payload-too-large",
        "title": "Content Too Large",
        "status": 413,
        "detail": detail,
        "error": "payload_too_large",
    });
    let mut response = problem(StatusCode::PAYLOAD_TOO_LARGE, &body);
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// 408 for a request whose body did not come in time.
pub fn request_timeout(detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "https://ratewarden.dev/problems/request-timeout",
        "title": "Request Timeout",
        "status": 408,
        "detail": detail,
        "error": "request_timeout",
    });
    let mut response = problem(StatusCode::REQUEST_TIMEOUT, &body);
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// 400 for a request the gateway will not interpret (bad path, smuggling attempt).
pub fn bad_request(detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "https://ratewarden.dev/problems/bad-request",
        "title": "Bad Request",
        "status": 400,
        "detail": detail,
        "error": "bad_request",
    });
    let mut response = problem(StatusCode::BAD_REQUEST, &body);
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// 503 when the limiter cannot decide and the failure policy is to refuse: the client
/// did nothing wrong, so this is never a 429.
pub fn limiter_unavailable(retry_after: std::time::Duration) -> Response<Body> {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let body = serde_json::json!({
        "type": "https://ratewarden.dev/problems/limiter_unavailable",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "the rate limiter's store is unavailable and the gateway is configured to refuse requests meanwhile (store.on_error = \"deny\")",
        "error": "limiter_unavailable",
        "retry_after": seconds,
    });
    let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, &body);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// 502 or 504 when the upstream fails.
pub fn upstream_failure(status: StatusCode, detail: &str) -> Response<Body> {
    let error = if status == StatusCode::GATEWAY_TIMEOUT {
        "upstream_timeout"
    } else {
        "upstream_unavailable"
    };
    let body = serde_json::json!({
        "type": format!("https://ratewarden.dev/problems/{error}"),
        "title": status.canonical_reason().unwrap_or("Bad Gateway"),
        "status": status.as_u16(),
        "detail": detail,
        "error": error,
    });
    problem(status, &body)
}

fn problem(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::{too_many_requests, RuleOutcome};
    use http_body_util::BodyExt;
    use ratewarden_core::{Decision, Gcra, Limit, Nanos};

    fn outcome<'a>(name: &'a str, limit: &'a Limit, allowed: bool, reset: u64) -> RuleOutcome<'a> {
        RuleOutcome {
            name,
            limit,
            decision: Decision {
                allowed,
                limit: 5,
                remaining: u32::from(allowed),
                reset_after: Nanos(reset * 1_000_000_000),
                retry_after: Nanos(if allowed { 0 } else { reset * 1_000_000_000 }),
            },
        }
    }

    #[test]
    fn a_429_without_a_speaking_rule_has_the_headers_that_apply() {
        let limit = Limit::Gcra(Gcra::new("5/s".parse().unwrap(), 5).unwrap());
        let outcomes = [outcome("auth", &limit, false, 2)];
        let response = too_many_requests(&outcomes, 9);
        let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "retry-after",
                "ratelimit-policy",
                "ratelimit"
            ]
        );
        assert_eq!(response.headers()["retry-after"], "2");
        let response = too_many_requests(&[], 0);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.headers().len(), 2);
    }

    #[test]
    fn numbers_render_in_decimal_from_the_table_and_beyond_it() {
        for n in [0, 7, 1023, 1024, 86_400, u64::MAX] {
            assert_eq!(super::number(n).to_str().unwrap(), n.to_string());
        }
    }

    #[tokio::test]
    async fn a_429_names_every_violated_rule_in_its_headers_and_body() {
        let limit = Limit::Gcra(Gcra::new("5/s".parse().unwrap(), 5).unwrap());
        let outcomes = [
            outcome("api", &limit, true, 1),
            outcome("auth", &limit, false, 2),
            outcome("admin", &limit, false, 3),
        ];
        let response = too_many_requests(&outcomes, 1);
        assert_eq!(response.status(), 429);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "application/problem+json");
        assert_eq!(header("retry-after"), "3");
        assert_eq!(
            header("ratelimit-policy"),
            r#""api";q=5;w=1, "auth";q=5;w=1, "admin";q=5;w=1"#
        );
        assert_eq!(
            header("ratelimit"),
            r#""api";r=1;t=1, "auth";r=0;t=2, "admin";r=0;t=3"#
        );
        assert_eq!(header("x-ratelimit-limit"), "5");
        assert_eq!(header("x-ratelimit-remaining"), "0");
        assert_eq!(header("x-ratelimit-reset"), "2");
        assert_eq!(response.headers().len(), 7, "{:?}", response.headers());
        assert!(
            response.headers().values().all(|v| v != "unset"),
            "a placeholder left: {:?}",
            response.headers()
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], 429);
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["rule"], "auth");
        assert_eq!(body["retry_after"], 3);
        assert_eq!(
            body["detail"],
            r#"rate limit "auth" exceeded; retry in 3 s"#
        );
        assert_eq!(
            body["violated-policies"],
            serde_json::json!(["auth", "admin"])
        );
    }
}
