//! The MQTT codec, pure: bytes in, typed packets out, and back, for MQTT 3.1.1 and 5.0.
//!
//! Owns framing, field validation and the mapping of decode errors to reason codes. It
//! never does IO, never reads a clock and never allocates for a field that a slice of the
//! received frame (`Bytes`) can hold. Topic *semantics* (wildcards, `$`-rules) belong to
//! `topics`; what a packet *means* for a session belongs to `session` and `shard`.

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod error;
mod packet;
pub mod primitives;
mod properties;
mod publish;
mod reason;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;

pub use ack::{Ack, SHORT_PUBACK_BYTES, short_puback_run_bytes, short_pubacks};
pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::Disconnect;
pub use error::DecodeError;
pub use packet::{Packet, PacketId, ProtocolVersion, QoS, decode, packet_type};
pub use properties::{PacketProperties, Properties, PropertyContext};
pub use publish::{Publish, PublishHeader, PublishLayout, publish_wire_len, write_publish};
pub use reason::{ConnectRefusal, ReasonCode};
pub use suback::SubAck;
pub use subscribe::{RetainHandling, Subscribe, SubscriptionOptions};
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;

#[cfg(test)]
mod proptests;
