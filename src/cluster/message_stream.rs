//! `--cluster-durable`: QoS 1/2 messages that outlive the node holding them.
//!
//! Without it a session's queued messages live on its node only: if that node dies, a
//! client resuming elsewhere gets its subscriptions back from the session record
//! (`records`) but not the messages. With it, the node a message is published on also
//! stores it, once, in one replicated JetStream stream (`<cluster>_messages`, each QoS 1/2
//! publish once whatever its subscribers; never one consumer per subscription). Each
//! session record carries a checkpoint, a time before which every message was
//! acknowledged by the session or never owed to it (the shard moves it whenever the
//! session owes nothing as the record is written, and every `CHECKPOINT_REFRESH` for
//! sessions that received something since). A client resuming a dead node's session
//! gets the record's subscriptions at once and then, once those have had time to reach
//! NATS (`REPLAY_DELAY`: whatever is published from then on comes live), the stream's
//! messages since the checkpoint (less `CHECKPOINT_MARGIN`) that its filters match, read
//! with one short-lived ordered consumer.
//!
//! That is at least once: messages the client acknowledged within the margin before its
//! node died come again (QoS 2 ones too, as new messages), and so do those published in
//! the `REPLAY_DELAY` (live, then replayed after them). Publishes wait for no stream
//! acknowledgement: a message the node took in within the last moments before its death
//! may not have reached the stream.
//!
//! A stored message is `[publisher length u16 LE][publisher client id][frame]` (`frame`),
//! the publisher kept for no-local.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::frame::{Stamp, encode};
use super::gateway::Inbound;
use super::handover;
use super::owners::Owners;
use super::port::FromCluster;
use crate::persist::retained::Clock;
use crate::session::Message;

/// How long before its checkpoint a replay starts: a message published on another node
/// before the checkpoint may still have been on its way to this one (its gateway queue,
/// NATS) when the session owed nothing, and the nodes' clocks differ a little.
pub const CHECKPOINT_MARGIN: Duration = Duration::from_secs(5);
/// How often an online persistent session's record is written again for its checkpoint
/// alone (if it owes nothing then): what a client whose node dies may get again is about
/// this much of its traffic.
pub const CHECKPOINT_REFRESH: Duration = Duration::from_secs(10);
/// Stream acknowledgements awaited at once; past it a message is not stored (counted).
const ACKS_IN_FLIGHT_MAX: usize = 4_096;
/// How long one acknowledgement is waited for (NATS does not fail the requests a
/// disconnection cut off: they end here).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// From a session's arrival from a record to its replay: time for its filters to reach
/// this node's NATS server and, over the routes, the others (milliseconds on a LAN), so
/// that a message published after the read starts is delivered live.
const REPLAY_DELAY: Duration = Duration::from_secs(1);
/// Replays reading the stream at once on a node.
pub const REPLAYS_AT_ONCE_MAX: usize = 4;
/// How long a replay may take in all, and wait for any one message.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);
const REPLAY_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a lookup of the stream by name may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// `--cluster-durable`'s settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableSettings {
    /// How long the stream keeps a message (the longest a dead node's sessions can be
    /// replayed from).
    pub retention: Duration,
    /// The stream's bound: past it the oldest messages go.
    pub bytes_max: u64,
}

/// The stream of cluster `cluster_name`.
pub fn stream_name(cluster_name: &str) -> String {
    format!("{cluster_name}_messages")
}

/// The one subject the stream takes (outside the subjects of topics, `subject`).
pub fn stream_subject(cluster_name: &str) -> String {
    format!("{cluster_name}_durable.messages")
}

/// The stream, once open, and how messages get to it.
#[derive(Clone)]
pub(super) struct Durable {
    jetstream: async_nats::jetstream::Context,
    subject: String,
    acks: mpsc::Sender<async_nats::jetstream::context::PublishAckFuture>,
}

impl Durable {
    /// The context publishes without waiting (a full window of acknowledgements is an
    /// error, counted, rather than a stall of the gateway); `run_acks` awaits them.
    pub fn new(
        client: &async_nats::Client,
        cluster_name: &str,
    ) -> (Durable, mpsc::Receiver<async_nats::jetstream::context::PublishAckFuture>) {
        let jetstream = async_nats::jetstream::ContextBuilder::new()
            .max_ack_inflight(ACKS_IN_FLIGHT_MAX)
            .backpressure_on_inflight(false)
            .build(client.clone());
        let (acks, receiver) = mpsc::channel(ACKS_IN_FLIGHT_MAX);
        (Durable { jetstream, subject: stream_subject(cluster_name), acks }, receiver)
    }

    /// Stores `message` (QoS 1/2) in the stream; false if it could not be sent.
    pub async fn store(&self, message: &Message, stamp: Stamp) -> bool {
        match self.jetstream.publish(self.subject.clone(), encode_stored(message, stamp, Instant::now())).await {
            Ok(ack) => self.acks.try_send(ack).is_ok(),
            Err(_) => false,
        }
    }
}

/// Makes (or finds) the stream, retrying until it exists, as `bucket::open` does.
pub(super) async fn open(
    client: &async_nats::Client,
    cluster_name: &str,
    replicas: usize,
    settings: DurableSettings,
) -> async_nats::jetstream::stream::Stream {
    let jetstream = async_nats::jetstream::new(client.clone());
    let config = async_nats::jetstream::stream::Config {
        name: stream_name(cluster_name),
        description: Some("ringmq QoS 1/2 messages for sessions of nodes that die".into()),
        subjects: vec![stream_subject(cluster_name)],
        num_replicas: replicas,
        max_age: settings.retention,
        max_bytes: i64::try_from(settings.bytes_max).unwrap_or(i64::MAX),
        discard: async_nats::jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let mut warned = false;
    loop {
        match jetstream.get_or_create_stream(config.clone()).await {
            Ok(mut stream) => {
                tracing::info!(stream = config.name, "cluster: durable message stream open");
                // Made by another node (or an earlier run) with other bounds: theirs hold.
                if let Ok(info) = stream.info().await
                    && (info.config.max_age != config.max_age || info.config.max_bytes != config.max_bytes)
                {
                    tracing::warn!(
                        stream = config.name,
                        retention_s = info.config.max_age.as_secs(),
                        bytes_max = info.config.max_bytes,
                        "cluster: the durable message stream exists with other bounds than this node's flags; it keeps its own"
                    );
                }
                return stream;
            }
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, stream = config.name, replicas, "cluster: durable message stream not available yet, retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The gateway's handle on the stream (`opened`) or, before it has opened it, one bound
/// to the stream if it exists (never made here), as `records::opened_or_bound`.
pub(super) async fn opened_or_bound(
    opened: Option<async_nats::jetstream::stream::Stream>,
    client: &async_nats::Client,
    cluster_name: &str,
) -> Option<async_nats::jetstream::stream::Stream> {
    if opened.is_some() {
        return opened;
    }
    let jetstream = async_nats::jetstream::new(client.clone());
    tokio::time::timeout(LOOKUP_TIMEOUT, jetstream.get_stream(stream_name(cluster_name))).await.ok()?.ok()
}

/// Awaits the stream's acknowledgements, all at once, each for at most `ACK_TIMEOUT`,
/// counting the messages it did not take.
pub(super) async fn run_acks(mut acks: mpsc::Receiver<async_nats::jetstream::context::PublishAckFuture>, state: Rc<RefCell<Inbound>>) {
    let mut waiting = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            ack = acks.recv() => match ack {
                Some(ack) => waiting.push(tokio::time::timeout(ACK_TIMEOUT, ack.into_future())),
                None => break,
            },
            Some(answer) = waiting.next(), if !waiting.is_empty() => {
                let mut state = state.borrow_mut();
                if matches!(answer, Ok(Ok(_))) {
                    state.counters.durable_stored += 1;
                } else {
                    state.counters.durable_store_failures += 1;
                }
            }
        }
    }
}

/// After a session resumed from a dead node's record is in place (its filters on their
/// way to NATS), reads what it is owed and hands it to its home shard (`target`).
pub(super) async fn replay_to(owners: &Rc<RefCell<Owners>>, target: mpsc::Sender<FromCluster>, client_id: Bytes, record: Bytes) {
    let (client, cluster_name, opened, replays) = {
        let owners = owners.borrow();
        (owners.client.clone(), owners.cluster_name.clone(), owners.durable_stream.clone(), owners.replays.clone())
    };
    tokio::time::sleep(REPLAY_DELAY).await;
    let Ok(_permit) = replays.acquire().await else { return };
    let Some(stream) = opened_or_bound(opened, &client, &cluster_name).await else {
        tracing::warn!(client_id = %String::from_utf8_lossy(&client_id), "cluster: the durable message stream cannot be read; the session comes back without its messages");
        return;
    };
    let messages = replay(&stream, &record, &client_id).await;
    if !messages.is_empty() {
        let _ = target.send(FromCluster::Replay { client_id, messages }).await;
    }
}

/// The messages a session resumed from the dead node's `record` is owed: those in the
/// stream since the record's checkpoint (less the margin) that its filters match, oldest
/// first, at most `handover::HANDOVER_BYTES_MAX` of them. Bounded in time: what comes
/// after `REPLAY_TIMEOUT` is not waited for.
async fn replay(stream: &async_nats::jetstream::stream::Stream, record: &[u8], client_id: &[u8]) -> Vec<Arc<Message>> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let clock = Clock::system();
    let Ok((checkpoint_ms, filters)) = handover::replay_plan(record, clock) else { return Vec::new() };
    if filters.is_empty() {
        return Vec::new();
    }
    let start_ms = checkpoint_ms.saturating_sub(CHECKPOINT_MARGIN.as_millis() as u64);
    let deliver_policy = match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_ms) * 1_000_000) {
        Ok(start_time) if checkpoint_ms > 0 => DeliverPolicy::ByStartTime { start_time },
        // Unknown (a session this node restored from disk and never saw owe nothing).
        _ => DeliverPolicy::All,
    };
    let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
    let mut replayed = Vec::new();
    let config = OrderedConfig { deliver_policy, ..Default::default() };
    let Ok(Ok(consumer)) = tokio::time::timeout_at(deadline, stream.create_consumer(config)).await else { return replayed };
    if consumer.cached_info().num_pending == 0 {
        return replayed;
    }
    let Ok(Ok(mut messages)) = tokio::time::timeout_at(deadline, consumer.messages()).await else { return replayed };
    let mut bytes = 0;
    loop {
        let wait = (tokio::time::Instant::now() + REPLAY_IDLE_TIMEOUT).min(deadline);
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(wait, messages.next()).await else { break };
        let Ok(info) = message.info() else { break };
        let pending = info.pending;
        // Its expiry counts from when it was stored, not from now.
        let age = (time::OffsetDateTime::now_utc() - info.published).try_into().unwrap_or(Duration::ZERO);
        let published_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        if let Some(message) = decode_stored(&message.payload, published_at)
            && filters.iter().any(|filter| crate::topics::filter_matches(filter, &message.topic))
        {
            bytes += message.topic.len() + message.payload.len();
            if bytes > handover::HANDOVER_BYTES_MAX {
                tracing::warn!(
                    client_id = %String::from_utf8_lossy(client_id),
                    replayed = replayed.len(),
                    "cluster: a replay reached its byte bound; the newer messages are not replayed"
                );
                break;
            }
            replayed.push(Arc::new(message));
        }
        if pending == 0 {
            break;
        }
    }
    replayed
}

/// The body stored for `message` (see the module's opening), its expiry counted from `now`.
fn encode_stored(message: &Message, stamp: Stamp, now: Instant) -> Bytes {
    let publisher = message.publisher.as_deref().unwrap_or_default();
    // Client ids are at most 65,535 bytes (a UTF-8 string field).
    let publisher = &publisher[..publisher.len().min(usize::from(u16::MAX))];
    let frame = encode(message, stamp, now);
    let mut stored = Vec::with_capacity(2 + publisher.len() + frame.len());
    stored.extend_from_slice(&(publisher.len() as u16).to_le_bytes());
    stored.extend_from_slice(publisher);
    stored.extend_from_slice(&frame);
    Bytes::from(stored)
}

/// The message a stored body holds (see the module's opening), its expiry counted from
/// `published_at`; `None` for a body that is not one.
fn decode_stored(stored: &Bytes, published_at: Instant) -> Option<Message> {
    let publisher_len = usize::from(u16::from_le_bytes(stored.get(..2)?.try_into().ok()?));
    let publisher = stored.get(2..2 + publisher_len)?;
    let (_, mut message) = super::frame::decode_frame(stored.slice(2 + publisher_len..), published_at).ok()?;
    message.publisher = (!publisher.is_empty()).then(|| Bytes::copy_from_slice(publisher));
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn message(publisher: Option<&'static [u8]>) -> Message {
        Message {
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            publisher: publisher.map(Bytes::from_static),
            expires_at: None,
        }
    }

    #[test]
    fn a_stored_message_comes_back_with_its_publisher_for_no_local() {
        let stamp = Stamp { origin: 7, sequence: 9 };
        let now = Instant::now();
        for publisher in [Some(&b"sensor-1"[..]), None] {
            let back = decode_stored(&encode_stored(&message(publisher), stamp, now), now).expect("decodes");
            assert_eq!(back.publisher.as_deref(), publisher);
            assert_eq!((&back.topic[..], &back.payload[..], back.qos, back.retain), (&b"a/b"[..], &b"payload"[..], QoS::AtLeastOnce, true));
        }
    }

    #[test]
    fn bodies_that_are_not_stored_messages_are_skipped() {
        let stored = encode_stored(&message(Some(b"sensor-1")), Stamp { origin: 1, sequence: 1 }, Instant::now());
        for cut in [0, 1, 5, stored.len() - 1] {
            assert!(decode_stored(&stored.slice(..cut), Instant::now()).is_none(), "cut at {cut}");
        }
        assert!(decode_stored(&Bytes::from_static(&[0xff, 0xff, 1, 2]), Instant::now()).is_none(), "a publisher past the end");
    }
}
