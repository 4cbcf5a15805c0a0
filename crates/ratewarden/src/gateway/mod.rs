//! `ratewarden serve`: the reverse proxy.
//!
//! One listener accepting HTTP/1.1 and h2c, each request run through [`handler`]: the
//! client identified, the policy evaluated, the store asked once for all matching rules,
//! and then either our own answer (429, 403, 400) or the upstream's. SIGHUP replaces
//! the policy whole ([`worker::PolicyCell`]); each worker takes the new one up at its
//! next request, and counters stay in the store across reloads. SIGTERM (or Ctrl-C)
//! stops accepting and drains in-flight requests.

mod abuse;
mod connection;
mod forward;
mod handler;
mod header_timer;
mod limiter;
mod login;
mod pool;
pub mod rate_limit_headers;
mod recent;
pub mod responses;
mod status_cache;
pub mod threat;
mod tunnel;
mod worker;

use crate::config::{self, Config};
use crate::metrics::{Metrics, RuleDecision};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use ratewarden_core::clock::SystemClock;
use ratewarden_core::policy::Policy;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker::{PolicyCell, Worker};

/// Every body the gateway sends.
pub type Body = BoxBody<Bytes, BodyError>;

/// Why a body stopped: the peer's connection failed, or the upstream went quiet for
/// longer than `upstream_timeout` in the middle of a response.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// How to reach the upstream; each worker builds its own pooled client from it.
struct UpstreamSettings {
    base: http::Uri,
    connect_timeout: Duration,
    timeout: Duration,
    keepalive: pool::Keepalive,
    upgrades: tunnel::Upgrades,
    /// Shared by every worker's tunnels.
    tunnel_limits: tunnel::TunnelLimits,
    tunnel_idle: Duration,
}

/// The most worker threads a gateway starts (one per core up to this).
pub const MAX_WORKERS: usize = 64;

/// What every request handler shares.
pub struct Gateway {
    policy: PolicyCell,
    store: limiter::Limiter,
    abuse: Option<Arc<abuse::AbuseReporter>>,
    defence: Option<Arc<threat::Defence>>,
    logins: Option<Arc<login::LoginGuard>>,
    upstream: UpstreamSettings,
    metrics: Arc<Metrics>,
    clock: SystemClock,
    delayed: tokio::sync::Semaphore,
    /// The `[server]` and `[store]` settings started with, which a reload cannot change.
    fixed_settings: String,
    /// One permit per open client connection.
    connections: Arc<tokio::sync::Semaphore>,
    /// How long a client may take to send a request head, from the moment it connects.
    header_timeout: Duration,
}

/// Runs the gateway until SIGTERM or Ctrl-C; SIGHUP reloads `config_path`.
pub async fn serve(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let bound = Bound::new(config).await?;
    tokio::spawn(reload_on_sighup(config_path, bound.gateway.clone()));
    bound.run(shutdown_signal()).await
}

/// A gateway whose sockets are bound, not yet serving.
pub struct Bound {
    listener: TcpListener,
    gateway: Arc<Gateway>,
    builder: Builder<TokioExecutor>,
}

impl Bound {
    /// Binds the gateway's listener (and admin port) for `config`.
    pub async fn new(config: Config) -> anyhow::Result<Bound> {
        let store = limiter::Limiter::new(&config.store)?;
        store.probe().await;
        let alert_metrics = config
            .abuse
            .as_ref()
            .map(|_| ratewarden_detect::AlertMetrics::default());
        let metrics = Arc::new(Metrics::with_alerting(alert_metrics.as_ref()));
        let abuse = match (&config.abuse, alert_metrics) {
            (Some(abuse), Some(m)) => Some(Arc::new(abuse::AbuseReporter::start(
                abuse,
                &config.store,
                m,
            )?)),
            _ => None,
        };
        let defence = match &config.threat {
            Some(threat) => {
                let defence = Arc::new(threat::Defence::new(
                    threat.clone(),
                    &config.store,
                    instance(&config),
                    metrics.clone(),
                    abuse.clone(),
                )?);
                defence.spawn_janitor();
                defence.spawn_flusher();
                Some(defence)
            }
            None => None,
        };
        let s = &config.server;
        let logins = match &config.login_pseudonyms {
            Some(pseudonyms) => Some(Arc::new(login::LoginGuard::new(
                &config.store,
                pseudonyms.clone(),
                metrics.clone(),
                abuse.clone(),
                instance(&config),
                // The longest an attempt can take: its delay, then the upstream.
                s.upstream_timeout + longest_login_delay(&config.policy),
                s.header_timeout,
            )?)),
            None => None,
        };
        let gateway = Arc::new(Gateway {
            policy: PolicyCell::new(config.policy.clone()),
            store,
            abuse,
            defence: defence.clone(),
            logins,
            upstream: UpstreamSettings {
                base: s.upstream.clone(),
                connect_timeout: s.upstream_connect_timeout,
                timeout: s.upstream_timeout,
                keepalive: pool::Keepalive {
                    max_idle: s.upstream_keepalive,
                    idle_timeout: s.upstream_keepalive_timeout,
                },
                upgrades: tunnel::Upgrades::new(&s.upgrades),
                tunnel_limits: tunnel::TunnelLimits::new(
                    s.max_tunnels,
                    s.max_tunnels_per_client,
                    config.policy.clients.ipv6_prefix,
                ),
                tunnel_idle: s.tunnel_idle_timeout,
            },
            metrics: metrics.clone(),
            clock: SystemClock::new(),
            delayed: tokio::sync::Semaphore::new(s.max_delayed),
            fixed_settings: fixed_settings(&config),
            connections: Arc::new(tokio::sync::Semaphore::new(s.max_connections)),
            header_timeout: s.header_timeout,
        });
        // Every worker listens on the same port (SO_REUSEPORT), this one included.
        let listener = reuseport_listener(s.listen)?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        tracing::info!(listen = %listener.local_addr()?, upstream = %s.upstream, rules = config.policy.rules.len(), "gateway listening");
        if let Some(admin) = s.admin_listen {
            let admin_listener = TcpListener::bind(admin).await?;
            tracing::info!(listen = %admin_listener.local_addr()?, "admin listening");
            let router = crate::admin::router(crate::admin::AdminState {
                metrics: metrics.clone(),
                defence: defence.clone(),
                token: config.admin.token.clone(),
                ipv6_prefix: config.policy.clients.ipv6_prefix,
            });
            tokio::spawn(async move {
                if let Err(e) = axum::serve(admin_listener, router).await {
                    tracing::error!(error = %e, "admin server stopped");
                }
            });
        }
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            // The timer is each worker's own: see `accept_loop`.
            .header_read_timeout(s.header_timeout)
            .max_headers(s.max_headers)
            .max_buf_size(s.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            // Rapid reset (CVE-2023-44487): a client that resets streams faster than it
            // lets them run is cut off.
            .max_pending_accept_reset_streams(64)
            .max_local_error_reset_streams(256)
            .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
            // Pings find peers that vanished without closing.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Ok(Bound {
            listener,
            gateway,
            builder,
        })
    }

    /// Where the gateway listens.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests (30 s at most).
    ///
    /// One accept loop per core, each on its own single-threaded runtime with its own
    /// `SO_REUSEPORT` listener and upstream connection pool, as nginx runs one worker
    /// process per core: a request is read, decided, forwarded and answered on one
    /// thread, without cross-thread wake-ups. The store and the policy are shared.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let Bound {
            listener,
            gateway,
            builder,
        } = self;
        let address = listener.local_addr()?;
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, MAX_WORKERS);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut threads = Vec::with_capacity(workers);
        let mut first = Some(listener);
        for index in 0..workers {
            let listener = match first.take() {
                Some(l) => l.into_std()?,
                None => reuseport_listener(address)?,
            };
            let (gateway, builder, stopped) = (gateway.clone(), builder.clone(), stopped.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ratewarden-worker-{index}"))
                    .spawn(move || -> anyhow::Result<()> {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        runtime.block_on(accept_loop(index, listener, gateway, builder, stopped))
                    })?,
            );
        }
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = stop.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| t.join().map_err(|_| anyhow::anyhow!("worker panicked"))?)
                .collect::<anyhow::Result<Vec<()>>>()
        })
        .await?;
        if gateway.abuse.is_some() {
            let gateway = gateway.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(abuse) = &gateway.abuse {
                    abuse.flush(Duration::from_secs(2));
                }
            })
            .await;
        }
        joined.map(|_| ())
    }
}

/// A listener on `address` sharing the port with the others (`SO_REUSEPORT`).
fn reuseport_listener(address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    socket.listen(1024)?.into_std()
}

/// One worker: accepts, serves, and on stop drains its connections (30 s at most).
async fn accept_loop(
    index: usize,
    listener: std::net::TcpListener,
    gateway: Arc<Gateway>,
    mut builder: Builder<TokioExecutor>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    // Told to every tunnel when the worker stops (connections look at the header
    // timer's stop signal instead, with one load per poll: see `connection.rs`); the
    // tracker waits for the connections.
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let timer = header_timer::HeaderTimer::default();
    tokio::spawn(timer.fire_due_forever());
    let upstream = Arc::new(forward::Upstream::new(
        gateway.upstream.base.clone(),
        gateway.upstream.connect_timeout,
        gateway.upstream.timeout,
        gateway.upstream.keepalive,
        timer.clone(),
        tunnel::Tunnels::new(
            gateway.upstream.upgrades.clone(),
            gateway.upstream.tunnel_limits.clone(),
            gateway.upstream.tunnel_idle,
            stopping.clone(),
        ),
    ));
    tokio::spawn(upstream.close_idle_forever());
    let worker = Arc::new(Worker::new(index, gateway.clone(), upstream));
    builder.http1().timer(timer.clone());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                // Past the connection cap, close at once: file descriptors and memory
                // stay bounded whatever the number of clients.
                let Ok(permit) = gateway.connections.clone().try_acquire_owned() else {
                    gateway.metrics.refused.get_or_create(&crate::metrics::Refusal { reason: "connection_limit" }).inc();
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // The socket carries the connection's place: hyper hands it to a tunnel
                // when the connection switches protocols, and the place goes with it.
                let stream = connection::Socket::new(stream, permit, &gateway.metrics.open_connections);
                let header_timeout = gateway.header_timeout;
                let worker = worker.clone();
                let activity = Arc::new(connection::Activity::default());
                let reports = activity.clone();
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let open = reports.started(request.version());
                    // This thread's own reference count, not one every worker writes.
                    let worker = worker.clone();
                    async move {
                        let response = handler::handle(&worker, peer, request).await;
                        let response = match open {
                            Some(open) => open.until_sent(response),
                            None => response,
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let builder = builder.clone();
                let (timer, accepted) = (timer.clone(), hyper::rt::Timer::now(&timer));
                let stopping = timer.stop_signal();
                connections.spawn(async move {
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let served = connection::Served::new(
                        connection,
                        |connection| connection.graceful_shutdown(),
                        stopping,
                        activity,
                        timer,
                        accepted,
                        header_timeout,
                    );
                    match served.await {
                        Some(Ok(())) => {}
                        Some(Err(e)) => tracing::debug!(error = %e, %peer, "connection ended with an error"),
                        None => tracing::debug!(%peer, "connection dropped: no request head within the header timeout, or asked to finish and did not"),
                    }
                });
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    timer.stop();
    stopping.cancel();
    connections.close();
    tokio::select! {
        () = connections.wait() => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("drain timed out after 30 s"),
    }
    Ok(())
}

/// The name alerts give this gateway.
fn instance(config: &Config) -> String {
    config.abuse.as_ref().map_or_else(
        || config::default_instance(Some(config.server.listen.port())),
        |a| a.settings.instance.clone(),
    )
}

/// The longest progressive delay any login route may hold a request.
fn longest_login_delay(policy: &Policy) -> Duration {
    policy
        .logins
        .iter()
        .filter_map(|l| l.delay.map(|d| d.max.to_duration()))
        .max()
        .unwrap_or_default()
}

/// What a reload cannot change, rendered for comparison (never logged: it holds the
/// Redis URLs and alerting secrets as written, so that a changed one is noticed).
fn fixed_settings(config: &Config) -> String {
    let urls = match &config.store {
        config::StoreConfig::Redis { settings, .. } => match &settings.target {
            ratewarden_store::redis::RedisTarget::Server(url) => url.clone(),
            ratewarden_store::redis::RedisTarget::Cluster(urls) => urls.join(" "),
        },
        config::StoreConfig::Memory { .. } => String::new(),
    };
    // Alerting starts once, with its secrets: a reload that rotates them needs a restart.
    let abuse = config
        .abuse
        .as_ref()
        .map(|a| a.restart_material())
        .unwrap_or_default();
    let admin_token = config.admin.token.as_deref().unwrap_or_default();
    // Login protection starts with its pseudonym key: a fingerprint of it tells a
    // rotated secret, or [[login]] added or removed, apart.
    let login = config
        .login_pseudonyms
        .as_ref()
        .map(|p| p.pseudonym("restart", "fingerprint"))
        .unwrap_or_default();
    format!(
        "{:?} {:?} {urls} {abuse} {admin_token} {login}",
        config.server, config.store
    )
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP: re-read the file; a valid policy replaces the running one, an invalid file is
/// logged with every error and changes nothing.
async fn reload_on_sighup(path: PathBuf, gateway: Arc<Gateway>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            let outcome = match config::load(&path) {
                Ok(config) => {
                    let rules = config.policy.rules.len();
                    if fixed_settings(&config) != gateway.fixed_settings {
                        tracing::warn!(
                            file = %path.display(),
                            "[server], [store], [abuse], [[alerts]], [privacy] and [admin] changes take effect only on restart; the rules are applied now"
                        );
                    }
                    match (&gateway.defence, config.threat) {
                        (Some(defence), Some(threat)) => defence.reconfigure(threat),
                        (None, Some(_)) | (Some(_), None) => tracing::warn!(
                            file = %path.display(),
                            "adding or removing [threat] takes effect only on restart"
                        ),
                        (None, None) => {}
                    }
                    gateway
                        .upstream
                        .tunnel_limits
                        .set_ipv6_prefix(config.policy.clients.ipv6_prefix);
                    gateway.policy.replace(config.policy);
                    tracing::info!(file = %path.display(), rules, "configuration reloaded");
                    "applied"
                }
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!(file = %path.display(), error = %e, "configuration not reloaded");
                    }
                    "rejected"
                }
            };
            gateway
                .metrics
                .reloads
                .get_or_create(&RuleDecision {
                    rule: "-".into(),
                    decision: outcome,
                })
                .inc();
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, gateway);
    }
}
