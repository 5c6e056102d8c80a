//! TEMPORARY naive stand-in (not committed); replaced by the real trie.
use sluice_codec::{topic_matches, TopicFilter};
use std::hash::Hash;
#[derive(Debug)]
pub struct SubscriptionTree<K, V> {
    subs: Vec<(TopicFilter, K, V)>,
}
impl<K: Clone + Eq + Hash, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self { subs: Vec::new() }
    }
}
impl<K: Clone + Eq + Hash, V> SubscriptionTree<K, V> {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn subscribe(&mut self, filter: &TopicFilter, client: K, value: V) -> Option<V> {
        let old = self.unsubscribe(filter, &client);
        self.subs.push((filter.clone(), client, value));
        old
    }
    pub fn unsubscribe(&mut self, filter: &TopicFilter, client: &K) -> Option<V> {
        let i = self
            .subs
            .iter()
            .position(|(f, k, _)| f == filter && k == client)?;
        Some(self.subs.remove(i).2)
    }
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(Option<&str>, &K, &V)) {
        for (filter, k, v) in &self.subs {
            if topic_matches(filter.match_filter(), topic) {
                f(filter.shared().map(|s| s.0), k, v)
            }
        }
    }
    pub fn len(&self) -> usize {
        self.subs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }
}
