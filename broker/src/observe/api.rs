//! The JSON API under `/api/v1/` (reference: README, "Observe" > "Admin API").
//!
//! Lists are sorted (clients by id, subscriptions by client then filter, retained messages by
//! topic) and paged with `limit` (default 100, at most 1000) and either `offset` or, for
//! clients, the cursor `after` (the last client id of the previous page, given back as
//! `next`): a cursor does not skip or repeat clients when others connect or leave between
//! pages. Every answer is built from a snapshot taken under short locks; nothing here holds
//! a lock across an await.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_codec::{PublishProperties, QoS, TopicFilter, TopicName};

use super::{rfc3339, AdminState, ApiError};
use crate::broker::{Broker, Kick};
use crate::locks::read;
use crate::message::{ClientId, Message};
use crate::routing::SubEntry;
use crate::session::SessionHandle;
use crate::shaping::Applies;

/// Default page size.
const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
const MAX_LIMIT: usize = 1000;
/// How long a QoS 1/2 publish waits for the store before answering.
const STORE_WAIT: Duration = Duration::from_secs(10);

type Answer = Result<Json<Value>, ApiError>;
type Shared = State<Arc<AdminState>>;

/// The `/api/v1/` routes (the stream is added by the caller).
pub fn routes() -> axum::Router<Arc<AdminState>> {
    axum::Router::new()
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{id}", get(client).delete(kick))
        .route("/api/v1/sessions/{id}", axum::routing::delete(end_session))
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/shared-groups", get(shared_groups))
        .route("/api/v1/retained", get(retained))
        .route(
            "/api/v1/retained/{*topic}",
            axum::routing::delete(clear_retained),
        )
        .route("/api/v1/publish", post(publish))
}

/// `limit`, `offset`, `after` of a list request, checked.
#[derive(Debug, Default, Deserialize)]
struct Paging {
    limit: Option<String>,
    offset: Option<String>,
    after: Option<String>,
}

impl Paging {
    /// (limit, offset), or 400.
    fn parse(&self) -> Result<(usize, usize), ApiError> {
        let limit = match &self.limit {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad(format!(
                        "limit = {v:?}: expected a whole number from 1 to {MAX_LIMIT}"
                    )))
                }
            },
        };
        let offset = match &self.offset {
            None => 0,
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| ApiError::bad(format!("offset = {v:?}: expected a whole number")))?,
        };
        if offset > 0 && self.after.is_some() {
            return Err(ApiError::bad("give offset or after, not both"));
        }
        Ok((limit, offset))
    }
}

/// A query string axum could not parse (bad percent-encoding...): 400.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad(format!("bad query string: {}", e.body_text())))
}

/// A path parameter axum could not decode: 400.
fn path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(p)| p)
        .map_err(|e| ApiError::bad(format!("bad path: {}", e.body_text())))
}

/// One page of `items` and the paging fields around it.
fn page(items: Vec<Value>, total: usize, limit: usize, offset: usize, key: &str) -> Value {
    let mut v = json!({ "total": total, "limit": limit, "offset": offset });
    v[key] = Value::Array(items);
    v
}

/// What a session looks like to the API: its connection (if any) and its queues.
fn client_json(state: &AdminState, h: &SessionHandle) -> Value {
    let info = h
        .ownership()
        .owner
        .as_ref()
        .and_then(|o| o.info.as_deref().cloned());
    let (queued, bytes, memory_bytes, on_disk) = {
        let o = h.outbox();
        (o.len(), o.bytes(), o.memory_bytes(), o.cold_len())
    };
    let mut v = json!({
        "client_id": &*h.client_id,
        "connected": info.is_some(),
        "persistent": h.persistent.load(Ordering::Relaxed),
        "inflight": h.inflight.load(Ordering::Relaxed),
        "inflight_window": h.window.load(Ordering::Relaxed),
        "queue": {
            "messages": queued,
            "bytes": bytes,
            "memory_bytes": memory_bytes,
            "on_disk_messages": on_disk,
            "memory_messages": queued.saturating_sub(on_disk),
        },
        "dropped": h.drops().total.load(Ordering::Relaxed),
        "drops": {
            "queue_full_newest": h.drops().queue_full_newest.load(Ordering::Relaxed),
            "queue_full_oldest": h.drops().queue_full_oldest.load(Ordering::Relaxed),
            "qos0_rate": h.drops().qos0_rate.load(Ordering::Relaxed),
        },
        "shaping_rule": Value::Null,
    });
    // The `[[shaping]]` rule of the connected client (first match on client id or username).
    if let (Some(i), Ok(broker)) = (&info, state.broker()) {
        if let Some(Applies::Session(index, rule)) =
            broker
                .router
                .shaping
                .applies(&h.client_id, i.username.as_deref(), None)
        {
            v["shaping_rule"] = json!({
                "index": index,
                "client_id": rule.client_id,
                "username": rule.username,
                "messages_per_second": rule.messages_per_second,
                "bytes_per_second": rule.bytes_per_second,
                "burst": rule.burst(),
                "overflow": rule.overflow,
            });
        }
    }
    if let Some(i) = info {
        let fields = json!({
            "address": i.peer.to_string(),
            "listener": state.listener_name(i.listener),
            "protocol": protocol_name(i.protocol),
            "protocol_level": i.protocol,
            "keepalive": i.keep_alive,
            "username": i.username.as_deref(),
            "connected_since": rfc3339(i.connected_at_ms),
            "connected_since_ms": i.connected_at_ms,
        });
        if let (Some(v), Value::Object(f)) = (v.as_object_mut(), fields) {
            v.extend(f);
        }
    }
    v
}

/// "3.1", "3.1.1", "5.0" for a protocol level.
pub fn protocol_name(level: u8) -> &'static str {
    match level {
        3 => "3.1",
        4 => "3.1.1",
        5 => "5.0",
        _ => "unknown",
    }
}

#[derive(Debug, Default, Deserialize)]
struct ClientsQuery {
    /// Client ids starting with this.
    prefix: Option<String>,
    username: Option<String>,
    /// A listener's `scheme://address` (as in `listener` of a client) or its index.
    listener: Option<String>,
    #[serde(flatten)]
    paging: Paging,
}

/// `GET /api/v1/clients`: connected clients, filtered and paged.
async fn clients(State(state): Shared, q: Result<Query<ClientsQuery>, QueryRejection>) -> Answer {
    let q = query(q)?;
    let (limit, offset) = q.paging.parse()?;
    let broker = state.broker()?;
    let mut handles: Vec<Arc<SessionHandle>> = broker
        .session_handles()
        .into_iter()
        .filter(|h| {
            q.prefix
                .as_deref()
                .is_none_or(|p| h.client_id.starts_with(p))
        })
        .filter(|h| q.paging.after.as_deref().is_none_or(|a| &*h.client_id > a))
        .collect();
    handles.retain(|h| {
        let own = h.ownership();
        let Some(info) = own.owner.as_ref().and_then(|o| o.info.as_deref()) else {
            return false;
        };
        let user_ok = q
            .username
            .as_deref()
            .is_none_or(|u| info.username.as_deref() == Some(u));
        let listener_ok = q.listener.as_deref().is_none_or(|l| {
            l.parse::<usize>().ok() == Some(info.listener)
                || state.listener_name(info.listener) == l
        });
        user_ok && listener_ok
    });
    handles.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
    let total = handles.len();
    let items: Vec<Value> = handles
        .iter()
        .skip(offset)
        .take(limit)
        .map(|h| client_json(&state, h))
        .collect();
    let more = offset + items.len() < total;
    let next = more
        .then(|| {
            items
                .last()
                .and_then(|c| c["client_id"].as_str())
                .map(str::to_owned)
        })
        .flatten();
    let mut out = page(items, total, limit, offset, "clients");
    out["next"] = json!(next);
    Ok(Json(out))
}

/// `GET /api/v1/clients/{id}`: one session (connected or parked) with its subscriptions.
async fn client(State(state): Shared, id: Result<Path<String>, PathRejection>) -> Answer {
    let id = path(id)?;
    let broker = state.broker()?;
    let handle = broker
        .session(&id)
        .ok_or_else(|| ApiError::not_found(format!("no session with client id {id:?}")))?;
    let mut v = client_json(&state, &handle);
    let mut subs = Vec::new();
    read(&broker.router.subscriptions).for_each_subscription(|filter, group, client, entry| {
        if **client == *id {
            subs.push(subscription_json(filter, group, client, entry));
        }
    });
    subs.sort_by(|a, b| a["filter"].as_str().cmp(&b["filter"].as_str()));
    v["subscriptions"] = Value::Array(subs);
    Ok(Json(v))
}

/// `DELETE /api/v1/clients/{id}`: disconnects the client (5.0: DISCONNECT 0x98).
async fn kick(State(state): Shared, id: Result<Path<String>, PathRejection>) -> Answer {
    let id = path(id)?;
    let broker = state.broker()?;
    match broker.kick(&id).await {
        Kick::Disconnected => Ok(Json(json!({ "disconnected": id }))),
        Kick::Unknown => Err(ApiError::not_found(format!(
            "no session with client id {id:?}"
        ))),
        Kick::NotConnected => Err(ApiError::not_found(format!(
            "client {id:?} is not connected (its session is parked: DELETE /api/v1/sessions/{{id}} ends it)"
        ))),
        Kick::Closing => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("client {id:?} is disconnecting on its own; try again"),
        )),
    }
}

/// `DELETE /api/v1/sessions/{id}`: ends the session (disconnecting its client first).
async fn end_session(State(state): Shared, id: Result<Path<String>, PathRejection>) -> Answer {
    let id = path(id)?;
    let broker = state.broker()?;
    match broker.end_session(&id).await {
        Ok(true) => Ok(Json(json!({ "ended": id }))),
        Ok(false) => Err(ApiError::not_found(format!(
            "no session with client id {id:?}"
        ))),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("client {id:?} is disconnecting on its own; try again"),
        )),
    }
}

fn subscription_json(filter: &str, group: Option<&str>, client: &ClientId, e: &SubEntry) -> Value {
    let full = match group {
        Some(g) => format!("$share/{g}/{filter}"),
        None => filter.to_owned(),
    };
    json!({
        "client_id": &**client,
        "filter": full,
        "share_group": group,
        "qos": e.options.qos as u8,
        "no_local": e.options.no_local,
        "retain_as_published": e.options.retain_as_published,
        "retain_handling": e.options.retain_handling as u8,
        "subscription_identifier": e.identifier,
    })
}

#[derive(Debug, Default, Deserialize)]
struct SubscriptionsQuery {
    /// Only this client's subscriptions.
    client: Option<String>,
    /// Only subscriptions with exactly this filter (`$share/{group}/...` for shared ones).
    filter: Option<String>,
    #[serde(flatten)]
    paging: Paging,
}

/// `GET /api/v1/subscriptions?client=...&filter=...`.
async fn subscriptions(
    State(state): Shared,
    q: Result<Query<SubscriptionsQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let (limit, offset) = q.paging.parse()?;
    if let Some(f) = &q.filter {
        TopicFilter::try_from(f.as_str())
            .map_err(|e| ApiError::bad(format!("filter = {f:?}: {e}")))?;
    }
    let broker = state.broker()?;
    let mut all = Vec::new();
    read(&broker.router.subscriptions).for_each_subscription(|filter, group, client, entry| {
        if q.client.as_deref().is_some_and(|c| **client != *c) {
            return;
        }
        let v = subscription_json(filter, group, client, entry);
        if q.filter.as_deref().is_some_and(|f| v["filter"] != f) {
            return;
        }
        all.push(v);
    });
    let key = |v: &Value| {
        (
            v["client_id"].as_str().unwrap_or("").to_owned(),
            v["filter"].as_str().unwrap_or("").to_owned(),
        )
    };
    all.sort_by_key(key);
    let total = all.len();
    let items = all.into_iter().skip(offset).take(limit).collect();
    Ok(Json(page(items, total, limit, offset, "subscriptions")))
}

/// `GET /api/v1/shared-groups`: members, backlog and strategy of every group.
async fn shared_groups(State(state): Shared) -> Answer {
    let broker = state.broker()?;
    Ok(Json(json!({ "groups": groups_json(broker) })))
}

/// The shared groups as JSON (also in the dashboard's snapshot).
pub fn groups_json(broker: &Broker) -> Vec<Value> {
    broker
        .router
        .shared_groups()
        .into_iter()
        .map(|g| {
            let (group, filter) = g.key.shared().unwrap_or(("", g.key.as_str()));
            json!({
                "group": group,
                "filter": filter,
                "key": g.key.as_str(),
                "members": g.members.iter().map(|m| &**m).collect::<Vec<_>>(),
                "member_count": g.members.len(),
                "queue": {
                    "messages": g.queued,
                    "memory_bytes": g.memory_bytes,
                    "on_disk_messages": g.on_disk,
                },
                "strategy": serde_json::to_value(g.strategy).unwrap_or(Value::Null),
                "orphaned": g.orphaned,
            })
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
struct RetainedQuery {
    /// Topic filter the retained messages' topics match; default `#` (which, as for
    /// subscribers, does not reach `$` topics [MQTT-4.7.2-1]).
    filter: Option<String>,
    #[serde(flatten)]
    paging: Paging,
}

/// `GET /api/v1/retained?filter=...`.
async fn retained(State(state): Shared, q: Result<Query<RetainedQuery>, QueryRejection>) -> Answer {
    let q = query(q)?;
    let (limit, offset) = q.paging.parse()?;
    let filter = q.filter.as_deref().unwrap_or("#");
    let filter = TopicFilter::try_from(filter)
        .map_err(|e| ApiError::bad(format!("filter = {filter:?}: {e}")))?;
    if filter.shared().is_some() {
        return Err(ApiError::bad(
            "filter: a $share/ filter matches no retained topic",
        ));
    }
    let broker = state.broker()?;
    let now = Instant::now();
    let mut found: Vec<Arc<Message>> = Vec::new();
    read(&broker.router.retained).for_each_match(filter.as_str(), |_, m| {
        if !m.is_expired(now) {
            found.push(m.clone());
        }
    });
    found.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    let total = found.len();
    let items = found
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| {
            let text = std::str::from_utf8(&m.payload).ok();
            let mut v = json!({
                "topic": m.topic.as_str(),
                "qos": m.qos as u8,
                "bytes": m.payload.len(),
                "payload": text,
            });
            if text.is_none() {
                v["payload_base64"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(&m.payload));
            }
            v
        })
        .collect();
    Ok(Json(page(items, total, limit, offset, "retained")))
}

/// `DELETE /api/v1/retained/{topic}` (the topic URL-encoded; `/` may be `%2F` or plain).
async fn clear_retained(
    State(state): Shared,
    topic: Result<Path<String>, PathRejection>,
) -> Answer {
    let topic = path(topic)?;
    TopicName::try_from(topic.as_str())
        .map_err(|e| ApiError::bad(format!("topic {topic:?}: {e}")))?;
    let broker = state.broker()?;
    if broker.router.clear_retained(&topic) {
        Ok(Json(json!({ "deleted": topic })))
    } else {
        Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        )))
    }
}

/// The body of `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    /// UTF-8 text; or give `payload_base64` for bytes.
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

/// `POST /api/v1/publish`: routed like a client's PUBLISH (retained store, subscriptions,
/// shared groups, `$delayed/{seconds}/`), except that the ACL does not apply. The `$` topic
/// rules do: `$SYS` and `$share` are the broker's [MQTT-4.7.2-1]. A QoS 1/2 message is answered
/// once the store has it (per `persistence.mode`).
async fn publish(State(state): Shared, body: Result<Json<PublishBody>, JsonRejection>) -> Answer {
    let Json(b) = body.map_err(|e| ApiError::bad(format!("body: {}", e.body_text())))?;
    let broker = state.broker()?;
    let cfg = &broker.config;
    let qos = QoS::from_u8(b.qos)
        .ok_or_else(|| ApiError::bad(format!("qos = {}: expected 0, 1 or 2", b.qos)))?;
    if b.qos > cfg.mqtt.maximum_qos {
        return Err(ApiError::bad(format!(
            "qos = {}: over mqtt.maximum_qos ({})",
            b.qos, cfg.mqtt.maximum_qos
        )));
    }
    if b.retain && !cfg.mqtt.retain_available {
        return Err(ApiError::bad("retain: mqtt.retain_available is false"));
    }
    let payload = match (b.payload, b.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad("give payload or payload_base64, not both"))
        }
        (Some(p), None) => Bytes::from(p),
        (None, Some(p)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| ApiError::bad(format!("payload_base64: {e}")))?,
        ),
        (None, None) => Bytes::new(),
    };
    if payload.len() + b.topic.len() > cfg.mqtt.max_packet_size as usize {
        return Err(ApiError::bad("payload: larger than mqtt.max_packet_size"));
    }
    if b.topic.len() > cfg.limits.max_topic_length {
        return Err(ApiError::bad("topic: longer than limits.max_topic_length"));
    }
    // `$delayed/{seconds}/{topic}` as for clients (routing::delayed).
    let (target, delay) = match crate::topic::delayed(&b.topic, cfg.mqtt.max_delay_seconds) {
        None => (b.topic.as_str(), None),
        Some(Ok(d)) => (d.target, Some(d.seconds)),
        Some(Err(e)) => return Err(ApiError::bad(format!("topic {:?}: {e}", b.topic))),
    };
    if target.is_empty() {
        return Err(ApiError::bad("topic: empty [MQTT-4.7.3-1]"));
    }
    let topic = TopicName::try_from(target)
        .map_err(|e| ApiError::bad(format!("topic {target:?}: {e} [MQTT-3.3.2-2]")))?;
    if crate::topic::is_reserved_for_clients(topic.as_str()) {
        return Err(ApiError::bad(format!(
            "topic {target:?}: $SYS and $share topics belong to the broker"
        )));
    }
    let now = Instant::now();
    let mut msg = Message::new(
        topic,
        payload,
        qos,
        b.retain,
        PublishProperties::default(),
        // No client has an empty id (the broker assigns one), so No Local never matches.
        ClientId::from(""),
        now,
    );
    msg.priority = broker.router.priority_of(&msg.topic);
    let msg = Arc::new(msg);
    let routed = {
        let _records = broker.store.batch();
        match delay {
            Some(s) => broker
                .router
                .publish_delayed(msg, Duration::from_secs(u64::from(s)), None, now)
                .map(|()| None)
                .map_err(|_| {
                    "too many $delayed messages waiting (limits.max_delayed_messages)".to_owned()
                }),
            None => broker
                .router
                .publish_from_client(msg, None)
                .map(Some)
                .map_err(|s| {
                    format!("the queue of subscriber {s} is full (mqtt.queue_full_policy = reject)")
                }),
        }
    };
    let queued = routed.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not published: {e}"),
        )
    })?;
    if qos != QoS::AtMostOnce {
        if let Some(ticket) = broker.store.ticket() {
            match tokio::time::timeout(STORE_WAIT, ticket).await {
                Ok(Ok(true)) => {}
                _ => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "routed, but the store did not confirm it (failed or too slow)",
                    ))
                }
            }
        }
    }
    Ok(Json(json!({
        "published": target,
        "queued_for": queued,
        "delayed_seconds": delay,
    })))
}
