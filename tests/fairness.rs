//! A shard stays responsive while one of its tasks always has work: here, the receiver of
//! a peer shard's channel that the peer keeps full. glommio never preempts a task, so such
//! a loop has to yield; without it a CONNECT on that shard waits for as long as the flood
//! lasts. (The read loop yields the same way, for a client that sends faster than its
//! shard can take; no loopback client here outran the shard, so no test shows it.)

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{Broker, RawClient, on_cpu};
use ringmq::protocol::{Packet, ProtocolVersion, Publish, QoS};

/// Well above what a CONNECT takes here under this flood (up to 2 s on the 2-core machine:
/// its claim and grant queue behind the publishes already in the channel, and shard 0
/// cannot keep up with them), well below the flood: without the yields it never comes.
const CONNACK_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long the flood may run at most, whatever happens to the test.
const FLOOD_MAX: Duration = Duration::from_secs(40);

/// Publishes QoS 0 messages to `topic` from a client made on the `cpu`-th CPU this test
/// may use (so on that shard under `--steer cpu`), as fast as the socket takes them, until
/// `flooding` clears.
fn flood(broker: &Broker, cpu: usize, topic: &'static str, flooding: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let publisher = on_cpu(cpu, || broker.client(&format!("flooder-{cpu}"), true));
    std::thread::spawn(move || {
        let (mut stream, _) = publisher.into_stream();
        let mut block = BytesMut::new();
        for _ in 0..1000 {
            let publish = Publish::at_most_once(Bytes::from_static(topic.as_bytes()), Bytes::from_static(b"0123456789abcdef"));
            Packet::Publish(publish).encode(ProtocolVersion::V311, &mut block);
        }
        let started = Instant::now();
        while flooding.load(Ordering::Relaxed) && started.elapsed() < FLOOD_MAX {
            if stream.write_all(&block).is_err() {
                return;
            }
        }
    })
}

/// Time from sending a CONNECT on `cpu` to its CONNACK.
fn connect_time(broker: &Broker, cpu: usize, client_id: &str) -> Duration {
    let mut probe = on_cpu(cpu, || broker.raw());
    let started = Instant::now();
    probe.send(&probe.connect_packet(client_id, true, 60, None));
    let answered = probe.try_recv(FLOOD_MAX);
    assert!(matches!(answered, Some(Packet::ConnAck(_))), "{client_id}: CONNACK, got {answered:?}");
    started.elapsed()
}

/// Two hundred subscribers on `sinks_cpu`'s shard that read nothing, a flood from
/// `flooder_cpu`'s shard, and the slowest of six CONNECTs (three on each shard) under it.
fn slowest_connect_under_a_flood(sinks_cpu: usize, flooder_cpu: usize) -> Duration {
    let broker = Broker::start(&["--steer", "cpu"]);
    // Each message costs the sinks' shard far more than reading it costs the flooder's:
    // the busy loop there always has more to do.
    let _sinks: Vec<RawClient> = on_cpu(sinks_cpu, || {
        (0..200)
            .map(|index| {
                let mut sink = broker.client(&format!("sink-{index}"), true);
                sink.subscribe(&[("flood", QoS::AtMostOnce)]);
                sink
            })
            .collect()
    });
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = flood(&broker, flooder_cpu, "flood", flooding.clone());
    std::thread::sleep(Duration::from_millis(500));
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for cpu in 0..2 {
            slowest = slowest.max(connect_time(&broker, cpu, &format!("probe-{round}-{cpu}")));
        }
    }
    flooding.store(false, Ordering::Relaxed);
    flooder.join().expect("flooder");
    slowest
}

/// The busy loop is shard 0's receiver of shard 1's channel, which shard 1 keeps full.
#[test]
fn connects_are_answered_on_both_shards_while_one_floods_the_other() {
    let slowest = slowest_connect_under_a_flood(0, 1);
    assert!(slowest < CONNACK_WAIT_MAX, "the slowest CONNACK under the flood took {slowest:?}");
}
