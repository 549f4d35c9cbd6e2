//! The subscription trie: filter levels as edges, `+` and `#` as dedicated children so a
//! match walks at most three branches per topic level. Subscribers are kept in vectors at
//! the node their filter ends on, because matching (every publish) is far hotter than
//! subscribing; a long vector also gets an index, so that subscribing and unsubscribing
//! stay O(1) with 100,000 subscribers of one filter.

use std::collections::HashMap;
use std::hash::Hash;

use super::{KeyedHasher, is_system_topic};

struct Node<K, V> {
    children: HashMap<Box<[u8]>, Node<K, V>, KeyedHasher>,
    single_level: Option<Box<Node<K, V>>>,
    /// Subscribers whose filter ends with `#` right below this node.
    multi_level: Subscribers<K, V>,
    /// Subscribers whose filter ends exactly at this node.
    exact: Subscribers<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node { children: HashMap::default(), single_level: None, multi_level: Subscribers::default(), exact: Subscribers::default() }
    }
}

/// Past this many subscribers, a node's list gets a key -> position index.
const INDEXED_FROM: usize = 32;

/// One node's subscribers: the vector a match walks, and for long lists an index into it.
struct Subscribers<K, V> {
    entries: Vec<(K, V)>,
    index: Option<HashMap<K, usize, KeyedHasher>>,
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Subscribers { entries: Vec::new(), index: None }
    }
}

impl<K, V> Subscribers<K, V> {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Hash + Eq + Clone, V> Subscribers<K, V> {
    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let at = self.position(key)?;
        Some(&mut self.entries[at].1)
    }

    fn push(&mut self, key: K, value: V) {
        if let Some(index) = self.index.as_mut() {
            index.insert(key.clone(), self.entries.len());
        }
        self.entries.push((key, value));
        if self.index.is_none() && self.entries.len() > INDEXED_FROM {
            self.index = Some(self.entries.iter().enumerate().map(|(at, (k, _))| (k.clone(), at)).collect());
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.position(key)?;
        let (removed, value) = self.entries.swap_remove(at);
        if let Some(index) = self.index.as_mut() {
            index.remove(&removed);
            if let Some((moved, _)) = self.entries.get(at) {
                index.insert(moved.clone(), at);
            }
            if self.entries.len() < INDEXED_FROM / 2 {
                self.index = None;
            }
        }
        Some(value)
    }
}

impl<K, V> Node<K, V> {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.single_level.is_none() && self.multi_level.is_empty() && self.exact.is_empty()
    }

    /// Edges out of this node (named children and the `+` child).
    fn edge_count(&self) -> usize {
        self.children.len() + usize::from(self.single_level.is_some())
    }

    fn child(&self, level: &[u8]) -> Option<&Node<K, V>> {
        if level == b"+" { self.single_level.as_deref() } else { self.children.get(level) }
    }

    fn child_mut(&mut self, level: &[u8]) -> Option<&mut Node<K, V>> {
        if level == b"+" { self.single_level.as_deref_mut() } else { self.children.get_mut(level) }
    }

    fn take_child(&mut self, level: &[u8]) -> Option<Node<K, V>> {
        if level == b"+" { self.single_level.take().map(|child| *child) } else { self.children.remove(level) }
    }

    fn subscribers_mut(&mut self, multi_level: bool) -> &mut Subscribers<K, V> {
        if multi_level { &mut self.multi_level } else { &mut self.exact }
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Tears a subtree down with an explicit stack: dropping a chain of nodes recursively
    /// would take one stack frame per topic level, and clients choose the depth.
    fn drop(&mut self) {
        let mut pending: Vec<Node<K, V>> = self.children.drain().map(|(_, child)| child).collect();
        pending.extend(self.single_level.take().map(|child| *child));
        while let Some(mut node) = pending.pop() {
            pending.extend(node.children.drain().map(|(_, child)| child));
            pending.extend(node.single_level.take().map(|child| *child));
        }
    }
}

/// Maps filters to subscribers `K` with a value `V` each (their subscription options).
/// Every operation is a loop, never recursion, so any depth of filter or topic is safe.
pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    len: usize,
    /// Counts changes to the entries (see `generation`).
    generation: u64,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        SubscriptionTree { root: Node::default(), len: 0, generation: 0 }
    }
}

fn levels(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'/')
}

/// A filter as the edges to walk and which subscriber list at the last node holds it.
fn path_of(filter: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut steps: Vec<&[u8]> = levels(filter).collect();
    let multi_level = steps.last() == Some(&&b"#"[..]);
    if multi_level {
        steps.pop();
    }
    (steps, multi_level)
}

impl<K: Hash + Eq + Clone, V> SubscriptionTree<K, V> {
    /// Number of (filter, subscriber) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Changes with every insert and every removal that found its entry: while it stays
    /// the same, a topic matches exactly what it matched before, so a match result may be
    /// kept and reused (the shard does, for runs of publishes to one topic).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds or replaces `key`'s subscription to a validated `filter`; returns the old value.
    pub fn insert(&mut self, filter: &[u8], key: K, value: V) -> Option<V> {
        self.generation += 1;
        let subscribers = self.subscribers_mut(filter);
        if let Some(existing) = subscribers.get_mut(&key) {
            return Some(std::mem::replace(existing, value));
        }
        subscribers.push(key, value);
        self.len += 1;
        None
    }

    /// `insert` for a `key` the caller knows holds no subscription to `filter` yet: no
    /// lookup of the filter's subscribers (short lists have no index).
    pub fn insert_new(&mut self, filter: &[u8], key: K, value: V) {
        self.generation += 1;
        let subscribers = self.subscribers_mut(filter);
        debug_assert!(subscribers.position(&key).is_none(), "insert_new for a key already subscribed");
        subscribers.push(key, value);
        self.len += 1;
    }

    /// The subscriber list of `filter`'s node, made if missing.
    fn subscribers_mut(&mut self, filter: &[u8]) -> &mut Subscribers<K, V> {
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
        match slot {
            Some(slot) => slot,
            None => &mut node.exact,
        }
    }

    /// Removes `key`'s subscription to `filter`, pruning the nodes that only led to it.
    pub fn remove(&mut self, filter: &[u8], key: &K) -> Option<V> {
        let (steps, multi_level) = path_of(filter);
        // First pass, read-only: is the entry there, and which edge (if any) leads to a
        // chain of nodes that all become empty without it? `prune_at` is that edge's index.
        let mut prune_at = None;
        let mut node = &self.root;
        for (depth, step) in steps.iter().enumerate() {
            node = node.child(step)?;
            let last = depth + 1 == steps.len();
            let only_the_path = !last && node.edge_count() == 1 && node.exact.is_empty() && node.multi_level.is_empty();
            if last || only_the_path {
                prune_at = prune_at.or(Some(depth));
            } else {
                prune_at = None;
            }
        }
        let subscribers = if multi_level { &node.multi_level } else { &node.exact };
        subscribers.position(key)?;
        let others = if multi_level { &node.exact } else { &node.multi_level };
        if subscribers.len() > 1 || !others.is_empty() || node.edge_count() > 0 {
            prune_at = None;
        }
        let removed = match prune_at {
            Some(depth) => {
                let mut parent = &mut self.root;
                for step in &steps[..depth] {
                    parent = parent.child_mut(step)?;
                }
                let mut detached = parent.take_child(steps[depth])?;
                let mut end = &mut detached;
                for step in &steps[depth + 1..] {
                    end = end.child_mut(step)?;
                }
                end.subscribers_mut(multi_level).remove(key)
            }
            None => {
                let mut end = &mut self.root;
                for step in &steps {
                    end = end.child_mut(step)?;
                }
                end.subscribers_mut(multi_level).remove(key)
            }
        };
        if removed.is_some() {
            self.len -= 1;
            self.generation += 1;
        }
        removed
    }

    /// Calls `visit` for every subscription whose filter matches `topic`. A subscriber
    /// with several matching filters is visited once per filter.
    pub fn for_each_match(&self, topic: &[u8], mut visit: impl FnMut(&K, &V)) {
        self.for_each_matching_list(topic, |list| {
            for (key, value) in list {
                visit(key, value);
            }
        });
    }

    /// `for_each_match` a list at a time: the subscribers of one matching filter, each
    /// key at most once in a list (a key may be in several lists).
    ///
    /// The topic is not split up front: the walk follows named children level by level,
    /// finding each `/` as it goes, and only a `+` child becomes a branch to come back to.
    /// A topic under no wildcard subscription (p2p's every publish) is one hash lookup
    /// per level and nothing else.
    pub fn for_each_matching_list(&self, topic: &[u8], mut visit: impl FnMut(&[(K, V)])) {
        if self.len == 0 {
            return;
        }
        let system = is_system_topic(topic);
        // A node with where its next topic level starts; past `topic.len()`: no level left
        // (`a/` has a last, empty level; `a` has none after `a`).
        let consumed = topic.len() + 1;
        let mut branches = walk_stack::Stack::new();
        let mut next = Some((&self.root, 0));
        while let Some((mut node, mut start)) = next {
            loop {
                // At the root, wildcards skip `$` topics (MQTT 4.7.2).
                let wildcards_allowed = !(start == 0 && system);
                if wildcards_allowed && !node.multi_level.is_empty() {
                    // `a/#` matches `a` itself as well as everything below it.
                    visit(&node.multi_level.entries);
                }
                if start >= consumed {
                    if !node.exact.is_empty() {
                        visit(&node.exact.entries);
                    }
                    break;
                }
                let end = topic[start..].iter().position(|&b| b == b'/').map_or(topic.len(), |at| start + at);
                if wildcards_allowed && let Some(child) = &node.single_level {
                    branches.push((&**child, end + 1));
                }
                match node.children.get(&topic[start..end]) {
                    Some(child) => (node, start) = (child, end + 1),
                    None => break,
                }
            }
            next = branches.pop();
        }
    }
}

/// The `+` branches a match walk comes back to: inline (and left uninitialised until
/// used, as most walks take no branch) for the depths real topics have, on the heap beyond.
mod walk_stack {
    use std::mem::MaybeUninit;

    const INLINE: usize = 16;

    pub struct Stack<T: Copy> {
        inline: [MaybeUninit<T>; INLINE],
        inline_len: usize,
        spilled: Vec<T>,
    }

    impl<T: Copy> Stack<T> {
        pub fn new() -> Self {
            Stack { inline: [const { MaybeUninit::uninit() }; INLINE], inline_len: 0, spilled: Vec::new() }
        }

        pub fn push(&mut self, item: T) {
            if self.inline_len < INLINE {
                self.inline[self.inline_len].write(item);
                self.inline_len += 1;
            } else {
                self.spilled.push(item);
            }
        }

        pub fn pop(&mut self) -> Option<T> {
            if let Some(item) = self.spilled.pop() {
                return Some(item);
            }
            if self.inline_len == 0 {
                return None;
            }
            self.inline_len -= 1;
            // SAFETY: every slot below `inline_len` was written by `push`, and `T: Copy`
            // has no drop to run twice.
            Some(unsafe { self.inline[self.inline_len].assume_init() })
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

    /// Far deeper than any stack frame per level could survive on a 2 MiB test thread.
    const DEEP_LEVELS: usize = 100_000;

    fn deep(level: &str, levels: usize, tail: &str) -> String {
        let mut topic = vec![level; levels].join("/");
        topic.push_str(tail);
        topic
    }

    #[test]
    fn every_operation_survives_a_hundred_thousand_levels() {
        let topic = deep("a", DEEP_LEVELS, "");
        let exact = topic.clone();
        let pluses = deep("+", DEEP_LEVELS, "");
        let hash = deep("a", DEEP_LEVELS - 1, "/#");
        let mut tree = SubscriptionTree::default();
        tree.insert(exact.as_bytes(), 1u32, ());
        tree.insert(pluses.as_bytes(), 2, ());
        tree.insert(hash.as_bytes(), 3, ());
        tree.insert(b"#", 4, ());
        assert_eq!(matches(&tree, &topic), vec![1, 2, 3, 4]);
        assert_eq!(matches(&tree, &deep("b", DEEP_LEVELS, "")), vec![2, 4]);
        assert_eq!(tree.remove(exact.as_bytes(), &1), Some(()));
        assert_eq!(tree.remove(pluses.as_bytes(), &2), Some(()));
        assert_eq!(matches(&tree, &topic), vec![3, 4]);
        assert_eq!(tree.remove(hash.as_bytes(), &3), Some(()));
        assert_eq!(tree.remove(b"#", &4), Some(()));
        assert!(tree.root.is_empty(), "every deep chain was pruned");
        // Dropping a deep tree (a client disconnecting with its subscriptions) is a loop too.
        tree.insert(exact.as_bytes(), 1, ());
        tree.insert(pluses.as_bytes(), 2, ());
        drop(tree);
    }

    #[test]
    fn removing_one_branch_keeps_the_shared_prefix_and_its_subscribers() {
        let mut tree = SubscriptionTree::default();
        tree.insert(b"a/b/c/d", 1u32, ());
        tree.insert(b"a/b", 2, ());
        tree.insert(b"a/b/x", 3, ());
        tree.insert(b"a/b/c/#", 4, ());
        assert_eq!(tree.remove(b"a/b/c/d", &1), Some(()));
        assert_eq!(matches(&tree, "a/b/c/d"), vec![4]);
        assert_eq!(tree.remove(b"a/b/c/#", &4), Some(()));
        assert_eq!(matches(&tree, "a/b"), vec![2]);
        assert_eq!(matches(&tree, "a/b/x"), vec![3]);
        assert_eq!(tree.remove(b"a/b/x", &9), None, "another key's entry is not removed");
        assert_eq!(tree.remove(b"a/b/x", &3), Some(()));
        assert_eq!(tree.remove(b"a/b", &2), Some(()));
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

        /// Many subscribers on few filters: lists grow past the index threshold and shrink
        /// below it again; the tree agrees with a plain set after every step.
        #[test]
        fn long_subscriber_lists_agree_with_a_set(ops in proptest::collection::vec((0u32..120, 0usize..3, any::<bool>()), 1..600)) {
            const FILTERS: [&str; 3] = ["a/b", "a/#", "+/b"];
            let mut tree = SubscriptionTree::default();
            let mut model = std::collections::BTreeSet::new();
            for (key, filter, add) in ops {
                if add {
                    let replaced = tree.insert(FILTERS[filter].as_bytes(), key, ()).is_some();
                    prop_assert_eq!(replaced, !model.insert((filter, key)));
                } else {
                    prop_assert_eq!(tree.remove(FILTERS[filter].as_bytes(), &key).is_some(), model.remove(&(filter, key)));
                }
                prop_assert_eq!(tree.len(), model.len());
            }
            let expected: Vec<u32> = model.iter().map(|&(_, key)| key).collect::<Vec<_>>();
            let mut expected = expected;
            expected.sort();
            prop_assert_eq!(matches(&tree, "a/b"), expected);
        }

        /// What the shard relies on to reuse a match: the generation moves whenever any
        /// topic's matches may have changed (values included), and a failed removal,
        /// which changes nothing, leaves it.
        #[test]
        fn an_unchanged_generation_means_unchanged_matches(ops in proptest::collection::vec((0u32..6, filter(), any::<bool>(), 0u8..3), 1..60)) {
            let topics = ["a/b", "a", "b/a/b", "$x/a", "a//b"];
            let mut tree = SubscriptionTree::default();
            let snapshot = |tree: &SubscriptionTree<u32, u8>| -> Vec<Vec<(u32, u8)>> {
                topics.iter().map(|topic| {
                    let mut found = Vec::new();
                    tree.for_each_match(topic.as_bytes(), |key, value| found.push((*key, *value)));
                    found.sort();
                    found
                }).collect()
            };
            for (key, filter, add, value) in ops {
                let (before, generation) = (snapshot(&tree), tree.generation());
                let changed = if add {
                    tree.insert(filter.as_bytes(), key, value);
                    true
                } else {
                    tree.remove(filter.as_bytes(), &key).is_some()
                };
                prop_assert_eq!(tree.generation() != generation, changed);
                if !changed {
                    prop_assert_eq!(snapshot(&tree), before);
                }
            }
        }
    }
}
