//! What one worker thread's requests share, held so that serving a request writes no
//! cache line another worker writes too: the worker's handles on the gateway, on its
//! upstream pool and on the request counters, and its own reference to the running
//! policy.
//!
//! Cloning an `Arc` writes its reference count. When every request took its own clone
//! of the gateway and of the policy, every worker wrote those two counts on every
//! request, and their cache lines moved between cores each time (on two cores, perf put
//! 12.8% of the request handler's own samples on the increment of the policy's count;
//! more cores contend more). A worker's `Arc<Worker>`, and the policy handle it gives
//! each request, are counted by its thread alone.

use super::forward::Upstream;
use super::Gateway;
use crate::metrics::{PerWorkerCounter, RuleDecision};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use ratewarden_core::policy::{Policy, Rule};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The running policy, replaced whole on reload, and a count of replacements that lets
/// each worker see a new one by reading a number, without writing anything shared.
pub struct PolicyCell {
    current: ArcSwap<Policy>,
    generation: AtomicU64,
}

impl PolicyCell {
    /// A cell holding `policy`.
    pub fn new(policy: Policy) -> PolicyCell {
        PolicyCell {
            current: ArcSwap::from_pointee(policy),
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the running policy: each worker takes it up at its next request, and
    /// requests already running finish under the one they started with.
    pub fn replace(&self, policy: Policy) {
        self.current.store(Arc::new(policy));
        // After the store: a worker that sees the new count loads the new policy.
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// One worker thread's share of the gateway.
pub struct Worker {
    /// The worker's number, from 0: which copy of per-worker metrics it writes.
    pub index: usize,
    /// What every worker shares.
    pub gateway: Arc<Gateway>,
    /// This worker's upstream connection pool.
    pub upstream: Arc<Upstream>,
    policy: PolicyCache,
    /// Handles on the request counters this worker has used, by rule and decision, so
    /// that a request neither builds a label set nor takes the metric family's lock. A
    /// list, not a map: it holds a few dozen entries, and a scan costs less than hashing.
    counters: Mutex<Vec<((u64, &'static str), PerWorkerCounter)>>,
}

impl Worker {
    /// The worker numbered `index`, serving for `gateway` through `upstream`.
    pub fn new(index: usize, gateway: Arc<Gateway>, upstream: Arc<Upstream>) -> Worker {
        let policy = PolicyCache::new(&gateway.policy);
        Worker {
            index,
            gateway,
            upstream,
            policy,
            counters: Mutex::new(Vec::new()),
        }
    }

    /// The running policy, for a request to hold until it is answered.
    pub fn policy(&self) -> Arc<LocalPolicy> {
        self.policy.get(&self.gateway.policy)
    }

    /// Counts a request under `rule` as `decision`, in this worker's copy.
    pub fn count(&self, rule: &Rule, decision: &'static str) {
        let key = (rule.name.fingerprint(), decision);
        let mut counters = self.counters.lock();
        if let Some((_, counter)) = counters.iter().find(|(k, _)| *k == key) {
            counter.inc(self.index);
            return;
        }
        let counter = self
            .gateway
            .metrics
            .requests
            .get_or_create(&RuleDecision {
                rule: rule.name.as_str().to_owned(),
                decision,
            })
            .clone();
        counter.inc(self.index);
        counters.push((key, counter));
    }
}

/// The shared policy as one worker holds it: requests clone an `Arc` of this, whose
/// count only the worker's thread writes, rather than the policy's own `Arc`.
pub struct LocalPolicy(Arc<Policy>);

impl std::ops::Deref for LocalPolicy {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        &self.0
    }
}

/// The policy as one worker last took it from the [`PolicyCell`], and the cell's count
/// of replacements then. Its lock is taken by the worker's thread only.
struct PolicyCache(Mutex<(u64, Arc<LocalPolicy>)>);

impl PolicyCache {
    fn new(cell: &PolicyCell) -> PolicyCache {
        let generation = cell.generation.load(Ordering::Acquire);
        PolicyCache(Mutex::new((
            generation,
            Arc::new(LocalPolicy(cell.current.load_full())),
        )))
    }

    /// The cell's policy: the one held, unless the cell's has been replaced since. (An
    /// idle worker keeps the old one in memory until its next request.)
    fn get(&self, cell: &PolicyCell) -> Arc<LocalPolicy> {
        // The count before the policy: a count read first can only be older than the
        // policy then loaded, so at worst the next request loads it once more. The other
        // order could keep a new count with an old policy for good.
        let generation = cell.generation.load(Ordering::Acquire);
        let mut held = self.0.lock();
        if held.0 != generation {
            *held = (generation, Arc::new(LocalPolicy(cell.current.load_full())));
        }
        held.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::{PolicyCache, PolicyCell};
    use ratewarden_core::policy::Policy;
    use std::sync::Arc;

    fn policy_with_rules(n: usize) -> Policy {
        let mut text =
            String::from("[server]\nlisten = \"127.0.0.1:1\"\nupstream = \"http://127.0.0.1:2\"\n");
        for i in 0..n {
            text.push_str(&format!("[[rules]]\nname = \"r{i}\"\nrate = \"1/s\"\n"));
        }
        crate::config::parse(&text).expect("a valid config").policy
    }

    #[test]
    fn a_worker_takes_up_a_replaced_policy_at_its_next_request_only() {
        let cell = PolicyCell::new(policy_with_rules(1));
        let worker = PolicyCache::new(&cell);
        let first = worker.get(&cell);
        let again = worker.get(&cell);
        assert_eq!(first.rules.len(), 1);
        // Unchanged: the same reference of the worker's own, the shared one untouched.
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(
            Arc::strong_count(&first),
            3,
            "the worker's and two requests'"
        );

        cell.replace(policy_with_rules(2));
        let after = worker.get(&cell);
        assert_eq!(after.rules.len(), 2);
        // A request that started before the reload keeps its policy to the end.
        assert_eq!(first.rules.len(), 1);
        assert!(Arc::ptr_eq(&after, &worker.get(&cell)));

        cell.replace(policy_with_rules(3));
        cell.replace(policy_with_rules(4));
        assert_eq!(worker.get(&cell).rules.len(), 4, "two reloads in a row");
    }
}
