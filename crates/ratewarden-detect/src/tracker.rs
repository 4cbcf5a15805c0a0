//! Violations counted per client in the store, the threshold, and the cooldown.
//!
//! Counts live in the store (memory, or Redis shared by every gateway), as counters of
//! their own: a sliding window over `window` whose used units are the violations, and a
//! one-per-`cooldown` bucket that says whether this identity may be alerted on now. So
//! several gateways agree on the count and raise one alert per cooldown between them.
//! When the store fails, an in-process store stands in (counts per instance meanwhile).
//!
//! What the store cannot say cheaply stays here, per instance and bounded: when this
//! gateway first saw the identity violate, and how many violations the cooldown
//! suppressed since its last alert.

use crate::alert::{Alert, IdentityKind, Severity, Violation};
use parking_lot::Mutex;
use ratewarden_core::clock::Clock;
use ratewarden_core::{Gcra, Limit, Nanos, Rate, RuleName, SlidingWindow};
use ratewarden_store::{Check, CounterKey, MemoryStore, Store};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::Duration;

/// `[abuse]`, validated.
#[derive(Clone, Debug)]
pub struct AbuseSettings {
    /// Violations are counted over this sliding window.
    pub window: Duration,
    /// The violation count (within the window) that raises an alert.
    pub alert_after: u32,
    /// At most one alert per identity per cooldown.
    pub cooldown: Duration,
    /// Which identities are tracked.
    pub track: Vec<IdentityKind>,
    /// Whether the upstream's own 429s count.
    pub count_upstream_429: bool,
    /// This gateway's name in alerts.
    pub instance: String,
    /// Alerts that may wait for one sink; beyond, the oldest least severe are dropped.
    pub sink_queue: usize,
}

/// The sliding window's units: far above any violation count, so it only counts.
const COUNT_CAPACITY: u32 = 1_000_000;
/// Identities whose first-seen time and suppressed count are remembered.
const REMEMBERED: usize = 100_000;

/// What one violation leads to, per tracked identity.
#[derive(Debug)]
pub enum Outcome {
    /// Below the threshold: a warning line.
    Warning {
        /// Which identity.
        identity: IdentityKind,
        /// Its value (address or pseudonym).
        value: String,
        /// Violations in the window.
        count: u64,
    },
    /// An alert to send.
    Alert(Box<Alert>),
    /// Over the threshold, within the cooldown: counted for the next alert.
    Suppressed {
        /// How long the cooldown still lasts.
        cooldown_left: Duration,
    },
}

impl Outcome {
    /// How long, from now, this identity cannot raise an alert whatever it does:
    /// counting its violations later within that time changes nothing but the moment.
    pub fn quiet_for(&self, cooldown: Duration) -> Duration {
        match self {
            Outcome::Warning { .. } => Duration::ZERO,
            Outcome::Alert(_) => cooldown,
            Outcome::Suppressed { cooldown_left } => *cooldown_left,
        }
    }
}

#[derive(Clone, Copy)]
struct Remembered {
    first_seen: u64,
    last_seen: u64,
    suppressed: u64,
}

/// Counts violations and decides on alerts.
pub struct Tracker<S, C: Clock> {
    store: S,
    fallback: MemoryStore<C>,
    settings: AbuseSettings,
    counting: Limit,
    cooldown: Limit,
    counter_names: HashMap<IdentityKind, (RuleName, RuleName)>,
    remembered: Mutex<HashMap<(IdentityKind, String), Remembered>>,
}

impl<S: Store, C: Clock> Tracker<S, C> {
    /// A tracker counting in `store`, with `fallback` for when it fails; refuses a
    /// window or cooldown that no counter can represent.
    pub fn new(
        store: S,
        fallback: MemoryStore<C>,
        settings: AbuseSettings,
    ) -> Result<Tracker<S, C>, String> {
        let window = Nanos::from(settings.window);
        let cooldown = Nanos::from(settings.cooldown);
        let counting = Rate::new(COUNT_CAPACITY, window)
            .and_then(|r| SlidingWindow::new(r).ok())
            .map(Limit::SlidingWindow)
            .ok_or_else(|| format!("window {:?} cannot be counted", settings.window))?;
        let cooldown = Rate::new(1, cooldown)
            .and_then(|r| Gcra::new(r, 1).ok())
            .map(Limit::Gcra)
            .ok_or_else(|| format!("cooldown {:?} cannot be counted", settings.cooldown))?;
        let version = format!("{:?}/{:?}", settings.window, settings.cooldown);
        let counter_names = [IdentityKind::Ip, IdentityKind::User, IdentityKind::ApiKey]
            .into_iter()
            .map(|kind| {
                (
                    kind,
                    (
                        RuleName::versioned(
                            &format!("abuse.violations.{}", kind.as_str()),
                            &version,
                        ),
                        RuleName::versioned(&format!("abuse.cooldown.{}", kind.as_str()), &version),
                    ),
                )
            })
            .collect();
        Ok(Tracker {
            store,
            fallback,
            settings,
            counting,
            cooldown,
            counter_names,
            remembered: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &AbuseSettings {
        &self.settings
    }

    /// Counts violations described by `violation` (one of a batch from one client)
    /// against each tracked identity it has: `network` of them against its address (or
    /// IPv6 network), `own` against its user id and API key. Either may be 0: users
    /// behind one address are counted each for their own violations, and the address
    /// once for all of them.
    pub async fn observe(&self, violation: &Violation, network: u32, own: u32) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for &kind in &self.settings.track {
            let (value, n) = match kind {
                IdentityKind::Ip => (Some(&violation.client_network), network),
                IdentityKind::User => (violation.user.as_ref(), own),
                IdentityKind::ApiKey => (violation.api_key_id.as_ref(), own),
            };
            if let (Some(value), 1..) = (value, n) {
                self.observe_identity(kind, value.clone(), violation, n, &mut outcomes)
                    .await;
            }
        }
        outcomes
    }

    async fn observe_identity(
        &self,
        kind: IdentityKind,
        value: String,
        v: &Violation,
        n: u32,
        outcomes: &mut Vec<Outcome>,
    ) {
        let Some((counter, cooldown)) = self.counter_names.get(&kind) else {
            return;
        };
        let n = n.min(COUNT_CAPACITY);
        let key = CounterKey::new(counter, &value);
        let counted = match Check::new(key, self.counting, n) {
            Ok(check) => self.decide(check).await,
            Err(_) => return,
        };
        let count = u64::from(COUNT_CAPACITY.saturating_sub(counted.remaining));
        let seconds = v.at_nanos / 1_000_000_000;
        let remembered = self.remember(kind, &value, seconds);
        let alert_after = u64::from(self.settings.alert_after);
        // One warning per violation below the threshold (at most alert_after - 1 per
        // identity and window, however many came in this batch).
        let before = count.saturating_sub(u64::from(n));
        for number in (before + 1)..=count.min(alert_after.saturating_sub(1)) {
            outcomes.push(Outcome::Warning {
                identity: kind,
                value: value.clone(),
                count: number,
            });
        }
        if count < alert_after {
            return;
        }
        let may_alert = self
            .decide(Check::one(CounterKey::new(cooldown, &value), self.cooldown))
            .await;
        if !may_alert.allowed {
            self.add_suppressed(kind, &value, u64::from(n));
            outcomes.push(Outcome::Suppressed {
                cooldown_left: may_alert.retry_after.to_duration(),
            });
            return;
        }
        let suppressed = self.take_suppressed(kind, &value);
        let severity = if count >= 10 * u64::from(self.settings.alert_after) {
            Severity::Critical
        } else {
            Severity::High
        };
        outcomes.push(Outcome::Alert(Box::new(Alert {
            id: Alert::new_id(),
            kind: "rate_limit_abuse",
            severity,
            identity: kind,
            identity_value: value,
            client_ip: v.client_ip.to_string(),
            client_network: v.client_network.clone(),
            violations: count,
            window_seconds: self.settings.window.as_secs(),
            violations_since_last_alert: suppressed + u64::from(n),
            rules: v.rules.clone(),
            source: v.source,
            method: v.method.clone(),
            path: v.path.clone(),
            user_agent: v.user_agent.clone(),
            authenticated: v.authenticated,
            user: v.user.clone(),
            api_key_id: v.api_key_id.clone(),
            first_violation: remembered.first_seen,
            last_violation: seconds,
            instance: self.settings.instance.clone(),
            threat: None,
            login: None,
        })));
    }

    async fn decide(&self, check: Check<'_>) -> ratewarden_core::Decision {
        let decisions = match self.store.decide(&[check]).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "abuse tracking: store failed; counting locally");
                self.fallback.decide_now(&[check])
            }
        };
        decisions
            .as_slice()
            .first()
            .copied()
            .unwrap_or(ratewarden_core::Decision {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset_after: Nanos::ZERO,
                retry_after: Nanos::ZERO,
            })
    }

    fn remember(&self, kind: IdentityKind, value: &str, now: u64) -> Remembered {
        let mut map = self.remembered.lock();
        let window = self.settings.window.as_secs();
        if map.len() >= REMEMBERED && !map.contains_key(&(kind, value.to_owned())) {
            map.retain(|_, r| r.last_seen.saturating_add(window) > now);
            // Free a tenth at least, so a flood does not rescan the map for every new
            // identity.
            if map.len() >= REMEMBERED * 9 / 10 {
                // A flood of more identities than remembered: start over rather than
                // grow. First-seen times are then only as old as this moment.
                map.clear();
            }
        }
        let entry = map.entry((kind, value.to_owned())).or_insert(Remembered {
            first_seen: now,
            last_seen: now,
            suppressed: 0,
        });
        if entry.last_seen.saturating_add(window) <= now {
            // Quiet for a whole window: a new episode.
            *entry = Remembered {
                first_seen: now,
                last_seen: now,
                suppressed: 0,
            };
        }
        entry.last_seen = now;
        *entry
    }

    fn add_suppressed(&self, kind: IdentityKind, value: &str, n: u64) {
        if let Some(r) = self.remembered.lock().get_mut(&(kind, value.to_owned())) {
            r.suppressed += n;
        }
    }

    fn take_suppressed(&self, kind: IdentityKind, value: &str) -> u64 {
        self.remembered
            .lock()
            .get_mut(&(kind, value.to_owned()))
            .map_or(0, |r| std::mem::take(&mut r.suppressed))
    }
}

/// A tracker with an in-process store only (tests, and the memory configuration).
pub fn local_fallback<C: Clock>(clock: C) -> MemoryStore<C> {
    MemoryStore::with_clock(
        NonZeroUsize::new(200_000).unwrap_or(NonZeroUsize::MIN),
        clock,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Source;
    use ratewarden_core::clock::SystemClock;

    fn violation(user: &str) -> Violation {
        Violation {
            at_nanos: 1_700_000_000_000_000_000,
            client_ip: "192.0.2.7".parse().expect("address"),
            client_network: "192.0.2.7".into(),
            user: Some(user.into()),
            api_key_id: None,
            authenticated: true,
            rules: vec!["api".into()],
            source: Source::Gateway,
            method: "GET".into(),
            path: "/".into(),
            user_agent: None,
        }
    }

    /// Each outcome in a word: `alert ip 192.0.2.7 5`, `warning user alice`.
    fn summary(outcomes: &[Outcome]) -> Vec<String> {
        outcomes
            .iter()
            .map(|outcome| match outcome {
                Outcome::Alert(a) => format!(
                    "alert {} {} {}",
                    a.identity.as_str(),
                    a.identity_value,
                    a.violations
                ),
                Outcome::Warning {
                    identity, value, ..
                } => format!("warning {} {value}", identity.as_str()),
                Outcome::Suppressed { .. } => "suppressed".to_owned(),
            })
            .collect()
    }

    #[test]
    fn an_address_counts_every_violation_and_each_user_only_its_own() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let tracker = Tracker::new(
            local_fallback(SystemClock::new()),
            local_fallback(SystemClock::new()),
            AbuseSettings {
                window: Duration::from_secs(3600),
                alert_after: 3,
                cooldown: Duration::from_secs(600),
                track: vec![IdentityKind::Ip, IdentityKind::User],
                count_upstream_429: true,
                instance: "test".into(),
                sink_queue: 10,
            },
        )
        .expect("tracker");
        // One batch from 192.0.2.7: alice once, bob four times.
        let alice = runtime.block_on(tracker.observe(&violation("alice"), 5, 1));
        assert_eq!(
            summary(&alice),
            [
                "warning ip 192.0.2.7",
                "warning ip 192.0.2.7",
                "alert ip 192.0.2.7 5",
                "warning user alice"
            ]
        );
        let bob = runtime.block_on(tracker.observe(&violation("bob"), 0, 4));
        assert_eq!(
            summary(&bob),
            ["warning user bob", "warning user bob", "alert user bob 4"],
            "the address is not counted again"
        );
    }
}
