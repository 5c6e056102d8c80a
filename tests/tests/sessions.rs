//! CONNECT / CONNACK rules, sessions (Clean Session / Clean Start, 5.0 Session Expiry,
//! takeover, offline queues and their limits), keepalive and wills, against the real broker.
//!
//! Statement ids are the MQTT 5.0 ones unless marked "3.1.1".

use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_tests::clients::*;
use sluice_tests::codec::{encode, Packet, Protocol, PubAck, QoS, ReasonCode};
use sluice_tests::{client_id, connect_bytes, connect_bytes_with, Broker, RawClient};

/// A raw 3.1.1 subscriber on `filter` at QoS 1 (clean session).
async fn subscriber(broker: &Broker, filter: &str) -> RawClient {
    let mut sub = raw_ok(
        broker.addr,
        Protocol::V311,
        &client_id("sub"),
        &Opts::default(),
    )
    .await;
    raw_subscribe(&mut sub, 1, filter, QoS::AtLeastOnce).await;
    sub
}

/// Sends DISCONNECT (reason 0x00) and waits until the broker has parked the session.
async fn disconnect(broker: &Broker, mut c: RawClient, id: &str) {
    let from = broker.log_len();
    c.send(&disconnect_packet(ReasonCode::NORMAL_DISCONNECTION, None))
        .await
        .unwrap();
    expect_closed(&mut c).await;
    wait_disconnected(broker, from, id);
}

// ------------------------------------------------------------------ CONNECT / CONNACK

/// An unsupported protocol level is answered with CONNACK return code 0x01 and the connection
/// is closed: 3.1.1 [MQTT-3.1.2-2], byte for byte 20 02 00 01. For a 5.0-layout CONNECT with an
/// unknown level the server MAY answer 0x84 Unsupported Protocol Version and MUST close
/// [MQTT-3.1.2-2] (5.0); the 3.1.1-form 0x01 (which a 5.0 client reads as 0x84) is accepted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_is_refused() {
    let broker = Broker::start();
    let mut c = ByteConn::connect(broker.addr).await;
    c.send(&connect_bytes_with(b"MQTT", 6, 0x02, false, "x"))
        .await;
    let got = c.read_until_closed("level 6").await;
    assert_eq!(
        got,
        [0x20, 0x02, 0x00, 0x01],
        "3.1.1 CONNACK 0x01, then close"
    );

    let mut c = ByteConn::connect(broker.addr).await;
    c.send(&connect_bytes_with(b"MQTT", 6, 0x02, true, "x"))
        .await;
    let got = c.read_until_closed("5.0 layout, level 6").await;
    assert!(
        got == [0x20, 0x02, 0x00, 0x01] || got == [0x20, 0x03, 0x00, 0x84, 0x00],
        "CONNACK 0x01 (3.1.1 form) or 0x84 (5.0 form), then close; got {got:02x?}"
    );
    // MQIsdp is only level 3.
    let mut c = ByteConn::connect(broker.addr).await;
    c.send(&connect_bytes_with(b"MQIsdp", 4, 0x02, false, "x"))
        .await;
    let got = c.read_until_closed("MQIsdp level 4").await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x01]);
}

/// A CONNECT with a protocol name other than "MQTT" ("MQIsdp" for 3.1) is not processed under
/// this specification: the server closes the connection [MQTT-3.1.2-1]; it never accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protocol_name_closes() {
    let broker = Broker::start();
    for (name, level) in [(&b"MQTX"[..], 4u8), (&b"mqtt"[..], 5), (&b"MQIsdX"[..], 3)] {
        let mut c = ByteConn::connect(broker.addr).await;
        c.send(&connect_bytes_with(name, level, 0x02, level == 5, "x"))
            .await;
        let got = c.read_until_closed("bad protocol name").await;
        assert!(
            got.len() < 4 || got[..4] != [0x20, 0x02, 0x00, 0x00],
            "{name:?}: must not be accepted; got {got:02x?}"
        );
    }
}

/// A second CONNECT on a connection is a protocol violation: the connection is closed
/// [MQTT-3.1.0-2]; a 5.0 client is told DISCONNECT 0x82 Protocol Error first (4.13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_closes_the_connection() {
    let broker = Broker::start();
    for protocol in [Protocol::V311, Protocol::V5] {
        let id = client_id("twice");
        let mut c = raw_ok(broker.addr, protocol, &id, &Opts::default()).await;
        c.send(&connect_packet(protocol, &id, &Opts::default()))
            .await
            .unwrap();
        let seen = expect_closed(&mut c).await;
        if protocol.is_v5() {
            assert_eq!(disconnect_reasons(&seen), vec![0x82], "saw {seen:?}");
        } else {
            assert!(
                seen.is_empty(),
                "3.1.1: closed without a reply; saw {seen:?}"
            );
        }
    }
}

/// 3.1.1: a zero-byte client id with Clean Session 0 gets CONNACK 0x02 Identifier rejected
/// (bytes 20 02 00 02) and the connection is closed [MQTT-3.1.3-8]; with Clean Session 1 it is
/// accepted [MQTT-3.1.3-6].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_rules_v311() {
    let broker = Broker::start();
    let mut c = ByteConn::connect(broker.addr).await;
    c.send(&connect_311("", false)).await;
    let got = c.read_until_closed("empty id, clean session 0").await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x02]);

    let mut c = bytes_connect(broker.addr, "", true, false).await;
    c.send(&[0xC0, 0x00]).await;
    c.expect(&[0xD0, 0x00], "PINGRESP: the connection works")
        .await;
}

/// 5.0: a zero-byte client id is accepted and the server returns the Assigned Client
/// Identifier [MQTT-3.1.3-6], [MQTT-3.2.2-16]; that id then names the session (Clean Start 0 with
/// Session Expiry resumes it: Session Present 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_is_assigned_v5() {
    let broker = Broker::start();
    let (c, ack) = raw_connect(broker.addr, Protocol::V5, "", &Opts::persistent(60)).await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("Assigned Client Identifier [MQTT-3.2.2-16]")
        .to_string();
    assert!(!assigned.is_empty());
    disconnect(&broker, c, &assigned).await;
    let (_c, ack) = raw_connect(broker.addr, Protocol::V5, &assigned, &Opts::persistent(60)).await;
    assert!(ack.session_present, "the assigned id names the session");
}

/// MQTT 3.1 (protocol name "MQIsdp", level 3): CONNACK 0x00 (bytes 20 02 00 00), and QoS 1
/// publish/subscribe works between 3.1 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_31_connect_and_round_trip() {
    let broker = Broker::start();
    let mut c = ByteConn::connect(broker.addr).await;
    c.send(&connect_bytes(Protocol::V31, &client_id("b31")))
        .await;
    c.expect(&[0x20, 0x02, 0x00, 0x00], "3.1 CONNACK").await;

    let mut sub = RawClient::connect(broker.addr, Protocol::V31)
        .await
        .unwrap();
    sub.send_bytes(&connect_bytes(Protocol::V31, &client_id("s31")))
        .await
        .unwrap();
    assert!(matches!(
        sub.expect_packet(T).await.unwrap(),
        Packet::ConnAck(a) if a.reason == ReasonCode::SUCCESS
    ));
    raw_subscribe(&mut sub, 1, "v31/#", QoS::AtLeastOnce).await;
    let mut publ = RawClient::connect(broker.addr, Protocol::V31)
        .await
        .unwrap();
    publ.send_bytes(&connect_bytes(Protocol::V31, &client_id("p31")))
        .await
        .unwrap();
    publ.expect_packet(T).await.unwrap();
    raw_publish(&mut publ, "v31/x", QoS::AtLeastOnce, 1, b"old").await;
    let p = recv_and_ack(&mut sub).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("v31/x", &b"old"[..], QoS::AtLeastOnce)
    );
}

// ------------------------------------------------------------------ takeover

/// 5.0 takeover: a second connection with the same client id makes the server send the first
/// one DISCONNECT 0x8E Session taken over and close it [MQTT-3.1.4-3]; with Clean Start 0 the
/// new connection inherits the session: Session Present 1 [MQTT-3.2.2-3] and its subscription
/// delivers to the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_v5_sends_0x8e_and_inherits_session() {
    let broker = Broker::start();
    let id = client_id("dup");
    let mut old = raw_ok(broker.addr, Protocol::V5, &id, &Opts::persistent(60)).await;
    raw_subscribe(&mut old, 1, "take/#", QoS::AtLeastOnce).await;

    let (mut new, ack) = raw_connect(broker.addr, Protocol::V5, &id, &Opts::persistent(60)).await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    let seen = expect_closed(&mut old).await;
    assert_eq!(disconnect_reasons(&seen), vec![0x8E], "saw {seen:?}");
    assert!(ack.session_present, "session inherited [MQTT-3.2.2-3]");

    publish_from_new_client(broker.addr, "take/1", QoS::AtLeastOnce, &[b"hi".to_vec()]).await;
    let p = recv_and_ack(&mut new).await;
    assert_eq!(&p.payload[..], b"hi");
}

/// 3.1.1 takeover: the server disconnects the existing client [MQTT-3.1.4-2] (3.1.1); Clean
/// Session 0 inherits the session (Session Present 1, [MQTT-3.2.2-2] 3.1.1), Clean Session 1
/// takes over but discards it (Session Present 0 [MQTT-3.2.2-1] 3.1.1, no more deliveries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_v311_closes_old_and_reflects_session() {
    let broker = Broker::start();
    let id = client_id("dup");
    let mut first = raw_ok(broker.addr, Protocol::V311, &id, &Opts::persistent(0)).await;
    raw_subscribe(&mut first, 1, "take/#", QoS::AtLeastOnce).await;

    let (mut second, ack) =
        raw_connect(broker.addr, Protocol::V311, &id, &Opts::persistent(0)).await;
    assert_eq!(
        (ack.reason, ack.session_present),
        (ReasonCode::SUCCESS, true)
    );
    let seen = expect_closed(&mut first).await;
    assert!(
        seen.is_empty(),
        "3.1.1 has no DISCONNECT from the server; saw {seen:?}"
    );
    publish_from_new_client(broker.addr, "take/1", QoS::AtLeastOnce, &[b"one".to_vec()]).await;
    assert_eq!(&recv_and_ack(&mut second).await.payload[..], b"one");

    let (mut third, ack) = raw_connect(broker.addr, Protocol::V311, &id, &Opts::default()).await;
    assert_eq!(
        (ack.reason, ack.session_present),
        (ReasonCode::SUCCESS, false)
    );
    let sentinel = sentinel_subscription(&mut third, 1).await;
    expect_closed(&mut second).await;
    publish_from_new_client(broker.addr, "take/1", QoS::AtLeastOnce, &[b"two".to_vec()]).await;
    expect_sentinel_next(broker.addr, &mut third, &sentinel, "discarded session").await;
}

// ------------------------------------------------------------------ session lifetime

/// Clean Start / Clean Session 1 discards an existing session [MQTT-3.1.2-4] (3.1.1:
/// [MQTT-3.1.2-6]): Session Present 0, its subscriptions and queued messages are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_discards_the_session() {
    let broker = Broker::start();
    for protocol in [Protocol::V311, Protocol::V5] {
        let id = client_id("clean");
        let t = format!("clean/{}", protocol.level());
        let mut c = raw_ok(broker.addr, protocol, &id, &Opts::persistent(300)).await;
        raw_subscribe(&mut c, 1, &t, QoS::AtLeastOnce).await;
        disconnect(&broker, c, &id).await;
        publish_from_new_client(broker.addr, &t, QoS::AtLeastOnce, &[b"queued".to_vec()]).await;

        let (mut c, ack) = raw_connect(broker.addr, protocol, &id, &Opts::default()).await;
        assert_eq!(
            (ack.reason, ack.session_present),
            (ReasonCode::SUCCESS, false),
            "{protocol:?}"
        );
        // A queued message would come before the SUBACK or, at the latest, the sentinel.
        let sentinel = sentinel_subscription(&mut c, 1).await;
        publish_from_new_client(broker.addr, &t, QoS::AtLeastOnce, &[b"after".to_vec()]).await;
        expect_sentinel_next(broker.addr, &mut c, &sentinel, &format!("{protocol:?}")).await;
    }
}

/// 5.0 Session Expiry Interval 0 (absent): the session ends with the connection (3.1.2.11.2),
/// so Clean Start 0 afterwards finds none: Session Present 0 [MQTT-3.2.2-3].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_0_ends_with_connection_v5() {
    let broker = Broker::start();
    let id = client_id("exp0");
    let no_expiry = Opts {
        clean: false,
        ..Opts::default()
    };
    let mut c = raw_ok(broker.addr, Protocol::V5, &id, &no_expiry).await;
    raw_subscribe(&mut c, 1, "exp0", QoS::AtLeastOnce).await;
    disconnect(&broker, c, &id).await;
    publish_from_new_client(broker.addr, "exp0", QoS::AtLeastOnce, &[b"x".to_vec()]).await;
    let (mut c, ack) = raw_connect(broker.addr, Protocol::V5, &id, &no_expiry).await;
    assert!(!ack.session_present, "[MQTT-3.2.2-3]");
    let sentinel = sentinel_subscription(&mut c, 1).await;
    expect_sentinel_next(broker.addr, &mut c, &sentinel, "no queued message").await;
}

/// 5.0 Session Expiry Interval 2 s: the session (and messages queued for it) survives a 1 s
/// absence (Session Present 1 [MQTT-3.2.2-3]), and is gone once 2 s pass after the next
/// disconnect (3.1.2.11.2): the broker logs "session expired" no earlier than ~2 s (bounded
/// wait) and Clean Start 0 then gets Session Present 0. The 1 s is measured by the broker: a
/// reference session with a 1 s interval, parked after this one, has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_2s_v5() {
    let broker = Broker::start();
    let id = client_id("exp2");
    let o = Opts::persistent(2);
    let mut c = raw_ok(broker.addr, Protocol::V5, &id, &o).await;
    raw_subscribe(&mut c, 1, "exp2", QoS::AtLeastOnce).await;
    disconnect(&broker, c, &id).await;
    publish_from_new_client(broker.addr, "exp2", QoS::AtLeastOnce, &[b"kept".to_vec()]).await;
    let from = broker.log_len();
    let clock = reference_session(&broker, 1).await;
    wait_session_expired(&broker, from, &clock, Duration::from_secs(6));

    let (mut c, ack) = raw_connect(broker.addr, Protocol::V5, &id, &o).await;
    assert!(ack.session_present, "still there after 1 s of 2");
    assert_eq!(&recv_and_ack(&mut c).await.payload[..], b"kept");

    let from = broker.log_len();
    c.send(&disconnect_packet(ReasonCode::NORMAL_DISCONNECTION, None))
        .await
        .unwrap();
    let gone_at = Instant::now();
    expect_closed(&mut c).await;
    wait_log_all(
        &broker,
        from,
        &["session expired", &id],
        Duration::from_secs(6),
    );
    let after = gone_at.elapsed();
    assert!(
        after >= Duration::from_millis(1800),
        "expired after {after:?}, before its 2 s interval"
    );
    let (_c, ack) = raw_connect(broker.addr, Protocol::V5, &id, &o).await;
    assert!(!ack.session_present, "gone after expiry");
}

/// 5.0 DISCONNECT may change the Session Expiry Interval (3.14.2.2.2): 60 -> 0 ends the
/// session at once; 1 -> 60 keeps it past the original second (measured by the broker: a
/// reference session with a 2 s interval, parked after it, has expired). Setting a non-zero value after
/// CONNECT set 0 is a Protocol Error [MQTT-3.14.2-2]: DISCONNECT 0x82 from the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_overrides_session_expiry_v5() {
    let broker = Broker::start();

    let id = client_id("to0");
    let c = raw_ok(broker.addr, Protocol::V5, &id, &Opts::persistent(60)).await;
    let from = broker.log_len();
    let mut c = c;
    c.send(&disconnect_packet(
        ReasonCode::NORMAL_DISCONNECTION,
        Some(0),
    ))
    .await
    .unwrap();
    expect_closed(&mut c).await;
    wait_disconnected(&broker, from, &id);
    let (_c, ack) = raw_connect(broker.addr, Protocol::V5, &id, &Opts::persistent(60)).await;
    assert!(
        !ack.session_present,
        "60 -> 0 at DISCONNECT ends the session"
    );

    let id = client_id("to60");
    let mut c = raw_ok(broker.addr, Protocol::V5, &id, &Opts::persistent(1)).await;
    let from = broker.log_len();
    c.send(&disconnect_packet(
        ReasonCode::NORMAL_DISCONNECTION,
        Some(60),
    ))
    .await
    .unwrap();
    expect_closed(&mut c).await;
    wait_disconnected(&broker, from, &id);
    let from = broker.log_len();
    let clock = reference_session(&broker, 2).await;
    wait_session_expired(&broker, from, &clock, Duration::from_secs(8));
    let (_c, ack) = raw_connect(broker.addr, Protocol::V5, &id, &Opts::persistent(60)).await;
    assert!(
        ack.session_present,
        "1 -> 60 at DISCONNECT keeps the session"
    );

    let id = client_id("from0");
    let mut c = raw_ok(
        broker.addr,
        Protocol::V5,
        &id,
        &Opts {
            clean: false,
            ..Opts::default()
        },
    )
    .await;
    c.send(&disconnect_packet(
        ReasonCode::NORMAL_DISCONNECTION,
        Some(30),
    ))
    .await
    .unwrap();
    let seen = expect_closed(&mut c).await;
    assert_eq!(disconnect_reasons(&seen), vec![0x82], "saw {seen:?}");
}

/// Offline queueing: QoS 1 messages matching a persistent session's subscriptions while it is
/// offline are stored [MQTT-3.1.2-5] (3.1.1) and delivered on resume in publication order
/// [MQTT-4.6.0-6], with Session Present 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_delivered_in_order() {
    let broker = Broker::start();
    for protocol in [Protocol::V311, Protocol::V5] {
        let id = client_id("off");
        let t = format!("off/{}", protocol.level());
        let mut c = raw_ok(broker.addr, protocol, &id, &Opts::persistent(300)).await;
        raw_subscribe(&mut c, 1, &t, QoS::AtLeastOnce).await;
        disconnect(&broker, c, &id).await;

        let payloads: Vec<Vec<u8>> = (0..20).map(|i| format!("m{i:02}").into_bytes()).collect();
        publish_from_new_client(broker.addr, &t, QoS::AtLeastOnce, &payloads).await;

        let (mut c, ack) = raw_connect(broker.addr, protocol, &id, &Opts::persistent(300)).await;
        assert!(ack.session_present, "{protocol:?}");
        for want in &payloads {
            let p = recv_and_ack(&mut c).await;
            assert_eq!(
                (&p.payload[..], p.qos),
                (&want[..], QoS::AtLeastOnce),
                "{protocol:?}"
            );
        }
        expect_sentinel_next(broker.addr, &mut c, &t, &format!("{protocol:?}: 20 only")).await;
    }
}

/// `[mqtt] max_queued_messages = 5`: an offline session keeps 5 of 10 QoS 1 messages (the
/// newest are dropped, per the README), and the broker logs the overflow ("queue full").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_limit() {
    let broker = Broker::with_config("[mqtt]\nmax_queued_messages = 5\n");
    let id = client_id("lim");
    let mut c = raw_ok(broker.addr, Protocol::V311, &id, &Opts::persistent(0)).await;
    raw_subscribe(&mut c, 1, "lim", QoS::AtLeastOnce).await;
    disconnect(&broker, c, &id).await;

    let from = broker.log_len();
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("m{i}").into_bytes()).collect();
    publish_from_new_client(broker.addr, "lim", QoS::AtLeastOnce, &payloads).await;
    let line = wait_log_all(&broker, from, &["queue full", &id], T);
    assert!(line.contains("dropped"), "{line}");

    let (mut c, ack) = raw_connect(broker.addr, Protocol::V311, &id, &Opts::persistent(0)).await;
    assert!(ack.session_present);
    for want in &payloads[..5] {
        assert_eq!(&recv_and_ack(&mut c).await.payload[..], &want[..]);
    }
    expect_sentinel_next(broker.addr, &mut c, "lim", "5 kept, 5 dropped").await;
}

// ------------------------------------------------------------------ keepalive

/// Keep Alive 1 s and silence: the server closes the connection after 1.5 x keepalive
/// [MQTT-3.1.2-24] (3.1.1; 5.0 [MQTT-3.1.2-22]); bounded at 4 s, not before ~1 s. A 5.0 client
/// may be told DISCONNECT 0x8D Keep Alive timeout first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_disconnected_after_keepalive() {
    let broker = Broker::start();
    for protocol in [Protocol::V311, Protocol::V5] {
        let o = Opts {
            keep_alive: 1,
            ..Opts::default()
        };
        let mut c = raw_ok(broker.addr, protocol, &client_id("ka"), &o).await;
        let t0 = Instant::now();
        let seen = c.expect_closed(Duration::from_secs(4)).await.unwrap();
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1000),
            "{protocol:?}: closed after {took:?}"
        );
        let codes = disconnect_reasons(&seen);
        if protocol.is_v5() {
            assert!(codes.iter().all(|&c| c == 0x8D), "{seen:?}");
        } else {
            assert!(seen.is_empty(), "{seen:?}");
        }
    }
}

/// A client that sends PINGREQ within its keepalive stays connected and gets PINGRESP
/// [MQTT-3.12.4-1]: it pings every 250 ms until a silent reference connection with the same
/// Keep Alive (1 s), opened after it, has been closed for its keepalive timeout, and once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinging_client_stays_connected() {
    let broker = Broker::start();
    let o = Opts {
        keep_alive: 1,
        ..Opts::default()
    };
    let mut c = raw_ok(broker.addr, Protocol::V311, &client_id("ping"), &o).await;
    let mut reference = raw_ok(broker.addr, Protocol::V311, &client_id("silent"), &o).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pings = 0;
    loop {
        c.send(&Packet::PingReq).await.unwrap();
        assert_eq!(
            c.expect_packet(T).await.unwrap(),
            Packet::PingResp,
            "after {pings} pings"
        );
        pings += 1;
        match reference.recv(Duration::from_millis(250)).await.unwrap() {
            sluice_tests::Recv::Closed => break,
            sluice_tests::Recv::Timeout => {}
            sluice_tests::Recv::Packet(p) => panic!("silent reference got {p:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the silent reference was not closed for its keepalive"
        );
    }
    c.send(&Packet::PingReq).await.unwrap();
    assert_eq!(c.expect_packet(T).await.unwrap(), Packet::PingResp);
}

// ------------------------------------------------------------------ wills

fn with_will(o: Opts, t: &str, delay: u32) -> Opts {
    Opts {
        will: Some(will(t, b"gone", delay)),
        ..o
    }
}

/// The will is published when the network connection closes without DISCONNECT
/// [MQTT-3.1.2-8], at 3.1.1 and 5.0, with its topic, payload and QoS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_on_abnormal_close() {
    let broker = Broker::start();
    let mut sub = subscriber(&broker, "will/#").await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let t = format!("will/{}", protocol.level());
        let c = raw_ok(
            broker.addr,
            protocol,
            &client_id("w"),
            &with_will(Opts::default(), &t, 0),
        )
        .await;
        drop(c);
        let p = recv_and_ack(&mut sub).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.qos),
            (t.as_str(), &b"gone"[..], QoS::AtLeastOnce)
        );
    }
    expect_sentinel_next(broker.addr, &mut sub, "will/sentinel", "one will each").await;
}

/// The will is published when the server closes the connection for a keepalive timeout
/// [MQTT-3.1.2-8], [MQTT-3.1.2-24] (3.1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_on_keepalive_timeout() {
    let broker = Broker::start();
    let mut sub = subscriber(&broker, "will/#").await;
    let o = Opts {
        keep_alive: 1,
        ..Opts::default()
    };
    let _c = raw_ok(
        broker.addr,
        Protocol::V311,
        &client_id("wka"),
        &with_will(o, "will/ka", 0),
    )
    .await;
    let p = match sub.recv(Duration::from_secs(4)).await.unwrap() {
        sluice_tests::Recv::Packet(p) => *p,
        other => panic!("will within 4 s, got {other:?}"),
    };
    let Packet::Publish(p) = p else {
        panic!("expected the will, got {p:?}")
    };
    assert_eq!(p.topic.as_str(), "will/ka");
    sub.send(&Packet::PubAck(PubAck::new(p.pkid)))
        .await
        .unwrap();
}

/// A normal DISCONNECT (5.0: reason 0x00) deletes the will: it is not published
/// [MQTT-3.1.2-10] (3.1.1 and 5.0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_will_on_normal_disconnect() {
    let broker = Broker::start();
    let mut sub = subscriber(&broker, "will/#").await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let id = client_id("wn");
        let c = raw_ok(
            broker.addr,
            protocol,
            &id,
            &with_will(Opts::default(), "will/normal", 0),
        )
        .await;
        disconnect(&broker, c, &id).await;
        // The client is logged as disconnected just before its session (and will) is handed
        // on; a new connection with the same client id is accepted only after that.
        raw_ok(broker.addr, protocol, &id, &Opts::default()).await;
    }
    expect_sentinel_next(broker.addr, &mut sub, "will/sentinel", "no will").await;
}

/// 5.0 DISCONNECT with reason 0x04 Disconnect with Will Message: the will is published
/// (3.14.2.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_0x04_publishes_will_v5() {
    let broker = Broker::start();
    let mut sub = subscriber(&broker, "will/#").await;
    let mut c = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("w4"),
        &with_will(Opts::default(), "will/04", 0),
    )
    .await;
    c.send(&disconnect_packet(ReasonCode::DISCONNECT_WITH_WILL, None))
        .await
        .unwrap();
    expect_closed(&mut c).await;
    assert_eq!(recv_and_ack(&mut sub).await.topic.as_str(), "will/04");
}

/// 5.0 Will Delay Interval 2 s, reconnect within the delay: the will is NOT sent
/// [MQTT-3.1.3-9]: checked once a reference client with the same delay, dropped after the
/// reconnect, has had its will published, then with a sentinel behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_cancelled_by_reconnect_v5() {
    let broker = Broker::start();
    let mut sub = subscriber(&broker, "will/#").await;
    let id = client_id("wd");
    let o = with_will(Opts::persistent(60), "will/delay", 2);
    let c = raw_ok(broker.addr, Protocol::V5, &id, &o).await;
    let from = broker.log_len();
    drop(c);
    wait_disconnected(&broker, from, &id);
    let (_c, ack) = raw_connect(broker.addr, Protocol::V5, &id, &o).await;
    assert!(ack.session_present);
    let reference = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("wdr"),
        &with_will(Opts::persistent(60), "will/reference", 2),
    )
    .await;
    drop(reference);
    let p = match sub.recv(Duration::from_secs(8)).await.unwrap() {
        sluice_tests::Recv::Packet(p) => *p,
        other => panic!("the reference will within 8 s, got {other:?}"),
    };
    let Packet::Publish(p) = p else {
        panic!("expected a will, got {p:?}")
    };
    sub.send(&Packet::PubAck(PubAck::new(p.pkid)))
        .await
        .unwrap();
    assert_eq!(
        p.topic.as_str(),
        "will/reference",
        "only the reference's will"
    );
    expect_sentinel_next(broker.addr, &mut sub, "will/sentinel", "no will/delay").await;
}

/// 5.0 Will Delay Interval 1 s with a long session: the will is published once the delay
/// elapses, not before (3.1.3.2.2, [MQTT-3.1.2-8]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_elapses_v5() {
    let broker = Broker::start();
    let mut sub = subscriber(&broker, "will/#").await;
    let c = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("wde"),
        &with_will(Opts::persistent(60), "will/late", 1),
    )
    .await;
    let t0 = Instant::now();
    drop(c);
    let p = recv_and_ack(&mut sub).await;
    let took = t0.elapsed();
    assert_eq!(p.topic.as_str(), "will/late");
    assert!(
        took >= Duration::from_millis(800),
        "published after {took:?}"
    );
}

/// 5.0 Will Delay Interval 30 s but Session Expiry 1 s: the will is published when the session
/// ends, whichever comes first [MQTT-3.1.2-8] (3.1.3.2.2): after ~1 s, well before 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_sent_when_session_expires_before_delay_v5() {
    let broker = Broker::start();
    let mut sub = subscriber(&broker, "will/#").await;
    let c = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("wse"),
        &with_will(Opts::persistent(1), "will/expiry", 30),
    )
    .await;
    let t0 = Instant::now();
    drop(c);
    let p = recv_and_ack(&mut sub).await;
    let took = t0.elapsed();
    assert_eq!(p.topic.as_str(), "will/expiry");
    assert!(
        took >= Duration::from_millis(800),
        "published after {took:?}"
    );
}

// ------------------------------------------------------------------ clean start over a session

/// How the first connection of a client id ends before the client comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// There was none: a fresh client id.
    Fresh,
    /// DISCONNECT, and the new CONNECT sent at once (the old task may still be finishing).
    Disconnect,
    /// The socket dropped without DISCONNECT, and the new CONNECT sent at once.
    Drop,
    /// Still connected: the new connection takes the session over [MQTT-3.1.4-3].
    TakeOver,
}

/// One round of issue 17. A persistent session (Session Expiry 300) that had QoS 1 messages in
/// flight, since acknowledged, is discarded by a reconnect with Clean Start 1 [MQTT-3.1.2-4]
/// whose SUBSCRIBE is sent in the same write as the CONNECT: a client need not wait for
/// CONNACK (3.1.4), and the server reads both at once. The client then sends nothing more, so
/// the SUBSCRIBE must take effect from the bytes already read: SUBACK [MQTT-3.8.4-1], then a
/// QoS 1 message published after the SUBACK is delivered. Then a second SUBSCRIBE followed by
/// PINGREQ: the PINGRESP proves both were handled (one connection's packets are handled in
/// order), so a message published after it is delivered too, whatever the old connection's
/// task or the old session's timers still do.
async fn clean_start_subscribe_round(broker: &Broker, end: End, round: usize) {
    let what = format!("{end:?}, round {round}");
    let id = client_id("cs-sub");
    let (t1, t2) = (format!("cs/{round}/1"), format!("cs/{round}/2"));
    let mut publ = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("cs-pub"),
        &Opts::default(),
    )
    .await;
    let mut old = None;
    if end != End::Fresh {
        let mut c = raw_ok(broker.addr, Protocol::V5, &id, &Opts::persistent(300)).await;
        raw_subscribe(&mut c, 1, &t1, QoS::AtLeastOnce).await;
        for i in 0..3u16 {
            raw_publish(&mut publ, &t1, QoS::AtLeastOnce, i + 1, b"before").await;
            assert_eq!(&recv_and_ack(&mut c).await.payload[..], b"before", "{what}");
        }
        match end {
            End::Disconnect => {
                c.send(&disconnect_packet(ReasonCode::NORMAL_DISCONNECTION, None))
                    .await
                    .unwrap();
                old = Some(c);
            }
            End::Drop => drop(c),
            _ => old = Some(c),
        }
    }
    let clean = Opts {
        clean: true,
        expiry: Some(300),
        ..Opts::default()
    };
    let mut bytes = BytesMut::new();
    for p in [
        connect_packet(Protocol::V5, &id, &clean),
        subscribe_packet(1, &t1, QoS::AtLeastOnce),
    ] {
        encode(&p, Protocol::V5, &mut bytes).unwrap();
    }
    let mut new = RawClient::connect(broker.addr, Protocol::V5).await.unwrap();
    new.send_bytes(&bytes).await.unwrap();
    match new.expect_packet(T).await.unwrap() {
        Packet::ConnAck(a) => assert_eq!(
            (a.reason, a.session_present),
            (ReasonCode::SUCCESS, false),
            "{what}: Clean Start 1 [MQTT-3.2.2-2]"
        ),
        other => panic!("{what}: expected CONNACK, got {other:?}"),
    }
    match new.expect_packet(T).await.unwrap() {
        Packet::SubAck(a) => assert_eq!((a.pkid, a.reasons[0].0), (1, 1), "{what}"),
        other => panic!("{what}: expected SUBACK, got {other:?}"),
    }
    raw_publish(&mut publ, &t1, QoS::AtLeastOnce, 10, b"after suback").await;
    let p = recv_and_ack(&mut new).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        (t1.as_str(), &b"after suback"[..]),
        "{what}"
    );

    new.send(&subscribe_packet(2, &t2, QoS::AtLeastOnce))
        .await
        .unwrap();
    new.send(&Packet::PingReq).await.unwrap();
    match new.expect_packet(T).await.unwrap() {
        Packet::SubAck(a) => assert_eq!((a.pkid, a.reasons[0].0), (2, 1), "{what}"),
        other => panic!("{what}: expected SUBACK, got {other:?}"),
    }
    assert_eq!(
        new.expect_packet(T).await.unwrap(),
        Packet::PingResp,
        "{what}"
    );
    raw_publish(&mut publ, &t2, QoS::AtLeastOnce, 11, b"after pingresp").await;
    let p = recv_and_ack(&mut new).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        (t2.as_str(), &b"after pingresp"[..]),
        "{what}"
    );
    if let Some(mut old) = old {
        let seen = expect_closed(&mut old).await;
        if end == End::TakeOver {
            assert_eq!(disconnect_reasons(&seen), vec![0x8E], "{what}: {seen:?}");
        }
    }
    // Ends the new session as well, so rounds do not pile up sessions.
    new.send(&disconnect_packet(
        ReasonCode::NORMAL_DISCONNECTION,
        Some(0),
    ))
    .await
    .unwrap();
    expect_closed(&mut new).await;
}

/// Issue 17, see [`clean_start_subscribe_round`]: 10 rounds of each way the old connection can
/// end (and of a fresh client id), with the default (durable) persistence and in memory mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sent_with_clean_start_connect_takes_effect_at_once() {
    for config in ["", "[persistence]\nmode = \"memory\"\n"] {
        let broker = Broker::with_config(config);
        for end in [End::Fresh, End::Disconnect, End::Drop, End::TakeOver] {
            for round in 0..10 {
                clean_start_subscribe_round(&broker, end, round).await;
            }
        }
    }
}
