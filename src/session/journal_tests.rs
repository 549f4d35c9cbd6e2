//! The journal's contract: after any sequence of operations, replaying the recorded events
//! on an empty session, or the snapshot at any point followed by the later events, gives
//! the same durable state as the session that made them.

use proptest::prelude::*;
use proptest::sample::Index;
use std::time::Duration;

use super::*;
use crate::protocol::{RetainHandling, SubscriptionOptions};

#[derive(Debug, Clone)]
enum Op {
    Offer {
        qos: QoS,
        online: bool,
        expired: bool,
        shared: bool,
    },
    Ack(Index, u8),
    FillWindow,
    Resume,
    Trim,
    Inbound(u16, bool),
    Subscribe(u8, u8),
    Unsubscribe(u8),
    TakeShared,
    /// Take a snapshot here: replay must also work from it.
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, any::<bool>(), prop::bool::weighted(0.1), prop::bool::weighted(0.2)).prop_map(|(qos, online, expired, shared)| Op::Offer {
            qos: QoS::from_bits(qos).expect("0..3"),
            online,
            expired,
            shared
        }),
        4 => (any::<Index>(), 0u8..4).prop_map(|(index, kind)| Op::Ack(index, kind)),
        2 => Just(Op::FillWindow),
        1 => Just(Op::Resume),
        1 => Just(Op::Trim),
        2 => (1u16..6, any::<bool>()).prop_map(|(id, release)| Op::Inbound(id, release)),
        1 => (0u8..4, 0u8..3).prop_map(|(filter, qos)| Op::Subscribe(filter, qos)),
        1 => (0u8..4).prop_map(Op::Unsubscribe),
        1 => prop::bool::weighted(0.05).prop_map(|_| Op::TakeShared),
        1 => Just(Op::Snapshot),
    ]
}

fn message(seq: u64, expired: bool, now: Instant) -> Arc<Message> {
    Arc::new(Message {
        topic: Bytes::from_static(b"t"),
        payload: Bytes::copy_from_slice(&seq.to_be_bytes()),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Default::default(),
        publisher: None,
        expires_at: expired.then_some(now),
    })
}

const FILTERS: [&str; 4] = ["a/b", "a/+", "#", "$share/g/x"];

fn replayed(events: &[SessionEvent], limits: SessionLimits) -> Session {
    let mut session = Session::new(Bytes::from_static(b"c"), limits);
    for event in events {
        session.apply(event.clone()).expect("every recorded event applies");
    }
    session
}

proptest! {
    #[test]
    fn replay_rebuilds_the_session(ops in prop::collection::vec(op(), 1..120), policy in any::<bool>()) {
        let limits = SessionLimits {
            inflight_max: 3,
            queued_messages_max: 4,
            queue_full_policy: if policy { QueueFullPolicy::DropOldest } else { QueueFullPolicy::DropNew },
        };
        let now = Instant::now();
        let mut session = Session::new(Bytes::from_static(b"c"), limits);
        session.enable_journal();
        let mut log = Vec::new();
        let mut snapshot: Option<(Vec<SessionEvent>, usize)> = None;
        let mut out = Vec::new();
        for (seq, op) in ops.into_iter().enumerate() {
            match op {
                Op::Offer { qos, online, expired, shared } => {
                    let mut copy = CopyFor::at(qos);
                    if shared {
                        copy.set_shared(SharedRoute { group: Bytes::from_static(b"g"), filter: Bytes::from_static(b"x") });
                        copy.set_subscription_ids(vec![7]);
                    }
                    let _ = session.offer(&message(seq as u64, expired, now), copy, online);
                }
                Op::Ack(index, kind) => {
                    let ids: Vec<PacketId> = session.inflight.iter().map(|entry| entry.packet_id).collect();
                    if !ids.is_empty() {
                        let id = *index.get(&ids);
                        let _ = match kind {
                            0 => session.on_puback(id),
                            1 => session.on_pubrec(id, false),
                            2 => session.on_pubrec(id, true),
                            _ => session.on_pubcomp(id),
                        };
                    }
                }
                Op::FillWindow => session.fill_window(now + Duration::from_millis(1), &mut out),
                Op::Resume => session.resume(now + Duration::from_millis(1), &mut out),
                Op::Trim => {
                    session.trim_to_offline_bound();
                }
                Op::Inbound(id, release) => {
                    let id = PacketId::new(id).expect("non-zero");
                    if release { session.release_qos2(id); } else { session.receive_qos2(id); }
                }
                Op::Subscribe(filter, qos) => {
                    let filter = Filter::parse(FILTERS[usize::from(filter)].as_bytes()).expect("valid");
                    let options = SubscriptionOptions {
                        qos: QoS::from_bits(qos).expect("0..3"),
                        no_local: qos == 1,
                        retain_as_published: qos == 2,
                        retain_handling: RetainHandling::DoNotSend,
                    };
                    session.subscribe(filter, Subscription { options, identifier: (qos > 0).then_some(u32::from(qos)) });
                }
                Op::Unsubscribe(filter) => {
                    session.unsubscribe(FILTERS[usize::from(filter)].as_bytes());
                }
                Op::TakeShared => {
                    session.take_unfinished_shared();
                }
                Op::Snapshot => {
                    session.take_journal(&mut log);
                    snapshot = Some((session.snapshot(), log.len()));
                }
            }
        }
        session.take_journal(&mut log);
        let expected = session.snapshot();
        prop_assert_eq!(&replayed(&log, limits).snapshot(), &expected, "from the first event");
        if let Some((events, at)) = snapshot {
            let mut from_snapshot = events;
            from_snapshot.extend_from_slice(&log[at..]);
            prop_assert_eq!(&replayed(&from_snapshot, limits).snapshot(), &expected, "from the snapshot");
        }
    }
}
