//! Per-client session state, as a plain state machine with no IO and no clock.
//!
//! Owns what MQTT says outlives a connection: subscriptions, outbound QoS 1/2 messages in
//! flight (with their packet ids and acknowledgement stage), messages queued behind the
//! in-flight window or while offline, and inbound QoS 2 packet ids awaiting PUBREL. It is
//! `Send`, so a session can move to the shard its client reconnects on.

mod message;
#[cfg(test)]
mod model_tests;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

pub use message::{Message, detach};

/// One subscription of a session: its options and, in 5.0, its identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// How one client receives a message, given every subscription of its that matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The highest QoS granted by a matching subscription (deliver at min(this, published)).
    pub granted: QoS,
    /// Some matching subscription asked for the RETAIN flag as published.
    pub retain_as_published: bool,
    /// Identifiers of every matching subscription that has one (empty: no allocation).
    pub subscription_ids: Vec<u32>,
}

/// One copy per client at the highest granted QoS, carrying every matching subscription
/// identifier (MQTT 3.1.1 3.3.5, 5.0 3.3.4). When the client published the message itself
/// (`own_message`), no-local subscriptions do not count.
pub fn merge_matching<'a>(matching: impl IntoIterator<Item = &'a Subscription>, own_message: bool) -> Option<Delivery> {
    let mut merged: Option<Delivery> = None;
    for subscription in matching {
        let options = subscription.options;
        if own_message && options.no_local {
            continue;
        }
        let delivery = merged.get_or_insert(Delivery { granted: options.qos, retain_as_published: false, subscription_ids: Vec::new() });
        delivery.granted = delivery.granted.max(options.qos);
        delivery.retain_as_published |= options.retain_as_published;
        if let Some(identifier) = subscription.identifier {
            delivery.subscription_ids.push(identifier);
        }
    }
    merged
}

use crate::protocol::{PacketId, QoS, SubscriptionOptions};

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

/// The shared subscription (`$share/group/filter`) a copy was delivered through: if the
/// session ends before the client acknowledges it, another member gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRoute {
    pub group: Bytes,
    pub filter: Bytes,
}

/// How one client gets its copy of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyFor {
    /// The delivery QoS: the lower of the published and the granted one.
    pub qos: QoS,
    pub retain: bool,
    /// Identifiers of the recipient's matching subscriptions (5.0).
    pub subscription_ids: Vec<u32>,
    /// Boxed: most copies come through ordinary subscriptions.
    pub shared: Option<Box<SharedRoute>>,
}

impl CopyFor {
    pub fn at(qos: QoS) -> CopyFor {
        CopyFor { qos, retain: false, subscription_ids: Vec::new(), shared: None }
    }
}

#[derive(Debug, Clone)]
struct Inflight {
    packet_id: PacketId,
    copy: CopyFor,
    message: Arc<Message>,
    stage: AckStage,
}

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

/// What became of a message offered to the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// Write this now.
    Send(Outgoing),
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
    /// Filter -> options, one entry per filter (re-subscribing replaces).
    pub subscriptions: BTreeMap<Bytes, Subscription>,
    inflight: VecDeque<Inflight>,
    queued: VecDeque<Queued>,
    incoming_qos2: HashSet<PacketId>,
    next_packet_id: PacketId,
    /// Messages this session had to drop (queue full, or QoS 0 while offline).
    pub dropped_count: u64,
    /// Queued messages whose expiry passed before delivery could start.
    pub expired_count: u64,
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
            dropped_count: 0,
            expired_count: 0,
        }
    }

    /// The client's Receive Maximum (5.0) narrows the window for this connection.
    pub fn set_inflight_max(&mut self, inflight_max: u16) {
        assert!(inflight_max > 0, "a zero in-flight window would never deliver");
        self.limits.inflight_max = inflight_max;
    }

    pub fn client_id(&self) -> &Bytes {
        &self.client_id
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
        // The window is far below 65535, so a free id is always a few steps away.
        loop {
            let candidate = self.next_packet_id;
            self.next_packet_id = candidate.next();
            if !self.inflight.iter().any(|entry| entry.packet_id == candidate) {
                return candidate;
            }
        }
    }

    fn start_inflight(&mut self, copy: CopyFor, message: Arc<Message>) -> Outgoing {
        debug_assert!(copy.qos != QoS::AtMostOnce);
        let packet_id = self.allocate_packet_id();
        let stage = if copy.qos == QoS::AtLeastOnce { AckStage::AwaitingPubAck } else { AckStage::AwaitingPubRec };
        let outgoing = Outgoing::Publish {
            packet_id: Some(packet_id),
            qos: copy.qos,
            dup: false,
            retain: copy.retain,
            subscription_ids: copy.subscription_ids.clone(),
            message: message.clone(),
        };
        self.inflight.push_back(Inflight { packet_id, copy, message, stage });
        outgoing
    }

    /// Offers a message as `copy` says. QoS 1/2 order is kept: no QoS 1/2 message
    /// overtakes one already queued. An online QoS 0 message goes out at once, ahead of
    /// queued QoS 1/2 ones (MQTT orders messages per topic and QoS, 5.0 4.6).
    pub fn offer(&mut self, message: Arc<Message>, copy: CopyFor, online: bool) -> Offer {
        if copy.qos == QoS::AtMostOnce {
            if online {
                let CopyFor { qos, retain, subscription_ids, .. } = copy;
                return Offer::Send(Outgoing::Publish { packet_id: None, qos, dup: false, retain, subscription_ids, message });
            }
            self.dropped_count += 1;
            return Offer::Dropped;
        }
        if online && self.queued.is_empty() && self.window_open() {
            return Offer::Send(self.start_inflight(copy, message));
        }
        if online {
            if self.queued.len() >= self.limits.queued_hard_max() {
                self.dropped_count += 1;
                return Offer::Dropped;
            }
            self.queued.push_back(Queued { copy, message });
            return if self.queued.len() >= self.limits.queued_messages_max { Offer::QueuedFull } else { Offer::Queued };
        }
        if self.queued.len() < self.limits.queued_messages_max {
            self.queued.push_back(Queued { copy, message });
            return Offer::Queued;
        }
        self.dropped_count += 1;
        match self.limits.queue_full_policy {
            QueueFullPolicy::DropNew => Offer::Dropped,
            QueueFullPolicy::DropOldest => {
                self.queued.pop_front();
                self.queued.push_back(Queued { copy, message });
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
                QueueFullPolicy::DropNew => self.queued.pop_back(),
                QueueFullPolicy::DropOldest => self.queued.pop_front(),
            };
        }
        self.dropped_count += excess as u64;
        excess
    }

    /// For a session that is ending: the QoS 1/2 copies that came through a shared
    /// subscription and that the client has not taken (queued, or sent and not yet
    /// acknowledged with PUBACK/PUBREC), to go to another member (MQTT 5.0 4.8.2).
    pub fn take_unfinished_shared(&mut self) -> Vec<(Arc<Message>, QoS, Box<SharedRoute>)> {
        let mut unfinished = Vec::new();
        for entry in std::mem::take(&mut self.inflight) {
            if let (Some(route), AckStage::AwaitingPubAck | AckStage::AwaitingPubRec) = (entry.copy.shared, entry.stage) {
                unfinished.push((entry.message, entry.copy.qos, route));
            }
        }
        for entry in std::mem::take(&mut self.queued) {
            if let Some(route) = entry.copy.shared {
                unfinished.push((entry.message, entry.copy.qos, route));
            }
        }
        unfinished
    }

    /// Moves queued messages into the window while it has room; expired ones are dropped.
    pub fn fill_window(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        while self.window_open() {
            let Some(next) = self.queued.pop_front() else { break };
            if next.message.is_expired(now) {
                self.expired_count += 1;
                continue;
            }
            out.push(self.start_inflight(next.copy, next.message));
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
                    subscription_ids: entry.copy.subscription_ids.clone(),
                    message: entry.message.clone(),
                },
            });
        }
        self.fill_window(now, out);
    }

    fn position(&self, packet_id: PacketId) -> Option<usize> {
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
        self.acknowledge(packet_id, AckStage::AwaitingPubAck, None, |session, index| {
            session.inflight.remove(index);
        })
    }

    /// PUBREC for a QoS 2 message: the message is now the client's; answer with PUBREL.
    /// A repeated PUBREC (the client did not see our PUBREL) is answered again. A PUBREC
    /// with an error reason code (>= 0x80) ends the flow there: no PUBREL, the id is free
    /// (MQTT 5.0 4.3.3).
    pub fn on_pubrec(&mut self, packet_id: PacketId, refused: bool) -> AckOutcome {
        if refused {
            return self.acknowledge(packet_id, AckStage::AwaitingPubRec, None, |session, index| {
                session.inflight.remove(index);
            });
        }
        self.acknowledge(packet_id, AckStage::AwaitingPubRec, Some(AckStage::AwaitingPubComp), |session, index| {
            session.inflight[index].stage = AckStage::AwaitingPubComp;
        })
    }

    /// PUBCOMP ends a QoS 2 flow.
    pub fn on_pubcomp(&mut self, packet_id: PacketId) -> AckOutcome {
        self.acknowledge(packet_id, AckStage::AwaitingPubComp, None, |session, index| {
            session.inflight.remove(index);
        })
    }

    /// An inbound QoS 2 PUBLISH: true the first time this id is seen (route the message),
    /// false for a resend before PUBREL (answer PUBREC again, route nothing).
    pub fn receive_qos2(&mut self, packet_id: PacketId) -> bool {
        self.incoming_qos2.insert(packet_id)
    }

    /// An inbound PUBREL: releases the id. False if it was not pending.
    pub fn release_qos2(&mut self, packet_id: PacketId) -> bool {
        self.incoming_qos2.remove(&packet_id)
    }

    pub fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(inflight_max: u16, queued_messages_max: usize) -> SessionLimits {
        SessionLimits { inflight_max, queued_messages_max, queue_full_policy: QueueFullPolicy::DropNew }
    }

    fn message(payload: &'static str) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
        })
    }

    fn sent_id(offer: &Offer) -> PacketId {
        match offer {
            Offer::Send(Outgoing::Publish { packet_id: Some(id), .. }) => *id,
            other => panic!("expected a send with an id, got {other:?}"),
        }
    }

    #[test]
    fn matching_subscriptions_merge_into_one_delivery() {
        let with = |options: SubscriptionOptions, identifier: Option<u32>| Subscription { options, identifier };
        let plain = with(SubscriptionOptions::with_qos(QoS::AtMostOnce), Some(7));
        let no_local = with(SubscriptionOptions { no_local: true, ..SubscriptionOptions::with_qos(QoS::ExactlyOnce) }, Some(9));
        let rap = with(SubscriptionOptions { retain_as_published: true, ..SubscriptionOptions::with_qos(QoS::AtLeastOnce) }, None);
        let delivery =
            |granted, retain_as_published, subscription_ids: Vec<u32>| Some(Delivery { granted, retain_as_published, subscription_ids });
        assert_eq!(merge_matching([&plain, &no_local], false), delivery(QoS::ExactlyOnce, false, vec![7, 9]));
        assert_eq!(merge_matching([&plain, &no_local], true), delivery(QoS::AtMostOnce, false, vec![7]));
        assert_eq!(merge_matching([&no_local], true), None);
        assert_eq!(merge_matching([&plain, &rap], false), delivery(QoS::AtLeastOnce, true, vec![7]));
        assert_eq!(merge_matching([], false), None);
    }

    #[test]
    fn qos0_offline_is_dropped_and_counted() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(2, 2));
        assert_eq!(session.offer(message("a"), CopyFor::at(QoS::AtMostOnce), false), Offer::Dropped);
        assert_eq!(session.dropped_count, 1);
    }

    #[test]
    fn window_queues_in_order_and_acks_release() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(2, 10));
        let first = sent_id(&session.offer(message("1"), CopyFor::at(QoS::AtLeastOnce), true));
        let _second = sent_id(&session.offer(message("2"), CopyFor::at(QoS::AtLeastOnce), true));
        assert_eq!(session.offer(message("3"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
        assert_eq!(session.on_puback(first), AckOutcome::Done);
        assert_eq!(session.on_puback(first), AckOutcome::Unknown, "a second PUBACK finds nothing");
        let mut out = Vec::new();
        session.fill_window(Instant::now(), &mut out);
        assert!(matches!(&out[..], [Outgoing::Publish { message, .. }] if &message.payload[..] == b"3"));
    }

    #[test]
    fn expired_queued_messages_are_not_sent() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(1, 10));
        let now = Instant::now();
        let expiring = Arc::new(Message { expires_at: Some(now + std::time::Duration::from_secs(5)), ..(*message("old")).clone() });
        assert!(matches!(session.offer(message("sent"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Send(_)));
        assert_eq!(session.offer(expiring, CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
        assert_eq!(session.offer(message("new"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
        let first = PacketId::new(1).unwrap();
        assert_eq!(session.on_puback(first), AckOutcome::Done);
        let mut out = Vec::new();
        session.fill_window(now + std::time::Duration::from_secs(6), &mut out);
        assert!(matches!(&out[..], [Outgoing::Publish { message, .. }] if &message.payload[..] == b"new"));
        assert_eq!(session.expired_count, 1);
    }

    #[test]
    fn remaining_expiry_is_rounded_up_and_properties_borrowed_without_one() {
        let now = Instant::now();
        let expiring = Message { expires_at: Some(now + std::time::Duration::from_millis(2500)), ..(*message("m")).clone() };
        assert_eq!(expiring.properties_at(now).message_expiry_interval, Some(3));
        assert!(matches!(message("m").properties_at(now), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn queue_bound_drops() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(1, 1));
        assert_eq!(session.offer(message("1"), CopyFor::at(QoS::AtLeastOnce), false), Offer::Queued);
        assert_eq!(session.offer(message("2"), CopyFor::at(QoS::AtLeastOnce), false), Offer::Dropped);
        assert_eq!(session.dropped_count, 1);
    }

    #[test]
    fn an_online_queue_at_its_bound_keeps_the_message_and_asks_for_a_pause() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(1, 2));
        let first = sent_id(&session.offer(message("sent"), CopyFor::at(QoS::AtLeastOnce), true));
        assert_eq!(session.offer(message("1"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
        assert_eq!(session.offer(message("2"), CopyFor::at(QoS::AtLeastOnce), true), Offer::QueuedFull);
        assert_eq!(
            session.offer(message("3"), CopyFor::at(QoS::AtLeastOnce), true),
            Offer::QueuedFull,
            "never dropped below the hard bound"
        );
        assert_eq!(session.dropped_count, 0);
        assert!(session.is_queue_full() && !session.may_resume_publishers());
        assert_eq!(session.on_puback(first), AckOutcome::Done);
        let mut out = Vec::new();
        session.fill_window(Instant::now(), &mut out);
        assert_eq!(session.queued_len(), 2);
        assert!(!session.may_resume_publishers(), "half the bound first");
        // Going offline trims to the bound, newest first under drop-new.
        assert_eq!(session.trim_to_offline_bound(), 0);
        assert_eq!(session.offer(message("4"), CopyFor::at(QoS::AtLeastOnce), true), Offer::QueuedFull);
        assert_eq!(session.trim_to_offline_bound(), 1);
        assert_eq!(session.dropped_count, 1);
    }

    #[test]
    fn an_online_queue_drops_only_at_its_hard_bound() {
        let limits = limits(1, 10);
        let mut session = Session::new(Bytes::from_static(b"c"), limits);
        let _ = sent_id(&session.offer(message("sent"), CopyFor::at(QoS::AtLeastOnce), true));
        for _ in 0..limits.queued_hard_max() {
            assert_ne!(session.offer(message("m"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Dropped);
        }
        assert_eq!(session.offer(message("over"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Dropped);
    }

    #[test]
    fn an_offline_queue_follows_its_full_policy() {
        let mut oldest =
            Session::new(Bytes::from_static(b"c"), SessionLimits { queue_full_policy: QueueFullPolicy::DropOldest, ..limits(1, 2) });
        for payload in ["1", "2"] {
            assert_eq!(oldest.offer(message(payload), CopyFor::at(QoS::AtLeastOnce), false), Offer::Queued);
        }
        assert_eq!(oldest.offer(message("3"), CopyFor::at(QoS::AtLeastOnce), false), Offer::QueuedDroppingOldest);
        let mut out = Vec::new();
        oldest.resume(Instant::now(), &mut out);
        assert!(matches!(&out[..], [Outgoing::Publish { message, .. }] if &message.payload[..] == b"2"), "1 was dropped");
        assert_eq!(oldest.dropped_count, 1);
    }

    #[test]
    fn qos2_outbound_flow_and_resume() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(5, 10));
        let a = sent_id(&session.offer(message("a"), CopyFor::at(QoS::ExactlyOnce), true));
        let b = sent_id(&session.offer(message("b"), CopyFor::at(QoS::ExactlyOnce), true));
        assert_eq!(session.on_pubrec(a, false), AckOutcome::Done);
        assert_eq!(session.on_pubrec(a, false), AckOutcome::Done, "repeated PUBREC is answered again");
        // Reconnect: a is past PUBREC (PUBREL again), b is re-sent with DUP.
        let mut out = Vec::new();
        session.resume(Instant::now(), &mut out);
        assert_eq!(out[0], Outgoing::PubRel(a));
        assert!(matches!(&out[1], Outgoing::Publish { packet_id: Some(id), dup: true, .. } if *id == b));
        assert_eq!(session.on_pubcomp(b), AckOutcome::WrongKind, "b has not reached PUBREC");
        assert_eq!(session.on_pubcomp(a), AckOutcome::Done);
        assert_eq!(session.inflight_len(), 1);
    }

    #[test]
    fn an_acknowledgement_of_the_wrong_kind_is_told_apart_from_an_unknown_id() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(5, 10));
        let qos1 = sent_id(&session.offer(message("1"), CopyFor::at(QoS::AtLeastOnce), true));
        let qos2 = sent_id(&session.offer(message("2"), CopyFor::at(QoS::ExactlyOnce), true));
        assert_eq!(session.on_pubcomp(qos1), AckOutcome::WrongKind);
        assert_eq!(session.on_pubrec(qos1, false), AckOutcome::WrongKind);
        assert_eq!(session.on_puback(qos2), AckOutcome::WrongKind);
        assert_eq!(session.on_pubcomp(qos2), AckOutcome::WrongKind);
        assert_eq!(session.on_pubrec(qos2, false), AckOutcome::Done);
        assert_eq!(session.on_puback(qos2), AckOutcome::WrongKind, "PUBACK where PUBCOMP is due");
        assert_eq!(session.on_puback(PacketId::new(999).unwrap()), AckOutcome::Unknown);
        assert_eq!(session.inflight_len(), 2);
    }

    #[test]
    fn a_refused_pubrec_ends_the_flow_and_frees_the_id() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(1, 10));
        let id = sent_id(&session.offer(message("1"), CopyFor::at(QoS::ExactlyOnce), true));
        assert_eq!(session.offer(message("2"), CopyFor::at(QoS::ExactlyOnce), true), Offer::Queued);
        assert_eq!(session.on_pubrec(id, true), AckOutcome::Done);
        assert_eq!(session.inflight_len(), 0);
        assert_eq!(session.on_pubcomp(id), AckOutcome::Unknown, "nothing waits for a PUBCOMP");
        let mut out = Vec::new();
        session.fill_window(Instant::now(), &mut out);
        assert!(matches!(&out[..], [Outgoing::Publish { message, .. }] if &message.payload[..] == b"2"));
    }

    #[test]
    fn incoming_qos2_is_exactly_once() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(5, 10));
        let id = PacketId::new(7).unwrap();
        assert!(session.receive_qos2(id));
        assert!(!session.receive_qos2(id), "DUP resend before PUBREL is not routed again");
        assert!(session.release_qos2(id));
        assert!(!session.release_qos2(id));
        assert!(session.receive_qos2(id), "after PUBREL the id is free for a new message");
    }

    #[test]
    fn packet_ids_skip_those_in_flight() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(3, 10));
        session.next_packet_id = PacketId::new(u16::MAX).unwrap();
        let a = sent_id(&session.offer(message("a"), CopyFor::at(QoS::AtLeastOnce), true));
        let b = sent_id(&session.offer(message("b"), CopyFor::at(QoS::AtLeastOnce), true));
        assert_eq!((a.get(), b.get()), (u16::MAX, 1));
        session.next_packet_id = PacketId::new(u16::MAX).unwrap();
        let c = sent_id(&session.offer(message("c"), CopyFor::at(QoS::AtLeastOnce), true));
        assert_eq!(c.get(), 2);
    }

    #[test]
    fn an_ending_session_gives_up_only_unfinished_shared_copies() {
        let mut session = Session::new(Bytes::from_static(b"c"), limits(3, 10));
        let shared = |qos| CopyFor {
            shared: Some(Box::new(SharedRoute { group: Bytes::from_static(b"g"), filter: Bytes::from_static(b"t") })),
            ..CopyFor::at(qos)
        };
        let acked = sent_id(&session.offer(message("acked"), shared(QoS::AtLeastOnce), true));
        let received = sent_id(&session.offer(message("past-pubrec"), shared(QoS::ExactlyOnce), true));
        let _ = sent_id(&session.offer(message("unacked"), shared(QoS::AtLeastOnce), true));
        assert_eq!(session.offer(message("queued"), shared(QoS::ExactlyOnce), true), Offer::Queued);
        assert_eq!(session.offer(message("plain"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
        assert_eq!(session.on_puback(acked), AckOutcome::Done);
        assert_eq!(session.on_pubrec(received, false), AckOutcome::Done, "after PUBREC the message is the client's");
        let unfinished: Vec<(Bytes, QoS)> =
            session.take_unfinished_shared().into_iter().map(|(message, qos, _)| (message.payload.clone(), qos)).collect();
        assert_eq!(unfinished, vec![(Bytes::from_static(b"unacked"), QoS::AtLeastOnce), (Bytes::from_static(b"queued"), QoS::ExactlyOnce)]);
    }
}
