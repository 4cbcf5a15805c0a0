//! A compiled policy: which rules apply to a request, and under which key each counts it.
//!
//! Built from configuration by the binary (which owns parsing and validation) and shared
//! read-only; reload swaps a whole new policy. Evaluation is a pure function of the
//! request's facts: no I/O, no clock.

mod key;
mod route;

pub use key::{KeyError, KeyPart, KeyTemplate};
pub use route::RouteMatch;

use crate::identity::{ForwardingHeader, TrustedProxies};
use crate::path::CanonicalPath;
use crate::{Limit, RuleName};
use ipnet::IpNet;
use std::net::IpAddr;

/// What a rule does when its limit is exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer 429.
    Reject,
    /// Hold the request until it fits, within the burst (nginx `limit_req` without
    /// `nodelay`); beyond that, answer 429.
    Delay,
    /// Never reject: log and count what would have happened (shadow mode).
    LogOnly,
}

/// One limit and the requests it applies to.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The rule's name: in headers, logs, metrics and store keys.
    pub name: RuleName,
    /// Which requests it applies to.
    pub route: RouteMatch,
    /// Whom it counts: the client part of the counter's key.
    pub key: KeyTemplate,
    /// The algorithm and its parameters.
    pub limit: Limit,
    /// Units each request costs.
    pub cost: u32,
    /// What happens over the limit.
    pub action: Action,
    /// Clients this rule never limits (health checkers, partners).
    pub allow: Vec<IpNet>,
    /// Clients this rule refuses outright (403).
    pub deny: Vec<IpNet>,
}

/// How clients are identified.
#[derive(Clone, Debug, Default)]
pub struct ClientPolicy {
    /// Peers whose forwarding header is believed.
    pub trusted_proxies: TrustedProxies,
    /// The header they set.
    pub forwarding_header: ForwardingHeader,
    /// IPv6 clients are grouped by this prefix length.
    pub ipv6_prefix: u8,
}

/// The whole compiled policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// How clients are identified.
    pub clients: ClientPolicy,
    /// The rules, in configuration order.
    pub rules: Vec<Rule>,
    /// Clients refused or exempted before any rule.
    pub reputation: Reputation,
    /// Protected login endpoints (`[[login]]`); their per-address limits are rules.
    pub logins: Vec<crate::login::LoginRoute>,
}

/// Reputation lists (`[reputation]`): checked before every rule.
#[derive(Clone, Debug, Default)]
pub struct Reputation {
    /// Clients answered 403 at once.
    pub deny: crate::network_set::NetworkSet,
    /// Clients no limit applies to (health checkers, partners).
    pub allow: crate::network_set::NetworkSet,
}

/// What the policy needs to know about a request.
pub struct RequestFacts<'a> {
    /// The method, upper case as sent.
    pub method: &'a str,
    /// The `Host` (or `:authority`) without port, lower case; `None` when the request
    /// names none (then every host's rules apply to it).
    pub host: Option<&'a str>,
    /// The canonical path.
    pub path: &'a CanonicalPath<'a>,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The client's network as it is limited (its address, or its IPv6 prefix).
    pub client_network: IpNet,
    /// Looks up a request header by lower-case name.
    pub header: &'a (dyn Fn(&str) -> Option<&'a [u8]> + Sync),
}

/// The outcome of evaluating a request against the policy.
#[derive(Debug, Default)]
pub struct Applicable<'p> {
    /// A rule whose `deny` list holds the client: the request is refused.
    pub denied_by: Option<&'p Rule>,
    /// Every rule to check, with the client part of its counter key: a handful, kept
    /// inline (every request evaluates the policy).
    pub checks: smallvec::SmallVec<[(&'p Rule, String); 4]>,
}

impl Policy {
    /// The rules that apply to a request, and their keys.
    pub fn evaluate<'p>(&'p self, request: &RequestFacts<'_>) -> Applicable<'p> {
        let mut applicable = Applicable::default();
        for rule in &self.rules {
            if !rule.route.matches(request) {
                continue;
            }
            if rule.deny.iter().any(|n| n.contains(&request.client_ip)) {
                applicable.denied_by = Some(rule);
                applicable.checks.clear();
                return applicable;
            }
            if rule.allow.iter().any(|n| n.contains(&request.client_ip)) {
                continue;
            }
            applicable.checks.push((rule, rule.key.render(request)));
        }
        applicable
    }

    /// The login endpoint a request is an attempt on, if any (the first that matches).
    pub fn login_route(&self, request: &RequestFacts<'_>) -> Option<&crate::login::LoginRoute> {
        self.logins.iter().find(|l| l.matches(request))
    }
}

#[cfg(test)]
mod tests;
