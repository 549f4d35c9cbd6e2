//! `--metrics-listen`: a Prometheus scrape after a known load shows it, summed over the
//! shards; other paths get 404; the endpoint is off by default.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Broker;
use ringmq::protocol::QoS;

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// The sum over the shards of `name`'s samples.
fn total(body: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = body
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

#[test]
fn a_scrape_shows_a_known_load_per_shard() {
    let broker = Broker::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = *broker.addrs.last().expect("the metrics address is on the listening line");
    assert_ne!(metrics, broker.addr);
    let mut subscribers: Vec<_> = (0..2).map(|i| broker.client(&format!("metrics-sub-{i}"), true)).collect();
    for subscriber in &mut subscribers {
        subscriber.subscribe(&[("metrics/topic", QoS::AtLeastOnce)]);
    }
    let mut publisher = broker.client("metrics-pub", true);
    for id in 1..=50u16 {
        publisher.publish("metrics/topic", b"payload", QoS::AtLeastOnce, false, id);
    }
    for subscriber in &mut subscribers {
        for _ in 0..50 {
            let publish = subscriber.recv_publish();
            subscriber.ack(&publish);
        }
    }
    // Snapshots are taken once a second.
    let deadline = Instant::now() + common::WAIT;
    let body = loop {
        let (status, body) = get(metrics, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let settled = total(&body, "ringmq_publishes_received_total") == Some(50.0)
            && total(&body, "ringmq_messages_delivered_total") == Some(100.0)
            && total(&body, "ringmq_inflight_messages") == Some(0.0);
        if settled {
            break body;
        }
        assert!(Instant::now() < deadline, "the scrape never showed the load:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(total(&body, "ringmq_connections").is_some_and(|connections| connections >= 3.0), "{body}");
    assert!(total(&body, "ringmq_subscriptions").is_some_and(|filters| filters >= 2.0), "{body}");
    assert!(body.contains("ringmq_publishes_received_total{shard=\"0\"}") && body.contains("ringmq_publishes_received_total{shard=\"1\"}"));
    assert!(total(&body, "ringmq_process_resident_memory_bytes").is_none(), "process metrics carry no shard label");
    assert!(body.lines().any(|line| line.starts_with("ringmq_process_resident_memory_bytes ")), "{body}");
    assert!(body.trim_end().ends_with("# EOF"));
    assert_eq!(get(metrics, "/other").0, "HTTP/1.1 404 Not Found");
}

#[test]
fn there_is_no_metrics_listener_unless_asked_for() {
    let broker = Broker::start(&[]);
    assert_eq!(broker.addrs.len(), 1, "only the MQTT listener");
}
