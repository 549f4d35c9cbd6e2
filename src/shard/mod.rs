//! The per-core service. A `Shard` owns everything its core touches: the clients
//! (sessions, live or offline) that live here, their subscriptions in a local trie, a full
//! replica of the retained store, the client-id registry entries this shard is home for,
//! and one outbox per peer shard. Other shards reach it only through `MeshMessage`s.
//!
//! Pure: no sockets, no executor, no clock. The IO layer hands it decoded packets, mesh
//! batches and `now`; it answers by writing into `Link`s and outboxes and waking wakers.
//!
//! Routing: every publish is applied locally and sent to the peers the interest summary
//! names (`interest.rs`), each of which matches it against its own trie; `--routing
//! broadcast` sends it to every peer instead. Retained publishes go to every peer: the
//! retained store is replicated in the same FIFO as the publishes, so a subscribe on any
//! shard sees a retained message either in its replica or as a later live delivery.
//!
//! Client ids: `home_shard(id)` holds the registry entry saying which connection owns the
//! id. A CONNECT claims the id at home; home either grants it or tells the previous owner
//! to evict and hand the session to the new connection's shard (see `on_evict`).

mod barrier;
mod counters;
mod flow;
mod interest;
pub mod link;
pub mod mesh;
mod recent;
pub mod shared;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use barrier::Barriers;
pub use counters::Counters;
use interest::{Interest, LocalAdd};
use link::{Link, LinkState};
pub use mesh::{ConnId, MeshMessage, ShardId, StreamCut};
use recent::{RecentPublish, RecentPublishes};
use shared::{SharedGroups, SharedTarget};

use crate::auth::{AuthExchange, AuthStep, Authenticator};
use crate::config::{Limits, Routing};
use crate::protocol::{
    Ack, Auth, ConnAck, Connect, ConnectRefusal, DecodeError, Disconnect, Packet, Properties, ProtocolVersion, Publish, PublishHeader, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will, publish_wire_len, write_publish,
};
use crate::session::{AckOutcome, CopyFor, Message, Offer, Outgoing, Session, SharedRoute, Subscription, detach, merge_matching};
use crate::topics::{
    RetainedTree, SubscriptionTree, TopicError, filter_matches, is_broker_topic, level_count, validate_topic_filter, validate_topic_name,
};

/// Index of a client slot within one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(u32);

/// Publishes kept for catching up handed-over sessions.
const RECENT_PUBLISHES_MAX: usize = 4096;
const RECENT_PUBLISHES_MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;

/// Why the broker closes a connection. Each maps to the reason code of the DISCONNECT a
/// 5.0 client is sent first; a 3.1.1 client is just disconnected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("second CONNECT on one connection")]
    SecondConnect,
    #[error("{0} may only be sent by a server")]
    ServerOnlyPacket(&'static str),
    #[error("invalid topic name: {0}")]
    TopicName(TopicError),
    #[error("topic alias used but none was granted")]
    TopicAlias,
    #[error("AUTH without an authentication method in CONNECT, or out of turn")]
    UnexpectedAuth,
    #[error("a packet other than AUTH while authenticating")]
    NotAuthWhileAuthenticating,
    #[error("more QoS 2 messages awaiting PUBREL than the Receive Maximum")]
    ReceiveMaximumExceeded,
    #[error("DISCONNECT sets a session expiry on a session that had none")]
    SessionExpiryOnDisconnect,
    #[error("no-local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    #[error("PUBLISH above the server's Maximum QoS")]
    QosNotSupported,
    #[error("retained PUBLISH while retain is not available")]
    RetainNotSupported,
    #[error("topic alias used without ever being set on this connection")]
    UnknownTopicAlias,
    #[error("payload format indicator says UTF-8 but the payload is not")]
    PayloadFormatInvalid,
    #[error("subscription identifier while they are switched off")]
    SubscriptionIdentifiersNotSupported,
    #[error("{0} for a message that waits for another kind of acknowledgement")]
    WrongAcknowledgement(&'static str),
    #[error("a client's PUBLISH carries a subscription identifier")]
    SubscriptionIdentifierFromClient,
    #[error("invalid topic filter: {0}")]
    TopicFilter(TopicError),
}

impl CloseReason {
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            CloseReason::Decode(error) => error.reason_code(),
            CloseReason::TopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            CloseReason::TopicAlias => ReasonCode::TOPIC_ALIAS_INVALID,
            CloseReason::ReceiveMaximumExceeded => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            CloseReason::PayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
            CloseReason::QosNotSupported => ReasonCode::QOS_NOT_SUPPORTED,
            CloseReason::RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            CloseReason::SubscriptionIdentifiersNotSupported => ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            CloseReason::TopicFilter(_) => ReasonCode::TOPIC_FILTER_INVALID,
            CloseReason::SecondConnect
            | CloseReason::WrongAcknowledgement(_)
            | CloseReason::SubscriptionIdentifierFromClient
            | CloseReason::ServerOnlyPacket(_)
            | CloseReason::UnexpectedAuth
            | CloseReason::NotAuthWhileAuthenticating
            | CloseReason::UnknownTopicAlias
            | CloseReason::NoLocalOnSharedSubscription
            | CloseReason::SessionExpiryOnDisconnect => ReasonCode::PROTOCOL_ERROR,
        }
    }
}

/// What the coarse timer found due for one client.
enum TimerEvent {
    KeepAliveTimeout,
    SessionExpired,
    WillDelayOver,
}

/// How long a session outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionExpiry {
    /// Clean session (3.1.1) or Session Expiry Interval 0 (5.0).
    WithConnection,
    After(Duration),
    /// Clean session 0 (3.1.1) or 0xFFFFFFFF (5.0).
    Never,
}

impl SessionExpiry {
    fn from_connect(connect: &Connect) -> SessionExpiry {
        if !connect.version.is_v5() {
            return if connect.clean_start { SessionExpiry::WithConnection } else { SessionExpiry::Never };
        }
        Self::from_interval(connect.properties.session_expiry_interval.unwrap_or(0))
    }

    fn from_interval(seconds: u32) -> SessionExpiry {
        match seconds {
            0 => SessionExpiry::WithConnection,
            u32::MAX => SessionExpiry::Never,
            seconds => SessionExpiry::After(Duration::from_secs(u64::from(seconds))),
        }
    }
}

struct Client {
    session: Session,
    /// The live connection; `None` while the session is offline.
    link: Option<Rc<Link>>,
    conn_id: ConnId,
    version: ProtocolVersion,
    keep_alive: Option<Duration>,
    last_activity: Instant,
    /// Boxed: a will carries a whole property set, and most clients have none.
    will: Option<Box<Will>>,
    session_expiry: SessionExpiry,
    /// While offline with `SessionExpiry::After`: when the session ends.
    expires_at: Option<Instant>,
    /// The client's Maximum Packet Size (5.0); larger messages are not sent to it.
    max_packet_size_out: u32,
    /// Topic aliases this connection has set (client to broker), per the connection only.
    topic_aliases: HashMap<u16, Bytes>,
    /// While offline: a will waiting for its Will Delay Interval.
    pending_will: Option<Box<(Instant, Will)>>,
    aliases_out: OutboundAliases,
    /// The enhanced-authentication method the connection authenticated with, if any, and
    /// a re-authentication (AUTH 0x19) in progress.
    auth_method: Option<Bytes>,
    reauthentication: Option<Box<dyn AuthExchange>>,
    /// For a session handed over from another shard: publishes at or before this cut were
    /// the old owner's to deliver, so this shard skips them for this client.
    skip_until: Option<StreamCut>,
    /// Since when the (online) session's queue has been at its bound (see `flow.rs`).
    stalled_since: Option<Instant>,
    /// Publishers (their shard and client id) paused until this session's queue drains.
    paused_publishers: Vec<(ShardId, Bytes)>,
    /// Retained messages for new subscriptions not yet handed to the session; boxed, as
    /// most clients have none (8 bytes in every client slot instead of 32).
    #[allow(clippy::box_collection)]
    retained_backlog: Option<Box<std::collections::VecDeque<RetainedCopy>>>,
}

/// A SUBACK or UNSUBACK, held until every peer applied the subscription change, and the
/// retained messages the new subscriptions get after it.
struct HeldAnswer {
    link: Rc<Link>,
    version: ProtocolVersion,
    packet: Packet,
    retained: Vec<RetainedCopy>,
}

/// A retained message for a new subscription: at what QoS, under which identifier.
struct RetainedCopy {
    message: Arc<Message>,
    qos: QoS,
    identifier: Option<u32>,
}

/// A session leaving this shard, kept (and fed) here until every other shard has applied
/// the receive-all hold for its new shard.
struct MovingSession {
    client_id: Bytes,
    previous: ConnId,
    next: ConnId,
}

/// How far a CONNECT got: the IO layer waits for the CONNACK, feeds AUTH packets to
/// `continue_authentication`, or gives up on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectProgress {
    Claimed,
    Authenticating,
    Refused,
}

/// An enhanced-authentication exchange between CONNECT and CONNACK.
struct Authenticating {
    connect: Box<Connect>,
    method: Bytes,
    exchange: Box<dyn AuthExchange>,
}

/// What an enhanced authentication that succeeded puts in the CONNACK.
struct Authenticated {
    method: Bytes,
    data: Option<Bytes>,
}

struct PendingConnect {
    link: Rc<Link>,
    connect: Box<Connect>,
    client_id: Bytes,
    client_id_assigned: bool,
    authenticated: Option<Authenticated>,
    /// Home asked to evict this connection before its own claim was answered.
    deferred_eviction: Option<(ConnId, bool)>,
}

pub struct Shard {
    id: ShardId,
    shard_count: usize,
    limits: Limits,
    auth: Arc<Authenticator>,
    clients: Vec<Option<Client>>,
    free_keys: Vec<ClientKey>,
    client_index: HashMap<Bytes, ClientKey>,
    subscriptions: SubscriptionTree<ClientKey, Subscription>,
    retained: RetainedTree<Arc<Message>>,
    shared: SharedGroups,
    interest: Interest,
    barriers: Barriers<HeldAnswer>,
    moving: HashMap<u64, MovingSession>,
    /// Per publish: which peers it goes to (reused).
    route_targets: Vec<bool>,
    registry: HashMap<Bytes, ConnId>,
    pending_connects: HashMap<ConnId, PendingConnect>,
    authenticating: HashMap<ConnId, Authenticating>,
    outboxes: Vec<Vec<MeshMessage>>,
    outbox_wakers: Vec<Option<Waker>>,
    congestion_waiters: Vec<Waker>,
    publish_sequence: u64,
    seen: Vec<u64>,
    recent: RecentPublishes,
    next_conn_sequence: u64,
    match_scratch: Vec<(ClientKey, Subscription)>,
    outgoing_scratch: Vec<Outgoing>,
    next_sys_publish: Option<Instant>,
    accepting: bool,
    pub counters: Counters,
}

/// The shard that holds the registry entry for `client_id` (FNV-1a, stable in a process).
pub fn home_shard(client_id: &[u8], shard_count: usize) -> ShardId {
    let hash = client_id.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    ShardId((hash % shard_count as u64) as usize)
}

/// Broker-to-client topic aliases of one connection (5.0): the first topics sent get an
/// alias each, up to the client's Topic Alias Maximum; later messages on those topics carry
/// only the alias. Per connection: a new connection starts with none.
#[derive(Debug, Default)]
struct OutboundAliases {
    maximum: u16,
    assigned: HashMap<Bytes, u16>,
}

impl OutboundAliases {
    /// The topic to put on the wire (empty once aliased) and the alias to send with it.
    fn resolve<'t>(&mut self, topic: &'t Bytes) -> (&'t [u8], Option<u16>) {
        if self.maximum == 0 {
            return (topic, None);
        }
        if let Some(&alias) = self.assigned.get(topic) {
            return (&[], Some(alias));
        }
        if self.assigned.len() < usize::from(self.maximum) {
            let alias = self.assigned.len() as u16 + 1;
            self.assigned.insert(detach(topic), alias);
            return (topic, Some(alias));
        }
        (topic, None)
    }
}

fn write_outgoing(link: &Link, version: ProtocolVersion, outgoing: &Outgoing, now: Instant, aliases: &mut OutboundAliases) {
    match outgoing {
        Outgoing::Publish { packet_id, qos, dup, retain, subscription_ids, message } => link.write_with(|buf| {
            let mut header = PublishHeader { dup: *dup, qos: *qos, retain: *retain, packet_id: *packet_id, topic_alias: None };
            if version.is_v5() {
                let mut properties = message.properties_at(now);
                if !subscription_ids.is_empty() {
                    properties.to_mut().subscription_identifiers.clone_from(subscription_ids);
                }
                let (topic, alias) = aliases.resolve(&message.topic);
                header.topic_alias = alias;
                write_publish(buf, version, header, topic, &properties, &message.payload)
            } else {
                write_publish(buf, version, header, &message.topic, &message.properties, &message.payload)
            }
        }),
        Outgoing::PubRel(packet_id) => link.write_with(|buf| Packet::PubRel(Ack::new(*packet_id)).encode(version, buf)),
    }
}

/// The Will Delay Interval (5.0); zero for 3.1.1 wills.
fn will_delay(will: &Will) -> Duration {
    Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)))
}

/// Closes a connection the broker ends; a 5.0 client hears why first.
fn close_with_reason(link: &Link, version: ProtocolVersion, reason: ReasonCode) {
    if version.is_v5() {
        write_packet(link, version, &Packet::Disconnect(Disconnect::new(reason)));
    }
    link.close();
}

/// Writes a packet, unless it exceeds the client's Maximum Packet Size (see `Link::write_packet`).
fn write_packet(link: &Link, version: ProtocolVersion, packet: &Packet) {
    link.write_packet(version, packet);
}

impl Shard {
    pub fn new(id: ShardId, shard_count: usize, limits: Limits, auth: Arc<Authenticator>, now: Instant) -> Shard {
        assert!(id.0 < shard_count);
        let next_sys_publish = limits.sys_interval.map(|interval| now + interval);
        Shard {
            id,
            shard_count,
            limits,
            auth,
            clients: Vec::new(),
            free_keys: Vec::new(),
            client_index: HashMap::new(),
            subscriptions: SubscriptionTree::default(),
            retained: RetainedTree::default(),
            shared: SharedGroups::default(),
            interest: Interest::new(shard_count),
            barriers: Barriers::new(shard_count),
            moving: HashMap::new(),
            route_targets: vec![false; shard_count],
            registry: HashMap::new(),
            pending_connects: HashMap::new(),
            authenticating: HashMap::new(),
            outboxes: (0..shard_count).map(|_| Vec::new()).collect(),
            outbox_wakers: (0..shard_count).map(|_| None).collect(),
            congestion_waiters: Vec::new(),
            publish_sequence: 0,
            seen: vec![0; shard_count],
            recent: RecentPublishes::new(shard_count, RECENT_PUBLISHES_MAX, RECENT_PUBLISHES_MAX_PAYLOAD_BYTES),
            next_conn_sequence: 0,
            match_scratch: Vec::new(),
            outgoing_scratch: Vec::new(),
            next_sys_publish,
            accepting: true,
            counters: Counters::default(),
        }
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A new link for an accepted socket.
    pub fn new_link(&mut self) -> Rc<Link> {
        self.next_conn_sequence += 1;
        self.counters.connections_accepted += 1;
        Rc::new(Link::new(ConnId::new(self.id, self.next_conn_sequence)))
    }

    pub fn connected_clients(&self) -> usize {
        self.clients.iter().flatten().filter(|client| client.link.is_some()).count()
    }

    // ----- clients -----

    fn client(&mut self, key: ClientKey) -> &mut Client {
        self.clients[key.0 as usize].as_mut().expect("client keys in use point at live slots")
    }

    /// Installs a client and announces its session's subscriptions to the peers.
    fn insert_client(&mut self, client: Client, now: Instant) -> ClientKey {
        let client_id = client.session.client_id().clone();
        let request = self.barriers.new_request();
        let subscriptions: Vec<(Bytes, Subscription)> =
            client.session.subscriptions.iter().map(|(filter, subscription)| (filter.clone(), *subscription)).collect();
        let key = match self.free_keys.pop() {
            Some(key) => {
                self.clients[key.0 as usize] = Some(client);
                key
            }
            None => {
                self.clients.push(Some(client));
                ClientKey((self.clients.len() - 1) as u32)
            }
        };
        for (filter, subscription) in subscriptions {
            match shared::parse_owned(&filter) {
                Some(Ok((group, inner))) => {
                    self.broadcast_share_join(group, inner, client_id.clone(), subscription.options.qos, 0, now);
                }
                _ => {
                    self.subscriptions.insert(&filter, key, subscription);
                    self.add_interest(&filter, request, None, now);
                }
            }
        }
        let previous = self.client_index.insert(client_id, key);
        assert!(previous.is_none(), "the registry grants a client id to one connection at a time");
        key
    }

    fn remove_client(&mut self, key: ClientKey, now: Instant) -> Client {
        self.settle_flow_of_leaving_client(key, false, now);
        let client = self.clients[key.0 as usize].take().expect("removing a live client");
        for filter in client.session.subscriptions.keys() {
            match shared::parse_owned(filter) {
                Some(Ok((group, inner))) => {
                    self.broadcast_share_leave(group, inner, client.session.client_id().clone(), 0, now);
                }
                _ => {
                    self.subscriptions.remove(filter, &key);
                    self.interest.remove_local(filter);
                }
            }
        }
        self.client_index.remove(client.session.client_id());
        self.free_keys.push(key);
        client
    }

    /// The client a link serves, if that link is still the client's current connection.
    fn client_of(&self, link: &Link) -> Option<ClientKey> {
        let key = link.client()?;
        let client = self.clients.get(key.0 as usize)?.as_ref()?;
        (client.conn_id == link.conn_id).then_some(key)
    }

    // ----- mesh -----

    fn send(&mut self, target: ShardId, message: MeshMessage, now: Instant) {
        if target == self.id {
            self.handle_message(target, message, now);
            return;
        }
        self.outboxes[target.0].push(message);
        if let Some(waker) = self.outbox_wakers[target.0].take() {
            waker.wake();
        }
    }

    /// Sends each peer a message made for it.
    fn broadcast(&mut self, make: impl Fn() -> MeshMessage, now: Instant) {
        let here = self.id.0;
        for peer in (0..self.shard_count).filter(|&peer| peer != here) {
            let message = make();
            self.send(ShardId(peer), message, now);
        }
    }

    /// Forwarder side: everything queued for `peer`, once there is something.
    pub fn poll_outbox(&mut self, peer: ShardId, cx: &mut Context<'_>) -> Poll<Vec<MeshMessage>> {
        if self.outboxes[peer.0].is_empty() {
            self.outbox_wakers[peer.0] = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let batch = std::mem::take(&mut self.outboxes[peer.0]);
        if !self.congested() {
            for waker in self.congestion_waiters.drain(..) {
                waker.wake();
            }
        }
        Poll::Ready(batch)
    }

    /// True while some peer's outbox is at its bound: publishers here should not be read.
    pub fn congested(&self) -> bool {
        self.outboxes.iter().any(|outbox| outbox.len() >= self.limits.mesh_outbox_max_messages)
    }

    /// A batch from peer `from`, in the order it sent them.
    pub fn handle_batch(&mut self, from: ShardId, batch: Vec<MeshMessage>, now: Instant) {
        for message in batch {
            self.handle_message(from, message, now);
        }
    }

    fn handle_message(&mut self, from: ShardId, message: MeshMessage, now: Instant) {
        match message {
            MeshMessage::Publish { sequence, message, shared } => {
                debug_assert!(sequence > self.seen[from.0], "per-pair FIFO keeps sequences rising");
                self.seen[from.0] = sequence;
                self.apply_publish(from, sequence, &message, &shared, 0, now);
            }
            MeshMessage::ShareJoin { group, filter, client_id, granted, request } => {
                self.shared.join(group, filter, from, client_id, granted);
                self.answer(from, request, now);
            }
            MeshMessage::ShareLeave { group, filter, client_id, request } => {
                self.shared.leave(&group, &filter, from, &client_id);
                self.answer(from, request, now);
            }
            MeshMessage::InterestJoin { filter, request, since } => {
                self.interest.peer_join(&filter, from);
                if let Some(since) = since {
                    self.send_late_matches(from, &filter, since, now);
                }
                self.answer(from, request, now);
            }
            MeshMessage::LateMatch { filter, message } => self.deliver_late_match(&filter, &message, now),
            MeshMessage::InterestLeave { filter } => self.interest.peer_leave(&filter, from),
            MeshMessage::ReceiveAll { shard, request } => {
                if shard != self.id {
                    self.interest.hold_receive_all(shard);
                }
                self.answer(from, request, now);
            }
            MeshMessage::ReceiveAllDone => self.interest.release_receive_all(from),
            MeshMessage::Applied { request, position } => self.applied(request, from, position, now),
            MeshMessage::SharedRedeliver { target, message, forwarded } => self.deliver_shared(&target, &message, None, !forwarded, now),
            MeshMessage::Claim { client_id, conn, clean_start } => self.on_claim(client_id, conn, clean_start, now),
            MeshMessage::Granted { conn } => self.complete_connect(conn, None, None, false, now),
            MeshMessage::Evict { client_id, previous, next, clean_start } => self.on_evict(client_id, previous, next, clean_start, now),
            MeshMessage::Handoff { conn, session, cut, receive_all_held } => {
                if from != self.id && session.is_some() {
                    self.counters.sessions_moved_in += 1;
                }
                self.complete_connect(conn, session, Some(cut), receive_all_held, now)
            }
            MeshMessage::PausePublisher { client_id } => self.on_pause_publisher(&client_id),
            MeshMessage::ResumePublisher { client_id } => self.on_resume_publisher(&client_id),
            MeshMessage::Released { client_id, conn } => {
                if self.registry.get(&client_id) == Some(&conn) {
                    self.registry.remove(&client_id);
                }
            }
        }
    }

    // ----- connecting -----

    /// `authenticated`: an enhanced-authentication method has vouched for the client, which
    /// takes the place of the user name and password check. `credentials`: that check,
    /// when the IO layer has already made it off this thread (password hashing is slow).
    fn admit(&self, connect: &Connect, authenticated: bool, credentials: Option<Result<(), ConnectRefusal>>) -> Result<(), ConnectRefusal> {
        if !self.accepting {
            return Err(ConnectRefusal::ServerUnavailable);
        }
        if !authenticated {
            match credentials {
                Some(checked) => checked?,
                None => self.auth.check(connect.username.as_deref(), connect.password.as_deref())?,
            }
        }
        if connect.client_id.is_empty() && !connect.clean_start && !connect.version.is_v5() {
            return Err(ConnectRefusal::ClientIdentifierNotValid);
        }
        if let Some(will) = &connect.will {
            if will.qos > self.limits.max_qos {
                return Err(ConnectRefusal::QosNotSupported);
            }
            if will.retain && !self.limits.retain_available {
                return Err(ConnectRefusal::RetainNotSupported);
            }
            // MQTT-4.7.3-1 (not empty), 3.1.2.3 (a valid topic name), and what a PUBLISH
            // to it would be refused for.
            if validate_topic_name(&will.topic).is_err()
                || level_count(&will.topic) > self.limits.topic_levels_max
                || is_broker_topic(&will.topic)
            {
                return Err(ConnectRefusal::WillTopicInvalid);
            }
            if will.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&will.payload).is_err() {
                return Err(ConnectRefusal::WillPayloadFormatInvalid);
            }
        }
        Ok(())
    }

    /// CONNACK with the refusal's code, then close.
    fn refuse(&mut self, link: &Link, version: ProtocolVersion, refusal: ConnectRefusal) -> ConnectProgress {
        self.counters.connections_refused += 1;
        let code = if version.is_v5() { Some(refusal.reason_code_v5().0) } else { refusal.return_code_v311() };
        let Some(code) = code else {
            link.close();
            return ConnectProgress::Refused;
        };
        let mut properties = Properties::default();
        if version.is_v5() {
            properties.reason_string = Some(Bytes::from_static(refusal.describe().as_bytes()));
        }
        let connack = ConnAck { session_present: false, code, properties };
        write_packet(link, version, &Packet::ConnAck(connack));
        link.close();
        ConnectProgress::Refused
    }

    /// A CONNECT arrived on `link`. With an Authentication Method (5.0) the exchange
    /// starts; refused: CONNACK with the code, then close. Otherwise the client id is
    /// claimed at its home shard and `link` opens when that is settled.
    pub fn begin_connect(&mut self, link: &Rc<Link>, connect: Box<Connect>, now: Instant) -> ConnectProgress {
        self.begin_connect_checked(link, connect, None, now)
    }

    /// The authenticator, for checking a CONNECT's password off the shard thread.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// `begin_connect` with the user name and password already checked (`credentials`:
    /// `Authenticator::check`'s verdict, computed off this thread).
    pub fn begin_connect_checked(
        &mut self,
        link: &Rc<Link>,
        mut connect: Box<Connect>,
        credentials: Option<Result<(), ConnectRefusal>>,
        now: Instant,
    ) -> ConnectProgress {
        if connect.version.is_v5()
            && let Some(maximum) = connect.properties.maximum_packet_size
        {
            link.set_max_packet_size_out(maximum);
        }
        if let Some(method) = connect.properties.authentication_method.take() {
            let Some(exchange) = self.auth.start_exchange(&method) else {
                return self.refuse(link, connect.version, ConnectRefusal::BadAuthenticationMethod);
            };
            let data = connect.properties.authentication_data.take().unwrap_or_default();
            let authenticating = Authenticating { connect, method: detach(&method), exchange };
            return self.authentication_step(link, authenticating, &data, now);
        }
        self.claim(link, connect, None, credentials, now)
    }

    /// The client's AUTH during an exchange that began with its CONNECT.
    pub fn continue_authentication(&mut self, link: &Rc<Link>, packet: Packet, now: Instant) -> Result<ConnectProgress, CloseReason> {
        let Some(authenticating) = self.authenticating.remove(&link.conn_id) else { return Ok(ConnectProgress::Refused) };
        match packet {
            Packet::Auth(auth)
                if auth.reason == ReasonCode::CONTINUE_AUTHENTICATION
                    && auth.properties.authentication_method.as_ref() == Some(&authenticating.method) =>
            {
                let data = auth.properties.authentication_data.unwrap_or_default();
                Ok(self.authentication_step(link, authenticating, &data, now))
            }
            Packet::Disconnect(_) => {
                link.close();
                Ok(ConnectProgress::Refused)
            }
            _ => Err(CloseReason::NotAuthWhileAuthenticating),
        }
    }

    fn authentication_step(&mut self, link: &Rc<Link>, mut authenticating: Authenticating, data: &[u8], now: Instant) -> ConnectProgress {
        let version = authenticating.connect.version;
        match authenticating.exchange.step(data) {
            AuthStep::Continue(reply) => {
                let properties = Properties {
                    authentication_method: Some(authenticating.method.clone()),
                    authentication_data: Some(reply),
                    ..Properties::default()
                };
                write_packet(link, version, &Packet::Auth(Auth { reason: ReasonCode::CONTINUE_AUTHENTICATION, properties }));
                self.authenticating.insert(link.conn_id, authenticating);
                ConnectProgress::Authenticating
            }
            AuthStep::Success(data) => {
                let authenticated = Authenticated { method: authenticating.method, data };
                self.claim(link, authenticating.connect, Some(authenticated), None, now)
            }
            AuthStep::Fail(refusal) => self.refuse(link, version, refusal),
        }
    }

    fn claim(
        &mut self,
        link: &Rc<Link>,
        connect: Box<Connect>,
        authenticated: Option<Authenticated>,
        credentials: Option<Result<(), ConnectRefusal>>,
        now: Instant,
    ) -> ConnectProgress {
        let version = connect.version;
        if let Err(refusal) = self.admit(&connect, authenticated.is_some(), credentials) {
            return self.refuse(link, version, refusal);
        }
        let client_id_assigned = connect.client_id.is_empty();
        let client_id = if client_id_assigned {
            // Unguessable and unique (MQTT-3.1.3-6): not derived from anything a client
            // could predict or another connection could share.
            Bytes::from(format!("ringmq-{:032x}", rand::random::<u128>()))
        } else {
            detach(&connect.client_id)
        };
        let clean_start = connect.clean_start;
        let conn = link.conn_id;
        self.pending_connects.insert(
            conn,
            PendingConnect {
                link: link.clone(),
                connect,
                client_id: client_id.clone(),
                client_id_assigned,
                authenticated,
                deferred_eviction: None,
            },
        );
        let home = home_shard(&client_id, self.shard_count);
        self.send(home, MeshMessage::Claim { client_id, conn, clean_start }, now);
        ConnectProgress::Claimed
    }

    /// Home shard: `conn` claims `client_id`. Claims are answered in arrival order, so two
    /// racing CONNECTs end with the later one owning the id and the earlier one evicted.
    fn on_claim(&mut self, client_id: Bytes, conn: ConnId, clean_start: bool, now: Instant) {
        match self.registry.insert(client_id.clone(), conn) {
            None => self.send(conn.shard(), MeshMessage::Granted { conn }, now),
            Some(previous) => self.send(previous.shard(), MeshMessage::Evict { client_id, previous, next: conn, clean_start }, now),
        }
    }

    /// This shard holds (or is about to hold) `previous`'s session: close that connection
    /// (publishing its will, as for any close without DISCONNECT) and hand the session,
    /// unless either side asked for a clean one, to `next`'s shard with our stream cut.
    ///
    /// A session moving to another shard stays here, still receiving, until every other
    /// shard has applied a receive-all hold for `next`'s shard: from then on that shard
    /// gets every publish, so whatever this shard has not seen when it lets go is there
    /// for `catch_up` even before the session's own filters are announced from there.
    fn on_evict(&mut self, client_id: Bytes, previous: ConnId, next: ConnId, clean_start: bool, now: Instant) {
        // Interleaving: home granted `previous` via an eviction elsewhere, then got `next`'s
        // claim; the Handoff for `previous` (from the third shard) can arrive here after this
        // Evict (from home). Finish `previous` first, then evict it.
        if let Some(pending) = self.pending_connects.get_mut(&previous) {
            pending.deferred_eviction = Some((next, clean_start));
            return;
        }
        let key = match self.client_index.get(&client_id).copied() {
            Some(key) if self.client(key).conn_id == previous => key,
            _ => {
                let cut = self.seen.clone().into_boxed_slice();
                self.send(next.shard(), MeshMessage::Handoff { conn: next, session: None, cut, receive_all_held: false }, now);
                return;
            }
        };
        self.counters.takeovers += 1;
        let client = self.client(key);
        let continued = !clean_start && client.session_expiry != SessionExpiry::WithConnection;
        let version = client.version;
        let will = client.will.take();
        // A delayed will still waiting: a new connection to a continued session cancels
        // it; a session ending now sends it.
        let pending_will = client.pending_will.take();
        if let Some(link) = client.link.take() {
            close_with_reason(&link, version, ReasonCode::SESSION_TAKEN_OVER);
            // The old connection closed without DISCONNECT: its will goes out, unless it
            // has a delay and the session goes on with the new connection (5.0 3.1.3.2.2).
            if let Some(will) = will
                && (will_delay(&will).is_zero() || !continued)
            {
                self.publish_will(*will, client_id.clone(), now);
            }
        }
        if let Some(pending) = pending_will
            && !continued
        {
            let (_, will) = *pending;
            self.publish_will(will, client_id.clone(), now);
        }
        if !continued || next.shard() == self.id {
            self.hand_over(key, next, continued, None, now);
            return;
        }
        // Every peer answers with its position; all but the destination also hold. The
        // destination's answer matters too: its own old publishes sit in its replay log.
        let request = self.barriers.new_request();
        let destination = next.shard();
        self.interest.hold_receive_all(destination);
        self.broadcast(|| MeshMessage::ReceiveAll { shard: destination, request }, now);
        self.expect_answers_from_all_peers(request);
        // `next` is on another shard, so at least that shard answers: `applied` finishes.
        self.moving.insert(request, MovingSession { client_id, previous, next });
    }

    /// Every other shard holds `next`'s shard on receive-all: let the session go.
    fn finish_move(&mut self, request: u64, positions: Vec<u64>, now: Instant) {
        let Some(moving) = self.moving.remove(&request) else { return };
        match self.client_index.get(&moving.client_id).copied() {
            Some(key) if self.client(key).conn_id == moving.previous => self.hand_over(key, moving.next, true, Some(&positions), now),
            _ => {
                debug_assert!(false, "a moving session stays until it is handed over");
                let cut = self.seen.clone().into_boxed_slice();
                let handoff = MeshMessage::Handoff { conn: moving.next, session: None, cut, receive_all_held: true };
                self.send(moving.next.shard(), handoff, now);
            }
        }
    }

    /// Removes the client and sends its session (if `continued`) to `next`'s shard with the
    /// cut: where this shard stood in every stream, or where a peer stood when it answered
    /// the receive-all request (`held_at`), whichever is later. The later one matters: a
    /// peer's publishes this shard never needed leave its `seen` behind, and the replay
    /// log over there may hold older ones that match the session's filters.
    fn hand_over(&mut self, key: ClientKey, next: ConnId, continued: bool, held_at: Option<&[u64]>, now: Instant) {
        let client = self.remove_client(key, now);
        let mut cut: StreamCut = self.seen.clone().into_boxed_slice();
        if let Some(positions) = held_at {
            // A peer's publishes up to its position that matched this session were sent
            // here (this shard announced its filters) and arrived before its answer.
            for (position, &held) in cut.iter_mut().zip(positions) {
                *position = (*position).max(held);
            }
        }
        let mut handed = None;
        if continued {
            // A session that arrived here from a shard further ahead in some stream
            // already holds everything up to its own cut there: hand on the later of
            // the two positions, or the next shard would replay those messages again.
            if let Some(skip_until) = &client.skip_until {
                for (position, already_held) in cut.iter_mut().zip(skip_until.iter()) {
                    *position = (*position).max(*already_held);
                }
            }
            handed = Some(Box::new(client.session));
        } else {
            let mut session = client.session;
            self.hand_shared_to_other_members(&mut session, now);
        }
        let handoff = MeshMessage::Handoff { conn: next, session: handed, cut, receive_all_held: held_at.is_some() };
        self.send(next.shard(), handoff, now);
    }

    /// The claim for `conn` is settled: install the session (handed over or new), answer
    /// CONNACK, re-send what was in flight, and catch up on publishes the old owner had not
    /// yet seen when it let go.
    fn complete_connect(
        &mut self,
        conn: ConnId,
        handed: Option<Box<Session>>,
        cut: Option<StreamCut>,
        receive_all_held: bool,
        now: Instant,
    ) {
        let Some(pending) = self.pending_connects.remove(&conn) else {
            debug_assert!(false, "every claim is answered exactly once");
            return;
        };
        let PendingConnect { link, connect, client_id, client_id_assigned, authenticated, deferred_eviction } = pending;
        let version = connect.version;
        let session_present = handed.is_some();
        let mut session = match handed {
            Some(session) => *session,
            None => Session::new(client_id.clone(), self.limits.session),
        };
        let client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        session.set_inflight_max(self.limits.session.inflight_max.min(client_receive_maximum));
        let mut keep_alive_s = connect.keep_alive_s;
        let mut server_keep_alive = None;
        if version.is_v5()
            && let Some(max) = self.limits.max_keep_alive_s
            && (keep_alive_s == 0 || keep_alive_s > max)
        {
            keep_alive_s = max;
            server_keep_alive = Some(max);
        }
        let mut link_alive = link.state() == LinkState::Connecting;
        let session_expiry = SessionExpiry::from_connect(&connect);
        let max_packet_size_out = if version.is_v5() { connect.properties.maximum_packet_size.unwrap_or(u32::MAX) } else { u32::MAX };
        let key = self.insert_client(
            Client {
                session,
                link: link_alive.then(|| link.clone()),
                conn_id: conn,
                version,
                keep_alive: (keep_alive_s > 0).then(|| Duration::from_secs(u64::from(keep_alive_s))),
                last_activity: now,
                will: connect.will.map(|will| {
                    Box::new(Will {
                        topic: detach(&will.topic),
                        payload: detach(&will.payload),
                        qos: will.qos,
                        retain: will.retain,
                        properties: will.properties.detached(crate::protocol::PropertyContext::Will),
                    })
                }),
                session_expiry,
                expires_at: None,
                max_packet_size_out,
                topic_aliases: HashMap::new(),
                pending_will: None,
                aliases_out: OutboundAliases {
                    maximum: if version.is_v5() { connect.properties.topic_alias_maximum.unwrap_or(0) } else { 0 },
                    assigned: HashMap::new(),
                },
                auth_method: authenticated.as_ref().map(|authenticated| authenticated.method.clone()),
                reauthentication: None,
                skip_until: None,
                stalled_since: None,
                paused_publishers: Vec::new(),
                retained_backlog: None,
            },
            now,
        );
        if receive_all_held {
            // The session's filters are announced (queued above); every peer applies that
            // before this release, so none of them routes past the session meanwhile.
            self.broadcast(|| MeshMessage::ReceiveAllDone, now);
        }
        if link_alive {
            let mut properties = Properties::default();
            if version.is_v5() {
                // What this server offers, where it differs from the protocol's defaults.
                if client_id_assigned {
                    properties.assigned_client_identifier = Some(client_id.clone());
                }
                properties.receive_maximum = (self.limits.receive_maximum != u16::MAX).then_some(self.limits.receive_maximum);
                properties.maximum_packet_size = Some(self.limits.max_packet_size_bytes);
                properties.server_keep_alive = server_keep_alive;
                properties.topic_alias_maximum = (self.limits.topic_alias_maximum > 0).then_some(self.limits.topic_alias_maximum);
                properties.maximum_qos = (self.limits.max_qos < QoS::ExactlyOnce).then_some(self.limits.max_qos as u8);
                properties.retain_available = (!self.limits.retain_available).then_some(0);
                properties.wildcard_subscription_available = (!self.limits.wildcard_subscriptions).then_some(0);
                properties.subscription_identifier_available = (!self.limits.subscription_identifiers).then_some(0);
                properties.shared_subscription_available = (!self.limits.shared_subscriptions).then_some(0);
                if let Some(authenticated) = authenticated {
                    properties.authentication_method = Some(authenticated.method);
                    properties.authentication_data = authenticated.data;
                }
            }
            let connack = ConnAck { session_present, code: 0, properties };
            link_alive = link.write_packet(version, &Packet::ConnAck(connack));
        }
        if !link_alive {
            // Not even the CONNACK fits the client's Maximum Packet Size: nothing can be sent.
            link.close();
        } else {
            link.open(key);
            let mut outgoing = std::mem::take(&mut self.outgoing_scratch);
            let client = self.client(key);
            client.session.resume(now, &mut outgoing);
            for packet in outgoing.drain(..) {
                write_outgoing(&link, version, &packet, now, &mut client.aliases_out);
            }
            self.outgoing_scratch = outgoing;
        }
        if let Some(cut) = cut {
            self.catch_up(key, cut, now);
        }
        if !link_alive {
            self.client_lost(key, now);
        }
        if let Some((next, clean_start)) = deferred_eviction {
            self.on_evict(client_id, conn, next, clean_start, now);
        }
    }

    /// Delivers to a handed-over session the publishes this shard applied after the old
    /// owner's cut, and skips the ones at or before it that are still on their way here.
    fn catch_up(&mut self, key: ClientKey, cut: StreamCut, now: Instant) {
        let (entries, gap) = self.recent.since(&cut);
        let mut missed: Vec<(Arc<Message>, QoS, bool, Vec<u32>)> = Vec::new();
        let client = self.clients[key.0 as usize].as_ref().expect("just inserted");
        for entry in entries {
            let message = &entry.message;
            let matching = client.session.subscriptions.iter().filter(|(filter, _)| filter_matches(filter, &message.topic));
            let own_message = message.publisher.as_ref() == Some(client.session.client_id());
            if let Some(delivery) = merge_matching(matching.map(|(_, subscription)| subscription), own_message) {
                let retain = delivery.retain_as_published && message.retain;
                missed.push((message.clone(), delivery.granted.min(message.qos), retain, delivery.subscription_ids));
            }
        }
        if gap {
            self.counters.takeover_replay_gaps += 1;
            tracing::warn!(shard = self.id.0, "session handoff could not replay every publish; raise the recent-publish log");
        }
        for (message, qos, retain, subscription_ids) in missed {
            self.deliver_to(key, &message, CopyFor { qos, retain, subscription_ids, shared: None }, None, now);
        }
        if cut.iter().zip(&self.seen).any(|(cut_at, seen_at)| cut_at > seen_at) {
            self.client(key).skip_until = Some(cut);
        }
    }

    /// The connection of `key` is gone (or was never opened): publish the will, and end
    /// the session if it lives only as long as its connection.
    fn client_lost(&mut self, key: ClientKey, now: Instant) {
        self.client(key).link = None;
        self.settle_flow_of_leaving_client(key, true, now);
        let client = self.client(key);
        let will = client.will.take();
        let publisher = client.session.client_id().clone();
        let expiry = client.session_expiry;
        if let SessionExpiry::After(after) = expiry {
            client.expires_at = Some(now + after);
        }
        if let Some(will) = will
            && self.accepting
        {
            // Sent after its delay or when the session ends, whichever comes first.
            let delay = will_delay(&will);
            let due = match expiry {
                SessionExpiry::WithConnection => now,
                SessionExpiry::After(after) => now + delay.min(after),
                SessionExpiry::Never => now + delay,
            };
            if due <= now {
                self.publish_will(*will, publisher, now);
            } else {
                self.client(key).pending_will = Some(Box::new((due, *will)));
            }
        }
        if expiry == SessionExpiry::WithConnection {
            self.end_session(key, now);
        }
    }

    /// Removes a session whose time is up and tells its home shard.
    fn end_session(&mut self, key: ClientKey, now: Instant) {
        let mut client = self.remove_client(key, now);
        self.hand_shared_to_other_members(&mut client.session, now);
        let conn = client.conn_id;
        let client_id = client.session.client_id().clone();
        if let Some(pending) = client.pending_will.take() {
            let (_, will) = *pending;
            self.publish_will(will, client_id.clone(), now);
        }
        let home = home_shard(&client_id, self.shard_count);
        self.send(home, MeshMessage::Released { client_id, conn }, now);
    }

    /// The IO layer's last word on a link: the socket closed, the peer misbehaved
    /// (`error`), or the link was closed by the shard. Idempotent.
    pub fn connection_ended(&mut self, link: &Link, error: Option<&CloseReason>, now: Instant) {
        self.authenticating.remove(&link.conn_id);
        if let Some(error) = error {
            self.counters.protocol_errors += 1;
            tracing::debug!(shard = self.id.0, %error, "closing connection");
            if let Some(key) = self.client_of(link) {
                let version = self.client(key).version;
                close_with_reason(link, version, error.reason_code());
            }
        }
        link.close();
        if let Some(key) = self.client_of(link)
            && self.client(key).link.is_some()
        {
            self.client_lost(key, now);
        }
    }

    // ----- packets -----

    /// One packet from an open link.
    pub fn handle_packet(&mut self, link: &Link, packet: Packet, now: Instant) -> Result<(), CloseReason> {
        let Some(key) = self.client_of(link) else {
            // Taken over or timed out while this packet was in the socket buffer.
            return Ok(());
        };
        let client = self.client(key);
        client.last_activity = now;
        let version = client.version;
        match packet {
            Packet::Publish(publish) => self.handle_publish(key, link, publish, now)?,
            Packet::PubAck(ack) => {
                if self.client(key).session.on_puback(ack.packet_id) == AckOutcome::WrongKind {
                    return Err(CloseReason::WrongAcknowledgement("PUBACK"));
                }
                self.fill_window(key, link, now);
            }
            Packet::PubRec(ack) => {
                let refused = ack.reason.is_error();
                match self.client(key).session.on_pubrec(ack.packet_id, refused) {
                    AckOutcome::WrongKind => return Err(CloseReason::WrongAcknowledgement("PUBREC")),
                    // The client refused the message: the flow ends here (5.0 4.3.3).
                    AckOutcome::Done if refused => self.fill_window(key, link, now),
                    AckOutcome::Done => write_packet(link, version, &Packet::PubRel(Ack::new(ack.packet_id))),
                    AckOutcome::Unknown if refused => {}
                    AckOutcome::Unknown => write_packet(
                        link,
                        version,
                        &Packet::PubRel(Ack::with_reason(ack.packet_id, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)),
                    ),
                }
            }
            Packet::PubRel(ack) => {
                let known = self.client(key).session.release_qos2(ack.packet_id);
                let reason = if known { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
                write_packet(link, version, &Packet::PubComp(Ack::with_reason(ack.packet_id, reason)));
            }
            Packet::PubComp(ack) => {
                if self.client(key).session.on_pubcomp(ack.packet_id) == AckOutcome::WrongKind {
                    return Err(CloseReason::WrongAcknowledgement("PUBCOMP"));
                }
                self.fill_window(key, link, now);
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(key, link, subscribe, now)?,
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(key, link, unsubscribe, now)?,
            Packet::PingReq => write_packet(link, version, &Packet::PingResp),
            Packet::Disconnect(disconnect) => {
                let client = self.client(key);
                if let Some(seconds) = disconnect.properties.session_expiry_interval {
                    if client.session_expiry == SessionExpiry::WithConnection && seconds != 0 {
                        return Err(CloseReason::SessionExpiryOnDisconnect);
                    }
                    client.session_expiry = SessionExpiry::from_interval(seconds);
                }
                if disconnect.reason != ReasonCode::DISCONNECT_WITH_WILL {
                    client.will = None;
                }
                link.close();
                self.client_lost(key, now);
            }
            Packet::Connect(_) => return Err(CloseReason::SecondConnect),
            Packet::Auth(auth) => self.reauthenticate(key, link, auth)?,
            server_only @ (Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp) => {
                return Err(CloseReason::ServerOnlyPacket(server_only.name()));
            }
        }
        Ok(())
    }

    /// Re-authentication (5.0 4.12.1): AUTH 0x19 under the method the connection used,
    /// then AUTH 0x18 steps; success is AUTH 0x00, failure a DISCONNECT 0x87.
    fn reauthenticate(&mut self, key: ClientKey, link: &Link, auth: Auth) -> Result<(), CloseReason> {
        let client = self.client(key);
        let version = client.version;
        let Some(method) = client.auth_method.clone() else { return Err(CloseReason::UnexpectedAuth) };
        if auth.properties.authentication_method.as_ref() != Some(&method) {
            return Err(CloseReason::UnexpectedAuth);
        }
        let mut exchange = match auth.reason {
            ReasonCode::REAUTHENTICATE => self.auth.start_exchange(&method).ok_or(CloseReason::UnexpectedAuth)?,
            ReasonCode::CONTINUE_AUTHENTICATION => self.client(key).reauthentication.take().ok_or(CloseReason::UnexpectedAuth)?,
            _ => return Err(CloseReason::UnexpectedAuth),
        };
        let data = auth.properties.authentication_data.unwrap_or_default();
        let (reason, reply) = match exchange.step(&data) {
            AuthStep::Continue(reply) => {
                self.client(key).reauthentication = Some(exchange);
                (ReasonCode::CONTINUE_AUTHENTICATION, Some(reply))
            }
            AuthStep::Success(reply) => (ReasonCode::SUCCESS, reply),
            AuthStep::Fail(_) => {
                close_with_reason(link, version, ReasonCode::NOT_AUTHORIZED);
                return Ok(());
            }
        };
        let properties = Properties { authentication_method: Some(method), authentication_data: reply, ..Properties::default() };
        write_packet(link, version, &Packet::Auth(Auth { reason, properties }));
        Ok(())
    }

    fn fill_window(&mut self, key: ClientKey, link: &Link, now: Instant) {
        let mut outgoing = std::mem::take(&mut self.outgoing_scratch);
        let delivered = {
            let client = self.clients[key.0 as usize].as_mut().expect("client keys in use point at live slots");
            client.session.fill_window(now, &mut outgoing);
            outgoing.len() as u64
        };
        self.counters.messages_delivered += delivered;
        let client = self.clients[key.0 as usize].as_mut().expect("client keys in use point at live slots");
        let version = client.version;
        for packet in outgoing.drain(..) {
            write_outgoing(link, version, &packet, now, &mut client.aliases_out);
        }
        self.outgoing_scratch = outgoing;
        self.release_publishers_if_drained(key, now);
        self.drain_retained(key, now);
    }

    fn handle_publish(&mut self, key: ClientKey, link: &Link, mut publish: Publish, now: Instant) -> Result<(), CloseReason> {
        let alias_maximum = self.limits.topic_alias_maximum;
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias == 0 || alias > alias_maximum {
                return Err(CloseReason::TopicAlias);
            }
            let aliases = &mut self.client(key).topic_aliases;
            if publish.topic.is_empty() {
                publish.topic = aliases.get(&alias).cloned().ok_or(CloseReason::UnknownTopicAlias)?;
            } else {
                // Aliases live as long as the connection: keep the topic, not the read block.
                aliases.insert(alias, detach(&publish.topic));
            }
        }
        validate_topic_name(&publish.topic).map_err(CloseReason::TopicName)?;
        if publish.qos > self.limits.max_qos {
            return Err(CloseReason::QosNotSupported);
        }
        if publish.retain && !self.limits.retain_available {
            return Err(CloseReason::RetainNotSupported);
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            // Only the server sends them (5.0 3.3.4).
            return Err(CloseReason::SubscriptionIdentifierFromClient);
        }
        self.counters.publishes_received += 1;
        let version = self.client(key).version;
        // Refusals that leave the connection open where the protocol can say so: a 5.0
        // QoS 1/2 PUBLISH gets the reason in its PUBACK/PUBREC.
        let refusal = if publish.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&publish.payload).is_err() {
            // The publisher said UTF-8 and it is not (5.0 3.3.2.3.2).
            Some((ReasonCode::PAYLOAD_FORMAT_INVALID, Some(CloseReason::PayloadFormatInvalid)))
        } else if level_count(&publish.topic) > self.limits.topic_levels_max {
            Some((ReasonCode::TOPIC_NAME_INVALID, Some(CloseReason::TopicName(TopicError::TooManyLevels))))
        } else if is_broker_topic(&publish.topic) {
            // `$SYS/` is the broker's: dropped, as Mosquitto does; 5.0 hears why.
            self.counters.broker_topic_publishes_dropped += 1;
            Some((ReasonCode::NOT_AUTHORIZED, None))
        } else {
            None
        };
        if let Some((reason, close)) = refusal {
            let reason = if version.is_v5() { reason } else { ReasonCode::SUCCESS };
            return match (publish.qos, publish.packet_id, close) {
                (QoS::AtLeastOnce, Some(id), close) if version.is_v5() || close.is_none() => {
                    write_packet(link, version, &Packet::PubAck(Ack::with_reason(id, reason)));
                    Ok(())
                }
                (QoS::ExactlyOnce, Some(id), close) if version.is_v5() || close.is_none() => {
                    write_packet(link, version, &Packet::PubRec(Ack::with_reason(id, reason)));
                    Ok(())
                }
                (_, _, Some(close)) => Err(close),
                (_, _, None) => Ok(()),
            };
        }
        let publisher = self.client(key).session.client_id().clone();
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        let receive_maximum = usize::from(self.limits.receive_maximum);
        let is_new = match (qos, packet_id) {
            (QoS::ExactlyOnce, Some(id)) => {
                let session = &mut self.client(key).session;
                let is_new = session.receive_qos2(id);
                if is_new && session.incoming_qos2_len() > receive_maximum {
                    return Err(CloseReason::ReceiveMaximumExceeded);
                }
                is_new
            }
            _ => true,
        };
        // A QoS 2 resend was routed the first time; only a new message can find nobody.
        let mut subscribed = true;
        if is_new {
            let properties = publish.properties;
            let message = Message {
                expires_at: properties.message_expiry_interval.map(|seconds| now + Duration::from_secs(u64::from(seconds))),
                topic: publish.topic,
                payload: publish.payload,
                qos,
                retain: publish.retain,
                properties: properties.into(),
                publisher: Some(publisher),
            };
            // A retained message outlives this delivery: store it detached from the read block.
            let message = if message.retain { message.detached() } else { message };
            subscribed = self.route(Arc::new(message), now);
        }
        let reason = if subscribed { ReasonCode::SUCCESS } else { ReasonCode::NO_MATCHING_SUBSCRIBERS };
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => write_packet(link, version, &Packet::PubAck(Ack::with_reason(id, reason))),
            (QoS::ExactlyOnce, Some(id)) => write_packet(link, version, &Packet::PubRec(Ack::with_reason(id, reason))),
            _ => {}
        }
        Ok(())
    }

    fn handle_subscribe(&mut self, key: ClientKey, link: &Link, subscribe: Subscribe, now: Instant) -> Result<(), CloseReason> {
        let version = self.client(key).version;
        let identifier = subscribe.properties.subscription_identifiers.first().copied();
        if identifier.is_some() && !self.limits.subscription_identifiers {
            return Err(CloseReason::SubscriptionIdentifiersNotSupported);
        }
        let request = self.barriers.new_request();
        // Requests whose announcements must be applied everywhere before the SUBACK.
        let mut needs = vec![request];
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained: Vec<RetainedCopy> = Vec::new();
        for (filter, options) in subscribe.filters {
            if validate_topic_filter(&filter).is_err() || level_count(&filter) > self.limits.topic_levels_max {
                codes.push(if version.is_v5() { ReasonCode::TOPIC_FILTER_INVALID } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            let shared = match shared::parse_owned(&filter) {
                None => None,
                Some(Ok(parts)) => Some(parts),
                Some(Err(_)) => {
                    codes.push(if version.is_v5() { ReasonCode::TOPIC_FILTER_INVALID } else { ReasonCode::UNSPECIFIED_ERROR });
                    continue;
                }
            };
            if shared.is_some() && !self.limits.shared_subscriptions {
                codes.push(if version.is_v5() { ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            if shared.is_some() && options.no_local {
                // MQTT 5.0 3.8.3.1: no-local on a shared subscription is a protocol error.
                return Err(CloseReason::NoLocalOnSharedSubscription);
            }
            let matched_filter = shared.as_ref().map_or(&filter[..], |(_, inner)| &inner[..]);
            if !self.limits.wildcard_subscriptions && matched_filter.iter().any(|&b| b == b'+' || b == b'#') {
                codes.push(if version.is_v5() { ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            if !self.auth.may_subscribe(&filter) {
                codes.push(if version.is_v5() { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            // Granted QoS never exceeds the server's maximum.
            let options = SubscriptionOptions { qos: options.qos.min(self.limits.max_qos), ..options };
            let subscription = Subscription { options, identifier };
            if let Some((group, inner)) = shared {
                // Retained messages are not sent to a shared subscription (5.0 4.8.2).
                self.client(key).session.subscriptions.insert(detach(&filter), subscription);
                let client_id = self.client(key).session.client_id().clone();
                self.broadcast_share_join(group, inner, client_id, options.qos, request, now);
                codes.push(ReasonCode(options.qos as u8));
                continue;
            }
            self.subscriptions.insert(&filter, key, subscription);
            let existed = self.client(key).session.subscriptions.insert(detach(&filter), subscription).is_some();
            if !existed {
                needs.push(self.add_interest(&filter, request, Some(now), now));
            }
            let send_retained = match options.retain_handling {
                RetainHandling::SendOnSubscribe => true,
                RetainHandling::SendIfNewSubscription => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                self.retained.for_each_match(&filter, |message| {
                    retained.push(RetainedCopy { message: message.clone(), qos: options.qos.min(message.qos), identifier })
                });
            }
            codes.push(ReasonCode(options.qos as u8));
        }
        let suback = SubAck { packet_id: subscribe.packet_id, properties: Properties::default(), codes };
        self.answer_when_applied(needs, link, version, Packet::SubAck(suback), retained, now);
        Ok(())
    }

    fn handle_unsubscribe(&mut self, key: ClientKey, link: &Link, unsubscribe: Unsubscribe, now: Instant) -> Result<(), CloseReason> {
        let version = self.client(key).version;
        let request = self.barriers.new_request();
        let mut codes = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let inner = match shared::parse_owned(filter) {
                Some(Ok((_, inner))) => Ok(inner),
                Some(Err(error)) => Err(error),
                None => validate_topic_filter(filter).map(|()| filter.clone()),
            };
            if let Err(error) = inner {
                // 5.0 answers per filter; 3.1.1 has no code for it, so the connection ends.
                if !version.is_v5() {
                    return Err(CloseReason::TopicFilter(error));
                }
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let existed = self.client(key).session.subscriptions.remove(filter).is_some();
            match shared::parse_owned(filter) {
                Some(Ok((group, inner))) if existed => {
                    let client_id = self.client(key).session.client_id().clone();
                    self.broadcast_share_leave(group, inner, client_id, request, now);
                }
                Some(_) => {}
                None => {
                    self.subscriptions.remove(filter, &key);
                    if existed {
                        self.interest.remove_local(filter);
                    }
                }
            }
            codes.push(if existed { ReasonCode::SUCCESS } else { ReasonCode::NO_SUBSCRIPTION_EXISTED });
        }
        let unsuback = UnsubAck { packet_id: unsubscribe.packet_id, properties: Properties::default(), codes };
        self.answer_when_applied(vec![request], link, version, Packet::UnsubAck(unsuback), Vec::new(), now);
        Ok(())
    }

    // ----- routing -----

    fn publish_will(&mut self, will: Will, publisher: Bytes, now: Instant) {
        if validate_topic_name(&will.topic).is_err() {
            return;
        }
        self.counters.wills_published += 1;
        let expires_at = will.properties.message_expiry_interval.map(|seconds| now + Duration::from_secs(u64::from(seconds)));
        let mut properties = will.properties;
        // The delay is the will's, not the message's: a PUBLISH may not carry it.
        properties.will_delay_interval = None;
        let message = Message {
            expires_at,
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: properties.into(),
            publisher: Some(publisher),
        };
        self.route(Arc::new(message), now);
    }

    /// A message published on this shard: applied here, and sent to the peers that may
    /// deliver it (every peer for a retained message or with `--routing broadcast`).
    /// Returns false when nobody anywhere subscribes to it.
    fn route(&mut self, message: Arc<Message>, now: Instant) -> bool {
        self.publish_sequence += 1;
        let sequence = self.publish_sequence;
        self.seen[self.id.0] = sequence;
        let shared = self.shared.choose(&message.topic);
        let mut targets = std::mem::take(&mut self.route_targets);
        targets.fill(false);
        let mut subscribed = self.interest.mark_targets(&message.topic, &mut targets);
        for target in &shared {
            targets[target.shard.0] = true;
        }
        subscribed |= !shared.is_empty();
        if message.retain || self.limits.routing == Routing::Broadcast {
            targets.fill(true);
        }
        let here = self.id.0;
        let mut sent_to = if self.shard_count > 128 { u128::MAX } else { 0 };
        for (peer, _) in targets.iter().enumerate().filter(|&(peer, &target)| target && peer != here) {
            self.send(ShardId(peer), MeshMessage::Publish { sequence, message: message.clone(), shared: shared.clone() }, now);
            if peer < 128 {
                sent_to |= 1 << peer;
            }
        }
        self.route_targets = targets;
        subscribed | self.apply_publish(self.id, sequence, &message, &shared, sent_to, now)
    }

    /// Updates the retained replica and delivers to the local subscribers: each client
    /// once, at the highest QoS any of its matching subscriptions granted. True if any
    /// local subscription matched.
    /// `sent_to`: for this shard's own publishes, the peers `route` sent it to.
    fn apply_publish(
        &mut self,
        source: ShardId,
        sequence: u64,
        message: &Arc<Message>,
        shared: &[SharedTarget],
        sent_to: u128,
        now: Instant,
    ) -> bool {
        if message.retain {
            if message.payload.is_empty() {
                self.retained.remove(&message.topic);
            } else {
                self.retained.insert(&message.topic, message.clone());
            }
        }
        if self.shard_count > 1 {
            self.recent.push(RecentPublish { source, sequence, message: message.clone(), at: now, sent_to });
        }
        let mut matches = std::mem::take(&mut self.match_scratch);
        self.subscriptions.for_each_match(&message.topic, |key, options| matches.push((*key, *options)));
        matches.sort_unstable_by_key(|entry| entry.0);
        let matched = !matches.is_empty();
        for same_client in matches.chunk_by(|a, b| a.0 == b.0) {
            let key = same_client[0].0;
            let own_message = self.is_publisher(key, message);
            if let Some(delivery) = merge_matching(same_client.iter().map(|(_, subscription)| subscription), own_message) {
                let retain = delivery.retain_as_published && message.retain;
                let qos = delivery.granted.min(message.qos);
                let copy = CopyFor { qos, retain, subscription_ids: delivery.subscription_ids, shared: None };
                self.deliver_to(key, message, copy, Some((source, sequence)), now);
            }
        }
        matches.clear();
        self.match_scratch = matches;
        let here = self.id;
        for target in shared.iter().filter(|target| target.shard == here) {
            self.deliver_shared(target, message, Some((source, sequence)), true, now);
        }
        matched
    }

    /// The member chosen at the origin, or, if it has left this shard meanwhile (moved or
    /// unsubscribed), another member of the group here; with none here, once, the group's
    /// next member wherever it is (`may_forward`). Only then is the message counted as
    /// missed for that group.
    fn deliver_shared(
        &mut self,
        target: &SharedTarget,
        message: &Arc<Message>,
        origin: Option<(ShardId, u64)>,
        may_forward: bool,
        now: Instant,
    ) {
        let member = match self.client_index.get(&target.client_id) {
            Some(&key) if self.holds_shared(key, target) => Some((key, target.granted)),
            _ => self
                .shared
                .local_member(&target.group, &target.filter, self.id, &target.client_id)
                .and_then(|(client_id, granted)| self.client_index.get(&client_id).map(|&key| (key, granted))),
        };
        match member {
            Some((key, granted)) => {
                let qos = granted.min(message.qos);
                // Only a QoS 1/2 copy can be left unacknowledged and go to another member.
                let shared =
                    (qos != QoS::AtMostOnce).then(|| Box::new(SharedRoute { group: target.group.clone(), filter: target.filter.clone() }));
                self.deliver_to(key, message, CopyFor { qos, retain: false, subscription_ids: Vec::new(), shared }, origin, now)
            }
            None => match self.shared.pick(&target.group, &target.filter).filter(|next| may_forward && next.shard != self.id) {
                Some(next) => {
                    self.counters.shared_forwarded += 1;
                    let forward = MeshMessage::SharedRedeliver { target: next.clone(), message: message.clone(), forwarded: true };
                    self.send(next.shard, forward, now);
                }
                None => self.counters.shared_misses += 1,
            },
        }
    }

    /// An ending session's unacknowledged shared-subscription messages go to another
    /// member of the same group, wherever it is (the session has left its groups already).
    fn hand_shared_to_other_members(&mut self, session: &mut Session, now: Instant) {
        for (message, _, route) in session.take_unfinished_shared() {
            let Some(target) = self.shared.pick(&route.group, &route.filter) else {
                self.counters.shared_misses += 1;
                continue;
            };
            self.counters.shared_redelivered += 1;
            if target.shard == self.id {
                self.deliver_shared(&target, &message, None, true, now);
            } else {
                self.send(target.shard, MeshMessage::SharedRedeliver { target, message, forwarded: false }, now);
            }
        }
    }

    /// Joins here and tells every peer; a non-zero `request` collects their answers.
    fn broadcast_share_join(&mut self, group: Bytes, filter: Bytes, client_id: Bytes, granted: QoS, request: u64, now: Instant) {
        self.broadcast(
            || MeshMessage::ShareJoin { group: group.clone(), filter: filter.clone(), client_id: client_id.clone(), granted, request },
            now,
        );
        self.expect_answers_from_all_peers(request);
        self.shared.join(group, filter, self.id, client_id, granted);
    }

    fn broadcast_share_leave(&mut self, group: Bytes, filter: Bytes, client_id: Bytes, request: u64, now: Instant) {
        self.broadcast(
            || MeshMessage::ShareLeave { group: group.clone(), filter: filter.clone(), client_id: client_id.clone(), request },
            now,
        );
        self.expect_answers_from_all_peers(request);
        self.shared.leave(&group, &filter, self.id, &client_id);
    }

    fn expect_answers_from_all_peers(&mut self, request: u64) {
        if request != 0 {
            self.barriers.expect(request, self.shard_count - 1);
        }
    }

    /// Counts a new local subscription to `filter`; the first one here is announced to
    /// every peer under `request`. Returns the request whose answers make it known everywhere.
    /// `since`: when the client subscribed, for a new subscription (not a session moving in).
    fn add_interest(&mut self, filter: &Bytes, request: u64, since: Option<Instant>, now: Instant) -> u64 {
        match self.interest.add_local(filter) {
            LocalAdd::AnnouncedBy(earlier) => earlier,
            LocalAdd::Announce => {
                let filter = detach(filter);
                self.broadcast(|| MeshMessage::InterestJoin { filter: filter.clone(), request, since }, now);
                self.expect_answers_from_all_peers(request);
                self.interest.announced(filter, request);
                request
            }
        }
    }

    /// A peer's client subscribed to `filter` at `since`; publishes of this shard's clients
    /// routed at or after that moment, before the announcement arrived here, went past it.
    /// They go to that peer now, so that a publish the broker took after a SUBSCRIBE
    /// reaches it wherever the two clients are. (Not earlier ones: a publish acknowledged
    /// before the SUBSCRIBE was taken may have been causally before it, and a subscriber
    /// must not see a non-retained message from before it subscribed.)
    fn send_late_matches(&mut self, to: ShardId, filter: &Bytes, since: Instant, now: Instant) {
        let bit = if to.0 < 128 { 1u128 << to.0 } else { 0 };
        let late: Vec<Arc<Message>> = self
            .recent
            .own_since(self.id, since)
            .filter(|entry| entry.sent_to & bit == 0 && bit != 0 && filter_matches(filter, &entry.message.topic))
            .map(|entry| entry.message.clone())
            .collect();
        // Oldest first, as they were published.
        for message in late.into_iter().rev() {
            self.counters.late_matches_sent += 1;
            self.send(to, MeshMessage::LateMatch { filter: filter.clone(), message }, now);
        }
    }

    /// A publish that went past this shard before a subscription here to `filter` was
    /// known at its origin: for the clients subscribed to exactly that filter.
    fn deliver_late_match(&mut self, filter: &Bytes, message: &Arc<Message>, now: Instant) {
        let mut keys = Vec::new();
        self.subscriptions.for_each_match(&message.topic, |key, _| keys.push(*key));
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let client = self.clients[key.0 as usize].as_ref().expect("matched clients are live");
            let Some(subscription) = client.session.subscriptions.get(filter).copied() else { continue };
            let own_message = self.is_publisher(key, message);
            if let Some(delivery) = merge_matching(std::iter::once(&subscription), own_message) {
                let retain = delivery.retain_as_published && message.retain;
                let copy =
                    CopyFor { qos: delivery.granted.min(message.qos), retain, subscription_ids: delivery.subscription_ids, shared: None };
                self.deliver_to(key, message, copy, None, now);
            }
        }
    }

    /// Withdraws the filters no local subscription has used since the last tick.
    fn withdraw_unused_interest(&mut self, now: Instant) {
        for filter in self.interest.take_unused() {
            self.broadcast(|| MeshMessage::InterestLeave { filter: filter.clone() }, now);
        }
    }

    /// Tells `to` that its request is applied here (no answer for request 0).
    fn answer(&mut self, to: ShardId, request: u64, now: Instant) {
        if request != 0 {
            self.send(to, MeshMessage::Applied { request, position: self.publish_sequence }, now);
        }
    }

    fn applied(&mut self, request: u64, from: ShardId, position: u64, now: Instant) {
        if let Some(positions) = self.barriers.answered(request, from, position)
            && self.moving.contains_key(&request)
        {
            self.finish_move(request, positions, now);
        }
        for held in self.barriers.ready() {
            self.send_held_answer(held, now);
        }
    }

    /// Sends `packet` (a SUBACK or UNSUBACK) once none of the requests in `needs` awaits
    /// a peer's answer, so that no shard can route a message past a change the client has
    /// already been told about.
    fn answer_when_applied(
        &mut self,
        needs: Vec<u64>,
        link: &Link,
        version: ProtocolVersion,
        packet: Packet,
        retained: Vec<RetainedCopy>,
        now: Instant,
    ) {
        let Some(key) = self.client_of(link) else { return };
        let Some(link) = self.client(key).link.clone() else { return };
        link.answer_held();
        if let Some(held) = self.barriers.wait(needs, HeldAnswer { link, version, packet, retained }) {
            self.send_held_answer(held, now);
        }
    }

    fn send_held_answer(&mut self, held: HeldAnswer, now: Instant) {
        held.link.answer_released();
        write_packet(&held.link, held.version, &held.packet);
        let Some(key) = self.client_of(&held.link) else { return };
        self.queue_retained(key, held.retained, now);
    }

    /// Whether `key` still holds the shared subscription `target` was chosen for.
    fn holds_shared(&self, key: ClientKey, target: &SharedTarget) -> bool {
        let mut full = Vec::with_capacity(8 + target.group.len() + target.filter.len());
        full.extend_from_slice(b"$share/");
        full.extend_from_slice(&target.group);
        full.push(b'/');
        full.extend_from_slice(&target.filter);
        self.clients[key.0 as usize].as_ref().is_some_and(|client| client.session.subscriptions.contains_key(&full[..]))
    }

    fn is_publisher(&self, key: ClientKey, message: &Message) -> bool {
        let client = self.clients[key.0 as usize].as_ref().expect("matched clients are live");
        message.publisher.as_ref() == Some(client.session.client_id())
    }

    fn deliver_to(&mut self, key: ClientKey, message: &Arc<Message>, copy: CopyFor, origin: Option<(ShardId, u64)>, now: Instant) {
        let (qos, retain) = (copy.qos, copy.retain);
        if message.is_expired(now) {
            self.counters.messages_expired += 1;
            return;
        }
        if !self.auth.may_receive(&message.topic) {
            // Whatever filter matched it (`#`, `+/x`): a denied topic reaches nobody.
            self.counters.deliveries_denied += 1;
            return;
        }
        let outbound_limit = self.limits.outbound_buffer_max_bytes;
        let client = self.clients[key.0 as usize].as_mut().expect("matched clients are live");
        if let (Some(skip), Some((source, sequence))) = (&client.skip_until, origin)
            && sequence <= skip[source.0]
        {
            return;
        }
        let link = client.link.as_ref().filter(|link| !link.is_closing());
        if client.max_packet_size_out != u32::MAX && {
            let mut properties = std::borrow::Cow::Borrowed(&*message.properties);
            if !copy.subscription_ids.is_empty() {
                properties.to_mut().subscription_identifiers.clone_from(&copy.subscription_ids);
            }
            // Counted with an alias property, in case this delivery assigns one.
            let topic_alias = (client.aliases_out.maximum > 0).then_some(1);
            let header = PublishHeader { dup: false, qos, retain, packet_id: None, topic_alias };
            publish_wire_len(client.version, &header, &message.topic, &properties, &message.payload) > client.max_packet_size_out as usize
        } {
            // Larger than the client accepts: discarded for this client, as if sent (5.0 3.1.2.25).
            self.counters.oversize_drops += 1;
            return;
        }
        if qos == QoS::AtMostOnce && link.is_some_and(|link| link.buffered_bytes() >= outbound_limit) {
            self.counters.qos0_dropped_slow_subscriber += 1;
            return;
        }
        match client.session.offer(message.clone(), copy, link.is_some()) {
            Offer::Send(outgoing) => {
                let link = link.expect("offers are sent only when online");
                write_outgoing(link, client.version, &outgoing, now, &mut client.aliases_out);
                self.counters.messages_delivered += 1;
            }
            Offer::Queued => {}
            Offer::QueuedFull => {
                let source = origin.map(|(source, _)| source);
                self.subscriber_queue_full(key, source, message.publisher.as_ref(), now);
            }
            Offer::QueuedDroppingOldest | Offer::Dropped => self.counters.session_queue_drops += 1,
        }
    }

    // ----- time -----

    /// The coarse timer: keep-alive expiry (1.5 x keep alive, MQTT 3.1.2.10) and the
    /// periodic `$SYS` counters.
    pub fn tick(&mut self, now: Instant) {
        // One pass decides; the actions follow, since they add and remove clients.
        let mut due = Vec::new();
        for (index, slot) in self.clients.iter().enumerate() {
            let Some(client) = slot else { continue };
            let key = ClientKey(index as u32);
            if let Some(link) = &client.link {
                // A connection whose PUBLISH is held by back-pressure is not idle.
                if let Some(keep_alive) = client.keep_alive
                    && !link.is_waiting_to_publish()
                    && now.duration_since(client.last_activity) >= keep_alive * 3 / 2
                {
                    due.push((key, TimerEvent::KeepAliveTimeout));
                }
            } else if client.expires_at.is_some_and(|at| now >= at) {
                // Ending the session also sends a will still waiting for its delay.
                due.push((key, TimerEvent::SessionExpired));
            } else if client.pending_will.as_ref().is_some_and(|pending| now >= pending.0) {
                due.push((key, TimerEvent::WillDelayOver));
            }
        }
        for (key, event) in due {
            match event {
                TimerEvent::KeepAliveTimeout => {
                    self.counters.keep_alive_timeouts += 1;
                    let client = self.client(key);
                    if let Some(link) = client.link.clone() {
                        close_with_reason(&link, client.version, ReasonCode::KEEP_ALIVE_TIMEOUT);
                    }
                    self.client_lost(key, now);
                }
                TimerEvent::SessionExpired => {
                    self.counters.sessions_expired += 1;
                    self.end_session(key, now);
                }
                TimerEvent::WillDelayOver => {
                    let client = self.client(key);
                    let publisher = client.session.client_id().clone();
                    if let Some(pending) = client.pending_will.take() {
                        let (_, will) = *pending;
                        self.publish_will(will, publisher, now);
                    }
                }
            }
        }
        for key in self.slow_subscribers(now) {
            self.disconnect_slow_subscriber(key, now);
        }
        self.withdraw_unused_interest(now);
        if let (Some(due), Some(interval)) = (self.next_sys_publish, self.limits.sys_interval)
            && now >= due
        {
            self.next_sys_publish = Some(now + interval);
            self.publish_sys(now);
        }
    }

    fn publish_sys(&mut self, now: Instant) {
        let connected = self.connected_clients() as u64;
        let mut fields: Vec<(&'static str, u64)> = self.counters.fields().to_vec();
        fields.push(("clients_connected", connected));
        for (name, value) in fields {
            let message = Message {
                topic: Bytes::from(format!("$SYS/ringmq/shard/{}/{}", self.id.0, name)),
                payload: Bytes::from(value.to_string()),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Default::default(),
                publisher: None,
                expires_at: None,
            };
            self.route(Arc::new(message), now);
        }
    }

    /// Stop accepting clients and close every connection (5.0 clients hear 0x8B first).
    pub fn begin_shutdown(&mut self) {
        self.accepting = false;
        for client in self.clients.iter().flatten() {
            if let Some(link) = &client.link {
                close_with_reason(link, client.version, ReasonCode::SERVER_SHUTTING_DOWN);
            }
        }
        for pending in self.pending_connects.values() {
            pending.link.close();
        }
    }
}

#[cfg(test)]
mod simulation;
