//! The protocol fuzz harness: arbitrary bytes become a sequence of operations on up to three
//! clients of one in-process [`Broker`], driven through the same sans-IO calls the connection
//! task makes (`negotiate`, `open_session`, [`ClientState::handle`], `drain_outbox`,
//! `park_session`), with a fake clock and no sockets.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/protocol.rs` and the deterministic
//! corpus replay `broker/tests/protocol_fuzz_corpus.rs` (both include this file with
//! `#[path]`). Invariants checked after every step:
//! * nothing panics (in the state machine, the broker, or the codec);
//! * everything the broker writes to a client decodes back with the codec at the client's
//!   level, with nothing left over, and (5.0) no PUBLISH or DISCONNECT is larger than the
//!   client's Maximum Packet Size [MQTT-3.1.2-24];
//! * outbound packet ids in flight are distinct and never 0 [MQTT-2.2.1-2], [MQTT-2.2.1-3].
//!
//! Input format: byte 0 picks a configuration variant (small limits, QoS caps, ...); then
//! each operation is one byte (`client = (op >> 4) % 3`, `kind = op & 0x0f`) followed by the
//! operands its kind reads. Well-formed packets (CONNECT, PUBLISH, SUBSCRIBE, acks, ...) are
//! built from a few operand bytes and encoded, so the fuzzer reaches deep states quickly; the
//! raw-bytes kinds feed arbitrary chunks through the decoder as a socket would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice::config::{Config, SharedStrategy};
use sluice::connection::ratelimit::RateLimiter;
use sluice::protocol::{ClientState, Close};
use sluice::session::ControlGuard;
use sluice::{admit, negotiate, refusal, Admitted, Broker, Credentials};
use sluice_codec::{
    encode, Connect, ConnectProperties, Decoder, Disconnect, DisconnectProperties, LastWill,
    Packet, Protocol, PubAck, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, Str,
    Subscribe, SubscribeProperties, Subscription, SubscriptionOptions, TopicFilter, TopicName,
    Unsubscribe,
};

const CLIENTS: usize = 3;

/// `SLUICE_HARNESS_TRACE=1` prints each operation and each close (to debug an input).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SLUICE_HARNESS_TRACE").is_some())
}
/// Most operations per input, so every run is bounded whatever the input's length.
const MAX_OPS: usize = 512;
/// The connection task's write high-water mark.
const HIGH_WATER: usize = 64 * 1024;

const CLIENT_IDS: [&str; 4] = ["a", "b", "c", ""];
const TOPICS: [&str; 8] = [
    "a",
    "a/b",
    "a/b/c",
    "$SYS/x",
    "b",
    "$share/g/a",
    "a/b/c/d/e/f",
    "x/y",
];
const FILTERS: [&str; 12] = [
    "#",
    "a/#",
    "+/b",
    "a/b",
    "a",
    "$share/g/a/#",
    "$share/g/#",
    "$share/h/+",
    "$SYS/#",
    "+/+/+/+/+/+",
    "x/+",
    "b",
];

/// Reads operands from the input; past its end everything reads as zero.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }
}

/// A client after its CONNECT was accepted.
struct Live {
    state: ClientState,
    connection: u64,
    limiter: RateLimiter,
    /// Kept so the session's owner looks alive; takeovers are done by the harness itself.
    _control: ControlGuard,
}

/// One simulated TCP connection.
struct Conn {
    decoder: Decoder,
    rbuf: BytesMut,
    live: Option<Live>,
}

impl Conn {
    fn fresh(config: &Config) -> Conn {
        Conn {
            decoder: Decoder::new(config.mqtt.max_packet_size as usize),
            rbuf: BytesMut::new(),
            live: None,
        }
    }

    fn protocol(&self) -> Protocol {
        self.decoder.protocol().unwrap_or(Protocol::V311)
    }
}

/// What one run reached, so tests can tell the harness is not vacuous.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reached {
    /// CONNECTs accepted.
    pub connected: usize,
    /// Packets handled by a connected client's state machine.
    pub handled: usize,
    /// PUBLISH packets the broker wrote to clients.
    pub delivered: usize,
}

struct World {
    reached: Reached,
    rt: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    conns: Vec<Conn>,
    start: Instant,
    clock: Duration,
}

fn config(variant: u8) -> Config {
    let mut c = Config::default();
    if variant & 1 != 0 {
        c.mqtt.max_packet_size = 512;
    }
    if variant & 2 != 0 {
        c.mqtt.max_queued_messages = Some(4);
        c.mqtt.max_queued_bytes = Some(2048);
        c.mqtt.max_inflight = 2;
        c.mqtt.receive_maximum = 2;
    }
    if variant & 4 != 0 {
        c.mqtt.topic_alias_maximum = 0;
    } else {
        c.mqtt.topic_alias_maximum = 4;
        c.mqtt.max_outbound_topic_aliases = 2;
    }
    c.mqtt.maximum_qos = 2 - ((variant >> 3) & 3).min(2);
    if (variant >> 3) & 3 == 3 {
        c.mqtt.maximum_qos = 2;
        c.mqtt.retain_available = false;
        c.mqtt.wildcard_subscription_available = false;
        c.mqtt.subscription_identifiers_available = false;
        c.mqtt.shared_subscription_available = false;
    }
    if variant & 0x20 != 0 {
        c.limits.max_topic_length = 8;
        c.limits.max_topic_levels = 3;
        c.limits.max_subscriptions_per_client = 3;
        c.limits.max_client_id_length = 1;
        c.limits.publish_rate = 2;
        c.limits.publish_bytes_rate = 64;
        c.mqtt.max_keepalive = 30;
    }
    c.mqtt.validate_utf8_payloads = variant & 0x40 != 0;
    c.mqtt.shared_subscription_strategy = match variant >> 6 {
        0 => SharedStrategy::RoundRobin,
        1 => SharedStrategy::Sticky,
        2 => SharedStrategy::LeastInflight,
        _ => SharedStrategy::HashTopic,
    };
    c
}

/// Runs one input. Panics (the fuzzer's finding) if an invariant does not hold.
pub fn run(data: &[u8]) -> Reached {
    let mut input = Input { data, pos: 0 };
    let config = config(input.byte());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let conns = (0..CLIENTS).map(|_| Conn::fresh(&config)).collect();
    let broker = Arc::new(Broker::new(config, None));
    let mut w = World {
        reached: Reached::default(),
        rt,
        broker,
        conns,
        start: Instant::now(),
        clock: Duration::ZERO,
    };
    // `park_session` arms its timers with `tokio::spawn`.
    let rt_handle = w.rt.handle().clone();
    let _enter = rt_handle.enter();

    let mut ops = 0;
    while !input.done() && ops < MAX_OPS {
        ops += 1;
        let op = input.byte();
        let c = usize::from(op >> 4) % CLIENTS;
        if trace() {
            eprintln!("op {op:#04x}: client {c}, kind {}", op & 0x0f);
        }
        match op & 0x0f {
            0 | 15 => {
                let n = usize::from(input.byte());
                let chunk = input.take(n).to_vec();
                w.feed(c, &chunk);
            }
            1 => {
                let p = connect_packet(&mut input);
                w.feed_packet(c, &p, Some(connect_protocol(&p)));
            }
            2 => {
                let p = publish_packet(&mut input);
                w.feed_packet(c, &p, None);
            }
            3 => {
                let p = subscribe_packet(&mut input);
                w.feed_packet(c, &p, None);
            }
            4 => {
                let p = unsubscribe_packet(&mut input);
                w.feed_packet(c, &p, None);
            }
            5 => {
                let kind = input.byte();
                let which = usize::from(input.byte());
                let pkid = w.conns[c]
                    .live
                    .as_ref()
                    .and_then(|l| {
                        let inflight = &l.state.session.inflight;
                        (!inflight.is_empty()).then(|| inflight[which % inflight.len()].pkid())
                    })
                    .unwrap_or((which % 8) as u16 + 1);
                let mut ack = PubAck::new(pkid);
                if kind & 0x80 != 0 {
                    ack.reason = ReasonCode(0x80);
                }
                let p = match kind & 3 {
                    0 => Packet::PubAck(ack),
                    1 => Packet::PubRec(ack),
                    2 => Packet::PubRel(ack),
                    _ => Packet::PubComp(ack),
                };
                w.feed_packet(c, &p, None);
            }
            6 => {
                let p = match input.byte() & 3 {
                    0 => Packet::PingReq,
                    1 => Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
                    2 => Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL)),
                    _ => Packet::Disconnect(Disconnect {
                        reason: ReasonCode::NORMAL_DISCONNECTION,
                        properties: DisconnectProperties {
                            session_expiry_interval: Some(u32::from(input.byte())),
                            ..Default::default()
                        },
                    }),
                };
                w.feed_packet(c, &p, None);
            }
            7 => {
                let high_water = match input.byte() {
                    0 => 0,
                    b => usize::from(b) * 64,
                };
                w.drain(c, high_water);
            }
            8 => {
                let b = input.byte();
                w.clock += if b & 0x80 != 0 {
                    Duration::from_secs(u64::from(b & 0x7f) * 60)
                } else {
                    Duration::from_millis(u64::from(b) * 50)
                };
            }
            9 => {
                // The socket closed (or failed) without DISCONNECT.
                w.close(
                    c,
                    Close {
                        send: None,
                        publish_will: true,
                        reason: "connection closed without DISCONNECT".into(),
                    },
                );
            }
            10 => {
                // The task ended without parking its session (as if it had panicked): the
                // session's owner is left behind, its control slot marked gone.
                if input.byte() == 0xa5 {
                    w.conns[c] = Conn::fresh(&w.broker.config);
                }
            }
            11 => {
                // A frame delivered a byte at a time.
                let n = usize::from(input.byte() % 32);
                let chunk = input.take(n).to_vec();
                for b in chunk {
                    w.feed(c, &[b]);
                }
            }
            12 => {
                // A CONNECT frame for this client's level, then raw bytes in the same read.
                let p = connect_packet(&mut input);
                let n = usize::from(input.byte());
                let mut bytes = BytesMut::new();
                if encode(&p, connect_protocol(&p), &mut bytes).is_ok() {
                    bytes.extend_from_slice(input.take(n));
                    w.feed(c, &bytes);
                }
            }
            13 => {
                // A PUBLISH whose topic is only an alias (5.0), or a retained delete.
                let mut p = publish_packet(&mut input);
                if let Packet::Publish(p) = &mut p {
                    if p.properties.topic_alias.is_some() {
                        p.topic = TopicName::default();
                    } else {
                        p.retain = true;
                        p.payload = Bytes::new();
                    }
                }
                w.feed_packet(c, &p, None);
            }
            _ => {
                // Let the runtime run whatever is ready (session timers never are: they wait
                // for real deadlines).
                w.rt.block_on(tokio::task::yield_now());
            }
        }
        w.check_all();
    }
    // Every connection ends, as at shutdown.
    for c in 0..CLIENTS {
        w.close(
            c,
            Close {
                send: Some(ReasonCode::SERVER_SHUTTING_DOWN),
                publish_will: false,
                reason: "server shutting down".into(),
            },
        );
    }
    drop(_enter);
    w.reached
}

impl World {
    fn now(&self) -> Instant {
        self.start + self.clock
    }

    /// Encodes `p` as the client would and feeds it. `protocol`: the level to encode at when
    /// the connection has none yet (CONNECT).
    fn feed_packet(&mut self, c: usize, p: &Packet, protocol: Option<Protocol>) {
        let level = match (self.conns[c].decoder.protocol(), protocol) {
            (Some(l), _) => l,
            (None, Some(l)) => l,
            (None, None) => self.conns[c].protocol(),
        };
        let mut bytes = BytesMut::new();
        let encoded = encode(p, level, &mut bytes);
        if trace() {
            eprintln!("  {p:?} at {level:?}: {encoded:?}");
        }
        if encoded.is_ok() {
            self.feed(c, &bytes);
        }
    }

    /// Bytes arrive on connection `c`: decode and handle every complete packet, as
    /// `connection.rs` does.
    fn feed(&mut self, c: usize, bytes: &[u8]) {
        self.conns[c].rbuf.extend_from_slice(bytes);
        let now = self.now();
        loop {
            let conn = &mut self.conns[c];
            let before = conn.rbuf.len();
            let packet = match conn.decoder.decode(&mut conn.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    // Before CONNECT the connection is just dropped (the CONNACK the task may
                    // send is not the state machine's).
                    self.close(c, Close::error(e.reason_code(), e.to_string()));
                    return;
                }
            };
            let consumed = before - conn.rbuf.len();
            let Some(live) = &mut conn.live else {
                match packet {
                    Packet::Connect(connect) => self.connect(c, *connect),
                    // First packet is not CONNECT [MQTT-3.1.0-1].
                    _ => self.conns[c] = Conn::fresh(&self.broker.config),
                }
                if self.conns[c].live.is_none() {
                    return; // refused
                }
                continue;
            };
            if live.limiter.is_active() && matches!(packet, Packet::Publish(_)) {
                live.limiter.charge(now, consumed);
            }
            self.reached.handled += 1;
            if let Err(close) = live.state.handle(now, packet, &self.broker) {
                self.close(c, close);
                return;
            }
            if live.limiter.is_active() {
                if let Some(wait) = live.limiter.pause(now) {
                    assert!(wait < Duration::from_secs(3600), "absurd pause {wait:?}");
                }
            }
        }
    }

    /// A CONNECT arrived on connection `c`.
    fn connect(&mut self, c: usize, connect: Connect) {
        let now = self.now();
        let credentials = if connect.username.is_some() {
            Credentials::Unchecked
        } else {
            Credentials::Anonymous
        };
        let accepted = match negotiate(&connect, &self.broker, credentials) {
            Ok(a) => a,
            Err(r) => {
                let ack = Packet::ConnAck(refusal(&r, &connect));
                let mut buf = BytesMut::new();
                encode(&ack, connect.protocol, &mut buf).expect("refusal CONNACK encodes");
                check_bytes(buf, connect.protocol, usize::MAX, "refusal CONNACK");
                self.conns[c] = Conn::fresh(&self.broker.config);
                return;
            }
        };
        // A connected client with the same id is taken over [MQTT-3.1.4-3]: the harness
        // plays the old connection's part (its task answers the takeover request this way).
        let id = accepted.negotiated.client_id.clone();
        for other in 0..CLIENTS {
            if other != c
                && self.conns[other]
                    .live
                    .as_ref()
                    .is_some_and(|l| l.state.n.client_id == id)
            {
                self.end(
                    other,
                    Close::error(ReasonCode::SESSION_TAKEN_OVER, "session taken over"),
                    true,
                );
            }
        }
        let protocol = connect.protocol;
        let Admitted {
            mut state,
            connection,
            control,
            ..
        } = self
            .rt
            .block_on(admit(&self.broker, Box::new(connect), accepted, None, now));
        state.drain_outbox(now, HIGH_WATER);
        assert_eq!(state.n.protocol, protocol);
        self.reached.connected += 1;
        self.conns[c].live = Some(Live {
            state,
            connection,
            limiter: RateLimiter::new(&self.broker.config.limits, now),
            _control: control,
        });
    }

    fn drain(&mut self, c: usize, high_water: usize) {
        let now = self.now();
        if let Some(live) = &mut self.conns[c].live {
            live.state.drain_outbox(now, high_water);
        }
    }

    /// Connection `c` ends with `close`, as at the end of `connection::serve`.
    fn close(&mut self, c: usize, close: Close) {
        self.end(c, close, false);
    }

    fn end(&mut self, c: usize, close: Close, taken_over: bool) {
        if trace() {
            eprintln!("close client {c}: {close:?}");
        }
        let Some(mut live) = self.conns[c].live.take() else {
            self.conns[c] = Conn::fresh(&self.broker.config);
            return;
        };
        let state = &mut live.state;
        if let Some(code) = close.send {
            if state.n.protocol.is_v5() {
                let d = state.disconnect_packet(code, &close.reason);
                state.send(&d);
            }
        }
        self.reached.delivered += check_state(state);
        let will = if close.publish_will {
            state.will.take().map(|w| *w)
        } else {
            None
        };
        let session = std::mem::take(&mut state.session);
        self.broker
            .park_session(&state.handle, session, live.connection, will, taken_over);
        self.conns[c] = Conn::fresh(&self.broker.config);
        // Parking may have redistributed or published (wills): check the others.
        self.check_all();
    }

    fn check_all(&mut self) {
        for conn in &mut self.conns {
            if let Some(live) = &mut conn.live {
                self.reached.delivered += check_state(&mut live.state);
            }
        }
    }
}

/// Everything `state` wrote decodes back; outbound packet ids are distinct and non-zero.
fn check_state(state: &mut ClientState) -> usize {
    let buf = state.write_buf.split();
    let limit = if state.n.protocol.is_v5() {
        state.n.client_max_packet
    } else {
        usize::MAX
    };
    let publishes = check_bytes(buf, state.n.protocol, limit, "broker output");
    let mut ids: Vec<u16> = state.session.inflight.iter().map(|i| i.pkid()).collect();
    assert!(!ids.contains(&0), "packet id 0 in flight [MQTT-2.2.1-3]");
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "packet id in flight twice [MQTT-2.2.1-2]");
    publishes
}

/// Decodes everything in `buf`; returns the number of PUBLISH packets.
fn check_bytes(mut buf: BytesMut, protocol: Protocol, max_packet: usize, what: &str) -> usize {
    let mut publishes = 0;
    let mut d = Decoder::with_protocol(protocol, usize::MAX);
    loop {
        let before = buf.len();
        match d.decode(&mut buf) {
            Ok(Some(p)) => {
                if trace() {
                    eprintln!(
                        "  -> {}",
                        format!("{p:?}").chars().take(160).collect::<String>()
                    );
                }
                publishes += usize::from(matches!(p, Packet::Publish(_)));
                let len = before - buf.len();
                // Checked where the broker has a rule to stay under it: PUBLISHes too large are
                // not sent [MQTT-3.1.2-25], DISCONNECT drops its Reason String [MQTT-3.14.2-3].
                // (CONNACK, SUBACK and acks with a Reason String can exceed a tiny maximum, and
                // a bare DISCONNECT cannot be made smaller than 4 bytes.)
                let bounded = match p {
                    Packet::Publish(_) => true,
                    Packet::Disconnect(_) => len > 4,
                    _ => false,
                };
                assert!(
                    !bounded || len <= max_packet,
                    "{what}: {} of {len} bytes over the client's Maximum Packet Size {max_packet} [MQTT-3.1.2-24]",
                    p.name()
                );
            }
            Ok(None) => break,
            Err(e) => panic!("{what} does not decode at {protocol:?}: {e}"),
        }
    }
    assert!(buf.is_empty(), "{what}: a partial packet left over");
    publishes
}

fn connect_protocol(p: &Packet) -> Protocol {
    match p {
        Packet::Connect(c) => c.protocol,
        _ => Protocol::V311,
    }
}

fn connect_packet(input: &mut Input<'_>) -> Packet {
    let flags = input.byte();
    let protocol = match flags & 3 {
        0 => Protocol::V31,
        1 => Protocol::V311,
        _ => Protocol::V5,
    };
    let client_id = input.pick(&CLIENT_IDS);
    let v5 = protocol.is_v5();
    let mut properties = ConnectProperties::default();
    if v5 {
        let p = input.byte();
        if p & 1 != 0 {
            properties.session_expiry_interval = Some(u32::from(input.u16()));
        }
        if p & 2 != 0 {
            properties.receive_maximum = Some(input.u16().max(1));
        }
        if p & 4 != 0 {
            properties.maximum_packet_size = Some(u32::from(input.u16()).max(1));
        }
        if p & 8 != 0 {
            properties.topic_alias_maximum = Some(u16::from(input.byte() % 8));
        }
        if p & 0x10 != 0 {
            properties.request_problem_information = Some(false);
        }
        if p & 0x20 != 0 {
            properties.session_expiry_interval = Some(u32::MAX);
        }
    }
    let will = (flags & 4 != 0).then(|| LastWill {
        topic: TopicName::try_from(input.pick(&TOPICS)).expect("topic"),
        payload: Bytes::copy_from_slice(input.take(3)),
        qos: QoS::from_u8(input.byte() % 3).unwrap_or_default(),
        retain: flags & 8 != 0,
        delay_interval: if v5 { u32::from(input.byte() % 4) } else { 0 },
        properties: PublishProperties::default(),
    });
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: flags & 0x10 != 0,
        keep_alive: u16::from(input.byte()),
        client_id: Str::from_static(client_id),
        will,
        username: (flags & 0x20 != 0).then(|| Str::from_static("user")),
        password: (flags & 0x40 != 0).then(|| Bytes::from_static(b"pw")),
        properties,
    }))
}

fn publish_packet(input: &mut Input<'_>) -> Packet {
    let flags = input.byte();
    let qos = QoS::from_u8((flags & 3) % 3).unwrap_or_default();
    let topic = input.pick(&TOPICS);
    let len = usize::from(input.byte() % 64);
    let payload = Bytes::copy_from_slice(input.take(len));
    let mut properties = PublishProperties::default();
    if flags & 0x10 != 0 {
        properties.topic_alias = Some(u16::from(input.byte() % 6));
    }
    if flags & 0x20 != 0 {
        properties.message_expiry_interval = Some(u32::from(input.byte() % 8));
    }
    if flags & 0x40 != 0 {
        properties.payload_format_indicator = Some(1);
    }
    Packet::Publish(Publish {
        dup: flags & 0x80 != 0,
        qos,
        retain: flags & 4 != 0,
        topic: TopicName::try_from(topic).expect("topic"),
        pkid: if qos == QoS::AtMostOnce {
            0
        } else {
            (input.u16() % 16).max(1)
        },
        payload,
        properties,
    })
}

fn subscribe_packet(input: &mut Input<'_>) -> Packet {
    let n = usize::from(input.byte() % 4) + 1;
    let mut filters = Vec::with_capacity(n);
    for _ in 0..n {
        let filter = input.pick(&FILTERS);
        let o = input.byte();
        filters.push(Subscription {
            filter: TopicFilter::try_from(filter).expect("filter"),
            options: SubscriptionOptions {
                qos: QoS::from_u8(o % 3).unwrap_or_default(),
                no_local: o & 4 != 0,
                retain_as_published: o & 8 != 0,
                retain_handling: match (o >> 4) % 3 {
                    0 => RetainHandling::OnSubscribe,
                    1 => RetainHandling::OnNewSubscription,
                    _ => RetainHandling::Never,
                },
            },
        });
    }
    let id = input.byte();
    Packet::Subscribe(Subscribe {
        pkid: input.u16().max(1),
        filters,
        rejected: vec![],
        properties: SubscribeProperties {
            subscription_identifier: (id != 0).then_some(u32::from(id)),
            user_properties: vec![],
        },
    })
}

fn unsubscribe_packet(input: &mut Input<'_>) -> Packet {
    let n = usize::from(input.byte() % 3) + 1;
    let filters = (0..n)
        .map(|_| TopicFilter::try_from(input.pick(&FILTERS)).expect("filter"))
        .collect();
    Packet::Unsubscribe(Unsubscribe {
        pkid: input.u16().max(1),
        filters,
        rejected: vec![],
        user_properties: vec![],
    })
}

/// A few hand-written inputs that reach the interesting states (connected clients, QoS 1/2
/// flows, shared groups, takeover), written as the seed corpus.
#[allow(dead_code)] // used by the replay test, not the fuzz target
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // op bytes: client in the high nibble, kind in the low one.
    let connect_v5 = |c: u8, id: u8, flags: u8| -> Vec<u8> {
        // flags: bit 0-1 level (2 = 5.0), 0x10 clean start; id index; no properties; keepalive 60
        vec![c << 4 | 1, flags, id, 0, 60]
    };
    let connect_v311 = |c: u8, id: u8| -> Vec<u8> { vec![c << 4 | 1, 0x11, id, 60] };
    let mut s = Vec::new();
    // Two v5 clients, one subscribes to a/#, the other publishes QoS 1 and 2; acks, drain.
    let mut a = vec![0u8];
    a.extend(connect_v5(0, 0, 0x12));
    a.extend(connect_v5(1, 1, 0x12));
    a.extend([0x03, 0, 1, 1, 0, 0, 1]); // client 0: SUBSCRIBE a/# QoS 1, no id, pkid 1
    a.extend([0x12, 1, 1, 3, b'x', b'y', b'z', 0, 5]); // client 1: PUBLISH QoS 1 a/b "xyz" pkid 5
    a.extend([0x12, 2, 2, 2, b'h', b'i', 0, 6]); // QoS 2 a/b/c pkid 6
    a.extend([0x07, 0xff, 0x05, 0, 0, 0x15, 2, 6]); // drain 0; PUBACK from 0; PUBREL from 1
    s.push(("qos_flows_v5", a));
    // 3.1.1 shared subscription pair and a publisher; one member leaves without DISCONNECT.
    let mut b = vec![0u8];
    b.extend(connect_v311(0, 0));
    b.extend(connect_v311(1, 1));
    b.extend(connect_v311(2, 2));
    b.extend([0x03, 0, 6, 1, 0, 0, 2]); // client 0: $share/g/# QoS 1
    b.extend([0x13, 0, 6, 1, 0, 0, 2]); // client 1: same group
    for i in 0..4 {
        b.extend([0x22, 1, 0, 1, b'0' + i, 0, 10 + i]);
    }
    b.extend([0x09, 0x17, 0xff, 0x07, 0xff]);
    s.push(("shared_v311", b));
    // Persistent session, takeover by the same client id, will with delay, retained messages.
    let mut c = vec![0x02u8];
    c.extend([0x01, 0x06, 0, 1, 0, 60, 1, b'w', b'!', b'?', 1, 2, 30]); // v5 "a", expiry 60, will
    c.extend([0x03, 1, 0, 2, 11, 2, 0, 0, 3]); // SUBSCRIBE # QoS 2 + b QoS 2
    c.extend([0x02, 0x05, 4, 2, b'r', b'1', 0, 7]); // retained QoS 1 on b
    c.extend([0x11, 0x02, 0, 0, 60]); // client 1 connects as "a": takeover
    c.extend([0x08, 0x85, 0x0e]); // five minutes pass, yield
    c.extend([0x1d, 0x10, 1, 0, 1]); // alias-only PUBLISH
    s.push(("takeover_retained", c));
    // Raw bytes: a CONNECT followed by garbage in the same read.
    let mut d = vec![0x21u8];
    d.extend([
        0x0c, 0x12, 0, 0, 30, 8, 0x30, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0,
    ]);
    s.push(("connect_then_garbage", d));
    s
}
