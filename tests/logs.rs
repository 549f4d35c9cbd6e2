//! The broker's log as an operator reads it: one JSON object per line with
//! `--log-format json`, a line per connect (with who, from where, how), refused connect,
//! takeover and disconnect; no terminal colour in a file; SIGHUP applies a new log filter
//! from the configuration file and names the settings that need a restart.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::RawClient;
use common::launcher::BrokerProcess;
use ringmq::protocol::{Connect, Packet, ProtocolVersion};
use serde_json::Value;

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the log file");
    assert!(!text.contains('\u{1b}'), "no terminal colour codes in a file:\n{text}");
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))).collect()
}

fn find<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["fields"]["message"] == message).collect()
}

/// Waits until the log holds `count` lines with `message` (the writer is asynchronous).
fn wait_for(path: &std::path::Path, message: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let lines = read_lines(path);
        if find(&lines, message).len() >= count {
            return lines;
        }
        assert!(Instant::now() < deadline, "no {count} `{message}` lines in:\n{lines:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connects_refusals_takeovers_and_disconnects_are_logged_as_json_and_sighup_reloads_the_filter() {
    let dir = std::env::temp_dir().join(format!("ringmq-logs-{}-{}", std::process::id(), common::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwords = dir.join("passwd");
    std::fs::write(&passwords, format!("{}\n", ringmq::auth::hash_password_line("alice", b"secret", &[7; 12], 101))).unwrap();
    let config = dir.join("ringmq.toml");
    std::fs::write(&config, format!("log = \"info\"\ninflight_max = 10\npassword_file = {:?}\n", passwords.to_str().unwrap())).unwrap();
    let log = dir.join("ringmq.log");
    let mut broker = BrokerProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["-c", config.to_str().unwrap(), "--listen", "127.0.0.1:0", "--cores", "2", "--log-format", "json"])
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap())),
    );
    let login = |client: &mut RawClient, id: &str, password: &'static [u8]| {
        let connect = Connect {
            keep_alive_s: 30,
            username: Some(Bytes::from_static(b"alice")),
            password: Some(Bytes::from_static(password)),
            ..Connect::new(ProtocolVersion::V5, Bytes::copy_from_slice(id.as_bytes()))
        };
        client.connect_sending(Packet::Connect(Box::new(connect))).code
    };
    let mut first = RawClient::open(broker.addr, ProtocolVersion::V5);
    assert_eq!(login(&mut first, "logged-client", b"secret"), 0);
    let mut second = RawClient::open(broker.addr, ProtocolVersion::V5);
    assert_eq!(login(&mut second, "logged-client", b"secret"), 0, "takes the first one over");
    let mut intruder = RawClient::open(broker.addr, ProtocolVersion::V5);
    assert_eq!(login(&mut intruder, "intruder", b"guess"), 0x86, "bad user name or password");
    second.disconnect();

    // The taken-over connection has its own line; the second one disconnects.
    let lines = wait_for(&log, "client disconnected", 1);
    let connected = find(&lines, "client connected");
    assert_eq!(connected.len(), 2, "{lines:#?}");
    let fields = &connected[0]["fields"];
    assert_eq!(fields["client_id"], "logged-client");
    assert_eq!(fields["user"], "alice");
    assert_eq!(fields["protocol"], "5.0");
    assert_eq!(fields["keep_alive_s"], 30);
    assert_eq!(fields["clean_start"], true);
    assert!(fields["address"].as_str().is_some_and(|address| address.starts_with("127.0.0.1:")), "{fields}");
    assert!(fields["shard"].is_u64());
    let taken = find(&lines, "client taken over by a new connection with its client id");
    assert_eq!(taken.len(), 1, "{lines:#?}");
    assert_eq!(taken[0]["fields"]["client_id"], "logged-client");
    let refused = find(&lines, "connect refused");
    assert_eq!(refused.len(), 1, "{lines:#?}");
    assert_eq!(refused[0]["fields"]["reason"], "bad user name or password");
    assert!(refused[0]["fields"]["address"].as_str().is_some_and(|address| address.starts_with("127.0.0.1:")));
    assert!(find(&lines, "client disconnected").iter().all(|line| line["fields"]["reason"].is_string()));

    // SIGHUP: the file now says warn (applied at once) and a new window (needs a restart).
    std::fs::write(&config, format!("log = \"warn\"\ninflight_max = 20\npassword_file = {:?}\n", passwords.to_str().unwrap())).unwrap();
    broker.signal(libc::SIGHUP);
    let lines = wait_for(&log, "SIGHUP: these settings changed and take effect only after a restart", 1);
    let restart = find(&lines, "SIGHUP: these settings changed and take effect only after a restart");
    assert_eq!(restart[0]["fields"]["settings"], "inflight_max");
    assert_eq!(restart[0]["level"], "WARN");
    // At warn, a connect is no longer logged.
    let before = find(&read_lines(&log), "client connected").len();
    let mut quiet = RawClient::open(broker.addr, ProtocolVersion::V5);
    assert_eq!(login(&mut quiet, "quiet-client", b"secret"), 0);
    quiet.disconnect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(find(&read_lines(&log), "client connected").len(), before, "the new filter is in force");
    assert!(broker.terminate().is_some_and(|status| status.success()), "SIGHUP left it running; SIGTERM stops it");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The overload actions an operator must be able to find afterwards: a publisher paused
/// for a stuck subscriber, and that subscriber disconnected once its timeout passes.
#[test]
fn a_slow_subscriber_disconnect_is_logged() {
    let dir = std::env::temp_dir().join(format!("ringmq-logs-slow-{}-{}", std::process::id(), common::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("ringmq.log");
    let broker = BrokerProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--listen", "127.0.0.1:0", "--cores", "1", "--log-format", "json"])
            .args(["--slow-subscriber-timeout-s", "1", "--queued-messages-max", "10"])
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap())),
    );
    let mut stuck = RawClient::open(broker.addr, ProtocolVersion::V5);
    assert_eq!(stuck.connect("stuck-subscriber", true, 60, None).code, 0);
    stuck.subscribe(&[("slow", ringmq::protocol::QoS::AtLeastOnce)]);
    // It never reads or acknowledges again; a publisher fills its queue and is paused.
    let mut publisher = RawClient::open(broker.addr, ProtocolVersion::V311);
    assert_eq!(publisher.connect("slow-publisher", true, 60, None).code, 0);
    let deadline = Instant::now() + common::WAIT;
    let mut sequence = 0u16;
    while find(&read_lines(&log), "disconnecting a subscriber whose queue stayed full").is_empty() {
        assert!(Instant::now() < deadline, "no slow-subscriber line:\n{:#?}", read_lines(&log));
        sequence = sequence % 60_000 + 1;
        publisher.publish("slow", b"m", ringmq::protocol::QoS::AtLeastOnce, false, sequence);
    }
    let lines = read_lines(&log);
    let line = find(&lines, "disconnecting a subscriber whose queue stayed full")[0];
    assert_eq!(line["fields"]["client_id"], "stuck-subscriber");
    let _ = std::fs::remove_dir_all(&dir);
}
