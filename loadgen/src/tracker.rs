//! Delivery accounting for one subscriber: per publisher, which sequence numbers arrived,
//! how many twice, and how many after a later one. Loss is what a publisher sent that
//! never arrived, known once publishing has stopped.

use std::collections::HashMap;

#[derive(Debug, Default, Clone)]
struct Stream {
    seen: Vec<u64>,
    highest: Option<u64>,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl Stream {
    fn record(&mut self, sequence: u64) {
        let (word, bit) = ((sequence / 64) as usize, sequence % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        match self.highest {
            Some(highest) if sequence < highest => self.out_of_order += 1,
            _ => self.highest = Some(sequence),
        }
    }
}

/// Counts for one (publisher, subscriber) pair or any sum of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub expected: u64,
    pub delivered: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.unique += other.unique;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
    }
}

impl Stream {
    /// Adds what another receiver got from the same publisher: a sequence both got is a
    /// duplicate (a shared subscription delivers each message to one member only).
    fn merge(&mut self, other: &Stream) {
        if self.seen.len() < other.seen.len() {
            self.seen.resize(other.seen.len(), 0);
        }
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            self.duplicates += u64::from((*mine & *theirs).count_ones());
            *mine |= *theirs;
        }
        self.unique = self.seen.iter().map(|word| u64::from(word.count_ones())).sum();
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.highest = self.highest.max(other.highest);
    }
}

#[derive(Debug, Default, Clone)]
pub struct Tracker {
    streams: HashMap<u32, Stream>,
}

impl Tracker {
    pub fn record(&mut self, publisher: u32, sequence: u64) {
        self.streams.entry(publisher).or_default().record(sequence);
    }

    /// Folds in another group member's tracker (see `Stream::merge`).
    pub fn merge(&mut self, other: &Tracker) {
        for (publisher, stream) in &other.streams {
            self.streams.entry(*publisher).or_default().merge(stream);
        }
    }

    /// Unique messages received so far from the given publishers.
    pub fn unique_from(&self, publishers: &[u32]) -> u64 {
        publishers.iter().filter_map(|p| self.streams.get(p)).map(|s| s.unique).sum()
    }

    /// Final counts against `published[p]` for every publisher this subscriber should hear.
    /// Messages from publishers it should not hear count as duplicates of nothing: they are
    /// reported as `delivered` beyond `expected`.
    pub fn counts(&self, expected_publishers: &[u32], published: &[u64]) -> Counts {
        let mut total = Counts::default();
        for &publisher in expected_publishers {
            let sent = published[publisher as usize];
            let stream = self.streams.get(&publisher).cloned().unwrap_or_default();
            total += Counts {
                expected: sent,
                delivered: stream.unique + stream.duplicates,
                unique: stream.unique,
                lost: sent.saturating_sub(stream.unique),
                duplicated: stream.duplicates,
                out_of_order: stream.out_of_order,
            };
        }
        for (publisher, stream) in &self.streams {
            if !expected_publishers.contains(publisher) {
                total.delivered += stream.unique + stream.duplicates;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_duplicates_and_order() {
        let mut tracker = Tracker::default();
        for sequence in [0, 1, 3, 2, 3, 5] {
            tracker.record(0, sequence);
        }
        tracker.record(1, 0);
        let counts = tracker.counts(&[0, 1], &[7, 2]);
        assert_eq!(
            counts,
            Counts { expected: 9, delivered: 7, unique: 6, lost: 3, duplicated: 1, out_of_order: 1 },
            "publisher 0 lost 4 and 6, publisher 1 lost 1"
        );
        assert_eq!(tracker.unique_from(&[0]), 5);
    }

    #[test]
    fn unexpected_publisher_counts_as_delivery_beyond_expectation() {
        let mut tracker = Tracker::default();
        tracker.record(9, 0);
        let counts = tracker.counts(&[], &[0; 10]);
        assert_eq!((counts.expected, counts.delivered), (0, 1));
    }

    #[test]
    fn shared_group_members_merge_into_one_account() {
        let mut first = Tracker::default();
        let mut second = Tracker::default();
        for sequence in [0, 2, 4] {
            first.record(0, sequence);
        }
        for sequence in [1, 3, 4, 100] {
            second.record(0, sequence);
        }
        first.merge(&second);
        let counts = first.counts(&[0], &[101]);
        assert_eq!(counts.unique, 6, "0 1 2 3 4 100");
        assert_eq!(counts.duplicated, 1, "4 reached both members");
        assert_eq!(counts.lost, 95);
    }

    #[test]
    fn large_sequences_grow_the_bitmap() {
        let mut tracker = Tracker::default();
        tracker.record(0, 1_000_000);
        tracker.record(0, 1_000_000);
        let counts = tracker.counts(&[0], &[1_000_001]);
        assert_eq!((counts.unique, counts.duplicated, counts.lost), (1, 1, 1_000_000));
    }
}
