//! The keep-alive connections one worker holds to the upstream, as nginx's `keepalive`
//! does per worker: a connection is leased for one exchange, and handed back once the
//! upstream's response body has ended.
//!
//! Each worker runs on its own thread with its own pool, so a lease is a pop and a push
//! on an uncontended lock: no connection key to hash, no waiter queue, no cross-thread
//! hand-off, which hyper-util's general-purpose pool spent more on than the rest of the
//! forwarding. Idle connections are used newest first, never used once idle longer
//! than `[server] upstream_keepalive_timeout` and closed soon after (within half that
//! time), and dropped when found closed by the upstream.
//!
//! A connection goes back only once it can take the next request at once: an upstream
//! may answer before it has read the whole request body, and until the client has sent
//! that body the connection stays busy. Pooled before then, it would hold up whichever
//! request took it next.

use super::forward::ForwardBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

/// How many idle connections a worker keeps, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    /// The most idle connections; more are closed when handed back.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
}

/// One worker's connections to the upstream.
pub struct Pool {
    /// The upstream's scheme and authority.
    base: http::Uri,
    /// hyper-util's connector: name resolution, then each address in turn under
    /// `connect_timeout`, IPv6 and IPv4 raced (happy eyeballs), `TCP_NODELAY`.
    connector: HttpConnector,
    /// Oldest first.
    idle: Mutex<Vec<Idle>>,
    keepalive: Keepalive,
}

struct Idle {
    sender: SendRequest<ForwardBody>,
    since: Instant,
}

/// A connection leased for one exchange. Handed back with [`Lease::release`] once the
/// response has been read to its end; dropped otherwise, which closes it (a response
/// left half-read cannot be followed by another on the same connection).
pub struct Lease {
    sender: SendRequest<ForwardBody>,
    pool: Arc<Pool>,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The upstream could not be resolved, reached in `upstream_connect_timeout`, or
    /// refused.
    #[error("cannot connect to the upstream: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP handshake with the upstream failed: {0}")]
    Handshake(#[from] hyper::Error),
}

impl Pool {
    /// A pool for the upstream at `base` (scheme and authority).
    pub fn new(base: http::Uri, connect_timeout: Duration, keepalive: Keepalive) -> Pool {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        Pool {
            base,
            connector,
            idle: Mutex::new(Vec::new()),
            keepalive,
        }
    }

    /// The newest idle connection still open; `None` if there is none (the caller then
    /// uses [`Pool::connect`]).
    pub fn take_ready(self: &Arc<Self>) -> Option<Lease> {
        while let Some(idle) = self.take_idle() {
            // Pooled only when ready: not ready now means closed or closing.
            if idle.since.elapsed() > self.keepalive.idle_timeout || !idle.sender.is_ready() {
                continue;
            }
            return Some(Lease {
                sender: idle.sender,
                pool: self.clone(),
            });
        }
        None
    }

    /// A new connection, bypassing the idle ones.
    pub async fn connect(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        let stream = self
            .connector
            .clone()
            .call(self.base.clone())
            .await
            .map_err(|e| ConnectError::Connect(e.into()))?;
        let (sender, connection) = http1::Builder::new().handshake(stream).await?;
        // The connection runs on this worker's runtime, beside the requests it serves;
        // it ends when the upstream closes it, when its last sender is dropped, or when
        // it switches protocols (a WebSocket handshake) and is handed to a tunnel.
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Lease {
            sender,
            pool: self.clone(),
        })
    }

    fn take_idle(&self) -> Option<Idle> {
        self.idle.lock().pop()
    }

    fn put_idle(&self, sender: SendRequest<ForwardBody>) {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        self.close_expired(&mut idle, now);
        if idle.len() < self.keepalive.max_idle {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Whether no connection is kept (`upstream_keepalive = 0`).
    pub fn keeps_none(&self) -> bool {
        self.keepalive.max_idle == 0
    }

    /// Every half keep-alive timeout (100 ms at least), closes the expired connections;
    /// runs on the worker's runtime until it stops. Returns at once if none is kept.
    pub async fn close_expired_forever(self: Arc<Self>) {
        if self.keeps_none() {
            return;
        }
        let period = (self.keepalive.idle_timeout / 2).max(Duration::from_millis(100));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.close_expired(&mut self.idle.lock(), Instant::now());
        }
    }

    /// Closes the connections idle longer than the keep-alive timeout. Run as connections
    /// come back and by [`Pool::close_expired_forever`], so that none stays open long
    /// after traffic stops (an upstream without an idle timeout would keep them all).
    fn close_expired(&self, idle: &mut Vec<Idle>, now: Instant) {
        // Oldest first: those idle too long are a prefix, and when the oldest is not one
        // (nearly every time a connection comes back) there is none.
        let timeout = self.keepalive.idle_timeout;
        let expired = |i: &Idle| now.duration_since(i.since) > timeout;
        if !idle.first().is_some_and(expired) {
            return;
        }
        let expired = idle.partition_point(expired);
        idle.drain(..expired);
    }
}

impl Lease {
    /// The connection, to send one request on.
    pub fn sender(&mut self) -> &mut SendRequest<ForwardBody> {
        &mut self.sender
    }

    /// Hands the connection back for the next request, once it can take one: at once
    /// when the exchange is over both ways (the usual case), else when the client has
    /// finished sending the request body the upstream answered early; a connection that
    /// does not get there within the keep-alive timeout, or closes, is dropped.
    pub fn release(self) {
        let Lease { mut sender, pool } = self;
        if pool.keeps_none() {
            return;
        }
        if sender.is_ready() {
            pool.put_idle(sender);
        } else if !sender.is_closed() {
            tokio::spawn(async move {
                let timeout = pool.keepalive.idle_timeout;
                if let Ok(Ok(())) = tokio::time::timeout(timeout, sender.ready()).await {
                    pool.put_idle(sender);
                }
            });
        }
    }
}
