//! Shared subscriptions ($share/GROUP/FILTER) with members on both shards: each message to
//! exactly one member of each group, spread over the members, rebalanced when one leaves.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Broker, RawClient, WAIT, on_cpu};
use ringmq::protocol::{Packet, PacketId, Properties, QoS, ReasonCode, SubscriptionOptions, Unsubscribe};

/// Reads whatever arrives within `quiet` of the last packet; acknowledges QoS 1.
fn drain(client: &mut RawClient, quiet: Duration) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    while let Some(packet) = client.try_recv(quiet) {
        if let Packet::Publish(publish) = packet {
            client.ack(&publish);
            payloads.push(publish.payload.to_vec());
        }
    }
    payloads
}

#[test]
fn each_message_reaches_one_member_of_each_group_across_shards() {
    let broker = Broker::start(&["--steer", "cpu"]);
    // Eight members of group a (spread over both shards by the CPU they connect from), two of group b.
    let mut group_a: Vec<RawClient> = (0..8).map(|i| on_cpu(i, || broker.client_v5(&format!("share-a-{i}")))).collect();
    for member in &mut group_a {
        assert_eq!(member.subscribe(&[("$share/a/jobs/+", QoS::AtLeastOnce)]).codes, vec![ReasonCode(1)]);
    }
    let mut group_b: Vec<RawClient> = (0..2).map(|i| broker.client_v5(&format!("share-b-{i}"))).collect();
    for member in &mut group_b {
        member.subscribe(&[("$share/b/jobs/#", QoS::AtMostOnce)]);
    }
    // Each SUBACK came only after both shards applied the join: publishing may start now.
    let mut publisher = broker.client_v5("share-pub");
    let messages = 400u32;
    for n in 0..messages {
        publisher.publish("jobs/x", &n.to_be_bytes(), QoS::AtLeastOnce, false, (n % 60000 + 1) as u16);
    }
    let mut per_member = Vec::new();
    let mut seen_a: HashMap<Vec<u8>, usize> = HashMap::new();
    for member in &mut group_a {
        let got = drain(member, Duration::from_millis(400));
        per_member.push(got.len());
        for payload in got {
            *seen_a.entry(payload).or_default() += 1;
        }
    }
    assert_eq!(seen_a.len(), messages as usize, "group a got every message");
    assert!(seen_a.values().all(|&count| count == 1), "group a got each message once");
    assert!(per_member.iter().all(|&count| count > 0), "every member got a share: {per_member:?}");
    let b_total: usize = group_b.iter_mut().map(|m| drain(m, Duration::from_millis(200)).len()).sum();
    assert_eq!(b_total, messages as usize, "group b, independently, got each message once");
    broker.wait_for_counters("members on both shards", |c| {
        c.get(0, "clients_connected").unwrap_or(0) > 0 && c.get(1, "clients_connected").unwrap_or(0) > 0
    });
}

#[test]
fn a_member_leaving_rebalances_to_the_others() {
    let broker = Broker::start(&[]);
    let mut stay = broker.client_v5("share-stay");
    stay.subscribe(&[("$share/g/t", QoS::AtMostOnce)]);
    let mut leave = broker.client_v5("share-leave");
    leave.subscribe(&[("$share/g/t", QoS::AtMostOnce)]);
    leave.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: PacketId::new(5).expect("id"),
        properties: Default::default(),
        filters: vec![Bytes::from_static(b"$share/g/t")],
    }));
    // The UNSUBACK came only after both shards applied the leave.
    assert!(matches!(leave.recv(), Packet::UnsubAck(ack) if ack.codes == vec![ReasonCode::SUCCESS]));
    let mut publisher = broker.client_v5("share-pub-2");
    for n in 0..20u8 {
        publisher.publish("t", &[n], QoS::AtMostOnce, false, 0);
    }
    assert_eq!(drain(&mut stay, Duration::from_millis(300)).len(), 20);
    leave.assert_silent(Duration::from_millis(100));
}

#[test]
fn shared_subscriptions_get_no_retained_messages_and_refuse_no_local() {
    let broker = Broker::start(&[]);
    let mut publisher = broker.client_v5("share-ret-pub");
    publisher.publish("kept/t", b"r", QoS::AtLeastOnce, true, 1);
    let mut member = broker.client_v5("share-ret");
    member.subscribe(&[("$share/g/kept/#", QoS::AtLeastOnce)]);
    member.assert_silent(Duration::from_millis(300));
    let suback = member.subscribe(&[("$share/g+x/t", QoS::AtMostOnce)]);
    assert_eq!(suback.codes, vec![ReasonCode::TOPIC_FILTER_INVALID], "a wildcard in the group name");
    member.subscribe_with_no_wait(&[(
        "$share/g/t",
        SubscriptionOptions { no_local: true, ..SubscriptionOptions::with_qos(QoS::AtMostOnce) },
    )]);
    let mut seen = Vec::new();
    assert!(member.closed_within(WAIT, &mut seen));
    assert!(matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::PROTOCOL_ERROR), "{seen:?}");
}

/// Reads publishes within `quiet` of each other without acknowledging any.
fn take_without_ack(client: &mut RawClient, quiet: Duration) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    while let Some(packet) = client.try_recv(quiet) {
        if let Packet::Publish(publish) = packet {
            payloads.push(publish.payload.to_vec());
        }
    }
    payloads
}

#[test]
fn an_ended_members_unacknowledged_messages_go_to_another_member() {
    let broker = Broker::start(&["--steer", "cpu"]);
    // Quitters take their turn but never acknowledge; workers do. Sessions end with the
    // connection (no Session Expiry Interval), on both shards (by the CPU they connect from).
    let mut quitters: Vec<RawClient> = (0..3).map(|i| on_cpu(i, || broker.client_v5(&format!("share-quit-{i}")))).collect();
    let mut workers: Vec<RawClient> = (0..3).map(|i| on_cpu(i + 1, || broker.client_v5(&format!("share-work-{i}")))).collect();
    for member in quitters.iter_mut().chain(workers.iter_mut()) {
        member.subscribe(&[("$share/w/jobs/+", QoS::AtLeastOnce)]);
    }
    broker.wait_for_counters("members on both shards", |c| {
        c.get(0, "clients_connected").unwrap_or(0) > 0 && c.get(1, "clients_connected").unwrap_or(0) > 0
    });
    let mut publisher = broker.client_v5("share-quit-pub");
    let messages = 60u32;
    for n in 0..messages {
        publisher.publish("jobs/x", &n.to_be_bytes(), QoS::AtLeastOnce, false, (n + 1) as u16);
    }
    let mut handed_on = 0;
    let mut worker_got: Vec<Vec<u8>> = Vec::new();
    for mut quitter in quitters {
        let held = take_without_ack(&mut quitter, Duration::from_millis(300));
        assert!(!held.is_empty(), "every member gets a turn");
        handed_on += held.len() as u64;
        quitter.drop_abruptly();
        broker.wait_for_counters("the quitter's messages handed on", |c| c.total("shared_redelivered") >= handed_on);
    }
    for worker in &mut workers {
        worker_got.extend(drain(worker, Duration::from_millis(300)));
    }
    worker_got.sort();
    worker_got.dedup();
    assert_eq!(worker_got.len(), messages as usize, "the workers end up with every message");
    assert_eq!(broker.wait_for_counters("counters", |_| true).total("shared_misses"), 0);
}

#[test]
fn a_member_taken_over_on_any_shard_keeps_its_share_and_the_group_loses_nothing() {
    let broker = Broker::start(&[]);
    let persistent = || Properties { session_expiry_interval: Some(300), ..Properties::default() };
    let mut stay = broker.client_v5("share-takeover-stay");
    stay.subscribe(&[("$share/t/moves", QoS::AtLeastOnce)]);
    let mut mover = broker.raw_v5();
    assert_eq!(mover.connect_with_properties("share-mover", true, 60, persistent()).code, 0);
    mover.subscribe(&[("$share/t/moves", QoS::AtLeastOnce)]);
    let mut publisher = broker.client_v5("share-takeover-pub");
    let mut received: Vec<Vec<u8>> = Vec::new();
    let mut id = 0u32;
    for _round in 0..8 {
        for _ in 0..25 {
            id += 1;
            publisher.publish("moves", &id.to_be_bytes(), QoS::AtLeastOnce, false, id as u16);
        }
        // A new connection takes the session over (landing on whichever shard the kernel
        // picks); the old one is told 0x8E after whatever it was sent.
        let mut next = broker.raw_v5();
        let connack = next.connect_with_properties("share-mover", false, 60, persistent());
        assert!(connack.session_present);
        received.extend(drain(&mut mover, Duration::from_millis(50)));
        mover = next;
    }
    received.extend(drain(&mut mover, Duration::from_millis(300)));
    received.extend(drain(&mut stay, Duration::from_millis(300)));
    received.sort();
    received.dedup();
    assert_eq!(received.len(), id as usize, "every message reached the group");
    let counters = broker.wait_for_counters("takeovers counted", |c| c.total("takeovers") >= 8);
    assert_eq!(counters.total("shared_misses"), 0);
}
