//! Several ringmq nodes as one broker over a real 3-server NATS cluster (`common::cluster`):
//! messages cross nodes at every QoS with exact counts, through wildcards and topics full
//! of characters that mean something to NATS, once per client however many of its node's
//! filters match; retained messages reach every node; a node no client of which wants a
//! topic receives none of its messages.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{RawClient, rand_suffix};
use ringmq::protocol::{Packet, Publish, QoS, SubscriptionOptions};

/// Reads publishes until `count` arrived (acknowledging each; route probes, which other
/// subscribers' `wait_for_route` may still send, left out), or panics after a while.
fn receive(client: &mut RawClient, count: usize) -> Vec<Publish> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < count {
        assert!(Instant::now() < deadline, "{} of {count} messages arrived", got.len());
        if let Some(Packet::Publish(publish)) = client.try_recv(Duration::from_millis(200)) {
            client.ack(&publish);
            if !publish.topic.ends_with(b"/probe") {
                got.push(publish);
            }
        }
    }
    got
}

/// Both shards' value of `name` has been seen (a node runs two shards).
fn both_shards(counters: &common::Counters, name: &str) -> bool {
    counters.get(0, name).is_some() && counters.get(1, name).is_some()
}

/// Subscribes at QoS 1 and waits for the SUBACK, keeping what arrives before it: a
/// message from another node may be delivered on the new subscription before its SUBACK
/// (which 3.8.4 permits).
fn subscribe_allowing_early_deliveries(client: &mut RawClient, filter: &str) {
    client.subscribe_with_no_wait(&[(filter, SubscriptionOptions::with_qos(QoS::AtLeastOnce))]);
    client.expect(|packet| matches!(packet, Packet::SubAck(_)));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[test]
fn messages_cross_nodes_at_every_qos_exactly_once_and_in_order() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    const PER_QOS: usize = 300;
    let mut subscribers: Vec<RawClient> = [1, 2]
        .iter()
        .map(|&node| {
            let mut client = cluster.nodes[node].client(&format!("sub-{node}-{}", rand_suffix()), true);
            client.subscribe(&[("load/#", QoS::ExactlyOnce)]);
            client
        })
        .collect();
    for subscriber in &mut subscribers {
        cluster.wait_for_route(0, "load/probe", subscriber);
    }
    let mut publisher = cluster.nodes[0].client("publisher", true);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for sequence in 0..PER_QOS {
            let id = (sequence % 60_000 + 1) as u16;
            publisher.publish(&format!("load/q{}", qos as u8), format!("{sequence}").as_bytes(), qos, false, id);
        }
    }
    for subscriber in &mut subscribers {
        let got = receive(subscriber, 3 * PER_QOS);
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("load/q{}", qos as u8);
            let sequence: Vec<usize> =
                got.iter().filter(|p| p.topic == topic.as_bytes()).map(|p| text(&p.payload).parse().expect("a number")).collect();
            assert_eq!(sequence, (0..PER_QOS).collect::<Vec<_>>(), "{topic}: each once, in order");
            assert!(got.iter().filter(|p| p.topic == topic.as_bytes()).all(|p| p.qos == qos), "{topic} keeps its QoS");
        }
        subscriber.assert_silent(Duration::from_millis(300));
    }
    // Node 3 (index 2) wants the messages, so it received them; node 1 published them.
    let counters = cluster.nodes[2].wait_for_counters("node 3 received from the cluster", |c| {
        both_shards(c, "cluster_publishes_received") && c.total("cluster_publishes_received") >= 3 * PER_QOS as u64
    });
    assert!(counters.total("cluster_publishes_received") < 3 * PER_QOS as u64 + 50, "probes aside, each message entered once");
}

#[test]
fn wildcards_and_awkward_topics_cross_nodes_once_per_client() {
    let Some(cluster) = Cluster::start(2, &[]) else { return };
    let mut subscriber = cluster.nodes[1].client(&format!("wild-{}", rand_suffix()), true);
    // Overlapping filters: a message several match is still delivered once (3.1.1).
    subscriber.subscribe(&[
        ("w/#", QoS::AtLeastOnce),
        ("w/+/x", QoS::AtLeastOnce),
        ("w/+", QoS::AtLeastOnce),
        ("$special/+/y", QoS::AtLeastOnce),
        ("+/never", QoS::AtLeastOnce),
    ]);
    cluster.wait_for_route(0, "w/probe", &mut subscriber);
    cluster.wait_for_route(0, "$special/probe/y", &mut subscriber);
    let topics = [
        "w",
        "w/a.b/x",
        "w/*/x",
        "w/>/x",
        "w/ spaced out /x",
        "w//x",
        "w///",
        "w/~7E/x",
        "w/ünïcødé/🙂",
        "w/%2E/x",
        "$special/a.b/y",
        "$special//y",
    ];
    let mut publisher = cluster.nodes[0].client("wild-publisher", true);
    for topic in topics {
        publisher.publish(topic, topic.as_bytes(), QoS::AtLeastOnce, false, 1);
    }
    // A `$` topic is not matched by a filter starting with a wildcard.
    publisher.publish("$special/never", b"no", QoS::AtLeastOnce, false, 1);
    publisher.publish("x/y/z", b"no", QoS::AtLeastOnce, false, 1);
    let got = receive(&mut subscriber, topics.len());
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for publish in &got {
        assert_eq!(publish.topic, publish.payload, "topic arrives exactly as published");
        *counts.entry(text(&publish.topic)).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = topics.iter().map(|topic| (topic.to_string(), 1)).collect();
    assert_eq!(counts, expected);
    subscriber.assert_silent(Duration::from_millis(500));
}

/// Subscribes on `node` until a retained copy of `topic` with `payload` arrives (a node
/// applies a change from the bucket soon, not at once), or panics after a while: 30 s, as
/// the harness's other waits on buckets, since the first change waits for a fresh NATS
/// cluster to make its replicated buckets, which took more than 15 s in a full CI run
/// (its requests timing out meanwhile).
fn wait_for_retained(cluster: &Cluster, node: usize, topic: &str, payload: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "node {} never held {topic} = {payload:?}", node + 1);
        let mut client = cluster.nodes[node].client(&format!("retained-{node}-{}", rand_suffix()), true);
        subscribe_allowing_early_deliveries(&mut client, topic);
        // (A copy without RETAIN is a live one: it reached the node after this subscribe.)
        let held = match client.try_recv(Duration::from_millis(200)) {
            Some(Packet::Publish(publish)) => publish.retain && publish.payload == payload,
            _ => payload.is_empty(),
        };
        client.disconnect();
        if held {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn retained_messages_reach_every_node_and_a_node_started_later() {
    let Some(mut cluster) = Cluster::start_with_nodes(3, 2, &[]) else { return };
    let mut publisher = cluster.nodes[0].client("retained-publisher", true);
    publisher.publish("state/door", b"open", QoS::AtLeastOnce, true, 1);
    publisher.publish("state/window", b"shut", QoS::AtLeastOnce, true, 2);
    wait_for_retained(&cluster, 1, "state/door", b"open");
    // Node 3 starts after the publishes: it loads the store from the bucket.
    let late = cluster.add_node(2, &[]);
    wait_for_retained(&cluster, late, "state/door", b"open");
    wait_for_retained(&cluster, late, "state/window", b"shut");
    // A change on the late node reaches the first ones; clearing on one clears everywhere.
    let mut late_publisher = cluster.nodes[late].client("late-publisher", true);
    late_publisher.publish("state/window", b"open", QoS::AtLeastOnce, true, 1);
    wait_for_retained(&cluster, 0, "state/window", b"open");
    publisher.publish("state/door", b"", QoS::AtLeastOnce, true, 3);
    for node in [1, late] {
        wait_for_retained(&cluster, node, "state/door", b"");
    }
    // The origin keeps what it applied itself (it skips its own entries in the bucket).
    wait_for_retained(&cluster, 0, "state/window", b"open");
}

#[test]
fn a_node_without_subscribers_receives_nothing_and_unsubscribing_stops_the_flow() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    let mut subscriber = cluster.nodes[1].client("only-subscriber", true);
    subscriber.subscribe(&[("quiet/+", QoS::AtLeastOnce)]);
    cluster.wait_for_route(0, "quiet/probe", &mut subscriber);
    let mut publisher = cluster.nodes[0].client("quiet-publisher", true);
    for id in 1..=100u16 {
        publisher.publish("quiet/t", b"m", QoS::AtLeastOnce, false, id);
    }
    receive(&mut subscriber, 100);
    let node2 = cluster.nodes[1].wait_for_counters("node 2 got them", |c| {
        both_shards(c, "cluster_publishes_received") && c.total("cluster_publishes_received") >= 100
    });
    let node3 = cluster.nodes[2].wait_for_counters("node 3 counters", |c| both_shards(c, "cluster_publishes_received"));
    assert_eq!(node3.total("cluster_publishes_received"), 0, "NATS routes by interest: node 3 wants none");
    assert!(node2.total("cluster_publishes_received") <= 100 + 50, "probes aside, once each");
    // The last local subscription withdrawn (at the next tick), NATS stops sending.
    subscriber.send(&Packet::Unsubscribe(ringmq::protocol::Unsubscribe {
        packet_id: ringmq::protocol::PacketId::new(9).expect("non-zero"),
        filters: vec![bytes::Bytes::from_static(b"quiet/+")],
        properties: Default::default(),
    }));
    subscriber.expect(|packet| matches!(packet, Packet::UnsubAck(_)));
    std::thread::sleep(Duration::from_millis(500));
    let before = cluster.nodes[1].wait_for_counters("node 2 before", |c| both_shards(c, "cluster_publishes_received"));
    for id in 1..=100u16 {
        publisher.publish("quiet/t", b"m", QoS::AtLeastOnce, false, id);
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let after = cluster.nodes[1].wait_for_counters("node 2 after", |c| both_shards(c, "cluster_publishes_received"));
    assert_eq!(
        after.total("cluster_publishes_received"),
        before.total("cluster_publishes_received"),
        "no subscriber left on node 2, so nothing reaches it"
    );
}

#[test]
fn a_shared_subscription_spread_over_nodes_gets_each_message_exactly_once() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    let mut members: Vec<RawClient> = (0..3)
        .map(|node| {
            let mut client = cluster.nodes[node].client(&format!("member-{node}-{}", rand_suffix()), true);
            client.subscribe(&[("$share/workers/jobs/#", QoS::AtLeastOnce)]);
            client
        })
        .collect();
    // Probes until every member has had one: each node's queue subscription is live.
    let mut publisher = cluster.nodes[0].client("jobs-publisher", true);
    let mut probed = [false; 3];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probed.iter().all(|&seen| seen) {
        assert!(Instant::now() < deadline, "queue subscriptions never all live: {probed:?}");
        publisher.publish("jobs/probe", b"probe", QoS::AtLeastOnce, false, 1);
        for (member, seen) in members.iter_mut().zip(&mut probed) {
            if let Some(Packet::Publish(publish)) = member.try_recv(Duration::from_millis(10)) {
                member.ack(&publish);
                *seen = true;
            }
        }
    }
    for member in &mut members {
        while let Some(Packet::Publish(publish)) = member.try_recv(Duration::from_millis(300)) {
            assert_eq!(&publish.topic[..], b"jobs/probe");
            member.ack(&publish);
        }
    }
    const JOBS: usize = 600;
    for job in 0..JOBS {
        publisher.publish(&format!("jobs/{}", job % 7), format!("{job}").as_bytes(), QoS::AtLeastOnce, false, (job % 60_000 + 1) as u16);
    }
    let mut seen = vec![0u32; JOBS];
    let mut per_member = [0usize; 3];
    let deadline = Instant::now() + Duration::from_secs(20);
    while per_member.iter().sum::<usize>() < JOBS {
        assert!(Instant::now() < deadline, "{} of {JOBS} jobs arrived", per_member.iter().sum::<usize>());
        for (index, member) in members.iter_mut().enumerate() {
            while let Some(Packet::Publish(publish)) = member.try_recv(Duration::from_millis(20)) {
                member.ack(&publish);
                let job: usize = text(&publish.payload).parse().expect("a job number");
                seen[job] += 1;
                per_member[index] += 1;
            }
        }
    }
    for member in &mut members {
        member.assert_silent(Duration::from_millis(300));
    }
    assert!(
        seen.iter().all(|&copies| copies == 1),
        "each job exactly once: {:?}",
        seen.iter().enumerate().filter(|(_, c)| **c != 1).take(5).collect::<Vec<_>>()
    );
    assert!(per_member.iter().all(|&jobs| jobs > 0), "NATS spreads the group over the nodes: {per_member:?}");
}

#[test]
fn a_node_keeps_serving_without_nats_and_still_stops_at_once() {
    let Some(mut cluster) = Cluster::start(1, &["--cluster-replicas", "1"]) else { return };
    cluster.nats.clear();
    // Its own clients are served as by a lone node.
    let mut subscriber = cluster.nodes[0].client("alone-subscriber", true);
    subscriber.subscribe(&[("alone/+", QoS::AtLeastOnce)]);
    let mut publisher = cluster.nodes[0].client("alone-publisher", true);
    for id in 1..=50u16 {
        publisher.publish("alone/t", b"m", QoS::AtLeastOnce, false, id);
    }
    assert_eq!(receive(&mut subscriber, 50).len(), 50);
    let status = cluster.nodes[0].terminate().expect("SIGTERM ends the node though NATS is gone");
    assert!(status.success(), "{status:?}");
}

#[test]
fn with_one_nats_server_stopped_the_nodes_keep_routing() {
    let Some(mut cluster) = Cluster::start(3, &[]) else { return };
    // Node 3's own server goes: its client reconnects to a server the cluster told it of.
    drop(cluster.nats.remove(2));
    let mut subscriber = cluster.nodes[2].client("survivor-subscriber", true);
    subscriber.subscribe(&[("survive/#", QoS::AtLeastOnce)]);
    cluster.wait_for_route(0, "survive/probe", &mut subscriber);
    let mut publisher = cluster.nodes[0].client("survivor-publisher", true);
    for id in 1..=200u16 {
        publisher.publish("survive/t", format!("{id}").as_bytes(), QoS::AtLeastOnce, false, id);
    }
    let got = receive(&mut subscriber, 200);
    let ids: Vec<u16> = got.iter().map(|p| text(&p.payload).parse().expect("a number")).collect();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>());
    // And back the other way, from the node that lost its server.
    let mut back = cluster.nodes[0].client("survivor-back", true);
    back.subscribe(&[("back/#", QoS::AtLeastOnce)]);
    cluster.wait_for_route(2, "back/probe", &mut back);
}

/// Connects persistent clients to `node` until one is let in: the client-id bucket is up
/// (JetStream elects its leaders for a few seconds after the servers start).
fn wait_for_owner_bucket(cluster: &Cluster, node: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the client-id bucket never answered");
        let mut client = cluster.nodes[node].raw();
        if client.connect(&format!("bucket-probe-{}", rand_suffix()), false, 60, None).code == 0 {
            client.disconnect();
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_client_id_taken_on_another_node_closes_the_first_connection() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    // (A node whose bucket is not open yet lets a clean session in on its own word.)
    wait_for_owner_bucket(&cluster, 0);
    wait_for_owner_bucket(&cluster, 1);
    let mut first = cluster.nodes[0].client_v5("roaming");
    let mut second = cluster.nodes[1].raw_v5();
    assert_eq!(second.connect("roaming", true, 60, None).code, 0);
    assert_eq!(first.disconnect_reason(), ringmq::protocol::ReasonCode::SESSION_TAKEN_OVER);
    // And back: node 1 takes it from node 2.
    let mut third = cluster.nodes[0].raw_v5();
    assert_eq!(third.connect("roaming", true, 60, None).code, 0);
    assert_eq!(second.disconnect_reason(), ringmq::protocol::ReasonCode::SESSION_TAKEN_OVER);
    third.assert_silent(Duration::from_millis(500));
}

#[test]
fn racing_connects_with_one_client_id_on_two_nodes_leave_exactly_one_owner() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    wait_for_owner_bucket(&cluster, 0);
    wait_for_owner_bucket(&cluster, 1);
    for round in 0..10 {
        let client_id = format!("racer-{round}-{}", rand_suffix());
        let (a, b) = (cluster.nodes[0].addr, cluster.nodes[1].addr);
        let racers: Vec<RawClient> = std::thread::scope(|scope| {
            let connect = |addr| {
                let client_id = client_id.clone();
                scope.spawn(move || {
                    let mut client = RawClient::open(addr, ringmq::protocol::ProtocolVersion::V311);
                    // Odd rounds resume (Clean Start 0): the claim then also asks for a session.
                    assert_eq!(client.connect(&client_id, round % 2 == 0, 60, None).code, 0);
                    client
                })
            };
            let (first, second) = (connect(a), connect(b));
            vec![first.join().expect("racer"), second.join().expect("racer")]
        });
        // Each CONNACK came; within a moment one of the two is closed, the other stays.
        let mut open = 0;
        for mut racer in racers {
            let mut seen = Vec::new();
            if !racer.closed_within(Duration::from_secs(2), &mut seen) {
                open += 1;
            }
        }
        assert_eq!(open, 1, "round {round}: exactly one connection keeps the id");
    }
}

#[test]
fn without_the_client_id_bucket_persistent_connects_are_refused_and_clean_ones_served() {
    // One NATS server cannot hold the 3 replicas asked for: the bucket never opens.
    let Some(cluster) = Cluster::start(1, &[]) else { return };
    let mut persistent = cluster.nodes[0].raw();
    assert_eq!(persistent.connect("wants-a-session", false, 60, None).code, 3, "3.1.1: Server unavailable");
    // 5.0: what counts is whether the session outlives the connection (its expiry), not
    // Clean Start.
    let expiring = ringmq::protocol::Properties { session_expiry_interval: Some(300), ..Default::default() };
    let mut persistent_v5 = cluster.nodes[0].raw_v5();
    assert_eq!(persistent_v5.connect_with_properties("wants-a-session-too", true, 60, expiring).code, 0x88, "5.0: Server unavailable");
    let mut ends_with_connection = cluster.nodes[0].raw_v5();
    assert_eq!(ends_with_connection.connect("no-expiry-no-session", false, 60, None).code, 0, "expiry 0: nothing to keep");
    let mut clean = cluster.nodes[0].client("clean-is-fine", true);
    clean.subscribe(&[("fine/+", QoS::AtLeastOnce)]);
    clean.publish("fine/t", b"x", QoS::AtLeastOnce, false, 1);
    assert_eq!(receive(&mut clean, 1).len(), 1);
}

#[test]
fn with_two_of_three_nats_servers_stopped_persistent_connects_are_refused_and_clean_ones_served() {
    let Some(mut cluster) = Cluster::start(3, &[]) else { return };
    wait_for_owner_bucket(&cluster, 0);
    // JetStream loses its quorum; node 1's own server stays.
    cluster.nats.truncate(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "persistent CONNECTs never refused without a quorum");
        let mut persistent = cluster.nodes[0].raw();
        let code = persistent.connect(&format!("no-quorum-{}", rand_suffix()), false, 60, None).code;
        if code == 3 {
            break;
        }
        assert_eq!(code, 0, "either taken (the bucket had not noticed yet) or Server unavailable");
        persistent.disconnect();
    }
    let mut clean = cluster.nodes[0].client("clean-without-quorum", true);
    clean.subscribe(&[("quorum/+", QoS::AtLeastOnce)]);
    clean.publish("quorum/t", b"x", QoS::AtLeastOnce, false, 1);
    assert_eq!(receive(&mut clean, 1).len(), 1);
}

#[test]
fn a_killed_nodes_wills_are_sent_once_by_a_survivor_and_only_for_connections_still_open() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    wait_for_owner_bucket(&cluster, 0);
    wait_for_owner_bucket(&cluster, 1);
    let mut watcher = cluster.nodes[1].client("will-watcher", true);
    watcher.subscribe(&[("wills/#", QoS::AtLeastOnce)]);
    // Whichever survivor sends them, the watcher on node 2 must hear it.
    cluster.wait_for_route(2, "wills/probe", &mut watcher);
    let will = |name: &str| Some(common::will(&format!("wills/{name}"), name.as_bytes(), QoS::AtLeastOnce, false));
    // Still connected when node 1 dies: its will is due.
    let mut doomed = cluster.nodes[0].raw();
    assert_eq!(doomed.connect("doomed", true, 60, will("doomed")).code, 0);
    // Said goodbye first: its will was discarded.
    let mut polite = cluster.nodes[0].raw();
    assert_eq!(polite.connect("polite", true, 60, will("polite")).code, 0);
    polite.disconnect();
    // Moved to node 2 (without a will): node 1's connection ended, and node 1 sent its
    // will then, as a takeover does; it is not sent again.
    let mut mover = cluster.nodes[0].raw_v5();
    assert_eq!(mover.connect("mover", true, 60, will("mover")).code, 0);
    let mut moved = cluster.nodes[1].raw_v5();
    assert_eq!(moved.connect("mover", true, 60, None).code, 0);
    assert_eq!(mover.disconnect_reason(), ringmq::protocol::ReasonCode::SESSION_TAKEN_OVER);
    let taken_over = watcher.recv_publish();
    watcher.ack(&taken_over);
    assert_eq!(text(&taken_over.topic), "wills/mover");
    cluster.wait_for_wills(&["doomed"], &["polite", "mover"]);

    let killed_at = Instant::now();
    cluster.nodes[0].signal(libc::SIGKILL);
    let publish = match watcher.try_recv(Duration::from_secs(30)) {
        Some(Packet::Publish(publish)) => publish,
        other => panic!("the doomed client's will never came: {other:?}"),
    };
    watcher.ack(&publish);
    eprintln!("will sent {:?} after the kill", killed_at.elapsed());
    assert_eq!((text(&publish.topic), &publish.payload[..]), ("wills/doomed".to_string(), &b"doomed"[..]));
    // Exactly once (the other survivor lost the race), and no other will.
    watcher.assert_silent(Duration::from_secs(5));
}

#[test]
fn a_node_stopped_cleanly_has_no_wills_sent_for_it() {
    let Some(mut cluster) = Cluster::start(3, &[]) else { return };
    wait_for_owner_bucket(&cluster, 0);
    let mut watcher = cluster.nodes[1].client("stop-watcher", true);
    watcher.subscribe(&[("stopped/#", QoS::AtLeastOnce)]);
    cluster.wait_for_route(2, "stopped/probe", &mut watcher);
    let mut client = cluster.nodes[0].raw();
    assert_eq!(client.connect("on-a-stopping-node", true, 60, Some(common::will("stopped/x", b"x", QoS::AtLeastOnce, false))).code, 0);
    // In the bucket, so that a survivor would send it but for the node's own mark.
    cluster.wait_for_wills(&["on-a-stopping-node"], &[]);
    let (mut persistent, _) = resume(&cluster, 0, "kept-on-a-stopping-node");
    persistent.subscribe(&[("stopped/kept", QoS::AtLeastOnce)]);
    cluster.wait_for_session_records(&["kept-on-a-stopping-node"], &[]);
    // As on a lone node, a node stopped on purpose sends no wills, and neither do the
    // others for it: well past the time a killed node's wills take.
    let status = cluster.nodes[0].terminate().expect("SIGTERM ends the node");
    assert!(status.success(), "{status:?}");
    watcher.assert_silent(ringmq::cluster::wills::NODE_DEAD_AFTER + Duration::from_secs(5));
    // Its persistent sessions ended with it: their records are gone, and a client
    // coming back elsewhere starts fresh (as on a lone node restarted without --data-dir).
    cluster.wait_for_session_records(&[], &["kept-on-a-stopping-node"]);
    let (_, present) = resume(&cluster, 1, "kept-on-a-stopping-node");
    assert!(!present, "the session ended with its node");
}

/// Connects `client_id` to `node` with Clean Start 0 and returns the client and whether
/// the CONNACK says session present.
fn resume(cluster: &Cluster, node: usize, client_id: &str) -> (RawClient, bool) {
    let mut client = cluster.nodes[node].raw();
    let connack = client.connect(client_id, false, 60, None);
    assert_eq!(connack.code, 0, "CONNACK for {client_id} on node {node}");
    (client, connack.session_present)
}

/// `client_id` subscribes at QoS 1 to `<prefix>/+` on node 1 (index 0) with a session
/// kept, and leaves; `messages` (topic, payload) are then published on node 2, and node 1
/// has taken each in (queued for the absent client) when this returns. Whether the first
/// CONNECT found a session.
fn queue_while_away(cluster: &Cluster, client_id: &str, prefix: &str, messages: &[(String, Vec<u8>)]) -> bool {
    let (mut first, present) = resume(cluster, 0, client_id);
    first.subscribe(&[(&format!("{prefix}/+"), QoS::AtLeastOnce)]);
    cluster.wait_for_route(1, &format!("{prefix}/probe"), &mut first);
    first.disconnect();
    let before = cluster.nodes[0].wait_for_counters("node 1's counters", |c| both_shards(c, "cluster_publishes_received"));
    let mut publisher = cluster.nodes[1].client(&format!("{prefix}-publisher-{}", rand_suffix()), true);
    for (sequence, (topic, payload)) in messages.iter().enumerate() {
        publisher.publish(topic, payload, QoS::AtLeastOnce, false, (sequence % 60_000 + 1) as u16);
    }
    let received_before = before.total("cluster_publishes_received");
    cluster.nodes[0].wait_for_counters("node 1 took the messages in", |c| {
        c.total("cluster_publishes_received") >= received_before + messages.len() as u64
    });
    present
}

#[test]
fn a_persistent_session_moves_to_whichever_node_its_client_comes_back_to() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    for node in 0..3 {
        wait_for_owner_bucket(&cluster, node);
    }
    const OFFLINE: usize = 50;
    let client_id = format!("roamer-{}", rand_suffix());
    // Subscribed on node 1 (index 0), then gone: the session stays there; published on
    // node 2 while the client is away: queued in its session on node 1.
    let offline: Vec<(String, Vec<u8>)> =
        (0..OFFLINE).map(|sequence| (format!("roam/{}", sequence % 3), format!("{sequence}").into_bytes())).collect();
    assert!(!queue_while_away(&cluster, &client_id, "roam", &offline), "a new session");
    // Back on node 3: the session, its subscription and its messages came along.
    let (mut second, present) = resume(&cluster, 2, &client_id);
    assert!(present, "session present on the node the client came back to");
    let got = receive(&mut second, OFFLINE);
    let sequence: Vec<usize> = got.iter().map(|p| text(&p.payload).parse().expect("a number")).collect();
    assert_eq!(sequence, (0..OFFLINE).collect::<Vec<_>>(), "each offline message once, in order");
    second.assert_silent(Duration::from_millis(300));
    // The subscription lives on node 3 now: a new publish on node 1 reaches it there.
    cluster.wait_for_route(0, "roam/probe", &mut second);
    let mut publisher_on_first = cluster.nodes[0].client(&format!("roam-publisher-{}", rand_suffix()), true);
    publisher_on_first.publish("roam/after", b"after", QoS::AtLeastOnce, false, 1);
    assert_eq!(&receive(&mut second, 1)[0].payload[..], b"after");
    second.disconnect();
    // And back to node 1, from node 3.
    let (mut third, present) = resume(&cluster, 0, &client_id);
    assert!(present, "session present again on the first node");
    third.assert_silent(Duration::from_millis(300));
    // A clean start on node 2 ends it on node 1 too: resumed on node 1, where it was (and
    // where a session not ended would be found locally), there is nothing.
    third.disconnect();
    let clean = cluster.nodes[1].client(&client_id, true);
    clean.disconnect();
    let (_, present) = resume(&cluster, 0, &client_id);
    assert!(!present, "the clean start ended the session");
    let moved = cluster.nodes[2].wait_for_counters("node 3 took the session in", |c| both_shards(c, "cluster_sessions_moved_in"));
    assert_eq!(moved.total("cluster_sessions_moved_in"), 1, "once into node 3");
    assert_eq!(moved.total("cluster_sessions_refused"), 0);
}

/// A clean start's CONNACK comes once the node that held the session has been told to end
/// it: the client, straight back on that node, finds nothing there (that node answers a
/// CONNECT for an id it holds without asking the cluster). Ten rounds, each racing the
/// clean start's eviction against the client's return.
#[test]
fn a_clean_start_on_another_node_has_ended_the_session_by_its_connack() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    wait_for_owner_bucket(&cluster, 0);
    wait_for_owner_bucket(&cluster, 1);
    for round in 0..10 {
        let client_id = format!("hopper-{round}-{}", rand_suffix());
        let (mut first, present) = resume(&cluster, 0, &client_id);
        assert!(!present, "round {round}: a new session");
        first.subscribe(&[("hop/t", QoS::AtLeastOnce)]);
        first.disconnect();
        // Connected before the clean start, so its CONNECT follows that CONNACK at once.
        let mut back = cluster.nodes[0].raw();
        let mut clean = cluster.nodes[1].client(&client_id, true);
        let connack = back.connect(&client_id, false, 60, None);
        assert_eq!(connack.code, 0, "round {round}: CONNACK on node 1");
        assert!(!connack.session_present, "round {round}: the clean start on node 2 ended the session on node 1");
        // The id is node 1's again: node 2's connection for it is closed.
        clean.assert_closed();
        back.disconnect();
    }
}

#[test]
fn a_live_takeover_from_another_node_resends_the_unacknowledged_messages() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    wait_for_owner_bucket(&cluster, 0);
    wait_for_owner_bucket(&cluster, 1);
    let client_id = format!("switcher-{}", rand_suffix());
    let expiring = || ringmq::protocol::Properties { session_expiry_interval: Some(300), ..Default::default() };
    let mut first = cluster.nodes[0].raw_v5();
    assert_eq!(first.connect_with_properties(&client_id, true, 60, expiring()).code, 0);
    first.subscribe(&[("switch/#", QoS::ExactlyOnce)]);
    cluster.wait_for_route(1, "switch/probe", &mut first);
    let mut publisher = cluster.nodes[1].client(&format!("switch-publisher-{}", rand_suffix()), true);
    for sequence in 0..3u16 {
        publisher.publish("switch/t", format!("{sequence}").as_bytes(), QoS::ExactlyOnce, false, sequence + 1);
    }
    // Received, never acknowledged.
    for sequence in 0..3 {
        let publish = first.recv_publish();
        assert_eq!(text(&publish.payload), format!("{sequence}"));
    }
    let mut second = cluster.nodes[1].raw_v5();
    let connack = second.connect_with_properties(&client_id, false, 60, expiring());
    assert_eq!((connack.code, connack.session_present), (0, true), "the session came from the other node");
    assert_eq!(first.disconnect_reason(), ringmq::protocol::ReasonCode::SESSION_TAKEN_OVER);
    for sequence in 0..3 {
        let publish = second.recv_publish();
        assert_eq!((text(&publish.payload), publish.dup), (format!("{sequence}"), true), "sent again, marked DUP");
        second.ack(&publish);
    }
    second.assert_silent(Duration::from_millis(300));
}

#[test]
fn a_session_larger_than_one_nats_message_moves_whole() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    wait_for_owner_bucket(&cluster, 0);
    wait_for_owner_bucket(&cluster, 1);
    // 48 x 64 KiB: three times NATS's default max_payload (1 MiB), so it travels in chunks.
    const MESSAGES: usize = 48;
    let client_id = format!("heavy-{}", rand_suffix());
    let heavy: Vec<(String, Vec<u8>)> = (0..MESSAGES)
        .map(|sequence| {
            let mut payload = vec![sequence as u8; 64 << 10];
            payload[..8].copy_from_slice(&(sequence as u64).to_le_bytes());
            ("heavy/t".to_string(), payload)
        })
        .collect();
    queue_while_away(&cluster, &client_id, "heavy", &heavy);
    let (mut second, present) = resume(&cluster, 1, &client_id);
    assert!(present);
    let got = receive(&mut second, MESSAGES);
    for (sequence, publish) in got.iter().enumerate() {
        assert_eq!(publish.payload.len(), 64 << 10);
        assert_eq!(publish.payload[..8], (sequence as u64).to_le_bytes(), "in order");
        assert!(publish.payload[8..].iter().all(|&byte| byte == sequence as u8), "intact");
    }
    second.assert_silent(Duration::from_millis(300));
}

#[test]
fn with_cluster_durable_a_killed_nodes_queued_and_unacknowledged_messages_come_back_elsewhere() {
    const MESSAGES: usize = 40;
    let Some(cluster) = Cluster::start(3, &["--cluster-durable"]) else { return };
    for node in 0..3 {
        wait_for_owner_bucket(&cluster, node);
    }
    // Every message below is published on node 2.
    let stored_before = cluster.wait_for_durable_store(1, "ringmq_messages");
    // Online on node 1: takes 3 messages and acknowledges them.
    let (mut online, _) = resume(&cluster, 0, "durable-online");
    online.subscribe(&[("live/+", QoS::AtLeastOnce)]);
    cluster.wait_for_route(1, "live/probe", &mut online);
    let mut publisher = cluster.nodes[1].client(&format!("durable-publisher-{}", rand_suffix()), true);
    let publish_three = |publisher: &mut RawClient, name: &str, first_id: u16| {
        for index in 0..3u16 {
            publisher.publish(&format!("live/{name}"), format!("{name} {index}").as_bytes(), QoS::AtLeastOnce, false, first_id + index);
        }
    };
    publish_three(&mut publisher, "old", 1);
    assert_eq!(receive(&mut online, 3).len(), 3);
    let acknowledged_at_ms = unix_ms();
    // Its record's checkpoint moves past them (refreshed while the session owes nothing),
    // so they are not replayed; the next 3 it receives and never acknowledges.
    let margin_ms = ringmq::cluster::message_stream::CHECKPOINT_MARGIN.as_millis() as u64;
    cluster.wait_for_record_checkpoint("durable-online", acknowledged_at_ms + margin_ms);
    publish_three(&mut publisher, "new", 4);
    let unacknowledged: Vec<(String, Vec<u8>)> = (0..3)
        .map(|_| match online.try_recv(Duration::from_secs(10)) {
            Some(Packet::Publish(publish)) => (text(&publish.topic), publish.payload.to_vec()),
            other => panic!("expected a PUBLISH, got {other:?}"),
        })
        .collect();
    // Away: queued on node 1 for it, stored once each in the stream from node 2.
    let messages: Vec<(String, Vec<u8>)> =
        (0..MESSAGES).map(|sequence| (format!("durable/{}", sequence % 3), format!("queued {sequence}").into_bytes())).collect();
    queue_while_away(&cluster, "durable-away", "durable", &messages);
    cluster.wait_for_session_records(&["durable-away", "durable-online"], &[]);
    cluster.wait_for_stream_messages("ringmq_messages", stored_before + (MESSAGES + 6) as u64);
    cluster.nodes[0].signal(libc::SIGKILL);

    // On node 3: its subscription from the record, and every message, once, in order.
    let (mut away, present) = resume(&cluster, 2, "durable-away");
    assert!(present, "session present after its node died");
    let got: Vec<(String, Vec<u8>)> =
        receive(&mut away, MESSAGES).iter().map(|publish| (text(&publish.topic), publish.payload.to_vec())).collect();
    assert_eq!(got, messages);
    away.assert_silent(Duration::from_millis(500));
    // On node 2: what was in flight comes again, what was acknowledged before the
    // checkpoint does not.
    let (mut back, present) = resume(&cluster, 1, "durable-online");
    assert!(present);
    let got: Vec<(String, Vec<u8>)> =
        receive(&mut back, 3).iter().map(|publish| (text(&publish.topic), publish.payload.to_vec())).collect();
    assert_eq!(got, unacknowledged);
    back.assert_silent(Duration::from_millis(500));
    let replayed = |node: usize| cluster.nodes[node].wait_for_counters("replays", |c| both_shards(c, "cluster_messages_replayed"));
    assert_eq!(replayed(2).total("cluster_messages_replayed"), MESSAGES as u64);
    assert_eq!(replayed(1).total("cluster_messages_replayed"), 3);
    // And subscribed there: a new message arrives as any would.
    cluster.wait_for_route(1, "durable/probe", &mut away);
    publisher.publish("durable/after", b"after the death", QoS::AtLeastOnce, false, 7);
    let after = receive(&mut away, 1);
    assert_eq!((text(&after[0].topic), &after[0].payload[..]), ("durable/after".to_string(), &b"after the death"[..]));
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

#[test]
fn a_killed_nodes_persistent_sessions_come_back_elsewhere_with_their_subscriptions() {
    // Swept each second: the dead node's records go once no client will use them.
    let Some(cluster) = Cluster::start(3, &["--cluster-sweep-interval-s", "1"]) else { return };
    for node in 0..3 {
        wait_for_owner_bucket(&cluster, node);
    }
    // One offline, one still connected when node 1 dies; a clean one has no record.
    let (mut away, _) = resume(&cluster, 0, "record-away");
    away.subscribe(&[("records/away/+", QoS::AtLeastOnce)]);
    away.disconnect();
    let (mut online, _) = resume(&cluster, 0, "record-online");
    online.subscribe(&[("records/online/#", QoS::ExactlyOnce)]);
    let mut clean = cluster.nodes[0].client("record-clean", true);
    clean.subscribe(&[("records/clean", QoS::AtLeastOnce)]);
    // Online at the death with a 3 s expiry, and a will that tells when the node is reaped:
    // from then its record counts as offline, and 3 s later it is expired.
    let mut will_watcher = cluster.nodes[2].client("record-will-watcher", true);
    will_watcher.subscribe(&[("records/will/+", QoS::AtLeastOnce)]);
    cluster.wait_for_route(1, "records/will/probe", &mut will_watcher);
    let short_expiry = || ringmq::protocol::Properties { session_expiry_interval: Some(3), ..Default::default() };
    let mut short = cluster.nodes[0].raw_v5();
    let connect =
        short.connect_packet("record-short", true, 60, Some(common::will("records/will/short", b"short", QoS::AtLeastOnce, false)));
    let connect = match connect {
        Packet::Connect(mut connect) => {
            connect.properties = short_expiry();
            Packet::Connect(connect)
        }
        other => other,
    };
    assert_eq!(short.connect_sending(connect).code, 0);
    cluster.wait_for_session_records(&["record-away", "record-online", "record-short"], &["record-clean"]);
    let dead_records: Vec<String> =
        ["record-away", "record-online", "record-short"].iter().flat_map(|id| cluster.record_keys(id)).collect();
    assert_eq!(dead_records.len(), 3, "one record each, all node 1's: {dead_records:?}");
    cluster.nodes[0].signal(libc::SIGKILL);
    // Back on nodes 2 and 3: session present, and subscribed without subscribing again.
    for (node, client_id, topic) in [(1, "record-away", "records/away/x"), (2, "record-online", "records/online/x/y")] {
        let (mut back, present) = resume(&cluster, node, client_id);
        assert!(present, "{client_id}: session present on node {}", node + 1);
        let probe = format!("{}/probe", topic.rsplit_once('/').expect("a level").0);
        let other = if node == 1 { 2 } else { 1 };
        cluster.wait_for_route(other, &probe, &mut back);
        let mut publisher = cluster.nodes[other].client(&format!("record-publisher-{}", rand_suffix()), true);
        publisher.publish(topic, b"after the death", QoS::AtLeastOnce, false, 1);
        let got = receive(&mut back, 1);
        assert_eq!((text(&got[0].topic), &got[0].payload[..]), (topic.to_string(), &b"after the death"[..]));
    }
    let (_, present) = resume(&cluster, 1, "record-clean");
    assert!(!present, "a clean session had nothing to come back to");
    match will_watcher.try_recv(Duration::from_secs(30)) {
        Some(Packet::Publish(publish)) => assert_eq!(text(&publish.topic), "records/will/short"),
        other => panic!("the dead node was never reaped: {other:?}"),
    }
    std::thread::sleep(Duration::from_secs(5));
    let mut late = cluster.nodes[1].raw_v5();
    let connack = late.connect_with_properties("record-short", false, 60, short_expiry());
    assert_eq!((connack.code, connack.session_present), (0, false), "expired 3 s after its node was found dead");
    // The sweep removes, history and all, the expired record and the two whose clients
    // came back elsewhere; the sessions' new records stay.
    cluster.wait_for_records_swept(&dead_records);
    for client_id in ["record-away", "record-online"] {
        let keys = cluster.record_keys(client_id);
        assert!(keys.len() == 1 && !dead_records.contains(&keys[0]), "{client_id} keeps its new node's record: {keys:?}");
    }
}
