//! The per-connection MQTT state machine, after CONNECT: no sockets, no clock inside.
//!
//! [`ClientState::handle`] takes a decoded packet and the current time, updates the session,
//! routes messages through the [`Broker`] (synchronous: matching and queueing never await), and
//! appends the packets to send to [`ClientState::write_buf`]. [`ClientState::drain_outbox`] moves
//! queued deliveries into the inflight window. The connection task (`connection/`) only moves
//! bytes and time in and out; the unit tests below drive this without a socket.
//!
//! One type, [`ClientState`], its methods by flow: this file holds the state, the packet
//! dispatch, AUTH and DISCONNECT; `inbound` the client's PUBLISH and the acknowledgements of
//! what the broker sent; `subscribe` SUBSCRIBE, UNSUBSCRIBE and shared-group attachment;
//! `outbound` the outbox drained into the inflight window and the PUBLISH built for a
//! delivery; `connect` CONNECT negotiation and admission; `alias` outbound topic aliases.

mod alias;
pub(crate) mod connect;
mod inbound;
mod outbound;
mod shaping;
mod subscribe;

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use sluice_codec::Protocol;
use sluice_codec::{
    encode, encoded_len, AckProperties, Auth, AuthProperties, Disconnect, LastWill, Packet,
    ReasonCode, Str, TopicFilter, TopicName,
};

use crate::auth::enhanced::{AuthContinuation, AuthStep};
use crate::broker::Broker;
use crate::message::ClientId;
use crate::persist::{Pending, Store, SENT_HORIZON_AHEAD};
use crate::protocol::alias::OutboundAliases;
use crate::routing::shared_subscriptions::{GroupQueue, LoadClaim};
use crate::session::{Inflight, Session, SessionHandle};
use crate::stats::Tally;

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
    pub receive_maximum: u16,
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
    /// The shared subscriptions' side of the session: boxed and allocated by the first shared
    /// subscription, so other connections carry a pointer instead of 40 bytes.
    groups: Option<Box<Groups>>,
    /// Whether the queue (or a group queue) had messages to read back from the store at the
    /// last drain (so the connection loop does not lock the queues to ask).
    cold_waiting: bool,
    /// The persistent store (disabled in memory mode and in unit tests).
    store: Store,
    /// Packets that may go out only once the store has what they promise (acks of stored
    /// messages, outbound QoS 2 PUBLISHes of persistent sessions), and everything after them.
    /// The connection asks the store for a ticket and sends these when it is answered.
    pub held: BytesMut,
    /// Set by the connection while earlier held packets still wait: new packets queue behind.
    pub holding: bool,
    /// Cluster mode: acks wait for JetStream too (the connection's tickets are the cluster's,
    /// answered once the QoS 1/2 messages before them are in the stream `sluice_messages`).
    cluster_acks: bool,
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
    /// PUBLISHes received (and refused) since the connection last flushed its counts into
    /// the broker's (once per read batch: `Stats::flush`), plain integers: no atomic per
    /// message.
    pub tally: Tally,
    /// How far this session's deliveries may have gone on the wire (persist/, "Redeliveries
    /// after a crash carry DUP"). Boxed and only for sessions that use it (persistent ones,
    /// or one recovered with a horizon): 40 bytes in every connection's task otherwise.
    horizon: Option<Box<SentHorizon>>,
    /// Egress shaping (`[[shaping]]`) as it applies to this session: boxed, and only while
    /// rules are in force (protocol/shaping.rs).
    egress: Option<Box<shaping::Egress>>,
}

/// What a connection of a session with shared subscriptions keeps about their groups.
#[derive(Debug, Default)]
struct Groups {
    /// Queues of the shared subscriptions this session holds: pulled from when the window has
    /// room (routing/shared_subscriptions.rs).
    queues: Vec<(TopicFilter, Arc<GroupQueue>)>,
    /// Rotates which group queue is pulled from first.
    cursor: usize,
    /// Set while the messages being read back are a group queue's (this member claimed the
    /// job; dropping the claim gives it back).
    load: Option<LoadClaim>,
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
        handle.window.store(
            crate::session::saturate_u32(n.send_window),
            std::sync::atomic::Ordering::Relaxed,
        );
        handle.inflight.store(
            crate::session::saturate_u32(session.inflight_len()),
            std::sync::atomic::Ordering::Relaxed,
        );
        // A returning client gets the whole `slow_consumer_seconds` to drain its queue.
        handle.outbox().unmark_full();
        ClientState {
            n,
            handle,
            session,
            groups: None,
            cold_waiting: false,
            store: Store::disabled(),
            held: BytesMut::new(),
            holding: false,
            cluster_acks: false,
            v5: None,
            will: will.map(Box::new),
            // Allocated by the first packet and released by the connection once written:
            // an idle connection holds no write buffer.
            write_buf: BytesMut::new(),
            oversize_dropped: 0,
            tally: Tally::default(),
            horizon: None,
            egress: None,
        }
    }

    /// The queues of the shared subscriptions this connection pulls from.
    fn group_queues(&self) -> &[(TopicFilter, Arc<GroupQueue>)] {
        self.groups.as_deref().map_or(&[], |g| &g.queues)
    }

    /// The shared subscriptions' side, allocated on first use.
    fn groups_mut(&mut self) -> &mut Groups {
        self.groups.get_or_insert_with(Box::default)
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
        if seq != 0 || self.horizon.is_some() {
            self.horizon_mut().recovered = seq;
        }
    }

    /// The horizon, allocated on first use.
    fn horizon_mut(&mut self) -> &mut SentHorizon {
        self.horizon.get_or_insert_with(Box::default)
    }

    /// The horizon as it is (all zero until used).
    fn horizon(&self) -> SentHorizon {
        self.horizon.as_deref().copied().unwrap_or_default()
    }

    /// Queued deliveries numbered up to this may have been sent before a restart: they go out
    /// with DUP.
    fn recovered_horizon(&self) -> u64 {
        self.horizon().recovered
    }

    /// A horizon logged since the last call, whose ticket the connection should take (and
    /// report with [`ClientState::horizon_safe`] once answered).
    pub fn horizon_to_ticket(&mut self) -> Option<u64> {
        self.horizon.as_mut()?.unticketed.take()
    }

    /// The horizon `seq` is on disk.
    pub fn horizon_safe(&mut self, seq: u64) {
        let h = self.horizon_mut();
        h.safe = h.safe.max(seq);
    }

    /// At a clean end of the connection every delivery it sent is logged as sent: the record
    /// that sets the horizon back to what was recovered, if this connection moved it.
    pub fn horizon_at_close(&self) -> Option<Pending> {
        let h = self.horizon();
        (self.persistent() && h.logged > h.recovered)
            .then(|| Pending::sent_horizon(self.n.client_id.clone(), h.recovered))
    }

    /// Before delivery `seq` goes out: logs a horizon ahead of it when the last one is half
    /// used up. Returns whether the PUBLISH must wait for the disk (no horizon covering it is
    /// known to be there yet).
    fn horizon_before_send(&mut self, seq: u64) -> bool {
        if seq == 0 || !self.persistent() {
            return false;
        }
        let h = self.horizon_mut();
        if seq + SENT_HORIZON_AHEAD / 2 > h.logged {
            h.logged = (seq + SENT_HORIZON_AHEAD).max(h.recovered);
            h.unticketed = Some(h.logged);
            let logged = h.logged;
            self.store
                .sent_horizon_logged(self.n.client_id.clone(), logged);
        }
        seq > self.horizon().safe
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
    fn log(&self, event: impl FnOnce(&Store, ClientId)) {
        if self.persistent() {
            event(&self.store, self.n.client_id.clone());
        }
    }

    /// As [`ClientState::log`], for an event that clones the client id only if it must.
    fn log_ref(&self, event: impl FnOnce(&Store, &ClientId)) {
        if self.persistent() {
            event(&self.store, &self.n.client_id);
        }
    }

    /// The buffer the next packet goes to. Behind packets already held (keeping the order);
    /// into the held buffer when it must wait for the store (`wait_for_store`) and the store
    /// holds acks; else the write buffer.
    fn out_buf(&mut self, wait_for_store: bool) -> &mut BytesMut {
        if wait_for_store && (self.cluster_acks || self.store.holds_acks()) {
            return &mut self.held;
        }
        let buf = if self.holding || !self.held.is_empty() {
            &mut self.held
        } else {
            &mut self.write_buf
        };
        if buf.capacity() == 0 {
            // Idle connections hold no buffer; a first packet gets room for a few more.
            buf.reserve(FIRST_WRITE_BUF);
        }
        buf
    }

    /// Cluster mode: held packets wait for the cluster's tickets (see `cluster_acks`).
    pub fn set_cluster_acks(&mut self, on: bool) {
        self.cluster_acks = on;
    }

    /// Cluster mode: a persistent session's subscriptions changed; the cluster's session
    /// bucket learns them (another node resumes the session with them).
    fn cluster_saved(&self, broker: &crate::broker::Broker) {
        if let (Some(link), true) = (broker.router.cluster(), self.session.expiry_interval > 0) {
            let state = crate::broker::session_state(&self.session, self.n.username.clone(), true);
            link.session_saved(&self.n.client_id, state);
        }
    }

    /// Encodes `packet` to go out only after the store has everything logged so far.
    fn send_held(&mut self, packet: &Packet) {
        self.send_to(packet, true);
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
        self.send_to(packet, false);
    }

    fn send_to(&mut self, packet: &Packet, wait_for_store: bool) {
        let protocol = self.n.protocol;
        if let Err(e) = encode(packet, protocol, self.out_buf(wait_for_store)) {
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

    /// A PUBACK among packets read at once: as [`ClientState::handle`] does for it, but the
    /// `Acked` record is left in `acked`, for [`ClientState::log_acked`] to log with the
    /// others as one `AckedMany` (one append per read instead of one per PUBACK, issue 16).
    /// The caller logs them before handling any other packet, so records keep their order.
    pub fn handle_puback(&mut self, pkid: u16, acked: &mut Vec<u16>) {
        if self.take_puback(pkid) && self.persistent() {
            acked.push(pkid);
        }
        self.publish_inflight();
    }

    /// Logs the acknowledgements [`ClientState::handle_puback`] left in `acked` (emptying it).
    pub fn log_acked(&self, acked: &mut Vec<u16>) {
        if !acked.is_empty() {
            self.store
                .deliveries_acked(&self.n.client_id, std::mem::take(acked));
        }
    }

    /// Tells shared-subscription selection how full this client's window is.
    fn publish_inflight(&self) {
        self.handle.set_inflight(self.session.inflight_len());
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
                        self.log_ref(|s, client| s.delivery_acked(client, a.pkid));
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
}

#[cfg(test)]
mod tests;
