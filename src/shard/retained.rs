//! This shard's replica of the retained store (every shard applies every retained publish
//! in the same order), with its size in messages and bytes for `--retained-messages-max`
//! and `--retained-bytes-max`; on the shard that persists the store, the journal of what
//! changed since the writer last took it.

use std::sync::Arc;

use crate::session::Message;
use crate::topics::RetainedTree;

/// What one retained message counts against `--retained-bytes-max`: its topic and payload.
fn weight(message: &Message) -> usize {
    message.topic.len() + message.payload.len()
}

/// The broker's own `$SYS` status: republished every interval, never persisted.
fn is_broker_status(topic: &[u8]) -> bool {
    topic.starts_with(b"$SYS/")
}

/// Changes the journal holds before it gives up on them and asks for a full rewrite
/// instead (a stalled disk must not grow memory without bound; the store itself is the
/// truth, and a rewrite writes it whole).
const JOURNAL_MESSAGES_MAX: usize = 100_000;

#[derive(Default)]
pub(super) struct RetainedStore {
    tree: RetainedTree<Arc<Message>>,
    bytes: usize,
    /// Retained publishes since the writer last took them (`None`: not persisted here).
    journal: Option<Vec<Arc<Message>>>,
    /// The journal overflowed: the next commit rewrites the whole store.
    rewrite_needed: bool,
}

/// What changed in the retained store since the writer last asked.
#[derive(Debug, Default)]
pub struct RetainedJournal {
    /// Retained publishes in the order applied (an empty payload clears its topic).
    pub changes: Vec<Arc<Message>>,
    /// Changes were dropped: write the whole store (`Shard::retained_messages`) instead.
    pub rewrite_needed: bool,
}

impl RetainedStore {
    /// Applies a retained publish: stores it for its topic, or clears the topic when the
    /// payload is empty (MQTT 3.3.1.3).
    pub(super) fn apply(&mut self, message: &Arc<Message>) {
        if let Some(journal) = self.journal.as_mut().filter(|_| !is_broker_status(&message.topic)) {
            if journal.len() < JOURNAL_MESSAGES_MAX {
                journal.push(message.clone());
            } else {
                journal.clear();
                self.rewrite_needed = true;
            }
        }
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

    pub(super) fn len(&self) -> usize {
        self.tree.len()
    }

    /// Starts journaling changes for the persistence writer.
    pub(super) fn keep_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    pub(super) fn take_journal(&mut self) -> RetainedJournal {
        let changes = self.journal.as_mut().map(std::mem::take).unwrap_or_default();
        RetainedJournal { changes, rewrite_needed: std::mem::take(&mut self.rewrite_needed) }
    }

    /// The next commit rewrites the whole store (the last one failed).
    pub(super) fn require_rewrite(&mut self) {
        if let Some(journal) = &mut self.journal {
            journal.clear();
        }
        self.rewrite_needed = true;
    }

    /// Every stored message but the broker's `$SYS` status, for a rewrite of the log.
    pub(super) fn messages(&self) -> Vec<Arc<Message>> {
        let mut messages = Vec::with_capacity(self.tree.len());
        self.tree.for_each(|message| {
            if !is_broker_status(&message.topic) {
                messages.push(message.clone());
            }
        });
        messages
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

/// The narrow interface persistence uses (`runtime/persistence.rs`).
impl super::Shard {
    /// Recovery: the store as the log left it, before any client is served.
    pub fn restore_retained(&mut self, messages: &[Arc<Message>]) {
        for message in messages {
            self.retained.apply(message);
        }
    }

    /// From now on, keep a journal of retained changes for the writer (one shard does).
    pub fn keep_retained_journal(&mut self) {
        self.retained.keep_journal();
    }

    pub fn take_retained_journal(&mut self) -> RetainedJournal {
        self.retained.take_journal()
    }

    /// A commit failed: the next one writes the whole store.
    pub fn require_retained_rewrite(&mut self) {
        self.retained.require_rewrite();
    }

    pub fn retained_messages(&self) -> Vec<Arc<Message>> {
        self.retained.messages()
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

    #[test]
    fn the_journal_records_changes_in_order_and_overflows_into_a_rewrite() {
        let mut store = RetainedStore::default();
        store.apply(&message("before", "x"));
        store.keep_journal();
        assert!(store.take_journal().changes.is_empty(), "what came before the journal is not in it");
        store.apply(&message("a", "1"));
        store.apply(&message("$other/b", "2"));
        store.apply(&message("a", ""));
        store.apply(&message("$SYS/broker/shards/0/x", "1"));
        let journal = store.take_journal();
        let topics: Vec<&[u8]> = journal.changes.iter().map(|m| &m.topic[..]).collect();
        assert_eq!(topics, vec![&b"a"[..], &b"$other/b"[..], &b"a"[..]], "the broker's own $SYS status is not persisted");
        assert!(!journal.rewrite_needed);
        assert!(store.take_journal().changes.is_empty(), "taking empties it");
        for _ in 0..=JOURNAL_MESSAGES_MAX {
            store.apply(&message("flood", "y"));
        }
        let journal = store.take_journal();
        assert!(journal.rewrite_needed && journal.changes.len() < JOURNAL_MESSAGES_MAX, "bounded, and a rewrite is asked for");
        let mut all: Vec<Vec<u8>> = store.messages().iter().map(|m| m.topic.to_vec()).collect();
        all.sort();
        assert_eq!(
            all,
            vec![b"$other/b".to_vec(), b"before".to_vec(), b"flood".to_vec()],
            "a rewrite has every topic, $ ones too, not $SYS"
        );
    }
}
