//! `[abuse]`, `[[alerts]]` and `[privacy]`: validated into the alerting set-up.

use super::compile::{parse_duration, Errors};
use super::raw::{RawAbuse, RawAlert, RawPrivacy};
use http::HeaderName;
use ratewarden_detect::sanitize::DEFAULT_SECRET_PARAMS;
use ratewarden_detect::sinks::{NamedSink, DEFAULT_BATCH};
use ratewarden_detect::{AbuseSettings, IdentityKind};
use std::time::Duration;

/// The shortest `[privacy] secret`: a pseudonym is only as strong as its key.
pub(super) const MIN_SECRET: usize = 16;

/// Abuse tracking and alerting, validated.
#[derive(Clone)]
pub struct AbuseConfig {
    /// Window, threshold, cooldown, identities.
    pub settings: AbuseSettings,
    /// Header holding the authenticated user's id (set by an auth layer in front).
    pub user_header: Option<HeaderName>,
    /// Header holding the client's API key.
    pub api_key_header: Option<HeaderName>,
    /// Where alerts go, each under its name: `[[alerts]] name`, or else its kind (the
    /// second unnamed webhook is `webhook-2`).
    pub sinks: Vec<NamedSink<SinkConfig>>,
    /// The key of the pseudonyms (`[privacy] secret`).
    pub privacy_secret: Option<String>,
    /// Query parameters whose values are masked.
    pub secret_params: Vec<String>,
}

impl std::fmt::Debug for AbuseConfig {
    /// Secrets (the privacy key, webhook secrets, DSN keys) never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbuseConfig")
            .field("settings", &self.settings)
            .field("user_header", &self.user_header)
            .field("api_key_header", &self.api_key_header)
            .field(
                "sinks",
                &self.sinks.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("secret_params", &self.secret_params)
            .finish_non_exhaustive()
    }
}

impl AbuseConfig {
    /// Everything alerting was started with, secrets included, for comparing a reloaded
    /// file with the running one. Never logged.
    pub fn restart_material(&self) -> String {
        let sinks: Vec<String> = self
            .sinks
            .iter()
            .map(|s| {
                let settings = match &s.sink {
                    SinkConfig::Log => "log".to_owned(),
                    SinkConfig::Webhook {
                        url,
                        secret,
                        timeout,
                        batch,
                    } => format!("webhook {url} {secret:?} {timeout:?} {batch}"),
                    SinkConfig::Sentry { dsn } => format!("sentry {dsn}"),
                };
                format!("{} {settings}", s.name)
            })
            .collect();
        format!(
            "{:?} {:?} {:?} {sinks:?} {:?} {:?}",
            self.settings,
            self.user_header,
            self.api_key_header,
            self.privacy_secret,
            self.secret_params
        )
    }
}

/// The longest sink name: it becomes a metric label value.
const MAX_SINK_NAME: usize = 64;
/// The kinds of sink, which a sink of another kind may not be named after.
const SINK_KINDS: [&str; 3] = ["log", "webhook", "sentry"];

/// Where alerts go.
#[derive(Clone)]
pub enum SinkConfig {
    /// Log lines.
    Log,
    /// A webhook.
    Webhook {
        /// Where to POST.
        url: String,
        /// HMAC key for the signature header.
        secret: Option<String>,
        /// Per attempt.
        timeout: Duration,
        /// Most alerts in one POST.
        batch: usize,
    },
    /// A Sentry project.
    Sentry {
        /// Its DSN.
        dsn: String,
    },
}

impl SinkConfig {
    /// `log`, `webhook` or `sentry`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Log => "log",
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::Sentry { .. } => "sentry",
        }
    }
}

/// Validates the three sections; `None` when `[abuse]` is absent (no tracking).
pub fn abuse(
    raw: Option<&RawAbuse>,
    alerts: &[RawAlert],
    privacy: &RawPrivacy,
    listen_port: Option<u16>,
    errors: &mut Errors,
) -> Option<AbuseConfig> {
    let Some(raw) = raw else {
        if !alerts.is_empty() {
            errors.add(
                "alerts",
                "alerts need an [abuse] section to say when to raise them",
            );
        }
        return None;
    };
    let duration =
        |field: &str, value: Option<&str>, default: Duration, errors: &mut Errors| match value {
            None => Some(default),
            Some(v) => errors.check(field, parse_duration(v)).and_then(|d| {
                if d < Duration::from_secs(1) || d > Duration::from_secs(7 * 86_400) {
                    errors.add(field, format!("{v:?}: use between 1s and 7 days"));
                    None
                } else {
                    Some(d)
                }
            }),
        };
    let window = duration(
        "abuse.window",
        raw.window.as_deref(),
        Duration::from_secs(3600),
        errors,
    );
    let cooldown = duration(
        "abuse.cooldown",
        raw.cooldown.as_deref(),
        Duration::from_secs(600),
        errors,
    );
    let alert_after = match raw.alert_after.unwrap_or(3) {
        n @ 1..=1_000_000 => Some(n as u32),
        n => {
            errors.add(
                "abuse.alert_after",
                format!("{n}: use a count from 1 to 1000000"),
            );
            None
        }
    };
    let sink_queue = match raw.queue.unwrap_or(10_000) {
        n @ 1..=1_000_000 => Some(n as usize),
        n => {
            errors.add(
                "abuse.queue",
                format!("{n}: use a number of alerts from 1 to 1000000"),
            );
            None
        }
    };
    let mut track = Vec::new();
    for (i, name) in raw
        .clients
        .clone()
        .unwrap_or_else(|| vec!["ip".into()])
        .iter()
        .enumerate()
    {
        match name.as_str() {
            "ip" => track.push(IdentityKind::Ip),
            "user" => track.push(IdentityKind::User),
            "api_key" => track.push(IdentityKind::ApiKey),
            other => errors.add(
                format!("abuse.clients[{i}]"),
                format!("{other:?}: use \"ip\", \"user\" or \"api_key\""),
            ),
        }
    }
    let header = |field: &str, value: Option<&String>, errors: &mut Errors| {
        value.and_then(|v| {
            errors.check(
                field,
                HeaderName::from_bytes(v.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("{v:?} is not a header name")),
            )
        })
    };
    let user_header = header("abuse.user_header", raw.user_header.as_ref(), errors);
    let api_key_header = header("abuse.api_key_header", raw.api_key_header.as_ref(), errors);
    if track.contains(&IdentityKind::User) && raw.user_header.is_none() {
        errors.add("abuse.user_header", "clients includes \"user\": name the header that carries the user id (user_header = \"x-user-id\")");
    }
    if track.contains(&IdentityKind::ApiKey) && raw.api_key_header.is_none() {
        errors.add("abuse.api_key_header", "clients includes \"api_key\": name the header that carries the key (api_key_header = \"x-api-key\")");
    }
    let privacy_secret = privacy.secret.clone();
    match &privacy_secret {
        Some(s) if s.len() < MIN_SECRET => {
            errors.add("privacy.secret", format!("is {} characters long; use at least {MIN_SECRET} random characters", s.len()))
        }
        None if user_header.is_some() || api_key_header.is_some() => errors.add(
            "privacy.secret",
            "user ids and API keys are pseudonymised with a keyed HMAC: set [privacy] secret (the same on every gateway)",
        ),
        _ => {}
    }
    let sinks = named_sinks(alerts, errors);
    let instance = raw
        .instance
        .clone()
        .unwrap_or_else(|| default_instance(listen_port));
    Some(AbuseConfig {
        settings: AbuseSettings {
            window: window?,
            alert_after: alert_after?,
            cooldown: cooldown?,
            track,
            count_upstream_429: raw.count_upstream_429.unwrap_or(true),
            instance,
            sink_queue: sink_queue?,
        },
        user_header,
        api_key_header,
        sinks: if alerts.is_empty() {
            vec![NamedSink {
                name: "log".to_owned(),
                sink: SinkConfig::Log,
            }]
        } else {
            sinks
        },
        privacy_secret,
        secret_params: privacy.secret_params.clone().unwrap_or_else(|| {
            DEFAULT_SECRET_PARAMS
                .iter()
                .map(|s| s.to_string())
                .collect()
        }),
    })
}

/// Every `[[alerts]]` entry, validated and named. Two sinks may not share a name, since
/// their metrics would add up under it: the names given are checked first, then each
/// unnamed sink takes its kind, or the first of `kind-2`, `kind-3`... still free.
fn named_sinks(alerts: &[RawAlert], errors: &mut Errors) -> Vec<NamedSink<SinkConfig>> {
    // Every sink is checked, even one whose name is wrong, so all errors show at once.
    let checked: Vec<Option<SinkConfig>> = alerts
        .iter()
        .enumerate()
        .map(|(i, raw)| sink(raw, &format!("alerts[{i}]"), errors))
        .collect();
    let mut taken: Vec<(String, usize)> = Vec::new(); // a name, and the entry that has it
    let mut valid = true;
    for (i, raw) in alerts.iter().enumerate() {
        let Some(name) = &raw.name else { continue };
        let field = format!("alerts[{i}].name");
        if !valid_sink_name(name) {
            // Not echoed: a wrong value may be anything, a secret pasted in the wrong place
            // included, and config errors are logged.
            errors.add(
                field,
                format!("use 1 to {MAX_SINK_NAME} letters, digits, '_', '-' or '.'"),
            );
            valid = false;
        } else if SINK_KINDS.contains(&name.as_str()) && *name != raw.kind {
            errors.add(field, format!("{name:?} is the name of another kind of sink, which would mislabel this one's metrics"));
            valid = false;
        } else if let Some((_, first)) = taken.iter().find(|(n, _)| n == name) {
            errors.add(field, format!("{name:?} is already the name of alerts[{first}]: give each sink a name of its own"));
            valid = false;
        } else {
            taken.push((name.clone(), i));
        }
    }
    let mut sinks = Vec::new();
    for (i, (raw, sink)) in alerts.iter().zip(checked).enumerate() {
        let name = match &raw.name {
            Some(name) => name.clone(),
            None => {
                let name = std::iter::once(raw.kind.clone())
                    .chain((2..).map(|n| format!("{}-{n}", raw.kind)))
                    .find(|candidate| taken.iter().all(|(n, _)| n != candidate))
                    .unwrap_or_default();
                taken.push((name.clone(), i));
                name
            }
        };
        if let (Some(sink), true) = (sink, valid) {
            sinks.push(NamedSink { name, sink });
        }
    }
    sinks
}

fn valid_sink_name(name: &str) -> bool {
    (1..=MAX_SINK_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn sink(raw: &RawAlert, field: &str, errors: &mut Errors) -> Option<SinkConfig> {
    let only = |name: &str, given: bool, errors: &mut Errors| {
        if given {
            errors.add(
                format!("{field}.{name}"),
                format!("does not apply to kind = {:?}", raw.kind),
            );
        }
    };
    match raw.kind.as_str() {
        "log" => {
            only("dsn", raw.dsn.is_some(), errors);
            only("url", raw.url.is_some(), errors);
            only("secret", raw.secret.is_some(), errors);
            only("timeout", raw.timeout.is_some(), errors);
            only("batch", raw.batch.is_some(), errors);
            Some(SinkConfig::Log)
        }
        "webhook" => {
            only("dsn", raw.dsn.is_some(), errors);
            let Some(url) = &raw.url else {
                errors.add(
                    format!("{field}.url"),
                    "a webhook needs url = \"https://...\"",
                );
                return None;
            };
            let parsed: Result<http::Uri, _> = url.parse();
            let scheme_ok = parsed.as_ref().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !scheme_ok {
                errors.add(format!("{field}.url"), "not an http(s) URL with a host");
                return None;
            }
            let timeout = match raw.timeout.as_deref() {
                None => Some(Duration::from_secs(5)),
                Some(t) => errors.check(&format!("{field}.timeout"), parse_duration(t)),
            };
            // Both checked before giving up, so every error is reported at once.
            let batch = match raw.batch.unwrap_or(DEFAULT_BATCH as i64) {
                n @ 1..=1_000 => Some(n as usize),
                n => {
                    errors.add(
                        format!("{field}.batch"),
                        format!("{n}: use a number of alerts per POST from 1 to 1000"),
                    );
                    None
                }
            };
            Some(SinkConfig::Webhook {
                url: url.clone(),
                secret: raw.secret.clone(),
                timeout: timeout?,
                batch: batch?,
            })
        }
        "sentry" => {
            only("url", raw.url.is_some(), errors);
            only("secret", raw.secret.is_some(), errors);
            only("timeout", raw.timeout.is_some(), errors);
            only("batch", raw.batch.is_some(), errors);
            let Some(dsn) = &raw.dsn else {
                errors.add(
                    format!("{field}.dsn"),
                    "Sentry needs dsn = \"https://KEY@host/PROJECT\"",
                );
                return None;
            };
            if dsn.parse::<sentry::types::Dsn>().is_err() {
                errors.add(
                    format!("{field}.dsn"),
                    "not a Sentry DSN such as \"https://KEY@sentry.example.com/42\"",
                );
                return None;
            }
            Some(SinkConfig::Sentry { dsn: dsn.clone() })
        }
        other => {
            errors.add(
                format!("{field}.kind"),
                format!("{other:?}: use \"sentry\", \"webhook\" or \"log\""),
            );
            None
        }
    }
}

/// `host:port` of this gateway, for alerts from several instances.
pub(crate) fn default_instance(listen_port: Option<u16>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "ratewarden".into());
    match listen_port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}
