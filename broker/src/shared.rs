//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 4.8.2, also offered to 3.1.1
//! clients): each matching message goes to exactly one member of each group.
//!
//! Choosing the member happens in three tiers, so a burst lands where there is room:
//! 1. members that are online and have a free slot in their send window (window less
//!    inflight less already queued): "members with no free inflight window are skipped";
//! 2. if none has room, any online member (the message waits in its bounded queue);
//! 3. if none is online, any member (a persistent session queues it while offline).
//!
//! Within the tier the group's strategy picks (`mqtt.shared_subscription_strategy`, per group
//! `mqtt.shared_group_strategies`), see [`SharedStrategy`].
//!
//! When a member's connection ends, the messages queued for it through the group and not yet
//! sent, and its unacknowledged QoS 1 messages, are handed to other members ("the Server SHOULD
//! send the Application Message to another Client", 4.8.2). QoS 2 messages already sent stay
//! with that member: the spec requires the server to complete their delivery to the same client
//! and never send them to another [MQTT-4.8.2-4], [MQTT-4.8.2-5].

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use sluice_codec::TopicFilter;

use crate::broker::{read, Broker};
use crate::config::SharedStrategy;
use crate::message::ClientId;
use crate::session::{Delivery, SessionHandle};

/// Bound on remembered group states (cursor and sticky member, ~100 bytes each). The state is
/// only a hint for fairness, so when the bound is reached the table is simply cleared: a client
/// inventing group names cannot grow it without limit.
const MAX_GROUP_STATES: usize = 65_536;

/// Per-group selection state.
#[derive(Debug, Default)]
struct GroupState {
    /// Rotates through members (round robin, and tie-breaking for least_inflight).
    cursor: usize,
    /// The member the `sticky` strategy stays with while it has room.
    sticky: Option<ClientId>,
}

/// Selection state of every shared group, keyed by the full `$share/{group}/{filter}`.
#[derive(Debug, Default)]
pub struct SharedGroups {
    /// Locked once per message per group for a few instructions; never across an await.
    state: Mutex<HashMap<TopicFilter, GroupState>>,
}

/// One candidate member, as the selector sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub handle: &'a SessionHandle,
}

impl SharedGroups {
    /// Picks the index in `members` that gets a message on `topic` from `publisher`; None only
    /// when `members` is empty.
    pub fn pick(
        &self,
        group: &TopicFilter,
        strategy: SharedStrategy,
        members: &[Candidate<'_>],
        publisher: &str,
        topic: &str,
    ) -> Option<usize> {
        if members.len() <= 1 {
            return (!members.is_empty()).then_some(0);
        }
        let free: Vec<usize> = members.iter().map(|m| m.handle.free_window()).collect();
        let mut tier: Vec<usize> = (0..members.len()).filter(|&i| free[i] > 0).collect();
        if tier.is_empty() {
            tier = (0..members.len())
                .filter(|&i| members[i].handle.outbox().is_online())
                .collect();
        }
        if tier.is_empty() {
            tier = (0..members.len()).collect();
        }
        let mut states = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if states.len() >= MAX_GROUP_STATES && !states.contains_key(group) {
            states.clear();
        }
        let st = states.entry(group.clone()).or_default();
        let n = tier.len();
        let chosen = match strategy {
            SharedStrategy::RoundRobin => {
                st.cursor = st.cursor.wrapping_add(1);
                tier[st.cursor % n]
            }
            SharedStrategy::Random => tier[rand::random_range(0..n)],
            SharedStrategy::HashClientId => tier[stable_hash(publisher) % n],
            SharedStrategy::HashTopic => tier[stable_hash(topic) % n],
            SharedStrategy::Sticky => {
                let current = st.sticky.as_ref().and_then(|id| {
                    tier.iter()
                        .copied()
                        .find(|&i| members[i].handle.client_id == *id)
                });
                match current {
                    Some(i) => i,
                    None => {
                        st.cursor = st.cursor.wrapping_add(1);
                        let i = tier[st.cursor % n];
                        st.sticky = Some(members[i].handle.client_id.clone());
                        i
                    }
                }
            }
            SharedStrategy::LeastInflight => {
                // Most free window wins; equal ones take turns.
                st.cursor = st.cursor.wrapping_add(1);
                let start = st.cursor % n;
                let mut best = tier[start];
                for k in 1..n {
                    let i = tier[(start + k) % n];
                    if free[i] > free[best] {
                        best = i;
                    }
                }
                best
            }
        };
        Some(chosen)
    }
}

/// A hash that is the same in every run (SipHash with fixed keys), so hash strategies map a
/// key to the same member across restarts while membership is unchanged.
fn stable_hash(s: &str) -> usize {
    #[allow(deprecated)] // SipHasher's fixed keys are exactly what is wanted here.
    let mut h = std::hash::SipHasher::new();
    s.hash(&mut h);
    h.finish() as usize
}

impl Broker {
    /// The strategy of a shared subscription `$share/{group}/...`.
    pub fn shared_strategy(&self, group: &str) -> SharedStrategy {
        let m = &self.config.mqtt;
        m.shared_group_strategies
            .get(group)
            .copied()
            .unwrap_or(m.shared_subscription_strategy)
    }

    /// Hands deliveries of a departed group member to other members of the same shared
    /// subscription. Returns the ones no other member could take (none subscribed).
    pub fn redistribute(&self, from: &ClientId, deliveries: Vec<Delivery>) -> Vec<Delivery> {
        let mut left = Vec::new();
        for d in deliveries {
            let Some(key) = d.shared.clone() else {
                left.push(d);
                continue;
            };
            let mut handles: Vec<Arc<SessionHandle>> = Vec::new();
            read(&self.subscriptions).for_each_match(d.msg.topic.as_str(), |_, client, entry| {
                if client != from && entry.shared.as_ref() == Some(&key) {
                    handles.push(entry.handle.clone());
                }
            });
            handles.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
            let members: Vec<Candidate<'_>> =
                handles.iter().map(|h| Candidate { handle: h }).collect();
            let group = key.shared().map_or("", |(g, _)| g);
            let strategy = self.shared_strategy(group);
            match self.shared_groups.pick(
                &key,
                strategy,
                &members,
                &d.msg.origin,
                d.msg.topic.as_str(),
            ) {
                Some(i) => {
                    // A fresh delivery for the new member: its own packet id, DUP 0.
                    if handles[i].deliver(d).is_err() {
                        self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => left.push(d),
            }
        }
        left
    }
}
