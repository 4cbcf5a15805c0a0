//! Off the request path: violations are coalesced per client (bounded), counted by the
//! tracker on a task of their own every 500 ms, and alerts fanned out to each sink's
//! own bounded queue and task.
//!
//! A client in its alert cooldown cannot raise an alert, so its batches wait longer
//! (up to 5 s, and never past the cooldown): in a flood, most clients are there, and
//! counting each of them twice a second was most of what alerting cost.
//!
//! The request path only ever calls [`Alerting::report`], which takes a lock for a
//! push and never waits. Nothing here changes a decision.

use crate::alert::{Alert, Severity, Source, Violation};
use crate::queue::{BoundedQueue, Urgency};
use crate::sinks::Sink;
use crate::tracker::{Outcome, Tracker};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use ratewarden_core::clock::Clock;
use ratewarden_store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
// The flush ticks' own clock (tokio's): waits are counted in ticks, not decisions.
use tokio::time::Instant;

/// Clients' batches counted at once (store round trips in flight).
const IN_FLIGHT: usize = 32;

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
    /// Violations dropped because too many clients were pending a flush.
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

/// A client's violations since the last flush: how many, how to describe the first of
/// them (built only at flush time, so the request path does no formatting), and when
/// they are to be counted when that is later than the next flush.
struct Pending {
    count: u32,
    describe: Box<dyn FnOnce() -> Violation + Send>,
    not_before: Option<Instant>,
}

/// One shard of the clients with violations waiting to be counted.
#[derive(Default)]
struct Shard {
    pending: HashMap<u64, Pending>,
    /// Clients whose every identity was in its alert cooldown at their last count, and
    /// until when their next batch may wait.
    quiet: HashMap<u64, Instant>,
}

type PendingShard = Mutex<Shard>;

/// Shards of the pending map (fewer threads wait on one lock).
const SHARDS: usize = 16;
/// Clients with violations waiting for the next flush; beyond, new clients' violations
/// are dropped (and counted) until the flush.
const MAX_PENDING: usize = 20_000;
/// How often pending violations are counted.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// The longest a quiet client's batch waits: so the store's window count, which other
/// gateways share, lags by no more.
const QUIET_WAIT: Duration = Duration::from_secs(5);

/// The handle the request path reports violations to.
///
/// A flood repeats itself: thousands of 429s a second from the same clients. Reports
/// are coalesced per client between flushes (every 500 ms), so the store sees one
/// update of cost N per client and flush rather than N updates, and the per-request
/// cost is one hash-map update under a sharded lock.
#[derive(Clone)]
pub struct Alerting {
    pending: Arc<Vec<PendingShard>>,
    outlets: Arc<Vec<Arc<BoundedQueue<Alert>>>>,
    raised: Counter,
    /// Counter handles per source, so a report takes no metric-family lock.
    from_gateway: Counter,
    from_upstream: Counter,
    dropped: Counter,
}

impl Alerting {
    /// Starts the tracker's worker and one task per sink on the current runtime.
    pub fn start<S: Store, C: Clock>(
        tracker: Tracker<S, C>,
        sinks: Vec<Sink>,
        metrics: AlertMetrics,
    ) -> Alerting {
        let capacity = tracker.settings().sink_queue;
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
                    let outlet = Arc::new(BoundedQueue::new(capacity, dropped));
                    tokio::spawn(deliver_forever(sink, outlet.clone(), metrics.clone()));
                    outlet
                })
                .collect(),
        );
        let pending: Arc<Vec<PendingShard>> =
            Arc::new((0..SHARDS).map(|_| Mutex::default()).collect());
        tokio::spawn(count_forever(
            Arc::new(tracker),
            pending.clone(),
            outlets.clone(),
            metrics.clone(),
        ));
        let source = |source| {
            metrics
                .violations
                .get_or_create(&SourceLabel { source })
                .clone()
        };
        Alerting {
            pending,
            outlets,
            raised: metrics.raised.clone(),
            from_gateway: source("gateway"),
            from_upstream: source("upstream"),
            dropped: metrics.violations_dropped.clone(),
        }
    }

    /// Hands a violation over, without waiting: `client` identifies who committed it
    /// (a hash of its address and credentials), `describe` builds the sanitised
    /// description if it is the latest of its batch.
    pub fn report(
        &self,
        client: u64,
        source: Source,
        describe: impl FnOnce() -> Violation + Send + 'static,
    ) {
        self.count_source(source);
        let mut shard = self.pending[shard_of(client)].lock();
        let not_before = shard.quiet.get(&client).copied();
        if let Some(p) = shard.pending.get_mut(&client) {
            // The batch keeps the description of its first violation.
            p.count = p.count.saturating_add(1);
            return;
        }
        if shard.pending.len() >= MAX_PENDING / SHARDS {
            self.dropped.inc();
            return;
        }
        shard.pending.insert(
            client,
            Pending {
                count: 1,
                describe: Box::new(describe),
                not_before,
            },
        );
    }

    /// Counts a violation by `client` if a batch for it is already pending (the
    /// common case in a flood), without any description; false if there is none, and
    /// the caller should [`report`](Alerting::report) it with one.
    pub fn report_repeat(&self, client: u64, source: Source) -> bool {
        let mut shard = self.pending[shard_of(client)].lock();
        match shard.pending.get_mut(&client) {
            Some(p) => {
                p.count = p.count.saturating_add(1);
                drop(shard);
                self.count_source(source);
                true
            }
            None => false,
        }
    }

    /// Sends an alert raised elsewhere (adaptive defence: a level raised, a client
    /// blocked) to every sink, through the same bounded queues.
    pub fn raise(&self, alert: Alert) {
        self.raised.inc();
        for outlet in self.outlets.iter() {
            outlet.push(alert.clone());
        }
    }

    fn count_source(&self, source: Source) {
        match source {
            Source::Gateway => self.from_gateway.inc(),
            Source::Upstream => self.from_upstream.inc(),
        };
    }
}

fn shard_of(client: u64) -> usize {
    (client % SHARDS as u64) as usize
}

async fn count_forever<S: Store, C: Clock>(
    tracker: Arc<Tracker<S, C>>,
    pending: Arc<Vec<PendingShard>>,
    outlets: Arc<Vec<Arc<BoundedQueue<Alert>>>>,
    metrics: AlertMetrics,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut ticks = tokio::time::interval(FLUSH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for index in 0..SHARDS {
            for (client, p) in due_batches(&pending[index], Instant::now()) {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let (tracker, outlets, metrics, pending) = (
                    tracker.clone(),
                    outlets.clone(),
                    metrics.clone(),
                    pending.clone(),
                );
                tokio::spawn(async move {
                    let violation = (p.describe)();
                    let cooldown = tracker.settings().cooldown;
                    let mut quiet_for = None::<Duration>;
                    for outcome in tracker.observe(&violation, p.count).await {
                        let quiet = outcome.quiet_for(cooldown);
                        quiet_for = Some(quiet_for.map_or(quiet, |q| q.min(quiet)));
                        emit(outcome, &violation, &tracker, &outlets, &metrics);
                    }
                    if let Some(wait) = quiet_for.and_then(quiet_wait) {
                        let mut shard = pending[index].lock();
                        if shard.quiet.len() < MAX_PENDING / SHARDS {
                            shard.quiet.insert(client, Instant::now() + wait);
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Takes the batches of `shard` to count now: those not waiting, and every one when the
/// shard is half full, so waiting batches never crowd out new clients.
fn due_batches(shard: &PendingShard, now: Instant) -> Vec<(u64, Pending)> {
    let mut shard = shard.lock();
    shard.quiet.retain(|_, until| *until > now);
    let crowded = shard.pending.len() >= MAX_PENDING / SHARDS / 2;
    let due: Vec<u64> = shard
        .pending
        .iter()
        .filter(|(_, p)| crowded || p.not_before.is_none_or(|t| t <= now))
        .map(|(&client, _)| client)
        .collect();
    due.into_iter()
        .filter_map(|client| shard.pending.remove(&client).map(|p| (client, p)))
        .collect()
}

/// How long a client that cannot be alerted on for `quiet_for` may have its next batch
/// wait: at most [`QUIET_WAIT`], and ending two flushes before the cooldown does, so the
/// violations it held are counted as suppressed within the cooldown rather than
/// raising an alert of their own after it.
fn quiet_wait(quiet_for: Duration) -> Option<Duration> {
    let wait = quiet_for.saturating_sub(2 * FLUSH_EVERY).min(QUIET_WAIT);
    (wait > FLUSH_EVERY).then_some(wait)
}

fn emit<S: Store, C: Clock>(
    outcome: Outcome,
    violation: &Violation,
    tracker: &Tracker<S, C>,
    outlets: &[Arc<BoundedQueue<Alert>>],
    metrics: &AlertMetrics,
) {
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
            for outlet in outlets {
                outlet.push((*alert).clone());
            }
        }
        Outcome::Suppressed { .. } => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(not_before: Option<Instant>) -> Pending {
        Pending {
            count: 1,
            describe: Box::new(|| unreachable!("not described in these tests")),
            not_before,
        }
    }

    #[test]
    fn a_quiet_clients_batch_waits_until_its_time_and_others_go_at_once() {
        let now = Instant::now();
        let shard = PendingShard::default();
        {
            let mut s = shard.lock();
            s.pending.insert(1, pending(None));
            s.pending
                .insert(2, pending(Some(now + Duration::from_secs(3))));
            s.pending.insert(3, pending(Some(now)));
            s.quiet.insert(2, now + Duration::from_secs(3));
            s.quiet.insert(4, now);
        }
        let mut due: Vec<u64> = due_batches(&shard, now)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        due.sort_unstable();
        assert_eq!(due, [1, 3]);
        let s = shard.lock();
        assert!(s.pending.contains_key(&2), "still waiting");
        assert_eq!(
            s.quiet.keys().copied().collect::<Vec<_>>(),
            [2],
            "expired entries go"
        );
        drop(s);
        let later = due_batches(&shard, now + Duration::from_secs(3));
        assert_eq!(later.len(), 1);
    }

    #[test]
    fn waiting_batches_never_crowd_out_new_clients() {
        let now = Instant::now();
        let shard = PendingShard::default();
        let half = MAX_PENDING / SHARDS / 2;
        {
            let mut s = shard.lock();
            for client in 0..half as u64 {
                s.pending
                    .insert(client, pending(Some(now + Duration::from_secs(3))));
            }
        }
        assert_eq!(
            due_batches(&shard, now).len(),
            half,
            "a half-full shard counts them all"
        );
    }

    #[test]
    fn a_batch_waits_no_longer_than_the_cooldown_allows() {
        assert_eq!(quiet_wait(Duration::from_secs(600)), Some(QUIET_WAIT));
        // Ends two flushes before the cooldown, so what it held counts as suppressed.
        assert_eq!(
            quiet_wait(Duration::from_secs(2)),
            Some(Duration::from_secs(1))
        );
        // Too short to be worth waiting for.
        assert_eq!(quiet_wait(Duration::from_millis(1200)), None);
        assert_eq!(quiet_wait(Duration::ZERO), None);
    }
}
