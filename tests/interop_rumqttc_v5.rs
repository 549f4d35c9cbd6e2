//! An independent MQTT 5.0 client (rumqttc's v5 client) against the real broker: request/
//! response properties forwarded, the subscription identifier added, PUBACK 0x10 when
//! nobody subscribes, and a shared subscription split between two such clients.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Broker;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, PublishProperties, SubscribeProperties};
use rumqttc::v5::{Client, Connection, Event, MqttOptions};

fn client(broker: &Broker, id: &str) -> (Client, Connection) {
    let mut options = MqttOptions::new(id, broker.addr.ip().to_string(), broker.addr.port());
    options.set_keep_alive(Duration::from_secs(10));
    Client::new(options, 64)
}

/// Drives `connection` until `done` says so for one of its events, or fails after 10 s.
fn pump_until(connection: &mut Connection, what: &str, mut done: impl FnMut(&Packet) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Incoming(packet))) if done(&packet) => return,
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(error)) => panic!("{what}: connection error {error:?}"),
        }
    }
    panic!("{what}: did not happen within 10 s");
}

#[test]
fn properties_forwarded_identifier_added_and_no_matching_subscribers_reported() {
    let broker = Broker::start(&[]);
    let (subscriber, mut sub_connection) = client(&broker, "v5-interop-sub");
    let properties = SubscribeProperties { id: Some(42), user_properties: Vec::new() };
    subscriber.subscribe_with_properties("v5/request", QoS::AtLeastOnce, properties).expect("subscribe");
    pump_until(&mut sub_connection, "SUBACK", |p| matches!(p, Packet::SubAck(..)));

    let (publisher, mut pub_connection) = client(&broker, "v5-interop-pub");
    let request = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        response_topic: Some("v5/response".into()),
        correlation_data: Some(Bytes::from_static(b"req-1")),
        user_properties: vec![("tenant".into(), "blue".into())],
        content_type: Some("text/plain".into()),
        ..PublishProperties::default()
    };
    publisher.publish_with_properties("v5/request", QoS::AtLeastOnce, false, "hello", request).expect("publish");
    pump_until(&mut pub_connection, "PUBACK", |p| matches!(p, Packet::PubAck(ack) if ack.reason == PubAckReason::Success));

    let mut received: Option<Publish> = None;
    pump_until(&mut sub_connection, "delivery", |p| match p {
        Packet::Publish(publish) => {
            received = Some(publish.clone());
            true
        }
        _ => false,
    });
    let received = received.expect("delivered");
    let properties = received.properties.expect("properties forwarded");
    assert_eq!(&received.payload[..], b"hello");
    assert_eq!(properties.response_topic.as_deref(), Some("v5/response"));
    assert_eq!(properties.correlation_data.as_deref(), Some(&b"req-1"[..]));
    assert_eq!(properties.user_properties, vec![("tenant".to_string(), "blue".to_string())]);
    assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(properties.payload_format_indicator, Some(1));
    assert!(properties.message_expiry_interval.is_some_and(|left| (59..=60).contains(&left)));
    assert_eq!(properties.subscription_identifiers, vec![42]);

    publisher.publish("v5/nobody", QoS::AtLeastOnce, false, "lost?").expect("publish");
    pump_until(
        &mut pub_connection,
        "PUBACK 0x10",
        |p| matches!(p, Packet::PubAck(ack) if ack.reason == PubAckReason::NoMatchingSubscribers),
    );
}

#[test]
fn a_shared_subscription_splits_messages_between_two_v5_clients() {
    let broker = Broker::start(&[]);
    let mut members: Vec<(Client, Connection)> = (0..2).map(|i| client(&broker, &format!("v5-share-{i}"))).collect();
    for (member, connection) in &mut members {
        member.subscribe("$share/workers/v5/jobs", QoS::AtLeastOnce).expect("subscribe");
        pump_until(connection, "SUBACK", |p| matches!(p, Packet::SubAck(..)));
    }
    let (publisher, mut pub_connection) = client(&broker, "v5-share-pub");
    let total = 20;
    for n in 0..total {
        publisher.publish("v5/jobs", QoS::AtLeastOnce, false, format!("job-{n}")).expect("publish");
    }
    let mut acked = 0;
    pump_until(&mut pub_connection, "every PUBACK", |p| {
        acked += usize::from(matches!(p, Packet::PubAck(_)));
        acked == total
    });
    let mut seen = HashSet::new();
    let mut per_member = Vec::new();
    for (_, connection) in &mut members {
        let mut count = 0;
        while let Ok(Ok(event)) = connection.recv_timeout(Duration::from_millis(300)) {
            if let Event::Incoming(Packet::Publish(publish)) = event {
                assert!(seen.insert(publish.payload.clone()), "one member per message");
                count += 1;
            }
        }
        per_member.push(count);
    }
    assert_eq!(seen.len(), total, "every message reached the group");
    assert!(per_member.iter().all(|&count| count > 0), "both members got a share: {per_member:?}");
}
