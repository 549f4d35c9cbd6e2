//! Durability under `--data-dir`: retained messages survive `kill -9`, a clean stop, a
//! torn log tail and a restart with another `--cores` count; message expiry counts the
//! time the broker was down; one broker per directory.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, RawClient};
use ringmq::protocol::{Packet, PacketId, Properties, Publish, QoS, SubscriptionOptions};

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmq-persist-{name}-{}-{}", std::process::id(), common::rand_suffix()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start_on(dir: &Path, extra: &[&str]) -> Broker {
    let mut args = vec!["--data-dir", dir.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

/// What a new subscription to `filter` receives: topic -> (payload, QoS, properties).
fn retained_on(broker: &Broker, filter: &str) -> BTreeMap<String, (Vec<u8>, QoS, Properties)> {
    let mut subscriber = broker.client_v5(&format!("reader-{}", common::rand_suffix()));
    subscriber.subscribe_with(&[(filter, SubscriptionOptions::with_qos(QoS::ExactlyOnce))]);
    let mut found = BTreeMap::new();
    while let Some(packet) = subscriber.try_recv(Duration::from_millis(400)) {
        if let Packet::Publish(publish) = packet {
            assert!(publish.retain, "a stored message comes with RETAIN=1");
            subscriber.ack(&publish);
            let topic = String::from_utf8(publish.topic.to_vec()).expect("utf-8 topic");
            found.insert(topic, (publish.payload.to_vec(), publish.qos, publish.properties.into_inner()));
        }
    }
    found
}

fn publish_with(client: &mut RawClient, topic: &str, payload: &[u8], properties: Properties) {
    client.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id: None::<PacketId>,
        properties: properties.into(),
        payload: Bytes::copy_from_slice(payload),
    }));
}

fn wait_until_dead(broker: &mut Broker) {
    let deadline = Instant::now() + common::WAIT;
    while broker.is_running() {
        assert!(Instant::now() < deadline, "the broker did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn retained_messages_survive_kill_9_and_a_restart_on_fewer_cores() {
    let dir = data_dir("kill");
    let mut broker = start_on(&dir, &["--fsync-interval-ms", "20", "--cores", "2"]);
    let mut publisher = broker.client_v5("retainer");
    publisher.publish("keep/one", b"1", QoS::AtLeastOnce, true, 1);
    publisher.publish("keep/two", b"2", QoS::ExactlyOnce, true, 2);
    publisher.publish("keep/replaced", b"old", QoS::AtMostOnce, true, 0);
    publisher.publish("keep/replaced", b"new", QoS::AtMostOnce, true, 0);
    publisher.publish("keep/cleared", b"x", QoS::AtMostOnce, true, 0);
    publisher.publish("keep/cleared", b"", QoS::AtMostOnce, true, 0);
    let typed =
        Properties { content_type: Some(Bytes::from_static(b"text/plain")), message_expiry_interval: Some(60), ..Properties::default() };
    publish_with(&mut publisher, "keep/expiring", b"e", typed);
    publish_with(&mut publisher, "keep/short", b"s", Properties { message_expiry_interval: Some(1), ..Properties::default() });
    // Publishers on other connections land on both shards; shard 0 writes them all.
    for i in 0..20 {
        let mut other = broker.client(&format!("fleet-{i}"), true);
        other.publish(&format!("fleet/{i}"), format!("state {i}").as_bytes(), QoS::AtLeastOnce, true, 1);
        other.disconnect();
    }
    let before = retained_on(&broker, "keep/#");
    assert_eq!(before.len(), 5, "{before:?}");
    // Several fsync intervals, then the hardest stop there is.
    std::thread::sleep(Duration::from_millis(300));
    broker.signal(libc::SIGKILL);
    wait_until_dead(&mut broker);
    // keep/short's second runs out while the broker is down.
    std::thread::sleep(Duration::from_millis(1100));

    let broker = start_on(&dir, &["--cores", "1"]);
    let after = retained_on(&broker, "keep/#");
    let topics: Vec<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(topics, vec!["keep/expiring", "keep/one", "keep/replaced", "keep/two"], "cleared and expired topics stay gone");
    assert_eq!((&after["keep/one"].0[..], after["keep/one"].1), (&b"1"[..], QoS::AtLeastOnce));
    assert_eq!((&after["keep/two"].0[..], after["keep/two"].1), (&b"2"[..], QoS::ExactlyOnce));
    assert_eq!(after["keep/replaced"].0, b"new");
    let properties = &after["keep/expiring"].2;
    assert_eq!(properties.content_type.as_deref(), Some(&b"text/plain"[..]));
    let left = properties.message_expiry_interval.expect("the expiry is still there");
    assert!((55..=59).contains(&left), "the time down counts against the expiry: {left} s of 60 left");
    let fleet = retained_on(&broker, "fleet/+");
    assert_eq!(fleet.len(), 20, "{fleet:?}");
    assert_eq!(fleet["fleet/7"].0, b"state 7");
    // The broker's own $SYS status is not persisted: a 1-shard broker has no shard 1 to report.
    assert!(retained_on(&broker, "$SYS/broker/shards/1/#").is_empty(), "the old run's $SYS came back");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_clean_stop_commits_everything_a_torn_tail_is_cut_and_the_directory_is_locked() {
    let dir = data_dir("torn");
    // An interval far longer than the test: only the final commit of a clean stop can save it.
    let mut broker = start_on(&dir, &["--fsync-interval-ms", "60000"]);
    // A second broker on the same directory refuses to start, and says why.
    let second = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()])
        .output()
        .expect("run a second broker");
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("in use by another ringmq"), "{said}");

    let mut publisher = broker.client("torn-pub", true);
    publisher.publish("t/a", b"1", QoS::AtLeastOnce, true, 1);
    assert!(broker.terminate().is_some_and(|status| status.success()), "SIGTERM stops it cleanly");

    // A crash in the middle of a write leaves part of a record behind.
    let log = dir.join("retained.log");
    let good_len = std::fs::metadata(&log).expect("the log exists").len();
    let mut torn = std::fs::read(&log).unwrap();
    torn.extend_from_slice(&[40, 0, 0, 0, 0xde, 0xad]);
    std::fs::write(&log, &torn).unwrap();

    let mut broker = start_on(&dir, &["--fsync-interval-ms", "20"]);
    assert_eq!(retained_on(&broker, "t/#").keys().collect::<Vec<_>>(), vec!["t/a"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::metadata(&log).unwrap().len(), good_len, "the torn tail is cut");
    // What comes next follows the good records, so it is read back too.
    let mut publisher = broker.client("torn-pub", true);
    publisher.publish("t/b", b"2", QoS::AtLeastOnce, true, 1);
    std::thread::sleep(Duration::from_millis(200));
    broker.signal(libc::SIGKILL);
    wait_until_dead(&mut broker);
    let broker = start_on(&dir, &[]);
    assert_eq!(retained_on(&broker, "t/#").keys().collect::<Vec<_>>(), vec!["t/a", "t/b"]);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_that_is_not_a_ringmq_log_stops_the_start_with_its_name() {
    let dir = data_dir("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("retained.log"), b"{\"not\": \"a log\"}").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()])
        .output()
        .expect("run the broker");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("retained.log") && said.contains("not a ringmq log"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_log_grown_by_replacements_is_compacted_and_still_recovers_the_latest() {
    let dir = data_dir("compact");
    let mut broker = start_on(&dir, &["--fsync-interval-ms", "10", "--cores", "1"]);
    let mut publisher = broker.client("compactor", true);
    let payload = vec![b'p'; 1024];
    // 6 MiB of replacements of 3 topics: well past the 4 MiB at which the log is rewritten.
    for round in 0..2000u32 {
        for topic in ["c/a", "c/b", "c/c"] {
            let mut body = payload.clone();
            body[..4].copy_from_slice(&round.to_be_bytes());
            publisher.publish(topic, &body, QoS::AtMostOnce, true, 0);
        }
    }
    publisher.publish("c/end", b"last", QoS::AtLeastOnce, true, 1);
    let log = dir.join("retained.log");
    let deadline = Instant::now() + common::WAIT;
    loop {
        let len = std::fs::metadata(&log).unwrap().len();
        // Compacted: the 4 live messages, not 6 MiB of history.
        if len < 64 * 1024 && retained_on(&broker, "c/end").len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the log was not compacted: {len} bytes");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    broker.signal(libc::SIGKILL);
    wait_until_dead(&mut broker);
    let broker = start_on(&dir, &[]);
    let after = retained_on(&broker, "c/#");
    assert_eq!(after.keys().collect::<Vec<_>>(), vec!["c/a", "c/b", "c/c", "c/end"]);
    for topic in ["c/a", "c/b", "c/c"] {
        assert_eq!(after[topic].0[..4], 1999u32.to_be_bytes(), "{topic} holds the last round");
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
