//! Sessions across shards. The kernel places a connection on any shard; each client id has
//! a home shard (`home_shard`) holding the registry entry that says which connection owns
//! it. CONNECT claims the id at home; home either grants it or tells the previous owner to
//! evict: that shard closes the old connection (publishing its will) and hands the session,
//! with its position in every shard's publish stream (the *cut*), to the new connection's
//! shard, which replays from its recent-publish log what it applied after the cut
//! (`catch_up`) and skips what arrives later but was before it.

use super::*;

/// The client ids this shard is home for (which connection owns each), and the sessions
/// leaving this shard, kept until every peer holds their new shard on receive-all.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) owners: HashMap<Bytes, ConnId>,
    pub(super) moving: HashMap<RequestId, MovingSession>,
}

/// A session leaving this shard, kept (and fed) here until every other shard has applied
/// the receive-all hold for its new shard.
pub(super) struct MovingSession {
    pub(super) client_id: Bytes,
    pub(super) previous: ConnId,
    pub(super) next: ConnId,
}

/// What a claim says besides the id and connection (what the cluster needs to know).
#[derive(Debug, Clone, Copy)]
pub(super) struct ClaimKind {
    /// The session outlives the connection.
    pub(super) keeps_session: bool,
    /// The broker made the id up.
    pub(super) assigned: bool,
}

/// The shard that holds the registry entry for `client_id` (FNV-1a, stable in a process).
pub fn home_shard(client_id: &[u8], shard_count: usize) -> ShardId {
    let hash = client_id.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    ShardId((hash % shard_count as u64) as usize)
}

impl Shard {
    /// Home shard: `conn` claims `client_id`. Claims are answered in arrival order, so two
    /// racing CONNECTs end with the later one owning the id and the earlier one evicted.
    pub(super) fn on_claim(&mut self, client_id: Bytes, conn: ConnId, clean_start: bool, kind: ClaimKind, now: Instant) {
        if self.claim_needs_cluster(&client_id, conn, clean_start, kind) {
            return;
        }
        self.grant_claim(client_id, conn, clean_start, None, now);
    }

    /// `on_claim` once the id is this node's: grant it (with the session another node
    /// handed over, if any), or evict the connection that held it.
    pub(super) fn grant_claim(&mut self, client_id: Bytes, conn: ConnId, clean_start: bool, handed: Option<Bytes>, now: Instant) {
        match self.registry.owners.insert(client_id.clone(), conn) {
            None => {
                let session = handed.and_then(|bytes| self.session_from_node(&client_id, &bytes));
                self.send(conn.shard(), MeshMessage::Granted { conn, session }, now)
            }
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
    pub(super) fn on_evict(&mut self, client_id: Bytes, previous: ConnId, next: ConnId, clean_start: bool, now: Instant) {
        // Interleaving: home granted `previous` via an eviction elsewhere, then got `next`'s
        // claim; the Handoff for `previous` (from the third shard) can arrive here after this
        // Evict (from home). Finish `previous` first, then evict it.
        if let Some(pending) = self.connecting.pending.get_mut(&previous) {
            pending.deferred_eviction = Some((next, clean_start));
            return;
        }
        let key = match self.clients.key_of(&client_id) {
            Some(key) if self.client(key).conn_id == previous => key,
            _ => {
                let cut = self.streams.seen.clone().into_boxed_slice();
                self.send(next.shard(), MeshMessage::Handoff { conn: next, session: None, cut, receive_all_held: false }, now);
                return;
            }
        };
        let (continued, link) = self.close_taken_over(key, &client_id, clean_start, now);
        if let Some(link) = link {
            tracing::info!(
                client_id = %String::from_utf8_lossy(&client_id),
                address = %link.peer_label(),
                shard = self.id.0,
                new_shard = next.shard().0,
                session_continues = continued,
                "client taken over by a new connection with its client id"
            );
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
        self.expect_answers_from_all_peers(Some(request));
        // `next` is on another shard, so at least that shard answers: `applied` finishes.
        self.registry.moving.insert(request, MovingSession { client_id, previous, next });
    }

    /// A connection whose client id a new one took: closed with 0x8E (5.0), the wills
    /// now due published. Returns whether the session continues (neither side asked for a
    /// clean one), and the closed link, for the caller's log line.
    pub(super) fn close_taken_over(
        &mut self,
        key: ClientKey,
        client_id: &Bytes,
        clean_start: bool,
        now: Instant,
    ) -> (bool, Option<Rc<Link>>) {
        self.counters.takeovers += 1;
        let client = self.client(key);
        let version = client.version;
        let link = client.link.take();
        let taken = client.lifecycle.taken_over(clean_start, link.is_some());
        let conn = client.conn_id;
        if let Some(link) = &link {
            close_with_reason(link, version, ReasonCode::SESSION_TAKEN_OVER);
        }
        self.withdraw_will(client_id, conn);
        for will in taken.wills_now {
            self.publish_will(*will, client_id.clone(), now);
        }
        (taken.continued, link)
    }

    /// Every other shard holds `next`'s shard on receive-all: let the session go.
    pub(super) fn finish_move(&mut self, request: RequestId, positions: Vec<u64>, now: Instant) {
        let Some(moving) = self.registry.moving.remove(&request) else { return };
        match self.clients.key_of(&moving.client_id) {
            Some(key) if self.client(key).conn_id == moving.previous => self.hand_over(key, moving.next, true, Some(&positions), now),
            _ => {
                debug_assert!(false, "a moving session stays until it is handed over");
                let cut = self.streams.seen.clone().into_boxed_slice();
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
    pub(super) fn hand_over(&mut self, key: ClientKey, next: ConnId, continued: bool, held_at: Option<&[u64]>, now: Instant) {
        let client = self.remove_client(key, now);
        let mut cut: StreamCut = self.streams.seen.clone().into_boxed_slice();
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
            self.session_ended(&mut session);
            self.hand_shared_to_other_members(&mut session, now);
        }
        let handoff = MeshMessage::Handoff { conn: next, session: handed, cut, receive_all_held: held_at.is_some() };
        self.send(next.shard(), handoff, now);
    }

    /// Delivers to a handed-over session the publishes this shard applied after the old
    /// owner's cut, and skips the ones at or before it that are still on their way here.
    pub(super) fn catch_up(&mut self, key: ClientKey, cut: StreamCut, now: Instant) {
        let (entries, gap) = self.streams.recent.since(&cut);
        let mut missed: Vec<(Arc<Message>, CopyFor)> = Vec::new();
        let session = &self.clients.get(key).session;
        for entry in entries {
            // Shared copies are not replayed: each went to the member chosen at its origin.
            if let Some(delivery) = session.own_delivery(&entry.message) {
                missed.push((entry.message.clone(), delivery.copy_of(&entry.message)));
            }
        }
        if gap {
            self.counters.takeover_replay_gaps += 1;
            tracing::warn!(
                shard = self.id.0,
                "session handoff could not replay every publish; raise --recent-publishes-max / --recent-publish-bytes-max"
            );
        }
        for (message, copy) in missed {
            self.deliver_to(key, &message, copy, None, now);
        }
        if cut.iter().zip(&self.streams.seen).any(|(cut_at, seen_at)| cut_at > seen_at) {
            self.client(key).skip_until = Some(cut);
        }
    }
}
