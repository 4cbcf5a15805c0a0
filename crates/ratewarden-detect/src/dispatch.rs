//! Off the request path: violations are coalesced per client and request thread
//! (bounded), counted by the tracker on a task of their own every 500 ms, and alerts
//! fanned out to each sink's own bounded queue and task.
//!
//! A client's batch counts a few identities (user id and API key) apart, so users
//! behind one address are each counted for their own violations; the client's network
//! is counted for all of them.
//!
//! A client in its alert cooldown cannot raise an alert, so its batches wait longer
//! (up to 5 s, and never past the cooldown): in a flood, most clients are there, and
//! counting each of them twice a second was most of what alerting cost.
//!
//! The request path calls [`Alerting::report_repeat`] and, for a client's (or an
//! identity's) first violation since the last flush, [`Alerting::report`]: short critical sections under
//! its own thread's lock (and, on a first violation, a shard of the quiet clients'),
//! never an await. Nothing here changes a decision.

use crate::alert::{Alert, Raised, Severity, Source, Violation};
use crate::queue::{BoundedQueue, Urgency};
use crate::sinks::NamedSink;
use crate::tracker::{Outcome, Tracker};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use ratewarden_core::clock::Clock;
use ratewarden_store::Store;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
// The flush ticks' own clock (tokio's): waits are counted in ticks, not decisions.
use tokio::time::Instant;

/// Clients' batches counted at once (store round trips in flight).
const IN_FLIGHT: usize = 32;
/// How long a flush counts batches on its own task before it hands the rest to tasks
/// of their own (see `count_forever`).
const INLINE_FOR: Duration = Duration::from_millis(50);

impl Urgency for Arc<Raised> {
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
    /// The sink's name: its kind (`log`, `webhook`, `sentry`) unless configured
    /// otherwise, or when several sinks share a kind.
    pub sink: String,
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
    /// The handle of one sink's count of one outcome.
    fn delivery_counter(&self, sink: &str, outcome: &'static str) -> Counter {
        self.deliveries
            .get_or_create(&SinkOutcome {
                sink: sink.to_owned(),
                outcome,
            })
            .clone()
    }

    /// Registers every metric under `registry` (prefix `abuse_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "abuse_violations",
            "429s counted as violations, by source",
            self.violations.clone(),
        );
        registry.register(
            "abuse_violations_dropped",
            "Violations dropped uncounted because too many clients were pending a count (a flood)",
            self.violations_dropped.clone(),
        );
        registry.register(
            "abuse_alerts_raised",
            "Alerts raised (one per client per cooldown)",
            self.raised.clone(),
        );
        registry.register(
            "abuse_alert_deliveries",
            "Alerts per sink, by outcome: sent, failed (after retries), dropped (queue full)",
            self.deliveries.clone(),
        );
    }
}

/// How to describe a violation: built only at flush time, so the request path does no
/// formatting.
type Describe = Box<dyn FnOnce() -> Violation + Send>;

/// How many identities (user id and API key, as tracked) one client's batch counts
/// apart; violations by identities beyond these count against the client's network
/// alone. So users behind one address (an office's NAT) are each counted as
/// themselves, while a client rotating user headers still holds one batch.
const IDENTITIES_PER_BATCH: usize = 8;

/// One identity's violations within a client's batch, and how to describe one of them
/// (the first it committed since the last flush).
struct Described {
    /// A keyed hash of the identity's tracked user id and API key; 0 when neither is
    /// tracked, so a batch is then one identity.
    identity: u32,
    count: u32,
    describe: Describe,
}

/// A client's violations since the last flush, by identity (the first seen, then up to
/// [`IDENTITIES_PER_BATCH`] in all), and when they are to be counted when that is later
/// than the next flush.
struct Pending {
    first: Described,
    others: Vec<Described>,
    /// Violations by identities beyond the batch's room: counted against the network.
    unattributed: u32,
    not_before: Option<Instant>,
}

impl Pending {
    /// Every violation in the batch: what its network is counted for.
    fn total(&self) -> u32 {
        self.others
            .iter()
            .fold(self.first.count, |n, o| n.saturating_add(o.count))
            .saturating_add(self.unattributed)
    }

    /// Adds another batch of the same client's (from another thread's lane).
    fn merge(&mut self, other: Pending) {
        self.unattributed = self.unattributed.saturating_add(other.unattributed);
        for described in std::iter::once(other.first).chain(other.others) {
            self.add(described);
        }
    }

    fn add(&mut self, described: Described) {
        let identity = described.identity;
        if let Some(same) = std::iter::once(&mut self.first)
            .chain(self.others.iter_mut())
            .find(|d| d.identity == identity)
        {
            same.count = same.count.saturating_add(described.count);
        } else if 1 + self.others.len() < IDENTITIES_PER_BATCH {
            self.others.push(described);
        } else {
            self.unattributed = self.unattributed.saturating_add(described.count);
        }
    }
}

/// The batches one reporting thread has opened since they were last counted.
///
/// Each thread reports into a lane of its own, so a flood's repeats (a lock and one
/// increment each) never move a cache line between cores; a client seen by two threads
/// has a batch in each lane, and the flush merges them.
#[derive(Default)]
#[repr(align(128))] // a lane per cache line pair: neighbours' locks do not share one
struct Lane {
    pending: Mutex<LaneBatches>,
}

/// A lane's batches. The first identity's count, which nearly every repeat touches, is
/// kept apart from the rest of the batch (read only when it opens, when another
/// identity of the client violates, and when it is counted): 16 bytes a client, so a
/// flood's 10,000 clients stay in a core's cache.
#[derive(Default)]
struct LaneBatches {
    counts: HashMap<u64, Tally, ClientKeys>,
    opened: HashMap<u64, Opened, ClientKeys>,
    /// The clients a flush takes, listed before they are taken: kept from flush to
    /// flush (see [`count_forever`] on why).
    due_clients: Vec<u64>,
}

/// A batch's first identity and its count.
#[derive(Clone, Copy)]
struct Tally {
    identity: u32,
    count: u32,
}

/// What a batch keeps besides its first identity's count.
struct Opened {
    describe: Describe,
    others: Vec<Described>,
    unattributed: u32,
    not_before: Option<Instant>,
}

/// What a repeat found.
#[derive(Debug, PartialEq)]
enum Repeat {
    /// Counted in the client's batch.
    Counted,
    /// The client has a batch with room for this identity, which it has not seen: a
    /// description is needed.
    NewIdentity,
    /// The client has no batch here.
    NoBatch,
}

impl LaneBatches {
    /// Counts one more violation by `identity` of `client` if the client has a batch
    /// here that can take it without a description.
    fn repeat(&mut self, client: u64, identity: u32) -> Repeat {
        match self.counts.get_mut(&client) {
            Some(tally) if tally.identity == identity => {
                tally.count = tally.count.saturating_add(1);
                Repeat::Counted
            }
            Some(_) => self.repeat_other(client, identity),
            None => Repeat::NoBatch,
        }
    }

    /// A repeat by an identity other than the batch's first: rare outside offices and
    /// rotating attackers, so kept out of the flood's path.
    #[cold]
    #[inline(never)]
    fn repeat_other(&mut self, client: u64, identity: u32) -> Repeat {
        let Some(opened) = self.opened.get_mut(&client) else {
            return Repeat::NoBatch;
        };
        if let Some(other) = opened.others.iter_mut().find(|o| o.identity == identity) {
            other.count = other.count.saturating_add(1);
        } else if 1 + opened.others.len() < IDENTITIES_PER_BATCH {
            return Repeat::NewIdentity;
        } else {
            opened.unattributed = opened.unattributed.saturating_add(1);
        }
        Repeat::Counted
    }

    /// Adds `identity`'s first violation to `client`'s batch, after a repeat under the
    /// same lock said [`Repeat::NewIdentity`].
    fn add_identity(&mut self, client: u64, identity: u32, describe: Describe) {
        if let Some(opened) = self.opened.get_mut(&client) {
            opened.others.push(Described {
                identity,
                count: 1,
                describe,
            });
            // The rest of the batch may be quiet (in its cooldown); this identity is
            // not known to be, so it is counted at the next flush.
            opened.not_before = None;
        }
    }

    fn open(&mut self, client: u64, batch: Pending) {
        self.counts.insert(
            client,
            Tally {
                identity: batch.first.identity,
                count: batch.first.count,
            },
        );
        self.opened.insert(
            client,
            Opened {
                describe: batch.first.describe,
                others: batch.others,
                unattributed: batch.unattributed,
                not_before: batch.not_before,
            },
        );
    }

    fn len(&self) -> usize {
        self.counts.len()
    }

    fn take(&mut self, client: u64) -> Option<Pending> {
        debug_assert_eq!(self.counts.len(), self.opened.len());
        let tally = self.counts.remove(&client)?;
        let opened = self.opened.remove(&client)?;
        Some(Pending {
            first: Described {
                identity: tally.identity,
                count: tally.count,
                describe: opened.describe,
            },
            others: opened.others,
            unattributed: opened.unattributed,
            not_before: opened.not_before,
        })
    }

    /// The batches to count at `now`: every one when `all`, else those not waiting.
    /// Hands the batches to count at `now` to `into` (every one when `all`, else those
    /// not waiting) and says how many it handed.
    fn take_due(&mut self, now: Instant, all: bool, mut into: impl FnMut(u64, Pending)) -> usize {
        let mut due = std::mem::take(&mut self.due_clients);
        due.clear();
        due.extend(
            self.opened
                .iter()
                .filter(|(_, o)| all || o.not_before.is_none_or(|t| t <= now))
                .map(|(&client, _)| client),
        );
        let mut taken = 0;
        for &client in &due {
            if let Some(batch) = self.take(client) {
                into(client, batch);
                taken += 1;
            }
        }
        // After a flood, give back what it made the maps grow to.
        if self.counts.capacity() > 4 * self.counts.len().max(1024) {
            self.counts.shrink_to(2 * self.counts.len());
            self.opened.shrink_to(2 * self.opened.len());
            due.shrink_to(2 * self.counts.len());
        }
        self.due_clients = due;
        taken
    }
}

/// Lanes; threads beyond this many share them.
const LANES: usize = 16;
/// Shards of the clients that are quiet (in their cooldown).
const SHARDS: usize = 16;
/// Batches waiting for the next flush, over all lanes; beyond, violations that would
/// open a batch are dropped (and counted) until the flush. Every request thread may
/// see every client of a flood, so a client can hold a batch in each lane: this is
/// room for 20,000 clients on three request threads. A batch holds up to
/// [`IDENTITIES_PER_BATCH`] descriptions (each a few hundred bytes to 2 KB), but a
/// description is only added to a batch that is counted at the next flush, so what
/// they hold is bounded by the requests of one flush interval as much as by this.
const MAX_PENDING: usize = 60_000;
/// A lane this full has all its batches counted at the next flush, waiting or not, so
/// waiting batches never crowd out new clients.
const CROWDED: usize = 15_000;
/// Quiet clients (in their cooldown) remembered, per shard.
const MAX_QUIET: usize = MAX_PENDING / SHARDS;
/// How often pending violations are counted.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// The longest a quiet client's batch waits: so the store's window count, which other
/// gateways share, lags by no more.
const QUIET_WAIT: Duration = Duration::from_secs(5);

/// This thread's lane.
fn lane() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % LANES;
    }
    LANE.with(|lane| *lane)
}

/// Client keys are keyed hashes already (see [`Alerting::report`]): the map uses them
/// as they are rather than hashing them again.
#[derive(Clone, Copy, Default)]
struct ClientKeys;

impl std::hash::BuildHasher for ClientKeys {
    type Hasher = ClientKey;
    fn build_hasher(&self) -> ClientKey {
        ClientKey(0)
    }
}

/// The hasher of [`ClientKeys`]: a `u64` key is its own hash.
struct ClientKey(u64);

impl std::hash::Hasher for ClientKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys reach this map; anything else still hashes, just not as fast.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// A client whose every counted identity was in its alert cooldown at its last count:
/// until when its next batch may wait, and for which of its identities that holds. A
/// batch that another identity opens (a user not seen before behind the same address)
/// is counted at the next flush: nothing is known to keep that one quiet.
#[derive(Clone, Copy, Debug)]
struct Quiet {
    until: Instant,
    identities: [u32; IDENTITIES_PER_BATCH],
    known: u8,
}

impl Quiet {
    fn covers(&self, identity: u32) -> bool {
        self.identities[..usize::from(self.known)].contains(&identity)
    }
}

/// A shard of the quiet clients.
type QuietShard = Mutex<HashMap<u64, Quiet, ClientKeys>>;

/// Where violations wait to be counted, shared by the request path and the flush.
struct Waiting {
    lanes: Vec<Lane>,
    /// Quiet clients, sharded by client.
    quiet: Vec<QuietShard>,
    /// Batches waiting in all lanes.
    total: AtomicUsize,
}

impl Waiting {
    fn new() -> Waiting {
        Waiting {
            lanes: (0..LANES).map(|_| Lane::default()).collect(),
            quiet: (0..SHARDS).map(|_| Mutex::default()).collect(),
            total: AtomicUsize::new(0),
        }
    }

    fn quiet_shard(&self, client: u64) -> &QuietShard {
        // From the middle bits: the maps place keys by their low bits and tag them
        // with their top ones, which must stay varied within a shard.
        &self.quiet[((client >> 32) % SHARDS as u64) as usize]
    }

    /// Takes the batches to count now into `flush`, merged per client across lanes:
    /// those not waiting, and every one of a [crowded](CROWDED) lane. Each identity in
    /// the merged batch keeps the description of the first lane that saw it.
    fn due(&self, now: Instant, flush: &mut Flush) {
        for shard in &self.quiet {
            shard.lock().retain(|_, quiet| quiet.until > now);
        }
        for lane in &self.lanes {
            let mut pending = lane.pending.lock();
            let crowded = pending.len() >= CROWDED;
            let taken = pending.take_due(now, crowded, |client, batch| {
                flush.taken.push((client, batch));
            });
            // Merged after the lane is unlocked: its thread may be reporting.
            drop(pending);
            self.total.fetch_sub(taken, Ordering::Relaxed);
            for (client, batch) in flush.taken.drain(..) {
                match flush.batches.entry(client) {
                    std::collections::hash_map::Entry::Occupied(mut first) => {
                        first.get_mut().merge(batch);
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(batch);
                    }
                }
            }
        }
    }
}

/// What one flush counts, and the memory it keeps from flush to flush: in a flood, a
/// flush's 10,000 batches made its map grow afresh each time, on memory the allocator
/// had handed back to the system since the last one, and the page faults were a fifth
/// of alerting's CPU (perf, 10,000-client flood).
#[derive(Default)]
struct Flush {
    /// The batches, merged per client.
    batches: HashMap<u64, Pending, ClientKeys>,
    /// One lane's batches, taken under its lock and merged after.
    taken: Vec<(u64, Pending)>,
    /// The most batches a recent flush held, decaying by a sixteenth a flush.
    recent_peak: usize,
}

impl Flush {
    /// Gives memory back when the map is far larger than recent flushes needed: by the
    /// decay, some 16 flushes (8 s) after a flood of 10,000 clients. A flood of quiet
    /// clients, counted every 5 s, keeps it.
    fn fit(&mut self) {
        self.recent_peak = self
            .batches
            .len()
            .max(self.recent_peak - self.recent_peak / 16);
        if self.batches.capacity() > 4 * self.recent_peak.max(1024) {
            self.batches.shrink_to(2 * self.recent_peak);
            self.taken.shrink_to(2 * self.recent_peak);
        }
    }
}

/// The handle the request path reports violations to.
///
/// A flood repeats itself: thousands of 429s a second from the same clients. Reports
/// are coalesced per client between flushes (every 500 ms), so the store sees one
/// update of cost N per client and flush rather than N updates, and the per-request
/// cost is one hash-map update under the reporting thread's own lock (threads beyond
/// [`LANES`] share).
#[derive(Clone)]
pub struct Alerting {
    waiting: Arc<Waiting>,
    outlets: Arc<Vec<Arc<BoundedQueue<Arc<Raised>>>>>,
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
        sinks: Vec<NamedSink>,
        metrics: AlertMetrics,
    ) -> Alerting {
        let capacity = tracker.settings().sink_queue;
        let outlets: Arc<Vec<Arc<BoundedQueue<Arc<Raised>>>>> = Arc::new(
            sinks
                .into_iter()
                .map(|sink| {
                    let dropped = metrics.delivery_counter(&sink.name, "dropped");
                    let outlet = Arc::new(BoundedQueue::new(capacity, dropped));
                    tokio::spawn(deliver_forever(sink, outlet.clone(), metrics.clone()));
                    outlet
                })
                .collect(),
        );
        let waiting = Arc::new(Waiting::new());
        tokio::spawn(count_forever(
            Arc::new(tracker),
            waiting.clone(),
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
            waiting,
            outlets,
            raised: metrics.raised.clone(),
            from_gateway: source("gateway"),
            from_upstream: source("upstream"),
            dropped: metrics.violations_dropped.clone(),
        }
    }

    /// Hands a violation over, without waiting: `client` identifies who committed it
    /// (a keyed hash of its network, so keys are spread evenly and no one can choose
    /// them), `identity` which user id and API key (a keyed hash of those tracked, 0
    /// when none is), `describe` builds the sanitised description if it is the
    /// identity's first in the batch.
    pub fn report(
        &self,
        client: u64,
        identity: u32,
        source: Source,
        describe: impl FnOnce() -> Violation + Send + 'static,
    ) {
        self.count_source(source);
        let mut pending = self.waiting.lanes[lane()].pending.lock();
        // Each identity keeps the description of its first violation.
        match pending.repeat(client, identity) {
            Repeat::Counted => return,
            Repeat::NewIdentity => {
                return pending.add_identity(client, identity, Box::new(describe));
            }
            Repeat::NoBatch => {}
        }
        // A client with a batch in another thread's lane is dropped here too: checking
        // every lane would make each first violation lock them all.
        if self.waiting.total.load(Ordering::Relaxed) >= MAX_PENDING {
            self.dropped.inc();
            return;
        }
        self.waiting.total.fetch_add(1, Ordering::Relaxed);
        let not_before = self
            .waiting
            .quiet_shard(client)
            .lock()
            .get(&client)
            .filter(|quiet| quiet.covers(identity))
            .map(|quiet| quiet.until);
        pending.open(
            client,
            Pending {
                first: Described {
                    identity,
                    count: 1,
                    describe: Box::new(describe),
                },
                others: Vec::new(),
                unattributed: 0,
                not_before,
            },
        );
    }

    /// Counts a violation by `identity` of `client` if a batch that can take it is
    /// already pending (the common case in a flood), without any description; false
    /// if there is none, and the caller should [`report`](Alerting::report) it with one.
    pub fn report_repeat(&self, client: u64, identity: u32, source: Source) -> bool {
        let repeated = self.waiting.lanes[lane()]
            .pending
            .lock()
            .repeat(client, identity)
            == Repeat::Counted;
        if repeated {
            self.count_source(source);
        }
        repeated
    }

    /// Sends an alert raised elsewhere (adaptive defence: a level raised, a client
    /// blocked) to every sink, through the same bounded queues.
    pub fn raise(&self, alert: Alert) {
        self.raised.inc();
        let alert = Raised::new(alert);
        for outlet in self.outlets.iter() {
            outlet.push(Arc::clone(&alert));
        }
    }

    fn count_source(&self, source: Source) {
        match source {
            Source::Gateway => self.from_gateway.inc(),
            Source::Upstream => self.from_upstream.inc(),
        };
    }
}

async fn count_forever<S: Store, C: Clock>(
    tracker: Arc<Tracker<S, C>>,
    waiting: Arc<Waiting>,
    outlets: Arc<Vec<Arc<BoundedQueue<Arc<Raised>>>>>,
    metrics: AlertMetrics,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut ticks = tokio::time::interval(FLUSH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = Flush::default();
    loop {
        ticks.tick().await;
        let flush_started = Instant::now();
        waiting.due(flush_started, &mut flush);
        flush.fit();
        for (client, p) in flush.batches.drain() {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let (tracker, outlets, metrics, waiting) = (
                tracker.clone(),
                outlets.clone(),
                metrics.clone(),
                waiting.clone(),
            );
            let mut batch = Box::pin(async move {
                let cooldown = tracker.settings().cooldown;
                let mut quiet_for = None::<Duration>;
                // The network is counted once for every violation of the batch, with
                // the description of the identity that committed most of them; each
                // identity for its own.
                let network = p.total();
                let most = std::iter::once(&p.first)
                    .chain(&p.others)
                    .enumerate()
                    .max_by_key(|&(i, d)| (d.count, std::cmp::Reverse(i)))
                    .map_or(0, |(i, _)| i);
                let mut identities = [0; IDENTITIES_PER_BATCH];
                let mut known = 0_u8;
                for (i, described) in std::iter::once(p.first).chain(p.others).enumerate() {
                    // At most IDENTITIES_PER_BATCH by construction (`Pending::add`).
                    if let Some(slot) = identities.get_mut(usize::from(known)) {
                        *slot = described.identity;
                        known += 1;
                    }
                    let violation = (described.describe)();
                    let own = described.count;
                    let network = if i == most { network } else { 0 };
                    for outcome in tracker.observe(&violation, network, own).await {
                        let quiet = outcome.quiet_for(cooldown);
                        quiet_for = Some(quiet_for.map_or(quiet, |q| q.min(quiet)));
                        emit(outcome, &violation, &tracker, &outlets, &metrics);
                    }
                }
                if let Some(wait) = quiet_for.and_then(quiet_wait) {
                    let mut quiet = waiting.quiet_shard(client).lock();
                    if quiet.len() < MAX_QUIET {
                        let until = Instant::now() + wait;
                        quiet.insert(
                            client,
                            Quiet {
                                until,
                                identities,
                                known,
                            },
                        );
                    }
                }
                drop(permit);
            });
            // Counted in memory, a batch never waits: it is done here, without a task
            // of its own (a task per batch was the larger part of a flood's alerting
            // work). One that waits (on Redis) goes on as a task, so the batches after
            // it need not wait for it; so do all batches once this flush has worked
            // INLINE_FOR, so a flood's batches still spread over the runtime's threads.
            if flush_started.elapsed() >= INLINE_FOR {
                tokio::spawn(batch);
                continue;
            }
            let counted = std::future::poll_fn(|cx| {
                // A batch that panics is lost, as it was on a task of its own; the
                // flush, and alerting, go on.
                Poll::Ready(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                    || batch.as_mut().poll(cx),
                )))
            })
            .await;
            match counted {
                Ok(Poll::Ready(())) => {}
                Ok(Poll::Pending) => {
                    tokio::spawn(batch);
                }
                Err(_) => tracing::error!("a batch of violations could not be counted"),
            }
        }
    }
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
    outlets: &[Arc<BoundedQueue<Arc<Raised>>>],
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
            let alert = Raised::new(*alert);
            for outlet in outlets {
                outlet.push(Arc::clone(&alert));
            }
        }
        Outcome::Suppressed { .. } => {}
    }
}

async fn deliver_forever(
    NamedSink { name, sink }: NamedSink,
    outlet: Arc<BoundedQueue<Arc<Raised>>>,
    metrics: AlertMetrics,
) {
    let (sent, failed) = (
        metrics.delivery_counter(&name, "sent"),
        metrics.delivery_counter(&name, "failed"),
    );
    let mut alerts = Vec::new();
    loop {
        alerts.clear();
        outlet.pop_up_to(sink.batch(), &mut alerts).await;
        let delivery = sink.deliver(&alerts).await;
        sent.inc_by(delivery.sent);
        if let Some((n, error)) = delivery.failed {
            failed.inc_by(n);
            tracing::warn!(sink = %name, alerts = n, error = %error, "alerts not delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn undescribed() -> Describe {
        Box::new(|| unreachable!("not described in these tests"))
    }

    fn pending(not_before: Option<Instant>) -> Pending {
        by(0, 1, not_before)
    }

    /// A batch opened by `count` violations of `identity`.
    fn by(identity: u32, count: u32, not_before: Option<Instant>) -> Pending {
        Pending {
            first: Described {
                identity,
                count,
                describe: undescribed(),
            },
            others: Vec::new(),
            unattributed: 0,
            not_before,
        }
    }

    /// A batch's counts by identity, first identity first.
    fn counts_by_identity(batch: &Pending) -> Vec<(u32, u32)> {
        std::iter::once(&batch.first)
            .chain(&batch.others)
            .map(|d| (d.identity, d.count))
            .collect()
    }

    /// Puts a batch straight into `lane`, as a report from that lane's thread would.
    fn open(waiting: &Waiting, lane: usize, client: u64, batch: Pending) {
        waiting.lanes[lane].pending.lock().open(client, batch);
        waiting.total.fetch_add(1, Ordering::Relaxed);
    }

    /// What a flush would count now.
    fn due_of(waiting: &Waiting, now: Instant) -> HashMap<u64, Pending, ClientKeys> {
        let mut flush = Flush::default();
        waiting.due(now, &mut flush);
        assert!(flush.taken.is_empty());
        flush.batches
    }

    /// Quiet until `until` for the identities given.
    fn quiet(until: Instant, identities: &[u32]) -> Quiet {
        let mut quiet = Quiet {
            until,
            identities: [0; IDENTITIES_PER_BATCH],
            known: identities.len() as u8,
        };
        quiet.identities[..identities.len()].copy_from_slice(identities);
        quiet
    }

    fn waiting_in_all_lanes(waiting: &Waiting) -> usize {
        waiting.lanes.iter().map(|l| l.pending.lock().len()).sum()
    }

    fn sorted_keys(due: &HashMap<u64, Pending, ClientKeys>) -> Vec<u64> {
        let mut keys: Vec<u64> = due.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_quiet_clients_batch_waits_until_its_time_and_others_go_at_once() {
        let now = Instant::now();
        let waiting = Waiting::new();
        open(&waiting, 0, 1, pending(None));
        open(&waiting, 1, 2, pending(Some(now + Duration::from_secs(3))));
        open(&waiting, 0, 3, pending(Some(now)));
        waiting
            .quiet_shard(2)
            .lock()
            .insert(2, quiet(now + Duration::from_secs(3), &[0]));
        waiting.quiet_shard(4).lock().insert(4, quiet(now, &[0]));
        assert_eq!(sorted_keys(&due_of(&waiting, now)), [1, 3]);
        assert!(
            waiting.lanes[1].pending.lock().counts.contains_key(&2),
            "still waiting"
        );
        assert_eq!(waiting_in_all_lanes(&waiting), 1);
        let quiet: Vec<u64> = waiting
            .quiet
            .iter()
            .flat_map(|shard| shard.lock().keys().copied().collect::<Vec<_>>())
            .collect();
        assert_eq!(quiet, [2], "expired entries go");
        let later = due_of(&waiting, now + Duration::from_secs(3));
        assert_eq!(sorted_keys(&later), [2]);
        assert_eq!(waiting_in_all_lanes(&waiting), 0);
    }

    #[test]
    fn waiting_batches_never_crowd_out_new_clients() {
        let now = Instant::now();
        let waiting = Waiting::new();
        let later = Some(now + Duration::from_secs(3));
        for client in 0..CROWDED as u64 {
            open(&waiting, 3, client, pending(later));
        }
        // Another lane, not crowded: its batches keep waiting.
        open(&waiting, 4, CROWDED as u64, pending(later));
        assert_eq!(
            due_of(&waiting, now).len(),
            CROWDED,
            "a crowded lane: all its batches are counted"
        );
        assert_eq!(waiting_in_all_lanes(&waiting), 1);
        assert_eq!(waiting.total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn one_clients_batches_in_several_lanes_are_counted_as_one() {
        let waiting = Waiting::new();
        for (lane, count) in [(0, 3), (5, 4), (15, 1)] {
            open(&waiting, lane, 42, by(0, count, None));
        }
        let due = due_of(&waiting, Instant::now());
        assert_eq!(sorted_keys(&due), [42]);
        assert_eq!(counts_by_identity(&due[&42]), [(0, 8)]);
        assert_eq!(due[&42].total(), 8);
    }

    #[test]
    fn identities_seen_in_several_lanes_are_merged_each_with_its_own() {
        let waiting = Waiting::new();
        let mut first_lane = by(1, 3, None);
        first_lane.add(Described {
            identity: 2,
            count: 1,
            describe: undescribed(),
        });
        open(&waiting, 0, 42, first_lane);
        let mut second_lane = by(2, 4, None);
        second_lane.add(Described {
            identity: 3,
            count: 2,
            describe: undescribed(),
        });
        second_lane.unattributed = 5;
        open(&waiting, 5, 42, second_lane);
        let due = due_of(&waiting, Instant::now());
        assert_eq!(counts_by_identity(&due[&42]), [(1, 3), (2, 5), (3, 2)]);
        assert_eq!(due[&42].unattributed, 5);
        assert_eq!(due[&42].total(), 15);
    }

    #[test]
    fn a_client_rotating_identities_holds_one_batch_and_loses_no_count() {
        let alerting = bare_alerting();
        // Twenty identities from one client, each violating three times.
        for _ in 0..3 {
            for identity in 1..=20 {
                if !alerting.report_repeat(7, identity, Source::Gateway) {
                    alerting.report(7, identity, Source::Gateway, || {
                        unreachable!("not described in this test")
                    });
                }
            }
        }
        assert_eq!(alerting.waiting.total.load(Ordering::Relaxed), 1);
        // Once the batch's room is taken, other identities need no description.
        assert!(alerting.report_repeat(7, 99, Source::Gateway));
        let due = due_of(&alerting.waiting, Instant::now());
        let batch = &due[&7];
        let expected: Vec<(u32, u32)> = (1..=IDENTITIES_PER_BATCH as u32)
            .map(|identity| (identity, 3))
            .collect();
        assert_eq!(counts_by_identity(batch), expected);
        assert_eq!(
            batch.unattributed,
            3 * (20 - IDENTITIES_PER_BATCH as u32) + 1
        );
        assert_eq!(batch.total(), 61, "every violation counted for the network");
        assert_eq!(alerting.from_gateway.get(), 61);
    }

    #[test]
    fn only_the_identities_known_to_be_quiet_wait() {
        let alerting = bare_alerting();
        let now = Instant::now();
        let later = now + Duration::from_secs(3);
        for client in [5, 6] {
            alerting
                .waiting
                .quiet_shard(client)
                .lock()
                .insert(client, quiet(later, &[1, 2]));
        }
        let describe = || unreachable!("not described in this test");
        // Client 5's batch is opened by a quiet identity, client 6's by a new one.
        alerting.report(5, 2, Source::Gateway, describe);
        alerting.report(6, 3, Source::Gateway, describe);
        assert_eq!(sorted_keys(&due_of(&alerting.waiting, now)), [6]);
        assert_eq!(sorted_keys(&due_of(&alerting.waiting, later)), [5]);
    }

    #[test]
    fn a_new_identity_in_a_waiting_batch_is_counted_at_the_next_flush() {
        let now = Instant::now();
        let mut lane = LaneBatches::default();
        lane.open(1, by(10, 1, Some(now + Duration::from_secs(3))));
        assert_eq!(lane.repeat(1, 10), Repeat::Counted);
        let take_due = |lane: &mut LaneBatches| {
            let mut due = Vec::new();
            lane.take_due(now, false, |client, batch| due.push((client, batch)));
            due
        };
        assert!(take_due(&mut lane).is_empty(), "quiet: it waits");
        assert_eq!(lane.repeat(1, 11), Repeat::NewIdentity);
        lane.add_identity(1, 11, undescribed());
        assert_eq!(lane.repeat(1, 11), Repeat::Counted);
        let due = take_due(&mut lane);
        assert_eq!(due.len(), 1, "another identity may be alerted on at once");
        assert_eq!(counts_by_identity(&due[0].1), [(10, 2), (11, 2)]);
    }

    /// An `Alerting` with no tracker or sinks behind it: what reports leave waiting.
    fn bare_alerting() -> Alerting {
        Alerting {
            waiting: Arc::new(Waiting::new()),
            outlets: Arc::new(Vec::new()),
            raised: Counter::default(),
            from_gateway: Counter::default(),
            from_upstream: Counter::default(),
            dropped: Counter::default(),
        }
    }

    #[test]
    fn concurrent_reports_from_many_threads_lose_no_violation() {
        const THREADS: u64 = 20; // more than LANES: some threads share a lane
        const CLIENTS: u64 = 50;
        const ROUNDS: u64 = 200;
        /// Each thread reports as one of these identities (users behind each client).
        const IDENTITIES: u64 = 3;
        let alerting = bare_alerting();
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let alerting = alerting.clone();
                let identity = (thread % IDENTITIES) as u32;
                scope.spawn(move || {
                    for _ in 0..ROUNDS {
                        for client in 0..CLIENTS {
                            if !alerting.report_repeat(client, identity, Source::Gateway) {
                                alerting.report(client, identity, Source::Gateway, || {
                                    unreachable!("not described in this test")
                                });
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(alerting.from_gateway.get(), THREADS * CLIENTS * ROUNDS);
        let due = due_of(&alerting.waiting, Instant::now());
        assert_eq!(due.len() as u64, CLIENTS);
        let counted: u64 = due.values().map(|p| u64::from(p.total())).sum();
        assert_eq!(
            counted,
            THREADS * CLIENTS * ROUNDS,
            "every violation counted"
        );
        for batch in due.values() {
            let mut by_identity = counts_by_identity(batch);
            by_identity.sort_unstable();
            let threads_as = |identity: u64| (identity..THREADS).step_by(3).count() as u32;
            let expected: Vec<(u32, u32)> = (0..IDENTITIES)
                .map(|i| (i as u32, threads_as(i) * ROUNDS as u32))
                .collect();
            assert_eq!(by_identity, expected, "each identity's own count");
        }
        assert_eq!(alerting.dropped.get(), 0);
    }

    #[test]
    fn new_clients_beyond_the_room_are_dropped_and_counted() {
        let alerting = bare_alerting();
        let describe = || unreachable!("not described in this test");
        for client in 0..MAX_PENDING as u64 + 10 {
            alerting.report(client, 0, Source::Gateway, describe);
        }
        assert_eq!(alerting.dropped.get(), 10);
        // A client already waiting is still counted in full.
        alerting.report(0, 0, Source::Gateway, describe);
        assert_eq!(alerting.dropped.get(), 10);
        let due = due_of(&alerting.waiting, Instant::now());
        assert_eq!(due.len(), MAX_PENDING);
        assert_eq!(due[&0].total(), 2);
        // The flush made room again.
        alerting.report(u64::MAX, 0, Source::Gateway, describe);
        assert_eq!(alerting.dropped.get(), 10);
        assert_eq!(alerting.waiting.total.load(Ordering::Relaxed), 1);
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
