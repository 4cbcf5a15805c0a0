//! HTTP/1.1 protocol upgrades through the gateway (WebSocket).
//!
//! The client's handshake is a request like any other: identified, limited, forwarded.
//! When the upstream answers `101 Switching Protocols`, the client's connection and the
//! upstream's are joined, and bytes are copied both ways until either side closes, the
//! tunnel carries nothing either way for `tunnel_idle_timeout` (nginx's
//! `proxy_read_timeout` on a WebSocket), or the gateway stops. As with nginx and
//! Envoy, each handshake is limited and what travels inside the tunnel is not.
//!
//! Only the protocols of `[server] upgrades` pass (`websocket` by default); any other
//! `Upgrade` is removed like a hop-by-hop header and the request goes on as plain HTTP,
//! and so is a handshake with a body. Protocols that carry HTTP (`h2c`, `TLS/1.0`...)
//! are refused by the config: a connection switched to HTTP/2 behind the gateway would
//! carry every later request past the rules (h2c smuggling). An upstream that switches
//! unasked, or to a protocol it was not offered, gets its client a 502.
//!
//! A tunnel keeps its client connection's place under `max_connections` until it
//! closes: the place belongs to the client's socket (`super::connection::Socket`),
//! which hyper hands over to the tunnel. A handshake buys a long-lived connection, so
//! tunnels have limits of their own besides: `max_tunnels` in all and
//! `max_tunnels_per_client` per client network. A handshake takes its place before it
//! is forwarded and gives it back if the upstream does not switch; one beyond either
//! limit is answered 503 and never reaches the upstream, which would otherwise open a
//! session (and spend its own resources) for a tunnel the gateway then refuses. So the
//! limits count handshakes in flight (each for at most `upstream_timeout`) with the
//! open tunnels, and a request that asks to switch is refused when they are full even
//! if its endpoint would not have switched.

use super::forward::{list_items, strip_headers};
use super::responses::upstream_failure;
use super::Body;
use crate::metrics::{Metrics, Refusal, UpstreamError};
use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The protocols clients may switch to (`[server] upgrades`).
#[derive(Clone, Debug)]
pub struct Upgrades(Arc<[String]>);

/// How many tunnels may be open: in all (every worker's), and per client network
/// (nginx's `limit_conn`, for the long-lived connections a handshake buys). Shared by
/// every worker.
#[derive(Clone)]
pub struct TunnelLimits {
    /// One permit per open tunnel (`[server] max_tunnels`).
    total: Arc<tokio::sync::Semaphore>,
    /// Open tunnels per client network; networks with none are removed.
    per_client: Arc<parking_lot::Mutex<std::collections::HashMap<ipnet::IpNet, u32>>>,
    /// `[server] max_tunnels_per_client`.
    most_per_client: u32,
    /// IPv6 clients are counted by network of this prefix, as the rules count them: set
    /// again on reload. A place keeps the network it was taken under, so places taken
    /// before a change are given back where they were counted.
    ipv6_prefix: Arc<std::sync::atomic::AtomicU8>,
}

impl TunnelLimits {
    /// At most `total` tunnels open, and `per_client` per client network.
    pub fn new(total: usize, per_client: u32, ipv6_prefix: u8) -> TunnelLimits {
        TunnelLimits {
            total: Arc::new(tokio::sync::Semaphore::new(total)),
            per_client: Arc::default(),
            most_per_client: per_client,
            ipv6_prefix: Arc::new(std::sync::atomic::AtomicU8::new(ipv6_prefix)),
        }
    }

    /// Counts IPv6 clients by networks of `prefix` from now on (a reloaded
    /// `[clients] ipv6_prefix`).
    pub fn set_ipv6_prefix(&self, prefix: u8) {
        self.ipv6_prefix.store(prefix, Ordering::Relaxed);
    }

    /// A place for one more tunnel of `client`, if both limits allow it; else the
    /// reason, as counted in `ratewarden_refused_total`.
    fn take(&self, client: IpAddr) -> Result<TunnelPlace, &'static str> {
        let prefix = self.ipv6_prefix.load(Ordering::Relaxed);
        let network = ratewarden_core::identity::client_network(client, prefix);
        let mut per_client = self.per_client.lock();
        let open = per_client.get(&network).copied().unwrap_or(0);
        if open >= self.most_per_client {
            return Err("tunnel_limit_per_client");
        }
        let Ok(permit) = self.total.clone().try_acquire_owned() else {
            return Err("tunnel_limit");
        };
        per_client.insert(network, open + 1);
        Ok(TunnelPlace {
            permit: Some(permit),
            limits: self.clone(),
            network,
        })
    }
}

/// One open tunnel's place under [`TunnelLimits`], given back when dropped.
struct TunnelPlace {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    limits: TunnelLimits,
    network: ipnet::IpNet,
}

impl Drop for TunnelPlace {
    fn drop(&mut self) {
        let mut per_client = self.limits.per_client.lock();
        if let Some(open) = per_client.get_mut(&self.network) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_client.remove(&self.network);
            }
        }
        // Both counts go back under the lock, so that no `take` sees one without the
        // other.
        drop(self.permit.take());
    }
}

/// One worker's tunnels: which protocols may be switched to, how many tunnels may be
/// open, and the worker's stop signal, which closes them.
pub struct Tunnels {
    /// The protocols allowed.
    upgrades: Upgrades,
    limits: TunnelLimits,
    /// A tunnel that carries nothing either way for this long is closed.
    idle: Duration,
    stopping: CancellationToken,
}

impl Tunnels {
    /// Tunnels to `upgrades` within `limits`, closed after `idle` with nothing sent or
    /// when `stopping` is cancelled.
    pub fn new(
        upgrades: Upgrades,
        limits: TunnelLimits,
        idle: Duration,
        stopping: CancellationToken,
    ) -> Tunnels {
        Tunnels {
            upgrades,
            limits,
            idle,
            stopping,
        }
    }
}

/// A client's wish to switch protocols, as it goes to the upstream.
pub struct Offer {
    /// The client's connection, once hyper has sent it our 101.
    client: OnUpgrade,
    /// The protocols offered to the upstream: those the client asked for that are
    /// allowed, in the client's order.
    protocols: HeaderValue,
    /// The tunnel's place under the limits, held from the offer on; or why there is
    /// none (the handshake is then refused, not forwarded).
    place: Result<TunnelPlace, &'static str>,
}

impl Tunnels {
    /// Takes the client's pending upgrade out of a request and, when the request asks
    /// for a protocol allowed here, returns what to offer the upstream, with the
    /// tunnel's place under the limits taken for `client` (or the reason it could not
    /// be: see [`Offer::refusal`]).
    ///
    /// hyper puts a pending upgrade in the extensions of an HTTP/1.1 request with an
    /// `Upgrade` header only, so for every other request this is one look at an empty
    /// map. The offer is boxed: requests that carry none (nearly all) keep a pointer's
    /// room for it in the forwarding future, which moves with every request.
    ///
    /// A request with a body is offered nothing: a WebSocket handshake has none, and
    /// hyper would hand the connection over only once the whole body had passed, so a
    /// slow endless body could hold a tunnel's place.
    #[inline]
    pub fn offer(
        &self,
        parts: &mut http::request::Parts,
        body: &impl hyper::body::Body,
        client: IpAddr,
    ) -> Option<Box<Offer>> {
        let upgrade = parts.extensions.remove::<OnUpgrade>()?;
        if !body.is_end_stream() {
            return None;
        }
        self.offer_for(upgrade, &parts.headers, client)
    }

    /// [`Tunnels::offer`] for a request hyper holds ready to switch: cold and out of
    /// line, like every part of a switch (see `responses::connect_refused`).
    #[cold]
    #[inline(never)]
    fn offer_for(
        &self,
        upgrade: OnUpgrade,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Option<Box<Offer>> {
        let protocols = self.upgrades.protocols_for(headers)?;
        Some(Box::new(Offer {
            client: upgrade,
            protocols,
            place: self.limits.take(client),
        }))
    }
}

impl Upgrades {
    /// The allowed protocols (compared in any case).
    pub fn new(protocols: &[String]) -> Upgrades {
        Upgrades(protocols.into())
    }

    /// The protocols to offer the upstream for a request with these headers: those it
    /// asks for that are allowed, in its order; none when its `Connection` does not
    /// list `upgrade` (RFC 9110, section 7.8: an intermediary may have passed on an
    /// `Upgrade` meant for it).
    fn protocols_for(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        if self.0.is_empty() || !lists_token(headers.get_all(CONNECTION), "upgrade") {
            return None;
        }
        let offered: Vec<&str> = list_items(headers.get_all(UPGRADE))
            .filter(|p| self.allows(p))
            .collect();
        if offered.is_empty() {
            return None;
        }
        HeaderValue::from_str(&offered.join(", ")).ok()
    }

    /// `websocket` allows `websocket` in any version; `name/version` only that version.
    fn allows(&self, protocol: &str) -> bool {
        let name = protocol.split_once('/').map_or(protocol, |(name, _)| name);
        self.0.iter().any(|allowed| {
            allowed.eq_ignore_ascii_case(protocol) || allowed.eq_ignore_ascii_case(name)
        })
    }
}

impl Offer {
    /// Why the tunnel cannot be had (a limit is reached), if it cannot: the handshake
    /// is then answered with [`refused`] and not forwarded.
    pub fn refusal(&self) -> Option<&'static str> {
        self.place.as_ref().err().copied()
    }

    /// Puts the offer on the upstream request, whose hop-by-hop headers were removed.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(UPGRADE, self.protocols.clone());
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the upstream's `Upgrade` (`chosen`) names one protocol, and one `offered`.
fn is_one_of(chosen: &HeaderValue, offered: &HeaderValue) -> bool {
    let (Ok(chosen), Ok(offered)) = (chosen.to_str(), offered.to_str()) else {
        return false;
    };
    let chosen = chosen.trim();
    offered
        .split(',')
        .any(|o| o.trim().eq_ignore_ascii_case(chosen))
}

/// Whether the list header holds `token`, in any case.
fn lists_token(values: http::header::GetAll<'_, HeaderValue>, token: &str) -> bool {
    list_items(values).any(|t| t.eq_ignore_ascii_case(token))
}

/// The client's answer when the upstream switched protocols: our own 101 with the
/// upstream's headers, and the tunnel started on this worker (it waits for both
/// connections to be handed over); or a 502 when the switch was not one the client
/// asked for and the gateway allows. The upstream connection belongs to the tunnel from
/// here. Cold and out of line, as [`Tunnels::offer_for`].
#[cold]
#[inline(never)]
pub fn switched(
    tunnels: &Tunnels,
    offer: Option<Box<Offer>>,
    mut response: Response<Incoming>,
    metrics: &Metrics,
) -> Response<Body> {
    let refuse = |detail: &str| {
        metrics
            .upstream_errors
            .get_or_create(&UpstreamError { kind: "bad_switch" })
            .inc();
        tracing::warn!(detail, "upstream switched protocols wrongly");
        upstream_failure(StatusCode::BAD_GATEWAY, detail)
    };
    let Some(offer) = offer else {
        return refuse("the upstream switched protocols for a request that did not ask to");
    };
    let mut chosen = response.headers().get_all(UPGRADE).iter();
    let Some(chosen) = chosen
        .next()
        .filter(|c| chosen.next().is_none() && is_one_of(c, &offer.protocols))
        .cloned()
    else {
        return refuse("the upstream switched to a protocol that was not offered");
    };
    // Taken with the offer; a refused offer is never forwarded (`forward_body`), so the
    // refusal here only guards against a caller that forwards one anyway.
    let place = match offer.place {
        Ok(place) => place,
        Err(reason) => return refused(reason, metrics),
    };
    let upstream = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    strip_headers(&mut parts.headers, |_| false);
    parts.headers.insert(UPGRADE, chosen);
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    let tunnel = Tunnel {
        client: offer.client,
        upstream,
        idle: tunnels.idle,
        open: OpenTunnel::new(&metrics.tunnels_open, place),
    };
    metrics.tunnels.inc();
    tokio::spawn(tunnel.run(tunnels.stopping.clone()));
    Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
}

/// The answer to a handshake beyond a tunnel limit (`reason`), counted.
#[cold]
#[inline(never)]
pub fn refused(reason: &'static str, metrics: &Metrics) -> Response<Body> {
    metrics.refused.get_or_create(&Refusal { reason }).inc();
    super::responses::tunnel_limit(reason)
}

/// Two connections to join once both have switched protocols.
struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    /// Closed after carrying nothing either way for this long.
    idle: Duration,
    open: OpenTunnel,
}

/// A tunnel counted in `tunnels_open` and holding its place under the tunnel limits
/// until dropped, whichever way the tunnel ends.
struct OpenTunnel {
    gauge: Gauge,
    _place: TunnelPlace,
}

impl OpenTunnel {
    fn new(gauge: &Gauge, place: TunnelPlace) -> OpenTunnel {
        gauge.inc();
        OpenTunnel {
            gauge: gauge.clone(),
            _place: place,
        }
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Why a tunnel ended.
#[derive(Debug)]
enum Ended {
    /// One side closed, and then the other (or either failed).
    Closed(io::Result<(u64, u64)>),
    /// Nothing either way for the idle timeout.
    Idle,
    /// The gateway is stopping.
    Stopped,
}

impl Tunnel {
    /// Copies both ways until either side closes, the tunnel idles, or `stop` is
    /// cancelled; from the moment the client's connection has sent the 101.
    async fn run(self, stop: CancellationToken) {
        // Both sides are handed over once the 101 has been written and read: moments,
        // unless a peer stalls, so that wait is bounded too.
        let handed_over = tokio::select! {
            both = futures_util::future::try_join(self.client, self.upstream) => both,
            () = stop.cancelled() => return,
            () = tokio::time::sleep(self.idle) => {
                tracing::debug!(idle = ?self.idle, "protocol switch did not complete in time");
                return;
            }
        };
        let (client, upstream) = match handed_over {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "protocol switch did not complete");
                return;
            }
        };
        let started = Instant::now();
        // A timeout too long to add to a clock reading never comes.
        let deadline = |since: Instant| since.checked_add(self.idle);
        let last = AtomicU64::new(0);
        let mut client = Stamped::new(TokioIo::new(client), started, &last);
        let mut upstream = Stamped::new(TokioIo::new(upstream), started, &last);
        let ended = {
            let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
            tokio::pin!(copy);
            let last_moved = || started + Duration::from_millis(last.load(Ordering::Relaxed));
            loop {
                let quiet = async {
                    match deadline(last_moved()) {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    copied = &mut copy => break Ended::Closed(copied),
                    () = stop.cancelled() => break Ended::Stopped,
                    () = quiet => {
                        if deadline(last_moved()).is_some_and(|at| Instant::now() >= at) {
                            break Ended::Idle;
                        }
                    }
                }
            }
        };
        drop(self.open);
        match ended {
            Ended::Closed(Ok((up, down))) => tracing::debug!(
                bytes_to_upstream = up,
                bytes_to_client = down,
                "tunnel closed"
            ),
            Ended::Closed(Err(e)) => tracing::debug!(error = %e, "tunnel failed"),
            Ended::Idle => tracing::debug!(idle = ?self.idle, "tunnel closed: nothing either way"),
            Ended::Stopped => tracing::debug!("tunnel closed: the gateway is stopping"),
        }
        // Dropping both sockets closes them.
    }
}

/// A connection that notes when bytes last moved, in milliseconds since `started`.
struct Stamped<'a, T> {
    io: T,
    started: Instant,
    last: &'a AtomicU64,
}

impl<'a, T> Stamped<'a, T> {
    fn new(io: T, started: Instant, last: &'a AtomicU64) -> Self {
        Stamped { io, started, last }
    }

    fn stamp(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.stamp();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_the_prefix_of_the_running_configuration() {
        let limits = TunnelLimits::new(10, 1, 64);
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        let first = limits.take(ip("2001:db8::1")).expect("a place");
        // The same /64: that network's one place is taken.
        assert_eq!(
            limits.take(ip("2001:db8::2")).err(),
            Some("tunnel_limit_per_client")
        );
        // Reloaded with /128: each address is a network of its own.
        limits.set_ipv6_prefix(128);
        let second = limits.take(ip("2001:db8::2")).expect("a place of its own");
        assert_eq!(
            limits.take(ip("2001:db8::2")).err(),
            Some("tunnel_limit_per_client")
        );
        // Places go back to the network they were taken under.
        drop(first);
        drop(second);
        assert!(limits.per_client.lock().is_empty());
        assert_eq!(limits.total.available_permits(), 10);
    }

    fn list(values: &[&str]) -> HeaderMap {
        values
            .iter()
            .map(|v| (UPGRADE, HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn a_protocol_is_allowed_by_name_in_any_version_or_by_exact_version() {
        let upgrades = Upgrades::new(&["websocket".into(), "irc/6.9".into()]);
        for yes in ["websocket", "WebSocket", "websocket/13", "IRC/6.9"] {
            assert!(upgrades.allows(yes), "{yes}");
        }
        for no in ["h2c", "irc", "irc/7", "websockets", "http/2.0", ""] {
            assert!(!upgrades.allows(no), "{no}");
        }
        assert!(!Upgrades::new(&[]).allows("websocket"));
    }

    #[test]
    fn list_headers_are_read_across_values_and_commas() {
        let headers = list(&["h2c , WebSocket", "", "irc/6.9,,"]);
        let found: Vec<&str> = list_items(headers.get_all(UPGRADE)).collect();
        assert_eq!(found, ["h2c", "WebSocket", "irc/6.9"]);
        assert!(lists_token(headers.get_all(UPGRADE), "websocket"));
        assert!(!lists_token(headers.get_all(UPGRADE), "irc"));
    }

    #[test]
    fn the_upstream_must_choose_one_protocol_offered() {
        let offered = HeaderValue::from_static("websocket, irc/6.9");
        for yes in ["websocket", "WEBSOCKET", " irc/6.9 "] {
            assert!(is_one_of(&HeaderValue::from_static(yes), &offered), "{yes}");
        }
        for no in ["h2c", "websocket, h2c", "irc", ""] {
            assert!(!is_one_of(&HeaderValue::from_static(no), &offered), "{no}");
        }
    }
}
