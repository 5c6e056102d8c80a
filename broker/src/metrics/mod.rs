//! What an operator sees of a running broker: the Prometheus text exposition
//! ([`render_prometheus`], served by the admin listener's `GET /metrics`) and the `$SYS` topics
//! ([`sys`]), both read from one registry, [`crate::stats::Stats`], plus figures gathered at
//! read time (sessions, queues, retained messages, the store).
//!
//! Nothing here is on the message path: counting is the connection tasks' (plain integers,
//! added to striped counters once per read or drain batch, `stats.rs`); this module only reads.
//! A render scans the session registry once (each session's queue lock briefly), so its cost
//! grows with the number of sessions, not with traffic.

pub mod sys;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::broker::Broker;
use crate::locks::read;
use crate::stats::{Counter, DROP_REASONS, LATENCY_BOUNDS_US, REFUSAL_REASONS};

/// A snapshot of the figures that are gathered rather than counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Gathered {
    /// Sessions whose client is connected.
    pub sessions_connected: usize,
    /// Persistent sessions waiting for their client.
    pub sessions_offline: usize,
    /// Queued deliveries (sessions and shared groups) held in memory.
    pub queued_memory: usize,
    /// Queued deliveries kept on disk only.
    pub queued_disk: usize,
    /// Bytes of queued messages held in memory.
    pub queued_memory_bytes: usize,
    /// Bytes of queued messages kept on disk only.
    pub queued_disk_bytes: usize,
    /// Retained messages.
    pub retained: usize,
    /// Subscriptions (filter, client).
    pub subscriptions: usize,
    /// `$delayed` messages waiting.
    pub delayed: usize,
}

impl Gathered {
    /// Every queued delivery.
    pub fn queued(&self) -> usize {
        self.queued_memory + self.queued_disk
    }
}

/// Gathers sessions, queues and stores (one pass over the session registry).
pub fn gather(broker: &Broker) -> Gathered {
    let mut g = Gathered::default();
    let mut add = |(len, bytes, memory, cold): (usize, usize, usize, usize)| {
        g.queued_memory += len.saturating_sub(cold);
        g.queued_disk += cold;
        g.queued_memory_bytes += memory;
        g.queued_disk_bytes += bytes.saturating_sub(memory);
    };
    let mut connected = 0;
    let mut offline = 0;
    for h in broker.session_handles() {
        let o = h.outbox();
        if o.is_online() {
            connected += 1;
        } else {
            offline += 1;
        }
        add((o.len(), o.bytes(), o.memory_bytes(), o.cold_len()));
    }
    for q in broker.router.group_queues() {
        add(q.figures());
    }
    g.sessions_connected = connected;
    g.sessions_offline = offline;
    g.retained = read(&broker.router.retained).len();
    g.subscriptions = read(&broker.router.subscriptions).len();
    g.delayed = broker.router.delayed.len();
    g
}

/// The broker's metrics in the Prometheus text exposition format (version 0.0.4).
pub fn render_prometheus(broker: &Broker) -> String {
    let s = &broker.stats;
    let g = gather(broker);
    let mut out = String::with_capacity(8 * 1024);
    let w = &mut out;

    family(
        w,
        "sluice_build_info",
        "gauge",
        "Always 1; the version as a label.",
    );
    sample(
        w,
        "sluice_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    single(
        w,
        "sluice_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
        s.uptime().as_secs(),
    );

    // Connections.
    single(
        w,
        "sluice_connections_current",
        "gauge",
        "MQTT clients connected now (CONNACK sent, connection not ended).",
        s.clients_connected.load(Ordering::Relaxed) as u64,
    );
    single(
        w,
        "sluice_connections_total",
        "counter",
        "MQTT connections accepted (CONNACK 0x00 sent) since start.",
        s.connections_total.load(Ordering::Relaxed),
    );
    single(w, "sluice_sockets_open", "gauge", "Network connections open, those still in TLS, WebSocket or CONNECT included (what limits.max_connections bounds).", s.connections.load(Ordering::Relaxed) as u64);
    family(
        w,
        "sluice_connections_refused_total",
        "counter",
        "Connections refused, by reason.",
    );
    for (i, reason) in REFUSAL_REASONS.iter().enumerate() {
        sample(
            w,
            "sluice_connections_refused_total",
            &[("reason", reason)],
            s.refused[i].load(Ordering::Relaxed),
        );
    }
    let listeners = s.listeners();
    family(
        w,
        "sluice_listener_connections_current",
        "gauge",
        "Network connections open per listener.",
    );
    for l in &listeners {
        sample(
            w,
            "sluice_listener_connections_current",
            &[("listener", &l.name)],
            l.open.load(Ordering::Relaxed) as u64,
        );
    }
    family(
        w,
        "sluice_listener_accepted_total",
        "counter",
        "TCP connections accepted per listener.",
    );
    for l in &listeners {
        sample(
            w,
            "sluice_listener_accepted_total",
            &[("listener", &l.name)],
            l.accepted.load(Ordering::Relaxed),
        );
    }
    let tls: Vec<_> = listeners
        .iter()
        .filter(|l| l.name.starts_with("tls://") || l.name.starts_with("wss://"))
        .collect();
    family(
        w,
        "sluice_tls_handshakes_total",
        "counter",
        "TLS handshakes completed per TLS listener.",
    );
    for l in &tls {
        sample(
            w,
            "sluice_tls_handshakes_total",
            &[("listener", &l.name)],
            l.tls_handshakes.load(Ordering::Relaxed),
        );
    }
    family(
        w,
        "sluice_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out per TLS listener.",
    );
    for l in &tls {
        sample(
            w,
            "sluice_tls_handshake_failures_total",
            &[("listener", &l.name)],
            l.tls_failures.load(Ordering::Relaxed),
        );
    }

    // Messages.
    let c = |c: Counter| s.striped.get(c);
    family(
        w,
        "sluice_messages_received_total",
        "counter",
        "PUBLISH packets received from clients, by QoS.",
    );
    for (q, ctr) in [
        ("0", Counter::Received0),
        ("1", Counter::Received1),
        ("2", Counter::Received2),
    ] {
        sample(w, "sluice_messages_received_total", &[("qos", q)], c(ctr));
    }
    family(
        w,
        "sluice_messages_sent_total",
        "counter",
        "PUBLISH packets sent to clients, by QoS.",
    );
    for (q, ctr) in [
        ("0", Counter::Sent0),
        ("1", Counter::Sent1),
        ("2", Counter::Sent2),
    ] {
        sample(w, "sluice_messages_sent_total", &[("qos", q)], c(ctr));
    }
    single(
        w,
        "sluice_bytes_received_total",
        "counter",
        "Bytes read from clients (every packet).",
        c(Counter::BytesReceived),
    );
    single(
        w,
        "sluice_bytes_sent_total",
        "counter",
        "Bytes written to clients (every packet).",
        c(Counter::BytesSent),
    );
    family(
        w,
        "sluice_messages_dropped_total",
        "counter",
        "Messages not delivered to a subscriber or not routed at all, by reason.",
    );
    for (reason, ctr) in DROP_REASONS {
        sample(
            w,
            "sluice_messages_dropped_total",
            &[("reason", reason)],
            c(ctr),
        );
    }
    family(
        w,
        "sluice_messages_rejected_total",
        "counter",
        "QoS 1/2 PUBLISHes refused (0x97) because a subscriber's queue was full (mqtt.queue_full_policy = reject).",
    );
    sample(
        w,
        "sluice_messages_rejected_total",
        &[("reason", "queue_full")],
        c(Counter::RejectedQueueFull),
    );
    single(
        w,
        "sluice_slow_consumers_disconnected_total",
        "counter",
        "Clients disconnected (0x97) by the disconnect_slow_consumer overflow policy.",
        s.slow_consumers_disconnected.load(Ordering::Relaxed),
    );
    single(
        w,
        "sluice_publish_rate_limited_total",
        "counter",
        "Times a publisher's reading was paused by limits.publish_rate / publish_bytes_rate.",
        s.rate_limited.load(Ordering::Relaxed),
    );
    let (buckets, sum_us) = s.striped.latency();
    histogram(
        w,
        "sluice_delivery_latency_seconds",
        "From a PUBLISH received to its delivery written into the subscriber's send buffer; sampled: the deliveries of one message in 8 (by message id), retained messages sent on subscription excluded.",
        &LATENCY_BOUNDS_US,
        1e6,
        &buckets,
        sum_us as f64 / 1e6,
    );

    // Sessions, queues, retained.
    family(w, "sluice_sessions", "gauge", "Sessions, by state.");
    sample(
        w,
        "sluice_sessions",
        &[("state", "connected")],
        g.sessions_connected as u64,
    );
    sample(
        w,
        "sluice_sessions",
        &[("state", "offline")],
        g.sessions_offline as u64,
    );
    family(
        w,
        "sluice_queued_messages",
        "gauge",
        "Deliveries waiting in session and shared-group queues, by where they are kept.",
    );
    sample(
        w,
        "sluice_queued_messages",
        &[("where", "memory")],
        g.queued_memory as u64,
    );
    sample(
        w,
        "sluice_queued_messages",
        &[("where", "disk")],
        g.queued_disk as u64,
    );
    family(
        w,
        "sluice_queued_bytes",
        "gauge",
        "Bytes charged for queued deliveries, by where they are kept.",
    );
    sample(
        w,
        "sluice_queued_bytes",
        &[("where", "memory")],
        g.queued_memory_bytes as u64,
    );
    sample(
        w,
        "sluice_queued_bytes",
        &[("where", "disk")],
        g.queued_disk_bytes as u64,
    );
    single(
        w,
        "sluice_retained_messages",
        "gauge",
        "Retained messages held.",
        g.retained as u64,
    );
    single(
        w,
        "sluice_subscriptions",
        "gauge",
        "Subscriptions (filter and client).",
        g.subscriptions as u64,
    );
    single(
        w,
        "sluice_delayed_messages",
        "gauge",
        "$delayed messages waiting for their time.",
        g.delayed as u64,
    );

    // Bridges (`[[bridges]]`), one label value per bridge.
    let bridges = broker.bridges();
    if !bridges.is_empty() {
        family(
            w,
            "sluice_bridge_connected",
            "gauge",
            "1 while the bridge is connected to its remote broker.",
        );
        for b in &bridges {
            sample(
                w,
                "sluice_bridge_connected",
                &[("bridge", &b.name)],
                u64::from(b.connected),
            );
        }
        family(
            w,
            "sluice_bridge_queued_messages",
            "gauge",
            "Messages waiting in the bridge's local session for the remote (queued and in flight).",
        );
        for b in &bridges {
            sample(
                w,
                "sluice_bridge_queued_messages",
                &[("bridge", &b.name)],
                b.queued as u64,
            );
        }
        family(
            w,
            "sluice_bridge_forwarded_total",
            "counter",
            "Messages passed by the bridge: out (to the remote, acknowledged by it) and in.",
        );
        for b in &bridges {
            for (direction, n) in [("out", b.forwarded_out), ("in", b.forwarded_in)] {
                sample(
                    w,
                    "sluice_bridge_forwarded_total",
                    &[("bridge", &b.name), ("direction", direction)],
                    n,
                );
            }
        }
        family(
            w,
            "sluice_bridge_dropped_total",
            "counter",
            "Messages the bridge could not pass on (no mapping, refused, or its full queue).",
        );
        for b in &bridges {
            sample(
                w,
                "sluice_bridge_dropped_total",
                &[("bridge", &b.name)],
                b.dropped,
            );
        }
        family(
            w,
            "sluice_bridge_connects_total",
            "counter",
            "Successful connections to the remote since start-up.",
        );
        for b in &bridges {
            sample(
                w,
                "sluice_bridge_connects_total",
                &[("bridge", &b.name)],
                b.connects,
            );
        }
    }

    // The store (absent in memory mode).
    if let Some((fsync, commit)) = broker.store.histograms() {
        let st = broker.store.stats();
        single(
            w,
            "sluice_store_log_bytes",
            "gauge",
            "Size of the store's log file.",
            broker.store.disk_bytes(),
        );
        single(
            w,
            "sluice_store_records_total",
            "counter",
            "Records appended to the log.",
            st.records,
        );
        single(
            w,
            "sluice_store_written_bytes_total",
            "counter",
            "Bytes appended to the log (compaction not included).",
            st.bytes,
        );
        single(
            w,
            "sluice_store_compactions_total",
            "counter",
            "Compactions that replaced the log.",
            st.compactions,
        );
        let (bounds, buckets, sum) = fsync;
        histogram(
            w,
            "sluice_store_fsync_seconds",
            "Time each fsync of the log took.",
            bounds,
            1e6,
            &buckets,
            sum as f64 / 1e6,
        );
        let (bounds, buckets, sum) = commit;
        histogram(
            w,
            "sluice_store_commit_records",
            "Records made durable by each fsync of the log (group-commit batch).",
            bounds,
            1.0,
            &buckets,
            sum as f64,
        );
    }
    out
}

/// `# HELP` and `# TYPE` of a metric family.
fn family(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

/// A metric family of one unlabelled sample: its `# HELP`, `# TYPE` and value.
fn single(w: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(w, name, kind, help);
    sample(w, name, &[], value);
}

/// One sample line.
fn sample(w: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    w.push_str(name);
    write_labels(w, labels, None);
    let _ = writeln!(w, " {value}");
}

fn write_labels(w: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    w.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            w.push(',');
        }
        first = false;
        let _ = write!(w, "{k}=\"{}\"", escape_label(v));
    }
    w.push('}');
}

/// A histogram: cumulative `_bucket` lines (bounds divided by `divisor` into the unit of the
/// name: 1e6 for microseconds to seconds), `_sum` and `_count`. `buckets` holds per-bucket
/// counts, `+Inf` last.
fn histogram(
    w: &mut String,
    name: &str,
    help: &str,
    bounds: &[u64],
    divisor: f64,
    buckets: &[u64],
    sum: f64,
) {
    family(w, name, "histogram", help);
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, n) in buckets.iter().enumerate() {
        cumulative += n;
        let le = match bounds.get(i) {
            Some(b) => format!("{}", *b as f64 / divisor),
            None => "+Inf".to_owned(),
        };
        w.push_str(&bucket);
        write_labels(w, &[], Some(&le));
        let _ = writeln!(w, " {cumulative}");
    }
    let _ = writeln!(w, "{name}_sum {sum}");
    let _ = writeln!(w, "{name}_count {cumulative}");
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
