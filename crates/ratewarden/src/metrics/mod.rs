//! The gateway's Prometheus metrics, in one registry, encoded as text for `/metrics`.
//!
//! Labels never carry client data (no IPs, keys or paths): only rule names from the
//! configuration and fixed words.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

mod per_worker;
pub use per_worker::{PerWorkerCounter, PerWorkerHistogram};

/// Rule and what happened to a request under it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleDecision {
    /// The rule's name.
    pub rule: String,
    /// allowed, limited, delayed, shadow_limited, denied_cidr.
    pub decision: &'static str,
}

/// What went wrong talking to the upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamError {
    /// connect, timeout.
    pub kind: &'static str,
}

/// Why the gateway itself refused a request: before any rule ran, or (tunnel limits)
/// before a WebSocket handshake the rules admitted was forwarded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    /// bad_path, bad_host, ambiguous_key_header, connect_method, deny_list, blocked,
    /// connection_limit, tunnel_limit, tunnel_limit_per_client.
    pub reason: &'static str,
}

/// A store failure, by kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreFailure {
    /// timeout, unavailable, circuit_open, protocol.
    pub kind: &'static str,
}

/// The failure policy applied to a request the store could not decide.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Fallback {
    /// allow, deny, local.
    pub on_error: &'static str,
}

/// A threat level.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabel {
    /// normal, elevated, high, critical.
    pub level: &'static str,
}

/// Who blocked a client.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockOrigin {
    /// automatic (adaptive defence) or admin.
    pub origin: &'static str,
}

/// A login route and what happened to an attempt on it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginResult {
    /// The `[[login]]` name.
    pub login: String,
    /// success, failure, inconclusive, locked, throttled, delayed, delay_queue_full,
    /// refused_ambiguous, unidentified, oversized, store_error; and for `login_attacks`:
    /// stuffing, distributed.
    pub result: &'static str,
}

/// Every metric the gateway keeps.
pub struct Metrics {
    registry: Registry,
    /// Requests per rule and decision, counted in the deciding worker's copy.
    pub requests: Family<RuleDecision, PerWorkerCounter>,
    /// Time to decide a request (store round trip included), seconds; observed into
    /// the deciding worker's copy.
    pub decision_seconds: PerWorkerHistogram,
    /// Upstream failures.
    pub upstream_errors: Family<UpstreamError, Counter>,
    /// Requests sent again on a new upstream connection after the pooled one they went
    /// out on failed (the upstream closing it just then). A steady count suggests the
    /// upstream closes idle connections at about `upstream_keepalive_timeout` or sooner.
    pub upstream_retries: Counter,
    /// Requests from peers that are not trusted proxies naming a client address in a
    /// header (`X-Forwarded-For`, `Forwarded`, `X-Real-IP` and the like).
    pub spoofed_forwarding: Counter,
    /// Requests refused before rules (unreadable paths).
    pub refused: Family<Refusal, Counter>,
    /// Configuration reloads, by outcome.
    pub reloads: Family<RuleDecision, Counter>,
    /// Client connections open now.
    pub open_connections: Gauge,
    /// Connections switched to another protocol (WebSocket) and tunnelled.
    pub tunnels: Counter,
    /// Tunnels open now.
    pub tunnels_open: Gauge,
    /// Requests from `[reputation] allow` addresses, forwarded without limits.
    pub allow_listed: Counter,
    /// Store failures.
    pub store_errors: Family<StoreFailure, Counter>,
    /// Requests decided by the failure policy instead of the store.
    pub store_fallbacks: Family<Fallback, Counter>,
    /// Clients whose threat level changed, by the new level.
    pub level_changes: Family<LevelLabel, Counter>,
    /// Requests decided at each threat level (incident mode included).
    pub requests_by_level: Family<LevelLabel, Counter>,
    /// Blocks placed, by origin.
    pub blocks: Family<BlockOrigin, Counter>,
    /// 1 while incident mode is on.
    pub incident_mode: Gauge,
    /// Threat-store calls that failed (the request goes on at its recorded level).
    pub threat_store_errors: Family<StoreFailure, Counter>,
    /// Requests not observed because too many clients were pending a flush.
    pub threat_observations_dropped: Counter,
    /// Login attempts by route and result.
    pub login_attempts: Family<LoginResult, Counter>,
    /// Credential stuffing (one address, many accounts) and distributed guessing (one
    /// account, many addresses) detected, by route.
    pub login_attacks: Family<LoginResult, Counter>,
}

impl Metrics {
    /// A fresh registry with every metric registered, abuse alerting's too when on.
    pub fn with_alerting(alerting: Option<&ratewarden_detect::AlertMetrics>) -> Metrics {
        let mut registry = Registry::with_prefix("ratewarden");
        if let Some(alerting) = alerting {
            alerting.register(&mut registry);
        }
        let requests = Family::<RuleDecision, PerWorkerCounter>::default();
        registry.register(
            "requests",
            "Requests by rule and decision",
            requests.clone(),
        );
        let decision_seconds = PerWorkerHistogram::new(exponential_buckets(0.000_002, 2.0, 18));
        registry.register(
            "decision_seconds",
            "Time to decide a request against its rules",
            decision_seconds.clone(),
        );
        let upstream_errors = Family::<UpstreamError, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        let upstream_retries = Counter::default();
        registry.register(
            "upstream_retries",
            "Requests sent again on a new upstream connection after the pooled one failed",
            upstream_retries.clone(),
        );
        let spoofed_forwarding = Counter::default();
        registry.register(
            "spoofed_forwarding_headers",
            "Requests from peers that are not trusted proxies naming a client address (X-Forwarded-For, Forwarded, X-Real-IP and the like; ignored)",
            spoofed_forwarding.clone(),
        );
        let refused = Family::<Refusal, Counter>::default();
        registry.register(
            "refused",
            "Requests refused by the gateway itself, by reason (before any rule: bad path, host or key header, CONNECT, deny list, blocked, connection limit; before a WebSocket handshake is forwarded: tunnel_limit, tunnel_limit_per_client)",
            refused.clone(),
        );
        let reloads = Family::<RuleDecision, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (rule=\"-\"), by outcome",
            reloads.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let tunnels = Counter::default();
        registry.register(
            "tunnels",
            "Connections switched to another protocol (WebSocket) by the upstream and tunnelled",
            tunnels.clone(),
        );
        let tunnels_open = Gauge::default();
        registry.register(
            "tunnels_open",
            "Tunnels open now (each also counts as an open connection)",
            tunnels_open.clone(),
        );
        let store_errors = Family::<StoreFailure, Counter>::default();
        registry.register(
            "store_errors",
            "Store calls that failed, by kind (circuit_open: not attempted, Redis failing)",
            store_errors.clone(),
        );
        let store_fallbacks = Family::<Fallback, Counter>::default();
        registry.register(
            "store_fallbacks",
            "Requests decided by the failure policy (store.on_error) because the store could not",
            store_fallbacks.clone(),
        );
        let allow_listed = Counter::default();
        registry.register(
            "allow_listed",
            "Requests from [reputation] allow addresses, forwarded without limits",
            allow_listed.clone(),
        );
        let level_changes = Family::<LevelLabel, Counter>::default();
        registry.register(
            "threat_level_changes",
            "Clients whose threat level changed, by new level",
            level_changes.clone(),
        );
        let requests_by_level = Family::<LevelLabel, Counter>::default();
        registry.register(
            "threat_requests",
            "Requests by the client's effective threat level (incident mode included)",
            requests_by_level.clone(),
        );
        let blocks = Family::<BlockOrigin, Counter>::default();
        registry.register("blocks", "Clients blocked, by origin", blocks.clone());
        let incident_mode = Gauge::default();
        registry.register(
            "incident_mode",
            "1 while incident mode raises every client's threat level",
            incident_mode.clone(),
        );
        let threat_store_errors = Family::<StoreFailure, Counter>::default();
        registry.register(
            "threat_store_errors",
            "Threat store calls that failed, by kind",
            threat_store_errors.clone(),
        );
        let threat_observations_dropped = Counter::default();
        registry.register(
            "threat_observations_dropped",
            "Requests not observed by adaptive defence because [threat] max_clients were already pending",
            threat_observations_dropped.clone(),
        );
        let login_attempts = Family::<LoginResult, Counter>::default();
        registry.register(
            "login_attempts",
            "Attempts on [[login]] routes, by result",
            login_attempts.clone(),
        );
        let login_attacks = Family::<LoginResult, Counter>::default();
        registry.register(
            "login_attacks",
            "Credential stuffing (result=stuffing) and distributed guessing (result=distributed) detected on [[login]] routes",
            login_attacks.clone(),
        );
        Metrics {
            login_attempts,
            login_attacks,
            threat_observations_dropped,
            level_changes,
            requests_by_level,
            blocks,
            incident_mode,
            threat_store_errors,
            allow_listed,
            store_errors,
            store_fallbacks,
            open_connections,
            tunnels,
            tunnels_open,
            registry,
            requests,
            decision_seconds,
            upstream_errors,
            upstream_retries,
            spoofed_forwarding,
            refused,
            reloads,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
