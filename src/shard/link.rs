//! A `Link` is the shard's handle on one live network connection: the bytes waiting to
//! be written and the state the IO tasks wait on. Pure: wakers are `std::task::Waker`, so
//! shard logic that writes to links runs in tests without sockets or an executor.
//!
//! Everything a shard wants to send to a client is appended here; the connection's writer
//! task takes the whole buffer at once, so all packets produced in one wake-up leave in
//! one write.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};

use super::ClientKey;
use super::durability::{Durability, Ticket};
use super::mesh::ConnId;
use crate::protocol::{Packet, ProtocolVersion};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// CONNECT received, waiting for the home shard to settle the client id.
    Connecting,
    /// CONNACK sent; packets flow.
    Open,
    /// Flush what is buffered, then close the socket.
    Closing,
}

pub struct Link {
    pub conn_id: ConnId,
    state: Cell<LinkState>,
    out: RefCell<BytesMut>,
    writer_waker: Cell<Option<Waker>>,
    reader_waker: Cell<Option<Waker>>,
    /// The client's Maximum Packet Size (5.0): nothing larger is written to it.
    max_packet_size_out: Cell<u32>,
    /// SUBACKs/UNSUBACKs waiting for every peer shard; at `HELD_ANSWERS_MAX` the client's
    /// further packets wait unread, so one client cannot queue unbounded subscribe work.
    held_answers: Cell<u32>,
    /// Subscribers with a full queue that this connection publishes to: while non-zero,
    /// its next QoS 1/2 PUBLISH waits unread (see `flow.rs`).
    paused_by: Cell<u32>,
    /// This connection's own session queue is full: it is never paused itself, since its
    /// acknowledgements (behind its next PUBLISH) are what drains that queue.
    queue_full: Cell<bool>,
    /// The reader holds a PUBLISH it may not hand over yet: the client is not idle.
    waiting_to_publish: Cell<bool>,
    /// The shard has retained messages for this client waiting for the output to drain.
    wants_drained: Cell<bool>,
    /// Counted among the shard's half-open connections (accepted, not yet through CONNECT).
    half_open: Cell<bool>,
    /// Counted against `--max-connections` (from admission until the connection ends).
    holds_connection_slot: Cell<bool>,
    /// The client's address: the socket's peer, or the one a PROXY protocol header gave.
    peer: Cell<Option<std::net::SocketAddr>>,
    /// `--durability sync`: output held until what it acknowledges is on disk.
    held: RefCell<Option<Held>>,
    /// The client slot this connection was last found in. Only a hint: the shard checks
    /// that the slot still holds this connection before using it.
    client_slot: Cell<Option<ClientKey>>,
}

/// Output waiting for tickets (`durability.rs`): the bytes from each gate's offset on wait
/// for its ticket, and for every earlier gate's.
struct Held {
    durability: Rc<Durability>,
    gates: VecDeque<(usize, Ticket)>,
    /// The client's session is persistent: everything written to it waits for the commit
    /// of the changes made before it.
    persistent: bool,
}

/// Subscribe/unsubscribe requests one connection may have waiting for peer shards.
pub const HELD_ANSWERS_MAX: u32 = 8;

impl Link {
    pub fn new(conn_id: ConnId) -> Link {
        Link {
            conn_id,
            state: Cell::new(LinkState::Connecting),
            out: RefCell::new(BytesMut::new()),
            writer_waker: Cell::new(None),
            reader_waker: Cell::new(None),
            max_packet_size_out: Cell::new(u32::MAX),
            held_answers: Cell::new(0),
            paused_by: Cell::new(0),
            queue_full: Cell::new(false),
            waiting_to_publish: Cell::new(false),
            wants_drained: Cell::new(false),
            half_open: Cell::new(true),
            holds_connection_slot: Cell::new(false),
            peer: Cell::new(None),
            held: RefCell::new(None),
            client_slot: Cell::new(None),
        }
    }

    /// The client slot this connection was last found in, if any (see `client_slot`).
    pub(super) fn client_slot_hint(&self) -> Option<ClientKey> {
        self.client_slot.get()
    }

    pub(super) fn remember_client_slot(&self, key: ClientKey) {
        self.client_slot.set(Some(key));
    }

    /// `--durability sync`: this link's output may be held for `durability`'s tickets.
    pub(crate) fn attach_durability(&self, durability: Rc<Durability>) {
        *self.held.borrow_mut() = Some(Held { durability, gates: VecDeque::new(), persistent: false });
    }

    /// The client's session is persistent (or no longer is): see `Held::persistent`.
    pub(crate) fn set_persistent(&self, persistent: bool) {
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.persistent = persistent;
        }
    }

    /// What is written from now on waits for `ticket` (an acknowledgement of a publish).
    pub(crate) fn hold_until(&self, ticket: Ticket) {
        let offset = self.out.borrow().len();
        if let Some(held) = self.held.borrow_mut().as_mut() {
            push_gate(&mut held.gates, offset, ticket);
        }
    }

    /// How much of `out` may be written now. Gates whose tickets are satisfied go; if
    /// writing failed, the held output is dropped and the link closes (the client sends
    /// again to a broker that can store it).
    fn sendable(&self, out: &mut BytesMut, cx: &mut Context<'_>) -> usize {
        let mut held = self.held.borrow_mut();
        let Some(held) = held.as_mut() else { return out.len() };
        while held.gates.front().is_some_and(|(_, ticket)| held.durability.is_satisfied(ticket)) {
            held.gates.pop_front();
        }
        let Some(&(offset, _)) = held.gates.front() else { return out.len() };
        if held.durability.is_failed() {
            out.truncate(offset);
            held.gates.clear();
            self.state.set(LinkState::Closing);
            wake(&self.reader_waker);
            return offset;
        }
        held.durability.wait_for_tickets(cx.waker());
        offset
    }

    fn taken(&self, count: usize) {
        if let Some(held) = self.held.borrow_mut().as_mut() {
            for (offset, _) in held.gates.iter_mut() {
                *offset -= count;
            }
        }
    }

    /// Reader side, before a SUBSCRIBE: resolves once no retained message waits for this
    /// connection's output to drain, or the link is closing. So a client that subscribes
    /// again and again without reading cannot pile up copies of the retained store. (Only
    /// output is waited for: the writer drains it on its own, whereas a QoS 1/2 backlog
    /// waits for acknowledgements that may sit behind this very SUBSCRIBE.)
    pub async fn wait_for_retained_sent(&self) {
        poll_fn(|cx| {
            if !self.wants_drained.get() || self.state.get() == LinkState::Closing {
                return Poll::Ready(());
            }
            self.reader_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// True once, when the link stops being half-open (opened, or ended before that).
    pub(crate) fn leave_half_open(&self) -> bool {
        self.half_open.replace(false)
    }

    pub fn set_peer(&self, peer: std::net::SocketAddr) {
        self.peer.set(Some(peer));
    }

    /// The client's address, if the IO layer knows it.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer.get()
    }

    /// The client's address for a log line ("unknown" when there is none).
    pub fn peer_label(&self) -> String {
        self.peer.get().map_or_else(|| "unknown".to_string(), |peer| peer.to_string())
    }

    pub(crate) fn set_holds_connection_slot(&self) {
        self.holds_connection_slot.set(true);
    }

    /// True once, if the link held a place under `--max-connections`.
    pub(crate) fn take_connection_slot(&self) -> bool {
        self.holds_connection_slot.replace(false)
    }

    /// A subscriber this connection feeds has a full queue. True if that paused it.
    pub(crate) fn pause(&self) -> bool {
        self.paused_by.set(self.paused_by.get() + 1);
        self.paused_by.get() == 1
    }

    /// That subscriber drained (or left).
    pub(crate) fn resume(&self) {
        self.paused_by.set(self.paused_by.get().saturating_sub(1));
        if self.paused_by.get() == 0 {
            wake(&self.reader_waker);
        }
    }

    /// Whether a QoS 1/2 PUBLISH from this connection must wait.
    pub fn is_paused(&self) -> bool {
        self.paused_by.get() > 0 && !self.queue_full.get()
    }

    pub(crate) fn set_queue_full(&self, full: bool) {
        self.queue_full.set(full);
        if full {
            wake(&self.reader_waker);
        }
    }

    pub fn is_waiting_to_publish(&self) -> bool {
        self.waiting_to_publish.get()
    }

    pub(crate) fn set_waiting_to_publish(&self, waiting: bool) {
        self.waiting_to_publish.set(waiting);
    }

    /// Reader side: be woken by whatever wakes the reader (pause ending, closing).
    pub(crate) fn register_reader(&self, waker: &Waker) {
        self.reader_waker.set(Some(waker.clone()));
    }

    /// Whether the writer should tell the shard each time the output has been written.
    pub fn wants_drained(&self) -> bool {
        self.wants_drained.get()
    }

    pub(crate) fn set_wants_drained(&self, wants: bool) {
        self.wants_drained.set(wants);
        if !wants {
            wake(&self.reader_waker);
        }
    }

    /// A SUBACK/UNSUBACK for this connection now waits for the peers.
    pub(crate) fn answer_held(&self) {
        self.held_answers.set(self.held_answers.get() + 1);
    }

    /// A held answer went out; the reader may go on if it was waiting for that.
    pub(crate) fn answer_released(&self) {
        self.held_answers.set(self.held_answers.get().saturating_sub(1));
        wake(&self.reader_waker);
    }

    /// Reader side: resolves once fewer than `HELD_ANSWERS_MAX` answers wait, or closing.
    pub async fn wait_for_held_answers(&self) {
        poll_fn(|cx| {
            if self.held_answers.get() < HELD_ANSWERS_MAX || self.state.get() == LinkState::Closing {
                return Poll::Ready(());
            }
            self.reader_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    pub fn max_packet_size_out(&self) -> u32 {
        self.max_packet_size_out.get()
    }

    /// From the client's CONNECT, before anything is written to it.
    pub fn set_max_packet_size_out(&self, bytes: u32) {
        self.max_packet_size_out.set(bytes);
    }

    /// Encodes and appends a packet unless it exceeds the client's Maximum Packet Size; a
    /// packet over it loses its Reason String and User Properties first. Returns whether it
    /// was written ([MQTT-3.1.2-24]: a packet that still does not fit is not sent).
    pub fn write_packet(&self, version: ProtocolVersion, packet: &Packet) -> bool {
        let limit = self.max_packet_size_out.get() as usize;
        let encode = |packet: &Packet| {
            let mut fits = false;
            self.write_with(|buf| {
                let start = buf.len();
                packet.encode(version, buf);
                fits = buf.len() - start <= limit;
                if !fits {
                    buf.truncate(start);
                }
            });
            fits
        };
        if encode(packet) {
            return true;
        }
        let mut stripped = packet.clone();
        stripped.strip_diagnostics() && encode(&stripped)
    }

    pub fn state(&self) -> LinkState {
        self.state.get()
    }

    pub fn is_closing(&self) -> bool {
        self.state.get() == LinkState::Closing
    }

    /// CONNACK has been sent: the client's packets may be read.
    pub(crate) fn open(&self) {
        debug_assert_eq!(self.state.get(), LinkState::Connecting);
        self.state.set(LinkState::Open);
        wake(&self.reader_waker);
    }

    /// Appends bytes to be written. Ignored once closing: the connection is going away.
    pub fn write_with(&self, encode: impl FnOnce(&mut BytesMut)) {
        if self.state.get() == LinkState::Closing {
            return;
        }
        let mut out = self.out.borrow_mut();
        if let Some(held) = self.held.borrow_mut().as_mut().filter(|held| held.persistent) {
            let ticket = held.durability.ticket(None);
            push_gate(&mut held.gates, out.len(), ticket);
        }
        encode(&mut out);
        wake(&self.writer_waker);
    }

    pub fn buffered_bytes(&self) -> usize {
        self.out.borrow().len()
    }

    /// Takes everything buffered, without waiting (simulation and tests read links this way).
    pub fn take_output(&self) -> Bytes {
        self.out.borrow_mut().split().freeze()
    }

    /// Asks the IO tasks to flush what is buffered and close the socket.
    pub fn close(&self) {
        self.state.set(LinkState::Closing);
        wake(&self.writer_waker);
        wake(&self.reader_waker);
    }

    /// Writer side: waits for bytes (or for closing with nothing left), then takes them all.
    /// `None` means: closing and fully flushed.
    pub async fn next_output(&self) -> Option<Bytes> {
        poll_fn(|cx| {
            let mut out = self.out.borrow_mut();
            let sendable = self.sendable(&mut out, cx);
            if sendable > 0 {
                self.taken(sendable);
                return Poll::Ready(Some(out.split_to(sendable).freeze()));
            }
            if !out.is_empty() {
                // Held for the disk: `sendable` has asked to be woken.
                self.writer_waker.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            if self.state.get() == LinkState::Closing {
                return Poll::Ready(None);
            }
            self.writer_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Reader side: waits until the link is open (`true`) or closing (`false`).
    pub async fn wait_open(&self) -> bool {
        poll_fn(|cx| match self.state.get() {
            LinkState::Open => Poll::Ready(true),
            LinkState::Closing => Poll::Ready(false),
            LinkState::Connecting => {
                self.reader_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Reader side: resolves once the link is closing (used to abandon a pending read).
    pub async fn wait_closing(&self) {
        poll_fn(|cx| {
            if self.state.get() == LinkState::Closing {
                return Poll::Ready(());
            }
            self.reader_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

/// Adds a gate unless the last one already holds for as much (same batch, nothing more).
fn push_gate(gates: &mut VecDeque<(usize, Ticket)>, offset: usize, ticket: Ticket) {
    if let Some((_, last)) = gates.back()
        && ticket.publish.is_none()
        && last.batch >= ticket.batch
    {
        return;
    }
    gates.push_back((offset, ticket));
}

fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

/// Adds `waker` to a list of waiters unless a waker for the same task is already there, so
/// a task polled many times while it waits holds one entry, not one per poll.
pub fn register_waker(waiters: &mut Vec<Waker>, waker: &Waker) {
    if !waiters.iter().any(|waiting| waiting.will_wake(waker)) {
        waiters.push(waker.clone());
    }
}
