//! `ratewarden demo`: a built-in sample API, the real gateway in front of it (in memory),
//! and simulated clients over loopback, each from its own 127.0.0.x address: a few
//! well-behaved users, a bursty mobile app, a scraper and a login brute-forcer. A
//! progress line while it runs, a table per client at the end.

use crate::config;
use crate::gateway::Bound;
use bytes::Bytes;
use clap::Args;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Options of the demo.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds of traffic.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
}

const DEMO_CONFIG: &str = include_str!("../../../examples/demo.toml");

/// How a simulated client behaves.
#[derive(Clone, Copy)]
enum Pattern {
    /// `n` requests per second, evenly spaced, on `path`.
    Steady { per_second: u32, path: &'static str },
    /// `n` requests at once every `every` seconds.
    Bursts {
        size: u32,
        every: u64,
        path: &'static str,
    },
    /// Login attempts, `n` per second.
    Logins { per_second: u32 },
}

struct SimulatedClient {
    name: &'static str,
    address: &'static str,
    pattern: Pattern,
    sent: AtomicU64,
    passed: AtomicU64,
    limited: AtomicU64,
    failed: AtomicU64,
}

fn clients() -> Vec<Arc<SimulatedClient>> {
    let c = |name, address, pattern| {
        Arc::new(SimulatedClient {
            name,
            address,
            pattern,
            sent: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    };
    vec![
        c(
            "alice, browsing (3/s)",
            "127.0.0.11",
            Pattern::Steady {
                per_second: 3,
                path: "/api/v1/products",
            },
        ),
        c(
            "bob, browsing (2/s)",
            "127.0.0.12",
            Pattern::Steady {
                per_second: 2,
                path: "/api/v1/products/7",
            },
        ),
        c(
            "mobile app, 15 at once every 5 s",
            "127.0.0.13",
            Pattern::Bursts {
                size: 15,
                every: 5,
                path: "/api/v1/feed",
            },
        ),
        c(
            "scraper (40/s)",
            "127.0.0.66",
            Pattern::Steady {
                per_second: 40,
                path: "/api/v1/products/",
            },
        ),
        c(
            "login brute-forcer (4/s)",
            "127.0.0.99",
            Pattern::Logins { per_second: 4 },
        ),
    ]
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args.seconds.max(1)))
}

async fn run_async(seconds: u64) -> anyhow::Result<()> {
    let api = TcpListener::bind("127.0.0.1:0").await?;
    let api_addr = api.local_addr()?;
    tokio::spawn(sample_api(api));

    let config = config::parse(&DEMO_CONFIG.replace("UPSTREAM", &api_addr.to_string()))
        .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    let rules: Vec<String> = config
        .policy
        .rules
        .iter()
        .map(|r| format!("{} ({})", r.name, describe(r)))
        .collect();
    let bound = Bound::new(config).await?;
    let gateway = bound.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));

    println!(
        "ratewarden demo: sample API on {api_addr}, gateway on {gateway}, {seconds} s of traffic"
    );
    println!("rules: {}", rules.join("; "));
    let clients = clients();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| tokio::spawn(drive(c.clone(), gateway, deadline)))
        .collect();
    let started = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        progress(&clients, started.elapsed().as_secs_f64(), seconds);
    }
    for t in tasks {
        let _ = t.await;
    }
    progress(&clients, seconds as f64, seconds);
    println!();
    println!();
    println!(
        "{:<46} {:>8} {:>8} {:>8} {:>7}",
        "client (source address)", "requests", "passed", "limited", "errors"
    );
    for c in &clients {
        println!(
            "{:<46} {:>8} {:>8} {:>8} {:>7}",
            format!("{} {}", c.name, c.address),
            c.sent.load(Ordering::Relaxed),
            c.passed.load(Ordering::Relaxed),
            c.limited.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed)
        );
    }
    println!();
    println!("passed: answered by the API (a failed login is the API's 401); limited: 429 from ratewarden.");
    let _ = stop.send(());
    let _ = server.await;
    Ok(())
}

fn describe(rule: &ratewarden_core::policy::Rule) -> String {
    use ratewarden_core::Limit;
    match &rule.limit {
        Limit::Gcra(g) => format!(
            "gcra, burst {}, one per {:?}",
            g.capacity(),
            g.emission_interval().to_duration()
        ),
        Limit::SlidingWindow(s) => format!(
            "sliding_window, {} per {:?}",
            s.limit(),
            s.period().to_duration()
        ),
        Limit::FixedWindow(f) => format!(
            "fixed_window, {} per {:?}",
            f.limit(),
            f.period().to_duration()
        ),
    }
}

fn progress(clients: &[Arc<SimulatedClient>], elapsed: f64, total: u64) {
    let sum = |f: fn(&SimulatedClient) -> &AtomicU64| {
        clients
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let width = 30;
    let done = ((elapsed / total as f64) * width as f64).min(width as f64) as usize;
    print!(
        "\r[{}{}] {:>4.1}/{} s  {} requests, {} passed, {} limited ",
        "#".repeat(done),
        "-".repeat(width - done),
        elapsed.min(total as f64),
        total,
        sum(|c| &c.sent),
        sum(|c| &c.passed),
        sum(|c| &c.limited)
    );
    let _ = std::io::stdout().flush();
}

async fn drive(client: Arc<SimulatedClient>, gateway: SocketAddr, deadline: tokio::time::Instant) {
    let mut connector = HttpConnector::new();
    connector.set_local_address(client.address.parse::<IpAddr>().ok());
    let http: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let (interval, batch, method, path) = match client.pattern {
        Pattern::Steady { per_second, path } => (
            Duration::from_secs(1) / per_second,
            1,
            Method::GET,
            path.to_owned(),
        ),
        Pattern::Bursts { size, every, path } => (
            Duration::from_secs(every),
            size,
            Method::GET,
            path.to_owned(),
        ),
        Pattern::Logins { per_second } => (
            Duration::from_secs(1) / per_second,
            1,
            Method::POST,
            "/api/v1/auth/login".to_owned(),
        ),
    };
    let mut ticks = tokio::time::interval(interval);
    let mut n = 0u64;
    while tokio::time::Instant::now() < deadline {
        ticks.tick().await;
        for _ in 0..batch {
            n += 1;
            let path = if path.ends_with('/') {
                format!("{path}{n}")
            } else {
                path.clone()
            };
            let request = Request::builder()
                .method(method.clone())
                .uri(format!("http://{gateway}{path}"))
                .body(Empty::new());
            let Ok(request) = request else { continue };
            client.sent.fetch_add(1, Ordering::Relaxed);
            match http.request(request).await {
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                    client.limited.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    client.passed.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    client.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The sample API: products and a login that always refuses (the brute-forcer's guesses
/// are wrong).
async fn sample_api(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                let (status, body) = if request.uri().path() == "/api/v1/auth/login" {
                    (
                        StatusCode::UNAUTHORIZED,
                        r#"{"error":"invalid credentials"}"#.to_owned(),
                    )
                } else {
                    (
                        StatusCode::OK,
                        format!(r#"{{"path":"{}","items":[1,2,3]}}"#, request.uri().path()),
                    )
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                Ok::<_, std::convert::Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
