//! The recent-publish log: the last publishes this shard applied, from every source shard,
//! kept by reference. A session handed over from another shard may have missed publishes
//! this shard already applied before it arrived; the log lets it catch up in order.
//! Bounded by count and by payload bytes; an eviction that a handoff needed is counted.
//! A shard receives only the publishes its interest asks for, so one source's sequence
//! numbers here have holes: what was evicted is tracked per source, not inferred from them.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::session::Message;

use super::mesh::ShardId;

pub struct RecentPublish {
    pub source: ShardId,
    pub sequence: u64,
    pub message: Arc<Message>,
}

pub struct RecentPublishes {
    entries: VecDeque<RecentPublish>,
    /// Per source: the highest sequence number evicted from the log.
    evicted_through: Vec<u64>,
    payload_bytes: usize,
    max_entries: usize,
    max_payload_bytes: usize,
}

impl RecentPublishes {
    pub fn new(shard_count: usize, max_entries: usize, max_payload_bytes: usize) -> Self {
        RecentPublishes {
            entries: VecDeque::new(),
            evicted_through: vec![0; shard_count],
            payload_bytes: 0,
            max_entries,
            max_payload_bytes,
        }
    }

    pub fn push(&mut self, source: ShardId, sequence: u64, message: Arc<Message>) {
        self.payload_bytes += message.payload.len();
        self.entries.push_back(RecentPublish { source, sequence, message });
        while self.entries.len() > self.max_entries || self.payload_bytes > self.max_payload_bytes {
            let Some(evicted) = self.entries.pop_front() else { break };
            self.payload_bytes -= evicted.message.payload.len();
            self.evicted_through[evicted.source.0] = evicted.sequence;
        }
    }

    /// Entries after `cut` for each source, oldest first, and whether any entry after the
    /// cut was already evicted.
    pub fn since<'a>(&'a self, cut: &'a [u64]) -> (impl Iterator<Item = &'a RecentPublish> + 'a, bool) {
        let gap = self.evicted_through.iter().zip(cut).any(|(&evicted, &cut_at)| evicted > cut_at);
        (self.entries.iter().filter(move |e| e.sequence > cut[e.source.0]), gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use bytes::Bytes;

    fn message(size: usize) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from(vec![0; size]),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
        })
    }

    #[test]
    fn bounded_and_gap_detected() {
        let mut log = RecentPublishes::new(2, 3, 1000);
        for sequence in [1, 2, 4, 7, 8] {
            log.push(ShardId(0), sequence, message(10));
        }
        log.push(ShardId(1), 3, message(10));
        // Holds 0:7, 0:8, 1:3; evicted 0:1, 0:2, 0:4.
        let (entries, gap) = log.since(&[4, 0]);
        assert_eq!(entries.map(|e| (e.source.0, e.sequence)).collect::<Vec<_>>(), vec![(0, 7), (0, 8), (1, 3)]);
        assert!(!gap, "5 and 6 never came here: not a gap");
        let (_, gap) = log.since(&[3, 0]);
        assert!(gap, "4 was evicted");
        let (entries, gap) = log.since(&[8, 3]);
        assert_eq!(entries.count(), 0);
        assert!(!gap);
    }

    #[test]
    fn payload_bytes_bound() {
        let mut log = RecentPublishes::new(1, 100, 25);
        for sequence in 1..=3 {
            log.push(ShardId(0), sequence, message(10));
        }
        assert_eq!(log.entries.len(), 2);
        assert_eq!(log.payload_bytes, 20);
    }
}
