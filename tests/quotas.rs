//! Bounds a client cannot grow at will: subscriptions per client and the retained store,
//! each refused with its reason code (5.0 0x97 Quota exceeded) and counted.

mod common;

use bytes::Bytes;
use common::Broker;
use ringmq::protocol::{Packet, PacketId, Publish, QoS, ReasonCode};

#[test]
fn subscriptions_past_the_per_client_bound_are_refused() {
    let broker = Broker::start(&["--subscriptions-per-client-max", "3"]);
    let mut v5 = broker.client_v5("many-filters");
    let suback = v5.subscribe(&[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce), ("c", QoS::AtMostOnce), ("d", QoS::AtMostOnce)]);
    assert_eq!(suback.codes, vec![ReasonCode(0), ReasonCode(0), ReasonCode(0), ReasonCode::QUOTA_EXCEEDED]);
    // Re-subscribing to a filter it holds is a replacement, not a new one.
    assert_eq!(v5.subscribe(&[("a", QoS::AtLeastOnce)]).codes, vec![ReasonCode(1)]);
    let mut v311 = broker.client("many-filters-311", true);
    let suback = v311.subscribe(&[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce), ("c", QoS::AtMostOnce), ("d", QoS::AtMostOnce)]);
    assert_eq!(suback.codes.last(), Some(&ReasonCode::UNSPECIFIED_ERROR));
    broker.wait_for_counters("refusals counted", |c| c.total("subscriptions_refused_quota") == 2);
}

#[test]
fn a_retained_message_for_a_new_topic_past_the_store_bound_is_refused() {
    let broker = Broker::start(&["--retained-messages-max", "2"]);
    let mut publisher = broker.client_v5("retainer");
    for (id, topic) in [(1u16, "r/1"), (2, "r/2")] {
        publisher.publish(topic, b"kept", QoS::AtLeastOnce, true, id);
    }
    let publish = |topic: &'static str, payload: &'static [u8], id: u16| {
        Packet::Publish(
            Publish::acknowledged(
                Bytes::from_static(topic.as_bytes()),
                Bytes::from_static(payload),
                QoS::AtLeastOnce,
                PacketId::new(id).expect("id"),
            )
            .retained(),
        )
    };
    publisher.send(&publish("r/3", b"refused", 3));
    let Packet::PubAck(ack) = publisher.recv() else { panic!("expected PUBACK") };
    assert_eq!(ack.reason, ReasonCode::QUOTA_EXCEEDED);
    // Replacing a stored topic's message is still fine.
    publisher.send(&publish("r/1", b"replaced", 4));
    let Packet::PubAck(ack) = publisher.recv() else { panic!("expected PUBACK") };
    assert_eq!(ack.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    let mut reader = broker.client("reader", true);
    reader.subscribe(&[("r/#", QoS::AtMostOnce)]);
    let mut got: Vec<(Bytes, Bytes)> = (0..2).map(|_| reader.recv_publish()).map(|p| (p.topic, p.payload)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![(Bytes::from_static(b"r/1"), Bytes::from_static(b"replaced")), (Bytes::from_static(b"r/2"), Bytes::from_static(b"kept"))]
    );
    reader.assert_silent(std::time::Duration::from_millis(300));
}

#[test]
fn sockets_that_owe_their_connect_are_bounded_per_shard() {
    use std::io::Read;
    let broker = Broker::start(&["--cores", "1", "--half-open-connections-max", "4"]);
    // Ten sockets that never send CONNECT: four are held (until the connect timeout), the
    // rest closed at once.
    let mut idle: Vec<std::net::TcpStream> = (0..10).map(|_| std::net::TcpStream::connect(broker.addr).expect("connect")).collect();
    let mut closed = 0;
    for socket in &mut idle {
        socket.set_read_timeout(Some(std::time::Duration::from_millis(500))).expect("timeout");
        let mut byte = [0u8; 1];
        match socket.read(&mut byte) {
            Ok(0) => closed += 1,
            Err(error) if !matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, 6, "all past the bound closed, none below it");
    drop(idle);
    // Once they are gone, CONNECTs go through again.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let mut client = broker.raw();
        let packet = client.connect_packet("after-slowloris", true, 60, None);
        client.send(&packet);
        if let Some(Packet::ConnAck(connack)) = client.try_recv(std::time::Duration::from_millis(300)) {
            assert_eq!(connack.code, 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "served again once the idle sockets left");
    }
    broker.wait_for_counters("refusals counted", |c| c.total("half_open_connections_refused") >= 6);
}
