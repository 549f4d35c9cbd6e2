//! A published message as the broker routes it: decoded once, shared by reference
//! (`Arc<Message>`) between shards and subscribers; topic and payload are slices of the
//! publisher's frame.

use std::time::Instant;

use bytes::Bytes;

use crate::protocol::{PacketProperties, Properties, PropertyContext, QoS};

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
    /// Boxed and only when there are any (most messages, every 3.1.1 one, have none).
    pub properties: PacketProperties,
    /// Client id of the publishing connection (for no-local); `None` for the broker's own.
    pub publisher: Option<Bytes>,
    /// From the Message Expiry Interval: past this, no new delivery starts.
    pub expires_at: Option<Instant>,
}

impl Message {
    /// The same message, holding no slice of any read buffer (see `detach`).
    pub fn detached(&self) -> Message {
        Message {
            topic: detach(&self.topic),
            payload: detach(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.detached(PropertyContext::Publish).into(),
            publisher: self.publisher.clone(),
            expires_at: self.expires_at,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The properties to send at `now`: the Message Expiry Interval becomes what is left of
    /// it (5.0 3.3.2.3.3). Borrowed unchanged for messages without one.
    pub fn properties_at(&self, now: Instant) -> std::borrow::Cow<'_, Properties> {
        match self.expires_at {
            None => std::borrow::Cow::Borrowed(&self.properties),
            Some(at) => {
                let left = at.saturating_duration_since(now);
                let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                let mut properties = Properties::clone(&self.properties);
                properties.message_expiry_interval = Some(seconds.min(u64::from(u32::MAX)) as u32);
                std::borrow::Cow::Owned(properties)
            }
        }
    }
}
