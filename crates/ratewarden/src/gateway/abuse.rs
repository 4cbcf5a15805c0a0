//! The gateway's side of abuse alerting: a 429 (ours, or the upstream's) becomes a
//! sanitised, pseudonymised [`Violation`] handed to the alerting tasks, without waiting.
//!
//! Only what an alert may show is taken from the request: method, the path with secret
//! query values masked, the user agent cut and cleaned, and pseudonyms of the user id
//! and API key. Credentials are only looked at to say whether there were any.

use crate::config::{AbuseConfig, SinkConfig, StoreConfig};
use foldhash::quality::FoldHasher;
use foldhash::SharedSeed;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use ipnet::IpNet;
use ratewarden_core::clock::SystemClock;
use ratewarden_core::identity::DottedQuad;
use ratewarden_detect::sinks::{LogSink, NamedSink, SentrySink, WebhookSink};
use ratewarden_detect::tracker::local_fallback;
use ratewarden_detect::{
    AlertMetrics, Alerting, IdentityKind, Pseudonymiser, Sanitiser, Sink, Source, Tracker,
    Violation,
};
use ratewarden_store::redis::RedisStore;
use ratewarden_store::{Check, Decisions, MemoryStore, Store, StoreError};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

/// Where violations are counted: a memory store of their own, or Redis.
pub enum CountingStore {
    /// In this process.
    Memory(MemoryStore<SystemClock>),
    /// A Redis store of its own (its own connection).
    Redis(Box<RedisStore<SystemClock>>),
}

impl Store for CountingStore {
    async fn decide(&self, checks: &[Check<'_>]) -> Result<Decisions, StoreError> {
        match self {
            CountingStore::Memory(m) => m.decide(checks).await,
            CountingStore::Redis(r) => r.decide(checks).await,
        }
    }
}

/// A request's head as far as a violation report needs it: cheap clones (reference
/// counted), held only until the request is answered.
pub struct RequestHead {
    method: Method,
    uri: Uri,
    user_agent: Option<HeaderValue>,
    user: Option<HeaderValue>,
    api_key: Option<HeaderValue>,
    authenticated: bool,
}

/// What a pending violation keeps of its request: short owned copies, so it holds
/// neither the connection's read buffer nor a long secret.
struct Kept {
    method: Method,
    path_and_query: String,
    user_agent: Option<String>,
    user: Option<String>,
    api_key: Option<String>,
    authenticated: bool,
}

/// The longest prefix of a path or header value kept for a violation.
const KEPT: usize = 512;

fn prefix(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(KEPT)]).into_owned()
}

impl Kept {
    fn of(head: &RequestHead) -> Kept {
        let value = |v: &Option<HeaderValue>| v.as_ref().map(|v| prefix(v.as_bytes()));
        Kept {
            method: head.method.clone(),
            path_and_query: prefix(
                head.uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .as_bytes(),
            ),
            user_agent: value(&head.user_agent),
            user: value(&head.user),
            api_key: value(&head.api_key),
            authenticated: head.authenticated,
        }
    }
}

/// Reports violations.
pub struct AbuseReporter {
    alerting: Alerting,
    describer: Arc<Describer>,
    user_header: Option<HeaderName>,
    api_key_header: Option<HeaderName>,
    count_upstream: bool,
    /// Whether user ids are counted (`[abuse] clients` has "user"): then they tell a
    /// network's violations apart.
    tracks_users: bool,
    /// Whether API keys are, likewise.
    tracks_keys: bool,
    /// Hashes a client's network into the key its violations are coalesced under,
    /// and its user id and API key into the identity they are counted for.
    batch_keys: BatchKeys,
    /// Sentry clients, flushed at shutdown.
    sentry_sinks: Vec<SentrySink>,
}

impl AbuseReporter {
    /// Starts alerting for `config` on the current runtime; counts in Redis when
    /// that is the store, else in a memory store of its own (never the limiter's: a
    /// flood of new violators would evict live limit counters there, and alerting must
    /// not change a decision).
    pub fn start(
        config: &AbuseConfig,
        store: &StoreConfig,
        metrics: AlertMetrics,
    ) -> anyhow::Result<AbuseReporter> {
        let counting = match store {
            StoreConfig::Redis { settings, .. } => CountingStore::Redis(Box::new(RedisStore::new(
                settings.clone(),
                SystemClock::new(),
            )?)),
            StoreConfig::Memory { .. } => CountingStore::Memory(local_fallback(SystemClock::new())),
        };
        let tracker = Tracker::new(
            counting,
            local_fallback(SystemClock::new()),
            config.settings.clone(),
        )
        .map_err(|e| anyhow::anyhow!("abuse tracking: {e}"))?;
        let mut sentry_sinks = Vec::new();
        let sinks = config
            .sinks
            .iter()
            .map(|entry| -> anyhow::Result<NamedSink> {
                let sink = match &entry.sink {
                    SinkConfig::Log => Sink::Log(LogSink),
                    SinkConfig::Webhook {
                        url,
                        secret,
                        timeout,
                        batch,
                    } => Sink::Webhook(
                        WebhookSink::new(url.clone(), secret.clone(), *timeout, *batch)
                            .map_err(|e| anyhow::anyhow!("alert sink {}: {e}", entry.name))?,
                    ),
                    SinkConfig::Sentry { dsn } => {
                        let sink = SentrySink::new(dsn, &config.settings.instance)
                            .map_err(|e| anyhow::anyhow!("alert sink {}: {e}", entry.name))?;
                        sentry_sinks.push(sink.clone());
                        Sink::Sentry(sink)
                    }
                };
                Ok(NamedSink {
                    name: entry.name.clone(),
                    sink,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(AbuseReporter {
            alerting: Alerting::start(tracker, sinks, metrics),
            describer: Arc::new(Describer {
                pseudonyms: config
                    .privacy_secret
                    .as_deref()
                    .map(|s| Pseudonymiser::new(s.as_bytes())),
                sanitiser: Sanitiser::new(config.secret_params.clone()),
            }),
            user_header: config.user_header.clone(),
            api_key_header: config.api_key_header.clone(),
            count_upstream: config.settings.count_upstream_429,
            tracks_users: config.settings.track.contains(&IdentityKind::User),
            tracks_keys: config.settings.track.contains(&IdentityKind::ApiKey),
            batch_keys: BatchKeys::new(),
            sentry_sinks,
        })
    }

    /// Waits up to `timeout` for Sentry events still queued: at shutdown, so the
    /// alerts of the last moments are not lost with the process.
    pub fn flush(&self, timeout: std::time::Duration) {
        for sink in &self.sentry_sinks {
            if !sink.flush(timeout) {
                tracing::warn!("some Sentry alerts were still unsent at shutdown");
            }
        }
    }

    /// Sends an alert from adaptive defence through the configured sinks.
    pub fn raise(&self, alert: ratewarden_detect::Alert) {
        self.alerting.raise(alert);
    }

    /// The sanitiser alerts go through (`[privacy] secret_params`).
    pub fn sanitiser(&self) -> &Sanitiser {
        &self.describer.sanitiser
    }

    /// Whether the upstream's 429s count.
    pub fn counts_upstream(&self) -> bool {
        self.count_upstream
    }

    /// The request head a violation report needs (cheap clones).
    pub fn head<B>(&self, request: &Request<B>) -> RequestHead {
        let headers = request.headers();
        let get = |name: &Option<HeaderName>| name.as_ref().and_then(|n| headers.get(n)).cloned();
        let user = get(&self.user_header);
        let api_key = get(&self.api_key_header);
        RequestHead {
            method: request.method().clone(),
            uri: request.uri().clone(),
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
            authenticated: headers.contains_key(http::header::AUTHORIZATION)
                || headers.contains_key(http::header::PROXY_AUTHORIZATION)
                || user.is_some()
                || api_key.is_some(),
            user,
            api_key,
        }
    }

    /// Reports a 429 from `client`, limited by `rules`, for the request `head` gives.
    /// In a flood the client's batch is usually pending already: then only a counter
    /// moves, and `rules` is not called (nor `head`, unless user ids or API keys are
    /// tracked). Otherwise the request's details are copied (bounded) for the
    /// description, which is built when the batch is counted.
    pub fn report(
        &self,
        head: impl FnOnce() -> RequestHead,
        client: IpAddr,
        network: IpNet,
        rules: impl FnOnce() -> Vec<String>,
        source: Source,
    ) {
        // Coalesced by network, each network's batch counting a few identities apart:
        // a client rotating user or key headers must not be able to fill the pending
        // map (and push other clients' violations out). Keyed with this process's
        // random seeds (see `BatchKeys`).
        let key = self.batch_keys.of(network);
        let open = |identity: u32, head: &RequestHead| {
            let (kept, rules) = (Kept::of(head), rules());
            let describer = self.describer.clone();
            let at_nanos = unix_nanos();
            self.alerting.report(key, identity, source, move || {
                describer.violation(kept, at_nanos, client, network, rules, source)
            });
        };
        if !self.tracks_users && !self.tracks_keys {
            if !self.alerting.report_repeat(key, 0, source) {
                open(0, &head());
            }
            return;
        }
        let head = head();
        let user = self.tracks_users.then_some(head.user.as_ref()).flatten();
        let api_key = self.tracks_keys.then_some(head.api_key.as_ref()).flatten();
        let identity = self.batch_keys.identity(user, api_key);
        if !self.alerting.report_repeat(key, identity, source) {
            open(identity, &head);
        }
    }
}

/// The keyed hash a network's violations are coalesced under, computed on every 429 of
/// a flood: foldhash over the network as one integer (about 25 instructions for an
/// IPv4 network, against some 240 for SipHash over `IpNet`'s derived `Hash`). Its seeds
/// come from the operating system's randomness (through the standard library's
/// `RandomState`, as the memory store's keys do), and no output ever leaves the
/// process, so there is nothing to learn them from. foldhash is not a cryptographic
/// hash: should two networks share a key anyway, their violations are counted under
/// the first one's description (a misattributed alert), never lost.
struct BatchKeys {
    seed: u64,
    shared: SharedSeed,
}

impl BatchKeys {
    fn new() -> BatchKeys {
        let os = std::hash::RandomState::new();
        BatchKeys {
            seed: os.hash_one(1_u8),
            shared: SharedSeed::from_u64(os.hash_one(2_u8)),
        }
    }

    fn of(&self, network: IpNet) -> u64 {
        let mut hasher = FoldHasher::with_seed(self.seed, &self.shared);
        match network {
            IpNet::V4(n) => ((u64::from(n.network().to_bits()) << 8) | u64::from(n.prefix_len()))
                .hash(&mut hasher),
            IpNet::V6(n) => (n.network().to_bits(), n.prefix_len()).hash(&mut hasher),
        }
        hasher.finish()
    }

    /// Which user id and API key (those tracked) a violation is counted for: values
    /// that the alert would show as one pseudonym (the same first bytes, blanks around
    /// them aside) are one identity. 32 bits are enough to tell apart the few
    /// identities of one network's batch; two that share a value anyway are counted as
    /// one. 0 is no identity at all.
    fn identity(&self, user: Option<&HeaderValue>, api_key: Option<&HeaderValue>) -> u32 {
        fn as_named(value: Option<&HeaderValue>) -> Option<&[u8]> {
            let bytes = value?.as_bytes();
            Some(bytes[..bytes.len().min(KEPT)].trim_ascii()).filter(|v| !v.is_empty())
        }
        let (user, api_key) = (as_named(user), as_named(api_key));
        if user.is_none() && api_key.is_none() {
            return 0;
        }
        let mut hasher = FoldHasher::with_seed(self.seed, &self.shared);
        user.hash(&mut hasher);
        api_key.hash(&mut hasher);
        ((hasher.finish() >> 32) as u32).max(1)
    }
}

/// Turns a request summary into a sanitised, pseudonymised violation.
struct Describer {
    pseudonyms: Option<Pseudonymiser>,
    sanitiser: Sanitiser,
}

impl Describer {
    fn violation(
        &self,
        request: Kept,
        at_nanos: u64,
        client: IpAddr,
        network: IpNet,
        rules: Vec<String>,
        source: Source,
    ) -> Violation {
        let pseudonym = |kind: &str, value: &Option<String>| {
            let value = value.as_deref()?.trim();
            if value.is_empty() {
                return None;
            }
            Some(self.pseudonyms.as_ref()?.pseudonym(kind, value))
        };
        let network = match client {
            IpAddr::V4(v4) => DottedQuad::new(v4).as_str().to_owned(),
            IpAddr::V6(_) => network.to_string(),
        };
        Violation {
            at_nanos,
            client_ip: client,
            client_network: network,
            user: pseudonym("user", &request.user),
            api_key_id: pseudonym("key", &request.api_key),
            authenticated: request.authenticated,
            rules,
            source,
            method: self.sanitiser.text(request.method.as_str()),
            path: self.sanitiser.path_and_query(&request.path_and_query),
            user_agent: request
                .user_agent
                .as_deref()
                .map(|ua| self.sanitiser.text(ua)),
        }
    }
}

#[allow(clippy::disallowed_methods)] // the violation's wall-clock time, for alerts
fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keys_tell_networks_apart_and_agree_on_the_same_one() {
        let keys = BatchKeys::new();
        let key = |n: &str| keys.of(n.parse().expect("network"));
        assert_eq!(key("10.0.0.7/32"), key("10.0.0.7/32"));
        let distinct: std::collections::HashSet<u64> = [
            "10.0.0.7/32",
            "10.0.0.8/32",
            "10.0.0.0/24",
            "10.0.0.0/25",
            "::a00:7/128",
            "::ffff:10.0.0.7/128",
            "2001:db8::/64",
            "2001:db8::/56",
        ]
        .into_iter()
        .map(key)
        .collect();
        assert_eq!(distinct.len(), 8);
        // Seeded afresh: another process (or reporter) hashes differently.
        let other = BatchKeys::new();
        let network: IpNet = "10.0.0.7/32".parse().expect("network");
        assert_ne!(keys.of(network), other.of(network));
    }

    #[test]
    fn identities_tell_users_and_keys_apart() {
        let keys = BatchKeys::new();
        let value = HeaderValue::from_static;
        let (alice, bob) = (value("alice"), value("bob"));
        assert_eq!(keys.identity(None, None), 0, "no identity tracked");
        assert_eq!(keys.identity(Some(&value("  ")), None), 0, "a blank one");
        assert_eq!(
            keys.identity(Some(&alice), None),
            keys.identity(Some(&value(" alice ")), None),
            "one pseudonym, one identity"
        );
        let distinct: std::collections::HashSet<u32> = [
            keys.identity(None, None),
            keys.identity(Some(&alice), None),
            keys.identity(Some(&bob), None),
            keys.identity(None, Some(&alice)),
            keys.identity(Some(&alice), Some(&bob)),
            keys.identity(Some(&bob), Some(&alice)),
        ]
        .into_iter()
        .collect();
        assert_eq!(distinct.len(), 6, "a user is not a key of the same value");
    }
}
