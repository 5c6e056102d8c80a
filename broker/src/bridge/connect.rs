//! How each side of a bridge is opened: the remote (TCP or TLS, CONNECT with the bridge bit
//! or 5.0 properties, CONNACK), and the local session `$bridge/{name}` over an in-process pipe
//! served by the ordinary connection task; and the local session prepared before the first
//! connection (subscribed, so messages queue while the remote is unreachable) or ended when
//! its bridge is no longer configured.

use std::sync::Arc;

use bytes::BytesMut;
use sluice_codec::{
    encode, ConnAck, Connect, ConnectProperties, Disconnect, Packet, Protocol, ReasonCode,
    RetainHandling, Str, Subscribe, Subscription, SubscriptionOptions, TopicFilter,
};
use tokio::sync::{mpsc, watch};

use super::flows::Rule;
use super::link::{self, LinkError, PacketReader, PacketWriter};
use super::{CONNECT_TIMEOUT, PIPE_BYTES, REMOTE_RECEIVE_MAXIMUM};
use crate::broker::Broker;
use crate::config::bridge_client_id;
use crate::config::BridgeConfig;
use crate::connection::ConnInfo;

/// Ends the local session of bridge `name`, which is no longer configured: connects to it
/// with Clean Start and a Session Expiry of 0, and disconnects.
pub(super) async fn forget(
    broker: Arc<Broker>,
    name: String,
    stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let queued = broker
        .session(&bridge_client_id(&name))
        .map(|h| h.outbox().len())
        .unwrap_or(0);
    let local = Local {
        name: &name,
        clean_start: true,
        expiry: 0,
        window: 1,
    };
    let ended = async {
        let (mut r, mut w, _) = connect_local(&broker, &local, &stop, &alive).await?;
        w.send_now(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await?;
        // The connection task closes the pipe once the session has ended.
        loop {
            match r.next().await {
                Ok(_) => {}
                Err(LinkError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, ended).await {
        Ok(Ok(())) => {
            tracing::warn!(bridge = %name, queued, "bridge no longer configured: its local session and queued messages discarded")
        }
        Ok(Err(e)) => {
            tracing::warn!(bridge = %name, error = %e, "bridge no longer configured, but its local session could not be ended")
        }
        Err(_) => {
            tracing::warn!(bridge = %name, "bridge no longer configured, but its local session did not answer")
        }
    }
}

/// One SUBSCRIBE for `rules` (None if there are none): No Local where the protocol has it,
/// Retain As Published, retained messages only for a new subscription.
pub(super) fn subscribe(
    rules: &[&Rule],
    filter: impl Fn(&Rule) -> &String,
    v5: bool,
) -> Option<Subscribe> {
    let filters: Vec<Subscription> = rules
        .iter()
        .filter_map(|r| {
            let f = TopicFilter::try_from(filter(r).as_str()).ok()?;
            Some(Subscription {
                filter: f,
                options: SubscriptionOptions {
                    qos: r.qos,
                    no_local: v5,
                    retain_as_published: v5,
                    retain_handling: if v5 {
                        RetainHandling::OnNewSubscription
                    } else {
                        RetainHandling::OnSubscribe
                    },
                },
            })
        })
        .collect();
    (!filters.is_empty()).then(|| Subscribe {
        pkid: 1,
        filters,
        rejected: Vec::new(),
        properties: Default::default(),
    })
}

/// TCP (and TLS), CONNECT, CONNACK with the remote. `bridge_bit`: 3.1.1 with protocol level
/// 0x84 (see [`link::set_bridge_bit`]).
pub(super) async fn connect_remote(
    b: &BridgeConfig,
    protocol: Protocol,
    bridge_bit: bool,
    max_packet: usize,
) -> Result<(PacketReader, PacketWriter, ConnAck), LinkError> {
    let stream = link::open_remote(b).await?;
    // A 5.0 remote is told the local limit and must keep to it [MQTT-3.1.2-24]; a 3.1.1 one
    // cannot be told, so anything MQTT can carry is read (a message too large for Sluice is
    // then dropped by the forwarder, rather than cut the connection it would come back on).
    let read_limit = if protocol.is_v5() {
        max_packet
    } else {
        crate::MAX_PACKET_SIZE as usize
    };
    let (mut r, mut w) = link::split(stream, protocol, read_limit);
    let some = |s: &str| (!s.is_empty()).then(|| Str::try_from(s).ok()).flatten();
    let connect = Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: false,
        keep_alive: b.keep_alive,
        client_id: Str::try_from(b.remote_client_id())
            .map_err(|e| LinkError::Protocol(format!("client_id: {e}")))?,
        will: None,
        username: some(&b.username),
        password: (!b.password.is_empty()).then(|| b.password.clone().into_bytes().into()),
        properties: ConnectProperties {
            // A persistent session that does not expire: the remote keeps the `in`
            // subscriptions and queues their messages while the bridge is away.
            session_expiry_interval: Some(u32::MAX),
            receive_maximum: Some(REMOTE_RECEIVE_MAXIMUM),
            maximum_packet_size: u32::try_from(max_packet).ok(),
            ..Default::default()
        },
    }));
    let mut bytes = BytesMut::new();
    encode(&connect, protocol, &mut bytes)?;
    if protocol == Protocol::V311 && bridge_bit {
        link::set_bridge_bit(&mut bytes);
    }
    w.send_raw(&bytes);
    w.flush_all().await?;
    match r.next().await? {
        Packet::ConnAck(a) if a.reason == ReasonCode::SUCCESS => Ok((r, w, a)),
        Packet::ConnAck(a) => Err(LinkError::Refused(a.reason)),
        p => Err(LinkError::Protocol(format!(
            "expected CONNACK, got {} [MQTT-3.2.0-1]",
            p.name()
        ))),
    }
}

/// How to open a bridge's local session.
pub(super) struct Local<'a> {
    pub(super) name: &'a str,
    pub(super) clean_start: bool,
    /// Session Expiry Interval: `u32::MAX` (never) for a running bridge.
    pub(super) expiry: u32,
    /// Receive Maximum: the remote's, so the local session sends no more than the remote
    /// takes.
    pub(super) window: u16,
}

/// Opens the bridge's local session `$bridge/{name}` over an in-process pipe served by the
/// connection task (MQTT 5.0).
pub(super) async fn connect_local(
    broker: &Arc<Broker>,
    local: &Local<'_>,
    stop: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) -> Result<(PacketReader, PacketWriter, ConnAck), LinkError> {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(crate::connection::serve_with(
        theirs,
        ConnInfo::bridge(),
        broker.clone(),
        stop.clone(),
        alive.clone(),
    ));
    let (mut r, mut w) = link::split(
        Box::new(ours),
        Protocol::V5,
        broker.config.mqtt.max_packet_size as usize,
    );
    let id = bridge_client_id(local.name);
    let id = Str::try_from(id).map_err(|e| LinkError::Protocol(e.to_string()))?;
    let connect = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: local.clean_start,
        keep_alive: 0,
        client_id: id.clone(),
        will: None,
        // For the ACL: `user $bridge/NAME` (the in-process connection is not password-checked).
        username: Some(id),
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: Some(local.expiry),
            receive_maximum: Some(local.window.max(1)),
            ..Default::default()
        },
    }));
    w.send_now(&connect).await?;
    match r.next().await? {
        Packet::ConnAck(a) if a.reason == ReasonCode::SUCCESS => Ok((r, w, a)),
        Packet::ConnAck(a) => Err(LinkError::Protocol(format!(
            "refused: {} {}",
            a.reason,
            a.properties
                .reason_string
                .as_ref()
                .map(|s| s.as_str())
                .unwrap_or("")
        ))),
        p => Err(LinkError::Protocol(format!(
            "expected CONNACK, got {}",
            p.name()
        ))),
    }
}

/// Before the first connection to the remote: makes sure the local session exists with the
/// `out` subscriptions (and without filters no longer configured), so that messages queue for
/// the remote from start-up on, even while it is unreachable. Connects, subscribes and
/// unsubscribes, waits for the answers, disconnects (the session stays, parked).
pub(super) async fn prepare(
    broker: &Arc<Broker>,
    b: &BridgeConfig,
    rules: &[Rule],
    stop: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) -> Result<(), LinkError> {
    let id = bridge_client_id(&b.name);
    let wanted: Vec<&Rule> = rules.iter().filter(|r| r.direction.outgoing()).collect();
    let stale: Vec<TopicFilter> = broker
        .parked_filters(&id)
        .unwrap_or_default()
        .iter()
        .filter(|f| !wanted.iter().any(|r| &r.local_filter == *f))
        .filter_map(|f| TopicFilter::try_from(f.as_str()).ok())
        .collect();
    let local = Local {
        name: &b.name,
        clean_start: false,
        expiry: u32::MAX,
        window: 1,
    };
    let (mut r, mut w, _) = connect_local(broker, &local, stop, alive).await?;
    let mut answers = 0;
    if !stale.is_empty() {
        tracing::info!(bridge = %b.name, filters = ?stale, "bridge topics no longer configured: unsubscribed");
        w.send(&Packet::Unsubscribe(sluice_codec::Unsubscribe {
            pkid: 2,
            filters: stale,
            rejected: Vec::new(),
            user_properties: Vec::new(),
        }))?;
        answers += 1;
    }
    if let Some(s) = subscribe(&wanted, |r| &r.local_filter, true) {
        w.send(&Packet::Subscribe(s))?;
        answers += 1;
    }
    w.flush_all().await?;
    while answers > 0 {
        // A resumed session may resend a message first: left unacknowledged, it is sent
        // again on the next connection.
        if let Packet::SubAck(_) | Packet::UnsubAck(_) = r.next().await? {
            answers -= 1;
        }
    }
    w.send_now(&Packet::Disconnect(Disconnect::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )))
    .await
}
