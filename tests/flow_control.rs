//! Flow control on default flags: a fast publisher is paused rather than its acknowledged
//! QoS 1/2 messages dropped; a stuck subscriber is disconnected so it cannot stall its
//! topic; retained messages are streamed, never shed. (See `src/shard/flow.rs`.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{Broker, on_cpu};
use ringmq::protocol::{Ack, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, decode};

/// Bound on any one of these tests' loads.
const LOAD_DEADLINE: Duration = Duration::from_secs(60);

fn encoded(packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    packet.encode(ProtocolVersion::V311, &mut out);
    out
}

/// Reads packets from `stream` into `on_packet` until it returns false or the deadline.
/// `buf`: bytes already read from it.
fn read_packets(mut stream: TcpStream, mut buf: BytesMut, mut on_packet: impl FnMut(Packet) -> bool) {
    let deadline = Instant::now() + LOAD_DEADLINE;
    let mut chunk = vec![0u8; 256 * 1024];
    stream.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    while Instant::now() < deadline {
        while let Some(packet) = decode(&mut buf, ProtocolVersion::V311, u32::MAX).expect("valid packets") {
            if !on_packet(packet) {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(count) => buf.extend_from_slice(&chunk[..count]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn an_acknowledged_qos1_message_to_an_online_subscriber_is_never_dropped_on_default_flags() {
    const MESSAGES: u64 = 40_000;
    const UNACKED_MAX: u64 = 20_000;
    let broker = Broker::start(&[]);
    let mut subscriber = broker.client("fast-sub", true);
    subscriber.subscribe(&[("flood", QoS::AtLeastOnce)]);
    let (subscriber_stream, already_read) = subscriber.into_stream();
    let mut subscriber_writer = subscriber_stream.try_clone().expect("clone");
    let received = std::thread::spawn(move || {
        let mut next = 0u64;
        read_packets(subscriber_stream, already_read, |packet| {
            let Packet::Publish(publish) = packet else { return true };
            let sequence = u64::from_be_bytes(publish.payload[..8].try_into().expect("8 bytes"));
            assert_eq!(sequence, next, "in order, none missing");
            next += 1;
            let id = publish.packet_id.expect("QoS 1");
            subscriber_writer.write_all(&encoded(&Packet::PubAck(Ack::new(id)))).expect("ack");
            next < MESSAGES
        });
        next
    });

    let publisher = broker.client("fast-pub", true);
    let (stream, _) = publisher.into_stream();
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let acked = acked.clone();
        let stream = stream.try_clone().expect("clone");
        std::thread::spawn(move || {
            read_packets(stream, BytesMut::new(), |packet| {
                if matches!(packet, Packet::PubAck(ref ack) if ack.reason == ReasonCode::SUCCESS) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                acked.load(Ordering::Relaxed) < MESSAGES
            })
        })
    };
    let mut writer = stream;
    let mut payload = vec![0u8; 1024];
    let deadline = Instant::now() + LOAD_DEADLINE;
    let mut batch = BytesMut::new();
    for sequence in 0..MESSAGES {
        while sequence - acked.load(Ordering::Relaxed) >= UNACKED_MAX && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        payload[..8].copy_from_slice(&sequence.to_be_bytes());
        let packet_id = PacketId::new((sequence % 65_535) as u16 + 1).expect("non-zero");
        let publish = Publish::acknowledged(Bytes::from_static(b"flood"), Bytes::copy_from_slice(&payload), QoS::AtLeastOnce, packet_id);
        Packet::Publish(publish).encode(ProtocolVersion::V311, &mut batch);
        if batch.len() >= 64 * 1024 || sequence + 1 == MESSAGES {
            writer.write_all(&batch).expect("publish");
            batch.clear();
        }
    }
    reader.join().expect("publisher reader");
    assert_eq!(acked.load(Ordering::Relaxed), MESSAGES, "every publish acknowledged");
    assert_eq!(received.join().expect("subscriber"), MESSAGES, "every acknowledged message delivered");
    let counters = broker
        .wait_for_counters("drops published", |c| c.get(0, "session_queue_drops").is_some() && c.get(1, "session_queue_drops").is_some());
    assert_eq!(counters.total("session_queue_drops"), 0);
}

#[test]
fn a_subscriber_whose_queue_stays_full_is_disconnected_and_its_publisher_goes_on() {
    let broker = Broker::start(&["--slow-subscriber-timeout-s", "2", "--queued-messages-max", "10"]);
    let mut stuck = broker.client_v5("stuck");
    stuck.subscribe(&[("slow", QoS::AtLeastOnce)]);
    // It never reads or acknowledges again.
    let mut publisher = broker.client("slow-pub", true);
    // The pause lands once the subscriber's shard has seen its queue fill, which under load
    // can be many messages later: publish until one round trip is held (or give up).
    let mut held = Duration::ZERO;
    for sequence in 0..20_000u32 {
        let started = Instant::now();
        publisher.publish("slow", b"m", QoS::AtLeastOnce, false, (sequence % 65_535) as u16 + 1);
        held = held.max(started.elapsed());
        if held >= Duration::from_millis(1500) {
            break;
        }
    }
    assert!(held >= Duration::from_millis(1500), "the publisher was paused while the subscriber was stuck: longest wait {held:?}");
    assert_eq!(stuck.disconnect_reason(), ReasonCode::QUOTA_EXCEEDED);
    broker.wait_for_counters("slow subscriber counted", |c| c.total("slow_subscriber_disconnects") == 1);
}

#[test]
fn every_matching_retained_message_arrives_whatever_the_bounds() {
    const RETAINED: u32 = 100_000;
    let broker = Broker::start(&["--steer", "cpu"]);
    let publisher = broker.client("retainer", true);
    let (mut stream, _) = publisher.into_stream();
    let mut batch = BytesMut::new();
    let payload = Bytes::from(vec![b'r'; 256]);
    for index in 0..RETAINED {
        let topic = Bytes::from(format!("ret/{index}"));
        // The last one is QoS 1, so its PUBACK says every earlier one is stored.
        let publish = if index + 1 == RETAINED {
            Publish::acknowledged(topic, payload.clone(), QoS::AtLeastOnce, PacketId::new(1).expect("non-zero"))
        } else {
            Publish::at_most_once(topic, payload.clone())
        }
        .retained();
        Packet::Publish(publish).encode(ProtocolVersion::V311, &mut batch);
        if batch.len() > 64 * 1024 || index + 1 == RETAINED {
            stream.write_all(&batch).expect("publish");
            batch.clear();
        }
    }
    // The last one is QoS 1: its PUBACK comes after every earlier one was stored.
    read_packets(stream.try_clone().expect("clone"), BytesMut::new(), |packet| !matches!(packet, Packet::PubAck(_)));
    // Each shard's replica applies them in publish order: once a client on each shard sees
    // the last one retained, every earlier one is there too.
    let last = format!("ret/{}", RETAINED - 1);
    for cpu in 0..2 {
        let mut probe = on_cpu(cpu, || broker.client(&format!("ret-probe-{cpu}"), true));
        let deadline = Instant::now() + LOAD_DEADLINE;
        loop {
            probe.subscribe(&[(last.as_str(), QoS::AtMostOnce)]);
            if matches!(probe.try_recv(Duration::from_millis(100)), Some(Packet::Publish(ref publish)) if publish.retain) {
                break;
            }
            assert!(Instant::now() < deadline, "the last retained message reaches shard {cpu}'s replica");
        }
    }

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut subscriber = broker.client(&format!("ret-sub-{qos:?}"), true);
        subscriber.subscribe(&[("ret/#", qos)]);
        let (stream, already_read) = subscriber.into_stream();
        let mut writer = stream.try_clone().expect("clone");
        let mut seen = std::collections::HashSet::new();
        read_packets(stream, already_read, |packet| {
            if let Packet::Publish(publish) = packet {
                assert!(publish.retain);
                if let Some(id) = publish.packet_id {
                    writer.write_all(&encoded(&Packet::PubAck(Ack::new(id)))).expect("ack");
                }
                seen.insert(publish.topic);
            }
            seen.len() < RETAINED as usize
        });
        assert_eq!(seen.len(), RETAINED as usize, "every retained message at {qos:?}");
    }
}
