//! A persistent session's changes as events, for the session log (`persist::session`).
//!
//! A session whose journal is on records every change to its durable state as it makes it:
//! subscriptions, messages kept for the client, the in-flight window's packet ids and
//! acknowledgement stages, inbound QoS 2 ids. Replaying the events in order on an empty
//! session (`Session::apply`) gives the same state back; `snapshot` gives the events that
//! rebuild the current state from nothing (what a compacted log holds). The events name
//! queue positions, not messages, so the log stores each message once and the rest are
//! small records. Pure: the shard drains the events and the writer encodes them.

use std::sync::Arc;

use bytes::Bytes;

use super::{AckStage, CopyFor, Inflight, Message, Queued, Session, Subscription};
use crate::protocol::PacketId;
use crate::topics::Filter;

/// One change to a session's durable state.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A subscription was added or replaced (the filter as the client wrote it).
    Subscribed {
        filter: Bytes,
        subscription: Subscription,
    },
    Unsubscribed {
        filter: Bytes,
    },
    /// A QoS 1/2 message joined the back of the queue.
    Enqueued {
        message: Arc<Message>,
        copy: CopyFor,
    },
    /// The front of the queue went out under this packet id.
    Sent(PacketId),
    /// The front of the queue expired before it could be sent.
    ExpiredFront,
    /// The front of the queue was dropped for a newer message (queue full, drop-oldest).
    DroppedFront,
    /// The back of the queue was dropped (trimmed to the offline bound, drop-new).
    DroppedBack,
    /// The in-flight message with this id is finished (PUBACK, PUBCOMP, refused PUBREC).
    Finished(PacketId),
    /// The in-flight QoS 2 message with this id got its PUBREC: PUBREL is owed.
    Released(PacketId),
    /// Every queued and in-flight message was given up (a session ending hands its shared
    /// copies to other members).
    Cleared,
    /// An inbound QoS 2 id was received (true) or released by PUBREL (false).
    InboundQos2 {
        packet_id: PacketId,
        pending: bool,
    },
    /// Where packet id allocation goes on (snapshots only: `Sent` implies it otherwise).
    NextPacketId(PacketId),
}

/// An event that does not fit the state it is applied to: the log and the session model
/// disagree (a bug, or records lost in the middle of a log). The event is skipped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a session event that does not apply: {0}")]
pub struct Mismatch(pub &'static str);

impl Session {
    /// Starts recording changes (a persistent session); a no-op if already on.
    pub fn enable_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// Stops recording and drops what was not taken (the session is no longer persistent).
    pub fn disable_journal(&mut self) {
        self.journal = None;
    }

    pub fn is_journaled(&self) -> bool {
        self.journal.is_some()
    }

    /// Whether changes wait to be taken.
    pub fn has_journal_events(&self) -> bool {
        self.journal.as_ref().is_some_and(|events| !events.is_empty())
    }

    /// Moves the recorded changes into `out`, oldest first.
    pub fn take_journal(&mut self, out: &mut Vec<SessionEvent>) {
        if let Some(events) = self.journal.as_mut() {
            out.append(events);
        }
    }

    /// Drops what was recorded so far: a snapshot about to be written covers it.
    pub fn clear_journal(&mut self) {
        if let Some(events) = self.journal.as_mut() {
            events.clear();
        }
    }

    pub(super) fn record(&mut self, event: impl FnOnce() -> SessionEvent) {
        if let Some(events) = self.journal.as_mut() {
            events.push(event());
        }
    }

    /// The events that rebuild this session's durable state on an empty session.
    pub fn snapshot(&self) -> Vec<SessionEvent> {
        let mut events = Vec::with_capacity(self.subscriptions.len() + 2 * self.inflight.len() + self.queued.len() + 1);
        for (text, (_, subscription)) in &self.subscriptions {
            events.push(SessionEvent::Subscribed { filter: text.clone(), subscription: *subscription });
        }
        for entry in &self.inflight {
            events.push(SessionEvent::Enqueued { message: entry.message.clone(), copy: entry.copy.clone() });
            events.push(SessionEvent::Sent(entry.packet_id));
            if entry.stage == AckStage::AwaitingPubComp {
                events.push(SessionEvent::Released(entry.packet_id));
            }
        }
        for entry in &self.queued {
            events.push(SessionEvent::Enqueued { message: entry.message.clone(), copy: entry.copy.clone() });
        }
        let mut inbound: Vec<PacketId> = self.incoming_qos2.iter().copied().collect();
        inbound.sort();
        for packet_id in inbound {
            events.push(SessionEvent::InboundQos2 { packet_id, pending: true });
        }
        events.push(SessionEvent::NextPacketId(self.next_packet_id));
        events
    }

    /// Applies one logged change (recovery). Nothing is recorded while applying.
    pub fn apply(&mut self, event: SessionEvent) -> Result<(), Mismatch> {
        match event {
            SessionEvent::Subscribed { filter, subscription } => {
                let parsed = Filter::parse(&filter).map_err(|_| Mismatch("a logged filter that does not parse"))?;
                self.subscriptions.insert(filter, (parsed, subscription));
            }
            SessionEvent::Unsubscribed { filter } => {
                self.subscriptions.remove(&filter);
            }
            SessionEvent::Enqueued { message, copy } => self.queued.push_back(Queued { copy, message }),
            SessionEvent::Sent(packet_id) => {
                let Queued { copy, message } = self.queued.pop_front().ok_or(Mismatch("sent from an empty queue"))?;
                let stage = if copy.qos == crate::protocol::QoS::AtLeastOnce { AckStage::AwaitingPubAck } else { AckStage::AwaitingPubRec };
                // Of unknown age: the window is searched while it is the oldest.
                self.inflight.push_back(Inflight { packet_id, serial: 0, copy, message, stage });
                self.next_packet_id = packet_id.next();
            }
            SessionEvent::ExpiredFront | SessionEvent::DroppedFront => {
                self.queued.pop_front().ok_or(Mismatch("dropped from an empty queue"))?;
            }
            SessionEvent::DroppedBack => {
                self.queued.pop_back().ok_or(Mismatch("dropped from an empty queue"))?;
            }
            SessionEvent::Finished(packet_id) => {
                let index = self.position(packet_id).ok_or(Mismatch("finished an id not in flight"))?;
                self.inflight.remove(index);
            }
            SessionEvent::Released(packet_id) => {
                let index = self.position(packet_id).ok_or(Mismatch("released an id not in flight"))?;
                self.inflight[index].stage = AckStage::AwaitingPubComp;
            }
            SessionEvent::Cleared => {
                self.inflight.clear();
                self.queued.clear();
            }
            SessionEvent::InboundQos2 { packet_id, pending: true } => {
                self.incoming_qos2.insert(packet_id);
            }
            SessionEvent::InboundQos2 { packet_id, pending: false } => {
                self.incoming_qos2.remove(&packet_id);
            }
            SessionEvent::NextPacketId(packet_id) => self.next_packet_id = packet_id,
        }
        Ok(())
    }
}
