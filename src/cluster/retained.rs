//! Retained messages across the cluster, in a JetStream key-value bucket
//! (`<cluster-name>_retained`, `--cluster-replicas` copies, one revision kept per key).
//!
//! A retained PUBLISH is applied on its node at once (as on a lone node) and put in the
//! bucket under its topic; every node watches the whole bucket from its last value per key,
//! so a node that starts later loads the store, and a running node applies each change as a
//! retained publish of its own (delivered live to its matching subscribers, kept in its
//! replica). A node skips the entries it wrote itself: it applied them already.
//!
//! Clearing a topic (empty payload) is put as a message with an empty payload, not as a
//! KV delete, so that the entry still names the node that wrote it.
//!
//! Pure here: the key and value encodings. The IO (`run`) talks to JetStream.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::frame::{FrameError, Stamp, decode_frame, encode};
use super::gateway::Inbound;
use super::port::FromCluster;
use crate::session::Message;
use crate::topics::validate_topic_name;

/// Retained changes waiting for the bucket (while JetStream is not ready yet).
pub const PENDING_MAX: usize = 65_536;
/// The entry's value: the message's expiry as a wall-clock deadline in Unix milliseconds
/// (0: none), so that a node reading it later counts the time in between, then its frame.
pub fn encode_value(message: &Message, stamp: Stamp, now: Instant, unix_ms: u64) -> Bytes {
    let deadline_unix_ms = message.expires_at.map_or(0, |at| (unix_ms + at.saturating_duration_since(now).as_millis() as u64).max(1));
    let frame = encode(message, stamp, now);
    let mut value = BytesMut::with_capacity(8 + frame.len());
    value.put_u64_le(deadline_unix_ms);
    value.extend_from_slice(&frame);
    value.freeze()
}

/// The message an entry holds, with its expiry counted from its deadline; `None` for the
/// message when the deadline has passed.
pub fn decode_value(value: Bytes, now: Instant, unix_ms: u64) -> Result<(Stamp, Option<Message>), FrameError> {
    if value.len() < 8 {
        return Err(FrameError::Short);
    }
    let deadline_unix_ms = u64::from_le_bytes(value[..8].try_into().map_err(|_| FrameError::Short)?);
    let (stamp, mut message) = decode_frame(value.slice(8..), now)?;
    if deadline_unix_ms != 0 {
        let left_ms = deadline_unix_ms.saturating_sub(unix_ms);
        if left_ms == 0 {
            return Ok((stamp, None));
        }
        message.expires_at = Some(now + Duration::from_millis(left_ms));
        let mut properties = message.properties.into_inner();
        properties.message_expiry_interval = Some(left_ms.div_ceil(1000).min(u64::from(u32::MAX)) as u32);
        message.properties = properties.into();
    }
    message.retain = true;
    Ok((stamp, Some(message)))
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// What the bucket task needs from the gateway.
pub(super) struct RetainedBucket {
    pub client: async_nats::Client,
    pub bucket: String,
    pub replicas: usize,
    pub origin: u64,
}

/// Opens (or makes) the bucket, retrying until JetStream answers, then watches it into
/// the shards and writes what `changes` brings (entries queued meanwhile included).
pub(super) async fn run(bucket: RetainedBucket, mut changes: mpsc::Receiver<(Stamp, Arc<Message>)>, state: Rc<RefCell<Inbound>>) {
    let store = super::bucket::open(&bucket.client, &bucket.bucket, bucket.replicas, "ringmq retained messages", None).await;
    let watching = tokio::task::spawn_local(watch_into_shards(super::bucket::watch_forever(store.clone()), bucket.origin, state.clone()));
    while let Some((stamp, message)) = changes.recv().await {
        let Some(key) = super::bucket::key_of(&message.topic) else {
            state.borrow_mut().counters.subjects_too_long += 1;
            continue;
        };
        let value = encode_value(&message, stamp, Instant::now(), unix_ms());
        if let Err(error) = store.put(key, value).await {
            state.borrow_mut().counters.retained_write_failures += 1;
            tracing::warn!(%error, "cluster: retained message not stored in the bucket");
        }
    }
    watching.abort();
    let _ = watching.await;
}

async fn watch_into_shards(
    changes: impl futures_util::Stream<Item = async_nats::jetstream::kv::Entry>,
    origin: u64,
    state: Rc<RefCell<Inbound>>,
) {
    let mut changes = std::pin::pin!(changes);
    while let Some(entry) = changes.next().await {
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            continue;
        }
        let target = {
            let mut state = state.borrow_mut();
            match decode_value(entry.value, Instant::now(), unix_ms()) {
                Ok((stamp, _)) if stamp.origin == origin => None,
                Ok((_, Some(message))) if validate_topic_name(&message.topic).is_ok() => {
                    state.counters.received += 1;
                    Some((state.entry_for(&message.topic), message))
                }
                Ok((_, None)) => None,
                _ => {
                    state.counters.frames_refused += 1;
                    None
                }
            }
        };
        if let Some((target, message)) = target
            && target.send(FromCluster::Publish(Arc::new(message))).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn message(expires_at: Option<Instant>) -> Message {
        Message {
            topic: Bytes::from_static(b"a/b c/\xc3\xbc/."),
            payload: Bytes::from_static(b"v"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            publisher: None,
            expires_at,
        }
    }

    #[test]
    fn the_deadline_counts_the_time_between_writing_and_reading() {
        let now = Instant::now();
        let stamp = Stamp { origin: 9, sequence: 3 };
        let value = encode_value(&message(Some(now + Duration::from_secs(60))), stamp, now, 1_000_000);
        // Read by another node 20 s later, on its own clock.
        let later = Instant::now();
        let (got_stamp, got) = decode_value(value.clone(), later, 1_020_000).expect("decodes");
        let got = got.expect("not expired");
        assert_eq!(got_stamp, stamp);
        assert!(got.retain);
        assert_eq!(got.properties.message_expiry_interval, Some(40));
        assert_eq!(got.expires_at, Some(later + Duration::from_secs(40)));
        assert!(decode_value(value, later, 1_060_000).expect("decodes").1.is_none(), "expired");
        let forever = encode_value(&message(None), stamp, now, 1_000_000);
        assert_eq!(decode_value(forever, later, u64::MAX).expect("decodes").1.expect("kept").expires_at, None);
    }

    #[test]
    fn short_values_are_refused() {
        assert!(matches!(decode_value(Bytes::from_static(b"1234567"), Instant::now(), 0), Err(FrameError::Short)));
    }
}
