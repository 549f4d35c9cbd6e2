//! The retained-message store: one message per topic, found by a filter. The mirror image
//! of the subscription trie: here topics are stored and a filter walks them.

use std::collections::HashMap;

use super::is_system_topic;

struct Node<V> {
    children: HashMap<Box<[u8]>, Node<V>>,
    message: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { children: HashMap::new(), message: None }
    }
}

pub struct RetainedTree<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        RetainedTree { root: Node::default(), len: 0 }
    }
}

impl<V> RetainedTree<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `message` for `topic`, replacing what was there.
    pub fn insert(&mut self, topic: &[u8], message: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split(|&b| b == b'/') {
            node = node.children.entry(level.into()).or_default();
        }
        let previous = node.message.replace(message);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Clears `topic` (a retained PUBLISH with an empty payload), pruning emptied nodes.
    pub fn remove(&mut self, topic: &[u8]) -> Option<V> {
        let levels: Vec<&[u8]> = topic.split(|&b| b == b'/').collect();
        let removed = Self::remove_at(&mut self.root, &levels);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<V>, levels: &[&[u8]]) -> Option<V> {
        let Some((level, rest)) = levels.split_first() else { return node.message.take() };
        let child = node.children.get_mut(*level)?;
        let removed = Self::remove_at(child, rest);
        if child.message.is_none() && child.children.is_empty() {
            node.children.remove(*level);
        }
        removed
    }

    /// Calls `visit` for every retained message whose topic `filter` matches.
    pub fn for_each_match(&self, filter: &[u8], mut visit: impl FnMut(&V)) {
        let levels: Vec<&[u8]> = filter.split(|&b| b == b'/').collect();
        Self::walk(&self.root, &levels, true, &mut visit);
    }

    fn walk(node: &Node<V>, filter: &[&[u8]], at_root: bool, visit: &mut impl FnMut(&V)) {
        let Some((level, rest)) = filter.split_first() else {
            if let Some(message) = &node.message {
                visit(message);
            }
            return;
        };
        // At the root, wildcards skip `$` topics.
        let eligible = |name: &[u8]| !(at_root && is_system_topic(name));
        match *level {
            b"#" => {
                // `a/#` includes `a` itself.
                if !at_root && let Some(message) = &node.message {
                    visit(message);
                }
                for (name, child) in &node.children {
                    if eligible(name) {
                        Self::visit_all(child, visit);
                    }
                }
            }
            b"+" => {
                for (name, child) in &node.children {
                    if eligible(name) {
                        Self::walk(child, rest, false, visit);
                    }
                }
            }
            exact => {
                if let Some(child) = node.children.get(exact) {
                    Self::walk(child, rest, false, visit);
                }
            }
        }
    }

    fn visit_all(node: &Node<V>, visit: &mut impl FnMut(&V)) {
        if let Some(message) = &node.message {
            visit(message);
        }
        for child in node.children.values() {
            Self::visit_all(child, visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::filter_matches;
    use proptest::prelude::*;

    fn found(tree: &RetainedTree<String>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_match(filter.as_bytes(), |topic| out.push(topic.clone()));
        out.sort();
        out
    }

    #[test]
    fn filters_find_topics() {
        let mut tree = RetainedTree::default();
        for topic in ["a", "a/b", "a/b/c", "$SYS/x", "/x"] {
            tree.insert(topic.as_bytes(), topic.to_string());
        }
        assert_eq!(found(&tree, "a/#"), vec!["a", "a/b", "a/b/c"]);
        assert_eq!(found(&tree, "#"), vec!["/x", "a", "a/b", "a/b/c"]);
        assert_eq!(found(&tree, "+/b"), vec!["a/b"]);
        assert_eq!(found(&tree, "$SYS/+"), vec!["$SYS/x"]);
        assert_eq!(tree.remove(b"a/b"), Some("a/b".to_string()));
        assert_eq!(found(&tree, "a/#"), vec!["a", "a/b/c"]);
        assert_eq!(tree.len(), 4);
    }

    proptest! {
        #[test]
        fn agrees_with_reference_matcher(
            topics in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just(""), Just("$s")], 1..4), 0..12),
            filters in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just(""), Just("+"), Just("$s")], 1..4), 1..8),
            hash in any::<bool>(),
        ) {
            let mut tree = RetainedTree::default();
            let topics: Vec<String> = topics.iter().map(|t| t.join("/")).collect();
            for topic in &topics {
                tree.insert(topic.as_bytes(), topic.clone());
            }
            let mut unique: Vec<String> = topics.clone();
            unique.sort();
            unique.dedup();
            for filter in filters {
                let mut filter = filter.join("/");
                if hash { filter.push_str("/#"); }
                let expected: Vec<String> = unique.iter().filter(|t| filter_matches(filter.as_bytes(), t.as_bytes())).cloned().collect();
                prop_assert_eq!(found(&tree, &filter), expected, "filter {}", filter);
            }
        }
    }
}
