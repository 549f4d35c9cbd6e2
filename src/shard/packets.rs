//! One handler per packet a client may send once connected: PUBLISH (with its refusals),
//! the acknowledgements, SUBSCRIBE and UNSUBSCRIBE, PINGREQ, DISCONNECT, AUTH.

use super::*;

impl Shard {
    /// One packet from an open link.
    pub fn handle_packet(&mut self, link: &Link, packet: Packet, now: Instant) -> Result<(), CloseReason> {
        let Some(key) = self.client_of(link) else {
            // Taken over or timed out while this packet was in the socket buffer.
            return Ok(());
        };
        let client = self.client(key);
        client.connection.touch(now);
        let version = client.version;
        match packet {
            Packet::Publish(publish) => self.handle_publish(key, link, publish, now)?,
            Packet::PubAck(ack) => self.retire_pubacks(key, link, [ack.packet_id], now)?,
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
                    client.lifecycle.set_expiry_on_disconnect(seconds).map_err(|_| CloseReason::SessionExpiryOnDisconnect)?;
                }
                if disconnect.reason != ReasonCode::DISCONNECT_WITH_WILL {
                    client.lifecycle.discard_will();
                }
                link.close();
                self.client_lost(key, "DISCONNECT", now);
            }
            Packet::Connect(_) => return Err(CloseReason::SecondConnect),
            Packet::Auth(auth) => self.reauthenticate(key, link, auth)?,
            server_only @ (Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp) => {
                return Err(CloseReason::ServerOnlyPacket(server_only.name()));
            }
        }
        Ok(())
    }

    /// A run of short PUBACKs from one link (`protocol::short_pubacks`, a subscriber's
    /// acknowledgements as they come in one read), taken as `handle_packet` takes each of
    /// them, with one client lookup and one refill of the window for the whole run.
    pub fn handle_short_pubacks(&mut self, link: &Link, run: &[u8], now: Instant) -> Result<(), CloseReason> {
        let Some(key) = self.client_of(link) else {
            // Taken over or timed out while these were in the socket buffer.
            return Ok(());
        };
        self.client(key).connection.touch(now);
        self.retire_pubacks(key, link, short_pubacks(run), now)
    }

    /// PUBACKs from `key`'s client, in the order sent: each ends its QoS 1 flow (one for a
    /// message owed a PUBREC is a protocol error), then the window takes what is queued.
    fn retire_pubacks(
        &mut self,
        key: ClientKey,
        link: &Link,
        ids: impl IntoIterator<Item = crate::protocol::PacketId>,
        now: Instant,
    ) -> Result<(), CloseReason> {
        let session = &mut self.client(key).session;
        for packet_id in ids {
            if session.on_puback(packet_id) == AckOutcome::WrongKind {
                return Err(CloseReason::WrongAcknowledgement("PUBACK"));
            }
        }
        self.fill_window(key, link, now);
        Ok(())
    }

    pub(super) fn fill_window(&mut self, key: ClientKey, link: &Link, now: Instant) {
        // After most acknowledgements there is nothing to do: nothing queued behind the
        // window, no publisher paused on this client, no retained messages to stream.
        let client = self.clients.get_mut(key);
        if client.session.queued_len() == 0 && client.stalled_since.is_none() && client.retained_backlog.is_none() {
            return;
        }
        let version = client.version;
        let aliases = client.connection.outbound_aliases();
        let mut delivered = 0;
        client.session.fill_window_with(now, |publish| {
            write_publish_ref(link, version, publish, false, now, aliases);
            delivered += 1;
        });
        self.counters.messages_delivered += delivered;
        self.release_publishers_if_drained(key, now);
        self.drain_retained(key, now);
    }

    pub(super) fn handle_publish(&mut self, key: ClientKey, link: &Link, mut publish: Publish, now: Instant) -> Result<(), CloseReason> {
        let alias_maximum = self.limits.topic_alias_maximum;
        if let Some(alias) = publish.properties.get_mut().and_then(|properties| properties.topic_alias.take()) {
            let topic = std::mem::take(&mut publish.topic);
            publish.topic =
                self.client(key).connection.resolve_inbound_alias(alias, topic, alias_maximum).map_err(|error| match error {
                    AliasError::OutOfRange => CloseReason::TopicAlias,
                    AliasError::Unknown => CloseReason::UnknownTopicAlias,
                })?;
        }
        validate_topic_name(&publish.topic).map_err(CloseReason::TopicName)?;
        if publish.qos > self.limits.features.qos_max {
            return Err(CloseReason::QosNotSupported);
        }
        if publish.retain && !self.limits.features.retain {
            return Err(CloseReason::RetainNotSupported);
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            // Only the server sends them (5.0 3.3.4).
            return Err(CloseReason::SubscriptionIdentifierFromClient);
        }
        self.counters.publishes_received += 1;
        self.memory_input(publish.topic.len() + publish.payload.len());
        let version = self.client(key).version;
        // Refusals that leave the connection open where the protocol can say so: a 5.0
        // QoS 1/2 PUBLISH gets the reason in its PUBACK/PUBREC.
        let refusal = if publish.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&publish.payload).is_err() {
            // The publisher said UTF-8 and it is not (5.0 3.3.2.3.2).
            Some((ReasonCode::PAYLOAD_FORMAT_INVALID, Some(CloseReason::PayloadFormatInvalid)))
        } else if let Some(error) = self.limits.topic_bound_exceeded(&publish.topic) {
            Some((ReasonCode::TOPIC_NAME_INVALID, Some(CloseReason::TopicName(error))))
        } else if is_broker_topic(&publish.topic) {
            // `$SYS/` is the broker's: dropped, as Mosquitto does; 5.0 hears why.
            self.counters.broker_topic_publishes_dropped += 1;
            Some((ReasonCode::NOT_AUTHORIZED, None))
        } else if self.clients.get_mut(key).authorization.as_mut().is_some_and(|authorization| !authorization.may_publish(&publish.topic)) {
            // The ACL file does not let this client write here: dropped (3.1.1 cannot say
            // why, as in Mosquitto), 5.0 hears 0x87.
            self.counters.publishes_denied_acl += 1;
            Some((ReasonCode::NOT_AUTHORIZED, None))
        } else if publish.qos != QoS::AtMostOnce && self.durability.as_ref().is_some_and(|durability| durability.is_failed()) {
            // The data directory cannot be written: refused rather than acknowledged and
            // lost (5.0 0x97; 3.1.1 can only close).
            self.counters.publishes_refused_storage += 1;
            Some((ReasonCode::QUOTA_EXCEEDED, Some(CloseReason::StorageFailed)))
        } else if publish.retain && !publish.payload.is_empty() && self.retained_store_full(&publish.topic, publish.payload.len()) {
            // A new retained topic past the store's bound: refused, not routed (5.0 0x97).
            // The origin decides, from its replica; every replica applies what it routes.
            self.counters.retained_refused_quota += 1;
            Some((ReasonCode::QUOTA_EXCEEDED, None))
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
                properties,
                publisher: Some(publisher),
            };
            // A retained message outlives this delivery: store it detached from the read block.
            let message = if message.retain { message.detached() } else { message };
            let message = Arc::new(message);
            self.export_publish(&message);
            // Another node may have subscribers: only a lone node knows there are none.
            subscribed = self.route(message, now) || self.is_clustered();
        }
        let reason = if subscribed { ReasonCode::SUCCESS } else { ReasonCode::NO_MATCHING_SUBSCRIBERS };
        if qos != QoS::AtMostOnce
            && let Some(durability) = self.durability.as_ref().filter(|durability| durability.holds_output())
        {
            // The acknowledgement waits until what the message did, here and on every
            // shard it went to, is on disk. A QoS 2 resend was stored the first time.
            link.hold_until(durability.ticket(is_new.then_some(self.streams.last_routed)));
        }
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => write_packet(link, version, &Packet::PubAck(Ack::with_reason(id, reason))),
            (QoS::ExactlyOnce, Some(id)) => write_packet(link, version, &Packet::PubRec(Ack::with_reason(id, reason))),
            _ => {}
        }
        Ok(())
    }

    pub(super) fn handle_subscribe(&mut self, key: ClientKey, link: &Link, subscribe: Subscribe, now: Instant) -> Result<(), CloseReason> {
        let version = self.client(key).version;
        let identifier = subscribe.properties.subscription_identifiers.first().copied();
        if identifier.is_some() && !self.limits.features.subscription_identifiers {
            return Err(CloseReason::SubscriptionIdentifiersNotSupported);
        }
        let request = self.barriers.new_request();
        // Requests whose announcements must be applied everywhere before the SUBACK.
        let mut needs = vec![request];
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained: Vec<RetainedCopy> = Vec::new();
        for (filter, options) in subscribe.filters {
            if validate_topic_filter(&filter).is_err() || self.limits.topic_bound_exceeded(&filter).is_some() {
                codes.push(if version.is_v5() { ReasonCode::TOPIC_FILTER_INVALID } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            let Ok(parsed) = Filter::parse(&filter) else {
                codes.push(if version.is_v5() { ReasonCode::TOPIC_FILTER_INVALID } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            };
            if parsed.is_shared() && !self.limits.features.shared_subscriptions {
                codes.push(if version.is_v5() { ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            if parsed.is_shared() && options.no_local {
                // MQTT 5.0 3.8.3.1: no-local on a shared subscription is a protocol error.
                return Err(CloseReason::NoLocalOnSharedSubscription);
            }
            if !self.limits.features.wildcard_subscriptions && parsed.matched().iter().any(|&b| b == b'+' || b == b'#') {
                codes.push(if version.is_v5() { ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            let acl_denies =
                self.clients.get(key).authorization.as_ref().is_some_and(|authorization| !authorization.may_subscribe(parsed.matched()));
            if acl_denies {
                self.counters.subscriptions_denied_acl += 1;
            }
            if acl_denies || !self.auth.may_subscribe(&filter) {
                codes.push(if version.is_v5() { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            let session = &self.clients.get(key).session;
            if session.subscription_count() >= self.limits.subscriptions_per_client_max && session.subscription(&filter).is_none() {
                // A new filter past the client's bound (a replaced one is fine).
                self.counters.subscriptions_refused_quota += 1;
                codes.push(if version.is_v5() { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            // Granted QoS never exceeds the server's maximum.
            let options = SubscriptionOptions { qos: options.qos.min(self.limits.features.qos_max), ..options };
            let subscription = Subscription { options, identifier };
            let shared = parsed.is_shared();
            let SubscriptionAdded { existed, wait_for } = self.add_subscription(key, parsed, subscription, request, now);
            needs.extend(wait_for);
            if shared {
                // Retained messages are not sent to a shared subscription (5.0 4.8.2).
                codes.push(ReasonCode(options.qos as u8));
                continue;
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
        let suback = SubAck { packet_id: subscribe.packet_id, properties: Default::default(), codes };
        self.answer_when_applied(needs, link, version, Packet::SubAck(suback), retained, now);
        Ok(())
    }

    pub(super) fn handle_unsubscribe(
        &mut self,
        key: ClientKey,
        link: &Link,
        unsubscribe: Unsubscribe,
        now: Instant,
    ) -> Result<(), CloseReason> {
        let version = self.client(key).version;
        let request = self.barriers.new_request();
        let mut codes = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            if let Err(error) = Filter::parse(filter) {
                // 5.0 answers per filter; 3.1.1 has no code for it, so the connection ends.
                if !version.is_v5() {
                    return Err(CloseReason::TopicFilter(error));
                }
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let existed = self.remove_subscription(key, filter, request, now);
            codes.push(if existed { ReasonCode::SUCCESS } else { ReasonCode::NO_SUBSCRIPTION_EXISTED });
        }
        let unsuback = UnsubAck { packet_id: unsubscribe.packet_id, properties: Default::default(), codes };
        self.answer_when_applied(vec![request], link, version, Packet::UnsubAck(unsuback), Vec::new(), now);
        Ok(())
    }
}
