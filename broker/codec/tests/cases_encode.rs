//! CODEC-CASES.md rows about encoding, and what each level writes.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use sluice_codec::fixtures::{filter, s, topic};
use sluice_codec::*;

const V5: Protocol = Protocol::V5;
const V311: Protocol = Protocol::V311;

fn enc(packet: &Packet, p: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, p, &mut buf).unwrap_or_else(|e| panic!("{packet:?} at {p:?}: {e}"));
    assert_eq!(encoded_len(packet, p), Ok(buf.len()));
    buf.to_vec()
}

/// Asserts that encoding fails with `expected` and leaves the buffer exactly as it was.
#[track_caller]
fn enc_err(packet: &Packet, p: Protocol, expected: EncodeError) {
    let mut buf = BytesMut::from(&b"already here"[..]);
    assert_eq!(encode(packet, p, &mut buf), Err(expected.clone()));
    assert_eq!(&buf[..], b"already here", "nothing appended on error");
    assert_eq!(encoded_len(packet, p), Err(expected));
}

fn connect(p: Protocol) -> Connect {
    Connect {
        protocol: p,
        clean_start: true,
        keep_alive: 30,
        client_id: s("c"),
        will: None,
        username: Some(s("u")),
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn publish(qos: QoS, pkid: u16, payload: Bytes) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic("t"),
        pkid,
        payload,
        properties: Default::default(),
    }
}

const BIG: usize = 65_536;

/// Row: a string or binary field over 65,535 bytes is an encode error and nothing is written
/// (1.5.4, 1.5.6). Strings cannot even be built that long.
#[test]
fn field_over_65535_bytes_is_an_encode_error_and_nothing_is_written() {
    let big = Bytes::from(vec![b'x'; BIG]);
    assert_eq!(Str::try_from("x".repeat(BIG)), Err(StrError::TooLong));
    assert!(Str::try_from("x".repeat(BIG - 1)).is_ok());
    for p in LEVELS {
        let c = Connect {
            password: Some(big.clone()),
            ..connect(p)
        };
        enc_err(
            &Packet::Connect(Box::new(c)),
            p,
            EncodeError::FieldTooLong {
                field: "password",
                len: BIG,
            },
        );
        let will = LastWill {
            topic: topic("w"),
            payload: big.clone(),
            qos: QoS::AtMostOnce,
            retain: false,
            delay_interval: 0,
            properties: PublishProperties::default(),
        };
        let c = Connect {
            will: Some(will),
            ..connect(p)
        };
        enc_err(
            &Packet::Connect(Box::new(c)),
            p,
            EncodeError::FieldTooLong {
                field: "will payload",
                len: BIG,
            },
        );
    }
    let mut p = publish(QoS::AtMostOnce, 0, Bytes::new());
    p.properties.correlation_data = Some(big.clone());
    enc_err(
        &Packet::Publish(p),
        V5,
        EncodeError::FieldTooLong {
            field: "correlation data",
            len: BIG,
        },
    );
    let mut a = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Default::default(),
    };
    a.properties.authentication_method = Some(s("m"));
    a.properties.authentication_data = Some(big.clone());
    enc_err(
        &Packet::Auth(a),
        V5,
        EncodeError::FieldTooLong {
            field: "authentication data",
            len: BIG,
        },
    );
    // Exactly 65,535 is fine.
    let c = Connect {
        password: Some(big.slice(1..)),
        ..connect(V311)
    };
    assert_eq!(
        enc(&Packet::Connect(Box::new(c)), V311).len(),
        1 + 3 + 10 + 3 + 3 + 2 + 65_535
    );
}

/// Row: an encode error halfway through a packet leaves no partial bytes in the buffer: errors
/// found in the last fields, and a packet too large for the remaining length (2.1.4).
#[test]
fn encode_error_halfway_leaves_no_partial_bytes() {
    for p in LEVELS {
        // The password comes last in CONNECT.
        let c = Connect {
            password: Some(Bytes::from(vec![0; BIG])),
            ..connect(p)
        };
        enc_err(
            &Packet::Connect(Box::new(c)),
            p,
            EncodeError::FieldTooLong {
                field: "password",
                len: BIG,
            },
        );
        // A rejected filter position that does not fit: detected after the valid filters.
        let sub = Subscribe {
            pkid: 1,
            filters: vec![Subscription {
                filter: filter("a"),
                options: Default::default(),
            }],
            rejected: vec![(5, s("a/#/b"), StrError::InvalidMultiLevelWildcard)],
            properties: Default::default(),
        };
        enc_err(
            &Packet::Subscribe(sub),
            p,
            EncodeError::InvalidValue("rejected filter positions out of order or range"),
        );
        // Packet identifier 0 on a QoS 1 PUBLISH [MQTT-2.2.1-3].
        enc_err(
            &Packet::Publish(publish(QoS::AtLeastOnce, 0, Bytes::new())),
            p,
            EncodeError::InvalidValue("packet identifier 0 [MQTT-2.2.1-3]"),
        );
    }
    // 268,435,456 bytes of remaining length: one more than the Variable Byte Integer can hold.
    let payload = Bytes::from(vec![0u8; MAX_REMAINING_LENGTH + 1 - 3]);
    let too_big = Packet::Publish(publish(QoS::AtMostOnce, 0, payload));
    enc_err(
        &too_big,
        V311,
        EncodeError::PacketTooLarge(MAX_REMAINING_LENGTH + 1),
    );
    // One property byte pushes a 5.0 packet over the limit.
    let payload = Bytes::from(vec![0u8; MAX_REMAINING_LENGTH - 3]);
    let at_limit = Packet::Publish(publish(QoS::AtMostOnce, 0, payload));
    assert_eq!(
        encoded_len(&at_limit, V311),
        Ok(1 + 4 + MAX_REMAINING_LENGTH)
    );
    enc_err(
        &at_limit,
        V5,
        EncodeError::PacketTooLarge(MAX_REMAINING_LENGTH + 1),
    );
}

/// AUTH does not exist before 5.0.
#[test]
fn auth_is_not_in_3_1_1() {
    let a = Packet::Auth(Auth {
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    });
    enc_err(&a, V311, EncodeError::NotInProtocol("AUTH"));
    enc_err(&a, Protocol::V31, EncodeError::NotInProtocol("AUTH"));
    assert_eq!(enc(&a, V5), b"\xf0\x00");
}

/// 3.1.1 writes no properties and maps 5.0 reason codes to its return codes (3.2.2.3, 3.9.3).
#[test]
fn v311_writes_no_properties_and_maps_reason_codes() {
    for (reason, code) in [
        (0x00u8, 0u8),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x89, 3),
        (0x80, 3),
        (0x86, 4),
        (0x87, 5),
        (0x8a, 5),
    ] {
        let mut ack = ConnAck {
            session_present: false,
            reason: ReasonCode(reason),
            properties: Default::default(),
        };
        ack.properties.reason_string = Some(s("not written"));
        assert_eq!(enc(&Packet::ConnAck(ack), V311), [0x20, 2, 0, code]);
    }
    let suback = SubAck {
        pkid: 3,
        reasons: vec![
            ReasonCode(1),
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode(0),
        ],
        properties: AckProperties {
            reason_string: Some(s("x")),
            ..Default::default()
        },
    };
    assert_eq!(
        enc(&Packet::SubAck(suback.clone()), V311),
        b"\x90\x06\x00\x03\x01\x80\x80\x00"
    );
    assert_eq!(
        enc(&Packet::SubAck(suback), V5),
        b"\x90\x0b\x00\x03\x04\x1f\x00\x01x\x01\x8f\x87\x00"
    );
    let unsuback = UnsubAck {
        pkid: 3,
        reasons: vec![ReasonCode(0x11)],
        properties: Default::default(),
    };
    assert_eq!(
        enc(&Packet::UnsubAck(unsuback.clone()), V311),
        b"\xb0\x02\x00\x03"
    );
    assert_eq!(
        enc(&Packet::UnsubAck(unsuback), V5),
        b"\xb0\x04\x00\x03\x00\x11"
    );
    let d = Disconnect {
        reason: ReasonCode::SERVER_SHUTTING_DOWN,
        properties: DisconnectProperties {
            session_expiry_interval: Some(1),
            ..Default::default()
        },
    };
    assert_eq!(enc(&Packet::Disconnect(d), V311), b"\xe0\x00");
    let ack = PubAck {
        reason: ReasonCode(0x10),
        ..PubAck::new(1)
    };
    assert_eq!(enc(&Packet::PubAck(ack), V311), b"\x40\x02\x00\x01");
    let mut p = publish(QoS::AtMostOnce, 0, Bytes::from_static(b"x"));
    p.properties.message_expiry_interval = Some(5);
    assert_eq!(
        enc(&Packet::Publish(p.clone()), V311),
        b"\x30\x04\x00\x01tx"
    );
    assert_eq!(
        enc(&Packet::Publish(p), V5),
        b"\x30\x0a\x00\x01t\x05\x02\x00\x00\x00\x05x"
    );
}

/// 5.0 short forms: acks with Success and no properties are 2 bytes of remaining length;
/// DISCONNECT 0x00 without properties is `e0 00`; CONNACK always has a property length.
#[test]
fn v5_short_forms_are_written() {
    assert_eq!(
        enc(&Packet::PubAck(PubAck::new(7)), V5),
        b"\x40\x02\x00\x07"
    );
    assert_eq!(
        enc(&Packet::PubRel(PubAck::new(7)), V5),
        b"\x62\x02\x00\x07"
    );
    let reason_only = PubAck {
        reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        ..PubAck::new(7)
    };
    assert_eq!(
        enc(&Packet::PubComp(reason_only), V5),
        b"\x70\x03\x00\x07\x92"
    );
    let success_with_props = PubAck {
        properties: AckProperties {
            user_properties: vec![(s("k"), s("v"))],
            ..Default::default()
        },
        ..PubAck::new(7)
    };
    assert_eq!(
        enc(&Packet::PubRec(success_with_props), V5),
        b"\x50\x0b\x00\x07\x00\x07\x26\x00\x01k\x00\x01v"
    );
    assert_eq!(
        enc(&Packet::Disconnect(Disconnect::new(ReasonCode(0))), V5),
        b"\xe0\x00"
    );
    assert_eq!(
        enc(&Packet::Disconnect(Disconnect::new(ReasonCode(0x8e))), V5),
        b"\xe0\x01\x8e"
    );
    let ack = ConnAck {
        session_present: true,
        reason: ReasonCode(0),
        properties: Default::default(),
    };
    assert_eq!(enc(&Packet::ConnAck(ack), V5), b"\x20\x03\x01\x00\x00");
    let auth = Auth {
        reason: ReasonCode::RE_AUTHENTICATE,
        properties: AuthProperties::default(),
    };
    assert_eq!(enc(&Packet::Auth(auth), V5), b"\xf0\x02\x19\x00");
}

/// Values the decoder refuses are refused by the encoder too.
#[test]
fn encoder_refuses_what_the_decoder_refuses() {
    let mut p = publish(QoS::AtMostOnce, 0, Bytes::new());
    p.properties.topic_alias = Some(0);
    enc_err(
        &Packet::Publish(p),
        V5,
        EncodeError::InvalidValue("topic alias 0"),
    );
    let p = Publish {
        topic: TopicName::default(),
        ..publish(QoS::AtMostOnce, 0, Bytes::new())
    };
    enc_err(
        &Packet::Publish(p),
        V311,
        EncodeError::InvalidValue("empty topic name without a topic alias"),
    );
    let c = Connect {
        username: None,
        password: Some(Bytes::from_static(b"p")),
        ..connect(V311)
    };
    let c = Packet::Connect(Box::new(c));
    assert!(matches!(
        encode(&c, V311, &mut BytesMut::new()),
        Err(EncodeError::InvalidValue(_))
    ));
    assert!(encode(&c, V5, &mut BytesMut::new()).is_ok());
    let sub = Subscribe {
        pkid: 1,
        filters: vec![],
        rejected: vec![],
        properties: Default::default(),
    };
    assert!(matches!(
        encode(&Packet::Subscribe(sub), V5, &mut BytesMut::new()),
        Err(EncodeError::InvalidValue(_))
    ));
    let mut ack = ConnAck {
        session_present: false,
        reason: ReasonCode(0),
        properties: Default::default(),
    };
    ack.properties.maximum_qos = Some(QoS::ExactlyOnce);
    assert!(matches!(
        encode(&Packet::ConnAck(ack), V5, &mut BytesMut::new()),
        Err(EncodeError::InvalidValue(_))
    ));
    let auth = Auth {
        reason: ReasonCode(0x80),
        properties: Default::default(),
    };
    assert!(matches!(
        encode(&Packet::Auth(auth), V5, &mut BytesMut::new()),
        Err(EncodeError::InvalidValue(_))
    ));
    // DUP is not written on QoS 0 [MQTT-3.3.1-2].
    let p = Publish {
        dup: true,
        ..publish(QoS::AtMostOnce, 0, Bytes::new())
    };
    assert_eq!(enc(&Packet::Publish(p), V311), b"\x30\x03\x00\x01t");
}

/// The remaining length is written as the shortest Variable Byte Integer at every boundary
/// (1.5.5), and decodes back.
#[test]
fn remaining_length_boundaries() {
    for (remaining, header) in [
        (127usize, 2usize),
        (128, 3),
        (16_383, 3),
        (16_384, 4),
        (2_097_151, 4),
        (2_097_152, 5),
    ] {
        let p = publish(QoS::AtMostOnce, 0, Bytes::from(vec![7u8; remaining - 3]));
        let packet = Packet::Publish(p);
        let bytes = enc(&packet, V311);
        assert_eq!(bytes.len(), header + remaining);
        assert_eq!(ok_at(V311, &bytes), packet);
    }
}

/// Row: topic matching with multibyte UTF-8 topics gives the right answer and never panics (4.7).
#[test]
fn topic_matching_with_multibyte_utf8() {
    assert!(topic_matches("#", "é/a"));
    assert!(topic_matches("+/a", "é/a"));
    assert!(topic_matches("é/+", "é/日本"));
    assert!(topic_matches("+/+", "é/日本"));
    assert!(topic_matches("é/#", "é"));
    assert!(!topic_matches("e/a", "é/a"));
    assert!(!topic_matches("+", "é/a"));
    assert!(!topic_matches("é/a/+", "é/a"));
    assert!(!topic_matches("#", "$é/a"));
    assert!(topic_matches("$é/+", "$é/a"));
}
