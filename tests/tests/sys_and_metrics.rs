//! Issue 14, observing a running broker: the `$SYS` topics (Mosquitto's names and meanings,
//! published retained every `sys.interval` seconds, read under the ACL, never matched by a
//! leading wildcard [MQTT-4.7.2-1]) and `--log-format json`. The Prometheus rendering is
//! unit-tested in `broker/src/metrics/tests.rs`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_tests::clients::{
    publishes_before_sentinel, raw_ok, raw_publish, raw_subscribe, recv_and_ack,
    sentinel_subscription, Opts, SENTINEL,
};
use sluice_tests::codec::{Protocol, QoS};
use sluice_tests::{client_id, sluice_bin, Broker, BrokerOpts, RawClient};

/// Generous: the broker publishes every second here, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Receives PUBLISHes on `c` (acking QoS 1 ones) until one on `topic` satisfies `want`;
/// returns its payload. Bounded by [`DEADLINE`].
async fn until_value(c: &mut RawClient, topic: &str, mut want: impl FnMut(&str) -> bool) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < end,
            "no {topic} value as wanted within {DEADLINE:?}"
        );
        let p = recv_and_ack(c).await;
        if p.topic.as_str() == topic {
            let v = String::from_utf8_lossy(&p.payload).into_owned();
            if want(&v) {
                return v;
            }
        }
    }
}

/// `$SYS/broker/messages/received` moves with real traffic: a subscriber sees it reach the
/// number of PUBLISHes sent; `version` and `uptime` read as Mosquitto's do.
#[test]
fn sys_values_move_after_traffic() {
    let broker = Broker::with_config("[sys]\ninterval = 1\n");
    rt().block_on(async {
        let mut watcher = raw_ok(
            broker.addr,
            Protocol::V311,
            &client_id("sys-watch"),
            &Opts::default(),
        )
        .await;
        // One filter: its retained values follow the SUBACK.
        raw_subscribe(&mut watcher, 1, "$SYS/broker/#", QoS::AtMostOnce).await;
        let version = until_value(&mut watcher, "$SYS/broker/version", |_| true).await;
        assert_eq!(version, format!("sluice {}", env!("CARGO_PKG_VERSION")));
        let uptime = until_value(&mut watcher, "$SYS/broker/uptime", |_| true).await;
        let secs = uptime.strip_suffix(" seconds").expect("\"N seconds\"");
        assert!(secs.parse::<u64>().is_ok(), "uptime {uptime:?}");

        const N: u64 = 50;
        let mut publisher = raw_ok(
            broker.addr,
            Protocol::V5,
            &client_id("sys-pub"),
            &Opts::default(),
        )
        .await;
        for i in 0..N {
            raw_publish(
                &mut publisher,
                "sys/traffic",
                QoS::AtLeastOnce,
                (i + 1) as u16,
                b"x",
            )
            .await;
        }
        let seen = until_value(&mut watcher, "$SYS/broker/messages/received", |v| {
            v.parse::<u64>().is_ok_and(|n| n >= N)
        })
        .await;
        assert!(seen.parse::<u64>().unwrap() >= N);
    });
}

/// A `#` (or `+/...`) subscriber never gets `$SYS` topics [MQTT-4.7.2-1]: neither the retained
/// ones at subscription nor a periodic publication after it. A second client waits for a
/// publication that happened after the wildcard subscription; a sentinel then shows that
/// nothing was routed to the wildcard subscriber before it.
#[test]
fn wildcard_subscribers_never_get_sys() {
    let broker = Broker::with_config("[sys]\ninterval = 1\n");
    rt().block_on(async {
        let mut all = raw_ok(
            broker.addr,
            Protocol::V5,
            &client_id("sys-all"),
            &Opts::default(),
        )
        .await;
        raw_subscribe(&mut all, 1, "#", QoS::AtLeastOnce).await;
        raw_subscribe(&mut all, 2, "+/broker/#", QoS::AtLeastOnce).await;
        // The uptime changes every second: a publication after the subscriptions above.
        let mut watcher = raw_ok(
            broker.addr,
            Protocol::V311,
            &client_id("sys-watch"),
            &Opts::default(),
        )
        .await;
        raw_subscribe(&mut watcher, 1, "$SYS/broker/uptime", QoS::AtMostOnce).await;
        let first = until_value(&mut watcher, "$SYS/broker/uptime", |_| true).await;
        until_value(&mut watcher, "$SYS/broker/uptime", |v| v != first).await;

        sluice_tests::clients::publish_sentinel(broker.addr, "sys/sentinel").await;
        let before = publishes_before_sentinel(&mut all).await;
        let sys: Vec<_> = before
            .iter()
            .filter(|p| p.topic.as_str().starts_with('$'))
            .map(|p| p.topic.as_str().to_owned())
            .collect();
        assert!(sys.is_empty(), "a wildcard subscriber got {sys:?}");
    });
}

/// Subscribing to `$SYS` follows the ACL like any topic: a user with `topic read $SYS/#` gets
/// the values, one without is refused (SUBACK 0x87 at 5.0, 0x80 at 3.1.1) and gets nothing.
#[test]
fn acl_decides_who_reads_sys() {
    const ACL: &str = "user ops\ntopic read $SYS/#\n\nuser alice\ntopic readwrite alice/#\n";
    let broker = Broker::start_with(BrokerOpts {
        config: "[auth]\nacl_file = \"acl.conf\"\n\n[sys]\ninterval = 1\n".into(),
        files: vec![("acl.conf".into(), ACL.into())],
        ..Default::default()
    })
    .expect("start sluice with an ACL");
    rt().block_on(async {
        let mut ops = raw_ok(
            broker.addr,
            Protocol::V5,
            &client_id("ops"),
            &Opts::default().user("ops", None),
        )
        .await;
        let ack = raw_subscribe(&mut ops, 1, "$SYS/broker/version", QoS::AtMostOnce).await;
        assert_eq!(ack.reasons[0].0, 0x00, "ops may read $SYS");
        let v = until_value(&mut ops, "$SYS/broker/version", |_| true).await;
        assert!(v.starts_with("sluice "), "{v}");

        for (protocol, refused) in [(Protocol::V5, 0x87), (Protocol::V311, 0x80)] {
            let mut alice = raw_ok(
                broker.addr,
                protocol,
                &client_id("alice"),
                &Opts::default().user("alice", None),
            )
            .await;
            let ack = raw_subscribe(&mut alice, 1, "$SYS/broker/version", QoS::AtMostOnce).await;
            assert_eq!(
                ack.reasons[0].0, refused,
                "{protocol:?}: alice may not read $SYS"
            );
            // Her own topic as the sentinel's path: nothing of $SYS came before it.
            let t = format!("alice/{}", client_id("s"));
            raw_subscribe(&mut alice, 2, &t, QoS::AtLeastOnce).await;
            raw_publish(&mut alice, &t, QoS::AtMostOnce, 0, SENTINEL.as_bytes()).await;
            let before = publishes_before_sentinel(&mut alice).await;
            assert!(before.is_empty(), "{protocol:?}: alice got {before:?}");
        }
    });
}

/// `sys.interval = 0` turns `$SYS` off: nothing is published, not even at start-up (when on,
/// the first publication is made before any client is accepted, so a retained value would be
/// waiting for this subscription, ahead of the sentinel).
#[test]
fn sys_interval_zero_publishes_nothing() {
    for (config, expect_sys) in [("[sys]\ninterval = 0\n", false), ("", true)] {
        let broker = Broker::with_config(config);
        rt().block_on(async {
            let mut c = raw_ok(
                broker.addr,
                Protocol::V311,
                &client_id("sys-off"),
                &Opts::default(),
            )
            .await;
            // The sentinel's subscription first: retained values follow the last SUBACK.
            let t = sentinel_subscription(&mut c, 1).await;
            raw_subscribe(&mut c, 2, "$SYS/#", QoS::AtLeastOnce).await;
            sluice_tests::clients::publish_sentinel(broker.addr, &t).await;
            let before = publishes_before_sentinel(&mut c).await;
            let sys = before
                .iter()
                .filter(|p| p.topic.as_str().starts_with("$SYS/"))
                .count();
            if expect_sys {
                // The control: with the default interval the retained values are there.
                assert!(
                    sys > 10,
                    "default sys.interval: retained $SYS values, got {sys}"
                );
            } else {
                assert_eq!(sys, 0, "sys.interval = 0: got {before:?}");
            }
        });
    }
}

/// `--log-format json`: every line on stderr is one JSON object with a timestamp, a level and
/// the message; the connection of a client shows in it.
#[test]
fn log_format_json_lines_parse() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args([
            "--log-format",
            "json",
            "--log",
            "info",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env_remove("RUST_LOG")
        // The admin listener on a free port: parallel tests never share 18083.
        .env(sluice_tests::ADMIN_BIND_ENV, "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let next = |lines: &mut Vec<serde_json::Value>, what: &str| -> serde_json::Value {
        let line = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no log line ({what}): {e}"));
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object per line: {line:?}: {e}"));
        lines.push(v.clone());
        v
    };
    let addr = loop {
        let v = next(&mut lines, "listening");
        let msg = v["message"].as_str().unwrap_or_default().to_owned();
        if let Some(rest) = msg.strip_prefix("listening on tcp://") {
            break rest.parse::<std::net::SocketAddr>().expect("address");
        }
    };
    let id = client_id("json");
    rt().block_on(async {
        let c = raw_ok(addr, Protocol::V311, &id, &Opts::default()).await;
        drop(c);
    });
    loop {
        let v = next(&mut lines, "client connected");
        if v["message"] == "client connected" {
            assert_eq!(v["client_id"], id.as_str(), "{v}");
            break;
        }
    }
    // Stopped by its PID.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    for v in &lines {
        assert!(v.is_object(), "{v}");
        assert!(v["timestamp"].is_string(), "{v}");
        assert!(v["level"].is_string(), "{v}");
        assert!(v["message"].is_string(), "{v}");
    }
}
