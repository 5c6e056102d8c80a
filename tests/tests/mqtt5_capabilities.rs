//! MQTT 5.0 capabilities the server advertises in CONNACK (3.2.2.3) and enforces, the `[mqtt]`
//! switches that turn them off, redirection (4.11), Receive Maximum, Topic Aliases and the
//! client's Maximum Packet Size. Raw 5.0 clients, checking decoded packets.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use sluice_tests::clients::{raw_ok_ack, try_connect, Opts};
use sluice_tests::codec::{
    ConnAck, ConnectProperties, LastWill, Packet, Protocol, Publish, PublishProperties, QoS,
    Subscribe, SubscribeProperties, Subscription, SubscriptionOptions,
};
use sluice_tests::packets;
use sluice_tests::{client_id, Broker, RawClient, Recv};

const STEP: Duration = Duration::from_secs(5);

/// A 5.0 client with these CONNECT properties and a successful CONNACK.
async fn connect_ok(addr: SocketAddr, properties: ConnectProperties) -> (RawClient, ConnAck) {
    let o = Opts::default().properties(properties);
    raw_ok_ack(addr, Protocol::V5, &client_id("cap"), &o).await
}

fn subscribe(filter: &str, qos: QoS, id: Option<u32>) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid: 7,
        filters: vec![Subscription {
            filter: filter.try_into().unwrap(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        rejected: vec![],
        properties: SubscribeProperties {
            subscription_identifier: id,
            user_properties: vec![],
        },
    })
}

/// Sends a one-filter SUBSCRIBE and returns the SUBACK's reason code.
async fn suback_code(c: &mut RawClient, filter: &str) -> Result<u8> {
    c.send(&subscribe(filter, QoS::AtLeastOnce, None)).await?;
    match c.expect_packet(STEP).await? {
        Packet::SubAck(a) if a.reasons.len() == 1 => Ok(a.reasons[0].0),
        other => bail!("expected SUBACK for {filter}, got {other:?}"),
    }
}

/// The next PUBLISH within `timeout`, skipping other packets; None on timeout.
async fn next_publish(c: &mut RawClient, timeout: Duration) -> Result<Option<Publish>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv(left).await? {
            Recv::Packet(p) => {
                if let Packet::Publish(p) = *p {
                    return Ok(Some(p));
                }
            }
            Recv::Timeout => return Ok(None),
            Recv::Closed => bail!("connection closed while waiting for a PUBLISH"),
        }
    }
}

const ALL_OFF: &str = r#"
[mqtt]
maximum_qos = 1
retain_available = false
wildcard_subscription_available = false
subscription_identifiers_available = false
shared_subscription_available = false
"#;

/// 3.2.2.3.4 - 3.2.2.3.13: with every capability on (the default), CONNACK carries no Maximum
/// QoS (absent means 2; "a value other than 0 or 1" is a Protocol Error) and states Retain /
/// Wildcard / Subscription Identifier / Shared Subscription Available = 1 explicitly: some
/// clients and test suites read the property and do not apply the default of its absence.
#[tokio::test]
async fn default_connack_advertises_no_restrictions() -> Result<()> {
    let broker = Broker::start();
    let (_c, a) = connect_ok(broker.addr, ConnectProperties::default()).await;
    let p = &a.properties;
    assert_eq!(p.maximum_qos, None, "Maximum QoS absent: {p:?}");
    assert_eq!(p.retain_available, Some(true), "{p:?}");
    assert_eq!(p.wildcard_subscription_available, Some(true), "{p:?}");
    assert_eq!(p.subscription_identifiers_available, Some(true), "{p:?}");
    assert_eq!(p.shared_subscription_available, Some(true), "{p:?}");
    Ok(())
}

/// 3.2.2.3.4, 3.2.2.3.5, 3.2.2.3.11 - 3.2.2.3.13: switched off in config, CONNACK says
/// Maximum QoS 1, Retain Available 0, Wildcard Subscription Available 0, Subscription
/// Identifiers Available 0, Shared Subscription Available 0.
#[tokio::test]
async fn switched_off_capabilities_are_advertised() -> Result<()> {
    let broker = Broker::with_config(ALL_OFF);
    let (_c, a) = connect_ok(broker.addr, ConnectProperties::default()).await;
    let p = &a.properties;
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce), "{p:?}");
    assert_eq!(p.retain_available, Some(false), "{p:?}");
    assert_eq!(p.wildcard_subscription_available, Some(false), "{p:?}");
    assert_eq!(p.subscription_identifiers_available, Some(false), "{p:?}");
    assert_eq!(p.shared_subscription_available, Some(false), "{p:?}");
    Ok(())
}

/// Enforcement of the switched-off capabilities: PUBLISH QoS 2 over Maximum QoS 1 is
/// DISCONNECT 0x9B [MQTT-3.2.2-11]; a retained PUBLISH with Retain Available 0 is DISCONNECT
/// 0x9A [MQTT-3.2.2-14]; a wildcard filter gets SUBACK 0xA2 and a `$share/` filter 0x9E
/// (3.9.3 reason codes; 3.2.2.3.11, 3.2.2.3.13); a SUBSCRIBE carrying a Subscription Identifier
/// is DISCONNECT 0xA1 (3.2.2.3.12). Plain subscriptions and QoS 1 still work.
#[tokio::test]
async fn switched_off_capabilities_are_enforced() -> Result<()> {
    let broker = Broker::with_config(ALL_OFF);
    let addr = broker.addr;

    let (mut c, _) = connect_ok(addr, ConnectProperties::default()).await;
    c.send(&Packet::Publish(packets::publish(
        "q/2",
        QoS::ExactlyOnce,
        1,
        b"x",
    )))
    .await?;
    c.expect_disconnect(STEP, 0x9B, "QoS 2 over Maximum QoS 1")
        .await?;

    let (mut c, _) = connect_ok(addr, ConnectProperties::default()).await;
    let mut p = packets::publish("r/1", QoS::AtLeastOnce, 1, b"x");
    p.retain = true;
    c.send(&Packet::Publish(p)).await?;
    c.expect_disconnect(STEP, 0x9A, "retained PUBLISH with retain off")
        .await?;

    let (mut c, _) = connect_ok(addr, ConnectProperties::default()).await;
    assert_eq!(suback_code(&mut c, "w/+").await?, 0xA2, "+ filter");
    assert_eq!(suback_code(&mut c, "w/#").await?, 0xA2, "# filter");
    assert_eq!(suback_code(&mut c, "$share/g/w").await?, 0x9E, "$share");
    assert_eq!(
        suback_code(&mut c, "w/plain").await?,
        1,
        "plain filter granted"
    );
    // QoS 1 still works end to end.
    c.send(&Packet::Publish(packets::publish(
        "w/plain",
        QoS::AtLeastOnce,
        3,
        b"ok",
    )))
    .await?;
    let mut got_ack = false;
    let mut got_msg = false;
    for _ in 0..2 {
        match c.expect_packet(STEP).await? {
            Packet::PubAck(a) if a.pkid == 3 => got_ack = true,
            Packet::Publish(p) if &p.payload[..] == b"ok" => got_msg = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got_ack && got_msg);

    let (mut c, _) = connect_ok(addr, ConnectProperties::default()).await;
    c.send(&subscribe("s/id", QoS::AtMostOnce, Some(5))).await?;
    c.expect_disconnect(STEP, 0xA1, "Subscription Identifier while unavailable")
        .await?;
    Ok(())
}

/// 3.3.2.3.2: with `validate_utf8_payloads = true`, a QoS 1 PUBLISH flagged Payload Format
/// Indicator 1 whose payload is not UTF-8 gets PUBACK 0x99 (Payload format invalid) and is not
/// delivered; a valid one is.
#[tokio::test]
async fn invalid_utf8_payload_is_refused_with_0x99() -> Result<()> {
    let broker = Broker::with_config("[mqtt]\nvalidate_utf8_payloads = true\n");
    let (mut sub, _) = connect_ok(broker.addr, ConnectProperties::default()).await;
    assert_eq!(suback_code(&mut sub, "u/#").await?, 1);
    let (mut c, _) = connect_ok(broker.addr, ConnectProperties::default()).await;
    let mut bad = packets::publish("u/bad", QoS::AtLeastOnce, 1, [0xC3, 0x28, 0xFF]);
    bad.properties.payload_format_indicator = Some(1);
    c.send(&Packet::Publish(bad)).await?;
    match c.expect_packet(STEP).await? {
        Packet::PubAck(a) => assert_eq!((a.pkid, a.reason.0), (1, 0x99), "{a:?}"),
        other => panic!("expected PUBACK 0x99, got {other:?}"),
    }
    let mut good = packets::publish("u/good", QoS::AtLeastOnce, 2, "héllo".as_bytes());
    good.properties.payload_format_indicator = Some(1);
    c.send(&Packet::Publish(good)).await?;
    match c.expect_packet(STEP).await? {
        Packet::PubAck(a) => assert_eq!((a.pkid, a.reason.0), (2, 0), "{a:?}"),
        other => panic!("expected PUBACK 0x00, got {other:?}"),
    }
    let p = next_publish(&mut sub, STEP)
        .await?
        .expect("the valid message");
    assert_eq!(
        p.topic.as_str(),
        "u/good",
        "the invalid one is not delivered"
    );
    Ok(())
}

/// 4.11 Server redirection (3.2.2.3.16): `server_reference` refuses a 5.0 client with CONNACK
/// 0x9C Use another server carrying the Server Reference, `server_moved = true` makes it 0x9D
/// Server moved, and a 3.1.1 client (no way to redirect) gets return code 3 Server unavailable.
#[tokio::test]
async fn server_reference_redirects() -> Result<()> {
    let broker = Broker::with_config("[mqtt]\nserver_reference = \"other:1883\"\n");
    let (mut c, a) = try_connect(
        broker.addr,
        Protocol::V5,
        &client_id("cap"),
        &Opts::default(),
    )
    .await?;
    assert_eq!(a.reason.0, 0x9C, "{a:?}");
    assert_eq!(
        a.properties.server_reference.as_deref(),
        Some("other:1883"),
        "{a:?}"
    );
    c.expect_closed(STEP).await?;
    // The codec decodes 3.1.1 return code 3 as 0x88 Server unavailable.
    let (mut c, a) = try_connect(
        broker.addr,
        Protocol::V311,
        &client_id("cap"),
        &Opts::default(),
    )
    .await?;
    assert_eq!(a.reason.0, 0x88, "3.1.1 return code 3: {a:?}");
    c.expect_closed(STEP).await?;

    let broker =
        Broker::with_config("[mqtt]\nserver_reference = \"other:1883\"\nserver_moved = true\n");
    let (_c, a) = try_connect(
        broker.addr,
        Protocol::V5,
        &client_id("cap"),
        &Opts::default(),
    )
    .await?;
    assert_eq!(a.reason.0, 0x9D, "{a:?}");
    assert_eq!(
        a.properties.server_reference.as_deref(),
        Some("other:1883"),
        "{a:?}"
    );
    Ok(())
}

/// Two QoS 2 PUBLISHes left unreleased (no PUBREL, so no PUBCOMP): a server Receive Maximum of 2
/// is then used up.
async fn fill_receive_maximum_2(c: &mut RawClient) -> Result<()> {
    for pkid in 1..=2 {
        c.send(&Packet::Publish(packets::publish(
            "rm/t",
            QoS::ExactlyOnce,
            pkid,
            b"x",
        )))
        .await?;
        match c.expect_packet(STEP).await? {
            Packet::PubRec(r) => assert_eq!(r.pkid, pkid),
            other => panic!("expected PUBREC {pkid}, got {other:?}"),
        }
    }
    Ok(())
}

/// 3.3.4 Flow Control and 3.2.2.3.3 Receive Maximum: the server advertises Receive Maximum 2; a client with
/// three QoS 2 PUBLISHes unacknowledged (no PUBREL sent, so no PUBCOMP) exceeds it and gets
/// DISCONNECT 0x93 Receive Maximum exceeded.
#[tokio::test]
async fn receive_maximum_exceeded_is_0x93() -> Result<()> {
    let broker = Broker::with_config("[mqtt]\nreceive_maximum = 2\n");
    let (mut c, a) = connect_ok(broker.addr, ConnectProperties::default()).await;
    assert_eq!(a.properties.receive_maximum, Some(2), "{a:?}");
    fill_receive_maximum_2(&mut c).await?;
    c.send(&Packet::Publish(packets::publish(
        "rm/t",
        QoS::ExactlyOnce,
        3,
        b"x",
    )))
    .await?;
    c.expect_disconnect(STEP, 0x93, "third unacknowledged QoS 2 PUBLISH")
        .await
}

/// 3.3.2.3.4 [MQTT-3.3.2-9]: a Topic Alias above the Topic Alias Maximum the server advertised
/// (here 2) is DISCONNECT 0x94 Topic Alias invalid; one within it is accepted.
#[tokio::test]
async fn inbound_topic_alias_over_maximum_is_0x94() -> Result<()> {
    let broker = Broker::with_config("[mqtt]\ntopic_alias_maximum = 2\n");
    let (mut c, a) = connect_ok(broker.addr, ConnectProperties::default()).await;
    assert_eq!(a.properties.topic_alias_maximum, Some(2), "{a:?}");
    // Alias 2 is fine.
    let mut ok = packets::publish("ta/ok", QoS::AtLeastOnce, 1, b"x");
    ok.properties.topic_alias = Some(2);
    c.send(&Packet::Publish(ok)).await?;
    match c.expect_packet(STEP).await? {
        Packet::PubAck(a) => assert!(a.reason.0 < 0x80, "{a:?}"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let mut over = packets::publish("ta/x", QoS::AtMostOnce, 0, b"x");
    over.properties.topic_alias = Some(3);
    c.send(&Packet::Publish(over)).await?;
    c.expect_disconnect(STEP, 0x94, "Topic Alias above the maximum")
        .await
}

/// 3.3.2.3.4 [MQTT-3.3.2-8]: "A Topic Alias of 0 is not permitted"; receiving one is a Protocol
/// Error answered like an alias above the maximum, DISCONNECT 0x94 Topic Alias invalid (the
/// broker's own `protocol_tests.rs` states the same intent).
#[tokio::test]
async fn inbound_topic_alias_zero_is_0x94() -> Result<()> {
    let broker = Broker::with_config("[mqtt]\ntopic_alias_maximum = 2\n");
    // The encoder refuses alias 0, so raw bytes: PUBLISH QoS 0, topic "a",
    // properties [0x23 Topic Alias = 0], payload "x".
    let (mut c, _) = connect_ok(broker.addr, ConnectProperties::default()).await;
    c.send_bytes(&[0x30, 8, 0, 1, b'a', 3, 0x23, 0, 0, b'x'])
        .await?;
    c.expect_disconnect(STEP, 0x94, "Topic Alias 0").await
}

/// 3.3.2.3.4 and 3.1.2.11.5: towards a client whose CONNECT allows Topic Aliases, the server
/// may use them: the first PUBLISH on a topic carries topic and alias, a later one only the
/// alias with an empty topic. The alias never exceeds the client's Topic Alias Maximum.
#[tokio::test]
async fn outbound_topic_alias_is_used() -> Result<()> {
    let broker = Broker::start();
    let (mut sub, _) = connect_ok(
        broker.addr,
        ConnectProperties {
            topic_alias_maximum: Some(4),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(suback_code(&mut sub, "al/#").await?, 1);
    let (mut publisher, _) = connect_ok(broker.addr, ConnectProperties::default()).await;
    for i in 0..2u8 {
        publisher
            .send(&Packet::Publish(packets::publish(
                "al/topic",
                QoS::AtMostOnce,
                0,
                [i],
            )))
            .await?;
    }
    let first = next_publish(&mut sub, STEP).await?.expect("first");
    let second = next_publish(&mut sub, STEP).await?.expect("second");
    let alias = first
        .properties
        .topic_alias
        .expect("first PUBLISH sets an alias");
    assert!((1..=4).contains(&alias), "alias {alias} within 1..=4");
    assert_eq!(first.topic.as_str(), "al/topic");
    assert_eq!(&first.payload[..], &[0]);
    assert_eq!(second.properties.topic_alias, Some(alias), "{second:?}");
    assert_eq!(
        second.topic.as_str(),
        "",
        "second PUBLISH uses the alias alone"
    );
    assert_eq!(&second.payload[..], &[1]);
    Ok(())
}

/// 3.1.2.11.4 [MQTT-3.1.2-24], [MQTT-3.1.2-25]: the server must not send a packet larger than
/// the client's Maximum Packet Size; it discards it as if sent. Here 200 bytes: a 1,000-byte
/// message is not sent, the small one after it is.
#[tokio::test]
async fn message_over_client_maximum_packet_size_is_not_sent() -> Result<()> {
    let broker = Broker::start();
    let (mut sub, _) = connect_ok(
        broker.addr,
        ConnectProperties {
            maximum_packet_size: Some(200),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(suback_code(&mut sub, "mp/#").await?, 1);
    let (mut publisher, _) = connect_ok(broker.addr, ConnectProperties::default()).await;
    publisher
        .send(&Packet::Publish(packets::publish(
            "mp/big",
            QoS::AtLeastOnce,
            1,
            [b'b'; 1000],
        )))
        .await?;
    publisher
        .send(&Packet::Publish(packets::publish(
            "mp/small",
            QoS::AtLeastOnce,
            2,
            b"small",
        )))
        .await?;
    let p = next_publish(&mut sub, STEP)
        .await?
        .expect("the small message");
    assert_eq!(
        p.topic.as_str(),
        "mp/small",
        "the big one is skipped: {p:?}"
    );
    assert!(
        next_publish(&mut sub, Duration::from_millis(300))
            .await?
            .is_none(),
        "nothing else arrives"
    );
    Ok(())
}

/// [MQTT-3.2.2-12], [MQTT-3.2.2-13]: a CONNECT whose will exceeds the server's capabilities is
/// refused: Will QoS 2 over Maximum QoS 1 with CONNACK 0x9B, Will Retain with Retain Available
/// 0 with CONNACK 0x9A.
#[tokio::test]
async fn will_over_capabilities_is_refused_in_connack() -> Result<()> {
    let broker = Broker::with_config(ALL_OFF);
    for (qos, retain, code) in [
        (QoS::ExactlyOnce, false, 0x9B),
        (QoS::AtMostOnce, true, 0x9A),
    ] {
        let will = LastWill {
            topic: "will/t".try_into().unwrap(),
            payload: Bytes::from_static(b"bye"),
            qos,
            retain,
            delay_interval: 0,
            properties: PublishProperties::default(),
        };
        let o = Opts::default().will(will);
        let (mut c, a) = try_connect(broker.addr, Protocol::V5, &client_id("will"), &o).await?;
        assert_eq!(a.reason.0, code, "will {qos:?} retain {retain}: {a:?}");
        c.expect_closed(STEP).await?;
    }
    Ok(())
}

/// 3.3.2.3.4 [MQTT-3.3.2-11] and 3.1.2.11.5 [MQTT-3.1.2-26], [MQTT-3.1.2-27]: the server must not
/// send a Topic Alias greater than the client's Topic Alias Maximum, nor any alias when it is
/// absent. With a maximum of 1 and two topics alternating, the alias is re-used: resolving
/// aliases on the client side (an alias with a topic sets the mapping, an alias alone uses it)
/// must give back the topics in the order they were published.
#[tokio::test]
async fn outbound_topic_aliases_respect_client_maximum_and_resolve() -> Result<()> {
    let broker = Broker::start();
    let (mut one, _) = connect_ok(
        broker.addr,
        ConnectProperties {
            topic_alias_maximum: Some(1),
            ..Default::default()
        },
    )
    .await;
    let (mut none, _) = connect_ok(broker.addr, ConnectProperties::default()).await;
    assert_eq!(suback_code(&mut one, "ra/#").await?, 1);
    assert_eq!(suback_code(&mut none, "ra/#").await?, 1);
    let (mut publisher, _) = connect_ok(broker.addr, ConnectProperties::default()).await;
    let order = [
        "ra/one", "ra/two", "ra/one", "ra/one", "ra/two", "ra/two", "ra/one",
    ];
    for (i, t) in order.iter().enumerate() {
        publisher
            .send(&Packet::Publish(packets::publish(
                t,
                QoS::AtMostOnce,
                0,
                [i as u8],
            )))
            .await?;
    }
    let mut aliases: std::collections::HashMap<u16, String> = Default::default();
    for (i, t) in order.iter().enumerate() {
        let p = next_publish(&mut one, STEP).await?.expect("message");
        assert_eq!(&p.payload[..], &[i as u8], "in order");
        let resolved = match p.properties.topic_alias {
            Some(a) => {
                assert_eq!(a, 1, "alias within the client's maximum of 1: {p:?}");
                if !p.topic.is_empty() {
                    aliases.insert(a, p.topic.as_str().to_owned());
                }
                aliases
                    .get(&a)
                    .cloned()
                    .expect("alias used before being set")
            }
            None => p.topic.as_str().to_owned(),
        };
        assert_eq!(resolved, *t, "message {i} resolves to its topic");
        let q = next_publish(&mut none, STEP).await?.expect("message");
        assert_eq!(
            q.properties.topic_alias, None,
            "no alias without Topic Alias Maximum"
        );
        assert_eq!(q.topic.as_str(), *t);
    }
    Ok(())
}

/// 4.13 and [MQTT-4.13.1-1]: a DISCONNECT with a reason code must reach the client, also when
/// the client is still writing. After DISCONNECT 0x93 (Receive Maximum exceeded) the server
/// shuts its write side and keeps reading, and discarding, for a moment instead of closing at
/// once: closing with unread data answers the client's next write with a reset (EPIPE /
/// ECONNRESET), and a client that is writing its PUBREL then never reads why it was cut off.
/// Here the client reads the DISCONNECT and the orderly end of stream, then writes 8 MiB, more
/// than the sockets can buffer: every write must succeed, which it can only if the server is
/// still reading.
#[tokio::test]
async fn disconnect_reaches_a_client_that_keeps_writing() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let broker = Broker::with_config("[mqtt]\nreceive_maximum = 2\n");
    let (mut c, _) = connect_ok(broker.addr, ConnectProperties::default()).await;
    fill_receive_maximum_2(&mut c).await?;
    c.send(&Packet::Publish(packets::publish(
        "rm/t",
        QoS::ExactlyOnce,
        3,
        b"x",
    )))
    .await?;
    let (mut stream, mut buf, mut decoder) = c.into_parts();
    let mut seen = Vec::new();
    loop {
        while let Some(p) = decoder.decode(&mut buf)? {
            seen.push(p);
        }
        match tokio::time::timeout(STEP, stream.read_buf(&mut buf)).await {
            Err(_) => bail!("connection still open after {STEP:?}; saw {seen:?}"),
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("reset instead of an orderly close ({e}); saw {seen:?}"),
        }
    }
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason.0 == 0x93),
        "DISCONNECT 0x93 before the end of the stream; saw {seen:?}"
    );
    // PUBREL 1 and PINGREQ, over and over: the client has not understood yet and goes on.
    let chunk: Vec<u8> = [0x62, 0x02, 0x00, 0x01, 0xC0, 0x00]
        .iter()
        .copied()
        .cycle()
        .take(6 * 10_923)
        .collect();
    for i in 0..128 {
        if let Err(e) = stream.write_all(&chunk).await {
            bail!("write {i} of 128 failed ({e}): the server stopped reading right after its DISCONNECT");
        }
    }
    Ok(())
}
