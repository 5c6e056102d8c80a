//! The broker's counters: relaxed atomics, updated on the hot path without a lock and read at
//! any time (logs, tests, and later metrics).

use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Counters, readable at any time (relaxed atomics: they are statistics).
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub messages_received: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub messages_dropped: AtomicU64,
    /// QoS 1/2 PUBLISHes refused because a subscriber's queue was full (`queue_full_policy`).
    pub messages_rejected: AtomicU64,
    /// Times a connection's reading was paused by `limits.publish_rate` / `publish_bytes_rate`.
    pub rate_limited: AtomicU64,
    /// Connections refused by `limits.max_connections`.
    pub connections_refused: AtomicU64,
    /// Messages of shared subscription groups without members dropped
    /// (`mqtt.shared_group_orphan_policy`, `shared_group_orphan_expiry_seconds`); also counted
    /// in `messages_dropped`.
    pub orphaned_dropped: AtomicU64,
    /// Messages a full session queue refused (`drop_newest`, and the drops of `reject` and
    /// `disconnect_slow_consumer` that are not refusals); also in `messages_dropped`.
    pub dropped_queue_full_newest: AtomicU64,
    /// Queued messages evicted to make room (`drop_oldest`); also in `messages_dropped`.
    pub dropped_queue_full_oldest: AtomicU64,
    /// QoS 0 messages of a shaped session dropped because they waited over the rate past the
    /// queue's memory bound; also in `messages_dropped`.
    pub dropped_qos0_rate: AtomicU64,
    /// Clients disconnected by `disconnect_slow_consumer`.
    pub slow_consumers_disconnected: AtomicU64,
}
