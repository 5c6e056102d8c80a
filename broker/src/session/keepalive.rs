//! Keep Alive deadlines of every connection, served by one task ([MQTT-3.1.2-24]).
//!
//! A connection's own timer (a `tokio::time::Sleep`, 112 bytes) sat in every connection's task
//! for its whole life, reset by each packet. Here a connection costs an 8-byte deadline in its
//! session handle, moved forward by each read (one relaxed store), and one entry in a wheel of
//! 250 ms ticks that is looked at only when its tick comes: then the entry moves to the tick
//! of the handle's current deadline, or, if that has passed, the owning connection is woken
//! through the session's `notify` and closes itself (it checks [`KeepAlives::expired`]). A
//! connection that has gone drops its entry when its tick comes (the session's owner is another
//! connection, or none); a tick can be a day away (Keep Alive 65,535 s), so closing connections
//! are counted ([`KeepAlives::unwatch`]) and once they are half the entries, the wheel is swept
//! whole for entries whose connection is gone: memory stays bounded by the live connections. Timeouts are late by at most a tick and the task's scheduling, on top
//! of the 1.5 x Keep Alive the specification allows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::SessionHandle;

/// The wheel's resolution.
const TICK: Duration = Duration::from_millis(250);

/// One watched connection.
#[derive(Debug)]
struct Watch {
    /// Weak: a session that ends is not kept by its entry (only its allocation, until the
    /// entry's tick).
    handle: Weak<SessionHandle>,
    /// The connection the deadline is for (the session's owner while it lasts).
    connection: u64,
}

/// The deadlines (see the module docs). Shared by the broker and its one serving task.
#[derive(Debug)]
pub struct KeepAlives {
    /// Milliseconds in the handles' deadlines count from here.
    epoch: Instant,
    /// Watched connections by the tick of their deadline when they were (re)filed.
    wheel: Mutex<BTreeMap<u64, Vec<Watch>>>,
    /// Wakes the serving task when the wheel stops being empty.
    wake: Notify,
    /// Whether the serving task runs (started by the first watch).
    running: AtomicBool,
    /// Entries in the wheel.
    entries: AtomicUsize,
    /// Connections closed since the last whole sweep (their entries wait for their tick).
    closed: AtomicUsize,
}

/// Closed connections below this never trigger a whole sweep.
const PURGE_MIN: usize = 64;

impl KeepAlives {
    pub fn new() -> Arc<KeepAlives> {
        Arc::new(KeepAlives {
            epoch: Instant::now(),
            wheel: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            running: AtomicBool::new(false),
            entries: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
        })
    }

    /// `at` as the handles store it: milliseconds since `epoch`, at least 1 (0 is "none").
    fn millis(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX).max(1)
    }

    fn tick_of(ms: u64) -> u64 {
        ms / TICK.as_millis() as u64
    }

    fn wheel(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Vec<Watch>>> {
        // Every change is one insert or remove: a poisoned lock is still consistent.
        self.wheel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching `connection`, the owner of `handle`, which must send a packet before
    /// `deadline`. Must be called inside a tokio runtime (the serving task starts with the
    /// first watch).
    pub fn watch(
        self: &Arc<Self>,
        handle: &Arc<SessionHandle>,
        connection: u64,
        deadline: Instant,
    ) {
        let ms = self.millis(deadline);
        handle.keepalive_due.store(ms, Ordering::Relaxed);
        let was_empty = {
            let mut wheel = self.wheel();
            let was_empty = wheel.is_empty();
            wheel.entry(Self::tick_of(ms)).or_default().push(Watch {
                handle: Arc::downgrade(handle),
                connection,
            });
            was_empty
        };
        self.entries.fetch_add(1, Ordering::Relaxed);
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(serve(Arc::downgrade(self)));
        }
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// A watched connection is closing. Its entry stays until its tick (up to a day away);
    /// once closed connections are half the entries, every entry of a connection that no
    /// longer owns its session is removed.
    pub fn unwatch(&self) {
        let closed = self.closed.fetch_add(1, Ordering::Relaxed) + 1;
        if closed >= PURGE_MIN && closed * 2 >= self.entries.load(Ordering::Relaxed) {
            self.purge();
        }
    }

    /// Removes the entries of connections that are gone (see [`KeepAlives::unwatch`]).
    fn purge(&self) {
        let mut wheel = self.wheel();
        let mut removed = 0;
        wheel.retain(|_, watches| {
            watches.retain(|w| {
                let live = w.handle.upgrade().is_some_and(|h| {
                    h.ownership()
                        .owner
                        .as_ref()
                        .is_some_and(|o| o.connection == w.connection)
                });
                removed += usize::from(!live);
                live
            });
            !watches.is_empty()
        });
        self.entries.fetch_sub(removed, Ordering::Relaxed);
        self.closed.store(0, Ordering::Relaxed);
    }

    /// A packet came: the connection owning `handle` now has until `deadline`.
    pub fn extend(&self, handle: &SessionHandle, deadline: Instant) {
        handle
            .keepalive_due
            .store(self.millis(deadline), Ordering::Relaxed);
    }

    /// Whether the deadline of the connection owning `handle` has passed at `now`.
    pub fn expired(&self, handle: &SessionHandle, now: Instant) -> bool {
        let due = handle.keepalive_due.load(Ordering::Relaxed);
        due != 0 && self.millis(now) >= due
    }

    /// Looks at every entry whose tick has come (at `now`): wakes the connections past their
    /// deadline, files the others again under their current deadline, drops the gone ones.
    /// Returns how many connections were woken.
    fn sweep(&self, now: Instant) -> usize {
        let now_ms = self.millis(now);
        let due: Vec<Watch> = {
            let mut wheel = self.wheel();
            let later = wheel.split_off(&(Self::tick_of(now_ms) + 1));
            let due = std::mem::replace(&mut *wheel, later);
            due.into_values().flatten().collect()
        };
        let mut woken = 0;
        let mut refile = Vec::new();
        let mut dropped = 0;
        for w in due {
            let Some(handle) = w.handle.upgrade() else {
                dropped += 1;
                continue;
            };
            let owned = handle
                .ownership()
                .owner
                .as_ref()
                .is_some_and(|o| o.connection == w.connection);
            let ms = handle.keepalive_due.load(Ordering::Relaxed);
            if !owned || ms == 0 {
                dropped += 1;
                continue;
            }
            let tick = if ms <= now_ms {
                handle.notify.notify_one();
                woken += 1;
                // Looked at again next tick, should the connection have read a packet just
                // now (it then carries on), until it has closed.
                Self::tick_of(now_ms) + 1
            } else {
                Self::tick_of(ms)
            };
            refile.push((tick, w));
        }
        self.entries.fetch_sub(dropped, Ordering::Relaxed);
        if !refile.is_empty() {
            let mut wheel = self.wheel();
            for (tick, w) in refile {
                wheel.entry(tick).or_default().push(w);
            }
        }
        woken
    }

    /// How many connections are watched.
    pub fn len(&self) -> usize {
        self.wheel().values().map(Vec::len).sum()
    }

    /// True when no connection is watched.
    pub fn is_empty(&self) -> bool {
        self.wheel().is_empty()
    }
}

/// The serving task: a sweep every tick while something is watched, asleep otherwise. Ends
/// when the broker (the last `Arc<KeepAlives>`) is gone.
async fn serve(keepalives: Weak<KeepAlives>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let idle = {
            let Some(k) = keepalives.upgrade() else {
                return;
            };
            // tokio's clock (the same as std's, but for paused time in tests).
            k.sweep(tokio::time::Instant::now().into_std());
            k.is_empty()
        };
        if idle {
            let Some(k) = keepalives.upgrade() else {
                return;
            };
            // `notify_one` leaves a permit when nobody waits: a watch between the look above
            // and this wait is not missed. The Arc is held while waiting (the broker holds
            // one too; a broker dropped with nothing watched leaves this task asleep).
            if k.is_empty() {
                k.wake.notified().await;
            }
            ticks.reset();
        }
        ticks.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Owner;

    fn owned(connection: u64) -> Arc<SessionHandle> {
        let h = Arc::new(SessionHandle::new("ka".into(), 10, 1 << 20));
        h.ownership().owner = Some(Owner {
            connection,
            control: crate::session::ControlSlot::Listening,
            info: None,
        });
        h
    }

    fn notified(h: &SessionHandle) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        h.notify.poll_notified(&mut cx).is_ready()
    }

    /// The owner is woken once its deadline has passed, not before; a packet in between
    /// moves the deadline [MQTT-3.1.2-24].
    #[tokio::test(start_paused = true)]
    async fn the_owner_is_woken_past_its_deadline_and_a_packet_moves_it() {
        let k = KeepAlives::new();
        let h = owned(1);
        let t0 = Instant::now();
        k.watch(&h, 1, t0 + Duration::from_millis(1500));
        assert_eq!(k.sweep(t0 + Duration::from_millis(1000)), 0);
        assert!(!notified(&h) && !k.expired(&h, t0 + Duration::from_millis(1000)));
        k.extend(&h, t0 + Duration::from_millis(2500));
        assert_eq!(k.sweep(t0 + Duration::from_millis(2000)), 0);
        assert!(!notified(&h));
        assert!(k.expired(&h, t0 + Duration::from_millis(2600)));
        assert_eq!(k.sweep(t0 + Duration::from_millis(2600)), 1);
        assert!(notified(&h));
        // Kept until the connection has gone: another connection owns the session now.
        assert_eq!(k.len(), 1);
        h.ownership().owner.as_mut().unwrap().connection = 2;
        assert_eq!(k.sweep(t0 + Duration::from_millis(3000)), 0);
        assert!(k.is_empty());
    }

    /// Ends of sessions and connections leave no entry behind.
    #[tokio::test(start_paused = true)]
    async fn gone_sessions_and_connections_are_dropped() {
        let k = KeepAlives::new();
        let t0 = Instant::now();
        let gone = owned(1);
        k.watch(&gone, 1, t0 + Duration::from_secs(1));
        drop(gone);
        let parked = owned(2);
        k.watch(&parked, 2, t0 + Duration::from_secs(1));
        parked.ownership().owner = None;
        assert_eq!(k.len(), 2);
        assert_eq!(k.sweep(t0 + Duration::from_secs(2)), 0);
        assert!(k.is_empty());
    }

    /// Connections with a distant deadline (Keep Alive 65,535 s) that close leave no entries
    /// behind for a day: once closed ones are half the wheel, it is swept whole. The ones still
    /// connected stay.
    #[tokio::test(start_paused = true)]
    async fn closed_connections_with_far_deadlines_are_purged() {
        let k = KeepAlives::new();
        let far = Instant::now() + Duration::from_secs(65_535 * 3 / 2);
        let live: Vec<_> = (0..10).map(|i| owned(1_000 + i)).collect();
        for (i, h) in live.iter().enumerate() {
            k.watch(h, 1_000 + i as u64, far);
        }
        let mut closed = Vec::new();
        for i in 0..PURGE_MIN as u64 {
            let h = owned(i);
            k.watch(&h, i, far);
            h.ownership().owner = None; // the connection parked its session and ended
            k.unwatch();
            closed.push(h);
        }
        assert_eq!(k.len(), live.len(), "only the connected ones are left");
        // Entries that went at their tick are counted off too (none left to purge later).
        assert_eq!(k.entries.load(Ordering::Relaxed), live.len());
    }

    /// The serving task wakes a silent connection's owner by itself (virtual time).
    #[tokio::test(start_paused = true)]
    async fn the_task_wakes_a_silent_owner() {
        let k = KeepAlives::new();
        let h = owned(7);
        let now = || tokio::time::Instant::now().into_std();
        k.watch(&h, 7, now() + Duration::from_millis(1500));
        tokio::time::timeout(Duration::from_secs(3), h.notify.notified())
            .await
            .expect("woken within a tick of the deadline");
        assert!(k.expired(&h, now()));
    }
}
