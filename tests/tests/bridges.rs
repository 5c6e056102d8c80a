//! Bridges (issue 15, `[[bridges]]`): the real `sluice` binary bridged to Debian's Mosquitto
//! broker (`/usr/sbin/mosquitto`) on loopback ports, over MQTT 5.0 and 3.1.1 (with the bridge
//! bit, which Mosquitto logs as "New bridge connected"):
//! * `out` messages published on Sluice reach Mosquitto's subscribers, `in` messages published
//!   on Mosquitto reach Sluice's, with `local_prefix` / `remote_prefix` mapped both ways;
//! * `both` does not loop: each message reaches each side once (5.0 No Local, the 3.1.1 bridge
//!   bit, and No Local on the local session's subscriptions);
//! * the remote going away: Mosquitto stopped (with persistence), QoS 1 messages published
//!   and acknowledged on Sluice meanwhile, Mosquitto started again on the same port: every one
//!   arrives, in order, once; also across a `kill -9` of Sluice (durable mode);
//! * TLS to the remote with a client certificate (rustls).
//!
//! Every wait is on a condition (a log line, a message) with a generous deadline; each
//! process is stopped by its PID.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use sluice_tests::admin::AdminClient;
use sluice_tests::clients::{publish_packet, publish_qos1, raw_ok, raw_subscribe, Opts};
use sluice_tests::codec::{Packet, Protocol, PubAck, Publish, QoS};
use sluice_tests::mosquitto::Mosquitto;
use sluice_tests::{workspace_root, Broker, BrokerOpts, RawClient};

/// Deadline for anything that crosses the bridge (a reconnect backs off up to 2 s here).
const WAIT: Duration = Duration::from_secs(45);

/// The `[[bridges]]` section of a bridge named `up` to `remote`.
fn bridge_toml(remote: SocketAddr, protocol: &str, topics: &str, extra: &str) -> String {
    format!(
        "[[bridges]]\nname = \"up\"\naddress = \"{remote}\"\nprotocol = \"{protocol}\"\n\
         client_id = \"edge-{protocol}\"\nkeep_alive = 5\nmax_backoff_seconds = 2\n{extra}\n\
         topics = [ {topics} ]\n"
    )
}

/// Sluice with that bridge, its data in `data` when given; returns once the bridge is ready
/// (connected, subscriptions in place on both sides).
fn sluice(toml: &str, data: Option<&Path>) -> Broker {
    let mut opts = BrokerOpts {
        config: toml.into(),
        ..Default::default()
    };
    if let Some(d) = data {
        opts.env = vec![("SLUICE__PERSISTENCE__DIR".into(), d.display().to_string())];
    }
    let b = Broker::start_with(opts).expect("start sluice");
    b.wait_log("bridge ready", WAIT)
        .expect("the bridge connects to mosquitto");
    b
}

fn v(protocol: &str) -> Protocol {
    if protocol == "5" {
        Protocol::V5
    } else {
        Protocol::V311
    }
}

/// The next PUBLISH (within [`WAIT`]), acknowledged; other packets are skipped.
async fn recv(c: &mut RawClient, what: &str) -> Publish {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let p = c
            .expect_packet(left)
            .await
            .unwrap_or_else(|e| panic!("{what}: no PUBLISH within {WAIT:?}: {e}"));
        if let Packet::Publish(p) = p {
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => c.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap(),
                QoS::ExactlyOnce => panic!("{what}: the tests use QoS 0 and 1"),
            }
            return p;
        }
    }
}

/// (topic, payload) of the next PUBLISH.
async fn next(c: &mut RawClient, what: &str) -> (String, String) {
    let p = recv(c, what).await;
    (
        p.topic.as_str().to_owned(),
        String::from_utf8_lossy(&p.payload).into_owned(),
    )
}

fn tp(t: &str, p: &str) -> (String, String) {
    (t.to_owned(), p.to_owned())
}

/// Publishes at QoS 1 and waits for the PUBACK.
async fn publish(c: &mut RawClient, pkid: u16, topic: &str, payload: &str) {
    let Packet::Publish(p) = publish_packet(topic, QoS::AtLeastOnce, pkid, payload) else {
        unreachable!()
    };
    publish_qos1(c, p).await;
}

async fn client(addr: SocketAddr, protocol: Protocol, id: &str) -> RawClient {
    raw_ok(addr, protocol, id, &Opts::default()).await
}

async fn subscriber(addr: SocketAddr, protocol: Protocol, id: &str, filter: &str) -> RawClient {
    let mut c = client(addr, protocol, id).await;
    let ack = raw_subscribe(&mut c, 1, filter, QoS::AtLeastOnce).await;
    assert!(ack.reasons[0].0 < 0x80, "{id}: SUBACK {ack:?}");
    c
}

/// `out` and `in` with prefixes: local `sensors/#` goes to `site1/sensors/#` at the remote,
/// remote `cloud/commands/#` comes in as `edge/commands/#`; other topics stay where they are.
async fn out_and_in_with_prefixes(protocol: &str) {
    let dir = tempfile::tempdir().unwrap();
    let m = Mosquitto::start(dir.path(), Mosquitto::PERSISTENT);
    let s = sluice(
        &bridge_toml(
            m.addr,
            protocol,
            r#"{ filter = "sensors/#", direction = "out", qos = 1, local_prefix = "", remote_prefix = "site1/" },
               { filter = "commands/#", direction = "in", qos = 1, local_prefix = "edge/", remote_prefix = "cloud/" }"#,
            "",
        ),
        None,
    );
    let log = m.log();
    if protocol == "3.1.1" {
        assert!(
            log.contains("New bridge connected"),
            "3.1.1: the bridge bit (protocol level 0x84) makes Mosquitto see a bridge:\n{log}"
        );
    }
    let mut remote_sub = subscriber(m.addr, Protocol::V311, "remote-sub", "#").await;
    let mut local_sub = subscriber(s.addr, Protocol::V5, "local-sub", "edge/#").await;

    let mut local_pub = client(s.addr, v(protocol), "local-pub").await;
    publish(&mut local_pub, 1, "sensors/t1", "out-1").await;
    publish(&mut local_pub, 2, "elsewhere/t1", "not bridged").await;
    publish(&mut local_pub, 3, "sensors/t2", "out-2").await;
    assert_eq!(
        next(&mut remote_sub, "out 1").await,
        tp("site1/sensors/t1", "out-1")
    );
    assert_eq!(
        next(&mut remote_sub, "out 2").await,
        tp("site1/sensors/t2", "out-2"),
        "elsewhere/t1 is not bridged"
    );

    let mut remote_pub = client(m.addr, Protocol::V311, "remote-pub").await;
    publish(&mut remote_pub, 1, "cloud/commands/go", "in-1").await;
    publish(&mut remote_pub, 2, "commands/go", "no prefix: not bridged").await;
    publish(&mut remote_pub, 3, "cloud/commands/stop", "in-2").await;
    assert_eq!(
        next(&mut local_sub, "in 1").await,
        tp("edge/commands/go", "in-1")
    );
    assert_eq!(
        next(&mut local_sub, "in 2").await,
        tp("edge/commands/stop", "in-2"),
        "commands/go has no remote prefix"
    );
    // The remote subscriber saw its own side's messages and nothing of Sluice's other topics.
    for expected in [
        tp("cloud/commands/go", "in-1"),
        tp("commands/go", "no prefix: not bridged"),
        tp("cloud/commands/stop", "in-2"),
    ] {
        assert_eq!(next(&mut remote_sub, "remote side").await, expected);
    }
    bridge_is_visible(&s, "up", 2, 2).await;
}

/// The bridge `name` in the broker's metrics (`/metrics` of the admin listener: connected, and
/// `out` / `in` messages forwarded) and in `$SYS/broker/connection/{name}/state` (`1`).
async fn bridge_is_visible(s: &Broker, name: &str, out: u64, inbound: u64) {
    let api = AdminClient::new(s.admin_addr().expect("admin listener logged"));
    let want = [
        format!("sluice_bridge_connected{{bridge=\"{name}\"}} 1"),
        format!("sluice_bridge_forwarded_total{{bridge=\"{name}\",direction=\"out\"}} {out}"),
        format!("sluice_bridge_forwarded_total{{bridge=\"{name}\",direction=\"in\"}} {inbound}"),
    ];
    // The remote's PUBACK of the last `out` message may still be on its way: polled.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, text) = api
            .call_text(reqwest::Method::GET, "/metrics", None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{text}");
        if want.iter().all(|w| text.lines().any(|l| l == w)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bridge metrics {want:?} not in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `$SYS` is published every `sys.interval` (10 s): the first publication may predate the
    // bridge's connection (`0`); the one after it says `1`.
    let topic = format!("$SYS/broker/connection/{name}/state");
    let mut sys = subscriber(s.addr, Protocol::V311, "sys-watch", &topic).await;
    loop {
        let (t, payload) = next(&mut sys, "bridge state in $SYS").await;
        assert_eq!(t, topic);
        if payload == "1" {
            break;
        }
        assert_eq!(payload, "0", "{topic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_and_in_with_prefixes_v5() {
    out_and_in_with_prefixes("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_and_in_with_prefixes_311() {
    out_and_in_with_prefixes("3.1.1").await;
}

/// `direction = "both"`: a message published on either side reaches the subscribers of each
/// side exactly once. Echoes would travel the same connections as the markers published after
/// them, so they would arrive before the markers: each subscriber's sequence is exact.
async fn both_does_not_loop(protocol: &str) {
    let dir = tempfile::tempdir().unwrap();
    let m = Mosquitto::start(dir.path(), Mosquitto::PERSISTENT);
    let s = sluice(
        &bridge_toml(
            m.addr,
            protocol,
            r#"{ filter = "shared/#", direction = "both", qos = 1 }"#,
            "",
        ),
        None,
    );
    let mut remote_sub = subscriber(m.addr, Protocol::V311, "remote-sub", "shared/#").await;
    let mut local_sub = subscriber(s.addr, Protocol::V5, "local-sub", "shared/#").await;
    let mut local_pub = client(s.addr, Protocol::V311, "local-pub").await;
    let mut remote_pub = client(m.addr, Protocol::V311, "remote-pub").await;

    publish(&mut local_pub, 1, "shared/a", "from sluice").await;
    assert_eq!(
        next(&mut remote_sub, "a at the remote").await,
        tp("shared/a", "from sluice")
    );
    publish(&mut remote_pub, 1, "shared/b", "from mosquitto").await;
    assert_eq!(
        next(&mut remote_sub, "b at the remote").await,
        tp("shared/b", "from mosquitto")
    );
    assert_eq!(
        next(&mut local_sub, "a locally").await,
        tp("shared/a", "from sluice")
    );
    assert_eq!(
        next(&mut local_sub, "b locally").await,
        tp("shared/b", "from mosquitto"),
        "shared/a came back from the remote"
    );
    publish(&mut local_pub, 2, "shared/z", "marker from sluice").await;
    assert_eq!(
        next(&mut remote_sub, "z at the remote").await,
        tp("shared/z", "marker from sluice"),
        "shared/b went back out to the remote"
    );
    publish(&mut remote_pub, 2, "shared/y", "marker from mosquitto").await;
    assert_eq!(
        next(&mut local_sub, "z locally").await,
        tp("shared/z", "marker from sluice")
    );
    assert_eq!(
        next(&mut local_sub, "y locally").await,
        tp("shared/y", "marker from mosquitto"),
        "shared/z came back from the remote"
    );
    assert_eq!(
        next(&mut remote_sub, "y at the remote").await,
        tp("shared/y", "marker from mosquitto")
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_do_not_loop_v5() {
    both_does_not_loop("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_do_not_loop_311() {
    both_does_not_loop("3.1.1").await;
}

/// How many QoS 1 messages are published while the remote is away.
const OUTAGE_MESSAGES: usize = 200;

/// The remote goes away: Mosquitto is stopped (it saves its sessions), messages are published
/// and acknowledged on Sluice, Sluice is killed with SIGKILL when `kill_sluice` (durable
/// mode: what it acknowledged is on disk, the bridge's session with it) and started again,
/// Mosquitto is started again on the same port: a persistent subscriber there gets every
/// message, in order, once.
async fn remote_away(protocol: &str, kill_sluice: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut m = Mosquitto::start(dir.path(), Mosquitto::PERSISTENT);
    let toml = bridge_toml(
        m.addr,
        protocol,
        r#"{ filter = "q/#", direction = "out", qos = 1, remote_prefix = "edge/" }"#,
        "",
    );
    let mut s = sluice(&toml, Some(data.path()));
    // A persistent subscriber at the remote; it goes offline with the remote and comes back.
    let sub_opts = Opts::persistent(u32::MAX);
    let mut remote_sub = raw_ok(m.addr, Protocol::V311, "remote-sub", &sub_opts).await;
    raw_subscribe(&mut remote_sub, 1, "edge/q/#", QoS::AtLeastOnce).await;
    let mut local_pub = client(s.addr, v(protocol), "local-pub").await;
    publish(&mut local_pub, 1, "q/before", "before").await;
    assert_eq!(
        next(&mut remote_sub, "before the outage").await,
        tp("edge/q/before", "before")
    );
    drop(remote_sub);

    let from = s.log_len();
    m.stop();
    s.wait_log_from(from, "bridge disconnected", WAIT)
        .expect("the bridge sees the remote go");
    let mut expected = Vec::new();
    for i in 0..OUTAGE_MESSAGES {
        let payload = format!("m{i:04}");
        // Acknowledged by Sluice while the remote is away.
        publish(&mut local_pub, (i + 2) as u16, "q/seq", &payload).await;
        expected.push(tp("edge/q/seq", &payload));
    }
    drop(local_pub);
    if kill_sluice {
        s.kill();
        s = sluice_without_remote(&toml, data.path());
    }
    let from = s.log_len();
    m.restart();
    s.wait_log_from(from, "bridge ready", WAIT)
        .expect("the bridge reconnects to the restarted remote");
    let mut remote_sub = raw_ok(m.addr, Protocol::V311, "remote-sub", &sub_opts).await;
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(next(&mut remote_sub, "after the outage").await);
    }
    assert_eq!(got, expected, "every message, in order, once");
    // Nothing more behind them: a marker published now is the next message.
    let mut local_pub = client(s.addr, Protocol::V311, "local-pub-2").await;
    publish(&mut local_pub, 1, "q/end", "end").await;
    assert_eq!(
        next(&mut remote_sub, "the end marker").await,
        tp("edge/q/end", "end")
    );
}

/// Sluice started again on its data directory while its remote is still down: it is up once
/// it listens and has tried the remote once.
fn sluice_without_remote(toml: &str, data: &Path) -> Broker {
    let b = Broker::on_data_dir(data, toml);
    b.wait_log("bridge connect failed", WAIT)
        .expect("the restarted bridge tries the remote");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_going_away_loses_nothing_v5() {
    remote_away("5", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_going_away_loses_nothing_311() {
    remote_away("3.1.1", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_queue_survives_kill_9_of_sluice() {
    remote_away("5", true).await;
}

/// TLS to the remote (rustls), with a client certificate Mosquitto requires. The remote's
/// subscriber uses a second, plain listener of the same Mosquitto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_remote_with_a_client_certificate() {
    let certs = workspace_root().join("certs");
    let c = |f: &str| certs.join(f).display().to_string();
    let plain_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().unwrap();
    let m = Mosquitto::start(
        dir.path(),
        &format!(
            "{}cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nlistener {plain_port} 127.0.0.1",
            Mosquitto::PERSISTENT,
            c("ca.pem"),
            c("server.pem"),
            c("server.key")
        ),
    );
    let tls = format!(
        "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        c("ca.pem"),
        c("client.pem"),
        c("client.key")
    );
    let s = sluice(
        &bridge_toml(
            m.addr,
            "5",
            r#"{ filter = "secure/#", direction = "both", qos = 1 }"#,
            &tls,
        ),
        None,
    );
    assert!(
        m.log().contains("New client connected"),
        "the bridge is a TLS client of {}",
        m.addr
    );
    let plain = SocketAddr::from(([127, 0, 0, 1], plain_port));
    let mut remote_sub = subscriber(plain, Protocol::V311, "remote-sub", "secure/#").await;
    let mut local_sub = subscriber(s.addr, Protocol::V5, "local-sub", "secure/in").await;
    let mut local_pub = client(s.addr, Protocol::V5, "local-pub").await;
    publish(&mut local_pub, 1, "secure/out", "over tls").await;
    assert_eq!(
        next(&mut remote_sub, "out over TLS").await,
        tp("secure/out", "over tls")
    );
    let mut remote_pub = client(plain, Protocol::V311, "remote-pub").await;
    publish(&mut remote_pub, 1, "secure/in", "back over tls").await;
    assert_eq!(
        next(&mut local_sub, "in over TLS").await,
        tp("secure/in", "back over tls")
    );
}

/// Messages queue for a bridge from start-up on, before it ever reached its remote (the local
/// session is subscribed first); and a bridge removed from the configuration lets its
/// session go at the next start, with whatever was still queued for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queue_from_start_up_and_a_removed_bridge_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut m = Mosquitto::start(dir.path(), Mosquitto::PERSISTENT);
    let sub_opts = Opts::persistent(u32::MAX);
    let mut remote_sub = raw_ok(m.addr, Protocol::V311, "remote-sub", &sub_opts).await;
    raw_subscribe(&mut remote_sub, 1, "q/#", QoS::AtLeastOnce).await;
    drop(remote_sub);
    m.stop();

    let toml = bridge_toml(
        m.addr,
        "5",
        r#"{ filter = "q/#", direction = "out", qos = 1 }"#,
        "",
    );
    let mut s = sluice_without_remote(&toml, data.path());
    let mut local_pub = client(s.addr, Protocol::V311, "local-pub").await;
    let expected: Vec<_> = (0..20)
        .map(|i| tp("q/early", &format!("e{i:02}")))
        .collect();
    for (i, (t, p)) in expected.iter().enumerate() {
        publish(&mut local_pub, i as u16 + 1, t, p).await;
    }
    let from = s.log_len();
    m.restart();
    s.wait_log_from(from, "bridge ready", WAIT).unwrap();
    let mut remote_sub = raw_ok(m.addr, Protocol::V311, "remote-sub", &sub_opts).await;
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(next(&mut remote_sub, "queued before the first connection").await);
    }
    assert_eq!(got, expected);

    // The remote away again, three messages queued, then the bridge leaves the configuration.
    let from = s.log_len();
    m.stop();
    s.wait_log_from(from, "bridge disconnected", WAIT).unwrap();
    for i in 0..3u16 {
        publish(&mut local_pub, 100 + i, "q/late", "late").await;
    }
    drop(local_pub);
    s.terminate(WAIT).expect("sluice stops on SIGTERM");
    let mut s = Broker::on_data_dir(data.path(), "");
    let line = s
        .wait_log("bridge no longer configured", WAIT)
        .expect("the removed bridge's session ends");
    assert!(line.contains("queued=3"), "{line}");
    s.terminate(WAIT).expect("sluice stops on SIGTERM");
    let s = Broker::on_data_dir(data.path(), "");
    let barrier = client(s.addr, Protocol::V311, "barrier").await;
    drop(barrier);
    assert!(
        !s.log()
            .iter()
            .any(|l| l.contains("bridge no longer configured")),
        "the session is gone for good"
    );
}

/// With an ACL, the bridge's local side is the user `$bridge/{name}` (its section grants what
/// it may read for `out` and write for `in`); and no network client may take its client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_has_its_own_acl_section_and_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mosquitto::start(dir.path(), Mosquitto::PERSISTENT);
    let acl =
        "topic readwrite #\nuser $bridge/up\ntopic read sensors/#\ntopic write edge/commands/ok\n";
    let config = format!(
        "[auth]\nacl_file = \"acl\"\n{}",
        bridge_toml(
            m.addr,
            "5",
            r#"{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "site1/" },
               { filter = "commands/#", direction = "in", qos = 1, local_prefix = "edge/", remote_prefix = "cloud/" }"#,
            "",
        )
    );
    let s = Broker::start_with(BrokerOpts {
        config,
        files: vec![("acl".into(), acl.into())],
        ..Default::default()
    })
    .expect("start sluice");
    s.wait_log("bridge ready", WAIT).unwrap();
    let mut remote_sub = subscriber(m.addr, Protocol::V311, "remote-sub", "site1/#").await;
    let mut local_sub = subscriber(s.addr, Protocol::V5, "local-sub", "edge/#").await;
    let mut local_pub = client(s.addr, Protocol::V5, "local-pub").await;
    publish(&mut local_pub, 1, "sensors/t", "read by the bridge").await;
    assert_eq!(
        next(&mut remote_sub, "out").await,
        tp("site1/sensors/t", "read by the bridge")
    );
    let mut remote_pub = client(m.addr, Protocol::V311, "remote-pub").await;
    publish(
        &mut remote_pub,
        1,
        "cloud/commands/denied",
        "not for the bridge",
    )
    .await;
    publish(&mut remote_pub, 2, "cloud/commands/ok", "allowed").await;
    assert_eq!(
        next(&mut local_sub, "in").await,
        tp("edge/commands/ok", "allowed"),
        "the ACL does not let the bridge write edge/commands/denied"
    );

    for protocol in [Protocol::V5, Protocol::V311] {
        let (_c, ack) =
            sluice_tests::clients::raw_connect(s.addr, protocol, "$bridge/up", &Opts::default())
                .await;
        assert_eq!(
            ack.reason,
            sluice_tests::codec::ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "{protocol:?}"
        );
    }
}

/// The remote stopped in the middle of a stream: messages in flight to it when it went are
/// sent again (same packet id, DUP) once it is back. A persistent subscriber there gets every
/// message, first occurrences in publish order, and duplicates only from what was in flight
/// (the remote's Receive Maximum, plus the subscriber's own unacknowledged window).
async fn remote_stops_mid_stream(protocol: &str) {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mosquitto::start(dir.path(), Mosquitto::PERSISTENT);
    let s = sluice(
        &bridge_toml(
            m.addr,
            protocol,
            r#"{ filter = "s/#", direction = "out", qos = 1 }"#,
            "",
        ),
        None,
    );
    let sub_opts = Opts::persistent(u32::MAX);
    let mut remote_sub = raw_ok(m.addr, Protocol::V311, "remote-sub", &sub_opts).await;
    raw_subscribe(&mut remote_sub, 1, "s/#", QoS::AtLeastOnce).await;
    let addr = s.addr;
    let publisher = tokio::spawn(async move {
        let mut c = client(addr, Protocol::V311, "local-pub").await;
        for i in 0..N {
            publish(&mut c, (i % 60000 + 1) as u16, "s/seq", &format!("{i:05}")).await;
        }
    });
    let mut got = Vec::new();
    while got.len() < 100 {
        got.push(next(&mut remote_sub, "before the stop").await.1);
    }
    let from = s.log_len();
    m.stop();
    drop(remote_sub);
    s.wait_log_from(from, "bridge disconnected", WAIT).unwrap();
    publisher
        .await
        .expect("every message acknowledged by Sluice");
    let from = s.log_len();
    m.restart();
    s.wait_log_from(from, "bridge connected", WAIT).unwrap();
    let mut remote_sub = raw_ok(m.addr, Protocol::V311, "remote-sub", &sub_opts).await;
    let mut seen = std::collections::HashSet::new();
    let mut firsts = Vec::new();
    for p in &got {
        if seen.insert(p.clone()) {
            firsts.push(p.clone());
        }
    }
    while seen.len() < N {
        let p = next(&mut remote_sub, "after the restart").await.1;
        got.push(p.clone());
        if seen.insert(p.clone()) {
            firsts.push(p);
        }
    }
    let expected: Vec<String> = (0..N).map(|i| format!("{i:05}")).collect();
    assert_eq!(firsts, expected, "each message, in publish order");
    let duplicates = got.len() - N;
    assert!(
        duplicates <= 64 + 64,
        "{duplicates} duplicates: more than were in flight"
    );
    // Nothing more behind them.
    let mut c = client(s.addr, Protocol::V311, "local-pub-2").await;
    publish(&mut c, 1, "s/end", "end").await;
    loop {
        let (t, p) = next(&mut remote_sub, "the end marker").await;
        if t == "s/end" {
            break;
        }
        assert!(
            seen.contains(&p),
            "{t} {p}: only duplicates before the marker"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_stopping_mid_stream_loses_nothing_v5() {
    remote_stops_mid_stream("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_stopping_mid_stream_loses_nothing_311() {
    remote_stops_mid_stream("3.1.1").await;
}

/// Another Sluice as the remote. Over 3.1.1 it refuses the bridge bit (protocol level 0x84:
/// CONNACK return code 1), and the bridge connects again as a plain 3.1.1 client, as
/// Mosquitto's bridges do; over 5.0 No Local needs nothing of the kind.
async fn sluice_to_sluice(protocol: &str) {
    let remote = Broker::start();
    let edge = sluice(
        &bridge_toml(
            remote.addr,
            protocol,
            r#"{ filter = "up/#", direction = "out", qos = 1 },
               { filter = "down/#", direction = "in", qos = 1 }"#,
            "",
        ),
        None,
    );
    let fell_back = edge
        .log()
        .iter()
        .any(|l| l.contains("bridge connect failed") && l.contains("bridge bit"));
    assert_eq!(fell_back, protocol == "3.1.1", "{:#?}", edge.log());
    let mut remote_sub = subscriber(remote.addr, Protocol::V5, "remote-sub", "up/#").await;
    let mut edge_sub = subscriber(edge.addr, Protocol::V5, "edge-sub", "down/#").await;
    let mut edge_pub = client(edge.addr, Protocol::V5, "edge-pub").await;
    publish(&mut edge_pub, 1, "up/1", "to the remote").await;
    assert_eq!(
        next(&mut remote_sub, "out").await,
        tp("up/1", "to the remote")
    );
    let mut remote_pub = client(remote.addr, Protocol::V5, "remote-pub").await;
    publish(&mut remote_pub, 1, "down/1", "to the edge").await;
    assert_eq!(next(&mut edge_sub, "in").await, tp("down/1", "to the edge"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sluice_as_the_remote_v5() {
    sluice_to_sluice("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sluice_as_the_remote_311() {
    sluice_to_sluice("3.1.1").await;
}
