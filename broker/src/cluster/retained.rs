//! Retained messages in cluster mode: the JetStream key-value bucket `sluice_retained` holds
//! the retained message of every topic (key: the topic in base64url, value: the message as
//! [`super::wire`] encodes it). Each node writes the retained messages published on it and
//! watches the whole bucket, keeping its in-memory retained store (which new subscriptions
//! read without waiting for anything) equal to the bucket.
//!
//! The bucket is created with 3 replicas when the NATS cluster has 3 servers or more with
//! JetStream, else with 1 (a single server); the start-up log line says which.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{Operation, Store as KvStore};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::wire;
use crate::broker::Broker;

/// The bucket's name.
pub const BUCKET: &str = "sluice_retained";

/// The most bytes of retained messages waiting to be written to the bucket (past it one is
/// not written: counted and logged; the node's own store still has it).
const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// Opens the bucket, creating it if no node has yet: with 3 replicas if JetStream accepts
/// that (a NATS cluster of 3 or more), else 1. Returns it and its replica count.
pub async fn open(js: &async_nats::jetstream::Context) -> Result<(KvStore, usize), String> {
    if let Ok(kv) = js.get_key_value(BUCKET).await {
        let replicas = match kv.status().await {
            Ok(s) => s.info.config.num_replicas,
            Err(_) => 0,
        };
        return Ok((kv, replicas));
    }
    let mut last = String::new();
    for replicas in [3, 1] {
        // The stream a key-value bucket is, made directly: async-nats's `create_key_value`
        // first reads the account's limits in a shape NATS 2.9 (Debian's) does not send.
        let config = StreamConfig {
            name: format!("KV_{BUCKET}"),
            description: Some("Sluice: the retained message of each MQTT topic".into()),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            max_bytes: -1,
            max_message_size: -1,
            storage: StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            num_replicas: replicas,
            discard: DiscardPolicy::New,
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(_) => match js.get_key_value(BUCKET).await {
                Ok(kv) => return Ok((kv, replicas)),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        // Another node may have created it meanwhile.
        if let Ok(kv) = js.get_key_value(BUCKET).await {
            return Ok((kv, replicas));
        }
    }
    Err(format!(
        "cannot create the JetStream bucket {BUCKET}: {last}"
    ))
}

/// The queue of bucket writes, bounded in bytes; drained by [`write_loop`].
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::UnboundedSender<(String, Bytes)>,
    pending: Arc<AtomicUsize>,
    dropped: AtomicU64,
}

impl Writer {
    /// A writer to `kv`, with its task.
    pub fn spawn(kv: KvStore) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_loop(kv, rx, pending.clone()));
        Writer {
            tx,
            pending,
            dropped: AtomicU64::new(0),
        }
    }

    /// Sets the retained message of `topic` to `body` (an encoded message), or deletes it when
    /// `body` is None (an empty retained PUBLISH [MQTT-3.3.1-6]).
    pub fn set(&self, topic: &str, body: Option<Bytes>) {
        let body = body.unwrap_or_default();
        let cost = body.len() + topic.len();
        let before = self.pending.fetch_add(cost, Ordering::Relaxed);
        if before + cost > MAX_PENDING_BYTES
            || self.tx.send((wire::retained_key(topic), body)).is_err()
        {
            self.pending.fetch_sub(cost, Ordering::Relaxed);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n % 100 == 0 {
                tracing::warn!(topic, dropped = n + 1, "cluster: retained message not written to the bucket (16 MiB waiting already); other nodes keep the previous one");
            }
        }
    }
}

/// Writes queued retained messages in order, one at a time (each waits for JetStream's ack).
async fn write_loop(
    kv: KvStore,
    mut rx: mpsc::UnboundedReceiver<(String, Bytes)>,
    pending: Arc<AtomicUsize>,
) {
    while let Some((key, body)) = rx.recv().await {
        let cost = body.len() + wire::retained_topic(&key).map_or(0, |t| t.len());
        let result = if body.is_empty() {
            kv.delete(&key).await.map_err(|e| e.to_string())
        } else {
            kv.put(&key, body)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        pending.fetch_sub(cost, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::warn!(key, error = %e, "cluster: retained message not written to the bucket");
        }
    }
}

/// Applies the bucket to the node's retained store: everything in it first, then each change,
/// until the broker is gone. Re-watches from the last revision seen if the watch ends (NATS
/// failover), after a pause.
pub async fn watch_loop(kv: KvStore, broker: Weak<Broker>) {
    let mut next_revision: Option<u64> = None;
    let mut synced = false;
    loop {
        let watch = match next_revision {
            None => kv.watch_with_history(">").await,
            Some(r) => kv.watch_all_from_revision(r).await,
        };
        match watch {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Some(broker) = broker.upgrade() else {
                        return;
                    };
                    let entry = match entry {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster: retained bucket watch");
                            break;
                        }
                    };
                    next_revision = Some(entry.revision + 1);
                    apply(
                        &broker,
                        &entry.key,
                        entry.operation,
                        &entry.value,
                        entry.created.unix_timestamp_nanos(),
                    );
                    if entry.seen_current && !synced {
                        synced = true;
                        tracing::info!(
                            retained = crate::locks::read(&broker.router.retained).len(),
                            "cluster: retained messages synced from the bucket"
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster: cannot watch the retained bucket"),
        }
        if broker.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn apply(broker: &Broker, key: &str, op: Operation, value: &[u8], created_nanos: i128) {
    let Some(topic) = wire::retained_topic(key) else {
        tracing::warn!(key, "cluster: retained bucket key is not a topic; ignored");
        return;
    };
    match op {
        Operation::Delete | Operation::Purge => {
            broker.router.apply_cluster_retained(&topic, None);
        }
        Operation::Put => {
            let age = age(created_nanos);
            match wire::decode(value, Instant::now(), age) {
                Ok(mut msg) => {
                    msg.priority = broker.router.priority_of(&msg.topic);
                    broker
                        .router
                        .apply_cluster_retained(&topic, Some(Arc::new(msg)));
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cluster: retained bucket value unreadable; ignored")
                }
            }
        }
    }
}

/// How long ago a bucket entry written at `created_nanos` (Unix time) was written: zero if
/// the clocks disagree the other way.
fn age(created_nanos: i128) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let nanos = (now - created_nanos).max(0);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}
