//! The subscription tree: which subscriptions match a topic name (4.7, 4.8.2).
//!
//! A trie over topic levels. Each node has its exact-level children in a hash map, a separate
//! `+` child and a set of `#` subscribers, so matching a topic walks one literal path and only
//! branches where a `+` subscription exists; the cost depends on the topic's depth and on the
//! filters that actually match, not on the number of subscriptions.
//!
//! Levels are split on `/` only: an empty level is a real level, so `a//b`, `/a` and `a/` have
//! three, two and two levels (4.7.1, 4.7.3). Shared subscriptions
//! (`$share/{group}/{filter}`) live in the same trie under their matched filter, keyed by
//! group as well as by client, so that `a/b`, `$share/g1/a/b` and `$share/g2/a/b` from one
//! client are three distinct subscriptions (4.8.2).
//!
//! Filters and topics can be up to 65,535 bytes, i.e. up to 65,536 (empty) levels, so nothing
//! here recurses per level: matching uses an explicit work stack, unsubscribing prunes in two
//! iterative passes, and dropping a node tears its subtree down with a work list.

use std::collections::HashMap;
use std::hash::Hash;

use sluice_codec::TopicFilter;

/// All subscriptions, keyed by topic filter and client.
#[derive(Debug)]
pub struct SubscriptionTree<K, V> {
    /// The node for zero levels; a filter always has at least one level, so its own `exact`
    /// set stays empty and only its children, `+` child and `#` set (the filter `#`) are used.
    root: Node<K, V>,
    /// Number of (filter, client) subscriptions, kept so `len` is O(1).
    len: usize,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Clone + Eq + Hash, V> SubscriptionTree<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the subscription of `client` to `filter`; returns the replaced value.
    /// A client has at most one subscription per filter: a second SUBSCRIBE to the same filter
    /// replaces the first [MQTT-3.8.4-3].
    pub fn subscribe(&mut self, filter: &TopicFilter, client: K, value: V) -> Option<V> {
        let (group, match_filter) = split_shared(filter);
        let mut node = &mut self.root;
        let mut levels = match_filter.split('/');
        let subscribers = loop {
            match levels.next() {
                None => break &mut node.exact,
                // '#' is always the last level of a valid filter [MQTT-4.7.1-1].
                Some("#") => break &mut **node.multi.get_or_insert_with(Box::default),
                Some("+") => node = node.plus.get_or_insert_with(Box::default),
                Some(level) => node = node.children.get_or_insert(level),
            }
        };
        let old = subscribers.insert(group, client, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the subscription of `client` to `filter`; returns its value. Nodes left empty
    /// are removed, so memory returns after subscription churn.
    pub fn unsubscribe(&mut self, filter: &TopicFilter, client: &K) -> Option<V> {
        let (group, match_filter) = split_shared(filter);
        // Pass 1: walk down to the filter's node and remove the subscription, noting the
        // shallowest node from which the rest of the path holds nothing but the path itself
        // (each node has no subscribers and exactly one child, the next one on the path).
        let mut node = &mut self.root;
        let mut depth = 0usize;
        let mut chain_start: Option<usize> = None;
        let mut levels = match_filter.split('/');
        let removed = loop {
            let level = match levels.next() {
                None => break node.exact.remove(group, client)?,
                Some("#") => {
                    let subscribers = node.multi.as_deref_mut()?;
                    let value = subscribers.remove(group, client)?;
                    if subscribers.is_empty() {
                        node.multi = None;
                    }
                    break value;
                }
                Some(level) => level,
            };
            // Passing through a node (not the root): is this its only content?
            if depth > 0 {
                let only_path = node.exact.is_empty()
                    && node.multi.is_none()
                    && node.children.len() + usize::from(node.plus.is_some()) == 1;
                if !only_path {
                    chain_start = None;
                } else if chain_start.is_none() {
                    chain_start = Some(depth);
                }
            }
            node = if level == "+" {
                node.plus.as_deref_mut()?
            } else {
                node.children.get_mut(level)?
            };
            depth += 1;
        };
        self.len -= 1;
        // Pass 2: if the filter's node is now empty, cut the chain of nodes that only led to it.
        if depth > 0 && node.is_empty() {
            let cut = chain_start.unwrap_or(depth);
            let mut parent = &mut self.root;
            let mut levels = match_filter.split('/');
            for _ in 1..cut {
                parent = match levels.next() {
                    Some("+") => match parent.plus.as_deref_mut() {
                        Some(n) => n,
                        None => return Some(removed),
                    },
                    Some(level) => match parent.children.get_mut(level) {
                        Some(n) => n,
                        None => return Some(removed),
                    },
                    None => return Some(removed),
                };
            }
            match levels.next() {
                Some("+") => parent.plus = None,
                Some(level) => {
                    parent.children.remove(level);
                }
                None => {}
            }
        }
        Some(removed)
    }

    /// Calls f(share_group, client, value) for every subscription whose filter matches `topic`
    /// (share_group is Some(group name) for `$share/{group}/{filter}` subscriptions, else None).
    ///
    /// Does not allocate unless more than 16 `+` branches are pending at once.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(Option<&str>, &K, &V)) {
        let root = &self.root;
        // A filter starting with a wildcard never matches a topic starting with '$'
        // [MQTT-4.7.2-1]; only the root's '+' child and '#' set are such filters.
        let system = crate::topic::is_system(topic);
        if !system {
            if let Some(subscribers) = &root.multi {
                subscribers.for_each(&mut f);
            }
        }
        let mut pending = Pending::new();
        let (level, rest) = split_level(topic);
        if !system {
            if let Some(plus) = &root.plus {
                pending.push((&**plus, rest));
            }
        }
        if let Some(child) = root.children.get(level) {
            pending.push((child, rest));
        }
        // Each pending entry is a node whose filter prefix matched the topic's levels so far,
        // with the topic levels still to match. Follow the literal path in a loop and defer
        // the '+' branches.
        while let Some((mut node, mut rest)) = pending.pop() {
            loop {
                // '#' matches any number of remaining levels, including none, so "a/#" also
                // matches "a" (4.7.1.2; non-normative text, no statement id).
                if let Some(subscribers) = &node.multi {
                    subscribers.for_each(&mut f);
                }
                let Some(remaining) = rest else {
                    node.exact.for_each(&mut f);
                    break;
                };
                let (level, next) = split_level(remaining);
                let plus = node.plus.as_deref();
                match (node.children.get(level), plus) {
                    (Some(child), Some(plus)) => {
                        pending.push((plus, next));
                        node = child;
                    }
                    (Some(child), None) => node = child,
                    (None, Some(plus)) => node = plus,
                    (None, None) => break,
                }
                rest = next;
            }
        }
    }

    /// Calls f(filter, share_group, client, value) for every subscription in the tree (the
    /// admin API's listing; not for the hot path). `filter` is the matching part, without
    /// `$share/{group}/`. Walks with a work list and one path buffer, so a deep filter costs
    /// neither stack nor a copy of its path per level.
    pub fn for_each_subscription(&self, mut f: impl FnMut(&str, Option<&str>, &K, &V)) {
        /// A node to visit: the path's length before its level, and its level (None: the
        /// root, which has no level; an empty first level, as in "/a", is Some("")).
        struct Visit<'t, K, V> {
            node: &'t Node<K, V>,
            before: usize,
            level: Option<&'t str>,
            first: bool,
        }
        let mut work = vec![Visit {
            node: &self.root,
            before: 0,
            level: None,
            first: true,
        }];
        let mut path = String::new();
        while let Some(v) = work.pop() {
            path.truncate(v.before);
            if let Some(level) = v.level {
                if !v.first {
                    path.push('/');
                }
                path.push_str(level);
            }
            let node = v.node;
            node.exact
                .for_each(&mut |group, client, value| f(&path, group, client, value));
            if let Some(multi) = &node.multi {
                let filter = match v.level {
                    None => "#".to_owned(),
                    Some(_) => format!("{path}/#"),
                };
                multi.for_each(&mut |group, client, value| f(&filter, group, client, value));
            }
            let first = v.level.is_none();
            let before = path.len();
            if let Some(plus) = &node.plus {
                work.push(Visit {
                    node: plus,
                    before,
                    level: Some("+"),
                    first,
                });
            }
            for (level, child) in node.children.0.iter().flat_map(|m| m.iter()) {
                work.push(Visit {
                    node: child,
                    before,
                    level: Some(level),
                    first,
                });
            }
        }
    }

    /// Number of (filter, client) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// (share group, matched filter) of a filter; the group is None for a non-shared one.
fn split_shared(filter: &TopicFilter) -> (Option<&str>, &str) {
    match filter.shared() {
        Some((group, match_filter)) => (Some(group), match_filter),
        None => (None, filter.as_str()),
    }
}

/// The first level of `levels` and the rest after its '/', if there is one.
fn split_level(levels: &str) -> (&str, Option<&str>) {
    match levels.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (levels, None),
    }
}

/// Gives memory back after a map lost most of its entries (a hot topic's subscriber set or a
/// busy level's children after churn). Amortized O(1): the map must then double to regrow.
fn shrink_if_sparse<K2: Eq + Hash, V2>(map: &mut HashMap<K2, V2>) {
    if map.capacity() >= 64 && map.len() * 4 <= map.capacity() {
        map.shrink_to_fit();
    }
}

/// One topic level of the trie.
#[derive(Debug)]
struct Node<K, V> {
    /// Children for literal levels (including the empty level), looked up by the topic's
    /// level as `&str` without allocating.
    children: Children<K, V>,
    /// The child for a `+` level, kept apart from `children` so matching checks it with no
    /// hashing and so a topic level spelled "+" cannot be confused with the wildcard.
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers of the filter made of this node's path followed by `#`; boxed because most
    /// nodes have none, which keeps nodes small.
    multi: Option<Box<Subscribers<K, V>>>,
    /// Subscribers of the filter that ends exactly at this node.
    exact: Subscribers<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self {
            children: Children(None),
            plus: None,
            multi: None,
            exact: Subscribers::default(),
        }
    }
}

impl<K, V> Node<K, V> {
    /// True when the node holds no subscription and has no children, i.e. can be pruned.
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.multi.is_none()
            && self.exact.is_empty()
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Tears the subtree down with a work list instead of recursion, so a 65,536-level filter
    /// cannot overflow the stack when it is unsubscribed or the tree is dropped.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut work: Vec<Node<K, V>> = Vec::new();
        let detach = |node: &mut Node<K, V>, work: &mut Vec<Node<K, V>>| {
            if let Some(children) = node.children.0.take() {
                work.extend(children.into_values());
            }
            if let Some(plus) = node.plus.take() {
                work.push(*plus);
            }
        };
        detach(self, &mut work);
        while let Some(mut node) = work.pop() {
            detach(&mut node, &mut work);
            // `node` now has no children, so dropping it does not recurse.
        }
    }
}

/// A node's literal children: a hash map, boxed and allocated with the first child.
///
/// Every subscribed filter ends in a node, most of them leaves (a device's own topic), and
/// every node sits in its parent's table, so the node's size is paid for about 1.6 times per
/// subscription (the table's load factor): an empty inline `HashMap` (48 bytes) in every leaf
/// cost more than the leaf's one subscriber. Boxed, a leaf pays 8 bytes.
#[derive(Debug)]
struct Children<K, V>(Option<Box<ChildTable<K, V>>>);

/// Children by their level.
type ChildTable<K, V> = HashMap<Box<str>, Node<K, V>>;

impl<K, V> Children<K, V> {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn get(&self, level: &str) -> Option<&Node<K, V>> {
        self.0.as_ref()?.get(level)
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        self.0.as_mut()?.get_mut(level)
    }

    /// The child for `level`, created empty if there is none.
    fn get_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        self.0
            .get_or_insert_with(Box::default)
            .entry(Box::from(level))
            .or_default()
    }

    /// Removes the child for `level`; the table goes once empty, and shrinks when sparse.
    fn remove(&mut self, level: &str) {
        if let Some(map) = self.0.as_mut() {
            map.remove(level);
            if map.is_empty() {
                self.0 = None;
            } else {
                shrink_if_sparse(map);
            }
        }
    }
}

/// The subscriptions of one filter (one node, or one node's `#`).
#[derive(Debug)]
struct Subscribers<K, V> {
    /// Non-shared subscriptions, at most one per client [MQTT-3.8.4-3].
    plain: Plain<K, V>,
    /// Shared subscriptions by share name, then client: each group is a distinct subscription
    /// of the same filter (4.8.2). Empty groups are removed. Boxed and allocated on first use:
    /// most filters have no shared subscription, and every node carries a `Subscribers`.
    shared: Option<Box<Groups<K, V>>>,
}

/// Shared subscriptions of one filter: share name -> client -> value.
type Groups<K, V> = HashMap<Box<str>, HashMap<K, V>>;

/// A filter's plain subscribers: a short vector while few (most filters have one subscriber,
/// and a one-entry hash map costs four buckets and control bytes), a hash map past
/// [`Plain::FEW`], so a filter with thousands of subscribers is still O(1) per client.
#[derive(Debug)]
///
/// The vector grows one entry at a time (`reserve_exact`): left to itself its first push
/// reserves room for four, and most filters keep one subscriber. The map is boxed so that
/// `Plain` stays the size of the vector.
// Boxed on purpose (see above): 8 bytes in every node instead of 48.
#[allow(clippy::box_collection)]
enum Plain<K, V> {
    Few(Vec<(K, V)>),
    Many(Box<HashMap<K, V>>),
}

impl<K, V> Plain<K, V> {
    /// Up to this many subscribers live in a vector (a linear scan of a few keys beats hashing).
    const FEW: usize = 8;

    fn is_empty(&self) -> bool {
        match self {
            Plain::Few(v) => v.is_empty(),
            Plain::Many(m) => m.is_empty(),
        }
    }

    fn for_each(&self, f: &mut impl FnMut(Option<&str>, &K, &V)) {
        match self {
            Plain::Few(v) => v.iter().for_each(|(c, value)| f(None, c, value)),
            Plain::Many(m) => m.iter().for_each(|(c, value)| f(None, c, value)),
        }
    }
}

impl<K: Eq + Hash, V> Plain<K, V> {
    fn insert(&mut self, client: K, value: V) -> Option<V> {
        match self {
            Plain::Few(v) => {
                if let Some(e) = v.iter_mut().find(|(c, _)| *c == client) {
                    return Some(std::mem::replace(&mut e.1, value));
                }
                if v.len() < Self::FEW {
                    v.reserve_exact(1);
                    v.push((client, value));
                } else {
                    let mut m: HashMap<K, V> = v.drain(..).collect();
                    m.insert(client, value);
                    *self = Plain::Many(Box::new(m));
                }
                None
            }
            Plain::Many(m) => m.insert(client, value),
        }
    }

    fn remove(&mut self, client: &K) -> Option<V> {
        match self {
            Plain::Few(v) => {
                let i = v.iter().position(|(c, _)| c == client)?;
                let (_, value) = v.swap_remove(i);
                v.shrink_to_fit();
                Some(value)
            }
            Plain::Many(m) => {
                let value = m.remove(client)?;
                if m.len() <= Self::FEW / 2 {
                    *self = Plain::Few(m.drain().collect());
                } else {
                    shrink_if_sparse(m);
                }
                Some(value)
            }
        }
    }
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Self {
            plain: Plain::Few(Vec::new()),
            shared: None,
        }
    }
}

impl<K, V> Subscribers<K, V> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_none()
    }

    fn for_each(&self, f: &mut impl FnMut(Option<&str>, &K, &V)) {
        self.plain.for_each(f);
        for (group, members) in self.shared.iter().flat_map(|s| s.iter()) {
            for (client, value) in members {
                f(Some(group), client, value);
            }
        }
    }
}

impl<K: Eq + Hash, V> Subscribers<K, V> {
    fn insert(&mut self, group: Option<&str>, client: K, value: V) -> Option<V> {
        let Some(group) = group else {
            return self.plain.insert(client, value);
        };
        let shared = self.shared.get_or_insert_with(Box::default);
        match shared.get_mut(group) {
            Some(members) => members.insert(client, value),
            None => {
                shared.insert(Box::from(group), HashMap::from([(client, value)]));
                None
            }
        }
    }

    fn remove(&mut self, group: Option<&str>, client: &K) -> Option<V> {
        let Some(group) = group else {
            return self.plain.remove(client);
        };
        let shared = self.shared.as_deref_mut()?;
        let members = shared.get_mut(group)?;
        let value = members.remove(client)?;
        if members.is_empty() {
            shared.remove(group);
            if shared.is_empty() {
                self.shared = None;
            } else {
                shrink_if_sparse(shared);
            }
        } else {
            shrink_if_sparse(members);
        }
        Some(value)
    }
}

/// Pending entries kept inline before spilling to the heap. Matching only pushes an entry where
/// a node has both a literal child and a `+` child for the topic's level, so real trees rarely
/// need more.
const INLINE_PENDING: usize = 16;

/// A LIFO work stack for matching that does not allocate for its first `INLINE_PENDING`
/// entries.
#[derive(Debug)]
struct Pending<T: Copy> {
    /// The first entries, on the stack frame.
    inline: [Option<T>; INLINE_PENDING],
    /// How many of `inline` are in use.
    inline_len: usize,
    /// Entries beyond `inline`; only touched by very branchy trees.
    spill: Vec<T>,
}

impl<T: Copy> Pending<T> {
    fn new() -> Self {
        Self {
            inline: [None; INLINE_PENDING],
            inline_len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, item: T) {
        match self.inline.get_mut(self.inline_len) {
            Some(slot) => {
                *slot = Some(item);
                self.inline_len += 1;
            }
            None => self.spill.push(item),
        }
    }

    fn pop(&mut self) -> Option<T> {
        // `spill` only fills once `inline` is full, so it holds the newest entries.
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.inline_len = self.inline_len.checked_sub(1)?;
        self.inline.get_mut(self.inline_len)?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_codec::topic_matches;

    fn tf(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).expect("valid filter in test")
    }

    /// Sorted (group, client, value) of the subscriptions matching `topic`.
    fn matches<K: Clone + Eq + Hash + Ord, V: Clone + Ord>(
        tree: &SubscriptionTree<K, V>,
        topic: &str,
    ) -> Vec<(Option<String>, K, V)> {
        let mut out = Vec::new();
        tree.for_each_match(topic, |g, k, v| {
            out.push((g.map(str::to_owned), k.clone(), v.clone()))
        });
        out.sort();
        out
    }

    /// The filters (by value) matching `topic`, for trees whose value is the filter.
    fn matching_filters(tree: &SubscriptionTree<u8, &'static str>, topic: &str) -> Vec<String> {
        let mut out: Vec<String> = matches(tree, topic)
            .into_iter()
            .map(|(_, _, v)| v.to_owned())
            .collect();
        out.sort();
        out
    }

    fn tree_of(filters: &[&'static str]) -> SubscriptionTree<u8, &'static str> {
        let mut tree = SubscriptionTree::new();
        for f in filters {
            tree.subscribe(&tf(f), 1, *f);
        }
        tree
    }

    /// The admin API's listing gives back every filter as it was subscribed, shared ones with
    /// their group, including empty levels and a leading `/`.
    #[test]
    fn every_subscription_is_listed_with_its_filter() {
        let filters = [
            "a/b", "a/+", "a/#", "#", "+", "/a", "/", "a//b", "+/+/#", "$SYS/x", "a/b/c/d",
        ];
        let mut tree: SubscriptionTree<u8, ()> = SubscriptionTree::new();
        for f in filters {
            tree.subscribe(&tf(f), 1, ());
        }
        tree.subscribe(&tf("$share/g/a/+"), 2, ());
        tree.subscribe(&tf("$share/h/#"), 3, ());
        let mut listed = Vec::new();
        tree.for_each_subscription(|filter, group, client, ()| {
            listed.push((filter.to_owned(), group.map(str::to_owned), *client));
        });
        listed.sort();
        let mut expected: Vec<(String, Option<String>, u8)> =
            filters.iter().map(|f| (f.to_string(), None, 1)).collect();
        expected.push(("a/+".into(), Some("g".into()), 2));
        expected.push(("#".into(), Some("h".into()), 3));
        expected.sort();
        assert_eq!(listed, expected);
    }

    #[test]
    fn a_filter_with_many_subscribers_turns_into_a_map_and_back() {
        let mut tree: SubscriptionTree<u32, u32> = SubscriptionTree::new();
        let clients = |n: u32| (0..n).map(|c| (None, c, c + 100)).collect::<Vec<_>>();
        for c in 0..20 {
            assert_eq!(tree.subscribe(&tf("a/b"), c, c + 100), None);
            assert_eq!(matches(&tree, "a/b"), clients(c + 1));
        }
        assert_eq!(
            tree.subscribe(&tf("a/b"), 3, 103),
            Some(103),
            "replaced [MQTT-3.8.4-3]"
        );
        for c in (0..20).rev() {
            assert_eq!(tree.unsubscribe(&tf("a/b"), &c), Some(c + 100));
            assert_eq!(matches(&tree, "a/b"), clients(c));
        }
        assert_eq!(tree.len(), 0);
        assert_eq!(node_count(&tree.root), 1, "pruned back to the root");
    }

    fn node_count<K, V>(node: &Node<K, V>) -> usize {
        let mut count = 0;
        let mut work = vec![node];
        while let Some(n) = work.pop() {
            count += 1;
            work.extend(n.children.0.iter().flat_map(|c| c.values()));
            work.extend(n.plus.as_deref());
        }
        count
    }

    #[test]
    fn empty_levels_are_real_levels() {
        // 4.7.1, 4.7.3: '/' separates levels; zero-length levels are levels.
        let tree = tree_of(&["a//b", "/a", "a/", "a/b", "+/+", "+", "/+", "/"]);
        assert_eq!(matching_filters(&tree, "a//b"), ["a//b"]);
        assert_eq!(matching_filters(&tree, "a/b"), ["+/+", "a/b"]);
        assert_eq!(matching_filters(&tree, "/a"), ["+/+", "/+", "/a"]);
        assert_eq!(matching_filters(&tree, "a/"), ["+/+", "a/"]);
        assert_eq!(matching_filters(&tree, "/"), ["+/+", "/", "/+"]);
        assert_eq!(matching_filters(&tree, "a"), ["+"]);
        assert!(matching_filters(&tree, "a//b/c").is_empty());
    }

    #[test]
    fn multi_level_wildcard_matches_parent() {
        // 4.7.1.2: "sport/tennis/player1/#" matches "sport/tennis/player1" (no statement id).
        let tree = tree_of(&["a/#", "#", "a/+/#", "+/#"]);
        assert_eq!(matching_filters(&tree, "a"), ["#", "+/#", "a/#"]);
        assert_eq!(matching_filters(&tree, "a/b"), ["#", "+/#", "a/#", "a/+/#"]);
        assert_eq!(
            matching_filters(&tree, "a/b/c"),
            ["#", "+/#", "a/#", "a/+/#"]
        );
        assert_eq!(matching_filters(&tree, "a/"), ["#", "+/#", "a/#", "a/+/#"]);
        assert_eq!(matching_filters(&tree, "ab"), ["#", "+/#"]);
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcards() {
        // [MQTT-4.7.2-1]: '#' and '+/...' do not match "$SYS/..."; "$SYS/#" does.
        let tree = tree_of(&["#", "+/x", "+/#", "$SYS/#", "$SYS/+", "$SYS/x", "a/+", "+"]);
        assert_eq!(
            matching_filters(&tree, "$SYS/x"),
            ["$SYS/#", "$SYS/+", "$SYS/x"]
        );
        assert_eq!(matching_filters(&tree, "$SYS"), ["$SYS/#"]);
        assert_eq!(matching_filters(&tree, "a/$SYS"), ["#", "+/#", "a/+"]);
        assert_eq!(matching_filters(&tree, "b/x"), ["#", "+/#", "+/x"]);
        assert!(matching_filters(&tree, "$other").is_empty());
    }

    #[test]
    fn shared_and_plain_subscriptions_are_distinct() {
        // 4.8.2: the share name is part of the subscription's identity.
        let mut tree: SubscriptionTree<u8, u32> = SubscriptionTree::new();
        assert_eq!(tree.subscribe(&tf("a/b"), 1, 10), None);
        assert_eq!(tree.subscribe(&tf("$share/g1/a/b"), 1, 11), None);
        assert_eq!(tree.subscribe(&tf("$share/g2/a/b"), 1, 12), None);
        assert_eq!(tree.subscribe(&tf("$share/g1/a/#"), 2, 21), None);
        assert_eq!(tree.len(), 4);
        assert_eq!(
            matches(&tree, "a/b"),
            [
                (None, 1, 10),
                (Some("g1".into()), 1, 11),
                (Some("g1".into()), 2, 21),
                (Some("g2".into()), 1, 12),
            ]
        );
        // The `$share/g/` prefix is not part of what is matched.
        assert!(matches(&tree, "$share/g1/a/b").is_empty());
        assert_eq!(tree.unsubscribe(&tf("$share/g1/a/b"), &1), Some(11));
        assert_eq!(tree.unsubscribe(&tf("$share/g1/a/b"), &1), None);
        assert_eq!(tree.unsubscribe(&tf("$share/g1/a/b"), &2), None);
        assert_eq!(tree.len(), 3);
        assert_eq!(
            matches(&tree, "a/b"),
            [
                (None, 1, 10),
                (Some("g1".into()), 2, 21),
                (Some("g2".into()), 1, 12),
            ]
        );
        // The leading-wildcard rule applies to the matched filter of a shared one [MQTT-4.7.2-1].
        tree.subscribe(&tf("$share/g3/#"), 3, 30);
        assert!(matches(&tree, "$SYS/a").is_empty());
        assert_eq!(matches(&tree, "x"), [(Some("g3".into()), 3, 30)]);
    }

    #[test]
    fn subscribe_replaces_and_returns_old_value() {
        // [MQTT-3.8.4-3]: a new subscription to an existing filter replaces it.
        let mut tree: SubscriptionTree<u8, u32> = SubscriptionTree::new();
        assert_eq!(tree.subscribe(&tf("a/+"), 1, 1), None);
        assert_eq!(tree.subscribe(&tf("a/+"), 1, 2), Some(1));
        assert_eq!(tree.subscribe(&tf("a/+"), 2, 3), None);
        assert_eq!(tree.subscribe(&tf("a/#"), 1, 4), None);
        assert_eq!(tree.subscribe(&tf("a/#"), 1, 5), Some(4));
        assert_eq!(tree.len(), 3);
        assert_eq!(
            matches(&tree, "a/x"),
            [(None, 1, 2), (None, 1, 5), (None, 2, 3)]
        );
    }

    #[test]
    fn unsubscribe_prunes_and_len_returns_to_zero() {
        let filters = [
            "a/b/c",
            "a/b",
            "a",
            "a/+/c",
            "a/#",
            "+/+",
            "#",
            "//",
            "$share/g/a/b/c",
            "é/ü",
        ];
        let mut tree: SubscriptionTree<u8, u32> = SubscriptionTree::new();
        for (i, f) in filters.iter().enumerate() {
            for client in 0..3u8 {
                tree.subscribe(&tf(f), client, i as u32);
            }
        }
        assert_eq!(tree.len(), filters.len() * 3);
        // Unknown subscriptions: nothing removed, no node created.
        let nodes = node_count(&tree.root);
        assert_eq!(tree.unsubscribe(&tf("a/b/c/d"), &0), None);
        assert_eq!(tree.unsubscribe(&tf("x/#"), &0), None);
        assert_eq!(tree.unsubscribe(&tf("$share/h/a"), &0), None);
        assert_eq!(tree.unsubscribe(&tf("a/b"), &9), None);
        assert_eq!(node_count(&tree.root), nodes);
        // Removing the deep filter keeps the still-used prefix "a/b".
        for client in 0..3u8 {
            assert_eq!(tree.unsubscribe(&tf("a/b/c"), &client), Some(0));
        }
        assert_eq!(matches(&tree, "a/b").len(), 3 * 4); // a/b, a/#, +/+, #
        for (i, f) in filters.iter().enumerate().rev() {
            for client in 0..3u8 {
                let expected = if i == 0 { None } else { Some(i as u32) };
                assert_eq!(tree.unsubscribe(&tf(f), &client), expected, "{f}");
            }
        }
        assert_eq!(tree.len(), 0);
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
        assert_eq!(node_count(&tree.root), 1);
    }

    #[test]
    fn unsubscribe_prunes_only_the_unused_tail() {
        let mut tree: SubscriptionTree<u8, u32> = SubscriptionTree::new();
        tree.subscribe(&tf("a/b/c/d"), 1, 1);
        tree.subscribe(&tf("a/x"), 1, 2);
        tree.subscribe(&tf("a/b/+/#"), 1, 3);
        assert_eq!(node_count(&tree.root), 7); // root a b c d x +
        tree.unsubscribe(&tf("a/b/c/d"), &1);
        assert_eq!(node_count(&tree.root), 5); // root a b x +
        tree.unsubscribe(&tf("a/b/+/#"), &1);
        assert_eq!(node_count(&tree.root), 3); // root a x
        tree.unsubscribe(&tf("a/x"), &1);
        assert_eq!(node_count(&tree.root), 1);
        assert!(tree.is_empty());
    }

    #[test]
    fn non_ascii_levels() {
        // Levels compare as whole UTF-8 strings, without normalization [MQTT-4.7.3-4].
        let tree = tree_of(&["é/+", "é/ü", "e/+", "+/ü", "日本/#"]);
        assert_eq!(matching_filters(&tree, "é/ü"), ["+/ü", "é/+", "é/ü"]);
        assert_eq!(matching_filters(&tree, "é/x"), ["é/+"]);
        assert_eq!(matching_filters(&tree, "e/ü"), ["+/ü", "e/+"]);
        assert_eq!(matching_filters(&tree, "日本"), ["日本/#"]);
        assert!(matching_filters(&tree, "日").is_empty());
    }

    #[test]
    fn many_pending_plus_branches_spill_correctly() {
        // Filters "+", "a/+", "a/a/+", ...: every node on the topic's literal path has a '+'
        // child, so more than INLINE_PENDING branches are pending at once.
        let mut tree: SubscriptionTree<u8, usize> = SubscriptionTree::new();
        for i in 0..40 {
            let filter = format!("{}+", "a/".repeat(i));
            tree.subscribe(&tf(&filter), 1, i);
        }
        tree.subscribe(&tf(&format!("{}#", "a/".repeat(30))), 2, 100);
        for levels in 1..45 {
            let topic = vec!["a"; levels].join("/");
            let mut expected: Vec<(Option<String>, u8, usize)> = Vec::new();
            if levels <= 40 {
                expected.push((None, 1, levels - 1));
            }
            if levels >= 30 {
                expected.push((None, 2, 100));
            }
            expected.sort();
            assert_eq!(matches(&tree, &topic), expected, "{levels} levels");
        }
    }

    #[test]
    fn very_deep_filters_do_not_overflow_the_stack() {
        // Up to 65,535 bytes: 32,767 levels plus "/#"; none of the operations recurse per level.
        let deep = vec!["a"; 32_767].join("/");
        let deep_plus = vec!["+"; 32_767].join("/");
        let mut tree: SubscriptionTree<u8, u8> = SubscriptionTree::new();
        tree.subscribe(&tf(&deep), 1, 1);
        tree.subscribe(&tf(&deep_plus), 1, 2);
        tree.subscribe(&tf(&format!("{deep}/#")), 1, 3);
        assert_eq!(
            matches(&tree, &deep),
            [(None, 1, 1), (None, 1, 2), (None, 1, 3)]
        );
        assert_eq!(tree.unsubscribe(&tf(&deep), &1), Some(1));
        assert_eq!(tree.unsubscribe(&tf(&deep_plus), &1), Some(2));
        assert_eq!(matches(&tree, &deep), [(None, 1, 3)]);
        tree.subscribe(&tf(&deep_plus), 2, 2);
        // Dropped with two deep chains still in it.
        drop(tree);
    }

    const FILTER_LEVELS: &[&str] = &["", "+", "$SYS", "a", "b", "é"];
    const TOPIC_LEVELS: &[&str] = &["", "$SYS", "a", "b", "é"];

    fn filter_strategy() -> impl Strategy<Value = TopicFilter> {
        (
            prop::option::of(prop::sample::select(&["g1", "g2"][..])),
            prop::collection::vec(prop::sample::select(FILTER_LEVELS), 0..4),
            any::<bool>(),
        )
            .prop_filter_map("valid filter", |(group, mut levels, hash)| {
                if hash {
                    levels.push("#");
                }
                let filter = levels.join("/");
                let full = match group {
                    Some(g) => format!("$share/{g}/{filter}"),
                    None => filter,
                };
                TopicFilter::try_from(full.as_str()).ok()
            })
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..5).prop_map(|l| l.join("/"))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(TopicFilter, u8, u32),
        Unsubscribe(TopicFilter, u8),
        Match(String),
    }

    /// Mostly a few clients (replacements and shared filters), sometimes more than fit in a
    /// filter's short subscriber vector (`Plain::FEW`), so it turns into a map and back.
    fn client_strategy() -> impl Strategy<Value = u8> {
        prop_oneof![3 => 0..3u8, 1 => 0..20u8]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (filter_strategy(), client_strategy(), any::<u32>()).prop_map(|(f, c, v)| Op::Subscribe(f, c, v)),
            2 => (filter_strategy(), client_strategy()).prop_map(|(f, c)| Op::Unsubscribe(f, c)),
            2 => topic_strategy().prop_map(Op::Match),
        ]
    }

    /// The reference: a linear scan using the codec's matcher.
    fn oracle_matches(
        oracle: &[(TopicFilter, u8, u32)],
        topic: &str,
    ) -> Vec<(Option<String>, u8, u32)> {
        let mut out: Vec<_> = oracle
            .iter()
            .filter(|(f, _, _)| topic_matches(f.match_filter(), topic))
            .map(|(f, c, v)| (f.shared().map(|(g, _)| g.to_owned()), *c, *v))
            .collect();
        out.sort();
        out
    }

    fn all_topics() -> Vec<String> {
        let mut topics: Vec<String> = TOPIC_LEVELS.iter().map(|l| l.to_string()).collect();
        let mut last = topics.clone();
        for _ in 1..3 {
            last = last
                .iter()
                .flat_map(|t| TOPIC_LEVELS.iter().map(move |l| format!("{t}/{l}")))
                .collect();
            topics.extend(last.iter().cloned());
        }
        topics
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn tree_agrees_with_linear_scan(ops in prop::collection::vec(op_strategy(), 1..60)) {
            let mut tree: SubscriptionTree<u8, u32> = SubscriptionTree::new();
            let mut oracle: Vec<(TopicFilter, u8, u32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Subscribe(filter, client, value) => {
                        let expected = match oracle.iter_mut().find(|(f, c, _)| *f == filter && *c == client) {
                            Some(entry) => Some(std::mem::replace(&mut entry.2, value)),
                            None => {
                                oracle.push((filter.clone(), client, value));
                                None
                            }
                        };
                        prop_assert_eq!(tree.subscribe(&filter, client, value), expected);
                    }
                    Op::Unsubscribe(filter, client) => {
                        let expected = oracle
                            .iter()
                            .position(|(f, c, _)| *f == filter && *c == client)
                            .map(|i| oracle.remove(i).2);
                        prop_assert_eq!(tree.unsubscribe(&filter, &client), expected);
                    }
                    Op::Match(topic) => {
                        prop_assert_eq!(matches(&tree, &topic), oracle_matches(&oracle, &topic), "topic {:?}", topic);
                    }
                }
                prop_assert_eq!(tree.len(), oracle.len());
            }
            for topic in all_topics() {
                prop_assert_eq!(matches(&tree, &topic), oracle_matches(&oracle, &topic), "topic {:?}", topic);
            }
            for (filter, client, value) in std::mem::take(&mut oracle) {
                prop_assert_eq!(tree.unsubscribe(&filter, &client), Some(value));
            }
            prop_assert!(tree.is_empty());
            prop_assert!(tree.root.is_empty(), "not pruned: {:?}", tree.root);
        }
    }
}
