//! The coarse per-shard timer: keep alive, session expiry, delayed wills, slow subscribers,
//! interest withdrawal, the periodic `$SYS` counters; and shutdown.

use super::*;

/// What the coarse timer found due for one client.
pub(super) enum TimerEvent {
    KeepAliveTimeout,
    /// Session expiry or a delayed will (see `session/lifecycle.rs`).
    Lifecycle(Due),
    /// The queue stayed full past `--slow-subscriber-timeout-s` (see `flow.rs`).
    SlowSubscriber,
}

impl Shard {
    /// The coarse timer: keep-alive expiry (1.5 x keep alive, MQTT 3.1.2.10) and the
    /// periodic `$SYS` counters.
    pub fn tick(&mut self, now: Instant) {
        self.send_wills_of_expired_sessions(now);
        self.refresh_checkpoints(now);
        self.write_changed_records();
        // One pass decides; the actions follow, since they add and remove clients.
        let mut due = Vec::new();
        let slow_subscriber_timeout = self.limits.slow_subscriber_timeout;
        for (key, client) in self.clients.iter() {
            if let Some(link) = &client.link {
                // A connection whose PUBLISH is held by back-pressure is not idle.
                if client.connection.keep_alive_expired(now) && !link.is_waiting_to_publish() {
                    due.push((key, TimerEvent::KeepAliveTimeout));
                } else if let (Some(timeout), Some(since)) = (slow_subscriber_timeout, client.stalled_since)
                    && now.duration_since(since) >= timeout
                {
                    due.push((key, TimerEvent::SlowSubscriber));
                }
            } else if let Some(lifecycle_due) = client.lifecycle.due(now) {
                due.push((key, TimerEvent::Lifecycle(lifecycle_due)));
            }
        }
        for (key, event) in due {
            match event {
                TimerEvent::KeepAliveTimeout => {
                    self.counters.keep_alive_timeouts += 1;
                    let client = self.client(key);
                    if let Some(link) = client.link.clone() {
                        close_with_reason(&link, client.version, ReasonCode::KEEP_ALIVE_TIMEOUT);
                    }
                    self.client_lost(key, "keep alive timeout", now);
                }
                TimerEvent::Lifecycle(Due::SessionExpired) => {
                    // Ending the session also sends a will still waiting for its delay.
                    self.counters.sessions_expired += 1;
                    self.end_session(key, now);
                }
                TimerEvent::SlowSubscriber => self.disconnect_slow_subscriber(key, now),
                TimerEvent::Lifecycle(Due::WillDelayOver) => {
                    let client = self.client(key);
                    let publisher = client.session.client_id().clone();
                    if let Some(will) = client.lifecycle.take_pending_will() {
                        self.publish_will(*will, publisher, now);
                    }
                    self.session_state_changed(key);
                }
            }
        }
        self.withdraw_unused_interest(now);
        if let (Some(due), Some(interval)) = (self.next_sys_publish, self.limits.sys_interval)
            && now >= due
        {
            self.next_sys_publish = Some(now + interval);
            self.publish_sys(now);
        }
    }

    pub(super) fn publish_sys(&mut self, now: Instant) {
        let connected = self.connected_clients() as u64;
        let mut fields: Vec<(&'static str, u64)> = self.counters.fields().to_vec();
        fields.push(("clients_connected", connected));
        for (name, value) in fields {
            self.publish_status(format!("$SYS/broker/shards/{}/{}", self.id.0, name), value.to_string(), now);
        }
    }

    /// The broker-wide `$SYS/broker/<topic>` values (`metrics::sys`), as retained
    /// messages, routed like the per-shard ones.
    pub fn publish_broker_status(&mut self, topics: &[(String, String)], now: Instant) {
        for (topic, value) in topics {
            self.publish_status(format!("$SYS/broker/{topic}"), value.clone(), now);
        }
    }

    /// One of the broker's own status values, retained, from no client.
    fn publish_status(&mut self, topic: String, value: String, now: Instant) {
        let message = Message {
            topic: Bytes::from(topic),
            payload: Bytes::from(value),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
        };
        self.route(Arc::new(message), now);
    }

    /// Stop accepting clients and close every connection (5.0 clients hear 0x8B first).
    pub fn begin_shutdown(&mut self) {
        self.connecting.shutting_down = true;
        for (_, client) in self.clients.iter() {
            if let Some(link) = &client.link {
                close_with_reason(link, client.version, ReasonCode::SERVER_SHUTTING_DOWN);
            }
        }
        for pending in self.connecting.pending.values() {
            pending.link.close();
        }
    }
}
