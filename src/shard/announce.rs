//! What a shard tells its peers about its subscriptions, and what waits for their answers:
//! interest announcements and withdrawals, shared-group joins and leaves, late matches,
//! and the SUBACK/UNSUBACK (with its retained messages) held until every peer applied the
//! change.

use super::*;

/// A SUBACK or UNSUBACK, held until every peer applied the subscription change, and the
/// retained messages the new subscriptions get after it.
pub(super) struct HeldAnswer {
    pub(super) link: Rc<Link>,
    pub(super) version: ProtocolVersion,
    pub(super) packet: Packet,
    pub(super) retained: Vec<RetainedCopy>,
}

/// A retained message for a new subscription: at what QoS, under which identifier.
pub(super) struct RetainedCopy {
    pub(super) message: Arc<Message>,
    pub(super) qos: QoS,
    pub(super) identifier: Option<u32>,
}

impl Shard {
    /// Joins here and tells every peer; a non-zero `request` collects their answers.
    pub(super) fn broadcast_share_join(
        &mut self,
        group: Bytes,
        filter: Bytes,
        client_id: Bytes,
        granted: QoS,
        request: Option<RequestId>,
        now: Instant,
    ) {
        self.broadcast(
            || MeshMessage::ShareJoin { group: group.clone(), filter: filter.clone(), client_id: client_id.clone(), granted, request },
            now,
        );
        self.expect_answers_from_all_peers(request);
        if self.shared.join(group.clone(), filter.clone(), self.id, client_id, granted) {
            self.export_shared(group, filter, true);
        }
    }

    pub(super) fn broadcast_share_leave(
        &mut self,
        group: Bytes,
        filter: Bytes,
        client_id: Bytes,
        request: Option<RequestId>,
        now: Instant,
    ) {
        self.broadcast(
            || MeshMessage::ShareLeave { group: group.clone(), filter: filter.clone(), client_id: client_id.clone(), request },
            now,
        );
        self.expect_answers_from_all_peers(request);
        if self.shared.leave(&group, &filter, self.id, &client_id) {
            self.export_shared(group, filter, false);
        }
    }

    pub(super) fn expect_answers_from_all_peers(&mut self, request: Option<RequestId>) {
        if let Some(request) = request {
            self.barriers.expect(request, self.shard_count - 1);
        }
    }

    /// Counts a new local subscription to `filter`; the first one here is announced to
    /// every peer under `request`. Returns the request whose answers make it known everywhere.
    /// `since`: when the client subscribed, for a new subscription (not a session moving in).
    pub(super) fn add_interest(&mut self, filter: &Bytes, request: RequestId, since: Option<Instant>, now: Instant) -> RequestId {
        match self.interest.add_local(filter) {
            LocalAdd::AnnouncedBy(earlier) => earlier,
            LocalAdd::Announce => {
                let filter = detach(filter);
                self.broadcast(|| MeshMessage::InterestJoin { filter: filter.clone(), request: Some(request), since }, now);
                self.expect_answers_from_all_peers(Some(request));
                self.export_interest(&filter, true);
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
    pub(super) fn send_late_matches(&mut self, to: ShardId, filter: &Bytes, since: Instant, now: Instant) {
        let bit = 1u128 << to.0;
        let late: Vec<Arc<Message>> = self
            .streams
            .recent
            .own_since(self.id, since)
            .filter(|entry| entry.sent_to & bit == 0 && filter_matches(filter, &entry.message.topic))
            .map(|entry| entry.message.clone())
            .collect();
        // Oldest first, as they were published.
        for message in late.into_iter().rev() {
            self.counters.late_matches_sent += 1;
            self.send(to, MeshMessage::LateMatch { filter: filter.clone(), message }, now);
        }
    }

    /// Withdraws the filters no local subscription has used since the last tick.
    pub(super) fn withdraw_unused_interest(&mut self, now: Instant) {
        for filter in self.interest.take_unused() {
            self.export_interest(&filter, false);
            self.broadcast(|| MeshMessage::InterestLeave { filter: filter.clone() }, now);
        }
    }

    /// Tells `to` that its request is applied here (no answer for request 0).
    pub(super) fn answer(&mut self, to: ShardId, request: Option<RequestId>, now: Instant) {
        if let Some(request) = request {
            self.send(to, MeshMessage::Applied { request, position: self.streams.sequence }, now);
        }
    }

    pub(super) fn applied(&mut self, request: RequestId, from: ShardId, position: u64, now: Instant) {
        if let Some(positions) = self.barriers.answered(request, from, position)
            && self.registry.moving.contains_key(&request)
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
    pub(super) fn answer_when_applied(
        &mut self,
        needs: Vec<RequestId>,
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

    pub(super) fn send_held_answer(&mut self, held: HeldAnswer, now: Instant) {
        held.link.answer_released();
        write_packet(&held.link, held.version, &held.packet);
        let Some(key) = self.client_of(&held.link) else { return };
        self.queue_retained(key, held.retained, now);
    }
}
