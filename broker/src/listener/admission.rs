//! Admission control at accept time: connections per listener (`[[listeners]]
//! max_connections`), new connections per second per listener (`limits.max_connection_rate`)
//! and per source address (`limits.max_connection_rate_per_address`).
//!
//! A connection over a limit is not dropped blindly: it is still served far enough to read its
//! CONNECT and answer CONNACK 0x89 Server Busy (too many connections) or 0x9F Connection Rate
//! Exceeded (3.1.1: return code 3), so a well-behaved client learns why. The global hard cap in
//! `listener/mod.rs` bounds how many of those refusals can be in progress.

use crate::connection::Refusal;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_codec::ReasonCode;

/// A token bucket refilled at `rate` per second, holding at most one second's worth.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate,
            last: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, rate: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Most source addresses remembered for the per-address rate; past it the table is cleared
/// (each entry is ~50 bytes; the state is only a recent-rate estimate).
const MAX_ADDRESSES: usize = 65_536;

/// Per-address connection rate, shared by all listeners.
#[derive(Debug)]
pub struct AddressRates {
    /// Connections per second per address (0: unlimited).
    rate: u32,
    /// Short lock per accept; never across an await.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl AddressRates {
    pub fn new(rate: u32) -> AddressRates {
        AddressRates {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let rate = f64::from(self.rate);
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.clear();
        }
        map.entry(ip)
            .or_insert_with(|| Bucket::new(rate, now))
            .take(rate, now)
    }
}

/// The admission state of one listener.
#[derive(Debug)]
pub struct ListenerGate {
    /// Connections of this listener now open.
    open: Arc<AtomicUsize>,
    /// `[[listeners]] max_connections` (None: only the global limit).
    max: Option<usize>,
    /// `limits.max_connection_rate` (0: unlimited).
    rate: u32,
    bucket: Mutex<Option<Bucket>>,
    per_address: Arc<AddressRates>,
}

/// Held by an admitted (or refusing) connection; gives its slot back when dropped.
#[derive(Debug)]
pub struct Slot {
    open: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ListenerGate {
    pub fn new(max: Option<usize>, rate: u32, per_address: Arc<AddressRates>) -> ListenerGate {
        ListenerGate {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            rate,
            bucket: Mutex::new(None),
            per_address,
        }
    }

    /// Decides about a connection from `ip` accepted at `now`. The slot counts it until
    /// dropped, refused or not.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> (Slot, Option<Refusal>) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Slot {
            open: self.open.clone(),
        };
        if self.max.is_some_and(|max| open > max) {
            return (
                slot,
                Some((
                    ReasonCode::SERVER_BUSY,
                    "too many connections on this listener (listeners.max_connections)",
                )),
            );
        }
        if self.rate > 0 {
            let rate = f64::from(self.rate);
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let ok = b
                .get_or_insert_with(|| Bucket::new(rate, now))
                .take(rate, now);
            if !ok {
                return (
                    slot,
                    Some((
                        ReasonCode::CONNECTION_RATE_EXCEEDED,
                        "connection rate over limits.max_connection_rate",
                    )),
                );
            }
        }
        if !self.per_address.admit(ip, now) {
            return (
                slot,
                Some((
                    ReasonCode::CONNECTION_RATE_EXCEEDED,
                    "connection rate from this address over limits.max_connection_rate_per_address",
                )),
            );
        }
        (slot, None)
    }

    /// The count of this listener's open connections, shared (its metrics read it).
    pub fn open_counter(&self) -> Arc<AtomicUsize> {
        self.open.clone()
    }

    /// Connections of this listener now open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn listener_maximum_counts_open_slots() {
        let g = ListenerGate::new(Some(2), 0, Arc::new(AddressRates::new(0)));
        let now = Instant::now();
        let a = g.admit(ip(1), now);
        let b = g.admit(ip(1), now);
        assert!(a.1.is_none() && b.1.is_none());
        let c = g.admit(ip(1), now);
        assert_eq!(c.1.map(|r| r.0), Some(ReasonCode::SERVER_BUSY));
        drop(c);
        drop(a);
        let d = g.admit(ip(1), now);
        assert!(d.1.is_none(), "a freed slot is usable again");
        assert_eq!(g.open(), 2, "b and d");
        drop((b, d));
        assert_eq!(g.open(), 0);
    }

    #[test]
    fn rates_per_listener_and_per_address() {
        let now = Instant::now();
        let g = ListenerGate::new(None, 3, Arc::new(AddressRates::new(0)));
        let refused = (0..5).filter(|_| g.admit(ip(1), now).1.is_some()).count();
        assert_eq!(refused, 2, "3 per second pass");
        assert!(
            g.admit(ip(1), now + Duration::from_secs(1)).1.is_none(),
            "refilled"
        );

        let g = ListenerGate::new(None, 0, Arc::new(AddressRates::new(2)));
        assert!(g.admit(ip(1), now).1.is_none() && g.admit(ip(1), now).1.is_none());
        assert_eq!(
            g.admit(ip(1), now).1.map(|r| r.0),
            Some(ReasonCode::CONNECTION_RATE_EXCEEDED)
        );
        assert!(
            g.admit(ip(2), now).1.is_none(),
            "other addresses are not affected"
        );
    }
}
