//! A shared table of well-known, valid packets as bytes, with the [`Packet`] each decodes to.
//!
//! Compiled for this crate's tests and, with the `fixtures` feature, for other crates' tests (the
//! broker's and the black-box tests), so the codec and the server are checked against the same
//! bytes. Every fixture is canonical: `encode(packet) == bytes` as well as `decode(bytes) == packet`.
//!
//! [`check_decode`] and [`check_round_trip`] are the invariants the fuzz targets and the
//! committed corpus replay (`tests/fuzz_corpus.rs`) both run.

use bytes::{Bytes, BytesMut};

use crate::packet::*;
use crate::types::{ReasonCode, Str, TopicFilter, TopicName};
use crate::{encode, Decoder};

/// One valid packet on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    pub name: &'static str,
    pub protocol: Protocol,
    pub bytes: &'static [u8],
    /// Builds the packet `bytes` decodes to.
    pub packet: fn() -> Packet,
}

impl Fixture {
    /// A decoder in the right state for this fixture: a fresh server-side one for CONNECT, one
    /// that already speaks the fixture's level otherwise.
    pub fn decoder(&self) -> Decoder {
        if self.bytes.first().is_some_and(|b| b >> 4 == 1) {
            Decoder::new(usize::MAX)
        } else {
            Decoder::with_protocol(self.protocol, usize::MAX)
        }
    }
}

/// A string from a literal (test data only).
pub fn s(v: &'static str) -> Str {
    Str::from_static(v)
}

/// A topic name from a literal (test data only).
pub fn topic(v: &'static str) -> TopicName {
    TopicName::new(s(v)).expect("fixture topic name")
}

/// A topic filter from a literal (test data only).
pub fn filter(v: &'static str) -> TopicFilter {
    TopicFilter::new(s(v)).expect("fixture topic filter")
}

fn connect(protocol: Protocol, client_id: &'static str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: s(client_id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn publish(qos: QoS, pkid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic("a/b"),
        pkid,
        payload: Bytes::from_static(b"hi"),
        properties: PublishProperties::default(),
    }
}

fn sub(f: &'static str, qos: QoS) -> Subscription {
    Subscription {
        filter: filter(f),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    }
}

/// Every fixture.
pub const FIXTURES: &[Fixture] = &[
    // ---- 3.1 -----------------------------------------------------------------------------
    Fixture {
        name: "connect_v31",
        protocol: Protocol::V31,
        bytes: b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02c1",
        packet: || Packet::Connect(Box::new(connect(Protocol::V31, "c1"))),
    },
    // ---- 3.1.1 ---------------------------------------------------------------------------
    Fixture {
        name: "connect_v311_minimal",
        protocol: Protocol::V311,
        bytes: b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
        packet: || Packet::Connect(Box::new(connect(Protocol::V311, ""))),
    },
    Fixture {
        name: "connect_v311_will_user_binary_password",
        protocol: Protocol::V311,
        bytes: b"\x10\x23\x00\x04MQTT\x04\xee\x00\x0a\x00\x03abc\x00\x03w/t\x00\x03bye\
                 \x00\x04user\x00\x02\xff\xfe",
        packet: || {
            let mut c = connect(Protocol::V311, "abc");
            c.keep_alive = 10;
            c.will = Some(LastWill {
                topic: topic("w/t"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                delay_interval: 0,
                properties: PublishProperties::default(),
            });
            c.username = Some(s("user"));
            c.password = Some(Bytes::from_static(b"\xff\xfe"));
            Packet::Connect(Box::new(c))
        },
    },
    Fixture {
        name: "connack_v311_session_present",
        protocol: Protocol::V311,
        bytes: b"\x20\x02\x01\x00",
        packet: || {
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason: ReasonCode::SUCCESS,
                properties: ConnAckProperties::default(),
            })
        },
    },
    Fixture {
        name: "connack_v311_not_authorized",
        protocol: Protocol::V311,
        bytes: b"\x20\x02\x00\x05",
        packet: || {
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::NOT_AUTHORIZED,
                properties: ConnAckProperties::default(),
            })
        },
    },
    Fixture {
        name: "publish_v311_qos0",
        protocol: Protocol::V311,
        bytes: b"\x30\x07\x00\x03a/bhi",
        packet: || Packet::Publish(publish(QoS::AtMostOnce, 0)),
    },
    Fixture {
        name: "publish_v311_qos1_retain",
        protocol: Protocol::V311,
        bytes: b"\x33\x09\x00\x03a/b\x00\x0ahi",
        packet: || {
            Packet::Publish(Publish {
                retain: true,
                ..publish(QoS::AtLeastOnce, 10)
            })
        },
    },
    Fixture {
        name: "publish_v311_qos2_dup",
        protocol: Protocol::V311,
        bytes: b"\x3c\x09\x00\x03a/b\x00\x0bhi",
        packet: || {
            Packet::Publish(Publish {
                dup: true,
                ..publish(QoS::ExactlyOnce, 11)
            })
        },
    },
    Fixture {
        name: "puback_v311",
        protocol: Protocol::V311,
        bytes: b"\x40\x02\x00\x0a",
        packet: || Packet::PubAck(PubAck::new(10)),
    },
    Fixture {
        name: "pubrec_v311",
        protocol: Protocol::V311,
        bytes: b"\x50\x02\x00\x0a",
        packet: || Packet::PubRec(PubAck::new(10)),
    },
    Fixture {
        name: "pubrel_v311",
        protocol: Protocol::V311,
        bytes: b"\x62\x02\x00\x0a",
        packet: || Packet::PubRel(PubAck::new(10)),
    },
    Fixture {
        name: "pubcomp_v311",
        protocol: Protocol::V311,
        bytes: b"\x70\x02\x00\x0a",
        packet: || Packet::PubComp(PubAck::new(10)),
    },
    Fixture {
        name: "subscribe_v311_two_filters",
        protocol: Protocol::V311,
        bytes: b"\x82\x0e\x00\x01\x00\x03a/b\x01\x00\x03c/#\x02",
        packet: || {
            Packet::Subscribe(Subscribe {
                pkid: 1,
                filters: vec![sub("a/b", QoS::AtLeastOnce), sub("c/#", QoS::ExactlyOnce)],
                rejected: Vec::new(),
                properties: SubscribeProperties::default(),
            })
        },
    },
    Fixture {
        name: "suback_v311",
        protocol: Protocol::V311,
        bytes: b"\x90\x05\x00\x01\x01\x02\x80",
        packet: || {
            Packet::SubAck(SubAck {
                pkid: 1,
                reasons: vec![ReasonCode(1), ReasonCode(2), ReasonCode(0x80)],
                properties: AckProperties::default(),
            })
        },
    },
    Fixture {
        name: "unsubscribe_v311",
        protocol: Protocol::V311,
        bytes: b"\xa2\x07\x00\x02\x00\x03a/b",
        packet: || {
            Packet::Unsubscribe(Unsubscribe {
                pkid: 2,
                filters: vec![filter("a/b")],
                rejected: Vec::new(),
                user_properties: Vec::new(),
            })
        },
    },
    Fixture {
        name: "unsuback_v311",
        protocol: Protocol::V311,
        bytes: b"\xb0\x02\x00\x02",
        packet: || {
            Packet::UnsubAck(UnsubAck {
                pkid: 2,
                reasons: Vec::new(),
                properties: AckProperties::default(),
            })
        },
    },
    Fixture {
        name: "pingreq_v311",
        protocol: Protocol::V311,
        bytes: b"\xc0\x00",
        packet: || Packet::PingReq,
    },
    Fixture {
        name: "pingresp_v311",
        protocol: Protocol::V311,
        bytes: b"\xd0\x00",
        packet: || Packet::PingResp,
    },
    Fixture {
        name: "disconnect_v311",
        protocol: Protocol::V311,
        bytes: b"\xe0\x00",
        packet: || Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
    },
    // ---- 5.0 -----------------------------------------------------------------------------
    Fixture {
        name: "connect_v5_minimal",
        protocol: Protocol::V5,
        bytes: b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00",
        packet: || Packet::Connect(Box::new(connect(Protocol::V5, ""))),
    },
    Fixture {
        name: "connect_v5_properties_and_will",
        protocol: Protocol::V5,
        bytes: b"\x10\x2b\x00\x04MQTT\x05\x06\x00\x3c\
                 \x0f\x11\x00\x00\x0e\x10\x21\x00\x14\x26\x00\x01k\x00\x01v\
                 \x00\x01c\
                 \x07\x18\x00\x00\x00\x05\x01\x01\x00\x01w\x00\x01x",
        packet: || {
            let mut c = connect(Protocol::V5, "c");
            c.properties.session_expiry_interval = Some(3600);
            c.properties.receive_maximum = Some(20);
            c.properties.user_properties = vec![(s("k"), s("v"))];
            c.will = Some(LastWill {
                topic: topic("w"),
                payload: Bytes::from_static(b"x"),
                qos: QoS::AtMostOnce,
                retain: false,
                delay_interval: 5,
                properties: PublishProperties {
                    payload_format_indicator: Some(1),
                    ..Default::default()
                },
            });
            Packet::Connect(Box::new(c))
        },
    },
    Fixture {
        name: "connack_v5_no_properties",
        protocol: Protocol::V5,
        bytes: b"\x20\x03\x00\x00\x00",
        packet: || {
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::SUCCESS,
                properties: ConnAckProperties::default(),
            })
        },
    },
    Fixture {
        name: "connack_v5_properties",
        protocol: Protocol::V5,
        bytes: b"\x20\x0a\x00\x00\x07\x24\x01\x25\x00\x13\x00\x1e",
        packet: || {
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::SUCCESS,
                properties: ConnAckProperties {
                    maximum_qos: Some(QoS::AtLeastOnce),
                    retain_available: Some(false),
                    server_keep_alive: Some(30),
                    ..Default::default()
                },
            })
        },
    },
    Fixture {
        name: "publish_v5_qos1_properties",
        protocol: Protocol::V5,
        bytes: b"\x32\x12\x00\x03a/b\x00\x01\x08\x01\x01\x23\x00\x05\x0b\x81\x01hi",
        packet: || {
            let mut p = publish(QoS::AtLeastOnce, 1);
            p.properties.payload_format_indicator = Some(1);
            p.properties.topic_alias = Some(5);
            p.properties.subscription_identifiers = vec![129];
            Packet::Publish(p)
        },
    },
    Fixture {
        name: "publish_v5_topic_alias_only",
        protocol: Protocol::V5,
        bytes: b"\x30\x07\x00\x00\x03\x23\x00\x07x",
        packet: || {
            Packet::Publish(Publish {
                topic: TopicName::default(),
                payload: Bytes::from_static(b"x"),
                properties: PublishProperties {
                    topic_alias: Some(7),
                    ..Default::default()
                },
                ..publish(QoS::AtMostOnce, 0)
            })
        },
    },
    Fixture {
        name: "puback_v5_short_success",
        protocol: Protocol::V5,
        bytes: b"\x40\x02\x00\x0a",
        packet: || Packet::PubAck(PubAck::new(10)),
    },
    Fixture {
        name: "puback_v5_reason_only",
        protocol: Protocol::V5,
        bytes: b"\x40\x03\x00\x0a\x10",
        packet: || {
            Packet::PubAck(PubAck {
                reason: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                ..PubAck::new(10)
            })
        },
    },
    Fixture {
        name: "pubrec_v5_reason_string",
        protocol: Protocol::V5,
        bytes: b"\x50\x0a\x00\x0a\x80\x06\x1f\x00\x03bad",
        packet: || {
            Packet::PubRec(PubAck {
                pkid: 10,
                reason: ReasonCode::UNSPECIFIED_ERROR,
                properties: AckProperties {
                    reason_string: Some(s("bad")),
                    ..Default::default()
                },
            })
        },
    },
    Fixture {
        name: "pubrel_v5_short_success",
        protocol: Protocol::V5,
        bytes: b"\x62\x02\x00\x0a",
        packet: || Packet::PubRel(PubAck::new(10)),
    },
    Fixture {
        name: "subscribe_v5_options_and_identifier",
        protocol: Protocol::V5,
        bytes: b"\x82\x0b\x00\x01\x02\x0b\x05\x00\x03a/b\x2e",
        packet: || {
            Packet::Subscribe(Subscribe {
                pkid: 1,
                filters: vec![Subscription {
                    filter: filter("a/b"),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::Never,
                    },
                }],
                rejected: Vec::new(),
                properties: SubscribeProperties {
                    subscription_identifier: Some(5),
                    ..Default::default()
                },
            })
        },
    },
    Fixture {
        name: "suback_v5",
        protocol: Protocol::V5,
        bytes: b"\x90\x04\x00\x01\x00\x02",
        packet: || {
            Packet::SubAck(SubAck {
                pkid: 1,
                reasons: vec![ReasonCode::GRANTED_QOS_2],
                properties: AckProperties::default(),
            })
        },
    },
    Fixture {
        name: "unsubscribe_v5",
        protocol: Protocol::V5,
        bytes: b"\xa2\x08\x00\x02\x00\x00\x03a/b",
        packet: || {
            Packet::Unsubscribe(Unsubscribe {
                pkid: 2,
                filters: vec![filter("a/b")],
                rejected: Vec::new(),
                user_properties: Vec::new(),
            })
        },
    },
    Fixture {
        name: "unsuback_v5",
        protocol: Protocol::V5,
        bytes: b"\xb0\x04\x00\x02\x00\x11",
        packet: || {
            Packet::UnsubAck(UnsubAck {
                pkid: 2,
                reasons: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
                properties: AckProperties::default(),
            })
        },
    },
    Fixture {
        name: "pingreq_v5",
        protocol: Protocol::V5,
        bytes: b"\xc0\x00",
        packet: || Packet::PingReq,
    },
    Fixture {
        name: "disconnect_v5_normal_short",
        protocol: Protocol::V5,
        bytes: b"\xe0\x00",
        packet: || Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
    },
    Fixture {
        name: "disconnect_v5_reason_only",
        protocol: Protocol::V5,
        bytes: b"\xe0\x01\x8e",
        packet: || Packet::Disconnect(Disconnect::new(ReasonCode::SESSION_TAKEN_OVER)),
    },
    Fixture {
        name: "disconnect_v5_session_expiry",
        protocol: Protocol::V5,
        bytes: b"\xe0\x07\x04\x05\x11\x00\x00\x00\x0a",
        packet: || {
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::DISCONNECT_WITH_WILL,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(10),
                    ..Default::default()
                },
            })
        },
    },
    Fixture {
        name: "auth_v5_success_short",
        protocol: Protocol::V5,
        bytes: b"\xf0\x00",
        packet: || {
            Packet::Auth(Auth {
                reason: ReasonCode::SUCCESS,
                properties: AuthProperties::default(),
            })
        },
    },
    Fixture {
        name: "auth_v5_continue",
        protocol: Protocol::V5,
        bytes: b"\xf0\x0e\x18\x0c\x15\x00\x04SCRM\x16\x00\x02\x01\x02",
        packet: || {
            Packet::Auth(Auth {
                reason: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some(s("SCRM")),
                    authentication_data: Some(Bytes::from_static(b"\x01\x02")),
                    ..Default::default()
                },
            })
        },
    },
];

/// Decodes `data` with a decoder at every level, server side (before CONNECT) included, and
/// checks the codec's invariants; panics (this is test support) when one is broken:
///
/// * decoding never panics, and an `Ok(None)` consumes nothing;
/// * every decoded packet encodes, `encoded_len` matches the bytes written, and the encoding
///   decodes back to the same packet.
pub fn check_decode(data: &[u8]) {
    let decoders = [
        Decoder::new(usize::MAX),
        Decoder::new(64),
        Decoder::with_protocol(Protocol::V31, usize::MAX),
        Decoder::with_protocol(Protocol::V311, usize::MAX),
        Decoder::with_protocol(Protocol::V5, usize::MAX),
    ];
    for mut decoder in decoders {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => {
                    let level = match (&packet, decoder.protocol()) {
                        (Packet::Connect(c), _) => c.protocol,
                        (_, Some(level)) => level,
                        (_, None) => panic!("a packet other than CONNECT decoded before CONNECT"),
                    };
                    check_reencode(&packet, level);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// Encodes `packet` for `level` and checks that it decodes back to itself.
pub fn check_reencode(packet: &Packet, level: Protocol) {
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, level, &mut out) {
        panic!("decoded {packet:?} does not re-encode at {level:?}: {e}");
    }
    assert_eq!(
        crate::encoded_len(packet, level).ok(),
        Some(out.len()),
        "encoded_len"
    );
    let mut decoder = Decoder::with_protocol(level, usize::MAX);
    let again = decoder.decode(&mut out);
    assert_eq!(
        again,
        Ok(Some(packet.clone())),
        "re-encoded packet decodes differently"
    );
    assert!(
        out.is_empty(),
        "bytes left after decoding a re-encoded packet"
    );
}

/// The round-trip invariant, on whatever `data` decodes to at each level: encoding is a fixed
/// point (`encode(decode(encode(p))) == encode(p)`) and the encoding, split at any point chosen
/// from `data`, decodes to `Ok(None)` and then to the packet. Panics when it does not hold.
pub fn check_round_trip(data: &[u8]) {
    let split = data.first().map_or(0, |&b| usize::from(b));
    for level in [Protocol::V31, Protocol::V311, Protocol::V5] {
        let mut decoder = Decoder::with_protocol(level, usize::MAX);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decoder.decode(&mut buf) {
            let level = match &packet {
                Packet::Connect(c) => c.protocol,
                _ => level,
            };
            let mut first = BytesMut::new();
            if encode(&packet, level, &mut first).is_err() {
                panic!("decoded {packet:?} does not re-encode at {level:?}");
            }
            let mut again = Decoder::with_protocol(level, usize::MAX);
            let cut = split % first.len();
            let mut partial = BytesMut::from(&first[..cut]);
            assert_eq!(
                again.decode(&mut partial),
                Ok(None),
                "prefix of {cut} bytes"
            );
            assert_eq!(partial.len(), cut, "Ok(None) consumed bytes");
            partial.extend_from_slice(&first[cut..]);
            let decoded = again.decode(&mut partial);
            assert_eq!(decoded, Ok(Some(packet.clone())), "split at {cut}");
            let mut second = BytesMut::new();
            assert!(encode(&packet, level, &mut second).is_ok());
            assert_eq!(first, second, "encoding is not a fixed point");
        }
    }
}
