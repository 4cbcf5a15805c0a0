//! The keep-alive connections one worker holds to the upstream, as nginx's `keepalive`
//! does per worker: a connection is leased for one exchange, and handed back once the
//! upstream's response body has ended.
//!
//! Each worker runs on its own thread with its own pool, so a lease is a pop and a push
//! on an uncontended lock: no connection key to hash, no waiter queue, no cross-thread
//! hand-off, which hyper-util's general-purpose pool spent more on than the rest of the
//! forwarding. Idle connections are used newest first and dropped once idle longer
//! than `IDLE_TIMEOUT`, or found closed by the upstream.

use super::forward::ForwardBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long an idle connection is kept (nginx's upstream `keepalive_timeout` is 60 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most idle connections a worker keeps; more are closed when handed back.
const MAX_IDLE: usize = 256;

/// One worker's connections to the upstream.
pub struct Pool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
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
    /// Was idle in the pool: the upstream may have closed it just as it was taken.
    pub reused: bool,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Connecting took longer than `upstream_connect_timeout`.
    #[error("connecting to the upstream timed out after {0:?}")]
    Timeout(Duration),
    /// The upstream refused, or could not be resolved or reached.
    #[error("cannot connect to the upstream: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP handshake with the upstream failed: {0}")]
    Handshake(#[from] hyper::Error),
}

impl Pool {
    /// A pool for the upstream at `authority` (`host:port`, or `[v6]:port`).
    pub fn new(authority: &http::uri::Authority, connect_timeout: Duration) -> Pool {
        // An IPv6 literal is bracketed in a URL, not in a socket address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Pool {
            host,
            port: authority.port_u16().unwrap_or(80),
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A connection ready for a request: the newest idle one still open, else a new one.
    pub async fn lease(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        while let Some(idle) = self.take_idle() {
            if idle.since.elapsed() > IDLE_TIMEOUT || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            // Ready at once, unless the connection is still finishing the exchange it
            // was handed back after; an error means the upstream closed it meanwhile.
            if sender.ready().await.is_ok() {
                return Ok(Lease {
                    sender,
                    pool: self.clone(),
                    reused: true,
                });
            }
        }
        self.connect().await
    }

    /// A new connection, bypassing the idle ones.
    pub async fn connect(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        let connecting = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))??;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        // The connection runs on this worker's runtime, beside the requests it serves;
        // it ends when the upstream closes it or when its last sender is dropped.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Lease {
            sender,
            pool: self.clone(),
            reused: false,
        })
    }

    fn take_idle(&self) -> Option<Idle> {
        self.idle.lock().pop()
    }

    fn put_idle(&self, sender: SendRequest<ForwardBody>) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

impl Lease {
    /// The connection, to send one request on.
    pub fn sender(&mut self) -> &mut SendRequest<ForwardBody> {
        &mut self.sender
    }

    /// Hands the connection back for the next request.
    pub fn release(self) {
        if !self.sender.is_closed() {
            self.pool.put_idle(self.sender);
        }
    }
}
