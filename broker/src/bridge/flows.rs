//! The bridge's message flows, without sockets: packets from the local session or the remote
//! in, packets for either side out (`to_local`, `to_remote`). The task in `mod.rs` moves the
//! bytes.
//!
//! * Out (local -> remote): the local session delivers with its own packet ids, and the same
//!   id is used towards the remote. The local session keeps its unacknowledged messages
//!   (persisted, resent with DUP after any reconnect or restart), so reusing its ids makes a
//!   resend a true duplicate for the remote too: a QoS 2 message the remote already holds is
//!   not delivered twice. A local message is acknowledged (PUBACK, or PUBREC for QoS 2) only
//!   once the remote has acknowledged it (PUBACK, or PUBCOMP), so nothing the local session
//!   forgets is lost while the remote is away. At most the remote's Receive Maximum is in
//!   flight; the QoS is capped at the remote's Maximum QoS.
//! * In (remote -> local): published into the local broker with ids of the bridge's own, and
//!   acknowledged to the remote once the local broker acknowledged it (stored first in
//!   durable mode), at most the local Receive Maximum in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_codec::{
    encoded_len, topic_matches, Packet, Protocol, PubAck, Publish, PublishProperties, QoS,
    ReasonCode, TopicName,
};

use crate::config::{BridgeTopic, Direction};
use crate::stats::BridgeCounters;

/// One `topics` entry, its filters spelled out.
#[derive(Debug, Clone)]
pub struct Rule {
    pub direction: Direction,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
    pub local_filter: String,
    pub remote_filter: String,
}

impl Rule {
    pub fn new(t: &BridgeTopic) -> Rule {
        Rule {
            direction: t.direction(),
            qos: QoS::from_u8(t.qos).unwrap_or(QoS::AtLeastOnce),
            local_prefix: t.local_prefix.clone(),
            remote_prefix: t.remote_prefix.clone(),
            local_filter: t.local_filter(),
            remote_filter: t.remote_filter(),
        }
    }
}

/// The local topic for `remote` (an `in` or `both` rule matches), as Mosquitto maps it:
/// `remote_prefix` off, `local_prefix` on.
pub fn map_in(rules: &[Rule], remote: &str) -> Option<String> {
    rules
        .iter()
        .filter(|r| r.direction.incoming())
        .find(|r| remote.starts_with(&r.remote_prefix) && topic_matches(&r.remote_filter, remote))
        .map(|r| format!("{}{}", r.local_prefix, &remote[r.remote_prefix.len()..]))
}

/// The remote topic for `local` (an `out` or `both` rule matches).
pub fn map_out(rules: &[Rule], local: &str) -> Option<String> {
    rules
        .iter()
        .filter(|r| r.direction.outgoing())
        .find(|r| local.starts_with(&r.local_prefix) && topic_matches(&r.local_filter, local))
        .map(|r| format!("{}{}", r.remote_prefix, &local[r.local_prefix.len()..]))
}

/// What the two sides granted at CONNACK.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    pub remote_protocol: Protocol,
    pub remote_max_qos: QoS,
    /// The remote's Receive Maximum.
    pub remote_window: usize,
    /// The remote's Maximum Packet Size (None: no limit).
    pub remote_max_packet: Option<u32>,
    pub local_max_qos: QoS,
    /// `mqtt.max_packet_size` of the local broker.
    pub local_max_packet: usize,
    pub local_window: usize,
    /// `limits.max_topic_length` and `max_topic_levels` of the local broker.
    pub local_topic_length: usize,
    pub local_topic_levels: usize,
}

/// A local message on its way to the remote, or in flight there.
#[derive(Debug)]
struct Outgoing {
    /// The PUBLISH for the remote (packet id: the local one).
    publish: Publish,
    /// The QoS the local session sent it with (how to acknowledge it).
    local_qos: QoS,
}

/// A remote message on its way into the local broker.
#[derive(Debug)]
struct Incoming {
    /// The PUBLISH for the local broker (its packet id set when sent).
    publish: Publish,
    remote_pkid: u16,
    remote_qos: QoS,
}

/// The state of one connected bridge (both sides up); dropped when either side goes.
#[derive(Debug)]
pub struct Forwarder {
    rules: Arc<[Rule]>,
    terms: Terms,
    counters: Arc<BridgeCounters>,
    /// Out: sent to the remote, not yet acknowledged by it; by packet id.
    out_inflight: HashMap<u16, Outgoing>,
    /// Out: waiting for room in the remote's Receive Maximum (bounded by the local session's
    /// window: it sends no more than the Receive Maximum the bridge gave it).
    out_waiting: VecDeque<Outgoing>,
    /// In: sent to the local broker, by local packet id: the remote id and QoS to acknowledge,
    /// None once acknowledged to the remote (a QoS 2 exchange waiting for PUBCOMP).
    in_inflight: HashMap<u16, Option<(u16, QoS)>>,
    /// In: waiting for room in the local Receive Maximum (bounded by the remote's window
    /// towards the bridge, which acknowledges only what the local broker took).
    in_waiting: VecDeque<Incoming>,
    /// The last packet id used towards the local broker.
    last_local_pkid: u16,
    /// Packets to write to the local broker and to the remote.
    pub to_local: Vec<Packet>,
    pub to_remote: Vec<Packet>,
}

impl Forwarder {
    pub fn new(rules: Arc<[Rule]>, terms: Terms, counters: Arc<BridgeCounters>) -> Forwarder {
        Forwarder {
            rules,
            terms,
            counters,
            out_inflight: HashMap::new(),
            out_waiting: VecDeque::new(),
            in_inflight: HashMap::new(),
            in_waiting: VecDeque::new(),
            last_local_pkid: 0,
            to_local: Vec::new(),
            to_remote: Vec::new(),
        }
    }

    /// Messages of either direction held here (in flight or waiting).
    pub fn held(&self) -> usize {
        self.out_inflight.len()
            + self.out_waiting.len()
            + self.in_inflight.len()
            + self.in_waiting.len()
    }

    /// Whether the bridge should stop reading the remote for a while (its messages wait for
    /// the local broker's window).
    pub fn in_backlogged(&self) -> bool {
        self.in_waiting.len() >= 1024
    }

    fn dropped(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A packet from the local session.
    pub fn from_local(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.local_publish(p),
            // Acknowledgements of what the bridge published locally (in).
            Packet::PubAck(a) => {
                if let Some(slot) = self.in_inflight.remove(&a.pkid) {
                    self.in_acked(slot, a.reason);
                }
                self.pump_in();
            }
            Packet::PubRec(a) => {
                if let Some(slot) = self.in_inflight.get_mut(&a.pkid) {
                    let was = slot.take();
                    if a.reason.0 >= 0x80 {
                        // The exchange ends here [MQTT-4.3.3]: no PUBREL.
                        self.in_inflight.remove(&a.pkid);
                    } else {
                        self.to_local.push(Packet::PubRel(PubAck::new(a.pkid)));
                    }
                    self.in_acked(was, a.reason);
                }
                self.pump_in();
            }
            Packet::PubComp(a) => {
                self.in_inflight.remove(&a.pkid);
                self.pump_in();
            }
            // The local session releases a QoS 2 message the bridge took (out).
            Packet::PubRel(a) => self.to_local.push(Packet::PubComp(PubAck::new(a.pkid))),
            _ => {}
        }
    }

    /// The local broker acknowledged an `in` message: acknowledge it to the remote.
    fn in_acked(&mut self, slot: Option<(u16, QoS)>, reason: ReasonCode) {
        let Some((remote_pkid, remote_qos)) = slot else {
            return;
        };
        if reason.0 >= 0x80 {
            // Refused locally (e.g. the ACL): the remote is still answered, or it would resend
            // it for ever.
            tracing::debug!(bridge = %self.counters.name, reason = %reason, "local broker refused a message from the remote");
            self.dropped();
        } else {
            self.counters.forwarded_in.fetch_add(1, Ordering::Relaxed);
        }
        self.ack_remote(remote_pkid, remote_qos);
    }

    fn ack_remote(&mut self, pkid: u16, qos: QoS) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.to_remote.push(Packet::PubAck(PubAck::new(pkid))),
            QoS::ExactlyOnce => self.to_remote.push(Packet::PubRec(PubAck::new(pkid))),
        }
    }

    fn ack_local(&mut self, pkid: u16, qos: QoS) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.to_local.push(Packet::PubAck(PubAck::new(pkid))),
            QoS::ExactlyOnce => self.to_local.push(Packet::PubRec(PubAck::new(pkid))),
        }
    }

    /// A message from the local session for the remote.
    fn local_publish(&mut self, p: Publish) {
        let local_qos = p.qos;
        if local_qos != QoS::AtMostOnce
            && (self.out_inflight.contains_key(&p.pkid)
                || self.out_waiting.iter().any(|o| o.publish.pkid == p.pkid))
        {
            // Already on its way (a resend of a message this connection holds).
            return;
        }
        let topic = map_out(&self.rules, p.topic.as_str())
            .and_then(|t| TopicName::try_from(t.as_str()).ok());
        let Some(topic) = topic else {
            tracing::warn!(bridge = %self.counters.name, topic = %p.topic, "no remote topic for a local message: dropped");
            self.dropped();
            self.ack_local(p.pkid, local_qos);
            return;
        };
        let qos = local_qos.min(self.terms.remote_max_qos);
        let publish = Publish {
            // DUP only for a resend, and never for QoS 0 [MQTT-3.3.1-2].
            dup: p.dup && qos != QoS::AtMostOnce,
            qos,
            retain: p.retain,
            topic,
            pkid: if qos == QoS::AtMostOnce { 0 } else { p.pkid },
            payload: p.payload,
            properties: forwardable(p.properties),
        };
        let packet = Packet::Publish(publish);
        if let Some(max) = self.terms.remote_max_packet {
            let fits =
                encoded_len(&packet, self.terms.remote_protocol).is_ok_and(|n| n <= max as usize);
            if !fits {
                tracing::warn!(bridge = %self.counters.name, topic = %p.topic, "message larger than the remote's Maximum Packet Size: dropped");
                self.dropped();
                self.ack_local(p.pkid, local_qos);
                return;
            }
        }
        if let Packet::Publish(publish) = packet {
            self.send_out(publish, local_qos, p.pkid);
        }
    }

    fn send_out(&mut self, publish: Publish, local_qos: QoS, local_pkid: u16) {
        if publish.qos == QoS::AtMostOnce {
            self.to_remote.push(Packet::Publish(publish));
            self.counters.forwarded_out.fetch_add(1, Ordering::Relaxed);
            // The remote does not acknowledge QoS 0 (its Maximum QoS, or the message's own).
            self.ack_local(local_pkid, local_qos);
            return;
        }
        self.out_waiting.push_back(Outgoing { publish, local_qos });
        self.pump_out();
    }

    /// Sends waiting local messages while the remote's Receive Maximum has room.
    fn pump_out(&mut self) {
        while self.out_inflight.len() < self.terms.remote_window {
            let Some(o) = self.out_waiting.pop_front() else {
                return;
            };
            self.to_remote.push(Packet::Publish(o.publish.clone()));
            self.out_inflight.insert(o.publish.pkid, o);
        }
    }

    /// The remote finished with out message `pkid` (`reason` >= 0x80: refused).
    fn out_done(&mut self, pkid: u16, reason: ReasonCode) {
        let Some(o) = self.out_inflight.remove(&pkid) else {
            return;
        };
        if reason.0 >= 0x80 {
            tracing::warn!(bridge = %self.counters.name, topic = %o.publish.topic, reason = %reason, "the remote refused a message");
            self.dropped();
        } else {
            self.counters.forwarded_out.fetch_add(1, Ordering::Relaxed);
        }
        self.ack_local(pkid, o.local_qos);
        self.pump_out();
    }

    /// A packet from the remote.
    pub fn from_remote(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.remote_publish(p),
            Packet::PubAck(a) | Packet::PubComp(a) => self.out_done(a.pkid, a.reason),
            Packet::PubRec(a) => {
                if a.reason.0 >= 0x80 {
                    self.out_done(a.pkid, a.reason);
                } else if self.out_inflight.contains_key(&a.pkid) {
                    self.to_remote.push(Packet::PubRel(PubAck::new(a.pkid)));
                }
            }
            // Always completed, known or not: after a reconnect the bridge may not remember
            // the exchange, and the remote must not keep the id for ever.
            Packet::PubRel(a) => self.to_remote.push(Packet::PubComp(PubAck::new(a.pkid))),
            _ => {}
        }
    }

    fn remote_publish(&mut self, p: Publish) {
        let remote_qos = p.qos;
        let topic = map_in(&self.rules, p.topic.as_str()).and_then(|t| {
            let over = t.len() > self.terms.local_topic_length
                || t.bytes().filter(|&b| b == b'/').count() >= self.terms.local_topic_levels;
            (!over)
                .then(|| TopicName::try_from(t.as_str()).ok())
                .flatten()
        });
        let Some(topic) = topic else {
            tracing::warn!(bridge = %self.counters.name, topic = %p.topic, "no usable local topic for a remote message: dropped");
            self.dropped();
            self.ack_remote(p.pkid, remote_qos);
            return;
        };
        let qos = remote_qos.min(self.terms.local_max_qos);
        let publish = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: p.retain,
            topic,
            // Measured with a packet id where there will be one (its value does not change
            // the size).
            pkid: if qos == QoS::AtMostOnce { 0 } else { u16::MAX },
            payload: p.payload,
            properties: forwardable(p.properties),
        });
        if encoded_len(&publish, Protocol::V5).map_or(true, |n| n > self.terms.local_max_packet) {
            tracing::warn!(bridge = %self.counters.name, topic = %p.topic, "message from the remote larger than mqtt.max_packet_size: dropped");
            self.dropped();
            self.ack_remote(p.pkid, remote_qos);
            return;
        }
        let Packet::Publish(mut publish) = publish else {
            return;
        };
        publish.pkid = 0;
        if qos == QoS::AtMostOnce {
            self.to_local.push(Packet::Publish(publish));
            self.counters.forwarded_in.fetch_add(1, Ordering::Relaxed);
            self.ack_remote(p.pkid, remote_qos);
            return;
        }
        self.in_waiting.push_back(Incoming {
            publish,
            remote_pkid: p.pkid,
            remote_qos,
        });
        self.pump_in();
    }

    /// Publishes waiting remote messages locally while the local Receive Maximum has room.
    fn pump_in(&mut self) {
        while self.in_inflight.len() < self.terms.local_window {
            let Some(mut m) = self.in_waiting.pop_front() else {
                return;
            };
            let Some(pkid) = self.next_local_pkid() else {
                self.in_waiting.push_front(m);
                return;
            };
            m.publish.pkid = pkid;
            self.to_local.push(Packet::Publish(m.publish));
            self.in_inflight
                .insert(pkid, Some((m.remote_pkid, m.remote_qos)));
        }
    }

    /// A packet id not in use towards the local broker [MQTT-2.2.1-2], never 0.
    fn next_local_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_local_pkid = self.last_local_pkid.checked_add(1).unwrap_or(1);
            if !self.in_inflight.contains_key(&self.last_local_pkid) {
                return Some(self.last_local_pkid);
            }
        }
        None
    }
}

/// A message's properties as passed on: without a Topic Alias (each side's own) or
/// Subscription Identifiers (server to client only [MQTT-3.3.4-6]).
fn forwardable(mut p: PublishProperties) -> PublishProperties {
    p.topic_alias = None;
    p.subscription_identifiers.clear();
    p
}
