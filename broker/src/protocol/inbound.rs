//! Messages coming in from the client: PUBLISH (validation, topic alias, ACL, routing, the
//! acknowledgement held behind the store's ticket) and the QoS 1/2 acknowledgements of what
//! the broker sent (PUBACK, PUBREC, PUBREL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_codec::{
    encoded_len, AckProperties, Packet, PubAck, Publish, QoS, ReasonCode, TopicName,
};

use crate::broker::Broker;
use crate::message::Message;
use crate::persist::Pending;
use crate::session::Inflight;

use super::{topic_over_limits, ClientState, Close, QUEUE_FULL};

/// Reason String of a `$delayed` PUBLISH refused over `limits.max_delayed_messages`.
const DELAYED_FULL: &str = "too many delayed messages waiting (limits.max_delayed_messages)";

impl ClientState {
    pub(super) fn on_publish(
        &mut self,
        now: Instant,
        mut p: Publish,
        broker: &Broker,
    ) -> Result<(), Close> {
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
        // `$delayed/{seconds}/{topic}`: delivered to `{topic}` later; from here on the PUBLISH
        // is one to `{topic}` (ACL, retain, properties), only routed later (`routing::delayed`).
        let delay = match crate::topic::delayed(&p.topic, cfg.max_delay_seconds) {
            None => None,
            Some(Ok(d)) => match TopicName::try_from(d.target) {
                Ok(target) => {
                    let seconds = d.seconds;
                    p.topic = target;
                    Some(seconds)
                }
                Err(_) => {
                    self.refuse_delayed(p.qos, p.pkid, "$delayed target is not a valid topic name");
                    return Ok(());
                }
            },
            Some(Err(e)) => {
                self.refuse_delayed(p.qos, p.pkid, e.reason());
                return Ok(());
            }
        };
        // `$SYS` belongs to the broker and `$share/` is not a topic; both are refused like an ACL
        // denial, as Mosquitto does. Other `$` topics are ordinary (wildcards just skip them).
        let reserved = crate::topic::is_reserved_for_clients(&p.topic);
        let allowed = !reserved
            && broker
                .access
                .may_publish(self.n.username.as_deref(), &self.n.client_id, &p.topic);
        self.tally.received[p.qos as usize] += 1;
        if !allowed {
            self.tally.denied += 1;
        }
        match p.qos {
            QoS::AtMostOnce => {
                if allowed {
                    let _ = self.route(now, p, delay, None, broker);
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
                    match self.route(now, p, delay, None, broker) {
                        Ok(()) => (ReasonCode::SUCCESS, ""),
                        Err((close, text)) => {
                            if !self.n.protocol.is_v5() {
                                return Err(close);
                            }
                            (ReasonCode::QUOTA_EXCEEDED, text)
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
                if self.session.awaiting_pubrel.len() >= usize::from(self.n.receive_maximum) {
                    return Err(Close::error(
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        "more unacknowledged QoS 2 PUBLISHes than Receive Maximum [MQTT-3.3.4-9]",
                    ));
                }
                // "Received" and the message's queue entries reach the log together (the
                // router sends the batch before it queues anything), or neither does.
                let _g = self.store.batch();
                let received = self
                    .persistent()
                    .then(|| Pending::qos2_received(self.n.client_id.clone(), pkid));
                if let Err((close, text)) = self.route(now, p, delay, received, broker) {
                    if !self.n.protocol.is_v5() {
                        return Err(close);
                    }
                    // A PUBREC with an error ends the flow [MQTT-4.3.3-4 note].
                    self.send_ack(Packet::PubRec, pkid, ReasonCode::QUOTA_EXCEEDED, text);
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

    /// Routes a client's PUBLISH, or keeps it for `delay` seconds (`$delayed`); Err (to close a
    /// 3.1.1 connection with, and the 5.0 ack's Reason String) when `mqtt.queue_full_policy =
    /// "reject"` or `limits.max_delayed_messages` refused it.
    fn route(
        &mut self,
        now: Instant,
        p: Publish,
        delay: Option<u32>,
        received: Option<Pending>,
        broker: &Broker,
    ) -> Result<(), (Close, &'static str)> {
        let mut msg = Message::new(
            p.topic,
            p.payload,
            p.qos,
            p.retain,
            p.properties,
            self.n.client_id.clone(),
            now,
        );
        msg.priority = broker.router.priority_of(&msg.topic);
        if let Some(seconds) = delay {
            let delay = Duration::from_secs(u64::from(seconds));
            return broker
                .router
                .publish_delayed(Arc::new(msg), delay, received, now)
                .map_err(|_| {
                    (
                        Close::error(ReasonCode::QUOTA_EXCEEDED, DELAYED_FULL),
                        DELAYED_FULL,
                    )
                });
        }
        match broker.router.publish_from_client(Arc::new(msg), received) {
            Ok(_) => Ok(()),
            Err(subscriber) => Err((Close::error(
                ReasonCode::QUOTA_EXCEEDED,
                format!("PUBLISH refused: the queue of subscriber {subscriber} is full (mqtt.queue_full_policy = reject)"),
            ), QUEUE_FULL)),
        }
    }

    /// Refuses a malformed `$delayed` PUBLISH: 0x90 Topic Name Invalid ("not accepted by this
    /// Server", 3.4.2.1) in the 5.0 PUBACK/PUBREC with `why` as Reason String; 3.1.1 has no
    /// reason codes, so there it is a plain ack and the message is dropped, as for an ACL
    /// refusal; QoS 0 has no ack: dropped. Logged either way.
    fn refuse_delayed(&mut self, qos: QoS, pkid: u16, why: &'static str) {
        tracing::info!(client_id = %self.n.client_id, reason = why, "$delayed PUBLISH refused");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.send_ack(Packet::PubAck, pkid, ReasonCode::TOPIC_NAME_INVALID, why)
            }
            QoS::ExactlyOnce => {
                self.send_ack(Packet::PubRec, pkid, ReasonCode::TOPIC_NAME_INVALID, why)
            }
        }
    }

    pub(super) fn on_puback(&mut self, pkid: u16) {
        if self.take_puback(pkid) {
            self.log_ref(|s, client| s.delivery_acked(client, pkid));
        }
    }

    /// PUBACK: releases the QoS 1 delivery `pkid` from the inflight window; whether there was
    /// one (the caller logs it).
    pub(super) fn take_puback(&mut self, pkid: u16) -> bool {
        match self.session.inflight_position(pkid) {
            Some(i) if matches!(&self.session.inflight[i], Inflight::Publish { delivery, .. } if delivery.qos == QoS::AtLeastOnce) =>
            {
                self.session.inflight.remove(i);
                true
            }
            _ => {
                tracing::debug!(client_id = %self.n.client_id, pkid, "PUBACK for an unknown packet id ignored");
                false
            }
        }
    }

    pub(super) fn on_pubrec(&mut self, ack: PubAck) {
        let pos = self.session.inflight_position(ack.pkid);
        match pos.map(|i| &self.session.inflight[i]) {
            Some(Inflight::Publish { delivery, .. }) if delivery.qos == QoS::ExactlyOnce => {
                let i = pos.unwrap_or_default();
                let pkid = ack.pkid;
                if ack.reason.is_error() {
                    // The receiver refused it: the flow ends here [MQTT-4.3.3-4 note].
                    self.session.inflight.remove(i);
                    self.log_ref(|s, client| s.delivery_acked(client, pkid));
                    return;
                }
                self.session.inflight[i] = Inflight::Release { pkid: ack.pkid };
                self.log(|s, client| s.delivery_released(client, pkid));
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

    pub(super) fn on_pubrel(&mut self, pkid: u16) {
        let mut comp = PubAck::new(pkid);
        if self.session.awaiting_pubrel.remove(&pkid) {
            self.log(|s, client| s.qos2_released(client, pkid));
        } else if self.n.protocol.is_v5() {
            comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        }
        self.send_if_persistent_held(&Packet::PubComp(comp));
    }
}
