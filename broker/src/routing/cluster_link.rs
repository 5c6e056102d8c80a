//! The hand-off from routing to the cluster task (cluster mode, `[cluster]`): what this node
//! publishes and which filters it has subscribers for. Routing runs in the publisher's task
//! and never awaits, so it only pushes an event onto a queue bounded in bytes; the one
//! cluster task per node (`crate::cluster`) drains it and talks to NATS.
//!
//! Without `[cluster]` the router has no link and none of this runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sluice_codec::TopicFilter;
use tokio::sync::mpsc;

use crate::locks::lock;
use crate::message::{ClientId, Message};

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
