//! The broker's counters, the one registry that `metrics` renders (Prometheus, `$SYS`).
//!
//! Cheap on the hot path by construction:
//! * Per-message figures (messages and bytes received and sent, drops, the PUBLISH→delivery
//!   latency) are counted by the connection task in plain integers ([`Tally`],
//!   [`DrainTally`]) and added here once per read batch or drain batch ([`Stats::flush`],
//!   [`Stats::flush_drain`]), not once per message.
//! * Where they are added is striped ([`Striped`]): one cache-line-aligned shard per worker
//!   thread, written by that thread alone with a plain load and store (no locked
//!   read-modify-write, no line bounced between cores). Readers sum the shards; a figure may
//!   be a batch behind, never lost.
//! * Rare events (connections, refusals, TLS handshakes, drops on slow paths) use plain relaxed
//!   atomics. Nothing here takes a lock except registering a listener.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-message counters, added to [`Striped`] shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// PUBLISH packets received from clients, QoS 0 (QoS 1 and 2 follow).
    Received0,
    Received1,
    Received2,
    /// PUBLISH packets sent to clients, QoS 0 (QoS 1 and 2 follow).
    Sent0,
    Sent1,
    Sent2,
    /// Bytes read from clients' sockets (every packet, after TLS / WebSocket framing).
    BytesReceived,
    /// Bytes written to clients' sockets.
    BytesSent,
    /// A subscriber's (or shared group's) queue was full and refused the new message
    /// (`drop_newest`, the default; also the drops of `reject` and `disconnect_slow_consumer`
    /// that are not refusals).
    DroppedQueueFull,
    /// A queued message evicted to make room for a new one (`drop_oldest`).
    DroppedQueueFullOldest,
    /// A QoS 0 message of a shaped session that waited over the rate past the queue's memory
    /// bound (`[[shaping]]`).
    DroppedRate,
    /// A `$delayed` will refused because `limits.max_delayed_messages` were already waiting.
    DroppedDelayedFull,
    /// The Message Expiry Interval ran out before delivery [MQTT-3.3.2-5].
    DroppedExpired,
    /// Larger than the subscriber's Maximum Packet Size [MQTT-3.1.2-25].
    DroppedOversize,
    /// A PUBLISH the ACL (or the `$SYS` / `$share` rule) did not allow.
    DroppedAcl,
    /// A QoS 0 message for an offline session (never queued).
    DroppedOfflineQos0,
    /// Kept for a shared group without members, dropped by its orphan policy or expiry.
    DroppedOrphaned,
    /// A QoS 1/2 PUBLISH refused because a subscriber's queue was full
    /// (`mqtt.queue_full_policy = "reject"`): the publisher got 0x97.
    RejectedQueueFull,
}

/// How many [`Counter`]s there are.
pub const COUNTERS: usize = Counter::RejectedQueueFull as usize + 1;

/// Drop reasons as rendered (`sluice_messages_dropped_total{reason=...}`), with their counter.
pub const DROP_REASONS: [(&str, Counter); 9] = [
    ("queue_full_newest", Counter::DroppedQueueFull),
    ("queue_full_oldest", Counter::DroppedQueueFullOldest),
    ("qos0_rate", Counter::DroppedRate),
    ("expired", Counter::DroppedExpired),
    ("oversize", Counter::DroppedOversize),
    ("acl", Counter::DroppedAcl),
    ("offline_qos0", Counter::DroppedOfflineQos0),
    ("orphaned", Counter::DroppedOrphaned),
    ("delayed_full", Counter::DroppedDelayedFull),
];

/// The PUBLISH→delivery latency is measured for one message in this many (those whose id is
/// a multiple of it, each of their deliveries): a sample, so the histogram's count is about
/// this fraction of the deliveries; its sum divided by its count is the mean latency.
pub const LATENCY_SAMPLE: u64 = 8;

/// Upper bounds of the latency histogram buckets, in microseconds (Prometheus `le`, seconds:
/// 100 µs .. 10 s; above the last is `+Inf`).
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// The bucket of a value for `bounds` (`bounds.len()`: above every bound).
fn bucket_of(bounds: &[u64], v: u64) -> usize {
    bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len())
}

/// One shard: every counter and the latency histogram. Aligned to two cache lines so that
/// shards written by different cores never share one (adjacent-line prefetch included).
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    counts: [AtomicU64; COUNTERS],
    latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

/// Counters striped over shards: a thread adds to its own shard, readers sum them all. 72
/// shards of 384 bytes (27 KiB) per broker.
///
/// The first [`SHARDS`] threads of the process that count get a shard each to themselves
/// (numbers are handed out once and never reused): only that thread writes it, so its adds
/// are a plain load and store (no locked read-modify-write, which costs a fan-out delivery a
/// few percent). Later threads (short-lived blocking threads, tests' runtimes) add atomically
/// to [`SHARED_SHARDS`] other shards, which no thread owns.
#[derive(Debug)]
pub struct Striped {
    shards: Box<[Shard]>,
}

/// Shards owned by one thread each: more than the worker threads of the machines Sluice
/// targets.
const SHARDS: usize = 64;
/// Shards the other threads share (atomic adds), after the owned ones.
const SHARED_SHARDS: usize = 8;

/// Hands each thread its shard number.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, and whether it is this thread's alone.
    static SHARD: (usize, bool) = {
        let n = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
        if n < SHARDS {
            (n, true)
        } else {
            (SHARDS + n % SHARED_SHARDS, false)
        }
    };
}

/// A thread's shard, for a few adds.
struct ShardRef<'a> {
    shard: &'a Shard,
    /// Written by this thread only: adds need no atomic read-modify-write.
    owned: bool,
}

impl ShardRef<'_> {
    /// Adds `n` to `slot`, one of this shard's counters.
    fn add(&self, slot: &AtomicU64, n: u64) {
        if n == 0 {
            return;
        }
        if self.owned {
            // Only this thread writes the slot; readers see the old or the new value.
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            slot.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl Default for Striped {
    fn default() -> Striped {
        Striped {
            shards: (0..SHARDS + SHARED_SHARDS)
                .map(|_| Shard::default())
                .collect(),
        }
    }
}

impl Striped {
    fn shard(&self) -> ShardRef<'_> {
        // During thread teardown: a shared shard, atomically.
        let (i, owned) = SHARD.try_with(|s| *s).unwrap_or((SHARDS, false));
        ShardRef {
            shard: &self.shards[i],
            owned,
        }
    }

    /// Adds `n` to `c` (this thread's shard).
    pub fn add(&self, c: Counter, n: u64) {
        let s = self.shard();
        s.add(&s.shard.counts[c as usize], n);
    }

    /// The total of `c` over all shards.
    pub fn get(&self, c: Counter) -> u64 {
        self.shards
            .iter()
            .map(|s| s.counts[c as usize].load(Ordering::Relaxed))
            .sum()
    }

    /// The latency histogram: cumulative-free bucket counts (per [`LATENCY_BOUNDS_US`], then
    /// `+Inf`) and the sum in microseconds.
    pub fn latency(&self) -> (Vec<u64>, u64) {
        let mut buckets = vec![0; LATENCY_BOUNDS_US.len() + 1];
        let mut sum = 0;
        for s in self.shards.iter() {
            for (b, a) in buckets.iter_mut().zip(&s.latency) {
                *b += a.load(Ordering::Relaxed);
            }
            sum += s.latency_sum_us.load(Ordering::Relaxed);
        }
        (buckets, sum)
    }
}

/// What a connection counts between two flushes while reading: plain integers in its state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// PUBLISH packets received, by QoS.
    pub received: [u32; 3],
    /// PUBLISHes the ACL (or the `$SYS` / `$share` rule) refused.
    pub denied: u32,
}

/// What one drain of a session's queue counts (sent messages, drops, latencies): a local of
/// the drain, added to [`Stats`] once at its end ([`Stats::flush_drain`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainTally {
    /// PUBLISH packets sent, by QoS.
    pub sent: [u32; 3],
    /// Deliveries dropped because their message expired [MQTT-3.3.2-5].
    pub expired: u32,
    /// Deliveries dropped as larger than the client's Maximum Packet Size [MQTT-3.1.2-25].
    pub oversize: u32,
    /// How many latencies were recorded (the buckets are looked at only if some were).
    pub sampled: u32,
    /// PUBLISH→delivery latency of the sampled deliveries, per [`LATENCY_BOUNDS_US`] bucket.
    pub latency: [u32; LATENCY_BOUNDS_US.len() + 1],
    /// Their sum in microseconds.
    pub latency_sum_us: u64,
}

impl DrainTally {
    /// Counts one PUBLISH sent at QoS `qos` (0..=2), `latency` after its message arrived (None:
    /// not a delivery delay, not in the histogram).
    pub fn sent(&mut self, qos: usize, latency: Option<Duration>) {
        self.sent[qos.min(2)] += 1;
        let Some(latency) = latency else { return };
        self.sampled += 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket_of(&LATENCY_BOUNDS_US, us)] += 1;
        self.latency_sum_us = self.latency_sum_us.saturating_add(us);
    }
}

/// A histogram written by one thread at a time but read by others (the store's writer thread:
/// fsync latency, group-commit batch sizes): relaxed atomics, no stripes needed.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram with bucket upper bounds `bounds` (ascending; `+Inf` added).
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn record(&self, v: u64) {
        self.buckets[bucket_of(self.bounds, v)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// The bounds, the per-bucket counts (the last: `+Inf`) and the sum.
    pub fn snapshot(&self) -> (&'static [u64], Vec<u64>, u64) {
        (
            self.bounds,
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.sum.load(Ordering::Relaxed),
        )
    }
}

/// Why a connection was refused, as rendered
/// (`sluice_connections_refused_total{reason=...}`).
pub const REFUSAL_REASONS: [&str; 9] = [
    "max_connections",
    "listener_max_connections",
    "connection_rate",
    "bad_credentials",
    "not_authorized",
    "client_id_invalid",
    "protocol_version",
    "server_unavailable",
    "other",
];

/// One listener's figures (connections, TLS handshakes). Registered by the listener when it
/// starts ([`Stats::add_listener`]).
#[derive(Debug)]
pub struct ListenerStats {
    /// `tcp://127.0.0.1:1883`, `tls://...`, `ws://.../mqtt`, `wss://...`.
    pub name: String,
    /// Connections of this listener now open (its admission gate's count, shared).
    pub open: Arc<AtomicUsize>,
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: AtomicU64,
}

impl ListenerStats {
    pub fn new(name: String, open: Arc<AtomicUsize>) -> ListenerStats {
        ListenerStats {
            name,
            open,
            accepted: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
        }
    }
}

/// Counters, readable at any time (relaxed atomics: they are statistics).
#[derive(Debug)]
pub struct Stats {
    /// When the broker started (uptime).
    pub started: Instant,
    /// Connections now open (TLS handshakes and WebSocket upgrades in progress included: the
    /// count `limits.max_connections` applies to).
    pub connections: AtomicUsize,
    /// MQTT clients connected now (CONNACK 0x00 sent, connection not ended yet).
    pub clients_connected: AtomicUsize,
    /// Connections that completed CONNECT (CONNACK 0x00 sent), ever.
    pub connections_total: AtomicU64,
    /// Connections refused, by [`REFUSAL_REASONS`] index.
    pub refused: [AtomicU64; REFUSAL_REASONS.len()],
    /// Times a connection's reading was paused by `limits.publish_rate` / `publish_bytes_rate`.
    pub rate_limited: AtomicU64,
    /// Per-message counters and the PUBLISH→delivery latency (striped).
    pub striped: Striped,
    /// The listeners, in configuration order.
    listeners: Mutex<Vec<Arc<ListenerStats>>>,
    /// Clients disconnected by `disconnect_slow_consumer` (shaping's overflow policy).
    pub slow_consumers_disconnected: AtomicU64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            started: Instant::now(),
            connections: AtomicUsize::new(0),
            clients_connected: AtomicUsize::new(0),
            connections_total: AtomicU64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            rate_limited: AtomicU64::new(0),
            striped: Striped::default(),
            listeners: Mutex::new(Vec::new()),
            slow_consumers_disconnected: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Adds what a connection counted while reading, and the bytes it read, and clears it.
    pub fn flush(&self, t: &mut Tally, bytes_read: usize) {
        let s = self.striped.shard();
        let add = |c: Counter, n: u64| s.add(&s.shard.counts[c as usize], n);
        add(Counter::BytesReceived, bytes_read as u64);
        add(Counter::Received0, u64::from(t.received[0]));
        add(Counter::Received1, u64::from(t.received[1]));
        add(Counter::Received2, u64::from(t.received[2]));
        add(Counter::DroppedAcl, u64::from(t.denied));
        *t = Tally::default();
    }

    /// Adds what one drain counted. Inlined: the common empty drain (a wake-up with nothing to
    /// send) costs one test.
    #[inline]
    pub fn flush_drain(&self, t: &DrainTally) {
        if (t.sent[0] | t.sent[1] | t.sent[2] | t.expired | t.oversize) != 0 {
            self.add_drain(t);
        }
    }

    #[inline(never)]
    fn add_drain(&self, t: &DrainTally) {
        let s = self.striped.shard();
        let add = |c: Counter, n: u32| s.add(&s.shard.counts[c as usize], u64::from(n));
        add(Counter::Sent0, t.sent[0]);
        add(Counter::Sent1, t.sent[1]);
        add(Counter::Sent2, t.sent[2]);
        add(Counter::DroppedExpired, t.expired);
        add(Counter::DroppedOversize, t.oversize);
        if t.sampled > 0 {
            for (a, &n) in s.shard.latency.iter().zip(&t.latency) {
                s.add(a, u64::from(n));
            }
            s.add(&s.shard.latency_sum_us, t.latency_sum_us);
        }
    }

    /// Counts one event of a slow path (a drop, a refusal of a message) directly.
    pub fn add(&self, c: Counter, n: u64) {
        self.striped.add(c, n);
    }

    /// Counts a refused connection; `reason` is one of [`REFUSAL_REASONS`] (else `other`).
    pub fn refused(&self, reason: &str) -> u64 {
        let i = REFUSAL_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REFUSAL_REASONS.len() - 1);
        self.refused[i].fetch_add(1, Ordering::Relaxed)
    }

    /// PUBLISH packets received from clients, all QoS.
    pub fn messages_received(&self) -> u64 {
        [Counter::Received0, Counter::Received1, Counter::Received2]
            .iter()
            .map(|c| self.striped.get(*c))
            .sum()
    }

    /// PUBLISH packets sent to clients, all QoS.
    pub fn messages_sent(&self) -> u64 {
        [Counter::Sent0, Counter::Sent1, Counter::Sent2]
            .iter()
            .map(|c| self.striped.get(*c))
            .sum()
    }

    /// Messages dropped, every reason.
    pub fn messages_dropped(&self) -> u64 {
        DROP_REASONS.iter().map(|(_, c)| self.striped.get(*c)).sum()
    }

    /// Registers a listener's figures.
    pub fn add_listener(&self, l: Arc<ListenerStats>) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(l);
    }

    /// The listeners' figures.
    pub fn listeners(&self) -> Vec<Arc<ListenerStats>> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How long the broker has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_add_up_across_threads_and_clear_the_tally() {
        let stats = Arc::new(Stats::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let mut t = Tally {
                            received: [1, 2, 0],
                            denied: 0,
                        };
                        stats.flush(&mut t, 10);
                        assert_eq!(t, Tally::default());
                        let mut d = DrainTally::default();
                        d.sent(1, Some(Duration::from_micros(300)));
                        stats.flush_drain(&d);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(stats.messages_received(), 12_000);
        assert_eq!(stats.striped.get(Counter::Received1), 8_000);
        assert_eq!(stats.striped.get(Counter::BytesReceived), 40_000);
        assert_eq!(stats.messages_sent(), 4_000);
        let (buckets, sum) = stats.striped.latency();
        assert_eq!(buckets[2], 4_000, "300 µs falls in the 500 µs bucket");
        assert_eq!(buckets.iter().sum::<u64>(), 4_000);
        assert_eq!(sum, 1_200_000);
    }

    /// More threads than shards: the later ones share shards with atomic adds; nothing is
    /// lost either way.
    #[test]
    fn more_threads_than_shards_lose_nothing() {
        let stats = Arc::new(Stats::default());
        let threads: Vec<_> = (0..SHARDS + 10)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        stats.add(Counter::BytesSent, 3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            stats.striped.get(Counter::BytesSent),
            3 * 100 * (SHARDS as u64 + 10)
        );
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        static B: [u64; 3] = [1, 10, 100];
        let h = Histogram::new(&B);
        for v in [0, 1, 2, 10, 11, 1000] {
            h.record(v);
        }
        let (_, buckets, sum) = h.snapshot();
        assert_eq!(buckets, vec![2, 2, 1, 1]);
        assert_eq!(sum, 1024);
    }
}
