//! Per-client session state, as a plain state machine with no IO and no clock.
//!
//! Owns what MQTT says outlives a connection: subscriptions, outbound QoS 1/2 messages in
//! flight (with their packet ids and acknowledgement stage), messages queued behind the
//! in-flight window or while offline, and inbound QoS 2 packet ids awaiting PUBREL. It is
//! `Send`, so a session can move to the shard its client reconnects on.

mod connection;
mod copy;
mod journal;
#[cfg(test)]
mod journal_tests;
mod lifecycle;
mod message;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

pub use connection::{AliasError, Connection, OutboundAliases};
pub use copy::{CopyFor, Delivery, SharedRoute, merge_matching};
pub use journal::{Mismatch, SessionEvent};
pub use lifecycle::{ConnectionLost, Due, ExpiryRaisedFromZero, Lifecycle, SessionExpiry, TakenOver, will_delay};
pub use message::{Message, detach};

/// One subscription of a session: its options and, in 5.0, its identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

use crate::protocol::{PacketId, QoS, SubscriptionOptions};
use crate::topics::{Filter, filter_matches};

/// Bounds on what one session may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Unacknowledged QoS 1/2 PUBLISH packets sent to the client at once.
    pub inflight_max: u16,
    /// QoS 1/2 messages waiting behind the window or while offline. Online, reaching it
    /// pauses the publishers feeding the session (see `Offer::QueuedFull`); offline, the
    /// `queue_full_policy` decides what is dropped.
    pub queued_messages_max: usize,
    pub queue_full_policy: QueueFullPolicy,
}

impl SessionLimits {
    /// What an online session may hold while its publishers are being paused: messages
    /// already on their way when the pause was sent still arrive, and a publisher on
    /// another core can have tens of thousands in the shard-to-shard queues by the time
    /// its pause lands (measured: ~11,000 for one 1 KiB QoS 1 publisher on 2 shards). Past
    /// this (a client that feeds stalled subscribers while being one itself, or thousands
    /// of publishers feeding one subscriber at once) they are dropped and counted, so
    /// memory stays bounded. The messages are already in memory (in the queues they came
    /// through); queued, each costs one entry and a reference.
    pub fn queued_hard_max(&self) -> usize {
        self.queued_messages_max.saturating_mul(4).saturating_add(65_536)
    }

    /// Below this the publishers a full queue paused may go on (half the bound, so a queue
    /// hovering at its bound does not pause and release them on every message).
    pub fn queued_resume_below(&self) -> usize {
        self.queued_messages_max / 2 + 1
    }
}

/// Which QoS 1/2 message an offline session's full queue gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFullPolicy {
    /// Keep what is queued; the new message is dropped.
    DropNew,
    /// Drop the oldest queued message to make room for the new one.
    DropOldest,
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStage {
    AwaitingPubAck,
    AwaitingPubRec,
    AwaitingPubComp,
}

/// One message in the window: 32 bytes (a window entry per recipient is what a QoS 1/2
/// fan-out with full windows walks through; see `copy.rs`).
#[derive(Debug, Clone)]
struct Inflight {
    packet_id: PacketId,
    /// The session's allocation count (wrapping) when this id was given (see
    /// `allocate_packet_id`); 0 for an entry whose age is unknown: read back from the
    /// session log, found a lap of ids old, or given as the count wrapped to 0 (searched
    /// for until acknowledged, once per 2^32 sends).
    serial: u32,
    copy: CopyFor,
    message: Arc<Message>,
    stage: AckStage,
}

/// A whole lap of packet ids.
const ID_LAP: u32 = u16::MAX as u32;

#[derive(Debug, Clone)]
struct Queued {
    copy: CopyFor,
    message: Arc<Message>,
}

/// A packet the session wants written to its client.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Publish {
        packet_id: Option<PacketId>,
        qos: QoS,
        dup: bool,
        retain: bool,
        /// Identifiers of the recipient's matching subscriptions (5.0).
        subscription_ids: Vec<u32>,
        message: Arc<Message>,
    },
    PubRel(PacketId),
}

/// What an acknowledgement from the client found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// It acknowledged a message at the stage this kind of acknowledgement answers.
    Done,
    /// No message with this id is in flight (a late duplicate, say): nothing to do.
    Unknown,
    /// The id is in flight but waits for another kind of acknowledgement (PUBCOMP for a
    /// QoS 1 message, PUBACK for a QoS 2 one...): a protocol violation.
    WrongKind,
}

/// The offered message, to be written now: how (its QoS 1/2 copy is in flight).
#[derive(Debug, Clone, PartialEq)]
pub struct SendNow {
    pub packet_id: Option<PacketId>,
    pub qos: QoS,
    pub retain: bool,
    /// Identifiers of the recipient's matching subscriptions (5.0).
    pub subscription_ids: Vec<u32>,
}

impl SendNow {
    /// The send, as a message to write borrowed from `message`.
    pub fn publish_ref<'a>(&'a self, message: &'a Arc<Message>) -> PublishRef<'a> {
        PublishRef { packet_id: self.packet_id, qos: self.qos, retain: self.retain, subscription_ids: &self.subscription_ids, message }
    }

    /// The packet the session's model compares a send with.
    #[cfg(test)]
    pub fn into_outgoing(self, message: Arc<Message>) -> Outgoing {
        let SendNow { packet_id, qos, retain, subscription_ids } = self;
        Outgoing::Publish { packet_id, qos, dup: false, retain, subscription_ids, message }
    }
}

/// A message to write, borrowed from where it is kept (the window's entry, say).
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// None for a QoS 0 message.
    pub packet_id: Option<PacketId>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: &'a [u32],
    pub message: &'a Arc<Message>,
}

impl PublishRef<'_> {
    pub fn to_outgoing(self) -> Outgoing {
        Outgoing::Publish {
            packet_id: self.packet_id,
            qos: self.qos,
            dup: false,
            retain: self.retain,
            subscription_ids: self.subscription_ids.to_vec(),
            message: self.message.clone(),
        }
    }
}

/// What became of a message offered to the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// Write the offered message now, as this says.
    Send(SendNow),
    /// Kept until the window opens or the client returns.
    Queued,
    /// Kept, by an online session whose queue is at (or past) its bound: the publisher
    /// should be paused until the session drains.
    QueuedFull,
    /// Kept by an offline session, which dropped its oldest message for it.
    QueuedDroppingOldest,
    /// Not kept: QoS 0 to an offline client, a full offline queue (drop-new), or an online
    /// queue at its hard bound.
    Dropped,
}

#[derive(Debug, Clone)]
pub struct Session {
    client_id: Bytes,
    limits: SessionLimits,
    /// Filter as the client wrote it -> the parsed filter and its options, one entry per
    /// filter (re-subscribing replaces).
    subscriptions: BTreeMap<Bytes, (Filter, Subscription)>,
    inflight: VecDeque<Inflight>,
    queued: VecDeque<Queued>,
    incoming_qos2: HashSet<PacketId>,
    next_packet_id: PacketId,
    /// Packet ids allocated so far, wrapping (for `allocate_packet_id`'s shortcut).
    allocated: u32,
    /// Messages this session had to drop (queue full, or QoS 0 while offline).
    pub dropped_count: u64,
    /// Queued messages whose expiry passed before delivery could start.
    pub expired_count: u64,
    /// Changes not yet taken for the session log; `None` unless the session is persistent.
    journal: Option<Vec<SessionEvent>>,
    /// In a cluster (`cluster::message_stream`): a time (Unix ms) before which every message
    /// published was acknowledged by this session or is not owed to it; 0 when unknown.
    /// Only the cluster's session record carries it.
    checkpoint_ms: u64,
    /// A QoS 1/2 message was offered since the checkpoint was set: only then can moving
    /// it spare a replay anything.
    offered_since_checkpoint: bool,
}

impl Session {
    pub fn new(client_id: Bytes, limits: SessionLimits) -> Session {
        assert!(limits.inflight_max > 0, "a zero in-flight window would never deliver");
        Session {
            client_id,
            limits,
            subscriptions: BTreeMap::new(),
            inflight: VecDeque::new(),
            queued: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            next_packet_id: PacketId::new(1).expect("1 is non-zero"),
            allocated: 0,
            dropped_count: 0,
            expired_count: 0,
            journal: None,
            checkpoint_ms: 0,
            offered_since_checkpoint: false,
        }
    }

    /// See `checkpoint_ms` (the field).
    pub fn checkpoint_ms(&self) -> u64 {
        self.checkpoint_ms
    }

    pub fn set_checkpoint_ms(&mut self, checkpoint_ms: u64) {
        self.checkpoint_ms = checkpoint_ms;
        self.offered_since_checkpoint = false;
    }

    pub fn offered_since_checkpoint(&self) -> bool {
        self.offered_since_checkpoint
    }

    /// Whether the session owes its client nothing: nothing in flight, nothing queued.
    pub fn owes_nothing(&self) -> bool {
        self.inflight.is_empty() && self.queued.is_empty()
    }

    /// The client's Receive Maximum (5.0) narrows the window for this connection.
    pub fn set_inflight_max(&mut self, inflight_max: u16) {
        assert!(inflight_max > 0, "a zero in-flight window would never deliver");
        self.limits.inflight_max = inflight_max;
    }

    pub fn client_id(&self) -> &Bytes {
        &self.client_id
    }

    /// Adds or replaces the subscription to `filter`; true if it replaced one. The shard
    /// keeps its trie and interest summary in step (`Shard::add_subscription`).
    pub fn subscribe(&mut self, filter: Filter, subscription: Subscription) -> bool {
        let text = filter.text();
        self.record(|| SessionEvent::Subscribed { filter: text.clone(), subscription });
        self.subscriptions.insert(text, (filter, subscription)).is_some()
    }

    /// Removes the subscription to the filter the client wrote as `text`, if any.
    pub fn unsubscribe(&mut self, text: &[u8]) -> Option<Filter> {
        let (filter, _) = self.subscriptions.remove(text)?;
        self.record(|| SessionEvent::Unsubscribed { filter: Bytes::copy_from_slice(text) });
        Some(filter)
    }

    /// The subscription to the filter the client wrote as `text`.
    pub fn subscription(&self, text: &[u8]) -> Option<&Subscription> {
        self.subscriptions.get(text).map(|(_, subscription)| subscription)
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&Filter, &Subscription)> {
        self.subscriptions.values().map(|(filter, subscription)| (filter, subscription))
    }

    /// How this session's own subscriptions take `message`, merged into one copy: for a
    /// message matched against one session rather than the shard's trie (a takeover's
    /// catch-up, a cluster replay). Shared subscriptions are left out: each of a group's
    /// messages went to the member chosen for it.
    pub fn own_delivery(&self, message: &Message) -> Option<Delivery> {
        let matching = self
            .subscriptions()
            .filter(|(filter, _)| !filter.is_shared() && filter_matches(filter.matched(), &message.topic))
            .map(|(_, subscription)| subscription);
        merge_matching(matching, message.publisher.as_ref() == Some(&self.client_id))
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    fn window_open(&self) -> bool {
        self.inflight.len() < usize::from(self.limits.inflight_max)
    }

    fn allocate_packet_id(&mut self) -> PacketId {
        // Ids are given in sequence and the window keeps them in that order, so the next
        // id can only be in use if the oldest in-flight message got its id a whole lap of
        // 65,535 ids ago (it stayed unacknowledged while 65,535 others went). Only then is
        // the window searched: sending stays O(1) at any window size (a search per send
        // cost 5% of a QoS 1 fan-out at a window of 64, more at 256).
        //
        // The count wraps (4 bytes keep the entry at 32), so an entry found a lap old loses
        // its serial (0: age unknown) before the count could come round and make it look
        // young: while the oldest is a lap old every send checks them all, and while it is
        // not, no younger entry can be.
        let allocated = self.allocated;
        let lap_old = |serial: u32| serial == 0 || allocated.wrapping_add(1).wrapping_sub(serial) >= ID_LAP;
        let lapped = self.inflight.front().is_some_and(|oldest| lap_old(oldest.serial));
        loop {
            let candidate = self.next_packet_id;
            self.next_packet_id = candidate.next();
            self.allocated = self.allocated.wrapping_add(1);
            if !lapped {
                return candidate;
            }
            // One pass: forget the age of every lap-old entry and look for the candidate.
            let mut in_use = false;
            for entry in &mut self.inflight {
                if entry.serial != 0 && lap_old(entry.serial) {
                    entry.serial = 0;
                }
                in_use |= entry.packet_id == candidate;
            }
            if !in_use {
                return candidate;
            }
        }
    }

    /// Puts `message` in flight as `copy` says and gives it its packet id.
    fn start_inflight(&mut self, copy: CopyFor, message: Arc<Message>) -> PacketId {
        debug_assert!(copy.qos != QoS::AtMostOnce);
        let packet_id = self.allocate_packet_id();
        let stage = if copy.qos == QoS::AtLeastOnce { AckStage::AwaitingPubAck } else { AckStage::AwaitingPubRec };
        let serial = self.allocated;
        self.inflight.push_back(Inflight { packet_id, serial, copy, message, stage });
        self.record(|| SessionEvent::Sent(packet_id));
        packet_id
    }

    fn push_queued(&mut self, copy: CopyFor, message: Arc<Message>) {
        self.record(|| SessionEvent::Enqueued { message: message.clone(), copy: copy.clone() });
        self.queued.push_back(Queued { copy, message });
    }

    /// Offers a message as `copy` says. QoS 1/2 order is kept: no QoS 1/2 message
    /// overtakes one already queued. An online QoS 0 message goes out at once, ahead of
    /// queued QoS 1/2 ones (MQTT orders messages per topic and QoS, 5.0 4.6).
    ///
    /// `message` is borrowed: a copy written at once needs no reference of its own (the
    /// caller writes it), so only a kept copy costs a reference count.
    pub fn offer(&mut self, message: &Arc<Message>, copy: CopyFor, online: bool) -> Offer {
        if copy.qos == QoS::AtMostOnce {
            if online {
                let (qos, retain) = (copy.qos, copy.retain);
                return Offer::Send(SendNow { packet_id: None, qos, retain, subscription_ids: copy.into_subscription_ids() });
            }
            self.dropped_count += 1;
            return Offer::Dropped;
        }
        self.offered_since_checkpoint = true;
        if online && self.queued.is_empty() && self.window_open() {
            self.record(|| SessionEvent::Enqueued { message: message.clone(), copy: copy.clone() });
            let (qos, retain, subscription_ids) = (copy.qos, copy.retain, copy.subscription_ids().to_vec());
            let packet_id = Some(self.start_inflight(copy, message.clone()));
            return Offer::Send(SendNow { packet_id, qos, retain, subscription_ids });
        }
        if online {
            if self.queued.len() >= self.limits.queued_hard_max() {
                self.dropped_count += 1;
                return Offer::Dropped;
            }
            self.push_queued(copy, message.clone());
            return if self.queued.len() >= self.limits.queued_messages_max { Offer::QueuedFull } else { Offer::Queued };
        }
        if self.queued.len() < self.limits.queued_messages_max {
            self.push_queued(copy, message.clone());
            return Offer::Queued;
        }
        self.dropped_count += 1;
        match self.limits.queue_full_policy {
            QueueFullPolicy::DropNew => Offer::Dropped,
            QueueFullPolicy::DropOldest => {
                self.queued.pop_front();
                self.record(|| SessionEvent::DroppedFront);
                self.push_queued(copy, message.clone());
                Offer::QueuedDroppingOldest
            }
        }
    }

    /// Whether the queue is at its bound (an online session's publishers should pause).
    pub fn is_queue_full(&self) -> bool {
        self.queued.len() >= self.limits.queued_messages_max
    }

    /// Whether a queue that was full has drained enough for its publishers to go on.
    pub fn may_resume_publishers(&self) -> bool {
        self.queued.len() < self.limits.queued_resume_below()
    }

    /// The client went offline with more queued than an offline session may keep (an
    /// online queue may run past its bound while publishers are being paused): trim it to
    /// the bound by the queue-full policy. Returns how many messages were dropped.
    pub fn trim_to_offline_bound(&mut self) -> usize {
        let excess = self.queued.len().saturating_sub(self.limits.queued_messages_max);
        for _ in 0..excess {
            match self.limits.queue_full_policy {
                QueueFullPolicy::DropNew => {
                    self.queued.pop_back();
                    self.record(|| SessionEvent::DroppedBack);
                }
                QueueFullPolicy::DropOldest => {
                    self.queued.pop_front();
                    self.record(|| SessionEvent::DroppedFront);
                }
            }
        }
        self.dropped_count += excess as u64;
        excess
    }

    /// For a session that is ending: the QoS 1/2 copies that came through a shared
    /// subscription and that the client has not taken (queued, or sent and not yet
    /// acknowledged with PUBACK/PUBREC), to go to another member (MQTT 5.0 4.8.2).
    pub fn take_unfinished_shared(&mut self) -> Vec<(Arc<Message>, QoS, SharedRoute)> {
        let mut unfinished = Vec::new();
        if !self.inflight.is_empty() || !self.queued.is_empty() {
            self.record(|| SessionEvent::Cleared);
        }
        for entry in std::mem::take(&mut self.inflight) {
            if matches!(entry.stage, AckStage::AwaitingPubAck | AckStage::AwaitingPubRec) {
                let qos = entry.copy.qos;
                if let Some(route) = entry.copy.into_shared() {
                    unfinished.push((entry.message, qos, route));
                }
            }
        }
        for entry in std::mem::take(&mut self.queued) {
            let qos = entry.copy.qos;
            if let Some(route) = entry.copy.into_shared() {
                unfinished.push((entry.message, qos, route));
            }
        }
        unfinished
    }

    /// Moves queued messages into the window while it has room; expired ones are dropped.
    pub fn fill_window(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        self.fill_window_with(now, |publish| out.push(publish.to_outgoing()));
    }

    /// `fill_window`, handing each message put in flight to `send` as it goes: the
    /// writer encodes it from the window's own entry, so nothing is built, counted or
    /// dropped per message on the way (the shard's path after every acknowledgement
    /// while messages queue).
    pub fn fill_window_with(&mut self, now: Instant, mut send: impl FnMut(PublishRef<'_>)) {
        while self.window_open() {
            let Some(next) = self.queued.pop_front() else { break };
            if next.message.is_expired(now) {
                self.expired_count += 1;
                self.record(|| SessionEvent::ExpiredFront);
                continue;
            }
            self.start_inflight(next.copy, next.message);
            if let Some(entry) = self.inflight.back() {
                send(PublishRef {
                    packet_id: Some(entry.packet_id),
                    qos: entry.copy.qos,
                    retain: entry.copy.retain,
                    subscription_ids: entry.copy.subscription_ids(),
                    message: &entry.message,
                });
            }
        }
    }

    /// On reconnect with a kept session: re-send everything unacknowledged with DUP set
    /// (a PUBREL for those past PUBREC), in the original order, then fill the window.
    pub fn resume(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        for entry in &self.inflight {
            out.push(match entry.stage {
                AckStage::AwaitingPubComp => Outgoing::PubRel(entry.packet_id),
                AckStage::AwaitingPubAck | AckStage::AwaitingPubRec => Outgoing::Publish {
                    packet_id: Some(entry.packet_id),
                    qos: entry.copy.qos,
                    dup: true,
                    retain: entry.copy.retain,
                    subscription_ids: entry.copy.subscription_ids().to_vec(),
                    message: entry.message.clone(),
                },
            });
        }
        self.fill_window(now, out);
    }

    /// Where `packet_id` is in the window. Acknowledgements mostly come in order, so the
    /// oldest entry is tried first. Otherwise (a QoS 2 window holds messages waiting for
    /// PUBCOMP ahead of those waiting for PUBREC) the id says when it was given: ids go
    /// out in sequence, so its distance behind the last id given is how many allocations
    /// ago that was, which is the entry's `serial`; with the window in serial order and
    /// no gaps (acknowledged in order, the usual case) the entry is that many places
    /// behind the oldest. Anything else (gaps, an entry older than a lap of ids or read
    /// back from the session log) is found by a scan. A binary search by serial cost more
    /// than the scan: a cache miss per probe, where the scan streams.
    fn position(&self, packet_id: PacketId) -> Option<usize> {
        let front = self.inflight.front()?;
        if front.packet_id == packet_id {
            return Some(0);
        }
        let last_given = u32::from(self.next_packet_id.get()) + ID_LAP - 1;
        let behind = (last_given - u32::from(packet_id.get())) % ID_LAP;
        // Wrapping: a guess past the window (the count came round) fails the check below.
        let index = self.allocated.wrapping_sub(behind).wrapping_sub(front.serial);
        if front.serial != 0
            && let Some(entry) = self.inflight.get(index as usize)
            && entry.packet_id == packet_id
        {
            return Some(index as usize);
        }
        self.inflight.iter().position(|entry| entry.packet_id == packet_id)
    }

    /// Applies an acknowledgement that is right for `expected` (and for `also`, if given);
    /// `then` runs on the entry's index. An id in flight at another stage was acknowledged
    /// with the wrong packet type.
    fn acknowledge(
        &mut self,
        packet_id: PacketId,
        expected: AckStage,
        also: Option<AckStage>,
        then: impl FnOnce(&mut Self, usize),
    ) -> AckOutcome {
        let Some(index) = self.position(packet_id) else { return AckOutcome::Unknown };
        let stage = self.inflight[index].stage;
        if stage != expected && Some(stage) != also {
            return AckOutcome::WrongKind;
        }
        then(self, index);
        AckOutcome::Done
    }

    /// PUBACK for a QoS 1 message.
    pub fn on_puback(&mut self, packet_id: PacketId) -> AckOutcome {
        self.acknowledge(packet_id, AckStage::AwaitingPubAck, None, |session, index| session.finish(index))
    }

    fn finish(&mut self, index: usize) {
        if let Some(entry) = self.inflight.remove(index) {
            self.record(|| SessionEvent::Finished(entry.packet_id));
        }
    }

    /// PUBREC for a QoS 2 message: the message is now the client's; answer with PUBREL.
    /// A repeated PUBREC (the client did not see our PUBREL) is answered again. A PUBREC
    /// with an error reason code (>= 0x80) ends the flow there: no PUBREL, the id is free
    /// (MQTT 5.0 4.3.3).
    pub fn on_pubrec(&mut self, packet_id: PacketId, refused: bool) -> AckOutcome {
        if refused {
            return self.acknowledge(packet_id, AckStage::AwaitingPubRec, None, |session, index| session.finish(index));
        }
        self.acknowledge(packet_id, AckStage::AwaitingPubRec, Some(AckStage::AwaitingPubComp), |session, index| {
            if session.inflight[index].stage != AckStage::AwaitingPubComp {
                session.inflight[index].stage = AckStage::AwaitingPubComp;
                session.record(|| SessionEvent::Released(packet_id));
            }
        })
    }

    /// PUBCOMP ends a QoS 2 flow.
    pub fn on_pubcomp(&mut self, packet_id: PacketId) -> AckOutcome {
        self.acknowledge(packet_id, AckStage::AwaitingPubComp, None, |session, index| session.finish(index))
    }

    /// An inbound QoS 2 PUBLISH: true the first time this id is seen (route the message),
    /// false for a resend before PUBREL (answer PUBREC again, route nothing).
    pub fn receive_qos2(&mut self, packet_id: PacketId) -> bool {
        let first = self.incoming_qos2.insert(packet_id);
        if first {
            self.record(|| SessionEvent::InboundQos2 { packet_id, pending: true });
        }
        first
    }

    /// An inbound PUBREL: releases the id. False if it was not pending.
    pub fn release_qos2(&mut self, packet_id: PacketId) -> bool {
        let pending = self.incoming_qos2.remove(&packet_id);
        if pending {
            self.record(|| SessionEvent::InboundQos2 { packet_id, pending: false });
        }
        pending
    }

    pub fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.len()
    }
}
