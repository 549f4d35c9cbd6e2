//! The coarse timer's rules on one shard with a clock the test moves: keep alive, delayed
//! wills, session expiry, slow subscribers, and a held publisher not counted as idle. No
//! sockets, no sleeping: `now` is passed in, so each boundary is checked to the second.

use std::time::Duration;

use super::*;
use crate::protocol::{PacketId, Will, decode};
use crate::session::{QueueFullPolicy, SessionLimits};

fn start() -> (Shard, Instant) {
    let now = Instant::now();
    let limits = ShardLimits { sys_interval: None, ..ShardLimits::defaults() };
    (Shard::new(ShardId(0), 1, limits, Arc::new(Authenticator::anonymous()), now), now)
}

fn connect(shard: &mut Shard, connect: Connect, now: Instant) -> Rc<Link> {
    let link = shard.new_link();
    assert_eq!(shard.begin_connect(&link, Box::new(connect), now), ConnectProgress::Claimed);
    assert_eq!(link.state(), LinkState::Open, "one shard answers its own claim at once");
    link
}

/// Everything written to `link` since the last call, decoded.
fn packets(link: &Link, version: ProtocolVersion) -> Vec<Packet> {
    let mut bytes = bytes::BytesMut::from(&link.take_output()[..]);
    let mut out = Vec::new();
    while let Some(packet) = decode(&mut bytes, version, u32::MAX).expect("the shard writes valid packets") {
        out.push(packet);
    }
    out
}

fn subscribe(shard: &mut Shard, link: &Link, filter: &'static str, qos: QoS, now: Instant) {
    let filters = vec![(Bytes::from_static(filter.as_bytes()), SubscriptionOptions::with_qos(qos))];
    let subscribe = Subscribe { packet_id: PacketId::new(1).expect("non-zero"), properties: Default::default(), filters };
    shard.handle_packet(link, Packet::Subscribe(subscribe), now).expect("valid SUBSCRIBE");
}

fn publishes(packets: &[Packet]) -> Vec<Bytes> {
    packets.iter().filter_map(|packet| if let Packet::Publish(publish) = packet { Some(publish.payload.clone()) } else { None }).collect()
}

fn will(topic: &'static str, payload: &'static str, delay_s: Option<u32>) -> Will {
    let properties = Properties { will_delay_interval: delay_s, ..Properties::default() };
    Will {
        topic: Bytes::from_static(topic.as_bytes()),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: QoS::AtMostOnce,
        retain: false,
        properties,
    }
}

#[test]
fn keep_alive_closes_at_one_and_a_half_times_the_interval_and_sends_the_will() {
    let (mut shard, t0) = start();
    let watcher = connect(&mut shard, Connect::v311(Bytes::from_static(b"watcher")), t0);
    subscribe(&mut shard, &watcher, "wills/#", QoS::AtMostOnce, t0);
    let quiet = connect(
        &mut shard,
        Connect { keep_alive_s: 10, will: Some(will("wills/quiet", "gone", None)), ..Connect::v311(Bytes::from_static(b"quiet")) },
        t0,
    );
    packets(&watcher, ProtocolVersion::V311);
    shard.tick(t0 + Duration::from_millis(14_999));
    assert!(!quiet.is_closing(), "not before 15 s");
    shard.tick(t0 + Duration::from_secs(15));
    assert!(quiet.is_closing());
    assert_eq!(publishes(&packets(&watcher, ProtocolVersion::V311)), vec![Bytes::from_static(b"gone")]);
    assert_eq!(shard.counters.keep_alive_timeouts, 1);
}

#[test]
fn a_delayed_will_goes_out_after_its_delay_unless_the_session_ends_first() {
    let (mut shard, t0) = start();
    let watcher = connect(&mut shard, Connect::v5(Bytes::from_static(b"watcher")), t0);
    subscribe(&mut shard, &watcher, "wills/#", QoS::AtMostOnce, t0);
    let delayed = |id: &'static str, expiry_s: u32| Connect {
        will: Some(will("wills/delayed", id, Some(5))),
        properties: Properties { session_expiry_interval: Some(expiry_s), ..Properties::default() },
        ..Connect::v5(Bytes::from_static(id.as_bytes()))
    };
    let patient = connect(&mut shard, delayed("patient", 60), t0);
    let brief = connect(&mut shard, delayed("brief", 2), t0);
    shard.connection_ended(&patient, None, t0);
    shard.connection_ended(&brief, None, t0);
    packets(&watcher, ProtocolVersion::V5);
    shard.tick(t0 + Duration::from_secs(2));
    assert_eq!(publishes(&packets(&watcher, ProtocolVersion::V5)), vec![Bytes::from_static(b"brief")], "its session ended first");
    shard.tick(t0 + Duration::from_millis(4_999));
    assert!(packets(&watcher, ProtocolVersion::V5).is_empty());
    shard.tick(t0 + Duration::from_secs(5));
    assert_eq!(publishes(&packets(&watcher, ProtocolVersion::V5)), vec![Bytes::from_static(b"patient")]);
}

#[test]
fn an_offline_session_ends_when_its_expiry_interval_is_over() {
    let (mut shard, t0) = start();
    let expiring = Connect {
        properties: Properties { session_expiry_interval: Some(10), ..Properties::default() },
        ..Connect::v5(Bytes::from_static(b"expiring"))
    };
    let link = connect(&mut shard, expiring, t0);
    subscribe(&mut shard, &link, "kept/#", QoS::AtLeastOnce, t0);
    shard.connection_ended(&link, None, t0);
    shard.tick(t0 + Duration::from_millis(9_999));
    assert!(shard.clients.key_of(b"expiring").is_some(), "kept until its interval is over");
    shard.tick(t0 + Duration::from_secs(10));
    assert!(shard.clients.key_of(b"expiring").is_none());
    assert_eq!(shard.counters.sessions_expired, 1);
}

#[test]
fn a_subscriber_whose_queue_stays_full_is_disconnected_at_the_timeout() {
    let now = Instant::now();
    let mut limits = ShardLimits { sys_interval: None, ..ShardLimits::defaults() };
    limits.session = SessionLimits { inflight_max: 1, queued_messages_max: 2, queue_full_policy: QueueFullPolicy::DropNew };
    limits.slow_subscriber_timeout = Some(Duration::from_secs(30));
    let mut shard = Shard::new(ShardId(0), 1, limits, Arc::new(Authenticator::anonymous()), now);
    let stuck = connect(&mut shard, Connect::v5(Bytes::from_static(b"stuck")), now);
    subscribe(&mut shard, &stuck, "t", QoS::AtLeastOnce, now);
    let publisher = connect(&mut shard, Connect::v311(Bytes::from_static(b"publisher")), now);
    for id in 1..=3u16 {
        let publish =
            Publish::acknowledged(Bytes::from_static(b"t"), Bytes::from_static(b"m"), QoS::AtLeastOnce, PacketId::new(id).expect("id"));
        shard.handle_packet(&publisher, Packet::Publish(publish), now).expect("valid PUBLISH");
    }
    assert!(publisher.is_paused(), "one in flight and two queued: the publisher waits");
    shard.tick(now + Duration::from_millis(29_999));
    assert!(!stuck.is_closing());
    shard.tick(now + Duration::from_secs(30));
    assert!(stuck.is_closing());
    let sent = packets(&stuck, ProtocolVersion::V5);
    assert!(matches!(sent.last(), Some(Packet::Disconnect(disconnect)) if disconnect.reason == ReasonCode::QUOTA_EXCEEDED), "{sent:?}");
    assert!(!publisher.is_paused(), "the publisher goes on");
    assert_eq!(shard.counters.slow_subscriber_disconnects, 1);
}

#[test]
fn a_publisher_held_by_back_pressure_is_not_idle() {
    let (mut shard, t0) = start();
    let held = connect(&mut shard, Connect { keep_alive_s: 10, ..Connect::v311(Bytes::from_static(b"held")) }, t0);
    held.set_waiting_to_publish(true);
    shard.tick(t0 + Duration::from_secs(60));
    assert!(!held.is_closing(), "its PUBLISH waits on the broker, not the other way round");
    held.set_waiting_to_publish(false);
    shard.tick(t0 + Duration::from_secs(61));
    assert!(held.is_closing());
}
