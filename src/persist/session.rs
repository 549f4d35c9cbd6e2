//! Persistent sessions as log records, pure: encoding what a shard hands over, and replaying
//! the records of every session log back into sessions.
//!
//! Records (kinds in `record::Kind`):
//! - `SessionOpen`: a session instance begins in slot `slot` of this log under `epoch`
//!   (raised at every arrival, so the newest instance of a client id wins across logs):
//!   client id and header.
//! - `SessionState`: the header changed (went offline, will sent, expiry changed).
//! - `SessionEvents`: a run of `SessionEvent`s for the session in `slot`.
//! - `SessionMessage`: a message, once per log, that `Enqueued` events name by number:
//!   a message fanned out to a thousand local sessions is written once.
//! - `SessionEnd`: the client id has no session from `epoch` on (clean start, expiry).
//!
//! Times are wall-clock milliseconds since the Unix epoch, so the time the broker was down
//! counts against session expiry, will delays and message expiry.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::record::{self, Kind};
use super::retained::{self, Clock};
use crate::protocol::{PacketId, ProtocolVersion, QoS, SubscriptionOptions, Will};
use crate::session::{CopyFor, Message, Session, SessionEvent, SessionLimits, SharedRoute, Subscription};

/// What a session log record says about a session besides its events.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionHeader {
    pub version: ProtocolVersion,
    /// The Session Expiry Interval: 0 ends with the connection (never logged), `u32::MAX` never.
    pub expiry_interval_s: u32,
    /// The session had a live connection when this was written.
    pub online: bool,
    /// Offline: when the session ends (wall-clock ms; 0: never).
    pub ends_at_ms: u64,
    /// The will: of the live connection (`due_at_ms` 0), or one waiting for its delay.
    pub will: Option<LoggedWill>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoggedWill {
    pub will: Will,
    pub due_at_ms: u64,
}

/// Why a record's body does not decode although its checksum is good.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionRecordError {
    #[error("a session record ends early")]
    Short,
    #[error("a session record holds an unknown event tag {0}")]
    UnknownEvent(u8),
    #[error("a session record holds a bad value: {0}")]
    BadValue(&'static str),
    #[error("a session event names message {0}, which the log does not hold")]
    UnknownMessage(u64),
    #[error("a session record's message does not decode: {0}")]
    Message(String),
}

// ---- encoding ----------------------------------------------------------------------

/// Turns what a shard hands over into records; remembers which messages this log file
/// already holds (by the identity of their shared allocation) so each is written once.
#[derive(Default)]
pub struct SessionEncoder {
    written: HashMap<usize, (u64, Weak<Message>)>,
    next_message: u64,
    /// `written` is swept of dropped messages when it grows past this.
    sweep_at: usize,
}

impl SessionEncoder {
    /// A fresh file (a rewrite): nothing is in it yet.
    pub fn reset(&mut self) {
        self.written.clear();
        self.next_message = 0;
        self.sweep_at = 0;
    }

    pub fn open(&mut self, slot: u32, epoch: u64, client_id: &[u8], header: &SessionHeader, clock: Clock, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        put_u32(&mut body, slot);
        body.extend_from_slice(&epoch.to_le_bytes());
        put_bytes(&mut body, client_id);
        put_header(&mut body, header, clock);
        record::append(Kind::SessionOpen, &body, out);
    }

    pub fn state(&mut self, slot: u32, header: &SessionHeader, clock: Clock, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        put_u32(&mut body, slot);
        put_header(&mut body, header, clock);
        record::append(Kind::SessionState, &body, out);
    }

    pub fn end(&mut self, epoch: u64, client_id: &[u8], out: &mut Vec<u8>) {
        let mut body = Vec::new();
        body.extend_from_slice(&epoch.to_le_bytes());
        put_bytes(&mut body, client_id);
        record::append(Kind::SessionEnd, &body, out);
    }

    /// The events of the session in `slot`, after a `SessionMessage` for each message this
    /// log does not hold yet.
    pub fn events(&mut self, slot: u32, events: &[SessionEvent], clock: Clock, out: &mut Vec<u8>) {
        if events.is_empty() {
            return;
        }
        let mut body = Vec::new();
        put_u32(&mut body, slot);
        for event in events {
            self.put_event(event, clock, &mut body, out);
        }
        record::append(Kind::SessionEvents, &body, out);
    }

    fn message_id(&mut self, message: &Arc<Message>, clock: Clock, out: &mut Vec<u8>) -> u64 {
        let identity = Arc::as_ptr(message) as usize;
        if let Some((id, weak)) = self.written.get(&identity)
            && weak.upgrade().is_some_and(|held| Arc::ptr_eq(&held, message))
        {
            return *id;
        }
        let id = self.next_message;
        self.next_message += 1;
        let mut body = Vec::new();
        body.extend_from_slice(&id.to_le_bytes());
        body.push(u8::from(message.retain));
        retained::encode(message, clock, &mut body);
        record::append(Kind::SessionMessage, &body, out);
        if self.written.len() >= self.sweep_at {
            self.written.retain(|_, (_, weak)| weak.strong_count() > 0);
            self.sweep_at = (self.written.len() * 2).max(1024);
        }
        self.written.insert(identity, (id, Arc::downgrade(message)));
        id
    }

    fn put_event(&mut self, event: &SessionEvent, clock: Clock, body: &mut Vec<u8>, out: &mut Vec<u8>) {
        match event {
            SessionEvent::Subscribed { filter, subscription } => {
                body.push(1);
                put_bytes(body, filter);
                body.push(subscription.options.to_byte());
                put_u32(body, subscription.identifier.unwrap_or(0));
            }
            SessionEvent::Unsubscribed { filter } => {
                body.push(2);
                put_bytes(body, filter);
            }
            SessionEvent::Enqueued { message, copy } => {
                let id = self.message_id(message, clock, out);
                body.push(3);
                body.extend_from_slice(&id.to_le_bytes());
                body.push(copy.qos as u8 | (u8::from(copy.retain) << 2) | (u8::from(copy.shared().is_some()) << 3));
                put_u32(body, copy.subscription_ids().len() as u32);
                for identifier in copy.subscription_ids() {
                    put_u32(body, *identifier);
                }
                if let Some(route) = copy.shared() {
                    put_bytes(body, &route.group);
                    put_bytes(body, &route.filter);
                }
            }
            SessionEvent::Sent(id) => put_id(body, 4, *id),
            SessionEvent::ExpiredFront => body.push(5),
            SessionEvent::DroppedFront => body.push(6),
            SessionEvent::DroppedBack => body.push(7),
            SessionEvent::Finished(id) => put_id(body, 8, *id),
            SessionEvent::Released(id) => put_id(body, 9, *id),
            SessionEvent::Cleared => body.push(10),
            SessionEvent::InboundQos2 { packet_id, pending: true } => put_id(body, 11, *packet_id),
            SessionEvent::InboundQos2 { packet_id, pending: false } => put_id(body, 12, *packet_id),
            SessionEvent::NextPacketId(id) => put_id(body, 13, *id),
        }
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn put_id(out: &mut Vec<u8>, tag: u8, id: PacketId) {
    out.push(tag);
    out.extend_from_slice(&id.get().to_le_bytes());
}

fn put_header(out: &mut Vec<u8>, header: &SessionHeader, clock: Clock) {
    out.push(if header.version.is_v5() { 5 } else { 4 });
    put_u32(out, header.expiry_interval_s);
    out.push(u8::from(header.online));
    out.extend_from_slice(&header.ends_at_ms.to_le_bytes());
    match &header.will {
        None => out.push(0),
        Some(logged) => {
            out.push(1);
            out.extend_from_slice(&logged.due_at_ms.to_le_bytes());
            put_u32(out, logged.will.properties.will_delay_interval.unwrap_or(0));
            // The will travels as a message (its delay is not a PUBLISH property).
            let mut properties = logged.will.properties.clone();
            properties.will_delay_interval = None;
            let message = Message {
                topic: logged.will.topic.clone(),
                payload: logged.will.payload.clone(),
                qos: logged.will.qos,
                retain: logged.will.retain,
                properties: properties.into(),
                publisher: None,
                expires_at: None,
            };
            let mut encoded = Vec::new();
            out.push(u8::from(logged.will.retain));
            retained::encode(&message, clock, &mut encoded);
            put_bytes(out, &encoded);
        }
    }
}

// ---- decoding ----------------------------------------------------------------------

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], SessionRecordError> {
        if self.bytes.len() < count {
            return Err(SessionRecordError::Short);
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, SessionRecordError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, SessionRecordError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, SessionRecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, SessionRecordError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<Bytes, SessionRecordError> {
        let len = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    fn packet_id(&mut self) -> Result<PacketId, SessionRecordError> {
        PacketId::new(self.u16()?).ok_or(SessionRecordError::BadValue("packet id 0"))
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn decode_message(retain: bool, body: &[u8], clock: Clock) -> Result<Message, SessionRecordError> {
    let (mut message, _expired) = retained::decode_record(body, clock).map_err(|error| SessionRecordError::Message(error.to_string()))?;
    message.retain = retain;
    Ok(message)
}

fn decode_header(cursor: &mut Cursor, clock: Clock) -> Result<SessionHeader, SessionRecordError> {
    let version = match cursor.u8()? {
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        _ => return Err(SessionRecordError::BadValue("protocol version")),
    };
    let expiry_interval_s = cursor.u32()?;
    let online = cursor.u8()? != 0;
    let ends_at_ms = cursor.u64()?;
    let will = match cursor.u8()? {
        0 => None,
        _ => {
            let due_at_ms = cursor.u64()?;
            let delay_s = cursor.u32()?;
            let retain = cursor.u8()? != 0;
            let message = decode_message(retain, &cursor.bytes()?, clock)?;
            let mut properties = (*message.properties).clone();
            properties.will_delay_interval = (delay_s > 0).then_some(delay_s);
            let will = Will { topic: message.topic, payload: message.payload, qos: message.qos, retain, properties };
            Some(LoggedWill { will, due_at_ms })
        }
    };
    Ok(SessionHeader { version, expiry_interval_s, online, ends_at_ms, will })
}

fn decode_event(cursor: &mut Cursor, messages: &HashMap<u64, Arc<Message>>) -> Result<SessionEvent, SessionRecordError> {
    Ok(match cursor.u8()? {
        1 => {
            let filter = cursor.bytes()?;
            let options = SubscriptionOptions::from_byte(cursor.u8()?).map_err(|_| SessionRecordError::BadValue("subscription options"))?;
            let identifier = Some(cursor.u32()?).filter(|&identifier| identifier != 0);
            SessionEvent::Subscribed { filter, subscription: Subscription { options, identifier } }
        }
        2 => SessionEvent::Unsubscribed { filter: cursor.bytes()? },
        3 => {
            let id = cursor.u64()?;
            let message = messages.get(&id).cloned().ok_or(SessionRecordError::UnknownMessage(id))?;
            let flags = cursor.u8()?;
            let qos = QoS::from_bits(flags & 0b11).map_err(|_| SessionRecordError::BadValue("QoS"))?;
            let count = cursor.u32()? as usize;
            let mut subscription_ids = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                subscription_ids.push(cursor.u32()?);
            }
            let mut copy = CopyFor::new(qos, flags & 0b100 != 0, subscription_ids);
            if flags & 0b1000 != 0 {
                copy.set_shared(SharedRoute { group: cursor.bytes()?, filter: cursor.bytes()? });
            }
            SessionEvent::Enqueued { message, copy }
        }
        4 => SessionEvent::Sent(cursor.packet_id()?),
        5 => SessionEvent::ExpiredFront,
        6 => SessionEvent::DroppedFront,
        7 => SessionEvent::DroppedBack,
        8 => SessionEvent::Finished(cursor.packet_id()?),
        9 => SessionEvent::Released(cursor.packet_id()?),
        10 => SessionEvent::Cleared,
        11 => SessionEvent::InboundQos2 { packet_id: cursor.packet_id()?, pending: true },
        12 => SessionEvent::InboundQos2 { packet_id: cursor.packet_id()?, pending: false },
        13 => SessionEvent::NextPacketId(cursor.packet_id()?),
        tag => return Err(SessionRecordError::UnknownEvent(tag)),
    })
}

// ---- replay ------------------------------------------------------------------------

/// A session as the logs left it.
#[derive(Debug)]
pub struct LoggedSession {
    pub client_id: Bytes,
    pub epoch: u64,
    pub header: SessionHeader,
    pub session: Session,
    /// Offline past its expiry while the broker was down: not restored (its will is sent).
    pub expired: bool,
}

/// What the logs hold once replayed.
#[derive(Debug)]
pub struct Replayed {
    pub sessions: Vec<LoggedSession>,
    /// Every client id whose session ended, with the epoch it ended at: the next
    /// generation repeats these, so an older instance in a file that outlives its
    /// generation (a failed delete) stays ended.
    pub ended: Vec<(Bytes, u64)>,
}

/// Replays session logs (any number of files, from any shard count) into the newest
/// instance of each client's session.
pub struct SessionReplay {
    limits: SessionLimits,
    clock: Clock,
    /// (client id, epoch) -> the session.
    sessions: HashMap<(Bytes, u64), (SessionHeader, Session)>,
    /// Client id -> the newest epoch at which its session ended.
    ended: HashMap<Bytes, u64>,
    pub max_epoch: u64,
    /// Events that did not fit the state they were applied to (skipped; see `Mismatch`).
    pub mismatches: usize,
}

impl SessionReplay {
    pub fn new(limits: SessionLimits, clock: Clock) -> SessionReplay {
        SessionReplay { limits, clock, sessions: HashMap::new(), ended: HashMap::new(), max_epoch: 0, mismatches: 0 }
    }

    /// Replays one file's records, in the order written.
    pub fn file<'a>(&mut self, records: impl IntoIterator<Item = (Kind, &'a [u8])>) -> Result<(), SessionRecordError> {
        // Slots and message numbers are local to one file.
        let mut slots: HashMap<u32, (Bytes, u64)> = HashMap::new();
        let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
        for (kind, body) in records {
            let mut cursor = Cursor { bytes: body };
            match kind {
                Kind::Retained => {}
                Kind::SessionMessage => {
                    let id = cursor.u64()?;
                    let retain = cursor.u8()? != 0;
                    messages.insert(id, Arc::new(decode_message(retain, cursor.bytes, self.clock)?));
                }
                Kind::SessionOpen => {
                    let slot = cursor.u32()?;
                    let epoch = cursor.u64()?;
                    let client_id = cursor.bytes()?;
                    let header = decode_header(&mut cursor, self.clock)?;
                    self.max_epoch = self.max_epoch.max(epoch);
                    let mut session = Session::new(client_id.clone(), self.limits);
                    session.enable_journal();
                    self.sessions.insert((client_id.clone(), epoch), (header, session));
                    slots.insert(slot, (client_id, epoch));
                }
                Kind::SessionState => {
                    let slot = cursor.u32()?;
                    let header = decode_header(&mut cursor, self.clock)?;
                    if let Some(entry) = slots.get(&slot).and_then(|key| self.sessions.get_mut(key)) {
                        entry.0 = header;
                    }
                }
                Kind::SessionEvents => {
                    let slot = cursor.u32()?;
                    let mut target = slots.get(&slot).and_then(|key| self.sessions.get_mut(key));
                    while !cursor.is_empty() {
                        let event = decode_event(&mut cursor, &messages)?;
                        if let Some((_, session)) = target.as_mut()
                            && session.apply(event).is_err()
                        {
                            self.mismatches += 1;
                        }
                    }
                }
                Kind::SessionEnd => {
                    let epoch = cursor.u64()?;
                    let client_id = cursor.bytes()?;
                    self.max_epoch = self.max_epoch.max(epoch);
                    let newest = self.ended.entry(client_id).or_insert(0);
                    *newest = (*newest).max(epoch);
                }
            }
        }
        Ok(())
    }

    /// The newest instance of every client's session that has not ended, its queue's
    /// recorded changes taken (what is restored gets written whole again).
    pub fn finish(self) -> Replayed {
        let mut newest: HashMap<Bytes, LoggedSession> = HashMap::new();
        for ((client_id, epoch), (header, mut session)) in self.sessions {
            if self.ended.get(&client_id).is_some_and(|&ended| ended >= epoch) {
                continue;
            }
            if newest.get(&client_id).is_some_and(|kept| kept.epoch > epoch) {
                continue;
            }
            session.clear_journal();
            let expired = !header.online && header.ends_at_ms != 0 && instant_of(header.ends_at_ms, self.clock).is_none();
            newest.insert(client_id.clone(), LoggedSession { client_id, epoch, header, session, expired });
        }
        let mut sessions: Vec<LoggedSession> = newest.into_values().collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut ended: Vec<(Bytes, u64)> = self.ended.into_iter().collect();
        ended.sort();
        Replayed { sessions, ended }
    }
}

/// Turns a wall-clock deadline into an instant on this process's clock (`None`: passed).
pub fn instant_of(unix_ms: u64, clock: Clock) -> Option<Instant> {
    let left = unix_ms.checked_sub(clock.unix_ms).filter(|&left| left > 0)?;
    // A deadline centuries away (a record can say anything) is as good as never.
    let left = Duration::from_millis(left).min(Duration::from_secs(100 * 365 * 86_400));
    Some(clock.now + left)
}

/// The inverse of `instant_of`.
pub fn unix_ms_of(at: Instant, clock: Clock) -> u64 {
    (clock.unix_ms + at.saturating_duration_since(clock.now).as_millis() as u64).max(1)
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
