//! Retained messages: stored per topic, replaced, cleared by an empty payload, sent with
//! RETAIN=1 to new subscriptions (wildcards too, on every shard), RETAIN=0 when live.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Broker;
use ringmq::protocol::QoS;

#[test]
fn retained_is_stored_replaced_and_cleared() {
    let broker = Broker::start(&[]);
    let mut publisher = broker.client("ret-pub", true);
    publisher.publish("ret/a", b"v1", QoS::AtLeastOnce, true, 1);
    publisher.publish("ret/a", b"v2", QoS::AtLeastOnce, true, 2);

    let mut sub = broker.client("ret-sub-1", true);
    sub.subscribe(&[("ret/a", QoS::AtLeastOnce)]);
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"v2", "replaced");
    assert!(got.retain, "sent to a new subscription with RETAIN=1");
    sub.ack(&got);
    sub.assert_silent(Duration::from_millis(200));

    // Live delivery to an existing subscription carries RETAIN=0, even for a retained publish.
    publisher.publish("ret/a", b"v3", QoS::AtLeastOnce, true, 3);
    let live = sub.recv_publish();
    assert_eq!((&live.payload[..], live.retain), (&b"v3"[..], false));
    sub.ack(&live);

    // An empty retained payload clears the topic (and is still delivered live).
    publisher.publish("ret/a", b"", QoS::AtMostOnce, true, 0);
    assert!(sub.recv_publish().payload.is_empty());
    let mut late = broker.client("ret-sub-2", true);
    late.subscribe(&[("ret/#", QoS::AtMostOnce)]);
    late.assert_silent(Duration::from_millis(300));
}

#[test]
fn non_retained_publish_is_not_stored() {
    let broker = Broker::start(&[]);
    let mut publisher = broker.client("noret-pub", true);
    publisher.publish("noret", b"x", QoS::AtLeastOnce, false, 1);
    let mut sub = broker.client("noret-sub", true);
    sub.subscribe(&[("noret", QoS::AtMostOnce)]);
    sub.assert_silent(Duration::from_millis(300));
}

#[test]
fn wildcard_subscriptions_on_every_shard_see_every_retained_topic() {
    let broker = Broker::start(&[]);
    // Publishers on many connections: the kernel spreads them over both shards.
    let topics: Vec<String> = (0..24).map(|i| format!("fleet/{}/status", i)).collect();
    for (i, topic) in topics.iter().enumerate() {
        let mut publisher = broker.client(&format!("fleet-pub-{i}"), true);
        publisher.publish(topic, topic.as_bytes(), QoS::AtLeastOnce, true, 1);
        publisher.disconnect();
    }
    let expected: BTreeSet<Vec<u8>> = topics.iter().map(|t| t.as_bytes().to_vec()).collect();
    let mut subscribers: Vec<_> = (0..12).map(|i| broker.client(&format!("fleet-sub-{i}"), true)).collect();
    for sub in &mut subscribers {
        sub.subscribe(&[("fleet/+/status", QoS::AtLeastOnce)]);
        let mut seen = BTreeSet::new();
        for _ in 0..topics.len() {
            let got = sub.recv_publish();
            assert!(got.retain);
            assert_eq!(got.topic, got.payload);
            sub.ack(&got);
            seen.insert(got.payload.to_vec());
        }
        assert_eq!(seen, expected);
    }
    let counters = broker.wait_for_counters("subscribers on both shards", |c| {
        c.get(0, "clients_connected").unwrap_or(0) > 0 && c.get(1, "clients_connected").unwrap_or(0) > 0
    });
    assert!(counters.total("clients_connected") >= 12);
}
