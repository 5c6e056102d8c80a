//! The `[limits]` section: bounds on topics, subscriptions, client identifiers, connections,
//! the CONNECT deadline and per-connection publish rates, with the MQTT 5.0 reason codes (and
//! 3.1.1 return codes) the broker answers with when a client goes over them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::{Bytes, BytesMut};
use sluice_tests::clients::{connected, publish_packet, try_connect, wait_log_all, Opts};
use sluice_tests::codec::{
    LastWill, Packet, Protocol, PublishProperties, QoS, Subscribe, SubscribeProperties,
    Subscription, SubscriptionOptions,
};
use sluice_tests::{client_id, Broker, RawClient, Recv};

const STEP: Duration = Duration::from_secs(5);

/// SUBSCRIBEs to `filters` at QoS 1 in one packet; returns the SUBACK's codes.
async fn suback_codes(c: &mut RawClient, filters: &[&str]) -> Result<Vec<u8>> {
    c.send(&Packet::Subscribe(Subscribe {
        pkid: 9,
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
        rejected: vec![],
        properties: SubscribeProperties::default(),
    }))
    .await?;
    match c.expect_packet(STEP).await? {
        Packet::SubAck(a) => Ok(a.reasons.iter().map(|r| r.0).collect()),
        other => bail!("expected SUBACK, got {other:?}"),
    }
}

/// A QoS 1 PUBLISH and its PUBACK; returns the round-trip time.
async fn qos1_round_trip(c: &mut RawClient, topic: &str, pkid: u16) -> Result<Duration> {
    let t = Instant::now();
    c.send(&publish_packet(topic, QoS::AtLeastOnce, pkid, b"probe"))
        .await?;
    loop {
        match c.expect_packet(STEP).await? {
            Packet::PubAck(a) if a.pkid == pkid => return Ok(t.elapsed()),
            Packet::Publish(_) => {}
            other => bail!("expected PUBACK {pkid}, got {other:?}"),
        }
    }
}

/// `max_topic_levels = 4` (the protocol sets no limit; over the server's own limit the 5.0
/// reason codes are 0x8F Topic Filter invalid in SUBACK, 3.9.3, and 0x90 Topic Name invalid in
/// DISCONNECT, 3.14.2.1): a 5-level filter gets SUBACK 0x8F while a 4-level one is granted; a
/// 5-level PUBLISH is DISCONNECT 0x90 (3.1.1: SUBACK 0x80, and the connection closed).
#[tokio::test]
async fn max_topic_levels() -> Result<()> {
    let broker = Broker::with_config("[limits]\nmax_topic_levels = 4\n");
    let mut c = connected(broker.addr, Protocol::V5, "lim").await;
    assert_eq!(
        suback_codes(&mut c, &["a/b/c/d", "a/b/c/d/e", "a/b/c/#", "a/b/c/d/#"]).await?,
        vec![1, 0x8F, 1, 0x8F]
    );
    // A 4-level PUBLISH is delivered (the client is subscribed to a/b/c/d).
    c.send(&publish_packet("a/b/c/d", QoS::AtMostOnce, 0, b"4"))
        .await?;
    match c.expect_packet(STEP).await? {
        Packet::Publish(p) => assert_eq!(p.topic.as_str(), "a/b/c/d"),
        other => panic!("expected the 4-level message, got {other:?}"),
    }
    c.send(&publish_packet("a/b/c/d/e", QoS::AtMostOnce, 0, b"5"))
        .await?;
    c.expect_disconnect(STEP, 0x90, "5-level PUBLISH").await?;

    let mut c = connected(broker.addr, Protocol::V311, "lim").await;
    assert_eq!(
        suback_codes(&mut c, &["x/y/z/w/v", "x/y"]).await?,
        vec![0x80, 1]
    );
    c.send(&publish_packet("x/y/z/w/v", QoS::AtLeastOnce, 1, b"5"))
        .await?;
    let seen = c.expect_closed(STEP).await?;
    assert!(
        !seen.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "3.1.1: no PUBACK for a refused PUBLISH: {seen:?}"
    );
    Ok(())
}

/// `max_topic_length = 16` (the protocol allows 65,535 bytes, 1.5.4): a 17-byte filter gets
/// SUBACK 0x8F, a 17-byte topic name in PUBLISH is DISCONNECT 0x90 (3.14.2.1), and a will with
/// such a topic is CONNACK 0x90 (3.2.2.2); 16 bytes are fine.
#[tokio::test]
async fn max_topic_length() -> Result<()> {
    let broker = Broker::with_config("[limits]\nmax_topic_length = 16\n");
    let ok = "t/23456789abcdef"; // 16 bytes
    let long = "t/23456789abcdefg"; // 17 bytes
    let mut c = connected(broker.addr, Protocol::V5, "lim").await;
    assert_eq!(suback_codes(&mut c, &[ok, long]).await?, vec![1, 0x8F]);
    c.send(&publish_packet(ok, QoS::AtMostOnce, 0, b"16"))
        .await?;
    match c.expect_packet(STEP).await? {
        Packet::Publish(p) => assert_eq!(p.topic.as_str(), ok),
        other => panic!("expected the 16-byte topic's message, got {other:?}"),
    }
    c.send(&publish_packet(long, QoS::AtMostOnce, 0, b"17"))
        .await?;
    c.expect_disconnect(STEP, 0x90, "17-byte topic name")
        .await?;

    let will = LastWill {
        topic: long.try_into().unwrap(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        delay_interval: 0,
        properties: PublishProperties::default(),
    };
    let o = Opts::default().will(will);
    let (_c, a) = try_connect(broker.addr, Protocol::V5, &client_id("will"), &o).await?;
    assert_eq!(a.reason.0, 0x90, "{a:?}");
    Ok(())
}

/// `max_subscriptions_per_client = 2`: further filters get SUBACK 0x97 Quota exceeded (3.9.3;
/// 3.1.1: 0x80 Failure, 3.9.3 of 3.1.1), the first two are granted.
#[tokio::test]
async fn max_subscriptions_per_client() -> Result<()> {
    let broker = Broker::with_config("[limits]\nmax_subscriptions_per_client = 2\n");
    let mut c = connected(broker.addr, Protocol::V5, "lim").await;
    assert_eq!(
        suback_codes(&mut c, &["s/1", "s/2", "s/3"]).await?,
        vec![1, 1, 0x97]
    );
    assert_eq!(suback_codes(&mut c, &["s/4"]).await?, vec![0x97]);
    let mut c = connected(broker.addr, Protocol::V311, "lim").await;
    assert_eq!(
        suback_codes(&mut c, &["s/1", "s/2", "s/3"]).await?,
        vec![1, 1, 0x80]
    );
    Ok(())
}

/// `max_client_id_length = 8` ([MQTT-3.1.3-5] lets the server accept longer ids; this one does
/// not): a 9-byte id gets CONNACK 0x85 Client Identifier not valid (3.1.1: return code 2
/// Identifier rejected); 8 bytes are accepted.
#[tokio::test]
async fn max_client_id_length() -> Result<()> {
    let broker = Broker::with_config("[limits]\nmax_client_id_length = 8\n");
    let (_c, a) = try_connect(broker.addr, Protocol::V5, "abcdefgh", &Opts::default()).await?;
    assert_eq!(a.reason.0, 0, "8 bytes accepted: {a:?}");
    let (mut c, a) = try_connect(broker.addr, Protocol::V5, "abcdefghi", &Opts::default()).await?;
    assert_eq!(a.reason.0, 0x85, "{a:?}");
    c.expect_closed(STEP).await?;
    // The codec decodes 3.1.1 return code 2 as 0x85.
    let (mut c, a) =
        try_connect(broker.addr, Protocol::V311, "abcdefghi", &Opts::default()).await?;
    assert_eq!(a.reason.0, 0x85, "3.1.1 return code 2: {a:?}");
    c.expect_closed(STEP).await?;
    Ok(())
}

/// `max_connections = 3`: the 4th client gets CONNACK 0x89 Server busy (3.2.2.2; 3.1.1: return
/// code 3 Server unavailable) and is closed, while the first three keep working; once one of
/// them leaves, a new client is admitted.
#[tokio::test]
async fn max_connections() -> Result<()> {
    let broker = Broker::with_config("[limits]\nmax_connections = 3\n");
    let mut sub = connected(broker.addr, Protocol::V5, "lim").await;
    let mut publisher = connected(broker.addr, Protocol::V311, "lim").await;
    let third_id = client_id("third");
    let (third, a) = try_connect(broker.addr, Protocol::V5, &third_id, &Opts::default()).await?;
    assert_eq!(a.reason.0, 0, "CONNACK {a:?}");
    let (mut c, a) = try_connect(
        broker.addr,
        Protocol::V5,
        &client_id("fourth"),
        &Opts::default(),
    )
    .await?;
    assert_eq!(a.reason.0, 0x89, "4th v5 client: {a:?}");
    c.expect_closed(STEP).await?;
    // The codec decodes 3.1.1 return code 3 as 0x88.
    let (mut c, a) = try_connect(
        broker.addr,
        Protocol::V311,
        &client_id("fourth"),
        &Opts::default(),
    )
    .await?;
    assert_eq!(a.reason.0, 0x88, "4th 3.1.1 client, return code 3: {a:?}");
    c.expect_closed(STEP).await?;

    assert_eq!(suback_codes(&mut sub, &["mc/t"]).await?, vec![1]);
    qos1_round_trip(&mut publisher, "mc/t", 1).await?;
    match sub.expect_packet(STEP).await? {
        Packet::Publish(p) => assert_eq!(p.topic.as_str(), "mc/t"),
        other => panic!("expected the message, got {other:?}"),
    }

    let from = broker.log_len();
    drop(third);
    wait_log_all(&broker, from, &["client disconnected", &third_id], STEP);
    // Its slot is given back as its task ends, just after that line: retry briefly (bounded).
    let deadline = Instant::now() + STEP;
    loop {
        let (_c, a) = try_connect(
            broker.addr,
            Protocol::V5,
            &client_id("later"),
            &Opts::default(),
        )
        .await?;
        if a.reason.0 == 0 {
            break;
        }
        assert_eq!(a.reason.0, 0x89);
        assert!(
            Instant::now() < deadline,
            "a slot never became free after a client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `connect_timeout = 1` (3.1.4: "If the Server does not receive a CONNECT packet within a
/// reasonable amount of time after the Network Connection is established, the Server SHOULD
/// close the Network Connection"): a socket that never sends CONNECT is closed after ~1 s.
#[tokio::test]
async fn connect_timeout_closes_silent_socket() -> Result<()> {
    let broker = Broker::with_config("[limits]\nconnect_timeout = 1\n");
    let mut c = RawClient::connect(broker.addr, Protocol::V5).await?;
    let t = Instant::now();
    // Closed well before the default timeout (10 s) would do it; no tighter upper bound, as a
    // loaded machine may be slow to run the timer.
    let seen = c.expect_closed(Duration::from_secs(9)).await?;
    let took = t.elapsed();
    assert!(seen.is_empty(), "nothing sent before CONNECT: {seen:?}");
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before its 1 s timeout"
    );
    // A client that does send CONNECT in time is unaffected: still there once a silent socket
    // opened after it has been closed for its connect timeout.
    let mut c = connected(broker.addr, Protocol::V5, "lim").await;
    let mut silent = RawClient::connect(broker.addr, Protocol::V5).await?;
    silent.expect_closed(Duration::from_secs(10)).await?;
    c.send(&Packet::PingReq).await?;
    assert!(matches!(c.expect_packet(STEP).await?, Packet::PingResp));
    Ok(())
}

/// `publish_rate = 500` with a 1 s burst (the server's own flow control; 4.9 leaves ingress
/// limits to the implementation): a client blasting 1,500 QoS 0 PUBLISHes in one write is read
/// at ~500/s after its 500-message burst, so the subscriber sees the last one no sooner than
/// ~1.5 s after the blast (2 s ideal), none lost; meanwhile another client's QoS 1 round trips
/// go on: several complete while the flood is still being read (no clock bound on them: a
/// loaded machine may make each slow, but a flooder holding the broker up would stall them
/// all until its flood was through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_throttles_flooder_only() -> Result<()> {
    let broker = Broker::with_config(
        "[mqtt]\nmax_queued_messages = 10000\n[limits]\npublish_rate = 500\npublish_burst_seconds = 1\n",
    );
    const N: usize = 1500;
    let mut sub = connected(broker.addr, Protocol::V5, "lim").await;
    assert_eq!(suback_codes(&mut sub, &["flood/#"]).await?, vec![1]);
    let collector = tokio::spawn(async move {
        let mut n = 0usize;
        let deadline = Instant::now() + Duration::from_secs(10);
        while n < N && Instant::now() < deadline {
            match sub.recv(Duration::from_millis(200)).await? {
                Recv::Packet(p) if matches!(*p, Packet::Publish(_)) => n += 1,
                Recv::Closed => bail!("subscriber closed"),
                _ => {}
            }
        }
        anyhow::Ok((n, Instant::now()))
    });
    let mut probe = connected(broker.addr, Protocol::V5, "lim").await;
    let done = Arc::new(AtomicBool::new(false));
    let probe_done = done.clone();
    let prober = tokio::spawn(async move {
        let mut rtts = Vec::new();
        let mut pkid = 0u16;
        while !probe_done.load(Ordering::Relaxed) && rtts.len() < 40 {
            pkid += 1;
            let rtt = qos1_round_trip(&mut probe, "probe", pkid).await?;
            rtts.push((rtt, Instant::now()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(rtts)
    });

    let mut flooder = connected(broker.addr, Protocol::V5, "lim").await;
    let mut blast = BytesMut::new();
    for i in 0..N {
        let p = publish_packet(
            &format!("flood/{}", i % 10),
            QoS::AtMostOnce,
            0,
            b"0123456789",
        );
        sluice_tests::codec::encode(&p, Protocol::V5, &mut blast).unwrap();
    }
    let start = Instant::now();
    flooder.send_bytes(&blast).await?;
    let (n, last) = collector.await??;
    done.store(true, Ordering::Relaxed);
    let rtts = prober.await??;
    let took = last.duration_since(start);
    assert_eq!(n, N, "every flooded message delivered");
    assert!(
        took >= Duration::from_millis(1500),
        "1,500 messages at 500/s (burst 500) passed in {took:?}: not throttled"
    );
    let worst = rtts.iter().map(|(rtt, _)| *rtt).max().unwrap_or_default();
    let during = rtts.iter().filter(|(_, at)| *at < last).count();
    assert!(
        during >= 3,
        "a well-behaved client's QoS 1 round trips stalled during the flood: {during} completed \
         before its last message ({rtts:?})"
    );
    eprintln!(
        "flood of {N} took {took:?}; probe round trips during it {during}, worst {worst:?} over {}",
        rtts.len()
    );
    Ok(())
}

/// `disconnect_over_rate = true`: a 5.0 client over `publish_rate` gets DISCONNECT 0x96 Message
/// rate too high (3.14.2.1) and is closed; a 3.1.1 client (no such code) is only pushed back
/// and stays connected.
#[tokio::test]
async fn disconnect_over_rate() -> Result<()> {
    let broker = Broker::with_config(
        "[limits]\npublish_rate = 10\npublish_burst_seconds = 1\ndisconnect_over_rate = true\n",
    );
    let blast = |protocol, n: usize| {
        let mut b = BytesMut::new();
        for _ in 0..n {
            sluice_codec_encode(
                &publish_packet("r/t", QoS::AtMostOnce, 0, b"x"),
                protocol,
                &mut b,
            );
        }
        b
    };
    let mut c = connected(broker.addr, Protocol::V5, "lim").await;
    let _ = c.send_bytes(&blast(Protocol::V5, 100)).await;
    c.expect_disconnect(STEP, 0x96, "5.0 flooder").await?;

    // 3.1.1: 15 messages against a budget of 10 means ~0.5 s of back-pressure, no disconnect.
    let mut c = connected(broker.addr, Protocol::V311, "lim").await;
    c.send_bytes(&blast(Protocol::V311, 15)).await?;
    c.send(&Packet::PingReq).await?;
    match c.recv(STEP).await? {
        Recv::Packet(p) => assert!(matches!(*p, Packet::PingResp), "{p:?}"),
        other => panic!("3.1.1 flooder should be pushed back, not dropped: {other:?}"),
    }
    Ok(())
}

fn sluice_codec_encode(p: &Packet, protocol: Protocol, out: &mut BytesMut) {
    sluice_tests::codec::encode(p, protocol, out).unwrap();
}
