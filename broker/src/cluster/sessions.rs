//! Persistent sessions that can resume on any node (cluster mode).
//!
//! * The stream `sluice_messages` keeps every QoS 1/2 message published on any node (its
//!   subjects `sluice.msg.>`; QoS 0 travels under `sluice.msg0.>`, never stored), for
//!   `cluster.messages_max_age_seconds` and up to `cluster.messages_max_bytes` (the oldest
//!   go first). Publishing nodes acknowledge a QoS 1/2 PUBLISH only once the stream has it
//!   ([`super::acks`]).
//! * The key-value bucket `sluice_sessions` holds one record per persistent session (key: the
//!   client id in base64url): its subscriptions with their options, expiry interval, username,
//!   owner node, whether a client is connected (else since when it is away), and its
//!   **checkpoint**: a stream sequence up to which the session has had everything (each
//!   message delivered and acknowledged, or never matching). Written by the owner on CONNECT,
//!   SUBSCRIBE / UNSUBSCRIBE and park; the checkpoint in batches (below), never per message.
//!   Every write by an owner is a compare-and-set on the record's revision: a node that lost
//!   the session to another one stops writing it.
//! * A client connecting to a node whose record names another owner: the node asks that owner
//!   (request `sluice.session.handover.{node}`) to hand the session over: it closes the
//!   client's connection there, writes the session's last state, forgets it (no longer
//!   delivering) and answers. No answer within [`HANDOVER_TIMEOUT`]: the owner is taken for
//!   dead. The new node reads the record again, claims it (compare-and-set: owner = itself),
//!   puts its subscriptions in force, answers CONNACK with Session Present 1, and replays the
//!   stream after the checkpoint through the session's subscriptions (matched on this node).
//!   An expired record (its node died before expiring it) is deleted instead, and a Clean
//!   Start deletes it.
//! * Checkpoints: once a second the sessions task reads the stream's last sequence; a session
//!   of this node whose queue and inflight window are empty gets as checkpoint the last
//!   sequence read one period before (a message stored before that read reached this node
//!   and was routed within the period, unless the node ran more than a second behind NATS),
//!   written at most every [`CHECKPOINT_WRITE_EVERY`] per session. Not while the session is
//!   still replaying, nor while this node's NATS connection is down or catching up.
//! * A node whose NATS connection came back catches up: it replays the stream after its
//!   sessions' oldest checkpoint into its persistent sessions, skipping what it routed live
//!   (the last 16,384 message ids it saw) and its own messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv::{Operation, Store as KvStore};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::Context;
use async_nats::Client;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sluice_codec::{QoS, RetainHandling, SubscriptionOptions, TopicFilter};
use tokio::sync::{mpsc, oneshot};

use super::{subject, wire, Inbound};
use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::message::ClientId;
use crate::routing::cluster_link::{Adopted, SessionState};
use crate::routing::Scope;
use crate::session::SubscriptionRecord;

/// The sessions bucket.
pub const BUCKET: &str = "sluice_sessions";
/// The messages stream.
pub const STREAM: &str = "sluice_messages";
/// Where a node is asked to hand a session over: `{prefix}.{node}`.
const HANDOVER_PREFIX: &str = "sluice.session.handover";
/// How long a node waits for the owner of a session to hand it over before it takes the
/// owner for dead.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a CONNECT waits for the first read of its session's record.
const FIRST_READ_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often checkpoints are considered.
const CHECKPOINT_PERIOD: Duration = Duration::from_secs(1);
/// The least time between two checkpoint writes of one session.
const CHECKPOINT_WRITE_EVERY: Duration = Duration::from_secs(5);

/// One subscription in a record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct SubRecord {
    f: String,
    q: u8,
    #[serde(default)]
    nl: bool,
    #[serde(default)]
    rap: bool,
    #[serde(default)]
    rh: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u32>,
}

/// A session's record in the bucket (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Record {
    owner: String,
    online: bool,
    /// Unix time (ms) of the last change; while offline, since when the client is away.
    since_ms: u64,
    expiry: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    subs: Vec<SubRecord>,
    checkpoint: u64,
}

impl Record {
    /// Whether the session expired by `now_ms` [MQTT-3.1.2-23] (counted from its last
    /// change when its node died with the client connected).
    fn expired(&self, now_ms: u64) -> bool {
        self.expiry != u32::MAX && now_ms > self.since_ms + u64::from(self.expiry) * 1000
    }

    fn state(&self) -> SessionState {
        let subscriptions = self
            .subs
            .iter()
            .filter_map(|s| {
                let filter =
                    TopicFilter::new(sluice_codec::Str::try_from(s.f.as_str()).ok()?).ok()?;
                let options = SubscriptionOptions {
                    qos: QoS::from_u8(s.q).unwrap_or(QoS::AtMostOnce),
                    no_local: s.nl,
                    retain_as_published: s.rap,
                    retain_handling: match s.rh {
                        1 => RetainHandling::OnNewSubscription,
                        2 => RetainHandling::Never,
                        _ => RetainHandling::OnSubscribe,
                    },
                };
                Some((
                    filter,
                    SubscriptionRecord {
                        options,
                        identifier: s.id,
                    },
                ))
            })
            .collect();
        SessionState {
            subscriptions,
            expiry_interval: self.expiry,
            username: self.username.as_deref().map(Arc::from),
            online: self.online,
        }
    }

    /// Takes `state` in (keeping the username when `state` does not know it).
    fn update(&mut self, state: &SessionState, now_ms: u64) {
        self.online = state.online;
        self.since_ms = now_ms;
        self.expiry = state.expiry_interval;
        if let Some(u) = &state.username {
            self.username = Some(u.to_string());
        }
        self.subs = state
            .subscriptions
            .iter()
            .map(|(f, r)| SubRecord {
                f: f.as_str().to_owned(),
                q: r.options.qos as u8,
                nl: r.options.no_local,
                rap: r.options.retain_as_published,
                rh: r.options.retain_handling as u8,
                id: r.identifier,
            })
            .collect();
    }

    fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the sessions task is told.
#[derive(Debug)]
pub(crate) enum Cmd {
    Saved(ClientId, SessionState),
    Ended(ClientId),
    /// A session this node claimed (an adoption), still to replay.
    Owned(ClientId, Box<Record>, u64),
    Release(ClientId, oneshot::Sender<()>),
    Replay(ClientId, u64),
    ReplayDone(ClientId),
    /// The node's NATS connection went down / came back.
    Disconnected,
    Reconnected,
    CatchUpDone(u64),
}

/// Everything the spawned parts (adoptions, hand-overs, replays) share.
pub(crate) struct Shared {
    node: String,
    kv: KvStore,
    js: Context,
    main: Client,
    broker: Weak<Broker>,
    inbound: Arc<Inbound>,
    tx: mpsc::UnboundedSender<Cmd>,
}

/// Opens (creating if needed) the stream and the bucket; returns the bucket and the
/// replica count of each.
pub async fn open(
    js: &Context,
    config: &ClusterConfig,
    clustered: bool,
) -> Result<(KvStore, usize, usize), String> {
    let max_age = Duration::from_secs(config.messages_max_age_seconds);
    let max_bytes = i64::try_from(config.messages_max_bytes).unwrap_or(i64::MAX);
    let stream_replicas =
        super::retained::create_replicated(js, STREAM, clustered, |replicas| StreamConfig {
            name: STREAM.into(),
            description: Some(
                "Sluice: the QoS 1/2 messages of the cluster, for sessions that move between nodes"
                    .into(),
            ),
            subjects: vec![format!("{}.>", subject::MSG_PREFIX)],
            max_age,
            max_bytes,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    let (kv, kv_replicas) = super::retained::open_kv(
        js,
        BUCKET,
        "Sluice: persistent sessions (subscriptions, expiry, owner node, checkpoint)",
        clustered,
    )
    .await?;
    Ok((kv, stream_replicas, kv_replicas))
}

/// Starts the sessions task and the hand-over responder; returns what the cluster task keeps.
pub(crate) async fn start(
    kv: KvStore,
    js: Context,
    main: Client,
    inbound: Arc<Inbound>,
    tx: mpsc::UnboundedSender<Cmd>,
    rx: mpsc::UnboundedReceiver<Cmd>,
) -> Result<Arc<Shared>, String> {
    let node = inbound.node.clone();
    let handovers = main
        .subscribe(format!("{HANDOVER_PREFIX}.{node}"))
        .await
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        node,
        kv,
        js,
        main,
        broker: inbound.broker.clone(),
        inbound,
        tx,
    });
    tokio::spawn(handover_loop(handovers, shared.clone()));
    let task = Task {
        shared: shared.clone(),
        owned: HashMap::new(),
        last_seq: 0,
        gap: false,
    };
    tokio::spawn(task.run(rx));
    Ok(shared)
}

/// The bucket key of a client id.
fn key(client_id: &str) -> String {
    wire::retained_key(client_id)
}

/// A record this node owns, as last written.
struct Owned {
    record: Record,
    revision: u64,
    written: Instant,
    /// Replaying the stream into it: its checkpoint must not move yet.
    replaying: bool,
}

struct Task {
    shared: Arc<Shared>,
    owned: HashMap<ClientId, Owned>,
    /// The stream's last sequence at the previous period.
    last_seq: u64,
    /// The NATS connection went down and this node has not caught up yet.
    gap: bool,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut tick = tokio::time::interval(CHECKPOINT_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => return,
                },
                _ = tick.tick() => {
                    if self.shared.broker.strong_count() == 0 {
                        return;
                    }
                    self.checkpoints().await;
                }
            }
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Saved(client_id, state) => self.saved(client_id, &state).await,
            Cmd::Ended(client_id) => {
                if let Some(o) = self.owned.remove(&client_id) {
                    let _ = self
                        .shared
                        .kv
                        .delete_expect_revision(key(&client_id), Some(o.revision))
                        .await;
                }
            }
            Cmd::Owned(client_id, record, revision) => {
                self.owned.insert(
                    client_id,
                    Owned {
                        record: *record,
                        revision,
                        written: Instant::now(),
                        replaying: true,
                    },
                );
            }
            Cmd::Release(client_id, done) => {
                self.owned.remove(&client_id);
                let _ = done.send(());
            }
            Cmd::Replay(client_id, from) => {
                if let Some(o) = self.owned.get_mut(&client_id) {
                    o.replaying = true;
                }
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let only: HashSet<ClientId> = [client_id.clone()].into();
                    if let Err(e) = replay(&shared, from, &only, false).await {
                        tracing::warn!(%client_id, error = e, "cluster: the session's messages could not all be replayed from the stream");
                    }
                    let _ = shared.tx.send(Cmd::ReplayDone(client_id));
                });
            }
            Cmd::ReplayDone(client_id) => {
                if let Some(o) = self.owned.get_mut(&client_id) {
                    o.replaying = false;
                }
            }
            Cmd::Disconnected => self.gap = true,
            Cmd::Reconnected => {
                let Some(from) = self.owned.values().map(|o| o.record.checkpoint).min() else {
                    self.gap = false;
                    return;
                };
                let only: HashSet<ClientId> = self.owned.keys().cloned().collect();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let last = match replay(&shared, from, &only, true).await {
                        Ok(last) => last,
                        Err(e) => {
                            tracing::warn!(error = e, "cluster: catching up after the NATS reconnect failed; trying again at the next reconnect");
                            0
                        }
                    };
                    let _ = shared.tx.send(Cmd::CatchUpDone(last));
                });
            }
            Cmd::CatchUpDone(last) => {
                if last > 0 {
                    tracing::info!(
                        up_to = last,
                        "cluster: caught up from the stream after the NATS reconnect"
                    );
                    self.gap = false;
                    self.last_seq = self.last_seq.min(last);
                }
            }
        }
    }

    /// A session of this node changed: its record is written (created if new here).
    async fn saved(&mut self, client_id: ClientId, state: &SessionState) {
        let now = now_ms();
        let k = key(&client_id);
        match self.owned.get_mut(&client_id) {
            Some(o) => {
                o.record.update(state, now);
                o.record.owner.clone_from(&self.shared.node);
                match self
                    .shared
                    .kv
                    .update(&k, o.record.to_bytes(), o.revision)
                    .await
                {
                    Ok(rev) => {
                        o.revision = rev;
                        o.written = Instant::now();
                        if !state.online {
                            tracing::info!(%client_id, "cluster: session recorded as offline in the bucket");
                        }
                    }
                    Err(e) => {
                        tracing::info!(%client_id, error = %e, "cluster: session record not written (another node has the session now)");
                        self.owned.remove(&client_id);
                    }
                }
            }
            None => {
                let mut record = Record {
                    owner: self.shared.node.clone(),
                    online: state.online,
                    since_ms: now,
                    expiry: state.expiry_interval,
                    username: None,
                    subs: Vec::new(),
                    // What came before this node knew the session is not its: from here.
                    checkpoint: self.last_seq,
                };
                record.update(state, now);
                match self.shared.kv.put(&k, record.to_bytes()).await {
                    Ok(revision) => {
                        if !state.online {
                            tracing::info!(%client_id, "cluster: session recorded as offline in the bucket");
                        }
                        self.owned.insert(
                            client_id,
                            Owned {
                                record,
                                revision,
                                written: Instant::now(),
                                replaying: false,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(%client_id, error = %e, "cluster: session record not written: the session cannot move to another node until its next change")
                    }
                }
            }
        }
    }

    /// Moves the checkpoints of this node's idle sessions (see the module's comment).
    async fn checkpoints(&mut self) {
        let info = match self.shared.js.get_stream(STREAM).await {
            Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).ok(),
            Err(_) => None,
        };
        let Some(now_last) = info else { return };
        let upto = self.last_seq;
        self.last_seq = now_last;
        if self.gap || upto == 0 {
            return;
        }
        let Some(broker) = self.shared.broker.upgrade() else {
            return;
        };
        let due: Vec<ClientId> = self
            .owned
            .iter()
            .filter(|(id, o)| {
                !o.replaying
                    && o.record.checkpoint < upto
                    && o.written.elapsed() >= CHECKPOINT_WRITE_EVERY
                    && idle(&broker, id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        drop(broker);
        for client_id in due {
            let Some(o) = self.owned.get_mut(&client_id) else {
                continue;
            };
            o.record.checkpoint = upto;
            match self
                .shared
                .kv
                .update(key(&client_id), o.record.to_bytes(), o.revision)
                .await
            {
                Ok(rev) => {
                    o.revision = rev;
                    o.written = Instant::now();
                }
                Err(e) => {
                    tracing::info!(%client_id, error = %e, "cluster: checkpoint not written (another node has the session now)");
                    self.owned.remove(&client_id);
                }
            }
        }
    }
}

/// Whether `client_id`'s session here has nothing queued and nothing in flight.
fn idle(broker: &Broker, client_id: &str) -> bool {
    let Some(h) = broker.session(client_id) else {
        return false;
    };
    let inflight = match &h.ownership().parked {
        Some(s) => s.inflight_len(),
        None => h.inflight.load(std::sync::atomic::Ordering::Relaxed) as usize,
    };
    inflight == 0 && h.outbox().is_empty()
}

/// Answers other nodes' hand-over requests: the session named goes (see
/// [`Broker::session_moved`]), its last state written first.
async fn handover_loop(mut sub: async_nats::Subscriber, shared: Arc<Shared>) {
    while let Some(m) = sub.next().await {
        let Some(broker) = shared.broker.upgrade() else {
            return;
        };
        let Ok(client_id) = std::str::from_utf8(&m.payload) else {
            continue;
        };
        let client_id: ClientId = client_id.into();
        let main = shared.main.clone();
        tokio::spawn(async move {
            broker.session_moved(&client_id).await;
            if let Some(link) = broker.router.cluster() {
                link.release(&client_id).await;
            }
            if let Some(reply) = m.reply {
                let _ = main.publish(reply, bytes::Bytes::from_static(b"ok")).await;
                let _ = main.flush().await;
            }
        });
    }
}

/// A client connected to this node: takes its session from the bucket (and from its owner
/// node), see the module's comment.
pub(crate) async fn adopt(
    shared: Arc<Shared>,
    client_id: ClientId,
    clean_start: bool,
) -> Option<Adopted> {
    let k = key(&client_id);
    let get = |k: String| {
        let kv = shared.kv.clone();
        async move {
            let e = kv.entry(k).await.ok()??;
            if e.operation != Operation::Put {
                return None;
            }
            let record: Record = serde_json::from_slice(&e.value).ok()?;
            Some((record, e.revision))
        }
    };
    // A bucket JetStream cannot serve now (no majority, no leader) must not hold the CONNECT
    // up: the client starts with this node's view of its session (logged).
    let first = match tokio::time::timeout(FIRST_READ_TIMEOUT, get(k.clone())).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(%client_id, "cluster: the session bucket did not answer in time: the client starts with this node's view of its session");
            None
        }
    };
    let (record, _) = first?;
    if record.owner == shared.node {
        // This node's own session: what it has is the session, unless it lost it (a
        // restart without the durable store): then the bucket's copy is taken.
        let broker = shared.broker.upgrade()?;
        if clean_start || broker.parked_filters(&client_id).is_some() {
            return None;
        }
    } else {
        let subject = format!("{HANDOVER_PREFIX}.{}", record.owner);
        let asked = shared
            .main
            .request(subject, bytes::Bytes::copy_from_slice(client_id.as_bytes()));
        match tokio::time::timeout(HANDOVER_TIMEOUT, asked).await {
            Ok(Ok(_)) => {}
            _ => {
                tracing::warn!(%client_id, owner = record.owner, "cluster: the session's node did not hand it over: taken from the bucket as it is (that node is gone or unreachable)")
            }
        }
    }
    for _ in 0..3 {
        let (mut record, revision) = get(k.clone()).await?;
        let now = now_ms();
        let expired = record.expired(now);
        if clean_start || expired {
            let _ = shared
                .kv
                .delete_expect_revision(k.clone(), Some(revision))
                .await;
            if expired {
                tracing::info!(%client_id, "cluster: session expired: not resumed");
            }
            return None;
        }
        record.owner.clone_from(&shared.node);
        record.online = true;
        record.since_ms = now;
        match shared.kv.update(&k, record.to_bytes(), revision).await {
            Ok(rev) => {
                let adopted = Adopted {
                    state: record.state(),
                    checkpoint: record.checkpoint,
                };
                let _ = shared
                    .tx
                    .send(Cmd::Owned(client_id.clone(), Box::new(record), rev));
                tracing::info!(%client_id, checkpoint = adopted.checkpoint, "cluster: session taken over from another node");
                return Some(adopted);
            }
            Err(e) => {
                tracing::info!(%client_id, error = %e, "cluster: session record changed while claiming it; reading it again")
            }
        }
    }
    None
}

/// Replays the stream's messages after `from` (up to its last sequence now) into the plain
/// subscriptions of the sessions in `only`; `catch_up`: skip this node's own messages and
/// those it routed live (a NATS reconnect). Returns the last sequence replayed to.
async fn replay(
    shared: &Shared,
    from: u64,
    only: &HashSet<ClientId>,
    catch_up: bool,
) -> Result<u64, String> {
    let mut stream = shared
        .js
        .get_stream(STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    if last <= from {
        return Ok(last);
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{}.>", subject::MSG_PREFIX),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let accept = |c: &ClientId| only.contains(c);
    let mut routed = 0usize;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let info = m.info().map_err(|e| e.to_string())?;
        let seq = info.stream_sequence;
        let age = {
            let published = info.published.unix_timestamp_nanos();
            let now = i128::from(now_ms()) * 1_000_000;
            Duration::from_nanos(u64::try_from(now - published).unwrap_or(0))
        };
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let skip = catch_up && {
            let from_node = header(wire::NODE_HEADER);
            from_node.as_deref() == Some(shared.node.as_str())
                || match (from_node, header(wire::ID_HEADER)) {
                    (Some(n), Some(id)) => !shared.inbound.first_seen(&format!("{n}/{id}")),
                    _ => false,
                }
        };
        if !skip {
            if let (Some(broker), Ok(mut msg)) = (
                shared.broker.upgrade(),
                wire::decode(&m.payload, Instant::now(), age),
            ) {
                if !msg.is_expired(Instant::now()) {
                    msg.priority = broker.router.priority_of(&msg.topic);
                    routed += broker
                        .router
                        .publish_remote(Arc::new(msg), Scope::Replay(&accept));
                }
            }
        }
        if seq >= last {
            break;
        }
    }
    tracing::info!(from, to = last, routed, "cluster: replayed the stream");
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_expire() {
        let f = TopicFilter::new(sluice_codec::Str::try_from("a/+").unwrap()).unwrap();
        let state = SessionState {
            subscriptions: vec![(
                f,
                SubscriptionRecord {
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::Never,
                    },
                    identifier: Some(7),
                },
            )],
            expiry_interval: 60,
            username: Some("u".into()),
            online: false,
        };
        let mut r = Record {
            owner: "n1".into(),
            online: true,
            since_ms: 0,
            expiry: 0,
            username: None,
            subs: Vec::new(),
            checkpoint: 5,
        };
        r.update(&state, 1_000);
        let back: Record = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.state(), state);
        assert!(!back.expired(61_000));
        assert!(back.expired(61_001));
        let never = Record {
            expiry: u32::MAX,
            ..back
        };
        assert!(!never.expired(u64::MAX / 2));
    }
}
