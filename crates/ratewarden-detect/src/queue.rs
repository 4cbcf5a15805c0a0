//! A bounded queue that, when full, drops its least urgent, oldest item.
//!
//! Alerting must never slow a request and never grow without bound: a flood from many
//! clients fills the queue, and then each new item displaces the oldest of the least
//! severe items held (or is itself dropped, if everything held is more severe). Every
//! drop is counted.

use crate::alert::Severity;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use std::collections::VecDeque;
use tokio::sync::Notify;

/// Something queued, with its urgency.
pub trait Urgency {
    /// How urgent the item is.
    fn severity(&self) -> Severity;
}

/// The queue.
pub struct BoundedQueue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    ready: Notify,
    dropped: Counter,
}

impl<T: Urgency> BoundedQueue<T> {
    /// A queue of at most `capacity` items (at least 1), counting drops in `dropped`.
    pub fn new(capacity: usize, dropped: Counter) -> BoundedQueue<T> {
        BoundedQueue {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity: capacity.max(1),
            ready: Notify::new(),
            dropped,
        }
    }

    /// Adds `item` without waiting; when full, drops the oldest least severe item (the
    /// new one, if all held are more severe).
    pub fn push(&self, item: T) {
        {
            let mut items = self.items.lock();
            if items.len() >= self.capacity {
                let least = items
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, held)| (held.severity(), *i))
                    .map(|(i, held)| (i, held.severity()));
                self.dropped.inc();
                match least {
                    Some((i, severity)) if severity <= item.severity() => {
                        items.remove(i);
                    }
                    _ => return,
                }
            }
            items.push_back(item);
        }
        self.ready.notify_one();
    }

    /// The next item, waiting for one.
    pub async fn pop(&self) -> T {
        loop {
            let notified = self.ready.notified();
            if let Some(item) = self.items.lock().pop_front() {
                return item;
            }
            notified.await;
        }
    }

    /// Moves the oldest items, at most `max` (at least one), to the end of `batch`,
    /// waiting for the first: what queued up while the consumer was busy comes out at
    /// once, and nothing waits for a batch to fill. The consumer keeps `batch` from one
    /// call to the next, so a flood's batches reuse its memory.
    pub async fn pop_up_to(&self, max: usize, batch: &mut Vec<T>) {
        let first = self.pop().await;
        let mut items = self.items.lock();
        let more = items.len().min(max.saturating_sub(1));
        batch.push(first);
        batch.extend(items.drain(..more));
    }

    /// Items held now.
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Item(Severity, u32);
    impl Urgency for Item {
        fn severity(&self) -> Severity {
            self.0
        }
    }

    #[tokio::test]
    async fn full_queues_drop_the_oldest_least_severe_item_and_count_it() {
        let dropped = Counter::default();
        let q = BoundedQueue::new(3, dropped.clone());
        q.push(Item(Severity::Low, 1));
        q.push(Item(Severity::High, 2));
        q.push(Item(Severity::Low, 3));
        q.push(Item(Severity::High, 4)); // drops Low 1
        q.push(Item(Severity::Low, 5)); // drops Low 3
        q.push(Item(Severity::Critical, 6)); // drops Low 5
        q.push(Item(Severity::Low, 7)); // everything held is more severe: 7 is dropped
        assert_eq!(dropped.get(), 4);
        assert_eq!(q.pop().await, Item(Severity::High, 2));
        assert_eq!(q.pop().await, Item(Severity::High, 4));
        assert_eq!(q.pop().await, Item(Severity::Critical, 6));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_batch_takes_what_waits_in_order_and_no_more() {
        let q = BoundedQueue::new(10, Counter::default());
        for i in 1..=5 {
            q.push(Item(Severity::Low, i));
        }
        let q = &q;
        let pop = |max| async move {
            let mut batch = Vec::new();
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                q.pop_up_to(max, &mut batch),
            )
            .await
            .expect("items were there: no waiting");
            batch.into_iter().map(|i| i.1).collect::<Vec<u32>>()
        };
        assert_eq!(pop(3).await, [1, 2, 3]);
        assert_eq!(
            pop(3).await,
            [4, 5],
            "what is there, without waiting for more"
        );
        assert!(q.is_empty());
    }
}
