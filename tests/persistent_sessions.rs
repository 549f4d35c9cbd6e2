//! Persistent sessions under `--data-dir` (interval durability): subscriptions with their
//! options, queued messages, the outbound in-flight window (unacknowledged PUBLISH, owed
//! PUBREL) and inbound QoS 2 ids survive `kill -9` and a clean stop; restarting with
//! another `--cores` count re-homes them; expiry counts the time the broker was down; a
//! client online at a crash leaves its will; a clean start ends the stored session.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, RawClient};
use ringmq::protocol::{Ack, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, SubscriptionOptions};

/// Commits every 20 ms; tests wait `SETTLE` (many intervals) before a `kill -9`.
const INTERVAL: &str = "20";
const SETTLE: Duration = Duration::from_millis(300);

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmq-sessions-{name}-{}-{}", std::process::id(), common::rand_suffix()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start_on(dir: &Path, cores: &str) -> Broker {
    Broker::start(&["--data-dir", dir.to_str().expect("utf-8 path"), "--fsync-interval-ms", INTERVAL, "--cores", cores])
}

fn kill_9(mut broker: Broker) {
    broker.signal(libc::SIGKILL);
    let deadline = Instant::now() + common::WAIT;
    while broker.is_running() {
        assert!(Instant::now() < deadline, "the broker did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn v5_persistent(broker: &Broker, client_id: &str, clean_start: bool) -> (RawClient, bool) {
    let mut client = broker.raw_v5();
    let properties = Properties { session_expiry_interval: Some(3600), ..Properties::default() };
    let connack = client.connect_with_properties(client_id, clean_start, 60, properties);
    assert_eq!(connack.code, 0);
    (client, connack.session_present)
}

fn v311_persistent(broker: &Broker, client_id: &str) -> (RawClient, bool) {
    let mut client = broker.raw();
    let connack = client.connect(client_id, false, 60, None);
    assert_eq!(connack.code, 0);
    (client, connack.session_present)
}

/// Every PUBLISH until `count` have come, acknowledged as they arrive.
fn receive(client: &mut RawClient, count: usize) -> Vec<Publish> {
    let mut received = Vec::new();
    while received.len() < count {
        match client.try_recv(Duration::from_secs(3)) {
            Some(Packet::Publish(publish)) => {
                client.ack(&publish);
                received.push(publish);
            }
            Some(_) => {}
            None => panic!("{} of {count} messages came", received.len()),
        }
    }
    received
}

#[test]
fn queued_messages_and_subscription_options_survive_kill_9() {
    let dir = data_dir("queued");
    let broker = start_on(&dir, "2");
    let (mut old, _) = v311_persistent(&broker, "old-sub");
    old.subscribe(&[("q/+", QoS::AtLeastOnce)]);
    old.disconnect();
    let (mut new, _) = v5_persistent(&broker, "new-sub", true);
    let mut options = SubscriptionOptions::with_qos(QoS::ExactlyOnce);
    options.no_local = true;
    let subscribe = ringmq::protocol::Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Properties { subscription_identifiers: vec![42], ..Properties::default() }.into(),
        filters: vec![(Bytes::from_static(b"q/#"), options)],
    };
    new.send(&Packet::Subscribe(subscribe));
    new.expect(|packet| matches!(packet, Packet::SubAck(_)));
    new.disconnect();

    let mut publisher = broker.client_v5("q-publisher");
    for n in 0..30u16 {
        let qos = if n % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        publisher.publish(&format!("q/{n}"), format!("m{n}").as_bytes(), qos, false, n + 1);
    }
    std::thread::sleep(SETTLE);
    kill_9(broker);

    let broker = start_on(&dir, "2");
    let (mut old, present) = v311_persistent(&broker, "old-sub");
    assert!(present, "3.1.1 clean session 0: the session is back");
    let got = receive(&mut old, 30);
    let payloads: Vec<String> = got.iter().map(|publish| String::from_utf8_lossy(&publish.payload).into_owned()).collect();
    assert_eq!(payloads, (0..30).map(|n| format!("m{n}")).collect::<Vec<_>>(), "all, in order");
    assert!(got.iter().all(|publish| publish.qos == QoS::AtLeastOnce), "granted QoS 1 caps the delivery");

    let (mut new, present) = v5_persistent(&broker, "new-sub", false);
    assert!(present);
    let got = receive(&mut new, 30);
    assert!(got.iter().all(|publish| publish.properties.subscription_identifiers == vec![42]), "the identifier came back");
    assert_eq!(got.iter().filter(|publish| publish.qos == QoS::ExactlyOnce).count(), 15);
    // The restored subscription keeps its options: no-local holds for its own publishes.
    new.publish("q/own/x", b"mine", QoS::AtLeastOnce, false, 100);
    new.assert_silent(Duration::from_millis(300));
    // And it is live: a new publish reaches both.
    publisher = broker.client_v5("q-publisher-2");
    publisher.publish("q/live", b"live", QoS::AtLeastOnce, false, 1);
    assert_eq!(&receive(&mut old, 1)[0].payload[..], b"live");
    assert_eq!(&receive(&mut new, 1)[0].payload[..], b"live");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_in_flight_window_and_inbound_qos2_ids_survive_kill_9() {
    let dir = data_dir("inflight");
    let broker = start_on(&dir, "2");
    let (mut subscriber, _) = v5_persistent(&broker, "window-sub", true);
    subscriber.subscribe(&[("w/#", QoS::ExactlyOnce)]);
    let (mut publisher, _) = v5_persistent(&broker, "window-pub", true);
    // A QoS 2 message left unanswered, and one whose PUBREL is owed.
    publisher.publish("w/unanswered", b"1", QoS::ExactlyOnce, false, 1);
    let unanswered = subscriber.recv_publish();
    publisher.publish("w/released", b"2", QoS::ExactlyOnce, false, 2);
    let released = subscriber.recv_publish();
    let released_id = released.packet_id.unwrap();
    subscriber.send(&Packet::PubRec(Ack::new(released_id)));
    subscriber.expect(|packet| matches!(packet, Packet::PubRel(ack) if ack.packet_id == released_id));
    // An inbound QoS 2 message PUBREC'd but not released: exactly once across the crash.
    publisher.send(&Packet::Publish(Publish::acknowledged(
        Bytes::from_static(b"w/inbound"),
        Bytes::from_static(b"3"),
        QoS::ExactlyOnce,
        PacketId::new(9).unwrap(),
    )));
    publisher.expect(|packet| matches!(packet, Packet::PubRec(ack) if ack.packet_id.get() == 9));
    let inbound = subscriber.recv_publish();
    assert_eq!(&inbound.payload[..], b"3");
    std::thread::sleep(SETTLE);
    kill_9(broker);

    let broker = start_on(&dir, "2");
    let (mut subscriber, present) = v5_persistent(&broker, "window-sub", false);
    assert!(present);
    // Re-sent in order: the unanswered PUBLISH with DUP and its id, the owed PUBREL, and
    // the inbound message's copy, also unanswered.
    let mut seen = Vec::new();
    while let Some(packet) = subscriber.try_recv(Duration::from_millis(500)) {
        seen.push(packet);
    }
    assert!(
        seen.iter().any(
            |packet| matches!(packet, Packet::Publish(p) if p.dup && p.packet_id == unanswered.packet_id && p.payload == unanswered.payload)
        ),
        "{seen:?}"
    );
    assert!(seen.iter().any(|packet| matches!(packet, Packet::PubRel(ack) if ack.packet_id == released_id)), "{seen:?}");
    assert!(
        seen.iter()
            .any(|packet| matches!(packet, Packet::Publish(p) if p.dup && p.packet_id == inbound.packet_id && &p.payload[..] == b"3")),
        "{seen:?}"
    );

    let (mut publisher, present) = v5_persistent(&broker, "window-pub", false);
    assert!(present);
    // The publisher resends its unreleased message: answered, not routed again.
    let mut again =
        Publish::acknowledged(Bytes::from_static(b"w/inbound"), Bytes::from_static(b"3"), QoS::ExactlyOnce, PacketId::new(9).unwrap());
    again.dup = true;
    publisher.send(&Packet::Publish(again));
    publisher.expect(|packet| matches!(packet, Packet::PubRec(ack) if ack.packet_id.get() == 9));
    publisher.send(&Packet::PubRel(Ack::new(PacketId::new(9).unwrap())));
    publisher.expect(|packet| matches!(packet, Packet::PubComp(ack) if ack.packet_id.get() == 9));
    let duplicates: Vec<Packet> = std::iter::from_fn(|| subscriber.try_recv(Duration::from_millis(300))).collect();
    assert!(!duplicates.iter().any(|packet| matches!(packet, Packet::Publish(p) if !p.dup)), "routed twice: {duplicates:?}");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sessions_move_to_their_new_home_when_the_core_count_changes() {
    let dir = data_dir("cores");
    let clients: Vec<String> = (0..12).map(|n| format!("roamer-{n}")).collect();
    let broker = start_on(&dir, "1");
    for client_id in &clients {
        let (mut client, _) = v311_persistent(&broker, client_id);
        client.subscribe(&[(&format!("roam/{client_id}"), QoS::AtLeastOnce), ("roam/all", QoS::AtLeastOnce)]);
        client.disconnect();
    }
    let mut publisher = broker.client("roam-pub", true);
    publisher.publish("roam/all", b"one", QoS::AtLeastOnce, false, 1);
    drop(publisher);
    let mut broker = broker;
    assert!(broker.terminate().is_some_and(|status| status.success()));

    // One shard to two: a publish taken at once reaches every restored subscriber,
    // whichever shard it lands on.
    let broker = start_on(&dir, "2");
    let mut publisher = broker.client("roam-pub", true);
    publisher.publish("roam/all", b"two", QoS::AtLeastOnce, false, 1);
    for client_id in &clients {
        publisher.publish(&format!("roam/{client_id}"), client_id.as_bytes(), QoS::AtLeastOnce, false, 2);
    }
    std::thread::sleep(SETTLE);
    kill_9(broker);

    // And back to one.
    let broker = start_on(&dir, "1");
    for client_id in &clients {
        let (mut client, present) = v311_persistent(&broker, client_id);
        assert!(present, "{client_id}");
        let payloads: Vec<Vec<u8>> = receive(&mut client, 3).into_iter().map(|publish| publish.payload.to_vec()).collect();
        assert_eq!(payloads, vec![b"one".to_vec(), b"two".to_vec(), client_id.as_bytes().to_vec()], "{client_id}");
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn expiry_counts_the_time_down_a_crash_sends_the_will_and_a_clean_start_ends_the_session() {
    let dir = data_dir("expiry");
    let broker = start_on(&dir, "2");
    // Expires after 1 s offline.
    let mut short = broker.raw_v5();
    let properties = Properties { session_expiry_interval: Some(1), ..Properties::default() };
    assert_eq!(short.connect_with_properties("short-lived", true, 60, properties).code, 0);
    short.subscribe(&[("x", QoS::AtLeastOnce)]);
    short.disconnect();
    // Will be replaced by a clean start.
    let (mut replaced, _) = v311_persistent(&broker, "replaced");
    replaced.subscribe(&[("x", QoS::AtLeastOnce)]);
    replaced.disconnect();
    let mut clean = broker.raw();
    assert_eq!(clean.connect("replaced", true, 60, None).code, 0);
    clean.disconnect();
    // A watcher for wills, offline; and a client with a will, online when the broker dies.
    let (mut watcher, _) = v311_persistent(&broker, "will-watcher");
    watcher.subscribe(&[("wills/#", QoS::AtLeastOnce)]);
    watcher.disconnect();
    let mut dying = broker.raw_v5();
    let will = common::will("wills/dying", b"gone", QoS::AtLeastOnce, false);
    let connect = dying.connect_packet("dying", false, 60, Some(will));
    let connect = match connect {
        Packet::Connect(mut connect) => {
            connect.properties.session_expiry_interval = Some(3600);
            Packet::Connect(connect)
        }
        other => other,
    };
    assert_eq!(dying.connect_sending(connect).code, 0);
    std::thread::sleep(SETTLE);
    kill_9(broker);
    std::thread::sleep(Duration::from_millis(1200));

    let broker = start_on(&dir, "2");
    let (_, present) = v5_persistent(&broker, "short-lived", false);
    assert!(!present, "its second ran out while the broker was down");
    let (_, present) = v311_persistent(&broker, "replaced");
    assert!(!present, "the clean start ended it");
    let (mut watcher, present) = v311_persistent(&broker, "will-watcher");
    assert!(present);
    let wills = receive(&mut watcher, 1);
    assert_eq!((&wills[0].topic[..], &wills[0].payload[..]), (&b"wills/dying"[..], &b"gone"[..]));
    let (_, present) = v5_persistent(&broker, "dying", false);
    assert!(present, "its session outlives the lost connection");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn only_the_newest_generation_of_session_logs_is_left() {
    let dir = data_dir("generations");
    let mut broker = start_on(&dir, "2");
    let (mut client, _) = v311_persistent(&broker, "gen");
    client.subscribe(&[("g", QoS::AtLeastOnce)]);
    client.disconnect();
    assert!(broker.terminate().is_some_and(|status| status.success()));
    let mut broker = start_on(&dir, "1");
    std::thread::sleep(SETTLE);
    assert!(broker.terminate().is_some_and(|status| status.success()));
    let mut logs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("sessions-"))
        .collect();
    logs.sort();
    assert_eq!(logs, vec!["sessions-2-0.log".to_string()], "the first run's two logs were removed");
    let broker = start_on(&dir, "2");
    assert!(v311_persistent(&broker, "gen").1);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = ProtocolVersion::V5;
}

/// The data directory fills up (a file-size limit stands in for a full disk: the writes
/// fail with EFBIG): the broker logs it, keeps serving, refuses QoS 1/2 publishes (5.0
/// PUBACK 0x97, 3.1.1 closed) instead of acknowledging what it cannot store, recovers
/// when there is room again, and has lost nothing it acknowledged.
#[test]
fn a_full_disk_refuses_durable_publishes_keeps_serving_and_recovers() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let dir = data_dir("full");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.with_extension("log");
    const FILE_BYTES_MAX: u64 = 64 << 10;
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    command
        .args(["--listen", "127.0.0.1:0", "--cores", "1", "--log", "warn", "--durability", "sync"])
        .arg("--data-dir")
        .arg(&dir)
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    // SAFETY: only getrlimit/setrlimit between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit);
            limit.rlim_cur = FILE_BYTES_MAX;
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut broker = Broker::spawn(&mut command);

    let (mut subscriber, _) = v5_persistent(&broker, "full-sub", true);
    subscriber.subscribe(&[("full/#", QoS::AtLeastOnce)]);
    subscriber.disconnect();
    let mut live = broker.client_v5("live-sub");
    live.subscribe(&[("live/#", QoS::AtMostOnce)]);

    // Publish 1 KiB messages until the broker refuses one; it queues them all for the
    // offline subscriber, so the session log passes the limit after some 60.
    let payload = |n: u32| {
        let mut bytes = format!("{n}:").into_bytes();
        bytes.resize(1024, b'x');
        Bytes::from(bytes)
    };
    let mut acknowledged = Vec::new();
    let mut publisher = broker.client_v5("full-pub");
    let mut refused = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0u32;
    while !refused {
        assert!(Instant::now() < deadline, "never refused; {} acknowledged", acknowledged.len());
        n += 1;
        let id = PacketId::new((n % 60_000 + 1) as u16).unwrap();
        publisher.send(&Packet::Publish(Publish::acknowledged(Bytes::from_static(b"full/x"), payload(n), QoS::AtLeastOnce, id)));
        match publisher.try_recv(Duration::from_secs(2)) {
            Some(Packet::PubAck(ack)) if ack.reason.0 == 0 => acknowledged.push(n),
            Some(Packet::PubAck(ack)) => {
                assert_eq!(ack.reason, ringmq::protocol::ReasonCode::QUOTA_EXCEEDED);
                refused = true;
            }
            // Held output dropped when the write failed: the connection closes unanswered.
            _ => publisher = broker.client_v5("full-pub"),
        }
    }
    assert!(acknowledged.len() > 20, "{} acknowledged before the disk filled", acknowledged.len());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("writing to the data directory failed"), "{logged}");
    // 3.1.1 cannot be told: its connection closes.
    let mut old = broker.client("full-pub-311", true);
    old.publish_raw("full/x", QoS::AtLeastOnce, false);
    let mut seen = Vec::new();
    assert!(old.closed_within(common::WAIT, &mut seen), "{seen:?}");
    // QoS 0 is still served.
    let mut quick = broker.client_v5("quick-pub");
    quick.publish("live/x", b"still serving", QoS::AtMostOnce, false, 0);
    assert_eq!(&live.recv_publish().payload[..], b"still serving");

    // Room again: the next commit rewrites the log and publishes are acknowledged again.
    // SAFETY: prlimit on our own child process, with a valid rlimit.
    unsafe {
        let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::prlimit(broker.pid() as libc::pid_t, libc::RLIMIT_FSIZE, std::ptr::null(), &mut current);
        let raised = libc::rlimit { rlim_cur: current.rlim_max, ..unlimited };
        assert_eq!(libc::prlimit(broker.pid() as libc::pid_t, libc::RLIMIT_FSIZE, &raised, std::ptr::null_mut()), 0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "never recovered");
        n += 1;
        let id = PacketId::new((n % 60_000 + 1) as u16).unwrap();
        publisher.send(&Packet::Publish(Publish::acknowledged(Bytes::from_static(b"full/x"), payload(n), QoS::AtLeastOnce, id)));
        match publisher.try_recv(Duration::from_secs(2)) {
            Some(Packet::PubAck(ack)) if ack.reason.0 == 0 => {
                acknowledged.push(n);
                break;
            }
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
            None => publisher = broker.client_v5("full-pub"),
        }
    }
    assert!(broker.terminate().is_some_and(|status| status.success()));

    // Everything acknowledged, before the disk filled and after, is there.
    let broker = start_on(&dir, "1");
    let (mut subscriber, present) = v5_persistent(&broker, "full-sub", false);
    assert!(present);
    let mut got = std::collections::BTreeSet::new();
    while let Some(packet) = subscriber.try_recv(Duration::from_millis(500)) {
        if let Packet::Publish(publish) = packet {
            subscriber.ack(&publish);
            let text = String::from_utf8_lossy(&publish.payload[..8]).into_owned();
            got.insert(text.split(':').next().unwrap().parse::<u32>().unwrap());
        }
    }
    let missing: Vec<u32> = acknowledged.iter().copied().filter(|n| !got.contains(n)).collect();
    assert!(missing.is_empty(), "acknowledged, then lost: {missing:?}");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}

/// A shared-subscription member and a will waiting for its delay come back too: the group
/// is rebuilt on every shard, and the will goes out when its delay (counted across the
/// restart) is over, not at once.
#[test]
fn shared_membership_and_a_delayed_will_survive_kill_9() {
    let dir = data_dir("shared-will");
    let broker = start_on(&dir, "2");
    let (mut member, _) = v5_persistent(&broker, "shared-member", true);
    member.subscribe(&[("$share/workers/jobs/+", QoS::AtLeastOnce)]);
    member.disconnect();
    let (mut watcher, _) = v311_persistent(&broker, "delayed-watcher");
    watcher.subscribe(&[("wills/delayed", QoS::AtLeastOnce)]);
    watcher.disconnect();
    let mut dying = broker.raw_v5();
    let mut will = common::will("wills/delayed", b"late", QoS::AtLeastOnce, false);
    will.properties.will_delay_interval = Some(3);
    let connect = match dying.connect_packet("delayed", false, 60, Some(will)) {
        Packet::Connect(mut connect) => {
            connect.properties.session_expiry_interval = Some(3600);
            Packet::Connect(connect)
        }
        other => other,
    };
    assert_eq!(dying.connect_sending(connect).code, 0);
    // Gone without DISCONNECT: the will waits 3 s.
    dying.drop_abruptly();
    let lost_at = Instant::now();
    std::thread::sleep(SETTLE);
    kill_9(broker);

    let broker = start_on(&dir, "1");
    let mut publisher = broker.client("jobs-pub", true);
    for n in 0..5u16 {
        publisher.publish(&format!("jobs/{n}"), b"job", QoS::AtLeastOnce, false, n + 1);
    }
    let (mut member, present) = v5_persistent(&broker, "shared-member", false);
    assert!(present);
    assert_eq!(receive(&mut member, 5).len(), 5, "the group's only member gets every job");
    let (mut watcher, _) = v311_persistent(&broker, "delayed-watcher");
    let will = receive(&mut watcher, 1);
    assert_eq!(&will[0].payload[..], b"late");
    let after = lost_at.elapsed();
    assert!(after >= Duration::from_millis(2500), "the will waited for its delay: {after:?}");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A session log that grows past its compaction threshold is rewritten whole and goes on
/// from there; what it holds is the same after a crash.
#[test]
fn a_session_log_is_compacted_and_still_recovers() {
    let dir = data_dir("compact");
    let broker = start_on(&dir, "1");
    let (mut online, _) = v5_persistent(&broker, "busy-sub", true);
    online.subscribe(&[("busy/#", QoS::AtLeastOnce)]);
    let (mut offline, _) = v311_persistent(&broker, "idle-sub");
    offline.subscribe(&[("busy/kept", QoS::AtLeastOnce)]);
    offline.disconnect();
    let payload = vec![b'p'; 1024];
    let mut publisher = broker.client_v5("busy-pub");
    // Some 6 MiB of events and messages for the online subscriber, who acknowledges them.
    for n in 0..6000u32 {
        publisher.publish("busy/churn", &payload, QoS::AtLeastOnce, false, (n % 60_000 + 1) as u16);
        let delivered = online.recv_publish();
        online.ack(&delivered);
    }
    publisher.publish("busy/kept", b"keep me", QoS::AtLeastOnce, false, 1);
    assert_eq!(&receive(&mut online, 1)[0].payload[..], b"keep me");
    std::thread::sleep(SETTLE);
    let log_bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("sessions-"))
        .map(|entry| entry.metadata().unwrap().len())
        .sum();
    assert!(log_bytes < 4 << 20, "compacted: {log_bytes} bytes after ~6 MiB written");
    kill_9(broker);

    let broker = start_on(&dir, "1");
    let (mut idle, present) = v311_persistent(&broker, "idle-sub");
    assert!(present);
    assert_eq!(&receive(&mut idle, 1)[0].payload[..], b"keep me");
    let (mut busy, present) = v5_persistent(&broker, "busy-sub", false);
    assert!(present);
    busy.assert_silent(Duration::from_millis(300));
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A session that moved between shards and then ended stays ended after its new shard's
/// log is compacted: the end is written again by every compaction, because the old
/// instance is still in the first shard's log.
#[test]
fn an_end_survives_compaction_while_an_older_instance_sits_in_another_log() {
    let dir = data_dir("tombstone");
    let broker = Broker::start(&["--data-dir", dir.to_str().unwrap(), "--fsync-interval-ms", INTERVAL, "--cores", "2", "--steer", "cpu"]);
    // Opened on one shard, moved to the other, ended there by a clean start.
    common::on_cpu(0, || {
        let (mut ghost, _) = v311_persistent(&broker, "ghost");
        ghost.subscribe(&[("ghost/t", QoS::AtLeastOnce)]);
        ghost.disconnect();
    });
    common::on_cpu(1, || {
        let (ghost, present) = v311_persistent(&broker, "ghost");
        assert!(present);
        ghost.disconnect();
        let mut clean = broker.raw();
        assert_eq!(clean.connect("ghost", true, 60, None).code, 0);
        clean.disconnect();
        // Some 6 MiB through the second shard: its log is compacted.
        let (mut online, _) = v5_persistent(&broker, "churn-sub", true);
        online.subscribe(&[("churn", QoS::AtLeastOnce)]);
        let mut publisher = broker.client_v5("churn-pub");
        let payload = vec![b'p'; 1024];
        for n in 0..6000u32 {
            publisher.publish("churn", &payload, QoS::AtLeastOnce, false, (n % 60_000 + 1) as u16);
            let delivered = online.recv_publish();
            online.ack(&delivered);
        }
    });
    std::thread::sleep(SETTLE);
    kill_9(broker);
    let broker = start_on(&dir, "2");
    let (_, present) = v311_persistent(&broker, "ghost");
    assert!(!present, "the ended session came back from the first shard's log");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
