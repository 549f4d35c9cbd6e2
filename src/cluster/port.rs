//! The narrow interface between a shard and the gateway thread: what a shard tells the
//! gateway (`ToGateway`), and the shard's outbox for it (`ClusterPort`, pure). The queues
//! themselves are bounded channels (`Channels`) whose ends work from any executor: the
//! shard awaits them on glommio, the gateway on its own tokio runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::session::Message;
use crate::shard::ConnId;

/// Messages a shard may hold for the gateway while the gateway's queue is full; past it,
/// further publishes are dropped for the cluster (still delivered on this node) and counted.
pub const OUTBOX_MESSAGES_MAX: usize = 65_536;
/// Batches in flight from all shards to the gateway.
pub const TO_GATEWAY_BATCHES_MAX: usize = 1_024;
/// Messages in flight from the gateway to one shard.
pub const TO_SHARD_MESSAGES_MAX: usize = 8_192;

#[derive(Debug)]
pub enum ToGateway {
    /// A message a client (or a will) published on this node: send it to the cluster.
    Publish(Arc<Message>),
    /// This shard's first subscription to `filter` appeared (`true`) or its last one went.
    Interest { filter: Bytes, subscribed: bool },
    /// The node's shared-subscription group `group` on `filter` was made (`true`: it has a
    /// first member on this node) or emptied. Told by shard 0, which holds every group.
    SharedInterest { group: Bytes, filter: Bytes, subscribed: bool },
    /// A connection on this node claims `client_id` (from its home shard `shard`);
    /// `persistent`: it wants a session kept, which needs the ownership bucket to answer;
    /// `resume`: Clean Start 0, so a session another node holds for the id moves here.
    Claim { client_id: Bytes, shard: usize, persistent: bool, resume: bool },
    /// The session for `client_id` ended on this node: the node lets go of the id.
    Release { client_id: Bytes },
    /// Connection `conn` of `client_id` opened here with this will (the message, and its
    /// delay in seconds), or ended (`None`): the node is no longer the one to send it.
    /// Kept in the cluster so that a survivor sends it if this node dies (`wills.rs`).
    Will { client_id: Bytes, conn: ConnId, will: Option<(Arc<Message>, u32)> },
    /// The record of `client_id`'s persistent session as of `version` (`records`), or
    /// `None`: it has none here any more.
    SessionRecord { client_id: Bytes, version: u64, record: Option<Bytes> },
}

/// What the gateway hands a shard.
/// Where a shard sends a session leaving for another node (`cluster::handover` bytes).
pub type SessionReply = tokio::sync::oneshot::Sender<Bytes>;

#[derive(Debug)]
pub enum FromCluster {
    /// A message from another node, for this node's subscribers.
    Publish(Arc<Message>),
    /// A message NATS gave this node for one member of its group `group` on `filter`.
    Shared { group: Bytes, filter: Bytes, message: Arc<Message> },
    /// To the home shard: the oldest waiting claim for `client_id` is granted, or refused
    /// (the cluster could not settle who owns it); `verified`: the owner bucket names us;
    /// `handed`: the session the previous owner handed over (`cluster::handover` bytes).
    ClaimAnswer { client_id: Bytes, granted: bool, verified: bool, handed: Option<Bytes> },
    /// To the home shard, with `--cluster-durable`, after a session resumed from a dead
    /// node's record is in place: the messages stored since its checkpoint that its
    /// filters match, oldest first (`message_stream`).
    Replay { client_id: Bytes, messages: Vec<Arc<Message>> },
    /// To the home shard: a connection on another node now owns `client_id`. With
    /// `handover`, that connection resumes the session: send it (empty: none kept).
    /// `applied` is dropped once the home shard no longer counts the id as this node's
    /// (a CONNECT for it from then on asks the cluster), for the taker's answer to wait on.
    EvictRemote { client_id: Bytes, handover: Option<SessionReply>, applied: Option<tokio::sync::oneshot::Sender<()>> },
    /// The will of a client of a node that died: publish it here, as this node's own.
    DeadNodesWill(Arc<Message>),
}

/// The shard's side: what waits for the gateway, and the task that takes it there.
#[derive(Default)]
pub struct ClusterPort {
    outbox: Vec<ToGateway>,
    /// Client ids whose session record changed, and the version taken at the change: the
    /// shard writes each once per tick (a client subscribing to thousands of filters one
    /// SUBSCRIBE at a time costs one record per tick, not one per filter).
    records_dirty: HashMap<Bytes, u64>,
    /// Publishes among `outbox`, for the bound.
    publishes: usize,
    /// `--cluster-durable`: the shard refreshes its sessions' checkpoints, last at this time.
    pub durable: bool,
    pub checkpoints_refreshed_at: Option<std::time::Instant>,
    waker: Option<Waker>,
}

impl ClusterPort {
    /// Queues a publish; false (dropped) when `OUTBOX_MESSAGES_MAX` are already waiting.
    pub fn publish(&mut self, message: Arc<Message>) -> bool {
        if self.publishes >= OUTBOX_MESSAGES_MAX {
            return false;
        }
        self.publishes += 1;
        self.push(ToGateway::Publish(message));
        true
    }

    /// Interest changes are never dropped: the gateway's counts must stay balanced.
    pub fn interest(&mut self, filter: Bytes, subscribed: bool) {
        self.push(ToGateway::Interest { filter, subscribed });
    }

    /// Claims are never dropped either: a CONNECT waits for each answer.
    pub fn claim(&mut self, client_id: Bytes, shard: usize, persistent: bool, resume: bool) {
        self.push(ToGateway::Claim { client_id, shard, persistent, resume });
    }

    /// Will changes are never dropped: a will left set would be sent for a live client.
    pub fn will(&mut self, client_id: Bytes, conn: ConnId, will: Option<(Arc<Message>, u32)>) {
        self.push(ToGateway::Will { client_id, conn, will });
    }

    /// `client_id`'s session record changed (it arrived, subscribed, went offline, ended).
    pub fn record_changed(&mut self, client_id: &Bytes) {
        self.records_dirty.insert(client_id.clone(), super::records::next_version());
    }

    /// The client ids whose records changed since the last call.
    pub fn take_changed_records(&mut self) -> HashMap<Bytes, u64> {
        std::mem::take(&mut self.records_dirty)
    }

    /// Record changes are never dropped: a record left behind would be used.
    pub fn session_record(&mut self, client_id: Bytes, version: u64, record: Option<Bytes>) {
        self.push(ToGateway::SessionRecord { client_id, version, record });
    }

    pub fn release(&mut self, client_id: Bytes) {
        self.push(ToGateway::Release { client_id });
    }

    pub fn shared_interest(&mut self, group: Bytes, filter: Bytes, subscribed: bool) {
        self.push(ToGateway::SharedInterest { group, filter, subscribed });
    }

    fn push(&mut self, item: ToGateway) {
        self.outbox.push(item);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Everything waiting, or `Pending` until something is.
    pub fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Vec<ToGateway>> {
        if self.outbox.is_empty() {
            self.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.publishes = 0;
        Poll::Ready(std::mem::take(&mut self.outbox))
    }
}

/// Both directions' queues, made once per node before the shards start.
pub struct Channels {
    pub to_gateway: mpsc::Sender<Vec<ToGateway>>,
    pub gateway_inbox: mpsc::Receiver<Vec<ToGateway>>,
    /// Indexed by shard: the gateway's end, then each shard's end.
    pub to_shards: Vec<mpsc::Sender<FromCluster>>,
    pub shard_inboxes: Vec<mpsc::Receiver<FromCluster>>,
}

impl Channels {
    pub fn new(shard_count: usize) -> Channels {
        let (to_gateway, gateway_inbox) = mpsc::channel(TO_GATEWAY_BATCHES_MAX);
        let (to_shards, shard_inboxes) = (0..shard_count).map(|_| mpsc::channel(TO_SHARD_MESSAGES_MAX)).unzip();
        Channels { to_gateway, gateway_inbox, to_shards, shard_inboxes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn message() -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::new(),
            qos: crate::protocol::QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
        })
    }

    #[test]
    fn publishes_are_bounded_interest_is_not_and_a_push_wakes_the_taker() {
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut port = ClusterPort::default();
        assert!(port.poll_take(&mut cx).is_pending());
        for _ in 0..OUTBOX_MESSAGES_MAX {
            assert!(port.publish(message()));
        }
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "the first push woke the task");
        assert!(!port.publish(message()), "past the bound");
        port.interest(Bytes::from_static(b"a/#"), true);
        let Poll::Ready(taken) = port.poll_take(&mut cx) else { panic!("something waits") };
        assert_eq!(taken.len(), OUTBOX_MESSAGES_MAX + 1);
        assert!(matches!(taken.last(), Some(ToGateway::Interest { subscribed: true, .. })));
        assert!(port.publish(message()), "taking frees the bound");
    }
}
