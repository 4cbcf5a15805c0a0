//! `[threat]` and `[admin]`: adaptive defence (window, scoring, what levels do, how blocks
//! escalate) and the admin API's bearer token.

use super::compile::{parse_duration, Errors};
use super::raw::{RawAdmin, RawLevel, RawThreat, RawWeighted};
use ratewarden_core::threat::{
    Escalation, Level, LevelResponse, LevelResponses, Scoring, Weighted,
};
use ratewarden_core::Nanos;
use std::time::Duration;

/// User agents of automation tools, matched case-insensitively as substrings: what
/// scripts and scrapers send unless told otherwise.
pub const DEFAULT_AUTOMATION_AGENTS: &[&str] = &[
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww-perl",
    "scrapy",
    "headlesschrome",
    "phantomjs",
    "node-fetch",
    "axios/",
    "masscan",
    "nmap",
    "sqlmap",
    "nikto",
    "zgrab",
];

/// The shortest admin token: it guards blocking anyone.
const MIN_TOKEN: usize = 16;

/// Adaptive defence, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreatConfig {
    /// Signals are kept over this window.
    pub window: Nanos,
    /// Weights and thresholds.
    pub scoring: Scoring,
    /// What each level does.
    pub levels: LevelResponses,
    /// How repeat blocks grow.
    pub escalation: Escalation,
    /// Lower-case substrings of automation user agents.
    pub automation_agents: Vec<String>,
    /// Most clients tracked in memory (about 600 bytes each); Redis keys expire instead.
    pub max_clients: usize,
    /// With Redis, how long a gateway trusts what it last read of a client's standing
    /// before reading it again (`None`: every request reads it).
    pub status_cache: Option<Nanos>,
    /// The networks whose failing addresses are counted together.
    pub networks: NetworkPrefixes,
}

/// Prefix lengths of the networks whose addresses' authentication failures are counted
/// together (`failing_neighbours`): one attacker renting a block of addresses usually
/// gets them from one IPv4 /24 or one IPv6 /48.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkPrefixes {
    /// IPv4 prefix length.
    pub ipv4: u8,
    /// IPv6 prefix length.
    pub ipv6: u8,
}

impl Default for NetworkPrefixes {
    fn default() -> NetworkPrefixes {
        NetworkPrefixes { ipv4: 24, ipv6: 48 }
    }
}

impl NetworkPrefixes {
    /// The network `ip` belongs to.
    pub fn network_of(&self, ip: std::net::IpAddr) -> ipnet::IpNet {
        let prefix = if ip.is_ipv4() { self.ipv4 } else { self.ipv6 };
        // Prefix lengths are validated against the address family.
        ipnet::IpNet::new(ip, prefix)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| ipnet::IpNet::from(ip))
    }
}

/// The admin API's settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`; without one those endpoints answer 403.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Validates `[admin]`.
pub fn admin(raw: &RawAdmin, errors: &mut Errors) -> AdminConfig {
    let token = raw.token.as_ref().and_then(|t| {
        if t.len() < MIN_TOKEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
            errors.add(
                "admin.token",
                format!("use at least {MIN_TOKEN} printable characters without spaces"),
            );
            None
        } else {
            Some(t.clone())
        }
    });
    AdminConfig { token }
}

/// Validates `[threat]`; `None` when absent (no adaptive defence). `client_ipv6_prefix`
/// is `[clients] ipv6_prefix`: a network must be wider than one IPv6 client.
pub fn threat(
    raw: Option<&RawThreat>,
    client_ipv6_prefix: u8,
    errors: &mut Errors,
) -> Option<ThreatConfig> {
    let raw = raw?;
    let duration = |field: &str, value: Option<&str>, default: Duration, errors: &mut Errors| {
        let d = match value {
            None => default,
            Some(v) => errors.check(field, parse_duration(v))?,
        };
        if d < Duration::from_secs(1) || d > Duration::from_secs(30 * 86_400) {
            errors.add(field, format!("{d:?}: use between 1s and 30 days"));
            return None;
        }
        Some(Nanos::from(d))
    };
    let window = duration(
        "threat.window",
        raw.window.as_deref(),
        Duration::from_secs(300),
        errors,
    );
    let max_clients = match raw.max_clients.unwrap_or(100_000) {
        n @ 1..=100_000_000 => Some(n as usize),
        n => {
            errors.add(
                "threat.max_clients",
                format!("{n}: use a number of clients from 1 to 100000000"),
            );
            None
        }
    };
    let status_cache = match raw.status_cache.as_deref().map(str::trim) {
        None => Some(Some(Nanos::from_secs(1))),
        Some("off") => Some(None),
        Some(v) => match parse_duration(v) {
            Ok(d) if d <= Duration::from_secs(60) => Some(Some(Nanos::from(d))),
            Ok(_) => {
                errors.add(
                    "threat.status_cache",
                    format!("{v:?}: at most 60s (blocks by other gateways wait this long here)"),
                );
                None
            }
            Err(e) => {
                errors.add("threat.status_cache", format!("{e}, or \"off\""));
                None
            }
        },
    };
    let mut levels = LevelResponses::default();
    let given = [
        (Level::Normal, &raw.levels.normal),
        (Level::Elevated, &raw.levels.elevated),
        (Level::High, &raw.levels.high),
        (Level::Critical, &raw.levels.critical),
    ];
    for (level, given) in given {
        if let Some(l) = given {
            if let Some(response) = level_response(l, level, errors) {
                levels.set(level, response);
            }
        }
    }
    let e = &raw.escalation;
    let defaults = Escalation::default();
    let repeat_factor = match e.repeat_factor {
        None => Some(defaults.repeat_factor),
        Some(f) if (1.0..=100.0).contains(&f) => Some(f),
        Some(f) => {
            errors.add(
                "threat.escalation.repeat_factor",
                format!("{f}: use a factor from 1.0 (no growth) to 100"),
            );
            None
        }
    };
    let day = Duration::from_secs(86_400);
    let max_block = duration(
        "threat.escalation.max_block",
        e.max_block.as_deref(),
        day,
        errors,
    );
    let forget_after = duration(
        "threat.escalation.forget_after",
        e.forget_after.as_deref(),
        day,
        errors,
    );
    let scoring = scoring(raw, errors);
    let automation_agents = match &raw.automation_agents {
        None => DEFAULT_AUTOMATION_AGENTS
            .iter()
            .map(|a| (*a).to_owned())
            .collect(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let a = a.trim().to_ascii_lowercase();
                if a.is_empty() {
                    errors.add(
                        format!("threat.automation_agents[{i}]"),
                        "an empty pattern would match every client",
                    );
                    None
                } else {
                    Some(a)
                }
            })
            .collect(),
    };
    let networks = networks(raw, client_ipv6_prefix, errors);
    Some(ThreatConfig {
        window: window?,
        scoring: scoring?,
        levels,
        escalation: Escalation {
            repeat_factor: repeat_factor?,
            max_block: max_block?,
            forget_after: forget_after?,
        },
        automation_agents,
        max_clients: max_clients?,
        status_cache: status_cache?,
        networks: networks?,
    })
}

fn networks(
    raw: &RawThreat,
    client_ipv6_prefix: u8,
    errors: &mut Errors,
) -> Option<NetworkPrefixes> {
    let defaults = NetworkPrefixes::default();
    // A network as narrow as one client would only ever count that client.
    let ipv6_max = client_ipv6_prefix.saturating_sub(1);
    let mut prefix = |field: &str, value: Option<i64>, default: u8, max: u8, why: &str| {
        match value {
            None => Some(default.min(max)),
            // A shorter prefix would count a whole provider's customers as one attacker.
            Some(p) if (8..=i64::from(max)).contains(&p) => Some(p as u8),
            Some(p) => {
                errors.add(
                    format!("threat.networks.{field}"),
                    format!("{p}: use a prefix length from 8 to {max}{why}"),
                );
                None
            }
        }
    };
    let ipv4 = prefix(
        "ipv4_prefix",
        raw.networks.ipv4_prefix,
        defaults.ipv4,
        31,
        " (a /32 network is one client)",
    );
    let ipv6 = prefix(
        "ipv6_prefix",
        raw.networks.ipv6_prefix,
        defaults.ipv6,
        ipv6_max,
        &format!(
            ", shorter than [clients] ipv6_prefix ({client_ipv6_prefix}), which groups one client"
        ),
    );
    Some(NetworkPrefixes {
        ipv4: ipv4?,
        ipv6: ipv6?,
    })
}

fn level_response(raw: &RawLevel, level: Level, errors: &mut Errors) -> Option<LevelResponse> {
    let field = format!("threat.levels.{level}");
    if !(0.0..=1.0).contains(&raw.rate_factor) {
        errors.add(
            format!("{field}.rate_factor"),
            format!(
                "{}: use a factor from 0.0 (blocked outright) to 1.0 (full limits)",
                raw.rate_factor
            ),
        );
        return None;
    }
    let block_for = match &raw.block_for {
        None => None,
        Some(v) => Some(Nanos::from(
            errors.check(&format!("{field}.block_for"), parse_duration(v))?,
        )),
    };
    if raw.rate_factor == 0.0 && block_for.is_none() {
        errors.add(
            format!("{field}.block_for"),
            "a rate_factor of 0.0 refuses every request: say for how long (block_for = \"1h\")",
        );
        return None;
    }
    Some(LevelResponse {
        rate_factor: raw.rate_factor,
        block_for,
    })
}

fn scoring(raw: &RawThreat, errors: &mut Errors) -> Option<Scoring> {
    let s = &raw.scoring;
    let mut scoring = Scoring::default();
    let mut ok = true;
    let mut weighted = |name: &str, value: &Option<RawWeighted>, into: &mut Weighted| {
        if let Some(w) = value {
            let valid =
                w.threshold > 0.0 && w.threshold.is_finite() && (0.0..=1000.0).contains(&w.weight);
            if !valid {
                errors.add(
                    format!("threat.scoring.{name}"),
                    "threshold must be above 0 and weight from 0 to 1000",
                );
                ok = false;
            } else {
                *into = Weighted {
                    threshold: w.threshold,
                    weight: w.weight,
                };
            }
        }
    };
    weighted("request_rate", &s.request_rate, &mut scoring.request_rate);
    weighted("error_ratio", &s.error_ratio, &mut scoring.error_ratio);
    weighted(
        "auth_failures",
        &s.auth_failures,
        &mut scoring.auth_failures,
    );
    weighted("limited", &s.limited, &mut scoring.limited);
    weighted("endpoints", &s.endpoints, &mut scoring.endpoints);
    weighted(
        "spoofed_forwarding",
        &s.spoofed_forwarding,
        &mut scoring.spoofed_forwarding,
    );
    weighted(
        "agent_changes",
        &s.agent_changes,
        &mut scoring.agent_changes,
    );
    weighted(
        "credential_stuffing",
        &s.credential_stuffing,
        &mut scoring.credential_stuffing,
    );
    weighted(
        "failing_neighbours",
        &s.failing_neighbours,
        &mut scoring.failing_neighbours,
    );
    if let Some(a) = &s.automation_agent {
        scoring.automation_agent = a.weight;
    }
    if let Some(t) = &s.regular_timing {
        scoring.regular_timing = t.weight;
        scoring.regular_cv = t.max_cv.unwrap_or(scoring.regular_cv);
        scoring.min_gaps = t.min_gaps.unwrap_or(scoring.min_gaps);
        scoring.min_mean_gap_ms = t.min_mean_gap_ms.unwrap_or(scoring.min_mean_gap_ms);
        if !(0.0..=1.0).contains(&scoring.regular_cv) || scoring.min_gaps < 2.0 {
            errors.add(
                "threat.scoring.regular_timing",
                "max_cv must be from 0 to 1 and min_gaps at least 2",
            );
            ok = false;
        }
    }
    scoring.min_requests = s.min_requests.unwrap_or(scoring.min_requests);
    scoring.elevated = s.elevated.unwrap_or(scoring.elevated);
    scoring.high = s.high.unwrap_or(scoring.high);
    scoring.critical = s.critical.unwrap_or(scoring.critical);
    if !(0.0 < scoring.elevated
        && scoring.elevated <= scoring.high
        && scoring.high <= scoring.critical)
    {
        errors.add(
            "threat.scoring",
            format!(
                "level thresholds must rise: elevated {} <= high {} <= critical {}, above 0",
                scoring.elevated, scoring.high, scoring.critical
            ),
        );
        ok = false;
    }
    ok.then_some(scoring)
}
