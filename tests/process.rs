//! The broker as a process an operator runs: one broker per address, signals, what it
//! prints, and the password helper.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Broker;

fn ringmq(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringmq");
    // It may have exited (refusing its arguments) before reading: a broken pipe is fine.
    let _ = child.stdin.take().expect("stdin").write_all(stdin.as_bytes());
    // Bounded: a broker that wrongly starts is killed after a while rather than hanging.
    let deadline = std::time::Instant::now() + common::WAIT;
    while child.try_wait().expect("try_wait").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

#[test]
fn a_second_broker_on_the_same_address_refuses_to_start() {
    let first = Broker::start(&[]);
    let address = first.addr.to_string();
    let second = ringmq(&["--listen", &address, "--cores", "2", "--log", "warn"], "");
    assert!(!second.status.success(), "the second broker must not run");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("Address already in use"), "{stderr}");
    assert_eq!(stderr.matches("Address already in use").count(), 1, "the cause is printed once: {stderr}");
    let wildcard = format!("0.0.0.0:{}", first.addr.port());
    let on_wildcard = ringmq(&["--listen", &wildcard, "--cores", "1", "--allow-anonymous"], "");
    assert!(!on_wildcard.status.success(), "nor on the wildcard address");
    assert!(String::from_utf8_lossy(&on_wildcard.stderr).contains("Address already in use"));
    // The first one goes on serving.
    let mut client = first.client("still-here", true);
    client.send(&ringmq::protocol::Packet::PingReq);
    assert_eq!(client.recv(), ringmq::protocol::Packet::PingResp);
}

#[test]
fn brokers_on_one_port_of_different_addresses_both_serve() {
    // One broker per address on a shared port (one per interface): the second is not
    // mistaken for a second broker on the first one's address.
    let first = Broker::start(&[]);
    let beside = format!("127.0.0.2:{}", first.addr.port());
    let second = Broker::start(&["--listen", &beside]);
    assert_eq!(second.addr.to_string(), beside);
    for broker in [&first, &second] {
        let mut client = broker.client("on-its-own-address", true);
        client.send(&ringmq::protocol::Packet::PingReq);
        assert_eq!(client.recv(), ringmq::protocol::Packet::PingResp);
    }
}

#[test]
fn a_listener_beyond_loopback_without_authentication_refuses_to_start_and_says_why() {
    let refused = ringmq(&["--listen", "0.0.0.0:0", "--cores", "1"], "");
    assert!(!refused.status.success(), "anonymous clients on every interface need saying so");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not a loopback address") && stderr.contains("--allow-anonymous"), "{stderr}");
}

#[test]
fn a_broker_restarts_at_once_on_the_port_it_left() {
    let mut first = Broker::start(&[]);
    let address = first.addr.to_string();
    // Connections the broker closes itself (here: at shutdown) leave TIME_WAIT sockets on
    // its port.
    let mut clients: Vec<_> = (0..5).map(|index| first.client(&format!("leaving-{index}"), true)).collect();
    assert!(first.terminate().expect("stops").success());
    for client in &mut clients {
        client.assert_closed();
    }
    drop(clients);
    let mut second = Broker::start(&["--listen", &address]);
    assert_eq!(second.addr, first.addr);
    second.client("back-again", true).disconnect();
    assert!(second.terminate().expect("stops").success());
}

#[test]
fn sighup_is_logged_and_never_stops_the_broker() {
    let log = std::env::temp_dir().join(format!("ringmq-hup-{}-{}", std::process::id(), common::rand_suffix()));
    let mut broker = common::launcher::BrokerProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--listen", "127.0.0.1:0", "--cores", "2", "--log", "info"])
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    let mut client = broker.client("across-hup", true);
    broker.signal(libc::SIGHUP);
    // Wait for the broker to say it handled the signal, rather than for a while.
    let deadline = std::time::Instant::now() + common::WAIT;
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("SIGHUP: password file and ACL reloaded") {
        assert!(std::time::Instant::now() < deadline, "the SIGHUP was never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&log);
    assert!(broker.is_running(), "SIGHUP must not end the broker");
    client.send(&ringmq::protocol::Packet::PingReq);
    assert_eq!(client.recv(), ringmq::protocol::Packet::PingResp);
    let status = broker.terminate().expect("exits on SIGTERM");
    assert!(status.success());
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let log = std::env::temp_dir().join(format!("ringmq-log-{}", std::process::id()));
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--listen", "127.0.0.1:0", "--cores", "1", "--log", "info"])
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .expect("spawn ringmq");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line).expect("listening line");
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(child.wait().expect("exit").success());
    let written = std::fs::read_to_string(&log).expect("read log");
    let _ = std::fs::remove_file(&log);
    assert!(written.contains("shard stopped"), "{written}");
    assert!(!written.contains('\u{1b}'), "no ANSI escape codes: {written:?}");
}

#[test]
fn hash_password_refuses_what_the_password_file_cannot_hold() {
    let bad_user = ringmq(&["--hash-password", "bad:user"], "secret\n");
    assert!(!bad_user.status.success());
    assert!(bad_user.stdout.is_empty(), "no line is printed for a user name with ':'");
    let empty = ringmq(&["--hash-password", "alice"], "");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty password"));
    let empty_line = ringmq(&["--hash-password", "alice"], "\n");
    assert!(!empty_line.status.success());
    let good = ringmq(&["--hash-password", "alice"], "secret\n");
    assert!(good.status.success());
    assert!(String::from_utf8_lossy(&good.stdout).starts_with("alice:$7$"));
}
