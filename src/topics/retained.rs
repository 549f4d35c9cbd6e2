//! The retained-message store: one message per topic, found by a filter. The mirror image
//! of the subscription trie: here topics are stored and a filter walks them.

use std::collections::HashMap;

use super::{KeyedHasher, is_system_topic};

struct Node<V> {
    children: HashMap<Box<[u8]>, Node<V>, KeyedHasher>,
    message: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { children: HashMap::default(), message: None }
    }
}

impl<V> Drop for Node<V> {
    /// Tears a subtree down with an explicit stack: a recursive drop takes one stack frame
    /// per topic level, and publishers choose the depth.
    fn drop(&mut self) {
        let mut pending: Vec<Node<V>> = self.children.drain().map(|(_, child)| child).collect();
        while let Some(mut node) = pending.pop() {
            pending.extend(node.children.drain().map(|(_, child)| child));
        }
    }
}

/// Every operation is a loop, never recursion, so any depth of topic or filter is safe.
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

    /// Clears `topic` (a retained PUBLISH with an empty payload), pruning the nodes that
    /// only led to it.
    pub fn remove(&mut self, topic: &[u8]) -> Option<V> {
        let levels: Vec<&[u8]> = topic.split(|&b| b == b'/').collect();
        // Read-only pass: is it there, and which edge starts a chain that empties with it?
        let mut prune_at = None;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            node = node.children.get(*level)?;
            let last = depth + 1 == levels.len();
            let only_the_path = !last && node.children.len() == 1 && node.message.is_none();
            if last || only_the_path {
                prune_at = prune_at.or(Some(depth));
            } else {
                prune_at = None;
            }
        }
        node.message.as_ref()?;
        if !node.children.is_empty() {
            prune_at = None;
        }
        let removed = match prune_at {
            Some(depth) => {
                let mut parent = &mut self.root;
                for level in &levels[..depth] {
                    parent = parent.children.get_mut(*level)?;
                }
                let mut detached = parent.children.remove(levels[depth])?;
                let mut end = &mut detached;
                for level in &levels[depth + 1..] {
                    end = end.children.get_mut(*level)?;
                }
                end.message.take()
            }
            None => {
                let mut end = &mut self.root;
                for level in &levels {
                    end = end.children.get_mut(*level)?;
                }
                end.message.take()
            }
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit` for every retained message whose topic `filter` matches.
    pub fn for_each_match(&self, filter: &[u8], mut visit: impl FnMut(&V)) {
        let levels: Vec<&[u8]> = filter.split(|&b| b == b'/').collect();
        // (node, filter levels consumed); `+` can fan out to every child.
        let mut pending: Vec<(&Node<V>, usize)> = vec![(&self.root, 0)];
        while let Some((node, depth)) = pending.pop() {
            let Some(level) = levels.get(depth) else {
                if let Some(message) = &node.message {
                    visit(message);
                }
                continue;
            };
            // At the root, wildcards skip `$` topics (MQTT 4.7.2).
            let at_root = depth == 0;
            let eligible = |name: &[u8]| !(at_root && is_system_topic(name));
            match *level {
                b"#" => {
                    // `a/#` includes `a` itself.
                    if !at_root && let Some(message) = &node.message {
                        visit(message);
                    }
                    for (name, child) in &node.children {
                        if eligible(name) {
                            Self::visit_all(child, &mut visit);
                        }
                    }
                }
                b"+" => {
                    for (name, child) in &node.children {
                        if eligible(name) {
                            pending.push((child, depth + 1));
                        }
                    }
                }
                exact => {
                    if let Some(child) = node.children.get(exact) {
                        pending.push((child, depth + 1));
                    }
                }
            }
        }
    }

    /// Calls `visit` for every retained message, `$` topics included.
    pub fn for_each(&self, mut visit: impl FnMut(&V)) {
        Self::visit_all(&self.root, &mut visit);
    }

    fn visit_all(node: &Node<V>, visit: &mut impl FnMut(&V)) {
        let mut pending = vec![node];
        while let Some(node) = pending.pop() {
            if let Some(message) = &node.message {
                visit(message);
            }
            pending.extend(node.children.values());
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

    const DEEP_LEVELS: usize = 100_000;

    #[test]
    fn every_operation_survives_a_hundred_thousand_levels() {
        let topic = vec!["a"; DEEP_LEVELS].join("/");
        let mut tree = RetainedTree::default();
        tree.insert(topic.as_bytes(), "deep".to_string());
        tree.insert(b"a", "shallow".to_string());
        assert_eq!(found(&tree, "#"), vec!["deep", "shallow"]);
        assert_eq!(found(&tree, "a/#"), vec!["deep", "shallow"]);
        assert_eq!(found(&tree, &vec!["+"; DEEP_LEVELS].join("/")), vec!["deep"]);
        assert_eq!(found(&tree, &topic), vec!["deep"]);
        assert_eq!(tree.remove(topic.as_bytes()), Some("deep".to_string()));
        assert_eq!(found(&tree, "#"), vec!["shallow"]);
        assert_eq!(tree.remove(b"a"), Some("shallow".to_string()));
        assert!(tree.root.children.is_empty(), "the deep chain was pruned");
        tree.insert(topic.as_bytes(), "again".to_string());
        drop(tree);
    }

    #[test]
    fn removing_a_topic_keeps_its_neighbours() {
        let mut tree = RetainedTree::default();
        for topic in ["a/b/c/d", "a/b", "a/b/x"] {
            tree.insert(topic.as_bytes(), topic.to_string());
        }
        assert_eq!(tree.remove(b"a/b/c"), None, "an inner node without a message");
        assert_eq!(tree.remove(b"a/b/c/d"), Some("a/b/c/d".to_string()));
        assert_eq!(found(&tree, "#"), vec!["a/b", "a/b/x"]);
        assert_eq!(tree.remove(b"a/b"), Some("a/b".to_string()));
        assert_eq!(found(&tree, "a/+/x"), vec!["a/b/x"]);
        assert_eq!(tree.len(), 1);
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
