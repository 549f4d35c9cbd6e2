//! Unit tests of the session state machine, case by case (`model_tests.rs` checks it
//! against a model over random sequences).

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
        Offer::Send(SendNow { packet_id: Some(id), .. }) => *id,
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
    assert_eq!(session.offer(&message("a"), CopyFor::at(QoS::AtMostOnce), false), Offer::Dropped);
    assert_eq!(session.dropped_count, 1);
}

#[test]
fn window_queues_in_order_and_acks_release() {
    let mut session = Session::new(Bytes::from_static(b"c"), limits(2, 10));
    let first = sent_id(&session.offer(&message("1"), CopyFor::at(QoS::AtLeastOnce), true));
    let _second = sent_id(&session.offer(&message("2"), CopyFor::at(QoS::AtLeastOnce), true));
    assert_eq!(session.offer(&message("3"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
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
    assert!(matches!(session.offer(&message("sent"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Send(_)));
    assert_eq!(session.offer(&expiring, CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
    assert_eq!(session.offer(&message("new"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
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
    assert_eq!(session.offer(&message("1"), CopyFor::at(QoS::AtLeastOnce), false), Offer::Queued);
    assert_eq!(session.offer(&message("2"), CopyFor::at(QoS::AtLeastOnce), false), Offer::Dropped);
    assert_eq!(session.dropped_count, 1);
}

#[test]
fn an_online_queue_at_its_bound_keeps_the_message_and_asks_for_a_pause() {
    let mut session = Session::new(Bytes::from_static(b"c"), limits(1, 2));
    let first = sent_id(&session.offer(&message("sent"), CopyFor::at(QoS::AtLeastOnce), true));
    assert_eq!(session.offer(&message("1"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
    assert_eq!(session.offer(&message("2"), CopyFor::at(QoS::AtLeastOnce), true), Offer::QueuedFull);
    assert_eq!(session.offer(&message("3"), CopyFor::at(QoS::AtLeastOnce), true), Offer::QueuedFull, "never dropped below the hard bound");
    assert_eq!(session.dropped_count, 0);
    assert!(session.is_queue_full() && !session.may_resume_publishers());
    assert_eq!(session.on_puback(first), AckOutcome::Done);
    let mut out = Vec::new();
    session.fill_window(Instant::now(), &mut out);
    assert_eq!(session.queued_len(), 2);
    assert!(!session.may_resume_publishers(), "half the bound first");
    // Going offline trims to the bound, newest first under drop-new.
    assert_eq!(session.trim_to_offline_bound(), 0);
    assert_eq!(session.offer(&message("4"), CopyFor::at(QoS::AtLeastOnce), true), Offer::QueuedFull);
    assert_eq!(session.trim_to_offline_bound(), 1);
    assert_eq!(session.dropped_count, 1);
}

#[test]
fn an_online_queue_drops_only_at_its_hard_bound() {
    let limits = limits(1, 10);
    let mut session = Session::new(Bytes::from_static(b"c"), limits);
    let _ = sent_id(&session.offer(&message("sent"), CopyFor::at(QoS::AtLeastOnce), true));
    for _ in 0..limits.queued_hard_max() {
        assert_ne!(session.offer(&message("m"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Dropped);
    }
    assert_eq!(session.offer(&message("over"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Dropped);
}

#[test]
fn an_offline_queue_follows_its_full_policy() {
    let mut oldest =
        Session::new(Bytes::from_static(b"c"), SessionLimits { queue_full_policy: QueueFullPolicy::DropOldest, ..limits(1, 2) });
    for payload in ["1", "2"] {
        assert_eq!(oldest.offer(&message(payload), CopyFor::at(QoS::AtLeastOnce), false), Offer::Queued);
    }
    assert_eq!(oldest.offer(&message("3"), CopyFor::at(QoS::AtLeastOnce), false), Offer::QueuedDroppingOldest);
    let mut out = Vec::new();
    oldest.resume(Instant::now(), &mut out);
    assert!(matches!(&out[..], [Outgoing::Publish { message, .. }] if &message.payload[..] == b"2"), "1 was dropped");
    assert_eq!(oldest.dropped_count, 1);
}

#[test]
fn qos2_outbound_flow_and_resume() {
    let mut session = Session::new(Bytes::from_static(b"c"), limits(5, 10));
    let a = sent_id(&session.offer(&message("a"), CopyFor::at(QoS::ExactlyOnce), true));
    let b = sent_id(&session.offer(&message("b"), CopyFor::at(QoS::ExactlyOnce), true));
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
    let qos1 = sent_id(&session.offer(&message("1"), CopyFor::at(QoS::AtLeastOnce), true));
    let qos2 = sent_id(&session.offer(&message("2"), CopyFor::at(QoS::ExactlyOnce), true));
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
    let id = sent_id(&session.offer(&message("1"), CopyFor::at(QoS::ExactlyOnce), true));
    assert_eq!(session.offer(&message("2"), CopyFor::at(QoS::ExactlyOnce), true), Offer::Queued);
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
    // "a" stays unacknowledged while a whole lap of 65,535 ids goes by: the id after the
    // lap is a's, so it is skipped; ids given before the lap need no search.
    let mut session = Session::new(Bytes::from_static(b"c"), limits(3, 10));
    let a = sent_id(&session.offer(&message("a"), CopyFor::at(QoS::AtLeastOnce), true));
    assert_eq!(a.get(), 1);
    let mut last = a;
    for _ in 0..u16::MAX - 1 {
        last = sent_id(&session.offer(&message("b"), CopyFor::at(QoS::AtLeastOnce), true));
        assert_eq!(session.on_puback(last), AckOutcome::Done);
    }
    assert_eq!(last.get(), u16::MAX);
    let after_the_lap = sent_id(&session.offer(&message("c"), CopyFor::at(QoS::AtLeastOnce), true));
    assert_eq!(after_the_lap.get(), 2, "1 is still a's");
    // An entry read back from the log is of unknown age: searched for too.
    let mut restored = Session::new(Bytes::from_static(b"c"), limits(3, 10));
    restored.apply(SessionEvent::Enqueued { message: message("old"), copy: CopyFor::at(QoS::AtLeastOnce) }).unwrap();
    restored.apply(SessionEvent::Sent(PacketId::new(5).unwrap())).unwrap();
    restored.apply(SessionEvent::NextPacketId(PacketId::new(5).unwrap())).unwrap();
    let next = sent_id(&restored.offer(&message("new"), CopyFor::at(QoS::AtLeastOnce), true));
    assert_eq!(next.get(), 6);
}

#[test]
fn the_wrapping_allocation_count_never_makes_an_old_entry_look_young() {
    // The count is 32 bits: start it just short of wrapping, keep "a" unacknowledged for a
    // lap of ids across the wrap, and acknowledge a QoS 2 window out of order there.
    let mut session = Session::new(Bytes::from_static(b"c"), limits(8, 10));
    session.allocated = u32::MAX - 2;
    let a = sent_id(&session.offer(&message("a"), CopyFor::at(QoS::AtLeastOnce), true));
    let a_serial = session.inflight[0].serial;
    for _ in 0..u16::MAX - 1 {
        let passing = sent_id(&session.offer(&message("b"), CopyFor::at(QoS::AtLeastOnce), true));
        assert_eq!(session.on_puback(passing), AckOutcome::Done);
    }
    let after_the_lap = sent_id(&session.offer(&message("c"), CopyFor::at(QoS::ExactlyOnce), true));
    assert_ne!(after_the_lap, a, "a's id is skipped after the lap, across the count's wrap");
    assert_eq!(session.inflight[0].serial, 0, "a lap old: its age is unknown from now on");
    // Had a kept its serial, a count come round to just past it would make it look young
    // and the next id (a's again after another lap) would be given without a search.
    session.allocated = a_serial.wrapping_add(3);
    session.next_packet_id = a;
    let next = sent_id(&session.offer(&message("d"), CopyFor::at(QoS::ExactlyOnce), true));
    assert_ne!(next, a, "searched, since a's age is unknown");
    let fresh: Vec<PacketId> = (0..4).map(|_| sent_id(&session.offer(&message("f"), CopyFor::at(QoS::ExactlyOnce), true))).collect();
    for id in fresh.iter().rev().chain([&next, &after_the_lap]) {
        assert_eq!(session.on_pubrec(*id, false), AckOutcome::Done);
        assert_eq!(session.on_pubcomp(*id), AckOutcome::Done);
    }
    assert_eq!(session.on_puback(a), AckOutcome::Done);
    assert!(session.owes_nothing());
}

#[test]
fn window_entries_are_half_a_cache_line() {
    assert_eq!(std::mem::size_of::<super::Inflight>(), 32);
    assert_eq!(std::mem::size_of::<super::Queued>(), 24);
}

#[test]
fn acknowledgements_find_their_entry_in_any_order_past_laps_and_restores() {
    // A QoS 2 window: a restored entry (unknown age), one that stays past a whole lap of
    // ids, then fresh ones acknowledged newest first.
    let mut session = Session::new(Bytes::from_static(b"c"), limits(8, 10));
    session.apply(SessionEvent::Enqueued { message: message("old"), copy: CopyFor::at(QoS::ExactlyOnce) }).unwrap();
    session.apply(SessionEvent::Sent(PacketId::new(7).unwrap())).unwrap();
    session.apply(SessionEvent::NextPacketId(PacketId::new(8).unwrap())).unwrap();
    let stuck = sent_id(&session.offer(&message("stuck"), CopyFor::at(QoS::ExactlyOnce), true));
    for _ in 0..u16::MAX {
        let passing = sent_id(&session.offer(&message("b"), CopyFor::at(QoS::AtLeastOnce), true));
        assert_eq!(session.on_puback(passing), AckOutcome::Done);
    }
    let fresh: Vec<PacketId> = (0..4).map(|_| sent_id(&session.offer(&message("f"), CopyFor::at(QoS::ExactlyOnce), true))).collect();
    for id in fresh.iter().rev() {
        assert_eq!(session.on_pubrec(*id, false), AckOutcome::Done);
        assert_eq!(session.on_puback(*id), AckOutcome::WrongKind, "found at its PUBCOMP stage");
    }
    assert_eq!(session.on_pubrec(stuck, false), AckOutcome::Done);
    assert_eq!(session.on_pubrec(PacketId::new(7).unwrap(), false), AckOutcome::Done);
    for id in fresh.iter().chain([&stuck, &PacketId::new(7).unwrap()]) {
        assert_eq!(session.on_pubcomp(*id), AckOutcome::Done);
        assert_eq!(session.on_pubcomp(*id), AckOutcome::Unknown);
    }
    assert!(session.owes_nothing());
}

#[test]
fn an_ending_session_gives_up_only_unfinished_shared_copies() {
    let mut session = Session::new(Bytes::from_static(b"c"), limits(3, 10));
    let shared = |qos| CopyFor::through(qos, SharedRoute { group: Bytes::from_static(b"g"), filter: Bytes::from_static(b"t") });
    let acked = sent_id(&session.offer(&message("acked"), shared(QoS::AtLeastOnce), true));
    let received = sent_id(&session.offer(&message("past-pubrec"), shared(QoS::ExactlyOnce), true));
    let _ = sent_id(&session.offer(&message("unacked"), shared(QoS::AtLeastOnce), true));
    assert_eq!(session.offer(&message("queued"), shared(QoS::ExactlyOnce), true), Offer::Queued);
    assert_eq!(session.offer(&message("plain"), CopyFor::at(QoS::AtLeastOnce), true), Offer::Queued);
    assert_eq!(session.on_puback(acked), AckOutcome::Done);
    assert_eq!(session.on_pubrec(received, false), AckOutcome::Done, "after PUBREC the message is the client's");
    let unfinished: Vec<(Bytes, QoS)> =
        session.take_unfinished_shared().into_iter().map(|(message, qos, _)| (message.payload.clone(), qos)).collect();
    assert_eq!(unfinished, vec![(Bytes::from_static(b"unacked"), QoS::AtLeastOnce), (Bytes::from_static(b"queued"), QoS::ExactlyOnce)]);
}
