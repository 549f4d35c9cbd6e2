//! Test harness: the real `ringmq` binary on a free loopback port, and a raw MQTT client
//! over a std socket for byte-exact protocol checks.
#![allow(dead_code)]

pub mod cluster;
pub mod launcher;
pub mod transport;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::protocol::{
    Ack, ConnAck, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, SubAck, Subscribe, SubscriptionOptions, Will,
    decode,
};

pub const WAIT: Duration = Duration::from_secs(5);

/// The broker under test (see `launcher.rs`), with helpers for its clients and counters.
pub type Broker = launcher::BrokerProcess;

impl Broker {
    /// Two shards on a free loopback port (unless `extra` says `--cores` / `--listen`),
    /// counters on `$SYS` every second, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Broker {
        let cores: &[&str] = if extra.contains(&"--cores") { &[] } else { &["--cores", "2"] };
        let listen: &[&str] = if extra.contains(&"--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
        launcher::BrokerProcess::spawn(
            Command::new(env!("CARGO_BIN_EXE_ringmq"))
                .args(["--sys-interval-s", "1", "--log", "warn"])
                .args(listen)
                .args(cores)
                .args(extra)
                .stderr(Stdio::inherit()),
        )
    }

    pub fn raw(&self) -> RawClient {
        RawClient::open(self.addr, ProtocolVersion::V311)
    }

    pub fn raw_v5(&self) -> RawClient {
        RawClient::open(self.addr, ProtocolVersion::V5)
    }

    /// Connects a 3.1.1 client and asserts CONNACK 0.
    pub fn client(&self, client_id: &str, clean: bool) -> RawClient {
        Self::connected(self.raw(), client_id, clean)
    }

    /// Connects a 5.0 client with Clean Start and asserts CONNACK 0.
    pub fn client_v5(&self, client_id: &str) -> RawClient {
        Self::connected(self.raw_v5(), client_id, true)
    }

    fn connected(mut client: RawClient, client_id: &str, clean: bool) -> RawClient {
        let connack = client.connect(client_id, clean, 60, None);
        assert_eq!(connack.code, 0, "CONNACK for {client_id}");
        client
    }

    /// Latest per-shard counters from `$SYS/broker/shards/<n>/<name>`, once `ready` holds
    /// (polled as the broker republishes them every second), or panics after a while.
    /// Only values published after the watcher subscribed count (the retained ones may be
    /// older than what the caller just did), and `ready` is asked only once every shard
    /// has reported every counter: a total over a shard not yet heard from would be low.
    pub fn wait_for_counters(&self, what: &str, ready: impl Fn(&Counters) -> bool) -> Counters {
        let mut watcher = self.client(&format!("sys-watcher-{}", rand_suffix()), true);
        // A value another shard publishes may come before the SUBACK (3.8.4 allows it):
        // kept, and read first below.
        watcher.subscribe_with_no_wait(&[("$SYS/broker/shards/+/+", SubscriptionOptions::with_qos(QoS::AtMostOnce))]);
        watcher.expect(|packet| matches!(packet, Packet::SubAck(_)));
        let mut counters = Counters::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Packet::Publish(publish)) = watcher.try_recv(Duration::from_millis(200)) {
                if publish.retain {
                    continue;
                }
                let topic = String::from_utf8(publish.topic.to_vec()).expect("utf8 topic");
                let parts: Vec<&str> = topic.split('/').collect();
                let value: u64 = std::str::from_utf8(&publish.payload).expect("utf8").parse().expect("number");
                counters.values.insert((parts[3].parse().expect("shard"), parts[4].to_string()), value);
                if counters.complete(self.shards) && ready(&counters) {
                    return counters;
                }
            }
        }
        panic!("counters never satisfied: {what}; last seen {counters:?}");
    }
}

/// Runs `make` on a thread pinned to the `index`-th CPU this process may use (modulo their
/// number). With `--steer cpu`, a loopback connection made there lands on shard
/// `cpu % shards`: tests that need clients on every shard place them this way instead of
/// trusting the kernel's hash (7 clients all on one of 2 shards: 1 run in 64).
pub fn on_cpu<T: Send>(index: usize, make: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: zeroed cpu_set_t values are valid empty sets; the calls only read and write them.
                unsafe {
                    let mut allowed: libc::cpu_set_t = std::mem::zeroed();
                    assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed), 0);
                    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &allowed)).collect();
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpus[index % cpus.len()], &mut set);
                    assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
                }
                make()
            })
            .join()
            .expect("pinned thread")
    })
}

pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(Instant::now().elapsed().as_nanos() as u64);
    hasher.finish()
}

#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub values: HashMap<(usize, String), u64>,
}

impl Counters {
    pub fn get(&self, shard: usize, name: &str) -> Option<u64> {
        self.values.get(&(shard, name.to_string())).copied()
    }
    pub fn total(&self, name: &str) -> u64 {
        self.values.iter().filter(|((_, n), _)| n == name).map(|(_, v)| v).sum()
    }
    /// Every one of `shards` shards has reported as many counters as any of them (each
    /// publishes the same names, so that is every one).
    fn complete(&self, shards: usize) -> bool {
        let names = |shard: usize| self.values.keys().filter(|(s, _)| *s == shard).count();
        let seen = self.values.keys().map(|(shard, _)| *shard + 1).max().unwrap_or(0);
        let expected = (0..shards.max(seen)).map(names).max().unwrap_or(0);
        expected > 0 && (0..shards.max(seen)).all(|shard| names(shard) == expected)
    }
}

pub struct RawClient {
    stream: transport::ClientStream,
    buf: BytesMut,
    /// Packets read while waiting for a specific one (e.g. PUBREL), returned first.
    pending: std::collections::VecDeque<Packet>,
    pub version: ProtocolVersion,
}

impl RawClient {
    pub fn open(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect to broker");
        stream.set_nodelay(true).expect("nodelay");
        Self::over(transport::ClientStream::Tcp(stream), version)
    }

    /// A client on a stream already set up (TLS, WebSocket).
    pub fn over(stream: transport::ClientStream, version: ProtocolVersion) -> RawClient {
        RawClient { stream, buf: BytesMut::new(), pending: Default::default(), version }
    }

    /// The socket, for tests that drive it from several threads, and the bytes already
    /// read from it but not yet decoded.
    pub fn into_stream(self) -> (TcpStream, BytesMut) {
        assert!(self.pending.is_empty(), "no decoded packet left behind");
        match self.stream {
            transport::ClientStream::Tcp(stream) => (stream, self.buf),
            _ => panic!("into_stream is for plain TCP clients"),
        }
    }

    /// The stream, for bytes no MQTT client would send.
    pub fn stream(&mut self) -> &mut transport::ClientStream {
        &mut self.stream
    }

    pub fn local_port(&self) -> u16 {
        self.stream.socket().local_addr().expect("local addr").port()
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out);
        self.send_bytes(&out);
    }

    /// The next packet within `timeout`, or `None` (timeout, or the broker closed).
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Packet> {
        if let Some(packet) = self.pending.pop_front() {
            return Some(packet);
        }
        self.read_packet(timeout)
    }

    fn read_packet(&mut self, timeout: Duration) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(packet) = decode(&mut self.buf, self.version, u32::MAX).expect("broker sent a valid packet") {
                return Some(packet);
            }
            // Always attempt one read, so a zero timeout still polls the socket.
            let left = deadline.saturating_duration_since(Instant::now());
            self.stream.socket().set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
                Err(_) => return None,
            }
        }
    }

    pub fn recv(&mut self) -> Packet {
        self.try_recv(WAIT).expect("a packet from the broker")
    }

    /// The next PUBLISH, skipping nothing: any other packet fails the test.
    pub fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// True once the broker has closed the connection (EOF or reset) within `timeout`.
    /// Packets received meanwhile are returned through `seen`.
    pub fn closed_within(&mut self, timeout: Duration, seen: &mut Vec<Packet>) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(Some(packet)) = decode(&mut self.buf, self.version, u32::MAX) {
                seen.push(packet);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            self.stream.socket().set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }

    /// The reason code of the DISCONNECT the broker sent before closing (5.0).
    pub fn disconnect_reason(&mut self) -> ringmq::protocol::ReasonCode {
        let mut seen = Vec::new();
        assert!(self.closed_within(WAIT, &mut seen), "the broker closes the connection");
        match seen.last() {
            Some(Packet::Disconnect(disconnect)) => disconnect.reason,
            other => panic!("expected a DISCONNECT before the close, got {other:?}"),
        }
    }

    pub fn assert_closed(&mut self) {
        let mut seen = Vec::new();
        assert!(self.closed_within(WAIT, &mut seen), "broker should have closed the connection");
    }

    pub fn connect_packet(&self, client_id: &str, clean: bool, keep_alive_s: u16, will: Option<Will>) -> Packet {
        let connect = Connect::new(self.version, Bytes::copy_from_slice(client_id.as_bytes()));
        Packet::Connect(Box::new(Connect { clean_start: clean, keep_alive_s, will, ..connect }))
    }

    pub fn connect(&mut self, client_id: &str, clean: bool, keep_alive_s: u16, will: Option<Will>) -> ConnAck {
        let packet = self.connect_packet(client_id, clean, keep_alive_s, will);
        self.connect_sending(packet)
    }

    /// A 5.0 CONNECT with the given properties.
    pub fn connect_with_properties(&mut self, client_id: &str, clean: bool, keep_alive_s: u16, properties: Properties) -> ConnAck {
        let mut packet = self.connect_packet(client_id, clean, keep_alive_s, None);
        if let Packet::Connect(connect) = &mut packet {
            connect.properties = properties;
        }
        self.connect_sending(packet)
    }

    pub fn connect_sending(&mut self, packet: Packet) -> ConnAck {
        self.send(&packet);
        match self.recv() {
            Packet::ConnAck(connack) => connack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn subscribe(&mut self, filters: &[(&str, QoS)]) -> SubAck {
        let filters: Vec<(&str, SubscriptionOptions)> =
            filters.iter().map(|(filter, qos)| (*filter, SubscriptionOptions::with_qos(*qos))).collect();
        self.subscribe_with(&filters)
    }

    /// Sends a SUBSCRIBE without waiting for the SUBACK (for subscriptions that must fail).
    pub fn subscribe_with_no_wait(&mut self, filters: &[(&str, SubscriptionOptions)]) {
        let filters = filters.iter().map(|(filter, options)| (Bytes::copy_from_slice(filter.as_bytes()), *options)).collect();
        let packet_id = PacketId::new(4343).expect("non-zero");
        self.send(&Packet::Subscribe(Subscribe { packet_id, properties: Default::default(), filters }));
    }

    /// SUBSCRIBE with full (5.0) subscription options.
    pub fn subscribe_with(&mut self, filters: &[(&str, SubscriptionOptions)]) -> SubAck {
        let filters = filters.iter().map(|(filter, options)| (Bytes::copy_from_slice(filter.as_bytes()), *options)).collect();
        let packet_id = PacketId::new(4242).expect("non-zero");
        self.send(&Packet::Subscribe(Subscribe { packet_id, properties: Default::default(), filters }));
        match self.recv() {
            Packet::SubAck(suback) => {
                assert_eq!(suback.packet_id, packet_id);
                suback
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS flow as a well-behaved client.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) {
        let packet_id = (qos != QoS::AtMostOnce).then(|| PacketId::new(id).expect("non-zero id"));
        let (topic, payload) = (Bytes::copy_from_slice(topic.as_bytes()), Bytes::copy_from_slice(payload));
        let publish = match packet_id {
            Some(id) => Publish::acknowledged(topic, payload, qos, id),
            None => Publish::at_most_once(topic, payload),
        };
        self.send(&Packet::Publish(Publish { retain, ..publish }));
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.expect(|p| matches!(p, Packet::PubAck(ack) if Some(ack.packet_id) == packet_id));
            }
            QoS::ExactlyOnce => {
                let packet_id = packet_id.expect("qos 2 has an id");
                self.expect(|p| matches!(p, Packet::PubRec(ack) if ack.packet_id == packet_id));
                self.send(&Packet::PubRel(Ack::new(packet_id)));
                self.expect(|p| matches!(p, Packet::PubComp(ack) if ack.packet_id == packet_id));
            }
        }
    }

    /// Reads until a packet satisfying `wanted` arrives; others are kept for `recv`.
    pub fn expect(&mut self, wanted: impl Fn(&Packet) -> bool) -> Packet {
        loop {
            let packet = self.read_packet(WAIT).expect("the expected packet from the broker");
            if wanted(&packet) {
                return packet;
            }
            self.pending.push_back(packet);
        }
    }

    /// Sends a PUBLISH as given (valid or not) and expects no answer: for packets the
    /// broker must refuse.
    pub fn publish_raw(&mut self, topic: &str, qos: QoS, retain: bool) {
        let topic = Bytes::copy_from_slice(topic.as_bytes());
        let publish = match qos {
            QoS::AtMostOnce => Publish::at_most_once(topic, Bytes::from_static(b"x")),
            qos => Publish::acknowledged(topic, Bytes::from_static(b"x"), qos, PacketId::new(1).expect("non-zero")),
        };
        self.send(&Packet::Publish(Publish { retain, ..publish }));
    }

    /// Acknowledges a received PUBLISH as its QoS requires.
    pub fn ack(&mut self, publish: &Publish) {
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(Ack::new(id))),
            (QoS::ExactlyOnce, Some(id)) => {
                self.send(&Packet::PubRec(Ack::new(id)));
                self.expect(|p| matches!(p, Packet::PubRel(ack) if ack.packet_id == id));
                self.send(&Packet::PubComp(Ack::new(id)));
            }
            _ => {}
        }
    }

    /// Sends DISCONNECT and closes the socket.
    pub fn disconnect(mut self) {
        self.send_bytes(&[0xE0, 0x00]);
        let _ = self.stream.socket().shutdown(std::net::Shutdown::Write);
        let mut seen = Vec::new();
        self.closed_within(WAIT, &mut seen);
    }

    /// Closes the socket without DISCONNECT.
    pub fn drop_abruptly(self) {
        let _ = self.stream.socket().shutdown(std::net::Shutdown::Both);
    }

    /// Nothing arrives within `quiet`.
    pub fn assert_silent(&mut self, quiet: Duration) {
        if let Some(packet) = self.try_recv(quiet) {
            panic!("expected silence, got {packet:?}");
        }
    }
}

pub fn will(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Will {
    Will {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain,
        properties: Default::default(),
    }
}
