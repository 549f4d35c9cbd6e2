//! One message fanned out by one shard to 1,000 subscribers: the time `Shard::handle_packet`
//! takes for the publisher's PUBLISH, from decode-free packet in to every subscriber's
//! bytes in its buffer. Reading the buffers and acknowledging is done outside the timing.
//! Layouts: 3.1.1 QoS 0 and QoS 1, 5.0 QoS 1, at 64 B and 1 KiB payloads.
//! `*_acks`: the other half of a QoS 1 fan-out, the 1,000 PUBACKs coming back, timed
//! instead: taken from their bytes as a connection's read loop takes them (a run of short
//! PUBACKs, `Shard::handle_short_pubacks`). `*_acks_decoded`: the same through the general
//! path, each decoded into a packet and given to `Shard::handle_packet`.
//! `*_window63`: both halves timed with every subscriber's window holding 63 messages (each
//! PUBACK answers the message from 63 rounds before), as under a steady load, so what the
//! windows' entries cost in cache shows.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use ringmq::auth::Authenticator;
use ringmq::protocol::{
    Ack, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions, decode, short_puback_run_bytes,
};
use ringmq::session::{QueueFullPolicy, SessionLimits};
use ringmq::shard::link::Link;
use ringmq::shard::{Shard, ShardId, ShardLimits};

const SUBSCRIBERS: usize = 1000;

struct Fanout {
    shard: Shard,
    publisher: Rc<Link>,
    subscribers: Vec<Rc<Link>>,
    qos: QoS,
    payload: Bytes,
    next_packet_id: u16,
    /// The id every subscriber's session gives this round's message: sessions number
    /// from 1 and each window holds one message at a time here, so all agree.
    delivered_packet_id: u16,
    version: ProtocolVersion,
    /// Rounds a subscriber's PUBACK lags behind its delivery (0: the same round).
    ack_lag: u16,
    /// Each PUBACK decoded into a packet first, rather than taken as a short run.
    decode_acks: bool,
    rounds: u64,
}

/// What a round times.
#[derive(Clone, Copy, PartialEq)]
enum Timed {
    Publish,
    Acks,
    Both,
}

impl Fanout {
    fn new(version: ProtocolVersion, qos: QoS, payload_bytes: usize, ack_lag: u16, decode_acks: bool) -> Fanout {
        let now = Instant::now();
        let limits = ShardLimits {
            session: SessionLimits { inflight_max: 64, queued_messages_max: 1000, queue_full_policy: QueueFullPolicy::DropNew },
            outbound_buffer_bytes_max: 1 << 30,
            sys_interval: None,
            ..ShardLimits::defaults()
        };
        let mut shard = Shard::new(ShardId(0), 1, limits, Arc::new(Authenticator::anonymous()), now);
        let mut connect = |id: String| {
            let link = shard.new_link();
            let connect = match version {
                ProtocolVersion::V311 => Connect::v311(Bytes::from(id)),
                ProtocolVersion::V5 => Connect::v5(Bytes::from(id)),
            };
            shard.begin_connect(&link, Box::new(connect), now);
            link
        };
        let publisher = connect("publisher".into());
        let subscribers: Vec<Rc<Link>> = (0..SUBSCRIBERS).map(|i| connect(format!("sub-{i}"))).collect();
        for link in &subscribers {
            let subscribe = Subscribe {
                packet_id: PacketId::new(1).expect("non-zero"),
                properties: Default::default(),
                filters: vec![(Bytes::from_static(b"fan/+"), SubscriptionOptions::with_qos(qos))],
            };
            shard.handle_packet(link, Packet::Subscribe(subscribe), now).expect("subscribe");
            drop(link.take_output());
        }
        Fanout {
            shard,
            publisher,
            subscribers,
            qos,
            payload: Bytes::from(vec![0x42; payload_bytes]),
            next_packet_id: 0,
            delivered_packet_id: 0,
            version,
            ack_lag,
            decode_acks,
            rounds: 0,
        }
    }

    /// One publish; then every subscriber reads it and acknowledges the message from
    /// `ack_lag` rounds before (once there is one); `timed` says which half is timed.
    fn round(&mut self, timed: Timed) -> Duration {
        self.rounds += 1;
        self.next_packet_id = self.next_packet_id % 60_000 + 1;
        let packet_id = (self.qos != QoS::AtMostOnce).then(|| PacketId::new(self.next_packet_id).expect("non-zero"));
        let publish = Publish { packet_id, ..Publish::at_most_once(Bytes::from_static(b"fan/out"), self.payload.clone()) };
        let publish = Publish { qos: self.qos, ..publish };
        let now = Instant::now();
        let started = Instant::now();
        self.shard.handle_packet(&self.publisher, Packet::Publish(publish), now).expect("publish");
        let elapsed = started.elapsed();
        drop(self.publisher.take_output());
        self.delivered_packet_id = if self.delivered_packet_id == u16::MAX { 1 } else { self.delivered_packet_id + 1 };
        // Ids run 1..=65,535 and wrap; the one `ack_lag` deliveries back.
        let acked = (u32::from(self.delivered_packet_id) - 1 + 65_535 - u32::from(self.ack_lag)) % 65_535 + 1;
        let ack = PacketId::new(acked as u16).expect("non-zero");
        let version = self.version;
        let mut ack_bytes = BytesMut::new();
        Packet::PubAck(Ack::new(ack)).encode(version, &mut ack_bytes);
        for link in &self.subscribers {
            let written = link.take_output();
            assert!(written.len() > self.payload.len(), "every subscriber got the message");
        }
        let mut acks_elapsed = Duration::ZERO;
        if self.qos == QoS::AtLeastOnce && self.rounds > u64::from(self.ack_lag) {
            let mut wires: Vec<BytesMut> = self.subscribers.iter().map(|_| ack_bytes.clone()).collect();
            let started = Instant::now();
            for (link, wire) in self.subscribers.iter().zip(&mut wires) {
                if self.decode_acks {
                    let packet = decode(wire, version, u32::MAX).expect("valid").expect("whole");
                    self.shard.handle_packet(link, packet, now).expect("puback");
                } else {
                    let run = short_puback_run_bytes(wire);
                    self.shard.handle_short_pubacks(link, &wire[..run], now).expect("pubacks");
                }
            }
            acks_elapsed = started.elapsed();
            for link in &self.subscribers {
                assert!(link.take_output().is_empty(), "the window was empty again, nothing queued");
            }
        }
        match timed {
            Timed::Publish => elapsed,
            Timed::Acks => acks_elapsed,
            Timed::Both => elapsed + acks_elapsed,
        }
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_1000");
    for (label, version, qos, payload_bytes) in [
        ("v311_qos0_64b", ProtocolVersion::V311, QoS::AtMostOnce, 64),
        ("v311_qos1_64b", ProtocolVersion::V311, QoS::AtLeastOnce, 64),
        ("v5_qos1_64b", ProtocolVersion::V5, QoS::AtLeastOnce, 64),
        ("v311_qos1_1k", ProtocolVersion::V311, QoS::AtLeastOnce, 1024),
    ] {
        let mut fanout = Fanout::new(version, qos, payload_bytes, 0, false);
        group.bench_function(label, |b| b.iter_custom(|iterations| (0..iterations).map(|_| fanout.round(Timed::Publish)).sum()));
        if qos == QoS::AtLeastOnce && payload_bytes == 64 {
            let acks = format!("{label}_acks");
            group.bench_function(acks, |b| b.iter_custom(|iterations| (0..iterations).map(|_| fanout.round(Timed::Acks)).sum()));
            let mut decoding = Fanout::new(version, qos, payload_bytes, 0, true);
            let acks_decoded = format!("{label}_acks_decoded");
            group.bench_function(acks_decoded, |b| b.iter_custom(|iterations| (0..iterations).map(|_| decoding.round(Timed::Acks)).sum()));
            // A window of 64 with 63 in it: publish and ack both land on full windows.
            let mut deep = Fanout::new(version, qos, payload_bytes, 63, false);
            let window = format!("{label}_window63");
            group.bench_function(window, |b| b.iter_custom(|iterations| (0..iterations).map(|_| deep.round(Timed::Both)).sum()));
        }
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
