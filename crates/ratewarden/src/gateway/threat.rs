//! Adaptive defence on the request path: each client's standing (level, block) before
//! its request is decided, what the level does to its limits, blocks when a hostile
//! client hits one, and after each request the observation that may change its level.
//!
//! The scoring itself is `ratewarden_core::threat`; state is in a [`ThreatStore`]
//! (memory, or Redis so that every gateway sees the same levels and blocks).

use super::abuse::AbuseReporter;
use super::status_cache::StatusCache;
use crate::config::{StoreConfig, ThreatConfig};
use crate::metrics::{BlockOrigin, LevelLabel, Metrics, StoreFailure};
use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderValue, Method, Uri};
use parking_lot::Mutex;
use ratewarden_core::clock::{Clock, SystemClock};
use ratewarden_core::threat::{Assessment, Batch, Level, LevelResponse, Observation};
use ratewarden_core::{Nanos, Timestamp};
use ratewarden_detect::sinks::LogSink;
use ratewarden_detect::{Alert, IdentityKind, Sanitiser, Severity, Source, ThreatContext};
use ratewarden_store::redis::RedisStore;
use ratewarden_store::threat::{
    Block, BlockPlan, ClientStatus, MemoryThreats, Observed, ThreatStore,
};
use ratewarden_store::StoreError;
use std::collections::HashMap;
use std::hash::Hasher;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

/// How often pending observations go to the store: the most a level change lags.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// Clients' batches sent to the store at once.
const FLUSHES_IN_FLIGHT: usize = 64;
const PENDING_SHARDS: usize = 16;

/// A client's requests since the last flush, and what an alert may show of the first.
struct Pending {
    batch: Batch,
    trigger: Trigger,
}

/// Authentication failures of its own before a client is judged by its network's:
/// one expired token or mistyped password in a busy network is not an attack.
const MIN_OWN_FAILURES: f64 = 2.0;

/// The most distinct block lengths a plan lists (Redis gets them as arguments).
const MAX_LADDER: u32 = 64;

/// Where threat state is kept: as the limiter's store says.
pub enum Threats {
    /// In this process.
    Memory(MemoryThreats<SystemClock>),
    /// In Redis, on a connection of its own.
    Redis(Box<RedisStore<SystemClock>>),
}

impl ThreatStore for Threats {
    async fn status(&self, client: &str) -> Result<ClientStatus, StoreError> {
        match self {
            Threats::Memory(m) => m.status(client).await,
            Threats::Redis(r) => r.status(client).await,
        }
    }
    async fn observe(
        &self,
        client: &str,
        o: &Batch,
        window: Nanos,
    ) -> Result<Observed, StoreError> {
        match self {
            Threats::Memory(m) => m.observe(client, o, window).await,
            Threats::Redis(r) => r.observe(client, o, window).await,
        }
    }
    async fn set_level(
        &self,
        client: &str,
        expected: Level,
        level: Level,
        reasons: &[String],
        window: Nanos,
    ) -> Result<bool, StoreError> {
        match self {
            Threats::Memory(m) => m.set_level(client, expected, level, reasons, window).await,
            Threats::Redis(r) => r.set_level(client, expected, level, reasons, window).await,
        }
    }
    async fn block(&self, client: &str, plan: &BlockPlan) -> Result<(Block, bool), StoreError> {
        match self {
            Threats::Memory(m) => m.block(client, plan).await,
            Threats::Redis(r) => r.block(client, plan).await,
        }
    }
    async fn lift(&self, client: &str, window: Nanos) -> Result<bool, StoreError> {
        match self {
            Threats::Memory(m) => m.lift(client, window).await,
            Threats::Redis(r) => r.lift(client, window).await,
        }
    }
    async fn failing_neighbours(
        &self,
        network: &str,
        address: Option<u64>,
        window: Nanos,
    ) -> Result<f64, StoreError> {
        match self {
            Threats::Memory(m) => m.failing_neighbours(network, address, window).await,
            Threats::Redis(r) => r.failing_neighbours(network, address, window).await,
        }
    }
    async fn blocks(&self) -> Result<Vec<Block>, StoreError> {
        match self {
            Threats::Memory(m) => m.blocks().await,
            Threats::Redis(r) => r.blocks().await,
        }
    }
}

/// Incident mode: every client one level up, or at least at `level`, until switched
/// off or `until`.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    /// The floor; `None`: one level up.
    pub level: Option<Level>,
    /// When it ends by itself.
    pub until: Option<Timestamp>,
    /// What the operator said.
    pub reason: String,
    /// When it started.
    pub since: Timestamp,
}

impl Incident {
    /// `level` as raised by this incident.
    pub fn raise(&self, level: Level) -> Level {
        match self.level {
            Some(floor) => level.max(floor),
            None => level.raised(),
        }
    }
}

/// A client's standing for one request.
pub struct Standing {
    /// The level its request is decided at (incident mode included).
    pub level: Level,
    /// Why it is at its recorded level.
    pub reasons: Vec<String>,
    /// Incident mode raised its level above the recorded one.
    pub raised_by_incident: bool,
    /// Its block, if blocked.
    pub block: Option<Block>,
    /// The store's time.
    pub now: Timestamp,
}

/// What an alert about a client says of the request that triggered it.
pub struct Trigger {
    /// The client's address.
    pub ip: IpAddr,
    /// Method.
    pub method: Method,
    /// Path and query (sanitised before use).
    pub uri: Uri,
    /// User agent (sanitised before use).
    pub user_agent: Option<HeaderValue>,
    /// Whether it carried credentials.
    pub authenticated: bool,
}

/// Adaptive defence.
pub struct Defence {
    config: ArcSwap<ThreatConfig>,
    store: Threats,
    incident: ArcSwapOption<Incident>,
    clock: SystemClock,
    sanitiser: Sanitiser,
    instance: String,
    metrics: Arc<Metrics>,
    /// Where alerts go; `None`: log lines.
    alerts: Option<Arc<AbuseReporter>>,
    /// Standing read from Redis, kept `[threat] status_cache` (none in memory).
    cache: Option<StatusCache>,
    /// `ratewarden_threat_requests_total` by level, so a request takes no family lock.
    requests_by_level: [prometheus_client::metrics::counter::Counter; 4],
    /// Observations not yet flushed, per client.
    pending: Vec<Mutex<HashMap<String, Pending>>>,
    pending_per_shard: usize,
    hasher: RandomState,
}

impl Defence {
    /// Defence for `config`, keeping state where `store` says (its own Redis
    /// connection, so limiter traffic and threat traffic do not queue behind each other).
    pub fn new(
        config: ThreatConfig,
        store: &StoreConfig,
        instance: String,
        metrics: Arc<Metrics>,
        alerts: Option<Arc<AbuseReporter>>,
    ) -> anyhow::Result<Defence> {
        let sanitiser = alerts
            .as_ref()
            .map_or_else(Sanitiser::default, |a| a.sanitiser().clone());
        let cache = match (store, config.status_cache) {
            (StoreConfig::Redis { .. }, Some(ttl)) => {
                Some(StatusCache::new(ttl, config.max_clients))
            }
            _ => None,
        };
        let store = match store {
            StoreConfig::Memory { .. } => {
                Threats::Memory(MemoryThreats::new(config.max_clients, SystemClock::new()))
            }
            StoreConfig::Redis { settings, .. } => Threats::Redis(Box::new(RedisStore::new(
                settings.clone(),
                SystemClock::new(),
            )?)),
        };
        let pending_per_shard = config.max_clients.div_ceil(PENDING_SHARDS).max(1);
        let requests_by_level = Level::ALL.map(|level| {
            metrics
                .requests_by_level
                .get_or_create(&LevelLabel {
                    level: level.as_str(),
                })
                .clone()
        });
        Ok(Defence {
            config: ArcSwap::from_pointee(config),
            store,
            incident: ArcSwapOption::empty(),
            clock: SystemClock::new(),
            sanitiser,
            instance,
            metrics,
            alerts,
            cache,
            pending: (0..PENDING_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            pending_per_shard,
            requests_by_level,
            hasher: RandomState::new(),
        })
    }

    /// Replaces the settings (on reload); state is kept.
    pub fn reconfigure(&self, config: ThreatConfig) {
        self.config.store(Arc::new(config));
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<ThreatConfig> {
        self.config.load_full()
    }

    /// The store, for the admin API.
    pub fn store(&self) -> &Threats {
        &self.store
    }

    /// Drops memory records that say nothing any more (every 10 s); a no-op on Redis,
    /// where keys expire by themselves.
    pub fn spawn_janitor(self: &Arc<Self>) {
        if let Threats::Memory(_) = self.store {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(std::time::Duration::from_secs(10));
                loop {
                    ticks.tick().await;
                    let Some(defence) = weak.upgrade() else {
                        return;
                    };
                    if let Threats::Memory(m) = &defence.store {
                        m.sweep();
                    }
                }
            });
        }
    }

    /// The incident in force, if any (one that has run out is switched off here).
    pub fn incident(&self) -> Option<Arc<Incident>> {
        let metrics = &self.metrics;
        let incident = self.incident.load_full()?;
        if incident.until.is_some_and(|u| u <= self.clock.now()) {
            self.incident.store(None);
            metrics.incident_mode.set(0);
            tracing::warn!(target: "ratewarden::incident", "incident mode ended (deadline reached)");
            return None;
        }
        Some(incident)
    }

    /// Switches incident mode on (or changes it).
    pub fn start_incident(&self, incident: Incident) {
        let metrics = &self.metrics;
        tracing::warn!(
            target: "ratewarden::incident",
            level = incident.level.map_or("one level up", Level::as_str),
            until = ?incident.until.map(|u| u.as_secs_ceil()),
            reason = %self.sanitiser.text(&incident.reason),
            "incident mode on: every client's threat level raised"
        );
        self.incident.store(Some(Arc::new(incident)));
        metrics.incident_mode.set(1);
    }

    /// Switches incident mode off; whether it was on.
    pub fn end_incident(&self) -> bool {
        let metrics = &self.metrics;
        let was = self.incident.swap(None).is_some();
        metrics.incident_mode.set(0);
        if was {
            tracing::warn!(target: "ratewarden::incident", "incident mode off");
        }
        was
    }

    /// The time now, as the defence reads it.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The client's standing; a store failure leaves it normal and unblocked (limits
    /// still apply: defence adds to them, it never replaces them).
    pub async fn standing(&self, client: &str) -> Standing {
        let metrics = &self.metrics;
        let local_now = self.clock.now();
        let cached = self.cache.as_ref().and_then(|c| c.get(client, local_now));
        let status = match cached {
            Some(status) => status,
            None => match self.store.status(client).await {
                Ok(s) => {
                    if let Some(cache) = &self.cache {
                        cache.put(client, s.clone(), local_now);
                    }
                    s
                }
                Err(e) => {
                    failed(metrics, &e);
                    ClientStatus {
                        now: local_now,
                        ..ClientStatus::default()
                    }
                }
            },
        };
        let level = match self.incident() {
            Some(incident) => incident.raise(status.level),
            None => status.level,
        };
        let raised_by_incident = level > status.level;
        self.requests_by_level[usize::from(level.index())].inc();
        Standing {
            level,
            reasons: status.reasons,
            raised_by_incident,
            // A remembered block may have ended since it was read.
            block: status.block.filter(|b| b.until > status.now),
            now: status.now,
        }
    }

    /// Drops what this gateway remembers of the client's standing: after a change made
    /// here (a block, a level, an operator's lift), the next request reads the store.
    pub fn forget(&self, client: &str) {
        if let Some(cache) = &self.cache {
            cache.forget(client);
        }
    }

    /// What `level` does.
    pub fn response(&self, level: Level) -> LevelResponse {
        *self.config.load().levels.get(level)
    }

    /// The plan of a block of `base` for the first offence, escalating as configured.
    pub fn plan(&self, base: Nanos, reasons: Vec<String>) -> BlockPlan {
        let config = self.config.load();
        let e = &config.escalation;
        let mut ladder = Vec::new();
        for offence in 1..=MAX_LADDER {
            let length = e.block_length(base, offence);
            ladder.push(length);
            if length >= e.max_block || e.repeat_factor <= 1.0 {
                break;
            }
        }
        // A factor so small that 64 steps do not reach the cap: the next step is the cap.
        if ladder.len() == MAX_LADDER as usize && ladder.last() < Some(&e.max_block) {
            ladder.push(e.max_block);
        }
        BlockPlan {
            ladder,
            forget_after: e.forget_after,
            reasons,
        }
    }

    /// Blocks `client` per `plan`; alerts when this call placed the block. `None` when
    /// the store failed (the request is then answered as its limits say).
    pub async fn block(
        &self,
        client: &str,
        plan: &BlockPlan,
        level: Level,
        origin: &'static str,
        trigger: Option<&Trigger>,
    ) -> Option<Block> {
        let metrics = &self.metrics;
        self.forget(client);
        let (block, made) = match self.store.block(client, plan).await {
            Ok(b) => b,
            Err(e) => {
                failed(metrics, &e);
                return None;
            }
        };
        if made {
            metrics.blocks.get_or_create(&BlockOrigin { origin }).inc();
            let now = self.clock.now();
            let seconds = block.remaining(now).as_secs_ceil();
            tracing::warn!(
                target: "ratewarden::threat",
                client,
                level = level.as_str(),
                seconds,
                offence = block.offence,
                reasons = ?block.reasons,
                origin,
                "client blocked"
            );
            let context = ThreatContext {
                level: level.as_str().into(),
                previous_level: level.as_str().into(),
                score: 0.0,
                reasons: block.reasons.clone(),
                blocked_until: Some(block.until.as_secs_ceil()),
                block_seconds: Some(seconds),
                offence: Some(block.offence),
            };
            self.alert(
                "client_blocked",
                Severity::Critical,
                client,
                trigger,
                context,
            );
        }
        Some(block)
    }

    /// Records one request of `client`: added to the client's pending batch, which
    /// the flusher hands to the store (and scores) within [`FLUSH_EVERY`]. Never waits.
    pub fn observe(&self, client: String, observation: Observation, trigger: Trigger) {
        let shard = &self.pending[(self.hasher.hash_one(&client) % PENDING_SHARDS as u64) as usize];
        let mut pending = shard.lock();
        if let Some(p) = pending.get_mut(&client) {
            p.batch.add(&observation);
            return;
        }
        if pending.len() >= self.pending_per_shard {
            drop(pending);
            self.metrics.threat_observations_dropped.inc();
            return;
        }
        pending.insert(
            client,
            Pending {
                batch: Batch::of(&observation),
                trigger,
            },
        );
    }

    /// Starts the flusher: every [`FLUSH_EVERY`], each client's pending batch goes to
    /// the store (at most [`FLUSHES_IN_FLIGHT`] at once) and is scored.
    pub fn spawn_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(FLUSHES_IN_FLIGHT));
            let mut ticks = tokio::time::interval(FLUSH_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(defence) = weak.upgrade() else {
                    return;
                };
                for shard in defence.pending.iter() {
                    let batch = std::mem::take(&mut *shard.lock());
                    for (client, pending) in batch {
                        let Ok(permit) = in_flight.clone().acquire_owned().await else {
                            return;
                        };
                        let defence = defence.clone();
                        tokio::spawn(async move {
                            defence.flush(client, pending).await;
                            drop(permit);
                        });
                    }
                }
            }
        });
    }

    /// Adds one client's batch to the store, scores it, and acts on a change of level.
    async fn flush(&self, client: String, pending: Pending) {
        let config = self.config.load_full();
        let observed = match self
            .store
            .observe(&client, &pending.batch, config.window)
            .await
        {
            Ok(o) => o,
            Err(e) => return failed(&self.metrics, &e),
        };
        if let Some(cache) = &self.cache {
            cache.confirm(&client, &observed, self.clock.now());
        }
        let mut signals = observed.signals;
        let failed_now = pending.batch.bucket.auth_failures > 0;
        if config.scoring.failing_neighbours.weight > 0.0
            && (failed_now || signals.auth_failures >= MIN_OWN_FAILURES)
        {
            // Every failing address is recorded in its network; only a client that
            // failed repeatedly itself is judged by its network's failures.
            let network = format!("network:{}", config.networks.network_of(pending.trigger.ip));
            let address = failed_now.then(|| stable_hash(client.as_bytes()));
            match self
                .store
                .failing_neighbours(&network, address, config.window)
                .await
            {
                Ok(n) if signals.auth_failures >= MIN_OWN_FAILURES => {
                    signals.failing_neighbours = n;
                }
                Ok(_) => {}
                Err(e) => failed(&self.metrics, &e),
            }
        }
        let assessment = config.scoring.assess(&signals);
        if assessment.level == observed.recorded {
            return;
        }
        // Only the flush that actually moves the level announces it: of two gateways
        // seeing a client cross a threshold at once, one alerts.
        match self
            .store
            .set_level(
                &client,
                observed.recorded,
                assessment.level,
                &assessment.reasons,
                config.window,
            )
            .await
        {
            Ok(true) => {
                self.forget(&client);
                self.level_changed(&client, observed.recorded, &assessment, &pending.trigger)
            }
            Ok(false) => {}
            Err(e) => failed(&self.metrics, &e),
        }
    }

    fn level_changed(&self, client: &str, from: Level, to: &Assessment, trigger: &Trigger) {
        self.metrics
            .level_changes
            .get_or_create(&LevelLabel {
                level: to.level.as_str(),
            })
            .inc();
        if to.level < from {
            tracing::info!(target: "ratewarden::threat", client, from = from.as_str(), to = to.level.as_str(), score = to.score, reasons = ?to.reasons, "threat level lowered");
            return;
        }
        tracing::warn!(target: "ratewarden::threat", client, from = from.as_str(), to = to.level.as_str(), score = to.score, reasons = ?to.reasons, "threat level raised");
        let severity = if to.level >= Level::High {
            Severity::Critical
        } else {
            Severity::High
        };
        let context = ThreatContext {
            level: to.level.as_str().into(),
            previous_level: from.as_str().into(),
            score: (to.score * 10.0).round() / 10.0,
            reasons: to.reasons.clone(),
            blocked_until: None,
            block_seconds: None,
            offence: None,
        };
        self.alert(
            "threat_level_raised",
            severity,
            client,
            Some(trigger),
            context,
        );
    }

    fn alert(
        &self,
        kind: &'static str,
        severity: Severity,
        client: &str,
        trigger: Option<&Trigger>,
        context: ThreatContext,
    ) {
        let mut alert = alert_about(
            kind,
            severity,
            client,
            trigger,
            self.config.load().window,
            &self.sanitiser,
            &self.instance,
        );
        alert.threat = Some(context);
        deliver(self.alerts.as_deref(), alert);
    }

    /// Whether `user_agent` names a known automation tool.
    pub fn is_automation(&self, user_agent: Option<&HeaderValue>) -> bool {
        let Some(ua) = user_agent else {
            return false;
        };
        // Patterns are lower case; the user agent is compared in place, ASCII case
        // folded, without a lower-cased copy per request.
        let ua = ua.as_bytes();
        self.config.load().automation_agents.iter().any(|a| {
            let a = a.as_bytes();
            !a.is_empty() && ua.windows(a.len()).any(|w| w.eq_ignore_ascii_case(a))
        })
    }
}

fn failed(metrics: &Metrics, error: &StoreError) {
    metrics
        .threat_store_errors
        .get_or_create(&StoreFailure { kind: error.kind() })
        .inc();
    tracing::debug!(error = %error, "threat store failed; request decided at its recorded level");
}

/// An alert about `client` (its address or network) over `window`, with what may be
/// shown of the request that raised it, sanitised.
pub fn alert_about(
    kind: &'static str,
    severity: Severity,
    client: &str,
    trigger: Option<&Trigger>,
    window: Nanos,
    sanitiser: &Sanitiser,
    instance: &str,
) -> Alert {
    // An alert's time stamp is wall-clock time, as its readers expect.
    let now = SystemClock::new().now().as_secs_ceil();
    Alert {
        id: Alert::new_id(),
        kind,
        severity,
        identity: IdentityKind::Ip,
        identity_value: client.to_owned(),
        client_ip: trigger.map_or_else(|| client.to_owned(), |t| t.ip.to_string()),
        client_network: client.to_owned(),
        violations: 0,
        window_seconds: window.as_secs_ceil(),
        violations_since_last_alert: 0,
        rules: Vec::new(),
        source: Source::Gateway,
        method: trigger.map_or_else(String::new, |t| sanitiser.text(t.method.as_str())),
        path: trigger.map_or_else(String::new, |t| {
            sanitiser.path_and_query(t.uri.path_and_query().map_or("/", |p| p.as_str()))
        }),
        user_agent: trigger
            .and_then(|t| t.user_agent.as_ref())
            .map(|ua| sanitiser.text(&String::from_utf8_lossy(ua.as_bytes()))),
        authenticated: trigger.is_some_and(|t| t.authenticated),
        user: None,
        api_key_id: None,
        first_violation: now,
        last_violation: now,
        instance: instance.to_owned(),
        threat: None,
        login: None,
    }
}

/// Hands `alert` to alerting, or (no `[[alerts]]` configured) writes it as a log line.
pub fn deliver(alerts: Option<&AbuseReporter>, alert: Alert) {
    match alerts {
        Some(reporter) => reporter.raise(alert),
        None => LogSink.deliver(&ratewarden_detect::Raised::new(alert)),
    }
}

/// A stable hash: the same in every gateway and every build, so that gateways sharing
/// Redis count an endpoint (or a user agent) once.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    // SipHash-1-3 with fixed keys: not a secret, only a spread.
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x7261_7465, 0x7761_7264);
    h.write(bytes);
    h.finish()
}

/// The name defence knows a client by: its address (IPv4) or network (IPv6 prefix).
pub fn client_label(ip: IpAddr, network: ipnet::IpNet) -> String {
    if ip.is_ipv4() || network.prefix_len() == 128 {
        ip.to_string()
    } else {
        network.to_string()
    }
}
