//! One outbox per peer shard: what this shard has to say to each peer, waiting for the
//! forwarder task (in `runtime`) to hand it to the channel mesh as one batch. Pure: wakers
//! are std's, so the shard's logic runs in tests without an executor.
//!
//! An outbox at `--mesh-outbox-max-messages` makes the shard *congested*: its publishers'
//! next PUBLISH waits (see `flow.rs`) until the outbox is below its bound again.
//!
//! A batch holds at most `BATCH_MESSAGES_MAX`, so what one shard has in flight to another
//! is bounded in messages (`--mesh-channel-batches` batches of it), not only in batches.
//! That bound is also how late a claim, an eviction or a handoff can be: they queue behind
//! the publishes before them, in order, since the takeover protocol counts on that order.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use super::link::register_waker;
use super::mesh::{MeshMessage, ShardId};

/// Messages the forwarder hands the channel at once: enough to amortise a channel
/// operation, few enough that a full channel drains in milliseconds.
pub const BATCH_MESSAGES_MAX: usize = 1024;

pub struct Outboxes {
    /// Double-ended: a long queue gives its batches from the front, each in O(batch).
    queues: Vec<VecDeque<MeshMessage>>,
    /// Per peer: the forwarder task waiting for something to send.
    forwarders: Vec<Option<Waker>>,
    /// Readers holding a PUBLISH until no outbox is at its bound.
    congestion_waiters: Vec<Waker>,
    messages_max: usize,
}

impl Outboxes {
    pub fn new(shard_count: usize, messages_max: usize) -> Outboxes {
        Outboxes {
            queues: (0..shard_count).map(|_| VecDeque::new()).collect(),
            forwarders: (0..shard_count).map(|_| None).collect(),
            congestion_waiters: Vec::new(),
            messages_max,
        }
    }

    /// Queues `message` for `peer` and wakes its forwarder.
    pub fn push(&mut self, peer: ShardId, message: MeshMessage) {
        self.queues[peer.0].push_back(message);
        if let Some(waker) = self.forwarders[peer.0].take() {
            waker.wake();
        }
    }

    /// Forwarder side: the next batch for `peer` (at most `BATCH_MESSAGES_MAX`, oldest
    /// first), once there is one.
    pub fn poll_take(&mut self, peer: ShardId, cx: &mut Context<'_>) -> Poll<Vec<MeshMessage>> {
        if self.queues[peer.0].is_empty() {
            self.forwarders[peer.0] = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let queue = &mut self.queues[peer.0];
        let batch: Vec<MeshMessage> = if queue.len() <= BATCH_MESSAGES_MAX {
            std::mem::take(queue).into()
        } else {
            // The rest stays queued, in order, for the forwarder's next turn.
            queue.drain(..BATCH_MESSAGES_MAX).collect()
        };
        if !self.congested() {
            for waker in self.congestion_waiters.drain(..) {
                waker.wake();
            }
        }
        Poll::Ready(batch)
    }

    /// Messages waiting for the forwarders, over every peer.
    pub fn depth(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// True while some peer's outbox is at its bound.
    pub fn congested(&self) -> bool {
        self.queues.iter().any(|queue| queue.len() >= self.messages_max)
    }

    /// Wakes `waker` once no outbox is at its bound any more.
    pub fn wake_when_uncongested(&mut self, waker: &Waker) {
        register_waker(&mut self.congestion_waiters, waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(index: usize) -> MeshMessage {
        MeshMessage::InterestLeave { filter: bytes::Bytes::from(index.to_string()) }
    }

    fn number(message: &MeshMessage) -> usize {
        match message {
            MeshMessage::InterestLeave { filter } => std::str::from_utf8(filter).unwrap().parse().unwrap(),
            _ => unreachable!("only numbered messages are queued"),
        }
    }

    #[test]
    fn batches_are_bounded_and_keep_the_order() {
        let total = 2 * BATCH_MESSAGES_MAX + 7;
        let mut outboxes = Outboxes::new(2, 8192);
        for index in 0..total {
            outboxes.push(ShardId(1), numbered(index));
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut taken = Vec::new();
        while let Poll::Ready(batch) = outboxes.poll_take(ShardId(1), &mut cx) {
            assert!(!batch.is_empty() && batch.len() <= BATCH_MESSAGES_MAX);
            taken.extend(batch.iter().map(number));
        }
        assert_eq!(taken, (0..total).collect::<Vec<_>>());
        assert_eq!(outboxes.depth(), 0);
    }

    #[test]
    fn publishers_stay_paused_while_the_rest_of_a_long_outbox_waits() {
        let max = 2 * BATCH_MESSAGES_MAX;
        let mut outboxes = Outboxes::new(2, max);
        for index in 0..max + BATCH_MESSAGES_MAX {
            outboxes.push(ShardId(1), numbered(index));
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(outboxes.congested());
        assert!(outboxes.poll_take(ShardId(1), &mut cx).is_ready());
        assert!(outboxes.congested(), "one batch out, still at the bound");
        assert!(outboxes.poll_take(ShardId(1), &mut cx).is_ready());
        assert!(!outboxes.congested());
    }
}
