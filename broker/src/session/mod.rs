//! Session state (4.1): what the broker keeps for a client id across connections.
//!
//! Two halves with different owners:
//! * [`SessionHandle`] is shared (`Arc`): publishers push [`Delivery`] records onto its
//!   [`Outbox`] without awaiting, and wake the owning connection task through `notify`.
//! * [`Session`] is owned by exactly one task at a time: the connection task while the client is
//!   online, otherwise it is parked in the handle. It holds subscriptions, the inflight window and
//!   inbound QoS 2 state. It is plain data, so the durability work can serialise it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::task::AtomicWaker;
use sluice_codec::{LastWill, QoS, SubscriptionOptions, TopicFilter};
use tokio::sync::oneshot;

use crate::message::{ClientId, Message};

mod control;
mod deadlines;
mod keepalive;
mod lanes;
mod outbox;
pub use control::{Asked, ControlGuard, ControlSlot};
pub use deadlines::{DeadlineKey, Deadlines};
pub use keepalive::KeepAlives;
pub use outbox::{ColdDelivery, Dropped, Evicted, Loaded, Outbox, QueueBudget, COLD_ENTRY_COST};

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

/// A session's subscriptions by topic filter: a vector while there are few, a hash map past
/// [`Subscriptions::FEW`]. Most clients hold one or two subscriptions, and a `HashMap` with
/// one entry allocates four buckets (about 200 bytes per idle client here); the vector grows
/// one entry at a time. The order of entries means nothing (equality ignores it).
#[derive(Debug, Clone)]
// Boxed on purpose: the map is the rare case, and boxed it keeps the enum the vector's size.
#[allow(clippy::box_collection)]
pub enum Subscriptions {
    Few(Vec<(TopicFilter, SubscriptionRecord)>),
    Many(Box<HashMap<TopicFilter, SubscriptionRecord>>),
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions::Few(Vec::new())
    }
}

impl PartialEq for Subscriptions {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(f, r)| other.get(f) == Some(r))
    }
}

impl Eq for Subscriptions {}

impl Subscriptions {
    /// Up to this many subscriptions live in a vector (a linear scan of a few filters beats
    /// hashing them).
    pub const FEW: usize = 8;

    pub fn len(&self) -> usize {
        match self {
            Subscriptions::Few(v) => v.len(),
            Subscriptions::Many(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, filter: &TopicFilter) -> Option<&SubscriptionRecord> {
        match self {
            Subscriptions::Few(v) => v.iter().find(|(f, _)| f == filter).map(|(_, r)| r),
            Subscriptions::Many(m) => m.get(filter),
        }
    }

    pub fn contains_key(&self, filter: &TopicFilter) -> bool {
        self.get(filter).is_some()
    }

    /// Adds or replaces the subscription to `filter`; returns the replaced record.
    pub fn insert(
        &mut self,
        filter: TopicFilter,
        record: SubscriptionRecord,
    ) -> Option<SubscriptionRecord> {
        match self {
            Subscriptions::Few(v) => {
                if let Some((_, r)) = v.iter_mut().find(|(f, _)| *f == filter) {
                    return Some(std::mem::replace(r, record));
                }
                if v.len() < Self::FEW {
                    v.reserve_exact(1);
                    v.push((filter, record));
                } else {
                    let mut m: HashMap<_, _> = v.drain(..).collect();
                    m.insert(filter, record);
                    *self = Subscriptions::Many(Box::new(m));
                }
                None
            }
            Subscriptions::Many(m) => m.insert(filter, record),
        }
    }

    /// Removes the subscription to `filter`; returns its record.
    pub fn remove(&mut self, filter: &TopicFilter) -> Option<SubscriptionRecord> {
        match self {
            Subscriptions::Few(v) => {
                let i = v.iter().position(|(f, _)| f == filter)?;
                let (_, r) = v.swap_remove(i);
                v.shrink_to_fit();
                Some(r)
            }
            Subscriptions::Many(m) => {
                let r = m.remove(filter)?;
                if m.len() <= Self::FEW / 2 {
                    *self = Subscriptions::Few(m.drain().collect());
                }
                Some(r)
            }
        }
    }

    /// Every (filter, record), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&TopicFilter, &SubscriptionRecord)> {
        let (few, many) = match self {
            Subscriptions::Few(v) => (Some(v.iter().map(|(f, r)| (f, r))), None),
            Subscriptions::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// Every filter, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &TopicFilter> {
        self.iter().map(|(f, _)| f)
    }
}

impl FromIterator<(TopicFilter, SubscriptionRecord)> for Subscriptions {
    fn from_iter<I: IntoIterator<Item = (TopicFilter, SubscriptionRecord)>>(iter: I) -> Self {
        let mut s = Subscriptions::default();
        for (f, r) in iter {
            s.insert(f, r);
        }
        s
    }
}

/// The inbound QoS 2 packet ids awaiting PUBREL ([`Session::awaiting_pubrel`]): a set that
/// exists only while it holds ids. An empty `HashSet` is 48 bytes in every session (and so in
/// every connection's task); most clients never publish at QoS 2, so here they carry a
/// pointer, and the set is freed again once its last id is released.
#[derive(Debug, Default, Clone)]
// Boxed on purpose: absent in the common case, and boxed it is one pointer wide.
#[allow(clippy::box_collection)]
pub struct PubrelIds(Option<Box<HashSet<u16>>>);

impl PubrelIds {
    pub fn contains(&self, pkid: &u16) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(pkid))
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `pkid`; returns whether it was new.
    pub fn insert(&mut self, pkid: u16) -> bool {
        self.0.get_or_insert_with(Box::default).insert(pkid)
    }

    /// Removes `pkid`; returns whether it was there. The set goes with its last id.
    pub fn remove(&mut self, pkid: &u16) -> bool {
        let Some(s) = self.0.as_mut() else {
            return false;
        };
        let removed = s.remove(pkid);
        if s.is_empty() {
            self.0 = None;
        }
        removed
    }

    /// The ids, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &u16> {
        self.0.iter().flat_map(|s| s.iter())
    }
}

impl PartialEq for PubrelIds {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|id| other.contains(id))
    }
}

impl Eq for PubrelIds {}

impl From<HashSet<u16>> for PubrelIds {
    fn from(s: HashSet<u16>) -> Self {
        PubrelIds((!s.is_empty()).then(|| Box::new(s)))
    }
}

/// The session state owned by one task at a time (see the module docs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Session {
    /// Subscriptions by the filter as the client wrote it (`$share/...` included).
    pub subscriptions: Subscriptions,
    /// Outbound QoS 1/2 messages not yet fully acknowledged, in the order they were sent;
    /// resent in this order when the session resumes [MQTT-4.4.0-1].
    pub inflight: VecDeque<Inflight>,
    /// The last packet identifier used for an outbound PUBLISH.
    pub last_pkid: u16,
    /// Set when `inflight` may hold packet ids that [`Session::next_pkid`] did not hand out
    /// in order since the window was last empty (restored from the store, or ids skipped
    /// after a full wrap): `next_pkid` then checks the whole window. Cleared once the window
    /// is empty.
    pub pkids_unordered: bool,
    /// Inbound QoS 2 packet ids received and PUBREC'd but not yet released by PUBREL: a
    /// PUBLISH with one of these ids is not delivered again [MQTT-4.3.3-9].
    pub awaiting_pubrel: PubrelIds,
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
    ///
    /// O(1) while the window holds only ids handed out here in sending order: they then are
    /// consecutive, from the oldest entry (the front) up to `last_pkid`, so the next one is
    /// free unless it wraps round onto the front. Otherwise (`pkids_unordered`, or that wrap)
    /// it checks the window, which used to cost ~4 % of a drain's CPU at every send.
    pub fn next_pkid(&mut self) -> Option<u16> {
        if self.inflight.is_empty() {
            self.pkids_unordered = false;
        }
        let next = self.last_pkid.checked_add(1).unwrap_or(1);
        if !self.pkids_unordered && self.inflight.front().is_none_or(|f| f.pkid() != next) {
            self.last_pkid = next;
            return Some(next);
        }
        // From here on the ids in flight are no longer consecutive.
        self.pkids_unordered = true;
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
    /// An administrator disconnects the client (admin API): send DISCONNECT 0x98
    /// Administrative action (5.0; 3.1.1 just closes), park the session in the handle like a
    /// takeover (the sender holds `connect_lock`), then answer.
    Kick(oneshot::Sender<()>),
}

/// What the admin API shows about a connected client, recorded once when it connects.
/// Boxed in [`Owner`]: only online sessions carry it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The listener it came through (index in `listeners`), or [`ConnectionInfo::BRIDGE`].
    pub listener: usize,
    /// MQTT protocol level (3: 3.1, 4: 3.1.1, 5: 5.0).
    pub protocol: u8,
    /// The negotiated Keep Alive, seconds.
    pub keep_alive: u16,
    /// The username it connected with (after TLS identity mapping).
    pub username: Option<std::sync::Arc<str>>,
    /// When it connected, milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
}

impl ConnectionInfo {
    /// The `listener` of a bridge's in-process connection to its local session.
    pub const BRIDGE: usize = usize::MAX;
}

/// The connection currently owning a session.
#[derive(Debug)]
pub struct Owner {
    /// Unique per connection, so a late-finishing old connection cannot clobber a new owner.
    pub connection: u64,
    /// The one [`Control`] message a connection can get.
    pub control: ControlSlot,
    /// Who is connected (for the admin API); set right after the session is opened.
    pub info: Option<Box<ConnectionInfo>>,
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
    /// The parked session's next deadline (expiry or delayed will) in the broker's
    /// [`Deadlines`], removed when the session is taken again.
    pub timer: Option<DeadlineKey>,
}

/// Wakes the one task that owns a session: `notify_one` leaves a permit that the next
/// [`Wakeup::poll_notified`] takes (as `tokio::sync::Notify::notify_one` does for one waiter).
///
/// Not a `tokio::sync::Notify`: waiting on a `Notify` needs a `Notified` future (64 bytes, an
/// intrusive list node) kept in the waiting task's future for as long as it waits, which every
/// idle connection paid for. Here the waiting task only registers its waker (polled directly by
/// the connection loop, nothing stored in its future); a session has a single owner at a time,
/// so one waker slot is enough.
#[derive(Debug, Default)]
pub struct Wakeup {
    /// Set by `notify_one`, taken by the owner.
    permit: AtomicBool,
    /// The owner's waker, registered while it waits.
    waker: AtomicWaker,
}

impl Wakeup {
    /// Wakes the owner, or leaves a permit for its next wait.
    pub fn notify_one(&self) {
        self.permit.store(true, Ordering::Release);
        // Pairs with the fence in poll_notified: either the owner sees the permit, or this
        // sees its registered waker (a wake-up is never lost between the two).
        std::sync::atomic::fence(Ordering::SeqCst);
        self.waker.wake();
    }

    /// Ready (taking the permit) if `notify_one` was called since the last time; else the
    /// task of `cx` is woken by the next `notify_one`.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.permit.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.permit.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Forgets the registered waker: the owner calls this once it is running again, so that
    /// a `notify_one` while it is busy leaves only the permit (seen by its next poll) instead
    /// of scheduling the running task once more (a `Notified` future dropped at the end of a
    /// `select!` behaved the same way).
    pub fn unregister(&self) {
        drop(self.waker.take());
    }

    /// Waits for `notify_one` (see [`Wakeup::poll_notified`]).
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await
    }
}

/// The shared half of a session (see the module docs).
#[derive(Debug)]
pub struct SessionHandle {
    /// The client identifier this session belongs to.
    pub client_id: ClientId,
    /// Deliveries waiting for the owning connection (or for the client to come back).
    outbox: Mutex<Outbox>,
    /// Wakes the owning connection task after a push.
    pub notify: Wakeup,
    /// Ownership and the parked session. Locked briefly; never across an await.
    ownership: Mutex<Ownership>,
    /// Serialises CONNECTs and disconnects for this client id, so two connections racing for one
    /// session take it over one after the other. Held across the takeover await (async mutex).
    pub connect_lock: tokio::sync::Mutex<()>,
    /// Deliveries this session lost to a full queue or to shaping, by reason (an admin API
    /// can read them): allocated by the first drop, most sessions never have one.
    drops: OnceLock<Box<DropCounts>>,
    /// Set while a `[[shaping]]` rule applies to the session: a QoS 0 message its full queue
    /// refuses was over the rate (`dropped_qos0_rate`).
    pub shaped: AtomicBool,
    /// QoS 1/2 messages in flight to the client, published by the owning connection task so
    /// shared-subscription selection can see who has room without touching the session.
    /// (At most 65,535: packet identifiers are 16 bits.)
    pub inflight: AtomicU32,
    /// The connection's send window (min(client Receive Maximum, `mqtt.max_inflight`)).
    pub window: AtomicU32,
    /// Whether the session outlives its connection (Session Expiry > 0): its QoS 1/2 queue is
    /// then written to the store.
    pub persistent: AtomicBool,
    /// The next delivery number for the store's log (see `Store::message_queued`).
    pub next_seq: AtomicU64,
    /// Set while a [`Control`] waits in the owner's slot: the owner looks at the slot (under
    /// the ownership lock) only then, not at every wake-up.
    control_pending: AtomicBool,
    /// When the owning connection's Keep Alive runs out (milliseconds on [`KeepAlives`]'
    /// clock; 0: not watched), moved forward by each packet it reads.
    pub keepalive_due: AtomicU64,
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
            notify: Wakeup::default(),
            ownership: Mutex::new(Ownership::default()),
            connect_lock: tokio::sync::Mutex::new(()),
            drops: OnceLock::new(),
            shaped: AtomicBool::new(false),
            inflight: AtomicU32::new(0),
            window: AtomicU32::new(0),
            persistent: AtomicBool::new(false),
            next_seq: AtomicU64::new(1),
            keepalive_due: AtomicU64::new(0),
            control_pending: AtomicBool::new(false),
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

    /// Asks the connection owning this session to hand it over (`make` builds the request
    /// around the reply channel) and wakes it. Callers hold `connect_lock`.
    pub fn ask_owner(&self, make: impl FnOnce(oneshot::Sender<()>) -> Control) -> Asked {
        let rx = {
            let mut own = self.ownership();
            let Some(owner) = own.owner.as_mut() else {
                return Asked::NoOwner;
            };
            match owner.control {
                ControlSlot::Listening => {}
                ControlSlot::Gone => return Asked::Gone,
                ControlSlot::Requested(_) | ControlSlot::Taken => return Asked::NoOwner,
            }
            let (tx, rx) = oneshot::channel();
            owner.control = ControlSlot::Requested(make(tx));
            self.control_pending.store(true, Ordering::Release);
            rx
        };
        self.notify.notify_one();
        Asked::Sent(rx)
    }

    /// Whether a request waits in the owner's slot (a relaxed look, for the owner's loop).
    pub fn control_waiting(&self) -> bool {
        self.control_pending.load(Ordering::Relaxed)
    }

    /// The request waiting for `connection`, if it owns the session and one was made.
    pub fn take_control(&self, connection: u64) -> Option<Control> {
        if !self.control_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut own = self.ownership();
        let owner = own.owner.as_mut().filter(|o| o.connection == connection)?;
        match std::mem::replace(&mut owner.control, ControlSlot::Taken) {
            ControlSlot::Requested(c) => {
                self.control_pending.store(false, Ordering::Release);
                Some(c)
            }
            other => {
                // Nothing waits in the slot (a request left by an owner that died before
                // taking it was dropped with it): the flag must not stay set, or every poll
                // of this connection would see a control event that is not there.
                owner.control = other;
                self.control_pending.store(false, Ordering::Release);
                None
            }
        }
    }

    /// Waits for a request to `connection` (see [`SessionHandle::ask_owner`]). Takes the
    /// session's wake-ups meanwhile: for a connection that is closing.
    pub async fn control_requested(&self, connection: u64) -> Control {
        std::future::poll_fn(|cx| loop {
            if let Some(c) = self.take_control(connection) {
                return Poll::Ready(c);
            }
            if self.notify.poll_notified(cx).is_pending() {
                return Poll::Pending;
            }
        })
        .await
    }

    /// Publishes the number of messages in flight to the client (`inflight`).
    pub fn set_inflight(&self, n: usize) {
        self.inflight.store(saturate_u32(n), Ordering::Relaxed);
    }

    /// Deliveries this session lost, by reason (all zero until the first).
    pub fn drops(&self) -> &DropCounts {
        static NONE: DropCounts = DropCounts {
            queue_full_newest: AtomicU64::new(0),
            queue_full_oldest: AtomicU64::new(0),
            qos0_rate: AtomicU64::new(0),
            total: AtomicU64::new(0),
        };
        self.drops.get().map_or(&NONE, |d| d)
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

    /// Queues a delivery and wakes the owner; never blocks on the subscriber. Under
    /// `drop_oldest`, the deliveries evicted to make room come back in `evicted`; under
    /// `disconnect_slow_consumer`, the owner is woken when the queue first fills (to time it).
    pub fn deliver(&self, d: Delivery, evicted: &mut Evicted) -> Result<(), Dropped> {
        let qos0 = d.qos == QoS::AtMostOnce;
        let (r, was_empty, newly_full) = {
            let mut outbox = self.outbox();
            let was_empty = outbox.is_empty();
            let r = outbox.push_evicting(d, evicted);
            let newly_full = r == Err(Dropped::QueueFull)
                && outbox.policy() == crate::config::QueueFullPolicy::DisconnectSlowConsumer
                && outbox.mark_full(Instant::now());
            (r, was_empty, newly_full)
        };
        if evicted.count > 0 {
            self.count_drop(DropReason::QueueFullOldest, evicted.count as u64);
        }
        match r {
            // Woken once per batch, not once per message: a task whose outbox already held
            // messages has been woken for them and drains until it is empty (or comes back to
            // it when its window or write buffer frees up), so only the first message of a
            // burst needs to wake it.
            Ok(()) if was_empty => self.notify.notify_one(),
            Ok(()) => {}
            Err(Dropped::QueueFull) => {
                let reason = if qos0 && self.shaped.load(Ordering::Relaxed) {
                    DropReason::Qos0Rate
                } else {
                    DropReason::QueueFullNewest
                };
                self.count_drop(reason, 1);
                if newly_full {
                    self.notify.notify_one();
                }
            }
            Err(Dropped::OfflineQos0) => {}
        }
        r
    }

    /// Counts `n` drops for `reason`; logs the first of this session and every 1000th after
    /// it, so a flood cannot flood the log.
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        let drops = self.drops.get_or_init(Box::default);
        reason.counter(drops).fetch_add(n, Ordering::Relaxed);
        let before = drops.total.fetch_add(n, Ordering::Relaxed);
        if before % 1000 == 0 || before / 1000 != (before + n) / 1000 {
            let what = match reason {
                DropReason::QueueFullNewest => {
                    "session queue full (mqtt.max_queued_messages / mqtt.max_queued_bytes): message dropped"
                }
                DropReason::QueueFullOldest => {
                    "session queue full (mqtt.max_queued_messages / mqtt.max_queued_bytes): oldest queued message dropped"
                }
                DropReason::Qos0Rate => {
                    "session queue full of QoS 0 messages over the shaped rate: message dropped"
                }
            };
            tracing::warn!(
                client_id = %self.client_id,
                reason = %reason.as_str(),
                dropped = before + n,
                "{what}"
            );
        }
    }
}

/// `n` as a u32, saturating (the window and inflight counts never come near it).
pub fn saturate_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Why a message did not reach a session (counted per session in [`DropCounts`], and per
/// reason for the broker in `Stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full and the new message was refused (`drop_newest`,
    /// `disconnect_slow_consumer`, `reject` when the check came too late).
    QueueFullNewest,
    /// A queued message was evicted for a newer one (`drop_oldest`).
    QueueFullOldest,
    /// A QoS 0 message over the session's shaped rate, past the queue's memory bound.
    Qos0Rate,
}

impl DropReason {
    /// The name in logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFullNewest => "queue_full_newest",
            DropReason::QueueFullOldest => "queue_full_oldest",
            DropReason::Qos0Rate => "qos0_rate",
        }
    }

    fn counter(self, c: &DropCounts) -> &AtomicU64 {
        match self {
            DropReason::QueueFullNewest => &c.queue_full_newest,
            DropReason::QueueFullOldest => &c.queue_full_oldest,
            DropReason::Qos0Rate => &c.qos0_rate,
        }
    }
}

/// One session's drops by reason (relaxed atomics: statistics).
#[derive(Debug, Default)]
pub struct DropCounts {
    pub queue_full_newest: AtomicU64,
    pub queue_full_oldest: AtomicU64,
    pub qos0_rate: AtomicU64,
    /// All of them.
    pub total: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_codec::TopicName;

    /// A takeover request left in the slot by an owner that died before taking it (its task
    /// panicked) goes with it: the next owner is not told of a request that is not there (it
    /// used to see `control_waiting` for ever and spin on it).
    #[test]
    fn a_request_left_by_a_dead_owner_does_not_reach_the_next_one() {
        let handle = Arc::new(SessionHandle::new("c".into(), 10, 1 << 20));
        let owner = |connection| Owner {
            connection,
            control: ControlSlot::Listening,
            info: None,
        };
        handle.ownership().owner = Some(owner(1));
        let guard = ControlGuard {
            handle: handle.clone(),
            connection: 1,
        };
        let Asked::Sent(rx) = handle.ask_owner(Control::TakeOver) else {
            panic!("the owner listens");
        };
        assert!(handle.control_waiting());
        drop(guard); // connection 1's task ends without taking the request
        drop(rx);
        assert!(!handle.control_waiting(), "the request went with its owner");
        handle.ownership().owner = Some(owner(2));
        assert!(handle.take_control(2).is_none());
        assert!(!handle.control_waiting());
        // A real request to the new owner still arrives.
        let Asked::Sent(_rx) = handle.ask_owner(Control::TakeOver) else {
            panic!("the new owner listens");
        };
        assert!(matches!(handle.take_control(2), Some(Control::TakeOver(_))));
        assert!(!handle.control_waiting());
    }

    pub(super) fn delivery(qos: QoS, payload: &'static [u8]) -> Delivery {
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
        let loaded: Loaded = std::iter::once((ds[2].msg.id, Some(ds[2].msg.clone()))).collect();
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

    /// A read-back is put back by position (`warm_in_order`): the messages come in the order
    /// `cold_ids` gave, a message the store could not give back is dropped and reported, and
    /// the warming stops where the queue no longer matches the ids (what follows stays on disk
    /// and is read back again).
    #[test]
    fn a_read_back_is_warmed_by_position_and_stops_at_a_mismatch() {
        let one = delivery(QoS::AtLeastOnce, b"x").msg.cost();
        let budget = QueueBudget::new(1 << 20);
        let mut o = Outbox::new(100, 1 << 20)
            .with_budget(budget.clone())
            .with_window(one * 8);
        o.set_online(false);
        let ds: Vec<Delivery> = (0..6).map(|_| delivery(QoS::AtLeastOnce, b"x")).collect();
        for d in &ds {
            o.push(logged(d.clone())).unwrap();
        }
        o.set_online(true);
        assert_eq!(o.cold_len(), 6);
        let ids = o.cold_ids();
        let want: Vec<u64> = ds.iter().map(|d| d.msg.id).collect();
        assert_eq!(ids, want);
        // 0 and 1 come back, 2 could not be read, 3 and 4 are answered for ids that are not
        // next in the queue (as if the queue had changed meanwhile): warming stops there.
        let mut asked = ids[..3].to_vec();
        asked.extend([ids[4], ids[3]]);
        let messages = vec![
            Some(ds[0].msg.clone()),
            Some(ds[1].msg.clone()),
            None,
            Some(ds[4].msg.clone()),
            Some(ds[3].msg.clone()),
        ];
        assert_eq!(o.warm_in_order(&asked, messages), vec![ds[2].msg.id]);
        assert_eq!((o.len(), o.cold_len()), (5, 3));
        assert_eq!(o.pop().unwrap(), logged(ds[0].clone()));
        assert_eq!(o.pop().unwrap(), logged(ds[1].clone()));
        assert!(o.pop().is_none() && o.front_is_cold());
        assert_eq!(o.cold_ids(), ids[3..].to_vec());
        let rest: Vec<_> = ds[3..].iter().map(|d| Some(d.msg.clone())).collect();
        assert!(o.warm_in_order(&ids[3..], rest).is_empty());
        for d in &ds[3..] {
            assert_eq!(o.pop().unwrap(), logged(d.clone()));
        }
        assert!(o.is_empty());
        assert_eq!((o.bytes(), o.memory_bytes(), budget.used()), (0, 0, 0));
    }

    fn with_priority(mut d: Delivery, priority: u8) -> Delivery {
        Arc::make_mut(&mut d.msg).priority = priority;
        d
    }

    /// `mqtt.priorities`: higher priorities leave first, arrival order within one priority,
    /// also for deliveries waiting on disk (an offline session's queue, read back in lanes).
    #[test]
    fn queued_deliveries_leave_by_priority_then_arrival_also_from_disk() {
        let one = delivery(QoS::AtLeastOnce, b"x").msg.cost();
        let budget = QueueBudget::new(1 << 20);
        let mut o = Outbox::new(100, 1 << 20)
            .with_budget(budget.clone())
            .with_window(one * 2);
        // Offline: everything logged waits on disk.
        let prios = [0u8, 10, 0, 5, 10, 0];
        let ds: Vec<Delivery> = prios
            .iter()
            .map(|p| logged(with_priority(delivery(QoS::AtLeastOnce, b"x"), *p)))
            .collect();
        for d in &ds {
            o.push(d.clone()).unwrap();
        }
        assert_eq!(o.cold_len(), 6);
        o.set_online(true);
        let expected = [1usize, 4, 3, 0, 2, 5];
        let mut sent = Vec::new();
        while !o.is_empty() {
            match o.pop() {
                Some(d) => {
                    // A delivery taken and put back keeps its place in its lane.
                    if sent.len() == 2 {
                        o.push_front(d.clone());
                        assert_eq!(o.pop().as_ref(), Some(&d));
                    }
                    sent.push(ds.iter().position(|x| x.msg.id == d.msg.id).unwrap());
                }
                None => {
                    assert!(o.front_is_cold());
                    let loaded: Loaded = o
                        .cold_ids()
                        .into_iter()
                        .map(|id| {
                            (
                                id,
                                ds.iter().find(|d| d.msg.id == id).map(|d| d.msg.clone()),
                            )
                        })
                        .collect();
                    assert!(!loaded.is_empty());
                    assert!(o.warm(&loaded).is_empty());
                }
            }
        }
        assert_eq!(sent, expected);
        assert_eq!((o.bytes(), o.memory_bytes(), budget.used()), (0, 0, 0));
        // In memory too, and a later high-priority message overtakes what waits.
        let mut o = Outbox::new(100, 1 << 20);
        o.set_online(true);
        o.push(with_priority(delivery(QoS::AtLeastOnce, b"a"), 0))
            .unwrap();
        o.push(with_priority(delivery(QoS::AtLeastOnce, b"b"), 0))
            .unwrap();
        o.push(with_priority(delivery(QoS::AtLeastOnce, b"c"), 3))
            .unwrap();
        let order: Vec<_> = std::iter::from_fn(|| o.pop())
            .map(|d| d.msg.payload.clone())
            .collect();
        assert_eq!(order, [&b"c"[..], b"a", b"b"]);
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
    fn the_memory_limit_bounds_what_cannot_wait_on_disk() {
        // Disk-sized queue bounds (mqtt.max_queued_bytes) must not mean as much memory:
        // past mqtt.max_queued_memory_bytes a delivery the log has waits on disk, any other is
        // refused.
        let one = delivery(QoS::AtLeastOnce, b"x").msg.cost();
        let mut o = Outbox::new(100, 1 << 30)
            .with_window(1 << 20)
            .with_memory_limit(one * 2);
        o.set_online(true);
        o.push(delivery(QoS::AtLeastOnce, b"a")).unwrap();
        o.push(delivery(QoS::AtMostOnce, b"b")).unwrap();
        assert_eq!(
            o.push(delivery(QoS::AtLeastOnce, b"c")),
            Err(Dropped::QueueFull),
            "not logged, memory full"
        );
        o.push(logged(delivery(QoS::AtLeastOnce, b"d"))).unwrap();
        assert_eq!((o.len(), o.cold_len(), o.memory_bytes()), (3, 1, one * 2));
    }

    /// `drop_oldest`: a full queue evicts its oldest (lowest priority first) to keep the
    /// newest, and reports what the store must forget.
    #[test]
    fn drop_oldest_evicts_the_oldest_to_keep_the_newest() {
        let mut o = Outbox::new(3, 1 << 20);
        o.set_online(true);
        o.set_policy(crate::config::QueueFullPolicy::DropOldest);
        let ds: Vec<Delivery> = (0..5)
            .map(|_| logged(delivery(QoS::AtLeastOnce, b"x")))
            .collect();
        let mut evicted = Evicted::default();
        for d in &ds {
            o.push_evicting(d.clone(), &mut evicted).unwrap();
        }
        assert_eq!(evicted.count, 2);
        assert_eq!(evicted.seqs, vec![ds[0].seq, ds[1].seq]);
        let kept: Vec<u64> = std::iter::from_fn(|| o.pop()).map(|d| d.seq).collect();
        assert_eq!(kept, ds[2..].iter().map(|d| d.seq).collect::<Vec<_>>());
        // With priorities, the lowest priority's oldest goes first.
        let mut o = Outbox::new(2, 1 << 20);
        o.set_online(true);
        o.set_policy(crate::config::QueueFullPolicy::DropOldest);
        let high = with_priority(delivery(QoS::AtLeastOnce, b"h"), 9);
        let low = with_priority(delivery(QoS::AtLeastOnce, b"l"), 0);
        let mut evicted = Evicted::default();
        o.push_evicting(high.clone(), &mut evicted).unwrap();
        o.push_evicting(low, &mut evicted).unwrap();
        o.push_evicting(delivery(QoS::AtLeastOnce, b"n"), &mut evicted)
            .unwrap();
        assert_eq!(evicted.count, 1);
        assert_eq!(o.pop().unwrap(), high);
        // Under drop_newest the new one is refused and nothing is evicted.
        let mut o = Outbox::new(1, 1 << 20);
        o.set_online(true);
        let mut evicted = Evicted::default();
        o.push_evicting(delivery(QoS::AtLeastOnce, b"a"), &mut evicted)
            .unwrap();
        assert_eq!(
            o.push_evicting(delivery(QoS::AtLeastOnce, b"b"), &mut evicted),
            Err(Dropped::QueueFull)
        );
        assert_eq!(evicted.count, 0);
    }

    /// `disconnect_slow_consumer`: the handle marks the queue full at the first refusal and
    /// counts the drop; the mark goes once the queue is under three quarters of its bounds.
    #[test]
    fn a_full_queue_is_marked_until_it_drains_below_low_water() {
        let h = SessionHandle::new("c".into(), 4, 1 << 20);
        h.outbox().set_online(true);
        h.outbox()
            .set_policy(crate::config::QueueFullPolicy::DisconnectSlowConsumer);
        let mut evicted = Evicted::default();
        for _ in 0..4 {
            h.deliver(delivery(QoS::AtLeastOnce, b"x"), &mut evicted)
                .unwrap();
        }
        assert!(h.outbox().full_since().is_none());
        assert_eq!(
            h.deliver(delivery(QoS::AtLeastOnce, b"x"), &mut evicted),
            Err(Dropped::QueueFull)
        );
        let since = h.outbox().full_since().expect("marked");
        h.deliver(delivery(QoS::AtLeastOnce, b"x"), &mut evicted)
            .unwrap_err();
        assert_eq!(h.outbox().full_since(), Some(since), "kept from the first");
        assert_eq!(h.drops().queue_full_newest.load(Ordering::Relaxed), 2);
        let mut o = h.outbox();
        o.pop();
        o.unmark_full_below_low_water();
        assert!(o.full_since().is_some(), "3 of 4: not below three quarters");
        o.pop();
        o.unmark_full_below_low_water();
        assert!(o.full_since().is_none());
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

    /// The QoS 2 ids awaiting PUBREL: a set only while there are some; equality ignores
    /// whether an empty set was ever allocated.
    #[test]
    fn pubrel_ids_exist_only_while_held() {
        let mut ids = PubrelIds::default();
        assert!(!ids.contains(&7) && !ids.remove(&7) && ids.is_empty());
        assert!(ids.insert(7) && !ids.insert(7));
        assert!(ids.insert(9));
        assert_eq!(ids.len(), 2);
        assert_eq!(ids, PubrelIds::from(HashSet::from([9, 7])));
        assert!(ids.remove(&7) && ids.remove(&9) && !ids.remove(&9));
        assert!(ids.0.is_none(), "freed with its last id");
        assert_eq!(ids, PubrelIds::from(HashSet::new()));
    }

    /// The O(1) path: ids handed out in order, acknowledged in any order, and a window that
    /// wraps round onto its oldest entry, which is then skipped [MQTT-2.2.1-2].
    #[test]
    fn packet_ids_in_sending_order_never_reuse_one_in_flight() {
        let mut s = Session {
            last_pkid: u16::MAX - 2,
            ..Default::default()
        };
        let take = |s: &mut Session| {
            let id = s.next_pkid().unwrap();
            assert!(s.inflight_position(id).is_none(), "{id} is in flight");
            s.inflight.push_back(Inflight::Release { pkid: id });
            id
        };
        assert_eq!(
            [take(&mut s), take(&mut s), take(&mut s)],
            [65534, 65535, 1]
        );
        s.inflight.remove(1); // 65535 acknowledged out of order
        assert_eq!(take(&mut s), 2);
        // Fill the rest of the id space: 65534 (the oldest) is still in flight.
        while s.inflight.len() < usize::from(u16::MAX) - 1 {
            let id = s.next_pkid().unwrap();
            s.inflight.push_back(Inflight::Release { pkid: id });
        }
        assert_eq!(s.last_pkid, 65533);
        assert_eq!(
            take(&mut s),
            65535,
            "skips 65534, the oldest, still in flight"
        );
        let mut ids: Vec<u16> = s.inflight.iter().map(Inflight::pkid).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), s.inflight.len(), "no id handed out twice");
        s.inflight.clear();
        assert_eq!(s.next_pkid(), Some(1), "an empty window is in order again");
        assert!(!s.pkids_unordered);
    }

    /// Ids the session did not hand out itself (restored from the store) are checked one by
    /// one until the window has been empty.
    #[test]
    fn restored_packet_ids_are_checked_until_the_window_empties() {
        let mut s = Session::default();
        s.inflight.push_back(Inflight::Release { pkid: 7 });
        s.inflight.push_back(Inflight::Release { pkid: 1 });
        s.last_pkid = 0;
        s.pkids_unordered = true;
        assert_eq!(s.next_pkid(), Some(2), "1 is in flight behind 7");
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
#[cfg(test)]
mod size_tests {
    /// Every session pays for its handle (in an `Arc`: plus 16 bytes, in glibc's 16-byte
    /// classes); keep it small. 376 bytes before the outbox's queue was boxed on first push
    /// and freed once drained (136 -> 72 bytes).
    #[test]
    fn session_handle_stays_small() {
        let outbox = std::mem::size_of::<super::Outbox>();
        assert!(outbox <= 72, "Outbox grew to {outbox} bytes");
        let handle = std::mem::size_of::<super::SessionHandle>();
        assert!(handle <= 312, "SessionHandle grew to {handle} bytes");
    }

    /// An outbox that never had a delivery holds no queue, and one that was drained gives it
    /// back; what it reads meanwhile is an empty queue.
    #[test]
    fn the_queue_exists_only_while_it_holds_something() {
        use super::tests_support::delivery;
        let mut o = super::Outbox::new(10, 1 << 20);
        o.set_online(true);
        assert!(!o.is_allocated());
        assert!(o.is_empty() && o.pop().is_none() && o.bytes() == 0);
        o.release_if_drained();
        o.push(delivery()).unwrap();
        assert!(o.is_allocated() && o.len() == 1);
        o.release_if_drained();
        assert!(o.is_allocated(), "not drained yet");
        assert!(o.pop().is_some());
        o.release_if_drained();
        assert!(!o.is_allocated());
        // A full mark outlives the drain (disconnect_slow_consumer times it).
        o.mark_full(std::time::Instant::now());
        o.release_if_drained();
        assert!(o.full_since().is_some());
        o.unmark_full();
        o.release_if_drained();
        assert!(!o.is_allocated());
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    /// A QoS 1 delivery of `x` on topic `t`.
    pub fn delivery() -> Delivery {
        super::tests::delivery(QoS::AtLeastOnce, b"x")
    }
}
