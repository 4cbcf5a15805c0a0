//! Alerts as Sentry events, through the official `sentry` crate.
//!
//! Each event: level error; tags `security_threat=rate_limit_abuse` and `client_ip`
//! (plus severity and identity kind); the whole alert as the `threat_context` context;
//! a fingerprint per identity, so Sentry groups one client's alerts into one issue. The
//! sink has a client of its own (not the process-wide hub): its transport sends in the
//! background with its own bounded queue, and the gateway's panics or logs are not
//! reported through it.

use crate::alert::Alert;
use sentry::protocol::{Context, Event, Level, Map};
use std::sync::Arc;

/// A Sentry project (clones share the client).
#[derive(Clone)]
pub struct SentrySink {
    client: Arc<sentry::Client>,
}

impl SentrySink {
    /// A sink for `dsn`, reporting as `instance` (`server_name`).
    pub fn new(dsn: &str, instance: &str) -> Result<SentrySink, String> {
        let dsn: sentry::types::Dsn = dsn.parse().map_err(|e| format!("invalid DSN: {e}"))?;
        let options = sentry::ClientOptions {
            dsn: Some(dsn),
            server_name: Some(instance.to_owned().into()),
            default_integrations: false,
            send_default_pii: false,
            // The reqwest transport (rustls): sends from a thread of its own, with a
            // bounded queue, honouring Sentry's rate limits.
            transport: Some(Arc::new(sentry::transports::DefaultTransportFactory)),
            ..Default::default()
        };
        Ok(SentrySink {
            client: Arc::new(sentry::Client::from_config(options)),
        })
    }

    /// Queues the event on the client's transport.
    pub fn deliver(&self, alert: &Alert) -> Result<(), String> {
        let mut context = Map::new();
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(alert) {
            context.extend(fields);
        }
        let mut event = Event {
            // The alert's own id, so the event can be found from the alert a webhook or
            // the log showed (Sentry shows it without hyphens).
            event_id: alert.id,
            level: Level::Error,
            message: Some(super::headline(alert)),
            logger: Some("ratewarden".into()),
            fingerprint: vec![
                alert.kind.into(),
                alert.identity.as_str().into(),
                alert.identity_value.clone().into(),
            ]
            .into(),
            ..Default::default()
        };
        event
            .tags
            .insert("security_threat".into(), alert.kind.into());
        event
            .tags
            .insert("client_ip".into(), alert.client_ip.clone());
        event.tags.insert(
            "severity".into(),
            format!("{:?}", alert.severity).to_lowercase(),
        );
        event
            .tags
            .insert("identity".into(), alert.identity.as_str().into());
        event
            .contexts
            .insert("threat_context".into(), Context::Other(context));
        let id = self.client.capture_event(event, None);
        if id.is_nil() {
            return Err("the Sentry client dropped the event".into());
        }
        Ok(())
    }

    /// Waits up to `timeout` for queued events to be sent.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        self.client.flush(Some(timeout))
    }
}
