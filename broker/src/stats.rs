//! The broker's counters: relaxed atomics, updated on the hot path without a lock and read at
//! any time (logs, tests, and later metrics).

use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Counters, readable at any time (relaxed atomics: they are statistics).
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    /// Connections served since start (TLS/WebSocket ones once their handshake is done).
    pub connections_total: AtomicU64,
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to subscribers (counted once per drained batch).
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
}
