//! MQTT 5.0 wills: the Will Delay Interval, the will sent at the earlier of its delay and
//! the session's end, cancelled by a reconnect in time, and its properties forwarded.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, RawClient, will};
use ringmq::protocol::{Packet, Properties, QoS};

fn watcher(broker: &Broker, name: &str) -> RawClient {
    let mut watcher = broker.raw_v5();
    assert_eq!(watcher.connect(name, true, 60, None).code, 0);
    watcher.subscribe(&[("wills5/#", QoS::AtLeastOnce)]);
    watcher
}

/// Connects a 5.0 client with a will (delay, properties) and a session expiry.
fn with_will(broker: &Broker, id: &str, delay_s: u32, session_expiry_s: u32, will_properties: Properties) -> RawClient {
    let mut client = broker.raw_v5();
    let mut last_will = will(&format!("wills5/{id}"), id.as_bytes(), QoS::AtLeastOnce, false);
    last_will.properties = Properties { will_delay_interval: Some(delay_s), ..will_properties };
    let mut packet = client.connect_packet(id, true, 60, Some(last_will));
    if let Packet::Connect(connect) = &mut packet {
        connect.properties.session_expiry_interval = Some(session_expiry_s);
    }
    assert_eq!(client.connect_sending(packet).code, 0);
    client
}

#[test]
fn will_waits_for_its_delay() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wd-watch");
    let client = with_will(&broker, "delayed", 1, 30, Properties::default());
    let closed_at = Instant::now();
    client.drop_abruptly();
    watch.assert_silent(Duration::from_millis(600));
    assert_eq!(&watch.recv_publish().payload[..], b"delayed");
    let waited = closed_at.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
}

#[test]
fn session_end_sends_the_will_before_its_delay() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wd-watch-2");
    let client = with_will(&broker, "short-session", 60, 1, Properties::default());
    let closed_at = Instant::now();
    client.drop_abruptly();
    assert_eq!(&watch.recv_publish().payload[..], b"short-session");
    assert!(closed_at.elapsed() < Duration::from_secs(3), "at the session's end, not after 60 s");
}

#[test]
fn reconnecting_within_the_delay_cancels_the_will() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wd-watch-3");
    let client = with_will(&broker, "returns", 1, 30, Properties::default());
    client.drop_abruptly();
    let mut again = broker.raw_v5();
    let keep = Properties { session_expiry_interval: Some(30), ..Properties::default() };
    assert!(again.connect_with_properties("returns", false, 60, keep).session_present);
    watch.assert_silent(Duration::from_millis(2000));
}

#[test]
fn will_properties_are_forwarded() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wd-watch-4");
    let properties = Properties {
        content_type: Some(Bytes::from_static(b"text/plain")),
        user_properties: vec![(Bytes::from_static(b"why"), Bytes::from_static(b"crash"))],
        ..Properties::default()
    };
    let client = with_will(&broker, "props", 0, 0, properties.clone());
    client.drop_abruptly();
    let got = watch.recv_publish();
    assert_eq!(got.properties.content_type, properties.content_type);
    assert_eq!(got.properties.user_properties, properties.user_properties);
    assert_eq!(got.properties.will_delay_interval, None, "the delay belongs to the will, not the message");
}
