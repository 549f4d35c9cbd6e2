//! Command-line flags and the named limits they set, with their units in their names,
//! and the checks of how they relate. Parsing only: nothing here opens a socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

pub mod layers;

use crate::protocol::QoS;
use crate::session::{QueueFullPolicy, SessionLimits};
use crate::shard::{Features, Routing, ShardLimits};
use crate::transport::TransportKind;
use crate::transport::tls::{TlsOptions, UsernameFrom};

#[derive(Debug, Clone, Parser)]
#[command(name = "ringmq", version, about = "A thread-per-core MQTT 3.1.1 / 5.0 broker on io_uring")]
pub struct Config {
    /// Address to listen on for MQTT over TCP; every shard binds it with SO_REUSEPORT.
    /// Without it or --listener: 127.0.0.1:1883. A non-loopback address needs
    /// --password-file, --acl-file or --allow-anonymous.
    #[arg(long)]
    pub listen: Option<SocketAddr>,

    /// A listener as a URL (repeatable, beside --listen): `mqtt://HOST:PORT` (TCP),
    /// `mqtts://HOST:PORT` (TLS), `ws://HOST:PORT/PATH` and `wss://HOST:PORT/PATH` (MQTT over
    /// WebSocket; PATH defaults to /mqtt). Add `?proxy=true` for PROXY protocol headers.
    /// TLS listeners need --tls-cert and --tls-key.
    #[arg(long = "listener", value_name = "URL", value_parser = parse_listener)]
    pub listeners: Vec<ListenerSpec>,

    /// Pending-connection queue per shard's listener (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 4096)]
    pub listen_backlog: i32,

    /// Which shard a new connection lands on: `hash` (the kernel's SO_REUSEPORT hash of the
    /// addresses) or `cpu` (the shard whose index is the number of the CPU that handled the
    /// SYN, modulo the shard count). `cpu` balances exactly when clients are spread evenly
    /// over CPUs (local load generators; NIC queues whose IRQs are spread over the CPUs) and
    /// badly when one CPU takes every SYN.
    #[arg(long, value_enum, default_value = "hash")]
    pub steer: Steering,

    /// Shards to run: a count ("4", pinned to CPUs 0-3) or a CPU list ("0,2-3").
    /// Default: one shard per available CPU.
    #[arg(long)]
    pub cores: Option<String>,

    /// Close a socket that has not sent a complete CONNECT within this many seconds.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_s: u64,

    /// Sockets per shard that may be accepted and not yet through CONNECT; more are closed
    /// at once (a slowloris cannot use up the file descriptors).
    #[arg(long, default_value_t = 10_000)]
    pub half_open_connections_max: usize,

    /// Largest packet accepted from a client, in bytes (1..=268435460).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_packet_size_bytes: u32,

    /// Unacknowledged QoS 1/2 messages in flight to one client (a 5.0 client's Receive
    /// Maximum can lower it). One write to a client carries at most this many, so a small
    /// window makes a subscriber fed by several publishers cost a write per few messages
    /// (README, "How the defaults were chosen").
    #[arg(long, default_value_t = 256)]
    pub inflight_max: u16,

    /// Inbound QoS 2 messages a client may have awaiting PUBREL (5.0 Receive Maximum,
    /// announced in CONNACK; a 5.0 client going beyond it is disconnected with 0x93).
    #[arg(long, default_value_t = 1024)]
    pub receive_maximum: u16,

    /// Highest QoS accepted and granted (0-2); announced to 5.0 clients when below 2.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub max_qos: u8,

    /// Refuse retained messages (PUBLISH with RETAIN gets DISCONNECT 0x9A).
    #[arg(long)]
    pub no_retain: bool,

    /// Refuse subscriptions with wildcards (SUBACK 0xA2 / 0x80).
    #[arg(long)]
    pub no_wildcard_subscriptions: bool,

    /// Refuse subscription identifiers (announced to 5.0 clients; a SUBSCRIBE with one
    /// gets DISCONNECT 0xA1).
    #[arg(long)]
    pub no_subscription_identifiers: bool,

    /// Refuse shared subscriptions `$share/...` (announced to 5.0 clients; SUBACK 0x9E / 0x80).
    #[arg(long)]
    pub no_shared_subscriptions: bool,

    /// Which shards a publish is sent to: `interest` (those with a matching subscriber, from
    /// the replicated interest summary) or `broadcast` (all of them).
    #[arg(long, default_value = "interest", value_parser = parse_routing)]
    pub routing: Routing,

    /// Topic aliases a 5.0 client may set on one connection (announced in CONNACK; 0: none).
    #[arg(long, default_value_t = 64)]
    pub topic_alias_maximum: u16,

    /// Cap on a 5.0 client's keep alive, in seconds, announced as Server Keep Alive (0: no cap).
    #[arg(long, default_value_t = 0)]
    pub max_keepalive_s: u16,

    /// Levels a topic name or filter may have (Mosquitto's limit too). Deeper: SUBACK
    /// 0x8F / 0x80, PUBACK/PUBREC 0x90 (5.0), otherwise the connection is closed.
    #[arg(long, default_value_t = 200)]
    pub topic_levels_max: usize,

    /// Filters one client may subscribe to; a new one past it gets SUBACK 0x97 (3.1.1: 0x80).
    #[arg(long, default_value_t = 100_000)]
    pub subscriptions_per_client_max: usize,

    /// Topics the retained store may hold; a retained PUBLISH to a new topic past it is
    /// refused (5.0 PUBACK/PUBREC 0x97) and not routed.
    #[arg(long, default_value_t = 1_000_000)]
    pub retained_messages_max: usize,

    /// Topic and payload bytes the retained store may hold (every shard holds a replica,
    /// so count it once per shard in memory); a retained PUBLISH that would pass it is
    /// refused like one past --retained-messages-max.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub retained_bytes_max: usize,

    /// Longest topic name or filter accepted, in bytes: longer ones are refused like
    /// topics deeper than --topic-levels-max.
    #[arg(long, default_value_t = 65_535)]
    pub topic_bytes_max: usize,

    /// PUBLISH packets one connection may send per second (0: no limit). Past it the
    /// broker stops reading that connection until the rate allows, so TCP slows the
    /// client down; nothing is dropped.
    #[arg(long, default_value_t = 0)]
    pub publish_rate_max: u32,

    /// Connections to --listen (or the default listener) start with a PROXY protocol
    /// header (HAProxy's v1 or v2, as a load balancer such as HAProxy or AWS NLB sends);
    /// the client address it carries is the one logged. A connection without a valid
    /// header is closed. For a --listener, add `?proxy=true` to its URL.
    #[arg(long, default_value_t = false)]
    pub proxy_protocol: bool,

    /// MQTT connections the whole broker holds at once (0: no limit but the open-file
    /// limit). A CONNECT past it is refused: CONNACK 3 Server unavailable (3.1.1) or
    /// 0x97 Quota exceeded (5.0).
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,

    /// New connections accepted per second on each listener (0: no limit), spread evenly
    /// over the shards. Past it the shards stop accepting for a moment: waiting
    /// connections stay in the kernel's listen queue, none is refused.
    #[arg(long, default_value_t = 0)]
    pub connection_rate_max: u32,

    /// Resident memory the broker keeps under: near it QoS 0 is shed and new connections
    /// are refused, at it no PUBLISH is read until subscribers drain (README, "Flow
    /// control"). Bytes (suffixes K, M, G allowed), `auto` (three quarters of the
    /// machine's or the cgroup's memory, whichever is less) or `off`.
    #[arg(long, default_value = "auto", value_parser = parse_memory_bound)]
    pub memory_max_bytes: MemoryBound,

    /// QoS 1/2 messages queued per session (behind the window or while offline). An
    /// online session at this bound pauses the publishers feeding it; an offline one
    /// drops by `--queue-full-policy`.
    #[arg(long, default_value_t = 1000)]
    pub queued_messages_max: usize,

    /// What an offline session's full queue drops: the new message or the oldest queued.
    #[arg(long, default_value = "drop-new", value_parser = parse_queue_full_policy)]
    pub queue_full_policy: QueueFullPolicy,

    /// Disconnect a subscriber (5.0: DISCONNECT 0x97) whose queue has stayed at its bound,
    /// pausing its publishers, for this many seconds (0: never). Its session then queues
    /// offline under the bound.
    #[arg(long, default_value_t = 30)]
    pub slow_subscriber_timeout_s: u64,

    /// Bytes waiting to be written to one connection before QoS 0 messages to it are dropped.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub outbound_buffer_max_bytes: usize,

    /// Publishes waiting for one peer shard before publishers on this shard stop being read.
    #[arg(long, default_value_t = 8192)]
    pub mesh_outbox_max_messages: usize,

    /// Publishes each shard keeps to replay to a session that moves to it from another
    /// shard while messages flow (see README, "Sessions across shards").
    #[arg(long, default_value_t = 4096)]
    pub recent_publishes_max: usize,

    /// Payload bytes that replay log may hold, per shard.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub recent_publish_bytes_max: usize,

    /// Capacity of each shard-to-shard channel, in batches (of at most 1,024 messages).
    /// Also bounds how late a takeover between shards can be under a flood of publishes.
    #[arg(long, default_value_t = 16)]
    pub mesh_channel_batches: usize,

    /// TLS certificate chain (PEM, leaf first) for mqtts:// and wss:// listeners. Reloaded
    /// on SIGHUP and when the file changes; live connections keep the one they started with.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Verify client certificates against these CAs (PEM): mutual TLS.
    #[arg(long, value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,

    /// With --tls-client-ca: `required` refuses a client without a valid certificate at the
    /// handshake; `optional` lets it in to authenticate as a plain client would (one that
    /// does present a certificate must present a valid one).
    #[arg(long, value_enum, default_value = "required")]
    pub tls_client_certificate: ClientCertificate,

    /// With --tls-client-ca: the MQTT user name comes from the verified client certificate
    /// (`cn`: subject Common Name, `san`: first DNS/e-mail/URI Subject Alternative Name)
    /// instead of the CONNECT, and no password is asked. `off`: the CONNECT's credentials
    /// count as on any listener.
    #[arg(long, value_enum, default_value = "off")]
    pub tls_username_from: UsernameFrom,

    /// Password file in mosquitto_passwd's format (`user:$7$...`). Without it anyone may connect.
    #[arg(long)]
    pub password_file: Option<PathBuf>,

    /// ACL file in Mosquitto's format (`user`, `topic [read|write|readwrite|deny] FILTER`,
    /// `pattern` with %c and %u; see README). With one, what it does not allow is denied.
    /// Reloaded, like the password file, on SIGHUP.
    #[arg(long)]
    pub acl_file: Option<PathBuf>,

    /// Keep what must outlive a restart in this directory (created if missing; one broker
    /// per directory, enforced by a lock file): persistent sessions (subscriptions, queued
    /// and in-flight messages, inbound QoS 2 ids, wills) and retained messages. Without it,
    /// everything is in memory only.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// With --data-dir: `sync` sends PUBACK/PUBREC, SUBACK, CONNACK and everything else a
    /// persistent session is told only once what it acknowledges is on disk (group commit:
    /// one fsync per batch); `interval` writes and fsyncs every --fsync-interval-ms and
    /// acknowledges at once (a crash loses at most that interval); `off` keeps everything in
    /// memory (the directory is not read or written).
    #[arg(long, value_enum, default_value_t = Durability::Sync)]
    pub durability: Durability,

    /// With --data-dir: how often what changed is written and fsynced under `--durability
    /// interval` (a crash loses at most this interval), and the longest a change waits under
    /// `sync` when nobody waits for it. A clean stop (SIGINT/SIGTERM) loses nothing.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub fsync_interval_ms: u64,

    /// Let clients without a user name in: with a password file, beside its users; without
    /// one, on a non-loopback --listen address (which is refused otherwise).
    #[arg(long, default_value_t = false)]
    pub allow_anonymous: bool,

    /// Refuse subscriptions to filters this pattern matches (repeatable): SUBACK 0x80
    /// (3.1.1) / 0x87 Not authorized (5.0).
    #[arg(long, value_name = "FILTER")]
    pub deny_subscribe: Vec<String>,

    /// Publish per-shard counters under `$SYS/broker/shards/<n>/` every this many seconds (0: never).
    #[arg(long, default_value_t = 10)]
    pub sys_interval_s: u64,

    /// Memory each shard registers with io_uring, in KiB. It counts against `ulimit -l`.
    #[arg(long, default_value_t = 256)]
    pub io_memory_kib: usize,

    /// io_uring submission queue depth per shard.
    #[arg(long, default_value_t = 128)]
    pub ring_depth: usize,

    /// Read settings from this TOML file: keys are the long flag names with `_`
    /// (`inflight_max = 256`), repeatable flags take arrays, listeners are `[[listener]]`
    /// tables with a `url`. `RINGMQ_*` environment variables (`RINGMQ_INFLIGHT_MAX=64`)
    /// override the file, and flags override both. Example: tuning/ringmq.toml.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration (file, environment and flags: values, files they name,
    /// certificates), print the effective settings with where each came from, and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Print a password-file line for USER (password read from standard input) and exit.
    #[arg(long, value_name = "USER")]
    pub hash_password: Option<String>,

    /// Serve Prometheus metrics (`GET /metrics`: every counter and gauge per shard, and the
    /// process's) on this address, e.g. 127.0.0.1:9883. Off without it. Anyone who can
    /// reach it can read them: keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// The admin API on the --metrics-listen listener (`/api/clients`, `/api/retained`; see
    /// README) asks for `Authorization: Bearer TOKEN`. Without it, only loopback peers may
    /// use the API.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,

    /// Join a cluster of ringmq nodes over NATS: a NATS server URL such as
    /// nats://127.0.0.1:4222 (repeatable; any one reachable will do). Without it the node is
    /// alone and nothing from NATS runs. See README, "Cluster".
    #[arg(long = "cluster", value_name = "URL")]
    pub cluster: Vec<String>,

    /// With --cluster: this node's name in the cluster and on its NATS connection (default:
    /// the host name and the first listener's port).
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,

    /// With --cluster: the first token of every NATS subject the cluster uses, so several
    /// clusters can share NATS servers (letters, digits, `-`, `_`).
    #[arg(long, default_value = "ringmq")]
    pub cluster_name: String,

    /// With --cluster: copies JetStream keeps of the cluster's state (retained messages,
    /// client-id owners, heartbeats, wills); 3 needs a JetStream cluster of at least 3 NATS servers, 1 runs on
    /// a single server.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub cluster_replicas: u64,

    /// With --cluster: store each QoS 1/2 message once in a replicated JetStream stream, so
    /// that a client resuming the session of a node that died gets the messages published
    /// since its last checkpoint (at least once), not only its subscriptions.
    #[arg(long)]
    pub cluster_durable: bool,

    /// With --cluster-durable: how long the stream keeps a message, so how long after a
    /// node's death its sessions' messages can be replayed.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_durable_retention_s: u64,

    /// With --cluster-durable: the stream's size bound on each NATS server; past it the
    /// oldest messages go.
    #[arg(long, default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_durable_bytes_max: u64,

    /// With --cluster: how often one node removes the session records that nodes no longer
    /// running left and no client will use again (expired, or taken over elsewhere).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_sweep_interval_s: u64,

    /// Log filter (tracing's EnvFilter syntax), e.g. "info" or "ringmq=debug". Reloaded on
    /// SIGHUP from the configuration file.
    #[arg(long, default_value = "info")]
    pub log: String,

    /// Log lines as `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--cores: {0}")]
    Cores(String),
    #[error("--max-packet-size-bytes must be between 16 and 268435460")]
    MaxPacketSize,
    #[error("--inflight-max must be at least 1")]
    InflightMax,
    #[error("--receive-maximum must be at least 1")]
    ReceiveMaximum,
    #[error("--max-qos must be 0, 1 or 2")]
    MaxQos,
    #[error("--mesh-channel-batches must be at least 1")]
    MeshChannel,
    #[error("--ring-depth must be a power of two between 8 and 32768")]
    RingDepth,
    #[error(
        "--listen {0} is not a loopback address, and anyone could connect: give --password-file or \
         --acl-file, or say --allow-anonymous to accept anonymous clients there"
    )]
    OpenListener(SocketAddr),
    #[error("the TLS listener {0} needs --tls-cert and --tls-key")]
    TlsWithoutCertificate(String),
    #[error("--tls-client-ca and --tls-username-from need --tls-cert and --tls-key")]
    TlsOptionsWithoutCertificate,
}

/// `--tls-client-certificate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientCertificate {
    Required,
    Optional,
}

/// Most shards one broker runs: a shard records which peers it sent each recent publish to
/// in a 128-bit set (late matches for subscriptions racing a publish rely on it).
pub const SHARDS_MAX: usize = 128;

/// When an acknowledgement may go out, relative to the disk (see `--durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    Sync,
    Interval,
    Off,
}

/// How a new connection is given to a shard (see `--steer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Steering {
    Hash,
    Cpu,
}

impl Config {
    /// Every listener: --listen (with --proxy-protocol), then each --listener; with neither,
    /// 127.0.0.1:1883.
    pub fn all_listeners(&self) -> Vec<ListenerSpec> {
        let tcp = |addr| ListenerSpec { addr, proxy_protocol: self.proxy_protocol, transport: TransportKind::Tcp };
        let mut all: Vec<ListenerSpec> = self.listen.map(tcp).into_iter().collect();
        all.extend(self.listeners.iter().cloned());
        if all.is_empty() {
            all.push(tcp(SocketAddr::from(([127, 0, 0, 1], 1883))));
        }
        all
    }

    /// The certificate set-up, when --tls-cert and --tls-key are given.
    pub fn tls_options(&self) -> Result<Option<TlsOptions>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if let Some(listener) = self.all_listeners().iter().find(|listener| listener.transport.is_tls()) {
                return Err(ConfigError::TlsWithoutCertificate(listener.url()));
            }
            if self.tls_client_ca.is_some() || self.tls_username_from != UsernameFrom::Off || self.tls_cert.is_some() {
                return Err(ConfigError::TlsOptionsWithoutCertificate);
            }
            return Ok(None);
        };
        Ok(Some(TlsOptions {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
            client_certificate_optional: self.tls_client_certificate == ClientCertificate::Optional,
            username_from: self.tls_username_from,
        }))
    }

    /// Safe defaults, as Mosquitto 2: a listener beyond loopback needs authentication or an
    /// explicit --allow-anonymous.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        let protected = self.password_file.is_some() || self.acl_file.is_some() || self.allow_anonymous;
        match self.all_listeners().into_iter().find(|listener| !listener.addr.ip().is_loopback()) {
            Some(open) if !protected => Err(ConfigError::OpenListener(open.addr)),
            _ => Ok(()),
        }
    }

    pub fn limits(&self) -> Result<ShardLimits, ConfigError> {
        if !(16..=268_435_460).contains(&self.max_packet_size_bytes) {
            return Err(ConfigError::MaxPacketSize);
        }
        if self.inflight_max == 0 {
            return Err(ConfigError::InflightMax);
        }
        if self.receive_maximum == 0 {
            return Err(ConfigError::ReceiveMaximum);
        }
        if self.mesh_channel_batches == 0 {
            return Err(ConfigError::MeshChannel);
        }
        if !self.ring_depth.is_power_of_two() || !(8..=32_768).contains(&self.ring_depth) {
            return Err(ConfigError::RingDepth);
        }
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Ok(ShardLimits {
            connect_timeout: Duration::from_secs(self.connect_timeout_s),
            half_open_connections_max: self.half_open_connections_max.max(1),
            packet_bytes_max: self.max_packet_size_bytes,
            topic_levels_max: self.topic_levels_max.max(1),
            subscriptions_per_client_max: self.subscriptions_per_client_max,
            retained_messages_max: self.retained_messages_max,
            retained_bytes_max: self.retained_bytes_max,
            topic_bytes_max: self.topic_bytes_max.clamp(1, 65_535),
            publish_rate_max: (self.publish_rate_max > 0).then_some(self.publish_rate_max),
            session: SessionLimits {
                inflight_max: self.inflight_max,
                queued_messages_max: self.queued_messages_max.max(1),
                queue_full_policy: self.queue_full_policy,
            },
            receive_maximum: self.receive_maximum,
            topic_alias_maximum: self.topic_alias_maximum,
            keep_alive_s_max: (self.max_keepalive_s > 0).then_some(self.max_keepalive_s),
            outbound_buffer_bytes_max: self.outbound_buffer_max_bytes,
            mesh_outbox_messages_max: self.mesh_outbox_max_messages,
            recent_publishes_max: self.recent_publishes_max.max(1),
            recent_publish_bytes_max: self.recent_publish_bytes_max,
            sys_interval: seconds(self.sys_interval_s),
            slow_subscriber_timeout: seconds(self.slow_subscriber_timeout_s),
            // `auto` needs the machine's memory: the runtime fills it in at start.
            memory_bytes_max: match self.memory_max_bytes {
                MemoryBound::Bytes(bytes) => Some(bytes),
                MemoryBound::Auto | MemoryBound::Off => None,
            },
            routing: self.routing,
            features: Features {
                qos_max: QoS::from_bits(self.max_qos).map_err(|_| ConfigError::MaxQos)?,
                retain: !self.no_retain,
                wildcard_subscriptions: !self.no_wildcard_subscriptions,
                subscription_identifiers: !self.no_subscription_identifiers,
                shared_subscriptions: !self.no_shared_subscriptions,
            },
        })
    }

    /// The CPUs to pin one shard each to, from those this process may use.
    pub fn cpus(&self, allowed: &[usize]) -> Result<Vec<usize>, ConfigError> {
        let cpus = parse_cores(self.cores.as_deref(), allowed)?;
        if cpus.len() > SHARDS_MAX {
            return Err(ConfigError::Cores(format!("{} shards; at most {SHARDS_MAX} (pass --cores)", cpus.len())));
        }
        Ok(cpus)
    }
}

/// `--routing`: the shard's `Routing` by its flag name.
fn parse_routing(name: &str) -> Result<Routing, String> {
    match name {
        "interest" => Ok(Routing::Interest),
        "broadcast" => Ok(Routing::Broadcast),
        other => Err(format!("{other:?}: expected interest or broadcast")),
    }
}

/// `--queue-full-policy`: the session's `QueueFullPolicy` by its flag name.
/// One listener from `--listener` (or `--listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    pub transport: TransportKind,
}

impl ListenerSpec {
    /// The listener as a URL, as `--listener` takes it.
    pub fn url(&self) -> String {
        let path = match &self.transport {
            TransportKind::WebSocket { path } | TransportKind::WebSocketTls { path } => path,
            TransportKind::Tcp | TransportKind::Tls => "",
        };
        let proxy = if self.proxy_protocol { "?proxy=true" } else { "" };
        format!("{}://{}{path}{proxy}", self.transport.scheme(), self.addr)
    }
}

/// WebSocket listeners' path when the URL names none (what MQTT.js and Mosquitto use).
const WEBSOCKET_PATH_DEFAULT: &str = "/mqtt";

fn parse_listener(url: &str) -> Result<ListenerSpec, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?}: expected SCHEME://HOST:PORT"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (address, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let websocket_path = || -> Result<Arc<str>, String> {
        if path.is_empty() {
            Ok(WEBSOCKET_PATH_DEFAULT.into())
        } else if path.bytes().all(|byte| byte.is_ascii_graphic()) {
            Ok(path.into())
        } else {
            Err(format!("{url:?}: the path must be printable ASCII without spaces"))
        }
    };
    let transport = match scheme {
        "mqtt" | "mqtts" if !path.is_empty() && path != "/" => return Err(format!("{url:?}: {scheme}:// takes no path")),
        "mqtt" => TransportKind::Tcp,
        "mqtts" => TransportKind::Tls,
        "ws" => TransportKind::WebSocket { path: websocket_path()? },
        "wss" => TransportKind::WebSocketTls { path: websocket_path()? },
        other => return Err(format!("{url:?}: unknown scheme {other:?} (mqtt, mqtts, ws or wss)")),
    };
    let addr: SocketAddr = address.parse().map_err(|_| format!("{url:?}: expected {scheme}://HOST:PORT with an IP address"))?;
    let mut proxy_protocol = false;
    for option in query.split('&').filter(|option| !option.is_empty()) {
        match option {
            "proxy=true" => proxy_protocol = true,
            "proxy=false" => proxy_protocol = false,
            other => return Err(format!("{url:?}: unknown option {other:?} (proxy=true)")),
        }
    }
    Ok(ListenerSpec { addr, proxy_protocol, transport })
}

/// `--memory-max-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBound {
    /// Three quarters of the memory available (resolved at start by the runtime).
    Auto,
    Off,
    Bytes(u64),
}

fn parse_memory_bound(text: &str) -> Result<MemoryBound, String> {
    match text {
        "auto" => return Ok(MemoryBound::Auto),
        "off" => return Ok(MemoryBound::Off),
        _ => {}
    }
    let (digits, multiplier) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    let number: u64 = digits.parse().map_err(|_| format!("{text:?}: expected bytes (e.g. 512M, 4G), auto or off"))?;
    match number.checked_mul(multiplier) {
        Some(bytes) if bytes > 0 => Ok(MemoryBound::Bytes(bytes)),
        _ => Err(format!("{text:?}: expected a positive size")),
    }
}

fn parse_queue_full_policy(name: &str) -> Result<QueueFullPolicy, String> {
    match name {
        "drop-new" => Ok(QueueFullPolicy::DropNew),
        "drop-oldest" => Ok(QueueFullPolicy::DropOldest),
        other => Err(format!("{other:?}: expected drop-new or drop-oldest")),
    }
}

/// "4" -> the first four allowed CPUs; "0,2-3" -> CPUs 0, 2 and 3 (each must be allowed);
/// None -> every allowed CPU.
pub fn parse_cores(spec: Option<&str>, allowed: &[usize]) -> Result<Vec<usize>, ConfigError> {
    let Some(spec) = spec else { return Ok(allowed.to_vec()) };
    let spec = spec.trim();
    let bad = |why: &str| ConfigError::Cores(format!("{why} in {spec:?}"));
    if !spec.contains([',', '-']) {
        let count: usize = spec.parse().map_err(|_| bad("not a count or CPU list"))?;
        if count == 0 || count > allowed.len() {
            return Err(bad(&format!("count must be 1..={}", allowed.len())));
        }
        return Ok(allowed[..count].to_vec());
    }
    let mut cpus = Vec::new();
    for part in spec.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse(), b.trim().parse()),
            None => (part.trim().parse(), part.trim().parse()),
        };
        let (first, last): (usize, usize) = (first.map_err(|_| bad("bad CPU"))?, last.map_err(|_| bad("bad CPU"))?);
        if first > last {
            return Err(bad("empty CPU range"));
        }
        for cpu in first..=last {
            if !allowed.contains(&cpu) {
                return Err(bad(&format!("CPU {cpu} is not available to this process")));
            }
            cpus.push(cpu);
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_forms() {
        let four = [0, 1, 2, 3];
        assert_eq!(parse_cores(None, &[0, 1, 2]), Ok(vec![0, 1, 2]));
        assert_eq!(parse_cores(Some("2"), &four), Ok(vec![0, 1]));
        assert_eq!(parse_cores(Some("2"), &[5, 7, 9]), Ok(vec![5, 7]), "a count takes the allowed CPUs in order");
        assert_eq!(parse_cores(Some("0,2-3"), &four), Ok(vec![0, 2, 3]));
        assert!(parse_cores(Some("0"), &four).is_err());
        assert!(parse_cores(Some("5"), &four).is_err());
        assert!(parse_cores(Some("3-1"), &four).is_err());
        assert!(parse_cores(Some("0,9"), &four).is_err());
    }

    #[test]
    fn the_default_flags_give_the_shards_default_limits() {
        assert_eq!(Config::parse_from(["ringmq"]).limits(), Ok(ShardLimits::defaults()));
    }

    #[test]
    fn memory_bounds_read_sizes_auto_and_off() {
        assert_eq!(parse_memory_bound("auto"), Ok(MemoryBound::Auto));
        assert_eq!(parse_memory_bound("off"), Ok(MemoryBound::Off));
        assert_eq!(parse_memory_bound("1000"), Ok(MemoryBound::Bytes(1000)));
        assert_eq!(parse_memory_bound("512M"), Ok(MemoryBound::Bytes(512 << 20)));
        assert_eq!(parse_memory_bound("4g"), Ok(MemoryBound::Bytes(4 << 30)));
        assert!(parse_memory_bound("0").is_err());
        assert!(parse_memory_bound("lots").is_err());
        assert!(parse_memory_bound("99999999999G").is_err());
        let config = Config::parse_from(["ringmq", "--memory-max-bytes", "64M"]);
        assert_eq!(config.limits().map(|limits| limits.memory_bytes_max), Ok(Some(64 << 20)));
    }

    #[test]
    fn listeners_come_from_listen_and_listener_urls() {
        assert_eq!(
            Config::parse_from(["ringmq"]).all_listeners(),
            vec![ListenerSpec { addr: "127.0.0.1:1883".parse().unwrap(), proxy_protocol: false, transport: TransportKind::Tcp }]
        );
        let both = Config::parse_from([
            "ringmq",
            "--listen",
            "127.0.0.1:1",
            "--listener",
            "mqtt://[::1]:2?proxy=true",
            "--listener",
            "mqtt://127.0.0.1:3",
        ]);
        let addresses: Vec<(String, bool)> = both.all_listeners().iter().map(|l| (l.addr.to_string(), l.proxy_protocol)).collect();
        assert_eq!(addresses, [("127.0.0.1:1".into(), false), ("[::1]:2".into(), true), ("127.0.0.1:3".into(), false)]);
        let urls = ["mqtts://0.0.0.0:8883", "ws://[::1]:8080/mqtt", "wss://127.0.0.1:8443/a/b?proxy=true", "mqtt://127.0.0.1:1"];
        for url in urls {
            assert_eq!(parse_listener(url).unwrap().url(), url, "a listener prints as it was given");
        }
        assert_eq!(parse_listener("ws://127.0.0.1:8080").unwrap().url(), "ws://127.0.0.1:8080/mqtt", "the default path");
        assert!(parse_listener("mqtts://127.0.0.1:1/path").is_err(), "only WebSocket listeners have paths");
        let tls_without_certificate = Config::parse_from(["ringmq", "--listener", "wss://127.0.0.1:1"]);
        assert!(matches!(tls_without_certificate.tls_options(), Err(ConfigError::TlsWithoutCertificate(_))));
        let tls = Config::parse_from(["ringmq", "--listener", "mqtts://127.0.0.1:1", "--tls-cert", "c", "--tls-key", "k"]);
        assert!(tls.tls_options().unwrap().is_some());
        assert!(Config::parse_from(["ringmq", "--tls-client-ca", "ca"]).tls_options().is_err(), "mTLS without a certificate");
        assert!(parse_listener("http://0.0.0.0:1").is_err());
        assert!(parse_listener("mqtt://localhost:1883").is_err(), "an IP address");
        assert!(parse_listener("mqtt://127.0.0.1:1?tls=yes").is_err());
    }

    #[test]
    fn a_listener_beyond_loopback_needs_authentication_or_an_explicit_anonymous() {
        assert_eq!(Config::parse_from(["ringmq"]).check_exposure(), Ok(()), "the default is loopback");
        assert_eq!(Config::parse_from(["ringmq", "--listen", "[::1]:1883"]).check_exposure(), Ok(()));
        let open = Config::parse_from(["ringmq", "--listen", "0.0.0.0:1883"]);
        assert!(matches!(open.check_exposure(), Err(ConfigError::OpenListener(_))));
        let second = Config::parse_from(["ringmq", "--listener", "mqtt://127.0.0.1:1", "--listener", "mqtt://0.0.0.0:2"]);
        assert!(matches!(second.check_exposure(), Err(ConfigError::OpenListener(_))), "every listener is checked");
        for protection in [&["--allow-anonymous"][..], &["--password-file", "p"], &["--acl-file", "a"]] {
            let config = Config::parse_from(["ringmq", "--listen", "0.0.0.0:1883"].iter().chain(protection));
            assert_eq!(config.check_exposure(), Ok(()), "{protection:?}");
        }
    }

    #[test]
    fn limits_validated() {
        let mut config = Config::parse_from(["ringmq"]);
        assert!(config.limits().is_ok());
        config.ring_depth = 100;
        assert_eq!(config.limits().unwrap_err(), ConfigError::RingDepth);
        config.ring_depth = 128;
        config.inflight_max = 0;
        assert_eq!(config.limits().unwrap_err(), ConfigError::InflightMax);
    }
}
