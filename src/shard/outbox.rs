//! One outbox per peer shard: what this shard has to say to each peer, waiting for the
//! forwarder task (in `runtime`) to hand it to the channel mesh as one batch. Pure: wakers
//! are std's, so the shard's logic runs in tests without an executor.
//!
//! An outbox at `--mesh-outbox-max-messages` makes the shard *congested*: its publishers'
//! next PUBLISH waits (see `flow.rs`) until the forwarder has taken the batch.

use std::task::{Context, Poll, Waker};

use super::link::register_waker;
use super::mesh::{MeshMessage, ShardId};

pub struct Outboxes {
    queues: Vec<Vec<MeshMessage>>,
    /// Per peer: the forwarder task waiting for something to send.
    forwarders: Vec<Option<Waker>>,
    /// Readers holding a PUBLISH until no outbox is at its bound.
    congestion_waiters: Vec<Waker>,
    messages_max: usize,
}

impl Outboxes {
    pub fn new(shard_count: usize, messages_max: usize) -> Outboxes {
        Outboxes {
            queues: (0..shard_count).map(|_| Vec::new()).collect(),
            forwarders: (0..shard_count).map(|_| None).collect(),
            congestion_waiters: Vec::new(),
            messages_max,
        }
    }

    /// Queues `message` for `peer` and wakes its forwarder.
    pub fn push(&mut self, peer: ShardId, message: MeshMessage) {
        self.queues[peer.0].push(message);
        if let Some(waker) = self.forwarders[peer.0].take() {
            waker.wake();
        }
    }

    /// Forwarder side: everything queued for `peer`, once there is something.
    pub fn poll_take(&mut self, peer: ShardId, cx: &mut Context<'_>) -> Poll<Vec<MeshMessage>> {
        if self.queues[peer.0].is_empty() {
            self.forwarders[peer.0] = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let batch = std::mem::take(&mut self.queues[peer.0]);
        if !self.congested() {
            for waker in self.congestion_waiters.drain(..) {
                waker.wake();
            }
        }
        Poll::Ready(batch)
    }

    /// Messages waiting for the forwarders, over every peer.
    pub fn depth(&self) -> usize {
        self.queues.iter().map(Vec::len).sum()
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
