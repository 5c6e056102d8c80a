//! QoS 0/1/2 flows against the real broker: rumqttc (3.1.1 and 5.0) end to end, and raw
//! sockets for the exact bytes of PUBACK / PUBREC / PUBREL / PUBCOMP in both directions, QoS
//! downgrade, and exactly-once across reconnects.
//!
//! Statement ids are the MQTT 5.0 ones unless marked "3.1.1".

use std::time::Duration;

use sluice_tests::clients::*;
use sluice_tests::codec::{Packet, Protocol, PubAck, QoS, ReasonCode};
use sluice_tests::rumqttc;
use sluice_tests::{client_id, Broker};

const PAYLOAD: &[u8] = b"payload";

/// Reads a 3.1.1 PUBLISH of `topic`/`payload` whose first byte must be `first`; returns its
/// packet id (chosen by the server, never 0 [MQTT-2.2.1-3]). Every other byte is checked.
async fn expect_publish_bytes(c: &mut ByteConn, first: u8, t: &str, payload: &[u8]) -> u16 {
    let expected = publish_311(first, t, Some(0), payload);
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(
        T,
        tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut got),
    )
    .await
    .expect("PUBLISH within the time limit")
    .expect("read PUBLISH");
    let at = expected.len() - payload.len() - 2;
    let pkid = u16::from_be_bytes([got[at], got[at + 1]]);
    assert_ne!(
        pkid, 0,
        "QoS > 0 PUBLISH has a non-zero packet id [MQTT-2.2.1-3]"
    );
    got[at] = 0;
    got[at + 1] = 0;
    assert_eq!(got, expected, "PUBLISH bytes (packet id masked)");
    pkid
}

/// QoS 0, 1 and 2 between rumqttc clients at 3.1.1 and 5.0, in all four version pairings: the
/// message arrives once, at the published QoS when the subscription grants 2 [MQTT-3.8.4-8]
/// (3.1.1: [MQTT-3.8.4-6]), with its topic and payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_qos_0_1_2_between_v311_and_v5() {
    let broker = Broker::start();
    let mut sub4 = V4::connect(broker.addr, &client_id("sub4"), true).await;
    sub4.subscribe("q/#", rumqttc::QoS::ExactlyOnce).await;
    let mut sub5 = V5::connect(broker.addr, &client_id("sub5")).await;
    sub5.subscribe("q/#", rumqttc::v5::mqttbytes::QoS::ExactlyOnce)
        .await;
    let pub4 = V4::connect(broker.addr, &client_id("pub4"), true).await;
    let pub5 = V5::connect(broker.addr, &client_id("pub5")).await;

    let v4q = [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ];
    let v5q = [
        rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    ];
    for q in 0..3 {
        for from_v5 in [false, true] {
            let t = format!("q/{q}/{from_v5}");
            let payload = format!("m{q}{from_v5}");
            if from_v5 {
                pub5.client
                    .publish(t.clone(), v5q[q], false, payload.clone())
                    .await
                    .unwrap();
            } else {
                pub4.client
                    .publish(t.clone(), v4q[q], false, payload.clone())
                    .await
                    .unwrap();
            }
            let got4 = sub4.next_publish().await;
            assert_eq!(
                (got4.topic.as_str(), &got4.payload[..], got4.qos),
                (t.as_str(), payload.as_bytes(), v4q[q]),
                "3.1.1 subscriber"
            );
            let got5 = sub5.next_publish().await;
            assert_eq!(
                (&got5.topic[..], &got5.payload[..], got5.qos),
                (t.as_bytes(), payload.as_bytes(), v5q[q]),
                "5.0 subscriber"
            );
        }
    }
    // Exactly once: nothing more for either.
    sub4.no_publish(QUIET).await;
    sub5.no_publish(QUIET).await;
}

/// QoS 1 at 3.1.1, byte for byte: PUBLISH (0x32) is answered by PUBACK 0x40 0x02 id
/// [MQTT-4.3.2-4] (3.1.1: [MQTT-4.3.2-2]), and the subscriber gets PUBLISH 0x32 with a fresh
/// non-zero id [MQTT-4.3.2-1]; after its PUBACK nothing is resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_exchange_bytes_v311() {
    let broker = Broker::start();
    let mut sub = bytes_connect(broker.addr, &client_id("sub"), true, false).await;
    sub.send(&subscribe_311(1, "a/b", 1)).await;
    sub.expect(&[0x90, 0x03, 0x00, 0x01, 0x01], "SUBACK granting QoS 1")
        .await;

    let mut publ = bytes_connect(broker.addr, &client_id("pub"), true, false).await;
    publ.send(&publish_311(0x32, "a/b", Some(0x1234), PAYLOAD))
        .await;
    publ.expect(&ack(0x40, 0x1234), "PUBACK").await;

    let pkid = expect_publish_bytes(&mut sub, 0x32, "a/b", PAYLOAD).await;
    sub.send(&ack(0x40, pkid)).await;
    sub.expect_silence(QUIET, "after PUBACK").await;
    publ.expect_silence(Duration::from_millis(50), "publisher")
        .await;
}

/// Server -> client QoS 2 at 3.1.1, byte for byte: PUBLISH 0x34 id, client PUBREC 0x50,
/// server PUBREL 0x62 0x02 id [MQTT-4.3.3-4] (3.1.1: [MQTT-4.3.3-1]), client PUBCOMP 0x70, then
/// silence: the PUBLISH is not resent once PUBREL was sent [MQTT-4.3.3-6].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_server_to_client_bytes_v311() {
    let broker = Broker::start();
    let mut sub = bytes_connect(broker.addr, &client_id("sub"), true, false).await;
    sub.send(&subscribe_311(1, "a/b", 2)).await;
    sub.expect(&[0x90, 0x03, 0x00, 0x01, 0x02], "SUBACK granting QoS 2")
        .await;

    publish_from_new_client(broker.addr, "a/b", QoS::ExactlyOnce, &[PAYLOAD]).await;

    let pkid = expect_publish_bytes(&mut sub, 0x34, "a/b", PAYLOAD).await;
    sub.send(&ack(0x50, pkid)).await;
    sub.expect(&ack(0x62, pkid), "PUBREL with the PUBLISH's id")
        .await;
    sub.send(&ack(0x70, pkid)).await;
    sub.expect_silence(QUIET, "after PUBCOMP").await;
}

/// Client -> server QoS 2 at 3.1.1, byte for byte: PUBLISH 0x34 id 7 -> PUBREC 0x50 0x02 0 7
/// [MQTT-4.3.3-8]; the same PUBLISH resent with DUP (0x3C) before PUBREL is acknowledged with
/// PUBREC again and NOT delivered twice [MQTT-4.3.3-10] (3.1.1: [MQTT-4.3.3-2]); PUBREL ->
/// PUBCOMP 0x70 0x02 0 7 [MQTT-4.3.3-11]; after PUBCOMP the id 7 starts a new message
/// [MQTT-4.3.3-12].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_client_to_server_bytes_v311_dup_delivered_once() {
    let broker = Broker::start();
    let mut sub = raw_ok(
        broker.addr,
        Protocol::V311,
        &client_id("sub"),
        &Opts::default(),
    )
    .await;
    raw_subscribe(&mut sub, 1, "a/b", QoS::ExactlyOnce).await;

    let mut publ = bytes_connect(broker.addr, &client_id("pub"), true, false).await;
    publ.send(&publish_311(0x34, "a/b", Some(7), b"one")).await;
    publ.expect(&ack(0x50, 7), "PUBREC").await;
    let got = recv_and_ack(&mut sub).await;
    assert_eq!((&got.payload[..], got.qos), (&b"one"[..], QoS::ExactlyOnce));

    publ.send(&publish_311(0x3C, "a/b", Some(7), b"one")).await;
    publ.expect(&ack(0x50, 7), "PUBREC for the DUP PUBLISH")
        .await;
    expect_silence(&mut sub, QUIET).await;

    publ.send(&ack(0x62, 7)).await;
    publ.expect(&ack(0x70, 7), "PUBCOMP").await;
    expect_silence(&mut sub, Duration::from_millis(100)).await;

    publ.send(&publish_311(0x34, "a/b", Some(7), b"two")).await;
    publ.expect(&ack(0x50, 7), "PUBREC for the new message")
        .await;
    publ.send(&ack(0x62, 7)).await;
    publ.expect(&ack(0x70, 7), "PUBCOMP").await;
    let got = recv_and_ack(&mut sub).await;
    assert_eq!(
        &got.payload[..],
        b"two",
        "id reused after PUBCOMP is a new message"
    );
    expect_silence(&mut sub, QUIET).await;
}

/// The same QoS 2 exchanges at 5.0 (decoded): PUBREC / PUBREL / PUBCOMP carry the packet id
/// and reason 0x00 both ways [MQTT-4.3.3-4], [MQTT-4.3.3-8], [MQTT-4.3.3-11]; a DUP resend
/// before PUBREL is not delivered again [MQTT-4.3.3-10].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_both_directions_v5() {
    let broker = Broker::start();
    let mut sub = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("sub"),
        &Opts::default(),
    )
    .await;
    raw_subscribe(&mut sub, 1, "a/b", QoS::ExactlyOnce).await;
    let mut publ = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("pub"),
        &Opts::default(),
    )
    .await;

    publ.send(&publish_packet("a/b", QoS::ExactlyOnce, 300, PAYLOAD))
        .await
        .unwrap();
    assert_eq!(
        publ.expect_packet(T).await.unwrap(),
        Packet::PubRec(PubAck::new(300))
    );
    let Packet::Publish(mut dup) = publish_packet("a/b", QoS::ExactlyOnce, 300, PAYLOAD) else {
        unreachable!()
    };
    dup.dup = true;
    publ.send(&Packet::Publish(dup)).await.unwrap();
    assert_eq!(
        publ.expect_packet(T).await.unwrap(),
        Packet::PubRec(PubAck::new(300)),
        "DUP PUBLISH before PUBREL is acknowledged again"
    );
    publ.send(&Packet::PubRel(PubAck::new(300))).await.unwrap();
    assert_eq!(
        publ.expect_packet(T).await.unwrap(),
        Packet::PubComp(PubAck::new(300))
    );

    let p = expect_publish(&mut sub).await;
    assert_eq!(
        (p.qos, p.dup, &p.payload[..], p.topic.as_str()),
        (QoS::ExactlyOnce, false, PAYLOAD, "a/b")
    );
    assert_ne!(p.pkid, 0);
    sub.send(&Packet::PubRec(PubAck::new(p.pkid)))
        .await
        .unwrap();
    assert_eq!(
        sub.expect_packet(T).await.unwrap(),
        Packet::PubRel(PubAck::new(p.pkid))
    );
    sub.send(&Packet::PubComp(PubAck::new(p.pkid)))
        .await
        .unwrap();
    expect_silence(&mut sub, QUIET).await;
}

/// A PUBREL for a packet id the server does not hold is still answered with PUBCOMP, in 5.0
/// with reason 0x92 Packet Identifier not found [MQTT-4.3.3-11] (3.7.2.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubrel_for_unknown_id_gets_pubcomp() {
    let broker = Broker::start();
    let mut c4 = bytes_connect(broker.addr, &client_id("c4"), true, false).await;
    c4.send(&ack(0x62, 42)).await;
    c4.expect(&ack(0x70, 42), "3.1.1 PUBCOMP").await;

    let mut c5 = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("c5"),
        &Opts::default(),
    )
    .await;
    c5.send(&Packet::PubRel(PubAck::new(42))).await.unwrap();
    match c5.expect_packet(T).await.unwrap() {
        Packet::PubComp(a) => assert_eq!(
            (a.pkid, a.reason),
            (42, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
        ),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
}

/// Messages are delivered at min(published QoS, granted QoS) [MQTT-3.8.4-8] (3.1.1:
/// [MQTT-3.8.4-6]): QoS 2 to QoS 1 / QoS 0 subscriptions arrives at 1 / 0, and a QoS 0 message
/// to a QoS 2 subscription stays QoS 0 (never upgraded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_downgraded_to_subscription_maximum() {
    let broker = Broker::start();
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut s0 = raw_ok(broker.addr, protocol, &client_id("s0"), &Opts::default()).await;
        let mut s1 = raw_ok(broker.addr, protocol, &client_id("s1"), &Opts::default()).await;
        let mut s2 = raw_ok(broker.addr, protocol, &client_id("s2"), &Opts::default()).await;
        let t = format!("down/{}", protocol.level());
        for (c, q) in [
            (&mut s0, QoS::AtMostOnce),
            (&mut s1, QoS::AtLeastOnce),
            (&mut s2, QoS::ExactlyOnce),
        ] {
            let ack = raw_subscribe(c, 1, &t, q).await;
            assert_eq!(ack.reasons, vec![ReasonCode(q as u8)], "granted as asked");
        }

        publish_from_new_client(broker.addr, &t, QoS::ExactlyOnce, &[b"two"]).await;
        for (c, q) in [
            (&mut s0, QoS::AtMostOnce),
            (&mut s1, QoS::AtLeastOnce),
            (&mut s2, QoS::ExactlyOnce),
        ] {
            let p = recv_and_ack(c).await;
            assert_eq!((p.qos, &p.payload[..]), (q, &b"two"[..]), "{protocol:?}");
            if q == QoS::AtMostOnce {
                assert_eq!(p.pkid, 0, "QoS 0 PUBLISH has no packet id [MQTT-2.2.1-2]");
            }
        }

        publish_from_new_client(broker.addr, &t, QoS::AtMostOnce, &[b"zero"]).await;
        for c in [&mut s0, &mut s1, &mut s2] {
            let p = recv_and_ack(c).await;
            assert_eq!((p.qos, &p.payload[..]), (QoS::AtMostOnce, &b"zero"[..]));
        }
    }
}

/// Outbound QoS 2 across a reconnect at 3.1.1, byte for byte: a Clean Session 0 subscriber
/// gets PUBLISH 0x34 id, drops the TCP connection without acking, reconnects: CONNACK has
/// Session Present 1 [MQTT-3.2.2-2] (3.1.1), and the PUBLISH is resent first with DUP = 1
/// (0x3C) and the same packet id [MQTT-4.4.0-1], [MQTT-3.3.1-1]; then the flow completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_unacked_publish_resent_with_dup_after_reconnect_v311() {
    let broker = Broker::start();
    let id = client_id("sub");
    let mut sub = bytes_connect(broker.addr, &id, false, false).await;
    sub.send(&subscribe_311(1, "a/b", 2)).await;
    sub.expect(&[0x90, 0x03, 0x00, 0x01, 0x02], "SUBACK").await;
    publish_from_new_client(broker.addr, "a/b", QoS::ExactlyOnce, &[PAYLOAD]).await;
    let pkid = expect_publish_bytes(&mut sub, 0x34, "a/b", PAYLOAD).await;

    let from = broker.log_len();
    drop(sub);
    wait_disconnected(&broker, from, &id);

    let mut sub = bytes_connect(broker.addr, &id, false, true).await;
    let again = expect_publish_bytes(&mut sub, 0x3C, "a/b", PAYLOAD).await;
    assert_eq!(
        again, pkid,
        "resent with its original packet id [MQTT-4.4.0-1]"
    );
    sub.send(&ack(0x50, pkid)).await;
    sub.expect(&ack(0x62, pkid), "PUBREL").await;
    sub.send(&ack(0x70, pkid)).await;
    sub.expect_silence(QUIET, "after PUBCOMP").await;
}

/// Outbound QoS 2 across a reconnect at 3.1.1 after PUBREC: the server has sent PUBREL; the
/// client disconnects before PUBCOMP and reconnects: the server resends the PUBREL (0x62 0x02
/// id) and NOT the PUBLISH [MQTT-4.4.0-1], [MQTT-4.3.3-6].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_pubrel_resent_after_reconnect_v311() {
    let broker = Broker::start();
    let id = client_id("sub");
    let mut sub = bytes_connect(broker.addr, &id, false, false).await;
    sub.send(&subscribe_311(1, "a/b", 2)).await;
    sub.expect(&[0x90, 0x03, 0x00, 0x01, 0x02], "SUBACK").await;
    publish_from_new_client(broker.addr, "a/b", QoS::ExactlyOnce, &[PAYLOAD]).await;
    let pkid = expect_publish_bytes(&mut sub, 0x34, "a/b", PAYLOAD).await;
    sub.send(&ack(0x50, pkid)).await;
    sub.expect(&ack(0x62, pkid), "PUBREL").await;

    let from = broker.log_len();
    drop(sub);
    wait_disconnected(&broker, from, &id);

    let mut sub = bytes_connect(broker.addr, &id, false, true).await;
    sub.expect(&ack(0x62, pkid), "PUBREL resent on resume")
        .await;
    sub.send(&ack(0x70, pkid)).await;
    sub.expect_silence(QUIET, "after PUBCOMP").await;

    // Once completed, a further reconnect resends nothing.
    let from = broker.log_len();
    drop(sub);
    wait_disconnected(&broker, from, &id);
    let mut sub = bytes_connect(broker.addr, &id, false, true).await;
    sub.expect_silence(QUIET, "nothing left in flight").await;
}

/// The same two resume cases at 5.0 (Clean Start 0, Session Expiry 60): an unacknowledged
/// QoS 2 PUBLISH comes back with DUP = 1 and its packet id, a PUBREL awaiting PUBCOMP comes
/// back as PUBREL [MQTT-4.4.0-1]; Session Present is 1 [MQTT-3.2.2-3].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_resume_v5() {
    let broker = Broker::start();
    let id = client_id("sub");
    let persistent = Opts::persistent(60);
    let mut sub = raw_ok(broker.addr, Protocol::V5, &id, &persistent).await;
    raw_subscribe(&mut sub, 1, "a/+", QoS::ExactlyOnce).await;
    publish_from_new_client(broker.addr, "a/1", QoS::ExactlyOnce, &[b"m1"]).await;
    publish_from_new_client(broker.addr, "a/2", QoS::ExactlyOnce, &[b"m2"]).await;
    let p1 = expect_publish(&mut sub).await;
    let p2 = expect_publish(&mut sub).await;
    assert_eq!((&p1.payload[..], &p2.payload[..]), (&b"m1"[..], &b"m2"[..]));
    // PUBREC the first only: it moves to the PUBREL stage; the second stays unacknowledged.
    sub.send(&Packet::PubRec(PubAck::new(p1.pkid)))
        .await
        .unwrap();
    assert_eq!(
        sub.expect_packet(T).await.unwrap(),
        Packet::PubRel(PubAck::new(p1.pkid))
    );

    let from = broker.log_len();
    drop(sub);
    wait_disconnected(&broker, from, &id);

    let (mut sub, ack) = raw_connect(broker.addr, Protocol::V5, &id, &persistent).await;
    assert_eq!(
        (ack.reason, ack.session_present),
        (ReasonCode::SUCCESS, true)
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(sub.expect_packet(T).await.unwrap());
    }
    let rel = seen
        .iter()
        .find(|p| matches!(p, Packet::PubRel(_)))
        .unwrap_or_else(|| panic!("PUBREL resent; saw {seen:?}"));
    assert_eq!(rel, &Packet::PubRel(PubAck::new(p1.pkid)));
    let Some(Packet::Publish(again)) = seen.iter().find(|p| matches!(p, Packet::Publish(_))) else {
        panic!("PUBLISH resent; saw {seen:?}")
    };
    assert_eq!(
        (again.dup, again.pkid, &again.payload[..], again.qos),
        (true, p2.pkid, &b"m2"[..], QoS::ExactlyOnce),
        "resent with DUP and its packet id"
    );
    sub.send(&Packet::PubComp(PubAck::new(p1.pkid)))
        .await
        .unwrap();
    sub.send(&Packet::PubRec(PubAck::new(p2.pkid)))
        .await
        .unwrap();
    assert_eq!(
        sub.expect_packet(T).await.unwrap(),
        Packet::PubRel(PubAck::new(p2.pkid))
    );
    sub.send(&Packet::PubComp(PubAck::new(p2.pkid)))
        .await
        .unwrap();
    expect_silence(&mut sub, QUIET).await;
}

/// Inbound QoS 2 across a reconnect at 3.1.1: the client sends PUBLISH id 9, gets PUBREC, drops
/// the connection, reconnects (Clean Session 0: Session Present 1), resends the PUBLISH with
/// DUP: PUBREC again and no second delivery [MQTT-4.3.3-10], [MQTT-4.4.0-1]; then PUBREL ->
/// PUBCOMP [MQTT-4.3.3-11].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_inbound_exactly_once_across_reconnect_v311() {
    let broker = Broker::start();
    let mut sub = raw_ok(
        broker.addr,
        Protocol::V311,
        &client_id("sub"),
        &Opts::default(),
    )
    .await;
    raw_subscribe(&mut sub, 1, "in/#", QoS::ExactlyOnce).await;

    let id = client_id("pub");
    let mut publ = bytes_connect(broker.addr, &id, false, false).await;
    publ.send(&publish_311(0x34, "in/x", Some(9), b"once"))
        .await;
    publ.expect(&ack(0x50, 9), "PUBREC").await;
    let from = broker.log_len();
    drop(publ);
    wait_disconnected(&broker, from, &id);

    let mut publ = bytes_connect(broker.addr, &id, false, true).await;
    publ.send(&publish_311(0x3C, "in/x", Some(9), b"once"))
        .await;
    publ.expect(&ack(0x50, 9), "PUBREC for the resent PUBLISH")
        .await;
    publ.send(&ack(0x62, 9)).await;
    publ.expect(&ack(0x70, 9), "PUBCOMP").await;

    let got = recv_and_ack(&mut sub).await;
    assert_eq!(&got.payload[..], b"once");
    expect_silence(&mut sub, QUIET).await;
}

/// Inbound QoS 2 across a reconnect at 5.0 (Clean Start 0, Session Expiry 60), and the PUBREL
/// alone after the reconnect (the client had the PUBREC): PUBCOMP with reason 0x00, delivered
/// once [MQTT-4.3.3-10], [MQTT-4.4.0-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_inbound_exactly_once_across_reconnect_v5() {
    let broker = Broker::start();
    let mut sub = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("sub"),
        &Opts::default(),
    )
    .await;
    raw_subscribe(&mut sub, 1, "in/#", QoS::ExactlyOnce).await;

    let id = client_id("pub");
    let persistent = Opts::persistent(60);
    let mut publ = raw_ok(broker.addr, Protocol::V5, &id, &persistent).await;
    publ.send(&publish_packet("in/a", QoS::ExactlyOnce, 5, b"A"))
        .await
        .unwrap();
    publ.send(&publish_packet("in/b", QoS::ExactlyOnce, 6, b"B"))
        .await
        .unwrap();
    for pkid in [5, 6] {
        assert_eq!(
            publ.expect_packet(T).await.unwrap(),
            Packet::PubRec(PubAck::new(pkid))
        );
    }
    let from = broker.log_len();
    drop(publ);
    wait_disconnected(&broker, from, &id);

    let (mut publ, ack) = raw_connect(broker.addr, Protocol::V5, &id, &persistent).await;
    assert!(ack.session_present, "[MQTT-3.2.2-3]");
    // id 5: resent PUBLISH with DUP, then PUBREL. id 6: PUBREL only.
    let Packet::Publish(mut dup) = publish_packet("in/a", QoS::ExactlyOnce, 5, b"A") else {
        unreachable!()
    };
    dup.dup = true;
    publ.send(&Packet::Publish(dup)).await.unwrap();
    assert_eq!(
        publ.expect_packet(T).await.unwrap(),
        Packet::PubRec(PubAck::new(5))
    );
    for pkid in [5, 6] {
        publ.send(&Packet::PubRel(PubAck::new(pkid))).await.unwrap();
        assert_eq!(
            publ.expect_packet(T).await.unwrap(),
            Packet::PubComp(PubAck::new(pkid)),
            "PUBCOMP 0x00: the id was still held"
        );
    }

    // Both messages may be in flight to the subscriber at once: take both, then complete both.
    let (a, b) = (
        expect_publish(&mut sub).await,
        expect_publish(&mut sub).await,
    );
    for p in [&a, &b] {
        sub.send(&Packet::PubRec(PubAck::new(p.pkid)))
            .await
            .unwrap();
        assert_eq!(
            sub.expect_packet(T).await.unwrap(),
            Packet::PubRel(PubAck::new(p.pkid))
        );
        sub.send(&Packet::PubComp(PubAck::new(p.pkid)))
            .await
            .unwrap();
    }
    let mut payloads = vec![a.payload, b.payload];
    payloads.sort();
    assert_eq!(payloads, vec![&b"A"[..], &b"B"[..]]);
    expect_silence(&mut sub, QUIET).await;
}

/// QoS 1 across a reconnect at 3.1.1, byte for byte: an unacknowledged PUBLISH 0x32 comes back
/// as 0x3A (DUP = 1) with the same packet id [MQTT-4.4.0-1], [MQTT-3.3.1-1]; after its PUBACK
/// nothing more is resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_unacked_publish_resent_with_dup_after_reconnect_v311() {
    let broker = Broker::start();
    let id = client_id("sub");
    let mut sub = bytes_connect(broker.addr, &id, false, false).await;
    sub.send(&subscribe_311(1, "a/b", 1)).await;
    sub.expect(&[0x90, 0x03, 0x00, 0x01, 0x01], "SUBACK").await;
    publish_from_new_client(broker.addr, "a/b", QoS::AtLeastOnce, &[PAYLOAD]).await;
    let pkid = expect_publish_bytes(&mut sub, 0x32, "a/b", PAYLOAD).await;

    let from = broker.log_len();
    drop(sub);
    wait_disconnected(&broker, from, &id);

    let mut sub = bytes_connect(broker.addr, &id, false, true).await;
    let again = expect_publish_bytes(&mut sub, 0x3A, "a/b", PAYLOAD).await;
    assert_eq!(again, pkid);
    sub.send(&ack(0x40, pkid)).await;
    sub.expect_silence(QUIET, "after PUBACK").await;
}

/// Takeover keeps the in-flight state: a 5.0 persistent subscriber holding an unacknowledged
/// QoS 1 PUBLISH is taken over by a new connection with the same id (the old one gets
/// DISCONNECT 0x8E [MQTT-3.1.4-3]); the new one has Session Present 1 and gets the PUBLISH
/// again with DUP = 1 and the same packet id [MQTT-4.4.0-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_inflight_survives_takeover_v5() {
    let broker = Broker::start();
    let id = client_id("sub");
    let o = Opts::persistent(60);
    let mut old = raw_ok(broker.addr, Protocol::V5, &id, &o).await;
    raw_subscribe(&mut old, 1, "a/b", QoS::AtLeastOnce).await;
    publish_from_new_client(broker.addr, "a/b", QoS::AtLeastOnce, &[PAYLOAD]).await;
    let first = expect_publish(&mut old).await;

    let (mut new, ack) = raw_connect(broker.addr, Protocol::V5, &id, &o).await;
    assert!(ack.session_present);
    let seen = old.expect_closed(T).await.unwrap();
    assert_eq!(disconnect_reasons(&seen), vec![0x8E], "saw {seen:?}");
    let again = expect_publish(&mut new).await;
    assert_eq!(
        (again.dup, again.pkid, &again.payload[..]),
        (true, first.pkid, PAYLOAD)
    );
    new.send(&Packet::PubAck(PubAck::new(again.pkid)))
        .await
        .unwrap();
    expect_silence(&mut new, QUIET).await;
}
