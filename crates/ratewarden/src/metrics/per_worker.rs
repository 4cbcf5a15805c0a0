//! Prometheus metrics that each gateway worker updates in a copy of its own; a scrape
//! sums the copies. They are for what every request updates.
//!
//! `prometheus_client`'s counter is one atomic and its histogram one mutex, for every
//! thread. Updated on every request, their cache lines would move between the workers'
//! cores on each decision, and with many cores queue them behind one another. Envoy
//! keeps its statistics per thread for this reason, and nginx's workers keep theirs per
//! process.

use crate::gateway::MAX_WORKERS;
use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The most bucket bounds a [`PerWorkerHistogram`] takes: its buckets are kept inline,
/// so that a worker's copy is one block of cache lines of its own.
const MAX_BOUNDS: usize = 31;

/// A counter with one copy per worker (cheap to clone: the copies are shared).
#[derive(Clone, Debug)]
pub struct PerWorkerCounter {
    copies: Arc<[CounterCopy]>,
}

/// One worker's count, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct CounterCopy(AtomicU64);

impl Default for PerWorkerCounter {
    fn default() -> PerWorkerCounter {
        PerWorkerCounter {
            copies: (0..MAX_WORKERS).map(|_| CounterCopy::default()).collect(),
        }
    }
}

impl PerWorkerCounter {
    /// Adds one in the copy of the worker numbered `worker_index`.
    pub fn inc(&self, worker_index: usize) {
        self.copies[worker_index % MAX_WORKERS]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The sum over all copies.
    pub fn get(&self) -> u64 {
        self.copies
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl TypedMetric for PerWorkerCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for PerWorkerCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram with one copy per worker (cheap to clone: the copies are shared).
#[derive(Clone, Debug)]
pub struct PerWorkerHistogram {
    inner: Arc<HistogramCopies>,
}

#[derive(Debug)]
struct HistogramCopies {
    /// Upper bounds of the buckets, ascending and finite; a last bucket takes the rest.
    bounds: Box<[f64]>,
    copies: Box<[HistogramCopy]>,
}

/// One worker's observations, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct HistogramCopy(Mutex<Tally>);

#[derive(Debug)]
struct Tally {
    sum: f64,
    count: u64,
    /// Observations per bucket (not cumulative); the one after the last bound takes
    /// what is above every bound. Only the first `bounds.len() + 1` are used.
    buckets: [u64; MAX_BOUNDS + 1],
}

impl PerWorkerHistogram {
    /// A histogram with buckets up to each of `bounds` (sorted here; non-finite ones are
    /// left out, as `prometheus_client` does), and one above them all.
    ///
    /// # Panics
    /// With more than 31 finite bounds: a programming error, since bounds are constants.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> PerWorkerHistogram {
        let mut bounds: Vec<f64> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        assert!(
            bounds.len() <= MAX_BOUNDS,
            "a per-worker histogram takes at most {MAX_BOUNDS} bucket bounds"
        );
        let copies = (0..MAX_WORKERS)
            .map(|_| {
                HistogramCopy(Mutex::new(Tally {
                    sum: 0.0,
                    count: 0,
                    buckets: [0; MAX_BOUNDS + 1],
                }))
            })
            .collect();
        PerWorkerHistogram {
            inner: Arc::new(HistogramCopies {
                bounds: bounds.into_boxed_slice(),
                copies,
            }),
        }
    }

    /// Records `value` in the copy of the worker numbered `worker_index`. A value counts
    /// in the first bucket whose bound it does not exceed (Prometheus's `le`); NaN in
    /// the last.
    pub fn observe(&self, worker_index: usize, value: f64) {
        let bounds = &self.inner.bounds;
        let bucket = if value.is_nan() {
            bounds.len()
        } else {
            bounds.partition_point(|bound| *bound < value)
        };
        let mut tally = self.inner.copies[worker_index % MAX_WORKERS].0.lock();
        tally.sum += value;
        tally.count += 1;
        tally.buckets[bucket] += 1;
    }

    /// Sum, count and per-bucket counts (upper bound, observations) over all copies.
    fn total(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let bounds = &self.inner.bounds;
        let mut buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .map(|bound| (bound, 0))
            .collect();
        let (mut sum, mut count) = (0.0, 0);
        for copy in self.inner.copies.iter() {
            let tally = copy.0.lock();
            sum += tally.sum;
            count += tally.count;
            for (total, n) in buckets.iter_mut().zip(tally.buckets.iter()) {
                total.1 += n;
            }
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for PerWorkerHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for PerWorkerHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.total();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::{PerWorkerCounter, PerWorkerHistogram, MAX_WORKERS};
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    fn text(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    /// The text of one shared histogram and of a per-worker one, given the same values,
    /// spread over every copy and past the last one (where workers share copies).
    fn both(values: &[f64]) -> (String, String) {
        let bounds = [0.25, 0.5, 1.0, 4.0];
        let shared = Histogram::new(bounds);
        let per_worker = PerWorkerHistogram::new(bounds);
        for (i, v) in values.iter().enumerate() {
            shared.observe(*v);
            per_worker.observe(i * 13, *v);
        }
        assert!(values.len() * 13 > MAX_WORKERS, "reaches past the copies");
        (
            text(|r| r.register("decision_seconds", "help", per_worker)),
            text(|r| r.register("decision_seconds", "help", shared)),
        )
    }

    #[test]
    fn copies_sum_to_what_one_shared_histogram_reports() {
        // Exact in binary, so the sums agree whatever order they are added in; values
        // on a bound count in its bucket.
        let values = [0.0, 0.125, 0.25, 0.375, 0.5, 1.0, 2.0, 4.0, 8.0, -1.0];
        let (got, expected) = both(&values);
        assert_eq!(got, expected);
        assert!(got.contains("decision_seconds_sum 15.25"), "{got}");
        assert!(got.contains("decision_seconds_count 10"), "{got}");
        assert!(
            got.contains("decision_seconds_bucket{le=\"0.25\"} 4"),
            "{got}"
        );
        assert!(
            got.contains("decision_seconds_bucket{le=\"4.0\"} 9"),
            "{got}"
        );
        assert!(
            got.contains("decision_seconds_bucket{le=\"+Inf\"} 10"),
            "{got}"
        );
    }

    #[test]
    fn nan_and_infinity_count_in_the_last_bucket_as_prometheus_client_counts_them() {
        let (got, expected) = both(&[f64::NAN, f64::INFINITY, 0.5, 0.5, 0.5, 0.5]);
        assert_eq!(got, expected);
        assert!(
            got.contains("decision_seconds_bucket{le=\"4.0\"} 4"),
            "{got}"
        );
        assert!(
            got.contains("decision_seconds_bucket{le=\"+Inf\"} 6"),
            "{got}"
        );
    }

    #[test]
    fn bounds_given_out_of_order_are_sorted() {
        let histogram = PerWorkerHistogram::new([1.0, f64::INFINITY, 0.5, 1.0]);
        histogram.observe(0, 0.75);
        let (_, _, buckets) = histogram.total();
        assert_eq!(buckets, vec![(0.5, 0), (1.0, 1), (f64::INFINITY, 0)]);
    }

    #[test]
    fn workers_observing_at_once_lose_nothing() {
        let histogram = PerWorkerHistogram::new([1.0]);
        std::thread::scope(|s| {
            for worker in 0..4 {
                let histogram = histogram.clone();
                s.spawn(move || {
                    for i in 0..10_000 {
                        histogram.observe(worker, f64::from(i % 2) * 2.0);
                    }
                });
            }
        });
        let (sum, count, buckets) = histogram.total();
        assert_eq!(count, 40_000);
        assert_eq!(sum, 40_000.0);
        assert_eq!(buckets, vec![(1.0, 20_000), (f64::INFINITY, 20_000)]);
    }

    #[test]
    fn a_counter_reads_as_one_shared_counter_would() {
        let shared = Counter::<u64>::default();
        let per_worker = PerWorkerCounter::default();
        for worker in 0..(MAX_WORKERS + 6) {
            shared.inc();
            per_worker.inc(worker);
        }
        let expected = text(|r| r.register("requests", "help", shared));
        let got = text(|r| r.register("requests", "help", per_worker.clone()));
        assert_eq!(got, expected);
        assert!(got.contains("requests_total 70"), "{got}");
        std::thread::scope(|s| {
            for worker in 0..4 {
                let counter = per_worker.clone();
                s.spawn(move || (0..10_000).for_each(|_| counter.inc(worker)));
            }
        });
        assert_eq!(per_worker.get(), 40_070);
    }
}
