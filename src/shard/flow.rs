//! Flow control, in one place: what pauses a publisher, what is dropped, what is
//! disconnected. In this order:
//!
//! 1. **Pause** (the only back-pressure MQTT allows: leave a socket unread). A QoS 1/2
//!    PUBLISH is held unread, with everything behind it on that connection, while
//!    - a peer shard's outbox is at `--mesh-outbox-max-messages` (every publisher on this
//!      shard; counted in `publishes_held_for_mesh`), or
//!    - a subscriber it feeds has a full queue (`--queued-messages-max`): the
//!      subscriber's shard sends `PausePublisher` to the publisher's shard and, once the
//!      queue is below half its bound, `ResumePublisher` (`publishers_paused`).
//!
//!    Only PUBLISH packets wait: a client's acknowledgements are never held behind a pause
//!    they cannot end, and a client whose own queue is full is never paused (its acks,
//!    behind its next PUBLISH, are what drains it). So an acknowledged QoS 1/2 message for
//!    an online subscriber is queued, never dropped, on default flags.
//! 2. **Drop**, each counted: QoS 0 to a subscriber with `--outbound-buffer-max-bytes`
//!    unwritten (`qos0_dropped_slow_subscriber`); QoS 0 to an offline session, and QoS 1/2
//!    to a full offline queue by `--queue-full-policy` (`session_queue_drops`); QoS 1/2 to
//!    an online queue past its hard bound, `SessionLimits::queued_hard_max` (messages still
//!    in flight when the pause went out), also `session_queue_drops`.
//! 3. **Disconnect**: a subscriber whose queue stays full for `--slow-subscriber-timeout-s`
//!    (5.0: DISCONNECT 0x97 Quota exceeded), so one stuck client cannot stall its topic for
//!    everyone; its session then queues offline under the bound
//!    (`slow_subscriber_disconnects`).
//!
//! Retained messages for a new subscription are streamed, not poured: they wait in the
//! client's backlog and go out as its output drains and its queue has room, so every
//! matching retained message arrives whatever the buffer and queue bounds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;

use super::link::Link;
use super::{ClientKey, MeshMessage, RetainedCopy, Shard, ShardId, close_with_reason};
use crate::protocol::{QoS, ReasonCode};
use crate::session::CopyFor;

/// Retained QoS 1/2 messages moved from a client's backlog into its session queue at a
/// time; more follow as the window drains it.
const RETAINED_QUEUED_BATCH: usize = 64;

impl Shard {
    /// Reader side, before a PUBLISH of `qos` from `link` is handed over: `Pending` while
    /// it must wait (see the module comment).
    pub fn poll_publish_allowed(&mut self, link: &Link, qos: QoS, cx: &mut Context<'_>) -> Poll<()> {
        if link.is_closing() {
            link.set_waiting_to_publish(false);
            return Poll::Ready(());
        }
        let paused = qos != QoS::AtMostOnce && link.is_paused();
        // A client owed acknowledgements for messages sent to it is not held: its PUBACKs
        // are queued behind this PUBLISH, and they are what frees memory.
        let memory_critical = self.memory.level() == super::MemoryLevel::Critical
            && self.client_of(link).is_none_or(|key| self.clients.get(key).session.inflight_len() == 0);
        if !self.congested() && !paused && !memory_critical {
            link.set_waiting_to_publish(false);
            return Poll::Ready(());
        }
        if memory_critical {
            if !link.is_waiting_to_publish() {
                self.counters.publishes_held_for_memory += 1;
            }
            self.memory.wait_for_relief(cx.waker());
        }
        if self.congested() {
            if !link.is_waiting_to_publish() {
                self.counters.publishes_held_for_mesh += 1;
            }
            self.outboxes.wake_when_uncongested(cx.waker());
        }
        link.register_reader(cx.waker());
        link.set_waiting_to_publish(true);
        Poll::Pending
    }

    /// A QoS 1/2 message was queued for the online client `key` at or past its bound:
    /// pause the publisher (on `source`, its shard) until the queue drains.
    pub(super) fn subscriber_queue_full(&mut self, key: ClientKey, source: Option<ShardId>, publisher: Option<&Bytes>, now: Instant) {
        let client = self.client(key);
        if client.stalled_since.is_none() {
            client.stalled_since = Some(now);
            if let Some(link) = &client.link {
                link.set_queue_full(true);
            }
        }
        let (Some(source), Some(publisher)) = (source, publisher) else { return };
        // A set: with many publishers feeding one stalled subscriber, each further message
        // costs one lookup, not a scan of every publisher paused so far.
        if publisher == client.session.client_id() || !client.paused_publishers.insert((source, publisher.clone())) {
            return;
        }
        self.send(source, MeshMessage::PausePublisher { client_id: publisher.clone() }, now);
    }

    /// The queue of `key` drained below half its bound, or the client went away: let its
    /// publishers go on.
    pub(super) fn release_publishers(&mut self, key: ClientKey, now: Instant) {
        let client = self.client(key);
        if client.stalled_since.take().is_none() {
            return;
        }
        if let Some(link) = &client.link {
            link.set_queue_full(false);
        }
        for (shard, client_id) in std::mem::take(&mut client.paused_publishers) {
            self.send(shard, MeshMessage::ResumePublisher { client_id }, now);
        }
    }

    /// After the window moved: release the publishers if the queue drained enough.
    pub(super) fn release_publishers_if_drained(&mut self, key: ClientKey, now: Instant) {
        let client = self.client(key);
        if client.stalled_since.is_some() && client.session.may_resume_publishers() {
            self.release_publishers(key, now);
        }
    }

    /// Publisher's shard: a subscriber elsewhere (or here) asks `client_id` to pause.
    pub(super) fn on_pause_publisher(&mut self, client_id: &Bytes) {
        if let Some(link) = self.live_link_of(client_id)
            && link.pause()
        {
            self.counters.publishers_paused += 1;
        }
    }

    pub(super) fn on_resume_publisher(&mut self, client_id: &Bytes) {
        if let Some(link) = self.live_link_of(client_id) {
            link.resume();
        }
    }

    fn live_link_of(&self, client_id: &Bytes) -> Option<std::rc::Rc<Link>> {
        let key = self.clients.key_of(client_id)?;
        self.clients.get(key).link.clone()
    }

    pub(super) fn disconnect_slow_subscriber(&mut self, key: ClientKey, now: Instant) {
        self.counters.slow_subscriber_disconnects += 1;
        let client = self.client(key);
        tracing::info!(client_id = %String::from_utf8_lossy(client.session.client_id()), "disconnecting a subscriber whose queue stayed full");
        if let Some(link) = client.link.clone() {
            close_with_reason(&link, client.version, ReasonCode::QUOTA_EXCEEDED);
        }
        self.client_lost(key, "queue stayed full (--slow-subscriber-timeout-s)", now);
    }

    /// The client left (went offline, or its session left this shard): its queue keeps to
    /// the offline bound and nobody stays paused on its behalf.
    /// `offline`: it stays here without a connection (a session moving on keeps its queue).
    pub(super) fn settle_flow_of_leaving_client(&mut self, key: ClientKey, offline: bool, now: Instant) {
        self.release_publishers(key, now);
        let client = self.client(key);
        let dropped = if offline { client.session.trim_to_offline_bound() as u64 } else { 0 };
        // Retained messages not yet streamed: the QoS 1/2 ones are owed to a session that
        // goes on, so they join its queue (under the offline bound); QoS 0 ones lapse.
        let backlog = client.retained_backlog.take();
        self.counters.session_queue_drops += dropped;
        for RetainedCopy { message, qos, identifier } in backlog.into_iter().flat_map(|backlog| *backlog) {
            if qos != QoS::AtMostOnce {
                let copy = CopyFor::new(qos, true, identifier.into_iter().collect());
                self.deliver_to(key, &message, copy, None, now);
            }
        }
    }

    /// Retained messages for a new subscription, after its SUBACK: streamed from here.
    pub(super) fn queue_retained(&mut self, key: ClientKey, retained: Vec<RetainedCopy>, now: Instant) {
        if retained.is_empty() {
            return;
        }
        let client = self.client(key);
        client.retained_backlog.get_or_insert_with(|| Box::new(VecDeque::new())).extend(retained);
        self.drain_retained(key, now);
    }

    /// Sends what the client's output and queue have room for from its retained backlog.
    pub(super) fn drain_retained(&mut self, key: ClientKey, now: Instant) {
        let outbound_limit = self.limits.outbound_buffer_bytes_max;
        loop {
            let client = self.client(key);
            // Called after every acknowledgement: nothing to stream is the common case.
            let Some(backlog) = client.retained_backlog.as_mut() else { return };
            let Some(link) = client.link.clone() else { return };
            let Some(next) = backlog.front() else {
                client.retained_backlog = None;
                link.set_wants_drained(false);
                return;
            };
            let room = if next.qos == QoS::AtMostOnce {
                link.buffered_bytes() < outbound_limit
            } else {
                client.session.queued_len() < RETAINED_QUEUED_BATCH
            };
            if !room {
                // QoS 0 waits for the writer (`output_drained`); QoS 1/2 for acknowledgements.
                link.set_wants_drained(next.qos == QoS::AtMostOnce);
                return;
            }
            let Some(RetainedCopy { message, qos, identifier }) = backlog.pop_front() else { return };
            if message.is_expired(now) {
                self.forget_expired_retained(&message);
                continue;
            }
            let copy = CopyFor::new(qos, true, identifier.into_iter().collect());
            self.deliver_to(key, &message, copy, None, now);
        }
    }

    /// The writer wrote everything buffered for `link`: stream more retained messages.
    pub fn output_drained(&mut self, link: &Link, now: Instant) {
        if let Some(key) = self.client_of(link) {
            self.drain_retained(key, now);
        }
    }

    /// A retained message whose expiry passed is no longer its topic's message (unless a
    /// newer one replaced it meanwhile).
    fn forget_expired_retained(&mut self, message: &Arc<crate::session::Message>) {
        self.retained.forget(message);
    }
}
