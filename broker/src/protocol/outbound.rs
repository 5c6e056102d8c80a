//! Messages going out to the client: the outbox drained into the inflight window (bounded by
//! the client's Receive Maximum), cold messages loaded back from the store, the resend of a
//! resumed session's inflight window, and the PUBLISH built for one delivery.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_codec::{prepare, Packet, PubAck, Publish, QoS, TopicName};

use super::alias::AliasUse;
use super::shaping::shaped_bytes;
use crate::message::{EncodedForm, FormLookup, Message, WireForm};
use crate::session::{Delivery, Inflight};
use crate::stats::{DrainTally, LATENCY_SAMPLE};

use super::ClientState;

#[cfg(test)]
#[path = "outbound_tests.rs"]
pub(super) mod tests;

impl ClientState {
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
                    let prepared = prepare(&p, self.n.protocol);
                    if self.n.protocol.is_v5()
                        && prepared
                            .as_ref()
                            .map_or(true, |p| p.len() > self.n.client_max_packet)
                    {
                        self.oversize_dropped += 1;
                        continue;
                    }
                    match prepared {
                        Ok(prepared) => {
                            let _ = prepared.write(self.out_buf(false));
                        }
                        Err(e) => {
                            tracing::error!(client_id = %self.n.client_id, error = %e, "cannot encode PUBLISH; skipped");
                        }
                    }
                }
                Inflight::Release { pkid } => self.send(&Packet::PubRel(PubAck::new(*pkid))),
            }
            kept.push_back(entry);
        }
        self.session.inflight = kept;
    }

    /// The ids of the messages to read back from the store next: the session queue's next
    /// messages are on disk only (or soon will be at its front), or else a group queue's are
    /// and no other member is reading them back; and the inflight window has room. None
    /// otherwise.
    pub fn cold_to_load(&mut self) -> Option<Vec<u64>> {
        if !self.cold_waiting
            || self.groups.as_ref().is_some_and(|g| g.load.is_some())
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
        let groups = self.groups.as_deref_mut()?;
        let (ids, claim) = groups.queues.iter().find_map(|(_, q)| q.claim_load())?;
        groups.load = Some(claim);
        Some(ids)
    }

    /// Puts messages read back from the store (`cold_to_load`) into the queue they were read
    /// for, ready to send. A message the store could not give back is dropped from the queue,
    /// logged and counted.
    pub fn warm(&mut self, ids: &[u64], messages: Vec<Option<Arc<Message>>>) {
        if let Some(claim) = self.groups.as_deref_mut().and_then(|g| g.load.take()) {
            let group = &claim.queue.key;
            let lost = claim.queue.warm_in_order(ids, messages);
            // The other members may have room for what came back too.
            claim.queue.notify_members();
            if !lost.is_empty() {
                tracing::error!(%group, count = lost.len(), "messages of a shared subscription's queue could not be read back from the store: dropped");
                for seq in lost {
                    self.store.group_taken(group.clone(), seq);
                }
            }
            return;
        }
        let lost = self.handle.outbox().warm_in_order(ids, messages);
        if !lost.is_empty() {
            tracing::error!(client_id = %self.n.client_id, count = lost.len(), "queued messages could not be read back from the store: dropped");
            for seq in lost {
                self.log(|s, client| s.delivery_skipped(client, seq));
            }
        }
    }

    /// Moves deliveries from the outbox into the write buffer while the inflight window and the
    /// write buffer's high-water mark allow. Returns true if anything is still queued.
    pub fn drain_outbox(&mut self, now: Instant, high_water: usize) -> bool {
        self.drain_outbox_counted(now, high_water, &mut DrainTally::default())
    }

    /// [`ClientState::drain_outbox`], counting what was sent and dropped (and each sent
    /// message's latency) in `tally`, which the caller adds to the broker's counts once.
    pub fn drain_outbox_counted(
        &mut self,
        now: Instant,
        high_water: usize,
        tally: &mut DrainTally,
    ) -> bool {
        // The records of the deliveries sent now reach the writer together, in one frame.
        let _records = self.store.batch();
        let mut batch = Vec::new();
        // Shaping (`[[shaping]]`): each message taken is charged to its bucket; an empty
        // bucket stops the drain of that queue until `egress_due`.
        // Taken out for the drain (put back below): the group path borrows `self`.
        let mut egress_box = self.egress.take();
        let mut egress = egress_box.as_deref_mut();
        if let Some(e) = egress.as_deref_mut() {
            e.clear_due();
        }
        let more = {
            let mut outbox = self.handle.outbox();
            let mut window = self
                .n
                .send_window
                .saturating_sub(self.session.inflight_len());
            let mut budget = high_water.saturating_sub(self.write_buf.len());
            let mut taken = 0;
            while let Some(front) = outbox.front() {
                if budget == 0 || (front.qos != QoS::AtMostOnce && window == 0) {
                    break;
                }
                if let Some(e) = egress.as_deref_mut() {
                    if !e.try_take(front.shared.as_ref(), now, shaped_bytes(front)) {
                        break;
                    }
                }
                let Some(d) = outbox.pop() else { break };
                if d.qos != QoS::AtMostOnce {
                    window -= 1;
                    taken += 1;
                }
                budget = budget.saturating_sub(d.msg.cost());
                batch.push(d);
            }
            // Shared-subscription selection reads the headroom (window less inflight less
            // queued) under this lock: what leaves the queue for the window is counted as
            // inflight before the lock goes, or a publisher in between would see a free slot
            // that is not there and queue a message behind a full window (where, behind a
            // consumer that stopped acknowledging, it would wait for ever).
            self.handle
                .set_inflight(self.session.inflight_len() + taken);
            if !batch.is_empty() {
                outbox.unmark_full_below_low_water();
            }
            let mut cold_waiting = outbox.wants_load();
            let mut more = !outbox.is_empty();
            // Drained: an idle session's queue holds no box and no lane buffers.
            outbox.release_if_drained();
            drop(outbox);
            // Then the shared subscriptions' group queues, while the window has room, and only
            // while this session's own queue is empty [MQTT-4.6.0-6]. A publisher hands a
            // shared message straight to a member only while the group queue is empty, so
            // whatever waits in the member's queue is older than anything in the group queue:
            // taking from the group queue first would send a topic's newer message before its
            // older one. The session's queue stays locked through the takes, so a publisher
            // cannot queue a message for this session in between (one that found this queue
            // empty a moment ago, then found the group queue empty and this member's window
            // free; the next message then went to the group queue, behind the full windows).
            // Taken out for the loop (the loop borrows self), put back after it.
            if let Some(mut groups) = self.groups.take_if(|g| !g.queues.is_empty()) {
                #[cfg(test)]
                tests::before_group_queues();
                let own = self.handle.outbox();
                let n = groups.queues.len();
                let mut idle = if own.is_empty() { 0 } else { n };
                more |= idle > 0;
                while window > 0 && budget > 0 && idle < n {
                    let i = groups.cursor % n;
                    groups.cursor = groups.cursor.wrapping_add(1);
                    let (filter, q) = &groups.queues[i];
                    // The group's bucket (a `group` rule: shared with the other members) is
                    // asked before taking; the message's bytes are charged once it is known.
                    if let Some(e) = egress.as_deref_mut() {
                        if q.is_empty() {
                            idle += 1;
                            continue;
                        }
                        if !e.try_take(Some(filter), now, 0) {
                            idle += 1;
                            more = true;
                            continue;
                        }
                    }
                    // Counted as inflight under the group queue's lock, as above.
                    match q.pop_reserving(&self.handle.inflight) {
                        Some(d) => {
                            idle = 0;
                            if let Some(e) = egress.as_deref_mut() {
                                e.charge_bytes(Some(filter), shaped_bytes(&d));
                            }
                            let d = self.take_group_delivery(filter, d);
                            if d.qos != QoS::AtMostOnce {
                                window -= 1;
                            }
                            budget = budget.saturating_sub(d.msg.cost());
                            batch.push(d);
                        }
                        None => {
                            if let Some(e) = egress.as_deref_mut() {
                                e.refund(Some(filter));
                            }
                            idle += 1
                        }
                    }
                }
                drop(own);
                // A group queue whose next messages are on disk only: this member reads them
                // back when its window has room (`cold_to_load`), unless another one is at it.
                if window > 0 && groups.queues.iter().any(|(_, q)| q.wants_load()) {
                    cold_waiting = true;
                    more = true;
                }
                self.groups = Some(groups);
            }
            self.cold_waiting = cold_waiting;
            more
        };
        self.egress = egress_box;
        // The deliveries sent now, logged as one run (`SentMany`) once they are all written.
        let mut sent = Vec::with_capacity(if self.persistent() { batch.len() } else { 0 });
        for d in batch {
            self.send_delivery(d, now, tally, &mut sent);
        }
        if !sent.is_empty() {
            self.store.deliveries_sent(&self.n.client_id, sent);
        }
        self.publish_inflight();
        more
    }

    /// Logs that a queued delivery the store has was dropped unsent.
    fn log_skip(&self, d: &Delivery) {
        if d.seq != 0 {
            let seq = d.seq;
            self.log(|s, client| s.delivery_skipped(client, seq));
        }
    }

    /// Writes one delivery's PUBLISH (or drops it: expired, too large). A delivery the store
    /// has (`seq`) is added to `sent` as `(seq, pkid)`: the caller logs them with
    /// [`Store::deliveries_sent`](crate::persist::Store::deliveries_sent) before its batch of
    /// records ends (and before any ticket a held PUBLISH asks for), one append per drain turn
    /// instead of one per delivery (issue 16).
    fn send_delivery(
        &mut self,
        d: Delivery,
        now: Instant,
        tally: &mut DrainTally,
        sent: &mut Vec<(u64, u16)>,
    ) {
        if d.msg.is_expired(now) {
            // Expired messages are never delivered [MQTT-3.3.2-5].
            tally.expired += 1;
            self.log_skip(&d);
            return;
        }
        // Numbered up to the recovered horizon: it may have gone out before the crash.
        let dup = d.qos != QoS::AtMostOnce && d.seq != 0 && d.seq <= self.recovered_horizon();
        let pkid = if d.qos == QoS::AtMostOnce {
            0
        } else {
            match self.session.next_pkid() {
                Some(id) => id,
                None => return,
            }
        };
        let alias = if self.n.outbound_alias_maximum == 0 {
            AliasUse::None
        } else {
            self.v5_mut().outbound_aliases.name(&d.msg.topic)
        };
        let v5 = self.n.protocol.is_v5();
        // Encoded once per wire form and shared by every subscriber that gets the same bytes
        // but for the packet identifier; a Topic Alias or Subscription Identifiers make the
        // PUBLISH this delivery's own.
        let form = (alias == AliasUse::None && d.subscription_ids.is_empty()).then(|| WireForm {
            v5,
            qos: d.qos,
            retain: d.retain,
            dup,
            expiry: if v5 {
                d.msg.remaining_expiry(now)
            } else {
                None
            },
        });
        let (cached, cache) = match form.map(|k| d.msg.encoded.lookup(&k)) {
            Some(FormLookup::Hit(f)) => (Some(f), false),
            Some(FormLookup::Miss { cache }) => (None, cache),
            None => (None, false),
        };
        let packet = cached.is_none().then(|| {
            let mut p = self.publish_packet(&d, pkid, dup, now);
            match alias {
                AliasUse::Known(a) => {
                    p.properties.topic_alias = Some(a);
                    p.topic = TopicName::default();
                }
                AliasUse::Assign(a) => p.properties.topic_alias = Some(a),
                AliasUse::None => {}
            }
            Packet::Publish(p)
        });
        // Measured once: the length decides whether it is sent at all, then it is written.
        let prepared = match &packet {
            Some(packet) => match prepare(packet, self.n.protocol) {
                Ok(prepared) => Some(prepared),
                Err(e) => {
                    tracing::error!(client_id = %self.n.client_id, error = %e, "cannot encode PUBLISH; skipped");
                    self.log_skip(&d);
                    return;
                }
            },
            None => None,
        };
        let len = match (&cached, &prepared) {
            (Some(f), _) => f.bytes.len(),
            (None, Some(p)) => p.len(),
            (None, None) => return,
        };
        if v5 && len > self.n.client_max_packet {
            // Larger than the client accepts: not sent, as if delivered [MQTT-3.1.2-25]. An
            // alias assigned for it was never told to the client.
            if let AliasUse::Assign(a) = alias {
                if let Some(v) = self.v5.as_mut() {
                    v.outbound_aliases.forget(a);
                }
            }
            self.oversize_dropped += 1;
            tally.oversize += 1;
            self.log_skip(&d);
            return;
        }
        // Not on the wire before the log says it may have gone: a crash that loses the `Sent`
        // record must still resend it with DUP [MQTT-3.3.1-1].
        let hold = self.horizon_before_send(d.seq);
        if d.seq != 0 && self.persistent() {
            sent.push((d.seq, pkid));
        }
        // QoS 2: not on the wire before the store knows it was sent with this packet id, or a
        // crash could deliver it again as a new message [MQTT-4.3.3].
        let wait = hold || (d.qos == QoS::ExactlyOnce && self.persistent());
        let buf = self.out_buf(wait);
        let start = buf.len();
        match (cached, prepared) {
            (Some(f), _) => write_form(buf, f, pkid),
            (None, Some(prepared)) => {
                // Cannot fail: measured above.
                let written = prepared.write(buf).is_ok();
                if let (true, true, Some(key)) = (written, cache, form) {
                    let bytes = Bytes::copy_from_slice(&buf[start..]);
                    let pkid_at = (pkid != 0).then(|| pkid_offset(&bytes, d.msg.topic.len()));
                    d.msg.encoded.insert(key, EncodedForm { bytes, pkid_at });
                }
            }
            (None, None) => {}
        }
        // The latency of one message in LATENCY_SAMPLE (by id: every delivery of a sampled
        // message), which keeps the clock arithmetic off most deliveries (callgrind: ~110
        // instructions each, 3% of a drain). Retained messages sent on subscription (RETAIN
        // set) are not in it: their age is not a delivery delay.
        let latency = (d.msg.id % LATENCY_SAMPLE == 0 && !d.retain)
            .then(|| now.saturating_duration_since(d.msg.received_at));
        tally.sent(d.qos as usize, latency);
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

/// Appends a shared encoded PUBLISH to `buf` with this delivery's packet identifier: one copy
/// into the write buffer and two bytes patched, instead of building and encoding a packet.
fn write_form(buf: &mut BytesMut, form: &EncodedForm, pkid: u16) {
    let start = buf.len();
    buf.extend_from_slice(&form.bytes);
    if let Some(slot) = form
        .pkid_at
        .and_then(|at| buf.get_mut(start + at..start + at + 2))
    {
        slot.copy_from_slice(&pkid.to_be_bytes());
    }
}

/// Where the packet identifier of an encoded QoS 1/2 PUBLISH is: after the fixed header (the
/// first byte and the Remaining Length, 1 to 4 bytes with the continuation bit) and the topic
/// name (two-byte length and the name) (3.3.2).
fn pkid_offset(packet: &[u8], topic_len: usize) -> usize {
    let length_bytes = packet[1..]
        .iter()
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(4, |i| i + 1);
    1 + length_bytes + 2 + topic_len
}
