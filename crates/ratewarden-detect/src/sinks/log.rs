//! Alerts as log lines (target `ratewarden::alert`), one per alert, at warn level.

use crate::alert::Raised;

/// Logs alerts.
#[derive(Debug, Default)]
pub struct LogSink;

impl LogSink {
    /// Writes one line. The alert holds only sanitised fields.
    pub fn deliver(&self, alert: &Raised) {
        tracing::warn!(
            target: "ratewarden::alert",
            severity = ?alert.severity,
            identity = alert.identity.as_str(),
            client = %alert.identity_value,
            violations = alert.violations,
            window_seconds = alert.window_seconds,
            alert = %alert.json().get(),
            "{}",
            super::headline(alert)
        );
    }
}
