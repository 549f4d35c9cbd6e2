//! Crash test for `--durability sync`: QoS 1 and QoS 2 publishers and persistent QoS 1 and
//! QoS 2 subscribers run against the broker, which is killed with SIGKILL at seeded random
//! moments (`CRASH_KILLS` times, 22 by default) and restarted on the same data directory.
//! Exact accounting at the end:
//! - every message whose PUBACK (QoS 1) or PUBREC (QoS 2) a publisher received reaches
//!   both subscribers;
//! - every QoS 2 message reaches the QoS 2 subscriber exactly once, across every crash
//!   (the subscriber keeps its receiver state across reconnects, as MQTT requires);
//! - every retained message acknowledged before a kill is there at the end.
//!
//! Seed: `CRASH_SEED` (printed, so a failure can be replayed). `--fsync-interval-ms 500`:
//! under `sync` it only bounds how long an unwaited change may wait.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, RawClient};
use ringmq::protocol::{Ack, Packet, PacketId, Properties, Publish, QoS, SubscriptionOptions};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// `CRASH_DURABILITY=interval` shows what that mode loses (the test then fails).
fn start(dir: &Path) -> Broker {
    let durability = std::env::var("CRASH_DURABILITY").unwrap_or_else(|_| "sync".to_string());
    Broker::start(&[
        "--data-dir",
        dir.to_str().expect("utf-8 path"),
        "--durability",
        &durability,
        "--fsync-interval-ms",
        "500",
        "--cores",
        "2",
    ])
}

/// What the subscribers saw, by publisher and sequence number.
#[derive(Default)]
struct Seen {
    qos1_sub: BTreeMap<(u8, u64), u32>,
    qos2_sub: BTreeMap<(u8, u64), u32>,
}

/// A persistent subscriber's receiver state, kept across its reconnects.
#[derive(Default)]
struct Receiver {
    awaiting_pubrel: HashSet<PacketId>,
}

fn parse(payload: &[u8]) -> (u8, u64) {
    let text = std::str::from_utf8(payload).expect("utf-8 payload");
    let (publisher, sequence) = text.split_once(':').expect("publisher:sequence");
    (publisher.parse().expect("publisher"), sequence.parse().expect("sequence"))
}

/// Reads until `stop` (or the connection ends and `stop` follows), acknowledging as a
/// correct client does and counting each message once per QoS 2 flow.
fn consume(mut client: RawClient, receiver: Arc<Mutex<Receiver>>, seen: Arc<Mutex<Seen>>, qos2: bool, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(packet) = client.try_recv(Duration::from_millis(50)) else { continue };
        match packet {
            Packet::Publish(publish) => {
                let key = parse(&publish.payload);
                let count = |seen: &mut Seen| {
                    let map = if qos2 { &mut seen.qos2_sub } else { &mut seen.qos1_sub };
                    *map.entry(key).or_insert(0) += 1;
                };
                match (publish.qos, publish.packet_id) {
                    (QoS::ExactlyOnce, Some(id)) => {
                        // A PUBLISH whose id awaits PUBREL is the same message again.
                        if receiver.lock().unwrap().awaiting_pubrel.insert(id) {
                            count(&mut seen.lock().unwrap());
                        }
                        client.send(&Packet::PubRec(Ack::new(id)));
                    }
                    (QoS::AtLeastOnce, Some(id)) => {
                        count(&mut seen.lock().unwrap());
                        client.send(&Packet::PubAck(Ack::new(id)));
                    }
                    _ => count(&mut seen.lock().unwrap()),
                }
            }
            Packet::PubRel(ack) => {
                receiver.lock().unwrap().awaiting_pubrel.remove(&ack.packet_id);
                client.send(&Packet::PubComp(Ack::new(ack.packet_id)));
            }
            _ => {}
        }
    }
}

/// Publishes `publisher:n` for rising n until the connection breaks or `stop`, recording
/// the sequence numbers the broker acknowledged (PUBACK, or PUBREC for QoS 2).
fn publish_until_stopped(
    mut client: RawClient,
    publisher: u8,
    qos: QoS,
    first: u64,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    stop: Arc<AtomicBool>,
) {
    let mut sequence = first;
    let mut packet_id = PacketId::new(1).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let payload = Bytes::from(format!("{publisher}:{sequence}"));
        client.send(&Packet::Publish(Publish::acknowledged(Bytes::from_static(b"crash/data"), payload, qos, packet_id)));
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut acknowledged = false;
        while !acknowledged && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            match client.try_recv(Duration::from_millis(20)) {
                Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => acknowledged = true,
                Some(Packet::PubRec(ack)) if ack.packet_id == packet_id => {
                    acknowledged = true;
                    client.send(&Packet::PubRel(Ack::new(packet_id)));
                }
                _ => {}
            }
        }
        if !acknowledged {
            return;
        }
        acked.lock().unwrap().insert(sequence);
        sequence += 1;
        packet_id = packet_id.next();
    }
}

fn connect_subscriber(broker: &Broker, qos2: bool) -> RawClient {
    if qos2 {
        let mut client = broker.raw_v5();
        let properties = Properties { session_expiry_interval: Some(3600), ..Properties::default() };
        assert_eq!(client.connect_with_properties("crash-sub-qos2", false, 60, properties).code, 0);
        client
    } else {
        let mut client = broker.raw();
        assert_eq!(client.connect("crash-sub-qos1", false, 60, None).code, 0);
        client
    }
}

/// Both persistent subscribers, reconnected, each consuming on its own thread until `stop`.
fn start_subscribers(
    broker: &Broker,
    receivers: &[Arc<Mutex<Receiver>>; 2],
    seen: &Arc<Mutex<Seen>>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    [false, true]
        .into_iter()
        .enumerate()
        .map(|(index, qos2)| {
            let client = connect_subscriber(broker, qos2);
            let (receiver, seen, stop) = (receivers[index].clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || consume(client, receiver, seen, qos2, stop))
        })
        .collect()
}

#[test]
fn acknowledged_messages_survive_repeated_kill_9() {
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(common::rand_suffix) | 1;
    let kills: usize = std::env::var("CRASH_KILLS").ok().and_then(|kills| kills.parse().ok()).unwrap_or(22);
    println!("crash test: CRASH_SEED={seed} CRASH_KILLS={kills}");
    let mut rng = Rng(seed);
    let dir = std::env::temp_dir().join(format!("ringmq-crash-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let receivers = [Arc::new(Mutex::new(Receiver::default())), Arc::new(Mutex::new(Receiver::default()))];
    let acked: [Arc<Mutex<BTreeSet<u64>>>; 2] = Default::default();
    let mut retained_acked: Vec<String> = Vec::new();
    let mut next_sequence = [0u64; 2];

    {
        // The subscriptions, made durable before anything is published (SUBACK waits for it).
        let broker = start(&dir);
        let mut qos1 = connect_subscriber(&broker, false);
        qos1.subscribe(&[("crash/data", QoS::AtLeastOnce)]);
        let mut qos2 = connect_subscriber(&broker, true);
        qos2.subscribe_with(&[("crash/data", SubscriptionOptions::with_qos(QoS::ExactlyOnce))]);
    }

    for run in 0..kills {
        let mut broker = start(&dir);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = start_subscribers(&broker, &receivers, &seen, &stop);
        for (publisher, qos) in [(0u8, QoS::AtLeastOnce), (1u8, QoS::ExactlyOnce)] {
            let client = broker.client(&format!("crash-pub-{publisher}"), true);
            let (acked, stop) = (acked[usize::from(publisher)].clone(), stop.clone());
            let first = next_sequence[usize::from(publisher)];
            threads.push(std::thread::spawn(move || publish_until_stopped(client, publisher, qos, first, acked, stop)));
        }
        // A retained message per run, on its own topic.
        let mut retainer = broker.client("crash-retainer", true);
        let topic = format!("kept/{run}");
        retainer.send(&Packet::Publish(Publish {
            retain: true,
            ..Publish::acknowledged(Bytes::from(topic.clone()), Bytes::from_static(b"r"), QoS::AtLeastOnce, PacketId::new(1).unwrap())
        }));

        std::thread::sleep(Duration::from_millis(50 + rng.below(350)));
        if matches!(retainer.try_recv(Duration::ZERO), Some(Packet::PubAck(_))) {
            retained_acked.push(topic);
        }
        broker.signal(libc::SIGKILL);
        while broker.is_running() {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().expect("client thread");
        }
        for (publisher, acked) in acked.iter().enumerate() {
            // The next run continues after anything possibly sent, acknowledged or not.
            next_sequence[publisher] = acked.lock().unwrap().last().map_or(0, |last| last + 1) + 1_000;
        }
    }

    // A last run with no kill: the subscribers drain what the broker still holds.
    let broker = start(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = start_subscribers(&broker, &receivers, &seen, &stop);
    let total_acked: usize = acked.iter().map(|acked| acked.lock().unwrap().len()).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = {
            let seen = seen.lock().unwrap();
            acked
                .iter()
                .enumerate()
                .flat_map(|(publisher, acked)| acked.lock().unwrap().iter().map(move |&n| (publisher as u8, n)).collect::<Vec<_>>())
                .filter(|key| !seen.qos1_sub.contains_key(key) || !seen.qos2_sub.contains_key(key))
                .count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("client thread");
    }
    let mut reader = broker.client("crash-reader", true);
    reader.subscribe(&[("kept/+", QoS::AtLeastOnce)]);
    let mut retained_found = BTreeSet::new();
    while let Some(packet) = reader.try_recv(Duration::from_millis(500)) {
        if let Packet::Publish(publish) = packet {
            reader.ack(&publish);
            retained_found.insert(String::from_utf8(publish.topic.to_vec()).expect("utf-8"));
        }
    }

    let seen = seen.lock().unwrap();
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    for (publisher, acked) in acked.iter().enumerate() {
        for &sequence in acked.lock().unwrap().iter() {
            let key = (publisher as u8, sequence);
            if !seen.qos1_sub.contains_key(&key) || !seen.qos2_sub.contains_key(&key) {
                lost.push(key);
            }
            if publisher == 1 && seen.qos2_sub.get(&key).copied().unwrap_or(0) > 1 {
                duplicated.push(key);
            }
        }
    }
    let retained_missing: Vec<&String> = retained_acked.iter().filter(|topic| !retained_found.contains(*topic)).collect();
    println!(
        "crash test: {kills} kills, {total_acked} messages acknowledged ({} QoS 1, {} QoS 2), {} retained; lost {}, QoS 2 duplicated {}, retained missing {}",
        acked[0].lock().unwrap().len(),
        acked[1].lock().unwrap().len(),
        retained_acked.len(),
        lost.len(),
        duplicated.len(),
        retained_missing.len()
    );
    assert!(total_acked > 100, "the load ran: {total_acked} acknowledged");
    assert!(lost.is_empty(), "acknowledged but never delivered (seed {seed}): {lost:?}");
    assert!(duplicated.is_empty(), "QoS 2 delivered twice (seed {seed}): {duplicated:?}");
    assert!(retained_missing.is_empty(), "acknowledged retained messages missing (seed {seed}): {retained_missing:?}");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
