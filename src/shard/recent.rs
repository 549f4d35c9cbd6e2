//! The recent-publish log: the last publishes this shard applied, from every source shard,
//! kept by reference. A session handed over from another shard may have missed publishes
//! this shard already applied before it arrived; the log lets it catch up in order.
//! Bounded by count and by payload bytes; an eviction that a handoff needed is counted.

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
    payload_bytes: usize,
    max_entries: usize,
    max_payload_bytes: usize,
}

impl RecentPublishes {
    pub fn new(max_entries: usize, max_payload_bytes: usize) -> Self {
        RecentPublishes { entries: VecDeque::new(), payload_bytes: 0, max_entries, max_payload_bytes }
    }

    pub fn push(&mut self, source: ShardId, sequence: u64, message: Arc<Message>) {
        self.payload_bytes += message.payload.len();
        self.entries.push_back(RecentPublish { source, sequence, message });
        while self.entries.len() > self.max_entries || self.payload_bytes > self.max_payload_bytes {
            let Some(evicted) = self.entries.pop_front() else { break };
            self.payload_bytes -= evicted.message.payload.len();
        }
    }

    /// Entries after `cut` for each source, oldest first, and whether any needed entry was
    /// already evicted (the log no longer holds `cut[s] + 1` although `seen[s]` is past it).
    pub fn since<'a>(&'a self, cut: &'a [u64], seen: &[u64]) -> (impl Iterator<Item = &'a RecentPublish> + 'a, bool) {
        let mut gap = false;
        for (source, (&cut_at, &seen_at)) in cut.iter().zip(seen).enumerate() {
            if seen_at <= cut_at {
                continue;
            }
            let oldest = self.entries.iter().find(|e| e.source.0 == source).map(|e| e.sequence);
            if oldest.is_none_or(|oldest| oldest > cut_at + 1) {
                gap = true;
            }
        }
        (self.entries.iter().filter(move |e| e.sequence > cut[e.source.0]), gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, QoS};
    use bytes::Bytes;

    fn message(size: usize) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from(vec![0; size]),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
            publisher: None,
            expires_at: None,
        })
    }

    #[test]
    fn bounded_and_gap_detected() {
        let mut log = RecentPublishes::new(3, 1000);
        for sequence in 1..=5 {
            log.push(ShardId(0), sequence, message(10));
        }
        let (entries, gap) = log.since(&[3], &[5]);
        assert_eq!(entries.map(|e| e.sequence).collect::<Vec<_>>(), vec![4, 5]);
        assert!(!gap);
        let (_, gap) = log.since(&[1], &[5]);
        assert!(gap, "2 was evicted");
        let (entries, gap) = log.since(&[5], &[5]);
        assert_eq!(entries.count(), 0);
        assert!(!gap);
    }

    #[test]
    fn payload_bytes_bound() {
        let mut log = RecentPublishes::new(100, 25);
        for sequence in 1..=3 {
            log.push(ShardId(0), sequence, message(10));
        }
        assert_eq!(log.entries.len(), 2);
        assert_eq!(log.payload_bytes, 20);
    }
}
