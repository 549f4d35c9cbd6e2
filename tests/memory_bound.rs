//! `--memory-max-bytes`: a flood of QoS 1 messages into a subscriber that reads nothing (with
//! its queue bound and the slow-subscriber timeout out of the way) would grow the broker
//! without end. With the bound, resident memory stays near it: publishers stop being read,
//! new connections are refused with a clear code, and once the subscriber drains, every
//! message arrives and the broker takes connections again.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, RawClient};
use ringmq::protocol::{Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode};

const BOUND_BYTES: u64 = 96 << 20;
const PAYLOAD_BYTES: usize = 32 << 10;
/// 400 MiB of payload if nothing held the publisher.
const MESSAGES: u32 = 12_800;

fn resident_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("broker statm");
    let pages: u64 = statm.split_whitespace().nth(1).expect("rss field").parse().expect("pages");
    pages * 4096
}

#[test]
fn a_flood_into_a_stalled_subscriber_stays_near_the_bound_and_recovers_without_loss() {
    // Its log goes to a file: reaching the bound is an overload action an operator must find.
    let log = std::env::temp_dir().join(format!("ringmq-memory-bound-{}-{}.log", std::process::id(), common::rand_suffix()));
    let broker = Broker::spawn(
        Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--listen", "127.0.0.1:0", "--sys-interval-s", "1", "--log", "warn", "--cores", "1"])
            .args(["--memory-max-bytes", &BOUND_BYTES.to_string(), "--queued-messages-max", "1000000"])
            .args(["--slow-subscriber-timeout-s", "0"])
            .stderr(Stdio::from(std::fs::File::create(&log).expect("create the log file"))),
    );
    let mut stalled = broker.client("stalled", true);
    stalled.subscribe(&[("flood/#", QoS::AtLeastOnce)]);

    // The publisher pipelines everything without waiting for PUBACKs, from its own thread:
    // its writes block once the broker stops reading it.
    let sent = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let mut client = broker.client("flooder", true);
        let (sent, done) = (sent.clone(), done.clone());
        std::thread::spawn(move || {
            let payload = Bytes::from(vec![0x5a; PAYLOAD_BYTES]);
            for n in 0..MESSAGES {
                let id = PacketId::new((n % 60_000) as u16 + 1).expect("non-zero");
                let mut publish = Publish::acknowledged(Bytes::from_static(b"flood/x"), payload.clone(), QoS::AtLeastOnce, id);
                // The sequence number leads the payload, to check order on arrival.
                let mut body = payload.to_vec();
                body[..4].copy_from_slice(&n.to_be_bytes());
                publish.payload = Bytes::from(body);
                client.send(&Packet::Publish(publish));
                sent.fetch_add(1, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
            client
        })
    };

    // Flooding: watch the broker's memory until the publisher has been held a while.
    let pid = broker.pid();
    let mut peak = 0;
    let mut last_progress = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !done.load(Ordering::Relaxed) {
        peak = peak.max(resident_bytes(pid));
        let now_sent = sent.load(Ordering::Relaxed);
        if now_sent != last_progress.0 {
            last_progress = (now_sent, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let held_at = sent.load(Ordering::Relaxed);
    assert!(held_at < MESSAGES, "the publisher was never held: all {MESSAGES} messages (400 MiB) were read");
    // Reaction time is one 10 ms sample; allow that much input on top, and the kernel's
    // and allocator's own slack.
    assert!(peak < BOUND_BYTES + (48 << 20), "resident memory peaked at {} MiB for a {} MiB bound", peak >> 20, BOUND_BYTES >> 20);

    // Near the bound, new clients are told the server is busy.
    let mut v5 = RawClient::open(broker.addr, ProtocolVersion::V5);
    assert_eq!(v5.connect("latecomer", true, 60, None).code, ReasonCode::SERVER_BUSY.0);
    let mut v311 = RawClient::open(broker.addr, ProtocolVersion::V311);
    assert_eq!(v311.connect("latecomer-311", true, 60, None).code, 3);
    let logged = std::fs::read_to_string(&log).expect("read the log");
    assert!(logged.contains("--memory-max-bytes reached"), "the overload is logged:\n{logged}");

    // The subscriber wakes up and drains: everything arrives, in order, and the publisher
    // finishes.
    let mut received = 0u32;
    while received < MESSAGES {
        let Some(Packet::Publish(publish)) = stalled.try_recv(Duration::from_secs(10)) else {
            panic!("after {received} messages, nothing more; broker at {} MiB resident", resident_bytes(pid) >> 20);
        };
        let n = u32::from_be_bytes(publish.payload[..4].try_into().expect("4 bytes"));
        if !publish.dup {
            assert_eq!(n, received, "in order, none lost");
            received += 1;
        }
        stalled.ack(&publish);
    }
    let _flooder = publisher.join().expect("publisher thread");

    // Memory fell back: the broker takes connections again, and it counted what it did.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = RawClient::open(broker.addr, ProtocolVersion::V311);
        if client.connect("after-the-flood", true, 60, None).code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still refusing connections at {} MiB resident", resident_bytes(pid) >> 20);
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.wait_for_counters("memory actions counted", |c| {
        c.total("publishes_held_for_memory") > 0 && c.total("connections_refused_memory") >= 2
    });
    let _ = std::fs::remove_file(&log);
}
