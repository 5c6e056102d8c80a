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

/// One bridge's counters (`[[bridges]]`), updated by its task, read through
/// `Broker::bridges`.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// The bridge's `name`.
    pub name: String,
    /// Connected to the remote (and to its local session).
    pub connected: std::sync::atomic::AtomicBool,
    /// Messages handed to the remote (QoS 1/2: acknowledged by it).
    pub forwarded_out: AtomicU64,
    /// Messages from the remote published locally.
    pub forwarded_in: AtomicU64,
    /// Messages the bridge could not pass on: no topic mapping, a topic the other side cannot
    /// take, or refused by the other side (a reason code of 0x80 or more).
    pub dropped: AtomicU64,
    /// Successful connections to the remote since start-up.
    pub connects: AtomicU64,
}

impl BridgeCounters {
    /// A snapshot, with what the bridge's local session holds (`queued`) and dropped.
    pub fn status(&self, queued: usize, queue_dropped: u64) -> BridgeStatus {
        use std::sync::atomic::Ordering::Relaxed;
        BridgeStatus {
            name: self.name.clone(),
            connected: self.connected.load(Relaxed),
            queued,
            forwarded_out: self.forwarded_out.load(Relaxed),
            forwarded_in: self.forwarded_in.load(Relaxed),
            dropped: self.dropped.load(Relaxed) + queue_dropped,
            connects: self.connects.load(Relaxed),
        }
    }
}

/// A snapshot of one bridge, for admin and metrics (`Broker::bridges`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeStatus {
    pub name: String,
    pub connected: bool,
    /// Messages waiting in the bridge's local session for the remote: queued, plus sent and
    /// not yet acknowledged by the remote.
    pub queued: usize,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    /// The counter above, plus what the local session's queue dropped (full queue policy).
    pub dropped: u64,
    pub connects: u64,
}
