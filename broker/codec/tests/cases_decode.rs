//! One byte-level test per row of CODEC-CASES.md (decode side), at every level it applies to.
//! Each test names the clause of the standard it checks.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use sluice_codec::fixtures::{filter, s, topic, FIXTURES};
use sluice_codec::*;

const V5: Protocol = Protocol::V5;

// ---- fixed header ---------------------------------------------------------------------------

/// A Variable Byte Integer in more bytes than needed (`80 00` for 0) is malformed
/// [MQTT-1.5.5-1], in the fixed header and in property lengths alike.
#[test]
fn non_minimal_variable_byte_integer_is_malformed_mqtt_1_5_5_1() {
    for p in LEVELS {
        let (r, _) = decode_at(p, b"\xc0\x80\x00");
        assert_malformed(&r, "[MQTT-1.5.5-1]");
    }
    // The property length of a v5 DISCONNECT: reason 0x00, property length `80 00`.
    let (r, _) = decode_at(V5, b"\xe0\x03\x00\x80\x00");
    assert_malformed(&r, "[MQTT-1.5.5-1]");
}

/// Row: remaining length encoded in 5 bytes -> malformed (1.5.5, 2.1.4).
#[test]
fn remaining_length_of_five_bytes_is_malformed_mqtt_1_5_5() {
    for p in LEVELS {
        let (r, _) = decode_at(p, b"\x30\xff\xff\xff\xff\x01");
        assert_malformed(&r, "(1.5.5)");
    }
    // Server side, before CONNECT, too.
    let (r, _) = decode_server(b"\x10\x80\x80\x80\x80\x00");
    assert_malformed(&r, "(1.5.5)");
    // Four bytes is the maximum and is fine: the frame is merely incomplete.
    let (r, left) = decode_at(V5, b"\x30\xff\xff\xff\x7f");
    assert_eq!((r, left), (Ok(None), 5));
}

/// Row: declared remaining length above the maximum packet size -> refused from the fixed header
/// alone, before the body is buffered [MQTT-3.2.2-15] / [MQTT-3.1.2-24].
#[test]
fn packet_too_large_is_refused_from_the_fixed_header() {
    for p in LEVELS {
        let mut d = Decoder::with_protocol(p, 100);
        // PUBLISH declaring 1000 bytes, only the header present.
        let mut buf = BytesMut::from(&b"\x30\xe8\x07"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(DecodeError::PacketTooLarge {
                size: 1003,
                max: 100
            })
        );
        assert_eq!(buf.len(), 3, "nothing consumed");
        // Exactly the maximum (whole packet incl. fixed header) is accepted.
        let body = [&b"\x00\x01a"[..], &props(p, b""), &[0u8; 100][..]].concat();
        let mut frame_bytes = frame(0x30, &body[..body.len() - (body.len() + 2 - 100)]);
        assert_eq!(frame_bytes.len(), 100);
        let mut buf = BytesMut::from(&frame_bytes[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Publish(_)))));
        frame_bytes.push(0);
        frame_bytes[1] += 1;
        let mut buf = BytesMut::from(&frame_bytes[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(DecodeError::PacketTooLarge {
                size: 101,
                max: 100
            })
        );
    }
    // Before CONNECT, and after lowering the limit.
    let mut d = Decoder::new(1 << 20);
    d.set_max_packet_size(10);
    let mut buf = BytesMut::from(&b"\x10\x7f"[..]);
    assert_eq!(
        d.decode(&mut buf),
        Err(DecodeError::PacketTooLarge { size: 129, max: 10 })
    );
}

/// Row: frame cut short -> "need more bytes", nothing consumed; every proper prefix of every
/// fixture, at its level.
#[test]
fn frame_cut_short_needs_more_bytes_and_consumes_nothing() {
    for f in FIXTURES {
        for cut in 0..f.bytes.len() {
            let mut d = f.decoder();
            let mut buf = BytesMut::from(&f.bytes[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None), "{} cut at {cut}", f.name);
            assert_eq!(buf.len(), cut, "{} cut at {cut}: consumed", f.name);
        }
    }
}

/// Two frames in one buffer (and a partial third) decode one at a time.
#[test]
fn frames_decode_one_at_a_time_from_one_buffer() {
    for p in LEVELS {
        let mut bytes = publish(p, 0, b"a/b", None, b"", b"1");
        bytes.extend(publish(p, 2, b"c", Some(7), b"", b"22"));
        bytes.extend_from_slice(b"\xc0");
        let mut d = Decoder::with_protocol(p, usize::MAX);
        let mut buf = BytesMut::from(&bytes[..]);
        let Ok(Some(Packet::Publish(a))) = d.decode(&mut buf) else {
            panic!("first")
        };
        let Ok(Some(Packet::Publish(b))) = d.decode(&mut buf) else {
            panic!("second")
        };
        assert_eq!(
            (&a.payload[..], &b.payload[..], b.pkid),
            (&b"1"[..], &b"22"[..], 7)
        );
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"\xc0");
    }
}

/// A body error consumes exactly its frame: the next frame is still there.
#[test]
fn rejected_frame_is_consumed_entirely_and_only_it() {
    for p in LEVELS {
        let mut d = Decoder::with_protocol(p, usize::MAX);
        let mut buf = BytesMut::from(&b"\x40\x03\x00\x00\x00\xc0\x00"[..]);
        assert!(d.decode(&mut buf).is_err());
        assert_eq!(&buf[..], b"\xc0\x00");
    }
}

// ---- short forms ----------------------------------------------------------------------------

/// Row: a complete frame whose contents are short: valid where the spec allows the short form
/// (3.4.2.1, 3.14.2.1, 3.15.2.1), otherwise malformed and consumed, never "need more bytes".
#[test]
fn short_contents_are_a_short_form_or_malformed_never_incomplete() {
    // v5 DISCONNECT with a reason and no property length.
    assert_eq!(
        ok_at(V5, b"\xe0\x01\x8e"),
        Packet::Disconnect(Disconnect::new(ReasonCode::SESSION_TAKEN_OVER))
    );
    // v5 acks: remaining length 2 = Success, 3 = reason without properties.
    for first in [0x40, 0x50, 0x62, 0x70] {
        let (Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)) =
            ok_at(V5, &[first, 3, 0, 9, 0x92])
        else {
            panic!("ack")
        };
        assert_eq!(
            (a.pkid, a.reason),
            (9, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
        );
        let (Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)) =
            ok_at(V5, &[first, 2, 0, 9])
        else {
            panic!("ack")
        };
        assert_eq!(a, PubAck::new(9));
    }
    // v5 AUTH: remaining length 0 = Success; 1 (a reason without property length) is not a
    // short form the standard allows.
    assert!(matches!(ok_at(V5, b"\xf0\x00"), Packet::Auth(a) if a.reason == ReasonCode::SUCCESS));
    malformed_at(V5, b"\xf0\x01\x18", "(2.1.4)");
    // v5 CONNACK has no short form: the property length is required.
    malformed_at(V5, b"\x20\x02\x00\x00", "(2.1.4)");
    // Acks cut inside the packet identifier, at every level.
    for p in LEVELS {
        malformed_at(p, b"\x40\x01\x00", "(2.1.4)");
        malformed_at(p, b"\x62\x00", "(2.1.4)");
        malformed_at(p, b"\x20\x01\x00", "(2.1.4)");
    }
    // v5 PUBLISH and SUBSCRIBE without their property length.
    malformed_at(V5, b"\x30\x05\x00\x03a/b", "(2.1.4)");
    malformed_at(V5, b"\x82\x02\x00\x01", "(2.1.4)");
}

/// Row: v5 DISCONNECT `e0 00` is a normal disconnection; before 5.0 DISCONNECT has remaining
/// length 0 (3.14.1).
#[test]
fn disconnect_e0_00_is_normal_and_v311_disconnect_has_no_body() {
    for p in LEVELS {
        assert_eq!(
            ok_at(p, b"\xe0\x00"),
            Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
        );
    }
    malformed_at(Protocol::V311, b"\xe0\x01\x00", "(2.1.4)");
    malformed_at(Protocol::V31, b"\xe0\x01\x8e", "(2.1.4)");
    // v5 reason + empty property block, and reason + properties.
    assert_eq!(
        ok_at(V5, b"\xe0\x02\x8e\x00"),
        Packet::Disconnect(Disconnect::new(ReasonCode(0x8e)))
    );
}

// ---- strings and topics ---------------------------------------------------------------------

/// Row: string length running past the remaining length -> malformed.
#[test]
fn string_running_past_the_packet_is_malformed() {
    for p in LEVELS {
        malformed_at(p, &frame(0x30, b"\x00\x09a/b"), "(2.1.4)");
        malformed_at(
            p,
            &frame(0x82, &cat(&[b"\x00\x01", &props(p, b""), b"\x00\x05a\x01"])),
            "",
        );
        malformed_at(
            p,
            &frame(0xa2, &cat(&[b"\x00\x01", &props(p, b""), b"\x00\x05a"])),
            "",
        );
    }
    for p in LEVELS {
        let (r, left) = decode_server(&connect(p, 0x02, b"", b"\x00\x10abc"));
        assert_malformed(&r, "(2.1.4)");
        assert_eq!(left, 0);
    }
}

/// Row: topic not valid UTF-8, or containing U+0000 -> malformed [MQTT-1.5.4-1], [MQTT-1.5.4-2].
#[test]
fn topic_not_utf8_or_with_nul_is_malformed_mqtt_1_5_4_1_and_2() {
    for p in LEVELS {
        malformed_at(
            p,
            &publish(p, 0, b"a\xffb", None, b"", b""),
            "[MQTT-1.5.4-1]",
        );
        // UTF-16 surrogate encoded in UTF-8 (U+D800) is not valid UTF-8.
        malformed_at(
            p,
            &publish(p, 0, b"\xed\xa0\x80", None, b"", b""),
            "[MQTT-1.5.4-1]",
        );
        // Overlong encoding of '/'.
        malformed_at(
            p,
            &publish(p, 0, b"a\xc0\xafb", None, b"", b""),
            "[MQTT-1.5.4-1]",
        );
        malformed_at(
            p,
            &publish(p, 0, b"a\x00b", None, b"", b""),
            "[MQTT-1.5.4-2]",
        );
        // The same in a SUBSCRIBE filter is malformed too (not a rejected filter).
        let sub = frame(
            0x82,
            &cat(&[b"\x00\x01", &props(p, b""), &field(b"a\xff"), b"\x00"]),
        );
        malformed_at(p, &sub, "[MQTT-1.5.4-1]");
        let sub = frame(
            0x82,
            &cat(&[b"\x00\x01", &props(p, b""), &field(b"a\x00"), b"\x00"]),
        );
        malformed_at(p, &sub, "[MQTT-1.5.4-2]");
    }
    // And in CONNECT strings (client identifier, user name).
    for p in LEVELS {
        let (r, _) = decode_server(&connect(p, 0x02, b"", &field(b"\xff")));
        assert_malformed(&r, "[MQTT-1.5.4-1]");
        let (r, _) = decode_server(&connect(
            p,
            0x82,
            b"",
            &cat(&[&field(b"c"), &field(b"u\x00")]),
        ));
        assert_malformed(&r, "[MQTT-1.5.4-2]");
    }
}

/// Multibyte UTF-8 topics decode and keep their bytes.
#[test]
fn multibyte_topic_decodes() {
    for p in LEVELS {
        let Packet::Publish(publ) = ok_at(p, &publish(p, 0, "é/日本".as_bytes(), None, b"", b"x"))
        else {
            panic!("publish")
        };
        assert_eq!(publ.topic.as_str(), "é/日本");
    }
}

/// Row: `+` or `#` in a PUBLISH topic -> Topic Name invalid [MQTT-3.3.2-2]: the string is well
/// formed, the name is not (5.0 DISCONNECT 0x90; 3.1.1 closes).
#[test]
fn wildcard_in_publish_topic_is_topic_name_invalid_mqtt_3_3_2_2() {
    let invalid = |r: &Result<Option<Packet>, DecodeError>| match r {
        Err(e @ DecodeError::TopicNameInvalid { clause, .. }) => {
            assert_eq!(*clause, "[MQTT-3.3.2-2]");
            assert_eq!(e.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
        }
        other => panic!("expected TopicNameInvalid [MQTT-3.3.2-2], got {other:?}"),
    };
    for p in LEVELS {
        for t in [&b"a/+"[..], b"#", b"a/b#", b"+"] {
            let (r, left) = decode_at(p, &publish(p, 0, t, None, b"", b""));
            invalid(&r);
            assert_eq!(left, 0, "{p:?}: a rejected complete frame is consumed");
        }
        // Will topic too (CONNACK 0x90 in 5.0).
        let payload = cat(&[&field(b"c"), &props(p, b""), &field(b"w/#"), &field(b"x")]);
        let (r, _) = decode_server(&connect(p, 0x06, b"", &payload));
        invalid(&r);
    }
}

/// Row: empty PUBLISH topic -> malformed in 3.1.1 [MQTT-4.7.3-1]; protocol error in 5.0 without
/// a Topic Alias (3.3.2.1); valid in 5.0 with one.
#[test]
fn empty_publish_topic() {
    malformed_at(Protocol::V311, b"\x30\x02\x00\x00", "[MQTT-4.7.3-1]");
    malformed_at(Protocol::V31, b"\x30\x03\x00\x00x", "[MQTT-4.7.3-1]");
    protocol_at(V5, b"\x30\x03\x00\x00\x00", "3.3.2.1");
    let Packet::Publish(publ) = ok_at(V5, b"\x30\x06\x00\x00\x03\x23\x00\x01") else {
        panic!()
    };
    assert_eq!(
        (publ.topic.as_str(), publ.properties.topic_alias),
        ("", Some(1))
    );
}

// ---- PUBLISH flags and packet identifiers ---------------------------------------------------

/// Row: QoS 3 -> malformed [MQTT-3.3.1-4].
#[test]
fn publish_qos_3_is_malformed_mqtt_3_3_1_4() {
    for p in LEVELS {
        malformed_at(
            p,
            &publish(p, 0x06, b"a", Some(1), b"", b""),
            "[MQTT-3.3.1-4]",
        );
        malformed_at(
            p,
            &publish(p, 0x0f, b"a", Some(1), b"", b""),
            "[MQTT-3.3.1-4]",
        );
    }
}

/// Row: QoS 0 with DUP -> protocol error [MQTT-3.3.1-2]: the flags parse, the combination is
/// forbidden (5.0 DISCONNECT 0x82, as Mosquitto and EMQX send).
#[test]
fn publish_qos0_with_dup_is_a_protocol_error_mqtt_3_3_1_2() {
    for p in LEVELS {
        protocol_at(
            p,
            &publish(p, 0x08, b"a", None, b"", b"x"),
            "[MQTT-3.3.1-2]",
        );
        protocol_at(
            p,
            &publish(p, 0x09, b"a", None, b"", b"x"),
            "[MQTT-3.3.1-2]",
        );
    }
}

/// Row: packet identifier 0 where one is required -> malformed [MQTT-2.2.1-3].
#[test]
fn packet_id_zero_is_malformed_mqtt_2_2_1_3() {
    for p in LEVELS {
        malformed_at(
            p,
            &publish(p, 0x02, b"a", Some(0), b"", b"x"),
            "[MQTT-2.2.1-3]",
        );
        malformed_at(
            p,
            &publish(p, 0x04, b"a", Some(0), b"", b"x"),
            "[MQTT-2.2.1-3]",
        );
        for first in [0x40, 0x50, 0x62, 0x70, 0xb0] {
            malformed_at(p, &[first, 2, 0, 0], "[MQTT-2.2.1-3]");
        }
        let sub = frame(
            0x82,
            &cat(&[b"\x00\x00", &props(p, b""), &field(b"a"), b"\x00"]),
        );
        malformed_at(p, &sub, "[MQTT-2.2.1-3]");
        let unsub = frame(0xa2, &cat(&[b"\x00\x00", &props(p, b""), &field(b"a")]));
        malformed_at(p, &unsub, "[MQTT-2.2.1-3]");
        let suback = frame(0x90, &cat(&[b"\x00\x00", &props(p, b""), b"\x00"]));
        malformed_at(p, &suback, "[MQTT-2.2.1-3]");
    }
}

/// Row: SUBSCRIBE, UNSUBSCRIBE or PUBREL fixed-header flags other than 0010 -> malformed
/// [MQTT-3.8.1-1], [MQTT-3.10.1-1], [MQTT-3.6.1-1]; all other packets 0000 [MQTT-2.1.3-1].
/// Refused from the first byte, before the body arrives.
#[test]
fn fixed_header_flags_are_checked_mqtt_2_1_3_1() {
    for p in LEVELS {
        for (packet_type, clause) in [
            (8u8, "[MQTT-3.8.1-1]"),
            (10, "[MQTT-3.10.1-1]"),
            (6, "[MQTT-3.6.1-1]"),
        ] {
            for flags in [0b0000, 0b0011, 0b1010, 0b0110, 0b1111] {
                let (r, left) = decode_at(p, &[packet_type << 4 | flags, 0x7f]);
                assert_malformed(&r, clause);
                assert_eq!(left, 2, "refused before the body");
            }
        }
        for packet_type in [2u8, 4, 5, 7, 9, 11, 12, 13, 14] {
            let (r, _) = decode_at(p, &[packet_type << 4 | 0b0010, 0]);
            assert_malformed(&r, "[MQTT-2.1.3-1]");
        }
    }
    let (r, _) = decode_at(V5, b"\xf1\x00");
    assert_malformed(&r, "[MQTT-2.1.3-1]");
    let (r, _) = decode_server(b"\x12\x00");
    assert_malformed(&r, "[MQTT-2.1.3-1]");
}

/// Row: PINGREQ with flags set or a non-zero remaining length -> malformed (3.12.1); PINGRESP too.
#[test]
fn pingreq_and_pingresp_must_be_two_bytes() {
    for p in LEVELS {
        assert_eq!(ok_at(p, b"\xc0\x00"), Packet::PingReq);
        assert_eq!(ok_at(p, b"\xd0\x00"), Packet::PingResp);
        for bad in [&b"\xc1\x00"[..], b"\xc8\x00", b"\xd2\x00"] {
            let (r, _) = decode_at(p, bad);
            assert_malformed(&r, "[MQTT-2.1.3-1]");
        }
        malformed_at(p, b"\xc0\x01\x00", "(2.1.4)");
        malformed_at(p, b"\xd0\x02\x00\x00", "(2.1.4)");
    }
}

// ---- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------------

/// Row: SUBSCRIBE with no filters -> protocol error [MQTT-3.8.3-3]; UNSUBSCRIBE [MQTT-3.10.3-2].
#[test]
fn subscribe_or_unsubscribe_without_filters_is_a_protocol_error() {
    for p in LEVELS {
        protocol_at(
            p,
            &frame(0x82, &cat(&[b"\x00\x01", &props(p, b"")])),
            "[MQTT-3.8.3-3]",
        );
        protocol_at(
            p,
            &frame(0xa2, &cat(&[b"\x00\x01", &props(p, b"")])),
            "[MQTT-3.10.3-2]",
        );
    }
}

fn subscribe_with_options(p: Protocol, options: u8) -> Vec<u8> {
    frame(
        0x82,
        &cat(&[b"\x00\x01", &props(p, b""), &field(b"a/b"), &[options]]),
    )
}

/// Row: reserved bits in subscription options -> malformed ([MQTT-3.8.3-4] in 3.1.1,
/// [MQTT-3.8.3-5] in 5.0); QoS 3 is malformed in 3.1.1 [MQTT-3.8.3-4] but a Protocol Error in
/// 5.0, and so is Retain Handling 3 (3.8.3.1: "It is a Protocol Error if the Maximum QoS field
/// has the value 3", "It is a Protocol Error to send a Retain Handling value of 3").
#[test]
fn reserved_subscription_option_bits_and_retain_handling_3_are_malformed() {
    for p in LEVELS {
        malformed_at(p, &subscribe_with_options(p, 0x40), "[MQTT-3.8.3");
        malformed_at(p, &subscribe_with_options(p, 0x80), "[MQTT-3.8.3");
    }
    for p in [Protocol::V31, Protocol::V311] {
        malformed_at(p, &subscribe_with_options(p, 0x03), "[MQTT-3.8.3-4]");
    }
    protocol_at(V5, &subscribe_with_options(V5, 0x03), "3.8.3.1");
    // Before 5.0 every bit above the QoS is reserved.
    for p in [Protocol::V31, Protocol::V311] {
        for bit in [0x04, 0x08, 0x10, 0x20] {
            malformed_at(p, &subscribe_with_options(p, bit), "[MQTT-3.8.3-4]");
        }
    }
    protocol_at(V5, &subscribe_with_options(V5, 0x30), "3.8.3.1");
    let Packet::Subscribe(sub) = ok_at(V5, &subscribe_with_options(V5, 0x1d)) else {
        panic!()
    };
    assert_eq!(
        sub.filters[0].options,
        SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::OnNewSubscription,
        }
    );
}

/// Row: filters `a/#/b`, `a+/b`, `a/b#` are invalid filters, not decode errors: they are carried
/// in `rejected` at their position so the broker answers 0x8F (5.0) / 0x80 (3.1.1) there
/// [MQTT-4.7.1-1], [MQTT-4.7.1-2].
#[test]
fn invalid_filters_are_rejected_per_filter_not_decode_errors() {
    for p in LEVELS {
        let payload = cat(&[
            &field(b"a/#/b"),
            b"\x01",
            &field(b"ok/+"),
            b"\x01",
            &field(b"a+/b"),
            b"\x00",
            &field(b"a/b#"),
            b"\x02",
            &field(b"$share/g/x"),
            b"\x00",
        ]);
        let bytes = frame(0x82, &cat(&[b"\x00\x05", &props(p, b""), &payload]));
        let Packet::Subscribe(sub) = ok_at(p, &bytes) else {
            panic!()
        };
        let filters: Vec<_> = sub.filters.iter().map(|f| f.filter.as_str()).collect();
        assert_eq!(filters, ["ok/+", "$share/g/x"]);
        assert_eq!(
            sub.rejected,
            vec![
                (0, s("a/#/b"), StrError::InvalidMultiLevelWildcard),
                (2, s("a+/b"), StrError::InvalidSingleLevelWildcard),
                (3, s("a/b#"), StrError::InvalidMultiLevelWildcard),
            ]
        );
        // Re-encoding puts them back in place (options of rejected filters are not kept).
        let mut out = BytesMut::new();
        encode(&Packet::Subscribe(sub.clone()), p, &mut out).unwrap();
        assert_eq!(ok_at(p, &out), Packet::Subscribe(sub));

        let payload = cat(&[&field(b"x"), &field(b"a/#/b"), &field(b"")]);
        let bytes = frame(0xa2, &cat(&[b"\x00\x05", &props(p, b""), &payload]));
        let Packet::Unsubscribe(unsub) = ok_at(p, &bytes) else {
            panic!()
        };
        assert_eq!(unsub.filters, vec![filter("x")]);
        assert_eq!(unsub.rejected, vec![(1, s("a/#/b")), (2, s(""))]);
    }
}

/// A subscription with No Local on a shared subscription is a protocol error [MQTT-3.8.3-4] (5.0).
#[test]
fn no_local_on_shared_subscription_is_a_protocol_error() {
    let bytes = frame(
        0x82,
        &cat(&[b"\x00\x01\x00", &field(b"$share/g/a"), b"\x04"]),
    );
    protocol_at(V5, &bytes, "[MQTT-3.8.3-4]");
}

/// SUBACK return codes before 5.0 are 0, 1, 2 or 0x80 [MQTT-3.9.3-2]; at least one (3.9.3).
#[test]
fn suback_return_codes() {
    malformed_at(Protocol::V311, b"\x90\x03\x00\x01\x03", "[MQTT-3.9.3-2]");
    protocol_at(Protocol::V311, b"\x90\x02\x00\x01", "(3.9.3)");
    let Packet::SubAck(a) = ok_at(V5, b"\x90\x05\x00\x01\x00\x8f\x9e") else {
        panic!()
    };
    assert_eq!(
        a.reasons,
        vec![ReasonCode::TOPIC_FILTER_INVALID, ReasonCode(0x9e)]
    );
}

// ---- packet types ---------------------------------------------------------------------------

/// Row: packet type 0 is malformed; 15 is AUTH in 5.0 and malformed before (2.1.2).
#[test]
fn packet_types_0_and_15() {
    for p in LEVELS {
        let (r, _) = decode_at(p, b"\x00\x00");
        assert_malformed(&r, "(2.1.2)");
    }
    let (r, _) = decode_server(b"\x00\x00");
    assert_malformed(&r, "(2.1.2)");
    for p in [Protocol::V31, Protocol::V311] {
        let (r, _) = decode_at(p, b"\xf0\x00");
        assert_malformed(&r, "(2.1.2)");
    }
    assert!(matches!(ok_at(V5, b"\xf0\x00"), Packet::Auth(_)));
    // AUTH reason codes are 0x00, 0x18, 0x19 only [MQTT-3.15.2-1].
    malformed_at(V5, b"\xf0\x02\x01\x00", "[MQTT-3.15.2-1]");
    assert!(
        matches!(ok_at(V5, b"\xf0\x02\x19\x00"), Packet::Auth(a) if a.reason == ReasonCode::RE_AUTHENTICATE)
    );
}

/// Before CONNECT only CONNECT is accepted [MQTT-3.1.0-1], refused from the first byte.
#[test]
fn only_connect_before_connect_mqtt_3_1_0_1() {
    for bytes in [
        &b"\x30\x03\x00\x01a"[..],
        b"\xc0\x00",
        b"\xe0\x00",
        b"\xf0\x00",
        b"\x82",
    ] {
        let (r, left) = decode_server(bytes);
        assert_protocol(&r, "[MQTT-3.1.0-1]");
        assert_eq!(left, bytes.len());
    }
}

/// Decoders made for a known level decode server -> client packets (client side).
#[test]
fn client_side_decodes_server_packets() {
    for f in FIXTURES
        .iter()
        .filter(|f| f.name.starts_with("connack") || f.name.starts_with("suback"))
    {
        assert_eq!(ok_at(f.protocol, f.bytes), (f.packet)(), "{}", f.name);
    }
    // 3.1.1 return codes map to 5.0 reason codes; reserved ones are malformed.
    for (code, reason) in [(1u8, 0x84u8), (2, 0x85), (3, 0x88), (4, 0x86), (5, 0x87)] {
        let Packet::ConnAck(c) = ok_at(Protocol::V311, &[0x20, 2, 0, code]) else {
            panic!()
        };
        assert_eq!(c.reason, ReasonCode(reason));
    }
    malformed_at(Protocol::V311, b"\x20\x02\x00\x06", "3.2.2.3");
    malformed_at(Protocol::V311, b"\x20\x02\x02\x00", "[MQTT-3.2.2-1]");
}

/// Decoded fields are copies: they do not share memory with the read buffer (types.rs).
#[test]
fn decoded_fields_do_not_pin_the_read_buffer() {
    let bytes = publish(V5, 2, b"a/b", Some(1), b"\x09\x00\x02cd", b"payload");
    let mut buf = BytesMut::from(&bytes[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let mut d = Decoder::with_protocol(V5, usize::MAX);
    let Ok(Some(Packet::Publish(p))) = d.decode(&mut buf) else {
        panic!()
    };
    let correlation = p.properties.correlation_data.clone().unwrap_or_default();
    for b in [&p.payload, p.topic.as_mqtt_str().as_bytes(), &correlation] {
        assert!(
            !range.contains(&(b.as_ptr() as usize)),
            "field points into the read buffer"
        );
    }
    assert_eq!(p.payload, Bytes::from_static(b"payload"));
    assert_eq!(correlation, Bytes::from_static(b"cd"));
    assert_eq!(p.topic, topic("a/b"));
}
