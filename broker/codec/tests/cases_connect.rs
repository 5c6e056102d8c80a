//! CODEC-CASES.md rows about CONNECT, at 3.1, 3.1.1 and 5.0, decoded server side.

mod common;

use bytes::Bytes;
use common::*;
use sluice_codec::*;

const ALL: [Protocol; 3] = [Protocol::V31, Protocol::V311, Protocol::V5];

fn server_err(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let (r, left) = decode_server(bytes);
    assert_eq!(left, 0, "a complete CONNECT frame is consumed");
    r
}

fn connect_ok(bytes: &[u8]) -> Connect {
    match ok_server(bytes) {
        Packet::Connect(c) => *c,
        other => panic!("{other:?}"),
    }
}

/// Row: CONNECT reserved flag bit 0 set -> malformed [MQTT-3.1.2-3].
#[test]
fn connect_reserved_flag_is_malformed_mqtt_3_1_2_3() {
    for p in ALL {
        assert_malformed(
            &server_err(&connect(p, 0x03, b"", &field(b"c"))),
            "[MQTT-3.1.2-3]",
        );
    }
}

/// Row: password flag without user name flag: malformed in 3.1 / 3.1.1 [MQTT-3.1.2-22], allowed
/// in 5.0 (3.1.2.9).
#[test]
fn password_without_username_mqtt_3_1_2_22() {
    for p in [Protocol::V31, Protocol::V311] {
        let bytes = connect(p, 0x42, b"", &cat(&[&field(b"c"), &field(b"pw")]));
        assert_malformed(&server_err(&bytes), "[MQTT-3.1.2-22]");
    }
    let c = connect_ok(&connect(
        Protocol::V5,
        0x42,
        b"",
        &cat(&[&field(b"c"), &field(b"pw")]),
    ));
    assert_eq!(
        (c.username, c.password),
        (None, Some(Bytes::from_static(b"pw")))
    );
}

/// Row: a password that is not UTF-8 is valid: it is binary data (3.1.3.5).
#[test]
fn binary_password_is_valid() {
    for p in ALL {
        let payload = cat(&[&field(b"c"), &field(b"u"), &field(b"\xff\x00\xfe")]);
        let c = connect_ok(&connect(p, 0xc2, b"", &payload));
        assert_eq!(
            c.password,
            Some(Bytes::from_static(b"\xff\x00\xfe")),
            "{p:?}"
        );
        assert_eq!(c.protocol, p);
    }
}

/// Row: `MQIsdp` level 3 is MQTT 3.1; other name/level pairs are unsupported [MQTT-3.1.2-2].
#[test]
fn protocol_name_and_level_select_the_protocol() {
    for p in ALL {
        let mut d = Decoder::new(usize::MAX);
        let mut buf = bytes::BytesMut::from(&connect(p, 0x02, b"", &field(b"c"))[..]);
        let Ok(Some(Packet::Connect(c))) = d.decode(&mut buf) else {
            panic!("{p:?}")
        };
        assert_eq!((c.protocol, d.protocol()), (p, Some(p)));
    }
    for (name, level) in [
        (&b"MQIsdp"[..], 4u8),
        (b"MQTT", 3),
        (b"MQTT", 6),
        (b"MQTT", 0),
        (b"MQTX", 4),
    ] {
        let bytes = frame(0x10, &cat(&[&field(name), &[level, 2, 0, 60, 0, 0]]));
        assert_eq!(
            decode_server(&bytes).0,
            Err(DecodeError::UnsupportedProtocol { level })
        );
    }
    // The answer to an unsupported level is CONNACK 0x84 (return code 1 before 5.0).
    assert_eq!(
        DecodeError::UnsupportedProtocol { level: 6 }.reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
    assert_eq!(
        connack_return_code(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        1
    );
}

/// Row: "MQTT" level 4 is never parsed as 5, nor the reverse: the level chooses the parser.
#[test]
fn level_chooses_the_parser() {
    // A valid 5.0 CONNECT relabelled as level 4: its property length would be read as part of
    // the client identifier, leaving a trailing byte -> malformed, not a 5.0 packet.
    let body =
        |level: u8, rest: &[u8]| frame(0x10, &cat(&[&field(b"MQTT"), &[level, 2, 0, 60], rest]));
    assert_eq!(connect_ok(&body(5, b"\x00\x00\x00")).protocol, Protocol::V5);
    assert_malformed(&server_err(&body(4, b"\x00\x00\x00")), "(2.1.4)");
    // A valid 3.1.1 CONNECT with client id "ab" relabelled as level 5: the first length byte
    // becomes the property length and the client id length runs past the packet.
    let c = connect_ok(&body(4, b"\x00\x02ab"));
    assert_eq!((c.protocol, c.client_id.as_str()), (Protocol::V311, "ab"));
    assert_malformed(&server_err(&body(5, b"\x00\x02ab")), "(2.1.4)");
    // 5.0 properties are read only at level 5.
    let c = connect_ok(&body(5, b"\x03\x21\x00\x0a\x00\x00"));
    assert_eq!(c.properties.receive_maximum, Some(10));
    assert_malformed(&server_err(&body(4, b"\x03\x21\x00\x0a\x00\x00")), "");
}

/// Row: trailing bytes after the CONNECT payload -> malformed (2.2.3 remaining length).
#[test]
fn trailing_bytes_after_connect_are_malformed() {
    for p in ALL {
        assert_malformed(
            &server_err(&connect(p, 0x02, b"", b"\x00\x01c\x00")),
            "(2.1.4)",
        );
        let payload = cat(&[&field(b"c"), &field(b"u"), &field(b"pw"), b"junk"]);
        assert_malformed(&server_err(&connect(p, 0xc2, b"", &payload)), "(2.1.4)");
    }
}

/// Will flag 0 with will QoS or will retain set -> malformed ([MQTT-3.1.2-11], [MQTT-3.1.2-13]
/// in 5.0; -13 / -15 in 3.1.1); will QoS 3 -> malformed; empty will topic -> malformed.
#[test]
fn will_flags_are_consistent() {
    for p in ALL {
        assert_malformed(
            &server_err(&connect(p, 0x0a, b"", &field(b"c"))),
            "[MQTT-3.1.2-11]",
        );
        assert_malformed(
            &server_err(&connect(p, 0x12, b"", &field(b"c"))),
            "[MQTT-3.1.2-11]",
        );
        assert_malformed(
            &server_err(&connect(p, 0x22, b"", &field(b"c"))),
            "[MQTT-3.1.2-13]",
        );
        let will = cat(&[&field(b"c"), &props(p, b""), &field(b"w"), &field(b"x")]);
        assert_malformed(
            &server_err(&connect(p, 0x1e, b"", &will)),
            "[MQTT-3.1.2-12]",
        );
        let c = connect_ok(&connect(p, 0x36, b"", &will));
        let w = c.will.expect("will");
        assert_eq!(
            (w.qos, w.retain, w.topic.as_str(), &w.payload[..]),
            (QoS::ExactlyOnce, true, "w", &b"x"[..])
        );
        let empty = cat(&[&field(b"c"), &props(p, b""), &field(b""), &field(b"x")]);
        assert_malformed(
            &server_err(&connect(p, 0x06, b"", &empty)),
            "[MQTT-4.7.3-1]",
        );
    }
}

/// A second CONNECT is decoded normally (the protocol layer refuses it); the level stays the
/// first one's.
#[test]
fn second_connect_is_decoded() {
    let mut d = Decoder::new(usize::MAX);
    let mut buf = bytes::BytesMut::from(&connect(Protocol::V311, 0x02, b"", &field(b"c"))[..]);
    buf.extend_from_slice(&connect(Protocol::V5, 0x02, b"", &field(b"c")));
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    let Ok(Some(Packet::Connect(c))) = d.decode(&mut buf) else {
        panic!()
    };
    assert_eq!(
        (c.protocol, d.protocol()),
        (Protocol::V5, Some(Protocol::V311))
    );
}

/// 5.0 CONNECT and will properties: values, not-allowed properties, duplicates.
#[test]
fn connect_properties_v5() {
    let v5 = Protocol::V5;
    let with = |block: &[u8]| connect(v5, 0x02, block, &field(b"c"));
    // Receive Maximum 0 and Maximum Packet Size 0 are protocol errors (3.1.2.11.3, 3.1.2.11.4).
    assert_protocol(&server_err(&with(b"\x21\x00\x00")), "3.1.2.11");
    assert_protocol(&server_err(&with(b"\x27\x00\x00\x00\x00")), "3.1.2.11.4");
    // Request Problem / Response Information other than 0 or 1.
    assert_protocol(&server_err(&with(b"\x17\x02")), "3.1.2.11");
    assert_protocol(&server_err(&with(b"\x19\x02")), "3.1.2.11");
    // Session Expiry twice.
    assert_protocol(
        &server_err(&with(b"\x11\x00\x00\x00\x01\x11\x00\x00\x00\x01")),
        "2.2.2.2",
    );
    // Not allowed in CONNECT: Topic Alias, Will Delay (a will property), Reason String.
    for block in [
        &b"\x23\x00\x01"[..],
        b"\x18\x00\x00\x00\x01",
        b"\x1f\x00\x00",
    ] {
        assert_malformed(&server_err(&with(block)), "2.2.2.2");
    }
    // Authentication Data without a method is a protocol error (3.1.2.11.10).
    assert_protocol(&server_err(&with(b"\x16\x00\x01x")), "3.1.2.11.10");
    let c = connect_ok(&with(
        b"\x15\x00\x01m\x16\x00\x01x\x17\x00\x19\x01\x22\x00\x05",
    ));
    assert_eq!(c.properties.authentication_method.as_deref(), Some("m"));
    assert_eq!(
        c.properties.authentication_data,
        Some(Bytes::from_static(b"x"))
    );
    assert_eq!(c.properties.request_problem_information, Some(false));
    assert_eq!(c.properties.request_response_information, Some(true));
    assert_eq!(c.properties.topic_alias_maximum, Some(5));

    // Will properties: Will Delay allowed; Topic Alias, Session Expiry not.
    let will = |block: &[u8]| {
        connect(
            v5,
            0x06,
            b"",
            &cat(&[&field(b"c"), &props(v5, block), &field(b"w"), &field(b"x")]),
        )
    };
    let c = connect_ok(&will(
        b"\x18\x00\x00\x00\x07\x02\x00\x00\x00\x09\x03\x00\x01t",
    ));
    let w = c.will.expect("will");
    assert_eq!(
        (w.delay_interval, w.properties.message_expiry_interval),
        (7, Some(9))
    );
    assert_eq!(w.properties.content_type.as_deref(), Some("t"));
    assert_malformed(&server_err(&will(b"\x23\x00\x01")), "2.2.2.2");
    assert_malformed(&server_err(&will(b"\x11\x00\x00\x00\x01")), "2.2.2.2");
    assert_protocol(
        &server_err(&will(b"\x18\x00\x00\x00\x01\x18\x00\x00\x00\x01")),
        "2.2.2.2",
    );
    assert_protocol(&server_err(&will(b"\x01\x05")), "3.3.2.3.2");
    // A will property length that runs into the will topic is refused, never read past.
    assert_malformed(&server_err(&will(b"\x02\x00\x00\x00")), "(2.1.4)");
}
