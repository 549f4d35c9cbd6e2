//! What shards say to each other. One typed enum travels over bounded shard-to-shard
//! queues (the transport lives in `runtime`); this file only defines the words.
//!
//! Data (`Publish`) and control (claims, evictions, handoffs, releases) share one FIFO per
//! shard pair, which is what keeps a publisher's messages in order at every shard and a
//! claim's answer behind everything sent before it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::protocol::QoS;
use crate::session::{Message, Session};

use super::barrier::RequestId;
use super::shared::SharedTarget;

/// Index of a shard, 0..shard_count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub usize);

/// A network connection, unique across the process: the accepting shard and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

impl ConnId {
    const SHARD_SHIFT: u32 = 48;

    pub fn new(shard: ShardId, sequence: u64) -> ConnId {
        debug_assert!(sequence < 1 << Self::SHARD_SHIFT);
        ConnId(((shard.0 as u64) << Self::SHARD_SHIFT) | sequence)
    }

    pub fn shard(self) -> ShardId {
        ShardId((self.0 >> Self::SHARD_SHIFT) as usize)
    }
}

/// The position of each source shard's publish stream that a shard has applied:
/// `cut[s]` is the last publish sequence number from shard `s` it processed.
pub type StreamCut = Box<[u64]>;

#[derive(Debug)]
pub enum MeshMessage {
    /// A message published on the sending shard; `sequence` numbers that shard's publishes.
    /// `shared` names the member chosen in each matching shared-subscription group.
    Publish { sequence: u64, message: Arc<Message>, shared: Vec<SharedTarget> },
    /// A client on the sending shard joined a shared-subscription group. A
    /// `request` asks for an `Applied` back: the SUBACK waits for every peer.
    ShareJoin { group: Bytes, filter: Bytes, client_id: Bytes, granted: QoS, request: Option<RequestId> },
    /// A client on the sending shard left one (unsubscribed, or its session left the shard).
    ShareLeave { group: Bytes, filter: Bytes, client_id: Bytes, request: Option<RequestId> },
    /// A client on the sending shard is the first there to subscribe to `filter` (not
    /// shared): send that shard the publishes it matches. Answered when it carries a `request`.
    /// `since`: when the client subscribed (a new subscription, not a session moving in).
    InterestJoin { filter: Bytes, request: Option<RequestId>, since: Option<Instant> },
    /// One of the receiving shard's own publishes, routed after a client here subscribed to
    /// `filter` but before the receiving shard knew.
    LateMatch { filter: Bytes, message: Arc<Message> },
    /// The sending shard's last subscriber to `filter` is gone.
    InterestLeave { filter: Bytes },
    /// A session is moving to `shard`: send it every publish until it says `ReceiveAllDone`
    /// (`shard` itself only answers). Always answered.
    ReceiveAll { shard: ShardId, request: RequestId },
    /// The sending shard has announced the moved session's filters; one hold ends.
    ReceiveAllDone,
    /// A shared-subscription message for `target`: one a departed member left
    /// unacknowledged, or (`forwarded`) one whose chosen member had left the shard it was
    /// sent to. A forwarded one is not forwarded again.
    SharedRedeliver { target: SharedTarget, message: Arc<Message>, forwarded: bool },
    /// The receiving shard's request numbered `request` is applied here, when this shard's
    /// own publish sequence stood at `position`.
    Applied { request: RequestId, position: u64 },
    /// `--durability sync`: what the receiver's publishes did here, up to `position` in its
    /// stream, is on this shard's disk (see `durability.rs`).
    Durable { position: u64 },
    /// To the client id's home shard: connection `conn` wants to own `client_id`.
    /// `keeps_session`: the session outlives the connection (the cluster must then own the
    /// id for sure); `assigned`: the broker made the id up (no other node can hold it).
    Claim { client_id: Bytes, conn: ConnId, clean_start: bool, keeps_session: bool, assigned: bool },
    /// From the home shard: nobody on this node held `client_id`; `conn` starts a fresh
    /// session, or the one another node handed over (`--cluster`).
    Granted { conn: ConnId, session: Option<Box<Session>> },
    /// Home shard -> the shard of `client_id`'s connection (`--cluster-durable`): messages
    /// replayed for the session it resumed from a dead node's record.
    Replay { client_id: Bytes, messages: Vec<Arc<Message>> },
    /// From the home shard to the shard holding `previous`: give the session to `next`.
    Evict { client_id: Bytes, previous: ConnId, next: ConnId, clean_start: bool },
    /// From the home shard: a connection on another node now owns `client_id` (`--cluster`):
    /// close `previous` and end its session here, or with `handover`, send it there.
    EvictForNode { client_id: Bytes, previous: ConnId, handover: Option<crate::cluster::port::SessionReply> },
    /// From the home shard: the cluster could not settle who owns the id `conn` claims
    /// (its state store is unreachable): refuse the CONNECT as Server unavailable.
    ClaimRefused { conn: ConnId },
    /// From the old owner to `conn`'s shard: the session (if kept) and where the old owner
    /// stood in every publish stream when it let go. With `receive_all_held`, every other
    /// shard sends `conn`'s shard everything until that shard releases the hold.
    Handoff { conn: ConnId, session: Option<Box<Session>>, cut: StreamCut, receive_all_held: bool },
    /// To the publisher's shard: a subscriber on the sending shard has a full queue that
    /// `client_id` feeds; leave its QoS 1/2 PUBLISHes unread until `ResumePublisher`.
    PausePublisher { client_id: Bytes },
    /// The subscriber that sent `PausePublisher` drained (or left).
    ResumePublisher { client_id: Bytes },
    /// To the home shard: the session owned through `conn` has ended.
    Released { client_id: Bytes, conn: ConnId },
}
