//! Interest routing: publishes travel only to shards with a matching subscriber (or
//! everywhere with broadcast routing), and a subscribe is never overtaken.

use super::*;

#[test]
fn publishes_travel_only_to_shards_with_a_matching_subscriber() {
    let mut sim = Sim::new(3, 1);
    let publisher = sim.connect(0, "publisher", true);
    let subscriber = sim.connect(1, "subscriber", true);
    sim.settle();
    sim.packet(1, &subscriber, subscribe_packet("a/#"));
    assert!(!read_packets(&subscriber).iter().any(|p| matches!(p, Packet::SubAck(_))), "SUBACK waits for the peers");
    sim.settle();
    assert!(read_packets(&subscriber).iter().any(|p| matches!(p, Packet::SubAck(_))));

    sim.packet(0, &publisher, publish_packet("b", false));
    assert_eq!(take_publishes(&mut sim), Vec::<usize>::new(), "nobody wants b");
    sim.packet(0, &publisher, publish_packet("a/1", false));
    assert_eq!(take_publishes(&mut sim), vec![1]);
    sim.packet(0, &publisher, publish_packet("b", true));
    assert_eq!(take_publishes(&mut sim), vec![1, 2], "retained messages reach every replica");

    // The last subscriber leaves: withdrawn at the next tick, not before.
    sim.packet(1, &subscriber, unsubscribe_packet("a/#"));
    sim.settle();
    sim.packet(0, &publisher, publish_packet("a/1", false));
    assert_eq!(take_publishes(&mut sim), vec![1], "a withdrawal waits for the tick");
    sim.shards[1].tick(sim.now);
    sim.pump();
    sim.settle();
    sim.packet(0, &publisher, publish_packet("a/1", false));
    assert_eq!(take_publishes(&mut sim), Vec::<usize>::new());
}

#[test]
fn broadcast_routing_sends_every_publish_everywhere() {
    let mut sim = Sim::with_limits(3, 1, ShardLimits { routing: crate::shard::Routing::Broadcast, ..limits() });
    let publisher = sim.connect(0, "publisher", true);
    sim.settle();
    sim.packet(0, &publisher, publish_packet("nobody/listens", false));
    assert_eq!(take_publishes(&mut sim), vec![1, 2]);
}

#[test]
fn a_publish_taken_after_a_subscribe_reaches_it_before_the_peers_know() {
    let mut sim = Sim::new(3, 7);
    let publisher = sim.connect(0, "publisher", true);
    let subscriber = sim.connect(1, "subscriber", true);
    sim.settle();
    let _ = read_packets(&subscriber);
    // The SUBSCRIBE is processed on shard 1, then the PUBLISH on shard 0, before shard 0
    // has heard of the subscription (its announcement is still on the wire).
    sim.packet(1, &subscriber, subscribe_packet("late/#"));
    sim.packet(0, &publisher, publish_packet("late/1", false));
    assert_eq!(take_publishes(&mut sim), Vec::<usize>::new(), "routed by what shard 0 knew");
    sim.settle();
    let packets = read_packets(&subscriber);
    assert!(packets.iter().any(|p| matches!(p, Packet::SubAck(_))));
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Publish(publish) if &publish.topic[..] == b"late/1")),
        "sent on once the announcement arrived: {packets:?}"
    );
    assert_eq!(sim.shards[0].counters.late_matches_sent, 1);
    // Published before the subscription: not sent on.
    let other = sim.connect(2, "other", true);
    sim.settle();
    let _ = read_packets(&other);
    sim.packet(0, &publisher, publish_packet("early/1", false));
    sim.settle();
    sim.now += std::time::Duration::from_millis(10);
    sim.packet(2, &other, subscribe_packet("early/#"));
    sim.settle();
    assert!(read_publishes(&other).is_empty());
}

/// A run of publishes to one topic reuses the shard's last match (`Scratch::matches`):
/// each change to the subscriptions between them must show in the very next publish.
#[test]
fn a_run_of_publishes_to_one_topic_sees_every_subscription_change_between_them() {
    let mut sim = Sim::new(1, 1);
    let publisher = sim.connect(0, "publisher", true);
    let (a, b) = (sim.connect(0, "a", true), sim.connect(0, "b", true));
    let publish_at_least_once = |id: u16| {
        let id = PacketId::new(id).expect("id");
        Packet::Publish(Publish::acknowledged(Bytes::from_static(b"t"), Bytes::from_static(b"p"), QoS::AtLeastOnce, id))
    };
    // The QoS each of `links` got the last publish at (None: not delivered).
    let delivered = |links: [&Link; 2]| links.map(|link| read_publishes(link).first().map(|publish| publish.qos));
    sim.packet(0, &a, subscribe_packet("t"));
    let _ = delivered([&a, &b]);
    sim.packet(0, &publisher, publish_at_least_once(1));
    assert_eq!(delivered([&a, &b]), [Some(QoS::AtMostOnce), None]);
    sim.packet(0, &b, subscribe_packet_at("t/#", QoS::AtLeastOnce));
    let _ = delivered([&a, &b]);
    sim.packet(0, &publisher, publish_at_least_once(2));
    assert_eq!(delivered([&a, &b]), [Some(QoS::AtMostOnce), Some(QoS::AtLeastOnce)], "a new subscriber");
    sim.packet(0, &a, subscribe_packet_at("t", QoS::AtLeastOnce));
    let _ = delivered([&a, &b]);
    sim.packet(0, &publisher, publish_at_least_once(3));
    assert_eq!(delivered([&a, &b]), [Some(QoS::AtLeastOnce), Some(QoS::AtLeastOnce)], "a replaced subscription");
    sim.packet(0, &publisher, publish_packet("other", false));
    sim.packet(0, &a, unsubscribe_packet("t"));
    let _ = delivered([&a, &b]);
    sim.packet(0, &publisher, publish_at_least_once(4));
    assert_eq!(delivered([&a, &b]).map(|qos| qos.is_some()), [false, true], "an unsubscribe");
    sim.close(0, &b);
    sim.packet(0, &publisher, publish_at_least_once(5));
    assert_eq!(delivered([&a, &b]), [None, None], "a clean session's end");
}
