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

    pub(super) fn fill_window(&mut self, key: ClientKey, link: &Link, now: Instant) {
        let mut outgoing = std::mem::take(&mut self.scratch.outgoing);
        let delivered = {
            let client = self.clients.get_mut(key);
            client.session.fill_window(now, &mut outgoing);
            outgoing.len() as u64
        };
        self.counters.messages_delivered += delivered;
        let client = self.clients.get_mut(key);
        let version = client.version;
        for packet in outgoing.drain(..) {
            write_outgoing(link, version, &packet, now, &mut client.aliases_out);
        }
        self.scratch.outgoing = outgoing;
        self.release_publishers_if_drained(key, now);
        self.drain_retained(key, now);
    }

    pub(super) fn handle_publish(&mut self, key: ClientKey, link: &Link, mut publish: Publish, now: Instant) -> Result<(), CloseReason> {
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
        } else if publish.retain && !publish.payload.is_empty() && self.retained_store_full(&publish.topic) {
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
            if shared.is_some() && !self.limits.features.shared_subscriptions {
                codes.push(if version.is_v5() { ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            if shared.is_some() && options.no_local {
                // MQTT 5.0 3.8.3.1: no-local on a shared subscription is a protocol error.
                return Err(CloseReason::NoLocalOnSharedSubscription);
            }
            let matched_filter = shared.as_ref().map_or(&filter[..], |(_, inner)| &inner[..]);
            if !self.limits.features.wildcard_subscriptions && matched_filter.iter().any(|&b| b == b'+' || b == b'#') {
                codes.push(if version.is_v5() { ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            if !self.auth.may_subscribe(&filter) {
                codes.push(if version.is_v5() { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            let subscriptions = &self.clients.get(key).session.subscriptions;
            if subscriptions.len() >= self.limits.subscriptions_per_client_max && !subscriptions.contains_key(&filter[..]) {
                // A new filter past the client's bound (a replaced one is fine).
                self.counters.subscriptions_refused_quota += 1;
                codes.push(if version.is_v5() { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            // Granted QoS never exceeds the server's maximum.
            let options = SubscriptionOptions { qos: options.qos.min(self.limits.features.qos_max), ..options };
            let subscription = Subscription { options, identifier };
            if let Some((group, inner)) = shared {
                // Retained messages are not sent to a shared subscription (5.0 4.8.2).
                self.client(key).session.subscriptions.insert(detach(&filter), subscription);
                let client_id = self.client(key).session.client_id().clone();
                self.broadcast_share_join(group, inner, client_id, options.qos, Some(request), now);
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
                    self.broadcast_share_leave(group, inner, client_id, Some(request), now);
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
}
