//! Deadlines of parked sessions (a delayed will, the session's expiry) in one ordered map.
//!
//! The broker serves the whole map with one task that sleeps until the earliest deadline,
//! rather than one sleeping task per parked session: a parked session costs an entry here
//! (a key and a value), and a session that comes back removes its entry at once instead of
//! leaving a task asleep until a deadline that no longer applies. No clock inside: the caller
//! passes `now`.

use std::collections::BTreeMap;
use std::time::Instant;

/// Names one armed deadline, to remove it before it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadlineKey(Instant, u64);

/// Values due at instants, earliest first; equal instants in the order they were armed.
#[derive(Debug)]
pub struct Deadlines<T> {
    map: BTreeMap<DeadlineKey, T>,
    /// Tie-breaker for equal instants, so every key is unique.
    next_id: u64,
}

impl<T> Default for Deadlines<T> {
    fn default() -> Self {
        Deadlines {
            map: BTreeMap::new(),
            next_id: 0,
        }
    }
}

impl<T> Deadlines<T> {
    /// Arms `value` for `at`.
    pub fn insert(&mut self, at: Instant, value: T) -> DeadlineKey {
        let key = DeadlineKey(at, self.next_id);
        self.next_id += 1;
        self.map.insert(key, value);
        key
    }

    /// Disarms a deadline; None if it already fired or was removed.
    pub fn remove(&mut self, key: DeadlineKey) -> Option<T> {
        self.map.remove(&key)
    }

    /// The earliest armed instant.
    pub fn next_due(&self) -> Option<Instant> {
        self.map.first_key_value().map(|(k, _)| k.0)
    }

    /// Takes every value due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Vec<T> {
        let mut due = Vec::new();
        while let Some(entry) = self.map.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        due
    }

    /// How many deadlines are armed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_only_what_is_due_earliest_first_and_ties_in_arming_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Deadlines::default();
        d.insert(t0 + s(3), "c");
        d.insert(t0 + s(1), "a");
        d.insert(t0 + s(2), "b1");
        d.insert(t0 + s(2), "b2");
        assert_eq!(d.next_due(), Some(t0 + s(1)));
        assert!(d.pop_due(t0).is_empty());
        assert_eq!(d.pop_due(t0 + s(2)), vec!["a", "b1", "b2"]);
        assert_eq!(d.next_due(), Some(t0 + s(3)));
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(t0 + s(10)), vec!["c"]);
        assert!(d.is_empty() && d.next_due().is_none());
    }

    #[test]
    fn a_removed_deadline_never_fires_and_removing_twice_is_harmless() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let k = d.insert(t0, 1);
        let k2 = d.insert(t0, 2);
        assert_eq!(d.remove(k), Some(1));
        assert_eq!(d.remove(k), None);
        assert_eq!(d.pop_due(t0), vec![2]);
        assert_eq!(d.remove(k2), None);
    }
}
