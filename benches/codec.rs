//! Codec cost per packet: decoding and encoding PUBLISH (64 B and 4 KiB payloads),
//! CONNECT and SUBSCRIBE, a block of 64 PUBACKs, for MQTT 3.1.1.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ringmq::protocol::{
    Ack, Connect, Packet, PacketId, ProtocolVersion, Publish, PublishHeader, QoS, Subscribe, SubscriptionOptions, decode, write_publish,
};

const V311: ProtocolVersion = ProtocolVersion::V311;

fn publish(payload_bytes: usize) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::from_static(b"sensors/building-7/floor-3/temperature"),
        packet_id: PacketId::new(42),
        properties: Default::default(),
        payload: Bytes::from(vec![0x5A; payload_bytes]),
    }
}

fn encoded(packet: &Packet) -> Bytes {
    let mut buf = BytesMut::new();
    packet.encode(V311, &mut buf);
    buf.freeze()
}

fn bench_decode(c: &mut Criterion, name: &str, wire: Bytes) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        // The copy into a fresh buffer is setup, not measured: the broker decodes in place.
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| black_box(decode(&mut buf, V311, u32::MAX).expect("valid").expect("complete")),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    for size in [64, 4096] {
        bench_decode(c, &format!("publish_{size}B"), encoded(&Packet::Publish(publish(size))));
    }
    let connect = Packet::Connect(Box::new(Connect {
        version: V311,
        clean_start: true,
        keep_alive_s: 60,
        properties: Default::default(),
        client_id: Bytes::from_static(b"device-0001-abcdef"),
        will: None,
        username: Some(Bytes::from_static(b"user")),
        password: Some(Bytes::from_static(b"password")),
    }));
    bench_decode(c, "connect", encoded(&connect));
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).expect("id"),
        properties: Default::default(),
        filters: vec![
            (Bytes::from_static(b"sensors/+/floor-3/#"), SubscriptionOptions::with_qos(QoS::AtLeastOnce)),
            (Bytes::from_static(b"alerts/#"), SubscriptionOptions::with_qos(QoS::ExactlyOnce)),
        ],
    });
    bench_decode(c, "subscribe_2_filters", encoded(&subscribe));

    // A QoS 1 fan-out's subscriber, or its publisher, reads acknowledgements in blocks:
    // 64 PUBACKs from one read, decoded in turn from the same buffer.
    let mut acks = BytesMut::new();
    for id in 1..=64 {
        Packet::PubAck(Ack::new(PacketId::new(id).expect("non-zero"))).encode(V311, &mut acks);
    }
    let acks = acks.freeze();
    let mut group = c.benchmark_group("decode_block");
    group.throughput(Throughput::Elements(64));
    group.bench_function("puback_x64_one_read", |b| {
        b.iter_batched(
            || BytesMut::from(&acks[..]),
            |mut buf| {
                while let Some(packet) = decode(&mut buf, V311, u32::MAX).expect("valid") {
                    black_box(packet);
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for size in [64, 4096] {
        let message = publish(size);
        let mut buf = BytesMut::with_capacity(1 << 20);
        group.bench_function(format!("publish_{size}B"), |b| {
            b.iter(|| {
                // What delivery does per subscriber: a header and the shared payload into
                // the connection's buffer (cleared so the buffer does not grow).
                buf.clear();
                let header =
                    PublishHeader { dup: false, qos: QoS::AtLeastOnce, retain: false, packet_id: PacketId::new(7), topic_alias: None };
                write_publish(&mut buf, V311, header, &message.topic, &message.properties, &message.payload);
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
