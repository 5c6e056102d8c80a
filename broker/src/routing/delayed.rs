//! Delayed publish: a PUBLISH to `$delayed/{seconds}/{topic}` waits here and is routed to
//! `{topic}` once its time has come (the topic grammar is [`crate::topic::delayed`]'s).
//!
//! One timer for all of them: [`DelayedQueue`] keeps the waiting messages in a `BTreeMap` keyed
//! by (due time, message id) and one task ([`DelayedPublishes::wait_due`], driven by
//! `Broker::start_delayed_timer`) sleeps until the earliest is due, never a task per message.
//! The queue is sans-IO (time is an argument) and unit-tested below.
//!
//! # Memory per waiting message
//! With a store (`durable`, `relaxed`) the message is logged when it is accepted and waits on
//! disk: memory holds only its map entry, (due `Instant`, id) → `Option<Arc<Message>>` = 32
//! bytes (`memory_per_waiting_message` below); with the B-tree's partly filled nodes, measured
//! with a counting allocator over 1,000,000 entries: 63 bytes each when due times rise (one
//! delay for all), 51 when they are random. So the default bound of 1,000,000 waiting messages
//! costs at most ~63 MB. The message is read back when due. In `memory` mode the
//! message itself stays in memory too (topic + payload + ~150 bytes). `limits.max_delayed_messages`
//! bounds the count.
//!
//! # Durability
//! Accepting logs the message, then `Store::delayed_stored(id, due)` (due in Unix ms), before the
//! PUBACK/PUBREC goes (it waits for the store's ticket like any acknowledgement). Releasing
//! routes the message (its queue entries are logged by the router) and then logs
//! `Store::delayed_done`: a crash between the two delivers it again after the restart (at least
//! once), never loses it. Start-up puts every `Delayed` the log still has back in the queue;
//! what fell due while the broker was down is routed at once (late by at most the downtime).
//!
//! # Message Expiry
//! The Message Expiry Interval counts from when the broker received the PUBLISH, not from the
//! delivery: it is "the lifetime of the Application Message", and what is sent on is "the
//! received value minus the time that the Application Message has been waiting in the Server"
//! [MQTT-3.3.2-6] — the delay is time spent waiting in the server. A message whose expiry runs
//! out before its delay is dropped when due [MQTT-3.3.2-5].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::locks::lock;
use crate::message::Message;
use crate::persist::Pending;

use super::Router;

/// How many due messages one release takes at once (then the lock is taken again).
const RELEASE_BATCH: usize = 1024;

/// The waiting messages in due order: a min-queue by (due time, message id). Ids rise, so
/// messages due at the same instant go in the order they were published.
#[derive(Debug, Default)]
pub struct DelayedQueue {
    /// None: the message waits in the store's log (read back when due).
    by_due: BTreeMap<(Instant, u64), Option<Arc<Message>>>,
}

impl DelayedQueue {
    /// Adds message `id` due at `due` (`msg`: None when it waits on disk). Returns whether it
    /// is now the earliest (the timer must be woken to sleep less).
    pub fn insert(&mut self, due: Instant, id: u64, msg: Option<Arc<Message>>) -> bool {
        self.by_due.insert((due, id), msg);
        self.next_due() == Some(due)
    }

    /// When the earliest waiting message is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.by_due.first_key_value().map(|((due, _), _)| *due)
    }

    /// Takes up to `max` messages due at `now` or before, earliest first.
    pub fn take_due(&mut self, now: Instant, max: usize) -> Vec<(u64, Option<Arc<Message>>)> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.by_due.first_entry() {
                Some(e) if e.key().0 <= now => {
                    let ((_, id), msg) = e.remove_entry();
                    out.push((id, msg));
                }
                _ => break,
            }
        }
        out
    }

    /// Number of waiting messages.
    pub fn len(&self) -> usize {
        self.by_due.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_due.is_empty()
    }
}

/// `limits.max_delayed_messages` messages wait already: the new one is refused (0x97).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayedFull;

/// The broker's delayed messages and the timer task's wake-up (shared with that task, which
/// must not keep the router alive: see [`DelayedPublishes::close`]).
#[derive(Debug)]
pub struct DelayedPublishes {
    /// Short lock: an insert, or taking a batch of due messages; never held across an await.
    queue: Mutex<DelayedQueue>,
    /// Wakes the timer when an earlier message arrives or the router goes away (a stored
    /// permit: a wake-up between the timer's look at the queue and its sleep is not lost).
    wake: Notify,
    /// Set when the router is dropped: the timer task ends.
    closed: std::sync::atomic::AtomicBool,
    /// `limits.max_delayed_messages`.
    max: usize,
}

impl DelayedPublishes {
    pub fn new(max: usize) -> DelayedPublishes {
        DelayedPublishes {
            queue: Mutex::new(DelayedQueue::default()),
            wake: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            max,
        }
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    /// Puts back a message the store recovered (even over the bound: it was accepted).
    pub fn restore(&self, due: Instant, id: u64) {
        if lock(&self.queue).insert(due, id, None) {
            self.wake.notify_one();
        }
    }

    /// Ends the timer task.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Waits until a message is due; false once [`DelayedPublishes::close`]d.
    pub async fn wait_due(&self) -> bool {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return false;
            }
            let next = lock(&self.queue).next_due();
            match next {
                Some(t) if t <= Instant::now() => return true,
                Some(t) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(t.into()) => return true,
                        () = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

impl Router {
    /// Accepts `msg` (its topic is the target, ACL already checked) to be routed after `delay`:
    /// logged first with a store (with `received`, the publisher's QoS 2 record), then queued
    /// for the timer. Refused when `limits.max_delayed_messages` wait already.
    pub fn publish_delayed(
        &self,
        msg: Arc<Message>,
        delay: Duration,
        received: Option<Pending>,
        now: Instant,
    ) -> Result<(), DelayedFull> {
        let due = now + delay;
        let mut queue = lock(&self.delayed.queue);
        if queue.len() >= self.delayed.max {
            return Err(DelayedFull);
        }
        let kept = if self.store.is_enabled() {
            self.log_message(&msg);
            let due_ms = crate::persist::now_unix_ms()
                .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            self.store.delayed_stored(msg.id, due_ms);
            if let Some(rec) = received {
                self.store.log_pending(rec);
            }
            // To the writer now, under the queue's lock: the timer's `DelayedDone` comes after.
            self.store.flush_batch();
            None
        } else {
            Some(msg.clone())
        };
        if queue.insert(due, msg.id, kept) {
            self.delayed.wake.notify_one();
        }
        Ok(())
    }

    /// Routes the delayed messages due at `now` (a batch at a time, until none is due); returns
    /// how many were routed. Messages waiting on disk are read back first.
    pub async fn release_due(&self, now: Instant) -> usize {
        let mut routed = 0;
        loop {
            let due = lock(&self.delayed.queue).take_due(now, RELEASE_BATCH);
            if due.is_empty() {
                return routed;
            }
            let on_disk: Vec<u64> = due
                .iter()
                .filter(|(_, m)| m.is_none())
                .map(|(id, _)| *id)
                .collect();
            let mut loaded = if on_disk.is_empty() {
                Vec::new()
            } else {
                self.store.load(on_disk).await
            }
            .into_iter();
            for (id, msg) in due {
                let msg = msg.or_else(|| loaded.next().flatten());
                match msg {
                    None => {
                        tracing::error!(
                            id,
                            "delayed message cannot be read back from the log: dropped"
                        );
                    }
                    Some(m) if m.is_expired(now) => {
                        tracing::debug!(id, topic = %m.topic, "delayed message expired while waiting [MQTT-3.3.2-5]: dropped");
                        self.stats.add(crate::stats::Counter::DroppedExpired, 1);
                    }
                    Some(m) => {
                        self.publish(m);
                        routed += 1;
                    }
                }
                if self.store.is_enabled() {
                    self.store.delayed_done(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_codec::{QoS, TopicName};

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message::new(
            TopicName::try_from(topic).unwrap(),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
            Default::default(),
            "c".into(),
            Instant::now(),
        ))
    }

    #[test]
    fn due_messages_come_out_in_due_order_and_not_before() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q = DelayedQueue::default();
        assert_eq!(q.next_due(), None);
        assert!(q.insert(t0 + 3 * s, 30, None), "the first is the earliest");
        assert!(
            q.insert(t0 + s, 10, Some(msg("a"))),
            "earlier: wake the timer"
        );
        assert!(!q.insert(t0 + 2 * s, 20, None), "later than the earliest");
        // Same due time: publish (id) order.
        assert!(!q.insert(t0 + 2 * s, 21, None));
        assert_eq!(q.next_due(), Some(t0 + s));
        assert!(q.take_due(t0, 10).is_empty(), "nothing before its time");
        assert!(q.take_due(t0 + s - Duration::from_millis(1), 10).is_empty());
        let ids = |v: Vec<(u64, Option<Arc<Message>>)>| {
            v.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
        };
        assert_eq!(ids(q.take_due(t0 + s, 10)), vec![10]);
        assert_eq!(
            ids(q.take_due(t0 + 5 * s, 2)),
            vec![20, 21],
            "at most the batch"
        );
        assert_eq!(q.len(), 1);
        assert_eq!(ids(q.take_due(t0 + 5 * s, 2)), vec![30]);
        assert!(q.is_empty());
    }

    #[test]
    fn memory_per_waiting_message() {
        // The bookkeeping of a message waiting on disk: one map entry (see the module docs).
        let entry = std::mem::size_of::<((Instant, u64), Option<Arc<Message>>)>();
        assert_eq!(entry, 32);
    }

    #[tokio::test]
    async fn the_timer_wakes_for_an_earlier_message_and_stops_when_closed() {
        let d = Arc::new(DelayedPublishes::new(10));
        let now = Instant::now();
        d.restore(now + Duration::from_secs(3600), 1);
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.wait_due().await }
        });
        // An earlier message wakes it up; it is due at once.
        d.restore(now, 2);
        assert!(tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .unwrap());
        assert_eq!(lock(&d.queue).take_due(Instant::now(), 10).len(), 1);
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.wait_due().await }
        });
        d.close();
        assert!(!tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("stopped")
            .unwrap());
    }
}
