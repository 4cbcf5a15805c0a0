//! Off the request path: violations are queued (bounded), counted by the tracker on a
//! task of their own, and alerts fanned out to each sink's own bounded queue and task.
//!
//! The request path only ever calls [`Alerting::report`], which takes a lock for a
//! push and never waits. Nothing here changes a decision.

use crate::alert::{Alert, Severity, Source, Violation};
use crate::queue::{BoundedQueue, Urgency};
use crate::sinks::Sink;
use crate::tracker::{Outcome, Tracker};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use ratewarden_core::clock::Clock;
use ratewarden_store::Store;
use std::sync::Arc;

/// Violations waiting to be counted.
const VIOLATION_QUEUE: usize = 10_000;
/// Alerts waiting for one sink.
const SINK_QUEUE: usize = 1_000;
/// Violations counted at once (store round trips in flight).
const IN_FLIGHT: usize = 32;

impl Urgency for Violation {
    fn severity(&self) -> Severity {
        Severity::Low
    }
}

impl Urgency for Alert {
    fn severity(&self) -> Severity {
        self.severity
    }
}

/// Who produced a violation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// gateway or upstream.
    pub source: &'static str,
}

/// A sink and what happened to an alert there.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkOutcome {
    /// log, webhook, sentry.
    pub sink: &'static str,
    /// sent, failed, dropped (its queue was full).
    pub outcome: &'static str,
}

/// Alerting's metrics (registered into the gateway's registry).
#[derive(Clone, Default)]
pub struct AlertMetrics {
    /// 429s reported, by source.
    pub violations: Family<SourceLabel, Counter>,
    /// Violations dropped because the violation queue was full.
    pub violations_dropped: Counter,
    /// Alerts raised (before delivery).
    pub raised: Counter,
    /// Alerts per sink and outcome.
    pub deliveries: Family<SinkOutcome, Counter>,
}

impl AlertMetrics {
    /// Registers every metric under `registry` (prefix `abuse_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "abuse_violations",
            "429s counted as violations, by source",
            self.violations.clone(),
        );
        registry.register(
            "abuse_violations_dropped",
            "Violations dropped uncounted because the queue was full (a flood)",
            self.violations_dropped.clone(),
        );
        registry.register(
            "abuse_alerts_raised",
            "Alerts raised (one per client per cooldown)",
            self.raised.clone(),
        );
        registry.register(
            "abuse_alert_deliveries",
            "Alert deliveries per sink: sent, failed (after retries), dropped (queue full)",
            self.deliveries.clone(),
        );
    }
}

/// The handle the request path reports violations to.
#[derive(Clone)]
pub struct Alerting {
    queue: Arc<BoundedQueue<Violation>>,
    metrics: AlertMetrics,
}

impl Alerting {
    /// Starts the tracker's worker and one task per sink on the current runtime.
    pub fn start<S: Store, C: Clock>(
        tracker: Tracker<S, C>,
        sinks: Vec<Sink>,
        metrics: AlertMetrics,
    ) -> Alerting {
        let queue = Arc::new(BoundedQueue::new(
            VIOLATION_QUEUE,
            metrics.violations_dropped.clone(),
        ));
        let outlets: Arc<Vec<Arc<BoundedQueue<Alert>>>> = Arc::new(
            sinks
                .into_iter()
                .map(|sink| {
                    let kind = sink.kind();
                    let dropped = metrics
                        .deliveries
                        .get_or_create(&SinkOutcome {
                            sink: kind,
                            outcome: "dropped",
                        })
                        .clone();
                    let outlet = Arc::new(BoundedQueue::new(SINK_QUEUE, dropped));
                    tokio::spawn(deliver_forever(sink, outlet.clone(), metrics.clone()));
                    outlet
                })
                .collect(),
        );
        tokio::spawn(count_forever(
            Arc::new(tracker),
            queue.clone(),
            outlets,
            metrics.clone(),
        ));
        Alerting { queue, metrics }
    }

    /// Hands a violation over, without waiting.
    pub fn report(&self, violation: Violation) {
        let source = match violation.source {
            Source::Gateway => "gateway",
            Source::Upstream => "upstream",
        };
        self.metrics
            .violations
            .get_or_create(&SourceLabel { source })
            .inc();
        self.queue.push(violation);
    }
}

async fn count_forever<S: Store, C: Clock>(
    tracker: Arc<Tracker<S, C>>,
    queue: Arc<BoundedQueue<Violation>>,
    outlets: Arc<Vec<Arc<BoundedQueue<Alert>>>>,
    metrics: AlertMetrics,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let violation = queue.pop().await;
        let (tracker, outlets, metrics) = (tracker.clone(), outlets.clone(), metrics.clone());
        tokio::spawn(async move {
            for outcome in tracker.observe(&violation).await {
                match outcome {
                    Outcome::Warning {
                        identity,
                        value,
                        count,
                    } => tracing::warn!(
                        target: "ratewarden::abuse",
                        identity = identity.as_str(),
                        client = %value,
                        violations = count,
                        alert_after = tracker.settings().alert_after,
                        rules = ?violation.rules,
                        method = %violation.method,
                        path = %violation.path,
                        "rate limit violation"
                    ),
                    Outcome::Alert(alert) => {
                        metrics.raised.inc();
                        for outlet in outlets.iter() {
                            outlet.push((*alert).clone());
                        }
                    }
                    Outcome::Suppressed => {}
                }
            }
            drop(permit);
        });
    }
}

async fn deliver_forever(sink: Sink, outlet: Arc<BoundedQueue<Alert>>, metrics: AlertMetrics) {
    let kind = sink.kind();
    let sent = metrics
        .deliveries
        .get_or_create(&SinkOutcome {
            sink: kind,
            outcome: "sent",
        })
        .clone();
    let failed = metrics
        .deliveries
        .get_or_create(&SinkOutcome {
            sink: kind,
            outcome: "failed",
        })
        .clone();
    loop {
        let alert = outlet.pop().await;
        match sink.deliver(&alert).await {
            Ok(()) => {
                sent.inc();
            }
            Err(e) => {
                failed.inc();
                tracing::warn!(sink = kind, error = %e, "alert not delivered");
            }
        }
    }
}
