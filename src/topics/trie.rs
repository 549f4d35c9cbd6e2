//! The subscription trie: filter levels as edges, `+` and `#` as dedicated children so a
//! match walks at most three branches per topic level. Subscribers are kept in small
//! vectors at the node their filter ends on, because matching (every publish) is far
//! hotter than subscribing.

use std::collections::HashMap;

use super::is_system_topic;

struct Node<K, V> {
    children: HashMap<Box<[u8]>, Node<K, V>>,
    single_level: Option<Box<Node<K, V>>>,
    /// Subscribers whose filter ends with `#` right below this node.
    multi_level: Vec<(K, V)>,
    /// Subscribers whose filter ends exactly at this node.
    exact: Vec<(K, V)>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node { children: HashMap::new(), single_level: None, multi_level: Vec::new(), exact: Vec::new() }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.single_level.is_none() && self.multi_level.is_empty() && self.exact.is_empty()
    }
}

/// Maps filters to subscribers `K` with a value `V` each (their subscription options).
pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        SubscriptionTree { root: Node::default(), len: 0 }
    }
}

fn levels(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'/')
}

impl<K: PartialEq + Clone, V> SubscriptionTree<K, V> {
    /// Number of (filter, subscriber) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `key`'s subscription to a validated `filter`; returns the old value.
    pub fn insert(&mut self, filter: &[u8], key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = levels(filter).peekable();
        let mut slot = None;
        while let Some(level) = levels.next() {
            if level == b"#" {
                debug_assert!(levels.peek().is_none(), "filter validated before insert");
                slot = Some(&mut node.multi_level);
                break;
            }
            node = if level == b"+" {
                node.single_level.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let subscribers = match slot {
            Some(slot) => slot,
            None => &mut node.exact,
        };
        if let Some(entry) = subscribers.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut entry.1, value));
        }
        subscribers.push((key, value));
        self.len += 1;
        None
    }

    /// Removes `key`'s subscription to `filter`, pruning emptied nodes.
    pub fn remove(&mut self, filter: &[u8], key: &K) -> Option<V> {
        let levels: Vec<&[u8]> = levels(filter).collect();
        let removed = Self::remove_at(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<K, V>, levels: &[&[u8]], key: &K) -> Option<V> {
        let take = |subscribers: &mut Vec<(K, V)>| {
            let index = subscribers.iter().position(|(k, _)| k == key)?;
            Some(subscribers.swap_remove(index).1)
        };
        match levels.split_first() {
            None => take(&mut node.exact),
            Some((level, _)) if *level == b"#" => take(&mut node.multi_level),
            Some((level, rest)) if *level == b"+" => {
                let child = node.single_level.as_mut()?;
                let removed = Self::remove_at(child, rest, key);
                if child.is_empty() {
                    node.single_level = None;
                }
                removed
            }
            Some((level, rest)) => {
                let child = node.children.get_mut(*level)?;
                let removed = Self::remove_at(child, rest, key);
                if child.is_empty() {
                    node.children.remove(*level);
                }
                removed
            }
        }
    }

    /// Calls `visit` for every subscription whose filter matches `topic`. A subscriber
    /// with several matching filters is visited once per filter.
    pub fn for_each_match(&self, topic: &[u8], mut visit: impl FnMut(&K, &V)) {
        let system = is_system_topic(topic);
        let topic_levels: smallvec_levels::Levels = smallvec_levels::Levels::new(topic);
        Self::walk(&self.root, topic_levels.as_slice(), true, system, &mut visit);
    }

    fn walk(node: &Node<K, V>, rest: &[&[u8]], at_root: bool, system: bool, visit: &mut impl FnMut(&K, &V)) {
        let wildcards_allowed = !(at_root && system);
        if wildcards_allowed {
            // `a/#` matches `a` itself as well as everything below it.
            for (key, value) in &node.multi_level {
                visit(key, value);
            }
        }
        let Some((level, rest)) = rest.split_first() else {
            for (key, value) in &node.exact {
                visit(key, value);
            }
            return;
        };
        if let Some(child) = node.children.get(*level) {
            Self::walk(child, rest, false, system, visit);
        }
        if wildcards_allowed && let Some(child) = &node.single_level {
            Self::walk(child, rest, false, system, visit);
        }
    }
}

/// Splitting a topic into levels without allocating for the common depths.
mod smallvec_levels {
    const INLINE: usize = 16;

    // The inline variant is the point: up to 16 levels live on the stack, no allocation.
    #[allow(clippy::large_enum_variant)]
    pub enum Levels<'a> {
        Inline([&'a [u8]; INLINE], usize),
        Heap(Vec<&'a [u8]>),
    }

    impl<'a> Levels<'a> {
        pub fn new(topic: &'a [u8]) -> Self {
            let mut inline: [&[u8]; INLINE] = [&[]; INLINE];
            let mut count = 0;
            for level in topic.split(|&b| b == b'/') {
                if count == INLINE {
                    return Levels::Heap(topic.split(|&b| b == b'/').collect());
                }
                inline[count] = level;
                count += 1;
            }
            Levels::Inline(inline, count)
        }

        pub fn as_slice(&self) -> &[&'a [u8]] {
            match self {
                Levels::Inline(levels, count) => &levels[..*count],
                Levels::Heap(levels) => levels,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::filter_matches;
    use proptest::prelude::*;

    fn matches(tree: &SubscriptionTree<u32, ()>, topic: &str) -> Vec<u32> {
        let mut found = Vec::new();
        tree.for_each_match(topic.as_bytes(), |key, _| found.push(*key));
        found.sort();
        found
    }

    #[test]
    fn wildcards_and_system_topics() {
        let mut tree = SubscriptionTree::default();
        tree.insert(b"a/b", 1, ());
        tree.insert(b"a/+", 2, ());
        tree.insert(b"a/#", 3, ());
        tree.insert(b"#", 4, ());
        tree.insert(b"+/b", 5, ());
        tree.insert(b"$SYS/#", 6, ());
        assert_eq!(matches(&tree, "a/b"), vec![1, 2, 3, 4, 5]);
        assert_eq!(matches(&tree, "a"), vec![3, 4]);
        assert_eq!(matches(&tree, "$SYS/x"), vec![6]);
        assert_eq!(matches(&tree, "$SYS"), vec![6]);
    }

    #[test]
    fn replace_and_remove_prunes() {
        let mut tree = SubscriptionTree::default();
        assert_eq!(tree.insert(b"a/+/c", 1, 0u8), None);
        assert_eq!(tree.insert(b"a/+/c", 1, 2u8), Some(0));
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.remove(b"a/+/c", &1), Some(2));
        assert_eq!(tree.remove(b"a/+/c", &1), None);
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }

    fn level() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("$x")]
    }

    fn filter_level() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("$x"), Just("+")]
    }

    fn filter() -> impl Strategy<Value = String> {
        (proptest::collection::vec(filter_level(), 1..4), any::<bool>()).prop_map(|(levels, hash)| {
            let mut filter = levels.join("/");
            if hash {
                filter.push_str("/#");
            }
            if filter == "/#" { "#".to_string() } else { filter }
        })
    }

    proptest! {
        #[test]
        fn trie_agrees_with_reference_matcher(
            filters in proptest::collection::vec(filter(), 1..20),
            removed in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
            topics in proptest::collection::vec(proptest::collection::vec(level(), 1..5), 1..20),
        ) {
            let mut tree = SubscriptionTree::default();
            for (key, filter) in filters.iter().enumerate() {
                tree.insert(filter.as_bytes(), key as u32, ());
            }
            let mut live: Vec<bool> = vec![true; filters.len()];
            for index in removed {
                let key = index.index(filters.len());
                let expected = live[key].then_some(());
                prop_assert_eq!(tree.remove(filters[key].as_bytes(), &(key as u32)), expected);
                live[key] = false;
            }
            for topic in topics {
                let topic = topic.join("/");
                let expected: Vec<u32> = filters.iter().enumerate()
                    .filter(|(key, filter)| live[*key] && filter_matches(filter.as_bytes(), topic.as_bytes()))
                    .map(|(key, _)| key as u32)
                    .collect();
                prop_assert_eq!(matches(&tree, &topic), expected, "topic {}", topic);
            }
        }
    }
}
