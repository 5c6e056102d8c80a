//! The busiest topics, estimated by sampling: the dashboard's "busiest topics" panel.
//!
//! One PUBLISH in [`SAMPLE_EVERY`], picked at random per thread (a thread-local xorshift:
//! no shared cache line on the hot path; random rather than every 16th, so a publisher
//! cycling through 16 topics cannot hide all but one of them), is counted into a table of at most [`CAPACITY`] topics with
//! the space-saving algorithm (a new topic replaces the least counted one and inherits its
//! count), so the table stays bounded whatever the topics. The dashboard takes the table once
//! a second ([`HotTopics::take`]); the counts times [`SAMPLE_EVERY`] estimate messages per topic.

use std::cell::Cell;
use std::sync::Mutex;

/// One PUBLISH in this many (on average, per thread) is counted.
pub const SAMPLE_EVERY: u32 = 16;
/// Topics kept in the table (~40 bytes each plus the topic).
pub const CAPACITY: usize = 32;

thread_local! {
    /// This thread's xorshift32 state (any non-zero seed).
    static RNG: Cell<u32> = const { Cell::new(0x9E37_79B9) };
}

/// Sampled counts per topic since the last [`HotTopics::take`].
#[derive(Debug, Default)]
pub struct HotTopics {
    /// (topic, sampled count); locked once per [`SAMPLE_EVERY`] messages of a thread, for a
    /// scan of at most [`CAPACITY`] entries.
    table: Mutex<Vec<(Box<str>, u64)>>,
}

impl HotTopics {
    /// Called for every routed PUBLISH: counts one in [`SAMPLE_EVERY`].
    #[inline]
    pub fn sample(&self, topic: &str) {
        let due = RNG.with(|r| {
            let mut x = r.get();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            r.set(x);
            x % SAMPLE_EVERY == 0
        });
        if due {
            self.record(topic);
        }
    }

    #[cold]
    fn record(&self, topic: &str) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = table.iter_mut().find(|(t, _)| &**t == topic) {
            e.1 += 1;
            return;
        }
        if table.len() < CAPACITY {
            table.push((topic.into(), 1));
            return;
        }
        // Space-saving: the least counted topic makes room, its count carried over (an upper
        // bound for the newcomer), so a steady heavy hitter is never evicted by noise.
        if let Some(min) = table.iter_mut().min_by_key(|(_, c)| *c) {
            *min = (topic.into(), min.1 + 1);
        }
    }

    /// The table since the last call, busiest first, as estimated messages per topic; starts
    /// a new one.
    pub fn take(&self) -> Vec<(String, u64)> {
        let table = std::mem::take(&mut *self.table.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out: Vec<(String, u64)> = table
            .into_iter()
            .map(|(t, c)| (t.into(), c * u64::from(SAMPLE_EVERY)))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavy_topic_tops_the_table_and_the_table_stays_bounded() {
        let hot = HotTopics::default();
        for i in 0..20_000u32 {
            hot.sample("heavy");
            // Many distinct topics, each seen rarely.
            hot.sample(&format!("noise/{i}"));
        }
        let top = hot.take();
        assert!(top.len() <= CAPACITY);
        assert_eq!(top[0].0, "heavy");
        // About 20,000 sampled one in 16: the estimate is the right size.
        assert!((10_000..=40_000).contains(&top[0].1), "{top:?}");
        assert!(hot.take().is_empty(), "take starts a new table");
    }
}
