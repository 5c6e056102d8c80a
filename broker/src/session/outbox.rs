//! A session's queue of deliveries waiting to be sent ([`Outbox`]): bounded in messages and
//! bytes, sharing a broker-wide budget, and kept on disk past a memory window when the store
//! has the messages (only their ids stay in memory).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sluice_codec::{QoS, TopicFilter};

use super::lanes::Lanes;
use super::Delivery;
use crate::config::QueueFullPolicy;
use crate::message::Message;

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// QoS 0 for an offline session: not queued, as Mosquitto does by default.
    OfflineQos0,
    /// `mqtt.max_queued_messages` or `mqtt.max_queued_bytes` reached.
    QueueFull,
}

/// Deliveries a push evicted to make room (`drop_oldest`).
#[derive(Debug, Default)]
pub struct Evicted {
    /// How many.
    pub count: usize,
    /// The store's numbers of those it had logged (to log them as skipped).
    pub seqs: Vec<u64>,
}

/// The broker-wide bound on queued bytes (`limits.max_queued_bytes_total`), shared by every
/// session queue and group queue.
#[derive(Debug)]
pub struct QueueBudget {
    used: AtomicUsize,
    max: usize,
}

impl QueueBudget {
    pub fn new(max: usize) -> Arc<QueueBudget> {
        Arc::new(QueueBudget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes charged by all queues now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_charge(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + n <= self.max).then_some(u + n)
            })
            .is_ok()
    }

    fn charge(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Messages read back from the store, by id (None: the log could not give it back). Keyed with
/// the store's id hasher: with SipHash, building and looking up this map cost about a third
/// of reading the messages themselves.
pub type Loaded = crate::persist::IdMap<Option<Arc<Message>>>;

/// A queued delivery whose message is only on disk (in the store's log): what a [`Delivery`]
/// holds besides the message, and the message's id to read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdDelivery {
    /// The session's number for this delivery in the log.
    pub seq: u64,
    pub id: u64,
    /// The message's cost as counted against `mqtt.max_queued_bytes` when it was queued.
    pub cost: usize,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// The message's priority: the lane it waits in.
    pub priority: u8,
}

/// Memory charged to the broker-wide budget for a delivery kept on disk (its bookkeeping).
pub const COLD_ENTRY_COST: usize = 64;

/// A queued delivery whose message is only on disk, as the queue keeps it: a [`ColdDelivery`]
/// in 32 bytes (a burst queued on disk is a million of these; issue 13). The cost is kept in
/// 32 bits (a message's cost always fits: deliveries whose cost does not stay in memory) and
/// the rarely present subscription identifiers behind a pointer.
#[derive(Debug)]
struct Cold {
    seq: u64,
    id: u64,
    cost: u32,
    qos: QoS,
    retain: bool,
    priority: u8,
    /// Boxed (a thin pointer, 8 bytes; a `Vec` is 24, a boxed slice 16): most have none.
    #[allow(clippy::box_collection)]
    subscription_ids: Option<Box<Vec<u32>>>,
}

impl Cold {
    /// `c` as queued; None when its cost does not fit 32 bits (it then stays in memory).
    fn pack(c: ColdDelivery) -> Option<Cold> {
        Some(Cold {
            seq: c.seq,
            id: c.id,
            cost: u32::try_from(c.cost).ok()?,
            qos: c.qos,
            retain: c.retain,
            priority: c.priority,
            subscription_ids: (!c.subscription_ids.is_empty())
                .then(|| Box::new(c.subscription_ids)),
        })
    }

    fn cost(&self) -> usize {
        self.cost as usize
    }

    fn take_subscription_ids(&mut self) -> Vec<u32> {
        self.subscription_ids
            .take()
            .map_or_else(Vec::new, |ids| *ids)
    }
}

/// A queued delivery: 32 bytes (in memory ones are boxed: only a window's worth of them is
/// kept when the store is on, while the cold ones of a long queue are many).
#[derive(Debug)]
enum Entry {
    /// In memory, ready to send.
    Hot(Box<Delivery>),
    /// On disk only; read back (see [`Outbox::cold_ids`], [`Outbox::warm`]) before sending.
    Cold(Cold),
}

/// The per-session queue of deliveries not yet handed to the connection: messages for an
/// offline session, and messages waiting for a free slot in the inflight window. Bounded in
/// count and bytes; a full queue drops the new message and counts it, never blocks.
///
/// Only the first `window` bytes are kept in memory. Past them, deliveries the store has
/// logged (QoS 1/2 of persistent sessions, not shared; every QoS 1/2 delivery of a shared
/// subscription's group queue) are kept as [`ColdDelivery`]s: the message is dropped from
/// memory and read back from the log when the window has room again, so a long queue costs
/// disk, not memory. Order is kept: once one delivery is cold, every later one that can be is
/// cold too.
///
/// With `mqtt.priorities`, deliveries wait in one lane per priority ([`Lanes`]): the highest
/// priority's lane is sent first, each lane in arrival order; "order" and "front" above are
/// this sending order. Deliveries already in the inflight window are not reordered.
#[derive(Debug)]
pub struct Outbox {
    /// The deliveries and their sums: boxed, made by the first push and freed once the queue
    /// is drained ([`Outbox::release_if_drained`]), so an idle session's queue is a pointer
    /// rather than 72 bytes (and holds no lane buffer kept from its last burst).
    queued: Option<Box<Queued>>,
    /// Bytes of messages kept in memory before logged deliveries stay on disk only.
    window: usize,
    /// Whether deliveries may be kept on disk only at all (not while a session leaves the log).
    spill: bool,
    /// Whether a connection currently owns the session (QoS 0 is not queued for offline ones).
    online: bool,
    /// Set for a shared subscription's group queue (its `$share/{group}/{filter}`): every
    /// delivery is for that group, so shared ones may stay on disk too (a session's shared
    /// deliveries stay in memory: they move to another member if the session goes away).
    /// Boxed: a session's queue (the common case) carries a pointer, not a 32-byte filter.
    group: Option<Box<TopicFilter>>,
    /// `mqtt.max_queued_messages`.
    max_messages: usize,
    /// `mqtt.max_queued_bytes`.
    max_bytes: usize,
    /// `mqtt.max_queued_memory_bytes`: past it only deliveries that may stay on disk are
    /// queued (on disk), the others are refused.
    max_memory: usize,
    /// Deliveries refused since the session began, for logs and counters.
    dropped: u64,
    /// What a push does when the queue is full (`mqtt.queue_full_policy`, or a shaping
    /// rule's `overflow`).
    policy: QueueFullPolicy,
    /// The broker-wide budget this queue's memory counts against (None: only its own bounds).
    budget: Option<Arc<QueueBudget>>,
}

/// What an [`Outbox`] holds while it holds something (see [`Outbox::queued`]).
#[derive(Debug)]
struct Queued {
    /// Deliveries in sending order: by priority, then arrival [MQTT-4.6.0-6] (one lane
    /// without `mqtt.priorities`).
    queue: Lanes<Entry>,
    /// Sum of `Message::cost` over `queue`, checked against `max_bytes`.
    bytes: usize,
    /// Sum of `Message::cost` over the in-memory entries.
    hot_bytes: usize,
    /// Number of cold entries.
    cold: usize,
    /// Set when a push was refused for want of room, cleared once the queue is back under
    /// three quarters of its bounds (`disconnect_slow_consumer`).
    full_since: Option<std::time::Instant>,
}

impl Queued {
    /// What an outbox without a `Queued` reads: nothing queued.
    const EMPTY: Queued = Queued {
        queue: Lanes::new(),
        bytes: 0,
        hot_bytes: 0,
        cold: 0,
        full_since: None,
    };

    /// Nothing queued and no full mark: the box can go.
    fn is_spent(&self) -> bool {
        self.queue.is_empty() && self.full_since.is_none()
    }
}

/// Read by an outbox that has no [`Queued`].
static EMPTY: Queued = Queued::EMPTY;

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.charged());
        }
    }
}

impl Outbox {
    /// An empty outbox with the given bounds, all in memory.
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            queued: None,
            window: usize::MAX,
            spill: true,
            online: false,
            group: None,
            max_messages,
            max_bytes,
            max_memory: usize::MAX,
            dropped: 0,
            policy: QueueFullPolicy::DropNewest,
            budget: None,
        }
    }

    /// What is queued (an empty `Queued` when there is no box).
    fn q(&self) -> &Queued {
        self.queued.as_deref().unwrap_or(&EMPTY)
    }

    /// What is queued, the box made if there is none.
    fn q_mut(&mut self) -> &mut Queued {
        self.queued.get_or_insert_with(|| Box::new(Queued::EMPTY))
    }

    /// Frees the queue's box once nothing is queued (the connection calls this at the end of
    /// each drain, not at every pop: a queue that empties and fills again within a burst
    /// keeps its buffers).
    pub fn release_if_drained(&mut self) {
        if self.queued.as_ref().is_some_and(|q| q.is_spent()) {
            self.queued = None;
        }
    }

    /// Whether the queue's box exists (tests).
    #[cfg(test)]
    pub fn is_allocated(&self) -> bool {
        self.queued.is_some()
    }

    /// The overflow policy.
    pub fn policy(&self) -> QueueFullPolicy {
        self.policy
    }

    /// Sets the overflow policy.
    pub fn set_policy(&mut self, policy: QueueFullPolicy) {
        self.policy = policy;
    }

    /// Since when the queue has been full (see [`Outbox::mark_full`]).
    pub fn full_since(&self) -> Option<std::time::Instant> {
        self.q().full_since
    }

    /// Notes that a push was refused at `now` (kept from the first refusal); returns true if
    /// the queue was not marked full before.
    pub fn mark_full(&mut self, now: std::time::Instant) -> bool {
        let q = self.q_mut();
        let first = q.full_since.is_none();
        q.full_since.get_or_insert(now);
        first
    }

    /// Forgets the full mark (a client that connects gets a fresh `slow_consumer_seconds`
    /// to drain what waited for it).
    pub fn unmark_full(&mut self) {
        if let Some(q) = self.queued.as_deref_mut() {
            q.full_since = None;
        }
    }

    /// Clears the full mark once the queue is under three quarters of its bounds.
    pub fn unmark_full_below_low_water(&mut self) {
        let (max_messages, max_bytes) = (self.max_messages, self.max_bytes);
        let Some(q) = self.queued.as_deref_mut() else {
            return;
        };
        if q.full_since.is_some()
            && q.queue.len() < max_messages - max_messages / 4
            && q.bytes < max_bytes - max_bytes / 4
        {
            q.full_since = None;
        }
    }

    /// Also bounded by the broker-wide `budget`.
    pub fn with_budget(mut self, budget: Arc<QueueBudget>) -> Outbox {
        self.budget = Some(budget);
        self
    }

    /// Keeps at most `window` bytes of logged deliveries in memory (the rest stays on disk).
    pub fn with_window(mut self, window: usize) -> Outbox {
        self.window = window;
        self
    }

    /// Holds at most `bytes` of messages in memory (`mqtt.max_queued_memory_bytes`).
    pub fn with_memory_limit(mut self, bytes: usize) -> Outbox {
        self.max_memory = bytes;
        self
    }

    /// The queue of shared subscription `group` (deliveries read back from disk are for it).
    pub fn for_group(mut self, group: TopicFilter) -> Outbox {
        self.group = Some(Box::new(group));
        self
    }

    /// What this queue charges the broker-wide budget.
    fn charged(&self) -> usize {
        self.q().hot_bytes + self.q().cold * COLD_ENTRY_COST
    }

    fn try_charge(&self, n: usize) -> bool {
        self.budget.as_ref().is_none_or(|b| b.try_charge(n))
    }

    fn release(&self, n: usize) {
        if let Some(b) = &self.budget {
            b.release(n);
        }
    }

    /// Queues `d` unless a bound forbids it. A delivery the store has logged (`seq` set) may be
    /// kept on disk only. Under `drop_oldest`, queued deliveries are evicted (lowest priority,
    /// oldest first) until `d` fits; they are counted in `evicted`.
    pub fn push_evicting(&mut self, d: Delivery, evicted: &mut Evicted) -> Result<(), Dropped> {
        if self.policy == QueueFullPolicy::DropOldest && self.online_or_keeps(&d) {
            let cost = d.msg.cost();
            // Never more evictions than there are entries, and none for a message that
            // cannot fit an empty queue. Only the queue's own bounds make room this way; a
            // message refused for want of memory (the broker's, or this queue's for what
            // cannot wait on disk) is dropped itself, rather than emptying a queue on disk.
            if cost <= self.max_bytes {
                while !self.q().queue.is_empty()
                    && (self.q().queue.len() >= self.max_messages
                        || self.q().bytes + cost > self.max_bytes)
                {
                    self.evict_one(evicted);
                }
            }
        }
        self.push(d)
    }

    /// Whether `d` is queued at all in this state (QoS 0 is not for an offline session).
    fn online_or_keeps(&self, d: &Delivery) -> bool {
        self.online || d.qos != QoS::AtMostOnce
    }

    /// Whether `d` may wait on disk only.
    fn may_spill(&self, d: &Delivery) -> bool {
        self.spill
            && d.seq != 0
            && (d.shared.is_none() || self.group.is_some())
            && d.qos != QoS::AtMostOnce
    }

    /// Drops the oldest delivery of the lowest priority.
    fn evict_one(&mut self, evicted: &mut Evicted) {
        let Some(q) = self.queued.as_deref_mut() else {
            return;
        };
        let Some(e) = q.queue.pop_lowest_front() else {
            return;
        };
        evicted.count += 1;
        self.dropped += 1;
        match e {
            Entry::Hot(d) => {
                let cost = d.msg.cost();
                q.bytes -= cost;
                q.hot_bytes -= cost;
                self.release(cost);
                if d.seq != 0 {
                    evicted.seqs.push(d.seq);
                }
            }
            Entry::Cold(c) => {
                q.bytes -= c.cost();
                q.cold -= 1;
                self.release(COLD_ENTRY_COST);
                evicted.seqs.push(c.seq);
            }
        }
    }

    /// Queues `d` unless a bound forbids it (the new message is refused: `drop_newest`; see
    /// [`Outbox::push_evicting`] for the policy).
    pub fn push(&mut self, d: Delivery) -> Result<(), Dropped> {
        if !self.online && d.qos == QoS::AtMostOnce {
            self.dropped += 1;
            return Err(Dropped::OfflineQos0);
        }
        let cost = d.msg.cost();
        let priority = d.msg.priority;
        let q = self.q();
        if q.queue.len() >= self.max_messages || q.bytes + cost > self.max_bytes {
            self.dropped += 1;
            return Err(Dropped::QueueFull);
        }
        let spillable = self.may_spill(&d) && u32::try_from(cost).is_ok();
        // An offline session needs nothing in memory until its client is back.
        let window = if self.online { self.window } else { 0 };
        let cold = spillable && (q.cold > 0 || q.hot_bytes + cost > window);
        let fits_memory = q.hot_bytes + cost <= self.max_memory;
        if !cold && fits_memory && self.try_charge(cost) {
            let q = self.q_mut();
            q.bytes += cost;
            q.hot_bytes += cost;
            q.queue.push_back(priority, Entry::Hot(Box::new(d)));
            return Ok(());
        }
        // On disk only: past the window, or memory (this queue's or the broker's) is short
        // while the disk has it.
        if !spillable || !self.try_charge(COLD_ENTRY_COST) {
            self.dropped += 1;
            return Err(Dropped::QueueFull);
        }
        let q = self.q_mut();
        q.bytes += cost;
        q.cold += 1;
        q.queue.push_back(
            priority,
            Entry::Cold(Cold {
                seq: d.seq,
                id: d.msg.id,
                cost: cost as u32,
                qos: d.qos,
                retain: d.retain,
                priority,
                subscription_ids: (!d.subscription_ids.is_empty())
                    .then(|| Box::new(d.subscription_ids)),
            }),
        );
        Ok(())
    }

    /// Room for `n` more deliveries of `priority` at once (start-up knows how many it
    /// restores: growing a long queue step by step would leave the steps' memory behind).
    pub fn reserve_exact(&mut self, priority: u8, n: usize) {
        self.q_mut().queue.reserve_exact(priority, n);
    }

    /// Queues a delivery the store recovered at start-up, on disk only.
    pub fn push_cold(&mut self, c: ColdDelivery) {
        let (seq, id) = (c.seq, c.id);
        // A cost past 32 bits cannot be a stored message's (`MAX_PACKET_SIZE`).
        let Some(c) = Cold::pack(c) else {
            tracing::error!(
                seq,
                id,
                "recovered queue entry with an impossible cost: skipped"
            );
            return;
        };
        if let Some(b) = &self.budget {
            b.charge(COLD_ENTRY_COST);
        }
        let q = self.q_mut();
        q.bytes += c.cost();
        q.cold += 1;
        q.queue.push_back(c.priority, Entry::Cold(c));
    }

    /// Queues a delivery the store recovered at start-up, in memory.
    pub fn push_restored(&mut self, d: Delivery) {
        let cost = d.msg.cost();
        if let Some(b) = &self.budget {
            b.charge(cost);
        }
        let q = self.q_mut();
        q.bytes += cost;
        q.hot_bytes += cost;
        q.queue.push_back(d.msg.priority, Entry::Hot(Box::new(d)));
    }

    /// Puts `d` back at the front (of its priority's lane: a delivery taken but not sent, e.g.
    /// the window filled).
    pub fn push_front(&mut self, d: Delivery) {
        let cost = d.msg.cost();
        if let Some(b) = &self.budget {
            // Put back: it was charged before, so it may go over the budget briefly.
            b.charge(cost);
        }
        let q = self.q_mut();
        q.bytes += cost;
        q.hot_bytes += cost;
        q.queue.push_front(d.msg.priority, Entry::Hot(Box::new(d)));
    }

    /// Whether a message of `cost` bytes fits the queue's count and byte bounds now.
    pub fn has_room(&self, cost: usize) -> bool {
        self.q().queue.len() < self.max_messages && self.q().bytes + cost <= self.max_bytes
    }

    /// Takes the oldest delivery if it is in memory (None also when the oldest is on disk:
    /// see [`Outbox::front_is_cold`]).
    pub fn pop(&mut self) -> Option<Delivery> {
        let q = self.queued.as_deref_mut()?;
        if !matches!(q.queue.front(), Some(Entry::Hot(_))) {
            return None;
        }
        let Some(Entry::Hot(d)) = q.queue.pop_front() else {
            return None;
        };
        let cost = d.msg.cost();
        q.bytes -= cost;
        q.hot_bytes -= cost;
        self.release(cost);
        Some(*d)
    }

    /// The oldest delivery if it is in memory, without taking it.
    pub fn front(&self) -> Option<&Delivery> {
        match self.q().queue.front() {
            Some(Entry::Hot(d)) => Some(d),
            _ => None,
        }
    }

    /// Whether the oldest delivery is on disk only (it must be read back before it is sent).
    pub fn front_is_cold(&self) -> bool {
        matches!(self.q().queue.front(), Some(Entry::Cold(_)))
    }

    /// The message ids of the first cold deliveries (after what is in memory at the front), up
    /// to the window's free bytes (at least one): what to read back next.
    pub fn cold_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        let room = self.window.saturating_sub(self.q().hot_bytes);
        let mut bytes = 0usize;
        for e in self
            .q()
            .queue
            .iter()
            .skip_while(|e| matches!(e, Entry::Hot(_)))
        {
            let Entry::Cold(c) = e else { break };
            if !ids.is_empty() && bytes + c.cost() > room {
                break;
            }
            bytes += c.cost();
            ids.push(c.id);
        }
        ids
    }

    /// Whether the next cold deliveries should be read back now: the front is on disk, or
    /// what is in memory is down to half the window (read ahead, so a draining subscriber
    /// does not wait for the disk at every window).
    pub fn wants_load(&self) -> bool {
        self.q().cold > 0 && (self.front_is_cold() || self.q().hot_bytes <= self.window / 2)
    }

    /// Brings the first cold deliveries (after what is in memory at the front) back into memory
    /// with the messages read back (`loaded`: id → message, None if the log could not give
    /// it). Stops at the first delivery after them that is not a cold one in `loaded`. Returns the delivery numbers (`seq`) of deliveries
    /// dropped because their message could not be read.
    pub fn warm(&mut self, loaded: &Loaded) -> Vec<u64> {
        self.warm_where(|id| loaded.get(&id).cloned(), false)
    }

    /// [`Outbox::warm`] with the messages in the order [`Outbox::cold_ids`] gave their ids
    /// (`messages[k]` is message `ids[k]`): matched by position, no map to build and look up
    /// (about a third of a read-back's cost with one, issue 16). Stops where the queue no longer
    /// matches `ids` (what follows is read back again when its turn comes).
    pub fn warm_in_order(&mut self, ids: &[u64], messages: Vec<Option<Arc<Message>>>) -> Vec<u64> {
        let mut messages = messages.into_iter();
        let mut ids = ids.iter();
        self.warm_where(
            |id| match ids.next() {
                Some(&next) if next == id => messages.next(),
                _ => None,
            },
            false,
        )
    }

    /// Allows (or stops) keeping new deliveries on disk only.
    pub fn set_spill(&mut self, spill: bool) {
        self.spill = spill;
    }

    /// The ids of every delivery kept on disk only.
    pub fn all_cold_ids(&self) -> Vec<u64> {
        self.q()
            .queue
            .iter()
            .filter_map(|e| match e {
                Entry::Cold(c) => Some(c.id),
                Entry::Hot(_) => None,
            })
            .collect()
    }

    /// Like [`Outbox::warm`], for every cold delivery whose id is in `loaded`, wherever it is
    /// in the queue (a session that stops being persistent takes its whole queue back into
    /// memory before the log forgets it).
    pub fn warm_all(&mut self, loaded: &Loaded) -> Vec<u64> {
        self.warm_where(|id| loaded.get(&id).cloned(), true)
    }

    /// `find(id)`: the message read back for cold delivery `id` (None: not read back), asked
    /// once per cold delivery, in queue order.
    fn warm_where(
        &mut self,
        mut find: impl FnMut(u64) -> Option<Option<Arc<Message>>>,
        all: bool,
    ) -> Vec<u64> {
        let mut lost = Vec::new();
        let group = self.group.as_deref();
        let Some(q) = self.queued.as_deref_mut() else {
            return lost;
        };
        let mut i = 0;
        let mut started = false;
        // The broker-wide budget is settled once at the end (one atomic step each way, not two
        // per message: this runs for every message of a backlog read back).
        let (mut warmed, mut charged) = (0usize, 0usize);
        while i < q.queue.len() {
            let Some(entry) = q.queue.get_mut(i) else {
                break;
            };
            let (seq, old_cost, qos, retain, subscription_ids, found) = match entry {
                Entry::Cold(c) => match find(c.id) {
                    Some(found) => (
                        c.seq,
                        c.cost(),
                        c.qos,
                        c.retain,
                        c.take_subscription_ids(),
                        found,
                    ),
                    None if all => {
                        i += 1;
                        continue;
                    }
                    None => break,
                },
                // In-memory entries before the cold run (read ahead), or anywhere (`all`).
                Entry::Hot(_) if all || !started => {
                    i += 1;
                    continue;
                }
                Entry::Hot(_) => break,
            };
            started = true;
            q.cold -= 1;
            warmed += 1;
            match found {
                Some(msg) => {
                    let cost = msg.cost();
                    q.bytes = q.bytes - old_cost + cost;
                    q.hot_bytes += cost;
                    charged += cost;
                    let hot = Entry::Hot(Box::new(Delivery {
                        msg,
                        qos,
                        retain,
                        subscription_ids,
                        shared: group.cloned(),
                        seq,
                    }));
                    if let Some(e) = q.queue.get_mut(i) {
                        *e = hot;
                    }
                    i += 1;
                }
                None => {
                    q.bytes -= old_cost;
                    lost.push(seq);
                    q.queue.remove(i);
                }
            }
        }
        if let Some(b) = &self.budget {
            // Bounded by the window: charged even over the budget.
            b.charge(charged);
            b.release(warmed * COLD_ENTRY_COST);
        }
        lost
    }

    /// Number of queued deliveries.
    pub fn len(&self) -> usize {
        self.q().queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.q().queue.is_empty()
    }

    /// Bytes charged for queued deliveries (in memory and on disk).
    pub fn bytes(&self) -> usize {
        self.q().bytes
    }

    /// Bytes of queued messages held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.q().hot_bytes
    }

    /// Number of queued deliveries kept on disk only.
    pub fn cold_len(&self) -> usize {
        self.q().cold
    }

    /// Deliveries refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Marks the session online or offline. Going offline with a window (the store is on),
    /// the logged deliveries still in memory are dropped to disk: an offline session's queue
    /// costs no message memory.
    pub fn set_online(&mut self, online: bool) {
        self.online = online;
        if !online && self.window != usize::MAX {
            self.chill();
        }
    }

    /// Keeps every logged (and not shared) delivery on disk only.
    fn chill(&mut self) {
        let mut freed = 0;
        let mut chilled = 0;
        let grouped = self.group.is_some();
        let Some(q) = self.queued.as_deref_mut() else {
            return;
        };
        for e in q.queue.iter_mut() {
            let Entry::Hot(d) = e else { continue };
            if d.seq == 0 || (d.shared.is_some() && !grouped) || d.qos == QoS::AtMostOnce {
                continue;
            }
            let cost = d.msg.cost();
            let Ok(packed) = u32::try_from(cost) else {
                continue;
            };
            let ids = std::mem::take(&mut d.subscription_ids);
            let cold = Cold {
                seq: d.seq,
                id: d.msg.id,
                cost: packed,
                qos: d.qos,
                retain: d.retain,
                priority: d.msg.priority,
                subscription_ids: (!ids.is_empty()).then(|| Box::new(ids)),
            };
            *e = Entry::Cold(cold);
            freed += cost;
            chilled += 1;
        }
        q.hot_bytes -= freed;
        q.cold += chilled;
        if let Some(b) = &self.budget {
            b.release(freed);
            b.charge(chilled * COLD_ENTRY_COST);
        }
    }

    /// Takes out every in-memory delivery for which `pred` holds, keeping the others in order.
    /// (A session's cold deliveries are never shared ones, the only kind taken out.)
    pub fn take_where(&mut self, mut pred: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let Some(q) = self.queued.as_deref_mut() else {
            return Vec::new();
        };
        let taken: Vec<Delivery> = q
            .queue
            .take_where(|e| matches!(e, Entry::Hot(d) if pred(d)))
            .into_iter()
            .filter_map(|e| match e {
                Entry::Hot(d) => Some(*d),
                Entry::Cold(_) => None,
            })
            .collect();
        for d in &taken {
            let cost = d.msg.cost();
            q.bytes -= cost;
            q.hot_bytes -= cost;
            if let Some(b) = &self.budget {
                b.release(cost);
            }
        }
        taken
    }

    /// Whether a connection owns the session.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Drops everything queued; returns how many deliveries there were and the log's numbers
    /// of those the store has (to log them as gone).
    pub fn clear_logged(&mut self) -> (usize, Vec<u64>) {
        let seqs = self
            .q()
            .queue
            .iter()
            .filter_map(|e| match e {
                Entry::Hot(d) => (d.seq != 0).then_some(d.seq),
                Entry::Cold(c) => Some(c.seq),
            })
            .collect();
        let n = self.len();
        self.clear();
        (n, seqs)
    }

    /// Drops everything queued (Clean Start discards the old session's messages).
    pub fn clear(&mut self) {
        self.release(self.charged());
        if let Some(q) = self.queued.as_deref_mut() {
            q.queue.clear();
            q.bytes = 0;
            q.hot_bytes = 0;
            q.cold = 0;
        }
        self.release_if_drained();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst waiting on disk in a group queue is a million entries: each costs 32 bytes,
    /// not a whole `Delivery`'s 80 (issue 13).
    #[test]
    fn a_queue_entry_is_32_bytes() {
        assert!(
            std::mem::size_of::<Entry>() <= 32,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn cold_entries_keep_their_subscription_identifiers() {
        let mut o = Outbox::new(10, 1 << 20);
        o.push_cold(ColdDelivery {
            seq: 7,
            id: 42,
            cost: 300,
            qos: QoS::AtLeastOnce,
            retain: true,
            subscription_ids: vec![3, 9],
            priority: 0,
        });
        o.push_cold(ColdDelivery {
            seq: 8,
            id: 43,
            cost: 200,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: Vec::new(),
            priority: 0,
        });
        assert_eq!((o.len(), o.cold_len(), o.bytes()), (2, 2, 500));
        assert_eq!(o.cold_ids(), vec![42, 43]);
        let msg = |id| {
            let mut m = Message::new(
                sluice_codec::TopicName::try_from("a/b").unwrap(),
                bytes::Bytes::from_static(b"x"),
                QoS::ExactlyOnce,
                false,
                Default::default(),
                "p".into(),
                std::time::Instant::now(),
            );
            m.id = id;
            Some(Arc::new(m))
        };
        assert!(o
            .warm_in_order(&[42, 43], vec![msg(42), msg(43)])
            .is_empty());
        let a = o.pop().unwrap();
        assert_eq!(
            (a.seq, a.msg.id, a.qos, a.retain, a.subscription_ids),
            (7, 42, QoS::AtLeastOnce, true, vec![3, 9])
        );
        let b = o.pop().unwrap();
        assert_eq!(
            (b.seq, b.msg.id, b.qos, b.retain, b.subscription_ids),
            (8, 43, QoS::ExactlyOnce, false, vec![])
        );
        assert!(o.is_empty() && o.bytes() == 0);
    }
}
