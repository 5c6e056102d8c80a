//! CODEC-CASES.md rows about 5.0 properties (2.2.2), decoded at level 5.

mod common;

use common::*;
use sluice_codec::fixtures::s;
use sluice_codec::*;

const V5: Protocol = Protocol::V5;

fn publish_with(block: &[u8]) -> Vec<u8> {
    publish(V5, 0x02, b"a/b", Some(1), block, b"payload")
}

fn subscribe_with(block: &[u8]) -> Vec<u8> {
    frame(
        0x82,
        &cat(&[b"\x00\x01", &props(V5, block), &field(b"a"), b"\x01"]),
    )
}

fn connack_with(block: &[u8]) -> Vec<u8> {
    frame(0x20, &cat(&[b"\x00\x00", &props(V5, block)]))
}

/// Row: a property given twice where the standard allows one -> protocol error (2.2.2.2).
#[test]
fn duplicate_single_property_is_a_protocol_error() {
    protocol_at(V5, &publish_with(b"\x01\x01\x01\x00"), "2.2.2.2");
    protocol_at(V5, &publish_with(b"\x23\x00\x01\x23\x00\x02"), "2.2.2.2");
    protocol_at(V5, &publish_with(b"\x09\x00\x00\x09\x00\x00"), "2.2.2.2");
    protocol_at(V5, &subscribe_with(b"\x0b\x01\x0b\x02"), "2.2.2.2");
    protocol_at(V5, &connack_with(b"\x13\x00\x01\x13\x00\x01"), "2.2.2.2");
    protocol_at(
        V5,
        b"\x40\x0b\x00\x01\x80\x07\x1f\x00\x00\x1f\x00\x01x",
        "2.2.2.2",
    );
    protocol_at(V5, b"\xe0\x08\x00\x06\x1c\x00\x00\x1c\x00\x00", "2.2.2.2");
    protocol_at(V5, b"\xf0\x08\x18\x06\x15\x00\x00\x15\x00\x00", "2.2.2.2");
}

/// User Properties may repeat (even with the same name) and keep their order (3.3.2.3.7);
/// a PUBLISH may carry several Subscription Identifiers (3.3.4).
#[test]
fn repeatable_properties_keep_their_order() {
    let block =
        b"\x26\x00\x01b\x00\x012\x26\x00\x01a\x00\x011\x26\x00\x01b\x00\x013\x0b\x02\x0b\x01";
    let Packet::Publish(p) = ok_at(V5, &publish_with(block)) else {
        panic!()
    };
    assert_eq!(
        p.properties.user_properties,
        vec![(s("b"), s("2")), (s("a"), s("1")), (s("b"), s("3"))]
    );
    assert_eq!(p.properties.subscription_identifiers, vec![2, 1]);
    assert_eq!(&p.payload[..], b"payload");
}

/// Row: Subscription Identifier 0 and Topic Alias 0 -> protocol error (3.8.2.1.2, 3.3.2.3.4).
/// Subscription Identifiers go up to 268,435,455 (a four-byte Variable Byte Integer).
#[test]
fn subscription_identifier_and_topic_alias_zero_are_protocol_errors() {
    protocol_at(V5, &publish_with(b"\x0b\x00"), "3.8.2.1.2");
    protocol_at(V5, &subscribe_with(b"\x0b\x00"), "3.8.2.1.2");
    // Topic Alias 0 is its own error, reported with 0x94 Topic Alias Invalid [MQTT-3.3.2-8].
    let (r, _) = decode_at(V5, &publish_with(b"\x23\x00\x00"));
    assert_eq!(r, Err(DecodeError::TopicAliasZero));
    assert_eq!(
        DecodeError::TopicAliasZero.reason_code(),
        ReasonCode::TOPIC_ALIAS_INVALID
    );
    let Packet::Subscribe(sub) = ok_at(V5, &subscribe_with(b"\x0b\xff\xff\xff\x7f")) else {
        panic!()
    };
    assert_eq!(sub.properties.subscription_identifier, Some(268_435_455));
    // A five-byte Variable Byte Integer is malformed (1.5.5).
    malformed_at(V5, &subscribe_with(b"\x0b\xff\xff\xff\xff\x01"), "(1.5.5)");
}

/// Row: property length longer or shorter than the properties present -> malformed; the
/// payload is never read as properties.
#[test]
fn property_length_mismatch_is_malformed_and_never_reads_the_payload() {
    // Longer than the rest of the packet.
    let bytes = frame(0x32, &cat(&[&field(b"a"), b"\x00\x01", b"\x7f\x01\x01"]));
    malformed_at(V5, &bytes, "(2.2.2.1)");
    // Shorter: it ends inside the Message Expiry Interval, whose remaining bytes sit in the
    // payload ("\x00\x05payload") and must not be read.
    let bytes = frame(
        0x32,
        &cat(&[
            &field(b"a"),
            b"\x00\x01",
            b"\x03\x02\x00\x00",
            b"\x00\x05payload",
        ]),
    );
    malformed_at(V5, &bytes, "(2.1.4)");
    // Shorter: it ends between a property identifier and its value.
    let bytes = frame(0x30, &cat(&[&field(b"a"), b"\x01\x01", b"\x01rest"]));
    malformed_at(V5, &bytes, "(2.1.4)");
    // A user property whose value runs past the block.
    malformed_at(V5, &publish_with(b"\x26\x00\x01k\x00\x09v"), "(2.1.4)");
    // In acks, SUBACK, DISCONNECT and AUTH the same holds.
    malformed_at(V5, b"\x40\x05\x00\x01\x80\x05\x1f", "(2.2.2.1)");
    malformed_at(V5, b"\x90\x05\x00\x01\x02\x1f\x00", "(2.1.4)");
    malformed_at(V5, b"\xe0\x03\x80\x02\x11", "(2.2.2.1)");
    malformed_at(V5, b"\xf0\x04\x18\x02\x15\x00", "(2.1.4)");
}

/// Row: a property not allowed in the packet -> malformed (2.2.2.2), e.g. 0x11 in PUBLISH.
#[test]
fn property_not_allowed_in_the_packet_is_malformed() {
    malformed_at(V5, &publish_with(b"\x11\x00\x00\x00\x01"), "2.2.2.2");
    malformed_at(V5, &publish_with(b"\x18\x00\x00\x00\x01"), "2.2.2.2");
    malformed_at(V5, &publish_with(b"\x24\x01"), "2.2.2.2");
    malformed_at(V5, &publish_with(b"\x7f\x00"), "2.2.2.2");
    malformed_at(V5, &subscribe_with(b"\x1f\x00\x00"), "2.2.2.2");
    let unsub = |block: &[u8]| frame(0xa2, &cat(&[b"\x00\x01", &props(V5, block), &field(b"a")]));
    malformed_at(V5, &unsub(b"\x0b\x01"), "2.2.2.2");
    assert!(
        matches!(ok_at(V5, &unsub(b"\x26\x00\x01k\x00\x01v")), Packet::Unsubscribe(u) if u.user_properties.len() == 1)
    );
    malformed_at(
        V5,
        b"\x40\x09\x00\x01\x80\x05\x11\x00\x00\x00\x01",
        "2.2.2.2",
    );
    malformed_at(V5, &connack_with(b"\x0b\x01"), "2.2.2.2");
    malformed_at(V5, b"\xe0\x04\x00\x02\x21\x00", "2.2.2.2");
    malformed_at(V5, b"\xf0\x04\x18\x02\x17\x01", "2.2.2.2");
}

/// Out-of-range property values are protocol errors: Payload Format Indicator, Maximum QoS,
/// the CONNACK booleans, Receive Maximum 0, Maximum Packet Size 0; a Response Topic with a
/// wildcard [MQTT-3.3.2-14].
#[test]
fn property_values_out_of_range_are_protocol_errors() {
    protocol_at(V5, &publish_with(b"\x01\x02"), "3.3.2.3.2");
    protocol_at(V5, &publish_with(b"\x08\x00\x03a/#"), "[MQTT-3.3.2-14]");
    protocol_at(V5, &connack_with(b"\x24\x02"), "3.2.2.3.4");
    for id in [0x25u8, 0x28, 0x29, 0x2a] {
        protocol_at(V5, &connack_with(&[id, 2]), "3.2.2.3");
    }
    protocol_at(V5, &connack_with(b"\x21\x00\x00"), "3.1.2.11");
    protocol_at(V5, &connack_with(b"\x27\x00\x00\x00\x00"), "3.1.2.11.4");
    let Packet::ConnAck(c) = ok_at(
        V5,
        &connack_with(b"\x24\x00\x25\x01\x28\x00\x29\x01\x2a\x00\x27\x00\x00\x01\x00"),
    ) else {
        panic!()
    };
    let p = c.properties;
    assert_eq!(p.maximum_qos, Some(QoS::AtMostOnce));
    assert_eq!(
        (
            p.retain_available,
            p.wildcard_subscription_available,
            p.subscription_identifiers_available
        ),
        (Some(true), Some(false), Some(true))
    );
    assert_eq!(
        (p.shared_subscription_available, p.maximum_packet_size),
        (Some(false), Some(256))
    );
}

/// Every property of PUBLISH decodes into its field.
#[test]
fn publish_properties_decode() {
    let block = b"\x01\x01\x02\x00\x00\x00\x3c\x23\x00\x02\x08\x00\x03r/t\x09\x00\x02\x01\x02\x03\x00\x04text";
    let Packet::Publish(p) = ok_at(V5, &publish_with(block)) else {
        panic!()
    };
    let q = p.properties;
    assert_eq!(
        (
            q.payload_format_indicator,
            q.message_expiry_interval,
            q.topic_alias
        ),
        (Some(1), Some(60), Some(2))
    );
    assert_eq!(q.response_topic.as_deref(), Some("r/t"));
    assert_eq!(q.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(q.content_type.as_deref(), Some("text"));
}
