//! QoS 0/1/2 flows in both directions, delivered QoS = min(published, granted), SUBACK
//! codes, topic matching rules and overlapping subscriptions.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Broker;
use ringmq::protocol::{Ack, Packet, PacketId, Publish, QoS, ReasonCode};

fn publish_packet(topic: &str, payload: &[u8], qos: QoS, id: u16, dup: bool) -> Packet {
    let publish = Publish::at_most_once(Bytes::copy_from_slice(topic.as_bytes()), Bytes::copy_from_slice(payload));
    Packet::Publish(Publish { dup, qos, packet_id: PacketId::new(id), ..publish })
}

#[test]
fn delivered_qos_is_the_minimum_of_published_and_granted() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client("min-sub", true);
    assert_eq!(sub.subscribe(&[("q/1", QoS::AtLeastOnce)]).codes, vec![ReasonCode(1)]);
    let mut publisher = broker.client("min-pub", true);
    for (qos, expected) in [(QoS::ExactlyOnce, QoS::AtLeastOnce), (QoS::AtLeastOnce, QoS::AtLeastOnce), (QoS::AtMostOnce, QoS::AtMostOnce)]
    {
        publisher.publish("q/1", b"m", qos, false, 10);
        let got = sub.recv_publish();
        assert_eq!(got.qos, expected, "published at {qos:?}");
        assert_eq!(got.packet_id.is_some(), expected != QoS::AtMostOnce);
        assert!(!got.dup && !got.retain);
        sub.ack(&got);
    }
}

#[test]
fn inbound_qos2_is_exactly_once_even_with_a_dup_resend() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client("eo-sub", true);
    sub.subscribe(&[("eo", QoS::ExactlyOnce)]);
    let mut publisher = broker.client("eo-pub", true);
    let id = PacketId::new(7).expect("id");
    publisher.send(&publish_packet("eo", b"first", QoS::ExactlyOnce, 7, false));
    assert_eq!(publisher.recv(), Packet::PubRec(Ack::new(id)));
    // The client did not see PUBREC and resends with DUP: answered, not routed again.
    publisher.send(&publish_packet("eo", b"first", QoS::ExactlyOnce, 7, true));
    assert_eq!(publisher.recv(), Packet::PubRec(Ack::new(id)));
    publisher.send(&Packet::PubRel(Ack::new(id)));
    assert_eq!(publisher.recv(), Packet::PubComp(Ack::new(id)));

    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"first");
    assert_eq!(got.qos, QoS::ExactlyOnce);
    sub.ack(&got);
    sub.assert_silent(Duration::from_millis(300));

    // After PUBREL the id is free: the same id now carries a new message.
    publisher.publish("eo", b"second", QoS::ExactlyOnce, false, 7);
    assert_eq!(&sub.recv_publish().payload[..], b"second");
}

#[test]
fn outbound_qos2_flow_pubrec_pubrel_pubcomp() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client("out2-sub", true);
    sub.subscribe(&[("out2", QoS::ExactlyOnce)]);
    let mut publisher = broker.client("out2-pub", true);
    publisher.publish("out2", b"x", QoS::ExactlyOnce, false, 1);
    let got = sub.recv_publish();
    let id = got.packet_id.expect("qos 2 id");
    sub.send(&Packet::PubRec(Ack::new(id)));
    assert_eq!(sub.recv(), Packet::PubRel(Ack::new(id)));
    sub.send(&Packet::PubComp(Ack::new(id)));
    sub.assert_silent(Duration::from_millis(200));
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_on_reconnect() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client("resend-sub", false);
    sub.subscribe(&[("resend/1", QoS::AtLeastOnce), ("resend/2", QoS::ExactlyOnce)]);
    let mut publisher = broker.client("resend-pub", true);
    publisher.publish("resend/1", b"one", QoS::AtLeastOnce, false, 1);
    publisher.publish("resend/2", b"two", QoS::ExactlyOnce, false, 2);
    let first = sub.recv_publish();
    let second = sub.recv_publish();
    let id2 = second.packet_id.expect("id");
    // Acknowledge neither fully: PUBREC only for the QoS 2 one, then drop the socket.
    sub.send(&Packet::PubRec(Ack::new(id2)));
    assert_eq!(sub.recv(), Packet::PubRel(Ack::new(id2)));
    sub.drop_abruptly();

    let mut sub = broker.raw();
    let connack = sub.connect("resend-sub", false, 60, None);
    assert!(connack.session_present);
    let again = sub.recv_publish();
    assert!(again.dup, "re-sent PUBLISH carries DUP");
    assert_eq!((again.packet_id, &again.payload[..]), (first.packet_id, &b"one"[..]));
    assert_eq!(sub.recv(), Packet::PubRel(Ack::new(id2)), "past PUBREC: PUBREL is re-sent");
    sub.send(&Packet::PubAck(Ack::new(again.packet_id.expect("id"))));
    sub.send(&Packet::PubComp(Ack::new(id2)));
    sub.assert_silent(Duration::from_millis(300));
}

#[test]
fn suback_has_one_code_per_filter_in_order() {
    let broker = Broker::start(&[]);
    let mut client = broker.client("suback", true);
    let suback = client.subscribe(&[
        ("a", QoS::AtLeastOnce),
        ("a/#/b", QoS::AtMostOnce),
        ("+/c", QoS::ExactlyOnce),
        ("x+", QoS::AtMostOnce),
        ("#", QoS::AtMostOnce),
    ]);
    assert_eq!(suback.codes, vec![ReasonCode(1), ReasonCode(0x80), ReasonCode(2), ReasonCode(0x80), ReasonCode(0)]);
}

#[test]
fn denied_filters_get_a_failure_code() {
    let broker = Broker::start(&["--deny-subscribe", "test/nosubscribe", "--deny-subscribe", "secret/#"]);
    let mut client = broker.client("denied", true);
    let suback = client.subscribe(&[("test/nosubscribe", QoS::ExactlyOnce), ("secret/+", QoS::AtMostOnce), ("open", QoS::AtLeastOnce)]);
    assert_eq!(suback.codes, vec![ReasonCode(0x80), ReasonCode(0x80), ReasonCode(1)]);
    let mut publisher = broker.client("denied-pub", true);
    publisher.publish("test/nosubscribe", b"x", QoS::AtMostOnce, false, 0);
    client.assert_silent(Duration::from_millis(300));
}

#[test]
fn wildcards_and_dollar_topics() {
    let broker = Broker::start(&[]);
    let mut everything = broker.client("wild-all", true);
    everything.subscribe(&[("#", QoS::AtMostOnce)]);
    let mut parent = broker.client("wild-parent", true);
    parent.subscribe(&[("sport/#", QoS::AtMostOnce)]);
    let mut single = broker.client("wild-single", true);
    single.subscribe(&[("sport/+", QoS::AtMostOnce)]);
    let mut dollar = broker.client("wild-dollar", true);
    dollar.subscribe(&[("$app/+", QoS::AtMostOnce)]);

    let mut publisher = broker.client("wild-pub", true);
    publisher.publish("sport", b"1", QoS::AtMostOnce, false, 0);
    publisher.publish("sport/tennis", b"2", QoS::AtMostOnce, false, 0);
    publisher.publish("sport/tennis/player", b"3", QoS::AtMostOnce, false, 0);
    publisher.publish("$app/x", b"4", QoS::AtMostOnce, false, 0);
    publisher.publish("end", b"5", QoS::AtMostOnce, false, 0);

    let payloads =
        |client: &mut common::RawClient, count: usize| -> Vec<Bytes> { (0..count).map(|_| client.recv_publish().payload).collect() };
    // `#` never sees `$app/x` (nor the broker's own `$SYS`), but does see the end marker.
    assert_eq!(payloads(&mut everything, 4), vec!["1", "2", "3", "5"]);
    assert_eq!(payloads(&mut parent, 3), vec!["1", "2", "3"], "sport/# matches sport itself");
    assert_eq!(payloads(&mut single, 1), vec!["2"]);
    assert_eq!(payloads(&mut dollar, 1), vec!["4"]);
    for client in [&mut everything, &mut parent, &mut single, &mut dollar] {
        client.assert_silent(Duration::from_millis(200));
    }
}

#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client("overlap", true);
    sub.subscribe(&[("o/+", QoS::AtMostOnce), ("o/#", QoS::ExactlyOnce), ("o/x", QoS::AtLeastOnce)]);
    let mut publisher = broker.client("overlap-pub", true);
    publisher.publish("o/x", b"m", QoS::ExactlyOnce, false, 3);
    let got = sub.recv_publish();
    assert_eq!(got.qos, QoS::ExactlyOnce);
    sub.ack(&got);
    sub.assert_silent(Duration::from_millis(300));
}

#[test]
fn unsubscribe_stops_delivery() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client("unsub", true);
    sub.subscribe(&[("u/1", QoS::AtMostOnce)]);
    sub.send(&Packet::Unsubscribe(ringmq::protocol::Unsubscribe {
        packet_id: PacketId::new(9).expect("id"),
        properties: Default::default(),
        filters: vec![Bytes::from_static(b"u/1")],
    }));
    assert!(matches!(sub.recv(), Packet::UnsubAck(ack) if ack.packet_id.get() == 9));
    let mut publisher = broker.client("unsub-pub", true);
    publisher.publish("u/1", b"m", QoS::AtMostOnce, false, 0);
    sub.assert_silent(Duration::from_millis(300));
}

#[test]
fn publishing_to_a_wildcard_topic_closes_the_connection() {
    let broker = Broker::start(&[]);
    let mut publisher = broker.client("bad-topic", true);
    publisher.send(&publish_packet("a/+", b"m", QoS::AtMostOnce, 0, false));
    publisher.assert_closed();
    let mut publisher = broker.client("bad-topic-2", true);
    publisher.send(&publish_packet("a/#", b"m", QoS::AtLeastOnce, 1, false));
    publisher.assert_closed();
}

/// Acknowledgements sent together in one write (as a subscriber acks what one read brought)
/// each free their place in the window: with a window of 4, twelve messages arrive in three
/// windows, each opened by the previous four PUBACKs in one write; then a run naming a QoS
/// 2 message closes the connection, as that PUBACK alone would.
#[test]
fn pubacks_in_one_write_each_free_their_place_in_the_window() {
    let broker = Broker::start(&["--inflight-max", "4"]);
    let mut sub = broker.client("ack-run-sub", true);
    assert_eq!(sub.subscribe(&[("run/t", QoS::ExactlyOnce)]).codes, vec![ReasonCode(2)]);
    let mut publisher = broker.client("ack-run-pub", true);
    for n in 0..12u16 {
        publisher.publish("run/t", &n.to_be_bytes(), QoS::AtLeastOnce, false, n + 1);
    }
    let mut received = Vec::new();
    for _ in 0..3 {
        let window: Vec<Publish> = (0..4).map(|_| sub.recv_publish()).collect();
        sub.assert_silent(Duration::from_millis(200));
        let mut acks = Vec::new();
        for publish in &window {
            received.push(u16::from_be_bytes(publish.payload[..2].try_into().expect("2 bytes")));
            let id = publish.packet_id.expect("QoS 1").get().to_be_bytes();
            acks.extend_from_slice(&[0x40, 0x02, id[0], id[1]]);
        }
        sub.send_bytes(&acks);
    }
    assert_eq!(received, (0..12).collect::<Vec<_>>(), "each once, in order");
    sub.assert_silent(Duration::from_millis(200));
    // A QoS 1 and a QoS 2 message; PUBACKs for both in one write.
    publisher.publish("run/t", b"one", QoS::AtLeastOnce, false, 100);
    publisher.publish("run/t", b"two", QoS::ExactlyOnce, false, 101);
    let mut acks = Vec::new();
    for _ in 0..2 {
        let id = sub.recv_publish().packet_id.expect("QoS 1/2").get().to_be_bytes();
        acks.extend_from_slice(&[0x40, 0x02, id[0], id[1]]);
    }
    sub.send_bytes(&acks);
    sub.assert_closed();
}
