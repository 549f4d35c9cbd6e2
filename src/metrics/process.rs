//! Process metrics from `/proc/self`: resident memory, CPU time, open files, threads,
//! and the start time, under `ringmq_process_*`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Clock ticks per second for /proc CPU times (what every Linux reports for USER_HZ).
const TICKS_PER_S: f64 = 100.0;

fn page_size_bytes() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

pub(super) fn register(registry: &mut Registry) {
    let process = registry.sub_registry_with_prefix("process");
    if let Some(resident_pages) =
        std::fs::read_to_string("/proc/self/statm").ok().and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
    {
        let gauge = Gauge::<i64>::default();
        gauge.set((resident_pages * page_size_bytes()) as i64);
        process.register("resident_memory_bytes", "Resident set size", gauge);
    }
    if let Ok(fields) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces, inside parentheses).
        let after_name: Vec<&str> = fields.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let field = |number: usize| after_name.get(number - 3).and_then(|value| value.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            let counter = Counter::<f64, std::sync::atomic::AtomicU64>::default();
            counter.inc_by((user + system) as f64 / TICKS_PER_S);
            process.register("cpu_seconds", "User and system CPU time spent, in seconds", counter);
        }
        if let Some(threads) = field(20) {
            let gauge = Gauge::<i64>::default();
            gauge.set(threads as i64);
            process.register("threads", "Threads in the process", gauge);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let gauge = Gauge::<i64>::default();
        gauge.set(entries.count() as i64);
        process.register("open_fds", "Open file descriptors", gauge);
    }
}
