//! Property tests for the codec: every packet we can build survives encode -> decode
//! unchanged, in both versions, and arbitrary bytes never panic the decoder.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const MAX_PACKET: u32 = 1 << 20;

fn mqtt_string() -> impl Strategy<Value = Bytes> {
    "[a-zA-Z0-9/ éλ+#$]{0,24}".prop_map(Bytes::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1u16..).prop_map(|id| PacketId::new(id).expect("non-zero"))
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

fn user_properties() -> impl Strategy<Value = Vec<(Bytes, Bytes)>> {
    proptest::collection::vec((mqtt_string(), mqtt_string()), 0..3)
}

/// Properties legal in `context`; empty for 3.1.1.
fn properties(context: PropertyContext, version: ProtocolVersion) -> BoxedStrategy<Properties> {
    if !version.is_v5() {
        return Just(Properties::default()).boxed();
    }
    let base = user_properties().prop_map(|user_properties| Properties { user_properties, ..Properties::default() });
    match context {
        PropertyContext::Publish | PropertyContext::Will => (
            base,
            proptest::option::of(0u8..=1),
            proptest::option::of(any::<u32>()),
            proptest::option::of(mqtt_string()),
            proptest::option::of(binary()),
            proptest::collection::vec(1u32..=268_435_455, 0..3),
        )
            .prop_map(move |(mut p, format, expiry, response, correlation, ids)| {
                p.payload_format_indicator = format;
                p.message_expiry_interval = expiry;
                p.response_topic = response;
                p.correlation_data = correlation;
                if context == PropertyContext::Publish {
                    p.subscription_identifiers = ids;
                } else {
                    p.will_delay_interval = expiry;
                }
                p
            })
            .boxed(),
        PropertyContext::Connect => (base, proptest::option::of(any::<u32>()), proptest::option::of(1u16..))
            .prop_map(|(mut p, expiry, receive_maximum)| {
                p.session_expiry_interval = expiry;
                p.receive_maximum = receive_maximum;
                p
            })
            .boxed(),
        PropertyContext::ConnAck => (base, proptest::option::of(mqtt_string()), proptest::option::of(any::<u16>()))
            .prop_map(|(mut p, assigned, keep_alive)| {
                p.assigned_client_identifier = assigned;
                p.server_keep_alive = keep_alive;
                p.maximum_qos = Some(1);
                p
            })
            .boxed(),
        PropertyContext::Subscribe | PropertyContext::Unsubscribe => base.boxed(),
        _ => (base, proptest::option::of(mqtt_string()))
            .prop_map(|(mut p, reason)| {
                p.reason_string = reason;
                p
            })
            .boxed(),
    }
}

/// A reason code the packet may carry (5.0 lists them per packet type); 3.1.1 has none.
fn reason(version: ProtocolVersion, allowed: &'static [u8]) -> BoxedStrategy<ReasonCode> {
    if version.is_v5() { proptest::sample::select(allowed).prop_map(ReasonCode).boxed() } else { Just(ReasonCode::SUCCESS).boxed() }
}

const PUBACK_REASONS: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_REASONS: &[u8] = &[0x00, 0x92];
const DISCONNECT_REASONS: &[u8] = &[0x00, 0x04, 0x80, 0x81, 0x82, 0x8B, 0x8E, 0x97, 0x9C, 0xA2];
const AUTH_REASONS: &[u8] = &[0x00, 0x18, 0x19];

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (qos(), any::<bool>(), any::<bool>(), mqtt_string(), packet_id(), properties(PropertyContext::Publish, version), binary()).prop_map(
        |(qos, dup, retain, topic, id, properties, payload)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                packet_id: (!at_most_once).then_some(id),
                properties: properties.into(),
                payload,
            })
        },
    )
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = proptest::option::of((mqtt_string(), binary(), qos(), any::<bool>(), properties(PropertyContext::Will, version)))
        .prop_map(|will| will.map(|(topic, payload, qos, retain, properties)| Will { topic, payload, qos, retain, properties }));
    (
        any::<bool>(),
        any::<u16>(),
        properties(PropertyContext::Connect, version),
        mqtt_string(),
        will,
        proptest::option::of(mqtt_string()),
        proptest::option::of(binary()),
    )
        .prop_map(move |(clean_start, keep_alive_s, properties, client_id, will, username, password)| {
            // 3.1.1 forbids a password without a user name.
            let password = if version.is_v5() || username.is_some() { password } else { None };
            Packet::Connect(Box::new(Connect { version, clean_start, keep_alive_s, properties, client_id, will, username, password }))
        })
}

fn subscription_options(version: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, no_local, rap, handling)| {
        if !version.is_v5() {
            return SubscriptionOptions::with_qos(qos);
        }
        let retain_handling = match handling {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNewSubscription,
            _ => RetainHandling::DoNotSend,
        };
        SubscriptionOptions { qos, no_local, retain_as_published: rap, retain_handling }
    })
}

fn codes() -> impl Strategy<Value = Vec<ReasonCode>> {
    proptest::collection::vec(any::<u8>().prop_map(ReasonCode), 1..5)
}

fn ack(version: ProtocolVersion, allowed: &'static [u8]) -> impl Strategy<Value = Ack> {
    (packet_id(), reason(version, allowed), properties(PropertyContext::Ack, version)).prop_map(|(packet_id, reason, properties)| Ack {
        packet_id,
        reason,
        properties: properties.into(),
    })
}

fn any_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let mut options = vec![
        publish(version).boxed(),
        connect(version).boxed(),
        (any::<bool>(), any::<u8>(), properties(PropertyContext::ConnAck, version))
            .prop_map(|(session_present, code, properties)| {
                Packet::ConnAck(ConnAck { session_present, code, properties: properties.into() })
            })
            .boxed(),
        ack(version, PUBACK_REASONS).prop_map(Packet::PubAck).boxed(),
        ack(version, PUBACK_REASONS).prop_map(Packet::PubRec).boxed(),
        ack(version, PUBREL_REASONS).prop_map(Packet::PubRel).boxed(),
        ack(version, PUBREL_REASONS).prop_map(Packet::PubComp).boxed(),
        (
            packet_id(),
            properties(PropertyContext::Subscribe, version),
            proptest::collection::vec((mqtt_string(), subscription_options(version)), 1..4),
        )
            .prop_map(|(packet_id, properties, filters)| Packet::Subscribe(Subscribe { packet_id, properties: properties.into(), filters }))
            .boxed(),
        (packet_id(), properties(PropertyContext::SubAck, version), codes())
            .prop_map(|(packet_id, properties, codes)| Packet::SubAck(SubAck { packet_id, properties: properties.into(), codes }))
            .boxed(),
        (packet_id(), properties(PropertyContext::Unsubscribe, version), proptest::collection::vec(mqtt_string(), 1..4))
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe { packet_id, properties: properties.into(), filters })
            })
            .boxed(),
        (packet_id(), properties(PropertyContext::UnsubAck, version), codes())
            .prop_map(move |(packet_id, properties, codes)| {
                Packet::UnsubAck(UnsubAck { packet_id, properties: properties.into(), codes: if v5 { codes } else { Vec::new() } })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (reason(version, DISCONNECT_REASONS), properties(PropertyContext::Disconnect, version))
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties: properties.into() }))
            .boxed(),
    ];
    if v5 {
        options.push(
            (reason(version, AUTH_REASONS), properties(PropertyContext::Auth, version))
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties: properties.into() }))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|version| any_packet(version).prop_map(move |packet| (version, packet)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_decode_round_trip((version, packet) in versioned_packet()) {
        let mut buf = BytesMut::new();
        packet.encode(version, &mut buf);
        let decoded = decode(&mut buf, version, MAX_PACKET).expect("decodes").expect("complete");
        prop_assert_eq!(decoded, packet);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error((version, packet) in versioned_packet()) {
        let mut whole = BytesMut::new();
        packet.encode(version, &mut whole);
        for cut in 0..whole.len() {
            let mut prefix = BytesMut::from(&whole[..cut]);
            prop_assert_eq!(decode(&mut prefix, version, MAX_PACKET), Ok(None));
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), v5 in any::<bool>()) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        let mut buf = BytesMut::from(&bytes[..]);
        // Decode until the input is exhausted, incomplete or rejected.
        while let Ok(Some(_)) = decode(&mut buf, version, MAX_PACKET) {}
    }

    #[test]
    fn corrupted_packets_never_panic((version, packet) in versioned_packet(), index in any::<usize>(), byte in any::<u8>()) {
        let mut buf = BytesMut::new();
        packet.encode(version, &mut buf);
        let index = index % buf.len();
        buf[index] = byte;
        let _ = decode(&mut buf, version, MAX_PACKET);
    }

    /// A run of short PUBACKs is exactly the PUBACKs `decode` reads one by one from the
    /// start (Success, no properties, four bytes each), and it stops only where `decode`
    /// would read something else.
    #[test]
    fn a_short_puback_run_is_what_decode_reads(
        chunks in proptest::collection::vec(
            prop_oneof![3 => any::<[u8; 2]>().prop_map(|id| [0x40, 2, id[0], id[1]]), 1 => any::<[u8; 4]>()],
            0..16,
        ),
        tail in proptest::collection::vec(any::<u8>(), 0..8),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        let bytes: Vec<u8> = chunks.iter().flatten().copied().chain(tail).collect();
        let ids: Vec<PacketId> = short_pubacks(&bytes).collect();
        let run = short_puback_run_bytes(&bytes);
        prop_assert_eq!(run, ids.len() * SHORT_PUBACK_BYTES);
        let mut buf = BytesMut::from(&bytes[..]);
        for id in &ids {
            prop_assert_eq!(decode(&mut buf, version, MAX_PACKET), Ok(Some(Packet::PubAck(Ack::new(*id)))));
        }
        prop_assert_eq!(buf.len(), bytes.len() - run);
        let before = buf.len();
        if let Ok(Some(Packet::PubAck(ack))) = decode(&mut buf, version, MAX_PACKET) {
            let short = before - buf.len() == SHORT_PUBACK_BYTES && ack == Ack::new(ack.packet_id);
            prop_assert!(!short, "the run stopped before a short PUBACK");
        }
    }

    /// The in-place path for two-byte acknowledgements decides exactly as the general one.
    #[test]
    fn short_acknowledgements_decode_as_the_general_path_does(first in 0x40u8..0x80, id in any::<[u8; 2]>(), v5 in any::<bool>()) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        let wire = [first, 2, id[0], id[1], 0xE0];
        let mut fast = BytesMut::from(&wire[..]);
        let mut general = BytesMut::from(&wire[..]);
        prop_assert_eq!(decode(&mut fast, version, MAX_PACKET), super::packet::decode_frame(&mut general, 4, 1, version).map(Some));
        prop_assert_eq!(&fast[..], &general[..]);
    }
}
