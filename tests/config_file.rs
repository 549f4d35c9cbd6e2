//! The configuration file, the RINGMQ_* environment and the flags, on the real binary: a
//! setting from each layer reaches the broker's behaviour, the higher layer wins, and
//! `--check-config` reports without starting anything.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::RawClient;
use common::launcher::BrokerProcess;
use ringmq::protocol::ProtocolVersion;

fn config_file(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ringmq-config-{}-{}.toml", std::process::id(), common::rand_suffix()));
    std::fs::write(&path, text).expect("write the file");
    path
}

/// The Maximum QoS the broker announces to a 5.0 client (absent: 2).
fn announced_max_qos(addr: SocketAddr) -> u8 {
    let mut client = RawClient::open(addr, ProtocolVersion::V5);
    let connack = client.connect("qos-probe", true, 30, None);
    assert_eq!(connack.code, 0);
    connack.properties.maximum_qos.unwrap_or(2)
}

fn broker(file: &std::path::Path, environment: &[(&str, &str)], flags: &[&str]) -> BrokerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    command.args(["-c", file.to_str().unwrap(), "--cores", "1", "--log", "warn"]).args(flags).stderr(Stdio::inherit());
    for (name, value) in environment {
        command.env(name, value);
    }
    BrokerProcess::spawn(&mut command)
}

#[test]
fn each_layer_reaches_the_broker_and_the_higher_one_wins() {
    let file = config_file("max_qos = 1\n\n[[listener]]\nurl = \"mqtt://127.0.0.1:0\"\n\n[[listener]]\nurl = \"ws://127.0.0.1:0/mqtt\"\n");
    let from_file = broker(&file, &[], &[]);
    assert_eq!(from_file.addrs.len(), 2, "both [[listener]] tables are served");
    assert_eq!(announced_max_qos(from_file.addr), 1, "the file's max_qos");
    drop(from_file);
    let from_environment = broker(&file, &[("RINGMQ_MAX_QOS", "0")], &[]);
    assert_eq!(announced_max_qos(from_environment.addr), 0, "the environment over the file");
    drop(from_environment);
    let from_flags = broker(&file, &[("RINGMQ_MAX_QOS", "0")], &["--max-qos", "2", "--listener", "mqtt://127.0.0.1:0"]);
    assert_eq!(from_flags.addrs.len(), 1, "--listener replaces the file's listeners");
    assert_eq!(announced_max_qos(from_flags.addr), 2, "the flag over both");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn check_config_prints_the_effective_settings_or_the_error_and_starts_nothing() {
    let file = config_file("inflight_max = 16\nlisten = \"127.0.0.1:1\"\n");
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["-c", file.to_str().unwrap(), "--check-config", "--sys-interval-s", "3"])
        .env("RINGMQ_QUEUED_MESSAGES_MAX", "500")
        .output()
        .expect("run --check-config");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.lines().any(|line| line.starts_with("inflight_max = 16") && line.ends_with("# file, line 1")), "{printed}");
    assert!(printed.lines().any(|line| line.starts_with("queued_messages_max = 500") && line.ends_with("# RINGMQ_QUEUED_MESSAGES_MAX")));
    assert!(printed.lines().any(|line| line.starts_with("sys_interval_s = 3") && line.ends_with("# command line")));
    assert!(printed.lines().any(|line| line.starts_with("receive_maximum = 1024") && line.ends_with("# default")));
    assert!(printed.contains("configuration OK"));
    assert!(!printed.contains("listening"), "nothing was started");

    // A setting that cannot work is reported, with the check that failed.
    let exposed = config_file("listen = \"0.0.0.0:1\"\n");
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq")).args(["-c", exposed.to_str().unwrap(), "--check-config"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a loopback address"));
    // A certificate file that does not exist is found by the check, not at the first handshake.
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "--listener",
            "mqtts://127.0.0.1:1",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/cert.pem"));
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&exposed);
}

#[test]
fn sighup_changes_a_live_limit_for_connected_clients() {
    let file = config_file("subscriptions_per_client_max = 1\n");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    command.args(["-c", file.to_str().unwrap(), "--listen", "127.0.0.1:0", "--cores", "1", "--log", "warn"]).stderr(Stdio::inherit());
    let broker = BrokerProcess::spawn(&mut command);
    let mut client = RawClient::open(broker.addr, ProtocolVersion::V5);
    assert_eq!(client.connect("limited", true, 30, None).code, 0);
    let granted = |client: &mut RawClient, filter: &str| client.subscribe(&[(filter, ringmq::protocol::QoS::AtMostOnce)]).codes[0].0;
    assert_eq!(granted(&mut client, "a"), 0);
    assert_eq!(granted(&mut client, "b"), 0x97, "one filter per client");
    std::fs::write(&file, "subscriptions_per_client_max = 3\n").unwrap();
    broker.signal(libc::SIGHUP);
    // Shards take new limits at their next tick (100 ms).
    let deadline = std::time::Instant::now() + common::WAIT;
    while granted(&mut client, "b") != 0 {
        assert!(std::time::Instant::now() < deadline, "the new limit never applied");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(granted(&mut client, "c"), 0);
    assert_eq!(granted(&mut client, "d"), 0x97, "three now, on the same connection");
    let _ = std::fs::remove_file(&file);
}
