//! Where alerts go: logs, webhooks, Sentry. Each sink is fed by its own bounded queue
//! and task (see [`crate::dispatch`]), so a slow or dead sink delays only itself.

mod log;
mod sentry;
mod webhook;

pub use self::log::LogSink;
pub use self::sentry::SentrySink;
pub use self::webhook::{WebhookSink, DEFAULT_BATCH};

use crate::alert::{Alert, Raised};
use std::sync::Arc;

/// A sink, or its settings, and its name (`[[alerts]] name`): the `sink` label of its
/// delivery metrics, and named in its delivery-failure warnings.
#[derive(Clone)]
pub struct NamedSink<S = Sink> {
    /// Unique among the configured sinks (the configuration sees to it), so no two
    /// sinks' metrics add up.
    pub name: String,
    /// The sink.
    pub sink: S,
}

/// One configured destination.
pub enum Sink {
    /// A structured log line per alert.
    Log(LogSink),
    /// Signed JSON POSTs of one or more alerts, retried with backoff.
    Webhook(WebhookSink),
    /// A Sentry event, through the official `sentry` crate.
    Sentry(SentrySink),
}

impl Sink {
    /// Most alerts one delivery takes: a webhook POSTs together the alerts that queued
    /// up while its last POST was out; the log and Sentry take them one by one.
    pub fn batch(&self) -> usize {
        match self {
            Sink::Webhook(s) => s.batch(),
            Sink::Log(_) | Sink::Sentry(_) => 1,
        }
    }

    /// Delivers `alerts` (retrying as the sink sees fit) and says what became of them.
    pub async fn deliver(&self, alerts: &[Arc<Raised>]) -> Delivery {
        match self {
            Sink::Webhook(s) => s.deliver(alerts).await,
            Sink::Log(s) => {
                alerts.iter().for_each(|a| s.deliver(a));
                Delivery::sent(alerts.len())
            }
            Sink::Sentry(s) => alerts
                .iter()
                .fold(Delivery::default(), |mut so_far, alert| {
                    so_far.add(match s.deliver(alert) {
                        Ok(()) => Delivery::sent(1),
                        Err(e) => Delivery::failed(1, e),
                    });
                    so_far
                }),
        }
    }
}

/// What became of the alerts handed to a sink at once.
#[derive(Debug, Default)]
pub struct Delivery {
    /// How many were delivered.
    pub sent: u64,
    /// How many were given up on, and the last problem.
    pub failed: Option<(u64, String)>,
}

impl Delivery {
    /// `n` alerts delivered.
    pub fn sent(n: usize) -> Delivery {
        Delivery {
            sent: n as u64,
            failed: None,
        }
    }

    /// `n` alerts given up on, because of `problem`.
    pub fn failed(n: usize, problem: String) -> Delivery {
        Delivery {
            sent: 0,
            failed: Some((n as u64, problem)),
        }
    }

    /// Adds what became of more alerts (the later problem is kept).
    pub fn add(&mut self, more: Delivery) {
        self.sent += more.sent;
        if let Some((n, problem)) = more.failed {
            let before = self.failed.take().map_or(0, |(n, _)| n);
            self.failed = Some((before + n, problem));
        }
    }
}

/// One line saying what happened, for a log message or a Sentry event title.
pub(crate) fn headline(alert: &Alert) -> String {
    let who = format!("{} {}", alert.identity.as_str(), alert.identity_value);
    if let Some(login) = &alert.login {
        return match (login.distinct_accounts, login.distinct_addresses) {
            (Some(accounts), _) => format!(
                "Credential stuffing on {}: {who} tried {accounts} distinct accounts in {} s",
                login.login, alert.window_seconds
            ),
            (None, addresses) => format!(
                "Distributed login attack on {}: account {} tried from {} distinct addresses in {} s",
                login.login,
                login.account.as_deref().unwrap_or("?"),
                addresses.unwrap_or(0),
                alert.window_seconds
            ),
        };
    }
    match &alert.threat {
        Some(t) if alert.kind == "client_blocked" => format!(
            "Client blocked: {who} at threat level {} for {} s (offence {}): {}",
            t.level,
            t.block_seconds.unwrap_or(0),
            t.offence.unwrap_or(1),
            t.reasons.join(", ")
        ),
        Some(t) => format!(
            "Threat level raised: {who} from {} to {} (score {:.0}): {}",
            t.previous_level,
            t.level,
            t.score,
            t.reasons.join(", ")
        ),
        None => format!(
            "Rate-limit abuse: {who} hit limits {} times in {} s",
            alert.violations, alert.window_seconds
        ),
    }
}
