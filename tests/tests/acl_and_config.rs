//! Configuration checking (`--check-config`, environment overrides, exit code 2), the
//! Mosquitto-format ACL, graceful shutdown and what the log says (and must not say).

use std::process::Output;
use std::time::Duration;

use sluice_tests::clients::{
    self, publishes_before_sentinel, raw_ok, wait_log_all, Opts, SENTINEL,
};
use sluice_tests::codec::{
    Packet, Protocol, PubAck, QoS, ReasonCode, Subscribe, SubscribeProperties, Subscription,
    SubscriptionOptions,
};
use sluice_tests::{mosquitto_pub, packets, run_sluice, Broker, BrokerOpts, RawClient};

const WAIT: Duration = Duration::from_secs(5);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `sluice --check-config --config <toml>` (in a scratch directory) with `env`.
fn check_config(toml: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sluice.toml"), toml).unwrap();
    run_sluice(
        &["--check-config", "--config", "sluice.toml"],
        env,
        dir.path(),
    )
    .unwrap()
}

/// Asserts exit code 2 and that stderr names each of `needles`.
fn assert_refused(out: &Output, needles: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should contain {n:?}: {err}");
    }
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
}

/// `--check-config` with a valid file prints the effective configuration (file values and
/// defaults) and exits 0. (README "Running it"; not a protocol clause.)
#[test]
fn check_config_valid_file_prints_effective_config() {
    let out = check_config(
        "[mqtt]\nmax_keepalive = 120\n\n[[listeners]]\nbind = \"127.0.0.1:18999\"\n",
        &[],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        "max_keepalive = 120",
        "max_packet_size = 1048576",
        "receive_maximum = 256",
        "allow_anonymous = true",
        "bind = \"127.0.0.1:18999\"",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    // What it prints is itself a valid configuration.
    let again = check_config(&stdout, &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), stdout);
}

/// Queue bounds are sized for where queues live (README, Limits): with a store (`durable`, the
/// default) a queue waits on disk, so a peak far above 100,000 messages is absorbed instead of
/// dropped (10,000,000 messages / 4 GiB per queue, memory still bounded); in `memory` mode the
/// bounds stay memory-sized.
#[test]
fn check_config_sizes_queue_bounds_for_where_queues_live() {
    let out = check_config("", &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        "max_queued_messages = 10000000",
        "max_queued_bytes = 4294967296",
        "max_queued_memory_bytes = 67108864",
    ] {
        assert!(stdout.contains(line), "durable: {line:?} in:\n{stdout}");
    }
    let out = check_config("[persistence]\nmode = \"memory\"\n", &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        "max_queued_messages = 100000",
        "max_queued_bytes = 67108864",
    ] {
        assert!(stdout.contains(line), "memory: {line:?} in:\n{stdout}");
    }
}

/// `SLUICE__MQTT__MAX_KEEPALIVE=30` wins over the file and shows in the effective config.
#[test]
fn check_config_env_override_shows() {
    let out = check_config(
        "[mqtt]\nmax_keepalive = 120\n",
        &[("SLUICE__MQTT__MAX_KEEPALIVE", "30")],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("max_keepalive = 30"), "{stdout}");
    assert!(!stdout.contains("max_keepalive = 120"), "{stdout}");
}

/// An unknown key exits 2 naming the key, its value and why.
#[test]
fn check_config_unknown_key() {
    let out = check_config("[mqtt]\nmax_keepalivee = 4321\n", &[]);
    assert_refused(&out, &["mqtt.max_keepalivee", "unknown"]);
    // README: "prints the offending key, value and reason".
    assert_refused(&out, &["4321"]);
}

/// A value of the wrong type exits 2 naming the key, the value and the expected type.
#[test]
fn check_config_wrong_type() {
    let out = check_config("[mqtt]\nmax_packet_size = \"big\"\n", &[]);
    assert_refused(&out, &["mqtt.max_packet_size", "big", "expected"]);
    let out = check_config(
        "[mqtt]\nmax_keepalive = 120\n",
        &[("SLUICE__MQTT__MAX_KEEPALIVE", "soon")],
    );
    assert_refused(&out, &["mqtt.max_keepalive", "soon"]);
}

/// Values out of range exit 2 naming the key, the value and the reason.
#[test]
fn check_config_bad_values() {
    let out = check_config("[mqtt]\nreceive_maximum = 0\n", &[]);
    assert_refused(&out, &["mqtt.receive_maximum", "0", "must be"]);
    let out = check_config("[[listeners]]\nbind = \"nowhere\"\n", &[]);
    assert_refused(&out, &["listeners[0].bind", "nowhere", "IP:PORT"]);
    let out = check_config("[auth]\nacl_file = \"missing.acl\"\n", &[]);
    assert_refused(&out, &["auth.acl_file", "missing.acl", "no such file"]);
}

/// A bad configuration on a normal start exits 2 before anything is bound.
#[test]
fn bad_config_on_start_exits_2_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sluice.toml"), "[mqtt]\nmax_inflight = 0\n").unwrap();
    let out = run_sluice(
        &[
            "--config",
            "sluice.toml",
            "--bind",
            "127.0.0.1:0",
            "--log",
            "debug",
        ],
        &[],
        dir.path(),
    )
    .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("mqtt.max_inflight"), "{err}");
    assert!(!err.contains("listening on"), "nothing bound: {err}");
}

// ---------------------------------------------------------------------------------------------
// ACL

const ACL: &str = "\
# anonymous clients
topic read public/#
topic read devices/#

user alice
topic readwrite alice/#
topic read shared/#
topic write inbox/bob
topic deny alice/secret/#

user bob
topic read inbox/bob

# every client
pattern readwrite devices/%c/#
pattern read users/%u/notes
";

fn acl_broker() -> Broker {
    Broker::start_with(BrokerOpts {
        config: "[auth]\nacl_file = \"acl.conf\"\n".into(),
        files: vec![("acl.conf".into(), ACL.into())],
        ..Default::default()
    })
    .expect("start sluice with an ACL")
}

/// A raw client connected (and CONNACKed) with `client_id` and an optional username.
async fn connect(
    broker: &Broker,
    protocol: Protocol,
    client_id: &str,
    username: Option<&str>,
) -> RawClient {
    let o = match username {
        Some(u) => Opts::default().user(u, None),
        None => Opts::default(),
    };
    raw_ok(broker.addr, protocol, client_id, &o).await
}

/// Subscribes to `filters` at QoS 1; returns the SUBACK's codes.
async fn subscribe(c: &mut RawClient, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let sub = Subscribe {
        pkid,
        filters: filters
            .iter()
            .map(|f| Subscription {
                filter: (*f).try_into().unwrap(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            })
            .collect(),
        rejected: Vec::new(),
        properties: SubscribeProperties::default(),
    };
    c.send(&Packet::Subscribe(sub)).await.unwrap();
    match c.expect_packet(WAIT).await.unwrap() {
        Packet::SubAck(a) => {
            assert_eq!(a.pkid, pkid);
            a.reasons.iter().map(|r| r.0).collect()
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publishes at QoS 1 and returns the PUBACK.
async fn publish_qos1(c: &mut RawClient, pkid: u16, topic: &str, payload: &str) -> PubAck {
    let p = packets::publish(topic, QoS::AtLeastOnce, pkid, payload);
    clients::publish_qos1(c, p).await
}

/// The topics of the PUBLISHes `c` receives (acking them) before a [`SENTINEL`] payload, which
/// the test publishes last on the same path: whatever was routed to `c` before it comes first.
async fn topics_before_sentinel(c: &mut RawClient) -> Vec<String> {
    publishes_before_sentinel(c)
        .await
        .iter()
        .map(|p| p.topic.as_str().to_owned())
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A SUBSCRIBE the ACL refuses gets SUBACK 0x80 at 3.1.1 and 0x87 (Not authorized) at 5.0, per
/// filter, next to granted ones; `%u` patterns grant a user its own topics only.
/// 3.1.1: [MQTT-3.8.4-5] [MQTT-3.9.3-2]; 5.0: [MQTT-3.8.4-6] [MQTT-3.8.4-7], §3.9.3 (0x87).
#[test]
fn acl_refused_subscribe_gets_failure_suback() {
    let broker = acl_broker();
    rt().block_on(async {
        for (protocol, refused) in [(Protocol::V311, 0x80), (Protocol::V5, 0x87)] {
            let mut anon = connect(&broker, protocol, "anon-sub", None).await;
            assert_eq!(
                subscribe(&mut anon, 1, &["public/#", "alice/#", "shared/x"]).await,
                [1, refused, refused],
                "{protocol:?} anonymous"
            );
            let mut alice = connect(&broker, protocol, "alice-sub", Some("alice")).await;
            assert_eq!(
                subscribe(
                    &mut alice,
                    2,
                    &[
                        "shared/#",
                        "alice/secret/x",
                        "inbox/bob",
                        "users/alice/notes",
                        "users/bob/notes",
                        "public/#",
                    ]
                )
                .await,
                [1, refused, refused, 1, refused, refused],
                "{protocol:?} alice (deny, write-only, %u, anonymous rules are not hers)"
            );
        }
    });
}

/// A PUBLISH to a topic the client may not write is not delivered; 5.0 QoS 1 gets PUBACK 0x87,
/// 3.1.1 a plain PUBACK [MQTT-3.3.5-2]; an allowed one is delivered, also across users.
#[test]
fn acl_write_denied_publish_is_not_delivered() {
    let broker = acl_broker();
    rt().block_on(async {
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut watcher = connect(&broker, protocol, "alice-watch", Some("alice")).await;
            assert_eq!(
                subscribe(&mut watcher, 1, &["shared/#", "alice/ok"]).await,
                [1, 1]
            );
            let mut bob = connect(&broker, protocol, "bob-inbox", Some("bob")).await;
            assert_eq!(subscribe(&mut bob, 1, &["inbox/bob"]).await, [1]);

            let mut alice = connect(&broker, protocol, "alice-pub", Some("alice")).await;
            let denied = publish_qos1(&mut alice, 1, "shared/news", "no").await;
            let secret = publish_qos1(&mut alice, 2, "alice/secret/diary", "no").await;
            let ok = publish_qos1(&mut alice, 3, "alice/ok", "yes").await;
            let to_bob = publish_qos1(&mut alice, 4, "inbox/bob", "hi bob").await;
            let want_denied = if protocol == Protocol::V5 { 0x87 } else { 0 };
            assert_eq!(
                [
                    denied.reason.0,
                    secret.reason.0,
                    ok.reason.0,
                    to_bob.reason.0
                ],
                [want_denied, want_denied, 0, 0],
                "{protocol:?} PUBACK reason codes"
            );
            publish_qos1(&mut alice, 5, "alice/ok", SENTINEL).await;
            publish_qos1(&mut alice, 6, "inbox/bob", SENTINEL).await;
            assert_eq!(
                topics_before_sentinel(&mut watcher).await,
                ["alice/ok"],
                "{protocol:?}"
            );
            assert_eq!(
                topics_before_sentinel(&mut bob).await,
                ["inbox/bob"],
                "{protocol:?}"
            );
        }
    });
}

/// `pattern readwrite devices/%c/#` lets a client publish only under its own client id.
#[test]
fn acl_pattern_client_id() {
    let broker = acl_broker();
    rt().block_on(async {
        let mut watcher = connect(&broker, Protocol::V5, "watcher", None).await;
        assert_eq!(subscribe(&mut watcher, 1, &["devices/#"]).await, [1]);
        let mut dev = connect(&broker, Protocol::V5, "dev1", None).await;
        let own = publish_qos1(&mut dev, 1, "devices/dev1/temp", "21").await;
        let other = publish_qos1(&mut dev, 2, "devices/dev2/temp", "99").await;
        assert_eq!((own.reason.0, other.reason.0), (0x00, 0x87));
        publish_qos1(&mut dev, 3, "devices/dev1/temp", SENTINEL).await;
        assert_eq!(
            topics_before_sentinel(&mut watcher).await,
            ["devices/dev1/temp"]
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Shutdown and logging

/// SIGTERM: a connected 5.0 client gets DISCONNECT 0x8B (Server shutting down) before the
/// connection closes, and the broker exits 0. §4.13 / [MQTT-4.13.1-1]-style server-initiated
/// disconnect; reason code table §3.14.2.1.
#[test]
fn sigterm_sends_v5_disconnect_0x8b_and_exits_0() {
    let mut broker = Broker::start();
    rt().block_on(async {
        let mut c = connect(&broker, Protocol::V5, "shutdown-watch", None).await;
        let status = broker.terminate(Duration::from_secs(10)).unwrap();
        let seen = c.expect_closed(WAIT).await.unwrap();
        assert!(
            matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::SERVER_SHUTTING_DOWN),
            "expected one DISCONNECT 0x8B, got {seen:?}"
        );
        assert!(status.success(), "exit status {status}");
    });
}

/// The connect log line names the client id, the peer address and the protocol level; a
/// password never appears in the log. (README "Running it"; not a protocol clause.)
#[test]
fn connect_log_line_and_no_password() {
    let broker = Broker::start();
    mosquitto_pub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-i",
            "log-probe-5",
            "-u",
            "someone",
            "-P",
            "secretpw",
            "-t",
            "x",
            "-m",
            "payload-not-logged",
        ],
    )
    .unwrap();
    mosquitto_pub(
        &broker,
        &[
            "-V",
            "mqttv311",
            "-i",
            "log-probe-4",
            "-u",
            "u",
            "-P",
            "secretpw",
            "-t",
            "x",
            "-m",
            "m",
        ],
    )
    .unwrap();
    for (id, level) in [("log-probe-5", "5"), ("log-probe-4", "4")] {
        let line = broker.wait_log(&format!("client_id={id}"), WAIT).unwrap();
        assert!(line.contains("client connected"), "{line}");
        assert!(line.contains("127.0.0.1:"), "peer address: {line}");
        assert!(
            line.contains(&format!("protocol={level}")),
            "protocol level: {line}"
        );
    }
    // Everything logged about both connections, to their last line, is in.
    for id in ["log-probe-5", "log-probe-4"] {
        wait_log_all(
            &broker,
            0,
            &["client disconnected", &format!("client_id={id}")],
            WAIT,
        );
    }
    let log = broker.log().join("\n");
    assert!(!log.contains("secretpw"), "password in the log:\n{log}");
    assert!(
        !log.contains("payload-not-logged"),
        "payload in the log:\n{log}"
    );
}
