//! MQTT 5.0 PUBLISH handling: client-to-broker topic aliases and payload format validation;
//! properties are forwarded, the alias is not.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Broker, on_cpu};
use ringmq::protocol::{Ack, Packet, PacketId, Properties, Publish, QoS, ReasonCode};

fn publish(topic: &'static str, payload: &'static [u8], qos: QoS, id: u16, properties: Properties) -> Packet {
    Packet::Publish(Publish {
        qos,
        packet_id: PacketId::new(id),
        properties: properties.into(),
        ..Publish::at_most_once(topic.as_bytes(), payload)
    })
}

fn alias(n: u16) -> Properties {
    Properties { topic_alias: Some(n), ..Properties::default() }
}

#[test]
fn topic_alias_is_set_then_used_and_never_forwarded() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client_v5("alias-sub");
    sub.subscribe(&[("al/t", QoS::AtMostOnce)]);
    let mut publisher = broker.client_v5("alias-pub");
    let with_user_property = Properties { user_properties: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))], ..alias(3) };
    publisher.send(&publish("al/t", b"first", QoS::AtMostOnce, 0, with_user_property));
    publisher.send(&publish("", b"second", QoS::AtMostOnce, 0, alias(3)));
    for payload in [&b"first"[..], b"second"] {
        let got = sub.recv_publish();
        assert_eq!((&got.topic[..], &got.payload[..]), (&b"al/t"[..], payload));
        assert_eq!(got.properties.topic_alias, None, "aliases are per connection, not forwarded");
    }
}

#[test]
fn user_properties_are_forwarded_unchanged() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client_v5("up-sub");
    sub.subscribe(&[("up/t", QoS::AtLeastOnce)]);
    let mut publisher = broker.client_v5("up-pub");
    let properties = Properties {
        user_properties: vec![(Bytes::from_static(b"a"), Bytes::from_static(b"1")), (Bytes::from_static(b"a"), Bytes::from_static(b"2"))],
        response_topic: Some(Bytes::from_static(b"up/reply")),
        correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
        content_type: Some(Bytes::from_static(b"text/plain")),
        payload_format_indicator: Some(1),
        ..Properties::default()
    };
    publisher.send(&publish("up/t", b"hello", QoS::AtLeastOnce, 1, properties.clone()));
    let got = sub.recv_publish();
    assert_eq!(*got.properties, properties);
}

#[test]
fn alias_above_the_maximum_is_0x94_and_unknown_alias_is_a_protocol_error() {
    let broker = Broker::start(&["--topic-alias-maximum", "4"]);
    let mut client = broker.client_v5("alias-big");
    client.send(&publish("al/t", b"x", QoS::AtMostOnce, 0, alias(5)));
    assert_eq!(client.disconnect_reason(), ReasonCode::TOPIC_ALIAS_INVALID);
    let mut client = broker.client_v5("alias-unknown");
    client.send(&publish("", b"x", QoS::AtMostOnce, 0, alias(2)));
    assert_eq!(client.disconnect_reason(), ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn payload_not_matching_its_utf8_format_indicator_is_refused() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client_v5("pf-sub");
    sub.subscribe(&[("pf/t", QoS::AtLeastOnce)]);
    let mut publisher = broker.client_v5("pf-pub");
    let utf8 = Properties { payload_format_indicator: Some(1), ..Properties::default() };
    publisher.send(&publish("pf/t", &[0xFF, 0xFE], QoS::AtLeastOnce, 1, utf8.clone()));
    assert_eq!(publisher.recv(), Packet::PubAck(Ack::with_reason(PacketId::new(1).expect("id"), ReasonCode::PAYLOAD_FORMAT_INVALID)));
    sub.assert_silent(Duration::from_millis(300));
    publisher.send(&publish("pf/t", &[0xFF], QoS::AtMostOnce, 0, utf8));
    assert_eq!(publisher.disconnect_reason(), ReasonCode::PAYLOAD_FORMAT_INVALID);
}

fn expiring(seconds: u32) -> Properties {
    Properties { message_expiry_interval: Some(seconds), ..Properties::default() }
}

#[test]
fn message_expiry_is_forwarded_as_what_is_left() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client_v5("me-live");
    sub.subscribe(&[("me/live", QoS::AtMostOnce)]);
    let mut publisher = broker.client_v5("me-live-pub");
    publisher.send(&publish("me/live", b"x", QoS::AtMostOnce, 0, expiring(100)));
    let left = sub.recv_publish().properties.message_expiry_interval.expect("expiry forwarded");
    assert!((99..=100).contains(&left), "{left}");
}

#[test]
fn expired_messages_are_not_delivered_from_a_queue_or_the_retained_store() {
    let broker = Broker::start(&[]);
    let keep = Properties { session_expiry_interval: Some(60), ..Properties::default() };
    let mut sub = broker.raw_v5();
    assert_eq!(sub.connect_with_properties("me-offline", true, 60, keep.clone()).code, 0);
    sub.subscribe(&[("me/q", QoS::AtLeastOnce)]);
    sub.disconnect();
    let mut publisher = broker.client_v5("me-pub");
    publisher.send(&publish("me/q", b"short", QoS::AtLeastOnce, 1, expiring(1)));
    publisher.send(&publish("me/q", b"long", QoS::AtLeastOnce, 2, expiring(100)));
    publisher.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: Bytes::from_static(b"me/retained"),
        packet_id: None,
        properties: expiring(1).into(),
        payload: Bytes::from_static(b"stale"),
    }));
    std::thread::sleep(Duration::from_millis(1600));

    let mut sub = broker.raw_v5();
    assert!(sub.connect_with_properties("me-offline", false, 60, keep).session_present);
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"long", "the 1 s message expired in the queue");
    let left = got.properties.message_expiry_interval.expect("expiry forwarded");
    assert!((97..=99).contains(&left), "about 98 s left, got {left}");
    sub.ack(&got);
    sub.subscribe(&[("me/retained", QoS::AtMostOnce)]);
    sub.assert_silent(Duration::from_millis(300));
}

#[test]
fn broker_assigns_topic_aliases_up_to_the_clients_maximum() {
    let broker = Broker::start(&[]);
    let mut sub = broker.raw_v5();
    let properties = Properties { topic_alias_maximum: Some(2), ..Properties::default() };
    assert_eq!(sub.connect_with_properties("ta-sub", true, 60, properties).code, 0);
    sub.subscribe(&[("ta/#", QoS::AtMostOnce)]);
    let mut publisher = broker.client_v5("ta-pub");
    for topic in ["ta/a", "ta/a", "ta/b", "ta/c", "ta/a", "ta/c"] {
        publisher.send(&publish(topic, b"x", QoS::AtMostOnce, 0, Properties::default()));
    }
    let seen: Vec<(Vec<u8>, Option<u16>)> =
        (0..6).map(|_| sub.recv_publish()).map(|p| (p.topic.to_vec(), p.properties.topic_alias)).collect();
    let expected: Vec<(Vec<u8>, Option<u16>)> = vec![
        (b"ta/a".to_vec(), Some(1)),
        (Vec::new(), Some(1)),
        (b"ta/b".to_vec(), Some(2)),
        (b"ta/c".to_vec(), None),
        (Vec::new(), Some(1)),
        (b"ta/c".to_vec(), None),
    ];
    assert_eq!(seen, expected, "two aliases, then full topics");
    // A client that did not ask for aliases never gets one.
    let mut plain = broker.client_v5("ta-plain");
    plain.subscribe(&[("ta/#", QoS::AtMostOnce)]);
    publisher.send(&publish("ta/a", b"x", QoS::AtMostOnce, 0, Properties::default()));
    let got = plain.recv_publish();
    assert_eq!((&got.topic[..], got.properties.topic_alias), (&b"ta/a"[..], None));
}

/// PUBACK/PUBREC reason for one QoS 1 or 2 publish (completing the QoS 2 flow).
fn publish_reason(client: &mut common::RawClient, topic: &'static str, qos: QoS, id: u16) -> ReasonCode {
    client.send(&publish(topic, b"x", qos, id, Properties::default()));
    let packet_id = PacketId::new(id).expect("id");
    match qos {
        QoS::AtLeastOnce => match client.expect(|p| matches!(p, Packet::PubAck(ack) if ack.packet_id == packet_id)) {
            Packet::PubAck(ack) => ack.reason,
            _ => unreachable!(),
        },
        _ => {
            let Packet::PubRec(rec) = client.expect(|p| matches!(p, Packet::PubRec(ack) if ack.packet_id == packet_id)) else {
                unreachable!()
            };
            client.send(&Packet::PubRel(Ack::new(packet_id)));
            client.expect(|p| matches!(p, Packet::PubComp(ack) if ack.packet_id == packet_id));
            rec.reason
        }
    }
}

#[test]
fn puback_and_pubrec_say_when_nobody_subscribes_on_any_shard() {
    const TOPICS: [&str; 8] = ["nms/0", "nms/1", "nms/2", "nms/3", "nms/4", "nms/5", "nms/6", "nms/7"];
    let broker = Broker::start(&["--steer", "cpu"]);
    let mut subscribers: Vec<_> = TOPICS
        .iter()
        .enumerate()
        .map(|(index, topic)| {
            let mut subscriber = on_cpu(index, || broker.client_v5(&format!("nms-sub-{topic}")));
            subscriber.subscribe(&[(topic, QoS::AtLeastOnce)]);
            subscriber
        })
        .collect();
    let mut publisher = broker.client_v5("nms-pub");
    // Some subscribers are on the publisher's shard and some on the other one.
    broker.wait_for_counters("clients on both shards", |c| {
        c.get(0, "clients_connected").unwrap_or(0) > 0 && c.get(1, "clients_connected").unwrap_or(0) > 0
    });
    for (n, topic) in TOPICS.iter().enumerate() {
        assert_eq!(publish_reason(&mut publisher, topic, QoS::AtLeastOnce, n as u16 + 1), ReasonCode::SUCCESS, "{topic}");
        let delivered = subscribers[n].recv_publish();
        assert_eq!(&delivered.topic[..], topic.as_bytes(), "routed to the subscriber's shard");
        subscribers[n].ack(&delivered);
    }
    assert_eq!(publish_reason(&mut publisher, "nms/none", QoS::AtLeastOnce, 100), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    assert_eq!(publish_reason(&mut publisher, "nms/none", QoS::ExactlyOnce, 101), ReasonCode::NO_MATCHING_SUBSCRIBERS);

    // After the last subscriber leaves, the withdrawal reaches every shard shortly after
    // the UNSUBACK (at the next timer tick): from then on the topic has nobody.
    for subscriber in &mut subscribers {
        subscriber.send(&Packet::Unsubscribe(ringmq::protocol::Unsubscribe {
            packet_id: PacketId::new(9).expect("id"),
            properties: Default::default(),
            filters: TOPICS.iter().map(|t| Bytes::from_static(t.as_bytes())).collect(),
        }));
        subscriber.expect(|p| matches!(p, Packet::UnsubAck(_)));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut id = 200;
    for topic in TOPICS {
        loop {
            id += 1;
            if publish_reason(&mut publisher, topic, QoS::AtLeastOnce, id) == ReasonCode::NO_MATCHING_SUBSCRIBERS {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{topic} still has subscribers 5 s after the last one left");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
