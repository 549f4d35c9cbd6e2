//! MQTT 5.0 connection-level behaviour: what CONNACK announces, Server Keep Alive, Receive
//! Maximum both ways, the client's Maximum Packet Size, authentication methods, session
//! expiry, and the honest refusal of features not built yet.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, RawClient};
use ringmq::protocol::{Disconnect, Packet, PacketId, Properties, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions};

#[test]
fn connack_announces_what_the_server_offers() {
    let broker = Broker::start(&["--receive-maximum", "100", "--max-packet-size-bytes", "65536"]);
    let mut client = broker.raw_v5();
    let connack = client.connect("caps", true, 60, None);
    assert_eq!(connack.code, 0);
    let p = connack.properties;
    assert_eq!(p.receive_maximum, Some(100));
    assert_eq!(p.maximum_packet_size, Some(65536));
    assert_eq!(p.subscription_identifier_available, None, "supported: property absent (1)");
    assert_eq!(p.shared_subscription_available, None, "supported: property absent (1)");
    assert_eq!(p.server_keep_alive, None, "no cap configured");
    assert_eq!(p.maximum_qos, None, "QoS 2 is supported: property absent");
    assert_eq!(p.topic_alias_maximum, Some(64));
}

#[test]
fn server_keep_alive_caps_the_client_and_is_enforced() {
    let broker = Broker::start(&["--max-keepalive-s", "1"]);
    let mut client = broker.raw_v5();
    let started = Instant::now();
    let connack = client.connect("capped", true, 60, None);
    assert_eq!(connack.properties.server_keep_alive, Some(1));
    assert_eq!(client.disconnect_reason(), ReasonCode::KEEP_ALIVE_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(4), "the cap, not the client's 60 s, applies");
}

#[test]
fn client_receive_maximum_bounds_unacknowledged_deliveries() {
    let broker = Broker::start(&[]);
    let mut sub = broker.raw_v5();
    let properties = Properties { receive_maximum: Some(2), ..Properties::default() };
    assert_eq!(sub.connect_with_properties("narrow", true, 60, properties).code, 0);
    sub.subscribe(&[("rm/t", QoS::AtLeastOnce)]);
    let mut publisher = broker.client("rm-pub", true);
    for n in 1..=5u16 {
        publisher.publish("rm/t", &n.to_be_bytes(), QoS::AtLeastOnce, false, n);
    }
    let first = sub.recv_publish();
    let _second = sub.recv_publish();
    sub.assert_silent(Duration::from_millis(300));
    sub.ack(&first);
    let third = sub.recv_publish();
    assert_eq!(&third.payload[..], &3u16.to_be_bytes(), "the window opens one message at a time, in order");
}

#[test]
fn messages_above_the_client_maximum_packet_size_are_not_sent() {
    let broker = Broker::start(&[]);
    let mut sub = broker.raw_v5();
    let properties = Properties { maximum_packet_size: Some(100), ..Properties::default() };
    assert_eq!(sub.connect_with_properties("small", true, 60, properties).code, 0);
    sub.subscribe(&[("mps/t", QoS::AtLeastOnce)]);
    let mut publisher = broker.client("mps-pub", true);
    publisher.publish("mps/t", &[7u8; 200], QoS::AtLeastOnce, false, 1);
    publisher.publish("mps/t", b"fits", QoS::AtLeastOnce, false, 2);
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"fits", "the 200-byte message was dropped for this client");
    sub.ack(&got);
    sub.assert_silent(Duration::from_millis(300));
}

#[test]
fn exceeding_our_receive_maximum_is_disconnect_0x93() {
    let broker = Broker::start(&["--receive-maximum", "2"]);
    let mut client = broker.raw_v5();
    assert_eq!(client.connect("greedy", true, 60, None).code, 0);
    for id in 1..=3u16 {
        let publish =
            Publish::acknowledged(Bytes::from_static(b"rm/in"), Bytes::from_static(b"x"), QoS::ExactlyOnce, PacketId::new(id).expect("id"));
        client.send(&Packet::Publish(publish));
    }
    // Two PUBRECs, then the third QoS 2 message without PUBREL breaks the limit.
    assert_eq!(client.disconnect_reason(), ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

#[test]
fn unknown_authentication_method_gets_0x8c() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw_v5();
    let properties = Properties { authentication_method: Some(Bytes::from_static(b"SCRAM-SHA-1")), ..Properties::default() };
    let connack = client.connect_with_properties("auth", true, 60, properties);
    assert_eq!(connack.code, ReasonCode::BAD_AUTHENTICATION_METHOD.0);
    assert_eq!(connack.properties.reason_string.as_deref(), Some(&b"authentication method not supported"[..]));
    client.assert_closed();
}

#[test]
fn session_expiry_zero_ends_the_session_with_the_connection() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw_v5();
    assert_eq!(client.connect("se-zero", false, 60, None).code, 0);
    client.disconnect();
    let mut client = broker.raw_v5();
    assert!(!client.connect("se-zero", false, 60, None).session_present, "5.0 default expiry is 0");
}

#[test]
fn session_with_expiry_outlives_a_clean_start_connection_and_queues() {
    let broker = Broker::start(&[]);
    let keep = Properties { session_expiry_interval: Some(30), ..Properties::default() };
    let mut sub = broker.raw_v5();
    assert_eq!(sub.connect_with_properties("se-keep", true, 60, keep.clone()).code, 0);
    sub.subscribe(&[("se/t", QoS::AtLeastOnce)]);
    sub.disconnect();
    let mut publisher = broker.client("se-pub", true);
    publisher.publish("se/t", b"while away", QoS::AtLeastOnce, false, 1);
    let mut sub = broker.raw_v5();
    let connack = sub.connect_with_properties("se-keep", false, 60, keep);
    assert!(connack.session_present);
    assert_eq!(&sub.recv_publish().payload[..], b"while away");
}

#[test]
fn session_expires_after_its_interval() {
    let broker = Broker::start(&[]);
    let short = Properties { session_expiry_interval: Some(1), ..Properties::default() };
    let mut client = broker.raw_v5();
    assert_eq!(client.connect_with_properties("se-short", true, 60, short.clone()).code, 0);
    client.disconnect();
    broker.wait_for_counters("the session expired", |c| c.total("sessions_expired") >= 1);
    let mut probe = broker.raw_v5();
    assert!(!probe.connect("se-short", false, 60, None).session_present, "the session is gone");
}

#[test]
fn disconnect_cannot_give_expiry_to_a_session_that_had_none() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw_v5();
    assert_eq!(client.connect("se-late", true, 60, None).code, 0);
    client.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: Properties { session_expiry_interval: Some(60), ..Properties::default() }.into(),
    }));
    assert_eq!(client.disconnect_reason(), ReasonCode::PROTOCOL_ERROR);
}

fn subscribe_with_identifier(client: &mut RawClient, filter: &'static str, identifier: u32) {
    client.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(identifier as u16).expect("id"),
        properties: Properties { subscription_identifiers: vec![identifier], ..Properties::default() }.into(),
        filters: vec![(Bytes::from_static(filter.as_bytes()), SubscriptionOptions::with_qos(QoS::AtLeastOnce))],
    }));
    assert!(matches!(client.recv(), Packet::SubAck(_)));
}

#[test]
fn one_copy_carries_every_matching_subscription_identifier() {
    let broker = Broker::start(&[]);
    let mut publisher = broker.client("sid-pub", true);
    publisher.publish("sid/a", b"retained", QoS::AtLeastOnce, true, 1);
    let mut client = broker.raw_v5();
    assert_eq!(client.connect("sid", true, 60, None).code, 0);
    subscribe_with_identifier(&mut client, "sid/+", 7);
    let retained = client.recv_publish();
    assert_eq!(retained.properties.subscription_identifiers, vec![7], "retained delivery names its subscription");
    client.ack(&retained);
    subscribe_with_identifier(&mut client, "sid/#", 9);
    let again = client.recv_publish();
    assert_eq!(again.properties.subscription_identifiers, vec![9]);
    client.ack(&again);
    client.subscribe(&[("sid/a", QoS::AtMostOnce)]);
    let plain = client.recv_publish();
    assert!(plain.properties.subscription_identifiers.is_empty());
    client.ack(&plain);
    publisher.publish("sid/a", b"live", QoS::AtLeastOnce, false, 2);
    let live = client.recv_publish();
    let mut ids = live.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 9], "one copy, both identifiers");
    client.ack(&live);
    client.assert_silent(Duration::from_millis(300));
}

#[test]
fn restricted_server_announces_and_enforces_its_limits() {
    let broker = Broker::start(&[
        "--max-qos",
        "1",
        "--no-retain",
        "--no-wildcard-subscriptions",
        "--no-subscription-identifiers",
        "--no-shared-subscriptions",
    ]);
    let mut client = broker.raw_v5();
    let connack = client.connect("restricted", true, 60, None);
    assert_eq!(connack.properties.maximum_qos, Some(1));
    assert_eq!(connack.properties.retain_available, Some(0));
    assert_eq!(connack.properties.wildcard_subscription_available, Some(0));
    assert_eq!(connack.properties.subscription_identifier_available, Some(0));
    assert_eq!(connack.properties.shared_subscription_available, Some(0));
    let suback = client.subscribe(&[("r/+", QoS::AtMostOnce), ("r/t", QoS::ExactlyOnce), ("$share/g/r/t", QoS::AtMostOnce)]);
    assert_eq!(
        suback.codes,
        vec![ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, ReasonCode(1), ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED],
        "QoS 2 granted as 1"
    );
    client.publish_raw("r/t", QoS::ExactlyOnce, false);
    assert_eq!(client.disconnect_reason(), ReasonCode::QOS_NOT_SUPPORTED);

    let mut retainer = broker.raw_v5();
    assert_eq!(retainer.connect("retainer", true, 60, None).code, 0);
    retainer.publish_raw("r/t", QoS::AtMostOnce, true);
    assert_eq!(retainer.disconnect_reason(), ReasonCode::RETAIN_NOT_SUPPORTED);

    let mut identified = broker.raw_v5();
    assert_eq!(identified.connect("identified", true, 60, None).code, 0);
    identified.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).expect("id"),
        properties: Properties { subscription_identifiers: vec![5], ..Properties::default() }.into(),
        filters: vec![(Bytes::from_static(b"r/t"), SubscriptionOptions::with_qos(QoS::AtMostOnce))],
    }));
    assert_eq!(identified.disconnect_reason(), ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED);

    let mut will_too_high = broker.raw_v5();
    let connack = will_too_high.connect("will-qos2", true, 60, Some(common::will("w", b"x", QoS::ExactlyOnce, false)));
    assert_eq!(connack.code, ReasonCode::QOS_NOT_SUPPORTED.0);
    assert!(connack.properties.reason_string.is_some(), "a refusal says why");
}
