//! This shard's replica of the retained store (every shard applies every retained publish
//! in the same order), with its size in messages and bytes for `--retained-messages-max`
//! and `--retained-bytes-max`.

use std::sync::Arc;

use crate::session::Message;
use crate::topics::RetainedTree;

/// What one retained message counts against `--retained-bytes-max`: its topic and payload.
fn weight(message: &Message) -> usize {
    message.topic.len() + message.payload.len()
}

#[derive(Default)]
pub(super) struct RetainedStore {
    tree: RetainedTree<Arc<Message>>,
    bytes: usize,
}

impl RetainedStore {
    /// Applies a retained publish: stores it for its topic, or clears the topic when the
    /// payload is empty (MQTT 3.3.1.3).
    pub(super) fn apply(&mut self, message: &Arc<Message>) {
        let previous = if message.payload.is_empty() {
            self.tree.remove(&message.topic)
        } else {
            self.bytes += weight(message);
            self.tree.insert(&message.topic, message.clone())
        };
        if let Some(previous) = previous {
            self.bytes -= weight(&previous);
        }
    }

    /// Clears `message`'s topic if `message` is still what it holds (an expired message
    /// must not clear a newer one).
    pub(super) fn forget(&mut self, message: &Arc<Message>) {
        let mut still_stored = false;
        self.tree.for_each_match(&message.topic, |stored| still_stored |= Arc::ptr_eq(stored, message));
        if still_stored && let Some(previous) = self.tree.remove(&message.topic) {
            self.bytes -= weight(&previous);
        }
    }

    pub(super) fn for_each_match(&self, filter: &[u8], visit: impl FnMut(&Arc<Message>)) {
        self.tree.for_each_match(filter, visit);
    }

    /// Whether storing `payload_bytes` for `topic` would take the store past either bound
    /// (replacing a topic's message counts only the difference).
    pub(super) fn would_exceed(&self, topic: &[u8], payload_bytes: usize, messages_max: usize, bytes_max: usize) -> bool {
        let mut replaced = None;
        self.tree.for_each_match(topic, |stored| replaced = Some(weight(stored)));
        let messages = self.tree.len() + usize::from(replaced.is_none());
        let bytes = self.bytes - replaced.unwrap_or(0) + topic.len() + payload_bytes;
        (replaced.is_none() && messages > messages_max) || bytes > bytes_max
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::QoS;

    fn message(topic: &'static str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
        })
    }

    #[test]
    fn the_byte_count_follows_stores_replacements_and_clears() {
        let mut store = RetainedStore::default();
        store.apply(&message("a", "1234"));
        store.apply(&message("b/c", "12"));
        assert_eq!(store.bytes(), 5 + 5);
        store.apply(&message("a", "1"));
        assert_eq!(store.bytes(), 2 + 5, "a replacement counts only once");
        store.apply(&message("b/c", ""));
        assert_eq!(store.bytes(), 2);
        let expired = message("a", "xyz");
        store.apply(&expired);
        store.apply(&message("a", "new"));
        store.forget(&expired);
        assert_eq!(store.bytes(), 4, "an expired message does not clear a newer one");
        store.forget(&message("a", "new"));
        assert_eq!(store.bytes(), 4, "nor does a message that is not the stored one");
    }

    #[test]
    fn the_bounds_refuse_new_topics_and_growth_but_not_shrinking_replacements() {
        let mut store = RetainedStore::default();
        store.apply(&message("a", "12345"));
        assert!(store.would_exceed(b"b", 1, 1, 1000), "a second topic past one message");
        assert!(!store.would_exceed(b"a", 9, 1, 1000), "replacing is fine under the message bound");
        assert!(store.would_exceed(b"a", 10, 1, 10), "but not past the byte bound");
        assert!(!store.would_exceed(b"a", 9, 1, 10));
    }
}
