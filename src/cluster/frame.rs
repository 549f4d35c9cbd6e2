//! A message as it travels between nodes, pure: the body of one NATS message.
//!
//! `[format u8][origin u64 LE][sequence u64 LE][MQTT 5.0 PUBLISH packet]`. The PUBLISH
//! holds topic, QoS, RETAIN, payload and properties, so the codec we already trust (and
//! fuzz) reads it back; its Message Expiry Interval is what was left at the origin.
//! `origin` names the sending node's process (a random number drawn at start, so a
//! restarted node is a new origin) and `sequence` numbers its publishes: a node that
//! receives one message through two of its NATS subscriptions keeps the first (`dedup`).

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{DecodeError, Packet, PacketId, ProtocolVersion, Publish, QoS, decode};
use crate::session::Message;

/// The only format so far; a node refuses frames of another (a newer node in the cluster).
const FORMAT: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 + 8;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a cluster frame shorter than its header")]
    Short,
    #[error("a cluster frame in format {0}, this node reads format 1")]
    Format(u8),
    #[error("a cluster frame whose message does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("a cluster frame that is not one whole PUBLISH")]
    NotAPublish,
}

/// Who sent a frame and where it stands in that sender's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub origin: u64,
    pub sequence: u64,
}

/// The frame for `message`, its expiry counted from `now`.
pub fn encode(message: &Message, stamp: Stamp, now: Instant) -> Bytes {
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.clone(),
        // Any id: the PUBLISH only carries the message here.
        packet_id: (message.qos != QoS::AtMostOnce).then(|| PacketId::new(1).expect("non-zero")),
        properties: message.properties_at(now).into_owned().into(),
        payload: message.payload.clone(),
    };
    let mut out = BytesMut::with_capacity(HEADER_BYTES + 16 + message.topic.len() + message.payload.len());
    out.put_u8(FORMAT);
    out.put_u64_le(stamp.origin);
    out.put_u64_le(stamp.sequence);
    Packet::Publish(publish).encode(ProtocolVersion::V5, &mut out);
    out.freeze()
}

/// The stamp and message a frame carries; topic and payload are slices of `frame`.
pub fn decode_frame(frame: Bytes, now: Instant) -> Result<(Stamp, Message), FrameError> {
    if frame.len() < HEADER_BYTES {
        return Err(FrameError::Short);
    }
    if frame[0] != FORMAT {
        return Err(FrameError::Format(frame[0]));
    }
    let origin = u64::from_le_bytes(frame[1..9].try_into().map_err(|_| FrameError::Short)?);
    let sequence = u64::from_le_bytes(frame[9..17].try_into().map_err(|_| FrameError::Short)?);
    let mut packet = BytesMut::from(frame.slice(HEADER_BYTES..));
    let Some(Packet::Publish(publish)) = decode(&mut packet, ProtocolVersion::V5, u32::MAX)? else {
        return Err(FrameError::NotAPublish);
    };
    if !packet.is_empty() {
        return Err(FrameError::NotAPublish);
    }
    let expires_at = publish.properties.message_expiry_interval.map(|seconds| now + Duration::from_secs(u64::from(seconds)));
    // What only a connection's own packets may carry never travels with a message (as
    // `handle_publish` refuses or resolves them from a client).
    let mut properties = publish.properties;
    if properties.topic_alias.is_some() || !properties.subscription_identifiers.is_empty() {
        let stripped = properties.make_mut();
        stripped.topic_alias = None;
        stripped.subscription_identifiers.clear();
    }
    let message = Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties,
        // No-local concerns the publishing connection, which is on another node.
        publisher: None,
        expires_at,
    };
    Ok((Stamp { origin, sequence }, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Properties;

    fn message(qos: QoS, retain: bool, properties: Properties, expires_at: Option<Instant>) -> Message {
        Message {
            topic: Bytes::from_static(b"a/b c/$x"),
            payload: Bytes::from_static(b"\x00payload\xff"),
            qos,
            retain,
            properties: properties.into(),
            publisher: Some(Bytes::from_static(b"publisher")),
            expires_at,
        }
    }

    #[test]
    fn every_field_but_the_publisher_round_trips() {
        let now = Instant::now();
        let properties = Properties {
            content_type: Some(Bytes::from_static(b"text/plain")),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))],
            ..Properties::default()
        };
        for (qos, retain) in [(QoS::AtMostOnce, false), (QoS::AtLeastOnce, true), (QoS::ExactlyOnce, false)] {
            let sent = message(qos, retain, properties.clone(), None);
            let stamp = Stamp { origin: 0xDEAD_BEEF_0000_0001, sequence: 42 };
            let (got_stamp, got) = decode_frame(encode(&sent, stamp, now), now).expect("decodes");
            assert_eq!(got_stamp, stamp);
            assert_eq!((got.topic, got.payload, got.qos, got.retain), (sent.topic, sent.payload, qos, retain));
            assert_eq!(*got.properties, properties);
            assert_eq!(got.publisher, None, "no-local is for the publishing node");
        }
    }

    #[test]
    fn the_expiry_travels_as_what_is_left_of_it() {
        let now = Instant::now();
        let sent = message(QoS::AtLeastOnce, false, Properties::default(), Some(now + Duration::from_secs(30)));
        let later = now + Duration::from_secs(10);
        let (_, got) = decode_frame(encode(&sent, Stamp { origin: 1, sequence: 1 }, later), later).expect("decodes");
        assert_eq!(got.properties.message_expiry_interval, Some(20));
        assert_eq!(got.expires_at, Some(later + Duration::from_secs(20)));
    }

    #[test]
    fn connection_only_properties_are_stripped() {
        let now = Instant::now();
        let properties = Properties { topic_alias: Some(3), subscription_identifiers: vec![7], ..Properties::default() };
        let frame = encode(&message(QoS::AtMostOnce, false, properties, None), Stamp { origin: 1, sequence: 1 }, now);
        let (_, got) = decode_frame(frame, now).expect("decodes");
        assert_eq!((got.properties.topic_alias, got.properties.subscription_identifiers.len()), (None, 0));
    }

    #[test]
    fn damaged_frames_are_refused_not_guessed() {
        let now = Instant::now();
        let frame = encode(&message(QoS::AtLeastOnce, false, Properties::default(), None), Stamp { origin: 1, sequence: 2 }, now);
        assert!(matches!(decode_frame(frame.slice(..5), now), Err(FrameError::Short)));
        assert!(matches!(decode_frame(frame.slice(..frame.len() - 1), now), Err(FrameError::NotAPublish)));
        let mut other = BytesMut::from(&frame[..]);
        other[0] = 2;
        assert!(matches!(decode_frame(other.freeze(), now), Err(FrameError::Format(2))));
        let mut trailing = BytesMut::from(&frame[..]);
        trailing.extend_from_slice(b"x");
        assert!(matches!(decode_frame(trailing.freeze(), now), Err(FrameError::NotAPublish)));
        let mut garbage = BytesMut::from(&frame[..HEADER_BYTES]);
        garbage.extend_from_slice(&[0x20, 0x02, 0, 0]);
        assert!(decode_frame(garbage.freeze(), now).is_err(), "a CONNACK is not a message");
    }
}
