//! The retained-message store (3.3.1.3): at most one message per topic name.
//!
//! A trie keyed by topic levels, so a subscription's filter visits only the branches it can
//! match instead of scanning every retained topic: a literal level is one hash lookup, `+`
//! visits the children of one node, `#` the subtree below it. Empty levels are real levels,
//! `#` also matches its parent level (4.7.1.2) and a leading wildcard never matches a
//! topic starting with `$` [MQTT-4.7.2-1], exactly like [`sluice_codec::topic_matches`].
//!
//! Topics can be up to 65,535 bytes, i.e. up to 65,536 (empty) levels, so nothing here recurses
//! per level: traversals use an explicit work stack and dropping a node tears its subtree down
//! with a work list.

use std::collections::HashMap;

/// Retained messages by topic name.
#[derive(Debug)]
pub struct RetainedStore<M> {
    /// The node for zero levels; a topic always has at least one level (the topic "" has one
    /// empty level), so it never holds a message itself.
    root: Node<M>,
    /// Number of retained messages, kept so `len` is O(1).
    len: usize,
}

impl<M> Default for RetainedStore<M> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<M> RetainedStore<M> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `msg` as the retained message of `topic`, returning the one it replaces
    /// [MQTT-3.3.1-5].
    pub fn insert(&mut self, topic: &str, msg: M) -> Option<M> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        let old = node.msg.replace(msg);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the retained message of `topic` [MQTT-3.3.1-6], pruning the nodes that only led
    /// to it so memory returns after churn.
    pub fn remove(&mut self, topic: &str) -> Option<M> {
        // Pass 1: walk down and take the message, noting the shallowest node from which the
        // rest of the path holds nothing but the path itself (no message, one child).
        let mut node = &mut self.root;
        let mut depth = 0usize;
        let mut chain_start: Option<usize> = None;
        for level in topic.split('/') {
            if depth > 0 {
                let only_path = node.msg.is_none() && node.children.len() == 1;
                if !only_path {
                    chain_start = None;
                } else if chain_start.is_none() {
                    chain_start = Some(depth);
                }
            }
            node = node.children.get_mut(level)?;
            depth += 1;
        }
        let removed = node.msg.take()?;
        self.len -= 1;
        // Pass 2: if the topic's node is now empty, cut the chain of nodes that only led to it.
        if node.children.is_empty() {
            let cut = chain_start.unwrap_or(depth);
            let mut parent = &mut self.root;
            let mut levels = topic.split('/');
            for _ in 1..cut {
                parent = match levels.next().and_then(|l| parent.children.get_mut(l)) {
                    Some(n) => n,
                    None => return Some(removed),
                };
            }
            if let Some(level) = levels.next() {
                parent.children.remove(level);
                if parent.children.capacity() >= 64
                    && parent.children.len() * 4 <= parent.children.capacity()
                {
                    parent.children.shrink_to_fit();
                }
            }
        }
        Some(removed)
    }

    /// The retained message of `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<&M> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.msg.as_ref()
    }

    /// Calls f(topic, msg) for every retained message whose topic matches the (non-shared)
    /// filter [MQTT-3.3.1-9]: only the matching branches of the trie are visited.
    pub fn for_each_match(&self, filter: &str, f: impl FnMut(&str, &M)) {
        self.walk(Rest::Levels(Some(filter)), f);
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the messages for which keep(topic, msg) is true (used to purge expired ones),
    /// pruning the nodes left empty.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &M) -> bool) {
        let mut doomed: Vec<Box<str>> = Vec::new();
        self.walk(Rest::All, |topic, msg| {
            if !keep(topic, msg) {
                doomed.push(Box::from(topic));
            }
        });
        for topic in doomed {
            self.remove(&topic);
        }
    }

    /// Depth-first traversal calling f(topic, msg) for the messages selected by `start`.
    /// The topic is rebuilt in one reused buffer; each stack frame records the buffer length
    /// of its parent, which frames popped before it never shorten.
    fn walk<'a>(&'a self, start: Rest<'a>, mut f: impl FnMut(&str, &M)) {
        // Every level is written as "/level", so the topic is `path[1..]`.
        let mut path = String::new();
        let mut stack: Vec<Frame<'a, M>> = vec![Frame {
            node: &self.root,
            level: None,
            parent_len: 0,
            rest: start,
        }];
        while let Some(frame) = stack.pop() {
            path.truncate(frame.parent_len);
            let is_root = frame.level.is_none();
            if let Some(level) = frame.level {
                path.push('/');
                path.push_str(level);
            }
            let len = path.len();
            let node = frame.node;
            let topic = path.get(1..).unwrap_or("");
            let mut emit = || {
                if let Some(msg) = &node.msg {
                    f(topic, msg);
                }
            };
            // A leading wildcard never matches a topic starting with '$' [MQTT-4.7.2-1].
            let visible = |level: &str| !(is_root && crate::topic::is_system(level));
            match frame.rest {
                Rest::All => {
                    emit();
                    stack.extend(node.children.iter().map(|(level, child)| Frame {
                        node: child,
                        level: Some(level),
                        parent_len: len,
                        rest: Rest::All,
                    }));
                }
                Rest::Levels(None) => emit(),
                Rest::Levels(Some(rest)) => {
                    let (level, next) = match rest.split_once('/') {
                        Some((level, next)) => (level, Some(next)),
                        None => (rest, None),
                    };
                    match level {
                        // '#' matches the parent level too (4.7.1.2) and everything below.
                        "#" => {
                            emit();
                            stack.extend(node.children.iter().filter(|(l, _)| visible(l)).map(
                                |(level, child)| Frame {
                                    node: child,
                                    level: Some(level),
                                    parent_len: len,
                                    rest: Rest::All,
                                },
                            ));
                        }
                        "+" => {
                            stack.extend(node.children.iter().filter(|(l, _)| visible(l)).map(
                                |(level, child)| Frame {
                                    node: child,
                                    level: Some(level),
                                    parent_len: len,
                                    rest: Rest::Levels(next),
                                },
                            ));
                        }
                        _ => {
                            if let Some((level, child)) = node.children.get_key_value(level) {
                                stack.push(Frame {
                                    node: child,
                                    level: Some(level),
                                    parent_len: len,
                                    rest: Rest::Levels(next),
                                });
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What remains to be matched below a node during a traversal.
#[derive(Debug, Clone, Copy)]
enum Rest<'a> {
    /// The filter levels still to match (None: the filter ended at this node).
    Levels(Option<&'a str>),
    /// Everything in the subtree (below a `#`, or for `retain`).
    All,
}

/// A pending node of a traversal.
#[derive(Debug)]
struct Frame<'a, M> {
    /// The node to visit.
    node: &'a Node<M>,
    /// Its level (None for the root), appended to the topic buffer when it is visited.
    level: Option<&'a str>,
    /// Length of the topic buffer for its parent, to truncate back to.
    parent_len: usize,
    /// What to match below it.
    rest: Rest<'a>,
}

/// One topic level of the trie.
#[derive(Debug)]
struct Node<M> {
    /// Children by literal level (including the empty level), looked up by `&str`.
    children: HashMap<Box<str>, Node<M>>,
    /// The retained message of the topic ending at this node.
    msg: Option<M>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            msg: None,
        }
    }
}

impl<M> Drop for Node<M> {
    /// Tears the subtree down with a work list instead of recursion, so a 65,536-level topic
    /// cannot overflow the stack when it is removed or the store is dropped.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut work: Vec<Node<M>> = self.children.drain().map(|(_, child)| child).collect();
        while let Some(mut node) = work.pop() {
            work.extend(node.children.drain().map(|(_, child)| child));
            // `node` now has no children, so dropping it does not recurse.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_codec::topic_matches;
    use std::collections::BTreeMap;

    fn store_of(topics: &[&'static str]) -> RetainedStore<&'static str> {
        let mut store = RetainedStore::new();
        for t in topics {
            store.insert(t, *t);
        }
        store
    }

    /// Sorted topics of the messages matching `filter`, checking each message is its topic's.
    fn matching(store: &RetainedStore<&'static str>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.for_each_match(filter, |topic, msg| {
            assert_eq!(topic, *msg);
            out.push(topic.to_owned());
        });
        out.sort();
        out
    }

    fn node_count<M>(node: &Node<M>) -> usize {
        let mut count = 0;
        let mut work = vec![node];
        while let Some(n) = work.pop() {
            count += 1;
            work.extend(n.children.values());
        }
        count
    }

    #[test]
    fn empty_levels_are_real_levels() {
        // 4.7.1, 4.7.3: zero-length levels are levels.
        let store = store_of(&["a//b", "/a", "a/", "a/b", "a", "/", ""]);
        assert_eq!(matching(&store, "a//b"), ["a//b"]);
        assert_eq!(matching(&store, "+/+"), ["/", "/a", "a/", "a/b"]);
        assert_eq!(matching(&store, "/+"), ["/", "/a"]);
        assert_eq!(matching(&store, "+"), ["", "a"]);
        assert_eq!(matching(&store, "a/+"), ["a/", "a/b"]);
        assert_eq!(matching(&store, "a/+/b"), ["a//b"]);
        assert_eq!(store.get("a/"), Some(&"a/"));
        assert_eq!(store.get(""), Some(&""));
        assert_eq!(store.get("a//"), None);
    }

    #[test]
    fn multi_level_wildcard_matches_parent() {
        // 4.7.1.2: "a/#" matches "a" (no statement id).
        let store = store_of(&["a", "a/b", "a/b/c", "ab", "b"]);
        assert_eq!(matching(&store, "a/#"), ["a", "a/b", "a/b/c"]);
        assert_eq!(matching(&store, "a/b/#"), ["a/b", "a/b/c"]);
        assert_eq!(matching(&store, "a/+/#"), ["a/b", "a/b/c"]);
        assert_eq!(matching(&store, "#"), ["a", "a/b", "a/b/c", "ab", "b"]);
        assert_eq!(matching(&store, "+/#"), ["a", "a/b", "a/b/c", "ab", "b"]);
        assert!(matching(&store, "c/#").is_empty());
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcards() {
        // [MQTT-4.7.2-1]
        let store = store_of(&["$SYS/x", "$SYS", "a/$SYS", "b/x"]);
        assert_eq!(matching(&store, "#"), ["a/$SYS", "b/x"]);
        assert_eq!(matching(&store, "+/x"), ["b/x"]);
        assert_eq!(matching(&store, "+"), Vec::<String>::new());
        assert_eq!(matching(&store, "$SYS/#"), ["$SYS", "$SYS/x"]);
        assert_eq!(matching(&store, "$SYS/+"), ["$SYS/x"]);
        assert_eq!(matching(&store, "$SYS/x"), ["$SYS/x"]);
        assert_eq!(matching(&store, "a/+"), ["a/$SYS"]);
    }

    #[test]
    fn non_ascii_levels() {
        // Levels compare as whole UTF-8 strings, without normalization [MQTT-4.7.3-4].
        let store = store_of(&["é/ü", "e/u", "日本/東京"]);
        assert_eq!(matching(&store, "é/+"), ["é/ü"]);
        assert_eq!(matching(&store, "+/ü"), ["é/ü"]);
        assert_eq!(matching(&store, "日本/#"), ["日本/東京"]);
        assert!(matching(&store, "日/#").is_empty());
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        // [MQTT-3.3.1-5]: a new retained message replaces the previous one.
        let mut store: RetainedStore<u32> = RetainedStore::new();
        assert_eq!(store.insert("a/b/c", 1), None);
        assert_eq!(store.insert("a/b/c", 2), Some(1));
        assert_eq!(store.insert("a", 3), None);
        assert_eq!(store.insert("a/x/y/z", 4), None);
        assert_eq!(store.len(), 3);
        assert_eq!(store.get("a/b/c"), Some(&2));
        assert_eq!(node_count(&store.root), 7); // root a b c x y z
                                                // Missing topics remove nothing and create nothing.
        assert_eq!(store.remove("a/b"), None);
        assert_eq!(store.remove("a/b/c/d"), None);
        assert_eq!(store.remove("q"), None);
        assert_eq!(node_count(&store.root), 7);
        assert_eq!(store.remove("a/x/y/z"), Some(4));
        assert_eq!(node_count(&store.root), 4); // root a b c
        assert_eq!(store.remove("a/b/c"), Some(2));
        assert_eq!(node_count(&store.root), 2); // root a
        assert_eq!(store.remove("a"), Some(3));
        assert_eq!(store.remove("a"), None);
        assert_eq!(store.len(), 0);
        assert!(store.is_empty());
        assert_eq!(node_count(&store.root), 1);
    }

    #[test]
    fn retain_purges_and_prunes() {
        let mut store: RetainedStore<u32> = RetainedStore::new();
        for (i, t) in ["a", "a/b", "a/b/c", "$SYS/x", "", "/", "é"]
            .iter()
            .enumerate()
        {
            store.insert(t, i as u32);
        }
        let mut seen = Vec::new();
        store.retain(|topic, v| {
            seen.push(topic.to_owned());
            v % 2 == 0
        });
        seen.sort();
        // Every message is offered, '$' topics included.
        assert_eq!(seen, ["", "$SYS/x", "/", "a", "a/b", "a/b/c", "é"]);
        assert_eq!(store.len(), 4);
        assert_eq!(store.get("a"), Some(&0));
        assert_eq!(store.get("a/b"), None);
        assert_eq!(store.get("a/b/c"), Some(&2));
        assert_eq!(store.get("$SYS/x"), None);
        store.retain(|_, _| false);
        assert!(store.is_empty());
        assert_eq!(node_count(&store.root), 1);
    }

    #[test]
    fn very_deep_topics_do_not_overflow_the_stack() {
        // A 65,535-byte topic can have 65,536 empty levels.
        let deep = "/".repeat(65_535);
        let mut store: RetainedStore<u8> = RetainedStore::new();
        store.insert(&deep, 1);
        store.insert(&format!("{deep}/x"), 2);
        let mut found = Vec::new();
        store.for_each_match("#", |t, m| found.push((t.len(), *m)));
        found.sort();
        assert_eq!(found, [(65_535, 1), (65_537, 2)]);
        assert_eq!(store.get(&deep), Some(&1));
        assert_eq!(store.remove(&deep), Some(1));
        store.retain(|_, _| true);
        assert_eq!(store.len(), 1);
        drop(store);
    }

    const LEVELS: &[&str] = &["", "$SYS", "a", "b", "é"];
    const FILTER_LEVELS: &[&str] = &["", "+", "$SYS", "a", "b", "é"];

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(LEVELS), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(FILTER_LEVELS), 0..4),
            any::<bool>(),
        )
            .prop_filter_map("valid filter", |(mut levels, hash)| {
                if hash {
                    levels.push("#");
                }
                let filter = levels.join("/");
                sluice_codec::TopicFilter::try_from(filter.as_str())
                    .ok()
                    .filter(|f| f.shared().is_none())
                    .map(|_| filter)
            })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u32),
        Remove(String),
        Get(String),
        Match(String),
        Retain(u32),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (topic_strategy(), any::<u32>()).prop_map(|(t, v)| Op::Insert(t, v)),
            2 => topic_strategy().prop_map(Op::Remove),
            1 => topic_strategy().prop_map(Op::Get),
            3 => filter_strategy().prop_map(Op::Match),
            1 => (2..5u32).prop_map(Op::Retain),
        ]
    }

    fn store_matches(store: &RetainedStore<u32>, filter: &str) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        store.for_each_match(filter, |t, v| out.push((t.to_owned(), *v)));
        out.sort();
        out
    }

    /// The reference: a scan of every topic with the codec's matcher.
    fn oracle_matches(oracle: &BTreeMap<String, u32>, filter: &str) -> Vec<(String, u32)> {
        oracle
            .iter()
            .filter(|(t, _)| topic_matches(filter, t))
            .map(|(t, v)| (t.clone(), *v))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn store_agrees_with_linear_scan(
            ops in prop::collection::vec(op_strategy(), 1..60),
            filters in prop::collection::vec(filter_strategy(), 20),
        ) {
            let mut store: RetainedStore<u32> = RetainedStore::new();
            let mut oracle: BTreeMap<String, u32> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(t, v) => prop_assert_eq!(store.insert(&t, v), oracle.insert(t, v)),
                    Op::Remove(t) => prop_assert_eq!(store.remove(&t), oracle.remove(&t)),
                    Op::Get(t) => prop_assert_eq!(store.get(&t), oracle.get(&t)),
                    Op::Match(f) => {
                        prop_assert_eq!(store_matches(&store, &f), oracle_matches(&oracle, &f), "filter {:?}", f);
                    }
                    Op::Retain(k) => {
                        let mut offered = Vec::new();
                        store.retain(|t, v| {
                            offered.push(t.to_owned());
                            v % k != 0
                        });
                        offered.sort();
                        prop_assert_eq!(offered, oracle.keys().cloned().collect::<Vec<_>>());
                        oracle.retain(|_, v| *v % k != 0);
                    }
                }
                prop_assert_eq!(store.len(), oracle.len());
            }
            for f in filters {
                prop_assert_eq!(store_matches(&store, &f), oracle_matches(&oracle, &f), "filter {:?}", f);
            }
            for (t, v) in std::mem::take(&mut oracle) {
                prop_assert_eq!(store.remove(&t), Some(v));
            }
            prop_assert!(store.is_empty());
            prop_assert_eq!(node_count(&store.root), 1);
        }
    }
}
