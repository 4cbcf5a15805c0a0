//! `ratewarden login-scenario`: login protection, measured. One simulated hour of a
//! credential-stuffing attack (many accounts, few passwords, several source addresses)
//! plus a brute-force guesser on three accounts, mixed with real users logging in
//! normally, replayed over loopback against the real gateway in front of a sample login
//! API; once without login protection and once per protection setting.
//!
//! The hour is compressed into `--seconds` of real time: every duration in the
//! configuration (windows, lockouts, delays) and every pause of the simulated clients is
//! divided by the same factor, so the counts are those of one hour.

use crate::config;
use crate::gateway::Bound;
use crate::scenario::{answer_with_statuses, client_from, Http, Rng};
use bytes::Bytes;
use clap::Args;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Options of the login scenario.
#[derive(Debug, Args)]
pub struct LoginScenarioArgs {
    /// Real seconds that one simulated hour takes (at least 12, so that the shortest
    /// scaled setting, the 5-minute threat window, stays at a second or more).
    #[arg(long, default_value_t = 180)]
    pub seconds: u64,
}

/// Accounts of the sample API: `user{i}@example.com`.
const ACCOUNTS: u64 = 1_000;
/// Every 33rd account uses the weak password the attackers also try.
const WEAK_PASSWORD: &str = "Summer2026!";
/// What the attackers try on every account.
const COMMON_PASSWORDS: [&str; 3] = ["123456", WEAK_PASSWORD, "password1"];
/// Real users in the hour, each from an address of their own.
const USERS: u64 = 300;
/// Stuffing sources, each sending one guess per simulated second.
const STUFFERS: u64 = 5;
/// Accounts the brute-force guesser works on (real users among `USERS`).
const TARGETED: [u64; 3] = [1, 2, 3];

fn password_of(account: u64) -> String {
    if account % 33 == 0 {
        WEAK_PASSWORD.to_owned()
    } else {
        format!("pw-{account}-correct-horse")
    }
}

/// One protection setting to run.
struct Setting {
    label: &'static str,
    /// `[[login]]` and more, durations in simulated seconds as `{s:N}`.
    config: &'static str,
}

const LOGIN: &str = r#"
[privacy]
secret = "login-scenario-secret-0123456789"

[[login]]
name = "web_login"
match = { path = "/api/v1/auth/login", methods = ["POST"] }
account = "json:username"
per_account = { failures = 5, window = "{s:3600}", lockout = "{s:3600}" }
per_ip = { attempts = 100, window = "{s:3600}" }
progressive_delay = { after = 3, base = "{s:1}", max = "{s:30}" }
challenge_after = 3
"#;

const SETTINGS: [Setting; 4] = [
    Setting {
        label: "no login protection",
        config: "",
    },
    Setting {
        label: "login protection, lockout_scope = account",
        config: "LOGIN\nlockout_scope = \"account\"\n",
    },
    Setting {
        label: "login protection, lockout_scope = account+ip",
        config: "LOGIN\nlockout_scope = \"account+ip\"\n",
    },
    Setting {
        label: "login protection (account+ip) and adaptive defence",
        config: "LOGIN\nlockout_scope = \"account+ip\"\n[threat]\nwindow = \"{s:300}\"\n[threat.levels]\nhigh = { rate_factor = 0.2, block_for = \"{s:300}\" }\ncritical = { rate_factor = 0.0, block_for = \"{s:3600}\" }\n[threat.escalation]\nmax_block = \"{s:86400}\"\n[threat.scoring]\nrequest_rate = { threshold = {x:5}, weight = 20 }\nregular_timing = { weight = 40, min_mean_gap_ms = {s_ms:50} }\n",
    },
];

/// Who sent an attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Stuffer,
    Guesser,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    /// The API answered (the guess reached it).
    reached: AtomicU64,
    /// The API accepted the password.
    succeeded: AtomicU64,
    /// The gateway refused (429, 423, 403).
    refused: AtomicU64,
    /// Answered only after the progressive delay held it.
    delayed: AtomicU64,
    failed: AtomicU64,
}

#[derive(Default)]
struct Tallies {
    users: Tally,
    stuffers: Tally,
    guesser: Tally,
    /// Real users who were refused at least once.
    users_refused: AtomicU64,
    /// Accounts an attacker logged in to.
    taken_over: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl Tallies {
    fn of(&self, role: Role) -> &Tally {
        match role {
            Role::User => &self.users,
            Role::Stuffer => &self.stuffers,
            Role::Guesser => &self.guesser,
        }
    }
}

/// Runs the scenario.
pub fn run(args: &LoginScenarioArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let seconds = args.seconds.clamp(12, 3600);
    let scale = 3600.0 / seconds as f64;
    println!(
        "one simulated hour in {seconds} s (every duration divided by {scale:.0}); {ACCOUNTS} accounts, {USERS} real users (who logged in once before the hour) logging in twice each (10% mistype first), {STUFFERS} stuffing addresses at 1 guess per second each ({} passwords x {} user names), 1 brute-force address on accounts {TARGETED:?}\n",
        COMMON_PASSWORDS.len(),
        2 * ACCOUNTS
    );
    let mut rows = Vec::new();
    for setting in &SETTINGS {
        let tallies = runtime.block_on(replay(setting, scale, seconds))?;
        report(setting.label, &tallies);
        rows.push((setting.label, tallies));
    }
    println!("| setting | attacker guesses reaching the API per hour | accounts taken over | real users' logins delayed | refused | users refused at least once |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, t) in &rows {
        let users = &t.users;
        let sent = users.sent.load(Ordering::Relaxed).max(1) as f64;
        println!(
            "| {label} | {} | {} | {:.1}% | {:.1}% | {} of {USERS} |",
            t.stuffers.reached.load(Ordering::Relaxed) + t.guesser.reached.load(Ordering::Relaxed),
            t.taken_over.lock().map_or(0, |t| t.len()),
            100.0 * users.delayed.load(Ordering::Relaxed) as f64 / sent,
            100.0 * users.refused.load(Ordering::Relaxed) as f64 / sent,
            t.users_refused.load(Ordering::Relaxed),
        );
    }
    Ok(())
}

fn report(label: &str, t: &Tallies) {
    println!("== {label} ==");
    println!(
        "{:<22} {:>7} {:>8} {:>10} {:>8} {:>8} {:>7}",
        "who", "sent", "reached", "succeeded", "refused", "delayed", "errors"
    );
    for (who, tally) in [
        ("real users", &t.users),
        ("stuffers (5 addresses)", &t.stuffers),
        ("brute-force guesser", &t.guesser),
    ] {
        println!(
            "{:<22} {:>7} {:>8} {:>10} {:>8} {:>8} {:>7}",
            who,
            tally.sent.load(Ordering::Relaxed),
            tally.reached.load(Ordering::Relaxed),
            tally.succeeded.load(Ordering::Relaxed),
            tally.refused.load(Ordering::Relaxed),
            tally.delayed.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
        );
    }
    println!();
}

/// The configuration text of `setting`, its simulated durations scaled down.
fn configuration(setting: &Setting, upstream: SocketAddr, scale: f64) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\nmax_delayed = 100000\n[store]\nkind = \"memory\"\n{}",
        setting.config.replace("LOGIN", LOGIN)
    );
    // {s:N}: N simulated seconds as a real duration; {s_ms:N}: N simulated milliseconds
    // as a real number of milliseconds; {x:N}: a rate of N per simulated second.
    for (kind, render) in [
        (
            "{s:",
            (|n: f64, scale: f64| format!("{}ms", ((n * 1000.0 / scale).round() as u64).max(1)))
                as fn(f64, f64) -> String,
        ),
        ("{s_ms:", |n, scale| format!("{:.3}", n / scale)),
        ("{x:", |n, scale| format!("{:.1}", n * scale)),
    ] {
        while let Some(start) = text.find(kind) {
            let Some(len) = text[start..].find('}') else {
                break;
            };
            let Ok(n) = text[start + kind.len()..start + len].parse::<f64>() else {
                break;
            };
            text.replace_range(start..start + len + 1, &render(n, scale));
        }
    }
    text
}

async fn replay(setting: &Setting, scale: f64, seconds: u64) -> anyhow::Result<Tallies> {
    let api = TcpListener::bind("127.0.0.1:0").await?;
    let text = configuration(setting, api.local_addr()?, scale);
    let api_task = tokio::spawn(login_api(api));
    let config =
        config::parse(&text).map_err(|e| anyhow::anyhow!("login scenario configuration: {e}"))?;
    let delay_floor = Duration::from_secs_f64(0.8 / scale);
    let bound = Bound::new(config).await?;
    let gateway = bound.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));
    // Yesterday: every real user logged in once from their address (what lockout_scope
    // = "account+ip" knows them by). Not counted.
    let history = Arc::new(Tallies::default());
    let mut yesterday = tokio::task::JoinSet::new();
    for u in 0..USERS {
        let history = history.clone();
        yesterday.spawn(async move {
            let http = client_from(address(30, u));
            let password = password_of(u);
            attempt(
                &http,
                gateway,
                u,
                &password,
                Role::User,
                &history,
                delay_floor,
            )
            .await
        });
    }
    yesterday.join_all().await;
    let tallies = Arc::new(Tallies::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let sim = move |simulated_seconds: f64| Duration::from_secs_f64(simulated_seconds / scale);
    let mut tasks = Vec::new();
    for u in 0..USERS {
        let (tallies, address) = (tallies.clone(), address(30, u));
        tasks.push(tokio::spawn(async move {
            let http = client_from(address);
            let mut rng = Rng(u.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let account = u;
            let mut refused_once = false;
            // Two logins at random moments of the hour.
            let mut moments = [rng.below(3600), rng.below(3600)];
            moments.sort_unstable();
            for at in moments {
                tokio::time::sleep_until(start + sim(at as f64)).await;
                if Instant::now() >= deadline {
                    break;
                }
                if rng.below(10) == 0 {
                    let wrong = format!("{}x", password_of(account));
                    let outcome = attempt(
                        &http,
                        gateway,
                        account,
                        &wrong,
                        Role::User,
                        &tallies,
                        delay_floor,
                    )
                    .await;
                    refused_once |= outcome == Some(false);
                    tokio::time::sleep(sim(5.0)).await;
                }
                let outcome = attempt(
                    &http,
                    gateway,
                    account,
                    &password_of(account),
                    Role::User,
                    &tallies,
                    delay_floor,
                )
                .await;
                refused_once |= outcome == Some(false);
            }
            if refused_once {
                tallies.users_refused.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for s in 0..STUFFERS {
        let tallies = tallies.clone();
        tasks.push(tokio::spawn(async move {
            let http = client_from(address(20, s));
            let mut next = Instant::now();
            let mut n = s;
            while Instant::now() < deadline {
                // Each source takes every STUFFERS-th (user name, password) pair: real
                // and made-up user names, every common password.
                let name = n % (2 * ACCOUNTS);
                let password = COMMON_PASSWORDS[(n / (2 * ACCOUNTS)) as usize % 3];
                attempt(
                    &http,
                    gateway,
                    name,
                    password,
                    Role::Stuffer,
                    &tallies,
                    delay_floor,
                )
                .await;
                n += STUFFERS;
                next += sim(1.0);
                tokio::time::sleep_until(next).await;
            }
        }));
    }
    {
        let tallies = tallies.clone();
        tasks.push(tokio::spawn(async move {
            let http = client_from(address(21, 0));
            let mut next = Instant::now();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let account = TARGETED[(n % 3) as usize];
                let password = format!("guess-{n}");
                attempt(
                    &http,
                    gateway,
                    account,
                    &password,
                    Role::Guesser,
                    &tallies,
                    delay_floor,
                )
                .await;
                n += 1;
                next += sim(1.0);
                tokio::time::sleep_until(next).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = stop.send(());
    let _ = server.await;
    api_task.abort();
    Arc::try_unwrap(tallies).map_err(|_| anyhow::anyhow!("clients still running"))
}

/// 127.0.`block`.x from `n`, spilling into the next blocks.
fn address(block: u8, n: u64) -> IpAddr {
    let third = block as u64 + n / 250;
    IpAddr::from([127, 0, third.min(255) as u8, (n % 250 + 1) as u8])
}

/// Sends one login; `Some(true)` if the API answered, `Some(false)` if the gateway
/// refused, `None` on a transport error.
async fn attempt(
    http: &Http,
    gateway: SocketAddr,
    account: u64,
    password: &str,
    role: Role,
    tallies: &Tallies,
    delay_floor: Duration,
) -> Option<bool> {
    let tally = tallies.of(role);
    let body = format!(r#"{{"username":"user{account}@example.com","password":"{password}"}}"#);
    let request = Request::post(format!("http://{gateway}/api/v1/auth/login"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
        )
        .body(Full::new(Bytes::from(body)))
        .ok()?;
    tally.sent.fetch_add(1, Ordering::Relaxed);
    let sent = Instant::now();
    let response = match http.request(request).await {
        Ok(r) => r,
        Err(_) => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let status = response.status();
    let _ = response.into_body().collect().await;
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::LOCKED | StatusCode::FORBIDDEN
    ) {
        tally.refused.fetch_add(1, Ordering::Relaxed);
        return Some(false);
    }
    tally.reached.fetch_add(1, Ordering::Relaxed);
    if status == StatusCode::OK {
        tally.succeeded.fetch_add(1, Ordering::Relaxed);
        if role != Role::User {
            if let Ok(mut taken) = tallies.taken_over.lock() {
                taken.insert(account);
            }
        }
    }
    if sent.elapsed() >= delay_floor {
        tally.delayed.fetch_add(1, Ordering::Relaxed);
    }
    Some(true)
}

/// The sample login API: `user{i}@example.com` for i below [`ACCOUNTS`] with
/// [`password_of`]; 200 or 401.
async fn login_api(listener: TcpListener) {
    answer_with_statuses(listener, |_, body| {
        let fields: Option<(String, String)> = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                Some((
                    v.get("username")?.as_str()?.to_owned(),
                    v.get("password")?.as_str()?.to_owned(),
                ))
            });
        let accepted = fields.is_some_and(|(user, password)| {
            user.strip_prefix("user")
                .and_then(|rest| rest.strip_suffix("@example.com"))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n < ACCOUNTS && password == password_of(n))
        });
        if accepted {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        }
    })
    .await;
}
