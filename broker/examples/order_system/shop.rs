//! The shop: the main flow of an order ends by publishing one QoS 1 message and moves on. Here
//! all orders come at once (the peak), as fast as the broker acknowledges them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::watch;

use crate::orders::{self, Orders};

/// Requests the shop's client may have queued for its event loop (the client's bound): the
/// broker's Receive Maximum (256 by default) limits what is in flight on the wire.
const REQUEST_CHANNEL: usize = 512;

/// Publishes every order of `orders` and follows the PUBACKs until each has its answer, or
/// `stop` is set. Returns when the burst was answered (the absorb time is measured by the
/// caller). The session is persistent, so after a lost connection rumqttc sends the
/// unacknowledged PUBLISHes again and nothing the shop handed over is dropped on its side.
pub async fn run(mut opts: MqttOptions, orders: Arc<Orders>, mut stop: watch::Receiver<bool>) {
    opts.set_request_channel_capacity(REQUEST_CHANNEL);
    let (client, mut events) = AsyncClient::new(opts, REQUEST_CHANNEL);
    // Sequence numbers in the order they were handed to the client: rumqttc gives each its
    // packet id when it goes out (Outgoing::Publish), in that order. Bounded by the request
    // channel: the publisher waits while the channel is full.
    let handed: Arc<Mutex<VecDeque<u32>>> = Arc::default();
    let publisher = {
        let (client, handed, orders) = (client.clone(), handed.clone(), orders.clone());
        tokio::spawn(async move {
            for seq in 0..orders.count {
                let placed = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let payload = orders::payload(&orders.run, seq, placed);
                handed.lock().unwrap().push_back(seq);
                let sent = client
                    .publish(orders::topic(seq), QoS::AtLeastOnce, false, payload)
                    .await;
                if sent.is_err() {
                    return; // the event loop is gone: the shop is stopping
                }
            }
        })
    };
    // Packet id -> sequence number of the PUBLISHes in flight.
    let mut inflight: HashMap<u16, u32> = HashMap::new();
    let mut last_error: Option<Instant> = None;
    while !orders.all_answered() && !*stop.borrow() {
        let event = tokio::select! {
            e = events.poll() => e,
            _ = stop.changed() => break,
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                // A packet id in flight going out again is a resend after a reconnect.
                if let std::collections::hash_map::Entry::Vacant(e) = inflight.entry(pkid) {
                    if let Some(seq) = handed.lock().unwrap().pop_front() {
                        e.insert(seq);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(seq) = inflight.remove(&ack.pkid) {
                    match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                            orders.ack(seq)
                        }
                        _ => orders.refuse(),
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    eprintln!("shop: connection lost ({e}); reconnecting");
                    last_error = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    publisher.abort();
    let _ = client.try_disconnect();
    // Let the DISCONNECT go out (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(e) = events.poll().await {
            if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}
