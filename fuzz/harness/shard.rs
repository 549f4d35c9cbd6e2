//! shard: clients drive two `Shard`s (sans-IO, the mesh as in-process queues delivered in
//! an order the input picks) with sequences the input chooses: CONNECTs (3.1.1 and 5.0,
//! clean or not, client ids that collide so takeovers happen, wills, session expiry),
//! SUBSCRIBE/UNSUBSCRIBE (plain, wildcard, shared, invalid), PUBLISH at every QoS (retained
//! too, to the broker's own topics too), acknowledgements in order and with wrong ids,
//! DISCONNECT, abrupt closes, arbitrary packets decoded from the input, and clock jumps.
//!
//! Checked: nothing panics; everything the broker writes decodes for the client's version;
//! a new QoS 1/2 PUBLISH never reuses a packet id its session has not had acknowledged, and
//! no session has more unacknowledged than its window; at the end, once every client id has
//! reconnected with Clean Start and left and the clock has passed every expiry, no session,
//! connection or mesh message is left on either shard.
//! Run by libFuzzer (`fuzz/fuzz_targets/shard.rs`) and, bounded, by `tests/fuzz_bounded.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::auth::Authenticator;
use ringmq::protocol::{
    Ack, Connect, Disconnect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, Subscribe,
    SubscriptionOptions, Unsubscribe, Will, decode,
};
use ringmq::session::{QueueFullPolicy, SessionLimits};
use ringmq::shard::link::Link;
use ringmq::shard::{MeshMessage, Shard, ShardId, ShardLimits};

const SHARDS: usize = 2;
const INFLIGHT_MAX: u16 = 4;
const CLIENT_IDS: [&str; 3] = ["a", "b", ""];
/// Mostly valid filters (plain, wildcard, shared), now and then an invalid one.
const FILTERS: [&str; 12] = ["t", "t/+", "#", "t/x", "$share/g/t", "$share/g/#", "+/+", "t", "t/+", "$SYS/#", "t/#/x", "$share/g"];
/// Mostly topics someone subscribes to; now and then the broker's own or an invalid one.
const TOPICS: [&str; 8] = ["t", "t/x", "u", "t", "t/x", "t", "$SYS/x", "t/+"];
const SESSION_EXPIRY_MAX_S: u32 = 3;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn take(&mut self, count: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(count.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

/// One connection as its client sees it.
struct Connection {
    shard: usize,
    link: Rc<Link>,
    version: ProtocolVersion,
    /// Whose session this connection serves (the client id; a unique name for a generated one).
    session: String,
    /// Packet ids of QoS 1/2 messages sent on this connection and not acknowledged on it.
    /// Per connection, not per session: once the broker closes a connection it writes no
    /// more to it, so this stays exact however late its bytes are read.
    unacknowledged: HashSet<u16>,
    /// Bytes written by the broker, not yet a whole packet.
    unread: BytesMut,
    /// What the client still owes an answer to: (packet id, what to send).
    owed: VecDeque<(PacketId, Owed)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
/// The answer a client owes: PUBACK (QoS 1), PUBREC (QoS 2), PUBCOMP (after PUBREL).
enum Owed {
    Acknowledged,
    Received,
    Completed,
}

struct World {
    shards: Vec<Shard>,
    /// Batches on their way from one shard to another, per (from, to).
    wires: HashMap<(usize, usize), VecDeque<Vec<MeshMessage>>>,
    now: Instant,
    /// Every connection ever opened.
    connections: Vec<Connection>,
    generated: usize,
}

fn limits() -> ShardLimits {
    ShardLimits {
        session: SessionLimits { inflight_max: INFLIGHT_MAX, queued_messages_max: 8, queue_full_policy: QueueFullPolicy::DropOldest },
        retained_messages_max: 4,
        subscriptions_per_client_max: 4,
        receive_maximum: 4,
        topic_alias_maximum: 2,
        outbound_buffer_bytes_max: 4096,
        mesh_outbox_messages_max: 64,
        sys_interval: None,
        slow_subscriber_timeout: Some(Duration::from_secs(5)),
        ..ShardLimits::defaults()
    }
}

impl World {
    fn new() -> World {
        let now = Instant::now();
        let auth = Arc::new(Authenticator::anonymous());
        let shards = (0..SHARDS).map(|id| Shard::new(ShardId(id), SHARDS, limits(), auth.clone(), now)).collect();
        World { shards, wires: HashMap::new(), now, connections: Vec::new(), generated: 0 }
    }

    /// Moves every outbox onto its wire.
    fn pump(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        for from in 0..SHARDS {
            for to in (0..SHARDS).filter(|&to| to != from) {
                if let Poll::Ready(batch) = self.shards[from].poll_outbox(ShardId(to), &mut cx) {
                    self.wires.entry((from, to)).or_default().push_back(batch);
                }
            }
        }
    }

    /// Delivers one batch from the `pick`-th busy wire; false if none is busy.
    fn deliver(&mut self, pick: usize) -> bool {
        let mut busy: Vec<(usize, usize)> = self.wires.iter().filter(|(_, queue)| !queue.is_empty()).map(|(key, _)| *key).collect();
        if busy.is_empty() {
            return false;
        }
        busy.sort_unstable();
        let (from, to) = busy[pick % busy.len()];
        let batch = self.wires.get_mut(&(from, to)).and_then(VecDeque::pop_front).expect("a busy wire");
        self.shards[to].handle_batch(ShardId(from), batch, self.now);
        self.pump();
        true
    }

    fn settle(&mut self) {
        while self.deliver(0) {}
    }

    fn connect(&mut self, shard: usize, version: ProtocolVersion, id: &str, clean_start: bool, will: bool, expiry_s: u32) {
        let link = self.shards[shard].new_link();
        let session = if id.is_empty() {
            self.generated += 1;
            format!("generated-{}", self.generated)
        } else {
            id.to_string()
        };
        let mut connect = Connect { clean_start, ..Connect::new(version, Bytes::copy_from_slice(id.as_bytes())) };
        if version.is_v5() {
            connect.properties.session_expiry_interval = Some(if id.is_empty() { 0 } else { expiry_s });
            connect.properties.receive_maximum = Some(INFLIGHT_MAX);
            connect.properties.topic_alias_maximum = Some(2);
        }
        if will {
            let properties =
                if version.is_v5() { Properties { will_delay_interval: Some(1), ..Properties::default() } } else { Properties::default() };
            connect.will = Some(Will {
                topic: Bytes::from_static(b"t/will"),
                payload: Bytes::from_static(b"w"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties,
            });
        }
        self.shards[shard].begin_connect(&link, Box::new(connect), self.now);
        self.pump();
        self.connections.push(Connection {
            shard,
            link,
            version,
            session,
            unacknowledged: HashSet::new(),
            unread: BytesMut::new(),
            owed: VecDeque::new(),
        });
    }

    /// The connection the client plays next, among those still open.
    fn open_connection(&self, pick: u8) -> Option<usize> {
        let open: Vec<usize> = (0..self.connections.len()).filter(|&index| !self.connections[index].link.is_closing()).collect();
        (!open.is_empty()).then(|| open[usize::from(pick) % open.len()])
    }

    fn send(&mut self, index: usize, packet: Packet) {
        let connection = &self.connections[index];
        let shard = connection.shard;
        let link = connection.link.clone();
        if let Err(reason) = self.shards[shard].handle_packet(&link, packet, self.now) {
            self.shards[shard].connection_ended(&link, Some(&reason), self.now);
        }
        self.pump();
    }

    fn close(&mut self, index: usize) {
        let connection = &self.connections[index];
        let (shard, link) = (connection.shard, connection.link.clone());
        self.shards[shard].connection_ended(&link, None, self.now);
        self.pump();
    }

    fn tick(&mut self, seconds: u64) {
        self.now += Duration::from_secs(seconds);
        for shard in &mut self.shards {
            shard.tick(self.now);
        }
        self.pump();
    }

    /// Reads what every connection was sent, and checks it.
    fn read_all(&mut self) {
        for connection in &mut self.connections {
            connection.unread.extend_from_slice(&connection.link.take_output());
            loop {
                let packet = match decode(&mut connection.unread, connection.version, u32::MAX) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(error) => panic!("the broker wrote bytes its client cannot decode: {error:?}"),
                };
                let unacknowledged = &mut connection.unacknowledged;
                match packet {
                    Packet::Publish(publish) if publish.qos != QoS::AtMostOnce => {
                        let id = publish.packet_id.expect("a QoS 1/2 PUBLISH carries an id");
                        let fresh = unacknowledged.insert(id.get());
                        assert!(fresh || publish.dup, "packet id {} reused while unacknowledged", id.get());
                        assert!(unacknowledged.len() <= usize::from(INFLIGHT_MAX), "more in flight than the window: {unacknowledged:?}");
                        let owed = if publish.qos == QoS::AtLeastOnce { Owed::Acknowledged } else { Owed::Received };
                        connection.owed.push_back((id, owed));
                    }
                    Packet::PubRel(ack) => connection.owed.push_back((ack.packet_id, Owed::Completed)),
                    _ => {}
                }
            }
        }
    }

    /// The client answers the oldest message it owes an answer to.
    fn answer(&mut self, index: usize) {
        let Some((id, owed)) = self.connections[index].owed.pop_front() else { return };
        let packet = match owed {
            Owed::Acknowledged => Packet::PubAck(Ack::new(id)),
            Owed::Received => Packet::PubRec(Ack::new(id)),
            Owed::Completed => Packet::PubComp(Ack::new(id)),
        };
        if owed != Owed::Received {
            self.connections[index].unacknowledged.remove(&id.get());
        }
        self.send(index, packet);
    }
}

fn qos(bits: u8) -> QoS {
    match bits % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn packet_id(byte: u8) -> PacketId {
    PacketId::new(u16::from(byte % 4) + 1).expect("non-zero")
}

pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let mut world = World::new();
    let mut steps = 0;
    let trace = std::env::var_os("SHARD_FUZZ_TRACE").is_some();
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 400 {
            break;
        }
        let arg = input.byte().unwrap_or(0);
        match op % 32 {
            0..=3 => {
                let version = if arg & 1 == 0 { ProtocolVersion::V311 } else { ProtocolVersion::V5 };
                let id = CLIENT_IDS[usize::from(arg >> 1) % CLIENT_IDS.len()];
                // 3.1.1 refuses an empty id without Clean Start: let some through anyway.
                let clean_start = arg & 8 != 0 || (id.is_empty() && arg & 16 == 0);
                let expiry_s = u32::from(arg >> 5) % (SESSION_EXPIRY_MAX_S + 1);
                world.connect(usize::from(op / 32) % SHARDS, version, id, clean_start, arg & 16 != 0, expiry_s);
            }
            4..=8 => {
                let Some(index) = world.open_connection(arg) else { continue };
                let options_byte = input.byte().unwrap_or(0);
                let filter = FILTERS[usize::from(options_byte) % FILTERS.len()];
                let options = SubscriptionOptions {
                    qos: qos(options_byte >> 4),
                    no_local: world.connections[index].version.is_v5() && options_byte & 0x40 != 0,
                    retain_as_published: options_byte & 0x80 != 0,
                    retain_handling: if options_byte & 0x20 != 0 {
                        RetainHandling::SendIfNewSubscription
                    } else {
                        RetainHandling::SendOnSubscribe
                    },
                };
                let subscribe = Subscribe {
                    packet_id: packet_id(arg),
                    properties: Default::default(),
                    filters: vec![(Bytes::from_static(filter.as_bytes()), options)],
                };
                world.send(index, Packet::Subscribe(subscribe));
            }
            9 => {
                let Some(index) = world.open_connection(arg) else { continue };
                let filter = FILTERS[usize::from(input.byte().unwrap_or(0)) % FILTERS.len()];
                let unsubscribe = Unsubscribe {
                    packet_id: packet_id(arg),
                    properties: Default::default(),
                    filters: vec![Bytes::from_static(filter.as_bytes())],
                };
                world.send(index, Packet::Unsubscribe(unsubscribe));
            }
            10..=15 => {
                let Some(index) = world.open_connection(arg) else { continue };
                let shape = input.byte().unwrap_or(0);
                let topic = Bytes::from_static(TOPICS[usize::from(shape) % TOPICS.len()].as_bytes());
                let payload = Bytes::copy_from_slice(input.take(usize::from(shape >> 5)));
                let publish = match qos(shape >> 3) {
                    QoS::AtMostOnce => Publish::at_most_once(topic, payload),
                    qos => Publish::acknowledged(topic, payload, qos, packet_id(arg >> 2)),
                };
                world.send(index, Packet::Publish(Publish { retain: shape & 4 != 0, ..publish }));
            }
            16..=19 => {
                if let Some(index) = world.open_connection(arg) {
                    world.answer(index);
                }
            }
            20 => {
                // An acknowledgement with an id the input picks: unknown, of the wrong
                // kind, or by chance the one owed (then it counts as that answer).
                let Some(index) = world.open_connection(arg) else { continue };
                let id = packet_id(input.byte().unwrap_or(0));
                let (packet, answers) = match arg % 4 {
                    0 => (Packet::PubAck(Ack::new(id)), Some(Owed::Acknowledged)),
                    1 => (Packet::PubRec(Ack::new(id)), Some(Owed::Received)),
                    2 => (Packet::PubRel(Ack::new(id)), None),
                    _ => (Packet::PubComp(Ack::new(id)), Some(Owed::Completed)),
                };
                let connection = &mut world.connections[index];
                if let Some(at) = connection.owed.iter().position(|entry| Some(entry.1) == answers && entry.0 == id) {
                    connection.owed.remove(at);
                    if answers != Some(Owed::Received) {
                        connection.unacknowledged.remove(&id.get());
                    }
                }
                world.send(index, packet);
            }
            21 => {
                if let Some(index) = world.open_connection(arg) {
                    world.send(index, Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)));
                }
            }
            22 => {
                if let Some(index) = world.open_connection(arg) {
                    world.close(index);
                }
            }
            23 => {
                // Whatever packet the input spells, for this connection's version.
                let Some(index) = world.open_connection(arg) else { continue };
                let length = usize::from(input.byte().unwrap_or(0) % 48);
                let mut bytes = BytesMut::from(input.take(length));
                if let Ok(Some(packet)) = decode(&mut bytes, world.connections[index].version, 1024) {
                    world.send(index, packet);
                }
            }
            24..=27 => {
                world.deliver(usize::from(arg));
            }
            28 => world.tick(u64::from(arg % 8)),
            29 => {
                if let Some(index) = world.open_connection(arg) {
                    world.send(index, Packet::PingReq);
                }
            }
            _ => world.settle(),
        }
        if trace {
            eprintln!("op {} arg {arg}", op % 32);
            for (index, connection) in world.connections.iter().enumerate() {
                eprintln!(
                    "  conn {index} {:?} shard {} {} closing={} owed={:?}",
                    connection.link.conn_id,
                    connection.shard,
                    connection.session,
                    connection.link.is_closing(),
                    connection.owed
                );
            }
        }
        world.read_all();
    }

    // Wind down: every connection closes, every named session is ended by a Clean Start
    // connection that then leaves, and the clock passes every expiry and will delay.
    world.settle();
    for index in 0..world.connections.len() {
        if !world.connections[index].link.is_closing() {
            world.close(index);
        }
    }
    world.settle();
    world.read_all();
    for (shard, id) in CLIENT_IDS.iter().filter(|id| !id.is_empty()).enumerate() {
        world.connect(shard % SHARDS, ProtocolVersion::V311, id, true, false, 0);
        world.settle();
        let index = world.connections.len() - 1;
        world.send(index, Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)));
        world.close(index);
        world.settle();
    }
    for _ in 0..4 {
        world.tick(u64::from(SESSION_EXPIRY_MAX_S) + 2);
        world.settle();
    }
    world.read_all();
    for shard in &world.shards {
        assert_eq!(shard.connected_clients(), 0, "shard {:?} still has connected clients", shard.id());
        assert_eq!(shard.sessions(), 0, "shard {:?} still holds sessions", shard.id());
    }
    assert!(world.wires.values().all(VecDeque::is_empty), "mesh messages left over");
}
