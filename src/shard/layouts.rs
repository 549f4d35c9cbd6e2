//! Encode once per layout: the recipients of one message that get the same wire bytes
//! (same protocol version, QoS and RETAIN flag, no subscription identifiers, no topic
//! alias) share one encoding, copied into each buffer with its own packet id. At most
//! 2 x 3 x 2 layouts per message; others (5.0 subscription identifiers, outbound aliases)
//! are encoded per recipient.

use std::sync::Arc;
use std::time::Instant;

use crate::protocol::{ProtocolVersion, PublishLayout, QoS};
use crate::session::Message;

/// A layout buffer larger than this is freed when its message is done with, so one huge
/// message does not pin its size in every shard.
const RETAINED_CAPACITY_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LayoutKey {
    version: ProtocolVersion,
    qos: QoS,
    retain: bool,
}

/// The layouts of the message being delivered; buffers are reused message after message.
#[derive(Default)]
pub(crate) struct PublishLayouts {
    /// The message the layouts encode (held, so pointer identity cannot be reused by
    /// another message meanwhile) and the `now` its Message Expiry Interval was counted at.
    message: Option<(Arc<Message>, Instant)>,
    /// How many of `layouts` belong to `message`.
    used: usize,
    layouts: Vec<(LayoutKey, PublishLayout)>,
}

impl PublishLayouts {
    /// The layout of `message` for a recipient of `version` at `qos` and `retain`,
    /// encoded the first time it is asked for.
    pub(super) fn get(&mut self, message: &Arc<Message>, version: ProtocolVersion, qos: QoS, retain: bool, now: Instant) -> &PublishLayout {
        if !matches!(&self.message, Some((held, at)) if Arc::ptr_eq(held, message) && *at == now) {
            self.message = Some((message.clone(), now));
            self.used = 0;
        }
        let key = LayoutKey { version, qos, retain };
        if let Some(index) = self.layouts[..self.used].iter().position(|(held, _)| *held == key) {
            return &self.layouts[index].1;
        }
        if self.used == self.layouts.len() {
            self.layouts.push((key, PublishLayout::default()));
        }
        let (held, layout) = &mut self.layouts[self.used];
        *held = key;
        if version.is_v5() {
            layout.encode(version, qos, retain, &message.topic, &message.properties_at(now), &message.payload);
        } else {
            layout.encode(version, qos, retain, &message.topic, &message.properties, &message.payload);
        }
        self.used += 1;
        layout
    }

    /// The delivery batch is over: let go of the message and of any huge buffer.
    pub(super) fn release(&mut self) {
        self.message = None;
        self.used = 0;
        for (_, layout) in &mut self.layouts {
            layout.shrink(RETAINED_CAPACITY_BYTES_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from_static(payload),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
        })
    }

    #[test]
    fn each_layout_is_encoded_once_per_message_and_a_new_message_starts_afresh() {
        let now = Instant::now();
        let mut layouts = PublishLayouts::default();
        let first = message(b"first");
        let length = layouts.get(&first, ProtocolVersion::V311, QoS::AtLeastOnce, false, now).len();
        layouts.get(&first, ProtocolVersion::V5, QoS::AtLeastOnce, false, now);
        layouts.get(&first, ProtocolVersion::V311, QoS::AtLeastOnce, false, now);
        assert_eq!(layouts.used, 2, "the repeated layout was reused");
        let second = message(b"second!");
        assert_eq!(layouts.get(&second, ProtocolVersion::V311, QoS::AtLeastOnce, false, now).len(), length + 2);
        assert_eq!(layouts.used, 1);
        layouts.release();
        assert!(layouts.message.is_none());
    }
}
