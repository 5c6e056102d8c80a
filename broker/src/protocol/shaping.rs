//! Egress shaping as one connection applies it: which bucket each message it takes from a
//! queue is charged to (the session's own rule, or its shared-subscription group's), and when
//! to look again once a bucket is empty. The buckets and rules are `crate::shaping`'s; the
//! connection task sleeps until [`ClientState::egress_due`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_codec::TopicFilter;

use super::ClientState;
use crate::config::QueueFullPolicy;
use crate::session::Delivery;
use crate::shaping::{Applies, Shaping, SharedBucket, TokenBucket};

/// Which bucket a message taken through one shared subscription is charged to.
#[derive(Debug)]
enum Route {
    /// The session's own bucket (or none: not shaped).
    Own,
    /// The group's bucket, shared with the group's other members.
    Group(SharedBucket),
}

/// One connection's view of the rules in force (resolved again when they are reloaded).
/// Boxed in [`ClientState`] and only while rules exist: unshaped connections pay a pointer.
#[derive(Debug)]
pub(super) struct Egress {
    /// The rules' generation this was resolved for.
    generation: u64,
    /// The session's own bucket, from the first `client_id` / `username` rule matching it.
    own: Option<(usize, TokenBucket)>,
    /// Per shared subscription this session takes from (its full `$share/...` filter).
    groups: Vec<(TopicFilter, Route)>,
    /// When the bucket that stopped the last drain has a token again.
    next_at: Option<Instant>,
}

impl Egress {
    fn route(&self, shared: Option<&TopicFilter>) -> Option<&Route> {
        let key = shared?;
        self.groups.iter().find(|(f, _)| f == key).map(|(_, r)| r)
    }

    /// Takes a token for a message of `bytes` through `shared` (None: the session's own
    /// queue), or notes when the next one is due and says no.
    pub(super) fn try_take(
        &mut self,
        shared: Option<&TopicFilter>,
        now: Instant,
        bytes: usize,
    ) -> bool {
        let r = match self.route(shared) {
            Some(Route::Group(b)) => b
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_take(now, bytes),
            _ => match self.own.as_mut() {
                Some((_, b)) => b.try_take(now, bytes),
                None => Ok(()),
            },
        };
        match r {
            Ok(()) => true,
            Err(at) => {
                self.next_at = Some(self.next_at.map_or(at, |t| t.min(at)));
                false
            }
        }
    }

    /// Charges `bytes` of a message taken after [`Egress::try_take`] with 0 bytes.
    pub(super) fn charge_bytes(&mut self, shared: Option<&TopicFilter>, bytes: usize) {
        match self.route(shared) {
            Some(Route::Group(b)) => b
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .charge_bytes(bytes),
            _ => {
                if let Some((_, b)) = self.own.as_mut() {
                    b.charge_bytes(bytes)
                }
            }
        }
    }

    /// Gives back a token taken for a message that was not there after all.
    pub(super) fn refund(&mut self, shared: Option<&TopicFilter>) {
        match self.route(shared) {
            Some(Route::Group(b)) => b.lock().unwrap_or_else(|p| p.into_inner()).refund(),
            _ => {
                if let Some((_, b)) = self.own.as_mut() {
                    b.refund()
                }
            }
        }
    }

    /// Forgets the last "not before" (a drain starts).
    pub(super) fn clear_due(&mut self) {
        self.next_at = None;
    }
}

/// What a delivery costs against `bytes_per_second`: its topic and payload.
pub(super) fn shaped_bytes(d: &Delivery) -> usize {
    d.msg.topic.len() + d.msg.payload.len()
}

impl ClientState {
    /// Resolves the `[[shaping]]` rules for this session when they changed (or first):
    /// its own bucket, its groups' buckets and the overflow policy of its queue. Cheap when
    /// nothing changed (two atomic loads); called by the connection before it drains.
    pub fn refresh_egress(&mut self, shaping: &Shaping, default_policy: QueueFullPolicy) {
        if !shaping.is_active() {
            if self.egress.take().is_some() {
                self.handle.shaped.store(false, Ordering::Relaxed);
                self.handle.outbox().set_policy(default_policy);
            }
            return;
        }
        let generation = shaping.generation();
        if self.egress.as_ref().is_some_and(|e| {
            e.generation == generation
                && e.groups
                    .iter()
                    .map(|(f, _)| f)
                    .eq(self.group_queues().iter().map(|(f, _)| f))
        }) {
            return;
        }
        let now = Instant::now();
        let username = self.n.username.as_deref();
        let old = self.egress.take();
        let own = match shaping.applies(&self.n.client_id, username, None) {
            Some(Applies::Session(i, rule)) => {
                // The same rule as before (a reload, or a new subscription): keep the tokens.
                let bucket = match old.and_then(|e| e.own).filter(|(j, _)| *j == i) {
                    Some((_, mut b)) => {
                        b.set_rule(&rule, now);
                        b
                    }
                    None => TokenBucket::new(&rule, now),
                };
                Some((i, bucket, rule.overflow))
            }
            _ => None,
        };
        let groups: Vec<(TopicFilter, Route)> = self
            .group_queues()
            .iter()
            .map(|(filter, _)| {
                let group = filter.shared().map(|(g, _)| g);
                let route = match shaping.applies(&self.n.client_id, username, group) {
                    Some(Applies::Group(_, bucket)) => Route::Group(bucket),
                    _ => Route::Own,
                };
                (filter.clone(), route)
            })
            .collect();
        let shaped = own.is_some() || groups.iter().any(|(_, r)| matches!(r, Route::Group(_)));
        self.handle.shaped.store(shaped, Ordering::Relaxed);
        let policy = own
            .as_ref()
            .and_then(|(_, _, overflow)| *overflow)
            .unwrap_or(default_policy);
        self.handle.outbox().set_policy(policy);
        self.egress = Some(Box::new(Egress {
            generation,
            own: own.map(|(i, b, _)| (i, b)),
            groups,
            next_at: None,
        }));
    }

    /// When the connection should look at its queues again by itself: the next token of an
    /// empty bucket that stopped the last drain, or the moment a full queue has been full for
    /// `slow_consumer_seconds` (`disconnect_slow_consumer`). None: nothing to wait for.
    /// `default_policy` is `mqtt.queue_full_policy`: without shaping rules and without
    /// `disconnect_slow_consumer` this looks at nothing shared (no lock).
    pub fn egress_due(
        &self,
        default_policy: QueueFullPolicy,
        slow_consumer: Duration,
    ) -> Option<Instant> {
        if self.egress.is_none() && default_policy != QueueFullPolicy::DisconnectSlowConsumer {
            return None;
        }
        let shaped = self.egress.as_ref().and_then(|e| e.next_at);
        let slow = self.slow_consumer_deadline(slow_consumer);
        match (shaped, slow) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets the due time of the last empty bucket (its timer fired): the next drain asks
    /// the buckets again and sets a new one if they are still empty.
    pub fn egress_timer_fired(&mut self) {
        if let Some(e) = self.egress.as_deref_mut() {
            e.clear_due();
        }
    }

    /// When this client counts as a slow consumer: its queue full since a refused message
    /// (`disconnect_slow_consumer` only), plus `slow_consumer`.
    pub fn slow_consumer_deadline(&self, slow_consumer: Duration) -> Option<Instant> {
        let outbox = self.handle.outbox();
        if outbox.policy() != QueueFullPolicy::DisconnectSlowConsumer {
            return None;
        }
        outbox.full_since().map(|t| t + slow_consumer)
    }
}
