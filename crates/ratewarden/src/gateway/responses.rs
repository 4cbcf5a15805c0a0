//! Every response the gateway writes itself: one place for status codes and problem
//! bodies (RFC 9457). The rate-limit headers are rendered in
//! [`super::rate_limit_headers`].

use super::rate_limit_headers::{rejection_headers, RuleOutcome};
use super::recent::Recent;
use super::Body;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::cell::RefCell;

/// The content type of every body the gateway writes itself (RFC 9457 problems).
pub(super) const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// 429 with a problem body naming the violated rules.
///
/// Under a flood, one client after another gets the same bytes for a second at a time,
/// so each thread keeps the last few 429s it rendered and clones one whose
/// [`RejectionInputs`] are the request's.
pub fn too_many_requests(outcomes: &[RuleOutcome<'_>], speaker: usize) -> Response<Body> {
    let (headers, body) = remembered_rejection(outcomes, speaker);
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    *response.headers_mut() = headers;
    response
}

/// A 429's headers and body: a recent rendering with the same inputs, or a new one.
fn remembered_rejection(outcomes: &[RuleOutcome<'_>], speaker: usize) -> (HeaderMap, Bytes) {
    thread_local! {
        static RENDERED: RefCell<Recent<RejectionInputs, (HeaderMap, Bytes), 4>> =
            const { RefCell::new(Recent::new()) };
    }
    let retry_after = retry_after(outcomes);
    RENDERED.with_borrow_mut(|rendered| {
        rendered.get_or_render(
            |kept| kept.are_those_of(outcomes, speaker, retry_after),
            || {
                let inputs = RejectionInputs::of(outcomes, speaker, retry_after);
                (inputs, render_rejection(outcomes, speaker, retry_after))
            },
        )
    })
}

/// The seconds a 429 asks the client to wait: until every violated rule admits it.
fn retry_after(outcomes: &[RuleOutcome<'_>]) -> u64 {
    outcomes
        .iter()
        .filter(|o| !o.decision.allowed)
        .map(|o| o.decision.retry_after.as_secs_ceil())
        .max()
        .unwrap_or(1)
        .clamp(1, 86_400 * 366)
}

/// A 429's headers and body, rendered anew.
fn render_rejection(
    outcomes: &[RuleOutcome<'_>],
    speaker: usize,
    retry_after: u64,
) -> (HeaderMap, Bytes) {
    (
        rejection_headers(outcomes, speaker, retry_after),
        rejection_body(outcomes, speaker, retry_after),
    )
}

/// Everything a 429's headers and body are rendered from, in the units they show:
/// equal inputs, equal bytes.
#[derive(PartialEq)]
struct RejectionInputs {
    speaker: usize,
    retry_after: u64,
    rules: Vec<(String, RuleFigures)>,
}

/// What a 429 shows of one rule besides its name.
#[derive(Clone, Copy, PartialEq)]
struct RuleFigures {
    window_secs: u64,
    quota: u32,
    remaining: u32,
    reset_secs: u64,
    violated: bool,
}

impl RuleFigures {
    fn of(outcome: &RuleOutcome<'_>) -> RuleFigures {
        let decision = &outcome.decision;
        RuleFigures {
            window_secs: outcome.limit.window().as_secs_ceil(),
            quota: decision.limit,
            remaining: decision.remaining,
            reset_secs: decision.reset_after.as_secs_ceil(),
            violated: !decision.allowed,
        }
    }
}

impl RejectionInputs {
    fn of(outcomes: &[RuleOutcome<'_>], speaker: usize, retry_after: u64) -> RejectionInputs {
        RejectionInputs {
            speaker,
            retry_after,
            rules: outcomes
                .iter()
                .map(|o| (o.name.to_owned(), RuleFigures::of(o)))
                .collect(),
        }
    }

    /// Whether these are the inputs of a 429 for `outcomes`.
    fn are_those_of(&self, outcomes: &[RuleOutcome<'_>], speaker: usize, retry_after: u64) -> bool {
        self.speaker == speaker
            && self.retry_after == retry_after
            && self.rules.len() == outcomes.len()
            && self
                .rules
                .iter()
                .zip(outcomes)
                .all(|((name, figures), o)| name == o.name && *figures == RuleFigures::of(o))
    }
}

/// The problem body of a 429. Written by hand rather than through serde_json or
/// `write!`: this is the hot path under attack. Rule names are restricted by
/// configuration to characters that need no escaping in JSON or in a structured-field
/// string.
fn rejection_body(outcomes: &[RuleOutcome<'_>], speaker: usize, retry_after: u64) -> Bytes {
    let rule = outcomes.get(speaker).map_or("", |o| o.name);
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
    for (i, o) in outcomes.iter().filter(|o| !o.decision.allowed).enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push('"');
        body.push_str(o.name);
        body.push('"');
    }
    body.push_str("]}");
    Bytes::from(body)
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

/// 501 for `CONNECT`: the gateway is no forward proxy. Counted as refused.
///
/// Cold and out of line: rarely called, and kept out of the code every request runs.
/// How large that code is decides whether the compiler builds each request's future in
/// place; a few lines more in the service once cost every request about 400
/// instructions, most of them copying that future (BENCHMARKS.md, issue 3).
#[cold]
#[inline(never)]
pub fn connect_refused(metrics: &crate::metrics::Metrics) -> Response<Body> {
    metrics
        .refused
        .get_or_create(&crate::metrics::Refusal {
            reason: "connect_method",
        })
        .inc();
    let body = serde_json::json!({
        "type": "https://ratewarden.dev/problems/not-implemented",
        "title": "Not Implemented",
        "status": 501,
        "detail": "CONNECT is not proxied: the gateway fronts one API and opens no tunnels on request",
        "error": "method_not_supported",
    });
    let mut response = problem(StatusCode::NOT_IMPLEMENTED, &body);
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// 503 when the limiter cannot decide and the failure policy is to refuse: the client
/// did nothing wrong, so this is never a 429.
pub fn limiter_unavailable(retry_after: std::time::Duration) -> Response<Body> {
    unavailable(
        "limiter_unavailable",
        "the rate limiter's store is unavailable and the gateway is configured to refuse requests meanwhile (store.on_error = \"deny\")",
        retry_after,
    )
}

/// 503 when a request admitted by a `delay` rule cannot be held: as many are already
/// waiting as `[server] max_delayed` allows.
pub fn delay_queue_full(retry_after: std::time::Duration) -> Response<Body> {
    unavailable(
        "delay_queue_full",
        "the request was within its limits, but the gateway already holds as many delayed requests as it may",
        retry_after,
    )
}

/// 503 when a client may not open one more WebSocket tunnel: `reason` is
/// `tunnel_limit` (too many open in all) or `tunnel_limit_per_client` (from its
/// network).
pub fn tunnel_limit(reason: &'static str) -> Response<Body> {
    let detail = if reason == "tunnel_limit_per_client" {
        "this client has as many WebSocket connections open as the gateway allows one client"
    } else {
        "the gateway has as many WebSocket connections open as it allows"
    };
    unavailable(reason, detail, std::time::Duration::from_secs(5))
}

/// 503 with `Retry-After` (whole seconds, rounded up).
fn unavailable(error: &str, detail: &str, retry_after: std::time::Duration) -> Response<Body> {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let body = serde_json::json!({
        "type": format!("https://ratewarden.dev/problems/{error}"),
        "title": "Service Unavailable",
        "status": 503,
        "detail": detail,
        "error": error,
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
    response.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
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
    use super::{remembered_rejection, render_rejection, retry_after, too_many_requests};
    use crate::gateway::rate_limit_headers::RuleOutcome;
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use ratewarden_core::algorithm::FixedWindow;
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

    fn any_limit() -> impl Strategy<Value = Limit> {
        let gcra = Limit::Gcra(Gcra::new("5/s".parse().unwrap(), 5).unwrap());
        let hourly = Limit::FixedWindow(FixedWindow::new("3/h".parse().unwrap()).unwrap());
        prop_oneof![Just(gcra), Just(hourly)]
    }

    /// Spans around whole seconds, so that some differ only below a second (rendered
    /// alike) and some just across one (rendered apart).
    fn any_span() -> impl Strategy<Value = Nanos> {
        prop_oneof![Just(0_u64), 1..3_000_000_000_u64, Just(59_900_000_000)].prop_map(Nanos)
    }

    fn any_rule() -> impl Strategy<Value = (&'static str, Limit, Decision)> {
        let decision = (any::<bool>(), 1..=5_u32, 0..=2_u32, any_span(), any_span()).prop_map(
            |(allowed, limit, remaining, reset_after, retry_after)| Decision {
                allowed,
                limit,
                remaining,
                reset_after,
                retry_after,
            },
        );
        (
            prop_oneof![Just("auth"), Just("api"), Just("au")],
            any_limit(),
            decision,
        )
    }

    proptest! {
        /// Whatever a thread answered before, a 429 is the one its outcomes render to:
        /// a remembered one is given only for the very same inputs.
        #[test]
        fn a_remembered_429_is_the_one_its_outcomes_render_to(
            requests in proptest::collection::vec(
                (proptest::collection::vec(any_rule(), 0..=3), 0..=3_usize),
                1..40,
            )
        ) {
            for (rules, speaker) in &requests {
                let outcomes: Vec<RuleOutcome<'_>> = rules
                    .iter()
                    .map(|(name, limit, decision)| RuleOutcome { name, limit, decision: *decision })
                    .collect();
                let (headers, body) = remembered_rejection(&outcomes, *speaker);
                let (fresh_headers, fresh_body) =
                    render_rejection(&outcomes, *speaker, retry_after(&outcomes));
                prop_assert_eq!(&headers, &fresh_headers);
                prop_assert_eq!(&body, &fresh_body);
            }
        }
    }
}
