//! Routing and delivery: a publish is applied here and sent to the peers that may deliver
//! it; each shard matches it against its trie and offers one copy per client to its
//! session (shared-subscription members, late matches and wills included), writing what
//! the session sends at once.

use super::*;

pub(super) fn write_outgoing(link: &Link, version: ProtocolVersion, outgoing: &Outgoing, now: Instant, aliases: &mut OutboundAliases) {
    match outgoing {
        Outgoing::Publish { packet_id, qos, dup, retain, subscription_ids, message } => {
            let publish = PublishRef { packet_id: *packet_id, qos: *qos, retain: *retain, subscription_ids, message };
            write_publish_ref(link, version, publish, *dup, now, aliases);
        }
        Outgoing::PubRel(packet_id) => link.write_with(|buf| Packet::PubRel(Ack::new(*packet_id)).encode(version, buf)),
    }
}

pub(super) fn write_publish_ref(
    link: &Link,
    version: ProtocolVersion,
    publish: PublishRef<'_>,
    dup: bool,
    now: Instant,
    aliases: &mut OutboundAliases,
) {
    let PublishRef { packet_id, qos, retain, subscription_ids, message } = publish;
    link.write_with(|buf| {
        let mut header = PublishHeader { dup, qos, retain, packet_id, topic_alias: None };
        if version.is_v5() {
            let mut properties = message.properties_at(now);
            set_subscription_identifiers(&mut properties, subscription_ids);
            let (topic, alias) = aliases.resolve(&message.topic);
            header.topic_alias = alias;
            write_publish(buf, version, header, topic, &properties, &message.payload)
        } else {
            write_publish(buf, version, header, &message.topic, &message.properties, &message.payload)
        }
    })
}

/// A recipient's matching subscription identifiers (5.0) in the properties written to it;
/// the message's own are borrowed unchanged when there are none.
fn set_subscription_identifiers(properties: &mut std::borrow::Cow<'_, Properties>, subscription_ids: &[u32]) {
    if !subscription_ids.is_empty() {
        let identifiers = &mut properties.to_mut().subscription_identifiers;
        identifiers.clear();
        identifiers.extend_from_slice(subscription_ids);
    }
}

/// The message a will becomes when it is sent at `now`.
pub(super) fn will_message(will: Will, publisher: Bytes, now: Instant) -> Message {
    let expires_at = will.properties.message_expiry_interval.map(|seconds| now + Duration::from_secs(u64::from(seconds)));
    let mut properties = will.properties;
    // The delay is the will's, not the message's: a PUBLISH may not carry it.
    properties.will_delay_interval = None;
    Message {
        expires_at,
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: properties.into(),
        publisher: Some(publisher),
    }
}

impl Shard {
    /// Whether a retained message would take the store past `--retained-messages-max`
    /// or `--retained-bytes-max`.
    pub(super) fn retained_store_full(&self, topic: &[u8], payload_bytes: usize) -> bool {
        self.retained.would_exceed(topic, payload_bytes, self.limits.retained_messages_max, self.limits.retained_bytes_max)
    }

    pub(super) fn publish_will(&mut self, will: Will, publisher: Bytes, now: Instant) {
        if validate_topic_name(&will.topic).is_err() {
            return;
        }
        let message = will_message(will, publisher, now);
        self.publish_as_will(Arc::new(message), now);
    }

    /// Publishes `message` as a will sent by this shard (a client's, or a dead node's).
    pub(super) fn publish_as_will(&mut self, message: Arc<Message>, now: Instant) {
        self.counters.wills_published += 1;
        self.export_publish(&message);
        self.route(message, now);
    }

    /// A message published on this shard: applied here, and sent to the peers that may
    /// deliver it (every peer for a retained message or with `--routing broadcast`).
    /// Returns false when nobody anywhere subscribes to it.
    pub(super) fn route(&mut self, message: Arc<Message>, now: Instant) -> bool {
        self.streams.sequence += 1;
        let sequence = self.streams.sequence;
        self.streams.seen[self.id.0] = sequence;
        // In a cluster, NATS picks each group's member among the nodes (`cluster.rs`).
        let shared = if self.cluster.is_some() { Vec::new() } else { self.shared.choose(&message.topic) };
        let mut targets = std::mem::take(&mut self.scratch.route_targets);
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
        // One bit per peer; `SHARDS_MAX` keeps every shard within the 128 bits.
        let mut sent_to = 0u128;
        for (peer, _) in targets.iter().enumerate().filter(|&(peer, &target)| target && peer != here) {
            self.send(ShardId(peer), MeshMessage::Publish { sequence, message: message.clone(), shared: shared.clone() }, now);
            sent_to |= 1 << peer;
        }
        self.scratch.route_targets = targets;
        self.streams.last_routed = (sequence, sent_to);
        subscribed | self.apply_publish(self.id, sequence, &message, &shared, sent_to, now)
    }

    /// Updates the retained replica and delivers to the local subscribers: each client
    /// once, at the highest QoS any of its matching subscriptions granted. True if any
    /// local subscription matched.
    /// `sent_to`: for this shard's own publishes, the peers `route` sent it to.
    pub(super) fn apply_publish(
        &mut self,
        source: ShardId,
        sequence: u64,
        message: &Arc<Message>,
        shared: &[SharedTarget],
        sent_to: u128,
        now: Instant,
    ) -> bool {
        if message.retain {
            self.retained.apply(message);
        }
        if self.shard_count > 1 {
            self.streams.recent.push(RecentPublish { source, sequence, message: message.clone(), at: now, sent_to });
        }
        let mut matches = std::mem::take(&mut self.scratch.matches);
        let generation = self.subscriptions.generation();
        if self.scratch.matches_generation != Some(generation) || self.scratch.matches_topic != message.topic {
            matches.clear();
            let mut lists = 0;
            self.subscriptions.for_each_matching_list(&message.topic, |list| {
                matches.extend_from_slice(list);
                lists += 1;
            });
            // A client with several matching subscriptions gets one copy: sorting brings
            // its entries together. Within one list every client is there once, so the
            // common case (one filter matched, 1,000 subscribers) needs no sort.
            if lists > 1 {
                matches.sort_unstable_by_key(|entry| entry.0);
            }
            self.scratch.matches_topic.clear();
            self.scratch.matches_topic.extend_from_slice(&message.topic);
            // Taken before delivering: a delivery that changes the trie (a client closed
            // for its queue) moves the generation on, and the next publish walks again.
            self.scratch.matches_generation = Some(generation);
        }
        let matched = !matches.is_empty();
        for same_client in matches.chunk_by(|a, b| a.0 == b.0) {
            let key = same_client[0].0;
            // Only a no-local subscription asks who published: comparing client ids for
            // every recipient cost two cache misses each (the client, its id's bytes).
            let own_message = same_client.iter().any(|(_, subscription)| subscription.options.no_local) && self.is_publisher(key, message);
            if let Some(delivery) = merge_matching(same_client.iter().map(|(_, subscription)| subscription), own_message) {
                self.deliver_to(key, message, delivery.copy_of(message), Some((source, sequence)), now);
            }
        }
        self.scratch.matches = matches;
        let here = self.id;
        for target in shared.iter().filter(|target| target.shard == here) {
            self.deliver_shared(target, message, Some((source, sequence)), true, now);
        }
        self.scratch.layouts.release();
        matched
    }

    /// The member chosen at the origin, or, if it has left this shard meanwhile (moved or
    /// unsubscribed), another member of the group here; with none here, once, the group's
    /// next member wherever it is (`may_forward`). Only then is the message counted as
    /// missed for that group.
    pub(super) fn deliver_shared(
        &mut self,
        target: &SharedTarget,
        message: &Arc<Message>,
        origin: Option<(ShardId, u64)>,
        may_forward: bool,
        now: Instant,
    ) {
        let member = match self.clients.key_of(&target.client_id) {
            Some(key) if self.holds_shared(key, target) => Some((key, target.granted)),
            _ => self
                .shared
                .local_member(&target.group, &target.filter, self.id, &target.client_id)
                .and_then(|(client_id, granted)| self.clients.key_of(&client_id).map(|key| (key, granted))),
        };
        match member {
            Some((key, granted)) => {
                let qos = granted.min(message.qos);
                // Only a QoS 1/2 copy can be left unacknowledged and go to another member.
                let copy = if qos == QoS::AtMostOnce {
                    CopyFor::at(qos)
                } else {
                    CopyFor::through(qos, SharedRoute { group: target.group.clone(), filter: target.filter.clone() })
                };
                self.deliver_to(key, message, copy, origin, now)
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
    pub(super) fn hand_shared_to_other_members(&mut self, session: &mut Session, now: Instant) {
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

    /// A publish that went past this shard before a subscription here to `filter` was
    /// known at its origin: for the clients subscribed to exactly that filter.
    pub(super) fn deliver_late_match(&mut self, filter: &Bytes, message: &Arc<Message>, now: Instant) {
        let mut keys = Vec::new();
        self.subscriptions.for_each_match(&message.topic, |key, _| keys.push(*key));
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let client = self.clients.get(key);
            let Some(subscription) = client.session.subscription(filter).copied() else { continue };
            let own_message = self.is_publisher(key, message);
            if let Some(delivery) = merge_matching(std::iter::once(&subscription), own_message) {
                self.deliver_to(key, message, delivery.copy_of(message), None, now);
            }
        }
    }

    /// Whether `key` still holds the shared subscription `target` was chosen for.
    pub(super) fn holds_shared(&self, key: ClientKey, target: &SharedTarget) -> bool {
        let text = Filter::Shared { group: target.group.clone(), filter: target.filter.clone() }.text();
        self.clients.find(key).is_some_and(|client| client.session.subscription(&text).is_some())
    }

    pub(super) fn is_publisher(&self, key: ClientKey, message: &Message) -> bool {
        let client = self.clients.get(key);
        message.publisher.as_ref() == Some(client.session.client_id())
    }

    pub(super) fn deliver_to(
        &mut self,
        key: ClientKey,
        message: &Arc<Message>,
        copy: CopyFor,
        origin: Option<(ShardId, u64)>,
        now: Instant,
    ) {
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
        let outbound_limit = self.limits.outbound_buffer_bytes_max;
        let client = self.clients.get_mut(key);
        if let Some(authorization) = client.authorization.as_mut()
            && !authorization.may_read(&message.topic)
        {
            // The ACL file does not let this client read the topic, whichever of its
            // filters matched (retained deliveries included).
            self.counters.deliveries_denied += 1;
            return;
        }
        if let (Some(skip), Some((source, sequence))) = (&client.skip_until, origin)
            && sequence <= skip[source.0]
        {
            return;
        }
        let link = client.link.as_ref().filter(|link| !link.is_closing());
        // Recipients with neither subscription identifiers nor outbound aliases share one
        // encoding per layout (see `layouts.rs`).
        let shares_layout = copy.subscription_ids().is_empty() && !client.connection.takes_outbound_aliases();
        let outbound_packet_bytes_max = client.connection.outbound_packet_bytes_max();
        let oversize = outbound_packet_bytes_max != u32::MAX && {
            let wire_len = if shares_layout {
                self.scratch.layouts.get(message, client.version, qos, retain, now).len()
            } else {
                let mut properties = std::borrow::Cow::Borrowed(&*message.properties);
                set_subscription_identifiers(&mut properties, copy.subscription_ids());
                // Counted with an alias property, in case this delivery assigns one.
                let topic_alias = client.connection.takes_outbound_aliases().then_some(1);
                let header = PublishHeader { dup: false, qos, retain, packet_id: None, topic_alias };
                publish_wire_len(client.version, &header, &message.topic, &properties, &message.payload)
            };
            wire_len > outbound_packet_bytes_max as usize
        };
        if oversize {
            // Larger than the client accepts: discarded for this client, as if sent (5.0 3.1.2.25).
            self.counters.oversize_drops += 1;
            return;
        }
        if qos == QoS::AtMostOnce && link.is_some_and(|link| link.buffered_bytes() >= outbound_limit) {
            self.counters.qos0_dropped_slow_subscriber += 1;
            return;
        }
        if qos == QoS::AtMostOnce && self.memory.level() >= MemoryLevel::Shedding {
            self.counters.qos0_dropped_memory += 1;
            return;
        }
        match client.session.offer(message, copy, link.is_some()) {
            Offer::Send(send) => {
                let link = link.expect("offers are sent only when online");
                if shares_layout {
                    let layout = self.scratch.layouts.get(message, client.version, send.qos, send.retain, now);
                    link.write_with(|buf| layout.write_to(buf, send.packet_id, false));
                } else {
                    write_publish_ref(link, client.version, send.publish_ref(message), false, now, client.connection.outbound_aliases());
                }
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
}
