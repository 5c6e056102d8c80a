//! The per-connection MQTT state machine, after CONNECT: no sockets, no clock inside.
//!
//! [`ClientState::handle`] takes a decoded packet and the current time, updates the session,
//! routes messages through the [`Broker`] (synchronous: matching and queueing never await), and
//! appends the packets to send to [`ClientState::write_buf`]. [`ClientState::drain_outbox`] moves
//! queued deliveries into the inflight window. The connection task (`connection/`) only moves
//! bytes and time in and out; the unit tests below drive this without a socket.

mod alias;
pub(crate) mod connect;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use sluice_codec::Protocol;
use sluice_codec::{
    encode, encoded_len, AckProperties, Auth, AuthProperties, Disconnect, LastWill, Packet, PubAck,
    Publish, QoS, ReasonCode, Str, SubAck, Subscribe, TopicFilter, TopicName, UnsubAck,
    Unsubscribe,
};

use crate::auth::enhanced::{AuthContinuation, AuthStep};
use crate::broker::Broker;
use crate::locks::write;
use crate::message::{ClientId, Message};
use crate::persist::{Record, Store, SENT_HORIZON_AHEAD};
use crate::protocol::alias::{AliasUse, OutboundAliases};
use crate::routing::shared_subscriptions::{GroupQueue, LoadClaim};
use crate::routing::Requester;
use crate::routing::SubEntry;
use crate::session::{Delivery, Inflight, Session, SessionHandle, SubscriptionRecord};

/// Why and how a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// DISCONNECT reason code to send first (5.0 only); None when the client closed it.
    pub send: Option<ReasonCode>,
    /// Whether the will is published (everything but a DISCONNECT 0x00, 3.1.2.5).
    pub publish_will: bool,
    /// For the disconnect log line.
    pub reason: String,
}

impl Close {
    /// The server closes because of an error with `code` ([MQTT-4.13.1-1]).
    pub fn error(code: ReasonCode, reason: impl Into<String>) -> Close {
        Close {
            send: Some(code),
            publish_will: true,
            reason: reason.into(),
        }
    }
}

/// A re-authentication exchange waiting for the client's next AUTH.
struct Reauth(Box<dyn AuthContinuation>);

impl std::fmt::Debug for Reauth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reauth")
    }
}

/// Whether a topic name or filter exceeds `limits.max_topic_length` / `max_topic_levels`.
pub fn topic_over_limits(topic: &str, limits: &crate::config::LimitsConfig) -> bool {
    topic.len() > limits.max_topic_length
        || topic.bytes().filter(|&b| b == b'/').count() >= limits.max_topic_levels
}

/// What the broker granted at CONNECT and keeps for the connection's lifetime.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub protocol: Protocol,
    pub client_id: ClientId,
    pub username: Option<Arc<str>>,
    /// Effective Keep Alive in seconds (0: none).
    pub keep_alive: u16,
    /// Session Expiry Interval asked for in CONNECT (for the DISCONNECT rule [MQTT-3.14.2-2]).
    pub connect_session_expiry: u32,
    /// Most QoS 1/2 messages in flight to the client: min(its Receive Maximum, max_inflight).
    pub send_window: usize,
    /// The client's Maximum Packet Size: larger messages are not sent to it [MQTT-3.1.2-25].
    pub client_max_packet: usize,
    /// Our Receive Maximum towards the client (inbound QoS 2 awaiting PUBREL).
    pub receive_maximum: usize,
    /// Our Topic Alias Maximum towards the client.
    pub topic_alias_maximum: u16,
    /// Whether the client wants Reason Strings and User Properties on errors (5.0).
    pub request_problem_information: bool,
    /// Topic aliases we may use towards the client: min(its Topic Alias Maximum,
    /// `mqtt.max_outbound_topic_aliases`).
    pub outbound_alias_maximum: u16,
}

/// The Reason String of a PUBACK/PUBREC 0x97 for `mqtt.queue_full_policy = "reject"`.
const QUEUE_FULL: &str = "a subscriber's queue is full";

/// Capacity the write buffer (or the held buffer) is given when the first packet after an
/// idle spell is encoded into it; it grows as needed and is released once written.
const FIRST_WRITE_BUF: usize = 256;

/// The parts of [`ClientState`] only some 5.0 connections use.
#[derive(Debug)]
struct V5State {
    /// The Authentication Method of CONNECT when enhanced authentication was used: only then
    /// may the client re-authenticate, with the same method [MQTT-4.12.1-1].
    auth_method: Option<Str>,
    /// A re-authentication in progress.
    reauth: Option<Reauth>,
    /// Topic aliases the client set (5.0, 3.3.2.3.4): index alias-1. Sized on first use.
    inbound_aliases: Vec<Option<TopicName>>,
    /// Topic aliases towards the client (5.0).
    outbound_aliases: OutboundAliases,
}

/// The state of one connection after a successful CONNECT.
#[derive(Debug)]
pub struct ClientState {
    pub n: Negotiated,
    /// The shared half of the session (outbox, notify).
    pub handle: Arc<SessionHandle>,
    /// The owned half of the session.
    pub session: Session,
    /// Queues of the shared subscriptions this session holds: pulled from when the window has
    /// room (routing/shared_subscriptions.rs).
    group_queues: Vec<(TopicFilter, Arc<GroupQueue>)>,
    /// Rotates which group queue is pulled from first.
    group_cursor: usize,
    /// Whether the queue (or a group queue) had messages to read back from the store at the
    /// last drain (so the connection loop does not lock the queues to ask).
    cold_waiting: bool,
    /// Set while the messages being read back are a group queue's (this member claimed the
    /// job; dropping the claim gives it back).
    group_load: Option<LoadClaim>,
    /// The persistent store (disabled in memory mode and in unit tests).
    store: Store,
    /// Packets that may go out only once the store has what they promise (acks of stored
    /// messages, outbound QoS 2 PUBLISHes of persistent sessions), and everything after them.
    /// The connection asks the store for a ticket and sends these when it is answered.
    pub held: BytesMut,
    /// Set by the connection while earlier held packets still wait: new packets queue behind.
    pub holding: bool,
    /// What only some 5.0 connections use (enhanced authentication, topic aliases): boxed and
    /// allocated on first use, so other connections do not carry it.
    v5: Option<Box<V5State>>,
    /// The will, until a normal DISCONNECT deletes it [MQTT-3.1.2-10].
    /// Boxed: most clients have none, and a `LastWill` is large.
    pub will: Option<Box<LastWill>>,
    /// Encoded packets waiting for the socket.
    pub write_buf: BytesMut,
    /// Deliveries dropped because they exceeded the client's Maximum Packet Size.
    pub oversize_dropped: u64,
    /// How far this session's deliveries may have gone on the wire (persist/, "Redeliveries
    /// after a crash carry DUP").
    horizon: SentHorizon,
}

/// A session's `SentHorizon` as its connection keeps it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SentHorizon {
    /// Recovered from the log: deliveries numbered up to this may have been sent before, by a
    /// connection that did not live to log it. They go out with DUP.
    recovered: u64,
    /// The highest horizon this connection logged.
    logged: u64,
    /// The highest horizon known to be on disk (its ticket answered): a delivery numbered up to
    /// this may go out at once.
    safe: u64,
    /// A horizon logged whose ticket the connection has yet to take.
    unticketed: Option<u64>,
}

impl ClientState {
    /// State for a connection whose CONNECT was accepted.
    pub fn new(
        n: Negotiated,
        handle: Arc<SessionHandle>,
        session: Session,
        will: Option<LastWill>,
    ) -> ClientState {
        handle
            .window
            .store(n.send_window, std::sync::atomic::Ordering::Relaxed);
        handle
            .inflight
            .store(session.inflight_len(), std::sync::atomic::Ordering::Relaxed);
        ClientState {
            n,
            handle,
            session,
            group_queues: Vec::new(),
            group_cursor: 0,
            cold_waiting: false,
            group_load: None,
            store: Store::disabled(),
            held: BytesMut::new(),
            holding: false,
            v5: None,
            will: will.map(Box::new),
            // Allocated by the first packet and released by the connection once written:
            // an idle connection holds no write buffer.
            write_buf: BytesMut::new(),
            oversize_dropped: 0,
            horizon: SentHorizon::default(),
        }
    }

    /// The 5.0 parts, allocated on first use.
    fn v5_mut(&mut self) -> &mut V5State {
        let max = self.n.outbound_alias_maximum;
        self.v5.get_or_insert_with(|| {
            Box::new(V5State {
                auth_method: None,
                reauth: None,
                inbound_aliases: Vec::new(),
                outbound_aliases: OutboundAliases::new(max),
            })
        })
    }

    /// The Authentication Method of CONNECT, when enhanced authentication was used.
    pub fn set_auth_method(&mut self, method: Option<Str>) {
        if method.is_some() || self.v5.is_some() {
            self.v5_mut().auth_method = method;
        }
    }

    /// The session's horizon as the log had it when this connection took over
    /// ([`Store::sent_horizon`]): its queued deliveries numbered up to it go out with DUP.
    pub fn set_recovered_horizon(&mut self, seq: u64) {
        self.horizon.recovered = seq;
    }

    /// A horizon logged since the last call, whose ticket the connection should take (and
    /// report with [`ClientState::horizon_safe`] once answered).
    pub fn horizon_to_ticket(&mut self) -> Option<u64> {
        self.horizon.unticketed.take()
    }

    /// The horizon `seq` is on disk.
    pub fn horizon_safe(&mut self, seq: u64) {
        self.horizon.safe = self.horizon.safe.max(seq);
    }

    /// At a clean end of the connection every delivery it sent is logged as sent: the record
    /// that sets the horizon back to what was recovered, if this connection moved it.
    pub fn horizon_at_close(&self) -> Option<Record> {
        (self.persistent() && self.horizon.logged > self.horizon.recovered).then(|| {
            Record::SentHorizon {
                client: self.n.client_id.clone(),
                seq: self.horizon.recovered,
            }
        })
    }

    /// Before delivery `seq` goes out: logs a horizon ahead of it when the last one is half
    /// used up. Returns whether the PUBLISH must wait for the disk (no horizon covering it is
    /// known to be there yet).
    fn horizon_before_send(&mut self, seq: u64) -> bool {
        if seq == 0 || !self.persistent() {
            return false;
        }
        let h = &mut self.horizon;
        if seq + SENT_HORIZON_AHEAD / 2 > h.logged {
            h.logged = (seq + SENT_HORIZON_AHEAD).max(h.recovered);
            h.unticketed = Some(h.logged);
            let rec = Record::SentHorizon {
                client: self.n.client_id.clone(),
                seq: h.logged,
            };
            self.store.append(rec);
        }
        seq > self.horizon.safe
    }

    /// Uses `store` for this connection's persistent records.
    pub fn set_store(&mut self, store: Store) {
        self.store = store;
    }

    /// Whether this session's state is written to the store.
    pub fn persistent(&self) -> bool {
        self.store.is_enabled() && self.session.expiry_interval > 0
    }

    /// Appends a record if the session is persistent.
    fn log(&self, rec: impl FnOnce(ClientId) -> Record) {
        if self.persistent() {
            self.store.append(rec(self.n.client_id.clone()));
        }
    }

    /// Encodes `packet` to go out only after the store has everything logged so far.
    fn send_held(&mut self, packet: &Packet) {
        if self.store.holds_acks() {
            if let Err(e) = encode(packet, self.n.protocol, &mut self.held) {
                tracing::error!(client_id = %self.n.client_id, packet = packet.name(), error = %e, "cannot encode packet; skipped");
            }
        } else {
            self.send(packet);
        }
    }

    /// For a persistent session, holds `packet` until the store has the records logged before
    /// it (PUBREL after `Released`, PUBCOMP after `Qos2InDone`, SUBACK after `Subscribe`): the
    /// client must not act on state a crash could undo. Otherwise sends it at once.
    fn send_if_persistent_held(&mut self, packet: &Packet) {
        if self.persistent() {
            self.send_held(packet);
        } else {
            self.send(packet);
        }
    }

    /// Encodes `packet` into the write buffer (or behind held packets, keeping the order).
    /// Encoding only fails for values we built ourselves; such a packet is logged and skipped
    /// rather than taking the connection down.
    pub fn send(&mut self, packet: &Packet) {
        let buf = if self.holding || !self.held.is_empty() {
            &mut self.held
        } else {
            &mut self.write_buf
        };
        if buf.capacity() == 0 {
            // Idle connections hold no buffer; a first packet gets room for a few more.
            buf.reserve(FIRST_WRITE_BUF);
        }
        if let Err(e) = encode(packet, self.n.protocol, buf) {
            tracing::error!(client_id = %self.n.client_id, packet = packet.name(), error = %e, "cannot encode packet; skipped");
        }
    }

    /// A reason string for an error ack, if the client did not opt out (3.1.2.11.7).
    fn reason_string(&self, text: &'static str) -> AckProperties {
        let mut p = AckProperties::default();
        if self.n.protocol.is_v5() && self.n.request_problem_information {
            p.reason_string = Some(Str::from_static(text));
        }
        p
    }

    /// The DISCONNECT the server sends for `code`, with a Reason String when it fits the
    /// client's Maximum Packet Size [MQTT-3.14.2-3].
    pub fn disconnect_packet(&self, code: ReasonCode, reason: &str) -> Packet {
        let mut d = Disconnect::new(code);
        let text: String = reason.chars().take(200).collect();
        d.properties.reason_string = Str::try_from(text).ok();
        let fits = encoded_len(&Packet::Disconnect(d.clone()), self.n.protocol)
            .is_ok_and(|len| len <= self.n.client_max_packet);
        if !fits {
            d.properties.reason_string = None;
        }
        Packet::Disconnect(d)
    }

    /// Handles one packet from the client.
    pub fn handle(&mut self, now: Instant, packet: Packet, broker: &Broker) -> Result<(), Close> {
        let r = self.dispatch(now, packet, broker);
        self.publish_inflight();
        r
    }

    /// Tells shared-subscription selection how full this client's window is.
    fn publish_inflight(&self) {
        let n = self.session.inflight_len();
        self.handle
            .inflight
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn dispatch(&mut self, now: Instant, packet: Packet, broker: &Broker) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(now, p, broker),
            Packet::PubAck(a) => {
                self.on_puback(a.pkid);
                Ok(())
            }
            Packet::PubRec(a) => {
                self.on_pubrec(a);
                Ok(())
            }
            Packet::PubRel(a) => {
                self.on_pubrel(a.pkid);
                Ok(())
            }
            Packet::PubComp(a) => {
                if let Some(i) = self.session.inflight_position(a.pkid) {
                    if matches!(self.session.inflight[i], Inflight::Release { .. }) {
                        self.session.inflight.remove(i);
                        self.log(|client| Record::Acked {
                            client,
                            pkid: a.pkid,
                        });
                    }
                }
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(now, s, broker),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u, broker);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            Packet::Connect(_) => Err(Close::error(
                ReasonCode::PROTOCOL_ERROR,
                "second CONNECT [MQTT-3.1.0-2]",
            )),
            Packet::Auth(a) => self.on_auth(a, broker),
            other => Err(Close::error(
                ReasonCode::PROTOCOL_ERROR,
                format!("{} may only be sent by a server", other.name()),
            )),
        }
    }

    /// Re-authentication (4.12.1): AUTH 0x19 starts it, AUTH 0x18 continues it, AUTH 0x00
    /// from the server ends it; a failure closes the connection with 0x87.
    fn on_auth(&mut self, a: Auth, broker: &Broker) -> Result<(), Close> {
        let Some(method) = self.v5.as_ref().and_then(|v| v.auth_method.clone()) else {
            return Err(Close::error(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an Authentication Method in CONNECT [MQTT-4.12.0-1]",
            ));
        };
        if a.properties.authentication_method.as_deref() != Some(&*method) {
            return Err(Close::error(
                ReasonCode::PROTOCOL_ERROR,
                "re-authentication must use the CONNECT's Authentication Method [MQTT-4.12.1-1]",
            ));
        }
        let data = a.properties.authentication_data.clone().unwrap_or_default();
        let step = match (a.reason, self.v5_mut().reauth.take()) {
            (ReasonCode::RE_AUTHENTICATE, None) => {
                match crate::auth::enhanced::authenticator(&method, broker.access.passwords()) {
                    Some(auth) => auth.start(&data),
                    None => AuthStep::Failure("authentication method no longer available"),
                }
            }
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(Reauth(next))) => next.step(&data),
            _ => {
                return Err(Close::error(
                    ReasonCode::PROTOCOL_ERROR,
                    "AUTH out of sequence (4.12.1)",
                ))
            }
        };
        let (reason, data) = match step {
            AuthStep::Continue { data, next } => {
                self.v5_mut().reauth = Some(Reauth(next));
                (ReasonCode::CONTINUE_AUTHENTICATION, Some(data))
            }
            AuthStep::Success { data, username } => {
                if self.n.username.as_deref() != Some(username.as_str()) {
                    // Another identity from now on: ACLs follow it.
                    self.n.username = Some(username.into());
                }
                (ReasonCode::SUCCESS, data)
            }
            AuthStep::Failure(why) => {
                return Err(Close::error(
                    ReasonCode::NOT_AUTHORIZED,
                    format!("re-authentication failed: {why}"),
                ));
            }
        };
        self.send(&Packet::Auth(Auth {
            reason,
            properties: AuthProperties {
                authentication_method: Some(method),
                authentication_data: data.map(bytes::Bytes::from),
                ..Default::default()
            },
        }));
        Ok(())
    }

    fn on_publish(&mut self, now: Instant, mut p: Publish, broker: &Broker) -> Result<(), Close> {
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Close::error(
                ReasonCode::PROTOCOL_ERROR,
                "Subscription Identifier in a PUBLISH from a client [MQTT-3.3.4-6]",
            ));
        }
        // Topic Alias (3.3.2.3.4).
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > self.n.topic_alias_maximum {
                return Err(Close::error(
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    format!(
                        "topic alias {alias} outside 1..={} [MQTT-3.3.2-9]",
                        self.n.topic_alias_maximum
                    ),
                ));
            }
            let slot = usize::from(alias) - 1;
            let max = usize::from(self.n.topic_alias_maximum);
            let aliases = &mut self.v5_mut().inbound_aliases;
            if aliases.len() <= slot {
                aliases.resize(max, None);
            }
            if p.topic.is_empty() {
                match &aliases[slot] {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(Close::error(
                            ReasonCode::PROTOCOL_ERROR,
                            format!("topic alias {alias} used before it was set (3.3.2.3.4)"),
                        ))
                    }
                }
            } else {
                aliases[slot] = Some(p.topic.clone());
            }
        }
        if p.topic.is_empty() {
            return Err(Close::error(
                ReasonCode::PROTOCOL_ERROR,
                "empty topic name without a topic alias [MQTT-4.7.3-1]",
            ));
        }
        if topic_over_limits(&p.topic, &broker.config.limits) {
            return Err(Close::error(
                ReasonCode::TOPIC_NAME_INVALID,
                "topic longer or deeper than limits.max_topic_length / max_topic_levels",
            ));
        }
        let cfg = &broker.config.mqtt;
        if p.qos as u8 > cfg.maximum_qos {
            return Err(Close::error(
                ReasonCode::QOS_NOT_SUPPORTED,
                "PUBLISH QoS above the server's Maximum QoS [MQTT-3.2.2-11]",
            ));
        }
        if p.retain && !cfg.retain_available {
            return Err(Close::error(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "RETAIN set but retained messages are not available [MQTT-3.2.2-14]",
            ));
        }
        if cfg.validate_utf8_payloads
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // 3.3.2.3.2: the receiver may check the payload it was told is UTF-8.
            const WHY: &str = "payload flagged as UTF-8 is not valid UTF-8 (3.3.2.3.2)";
            match p.qos {
                QoS::AtMostOnce => {
                    return Err(Close::error(ReasonCode::PAYLOAD_FORMAT_INVALID, WHY));
                }
                QoS::AtLeastOnce => self.send_ack(
                    Packet::PubAck,
                    p.pkid,
                    ReasonCode::PAYLOAD_FORMAT_INVALID,
                    WHY,
                ),
                QoS::ExactlyOnce => self.send_ack(
                    Packet::PubRec,
                    p.pkid,
                    ReasonCode::PAYLOAD_FORMAT_INVALID,
                    WHY,
                ),
            }
            return Ok(());
        }
        if p.qos != QoS::AtMostOnce && !broker.store.accepting() {
            // The store failed (disk full, I/O error): nothing new can be promised.
            if !self.n.protocol.is_v5() {
                return Err(Close::error(
                    ReasonCode::QUOTA_EXCEEDED,
                    "persistence unavailable: QoS 1/2 PUBLISH refused",
                ));
            }
            let kind = if p.qos == QoS::AtLeastOnce {
                Packet::PubAck
            } else {
                Packet::PubRec
            };
            let mut ack = PubAck::new(p.pkid);
            ack.reason = ReasonCode::QUOTA_EXCEEDED;
            ack.properties = self.reason_string("persistence unavailable (disk full or I/O error)");
            self.send(&kind(ack));
            return Ok(());
        }
        // `$SYS` belongs to the broker and `$share/` is not a topic; both are refused like an ACL
        // denial, as Mosquitto does. Other `$` topics are ordinary (wildcards just skip them).
        let reserved = crate::topic::is_reserved_for_clients(&p.topic);
        let allowed = !reserved
            && broker
                .access
                .may_publish(self.n.username.as_deref(), &self.n.client_id, &p.topic);
        match p.qos {
            QoS::AtMostOnce => {
                if allowed {
                    let _ = self.route(now, p, None, broker);
                }
            }
            QoS::AtLeastOnce => {
                let pkid = p.pkid;
                let (reason, text) = if !allowed {
                    (
                        ReasonCode::NOT_AUTHORIZED,
                        "not authorized to publish on this topic",
                    )
                } else {
                    let _g = self.store.batch();
                    match self.route(now, p, None, broker) {
                        Ok(()) => (ReasonCode::SUCCESS, ""),
                        Err(close) => {
                            if !self.n.protocol.is_v5() {
                                return Err(close);
                            }
                            (ReasonCode::QUOTA_EXCEEDED, QUEUE_FULL)
                        }
                    }
                };
                self.send_ack(Packet::PubAck, pkid, reason, text);
            }
            QoS::ExactlyOnce => {
                let pkid = p.pkid;
                // Already received and not yet released: acknowledge again, deliver nothing
                // [MQTT-4.3.3-9].
                if self.session.awaiting_pubrel.contains(&pkid) {
                    self.send_held(&Packet::PubRec(PubAck::new(pkid)));
                    return Ok(());
                }
                if !allowed {
                    self.send_ack(
                        Packet::PubRec,
                        pkid,
                        ReasonCode::NOT_AUTHORIZED,
                        "not authorized to publish on this topic",
                    );
                    return Ok(());
                }
                if self.session.awaiting_pubrel.len() >= self.n.receive_maximum {
                    return Err(Close::error(
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        "more unacknowledged QoS 2 PUBLISHes than Receive Maximum [MQTT-3.3.4-9]",
                    ));
                }
                // "Received" and the message's queue entries reach the log together (the
                // router sends the batch before it queues anything), or neither does.
                let _g = self.store.batch();
                let received = self.persistent().then(|| Record::Qos2In {
                    client: self.n.client_id.clone(),
                    pkid,
                });
                if let Err(close) = self.route(now, p, received, broker) {
                    if !self.n.protocol.is_v5() {
                        return Err(close);
                    }
                    // A PUBREC with an error ends the flow [MQTT-4.3.3-4 note].
                    self.send_ack(Packet::PubRec, pkid, ReasonCode::QUOTA_EXCEEDED, QUEUE_FULL);
                    return Ok(());
                }
                self.session.awaiting_pubrel.insert(pkid);
                self.send_held(&Packet::PubRec(PubAck::new(pkid)));
            }
        }
        Ok(())
    }

    /// Sends PUBACK/PUBREC with `reason`; 3.1.1 has no reason codes, so a refusal there is
    /// a plain ack (the message is silently dropped, as 3.1.1 brokers do).
    fn send_ack(
        &mut self,
        kind: fn(PubAck) -> Packet,
        pkid: u16,
        reason: ReasonCode,
        text: &'static str,
    ) {
        let mut ack = PubAck::new(pkid);
        if self.n.protocol.is_v5() && reason.is_error() {
            ack.reason = reason;
            ack.properties = self.reason_string(text);
            // The Reason String is dropped when the ack would not fit the client's Maximum
            // Packet Size [MQTT-3.4.2-2], [MQTT-3.5.2-2].
            let fits = encoded_len(&kind(ack.clone()), self.n.protocol)
                .is_ok_and(|len| len <= self.n.client_max_packet);
            if !fits {
                ack.properties = AckProperties::default();
            }
        }
        // The ack promises the message is safe: it waits for the store.
        self.send_held(&kind(ack));
    }

    /// Routes a client's PUBLISH; Err (to close a 3.1.1 connection with) when
    /// `mqtt.queue_full_policy = "reject"` refused it.
    fn route(
        &mut self,
        now: Instant,
        p: Publish,
        received: Option<Record>,
        broker: &Broker,
    ) -> Result<(), Close> {
        let msg = Message::new(
            p.topic,
            p.payload,
            p.qos,
            p.retain,
            p.properties,
            self.n.client_id.clone(),
            now,
        );
        match broker.router.publish_from_client(Arc::new(msg), received) {
            Ok(_) => Ok(()),
            Err(subscriber) => Err(Close::error(
                ReasonCode::QUOTA_EXCEEDED,
                format!("PUBLISH refused: the queue of subscriber {subscriber} is full (mqtt.queue_full_policy = reject)"),
            )),
        }
    }

    fn on_puback(&mut self, pkid: u16) {
        match self.session.inflight_position(pkid) {
            Some(i) if matches!(&self.session.inflight[i], Inflight::Publish { delivery, .. } if delivery.qos == QoS::AtLeastOnce) =>
            {
                self.session.inflight.remove(i);
                self.log(|client| Record::Acked { client, pkid });
            }
            _ => {
                tracing::debug!(client_id = %self.n.client_id, pkid, "PUBACK for an unknown packet id ignored")
            }
        }
    }

    fn on_pubrec(&mut self, ack: PubAck) {
        let pos = self.session.inflight_position(ack.pkid);
        match pos.map(|i| &self.session.inflight[i]) {
            Some(Inflight::Publish { delivery, .. }) if delivery.qos == QoS::ExactlyOnce => {
                let i = pos.unwrap_or_default();
                let pkid = ack.pkid;
                if ack.reason.is_error() {
                    // The receiver refused it: the flow ends here [MQTT-4.3.3-4 note].
                    self.session.inflight.remove(i);
                    self.log(|client| Record::Acked { client, pkid });
                    return;
                }
                self.session.inflight[i] = Inflight::Release { pkid: ack.pkid };
                self.log(|client| Record::Released { client, pkid });
                self.send_if_persistent_held(&Packet::PubRel(PubAck::new(ack.pkid)));
            }
            Some(Inflight::Release { .. }) => {
                // A duplicate PUBREC: answer with PUBREL again.
                self.send_if_persistent_held(&Packet::PubRel(PubAck::new(ack.pkid)));
            }
            _ => {
                let mut rel = PubAck::new(ack.pkid);
                if self.n.protocol.is_v5() {
                    rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(&Packet::PubRel(rel));
            }
        }
    }

    fn on_pubrel(&mut self, pkid: u16) {
        let mut comp = PubAck::new(pkid);
        if self.session.awaiting_pubrel.remove(&pkid) {
            self.log(|client| Record::Qos2InDone { client, pkid });
        } else if self.n.protocol.is_v5() {
            comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        }
        self.send_if_persistent_held(&Packet::PubComp(comp));
    }

    fn on_subscribe(&mut self, now: Instant, s: Subscribe, broker: &Broker) -> Result<(), Close> {
        let v5 = self.n.protocol.is_v5();
        let cfg = &broker.config.mqtt;
        let identifier = s.properties.subscription_identifier;
        if identifier.is_some() && !cfg.subscription_identifiers_available {
            return Err(Close::error(
                ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "Subscription Identifier sent but not available (3.2.2.3.12)",
            ));
        }
        let mut reasons = vec![ReasonCode::UNSPECIFIED_ERROR; s.filters.len() + s.rejected.len()];
        for (index, _, _) in &s.rejected {
            if let Some(r) = reasons.get_mut(*index) {
                *r = ReasonCode::TOPIC_FILTER_INVALID;
            }
        }
        let mut valid = s.filters.into_iter();
        let mut retained = Vec::new();
        let who = Requester {
            client_id: &self.n.client_id,
            username: self.n.username.as_deref(),
        };
        for reason in reasons.iter_mut() {
            if *reason == ReasonCode::TOPIC_FILTER_INVALID {
                continue;
            }
            let Some(sub) = valid.next() else { break };
            let filter = sub.filter;
            let mut options = sub.options;
            if topic_over_limits(&filter, &broker.config.limits) {
                *reason = ReasonCode::TOPIC_FILTER_INVALID;
                continue;
            }
            if !self.session.subscriptions.contains_key(&filter)
                && self.session.subscriptions.len()
                    >= broker.config.limits.max_subscriptions_per_client
            {
                *reason = ReasonCode::QUOTA_EXCEEDED;
                continue;
            }
            if filter.shared().is_some() && !cfg.shared_subscription_available {
                *reason = ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED;
                continue;
            }
            if !cfg.wildcard_subscription_available && filter.match_filter().contains(['+', '#']) {
                *reason = ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED;
                continue;
            }
            // Granted at most the server's Maximum QoS (3.9.3).
            if options.qos as u8 > cfg.maximum_qos {
                options.qos = QoS::from_u8(cfg.maximum_qos).unwrap_or(QoS::AtMostOnce);
            }
            if filter.shared().is_some() && options.no_local {
                return Err(Close::error(
                    ReasonCode::PROTOCOL_ERROR,
                    "No Local on a shared subscription [MQTT-3.8.3-4]",
                ));
            }
            if !broker
                .access
                .may_subscribe(who.username, who.client_id, &filter)
            {
                *reason = ReasonCode::NOT_AUTHORIZED;
                continue;
            }
            let entry_group = filter
                .shared()
                .is_some()
                .then(|| broker.router.join_group(&filter, &self.handle));
            let entry = SubEntry {
                options,
                identifier,
                handle: self.handle.clone(),
                username: self.n.username.clone(),
                shared: entry_group.clone(),
            };
            // Replaces an existing subscription with the same filter [MQTT-3.8.4-3].
            let existed = write(&broker.router.subscriptions)
                .subscribe(&filter, self.n.client_id.clone(), entry)
                .is_some();
            let record = SubscriptionRecord {
                options,
                identifier,
            };
            retained.extend(
                broker
                    .router
                    .retained_for(&filter, &record, existed, &who, now),
            );
            if let Some(q) = &entry_group {
                if !self.group_queues.iter().any(|(f, _)| *f == filter) {
                    self.group_queues.push((filter.clone(), q.clone()));
                }
            }
            let (f, o) = (filter.clone(), options);
            self.log(|client| Record::Subscribe {
                client,
                filter: f,
                options: o,
                identifier,
            });
            self.session.subscriptions.insert(filter, record);
            *reason = ReasonCode(options.qos as u8);
        }
        if !v5 {
            for r in &mut reasons {
                if r.is_error() {
                    *r = ReasonCode::UNSPECIFIED_ERROR; // 0x80 Failure in 3.1.1 [MQTT-3.9.3-2]
                }
            }
        }
        // SUBACK first, then the retained messages through the queue [MQTT-3.8.4-1].
        self.send_if_persistent_held(&Packet::SubAck(SubAck {
            pkid: s.pkid,
            reasons,
            properties: AckProperties::default(),
        }));
        let mut outbox = self.handle.outbox();
        for d in retained {
            let _ = outbox.push(d);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe, broker: &Broker) {
        let mut reasons =
            vec![ReasonCode::TOPIC_FILTER_INVALID; u.filters.len() + u.rejected.len()];
        let rejected: Vec<usize> = u.rejected.iter().map(|(i, _)| *i).collect();
        let mut valid = u.filters.into_iter();
        // Groups this session leaves (handled once the tree is unlocked).
        let mut left_groups = Vec::new();
        {
            let mut tree = write(&broker.router.subscriptions);
            for (slot, r) in reasons.iter_mut().enumerate() {
                if rejected.contains(&slot) {
                    continue;
                }
                let Some(filter) = valid.next() else { break };
                let removed = tree.unsubscribe(&filter, &self.n.client_id);
                let existed = removed.is_some();
                left_groups.extend(removed.and_then(|e| e.shared));
                if self.session.subscriptions.remove(&filter).is_some() && self.persistent() {
                    self.store.append(Record::Unsubscribe {
                        client: self.n.client_id.clone(),
                        filter: filter.clone(),
                    });
                }
                self.group_queues.retain(|(f, _)| *f != filter);
                *r = if existed {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                };
            }
        }
        for group in left_groups {
            broker.router.leave_group(&group, &self.n.client_id);
        }
        self.send_if_persistent_held(&Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            reasons,
            properties: AckProperties::default(),
        }));
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Close {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.n.connect_session_expiry == 0 && expiry != 0 {
                return Close::error(
                    ReasonCode::PROTOCOL_ERROR,
                    "DISCONNECT sets a Session Expiry Interval after CONNECT set 0 [MQTT-3.14.2-2]",
                );
            }
            self.session.expiry_interval = expiry;
        }
        let with_will = d.reason == ReasonCode::DISCONNECT_WITH_WILL;
        Close {
            send: None,
            publish_will: with_will,
            reason: if d.reason == ReasonCode::NORMAL_DISCONNECTION {
                "client disconnected".into()
            } else {
                format!("client disconnected with reason {}", d.reason)
            },
        }
    }

    /// Resends unacknowledged PUBLISHes (DUP set) and PUBRELs of a resumed session, in their
    /// original order with their original packet ids [MQTT-4.4.0-1].
    pub fn resend_inflight(&mut self, now: Instant) {
        let inflight = std::mem::take(&mut self.session.inflight);
        let mut kept = std::collections::VecDeque::with_capacity(inflight.len());
        for entry in inflight {
            match &entry {
                Inflight::Publish { pkid, delivery } => {
                    let p = Packet::Publish(self.publish_packet(delivery, *pkid, true, now));
                    // This connection may announce a smaller Maximum Packet Size than the one
                    // the message was first sent on: too large, it is discarded as if
                    // delivered [MQTT-3.1.2-25] rather than resent on every reconnect.
                    if self.n.protocol.is_v5()
                        && encoded_len(&p, self.n.protocol)
                            .map_or(true, |len| len > self.n.client_max_packet)
                    {
                        self.oversize_dropped += 1;
                        continue;
                    }
                    self.send(&p);
                }
                Inflight::Release { pkid } => self.send(&Packet::PubRel(PubAck::new(*pkid))),
            }
            kept.push_back(entry);
        }
        self.session.inflight = kept;
    }

    /// Connects this connection to the queue of shared subscription `filter`.
    fn attach_group(&mut self, filter: &TopicFilter, broker: &Broker) {
        if self.group_queues.iter().any(|(f, _)| f == filter) {
            return;
        }
        let q = broker.router.group_queue(filter);
        self.group_queues.push((filter.clone(), q));
    }

    /// Connects to the group queues of every shared subscription of a resumed session.
    pub fn attach_groups(&mut self, broker: &Broker) {
        let shared: Vec<TopicFilter> = self
            .session
            .subscriptions
            .keys()
            .filter(|f| f.shared().is_some())
            .cloned()
            .collect();
        for f in shared {
            self.attach_group(&f, broker);
        }
    }

    /// A delivery taken from a group queue: adapted to this member's subscription and, if the
    /// store had it in the group's queue, logged as this session's own (persistent sessions)
    /// before it is logged as gone from the group, so a crash finds it in one place or the
    /// other.
    fn take_group_delivery(&self, filter: &TopicFilter, d: Delivery) -> Delivery {
        let mut d = self.adapt_group_delivery(filter, d);
        if d.seq == 0 {
            return d;
        }
        let _g = self.store.batch();
        let group_seq = d.seq;
        d.seq = 0;
        if self.persistent() && d.qos != QoS::AtMostOnce {
            d.seq = self.handle.next_seq.fetch_add(1, Ordering::Relaxed);
            self.store.append(Record::Enqueue {
                client: self.n.client_id.clone(),
                seq: d.seq,
                id: d.msg.id,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids.clone(),
                shared: Some(filter.clone()),
            });
        }
        self.store.append(Record::GroupTaken {
            group: filter.clone(),
            seq: group_seq,
        });
        d
    }

    /// A group-queued delivery as this member's subscription would have made it.
    fn adapt_group_delivery(&self, filter: &TopicFilter, mut d: Delivery) -> Delivery {
        if let Some(rec) = self.session.subscriptions.get(filter) {
            d.qos = d.msg.qos.min(rec.options.qos);
            d.retain = d.msg.retain && rec.options.retain_as_published;
            d.subscription_ids = rec.identifier.into_iter().collect();
        }
        d
    }

    /// The ids of the messages to read back from the store next: the session queue's next
    /// messages are on disk only (or soon will be at its front), or else a group queue's are
    /// and no other member is reading them back; and the inflight window has room. None
    /// otherwise.
    pub fn cold_to_load(&mut self) -> Option<Vec<u64>> {
        if !self.cold_waiting
            || self.group_load.is_some()
            || self.n.send_window <= self.session.inflight_len()
        {
            return None;
        }
        {
            let outbox = self.handle.outbox();
            if outbox.wants_load() {
                return Some(outbox.cold_ids());
            }
        }
        let (ids, claim) = self.group_queues.iter().find_map(|(_, q)| q.claim_load())?;
        self.group_load = Some(claim);
        Some(ids)
    }

    /// Puts messages read back from the store (`cold_to_load`) into the queue they were read
    /// for, ready to send. A message the store could not give back is dropped from the queue,
    /// logged and counted.
    pub fn warm(&mut self, ids: &[u64], messages: Vec<Option<Arc<Message>>>) {
        let loaded: crate::session::Loaded = ids.iter().copied().zip(messages).collect();
        if let Some(claim) = self.group_load.take() {
            let group = &claim.queue.key;
            let lost = claim.queue.warm(&loaded);
            // The other members may have room for what came back too.
            claim.queue.notify_members();
            if !lost.is_empty() {
                tracing::error!(%group, count = lost.len(), "messages of a shared subscription's queue could not be read back from the store: dropped");
                for seq in lost {
                    self.store.append(Record::GroupTaken {
                        group: group.clone(),
                        seq,
                    });
                }
            }
            return;
        }
        let lost = self.handle.outbox().warm(&loaded);
        if !lost.is_empty() {
            tracing::error!(client_id = %self.n.client_id, count = lost.len(), "queued messages could not be read back from the store: dropped");
            for seq in lost {
                self.log(|client| Record::Skip { client, seq });
            }
        }
    }

    /// Moves deliveries from the outbox into the write buffer while the inflight window and the
    /// write buffer's high-water mark allow. Returns true if anything is still queued.
    pub fn drain_outbox(&mut self, now: Instant, high_water: usize) -> bool {
        // The records of the deliveries sent now reach the writer together, in one frame.
        let _records = self.store.batch();
        let mut batch = Vec::new();
        let more = {
            let mut outbox = self.handle.outbox();
            let mut window = self
                .n
                .send_window
                .saturating_sub(self.session.inflight_len());
            let mut budget = high_water.saturating_sub(self.write_buf.len());
            while let Some(front) = outbox.front() {
                if budget == 0 || (front.qos != QoS::AtMostOnce && window == 0) {
                    break;
                }
                let Some(d) = outbox.pop() else { break };
                if d.qos != QoS::AtMostOnce {
                    window -= 1;
                }
                budget = budget.saturating_sub(d.msg.cost());
                batch.push(d);
            }
            let mut cold_waiting = outbox.wants_load();
            let mut more = !outbox.is_empty();
            drop(outbox);
            // Then the shared subscriptions' group queues, while the window has room.
            if !self.group_queues.is_empty() {
                let n = self.group_queues.len();
                let mut idle = 0;
                while window > 0 && budget > 0 && idle < n {
                    let i = self.group_cursor % n;
                    self.group_cursor = self.group_cursor.wrapping_add(1);
                    let (filter, q) = &self.group_queues[i];
                    match q.pop() {
                        Some(d) => {
                            idle = 0;
                            let d = self.take_group_delivery(filter, d);
                            if d.qos != QoS::AtMostOnce {
                                window -= 1;
                            }
                            budget = budget.saturating_sub(d.msg.cost());
                            batch.push(d);
                        }
                        None => idle += 1,
                    }
                }
                // A group queue whose next messages are on disk only: this member reads them
                // back when its window has room (`cold_to_load`), unless another one is at it.
                if window > 0 && self.group_queues.iter().any(|(_, q)| q.wants_load()) {
                    cold_waiting = true;
                    more = true;
                }
            }
            self.cold_waiting = cold_waiting;
            more
        };
        for d in batch {
            self.send_delivery(d, now);
        }
        self.publish_inflight();
        more
    }

    /// Logs that a queued delivery the store has was dropped unsent.
    fn log_skip(&self, d: &Delivery) {
        if d.seq != 0 {
            let seq = d.seq;
            self.log(|client| Record::Skip { client, seq });
        }
    }

    fn send_delivery(&mut self, d: Delivery, now: Instant) {
        if d.msg.is_expired(now) {
            // Expired messages are never delivered [MQTT-3.3.2-5].
            self.log_skip(&d);
            return;
        }
        // Numbered up to the recovered horizon: it may have gone out before the crash.
        let dup = d.qos != QoS::AtMostOnce && d.seq != 0 && d.seq <= self.horizon.recovered;
        let mut p = self.publish_packet(&d, 0, dup, now);
        if d.qos != QoS::AtMostOnce {
            match self.session.next_pkid() {
                Some(id) => p.pkid = id,
                None => return,
            }
        }
        let alias = if self.n.outbound_alias_maximum == 0 {
            AliasUse::None
        } else {
            self.v5_mut().outbound_aliases.name(&p.topic)
        };
        match alias {
            AliasUse::Known(a) => {
                p.properties.topic_alias = Some(a);
                p.topic = TopicName::default();
            }
            AliasUse::Assign(a) => p.properties.topic_alias = Some(a),
            AliasUse::None => {}
        }
        let pkid = p.pkid;
        let packet = Packet::Publish(p);
        if self.n.protocol.is_v5() {
            match encoded_len(&packet, self.n.protocol) {
                Ok(len) if len <= self.n.client_max_packet => {}
                _ => {
                    // Larger than the client accepts: not sent, as if delivered
                    // [MQTT-3.1.2-25]. An alias assigned for it was never told to the client.
                    if let AliasUse::Assign(a) = alias {
                        if let Some(v) = self.v5.as_mut() {
                            v.outbound_aliases.forget(a);
                        }
                    }
                    self.oversize_dropped += 1;
                    self.log_skip(&d);
                    return;
                }
            }
        }
        // Not on the wire before the log says it may have gone: a crash that loses the `Sent`
        // record must still resend it with DUP [MQTT-3.3.1-1].
        let hold = self.horizon_before_send(d.seq);
        if d.seq != 0 && self.persistent() {
            self.store.append(Record::Sent {
                client: self.n.client_id.clone(),
                seq: d.seq,
                pkid,
            });
        }
        if hold || (d.qos == QoS::ExactlyOnce && self.persistent()) {
            // QoS 2: not on the wire before the store knows it was sent with this packet id,
            // or a crash could deliver it again as a new message [MQTT-4.3.3].
            self.send_held(&packet);
        } else {
            self.send(&packet);
        }
        if d.qos != QoS::AtMostOnce {
            self.session
                .inflight
                .push_back(Inflight::Publish { pkid, delivery: d });
        }
    }

    /// The PUBLISH packet for one delivery.
    fn publish_packet(&self, d: &Delivery, pkid: u16, dup: bool, now: Instant) -> Publish {
        let msg = &d.msg;
        let mut properties = if self.n.protocol.is_v5() {
            msg.properties.clone()
        } else {
            Default::default()
        };
        if self.n.protocol.is_v5() {
            properties.message_expiry_interval = msg.remaining_expiry(now);
            properties.subscription_identifiers = d.subscription_ids.clone();
        }
        Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: msg.topic.clone(),
            pkid,
            payload: msg.payload.clone(),
            properties,
        }
    }
}

#[cfg(test)]
mod tests;
