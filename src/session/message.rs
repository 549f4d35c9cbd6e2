//! A published message as the broker routes it: decoded once, shared by reference
//! (`Arc<Message>`) between shards and subscribers; topic and payload are slices of the
//! publisher's frame.

use bytes::Bytes;

use crate::protocol::{Properties, PropertyContext, QoS};

/// A copy of `bytes` in an allocation of its own. Decoded fields are slices of the
/// connection's read block; anything kept beyond the delivery of one message (client ids,
/// subscription filters, wills, retained messages) is copied, or it would keep the whole
/// block alive.
pub fn detach(bytes: &Bytes) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
    /// The QoS it was published with; each subscriber gets min(this, granted).
    pub qos: QoS,
    /// The RETAIN flag as published.
    pub retain: bool,
    pub properties: Properties,
    /// Client id of the publishing connection (for no-local); `None` for the broker's own.
    pub publisher: Option<Bytes>,
}

impl Message {
    /// The same message, holding no slice of any read buffer (see `detach`).
    pub fn detached(&self) -> Message {
        Message {
            topic: detach(&self.topic),
            payload: detach(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.detached(PropertyContext::Publish),
            publisher: self.publisher.clone(),
        }
    }
}
