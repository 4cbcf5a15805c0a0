//! Backends the store contract tests run against: memory, a Redis server and a Redis
//! Cluster, each started on free loopback ports and given as two handles on the same
//! state (for Redis: two gateways).
#![allow(dead_code, clippy::unwrap_used)]

use ratewarden_core::clock::SystemClock;
use ratewarden_store::redis::{RedisSettings, RedisStore, RedisTarget};
use ratewarden_testkit::{RedisCluster, RedisServer};
use std::sync::Arc;
use std::time::Duration;

pub struct Backend<S> {
    /// Two handles on the same state.
    pub stores: [Arc<S>; 2],
    _server: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

/// One in-process store, twice.
pub fn memory<S>(store: S) -> Backend<S> {
    let store = Arc::new(store);
    Backend {
        stores: [store.clone(), store],
        _server: None,
        _cluster: None,
    }
}

fn redis_store(target: RedisTarget) -> Arc<RedisStore<SystemClock>> {
    let settings = RedisSettings {
        target,
        timeout: Duration::from_secs(2),
        key_prefix: "rwtest".into(),
    };
    Arc::new(RedisStore::new(settings, SystemClock::new()).unwrap())
}

/// Two connections to a Redis server of their own.
pub fn redis() -> Backend<RedisStore<SystemClock>> {
    let server = RedisServer::start();
    let target = || RedisTarget::Server(server.url());
    Backend {
        stores: [redis_store(target()), redis_store(target())],
        _server: Some(server),
        _cluster: None,
    }
}

/// Two connections to a Redis Cluster of their own.
pub fn redis_cluster() -> Backend<RedisStore<SystemClock>> {
    let cluster = RedisCluster::start();
    let target = || RedisTarget::Cluster(cluster.urls());
    Backend {
        stores: [redis_store(target()), redis_store(target())],
        _server: None,
        _cluster: Some(cluster),
    }
}

/// Runs each named contract test against every backend; `$memory` makes the memory
/// store.
#[macro_export]
macro_rules! conformance {
    ($memory:expr; $($case:ident),* $(,)?) => {
        mod memory_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::common::memory($memory)).await })*
        }
        mod redis_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::common::redis()).await })*
        }
        mod redis_cluster_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::common::redis_cluster()).await })*
        }
    };
}
