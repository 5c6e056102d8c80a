//! The broker's shared state and the session lifecycle: open (with takeover), close (park or
//! discard), expiry and delayed wills.
//!
//! There is no router thread: publishers route in their own task ([`crate::routing`]). Locks:
//! * `sessions` (registry): held only to look up or insert/remove a handle.
//! * `subscriptions`: read-locked while matching, write-locked for one whole subscribe or
//!   unsubscribe (never per node: mochi issue 185).
//! * `retained`: same pattern.
//! * per session: `connect_lock` (async) serialises ownership changes of one client id;
//!   `ownership` and `outbox` are short sync locks.
//!
//! None of these is held across an await, except `connect_lock`, which exists for that.
//!
//! Parked sessions' deadlines (delayed wills, session expiry) sit in one ordered map served by
//! one task ([`crate::session::Deadlines`]), not a sleeping task per parked session.
//!
//! `operate.rs`: what the admin API does to sessions (disconnect a client, end a session),
//! through the same locks and steps.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sluice_codec::{LastWill, QoS};
use tokio::sync::Notify;

use crate::auth::acl::Acl;
use crate::auth::passwords::PasswordFile;
use crate::auth::AccessControl;
use crate::config::bridge_client_id;
use crate::config::Config;
use crate::locks::{lock, write};
use crate::message::{ClientId, Message};
use crate::persist::{Pending, Store};
use crate::routing::{Router, SubEntry};
use crate::session::{
    Asked, Control, ControlSlot, Deadlines, Delivery, Inflight, KeepAlives, Outbox, Owner,
    PendingWill, QueueBudget, Session, SessionHandle,
};
use crate::stats::{BridgeCounters, BridgeStatus, Stats};

/// After this long waiting for the old connection to hand its session over, a takeover logs a
/// warning (and goes on waiting).
const TAKEOVER_SLOW: Duration = Duration::from_secs(5);

mod moved;
mod operate;
mod restore;
pub use moved::session_state;
pub use operate::Kick;

/// One broker: the parts, wired together. Connections hold an `Arc<Broker>`.
///
/// The broker itself keeps the session registry and the session lifecycle (open with
/// takeover, park, expiry, delayed wills, restore after a restart); routing a message is the
/// [`Router`]'s, access checks are [`AccessControl`]'s, durability is the [`Store`]'s.
#[derive(Debug)]
pub struct Broker {
    /// Validated configuration, shared with the router.
    pub config: Arc<Config>,
    /// Every existing session by client id: online ones and parked persistent ones.
    sessions: Mutex<HashMap<ClientId, Arc<SessionHandle>>>,
    /// Subscriptions, retained messages and shared-subscription groups: where a PUBLISH goes.
    pub router: Router,
    /// The ACL, the password file and failed-login delays.
    pub access: Arc<AccessControl>,
    /// The persistent store (disabled in `memory` mode).
    pub store: Store,
    /// `limits.max_queued_bytes_total`: all session and group queues together.
    pub queue_budget: Arc<QueueBudget>,
    /// Source of unique connection numbers.
    next_connection: AtomicU64,
    pub stats: Arc<Stats>,
    /// Parked sessions' next deadlines (delayed will, expiry), each with the ownership
    /// generation it was armed for; served by one task ([`Broker::serve_deadlines`]).
    deadlines: Mutex<Deadlines<(Arc<SessionHandle>, u64)>>,
    /// Wakes the deadline task when an earlier deadline is armed, or when the broker goes.
    deadline_wake: Arc<Notify>,
    /// Whether the deadline task runs (started with the first deadline).
    deadline_task: AtomicBool,
    /// One entry per `[[bridges]]`, in configuration order: updated by the bridge tasks.
    bridges: Vec<Arc<BridgeCounters>>,
    /// Every connection's Keep Alive deadline, served by one task (no timer per connection).
    pub keepalives: Arc<KeepAlives>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Lets the deadline task see that the broker is gone and end.
        self.deadline_wake.notify_one();
    }
}

/// What [`Broker::open_session`] hands the connection task.
#[derive(Debug)]
pub struct Opened {
    pub handle: Arc<SessionHandle>,
    pub session: Session,
    /// Session Present for CONNACK [MQTT-3.2.2-2].
    pub session_present: bool,
    /// Cluster mode: the session came from another node; the stream's messages after this
    /// sequence are to be replayed into it ([`crate::routing::cluster_link::ClusterLink::replay`]).
    pub replay_from: Option<u64>,
}

impl Broker {
    /// A broker with `config` and the ACL it names (already validated by the caller).
    pub fn new(config: Config, acl: Option<Acl>) -> Broker {
        Broker::with_auth(config, acl, None)
    }

    /// A broker with an ACL and a password file (both already loaded by the caller).
    pub fn with_auth(config: Config, acl: Option<Acl>, passwords: Option<PasswordFile>) -> Broker {
        let config = Arc::new(config);
        let queue_budget = QueueBudget::new(
            usize::try_from(config.limits.max_queued_bytes_total).unwrap_or(usize::MAX),
        );
        let access = Arc::new(AccessControl::new(acl, passwords));
        let stats = Arc::new(Stats::default());
        let store = Store::disabled();
        let bridges = config
            .bridges
            .iter()
            .map(|b| {
                Arc::new(BridgeCounters {
                    name: b.name.clone(),
                    ..BridgeCounters::default()
                })
            })
            .collect();
        Broker {
            router: Router::new(
                config.clone(),
                access.clone(),
                store.clone(),
                queue_budget.clone(),
                stats.clone(),
            ),
            config,
            sessions: Mutex::new(HashMap::new()),
            access,
            queue_budget,
            store,
            next_connection: AtomicU64::new(1),
            stats,
            deadlines: Mutex::new(Deadlines::default()),
            deadline_wake: Arc::new(Notify::new()),
            deadline_task: AtomicBool::new(false),
            bridges,
            keepalives: KeepAlives::new(),
        }
    }

    /// Uses `store` for persistent state (before the broker is shared).
    pub fn with_store(mut self, store: Store) -> Broker {
        self.router.set_store(store.clone());
        self.store = store;
        self
    }

    /// Re-reads `auth.acl_file` (SIGHUP). On error the old rules stay in force and the error is
    /// returned for the log; connections are never dropped by a reload.
    pub fn reload_acl(&self) -> Result<bool, crate::auth::acl::AclLoadError> {
        let Some(path) = &self.config.auth.acl_file else {
            return Ok(false);
        };
        self.access.reload_acl(path)?;
        Ok(true)
    }

    /// Re-reads `auth.password_file` (SIGHUP), like [`Broker::reload_acl`]; established
    /// connections keep their session.
    pub fn reload_passwords(&self) -> Result<bool, crate::auth::passwords::PasswordFileError> {
        let Some(path) = &self.config.auth.password_file else {
            return Ok(false);
        };
        self.access.reload_passwords(path)?;
        Ok(true)
    }

    /// The counters of bridge `name` (for its task).
    pub fn bridge_counters(&self, name: &str) -> Option<Arc<BridgeCounters>> {
        self.bridges.iter().find(|b| b.name == name).cloned()
    }

    /// Every bridge's state (`[[bridges]]`): connected, queued, forwarded, dropped.
    pub fn bridges(&self) -> Vec<BridgeStatus> {
        self.bridges
            .iter()
            .map(|b| {
                let (queued, queue_dropped) = match self.session(&bridge_client_id(&b.name)) {
                    Some(h) => {
                        // One lock at a time (park_session takes ownership, then outbox).
                        let inflight = match &h.ownership().parked {
                            Some(s) => s.inflight_len(),
                            None => h.inflight.load(Ordering::Relaxed) as usize,
                        };
                        let outbox = h.outbox();
                        (outbox.len() + inflight, outbox.dropped())
                    }
                    None => (0, 0),
                };
                b.status(queued, queue_dropped)
            })
            .collect()
    }

    /// Puts new `[[shaping]]` rules in force (SIGHUP: the caller re-read and validated the
    /// configuration file; a bad file never gets here, so the old rules stay). Connections
    /// resolve their rules again at their next drain; group queues take their new overflow
    /// policy now.
    pub fn reload_shaping(&self, rules: Vec<crate::config::ShapingRule>) {
        self.router.shaping.replace(rules, Instant::now());
        self.router.refresh_group_policies();
        // Woken so that a connection waiting on a bucket under the old rules looks again.
        self.wake_all_sessions();
    }

    /// A fresh connection number.
    pub fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of sessions (online and parked).
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Wakes the task owning each session (parked ones have none). The listener calls this
    /// after it has signalled shutdown: a connection's loop checks that signal whenever it is
    /// woken, and waits for it through its session's [`crate::session::Wakeup`] rather than
    /// with a shutdown future of its own (which every idle connection would carry).
    pub fn wake_all_sessions(&self) {
        for h in self.session_handles() {
            h.notify.notify_one();
        }
    }

    /// Every session's handle, online and parked (a copy of the registry, for metrics).
    pub fn session_handles(&self) -> Vec<Arc<SessionHandle>> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// The client identifiers of every session (online or parked) starting with `prefix`.
    pub fn session_ids_with_prefix(&self, prefix: &str) -> Vec<ClientId> {
        lock(&self.sessions)
            .keys()
            .filter(|id| id.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The topic filters of `client_id`'s session while it is parked (None: no such session,
    /// or a connection owns it).
    pub fn parked_filters(&self, client_id: &str) -> Option<Vec<String>> {
        let handle = self.session(client_id)?;
        let own = handle.ownership();
        let parked = own.parked.as_ref()?;
        Some(
            parked
                .subscriptions
                .keys()
                .map(|f| f.as_str().to_owned())
                .collect(),
        )
    }

    /// The handle of `client_id`'s session, if one exists.
    pub fn session(&self, client_id: &str) -> Option<Arc<SessionHandle>> {
        lock(&self.sessions).get(client_id).cloned()
    }

    /// Takes ownership of `client_id`'s session for connection `connection`, taking it over
    /// from a connected client if there is one [MQTT-3.1.4-3], resuming or discarding it per
    /// Clean Start [MQTT-3.1.2-4] .. [MQTT-3.1.2-6].
    pub async fn open_session(
        self: &Arc<Self>,
        client_id: &ClientId,
        clean_start: bool,
        connection: u64,
    ) -> Opened {
        loop {
            let handle = {
                let mut sessions = lock(&self.sessions);
                sessions
                    .entry(client_id.clone())
                    .or_insert_with(|| {
                        Arc::new(SessionHandle::with_outbox(
                            client_id.clone(),
                            self.new_outbox(),
                        ))
                    })
                    .clone()
            };
            let _guard = handle.connect_lock.lock().await;
            // The session may have expired and been removed while we waited for the lock.
            let current = lock(&self.sessions).get(client_id).cloned();
            if !current.is_some_and(|h| Arc::ptr_eq(&h, &handle)) {
                continue;
            }
            self.take_over(&handle).await;
            // Cluster mode: a connection of this client id on another node closes, and a
            // session another node has (or had, if it died) moves here (cluster/sessions.rs).
            let mut adopted = None;
            if let Some(link) = self.router.cluster() {
                link.session_opened(client_id);
                adopted = link.adopt(client_id, clean_start).await;
            }

            let now = Instant::now();
            let (parked, expired) = {
                let mut own = handle.ownership();
                // Past its expiry the session is gone [MQTT-3.1.2-23], also when the deadline
                // task has not got to it yet (it waits for this lock; a loaded machine; a
                // session restored already expired after a restart).
                let expired = own.expires_at.is_some_and(|t| t <= now);
                own.generation += 1;
                own.expires_at = None;
                if let Some(key) = own.timer.take() {
                    lock(&self.deadlines).remove(key);
                }
                own.owner = Some(Owner {
                    connection,
                    control: ControlSlot::Listening,
                    info: None,
                });
                (own.parked.take(), expired)
            };
            let (session, present) = match parked {
                Some(old)
                    if adopted.is_none() && !clean_start && old.expiry_interval > 0 && !expired =>
                {
                    let mut s = *old;
                    // Reconnected before the Will Delay Interval passed: the will is not sent
                    // [MQTT-3.1.3-9].
                    s.pending_will = None;
                    (s, true)
                }
                Some(old) => {
                    // Clean Start, a session that ended with its connection, or one that
                    // expired: the old session ends now, and with it any will still waiting
                    // for its delay. (The store forgets it when the new session is logged.)
                    if expired {
                        tracing::info!(client_id = %client_id, "session expired");
                    }
                    self.hand_on_shared(&handle);
                    self.discard_subscriptions(client_id, &old);
                    handle.outbox().clear();
                    if let Some(p) = old.pending_will {
                        self.publish_will(client_id, p.will, now);
                    }
                    (Session::default(), false)
                }
                None => (Session::default(), false),
            };
            // The session another node had replaces whatever this node kept of an earlier
            // stay (discarded just above).
            let (session, present, replay_from) = match adopted {
                Some(a) => (
                    self.adopt_session(&handle, a.state),
                    true,
                    Some(a.checkpoint),
                ),
                None => (session, present, None),
            };
            handle.outbox().set_online(true);
            return Opened {
                handle: handle.clone(),
                session,
                session_present: present,
                replay_from,
            };
        }
    }

    /// Asks the current owner of `handle`, if any, to hand the session over, and waits.
    async fn take_over(&self, handle: &Arc<SessionHandle>) {
        // Gone: the old task ended without parking (as a dropped channel's send failed).
        if let Asked::Sent(mut rx) = match handle.ask_owner(Control::TakeOver) {
            Asked::NoOwner => return,
            asked => asked,
        } {
            if tokio::time::timeout(TAKEOVER_SLOW, &mut rx).await.is_err() {
                // Every step of the old task's close is bounded (its last writes by
                // FLUSH_TIMEOUT), so it will answer; taking the session without its state would
                // lose the session's inflight messages and leave its subscriptions in the tree
                // with no session that knows them.
                tracing::warn!(client_id = %handle.client_id, "old connection has not handed over its session after {} s; still waiting", TAKEOVER_SLOW.as_secs());
                let _ = rx.await;
            }
        }
        // If the old task is gone without parking (it panicked), its session state is lost;
        // the owner slot is cleared so the new connection can proceed.
        handle.ownership().owner = None;
    }

    /// Called by a connection task that is ending while it owns the session. `will` is the
    /// will to publish (abnormal end) or None (normal DISCONNECT, 3.1.2.5). Must be called with
    /// `connect_lock` held, or during a takeover (`taken_over`: the new owner holds the lock and
    /// keeps using this handle, so it stays registered even when the session itself ends).
    pub fn park_session(
        self: &Arc<Self>,
        handle: &Arc<SessionHandle>,
        mut session: Session,
        connection: u64,
        will: Option<LastWill>,
        taken_over: bool,
    ) {
        let now = Instant::now();
        let mut will_now = None;
        let redistribute;
        let generation;
        let deadline;
        {
            let mut own = handle.ownership();
            if own
                .owner
                .as_ref()
                .is_none_or(|o| o.connection != connection)
            {
                return; // Someone else owns it already; our state was taken over.
            }
            own.owner = None;
            own.generation += 1;
            generation = own.generation;
            let mut outbox = handle.outbox();
            outbox.set_online(false);
            // Shared-subscription messages not yet sent move to other members, and so do
            // unacknowledged QoS 1 ones; sent QoS 2 ones stay ([MQTT-4.8.2-4], routing/shared_subscriptions.rs).
            // Each with the record that lets this session's log forget it, written only once
            // the member taking it has it in the log (a crash in between keeps it twice,
            // never nowhere).
            let logging = self.store.is_enabled() && handle.persistent.load(Ordering::Relaxed);
            let mut moving = shared_leaving(&mut outbox, &handle.client_id);
            drop(outbox);
            let mut kept = VecDeque::with_capacity(session.inflight.len());
            for entry in session.inflight.drain(..) {
                match entry {
                    Inflight::Publish { delivery, pkid }
                        if delivery.shared.is_some() && delivery.qos == QoS::AtLeastOnce =>
                    {
                        let release = logging
                            .then(|| Pending::delivery_acked(handle.client_id.clone(), pkid));
                        moving.push((delivery, release))
                    }
                    other => kept.push_back(other),
                }
            }
            session.inflight = kept;
            redistribute = moving;
            if let Some(will) = will {
                if will.delay_interval == 0 || session.expiry_interval == 0 {
                    will_now = Some(will);
                } else {
                    let publish_at = now + Duration::from_secs(u64::from(will.delay_interval));
                    session.pending_will = Some(Box::new(PendingWill { will, publish_at }));
                }
            }
            if session.expiry_interval == 0 {
                own.parked = None;
                own.expires_at = None;
                deadline = None;
            } else {
                own.expires_at = (session.expiry_interval != u32::MAX)
                    .then(|| now + Duration::from_secs(u64::from(session.expiry_interval)));
                deadline = earliest(
                    own.expires_at,
                    session.pending_will.as_ref().map(|p| p.publish_at),
                );
                own.parked = Some(Box::new(session.clone()));
            }
        }
        if !redistribute.is_empty() {
            // Whatever no other member can take stays with this session if it goes on, or
            // joins the group's queue if it ends now.
            let left = self.router.redistribute(&handle.client_id, redistribute);
            if session.expiry_interval != 0 {
                // Queued ones stay as they are (same number in the log); unacknowledged ones go
                // back to the queue: logged as queued before they are logged as no longer in
                // flight.
                let left: Vec<Delivery> = left
                    .into_iter()
                    .map(|(mut d, release)| {
                        if let Some(rec) = release.filter(Pending::is_delivery_acked) {
                            d.seq = 0;
                            let mut logged = false;
                            self.router.log_enqueue(handle, &mut d, &mut logged);
                            self.store.log_pending(rec);
                        }
                        d
                    })
                    .collect();
                let mut outbox = handle.outbox();
                for d in left.into_iter().rev() {
                    outbox.push_front(d);
                }
            } else {
                // The session ends and no other member is left: the group keeps them.
                self.router.queue_for_groups(left);
            }
        }
        if session.expiry_interval == 0 {
            self.discard_subscriptions(&handle.client_id, &session);
            if !taken_over {
                self.remove_handle(handle);
            }
        }
        self.cluster_session_parked(&handle.client_id, &session);
        if let Some(will) = will_now {
            self.publish_will(&handle.client_id, will, now);
        }
        if let Some(deadline) = deadline {
            self.arm_timer(handle.clone(), generation, deadline);
        }
    }

    /// Arms the next deadline (delayed will and/or expiry) of a parked session, unless its
    /// ownership changed (generation) in the meantime; replaces the session's earlier one.
    fn arm_timer(self: &Arc<Self>, handle: Arc<SessionHandle>, generation: u64, deadline: Instant) {
        {
            let mut own = handle.ownership();
            if own.generation != generation || own.owner.is_some() {
                return;
            }
            let mut deadlines = lock(&self.deadlines);
            if let Some(old) = own.timer.take() {
                deadlines.remove(old);
            }
            own.timer = Some(deadlines.insert(deadline, (handle.clone(), generation)));
        }
        if !self.deadline_task.swap(true, Ordering::AcqRel) {
            tokio::spawn(serve_deadlines(
                Arc::downgrade(self),
                self.deadline_wake.clone(),
            ));
        }
        self.deadline_wake.notify_one();
    }

    /// A parked session's deadline has come: fires the delayed will and/or expires the
    /// session, unless ownership changed (generation) in the meantime; arms the next one.
    async fn deadline_due(self: Arc<Self>, handle: Arc<SessionHandle>, generation: u64) {
        let _guard = handle.connect_lock.lock().await;
        let now = Instant::now();
        let (will, expired, next) = {
            let mut own = handle.ownership();
            if own.generation != generation || own.owner.is_some() {
                return;
            }
            own.timer = None;
            let expired = own.expires_at.is_some_and(|t| t <= now);
            let expires_at = own.expires_at;
            let Some(parked) = own.parked.as_mut() else {
                return;
            };
            let will = match &parked.pending_will {
                Some(p) if p.publish_at <= now || expired => {
                    parked.pending_will.take().map(|p| p.will)
                }
                _ => None,
            };
            let next = earliest(
                expires_at,
                parked.pending_will.as_ref().map(|p| p.publish_at),
            );
            let parked = if expired { own.parked.take() } else { None };
            (will, parked.filter(|_| expired), next)
        };
        if let Some(will) = will {
            self.publish_will(&handle.client_id, will, now);
        }
        if let Some(session) = expired {
            tracing::info!(client_id = %handle.client_id, "session expired");
            if let Some(link) = self.router.cluster() {
                link.session_ended(&handle.client_id);
            }
            self.hand_on_shared(&handle);
            if self.store.is_enabled() {
                self.store.session_gone(handle.client_id.clone());
            }
            self.discard_subscriptions(&handle.client_id, &session);
            self.remove_handle(&handle);
            return;
        }
        if let Some(next) = next {
            self.arm_timer(handle.clone(), generation, next);
        }
    }

    /// Starts the one timer task of `$delayed` messages ([`crate::routing::delayed`]); it
    /// ends when the broker is dropped.
    pub fn start_delayed_timer(self: &Arc<Self>) {
        let delayed = self.router.delayed.clone();
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            while delayed.wait_due().await {
                let Some(broker) = broker.upgrade() else {
                    return;
                };
                broker.router.release_due(Instant::now()).await;
            }
        });
    }

    /// An empty session queue with the configured bounds.
    fn new_outbox(&self) -> Outbox {
        let mut outbox = Outbox::new(
            self.config.max_queued_messages(),
            self.config.max_queued_bytes(),
        )
        .with_budget(self.queue_budget.clone())
        .with_memory_limit(self.config.mqtt.max_queued_memory_bytes);
        // A shaping rule's `overflow` replaces it while the client is connected (its
        // connection resolves the rules).
        outbox.set_policy(self.config.mqtt.queue_full_policy);
        if self.store.is_enabled() {
            outbox.with_window(self.config.persistence.queue_memory_bytes)
        } else {
            outbox
        }
    }

    /// Removes every subscription of `session` from the tree, and the session from the shared
    /// subscription groups it was in (the last member out leaves its group's messages to
    /// `mqtt.shared_group_orphan_policy`).
    fn discard_subscriptions(&self, client_id: &ClientId, session: &Session) {
        if session.subscriptions.is_empty() {
            return;
        }
        let mut groups = Vec::new();
        {
            let mut tree = write(&self.router.subscriptions);
            for filter in session.subscriptions.keys() {
                if let Some(e) = tree.unsubscribe(filter, client_id) {
                    self.router.interest_changed(filter, false);
                    groups.extend(e.shared);
                }
            }
        }
        for group in groups {
            self.router.leave_group(&group, client_id);
        }
    }

    /// A session is ending: the shared-subscription deliveries still in its queue go to other
    /// members of their groups, or to the group's queue when no other member is left (each
    /// logged there before this session's log lets go of it).
    fn hand_on_shared(&self, handle: &SessionHandle) {
        let moving = shared_leaving(&mut handle.outbox(), &handle.client_id);
        if !moving.is_empty() {
            let left = self.router.redistribute(&handle.client_id, moving);
            self.router.queue_for_groups(left);
        }
    }

    /// Removes `handle` from the registry if it is still the registered one.
    fn remove_handle(&self, handle: &Arc<SessionHandle>) {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(&handle.client_id)
            .is_some_and(|h| Arc::ptr_eq(h, handle))
        {
            sessions.remove(&handle.client_id);
        }
    }

    /// Publishes a will message (3.1.2.5) on behalf of `client_id`.
    pub fn publish_will(&self, client_id: &ClientId, will: LastWill, now: Instant) {
        tracing::debug!(client_id = %client_id, topic = %will.topic, "publishing will");
        // `$delayed/{s}/{topic}` (checked at CONNECT): to `{topic}`, s seconds from now.
        let delayed = match crate::topic::delayed(&will.topic, self.config.mqtt.max_delay_seconds) {
            Some(Ok(d)) => sluice_codec::TopicName::try_from(d.target)
                .ok()
                .map(|t| (t, Duration::from_secs(u64::from(d.seconds)))),
            _ => None,
        };
        let (topic, delay) = match delayed {
            Some((t, delay)) => (t, Some(delay)),
            None => (will.topic, None),
        };
        let mut msg = Message::new(
            topic,
            will.payload,
            will.qos,
            will.retain,
            will.properties,
            client_id.clone(),
            now,
        );
        msg.priority = self.router.priority_of(&msg.topic);
        match delay {
            Some(delay) => {
                if self
                    .router
                    .publish_delayed(Arc::new(msg), delay, None, now)
                    .is_err()
                {
                    self.stats.add(crate::stats::Counter::DroppedDelayedFull, 1);
                    tracing::warn!(client_id = %client_id, "will dropped: too many delayed messages waiting (limits.max_delayed_messages)");
                }
            }
            None => {
                self.router.publish(Arc::new(msg));
            }
        }
    }
}

/// Takes the shared-subscription deliveries out of a leaving session's queue, each with the
/// record that lets this session's log forget it (written once another member, or the group's
/// queue, has it in the log).
fn shared_leaving(outbox: &mut Outbox, client: &ClientId) -> Vec<(Delivery, Option<Pending>)> {
    outbox
        .take_where(|d| d.shared.is_some())
        .into_iter()
        .map(|d| {
            let release = (d.seq != 0).then(|| Pending::delivery_skipped(client.clone(), d.seq));
            (d, release)
        })
        .collect()
}

/// The one task that serves every parked session's deadline: sleeps until the earliest (or
/// until an earlier one is armed), then hands each due one to a short task of its own (it
/// waits for that session's `connect_lock`, which a connecting client may hold). Ends when
/// the broker is dropped.
async fn serve_deadlines(broker: Weak<Broker>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            let (due, next) = {
                let mut deadlines = lock(&broker.deadlines);
                (deadlines.pop_due(Instant::now()), deadlines.next_due())
            };
            for (handle, generation) in due {
                tokio::spawn(broker.clone().deadline_due(handle, generation));
            }
            next
        };
        // `notify_one` stores a permit when nobody waits, so a deadline armed between the
        // look above and this wait is not missed.
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(broker: &Arc<Broker>, id: &ClientId, connection: u64) -> Opened {
        broker.open_session(id, false, connection).await
    }

    #[tokio::test]
    async fn a_resumed_session_disarms_its_deadline_and_a_parked_one_expires() {
        let broker = Arc::new(Broker::new(Config::default(), None));
        let id: ClientId = "c".into();
        let opened = open(&broker, &id, 1).await;
        let mut session = opened.session;
        session.expiry_interval = 3600;
        broker.park_session(&opened.handle, session, 1, None, false);
        assert_eq!(
            lock(&broker.deadlines).len(),
            1,
            "parking arms one deadline"
        );

        let opened = open(&broker, &id, 2).await;
        assert!(opened.session_present);
        assert!(
            lock(&broker.deadlines).is_empty(),
            "a session taken again leaves no deadline behind"
        );

        let mut session = opened.session;
        session.expiry_interval = 1;
        broker.park_session(&opened.handle, session, 2, None, false);
        let until = Instant::now() + Duration::from_secs(30);
        while lock(&broker.sessions).contains_key(&id) {
            assert!(Instant::now() < until, "the parked session never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(lock(&broker.deadlines).is_empty());
    }

    /// An old connection that went away without parking its session (it panicked: its
    /// `ControlGuard` dropped) does not hold up the next one.
    #[tokio::test]
    async fn a_takeover_does_not_wait_for_a_connection_that_is_gone() {
        let broker = Arc::new(Broker::new(Config::default(), None));
        let id: ClientId = "gone".into();
        let opened = open(&broker, &id, 1).await;
        drop(crate::session::ControlGuard {
            handle: opened.handle.clone(),
            connection: 1,
        });
        let again = tokio::time::timeout(TAKEOVER_SLOW, open(&broker, &id, 2))
            .await
            .expect("not waiting for an answer that cannot come");
        assert!(!again.session_present);
        assert_eq!(
            again
                .handle
                .ownership()
                .owner
                .as_ref()
                .map(|o| o.connection),
            Some(2)
        );
    }

    /// A client that comes back after its session's expiry gets a new session, also while
    /// the deadline task has not yet expired the old one [MQTT-3.1.2-23]: here the task never
    /// runs before the CONNECT (a current-thread runtime, no await in between).
    #[tokio::test]
    async fn a_session_past_its_expiry_is_not_resumed_before_its_deadline_fires() {
        let broker = Arc::new(Broker::new(Config::default(), None));
        let id: ClientId = "late".into();
        let opened = open(&broker, &id, 1).await;
        let mut session = opened.session;
        session.expiry_interval = 60;
        broker.park_session(&opened.handle, session, 1, None, false);
        // As if the 60 s had passed (or the session was restored already expired).
        opened.handle.ownership().expires_at = Some(Instant::now());
        let again = open(&broker, &id, 2).await;
        assert!(!again.session_present, "an expired session is not resumed");
        assert_eq!(again.session.expiry_interval, 0, "a new, empty session");
        assert!(
            lock(&broker.deadlines).is_empty(),
            "the expired session's deadline is disarmed"
        );
    }

    /// An old connection slow to hand over (its closing writes can take seconds towards a
    /// client that reads nothing) still hands its session to the new one: the takeover waits
    /// past [`TAKEOVER_SLOW`] rather than start the new connection on an empty session while the
    /// old one's subscriptions stay in the tree.
    #[tokio::test(start_paused = true)]
    async fn a_slow_takeover_still_gets_the_old_session() {
        let broker = Arc::new(Broker::new(Config::default(), None));
        let id: ClientId = "slow".into();
        let opened = broker.open_session(&id, false, 1).await;
        let mut session = opened.session;
        session.expiry_interval = 3600;
        let old_handle = opened.handle.clone();
        let b = broker.clone();
        let old = tokio::spawn(async move {
            let Control::TakeOver(reply) = old_handle.control_requested(1).await else {
                panic!("no takeover asked");
            };
            tokio::time::sleep(TAKEOVER_SLOW * 3).await;
            b.park_session(&old_handle, session, 1, None, true);
            let _ = reply.send(());
        });
        let again = open(&broker, &id, 2).await;
        old.await.unwrap();
        assert!(
            again.session_present,
            "the session the old connection handed over late [MQTT-3.1.2-5]"
        );
        assert_eq!(again.session.expiry_interval, 3600);
    }
}
