//! Egress shaping and overflow policies (issue 13, points 1 and 2), black-box: the real
//! `sluice` binary, raw MQTT clients. Rates are measured over several seconds and checked
//! against wide bands (a loaded machine only makes a shaped consumer slower, so the upper
//! bound is what shows the shaping; the lower one only says that messages keep coming).

use std::time::{Duration, Instant};

use sluice_tests::clients::{
    expect_publish, publish_qos1, publish_sentinel, publishes_before_sentinel, raw_connect, raw_ok,
    raw_ok_ack, raw_subscribe, recv_and_ack, Opts,
};
use sluice_tests::codec::{Packet, Protocol, PubAck, Publish, QoS, ReasonCode};
use sluice_tests::{packets, Broker, RawClient};

const T: Duration = Duration::from_secs(30);

fn seq_of(p: &Publish) -> u32 {
    u32::from_be_bytes(p.payload[..4].try_into().expect("4-byte sequence number"))
}

/// Publishes QoS 1 messages `seqs` on `topic` from `c`, one flow at a time; returns the
/// PUBACK reason codes.
async fn publish_all(
    c: &mut RawClient,
    topic: &str,
    seqs: std::ops::Range<u32>,
) -> Vec<ReasonCode> {
    let mut reasons = Vec::new();
    for seq in seqs {
        let p = packets::publish(topic, QoS::AtLeastOnce, seq as u16 + 1, seq.to_be_bytes());
        reasons.push(publish_qos1(c, p).await.reason);
    }
    reasons
}

/// Receives (and acknowledges) `n` PUBLISHes; returns their sequence numbers and the time
/// from the first to the last.
async fn receive_n(c: &mut RawClient, n: usize) -> (Vec<u32>, Duration) {
    let mut seqs = Vec::new();
    let mut first = None;
    for _ in 0..n {
        let p = recv_and_ack(c).await;
        first.get_or_insert_with(Instant::now);
        seqs.push(seq_of(&p));
    }
    (seqs, first.map_or(Duration::ZERO, |f| f.elapsed()))
}

/// A memory-mode broker (no disk in the way of the rates) with `config` appended.
fn memory_broker(config: &str) -> Broker {
    Broker::with_config(&format!("[persistence]\nmode = \"memory\"\n{config}"))
}

/// `client_id = "slow-*"` at 10 messages/s: 50 messages take the shaped subscriber about
/// 5 s, while the publisher is acknowledged at once and an unshaped subscriber gets them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shaped_client_receives_at_its_rate_and_the_publisher_is_not_slowed() {
    let broker =
        memory_broker("[[shaping]]\nclient_id = \"slow-*\"\nmessages_per_second = 10\nburst = 1\n");
    let mut slow = raw_ok(broker.addr, Protocol::V5, "slow-1", &Opts::default()).await;
    raw_subscribe(&mut slow, 1, "rate/#", QoS::AtLeastOnce).await;
    let mut fast = raw_ok(broker.addr, Protocol::V5, "fast-1", &Opts::default()).await;
    raw_subscribe(&mut fast, 1, "rate/#", QoS::AtLeastOnce).await;
    let mut publ = raw_ok(broker.addr, Protocol::V5, "rate-pub", &Opts::default()).await;
    let n = 50u32;
    let consumer = tokio::spawn(async move {
        let r = receive_n(&mut slow, n as usize).await;
        (slow, r)
    });
    let reasons = publish_all(&mut publ, "rate/t", 0..n).await;
    assert!(reasons.iter().all(|r| *r == ReasonCode::SUCCESS));
    // The publisher is done; the shaped consumer (5 s for 50 at 10/s) is not.
    assert!(
        !consumer.is_finished(),
        "the shaped subscriber already had everything: not shaped"
    );
    let (got, _) = receive_n(&mut fast, n as usize).await;
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "the unshaped one gets all");
    let (_slow, (got, took)) = consumer.await.unwrap();
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "in order, none lost");
    let rate = f64::from(n - 1) / took.as_secs_f64();
    assert!(
        (2.0..=15.0).contains(&rate),
        "shaped at 10/s, measured {rate:.1}/s over {took:?}"
    );
}

/// A `group` rule's rate is the group's total: two members of `$share/workers/...` under
/// a 10/s rule get 10/s together (each member with its own 10/s would make 20/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_rule_limits_the_groups_total_rate() {
    let broker =
        memory_broker("[[shaping]]\ngroup = \"workers\"\nmessages_per_second = 10\nburst = 1\n");
    let mut members = Vec::new();
    for id in ["worker-a", "worker-b"] {
        let mut c = raw_ok(broker.addr, Protocol::V5, id, &Opts::default()).await;
        raw_subscribe(&mut c, 1, "$share/workers/jobs/#", QoS::AtLeastOnce).await;
        members.push(c);
    }
    let n = 40u32;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, mut c) in members.into_iter().enumerate() {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match c.recv(T).await {
                    Ok(sluice_tests::Recv::Packet(p)) => {
                        let Packet::Publish(p) = *p else { continue };
                        c.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap();
                        if tx.send((i, seq_of(&p), Instant::now())).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    let mut publ = raw_ok(broker.addr, Protocol::V5, "jobs-pub", &Opts::default()).await;
    let reasons = publish_all(&mut publ, "jobs/t", 0..n).await;
    assert!(reasons.iter().all(|r| *r == ReasonCode::SUCCESS));
    let mut got = Vec::new();
    let mut per_member = [0usize; 2];
    while got.len() < n as usize {
        let (member, seq, at) = tokio::time::timeout(T, rx.recv())
            .await
            .expect("the group keeps receiving")
            .unwrap();
        per_member[member] += 1;
        got.push((seq, at));
    }
    for t in tasks {
        t.abort();
    }
    let mut seqs: Vec<u32> = got.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..n).collect::<Vec<_>>(), "each message once");
    assert!(
        per_member.iter().all(|&k| k > 0),
        "both members worked: {per_member:?}"
    );
    let took = got[got.len() - 1].1 - got[0].1;
    let rate = f64::from(n - 1) / took.as_secs_f64();
    assert!(
        (2.0..=15.0).contains(&rate),
        "the group's total is 10/s, measured {rate:.1}/s over {took:?} ({per_member:?})"
    );
}

/// SIGHUP re-reads the rules: a consumer held at one message per 20 s gets the rest at once
/// after its rule is raised; a file with an error before that changes nothing (logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules_and_a_bad_file_keeps_the_old_ones() {
    let rule = |rate: &str, burst: &str| {
        format!(
            "[persistence]\nmode = \"memory\"\n[[shaping]]\nclient_id = \"reload-*\"\nmessages_per_second = {rate}\nburst = {burst}\n"
        )
    };
    let broker = Broker::with_config(&rule("0.05", "1"));
    let config = broker.dir.path().join("sluice.toml");
    let mut sub = raw_ok(broker.addr, Protocol::V5, "reload-1", &Opts::default()).await;
    raw_subscribe(&mut sub, 1, "reload/#", QoS::AtLeastOnce).await;
    let mut publ = raw_ok(broker.addr, Protocol::V5, "reload-pub", &Opts::default()).await;
    publish_all(&mut publ, "reload/t", 0..6).await;
    // The burst: one message; the next is due 20 s later.
    assert_eq!(seq_of(&recv_and_ack(&mut sub).await), 0);
    std::fs::write(&config, rule("1000", "0")).unwrap();
    let from = broker.log_len();
    broker.sighup().unwrap();
    broker
        .wait_log_from(from, "configuration not reloaded", T)
        .unwrap();
    assert!(
        matches!(
            sub.recv(Duration::from_millis(500)).await.unwrap(),
            sluice_tests::Recv::Timeout
        ),
        "the old rule stays in force"
    );
    std::fs::write(&config, rule("1000", "10")).unwrap();
    let from = broker.log_len();
    broker.sighup().unwrap();
    broker
        .wait_log_from(from, "SIGHUP: shaping rules reloaded", T)
        .unwrap();
    // At the old rate these would take 100 s; each must come within T.
    let (got, _) = receive_n(&mut sub, 5).await;
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
}

/// Connects a 3.1.1 persistent session subscribed to `filter` and parks it (disconnects), so
/// that messages queue for it.
async fn parked_subscriber(broker: &Broker, id: &str, filter: &str) {
    let mut c = raw_ok(broker.addr, Protocol::V311, id, &Opts::persistent(0)).await;
    raw_subscribe(&mut c, 1, filter, QoS::AtLeastOnce).await;
    let from = broker.log_len();
    drop(c);
    sluice_tests::clients::wait_disconnected(broker, from, id);
}

/// What a parked subscriber gets back when it returns: everything queued, up to a sentinel.
async fn returning_subscriber_gets(broker: &Broker, id: &str, topic: &str) -> Vec<u32> {
    let (mut c, ack) = raw_ok_ack(broker.addr, Protocol::V311, id, &Opts::persistent(0)).await;
    assert!(ack.session_present);
    let mut got: Vec<u32> = Vec::new();
    // The queue is full (3): take what is queued first, then the sentinel fits behind.
    for _ in 0..3 {
        got.push(seq_of(&recv_and_ack(&mut c).await));
    }
    c.send(&Packet::PingReq).await.unwrap();
    match c.expect_packet(T).await.unwrap() {
        Packet::PingResp => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
    publish_sentinel(broker.addr, topic).await;
    got.extend(publishes_before_sentinel(&mut c).await.iter().map(seq_of));
    got
}

/// `drop_newest` (and its old name `drop`): a full queue keeps the first messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_keeps_the_first_messages_and_counts_the_rest() {
    for name in ["drop_newest", "drop"] {
        let data = tempfile::tempdir().unwrap();
        let broker = Broker::on_data_dir(
            data.path(),
            &format!("[mqtt]\nmax_queued_messages = 3\nqueue_full_policy = \"{name}\"\n"),
        );
        parked_subscriber(&broker, "newest", "dn/#").await;
        let mut publ = raw_ok(broker.addr, Protocol::V5, "dn-pub", &Opts::default()).await;
        let reasons = publish_all(&mut publ, "dn/t", 0..6).await;
        assert!(
            reasons.iter().all(|r| *r == ReasonCode::SUCCESS),
            "{reasons:?}"
        );
        broker
            .wait_log("reason=queue_full_newest", T)
            .expect("the first drop is logged with client and reason");
        assert_eq!(
            returning_subscriber_gets(&broker, "newest", "dn/t").await,
            vec![0, 1, 2],
            "{name}"
        );
    }
}

/// `drop_oldest`: a full queue keeps the last messages, also across a restart (the evicted
/// ones are gone from the log too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_last_messages_also_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let config = "[mqtt]\nmax_queued_messages = 3\nqueue_full_policy = \"drop_oldest\"\n";
    let mut broker = Broker::on_data_dir(data.path(), config);
    parked_subscriber(&broker, "oldest", "do/#").await;
    let mut publ = raw_ok(broker.addr, Protocol::V5, "do-pub", &Opts::default()).await;
    let reasons = publish_all(&mut publ, "do/t", 0..7).await;
    assert!(
        reasons.iter().all(|r| *r == ReasonCode::SUCCESS),
        "{reasons:?}"
    );
    let line = broker.wait_log("reason=queue_full_oldest", T).unwrap();
    assert!(line.contains("oldest"), "{line}");
    drop(publ);
    broker.kill();
    let broker = Broker::on_data_dir(data.path(), config);
    assert_eq!(
        returning_subscriber_gets(&broker, "oldest", "do/t").await,
        vec![4, 5, 6]
    );
}

/// `reject` set by a shaping rule's `overflow` for some clients only: the publisher is told
/// (v5 PUBACK 0x97) once their queue is full; other subscribers' full queues still drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_can_make_a_full_queue_reject() {
    let data = tempfile::tempdir().unwrap();
    let broker = Broker::on_data_dir(
        data.path(),
        "[mqtt]\nmax_queued_messages = 3\n[[shaping]]\nclient_id = \"rej-*\"\noverflow = \"reject\"\n",
    );
    // The rule applies once the client has connected (its connection resolves it).
    parked_subscriber(&broker, "rej-1", "rj/#").await;
    let mut publ = raw_ok(broker.addr, Protocol::V5, "rj-pub", &Opts::default()).await;
    let reasons = publish_all(&mut publ, "rj/t", 0..5).await;
    assert_eq!(
        reasons,
        vec![
            ReasonCode::SUCCESS,
            ReasonCode::SUCCESS,
            ReasonCode::SUCCESS,
            ReasonCode::QUOTA_EXCEEDED,
            ReasonCode::QUOTA_EXCEEDED
        ]
    );
    // A subscriber no rule matches drops instead (the default policy).
    parked_subscriber(&broker, "other-1", "rj2/#").await;
    let reasons = publish_all(&mut publ, "rj2/t", 0..5).await;
    assert!(
        reasons.iter().all(|r| *r == ReasonCode::SUCCESS),
        "{reasons:?}"
    );
}

/// `disconnect_slow_consumer`: a client that does not acknowledge, whose queue stays full for
/// `slow_consumer_seconds`, is disconnected with 0x97; its session and queue stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_and_keeps_its_session() {
    let data = tempfile::tempdir().unwrap();
    let broker = Broker::on_data_dir(
        data.path(),
        "[mqtt]\nmax_queued_messages = 3\nqueue_full_policy = \"disconnect_slow_consumer\"\nslow_consumer_seconds = 1\n",
    );
    let opts = Opts::persistent(600).receive_maximum(Some(1));
    let mut sub = raw_ok(broker.addr, Protocol::V5, "slowpoke", &opts).await;
    raw_subscribe(&mut sub, 1, "sc/#", QoS::AtLeastOnce).await;
    let mut publ = raw_ok(broker.addr, Protocol::V5, "sc-pub", &Opts::default()).await;
    publish_all(&mut publ, "sc/t", 0..8).await;
    // One in flight (never acknowledged), three queued, the rest dropped: then cut off.
    let first = match sub.expect_packet(T).await.unwrap() {
        Packet::Publish(p) => p,
        other => panic!(
            "expected PUBLISH, got {other:?}; log:\n{}",
            broker.log().join("\n")
        ),
    };
    assert_eq!(seq_of(&first), 0);
    sub.expect_disconnect(T, 0x97, "slow consumer")
        .await
        .unwrap();
    broker.wait_log("slow consumer", T).unwrap();
    let (mut back, ack) = raw_connect(broker.addr, Protocol::V5, "slowpoke", &opts).await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    assert!(ack.session_present, "the session was kept");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(seq_of(&recv_and_ack(&mut back).await));
    }
    // The unacknowledged one again, then what was queued (which of the later ones found room
    // depends on how fast the subscriber's task took the first: in order either way).
    assert_eq!(got[0], 0, "{got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
}

/// QoS 0 over a shaped rate waits within the queue's bounds, then is dropped and counted as
/// `qos0_rate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_over_the_rate_is_dropped_and_counted() {
    let broker = memory_broker(
        "[mqtt]\nmax_queued_messages = 3\n[[shaping]]\nclient_id = \"q0-*\"\nmessages_per_second = 0.1\nburst = 1\n",
    );
    let mut sub = raw_ok(broker.addr, Protocol::V5, "q0-1", &Opts::default()).await;
    raw_subscribe(&mut sub, 1, "q0/#", QoS::AtMostOnce).await;
    let mut publ = raw_ok(broker.addr, Protocol::V5, "q0-pub", &Opts::default()).await;
    for seq in 0..10u32 {
        publ.send(&Packet::Publish(packets::publish(
            "q0/t",
            QoS::AtMostOnce,
            0,
            seq.to_be_bytes(),
        )))
        .await
        .unwrap();
    }
    let line = broker.wait_log("reason=qos0_rate", T).unwrap();
    assert!(line.contains("q0-1"), "logged with the client: {line}");
    assert_eq!(seq_of(&expect_publish(&mut sub).await), 0, "the burst");
}

/// A member of a shaped group that goes away while the group waits for its next token does
/// not strand the group's queue: here one member of a 2/s group leaves after its first message
/// and the other receives the rest, with nothing published after the departure to wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_waiting_for_its_token_still_drains_when_a_member_leaves() {
    let broker =
        memory_broker("[[shaping]]\ngroup = \"pair\"\nmessages_per_second = 2\nburst = 1\n");
    let mut a = raw_ok(broker.addr, Protocol::V5, "pair-a", &Opts::default()).await;
    raw_subscribe(&mut a, 1, "$share/pair/work/#", QoS::AtLeastOnce).await;
    let mut b = raw_ok(broker.addr, Protocol::V5, "pair-b", &Opts::default()).await;
    raw_subscribe(&mut b, 1, "$share/pair/work/#", QoS::AtLeastOnce).await;
    let n = 8u32;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // `a`: acknowledges its first message (or gives up after 10 s) and goes away.
    let tx_a = tx.clone();
    let leaver = tokio::spawn(async move {
        if let Ok(sluice_tests::Recv::Packet(p)) = a.recv(Duration::from_secs(10)).await {
            if let Packet::Publish(p) = *p {
                a.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap();
                let _ = tx_a.send(seq_of(&p));
            }
        }
        drop(a);
    });
    let stayer = tokio::spawn(async move {
        while let Ok(sluice_tests::Recv::Packet(p)) = b.recv(T).await {
            let Packet::Publish(p) = *p else { continue };
            b.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap();
            if tx.send(seq_of(&p)).is_err() {
                return;
            }
        }
    });
    let mut publ = raw_ok(broker.addr, Protocol::V5, "pair-pub", &Opts::default()).await;
    let reasons = publish_all(&mut publ, "work/t", 0..n).await;
    assert!(reasons.iter().all(|r| *r == ReasonCode::SUCCESS));
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n as usize {
        let seq = tokio::time::timeout(T, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("the group stalled with {seen:?} of 0..{n}"))
            .expect("a member is still receiving");
        seen.insert(seq);
    }
    leaver.await.unwrap();
    stayer.abort();
    assert_eq!(seen, (0..n).collect(), "every message reached the group");
}
