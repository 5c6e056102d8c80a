//! SUBSCRIBE and UNSUBSCRIBE, and the connection's attachment to the queues of its shared
//! subscriptions (taking a group's delivery and adapting it to this subscription).

use std::sync::atomic::Ordering;
use std::time::Instant;

use sluice_codec::{
    AckProperties, Packet, QoS, ReasonCode, SubAck, Subscribe, TopicFilter, UnsubAck, Unsubscribe,
};

use crate::broker::Broker;
use crate::locks::write;
use crate::routing::Requester;
use crate::routing::SubEntry;
use crate::session::{Delivery, SubscriptionRecord};

use super::{topic_over_limits, ClientState, Close};

impl ClientState {
    pub(super) fn on_subscribe(
        &mut self,
        now: Instant,
        s: Subscribe,
        broker: &Broker,
    ) -> Result<(), Close> {
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
            if !existed {
                broker.router.interest_changed(&filter, true);
            }
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
                if !self.group_queues().iter().any(|(f, _)| *f == filter) {
                    // The field, not groups_mut(): `who` borrows another field of self.
                    let groups = self.groups.get_or_insert_with(Box::default);
                    groups.queues.push((filter.clone(), q.clone()));
                }
            }
            let (f, o) = (filter.clone(), options);
            self.log(|s, client| s.subscribed(client, f, o, identifier));
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
        self.cluster_saved(broker);
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

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe, broker: &Broker) {
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
                if existed {
                    broker.router.interest_changed(&filter, false);
                }
                left_groups.extend(removed.and_then(|e| e.shared));
                if self.session.subscriptions.remove(&filter).is_some() && self.persistent() {
                    self.store
                        .unsubscribed(self.n.client_id.clone(), filter.clone());
                }
                if let Some(g) = self.groups.as_deref_mut() {
                    g.queues.retain(|(f, _)| *f != filter);
                }
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
        self.cluster_saved(broker);
        self.send_if_persistent_held(&Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            reasons,
            properties: AckProperties::default(),
        }));
    }

    /// Connects this connection to the queue of shared subscription `filter`.
    fn attach_group(&mut self, filter: &TopicFilter, broker: &Broker) {
        if self.group_queues().iter().any(|(f, _)| f == filter) {
            return;
        }
        let q = broker.router.group_queue(filter);
        self.groups_mut().queues.push((filter.clone(), q));
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
    pub(super) fn take_group_delivery(&self, filter: &TopicFilter, d: Delivery) -> Delivery {
        let mut d = self.adapt_group_delivery(filter, d);
        if d.seq == 0 {
            return d;
        }
        let _g = self.store.batch();
        let group_seq = d.seq;
        d.seq = 0;
        if self.persistent() && d.qos != QoS::AtMostOnce {
            d.seq = self.handle.next_seq.fetch_add(1, Ordering::Relaxed);
            self.store.message_queued(
                self.n.client_id.clone(),
                d.seq,
                d.msg.id,
                d.qos,
                d.retain,
                d.subscription_ids.clone(),
                Some(filter.clone()),
            );
        }
        self.store.group_taken(filter.clone(), group_seq);
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
}
