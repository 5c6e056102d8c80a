//! The `$SYS` topics: Mosquitto's names and meanings, published retained at QoS 0 every
//! `sys.interval` seconds through the normal router (so the ACL's read rules and the `$` rule
//! for wildcards apply as to any message: `#` and `+/...` never match them [MQTT-4.7.2-1]).
//!
//! They are not logged to the store (`routing`: `topic::is_broker_status`): they are
//! republished every interval and describe this run only, so logging ~40 records every
//! interval would grow the log for nothing.
//!
//! Only values that changed since the last publication are published again (as Mosquitto
//! does); the first publication, before any client is accepted, has them all.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_codec::{QoS, TopicName};

use crate::broker::Broker;
use crate::message::Message;
use crate::stats::Counter;

/// The periods Mosquitto's `load/.../{1min,5min,15min}` topics average over.
const PERIODS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// The counters whose rates `load/...` publishes, by topic suffix.
const LOADS: [&str; 8] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "connections",
];

/// Moving averages of per-minute rates, as Mosquitto's `$SYS/broker/load/...` (exponentially
/// weighted over 1, 5 and 15 minutes). Sans-IO: fed totals and elapsed time.
#[derive(Debug, Default)]
pub struct Loads {
    /// The totals at the last update.
    last: Option<[u64; LOADS.len()]>,
    /// Per load, per period: the average, in events per minute.
    averages: [[f64; PERIODS.len()]; LOADS.len()],
}

impl Loads {
    /// Takes the totals `now` after `elapsed` since the last update.
    pub fn update(&mut self, totals: [u64; LOADS.len()], elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let (Some(last), true) = (self.last, secs > 0.0) {
            for (i, (total, before)) in totals.iter().zip(last).enumerate() {
                let per_minute = total.saturating_sub(before) as f64 * 60.0 / secs;
                for (j, (_, period)) in PERIODS.iter().enumerate() {
                    let keep = (-secs / period).exp();
                    let avg = &mut self.averages[i][j];
                    *avg = *avg * keep + per_minute * (1.0 - keep);
                }
            }
        }
        self.last = Some(totals);
    }

    /// (`load/...` topic suffix, value) for every load and period.
    pub fn topics(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(LOADS.len() * PERIODS.len());
        for (i, name) in LOADS.iter().enumerate() {
            for (j, (period, _)) in PERIODS.iter().enumerate() {
                out.push((
                    format!("load/{name}/{period}"),
                    format!("{:.2}", self.averages[i][j]),
                ));
            }
        }
        out
    }
}

/// What the publisher remembers between two publications.
#[derive(Debug, Default)]
pub struct SysState {
    loads: Loads,
    last_at: Option<Instant>,
    /// The most clients connected at once seen at a publication.
    max_connected: usize,
    /// What each topic was last published with.
    published: HashMap<String, String>,
}

/// Every `$SYS/broker/...` topic (without the prefix) and its value now.
pub fn values(broker: &Broker, state: &mut SysState, now: Instant) -> Vec<(String, String)> {
    let s = &broker.stats;
    let g = super::gather(broker);
    let connected = s.clients_connected.load(Ordering::Relaxed);
    state.max_connected = state.max_connected.max(connected);
    let received = s.messages_received();
    let sent = s.messages_sent();
    let dropped = s.messages_dropped();
    let bytes_in = s.striped.get(Counter::BytesReceived);
    let bytes_out = s.striped.get(Counter::BytesSent);
    let connections = s.connections_total.load(Ordering::Relaxed);
    let elapsed = state
        .last_at
        .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
    state.loads.update(
        [
            received,
            sent,
            received,
            sent,
            dropped,
            bytes_in,
            bytes_out,
            connections,
        ],
        elapsed,
    );
    state.last_at = Some(now);
    let queued_bytes = g.queued_memory_bytes + g.queued_disk_bytes;
    let mut v: Vec<(String, String)> = vec![
        (
            "version".into(),
            format!("sluice {}", env!("CARGO_PKG_VERSION")),
        ),
        ("uptime".into(), format!("{} seconds", s.uptime().as_secs())),
        ("clients/connected".into(), connected.to_string()),
        ("clients/active".into(), connected.to_string()),
        (
            "clients/disconnected".into(),
            g.sessions_offline.to_string(),
        ),
        ("clients/inactive".into(), g.sessions_offline.to_string()),
        (
            "clients/total".into(),
            (connected + g.sessions_offline).to_string(),
        ),
        ("clients/maximum".into(), state.max_connected.to_string()),
        ("messages/received".into(), received.to_string()),
        ("messages/sent".into(), sent.to_string()),
        ("publish/messages/received".into(), received.to_string()),
        ("publish/messages/sent".into(), sent.to_string()),
        ("publish/messages/dropped".into(), dropped.to_string()),
        ("bytes/received".into(), bytes_in.to_string()),
        ("bytes/sent".into(), bytes_out.to_string()),
        ("retained messages/count".into(), g.retained.to_string()),
        ("subscriptions/count".into(), g.subscriptions.to_string()),
        (
            "store/messages/count".into(),
            (g.queued() + g.retained).to_string(),
        ),
        ("store/messages/bytes".into(), queued_bytes.to_string()),
    ];
    // Bridges, as Mosquitto names its own: `connection/{name}/state`, 1 connected, 0 not.
    for b in broker.bridges() {
        v.push((
            format!("connection/{}/state", b.name),
            u8::from(b.connected).to_string(),
        ));
    }
    v.extend(state.loads.topics());
    v
}

/// Publishes the `$SYS` topics whose value changed since the last publication.
pub fn publish(broker: &Broker, state: &mut SysState) {
    let now = Instant::now();
    for (topic, value) in values(broker, state, now) {
        if state.published.get(&topic) == Some(&value) {
            continue;
        }
        let full = format!("$SYS/broker/{topic}");
        let Ok(name) = TopicName::try_from(full.as_str()) else {
            continue;
        };
        let msg = Message::new(
            name,
            Bytes::from(value.clone()),
            QoS::AtMostOnce,
            true,
            Default::default(),
            "".into(),
            now,
        );
        broker.router.publish(Arc::new(msg));
        state.published.insert(topic, value);
    }
}

/// Publishes the `$SYS` topics now and then every `sys.interval` seconds until the broker
/// is dropped (the server aborts it at shutdown). Nothing when `sys.interval` is 0.
pub async fn serve(broker: Weak<Broker>, mut state: SysState) {
    let Some(interval) = broker
        .upgrade()
        .map(|b| b.config.sys.interval)
        .filter(|i| *i > 0)
    else {
        return;
    };
    let mut ticks = tokio::time::interval(Duration::from_secs(interval));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(b) = broker.upgrade() else { return };
        publish(&b, &mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_average_per_minute_rates() {
        let mut l = Loads::default();
        l.update([0; 8], Duration::ZERO);
        // 600 messages in 10 s: 3600 per minute.
        let mut t = [0; 8];
        t[0] = 600;
        l.update(t, Duration::from_secs(10));
        let keep = (-10.0f64 / 60.0).exp();
        assert!((l.averages[0][0] - 3600.0 * (1.0 - keep)).abs() < 1e-6);
        // A steady rate converges to it.
        for k in 2..200 {
            t[0] = 600 * k;
            l.update(t, Duration::from_secs(10));
        }
        assert!((l.averages[0][0] - 3600.0).abs() < 1.0);
        let topics = l.topics();
        assert_eq!(topics[0].0, "load/messages/received/1min");
        assert_eq!(topics[0].1, "3600.00");
    }
}
