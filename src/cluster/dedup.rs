//! One copy per node, pure. NATS delivers a message once per matching subscription of a
//! connection, and a node subscribes once per distinct filter, so a topic two of its
//! filters match (`a/+` and `a/#`) arrives twice. The node keeps the first copy of each
//! `(origin, sequence)`: its shards then match the message against every local filter
//! themselves, exactly as for a local publish.
//!
//! Per origin, a window of the last `WINDOW` sequence numbers remembers which were seen.
//! Every copy of a message travels in order within its subscription's stream, and the
//! streams are read side by side, so the copies of one message arrive far less than a
//! window apart; a number older than the window is dropped (and counted) rather than
//! risk delivering a second copy. Keeping the first copy also keeps each topic's order:
//! the copies of one topic travel in the same streams, so whichever stream delivers a
//! topic's message n+1 first has delivered (or skipped, as seen) its message n before.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::frame::Stamp;

/// Sequence numbers remembered per origin: 128 KiB of bits.
pub const WINDOW: u64 = 1 << 20;
const WORDS: usize = (WINDOW / 64) as usize;
/// An origin silent this long is forgotten (a node that stopped or restarted).
pub const ORIGIN_IDLE_MAX: Duration = Duration::from_secs(600);
/// Origins remembered at most (16 MiB of windows): past it the least recently heard one is
/// forgotten, so frames naming made-up origins cannot grow memory.
pub const ORIGINS_MAX: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first copy: deliver it.
    First,
    /// Seen already through another subscription.
    Duplicate,
    /// Older than the window: whether it was seen is no longer known, so it is dropped.
    TooOld,
}

struct Window {
    /// The highest sequence number seen; bits cover (highest - WINDOW, highest].
    highest: u64,
    seen: Box<[u64]>,
    last_seen_at: Instant,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window { highest: 0, seen: vec![0; WORDS].into_boxed_slice(), last_seen_at: now }
    }

    fn bit(sequence: u64) -> (usize, u64) {
        let slot = sequence % WINDOW;
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    /// Clears the slots of `from..to` (fewer than `WINDOW` numbers), a word at a time.
    fn clear_range(&mut self, mut from: u64, to: u64) {
        while from < to {
            let (word, _) = Self::bit(from);
            let offset = from % 64;
            let count = (64 - offset).min(to - from);
            let mask = if count == 64 { u64::MAX } else { ((1u64 << count) - 1) << offset };
            self.seen[word] &= !mask;
            from += count;
        }
    }

    fn check(&mut self, sequence: u64) -> Verdict {
        if sequence > self.highest {
            // Clear the slots between the old and the new highest: they now stand for
            // numbers not seen yet.
            if sequence - self.highest >= WINDOW {
                self.seen.fill(0);
            } else {
                self.clear_range(self.highest + 1, sequence);
            }
            self.highest = sequence;
            let (word, mask) = Self::bit(sequence);
            self.seen[word] |= mask;
            return Verdict::First;
        }
        if self.highest - sequence >= WINDOW {
            return Verdict::TooOld;
        }
        let (word, mask) = Self::bit(sequence);
        if self.seen[word] & mask != 0 {
            return Verdict::Duplicate;
        }
        self.seen[word] |= mask;
        Verdict::First
    }
}

#[derive(Default)]
pub struct Dedup {
    origins: HashMap<u64, Window>,
}

impl Dedup {
    pub fn check(&mut self, stamp: Stamp, now: Instant) -> Verdict {
        if !self.origins.contains_key(&stamp.origin)
            && self.origins.len() >= ORIGINS_MAX
            && let Some(quietest) = self.origins.iter().min_by_key(|(_, window)| window.last_seen_at).map(|(origin, _)| *origin)
        {
            self.origins.remove(&quietest);
        }
        let window = self.origins.entry(stamp.origin).or_insert_with(|| Window::new(now));
        window.last_seen_at = now;
        window.check(stamp.sequence)
    }

    /// Forgets origins silent for `ORIGIN_IDLE_MAX`.
    pub fn forget_idle(&mut self, now: Instant) {
        self.origins.retain(|_, window| now.saturating_duration_since(window.last_seen_at) < ORIGIN_IDLE_MAX);
    }

    pub fn origins(&self) -> usize {
        self.origins.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(origin: u64, sequence: u64) -> Stamp {
        Stamp { origin, sequence }
    }

    #[test]
    fn the_second_copy_is_a_duplicate_per_origin() {
        let now = Instant::now();
        let mut dedup = Dedup::default();
        assert_eq!(dedup.check(stamp(1, 1), now), Verdict::First);
        assert_eq!(dedup.check(stamp(2, 1), now), Verdict::First, "origins are apart");
        assert_eq!(dedup.check(stamp(1, 3), now), Verdict::First);
        assert_eq!(dedup.check(stamp(1, 2), now), Verdict::First, "a gap filled late is new");
        assert_eq!(dedup.check(stamp(1, 2), now), Verdict::Duplicate);
        assert_eq!(dedup.check(stamp(1, 1), now), Verdict::Duplicate);
        assert_eq!(dedup.check(stamp(1, 3), now), Verdict::Duplicate);
    }

    #[test]
    fn numbers_past_the_window_are_too_old_and_a_jump_clears_it() {
        let now = Instant::now();
        let mut dedup = Dedup::default();
        assert_eq!(dedup.check(stamp(1, 5), now), Verdict::First);
        assert_eq!(dedup.check(stamp(1, 5 + WINDOW), now), Verdict::First);
        assert_eq!(dedup.check(stamp(1, 5), now), Verdict::TooOld);
        assert_eq!(dedup.check(stamp(1, 6), now), Verdict::First, "inside the window, not seen");
        assert_eq!(dedup.check(stamp(1, 10 * WINDOW), now), Verdict::First);
        assert_eq!(dedup.check(stamp(1, 10 * WINDOW - 1), now), Verdict::First, "the jump left no stale bits");
    }

    #[test]
    fn made_up_origins_cannot_grow_the_table() {
        let now = Instant::now();
        let mut dedup = Dedup::default();
        for origin in 0..(ORIGINS_MAX as u64 * 3) {
            dedup.check(stamp(origin, 1), now + Duration::from_millis(origin));
        }
        assert_eq!(dedup.origins(), ORIGINS_MAX);
        // The most recent ones stay.
        assert_eq!(dedup.check(stamp(ORIGINS_MAX as u64 * 3 - 1, 1), now + Duration::from_secs(1)), Verdict::Duplicate);
    }

    #[test]
    fn a_jump_inside_the_window_clears_exactly_the_skipped_numbers() {
        let now = Instant::now();
        let mut dedup = Dedup::default();
        for sequence in [1, 2, 3, 70, 200] {
            assert_eq!(dedup.check(stamp(1, sequence), now), Verdict::First);
        }
        // Numbers reused by the wrap-around are cleared as the window moves.
        assert_eq!(dedup.check(stamp(1, WINDOW + 100), now), Verdict::First);
        for sequence in [150, WINDOW + 99, WINDOW + 1] {
            assert_eq!(dedup.check(stamp(1, sequence), now), Verdict::First, "{sequence} not seen yet");
        }
        for sequence in [200, WINDOW + 100, WINDOW + 1] {
            assert_eq!(dedup.check(stamp(1, sequence), now), Verdict::Duplicate, "{sequence}");
        }
        assert_eq!(dedup.check(stamp(1, 99), now), Verdict::TooOld);
    }

    #[test]
    fn idle_origins_are_forgotten() {
        let now = Instant::now();
        let mut dedup = Dedup::default();
        dedup.check(stamp(1, 1), now);
        dedup.check(stamp(2, 1), now + ORIGIN_IDLE_MAX);
        dedup.forget_idle(now + ORIGIN_IDLE_MAX);
        assert_eq!(dedup.origins(), 1);
    }

    proptest! {
        /// Several in-order streams (one per NATS subscription), each carrying the
        /// messages whose topic its filter matches, read interleaved in any way: every
        /// message is delivered exactly once, and each topic's messages in order.
        #[test]
        fn interleaved_copies_deliver_each_message_once_and_each_topic_in_order(
            topic_streams in proptest::collection::vec(1u8..8, 4),
            topics in proptest::collection::vec(0usize..4, 1..300),
            schedule in proptest::collection::vec(0usize..3, 0..1200),
        ) {
            let now = Instant::now();
            // Message i (sequence i + 1, topic topics[i]) travels in stream s when bit s of
            // its topic's mask is set.
            let streams: Vec<Vec<u64>> = (0..3)
                .map(|s| topics.iter().enumerate().filter(|(_, t)| topic_streams[**t] & (1 << s) != 0).map(|(i, _)| i as u64 + 1).collect())
                .collect();
            let mut positions = [0usize; 3];
            let mut dedup = Dedup::default();
            let mut delivered = Vec::new();
            let mut offer = |stream: usize, positions: &mut [usize; 3], delivered: &mut Vec<u64>| {
                if let Some(&sequence) = streams[stream].get(positions[stream]) {
                    positions[stream] += 1;
                    match dedup.check(stamp(7, sequence), now) {
                        Verdict::First => delivered.push(sequence),
                        Verdict::Duplicate => {}
                        Verdict::TooOld => panic!("within the window"),
                    }
                }
            };
            for &stream in &schedule {
                offer(stream, &mut positions, &mut delivered);
            }
            for stream in 0..3 {
                while positions[stream] < streams[stream].len() {
                    offer(stream, &mut positions, &mut delivered);
                }
            }
            let mut sorted = delivered.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (1..=topics.len() as u64).collect::<Vec<_>>());
            for topic in 0..4 {
                let order: Vec<u64> = delivered.iter().copied().filter(|&s| topics[s as usize - 1] == topic).collect();
                prop_assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "topic {} out of order: {:?}", topic, order);
            }
        }
    }
}
