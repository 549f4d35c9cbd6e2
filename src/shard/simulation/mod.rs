//! A seeded simulation of several shards with the mesh replaced by FIFO queues that are
//! drained in a random order. Clients are scripted against `Link`s. Each seed is one
//! interleaving; a failure prints its seed so it can be replayed.

mod flow;
mod lifecycle;
mod routing;
mod takeover;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::ShardLimits;
use super::link::{Link, LinkState};
use super::{MeshMessage, Shard, ShardId};
use crate::auth::Authenticator;
use crate::protocol::{Ack, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions, decode};
use crate::session::SessionLimits;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The seeds a scenario runs: `default`, or just `SIM_SEED` when it is set (to replay one).
fn seeds_or(default: std::ops::RangeInclusive<u64>) -> std::ops::RangeInclusive<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => {
            let seed: u64 = seed.parse().expect("SIM_SEED is a number");
            seed..=seed
        }
        Err(_) => default,
    }
}

struct Sim {
    shards: Vec<Shard>,
    wires: HashMap<(usize, usize), VecDeque<Vec<MeshMessage>>>,
    rng: Rng,
    now: Instant,
}

fn limits() -> ShardLimits {
    ShardLimits {
        session: SessionLimits {
            inflight_max: 8,
            queued_messages_max: 100_000,
            queue_full_policy: crate::session::QueueFullPolicy::DropNew,
        },
        outbound_buffer_bytes_max: usize::MAX,
        mesh_outbox_messages_max: 1 << 20,
        sys_interval: None,
        topic_alias_maximum: 0,
        ..ShardLimits::defaults()
    }
}

impl Sim {
    fn new(shard_count: usize, seed: u64) -> Sim {
        Self::with_limits(shard_count, seed, limits())
    }

    fn with_limits(shard_count: usize, seed: u64, limits: ShardLimits) -> Sim {
        let now = Instant::now();
        let auth = Arc::new(Authenticator::anonymous());
        let shards = (0..shard_count).map(|id| Shard::new(ShardId(id), shard_count, limits.clone(), auth.clone(), now)).collect();
        Sim { shards, wires: HashMap::new(), rng: Rng(seed | 1), now }
    }

    /// Moves every outbox into its wire.
    fn pump(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let count = self.shards.len();
        for from in 0..count {
            for to in (0..count).filter(|&to| to != from) {
                if let Poll::Ready(batch) = self.shards[from].poll_outbox(ShardId(to), &mut cx) {
                    self.wires.entry((from, to)).or_default().push_back(batch);
                }
            }
        }
    }

    /// Delivers one batch from a randomly chosen non-empty wire. False if all are empty.
    fn step(&mut self) -> bool {
        let mut busy: Vec<(usize, usize)> = self.wires.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect();
        if busy.is_empty() {
            return false;
        }
        busy.sort_unstable();
        let (from, to) = busy[self.rng.below(busy.len())];
        let batch = self.wires.get_mut(&(from, to)).and_then(|q| q.pop_front()).expect("non-empty wire");
        if std::env::var("SIM_TRACE").is_ok() {
            for m in &batch {
                match m {
                    MeshMessage::Publish { sequence, .. } => eprintln!("  {from}->{to} publish #{sequence}"),
                    other => eprintln!("  {from}->{to} {:?}", std::mem::discriminant(other)),
                }
            }
        }
        self.shards[to].handle_batch(ShardId(from), batch, self.now);
        self.pump();
        true
    }

    fn settle(&mut self) {
        while self.step() {}
    }

    /// Up to `max` deliveries, with now and then a timer tick on some shard (which
    /// withdraws interest nobody uses any more).
    fn random_steps(&mut self, max: usize) {
        for _ in 0..self.rng.below(max + 1) {
            if self.rng.below(4) == 0 {
                let shard = self.rng.below(self.shards.len());
                self.shards[shard].tick(self.now);
                self.pump();
            }
            if !self.step() {
                break;
            }
        }
    }

    fn connect(&mut self, shard: usize, client_id: &str, clean_start: bool) -> Rc<Link> {
        let link = self.shards[shard].new_link();
        let connect = Connect { clean_start, keep_alive_s: 0, ..Connect::v311(Bytes::copy_from_slice(client_id.as_bytes())) };
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!("connect {client_id} on shard {shard} as {:?}", link.conn_id);
        }
        self.shards[shard].begin_connect(&link, Box::new(connect), self.now);
        self.pump();
        link
    }

    fn packet(&mut self, shard: usize, link: &Link, packet: Packet) {
        self.shards[shard].handle_packet(link, packet, self.now).expect("valid packet");
        self.pump();
    }

    /// Acknowledges `ids` on `link`: one PUBACK packet at a time, or, as the IO layer hands
    /// over a read holding several, as one run of short PUBACKs; the seed decides.
    fn acknowledge(&mut self, shard: usize, link: &Link, ids: &[PacketId]) {
        if ids.len() > 1 && self.rng.below(2) == 0 {
            let run = puback_run(ids);
            self.shards[shard].handle_short_pubacks(link, &run, self.now).expect("valid acknowledgements");
            self.pump();
        } else {
            for &id in ids {
                self.packet(shard, link, Packet::PubAck(Ack::new(id)));
            }
        }
    }

    fn close(&mut self, shard: usize, link: &Link) {
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!("close {:?} on shard {shard}", link.conn_id);
        }
        self.shards[shard].connection_ended(link, None, self.now);
        self.pump();
    }
}

fn read_packets(link: &Link) -> Vec<Packet> {
    read_packets_as(link, ProtocolVersion::V311)
}

/// The PUBLISHes among what the broker wrote to `link` (3.1.1), in order.
fn read_publishes(link: &Link) -> Vec<Publish> {
    read_packets(link)
        .into_iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .collect()
}

fn read_packets_as(link: &Link, version: ProtocolVersion) -> Vec<Packet> {
    let mut buf = BytesMut::from(&link.take_output()[..]);
    let mut packets = Vec::new();
    while let Some(packet) = decode(&mut buf, version, u32::MAX).expect("broker output decodes") {
        packets.push(packet);
    }
    assert!(buf.is_empty(), "broker output ends on a packet boundary");
    packets
}

/// What a QoS 1 subscriber saw over all its connections. Within one connection, fresh
/// (non-DUP) deliveries come in publish order; over all of them each message arrives
/// fresh at most once (a repeat is a DUP resend after a takeover) and none is missing.
#[derive(Default)]
struct Received {
    fresh: std::collections::HashSet<u32>,
    any: std::collections::HashSet<u32>,
    last_fresh_on_link: HashMap<super::ConnId, u32>,
}

impl Received {
    fn take(&mut self, link: &Link, publish: &Publish, seed: u64) {
        let n = u32::from_be_bytes(publish.payload[..4].try_into().expect("4-byte payload"));
        assert!(n < OLD_MESSAGES_FROM, "seed {seed}: message {n} was published before the subscription");
        self.any.insert(n);
        if publish.dup {
            return;
        }
        assert!(self.fresh.insert(n), "seed {seed}: message {n} delivered fresh twice");
        if let Some(last) = self.last_fresh_on_link.insert(link.conn_id, n) {
            assert!(last < n, "seed {seed}: {n} after {last} on one connection");
        }
    }
}

/// Reads a subscriber link, acknowledging each PUBLISH while the link is still open.
fn drain_subscriber(sim: &mut Sim, shard: usize, link: &Rc<Link>, received: &mut Received, seed: u64) {
    let mut acknowledgements = Vec::new();
    for publish in read_publishes(link) {
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!(
                "shard {shard} conn {:?} got {:?} dup={} id={:?}",
                link.conn_id,
                &publish.payload[..],
                publish.dup,
                publish.packet_id
            );
        }
        received.take(link, &publish, seed);
        acknowledgements.push(publish.packet_id.expect("qos 1"));
    }
    if link.state() == LinkState::Open {
        sim.acknowledge(shard, link, &acknowledgements);
    }
}

/// Payloads from here on mark messages published before the subscriber subscribed.
const OLD_MESSAGES_FROM: u32 = 1_000_000;

/// Publishes still on the wires, per destination shard, removed from them.
fn take_publishes(sim: &mut Sim) -> Vec<usize> {
    let mut destinations = Vec::new();
    for ((_, to), queue) in sim.wires.iter_mut() {
        for batch in queue.iter_mut() {
            batch.retain(|message| {
                let publish = matches!(message, MeshMessage::Publish { .. });
                if publish {
                    destinations.push(*to);
                }
                !publish
            });
        }
    }
    destinations.sort_unstable();
    destinations
}

fn subscribe_packet(filter: &'static str) -> Packet {
    subscribe_packet_at(filter, QoS::AtMostOnce)
}

fn subscribe_packet_at(filter: &'static str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).expect("id"),
        properties: Default::default(),
        filters: vec![(Bytes::from_static(filter.as_bytes()), SubscriptionOptions::with_qos(qos))],
    })
}

fn unsubscribe_packet(filter: &'static str) -> Packet {
    Packet::Unsubscribe(crate::protocol::Unsubscribe {
        packet_id: PacketId::new(2).expect("id"),
        properties: Default::default(),
        filters: vec![Bytes::from_static(filter.as_bytes())],
    })
}

/// PUBACKs for `ids` as a client writes them in one go (short, 3.1.1 form).
fn puback_run(ids: &[PacketId]) -> BytesMut {
    let mut run = BytesMut::new();
    for &id in ids {
        Packet::PubAck(Ack::new(id)).encode(ProtocolVersion::V311, &mut run);
    }
    run
}

fn publish_packet(topic: &'static str, retain: bool) -> Packet {
    Packet::Publish(Publish { retain, ..Publish::at_most_once(Bytes::from_static(topic.as_bytes()), Bytes::from_static(b"p")) })
}
