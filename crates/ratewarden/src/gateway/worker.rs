//! What one worker thread's requests share, held so that serving a request writes no
//! cache line another worker writes too: the worker's handles on the gateway and on its
//! upstream pool, and its own reference to the running policy.
//!
//! Cloning an `Arc` writes its reference count. When every request took its own clone
//! of the gateway and of the policy, every worker wrote those two counts on every
//! request, and their cache lines moved between cores each time (perf put about 18% of
//! the request handler's own samples on the policy's count, on two cores; more cores
//! contend more). A worker's `Arc<Worker>`, and the policy reference it hands out, are
//! counted by its thread alone.

use super::forward::Upstream;
use super::Gateway;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use ratewarden_core::policy::Policy;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The running policy, replaced whole on reload, and a count of replacements that lets
/// each worker see a new one with a plain read.
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
    policy: WorkerPolicy,
}

impl Worker {
    /// The worker numbered `index`, serving for `gateway` through `upstream`.
    pub fn new(index: usize, gateway: Arc<Gateway>, upstream: Arc<Upstream>) -> Worker {
        let policy = WorkerPolicy::new(&gateway.policy);
        Worker {
            index,
            gateway,
            upstream,
            policy,
        }
    }

    /// The running policy, held for as long as a request needs it.
    pub fn policy(&self) -> Arc<PolicyRef> {
        self.policy.current(&self.gateway.policy)
    }
}

/// A worker's own reference on the shared policy: requests clone an `Arc` of this, whose
/// count only the worker's thread writes, rather than the policy's own `Arc`.
pub struct PolicyRef(Arc<Policy>);

impl std::ops::Deref for PolicyRef {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        &self.0
    }
}

/// The policy as one worker last took it from the [`PolicyCell`], and the cell's count
/// of replacements then.
struct WorkerPolicy(Mutex<(u64, Arc<PolicyRef>)>);

impl WorkerPolicy {
    fn new(cell: &PolicyCell) -> WorkerPolicy {
        let generation = cell.generation.load(Ordering::Acquire);
        WorkerPolicy(Mutex::new((
            generation,
            Arc::new(PolicyRef(cell.current.load_full())),
        )))
    }

    /// The cell's policy: the one held, unless the cell's has been replaced since.
    fn current(&self, cell: &PolicyCell) -> Arc<PolicyRef> {
        let generation = cell.generation.load(Ordering::Acquire);
        let mut held = self.0.lock();
        if held.0 != generation {
            *held = (generation, Arc::new(PolicyRef(cell.current.load_full())));
        }
        held.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::{PolicyCell, WorkerPolicy};
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
        let worker = WorkerPolicy::new(&cell);
        let first = worker.current(&cell);
        let again = worker.current(&cell);
        assert_eq!(first.rules.len(), 1);
        // Unchanged: the same reference of the worker's own, the shared one untouched.
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(
            Arc::strong_count(&first),
            3,
            "the worker's and two requests'"
        );

        cell.replace(policy_with_rules(2));
        let after = worker.current(&cell);
        assert_eq!(after.rules.len(), 2);
        // A request that started before the reload keeps its policy to the end.
        assert_eq!(first.rules.len(), 1);
        assert!(Arc::ptr_eq(&after, &worker.current(&cell)));

        cell.replace(policy_with_rules(3));
        cell.replace(policy_with_rules(4));
        assert_eq!(worker.current(&cell).rules.len(), 4, "two reloads in a row");
    }
}
