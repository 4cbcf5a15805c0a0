//! What a client did over the threat window: per-request observations folded into two
//! window-long buckets (this one and the one before), and the signals read from them.
//!
//! Every backend keeps the same [`Bucket`] fields (memory in a [`ClientWindow`], Redis in
//! a hash per window), so the signals are computed by one function,
//! [`Signals::from_buckets`], whatever holds them.

use super::sketch::DistinctSketch;
use crate::time::{Nanos, Timestamp};

/// Inter-arrival gaps longer than this are pauses, not a rhythm, and are not timed.
pub const MAX_TIMED_GAP_MS: u64 = 60_000;

/// How a request ended, as far as behaviour goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Forwarded; the upstream answered with this status (502/504 for no answer).
    Answered(u16),
    /// Refused by one of our limits (429).
    Limited,
}

/// One request, as the behaviour tracker sees it: hashes, not the values.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    /// When the request arrived.
    pub at: Timestamp,
    /// Hash of the canonical path.
    pub endpoint: u64,
    /// Hash of the `User-Agent` (0 when none was sent).
    pub agent: u64,
    /// The user agent names a known automation tool.
    pub automation_agent: bool,
    /// Forwarding headers came from a peer not trusted to send them.
    pub spoofed_forwarding: bool,
    /// A login attempt from a client that login protection counts as credential
    /// stuffing (it tried too many distinct accounts).
    pub credential_stuffing: bool,
    /// How it ended.
    pub outcome: RequestOutcome,
}

impl Observation {
    /// Whether the upstream answered with an error (4xx or 5xx, other than a 429 of ours).
    pub fn is_error(&self) -> bool {
        matches!(self.outcome, RequestOutcome::Answered(s) if s >= 400)
    }

    /// Whether the upstream refused credentials (401 or 403).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self.outcome, RequestOutcome::Answered(401 | 403))
    }
}

/// Counts over one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Requests seen.
    pub requests: u64,
    /// Upstream 4xx/5xx answers.
    pub errors: u64,
    /// Upstream 401/403 answers.
    pub auth_failures: u64,
    /// Requests refused by our limits.
    pub limited: u64,
    /// Requests from a known automation user agent.
    pub automation: u64,
    /// Requests with forwarding headers from an untrusted peer.
    pub spoofed: u64,
    /// Requests whose user agent differed from the client's previous one.
    pub agent_changes: u64,
    /// Inter-arrival gaps timed.
    pub gaps: u64,
    /// Their sum, in milliseconds.
    pub gap_sum_ms: u64,
    /// The sum of their squares, in milliseconds squared.
    pub gap_squares_ms: u64,
    /// Login attempts made while counted as credential stuffing.
    pub stuffing: u64,
}

impl Bucket {
    /// Adds one observation; `gap_ms` is the time since the client's previous request,
    /// `agent_changed` whether its user agent differs from that request's.
    pub fn add(&mut self, o: &Observation, gap_ms: Option<u64>, agent_changed: bool) {
        self.requests += 1;
        self.errors += u64::from(o.is_error());
        self.auth_failures += u64::from(o.is_auth_failure());
        self.limited += u64::from(o.outcome == RequestOutcome::Limited);
        self.automation += u64::from(o.automation_agent);
        self.spoofed += u64::from(o.spoofed_forwarding);
        self.agent_changes += u64::from(agent_changed);
        self.stuffing += u64::from(o.credential_stuffing);
        if let Some(gap) = gap_ms.filter(|g| *g <= MAX_TIMED_GAP_MS) {
            self.gaps += 1;
            self.gap_sum_ms = self.gap_sum_ms.saturating_add(gap);
            self.gap_squares_ms = self.gap_squares_ms.saturating_add(gap * gap);
        }
    }
}

impl Bucket {
    /// Adds another bucket's counts to this one.
    pub fn absorb(&mut self, other: &Bucket) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.auth_failures += other.auth_failures;
        self.limited += other.limited;
        self.automation += other.automation;
        self.spoofed += other.spoofed;
        self.agent_changes += other.agent_changes;
        self.gaps += other.gaps;
        self.gap_sum_ms = self.gap_sum_ms.saturating_add(other.gap_sum_ms);
        self.gap_squares_ms = self.gap_squares_ms.saturating_add(other.gap_squares_ms);
        self.stuffing += other.stuffing;
    }

    /// The counts in a fixed order (the Redis script's field order).
    pub fn fields(&self) -> [u64; 11] {
        [
            self.requests,
            self.errors,
            self.auth_failures,
            self.limited,
            self.automation,
            self.spoofed,
            self.agent_changes,
            self.gaps,
            self.gap_sum_ms,
            self.gap_squares_ms,
            self.stuffing,
        ]
    }
}

/// The most distinct endpoints one batch carries: a client touching more between two
/// flushes is counted as touching this many more (it is already far past any threshold).
pub const MAX_BATCH_ENDPOINTS: usize = 256;

/// Observations of one client gathered between two flushes, added to the store at once:
/// a busy client costs one store update per flush, not one per request.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Counts, with the gaps and user-agent changes between the batch's own requests.
    pub bucket: Bucket,
    /// Distinct endpoint hashes.
    pub endpoints: Vec<u64>,
    /// Arrival of the first request (the gap before it is timed by the store).
    pub first_at: Timestamp,
    /// Its user agent hash.
    pub first_agent: u64,
    /// Arrival of the latest request.
    pub last_at: Timestamp,
    /// Its user agent hash.
    pub last_agent: u64,
}

impl Batch {
    /// A batch of one request.
    pub fn of(o: &Observation) -> Batch {
        let mut bucket = Bucket::default();
        bucket.add(o, None, false);
        Batch {
            bucket,
            endpoints: vec![o.endpoint],
            first_at: o.at,
            first_agent: o.agent,
            last_at: o.at,
            last_agent: o.agent,
        }
    }

    /// Adds one more request.
    pub fn add(&mut self, o: &Observation) {
        let gap = gap_ms(Some(self.last_at), o.at);
        self.bucket.add(o, gap, o.agent != self.last_agent);
        if self.endpoints.len() < MAX_BATCH_ENDPOINTS && !self.endpoints.contains(&o.endpoint) {
            self.endpoints.push(o.endpoint);
        }
        if o.at >= self.last_at {
            self.last_at = o.at;
        }
        self.last_agent = o.agent;
    }
}

/// The time since the previous request, in whole milliseconds, if it is known and not
/// in the future (concurrent requests may be observed out of order).
pub fn gap_ms(previous: Option<Timestamp>, now: Timestamp) -> Option<u64> {
    let previous = previous?;
    (now >= previous).then(|| now.saturating_since(previous).as_nanos() / 1_000_000)
}

/// The signals of one client, over (about) the last window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// Requests in the window.
    pub requests: f64,
    /// Requests per second over the window.
    pub request_rate: f64,
    /// Upstream errors in the window.
    pub errors: f64,
    /// Upstream 401/403 in the window.
    pub auth_failures: f64,
    /// Requests refused by our limits in the window.
    pub limited: f64,
    /// Distinct endpoints touched (estimated).
    pub endpoints: f64,
    /// Requests from automation user agents.
    pub automation: f64,
    /// Requests with spoofed forwarding headers.
    pub spoofed: f64,
    /// User agent changes.
    pub agent_changes: f64,
    /// Login attempts made while counted as credential stuffing.
    pub stuffing: f64,
    /// Distinct addresses of the client's network that failed authentication in this
    /// window and the one before, the client included; 0 unless the client failed at
    /// least twice itself (filled in by the gateway from the network's record).
    pub failing_neighbours: f64,
    /// Inter-arrival gaps timed.
    pub gaps: f64,
    /// Coefficient of variation of the gaps (standard deviation / mean); `None` without
    /// two gaps or with a zero mean.
    pub timing_cv: Option<f64>,
    /// The mean gap in milliseconds; `None` without two gaps.
    pub mean_gap_ms: Option<f64>,
}

impl Signals {
    /// The signals at `elapsed` into the current window of length `window`: the current
    /// bucket in full, the previous one weighted by the share of it still inside a
    /// window-long look-back (the sliding-window estimate). `endpoints` are the distinct
    /// counts of the two buckets, weighed the same way (an endpoint touched in both is
    /// counted in both: cheaper than a union, which in Redis merges two HyperLogLogs on
    /// every request, and never lower).
    pub fn from_buckets(
        current: &Bucket,
        previous: &Bucket,
        elapsed: Nanos,
        window: Nanos,
        endpoints: (f64, f64),
    ) -> Signals {
        let window_ns = window.as_nanos().max(1) as f64;
        let w = (1.0 - elapsed.as_nanos() as f64 / window_ns).clamp(0.0, 1.0);
        let mix = |f: fn(&Bucket) -> u64| f(current) as f64 + w * f(previous) as f64;
        let requests = mix(|b| b.requests);
        let gaps = mix(|b| b.gaps);
        let sum = mix(|b| b.gap_sum_ms);
        let squares = mix(|b| b.gap_squares_ms);
        let mean_gap_ms = (gaps >= 2.0).then(|| sum / gaps);
        let timing_cv = mean_gap_ms.map(|mean| {
            let variance = (squares / gaps - mean * mean).max(0.0);
            (mean > 0.0).then(|| variance.sqrt() / mean)
        });
        Signals {
            requests,
            request_rate: requests / (window_ns / 1e9),
            errors: mix(|b| b.errors),
            auth_failures: mix(|b| b.auth_failures),
            limited: mix(|b| b.limited),
            endpoints: endpoints.0 + w * endpoints.1,
            automation: mix(|b| b.automation),
            spoofed: mix(|b| b.spoofed),
            agent_changes: mix(|b| b.agent_changes),
            stuffing: mix(|b| b.stuffing),
            failing_neighbours: 0.0,
            gaps,
            timing_cv: timing_cv.flatten(),
            mean_gap_ms,
        }
    }
}

/// One client's behaviour, as the memory backend keeps it.
#[derive(Clone, Debug, Default)]
pub struct ClientWindow {
    /// The window length the buckets were counted over.
    window: Nanos,
    /// Index of the current window (time / window length).
    index: u64,
    current: Bucket,
    previous: Bucket,
    endpoints_current: DistinctSketch,
    endpoints_previous: DistinctSketch,
    last_at: Option<Timestamp>,
    last_agent: u64,
}

impl ClientWindow {
    /// Adds one observation, moving the buckets on if a window has passed.
    pub fn observe(&mut self, o: &Observation, window: Nanos) {
        self.add_batch(&Batch::of(o), window, o.at);
    }

    /// Adds a batch at `now`, moving the buckets on if a window has passed; the gap
    /// and user-agent change before the batch's first request are judged here, against
    /// the client's previous request.
    pub fn add_batch(&mut self, batch: &Batch, window: Nanos, now: Timestamp) {
        self.roll(now, window);
        let mut counts = batch.bucket;
        if let Some(gap) = gap_ms(self.last_at, batch.first_at).filter(|g| *g <= MAX_TIMED_GAP_MS) {
            counts.gaps += 1;
            counts.gap_sum_ms = counts.gap_sum_ms.saturating_add(gap);
            counts.gap_squares_ms = counts.gap_squares_ms.saturating_add(gap * gap);
        }
        if self.last_at.is_some() && self.last_agent != batch.first_agent {
            counts.agent_changes += 1;
        }
        self.current.absorb(&counts);
        for endpoint in &batch.endpoints {
            self.endpoints_current.insert(*endpoint);
        }
        if self.last_at.is_none_or(|last| batch.last_at >= last) {
            self.last_at = Some(batch.last_at);
        }
        self.last_agent = batch.last_agent;
    }

    /// The signals at `now`.
    pub fn signals(&mut self, now: Timestamp, window: Nanos) -> Signals {
        self.roll(now, window);
        let elapsed = Nanos(now.as_nanos() % window.as_nanos().max(1));
        Signals::from_buckets(
            &self.current,
            &self.previous,
            elapsed,
            window,
            (
                self.endpoints_current.estimate(),
                self.endpoints_previous.estimate(),
            ),
        )
    }

    /// Adds `member` to the distinct set of the current window without counting a
    /// request (a network's record of its failing addresses), at `now`.
    pub fn add_member(&mut self, member: u64, window: Nanos, now: Timestamp) {
        self.roll(now, window);
        self.endpoints_current.insert(member);
        if self.last_at.is_none_or(|last| now >= last) {
            self.last_at = Some(now);
        }
    }

    /// The distinct members of the current and the previous window together (their
    /// union: a member of both counts once), at `now`.
    pub fn members(&mut self, now: Timestamp, window: Nanos) -> f64 {
        self.roll(now, window);
        let mut union = self.endpoints_current.clone();
        union.merge(&self.endpoints_previous);
        union.estimate()
    }

    /// When this record says nothing any more: two windows after the last request.
    pub fn stale_at(&self, window: Nanos) -> Timestamp {
        let last = self.last_at.unwrap_or(Timestamp::EPOCH);
        last.saturating_add(Nanos(window.as_nanos().saturating_mul(2)))
    }

    fn roll(&mut self, now: Timestamp, window: Nanos) {
        if window != self.window {
            // A reload changed the window: buckets of another length mean nothing now,
            // and their indices would read as a clock gone backwards forever.
            *self = ClientWindow {
                window,
                ..ClientWindow::default()
            };
        }
        let index = now.as_nanos() / window.as_nanos().max(1);
        if index <= self.index {
            return; // same window, or time went backwards: stay
        }
        if index == self.index + 1 {
            self.previous = self.current;
            self.endpoints_previous = std::mem::take(&mut self.endpoints_current);
        } else {
            self.previous = Bucket::default();
            self.endpoints_previous = DistinctSketch::default();
            self.endpoints_current = DistinctSketch::default();
        }
        self.current = Bucket::default();
        self.endpoints_current = DistinctSketch::default();
        self.index = index;
    }
}
