//! Session state (4.1): what the broker keeps for a client id across connections.
//!
//! Two halves with different owners:
//! * [`SessionHandle`] is shared (`Arc`): publishers push [`Delivery`] records onto its
//!   [`Outbox`] without awaiting, and wake the owning connection task through `notify`.
//! * [`Session`] is owned by exactly one task at a time: the connection task while the client is
//!   online, otherwise it is parked in the handle. It holds subscriptions, the inflight window and
//!   inbound QoS 2 state. It is plain data, so the durability work can serialise it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sluice_codec::{LastWill, QoS, SubscriptionOptions, TopicFilter};
use tokio::sync::{oneshot, Notify};

use crate::message::{ClientId, Message};

/// One message on its way to one session: the shared message plus what differs per subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The shared message (never copied per subscriber).
    pub msg: Arc<Message>,
    /// min(published QoS, subscription QoS) [MQTT-3.8.4-8].
    pub qos: QoS,
    /// RETAIN flag to send: 1 for retained messages sent on subscribe, else Retain As Published.
    pub retain: bool,
    /// Subscription Identifiers of every matching subscription (5.0) [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
    /// For a delivery through a shared subscription, its full `$share/{group}/{filter}`: the
    /// message may move to another member of that group if this session goes away (4.8.2).
    pub shared: Option<TopicFilter>,
    /// The session's number for this delivery in the store's log (0: not logged).
    pub seq: u64,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// QoS 0 for an offline session: not queued, as Mosquitto does by default.
    OfflineQos0,
    /// `mqtt.max_queued_messages` or `mqtt.max_queued_bytes` reached.
    QueueFull,
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
}

/// Memory charged to the broker-wide budget for a delivery kept on disk (its bookkeeping).
pub const COLD_ENTRY_COST: usize = 64;

#[derive(Debug)]
enum Entry {
    /// In memory, ready to send.
    Hot(Delivery),
    /// On disk only; read back (see [`Outbox::cold_ids`], [`Outbox::warm`]) before sending.
    Cold(ColdDelivery),
}

/// The per-session queue of deliveries not yet handed to the connection: messages for an
/// offline session, and messages waiting for a free slot in the inflight window. Bounded in
/// count and bytes; a full queue drops the new message and counts it, never blocks.
///
/// Only the first `window` bytes are kept in memory. Past them, deliveries the store has
/// logged (QoS 1/2 of persistent sessions, not shared) are kept as [`ColdDelivery`]s: the
/// message is dropped from memory and read back from the log when the window has room again,
/// so a long offline queue costs disk, not memory. Order is kept: once one delivery is cold,
/// every later one that can be is cold too.
#[derive(Debug)]
pub struct Outbox {
    /// Deliveries in arrival order [MQTT-4.6.0-6].
    queue: VecDeque<Entry>,
    /// Sum of `Message::cost` over `queue`, checked against `max_bytes`.
    bytes: usize,
    /// Sum of `Message::cost` over the in-memory entries.
    hot_bytes: usize,
    /// Number of cold entries.
    cold: usize,
    /// Bytes of messages kept in memory before logged deliveries stay on disk only.
    window: usize,
    /// Whether deliveries may be kept on disk only at all (not while a session leaves the log).
    spill: bool,
    /// Whether a connection currently owns the session (QoS 0 is not queued for offline ones).
    online: bool,
    /// `mqtt.max_queued_messages`.
    max_messages: usize,
    /// `mqtt.max_queued_bytes`.
    max_bytes: usize,
    /// Deliveries refused since the session began, for logs and counters.
    dropped: u64,
    /// The broker-wide budget this queue's memory counts against (None: only its own bounds).
    budget: Option<Arc<QueueBudget>>,
}

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
            queue: VecDeque::new(),
            bytes: 0,
            hot_bytes: 0,
            cold: 0,
            window: usize::MAX,
            spill: true,
            online: false,
            max_messages,
            max_bytes,
            dropped: 0,
            budget: None,
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

    /// What this queue charges the broker-wide budget.
    fn charged(&self) -> usize {
        self.hot_bytes + self.cold * COLD_ENTRY_COST
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
    /// kept on disk only.
    pub fn push(&mut self, d: Delivery) -> Result<(), Dropped> {
        if !self.online && d.qos == QoS::AtMostOnce {
            self.dropped += 1;
            return Err(Dropped::OfflineQos0);
        }
        let cost = d.msg.cost();
        if self.queue.len() >= self.max_messages || self.bytes + cost > self.max_bytes {
            self.dropped += 1;
            return Err(Dropped::QueueFull);
        }
        let spillable = self.spill && d.seq != 0 && d.shared.is_none() && d.qos != QoS::AtMostOnce;
        // An offline session needs nothing in memory until its client is back.
        let window = if self.online { self.window } else { 0 };
        let cold = spillable && (self.cold > 0 || self.hot_bytes + cost > window);
        if !cold && self.try_charge(cost) {
            self.bytes += cost;
            self.hot_bytes += cost;
            self.queue.push_back(Entry::Hot(d));
            return Ok(());
        }
        // On disk only: past the window, or memory is short while the disk has it.
        if !spillable || !self.try_charge(COLD_ENTRY_COST) {
            self.dropped += 1;
            return Err(Dropped::QueueFull);
        }
        self.bytes += cost;
        self.cold += 1;
        self.queue.push_back(Entry::Cold(ColdDelivery {
            seq: d.seq,
            id: d.msg.id,
            cost,
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids,
        }));
        Ok(())
    }

    /// Room for `n` more deliveries at once (start-up knows how many it restores: growing a
    /// long queue step by step would leave the steps' memory behind).
    pub fn reserve_exact(&mut self, n: usize) {
        self.queue.reserve_exact(n);
    }

    /// Queues a delivery the store recovered at start-up, on disk only.
    pub fn push_cold(&mut self, c: ColdDelivery) {
        if let Some(b) = &self.budget {
            b.charge(COLD_ENTRY_COST);
        }
        self.bytes += c.cost;
        self.cold += 1;
        self.queue.push_back(Entry::Cold(c));
    }

    /// Queues a delivery the store recovered at start-up, in memory.
    pub fn push_restored(&mut self, d: Delivery) {
        let cost = d.msg.cost();
        if let Some(b) = &self.budget {
            b.charge(cost);
        }
        self.bytes += cost;
        self.hot_bytes += cost;
        self.queue.push_back(Entry::Hot(d));
    }

    /// Puts `d` back at the front (a delivery taken but not sent, e.g. the window filled).
    pub fn push_front(&mut self, d: Delivery) {
        let cost = d.msg.cost();
        if let Some(b) = &self.budget {
            // Put back: it was charged before, so it may go over the budget briefly.
            b.charge(cost);
        }
        self.bytes += cost;
        self.hot_bytes += cost;
        self.queue.push_front(Entry::Hot(d));
    }

    /// Whether a message of `cost` bytes fits the queue's count and byte bounds now.
    pub fn has_room(&self, cost: usize) -> bool {
        self.queue.len() < self.max_messages && self.bytes + cost <= self.max_bytes
    }

    /// Takes the oldest delivery if it is in memory (None also when the oldest is on disk:
    /// see [`Outbox::front_is_cold`]).
    pub fn pop(&mut self) -> Option<Delivery> {
        if !matches!(self.queue.front(), Some(Entry::Hot(_))) {
            return None;
        }
        let Some(Entry::Hot(d)) = self.queue.pop_front() else {
            return None;
        };
        let cost = d.msg.cost();
        self.bytes -= cost;
        self.hot_bytes -= cost;
        self.release(cost);
        Some(d)
    }

    /// The oldest delivery if it is in memory, without taking it.
    pub fn front(&self) -> Option<&Delivery> {
        match self.queue.front() {
            Some(Entry::Hot(d)) => Some(d),
            _ => None,
        }
    }

    /// Whether the oldest delivery is on disk only (it must be read back before it is sent).
    pub fn front_is_cold(&self) -> bool {
        matches!(self.queue.front(), Some(Entry::Cold(_)))
    }

    /// The message ids of the first cold deliveries (after what is in memory at the front), up
    /// to the window's free bytes (at least one): what to read back next.
    pub fn cold_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        let room = self.window.saturating_sub(self.hot_bytes);
        let mut bytes = 0usize;
        for e in self.queue.iter().skip_while(|e| matches!(e, Entry::Hot(_))) {
            let Entry::Cold(c) = e else { break };
            if !ids.is_empty() && bytes + c.cost > room {
                break;
            }
            bytes += c.cost;
            ids.push(c.id);
        }
        ids
    }

    /// Whether the next cold deliveries should be read back now: the front is on disk, or
    /// what is in memory is down to half the window (read ahead, so a draining subscriber
    /// does not wait for the disk at every window).
    pub fn wants_load(&self) -> bool {
        self.cold > 0 && (self.front_is_cold() || self.hot_bytes <= self.window / 2)
    }

    /// Brings the first cold deliveries (after what is in memory at the front) back into memory
    /// with the messages read back (`loaded`: id → message, None if the log could not give
    /// it). Stops at the first delivery after them that is not a cold one in `loaded`. Returns the delivery numbers (`seq`) of deliveries
    /// dropped because their message could not be read.
    pub fn warm(&mut self, loaded: &HashMap<u64, Option<Arc<Message>>>) -> Vec<u64> {
        self.warm_where(loaded, false)
    }

    /// Allows (or stops) keeping new deliveries on disk only.
    pub fn set_spill(&mut self, spill: bool) {
        self.spill = spill;
    }

    /// The ids of every delivery kept on disk only.
    pub fn all_cold_ids(&self) -> Vec<u64> {
        self.queue
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
    pub fn warm_all(&mut self, loaded: &HashMap<u64, Option<Arc<Message>>>) -> Vec<u64> {
        self.warm_where(loaded, true)
    }

    fn warm_where(&mut self, loaded: &HashMap<u64, Option<Arc<Message>>>, all: bool) -> Vec<u64> {
        let mut lost = Vec::new();
        let mut i = 0;
        let mut started = false;
        while i < self.queue.len() {
            let (seq, id, old_cost, qos, retain, subscription_ids) = match &mut self.queue[i] {
                Entry::Cold(c) if loaded.contains_key(&c.id) => (
                    c.seq,
                    c.id,
                    c.cost,
                    c.qos,
                    c.retain,
                    std::mem::take(&mut c.subscription_ids),
                ),
                // In-memory entries before the cold run (read ahead), or anywhere (`all`).
                Entry::Hot(_) if all || !started => {
                    i += 1;
                    continue;
                }
                _ if all => {
                    i += 1;
                    continue;
                }
                _ => break,
            };
            started = true;
            self.cold -= 1;
            self.release(COLD_ENTRY_COST);
            match loaded.get(&id).cloned().flatten() {
                Some(msg) => {
                    let cost = msg.cost();
                    self.bytes = self.bytes - old_cost + cost;
                    self.hot_bytes += cost;
                    if let Some(b) = &self.budget {
                        // Bounded by the window: charged even over the budget.
                        b.charge(cost);
                    }
                    self.queue[i] = Entry::Hot(Delivery {
                        msg,
                        qos,
                        retain,
                        subscription_ids,
                        shared: None,
                        seq,
                    });
                    i += 1;
                }
                None => {
                    self.bytes -= old_cost;
                    lost.push(seq);
                    self.queue.remove(i);
                }
            }
        }
        lost
    }

    /// Number of queued deliveries.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes charged for queued deliveries (in memory and on disk).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of queued messages held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.hot_bytes
    }

    /// Number of queued deliveries kept on disk only.
    pub fn cold_len(&self) -> usize {
        self.cold
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
        for e in self.queue.iter_mut() {
            let Entry::Hot(d) = e else { continue };
            if d.seq == 0 || d.shared.is_some() || d.qos == QoS::AtMostOnce {
                continue;
            }
            let cost = d.msg.cost();
            let cold = ColdDelivery {
                seq: d.seq,
                id: d.msg.id,
                cost,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: std::mem::take(&mut d.subscription_ids),
            };
            *e = Entry::Cold(cold);
            freed += cost;
            chilled += 1;
        }
        self.hot_bytes -= freed;
        self.cold += chilled;
        if let Some(b) = &self.budget {
            b.release(freed);
            b.charge(chilled * COLD_ENTRY_COST);
        }
    }

    /// Takes out every in-memory delivery for which `pred` holds, keeping the others in order.
    /// (Cold deliveries are never shared ones, the only kind taken out.)
    pub fn take_where(&mut self, mut pred: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for e in self.queue.drain(..) {
            match e {
                Entry::Hot(d) if pred(&d) => {
                    let cost = d.msg.cost();
                    self.bytes -= cost;
                    self.hot_bytes -= cost;
                    if let Some(b) = &self.budget {
                        b.release(cost);
                    }
                    taken.push(d);
                }
                other => kept.push_back(other),
            }
        }
        self.queue = kept;
        taken
    }

    /// Whether a connection owns the session.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Drops everything queued (Clean Start discards the old session's messages).
    pub fn clear(&mut self) {
        self.release(self.charged());
        self.queue.clear();
        self.bytes = 0;
        self.hot_bytes = 0;
        self.cold = 0;
    }
}

/// A subscription as the session remembers it (the tree holds a copy for matching).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    /// Subscription Identifier (5.0), sent with every message this subscription matches.
    pub identifier: Option<u32>,
}

/// An outbound QoS 1/2 message awaiting its acknowledgement (4.3.2, 4.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inflight {
    /// PUBLISH sent (QoS 1: awaiting PUBACK; QoS 2: awaiting PUBREC). Resent with DUP on resume.
    Publish { pkid: u16, delivery: Delivery },
    /// QoS 2 PUBREC received and PUBREL sent: awaiting PUBCOMP. The message itself is gone.
    Release { pkid: u16 },
}

impl Inflight {
    /// The packet identifier this entry holds.
    pub fn pkid(&self) -> u16 {
        match self {
            Inflight::Publish { pkid, .. } | Inflight::Release { pkid } => *pkid,
        }
    }
}

/// The will of a connection that ended abnormally and is waiting out its Will Delay Interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWill {
    pub will: LastWill,
    /// When to publish it, unless the session resumes first [MQTT-3.1.3-9].
    pub publish_at: Instant,
}

/// The session state owned by one task at a time (see the module docs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Session {
    /// Subscriptions by the filter as the client wrote it (`$share/...` included).
    pub subscriptions: HashMap<TopicFilter, SubscriptionRecord>,
    /// Outbound QoS 1/2 messages not yet fully acknowledged, in the order they were sent;
    /// resent in this order when the session resumes [MQTT-4.4.0-1].
    pub inflight: VecDeque<Inflight>,
    /// The last packet identifier used for an outbound PUBLISH.
    pub last_pkid: u16,
    /// Inbound QoS 2 packet ids received and PUBREC'd but not yet released by PUBREL: a
    /// PUBLISH with one of these ids is not delivered again [MQTT-4.3.3-9].
    pub awaiting_pubrel: HashSet<u16>,
    /// Session Expiry Interval in seconds; 0 ends the session with the connection, u32::MAX
    /// never expires (3.1.1 Clean Session = 0).
    pub expiry_interval: u32,
    /// A will waiting for its delay while the client is away.
    /// Boxed: rare, and a `LastWill` is large (every session would pay for it).
    pub pending_will: Option<Box<PendingWill>>,
}

impl Session {
    /// The next free packet identifier (never 0 [MQTT-2.2.1-3], never one in use
    /// [MQTT-2.2.1-2]); None if all 65,535 are in flight.
    pub fn next_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let id = self.last_pkid;
            if !self.inflight.iter().any(|i| i.pkid() == id) {
                return Some(id);
            }
        }
        None
    }

    /// Finds the inflight entry for `pkid`; acks usually arrive in order, so this checks the
    /// oldest entry first.
    pub fn inflight_position(&self, pkid: u16) -> Option<usize> {
        self.inflight.iter().position(|i| i.pkid() == pkid)
    }

    /// Number of inflight QoS 1/2 PUBLISHes (PUBRELs awaiting PUBCOMP count too, 4.9).
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }
}

/// A message for the task that owns a session.
#[derive(Debug)]
pub enum Control {
    /// Another connection with the same client id arrived [MQTT-3.1.4-3]: send DISCONNECT
    /// 0x8E, close, park the session in the handle, then answer.
    TakeOver(oneshot::Sender<()>),
}

/// The connection currently owning a session.
#[derive(Debug)]
pub struct Owner {
    /// Unique per connection, so a late-finishing old connection cannot clobber a new owner.
    pub connection: u64,
    /// Where to send the one [`Control`] message a connection can get (a oneshot: far
    /// smaller per connection than a channel). Taken when used.
    pub control: Option<oneshot::Sender<Control>>,
}

/// Who holds the session now; guarded by one lock so ownership changes are atomic.
#[derive(Debug, Default)]
pub struct Ownership {
    /// The online owner, if any.
    pub owner: Option<Owner>,
    /// The session while nobody owns it.
    pub parked: Option<Box<Session>>,
    /// Bumped whenever ownership changes: expiry and will timers fire only for the generation
    /// they were armed for.
    pub generation: u64,
    /// When the parked session expires (None: never, or online).
    pub expires_at: Option<Instant>,
}

/// The shared half of a session (see the module docs).
#[derive(Debug)]
pub struct SessionHandle {
    /// The client identifier this session belongs to.
    pub client_id: ClientId,
    /// Deliveries waiting for the owning connection (or for the client to come back).
    outbox: Mutex<Outbox>,
    /// Wakes the owning connection task after a push.
    pub notify: Notify,
    /// Ownership and the parked session. Locked briefly; never across an await.
    ownership: Mutex<Ownership>,
    /// Serialises CONNECTs and disconnects for this client id, so two connections racing for one
    /// session take it over one after the other. Held across the takeover await (async mutex).
    pub connect_lock: tokio::sync::Mutex<()>,
    /// Deliveries refused by a full outbox, for counters.
    pub overflow_count: AtomicU64,
    /// QoS 1/2 messages in flight to the client, published by the owning connection task so
    /// shared-subscription selection can see who has room without touching the session.
    pub inflight: AtomicUsize,
    /// The connection's send window (min(client Receive Maximum, `mqtt.max_inflight`)).
    pub window: AtomicUsize,
    /// Whether the session outlives its connection (Session Expiry > 0): its QoS 1/2 queue is
    /// then written to the store.
    pub persistent: AtomicBool,
    /// The next delivery number for the store's log (see `Record::Enqueue`).
    pub next_seq: AtomicU64,
}

impl SessionHandle {
    /// A handle with an empty outbox and no owner.
    pub fn new(client_id: ClientId, max_messages: usize, max_bytes: usize) -> SessionHandle {
        SessionHandle::with_outbox(client_id, Outbox::new(max_messages, max_bytes))
    }

    /// A handle with the given (empty) outbox and no owner.
    pub fn with_outbox(client_id: ClientId, outbox: Outbox) -> SessionHandle {
        SessionHandle {
            client_id,
            outbox: Mutex::new(outbox),
            notify: Notify::new(),
            ownership: Mutex::new(Ownership::default()),
            connect_lock: tokio::sync::Mutex::new(()),
            overflow_count: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            window: AtomicUsize::new(0),
            persistent: AtomicBool::new(false),
            next_seq: AtomicU64::new(1),
        }
    }

    /// Room left in the client's window: its window less what is in flight and already queued;
    /// negative when a backlog waits behind a full window. `i64::MIN` when offline.
    pub fn headroom(&self) -> i64 {
        let outbox = self.outbox();
        if !outbox.is_online() {
            return i64::MIN;
        }
        let window = self.window.load(Ordering::Relaxed) as i64;
        window - self.inflight.load(Ordering::Relaxed) as i64 - outbox.len() as i64
    }

    /// Locks the outbox. Never held across an await.
    pub fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding this lock cannot leave the queue inconsistent (every mutation is
        // a single push/pop), so a poisoned lock is still usable.
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the ownership state. Never held across an await.
    pub fn ownership(&self) -> MutexGuard<'_, Ownership> {
        self.ownership.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a delivery and wakes the owner; never blocks on the subscriber.
    pub fn deliver(&self, d: Delivery) -> Result<(), Dropped> {
        let r = self.outbox().push(d);
        match r {
            Ok(()) => self.notify.notify_one(),
            Err(Dropped::QueueFull) => {
                let n = self.overflow_count.fetch_add(1, Ordering::Relaxed);
                // Log the first overflow and then every 1000th, so a flood cannot flood the log.
                if n % 1000 == 0 {
                    tracing::warn!(
                        client_id = %self.client_id,
                        dropped = n + 1,
                        "session queue full (mqtt.max_queued_messages / mqtt.max_queued_bytes): message dropped"
                    );
                }
            }
            Err(Dropped::OfflineQos0) => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_codec::TopicName;

    fn delivery(qos: QoS, payload: &'static [u8]) -> Delivery {
        let msg = Message::new(
            TopicName::try_from("t").unwrap(),
            Bytes::from_static(payload),
            qos,
            false,
            Default::default(),
            "p".into(),
            Instant::now(),
        );
        Delivery {
            msg: Arc::new(msg),
            qos,
            retain: false,
            subscription_ids: vec![],
            shared: None,
            seq: 0,
        }
    }

    /// `d` as the router hands it over once the store has logged it.
    fn logged(mut d: Delivery) -> Delivery {
        d.seq = d.msg.id;
        d
    }

    #[test]
    fn outbox_bounds_by_count_and_bytes() {
        let mut o = Outbox::new(2, 1 << 20);
        o.set_online(true);
        assert!(o.push(delivery(QoS::AtLeastOnce, b"a")).is_ok());
        assert!(o.push(delivery(QoS::AtMostOnce, b"b")).is_ok());
        assert_eq!(
            o.push(delivery(QoS::AtLeastOnce, b"c")),
            Err(Dropped::QueueFull)
        );
        assert_eq!(o.dropped(), 1);
        let one = delivery(QoS::AtLeastOnce, b"x").msg.cost();
        let mut o = Outbox::new(100, one * 2);
        o.set_online(true);
        assert!(o.push(delivery(QoS::AtLeastOnce, b"x")).is_ok());
        assert!(o.push(delivery(QoS::AtLeastOnce, b"y")).is_ok());
        assert_eq!(
            o.push(delivery(QoS::AtLeastOnce, b"z")),
            Err(Dropped::QueueFull)
        );
        assert_eq!(o.bytes(), one * 2);
        o.pop();
        assert_eq!(o.bytes(), one);
    }

    #[test]
    fn the_broker_wide_budget_bounds_all_queues_together() {
        let one = delivery(QoS::AtLeastOnce, b"x").msg.cost();
        let budget = QueueBudget::new(one * 3);
        let mut a = Outbox::new(100, 1 << 20).with_budget(budget.clone());
        let mut b = Outbox::new(100, 1 << 20).with_budget(budget.clone());
        a.set_online(true);
        b.set_online(true);
        assert!(a.push(delivery(QoS::AtLeastOnce, b"x")).is_ok());
        assert!(a.push(delivery(QoS::AtLeastOnce, b"y")).is_ok());
        assert!(b.push(delivery(QoS::AtLeastOnce, b"z")).is_ok());
        assert_eq!(
            b.push(delivery(QoS::AtLeastOnce, b"w")),
            Err(Dropped::QueueFull)
        );
        a.pop();
        assert!(
            b.push(delivery(QoS::AtLeastOnce, b"w")).is_ok(),
            "room again"
        );
        drop(a);
        assert_eq!(
            budget.used(),
            one * 2,
            "a dropped queue gives its bytes back"
        );
        b.clear();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn logged_deliveries_past_the_window_stay_on_disk_until_read_back() {
        let one = delivery(QoS::AtLeastOnce, b"x").msg.cost();
        let budget = QueueBudget::new(1 << 20);
        let mut o = Outbox::new(100, 1 << 20)
            .with_budget(budget.clone())
            .with_window(one * 2);
        o.set_online(true);
        let ds: Vec<Delivery> = (0..5).map(|_| delivery(QoS::AtLeastOnce, b"x")).collect();
        for d in &ds[..4] {
            o.push(logged(d.clone())).unwrap();
        }
        // Not logged (e.g. not a persistent session): always in memory, even past the window.
        o.push(logged(delivery(QoS::AtMostOnce, b"q"))).unwrap();
        o.push(logged(ds[4].clone())).unwrap();
        assert_eq!((o.len(), o.cold_len()), (6, 3));
        assert_eq!(o.memory_bytes(), one * 3);
        assert_eq!(o.bytes(), one * 6);
        assert_eq!(budget.used(), one * 3 + 3 * COLD_ENTRY_COST);
        assert_eq!(o.pop().unwrap().msg.id, ds[0].msg.id);
        assert_eq!(o.pop().unwrap().msg.id, ds[1].msg.id);
        assert!(
            o.pop().is_none() && o.front_is_cold() && o.wants_load(),
            "the next one is on disk"
        );
        // Read back what fits the window's free bytes (the in-memory QoS 0 message behind the
        // cold ones takes half of it), in order.
        assert_eq!(o.cold_ids(), vec![ds[2].msg.id]);
        let loaded: HashMap<u64, Option<Arc<Message>>> =
            std::iter::once((ds[2].msg.id, Some(ds[2].msg.clone()))).collect();
        assert!(o.warm(&loaded).is_empty());
        assert_eq!(o.pop().unwrap().msg.id, ds[2].msg.id);
        assert_eq!(o.cold_ids(), vec![ds[3].msg.id]);
        // The store could not give it back: dropped, its number reported for the log.
        let loaded = std::iter::once((ds[3].msg.id, None)).collect();
        assert_eq!(o.warm(&loaded), vec![ds[3].msg.id]);
        assert_eq!(o.pop().unwrap().qos, QoS::AtMostOnce);
        assert!(o.front_is_cold());
        assert_eq!(o.cold_ids(), vec![ds[4].msg.id]);
        let loaded = std::iter::once((ds[4].msg.id, Some(ds[4].msg.clone()))).collect();
        assert!(o.warm(&loaded).is_empty());
        assert_eq!(o.pop().unwrap(), logged(ds[4].clone()));
        assert!(o.is_empty());
        assert_eq!((o.bytes(), o.memory_bytes(), budget.used()), (0, 0, 0));
    }

    #[test]
    fn the_next_cold_deliveries_are_read_ahead_at_half_a_window() {
        let one = delivery(QoS::AtLeastOnce, b"x").msg.cost();
        let mut o = Outbox::new(100, 1 << 20).with_window(one * 4);
        o.set_online(true);
        let ds: Vec<Delivery> = (0..6)
            .map(|_| logged(delivery(QoS::AtLeastOnce, b"x")))
            .collect();
        for d in &ds {
            o.push(d.clone()).unwrap();
        }
        assert_eq!(o.cold_len(), 2);
        assert!(!o.wants_load(), "a full window in memory");
        o.pop().unwrap();
        o.pop().unwrap();
        assert!(
            o.wants_load() && !o.front_is_cold(),
            "half a window left: read ahead"
        );
        let ids = o.cold_ids();
        assert_eq!(ids, vec![ds[4].msg.id, ds[5].msg.id]);
        let loaded = vec![
            (ds[4].msg.id, Some(ds[4].msg.clone())),
            (ds[5].msg.id, Some(ds[5].msg.clone())),
        ]
        .into_iter()
        .collect();
        assert!(o.warm(&loaded).is_empty());
        let order: Vec<u64> = std::iter::from_fn(|| o.pop()).map(|d| d.msg.id).collect();
        assert_eq!(order, ds[2..].iter().map(|d| d.msg.id).collect::<Vec<_>>());
    }

    #[test]
    fn an_offline_session_keeps_its_logged_queue_on_disk_only() {
        let budget = QueueBudget::new(1 << 20);
        let mut o = Outbox::new(100, 1 << 20)
            .with_budget(budget.clone())
            .with_window(1 << 20);
        o.set_online(true);
        let a = logged(delivery(QoS::AtLeastOnce, b"a"));
        o.push(a.clone()).unwrap();
        o.push(delivery(QoS::AtLeastOnce, b"not logged")).unwrap();
        assert_eq!(o.cold_len(), 0, "online, inside the window");
        o.set_online(false);
        assert_eq!(
            o.cold_len(),
            1,
            "going offline drops the logged one to disk"
        );
        o.push(logged(delivery(QoS::AtLeastOnce, b"b"))).unwrap();
        assert_eq!(o.cold_len(), 2, "offline: straight to disk");
        let not_logged = delivery(QoS::AtLeastOnce, b"not logged").msg.cost();
        assert_eq!(o.memory_bytes(), not_logged);
        assert_eq!(budget.used(), not_logged + 2 * COLD_ENTRY_COST);
        o.set_online(true);
        assert!(o.front_is_cold());
        assert_eq!(o.cold_ids()[0], a.msg.id, "order kept");
        o.clear();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_short_budget_keeps_logged_deliveries_on_disk_instead_of_dropping_them() {
        let one = delivery(QoS::AtLeastOnce, b"x").msg.cost();
        let budget = QueueBudget::new(one + COLD_ENTRY_COST);
        let mut o = Outbox::new(100, 1 << 20).with_budget(budget.clone());
        o.set_online(true);
        o.push(logged(delivery(QoS::AtLeastOnce, b"x"))).unwrap();
        o.push(logged(delivery(QoS::AtLeastOnce, b"y"))).unwrap();
        assert_eq!(o.cold_len(), 1);
        assert_eq!(
            o.push(delivery(QoS::AtLeastOnce, b"z")),
            Err(Dropped::QueueFull),
            "not logged and no memory left"
        );
        o.clear();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn offline_outbox_refuses_qos0_but_queues_qos1() {
        let mut o = Outbox::new(10, 1 << 20);
        assert_eq!(
            o.push(delivery(QoS::AtMostOnce, b"a")),
            Err(Dropped::OfflineQos0)
        );
        assert!(o.push(delivery(QoS::AtLeastOnce, b"a")).is_ok());
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut s = Session {
            last_pkid: u16::MAX - 1,
            ..Default::default()
        };
        assert_eq!(s.next_pkid(), Some(u16::MAX));
        s.inflight.push_back(Inflight::Release { pkid: 1 });
        assert_eq!(
            s.next_pkid(),
            Some(2),
            "wraps past 0 [MQTT-2.2.1-3] and skips 1 (in use)"
        );
    }
}
