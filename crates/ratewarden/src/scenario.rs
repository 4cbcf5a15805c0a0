//! `ratewarden scenario`: detection quality, measured. A labelled mix of legitimate
//! users and attackers, each from its own 127.x.y.z address, replayed over loopback
//! against the real gateway in front of a sample API, once with static limits alone and
//! once with adaptive defence (`[threat]` at its defaults) on the same rules. It reports,
//! per client and per class, what reached the API and what was refused.
//!
//! "Reached" means the API answered (200, 401, 404); "refused" means the gateway did
//! (429, 403). The API itself never answers 429 or 403 here.

use crate::config;
use crate::gateway::Bound;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Options of the scenario.
#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// Seconds of traffic per run.
    #[arg(long, default_value_t = 120)]
    pub seconds: u64,
    /// Which runs.
    #[arg(long, value_enum, default_value_t = Runs::Both)]
    pub runs: Runs,
}

/// Which configurations to run the scenario against.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Runs {
    /// Static limits, then adaptive defence.
    Both,
    /// Static limits alone.
    Static,
    /// Adaptive defence.
    Adaptive,
}

const RULES: &str = r#"
[server]
listen = "127.0.0.1:0"
upstream = "http://UPSTREAM"

[store]
kind = "memory"

[[rules]]
name = "api_general"
match = { path_prefix = "/api/" }
rate = "10/s"
burst = 20

[[rules]]
name = "login"
match = { path = "/api/v1/auth/login", methods = ["POST"] }
algorithm = "sliding_window"
rate = "5/m"
"#;

const ADAPTIVE: &str = "\n[threat]\n";

/// The real password of every legitimate account in the sample API.
const PASSWORD: &str = "correct-horse";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Legitimate,
    Attack,
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// A person reading: page loads of 1-6 requests over a dozen pages, 0.3-4 s apart;
    /// logs in at the start (`typos` wrong passwords first).
    Browser { seed: u64, typos: u32 },
    /// An app fetching 10 things at once every 5 s.
    MobileApp,
    /// A partner's integration polling every 2 s, with a scheduler's jitter.
    Integration,
    /// Distinct product pages at `per_second`, evenly spaced, just under the limit.
    Scraper { per_second: u32 },
    /// Random user ids, most of which do not exist.
    Enumerator { per_second: u32 },
    /// One endpoint, exactly once a second, forever.
    PeriodicBot,
    /// Leaked usernames with common passwords, one attempt every 12 s (under 5/m).
    Stuffer,
    /// The same, spread over 30 addresses taking turns, 3 attempts a second in all.
    RotatingStuffer,
}

struct Simulated {
    name: &'static str,
    class: Class,
    addresses: Vec<IpAddr>,
    behaviour: Behaviour,
    sent: AtomicU64,
    reached: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

fn population() -> Vec<Arc<Simulated>> {
    let ip = |s: &str| s.parse::<IpAddr>().map_or_else(|_| Vec::new(), |a| vec![a]);
    let c = |name, class, addresses, behaviour| {
        Arc::new(Simulated {
            name,
            class,
            addresses,
            behaviour,
            sent: AtomicU64::new(0),
            reached: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    };
    let mut all: Vec<Arc<Simulated>> = [
        ("user 1", 1u64, 0u32),
        ("user 2", 2, 0),
        ("user 3", 3, 1),
        ("user 4", 4, 0),
        ("user 5", 5, 2),
        ("user 6", 6, 0),
        ("user 7", 7, 0),
        ("user 8", 8, 1),
    ]
    .into_iter()
    .map(|(name, seed, typos)| {
        c(
            name,
            Class::Legitimate,
            ip(&format!("127.0.7.{seed}")),
            Behaviour::Browser { seed, typos },
        )
    })
    .collect();
    all.push(c(
        "mobile app",
        Class::Legitimate,
        ip("127.0.7.20"),
        Behaviour::MobileApp,
    ));
    all.push(c(
        "partner integration",
        Class::Legitimate,
        ip("127.0.7.21"),
        Behaviour::Integration,
    ));
    all.push(c(
        "scraper (8/s)",
        Class::Attack,
        ip("127.0.9.1"),
        Behaviour::Scraper { per_second: 8 },
    ));
    all.push(c(
        "enumerator (3/s)",
        Class::Attack,
        ip("127.0.9.2"),
        Behaviour::Enumerator { per_second: 3 },
    ));
    all.push(c(
        "periodic bot (1/s)",
        Class::Attack,
        ip("127.0.9.3"),
        Behaviour::PeriodicBot,
    ));
    all.push(c(
        "credential stuffer",
        Class::Attack,
        ip("127.0.9.4"),
        Behaviour::Stuffer,
    ));
    all.push(c(
        "IP-rotating stuffer (30 IPs)",
        Class::Attack,
        (1..=30)
            .filter_map(|i| format!("127.0.10.{i}").parse().ok())
            .collect(),
        Behaviour::RotatingStuffer,
    ));
    all
}

/// Runs the scenario.
pub fn run(args: &ScenarioArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let seconds = args.seconds.max(5);
    let runs: &[(&str, bool)] = match args.runs {
        Runs::Both => &[("static limits", false), ("adaptive defence", true)],
        Runs::Static => &[("static limits", false)],
        Runs::Adaptive => &[("adaptive defence", true)],
    };
    let mut summaries = Vec::new();
    for (label, adaptive) in runs {
        println!("== {label}: {seconds} s of traffic ==");
        let clients = runtime.block_on(replay(*adaptive, seconds))?;
        report(&clients);
        summaries.push((*label, totals(&clients)));
    }
    if let [(_, stat), (_, adapt)] = summaries.as_slice() {
        let reduction = if stat.attack_reached > 0 {
            100.0 * (1.0 - adapt.attack_reached as f64 / stat.attack_reached as f64)
        } else {
            0.0
        };
        println!(
            "adaptive let through {} attack requests where static let through {} ({:.1}% of it, a {reduction:.1}% reduction); legitimate requests refused: static {:.2}%, adaptive {:.2}%",
            adapt.attack_reached,
            stat.attack_reached,
            100.0 - reduction,
            stat.legit_refused_share(),
            adapt.legit_refused_share(),
        );
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    attack_sent: u64,
    attack_reached: u64,
    legit_sent: u64,
    legit_refused: u64,
}

impl Totals {
    fn legit_refused_share(&self) -> f64 {
        100.0 * self.legit_refused as f64 / self.legit_sent.max(1) as f64
    }
}

fn totals(clients: &[Arc<Simulated>]) -> Totals {
    let mut t = Totals::default();
    for c in clients {
        let (sent, reached, refused) = (
            c.sent.load(Ordering::Relaxed),
            c.reached.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
        );
        match c.class {
            Class::Attack => {
                t.attack_sent += sent;
                t.attack_reached += reached;
            }
            Class::Legitimate => {
                t.legit_sent += sent;
                t.legit_refused += refused;
            }
        }
    }
    t
}

fn report(clients: &[Arc<Simulated>]) {
    println!(
        "{:<30} {:>6} {:>8} {:>8} {:>8} {:>7}",
        "client", "class", "sent", "reached", "refused", "errors"
    );
    for c in clients {
        println!(
            "{:<30} {:>6} {:>8} {:>8} {:>8} {:>7}",
            c.name,
            match c.class {
                Class::Legitimate => "legit",
                Class::Attack => "attack",
            },
            c.sent.load(Ordering::Relaxed),
            c.reached.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed)
        );
    }
    let t = totals(clients);
    println!(
        "attack: {} of {} requests reached the API ({:.1}%); legitimate: {} of {} refused ({:.2}%)\n",
        t.attack_reached,
        t.attack_sent,
        100.0 * t.attack_reached as f64 / t.attack_sent.max(1) as f64,
        t.legit_refused,
        t.legit_sent,
        t.legit_refused_share()
    );
}

async fn replay(adaptive: bool, seconds: u64) -> anyhow::Result<Vec<Arc<Simulated>>> {
    let api = TcpListener::bind("127.0.0.1:0").await?;
    let api_addr = api.local_addr()?;
    let api_task = tokio::spawn(sample_api(api));
    let mut text = RULES.replace("UPSTREAM", &api_addr.to_string());
    if adaptive {
        text.push_str(ADAPTIVE);
    }
    let config =
        config::parse(&text).map_err(|e| anyhow::anyhow!("scenario configuration: {e}"))?;
    let bound = Bound::new(config).await?;
    let gateway = bound.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));
    let clients = population();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| tokio::spawn(drive(c.clone(), gateway, deadline)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let _ = stop.send(());
    let _ = server.await;
    api_task.abort();
    Ok(clients)
}

/// A small, seeded generator: the same scenario every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

pub(crate) type Http = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn client_from(address: IpAddr) -> Http {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(address));
    Client::builder(TokioExecutor::new()).build(connector)
}

struct Call<'a> {
    method: Method,
    path: String,
    user_agent: &'a str,
    body: Option<String>,
}

impl<'a> Call<'a> {
    fn get(path: String, user_agent: &'a str) -> Call<'a> {
        Call {
            method: Method::GET,
            path,
            user_agent,
            body: None,
        }
    }

    fn login(user: &str, password: &str, user_agent: &'a str) -> Call<'a> {
        Call {
            method: Method::POST,
            path: "/api/v1/auth/login".into(),
            user_agent,
            body: Some(format!(
                r#"{{"username":"{user}","password":"{password}"}}"#
            )),
        }
    }
}

async fn send(client: &Simulated, http: &Http, gateway: SocketAddr, call: Call<'_>) {
    let request = Request::builder()
        .method(call.method)
        .uri(format!("http://{gateway}{}", call.path))
        .header(http::header::USER_AGENT, call.user_agent)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(call.body.unwrap_or_default())));
    let Ok(request) = request else { return };
    client.sent.fetch_add(1, Ordering::Relaxed);
    match http.request(request).await {
        Ok(r) => {
            let refused = matches!(
                r.status(),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::FORBIDDEN
            );
            let _ = r.into_body().collect().await;
            if refused {
                client.refused.fetch_add(1, Ordering::Relaxed);
            } else {
                client.reached.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(_) => {
            client.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

async fn drive(client: Arc<Simulated>, gateway: SocketAddr, deadline: Instant) {
    let https: Vec<Http> = client.addresses.iter().map(|a| client_from(*a)).collect();
    let Some(http) = https.first() else { return };
    let c = client.as_ref();
    let until = |at: Instant| async move {
        tokio::time::sleep_until(at.min(deadline)).await;
        Instant::now() < deadline
    };
    match client.behaviour {
        Behaviour::Browser { seed, typos } => {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let user = format!("user{seed}@example.com");
            for _ in 0..typos {
                send(
                    c,
                    http,
                    gateway,
                    Call::login(&user, "correct-hose", BROWSER),
                )
                .await;
                tokio::time::sleep(rng.millis(2_000, 5_000)).await;
            }
            send(c, http, gateway, Call::login(&user, PASSWORD, BROWSER)).await;
            while Instant::now() < deadline {
                let page = rng.below(12);
                let assets = 1 + rng.below(6);
                for i in 0..assets {
                    let path = if i == 0 {
                        format!("/api/v1/products/{page}")
                    } else {
                        format!("/api/v1/products/{page}/reviews?page={i}")
                    };
                    send(c, http, gateway, Call::get(path, BROWSER)).await;
                }
                let think = rng.millis(300, 4_000);
                if !until(Instant::now() + think).await {
                    break;
                }
            }
        }
        Behaviour::MobileApp => {
            let mut next = Instant::now();
            while until(next).await {
                for i in 0..10 {
                    send(
                        c,
                        http,
                        gateway,
                        Call::get(format!("/api/v1/feed?part={i}"), "ShopApp/4.2 (iOS 18.1)"),
                    )
                    .await;
                }
                next += Duration::from_secs(5);
            }
        }
        Behaviour::Integration => {
            let mut rng = Rng(0xC0FF_EE11);
            let mut next = Instant::now();
            while until(next).await {
                send(
                    c,
                    http,
                    gateway,
                    Call::get("/api/v1/prices".into(), "partner-sync/1.0 curl/8.5.0"),
                )
                .await;
                next += rng.millis(1_400, 2_600);
            }
        }
        Behaviour::Scraper { per_second } => {
            let mut next = Instant::now();
            let mut n = 0u64;
            while until(next).await {
                n += 1;
                send(
                    c,
                    http,
                    gateway,
                    Call::get(format!("/api/v1/products/{}", 1000 + n), BROWSER),
                )
                .await;
                next += Duration::from_secs(1) / per_second;
            }
        }
        Behaviour::Enumerator { per_second } => {
            let mut rng = Rng(0xE11E_11E1);
            let mut next = Instant::now();
            while until(next).await {
                let id = rng.below(1_000_000);
                send(
                    c,
                    http,
                    gateway,
                    Call::get(format!("/api/v1/users/{id}"), BROWSER),
                )
                .await;
                next += Duration::from_secs(1) / per_second;
            }
        }
        Behaviour::PeriodicBot => {
            let mut next = Instant::now();
            while until(next).await {
                send(
                    c,
                    http,
                    gateway,
                    Call::get("/api/v1/prices".into(), "Go-http-client/1.1"),
                )
                .await;
                next += Duration::from_secs(1);
            }
        }
        Behaviour::Stuffer => {
            let mut next = Instant::now();
            let mut n = 0u64;
            while until(next).await {
                n += 1;
                let user = format!("leaked{n}@example.com");
                send(c, http, gateway, Call::login(&user, "Summer2024!", BROWSER)).await;
                next += Duration::from_secs(12);
            }
        }
        Behaviour::RotatingStuffer => {
            let mut next = Instant::now();
            let mut n = 0usize;
            while until(next).await {
                n += 1;
                let user = format!("victim{n}@example.com");
                let http = &https[n % https.len()];
                send(c, http, gateway, Call::login(&user, "123456", BROWSER)).await;
                next += Duration::from_millis(333);
            }
        }
    }
}

/// The sample API: products 0-499 exist (others 404), users 0-999 exist, logins succeed
/// with the right password.
async fn sample_api(listener: TcpListener) {
    answer_with_statuses(listener, |path, body| {
        if path == "/api/v1/auth/login" {
            let wanted = format!(r#""password":"{PASSWORD}""#);
            if String::from_utf8_lossy(body).contains(&wanted) {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            }
        } else if let Some(id) = path.strip_prefix("/api/v1/users/") {
            match id.parse::<u64>() {
                Ok(n) if n < 1000 => StatusCode::OK,
                _ => StatusCode::NOT_FOUND,
            }
        } else {
            StatusCode::OK
        }
    })
    .await;
}

/// Serves a sample API on `listener` until it fails: every request's body is read, and
/// the answer is `{}` with the status `answer` gives for its path and body.
pub(crate) async fn answer_with_statuses(
    listener: TcpListener,
    answer: fn(&str, &[u8]) -> StatusCode,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| async move {
                let path = request.uri().path().to_owned();
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                *response.status_mut() = answer(&path, &body);
                Ok::<_, std::convert::Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
