//! An independent MQTT 3.1.1 client (rumqttc) against the real broker: QoS 0/1/2 round
//! trips in order, retained delivery, and a persistent session across reconnects.

mod common;

use std::time::{Duration, Instant};

use common::Broker;
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, Publish, QoS};

fn client(broker: &Broker, id: &str, clean: bool) -> (Client, Connection) {
    let mut options = MqttOptions::new(id, broker.addr.ip().to_string(), broker.addr.port());
    options.set_keep_alive(Duration::from_secs(10));
    options.set_clean_session(clean);
    Client::new(options, 64)
}

/// Runs the event loop until `count` PUBLISHes arrived or the deadline passed.
fn receive(connection: &mut Connection, count: usize) -> Vec<Publish> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = Vec::new();
    while received.len() < count && Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => received.push(publish),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(error)) => panic!("connection error: {error:?}"),
        }
    }
    received
}

/// Drives the event loop until the broker has acknowledged our SUBSCRIBE.
fn wait_for_suback(connection: &mut Connection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::SubAck(_)))) = connection.recv_timeout(Duration::from_millis(200)) {
            return;
        }
    }
    panic!("no SUBACK");
}

/// Publishes from a background thread that also drives its own event loop.
fn publish_all(broker: &Broker, id: &str, messages: Vec<(String, QoS, bool, Vec<u8>)>) {
    let (publisher, mut connection) = client(broker, id, true);
    let total = messages.len();
    let pump = std::thread::spawn(move || {
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match connection.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_)))) => sent += 1,
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(error)) => panic!("publisher error: {error:?}"),
            }
            if sent == total {
                // Let the last QoS flows finish.
                let _ = connection.recv_timeout(Duration::from_millis(300));
                return;
            }
        }
    });
    for (topic, qos, retain, payload) in messages {
        publisher.publish(topic, qos, retain, payload).expect("queue publish");
    }
    pump.join().expect("publisher thread");
}

#[test]
fn rumqttc_round_trips_every_qos_in_order() {
    let broker = Broker::start(&[]);
    let (subscriber, mut connection) = client(&broker, "rq-sub", true);
    subscriber.subscribe("interop/#", QoS::ExactlyOnce).expect("subscribe");
    wait_for_suback(&mut connection);
    let mut messages = Vec::new();
    for n in 0..30u8 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(n % 3)];
        messages.push((format!("interop/{}", n % 4), qos, false, vec![n]));
    }
    publish_all(&broker, "rq-pub", messages);
    let received = receive(&mut connection, 30);
    let payloads: Vec<u8> = received.iter().map(|p| p.payload[0]).collect();
    assert_eq!(payloads, (0..30).collect::<Vec<u8>>(), "all 30, in publish order");
    for (n, publish) in received.iter().enumerate() {
        let expected = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][n % 3];
        assert_eq!(publish.qos, expected);
        assert!(!publish.retain);
    }
}

#[test]
fn rumqttc_sees_retained_messages_with_the_retain_flag() {
    let broker = Broker::start(&[]);
    publish_all(&broker, "rq-ret-pub", vec![("rq/retained".into(), QoS::AtLeastOnce, true, b"kept".to_vec())]);
    let (subscriber, mut connection) = client(&broker, "rq-ret-sub", true);
    subscriber.subscribe("rq/+", QoS::AtLeastOnce).expect("subscribe");
    let received = receive(&mut connection, 1);
    assert_eq!(received.len(), 1);
    assert!(received[0].retain);
    assert_eq!(&received[0].payload[..], b"kept");
}

#[test]
fn rumqttc_persistent_session_gets_messages_queued_while_offline() {
    let broker = Broker::start(&[]);
    {
        let (subscriber, mut connection) = client(&broker, "rq-persistent", false);
        subscriber.subscribe("rq/offline", QoS::AtLeastOnce).expect("subscribe");
        wait_for_suback(&mut connection);
        subscriber.disconnect().expect("disconnect");
        let _ = receive(&mut connection, 0);
    }
    publish_all(&broker, "rq-offline-pub", (0..5u8).map(|n| ("rq/offline".to_string(), QoS::AtLeastOnce, false, vec![n])).collect());
    let (_subscriber, mut connection) = client(&broker, "rq-persistent", false);
    let received = receive(&mut connection, 5);
    assert_eq!(received.iter().map(|p| p.payload[0]).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
}
