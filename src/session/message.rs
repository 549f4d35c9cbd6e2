//! A published message as the broker routes it: decoded once, shared by reference
//! (`Arc<Message>`) between shards and subscribers; topic and payload are slices of the
//! publisher's frame.

use bytes::Bytes;

use crate::protocol::{Properties, QoS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
    /// The QoS it was published with; each subscriber gets min(this, granted).
    pub qos: QoS,
    /// The RETAIN flag as published.
    pub retain: bool,
    pub properties: Properties,
}
