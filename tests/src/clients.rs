//! Test clients: packet builders for [`RawClient`], a byte-exact socket ([`ByteConn`]) and
//! rumqttc wrappers whose event loops run in a background task. Every wait is bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::codec::{
    ConnAck, Connect, ConnectProperties, Disconnect, LastWill, Packet, Protocol, PubAck, Publish,
    PublishProperties, QoS, ReasonCode, Str, SubAck, TopicName,
};
use crate::rumqttc;
use crate::{encode_remaining_length, Broker, RawClient, Recv};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a reply that should come may take.
pub const T: Duration = Duration::from_secs(3);
/// How long to watch for something that must NOT come.
pub const QUIET: Duration = Duration::from_millis(400);

/// CONNECT options for [`connect_packet`]: the one place the tests build a CONNECT (byte-level
/// CONNECTs, for cases the codec will not encode, are [`crate::connect_bytes_with`]).
#[derive(Debug, Clone)]
pub struct Opts {
    pub clean: bool,
    pub keep_alive: u16,
    /// 5.0 Session Expiry Interval (ignored at 3.1.1 / 3.1).
    pub expiry: Option<u32>,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    /// Other 5.0 CONNECT properties (Receive Maximum, authentication, ...); [`Opts::expiry`]
    /// sets the Session Expiry Interval.
    pub properties: ConnectProperties,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            clean: true,
            keep_alive: 60,
            expiry: None,
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }
}

impl Opts {
    /// Clean Session 0 (3.1.1) / Clean Start 0 with the given expiry (5.0).
    pub fn persistent(expiry: u32) -> Opts {
        Opts {
            clean: false,
            expiry: Some(expiry),
            ..Opts::default()
        }
    }

    /// With these 5.0 CONNECT properties.
    pub fn properties(self, properties: ConnectProperties) -> Opts {
        Opts { properties, ..self }
    }

    /// With a 5.0 Receive Maximum (None: the property is absent, 65,535).
    pub fn receive_maximum(mut self, n: Option<u16>) -> Opts {
        self.properties.receive_maximum = n;
        self
    }

    /// With a username and, if given, a password.
    pub fn user(self, username: &str, password: Option<&str>) -> Opts {
        Opts {
            username: Some(username.to_owned()),
            password: password.map(|p| p.as_bytes().to_vec()),
            ..self
        }
    }

    /// With a will.
    pub fn will(self, will: LastWill) -> Opts {
        Opts {
            will: Some(will),
            ..self
        }
    }
}

pub fn s(v: &str) -> Str {
    Str::try_from(v).unwrap()
}

pub fn topic(v: &str) -> TopicName {
    TopicName::try_from(v).unwrap()
}

pub fn connect_packet(protocol: Protocol, id: &str, o: &Opts) -> Packet {
    let mut properties = o.properties.clone();
    if protocol.is_v5() && o.expiry.is_some() {
        properties.session_expiry_interval = o.expiry;
    }
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: o.clean,
        keep_alive: o.keep_alive,
        client_id: s(id),
        will: o.will.clone(),
        username: o.username.as_deref().map(s),
        password: o.password.clone().map(Bytes::from),
        properties,
    }))
}

/// A will on `topic` with `payload` at QoS 1, with a 5.0 Will Delay Interval.
pub fn will(t: &str, payload: &'static [u8], delay: u32) -> LastWill {
    LastWill {
        topic: topic(t),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_interval: delay,
        properties: PublishProperties::default(),
    }
}

/// How long a reply may take while the broker is busy (thousands of other connections, a
/// backlog being written): a CONNACK, a PUBACK of a windowed burst.
pub const T_BUSY: Duration = Duration::from_secs(10);

/// Connects a raw client and returns it with whatever CONNACK came back (an error if the
/// connection fails or the first packet is not a CONNACK).
pub async fn try_connect(
    addr: SocketAddr,
    protocol: Protocol,
    id: &str,
    o: &Opts,
) -> anyhow::Result<(RawClient, ConnAck)> {
    let mut c = RawClient::connect(addr, protocol).await?;
    c.send(&connect_packet(protocol, id, o)).await?;
    match c.expect_packet(T_BUSY).await? {
        Packet::ConnAck(a) => Ok((c, a)),
        other => anyhow::bail!("{id}: expected CONNACK, got {other:?}"),
    }
}

/// Connects a raw client and returns it with its CONNACK (which must come).
pub async fn raw_connect(
    addr: SocketAddr,
    protocol: Protocol,
    id: &str,
    o: &Opts,
) -> (RawClient, ConnAck) {
    try_connect(addr, protocol, id, o).await.unwrap()
}

/// A client connected with default options (clean, keepalive 60) under a fresh client id
/// starting with `prefix`, asserting a successful CONNACK.
pub async fn connected(addr: SocketAddr, protocol: Protocol, prefix: &str) -> RawClient {
    raw_ok(addr, protocol, &crate::client_id(prefix), &Opts::default()).await
}

/// Like [`raw_connect`], asserting success.
pub async fn raw_ok(addr: SocketAddr, protocol: Protocol, id: &str, o: &Opts) -> RawClient {
    raw_ok_ack(addr, protocol, id, o).await.0
}

/// Like [`raw_ok`], also returning the CONNACK (for its properties / Session Present).
pub async fn raw_ok_ack(
    addr: SocketAddr,
    protocol: Protocol,
    id: &str,
    o: &Opts,
) -> (RawClient, ConnAck) {
    let (c, ack) = raw_connect(addr, protocol, id, o).await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS, "{id}: CONNACK {ack:?}");
    (c, ack)
}

pub fn subscribe_packet(pkid: u16, filter: &str, qos: QoS) -> Packet {
    crate::packets::subscribe(pkid, filter, qos)
}

/// Subscribes and waits for the SUBACK.
pub async fn raw_subscribe(c: &mut RawClient, pkid: u16, filter: &str, qos: QoS) -> SubAck {
    c.send(&subscribe_packet(pkid, filter, qos)).await.unwrap();
    match c.expect_packet(T).await.unwrap() {
        Packet::SubAck(a) => {
            assert_eq!(a.pkid, pkid);
            a
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// A PUBLISH packet (see [`crate::packets::publish`]).
pub fn publish_packet(t: &str, qos: QoS, pkid: u16, payload: impl AsRef<[u8]>) -> Packet {
    Packet::Publish(crate::packets::publish(t, qos, pkid, payload))
}

pub fn disconnect_packet(reason: ReasonCode, expiry: Option<u32>) -> Packet {
    let mut d = Disconnect::new(reason);
    d.properties.session_expiry_interval = expiry;
    Packet::Disconnect(d)
}

/// Publishes at QoS 0 / 1 / 2 and completes the flow (PUBACK; PUBREC, PUBREL, PUBCOMP), each
/// reply being the next packet with the same packet id.
pub async fn raw_publish(c: &mut RawClient, t: &str, qos: QoS, pkid: u16, payload: &[u8]) {
    match qos {
        QoS::AtMostOnce => c
            .send(&publish_packet(t, qos, pkid, payload))
            .await
            .unwrap(),
        QoS::AtLeastOnce => {
            publish_qos1(c, crate::packets::publish(t, qos, pkid, payload)).await;
        }
        QoS::ExactlyOnce => {
            c.send(&publish_packet(t, qos, pkid, payload))
                .await
                .unwrap();
            match c.expect_packet(T).await.unwrap() {
                Packet::PubRec(a) => assert_eq!(a.pkid, pkid),
                other => panic!("expected PUBREC, got {other:?}"),
            }
            c.send(&Packet::PubRel(PubAck::new(pkid))).await.unwrap();
            match c.expect_packet(T).await.unwrap() {
                Packet::PubComp(a) => assert_eq!(a.pkid, pkid),
                other => panic!("expected PUBCOMP, got {other:?}"),
            }
        }
    }
}

/// Sends a QoS 1 PUBLISH and returns its PUBACK (any reason code), which must be the next
/// packet and carry the same packet id.
pub async fn publish_qos1(c: &mut RawClient, p: Publish) -> PubAck {
    let pkid = p.pkid;
    let t = p.topic.as_str().to_owned();
    c.send(&Packet::Publish(p)).await.unwrap();
    match c.expect_packet(T).await.unwrap() {
        Packet::PubAck(a) => {
            assert_eq!(a.pkid, pkid, "PUBACK for {t}");
            a
        }
        other => panic!("publish {t}: expected PUBACK {pkid}, got {other:?}"),
    }
}

/// Publishes `payloads` in order on `t` at `qos` from a fresh 3.1.1 client (packet ids 1, 2,
/// ...), completing each flow before the next.
pub async fn publish_from_new_client(
    addr: SocketAddr,
    t: &str,
    qos: QoS,
    payloads: &[impl AsRef<[u8]>],
) {
    let mut p = raw_ok(
        addr,
        Protocol::V311,
        &crate::client_id("pub"),
        &Opts::default(),
    )
    .await;
    for (i, payload) in payloads.iter().enumerate() {
        raw_publish(&mut p, t, qos, i as u16 + 1, payload.as_ref()).await;
    }
}

/// Publishes QoS 1 messages `seqs` (payload: the sequence number as 4 big-endian bytes) on the
/// topics `topic_of` gives, at most `window` unacknowledged at a time (staying within the
/// broker's Receive Maximum, 3.3.4); every PUBACK must be a success (< 0x80).
pub async fn publish_seqs(
    c: &mut RawClient,
    protocol: Protocol,
    seqs: std::ops::Range<u32>,
    window: usize,
    topic_of: impl Fn(u32) -> String,
) -> anyhow::Result<()> {
    let all: Vec<u32> = seqs.collect();
    let mut pkid: u16 = 0;
    for chunk in all.chunks(window) {
        let mut bytes = bytes::BytesMut::new();
        for &seq in chunk {
            pkid = pkid % 60_000 + 1;
            let p = publish_packet(&topic_of(seq), QoS::AtLeastOnce, pkid, seq.to_be_bytes());
            crate::codec::encode(&p, protocol, &mut bytes)
                .map_err(|e| anyhow::anyhow!("encode: {e}"))?;
        }
        c.send_bytes(&bytes).await?;
        let mut acks = 0;
        while acks < chunk.len() {
            match c.expect_packet(T_BUSY).await? {
                Packet::PubAck(a) if a.reason.0 < 0x80 => acks += 1,
                other => anyhow::bail!("publisher expected PUBACK, got {other:?}"),
            }
        }
    }
    Ok(())
}

/// The next packet, which must be a PUBLISH.
pub async fn expect_publish(c: &mut RawClient) -> Publish {
    match c.expect_packet(T).await.unwrap() {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Receives a PUBLISH and acknowledges it fully (PUBACK, or PUBREC/PUBREL/PUBCOMP).
pub async fn recv_and_ack(c: &mut RawClient) -> Publish {
    let p = expect_publish(c).await;
    match p.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => c.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap(),
        QoS::ExactlyOnce => {
            c.send(&Packet::PubRec(PubAck::new(p.pkid))).await.unwrap();
            match c.expect_packet(T).await.unwrap() {
                Packet::PubRel(a) => assert_eq!(a.pkid, p.pkid),
                other => panic!("expected PUBREL, got {other:?}"),
            }
            c.send(&Packet::PubComp(PubAck::new(p.pkid))).await.unwrap();
        }
    }
    p
}

/// Asserts nothing arrives for `d` (the connection may stay open).
pub async fn expect_silence(c: &mut RawClient, d: Duration) {
    match c.recv(d).await.unwrap() {
        Recv::Timeout => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

/// Waits for the connection to close; returns the packets seen first.
pub async fn expect_closed(c: &mut RawClient) -> Vec<Packet> {
    c.expect_closed(T).await.unwrap()
}

/// The reason codes of the DISCONNECT packets in `seen`.
pub fn disconnect_reasons(seen: &[Packet]) -> Vec<u8> {
    seen.iter()
        .filter_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason.0),
            _ => None,
        })
        .collect()
}

/// Waits until the broker has logged that `client_id` disconnected. Its session (and will) is
/// handed on just after that line; a new connection with the same client id is accepted only
/// once that is done, while other clients' messages may still be routed to it as connected.
pub fn wait_disconnected(broker: &Broker, from: usize, client_id: &str) {
    wait_log_all(broker, from, &["client disconnected", client_id], T * 2);
}

/// Waits for a log line (from index `from`) containing every needle; returns it.
pub fn wait_log_all(broker: &Broker, from: usize, needles: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = broker
            .log()
            .into_iter()
            .skip(from)
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return l;
        }
        if Instant::now() >= deadline {
            panic!(
                "no log line with {needles:?} within {timeout:?}; log:\n{}",
                broker.log().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- positive signals
//
// Instead of watching a connection for a while to show that something does NOT arrive, a test
// publishes a sentinel after it on the same path and waits for the sentinel: the broker queues
// deliveries to one client in the order it routes them, so anything routed to that client
// earlier (or queued for it at CONNECT) comes first. Instead of sleeping through an interval
// under test, a test lets the broker measure time: a reference session's "session expired" log
// line proves that its Session Expiry Interval has passed on the broker's clock.

/// Payload of a sentinel message.
pub const SENTINEL: &str = "sentinel";

/// Publishes [`SENTINEL`] on `t` at QoS 1 from a fresh 3.1.1 client; returns once it is
/// acknowledged, by which time the broker has queued it for every matching subscriber.
pub async fn publish_sentinel(addr: SocketAddr, t: &str) {
    let mut p = raw_ok(
        addr,
        Protocol::V311,
        &crate::client_id("sentinel"),
        &Opts::default(),
    )
    .await;
    raw_publish(&mut p, t, QoS::AtLeastOnce, 1, SENTINEL.as_bytes()).await;
}

/// Receives and acknowledges PUBLISHes until a [`SENTINEL`] arrives (each within [`T`]);
/// returns the ones before it. Any other packet fails the test.
pub async fn publishes_before_sentinel(c: &mut RawClient) -> Vec<Publish> {
    let mut before = Vec::new();
    loop {
        let p = recv_and_ack(c).await;
        if p.payload == SENTINEL.as_bytes() {
            return before;
        }
        before.push(p);
    }
}

/// Asserts that nothing reaches `c` before a [`SENTINEL`] published now on `t` (a topic `c` is
/// subscribed to): the positive form of "nothing arrives" (`what` names the case).
pub async fn expect_sentinel_next(addr: SocketAddr, c: &mut RawClient, t: &str, what: &str) {
    publish_sentinel(addr, t).await;
    let before = publishes_before_sentinel(c).await;
    assert!(
        before.is_empty(),
        "{what}: expected nothing before the sentinel, got {before:?}"
    );
}

/// Subscribes `c` (QoS 1, packet id `pkid`) to a topic of its own for [`expect_sentinel_next`],
/// for a client with no subscription on the path under test; returns the topic.
pub async fn sentinel_subscription(c: &mut RawClient, pkid: u16) -> String {
    let t = format!("sentinel/{}", crate::client_id("s"));
    raw_subscribe(c, pkid, &t, QoS::AtLeastOnce).await;
    t
}

/// Parks a 5.0 session with Session Expiry Interval `secs` under a fresh client id (connect,
/// DISCONNECT, logged as disconnected) and returns the id: once [`wait_session_expired`] sees
/// it expire, at least `secs` seconds have passed on the broker's clock since this call.
pub async fn reference_session(broker: &Broker, secs: u32) -> String {
    let id = crate::client_id("clock");
    let mut c = raw_ok(broker.addr, Protocol::V5, &id, &Opts::persistent(secs)).await;
    let from = broker.log_len();
    c.send(&disconnect_packet(ReasonCode::NORMAL_DISCONNECTION, None))
        .await
        .unwrap();
    expect_closed(&mut c).await;
    wait_disconnected(broker, from, &id);
    id
}

/// Waits (bounded by `timeout`) for the broker's "session expired" line for `client_id`.
pub fn wait_session_expired(broker: &Broker, from: usize, client_id: &str, timeout: Duration) {
    wait_log_all(broker, from, &["session expired", client_id], timeout);
}

/// Connects a fresh 3.1.1 client to `addr` (a plain MQTT listener of `broker`), disconnects it
/// and waits for its "client disconnected" line. The broker writes its log in order, so every
/// line it wrote before this call is then in [`Broker::log`] too: returns how many lines come up
/// to that one (a log barrier, instead of waiting a while for late lines).
pub async fn log_barrier(broker: &Broker, addr: SocketAddr) -> usize {
    let id = format!("{}-barrier", crate::client_id("log"));
    let from = broker.log_len();
    let mut c = raw_ok(addr, Protocol::V311, &id, &Opts::default()).await;
    c.send(&disconnect_packet(ReasonCode::NORMAL_DISCONNECTION, None))
        .await
        .unwrap();
    expect_closed(&mut c).await;
    let line = wait_log_all(broker, from, &["client disconnected", &id], T * 2);
    let log = broker.log();
    from + log[from..].iter().position(|l| *l == line).unwrap() + 1
}

/// A plain socket for byte-exact exchanges (3.1.1 packets have one encoding only).
#[derive(Debug)]
pub struct ByteConn {
    pub stream: TcpStream,
}

impl ByteConn {
    pub async fn connect(addr: SocketAddr) -> ByteConn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        ByteConn { stream }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads exactly `expected.len()` bytes (bounded) and asserts they are `expected`.
    pub async fn expect(&mut self, expected: &[u8], what: &str) {
        let mut got = vec![0u8; expected.len()];
        match tokio::time::timeout(T, self.stream.read_exact(&mut got)).await {
            Ok(Ok(_)) => assert_eq!(got, expected, "{what}: bytes differ"),
            Ok(Err(e)) => panic!("{what}: read failed: {e}"),
            Err(_) => panic!("{what}: nothing within {T:?}"),
        }
    }

    /// Reads until the server closes the connection (bounded by [`T`]); returns what came first.
    pub async fn read_until_closed(&mut self, what: &str) -> Vec<u8> {
        let mut all = Vec::new();
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let mut b = [0u8; 256];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return all,
                Ok(Ok(n)) => all.extend_from_slice(&b[..n]),
                Err(_) => panic!("{what}: connection still open after {T:?}; got {all:02x?}"),
            }
        }
    }

    /// Asserts no byte arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration, what: &str) {
        let mut b = [0u8; 64];
        if let Ok(r) = tokio::time::timeout(d, self.stream.read(&mut b)).await {
            match r {
                Ok(0) => panic!("{what}: connection closed"),
                Ok(n) => panic!("{what}: unexpected bytes {:02x?}", &b[..n]),
                Err(e) => panic!("{what}: read failed: {e}"),
            }
        }
    }
}

/// A 3.1.1 CONNECT: Clean Session as given, keepalive 60.
pub fn connect_311(id: &str, clean: bool) -> Vec<u8> {
    crate::connect_bytes_with(b"MQTT", 4, if clean { 0x02 } else { 0x00 }, false, id)
}

/// A 3.1.1 PUBLISH's bytes (`first` is the whole first byte: type, DUP, QoS, RETAIN).
pub fn publish_311(first: u8, t: &str, pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
    publish_bytes(Protocol::V311, first, t.as_bytes(), pkid, &[], payload)
}

/// A PUBLISH's bytes, also malformed ones: `first` byte as given, raw topic bytes, the packet
/// id if given, at 5.0 the property block `props` (encoded as given), then `payload`.
pub fn publish_bytes(
    protocol: Protocol,
    first: u8,
    topic: &[u8],
    pkid: Option<u16>,
    props: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic);
    if let Some(id) = pkid {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if protocol.is_v5() {
        encode_remaining_length(props.len(), &mut body);
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    frame(first, &body)
}

/// A 3.1.1 SUBSCRIBE of one filter.
pub fn subscribe_311(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(qos);
    frame(0x82, &body)
}

/// A two-byte-body ack (PUBACK 0x40, PUBREC 0x50, PUBREL 0x62, PUBCOMP 0x70).
pub fn ack(first: u8, pkid: u16) -> Vec<u8> {
    let [hi, lo] = pkid.to_be_bytes();
    vec![first, 2, hi, lo]
}

pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    encode_remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A 3.1.1 connection over [`ByteConn`], CONNACK checked byte for byte.
pub async fn bytes_connect(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    session_present: bool,
) -> ByteConn {
    let mut c = ByteConn::connect(addr).await;
    c.send(&connect_311(id, clean)).await;
    c.expect(&[0x20, 0x02, u8::from(session_present), 0x00], "CONNACK")
        .await;
    c
}

// ---------------------------------------------------------------- rumqttc

/// A rumqttc v4 (3.1.1) client whose event loop runs in a task; incoming PUBLISHes go to `rx`.
#[derive(Debug)]
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub rx: mpsc::UnboundedReceiver<rumqttc::Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl V4 {
    pub async fn connect(addr: SocketAddr, id: &str, clean: bool) -> V4 {
        let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut ev) = rumqttc::AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let mut c = V4 { client, rx, task };
        match c.next(|p| matches!(p, rumqttc::Packet::ConnAck(_))).await {
            rumqttc::Packet::ConnAck(a) => {
                assert_eq!(a.code, rumqttc::ConnectReturnCode::Success, "{a:?}")
            }
            _ => unreachable!(),
        }
        c
    }

    /// The next incoming packet matching `f` (others are skipped), within [`T`].
    pub async fn next(&mut self, f: impl Fn(&rumqttc::Packet) -> bool) -> rumqttc::Packet {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) if f(&p) => return p,
                Ok(Some(_)) => {}
                Ok(None) => panic!("rumqttc event loop ended"),
                Err(_) => panic!("no matching packet within {T:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        self.next(|p| matches!(p, rumqttc::Packet::SubAck(_))).await;
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        match self
            .next(|p| matches!(p, rumqttc::Packet::Publish(_)))
            .await
        {
            rumqttc::Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    }

    /// Asserts no PUBLISH arrives for `d`.
    pub async fn no_publish(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(rumqttc::Packet::Publish(p))) => panic!("unexpected PUBLISH {p:?}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }
}

impl Drop for V4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub use rumqttc::v5::mqttbytes::v5::Packet as P5;

/// A rumqttc v5 client whose event loop runs in a task; incoming packets go to `rx`.
#[derive(Debug)]
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub rx: mpsc::UnboundedReceiver<P5>,
    task: tokio::task::JoinHandle<()>,
}

impl V5 {
    pub async fn connect(addr: SocketAddr, id: &str) -> V5 {
        let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut ev) = rumqttc::v5::AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let mut c = V5 { client, rx, task };
        c.next(|p| matches!(p, P5::ConnAck(_))).await;
        c
    }

    pub async fn next(&mut self, f: impl Fn(&P5) -> bool) -> P5 {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) if f(&p) => return p,
                Ok(Some(_)) => {}
                Ok(None) => panic!("rumqttc v5 event loop ended"),
                Err(_) => panic!("no matching packet within {T:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        self.next(|p| matches!(p, P5::SubAck(_))).await;
    }

    pub async fn next_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        match self.next(|p| matches!(p, P5::Publish(_))).await {
            P5::Publish(p) => p,
            _ => unreachable!(),
        }
    }

    pub async fn no_publish(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(P5::Publish(p))) => panic!("unexpected PUBLISH {p:?}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
