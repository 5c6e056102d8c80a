//! The consumers: one group per concern (inventory, SMS, red packets), each member an MQTT 5
//! client with a persistent session that takes orders at its own pace and acknowledges each
//! once it has handled it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, watch};

use crate::orders::{self, Orders};

/// One consumer group as configured.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub name: &'static str,
    /// `orders/#`, or `$share/{name}/orders/#` for a worker group.
    pub filter: String,
    pub members: usize,
    /// Orders per second one member handles (None: as fast as it can).
    pub rate: Option<u32>,
    /// MQTT 5 Receive Maximum of each member (None: the broker's default window).
    pub receive_maximum: Option<u16>,
}

impl GroupSpec {
    /// The group's total rate, if its members pace themselves.
    pub fn total_rate(&self) -> Option<u64> {
        self.rate.map(|r| u64::from(r) * self.members as u64)
    }
}

/// What a group has seen: per order how often it arrived (saturating), and the totals.
#[derive(Debug)]
pub struct Tally {
    pub spec: GroupSpec,
    seen: Vec<AtomicU8>,
    /// Deliveries of this run's orders, duplicates included.
    received: AtomicU64,
    /// Distinct orders handled.
    distinct: AtomicU64,
    /// Messages that were not this run's orders (another run on the same broker, or junk).
    foreign: AtomicU64,
    /// Seconds from the start of the burst until the group had every acknowledged order (set
    /// by the caller): its drain time.
    pub done_at: Mutex<Option<f64>>,
    /// Members whose subscription is in place.
    pub subscribed: AtomicUsize,
    /// A member's SUBSCRIBE was refused: the run cannot work.
    pub refused: AtomicBool,
}

impl Tally {
    pub fn new(spec: GroupSpec, orders: u32) -> Tally {
        Tally {
            spec,
            seen: (0..orders).map(|_| AtomicU8::new(0)).collect(),
            received: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            done_at: Mutex::new(None),
            subscribed: AtomicUsize::new(0),
            refused: AtomicBool::new(false),
        }
    }

    fn record(&self, seq: u32) {
        let Some(count) = self.seen.get(seq as usize) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        let before = count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_add(1))
            })
            .unwrap_or(u8::MAX);
        if before == 0 {
            self.distinct.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether order `seq` arrived at least once.
    pub fn has(&self, seq: u32) -> bool {
        self.seen
            .get(seq as usize)
            .is_some_and(|c| c.load(Ordering::Relaxed) > 0)
    }

    /// The most copies of one order the group got (255 means "255 or more").
    pub fn max_copies(&self) -> u8 {
        self.seen
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::Relaxed)
    }

    pub fn foreign(&self) -> u64 {
        self.foreign.load(Ordering::Relaxed)
    }

    /// Acknowledged orders this group has not had (a full scan: for the end).
    pub fn missing(&self, orders: &Orders) -> u64 {
        (0..orders.count)
            .filter(|&s| orders.is_acked(s) && !self.has(s))
            .count() as u64
    }
}

/// Runs one member until `stop`: connects (and reconnects after a lost connection, resuming
/// its persistent session), subscribes when the broker has no session for it, hands each order
/// to a worker that paces itself at the member's rate and acknowledges once it is handled.
pub async fn member(
    mut opts: MqttOptions,
    tally: Arc<Tally>,
    run: Arc<str>,
    mut stop: watch::Receiver<bool>,
) {
    // At most Receive Maximum unacknowledged orders come at once (plus the ones resent after a
    // reconnect); the channel to the worker holds them, the event loop waits when it is full.
    let window = usize::from(tally.spec.receive_maximum.unwrap_or(256));
    opts.set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(opts, 2 * window + 16);
    let (to_worker, from_loop) = mpsc::channel::<(u64, Publish)>(2 * window + 16);
    // Connection number: an acknowledgement is only sent on the connection its PUBLISH came
    // on. After a reconnect the broker sends the unacknowledged ones again (with DUP), and
    // those are acknowledged then. (One already queued in the client when the connection
    // dropped still goes out on the next one, with the packet id the broker resends that
    // order under.)
    let connection = Arc::new(AtomicU64::new(0));
    let worker = tokio::spawn(work(
        from_loop,
        client.clone(),
        tally.clone(),
        run,
        connection.clone(),
    ));
    let mut subscribed_once = false;
    let mut last_error: Option<Instant> = None;
    loop {
        let event = tokio::select! {
            e = events.poll() => e,
            _ = stop.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connection.fetch_add(1, Ordering::Relaxed);
                if !ack.session_present {
                    // A new session (first connect, or the broker lost it): subscribe. The
                    // request channel has room: nothing else is queued before the CONNACK.
                    if client
                        .try_subscribe(tally.spec.filter.clone(), QoS::AtLeastOnce)
                        .is_err()
                    {
                        eprintln!("{}: could not queue SUBSCRIBE", tally.spec.name);
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let ok = ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                if !ok {
                    eprintln!(
                        "{}: SUBSCRIBE {} refused: {:?}",
                        tally.spec.name, tally.spec.filter, ack.return_codes
                    );
                    tally.refused.store(true, Ordering::Relaxed);
                } else if !subscribed_once {
                    subscribed_once = true;
                    tally.subscribed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let n = connection.load(Ordering::Relaxed);
                if to_worker.send((n, p)).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    eprintln!("{}: connection lost ({e}); reconnecting", tally.spec.name);
                }
                last_error = Some(Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    worker.abort();
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(e) = events.poll().await {
            if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

/// The member's worker: handles one order after the other, each taking 1/`rate` seconds (an
/// SMS gateway call, say), then acknowledges it. The pace follows a schedule: an order that
/// was already waiting starts when the previous one was due to end, so a timer that fires late
/// on a busy machine costs nothing in the long run; time spent waiting for orders is not made
/// up later, so the member never goes above its rate.
async fn work(
    mut from_loop: mpsc::Receiver<(u64, Publish)>,
    client: AsyncClient,
    tally: Arc<Tally>,
    run: Arc<str>,
    connection: Arc<AtomicU64>,
) {
    let period = tally
        .spec
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / f64::from(r.max(1))));
    let mut next = tokio::time::Instant::now();
    loop {
        let (n, p) = match from_loop.try_recv() {
            Ok(m) => m,
            Err(mpsc::error::TryRecvError::Empty) => {
                let Some(m) = from_loop.recv().await else {
                    return;
                };
                // Idle until now: this order starts now.
                next = next.max(tokio::time::Instant::now());
                m
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
        };
        if let Some(period) = period {
            next += period;
            tokio::time::sleep_until(next).await;
        }
        match orders::parse(&p.payload) {
            Some((r, seq)) if r == &*run => tally.record(seq),
            _ => tally.record(u32::MAX),
        }
        if n == connection.load(Ordering::Relaxed) && client.ack(&p).await.is_err() {
            return;
        }
    }
}

/// Ends a persistent session at the end of a run: a CONNECT with Clean Start 1 and Session
/// Expiry 0 discards it [MQTT-3.1.2-4], and the DISCONNECT ends the new one. Bounded.
pub async fn discard_session(mut opts: MqttOptions) {
    opts.set_clean_start(true);
    opts.set_session_expiry_interval(None);
    let (client, mut events) = AsyncClient::new(opts, 4);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}
