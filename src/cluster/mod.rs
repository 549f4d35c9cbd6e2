//! The cluster: several ringmq nodes as one broker, over NATS (issue #15). Owns everything
//! between a node's shards and the NATS servers; the shards see it only through bounded
//! queues (`port`).
//!
//! - `subject`: the total and reversible mapping of MQTT topics and filters to NATS
//!   subjects, which lets NATS's own interest graph be the cross-node route table.
//! - `frame`: a message as one NATS message body; `dedup`: one copy per node of a message
//!   that several of its subscriptions match.
//! - `port`: what a shard hands the gateway and the queues between them.
//! - `gateway`: the thread that holds the NATS connections; `bucket`: its JetStream
//!   key-value buckets; `retained`: the retained store in one; `owners`: which node owns
//!   each client id, in another; `wills`: heartbeats, and the wills a survivor sends for
//!   a node that died; `handover`: a session moving to the node its client resumed on;
//!   `records`: each persistent session's record, what is left of it if its node dies;
//!   `message_stream`: `--cluster-durable`, the QoS 1/2 messages a dead node's sessions
//!   were owed, replayed to them where their clients come back; `sweep`: removing the
//!   records that nodes no longer running left and no client will use again.

pub mod bucket;
pub mod dedup;
pub mod frame;
pub mod gateway;
pub mod handover;
pub mod message_stream;
pub mod owners;
pub mod port;
pub mod records;
pub mod retained;
pub mod subject;
pub mod sweep;
pub mod wills;
