//! The ACL file (Mosquitto's format): each rule kind against the real binary, retained
//! deliveries filtered, reload on SIGHUP (a bad file keeps the old rules; the password
//! file is reloaded too), and a clear error naming the file at start.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, RawClient};
use ringmq::protocol::{Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode};

const ACL: &str = "\
topic read public/#
topic read $SYS/#
user alice
topic readwrite alice/#
topic readwrite shared/#
topic deny shared/private
user bob
topic readwrite shared/#
topic write inbox/alice
pattern write devices/%c/status
pattern read users/%u/#
";

struct AclFile(std::path::PathBuf);

impl AclFile {
    fn new(contents: &str) -> AclFile {
        let path = std::env::temp_dir().join(format!("ringmq-acl-{}-{}", std::process::id(), common::rand_suffix()));
        std::fs::write(&path, contents).expect("write ACL file");
        AclFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf8 path")
    }
}

impl Drop for AclFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn client(broker: &Broker, version: ProtocolVersion, client_id: &str, username: Option<&str>) -> RawClient {
    let mut client = RawClient::open(broker.addr, version);
    let connect = Connect {
        username: username.map(|name| Bytes::copy_from_slice(name.as_bytes())),
        ..Connect::new(version, Bytes::copy_from_slice(client_id.as_bytes()))
    };
    assert_eq!(client.connect_sending(Packet::Connect(Box::new(connect))).code, 0, "CONNACK for {client_id}");
    client
}

/// A 5.0 QoS 1 PUBLISH's PUBACK reason code.
fn puback_reason(client: &mut RawClient, topic: &str, retain: bool, id: u16) -> ReasonCode {
    let publish = Publish::acknowledged(
        Bytes::copy_from_slice(topic.as_bytes()),
        Bytes::from_static(b"m"),
        QoS::AtLeastOnce,
        PacketId::new(id).expect("id"),
    );
    client.send(&Packet::Publish(Publish { retain, ..publish }));
    match client.expect(|packet| matches!(packet, Packet::PubAck(_))) {
        Packet::PubAck(ack) => ack.reason,
        _ => unreachable!(),
    }
}

#[test]
fn each_rule_kind_allows_and_denies_as_mosquitto_does() {
    let file = AclFile::new(ACL);
    let broker = Broker::start(&["--acl-file", file.path()]);
    let mut alice = client(&broker, ProtocolVersion::V5, "alice-phone", Some("alice"));
    let mut bob = client(&broker, ProtocolVersion::V5, "bob-laptop", Some("bob"));

    // Subscriptions: a read rule must cover the whole filter.
    let suback = alice.subscribe(&[("alice/#", QoS::AtLeastOnce), ("#", QoS::AtLeastOnce), ("users/alice/+", QoS::AtLeastOnce)]);
    assert_eq!(suback.codes, vec![ReasonCode(1), ReasonCode::NOT_AUTHORIZED, ReasonCode(1)]);
    // Write: readwrite yes, someone else's topic no (5.0 hears 0x87).
    assert_eq!(puback_reason(&mut alice, "alice/notes", false, 1), ReasonCode::SUCCESS);
    assert_eq!(alice.recv_publish().topic, Bytes::from_static(b"alice/notes"));
    assert_eq!(puback_reason(&mut alice, "inbox/alice", false, 2), ReasonCode::NOT_AUTHORIZED);
    // Write-only: bob may publish to alice's inbox but not subscribe to it.
    assert_eq!(puback_reason(&mut bob, "inbox/alice", false, 3), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    assert_eq!(bob.subscribe(&[("inbox/alice", QoS::AtMostOnce)]).codes, vec![ReasonCode::NOT_AUTHORIZED]);
    // %u: bob reads users/bob/..., not users/alice/...
    assert_eq!(puback_reason(&mut bob, "users/alice/x", false, 4), ReasonCode::NOT_AUTHORIZED, "read-only pattern");
    assert_eq!(bob.subscribe(&[("users/alice/#", QoS::AtMostOnce)]).codes, vec![ReasonCode::NOT_AUTHORIZED]);

    // %c for an anonymous client; the anonymous section is read-only.
    let mut device = client(&broker, ProtocolVersion::V5, "dev1", None);
    assert_eq!(puback_reason(&mut device, "devices/dev1/status", false, 5), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    assert_eq!(puback_reason(&mut device, "devices/dev2/status", false, 6), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(puback_reason(&mut device, "public/news", false, 7), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(device.subscribe(&[("public/#", QoS::AtMostOnce)]).codes, vec![ReasonCode(0)]);

    // 3.1.1: a denied PUBLISH is acknowledged and dropped; a denied SUBSCRIBE gets 0x80.
    let mut old = client(&broker, ProtocolVersion::V311, "alice-old", Some("alice"));
    old.publish("inbox/alice", b"dropped", QoS::AtLeastOnce, false, 8);
    assert_eq!(old.subscribe(&[("bob/#", QoS::AtMostOnce)]).codes, vec![ReasonCode::UNSPECIFIED_ERROR]);
    broker.wait_for_counters("denials counted", |c| c.total("publishes_denied_acl") >= 4 && c.total("subscriptions_denied_acl") >= 4);
}

#[test]
fn deny_wins_on_delivery_too_and_retained_messages_are_filtered() {
    let file = AclFile::new(ACL);
    let broker = Broker::start(&["--acl-file", file.path()]);
    let mut bob = client(&broker, ProtocolVersion::V5, "bob-laptop", Some("bob"));
    assert_eq!(puback_reason(&mut bob, "shared/private", true, 1), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    assert_eq!(puback_reason(&mut bob, "shared/open", true, 2), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    // alice may subscribe to shared/# but never reads shared/private: not as a retained
    // message, not live.
    let mut alice = client(&broker, ProtocolVersion::V5, "alice-phone", Some("alice"));
    assert_eq!(alice.subscribe(&[("shared/#", QoS::AtLeastOnce)]).codes, vec![ReasonCode(1)]);
    let retained = alice.recv_publish();
    assert_eq!(retained.topic, Bytes::from_static(b"shared/open"));
    alice.ack(&retained);
    assert_eq!(puback_reason(&mut bob, "shared/private", false, 3), ReasonCode::SUCCESS);
    assert_eq!(puback_reason(&mut bob, "shared/open", false, 4), ReasonCode::SUCCESS);
    let live = alice.recv_publish();
    assert_eq!(live.topic, Bytes::from_static(b"shared/open"));
    alice.ack(&live);
    alice.assert_silent(Duration::from_millis(300));
}

#[test]
fn sighup_reloads_the_acl_and_a_bad_file_keeps_the_old_rules() {
    let file = AclFile::new("user alice\ntopic readwrite alice/#\n");
    // Its log goes to a file: the failed reload is an event to wait for, not a pause.
    let log = AclFile::new("");
    let mut broker = common::launcher::BrokerProcess::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--listen", "127.0.0.1:0", "--cores", "2", "--log", "warn", "--acl-file", file.path()])
            .stderr(std::fs::File::create(&log.0).expect("log file")),
    );
    let mut alice = client(&broker, ProtocolVersion::V5, "alice-phone", Some("alice"));
    assert_eq!(puback_reason(&mut alice, "news/today", false, 1), ReasonCode::NOT_AUTHORIZED);

    std::fs::write(&file.0, "user alice\ntopic readwrite alice/#\ntopic write news/#\n").expect("rewrite");
    broker.signal(libc::SIGHUP);
    // The connected client is authorized by the new file within a tick or two.
    let deadline = Instant::now() + common::WAIT;
    let mut id = 2;
    while puback_reason(&mut alice, "news/today", false, id) == ReasonCode::NOT_AUTHORIZED {
        assert!(Instant::now() < deadline, "the reloaded ACL was never applied");
        std::thread::sleep(Duration::from_millis(50));
        id += 1;
    }

    std::fs::write(&file.0, "user alice\nnonsense here\n").expect("break the file");
    broker.signal(libc::SIGHUP);
    // A failed reload changes nothing, so once it is logged the old rules are final.
    let deadline = Instant::now() + common::WAIT;
    while !std::fs::read_to_string(&log.0).unwrap_or_default().contains("reload failed") {
        assert!(Instant::now() < deadline, "the failed reload was never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(puback_reason(&mut alice, "news/today", false, 100), ReasonCode::NO_MATCHING_SUBSCRIBERS, "the old rules stay");
    assert!(broker.is_running(), "SIGHUP never stops the broker");
}

#[test]
fn a_bad_acl_file_at_start_is_an_error_naming_the_file_and_line() {
    let file = AclFile::new("user alice\ntopic readwrite alice/#/x\n");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--listen", "127.0.0.1:0", "--acl-file", file.path()])
        .output()
        .expect("run ringmq");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(file.path()) && stderr.contains("line 2"), "{stderr}");
}

#[test]
fn sighup_reloads_the_password_file() {
    let line = |password: &str| ringmq::auth::hash_password_line("alice", password.as_bytes(), b"0123456789ab", 101);
    let file = AclFile::new(&line("old"));
    let broker = Broker::start(&["--password-file", file.path()]);
    let connack = |password: &str| {
        let mut client = RawClient::open(broker.addr, ProtocolVersion::V311);
        let connect = Connect {
            username: Some(Bytes::from_static(b"alice")),
            password: Some(Bytes::copy_from_slice(password.as_bytes())),
            ..Connect::v311(Bytes::from_static(b"alice-client"))
        };
        client.connect_sending(Packet::Connect(Box::new(connect))).code
    };
    assert_eq!(connack("old"), 0);
    assert_eq!(connack("new"), 4);
    std::fs::write(&file.0, line("new")).expect("rewrite");
    broker.signal(libc::SIGHUP);
    let deadline = Instant::now() + common::WAIT;
    while connack("new") != 0 {
        assert!(Instant::now() < deadline, "the new password file was never used");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connack("old"), 4, "the old password is gone");
}

#[test]
fn a_will_the_client_could_not_publish_refuses_the_connect() {
    let file = AclFile::new(ACL);
    let broker = Broker::start(&["--acl-file", file.path()]);
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut client = RawClient::open(broker.addr, version);
        let connect = Connect {
            username: Some(Bytes::from_static(b"alice")),
            will: Some(common::will("alarms/fire", b"help", QoS::AtMostOnce, true)),
            ..Connect::new(version, Bytes::from_static(b"alice-will"))
        };
        let expected = if version.is_v5() { ReasonCode::NOT_AUTHORIZED.0 } else { 5 };
        assert_eq!(client.connect_sending(Packet::Connect(Box::new(connect))).code, expected, "{version:?}");
    }
    let mut allowed = RawClient::open(broker.addr, ProtocolVersion::V5);
    let connect = Connect {
        username: Some(Bytes::from_static(b"alice")),
        will: Some(common::will("alice/gone", b"bye", QoS::AtMostOnce, false)),
        ..Connect::v5(Bytes::from_static(b"alice-will-ok"))
    };
    assert_eq!(allowed.connect_sending(Packet::Connect(Box::new(connect))).code, 0);
}
