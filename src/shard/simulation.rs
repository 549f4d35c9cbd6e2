//! A seeded simulation of several shards with the mesh replaced by FIFO queues that are
//! drained in a random order. Clients are scripted against `Link`s. Each seed is one
//! interleaving; a failure prints its seed so it can be replayed.

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
        let connect = Connect {
            version: ProtocolVersion::V311,
            clean_start,
            keep_alive_s: 0,
            properties: Properties::default(),
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            will: None,
            username: None,
            password: None,
        };
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

    fn close(&mut self, shard: usize, link: &Link) {
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!("close {:?} on shard {shard}", link.conn_id);
        }
        self.shards[shard].connection_ended(link, None, self.now);
        self.pump();
    }
}

fn read_packets(link: &Link) -> Vec<Packet> {
    let mut buf = BytesMut::from(&link.take_output()[..]);
    let mut packets = Vec::new();
    while let Some(packet) = decode(&mut buf, ProtocolVersion::V311, u32::MAX).expect("broker output decodes") {
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
    for packet in read_packets(link) {
        if let Packet::Publish(publish) = packet {
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
            if link.state() == LinkState::Open {
                sim.packet(shard, link, Packet::PubAck(Ack::new(publish.packet_id.expect("qos 1"))));
            }
        }
    }
}

/// Payloads from here on mark messages published before the subscriber subscribed.
const OLD_MESSAGES_FROM: u32 = 1_000_000;

fn run_takeover_scenario(seed: u64) {
    // Three shards, or four so that a moving session's hold is answered by two others.
    let shard_count = 3 + (seed % 2) as usize;
    let mut sim = Sim::new(shard_count, seed);
    let messages = 60u32;
    let publisher_shard = 0;
    let publisher = sim.connect(publisher_shard, "publisher", true);
    sim.settle();
    // Old messages on the subscription's topic, from every shard, before anyone subscribes:
    // they sit in the recent-publish logs, and no replay may hand them to the subscriber.
    for shard in 0..shard_count {
        let old_publisher = sim.connect(shard, &format!("old-{shard}"), true);
        sim.settle();
        for n in 0..3u32 {
            let payload = Bytes::copy_from_slice(&(OLD_MESSAGES_FROM + n).to_be_bytes());
            let publish = Publish::at_most_once(Bytes::from_static(b"t/x"), payload);
            sim.packet(shard, &old_publisher, Packet::Publish(publish));
        }
    }
    sim.settle();
    // The clock moves on: the old messages were taken well before the subscription.
    sim.now += std::time::Duration::from_millis(10);
    let mut sub_shard = sim.rng.below(shard_count);
    let mut sub = sim.connect(sub_shard, "subscriber", false);
    let mut all_links = vec![(sub_shard, sub.clone())];
    sim.settle();
    let subscribe = Subscribe {
        packet_id: PacketId::new(1).expect("id"),
        properties: Properties::default(),
        filters: vec![(Bytes::from_static(b"t/#"), SubscriptionOptions::with_qos(QoS::AtLeastOnce))],
    };
    sim.packet(sub_shard, &sub, Packet::Subscribe(subscribe));
    // Like a real client, publish only once the SUBACK is in: only then does every shard
    // route by the subscription.
    sim.settle();
    assert!(matches!(read_packets(&sub)[..], [Packet::ConnAck(_), Packet::SubAck(_)]), "seed {seed}: SUBACK after settling");
    let mut received = Received::default();
    let mut next_id = 1u16;
    for n in 0..messages {
        let packet_id = PacketId::new(next_id).expect("ids skip 0");
        let publish =
            Publish::acknowledged(Bytes::from_static(b"t/x"), Bytes::copy_from_slice(&n.to_be_bytes()), QoS::AtLeastOnce, packet_id);
        next_id = next_id.wrapping_add(1).max(1);
        sim.packet(publisher_shard, &publisher, Packet::Publish(publish));
        let _ = publisher.take_output();
        sim.random_steps(4);
        drain_subscriber(&mut sim, sub_shard, &sub, &mut received, seed);
        let choice = sim.rng.below(6);
        if std::env::var("SIM_TRACE").is_ok() && choice < 2 {
            eprintln!("after message {n}: {}", if choice == 0 { "reconnect" } else { "takeover" });
        }
        match choice {
            0 => {
                // Reconnect elsewhere after a clean break. Like a real client, wait for the
                // CONNACK before giving up on a connection (see README: an abandoned,
                // unsettled CONNECT can still take the session over).
                if sub.state() == LinkState::Connecting {
                    sim.settle();
                }
                drain_subscriber(&mut sim, sub_shard, &sub, &mut received, seed);
                sim.close(sub_shard, &sub);
                sim.random_steps(3);
                sub_shard = sim.rng.below(shard_count);
                sub = sim.connect(sub_shard, "subscriber", false);
                all_links.push((sub_shard, sub.clone()));
            }
            1 => {
                // Takeover: a new connection while the old one is still open.
                let old = (sub_shard, sub.clone());
                sub_shard = sim.rng.below(shard_count);
                sub = sim.connect(sub_shard, "subscriber", false);
                all_links.push((sub_shard, sub.clone()));
                sim.random_steps(6);
                drain_subscriber(&mut sim, old.0, &old.1, &mut received, seed);
            }
            _ => {}
        }
    }
    sim.settle();
    // Claims racing through home may be settled in another order than they were made:
    // whichever connection won, it must be the only one.
    for (shard, link) in &all_links {
        drain_subscriber(&mut sim, *shard, link, &mut received, seed);
    }
    let open: Vec<&(usize, Rc<Link>)> = all_links.iter().filter(|(_, l)| l.state() == LinkState::Open).collect();
    if std::env::var("SIM_TRACE").is_ok() {
        for (shard, link) in &all_links {
            eprintln!("link {:?} on {shard}: {:?}", link.conn_id, link.state());
        }
    }
    assert_eq!(open.len(), 1, "seed {seed}: exactly one connection owns the session");
    let (sub_shard, sub) = open[0].clone();
    // Each round of acknowledgements opens the window for the next batch.
    loop {
        let before = received.any.len() + received.fresh.len();
        drain_subscriber(&mut sim, sub_shard, &sub, &mut received, seed);
        sim.settle();
        if received.any.len() + received.fresh.len() == before && sub.buffered_bytes() == 0 {
            break;
        }
    }
    if std::env::var("SIM_TRACE").is_ok() {
        for shard in &sim.shards {
            for (_, client) in shard.clients.iter() {
                eprintln!(
                    "shard {:?}: client {:?} conn {:?} inflight {} queued {} skip {:?} seen {:?} link {:?}",
                    shard.id,
                    client.session.client_id(),
                    client.conn_id,
                    client.session.inflight_len(),
                    client.session.queued_len(),
                    client.skip_until,
                    shard.streams.seen,
                    client.link.as_ref().map(|l| l.state())
                );
            }
        }
    }
    let missing: Vec<u32> = (0..messages).filter(|n| !received.any.contains(n)).collect();
    assert!(missing.is_empty(), "seed {seed}: never delivered: {missing:?}");
    let gaps: u64 = sim.shards.iter().map(|s| s.counters.takeover_replay_gaps).sum();
    assert_eq!(gaps, 0, "seed {seed}");
}

#[test]
fn session_takeover_across_shards_loses_nothing_and_keeps_order() {
    let seeds = match std::env::var("SIM_SEED") {
        Ok(seed) => seed.parse().expect("SIM_SEED")..=seed.parse().expect("SIM_SEED"),
        Err(_) => 1..=500,
    };
    for seed in seeds {
        run_takeover_scenario(seed);
    }
}

#[test]
fn racing_connects_leave_exactly_one_open_link() {
    for seed in 1..=200 {
        let mut sim = Sim::new(3, seed);
        let links: Vec<(usize, Rc<Link>)> = (0..4)
            .map(|_| {
                let shard = sim.rng.below(3);
                let clean_start = sim.rng.below(2) == 0;
                let link = sim.connect(shard, "racer", clean_start);
                sim.random_steps(2);
                (shard, link)
            })
            .collect();
        sim.settle();
        // Home answers claims in arrival order, which need not be the order of the CONNECTs.
        let open = links.iter().filter(|(_, l)| l.state() == LinkState::Open).count();
        assert_eq!(open, 1, "seed {seed}: exactly one connection owns the client id");
        let clients: usize = sim.shards.iter().map(|s| s.clients.len()).sum();
        assert_eq!(clients, 1, "seed {seed}: one session for the racer and none left over");
        let registered: usize = sim.shards.iter().map(|s| s.registry.owners.len()).sum();
        assert_eq!(registered, 1, "seed {seed}: one registry entry");
    }
}

#[test]
fn publisher_is_throttled_while_a_peer_outbox_is_full() {
    let now = Instant::now();
    let mut limits = limits();
    limits.mesh_outbox_messages_max = 3;
    let auth = Arc::new(Authenticator::anonymous());
    let mut shard = Shard::new(ShardId(0), 2, limits, auth, now);
    shard.handle_batch(ShardId(1), vec![MeshMessage::InterestJoin { filter: Bytes::from_static(b"x"), request: None, since: None }], now);
    let mut cx = Context::from_waker(Waker::noop());
    let publisher = shard.new_link();
    assert_eq!(shard.poll_publish_allowed(&publisher, QoS::AtMostOnce, &mut cx), Poll::Ready(()));
    for _ in 0..3 {
        shard.route(
            Arc::new(crate::session::Message {
                topic: Bytes::from_static(b"x"),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
                publisher: None,
                expires_at: None,
            }),
            now,
        );
    }
    assert!(shard.congested());
    assert_eq!(shard.poll_publish_allowed(&publisher, QoS::AtMostOnce, &mut cx), Poll::Pending);
    assert!(publisher.is_waiting_to_publish(), "a held publisher does not count as idle");
    assert_eq!(shard.counters.publishes_held_for_mesh, 1);
    let Poll::Ready(batch) = shard.poll_outbox(ShardId(1), &mut cx) else { panic!("outbox has messages") };
    assert_eq!(batch.len(), 3, "drained as one batch");
    assert_eq!(shard.poll_publish_allowed(&publisher, QoS::AtMostOnce, &mut cx), Poll::Ready(()));
    assert!(!publisher.is_waiting_to_publish());
}

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
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).expect("id"),
        properties: Properties::default(),
        filters: vec![(Bytes::from_static(filter.as_bytes()), SubscriptionOptions::with_qos(QoS::AtMostOnce))],
    })
}

fn publish_packet(topic: &'static str, retain: bool) -> Packet {
    Packet::Publish(Publish { retain, ..Publish::at_most_once(Bytes::from_static(topic.as_bytes()), Bytes::from_static(b"p")) })
}

#[test]
fn publishes_travel_only_to_shards_with_a_matching_subscriber() {
    let mut sim = Sim::new(3, 1);
    let publisher = sim.connect(0, "publisher", true);
    let subscriber = sim.connect(1, "subscriber", true);
    sim.settle();
    sim.packet(1, &subscriber, subscribe_packet("a/#"));
    assert!(!read_packets(&subscriber).iter().any(|p| matches!(p, Packet::SubAck(_))), "SUBACK waits for the peers");
    sim.settle();
    assert!(read_packets(&subscriber).iter().any(|p| matches!(p, Packet::SubAck(_))));

    sim.packet(0, &publisher, publish_packet("b", false));
    assert_eq!(take_publishes(&mut sim), Vec::<usize>::new(), "nobody wants b");
    sim.packet(0, &publisher, publish_packet("a/1", false));
    assert_eq!(take_publishes(&mut sim), vec![1]);
    sim.packet(0, &publisher, publish_packet("b", true));
    assert_eq!(take_publishes(&mut sim), vec![1, 2], "retained messages reach every replica");

    // The last subscriber leaves: withdrawn at the next tick, not before.
    sim.packet(
        1,
        &subscriber,
        Packet::Unsubscribe(crate::protocol::Unsubscribe {
            packet_id: PacketId::new(2).expect("id"),
            properties: Properties::default(),
            filters: vec![Bytes::from_static(b"a/#")],
        }),
    );
    sim.settle();
    sim.packet(0, &publisher, publish_packet("a/1", false));
    assert_eq!(take_publishes(&mut sim), vec![1], "a withdrawal waits for the tick");
    sim.shards[1].tick(sim.now);
    sim.pump();
    sim.settle();
    sim.packet(0, &publisher, publish_packet("a/1", false));
    assert_eq!(take_publishes(&mut sim), Vec::<usize>::new());
}

#[test]
fn broadcast_routing_sends_every_publish_everywhere() {
    let mut sim = Sim::with_limits(3, 1, ShardLimits { routing: crate::shard::Routing::Broadcast, ..limits() });
    let publisher = sim.connect(0, "publisher", true);
    sim.settle();
    sim.packet(0, &publisher, publish_packet("nobody/listens", false));
    assert_eq!(take_publishes(&mut sim), vec![1, 2]);
}

#[test]
fn a_publish_taken_after_a_subscribe_reaches_it_before_the_peers_know() {
    let mut sim = Sim::new(3, 7);
    let publisher = sim.connect(0, "publisher", true);
    let subscriber = sim.connect(1, "subscriber", true);
    sim.settle();
    let _ = read_packets(&subscriber);
    // The SUBSCRIBE is processed on shard 1, then the PUBLISH on shard 0, before shard 0
    // has heard of the subscription (its announcement is still on the wire).
    sim.packet(1, &subscriber, subscribe_packet("late/#"));
    sim.packet(0, &publisher, publish_packet("late/1", false));
    assert_eq!(take_publishes(&mut sim), Vec::<usize>::new(), "routed by what shard 0 knew");
    sim.settle();
    let packets = read_packets(&subscriber);
    assert!(packets.iter().any(|p| matches!(p, Packet::SubAck(_))));
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Publish(publish) if &publish.topic[..] == b"late/1")),
        "sent on once the announcement arrived: {packets:?}"
    );
    assert_eq!(sim.shards[0].counters.late_matches_sent, 1);
    // Published before the subscription: not sent on.
    let other = sim.connect(2, "other", true);
    sim.settle();
    let _ = read_packets(&other);
    sim.packet(0, &publisher, publish_packet("early/1", false));
    sim.settle();
    sim.now += std::time::Duration::from_millis(10);
    sim.packet(2, &other, subscribe_packet("early/#"));
    sim.settle();
    assert!(!read_packets(&other).iter().any(|p| matches!(p, Packet::Publish(_))));
}

/// A QoS 1 subscriber with a tiny queue on one shard, a publisher on another that the IO
/// layer would hold while paused: over random interleavings the pause and resume cross the
/// mesh, nothing is dropped, everything arrives in order, and the publisher ends unpaused.
/// Returns how often the publisher was paused.
fn run_back_pressure_scenario(seed: u64) -> u64 {
    let mut limits = limits();
    limits.session = SessionLimits { inflight_max: 2, queued_messages_max: 4, queue_full_policy: crate::session::QueueFullPolicy::DropNew };
    let shard_count = 2 + (seed % 2) as usize;
    let mut sim = Sim::with_limits(shard_count, seed, limits);
    let (subscriber_shard, publisher_shard) = (0, 1 + (seed as usize) % (shard_count - 1));
    let subscriber = sim.connect(subscriber_shard, "slow", true);
    let publisher = sim.connect(publisher_shard, "fast", true);
    sim.settle();
    let filters = vec![(Bytes::from_static(b"bp/t"), SubscriptionOptions::with_qos(QoS::AtLeastOnce))];
    let subscribe = Subscribe { packet_id: PacketId::new(1).expect("id"), properties: Properties::default(), filters };
    sim.packet(subscriber_shard, &subscriber, Packet::Subscribe(subscribe));
    sim.settle();
    let _ = read_packets(&subscriber);
    let _ = read_packets(&publisher);
    let messages = 40u32;
    let (mut sent, mut next_expected) = (0u32, 0u32);
    let mut rounds = 0;
    while next_expected < messages {
        rounds += 1;
        assert!(rounds < 10_000, "seed {seed}: no progress (sent {sent}, received {next_expected})");
        // The IO layer hands over a PUBLISH only while its connection is not paused.
        if sent < messages && !publisher.is_paused() && sim.rng.below(2) == 0 {
            let id = PacketId::new(sent as u16 + 1).expect("id");
            let publish =
                Publish::acknowledged(Bytes::from_static(b"bp/t"), Bytes::copy_from_slice(&sent.to_be_bytes()), QoS::AtLeastOnce, id);
            sim.packet(publisher_shard, &publisher, Packet::Publish(publish));
            sent += 1;
        }
        sim.random_steps(3);
        // The subscriber reads now and then (slower than the publisher writes), acknowledging.
        if sim.rng.below(5) == 0 {
            for packet in read_packets(&subscriber) {
                if let Packet::Publish(publish) = packet {
                    let n = u32::from_be_bytes(publish.payload[..4].try_into().expect("4 bytes"));
                    assert_eq!(n, next_expected, "seed {seed}: in order, none lost");
                    next_expected += 1;
                    sim.packet(subscriber_shard, &subscriber, Packet::PubAck(Ack::new(publish.packet_id.expect("QoS 1"))));
                }
            }
        }
    }
    sim.settle();
    assert!(!publisher.is_paused(), "seed {seed}: the publisher ends unpaused");
    let drops: u64 = sim.shards.iter().map(|shard| shard.counters.session_queue_drops).sum();
    assert_eq!(drops, 0, "seed {seed}: nothing dropped");
    sim.shards.iter().map(|shard| shard.counters.publishers_paused).sum()
}

#[test]
fn back_pressure_across_shards_loses_nothing_and_always_resumes() {
    let seeds = match std::env::var("SIM_SEED") {
        Ok(seed) => seed.parse().expect("SIM_SEED")..=seed.parse().expect("SIM_SEED"),
        Err(_) => 1..=300,
    };
    let runs = seeds.clone().count() as u64;
    let paused_runs = seeds.filter(|&seed| run_back_pressure_scenario(seed) > 0).count() as u64;
    assert!(runs < 10 || paused_runs * 2 > runs, "most runs exercise the pause: {paused_runs} of {runs}");
}

/// A will and a shared group across shards, over random interleavings: the will of a
/// connection that ends without DISCONNECT reaches a subscriber on another shard exactly
/// once, and each message to a `$share` group reaches exactly one member, wherever the
/// members and the publisher are.
fn run_will_and_shared_scenario(seed: u64) {
    let shard_count = 3;
    let mut sim = Sim::new(shard_count, seed);
    let pick = |sim: &mut Sim| sim.rng.below(shard_count);
    let watcher_shard = pick(&mut sim);
    let watcher = sim.connect(watcher_shard, "watcher", true);
    let member_shards: Vec<usize> = (0..3).map(|_| pick(&mut sim)).collect();
    let members: Vec<Rc<Link>> =
        member_shards.iter().enumerate().map(|(i, &shard)| sim.connect(shard, &format!("member-{i}"), true)).collect();
    sim.settle();
    sim.packet(watcher_shard, &watcher, subscribe_packet("wills/#"));
    for (link, &shard) in members.iter().zip(&member_shards) {
        sim.packet(shard, link, subscribe_packet("$share/g/jobs/+"));
    }
    sim.settle();
    for link in members.iter().chain(std::iter::once(&watcher)) {
        let _ = read_packets(link);
    }

    // A client with a will, on any shard, that goes away without DISCONNECT.
    let mortal_shard = pick(&mut sim);
    let link = sim.shards[mortal_shard].new_link();
    let will = crate::protocol::Will {
        topic: Bytes::from_static(b"wills/mortal"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    };
    let connect = Connect { will: Some(will), ..Connect::v311(Bytes::from_static(b"mortal")) };
    sim.shards[mortal_shard].begin_connect(&link, Box::new(connect), sim.now);
    sim.pump();
    sim.random_steps(5);
    sim.settle();
    sim.close(mortal_shard, &link);

    // Messages to the group from a publisher on any shard, interleaved with the will.
    let publisher_shard = pick(&mut sim);
    let publisher = sim.connect(publisher_shard, "jobs-publisher", true);
    sim.settle();
    let messages = 30u32;
    for n in 0..messages {
        let publish = Publish::at_most_once(Bytes::from_static(b"jobs/x"), Bytes::copy_from_slice(&n.to_be_bytes()));
        sim.packet(publisher_shard, &publisher, Packet::Publish(publish));
        sim.random_steps(3);
    }
    sim.settle();

    let wills: Vec<Packet> = read_packets(&watcher).into_iter().filter(|packet| matches!(packet, Packet::Publish(_))).collect();
    assert!(
        matches!(&wills[..], [Packet::Publish(publish)] if &publish.payload[..] == b"gone"),
        "seed {seed}: the will arrives once across shards: {wills:?}"
    );
    let mut seen = vec![0u32; messages as usize];
    for link in &members {
        for packet in read_packets(link) {
            if let Packet::Publish(publish) = packet {
                let n = u32::from_be_bytes(publish.payload[..4].try_into().expect("4 bytes"));
                seen[n as usize] += 1;
            }
        }
    }
    assert!(seen.iter().all(|&count| count == 1), "seed {seed}: each message to exactly one member: {seen:?}");
}

#[test]
fn wills_and_shared_groups_across_shards_deliver_exactly_once() {
    let seeds = match std::env::var("SIM_SEED") {
        Ok(seed) => seed.parse().expect("SIM_SEED")..=seed.parse().expect("SIM_SEED"),
        Err(_) => 1..=200,
    };
    for seed in seeds {
        run_will_and_shared_scenario(seed);
    }
}
