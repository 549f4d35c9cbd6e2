//! The memory the broker uses, as a `MemoryInUse` every shard reads (see `shard/memory.rs`
//! for what a shard does with it): heap bytes in use, read live, when the binary's
//! counting allocator is installed (`heap.rs`); otherwise resident memory from
//! `/proc/self/statm`, sampled by a small thread every `SAMPLE_PERIOD`. And the automatic default of
//! `--memory-max-bytes`: three quarters of the machine's or the cgroup's memory,
//! whichever is smaller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::shard::MemoryInUse;

pub(super) const SAMPLE_PERIOD: Duration = Duration::from_millis(10);

/// The memory in use the shards read, and the fallback sampler that feeds it.
#[derive(Debug, Default)]
pub struct MemoryGauge {
    resident: Arc<MemoryInUse>,
    finished: AtomicBool,
}

impl MemoryGauge {
    pub fn new() -> Arc<MemoryGauge> {
        let gauge =
            Arc::new(MemoryGauge { resident: Arc::new(MemoryInUse::with_live(super::heap::heap_bytes)), finished: AtomicBool::new(false) });
        gauge.sample();
        gauge
    }

    /// What the shards read.
    pub fn resident(&self) -> Arc<MemoryInUse> {
        self.resident.clone()
    }

    /// Whether the shards need the sampling thread: only without the live heap count
    /// (the library embedded in a binary without the counting allocator).
    pub fn needs_sampling(&self) -> bool {
        super::heap::heap_bytes().is_none()
    }

    /// Resident memory, the fallback measure (see `heap.rs` for why heap bytes are better).
    fn sample(&self) {
        if let Some(bytes) = resident_bytes() {
            self.resident.set(bytes);
        }
    }

    /// The sampling thread's loop, until `finish`.
    pub fn run(&self) {
        while !self.finished.load(Ordering::Relaxed) {
            std::thread::sleep(SAMPLE_PERIOD);
            self.sample();
        }
    }

    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }
}

/// Resident set size from `/proc/self/statm` (its second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// The memory this process may use: the machine's, or its cgroup's limit if lower.
pub fn available_bytes() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|meminfo| parse_meminfo_total(&meminfo));
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|limit| limit.trim().parse::<u64>().ok());
    match (machine, cgroup) {
        (Some(machine), Some(cgroup)) => Some(machine.min(cgroup)),
        (machine, cgroup) => machine.or(cgroup),
    }
}

/// `MemTotal:  24683568 kB` -> bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machines_memory_comes_from_meminfo() {
        assert_eq!(parse_meminfo_total("MemTotal:       24683568 kB\nMemFree: 1 kB\n"), Some(24_683_568 * 1024));
        assert_eq!(parse_meminfo_total("nothing here"), None);
        assert!(available_bytes().is_some_and(|bytes| bytes > 0));
    }

    #[test]
    fn this_process_has_a_resident_size() {
        assert!(resident_bytes().is_some_and(|bytes| bytes > 0));
    }
}
