//! The per-client task: owns the socket and, while connected, the client's session.
//!
//! One `select!` loop moves bytes between the socket and [`ClientState`]: it reads many packets
//! per syscall, drains the session's outbox when woken, writes everything pending with one
//! write, and watches the keepalive deadline, takeover requests and shutdown. Reading pauses
//! while the write buffer is above its high-water mark, so a client that does not read cannot
//! make the broker buffer without bound.
//!
//! `handshake` holds what runs once before this loop: CONNECT, credentials, enhanced
//! authentication, CONNACK or refusal. `waits` holds what the loop waits on (buffers, the
//! busy-only state, the events), `io` the socket helpers (read, write, final write, linger).

mod handshake;
mod io;
pub mod ratelimit;
mod waits;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use sluice_codec::{Decoder, Packet, ReasonCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use crate::broker::Broker;
use crate::connection::ratelimit::RateLimiter;
use crate::persist::BACKLOG_HIGH_WATER;
use crate::protocol::connect::redirect_code;
use crate::protocol::{ClientState, Close};
use crate::session::Control;
use crate::stats::{Counter, DrainTally};
use handshake::{establish, Established};
use io::{linger, poll_read_more, poll_write_or_flush};
use waits::{Event, Waits};

/// Stop reading and draining once this much is waiting to be written.
const HIGH_WATER: usize = 64 * 1024;
/// Initial read buffer; it grows for large packets and is shrunk back afterwards.
const READ_BUF: usize = 256;
/// The read buffer of a connection whose reads fill it (a busy publisher): more packets per
/// read, so fewer turns of the loop and, in durable mode, fewer tickets. Back to `READ_BUF`
/// once a read is small again.
const READ_BUF_BUSY: usize = 4096;
/// How often a connection paused by the store's backlog looks again.
const STORE_BUSY_POLL: Duration = Duration::from_millis(5);
/// How long the final flush (DISCONNECT, acks) may take before the socket is dropped.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// After the server closes a connection for a reason, how long it keeps reading (and
/// discarding) so that a client still writing reads the DISCONNECT or CONNACK instead of a reset.
const LINGER: Duration = Duration::from_secs(1);

/// Why admission control refuses a new connection: the CONNACK reason and a log line.
pub type Refusal = (ReasonCode, &'static str);

/// What the transport knows about a connection before MQTT starts.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// With `tls.use_identity_as_username`: the client certificate's identity, which replaces
    /// the CONNECT username (and skips the password check).
    pub tls_identity: Option<String>,
    /// The stream buffers writes (TLS, WebSockets) and must be flushed once the write buffer
    /// is handed over; plain TCP writes straight to the socket.
    pub flush: bool,
    /// Set when admission control refused the connection: its CONNECT is answered with this
    /// reason and it is closed (admission.rs).
    pub refuse: Option<Refusal>,
    /// The listener it came through (index in `listeners`), for the admin API.
    pub listener: usize,
    /// A bridge's in-process connection to its local session (`crate::bridge`): its CONNECT
    /// is trusted (no password check) and may use a `$bridge/` client identifier, which
    /// network clients may not.
    pub bridge: bool,
}

impl ConnInfo {
    /// A plain TCP connection.
    pub fn plain(peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            peer,
            tls_identity: None,
            flush: false,
            refuse: None,
            listener: 0,
            bridge: false,
        }
    }

    /// A bridge's in-process connection to its local session.
    pub fn bridge() -> ConnInfo {
        ConnInfo {
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_identity: None,
            flush: true,
            refuse: None,
            bridge: true,
            listener: crate::session::ConnectionInfo::BRIDGE,
        }
    }
}

/// Serves one client connection until it ends.
///
/// Not an `async fn` itself: an async function keeps its arguments in its future for its whole
/// life, next to the locals they are moved into, so the stream and the `ConnInfo` would be
/// paid for twice by every idle connection. The stream is split here and the `ConnInfo`
/// boxed (dropped once the connection is established).
pub fn serve<S>(
    stream: S,
    info: ConnInfo,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    serve_with(stream, info, broker, shutdown, ())
}

/// [`serve`], holding `guard` until the connection has ended. A task that awaited [`serve`]
/// and then dropped its own guard would hold the serve future twice (moved from the task's
/// captures into the await).
pub fn serve_with<S, G>(
    stream: S,
    info: ConnInfo,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    guard: G,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    G: Send,
{
    run(stream, Box::new(info), broker, shutdown, guard)
}

/// [`serve_with`], with the `ConnInfo` boxed.
///
/// The stream is not split: the main loop polls reading, writing and every other source by
/// hand in one place (`next_event`), so one `&mut` suffices, and there is no shared half (an
/// `Arc` and a lock per read and write) per connection.
///
/// A plain fn returning an `async move` block rather than an `async fn`: an async fn's
/// future keeps its arguments twice (as captured and as moved into its locals).
#[allow(clippy::manual_async_fn)]
fn run<S, G>(
    mut stream: S,
    mut info: Box<ConnInfo>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    guard: G,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    G: Send,
{
    async move {
        broker.stats.connections.fetch_add(1, Ordering::Relaxed);
        // Made before CONNECT, with the read buffer and the decoder the handshake uses: a local
        // moved into it later would keep its own slot in the task's future.
        let mut w = Waits {
            rbuf: BytesMut::with_capacity(READ_BUF),
            decoder: Decoder::new(broker.config.mqtt.max_packet_size as usize),
            undecoded: false,
            unflushed: false,
            busy: None,
        };

        let Some(Established {
            mut state,
            control,
            protocol,
            keep_alive,
            now,
        }) = Box::pin(establish(
            &mut info,
            &broker,
            &mut stream,
            &mut w.rbuf,
            &mut w.decoder,
        ))
        .await
        else {
            // Refused (the CONNACK is written and the write side shut) or nothing came: either
            // way the server ends it. Reading on for a moment lets a client that sent more after
            // its CONNECT read the refusal rather than a reset.
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, stream.shutdown()).await;
            done(&broker);
            return Box::pin(linger(&mut stream)).await;
        };
        broker
            .stats
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        broker
            .stats
            .clients_connected
            .fetch_add(1, Ordering::Relaxed);
        let policy = broker.config.mqtt.queue_full_policy;
        state.refresh_egress(&broker.router.shaping, policy);
        let mut pending = drain(&mut state, &broker, now);
        // Only whether writes need a flush is needed from here on.
        let flush = info.flush;
        drop(info);

        // Keep Alive: one deadline on the session handle, watched by the broker's one task
        // (session/keepalive.rs), which wakes this task through `notify` once it has passed.
        if let Some(k) = keepalive_limit(keep_alive) {
            broker
                .keepalives
                .watch(&state.handle, control.connection, now + k);
        }
        let mut takeover_reply = None;
        // Boxed and only when configured: most connections never need it.
        let mut limiter =
            Some(Box::new(RateLimiter::new(&broker.config.limits, now))).filter(|l| l.is_active());
        // Bytes read with the CONNECT (or the AUTH exchange) that are not decoded yet: a client
        // need not wait for CONNACK before sending more packets (3.1.4), and packets already read
        // are handled now, not when the next bytes happen to arrive.
        w.undecoded = !w.rbuf.is_empty();
        if !w.undecoded {
            // Nothing read yet: an idle connection holds no read buffer (poll_read_more).
            w.rbuf = BytesMut::new();
        }

        let close: Close = loop {
            if pending && state.write_buf.len() < HIGH_WATER / 2 {
                state.refresh_egress(&broker.router.shaping, policy);
                pending = drain(&mut state, &broker, Instant::now());
            }
            // Shaping's next token, or a full queue's slow-consumer deadline: wake then.
            match state.egress_due(policy, slow_consumer(&broker)) {
                Some(at) => {
                    let at = tokio::time::Instant::from(at);
                    let b = w.busy();
                    match b.egress.as_mut() {
                        Some(t) if t.deadline() == at => {}
                        Some(t) => t.as_mut().reset(at),
                        None => b.egress = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                None => {
                    if let Some(b) = w.busy.as_deref_mut() {
                        b.egress = None;
                    }
                }
            }
            if pending && w.busy.as_ref().is_none_or(|b| b.loading.is_none()) {
                if let Some(ids) = state.cold_to_load() {
                    let store = broker.store.clone();
                    w.busy().loading = Some(Box::pin(async move {
                        let messages = store.load_drain(ids.clone()).await;
                        (ids, messages)
                    }));
                }
            }
            if w.busy.as_ref().is_none_or(|b| b.horizon.is_none()) {
                if let Some(seq) = state.horizon_to_ticket() {
                    if let Some(rx) = broker.store.ticket() {
                        w.busy().horizon = Some((rx, seq));
                    }
                }
            }
            if !state.held.is_empty() {
                let bytes = state.held.split();
                match broker.ack_ticket() {
                    Some(rx) => w.busy().waiting.push_back((rx, bytes)),
                    None if broker.store.is_enabled() => {
                        // The writer is gone: nothing held may be promised any more.
                        break Close::error(
                            ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                            "persistence stopped: acknowledgements withheld",
                        );
                    }
                    None => state.write_buf.extend_from_slice(&bytes),
                }
            }
            state.holding = w.busy.as_ref().is_some_and(|b| !b.waiting.is_empty());
            // The store's writer is behind: stop reading until it catches up (back-pressure).
            let store_busy = broker.store.backlog() > BACKLOG_HIGH_WATER;
            let mut paused = w.busy.as_ref().is_some_and(|b| b.pause.is_some());
            if store_busy && !paused {
                w.busy().pause = Some(Box::pin(tokio::time::sleep(STORE_BUSY_POLL)));
                paused = true;
            }
            let want_read = state.write_buf.len() < HIGH_WATER && !paused;
            // An empty buffer of no capacity (idle) reads READ_BUF bytes at most (poll_read_more).
            let room = match w.rbuf.capacity() - w.rbuf.len() {
                0 if w.rbuf.is_empty() => READ_BUF,
                room => room,
            };
            // What was a `select!` over one future per source: polled by hand (biased, in this
            // order), so that while the connection waits its future holds no per-source future
            // (a shutdown `Changed` 120 bytes, a `Notified` 64, the read and write futures, ...),
            // only the sources themselves.
            // A `move` closure over a few references: what it borrows is stored in the task while
            // it waits.
            let (st, io, sd, ws) = (&mut state, &mut stream, &shutdown, &mut w);
            let event = std::future::poll_fn(move |cx| {
                if shutdown_signalled(sd) {
                    return Poll::Ready(Event::Shutdown);
                }
                // A takeover or a kick waits in the session's owner entry (and the wake-up
                // below fires for it): looked at first, so a busy socket cannot hold it up.
                if st.handle.control_waiting() {
                    return Poll::Ready(Event::Control);
                }
                if !st.write_buf.is_empty() || ws.unflushed {
                    if let Poll::Ready(r) = poll_write_or_flush(cx, &mut *io, &st.write_buf) {
                        return Poll::Ready(Event::Wrote(r));
                    }
                }
                if want_read {
                    if let Poll::Ready(r) =
                        poll_read_more(cx, &mut *io, &mut ws.rbuf, &mut ws.undecoded)
                    {
                        return Poll::Ready(Event::Read(r));
                    }
                }
                if st.handle.notify.poll_notified(cx).is_ready() {
                    return Poll::Ready(Event::Notified);
                }
                if let Some(b) = ws.busy.as_deref_mut() {
                    if let Some(l) = b.loading.as_mut() {
                        if let Poll::Ready(r) = l.as_mut().poll(cx) {
                            return Poll::Ready(Event::Loaded(r));
                        }
                    }
                    if let Some(p) = b.pause.as_mut() {
                        if p.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::Paused);
                        }
                    }
                    if let Some(t) = b.egress.as_mut() {
                        if t.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::Egress);
                        }
                    }
                    if let Some((rx, _)) = b.waiting.front_mut() {
                        if let Poll::Ready(r) = Pin::new(rx).poll(cx) {
                            return Poll::Ready(Event::Ticket(r.unwrap_or(false)));
                        }
                    }
                    if let Some((rx, _)) = b.horizon.as_mut() {
                        if let Poll::Ready(r) = Pin::new(rx).poll(cx) {
                            return Poll::Ready(Event::Horizon(r.unwrap_or(false)));
                        }
                    }
                }
                // Shutdown wakes this task through the session's wake-up, registered just above
                // (Broker::wake_all_sessions, after the signal is set): look again, so a signal
                // set while this poll ran is not missed.
                if shutdown_signalled(sd) {
                    return Poll::Ready(Event::Shutdown);
                }
                Poll::Pending
            })
            .await;
            // Running again: a push from now on leaves a permit rather than waking this task.
            state.handle.notify.unregister();
            match event {
                Event::Shutdown => {
                    // With a Server Reference configured, clients are sent on to it (4.11).
                    let code = match &broker.config.mqtt.server_reference {
                        Some(_) => redirect_code(&broker.config.mqtt),
                        None => ReasonCode::SERVER_SHUTTING_DOWN,
                    };
                    break Close {
                        send: Some(code),
                        publish_will: false,
                        reason: "server shutting down".into(),
                    };
                }
                Event::Control => match state.handle.take_control(control.connection) {
                    Some(Control::TakeOver(reply)) => {
                        takeover_reply = Some(reply);
                        break Close::error(
                            ReasonCode::SESSION_TAKEN_OVER,
                            "session taken over by a new connection [MQTT-3.1.4-3]",
                        );
                    }
                    // Handed over like a takeover: the admin API's caller holds connect_lock
                    // and waits for the session to be parked (Broker::kick).
                    Some(Control::Kick(reply)) => {
                        takeover_reply = Some(reply);
                        break Close::error(
                            ReasonCode::ADMINISTRATIVE_ACTION,
                            "disconnected by an administrator (admin API)",
                        );
                    }
                    // Not for this connection (ownership moved on).
                    None => {}
                },
                Event::Wrote(r) => match r {
                    Ok(None) => w.unflushed = false,
                    Ok(Some(0)) | Err(_) => break io_closed(),
                    Ok(Some(n)) => {
                        broker.stats.add(Counter::BytesSent, n as u64);
                        w.unflushed = flush;
                        state.write_buf.advance(n);
                        if state.write_buf.is_empty() {
                            // All written: an idle connection holds no write buffer (the next
                            // packet allocates one, ClientState::send).
                            state.write_buf = BytesMut::new();
                        }
                    }
                },
                Event::Read(r) => match r {
                    Ok(0) | Err(_) => break io_closed(),
                    Ok(n) => {
                        let now = Instant::now();
                        let decoded = decode_all(
                            &mut w.decoder,
                            &mut w.rbuf,
                            &mut state,
                            now,
                            &broker,
                            limiter.as_deref_mut(),
                        );
                        // What this read batch counted, added to the broker's counts at once.
                        broker.stats.flush(&mut state.tally, n);
                        if let Err(close) = decoded {
                            break close;
                        }
                        let mut silence_allowance = Duration::ZERO;
                        if let Some(limiter) = limiter.as_deref_mut() {
                            if let Some(wait) = limiter.pause(now) {
                                if broker.config.limits.disconnect_over_rate && protocol.is_v5() {
                                    break Close::error(ReasonCode::MESSAGE_RATE_TOO_HIGH, "PUBLISH rate over limits.publish_rate / publish_bytes_rate");
                                }
                                broker.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(peer = %peer_of(&state, control.connection), client_id = %state.n.client_id, pause_ms = wait.as_millis() as u64, "over the publish rate limit: reading paused");
                                let until = tokio::time::Instant::from(now + wait);
                                let b = w.busy();
                                match b.pause.as_mut() {
                                    Some(p) => p.as_mut().reset(until),
                                    None => {
                                        b.pause = Some(Box::pin(tokio::time::sleep_until(until)))
                                    }
                                }
                                // Our own pause must not count as the client's silence.
                                silence_allowance = wait;
                            }
                        }
                        if let Some(k) = keepalive_limit(keep_alive) {
                            // Any packet resets the keepalive timer [MQTT-3.1.2-22].
                            broker
                                .keepalives
                                .extend(&state.handle, now + k + silence_allowance);
                        }
                        if w.rbuf.is_empty() && w.rbuf.capacity() > HIGH_WATER {
                            w.rbuf = BytesMut::new();
                        } else if n >= room && w.rbuf.capacity() < READ_BUF_BUSY {
                            w.rbuf.reserve(READ_BUF_BUSY - w.rbuf.len());
                        } else if w.rbuf.is_empty() && n < READ_BUF {
                            // Quiet again: an idle connection holds no read buffer (poll_read_more).
                            w.rbuf = BytesMut::new();
                        }
                        pending = true;
                    }
                },
                Event::Notified => {
                    // The keepalive task wakes the connection this way once its deadline
                    // has passed (a packet since then has moved it: `expired` is false).
                    if keep_alive > 0 && broker.keepalives.expired(&state.handle, Instant::now()) {
                        break Close::error(
                            ReasonCode::KEEP_ALIVE_TIMEOUT,
                            format!(
                                "no packet within 1.5 x keepalive ({keep_alive}s) [MQTT-3.1.2-22]"
                            ),
                        );
                    }
                    pending = true;
                }
                Event::Loaded((ids, messages)) => {
                    w.busy().loading = None;
                    state.warm(&ids, messages);
                    pending = true;
                }
                Event::Paused => w.busy().pause = None,
                Event::Egress => {
                    w.busy().egress = None;
                    state.egress_timer_fired();
                    let now = Instant::now();
                    let slow = slow_consumer(&broker);
                    if state.slow_consumer_deadline(slow).is_some_and(|t| t <= now) {
                        broker
                            .stats
                            .slow_consumers_disconnected
                            .fetch_add(1, Ordering::Relaxed);
                        break Close::error(
                            ReasonCode::QUOTA_EXCEEDED,
                            format!(
                                "slow consumer: queue full for {}s (mqtt.queue_full_policy = disconnect_slow_consumer)",
                                slow.as_secs()
                            ),
                        );
                    }
                    pending = true;
                }
                Event::Ticket(r) => {
                    let b = w.busy();
                    let Some((_, bytes)) = b.waiting.pop_front() else {
                        continue;
                    };
                    // One group commit answers many tickets: what they all release goes out in one
                    // write, not one turn of this loop (and one write) each.
                    let mut ok = r;
                    if ok {
                        state.write_buf.extend_from_slice(&bytes);
                        while let Some((rx, _)) = b.waiting.front_mut() {
                            match rx.try_recv() {
                                Ok(true) => {
                                    if let Some((_, bytes)) = b.waiting.pop_front() {
                                        state.write_buf.extend_from_slice(&bytes);
                                    }
                                }
                                Err(oneshot::error::TryRecvError::Empty) => break,
                                Ok(false) | Err(oneshot::error::TryRecvError::Closed) => {
                                    ok = false;
                                    break;
                                }
                            }
                        }
                    }
                    if !ok {
                        break Close::error(
                            ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                            "persistence failed: acknowledgements withheld",
                        );
                    }
                }
                Event::Horizon(r) => {
                    // A failed store closes the connection through the held packets' tickets.
                    if let Some((_, seq)) = w.busy().horizon.take().filter(|_| r) {
                        state.horizon_safe(seq);
                    }
                    pending = true;
                }
            }
        };

        if keepalive_limit(keep_alive).is_some() {
            // Its wheel entry goes at its tick, or sooner once many connections have closed.
            broker.keepalives.unwatch();
        }
        // The loop's state is done with; boxed: the closing steps' awaits (bounded flushes, the
        // handover) would otherwise size every connection's task for its whole life.
        let Waits { busy, .. } = w;
        let connection = control.connection;
        let mut waiting = busy.map(|b| b.waiting).unwrap_or_default();
        drop(limiter);
        Box::pin(async move {
        // Acks waiting for the store go out once it has their messages (bounded wait).
        if !state.held.is_empty() {
            if let Some(rx) = broker.ack_ticket() {
                waiting.push_back((rx, state.held.split()));
            }
        }
        for (rx, bytes) in waiting.drain(..) {
            if let Ok(Ok(true)) = tokio::time::timeout(FLUSH_TIMEOUT, rx).await {
                state.write_buf.extend_from_slice(&bytes);
            } else {
                break;
            }
        }
        state.holding = false;
        state.held.clear();
        // Say goodbye: 5.0 clients get a DISCONNECT with the reason [MQTT-4.13.1-1]; what was
        // already queued for the socket (acks) goes out first.
        if let Some(code) = close.send {
            if protocol.is_v5() {
                let mut d = state.disconnect_packet(code, &close.reason);
                if let (Packet::Disconnect(d), Some(reference)) =
                    (&mut d, &broker.config.mqtt.server_reference)
                {
                    if matches!(
                        code,
                        ReasonCode::USE_ANOTHER_SERVER | ReasonCode::SERVER_MOVED
                    ) {
                        d.properties.server_reference =
                            sluice_codec::Str::try_from(reference.as_str()).ok();
                    }
                }
                state.send(&d);
            }
        }
        if !state.write_buf.is_empty() {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, stream.write_all(&state.write_buf)).await;
        }
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, stream.shutdown()).await;
        // The server ended it for a reason the client should learn (a protocol error, a limit, a
        // keepalive timeout, a takeover): the write side is shut, and the read side stays open for
        // a moment (after the session is handed on, below). Not at shutdown or a redirect: the
        // process is going away or the client is being sent elsewhere.
        let lingers = close.send.is_some_and(|c| {
            !matches!(
                c,
                ReasonCode::SERVER_SHUTTING_DOWN
                    | ReasonCode::USE_ANOTHER_SERVER
                    | ReasonCode::SERVER_MOVED
            )
        });

        let level = if close.send.is_some_and(|c| {
            c.is_error() && c != ReasonCode::SESSION_TAKEN_OVER && c != ReasonCode::SERVER_SHUTTING_DOWN
        }) {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        };
        let client_id = state.n.client_id.clone();
        let peer = peer_of(&state, connection);
        if level == tracing::Level::WARN {
            tracing::warn!(%peer, %client_id, protocol = protocol.level(), reason = %close.reason, "client disconnected");
        } else {
            tracing::info!(%peer, %client_id, protocol = protocol.level(), reason = %close.reason, "client disconnected");
        }

        let will = if close.publish_will {
            state.will.take().map(|w| *w)
        } else {
            None
        };
        let handle = state.handle.clone();
        let reset_horizon = state.horizon_at_close();
        let session = std::mem::take(&mut state.session);
        if broker.store.is_enabled() && handle.persistent.load(Ordering::Relaxed) {
            // What survives this connection: nothing (expiry 0, possibly set by DISCONNECT), or the
            // session with the will still to come after its delay.
            if session.expiry_interval == 0 {
                handle.persistent.store(false, Ordering::Relaxed);
                broker.store.session_gone(handle.client_id.clone());
            } else {
                if let Some(rec) = reset_horizon {
                    broker.store.log_pending(rec);
                }
                broker.store.session_parked(
                    handle.client_id.clone(),
                    session.expiry_interval,
                    state.n.username.clone(),
                    will.clone().filter(|w| w.delay_interval > 0).map(Box::new),
                    crate::persist::now_unix_ms(),
                );
            }
        }
        let b = &broker;
        // Boxed: this last await would otherwise size every connection's task for its whole life.
        Box::pin(async move {
            match takeover_reply {
                Some(reply) => {
                    // The new connection holds connect_lock and waits for us.
                    b.park_session(&handle, session, connection, will, true);
                    let _ = reply.send(());
                }
                // Ownership changes go through connect_lock; a new connection may hold it while
                // asking us to hand over, so keep answering takeovers while waiting for it.
                None => tokio::select! {
                    _guard = handle.connect_lock.lock() => {
                        b.park_session(&handle, session, connection, will, false);
                    }
                    // A kick now is answered the same way: its sender holds the lock too.
                    Control::TakeOver(reply) | Control::Kick(reply) = handle.control_requested(connection) => {
                        b.park_session(&handle, session, connection, will, true);
                        let _ = reply.send(());
                    }
                },
            }
        })
        .await;
        broker.stats.clients_connected.fetch_sub(1, Ordering::Relaxed);
        done(&broker);
        if lingers {
            Box::pin(linger(&mut stream)).await;
        }
    })
    .await;
        // Held until the connection has ended (captured by the block, which owns it; dropped
        // with it on the early returns too).
        drop(guard);
    }
}

/// Drains the session's queue into the write buffer (`ClientState::drain_outbox`), adding
/// what it sent and dropped to the broker's counts once for the whole drain.
fn drain(state: &mut ClientState, broker: &Broker, now: Instant) -> bool {
    let mut tally = DrainTally::default();
    let more = state.drain_outbox_counted(now, HIGH_WATER, &mut tally);
    broker.stats.flush_drain(&tally);
    more
}

/// The client's address, as recorded on the session's owner entry for the admin API (while
/// this connection owns the session, which it does until it parks it). Looked up there rather
/// than kept in every connection's task (32 bytes) for the two log lines that need it.
fn peer_of(state: &ClientState, connection: u64) -> SocketAddr {
    state
        .handle
        .ownership()
        .owner
        .as_ref()
        .filter(|o| o.connection == connection)
        .and_then(|o| o.info.as_ref())
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |i| i.peer)
}

fn done(broker: &Broker) {
    broker.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// The client went away without DISCONNECT (or the socket failed): the will is published.
fn io_closed() -> Close {
    Close {
        send: None,
        publish_will: true,
        reason: "connection closed without DISCONNECT".into(),
    }
}

/// Decodes and handles every complete packet in `rbuf`.
fn decode_all(
    decoder: &mut Decoder,
    rbuf: &mut BytesMut,
    state: &mut ClientState,
    now: Instant,
    broker: &Broker,
    mut limiter: Option<&mut RateLimiter>,
) -> Result<(), Close> {
    // The records of everything read at once (acknowledgements of a consumer, mostly) reach
    // the writer together, in one frame: one message to it instead of one per record.
    let _records = broker.store.batch();
    // The PUBACKs read in a row, logged as one run before anything else is handled (and
    // before the batch closes): one append instead of one per PUBACK (issue 16).
    let mut acked = Vec::new();
    let r = loop {
        let before = rbuf.len();
        match decoder.decode(rbuf) {
            Ok(Some(Packet::PubAck(a))) => state.handle_puback(a.pkid, &mut acked),
            Ok(Some(packet)) => {
                state.log_acked(&mut acked);
                if let (Some(limiter), Packet::Publish(_)) = (limiter.as_deref_mut(), &packet) {
                    // The decoder consumes exactly one whole frame.
                    limiter.charge(now, before - rbuf.len());
                }
                if let Err(close) = state.handle(now, packet, broker) {
                    break Err(close);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(Close::error(e.reason_code(), e.to_string())),
        }
    };
    state.log_acked(&mut acked);
    r
}

/// `mqtt.slow_consumer_seconds`.
fn slow_consumer(broker: &Broker) -> Duration {
    Duration::from_secs(u64::from(broker.config.mqtt.slow_consumer_seconds))
}

/// How long a client with Keep Alive `keep_alive` (seconds, 0: none) may stay silent: 1.5
/// times it [MQTT-3.1.2-22]. Computed where needed rather than kept in the connection's future.
fn keepalive_limit(keep_alive: u16) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500))
}

/// Whether the server has signalled shutdown (or its sender is gone).
fn shutdown_signalled(shutdown: &watch::Receiver<bool>) -> bool {
    !matches!(shutdown.has_changed(), Ok(false))
}

#[cfg(test)]
mod tests {
    /// Every connection's task holds this future for its whole life: keep it small (it was
    /// 4 KB before the one-off steps were boxed and the session's large rare parts boxed,
    /// 2000 bytes before the closing steps were boxed, 1608 before the 5.0-only state was
    /// boxed, 1504 while serve() was an async fn holding its arguments twice, 1304 while the
    /// loop waited in a `select!` (one future per source: shutdown `Changed` 120 bytes,
    /// `Notified` 64, read and write futures, ...) on a split stream, with the store-waiting
    /// state and the sent-horizon inline; 840 before the metrics tally (16 bytes), 856 before
    /// the QoS 2 id set, the shared-subscription fields and the peer address left it, 760
    /// before the keepalive timer (a `Sleep`, 112 bytes) moved to the broker's one keepalive
    /// task, 632 before the takeover channel's receiver became a slot on the session, 624 in
    /// debug builds now). tokio allocates the task as this future plus 104 bytes,
    /// rounded up to 128; the listener's task adds its 16-byte guard: up to 648 bytes here
    /// the task is 768 bytes, one more byte makes it 896.
    #[test]
    fn connection_task_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            let c = tokio::net::TcpStream::connect(a).await.unwrap();
            let b = std::sync::Arc::new(crate::broker::Broker::new(
                crate::config::Config::default(),
                None,
            ));
            let (_tx, rx) = tokio::sync::watch::channel(false);
            let f = super::serve(c, super::ConnInfo::plain(a), b, rx);
            let size = std::mem::size_of_val(&f);
            assert!(size <= 648, "serve() future grew to {size} bytes");
        });
    }
}
