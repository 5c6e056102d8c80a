//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 4.8.2, also offered to 3.1.1
//! clients): each matching message goes to exactly one member of each group.
//!
//! Choosing the member happens in tiers, so a burst lands where there is room:
//! 0. while the group's queue holds messages, a new one goes behind them: handing it straight
//!    to a member with a free slot would overtake older messages of the same topic that member
//!    is about to pull, and a member must get a topic's messages in publish order (4.6,
//!    [MQTT-4.6.0-6]);
//! 1. members that are online and have a free slot in their send window (window less
//!    inflight less already queued): "members with no free inflight window are skipped";
//! 2. if none has room but one is online, the message waits in the group's own bounded queue
//!    ([`GroupQueue`]) and the first member whose window frees up takes it: a burst is spread
//!    by how fast each worker acknowledges, not committed in turns to slow ones. A member takes
//!    from the group queue only while its own queue is empty (what waits there was handed to it
//!    while the group queue was empty, so it is older), deciding under its queue's lock
//!    (`ClientState::drain_outbox`);
//! 3. if none is online, any member (a persistent session queues it while offline).
//!
//! Within the tier the group's strategy picks (`mqtt.shared_subscription_strategy`, per group
//! `mqtt.shared_group_strategies`), see [`SharedStrategy`].
//!
//! When a member's connection ends, the messages queued for it through the group and not yet
//! sent, and its unacknowledged QoS 1 messages, are handed to other members ("the Server SHOULD
//! send the Application Message to another Client", 4.8.2). QoS 2 messages already sent stay
//! with that member: the spec requires the server to complete their delivery to the same client
//! and never send them to another [MQTT-4.8.2-4], [MQTT-4.8.2-5].
//!
//! # A group's lifetime
//! A group exists while it has members: sessions subscribed to its `$share/{group}/{filter}`
//! (online or not). A member whose session goes on while its client is away keeps what was
//! handed to it. When a member's session ends and no other member is left, what it held (queued
//! or unacknowledged QoS 1) joins the group's queue, never dropped while the group exists. Once
//! the last member is gone (session ended, or unsubscribed), `mqtt.shared_group_orphan_policy`
//! decides for everything the group's queue then holds: `keep` (default) leaves it for a new
//! member for `mqtt.shared_group_orphan_expiry_seconds` (counted again from a restart), within
//! the queue's bounds; `drop` drops it at once. Dropped messages are counted
//! (`Counter::DroppedOrphaned`) and logged either way. Groups found without members at start-up
//! (their members' sessions did not survive the restart) are treated the same.

use crate::persist::Pending;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_codec::{QoS, TopicFilter};

use crate::config::QueueFullPolicy;
use crate::config::{OrphanPolicy, SharedStrategy};
use crate::locks::read;
use crate::message::ClientId;
use crate::routing::Router;
use crate::session::{
    ColdDelivery, Delivery, Dropped, Evicted, Loaded, Outbox, QueueBudget, SessionHandle,
};
use crate::stats::Counter;

/// Bound on remembered group states (cursor and sticky member, ~100 bytes each). The state is
/// only a hint for fairness, so when the bound is reached the table is simply cleared: a client
/// inventing group names cannot grow it without limit.
const MAX_GROUP_STATES: usize = 65_536;

/// Per-group selection state.
#[derive(Debug, Default)]
struct GroupState {
    /// Rotates through members (round robin, and tie-breaking for least_inflight).
    cursor: usize,
    /// The member the `sticky` strategy stays with while it has room.
    sticky: Option<ClientId>,
}

/// Selection state of every shared group, keyed by the full `$share/{group}/{filter}`.
#[derive(Debug, Default)]
pub struct SharedGroups {
    /// Locked once per message per group for a few instructions; never across an await.
    state: Mutex<HashMap<TopicFilter, GroupState>>,
    /// Group queues, shared with the members' connection tasks (which pull from them). An
    /// entry nobody else holds and that is empty is pruned when the table grows.
    queues: Mutex<HashMap<TopicFilter, Arc<GroupQueue>>>,
    /// Groups without members whose messages are kept until a deadline: the periodic sweep
    /// ([`Broker::expire_orphaned_groups`]) does nothing while this is 0.
    orphans: AtomicUsize,
}

/// Where a shared-subscription message should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Straight to this member's session queue.
    Member(usize),
    /// To the group queue: every online member's window is full.
    Group,
}

/// Messages of one shared subscription waiting for any member's window (tiers 0 and 2 above).
/// Bounded like a session queue (`mqtt.max_queued_messages` / `max_queued_bytes`); a full
/// queue drops and counts, never blocks the publisher.
///
/// Disk-backed like a session queue: with a store, every QoS 1/2 delivery is logged
/// (`Store::group_queued`) and only the first `persistence.queue_memory_bytes` of them are
/// kept in memory; the rest are ids read back from the log by whichever member has room when
/// the queue drains to them ([`GroupQueue::claim_load`]). A million waiting messages cost
/// bookkeeping only.
#[derive(Debug)]
pub struct GroupQueue {
    /// The full `$share/{group}/{filter}` this queue belongs to.
    pub key: TopicFilter,
    /// Deliveries in arrival order; members pull from the front. Short lock, never awaited.
    queue: Mutex<Outbox>,
    /// The next delivery number for the store's log (`Store::group_queued`).
    pub next_seq: AtomicU64,
    /// Set while a member reads the next deliveries back from the store, so the other members
    /// do not read the same ones.
    loading: AtomicBool,
    /// Who is in the group, and since when it has nobody. Locked briefly, on membership
    /// changes only; taken before `queue` when both are needed.
    membership: Mutex<Membership>,
}

/// The members of a group (see the module docs on a group's lifetime).
#[derive(Debug, Default)]
struct Membership {
    /// Sessions subscribed to the group, to wake when there is something to take.
    members: HashMap<ClientId, Arc<SessionHandle>>,
    /// Set while nobody is in the group and its messages are kept: when they are dropped.
    orphaned_until: Option<Instant>,
}

/// Why a group's waiting messages are dropped all at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Orphaned {
    /// `shared_group_orphan_policy = "drop"`, when the last member left.
    Dropped,
    /// `shared_group_orphan_expiry_seconds` passed with nobody in the group.
    Expired,
}

/// The bounds of a group queue: those of a session queue (`mqtt.max_queued_messages`,
/// `max_queued_bytes`, `max_queued_memory_bytes`) and the part of its logged messages kept in
/// memory (`persistence.queue_memory_bytes` with a store, else everything).
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub max_memory: usize,
    pub window: usize,
    /// The queue's overflow policy.
    pub policy: QueueFullPolicy,
}

/// A member's claim on reading a group queue's next deliveries back from the store
/// ([`GroupQueue::claim_load`]); given back when dropped, so a member that goes away while
/// reading leaves the job to the others.
#[derive(Debug)]
pub struct LoadClaim {
    pub queue: Arc<GroupQueue>,
}

impl Drop for LoadClaim {
    fn drop(&mut self) {
        self.queue.loading.store(false, Ordering::Release);
    }
}

impl GroupQueue {
    fn new(key: TopicFilter, bounds: QueueBounds, budget: &Arc<QueueBudget>) -> GroupQueue {
        let mut outbox = Outbox::new(bounds.max_messages, bounds.max_bytes)
            .with_budget(budget.clone())
            .with_window(bounds.window)
            .with_memory_limit(bounds.max_memory)
            .for_group(key.clone());
        outbox.set_policy(bounds.policy);
        // The group as a whole is "online" while it queues (QoS 0 is kept too).
        outbox.set_online(true);
        GroupQueue {
            key,
            queue: Mutex::new(outbox),
            next_seq: AtomicU64::new(1),
            loading: AtomicBool::new(false),
            membership: Mutex::new(Membership::default()),
        }
    }

    /// Wakes every member (there is something to take).
    pub fn notify_members(&self) {
        for h in self.membership().members.values() {
            h.notify.notify_one();
        }
    }

    /// Number of sessions in the group.
    pub fn member_count(&self) -> usize {
        self.membership().members.len()
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a delivery for whichever member frees a slot first (under the queue's overflow
    /// policy: `drop_oldest` evicts into `evicted`).
    pub fn push(&self, d: Delivery, evicted: &mut Evicted) -> Result<(), Dropped> {
        self.lock().push_evicting(d, evicted)
    }

    /// The queue's overflow policy.
    pub fn policy(&self) -> QueueFullPolicy {
        self.lock().policy()
    }

    /// Sets the queue's overflow policy (`mqtt.queue_full_policy`, or the group's shaping
    /// rule's `overflow`).
    pub fn set_policy(&self, policy: QueueFullPolicy) {
        self.lock().set_policy(policy)
    }

    /// Queues a delivery the store recovered at start-up, on disk only.
    pub fn push_cold(&self, c: ColdDelivery) {
        self.lock().push_cold(c)
    }

    /// Takes the oldest waiting delivery if it is in memory (None also when it is on disk
    /// only: see [`GroupQueue::claim_load`]).
    pub fn pop(&self) -> Option<Delivery> {
        self.lock().pop()
    }

    /// Pops the next delivery for a member and, for QoS 1/2, counts it in the member's
    /// `inflight` before the queue's lock is released: a publisher that finds this queue empty
    /// then also finds the member's window one fuller (see [`SessionHandle::headroom`]).
    pub fn pop_reserving(&self, inflight: &AtomicU32) -> Option<Delivery> {
        let mut queue = self.lock();
        let d = queue.pop()?;
        if d.qos != QoS::AtMostOnce {
            inflight.fetch_add(1, Ordering::Relaxed);
        }
        Some(d)
    }

    /// Whether the next deliveries should be read back from the store and nobody is at it.
    pub fn wants_load(&self) -> bool {
        !self.loading.load(Ordering::Acquire) && self.lock().wants_load()
    }

    /// The message ids to read back next, with the claim on doing it; None when nothing needs
    /// reading back or another member is already at it.
    pub fn claim_load(self: &Arc<Self>) -> Option<(Vec<u64>, LoadClaim)> {
        let outbox = self.lock();
        if !outbox.wants_load() || self.loading.swap(true, Ordering::AcqRel) {
            return None;
        }
        let claim = LoadClaim {
            queue: self.clone(),
        };
        Some((outbox.cold_ids(), claim))
    }

    /// Puts messages read back from the store into the queue (see [`Outbox::warm`]); returns
    /// the group delivery numbers of those the store could not give back (dropped).
    pub fn warm(&self, loaded: &Loaded) -> Vec<u64> {
        self.lock().warm(loaded)
    }

    /// [`Outbox::warm_in_order`] on the group's queue.
    pub fn warm_in_order(
        &self,
        ids: &[u64],
        messages: Vec<Option<Arc<crate::message::Message>>>,
    ) -> Vec<u64> {
        self.lock().warm_in_order(ids, messages)
    }

    /// Deliveries kept on disk only.
    pub fn cold_len(&self) -> usize {
        self.lock().cold_len()
    }

    /// Bytes of waiting messages held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.lock().memory_bytes()
    }

    /// Whether a message of `cost` bytes fits the queue's bounds now.
    pub fn has_room(&self, cost: usize) -> bool {
        self.lock().has_room(cost)
    }

    /// Number of waiting deliveries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the queue holds: (deliveries, bytes, bytes in memory, deliveries on disk only).
    pub fn figures(&self) -> (usize, usize, usize, usize) {
        let q = self.lock();
        (q.len(), q.bytes(), q.memory_bytes(), q.cold_len())
    }
}

/// One shared subscription group as the admin API shows it ([`Router::shared_groups`]).
#[derive(Debug, Clone)]
pub struct GroupView {
    /// `$share/{group}/{filter}`.
    pub key: TopicFilter,
    /// Its members' client ids, sorted.
    pub members: Vec<ClientId>,
    /// Messages waiting in the group's own queue (for any member's window).
    pub queued: usize,
    /// Of those, how many are on disk only.
    pub on_disk: usize,
    /// Bytes of waiting messages held in memory.
    pub memory_bytes: usize,
    /// How a member is picked.
    pub strategy: SharedStrategy,
    /// No members left; its messages are kept until `shared_group_orphan_expiry_seconds`.
    pub orphaned: bool,
}

/// One candidate member, as the selector sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub handle: &'a SessionHandle,
}

impl SharedGroups {
    /// The queue of shared subscription `group` (created on first use).
    pub fn queue_for(
        &self,
        group: &TopicFilter,
        bounds: QueueBounds,
        budget: &Arc<QueueBudget>,
    ) -> Arc<GroupQueue> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues.get(group) {
            return q.clone();
        }
        if queues.len() >= 1024 && queues.len().is_power_of_two() {
            // Members hold their group's queue (subscription entries), so a group pruned here
            // has none, and nothing waiting.
            queues.retain(|_, q| Arc::strong_count(q) > 1 || !q.is_empty());
        }
        let q = Arc::new(GroupQueue::new(group.clone(), bounds, budget));
        queues.insert(group.clone(), q.clone());
        q
    }

    /// Decides where a message on `topic` from `publisher` goes; None only when `members` is
    /// empty. `queued`: the group's queue holds messages (tier 0: the new one goes behind them).
    pub fn pick(
        &self,
        group: &TopicFilter,
        strategy: SharedStrategy,
        members: &[Candidate<'_>],
        publisher: &str,
        topic: &str,
        queued: bool,
    ) -> Option<Pick> {
        if members.is_empty() {
            return None;
        }
        if queued {
            return Some(Pick::Group);
        }
        // Headroom: window less inflight less queued; negative once a backlog builds up.
        let free: Vec<i64> = members.iter().map(|m| m.handle.headroom()).collect();
        let mut tier: Vec<usize> = (0..members.len()).filter(|&i| free[i] > 0).collect();
        if tier.is_empty() {
            if free.iter().any(|&f| f != i64::MIN) {
                // Someone is online but nobody has room: the first to free a slot takes it.
                return Some(Pick::Group);
            }
            tier = (0..members.len()).collect();
        }
        if tier.len() == 1 {
            return Some(Pick::Member(tier[0]));
        }
        let mut states = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if states.len() >= MAX_GROUP_STATES && !states.contains_key(group) {
            states.clear();
        }
        let st = states.entry(group.clone()).or_default();
        let n = tier.len();
        let chosen = match strategy {
            SharedStrategy::RoundRobin => {
                st.cursor = st.cursor.wrapping_add(1);
                tier[st.cursor % n]
            }
            SharedStrategy::Random => tier[rand::random_range(0..n)],
            SharedStrategy::HashClientId => tier[stable_hash(publisher) % n],
            SharedStrategy::HashTopic => tier[stable_hash(topic) % n],
            SharedStrategy::Sticky => {
                let current = st.sticky.as_ref().and_then(|id| {
                    tier.iter()
                        .copied()
                        .find(|&i| members[i].handle.client_id == *id)
                });
                match current {
                    Some(i) => i,
                    None => {
                        st.cursor = st.cursor.wrapping_add(1);
                        let i = tier[st.cursor % n];
                        st.sticky = Some(members[i].handle.client_id.clone());
                        i
                    }
                }
            }
            SharedStrategy::LeastInflight => {
                // Most headroom wins, also when every window is full (then: the shortest
                // backlog), so overflow queues behind the fastest consumers; equal ones take
                // turns.
                st.cursor = st.cursor.wrapping_add(1);
                let start = st.cursor % n;
                let mut best = tier[start];
                for k in 1..n {
                    let i = tier[(start + k) % n];
                    if free[i] > free[best] {
                        best = i;
                    }
                }
                best
            }
        };
        Some(Pick::Member(chosen))
    }
}

/// A hash that is the same in every run (SipHash with fixed keys), so hash strategies map a
/// key to the same member across restarts while membership is unchanged.
fn stable_hash(s: &str) -> usize {
    #[allow(deprecated)] // SipHasher's fixed keys are exactly what is wanted here.
    let mut h = std::hash::SipHasher::new();
    s.hash(&mut h);
    h.finish() as usize
}

impl Router {
    /// The overflow policy of group `key`'s queue: its shaping rule's `overflow`, else
    /// `mqtt.queue_full_policy`.
    pub(crate) fn group_policy(&self, key: &TopicFilter) -> QueueFullPolicy {
        key.shared()
            .and_then(|(group, _)| self.shaping.group_overflow(group))
            .unwrap_or(self.config.mqtt.queue_full_policy)
    }

    /// Applies the shaping rules' overflow policies to every group queue (after a reload).
    pub fn refresh_group_policies(&self) {
        for q in self.group_queues() {
            q.set_policy(self.group_policy(&q.key));
        }
    }

    /// The queue of shared subscription `key` (created on first use).
    pub(crate) fn group_queue(&self, key: &TopicFilter) -> Arc<GroupQueue> {
        // Without a store nothing is logged, so nothing can wait on disk only.
        let window = if self.store.is_enabled() {
            self.config.persistence.queue_memory_bytes
        } else {
            usize::MAX
        };
        self.shared_groups.queue_for(
            key,
            QueueBounds {
                max_messages: self.config.max_queued_messages(),
                max_bytes: self.config.max_queued_bytes(),
                max_memory: self.config.mqtt.max_queued_memory_bytes,
                window,
                policy: self.group_policy(key),
            },
            &self.queue_budget,
        )
    }

    /// Queueing `d` in its group's queue, so the first member with a free slot takes it, is two
    /// steps. This one: the group's queue, with a QoS 1/2 `d` logged for it (the message once:
    /// `message_logged`; numbered) whenever there is a store, whether or not the members are
    /// persistent: the publisher was told the message is safe, it waits here for the group
    /// (not for one session), and being in the log is what lets it wait on disk only. The log
    /// must have it before any member can take it ([`Broker::push_shared`]), or the member's
    /// records could come first.
    pub(crate) fn log_shared(
        &self,
        queue: &GroupQueue,
        d: &mut Delivery,
        message_logged: &mut bool,
    ) {
        if self.store.is_enabled() && d.qos != QoS::AtMostOnce {
            if !*message_logged {
                self.log_message(&d.msg);
                *message_logged = true;
            }
            d.seq = queue.next_seq.fetch_add(1, Ordering::Relaxed);
            self.store
                .group_queued(queue.key.clone(), d.seq, d.msg.id, d.qos, d.retain);
        }
    }

    /// The second step (see [`Broker::log_shared`]): queues `d`; returns whether it was queued
    /// (the caller then wakes the members).
    pub(crate) fn push_shared(&self, queue: &GroupQueue, d: Delivery) -> bool {
        let seq = d.seq;
        let mut evicted = Evicted::default();
        let r = queue.push(d, &mut evicted);
        if evicted.count > 0 {
            for seq in evicted.seqs {
                self.store.group_taken(queue.key.clone(), seq);
            }
            let n = evicted.count as u64;
            let before = self.stats.striped.get(Counter::DroppedQueueFullOldest);
            self.stats.add(Counter::DroppedQueueFullOldest, n);
            if before % 1000 == 0 || before / 1000 != (before + n) / 1000 {
                tracing::warn!(group = %queue.key, reason = "queue_full_oldest", "shared subscription queue full: oldest message dropped");
            }
        }
        if r.is_err() {
            if seq != 0 {
                self.store.group_taken(queue.key.clone(), seq);
            }
            let n = self.stats.striped.get(Counter::DroppedQueueFull);
            self.stats.add(Counter::DroppedQueueFull, 1);
            if n % 1000 == 0 {
                tracing::warn!(group = %queue.key, reason = "queue_full_newest", "shared subscription queue full (mqtt.max_queued_messages / max_queued_bytes): message dropped");
            }
            return false;
        }
        true
    }

    /// Adds `handle`'s session to the group of shared subscription `key` (on SUBSCRIBE, and for
    /// restored sessions) and returns the group's queue. A group that had nobody has somebody
    /// again: its kept messages are for this member, unless their time ran out (then they are
    /// dropped first, as the sweep would have).
    pub(crate) fn join_group(
        &self,
        key: &TopicFilter,
        handle: &Arc<SessionHandle>,
    ) -> Arc<GroupQueue> {
        let queue = self.group_queue(key);
        let mut m = queue.membership();
        if let Some(until) = m.orphaned_until.take() {
            self.shared_groups.orphans.fetch_sub(1, Ordering::Relaxed);
            if until <= Instant::now() {
                self.drop_group_messages(&queue, Orphaned::Expired);
            } else {
                tracing::info!(group = %key, client_id = %handle.client_id, waiting = queue.len(), "shared subscription group has a member again: it takes the messages kept for the group");
            }
        }
        m.members.insert(handle.client_id.clone(), handle.clone());
        drop(m);
        queue
    }

    /// `client`'s session leaves the group of `queue` (its session ended, or it unsubscribed).
    /// If nobody is left, `mqtt.shared_group_orphan_policy` decides for the group's messages.
    pub(crate) fn leave_group(&self, queue: &Arc<GroupQueue>, client: &ClientId) {
        let mut m = queue.membership();
        if m.members.remove(client).is_some() && m.members.is_empty() {
            self.orphan(queue, &mut m);
        }
    }

    /// At start-up: a recovered group none of the restored sessions belongs to (its members did
    /// not survive the restart) is without members from now on.
    pub(crate) fn orphan_if_memberless(&self, queue: &Arc<GroupQueue>) {
        let mut m = queue.membership();
        if m.members.is_empty() && m.orphaned_until.is_none() {
            self.orphan(queue, &mut m);
        }
    }

    /// The group of `queue` has just lost its last member: keep its messages for a new one (up
    /// to the expiry) or drop them, per `mqtt.shared_group_orphan_policy`.
    fn orphan(&self, queue: &GroupQueue, m: &mut Membership) {
        let cfg = &self.config.mqtt;
        let waiting = queue.len();
        if waiting == 0 {
            tracing::debug!(group = %queue.key, "shared subscription group has no members left");
            return;
        }
        match cfg.shared_group_orphan_policy {
            OrphanPolicy::Drop => {
                self.drop_group_messages(queue, Orphaned::Dropped);
            }
            OrphanPolicy::Keep => {
                let expiry = cfg.shared_group_orphan_expiry_seconds;
                m.orphaned_until = Some(Instant::now() + Duration::from_secs(u64::from(expiry)));
                self.shared_groups.orphans.fetch_add(1, Ordering::Relaxed);
                tracing::info!(group = %queue.key, kept = waiting, expiry_s = expiry, "shared subscription group has no members left: its messages are kept for a new member (mqtt.shared_group_orphan_policy = keep)");
            }
        }
    }

    /// Drops everything the group's queue holds (logged as gone), counted and logged.
    fn drop_group_messages(&self, queue: &GroupQueue, why: Orphaned) {
        let (n, seqs) = queue.lock().clear_logged();
        for seq in seqs {
            self.store.group_taken(queue.key.clone(), seq);
        }
        self.stats.add(Counter::DroppedOrphaned, n as u64);
        match why {
            Orphaned::Dropped => {
                tracing::warn!(group = %queue.key, dropped = n, "shared subscription group has no members left: its messages were dropped (mqtt.shared_group_orphan_policy = drop)");
            }
            Orphaned::Expired => {
                tracing::warn!(group = %queue.key, dropped = n, "shared subscription group without members expired: its messages were dropped (mqtt.shared_group_orphan_expiry_seconds)");
            }
        }
    }

    /// Every shared subscription group's queue (a copy of the table, for metrics).
    pub fn group_queues(&self) -> Vec<Arc<GroupQueue>> {
        self.shared_groups
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Drops the messages of groups that have been without members for longer than
    /// `mqtt.shared_group_orphan_expiry_seconds` (called every second by the server).
    pub fn expire_orphaned_groups(&self, now: Instant) {
        if self.shared_groups.orphans.load(Ordering::Relaxed) == 0 {
            return;
        }
        for q in self.group_queues() {
            let mut m = q.membership();
            if m.orphaned_until.is_some_and(|t| t <= now) {
                m.orphaned_until = None;
                self.shared_groups.orphans.fetch_sub(1, Ordering::Relaxed);
                self.drop_group_messages(&q, Orphaned::Expired);
            }
        }
    }

    /// Deliveries of a member whose session ended that no other member could take (none is
    /// left): they join their group's queue, logged for it before the member's log lets go of
    /// them (`release`), so they are never dropped while the group exists; what happens to the
    /// group's queue next is `mqtt.shared_group_orphan_policy`'s decision.
    pub(crate) fn queue_for_groups(&self, left: Vec<(Delivery, Option<Pending>)>) {
        for (mut d, release) in left {
            let Some(key) = d.shared.clone() else {
                if let Some(rec) = release {
                    self.store.log_pending(rec);
                }
                continue;
            };
            let queue = self.group_queue(&key);
            d.seq = 0;
            let mut logged = false;
            self.log_shared(&queue, &mut d, &mut logged);
            if let Some(rec) = release {
                self.store.log_pending(rec);
            }
            if self.push_shared(&queue, d) {
                queue.notify_members();
            }
        }
    }

    /// Every shared subscription group with members or waiting messages, for the admin API
    /// and the dashboard (locks each group briefly, one after the other).
    pub fn shared_groups(&self) -> Vec<GroupView> {
        let queues: Vec<Arc<GroupQueue>> = self
            .shared_groups
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<GroupView> = queues
            .into_iter()
            .filter_map(|q| {
                let (mut members, orphaned) = {
                    let m = q.membership();
                    let ids: Vec<ClientId> = m.members.keys().cloned().collect();
                    (ids, m.orphaned_until.is_some())
                };
                let (queued, on_disk, memory_bytes) = {
                    let o = q.lock();
                    (o.len(), o.cold_len(), o.memory_bytes())
                };
                if members.is_empty() && queued == 0 {
                    return None;
                }
                members.sort();
                let group = q.key.shared().map_or("", |(g, _)| g);
                Some(GroupView {
                    strategy: self.shared_strategy(group),
                    key: q.key.clone(),
                    members,
                    queued,
                    on_disk,
                    memory_bytes,
                    orphaned,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
        out
    }

    /// The strategy of a shared subscription `$share/{group}/...`.
    pub fn shared_strategy(&self, group: &str) -> SharedStrategy {
        let m = &self.config.mqtt;
        m.shared_group_strategies
            .get(group)
            .copied()
            .unwrap_or(m.shared_subscription_strategy)
    }

    /// Hands deliveries of a departed group member to other members of the same shared
    /// subscription. Each comes with the record that removes it from the departed member's log
    /// (`release`), appended once the new member's queue entry is in the log. Returns the ones
    /// no other member could take (none subscribed), release not written.
    pub fn redistribute(
        &self,
        from: &ClientId,
        deliveries: Vec<(Delivery, Option<Pending>)>,
    ) -> Vec<(Delivery, Option<Pending>)> {
        let mut left = Vec::new();
        for (mut d, release) in deliveries {
            let Some(key) = d.shared.clone() else {
                left.push((d, release));
                continue;
            };
            let mut handles: Vec<Arc<SessionHandle>> = Vec::new();
            read(&self.subscriptions).for_each_match(d.msg.topic.as_str(), |_, client, entry| {
                if client != from && entry.shared.as_ref().is_some_and(|g| g.key == key) {
                    handles.push(entry.handle.clone());
                }
            });
            handles.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
            let members: Vec<Candidate<'_>> =
                handles.iter().map(|h| Candidate { handle: h }).collect();
            let group = key.shared().map_or("", |(g, _)| g);
            let strategy = self.shared_strategy(group);
            let queue = self.group_queue(&key);
            let pick = self.shared_groups.pick(
                &key,
                strategy,
                &members,
                &d.msg.origin,
                d.msg.topic.as_str(),
                !queue.is_empty(),
            );
            if pick.is_none() {
                left.push((d, release));
                continue;
            }
            // Its number belonged to the departed member's log.
            d.seq = 0;
            let mut logged = false;
            match pick {
                // A fresh delivery for the new member: its own packet id, DUP 0.
                Some(Pick::Member(i)) => {
                    self.log_enqueue(&handles[i], &mut d, &mut logged);
                    if let Some(rec) = release {
                        self.store.log_pending(rec);
                    }
                    self.deliver_to(&handles[i], d);
                }
                Some(Pick::Group) => {
                    self.log_shared(&queue, &mut d, &mut logged);
                    if let Some(rec) = release {
                        self.store.log_pending(rec);
                    }
                    if self.push_shared(&queue, d) {
                        for h in &handles {
                            h.notify.notify_one();
                        }
                    }
                }
                None => {}
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::session::COLD_ENTRY_COST;
    use bytes::Bytes;
    use sluice_codec::TopicName;
    use std::time::Instant;

    fn message(n: u8) -> Arc<Message> {
        Arc::new(Message::new(
            TopicName::try_from("jobs/x").unwrap(),
            Bytes::from(vec![n; 100]),
            QoS::AtLeastOnce,
            false,
            Default::default(),
            "p".into(),
            Instant::now(),
        ))
    }

    fn bounds(window: usize) -> QueueBounds {
        QueueBounds {
            max_messages: 100,
            max_bytes: 1 << 20,
            max_memory: 1 << 20,
            window,
            policy: QueueFullPolicy::DropNewest,
        }
    }

    /// A delivery as the router queues it for the group once the store has logged it.
    fn logged(key: &TopicFilter, msg: &Arc<Message>, seq: u64) -> Delivery {
        Delivery {
            msg: msg.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: Some(key.clone()),
            seq,
        }
    }

    #[test]
    fn a_group_queue_keeps_logged_messages_past_its_window_on_disk() {
        let key = TopicFilter::try_from("$share/g/jobs/#").unwrap();
        let budget = QueueBudget::new(1 << 30);
        let msgs: Vec<Arc<Message>> = (0..10).map(message).collect();
        let window = msgs[0].cost() * 2;
        let q = Arc::new(GroupQueue::new(key.clone(), bounds(window), &budget));
        for (i, m) in msgs.iter().enumerate() {
            q.push(logged(&key, m, i as u64 + 1), &mut Evicted::default())
                .unwrap();
        }
        assert_eq!(
            (q.len(), q.cold_len()),
            (10, 8),
            "two in memory, the rest on disk"
        );
        assert_eq!(q.memory_bytes(), window);
        assert_eq!(budget.used(), window + 8 * COLD_ENTRY_COST);
        assert_eq!(q.pop().unwrap().msg.id, msgs[0].id);
        assert_eq!(q.pop().unwrap().msg.id, msgs[1].id);
        assert!(q.pop().is_none(), "the front is on disk");
        assert!(q.wants_load());
        let (ids, claim) = q.claim_load().expect("a member claims the read-back");
        assert_eq!(
            ids,
            vec![msgs[2].id, msgs[3].id],
            "a window's worth, in order"
        );
        assert!(
            q.claim_load().is_none() && !q.wants_load(),
            "one member reads back at a time"
        );
        let loaded: Loaded = ids
            .iter()
            .zip(&msgs[2..4])
            .map(|(id, m)| (*id, Some(m.clone())))
            .collect();
        assert!(q.warm(&loaded).is_empty());
        drop(claim);
        let d = q.pop().unwrap();
        assert_eq!((d.msg.id, d.seq), (msgs[2].id, 3));
        assert_eq!(d.shared.as_ref(), Some(&key), "read back for its group");
        assert_eq!(q.pop().unwrap().msg.id, msgs[3].id);
        // A member that goes away while reading back gives the job back.
        let (ids, claim) = q.claim_load().unwrap();
        drop(claim);
        let (again, _claim) = q.claim_load().expect("claimable again");
        assert_eq!(ids, again);
    }

    /// The member that takes a QoS 1 message from the group queue counts it as inflight while
    /// the queue is still locked: a publisher that then finds the queue empty sees no free slot
    /// in a window that the taken message fills (otherwise it could queue a message behind a
    /// member that stopped acknowledging, where it would wait for ever).
    #[test]
    fn taking_from_the_group_queue_fills_the_members_window_at_once() {
        let key = TopicFilter::try_from("$share/g/jobs/#").unwrap();
        let budget = QueueBudget::new(1 << 30);
        let q = GroupQueue::new(key.clone(), bounds(usize::MAX), &budget);
        let member = SessionHandle::new("m".into(), 100, 1 << 20);
        member.window.store(1, Ordering::Relaxed);
        member.outbox().set_online(true);
        let mut qos0 = logged(&key, &message(0), 0);
        qos0.qos = QoS::AtMostOnce;
        q.push(qos0, &mut Evicted::default()).unwrap();
        q.push(logged(&key, &message(1), 0), &mut Evicted::default())
            .unwrap();
        assert_eq!(member.headroom(), 1);
        assert!(q.pop_reserving(&member.inflight).is_some());
        assert_eq!(member.headroom(), 1, "QoS 0 takes no slot");
        assert!(q.pop_reserving(&member.inflight).is_some());
        assert!(q.is_empty());
        assert_eq!(
            member.headroom(),
            0,
            "the window is full before the message is sent"
        );
    }

    #[test]
    fn without_a_store_a_group_queue_stays_in_memory() {
        let key = TopicFilter::try_from("$share/g/jobs/#").unwrap();
        let budget = QueueBudget::new(1 << 30);
        let q = GroupQueue::new(key.clone(), bounds(usize::MAX), &budget);
        for i in 0..10 {
            let mut d = logged(&key, &message(i), 0);
            d.seq = 0;
            q.push(d, &mut Evicted::default()).unwrap();
        }
        assert_eq!(q.cold_len(), 0);
        assert!(!q.wants_load());
    }
}
