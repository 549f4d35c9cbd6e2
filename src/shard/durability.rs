//! `--durability sync`: what may be told to a client only once something is on disk.
//!
//! A *ticket* names what an outgoing packet waits for: this shard's batch of records that
//! was open when the packet was written (its commit covers every change made until then),
//! and, for the PUBACK/PUBREC of a message routed to peers, each of those peers' commit of
//! what that message did there. Peers report the latter as a position in this shard's
//! publish stream (`MeshMessage::Durable`): every publish of ours they applied up to it is
//! on their disk. Both are monotonic counters, so a ticket is three numbers.
//!
//! Links hold their output behind tickets (`Link::hold_until`); the writer task advances
//! the counters after each commit and wakes the links. Shared by one shard's tasks (`Rc`,
//! `Cell`), never across cores.

use std::cell::{Cell, RefCell};
use std::task::Waker;

use super::link::register_waker;

/// What an outgoing packet waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// This shard's batch that must be committed.
    pub batch: u64,
    /// A publish of this shard (its sequence) and the peers (bit per shard) it went to,
    /// each of which must report it durable.
    pub publish: Option<(u64, u128)>,
}

/// One shard's durability state under `--durability sync`.
pub struct Durability {
    /// The batch records go into now; `committed` reaches it once the writer has fsynced it.
    open_batch: Cell<u64>,
    committed: Cell<u64>,
    /// Per peer: how far in this shard's publish stream it has committed what it applied.
    peer_durable: RefCell<Vec<u64>>,
    /// Writing failed and has not recovered: held output is dropped, publishes refused.
    failed: Cell<bool>,
    /// Links waiting for a ticket, and the writer waiting for work.
    waiting_links: RefCell<Vec<Waker>>,
    writer: Cell<Option<Waker>>,
    /// Something waits for the writer (a ticket was issued, a peer's publish applied).
    wanted: Cell<bool>,
    /// `--durability sync`: acknowledgements wait for the disk (under `interval`, this
    /// only tracks failures).
    holds_output: bool,
}

impl Durability {
    pub fn new(shard_count: usize, holds_output: bool) -> Durability {
        Durability {
            holds_output,
            open_batch: Cell::new(1),
            committed: Cell::new(0),
            peer_durable: RefCell::new(vec![0; shard_count]),
            failed: Cell::new(false),
            waiting_links: RefCell::new(Vec::new()),
            writer: Cell::new(None),
            wanted: Cell::new(false),
        }
    }

    pub fn holds_output(&self) -> bool {
        self.holds_output
    }

    /// A ticket for output that depends on every change made so far here; the writer is
    /// told someone waits.
    pub fn ticket(&self, publish: Option<(u64, u128)>) -> Ticket {
        self.want_commit();
        Ticket { batch: self.open_batch.get(), publish }
    }

    pub fn is_satisfied(&self, ticket: &Ticket) -> bool {
        if self.committed.get() < ticket.batch {
            return false;
        }
        let Some((sequence, peers)) = ticket.publish else { return true };
        let durable = self.peer_durable.borrow();
        (0..durable.len()).filter(|&peer| peers & (1u128 << peer) != 0).all(|peer| durable[peer] >= sequence)
    }

    /// Wakes the writer: a commit is wanted.
    pub fn want_commit(&self) {
        self.wanted.set(true);
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    /// Writer side: whether a commit is wanted (clearing the wish), else registers `waker`.
    pub fn take_wanted(&self, waker: &Waker) -> bool {
        if self.wanted.replace(false) {
            return true;
        }
        self.writer.set(Some(waker.clone()));
        false
    }

    /// Writer side: closes the open batch before taking its records; returns its number.
    pub fn close_batch(&self) -> u64 {
        let batch = self.open_batch.get();
        self.open_batch.set(batch + 1);
        batch
    }

    /// Writer side: `batch` (and every one before it) is on disk.
    pub fn committed(&self, batch: u64) {
        self.committed.set(self.committed.get().max(batch));
        self.failed.set(false);
        self.wake_links();
    }

    /// Writer side: writing failed; held output is dropped and publishes refused until a
    /// commit succeeds again.
    pub fn failed(&self) {
        self.failed.set(true);
        self.wake_links();
    }

    pub fn is_failed(&self) -> bool {
        self.failed.get()
    }

    /// Peer `peer` has committed what it applied of this shard's publishes up to `position`.
    pub fn peer_durable(&self, peer: usize, position: u64) {
        let mut durable = self.peer_durable.borrow_mut();
        if position > durable[peer] {
            durable[peer] = position;
            drop(durable);
            self.wake_links();
        }
    }

    pub fn wait_for_tickets(&self, waker: &Waker) {
        register_waker(&mut self.waiting_links.borrow_mut(), waker);
    }

    fn wake_links(&self) {
        for waker in self.waiting_links.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_waits_for_its_batch_and_for_every_peer_it_names() {
        let durability = Durability::new(4, true);
        let local = durability.ticket(None);
        let routed = durability.ticket(Some((7, 0b1010)));
        assert!(!durability.is_satisfied(&local));
        let batch = durability.close_batch();
        let later = durability.ticket(None);
        durability.committed(batch);
        assert!(durability.is_satisfied(&local));
        assert!(!durability.is_satisfied(&later), "a change after the batch closed waits for the next");
        assert!(!durability.is_satisfied(&routed), "no peer has reported yet");
        durability.peer_durable(1, 7);
        durability.peer_durable(2, 100);
        assert!(!durability.is_satisfied(&routed), "peer 3 has not");
        durability.peer_durable(3, 6);
        assert!(!durability.is_satisfied(&routed), "peer 3 is not far enough");
        durability.peer_durable(3, 9);
        assert!(durability.is_satisfied(&routed));
    }

    #[test]
    fn the_writer_is_woken_only_when_someone_waits() {
        let durability = Durability::new(1, true);
        let waker = std::task::Waker::noop();
        assert!(!durability.take_wanted(waker));
        durability.ticket(None);
        assert!(durability.take_wanted(waker));
        assert!(!durability.take_wanted(waker), "taken");
    }
}
