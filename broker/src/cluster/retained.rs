//! Retained messages in cluster mode: the JetStream key-value bucket `sluice_retained` holds
//! the retained message of every topic (key: the topic in base64url, value: the message as
//! [`super::wire`] encodes it). Each node writes the retained messages published on it and
//! watches the whole bucket, keeping its in-memory retained store (which new subscriptions
//! read without waiting for anything) equal to the bucket.
//!
//! A write JetStream cannot take for the moment (the node's NATS connection is reconnecting,
//! or the bucket's stream has no leader while JetStream elects one after a NATS server died)
//! is tried again with a growing pause until it can, in order; dropping it would leave the
//! other nodes without that retained message for good. The watch resumes from the last
//! revision it applied when it breaks.
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

/// How long a node creating the bucket through a server that is in a NATS cluster keeps asking
/// for 3 replicas while JetStream has too few peers for them ("no suitable peers for
/// placement"): a cluster still forming (its servers joining JetStream's metadata group one by
/// one) accepts them a moment later, and R1 would stay for good.
const R3_PATIENCE: Duration = Duration::from_secs(10);

/// Opens the bucket, creating it if no node has yet: with 3 replicas if JetStream accepts
/// that (a NATS cluster of 3 or more; `clustered`: the server is in a NATS cluster, so it is
/// asked again for [`R3_PATIENCE`]), else 1. Returns it and its replica count.
pub async fn open(
    js: &async_nats::jetstream::Context,
    clustered: bool,
) -> Result<(KvStore, usize), String> {
    if let Ok(kv) = js.get_key_value(BUCKET).await {
        let replicas = match kv.status().await {
            Ok(s) => s.info.config.num_replicas,
            Err(_) => 0,
        };
        return Ok((kv, replicas));
    }
    open_kv(
        js,
        BUCKET,
        "Sluice: the retained message of each MQTT topic",
        clustered,
    )
    .await
}

/// Creates (see [`create_replicated`]) and opens the key-value bucket `bucket`; returns it
/// and its replica count.
pub(super) async fn open_kv(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    description: &str,
    clustered: bool,
) -> Result<(KvStore, usize), String> {
    let replicas = create_replicated(js, &format!("KV_{bucket}"), clustered, |replicas| {
        kv_stream_config(bucket, description, replicas)
    })
    .await?;
    let kv = js
        .get_key_value(bucket)
        .await
        .map_err(|e| format!("cannot open the JetStream bucket {bucket}: {e}"))?;
    Ok((kv, replicas))
}

/// Creates stream `name` with 3 replicas if JetStream accepts that, else 1 (asked again for
/// [`R3_PATIENCE`] while a clustered JetStream has too few peers); an existing one is kept as
/// it is. Returns its replica count. Used for the retained and sessions buckets and the
/// messages stream.
pub(super) async fn create_replicated(
    js: &async_nats::jetstream::Context,
    name: &str,
    clustered: bool,
    config: impl Fn(usize) -> StreamConfig,
) -> Result<usize, String> {
    use async_nats::jetstream::context::CreateStreamErrorKind;
    let existing = |mut s: async_nats::jetstream::stream::Stream| async move {
        s.info().await.map_or(1, |i| i.config.num_replicas)
    };
    if let Ok(s) = js.get_stream(name).await {
        return Ok(existing(s).await);
    }
    let mut last = String::new();
    for replicas in [3, 1] {
        let since = Instant::now();
        loop {
            let no_peers;
            match js.create_stream(config(replicas)).await {
                Ok(_) => return Ok(replicas),
                Err(e) => {
                    no_peers = matches!(e.kind(), CreateStreamErrorKind::JetStream(api)
                        if api.error_code() == async_nats::jetstream::ErrorCode::CLUSTER_NO_PEERS);
                    last = e.to_string();
                }
            }
            if !(no_peers && replicas > 1 && clustered) || since.elapsed() >= R3_PATIENCE {
                break;
            }
            if since.elapsed() < Duration::from_millis(500) {
                tracing::info!(stream = name, error = last, "cluster: JetStream has too few peers for 3 replicas yet; asking again for up to {R3_PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Ok(s) = js.get_stream(name).await {
            return Ok(existing(s).await);
        }
    }
    Err(format!("cannot create the JetStream stream {name}: {last}"))
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
        let key = wire::retained_key(topic);
        if !key_fits(&key) {
            // Its subject (the topic in base64) would be longer than NATS takes: the write
            // could only fail, and a connection-level failure would be retried for ever.
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic_bytes = topic.len(), dropped = n + 1, "cluster: retained message kept on this node only: its topic is too long for a key of the bucket");
            return;
        }
        let cost = entry_cost(&body, topic);
        let before = self.pending.fetch_add(cost, Ordering::Relaxed);
        if before + cost > MAX_PENDING_BYTES || self.tx.send((key, body)).is_err() {
            self.pending.fetch_sub(cost, Ordering::Relaxed);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n % 100 == 0 {
                tracing::warn!(topic, dropped = n + 1, "cluster: retained message not written to the bucket (16 MiB waiting already); other nodes keep the previous one");
            }
        }
    }
}

/// The subject a bucket key is written under, before the key.
const KV_SUBJECT_PREFIX: &str = "$KV.sluice_retained.";

/// Whether a bucket key's subject is short enough for NATS (as a message's subject must be).
fn key_fits(key: &str) -> bool {
    KV_SUBJECT_PREFIX.len() + key.len() <= super::MAX_SUBJECT_BYTES
}

/// What one waiting write counts against [`MAX_PENDING_BYTES`]: its body and topic, and the
/// queue entry itself (the key, the channel slot), so that many empty deletes stay bounded too.
fn entry_cost(body: &Bytes, topic: &str) -> usize {
    body.len() + topic.len() * 2 + 96
}

/// The pause after a write's first failure; doubled after each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The longest pause between two attempts of one write.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a write that JetStream refused with an error of its own ([`Failure::Refused`]) is
/// still tried again before it is given up: such an error (the message too large for the
/// stream, say) rarely goes away, and the writes queued behind it wait meanwhile.
const REFUSED_FOR: Duration = Duration::from_secs(30);

/// Failures of one write logged: the first, then one in this many.
const LOG_EVERY: u32 = 20;

/// What a failed bucket write's error says about trying it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// JetStream could not take the write now: the connection to NATS is down or reconnecting,
    /// the bucket's stream has no leader (a JetStream election after a NATS server died: no
    /// responders), or the acknowledgement did not come in time. The same write succeeds later.
    Unavailable,
    /// JetStream answered the write with an error of its own, or the key is invalid.
    Refused,
}

impl Failure {
    /// Classifies a failed `put` or `delete` by the errors in its source chain.
    fn of(error: &(dyn std::error::Error + 'static)) -> Failure {
        use async_nats::jetstream::context::{PublishError, PublishErrorKind};
        use async_nats::jetstream::kv::{PutError, PutErrorKind, UpdateError, UpdateErrorKind};
        use std::error::Error as _;
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(e) = e.downcast_ref::<PutError>() {
                if e.kind() == PutErrorKind::InvalidKey {
                    return Failure::Refused;
                }
            }
            if let Some(e) = e.downcast_ref::<UpdateError>() {
                match e.kind() {
                    UpdateErrorKind::InvalidKey | UpdateErrorKind::WrongLastRevision => {
                        return Failure::Refused
                    }
                    // The delete's ack did not come in time (the cause is not kept).
                    UpdateErrorKind::TimedOut => return Failure::Unavailable,
                    UpdateErrorKind::Other => {}
                }
            }
            if let Some(e) = e.downcast_ref::<PublishError>() {
                return match e.kind() {
                    PublishErrorKind::TimedOut
                    | PublishErrorKind::StreamNotFound
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::MaxAckPending => Failure::Unavailable,
                    // An expectation of the write failed (Sluice sets none).
                    PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
                        Failure::Refused
                    }
                    // An answer from JetStream: 503 is "temporarily unavailable" (no quorum).
                    PublishErrorKind::Other => match e
                        .source()
                        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
                    {
                        Some(api) if api.code() != 503 => Failure::Refused,
                        // Not an answer: the message did not leave this client.
                        _ => Failure::Unavailable,
                    },
                };
            }
            next = e.source();
        }
        // No answer from JetStream anywhere in the chain.
        Failure::Unavailable
    }
}

/// When a failed write is tried again: after `failures` failures (1 or more), the latest being
/// `failure`, the first `failing_for` ago. None: give it up.
fn retry_after(failures: u32, failure: Failure, failing_for: Duration) -> Option<Duration> {
    if failure == Failure::Refused && failing_for >= REFUSED_FOR {
        return None;
    }
    let doublings = failures.saturating_sub(1).min(16);
    Some(RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX))
}

/// Writes queued retained messages in order, one at a time (each waits for JetStream's ack).
/// A write that fails is tried again ([`retry_after`]): while JetStream cannot take it (NATS
/// reconnecting, the bucket's stream electing a leader after a server died) until it can, so a
/// retained message reaches the other nodes once JetStream is back; the writes after it wait
/// (in order: a later write to the same topic must not be overtaken), bounded by the queue's
/// [`MAX_PENDING_BYTES`]. Retrying stops when the node stops.
async fn write_loop(
    kv: KvStore,
    mut rx: mpsc::UnboundedReceiver<(String, Bytes)>,
    pending: Arc<AtomicUsize>,
) {
    while let Some((key, body)) = rx.recv().await {
        let topic = wire::retained_topic(&key).unwrap_or_default();
        let cost = entry_cost(&body, &topic);
        let mut failures = 0u32;
        let mut first_failure = None;
        loop {
            let result = if body.is_empty() {
                kv.delete(&key)
                    .await
                    .map_err(|e| (Failure::of(&e), e.to_string()))
            } else {
                kv.put(&key, body.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| (Failure::of(&e), e.to_string()))
            };
            let (failure, error) = match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(
                            topic,
                            attempts = failures + 1,
                            "cluster: retained message written to the bucket after retrying"
                        );
                    }
                    break;
                }
                Err(e) => e,
            };
            failures += 1;
            let since = *first_failure.get_or_insert_with(Instant::now);
            let retry = retry_after(failures, failure, since.elapsed()).filter(|_| !rx.is_closed());
            let Some(pause) = retry else {
                tracing::warn!(topic, attempts = failures, ?failure, error, "cluster: retained message not written to the bucket; given up (other nodes keep the previous one)");
                break;
            };
            if failures == 1 || failures % LOG_EVERY == 0 {
                tracing::warn!(topic, attempts = failures, ?failure, error, retry_in = ?pause, "cluster: retained message not written to the bucket yet; retrying");
            }
            tokio::time::sleep(pause).await;
        }
        pending.fetch_sub(cost, Ordering::Relaxed);
    }
}

/// Applies the bucket to the node's retained store: everything in it first, then each change,
/// until the broker is gone. Re-watches from the last revision seen if the watch ends (NATS
/// failover), after a pause.
pub async fn watch_loop(kv: KvStore, broker: Weak<Broker>) {
    let mut next_revision: Option<u64> = None;
    let mut synced = false;
    let mut failed = false;
    loop {
        let watch = match next_revision {
            None => kv.watch_with_history(">").await,
            Some(r) => kv.watch_all_from_revision(r).await,
        };
        match watch {
            Ok(mut entries) => {
                if std::mem::take(&mut failed) {
                    tracing::info!(
                        from_revision = next_revision,
                        "cluster: retained bucket watch resumed"
                    );
                }
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
        failed = true;
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

/// The stream a JetStream key-value bucket `bucket` is (one value per key, file storage,
/// direct reads), made directly: async-nats's `create_key_value` first reads the account's
/// limits in a shape NATS 2.9 (Debian's) does not send.
pub(super) fn kv_stream_config(bucket: &str, description: &str, replicas: usize) -> StreamConfig {
    StreamConfig {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic whose bucket key (its base64) would make a subject longer than NATS takes is
    /// kept on its node (before, its write failed and was retried for ever).
    #[test]
    fn a_topic_too_long_for_a_bucket_key_is_not_written() {
        assert!(key_fits(&wire::retained_key("sensors/t1")));
        let long = "a/".repeat(1_600); // 3,200 bytes: a valid topic, 4,267 bytes of key
        assert!(!key_fits(&wire::retained_key(&long)));
        assert!(
            entry_cost(&Bytes::new(), "t") > 64,
            "an empty delete still counts"
        );
    }
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    use async_nats::jetstream::kv::{PutError, PutErrorKind, UpdateError, UpdateErrorKind};

    fn put_ack(kind: PublishErrorKind) -> PutError {
        PutError::with_source(PutErrorKind::Ack, PublishError::new(kind))
    }

    /// An error JetStream answers a publish with (`code`: its HTTP-like status).
    fn answered(code: u64) -> PublishError {
        let text = format!("code = {code}\nerr_code = 10054\ndescription = \"x\"");
        let api: async_nats::jetstream::Error = toml::from_str(&text).unwrap();
        PublishError::with_source(PublishErrorKind::Other, api)
    }

    #[test]
    fn failures_that_go_away_are_told_from_refusals() {
        use Failure::*;
        // A stream leader election after a NATS server died: no responders.
        assert_eq!(
            Failure::of(&put_ack(PublishErrorKind::StreamNotFound)),
            Unavailable
        );
        assert_eq!(
            Failure::of(&put_ack(PublishErrorKind::TimedOut)),
            Unavailable
        );
        assert_eq!(
            Failure::of(&put_ack(PublishErrorKind::BrokenPipe)),
            Unavailable
        );
        // The client could not send (connection down): not an answer from JetStream.
        let unsent = PublishError::with_source(
            PublishErrorKind::Other,
            std::io::Error::other("connection closed"),
        );
        let e = PutError::with_source(PutErrorKind::Publish, unsent);
        assert_eq!(Failure::of(&e), Unavailable);
        // A delete whose ack timed out keeps no cause.
        assert_eq!(
            Failure::of(&UpdateError::new(UpdateErrorKind::TimedOut)),
            Unavailable
        );
        assert_eq!(
            Failure::of(&PutError::with_source(PutErrorKind::Ack, answered(503))),
            Unavailable,
            "503: JetStream temporarily unavailable"
        );

        assert_eq!(
            Failure::of(&PutError::with_source(PutErrorKind::Ack, answered(400))),
            Refused
        );
        let e = UpdateError::with_source(UpdateErrorKind::Other, answered(400));
        assert_eq!(Failure::of(&e), Refused);
        assert_eq!(
            Failure::of(&PutError::new(PutErrorKind::InvalidKey)),
            Refused
        );
        assert_eq!(
            Failure::of(&put_ack(PublishErrorKind::WrongLastSequence)),
            Refused
        );
    }

    #[test]
    fn retries_back_off_and_only_refusals_are_given_up() {
        let pauses: Vec<_> = (1..=8)
            .map(|n| retry_after(n, Failure::Unavailable, Duration::ZERO).unwrap())
            .collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            pauses,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                RETRY_MAX,
                RETRY_MAX
            ]
        );
        let long = Duration::from_secs(24 * 3600);
        assert_eq!(
            retry_after(u32::MAX, Failure::Unavailable, long),
            Some(RETRY_MAX),
            "a write JetStream cannot take yet waits for it"
        );
        assert!(retry_after(3, Failure::Refused, REFUSED_FOR - ms(1)).is_some());
        assert_eq!(retry_after(3, Failure::Refused, REFUSED_FOR), None);
    }
}
