//! The subscribe-storm scenario: one client subscribes to many filters in pipelined
//! SUBSCRIBE packets while a probe client measures its own round trip (publish to itself,
//! receive) through the same broker. Reports the time to the storm's last SUBACK and the
//! probe's round trips meanwhile: a broker that lets one client's subscriptions starve
//! everyone else shows it in the probe's tail. Plain blocking sockets: this measures the
//! broker's responsiveness, not loadgen's throughput.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use ringmq::protocol::{Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions, decode};
use serde::Serialize;

/// What one storm asks of the broker.
#[derive(Debug, Clone)]
pub struct StormConfig {
    pub broker: SocketAddr,
    pub version: ProtocolVersion,
    pub filters: usize,
    pub packets: usize,
    pub topic_prefix: String,
    /// Give up waiting for SUBACKs after this long.
    pub timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct StormReport {
    pub filters: usize,
    pub packets: usize,
    pub subacks: usize,
    pub last_suback_ms: f64,
    pub probe_round_trips: u64,
    pub probe_p50_us: u64,
    pub probe_p99_us: u64,
    pub probe_max_us: u64,
    pub failed: bool,
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    fn connect(broker: SocketAddr, version: ProtocolVersion, client_id: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(broker).with_context(|| format!("connecting to {broker}"))?;
        stream.set_nodelay(true)?;
        let mut client = Client { stream, buf: BytesMut::new(), version };
        client.send(&Packet::Connect(Box::new(Connect {
            version,
            clean_start: true,
            keep_alive_s: 600,
            properties: Default::default(),
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            will: None,
            username: None,
            password: None,
        })))?;
        match client.recv(Duration::from_secs(10))? {
            Some(Packet::ConnAck(connack)) if connack.code == 0 => Ok(client),
            other => bail!("{client_id}: expected CONNACK 0, got {other:?}"),
        }
    }

    fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out);
        self.stream.write_all(&out)?;
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> anyhow::Result<Option<Packet>> {
        let deadline = Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(packet) = decode(&mut self.buf, self.version, u32::MAX)? {
                return Ok(Some(packet));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("the broker closed the connection"),
                Ok(count) => self.buf.extend_from_slice(&chunk[..count]),
                Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return Ok(None),
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Runs one storm and its probe; both stop by themselves (all SUBACKs, or the timeout).
pub fn run_storm(config: &StormConfig) -> anyhow::Result<StormReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (config, stop) = (config.clone(), stop.clone());
        std::thread::spawn(move || probe(&config, &stop))
    };
    // Let the probe settle before the storm starts.
    std::thread::sleep(Duration::from_millis(300));
    let mut storm = Client::connect(config.broker, config.version, "loadgen-storm")?;
    let per_packet = config.filters.div_ceil(config.packets.max(1));
    let mut out = BytesMut::new();
    let started = Instant::now();
    for (index, chunk) in (0..config.filters).collect::<Vec<_>>().chunks(per_packet.max(1)).enumerate() {
        let filters = chunk
            .iter()
            .map(|n| (Bytes::from(format!("{}/storm/{n}", config.topic_prefix)), SubscriptionOptions::with_qos(QoS::AtMostOnce)))
            .collect();
        let packet_id = PacketId::new((index % 65_535) as u16 + 1).expect("non-zero");
        Packet::Subscribe(Subscribe { packet_id, properties: Default::default(), filters }).encode(config.version, &mut out);
    }
    let packets = config.filters.div_ceil(per_packet.max(1));
    storm.stream.write_all(&out)?;
    let deadline = started + config.timeout;
    let mut subacks = 0;
    while subacks < packets && Instant::now() < deadline {
        if let Some(Packet::SubAck(_)) = storm.recv(deadline.saturating_duration_since(Instant::now()))? {
            subacks += 1;
        }
    }
    let last_suback = started.elapsed();
    // A moment more of probing after the storm, then stop.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let histogram = probe.join().map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
    Ok(StormReport {
        filters: config.filters,
        packets,
        subacks,
        last_suback_ms: last_suback.as_secs_f64() * 1e3,
        probe_round_trips: histogram.len(),
        probe_p50_us: histogram.value_at_quantile(0.5),
        probe_p99_us: histogram.value_at_quantile(0.99),
        probe_max_us: histogram.max(),
        failed: subacks < packets,
    })
}

/// Publishes to its own topic and waits for the copy, over and over, until `stop`.
fn probe(config: &StormConfig, stop: &AtomicBool) -> anyhow::Result<Histogram<u64>> {
    let mut client = Client::connect(config.broker, config.version, "loadgen-probe")?;
    let topic = Bytes::from(format!("{}/probe", config.topic_prefix));
    let filters = vec![(topic.clone(), SubscriptionOptions::with_qos(QoS::AtMostOnce))];
    client.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).expect("non-zero"),
        properties: Default::default(),
        filters,
    }))?;
    match client.recv(Duration::from_secs(10))? {
        Some(Packet::SubAck(_)) => {}
        other => bail!("probe: expected SUBACK, got {other:?}"),
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.clone(),
            packet_id: None,
            properties: Default::default(),
            payload: Bytes::from_static(b"probe"),
        };
        client.send(&Packet::Publish(publish))?;
        loop {
            match client.recv(Duration::from_secs(120))? {
                Some(Packet::Publish(_)) => break,
                Some(_) => continue,
                None => bail!("probe: no copy within 120 s"),
            }
        }
        histogram.record(sent.elapsed().as_micros() as u64)?;
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(histogram)
}
