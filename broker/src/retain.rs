//! TEMPORARY naive stand-in (not committed).
use sluice_codec::topic_matches;
use std::collections::BTreeMap;
#[derive(Debug)]
pub struct RetainedStore<M> {
    m: BTreeMap<String, M>,
}
impl<M> Default for RetainedStore<M> {
    fn default() -> Self {
        Self { m: BTreeMap::new() }
    }
}
impl<M> RetainedStore<M> {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, topic: &str, msg: M) -> Option<M> {
        self.m.insert(topic.into(), msg)
    }
    pub fn remove(&mut self, topic: &str) -> Option<M> {
        self.m.remove(topic)
    }
    pub fn get(&self, topic: &str) -> Option<&M> {
        self.m.get(topic)
    }
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &M)) {
        for (t, m) in &self.m {
            if topic_matches(filter, t) {
                f(t, m)
            }
        }
    }
    pub fn len(&self) -> usize {
        self.m.len()
    }
    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }
}
