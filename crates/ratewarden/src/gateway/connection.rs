//! One client connection from accept to close, held to the deadlines hyper leaves to
//! us:
//!
//! - Its first request head must come within `header_timeout` of the connection, or it
//!   is dropped. hyper's own header deadline starts only once it has told HTTP/1 from
//!   HTTP/2, and telling them apart waits without a deadline for the first bytes and
//!   for the whole 24-byte HTTP/2 preface: a client that connects and sends nothing, or
//!   `PRI * HTTP/2.0` and nothing more, would hold its place under the connection cap
//!   forever.
//! - An HTTP/2 connection that starts no request for `header_timeout`, with none
//!   waiting for its response head, is shut down gracefully (GOAWAY; streams still
//!   sending finish). hyper keeps an idle HTTP/2 connection open as long as its client
//!   answers pings, so a client could hold places under the cap with one cheap request
//!   each. An idle HTTP/1.1 keep-alive connection is already closed by hyper's header
//!   deadline.
//! - When the gateway stops, every connection is asked to finish (GOAWAY, or close
//!   after the response in flight).
//!
//! The deadlines are looked at on the connection's own polls: one load each, and the
//! service counts requests with plain loads and stores (one thread serves a
//! connection).

use super::header_timer::{Deadline, HeaderTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// What a connection's service tells the connection about its requests.
#[derive(Default)]
pub struct Activity {
    /// Requests whose head has come.
    started: AtomicU64,
    /// Requests waiting for their response head.
    waiting: AtomicU64,
    /// The connection speaks HTTP/2.
    http2: AtomicBool,
}

impl Activity {
    /// A request's head has come; the returned guard counts it as waiting for its
    /// response head until dropped.
    pub fn started(self: &Arc<Self>, version: http::Version) -> Waiting {
        // Only the connection's own thread writes these: no read-modify-write needed.
        self.started
            .store(self.started.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.waiting
            .store(self.waiting.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if version == http::Version::HTTP_2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        Waiting {
            activity: self.clone(),
        }
    }
}

/// A request counted as waiting for its response head.
pub struct Waiting {
    activity: Arc<Activity>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let waiting = &self.activity.waiting;
        waiting.store(
            waiting.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }
}

/// A connection being served, under the deadlines above. Its output is the
/// connection's, or `None` when it was dropped for sending no request head in time.
pub struct Served<C, F> {
    connection: Pin<Box<C>>,
    /// Starts the connection's graceful shutdown.
    shut_down: F,
    /// Completes when the gateway stops.
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
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
        stopping: WaitForCancellationFutureOwned,
        activity: Arc<Activity>,
        timer: HeaderTimer,
        accepted: Instant,
        timeout: Duration,
    ) -> Self {
        Served {
            connection: Box::pin(connection),
            shut_down,
            stopping: Box::pin(stopping),
            activity,
            deadline: Some(timer.deadline(accepted + timeout)),
            timer,
            timeout,
            seen: 0,
            closing: false,
        }
    }

    fn close(&mut self) {
        (self.shut_down)(self.connection.as_mut());
        self.closing = true;
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
            if this.closing {
                return Poll::Pending;
            }
            if this.stopping.as_mut().poll(cx).is_ready() {
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
            if started == 0 {
                // No request head within the timeout.
                return Poll::Ready(None);
            }
            if !activity.http2.load(Ordering::Relaxed) {
                this.deadline = None;
                return Poll::Pending;
            }
            if started == this.seen && activity.waiting.load(Ordering::Relaxed) == 0 {
                this.close();
                continue;
            }
            this.seen = started;
            let now = hyper::rt::Timer::now(&this.timer);
            this.deadline = Some(this.timer.deadline(now + this.timeout));
        }
    }
}
