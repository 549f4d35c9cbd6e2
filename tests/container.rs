//! The container recipe in `tuning/container/`: the seccomp profile is applied by the
//! kernel to the real binary (as Docker or Kubernetes would apply it, just before exec) and
//! the broker serves TCP, TLS and TLS WebSocket clients, persists to `--data-dir`, answers
//! the metrics listener, reloads on SIGHUP and stops cleanly under it; the same profile
//! without io_uring stops the broker with a message naming the cause; the image's
//! configuration file passes `--check-config`.
//!
//! No Docker daemon is needed: the filter is compiled from the profile with seccompiler and
//! installed in the child between fork and exec.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::launcher::BrokerProcess;
use common::transport::{ClientStream, Pki, tls_connect, ws_connect};
use common::{RawClient, WAIT};
use ringmq::protocol::{Packet, ProtocolVersion, QoS};
use seccompiler::{BpfProgram, TargetArch};

fn container_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/container").join(name)
}

/// The profile's allowed syscall names, after checking it is an allowlist in Docker's format.
fn allowed_syscalls() -> Vec<String> {
    let text = std::fs::read_to_string(container_file("seccomp-ringmq.json")).expect("read the seccomp profile");
    let profile: serde_json::Value = serde_json::from_str(&text).expect("the profile is JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO", "an allowlist: everything not named is refused");
    let mut names = Vec::new();
    for rule in profile["syscalls"].as_array().expect("a syscalls array") {
        assert_eq!(rule["action"], "SCMP_ACT_ALLOW", "{rule}");
        assert!(rule.get("args").is_none(), "the test compiles name-only rules: {rule}");
        for name in rule["names"].as_array().expect("names") {
            names.push(name.as_str().expect("a syscall name").to_string());
        }
    }
    let distinct: BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "no name twice");
    names
}

/// A BPF filter allowing `names` (those this architecture has; Docker skips the others
/// too) and failing everything else with EPERM, as the profile's defaultErrnoRet says.
fn compile_filter(names: &[String]) -> BpfProgram {
    let arch: TargetArch = std::env::consts::ARCH.try_into().expect("an architecture seccompiler knows");
    let json = |names: &[&String]| {
        let rules: Vec<serde_json::Value> = names.iter().map(|name| serde_json::json!({ "syscall": name })).collect();
        serde_json::json!({ "profile": { "mismatch_action": { "errno": 1 }, "match_action": "allow", "filter": rules } }).to_string()
    };
    let known: Vec<&String> = names.iter().filter(|name| seccompiler::compile_from_json(json(&[name]).as_bytes(), arch).is_ok()).collect();
    assert!(known.len() > names.len() / 2, "most names resolve on {arch:?}: {} of {}", known.len(), names.len());
    let mut compiled: HashMap<String, BpfProgram> = seccompiler::compile_from_json(json(&known).as_bytes(), arch).expect("compile");
    compiled.remove("profile").expect("the filter")
}

/// `ringmq` with `args`, under `filter` from its first instruction on.
fn filtered_broker(filter: BpfProgram, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    command.args(args);
    // SAFETY: between fork and exec the closure only makes the prctl and seccomp system
    // calls (the program was built before the fork; nothing is allocated here).
    unsafe {
        command.pre_exec(move || seccompiler::apply_filter(&filter).map_err(|error| std::io::Error::other(error.to_string())));
    }
    command
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    response
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmq-container-{name}-{}-{}", std::process::id(), common::rand_suffix()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The retained message on `topic` as a new TLS WebSocket subscriber receives it.
fn retained_over_wss(addr: SocketAddr, pki: &Pki, topic: &str) -> Option<Vec<u8>> {
    let stream = ws_connect(addr, "/mqtt", Some(pki.client_config(None))).expect("TLS WebSocket upgrade");
    let mut reader = RawClient::over(ClientStream::WebSocket(Box::new(stream)), ProtocolVersion::V5);
    assert_eq!(reader.connect(&format!("wss-reader-{}", common::rand_suffix()), true, 60, None).code, 0);
    reader.subscribe(&[(topic, QoS::AtLeastOnce)]);
    match reader.try_recv(Duration::from_secs(2)) {
        Some(Packet::Publish(publish)) => {
            reader.ack(&publish);
            Some(publish.payload.to_vec())
        }
        _ => None,
    }
}

#[test]
fn the_broker_serves_every_transport_under_the_seccomp_profile() {
    let filter = compile_filter(&allowed_syscalls());
    let pki = Pki::new("container");
    let server = pki.server("server");
    let dir = data_dir("serve");
    let dir_arg = dir.to_str().expect("utf-8 path").to_string();
    let args = [
        "--cores",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--listener",
        "mqtts://127.0.0.1:0",
        "--listener",
        "wss://127.0.0.1:0/mqtt",
        "--tls-cert",
        server.cert.to_str().unwrap(),
        "--tls-key",
        server.key.to_str().unwrap(),
        "--data-dir",
        &dir_arg,
        "--metrics-listen",
        "127.0.0.1:0",
        "--sys-interval-s",
        "1",
        "--log",
        "info",
    ];
    let mut broker = BrokerProcess::spawn(filtered_broker(filter.clone(), &args).stderr(Stdio::null()));
    let (tcp, tls, wss, metrics) = (broker.addrs[0], broker.addrs[1], broker.addrs[2], broker.addrs[3]);

    let mut subscriber = RawClient::open(tcp, ProtocolVersion::V5);
    assert_eq!(subscriber.connect("tcp-subscriber", true, 60, None).code, 0);
    subscriber.subscribe(&[("container/#", QoS::AtLeastOnce)]);
    let tls_stream = tls_connect(tls, pki.client_config(None)).expect("TLS handshake");
    let mut publisher = RawClient::over(ClientStream::Tls(Box::new(tls_stream)), ProtocolVersion::V311);
    assert_eq!(publisher.connect("tls-publisher", true, 60, None).code, 0);
    publisher.publish("container/kept", b"over tls", QoS::AtLeastOnce, true, 1);
    let delivered = subscriber.recv_publish();
    assert_eq!(&delivered.payload[..], b"over tls");
    subscriber.ack(&delivered);
    assert_eq!(retained_over_wss(wss, &pki, "container/kept").as_deref(), Some(&b"over tls"[..]));

    let scrape = http_get(metrics, "/metrics");
    assert!(scrape.starts_with("HTTP/1.1 200") && scrape.contains("ringmq_"), "{scrape:.300}");

    broker.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(broker.is_running(), "SIGHUP reloads under the profile, never kills");
    publisher.publish("container/after-reload", b"still here", QoS::AtLeastOnce, false, 2);
    assert_eq!(&subscriber.recv_publish().payload[..], b"still here");

    let status = broker.terminate().expect("a clean stop within the step timeout");
    assert!(status.success(), "SIGTERM under the profile: {status}");

    // The retained message was written, synced and renamed into place under the filter.
    let broker = BrokerProcess::spawn(filtered_broker(filter, &args).stderr(Stdio::null()));
    assert_eq!(retained_over_wss(broker.addrs[2], &pki, "container/kept").as_deref(), Some(&b"over tls"[..]));
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_io_uring_in_the_profile_the_broker_says_why_it_cannot_start() {
    let names: Vec<String> = allowed_syscalls().into_iter().filter(|name| !name.starts_with("io_uring")).collect();
    let mut command = filtered_broker(compile_filter(&names), &["--listen", "127.0.0.1:0", "--cores", "1"]);
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn ringmq");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "ringmq kept running without io_uring");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("io_uring is blocked") && stderr.contains("seccomp-ringmq.json"), "{stderr}");
}

#[test]
fn the_image_configuration_passes_check_config() {
    let dockerfile = std::fs::read_to_string(container_file("Dockerfile")).expect("read the Dockerfile");
    let copied = "COPY tuning/container/ringmq.toml /etc/ringmq/ringmq.toml";
    assert!(dockerfile.lines().any(|line| line == copied), "the image carries the checked file: {copied}");
    assert!(dockerfile.lines().any(|line| line == r#"CMD ["-c", "/etc/ringmq/ringmq.toml"]"#), "and starts with it");

    // The image's password file is mounted at run time; any valid one stands in for it.
    let passwords = data_dir("passwd");
    std::fs::create_dir_all(&passwords).unwrap();
    let hashed = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--hash-password", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("stdin").write_all(b"secret\n")?;
            child.wait_with_output()
        })
        .expect("hash a password");
    let passwd = passwords.join("passwd");
    std::fs::write(&passwd, &hashed.stdout).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--check-config", "-c"])
        .arg(container_file("ringmq.toml"))
        .arg("--password-file")
        .arg(&passwd)
        .output()
        .expect("run --check-config");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}{printed}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("0.0.0.0:1883") && printed.contains("/var/lib/ringmq"), "{printed}");
    let _ = std::fs::remove_dir_all(&passwords);
}
