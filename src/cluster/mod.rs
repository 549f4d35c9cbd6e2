//! The cluster: several ringmq nodes as one broker, over NATS (issue #15). Owns everything
//! between a node's shards and the NATS servers; the shards see it only through the same
//! bounded queues they use between themselves.
//!
//! Built so far: `subject`, the total and reversible mapping of MQTT topics and filters to
//! NATS subjects, which lets NATS's own interest graph be the cross-node route table. The
//! gateway thread, sessions and retained messages in JetStream KV, `$share` over queue
//! groups and node failure are not built yet (README, "Status").

pub mod subject;
