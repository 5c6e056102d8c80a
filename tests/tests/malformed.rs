//! Malformed packets and protocol errors, as raw bytes. Each one must close ONLY the offending
//! connection (3.1.1 [MQTT-4.8.0-1]; 5.0 4.13, with a DISCONNECT carrying the reason code first
//! where the standard names one), while clients connected before keep exchanging messages, the
//! broker process stays up and logs the closed connection.
//!
//! Every broker here runs with `[mqtt] max_packet_size = 1024`. Statement ids are the MQTT 5.0
//! ones unless marked "3.1.1".

use std::time::Duration;

use sluice_tests::clients::*;
use sluice_tests::codec::{Packet, Protocol, ReasonCode};
use sluice_tests::rumqttc;
use sluice_tests::{client_id, encode_remaining_length, Broker, RawClient};

/// Two well-behaved clients connected before the bad one: rumqttc 3.1.1 and 5.0, both
/// subscribed to `good/#`, publishing to each other at QoS 1.
struct Good {
    v4: V4,
    v5: V5,
    n: u32,
}

impl Good {
    async fn connect(broker: &Broker) -> Good {
        let mut v4 = V4::connect(broker.addr, &client_id("good4"), true).await;
        v4.subscribe("good/#", rumqttc::QoS::AtLeastOnce).await;
        let mut v5 = V5::connect(broker.addr, &client_id("good5")).await;
        v5.subscribe("good/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await;
        let mut g = Good { v4, v5, n: 0 };
        g.exchange("before").await;
        g
    }

    /// One message each way; both must arrive.
    async fn exchange(&mut self, when: &str) {
        self.n += 1;
        let t4 = format!("good/from4/{}", self.n);
        let t5 = format!("good/from5/{}", self.n);
        self.v4
            .client
            .publish(
                t4.clone(),
                rumqttc::QoS::AtLeastOnce,
                false,
                when.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        self.v5
            .client
            .publish(
                t5.clone(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                when.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        let want5 = t4.clone();
        self.v5
            .next(|p| matches!(p, P5::Publish(x) if x.topic[..] == *want5.as_bytes()))
            .await;
        let want4 = t5.clone();
        self.v4
            .next(|p| matches!(p, rumqttc::Packet::Publish(x) if x.topic == want4))
            .await;
    }
}

/// The broker process has not exited (it is not a zombie awaiting reaping either).
fn assert_alive(broker: &Broker) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", broker.pid()))
        .expect("broker process exists");
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?");
    assert_ne!(state, "Z", "broker exited: {stat}");
}

/// Which DISCONNECT reason codes a 5.0 client may see before the close.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The standard names this code: it must come.
    Code(u8),
    /// The standard names none: a DISCONNECT, if sent, must carry one of these.
    AnyOf(&'static [u8]),
}

/// Connects a raw client at `protocol` (unless `bytes` is sent instead of CONNECT), sends
/// `bytes`, and checks: the connection closes (with the right DISCONNECT for 5.0), the broker
/// logs it, is alive, and the `good` clients still exchange messages.
async fn bad_case(
    broker: &Broker,
    good: &mut Good,
    protocol: Protocol,
    bytes: &[u8],
    expect: Expect,
    what: &str,
) {
    let id = client_id("bad");
    let from = broker.log_len();
    let mut bad = raw_ok(broker.addr, protocol, &id, &Opts::default()).await;
    bad.send_bytes(bytes).await.unwrap();
    let seen = bad
        .expect_closed(T)
        .await
        .unwrap_or_else(|e| panic!("{what} ({protocol:?}): {e}"));
    let codes = disconnect_reasons(&seen);
    if protocol.is_v5() {
        match expect {
            Expect::Code(c) => assert_eq!(
                codes,
                vec![c],
                "{what}: DISCONNECT 0x{c:02X} before the close; saw {seen:?}"
            ),
            Expect::AnyOf(ok) => assert!(
                codes.len() <= 1 && codes.iter().all(|c| ok.contains(c)),
                "{what}: DISCONNECT reason one of {ok:02X?}; saw {seen:?}"
            ),
        }
    } else {
        assert!(seen.is_empty(), "{what}: 3.1.1 just closes; saw {seen:?}");
    }
    let line = wait_log_all(broker, from, &["client disconnected", &id], T);
    assert!(!line.is_empty());
    assert_alive(broker);
    good.exchange(what).await;
}

/// Runs `case` at 3.1.1 and 5.0 against one broker with two good clients.
async fn both_levels(case: impl Fn(Protocol) -> (Vec<u8>, Expect), what: &str) {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut good = Good::connect(&broker).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let (bytes, expect) = case(protocol);
        bad_case(&broker, &mut good, protocol, &bytes, expect, what).await;
    }
}

/// A PUBLISH of `payload`: `first` byte, raw topic bytes, optional packet id, 5.0 properties.
fn publish(
    protocol: Protocol,
    first: u8,
    topic: &[u8],
    pkid: Option<u16>,
    props: &[u8],
) -> Vec<u8> {
    publish_bytes(protocol, first, topic, pkid, props, b"payload")
}

/// A SUBSCRIBE: `first` byte, packet id 1, one filter with the given options byte (or none).
fn subscribe(protocol: Protocol, first: u8, filter: Option<(&[u8], u8)>) -> Vec<u8> {
    let mut body = vec![0, 1];
    if protocol.is_v5() {
        body.push(0);
    }
    if let Some((f, options)) = filter {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f);
        body.push(options);
    }
    frame(first, &body)
}

const MALFORMED: Expect = Expect::Code(0x81);
const PROTOCOL_ERROR: Expect = Expect::Code(0x82);
const MALFORMED_OR_PROTOCOL: Expect = Expect::AnyOf(&[0x81, 0x82]);

/// SUBSCRIBE with fixed-header flags 0000 instead of 0010 is malformed: the connection is
/// closed [MQTT-3.8.1-1], 5.0 with DISCONNECT 0x81 (2.1.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_bad_fixed_header_flags() {
    both_levels(
        |p| (subscribe(p, 0x80, Some((b"a/b", 1))), MALFORMED),
        "SUBSCRIBE flags 0000",
    )
    .await;
}

/// PUBLISH with both QoS bits set (QoS 3) is malformed [MQTT-3.3.1-4]: DISCONNECT 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_qos_3() {
    both_levels(
        |p| (publish(p, 0x36, b"a/b", Some(1), &[]), MALFORMED),
        "PUBLISH QoS 3",
    )
    .await;
}

/// PUBLISH with DUP = 1 at QoS 0 breaks [MQTT-3.3.1-2]; the connection is closed. The flags are
/// well formed, so 5.0 gets DISCONNECT 0x82 Protocol Error (as Mosquitto and EMQX send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_qos0_with_dup() {
    both_levels(
        |p| (publish(p, 0x38, b"a/b", None, &[]), PROTOCOL_ERROR),
        "PUBLISH QoS 0 DUP 1",
    )
    .await;
}

/// A PUBLISH topic name with a wildcard (`+` or `#`) breaks [MQTT-3.3.2-2]: the connection is
/// closed, in 5.0 with DISCONNECT 0x90 Topic Name invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_topic_with_wildcard() {
    let codes = Expect::Code(0x90);
    both_levels(
        |p| (publish(p, 0x30, b"a/+/c", None, &[]), codes),
        "PUBLISH topic a/+/c",
    )
    .await;
    both_levels(
        |p| (publish(p, 0x32, b"a/#", Some(1), &[]), codes),
        "PUBLISH topic a/#",
    )
    .await;
}

/// A Remaining Length needing a fifth byte is malformed (2.1.4: at most four bytes; 1.5.5):
/// DISCONNECT 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_length_longer_than_4_bytes() {
    both_levels(
        |_| (vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], MALFORMED),
        "remaining length of 5 bytes",
    )
    .await;
}

/// 5.0: a Variable Byte Integer MUST use the minimum number of bytes [MQTT-1.5.5-1]: PINGREQ
/// with its Remaining Length 0 written as 0x80 0x00 is malformed: DISCONNECT 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_minimal_remaining_length_v5() {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut good = Good::connect(&broker).await;
    bad_case(
        &broker,
        &mut good,
        Protocol::V5,
        &[0xC0, 0x80, 0x00],
        MALFORMED,
        "PINGREQ remaining length 0x80 0x00",
    )
    .await;
}

/// A QoS 1 PUBLISH with packet identifier 0 breaks [MQTT-2.2.1-3]; the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_qos1_with_packet_id_0() {
    both_levels(
        |p| {
            (
                publish(p, 0x32, b"a/b", Some(0), &[]),
                MALFORMED_OR_PROTOCOL,
            )
        },
        "PUBLISH QoS 1 packet id 0",
    )
    .await;
}

/// SUBSCRIBE with packet identifier 0 breaks [MQTT-2.2.1-3]; the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_packet_id_0() {
    both_levels(
        |p| {
            let mut b = subscribe(p, 0x82, Some((b"a/b", 1)));
            b[2] = 0;
            b[3] = 0;
            (b, MALFORMED_OR_PROTOCOL)
        },
        "SUBSCRIBE packet id 0",
    )
    .await;
}

/// A topic name that is not well-formed UTF-8 is malformed [MQTT-1.5.4-1] (3.1.1:
/// [MQTT-1.5.3-1]): DISCONNECT 0x81. So is one containing U+0000 [MQTT-1.5.4-2] (3.1.1:
/// [MQTT-1.5.3-2]) and a UTF-16 surrogate encoded in UTF-8 (1.5.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_topic_invalid_utf8() {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut good = Good::connect(&broker).await;
    for (topic, what) in [
        (&b"a/\xff\xfe"[..], "topic with 0xFF 0xFE"),
        (&b"a/\x00b"[..], "topic with U+0000"),
        (&b"a/\xed\xa0\x80"[..], "topic with a surrogate"),
        (&b"a/\xc0\xaf"[..], "topic with an overlong encoding"),
    ] {
        for protocol in [Protocol::V311, Protocol::V5] {
            let bytes = publish(protocol, 0x30, topic, None, &[]);
            bad_case(&broker, &mut good, protocol, &bytes, MALFORMED, what).await;
        }
    }
}

/// A SUBSCRIBE filter that is not well-formed UTF-8 is malformed [MQTT-1.5.4-1]: 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_filter_invalid_utf8() {
    both_levels(
        |p| (subscribe(p, 0x82, Some((b"a/\xff", 1))), MALFORMED),
        "SUBSCRIBE filter with 0xFF",
    )
    .await;
}

/// A SUBSCRIBE without any filter is a protocol violation [MQTT-3.8.3-2] (3.1.1:
/// [MQTT-3.8.3-3]); 5.0 calls it a Protocol Error (3.8.3): DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_filters() {
    both_levels(
        |p| (subscribe(p, 0x82, None), PROTOCOL_ERROR),
        "SUBSCRIBE with no payload",
    )
    .await;
}

/// Subscription options with reserved bits set are malformed [MQTT-3.8.3-5] (3.1.1:
/// [MQTT-3-8.3-4]): DISCONNECT 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_options_reserved_bits() {
    both_levels(
        |p| (subscribe(p, 0x82, Some((b"a/b", 0xC1))), MALFORMED),
        "subscription options reserved bits",
    )
    .await;
}

/// A subscription Maximum QoS of 3: malformed in 3.1.1 [MQTT-3-8.3-4] (closed); in 5.0 "It is a
/// Protocol Error if the Maximum QoS field has the value 3" (3.8.3.1): DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_qos_3() {
    both_levels(
        |p| {
            let e = if p.is_v5() { PROTOCOL_ERROR } else { MALFORMED };
            (subscribe(p, 0x82, Some((b"a/b", 0x03))), e)
        },
        "subscription QoS 3",
    )
    .await;
}

/// 5.0: "It is a Protocol Error to send a Retain Handling value of 3" (3.8.3.1): DISCONNECT
/// 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_retain_handling_3_v5() {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut good = Good::connect(&broker).await;
    bad_case(
        &broker,
        &mut good,
        Protocol::V5,
        &subscribe(Protocol::V5, 0x82, Some((b"a/b", 0x31))),
        PROTOCOL_ERROR,
        "Retain Handling 3",
    )
    .await;
}

/// 5.0: the same property twice in one packet is a Protocol Error (2.2.2.2, e.g. 3.3.2.3.2
/// for the Payload Format Indicator): DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_property_v5() {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut good = Good::connect(&broker).await;
    let bytes = publish(Protocol::V5, 0x30, b"a/b", None, &[0x01, 0x00, 0x01, 0x00]);
    bad_case(
        &broker,
        &mut good,
        Protocol::V5,
        &bytes,
        PROTOCOL_ERROR,
        "Payload Format Indicator twice",
    )
    .await;
}

/// 5.0: a property length running past the end of the packet is malformed (2.2.2.1): 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_length_past_end_v5() {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut good = Good::connect(&broker).await;
    // Topic "a", property length 50, then nothing.
    let bytes = [0x30, 0x04, 0x00, 0x01, b'a', 50];
    bad_case(
        &broker,
        &mut good,
        Protocol::V5,
        &bytes,
        MALFORMED,
        "property length past the end",
    )
    .await;
}

/// A string length running past the end of the packet is malformed (1.5.4, 2.1.4): 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_length_past_end() {
    both_levels(
        |_| (vec![0x30, 0x04, 0x00, 0x10, b'a', b'b'], MALFORMED),
        "topic length past the end",
    )
    .await;
}

/// Packet type 0 is reserved: malformed (2.1.2): 0x81. PINGREQ with a body is malformed
/// (3.12: no variable header or payload): 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_type_and_pingreq_with_body() {
    both_levels(|_| (vec![0x00, 0x00], MALFORMED), "packet type 0").await;
    both_levels(
        |_| (vec![0xC0, 0x01, 0x00], MALFORMED),
        "PINGREQ with a body",
    )
    .await;
}

/// A packet only a server may send (SUBACK, CONNACK) coming from a client is a protocol
/// violation; the connection is closed (5.0: 0x82 Protocol Error, or 0x81).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_packets_from_client() {
    both_levels(
        |_| (vec![0x90, 0x03, 0x00, 0x01, 0x00], MALFORMED_OR_PROTOCOL),
        "SUBACK from a client",
    )
    .await;
    both_levels(
        |p| {
            let b = if p.is_v5() {
                vec![0x20, 0x03, 0x00, 0x00, 0x00]
            } else {
                vec![0x20, 0x02, 0x00, 0x00]
            };
            (b, MALFORMED_OR_PROTOCOL)
        },
        "CONNACK from a client",
    )
    .await;
}

/// A packet larger than `max_packet_size` (1024) is refused from its fixed header: 5.0 gets
/// DISCONNECT 0x95 Packet too large (3.2.2.3.6, [MQTT-3.2.2-15]; the 5.0 CONNACK announces
/// Maximum Packet Size 1024), 3.1.1 is closed. The header alone suffices: the broker does not
/// wait for the 2000-byte body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_larger_than_max_packet_size() {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let (_c, ack) = raw_connect(
        broker.addr,
        Protocol::V5,
        &client_id("mps"),
        &Opts::default(),
    )
    .await;
    assert_eq!(
        ack.properties.maximum_packet_size,
        Some(1024),
        "CONNACK Maximum Packet Size"
    );
    drop(_c);

    let mut good = Good::connect(&broker).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let big = publish_bytes(protocol, 0x30, b"big", None, &[], &[b'x'; 2000]);
        bad_case(
            &broker,
            &mut good,
            protocol,
            &big,
            Expect::Code(0x95),
            "2 KB PUBLISH",
        )
        .await;
        // Only the fixed header of a 2000-byte packet.
        let mut header = vec![0x30];
        encode_remaining_length(2000, &mut header);
        bad_case(
            &broker,
            &mut good,
            protocol,
            &header,
            Expect::Code(0x95),
            "fixed header declaring 2000 bytes",
        )
        .await;
    }
    // Exactly at the limit is fine.
    let mut ok = raw_ok(
        broker.addr,
        Protocol::V5,
        &client_id("fit"),
        &Opts::default(),
    )
    .await;
    // 1 + 2 (remaining length) + 2 + 8 ("good/fit") + 1 (properties) + payload = 1024.
    let payload = vec![b'y'; 1024 - 14];
    let fits = publish_bytes(Protocol::V5, 0x30, b"good/fit", None, &[], &payload);
    assert_eq!(fits.len(), 1024);
    ok.send_bytes(&fits).await.unwrap();
    ok.send(&Packet::PingReq).await.unwrap();
    assert_eq!(
        ok.expect_packet(T).await.unwrap(),
        Packet::PingResp,
        "a 1024-byte packet is accepted"
    );
    let p = good
        .v4
        .next(|p| matches!(p, rumqttc::Packet::Publish(x) if x.topic == "good/fit"))
        .await;
    let rumqttc::Packet::Publish(p) = p else {
        unreachable!()
    };
    assert_eq!(p.payload.len(), payload.len());
}

/// The first packet on a connection must be CONNECT [MQTT-3.1.0-1]: anything else closes it
/// without a CONNACK, and the broker logs the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_before_connect() {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut good = Good::connect(&broker).await;
    for (bytes, what) in [
        (
            publish(Protocol::V311, 0x30, b"a/b", None, &[]),
            "PUBLISH first",
        ),
        (
            subscribe(Protocol::V311, 0x82, Some((b"a/#", 0))),
            "SUBSCRIBE first",
        ),
        (vec![0xC0, 0x00], "PINGREQ first"),
    ] {
        let from = broker.log_len();
        let mut bad = RawClient::connect(broker.addr, Protocol::V311)
            .await
            .unwrap();
        bad.send_bytes(&bytes).await.unwrap();
        let seen = bad.expect_closed(T).await.unwrap();
        assert!(
            seen.is_empty(),
            "{what}: closed without a reply; saw {seen:?}"
        );
        wait_log_all(&broker, from, &["refused connection"], T);
        assert_alive(&broker);
        good.exchange(what).await;
    }
}

/// A malformed CONNECT (reserved flag set, [MQTT-3.1.2-3]) closes the connection [MQTT-3.1.4-1];
/// a CONNACK, if any, carries a failure code (5.0: 0x81 Malformed Packet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_reserved_flag() {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut good = Good::connect(&broker).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut bytes = sluice_tests::connect_bytes(protocol, &client_id("rsv"));
        let flags_at = 2 + 2 + 4 + 1; // fixed header, name length, "MQTT", level
        bytes[flags_at] |= 0x01;
        let mut bad = RawClient::connect(broker.addr, protocol).await.unwrap();
        bad.send_bytes(&bytes).await.unwrap();
        let seen = bad.expect_closed(T).await.unwrap();
        for p in &seen {
            match p {
                Packet::ConnAck(a) => {
                    assert!(a.reason.is_error(), "{protocol:?}: refused; saw {a:?}");
                    if protocol.is_v5() {
                        assert_eq!(a.reason, ReasonCode::MALFORMED_PACKET);
                    }
                }
                other => panic!("{protocol:?}: only a CONNACK may come; saw {other:?}"),
            }
        }
        assert_alive(&broker);
        good.exchange("after bad CONNECT").await;
    }
}

/// A flood of garbage after a good CONNECT closes that connection quickly and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_stream_closes_only_that_connection() {
    let broker = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut good = Good::connect(&broker).await;
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut bad = raw_ok(
        broker.addr,
        Protocol::V311,
        &client_id("junk"),
        &Opts::default(),
    )
    .await;
    let _ = bad.send_bytes(&garbage).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), bad.expect_closed(T)).await;
    assert_alive(&broker);
    good.exchange("after garbage").await;
}
