//! Flow control across shards: a full peer outbox throttles the publisher, and a full
//! subscriber queue pauses publishers on other shards without loss.

use super::*;

#[test]
fn publisher_is_throttled_while_a_peer_outbox_is_full() {
    let now = Instant::now();
    let mut limits = limits();
    limits.mesh_outbox_messages_max = 3;
    let auth = Arc::new(Authenticator::anonymous());
    let mut shard = Shard::new(ShardId(0), 2, limits, auth, now);
    shard.handle_batch(ShardId(1), vec![MeshMessage::InterestJoin { filter: Bytes::from_static(b"x"), request: None, since: None }], now);
    let mut cx = Context::from_waker(Waker::noop());
    let publisher = shard.new_link();
    assert_eq!(shard.poll_publish_allowed(&publisher, QoS::AtMostOnce, &mut cx), Poll::Ready(()));
    for _ in 0..3 {
        shard.route(
            Arc::new(crate::session::Message {
                topic: Bytes::from_static(b"x"),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
                publisher: None,
                expires_at: None,
            }),
            now,
        );
    }
    assert!(shard.congested());
    assert_eq!(shard.poll_publish_allowed(&publisher, QoS::AtMostOnce, &mut cx), Poll::Pending);
    assert!(publisher.is_waiting_to_publish(), "a held publisher does not count as idle");
    assert_eq!(shard.counters.publishes_held_for_mesh, 1);
    let Poll::Ready(batch) = shard.poll_outbox(ShardId(1), &mut cx) else { panic!("outbox has messages") };
    assert_eq!(batch.len(), 3, "drained as one batch");
    assert_eq!(shard.poll_publish_allowed(&publisher, QoS::AtMostOnce, &mut cx), Poll::Ready(()));
    assert!(!publisher.is_waiting_to_publish());
}

/// A QoS 1 subscriber with a tiny queue on one shard, a publisher on another that the IO
/// layer would hold while paused: over random interleavings the pause and resume cross the
/// mesh, nothing is dropped, everything arrives in order, and the publisher ends unpaused.
/// Returns how often the publisher was paused.
fn run_back_pressure_scenario(seed: u64) -> u64 {
    let mut limits = limits();
    limits.session = SessionLimits { inflight_max: 2, queued_messages_max: 4, queue_full_policy: crate::session::QueueFullPolicy::DropNew };
    let shard_count = 2 + (seed % 2) as usize;
    let mut sim = Sim::with_limits(shard_count, seed, limits);
    let (subscriber_shard, publisher_shard) = (0, 1 + (seed as usize) % (shard_count - 1));
    let subscriber = sim.connect(subscriber_shard, "slow", true);
    let publisher = sim.connect(publisher_shard, "fast", true);
    sim.settle();
    let filters = vec![(Bytes::from_static(b"bp/t"), SubscriptionOptions::with_qos(QoS::AtLeastOnce))];
    let subscribe = Subscribe { packet_id: PacketId::new(1).expect("id"), properties: Default::default(), filters };
    sim.packet(subscriber_shard, &subscriber, Packet::Subscribe(subscribe));
    sim.settle();
    let _ = read_packets(&subscriber);
    let _ = read_packets(&publisher);
    let messages = 40u32;
    let (mut sent, mut next_expected) = (0u32, 0u32);
    let mut rounds = 0;
    while next_expected < messages {
        rounds += 1;
        assert!(rounds < 10_000, "seed {seed}: no progress (sent {sent}, received {next_expected})");
        // The IO layer hands over a PUBLISH only while its connection is not paused.
        if sent < messages && !publisher.is_paused() && sim.rng.below(2) == 0 {
            let id = PacketId::new(sent as u16 + 1).expect("id");
            let publish =
                Publish::acknowledged(Bytes::from_static(b"bp/t"), Bytes::copy_from_slice(&sent.to_be_bytes()), QoS::AtLeastOnce, id);
            sim.packet(publisher_shard, &publisher, Packet::Publish(publish));
            sent += 1;
        }
        sim.random_steps(3);
        // The subscriber reads now and then (slower than the publisher writes), acknowledging.
        if sim.rng.below(5) == 0 {
            let mut acknowledgements = Vec::new();
            for publish in read_publishes(&subscriber) {
                let n = u32::from_be_bytes(publish.payload[..4].try_into().expect("4 bytes"));
                assert_eq!(n, next_expected, "seed {seed}: in order, none lost");
                next_expected += 1;
                acknowledgements.push(publish.packet_id.expect("QoS 1"));
            }
            sim.acknowledge(subscriber_shard, &subscriber, &acknowledgements);
        }
    }
    sim.settle();
    assert!(!publisher.is_paused(), "seed {seed}: the publisher ends unpaused");
    let drops: u64 = sim.shards.iter().map(|shard| shard.counters.session_queue_drops).sum();
    assert_eq!(drops, 0, "seed {seed}: nothing dropped");
    sim.shards.iter().map(|shard| shard.counters.publishers_paused).sum()
}

#[test]
fn back_pressure_across_shards_loses_nothing_and_always_resumes() {
    let seeds = seeds_or(1..=300);
    let runs = seeds.clone().count() as u64;
    let paused_runs = seeds.filter(|&seed| run_back_pressure_scenario(seed) > 0).count() as u64;
    assert!(runs < 10 || paused_runs * 2 > runs, "most runs exercise the pause: {paused_runs} of {runs}");
}

/// A run of PUBACKs is held to what each PUBACK alone is: one that names a QoS 2 message
/// (owed a PUBREC) is a protocol error, as it is through `handle_packet`.
#[test]
fn a_puback_run_naming_a_qos_2_message_is_a_protocol_error() {
    let mut sim = Sim::new(1, 1);
    let subscriber = sim.connect(0, "run-subscriber", true);
    let publisher = sim.connect(0, "run-publisher", true);
    sim.settle();
    let _ = read_packets(&subscriber);
    sim.packet(0, &subscriber, subscribe_packet_at("run/t", QoS::ExactlyOnce));
    for (n, qos) in [(1u16, QoS::AtLeastOnce), (2, QoS::ExactlyOnce)] {
        let publish = Publish::acknowledged(Bytes::from_static(b"run/t"), Bytes::from_static(b"x"), qos, PacketId::new(n).expect("id"));
        sim.packet(0, &publisher, Packet::Publish(publish));
    }
    sim.settle();
    let ids: Vec<(PacketId, QoS)> =
        read_publishes(&subscriber).into_iter().map(|publish| (publish.packet_id.expect("QoS 1/2"), publish.qos)).collect();
    assert_eq!(ids.iter().map(|(_, qos)| *qos).collect::<Vec<_>>(), [QoS::AtLeastOnce, QoS::ExactlyOnce]);
    let run = puback_run(&ids.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    let outcome = sim.shards[0].handle_short_pubacks(&subscriber, &run, sim.now);
    assert_eq!(outcome, Err(crate::shard::CloseReason::WrongAcknowledgement("PUBACK")));
}
