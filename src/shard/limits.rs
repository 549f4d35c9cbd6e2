//! What a shard enforces and what it offers, pure (no clap, no argv): `ShardLimits` are
//! the bounds, each named with its unit and its qualifier last; `Features` is what the
//! server supports and announces to 5.0 clients in CONNACK. `config` builds both from
//! the flags; `ShardLimits::defaults()` is a broker started with none (a config test
//! keeps the two in step).

use std::time::Duration;

use crate::protocol::QoS;
use crate::session::{QueueFullPolicy, SessionLimits};
use crate::topics::TopicError;

/// Which shards a publish is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Those with a matching subscriber, from the replicated interest summary.
    Interest,
    /// Every shard.
    Broadcast,
}

/// What the server supports; announced in CONNACK (5.0) where it differs from the
/// protocol's defaults, and enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub qos_max: QoS,
    pub retain: bool,
    pub wildcard_subscriptions: bool,
    pub subscription_identifiers: bool,
    pub shared_subscriptions: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLimits {
    /// A socket that sends no complete CONNECT within this is closed.
    pub connect_timeout: Duration,
    /// Accepted sockets per shard that may still owe their CONNECT; more are closed at once.
    pub half_open_connections_max: usize,
    /// Largest packet accepted from a client (announced as Maximum Packet Size).
    pub packet_bytes_max: u32,
    pub topic_levels_max: usize,
    /// Longest topic name or filter, in bytes (the protocol's own bound is 65,535).
    pub topic_bytes_max: usize,
    /// Filters one client may hold; a new one past it gets SUBACK 0x97 (3.1.1: 0x80).
    pub subscriptions_per_client_max: usize,
    /// Topics the retained store may hold; a new one past it is refused (5.0 PUBACK 0x97).
    pub retained_messages_max: usize,
    /// Topic and payload bytes the retained store may hold (each shard holds a replica);
    /// a retained PUBLISH that would pass it is refused the same way.
    pub retained_bytes_max: usize,
    /// PUBLISH packets one connection may send per second; past it, reading it waits.
    /// `None`: no limit. Enforced by the IO layer (`net`), which reads the packets.
    pub publish_rate_max: Option<u32>,
    pub session: SessionLimits,
    /// Inbound QoS 2 messages awaiting PUBREL per client (announced as Receive Maximum).
    pub receive_maximum: u16,
    /// Client-to-broker topic aliases per 5.0 connection (announced).
    pub topic_alias_maximum: u16,
    /// Cap on a 5.0 client's keep alive (announced as Server Keep Alive).
    pub keep_alive_s_max: Option<u16>,
    /// Unsent bytes per connection before QoS 0 to it is shed.
    pub outbound_buffer_bytes_max: usize,
    /// Messages waiting for one peer shard before this shard's publishers are held.
    pub mesh_outbox_messages_max: usize,
    /// The replay log for sessions moving between shards.
    pub recent_publishes_max: usize,
    pub recent_publish_bytes_max: usize,
    /// How often the counters go to `$SYS`; `None`: never.
    pub sys_interval: Option<Duration>,
    /// A subscriber whose queue stays full this long is disconnected; `None`: never.
    pub slow_subscriber_timeout: Option<Duration>,
    /// The process's resident memory the broker keeps under (see `memory.rs`); `None`: none.
    pub memory_bytes_max: Option<u64>,
    pub routing: Routing,
    pub features: Features,
}

impl ShardLimits {
    /// Whether a topic name or filter is longer than `topic_bytes_max` or deeper than
    /// `topic_levels_max`, and which.
    pub fn topic_bound_exceeded(&self, topic: &[u8]) -> Option<TopicError> {
        if topic.len() > self.topic_bytes_max {
            return Some(TopicError::TooLong);
        }
        (crate::topics::level_count(topic) > self.topic_levels_max).then_some(TopicError::TooManyLevels)
    }

    /// The limits of a broker started with no flags.
    /// Takes from `fresh` the limits that may change while clients are connected (each is
    /// read where it is enforced, so the next check uses it); the others need a restart.
    pub fn take_live(&mut self, fresh: &ShardLimits) {
        self.retained_messages_max = fresh.retained_messages_max;
        self.retained_bytes_max = fresh.retained_bytes_max;
        self.subscriptions_per_client_max = fresh.subscriptions_per_client_max;
        self.slow_subscriber_timeout = fresh.slow_subscriber_timeout;
        self.topic_levels_max = fresh.topic_levels_max;
        self.topic_bytes_max = fresh.topic_bytes_max;
    }

    pub fn defaults() -> ShardLimits {
        ShardLimits {
            connect_timeout: Duration::from_secs(10),
            half_open_connections_max: 10_000,
            packet_bytes_max: 1024 * 1024,
            topic_levels_max: 200,
            topic_bytes_max: 65_535,
            subscriptions_per_client_max: 100_000,
            retained_messages_max: 1_000_000,
            retained_bytes_max: 256 * 1024 * 1024,
            publish_rate_max: None,
            session: SessionLimits { inflight_max: 256, queued_messages_max: 1000, queue_full_policy: QueueFullPolicy::DropNew },
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            keep_alive_s_max: None,
            outbound_buffer_bytes_max: 1024 * 1024,
            mesh_outbox_messages_max: 8192,
            recent_publishes_max: 4096,
            recent_publish_bytes_max: 8 * 1024 * 1024,
            sys_interval: Some(Duration::from_secs(10)),
            slow_subscriber_timeout: Some(Duration::from_secs(30)),
            memory_bytes_max: None,
            routing: Routing::Interest,
            features: Features {
                qos_max: QoS::ExactlyOnce,
                retain: true,
                wildcard_subscriptions: true,
                subscription_identifiers: true,
                shared_subscriptions: true,
            },
        }
    }
}
