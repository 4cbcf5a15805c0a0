//! Connections to one Redis server or one Redis Cluster, made lazily and remade when
//! the server turns out to be a read-only replica.
//!
//! One multiplexed connection carries every request: commands from concurrent requests
//! are written back to back without waiting for each other's replies (pipelining), so
//! a busy gateway pays one round trip per batch, not per request. For a cluster, the
//! cluster client keeps one such connection per node and routes each call by its
//! keys' hash slot, following MOVED and ASK redirections.

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, RedisResult};
use std::sync::Arc;
use std::time::Duration;

/// Where Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a proxy in front of several), by URL: `redis://host:port/db`.
    Server(String),
    /// The seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisTarget {
    /// URLs may carry a password; it never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Server(url) => write!(f, "Server({})", redacted(url)),
            RedisTarget::Cluster(urls) => f
                .debug_list()
                .entries(urls.iter().map(|u| redacted(u)))
                .finish(),
        }
    }
}

/// `url` with any password replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// A live connection, cheap to clone (clones share the socket).
#[derive(Clone)]
pub(crate) enum Live {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

enum Client {
    Server(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// The connection, made on first use and remade after [`Connection::reset`].
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    timeout: Duration,
    live: ArcSwapOption<Live>,
    /// The connection attempt under way, if any, which every caller waits on.
    attempt: parking_lot::Mutex<Option<Attempt>>,
}

type Attempt = futures_util::future::Shared<BoxFuture<'static, RedisResult<Live>>>;

/// How long a connection attempt may take. Longer than a request's timeout: connecting
/// (for a cluster: a seed node, the slot map, then every node) can take longer than one
/// decision may wait, and the attempt goes on in the background after the requests
/// that started it have given up, so the gateway always gets connected eventually.
fn connect_deadline(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(2))
}

impl Connection {
    /// Checks the target's URLs; connects nothing yet.
    pub(crate) fn new(target: &RedisTarget, timeout: Duration) -> RedisResult<Connection> {
        let client = match target {
            RedisTarget::Server(url) => Client::Server(redis::Client::open(url.as_str())?),
            RedisTarget::Cluster(urls) => Client::Cluster(Box::new(
                redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(connect_deadline(timeout))
                    .response_timeout(timeout)
                    .retries(1)
                    .build()?,
            )),
        };
        Ok(Connection {
            shared: Arc::new(Shared {
                client,
                timeout,
                live: ArcSwapOption::empty(),
                attempt: parking_lot::Mutex::new(None),
            }),
        })
    }

    /// The live connection, waiting for a connection attempt if there is none (one
    /// attempt at a time, shared by every caller). The caller bounds its wait with its
    /// own timeout; the attempt itself runs as a task and is not cut short by that.
    pub(crate) async fn get(&self) -> RedisResult<Live> {
        if let Some(live) = self.shared.live.load_full() {
            return Ok((*live).clone());
        }
        let attempt = {
            let mut slot = self.shared.attempt.lock();
            match &*slot {
                Some(attempt) => attempt.clone(),
                None => {
                    let attempt = start_attempt(self.shared.clone());
                    *slot = Some(attempt.clone());
                    attempt
                }
            }
        };
        attempt.await
    }

    /// Drops the connection, so the next call connects afresh: after a READONLY answer
    /// (the server was demoted to a replica; the name may now lead to the new primary)
    /// or an error the connection cannot recover from by itself.
    pub(crate) fn reset(&self) {
        self.shared.live.store(None);
    }
}

fn start_attempt(shared: Arc<Shared>) -> Attempt {
    let task = tokio::spawn(async move {
        let deadline = connect_deadline(shared.timeout);
        let result = match tokio::time::timeout(deadline, connect(&shared)).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from((
                redis::ErrorKind::Io,
                "connecting to Redis timed out",
            ))),
        };
        if let Ok(live) = &result {
            shared.live.store(Some(Arc::new(live.clone())));
        }
        *shared.attempt.lock() = None;
        result
    });
    async move {
        task.await.unwrap_or_else(|e| {
            Err(RedisError::from((
                redis::ErrorKind::Io,
                "connection attempt failed",
                e.to_string(),
            )))
        })
    }
    .boxed()
    .shared()
}

async fn connect(shared: &Shared) -> RedisResult<Live> {
    Ok(match &shared.client {
        Client::Server(client) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_deadline(shared.timeout)))
                .set_response_timeout(Some(shared.timeout))
                // Reconnection is retried by the next request, paced by the breaker.
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(100));
            Live::Server(ConnectionManager::new_with_config(client.clone(), config).await?)
        }
        Client::Cluster(client) => Live::Cluster(client.get_async_connection().await?),
    })
}

/// Whether an error means the connection should be remade.
pub(crate) fn needs_new_connection(error: &RedisError) -> bool {
    is_read_only(error) || error.is_unrecoverable_error()
}

/// Whether the server refused a write as a read-only replica: Redis 7 answers
/// `READONLY`; older servers wrap it in a script error (`ERR Error running script ...
/// READONLY ...`).
pub(crate) fn is_read_only(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    ) || error.to_string().contains("READONLY")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_output() {
        let t = RedisTarget::Server("redis://app:s3cret@redis.internal:6379/0".into());
        let shown = format!("{t:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis.internal:6379"), "{shown}");
        let c = RedisTarget::Cluster(vec!["redis://:pw@a:7000".into(), "redis://b:7001".into()]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("pw@"), "{shown}");
        assert!(shown.contains("b:7001"), "{shown}");
    }
}
