//! Limits an operator sets on the whole broker and on each client: the number of
//! connections (across shards), the rate of new connections and of one client's
//! publishes (enforced by waiting, never by dropping), topic length and retained bytes.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, RawClient, on_cpu};
use ringmq::protocol::{Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode};

#[test]
fn connections_past_the_broker_wide_bound_are_refused_with_a_clear_code() {
    let broker = Broker::start(&["--max-connections", "3", "--steer", "cpu"]);
    // Spread over both shards: the bound is the broker's, not each shard's.
    let mut held: Vec<RawClient> = (0..3).map(|i| on_cpu(i, || broker.client(&format!("held-{i}"), true))).collect();
    // One of them watches the counter: a separate watcher would need a place of its own.
    held[0].subscribe(&[("$SYS/broker/shards/+/connections_refused_at_limit", QoS::AtMostOnce)]);
    let mut v311 = on_cpu(1, || broker.raw());
    assert_eq!(v311.connect("one-too-many", true, 60, None).code, 3, "3.1.1: server unavailable");
    v311.assert_closed();
    let mut v5 = on_cpu(0, || broker.raw_v5());
    assert_eq!(v5.connect("one-too-many-v5", true, 60, None).code, ReasonCode::QUOTA_EXCEEDED.0);
    v5.assert_closed();
    // A place freed on one shard is taken on the other.
    held.pop().expect("held client").disconnect();
    let deadline = Instant::now() + common::WAIT;
    loop {
        let mut client = on_cpu(1, || broker.raw());
        if client.connect("after-one-left", true, 60, None).code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place is taken");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut refused_per_shard = std::collections::HashMap::new();
    while refused_per_shard.values().sum::<u64>() < 2 {
        let publish = held[0].recv_publish();
        let value: u64 = std::str::from_utf8(&publish.payload).expect("utf8").parse().expect("number");
        refused_per_shard.insert(publish.topic, value);
    }
}

#[test]
fn new_connections_past_the_rate_wait_in_the_listen_queue_and_all_get_in() {
    let broker = Broker::start(&["--connection-rate-max", "20"]);
    let started = Instant::now();
    // 20 a second with a burst of one second's worth: 60 need at least 2 s however the
    // kernel spreads them over the shards.
    let clients: Vec<RawClient> = (0..60).map(|i| broker.client(&format!("storm-{i}"), true)).collect();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1500), "60 connections at 20/s took only {elapsed:?}");
    assert_eq!(clients.len(), 60);
    broker.wait_for_counters("delays counted", |c| c.total("accepts_delayed_by_rate") > 0);
}

#[test]
fn a_client_past_its_publish_rate_is_slowed_and_loses_nothing() {
    let broker = Broker::start(&["--publish-rate-max", "20"]);
    let mut subscriber = broker.client("rate-reader", true);
    subscriber.subscribe(&[("rate/#", QoS::AtLeastOnce)]);
    let mut publisher = broker.client("rate-writer", true);
    let started = Instant::now();
    for n in 0..60u16 {
        let publish = Publish::acknowledged(
            Bytes::from_static(b"rate/x"),
            Bytes::copy_from_slice(&n.to_be_bytes()),
            QoS::AtLeastOnce,
            PacketId::new(n + 1).expect("id"),
        );
        publisher.send(&Packet::Publish(publish));
    }
    let mut received = Vec::new();
    while received.len() < 60 {
        let publish = subscriber.recv_publish();
        subscriber.ack(&publish);
        received.push(u16::from_be_bytes([publish.payload[0], publish.payload[1]]));
    }
    let elapsed = started.elapsed();
    assert_eq!(received, (0..60).collect::<Vec<_>>(), "every message, in order");
    assert!(elapsed >= Duration::from_millis(1500), "60 publishes at 20/s arrived within {elapsed:?}");
    broker.wait_for_counters("delays counted", |c| c.total("publishes_delayed_by_rate") > 0);
}

#[test]
fn topics_longer_than_the_byte_bound_are_refused_like_deep_ones() {
    let broker = Broker::start(&["--topic-bytes-max", "16"]);
    let long = "a/very/long/topic/name";
    let mut v5 = broker.client_v5("long-topics");
    let suback = v5.subscribe(&[("short/+", QoS::AtMostOnce), (long, QoS::AtMostOnce)]);
    assert_eq!(suback.codes, vec![ReasonCode(0), ReasonCode::TOPIC_FILTER_INVALID]);
    v5.send(&Packet::Publish(Publish::acknowledged(
        Bytes::from_static(long.as_bytes()),
        Bytes::from_static(b"x"),
        QoS::AtLeastOnce,
        PacketId::new(7).expect("id"),
    )));
    let Packet::PubAck(ack) = v5.recv() else { panic!("expected PUBACK") };
    assert_eq!(ack.reason, ReasonCode::TOPIC_NAME_INVALID);
    // 3.1.1 has no code for it: the SUBACK says 0x80, a PUBLISH ends the connection.
    let mut v311 = broker.client("long-topics-311", true);
    assert_eq!(v311.subscribe(&[(long, QoS::AtMostOnce)]).codes, vec![ReasonCode::UNSPECIFIED_ERROR]);
    v311.publish_raw(long, QoS::AtMostOnce, false);
    v311.assert_closed();
    // A will topic past it refuses the CONNECT.
    let mut with_will = broker.raw_v5();
    let will = common::will(long, b"gone", QoS::AtMostOnce, false);
    assert_eq!(with_will.connect("long-will", true, 60, Some(will)).code, ReasonCode::TOPIC_NAME_INVALID.0);
}

#[test]
fn retained_messages_past_the_byte_bound_are_refused_and_replacements_count_once() {
    let broker = Broker::start(&["--retained-bytes-max", "100"]);
    let mut publisher = broker.client_v5("retained-bytes");
    let retained = |topic: &'static str, payload: Vec<u8>, id: u16| {
        Packet::Publish(
            Publish::acknowledged(
                Bytes::from_static(topic.as_bytes()),
                Bytes::from(payload),
                QoS::AtLeastOnce,
                PacketId::new(id).expect("id"),
            )
            .retained(),
        )
    };
    let mut reason = |packet: Packet| {
        publisher.send(&packet);
        let Packet::PubAck(ack) = publisher.recv() else { panic!("expected PUBACK") };
        ack.reason
    };
    // Topic + payload: 3 + 60 = 63 bytes stored.
    assert_eq!(reason(retained("r/a", vec![b'a'; 60], 1)), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    assert_eq!(reason(retained("r/b", vec![b'b'; 40], 2)), ReasonCode::QUOTA_EXCEEDED, "63 + 43 > 100");
    // Replacing r/a with 90 bytes: 93 in all, since the old 63 go.
    assert_eq!(reason(retained("r/a", vec![b'A'; 90], 3)), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    // Clearing it makes room again.
    assert_eq!(reason(retained("r/a", Vec::new(), 4)), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    assert_eq!(reason(retained("r/b", vec![b'b'; 40], 5)), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    let mut reader = RawClient::open(broker.addr, ProtocolVersion::V311);
    assert_eq!(reader.connect("retained-reader", true, 60, None).code, 0);
    reader.subscribe(&[("r/#", QoS::AtMostOnce)]);
    let publish = reader.recv_publish();
    assert_eq!((&publish.topic[..], publish.payload.len()), (&b"r/b"[..], 40));
    reader.assert_silent(Duration::from_millis(300));
    broker.wait_for_counters("refusal counted", |c| c.total("retained_refused_quota") == 1);
}
