//! Cluster mode (`[cluster]`): several Sluice nodes on one NATS JetStream act as one broker.
//!
//! * Routing: a message published on a node goes to NATS on the subject derived from its
//!   topic ([`subject`]); every node subscribes in NATS to the subjects of the filters its
//!   clients subscribe to (interest), receives what matches, and routes it to its own
//!   subscribers as if it had been published locally ([`Router::publish_remote`]).
//! * Retained messages live in a JetStream key-value bucket, mirrored in every node's memory
//!   ([`retained`]).
//! * Shared subscriptions: each node with members of `$share/{group}/{filter}` holds a NATS
//!   queue subscription for that group; NATS gives each message to one node's subscription,
//!   and that node picks one of its members by the group's strategy.
//!
//! * Takeover across nodes: a node announces each client id that connects to it; another
//!   node with a connection of that client id closes it as a local takeover would.
//!
//! * Sessions: QoS 1/2 messages go to the JetStream stream `sluice_messages` (a PUBACK waits
//!   for JetStream's acknowledgement, [`acks`]); persistent sessions are recorded in the bucket
//!   `sluice_sessions` and move to the node their client connects to ([`sessions`]).
//!
//! One cluster task per node owns the NATS connections. Routing never waits for it: it queues
//! events on a queue bounded in bytes ([`crate::routing::cluster_link`]). Messages from NATS
//! are routed by one small task per NATS subscription, straight into the router (which never
//! awaits either). Every task here holds the broker weakly and ends when it goes.

pub mod acks;
pub mod retained;
pub mod sessions;
pub mod subject;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Subscriber};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use sluice_codec::TopicFilter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::locks::lock;
use crate::routing::cluster_link::{ClusterEvent, ClusterInbox};
use crate::routing::{Router, Scope};

/// How long joining NATS may take at start-up before the node gives up (exit 2).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest subject sent or subscribed to: NATS closes a connection whose protocol line
/// (`HPUB subject sizes`) passes its `max_control_line` (4 KiB by default).
const MAX_SUBJECT_BYTES: usize = 3_584;

/// Bytes the headers add to a message, at most (names, node name, id, framing).
const HEADER_BYTES: usize = 160;

/// Where nodes announce the client ids that connect to them (takeover across nodes).
const SESSIONS_SUBJECT: &str = "sluice.session.opened";

/// Message identities remembered to drop the extra copies NATS sends when several of a node's
/// subscriptions match one message (they arrive next to each other). ~100 bytes each.
const DEDUPE_WINDOW: usize = 16_384;

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.nats = {url}: cannot connect to NATS: {reason}")]
    Connect { url: String, reason: String },
    #[error("cluster.nats = {url}: JetStream: {reason} (is the server started with -js?)")]
    JetStream { url: String, reason: String },
}

/// Joins the cluster: connects to NATS, opens the retained bucket, and starts the cluster
/// task with `inbox` (from [`Router::enable_cluster`], taken before any subscription was
/// restored). Returns once the node is part of the cluster.
pub async fn start(broker: &Arc<Broker>, inbox: ClusterInbox) -> Result<(), ClusterError> {
    let Some(config) = broker.config.cluster.clone() else {
        return Ok(());
    };
    // Plain subscriptions and publishing share a connection with `no_echo`: NATS does not
    // send this node's own messages back to it. Queue subscriptions (shared groups) have their
    // own connection: there the node's own messages must come back when NATS picks its group.
    let (cmds, cmds_rx) = mpsc::unbounded_channel();
    let main = connect(&config, "routing", true, Some(cmds.clone())).await?;
    let queues = connect(&config, "shared", false, None).await?;
    let js = async_nats::jetstream::new(main.clone());
    let clustered = main.server_info().cluster.is_some();
    let jetstream_error = |reason| ClusterError::JetStream {
        url: config.nats.clone(),
        reason,
    };
    let (kv, replicas) = retained::open(&js, clustered)
        .await
        .map_err(jetstream_error)?;
    let (sessions_kv, stream_replicas, sessions_replicas) = sessions::open(&js, &config, clustered)
        .await
        .map_err(jetstream_error)?;
    tokio::spawn(retained::watch_loop(kv.clone(), Arc::downgrade(broker)));
    // Takeover across nodes: subscribed (and known to the server: flush) before the node
    // accepts clients.
    let sessions = main
        .subscribe(SESSIONS_SUBJECT)
        .await
        .map_err(|e| ClusterError::Connect {
            url: config.nats.clone(),
            reason: e.to_string(),
        })?;
    main.flush().await.map_err(|e| ClusterError::Connect {
        url: config.nats.clone(),
        reason: e.to_string(),
    })?;
    tokio::spawn(takeovers(
        sessions,
        config.node.clone(),
        Arc::downgrade(broker),
    ));
    let inbound = Arc::new(Inbound {
        node: config.node.clone(),
        broker: Arc::downgrade(broker),
        seen: Mutex::new(Seen::default()),
    });
    let sessions = sessions::start(
        sessions_kv,
        js.clone(),
        main.clone(),
        inbound.clone(),
        cmds.clone(),
        cmds_rx,
    )
    .await
    .map_err(|reason| ClusterError::Connect {
        url: config.nats.clone(),
        reason,
    })?;
    main.flush().await.map_err(|e| ClusterError::Connect {
        url: config.nats.clone(),
        reason: e.to_string(),
    })?;
    let node = ClusterTask {
        inbound,
        main,
        queues,
        acker: acks::Acker::spawn(js),
        sessions,
        cmds,
        retained: retained::Writer::spawn(kv),
        boot: rand::random::<u32>(),
        seq: 0,
        subscriptions: HashMap::new(),
    };
    tracing::info!(
        node = %config.node,
        nats = %config.nats,
        retained_replicas = replicas,
        messages_replicas = stream_replicas,
        sessions_replicas,
        "cluster: joined"
    );
    tokio::spawn(node.run(inbox));
    Ok(())
}

/// `sessions`: told when the connection goes down and comes back (the routing connection:
/// its persistent sessions catch up from the stream).
async fn connect(
    config: &ClusterConfig,
    role: &str,
    no_echo: bool,
    sessions: Option<mpsc::UnboundedSender<sessions::Cmd>>,
) -> Result<Client, ClusterError> {
    let node = config.node.clone();
    let role_name = role.to_owned();
    // Messages the NATS client dropped because a subscription's buffer (4,096 messages) was
    // full: this node routes slower than NATS delivers. Logged once per 1,000.
    let slow = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("sluice {} {role}", config.node))
        .connection_timeout(CONNECT_TIMEOUT)
        .event_callback(move |event| {
            let (node, role, slow) = (node.clone(), role_name.clone(), slow.clone());
            if let Some(tx) = &sessions {
                match event {
                    async_nats::Event::Connected => {
                        let _ = tx.send(sessions::Cmd::Reconnected);
                    }
                    async_nats::Event::Disconnected => {
                        let _ = tx.send(sessions::Cmd::Disconnected);
                    }
                    _ => {}
                }
            }
            async move {
                match event {
                    async_nats::Event::SlowConsumer(_) => {
                        let n = slow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n % 1000 == 0 {
                            tracing::warn!(%node, role, dropped = n + 1, "cluster: this node routes slower than NATS delivers: messages from other nodes dropped (NATS slow consumer)");
                        }
                    }
                    async_nats::Event::Connected => {
                        tracing::info!(%node, role, "cluster: NATS connected")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%node, role, "cluster: NATS disconnected; reconnecting (messages to and from other nodes wait or are lost meanwhile)")
                    }
                    other => tracing::warn!(%node, role, event = %other, "cluster: NATS"),
                }
            }
        });
    if no_echo {
        options = options.no_echo();
    }
    let connecting = options.connect(config.nats.as_str());
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(ClusterError::Connect {
            url: config.nats.clone(),
            reason: e.to_string(),
        }),
        Err(_) => Err(ClusterError::Connect {
            url: config.nats.clone(),
            reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
        }),
    }
}

/// The cluster task's state.
struct ClusterTask {
    inbound: Arc<Inbound>,
    /// Publishing and plain subscriptions (`no_echo`).
    main: Client,
    /// Queue subscriptions of shared groups.
    queues: Client,
    retained: retained::Writer,
    /// Sends QoS 1/2 messages to the stream and answers tickets after their acknowledgements.
    acker: acks::Acker,
    /// What adoptions share with the sessions task.
    sessions: Arc<sessions::Shared>,
    /// The sessions task's queue.
    cmds: mpsc::UnboundedSender<sessions::Cmd>,
    /// Random per start: with `seq`, the identity of each message this node sends.
    boot: u32,
    seq: u64,
    /// The NATS subscriptions of each filter this node has subscribers for: the tasks that
    /// route what they receive (aborting one drops its subscriber: NATS UNSUB).
    subscriptions: HashMap<TopicFilter, Vec<JoinHandle<()>>>,
}

impl ClusterTask {
    async fn run(mut self, mut inbox: ClusterInbox) {
        while let Some(event) = inbox.recv().await {
            match event {
                ClusterEvent::Publish(msg) => self.publish(&msg).await,
                ClusterEvent::SessionOpened(client_id) => {
                    let mut headers = HeaderMap::new();
                    headers.insert(wire::NODE_HEADER, self.inbound.node.as_str());
                    let body = bytes::Bytes::copy_from_slice(client_id.as_bytes());
                    if let Err(e) = self
                        .main
                        .publish_with_headers(SESSIONS_SUBJECT, headers, body)
                        .await
                    {
                        tracing::warn!(%client_id, error = %e, "cluster: other nodes not told of a connection (no takeover there)");
                    }
                }
                ClusterEvent::SessionSaved { client_id, state } => {
                    let _ = self.cmds.send(sessions::Cmd::Saved(client_id, state));
                }
                ClusterEvent::SessionEnded(client_id) => {
                    let _ = self.cmds.send(sessions::Cmd::Ended(client_id));
                }
                ClusterEvent::Adopt {
                    client_id,
                    clean_start,
                    reply,
                } => {
                    let shared = self.sessions.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(sessions::adopt(shared, client_id, clean_start).await);
                    });
                }
                ClusterEvent::Replay { client_id, from } => {
                    // After the session's Interest events: its NATS subscriptions are sent
                    // (NATS takes a connection's requests in order), so the replay's end,
                    // read next, leaves nothing between it and live routing.
                    let _ = self.cmds.send(sessions::Cmd::Replay(client_id, from));
                }
                ClusterEvent::Release { client_id, done } => {
                    let _ = self.cmds.send(sessions::Cmd::Release(client_id, done));
                }
                ClusterEvent::Ticket { store, reply } => self.acker.ticket(store, reply),
                ClusterEvent::Interest { filter, added } => {
                    if added {
                        self.subscribe(filter).await;
                    } else if let Some(tasks) = self.subscriptions.remove(&filter) {
                        tracing::debug!(%filter, "cluster: unsubscribed");
                        for t in tasks {
                            t.abort();
                        }
                    }
                }
            }
        }
        // The broker is gone: stop routing, let NATS have what was sent.
        for t in self.subscriptions.values().flatten() {
            t.abort();
        }
        let _ = self.main.flush().await;
    }

    async fn publish(&mut self, msg: &crate::message::Message) {
        let body = match wire::encode(msg, Instant::now()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(topic = %msg.topic, error = %e, "cluster: message not sent to the other nodes");
                return;
            }
        };
        self.seq += 1;
        let id = format!("{:x}.{:x}", self.boot, self.seq);
        let mut headers = HeaderMap::new();
        headers.insert(wire::NODE_HEADER, self.inbound.node.as_str());
        headers.insert(wire::ID_HEADER, id.as_str());
        // QoS 1/2 under `sluice.msg`, kept by the stream; QoS 0 under `sluice.msg0`.
        let stored = msg.qos != sluice_codec::QoS::AtMostOnce;
        let prefix = if stored {
            subject::MSG_PREFIX
        } else {
            subject::QOS0_PREFIX
        };
        let subject = subject::topic_subject_in(prefix, msg.topic.as_str());
        let max_payload = self.main.server_info().max_payload;
        if subject.len() > MAX_SUBJECT_BYTES || body.len() + HEADER_BYTES > max_payload {
            tracing::warn!(topic = %msg.topic, bytes = body.len(), max_payload, "cluster: message too large for NATS (max_payload) or topic too long for a subject: delivered on this node only");
            return;
        }
        if stored {
            let node_id = format!("{}/{id}", self.inbound.node);
            self.acker
                .publish(subject, headers, &node_id, body.clone())
                .await;
        } else if let Err(e) = self
            .main
            .publish_with_headers(subject, headers, body.clone())
            .await
        {
            tracing::warn!(topic = %msg.topic, error = %e, "cluster: message not sent to the other nodes");
        }
        if msg.retain {
            let value = (!msg.payload.is_empty()).then_some(body);
            self.retained.set(msg.topic.as_str(), value);
        }
    }

    async fn subscribe(&mut self, filter: TopicFilter) {
        let shared = filter.shared().is_some();
        let mut tasks = Vec::new();
        let subjects = subject::PREFIXES
            .iter()
            .flat_map(|p| subject::filter_subjects_in(p, filter.match_filter()));
        for subject in subjects {
            if subject.len() > MAX_SUBJECT_BYTES {
                tracing::warn!(%filter, "cluster: filter too long for a NATS subject: it gets messages published on this node only");
                continue;
            }
            let sub = if shared {
                let queue = queue_group(&filter);
                self.queues.queue_subscribe(subject.clone(), queue).await
            } else {
                self.main.subscribe(subject.clone()).await
            };
            match sub {
                Ok(sub) => {
                    let kind = shared.then(|| filter.clone());
                    tasks.push(tokio::spawn(forward(sub, self.inbound.clone(), kind)));
                }
                Err(e) => {
                    tracing::warn!(%filter, subject, error = %e, "cluster: NATS subscription failed; messages from other nodes miss this filter")
                }
            }
        }
        tracing::debug!(%filter, "cluster: subscribed");
        self.subscriptions.insert(filter, tasks);
    }
}

/// Closes this node's connection of each client id that connected to another node. One at
/// a time: a takeover waits (bounded) for the old connection to hand its session over.
async fn takeovers(mut sub: Subscriber, node: String, broker: Weak<Broker>) {
    while let Some(m) = sub.next().await {
        let from = m
            .headers
            .as_ref()
            .and_then(|h| h.get(wire::NODE_HEADER))
            .map(|v| v.as_str().to_owned());
        if from.as_deref() == Some(node.as_str()) {
            continue;
        }
        let Ok(client_id) = std::str::from_utf8(&m.payload) else {
            continue;
        };
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if broker.taken_over_elsewhere(client_id).await {
            tracing::info!(client_id, by = ?from, "cluster: client connected to another node: its connection here taken over");
        }
    }
}

/// The NATS queue group of a shared subscription group: one per `$share/{group}/{filter}`
/// (NATS queue names cannot hold every character a group name can, so a hash of it).
fn queue_group(key: &TopicFilter) -> String {
    let digest = Sha256::digest(key.as_str().as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sluice-share-{hex}")
}

/// What the routing tasks share.
pub(crate) struct Inbound {
    node: String,
    broker: Weak<Broker>,
    /// Recent message identities (see [`DEDUPE_WINDOW`]).
    seen: Mutex<Seen>,
}

/// A bounded set of recent message identities.
#[derive(Default)]
struct Seen {
    order: VecDeque<Arc<str>>,
    set: HashSet<Arc<str>>,
}

impl Seen {
    /// True the first time `id` is seen (within the window).
    fn first(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        let id: Arc<str> = id.into();
        if self.order.len() == DEDUPE_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.set.insert(id);
        true
    }
}

/// Routes what one NATS subscription receives: for plain subscriptions (`shared` None), to
/// this node's plain subscriptions; for a shared group's queue subscription, to that group.
async fn forward(mut sub: Subscriber, inbound: Arc<Inbound>, shared: Option<TopicFilter>) {
    while let Some(m) = sub.next().await {
        let Some(broker) = inbound.broker.upgrade() else {
            return;
        };
        inbound.route(&broker.router, &m, shared.as_ref());
    }
}

impl Inbound {
    /// True the first time message `id` (`{node}/{id}`) is seen here (within the window);
    /// marks it seen.
    pub(crate) fn first_seen(&self, id: &str) -> bool {
        lock(&self.seen).first(id)
    }

    fn route(&self, router: &Router, m: &async_nats::Message, shared: Option<&TopicFilter>) {
        // Borrowed from the message: no copy per message.
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        let from = header(wire::NODE_HEADER);
        // Overlapping filters: one NATS copy per matching subscription, each subscription read
        // by its own task; the first copy counts. The check and the routing happen under one
        // lock: otherwise one task could mark message k seen, another route k + 1 (having
        // skipped its own copy of k) before the first routed k, and a subscriber would get one
        // topic's messages out of order (4.6). Each subscription delivers in order, so the first
        // copy of k + 1 always comes after k was routed.
        let mut _in_order = None;
        if shared.is_none() {
            // This node routed its own messages to its plain subscribers already.
            if from == Some(self.node.as_str()) {
                return;
            }
            if let (Some(from), Some(id)) = (from, header(wire::ID_HEADER)) {
                let mut seen = lock(&self.seen);
                if !seen.first(&format!("{from}/{id}")) {
                    return;
                }
                _in_order = Some(seen);
            }
        }
        let mut msg = match wire::decode(&m.payload, Instant::now(), Duration::ZERO) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(subject = %m.subject, from = ?from, error = %e, "cluster: unreadable message from NATS ignored");
                return;
            }
        };
        msg.priority = router.priority_of(&msg.topic);
        let scope = match shared {
            Some(key) => Scope::RemoteShared(key),
            None => Scope::Remote,
        };
        router.publish_remote(Arc::new(msg), scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::locks::write;
    use crate::message::Message;
    use crate::routing::SubEntry;
    use crate::session::SessionHandle;
    use sluice_codec::{PublishProperties, QoS, SubscriptionOptions, TopicName};

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(sluice_codec::Str::try_from(s).unwrap()).unwrap()
    }

    /// Subscribes a new session `client` to `f` the way SUBSCRIBE does; returns its handle.
    fn subscribe(broker: &Broker, client: &str, f: &str) -> Arc<SessionHandle> {
        let handle = Arc::new(SessionHandle::new(client.into(), 1000, 1 << 20));
        let f = filter(f);
        let shared = f
            .shared()
            .is_some()
            .then(|| broker.router.join_group(&f, &handle));
        let entry = SubEntry {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
            identifier: None,
            handle: handle.clone(),
            username: None,
            shared,
        };
        if write(&broker.router.subscriptions)
            .subscribe(&f, client.into(), entry)
            .is_none()
        {
            broker.router.interest_changed(&f, true);
        }
        handle
    }

    fn message(topic: &str, retain: bool) -> Arc<Message> {
        Arc::new(Message::new(
            TopicName::try_from(topic).unwrap(),
            bytes::Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            retain,
            PublishProperties::default(),
            "publisher".into(),
            Instant::now(),
        ))
    }

    /// Local messages go to plain subscribers and NATS (shared groups get them back from
    /// NATS's queue group); remote ones to plain subscribers only; a queue group's message to
    /// its group only. Interest reaches the cluster task once per filter.
    #[tokio::test]
    async fn routing_scopes_in_cluster_mode() {
        let broker = Broker::new(Config::default(), None);
        let mut inbox = broker.router.enable_cluster().unwrap();
        let plain = subscribe(&broker, "a", "t/#");
        let also = subscribe(&broker, "b", "t/#");
        let member = subscribe(&broker, "c", "$share/g/t/#");
        let len = |h: &SessionHandle| h.outbox().len();

        assert_eq!(broker.router.publish(message("t/1", true)), 2);
        assert_eq!((len(&plain), len(&also), len(&member)), (1, 1, 0));
        assert!(crate::locks::read(&broker.router.retained)
            .get("t/1")
            .is_some());

        broker
            .router
            .publish_remote(message("t/2", true), Scope::Remote);
        assert_eq!((len(&plain), len(&also), len(&member)), (2, 2, 0));
        assert!(
            crate::locks::read(&broker.router.retained)
                .get("t/2")
                .is_none(),
            "remote retained messages come from the bucket"
        );

        let key = filter("$share/g/t/#");
        broker
            .router
            .publish_remote(message("t/3", false), Scope::RemoteShared(&key));
        assert_eq!((len(&plain), len(&also), len(&member)), (2, 2, 1));

        let mut events = Vec::new();
        drop(broker);
        while let Some(e) = inbox.recv().await {
            events.push(match e {
                ClusterEvent::Publish(m) => format!("publish {}", m.topic.as_str()),
                ClusterEvent::Interest { filter, added } => format!("{filter} {added}"),
                ClusterEvent::SessionOpened(c) => format!("opened {c}"),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(
            events,
            ["t/# true", "$share/g/t/# true", "publish t/1"],
            "only the local message goes to NATS"
        );
    }

    #[test]
    fn single_node_routes_everything_itself() {
        let broker = Broker::new(Config::default(), None);
        let plain = subscribe(&broker, "a", "t/#");
        let member = subscribe(&broker, "c", "$share/g/t/#");
        assert_eq!(broker.router.publish(message("t/1", false)), 2);
        assert_eq!((plain.outbox().len(), member.outbox().len()), (1, 1));
        assert!(broker.router.cluster().is_none());
    }

    #[test]
    fn seen_drops_repeats_within_the_window() {
        let mut s = Seen::default();
        assert!(s.first("n/1"));
        assert!(!s.first("n/1"));
        assert!(s.first("m/1"));
        for i in 0..DEDUPE_WINDOW {
            s.first(&format!("x/{i}"));
        }
        assert_eq!(s.order.len(), DEDUPE_WINDOW);
        assert_eq!(s.set.len(), DEDUPE_WINDOW);
        assert!(s.first("n/1"), "forgotten after the window");
    }

    #[test]
    fn queue_groups_differ_per_group_and_filter() {
        let f = |s: &str| TopicFilter::new(sluice_codec::Str::try_from(s).unwrap()).unwrap();
        let a = queue_group(&f("$share/g/a/#"));
        assert_ne!(a, queue_group(&f("$share/h/a/#")));
        assert_ne!(a, queue_group(&f("$share/g/a/+")));
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
