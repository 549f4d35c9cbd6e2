//! Retained messages as log records, pure. A record is the message's expiry deadline as
//! wall-clock milliseconds since the Unix epoch (0: none), then the message as an MQTT 5.0
//! PUBLISH packet: the codec we already trust holds topic, QoS, payload and properties.
//! An empty payload clears the topic, as on the wire. Replaying the records in order and
//! keeping the last per topic gives the store back; deadlines are wall-clock so that the
//! time the broker was down counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::protocol::{Packet, PacketId, ProtocolVersion, Publish, QoS, decode};
use crate::session::Message;

#[derive(Debug, thiserror::Error)]
pub enum RetainedRecordError {
    #[error("a retained record shorter than its deadline")]
    Short,
    #[error("a retained record whose message does not decode: {0}")]
    Decode(#[from] crate::protocol::DecodeError),
    #[error("a retained record that is not one whole PUBLISH")]
    NotAPublish,
}

/// Wall-clock and monotonic time taken together, to turn deadlines from one to the other.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    pub unix_ms: u64,
}

impl Clock {
    pub fn system() -> Clock {
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
        Clock { now: Instant::now(), unix_ms }
    }
}

/// Appends the record body for `message` to `out`.
pub fn encode(message: &Message, clock: Clock, out: &mut Vec<u8>) {
    let deadline_unix_ms = match message.expires_at {
        // At least 1: 0 means no deadline.
        Some(at) => (clock.unix_ms + at.saturating_duration_since(clock.now).as_millis() as u64).max(1),
        None => 0,
    };
    out.extend_from_slice(&deadline_unix_ms.to_le_bytes());
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain: true,
        topic: message.topic.clone(),
        // Any id: the PUBLISH only carries the message here.
        packet_id: (message.qos != QoS::AtMostOnce).then(|| PacketId::new(1).expect("non-zero")),
        properties: message.properties.clone(),
        payload: message.payload.clone(),
    };
    let mut packet = BytesMut::new();
    Packet::Publish(publish).encode(ProtocolVersion::V5, &mut packet);
    out.extend_from_slice(&packet);
}

/// A decoded record: the message (empty payload: the topic was cleared), and whether its
/// deadline has passed.
pub fn decode_record(body: &[u8], clock: Clock) -> Result<(Message, bool), RetainedRecordError> {
    let (deadline, packet) = body.split_first_chunk::<8>().ok_or(RetainedRecordError::Short)?;
    let deadline_unix_ms = u64::from_le_bytes(*deadline);
    let mut buf = BytesMut::from(packet);
    let Some(Packet::Publish(publish)) = decode(&mut buf, ProtocolVersion::V5, u32::MAX)? else {
        return Err(RetainedRecordError::NotAPublish);
    };
    if !buf.is_empty() {
        return Err(RetainedRecordError::NotAPublish);
    }
    let (expires_at, expired) = match deadline_unix_ms {
        0 => (None, false),
        deadline => {
            let left_ms = deadline.saturating_sub(clock.unix_ms);
            (Some(clock.now + Duration::from_millis(left_ms)), left_ms == 0)
        }
    };
    let message = Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: true,
        properties: publish.properties,
        // Who published it does not outlive the broker (no-local applies to live sessions).
        publisher: None,
        expires_at,
    };
    Ok((message, expired))
}

/// Replays record bodies in the order written: the retained store they leave, expired
/// messages left out. Stops at the first record that does not decode (its checksum was
/// good, so it is a bug, not a disk fault: say so rather than guess).
pub fn replay<'a>(bodies: impl IntoIterator<Item = &'a [u8]>, clock: Clock) -> Result<Vec<Arc<Message>>, RetainedRecordError> {
    let mut store: HashMap<Bytes, Arc<Message>> = HashMap::new();
    for body in bodies {
        let (message, expired) = decode_record(body, clock)?;
        if message.payload.is_empty() || expired {
            store.remove(&message.topic);
        } else {
            store.insert(message.topic.clone(), Arc::new(message));
        }
    }
    let mut messages: Vec<Arc<Message>> = store.into_values().collect();
    messages.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Properties;

    fn message(topic: &'static str, payload: &'static str, qos: QoS, expires_at: Option<Instant>) -> Message {
        let properties = Properties { content_type: Some(Bytes::from_static(b"text/plain")), ..Properties::default() };
        Message {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: Bytes::from_static(payload.as_bytes()),
            qos,
            retain: true,
            properties: properties.into(),
            publisher: Some(Bytes::from_static(b"publisher")),
            expires_at,
        }
    }

    fn body(message: &Message, clock: Clock) -> Vec<u8> {
        let mut out = Vec::new();
        encode(message, clock, &mut out);
        out
    }

    #[test]
    fn a_message_round_trips_with_its_properties_and_remaining_time() {
        let written = Clock { now: Instant::now(), unix_ms: 1_000_000 };
        let original = message("a/b", "hello", QoS::AtLeastOnce, Some(written.now + Duration::from_secs(10)));
        let record = body(&original, written);
        // Read back after a restart 4 s of wall-clock time later, on a new monotonic clock.
        let later = Clock { now: Instant::now() + Duration::from_secs(1000), unix_ms: 1_004_000 };
        let (read, expired) = decode_record(&record, later).unwrap();
        assert!(!expired);
        assert_eq!((read.topic, read.payload, read.qos), (original.topic.clone(), original.payload.clone(), QoS::AtLeastOnce));
        assert_eq!(read.properties.content_type, original.properties.content_type);
        assert_eq!(read.expires_at, Some(later.now + Duration::from_secs(6)), "6 s of its 10 were left");
        assert_eq!(read.publisher, None);
        let much_later = Clock { now: later.now, unix_ms: 1_010_000 };
        assert!(decode_record(&record, much_later).unwrap().1, "the deadline passed while the broker was down");
    }

    #[test]
    fn replay_keeps_the_last_message_per_topic_and_applies_clears_and_expiry() {
        let clock = Clock { now: Instant::now(), unix_ms: 5_000 };
        let records = [
            body(&message("a", "1", QoS::AtMostOnce, None), clock),
            body(&message("b", "1", QoS::AtMostOnce, None), clock),
            body(&message("a", "2", QoS::ExactlyOnce, None), clock),
            body(&message("b", "", QoS::AtMostOnce, None), clock),
            body(&message("c", "gone", QoS::AtMostOnce, Some(clock.now + Duration::from_millis(10))), clock),
            body(&message("d", "kept", QoS::AtMostOnce, Some(clock.now + Duration::from_secs(60))), clock),
        ];
        let later = Clock { now: Instant::now(), unix_ms: 6_000 };
        let store = replay(records.iter().map(Vec::as_slice), later).unwrap();
        let summary: Vec<(&[u8], &[u8], QoS)> = store.iter().map(|m| (&m.topic[..], &m.payload[..], m.qos)).collect();
        assert_eq!(summary, vec![(&b"a"[..], &b"2"[..], QoS::ExactlyOnce), (&b"d"[..], &b"kept"[..], QoS::AtMostOnce)]);
    }

    #[test]
    fn a_record_that_is_not_a_publish_is_an_error() {
        assert!(matches!(decode_record(b"1234", Clock::system()), Err(RetainedRecordError::Short)));
        let mut record = 0u64.to_le_bytes().to_vec();
        let mut packet = BytesMut::new();
        Packet::PingReq.encode(ProtocolVersion::V5, &mut packet);
        record.extend_from_slice(&packet);
        assert!(matches!(decode_record(&record, Clock::system()), Err(RetainedRecordError::NotAPublish)));
        let mut truncated = body(&message("a", "xyz", QoS::AtMostOnce, None), Clock::system());
        truncated.pop();
        assert!(decode_record(&truncated, Clock::system()).is_err());
    }
}
