//! Bad input closes only the offending connection; slow consumers are bounded and counted;
//! SIGTERM stops the broker cleanly.

mod common;

use std::time::Duration;

use common::{Broker, WAIT};
use ringmq::protocol::{Packet, QoS};

/// A client that must keep working while others misbehave.
fn assert_bystander_works(broker: &Broker, name: &str) {
    let mut client = broker.client(name, true);
    client.subscribe(&[("alive", QoS::AtLeastOnce)]);
    client.publish("alive", b"yes", QoS::AtLeastOnce, false, 1);
    let got = client.recv_publish();
    assert_eq!(&got.payload[..], b"yes");
}

#[test]
fn protocol_violations_close_only_the_offender() {
    let broker = Broker::start(&[]);
    let violations: [(&str, &[u8]); 8] = [
        ("reserved bits in PINGREQ", &[0xC1, 0x00]),
        ("PUBLISH with QoS 3", &[0x36, 0x05, 0, 1, b'a', 0, 1]),
        ("SUBSCRIBE without a payload", &[0x82, 0x02, 0x00, 0x01]),
        ("SUBSCRIBE with flags 0000", &[0x80, 0x06, 0x00, 0x01, 0, 1, b'a', 0]),
        ("remaining length over four bytes", &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        ("reserved packet type 0", &[0x00, 0x00]),
        ("AUTH in 3.1.1", &[0xF0, 0x00]),
        ("CONNACK from a client", &[0x20, 0x02, 0x00, 0x00]),
    ];
    for (what, bytes) in violations {
        let mut client = broker.client(&format!("violator-{}", what.len()), true);
        client.send_bytes(bytes);
        let mut seen = Vec::new();
        assert!(client.closed_within(WAIT, &mut seen), "{what}: connection should close");
        assert!(seen.is_empty(), "{what}: 3.1.1 gets no answer, only a close: {seen:?}");
    }
    let mut oversize = broker.client("violator-oversize", true);
    // Declares a 2 MiB packet; the default limit is 1 MiB. Closed from the header alone.
    oversize.send_bytes(&[0x30, 0x80, 0x80, 0x80, 0x01]);
    oversize.assert_closed();
    assert_bystander_works(&broker, "bystander");
}

#[test]
fn garbage_connections_do_not_hurt_a_normal_client() {
    let broker = Broker::start(&["--connect-timeout-s", "2"]);
    // A small deterministic generator: every run sends the same 50 byte strings.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut clients = Vec::new();
    for i in 0..50 {
        let mut client = broker.raw();
        let len = (next() % 300) as usize + 1;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 5 == 0 {
            // Start some with a valid CONNECT so the garbage hits the packet loop.
            let mut connect = bytes::BytesMut::new();
            client.connect_packet(&format!("garbage-{i}"), true, 60, None).encode(client.version, &mut connect);
            connect.extend_from_slice(&bytes);
            bytes = connect.to_vec();
        }
        client.send_bytes(&bytes);
        clients.push(client);
    }
    assert_bystander_works(&broker, "after-garbage");
    // Once the connect timeout (2 s) passes, every connection that never completed a
    // CONNECT is closed: each is waited for.
    let unfinished_closed =
        clients.iter_mut().enumerate().filter(|(i, _)| i % 5 != 0).all(|(_, client)| client.closed_within(WAIT, &mut Vec::new()));
    assert!(unfinished_closed, "every connection without a valid CONNECT is closed");
    drop(clients);
    assert_bystander_works(&broker, "after-garbage-closed");
}

#[test]
fn slow_subscriber_qos0_is_dropped_and_counted_while_others_keep_up() {
    let broker = Broker::start(&["--outbound-buffer-max-bytes", "65536"]);
    // Subscribes, then never reads: its socket buffers fill and the broker must shed.
    let mut slow = broker.client("slow", true);
    slow.subscribe(&[("flood", QoS::AtMostOnce)]);
    let mut fast = broker.client("fast", true);
    fast.subscribe(&[("flood", QoS::AtMostOnce), ("flood/end", QoS::AtLeastOnce)]);
    let reader = std::thread::spawn(move || {
        let mut received = 0u64;
        loop {
            match fast.try_recv(WAIT) {
                Some(Packet::Publish(got)) if &got.payload[..] == b"end" => return received,
                Some(_) => received += 1,
                None => panic!("fast subscriber stalled behind the slow one"),
            }
        }
    });
    let mut publisher = broker.client("flooder", true);
    let payload = vec![0xAB; 4096];
    let count = 4000;
    for _ in 0..count {
        publisher.publish("flood", &payload, QoS::AtMostOnce, false, 0);
    }
    // QoS 1 is never shed for a full buffer, so the marker must reach the fast subscriber.
    publisher.publish("flood/end", b"end", QoS::AtLeastOnce, false, 1);
    let fast_received = reader.join().expect("fast reader");
    assert!(fast_received > 0);
    let counters = broker.wait_for_counters("QoS 0 drops for the slow subscriber", |c| c.total("qos0_dropped_slow_subscriber") > 0);
    // At most one drop per message per subscriber (the fast one may be shed too when the
    // machine is busy); never more.
    assert!(counters.total("qos0_dropped_slow_subscriber") <= 2 * count);
    assert_bystander_works(&broker, "after-flood");
}

/// The broker's open sockets, from `/proc`.
fn sockets_open(broker: &Broker) -> usize {
    let entries = std::fs::read_dir(format!("/proc/{}/fd", broker.pid())).expect("the broker's fds");
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn a_client_that_reads_nothing_is_still_closed_when_taken_over() {
    // A window as wide as the flood: all of it goes to the link at once, far more than the
    // kernel's send buffer takes however it is tuned.
    let broker = Broker::start(&["--inflight-max", "1024"]);
    let mut publisher = broker.client("flooder", true);
    // A tiny receive window, never read: the broker's writer for it ends up blocked in a
    // write that cannot finish.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&broker.addr.into()).unwrap();
    let mut stuck = common::RawClient::over(common::transport::ClientStream::Tcp(socket.into()), ringmq::protocol::ProtocolVersion::V5);
    assert_eq!(stuck.connect("stuck", true, 60, None).code, 0);
    stuck.subscribe(&[("flood", QoS::AtLeastOnce)]);
    let with_stuck = sockets_open(&broker);
    // QoS 1, which a full buffer never sheds: 32 MiB for it, where the kernel's send
    // buffer takes 4 MiB at most by default.
    let payload = vec![0xCD; 64 * 1024];
    for id in 1..=512 {
        publisher.publish("flood", &payload, QoS::AtLeastOnce, false, id);
    }

    // The same client id again: the old connection must go, socket and all, although its
    // DISCONNECT (0x8E) can never be written.
    let _taker = broker.client_v5("stuck");
    let deadline = std::time::Instant::now() + WAIT;
    let mut open = sockets_open(&broker);
    while open > with_stuck && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        open = sockets_open(&broker);
    }
    assert_eq!(open, with_stuck, "the taken-over socket is closed (one taker in, one stuck client out)");
    assert_bystander_works(&broker, "after-takeover");
    drop(stuck);
}

#[test]
fn session_queue_is_bounded_and_drops_are_counted() {
    let broker = Broker::start(&["--queued-messages-max", "10"]);
    let mut sub = broker.client("bounded", false);
    sub.subscribe(&[("bounded", QoS::AtLeastOnce)]);
    sub.disconnect();
    let mut publisher = broker.client("bounded-pub", true);
    for n in 0..25u16 {
        publisher.publish("bounded", &n.to_be_bytes(), QoS::AtLeastOnce, false, n + 1);
    }
    let mut sub = broker.raw();
    assert!(sub.connect("bounded", false, 60, None).session_present);
    for n in 0..10u16 {
        let got = sub.recv_publish();
        assert_eq!(&got.payload[..], &n.to_be_bytes(), "the oldest ten are kept, in order");
        sub.ack(&got);
    }
    sub.assert_silent(Duration::from_millis(300));
    broker.wait_for_counters("session queue drops", |c| c.total("session_queue_drops") == 15);
}

#[test]
fn sigterm_stops_the_broker_cleanly() {
    let mut broker = Broker::start(&[]);
    let mut client = broker.client("bye", true);
    let status = broker.terminate().expect("broker exits within the wait");
    assert!(status.success(), "exit status {status:?}");
    client.assert_closed();
    assert!(!broker.is_running());
}
