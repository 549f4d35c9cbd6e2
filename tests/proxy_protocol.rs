//! `--proxy-protocol`: each connection starts with a PROXY header (v1 or v2) from a load
//! balancer. The client address it carries is the one logged; a connection without a
//! valid header is closed, and no one else is affected.

mod common;

use std::process::Command;
use std::time::Duration;

use common::RawClient;
use common::launcher::BrokerProcess;
use ringmq::protocol::ProtocolVersion;

struct Logged {
    broker: BrokerProcess,
    log: std::path::PathBuf,
}

impl Logged {
    fn start() -> Logged {
        let log = std::env::temp_dir().join(format!("ringmq-proxy-{}-{}", std::process::id(), common::rand_suffix()));
        let broker = BrokerProcess::spawn(
            Command::new(env!("CARGO_BIN_EXE_ringmq"))
                .args(["--listen", "127.0.0.1:0", "--cores", "2", "--log", "info", "--sys-interval-s", "0", "--proxy-protocol"])
                .stderr(std::fs::File::create(&log).expect("log file")),
        );
        Logged { broker, log }
    }

    /// Waits (bounded) for the log to mention `text`.
    fn wait_for_log(&self, text: &str) {
        let deadline = std::time::Instant::now() + common::WAIT;
        loop {
            let written = std::fs::read_to_string(&self.log).unwrap_or_default();
            if written.contains(text) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the log never said {text:?}:\n{written}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

fn v2_ipv4(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = vec![0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x0C];
    header.extend_from_slice(&source);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&1883u16.to_be_bytes());
    header
}

#[test]
fn the_address_from_a_v1_or_v2_header_is_the_clients() {
    let logged = Logged::start();
    let mut v1 = RawClient::open(logged.broker.addr, ProtocolVersion::V311);
    v1.send_bytes(b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 1883\r\n");
    assert_eq!(v1.connect("behind-haproxy", true, 60, None).code, 0);
    logged.wait_for_log("address=192.0.2.7:51000");

    // A v2 header split over two writes, the CONNECT right behind it.
    let mut v2 = RawClient::open(logged.broker.addr, ProtocolVersion::V5);
    let header = v2_ipv4([198, 51, 100, 9], 40000);
    v2.send_bytes(&header[..7]);
    std::thread::sleep(Duration::from_millis(50));
    v2.send_bytes(&header[7..]);
    assert_eq!(v2.connect("behind-nlb", true, 60, None).code, 0);
    logged.wait_for_log("address=198.51.100.9:40000");
}

#[test]
fn a_connection_without_a_valid_header_is_closed_and_nobody_else_notices() {
    let logged = Logged::start();
    let mut healthy = RawClient::open(logged.broker.addr, ProtocolVersion::V311);
    healthy.send_bytes(b"PROXY UNKNOWN\r\n");
    assert_eq!(healthy.connect("healthy", true, 60, None).code, 0);

    // A bare CONNECT: no header at all.
    let mut bare = RawClient::open(logged.broker.addr, ProtocolVersion::V311);
    let connect = bare.connect_packet("bare", true, 60, None);
    bare.send(&connect);
    bare.assert_closed();
    // Garbage where the header should be.
    let mut garbage = RawClient::open(logged.broker.addr, ProtocolVersion::V311);
    garbage.send_bytes(b"PROXY TCP4 not-an-address\r\n");
    garbage.assert_closed();
    let mut v2_garbage = RawClient::open(logged.broker.addr, ProtocolVersion::V311);
    let mut header = v2_ipv4([192, 0, 2, 1], 1);
    header[12] = 0x31;
    v2_garbage.send_bytes(&header);
    v2_garbage.assert_closed();

    healthy.send(&ringmq::protocol::Packet::PingReq);
    assert_eq!(healthy.recv(), ringmq::protocol::Packet::PingResp);
}

#[test]
fn several_listeners_serve_the_same_broker_each_with_its_own_options() {
    let broker = BrokerProcess::spawn(Command::new(env!("CARGO_BIN_EXE_ringmq")).args([
        "--listener",
        "mqtt://127.0.0.1:0",
        "--listener",
        "mqtt://127.0.0.1:0?proxy=true",
        "--cores",
        "2",
        "--log",
        "warn",
    ]));
    assert_eq!(broker.addrs.len(), 2, "both listeners on the listening line");
    let (plain, proxied) = (broker.addrs[0], broker.addrs[1]);
    assert_ne!(plain, proxied);
    let mut subscriber = RawClient::open(plain, ProtocolVersion::V311);
    assert_eq!(subscriber.connect("on-plain", true, 60, None).code, 0);
    subscriber.subscribe(&[("across/listeners", ringmq::protocol::QoS::AtMostOnce)]);
    let mut publisher = RawClient::open(proxied, ProtocolVersion::V311);
    publisher.send_bytes(b"PROXY TCP4 203.0.113.5 127.0.0.1 1000 1883\r\n");
    assert_eq!(publisher.connect("on-proxied", true, 60, None).code, 0);
    publisher.publish("across/listeners", b"hello", ringmq::protocol::QoS::AtMostOnce, false, 1);
    assert_eq!(&subscriber.recv_publish().payload[..], b"hello");
    // The proxied listener wants its header; the plain one does not.
    let mut headerless = RawClient::open(proxied, ProtocolVersion::V311);
    let connect = headerless.connect_packet("no-header", true, 60, None);
    headerless.send(&connect);
    headerless.assert_closed();
}
