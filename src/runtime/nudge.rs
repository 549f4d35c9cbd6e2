//! A wake-up from outside for every shard's executor, every `NUDGE_PERIOD`.
//!
//! glommio 0.9 can park an executor that still has a runnable task: when its preempt
//! timer fires while the thread is descheduled (CPU contention), the loop takes "preempt
//! needed" for "nothing ran", consumes the timer and sleeps, with no wake-up due unless
//! some IO completes. Seen as a shard stuck in its mesh join at start-up (no listening
//! line, SIGTERM ignored; 1 in ~4,500 joins with CPU burners beside it), and it can freeze
//! an idle shard later too (its timer task woken, never run). The upstream fix (do not
//! park while a task queue is runnable) is not in a release on crates.io.
//!
//! So a plain thread wakes one heartbeat task per shard from outside: a foreign wake
//! writes the executor's eventfd when it sleeps, and the executor then runs its queues,
//! the stuck task included. It costs one wake-up per shard per period, and nothing while
//! the shard is busy (the eventfd is written only to a sleeping executor).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

/// How long a parked-but-runnable executor can stay asleep at most. The park needs the
/// preempt timer to fire while the thread is descheduled, so with the 10 ms preempt
/// interval (`runtime::PREEMPT_INTERVAL`) it is likelier than at glommio's 100 ms: a stall
/// is kept to two intervals.
const NUDGE_PERIOD: Duration = Duration::from_millis(20);

/// One slot per shard for its heartbeat task's waker.
#[derive(Default)]
pub struct Nudger {
    wakers: Vec<Mutex<Option<Waker>>>,
    finished: AtomicBool,
}

impl Nudger {
    pub fn new(shard_count: usize) -> Arc<Nudger> {
        Arc::new(Nudger { wakers: (0..shard_count).map(|_| Mutex::new(None)).collect(), finished: AtomicBool::new(false) })
    }

    /// The shard's side, spawned first on its executor: a task that only keeps its waker
    /// where the nudging thread finds it. Never completes.
    pub async fn heartbeat(self: Arc<Self>, shard: usize) {
        poll_fn(|cx| {
            if let Ok(mut slot) = self.wakers[shard].lock()
                && !slot.as_ref().is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                *slot = Some(cx.waker().clone());
            }
            Poll::<()>::Pending
        })
        .await
    }

    /// The nudging thread's loop, until `finish`.
    pub fn run(&self) {
        while !self.finished.load(Ordering::Relaxed) {
            std::thread::sleep(NUDGE_PERIOD);
            for slot in &self.wakers {
                if let Ok(slot) = slot.lock()
                    && let Some(waker) = slot.as_ref()
                {
                    waker.wake_by_ref();
                }
            }
        }
    }

    /// Every shard has stopped: end `run` and let go of the wakers.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
        for slot in &self.wakers {
            if let Ok(mut slot) = slot.lock() {
                slot.take();
            }
        }
    }
}
