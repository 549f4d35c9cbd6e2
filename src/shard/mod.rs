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
//! to evict and hand the session to the new connection's shard (see `takeover.rs`).

pub mod admin;
mod announce;
mod barrier;
mod clients;
mod close;
mod cluster;
mod connect;
mod counters;
mod delivery;
pub mod durability;
mod durable;
pub use durable::SessionBatch;
mod flow;
mod interest;
mod layouts;
mod limits;
pub mod link;
mod memory;
pub mod mesh;
mod outbox;
mod packets;
mod recent;
mod retained;
pub use retained::RetainedJournal;
pub mod shared;
mod subscriptions;
mod takeover;
mod timer;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use announce::*;
use barrier::{Barriers, RequestId};
use clients::*;
pub use close::CloseReason;
use close::*;
use connect::*;
pub use connect::{ConnectProgress, ConnectionBudget};
pub use counters::{Counters, Gauges};
use delivery::*;
use interest::{Interest, LocalAdd};
use link::{Link, LinkState};
pub use mesh::{ConnId, MeshMessage, ShardId, StreamCut};
use outbox::Outboxes;
use recent::{RecentPublish, RecentPublishes};
use shared::{SharedGroups, SharedTarget};
use subscriptions::SubscriptionAdded;
pub use takeover::home_shard;
use takeover::*;

use crate::auth::{AuthExchange, AuthStep, Authenticator};
use crate::protocol::{
    Ack, Auth, ConnAck, Connect, ConnectRefusal, DecodeError, Disconnect, Packet, Properties, ProtocolVersion, Publish, PublishHeader, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will, publish_wire_len, short_pubacks,
    write_publish,
};
use crate::session::{
    AckOutcome, AliasError, Connection, CopyFor, Due, Lifecycle, Message, Offer, OutboundAliases, Outgoing, PublishRef, Session,
    SessionExpiry, SharedRoute, Subscription, detach, merge_matching,
};
use crate::topics::{Filter, SubscriptionTree, TopicError, filter_matches, is_broker_topic, validate_topic_filter, validate_topic_name};
pub use limits::{Features, Routing, ShardLimits};
pub use memory::{MemoryInUse, MemoryLevel};

/// Index of a client slot within one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(u32);

/// One core's broker. Each field is one concept, owned here and reached by other shards
/// only through `MeshMessage`s.
pub struct Shard {
    id: ShardId,
    shard_count: usize,
    limits: ShardLimits,
    /// Password file, anonymous rule, deny patterns, enhanced-auth methods (shared, read-only).
    auth: Arc<Authenticator>,
    /// Sessions that live here, live or offline (`clients.rs`).
    clients: Clients,
    /// Filter -> local subscribers, matched for every publish this shard applies.
    subscriptions: SubscriptionTree<ClientKey, Subscription>,
    /// This shard's replica of the retained store (every shard applies every retained publish).
    retained: retained::RetainedStore,
    /// Shared-subscription groups and their members on every shard (`shared.rs`).
    shared: SharedGroups,
    /// Which peers want which filters, and which filters this shard announced (`interest.rs`).
    interest: Interest,
    /// Requests to the peers and what waits for their answers (`barrier.rs`, `announce.rs`).
    barriers: Barriers<HeldAnswer>,
    /// Client ids this shard is home for, and sessions leaving it (`takeover.rs`).
    registry: Registry,
    /// Accepted sockets and CONNECTs between arrival and CONNACK (`connect.rs`).
    connecting: Connecting,
    /// What waits for each peer shard (`outbox.rs`).
    outboxes: Outboxes,
    /// Where this shard stands in every shard's publish stream (`delivery.rs`, `takeover.rs`).
    streams: Streams,
    /// Buffers reused across publishes so the fan-out path does not allocate.
    scratch: Scratch,
    /// Where the process stands against `--memory-max-bytes` (`memory.rs`).
    memory: memory::MemoryGuard,
    /// When the timer next publishes the `$SYS` counters.
    next_sys_publish: Option<Instant>,
    /// Persistent sessions' records waiting for the writer (`durable.rs`); `None` without
    /// `--data-dir`.
    session_log: Option<durable::SessionLog>,
    /// With `--data-dir`: whether the disk keeps up, and under `--durability sync` what
    /// output waits for it (`durability.rs`).
    durability: Option<Rc<durability::Durability>>,
    /// With `--cluster`: what waits for the gateway thread (`cluster.rs`).
    cluster: Option<crate::cluster::port::ClusterPort>,
    /// With `--cluster`, on the home shard: claims waiting for the cluster's word on who
    /// owns their client id, in arrival order per id (`cluster.rs`).
    cluster_claims: HashMap<Bytes, std::collections::VecDeque<(ConnId, bool, bool)>>,
    /// With `--cluster`, on the home shard: ids this node holds in the cluster's owner bucket.
    cluster_held: HashSet<Bytes>,
    pub counters: Counters,
}

/// Where this shard stands in the publish streams: its own sequence number for the next
/// publish it routes, the last sequence number applied from each shard, and the recent
/// publishes kept for sessions that move here (`catch_up`).
pub(super) struct Streams {
    pub(super) sequence: u64,
    pub(super) seen: Vec<u64>,
    /// The last publish this shard routed: its sequence and the peers it went to (a bit each).
    pub(super) last_routed: (u64, u128),
    pub(super) recent: RecentPublishes,
}

/// Buffers reused publish after publish.
#[derive(Default)]
pub(super) struct Scratch {
    /// Which peers a publish goes to.
    pub(super) route_targets: Vec<bool>,
    /// The local subscriptions the last publish matched, sorted by client, and what they
    /// are valid for: a publish to the same topic while the trie's generation is the same
    /// matches them again without walking the trie (a publisher's read brings a run of
    /// PUBLISHes to one topic; on a p2p profile the walk was 7% of the shard's time).
    pub(super) matches: Vec<(ClientKey, Subscription)>,
    pub(super) matches_topic: Vec<u8>,
    pub(super) matches_generation: Option<u64>,
    /// What a session wants written.
    pub(super) outgoing: Vec<Outgoing>,
    /// The wire layouts of the message being delivered (see `layouts.rs`).
    pub(super) layouts: layouts::PublishLayouts,
}

impl Shard {
    pub fn new(id: ShardId, shard_count: usize, limits: ShardLimits, auth: Arc<Authenticator>, now: Instant) -> Shard {
        assert!(id.0 < shard_count && shard_count <= crate::config::SHARDS_MAX);
        let next_sys_publish = limits.sys_interval.map(|interval| now + interval);
        let outboxes = Outboxes::new(shard_count, limits.mesh_outbox_messages_max);
        let recent = RecentPublishes::new(shard_count, limits.recent_publishes_max, limits.recent_publish_bytes_max);
        let memory = memory::MemoryGuard::new(limits.memory_bytes_max);
        Shard {
            id,
            shard_count,
            limits,
            auth,
            clients: Clients::default(),
            subscriptions: SubscriptionTree::default(),
            retained: retained::RetainedStore::default(),
            shared: SharedGroups::default(),
            interest: Interest::new(shard_count),
            barriers: Barriers::new(shard_count),
            registry: Registry::default(),
            connecting: Connecting::default(),
            outboxes,
            streams: Streams { sequence: 0, seen: vec![0; shard_count], last_routed: (0, 0), recent },
            memory,
            scratch: Scratch { route_targets: vec![false; shard_count], ..Scratch::default() },
            next_sys_publish,
            session_log: None,
            durability: None,
            cluster: None,
            cluster_claims: HashMap::new(),
            cluster_held: HashSet::new(),
            counters: Counters::default(),
        }
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    /// SIGHUP: the limits that may change live (`ShardLimits::take_live`).
    pub fn take_live_limits(&mut self, fresh: &ShardLimits) {
        self.limits.take_live(fresh);
    }

    pub fn limits(&self) -> &ShardLimits {
        &self.limits
    }

    fn send(&mut self, target: ShardId, message: MeshMessage, now: Instant) {
        if target == self.id {
            self.handle_message(target, message, now);
            return;
        }
        self.outboxes.push(target, message);
    }

    /// Sends each peer a message made for it.
    fn broadcast(&mut self, make: impl Fn() -> MeshMessage, now: Instant) {
        let here = self.id.0;
        for peer in (0..self.shard_count).filter(|&peer| peer != here) {
            let message = make();
            self.send(ShardId(peer), message, now);
        }
    }

    /// Forwarder side: the next batch for `peer` (`outbox.rs`), once there is one.
    pub fn poll_outbox(&mut self, peer: ShardId, cx: &mut Context<'_>) -> Poll<Vec<MeshMessage>> {
        self.outboxes.poll_take(peer, cx)
    }

    /// True while some peer's outbox is at its bound: publishers here should not be read.
    pub fn congested(&self) -> bool {
        self.outboxes.congested()
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
                debug_assert!(sequence > self.streams.seen[from.0], "per-pair FIFO keeps sequences rising");
                self.streams.seen[from.0] = sequence;
                self.apply_publish(from, sequence, &message, &shared, 0, now);
                if let Some(durability) = self.durability.as_ref().filter(|durability| durability.holds_output()) {
                    // Its shard holds the PUBACK until this is on our disk too.
                    durability.want_commit();
                }
            }
            MeshMessage::ShareJoin { group, filter, client_id, granted, request } => {
                if self.shared.join(group.clone(), filter.clone(), from, client_id, granted) {
                    self.export_shared(group, filter, true);
                }
                self.answer(from, request, now);
            }
            MeshMessage::ShareLeave { group, filter, client_id, request } => {
                if self.shared.leave(&group, &filter, from, &client_id) {
                    self.export_shared(group, filter, false);
                }
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
                self.answer(from, Some(request), now);
            }
            MeshMessage::ReceiveAllDone => self.interest.release_receive_all(from),
            MeshMessage::Applied { request, position } => self.applied(request, from, position, now),
            MeshMessage::Durable { position } => {
                if let Some(durability) = &self.durability {
                    durability.peer_durable(from.0, position);
                }
            }
            MeshMessage::SharedRedeliver { target, message, forwarded } => self.deliver_shared(&target, &message, None, !forwarded, now),
            MeshMessage::Claim { client_id, conn, clean_start, keeps_session, assigned } => {
                self.on_claim(client_id, conn, clean_start, ClaimKind { keeps_session, assigned }, now)
            }
            MeshMessage::Granted { conn, session } => self.complete_connect(conn, session, None, false, now),
            MeshMessage::Replay { client_id, messages } => self.deliver_replayed(&client_id, messages, now),
            MeshMessage::Evict { client_id, previous, next, clean_start } => self.on_evict(client_id, previous, next, clean_start, now),
            MeshMessage::EvictForNode { client_id, previous, handover } => self.on_evict_for_node(client_id, previous, handover, now),
            MeshMessage::ClaimRefused { conn } => self.on_claim_refused(conn),
            MeshMessage::Handoff { conn, session, cut, receive_all_held } => {
                if from != self.id && session.is_some() {
                    self.counters.sessions_moved_in += 1;
                }
                self.complete_connect(conn, session, Some(cut), receive_all_held, now)
            }
            MeshMessage::PausePublisher { client_id } => self.on_pause_publisher(&client_id),
            MeshMessage::ResumePublisher { client_id } => self.on_resume_publisher(&client_id),
            MeshMessage::Released { client_id, conn } => {
                if self.registry.owners.get(&client_id) == Some(&conn) {
                    self.registry.owners.remove(&client_id);
                    self.release_cluster_claim(client_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod timer_tests;
