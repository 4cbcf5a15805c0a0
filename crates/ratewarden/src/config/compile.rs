//! Validation: raw configuration into strong types, every error collected with its path.

use super::raw::{RawClients, RawConfig, RawMatch, RawRule, RawServer, RawStore};
use super::{Config, ConfigError, ConfigErrors, ServerConfig, StoreConfig};
use ipnet::IpNet;
use ratewarden_core::identity::{ForwardingHeader, TrustedProxies};
use ratewarden_core::path::CanonicalPath;
use ratewarden_core::policy::{Action, ClientPolicy, KeyTemplate, Policy, RouteMatch, Rule};
use ratewarden_core::{FixedWindow, Gcra, Limit, Rate, RuleName, SlidingWindow};
use ratewarden_store::failure::FailurePolicy;
use ratewarden_store::redis::{RedisSettings, RedisTarget};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// The longest a `delay` rule may hold a request.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Collects errors while validating.
#[derive(Default)]
pub(super) struct Errors(Vec<ConfigError>);

impl Errors {
    pub(super) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// The value if `result` is Ok, else records the error and gives `None`.
    pub(super) fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        result.map_err(|e| self.add(field, e.to_string())).ok()
    }
}

/// Validates a raw configuration.
pub fn compile(raw: RawConfig, base: &std::path::Path) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::default();
    let server = server(&raw.server, &mut errors);
    let store = store(&raw.store, &mut errors);
    let clients = clients(&raw.clients, &mut errors);
    let abuse = super::abuse::abuse(
        raw.abuse.as_ref(),
        &raw.alerts,
        &raw.privacy,
        server.as_ref().map(|s| s.listen.port()),
        &mut errors,
    );
    let threat = super::threat::threat(raw.threat.as_ref(), clients.ipv6_prefix, &mut errors);
    let admin = super::threat::admin(&raw.admin, &mut errors);
    let mut names = HashSet::new();
    let rules: Vec<Option<Rule>> = raw
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("rules[{i}]");
            if !names.insert(r.name.clone()) {
                errors.add(
                    format!("{field}.name"),
                    format!(
                        "{:?} is used by an earlier rule; names must be unique",
                        r.name
                    ),
                );
            }
            rule(r, &field, &mut errors)
        })
        .collect();
    let logins = super::login::logins(
        &raw.login,
        &raw.privacy,
        raw.abuse.is_some(),
        &mut names,
        &mut errors,
    );
    if let Some(StoreConfig::Redis { .. }) = store {
        for (i, rule) in rules.iter().enumerate() {
            if let Some(rule) = rule {
                if let Err(e) = ratewarden_store::redis::check_limit(&rule.limit) {
                    errors.add(format!("rules[{i}].rate"), e.to_string());
                }
            }
        }
    }
    let reputation = ratewarden_core::policy::Reputation {
        deny: network_lists(&raw.reputation.deny, "reputation.deny", base, &mut errors),
        allow: network_lists(&raw.reputation.allow, "reputation.allow", base, &mut errors),
    };
    match (server, store, errors.0.is_empty()) {
        (Some(server), Some(store), true) => Ok(Config {
            server,
            store,
            abuse,
            threat,
            admin,
            login_pseudonyms: logins.pseudonymiser,
            policy: Policy {
                reputation,
                clients,
                rules: rules.into_iter().flatten().chain(logins.rules).collect(),
                logins: logins.routes,
            },
        }),
        _ => Err(ConfigErrors(errors.0)),
    }
}

fn server(raw: &RawServer, errors: &mut Errors) -> Option<ServerConfig> {
    let listen = errors.check("server.listen", parse_socket(&raw.listen));
    let upstream = errors.check("server.upstream", parse_upstream(&raw.upstream));
    let admin_listen = match &raw.admin_listen {
        Some(a) => errors
            .check("server.admin_listen", parse_socket(a))
            .map(Some),
        None => Some(None),
    };
    let duration =
        |errors: &mut Errors, field: &str, value: &Option<String>, default: u64| match value {
            Some(v) => errors.check(field, parse_duration(v)),
            None => Some(Duration::from_secs(default)),
        };
    let header_timeout = duration(errors, "server.header_timeout", &raw.header_timeout, 10);
    let connect = duration(
        errors,
        "server.upstream_connect_timeout",
        &raw.upstream_connect_timeout,
        5,
    );
    let upstream_timeout = duration(errors, "server.upstream_timeout", &raw.upstream_timeout, 60);
    let keepalive_timeout = duration(
        errors,
        "server.upstream_keepalive_timeout",
        &raw.upstream_keepalive_timeout,
        60,
    );
    // 0 is allowed: no connection is kept (each request asks for `Connection: close`),
    // for an upstream that mishandles keep-alive.
    let keepalive = match raw.upstream_keepalive.unwrap_or(256) {
        v @ 0..=100_000 => usize::try_from(v).ok(),
        v => {
            errors.add(
                "server.upstream_keepalive",
                format!("{v} is out of range: 0 to 100000"),
            );
            None
        }
    };
    // Upper bounds too: hyper allocates for the header count on every request, and a
    // semaphore panics past 2^61 permits.
    let bounded = |errors: &mut Errors, field: &str, value: Option<u64>, default: u64, max: u64| {
        let v = value.unwrap_or(default);
        if v == 0 || v > max {
            errors.add(field, format!("{v} is out of range: 1 to {max}"));
            return None;
        }
        usize::try_from(v).ok()
    };
    let max_header_bytes = bounded(
        errors,
        "server.max_header_bytes",
        raw.max_header_bytes,
        16 * 1024,
        1024 * 1024,
    );
    let max_headers = bounded(errors, "server.max_headers", raw.max_headers, 100, 1000);
    let max_delayed = bounded(
        errors,
        "server.max_delayed",
        raw.max_delayed,
        1024,
        1_000_000,
    );
    let max_connections = bounded(
        errors,
        "server.max_connections",
        raw.max_connections,
        10_000,
        1_000_000,
    );
    let upgrades = upgrades(raw.upgrades.as_deref(), errors);
    let tunnel_idle_timeout = duration(
        errors,
        "server.tunnel_idle_timeout",
        &raw.tunnel_idle_timeout,
        60,
    );
    // By default tunnels may take half the connection places: the rest stay for requests.
    // (Of a valid max_connections only: an invalid one has its own error.)
    let half_the_connections = max_connections.map_or(1, |m| (m as u64 / 2).max(1));
    let max_tunnels = bounded(
        errors,
        "server.max_tunnels",
        raw.max_tunnels,
        half_the_connections,
        1_000_000,
    );
    let max_tunnels_per_client = bounded(
        errors,
        "server.max_tunnels_per_client",
        raw.max_tunnels_per_client,
        256,
        1_000_000,
    );
    Some(ServerConfig {
        listen: listen?,
        upstream: upstream?,
        admin_listen: admin_listen?,
        header_timeout: header_timeout?,
        upstream_connect_timeout: connect?,
        upstream_timeout: upstream_timeout?,
        upstream_keepalive: keepalive?,
        upstream_keepalive_timeout: keepalive_timeout?,
        max_header_bytes: max_header_bytes?,
        max_headers: max_headers?,
        max_delayed: max_delayed?,
        max_connections: max_connections?,
        upgrades: upgrades?,
        tunnel_idle_timeout: tunnel_idle_timeout?,
        max_tunnels: max_tunnels?,
        max_tunnels_per_client: u32::try_from(max_tunnels_per_client?)
            .expect("bounded to 1000000 above"),
    })
}

/// Whether a protocol name (`h2c`, `h2`, `HTTP/2.0`, `TLS/1.0`, drafts such as
/// `h2c-14`) carries HTTP requests, which would then pass the gateway unseen.
fn carries_http(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["h2", "h3", "http", "tls", "spdy", "quic"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// `server.upgrades`: protocol names (RFC 9110 tokens, with an optional `/version`),
/// `websocket` when not given. `h2c` is refused: a connection switched to HTTP/2 behind
/// the gateway would carry every later request past the rules (h2c smuggling).
fn upgrades(raw: Option<&[String]>, errors: &mut Errors) -> Option<Vec<String>> {
    let Some(raw) = raw else {
        return Some(vec!["websocket".to_owned()]);
    };
    let mut valid = Vec::with_capacity(raw.len());
    for (i, protocol) in raw.iter().enumerate() {
        let field = format!("server.upgrades[{i}]");
        let is_token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        let (name, version) = match protocol.split_once('/') {
            Some((name, version)) => (name, Some(version)),
            None => (protocol.as_str(), None),
        };
        if !is_token(name) || version.is_some_and(|v| !is_token(v)) {
            errors.add(
                &field,
                format!("{protocol:?} is not a protocol name (a token such as \"websocket\")"),
            );
        } else if carries_http(name) {
            errors.add(
                &field,
                format!(
                    "{protocol:?} cannot be allowed: a connection switched to HTTP (or to TLS, which carries HTTP) behind the gateway would carry later requests past every rule; clients may speak h2c to the gateway directly"
                ),
            );
        } else {
            valid.push(protocol.to_ascii_lowercase());
        }
    }
    (valid.len() == raw.len()).then_some(valid)
}

/// The longest `store.timeout`: a decision waits at most this for Redis.
const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(10);

fn store(raw: &RawStore, errors: &mut Errors) -> Option<StoreConfig> {
    let max_keys = match raw.max_keys {
        Some(n) if n < 1 => {
            errors.add(
                "store.max_keys",
                format!("{n} is not a positive number of keys"),
            );
            return None;
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => 1_000_000,
    };
    match raw.kind.as_deref().unwrap_or("memory") {
        "memory" => {
            for (field, given) in [
                ("url", raw.url.is_some()),
                ("cluster", raw.cluster.is_some()),
                ("timeout", raw.timeout.is_some()),
                ("on_error", raw.on_error.is_some()),
                ("key_prefix", raw.key_prefix.is_some()),
            ] {
                if given {
                    errors.add(format!("store.{field}"), "only applies to kind = \"redis\"");
                }
            }
            Some(StoreConfig::Memory { max_keys })
        }
        "redis" => redis_store(raw, max_keys, errors),
        other => {
            errors.add(
                "store.kind",
                format!("{other:?} is not a store kind; use \"memory\" or \"redis\""),
            );
            None
        }
    }
}

fn redis_store(raw: &RawStore, max_keys: usize, errors: &mut Errors) -> Option<StoreConfig> {
    let target = match (&raw.url, &raw.cluster) {
        (Some(url), None) => errors
            .check("store.url", redis_url(url))
            .map(|()| RedisTarget::Server(url.clone())),
        (None, Some(urls)) if urls.is_empty() => {
            errors.add(
                "store.cluster",
                "lists no node; give at least one seed node URL",
            );
            None
        }
        (None, Some(urls)) => {
            let before = errors.0.len();
            for (i, url) in urls.iter().enumerate() {
                errors.check(&format!("store.cluster[{i}]"), redis_url(url));
            }
            (errors.0.len() == before).then(|| RedisTarget::Cluster(urls.clone()))
        }
        (Some(_), Some(_)) => {
            errors.add(
                "store.cluster",
                "give either url (one server) or cluster (seed nodes), not both",
            );
            None
        }
        (None, None) => {
            errors.add(
                "store.url",
                "kind = \"redis\" needs url = \"redis://host:port\" or cluster = [...]",
            );
            None
        }
    };
    let timeout = match raw.timeout.as_deref() {
        None => Some(Duration::from_millis(50)),
        Some(t) => errors
            .check("store.timeout", parse_duration(t))
            .and_then(|d| {
                if d > MAX_STORE_TIMEOUT {
                    errors.add("store.timeout", format!("{t:?} is longer than the maximum of 10s: every request would wait that long on an outage"));
                    None
                } else {
                    Some(d)
                }
            }),
    };
    let on_error = match raw.on_error.as_deref().unwrap_or("allow") {
        "allow" => Some(FailurePolicy::Allow),
        "deny" => Some(FailurePolicy::Deny),
        "local" => Some(FailurePolicy::Local),
        other => {
            errors.add("store.on_error", format!("{other:?} is not a failure policy; use \"allow\" (fail open), \"deny\" (fail closed: 503) or \"local\" (per-instance memory limits)"));
            None
        }
    };
    let key_prefix = raw.key_prefix.clone().unwrap_or_else(|| "rw".into());
    let prefix_ok = !key_prefix.is_empty()
        && key_prefix.len() <= 32
        && key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if !prefix_ok {
        errors.add("store.key_prefix", format!("{key_prefix:?}: use 1 to 32 of A-Z a-z 0-9 _ - . : (no braces: they would change the hash slot)"));
    }
    Some(StoreConfig::Redis {
        settings: RedisSettings {
            target: target?,
            timeout: timeout?,
            key_prefix,
        },
        on_error: on_error?,
        max_keys,
    })
    .filter(|_| prefix_ok)
}

fn redis_url(url: &str) -> Result<(), String> {
    let shown = ratewarden_store::redis::redacted(url);
    if url.starts_with("rediss://") {
        return Err(format!("{shown:?}: TLS (rediss://) is not supported by this build; use redis:// over a private network or a TLS tunnel"));
    }
    if !url.starts_with("redis://") {
        return Err(format!(
            "{shown:?} is not a Redis URL such as \"redis://127.0.0.1:6379\""
        ));
    }
    let host = url["redis://".len()..].rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with('/') {
        return Err(format!("{shown:?} names no host"));
    }
    Ok(())
}

fn clients(raw: &RawClients, errors: &mut Errors) -> ClientPolicy {
    let trusted = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            errors.check(&format!("clients.trusted_proxies[{i}]"), parse_network(n))
        })
        .collect::<Vec<_>>();
    let forwarding_header = match raw
        .forwarded_header
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("x-forwarded-for") => ForwardingHeader::XForwardedFor,
        Some("forwarded") => ForwardingHeader::Forwarded,
        Some(other) => {
            errors.add(
                "clients.forwarded_header",
                format!("{other:?} is not supported; use \"x-forwarded-for\" or \"forwarded\""),
            );
            ForwardingHeader::XForwardedFor
        }
    };
    let ipv6_prefix = match raw.ipv6_prefix {
        None => 64,
        Some(p @ 0..=128) => p as u8,
        Some(p) => {
            errors.add(
                "clients.ipv6_prefix",
                format!("{p} is not a prefix length (0 to 128)"),
            );
            64
        }
    };
    ClientPolicy {
        trusted_proxies: TrustedProxies::new(trusted),
        forwarding_header,
        ipv6_prefix,
    }
}

/// Why `name` cannot name a rule or a login route, if it cannot.
pub(super) fn rule_name_problem(name: &str) -> Option<String> {
    // Names appear unescaped in JSON bodies, structured-field headers and metric labels.
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    (!name_ok).then(|| {
        format!("{name:?} is not a rule name; use up to 64 letters, digits, '_', '-', '.' or ':'")
    })
}

fn rule(raw: &RawRule, field: &str, errors: &mut Errors) -> Option<Rule> {
    let f = |name: &str| format!("{field}.{name}");
    if let Some(problem) = rule_name_problem(&raw.name) {
        errors.add(f("name"), problem);
    }
    let route = route(&raw.route, &f("match"), errors);
    let key = errors.check(
        &f("key"),
        KeyTemplate::parse(raw.key.as_deref().unwrap_or("ip")),
    );
    let rate: Option<Rate> = errors.check(&f("rate"), raw.rate.parse::<Rate>());
    let algorithm = raw.algorithm.as_deref().unwrap_or("gcra");
    let limit = rate.and_then(|rate| {
        let result = match algorithm {
            "gcra" => {
                let burst = match raw.burst {
                    None => rate.count(),
                    Some(b) if b >= 1 && b <= i64::from(u32::MAX) => b as u32,
                    Some(b) => {
                        errors.add(
                            f("burst"),
                            format!("{b} is not a burst; it must be at least 1"),
                        );
                        return None;
                    }
                };
                match Gcra::new(rate, burst) {
                    Ok(g) => Ok(Limit::Gcra(g)),
                    Err(e) => {
                        errors.add(f("burst"), e.to_string());
                        return None;
                    }
                }
            }
            "sliding_window" | "fixed_window" => {
                if raw.burst.is_some() {
                    errors.add(
                        f("burst"),
                        format!("burst applies to gcra only, not {algorithm}"),
                    );
                }
                if algorithm == "sliding_window" {
                    SlidingWindow::new(rate).map(Limit::SlidingWindow)
                } else {
                    FixedWindow::new(rate).map(Limit::FixedWindow)
                }
            }
            other => {
                errors.add(
                    f("algorithm"),
                    format!(
                        "{other:?} is not an algorithm; use gcra, sliding_window or fixed_window"
                    ),
                );
                return None;
            }
        };
        errors.check(&f("rate"), result)
    });
    let cost = match raw.cost {
        None => Some(1),
        Some(c) if (1..=i64::from(u32::MAX)).contains(&c) => Some(c as u32),
        Some(c) => {
            errors.add(
                f("cost"),
                format!("{c} is not a cost; it must be at least 1"),
            );
            None
        }
    };
    if let (Some("delay"), Some(Limit::Gcra(g))) = (raw.action.as_deref(), limit) {
        // The last request a full burst queues waits (burst - 1) intervals.
        let longest = g
            .refill_time()
            .as_nanos()
            .saturating_sub(g.emission_interval().as_nanos());
        if longest > MAX_DELAY.as_nanos() as u64 {
            errors.add(
                f("burst"),
                format!(
                    "with action = \"delay\" a full burst would hold requests for up to {:?}; at most {MAX_DELAY:?} (lower the burst, or use reject)",
                    Duration::from_nanos(longest)
                ),
            );
        }
    }
    if raw.action.as_deref() == Some("delay") && !matches!(limit, Some(Limit::Gcra(_)) | None) {
        errors.add(
            f("action"),
            "delay needs algorithm = \"gcra\" (requests are held until their turn at the rate)",
        );
    }
    if let (Some(limit), Some(cost)) = (limit, cost) {
        errors.check(&f("cost"), limit.check_cost(cost));
    }
    let action = match raw.action.as_deref().unwrap_or("reject") {
        "reject" => Some(Action::Reject),
        "delay" => Some(Action::Delay),
        "log_only" => Some(Action::LogOnly),
        other => {
            errors.add(
                f("action"),
                format!("{other:?} is not an action; use reject, delay or log_only"),
            );
            None
        }
    };
    let networks = |errors: &mut Errors, name: &str, list: &[String]| -> Vec<IpNet> {
        list.iter()
            .enumerate()
            .filter_map(|(i, n)| errors.check(&format!("{field}.{name}[{i}]"), parse_network(n)))
            .collect()
    };
    let allow = networks(errors, "allow_cidrs", &raw.allow_cidrs);
    let deny = networks(errors, "deny_cidrs", &raw.deny_cidrs);
    // Counters belong to a rule's name and limit: a reload that keeps both keeps the
    // counters, one that changes the limit starts them afresh rather than reading old
    // state under new parameters.
    let version = format!("{limit:?}/{cost:?}");
    Some(Rule {
        name: RuleName::versioned(&raw.name, &version),
        route: route?,
        key: key?,
        limit: limit?,
        cost: cost?,
        action: action?,
        allow,
        deny,
    })
}

pub(super) fn route(raw: &RawMatch, field: &str, errors: &mut Errors) -> Option<RouteMatch> {
    let path = |errors: &mut Errors, name: &str, value: &Option<String>| match value {
        None => Some(None),
        Some(p) if !p.starts_with('/') => {
            errors.add(
                format!("{field}.{name}"),
                format!("{p:?} must start with /"),
            );
            None
        }
        Some(p) => errors
            .check(
                &format!("{field}.{name}"),
                CanonicalPath::parse(p)
                    .map(CanonicalPath::into_owned)
                    .map_err(|e| format!("{p:?}: {e}")),
            )
            .map(Some),
    };
    let exact = path(errors, "path", &raw.path);
    let prefix = path(errors, "path_prefix", &raw.path_prefix);
    let except: Vec<CanonicalPath<'static>> = raw
        .except_path_prefixes
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            path(
                errors,
                &format!("except_path_prefixes[{i}]"),
                &Some(p.clone()),
            )
            .flatten()
        })
        .collect();
    let mut methods = Vec::new();
    for (i, m) in raw.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            errors.add(
                format!("{field}.methods[{i}]"),
                format!("{m:?} is not an HTTP method"),
            );
        } else {
            methods.push(m.to_ascii_uppercase());
        }
    }
    let mut hosts = Vec::new();
    for (i, h) in raw.hosts.iter().enumerate() {
        // Request hosts are compared without port or trailing dot, lower case.
        let host = h.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if valid {
            hosts.push(host);
        } else {
            errors.add(
                format!("{field}.hosts[{i}]"),
                format!("{h:?} is not a host name (no scheme, port or path: \"api.example.com\")"),
            );
        }
    }
    Some(RouteMatch {
        path: exact?,
        path_prefix: prefix?,
        except_path_prefixes: except,
        methods,
        hosts,
    })
}

fn parse_socket(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address and port, such as \"127.0.0.1:8080\""))
}

fn parse_upstream(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("{text:?} is not a URL, such as \"http://127.0.0.1:8000\""))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "{text:?}: credentials in the upstream URL are not supported"
        ));
    }
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) if uri.path() == "/" || uri.path().is_empty() => Ok(uri),
        (Some("http"), Some(_)) => Err(format!(
            "{text:?}: an upstream path is not supported; give scheme, host and port"
        )),
        (Some(other), _) if other != "http" => {
            Err(format!("{text:?}: only http:// upstreams are supported"))
        }
        _ => Err(format!(
            "{text:?} is not a URL, such as \"http://127.0.0.1:8000\""
        )),
    }
}

/// Reads CIDR list files (one network or address per line; `#` starts a comment),
/// relative to `base`, into one set; every bad line is an error naming file and line.
fn network_lists(
    files: &[String],
    field: &str,
    base: &std::path::Path,
    errors: &mut Errors,
) -> ratewarden_core::network_set::NetworkSet {
    let mut networks = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let path = base.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.add(
                    format!("{field}[{i}]"),
                    format!("cannot read {}: {e}", path.display()),
                );
                continue;
            }
        };
        let mut bad = 0;
        for (n, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            match parse_network(entry) {
                Ok(net) => networks.push(net),
                Err(e) => {
                    bad += 1;
                    // A corrupt feed names its first few bad lines, not thousands.
                    if bad <= 5 {
                        errors.add(
                            format!("{field}[{i}]"),
                            format!("{} line {}: {e}", path.display(), n + 1),
                        );
                    }
                }
            }
        }
        if bad > 5 {
            errors.add(
                format!("{field}[{i}]"),
                format!("{} more bad lines in {}", bad - 5, path.display()),
            );
        }
    }
    ratewarden_core::network_set::NetworkSet::new(networks)
}

fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(ratewarden_core::identity::canonical_network)
        .map_err(|_| format!("{text:?} is not an IP network, such as \"10.0.0.0/8\""))
}

/// The longest duration any setting takes: ten years.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// `500ms`, `10s`, `5m`, `1h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration, such as \"500ms\", \"10s\" or \"5m\""))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => {
            return Err(format!(
                "{text:?} is not a duration, such as \"500ms\", \"10s\" or \"5m\""
            ))
        }
    };
    if d.is_zero() {
        return Err(format!("{text:?}: must be longer than zero"));
    }
    // Longer is no setting anyone means, and added to a clock reading it would overflow.
    if d > MAX_DURATION {
        return Err(format!("{text:?} is too long: at most 3650d"));
    }
    Ok(d)
}
