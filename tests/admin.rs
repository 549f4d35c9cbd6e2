//! The admin API on the metrics listener: list, filter and show clients, disconnect one
//! with a reason code, list and clear retained messages; the token rule.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use common::{Broker, RawClient};
use ringmq::protocol::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use serde_json::Value;

fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("connect to the admin API");
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("a status code");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn clients_are_listed_shown_and_disconnected_and_retained_messages_cleared() {
    let broker = Broker::start(&["--metrics-listen", "127.0.0.1:0"]);
    let api = *broker.addrs.last().unwrap();
    let mut alice = RawClient::open(broker.addr, ProtocolVersion::V5);
    let connect =
        Connect { username: Some(Bytes::from_static(b"alice")), ..Connect::new(ProtocolVersion::V5, Bytes::from_static(b"adm-a")) };
    assert_eq!(alice.connect_sending(Packet::Connect(Box::new(connect))).code, 0);
    alice.subscribe(&[("x/#", QoS::AtLeastOnce)]);
    let mut bob = broker.client("adm-b", true);
    bob.publish("r/1", b"one", QoS::AtLeastOnce, true, 1);
    bob.publish("r/2", b"two!", QoS::AtLeastOnce, true, 2);

    let (status, clients) = call(api, "GET", "/api/clients", None);
    assert_eq!(status, 200);
    let ids: Vec<&str> = clients.as_array().unwrap().iter().map(|client| client["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["adm-a", "adm-b"]);
    let (_, filtered) = call(api, "GET", "/api/clients?user=alice", None);
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    assert_eq!(filtered[0]["protocol"], "5.0");
    assert_eq!(filtered[0]["connected"], true);
    assert!(filtered[0]["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    let (_, by_prefix) = call(api, "GET", "/api/clients?prefix=adm-b", None);
    assert_eq!(by_prefix[0]["client_id"], "adm-b");

    let (status, shown) = call(api, "GET", "/api/clients/adm-a", None);
    assert_eq!(status, 200);
    assert_eq!(shown["subscriptions"], serde_json::json!([{"filter": "x/#", "qos": 1}]));
    assert_eq!(shown["subscription_count"], 1);
    assert_eq!(call(api, "GET", "/api/clients/nobody", None).0, 404);

    let (status, done) = call(api, "DELETE", "/api/clients/adm-a?reason=152", None);
    assert_eq!((status, &done["disconnected"]), (200, &Value::Bool(true)));
    assert_eq!(alice.disconnect_reason(), ReasonCode::ADMINISTRATIVE_ACTION);
    assert_eq!(call(api, "DELETE", "/api/clients/adm-a", None).0, 404, "no longer connected");

    let (_, retained) = call(api, "GET", "/api/retained?filter=r%2F%23", None);
    assert_eq!(
        retained,
        serde_json::json!([{"topic": "r/1", "payload_bytes": 3, "qos": 1}, {"topic": "r/2", "payload_bytes": 4, "qos": 1}])
    );
    assert_eq!(call(api, "DELETE", "/api/retained/r%2F1", None).0, 200);
    assert_eq!(call(api, "DELETE", "/api/retained/r%2F1", None).0, 404, "already cleared");
    let mut late = broker.client("adm-late", true);
    late.subscribe(&[("r/#", QoS::AtMostOnce)]);
    assert_eq!(&late.recv_publish().payload[..], b"two!", "only r/2 is left");
    late.assert_silent(Duration::from_millis(300));
    assert_eq!(call(api, "GET", "/api/unknown", None).0, 404);
}

#[test]
fn with_a_token_the_api_needs_it() {
    let broker = Broker::start(&["--metrics-listen", "127.0.0.1:0", "--admin-token", "s3cret"]);
    let api = *broker.addrs.last().unwrap();
    assert_eq!(call(api, "GET", "/api/clients", None).0, 403);
    assert_eq!(call(api, "GET", "/api/clients", Some("wrong")).0, 403);
    assert_eq!(call(api, "GET", "/api/clients", Some("s3cret")).0, 200);
    // The metrics stay open to the scraper.
    let mut stream = TcpStream::connect(api).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn ringmq_ctl_asks_the_api() {
    let broker = Broker::start(&["--metrics-listen", "127.0.0.1:0", "--admin-token", "t0ken"]);
    let api = broker.addrs.last().unwrap().to_string();
    let mut client = broker.client("ctl/client 1", true);
    client.publish("ctl/r", b"v", QoS::AtMostOnce, true, 0);
    let ctl = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["ctl", "--api", &api, "--token", "t0ken"])
            .args(args)
            .output()
            .expect("run ringmq ctl");
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (ok, listed) = ctl(&["clients", "--prefix", "ctl/"]);
    assert!(ok, "{listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["client_id"], "ctl/client 1", "ids with / and spaces travel percent-encoded");
    let (ok, shown) = ctl(&["client", "ctl/client 1"]);
    assert!(ok && shown.contains("\"protocol\": \"3.1.1\""), "{shown}");
    let (ok, retained) = ctl(&["retained", "--filter", "ctl/#"]);
    assert!(ok && retained.contains("\"topic\": \"ctl/r\""), "{retained}");
    assert!(ctl(&["clear-retained", "ctl/r"]).0);
    assert!(!ctl(&["clear-retained", "ctl/r"]).0, "a second clear finds nothing: exit 1");
    assert!(ctl(&["kick", "ctl/client 1"]).0);
    client.assert_closed();
    assert!(!ctl(&["client", "nobody"]).0);
}
