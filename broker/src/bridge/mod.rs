//! Bridges (`[[bridges]]`): Sluice connected, as a client, to other MQTT brokers.
//!
//! One task per bridge, started by the server and stopped at shutdown. It holds two MQTT
//! client connections and passes messages between them ([`flows`]):
//! * the **local side** is the persistent session `$bridge/{name}` in this broker, opened over
//!   an in-process pipe and served by the ordinary connection task. So the bridge's queue *is*
//!   a session queue: bounded like any (`mqtt.max_queued_*`), on disk in `durable` mode,
//!   restored after a restart, with its inflight messages resent. The session subscribes to
//!   the `out` filters (No Local, so what the bridge publishes locally does not come back to
//!   it; Retain As Published). It is connected only while the remote is: while the remote is
//!   away, its messages wait in the session's queue exactly as for an offline client.
//!   Reusing the connection task costs an encode and a decode per message on the pipe; in
//!   return the bridge shares every rule of sessions (queue bounds and policies, the store's
//!   journal, inflight resends, takeover) instead of a second copy of them.
//! * the **remote side** is an MQTT 3.1.1 or 5.0 client written with Sluice's codec: a
//!   persistent session (Clean Start 0, Session Expiry "never"), the `in` filters subscribed
//!   with No Local (5.0) or the bridge bit in the 3.1.1 protocol level (0x84, as Mosquitto's
//!   bridges send), TLS through rustls when `tls` is set.
//!
//! A local message is acknowledged to its session only after the remote acknowledged it, so a
//! message the bridge has taken is never lost while the remote is away; one in flight when
//! the connection dropped is sent again (with DUP, same packet id). Reconnects back off
//! exponentially from 1 s to `max_backoff_seconds` (default 60) with jitter.
//!
//! Log lines: `bridge connected`, `bridge disconnected`, `bridge connect failed`,
//! `bridge reconnecting`. Counters: [`crate::stats::BridgeCounters`], read through
//! `Broker::bridges`.

mod connect;
pub mod flows;
mod link;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_codec::{Disconnect, Packet, Protocol, QoS, ReasonCode};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::config::BridgeConfig;
use crate::config::BRIDGE_CLIENT_PREFIX;
use crate::stats::BridgeCounters;
use connect::{connect_local, connect_remote, forget, subscribe, Local};
use flows::{Forwarder, Rule, Terms};
use link::{LinkError, PacketReader, PacketWriter, WRITE_HIGH_WATER};

/// How long connecting (TCP, TLS, CONNECT/CONNACK) to either side may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first reconnect delay; it doubles up to `max_backoff_seconds`.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);
/// The Receive Maximum the bridge gives the remote (5.0): remote messages it takes at once,
/// each waiting for the local broker's acknowledgement.
const REMOTE_RECEIVE_MAXIMUM: u16 = 64;
/// For a 3.1.1 remote (no Receive Maximum): how many local messages in flight to it.
const V311_WINDOW: u16 = 64;
/// In-process pipe buffer between the bridge and its local session.
const PIPE_BYTES: usize = 64 * 1024;
/// How long the goodbye (DISCONNECT to both sides) may take at shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts one task per configured bridge. Each ends when `stop` turns true, and holds `alive`
/// (and gives a clone to its local connection) so that shutdown waits for it.
pub fn start(broker: &Arc<Broker>, stop: &watch::Receiver<bool>, alive: &mpsc::Sender<()>) {
    // Sessions of bridges no longer configured (restored from the store) would keep their
    // subscriptions, and queue for ever: they end now.
    for id in broker.session_ids_with_prefix(BRIDGE_CLIENT_PREFIX) {
        let name = &id[BRIDGE_CLIENT_PREFIX.len()..];
        if !broker.config.bridges.iter().any(|b| b.name == name) {
            tokio::spawn(forget(
                broker.clone(),
                name.to_owned(),
                stop.clone(),
                alive.clone(),
            ));
        }
    }
    for b in &broker.config.bridges {
        let Some(counters) = broker.bridge_counters(&b.name) else {
            continue;
        };
        tokio::spawn(run(
            broker.clone(),
            b.clone(),
            counters,
            stop.clone(),
            alive.clone(),
        ));
    }
}

/// Why a bridge connection ended.
enum Ended {
    /// Shutdown: do not reconnect.
    Stopped,
    /// Either side failed or went away.
    Lost(String),
}

/// One bridge's life: connect, forward until something breaks, back off, again; until `stop`.
async fn run(
    broker: Arc<Broker>,
    b: BridgeConfig,
    counters: Arc<BridgeCounters>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let rules: Arc<[Rule]> = b.topics.iter().map(Rule::new).collect();
    // Subscribed before anything else, so that messages queue while the remote is away.
    let prepared = tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect::prepare(&broker, &b, &rules, &stop, &alive),
    )
    .await;
    match prepared {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(bridge = %b.name, error = %e, "bridge: could not prepare the local session")
        }
        Err(_) => tracing::warn!(bridge = %b.name, "bridge: the local session did not answer"),
    }
    let max_backoff = Duration::from_secs(b.max_backoff_seconds).max(BACKOFF_MIN);
    let mut failures: u32 = 0;
    // 3.1.1: the bridge bit until the remote refuses it (Mosquitto's bridges fall back alike).
    let mut bridge_bit = true;
    while !*stop.borrow() {
        let started = Instant::now();
        let outcome = connect_and_forward(
            &broker,
            &b,
            &rules,
            &counters,
            &mut bridge_bit,
            &mut stop,
            &alive,
        )
        .await;
        counters.connected.store(false, Ordering::Relaxed);
        match outcome {
            Ok(Ended::Stopped) => break,
            Ok(Ended::Lost(why)) => {
                tracing::warn!(bridge = %b.name, address = %b.address, reason = %why, "bridge disconnected");
                // A connection that ends at once (the remote takes it over, or drops it after
                // CONNACK) backs off like a failed one, rather than retrying every second.
                failures = if started.elapsed() < STABLE {
                    failures.saturating_add(1)
                } else {
                    0
                };
            }
            Err(why) => {
                tracing::warn!(bridge = %b.name, address = %b.address, reason = %why, "bridge connect failed");
                failures = failures.saturating_add(1);
            }
        }
        if *stop.borrow() {
            break;
        }
        let delay = backoff(failures, max_backoff);
        tracing::info!(bridge = %b.name, delay_ms = delay.as_millis() as u64, "bridge reconnecting");
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::debug!(bridge = %b.name, "bridge stopped");
    drop(alive);
}

/// The delay before the next attempt: 1 s doubled per failure in a row (the first retry after
/// a lost connection waits 1 s too), capped at `max`, then a random 50..100 % of it so that
/// many bridges do not come back in step.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max);
    let jitter = rand::random_range(0.5..=1.0);
    base.mul_f64(jitter)
}

/// One connection of the bridge: the remote first (nothing is taken from the local queue
/// unless it can go somewhere), then the local session; then forwards until either side goes.
/// Err: could not connect.
async fn connect_and_forward(
    broker: &Arc<Broker>,
    b: &BridgeConfig,
    rules: &Arc<[Rule]>,
    counters: &Arc<BridgeCounters>,
    bridge_bit: &mut bool,
    stop: &mut watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) -> Result<Ended, String> {
    let protocol = if b.is_v5() {
        Protocol::V5
    } else {
        Protocol::V311
    };
    let max_packet = broker.config.mqtt.max_packet_size as usize;
    let connecting = tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect_remote(b, protocol, *bridge_bit, max_packet),
    );
    let connected = tokio::select! {
        biased;
        _ = stop.changed() => return Ok(Ended::Stopped),
        r = connecting => r
            .map_err(|_| format!("not connected within {}s", CONNECT_TIMEOUT.as_secs()))?,
    };
    let (mut remote_r, mut remote_w, connack) = match connected {
        Ok(c) => c,
        Err(LinkError::Refused(code))
            if code == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
                && protocol == Protocol::V311
                && *bridge_bit =>
        {
            *bridge_bit = false;
            return Err(format!(
                "CONNACK {code} to protocol level 0x84 (the bridge bit): next attempts as a \
                 plain 3.1.1 client, without the remote's loop prevention"
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    let remote_window = match protocol {
        Protocol::V5 => connack.properties.receive_maximum.unwrap_or(u16::MAX),
        _ => V311_WINDOW,
    };
    let local_window = remote_window.min(broker.config.mqtt.max_inflight);
    let local = Local {
        name: &b.name,
        clean_start: false,
        expiry: u32::MAX,
        window: local_window,
    };
    let (mut local_r, mut local_w, local_ack) =
        tokio::time::timeout(CONNECT_TIMEOUT, connect_local(broker, &local, stop, alive))
            .await
            .map_err(|_| "the local session did not answer".to_owned())?
            .map_err(|e| format!("local session: {e}"))?;

    // Subscriptions, answered in the loop (messages may come first: a resumed session resends).
    let mut subacks = 0;
    let outgoing: Vec<&Rule> = rules.iter().filter(|r| r.direction.outgoing()).collect();
    if let Some(s) = subscribe(&outgoing, |r| &r.local_filter, true) {
        local_w
            .send(&Packet::Subscribe(s))
            .map_err(|e| e.to_string())?;
        subacks += 1;
    }
    let incoming: Vec<&Rule> = rules.iter().filter(|r| r.direction.incoming()).collect();
    if let Some(s) = subscribe(&incoming, |r| &r.remote_filter, protocol.is_v5()) {
        remote_w
            .send(&Packet::Subscribe(s))
            .map_err(|e| e.to_string())?;
        subacks += 1;
    }

    let terms = Terms {
        remote_protocol: protocol,
        remote_max_qos: connack.properties.maximum_qos.unwrap_or(QoS::ExactlyOnce),
        remote_window: usize::from(remote_window),
        remote_max_packet: connack.properties.maximum_packet_size,
        local_max_packet: max_packet,
        local_max_qos: local_ack.properties.maximum_qos.unwrap_or(QoS::ExactlyOnce),
        local_window: usize::from(local_ack.properties.receive_maximum.unwrap_or(u16::MAX)),
        local_topic_length: broker.config.limits.max_topic_length,
        local_topic_levels: broker.config.limits.max_topic_levels,
    };
    let keep_alive = KeepAlive {
        remote: connack.properties.server_keep_alive.unwrap_or(b.keep_alive),
        // The bridge asks for none locally, but `mqtt.max_keepalive` may impose one.
        local: local_ack.properties.server_keep_alive.unwrap_or(0),
    };
    counters.connected.store(true, Ordering::Relaxed);
    counters.connects.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        bridge = %b.name, address = %b.address, protocol = protocol.level(),
        bridge_bit = protocol == Protocol::V311 && *bridge_bit, session_present = connack.session_present, remote_window, local_window,
        maximum_qos = terms.remote_max_qos as u8, "bridge connected"
    );
    let mut f = Forwarder::new(rules.clone(), terms, counters.clone());
    let mut sides = Sides {
        remote_r: &mut remote_r,
        remote_w: &mut remote_w,
        local_r: &mut local_r,
        local_w: &mut local_w,
    };
    let ended = forward(&mut sides, &mut f, b, keep_alive, subacks, stop).await;
    if let Ended::Stopped = ended {
        // Goodbye to both sides: the remote keeps the session (Clean Start 0, expiry kept), and
        // the local session is parked with whatever is still unacknowledged.
        let bye = Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            let _ = sides.remote_w.send_now(&bye).await;
            let _ = sides.local_w.send_now(&bye).await;
        })
        .await;
        tracing::info!(bridge = %b.name, "bridge stopped (shutdown)");
    }
    Ok(ended)
}

/// Keep Alive in seconds towards each side (0: none).
#[derive(Debug, Clone, Copy)]
struct KeepAlive {
    remote: u16,
    local: u16,
}

/// The two sides of a connected bridge.
struct Sides<'a> {
    remote_r: &'a mut PacketReader,
    remote_w: &'a mut PacketWriter,
    local_r: &'a mut PacketReader,
    local_w: &'a mut PacketWriter,
}

/// The forwarding loop: reads both sides, hands packets to the [`Forwarder`], writes what it
/// produced, pings the remote, until either side goes or `stop`.
async fn forward(
    s: &mut Sides<'_>,
    f: &mut Forwarder,
    b: &BridgeConfig,
    keep_alive: KeepAlive,
    mut subacks: usize,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    // Once both sides answered the SUBSCRIBEs, messages flow both ways: said in the log (tests
    // and operators wait for it).
    let subscribed = |subacks: &mut usize| {
        *subacks = subacks.saturating_sub(1);
        if *subacks == 0 {
            tracing::info!(bridge = %b.name, "bridge ready: subscriptions in place on both sides");
        }
    };
    if subacks == 0 {
        subacks = 1;
        subscribed(&mut subacks);
    }
    let remote_keep_alive = Duration::from_secs(u64::from(keep_alive.remote));
    let local_keep_alive = Duration::from_secs(u64::from(keep_alive.local));
    // Checked once a second when there is a Keep Alive: a PINGREQ once half of it has passed
    // since the last one, and the remote is given up after 1.5 times it without a packet.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticking = !remote_keep_alive.is_zero() || !local_keep_alive.is_zero();
    let mut last_heard = Instant::now();
    let mut last_ping = Instant::now();
    let mut last_local_ping = Instant::now();
    loop {
        if *stop.borrow() {
            return Ended::Stopped;
        }
        for p in f.to_remote.drain(..) {
            if let Err(e) = s.remote_w.send(&p) {
                return Ended::Lost(format!("cannot encode for the remote: {e}"));
            }
        }
        for p in f.to_local.drain(..) {
            if let Err(e) = s.local_w.send(&p) {
                return Ended::Lost(format!("cannot encode for the local session: {e}"));
            }
        }
        // Back-pressure: a side that cannot take more stops the other from being read.
        let read_local = s.remote_w.backlog() < WRITE_HIGH_WATER;
        let read_remote = s.local_w.backlog() < WRITE_HIGH_WATER && !f.in_backlogged();
        let remote_pending = s.remote_w.pending();
        let local_pending = s.local_w.pending();
        // Not biased: a side that always has something to read must not starve the other.
        tokio::select! {
            _ = stop.changed() => return Ended::Stopped,
            r = s.remote_w.write_some(), if remote_pending => {
                if let Err(e) = r {
                    return Ended::Lost(format!("writing to the remote: {e}"));
                }
            }
            r = s.local_w.write_some(), if local_pending => {
                if let Err(e) = r {
                    return Ended::Lost(format!("writing to the local session: {e}"));
                }
            }
            r = s.remote_r.next(), if read_remote => match r {
                Ok(Packet::Disconnect(d)) => {
                    return Ended::Lost(format!("the remote sent DISCONNECT {}", d.reason));
                }
                Ok(p) => {
                    last_heard = Instant::now();
                    match p {
                        Packet::SubAck(a) => {
                            check_suback(b, "remote", &a.reasons);
                            subscribed(&mut subacks);
                        }
                        Packet::PingResp => {}
                        other => f.from_remote(other),
                    }
                }
                Err(e) => return Ended::Lost(format!("remote: {e}")),
            },
            r = s.local_r.next(), if read_local => match r {
                Ok(Packet::Disconnect(d)) => {
                    return Ended::Lost(format!("the local session ended: DISCONNECT {}", d.reason));
                }
                Ok(Packet::SubAck(a)) => {
                    check_suback(b, "local", &a.reasons);
                    subscribed(&mut subacks);
                }
                Ok(p) => f.from_local(p),
                Err(e) => return Ended::Lost(format!("local session: {e}")),
            },
            _ = tick.tick(), if ticking => {
                let now = Instant::now();
                if !remote_keep_alive.is_zero() {
                    if now.duration_since(last_heard) > remote_keep_alive.mul_f32(1.5) {
                        return Ended::Lost(format!(
                            "nothing from the remote for 1.5 x keep_alive ({}s)",
                            remote_keep_alive.as_secs()
                        ));
                    }
                    if now.duration_since(last_ping) >= remote_keep_alive / 2 {
                        last_ping = now;
                        f.to_remote.push(Packet::PingReq);
                    }
                }
                if !local_keep_alive.is_zero()
                    && now.duration_since(last_local_ping) >= local_keep_alive / 2
                {
                    last_local_ping = now;
                    f.to_local.push(Packet::PingReq);
                }
            }
        }
    }
}

/// Logs refused subscriptions (the ACL, or the remote's rules): the bridge runs on with the
/// others.
fn check_suback(b: &BridgeConfig, side: &str, reasons: &[ReasonCode]) {
    for r in reasons.iter().filter(|r| r.0 >= 0x80) {
        tracing::warn!(bridge = %b.name, side, reason = %r, "a bridge subscription was refused");
    }
}

#[cfg(test)]
mod tests;
