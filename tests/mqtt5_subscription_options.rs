//! MQTT 5.0 subscription options: no-local, retain-as-published, retain handling 0/1/2.

mod common;

use std::time::Duration;

use common::Broker;
use ringmq::protocol::{QoS, RetainHandling, SubscriptionOptions};

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::with_qos(qos)
}

#[test]
fn no_local_skips_the_publishers_own_messages() {
    let broker = Broker::start(&[]);
    let mut client = broker.client_v5("nl-self");
    client.subscribe_with(&[("nl/t", SubscriptionOptions { no_local: true, ..options(QoS::AtMostOnce) })]);
    client.publish("nl/t", b"mine", QoS::AtMostOnce, false, 0);
    client.assert_silent(Duration::from_millis(300));
    let mut other = broker.client_v5("nl-other");
    other.publish("nl/t", b"theirs", QoS::AtMostOnce, false, 0);
    assert_eq!(&client.recv_publish().payload[..], b"theirs");
}

#[test]
fn no_local_on_one_subscription_does_not_hide_another_match() {
    let broker = Broker::start(&[]);
    let mut client = broker.client_v5("nl-two");
    client.subscribe_with(&[
        ("nl2/t", SubscriptionOptions { no_local: true, ..options(QoS::AtLeastOnce) }),
        ("nl2/+", options(QoS::AtMostOnce)),
    ]);
    client.publish("nl2/t", b"mine", QoS::AtMostOnce, false, 0);
    let got = client.recv_publish();
    assert_eq!((&got.payload[..], got.qos), (&b"mine"[..], QoS::AtMostOnce), "through the other subscription only");
}

#[test]
fn retain_as_published_keeps_the_flag_on_live_delivery() {
    let broker = Broker::start(&[]);
    let mut as_published = broker.client_v5("rap-yes");
    as_published.subscribe_with(&[("rap/t", SubscriptionOptions { retain_as_published: true, ..options(QoS::AtMostOnce) })]);
    let mut plain = broker.client_v5("rap-no");
    plain.subscribe_with(&[("rap/t", options(QoS::AtMostOnce))]);
    let mut publisher = broker.client_v5("rap-pub");
    publisher.publish("rap/t", b"r", QoS::AtMostOnce, true, 0);
    assert!(as_published.recv_publish().retain);
    assert!(!plain.recv_publish().retain);
}

#[test]
fn retain_handling_chooses_when_retained_messages_are_sent() {
    let broker = Broker::start(&[]);
    let mut publisher = broker.client_v5("rh-pub");
    publisher.publish("rh/t", b"kept", QoS::AtLeastOnce, true, 1);

    let mut never = broker.client_v5("rh-2");
    never.subscribe_with(&[("rh/t", SubscriptionOptions { retain_handling: RetainHandling::DoNotSend, ..options(QoS::AtMostOnce) })]);
    never.assert_silent(Duration::from_millis(300));

    let mut if_new = broker.client_v5("rh-1");
    let new_only = SubscriptionOptions { retain_handling: RetainHandling::SendIfNewSubscription, ..options(QoS::AtMostOnce) };
    if_new.subscribe_with(&[("rh/t", new_only)]);
    assert!(if_new.recv_publish().retain, "first subscription: sent");
    if_new.subscribe_with(&[("rh/t", new_only)]);
    if_new.assert_silent(Duration::from_millis(300));

    let mut always = broker.client_v5("rh-0");
    always.subscribe_with(&[("rh/t", options(QoS::AtMostOnce))]);
    assert!(always.recv_publish().retain);
    always.subscribe_with(&[("rh/t", options(QoS::AtMostOnce))]);
    assert!(always.recv_publish().retain, "handling 0 sends again on every subscribe");
}
