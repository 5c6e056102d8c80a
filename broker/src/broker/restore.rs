//! Start-up: rebuilding the broker's state from what the store recovered (`Broker::restore`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::locks::{lock, write};
use crate::message::Message;
use crate::persist::{Image, InflightImage, QueuedImage};
use crate::session::{
    ColdDelivery, Delivery, Inflight, PendingWill, Session, SessionHandle, SubscriptionRecord,
};

impl Broker {
    /// Rebuilds the state the store recovered at start-up: retained messages, and every
    /// persistent session parked with its subscriptions, queue (left on disk, read back as it
    /// drains), inflight messages (resent with DUP when the client returns), inbound QoS 2 ids
    /// and will. Expiry and will-delay timers start again from `now`. Returns the number of
    /// sessions restored.
    pub fn restore(self: &Arc<Self>, now: Instant) -> usize {
        let store = self.store.clone();
        store
            .with_image(|image, load| self.restore_image(image, load, now))
            .unwrap_or(0)
    }

    fn restore_image(
        self: &Arc<Self>,
        image: &Image,
        load: &dyn Fn(u64) -> Option<Arc<Message>>,
        now: Instant,
    ) -> usize {
        {
            let mut retained = write(&self.router.retained);
            for (topic, id) in &image.retained {
                if let Some(m) = load(*id) {
                    retained.insert(topic.as_str(), m);
                }
            }
        }
        let delivery = |q: &QueuedImage| {
            load(q.id).map(|m| Delivery {
                msg: m,
                qos: q.qos,
                retain: q.retain,
                subscription_ids: q.subscription_ids.to_vec(),
                shared: q.shared.as_deref().cloned(),
                seq: q.seq,
            })
        };
        // Shared subscriptions' group queues (messages every member was too busy to take), left
        // on disk like session queues: read back as members drain them.
        for (group, g) in &image.groups {
            let queue = self.router.group_queue(group);
            queue.next_seq.store(g.next_seq.max(1), Ordering::Relaxed);
            for q in &g.queue {
                match image.messages.get(&q.id) {
                    Some(slot) => queue.push_cold(ColdDelivery {
                        seq: q.seq(),
                        id: q.id,
                        cost: slot.len as usize,
                        qos: q.qos(),
                        retain: q.retain(),
                        subscription_ids: Vec::new(),
                        priority: image.priority(q.id),
                    }),
                    None => self.store.group_taken(group.clone(), q.seq()),
                }
            }
        }
        let count = image.sessions.len();
        let wall_now = crate::persist::now_unix_ms();
        // `$delayed` messages still waiting (on disk): due when logged, at once if that passed
        // while the broker was down.
        for (id, due) in &image.delayed {
            let left = Duration::from_millis(due.saturating_sub(wall_now));
            self.router.delayed.restore(now + left, *id);
        }
        for (client, s) in &image.sessions {
            let handle = Arc::new(SessionHandle::with_outbox(
                client.clone(),
                self.new_outbox(),
            ));
            handle.persistent.store(true, Ordering::Relaxed);
            handle.next_seq.store(s.next_seq.max(1), Ordering::Relaxed);
            let mut session = Session {
                expiry_interval: s.expiry,
                awaiting_pubrel: s.qos2_in.clone().into(),
                ..Session::default()
            };
            {
                let mut tree = write(&self.router.subscriptions);
                for (filter, (options, identifier)) in &s.subscriptions {
                    session.subscriptions.insert(
                        filter.clone(),
                        SubscriptionRecord {
                            options: *options,
                            identifier: *identifier,
                        },
                    );
                    let entry = SubEntry {
                        options: *options,
                        identifier: *identifier,
                        handle: handle.clone(),
                        username: s.username.clone(),
                        shared: filter
                            .shared()
                            .is_some()
                            .then(|| self.router.join_group(filter, &handle)),
                    };
                    if tree.subscribe(filter, client.clone(), entry).is_none() {
                        self.router.interest_changed(filter, true);
                    }
                }
            }
            for i in &s.inflight {
                let (pkid, entry) = match i {
                    InflightImage::Publish { pkid, queued } => match delivery(queued) {
                        Some(d) => (
                            *pkid,
                            Inflight::Publish {
                                pkid: *pkid,
                                delivery: d,
                            },
                        ),
                        None => continue,
                    },
                    InflightImage::Release { pkid } => (*pkid, Inflight::Release { pkid: *pkid }),
                };
                session.last_pkid = session.last_pkid.max(pkid);
                session.inflight.push_back(entry);
                // Not handed out by this session's next_pkid: it must check them.
                session.pkids_unordered = true;
            }
            {
                let mut outbox = handle.outbox();
                if image.priorities.is_empty() {
                    outbox.reserve_exact(0, s.queue.len());
                } else {
                    // One lane per priority (`mqtt.priorities`), each sized for what it gets.
                    let mut lanes = std::collections::BTreeMap::<u8, usize>::new();
                    for q in &s.queue {
                        *lanes.entry(image.priority(q.id)).or_default() += 1;
                    }
                    for (priority, n) in lanes {
                        outbox.reserve_exact(priority, n);
                    }
                }
                for q in &s.queue {
                    let Some(slot) = image.messages.get(&q.id) else {
                        continue;
                    };
                    if q.shared.is_some() {
                        // Shared deliveries may move to another member: kept in memory.
                        if let Some(d) = delivery(q) {
                            outbox.push_restored(d);
                        }
                        continue;
                    }
                    outbox.push_cold(ColdDelivery {
                        seq: q.seq,
                        id: q.id,
                        // The stored record's size stands in for the message's cost until it is
                        // read back.
                        cost: slot.len as usize,
                        qos: q.qos,
                        retain: q.retain,
                        subscription_ids: q.subscription_ids.to_vec(),
                        priority: image.priority(q.id),
                    });
                }
            }
            // Session expiry and will delay count from when the client went away (its
            // disconnect, or this restart for a client cut off by the crash) [MQTT-3.1.2-23].
            let away = if s.since > 0 {
                Duration::from_millis(wall_now.saturating_sub(s.since))
            } else {
                Duration::ZERO
            };
            let after = |secs: u32| now + Duration::from_secs(u64::from(secs)).saturating_sub(away);
            // A will still waiting for its delay fires then, unless the client comes back first
            // [MQTT-3.1.3-9].
            session.pending_will = s.will.clone().map(|will| {
                Box::new(PendingWill {
                    publish_at: after(will.delay_interval),
                    will,
                })
            });
            let (generation, deadline) = {
                let mut own = handle.ownership();
                own.generation += 1;
                own.expires_at = (s.expiry != u32::MAX).then(|| after(s.expiry));
                let deadline = earliest(
                    own.expires_at,
                    session.pending_will.as_ref().map(|p| p.publish_at),
                );
                own.parked = Some(Box::new(session));
                (own.generation, deadline)
            };
            lock(&self.sessions).insert(client.clone(), handle.clone());
            if let Some(deadline) = deadline {
                self.arm_timer(handle, generation, deadline);
            }
        }
        // Groups whose members all ended with the restart (sessions with expiry 0).
        for group in image.groups.keys() {
            self.router
                .orphan_if_memberless(&self.router.group_queue(group));
        }
        count
    }
}
