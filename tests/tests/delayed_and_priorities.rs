//! Delayed publish (`$delayed/{seconds}/{topic}`) and delivery priorities (`[[mqtt.priorities]]`),
//! issue 13 points 3 and 4: against the real binary, with real clients and, for restarts, real
//! `kill -9` on a real data directory.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_tests::clients::{
    expect_closed, publish_packet, raw_ok, raw_subscribe, recv_and_ack, s, topic,
    wait_disconnected, Opts, T,
};
use sluice_tests::codec::{Packet, Protocol, PubAck, Publish, PublishProperties, QoS};
use sluice_tests::{Broker, BrokerOpts, RawClient};

/// Far more than any delay these tests use: a late delivery fails, a slow machine does not.
const GENEROUS: Duration = Duration::from_secs(20);

fn broker(config: &str) -> Broker {
    Broker::with_config(config)
}

/// A broker whose data lives in `data` (kept across restarts), with `config`.
fn broker_on(data: &std::path::Path, config: &str) -> Broker {
    Broker::on_data_dir(data, config)
}

/// Sends a PUBLISH and returns its acknowledgement (PUBACK, or PUBREC completed with
/// PUBREL/PUBCOMP when it succeeded).
async fn publish_acked(c: &mut RawClient, p: Publish) -> PubAck {
    let (qos, pkid) = (p.qos, p.pkid);
    c.send(&Packet::Publish(p)).await.unwrap();
    match (qos, c.expect_packet(T).await.unwrap()) {
        (QoS::AtLeastOnce, Packet::PubAck(a)) => a,
        (QoS::ExactlyOnce, Packet::PubRec(a)) => {
            if a.reason.0 < 0x80 {
                c.send(&Packet::PubRel(PubAck::new(pkid))).await.unwrap();
                assert!(matches!(
                    c.expect_packet(T).await.unwrap(),
                    Packet::PubComp(_)
                ));
            }
            a
        }
        (_, other) => panic!("expected the ack of a QoS {qos:?} PUBLISH, got {other:?}"),
    }
}

fn publish(t: &str, qos: QoS, pkid: u16, payload: &str) -> Publish {
    match publish_packet(t, qos, pkid, payload.as_bytes()) {
        Packet::Publish(p) => p,
        _ => unreachable!(),
    }
}

/// The next PUBLISH within `limit`, acknowledged.
async fn next_publish_within(c: &mut RawClient, limit: Duration) -> Publish {
    tokio::time::timeout(limit, recv_and_ack_patient(c))
        .await
        .unwrap_or_else(|_| panic!("no PUBLISH within {limit:?}"))
}

/// [`recv_and_ack`] with waits longer than [`T`] (a delay runs out meanwhile).
async fn recv_and_ack_patient(c: &mut RawClient) -> Publish {
    loop {
        match c.recv(Duration::from_secs(1)).await.unwrap() {
            sluice_tests::Recv::Timeout => continue,
            sluice_tests::Recv::Packet(p) => match *p {
                Packet::Publish(p) => {
                    if p.qos == QoS::AtLeastOnce {
                        c.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap();
                    }
                    return p;
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            },
            sluice_tests::Recv::Closed => panic!("connection closed while waiting for a PUBLISH"),
        }
    }
}

// --------------------------------------------------------------------------- delayed publish

/// `$delayed/{seconds}/{topic}` reaches `{topic}` subscribers after the delay, never before
/// (the lower bound is measured from before the PUBLISH was sent), with its payload, user
/// properties and retain flag kept (a later subscriber gets it as the retained message). In
/// `durable` mode (the message waits on disk) and in `memory` mode (it waits in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_publish_arrives_after_its_delay_and_not_before() {
    for (mode, seconds) in [("durable", 2u64), ("memory", 1)] {
        let b = broker(&format!("[persistence]\nmode = \"{mode}\"\n"));
        let mut sub = raw_ok(b.addr, Protocol::V5, "d-sub", &Opts::default()).await;
        raw_subscribe(&mut sub, 1, "d/#", QoS::AtLeastOnce).await;
        let mut publ = raw_ok(b.addr, Protocol::V5, "d-pub", &Opts::default()).await;
        let mut p = publish(
            &format!("$delayed/{seconds}/d/t"),
            QoS::AtLeastOnce,
            1,
            "later",
        );
        p.retain = true;
        p.properties = PublishProperties {
            user_properties: vec![(s("k"), s("v"))],
            ..Default::default()
        };
        let sent = Instant::now();
        let ack = publish_acked(&mut publ, p).await;
        assert_eq!(ack.reason.0, 0, "{mode}: accepted once stored: {ack:?}");
        let got = next_publish_within(&mut sub, GENEROUS).await;
        let waited = sent.elapsed();
        assert!(
            waited >= Duration::from_secs(seconds),
            "{mode}: delivered after {waited:?}, before its {seconds} s delay"
        );
        assert_eq!(got.topic, topic("d/t"), "{mode}: to the target topic");
        assert_eq!(got.payload, Bytes::from_static(b"later"), "{mode}");
        assert_eq!(
            got.properties.user_properties,
            vec![(s("k"), s("v"))],
            "{mode}: properties kept"
        );
        // RETAIN kept: the message is the topic's retained message from its delivery on.
        let mut late = raw_ok(b.addr, Protocol::V5, "d-late", &Opts::default()).await;
        raw_subscribe(&mut late, 1, "d/t", QoS::AtLeastOnce).await;
        let retained = recv_and_ack(&mut late).await;
        assert!(retained.retain, "{mode}: retained: {retained:?}");
        assert_eq!(retained.payload, Bytes::from_static(b"later"), "{mode}");
    }
}

const ACL: &str = "\
topic readwrite allowed/#
topic write $delayed/#
topic read denied/#
";

/// The ACL is checked on the target topic: writing to `$delayed/#` is not enough. A 5.0
/// publisher is told 0x87 Not Authorized; nothing is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_publish_is_authorized_on_its_target_topic() {
    let b = Broker::start_with(BrokerOpts {
        config: "[auth]\nacl_file = \"acl.conf\"\n".into(),
        files: vec![("acl.conf".into(), ACL.into())],
        ..Default::default()
    })
    .unwrap();
    let mut sub = raw_ok(b.addr, Protocol::V5, "acl-sub", &Opts::default()).await;
    raw_subscribe(&mut sub, 1, "denied/#", QoS::AtLeastOnce).await;
    raw_subscribe(&mut sub, 2, "allowed/#", QoS::AtLeastOnce).await;
    let mut publ = raw_ok(b.addr, Protocol::V5, "acl-pub", &Opts::default()).await;
    let denied = publish_acked(
        &mut publ,
        publish("$delayed/1/denied/x", QoS::AtLeastOnce, 1, "no"),
    )
    .await;
    assert_eq!(denied.reason.0, 0x87, "{denied:?}");
    let ok = publish_acked(
        &mut publ,
        publish("$delayed/1/allowed/x", QoS::AtLeastOnce, 2, "yes"),
    )
    .await;
    assert_eq!(ok.reason.0, 0, "{ok:?}");
    // The allowed one comes (after its delay); the denied one, published first and due first,
    // would have come before it.
    let got = next_publish_within(&mut sub, GENEROUS).await;
    assert_eq!(got.topic, topic("allowed/x"));
}

/// Malformed `$delayed` topics are refused with 0x90 Topic Name Invalid and a Reason String
/// saying why (5.0 PUBACK and PUBREC, 3.4.2.1); a 3.1.1 publisher gets a plain PUBACK and the
/// message is dropped, as for an ACL refusal. Nothing is delivered anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_delayed_topics_are_refused_with_topic_name_invalid() {
    let b = broker("[mqtt]\nmax_delay_seconds = 60\n");
    let mut sub = raw_ok(b.addr, Protocol::V5, "bad-sub", &Opts::default()).await;
    raw_subscribe(&mut sub, 1, "a/#", QoS::AtLeastOnce).await;
    raw_subscribe(&mut sub, 2, "$delayed/#", QoS::AtLeastOnce).await;
    let mut publ = raw_ok(b.addr, Protocol::V5, "bad-pub", &Opts::default()).await;
    let cases = [
        ("$delayed", "without a delay"),
        ("$delayed/", "without a delay"),
        ("$delayed//a/b", "without a delay"),
        ("$delayed/soon/a/b", "not a whole number"),
        ("$delayed/-1/a/b", "not a whole number"),
        ("$delayed/61/a/b", "max_delay_seconds"),
        ("$delayed/99999999999999999999/a/b", "max_delay_seconds"),
        ("$delayed/1", "without a target"),
        ("$delayed/1/", "without a target"),
        ("$delayed/1/$SYS/x", "starts with $"),
        ("$delayed/1/$delayed/1/a", "starts with $"),
    ];
    for (i, (t, why)) in cases.iter().enumerate() {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let ack = publish_acked(&mut publ, publish(t, qos, i as u16 + 1, "x")).await;
        assert_eq!(ack.reason.0, 0x90, "{t}: {ack:?}");
        let text = ack.properties.reason_string.as_deref().unwrap_or_default();
        assert!(text.contains(why), "{t}: reason string {text:?}");
    }
    // 3.1.1: acknowledged, dropped.
    let mut old = raw_ok(b.addr, Protocol::V311, "bad-old", &Opts::default()).await;
    let ack = publish_acked(
        &mut old,
        publish("$delayed/x/a/b", QoS::AtLeastOnce, 1, "x"),
    )
    .await;
    assert_eq!(ack.reason.0, 0);
    // Nothing came of any of them: a well-formed delayed message is the first to arrive.
    let ok = publish_acked(
        &mut publ,
        publish("$delayed/0/a/ok", QoS::AtLeastOnce, 100, "ok"),
    )
    .await;
    assert_eq!(ok.reason.0, 0);
    let got = next_publish_within(&mut sub, GENEROUS).await;
    assert_eq!(
        (got.topic, got.payload),
        (topic("a/ok"), Bytes::from_static(b"ok"))
    );
}

/// `limits.max_delayed_messages` bounds the waiting messages: over it a 5.0 PUBLISH gets 0x97
/// Quota Exceeded (PUBACK and PUBREC), a 3.1.1 publisher is disconnected (what the broker does
/// for any QoS 1/2 PUBLISH it refuses for a quota). Once they are delivered there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delayed_bound_refuses_with_quota_exceeded() {
    let b = broker("[limits]\nmax_delayed_messages = 2\n");
    let mut publ = raw_ok(b.addr, Protocol::V5, "q-pub", &Opts::default()).await;
    for pkid in 1..=2 {
        let ack = publish_acked(
            &mut publ,
            publish("$delayed/3600/q/t", QoS::AtLeastOnce, pkid, "x"),
        )
        .await;
        assert_eq!(ack.reason.0, 0, "{ack:?}");
    }
    let full = publish_acked(
        &mut publ,
        publish("$delayed/1/q/t", QoS::AtLeastOnce, 3, "x"),
    )
    .await;
    assert_eq!(full.reason.0, 0x97, "{full:?}");
    assert!(full
        .properties
        .reason_string
        .as_deref()
        .unwrap_or_default()
        .contains("max_delayed_messages"));
    let full = publish_acked(
        &mut publ,
        publish("$delayed/1/q/t", QoS::ExactlyOnce, 4, "x"),
    )
    .await;
    assert_eq!(full.reason.0, 0x97, "{full:?}");
    // Plain publishes are not affected.
    let ack = publish_acked(&mut publ, publish("q/t", QoS::AtLeastOnce, 5, "x")).await;
    assert_eq!(ack.reason.0, 0);
    let mut old = raw_ok(b.addr, Protocol::V311, "q-old", &Opts::default()).await;
    old.send(&publish_packet("$delayed/1/q/t", QoS::AtLeastOnce, 1, b"x"))
        .await
        .unwrap();
    let seen = expect_closed(&mut old).await;
    assert!(
        !seen.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "3.1.1: not acknowledged: {seen:?}"
    );
}

/// In `durable` mode an acknowledged delayed message survives `kill -9`: after the restart on
/// the same data directory it is delivered (late by at most the downtime), to a persistent
/// session that was offline throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_publish_survives_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let mut b = broker_on(data.path(), "");
    let mut sub = raw_ok(b.addr, Protocol::V311, "k-sub", &Opts::persistent(0)).await;
    raw_subscribe(&mut sub, 1, "k/#", QoS::AtLeastOnce).await;
    drop(sub);
    let mut publ = raw_ok(b.addr, Protocol::V5, "k-pub", &Opts::default()).await;
    let sent = Instant::now();
    for (pkid, seconds) in [(1u16, 1u32), (2, 2)] {
        let ack = publish_acked(
            &mut publ,
            publish(
                &format!("$delayed/{seconds}/k/t"),
                QoS::AtLeastOnce,
                pkid,
                &format!("after {seconds}"),
            ),
        )
        .await;
        assert_eq!(ack.reason.0, 0, "{ack:?}");
    }
    b.kill();
    let b = broker_on(data.path(), "");
    b.wait_log("store recovered", T).unwrap();
    let mut sub = raw_ok(b.addr, Protocol::V311, "k-sub", &Opts::persistent(0)).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = next_publish_within(&mut sub, GENEROUS).await;
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert!(sent.elapsed() >= Duration::from_secs(2));
    assert_eq!(got, ["after 1", "after 2"], "both, in due order");
}

// --------------------------------------------------------------------------- priorities

const PRIORITIES: &str = "\
[[mqtt.priorities]]
filter = \"orders/+/vip/#\"
priority = 10

[[mqtt.priorities]]
filter = \"orders/urgent\"
priority = 20
";

/// (topic, payload) published in this order; delivered by priority, then in this order.
const ORDERS: [(&str, &str); 8] = [
    ("orders/a", "n0"),
    ("orders/b/vip/1", "v0"),
    ("orders/a", "n1"),
    ("orders/urgent", "u0"),
    ("orders/c/vip", "v1"),
    ("orders/b", "n2"),
    ("orders/urgent", "u1"),
    ("orders/b/vip/2", "v2"),
];
const BY_PRIORITY: [&str; 8] = ["u0", "u1", "v0", "v1", "v2", "n0", "n1", "n2"];

/// Queues [`ORDERS`] for the offline persistent session `{id}` (subscribed to `orders/#`).
async fn queue_orders(b: &Broker, id: &str) {
    let mut sub = raw_ok(b.addr, Protocol::V311, id, &Opts::persistent(0)).await;
    raw_subscribe(&mut sub, 1, "orders/#", QoS::AtLeastOnce).await;
    // Gone before anything is published: nothing may be in flight to it (inflight messages
    // are resent first, whatever their priority).
    let from = b.log_len();
    drop(sub);
    wait_disconnected(b, from, id);
    let mut publ = raw_ok(b.addr, Protocol::V311, "o-pub", &Opts::default()).await;
    for (i, (t, payload)) in ORDERS.iter().enumerate() {
        let ack = publish_acked(
            &mut publ,
            publish(t, QoS::AtLeastOnce, i as u16 + 1, payload),
        )
        .await;
        assert_eq!(ack.reason.0, 0);
    }
}

/// The payloads the returning session `{id}` gets.
async fn drain_orders(b: &Broker, id: &str) -> Vec<String> {
    let mut sub = raw_ok(b.addr, Protocol::V311, id, &Opts::persistent(0)).await;
    let mut got = Vec::new();
    for _ in 0..ORDERS.len() {
        let p = recv_and_ack(&mut sub).await;
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    got
}

/// An offline persistent subscriber gets its queued messages by priority on reconnect (the
/// highest matching rule's), in publish order within one priority; without priorities
/// configured, in publish order. Both in `memory` and in `durable` mode (queue on disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_are_delivered_by_priority_then_in_order() {
    for mode in ["memory", "durable"] {
        let b = broker(&format!("{PRIORITIES}\n[persistence]\nmode = \"{mode}\"\n"));
        queue_orders(&b, "p-sub").await;
        assert_eq!(drain_orders(&b, "p-sub").await, BY_PRIORITY, "{mode}");
    }
    let b = broker("");
    queue_orders(&b, "p-plain").await;
    let published: Vec<&str> = ORDERS.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        drain_orders(&b, "p-plain").await,
        published,
        "no priorities: publish order"
    );
}

/// The lanes come back in the right order after `kill -9` (the queue is recovered from the
/// log without reading the messages: each keeps the priority it was given when published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let mut b = broker_on(data.path(), PRIORITIES);
    queue_orders(&b, "r-sub").await;
    b.kill();
    let b = broker_on(data.path(), PRIORITIES);
    assert_eq!(drain_orders(&b, "r-sub").await, BY_PRIORITY);
}

/// A will to `$delayed/{seconds}/{topic}` is a delayed publish like any other: when the
/// connection dies it reaches `{topic}` subscribers after the delay, never before; a malformed one is refused at CONNECT with
/// 0x90 Topic Name Invalid, and one to `$SYS` with 0x87 Not Authorized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_to_a_delayed_topic_is_delayed() {
    let b = broker("");
    let mut sub = raw_ok(b.addr, Protocol::V5, "w-sub", &Opts::default()).await;
    raw_subscribe(&mut sub, 1, "w/#", QoS::AtLeastOnce).await;
    let o = Opts::default().will(sluice_tests::clients::will("$delayed/2/w/t", b"gone", 0));
    let c = raw_ok(b.addr, Protocol::V5, "w-dying", &o).await;
    let died = Instant::now();
    drop(c);
    let got = next_publish_within(&mut sub, GENEROUS).await;
    let waited = died.elapsed();
    assert_eq!(got.topic, topic("w/t"), "to the target topic");
    assert_eq!(got.payload, Bytes::from_static(b"gone"));
    assert!(
        waited >= Duration::from_secs(2),
        "will delivered after {waited:?}, before its 2 s delay"
    );
    for (will_topic, code) in [("$delayed/x/w/t", 0x90u8), ("$SYS/broker/x", 0x87)] {
        let o = Opts::default().will(sluice_tests::clients::will(will_topic, b"gone", 0));
        let (_c, ack) = sluice_tests::clients::raw_connect(b.addr, Protocol::V5, "w-bad", &o).await;
        assert_eq!(ack.reason.0, code, "will to {will_topic}: {ack:?}");
    }
}
