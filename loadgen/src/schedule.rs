//! The open-loop schedule: when each message of one publisher is due. Latency is measured
//! from the due time, not the time the client got round to sending, so a stalled broker
//! cannot hide its stall by slowing the client down (coordinated omission).

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    start_ns: u64,
    interval_ns: f64,
}

impl Schedule {
    /// `publishers` share `total_rate_per_s`; publisher `index` is offset by a fraction of
    /// the interval so they do not all fire at once.
    pub fn new(start_ns: u64, total_rate_per_s: f64, publishers: usize, index: usize) -> Schedule {
        assert!(total_rate_per_s > 0.0 && publishers > 0 && index < publishers);
        let interval_ns = 1e9 * publishers as f64 / total_rate_per_s;
        let offset = interval_ns * index as f64 / publishers as f64;
        Schedule { start_ns: start_ns + offset as u64, interval_ns }
    }

    /// When message `sequence` is due, in ns since the origin.
    pub fn due_ns(&self, sequence: u64) -> u64 {
        self.start_ns + (sequence as f64 * self.interval_ns) as u64
    }

    /// How many messages are due by `now_ns` (sequence numbers below the result).
    pub fn due_count(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        ((now_ns - self.start_ns) as f64 / self.interval_ns) as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_and_counts() {
        // 1000 msg/s over 2 publishers: each every 2 ms; the second offset by 1 ms.
        let first = Schedule::new(0, 1000.0, 2, 0);
        let second = Schedule::new(0, 1000.0, 2, 1);
        assert_eq!(first.due_ns(0), 0);
        assert_eq!(first.due_ns(3), 6_000_000);
        assert_eq!(second.due_ns(0), 1_000_000);
        assert_eq!(first.due_count(0), 1);
        assert_eq!(first.due_count(5_999_999), 3);
        assert_eq!(first.due_count(6_000_000), 4);
        assert_eq!(second.due_count(999_999), 0);
    }
}
