//! Point to point on one shard: 100 publishers, each on its own topic (`bench/p2p/N`, as
//! loadgen's p2p scenario names them) with its own subscriber. A round is 32 QoS 0
//! PUBLISHes given to `Shard::handle_packet`, as one read of a publisher's connection
//! brings them, timed to every subscriber's bytes in its buffer.
//! `run_of_32_one_topic`: all 32 from one publisher, so the shard reuses its last match.
//! `32_to_distinct_topics`: each from another publisher, so every PUBLISH walks the trie.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use ringmq::auth::Authenticator;
use ringmq::protocol::{Connect, Packet, PacketId, Publish, QoS, Subscribe, SubscriptionOptions};
use ringmq::shard::link::Link;
use ringmq::shard::{Shard, ShardId, ShardLimits};

const PAIRS: usize = 100;
const RUN: usize = 32;

struct PointToPoint {
    shard: Shard,
    publishers: Vec<Rc<Link>>,
    subscribers: Vec<Rc<Link>>,
    topics: Vec<Bytes>,
    payload: Bytes,
    rounds: usize,
}

impl PointToPoint {
    fn new() -> PointToPoint {
        let now = Instant::now();
        let limits = ShardLimits { outbound_buffer_bytes_max: 1 << 30, sys_interval: None, ..ShardLimits::defaults() };
        let mut shard = Shard::new(ShardId(0), 1, limits, Arc::new(Authenticator::anonymous()), now);
        let mut connect = |id: String| {
            let link = shard.new_link();
            shard.begin_connect(&link, Box::new(Connect::v311(Bytes::from(id))), now);
            link
        };
        let publishers: Vec<Rc<Link>> = (0..PAIRS).map(|i| connect(format!("pub-{i}"))).collect();
        let subscribers: Vec<Rc<Link>> = (0..PAIRS).map(|i| connect(format!("sub-{i}"))).collect();
        let topics: Vec<Bytes> = (0..PAIRS).map(|i| Bytes::from(format!("bench/p2p/{i}"))).collect();
        for (link, topic) in subscribers.iter().zip(&topics) {
            let subscribe = Subscribe {
                packet_id: PacketId::new(1).expect("non-zero"),
                properties: Default::default(),
                filters: vec![(topic.clone(), SubscriptionOptions::with_qos(QoS::AtMostOnce))],
            };
            shard.handle_packet(link, Packet::Subscribe(subscribe), now).expect("subscribe");
        }
        for link in publishers.iter().chain(&subscribers) {
            drop(link.take_output());
        }
        PointToPoint { shard, publishers, subscribers, topics, payload: Bytes::from(vec![0x42; 64]), rounds: 0 }
    }

    fn round(&mut self, one_topic: bool) -> Duration {
        self.rounds += 1;
        let now = Instant::now();
        let pair = |n: usize| if one_topic { self.rounds % PAIRS } else { (self.rounds + n) % PAIRS };
        let publishes: Vec<(usize, Packet)> = (0..RUN)
            .map(|n| (pair(n), Packet::Publish(Publish::at_most_once(self.topics[pair(n)].clone(), self.payload.clone()))))
            .collect();
        let started = Instant::now();
        for (pair, publish) in publishes {
            self.shard.handle_packet(&self.publishers[pair], publish, now).expect("publish");
        }
        let elapsed = started.elapsed();
        let delivered: usize = self.subscribers.iter().map(|link| link.take_output().len()).sum();
        assert!(delivered > RUN * self.payload.len(), "every PUBLISH was delivered");
        elapsed
    }
}

fn p2p(c: &mut Criterion) {
    let mut group = c.benchmark_group("p2p_100");
    let mut pairs = PointToPoint::new();
    group.bench_function("run_of_32_one_topic", |b| b.iter_custom(|iterations| (0..iterations).map(|_| pairs.round(true)).sum()));
    group.bench_function("32_to_distinct_topics", |b| b.iter_custom(|iterations| (0..iterations).map(|_| pairs.round(false)).sum()));
    group.finish();
}

criterion_group!(benches, p2p);
criterion_main!(benches);
