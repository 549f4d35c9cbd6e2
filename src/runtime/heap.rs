//! Counts the bytes the process has allocated and not freed, for `--memory-max-bytes`.
//! Resident memory would be the wrong measure there: an allocator keeps freed memory for
//! reuse, so resident memory can stay at the bound after subscribers have drained, and
//! publishers held until it falls would wait for ever.
//!
//! `CountingAllocator` wraps the real allocator (mimalloc in the binary). Each thread adds
//! its allocations and frees to a thread-local balance and moves it to one global counter
//! every 256 KiB of change, so the global atomic is touched once per thousands of small
//! allocations, not per allocation; the count is exact to within that per thread.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

const FLUSH_BYTES: i64 = 256 * 1024;

static HEAP_BYTES: AtomicI64 = AtomicI64::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static UNFLUSHED: Cell<i64> = const { Cell::new(0) };
}

/// The global allocator `A`, counting (see the module comment).
pub struct CountingAllocator<A>(pub A);

fn note(delta: i64) {
    let flushed_here = UNFLUSHED.try_with(|unflushed| {
        let balance = unflushed.get() + delta;
        if balance.abs() >= FLUSH_BYTES {
            HEAP_BYTES.fetch_add(balance, Ordering::Relaxed);
            unflushed.set(0);
        } else {
            unflushed.set(balance);
        }
    });
    if flushed_here.is_err() {
        // A thread being torn down: straight to the global count.
        HEAP_BYTES.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to the wrapped allocator unchanged; the counting touches
// only a const-initialised thread-local `Cell` and an atomic, neither of which allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { self.0.alloc(layout) };
        if !pointer.is_null() {
            note(layout.size() as i64);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { self.0.alloc_zeroed(layout) };
        if !pointer.is_null() {
            note(layout.size() as i64);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(pointer, layout) };
        note(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { self.0.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            note(new_size as i64 - layout.size() as i64);
        }
        moved
    }
}

impl<A> CountingAllocator<A> {
    /// Marks the counter as live; call once at start from the binary that installs it.
    pub fn installed(&self) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// Bytes allocated and not freed, if a `CountingAllocator` is the global allocator.
pub fn heap_bytes() -> Option<u64> {
    INSTALLED.load(Ordering::Relaxed).then(|| HEAP_BYTES.load(Ordering::Relaxed).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_balance_reaches_the_global_count_every_256_kib() {
        // The library's own tests run on the system allocator: drive `note` directly.
        let before = HEAP_BYTES.load(Ordering::Relaxed);
        std::thread::spawn(|| {
            note(FLUSH_BYTES - 1);
            assert_eq!(HEAP_BYTES.load(Ordering::Relaxed), 0, "below the flush size it stays local");
            note(1);
            assert_eq!(HEAP_BYTES.load(Ordering::Relaxed), FLUSH_BYTES);
            note(-FLUSH_BYTES);
        })
        .join()
        .expect("thread");
        assert_eq!(HEAP_BYTES.load(Ordering::Relaxed), before);
    }
}
