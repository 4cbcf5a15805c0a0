//! Where login state is kept: in this process or in Redis, as the limiter's store says.

use crate::config::StoreConfig;
use ratewarden_core::clock::SystemClock;
use ratewarden_core::login::Outcome;
use ratewarden_core::Nanos;
use ratewarden_store::login::{AccountRules, Admission, Finished, LoginStore, MemoryLogins};
use ratewarden_store::redis::RedisStore;
use ratewarden_store::StoreError;

/// Where login state is kept: as the limiter's store says.
pub enum Logins {
    /// In this process.
    Memory(MemoryLogins<SystemClock>),
    /// In Redis, shared by every gateway.
    Redis(Box<RedisStore<SystemClock>>),
}

impl Logins {
    /// The login store for the limiter's store settings (Redis on a connection of its
    /// own).
    pub fn new(store: &StoreConfig) -> anyhow::Result<Logins> {
        Ok(match store {
            StoreConfig::Memory { max_keys } => {
                Logins::Memory(MemoryLogins::new(*max_keys, SystemClock::new()))
            }
            StoreConfig::Redis { settings, .. } => Logins::Redis(Box::new(RedisStore::new(
                settings.clone(),
                SystemClock::new(),
            )?)),
        })
    }
}

impl LoginStore for Logins {
    async fn begin(
        &self,
        account: &str,
        address: &str,
        rules: &AccountRules,
    ) -> Result<Admission, StoreError> {
        match self {
            Logins::Memory(m) => m.begin(account, address, rules).await,
            Logins::Redis(r) => r.begin(account, address, rules).await,
        }
    }
    async fn finish(
        &self,
        account: &str,
        address: &str,
        outcome: Outcome,
        rules: &AccountRules,
    ) -> Result<Finished, StoreError> {
        match self {
            Logins::Memory(m) => m.finish(account, address, outcome, rules).await,
            Logins::Redis(r) => r.finish(account, address, outcome, rules).await,
        }
    }
    async fn tried(
        &self,
        route: &str,
        address: &str,
        account: &str,
        window: Nanos,
    ) -> Result<u64, StoreError> {
        match self {
            Logins::Memory(m) => m.tried(route, address, account, window).await,
            Logins::Redis(r) => r.tried(route, address, account, window).await,
        }
    }
}
