//! Prometheus text exposition of the broker's counters (`GET /metrics` on the admin listener).
//!
//! Renders today's [`crate::stats::Stats`]; the metrics registry of issue #14 point 1 replaces
//! this file, keeping these names.

use std::fmt::Write;
use std::sync::atomic::Ordering;

/// The broker's metrics in the Prometheus text format (version 0.0.4).
pub fn render_prometheus(broker: &crate::Broker) -> String {
    let s = &broker.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let dropped = load(&s.messages_dropped);
    let orphaned = load(&s.orphaned_dropped);
    let mut out = String::with_capacity(1024);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "sluice_connections_current",
        "gauge",
        "Open client connections (including ones still in CONNECT or a TLS/WebSocket handshake).",
        &[("", s.connections.load(Ordering::Relaxed) as u64)],
    );
    metric(
        "sluice_connections_total",
        "counter",
        "Client connections accepted since start.",
        &[("", load(&s.connections_total))],
    );
    metric(
        "sluice_messages_received_total",
        "counter",
        "PUBLISH messages routed (from clients, wills, $delayed); not split by QoS yet: qos=\"any\".",
        &[("{qos=\"any\"}", load(&s.messages_received))],
    );
    metric(
        "sluice_messages_sent_total",
        "counter",
        "PUBLISH packets sent to subscribers.",
        &[("", load(&s.messages_delivered))],
    );
    metric(
        "sluice_messages_dropped_total",
        "counter",
        "Messages dropped: queue_full (a subscriber's or group's queue was full; also $delayed \
         messages that expired while waiting), orphaned_group (a shared group without members).",
        &[
            ("{reason=\"queue_full\"}", dropped.saturating_sub(orphaned)),
            ("{reason=\"orphaned_group\"}", orphaned),
        ],
    );
    out
}
