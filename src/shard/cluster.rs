//! The shard's side of the cluster (`--cluster`): what it hands the gateway thread (its
//! clients' publishes and wills, its first and last subscription to each filter) and how
//! a message from another node enters it. Without `--cluster` every hook is one `None`
//! check.
//!
//! Client ids (on each id's home shard): a claim for an id this node does not hold waits
//! for the gateway to take it in the cluster's ownership bucket (`cluster::owners`); the
//! gateway evicts the other node's connection, and a claim by another node evicts ours
//! (`on_remote_evict`). Claims for one id are asked one at a time, in arrival order. A
//! claim with Clean Start 0 brings the session the other node held (`cluster::handover`):
//! that node's shard closes the connection and sends the session instead of ending it.
//!
//! A message from another node is routed like one published here, except that it never
//! goes back to the cluster: the gateway gives each such message to one shard (chosen by
//! its topic, which keeps each topic's order), and that shard's `route` takes it to every
//! shard whose clients want it, retained replicas included.

use std::task::{Context, Poll};

use super::*;
use crate::cluster::port::{ClusterPort, FromCluster, SessionReply, ToGateway};
use crate::cluster::{handover, message_stream};
use crate::persist::retained::Clock;

impl Shard {
    /// Turns the cluster on for this shard: from now on publishes and interest go to the
    /// gateway, starting with every filter already subscribed here (restored sessions).
    /// `durable` (`--cluster-durable`): checkpoints are refreshed (`refresh_checkpoints`).
    pub fn attach_cluster(&mut self, durable: bool) {
        let mut port = ClusterPort::default();
        port.durable = durable;
        for filter in self.interest.local_filters() {
            port.interest(filter.clone(), true);
        }
        if self.id.0 == 0 {
            for (group, filter) in self.shared.groups() {
                port.shared_interest(group.clone(), filter.clone(), true);
            }
        }
        for (_, client) in self.clients.iter() {
            port.record_changed(client.session.client_id());
        }
        self.cluster = Some(port);
    }

    /// In a cluster: `client_id`'s session record is to be written again (at the next tick).
    pub(super) fn record_changed(&mut self, client_id: &Bytes) {
        if let Some(port) = &mut self.cluster {
            port.record_changed(client_id);
        }
    }

    /// `record_changed` for the session in `key`; `persistent_only`: only if it has a
    /// record at all (a clean session's subscriptions end with it).
    pub(super) fn record_changed_of(&mut self, key: ClientKey, persistent_only: bool) {
        let Some(port) = &mut self.cluster else { return };
        let client = self.clients.get(key);
        if !persistent_only || client.lifecycle.expiry() != SessionExpiry::WithConnection {
            port.record_changed(client.session.client_id());
        }
    }

    /// With `--cluster-durable`, every `CHECKPOINT_REFRESH`: the records of persistent
    /// sessions that took QoS 1/2 messages since their checkpoint and owe nothing now are
    /// written again, for their checkpoint alone (what a client whose node dies gets again
    /// is bounded by how old it is). Sessions that took nothing cost no write.
    pub(super) fn refresh_checkpoints(&mut self, now: Instant) {
        let Some(port) = &mut self.cluster else { return };
        if !port.durable || port.checkpoints_refreshed_at.is_some_and(|at| now.duration_since(at) < message_stream::CHECKPOINT_REFRESH) {
            return;
        }
        port.checkpoints_refreshed_at = Some(now);
        let stale_before_ms = Clock::system().unix_ms.saturating_sub(message_stream::CHECKPOINT_REFRESH.as_millis() as u64);
        for (_, client) in self.clients.iter() {
            let session = &client.session;
            if client.lifecycle.expiry() != SessionExpiry::WithConnection
                && session.offered_since_checkpoint()
                && session.owes_nothing()
                && session.checkpoint_ms() < stale_before_ms
            {
                port.record_changed(session.client_id());
            }
        }
    }

    /// The timer's turn: the records that changed, as they stand now (`cluster::records`):
    /// a persistent session's header and subscriptions, or `None` for a session gone from
    /// this shard or no longer persistent.
    pub(super) fn write_changed_records(&mut self) {
        let Some(port) = &mut self.cluster else { return };
        let changed = port.take_changed_records();
        if changed.is_empty() {
            return;
        }
        let clock = Clock::system();
        for (client_id, version) in changed {
            let record = self.clients.key_of(&client_id).and_then(|key| {
                let client = self.clients.get_mut(key);
                advance_checkpoint(&mut client.session, clock);
                (client.lifecycle.expiry() != SessionExpiry::WithConnection)
                    .then(|| Bytes::from(handover::encode_record(&client.session, &super::durable::header_of(client, clock), clock)))
            });
            if let Some(port) = &mut self.cluster {
                port.session_record(client_id, version, record);
            }
        }
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// What waits for the gateway (the runtime's forwarding task).
    pub fn poll_cluster_outbox(&mut self, cx: &mut Context<'_>) -> Poll<Vec<ToGateway>> {
        match &mut self.cluster {
            Some(port) => port.poll_take(cx),
            None => Poll::Pending,
        }
    }

    /// What the gateway received from another node.
    pub fn from_cluster(&mut self, received: FromCluster, now: Instant) {
        match received {
            FromCluster::Publish(message) => {
                self.counters.cluster_publishes_received += 1;
                self.route(message, now);
            }
            FromCluster::Shared { group, filter, message } => {
                self.counters.cluster_publishes_received += 1;
                self.deliver_cluster_shared(&group, &filter, message, now);
            }
            FromCluster::ClaimAnswer { client_id, granted, verified, handed } => {
                self.on_claim_answer(client_id, granted, verified, handed, now)
            }
            FromCluster::Replay { client_id, messages } => self.on_replay(client_id, messages, now),
            FromCluster::EvictRemote { client_id, handover, applied } => {
                self.on_remote_evict(client_id, handover, now);
                drop(applied);
            }
            FromCluster::DeadNodesWill(message) => self.publish_as_will(message, now),
        }
    }

    /// In a cluster: connection `conn` of `client_id` opened here with `will`, which the
    /// cluster keeps until the connection ends, so that another node sends it should this
    /// one die first.
    pub(super) fn export_will(&mut self, client_id: &Bytes, conn: ConnId, will: Option<&Will>, expiry: SessionExpiry, now: Instant) {
        let (Some(port), Some(will)) = (&mut self.cluster, will) else { return };
        // While the connection is open only a DISCONNECT changes the expiry, and that
        // ends the connection (and withdraws this) anyway.
        let delay_s = expiry.will_due_after_s(will.properties.will_delay_interval.unwrap_or(0));
        let mut message = super::delivery::will_message(will.clone(), client_id.clone(), now);
        // Counted from when a survivor sends it, from the property.
        message.expires_at = None;
        port.will(client_id.clone(), conn, Some((Arc::new(message), delay_s)));
    }

    /// Connection `conn` of `client_id` ended here: whatever became of its will, no other
    /// node is to send it.
    pub(super) fn withdraw_will(&mut self, client_id: &Bytes, conn: ConnId) {
        if let Some(port) = &mut self.cluster {
            port.will(client_id.clone(), conn, None);
        }
    }

    /// Home shard, in a cluster: true when `conn`'s claim must first be settled with the
    /// other nodes (it is then queued, and asked if first for its id). No asking for an id
    /// this node holds in the owner bucket (another node taking it evicts ours first), nor
    /// for one the broker made up.
    pub(super) fn claim_needs_cluster(&mut self, client_id: &Bytes, conn: ConnId, clean_start: bool, kind: ClaimKind) -> bool {
        let Some(port) = &mut self.cluster else { return false };
        if kind.assigned {
            return false;
        }
        let waiting = self.cluster_claims.get(client_id).is_some_and(|queue| !queue.is_empty());
        if !waiting && self.cluster_held.contains(client_id) && self.registry.owners.contains_key(client_id) {
            return false;
        }
        let queue = self.cluster_claims.entry(client_id.clone()).or_default();
        queue.push_back((conn, clean_start, kind.keeps_session));
        if queue.len() == 1 {
            port.claim(client_id.clone(), self.id.0, kind.keeps_session, !clean_start);
        }
        true
    }

    /// The gateway's word on the oldest waiting claim for `client_id`; `verified`: the
    /// owner bucket now names this node.
    fn on_claim_answer(&mut self, client_id: Bytes, granted: bool, verified: bool, handed: Option<Bytes>, now: Instant) {
        let Some(queue) = self.cluster_claims.get_mut(&client_id) else { return };
        let Some((conn, clean_start, _)) = queue.pop_front() else { return };
        if let Some(&(_, next_clean_start, keeps_session)) = queue.front()
            && let Some(port) = &mut self.cluster
        {
            port.claim(client_id.clone(), self.id.0, keeps_session, !next_clean_start);
        } else {
            self.cluster_claims.remove(&client_id);
        }
        if verified {
            self.cluster_held.insert(client_id.clone());
        }
        if granted {
            self.grant_claim(client_id, conn, clean_start, handed, now);
        } else if conn.shard() == self.id {
            self.on_claim_refused(conn);
        } else {
            self.send(conn.shard(), MeshMessage::ClaimRefused { conn }, now);
        }
    }

    /// Home shard: nobody on this node owns `client_id` any more (its session ended).
    pub(super) fn release_cluster_claim(&mut self, client_id: Bytes) {
        if self.cluster_held.remove(&client_id)
            && let Some(port) = &mut self.cluster
        {
            port.release(client_id);
        }
    }

    /// Home shard: a connection on another node took `client_id`; ours goes (its session
    /// to `handover`, if that connection resumes it).
    fn on_remote_evict(&mut self, client_id: Bytes, handover: Option<SessionReply>, now: Instant) {
        self.cluster_held.remove(&client_id);
        // No owner here: the handover's sender drops, which tells the taker "none".
        let Some(previous) = self.registry.owners.remove(&client_id) else { return };
        if previous.shard() == self.id {
            self.on_evict_for_node(client_id, previous, handover, now);
        } else {
            self.send(previous.shard(), MeshMessage::EvictForNode { client_id, previous, handover }, now);
        }
    }

    /// `previous` lost its client id to another node: close it (publishing its will, as
    /// any takeover does). With `handover` (the new connection resumes the session) the
    /// session leaves for that node, if it goes on (it outlives its connection); otherwise
    /// it ends here and the new node answers session present 0.
    pub(super) fn on_evict_for_node(&mut self, client_id: Bytes, previous: ConnId, handover: Option<SessionReply>, now: Instant) {
        if let Some(pending) = self.connecting.pending.get_mut(&previous) {
            pending.evicted_for_node = Some(handover);
            return;
        }
        let Some(key) = self.clients.key_of(&client_id).filter(|&key| self.clients.get(key).conn_id == previous) else { return };
        // The gateway gave up waiting (the taker then starts fresh): the session ends here.
        let handover = handover.filter(|reply| !reply.is_closed());
        let (continued, link) = self.close_taken_over(key, &client_id, handover.is_none(), now);
        if let Some(link) = link {
            tracing::info!(
                client_id = %String::from_utf8_lossy(&client_id),
                address = %link.peer_label(),
                shard = self.id.0,
                session_moves = continued,
                "client taken over by a connection on another node"
            );
        }
        match handover {
            Some(reply) if continued => {
                let client = self.remove_client(key, now);
                let mut session = client.session;
                // Here it ends (on disk too); its shared messages in flight go with it.
                self.session_ended(&mut session);
                let clock = Clock::system();
                advance_checkpoint(&mut session, clock);
                let bytes = handover::encode(&session, client.version, clock);
                if bytes.len() > handover::HANDOVER_BYTES_MAX {
                    // Past what a taker accepts: ended here, fresh there (session present 0).
                    self.counters.cluster_sessions_too_large += 1;
                    self.hand_shared_to_other_members(&mut session, now);
                    return;
                }
                self.counters.cluster_sessions_moved_out += 1;
                let _ = reply.send(Bytes::from(bytes));
            }
            _ => self.end_session(key, now),
        }
    }

    /// The session another node handed over for `client_id`, if its bytes make one.
    pub(super) fn session_from_node(&mut self, client_id: &Bytes, bytes: &Bytes) -> Option<Box<Session>> {
        match handover::decode(bytes, client_id, self.limits.session, Clock::system()) {
            Ok(session) => {
                self.counters.cluster_sessions_moved_in += 1;
                Some(Box::new(session))
            }
            Err(handover::HandoverError::Expired) => None,
            Err(error) => {
                self.counters.cluster_sessions_refused += 1;
                tracing::warn!(client_id = %String::from_utf8_lossy(client_id), %error, "cluster: a session handed over does not decode; it starts fresh");
                None
            }
        }
    }

    /// Home shard: messages replayed for `client_id`'s session, to the shard of whichever
    /// connection holds it now (a takeover meanwhile moved the session with it).
    fn on_replay(&mut self, client_id: Bytes, messages: Vec<Arc<Message>>, now: Instant) {
        let Some(&conn) = self.registry.owners.get(&client_id) else { return };
        if conn.shard() == self.id {
            self.deliver_replayed(&client_id, messages, now);
        } else {
            self.send(conn.shard(), MeshMessage::Replay { client_id, messages }, now);
        }
    }

    /// Messages replayed from the cluster's durable stream for a session resumed from a
    /// dead node's record (`cluster::message_stream`): each to this client alone, as its
    /// own subscriptions take it (no-local, ACLs, expiry and the client's limits apply as
    /// to any). A session that has ended or left meanwhile gets none.
    pub(super) fn deliver_replayed(&mut self, client_id: &Bytes, messages: Vec<Arc<Message>>, now: Instant) {
        let Some(key) = self.clients.key_of(client_id) else { return };
        for message in messages {
            let Some(delivery) = self.clients.get(key).session.own_delivery(&message) else { continue };
            self.counters.cluster_messages_replayed += 1;
            self.deliver_to(key, &message, delivery.copy_of(&message), None, now);
        }
    }

    /// The cluster could not settle the id `conn` claimed: Server unavailable.
    pub(super) fn on_claim_refused(&mut self, conn: ConnId) {
        let Some(pending) = self.connecting.pending.remove(&conn) else { return };
        self.release_connection_slot(&pending.link);
        let link = pending.link.clone();
        self.refuse(&link, pending.connect.version, ConnectRefusal::ClusterUnavailable);
    }

    /// NATS chose this node for a group's message: one member here takes it, on whichever
    /// shard it lives. A group emptied meanwhile misses it (`shared_misses`).
    fn deliver_cluster_shared(&mut self, group: &Bytes, filter: &Bytes, message: Arc<Message>, now: Instant) {
        match self.shared.pick(group, filter) {
            Some(target) if target.shard == self.id => self.deliver_shared(&target, &message, None, true, now),
            Some(target) => self.send(target.shard, MeshMessage::SharedRedeliver { target, message, forwarded: false }, now),
            None => self.counters.shared_misses += 1,
        }
    }

    /// A message published on this node (by a client or as a will): to the other nodes.
    pub(super) fn export_publish(&mut self, message: &Arc<Message>) {
        if let Some(port) = &mut self.cluster {
            if port.publish(message.clone()) {
                self.counters.cluster_publishes_sent += 1;
            } else {
                self.counters.cluster_publishes_dropped += 1;
            }
        }
    }

    /// The node's group `group` on `filter` was made or emptied (told once, by shard 0:
    /// every shard holds every group).
    pub(super) fn export_shared(&mut self, group: Bytes, filter: Bytes, subscribed: bool) {
        if self.id.0 == 0
            && let Some(port) = &mut self.cluster
        {
            port.shared_interest(group, filter, subscribed);
        }
    }

    /// This shard's first subscription to `filter` appeared, or its last one is gone.
    pub(super) fn export_interest(&mut self, filter: &Bytes, subscribed: bool) {
        if let Some(port) = &mut self.cluster {
            port.interest(filter.clone(), subscribed);
        }
    }
}

/// A session that owes its client nothing has had every message published until now
/// (`clock`) acknowledged: its checkpoint moves there. One that owes keeps the last.
fn advance_checkpoint(session: &mut Session, clock: Clock) {
    if session.owes_nothing() {
        session.set_checkpoint_ms(clock.unix_ms);
    }
}
