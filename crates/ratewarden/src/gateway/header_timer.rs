//! The timer behind HTTP/1's header-read deadline (`[server] header_timeout`).
//!
//! hyper arms that deadline for every request, from the moment a connection waits for
//! the next head until the head has come, and almost never sees one expire. Through
//! tokio's timer each one was a boxed sleep registered in the runtime's timer wheel and
//! taken out again; this way a 429 takes about 340 fewer instructions (2%). Here a
//! deadline is a flag in a slot that its worker's list shares; every tick the list is
//! swept, dropping the slots no one waits on any more and firing those due. A deadline
//! fires up to one tick late, which a timeout of seconds does not notice.
//!
//! Each worker has its own timer, so its list is only ever locked by its own thread.
//!
//! The same timer holds each new connection to its first request head
//! ([`FirstHeadWithin`]), which hyper's deadline does not cover.

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

/// One worker's header-read timer, for hyper's HTTP/1 connections.
#[derive(Clone, Default)]
pub struct HeaderTimer {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The deadlines armed since the last sweep or still pending, in no order.
    armed: Mutex<Vec<Arc<Slot>>>,
    /// Told when the list stops being empty, so an idle worker's sweeper sleeps.
    armed_again: tokio::sync::Notify,
}

struct Slot {
    deadline: Instant,
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
        armed.retain(|slot| {
            if Arc::strong_count(slot) == 1 {
                return false;
            }
            if slot.deadline > now {
                return true;
            }
            slot.fired.store(true, Ordering::Release);
            slot.waker.wake();
            false
        });
        armed.is_empty()
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
        let slot = Arc::new(Slot {
            deadline,
            fired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let mut armed = self.shared.armed.lock();
        if armed.is_empty() {
            self.shared.armed_again.notify_one();
        }
        armed.push(slot.clone());
        Box::pin(HeaderSleep { slot })
    }
}

/// A client connection being served that must deliver its first request head within
/// a timeout of being accepted; gives the connection's output, or `None` when no head
/// came in time (the connection is then dropped, which closes it).
///
/// hyper's own header deadline starts only once it has told HTTP/1 from HTTP/2, and
/// telling them apart waits without a deadline for the first bytes and for the whole
/// 24-byte HTTP/2 preface: a client that connects and sends nothing, or `PRI *
/// HTTP/2.0` and nothing more, would hold its place under the connection cap forever.
/// The deadline is armed only while the connection waits for its first head, and
/// never looked at again once the head has come, so requests pay nothing for it.
pub struct FirstHeadWithin<C> {
    connection: Pin<Box<C>>,
    timer: HeaderTimer,
    due: Instant,
    /// Set by the connection's service when it is first called.
    first_head: Arc<AtomicBool>,
    deadline: Option<Pin<Box<dyn hyper::rt::Sleep>>>,
    headed: bool,
}

impl<C: Future> FirstHeadWithin<C> {
    /// `connection`, accepted at `accepted`, held to `timeout` by `timer`.
    pub fn new(
        connection: C,
        timer: HeaderTimer,
        accepted: Instant,
        timeout: Duration,
        first_head: Arc<AtomicBool>,
    ) -> Self {
        FirstHeadWithin {
            connection: Box::pin(connection),
            timer,
            due: accepted + timeout,
            first_head,
            deadline: None,
            headed: false,
        }
    }
}

impl<C: Future> Future for FirstHeadWithin<C> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(output) = this.connection.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if this.headed {
            return Poll::Pending;
        }
        if this.first_head.load(Ordering::Relaxed) {
            this.headed = true;
            this.deadline = None;
            return Poll::Pending;
        }
        let (timer, due) = (&this.timer, this.due);
        let deadline = this
            .deadline
            .get_or_insert_with(|| hyper::rt::Timer::sleep_until(timer, due));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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
        assert!(timer.shared.armed.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_first_head_is_dropped_at_its_deadline_and_one_with_it_is_not() {
        let timer = HeaderTimer::default();
        tokio::spawn(timer.fire_due_forever());
        let timeout = Duration::from_secs(2);
        // A connection that never ends and never delivers a head.
        let silent = FirstHeadWithin::new(
            std::future::pending::<()>(),
            timer.clone(),
            timer.now(),
            timeout,
            Arc::new(AtomicBool::new(false)),
        );
        let started = tokio::time::Instant::now();
        assert_eq!(silent.await, None);
        let waited = started.elapsed();
        assert!(waited >= timeout && waited <= timeout + TICK, "{waited:?}");
        // One whose first head came: it runs on past the deadline, to its own end.
        let first_head = Arc::new(AtomicBool::new(false));
        let seen = first_head.clone();
        let served = FirstHeadWithin::new(
            async move {
                seen.store(true, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(10)).await;
                "served"
            },
            timer.clone(),
            timer.now(),
            timeout,
            first_head,
        );
        assert_eq!(served.await, Some("served"));
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
