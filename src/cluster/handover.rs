//! A session moving between nodes, pure: the bytes one node sends another when a client
//! resumes its session there (Clean Start 0 on a node that does not hold it), and the
//! session record each node keeps in the cluster for its persistent sessions (the same
//! format holding only the header and the subscriptions, `records`).
//!
//! The session travels in the session log's own format (`persist::session`: one open
//! record and the events that rebuild it, each message once), framed and checksummed like
//! a log file, so what is tested for recovery from disk is what moves between nodes,
//! behind the session's checkpoint (`[checkpoint_ms u64 LE]`, see `message_stream`). The
//! bytes are cut into chunks that each fit one NATS message (`chunk`), numbered, since a
//! session's queue can exceed the server's `max_payload` (1 MiB by default); the taker
//! puts them back together (`Assembly`), bounded by `HANDOVER_BYTES_MAX`.

use bytes::{Bytes, BytesMut};

use crate::persist::record::{self, FILE_MAGIC};
use crate::persist::retained::Clock;
use crate::persist::session::{LoggedSession, SessionEncoder, SessionHeader, SessionRecordError, SessionReplay};
use crate::protocol::ProtocolVersion;
use crate::session::{Session, SessionEvent, SessionLimits};

/// The most a session may weigh, encoded, to move between nodes: past it the old node ends
/// it and the taker starts fresh. It must cross NATS well inside the taker's wait, and
/// within what nats-server lets wait for one connection (64 MiB by default).
pub const HANDOVER_BYTES_MAX: usize = 32 << 20;
/// The smallest chunk a sender makes (with its 8-byte header), which bounds how many
/// chunks a handover can claim to have.
pub const CHUNK_BYTES_MIN: usize = 4096;

/// Why handed-over bytes do not make a session.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandoverError {
    #[error("not a session handover (no format magic)")]
    NotAHandover,
    #[error("a handover is damaged or cut short")]
    Damaged,
    #[error("a handover does not decode: {0}")]
    Record(#[from] SessionRecordError),
    #[error("a handover holds {0} sessions, not one")]
    SessionCount(usize),
    #[error("a handover holds another client id's session")]
    WrongClient,
    #[error("a handover chunk is numbered {index} of {count}")]
    ChunkOutOfRange { index: u32, count: u32 },
    #[error("a handover is larger than {HANDOVER_BYTES_MAX} bytes")]
    TooLarge,
    #[error("the session expired")]
    Expired,
}

/// `session` as the bytes a taker turns back into it with `decode`.
pub fn encode(session: &Session, version: ProtocolVersion, clock: Clock) -> Vec<u8> {
    // Only the session travels: the taker's CONNECT sets the expiry and the will.
    let header = SessionHeader { version, expiry_interval_s: 0, online: false, ends_at_ms: 0, will: None };
    encode_events(session.client_id(), &header, &session.snapshot(), session.checkpoint_ms(), clock)
}

/// One session's checkpoint, then its open record and events as a log file of its own.
fn encode_events(client_id: &[u8], header: &SessionHeader, events: &[SessionEvent], checkpoint_ms: u64, clock: Clock) -> Vec<u8> {
    let mut encoder = SessionEncoder::default();
    let mut out = checkpoint_ms.to_le_bytes().to_vec();
    out.extend_from_slice(FILE_MAGIC);
    encoder.open(0, 0, client_id, header, clock, &mut out);
    encoder.events(0, events, clock, &mut out);
    out
}

/// The record of a persistent session: `header` (online or not, when it ends) and its
/// subscriptions, never its messages (written on every change of those, never per
/// message). `decode` makes it a session with the subscriptions and nothing queued.
pub fn encode_record(session: &Session, header: &SessionHeader, clock: Clock) -> Vec<u8> {
    let header = SessionHeader { will: None, ..header.clone() };
    let subscriptions: Vec<SessionEvent> = session
        .subscriptions()
        .map(|(filter, subscription)| SessionEvent::Subscribed { filter: filter.text(), subscription: *subscription })
        .collect();
    encode_events(session.client_id(), &header, &subscriptions, session.checkpoint_ms(), clock)
}

/// What a taker replays for a dead node's session (`cluster::message_stream`): its checkpoint
/// and the filters of its subscriptions (shared ones left out: their groups took the
/// messages elsewhere).
pub fn replay_plan(bytes: &[u8], clock: Clock) -> Result<(u64, Vec<Bytes>), HandoverError> {
    let logged = replay_one(bytes, RECORD_LIMITS, clock)?;
    let filters = logged.session.subscriptions().filter(|(filter, _)| !filter.is_shared()).map(|(filter, _)| filter.text()).collect();
    Ok((logged.session.checkpoint_ms(), filters))
}

/// A record holds no messages: the limits it is read with do not matter.
const RECORD_LIMITS: SessionLimits =
    SessionLimits { inflight_max: 1, queued_messages_max: 0, queue_full_policy: crate::session::QueueFullPolicy::DropNew };

/// What the reaper of a dead node does with one of its records (`offline_since_death`).
#[derive(Debug, Clone, PartialEq)]
pub enum RecordFate {
    /// Already offline and not expired: its deadline stands.
    Keep,
    /// Was online at the death: offline from now, its expiry counted from now.
    Rewrite(Vec<u8>),
    /// Past its expiry (or unreadable): nobody will resume it.
    Delete,
}

/// A dead node's record, seen by the survivor that reaps the node at `clock`: a session
/// that was online went offline at the death (about now), so its expiry starts now.
pub fn offline_since_death(bytes: &[u8], clock: Clock) -> RecordFate {
    let Ok(logged) = replay_one(bytes, RECORD_LIMITS, clock) else { return RecordFate::Delete };
    if logged.expired {
        return RecordFate::Delete;
    }
    if !logged.header.online {
        return RecordFate::Keep;
    }
    let ends_at_ms = match logged.header.expiry_interval_s {
        u32::MAX => 0,
        interval_s => clock.unix_ms + u64::from(interval_s) * 1000,
    };
    let header = SessionHeader { online: false, ends_at_ms, ..logged.header };
    RecordFate::Rewrite(encode_record(&logged.session, &header, clock))
}

/// The session in `bytes`, which must be `client_id`'s. Its journal is off: whoever keeps
/// a log turns it on when the session settles.
pub fn decode(bytes: &[u8], client_id: &[u8], limits: SessionLimits, clock: Clock) -> Result<Session, HandoverError> {
    let logged = replay_one(bytes, limits, clock)?;
    if logged.client_id != client_id {
        return Err(HandoverError::WrongClient);
    }
    if logged.expired {
        return Err(HandoverError::Expired);
    }
    let mut session = logged.session;
    session.disable_journal();
    Ok(session)
}

/// The one session `bytes` holds, as the log replay leaves it (`expired` included).
fn replay_one(bytes: &[u8], limits: SessionLimits, clock: Clock) -> Result<LoggedSession, HandoverError> {
    // A node from before checkpoints sends the log alone (no checkpoint's bytes spell the
    // magic: that would be a time some hundred million years from now).
    let (checkpoint_ms, log) = if bytes.starts_with(FILE_MAGIC) {
        (0, bytes)
    } else {
        let (checkpoint, log) = bytes.split_at_checked(8).ok_or(HandoverError::NotAHandover)?;
        (u64::from_le_bytes(checkpoint.try_into().map_err(|_| HandoverError::NotAHandover)?), log)
    };
    let scan = record::scan(log).map_err(|_| HandoverError::NotAHandover)?;
    if scan.damage.is_some() {
        return Err(HandoverError::Damaged);
    }
    let mut replay = SessionReplay::new(limits, clock);
    replay.file(scan.records)?;
    let mut replayed = replay.finish();
    if replayed.sessions.len() != 1 {
        return Err(HandoverError::SessionCount(replayed.sessions.len()));
    }
    let mut logged = replayed.sessions.remove(0);
    logged.session.set_checkpoint_ms(checkpoint_ms);
    Ok(logged)
}

/// `bytes` in numbered chunks of at most `chunk_bytes_max` (at least one, empty for
/// nothing): `[index u32 LE][count u32 LE][data]`.
pub fn chunk(bytes: &Bytes, chunk_bytes_max: usize) -> Vec<Bytes> {
    let data_max = chunk_bytes_max.max(CHUNK_BYTES_MIN) - 8;
    let count = bytes.len().div_ceil(data_max).max(1);
    (0..count)
        .map(|index| {
            let data = &bytes[(index * data_max).min(bytes.len())..((index + 1) * data_max).min(bytes.len())];
            let mut chunk = BytesMut::with_capacity(8 + data.len());
            chunk.extend_from_slice(&(index as u32).to_le_bytes());
            chunk.extend_from_slice(&(count as u32).to_le_bytes());
            chunk.extend_from_slice(data);
            chunk.freeze()
        })
        .collect()
}

/// Chunks put back together, in whatever order they arrive.
#[derive(Debug, Default)]
pub struct Assembly {
    parts: Vec<Option<Bytes>>,
    missing: usize,
    bytes: usize,
}

impl Assembly {
    /// Takes one chunk; `Ok(Some(bytes))` once every chunk is in.
    pub fn add(&mut self, chunk: &Bytes) -> Result<Option<Bytes>, HandoverError> {
        let (Some(index), Some(count)) = (chunk.get(..4), chunk.get(4..8)) else { return Err(HandoverError::Damaged) };
        let index = u32::from_le_bytes(index.try_into().expect("4 bytes"));
        let count = u32::from_le_bytes(count.try_into().expect("4 bytes"));
        if self.parts.is_empty() {
            if count == 0 || count as usize > HANDOVER_BYTES_MAX / (CHUNK_BYTES_MIN - 8) + 1 {
                return Err(HandoverError::ChunkOutOfRange { index, count });
            }
            self.parts = vec![None; count as usize];
            self.missing = count as usize;
        }
        if count as usize != self.parts.len() || index >= count {
            return Err(HandoverError::ChunkOutOfRange { index, count });
        }
        let slot = &mut self.parts[index as usize];
        if slot.is_none() {
            self.bytes += chunk.len() - 8;
            if self.bytes > HANDOVER_BYTES_MAX {
                return Err(HandoverError::TooLarge);
            }
            *slot = Some(chunk.slice(8..));
            self.missing -= 1;
        }
        if self.missing > 0 {
            return Ok(None);
        }
        let mut whole = BytesMut::with_capacity(self.bytes);
        for part in self.parts.iter().flatten() {
            whole.extend_from_slice(part);
        }
        Ok(Some(whole.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::{PacketId, QoS, SubscriptionOptions};
    use crate::session::{CopyFor, Message, SendNow, Subscription};

    fn limits() -> SessionLimits {
        SessionLimits { inflight_max: 2, queued_messages_max: 100, queue_full_policy: crate::session::QueueFullPolicy::DropNew }
    }

    fn message(topic: &str, payload: &[u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
        })
    }

    /// A session with two filters, two messages in flight (one awaiting PUBCOMP) and two
    /// queued, and an inbound QoS 2 id pending.
    fn busy_session() -> Session {
        let mut session = Session::new(Bytes::from_static(b"roamer"), limits());
        let subscribe = |session: &mut Session, text: &'static str, qos| {
            let filter = crate::topics::Filter::parse(text.as_bytes()).expect("filter");
            let subscription = Subscription { options: SubscriptionOptions::with_qos(qos), identifier: Some(7) };
            session.subscribe(filter, subscription);
        };
        subscribe(&mut session, "a/+", QoS::ExactlyOnce);
        subscribe(&mut session, "b/#", QoS::AtLeastOnce);
        let mut first = None;
        for (topic, payload) in [("a/1", b"one" as &[u8]), ("a/2", b"two"), ("a/3", b"three"), ("b/4", b"four")] {
            // The first two go out at once (the window is 2), the others queue.
            if let crate::session::Offer::Send(SendNow { packet_id, .. }) =
                session.offer(&message(topic, payload), CopyFor::at(QoS::ExactlyOnce), true)
            {
                first = first.or(packet_id);
            }
        }
        session.on_pubrec(first.expect("a publish went out"), false);
        assert!(session.receive_qos2(PacketId::new(9).expect("non-zero")));
        session
    }

    #[test]
    fn a_session_survives_the_trip_whole() {
        let clock = Clock::system();
        let session = busy_session();
        let bytes = encode(&session, ProtocolVersion::V5, clock);
        let back = decode(&bytes, b"roamer", limits(), clock).expect("decodes");
        assert_eq!(back.snapshot(), session.snapshot());
        assert!(!back.is_journaled(), "a node without a log keeps no journal");
        assert_eq!(back.inflight_len(), 2);
        assert_eq!(back.queued_len(), 2);
    }

    #[test]
    fn a_record_holds_the_subscriptions_and_says_when_the_session_ends() {
        let clock = Clock::system();
        let session = busy_session();
        let header =
            |online, ends_at_ms| SessionHeader { version: ProtocolVersion::V5, expiry_interval_s: 60, online, ends_at_ms, will: None };
        let online = encode_record(&session, &header(true, 0), clock);
        let back = decode(&online, b"roamer", limits(), clock).expect("decodes");
        let subscriptions: Vec<_> = back.subscriptions().map(|(filter, subscription)| (filter.text(), *subscription)).collect();
        let expected: Vec<_> = session.subscriptions().map(|(filter, subscription)| (filter.text(), *subscription)).collect();
        assert_eq!(subscriptions, expected);
        assert_eq!((back.inflight_len(), back.queued_len()), (0, 0), "no messages in a record");
        let offline_a_minute_more = encode_record(&session, &header(false, clock.unix_ms + 60_000), clock);
        assert!(decode(&offline_a_minute_more, b"roamer", limits(), clock).is_ok());
        let ended = encode_record(&session, &header(false, clock.unix_ms - 1), clock);
        assert_eq!(decode(&ended, b"roamer", limits(), clock).err(), Some(HandoverError::Expired));
    }

    #[test]
    fn the_checkpoint_goes_with_the_session_its_record_and_the_reaping() {
        let clock = Clock::system();
        let mut session = busy_session();
        let shared = crate::topics::Filter::parse(b"$share/g/c/#").expect("filter");
        session.subscribe(shared, Subscription { options: SubscriptionOptions::with_qos(QoS::AtLeastOnce), identifier: None });
        session.set_checkpoint_ms(1_234_567);
        let bytes = encode(&session, ProtocolVersion::V5, clock);
        let back = decode(&bytes, b"roamer", limits(), clock).expect("decodes");
        assert_eq!(back.checkpoint_ms(), 1_234_567);
        // From a node before checkpoints: the log alone, read as checkpoint 0.
        let older = decode(&bytes[8..], b"roamer", limits(), clock).expect("decodes");
        assert_eq!((older.checkpoint_ms(), older.snapshot()), (0, back.snapshot()));
        let header = SessionHeader { version: ProtocolVersion::V5, expiry_interval_s: 60, online: true, ends_at_ms: 0, will: None };
        let record = encode_record(&session, &header, clock);
        // The group took its messages elsewhere: only the session's own filters replay.
        let own_filters = vec![Bytes::from_static(b"a/+"), Bytes::from_static(b"b/#")];
        assert_eq!(replay_plan(&record, clock).expect("a plan"), (1_234_567, own_filters.clone()));
        let RecordFate::Rewrite(offline) = offline_since_death(&record, clock) else { panic!("an online session goes offline") };
        assert_eq!(replay_plan(&offline, clock).expect("a plan"), (1_234_567, own_filters));
    }

    #[test]
    fn a_dead_nodes_online_sessions_go_offline_at_the_reaping() {
        let clock = Clock::system();
        let session = busy_session();
        let header = |online, expiry_interval_s, ends_at_ms| SessionHeader {
            version: ProtocolVersion::V311,
            expiry_interval_s,
            online,
            ends_at_ms,
            will: None,
        };
        let RecordFate::Rewrite(rewritten) = offline_since_death(&encode_record(&session, &header(true, 60, 0), clock), clock) else {
            panic!("an online session is rewritten")
        };
        let later = Clock { now: clock.now + std::time::Duration::from_secs(61), unix_ms: clock.unix_ms + 61_000 };
        assert!(decode(&rewritten, b"roamer", limits(), clock).is_ok(), "resumable within its expiry");
        assert_eq!(decode(&rewritten, b"roamer", limits(), later).err(), Some(HandoverError::Expired), "not after it");
        let RecordFate::Rewrite(forever) = offline_since_death(&encode_record(&session, &header(true, u32::MAX, 0), clock), clock) else {
            panic!("rewritten")
        };
        assert!(decode(&forever, b"roamer", limits(), later).is_ok(), "a session that never expires stays");
        let away = encode_record(&session, &header(false, 60, clock.unix_ms + 30_000), clock);
        assert_eq!(offline_since_death(&away, clock), RecordFate::Keep, "offline already: its deadline stands");
        let expired = encode_record(&session, &header(false, 60, clock.unix_ms - 1), clock);
        assert_eq!(offline_since_death(&expired, clock), RecordFate::Delete);
        assert_eq!(offline_since_death(b"garbage", clock), RecordFate::Delete);
    }

    #[test]
    fn bad_bytes_are_refused_not_trusted() {
        let clock = Clock::system();
        let bytes = encode(&busy_session(), ProtocolVersion::V311, clock);
        assert_eq!(decode(&bytes, b"someone-else", limits(), clock).err(), Some(HandoverError::WrongClient));
        assert_eq!(decode(b"garbage", b"roamer", limits(), clock).err(), Some(HandoverError::NotAHandover));
        assert_eq!(decode(&bytes[..bytes.len() - 1], b"roamer", limits(), clock).err(), Some(HandoverError::Damaged));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert_eq!(decode(&flipped, b"roamer", limits(), clock).err(), Some(HandoverError::Damaged));
        assert_eq!(decode(FILE_MAGIC, b"roamer", limits(), clock).err(), Some(HandoverError::SessionCount(0)));
        assert_eq!(decode(&[0u8; 7], b"roamer", limits(), clock).err(), Some(HandoverError::NotAHandover), "short of a checkpoint");
    }

    #[test]
    fn chunks_come_back_together_in_any_order() {
        let bytes = Bytes::from((0..10_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        for chunk_bytes_max in [9, 100, 4_096, 10_008, 1 << 20] {
            let mut chunks = chunk(&bytes, chunk_bytes_max);
            assert!(chunks.iter().all(|chunk| chunk.len() <= chunk_bytes_max.max(CHUNK_BYTES_MIN)));
            chunks.reverse();
            let mut assembly = Assembly::default();
            let mut whole = None;
            for (at, chunk) in chunks.iter().enumerate() {
                whole = assembly.add(chunk).expect("a good chunk");
                assert_eq!(whole.is_some(), at + 1 == chunks.len(), "done exactly at the last chunk");
                // A chunk again (NATS does not duplicate, but a bug might) changes nothing.
                if whole.is_none() {
                    assert_eq!(assembly.add(chunk).expect("again"), None);
                }
            }
            assert_eq!(whole.as_ref(), Some(&bytes));
        }
        let empty = chunk(&Bytes::new(), 100);
        assert_eq!(empty.len(), 1);
        assert_eq!(Assembly::default().add(&empty[0]).expect("empty"), Some(Bytes::new()));
    }

    #[test]
    fn chunks_that_do_not_add_up_are_refused() {
        let mut assembly = Assembly::default();
        let bad = |index: u32, count: u32| {
            let mut chunk = index.to_le_bytes().to_vec();
            chunk.extend_from_slice(&count.to_le_bytes());
            Bytes::from(chunk)
        };
        assert!(Assembly::default().add(&Bytes::from_static(b"short")).is_err());
        assert!(Assembly::default().add(&bad(0, 0)).is_err());
        assert!(Assembly::default().add(&bad(3, 3)).is_err());
        // A count no sender makes (chunks of the smallest size past the bound): refused
        // before anything is allocated for it.
        assert!(Assembly::default().add(&bad(0, u32::MAX)).is_err());
        assert!(Assembly::default().add(&bad(0, (HANDOVER_BYTES_MAX / (CHUNK_BYTES_MIN - 8) + 2) as u32)).is_err());
        assert_eq!(assembly.add(&bad(0, 2)).expect("first of two"), None);
        assert!(assembly.add(&bad(1, 3)).is_err(), "the count changed");
        let mut huge = Assembly::default();
        let big = Bytes::from(vec![0u8; 8 + (HANDOVER_BYTES_MAX / 2) + 1]);
        let mut first = big.to_vec();
        first[4..8].copy_from_slice(&3u32.to_le_bytes());
        let mut second = first.clone();
        second[..4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(huge.add(&Bytes::from(first)).expect("half"), None);
        assert_eq!(huge.add(&Bytes::from(second)).err(), Some(HandoverError::TooLarge));
    }
}
