//! Regressions from an outside conformance and adversarial test run: each test is one
//! finding, answered as the spec says (a reason code, or a closed connection) while the
//! broker goes on serving everyone else.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Broker, RawClient, will};
use ringmq::protocol::{Ack, Packet, PacketId, Properties, Publish, QoS, ReasonCode, Unsubscribe};

fn deep_topic(levels: usize) -> String {
    vec!["a"; levels].join("/")
}

fn publish_packet(topic: &str, qos: QoS, retain: bool, properties: Properties) -> Packet {
    let topic = Bytes::copy_from_slice(topic.as_bytes());
    let publish = match qos {
        QoS::AtMostOnce => Publish::at_most_once(topic, Bytes::from_static(b"payload")),
        qos => Publish::acknowledged(topic, Bytes::from_static(b"payload"), qos, PacketId::new(7).expect("non-zero")),
    };
    Packet::Publish(Publish { retain, properties: properties.into(), ..publish })
}

#[test]
fn topics_deeper_than_the_level_limit_are_refused_and_the_broker_lives_on() {
    let mut broker = Broker::start(&[]);
    // SUBSCRIBE to 8,000 levels, then disconnect (which removed it recursively before).
    let mut deep_subscriber = broker.client("deep-sub", true);
    let suback = deep_subscriber.subscribe(&[(&deep_topic(8_000), QoS::AtMostOnce), ("ok/+", QoS::AtMostOnce)]);
    assert_eq!(suback.codes, vec![ReasonCode::UNSPECIFIED_ERROR, ReasonCode(0)]);
    deep_subscriber.disconnect();

    // 3.1.1: a PUBLISH to 32,768 levels ends the connection.
    let mut publisher = broker.client("deep-pub", true);
    publisher.send(&publish_packet(&deep_topic(32_768), QoS::AtMostOnce, true, Properties::default()));
    publisher.assert_closed();

    // 5.0: at QoS 1 the PUBACK says why and the connection stays.
    let mut publisher = broker.client_v5("deep-pub-5");
    publisher.send(&publish_packet(&deep_topic(201), QoS::AtLeastOnce, true, Properties::default()));
    let Packet::PubAck(ack) = publisher.recv() else { panic!("expected PUBACK") };
    assert_eq!(ack.reason, ReasonCode::TOPIC_NAME_INVALID);
    publisher.publish(&deep_topic(200), b"at the limit", QoS::AtLeastOnce, true, 8);

    let mut everything = broker.client("everything", true);
    everything.subscribe(&[("#", QoS::AtMostOnce)]);
    let retained = everything.recv_publish();
    assert_eq!(retained.topic.len(), deep_topic(200).len());
    assert!(broker.is_running());
}

#[test]
fn generated_client_ids_are_unique_for_simultaneous_empty_id_connects() {
    let broker = Broker::start(&[]);
    let mut clients: Vec<RawClient> = (0..24).map(|_| broker.raw_v5()).collect();
    for client in &mut clients {
        let packet = client.connect_packet("", true, 60, None);
        client.send(&packet);
    }
    let mut assigned = std::collections::HashSet::new();
    for client in &mut clients {
        let Packet::ConnAck(connack) = client.recv() else { panic!("expected CONNACK") };
        assert_eq!(connack.code, 0);
        let id = connack.properties.into_inner().assigned_client_identifier.expect("an assigned id");
        assert!(id.len() >= 32, "unguessable: {id:?}");
        assert!(assigned.insert(id), "every assigned id is different");
    }
    // Nobody was taken over by a client that got the same id.
    for client in &mut clients {
        client.send(&Packet::PingReq);
        assert_eq!(client.recv(), Packet::PingResp);
    }
}

#[test]
fn clients_cannot_publish_to_the_brokers_sys_topics() {
    let broker = Broker::start(&[]);
    let topic = "$SYS/broker/shards/0/clients_connected";
    let mut forger = broker.client("forger", true);
    forger.publish(topic, b"999999", QoS::AtLeastOnce, true, 1);
    let mut forger5 = broker.client_v5("forger5");
    forger5.send(&publish_packet(topic, QoS::AtLeastOnce, true, Properties::default()));
    let Packet::PubAck(ack) = forger5.recv() else { panic!("expected PUBACK") };
    assert_eq!(ack.reason, ReasonCode::NOT_AUTHORIZED);

    let mut reader = broker.client("reader", true);
    reader.subscribe(&[(topic, QoS::AtMostOnce)]);
    // The broker's own value arrives (retained, or at the next one-second publish); the
    // forged one never does.
    for _ in 0..3 {
        let publish = reader.recv_publish();
        assert_ne!(&publish.payload[..], b"999999");
        assert_ne!(&publish.payload[..], b"payload");
    }
}

#[test]
fn a_denied_topic_reaches_no_wildcard_subscriber() {
    let broker = Broker::start(&["--deny-subscribe", "secret/#"]);
    let mut subscribers: Vec<RawClient> = ["#", "+/x", "+/+"]
        .iter()
        .enumerate()
        .map(|(index, filter)| {
            let mut client = broker.client(&format!("wild-{index}"), true);
            client.subscribe(&[(filter, QoS::AtMostOnce)]);
            client
        })
        .collect();
    let mut publisher = broker.client("pub", true);
    publisher.publish("secret/x", b"hidden", QoS::AtLeastOnce, false, 1);
    publisher.publish("public/x", b"open", QoS::AtLeastOnce, false, 2);
    for subscriber in &mut subscribers {
        let publish = subscriber.recv_publish();
        assert_eq!(&publish.topic[..], b"public/x");
        subscriber.assert_silent(Duration::from_millis(200));
    }
}

#[test]
fn a_will_marked_utf8_with_a_payload_that_is_not_is_refused() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw_v5();
    let mut bad_will = will("w/t", &[0xFF, 0xFE], QoS::AtMostOnce, false);
    bad_will.properties.payload_format_indicator = Some(1);
    let packet = client.connect_packet("bad-will", true, 60, Some(bad_will));
    let connack = client.connect_sending(packet);
    assert_eq!(ReasonCode(connack.code), ReasonCode::PAYLOAD_FORMAT_INVALID);
    client.assert_closed();
}

#[test]
fn a_zero_length_will_topic_closes_the_connection() {
    let broker = Broker::start(&[]);
    let mut v311 = broker.raw();
    let packet = v311.connect_packet("empty-will", true, 60, Some(will("", b"x", QoS::AtMostOnce, false)));
    v311.send(&packet);
    let mut seen = Vec::new();
    assert!(v311.closed_within(common::WAIT, &mut seen), "closed");
    assert!(seen.is_empty(), "no CONNACK for a malformed CONNECT: {seen:?}");

    let mut v5 = broker.raw_v5();
    let packet = v5.connect_packet("empty-will-5", true, 60, Some(will("", b"x", QoS::AtMostOnce, false)));
    let connack = v5.connect_sending(packet);
    assert_eq!(ReasonCode(connack.code), ReasonCode::TOPIC_NAME_INVALID);
    v5.assert_closed();
}

#[test]
fn a_client_publish_with_a_subscription_identifier_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    let mut client = broker.client_v5("sub-id-pub");
    let properties = Properties { subscription_identifiers: vec![5], ..Properties::default() };
    client.send(&publish_packet("t", QoS::AtMostOnce, false, properties));
    assert_eq!(client.disconnect_reason(), ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn an_undefined_reason_code_in_an_ack_is_malformed() {
    let broker = Broker::start(&[]);
    let mut client = broker.client_v5("bad-ack");
    // PUBACK, packet id 1, reason 0x05 (defined nowhere).
    client.send_bytes(&[0x40, 0x03, 0x00, 0x01, 0x05]);
    assert_eq!(client.disconnect_reason(), ReasonCode::MALFORMED_PACKET);
}

#[test]
fn a_property_not_allowed_in_the_packet_is_malformed() {
    let broker = Broker::start(&[]);
    let mut client = broker.client_v5("bad-property");
    // PUBLISH QoS 0 to "t" with a Session Expiry Interval (0x11), which PUBLISH may not carry.
    client.send_bytes(&[0x30, 0x0B, 0x00, 0x01, b't', 0x05, 0x11, 0x00, 0x00, 0x00, 0x0A, b'x', b'y']);
    assert_eq!(client.disconnect_reason(), ReasonCode::MALFORMED_PACKET);
}

#[test]
fn no_packet_larger_than_the_clients_maximum_packet_size_is_sent() {
    let broker = Broker::start(&[]);
    // The CONNACK for an empty client id carries a 39-byte assigned id: it cannot fit 20
    // bytes, so the broker sends nothing and closes.
    let mut tiny = broker.raw_v5();
    let mut packet = tiny.connect_packet("", true, 60, None);
    if let Packet::Connect(connect) = &mut packet {
        connect.properties.maximum_packet_size = Some(20);
    }
    tiny.send(&packet);
    let mut seen = Vec::new();
    assert!(tiny.closed_within(common::WAIT, &mut seen));
    assert!(seen.is_empty(), "nothing over 20 bytes: {seen:?}");

    // A SUBACK for 30 filters is 35 bytes: not sent to a client that takes 32; a PINGRESP is.
    let mut small = broker.raw_v5();
    let properties = Properties { maximum_packet_size: Some(32), ..Properties::default() };
    assert_eq!(small.connect_with_properties("small", true, 60, properties).code, 0);
    let filters: Vec<String> = (0..30).map(|index| format!("f/{index}")).collect();
    let filters: Vec<(&str, ringmq::protocol::SubscriptionOptions)> =
        filters.iter().map(|filter| (filter.as_str(), ringmq::protocol::SubscriptionOptions::with_qos(QoS::AtMostOnce))).collect();
    small.subscribe_with_no_wait(&filters);
    small.send(&Packet::PingReq);
    assert_eq!(small.recv(), Packet::PingResp);
}

#[test]
fn a_pubrec_with_an_error_code_ends_the_flow_and_frees_the_window() {
    let broker = Broker::start(&[]);
    let mut subscriber = broker.raw_v5();
    let properties = Properties { receive_maximum: Some(1), ..Properties::default() };
    assert_eq!(subscriber.connect_with_properties("refuser", true, 60, properties).code, 0);
    subscriber.subscribe(&[("q2", QoS::ExactlyOnce)]);
    let mut publisher = broker.client("q2-pub", true);
    publisher.publish("q2", b"first", QoS::ExactlyOnce, false, 1);
    publisher.publish("q2", b"second", QoS::ExactlyOnce, false, 2);
    let first = subscriber.recv_publish();
    assert_eq!(&first.payload[..], b"first");
    let id = first.packet_id.expect("QoS 2");
    subscriber.send(&Packet::PubRec(Ack::with_reason(id, ReasonCode::UNSPECIFIED_ERROR)));
    // No PUBREL for the refused one; the window (Receive Maximum 1) opens for the next.
    let second = subscriber.recv_publish();
    assert_eq!(&second.payload[..], b"second");
}

#[test]
fn an_ack_of_the_wrong_kind_closes_the_connection() {
    let broker = Broker::start(&[]);
    let mut subscriber = broker.client_v5("wrong-ack");
    subscriber.subscribe(&[("q1", QoS::AtLeastOnce)]);
    let mut v311 = broker.client("wrong-ack-311", true);
    v311.subscribe(&[("q1", QoS::AtLeastOnce)]);
    let mut publisher = broker.client("q1-pub", true);
    publisher.publish("q1", b"m", QoS::AtLeastOnce, false, 1);
    let publish = subscriber.recv_publish();
    subscriber.send(&Packet::PubComp(Ack::new(publish.packet_id.expect("QoS 1"))));
    assert_eq!(subscriber.disconnect_reason(), ReasonCode::PROTOCOL_ERROR);
    let publish = v311.recv_publish();
    v311.send(&Packet::PubRec(Ack::new(publish.packet_id.expect("QoS 1"))));
    v311.assert_closed();
}

#[test]
fn unsubscribe_with_an_invalid_filter_is_refused() {
    let broker = Broker::start(&[]);
    let mut v5 = broker.client_v5("unsub-5");
    let filters = vec![Bytes::from_static(b"a/#/b"), Bytes::from_static(b"ok/x")];
    let packet_id = PacketId::new(3).expect("non-zero");
    v5.send(&Packet::Unsubscribe(Unsubscribe { packet_id, properties: Default::default(), filters }));
    let Packet::UnsubAck(unsuback) = v5.recv() else { panic!("expected UNSUBACK") };
    assert_eq!(unsuback.codes, vec![ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::NO_SUBSCRIPTION_EXISTED]);

    let mut v311 = broker.client("unsub-311", true);
    let filters = vec![Bytes::from_static(b"a/#/b")];
    v311.send(&Packet::Unsubscribe(Unsubscribe { packet_id, properties: Default::default(), filters }));
    v311.assert_closed();
}
