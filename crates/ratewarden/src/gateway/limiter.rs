//! The store the gateway asks, as configured: memory, or Redis behind its failure
//! policy; and what each answer means for the request.

use crate::config::StoreConfig;
use crate::metrics::{Fallback, Metrics, StoreFailure};
use ratewarden_core::clock::SystemClock;
use ratewarden_store::redis::RedisStore;
use ratewarden_store::{Answer, Check, Decisions, Guarded, MemoryStore};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

/// The configured store.
pub enum Limiter {
    /// In this process; cannot fail.
    Memory(Arc<MemoryStore<SystemClock>>),
    /// Shared in Redis, with `store.on_error`.
    Redis(Box<RedisLimiter>),
}

/// Redis behind its failure policy, with a local fallback.
type RedisLimiter = Guarded<RedisStore<SystemClock>, SystemClock>;

/// What the gateway does with a request, as far as the limits go.
pub enum Verdict {
    /// Decided (by the store, or by the local fallback).
    Decided(Decisions),
    /// Not decided; the failure policy lets it through without limits.
    Unchecked,
    /// Not decided; the failure policy refuses it for about this long.
    Refused(Duration),
}

impl Limiter {
    /// Builds the store; Redis is connected on first use (the gateway starts, and follows
    /// `on_error`, while Redis is down).
    pub fn new(config: &StoreConfig) -> anyhow::Result<Limiter> {
        let cap = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Ok(match config {
            StoreConfig::Memory { max_keys } => {
                let store = Arc::new(MemoryStore::new(cap(*max_keys)));
                store.spawn_janitor(Duration::from_secs(10));
                Limiter::Memory(store)
            }
            StoreConfig::Redis {
                settings,
                on_error,
                max_keys,
            } => {
                let redis = RedisStore::new(settings.clone(), SystemClock::new())?;
                let local = MemoryStore::new(cap(*max_keys));
                Limiter::Redis(Box::new(Guarded::new(redis, *on_error, local)))
            }
        })
    }

    /// Checks that the store answers, logging the outcome: a startup courtesy, never
    /// a reason not to start.
    pub async fn probe(&self) {
        if let Limiter::Redis(guarded) = self {
            match guarded.store().ping().await {
                Ok(()) => tracing::info!("Redis store reachable; limiter script loaded"),
                Err(e) => {
                    tracing::warn!(error = %e, on_error = guarded.policy().as_str(), "Redis store not reachable yet; applying store.on_error until it is")
                }
            }
        }
    }

    /// The verdict on `checks` when it needs no waiting: none to decide, or the memory
    /// store's (the request then neither builds nor awaits a future for it). `None`
    /// when Redis must be asked ([`Limiter::decide`]).
    #[inline]
    pub fn decide_at_once(&self, checks: &[Check<'_>]) -> Option<Verdict> {
        self.verdict_or_redis(checks).ok()
    }

    /// The verdict when it needs no waiting, or else the Redis store to ask.
    #[inline]
    fn verdict_or_redis(&self, checks: &[Check<'_>]) -> Result<Verdict, &RedisLimiter> {
        if checks.is_empty() {
            return Ok(Verdict::Decided(Decisions::default()));
        }
        match self {
            Limiter::Memory(store) => Ok(Verdict::Decided(store.decide_now(checks))),
            Limiter::Redis(guarded) => Err(guarded),
        }
    }

    /// Decides `checks`, counting store failures and fallbacks in `metrics`.
    pub async fn decide(&self, checks: &[Check<'_>], metrics: &Metrics) -> Verdict {
        let guarded = match self.verdict_or_redis(checks) {
            Ok(verdict) => return verdict,
            Err(guarded) => guarded,
        };
        let failed = |error: &ratewarden_store::StoreError| {
            metrics
                .store_errors
                .get_or_create(&StoreFailure { kind: error.kind() })
                .inc();
            metrics
                .store_fallbacks
                .get_or_create(&Fallback {
                    on_error: guarded.policy().as_str(),
                })
                .inc();
            // Per request at debug: the breaker logs a warning when Redis starts failing.
            tracing::debug!(error = %error, "store failed; applying store.on_error");
        };
        // Boxed: a Redis round trip's state is large, and every request's future would
        // carry (and move) it even with the memory store.
        match Box::pin(guarded.decide(checks)).await {
            Answer::Decided(d) => Verdict::Decided(d),
            Answer::Local { decisions, error } => {
                failed(&error);
                Verdict::Decided(decisions)
            }
            Answer::FailedOpen(error) => {
                failed(&error);
                Verdict::Unchecked
            }
            Answer::FailedClosed { error, retry_after } => {
                failed(&error);
                Verdict::Refused(retry_after)
            }
        }
    }
}
