//! Sessions across shards: a publisher and subscribers spread over both shards, a
//! persistent session that reconnects onto another shard and gets its queued QoS 1/2
//! messages, takeover of a live client id, and racing CONNECTs with one client id.

mod common;

use std::time::Duration;

use common::{Broker, RawClient, WAIT};
use ringmq::protocol::{Packet, ProtocolVersion, QoS};

#[test]
fn publisher_reaches_subscribers_on_both_shards() {
    let broker = Broker::start(&[]);
    let mut subscribers: Vec<RawClient> = (0..16)
        .map(|i| {
            let mut sub = broker.client(&format!("fan-sub-{i}"), true);
            sub.subscribe(&[("fan/out", QoS::AtLeastOnce)]);
            sub
        })
        .collect();
    let mut publisher = broker.client("fan-pub", true);
    for n in 0..20u32 {
        publisher.publish("fan/out", &n.to_be_bytes(), QoS::AtLeastOnce, false, (n + 1) as u16);
    }
    for sub in &mut subscribers {
        for n in 0..20u32 {
            let got = sub.recv_publish();
            assert_eq!(&got.payload[..], &n.to_be_bytes(), "in order, none lost");
            sub.ack(&got);
        }
    }
    broker.wait_for_counters("clients on both shards", |c| {
        c.get(0, "clients_connected").unwrap_or(0) > 0 && c.get(1, "clients_connected").unwrap_or(0) > 0
    });
}

/// Reconnects a persistent subscriber until its session has moved between shards at least
/// a few times; each round it must get exactly the QoS 1 and 2 messages queued meanwhile.
#[test]
fn persistent_session_moves_to_another_shard_with_its_queued_messages() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client("mover", false);
    sub.subscribe(&[("move/1", QoS::AtLeastOnce), ("move/2", QoS::ExactlyOnce)]);
    sub.disconnect();
    let mut publisher = broker.client("mover-pub", true);
    let mut id = 0u16;
    for round in 0..24u8 {
        for n in 0..3u8 {
            id += 1;
            publisher.publish("move/1", &[round, n], QoS::AtLeastOnce, false, id);
            id += 1;
            publisher.publish("move/2", &[round, n + 100], QoS::ExactlyOnce, false, id);
        }
        let mut sub = broker.raw();
        let connack = sub.connect("mover", false, 60, None);
        assert!(connack.session_present, "round {round}");
        for n in 0..3u8 {
            let one = sub.recv_publish();
            assert_eq!((&one.topic[..], &one.payload[..], one.qos), (&b"move/1"[..], &[round, n][..], QoS::AtLeastOnce));
            sub.ack(&one);
            let two = sub.recv_publish();
            assert_eq!((&two.topic[..], &two.payload[..], two.qos), (&b"move/2"[..], &[round, n + 100][..], QoS::ExactlyOnce));
            sub.ack(&two);
        }
        sub.assert_silent(Duration::from_millis(50));
        sub.disconnect();
    }
    let counters = broker.wait_for_counters("sessions moved between shards", |c| c.total("sessions_moved_in") >= 2);
    assert_eq!(counters.total("takeover_replay_gaps"), 0);
}

#[test]
fn takeover_closes_the_old_connection() {
    let broker = Broker::start(&[]);
    for round in 0..8 {
        let mut old = broker.client("taken", false);
        old.subscribe(&[("take/over", QoS::AtLeastOnce)]);
        let mut new = broker.raw();
        let connack = new.connect("taken", false, 60, None);
        assert_eq!(connack.code, 0);
        assert!(connack.session_present, "round {round}: the session moves to the new connection");
        old.assert_closed();
        let mut publisher = broker.client("taker-pub", true);
        publisher.publish("take/over", b"m", QoS::AtLeastOnce, false, 1);
        let got = new.recv_publish();
        assert_eq!(&got.payload[..], b"m");
        new.ack(&got);
        new.disconnect();
        publisher.disconnect();
    }
}

#[test]
fn concurrent_connects_with_one_client_id_leave_exactly_one_live() {
    let broker = Broker::start(&[]);
    let addr = broker.addr;
    for _round in 0..5 {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut client = RawClient::open(addr, ProtocolVersion::V311);
                    let connack = client.connect("racer", true, 60, None);
                    assert_eq!(connack.code, 0);
                    client
                })
            })
            .collect();
        let mut clients: Vec<RawClient> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
        // Wait for the evictions: all but one connection must be closed by the broker.
        let mut closed = vec![false; clients.len()];
        let deadline = std::time::Instant::now() + WAIT;
        while closed.iter().filter(|c| **c).count() < clients.len() - 1 && std::time::Instant::now() < deadline {
            for (client, closed) in clients.iter_mut().zip(closed.iter_mut()).filter(|(_, c)| !**c) {
                *closed = client.closed_within(Duration::from_millis(20), &mut Vec::new());
            }
        }
        assert_eq!(closed.iter().filter(|c| **c).count(), clients.len() - 1, "all but one evicted");
        let survivor = closed.iter().position(|c| !*c).expect("one survivor");
        clients[survivor].send(&Packet::PingReq);
        assert_eq!(clients[survivor].recv(), Packet::PingResp, "the survivor owns the client id");
        for client in clients {
            client.drop_abruptly();
        }
    }
}
