//! ringmq: a thread-per-core MQTT 3.1.1 / 5.0 broker on io_uring.
//!
//! Dependencies point one way: `protocol <- topics <- session <- shard <- net <- runtime`.
//!
//! - [`protocol`]: the pure codec. Bytes in, typed packets out, and back, for both
//!   versions; every decode error knows its reason code.
//! - [`topics`]: pure topic semantics: name/filter validation, the subscription trie and
//!   the retained-message tree.
//! - [`session`]: the pure per-client state machine: subscriptions, the QoS 1/2 in-flight
//!   window and queue, inbound QoS 2 ids. `Send`, so it can move between shards.
//! - [`shard`]: the per-core service. Owns its clients, its trie, its retained replica and
//!   its part of the client-id registry; talks to other shards only through `MeshMessage`.
//!   Pure: it takes packets, mesh batches and `now`, and writes into `Link`s and outboxes.
//! - [`transport`]: sans-IO layers between a socket and the codec: TLS (rustls) and
//!   WebSocket (tungstenite's framing), alone or stacked.
//! - [`net`]: thin glommio glue: accept, read/decode, one write per wake-up.
//! - [`persist`]: what outlives the process under `--data-dir`: the log format (pure),
//!   what records hold (pure), and the append-only log file on io_uring.
//! - [`runtime`]: pinned executors, the shard mesh, SO_REUSEPORT listeners, start/stop.
//! - [`cluster`]: several nodes as one broker over NATS (so far: the topic/subject mapping).
//! - [`config`] and [`auth`]: flags with named limits, and who may connect.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod net;
pub mod persist;
pub mod protocol;
pub mod runtime;
pub mod session;
pub mod shard;
pub mod topics;
pub mod transport;
