//! The dashboard's live data: one sampler task takes a snapshot of the broker every second
//! and keeps the last [`HISTORY`] points for the charts; `GET /api/v1/stream` sends the
//! history, then every new snapshot, as server-sent events.
//!
//! The sampler walks the session registry once a second (each session's outbox locked for a
//! moment, one after the other), whether or not anyone watches, so that a dashboard opened
//! during a burst shows the minutes before it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::api::{groups_json, protocol_name};
use super::{rfc3339, AdminState};
use crate::broker::Broker;
use crate::locks::read;

/// Points kept for the charts: 15 minutes at one a second (~150 bytes each).
pub const HISTORY: usize = 900;
/// Rows of the dashboard's client table (the API pages through all of them).
const TABLE_ROWS: usize = 200;
/// Rows of the "slowest consumers" and "busiest topics" panels.
const TOP: usize = 10;

/// History and the latest snapshot, shared with the stream handlers.
#[derive(Debug)]
pub struct Live {
    /// Chart points, oldest first; bounded by [`HISTORY`]. Locked briefly.
    history: Mutex<VecDeque<Value>>,
    /// The latest snapshot as JSON text.
    latest: watch::Sender<Arc<str>>,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            latest: watch::Sender::new(Arc::from("")),
        }
    }
}

/// Counter readings of the previous tick, for rates.
struct Previous {
    at: Instant,
    received: u64,
    sent: u64,
    dropped: u64,
}

/// The sampler: one snapshot a second until `stop`.
pub async fn sample(state: Arc<AdminState>, broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut prev: Option<Previous> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let snapshot = snapshot(&state, &broker, &mut prev, started);
        {
            let mut h = state.live.history.lock().unwrap_or_else(|p| p.into_inner());
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(snapshot["point"].clone());
        }
        state
            .live
            .latest
            .send_replace(Arc::from(snapshot.to_string()));
    }
}

/// One snapshot: a chart point, totals, the busiest topics, the slowest consumers, the shared
/// groups and the first [`TABLE_ROWS`] connected clients.
fn snapshot(
    state: &AdminState,
    broker: &Broker,
    prev: &mut Option<Previous>,
    started: Instant,
) -> Value {
    let now = Instant::now();
    let stats = &broker.stats;
    let received = stats.messages_received();
    let sent = stats.messages_sent();
    let dropped = stats.messages_dropped();
    let rate = |now_v: u64, before: Option<u64>, secs: f64| {
        before.map_or(0.0, |b| now_v.saturating_sub(b) as f64 / secs)
    };
    let secs = prev
        .as_ref()
        .map_or(1.0, |p| now.duration_since(p.at).as_secs_f64().max(0.001));
    let in_rate = rate(received, prev.as_ref().map(|p| p.received), secs);
    let out_rate = rate(sent, prev.as_ref().map(|p| p.sent), secs);
    let drop_rate = rate(dropped, prev.as_ref().map(|p| p.dropped), secs);
    *prev = Some(Previous {
        at: now,
        received,
        sent,
        dropped,
    });

    let handles = broker.session_handles();
    let sessions = handles.len();
    // (client id, queued, memory bytes, on disk, inflight) of every session.
    let mut queues = Vec::with_capacity(handles.len());
    let mut table = Vec::new();
    let (mut queued, mut memory, mut on_disk, mut connected) = (0usize, 0usize, 0usize, 0usize);
    for h in &handles {
        let info = h
            .ownership()
            .owner
            .as_ref()
            .and_then(|o| o.info.as_deref().cloned());
        let (len, mem, cold) = {
            let o = h.outbox();
            (o.len(), o.memory_bytes(), o.cold_len())
        };
        queued += len;
        memory += mem;
        on_disk += cold;
        let inflight = h.inflight.load(Ordering::Relaxed);
        if len > 0 {
            queues.push((
                h.client_id.clone(),
                len,
                mem,
                cold,
                inflight,
                info.is_some(),
            ));
        }
        if let Some(i) = info {
            connected += 1;
            table.push((h.client_id.clone(), i, len, inflight));
        }
    }
    let groups = groups_json(broker);
    for g in &groups {
        queued += g["queue"]["messages"].as_u64().unwrap_or(0) as usize;
        memory += g["queue"]["memory_bytes"].as_u64().unwrap_or(0) as usize;
        on_disk += g["queue"]["on_disk_messages"].as_u64().unwrap_or(0) as usize;
    }
    queues.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let slowest: Vec<Value> = queues
        .iter()
        .take(TOP)
        .map(|(id, len, mem, cold, inflight, online)| {
            json!({ "client_id": &**id, "queued": len, "memory_bytes": mem,
                    "on_disk_messages": cold, "inflight": inflight, "connected": online })
        })
        .collect();
    table.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let clients: Vec<Value> = table
        .iter()
        .take(TABLE_ROWS)
        .map(|(id, i, len, inflight)| {
            json!({
                "client_id": &**id,
                "address": i.peer.to_string(),
                "listener": state.listener_name(i.listener),
                "protocol": protocol_name(i.protocol),
                "username": i.username.as_deref(),
                "connected_since": rfc3339(i.connected_at_ms),
                "queued": len,
                "inflight": inflight,
            })
        })
        .collect();
    let top_topics: Vec<Value> = broker
        .router
        .hot_topics
        .take()
        .into_iter()
        .take(TOP)
        .map(|(topic, n)| json!({ "topic": topic, "per_second": n as f64 / secs }))
        .collect();
    let subscriptions = read(&broker.router.subscriptions).len();
    let retained = read(&broker.router.retained).len();
    json!({
        "point": {
            "t": crate::persist::now_unix_ms(),
            "connections": connected,
            "in_per_second": in_rate,
            "out_per_second": out_rate,
            "dropped_per_second": drop_rate,
            "queued": queued,
            "queued_memory_bytes": memory,
            "queued_on_disk": on_disk,
        },
        "uptime_seconds": started.elapsed().as_secs(),
        "totals": {
            "clients_connected": connected,
            "sessions": sessions,
            "subscriptions": subscriptions,
            "retained": retained,
            "received": received,
            "sent": sent,
            "dropped": dropped,
        },
        "top_topics": top_topics,
        "slowest_consumers": slowest,
        "shared_groups": groups,
        "clients": clients,
        "clients_total": connected,
    })
}

/// `GET /api/v1/stream`: `event: history` (the chart points so far), then `event: snapshot`
/// once a second. Ends when the broker shuts down.
pub async fn stream(
    State(state): State<Arc<AdminState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let history: Vec<Value> = state
        .live
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let first = Event::default()
        .event("history")
        .data(Value::Array(history).to_string());
    let mut rx = state.live.latest.subscribe();
    // The current snapshot, if any, goes out at once rather than in up to a second.
    rx.mark_changed();
    let stop = state.stop.clone();
    let events = futures_util::stream::unfold(
        (Some(first), rx, stop),
        |(first, mut rx, mut stop)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (None, rx, stop)));
            }
            loop {
                tokio::select! {
                    changed = rx.changed() => changed.ok()?,
                    _ = stop.wait_for(|s| *s) => return None,
                }
                let data = rx.borrow_and_update().clone();
                if !data.is_empty() {
                    let event = Event::default().event("snapshot").data(&*data);
                    return Some((Ok(event), (None, rx, stop)));
                }
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default())
}
