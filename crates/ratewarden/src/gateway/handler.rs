//! One request, start to finish: refuse what cannot be read, identify the client,
//! evaluate the policy, ask the store once, then answer or forward.

use super::forward::{claims_client_address, forwarded_for, VouchedChain, X_FORWARDED_FOR};
use super::limiter::Verdict;
use super::login;
use super::rate_limit_headers::{self, RuleOutcome};
use super::responses;
use super::threat::{client_label, stable_hash, Standing, Trigger};
use super::worker::Worker;
use super::Body;
use crate::metrics::Refusal;
use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;
use ratewarden_core::clock::Clock;
use ratewarden_core::identity::{
    canonical_ip, client_address, client_network, vouched_chain, ClientAddress, ForwardingHeader,
};
use ratewarden_core::path::CanonicalPath;
use ratewarden_core::policy::{Action, ClientPolicy, RequestFacts, Rule};
use ratewarden_core::threat::{Observation, RequestOutcome};
use ratewarden_detect::Source;
use ratewarden_store::{Check, CounterKey, Decisions};
use std::net::{IpAddr, SocketAddr};

/// The rules of one request, and what goes with each: a handful, kept on the stack.
type Few<T> = smallvec::SmallVec<[T; 4]>;

/// Handles one request.
pub async fn handle(
    worker: &Worker,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let (gateway, upstream) = (&*worker.gateway, &*worker.upstream);
    let metrics = &gateway.metrics;
    let refuse = |reason: &'static str, detail: &str| {
        metrics.refused.get_or_create(&Refusal { reason }).inc();
        responses::bad_request(detail)
    };
    if request.method() == http::Method::CONNECT {
        // The gateway fronts one API; it is no forward proxy to open tunnels with.
        return responses::connect_refused(metrics);
    }
    // Request smuggling is settled before we see the request: hyper refuses conflicting
    // Content-Lengths and a Transfer-Encoding that does not end in chunked; when both
    // Transfer-Encoding and Content-Length come, it drops the length, reads the chunked
    // body and closes the connection after answering (RFC 9112, section 6.3), so no
    // second request can hide in the first one's body.
    let path = match CanonicalPath::parse(request.uri().path()) {
        Ok(p) => p,
        Err(e) => return refuse("bad_path", &format!("unreadable path: {e}")),
    };

    let policy = worker.policy();
    let clients = &policy.clients;
    let client = identify_client(peer.ip(), request.headers(), clients);
    let headers = request.headers();
    if client.spoofed_forwarding {
        metrics.spoofed_forwarding.inc();
    }
    // Reputation lists come before everything else: a denied address gets nothing more
    // from us, an allowed one (health checkers, partners) no limit.
    if policy.reputation.deny.contains(client.ip) {
        metrics
            .refused
            .get_or_create(&Refusal {
                reason: "deny_list",
            })
            .inc();
        return responses::deny_listed();
    }
    let allow_listed = policy.reputation.allow.contains(client.ip);
    let host = match request_host(&request) {
        Ok(host) => host,
        Err(detail) => return refuse("bad_host", detail),
    };
    if allow_listed {
        metrics.allow_listed.inc();
        vouch_for_the_chain(&mut request, client, peer, clients);
        return Box::pin(upstream.forward(request, client, metrics)).await;
    }
    let network = client_network(client.ip, clients.ipv6_prefix);
    // Adaptive defence: a blocked client gets nothing more; a suspicious one gets its
    // limits scaled down by its level.
    let defended = match &gateway.defence {
        Some(defence) => {
            let label = client_label(client.ip, network);
            let standing = Box::pin(defence.standing(&label)).await;
            if let Some(block) = &standing.block {
                metrics
                    .refused
                    .get_or_create(&Refusal { reason: "blocked" })
                    .inc();
                return responses::blocked(block.remaining(standing.now));
            }
            let response = defence.response(standing.level);
            if let Some(block_for) = response.block_for.filter(|_| response.refuses_everything()) {
                let plan = defence.plan(block_for, block_reasons(&standing, None));
                let trigger = trigger(&request, client.ip);
                if let Some(block) = Box::pin(defence.block(
                    &label,
                    &plan,
                    standing.level,
                    "automatic",
                    Some(&trigger),
                ))
                .await
                {
                    return responses::blocked(block.remaining(defence.now()));
                }
                // The store could not record the block: this level refuses anyway.
                return responses::blocked(block_for);
            }
            Some((defence, label, standing, response))
        }
        None => None,
    };
    // A header that keys a limit must come once: with two values the limiter would key
    // on one while the upstream may read the other (send a fresh random value first and
    // the real API key second, and every request gets a new bucket).
    let ambiguous_key_header = std::sync::atomic::AtomicBool::new(false);
    let (applicable, login_route) = {
        let lookup = |name: &str| {
            let mut values = headers.get_all(name).iter();
            let first = values.next()?;
            if values.next().is_some() {
                ambiguous_key_header.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Some(first.as_bytes())
        };
        let facts = RequestFacts {
            method: request.method().as_str(),
            host: host.as_deref(),
            path: &path,
            client_ip: client.ip,
            client_network: network,
            header: &lookup,
        };
        (policy.evaluate(&facts), policy.login_route(&facts))
    };
    if ambiguous_key_header.load(std::sync::atomic::Ordering::Relaxed) {
        return refuse(
            "ambiguous_key_header",
            "a header that identifies the client for rate limiting was sent more than once",
        );
    }
    if let Some(rule) = applicable.denied_by {
        worker.count(rule, "denied_cidr");
        return responses::forbidden(rule.name.as_str());
    }

    let started = gateway.clock.now();
    // The enforced rules and their checks, side by side (the store takes the checks as
    // one slice); `log_only` rules are checked on their own once the request is decided.
    let mut enforced: Few<&Rule> = Few::new();
    let mut checks: Few<Check<'_>> = Few::new();
    let mut shadow: Few<&(&Rule, String)> = Few::new();
    for entry in &applicable.checks {
        let (rule, key) = (entry.0, entry.1.as_str());
        if rule.action == Action::LogOnly {
            shadow.push(entry);
            continue;
        }
        // The limit as the client's threat level scales it (the same counter: a level
        // change neither resets nor doubles a client's allowance).
        let limit = match &defended {
            Some((_, _, _, response)) => {
                response.scale(&rule.limit, rule.cost).unwrap_or(rule.limit)
            }
            None => rule.limit,
        };
        match Check::new(CounterKey::new(&rule.name, key), limit, rule.cost) {
            Ok(check) => {
                enforced.push(rule);
                checks.push(check);
            }
            // Configuration refuses a cost its limit can never admit, and scaling keeps
            // it admissible: only a bug gets here, and the rule is left out whole.
            Err(error) => {
                tracing::error!(rule = %rule.name, %error, "rule not applied: its cost can never pass its limit");
            }
        }
    }
    let verdict = match gateway.store.decide_at_once(&checks) {
        Some(verdict) => verdict,
        None => gateway.store.decide(&checks, metrics).await,
    };
    let decisions = match verdict {
        Verdict::Decided(d) => d,
        Verdict::Unchecked => {
            for rule in &enforced {
                worker.count(rule, "unchecked");
            }
            vouch_for_the_chain(&mut request, client, peer, clients);
            return Box::pin(upstream.forward(request, client, metrics)).await;
        }
        Verdict::Refused(retry_after) => {
            for rule in &enforced {
                worker.count(rule, "refused_store_down");
            }
            return responses::limiter_unavailable(retry_after);
        }
    };
    let elapsed = gateway.clock.now().saturating_since(started);
    metrics
        .decision_seconds
        .observe(worker.index, elapsed.as_nanos() as f64 / 1e9);
    // `delay` rules (nginx's limit_req without nodelay): an admitted request is held
    // until its turn at the steady rate; beyond the burst it was denied anyway.
    let wait = if decisions.allowed() {
        delay_for(&enforced, &decisions)
    } else {
        std::time::Duration::ZERO
    };
    let mut delayed = false;
    if !wait.is_zero() {
        let Ok(_permit) = gateway.delayed.try_acquire() else {
            // Too many requests already held (`max_delayed`): refuse rather than queue
            // without bound. The client was within its limits, so this is the gateway's
            // capacity speaking: a 503, not a 429, and no violation. The store keeps
            // the admission charged (it has no refund), which only makes the limit
            // stricter.
            for rule in enforced.iter().filter(|r| r.action == Action::Delay) {
                worker.count(rule, "refused_delay_queue_full");
            }
            return responses::delay_queue_full(wait);
        };
        tokio::time::sleep(wait).await;
        delayed = true;
    }
    for (rule, key) in &shadow {
        if let Ok(check) = Check::new(CounterKey::new(&rule.name, key), rule.limit, rule.cost) {
            let Verdict::Decided(d) = Box::pin(gateway.store.decide(&[check], metrics)).await
            else {
                continue;
            };
            let verdict = if d.allowed() {
                "allowed"
            } else {
                "shadow_limited"
            };
            if !d.allowed() {
                tracing::info!(rule = %rule.name, client = %client.ip, path = %path, "log_only rule would have limited this request");
            }
            worker.count(rule, verdict);
        }
    }

    let outcomes: Few<RuleOutcome<'_>> = enforced
        .iter()
        .zip(&checks)
        .zip(decisions.as_slice())
        .map(|((rule, check), decision)| RuleOutcome {
            name: rule.name.as_str(),
            limit: check.limit(),
            decision: *decision,
        })
        .collect();
    // What defence needs to observe this request once it is answered.
    let observation = defended.as_ref().map(|(defence, _, _, _)| {
        let user_agent = request.headers().get(http::header::USER_AGENT);
        Observation {
            at: started,
            endpoint: stable_hash(path.as_str().as_bytes()),
            agent: user_agent.map_or(0, |ua| stable_hash(ua.as_bytes())),
            automation_agent: defence.is_automation(user_agent),
            spoofed_forwarding: client.spoofed_forwarding,
            credential_stuffing: false,
            outcome: RequestOutcome::Limited,
        }
    });
    let speaker = decisions.most_restrictive().map_or(0, |(i, _)| i);
    if !decisions.allowed() {
        for (rule, d) in enforced.iter().zip(decisions.as_slice()) {
            worker.count(
                rule,
                if d.allowed {
                    "allowed_but_not_charged"
                } else {
                    "limited"
                },
            );
        }
        let limited_by = outcomes.get(speaker).map_or("", |o| o.name);
        let level = defended.as_ref().map_or("normal", |d| d.2.level.as_str());
        let reasons = defended
            .as_ref()
            .map(|d| d.2.reasons.as_slice())
            .unwrap_or_default();
        // Per-request lines at debug: under a flood, an info line per 429 would turn the
        // attack on the log pipeline. Metrics count every decision.
        tracing::debug!(rule = limited_by, client = %client.ip, path = %path, method = %request.method(), level, ?reasons, "rate limited");
        if let Some(abuse) = &gateway.abuse {
            let rules = || {
                enforced
                    .iter()
                    .zip(decisions.as_slice())
                    .filter(|(_, d)| !d.allowed)
                    .map(|(rule, _)| rule.name.as_str().to_owned())
                    .collect()
            };
            abuse.report(
                || abuse.head(&request),
                client.ip,
                network,
                rules,
                Source::Gateway,
            );
        }
        if let (Some((defence, label, standing, response)), Some(observation)) =
            (&defended, observation)
        {
            let trigger = trigger(&request, client.ip);
            // A hostile client that hits a limit is blocked for a while.
            let block = match response.block_for {
                Some(base) => {
                    let plan = defence.plan(base, block_reasons(standing, Some(limited_by)));
                    Box::pin(defence.block(
                        label,
                        &plan,
                        standing.level,
                        "automatic",
                        Some(&trigger),
                    ))
                    .await
                }
                None => None,
            };
            defence.observe(label.clone(), observation, trigger);
            if let Some(block) = block {
                return responses::blocked(block.remaining(defence.now()));
            }
        }
        return responses::too_many_requests(&outcomes, speaker);
    }
    for rule in &enforced {
        worker.count(rule, if delayed { "delayed" } else { "allowed" });
    }
    // What a violation report needs of the request, taken before it moves on: for the
    // upstream's 429s when they count, and on login routes, whose guard refuses
    // attempts itself.
    let head = gateway
        .abuse
        .as_ref()
        .filter(|a| a.counts_upstream() || login_route.is_some())
        .map(|a| a.head(&request));
    let trigger = defended.as_ref().map(|_| trigger(&request, client.ip));
    vouch_for_the_chain(&mut request, client, peer, clients);
    let (mut response, login) = match login_route.zip(gateway.logins.as_ref()) {
        Some((route, guard)) => {
            let address = client_label(client.ip, network);
            let delayed = &gateway.delayed;
            Box::pin(login::attempt(
                guard, upstream, route, request, client, &address, delayed,
            ))
            .await
        }
        None => (
            Box::pin(upstream.forward(request, client, metrics)).await,
            login::AttemptNotes::default(),
        ),
    };
    if let (Some((defence, label, _, _)), Some(mut observation), Some(trigger)) =
        (&defended, observation, trigger)
    {
        observation.outcome = RequestOutcome::Answered(response.status().as_u16());
        observation.credential_stuffing = login.stuffing;
        defence.observe(label.clone(), observation, trigger);
    }
    if let (Some(abuse), Some(head)) = (&gateway.abuse, head) {
        let too_many = response.status() == http::StatusCode::TOO_MANY_REQUESTS;
        if login.refused && too_many {
            let rules = || {
                login_route
                    .map(|route| vec![format!("login:{}", route.name)])
                    .unwrap_or_default()
            };
            abuse.report(|| head, client.ip, network, rules, Source::Gateway);
        } else if too_many && abuse.counts_upstream() {
            abuse.report(|| head, client.ip, network, Vec::new, Source::Upstream);
        }
    }
    rate_limit_headers::add_rate_limit_headers(response.headers_mut(), &outcomes, speaker);
    response
}

/// What an alert about this request's client may show of it (sanitised when used).
pub(super) fn trigger<B>(request: &Request<B>, ip: std::net::IpAddr) -> Trigger {
    let headers = request.headers();
    Trigger {
        ip,
        method: request.method().clone(),
        uri: request.uri().clone(),
        user_agent: headers.get(http::header::USER_AGENT).cloned(),
        authenticated: headers.contains_key(http::header::AUTHORIZATION)
            || headers.contains_key(http::header::PROXY_AUTHORIZATION),
    }
}

/// Why a client is blocked: the reasons for its level, the rule it hit, and incident
/// mode when that is what raised it.
fn block_reasons(standing: &Standing, rule: Option<&str>) -> Vec<String> {
    let mut reasons = standing.reasons.clone();
    if standing.raised_by_incident {
        reasons.push(format!("incident_mode:level={}", standing.level));
    } else if reasons.is_empty() {
        reasons.push(format!("level={}", standing.level));
    }
    if let Some(rule) = rule {
        reasons.push(format!("limited:{rule}"));
    }
    reasons
}

/// How long to hold an admitted request for its `delay` rules: until its turn at the
/// steady rate, i.e. the time its GCRA charge runs ahead of the present, less the one
/// interval a request may always have.
fn delay_for(enforced: &[&Rule], decisions: &Decisions) -> std::time::Duration {
    let mut wait = ratewarden_core::Nanos::ZERO;
    for (rule, decision) in enforced.iter().zip(decisions.as_slice()) {
        if rule.action != Action::Delay {
            continue;
        }
        if let ratewarden_core::Limit::Gcra(g) = rule.limit {
            let ahead = decision
                .reset_after
                .as_nanos()
                .saturating_sub(u64::from(rule.cost) * g.emission_interval().as_nanos());
            wait = wait.max(ratewarden_core::Nanos(ahead));
        }
    }
    wait.to_duration()
}

/// For a request about to be forwarded that came through trusted proxies, tells the
/// upstream request which `X-Forwarded-For` to carry: the chain the proxies vouch for,
/// ending with our peer (see [`VouchedChain`]). Only then: a 429 is not forwarded.
#[inline]
fn vouch_for_the_chain(
    request: &mut Request<Incoming>,
    client: ClientAddress,
    peer: SocketAddr,
    clients: &ClientPolicy,
) {
    if client.via_trusted_proxy {
        attach_vouched_chain(request, peer, clients);
    }
}

// Out of line: the request's future keeps its size and layout (see the fifth session
// in BENCHMARKS.md on what inlining into it cost).
#[inline(never)]
fn attach_vouched_chain(request: &mut Request<Incoming>, peer: SocketAddr, clients: &ClientPolicy) {
    let forwarding = clients.forwarding_header;
    let chain = vouched_chain(
        peer.ip(),
        forwarding,
        forwarding_values(request.headers(), forwarding),
        &clients.trusted_proxies,
    );
    if let Some(value) = forwarded_for(&chain) {
        request.extensions_mut().insert(VouchedChain(value));
    }
}

/// Who sent the request. Through a trusted proxy, the client its forwarding header
/// names; else the peer, and a spoof attempt if the request names a client address in
/// any header an upstream might read one from (`X-Forwarded-For`, `Forwarded`,
/// `X-Real-IP` and the like, all removed before forwarding). A spoofer need not pick the
/// header this gateway was told to believe. One pass over the header names finds them,
/// where looking each up would cost more than the pass for most requests.
fn identify_client(
    peer: IpAddr,
    headers: &http::HeaderMap,
    clients: &ClientPolicy,
) -> ClientAddress {
    let (forwarding, trusted) = (clients.forwarding_header, &clients.trusted_proxies);
    if trusted.contains(peer) {
        return client_address(
            peer,
            forwarding,
            forwarding_values(headers, forwarding),
            trusted,
        );
    }
    ClientAddress {
        ip: canonical_ip(peer),
        spoofed_forwarding: claims_client_address(headers),
        via_trusted_proxy: false,
    }
}

/// The values of the forwarding header, in the order received.
fn forwarding_values(
    headers: &http::HeaderMap,
    forwarding: ForwardingHeader,
) -> impl DoubleEndedIterator<Item = &[u8]> {
    headers
        .get_all(forwarding_header(forwarding))
        .iter()
        .map(|v| v.as_bytes())
}

/// The forwarding header's name, parsed once: a lookup by text would parse it again on
/// every request.
fn forwarding_header(header: ForwardingHeader) -> &'static http::HeaderName {
    match header {
        ForwardingHeader::XForwardedFor => &X_FORWARDED_FOR,
        ForwardingHeader::Forwarded => &http::header::FORWARDED,
    }
}

/// The host a request is for, lower case, without port or trailing dot. HTTP/1.1 must
/// carry exactly one `Host` (RFC 9112, section 3.2); HTTP/2 names it in `:authority`,
/// and a `host` header, if any, must agree. Anything else is refused, since the
/// upstream might pick the other value than the one the rules saw. `None` when the
/// request names no host (HTTP/1.0 without `Host`, as health checkers send, HTTP/2
/// without `:authority`, an empty `Host`): every host's rules then apply to it.
fn request_host(
    request: &Request<Incoming>,
) -> Result<Option<std::borrow::Cow<'_, str>>, &'static str> {
    let mut values = request.headers().get_all(HOST).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err("several Host headers");
    }
    let header = match header {
        Some(v) => Some(v.to_str().map_err(|_| "unreadable Host header")?),
        None => None,
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    let host = match (header, authority) {
        (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => {
            return Err("Host differs from the request's authority")
        }
        (Some(h), _) => h,
        (None, Some(a)) => a,
        (None, None) if request.version() == http::Version::HTTP_11 => {
            return Err("missing Host header")
        }
        (None, None) => return Ok(None),
    };
    let host = strip_port(host).trim_end_matches('.');
    if host.is_empty() {
        return Ok(None);
    }
    // Most clients send it in lower case already: no copy then.
    Ok(Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }))
}

/// `host` without a `:port` (digits, or none) at its end; an IPv6 literal without its
/// brackets.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    // From the end, over the digits: a host name seldom ends in one, so this usually
    // stops at once, where a search for the last colon would scan the whole name.
    let bytes = host.as_bytes();
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    match bytes.len().checked_sub(digits + 1) {
        Some(colon) if bytes[colon] == b':' => host.get(..colon).unwrap_or(host),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::{forwarding_header, strip_port};
    use ratewarden_core::identity::ForwardingHeader;

    #[test]
    fn a_port_is_stripped_only_where_it_is_one() {
        for (host, stripped) in [
            ("api.test", "api.test"),
            ("api.test:8080", "api.test"),
            ("api.test:", "api.test"),
            (":80", ""),
            ("a:b:80", "a:b"),
            ("host1", "host1"),
            ("8080", "8080"),
            ("api.test:80a", "api.test:80a"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("", ""),
        ] {
            assert_eq!(strip_port(host), stripped, "{host:?}");
        }
    }

    #[test]
    fn the_forwarding_header_is_looked_up_under_its_configured_name() {
        for header in [ForwardingHeader::XForwardedFor, ForwardingHeader::Forwarded] {
            assert_eq!(forwarding_header(header).as_str(), header.name());
        }
    }
}
