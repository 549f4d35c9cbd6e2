//! Checks `Session` step by step against a plain model of its in-flight window, queue, drops and acknowledgements.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

#[derive(Debug, Clone, Copy)]
enum Kind {
    PubAck,
    PubRec,
    RefusedPubRec,
    PubComp,
}

#[derive(Debug, Clone)]
enum Op {
    /// A message at this QoS, to a client online or not.
    Offer(QoS, bool),
    /// The acknowledgement that the picked in-flight message waits for (a refused PUBREC where one is due, if true).
    RightAck(Index, bool),
    /// This kind for the picked in-flight id, or for a small id that may or may not be in flight.
    AnyAck(Kind, Index, Option<u16>),
    FillWindow,
    /// The client is back (`resume`); `Trim` is what the broker does when it goes.
    Reconnect,
    Trim,
    /// An inbound QoS 2 PUBLISH with this id, or (true) its PUBREL.
    Inbound(u16, bool),
}

fn message(seq: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: Bytes::from_static(b"t"),
        payload: Bytes::copy_from_slice(&seq.to_be_bytes()),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Default::default(),
        publisher: None,
        expires_at: None,
    })
}

fn publish(packet_id: Option<PacketId>, qos: QoS, seq: u64, dup: bool) -> Outgoing {
    Outgoing::Publish { packet_id, qos, dup, retain: false, subscription_ids: Vec::new(), message: message(seq) }
}

fn seq_of(message: &Message) -> u64 {
    u64::from_be_bytes(message.payload[..].try_into().expect("8-byte payload"))
}

/// The session under test beside the model: what is in flight (id, stage, payload, QoS), what is queued, what was dropped.
struct Harness {
    session: Session,
    limits: SessionLimits,
    inflight: Vec<(PacketId, AckStage, u64, QoS)>,
    queued: VecDeque<(u64, QoS)>,
    dropped: Vec<u64>,
    delivered: HashSet<u64>,
    last_ordered: Option<u64>,
    incoming: HashSet<u16>,
    offered: u64,
}

impl Harness {
    fn drop_new(&mut self, seq: u64) -> Offer {
        self.dropped.push(seq);
        Offer::Dropped
    }

    /// A first PUBLISH of `seq`: exactly once, QoS 1/2 in the order offered, with a fresh id that joins the window.
    fn sent_fresh(&mut self, out: &Outgoing, seq: u64, qos: QoS) -> Result<(), TestCaseError> {
        let packet_id = if let Outgoing::Publish { packet_id, .. } = out { *packet_id } else { None };
        prop_assert_eq!(out, &publish(packet_id, qos, seq, false));
        prop_assert_eq!(packet_id.is_some(), qos != QoS::AtMostOnce, "packet id {:?} at {:?}", packet_id, qos);
        prop_assert!(self.delivered.insert(seq), "{} delivered twice", seq);
        if let Some(id) = packet_id {
            prop_assert!(self.last_ordered < Some(seq), "{} sent after {:?}", seq, self.last_ordered);
            self.last_ordered = Some(seq);
            prop_assert!(id.get() != 0 && self.inflight.iter().all(|entry| entry.0 != id), "id {:?} reused", id);
            let stage = if qos == QoS::AtLeastOnce { AckStage::AwaitingPubAck } else { AckStage::AwaitingPubRec };
            self.inflight.push((id, stage, seq, qos));
        }
        Ok(())
    }

    fn offer(&mut self, qos: QoS, online: bool) -> Result<(), TestCaseError> {
        let seq = self.offered;
        self.offered += 1;
        let got = self.session.offer(&message(seq), CopyFor::at(qos), online);
        let window_open = self.inflight.len() < usize::from(self.limits.inflight_max);
        let expected = match (qos, online) {
            (QoS::AtMostOnce, false) => self.drop_new(seq),
            (_, true) if qos == QoS::AtMostOnce || (self.queued.is_empty() && window_open) => {
                let Offer::Send(out) = got else { return Err(TestCaseError::fail(format!("{seq}: expected a send, got {got:?}"))) };
                return self.sent_fresh(&out.into_outgoing(message(seq)), seq, qos);
            }
            (_, true) if self.queued.len() >= self.limits.queued_hard_max() => self.drop_new(seq),
            (_, true) => {
                self.queued.push_back((seq, qos));
                if self.queued.len() >= self.limits.queued_messages_max { Offer::QueuedFull } else { Offer::Queued }
            }
            (_, false) if self.queued.len() < self.limits.queued_messages_max => {
                self.queued.push_back((seq, qos));
                Offer::Queued
            }
            (_, false) => match self.limits.queue_full_policy {
                QueueFullPolicy::DropNew => self.drop_new(seq),
                QueueFullPolicy::DropOldest => {
                    self.dropped.push(self.queued.pop_front().expect("full queue").0);
                    self.queued.push_back((seq, qos));
                    Offer::QueuedDroppingOldest
                }
            },
        };
        prop_assert_eq!(got, expected, "offer of {} at {:?}, online {}", seq, qos, online);
        Ok(())
    }

    /// `out` must be the queue's head, as far as the window has room.
    fn filled(&mut self, out: &[Outgoing]) -> Result<(), TestCaseError> {
        let room = usize::from(self.limits.inflight_max).saturating_sub(self.inflight.len()).min(self.queued.len());
        prop_assert_eq!(out.len(), room, "fill sent {:?}", out);
        for packet in out {
            let (seq, qos) = self.queued.pop_front().expect("room counted");
            self.sent_fresh(packet, seq, qos)?;
        }
        Ok(())
    }

    fn ack(&mut self, kind: Kind, id: PacketId) -> Result<(), TestCaseError> {
        let got = match kind {
            Kind::PubAck => self.session.on_puback(id),
            Kind::PubRec => self.session.on_pubrec(id, false),
            Kind::RefusedPubRec => self.session.on_pubrec(id, true),
            Kind::PubComp => self.session.on_pubcomp(id),
        };
        let expected = match self.inflight.iter().position(|entry| entry.0 == id) {
            None => AckOutcome::Unknown,
            Some(index) => match (kind, self.inflight[index].1) {
                (Kind::PubAck, AckStage::AwaitingPubAck)
                | (Kind::RefusedPubRec, AckStage::AwaitingPubRec)
                | (Kind::PubComp, AckStage::AwaitingPubComp) => {
                    self.inflight.remove(index);
                    AckOutcome::Done
                }
                (Kind::PubRec, AckStage::AwaitingPubRec | AckStage::AwaitingPubComp) => {
                    self.inflight[index].1 = AckStage::AwaitingPubComp;
                    AckOutcome::Done
                }
                _ => AckOutcome::WrongKind,
            },
        };
        prop_assert_eq!(got, expected, "{:?} for {:?}", kind, id);
        Ok(())
    }

    fn trim(&mut self) -> Result<(), TestCaseError> {
        let excess = self.queued.len().saturating_sub(self.limits.queued_messages_max);
        for _ in 0..excess {
            let gone = match self.limits.queue_full_policy {
                QueueFullPolicy::DropNew => self.queued.pop_back(),
                QueueFullPolicy::DropOldest => self.queued.pop_front(),
            };
            self.dropped.push(gone.expect("excess counted").0);
        }
        prop_assert_eq!(self.session.trim_to_offline_bound(), excess);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Offer(qos, online) => self.offer(qos, online)?,
            Op::RightAck(pick, refused) if !self.inflight.is_empty() => {
                let (id, stage, ..) = self.inflight[pick.index(self.inflight.len())];
                let kind = match stage {
                    AckStage::AwaitingPubAck => Kind::PubAck,
                    AckStage::AwaitingPubRec if refused => Kind::RefusedPubRec,
                    AckStage::AwaitingPubRec => Kind::PubRec,
                    AckStage::AwaitingPubComp => Kind::PubComp,
                };
                self.ack(kind, id)?;
            }
            Op::RightAck(..) => {}
            Op::AnyAck(kind, pick, stray) => {
                let id = match stray {
                    None if !self.inflight.is_empty() => self.inflight[pick.index(self.inflight.len())].0,
                    _ => PacketId::new(stray.unwrap_or(1)).expect("non-zero"),
                };
                self.ack(kind, id)?;
            }
            Op::FillWindow => {
                let mut out = Vec::new();
                self.session.fill_window(Instant::now(), &mut out);
                self.filled(&out)?;
            }
            Op::Reconnect => {
                let mut out = Vec::new();
                self.session.resume(Instant::now(), &mut out);
                prop_assert!(out.len() >= self.inflight.len(), "resume sent only {:?}", out);
                for (packet, &(id, stage, seq, qos)) in out.iter().zip(&self.inflight) {
                    let expected =
                        if stage == AckStage::AwaitingPubComp { Outgoing::PubRel(id) } else { publish(Some(id), qos, seq, true) };
                    prop_assert_eq!(packet, &expected, "resume");
                }
                let resent = self.inflight.len();
                self.filled(&out[resent..])?;
            }
            Op::Trim => self.trim()?,
            Op::Inbound(id, true) => prop_assert_eq!(self.session.release_qos2(PacketId::new(id).unwrap()), self.incoming.remove(&id)),
            Op::Inbound(id, false) => prop_assert_eq!(self.session.receive_qos2(PacketId::new(id).unwrap()), self.incoming.insert(id)),
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let session = &self.session;
        prop_assert!(session.inflight_len() <= usize::from(self.limits.inflight_max));
        let ids: HashSet<u16> = session.inflight.iter().map(|entry| entry.packet_id.get()).collect();
        prop_assert!(ids.len() == session.inflight.len() && !ids.contains(&0), "ids in flight {:?}", ids);
        let inflight: Vec<_> =
            session.inflight.iter().map(|entry| (entry.packet_id, entry.stage, seq_of(&entry.message), entry.copy.qos)).collect();
        prop_assert_eq!(&inflight, &self.inflight);
        prop_assert_eq!(session.queued_len(), self.queued.len());
        prop_assert!(session.queued.iter().map(|entry| (seq_of(&entry.message), entry.copy.qos)).eq(self.queued.iter().copied()));
        prop_assert_eq!(session.dropped_count, self.dropped.len() as u64);
        prop_assert_eq!(session.is_queue_full(), self.queued.len() >= self.limits.queued_messages_max);
        prop_assert_eq!(session.incoming_qos2_len(), self.incoming.len());
        Ok(())
    }
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![Just(Kind::PubAck), Just(Kind::PubRec), Just(Kind::RefusedPubRec), Just(Kind::PubComp)];
    prop_oneof![
        10 => (0u8..3, prop::bool::weighted(0.7)).prop_map(|(qos, online)| Op::Offer(QoS::from_bits(qos).unwrap(), online)),
        6 => (any::<Index>(), prop::bool::weighted(0.2)).prop_map(|(pick, refused)| Op::RightAck(pick, refused)),
        2 => (kind, any::<Index>(), prop::option::of(1u16..8)).prop_map(|(kind, pick, stray)| Op::AnyAck(kind, pick, stray)),
        2 => Just(Op::FillWindow),
        1 => Just(Op::Reconnect),
        1 => Just(Op::Trim),
        1 => (1u16..4, any::<bool>()).prop_map(|(id, release)| Op::Inbound(id, release)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn session_agrees_with_a_model_of_window_queue_and_acks(
        inflight_max in 1u16..=4,
        queued_messages_max in 1usize..=6,
        drop_oldest in any::<bool>(),
        first_id in prop_oneof![Just(1u16), 65_530u16..=u16::MAX],
        // The allocation count near its wrap too: acknowledgements in any order across it.
        first_allocated in prop_oneof![Just(0u32), (u32::MAX - 8)..=u32::MAX],
        ops in proptest::collection::vec(op(), 1..80),
        // Rarely, before that op, offer online until the queue passes its hard bound.
        flood in prop::option::weighted(0.1, (any::<Index>(), 1usize..4)),
    ) {
        let queue_full_policy = if drop_oldest { QueueFullPolicy::DropOldest } else { QueueFullPolicy::DropNew };
        let limits = SessionLimits { inflight_max, queued_messages_max, queue_full_policy };
        let mut session = Session::new(Bytes::from_static(b"c"), limits);
        session.next_packet_id = PacketId::new(first_id).expect("non-zero");
        session.allocated = first_allocated;
        let mut harness = Harness {
            session, limits, inflight: Vec::new(), queued: VecDeque::new(), dropped: Vec::new(),
            delivered: HashSet::new(), last_ordered: None, incoming: HashSet::new(), offered: 0,
        };
        let flood_at = flood.map(|(at, extra)| (at.index(ops.len()), extra));
        for (index, op) in ops.iter().enumerate() {
            if let Some((_, extra)) = flood_at.filter(|(at, _)| *at == index) {
                let dropped_before = harness.dropped.len();
                for _ in 0..(limits.queued_hard_max() + usize::from(inflight_max) + extra).saturating_sub(harness.queued.len()) {
                    harness.offer(QoS::AtLeastOnce, true)?;
                }
                prop_assert!(harness.dropped.len() - dropped_before >= extra, "the hard bound dropped nothing");
                harness.check()?;
            }
            harness.step(op)?;
        }
        // Nothing lost: every message offered was delivered, dropped or is still queued, exactly once.
        let mut accounted: Vec<u64> = harness.delivered.iter().copied().chain(harness.dropped.iter().copied()).collect();
        accounted.extend(harness.queued.iter().map(|entry| entry.0));
        accounted.sort_unstable();
        prop_assert_eq!(accounted, (0..harness.offered).collect::<Vec<_>>());
    }
}
