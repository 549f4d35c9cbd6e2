//! `$SYS` as Mosquitto users know it: broker-wide totals under `$SYS/broker/...`, summed
//! over the shards, and each shard's counters under `$SYS/broker/shards/<n>/...`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Broker;
use ringmq::protocol::{Packet, QoS};

#[test]
fn broker_totals_follow_a_known_load_summed_over_shards() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut subscribers: Vec<_> = (0..3).map(|i| broker.client(&format!("sys-sub-{i}"), true)).collect();
    for subscriber in &mut subscribers {
        subscriber.subscribe(&[("sys/load", QoS::AtMostOnce)]);
    }
    let mut publisher = broker.client("sys-pub", true);
    for _ in 0..20 {
        publisher.publish("sys/load", b"0123456789", QoS::AtMostOnce, false, 0);
    }
    for subscriber in &mut subscribers {
        for _ in 0..20 {
            subscriber.recv_publish();
        }
    }
    let mut watcher = broker.client("sys-watcher", true);
    watcher.subscribe(&[("$SYS/#", QoS::AtMostOnce)]);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let settled = |seen: &BTreeMap<String, String>| {
        let get = |topic: &str| seen.get(topic).map(String::as_str);
        // Sent counts the watcher's own `$SYS` deliveries too (as Mosquitto's does): at least 60.
        get("$SYS/broker/publish/messages/received") == Some("20")
            && get("$SYS/broker/publish/messages/sent").and_then(|sent| sent.parse::<u64>().ok()).is_some_and(|sent| sent >= 60)
            && get("$SYS/broker/clients/connected") == Some("5")
            // Gauges are per-shard snapshots of up to a second ago: the watcher's own
            // subscription can lag its connection by one report.
            && get("$SYS/broker/subscriptions/count") == Some("4")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !settled(&seen) {
        assert!(Instant::now() < deadline, "never settled: {seen:#?}");
        if let Some(Packet::Publish(publish)) = watcher.try_recv(Duration::from_millis(200)) {
            let topic = String::from_utf8(publish.topic.to_vec()).unwrap();
            seen.insert(topic, String::from_utf8(publish.payload.to_vec()).unwrap());
        }
    }
    // The rest of that report's topics, and the shards' own, follow within an interval.
    let complete = |seen: &BTreeMap<String, String>| {
        ["$SYS/broker/load/bytes/sent/15min", "$SYS/broker/shards/0/publishes_received", "$SYS/broker/shards/1/publishes_received"]
            .iter()
            .all(|topic| seen.contains_key(*topic))
    };
    while !complete(&seen) {
        assert!(Instant::now() < deadline, "topics missing: {seen:#?}");
        if let Some(Packet::Publish(publish)) = watcher.try_recv(Duration::from_millis(200)) {
            let topic = String::from_utf8(publish.topic.to_vec()).unwrap();
            seen.insert(topic, String::from_utf8(publish.payload.to_vec()).unwrap());
        }
    }
    assert!(seen["$SYS/broker/version"].starts_with("ringmq version "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    assert_eq!(seen["$SYS/broker/messages/received"], "20");
    assert_eq!(seen["$SYS/broker/clients/total"], "5");
    assert_eq!(seen["$SYS/broker/clients/disconnected"], "0");
    assert_eq!(seen["$SYS/broker/subscriptions/count"], "4", "3 subscribers and the watcher");
    let bytes_received: u64 = seen["$SYS/broker/bytes/received"].parse().unwrap();
    assert!(bytes_received >= 20 * (2 + 2 + 8 + 10), "at least the 20 PUBLISH packets: {bytes_received}");
    assert!(seen.contains_key("$SYS/broker/load/messages/received/1min"));
    assert!(seen.contains_key("$SYS/broker/load/bytes/sent/15min"));
    assert!(seen.contains_key("$SYS/broker/shards/0/publishes_received") && seen.contains_key("$SYS/broker/shards/1/publishes_received"));
}
