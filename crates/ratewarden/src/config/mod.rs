//! Configuration: a TOML file parsed into [`raw`] structs, then validated into a
//! [`Config`] of strong types with the compiled [`Policy`]. Validation collects every
//! error, each with its field path (`rules[1].rate: "10/fortnight" is not a rate: ...`),
//! so an operator fixes the whole file in one go.

mod abuse;
mod compile;
mod login;
mod raw;
mod threat;

pub(crate) use abuse::default_instance;
pub use abuse::{AbuseConfig, SinkConfig};
pub use compile::{compile, parse_duration};
use ratewarden_store::failure::FailurePolicy;
use ratewarden_store::redis::RedisSettings;
pub use threat::{AdminConfig, ThreatConfig};

use ratewarden_core::policy::Policy;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listener and upstream settings.
    pub server: ServerConfig,
    /// Where counters live.
    pub store: StoreConfig,
    /// The rules and client identification, compiled.
    pub policy: Policy,
    /// Abuse tracking and alerts (`[abuse]`), if configured.
    pub abuse: Option<AbuseConfig>,
    /// Adaptive defence (`[threat]`), if configured.
    pub threat: Option<ThreatConfig>,
    /// The admin API (`[admin]`).
    pub admin: AdminConfig,
    /// Pseudonyms of login accounts and addresses (`[privacy] secret`), when `[[login]]`
    /// routes are configured.
    pub login_pseudonyms: Option<ratewarden_detect::Pseudonymiser>,
}

/// `[server]`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// The API behind it: scheme, host and port (no path).
    pub upstream: http::Uri,
    /// Where `/healthz` and `/metrics` are served, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// A client must send its first request head within this time of connecting, and
    /// each next one within this time of waiting on HTTP/1.1; an HTTP/2 connection
    /// with no request started or being answered for this long (up to twice) is shut
    /// down (GOAWAY).
    pub header_timeout: Duration,
    /// Connecting to the upstream may take this long (then 502).
    pub upstream_connect_timeout: Duration,
    /// The upstream must start answering within this time (then 504).
    pub upstream_timeout: Duration,
    /// Most idle upstream connections each worker keeps (nginx's upstream `keepalive`);
    /// 0 keeps none.
    pub upstream_keepalive: usize,
    /// How long an idle upstream connection is kept (nginx's `keepalive_timeout` in an
    /// upstream block). Below the upstream's own idle timeout, the gateway never sends
    /// on a connection the upstream may be closing for idleness.
    pub upstream_keepalive_timeout: Duration,
    /// Largest request head accepted (then 431).
    pub max_header_bytes: usize,
    /// Most header fields accepted (then 431).
    pub max_headers: usize,
    /// Most requests held by `delay` rules at once; beyond, they are answered 503 (their
    /// clients were within their limits).
    pub max_delayed: usize,
    /// Most client connections open at once; beyond, new ones are closed on accept.
    pub max_connections: usize,
    /// Protocols an HTTP/1.1 client may switch to through the gateway (`Upgrade`), lower
    /// case; empty: none, and `Upgrade` is removed like any hop-by-hop header.
    pub upgrades: Vec<String>,
    /// A tunnel that carries nothing either way for this long is closed (nginx's
    /// `proxy_read_timeout` on a WebSocket).
    pub tunnel_idle_timeout: Duration,
    /// Most tunnels open at once, over every client; beyond, a handshake the upstream
    /// accepted is answered 503. Each also holds a place under `max_connections`.
    pub max_tunnels: usize,
    /// Most tunnels open at once per client network (nginx's `limit_conn`).
    pub max_tunnels_per_client: u32,
}

/// `[store]`.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// In this process.
    Memory {
        /// Most counters held.
        max_keys: usize,
    },
    /// In Redis, shared by every gateway using it.
    Redis {
        /// Where, how long to wait, key prefix.
        settings: RedisSettings,
        /// What to do when Redis cannot decide.
        on_error: FailurePolicy,
        /// Most counters the `local` fallback holds.
        max_keys: usize,
    },
}

/// One problem in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `rules[1].rate`, or empty for the file as a whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_in(text, Path::new("."))
}

/// Parses and validates configuration text whose relative file names (reputation
/// lists) are relative to `base`.
pub fn parse_in(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
    // The position, not toml's excerpt of the line: the line may hold a password (a
    // Redis URL), and this message reaches logs on a failed reload.
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        let position = e.span().map_or_else(String::new, |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        ConfigErrors(vec![ConfigError {
            field: String::new(),
            message: format!("{position}{}", e.message().trim_end()),
        }])
    })?;
    compile(raw, base)
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            field: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    parse_in(&text, path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests;
