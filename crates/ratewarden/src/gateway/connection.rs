//! One client connection from accept to close, held to the deadlines hyper leaves to
//! us:
//!
//! - Its first request head must come within `header_timeout` of the connection, or it
//!   is dropped. hyper's own header deadline starts only once it has told HTTP/1 from
//!   HTTP/2, and telling them apart waits without a deadline for the first bytes and
//!   for the whole 24-byte HTTP/2 preface: a client that connects and sends nothing, or
//!   `PRI * HTTP/2.0` and nothing more, would hold its place under the connection cap
//!   forever.
//! - An HTTP/2 connection that starts no request for `header_timeout`, with no
//!   response still being sent, is shut down gracefully (GOAWAY), within one to two
//!   `header_timeout`s of its last request. hyper keeps an idle HTTP/2 connection open
//!   as long as its client answers pings, so a client could hold places under the
//!   connection cap with one cheap request each. An idle HTTP/1.1 keep-alive connection
//!   is already closed by hyper's header deadline.
//! - When the gateway stops, every connection is asked to finish (GOAWAY, or close
//!   after the response in flight).
//! - An HTTP/2 connection asked to finish that is still open `header_timeout` later,
//!   with no response being sent, is dropped: h2's graceful shutdown waits for the
//!   client to acknowledge a ping, which a client can simply not do.
//!
//! The client's socket ([`Socket`]) holds the connection's place under the connection
//! cap, so that the place goes with it when the connection becomes a tunnel.
//!
//! A connection's deadline and its worker's stop signal are each looked at with one
//! load per poll. The service counts requests with plain loads and stores: every
//! request of a connection is served on its worker's one thread.

use super::header_timer::{Deadline, HeaderTimer};
use super::{Body, BodyError};
use http::Response;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What a connection's service tells the connection about its requests.
#[derive(Default)]
pub struct Activity {
    /// Requests whose head has come.
    started: AtomicU64,
    /// HTTP/2 requests not yet answered: waiting for their response head, or still
    /// sending its body. (Only HTTP/2's deadlines need it.)
    open: AtomicU64,
    /// The connection speaks HTTP/2.
    http2: AtomicBool,
}

impl Activity {
    /// A request's head has come. On HTTP/2, the returned guard counts it as open until
    /// it is dropped or its response has been sent ([`Open::until_sent`]); HTTP/1
    /// requests are only counted as started, with no reference count written.
    pub fn started(self: &Arc<Self>, version: http::Version) -> Option<Open> {
        // Only the worker's thread writes these: no read-modify-write needed.
        self.started
            .store(self.started.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if version != http::Version::HTTP_2 {
            return None;
        }
        if !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.open
            .store(self.open.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Some(Open {
            activity: self.clone(),
        })
    }
}

/// An HTTP/2 request counted as open.
pub struct Open {
    activity: Arc<Activity>,
}

impl Open {
    /// `response`, its request counted as open until its body has been sent.
    pub fn until_sent(self, response: Response<Body>) -> Response<Body> {
        response.map(|body| Body::new(Sending { body, _open: self }))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let open = &self.activity.open;
        open.store(
            open.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }
}

/// A response body that keeps its request counted as open until it ends or is dropped.
struct Sending {
    body: Body,
    _open: Open,
}

impl hyper::body::Body for Sending {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection being served, under the deadlines above. Its output is the
/// connection's, or `None` when it was dropped: no request head in time, or an HTTP/2
/// connection asked to finish that did not.
pub struct Served<C, F> {
    connection: Pin<Box<C>>,
    /// Starts the connection's graceful shutdown.
    shut_down: F,
    /// Fires when the gateway stops.
    stopping: Deadline,
    activity: Arc<Activity>,
    timer: HeaderTimer,
    timeout: Duration,
    /// `None` once an HTTP/1 connection has had its first request: hyper's header
    /// deadline takes over from there.
    deadline: Option<Deadline>,
    /// Requests started when the deadline was last looked at.
    seen: u64,
    closing: bool,
}

impl<C: Future, F: FnMut(Pin<&mut C>) + Unpin> Served<C, F> {
    /// `connection`, accepted at `accepted`, whose service reports to `activity`;
    /// `shut_down` starts its graceful shutdown.
    pub fn new(
        connection: C,
        shut_down: F,
        stopping: Deadline,
        activity: Arc<Activity>,
        timer: HeaderTimer,
        accepted: Instant,
        timeout: Duration,
    ) -> Self {
        Served {
            connection: Box::pin(connection),
            shut_down,
            stopping,
            activity,
            deadline: Some(timer.deadline(accepted + timeout)),
            timer,
            timeout,
            seen: 0,
            closing: false,
        }
    }

    /// Starts the graceful shutdown. An HTTP/2 connection is held to a deadline from
    /// here (see the module's doc); an HTTP/1 one finishes its response in flight, in
    /// the time the drain allows.
    fn close(&mut self) {
        (self.shut_down)(self.connection.as_mut());
        self.closing = true;
        if self.activity.http2.load(Ordering::Relaxed) {
            self.rearm();
        } else {
            self.deadline = None;
        }
    }

    /// The next look at the connection, `timeout` from now.
    fn rearm(&mut self) {
        let now = hyper::rt::Timer::now(&self.timer);
        self.deadline = Some(self.timer.deadline(now + self.timeout));
    }
}

impl<C: Future, F: FnMut(Pin<&mut C>) + Unpin> Future for Served<C, F> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Poll::Ready(output) = this.connection.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            if !this.closing && this.stopping.poll_due(cx) {
                this.close();
                continue;
            }
            let Some(deadline) = this.deadline.as_mut() else {
                return Poll::Pending;
            };
            if !deadline.poll_due(cx) {
                return Poll::Pending;
            }
            let activity = &this.activity;
            let started = activity.started.load(Ordering::Relaxed);
            let open = activity.open.load(Ordering::Relaxed);
            if this.closing {
                if open == 0 {
                    // Asked to finish a while ago, nothing left to send, still open.
                    return Poll::Ready(None);
                }
                this.rearm();
                continue;
            }
            if started == 0 {
                // No request head within the timeout.
                return Poll::Ready(None);
            }
            if !activity.http2.load(Ordering::Relaxed) {
                this.deadline = None;
                return Poll::Pending;
            }
            if started == this.seen && open == 0 {
                this.close();
                continue;
            }
            this.seen = started;
            this.rearm();
        }
    }
}

/// A client's socket, holding the connection's place under `max_connections` (and in
/// `open_connections`) for as long as it is open. hyper hands the socket to a tunnel
/// when the connection switches protocols (WebSocket), and the place goes with it: a
/// tunnel counts as the connection it was.
pub struct Socket {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Socket {
    /// `stream`, holding `permit`, counted in `open` until dropped.
    pub fn new(
        stream: tokio::net::TcpStream,
        permit: tokio::sync::OwnedSemaphorePermit,
        open: &prometheus_client::metrics::gauge::Gauge,
    ) -> Socket {
        open.inc();
        Socket {
            stream,
            _permit: permit,
            open: open.clone(),
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl tokio::io::AsyncRead for Socket {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Socket {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
