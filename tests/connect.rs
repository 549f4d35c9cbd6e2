//! CONNECT / CONNACK: return codes 0-5 where they apply, session present, client id rules,
//! the connect timeout, and what may (not) come first or twice.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, RawClient, WAIT, on_cpu};
use ringmq::protocol::{Connect, Packet, ProtocolVersion};

#[test]
fn session_present_follows_clean_session() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw();
    let connack = client.connect("sp-client", false, 60, None);
    assert_eq!((connack.code, connack.session_present), (0, false), "no session existed");
    client.disconnect();

    let mut client = broker.raw();
    let connack = client.connect("sp-client", false, 60, None);
    assert_eq!((connack.code, connack.session_present), (0, true), "persistent session kept");
    client.disconnect();

    let mut client = broker.raw();
    let connack = client.connect("sp-client", true, 60, None);
    assert_eq!((connack.code, connack.session_present), (0, false), "clean session discards it");
    client.disconnect();

    let mut client = broker.raw();
    let connack = client.connect("sp-client", false, 60, None);
    assert!(!connack.session_present, "the clean session ended with its connection");
}

#[test]
fn unsupported_protocol_level_gets_return_code_1_then_close() {
    let broker = Broker::start(&[]);
    // MQTT, level 6
    let mut client = broker.raw();
    client.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 0]);
    let mut seen = Vec::new();
    assert!(client.closed_within(WAIT, &mut seen));
    assert!(matches!(&seen[..], [Packet::ConnAck(c)] if c.code == 1 && !c.session_present), "{seen:?}");
    // MQTT 3.1 (MQIsdp, level 3)
    let mut client = broker.raw();
    client.send_bytes(&[0x10, 14, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 0]);
    let mut seen = Vec::new();
    assert!(client.closed_within(WAIT, &mut seen));
    assert!(matches!(&seen[..], [Packet::ConnAck(c)] if c.code == 1), "{seen:?}");
}

#[test]
fn empty_client_id_needs_clean_session() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw();
    let connack = client.connect("", false, 60, None);
    assert_eq!(connack.code, 2, "identifier rejected");
    client.assert_closed();

    let mut client = broker.raw();
    assert_eq!(client.connect("", true, 60, None).code, 0, "accepted with a generated id");
    client.send(&Packet::PingReq);
    assert_eq!(client.recv(), Packet::PingResp);
}

fn hash_password_line(user: &str, password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--hash-password", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ringmq --hash-password");
    child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("write password");
    let output = child.wait_with_output().expect("hash output");
    assert!(output.status.success());
    String::from_utf8(output.stdout).expect("utf8")
}

fn connect_with(client: &mut RawClient, username: Option<&str>, password: Option<&str>) -> u8 {
    client.send(&Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V311,
        clean_start: true,
        keep_alive_s: 60,
        properties: Default::default(),
        client_id: Bytes::from_static(b"auth-client"),
        will: None,
        username: username.map(|u| Bytes::copy_from_slice(u.as_bytes())),
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
    })));
    match client.recv() {
        Packet::ConnAck(connack) => connack.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn password_file_gives_return_codes_4_and_5() {
    let dir = std::env::temp_dir().join(format!("ringmq-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("passwd");
    std::fs::write(&file, hash_password_line("alice", "s3cret")).expect("write password file");
    let path = file.to_str().expect("utf8 path");

    let broker = Broker::start(&["--password-file", path]);
    let mut client = broker.raw();
    assert_eq!(connect_with(&mut client, Some("alice"), Some("s3cret")), 0);
    let mut client = broker.raw();
    assert_eq!(connect_with(&mut client, Some("alice"), Some("wrong")), 4);
    client.assert_closed();
    let mut client = broker.raw();
    assert_eq!(connect_with(&mut client, Some("mallory"), Some("s3cret")), 4);
    client.assert_closed();
    let mut client = broker.raw();
    assert_eq!(connect_with(&mut client, None, None), 5, "anonymous refused when a password file is set");
    client.assert_closed();

    let open = Broker::start(&["--password-file", path, "--allow-anonymous"]);
    let mut client = open.raw();
    assert_eq!(connect_with(&mut client, None, None), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_password_file_stops_start_up_with_a_message() {
    let dir = std::env::temp_dir().join(format!("ringmq-badauth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("passwd");
    std::fs::write(&file, "alice:plaintext\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--listen", "127.0.0.1:0", "--password-file", file.to_str().expect("utf8")])
        .output()
        .expect("run ringmq");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 1"), "stderr: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn socket_without_connect_is_closed_after_the_timeout() {
    let broker = Broker::start(&["--connect-timeout-s", "1"]);
    let mut client = broker.raw();
    let started = Instant::now();
    client.assert_closed();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "closed too early: {waited:?}");
    assert!(waited < Duration::from_secs(4), "closed too late: {waited:?}");
}

#[test]
fn first_packet_must_be_connect() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw();
    client.send(&Packet::PingReq);
    let mut seen = Vec::new();
    assert!(client.closed_within(WAIT, &mut seen));
    assert!(seen.is_empty(), "nothing is answered before CONNECT: {seen:?}");
}

#[test]
fn second_connect_closes_the_connection() {
    let broker = Broker::start(&[]);
    let mut client = broker.client("twice", true);
    let again = client.connect_packet("twice", true, 60, None);
    client.send(&again);
    client.assert_closed();
}

#[test]
fn steer_cpu_puts_connections_made_on_one_cpu_on_one_shard() {
    let broker = Broker::start(&["--steer", "cpu"]);
    // Loopback handles the SYN on the connecting CPU: everything from one CPU lands on one
    // shard (by the kernel's hash, 30 connections would split, all-on-one once in 2^29).
    let _clients = on_cpu(0, || (0..30).map(|i| broker.client(&format!("steered-{i}"), true)).collect::<Vec<_>>());
    // The counter watcher's own connection may land on either shard.
    // Both shards' counters must have arrived: one not yet seen is not a zero.
    let counters = broker.wait_for_counters("30 connections on one shard", |c| {
        let (Some(a), Some(b)) = (c.get(0, "clients_connected"), c.get(1, "clients_connected")) else { return false };
        a + b == 31 && ((a >= 30 && b <= 1) || (b >= 30 && a <= 1))
    });
    assert_eq!(counters.total("clients_connected"), 31);
}

#[test]
fn password_hashing_does_not_stall_other_clients_of_the_shard() {
    // Slow enough that a hash on the shard thread would be plain to see: ~1 s per check.
    const ITERATIONS: u32 = 1_500_000;
    let dir = std::env::temp_dir().join(format!("ringmq-slow-hash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("passwd");
    std::fs::write(&file, ringmq::auth::hash_password_line("slow", b"right", b"0123456789ab", ITERATIONS)).expect("write");
    let broker = Broker::start(&["--cores", "1", "--password-file", file.to_str().expect("utf8"), "--allow-anonymous"]);
    let mut bystander = broker.client("bystander", true);

    let mut guessers: Vec<RawClient> = (0..2).map(|_| broker.raw()).collect();
    for guesser in &mut guessers {
        let mut packet = guesser.connect_packet("guesser", true, 60, None);
        if let Packet::Connect(connect) = &mut packet {
            connect.username = Some(bytes::Bytes::from_static(b"slow"));
            connect.password = Some(bytes::Bytes::from_static(b"wrong"));
        }
        guesser.send(&packet);
    }
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    bystander.send(&Packet::PingReq);
    assert_eq!(bystander.recv(), Packet::PingResp);
    assert!(started.elapsed() < Duration::from_millis(400), "answered while the hashes run: {:?}", started.elapsed());
    for guesser in &mut guessers {
        let Packet::ConnAck(connack) = guesser.try_recv(Duration::from_secs(20)).expect("CONNACK") else { panic!("expected CONNACK") };
        assert_eq!(connack.code, 4, "bad user name or password");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
