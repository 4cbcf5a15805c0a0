//! The configuration file as written: TOML into plain serde structs, unknown fields
//! refused. Values stay as written (strings for rates, durations, networks) so that
//! validation can name the field and quote the value when one is wrong.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub clients: RawClients,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub abuse: Option<RawAbuse>,
    #[serde(default)]
    pub alerts: Vec<RawAlert>,
    #[serde(default)]
    pub privacy: RawPrivacy,
    #[serde(default)]
    pub reputation: RawReputation,
    pub threat: Option<RawThreat>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub login: Vec<RawLogin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    pub name: String,
    #[serde(rename = "match", default)]
    pub route: RawMatch,
    pub account: String,
    pub max_body: Option<toml::Value>,
    pub unidentified: Option<String>,
    pub failure_status: Option<Vec<i64>>,
    #[serde(default)]
    pub per_account: RawPerAccount,
    pub per_ip: Option<RawPerIp>,
    pub progressive_delay: Option<RawProgressiveDelay>,
    pub challenge_after: Option<i64>,
    pub lockout_scope: Option<String>,
    pub lockout_status: Option<i64>,
    #[serde(default)]
    pub stuffing: RawStuffing,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerAccount {
    pub failures: Option<i64>,
    pub window: Option<String>,
    pub lockout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerIp {
    pub attempts: i64,
    pub window: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProgressiveDelay {
    pub after: Option<i64>,
    pub base: Option<String>,
    pub max: Option<String>,
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStuffing {
    pub accounts_per_ip: Option<i64>,
    pub ips_per_account: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub token: Option<String>,
}

impl std::fmt::Debug for RawAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAdmin").finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreat {
    pub window: Option<String>,
    pub max_clients: Option<i64>,
    pub status_cache: Option<String>,
    pub automation_agents: Option<Vec<String>>,
    #[serde(default)]
    pub levels: RawLevels,
    #[serde(default)]
    pub escalation: RawEscalation,
    #[serde(default)]
    pub scoring: RawScoring,
    #[serde(default)]
    pub networks: RawNetworks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetworks {
    pub ipv4_prefix: Option<i64>,
    pub ipv6_prefix: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLevels {
    pub normal: Option<RawLevel>,
    pub elevated: Option<RawLevel>,
    pub high: Option<RawLevel>,
    pub critical: Option<RawLevel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLevel {
    pub rate_factor: f64,
    pub block_for: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEscalation {
    pub repeat_factor: Option<f64>,
    pub max_block: Option<String>,
    pub forget_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScoring {
    pub elevated: Option<f64>,
    pub high: Option<f64>,
    pub critical: Option<f64>,
    pub min_requests: Option<f64>,
    pub request_rate: Option<RawWeighted>,
    pub error_ratio: Option<RawWeighted>,
    pub auth_failures: Option<RawWeighted>,
    pub limited: Option<RawWeighted>,
    pub endpoints: Option<RawWeighted>,
    pub spoofed_forwarding: Option<RawWeighted>,
    pub credential_stuffing: Option<RawWeighted>,
    pub failing_neighbours: Option<RawWeighted>,
    pub agent_changes: Option<RawWeighted>,
    pub automation_agent: Option<RawFlat>,
    pub regular_timing: Option<RawTiming>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeighted {
    pub threshold: f64,
    pub weight: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlat {
    pub weight: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTiming {
    pub weight: f64,
    pub max_cv: Option<f64>,
    pub min_gaps: Option<f64>,
    pub min_mean_gap_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReputation {
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbuse {
    pub window: Option<String>,
    pub alert_after: Option<i64>,
    pub cooldown: Option<String>,
    pub count_upstream_429: Option<bool>,
    pub clients: Option<Vec<String>>,
    pub user_header: Option<String>,
    pub api_key_header: Option<String>,
    pub instance: Option<String>,
    pub queue: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    pub kind: String,
    pub name: Option<String>,
    pub dsn: Option<String>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub timeout: Option<String>,
    pub batch: Option<i64>,
}

impl std::fmt::Debug for RawAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAlert")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivacy {
    pub secret: Option<String>,
    pub secret_params: Option<Vec<String>>,
}

impl std::fmt::Debug for RawPrivacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPrivacy")
            .field("secret_params", &self.secret_params)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    pub upstream: String,
    pub admin_listen: Option<String>,
    pub header_timeout: Option<String>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub upstream_keepalive: Option<u64>,
    pub upstream_keepalive_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub max_headers: Option<u64>,
    pub max_delayed: Option<u64>,
    pub max_connections: Option<u64>,
    pub upgrades: Option<Vec<String>>,
    pub tunnel_idle_timeout: Option<String>,
    pub max_tunnels: Option<u64>,
    pub max_tunnels_per_client: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClients {
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub forwarded_header: Option<String>,
    pub ipv6_prefix: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub max_keys: Option<i64>,
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub on_error: Option<String>,
    pub key_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    #[serde(rename = "match", default)]
    pub route: RawMatch,
    pub key: Option<String>,
    pub algorithm: Option<String>,
    pub rate: String,
    pub burst: Option<i64>,
    pub cost: Option<i64>,
    pub action: Option<String>,
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub except_path_prefixes: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}
