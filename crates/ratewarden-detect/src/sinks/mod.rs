//! Where alerts go: logs, webhooks, Sentry. Each sink is fed by its own bounded queue
//! and task (see [`crate::dispatch`]), so a slow or dead sink delays only itself.

mod log;
mod sentry;
mod webhook;

pub use self::log::LogSink;
pub use self::sentry::SentrySink;
pub use self::webhook::WebhookSink;

use crate::alert::Alert;

/// One configured destination.
pub enum Sink {
    /// A structured log line per alert.
    Log(LogSink),
    /// A signed JSON POST, retried with backoff.
    Webhook(WebhookSink),
    /// A Sentry event, through the official `sentry` crate.
    Sentry(SentrySink),
}

impl Sink {
    /// The name in metrics (`log`, `webhook`, `sentry`).
    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Log(_) => "log",
            Sink::Webhook(_) => "webhook",
            Sink::Sentry(_) => "sentry",
        }
    }

    /// Delivers one alert (retrying as the sink sees fit); `Err` once it gives up.
    pub async fn deliver(&self, alert: &Alert) -> Result<(), String> {
        match self {
            Sink::Log(s) => {
                s.deliver(alert);
                Ok(())
            }
            Sink::Webhook(s) => s.deliver(alert).await,
            Sink::Sentry(s) => s.deliver(alert),
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
