//! What a store is asked ([`Check`]) and what it answers ([`Decisions`]).

use ratewarden_core::{Decision, Limit, LimitError, RuleName};
use smallvec::SmallVec;

/// Identifies one counter: a rule and the client it limits (`rw:{client}:rule` in Redis).
///
/// Keeping the two parts apart lets every backend encode them its own way in one place
/// (a keyed hash in memory, a hash-tagged key in Redis) without parsing a joined string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey<'a> {
    /// The rule.
    pub rule: &'a RuleName,
    /// The client's identity as the rule's key template built it (an IP, a user id...).
    pub client: &'a str,
}

impl<'a> CounterKey<'a> {
    /// The counter of `rule` for `client`.
    #[inline]
    pub fn new(rule: &'a RuleName, client: &'a str) -> CounterKey<'a> {
        CounterKey { rule, client }
    }
}

/// One limit to check for a request: which counter, under which limit, at what cost.
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    key: CounterKey<'a>,
    limit: Limit,
    cost: u32,
}

impl<'a> Check<'a> {
    /// A check of `cost` units; refused when the cost can never pass the limit, so such a
    /// mistake surfaces where the rule is built, not as a mysterious permanent denial.
    pub fn new(key: CounterKey<'a>, limit: Limit, cost: u32) -> Result<Check<'a>, LimitError> {
        limit.check_cost(cost)?;
        Ok(Check { key, limit, cost })
    }

    /// A check of one unit (every limit admits at least one).
    #[inline]
    pub fn one(key: CounterKey<'a>, limit: Limit) -> Check<'a> {
        Check {
            key,
            limit,
            cost: 1,
        }
    }

    /// The counter.
    #[inline]
    pub fn key(&self) -> CounterKey<'a> {
        self.key
    }

    /// The limit.
    #[inline]
    pub fn limit(&self) -> &Limit {
        &self.limit
    }

    /// Units this request costs.
    #[inline]
    pub fn cost(&self) -> u32 {
        self.cost
    }
}

/// The decisions for one request, one per check, in the order of the checks.
///
/// Each says whether its own limit admits the request. The request passes, and is charged
/// to every limit, only if all of them admit it; otherwise it is charged to none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions(SmallVec<[Decision; 3]>);

impl Decisions {
    /// The decision of a request with one check.
    #[inline]
    pub fn one(decision: Decision) -> Decisions {
        let mut all = SmallVec::new();
        all.push(decision);
        Decisions(all)
    }

    /// Adds the decision of the next check.
    #[inline]
    pub fn push(&mut self, decision: Decision) {
        self.0.push(decision);
    }

    /// Replaces the decision of check `i`.
    pub fn set(&mut self, i: usize, decision: Decision) {
        if let Some(d) = self.0.get_mut(i) {
            *d = decision;
        }
    }

    /// Whether the request passes.
    #[inline]
    pub fn allowed(&self) -> bool {
        self.0.iter().all(|d| d.allowed)
    }

    /// The decisions, in check order.
    pub fn as_slice(&self) -> &[Decision] {
        &self.0
    }

    /// The decision that should speak for the request in headers: for a denial the one
    /// with the longest wait, otherwise the one with the least remaining.
    pub fn most_restrictive(&self) -> Option<(usize, &Decision)> {
        if self.allowed() {
            self.0.iter().enumerate().min_by_key(|(_, d)| d.remaining)
        } else {
            self.0
                .iter()
                .enumerate()
                .filter(|(_, d)| !d.allowed)
                .max_by_key(|(_, d)| d.retry_after)
        }
    }
}

impl FromIterator<Decision> for Decisions {
    fn from_iter<I: IntoIterator<Item = Decision>>(iter: I) -> Decisions {
        Decisions(iter.into_iter().collect())
    }
}

impl Extend<Decision> for Decisions {
    fn extend<I: IntoIterator<Item = Decision>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl std::ops::Index<usize> for Decisions {
    type Output = Decision;
    fn index(&self, i: usize) -> &Decision {
        &self.0[i]
    }
}
