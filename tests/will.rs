//! Wills: published on keep-alive timeout, abrupt close and protocol error; not after
//! DISCONNECT. Also keep alive itself: 1.5 x the interval, and PINGREQ keeps it alive.

mod common;

use std::time::{Duration, Instant};

use common::{Broker, will};
use ringmq::protocol::{Packet, QoS};

fn watcher(broker: &Broker, name: &str) -> common::RawClient {
    let mut watcher = broker.client(name, true);
    watcher.subscribe(&[("wills/#", QoS::AtLeastOnce)]);
    watcher
}

#[test]
fn will_is_published_on_abrupt_close() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "w-watch-1");
    let mut client = broker.raw();
    assert_eq!(client.connect("w-abrupt", true, 60, Some(will("wills/abrupt", b"gone", QoS::AtLeastOnce, false))).code, 0);
    client.drop_abruptly();
    let got = watch.recv_publish();
    assert_eq!((&got.topic[..], &got.payload[..], got.qos), (&b"wills/abrupt"[..], &b"gone"[..], QoS::AtLeastOnce));
}

#[test]
fn will_is_not_published_after_disconnect() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "w-watch-2");
    let mut client = broker.raw();
    client.connect("w-clean", true, 60, Some(will("wills/clean", b"gone", QoS::AtMostOnce, false)));
    client.disconnect();
    watch.assert_silent(Duration::from_millis(500));
}

#[test]
fn will_is_published_on_protocol_error() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "w-watch-3");
    let mut client = broker.raw();
    client.connect("w-violator", true, 60, Some(will("wills/violator", b"bad", QoS::AtMostOnce, false)));
    client.send_bytes(&[0xC1, 0x00]); // PINGREQ with a reserved flag bit set
    client.assert_closed();
    assert_eq!(&watch.recv_publish().payload[..], b"bad");
}

#[test]
fn retained_will_is_kept() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw();
    client.connect("w-retained", true, 60, Some(will("wills/retained", b"last", QoS::AtMostOnce, true)));
    client.drop_abruptly();
    // Subscribe after the will: it must arrive as a retained message.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut late = broker.client("w-late", true);
        late.subscribe(&[("wills/retained", QoS::AtMostOnce)]);
        if let Some(Packet::Publish(got)) = late.try_recv(Duration::from_millis(200)) {
            assert!(got.retain);
            assert_eq!(&got.payload[..], b"last");
            break;
        }
        assert!(Instant::now() < deadline, "retained will never appeared");
        late.disconnect();
    }
}

#[test]
fn keep_alive_timeout_closes_after_one_and_a_half_intervals_and_publishes_the_will() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "w-watch-4");
    let mut client = broker.raw();
    let started = Instant::now();
    client.connect("w-silent", true, 1, Some(will("wills/silent", b"timeout", QoS::AtMostOnce, false)));
    client.assert_closed();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400), "closed before 1.5 x keep alive: {waited:?}");
    assert!(waited < Duration::from_millis(3000), "closed too late: {waited:?}");
    assert_eq!(&watch.recv_publish().payload[..], b"timeout");
}

#[test]
fn pings_keep_a_connection_alive() {
    let broker = Broker::start(&[]);
    let mut client = broker.raw();
    client.connect("w-pinger", true, 1, None);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(600));
        client.send(&Packet::PingReq);
        assert_eq!(client.recv(), Packet::PingResp);
    }
}

#[test]
fn will_is_published_when_a_new_connection_takes_the_client_id_over() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "w-watch-5");
    let mut old = broker.raw();
    assert_eq!(old.connect("w-taken", true, 60, Some(will("wills/taken", b"replaced", QoS::AtMostOnce, false))).code, 0);
    let mut new = broker.raw();
    assert_eq!(new.connect("w-taken", true, 60, None).code, 0);
    old.assert_closed();
    assert_eq!(&watch.recv_publish().payload[..], b"replaced");
}
