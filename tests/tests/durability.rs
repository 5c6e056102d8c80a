//! Durability (issue 5): in the default `durable` mode, SIGKILL at any moment loses no
//! acknowledged message; persistent sessions, their queues, inflight messages and retained
//! messages survive a restart. Real files on disk, real `kill -9`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_tests::clients::{
    publish_packet, publish_qos1, publish_sentinel, raw_connect, raw_ok_ack, reference_session,
    wait_disconnected, wait_session_expired, will, Opts, SENTINEL,
};
use sluice_tests::codec::{Packet, Protocol, PubAck, Publish, QoS, ReasonCode};
use sluice_tests::packets;
use sluice_tests::{Broker, BrokerOpts, RawClient, Recv};

const T: Duration = Duration::from_secs(5);

/// Starts a broker whose data lives in `data` (kept across restarts).
fn broker_on(data: &std::path::Path) -> Broker {
    configured_broker_on(data, "")
}

/// CONNECT at 3.1.1 with Clean Session 0 (a persistent session), which must succeed;
/// returns the client and Session Present.
async fn connect_persistent(broker: &Broker, id: &str) -> (RawClient, bool) {
    let (c, ack) = raw_ok_ack(broker.addr, Protocol::V311, id, &Opts::persistent(0)).await;
    (c, ack.session_present)
}

/// CONNECT at 5.0 with `o`; returns the client and Session Present (whatever the CONNACK said).
async fn connect_v5(broker: &Broker, id: &str, o: Opts) -> (RawClient, bool) {
    let (c, ack) = raw_connect(broker.addr, Protocol::V5, id, &o).await;
    (c, ack.session_present)
}

async fn subscribe(c: &mut RawClient, filter: &str, qos: QoS) {
    c.send(&packets::subscribe(1, filter, qos)).await.unwrap();
    assert!(matches!(
        c.expect_packet(T).await.unwrap(),
        Packet::SubAck(_)
    ));
}

/// A PUBLISH whose payload is the sequence number `seq` (4 bytes, big-endian).
fn publish_seq(topic: &str, qos: QoS, pkid: u16, seq: u32) -> Packet {
    publish_packet(topic, qos, pkid, seq.to_be_bytes())
}

/// Publishes `n` messages (odd sequence numbers at QoS 2, even at QoS 1), one at a time,
/// until the connection dies. Returns the sequence numbers whose flow the broker acknowledged
/// (PUBACK, or PUBREC for QoS 2: from then on the broker owns the message), and counts them
/// in `count` as they come.
async fn publish_until_killed(
    broker_addr: std::net::SocketAddr,
    n: u32,
    count: Arc<AtomicUsize>,
) -> Vec<u32> {
    let mut acked = Vec::new();
    let Ok(mut c) = RawClient::connect(broker_addr, Protocol::V311).await else {
        return acked;
    };
    if c.send_bytes(&sluice_tests::connect_bytes(Protocol::V311, "crash-pub"))
        .await
        .is_err()
    {
        return acked;
    }
    if !matches!(c.recv(T).await, Ok(Recv::Packet(p)) if matches!(*p, Packet::ConnAck(_))) {
        return acked;
    }
    for seq in 0..n {
        let qos = if seq % 2 == 1 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let pkid = (seq % 60_000 + 1) as u16;
        let p = publish_seq("crash/t", qos, pkid, seq);
        if c.send(&p).await.is_err() {
            return acked;
        }
        match c.recv(T).await {
            Ok(Recv::Packet(p)) => match *p {
                Packet::PubAck(_) => {
                    acked.push(seq);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Packet::PubRec(_) => {
                    acked.push(seq);
                    count.fetch_add(1, Ordering::Relaxed);
                    if c.send(&Packet::PubRel(PubAck::new(pkid))).await.is_err() {
                        return acked;
                    }
                    match c.recv(T).await {
                        Ok(Recv::Packet(p)) if matches!(*p, Packet::PubComp(_)) => {}
                        _ => return acked,
                    }
                }
                _ => return acked,
            },
            _ => return acked,
        }
    }
    acked
}

/// Receives one PUBLISH (each packet within [`T`]) and acknowledges it (QoS 1: PUBACK, QoS 2:
/// PUBREC, and PUBCOMP for the PUBRELs met on the way); returns it.
async fn next_acked(c: &mut RawClient) -> Publish {
    loop {
        match c.recv(T).await.unwrap() {
            Recv::Packet(p) => match *p {
                Packet::Publish(p) => {
                    match p.qos {
                        QoS::AtLeastOnce => {
                            c.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap()
                        }
                        QoS::ExactlyOnce => {
                            c.send(&Packet::PubRec(PubAck::new(p.pkid))).await.unwrap()
                        }
                        QoS::AtMostOnce => {}
                    }
                    return p;
                }
                Packet::PubRel(r) => c.send(&Packet::PubComp(PubAck::new(r.pkid))).await.unwrap(),
                _ => {}
            },
            Recv::Timeout => panic!("no PUBLISH within {T:?}"),
            Recv::Closed => panic!("subscriber connection closed while draining"),
        }
    }
}

/// (sequence number, QoS, DUP) of a PUBLISH whose payload starts with its sequence number.
fn seq_of(p: &Publish) -> (u32, QoS, bool) {
    let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
    (seq, p.qos, p.dup)
}

/// Reads and acknowledges exactly `n` PUBLISHes (each within [`T`]); returns (sequence number,
/// QoS, DUP) in arrival order.
async fn drain_n(c: &mut RawClient, n: usize) -> Vec<(u32, QoS, bool)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(seq_of(&next_acked(c).await));
    }
    got
}

/// Everything the broker has for `c` now: publishes a [`SENTINEL`] on `topic` (a topic `c` is
/// subscribed to) and reads PUBLISHes until it arrives, acknowledging each. The broker hands a
/// client its messages in the order it routed (or queued) them, so whatever it had for `c`
/// before the sentinel comes first: the drain ends on that condition, not on a quiet period
/// that a loaded machine could stretch. Returns (sequence number, QoS, DUP) in arrival order,
/// without the sentinel.
async fn drain_to_sentinel(
    broker: &Broker,
    c: &mut RawClient,
    topic: &str,
) -> Vec<(u32, QoS, bool)> {
    publish_sentinel(broker.addr, topic).await;
    let mut got = Vec::new();
    loop {
        let p = next_acked(c).await;
        if p.payload == SENTINEL.as_bytes() {
            return got;
        }
        got.push(seq_of(&p));
    }
}

/// The issue's crash test: a persistent subscriber is offline; a publisher sends QoS 1 and
/// QoS 2 messages; the broker is SIGKILLed at a random moment; after a restart the subscriber
/// gets every message the publisher saw acknowledged, QoS 2 ones exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_message() {
    for round in 0..3u64 {
        let data = tempfile::tempdir().unwrap();
        let mut broker = broker_on(data.path());
        let (mut sub, _) = connect_persistent(&broker, "crash-sub").await;
        subscribe(&mut sub, "crash/#", QoS::ExactlyOnce).await;
        drop(sub); // offline from here on: everything queues for it.

        // Kill after a random delay while the publisher is busy: counted from its first
        // acknowledgement, so that a slow start does not leave nothing to check.
        let kill_after = Duration::from_millis(150 + (rand_u64(round) % 600));
        let addr = broker.addr;
        let count = Arc::new(AtomicUsize::new(0));
        let publisher = {
            let count = count.clone();
            tokio::spawn(async move { publish_until_killed(addr, 100_000, count).await })
        };
        let deadline = std::time::Instant::now() + T * 2;
        while count.load(Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline && !publisher.is_finished(),
                "round {round}: the publisher got no ack"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(kill_after).await;
        broker.kill();
        let acked = publisher.await.unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: the publisher got no ack before the kill"
        );

        let broker = broker_on(data.path());
        let (mut sub, present) = connect_persistent(&broker, "crash-sub").await;
        assert!(
            present,
            "round {round}: session present after restart [MQTT-3.2.2-2]"
        );
        let got = drain_to_sentinel(&broker, &mut sub, "crash/t").await;
        let mut count: HashMap<u32, usize> = HashMap::new();
        for (seq, _, _) in &got {
            *count.entry(*seq).or_default() += 1;
        }
        let missing: Vec<u32> = acked
            .iter()
            .filter(|s| !count.contains_key(s))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged messages lost (of {}), first {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
        let dup_qos2: Vec<u32> = count
            .iter()
            .filter(|(s, n)| **s % 2 == 1 && **n > 1)
            .map(|(s, _)| *s)
            .collect();
        assert!(
            dup_qos2.is_empty(),
            "round {round}: QoS 2 delivered twice: {dup_qos2:?}"
        );
        let seqs: Vec<u32> = got.iter().map(|(s, _, _)| *s).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "round {round}: in publish order [MQTT-4.6.0-6]"
        );
        eprintln!(
            "round {round}: killed {kill_after:?} after the first ack, {} acknowledged, {} delivered after restart",
            acked.len(),
            got.len()
        );
    }
}

/// A deterministic per-round pseudo-random number (no RNG dependency in the tests).
fn rand_u64(seed: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 7
}

/// With the subscriber connected and not acknowledging, the messages in flight to it are
/// resent with DUP after a SIGKILL and restart, with the same packet ids [MQTT-4.4.0-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_messages_are_resent_with_dup_after_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = broker_on(data.path());
    let (mut sub, _) = connect_persistent(&broker, "inflight-sub").await;
    subscribe(&mut sub, "inf/#", QoS::ExactlyOnce).await;
    let (mut publ, _) = connect_persistent(&broker, "inflight-pub").await;
    for seq in 0..4u32 {
        let pkid = seq as u16 + 1;
        publ.send(&publish_seq("inf/t", QoS::AtLeastOnce, pkid, seq))
            .await
            .unwrap();
        assert!(matches!(
            publ.expect_packet(T).await.unwrap(),
            Packet::PubAck(_)
        ));
    }
    // The subscriber receives them and acknowledges none.
    let mut first = Vec::new();
    while first.len() < 4 {
        if let Packet::Publish(p) = sub.expect_packet(T).await.unwrap() {
            first.push((p.pkid, p.payload.clone()));
        }
    }
    // Durable: each Sent record was logged before its PUBLISH went out, and the SUBACK of a
    // SUBSCRIBE sent after them is held until the log is on disk up to it: once it arrives,
    // the Sent records are on disk.
    subscribe(&mut sub, "inf-barrier/x", QoS::AtMostOnce).await;
    broker.kill();
    drop(sub);

    let broker = broker_on(data.path());
    let (mut sub, present) = connect_persistent(&broker, "inflight-sub").await;
    assert!(present);
    let mut again = Vec::new();
    while again.len() < 4 {
        match sub.expect_packet(T).await.unwrap() {
            Packet::Publish(p) => {
                assert!(p.dup, "resent with DUP [MQTT-3.3.1-1]");
                again.push((p.pkid, p.payload.clone()));
            }
            other => panic!("expected the resent PUBLISHes, got {other:?}"),
        }
    }
    assert_eq!(again, first, "same packet ids and messages, in order");
}

/// Retained messages and subscriptions survive a restart (graceful this time: SIGTERM flushes
/// everything and leaves no recovery work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_subscriptions_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = broker_on(data.path());
    let (mut c, _) = connect_persistent(&broker, "keeper").await;
    subscribe(&mut c, "keep/#", QoS::AtLeastOnce).await;
    drop(c);
    let (mut p, _) = connect_persistent(&broker, "retainer").await;
    let mut retained = packets::publish("keep/r", QoS::AtLeastOnce, 1, 7u32.to_be_bytes());
    retained.retain = true;
    assert_eq!(
        publish_qos1(&mut p, retained).await.reason,
        ReasonCode::SUCCESS
    );
    drop(p);
    assert!(broker.terminate(T).unwrap().success());
    assert!(broker.log().iter().any(|l| l.contains("store recovered")));

    let broker = broker_on(data.path());
    assert!(broker
        .wait_log("store recovered", T)
        .unwrap()
        .contains("sessions=2"));
    // The offline subscriber got the message queued while it was away.
    let (mut c, present) = connect_persistent(&broker, "keeper").await;
    assert!(present);
    let got = drain_to_sentinel(&broker, &mut c, "keep/t").await;
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![7]);
    // A new subscriber gets the retained message [MQTT-3.3.1-6].
    let mut fresh = RawClient::connect(broker.addr, Protocol::V311)
        .await
        .unwrap();
    fresh
        .send_bytes(&sluice_tests::connect_bytes(Protocol::V311, "fresh"))
        .await
        .unwrap();
    fresh.expect_packet(T).await.unwrap();
    subscribe(&mut fresh, "keep/#", QoS::AtMostOnce).await;
    match fresh.expect_packet(T).await.unwrap() {
        Packet::Publish(p) => {
            assert!(p.retain);
            assert_eq!(&p.payload[..], &7u32.to_be_bytes());
        }
        other => panic!("expected the retained message, got {other:?}"),
    }
}

/// A corrupt log stops start-up with the file named, instead of starting empty.
#[test]
fn a_corrupt_log_stops_start_up_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    {
        let mut broker = broker_on(data.path());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (mut c, _) = connect_persistent(&broker, "a").await;
            subscribe(&mut c, "x/#", QoS::AtLeastOnce).await;
            let (mut d, _) = connect_persistent(&broker, "b").await;
            subscribe(&mut d, "y/#", QoS::AtLeastOnce).await;
        });
        assert!(broker.terminate(T).unwrap().success());
    }
    let log = data.path().join("wal-00000001.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[12] ^= 0xFF;
    std::fs::write(&log, &bytes).unwrap();
    let out = sluice_tests::run_sluice(
        &[
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            &data.path().display().to_string(),
        ],
        &[],
        data.path(),
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wal-00000001.log") && err.contains("corrupt"),
        "{err}"
    );
}

/// A will with a delay survives a crash: after the restart the client is gone, so its will is
/// published once the delay has passed [MQTT-3.1.3-9], to a persistent subscriber that was
/// restored too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_will_survives_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = broker_on(data.path());
    let (mut watcher, _) = connect_persistent(&broker, "watcher").await;
    subscribe(&mut watcher, "wills/#", QoS::AtLeastOnce).await;
    drop(watcher);
    let o = Opts::persistent(60).will(will("wills/device", b"gone", 1));
    let (mut device, _) = connect_v5(&broker, "device", o).await;
    // The session and will records were logged at CONNECT, unticketed; the SUBACK of a later
    // SUBSCRIBE on the same connection is held until the log is on disk up to it, so once it
    // arrives they are on disk too.
    subscribe(&mut device, "device-barrier/x", QoS::AtMostOnce).await;
    broker.kill();

    let broker = broker_on(data.path());
    let (mut watcher, present) = connect_persistent(&broker, "watcher").await;
    assert!(present);
    match watcher.expect_packet(Duration::from_secs(5)).await.unwrap() {
        Packet::Publish(p) => {
            assert_eq!(p.topic.as_str(), "wills/device");
            assert_eq!(&p.payload[..], b"gone");
        }
        other => panic!("expected the will, got {other:?}"),
    }
}

/// Session Expiry across a restart: a session with time left is resumed (session present),
/// one whose expiry ran out while the broker was down is gone [MQTT-3.1.2-23].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = broker_on(data.path());
    let from = broker.log_len();
    drop(connect_v5(&broker, "long", Opts::persistent(600)).await);
    drop(connect_v5(&broker, "short", Opts::persistent(2)).await);
    // Both connections are over (their sessions parked with their disconnect time) before the
    // shutdown.
    wait_disconnected(&broker, from, "long");
    wait_disconnected(&broker, from, "short");
    assert!(broker.terminate(T).unwrap().success());
    // The broker is down for longer than the short session's expiry: the interval counts from
    // the client's disconnect [MQTT-3.1.2-23], not from the restart. Nothing of this broker
    // runs meanwhile, so another broker keeps the time: a reference session parked there now,
    // after `short` disconnected, with the same 2 s interval, expires no earlier than `short`.
    let clock = Broker::start();
    let clock_from = clock.log_len();
    let reference = reference_session(&clock, 2).await;
    wait_session_expired(&clock, clock_from, &reference, Duration::from_secs(30));
    drop(clock);

    let broker = broker_on(data.path());
    let (_l, long_present) = connect_v5(&broker, "long", Opts::persistent(600)).await;
    let (_s, short_present) = connect_v5(&broker, "short", Opts::persistent(2)).await;
    assert!(long_present, "600 s session resumed after the restart");
    assert!(
        !short_present,
        "2 s session expired while the broker was down"
    );
}

/// A full store (here `persistence.max_disk_bytes = 1 MiB`) refuses new QoS 1 messages that
/// need storing with PUBACK 0x97 Quota Exceeded and a log line; the broker stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_with_quota_exceeded() {
    let data = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(BrokerOpts {
        config: "[persistence]\nmax_disk_bytes = 1048576\n[mqtt]\nmax_queued_bytes = 67108864\n"
            .into(),
        env: vec![(
            "SLUICE__PERSISTENCE__DIR".into(),
            data.path().display().to_string(),
        )],
        ..Default::default()
    })
    .unwrap();
    let (mut keeper, _) = connect_persistent(&broker, "keeper").await;
    subscribe(&mut keeper, "big/#", QoS::AtLeastOnce).await;
    drop(keeper);
    let mut refused = false;
    'outer: for attempt in 0..3 {
        let (mut p, _) =
            connect_v5(&broker, &format!("filler{attempt}"), Opts::persistent(0)).await;
        for i in 1..=40u16 {
            let payload = vec![b'x'; 64 * 1024];
            if p.send(&publish_packet("big/t", QoS::AtLeastOnce, i, payload))
                .await
                .is_err()
            {
                continue 'outer;
            }
            match p.recv(T).await.unwrap() {
                Recv::Packet(pk) => match *pk {
                    Packet::PubAck(a) if a.reason == ReasonCode::QUOTA_EXCEEDED => {
                        refused = true;
                        break 'outer;
                    }
                    Packet::PubAck(_) => {}
                    // The message in flight when the limit was hit closes that connection.
                    Packet::Disconnect(_) => continue 'outer,
                    other => panic!("unexpected {other:?}"),
                },
                _ => continue 'outer,
            }
        }
    }
    assert!(refused, "PUBACK 0x97 once the store is full");
    broker.wait_log("max_disk_bytes", T).unwrap();
    // Still serving.
    let (_c, _) = connect_v5(&broker, "after", Opts::persistent(0)).await;
}

/// Peak smoothing with the backlog on disk: a persistent subscriber stops reading while a burst
/// arrives; past `persistence.queue_memory_bytes` its queue stays in the log only, is read
/// back as the subscriber drains it (across a compaction, `persistence.compact_min_bytes`), and
/// survives a SIGKILL in the middle of the drain: every message arrives, first deliveries in
/// order (QoS 1: a message in flight at the crash may come again, with DUP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_is_kept_on_disk_and_drains_in_order_across_a_crash() {
    const N: u32 = 3000;
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Broker::start_with(BrokerOpts {
            config: "[persistence]\nqueue_memory_bytes = 4096\ncompact_min_bytes = 1048576\n"
                .into(),
            env: vec![(
                "SLUICE__PERSISTENCE__DIR".into(),
                data.path().display().to_string(),
            )],
            ..Default::default()
        })
        .unwrap()
    };
    let mut broker = start();
    let (mut sub, _) = connect_persistent(&broker, "smooth-sub").await;
    subscribe(&mut sub, "smooth/#", QoS::AtLeastOnce).await;
    // The subscriber reads nothing while the burst comes in.
    let (mut publ, _) = connect_persistent(&broker, "smooth-pub").await;
    for seq in 0..N {
        let mut payload = seq.to_be_bytes().to_vec();
        payload.resize(1000, b'.');
        let pkid = (seq % 60_000 + 1) as u16;
        publ.send(&publish_packet("smooth/t", QoS::AtLeastOnce, pkid, payload))
            .await
            .unwrap();
    }
    let mut acks = 0;
    while acks < N {
        match publ.expect_packet(T).await.unwrap() {
            Packet::PubAck(a) => {
                assert_eq!(a.reason.0, 0);
                acks += 1;
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // Drain most of it: the log (3 MB) is then more than 4x its live data and past
    // compact_min_bytes, so it is compacted while the rest of the queue is on disk only.
    let mut got: Vec<(u32, bool)> = Vec::new();
    let take = |got: &mut Vec<(u32, bool)>, p: sluice_tests::codec::Publish| {
        got.push((
            u32::from_be_bytes(p.payload[..4].try_into().unwrap()),
            p.dup,
        ));
        p.pkid
    };
    while got.len() < (N * 4 / 5) as usize {
        if let Packet::Publish(p) = sub.expect_packet(T).await.unwrap() {
            let pkid = take(&mut got, p);
            sub.send(&Packet::PubAck(PubAck::new(pkid))).await.unwrap();
        }
    }
    broker
        .wait_log("log compacted", T)
        .expect("the drained log is compacted");
    // A little more after the compaction (read back from the new log file), then crash.
    while got.len() < (N * 9 / 10) as usize {
        if let Packet::Publish(p) = sub.expect_packet(T).await.unwrap() {
            let pkid = take(&mut got, p);
            sub.send(&Packet::PubAck(PubAck::new(pkid))).await.unwrap();
        }
    }
    // The broker handles this connection's packets in order: its PINGRESP proves the PUBACKs
    // above were handled (PUBLISHes already on the way are taken and acknowledged too).
    sub.send(&Packet::PingReq).await.unwrap();
    loop {
        match sub.expect_packet(T).await.unwrap() {
            Packet::PingResp => break,
            Packet::Publish(p) => {
                let pkid = take(&mut got, p);
                sub.send(&Packet::PubAck(PubAck::new(pkid))).await.unwrap();
            }
            other => panic!("expected PUBLISH or PINGRESP, got {other:?}"),
        }
    }
    broker.kill();
    drop(sub);

    let broker = start();
    let (mut sub, present) = connect_persistent(&broker, "smooth-sub").await;
    assert!(present, "the session survived the crash");
    for (seq, qos, dup) in drain_to_sentinel(&broker, &mut sub, "smooth/t").await {
        assert_eq!(qos, QoS::AtLeastOnce);
        got.push((seq, dup));
    }
    let mut seen = std::collections::HashSet::new();
    let mut first: Vec<u32> = Vec::new();
    for (seq, dup) in &got {
        if seen.insert(*seq) {
            first.push(*seq);
        } else {
            assert!(
                dup,
                "a repeated delivery carries DUP [MQTT-3.3.1-1] (seq {seq})"
            );
        }
    }
    assert_eq!(
        first,
        (0..N).collect::<Vec<_>>(),
        "every acknowledged message arrives, first deliveries in publish order [MQTT-4.6.0-6]"
    );
}

/// Messages waiting in a shared subscription's group queue (every member's window full) were
/// acknowledged to the publisher, so they survive a crash too, and go to the members when they
/// come back (4.8.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_queue_survives_a_crash() {
    const N: u32 = 100;
    let data = tempfile::tempdir().unwrap();
    let mut broker = broker_on(data.path());
    let member = || Opts::persistent(300).receive_maximum(Some(5));
    let mut members = Vec::new();
    for id in ["worker-a", "worker-b"] {
        let (mut c, _) = connect_v5(&broker, id, member()).await;
        subscribe(&mut c, "$share/g/jobs/#", QoS::AtLeastOnce).await;
        members.push(c);
    }
    // The members read nothing: 5 messages fill each window, the rest wait in the group queue.
    let (mut publ, _) = connect_persistent(&broker, "jobs-pub").await;
    for seq in 0..N {
        let pkid = seq as u16 + 1;
        let p = publish_seq("jobs/x", QoS::AtLeastOnce, pkid, seq);
        publ.send(&p).await.unwrap();
    }
    for _ in 0..N {
        assert!(matches!(
            publ.expect_packet(T).await.unwrap(),
            Packet::PubAck(_)
        ));
    }
    broker.kill();
    drop(members);

    let broker = broker_on(data.path());
    let got = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let mut readers = Vec::new();
    for id in ["worker-a", "worker-b"] {
        let (c, present) = connect_v5(&broker, id, member()).await;
        assert!(present, "{id}: session restored");
        readers.push(tokio::spawn(read_until_all(c, got.clone(), N as usize)));
    }
    // Each member reads (and acknowledges) until the two together have every message, or
    // until the deadline: the end is a count, not a quiet period.
    for r in readers {
        r.await.unwrap();
    }
    let got = got.lock().unwrap();
    let missing: Vec<u32> = (0..N).filter(|s| !got.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages lost with the group queue: {missing:?}"
    );
}

/// Reads and acknowledges PUBLISHes on `c`, adding their sequence numbers to `got`, until `got`
/// holds `n` (read by this and other members) or 30 s have passed (the caller then reports
/// what is missing).
async fn read_until_all(
    mut c: RawClient,
    got: Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
    n: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < n && tokio::time::Instant::now() < deadline {
        match c.recv(Duration::from_millis(100)).await.unwrap() {
            Recv::Packet(p) => {
                if let Packet::Publish(p) = *p {
                    c.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap();
                    got.lock().unwrap().insert(seq_of(&p).0);
                }
            }
            Recv::Timeout => {}
            Recv::Closed => panic!("member connection closed while reading"),
        }
    }
}

/// A session resumed without Session Expiry (v5: 0) goes on without the log: the queue it had
/// on disk comes back into memory first, nothing is lost [MQTT-3.1.2-4].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_expiry_zero_keeps_the_queued_messages() {
    let data = tempfile::tempdir().unwrap();
    let broker = broker_on(data.path());
    let (mut sub, _) = connect_v5(&broker, "resume-zero", Opts::persistent(600)).await;
    subscribe(&mut sub, "rz/#", QoS::AtLeastOnce).await;
    let from = broker.log_len();
    drop(sub);
    // Offline (its session parked) before the messages: they queue for it.
    wait_disconnected(&broker, from, "resume-zero");
    let (mut publ, _) = connect_persistent(&broker, "rz-pub").await;
    for seq in 0..5u32 {
        let p = publish_seq("rz/t", QoS::AtLeastOnce, seq as u16 + 1, seq);
        publ.send(&p).await.unwrap();
        assert!(matches!(
            publ.expect_packet(T).await.unwrap(),
            Packet::PubAck(_)
        ));
    }
    let (mut sub, present) = connect_v5(&broker, "resume-zero", Opts::persistent(0)).await;
    assert!(present);
    let got: Vec<u32> = drain_to_sentinel(&broker, &mut sub, "rz/t")
        .await
        .into_iter()
        .map(|(seq, _, _)| seq)
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}

/// `mqtt.queue_full_policy = "reject"`: once a subscriber's queue is full, a QoS 1/2 PUBLISH is
/// refused for everybody and the publisher is told (v5 PUBACK/PUBREC 0x97; 3.1.1 disconnected)
/// instead of the subscriber silently missing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_can_push_back_on_the_publisher() {
    let data = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(BrokerOpts {
        config: "[mqtt]\nmax_queued_messages = 3\nqueue_full_policy = \"reject\"\n".into(),
        env: vec![(
            "SLUICE__PERSISTENCE__DIR".into(),
            data.path().display().to_string(),
        )],
        ..Default::default()
    })
    .unwrap();
    let (mut sub, _) = connect_persistent(&broker, "slow").await;
    subscribe(&mut sub, "full/#", QoS::AtLeastOnce).await;
    let from = broker.log_len();
    drop(sub);
    // Offline (its session parked) before the messages: they queue for it.
    wait_disconnected(&broker, from, "slow");
    let (mut publ, _) = connect_v5(&broker, "full-pub", Opts::persistent(0)).await;
    let mut reasons = Vec::new();
    for seq in 0..5u32 {
        let p = publish_seq("full/t", QoS::AtLeastOnce, seq as u16 + 1, seq);
        publ.send(&p).await.unwrap();
        match publ.expect_packet(T).await.unwrap() {
            Packet::PubAck(a) => reasons.push(a.reason),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
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
    publ.send(&publish_seq("full/t", QoS::ExactlyOnce, 9, 9u32))
        .await
        .unwrap();
    match publ.expect_packet(T).await.unwrap() {
        Packet::PubRec(a) => assert_eq!(a.reason, ReasonCode::QUOTA_EXCEEDED),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // A 3.1.1 publisher cannot be told in an ack: its connection is closed.
    let (mut old, _) = connect_persistent(&broker, "full-pub-311").await;
    old.send(&publish_seq("full/t", QoS::AtLeastOnce, 1, 7u32))
        .await
        .unwrap();
    assert!(matches!(old.recv(T).await.unwrap(), Recv::Closed));
    broker.wait_log("queue_full_policy = reject", T).unwrap();
    let (mut sub, _) = connect_persistent(&broker, "slow").await;
    let got: Vec<u32> = drain_n(&mut sub, 3)
        .await
        .into_iter()
        .map(|(seq, _, _)| seq)
        .collect();
    assert_eq!(got, vec![0, 1, 2], "what was accepted, in order");
    // The queue holds 3: once the broker has read the PUBACKs (a PINGRESP after them on the
    // same connection says so) a sentinel fits in, and nothing else came before it.
    sub.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(
        sub.expect_packet(T).await.unwrap(),
        Packet::PingResp
    ));
    let more = drain_to_sentinel(&broker, &mut sub, "full/t").await;
    assert!(more.is_empty(), "exactly what was accepted: also {more:?}");
}

/// Resident memory of process `pid` in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A shared subscription's group queue is disk-backed like a session queue: past
/// `persistence.queue_memory_bytes` its messages wait in the log only. The one member of
/// `$share/big/...` (Receive Maximum 5, reading nothing) lets 48 MiB of QoS 1 messages pile up
/// in the group queue: the broker's resident memory grows by far less than that (a queue held in
/// memory grows it by all of it). Then the member drains the queue: every message, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_backlog_waits_on_disk_not_in_memory() {
    const N: u32 = 1500;
    const SIZE: usize = 32 * 1024;
    let data = tempfile::tempdir().unwrap();
    let broker = broker_on(data.path());
    let member = Opts {
        clean: true,
        ..Opts::persistent(0)
    };
    let (mut worker, _) = connect_v5(&broker, "big-worker", member.receive_maximum(Some(5))).await;
    subscribe(&mut worker, "$share/big/big/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = connect_v5(&broker, "big-pub", Opts::persistent(0)).await;
    let before = rss_kib(broker.pid());
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        for &seq in chunk {
            let mut payload = seq.to_be_bytes().to_vec();
            payload.resize(SIZE, b'.');
            let pkid = seq as u16 + 1;
            publ.send(&publish_packet("big/t", QoS::AtLeastOnce, pkid, payload))
                .await
                .unwrap();
        }
        for _ in chunk {
            match publ.expect_packet(T).await.unwrap() {
                Packet::PubAck(a) => assert_eq!(a.reason.0, 0, "accepted"),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }
    let grown_mib = rss_kib(broker.pid()).saturating_sub(before) / 1024;
    let queued_mib = (N as usize * SIZE) >> 20;
    eprintln!("group backlog: {queued_mib} MiB queued, broker RSS grew {grown_mib} MiB");
    assert!(
        grown_mib < queued_mib as u64 / 2,
        "{queued_mib} MiB waiting in the group queue grew the broker by {grown_mib} MiB: it is held in memory"
    );
    let got: Vec<u32> = drain_to_sentinel(&broker, &mut worker, "big/t")
        .await
        .into_iter()
        .map(|(seq, _, _)| seq)
        .collect();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every message, read back from the log in order [MQTT-4.6.0-6]"
    );
}

/// Publishes QoS 1 `seq` on `topic` from `publ` and waits for its PUBACK: in `durable` mode
/// the PUBACK waits for the store to have everything logged before it, so once it is here the
/// broker's earlier (unticketed) records are on disk too.
async fn publish_acked(publ: &mut RawClient, topic: &str, seq: u32) {
    let p = packets::publish(topic, QoS::AtLeastOnce, seq as u16 + 1, seq.to_be_bytes());
    assert_eq!(publish_qos1(publ, p).await.reason, ReasonCode::SUCCESS);
}

/// A v5 member of `filter` with Receive Maximum 1 and Session Expiry `expiry`.
async fn one_slot_member(broker: &Broker, id: &str, expiry: u32, filter: &str) -> RawClient {
    let o = Opts {
        clean: true,
        ..Opts::persistent(expiry)
    };
    let (mut c, _) = connect_v5(broker, id, o.receive_maximum(Some(1))).await;
    subscribe(&mut c, filter, QoS::AtLeastOnce).await;
    c
}

/// Sequence numbers a new member of `filter` receives until `last` arrives (publishing `last`
/// after it subscribed), acknowledging each.
async fn new_member_until(broker: &Broker, filter: &str, topic: &str, last: u32) -> Vec<u32> {
    let mut b = one_slot_member(broker, "orphan-new", 0, filter).await;
    let (mut publ, _) = connect_v5(broker, "orphan-pub2", Opts::persistent(0)).await;
    publish_acked(&mut publ, topic, last).await;
    let mut got = Vec::new();
    while !got.contains(&last) {
        match b.expect_packet(T).await.unwrap() {
            Packet::Publish(p) => {
                got.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                b.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap();
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    got
}

/// A group's kept messages survive a crash (`mqtt.shared_group_orphan_policy = "keep"`, the
/// default): the only member (Session Expiry 0, so nothing of it is persistent) leaves with
/// message 0 unacknowledged and 1, 2 waiting in the group queue; the broker is SIGKILLed; after
/// the restart a new member gets all three. The acknowledged messages were the group's, not the
/// departed session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_without_members_keeps_its_messages_across_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = broker_on(data.path());
    let mut a = one_slot_member(&broker, "orphan-a", 0, "$share/keep/keep/t").await;
    let (mut publ, _) = connect_v5(&broker, "orphan-pub", Opts::persistent(0)).await;
    for seq in 0..3 {
        publish_acked(&mut publ, "keep/t", seq).await;
    }
    assert!(matches!(
        a.expect_packet(T).await.unwrap(),
        Packet::Publish(_)
    ));
    let from = broker.log_len();
    drop(a);
    broker.wait_log_from(from, "kept=3", T).unwrap();
    publish_acked(&mut publ, "unrelated/t", 99).await;
    broker.kill();

    let broker = broker_on(data.path());
    let mut got = new_member_until(&broker, "$share/keep/keep/t", "keep/t", 3).await;
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3]);
}

/// `mqtt.shared_group_orphan_policy = "drop"` across a restart: the only member is persistent
/// (Session Expiry 1 s) and leaves with message 0 unacknowledged and 1, 2 waiting in the group
/// queue; when its session expires the group has no member left and all three are dropped
/// (counted in the log, and in the log on disk); after a SIGKILL and a restart a new member gets
/// only what is published after it subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_group_stays_dropped_across_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Broker::start_with(BrokerOpts {
            config: "[mqtt]\nshared_group_orphan_policy = \"drop\"\n".into(),
            env: vec![(
                "SLUICE__PERSISTENCE__DIR".into(),
                data.path().display().to_string(),
            )],
            ..Default::default()
        })
        .unwrap()
    };
    let mut broker = start();
    let mut a = one_slot_member(&broker, "orphan-a", 1, "$share/drop/drop/t").await;
    let (mut publ, _) = connect_v5(&broker, "orphan-pub", Opts::persistent(0)).await;
    for seq in 0..3 {
        publish_acked(&mut publ, "drop/t", seq).await;
    }
    assert!(matches!(
        a.expect_packet(T).await.unwrap(),
        Packet::Publish(_)
    ));
    let from = broker.log_len();
    drop(a);
    broker.wait_log_from(from, "dropped=3", T).unwrap();
    publish_acked(&mut publ, "unrelated/t", 99).await;
    broker.kill();

    let broker = start();
    assert_eq!(
        new_member_until(&broker, "$share/drop/drop/t", "drop/t", 3).await,
        vec![3]
    );
}

/// A field `name=value` of a log line, as a number.
fn log_field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Like [`broker_on`], with `config` as the configuration file.
fn configured_broker_on(data: &std::path::Path, config: &str) -> Broker {
    Broker::on_data_dir(data, config)
}

/// `{name}-sub` subscribes to `{name}/#` at QoS 1 with a persistent session and goes away; then
/// `{name}-pub` publishes `n` QoS 1 messages to `{name}/t` (payload: the sequence number, 4
/// bytes) and has every PUBACK, so they wait in the subscriber's queue. Returns the publisher.
async fn queue_for_offline_subscriber(broker: &Broker, name: &str, n: u32) -> RawClient {
    let (mut sub, _) = connect_persistent(broker, &format!("{name}-sub")).await;
    subscribe(&mut sub, &format!("{name}/#"), QoS::AtLeastOnce).await;
    drop(sub);
    let (mut publ, _) = connect_persistent(broker, &format!("{name}-pub")).await;
    let topic = format!("{name}/t");
    for seq in 0..n {
        let p = publish_seq(&topic, QoS::AtLeastOnce, (seq % 60_000 + 1) as u16, seq);
        publ.send(&p).await.unwrap();
    }
    for _ in 0..n {
        assert!(matches!(
            publ.expect_packet(T).await.unwrap(),
            Packet::PubAck(_)
        ));
    }
    publ
}

/// Draining a backlog logs two records per message (sent, acknowledged) that no acknowledgement
/// waits for: losing one in a crash only means a redelivery with DUP. They ride along with the
/// next group commit (at most `persistence.lazy_commit` later) instead of forcing an fsync each,
/// so the drain costs far fewer fsyncs than messages; counted by the store itself (the `store
/// closed` line at shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_backlog_costs_far_fewer_fsyncs_than_messages() {
    const N: u32 = 300;
    let data = tempfile::tempdir().unwrap();
    // Well above the consumer's own fsync (below), whatever the disk's speed.
    let start = || configured_broker_on(data.path(), "[persistence]\nlazy_commit = 100\n");
    let mut broker = start();
    let publ = queue_for_offline_subscriber(&broker, "fsync", N).await;
    drop(publ);
    assert!(broker.terminate(T).unwrap().success());

    // A fresh process: its counts are the drain's alone.
    let mut broker = start();
    let (mut sub, present) = connect_persistent(&broker, "fsync-sub").await;
    assert!(present);
    // The consumer keeps each message safe before acknowledging it (its own fsync), as a
    // consumer of orders would: its acknowledgements come one by one, each after the broker's
    // writer has gone idle, and each used to cost the broker an fsync.
    let journal = data.path().join("consumer.journal");
    let mut journal = std::fs::File::create(journal).unwrap();
    let mut got = 0;
    while got < N {
        if let Packet::Publish(p) = sub.expect_packet(T).await.unwrap() {
            got += 1;
            std::io::Write::write_all(&mut journal, &p.payload).unwrap();
            journal.sync_data().unwrap();
            sub.send(&Packet::PubAck(PubAck::new(p.pkid)))
                .await
                .unwrap();
        }
    }
    drop(sub);
    assert!(broker.terminate(T).unwrap().success());
    let line = broker.wait_log("store closed", T).unwrap();
    eprintln!("draining {N} messages: {line}");
    let (fsyncs, records) = (log_field(&line, "fsyncs"), log_field(&line, "records"));
    assert!(
        records >= u64::from(2 * N),
        "every delivery and acknowledgement was logged: {line}"
    );
    assert!(
        fsyncs < u64::from(N / 4),
        "{fsyncs} fsyncs to drain {N} messages: acknowledgement records must ride along with group commits ({line})"
    );
}

/// Every message the subscriber may have seen before a crash comes again with DUP set
/// [MQTT-3.3.1-1], even when the crash came before the broker had logged that it sent it (with
/// `lazy_commit = 1000` those records wait a whole second for the disk): the broker logs how far
/// its deliveries may have gone before they go, and marks what comes again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redelivery_after_a_crash_carries_dup() {
    const N: u32 = 60;
    let data = tempfile::tempdir().unwrap();
    let start = || configured_broker_on(data.path(), "[persistence]\nlazy_commit = 1000\n");
    let mut broker = start();
    let _publ = queue_for_offline_subscriber(&broker, "dup", N).await;
    // The subscriber comes back and reads everything; it acknowledges the first third only.
    let (mut sub, present) = connect_persistent(&broker, "dup-sub").await;
    assert!(present);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N as usize {
        if let Packet::Publish(p) = sub.expect_packet(T).await.unwrap() {
            let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
            assert!(!p.dup, "a first delivery has DUP 0");
            seen.insert(seq);
            if seq < N / 3 {
                sub.send(&Packet::PubAck(PubAck::new(p.pkid)))
                    .await
                    .unwrap();
            }
        }
    }
    broker.kill();
    drop(sub);

    let broker = start();
    let (mut sub, present) = connect_persistent(&broker, "dup-sub").await;
    assert!(present, "the session survived the crash");
    let again = drain_to_sentinel(&broker, &mut sub, "dup/t").await;
    let missing: Vec<u32> = (N / 3..N)
        .filter(|s| !again.iter().any(|(seq, _, _)| seq == s))
        .collect();
    assert!(
        missing.is_empty(),
        "unacknowledged messages not delivered again: {missing:?}"
    );
    let without_dup: Vec<u32> = again
        .iter()
        .filter(|(seq, _, dup)| seen.contains(seq) && !dup)
        .map(|(seq, _, _)| *seq)
        .collect();
    assert!(
        without_dup.is_empty(),
        "{} of {} repeated deliveries without DUP [MQTT-3.3.1-1]: {without_dup:?}",
        without_dup.len(),
        again.len()
    );
}

/// Only what may have gone out before is marked: after a subscriber's clean disconnect and a
/// graceful restart, what was queued meanwhile is a first delivery, DUP 0 [MQTT-3.3.1-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deliveries_after_a_clean_restart_have_no_dup() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = broker_on(data.path());
    let (mut sub, _) = connect_persistent(&broker, "clean-sub").await;
    subscribe(&mut sub, "clean/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = connect_persistent(&broker, "clean-pub").await;
    let publish_range = async |publ: &mut RawClient, range: std::ops::Range<u32>| {
        for seq in range {
            let p = publish_seq("clean/t", QoS::AtLeastOnce, seq as u16 + 1, seq);
            publ.send(&p).await.unwrap();
            assert!(matches!(
                publ.expect_packet(T).await.unwrap(),
                Packet::PubAck(_)
            ));
        }
    };
    // Online: delivered and acknowledged.
    publish_range(&mut publ, 0..5).await;
    let got = drain_to_sentinel(&broker, &mut sub, "clean/t").await;
    assert_eq!(got.len(), 5);
    sub.send(&Packet::Disconnect(sluice_tests::codec::Disconnect::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )))
    .await
    .unwrap();
    drop(sub);
    // Offline: queued.
    publish_range(&mut publ, 5..10).await;
    drop(publ);
    assert!(broker.terminate(T).unwrap().success());

    let broker = broker_on(data.path());
    let (mut sub, present) = connect_persistent(&broker, "clean-sub").await;
    assert!(present);
    let got = drain_to_sentinel(&broker, &mut sub, "clean/t").await;
    assert_eq!(
        got.iter().map(|g| (g.0, g.2)).collect::<Vec<_>>(),
        (5..10).map(|s| (s, false)).collect::<Vec<_>>(),
        "the queued messages, once each, as first deliveries"
    );
}

/// A client that reconnects at once after a clean DISCONNECT gets its unacknowledged messages
/// again with DUP and the ones never sent as first deliveries, DUP 0 [MQTT-3.3.1-1]: the new
/// connection reads how far the session's deliveries went after the old one set it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_reconnect_marks_only_what_was_sent() {
    let data = tempfile::tempdir().unwrap();
    // Records nobody waits for wait up to a second for the writer: the old connection's last
    // ones are still on their way when the client is back.
    let broker = Broker::start_with(BrokerOpts {
        config: "[persistence]\nlazy_commit = 1000\n".into(),
        env: vec![(
            "SLUICE__PERSISTENCE__DIR".into(),
            data.path().display().to_string(),
        )],
        ..Default::default()
    })
    .unwrap();
    let client = || Opts::persistent(600).receive_maximum(Some(2));
    let (mut sub, _) = connect_v5(&broker, "quick-sub", client()).await;
    subscribe(&mut sub, "quick/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = connect_persistent(&broker, "quick-pub").await;
    for seq in 0..10u32 {
        let p = publish_seq("quick/t", QoS::AtLeastOnce, seq as u16 + 1, seq);
        publ.send(&p).await.unwrap();
        assert!(matches!(
            publ.expect_packet(T).await.unwrap(),
            Packet::PubAck(_)
        ));
    }
    // Two in flight (Receive Maximum 2), unacknowledged; eight still queued.
    let mut first = Vec::new();
    while first.len() < 2 {
        if let Packet::Publish(p) = sub.expect_packet(T).await.unwrap() {
            first.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
        }
    }
    sub.send(&Packet::Disconnect(sluice_tests::codec::Disconnect::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )))
    .await
    .unwrap();
    drop(sub);
    let (mut sub, present) = connect_v5(&broker, "quick-sub", client()).await;
    assert!(present);
    let got = drain_to_sentinel(&broker, &mut sub, "quick/t").await;
    let expected: Vec<(u32, bool)> = (0..10).map(|s| (s, first.contains(&s))).collect();
    assert_eq!(
        got.iter().map(|g| (g.0, g.2)).collect::<Vec<_>>(),
        expected,
        "in order; DUP on the two sent before, not on the rest"
    );
}
