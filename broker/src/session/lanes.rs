//! [`Lanes`]: a queue with one FIFO lane per priority (`mqtt.priorities`), read as one queue
//! in sending order: the highest priority's lane first, each lane in arrival order. Without
//! priorities every entry is in lane 0 and this is a `VecDeque` behind one extra comparison.

use std::collections::VecDeque;

/// Capacity a lane keeps however empty it gets (see [`Lanes`]).
const KEEP_CAPACITY: usize = 4096;

/// Gives back most of `q`'s buffer once it is under a quarter full (above [`KEEP_CAPACITY`]).
fn shrink_drained<T>(q: &mut VecDeque<T>) {
    if q.capacity() > KEEP_CAPACITY && q.len() < q.capacity() / 4 {
        q.shrink_to((q.len() * 2).max(KEEP_CAPACITY));
    }
}

/// One priority's entries, in arrival order.
#[derive(Debug)]
struct Lane<T> {
    priority: u8,
    queue: VecDeque<T>,
}

/// Entries by priority, then arrival. Positions ([`Lanes::get_mut`], [`Lanes::remove`]) count
/// in sending order across the lanes. A lane, once made, stays (empty) with its buffer, as a
/// `VecDeque` keeps its capacity: a queue that empties and fills again does not reallocate.
/// So a queue holds at most one lane per configured priority, plus lane 0. Only a lane grown
/// past [`KEEP_CAPACITY`] entries gives memory back as it drains (halving at a time, once it is
/// under a quarter full: O(1) copies per removal), so a drained burst of a million deliveries
/// does not keep its buffer (80 MB) for good.
#[derive(Debug)]
pub struct Lanes<T> {
    /// Highest priority first.
    lanes: Vec<Lane<T>>,
    /// Entries in all lanes.
    len: usize,
}

impl<T> Default for Lanes<T> {
    fn default() -> Lanes<T> {
        Lanes::new()
    }
}

impl<T> Lanes<T> {
    /// No lanes, nothing queued.
    pub const fn new() -> Lanes<T> {
        Lanes {
            lanes: Vec::new(),
            len: 0,
        }
    }

    /// The lane of `priority`, made if it does not exist yet.
    fn lane_mut(&mut self, priority: u8) -> &mut VecDeque<T> {
        let i = match self.lanes.iter().position(|l| l.priority <= priority) {
            Some(i) if self.lanes[i].priority == priority => i,
            Some(i) => {
                self.lanes.insert(
                    i,
                    Lane {
                        priority,
                        queue: VecDeque::new(),
                    },
                );
                i
            }
            None => {
                self.lanes.push(Lane {
                    priority,
                    queue: VecDeque::new(),
                });
                self.lanes.len() - 1
            }
        };
        &mut self.lanes[i].queue
    }

    /// Appends `e` at the end of its priority's lane.
    pub fn push_back(&mut self, priority: u8, e: T) {
        self.lane_mut(priority).push_back(e);
        self.len += 1;
    }

    /// Puts `e` at the front of its priority's lane (it was taken and not sent).
    pub fn push_front(&mut self, priority: u8, e: T) {
        self.lane_mut(priority).push_front(e);
        self.len += 1;
    }

    /// Room for `n` more entries of `priority`.
    pub fn reserve_exact(&mut self, priority: u8, n: usize) {
        self.lane_mut(priority).reserve_exact(n);
    }

    /// The next entry to send.
    pub fn front(&self) -> Option<&T> {
        self.lanes.iter().find_map(|l| l.queue.front())
    }

    /// Takes the next entry to send.
    pub fn pop_front(&mut self) -> Option<T> {
        let lane = self.lanes.iter_mut().find(|l| !l.queue.is_empty())?;
        let e = lane.queue.pop_front()?;
        shrink_drained(&mut lane.queue);
        self.len -= 1;
        Some(e)
    }

    /// Takes the oldest entry of the lowest priority (`drop_oldest` evicts it: the last in
    /// line to be sent, then the longest waiting of those).
    pub fn pop_lowest_front(&mut self) -> Option<T> {
        let lane = self.lanes.iter_mut().rev().find(|l| !l.queue.is_empty())?;
        let e = lane.queue.pop_front()?;
        shrink_drained(&mut lane.queue);
        self.len -= 1;
        Some(e)
    }

    /// Entries in sending order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.lanes.iter().flat_map(|l| l.queue.iter())
    }

    /// Entries in sending order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.lanes.iter_mut().flat_map(|l| l.queue.iter_mut())
    }

    /// Lane and position in it of the `i`th entry in sending order.
    fn locate(&self, mut i: usize) -> Option<(usize, usize)> {
        for (n, l) in self.lanes.iter().enumerate() {
            if i < l.queue.len() {
                return Some((n, i));
            }
            i -= l.queue.len();
        }
        None
    }

    /// The `i`th entry in sending order.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        let (lane, at) = self.locate(i)?;
        self.lanes[lane].queue.get_mut(at)
    }

    /// Takes the `i`th entry in sending order out.
    pub fn remove(&mut self, i: usize) -> Option<T> {
        let (lane, at) = self.locate(i)?;
        let q = &mut self.lanes[lane].queue;
        let e = q.remove(at)?;
        shrink_drained(q);
        self.len -= 1;
        Some(e)
    }

    /// Takes out every entry for which `pred` holds (in sending order), keeping the others in
    /// order.
    pub fn take_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut taken = Vec::new();
        for l in &mut self.lanes {
            // `pred` sees each entry once; a lane without a match is left as it is.
            let Some(first) = l.queue.iter().position(&mut pred) else {
                continue;
            };
            let mut rest = l.queue.split_off(first).into_iter();
            taken.extend(rest.next());
            for e in rest {
                if pred(&e) {
                    taken.push(e);
                } else {
                    l.queue.push_back(e);
                }
            }
        }
        self.len -= taken.len();
        taken
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        for l in &mut self.lanes {
            l.queue.clear();
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(l: &Lanes<&'static str>) -> Vec<&'static str> {
        l.iter().copied().collect()
    }

    #[test]
    fn higher_priorities_first_arrival_order_within_one() {
        let mut l = Lanes::default();
        l.push_back(0, "a0");
        l.push_back(10, "b10");
        l.push_back(0, "c0");
        l.push_back(5, "d5");
        l.push_back(10, "e10");
        l.push_back(255, "f255");
        assert_eq!(order(&l), ["f255", "b10", "e10", "d5", "a0", "c0"]);
        assert_eq!(l.len(), 6);
        assert_eq!(l.front(), Some(&"f255"));
        assert_eq!(l.pop_front(), Some("f255"));
        assert_eq!(l.pop_front(), Some("b10"));
        // Put back at the front of its own lane, not of the queue.
        l.push_front(0, "b0");
        assert_eq!(order(&l), ["e10", "d5", "b0", "a0", "c0"]);
        // Positions count in sending order across lanes.
        assert_eq!(l.remove(2), Some("b0"));
        *l.get_mut(2).unwrap() = "A0";
        assert_eq!(order(&l), ["e10", "d5", "A0", "c0"]);
        assert_eq!(l.get_mut(4), None);
        assert_eq!(l.remove(4), None);
        let taken = l.take_where(|e| e.ends_with('0'));
        assert_eq!(taken, ["e10", "A0", "c0"]);
        assert_eq!(order(&l), ["d5"]);
        assert_eq!(l.len(), 1);
        // A drained lane does not hold up the next one.
        assert_eq!(l.pop_front(), Some("d5"));
        assert_eq!(l.pop_front(), None);
        assert!(l.is_empty());
        l.push_back(10, "x");
        l.clear();
        assert!(l.is_empty() && l.front().is_none());
    }

    #[test]
    fn without_priorities_it_is_one_fifo() {
        let mut l = Lanes::default();
        for i in 0..100 {
            l.push_back(0, i);
        }
        assert_eq!(l.lanes.len(), 1);
        assert!(l.iter().copied().eq(0..100));
        assert!((0..100).all(|i| l.pop_front() == Some(i)));
    }

    #[test]
    fn a_drained_long_lane_gives_its_buffer_back() {
        let mut l = Lanes::default();
        let n = 100_000;
        for i in 0..n {
            l.push_back(0, i);
        }
        let grown = l.lanes[0].queue.capacity();
        assert!(grown >= n);
        for i in 0..n - 10 {
            assert_eq!(l.pop_front(), Some(i));
        }
        let cap = l.lanes[0].queue.capacity();
        assert!(cap <= KEEP_CAPACITY * 2, "capacity {cap} after draining");
        // Order and contents are kept through the shrinking.
        assert!(l.iter().copied().eq(n - 10..n));
        // A short queue keeps its buffer (no reallocation when it fills again).
        let mut s = Lanes::default();
        for i in 0..1000 {
            s.push_back(0, i);
        }
        let cap = s.lanes[0].queue.capacity();
        while s.pop_front().is_some() {}
        assert_eq!(s.lanes[0].queue.capacity(), cap);
    }
}
