//! The hand-off from routing to the cluster task (cluster mode, `[cluster]`): what this node
//! publishes and which filters it has subscribers for. Routing runs in the publisher's task
//! and never awaits, so it only pushes an event onto a queue bounded in bytes; the one
//! cluster task per node (`crate::cluster`) drains it and talks to NATS.
//!
//! Without `[cluster]` the router has no link and none of this runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_codec::TopicFilter;
use tokio::sync::{mpsc, oneshot};

use crate::locks::lock;
use crate::message::{ClientId, Message};
use crate::session::SubscriptionRecord;

/// How long a CONNECT waits for the cluster to hand it a session from another node (the
/// owner's hand-over is bounded well below this; past it the client starts on what this node
/// has, logged).
pub const ADOPT_TIMEOUT: Duration = Duration::from_secs(30);

/// What another node needs to resume a persistent session (cluster mode): kept in the
/// JetStream bucket `sluice_sessions` (`crate::cluster::sessions`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    /// Each subscription with its options, by the filter as the client wrote it.
    pub subscriptions: Vec<(TopicFilter, SubscriptionRecord)>,
    /// Session Expiry Interval (seconds; u32::MAX: never).
    pub expiry_interval: u32,
    /// The client's username (the ACL's read check of its subscriptions); None: unknown here,
    /// keep what the bucket has.
    pub username: Option<Arc<str>>,
    /// A connection owns it now (false: parked, its expiry counting).
    pub online: bool,
}

/// A session this node took over from another node (or from the bucket, its node gone).
#[derive(Debug)]
pub struct Adopted {
    pub state: SessionState,
    /// The stream sequence after which the session may not have everything: replayed from
    /// there ([`ClusterLink::replay`]).
    pub checkpoint: u64,
}

/// The most bytes of messages waiting for the cluster task (topic + payload + overhead, as
/// queues count them: `Message::cost`). 64 MiB: several seconds of this node's traffic at the
/// rates measured in `bench/results/cluster.md`; past it a message is not sent to the other
/// nodes (counted, logged), never does the publisher wait.
pub const MAX_OUTBOUND_BYTES: usize = 64 * 1024 * 1024;

/// One thing the cluster task must do.
#[derive(Debug)]
pub enum ClusterEvent {
    /// A message published on this node (by a client, a will or a `$delayed` timer): send it
    /// to the other nodes (and, if retained, to the retained bucket).
    Publish(Arc<Message>),
    /// This node has its first subscription to `filter` (`added`), or its last one went.
    /// For a shared subscription `filter` is the whole `$share/{group}/{filter}`.
    Interest { filter: TopicFilter, added: bool },
    /// A client connected to this node: another node with a connection of that client id
    /// closes it (takeover across nodes, [MQTT-3.1.4-3]).
    SessionOpened(ClientId),
    /// A persistent session's state changed on this node (opened, subscribed, parked).
    SessionSaved {
        client_id: ClientId,
        state: SessionState,
    },
    /// A session of this node ended (expired, Clean Start, expiry 0): forget it cluster-wide.
    SessionEnded(ClientId),
    /// A client connected here: take its session from the node that has it, if another one
    /// does (it hands it over and forgets it), unless `clean_start` (then it is ended).
    Adopt {
        client_id: ClientId,
        clean_start: bool,
        reply: oneshot::Sender<Option<Adopted>>,
    },
    /// Route the QoS 1/2 messages of the stream after `from` to `client_id`'s subscriptions
    /// on this node (a session adopted from another node catching up).
    Replay { client_id: ClientId, from: u64 },
    /// Another node took `client_id`'s session: stop keeping it in the bucket; answered once
    /// everything queued before (the session's last state) is written.
    Release {
        client_id: ClientId,
        done: oneshot::Sender<()>,
    },
    /// Answer `reply` once every QoS 1/2 message queued before is in the stream (JetStream
    /// acknowledged it) and `store` (the local store's ticket, if any) answered: `false` if
    /// either failed.
    Ticket {
        store: Option<oneshot::Receiver<bool>>,
        reply: oneshot::Sender<bool>,
    },
}

/// Routing's end of the queue to the cluster task.
#[derive(Debug)]
pub struct ClusterLink {
    tx: mpsc::UnboundedSender<ClusterEvent>,
    /// Bytes of `Publish` events queued and not yet taken by the cluster task (the bound).
    queued_bytes: Arc<AtomicUsize>,
    /// Subscriptions per filter on this node: an event goes out only when a count goes from 0
    /// to 1 or back. Locked for one update, so events leave in the order the counts changed.
    interest: Mutex<HashMap<TopicFilter, usize>>,
    /// Messages not sent to the other nodes because the queue was full.
    pub dropped: AtomicU64,
}

/// The cluster task's end.
#[derive(Debug)]
pub struct ClusterInbox {
    rx: mpsc::UnboundedReceiver<ClusterEvent>,
    queued_bytes: Arc<AtomicUsize>,
}

/// A new link and its inbox.
pub fn channel() -> (ClusterLink, ClusterInbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        ClusterLink {
            tx,
            queued_bytes: queued_bytes.clone(),
            interest: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
        },
        ClusterInbox { rx, queued_bytes },
    )
}

impl ClusterLink {
    /// Queues `msg` for the other nodes, unless [`MAX_OUTBOUND_BYTES`] are waiting already
    /// (then it is dropped for them and counted). Never waits.
    pub fn publish(&self, msg: Arc<Message>) {
        let cost = msg.cost();
        let before = self.queued_bytes.fetch_add(cost, Ordering::Relaxed);
        if before + cost > MAX_OUTBOUND_BYTES || self.tx.send(ClusterEvent::Publish(msg)).is_err() {
            self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    dropped = n + 1,
                    "cluster: queue to NATS full (64 MiB) or cluster task gone: message not sent to the other nodes"
                );
            }
        }
    }

    /// A client with `client_id` connected to this node. Never dropped (one small event per
    /// CONNECT, bounded by the connection limits).
    pub fn session_opened(&self, client_id: &ClientId) {
        let _ = self.tx.send(ClusterEvent::SessionOpened(client_id.clone()));
    }

    /// A persistent session's state on this node changed (never dropped: one small event per
    /// CONNECT, SUBSCRIBE or park).
    pub fn session_saved(&self, client_id: &ClientId, state: SessionState) {
        let _ = self.tx.send(ClusterEvent::SessionSaved {
            client_id: client_id.clone(),
            state,
        });
    }

    /// A session of this node ended.
    pub fn session_ended(&self, client_id: &ClientId) {
        let _ = self.tx.send(ClusterEvent::SessionEnded(client_id.clone()));
    }

    /// Takes `client_id`'s session from another node if one has it (see
    /// [`ClusterEvent::Adopt`]); None: no session elsewhere (or it expired, or `clean_start`),
    /// or no answer within [`ADOPT_TIMEOUT`] (logged).
    pub async fn adopt(&self, client_id: &ClientId, clean_start: bool) -> Option<Adopted> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(ClusterEvent::Adopt {
                client_id: client_id.clone(),
                clean_start,
                reply,
            })
            .ok()?;
        match tokio::time::timeout(ADOPT_TIMEOUT, rx).await {
            Ok(r) => r.ok().flatten(),
            Err(_) => {
                tracing::warn!(%client_id, "cluster: no answer from the session bucket in time: the client starts with this node's view of its session");
                None
            }
        }
    }

    /// Replays the stream after `from` into `client_id`'s subscriptions here.
    pub fn replay(&self, client_id: &ClientId, from: u64) {
        let _ = self.tx.send(ClusterEvent::Replay {
            client_id: client_id.clone(),
            from,
        });
    }

    /// Stops keeping `client_id`'s session in the bucket (another node has it now); returns
    /// once its last state is written.
    pub async fn release(&self, client_id: &ClientId) {
        let (done, rx) = oneshot::channel();
        if self
            .tx
            .send(ClusterEvent::Release {
                client_id: client_id.clone(),
                done,
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// A ticket answered once the QoS 1/2 messages routed so far are in JetStream and `store`
    /// (the local store's ticket) answered (see [`ClusterEvent::Ticket`]). A closed ticket
    /// (the cluster task is gone) reads as a failure.
    pub fn ticket(&self, store: Option<oneshot::Receiver<bool>>) -> oneshot::Receiver<bool> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(ClusterEvent::Ticket { store, reply });
        rx
    }

    /// One more (`added`) or one less subscription to `filter` on this node.
    pub fn interest(&self, filter: &TopicFilter, added: bool) {
        let mut counts = lock(&self.interest);
        let changed = if added {
            let n = counts.entry(filter.clone()).or_insert(0);
            *n += 1;
            *n == 1
        } else {
            match counts.get_mut(filter) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    counts.remove(filter);
                    true
                }
                None => false,
            }
        };
        if changed {
            // Interest events are small and bounded by the subscriptions that exist; they are
            // never dropped (a lost one would leave NATS subscriptions out of step).
            let _ = self.tx.send(ClusterEvent::Interest {
                filter: filter.clone(),
                added,
            });
        }
    }
}

impl ClusterInbox {
    /// The next event; None once the router (and so the broker) is gone.
    pub async fn recv(&mut self) -> Option<ClusterEvent> {
        let event = self.rx.recv().await?;
        if let ClusterEvent::Publish(m) = &event {
            self.queued_bytes.fetch_sub(m.cost(), Ordering::Relaxed);
        }
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(sluice_codec::Str::try_from(s).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn interest_events_only_on_first_and_last() {
        let (link, mut inbox) = channel();
        let f = filter("a/+");
        link.interest(&f, true);
        link.interest(&f, true);
        link.interest(&f, false);
        link.interest(&f, false);
        link.interest(&f, false); // more removals than additions: ignored
        drop(link);
        let mut seen = Vec::new();
        while let Some(ClusterEvent::Interest { filter, added }) = inbox.recv().await {
            seen.push((filter.as_str().to_owned(), added));
        }
        assert_eq!(seen, vec![("a/+".into(), true), ("a/+".into(), false)]);
    }
}
