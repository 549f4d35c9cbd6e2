//! The MQTT 5.0 behaviour that exists so far: v5 clients connect, get an assigned client
//! id, reason codes on SUBACK/UNSUBACK, and a DISCONNECT with a reason code before the
//! broker closes them (takeover, protocol error).

mod common;

use bytes::Bytes;
use common::{Broker, RawClient};
use ringmq::protocol::{Packet, PacketId, QoS, ReasonCode, Unsubscribe};

fn closed_with(client: &mut RawClient) -> Vec<Packet> {
    let mut seen = Vec::new();
    assert!(client.closed_within(common::WAIT, &mut seen), "the broker closes the connection");
    seen
}

#[test]
fn v5_client_gets_an_assigned_client_identifier() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw_v5();
    let connack = client.connect("", true, 60, None);
    assert_eq!(connack.code, 0);
    let assigned = connack.properties.into_inner().assigned_client_identifier.expect("assigned client id");
    assert!(!assigned.is_empty());
}

#[test]
fn v5_suback_and_unsuback_reason_codes() {
    let broker = Broker::start(&["--deny-subscribe", "secret/#"]);
    let mut client = broker.raw_v5();
    assert_eq!(client.connect("v5-codes", true, 60, None).code, 0);
    let suback = client.subscribe(&[("ok/+", QoS::AtLeastOnce), ("bad/#/x", QoS::AtMostOnce), ("secret/a", QoS::AtMostOnce)]);
    assert_eq!(suback.codes, vec![ReasonCode(1), ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::NOT_AUTHORIZED]);
    client.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: PacketId::new(3).expect("id"),
        properties: Default::default(),
        filters: vec![Bytes::from_static(b"ok/+"), Bytes::from_static(b"never")],
    }));
    match client.recv() {
        Packet::UnsubAck(ack) => assert_eq!(ack.codes, vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

#[test]
fn v5_takeover_sends_disconnect_0x8e() {
    let broker = Broker::start(&[]);
    let mut old = broker.raw_v5();
    assert_eq!(old.connect("v5-taken", true, 60, None).code, 0);
    let mut new = broker.raw_v5();
    assert_eq!(new.connect("v5-taken", true, 60, None).code, 0);
    let seen = closed_with(&mut old);
    assert!(matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SESSION_TAKEN_OVER), "{seen:?}");
}

#[test]
fn v5_protocol_error_is_announced_before_close() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw_v5();
    assert_eq!(client.connect("v5-bad", true, 60, None).code, 0);
    client.send_bytes(&[0xC1, 0x00]); // PINGREQ with a reserved flag bit
    let seen = closed_with(&mut client);
    assert!(matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::MALFORMED_PACKET), "{seen:?}");

    let mut client = broker.raw_v5();
    assert_eq!(client.connect("v5-wild", true, 60, None).code, 0);
    client.publish_raw("a/+", QoS::AtMostOnce, false);
    let seen = closed_with(&mut client);
    assert!(matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::TOPIC_NAME_INVALID), "{seen:?}");
}

#[test]
fn v5_keep_alive_timeout_sends_disconnect_0x8d() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw_v5();
    assert_eq!(client.connect("v5-silent", true, 1, None).code, 0);
    let seen = closed_with(&mut client);
    assert!(matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::KEEP_ALIVE_TIMEOUT), "{seen:?}");
}

#[test]
fn v5_shutdown_sends_disconnect_0x8b() {
    let mut broker = Broker::start(&[]);
    let mut client = broker.raw_v5();
    assert_eq!(client.connect("v5-bye", true, 60, None).code, 0);
    assert!(broker.terminate().expect("exits").success());
    let seen = closed_with(&mut client);
    assert!(matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SERVER_SHUTTING_DOWN), "{seen:?}");
}
