//! `Latch`: a one-shot, single-threaded "it happened" flag that tasks can wait on (the
//! shards' stop signal to their accept loops). Pure std: wakers, no executor.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::shard::link::register_waker;

#[derive(Default)]
pub struct Latch {
    set: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Latch {
    pub fn set(&self) {
        self.set.set(true);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once set. A task polled again while waiting keeps one registered waker,
    /// not one per poll: glommio counts a task's wakers in an `i16`, and an accept loop
    /// that polls this once per connection overflowed it after ~32k connections.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.get() {
                return Poll::Ready(());
            }
            register_waker(&mut self.waiters.borrow_mut(), cx.waker());
            Poll::Pending
        })
        .await
    }

    #[cfg(test)]
    fn waiter_count(&self) -> usize {
        self.waiters.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Wake};

    struct CountingWake;
    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn a_latch_polled_many_times_by_one_task_keeps_one_waker() {
        let latch = Latch::default();
        let waker = Waker::from(Arc::new(CountingWake));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100_000 {
            let wait = latch.wait();
            futures_lite::pin!(wait);
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(latch.waiter_count(), 1);
        latch.set();
        assert_eq!(latch.waiter_count(), 0);
    }
}
