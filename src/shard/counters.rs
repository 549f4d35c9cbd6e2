//! Per-shard counters: every bound the shard enforces has one, so an operator can see
//! what was shed and why. Published under `$SYS/broker/shards/<n>/`.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub protocol_errors: u64,
    pub keep_alive_timeouts: u64,
    pub takeovers: u64,
    /// Sessions that arrived here from another shard (a client reconnected elsewhere).
    pub sessions_moved_in: u64,
    pub publishes_received: u64,
    pub messages_delivered: u64,
    /// MQTT bytes read from clients and written to them (inside TLS and WebSocket).
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// QoS 0 messages not written because the subscriber's output buffer was full.
    pub qos0_dropped_slow_subscriber: u64,
    /// QoS 0 to offline sessions and QoS 1/2 beyond a session's queue bound.
    pub session_queue_drops: u64,
    /// PUBLISHes held unread (each counted once) because a peer shard's outbox was full.
    pub publishes_held_for_mesh: u64,
    /// Handoffs whose replay window had already been evicted from the recent-publish log.
    pub takeover_replay_gaps: u64,
    pub wills_published: u64,
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    pub oversize_drops: u64,
    /// Offline sessions ended by their Session Expiry Interval.
    pub sessions_expired: u64,
    /// Deliveries not started because the message's expiry had passed.
    pub messages_expired: u64,
    /// Shared-subscription deliveries whose chosen member had left this shard, with no other
    /// member of the group here or elsewhere to take it.
    pub shared_misses: u64,
    /// Shared-subscription deliveries whose chosen member had left this shard, sent on to
    /// another member of the group on another shard.
    pub shared_forwarded: u64,
    /// Unacknowledged shared-subscription messages of an ended session sent to another member.
    pub shared_redelivered: u64,
    /// Own publishes sent to a peer after the fact: routed after a client there subscribed,
    /// before that subscription was known here.
    pub late_matches_sent: u64,
    /// Client PUBLISHes to `$SYS/...` (the broker's own topics), dropped.
    pub broker_topic_publishes_dropped: u64,
    /// Deliveries withheld because `--deny-subscribe` or the ACL file covers the topic.
    pub deliveries_denied: u64,
    /// Times a publisher was paused because a subscriber it feeds has a full queue.
    pub publishers_paused: u64,
    /// Subscribers disconnected for a queue that stayed full past `--slow-subscriber-timeout-s`.
    pub slow_subscriber_disconnects: u64,
    /// Connections accepted and closed at once because the open-file limit was reached.
    pub connections_closed_at_fd_limit: u64,
    /// TLS handshakes completed (counted when the CONNECT behind them arrives).
    pub tls_handshakes: u64,
    /// TLS handshakes that failed: a refused or missing client certificate, no common
    /// protocol version or cipher, garbage where a handshake should be.
    pub tls_handshake_failures: u64,
    /// WebSocket upgrades completed (counted when the CONNECT behind them arrives).
    pub websocket_upgrades: u64,
    /// Established TLS or WebSocket connections closed for a transport error (a bad
    /// record, a text frame, an oversize frame).
    pub transport_errors: u64,
    /// New subscriptions refused at `--subscriptions-per-client-max`.
    pub subscriptions_refused_quota: u64,
    /// Retained PUBLISHes refused at `--retained-messages-max` or `--retained-bytes-max`.
    pub retained_refused_quota: u64,
    /// Batches of retained changes written and fsynced to `--data-dir` (shard 0).
    pub persist_commits: u64,
    /// Writes to `--data-dir` that failed (disk full, IO error); each is logged.
    pub persist_write_failures: u64,
    /// QoS 1/2 PUBLISH refused because the data directory could not be written.
    pub publishes_refused_storage: u64,
    /// Accepted sockets closed at once: `--half-open-connections-max` were owing CONNECT.
    pub half_open_connections_refused: u64,
    /// CONNECTs refused because the broker held `--max-connections` (CONNACK 3 / 0x97).
    pub connections_refused_at_limit: u64,
    /// Times this shard's accept loop waited for `--connection-rate-max`.
    pub accepts_delayed_by_rate: u64,
    /// Times a connection's reading waited for `--publish-rate-max`.
    pub publishes_delayed_by_rate: u64,
    /// QoS 0 deliveries dropped while memory was near `--memory-max-bytes`.
    pub qos0_dropped_memory: u64,
    /// CONNECTs refused while memory was near `--memory-max-bytes` (CONNACK 3 / 0x89).
    pub connections_refused_memory: u64,
    /// Times a PUBLISH waited unread because memory reached `--memory-max-bytes`.
    pub publishes_held_for_memory: u64,
    /// PUBLISHes the ACL file does not allow the client (dropped; 5.0 0x87).
    pub publishes_denied_acl: u64,
    /// Subscriptions the ACL file does not allow (SUBACK 0x80 / 0x87).
    pub subscriptions_denied_acl: u64,
    /// Messages published here and handed to the cluster gateway (`--cluster`).
    pub cluster_publishes_sent: u64,
    /// Messages from other nodes entering the node's routing on this shard.
    pub cluster_publishes_received: u64,
    /// Messages published here not sent to the cluster: the gateway's queue stayed full
    /// (delivered on this node all the same).
    pub cluster_publishes_dropped: u64,
    /// Sessions another node handed over to a client resuming here (Clean Start 0).
    pub cluster_sessions_moved_in: u64,
    /// Sessions handed over to another node where their client resumed.
    pub cluster_sessions_moved_out: u64,
    /// Handed-over sessions whose bytes did not decode (the client started fresh).
    pub cluster_sessions_refused: u64,
    /// Sessions past `HANDOVER_BYTES_MAX` when their client resumed on another node: ended
    /// here rather than sent (the client started fresh there).
    pub cluster_sessions_too_large: u64,
    /// Messages replayed from the durable stream (`--cluster-durable`) to sessions resumed
    /// from a dead node's record.
    pub cluster_messages_replayed: u64,
}

impl Counters {
    /// Name/value pairs, for `$SYS` and logs.
    pub fn fields(&self) -> [(&'static str, u64); 53] {
        [
            ("connections_accepted", self.connections_accepted),
            ("connections_refused", self.connections_refused),
            ("protocol_errors", self.protocol_errors),
            ("keep_alive_timeouts", self.keep_alive_timeouts),
            ("takeovers", self.takeovers),
            ("sessions_moved_in", self.sessions_moved_in),
            ("publishes_received", self.publishes_received),
            ("messages_delivered", self.messages_delivered),
            ("bytes_received", self.bytes_received),
            ("bytes_sent", self.bytes_sent),
            ("qos0_dropped_slow_subscriber", self.qos0_dropped_slow_subscriber),
            ("session_queue_drops", self.session_queue_drops),
            ("publishes_held_for_mesh", self.publishes_held_for_mesh),
            ("takeover_replay_gaps", self.takeover_replay_gaps),
            ("wills_published", self.wills_published),
            ("oversize_drops", self.oversize_drops),
            ("sessions_expired", self.sessions_expired),
            ("messages_expired", self.messages_expired),
            ("shared_misses", self.shared_misses),
            ("shared_forwarded", self.shared_forwarded),
            ("shared_redelivered", self.shared_redelivered),
            ("late_matches_sent", self.late_matches_sent),
            ("broker_topic_publishes_dropped", self.broker_topic_publishes_dropped),
            ("deliveries_denied", self.deliveries_denied),
            ("publishers_paused", self.publishers_paused),
            ("slow_subscriber_disconnects", self.slow_subscriber_disconnects),
            ("connections_closed_at_fd_limit", self.connections_closed_at_fd_limit),
            ("tls_handshakes", self.tls_handshakes),
            ("tls_handshake_failures", self.tls_handshake_failures),
            ("websocket_upgrades", self.websocket_upgrades),
            ("transport_errors", self.transport_errors),
            ("subscriptions_refused_quota", self.subscriptions_refused_quota),
            ("retained_refused_quota", self.retained_refused_quota),
            ("persist_commits", self.persist_commits),
            ("persist_write_failures", self.persist_write_failures),
            ("publishes_refused_storage", self.publishes_refused_storage),
            ("half_open_connections_refused", self.half_open_connections_refused),
            ("connections_refused_at_limit", self.connections_refused_at_limit),
            ("accepts_delayed_by_rate", self.accepts_delayed_by_rate),
            ("publishes_delayed_by_rate", self.publishes_delayed_by_rate),
            ("qos0_dropped_memory", self.qos0_dropped_memory),
            ("connections_refused_memory", self.connections_refused_memory),
            ("publishes_held_for_memory", self.publishes_held_for_memory),
            ("publishes_denied_acl", self.publishes_denied_acl),
            ("subscriptions_denied_acl", self.subscriptions_denied_acl),
            ("cluster_publishes_sent", self.cluster_publishes_sent),
            ("cluster_publishes_received", self.cluster_publishes_received),
            ("cluster_publishes_dropped", self.cluster_publishes_dropped),
            ("cluster_sessions_moved_in", self.cluster_sessions_moved_in),
            ("cluster_sessions_moved_out", self.cluster_sessions_moved_out),
            ("cluster_sessions_refused", self.cluster_sessions_refused),
            ("cluster_sessions_too_large", self.cluster_sessions_too_large),
            ("cluster_messages_replayed", self.cluster_messages_replayed),
        ]
    }
}

/// What this shard holds right now (the counters say what happened so far): read when
/// the metrics snapshot is taken, walking the clients once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub connections: u64,
    /// Sessions held here, connected or offline.
    pub sessions: u64,
    /// Filters in this shard's subscription trie.
    pub subscriptions: u64,
    /// This shard's replica of the retained store.
    pub retained_messages: u64,
    /// QoS 1/2 messages waiting in this shard's sessions (behind the window or offline).
    pub queued_messages: u64,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight_messages: u64,
    /// Messages waiting for the shard-to-shard channels.
    pub mesh_outbox_messages: u64,
}

impl Gauges {
    pub fn fields(&self) -> [(&'static str, &'static str, u64); 7] {
        [
            ("connections", "Connected clients", self.connections),
            ("sessions", "Sessions held, connected or offline", self.sessions),
            ("subscriptions", "Filters in the subscription trie", self.subscriptions),
            ("retained_messages", "Retained messages (every shard holds a replica)", self.retained_messages),
            ("queued_messages", "QoS 1/2 messages queued in sessions", self.queued_messages),
            ("inflight_messages", "QoS 1/2 messages sent and not yet acknowledged", self.inflight_messages),
            ("mesh_outbox_messages", "Messages waiting for the shard-to-shard channels", self.mesh_outbox_messages),
        ]
    }
}

impl super::Shard {
    pub fn gauges(&self) -> Gauges {
        let mut gauges = Gauges {
            subscriptions: self.subscriptions.len() as u64,
            retained_messages: self.retained.len() as u64,
            mesh_outbox_messages: self.outboxes.depth() as u64,
            ..Gauges::default()
        };
        for (_, client) in self.clients.iter() {
            gauges.sessions += 1;
            gauges.connections += u64::from(client.link.is_some());
            gauges.queued_messages += client.session.queued_len() as u64;
            gauges.inflight_messages += client.session.inflight_len() as u64;
        }
        gauges
    }
}
