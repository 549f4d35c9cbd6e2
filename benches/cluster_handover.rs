//! What a session moving between cluster nodes costs the client: the time from CONNECT to
//! CONNACK when a persistent session is resumed on the node that holds it, and on another
//! node (which first asks the holder for it, `cluster::handover`), with 0, 100 and 1,000
//! QoS 1 messages queued in it. Needs `nats-server` (as `tests/cluster.rs` does); prints
//! why when it cannot run. `cargo bench --bench cluster_handover`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::rand_suffix;
use ringmq::protocol::{Packet, QoS};

const ROUNDS: usize = 20;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn main() {
    let Some(cluster) = Cluster::start(3, &[]) else { return };
    for node in 0..2 {
        // Persistent CONNECTs are refused until JetStream has made the client-id bucket.
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.nodes[node].raw().connect(&format!("probe-{}", rand_suffix()), false, 60, None).code != 0 {
            assert!(Instant::now() < deadline, "the client-id bucket never answered");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("session resume, CONNECT to CONNACK, {ROUNDS} rounds each (3 nats-server and 3 ringmq on this machine)");
    for queued in [0usize, 100, 1_000] {
        let (mut same_node, mut other_node) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let client_id = format!("resume-{queued}-{round}-{}", rand_suffix());
            let mut client = cluster.nodes[0].raw();
            assert_eq!(client.connect(&client_id, false, 60, None).code, 0);
            client.subscribe(&[("resume/+", QoS::AtLeastOnce)]);
            client.disconnect();
            let started = Instant::now();
            let mut client = cluster.nodes[0].raw();
            let connack = client.connect(&client_id, false, 60, None);
            same_node.push(started.elapsed());
            assert!(connack.session_present);
            client.disconnect();
            let mut publisher = cluster.nodes[0].client(&format!("resume-publisher-{}", rand_suffix()), true);
            for sequence in 0..queued {
                publisher.publish("resume/t", &[0u8; 64], QoS::AtLeastOnce, false, (sequence % 60_000 + 1) as u16);
            }
            publisher.disconnect();
            let started = Instant::now();
            let mut client = cluster.nodes[1].raw();
            let connack = client.connect(&client_id, false, 60, None);
            other_node.push(started.elapsed());
            assert!(connack.session_present, "the session came from node 1");
            for received in 0..queued {
                match client.try_recv(Duration::from_secs(5)) {
                    Some(Packet::Publish(publish)) => client.ack(&publish),
                    other => panic!("{received} of {queued} queued messages arrived, then {other:?}"),
                }
            }
            client.disconnect();
        }
        same_node.sort();
        other_node.sort();
        println!(
            "{queued:>5} queued: same node p50 {:?} p90 {:?} | from another node p50 {:?} p90 {:?} max {:?}",
            percentile(&same_node, 0.5),
            percentile(&same_node, 0.9),
            percentile(&other_node, 0.5),
            percentile(&other_node, 0.9),
            percentile(&other_node, 1.0),
        );
    }
}
