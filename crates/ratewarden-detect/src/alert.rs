//! What is known about a violation (a 429), and the alert raised when a client keeps
//! violating.

use serde::Serialize;
use serde_json::value::RawValue;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use uuid::Uuid;

/// Which identity of a client is tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// The client's address (IPv6: its network).
    Ip,
    /// The authenticated user (pseudonymised).
    User,
    /// The API key (pseudonymised id, never the key).
    ApiKey,
}

impl IdentityKind {
    /// The configuration word.
    pub fn as_str(&self) -> &'static str {
        match self {
            IdentityKind::Ip => "ip",
            IdentityKind::User => "user",
            IdentityKind::ApiKey => "api_key",
        }
    }
}

/// Who produced the 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The gateway's own limit.
    Gateway,
    /// The upstream answered 429 itself.
    Upstream,
}

/// One 429, as the request path hands it over: already sanitised and pseudonymised
/// (nothing secret is ever queued).
#[derive(Clone, Debug)]
pub struct Violation {
    /// When (Unix nanoseconds).
    pub at_nanos: u64,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Its network (the address itself for IPv4, its prefix for IPv6), as text.
    pub client_network: String,
    /// The user's pseudonym, when the request carried a user id.
    pub user: Option<String>,
    /// The API key's pseudonymous id, when the request carried a key.
    pub api_key_id: Option<String>,
    /// Whether the request carried credentials (`Authorization`, an API key, a user).
    pub authenticated: bool,
    /// The rules that limited it (empty for an upstream 429).
    pub rules: Vec<String>,
    /// Gateway or upstream.
    pub source: Source,
    /// Method.
    pub method: String,
    /// Sanitised path and query.
    pub path: String,
    /// Sanitised user agent.
    pub user_agent: Option<String>,
}

/// How urgent an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// A violation below the threshold (logged, never sent).
    Low,
    /// The threshold reached.
    High,
    /// Ten times the threshold within the window.
    Critical,
}

/// What adaptive defence concluded about a client, on alerts about its threat level.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThreatContext {
    /// Its level now: `normal`, `elevated`, `high` or `critical`.
    pub level: String,
    /// Its level before.
    pub previous_level: String,
    /// Its score.
    pub score: f64,
    /// The signals behind the score, as `name=value`, strongest first.
    pub reasons: Vec<String>,
    /// For a block: when it ends (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_until: Option<u64>,
    /// For a block: its length in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_seconds: Option<u64>,
    /// For a block: how many this client has had, this one included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offence: Option<u32>,
}

/// What login protection saw, on `credential_stuffing` and `distributed_login_attack`
/// alerts. Accounts appear only as pseudonyms.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoginContext {
    /// The `[[login]]` route.
    pub login: String,
    /// Distinct accounts the client tried within the window (stuffing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_accounts: Option<u64>,
    /// Distinct addresses that tried the account within the window (distributed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_addresses: Option<u64>,
    /// The account's pseudonym (distributed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// A client that keeps hitting limits, or whose threat level rose, or that was blocked.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// Unique to this alert, and the same wherever it goes: in every sink, on every
    /// retry of a webhook POST, and as the Sentry event's id. A receiver that sees an
    /// id again (a POST resent after a timeout it had in fact processed) can drop it.
    pub id: Uuid,
    /// `rate_limit_abuse`, `threat_level_raised` or `client_blocked`.
    pub kind: &'static str,
    /// How urgent.
    pub severity: Severity,
    /// Which identity crossed the threshold.
    pub identity: IdentityKind,
    /// That identity: the address, or a pseudonym.
    pub identity_value: String,
    /// The client's address (of the latest violation).
    pub client_ip: String,
    /// Its network (IPv6 prefix).
    pub client_network: String,
    /// Violations within the window.
    pub violations: u64,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// Violations since the last alert for this identity (suppressed by the cooldown).
    pub violations_since_last_alert: u64,
    /// Rules hit (latest violation).
    pub rules: Vec<String>,
    /// Gateway or upstream 429.
    pub source: Source,
    /// Method of the latest violation.
    pub method: String,
    /// Sanitised path of the latest violation.
    pub path: String,
    /// Sanitised user agent.
    pub user_agent: Option<String>,
    /// Whether the client sent credentials.
    pub authenticated: bool,
    /// The user's pseudonym.
    pub user: Option<String>,
    /// The API key's id (a pseudonym, never the key).
    pub api_key_id: Option<String>,
    /// First violation this gateway saw in the window (Unix seconds).
    pub first_violation: u64,
    /// Latest violation (Unix seconds).
    pub last_violation: u64,
    /// The gateway instance that raised it.
    pub instance: String,
    /// Adaptive defence's view, on `threat_level_raised` and `client_blocked` alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threat: Option<ThreatContext>,
    /// Login protection's view, on login attack alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<LoginContext>,
}

impl Alert {
    /// A fresh alert id: random (UUID version 4), so alerts from several gateways, or
    /// from one gateway before and after a restart, never share one.
    pub fn new_id() -> Uuid {
        Uuid::new_v4()
    }
}

/// An alert on its way to the sinks: one allocation that every sink's queue shares,
/// and its JSON, written once, when the first sink that needs it asks (the log line and
/// the webhook body carry the same text).
#[derive(Debug)]
pub struct Raised {
    alert: Alert,
    json: OnceLock<Box<RawValue>>,
}

impl Raised {
    /// `alert`, ready to be shared by the sinks' queues.
    pub fn new(alert: Alert) -> Arc<Raised> {
        Arc::new(Raised {
            alert,
            json: OnceLock::new(),
        })
    }

    /// The alert as a JSON object.
    pub fn json(&self) -> &RawValue {
        self.json.get_or_init(|| {
            // serde_json fails only on maps with keys that are not strings and on
            // Serialize impls that fail: an alert has neither. Were it ever to fail,
            // every sink would get `null` rather than some an alert and some nothing.
            serde_json::value::to_raw_value(&self.alert)
                .unwrap_or_else(|_| RawValue::NULL.to_owned())
        })
    }
}

impl std::ops::Deref for Raised {
    type Target = Alert;
    fn deref(&self) -> &Alert {
        &self.alert
    }
}
