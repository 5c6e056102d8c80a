//! Encode-once broadcast (issue #13 point 5): every delivery's bytes, taken from the message's
//! shared encoded forms or encoded afresh, equal a fresh encode of the PUBLISH it should get,
//! for every combination of protocol level, QoS, retain, DUP, properties, Subscription
//! Identifiers and Topic Aliases; mqttbytes decodes them as the second opinion. No sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sluice_codec::{encode, Packet, Protocol, Publish, PublishProperties, QoS, Str, TopicName};

use super::{pkid_offset, write_form};
use std::cell::RefCell;

thread_local! {
    /// Run once by this thread's next drain that reaches the group queues, just before it
    /// takes from them ([`set_before_group_queues`]).
    static BEFORE_GROUP_QUEUES: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
}

/// Makes this thread's next drain that reaches the group queues run `f` first, between taking
/// from the session's own queue and taking from the group queues: what another task (a
/// publisher) may do at that moment, played deterministically.
pub(in crate::protocol) fn set_before_group_queues(f: impl FnOnce() + 'static) {
    BEFORE_GROUP_QUEUES.with(|h| *h.borrow_mut() = Some(Box::new(f)));
}

/// Called by the drain (test builds only): runs the hook set by [`set_before_group_queues`].
pub(super) fn before_group_queues() {
    // Taken out before it runs: it may drain other clients itself.
    if let Some(f) = BEFORE_GROUP_QUEUES.with(|h| h.borrow_mut().take()) {
        f();
    }
}
use crate::message::{EncodedForm, Message, MAX_ENCODED_FORMS};
use crate::protocol::{ClientState, Negotiated};
use crate::session::{Delivery, Session, SessionHandle};

/// One subscriber's connection and what it subscribed with.
#[derive(Debug, Clone)]
struct Sub {
    protocol: Protocol,
    qos: QoS,
    retain: bool,
    dup: bool,
    /// Packet identifiers used before this delivery (so every subscriber patches another one).
    skip: u16,
    subscription_ids: Vec<u32>,
    alias_maximum: u16,
}

fn client(s: &Sub) -> ClientState {
    let n = Negotiated {
        protocol: s.protocol,
        client_id: "c".into(),
        username: None,
        keep_alive: 60,
        connect_session_expiry: 0,
        send_window: 16,
        client_max_packet: usize::MAX,
        receive_maximum: 4,
        topic_alias_maximum: 0,
        request_problem_information: true,
        outbound_alias_maximum: if s.protocol.is_v5() {
            s.alias_maximum
        } else {
            0
        },
    };
    let handle = Arc::new(SessionHandle::new(n.client_id.clone(), 1000, 1 << 24));
    let mut state = ClientState::new(n, handle, Session::default(), None);
    state.session.last_pkid = s.skip;
    // Deliveries numbered up to this are redeliveries after a crash: they carry DUP.
    state.set_recovered_horizon(10);
    state
}

/// Delivers `msg` to `sub` and returns the bytes written, and the PUBLISH it should be.
fn deliver(msg: &Arc<Message>, sub: &Sub, now: Instant) -> (BytesMut, Publish) {
    let mut state = client(sub);
    let qos = msg.qos.min(sub.qos);
    let d = Delivery {
        msg: msg.clone(),
        qos,
        retain: sub.retain,
        subscription_ids: sub.subscription_ids.clone(),
        shared: None,
        seq: if sub.dup { 5 } else { 0 },
    };
    state.send_delivery(
        d,
        now,
        &mut crate::stats::DrainTally::default(),
        &mut Vec::new(),
    );
    let v5 = sub.protocol.is_v5();
    let mut properties = PublishProperties::default();
    if v5 {
        properties = msg.properties.clone();
        properties.message_expiry_interval = msg.remaining_expiry(now);
        properties.subscription_identifiers = sub.subscription_ids.clone();
        // The first PUBLISH on a connection with aliases assigns alias 1 with the topic.
        if sub.alias_maximum > 0 {
            properties.topic_alias = Some(1);
        }
    }
    let expected = Publish {
        dup: sub.dup && qos != QoS::AtMostOnce,
        qos,
        retain: sub.retain,
        topic: msg.topic.clone(),
        pkid: if qos == QoS::AtMostOnce {
            0
        } else {
            sub.skip + 1
        },
        payload: msg.payload.clone(),
        properties,
    };
    (state.write_buf.split(), expected)
}

fn fresh(p: &Publish, protocol: Protocol) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(&Packet::Publish(p.clone()), protocol, &mut buf).expect("encodes");
    buf
}

/// mqttbytes' reading of `bytes`: (dup, qos, retain, topic, pkid, payload, expiry, sub ids).
type Read = (bool, u8, bool, String, u16, Bytes, Option<u32>, Vec<usize>);

fn mqttbytes_read(bytes: &[u8], protocol: Protocol) -> Read {
    let mut buf = bytes::BytesMut::from(bytes);
    if protocol.is_v5() {
        match mqttbytes::v5::read(&mut buf, usize::MAX).expect("mqttbytes reads it") {
            mqttbytes::v5::Packet::Publish(p) => {
                let (expiry, ids) = p.properties.map_or((None, vec![]), |props| {
                    (
                        props.message_expiry_interval,
                        props.subscription_identifiers,
                    )
                });
                (
                    p.dup,
                    p.qos as u8,
                    p.retain,
                    p.topic,
                    p.pkid,
                    p.payload,
                    expiry,
                    ids,
                )
            }
            other => panic!("not a PUBLISH: {other:?}"),
        }
    } else {
        match mqttbytes::v4::read(&mut buf, usize::MAX).expect("mqttbytes reads it") {
            mqttbytes::v4::Packet::Publish(p) => (
                p.dup,
                p.qos as u8,
                p.retain,
                p.topic,
                p.pkid,
                p.payload,
                None,
                vec![],
            ),
            other => panic!("not a PUBLISH: {other:?}"),
        }
    }
}

fn message(
    topic: &str,
    payload: Bytes,
    qos: QoS,
    properties: PublishProperties,
    now: Instant,
) -> Arc<Message> {
    Arc::new(Message::new(
        TopicName::try_from(topic).unwrap(),
        payload,
        qos,
        false,
        properties,
        "publisher".into(),
        now,
    ))
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn sub() -> impl Strategy<Value = Sub> {
    (
        prop_oneof![
            Just(Protocol::V31),
            Just(Protocol::V311),
            Just(Protocol::V5)
        ],
        qos(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        0u16..400,
        prop::collection::vec(1u32..300_000, 0..3),
        prop_oneof![4 => Just(0u16), 1 => Just(4u16)],
    )
        .prop_map(
            |(protocol, qos, retain, dup, skip, subscription_ids, alias_maximum)| Sub {
                protocol,
                qos,
                retain,
                dup,
                skip,
                // Some subscribers without identifiers, so that forms are shared.
                subscription_ids: if skip % 2 == 0 {
                    vec![]
                } else {
                    subscription_ids
                },
                alias_maximum,
            },
        )
}

fn properties() -> impl Strategy<Value = PublishProperties> {
    (
        prop::option::of(1u32..100_000),
        prop::option::of(0u8..=1),
        prop::option::of("[a-z/]{1,20}"),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        prop::collection::vec(("[a-z]{1,8}", "[a-z0-9]{0,8}"), 0..3),
    )
        .prop_map(
            |(expiry, format, content_type, correlation, users)| PublishProperties {
                message_expiry_interval: expiry,
                payload_format_indicator: format,
                content_type: content_type.map(|c| Str::try_from(c).unwrap()),
                response_topic: None,
                correlation_data: correlation.map(Bytes::from),
                user_properties: users
                    .into_iter()
                    .map(|(k, v)| (Str::try_from(k).unwrap(), Str::try_from(v).unwrap()))
                    .collect(),
                topic_alias: None,
                subscription_identifiers: vec![],
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every subscriber's bytes equal a fresh encode of its own PUBLISH, whether they came from
    /// a shared form (with its packet id patched) or were encoded for it alone; mqttbytes reads
    /// the same fields out of them.
    #[test]
    fn shared_forms_equal_a_fresh_encode(
        topic in prop_oneof!["[a-z]{1,10}(/[a-z]{1,10}){0,3}", "[a-z]{200,300}"],
        payload_len in prop_oneof![0usize..300, 16_000usize..20_000],
        published in qos(),
        props in properties(),
        subs in prop::collection::vec(sub(), 2..12),
        elapsed_ms in 0u64..5_000,
    ) {
        let start = Instant::now();
        let msg = message(&topic, Bytes::from(vec![0xa5; payload_len]), published, props, start);
        let now = start + Duration::from_millis(elapsed_ms);
        // An expired message is not delivered at all [MQTT-3.3.2-5] (its own tests): at
        // `elapsed_ms` = 1000 x its expiry there are no bytes to compare.
        prop_assume!(!msg.is_expired(now));
        // Twice over the subscribers: the second round is served from the forms the first
        // one cached.
        for sub in subs.iter().chain(&subs) {
            let (bytes, expected) = deliver(&msg, sub, now);
            prop_assert_eq!(&bytes[..], &fresh(&expected, sub.protocol)[..], "{:?}", sub);
            let (dup, q, retain, t, pkid, payload, expiry, ids) = mqttbytes_read(&bytes, sub.protocol);
            prop_assert_eq!(dup, expected.dup);
            prop_assert_eq!(q, expected.qos as u8);
            prop_assert_eq!(retain, expected.retain);
            prop_assert_eq!(t, topic.clone());
            prop_assert_eq!(pkid, expected.pkid);
            prop_assert_eq!(payload, msg.payload.clone());
            prop_assert_eq!(expiry, expected.properties.message_expiry_interval);
            prop_assert_eq!(ids, expected.properties.subscription_identifiers.iter().map(|&i| i as usize).collect::<Vec<_>>());
        }
        prop_assert!(msg.encoded.len() <= MAX_ENCODED_FORMS);
    }
}

/// 1,000 subscribers of two protocol levels and two QoS levels: four forms are encoded and
/// cached, every other delivery is a copy with its own packet identifier.
#[test]
fn a_broadcast_is_encoded_once_per_wire_form() {
    let now = Instant::now();
    let msg = message(
        "fleet/all/cmd",
        Bytes::from_static(b"reboot"),
        QoS::AtLeastOnce,
        PublishProperties::default(),
        now,
    );
    let mut seen = std::collections::HashSet::new();
    for i in 0..1000u16 {
        let sub = Sub {
            protocol: if i % 2 == 0 {
                Protocol::V311
            } else {
                Protocol::V5
            },
            qos: if i % 4 < 2 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            retain: false,
            dup: false,
            skip: i,
            subscription_ids: vec![],
            alias_maximum: 0,
        };
        let (bytes, expected) = deliver(&msg, &sub, now);
        assert_eq!(bytes, fresh(&expected, sub.protocol), "subscriber {i}");
        seen.insert(bytes);
    }
    assert_eq!(msg.encoded.len(), 4, "one form per protocol level and QoS");
    // QoS 1 deliveries differ in their packet identifier; QoS 0 ones are the same bytes.
    assert_eq!(seen.len(), 2 + 500);
}

/// A message delivered once keeps no encoded copy of itself; a fifth wire form is encoded per
/// delivery and not cached (the cache is bounded).
#[test]
fn forms_are_cached_from_the_second_delivery_and_bounded() {
    let now = Instant::now();
    let msg = message(
        "a/b",
        Bytes::from_static(b"x"),
        QoS::ExactlyOnce,
        PublishProperties::default(),
        now,
    );
    let base = Sub {
        protocol: Protocol::V311,
        qos: QoS::AtMostOnce,
        retain: false,
        dup: false,
        skip: 0,
        subscription_ids: vec![],
        alias_maximum: 0,
    };
    deliver(&msg, &base, now);
    assert_eq!(msg.encoded.len(), 0, "a single delivery caches nothing");
    let forms = [
        (QoS::AtMostOnce, false),
        (QoS::AtLeastOnce, false),
        (QoS::ExactlyOnce, false),
        (QoS::AtMostOnce, true),
        (QoS::AtLeastOnce, true),
    ];
    for (qos, retain) in forms {
        let sub = Sub {
            qos,
            retain,
            ..base.clone()
        };
        let (bytes, expected) = deliver(&msg, &sub, now);
        assert_eq!(bytes, fresh(&expected, sub.protocol));
    }
    assert_eq!(msg.encoded.len(), MAX_ENCODED_FORMS);
    // The fifth form is still right, from a fresh encode.
    let sub = Sub {
        qos: QoS::AtLeastOnce,
        retain: true,
        skip: 77,
        ..base
    };
    let (bytes, expected) = deliver(&msg, &sub, now);
    assert_eq!(bytes, fresh(&expected, sub.protocol));
}

/// The packet identifier is found behind Remaining Lengths of 1 to 4 bytes (2.2.3).
#[test]
fn packet_id_offset_for_every_remaining_length_size() {
    for payload_len in [0usize, 100, 200, 20_000, 2_100_000] {
        for topic in ["t", "a/much/longer/topic/name"] {
            let p = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: TopicName::try_from(topic).unwrap(),
                pkid: 0x0102,
                payload: Bytes::from(vec![7u8; payload_len]),
                properties: PublishProperties::default(),
            };
            for protocol in [Protocol::V311, Protocol::V5] {
                let bytes = fresh(&p, protocol).freeze();
                let at = pkid_offset(&bytes, topic.len());
                assert_eq!(&bytes[at..at + 2], &[1, 2], "{payload_len} {topic}");
                let mut out = BytesMut::new();
                let form = EncodedForm {
                    bytes: bytes.clone(),
                    pkid_at: Some(at),
                };
                write_form(&mut out, &form, 0xBEEF);
                let patched = Publish {
                    pkid: 0xBEEF,
                    ..p.clone()
                };
                assert_eq!(out, fresh(&patched, protocol));
            }
        }
    }
}

/// The expiry written is part of the form: a delivery a second later does not reuse the bytes
/// of one with more time left [MQTT-3.3.2-6].
#[test]
fn remaining_expiry_is_part_of_the_wire_form() {
    let start = Instant::now();
    let msg = message(
        "a/b",
        Bytes::from_static(b"x"),
        QoS::AtMostOnce,
        PublishProperties {
            message_expiry_interval: Some(60),
            ..Default::default()
        },
        start,
    );
    let sub = Sub {
        protocol: Protocol::V5,
        qos: QoS::AtMostOnce,
        retain: false,
        dup: false,
        skip: 0,
        subscription_ids: vec![],
        alias_maximum: 0,
    };
    for secs in [0, 0, 1, 1, 30] {
        let now = start + Duration::from_millis(secs * 1000 + 1);
        let (bytes, expected) = deliver(&msg, &sub, now);
        assert_eq!(
            expected.properties.message_expiry_interval,
            Some(60 - secs as u32)
        );
        assert_eq!(bytes, fresh(&expected, sub.protocol), "{secs} s later");
    }
}
