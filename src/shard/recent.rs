//! The recent-publish log: the last publishes this shard applied, from every source shard,
//! kept by reference. A session handed over from another shard may have missed publishes
//! this shard already applied before it arrived; the log lets it catch up in order.
//! Bounded by count and by payload bytes; an eviction that a handoff needed is counted.
//! A shard receives only the publishes its interest asks for, so one source's sequence
//! numbers here have holes: what was evicted is tracked per source, not inferred from them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::session::Message;

use super::mesh::ShardId;

pub struct RecentPublish {
    pub source: ShardId,
    pub sequence: u64,
    pub message: Arc<Message>,
    /// When this shard applied it (routed it, for its own publishes).
    pub at: Instant,
    /// For this shard's own publishes: the peers it was sent to, one bit per shard
    /// (all set beyond 128 shards, where it is not tracked).
    pub sent_to: u128,
}

pub struct RecentPublishes {
    /// Each entry with its payload's length, kept beside it: evicting reads the length
    /// without touching the message, long out of cache by then (a cache miss per publish
    /// was 4% of a 2-shard p2p profile).
    entries: VecDeque<(RecentPublish, usize)>,
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

    pub fn push(&mut self, entry: RecentPublish) {
        let payload_len = entry.message.payload.len();
        self.payload_bytes += payload_len;
        self.entries.push_back((entry, payload_len));
        while self.entries.len() > self.max_entries || self.payload_bytes > self.max_payload_bytes {
            let Some((evicted, evicted_len)) = self.entries.pop_front() else { break };
            self.payload_bytes -= evicted_len;
            self.evicted_through[evicted.source.0] = evicted.sequence;
        }
    }

    /// This shard's own publishes (`source`) applied at or after `since`, newest first.
    pub fn own_since(&self, source: ShardId, since: Instant) -> impl Iterator<Item = &RecentPublish> {
        self.entries.iter().rev().map(|(e, _)| e).take_while(move |e| e.at >= since).filter(move |e| e.source == source)
    }

    /// Entries after `cut` for each source, oldest first, and whether any entry after the
    /// cut was already evicted.
    pub fn since<'a>(&'a self, cut: &'a [u64]) -> (impl Iterator<Item = &'a RecentPublish> + 'a, bool) {
        let gap = self.evicted_through.iter().zip(cut).any(|(&evicted, &cut_at)| evicted > cut_at);
        (self.entries.iter().map(|(e, _)| e).filter(move |e| e.sequence > cut[e.source.0]), gap)
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

    fn entry(source: usize, sequence: u64, size: usize) -> RecentPublish {
        RecentPublish { source: ShardId(source), sequence, message: message(size), at: Instant::now(), sent_to: 0 }
    }

    #[test]
    fn bounded_and_gap_detected() {
        let mut log = RecentPublishes::new(2, 3, 1000);
        for sequence in [1, 2, 4, 7, 8] {
            log.push(entry(0, sequence, 10));
        }
        log.push(entry(1, 3, 10));
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
            log.push(entry(0, sequence, 10));
        }
        assert_eq!(log.entries.len(), 2);
        assert_eq!(log.payload_bytes, 20);
    }
}
