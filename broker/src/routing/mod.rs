//! Routing a PUBLISH: update the retained store, match the subscription tree, and push one
//! delivery record per subscribing session onto its outbox. It runs in the publisher's task,
//! takes only short locks and never awaits: a full outbox is the subscriber's problem
//! (dropped and counted), never the publisher's.

pub mod cluster_link;
pub mod delayed;
pub mod retain;
pub mod shared_subscriptions;
pub mod subscriptions;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use sluice_codec::{QoS, RetainHandling, SubscriptionOptions, TopicFilter};

use crate::auth::acl::{Access, Acl};
use crate::auth::AccessControl;
use crate::config::Config;
use crate::config::QueueFullPolicy;
use crate::hot_topics::HotTopics;
use crate::locks::{read, write};
use crate::message::{ClientId, Message};
use crate::persist::Pending;
use crate::persist::Store;
use crate::routing::cluster_link::{ClusterInbox, ClusterLink};
use crate::routing::delayed::DelayedPublishes;
use crate::routing::retain::RetainedStore;
use crate::routing::shared_subscriptions::{Candidate, GroupQueue, Pick, SharedGroups};
use crate::routing::subscriptions::SubscriptionTree;
use crate::session::{Delivery, Dropped, Evicted, QueueBudget, SessionHandle, SubscriptionRecord};
use crate::shaping::Shaping;
use crate::stats::{Counter, Stats};
use std::sync::{OnceLock, RwLock};

/// Where a message being routed comes from, in cluster mode: what this node does with it.
#[derive(Clone, Copy)]
pub enum Scope<'a> {
    /// Published on this node: to its subscribers, to the retained store, and (cluster mode) to
    /// the other nodes; shared groups then get it through NATS, like everyone else's.
    Local,
    /// From another node, for this node's plain (not shared) subscriptions.
    Remote,
    /// From another node or this one, through NATS's queue group of this shared subscription
    /// group (`$share/{group}/{filter}`): for one of this node's members of that group.
    RemoteShared(&'a TopicFilter),
    /// From the cluster's message stream, replayed for the plain subscriptions of the sessions
    /// the function accepts (a session that moved here catching up): not sent anywhere else.
    Replay(&'a dyn Fn(&ClientId) -> bool),
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Local => f.write_str("Local"),
            Scope::Remote => f.write_str("Remote"),
            Scope::RemoteShared(k) => write!(f, "RemoteShared({k})"),
            Scope::Replay(_) => f.write_str("Replay"),
        }
    }
}

/// A subscription as stored in the tree: what matching needs without touching the session.
#[derive(Debug, Clone)]
pub struct SubEntry {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
    /// Where matching messages go.
    pub handle: Arc<SessionHandle>,
    /// The subscriber's username when it subscribed, for read checks of the ACL on delivery.
    pub username: Option<Arc<str>>,
    /// For a shared subscription, its group: the full `$share/{group}/{filter}` (the group's
    /// identity) and the group's queue, so routing finds it without a lookup.
    pub shared: Option<Arc<GroupQueue>>,
}

/// The client asking for something, for ACL checks.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

/// One resolved target of a message before it is pushed.
struct Target {
    handle: Arc<SessionHandle>,
    qos: QoS,
    retain: bool,
    subscription_ids: Vec<u32>,
    username: Option<Arc<str>>,
    /// `$share/{group}/{filter}` for a shared subscription's member.
    shared: Option<TopicFilter>,
}

impl Target {
    /// `shared`: fill in the group of a shared subscription's entry.
    fn from_entry(e: &SubEntry, msg: &Message, shared: bool) -> Target {
        Target {
            handle: e.handle.clone(),
            qos: msg.qos.min(e.options.qos),
            // Live messages carry RETAIN only under Retain As Published [MQTT-3.3.1-12];
            // 3.1.1 subscriptions never set it [MQTT-3.3.1-9].
            retain: msg.retain && e.options.retain_as_published,
            subscription_ids: e.identifier.into_iter().collect(),
            username: e.username.clone(),
            shared: if shared {
                e.shared.as_ref().map(|g| g.key.clone())
            } else {
                None
            },
        }
    }
}

/// The ACL's read decision for one message's topic, for each subscriber of one PUBLISH. The
/// ACL is looked up once; without one nothing is checked; with one, subscribers with the same
/// username share one check unless a `%c` pattern makes the answer depend on the client id.
struct ReadCheck<'a> {
    acl: Option<Arc<Acl>>,
    topic: &'a str,
    /// Answers so far, by username (a few: past [`ReadCheck::MEMO`] names, each is checked).
    per_user: Vec<(Option<Arc<str>>, bool)>,
}

impl<'a> ReadCheck<'a> {
    const MEMO: usize = 16;

    fn new(acl: Option<Arc<Acl>>, topic: &'a str) -> ReadCheck<'a> {
        ReadCheck {
            acl,
            topic,
            per_user: Vec::new(),
        }
    }

    fn allows(&mut self, username: Option<&Arc<str>>, client_id: &str) -> bool {
        let Some(acl) = &self.acl else {
            return true;
        };
        let memo = !acl.uses_client_id();
        if memo {
            if let Some((_, ok)) = self.per_user.iter().find(|(u, _)| u.as_ref() == username) {
                return *ok;
            }
        }
        let ok = acl.check_topic(username.map(|u| &**u), client_id, self.topic, Access::Read);
        if memo && self.per_user.len() < Self::MEMO {
            self.per_user.push((username.cloned(), ok));
        }
        ok
    }
}

/// Where a PUBLISH goes: the subscription tree, the retained store and the shared-subscription
/// groups, with what routing needs to log and count (a function of the publisher's task, not a
/// thread: see the module docs).
#[derive(Debug)]
pub struct Router {
    config: Arc<Config>,
    /// The subscription tree (4.7); values point straight at the subscriber's session handle.
    /// Read-locked while matching, write-locked for one whole subscribe or unsubscribe (never
    /// per node: mochi issue 185).
    pub subscriptions: RwLock<SubscriptionTree<ClientId, SubEntry>>,
    /// Retained messages (3.3.1.3), one per topic; locked like the tree.
    pub retained: RwLock<RetainedStore<Arc<Message>>>,
    /// Selection state and queues of shared subscription groups.
    pub(crate) shared_groups: SharedGroups,
    /// The read check of every delivery.
    access: Arc<AccessControl>,
    /// Where queue entries and retained messages are logged (disabled in `memory` mode).
    store: Store,
    /// `limits.max_queued_bytes_total`, shared with every session queue.
    queue_budget: Arc<QueueBudget>,
    stats: Arc<Stats>,
    /// `$delayed` messages waiting for their time, shared with the one timer task.
    pub delayed: Arc<DelayedPublishes>,
    /// The busiest topics, sampled (the dashboard's panel; one PUBLISH in 16 per thread).
    pub hot_topics: HotTopics,
    /// Cluster mode (`[cluster]`): the queue to this node's cluster task. Unset on a single
    /// node, where routing is exactly what it was without it.
    cluster: OnceLock<ClusterLink>,
    /// Egress shaping rules (`[[shaping]]`), for the overflow policies they set.
    pub shaping: Arc<Shaping>,
}

impl Drop for Router {
    fn drop(&mut self) {
        // The timer task holds the queue, not the router: tell it to end.
        self.delayed.close();
    }
}

impl Router {
    /// An empty router.
    pub fn new(
        config: Arc<Config>,
        access: Arc<AccessControl>,
        store: Store,
        queue_budget: Arc<QueueBudget>,
        stats: Arc<Stats>,
    ) -> Router {
        Router {
            delayed: Arc::new(DelayedPublishes::new(config.limits.max_delayed_messages)),
            shaping: Arc::new(Shaping::new(config.shaping.clone())),
            config,
            subscriptions: RwLock::new(SubscriptionTree::new()),
            retained: RwLock::new(RetainedStore::new()),
            shared_groups: SharedGroups::default(),
            access,
            store,
            queue_budget,
            stats,
            hot_topics: HotTopics::default(),
            cluster: OnceLock::new(),
        }
    }

    /// Turns cluster mode on (once, before any subscription exists or is restored, so that
    /// every filter reaches the cluster task): returns the cluster task's end of the queue.
    pub fn enable_cluster(&self) -> Option<ClusterInbox> {
        let (link, inbox) = cluster_link::channel();
        self.cluster.set(link).ok()?;
        Some(inbox)
    }

    /// The cluster link, in cluster mode.
    pub fn cluster(&self) -> Option<&ClusterLink> {
        self.cluster.get()
    }

    /// Tells the cluster task (cluster mode) that this node has one more (`added`) or one
    /// less subscription to `filter`. Call after each change of the tree that added or removed
    /// an entry. Costs nothing on a single node.
    pub fn interest_changed(&self, filter: &TopicFilter, added: bool) {
        if let Some(link) = self.cluster.get() {
            link.interest(filter, added);
        }
    }

    /// Routes a message that came from NATS (cluster mode) to this node's subscriptions, per
    /// `scope`; returns how many sessions it was queued for. It is not sent back to NATS and
    /// not stored as retained here (the retained bucket's watcher does that).
    pub fn publish_remote(&self, msg: Arc<Message>, scope: Scope<'_>) -> usize {
        self.route(msg, false, None, scope).unwrap_or(0)
    }

    /// Sets (`Some`) or clears (`None`) the retained message of `topic` from the cluster's
    /// retained bucket: in memory only (the bucket is where it is kept).
    pub fn apply_cluster_retained(&self, topic: &str, msg: Option<Arc<Message>>) {
        let mut store = write(&self.retained);
        match msg {
            Some(m) => {
                store.insert(topic, m);
            }
            None => {
                store.remove(topic);
            }
        }
    }

    /// Logs to `store` from now on (set once, before the broker is shared).
    pub(crate) fn set_store(&mut self, store: Store) {
        self.store = store;
    }

    /// Routes `msg` to every matching subscription; returns how many sessions it was queued for.
    /// A subscriber whose queue is full misses it (counted and logged).
    pub fn publish(&self, msg: Arc<Message>) -> usize {
        self.route(msg, false, None, Scope::Local).unwrap_or(0)
    }

    /// Routes a client's PUBLISH under `mqtt.queue_full_policy`: with `reject`, a QoS 1/2
    /// message that a subscriber's full queue cannot take goes to nobody, and the client id of
    /// that subscriber comes back as the error. `received` (the publisher's QoS 2 "received"
    /// record) is logged with the message's queue entries, unless it was refused.
    pub fn publish_from_client(
        &self,
        msg: Arc<Message>,
        received: Option<Pending>,
    ) -> Result<usize, ClientId> {
        // Some subscriber may refuse it: the broker-wide policy, or a shaping rule's.
        let reject = msg.qos != QoS::AtMostOnce
            && (self.config.mqtt.queue_full_policy == QueueFullPolicy::Reject
                || self.shaping.any_reject());
        self.route(msg, reject, received, Scope::Local)
    }

    fn route(
        &self,
        msg: Arc<Message>,
        reject_when_full: bool,
        received: Option<Pending>,
        scope: Scope<'_>,
    ) -> Result<usize, ClientId> {
        self.hot_topics.sample(msg.topic.as_str());
        let cluster = self.cluster.get();
        // Which subscriptions of this node this message is for: on a single node all of them;
        // in cluster mode shared groups get their messages only through NATS's queue groups
        // (one node's group per message, cluster-wide), everything else directly.
        let (plain, shared_key): (bool, Option<&TopicFilter>) = match scope {
            Scope::Local => (true, None),
            Scope::Remote | Scope::Replay(_) => (true, None),
            Scope::RemoteShared(key) => (false, Some(key)),
        };
        let only: Option<&dyn Fn(&ClientId) -> bool> = match scope {
            Scope::Replay(f) => Some(f),
            _ => None,
        };
        // Shared groups get replayed messages through nobody: NATS's queue group picked a
        // node for each when it was published.
        let shared_here = only.is_none() && (cluster.is_none() || shared_key.is_some());
        let mut targets: Vec<Target> = Vec::new();
        // (shared subscription's group, members): rare, so a small Vec.
        let mut groups: Vec<(Arc<GroupQueue>, Vec<Target>)> = Vec::new();
        {
            let tree = read(&self.subscriptions);
            tree.for_each_match(msg.topic.as_str(), |group, client, entry| {
                // No Local: not back to the publisher's own subscriptions [MQTT-3.8.3-3].
                if entry.options.no_local && **client == *msg.origin {
                    return;
                }
                match (group, &entry.shared) {
                    (Some(_), Some(g)) => {
                        if !shared_here || shared_key.is_some_and(|k| *k != g.key) {
                            return;
                        }
                        // Its group is filled in only if it is picked (most messages of a
                        // burst go to the group's queue: no copy of the key per member).
                        let target = Target::from_entry(entry, &msg, false);
                        match groups
                            .iter_mut()
                            .find(|(q, _)| Arc::ptr_eq(q, g) || q.key == g.key)
                        {
                            Some((_, members)) => members.push(target),
                            None => groups.push((g.clone(), vec![target])),
                        }
                    }
                    _ if plain && only.is_none_or(|f| f(client)) => {
                        targets.push(Target::from_entry(entry, &msg, true))
                    }
                    _ => {}
                }
            });
        }
        // Overlapping subscriptions of one client: one copy at the highest QoS, with every
        // matching Subscription Identifier [MQTT-3.3.4-2], [MQTT-3.3.4-3].
        if targets.len() > 1 {
            targets.sort_unstable_by_key(|t| Arc::as_ptr(&t.handle) as usize);
            targets.dedup_by(|later, kept| {
                if !Arc::ptr_eq(&later.handle, &kept.handle) {
                    return false;
                }
                kept.qos = kept.qos.max(later.qos);
                kept.retain |= later.retain;
                // An identifier shared by several of the client's subscriptions is sent once.
                for id in later.subscription_ids.drain(..) {
                    if !kept.subscription_ids.contains(&id) {
                        kept.subscription_ids.push(id);
                    }
                }
                true
            });
        }
        // ACL read check at delivery time: the ACL is looked up once for this PUBLISH.
        let mut readable = ReadCheck::new(self.access.acl(), msg.topic.as_str());
        targets.retain(|t| readable.allows(t.username.as_ref(), &t.handle.client_id));
        // Shared subscriptions: one member per group (4.8.2), chosen by the group's strategy,
        // or the group's own queue when every member's window is full.
        let mut to_groups = Vec::new();
        for (queue, mut members) in groups {
            let key = &queue.key;
            // A stable order, so hash strategies map a key to the same member.
            members.sort_unstable_by(|a, b| a.handle.client_id.cmp(&b.handle.client_id));
            let candidates: Vec<Candidate<'_>> = members
                .iter()
                .map(|t| Candidate { handle: &t.handle })
                .collect();
            let strategy = self.shared_strategy(key.shared().map_or("", |(g, _)| g));
            let pick = self.shared_groups.pick(
                key,
                strategy,
                &candidates,
                &msg.origin,
                msg.topic.as_str(),
                !queue.is_empty(),
            );
            match pick {
                Some(Pick::Member(i)) => {
                    let mut t = members.swap_remove(i);
                    if readable.allows(t.username.as_ref(), &t.handle.client_id) {
                        t.shared = Some(key.clone());
                        targets.push(t);
                    }
                }
                Some(Pick::Group) => to_groups.push((queue, members)),
                None => {}
            }
        }
        if reject_when_full {
            // Checked before anything is stored or queued, so a refusal leaves no trace. (Another
            // publisher may fill a queue between this check and the push; that message is then
            // dropped for that subscriber and counted, as with `drop`. The broker-wide
            // `limits.max_queued_bytes_total` is not part of the check.)
            let cost = msg.cost();
            let full_session = targets
                .iter()
                .find(|t| {
                    t.qos != QoS::AtMostOnce && {
                        let outbox = t.handle.outbox();
                        outbox.policy() == QueueFullPolicy::Reject && !outbox.has_room(cost)
                    }
                })
                .map(|t| t.handle.client_id.clone());
            let full_group = || {
                to_groups
                    .iter()
                    .find(|(q, _)| q.policy() == QueueFullPolicy::Reject && !q.has_room(cost))
                    .map(|(q, _)| ClientId::from(q.key.as_str()))
            };
            if let Some(full) = full_session.or_else(full_group) {
                let n = self.stats.striped.get(Counter::RejectedQueueFull);
                self.stats.add(Counter::RejectedQueueFull, 1);
                if n % 1000 == 0 {
                    tracing::warn!(subscriber = %full, refused = n + 1, "queue full (mqtt.max_queued_messages / max_queued_bytes): PUBLISH refused (mqtt.queue_full_policy = reject)");
                }
                return Err(full);
            }
        }
        let local = matches!(scope, Scope::Local);
        if msg.retain && local {
            self.store_retained(&msg);
        }
        if let (true, Some(link)) = (local, cluster) {
            // To the other nodes (and this node's shared groups) through the cluster task.
            link.publish(msg.clone());
        }
        // Two phases: everything is logged first, then queued. Once a delivery is in a queue its
        // subscriber may send it and log Sent/Acked at once; those records must come after
        // every Enqueue of the message (an Acked that released the message before a later
        // subscriber's Enqueue would make the log forget that subscriber's copy).
        // Whether the message itself is in the log already (by an earlier target). Written
        // again even when the retained store logged it: a later retained message on the same
        // topic may already have released that copy in the log.
        let mut message_logged = false;
        let to_groups: Vec<_> = to_groups
            .into_iter()
            .map(|(queue, members)| {
                // Adapted to the member that pulls it (its QoS, identifier) on the way out.
                let mut d = Delivery {
                    msg: msg.clone(),
                    qos: msg.qos,
                    retain: msg.retain,
                    subscription_ids: Vec::new(),
                    shared: Some(queue.key.clone()),
                    seq: 0,
                };
                self.log_shared(&queue, &mut d, &mut message_logged);
                (queue, d, members)
            })
            .collect();
        let mut to_sessions = Vec::new();
        let mut queued = 0;
        for t in targets {
            let mut d = Delivery {
                msg: msg.clone(),
                qos: t.qos,
                retain: t.retain,
                subscription_ids: t.subscription_ids,
                shared: t.shared,
                seq: 0,
            };
            if self.store.is_enabled() {
                self.log_enqueue(&t.handle, &mut d, &mut message_logged);
                to_sessions.push((t.handle, d));
            } else {
                // Nothing is logged: no order to keep, no list to build.
                queued += usize::from(self.deliver_to(&t.handle, d));
            }
        }
        if let Some(rec) = received {
            self.store.log_pending(rec);
        }
        // Records batched by the caller (Store::batch) go to the writer now, before any push.
        self.store.flush_batch();
        for (queue, d, members) in to_groups {
            if self.push_shared(&queue, d) {
                for m in &members {
                    m.handle.notify.notify_one();
                }
            }
        }
        for (handle, d) in to_sessions {
            queued += usize::from(self.deliver_to(&handle, d));
        }
        Ok(queued)
    }

    /// Queues `d` for `handle`; a refused delivery is counted (and logged as skipped if the
    /// store had it). Returns whether it was queued.
    pub(crate) fn deliver_to(&self, handle: &SessionHandle, d: Delivery) -> bool {
        let seq = d.seq;
        let qos0 = d.qos == QoS::AtMostOnce;
        let mut evicted = Evicted::default();
        let r = handle.deliver(d, &mut evicted);
        if evicted.count > 0 {
            // `drop_oldest`: the evicted ones are gone from the log's queue too.
            for seq in evicted.seqs {
                self.store.delivery_skipped(handle.client_id.clone(), seq);
            }
            self.stats
                .add(Counter::DroppedQueueFullOldest, evicted.count as u64);
        }
        let why = match r {
            Ok(()) => return true,
            Err(Dropped::QueueFull) if qos0 && handle.shaped.load(Ordering::Relaxed) => {
                Counter::DroppedRate
            }
            Err(Dropped::QueueFull) => Counter::DroppedQueueFull,
            Err(Dropped::OfflineQos0) => Counter::DroppedOfflineQos0,
        };
        if seq != 0 {
            self.store.delivery_skipped(handle.client_id.clone(), seq);
        }
        self.stats.add(why, 1);
        false
    }

    /// Records that `d` is queued for a persistent session (QoS 1/2 only; QoS 0 is never kept
    /// for offline sessions) and gives it its delivery number (`d.seq`). Writes the message
    /// itself first, once.
    pub(crate) fn log_enqueue(
        &self,
        handle: &SessionHandle,
        d: &mut Delivery,
        message_logged: &mut bool,
    ) {
        if !self.store.is_enabled()
            || d.qos == QoS::AtMostOnce
            || !handle.persistent.load(Ordering::Relaxed)
        {
            return;
        }
        if !*message_logged {
            self.log_message(&d.msg);
            *message_logged = true;
        }
        d.seq = handle.next_seq.fetch_add(1, Ordering::Relaxed);
        self.store.message_queued(
            handle.client_id.clone(),
            d.seq,
            d.msg.id,
            d.qos,
            d.retain,
            d.subscription_ids.clone(),
            d.shared.clone(),
        );
    }

    /// Logs message `msg` itself, with its priority when it has one (a queue recovered on disk
    /// finds its lanes without reading the messages back).
    pub(crate) fn log_message(&self, msg: &Arc<Message>) {
        self.store.message_stored(msg);
    }

    /// The priority of a message published to `topic` (`mqtt.priorities`): the highest of the
    /// rules whose filter matches it, 0 when none does (or none is configured: no matching at
    /// all, so the default costs nothing).
    pub fn priority_of(&self, topic: &str) -> u8 {
        self.config
            .mqtt
            .priorities
            .iter()
            .filter(|r| sluice_codec::topic_matches(&r.filter, topic))
            .map(|r| r.priority)
            .max()
            .unwrap_or(0)
    }

    /// Stores, replaces or deletes (empty payload) the retained message of its topic
    /// [MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-7].
    fn store_retained(&self, msg: &Arc<Message>) {
        let mut store = write(&self.retained);
        // `$SYS` status is republished every `sys.interval` and stale after a restart: kept in
        // memory only, so it never grows the log.
        let logged = self.store.is_enabled() && !crate::topic::is_broker_status(&msg.topic);
        // Logged under the retained lock, so the log's order matches the store's (sent to the
        // writer before the lock goes, even from inside a publisher's record batch).
        if msg.payload.is_empty() {
            store.remove(msg.topic.as_str());
            if logged {
                self.store.retained_cleared(msg.topic.as_mqtt_str().clone());
            }
        } else {
            store.insert(msg.topic.as_str(), msg.clone());
            if logged {
                self.log_message(msg);
                self.store
                    .retained_set(msg.topic.as_mqtt_str().clone(), msg.id);
            }
        }
        self.store.flush_batch();
    }

    /// Removes the retained message of `topic` (admin API), as a retained PUBLISH with an
    /// empty payload would, but without delivering anything. Returns whether there was one.
    pub fn clear_retained(&self, topic: &str) -> bool {
        let mut store = write(&self.retained);
        let Some(old) = store.remove(topic) else {
            return false;
        };
        if self.store.is_enabled() {
            self.store.retained_cleared(old.topic.as_mqtt_str().clone());
        }
        self.store.flush_batch();
        true
    }

    /// The retained messages to send for a new subscription, per Retain Handling
    /// [MQTT-3.8.4-4], [MQTT-3.3.1-9] .. [MQTT-3.3.1-11]. Shared subscriptions get none
    /// (retained messages are not sent for shared subscriptions, 4.8.2).
    pub fn retained_for(
        &self,
        filter: &TopicFilter,
        record: &SubscriptionRecord,
        existed: bool,
        who: &Requester<'_>,
        now: Instant,
    ) -> Vec<Delivery> {
        let options = &record.options;
        let send = match options.retain_handling {
            RetainHandling::OnSubscribe => true,
            RetainHandling::OnNewSubscription => !existed,
            RetainHandling::Never => false,
        };
        if !send || filter.shared().is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let store = read(&self.retained);
        store.for_each_match(filter.match_filter(), |topic, msg| {
            if msg.is_expired(now) || !self.access.may_read(who.username, who.client_id, topic) {
                return;
            }
            out.push(Delivery {
                msg: msg.clone(),
                qos: msg.qos.min(options.qos),
                retain: true,
                subscription_ids: record.identifier.into_iter().collect(),
                shared: None,
                seq: 0,
            });
        });
        out
    }
}
