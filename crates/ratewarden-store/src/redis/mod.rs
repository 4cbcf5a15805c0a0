//! The Redis backend: counters shared by every gateway that uses the same Redis (or
//! Redis Cluster), decided by one Lua script per request.
//!
//! - **Exact**: the script reads, judges and writes all of a request's counters in one
//!   atomic step, writing the new states with their expiry in the same `SET`, and only
//!   when every check admits.
//! - **Skew-free**: the script takes the time from the Redis server (`TIME`), never
//!   from the gateway.
//! - **Cluster**: keys carry the client as a hash tag ([`keys`]); a request whose
//!   checks span clients (say, one rule by IP and one by API key) is decided per slot,
//!   concurrently, and an admission in one slot that another slot denied is refunded.
//! - **Bounded**: each decision waits at most the configured timeout; after repeated
//!   failures the [`breaker`] fails calls at once and probes Redis until it answers.
//!   `SCRIPT FLUSH` costs one reload (`EVALSHA`, then `SCRIPT LOAD` on NOSCRIPT), and a
//!   server that answers READONLY (demoted to a replica) gets a fresh connection.
//!
//! What to do when this store fails is the caller's choice ([`crate::failure`]).

mod breaker;
mod connection;
mod keys;
mod login;
mod script;
mod threat;

pub use connection::{redacted, RedisTarget};
pub use script::{check_limit, UnsupportedLimit, SOURCE};

use crate::check::{Check, Decisions};
use crate::error::StoreError;
use crate::store::Store;
use breaker::Breaker;
use connection::{needs_new_connection, Connection, Live};
use futures_util::future::join_all;
use keys::ClientTag;
use ratewarden_core::clock::Clock;
use ratewarden_core::{Nanos, Timestamp};
use redis::{RedisError, Value};
use script::Mode;
use std::time::Duration;

/// How to reach Redis and how long to wait for it.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// The server or cluster.
    pub target: RedisTarget,
    /// The longest a decision may wait for Redis, connecting included.
    pub timeout: Duration,
    /// The first part of every key (`rw` unless configured), so several deployments can
    /// share one Redis.
    pub key_prefix: String,
}

/// Limiter state in Redis; see the module documentation.
pub struct RedisStore<C> {
    connection: Connection,
    cluster: bool,
    settings: RedisSettings,
    breaker: Breaker,
    clock: C,
}

impl<C: Clock> RedisStore<C> {
    /// A store for `settings`; connects on first use, so a gateway starts (and follows
    /// its failure policy) while Redis is still down.
    pub fn new(settings: RedisSettings, clock: C) -> Result<RedisStore<C>, StoreError> {
        let connection = Connection::new(&settings.target, settings.timeout)
            .map_err(|e| StoreError::Protocol(format!("invalid Redis target: {e}")))?;
        Ok(RedisStore {
            connection,
            cluster: matches!(settings.target, RedisTarget::Cluster(_)),
            settings,
            breaker: Breaker::default(),
            clock,
        })
    }

    /// Connects and loads the script, within the timeout: for a startup check.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let live = self.connection.get().await.map_err(|e| self.failed(e))?;
            let loaded: Result<String, RedisError> = match live {
                Live::Server(mut c) => script::LIMITER.load_async(&mut c).await,
                Live::Cluster(mut c) => script::LIMITER.load_async(&mut c).await,
            };
            loaded.map(|_| ()).map_err(|e| self.failed(e))
        })
        .await
    }

    /// Decides as [`Store::decide`] does, but at `now` instead of the Redis server's
    /// time: for comparing the script with the Rust algorithms step by step. `now` is
    /// used to the microsecond.
    pub async fn decide_at(
        &self,
        checks: &[Check<'_>],
        now: Timestamp,
    ) -> Result<Decisions, StoreError> {
        self.decide_with(checks, Some(now.as_nanos() / 1000)).await
    }

    /// How long until the breaker lets a call through again (zero when closed): what a
    /// fail-closed gateway puts in `Retry-After`.
    pub fn retry_after(&self) -> Nanos {
        self.breaker.retry_after(self.clock.now())
    }

    /// Whether the breaker is open (calls fail at once).
    pub fn is_failing_fast(&self) -> bool {
        self.breaker.is_open()
    }

    async fn decide_with(
        &self,
        checks: &[Check<'_>],
        now_micros: Option<u64>,
    ) -> Result<Decisions, StoreError> {
        if checks.is_empty() {
            return Ok(Decisions::default());
        }
        if !self.breaker.admit(self.clock.now()) {
            return Err(StoreError::CircuitOpen(self.retry_after().to_duration()));
        }
        let result = self.bounded(self.attempt(checks, now_micros)).await;
        match &result {
            Ok(_) => self.breaker.record_success(),
            Err(e) => {
                if self.breaker.record_failure(self.clock.now()) {
                    tracing::warn!(error = %e, pause = ?self.retry_after().to_duration(), "Redis failing: calls fail fast until a probe succeeds");
                }
            }
        }
        result
    }

    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.settings.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.settings.timeout)),
        }
    }

    async fn attempt(
        &self,
        checks: &[Check<'_>],
        now_micros: Option<u64>,
    ) -> Result<Decisions, StoreError> {
        let live = self.connection.get().await.map_err(|e| self.failed(e))?;
        let calls = checks
            .iter()
            .map(|c| ScriptCheck::new(&self.settings.key_prefix, c))
            .collect::<Result<Vec<_>, _>>()?;
        let groups = slot_groups(self.cluster, &calls);
        let outcome = if groups.len() == 1 {
            invoke(&live, Mode::Decide, now_micros, &calls, &groups[0], &[])
                .await
                .map(|answers| answers.into_iter().map(|(d, _)| d).collect())
        } else {
            // Checks on several slots: each slot decides its own checks atomically, and
            // if any slot denies, the slots that admitted give their charges back. This
            // runs as a task of its own, so that a caller giving up (its timeout, a
            // client gone) cannot stop the refunds half-way.
            let deadline = self.settings.timeout.saturating_mul(4);
            let task = tokio::spawn(async move {
                tokio::time::timeout(deadline, across_slots(&live, now_micros, &calls, &groups))
                    .await
                    .unwrap_or(Err(Failure::Store(StoreError::Timeout(deadline))))
            });
            match task.await {
                Ok(outcome) => outcome,
                Err(e) => Err(Failure::Store(StoreError::Protocol(format!(
                    "cross-slot decision task failed: {e}"
                )))),
            }
        };
        outcome.map_err(|failure| match failure {
            Failure::Redis(e) => self.failed(e),
            Failure::Store(e) => e,
        })
    }

    /// Turns a Redis error into a store error, dropping the connection when it cannot
    /// recover by itself.
    fn failed(&self, error: RedisError) -> StoreError {
        if needs_new_connection(&error) {
            self.connection.reset();
        }
        if error.is_timeout() {
            StoreError::Timeout(self.settings.timeout)
        } else if error.is_io_error()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || connection::is_read_only(&error)
        {
            StoreError::Unavailable(error.to_string())
        } else {
            StoreError::Protocol(error.to_string())
        }
    }
}

/// Why a script call failed: Redis's error (the store classifies it, and may drop the
/// connection) or an answer it could not read.
enum Failure {
    Redis(RedisError),
    Store(StoreError),
}

/// One check as the script takes it, owned, so a cross-slot decision can outlive the
/// request that asked for it.
struct ScriptCheck {
    key: String,
    tag: ClientTag,
    limit: script::ScriptLimit,
    cost: u32,
}

impl ScriptCheck {
    fn new(prefix: &str, check: &Check<'_>) -> Result<ScriptCheck, StoreError> {
        let (key, tag) = keys::counter_key(prefix, check.key());
        let limit = script::ScriptLimit::of(check.limit())
            .map_err(|e| StoreError::Protocol(e.to_string()))?;
        Ok(ScriptCheck {
            key,
            tag,
            limit,
            cost: check.cost(),
        })
    }
}

/// Indices of the checks that one script call can decide together: all of them on a
/// single server; one group per client (hash tag) on a cluster.
fn slot_groups(cluster: bool, calls: &[ScriptCheck]) -> Vec<Vec<usize>> {
    if !cluster {
        return vec![(0..calls.len()).collect()];
    }
    let mut groups: Vec<(&ClientTag, Vec<usize>)> = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        match groups.iter_mut().find(|(t, _)| **t == call.tag) {
            Some((_, group)) => group.push(i),
            None => groups.push((&call.tag, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Decides checks spread over several slots, refunding the slots that admitted when
/// another denied (or failed).
async fn across_slots(
    live: &Live,
    now_micros: Option<u64>,
    calls: &[ScriptCheck],
    groups: &[Vec<usize>],
) -> Result<Decisions, Failure> {
    let results = join_all(
        groups
            .iter()
            .map(|group| invoke(live, Mode::Decide, now_micros, calls, group, &[])),
    )
    .await;
    let mut decisions = vec![None; calls.len()];
    let mut written = vec![String::new(); calls.len()];
    let mut failure = None;
    for (group, result) in groups.iter().zip(results) {
        match result {
            Ok(answers) => {
                for (&i, (decision, state)) in group.iter().zip(answers) {
                    decisions[i] = Some(decision);
                    written[i] = state;
                }
            }
            Err(e) => failure = Some(e),
        }
    }
    let all_allowed = failure.is_none() && decisions.iter().all(|d| d.is_some_and(|d| d.allowed));
    if !all_allowed {
        for group in groups {
            let charged: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&i| !written[i].is_empty())
                .collect();
            if charged.is_empty() {
                continue;
            }
            if let Err(Failure::Redis(e)) =
                invoke(live, Mode::Refund, now_micros, calls, &charged, &written).await
            {
                // The admission stays charged: stricter, never looser.
                tracing::warn!(error = %e, "could not refund an admission on another slot");
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(decisions.into_iter().flatten().collect())
}

/// One script call for the checks `group` of `calls`.
async fn invoke(
    live: &Live,
    mode: Mode,
    now_micros: Option<u64>,
    calls: &[ScriptCheck],
    group: &[usize],
    written: &[String],
) -> Result<Vec<script::Answer>, Failure> {
    let mut invocation = script::begin(mode, now_micros);
    for &i in group {
        let call = &calls[i];
        let state = written.get(i).map_or("", String::as_str);
        script::push_check(&mut invocation, &call.key, &call.limit, call.cost, state);
    }
    let reply: Result<Value, RedisError> = match live.clone() {
        Live::Server(mut c) => invocation.invoke_async(&mut c).await,
        Live::Cluster(mut c) => invocation.invoke_async(&mut c).await,
    };
    let reply = reply.map_err(Failure::Redis)?;
    match mode {
        Mode::Decide => script::read_decisions(reply, group.len()).map_err(Failure::Store),
        Mode::Refund => Ok(Vec::new()),
    }
}

impl<C: Clock> Store for RedisStore<C> {
    async fn decide(&self, checks: &[Check<'_>]) -> Result<Decisions, StoreError> {
        self.decide_with(checks, None).await
    }
}
