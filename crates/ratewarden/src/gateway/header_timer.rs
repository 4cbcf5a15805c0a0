//! The timer behind HTTP/1's header-read deadline (`[server] header_timeout`).
//!
//! hyper arms that deadline for every request, from the moment a connection waits for
//! the next head until the head has come, and almost never sees one expire. Through
//! tokio's timer each one was a boxed sleep registered in the runtime's timer wheel and
//! taken out again; this way a 429 takes about 340 fewer instructions (2%). Here a
//! deadline is a flag in a slot that its worker's list shares; every tick the list is
//! swept, dropping the slots no one waits on any more and firing those due. A deadline
//! fires up to one tick late, which a timeout of seconds does not notice. A slot no one
//! waits on any more is kept by the sweep to be armed again (up to [`MAX_SPARE`]), so
//! a request head's deadline allocates nothing but the box hyper wants.
//!
//! Each worker has its own timer, so its list is only ever locked by its own thread.
//!
//! The same timer also gives:
//! - each connection its own deadlines ([`Deadline`]: see `connection.rs`), which
//!   hyper's does not cover;
//! - each proxied request the deadline of the upstream's answer
//!   (`[server] upstream_timeout`: see `forward.rs`);
//! - the signal that its worker stops ([`HeaderTimer::stop_signal`]): a slot with no
//!   deadline, fired by [`HeaderTimer::stop`]. A connection looks at the stop signal on
//!   each of its polls, so it must cost one load, where a cancellation future locks a
//!   mutex every time.

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How often the list is swept: the most a deadline fires late.
const TICK: Duration = Duration::from_millis(100);

/// The most slots a worker keeps to arm again: past a burst, the rest are freed.
const MAX_SPARE: usize = 1024;

/// One worker's coarse timer: hyper's HTTP/1 header-read deadlines, and the other
/// deadlines the module's doc lists.
#[derive(Clone, Default)]
pub struct HeaderTimer {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    armed: Mutex<Armed>,
    /// Told when the list stops being empty, so an idle worker's sweeper sleeps.
    armed_again: tokio::sync::Notify,
    /// The worker stops: every stop signal fires, those armed later at once.
    stopped: AtomicBool,
}

#[derive(Default)]
struct Armed {
    /// The slots armed since the last sweep or still pending, in no order, each with its
    /// deadline: `None` for a stop signal, which only [`HeaderTimer::stop`] fires.
    slots: Vec<(Option<Instant>, Arc<Slot>)>,
    /// Slots no one waits on any more, to be armed again.
    spare: Vec<Arc<Slot>>,
}

#[derive(Default)]
struct Slot {
    fired: AtomicBool,
    waker: AtomicWaker,
}

/// A deadline as hyper waits on it; dropping it disarms it (the next sweep lets go of
/// its slot).
struct HeaderSleep {
    slot: Arc<Slot>,
}

impl HeaderTimer {
    /// Fires the deadlines as they come due, until the worker's runtime stops; to be
    /// spawned on that runtime. Sleeps while no deadline is armed.
    pub fn fire_due_forever(&self) -> impl Future<Output = ()> + 'static {
        let shared = self.shared.clone();
        async move {
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if shared.sweep(tokio::time::Instant::now().into_std()) {
                    shared.armed_again.notified().await;
                }
            }
        }
    }
}

impl Shared {
    /// Fires the deadlines due at `now` and forgets them and those no longer waited on;
    /// whether none is left.
    fn sweep(&self, now: Instant) -> bool {
        let mut armed = self.armed.lock();
        let Armed { slots, spare } = &mut *armed;
        let mut i = 0;
        while let Some((deadline, slot)) = slots.get(i) {
            // Only the list holds it: its sleep or deadline was dropped.
            let forgotten = Arc::strong_count(slot) == 1;
            let due = !forgotten && deadline.is_some_and(|deadline| deadline <= now);
            if !forgotten && !due {
                i += 1;
                continue;
            }
            if due {
                slot.fire();
            }
            let (_, slot) = slots.swap_remove(i);
            if forgotten && spare.len() < MAX_SPARE {
                spare.push(slot);
            }
        }
        slots.is_empty()
    }
}

impl hyper::rt::Timer for HeaderTimer {
    /// tokio's clock, as the sweeper reads it (and as tests can pause it).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeaderSleep {
            slot: self.arm(Some(deadline)),
        })
    }
}

impl HeaderTimer {
    /// A [`Deadline`] at `at`.
    pub fn deadline(&self, at: Instant) -> Deadline {
        Deadline {
            slot: self.arm(Some(at)),
            registered: false,
        }
    }

    /// A signal that fires when [`HeaderTimer::stop`] is called (at once if it was),
    /// looked at as a [`Deadline`] is.
    pub fn stop_signal(&self) -> Deadline {
        let slot = self.arm(None);
        // Armed before the flag is read: a `stop` that set it after the read finds the
        // slot on the list.
        if self.shared.stopped.load(Ordering::Acquire) {
            slot.fire();
        }
        Deadline {
            slot,
            registered: false,
        }
    }

    /// Fires every stop signal, now and from now on: the worker stops.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        let armed = self.shared.armed.lock();
        for (_, slot) in armed
            .slots
            .iter()
            .filter(|(deadline, _)| deadline.is_none())
        {
            slot.fire();
        }
    }

    /// A slot that fires at `deadline` (or on stop, without one), on the list.
    fn arm(&self, deadline: Option<Instant>) -> Arc<Slot> {
        let mut armed = self.shared.armed.lock();
        let slot = match armed.spare.pop() {
            // Ours alone now: no one else can see it fired or wake its old task.
            Some(slot) => {
                slot.fired.store(false, Ordering::Relaxed);
                drop(slot.waker.take());
                slot
            }
            None => Arc::default(),
        };
        if armed.slots.is_empty() {
            self.shared.armed_again.notify_one();
        }
        armed.slots.push((deadline, slot.clone()));
        slot
    }
}

/// A deadline that a future looks at on each of its polls: its task is woken when the
/// deadline comes, and looking costs one load. Dropping it disarms it.
pub struct Deadline {
    slot: Arc<Slot>,
    registered: bool,
}

impl Deadline {
    /// Whether the deadline has come. The first call registers `cx`'s waker, and later
    /// calls do not: a deadline belongs to the one task that polls its owner, whose
    /// waker stays the same.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.registered {
            self.slot.waker.register(cx.waker());
            self.registered = true;
        }
        self.slot.fired.load(Ordering::Acquire)
    }
}

impl Slot {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let slot = &self.slot;
        if slot.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        slot.waker.register(cx.waker());
        // Fired between the check and the registration: its wake went to the old waker.
        if slot.fired.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for HeaderSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_within_a_tick_and_a_dropped_one_is_forgotten() {
        let timer = HeaderTimer::default();
        tokio::spawn(timer.fire_due_forever());
        let started = tokio::time::Instant::now();
        let kept = timer.sleep(Duration::from_secs(2));
        // Due long after the other: only its drop can take it off the list by then.
        let dropped = timer.sleep(Duration::from_secs(60));
        drop(dropped);
        kept.await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited <= Duration::from_secs(2) + TICK,
            "{waited:?}"
        );
        assert!(timer.shared.armed.lock().slots.is_empty());
        assert_eq!(
            timer.shared.armed.lock().spare.len(),
            1,
            "the dropped one kept"
        );
        // Armed again, the kept slot starts unfired and fires at its new deadline.
        let started = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(1)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited <= Duration::from_secs(1) + TICK,
            "{waited:?}"
        );
        assert!(timer.shared.armed.lock().spare.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_wakes_its_task_once_due_and_says_so() {
        let timer = HeaderTimer::default();
        tokio::spawn(timer.fire_due_forever());
        let started = tokio::time::Instant::now();
        let mut deadline = timer.deadline(timer.now() + Duration::from_secs(2));
        std::future::poll_fn(|cx| {
            if deadline.poll_due(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited <= Duration::from_secs(2) + TICK,
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_signal_fires_on_stop_only_and_at_once_when_armed_after_it() {
        let timer = HeaderTimer::default();
        tokio::spawn(timer.fire_due_forever());
        let mut signal = timer.stop_signal();
        let waiting = tokio::spawn(std::future::poll_fn(move |cx| {
            if signal.poll_due(cx) {
                Poll::Ready(tokio::time::Instant::now())
            } else {
                Poll::Pending
            }
        }));
        // Sweeps come and go; a stop signal has no deadline for them to find due.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiting.is_finished());
        let stopped_at = tokio::time::Instant::now();
        timer.stop();
        assert_eq!(waiting.await.expect("woken"), stopped_at);
        let mut late = timer.stop_signal();
        let due = std::future::poll_fn(|cx| Poll::Ready(late.poll_due(cx))).await;
        assert!(due, "a signal armed after the stop fires at once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_wakes_again_when_a_deadline_is_armed_after_an_idle_spell() {
        let timer = HeaderTimer::default();
        tokio::spawn(timer.fire_due_forever());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let started = tokio::time::Instant::now();
        timer.sleep(Duration::from_millis(300)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited <= Duration::from_millis(300) + TICK,
            "{waited:?}"
        );
    }
}
