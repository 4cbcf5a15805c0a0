//! Login protection on the request path: an attempt on a `[[login]]` route has its
//! account read (from a bounded prefix of the body, or a header), is admitted or
//! refused by the account's state in the store (lockout, attempts in flight), held or
//! refused for its progressive delay, marked for a challenge, forwarded, and has its
//! outcome (the upstream's status) recorded before the answer goes back, so the next
//! attempt sees it.
//!
//! Accounts and addresses are pseudonymised (keyed HMAC) before they reach the store, a
//! log line or an alert; the password is never looked at.

mod backend;
mod body;

pub use backend::Logins;

use super::forward::{Challenge, Upstream};
use super::handler::trigger;
use super::responses;
use super::threat::{alert_about, deliver, Trigger};
use super::{abuse::AbuseReporter, Body};
use crate::config::StoreConfig;
use crate::metrics::{LoginResult, Metrics};
use body::name_account;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use parking_lot::Mutex;
use ratewarden_core::clock::{Clock, SystemClock};
use ratewarden_core::identity::ClientAddress;
use ratewarden_core::login::{DelayMode, LoginRoute, Named, Outcome};
use ratewarden_core::{Nanos, Timestamp};
use ratewarden_detect::{LoginContext, Pseudonymiser, Sanitiser, Severity};
use ratewarden_store::login::{AccountRules, Admission, Finished, LoginStore};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long an address that logged in successfully stays known (lockout_scope =
/// "account+ip").
const KNOWN_FOR: Nanos = Nanos::from_secs(30 * 86_400);
/// Attack alerts remembered per gateway (to send one per attacker per window).
const MAX_ALERTED: usize = 10_000;

/// Login protection's shared state.
pub struct LoginGuard {
    store: Logins,
    pseudonyms: Pseudonymiser,
    metrics: Arc<Metrics>,
    alerts: Option<Arc<AbuseReporter>>,
    sanitiser: Sanitiser,
    instance: String,
    /// How long an attempt counts as in flight: the longest it can take.
    in_flight_for: Nanos,
    /// How long to wait for the part of a body that names the account.
    body_timeout: Duration,
    /// Attack alerts sent, by subject, until when (one per window).
    alerted: Mutex<HashMap<String, Timestamp>>,
    clock: SystemClock,
}

/// What the handler needs to know about an attempt, besides the response.
#[derive(Default)]
pub struct AttemptNotes {
    /// The client tried more distinct accounts than the route allows (stuffing).
    pub stuffing: bool,
    /// The guard refused the attempt itself (account locked, attempt throttled): when
    /// that is a 429, the gateway's own, and a violation as a rule's 429 is.
    pub refused: bool,
}

impl LoginGuard {
    /// Login protection over `store`.
    pub fn new(
        store: &StoreConfig,
        pseudonyms: Pseudonymiser,
        metrics: Arc<Metrics>,
        alerts: Option<Arc<AbuseReporter>>,
        instance: String,
        longest_attempt: Duration,
        body_timeout: Duration,
    ) -> anyhow::Result<LoginGuard> {
        let store = Logins::new(store)?;
        let sanitiser = alerts
            .as_ref()
            .map_or_else(Sanitiser::default, |a| a.sanitiser().clone());
        Ok(LoginGuard {
            store,
            pseudonyms,
            metrics,
            alerts,
            sanitiser,
            instance,
            in_flight_for: Nanos::from(longest_attempt),
            body_timeout,
            alerted: Mutex::new(HashMap::new()),
            clock: SystemClock::new(),
        })
    }

    fn count(&self, route: &LoginRoute, result: &'static str) {
        self.metrics
            .login_attempts
            .get_or_create(&LoginResult {
                login: route.name.clone(),
                result,
            })
            .inc();
    }

    fn rules(&self, route: &LoginRoute) -> AccountRules {
        AccountRules {
            failures: route.per_account.failures,
            window: route.per_account.window,
            lockout: route.per_account.lockout,
            scope: route.lockout_scope,
            in_flight_for: self.in_flight_for,
            known_for: KNOWN_FOR,
        }
    }
}

/// Runs one login attempt from `client` (`address`: its label) through protection
/// and the upstream.
pub async fn attempt(
    guard: &Arc<LoginGuard>,
    upstream: &Upstream,
    route: &LoginRoute,
    request: Request<Incoming>,
    client: ClientAddress,
    address: &str,
    delayed: &tokio::sync::Semaphore,
) -> (Response<Body>, AttemptNotes) {
    let mut notes = AttemptNotes::default();
    let (mut request, named) = match name_account(guard, route, request).await {
        Ok(read) => read,
        Err(response) => return (response, notes),
    };
    let account = match named {
        Named::Account(account) => account,
        Named::Ambiguous(why) => {
            guard.count(route, "refused_ambiguous");
            return (responses::bad_request(why), notes);
        }
        Named::Missing | Named::Unreadable if route.refuse_unidentified => {
            guard.count(route, "refused_unidentified");
            let detail = format!("a login attempt must name its account ({})", route.account);
            return (responses::bad_request(&detail), notes);
        }
        Named::Missing | Named::Unreadable => {
            // Nothing to count against an account; the per-address limit still applies.
            guard.count(route, "unidentified");
            return (
                upstream.forward_body(request, client, &guard.metrics).await,
                notes,
            );
        }
    };
    let account = guard
        .pseudonyms
        .pseudonym(&format!("login:{}", route.name), &account);
    let address = guard.pseudonyms.pseudonym("address", address);
    let rules = guard.rules(route);
    let admission = guard.store.begin(&account, &address, &rules).await;
    let trigger = trigger(&request, client.ip);
    let attempt = match admission {
        Ok(Admission::Admitted(attempt)) => attempt,
        Ok(Admission::Locked(remaining)) => {
            guard.count(route, "locked");
            notes.stuffing = guard.tried(route, &address, &account, &trigger).await;
            let status =
                StatusCode::from_u16(route.lockout_status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
            notes.refused = true;
            let response = responses::login_refused(
                status,
                "account_locked",
                "too many failed logins on this account; it is locked for a while",
                &route.name,
                remaining,
            );
            return (response, notes);
        }
        Ok(Admission::Busy) => {
            guard.count(route, "throttled");
            notes.stuffing = guard.tried(route, &address, &account, &trigger).await;
            notes.refused = true;
            let response = responses::login_refused(
                StatusCode::TOO_MANY_REQUESTS,
                "login_throttled",
                "other attempts on this account are in progress; try again shortly",
                &route.name,
                Nanos::from_secs(1),
            );
            return (response, notes);
        }
        Err(e) => {
            // Login protection fails open: the per-address limit still holds, and
            // refusing every login while the store is down would lock everyone out.
            guard.count(route, "store_error");
            tracing::warn!(login = %route.name, error = %e, "login store unavailable; attempt forwarded unprotected");
            return (
                upstream.forward_body(request, client, &guard.metrics).await,
                notes,
            );
        }
    };
    // From here the attempt counts as in flight until its outcome is recorded, or,
    // should the client go away first, until the guard releases it.
    let mut in_flight = InFlight {
        guard: guard.clone(),
        account,
        address,
        rules,
        open: true,
    };
    if attempt.addresses >= u64::from(route.stuffing.ips_per_account) {
        guard.attack(
            route,
            &in_flight.address,
            &trigger,
            None,
            Some(attempt.addresses),
            Some(&in_flight.account),
        );
    }
    let exempt = attempt.known_address;
    // The delay runs from the latest failure: a client that waited it out goes on.
    let delay = route
        .delay
        .filter(|_| !exempt)
        .map_or(Nanos::ZERO, |d| d.for_failures(attempt.failures))
        .saturating_sub(attempt.since_failure.unwrap_or(Nanos::MAX));
    if delay > Nanos::ZERO {
        match route.delay_mode {
            DelayMode::Hold => {
                let Ok(_permit) = delayed.try_acquire() else {
                    // As many requests as `max_delayed` allows are already held: the
                    // gateway's capacity speaks, not the client's conduct.
                    guard.count(route, "delay_queue_full");
                    in_flight.finish(Outcome::Inconclusive).await;
                    return (responses::delay_queue_full(delay.to_duration()), notes);
                };
                guard.count(route, "delayed");
                tokio::time::sleep(delay.to_duration()).await;
            }
            DelayMode::Reject => {
                guard.count(route, "throttled");
                in_flight.finish(Outcome::Inconclusive).await;
                notes.refused = true;
                let response = responses::login_refused(
                    StatusCode::TOO_MANY_REQUESTS,
                    "login_throttled",
                    "recent failed logins on this account: wait before trying again",
                    &route.name,
                    delay,
                );
                return (response, notes);
            }
        }
    }
    if route
        .challenge_after
        .is_some_and(|after| attempt.failures >= after && !exempt)
    {
        request
            .extensions_mut()
            .insert(Challenge(HeaderValue::from_static("required")));
    }
    let response = upstream.forward_body(request, client, &guard.metrics).await;
    let outcome = route.outcome(response.status().as_u16());
    guard.count(
        route,
        match outcome {
            Outcome::Failure => "failure",
            Outcome::Success => "success",
            Outcome::Inconclusive => "inconclusive",
        },
    );
    // A failure also counts the account among those the address tried (successes do
    // not: many people logging in behind one NAT are not an attack).
    let (account, address) = (in_flight.account.clone(), in_flight.address.clone());
    let tried = async {
        outcome == Outcome::Failure && guard.tried(route, &address, &account, &trigger).await
    };
    let (finished, stuffing) = tokio::join!(in_flight.finish(outcome), tried);
    notes.stuffing = stuffing;
    if let Some(finished) = finished {
        if let Some(lockout) = finished.locked_for {
            tracing::warn!(login = %route.name, account = %in_flight.account, lockout_seconds = lockout.as_secs_ceil(), "account locked out after repeated failed logins");
        }
    }
    (response, notes)
}

/// An admitted attempt not yet finished: dropped unfinished (the client went away), it
/// is released in the background so it stops counting against the account.
struct InFlight {
    guard: Arc<LoginGuard>,
    account: String,
    address: String,
    rules: AccountRules,
    open: bool,
}

impl InFlight {
    async fn finish(&mut self, outcome: Outcome) -> Option<Finished> {
        self.open = false;
        match self
            .guard
            .store
            .finish(&self.account, &self.address, outcome, &self.rules)
            .await
        {
            Ok(finished) => Some(finished),
            Err(e) => {
                tracing::warn!(error = %e, "login outcome not recorded");
                None
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let (guard, account, address, rules) = (
            self.guard.clone(),
            std::mem::take(&mut self.account),
            std::mem::take(&mut self.address),
            self.rules,
        );
        // Outside a runtime (a shutdown dropping its tasks) nothing can run: the
        // attempt then stops counting when its in-flight time runs out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = guard
                    .store
                    .finish(&account, &address, Outcome::Inconclusive, &rules)
                    .await;
            });
        }
    }
}

impl LoginGuard {
    /// Notes that `address` failed on (or was refused for) `account`; whether it has
    /// now tried enough distinct accounts to count as credential stuffing (alerted
    /// once per window).
    async fn tried(
        &self,
        route: &LoginRoute,
        address: &str,
        account: &str,
        trigger: &Trigger,
    ) -> bool {
        let window = route.per_account.window;
        match self
            .store
            .tried(&route.name, address, account, window)
            .await
        {
            Ok(accounts) if accounts >= u64::from(route.stuffing.accounts_per_ip) => {
                self.attack(route, address, trigger, Some(accounts), None, None);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(login = %route.name, error = %e, "login store unavailable; distinct accounts not counted");
                false
            }
        }
    }

    /// Counts and alerts an attack on `route`: stuffing (`accounts` from one address)
    /// or a distributed guess (`addresses` on one account). One alert per subject per
    /// window from this gateway.
    fn attack(
        &self,
        route: &LoginRoute,
        address: &str,
        trigger: &Trigger,
        accounts: Option<u64>,
        addresses: Option<u64>,
        account: Option<&str>,
    ) {
        let (kind, result, subject) = match account {
            None => ("credential_stuffing", "stuffing", address),
            Some(account) => ("distributed_login_attack", "distributed", account),
        };
        let now = self.clock.now();
        {
            let mut alerted = self.alerted.lock();
            let key = format!("{}\u{0}{subject}", route.name);
            if alerted.get(&key).is_some_and(|until| *until > now) {
                return;
            }
            if alerted.len() >= MAX_ALERTED {
                alerted.retain(|_, until| *until > now);
                if alerted.len() >= MAX_ALERTED {
                    return;
                }
            }
            alerted.insert(key, now.saturating_add(route.per_account.window));
        }
        self.metrics
            .login_attacks
            .get_or_create(&LoginResult {
                login: route.name.clone(),
                result,
            })
            .inc();
        let client = trigger.ip.to_string();
        tracing::warn!(target: "ratewarden::login", login = %route.name, kind, client = %client, distinct_accounts = accounts, distinct_addresses = addresses, account, "login attack detected");
        let mut alert = alert_about(
            kind,
            Severity::Critical,
            &client,
            Some(trigger),
            route.per_account.window,
            &self.sanitiser,
            &self.instance,
        );
        alert.violations = accounts.or(addresses).unwrap_or(0);
        alert.login = Some(LoginContext {
            login: route.name.clone(),
            distinct_accounts: accounts,
            distinct_addresses: addresses,
            account: account.map(str::to_owned),
        });
        deliver(self.alerts.as_deref(), alert);
    }
}
