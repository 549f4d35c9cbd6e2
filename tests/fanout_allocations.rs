//! The fan-out path allocates per publish, never per subscriber: a counting allocator
//! watches one `Shard` deliver to 10 and to 200 subscribers (QoS 0 and QoS 1), after a
//! warm-up that lets every connection buffer reach its steady size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use ringmq::auth::Authenticator;
use ringmq::protocol::{Ack, Connect, Packet, PacketId, Publish, QoS, Subscribe, SubscriptionOptions};
use ringmq::session::SessionLimits;
use ringmq::shard::ShardLimits;
use ringmq::shard::link::Link;
use ringmq::shard::{Shard, ShardId};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<T>(work: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let result = work();
    COUNTING.with(|c| c.set(false));
    (result, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

fn connect(shard: &mut Shard, id: &str, now: Instant) -> Rc<Link> {
    let link = shard.new_link();
    let connect = Connect { keep_alive_s: 0, ..Connect::v311(Bytes::copy_from_slice(id.as_bytes())) };
    shard.begin_connect(&link, Box::new(connect), now);
    link
}

fn publish_packet(qos: QoS, id: u16) -> Packet {
    let (topic, payload) = (Bytes::from_static(b"fan/out"), Bytes::from_static(&[0x42; 64]));
    Packet::Publish(match qos {
        QoS::AtMostOnce => Publish::at_most_once(topic, payload),
        qos => Publish::acknowledged(topic, payload, qos, PacketId::new(id).expect("non-zero")),
    })
}

/// Allocations for one publish delivered to `subscribers` clients, in steady state.
fn allocations_per_publish(subscribers: usize, qos: QoS) -> u64 {
    let now = Instant::now();
    let limits = ShardLimits {
        session: SessionLimits {
            inflight_max: 64,
            queued_messages_max: 1000,
            queue_full_policy: ringmq::session::QueueFullPolicy::DropNew,
        },
        outbound_buffer_bytes_max: 1 << 30,
        sys_interval: None,
        topic_alias_maximum: 0,
        ..ShardLimits::defaults()
    };
    let mut shard = Shard::new(ShardId(0), 1, limits, Arc::new(Authenticator::anonymous()), now);
    let publisher = connect(&mut shard, "publisher", now);
    let links: Vec<Rc<Link>> = (0..subscribers).map(|i| connect(&mut shard, &format!("sub-{i}"), now)).collect();
    for link in &links {
        let subscribe = Subscribe {
            packet_id: PacketId::new(1).expect("id"),
            properties: Default::default(),
            filters: vec![(Bytes::from_static(b"fan/+"), SubscriptionOptions::with_qos(qos))],
        };
        shard.handle_packet(link, Packet::Subscribe(subscribe), now).expect("subscribe");
    }
    let mut packet_id = 0u16;
    let mut round = |shard: &mut Shard| {
        packet_id = packet_id % 1000 + 1;
        let packet = publish_packet(qos, packet_id);
        let ((), allocations) = counted(|| shard.handle_packet(&publisher, packet, now).expect("publish"));
        // The subscribers read and acknowledge, outside the count.
        drop(publisher.take_output());
        for link in &links {
            let written = link.take_output();
            assert!(written.len() > 64, "every subscriber was written this round's PUBLISH");
            drop(written);
            if qos == QoS::AtLeastOnce {
                // Every subscriber's window holds this one message, with id 1 upwards.
                let _ = shard.handle_packet(link, Packet::PubAck(Ack::new(PacketId::new(packet_id).expect("id"))), now);
            }
        }
        allocations
    };
    for _ in 0..50 {
        round(&mut shard);
    }
    (0..20).map(|_| round(&mut shard)).max().expect("rounds")
}

#[test]
fn fanout_allocations_do_not_grow_with_subscribers() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let few = allocations_per_publish(10, qos);
        let many = allocations_per_publish(200, qos);
        println!("{qos:?}: {few} allocations per publish to 10 subscribers, {many} to 200");
        assert_eq!(few, many, "{qos:?}: per-subscriber allocation on the fan-out path");
        // One: the message shared by every subscriber (`Arc<Message>`). A second was once
        // an empty property set boxed on the way in.
        assert!(many <= 1, "{qos:?}: {many} allocations per publish");
    }
}
