//! Passing a request to the upstream and its answer back: hop-by-hop headers removed in
//! both directions, `X-Forwarded-For` rewritten, bodies streamed, timeouts enforced.

use super::header_timer::{Deadline, HeaderTimer};
use super::pool::{ConnectError, Keepalive, Lease, Pool};
use super::recent::Recent;
use super::responses::upstream_failure;
use super::tunnel::{self, Offer, Tunnels};
use super::{Body, BodyError};
use crate::metrics::{Metrics, UpstreamError};
use bytes::Bytes;
use futures_util::future::{self, Either, FutureExt};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::body::Incoming;
use ratewarden_core::identity::{ClientAddress, DottedQuad};
use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// One worker's HTTP/1.1 client to the upstream, over its own keep-alive pool.
pub struct Upstream {
    pool: Arc<Pool>,
    base: Uri,
    timeout: Duration,
    /// The worker's coarse timer, for the upstream's answer: `timeout` almost never runs
    /// out, and a slot on its list in place of one of tokio's timers armed and taken out
    /// again saved about 560 instructions per proxied request (callgrind). It fires up
    /// to one tick (100 ms) late. Its `fire_due_forever` must run on the worker's runtime.
    timer: HeaderTimer,
    tunnels: Tunnels,
}

/// Why the upstream gave no response.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream exchange failed: {0}")]
    Exchange(#[from] hyper::Error),
}

/// Header names matched on their text, by length first: most names have none of the
/// listed lengths, and every header of every message is checked. Cheaper than
/// comparing `HeaderName`s one by one.
struct NameList {
    /// Lower case, as `HeaderName`s are, and shorter than 32 bytes.
    names: &'static [&'static str],
    /// The names' lengths, one bit each.
    lengths: u32,
}

impl NameList {
    const fn new(names: &'static [&'static str]) -> NameList {
        let mut lengths = 0;
        let mut i = 0;
        while i < names.len() {
            // A name of 32 bytes or more overflows here: a compile-time error.
            lengths |= 1 << names[i].len();
            i += 1;
        }
        NameList { names, lengths }
    }

    fn contains(&self, name: &str) -> bool {
        self.may_contain(name.len()) && self.names.contains(&name)
    }

    /// [`NameList::contains`] for a token of a list header, in any case.
    fn contains_ignoring_case(&self, token: &[u8]) -> bool {
        self.may_contain(token.len())
            && self
                .names
                .iter()
                .any(|n| token.eq_ignore_ascii_case(n.as_bytes()))
    }

    fn may_contain(&self, length: usize) -> bool {
        length < 32 && self.lengths & (1 << length) != 0
    }
}

/// Headers that belong to one connection, never forwarded: those of RFC 9110 section
/// 7.6.1, and the proxy ones of RFC 2616 section 13.5.1.
const HOP_BY_HOP: NameList = NameList::new(&[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
]);

/// Whether `name` (lower case, as `HeaderName`s are) is hop-by-hop.
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(name)
}

/// A copy of `request` to send again if its connection fails, when sending it twice
/// is harmless: an idempotent method (RFC 9110 section 9.2.2) and no body.
fn replayable_copy(request: &Request<ForwardBody>) -> Option<Request<ForwardBody>> {
    use hyper::body::Body as _;
    if !request.method().is_idempotent() || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(ForwardBody::Replayed {
        head: None,
        rest: None,
    });
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Whether `error` is a connection lost (closed, reset) before a whole response head
/// came back, rather than an answer the upstream got wrong: only then is another try
/// sensible. Once a head has come, the exchange has succeeded and later errors belong
/// to the body.
fn lost_with_the_connection(error: &hyper::Error) -> bool {
    error.is_incomplete_message()
        || error.is_closed()
        || error.is_canceled()
        || std::error::Error::source(error).is_some_and(|e| e.is::<std::io::Error>())
}

/// Headers in which some upstreams and frameworks look for the client's address
/// besides `X-Forwarded-For`. A client can write any address in them: from a peer that
/// is not a trusted proxy none passes, so an upstream that reads one finds nothing
/// rather than a forged address. A trusted proxy (a CDN setting `CF-Connecting-IP`) is
/// trusted with them as with `X-Forwarded-For`.
const CLIENT_ADDRESS_HEADERS: NameList = NameList::new(&[
    "x-real-ip",
    "client-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "forwarded-for",
    "x-original-forwarded-for",
    "x-envoy-external-address",
]);

/// Whether `headers` name a client address in a header that only a trusted proxy may
/// set: `X-Forwarded-For`, `Forwarded`, or one of [`CLIENT_ADDRESS_HEADERS`].
pub(super) fn claims_client_address(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str();
        is_forwarding(name) || CLIENT_ADDRESS_HEADERS.contains(name)
    })
}

/// Whether `name` is `X-Forwarded-For` or `Forwarded`.
fn is_forwarding(name: &str) -> bool {
    name == X_FORWARDED_FOR.as_str() || name == http::header::FORWARDED.as_str()
}

/// Headers of a request that only the gateway may set: who the client is, and the
/// login challenge.
fn is_gateway_only(name: &str) -> bool {
    is_forwarding(name) || name == CHALLENGE.as_str()
}

/// [`is_gateway_only`], and the headers of [`CLIENT_ADDRESS_HEADERS`]: for a request
/// from a peer that is not a trusted proxy.
fn is_gateway_only_or_client_address(name: &str) -> bool {
    is_gateway_only(name) || CLIENT_ADDRESS_HEADERS.contains(name)
}

impl Upstream {
    /// A client for `base` (scheme and authority) whose clients may switch protocols
    /// as `tunnels` allows; `timer` is its worker's.
    pub fn new(
        base: Uri,
        connect_timeout: Duration,
        timeout: Duration,
        keepalive: Keepalive,
        timer: HeaderTimer,
        tunnels: Tunnels,
    ) -> Upstream {
        Upstream {
            pool: Arc::new(Pool::new(base.clone(), connect_timeout, keepalive)),
            base,
            timeout,
            timer,
            tunnels,
        }
    }

    /// Closes idle upstream connections as they expire, until the worker's runtime
    /// stops; to be spawned on that runtime.
    pub fn close_idle_forever(&self) -> impl Future<Output = ()> + 'static {
        self.pool.clone().close_expired_forever()
    }

    /// Sends `request` on a leased connection.
    ///
    /// A pooled connection can fail the moment it is used: the upstream closed it
    /// (idle timeout, restart) while the request was on its way. The request then goes
    /// once more on a new connection when that is safe (nginx's `proxy_next_upstream
    /// error`, but stricter: nginx also repeats request bodies it has buffered):
    /// - it was never sent (hyper gives it back), whatever its method;
    /// - it was sent, but its method is idempotent and it has no body, so the upstream
    ///   acting on it twice does no harm, and the connection was lost before a whole
    ///   response head came back.
    ///
    /// A request on a new connection is not sent twice: that upstream failed for real.
    ///
    /// On a pooled connection the request is handed to hyper at once, before the future
    /// is polled. The future is made of combinators rather than an `async` block, which
    /// would keep room for its values twice (as captured, then as awaited): it is moved
    /// with every request, and each move copies all of it. Connecting and sending again
    /// are boxed for the same reason: they are rare while connections are kept (with
    /// `upstream_keepalive = 0`, every request pays for the box).
    fn exchange<'a>(
        &'a self,
        request: Request<ForwardBody>,
        metrics: &'a Metrics,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease), ExchangeError>> + 'a {
        let Some(mut lease) = self.pool.take_ready() else {
            return Either::Right(Box::pin(self.send_on_new_connection(request)));
        };
        let replay = replayable_copy(&request).map(Box::new);
        let answer = lease.sender().try_send_request(request);
        Either::Left(answer.then(move |answer| match answer {
            Ok(response) => Either::Left(future::ready(Ok((response, lease)))),
            Err(failure) => {
                Either::Right(Box::pin(self.send_again(failure, replay, lease, metrics)))
            }
        }))
    }

    /// After `failure` on the pooled `lease`, the request once more on a new connection
    /// when [`Upstream::exchange`] says that is safe; `replay` is its copy if one was made.
    async fn send_again(
        &self,
        mut failure: hyper::client::conn::TrySendError<Request<ForwardBody>>,
        replay: Option<Box<Request<ForwardBody>>>,
        lease: Lease,
        metrics: &Metrics,
    ) -> Result<(Response<Incoming>, Lease), ExchangeError> {
        let again = match (failure.take_message(), replay) {
            (Some(unsent), _) => unsent,
            (None, Some(copy)) if lost_with_the_connection(failure.error()) => *copy,
            _ => return Err(ExchangeError::Exchange(failure.into_error())),
        };
        tracing::debug!(error = %failure.error(), "pooled upstream connection failed; sending again on a new one");
        drop(lease);
        let lease = self.pool.connect().await?;
        metrics.upstream_retries.inc();
        send_on(lease, again).await
    }

    /// Sends `request` on a new connection, once.
    async fn send_on_new_connection(
        &self,
        request: Request<ForwardBody>,
    ) -> Result<(Response<Incoming>, Lease), ExchangeError> {
        send_on(self.pool.connect().await?, request).await
    }

    /// Forwards `request` from `client` (as identified) and returns the upstream's
    /// answer, or a 502/504 of our own; or, for a WebSocket handshake beyond a tunnel
    /// limit, a 503 without forwarding it.
    pub fn forward<'a>(
        &'a self,
        request: Request<Incoming>,
        client: ClientAddress,
        metrics: &'a Metrics,
    ) -> impl Future<Output = Response<Body>> + 'a {
        self.forward_body(request.map(ForwardBody::Streamed), client, metrics)
    }

    /// [`Upstream::forward`] for a request whose body was partly or wholly read.
    ///
    /// The request is rewritten at once, and on a pooled connection sent at once (see
    /// [`Upstream::exchange`]); the upstream timeout runs from the call. Await the
    /// future straight away.
    pub fn forward_body<'a>(
        &'a self,
        request: Request<ForwardBody>,
        client: ClientAddress,
        metrics: &'a Metrics,
    ) -> impl Future<Output = Response<Body>> + 'a {
        let (request, offer) = self.upstream_request(request, client);
        if let Some(reason) = offer.as_deref().and_then(Offer::refusal) {
            return Either::Left(std::future::ready(tunnel::refused(reason, metrics)));
        }
        // Combinators, not `async`: see `exchange`.
        Either::Right(
            Timeout {
                deadline: self
                    .timer
                    .deadline(hyper::rt::Timer::now(&self.timer) + self.timeout),
                inner: self.exchange(request, metrics),
            }
            .map(move |exchanged| {
                match exchanged {
                    Ok(Ok((response, _lease)))
                        if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        // The upstream connection is the tunnel's now, never pooled again.
                        tunnel::switched(&self.tunnels, offer, response, metrics)
                    }
                    Ok(Ok((response, lease))) => {
                        let (mut parts, body) = response.into_parts();
                        strip_headers(&mut parts.headers, |_| false);
                        let body = UpstreamBody::new(body, lease, self.timeout);
                        Response::from_parts(parts, body.boxed())
                    }
                    Ok(Err(e)) => {
                        metrics
                            .upstream_errors
                            .get_or_create(&UpstreamError { kind: "connect" })
                            .inc();
                        tracing::warn!(error = %e, "upstream request failed");
                        upstream_failure(
                            StatusCode::BAD_GATEWAY,
                            "the upstream could not be reached",
                        )
                    }
                    Err(_) => {
                        metrics
                            .upstream_errors
                            .get_or_create(&UpstreamError { kind: "timeout" })
                            .inc();
                        upstream_failure(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the upstream did not answer in time",
                        )
                    }
                }
            }),
        )
    }

    /// The request as the upstream hears it: origin-form target, HTTP/1.1, hop-by-hop and
    /// gateway-only headers removed, `X-Forwarded-For` (and the login challenge) set;
    /// and the client's wish to switch protocols, when it asks for an allowed one (its
    /// `Upgrade` then goes on, restricted to those). The offer holds the tunnel's place
    /// under the limits until the tunnel takes it or the offer is dropped.
    fn upstream_request(
        &self,
        request: Request<ForwardBody>,
        client: ClientAddress,
    ) -> (Request<ForwardBody>, Option<Box<Offer>>) {
        let (mut parts, body) = request.into_parts();
        let offer = self.tunnels.offer(&mut parts, &body, client.ip);
        let client_authority = parts.uri.authority().cloned();
        // The upstream is sent the origin form (`/path?query`), as a client sends a
        // server. A clone shares the bytes hyper parsed: no copy, no second validation.
        let path_and_query = match parts.uri.path_and_query() {
            Some(p) if p.as_str().starts_with('/') => p.clone(),
            // Absolute form without a path (`GET http://api.test?q HTTP/1.1`).
            Some(p) => http::uri::PathAndQuery::from_maybe_shared(format!("/{}", p.as_str()))
                .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/")),
            None => http::uri::PathAndQuery::from_static("/"),
        };
        parts.uri = Uri::from(path_and_query);
        parts.version = http::Version::HTTP_11;
        // The upstream hears who the client is from us alone; what the client claimed
        // was already weighed (and, from an untrusted peer, ignored). Only the gateway
        // may ask the upstream for a challenge (login protection).
        let gateway_only = if client.via_trusted_proxy {
            is_gateway_only
        } else {
            is_gateway_only_or_client_address
        };
        strip_headers(&mut parts.headers, gateway_only);
        // Through trusted proxies: the chain from the client to our peer (see
        // `VouchedChain`). Else the client, who is our peer.
        let forwarded_for = match parts.extensions.remove::<VouchedChain>() {
            Some(chain) => Some(chain.0),
            None => client_forwarded_for(client.ip),
        };
        if let Some(v) = forwarded_for {
            parts.headers.insert(&X_FORWARDED_FOR, v);
        }
        if let Some(challenge) = parts.extensions.remove::<Challenge>() {
            parts.headers.insert(&CHALLENGE, challenge.0);
        }
        if self.pool.keeps_none() {
            // No connection is kept: the upstream should not keep it either.
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(offer) = &offer {
            offer.apply(&mut parts.headers);
        }
        if !parts.headers.contains_key(http::header::HOST) {
            // HTTP/2 names the host in :authority: the upstream hears the same host the
            // rules saw (the handler refused requests without one).
            if let Some(authority) = client_authority.as_ref().or(self.base.authority()) {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(http::header::HOST, v);
                }
            }
        }
        (Request::from_parts(parts, body), offer)
    }
}

pin_project_lite::pin_project! {
    /// `inner`, unless `deadline` comes first (`Err(TimedOut)`).
    struct Timeout<F> {
        #[pin]
        inner: F,
        deadline: Deadline,
    }
}

/// The upstream gave no answer in time.
struct TimedOut;

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.inner.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if this.deadline.poll_due(cx) {
            Poll::Ready(Err(TimedOut))
        } else {
            Poll::Pending
        }
    }
}

/// Sends `request` on `lease`, once.
async fn send_on(
    mut lease: Lease,
    request: Request<ForwardBody>,
) -> Result<(Response<Incoming>, Lease), ExchangeError> {
    match lease.sender().send_request(request).await {
        Ok(response) => Ok((response, lease)),
        Err(e) => Err(ExchangeError::Exchange(e)),
    }
}

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The header that tells the upstream to challenge a login (CAPTCHA, second factor).
pub static CHALLENGE: HeaderName = HeaderName::from_static("x-ratewarden-challenge");

/// The `X-Forwarded-For` value that names `hops`, in order (`client, proxy1, peer`),
/// written on the stack and copied once into a block of its length.
pub(super) fn forwarded_for(hops: &[IpAddr]) -> Option<HeaderValue> {
    let mut text = smallvec::SmallVec::<[u8; 64]>::new();
    for (i, hop) in hops.iter().enumerate() {
        if i > 0 {
            text.extend_from_slice(b", ");
        }
        match hop {
            IpAddr::V4(v4) => text.extend_from_slice(DottedQuad::new(*v4).as_str().as_bytes()),
            IpAddr::V6(v6) => {
                use std::io::Write;
                // Writing into a vector cannot fail.
                let _ = write!(text, "{v6}");
            }
        }
    }
    HeaderValue::from_bytes(&text).ok()
}

/// The `X-Forwarded-For` value that names `client` alone, for a request straight from
/// it. A connection's requests all come from one client, so each thread keeps the values
/// of the last few clients and gives one again by reference, where a new one is a block
/// rendered and copied per request.
fn client_forwarded_for(client: IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static RENDERED: RefCell<Recent<IpAddr, Option<HeaderValue>, 8>> =
            const { RefCell::new(Recent::new()) };
    }
    RENDERED.with_borrow_mut(|rendered| {
        rendered.get_or_render(
            |kept| *kept == client,
            || (client, forwarded_for(&[client])),
        )
    })
}

/// A request extension, on requests that came through trusted proxies: the
/// `X-Forwarded-For` the upstream should get. It is what the proxies vouch for, with our
/// peer appended (`client, proxy1, proxy2`): the entries left of the identified client
/// are dropped, so an upstream that reads the leftmost entry, or counts its proxies
/// from the right, finds the client the rules saw.
#[derive(Clone, Debug)]
pub struct VouchedChain(pub HeaderValue);

/// A request extension: the value of [`CHALLENGE`] the upstream should get. Whatever
/// the client sent in that header is always removed first.
#[derive(Clone, Debug)]
pub struct Challenge(pub HeaderValue);

/// A request body on its way to the upstream: as it comes from the client, or the part
/// the gateway already read (to find a login's account) followed by the rest.
pub enum ForwardBody {
    /// Streamed through untouched.
    Streamed(Incoming),
    /// Bytes already read, then whatever the client still sends (`None`: it sent all).
    Replayed {
        /// What was read.
        head: Option<Bytes>,
        /// The rest of the client's body.
        rest: Option<Incoming>,
    },
}

impl hyper::body::Body for ForwardBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ForwardBody::Streamed(body) => Pin::new(body).poll_frame(cx),
            ForwardBody::Replayed { head, rest } => {
                if let Some(bytes) = head.take() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                match rest {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ForwardBody::Streamed(body) => body.is_end_stream(),
            ForwardBody::Replayed { head, rest } => {
                head.is_none() && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ForwardBody::Streamed(body) => body.size_hint(),
            ForwardBody::Replayed { head, rest } => {
                let read = head.as_ref().map_or(0, |h| h.len() as u64);
                let rest = rest
                    .as_ref()
                    .map_or_else(|| hyper::body::SizeHint::with_exact(0), |r| r.size_hint());
                // Upper first: set_lower panics above the upper bound.
                let mut hint = hyper::body::SizeHint::new();
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint.set_lower(rest.lower().saturating_add(read));
                hint
            }
        }
    }
}

/// The upstream's response body, on its way to the client.
///
/// Cut off when no data comes for `idle` (nginx's `proxy_read_timeout`): an upstream
/// that sends its headers and then stalls would otherwise hold the client's request,
/// and a connection, forever. The error aborts the client's response, so a truncated
/// body is never taken for a complete one.
///
/// Once the body has ended, its connection goes back to the worker's pool; a body
/// dropped before its end takes the connection with it.
struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
    idle: Duration,
    /// Armed when the upstream first keeps us waiting: most bodies arrive with their
    /// headers and never need a timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Data came since the deadline was armed: it starts again from the next wait.
    deadline_stale: bool,
}

impl UpstreamBody {
    fn new(inner: Incoming, lease: Lease, idle: Duration) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner,
            lease: Some(lease),
            idle,
            deadline: None,
            deadline_stale: false,
        };
        body.release_if_ended();
        body
    }

    fn release_if_ended(&mut self) {
        if hyper::body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }

    /// Hands the connection back (once: the lease goes with it).
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline_stale = true;
                match &frame {
                    None => this.release(),
                    Some(Ok(_)) => this.release_if_ended(),
                    // A failed body leaves the connection in an unknown state.
                    Some(Err(_)) => this.lease = None,
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let next = || tokio::time::Instant::now() + this.idle;
                let deadline = match &mut this.deadline {
                    Some(deadline) => {
                        if this.deadline_stale {
                            deadline.as_mut().reset(next());
                        }
                        deadline
                    }
                    None => this
                        .deadline
                        .insert(Box::pin(tokio::time::sleep_until(next()))),
                };
                this.deadline_stale = false;
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::warn!(idle = ?this.idle, "upstream response body stalled; aborting it");
                        this.lease = None;
                        Poll::Ready(Some(Err(format!(
                            "the upstream sent nothing for {:?} in the middle of its response",
                            this.idle
                        )
                        .into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Removes hop-by-hop headers, those the `Connection` header names, and those `also`
/// picks.
///
/// One pass over the names present decides what goes; only those are removed. Removing
/// an absent name still hashes it and probes the map, and a proxied request went through
/// a dozen such removals (a custom name like `keep-alive`, parsed from `Connection`,
/// also cost an allocation), about 4% of its instructions.
pub(super) fn strip_headers(headers: &mut HeaderMap, also: fn(&str) -> bool) {
    let mut doomed: smallvec::SmallVec<[HeaderName; 4]> = smallvec::SmallVec::new();
    let mut connection = false;
    for name in headers.keys() {
        if *name == CONNECTION {
            connection = true;
        } else if is_hop_by_hop(name.as_str()) || also(name.as_str()) {
            doomed.push(name.clone());
        }
    }
    if connection {
        names_listed_in_connection(headers, &mut doomed);
        headers.remove(CONNECTION);
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Adds to `doomed` the headers present that `Connection` lists, besides the hop-by-hop
/// ones and `Host`.
fn names_listed_in_connection(
    headers: &HeaderMap,
    doomed: &mut smallvec::SmallVec<[HeaderName; 4]>,
) {
    let values = headers.get_all(CONNECTION);
    // Most messages say only `keep-alive` (hop-by-hop anyway) or `close` (an option, not
    // a header to remove): nothing to parse.
    if values
        .iter()
        .all(|v| is_hop_by_hop_token(v.as_bytes()) || v.as_bytes().eq_ignore_ascii_case(b"close"))
    {
        return;
    }
    let named: smallvec::SmallVec<[&str; 4]> = list_items(values)
        .filter(|t| {
            !is_hop_by_hop_token(t.as_bytes())
                && !doomed.iter().any(|d| t.eq_ignore_ascii_case(d.as_str()))
        })
        .collect();
    if named.is_empty() {
        return;
    }
    // `Connection: host` must not take away the Host the rules matched on.
    let more: smallvec::SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| {
            **name != http::header::HOST
                && named.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
        })
        .cloned()
        .collect();
    doomed.extend(more);
}

/// The items of a comma-separated list header (`Connection`, `Upgrade`) across all its
/// lines, trimmed, empty ones skipped; lines that are not text are skipped.
pub(super) fn list_items<'a>(
    values: http::header::GetAll<'a, HeaderValue>,
) -> impl Iterator<Item = &'a str> {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether `token`, in any case, names a hop-by-hop header.
fn is_hop_by_hop_token(token: &[u8]) -> bool {
    HOP_BY_HOP.contains_ignoring_case(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    const MESSAGE: &[(&str, &str)] = &[
        ("host", "api.test"),
        ("connection", "Keep-Alive, X-Hop ,close"),
        ("connection", "HOST"),
        ("keep-alive", "timeout=5"),
        ("x-hop", "1"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
        ("x-ratewarden-challenge", "captcha"),
        ("x-kept", "yes"),
    ];

    #[test]
    fn a_request_loses_hop_by_hop_named_and_gateway_only_headers_but_not_host() {
        let mut request = headers(MESSAGE);
        strip_headers(&mut request, is_gateway_only);
        assert_eq!(names(&request), ["host", "x-kept"]);
    }

    #[test]
    fn client_address_headers_go_unless_a_trusted_proxy_sent_them() {
        let mut message: Vec<(&str, &str)> = MESSAGE.to_vec();
        message.extend(
            CLIENT_ADDRESS_HEADERS
                .names
                .iter()
                .map(|name| (*name, "198.51.100.7")),
        );
        // Names of the same lengths that must stay.
        message.extend([
            ("x-real-iq", "1"),
            ("forwarded-fox", "1"),
            ("x-kept-too", "1"),
        ]);
        let mut untrusted = headers(&message);
        strip_headers(&mut untrusted, is_gateway_only_or_client_address);
        assert_eq!(
            names(&untrusted),
            ["forwarded-fox", "host", "x-kept", "x-kept-too", "x-real-iq"]
        );
        let mut trusted = headers(&message);
        strip_headers(&mut trusted, is_gateway_only);
        for name in CLIENT_ADDRESS_HEADERS.names {
            assert!(trusted.contains_key(*name), "{name}");
        }
    }

    #[test]
    fn a_response_loses_hop_by_hop_and_named_headers_only() {
        let mut response = headers(MESSAGE);
        strip_headers(&mut response, |_| false);
        assert_eq!(
            names(&response),
            [
                "forwarded",
                "host",
                "x-forwarded-for",
                "x-kept",
                "x-ratewarden-challenge"
            ]
        );
    }

    #[test]
    fn connection_saying_only_keep_alive_or_close_names_nothing_more() {
        for value in ["keep-alive", "Keep-Alive", "close", "CLOSE"] {
            let mut response = headers(&[
                ("connection", value),
                ("keep-alive", "timeout=5"),
                ("x-kept", "yes"),
            ]);
            strip_headers(&mut response, |_| false);
            assert_eq!(names(&response), ["x-kept"], "Connection: {value}");
        }
    }

    #[test]
    fn hop_by_hop_names_are_told_by_length_and_text() {
        for name in HOP_BY_HOP.names {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "t",
            "tf",
            "tes",
            "upgradx",
            "keep-alivf",
            "trailes",
            "trailers",
            "x-upgrade",
            "connectio",
            "proxy-connections",
            "",
            "x-very-long-header-name-indeed-over-32",
        ] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_tokens_are_told_in_any_case() {
        for token in ["keep-alive", "KEEP-ALIVE", "Connection", "te", "Upgrade"] {
            assert!(is_hop_by_hop_token(token.as_bytes()), "{token}");
        }
        for token in ["keep-alivf", "close", "x-hop", "", "tes"] {
            assert!(!is_hop_by_hop_token(token.as_bytes()), "{token}");
        }
    }

    #[test]
    fn x_forwarded_for_names_every_hop_in_its_shortest_text() {
        let v4: IpAddr = "203.0.113.9".parse().expect("v4");
        let longest_v6: IpAddr = "1111:2222:3333:4444:5555:6666:7777:8888"
            .parse()
            .expect("v6");
        let mapped: IpAddr = "::ffff:255.255.255.255".parse().expect("mapped");
        assert_eq!(
            forwarded_for(&[v4, longest_v6, mapped]).expect("a value"),
            "203.0.113.9, 1111:2222:3333:4444:5555:6666:7777:8888, ::ffff:255.255.255.255"
        );
        assert_eq!(forwarded_for(&[]).expect("a value"), "");
    }

    #[test]
    fn a_kept_x_forwarded_for_is_given_only_to_its_client() {
        // More clients than are kept, in turns: each is always named right.
        let clients: Vec<IpAddr> = (1..=20_u8)
            .map(|i| IpAddr::from([198, 51, 100, i]))
            .chain(["2001:db8::1".parse().expect("v6")])
            .collect();
        for round in 0..3 {
            for client in clients.iter().chain(clients.iter().rev()) {
                assert_eq!(
                    client_forwarded_for(*client).expect("a value"),
                    client.to_string().as_str(),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn without_connection_nothing_else_is_named() {
        let mut response = headers(&[("x-hop", "1"), ("proxy-connection", "keep-alive")]);
        strip_headers(&mut response, |_| false);
        assert_eq!(names(&response), ["x-hop"]);
    }
}
