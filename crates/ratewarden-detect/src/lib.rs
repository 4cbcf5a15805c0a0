//! Abuse detection and alerting.
//!
//! This crate owns what happens after a 429: counting each client's violations in the
//! store ([`tracker`]), deciding when persistence becomes an alert (threshold within a
//! window, one alert per cooldown), the alert itself ([`alert`]), keeping secrets out of
//! it ([`sanitize`], [`privacy`]), and delivering it without ever slowing a request
//! ([`dispatch`]: bounded queues, a task per sink; [`sinks`]: log, webhook, Sentry).
//!
//! It does not decide requests (the store and policy do) and never changes a decision:
//! alert, don't block.

pub mod alert;
pub mod dispatch;
pub mod privacy;
pub mod queue;
pub mod sanitize;
pub mod sinks;
pub mod tracker;

pub use alert::{
    Alert, IdentityKind, LoginContext, Raised, Severity, Source, ThreatContext, Violation,
};
pub use dispatch::{AlertMetrics, Alerting};
pub use privacy::Pseudonymiser;
pub use sanitize::Sanitiser;
pub use sinks::Sink;
pub use tracker::{AbuseSettings, Tracker};
