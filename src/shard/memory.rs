//! The global memory bound (`--memory-max-bytes`) as one shard sees it. `MemoryInUse`
//! gives the memory the process uses: heap bytes in use, live from the counting allocator
//! (`runtime/heap.rs`), or a resident-memory sample without it. Each shard reads it on a
//! timer and after every 1 MiB of PUBLISH input (a busy shard's timers can run late, and a
//! flood must not outrun the bound for that long), and turns it into a level, with
//! hysteresis so it does not flap, that it acts on for its own clients. The delivery path
//! reads only that level.
//!
//! What happens, in order, as memory grows (percent of the bound):
//! 1. At 90 % (`Shedding`, left below 80 %): QoS 0 messages are no longer delivered
//!    (`qos0_dropped_memory`), and new connections are refused: CONNACK 3 Server
//!    unavailable (3.1.1), 0x89 Server busy (5.0) (`connections_refused_memory`).
//! 2. At 100 % (`Critical`, left below 90 %): besides, no PUBLISH is read from any client
//!    (`publishes_held_for_memory`): acknowledgements still flow, subscribers drain their
//!    queues and buffers, and memory falls. Nothing acknowledged is dropped.
//!
//! Heap bytes in use cover everything the bound is about (queued and retained messages,
//! output buffers, mesh queues) without counting per message. The allocator's own
//! retention and the io_uring buffers come on top: leave headroom below the machine's
//! memory (the default takes three quarters).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;

use super::Shard;
use super::link::register_waker;

/// PUBLISH bytes (topic and payload) a shard takes in between two looks at the sample.
const REFRESH_INPUT_BYTES: u64 = 1 << 20;

/// The memory the process uses: the live heap count where there is one, else the latest
/// sample written by the runtime's sampler; read by every shard now and then (see the
/// module comment).
#[derive(Debug, Default)]
pub struct MemoryInUse {
    sampled: AtomicU64,
    /// A live count to read instead of the sample, when there is one (the binary's counting
    /// allocator): a starved sampler thread then cannot leave a flood unnoticed.
    live: Option<fn() -> Option<u64>>,
}

impl MemoryInUse {
    /// Read through `live` (falling back to the sample when it has nothing).
    pub fn with_live(live: fn() -> Option<u64>) -> MemoryInUse {
        MemoryInUse { sampled: AtomicU64::new(0), live: Some(live) }
    }

    pub fn set(&self, bytes: u64) {
        self.sampled.store(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.live.and_then(|live| live()).unwrap_or_else(|| self.sampled.load(Ordering::Relaxed))
    }
}

/// How close the process is to `--memory-max-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemoryLevel {
    Normal,
    /// QoS 0 shed, new connections refused.
    Shedding,
    /// Also no PUBLISH read.
    Critical,
}

#[derive(Debug, Default)]
pub(super) struct MemoryGuard {
    /// `None`: no bound.
    bytes_max: Option<u64>,
    level: Option<MemoryLevel>,
    /// Readers holding a PUBLISH until the level leaves `Critical`.
    waiters: Vec<Waker>,
    /// Where the samples come from (the runtime's sampler); `None` in tests and simulations.
    source: Option<Arc<MemoryInUse>>,
    /// PUBLISH bytes taken in since the sample was last read.
    input_since_refresh: u64,
    /// The bound was reached once already (and logged).
    warned: bool,
}

impl MemoryGuard {
    pub(super) fn new(bytes_max: Option<u64>) -> MemoryGuard {
        MemoryGuard { bytes_max, level: None, waiters: Vec::new(), source: None, input_since_refresh: 0, warned: false }
    }

    /// Counts PUBLISH input; true when the sample is due to be read again.
    fn note_input(&mut self, bytes: usize) -> bool {
        if self.bytes_max.is_none() || self.source.is_none() {
            return false;
        }
        self.input_since_refresh += bytes as u64;
        if self.input_since_refresh < REFRESH_INPUT_BYTES {
            return false;
        }
        self.input_since_refresh = 0;
        true
    }

    pub(super) fn level(&self) -> MemoryLevel {
        self.level.unwrap_or(MemoryLevel::Normal)
    }

    /// The latest sample; returns the wakers to wake when it ended `Critical`.
    pub(super) fn set_in_use(&mut self, bytes: u64) -> Vec<Waker> {
        let Some(bytes_max) = self.bytes_max else { return Vec::new() };
        let percent = bytes.saturating_mul(100) / bytes_max.max(1);
        let previous = self.level();
        let level = match previous {
            MemoryLevel::Normal if percent >= 100 => MemoryLevel::Critical,
            MemoryLevel::Normal if percent >= 90 => MemoryLevel::Shedding,
            MemoryLevel::Shedding if percent >= 100 => MemoryLevel::Critical,
            MemoryLevel::Shedding if percent < 80 => MemoryLevel::Normal,
            MemoryLevel::Critical if percent < 80 => MemoryLevel::Normal,
            MemoryLevel::Critical if percent < 90 => MemoryLevel::Shedding,
            unchanged => unchanged,
        };
        self.level = Some(level);
        if level != previous {
            // Under a sustained flood the level can swing several times a second: warn
            // once per shard, the counters tell the rest.
            if level == MemoryLevel::Critical && !self.warned {
                self.warned = true;
                tracing::warn!(
                    in_use_bytes = bytes,
                    bytes_max,
                    "--memory-max-bytes reached: PUBLISH packets wait unread until subscribers drain (see the *_memory counters)"
                );
            } else {
                tracing::debug!(?level, in_use_bytes = bytes, bytes_max, "memory level changed");
            }
        }
        if previous == MemoryLevel::Critical && level != MemoryLevel::Critical { std::mem::take(&mut self.waiters) } else { Vec::new() }
    }

    pub(super) fn wait_for_relief(&mut self, waker: &Waker) {
        register_waker(&mut self.waiters, waker);
    }
}

impl Shard {
    /// Where this shard reads the process's resident memory from (the runtime's sampler).
    pub fn set_memory_source(&mut self, source: Arc<MemoryInUse>) {
        self.memory.source = Some(source);
    }

    /// Reads the latest sample (the runtime calls this on a timer; input calls it too).
    pub fn refresh_memory(&mut self) {
        if let Some(bytes) = self.memory.source.as_ref().map(|source| source.get()) {
            self.set_memory_in_use(bytes);
        }
    }

    /// A PUBLISH of `bytes` was taken in: after enough of them, look at memory again.
    pub(super) fn memory_input(&mut self, bytes: usize) {
        if self.memory.note_input(bytes) {
            self.refresh_memory();
        }
    }

    /// A sample of the process's resident memory.
    pub fn set_memory_in_use(&mut self, bytes: u64) {
        for waker in self.memory.set_in_use(bytes) {
            waker.wake();
        }
    }

    pub fn memory_level(&self) -> MemoryLevel {
        self.memory.level()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_rise_at_90_and_100_percent_and_fall_only_well_below() {
        let mut guard = MemoryGuard::new(Some(1000));
        let mut level_at = |bytes| {
            guard.set_in_use(bytes);
            guard.level()
        };
        assert_eq!(level_at(899), MemoryLevel::Normal);
        assert_eq!(level_at(900), MemoryLevel::Shedding);
        assert_eq!(level_at(850), MemoryLevel::Shedding, "hysteresis: still above 80 %");
        assert_eq!(level_at(1000), MemoryLevel::Critical);
        assert_eq!(level_at(950), MemoryLevel::Critical, "hysteresis: still above 90 %");
        assert_eq!(level_at(899), MemoryLevel::Shedding);
        assert_eq!(level_at(799), MemoryLevel::Normal);
        assert_eq!(level_at(1200), MemoryLevel::Critical, "straight to critical");
        assert_eq!(level_at(10), MemoryLevel::Normal, "straight back");
    }

    #[test]
    fn without_a_bound_the_level_stays_normal() {
        let mut guard = MemoryGuard::new(None);
        guard.set_in_use(u64::MAX);
        assert_eq!(guard.level(), MemoryLevel::Normal);
    }

    #[test]
    fn readers_waiting_in_critical_are_woken_once_it_ends() {
        let mut guard = MemoryGuard::new(Some(100));
        guard.set_in_use(100);
        guard.wait_for_relief(Waker::noop());
        guard.wait_for_relief(Waker::noop());
        assert!(guard.set_in_use(95).is_empty(), "still critical");
        assert_eq!(guard.set_in_use(85).len(), 1, "one waker per task, woken on the way down");
        assert!(guard.set_in_use(10).is_empty());
    }
}
