//! proptest strategies for valid packets at each level: everything the decoder accepts and the
//! encoder writes, so `decode(encode(p)) == p` must hold for each.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use sluice_codec::*;

pub fn string() -> impl Strategy<Value = Str> {
    "[a-zA-Z0-9 é日_/-]{0,10}".prop_map(|s| Str::try_from(s).expect("valid"))
}

pub fn topic_name() -> impl Strategy<Value = TopicName> {
    "[a-z0-9é$]{1,4}(/[a-z0-9日]{0,4}){0,3}"
        .prop_map(|s| TopicName::try_from(s.as_str()).expect("valid"))
}

pub fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof!["[a-zé]{0,3}", Just("+".to_string())];
    (vec(level, 1..4), any::<bool>(), any::<bool>()).prop_map(|(levels, hash, shared)| {
        let mut f = levels.join("/");
        if f.is_empty() {
            f.push('a');
        }
        if hash {
            f.push_str("/#");
        }
        if shared {
            f = format!("$share/g/{f}");
        }
        TopicFilter::try_from(f.as_str()).expect("valid filter")
    })
}

pub fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn users() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((string(), string()), 0..3)
}

fn pkid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn sub_id() -> impl Strategy<Value = u32> {
    prop_oneof![1..=127u32, 1..=268_435_455u32]
}

pub fn publish_properties(will: bool) -> impl Strategy<Value = PublishProperties> {
    (
        option::of(0..=1u8),
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(topic_name()),
        option::of(binary()),
        users(),
        vec(sub_id(), 0..3),
        option::of(string()),
    )
        .prop_map(
            move |(pfi, expiry, alias, response, correlation, users, ids, content)| {
                PublishProperties {
                    payload_format_indicator: pfi,
                    message_expiry_interval: expiry,
                    topic_alias: if will { None } else { alias },
                    response_topic: response,
                    correlation_data: correlation,
                    user_properties: users,
                    subscription_identifiers: if will { Vec::new() } else { ids },
                    content_type: content,
                }
            },
        )
}

pub fn publish(v5: bool) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        pkid(),
        binary(),
        publish_properties(false),
        any::<bool>(),
    )
        .prop_map(
            move |(qos, dup, retain, topic, pkid, payload, properties, empty_topic)| {
                let at_most_once = qos == QoS::AtMostOnce;
                let mut p = Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    pkid: if at_most_once { 0 } else { pkid },
                    payload,
                    properties: if v5 {
                        properties
                    } else {
                        PublishProperties::default()
                    },
                };
                if v5 && empty_topic && p.properties.topic_alias.is_some() {
                    p.topic = TopicName::default();
                }
                p
            },
        )
}

fn will(v5: bool) -> impl Strategy<Value = LastWill> {
    (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        any::<u32>(),
        publish_properties(true),
    )
        .prop_map(
            move |(topic, payload, qos, retain, delay, properties)| LastWill {
                topic,
                payload,
                qos,
                retain,
                delay_interval: if v5 { delay } else { 0 },
                properties: if v5 {
                    properties
                } else {
                    PublishProperties::default()
                },
            },
        )
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(1..=u32::MAX),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        users(),
        option::of((string(), option::of(binary()))),
    )
        .prop_map(
            |(expiry, receive, max_size, alias_max, rri, rpi, users, auth)| ConnectProperties {
                session_expiry_interval: expiry,
                receive_maximum: receive,
                maximum_packet_size: max_size,
                topic_alias_maximum: alias_max,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: users,
                authentication_method: auth.as_ref().map(|a| a.0.clone()),
                authentication_data: auth.and_then(|a| a.1),
            },
        )
}

pub fn connect(protocol: Protocol) -> impl Strategy<Value = Connect> {
    let v5 = protocol.is_v5();
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        option::of(will(v5)),
        option::of(string()),
        option::of(binary()),
        connect_properties(),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    password: if v5 || username.is_some() {
                        password
                    } else {
                        None
                    },
                    username,
                    properties: if v5 {
                        properties
                    } else {
                        ConnectProperties::default()
                    },
                }
            },
        )
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(string()), users()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let a = (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        option::of(any::<bool>()),
        option::of(1..=u32::MAX),
        option::of(string()),
        option::of(any::<u16>()),
        option::of(string()),
        users(),
    );
    let b = (
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<u16>()),
        option::of(string()),
        option::of(string()),
        option::of(string()),
        option::of(binary()),
    );
    (a, b).prop_map(
        |((s, r, q, ra, m, id, tam, rs, up), (w, si, sh, ka, ri, sr, am, ad))| ConnAckProperties {
            session_expiry_interval: s,
            receive_maximum: r,
            maximum_qos: q,
            retain_available: ra,
            maximum_packet_size: m,
            assigned_client_identifier: id,
            topic_alias_maximum: tam,
            reason_string: rs,
            user_properties: up,
            wildcard_subscription_available: w,
            subscription_identifiers_available: si,
            shared_subscription_available: sh,
            server_keep_alive: ka,
            response_information: ri,
            server_reference: sr,
            authentication_method: am,
            authentication_data: ad,
        },
    )
}

fn subscription(v5: bool) -> impl Strategy<Value = Subscription> {
    (topic_filter(), qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(
        move |(filter, qos, nl, rap, rh)| {
            let retain_handling = match rh {
                0 => RetainHandling::OnSubscribe,
                1 => RetainHandling::OnNewSubscription,
                _ => RetainHandling::Never,
            };
            let options = if v5 {
                SubscriptionOptions {
                    qos,
                    no_local: nl && filter.shared().is_none(),
                    retain_as_published: rap,
                    retain_handling,
                }
            } else {
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                }
            };
            Subscription { filter, options }
        },
    )
}

fn reason() -> impl Strategy<Value = ReasonCode> {
    any::<u8>().prop_map(ReasonCode)
}

/// A valid packet of any type at `protocol` (AUTH only at 5.0).
pub fn packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let v5 = protocol.is_v5();
    let ack = move || {
        (pkid(), reason(), ack_properties()).prop_map(move |(pkid, reason, properties)| {
            if v5 {
                PubAck {
                    pkid,
                    reason,
                    properties,
                }
            } else {
                PubAck::new(pkid)
            }
        })
    };
    let v311_connack = prop_oneof![
        Just(0u8),
        Just(0x84),
        Just(0x85),
        Just(0x86),
        Just(0x87),
        Just(0x88)
    ];
    let connack = (any::<bool>(), reason(), v311_connack, connack_properties()).prop_map(
        move |(sp, r, r3, props)| {
            Packet::ConnAck(if v5 {
                ConnAck {
                    session_present: sp,
                    reason: r,
                    properties: props,
                }
            } else {
                ConnAck {
                    session_present: sp,
                    reason: ReasonCode(r3),
                    properties: ConnAckProperties::default(),
                }
            })
        },
    );
    let subscribe = (
        pkid(),
        vec(subscription(v5), 1..4),
        option::of(sub_id()),
        users(),
    )
        .prop_map(move |(pkid, filters, id, users)| {
            let properties = if v5 {
                SubscribeProperties {
                    subscription_identifier: id,
                    user_properties: users,
                }
            } else {
                SubscribeProperties::default()
            };
            Packet::Subscribe(Subscribe {
                pkid,
                filters,
                rejected: Vec::new(),
                properties,
            })
        });
    let v311_code = prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)].prop_map(ReasonCode);
    let suback = (
        pkid(),
        vec(reason(), 1..4),
        vec(v311_code, 1..4),
        ack_properties(),
    )
        .prop_map(move |(pkid, r5, r3, properties)| {
            Packet::SubAck(if v5 {
                SubAck {
                    pkid,
                    reasons: r5,
                    properties,
                }
            } else {
                SubAck {
                    pkid,
                    reasons: r3,
                    properties: AckProperties::default(),
                }
            })
        });
    let unsubscribe =
        (pkid(), vec(topic_filter(), 1..4), users()).prop_map(move |(pkid, filters, users)| {
            Packet::Unsubscribe(Unsubscribe {
                pkid,
                filters,
                rejected: Vec::new(),
                user_properties: if v5 { users } else { Vec::new() },
            })
        });
    let unsuback = (pkid(), vec(reason(), 0..4), ack_properties()).prop_map(
        move |(pkid, reasons, properties)| {
            Packet::UnsubAck(if v5 {
                UnsubAck {
                    pkid,
                    reasons,
                    properties,
                }
            } else {
                UnsubAck {
                    pkid,
                    reasons: Vec::new(),
                    properties: AckProperties::default(),
                }
            })
        },
    );
    let disconnect_props = (
        option::of(any::<u32>()),
        option::of(string()),
        users(),
        option::of(string()),
    )
        .prop_map(|(e, r, u, s)| DisconnectProperties {
            session_expiry_interval: e,
            reason_string: r,
            user_properties: u,
            server_reference: s,
        });
    let disconnect = (reason(), disconnect_props).prop_map(move |(reason, properties)| {
        Packet::Disconnect(if v5 {
            Disconnect { reason, properties }
        } else {
            Disconnect::new(ReasonCode(0))
        })
    });
    let mut options = vec![
        connect(protocol)
            .prop_map(|c| Packet::Connect(Box::new(c)))
            .boxed(),
        connack.boxed(),
        publish(v5).prop_map(Packet::Publish).boxed(),
        ack().prop_map(Packet::PubAck).boxed(),
        ack().prop_map(Packet::PubRec).boxed(),
        ack().prop_map(Packet::PubRel).boxed(),
        ack().prop_map(Packet::PubComp).boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect.boxed(),
    ];
    if v5 {
        let auth_props = (
            option::of(string()),
            option::of(binary()),
            option::of(string()),
            users(),
        )
            .prop_map(|(m, d, r, u)| AuthProperties {
                authentication_method: m,
                authentication_data: d,
                reason_string: r,
                user_properties: u,
            });
        let auth = (prop_oneof![Just(0u8), Just(0x18), Just(0x19)], auth_props).prop_map(
            |(r, properties)| {
                Packet::Auth(Auth {
                    reason: ReasonCode(r),
                    properties,
                })
            },
        );
        options.push(auth.boxed());
    }
    proptest::strategy::Union::new(options).boxed()
}
