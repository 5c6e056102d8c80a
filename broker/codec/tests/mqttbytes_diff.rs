//! Differential tests against mqttbytes 0.6, for what it handles correctly: our encoding read by
//! mqttbytes gives the same fields, and mqttbytes' encoding decoded by us gives the same fields,
//! at 3.1.1 (its v4) and 5.0 (its v5).
//!
//! Left out where mqttbytes is known to be wrong or narrower than the standard: 5.0 DISCONNECT,
//! 5.0 CONNACK (it reads no property length when there are none), 5.0 UNSUBACK, PUBREC/PUBREL/
//! PUBCOMP reason codes at 5.0, binary (non-UTF-8) and empty passwords (its Login holds two
//! Strings, "" meaning absent), strings over 65,535 bytes, wildcard topics, AUTH and MQTT 3.1.
//! The comparison is done in our model: both directions must give back the packet we started with.

mod common;

use bytes::{Bytes, BytesMut};
use common::strategies;
use mqttbytes::{v4, v5};
use proptest::prelude::*;
use sluice_codec::*;

fn string(s: &Str) -> String {
    s.as_str().to_string()
}

fn ours(s: String) -> Str {
    Str::try_from(s).expect("mqttbytes returned an invalid string")
}

fn qos_to(q: QoS) -> mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos_from(q: mqttbytes::QoS) -> QoS {
    QoS::from_u8(q as u8).expect("qos")
}

fn users_to(u: &[UserProperty]) -> Vec<(String, String)> {
    u.iter().map(|(k, v)| (string(k), string(v))).collect()
}

fn users_from(u: Vec<(String, String)>) -> Vec<UserProperty> {
    u.into_iter().map(|(k, v)| (ours(k), ours(v))).collect()
}

fn topic_from(t: String) -> TopicName {
    TopicName::new(ours(t)).expect("topic")
}

fn filter_from(f: String) -> TopicFilter {
    TopicFilter::new(ours(f)).expect("filter")
}

/// Username / password as mqttbytes models them, when representable.
fn login(c: &Connect) -> Option<Option<(String, String)>> {
    let username = c.username.as_ref().map(string).unwrap_or_default();
    let password = match &c.password {
        Some(p) => String::from_utf8(p.to_vec()).ok()?,
        None => String::new(),
    };
    if c.username.as_ref().is_some_and(|u| u.is_empty())
        || c.password.as_ref().is_some_and(|p| p.is_empty())
    {
        return None;
    }
    Some((!username.is_empty() || !password.is_empty()).then_some((username, password)))
}

fn login_from(l: Option<(String, String)>) -> (Option<Str>, Option<Bytes>) {
    match l {
        None => (None, None),
        Some((u, p)) => (
            (!u.is_empty()).then(|| ours(u)),
            (!p.is_empty()).then(|| Bytes::from(p)),
        ),
    }
}

// ---- 3.1.1 / v4 -----------------------------------------------------------------------------

fn connack_code(reason: ReasonCode) -> v4::ConnectReturnCode {
    match reason.0 {
        0 => v4::ConnectReturnCode::Success,
        0x84 => v4::ConnectReturnCode::RefusedProtocolVersion,
        0x85 => v4::ConnectReturnCode::BadClientId,
        0x86 => v4::ConnectReturnCode::BadUserNamePassword,
        0x87 => v4::ConnectReturnCode::NotAuthorized,
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

/// Our packet in mqttbytes' v4 model, `None` when it cannot represent it.
fn to_v4(p: &Packet) -> Option<v4::Packet> {
    Some(match p {
        Packet::Connect(c) => v4::Packet::Connect(v4::Connect {
            protocol: mqttbytes::Protocol::V4,
            keep_alive: c.keep_alive,
            client_id: string(&c.client_id),
            clean_session: c.clean_start,
            last_will: c.will.as_ref().map(|w| v4::LastWill {
                topic: w.topic.to_string(),
                message: w.payload.clone(),
                qos: qos_to(w.qos),
                retain: w.retain,
            }),
            login: login(c)?.map(|(username, password)| v4::Login { username, password }),
        }),
        Packet::ConnAck(a) => {
            v4::Packet::ConnAck(v4::ConnAck::new(connack_code(a.reason), a.session_present))
        }
        Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_to(p.qos),
            retain: p.retain,
            topic: p.topic.to_string(),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
        Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
        Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
        Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
        Packet::Subscribe(s) => v4::Packet::Subscribe(v4::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .iter()
                .map(|f| v4::SubscribeFilter::new(f.filter.to_string(), qos_to(f.options.qos)))
                .collect(),
        }),
        Packet::SubAck(a) => v4::Packet::SubAck(v4::SubAck::new(
            a.pkid,
            a.reasons
                .iter()
                .map(|r| v4::SubscribeReasonCode::try_from(r.0).expect("3.1.1 code"))
                .collect(),
        )),
        Packet::Unsubscribe(u) => v4::Packet::Unsubscribe(v4::Unsubscribe {
            pkid: u.pkid,
            topics: u.filters.iter().map(|f| f.to_string()).collect(),
        }),
        Packet::UnsubAck(a) => v4::Packet::UnsubAck(v4::UnsubAck::new(a.pkid)),
        Packet::PingReq => v4::Packet::PingReq,
        Packet::PingResp => v4::Packet::PingResp,
        Packet::Disconnect(_) => v4::Packet::Disconnect,
        Packet::Auth(_) => return None,
    })
}

fn from_v4(p: v4::Packet) -> Packet {
    match p {
        v4::Packet::Connect(c) => {
            let (username, password) = login_from(c.login.map(|l| (l.username, l.password)));
            Packet::Connect(Box::new(Connect {
                protocol: Protocol::V311,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: ours(c.client_id),
                will: c.last_will.map(|w| LastWill {
                    topic: topic_from(w.topic),
                    payload: w.message,
                    qos: qos_from(w.qos),
                    retain: w.retain,
                    delay_interval: 0,
                    properties: PublishProperties::default(),
                }),
                username,
                password,
                properties: ConnectProperties::default(),
            }))
        }
        v4::Packet::ConnAck(a) => {
            let reason = [0x00, 0x84, 0x85, 0x88, 0x86, 0x87][a.code as usize];
            Packet::ConnAck(ConnAck {
                session_present: a.session_present,
                reason: ReasonCode(reason),
                properties: ConnAckProperties::default(),
            })
        }
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos_from(p.qos),
            retain: p.retain,
            topic: topic_from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: PublishProperties::default(),
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(PubAck::new(a.pkid)),
        v4::Packet::PubRec(a) => Packet::PubRec(PubAck::new(a.pkid)),
        v4::Packet::PubRel(a) => Packet::PubRel(PubAck::new(a.pkid)),
        v4::Packet::PubComp(a) => Packet::PubComp(PubAck::new(a.pkid)),
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| Subscription {
                    filter: filter_from(f.path),
                    options: SubscriptionOptions {
                        qos: qos_from(f.qos),
                        ..Default::default()
                    },
                })
                .collect(),
            rejected: Vec::new(),
            properties: SubscribeProperties::default(),
        }),
        v4::Packet::SubAck(a) => Packet::SubAck(SubAck {
            pkid: a.pkid,
            reasons: a
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => ReasonCode(q as u8),
                    v4::SubscribeReasonCode::Failure => ReasonCode(0x80),
                })
                .collect(),
            properties: AckProperties::default(),
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics.into_iter().map(filter_from).collect(),
            rejected: Vec::new(),
            user_properties: Vec::new(),
        }),
        v4::Packet::UnsubAck(a) => Packet::UnsubAck(UnsubAck {
            pkid: a.pkid,
            reasons: Vec::new(),
            properties: AckProperties::default(),
        }),
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::PingResp => Packet::PingResp,
        v4::Packet::Disconnect => Packet::Disconnect(Disconnect::new(ReasonCode(0))),
    }
}

fn write_v4(p: &v4::Packet, buf: &mut BytesMut) {
    let r = match p {
        v4::Packet::Connect(c) => c.write(buf),
        v4::Packet::ConnAck(c) => c.write(buf),
        v4::Packet::Publish(c) => c.write(buf),
        v4::Packet::PubAck(c) => c.write(buf),
        v4::Packet::PubRec(c) => c.write(buf),
        v4::Packet::PubRel(c) => c.write(buf),
        v4::Packet::PubComp(c) => c.write(buf),
        v4::Packet::Subscribe(c) => c.write(buf),
        v4::Packet::SubAck(c) => c.write(buf),
        v4::Packet::Unsubscribe(c) => c.write(buf),
        v4::Packet::UnsubAck(c) => c.write(buf),
        v4::Packet::PingReq => v4::PingReq.write(buf),
        v4::Packet::PingResp => v4::PingResp.write(buf),
        v4::Packet::Disconnect => {
            buf.extend_from_slice(b"\xe0\x00");
            Ok(2)
        }
    };
    r.expect("mqttbytes v4 write");
}

fn decode_ours(
    p: &Packet,
    protocol: Protocol,
    buf: &mut BytesMut,
) -> Result<Option<Packet>, DecodeError> {
    let mut d = match p {
        Packet::Connect(_) => Decoder::new(usize::MAX),
        _ => Decoder::with_protocol(protocol, usize::MAX),
    };
    d.decode(buf)
}

// ---- 5.0 / v5 -------------------------------------------------------------------------------

fn publish_properties_to(p: &PublishProperties) -> Option<v5::PublishProperties> {
    (!p.is_empty()).then(|| v5::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: p.topic_alias,
        response_topic: p.response_topic.as_ref().map(|t| t.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties: users_to(&p.user_properties),
        subscription_identifiers: p
            .subscription_identifiers
            .iter()
            .map(|&i| i as usize)
            .collect(),
        content_type: p.content_type.as_ref().map(string),
    })
}

fn publish_properties_from(p: Option<v5::PublishProperties>) -> PublishProperties {
    let Some(p) = p else {
        return PublishProperties::default();
    };
    PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: p.topic_alias,
        response_topic: p.response_topic.map(topic_from),
        correlation_data: p.correlation_data,
        user_properties: users_from(p.user_properties),
        subscription_identifiers: p
            .subscription_identifiers
            .into_iter()
            .map(|i| i as u32)
            .collect(),
        content_type: p.content_type.map(ours),
    }
}

fn puback_reason(r: ReasonCode) -> Option<v5::PubAckReason> {
    use v5::PubAckReason::*;
    Some(match r.0 {
        0 => Success,
        16 => NoMatchingSubscribers,
        128 => UnspecifiedError,
        131 => ImplementationSpecificError,
        135 => NotAuthorized,
        144 => TopicNameInvalid,
        145 => PacketIdentifierInUse,
        151 => QuotaExceeded,
        153 => PayloadFormatInvalid,
        _ => return None,
    })
}

fn to_v5(p: &Packet) -> Option<v5::Packet> {
    Some(match p {
        Packet::Connect(c) => {
            let cp = &c.properties;
            v5::Packet::Connect(v5::Connect {
                protocol: mqttbytes::Protocol::V5,
                keep_alive: c.keep_alive,
                client_id: string(&c.client_id),
                clean_session: c.clean_start,
                last_will: c.will.as_ref().map(|w| {
                    let wp = &w.properties;
                    let empty = wp.is_empty() && w.delay_interval == 0;
                    v5::LastWill {
                        topic: w.topic.to_string(),
                        message: w.payload.clone(),
                        qos: qos_to(w.qos),
                        retain: w.retain,
                        properties: (!empty).then(|| v5::WillProperties {
                            delay_interval: (w.delay_interval != 0).then_some(w.delay_interval),
                            payload_format_indicator: wp.payload_format_indicator,
                            message_expiry_interval: wp.message_expiry_interval,
                            content_type: wp.content_type.as_ref().map(string),
                            response_topic: wp.response_topic.as_ref().map(|t| t.to_string()),
                            correlation_data: wp.correlation_data.clone(),
                            user_properties: users_to(&wp.user_properties),
                        }),
                    }
                }),
                login: login(c)?.map(|(username, password)| v5::Login { username, password }),
                properties: (*cp != ConnectProperties::default()).then(|| v5::ConnectProperties {
                    session_expiry_interval: cp.session_expiry_interval,
                    receive_maximum: cp.receive_maximum,
                    max_packet_size: cp.maximum_packet_size,
                    topic_alias_max: cp.topic_alias_maximum,
                    request_response_info: cp.request_response_information.map(u8::from),
                    request_problem_info: cp.request_problem_information.map(u8::from),
                    user_properties: users_to(&cp.user_properties),
                    authentication_method: cp.authentication_method.as_ref().map(string),
                    authentication_data: cp.authentication_data.clone(),
                }),
            })
        }
        Packet::Publish(p) => v5::Packet::Publish(v5::Publish {
            dup: p.dup,
            qos: qos_to(p.qos),
            retain: p.retain,
            topic: p.topic.to_string(),
            pkid: p.pkid,
            properties: publish_properties_to(&p.properties),
            payload: p.payload.clone(),
        }),
        Packet::PubAck(a) => v5::Packet::PubAck(v5::PubAck {
            pkid: a.pkid,
            reason: puback_reason(a.reason)?,
            properties: (a.properties != AckProperties::default()).then(|| v5::PubAckProperties {
                reason_string: a.properties.reason_string.as_ref().map(string),
                user_properties: users_to(&a.properties.user_properties),
            }),
        }),
        Packet::Subscribe(s) => v5::Packet::Subscribe(v5::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .iter()
                .map(|f| v5::SubscribeFilter {
                    path: f.filter.to_string(),
                    qos: qos_to(f.options.qos),
                    nolocal: f.options.no_local,
                    preserve_retain: f.options.retain_as_published,
                    retain_forward_rule: match f.options.retain_handling {
                        RetainHandling::OnSubscribe => v5::RetainForwardRule::OnEverySubscribe,
                        RetainHandling::OnNewSubscription => v5::RetainForwardRule::OnNewSubscribe,
                        RetainHandling::Never => v5::RetainForwardRule::Never,
                    },
                })
                .collect(),
            properties: (s.properties != SubscribeProperties::default()).then(|| {
                v5::SubscribeProperties {
                    id: s.properties.subscription_identifier.map(|i| i as usize),
                    user_properties: users_to(&s.properties.user_properties),
                }
            }),
        }),
        Packet::SubAck(a) => v5::Packet::SubAck(v5::SubAck {
            pkid: a.pkid,
            return_codes: a
                .reasons
                .iter()
                .map(|r| v5::SubscribeReasonCode::try_from(r.0).ok())
                .collect::<Option<Vec<_>>>()?,
            properties: (a.properties != AckProperties::default()).then(|| v5::SubAckProperties {
                reason_string: a.properties.reason_string.as_ref().map(string),
                user_properties: users_to(&a.properties.user_properties),
            }),
        }),
        Packet::Unsubscribe(u) => v5::Packet::Unsubscribe(v5::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters.iter().map(|f| f.to_string()).collect(),
            properties: (!u.user_properties.is_empty()).then(|| v5::UnsubscribeProperties {
                user_properties: users_to(&u.user_properties),
            }),
        }),
        Packet::PingReq => v5::Packet::PingReq,
        Packet::PingResp => v5::Packet::PingResp,
        _ => return None,
    })
}

fn from_v5(p: v5::Packet) -> Packet {
    match p {
        v5::Packet::Connect(c) => {
            let (username, password) = login_from(c.login.map(|l| (l.username, l.password)));
            let properties =
                c.properties
                    .map_or_else(ConnectProperties::default, |p| ConnectProperties {
                        session_expiry_interval: p.session_expiry_interval,
                        receive_maximum: p.receive_maximum,
                        maximum_packet_size: p.max_packet_size,
                        topic_alias_maximum: p.topic_alias_max,
                        request_response_information: p.request_response_info.map(|v| v == 1),
                        request_problem_information: p.request_problem_info.map(|v| v == 1),
                        user_properties: users_from(p.user_properties),
                        authentication_method: p.authentication_method.map(ours),
                        authentication_data: p.authentication_data,
                    });
            Packet::Connect(Box::new(Connect {
                protocol: Protocol::V5,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: ours(c.client_id),
                will: c.last_will.map(|w| {
                    let wp = w.properties;
                    LastWill {
                        topic: topic_from(w.topic),
                        payload: w.message,
                        qos: qos_from(w.qos),
                        retain: w.retain,
                        delay_interval: wp.as_ref().and_then(|p| p.delay_interval).unwrap_or(0),
                        properties: wp.map_or_else(PublishProperties::default, |p| {
                            PublishProperties {
                                payload_format_indicator: p.payload_format_indicator,
                                message_expiry_interval: p.message_expiry_interval,
                                response_topic: p.response_topic.map(topic_from),
                                correlation_data: p.correlation_data,
                                user_properties: users_from(p.user_properties),
                                content_type: p.content_type.map(ours),
                                ..Default::default()
                            }
                        }),
                    }
                }),
                username,
                password,
                properties,
            }))
        }
        v5::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos_from(p.qos),
            retain: p.retain,
            topic: if p.topic.is_empty() {
                TopicName::default()
            } else {
                topic_from(p.topic)
            },
            pkid: p.pkid,
            payload: p.payload,
            properties: publish_properties_from(p.properties),
        }),
        v5::Packet::PubAck(a) => Packet::PubAck(PubAck {
            pkid: a.pkid,
            reason: ReasonCode(a.reason as u8),
            properties: a
                .properties
                .map_or_else(AckProperties::default, |p| AckProperties {
                    reason_string: p.reason_string.map(ours),
                    user_properties: users_from(p.user_properties),
                }),
        }),
        v5::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| Subscription {
                    filter: filter_from(f.path),
                    options: SubscriptionOptions {
                        qos: qos_from(f.qos),
                        no_local: f.nolocal,
                        retain_as_published: f.preserve_retain,
                        retain_handling: match f.retain_forward_rule {
                            v5::RetainForwardRule::OnEverySubscribe => RetainHandling::OnSubscribe,
                            v5::RetainForwardRule::OnNewSubscribe => {
                                RetainHandling::OnNewSubscription
                            }
                            v5::RetainForwardRule::Never => RetainHandling::Never,
                        },
                    },
                })
                .collect(),
            rejected: Vec::new(),
            properties: s.properties.map_or_else(SubscribeProperties::default, |p| {
                SubscribeProperties {
                    subscription_identifier: p.id.map(|i| i as u32),
                    user_properties: users_from(p.user_properties),
                }
            }),
        }),
        v5::Packet::SubAck(a) => Packet::SubAck(SubAck {
            pkid: a.pkid,
            reasons: a
                .return_codes
                .into_iter()
                .map(|c| ReasonCode(c as u8))
                .collect(),
            properties: a
                .properties
                .map_or_else(AckProperties::default, |p| AckProperties {
                    reason_string: p.reason_string.map(ours),
                    user_properties: users_from(p.user_properties),
                }),
        }),
        v5::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.filters.into_iter().map(filter_from).collect(),
            rejected: Vec::new(),
            user_properties: u
                .properties
                .map(|p| users_from(p.user_properties))
                .unwrap_or_default(),
        }),
        v5::Packet::PingReq => Packet::PingReq,
        v5::Packet::PingResp => Packet::PingResp,
        other => panic!("not compared: {other:?}"),
    }
}

fn write_v5(p: &v5::Packet, buf: &mut BytesMut) {
    let r = match p {
        v5::Packet::Connect(c) => c.write(buf),
        v5::Packet::Publish(c) => c.write(buf),
        v5::Packet::PubAck(c) => c.write(buf),
        v5::Packet::Subscribe(c) => c.write(buf),
        v5::Packet::SubAck(c) => c.write(buf),
        v5::Packet::Unsubscribe(c) => c.write(buf),
        v5::Packet::PingReq => v5::PingReq.write(buf),
        v5::Packet::PingResp => v5::PingResp.write(buf),
        other => panic!("not compared: {other:?}"),
    };
    r.expect("mqttbytes v5 write");
}

// ---- the properties -------------------------------------------------------------------------

fn ours_then_theirs(p: &Packet, protocol: Protocol) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(p, protocol, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let theirs = if protocol.is_v5() {
        v5::read(&mut buf, usize::MAX).map(from_v5)
    } else {
        v4::read(&mut buf, usize::MAX).map(from_v4)
    };
    let theirs = theirs
        .map_err(|e| TestCaseError::fail(format!("mqttbytes cannot read our {p:?}: {e:?}")))?;
    prop_assert_eq!(&theirs, p);
    Ok(())
}

fn theirs_then_ours(p: &Packet, protocol: Protocol) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    if protocol.is_v5() {
        let Some(theirs) = to_v5(p) else {
            return Ok(());
        };
        write_v5(&theirs, &mut buf);
    } else {
        let Some(theirs) = to_v4(p) else {
            return Ok(());
        };
        write_v4(&theirs, &mut buf);
    }
    prop_assert_eq!(decode_ours(p, protocol, &mut buf), Ok(Some(p.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

/// Packets of the kinds compared at `protocol`, representable in mqttbytes' model.
fn comparable(p: &Packet, protocol: Protocol) -> bool {
    if protocol.is_v5() {
        to_v5(p).is_some()
    } else {
        to_v4(p).is_some()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn v311_ours_read_by_mqttbytes(p in strategies::packet(Protocol::V311)) {
        prop_assume!(comparable(&p, Protocol::V311));
        ours_then_theirs(&p, Protocol::V311)?;
    }

    #[test]
    fn v311_mqttbytes_read_by_ours(p in strategies::packet(Protocol::V311)) {
        prop_assume!(comparable(&p, Protocol::V311));
        theirs_then_ours(&p, Protocol::V311)?;
    }

    #[test]
    fn v5_ours_read_by_mqttbytes(p in strategies::packet(Protocol::V5)) {
        prop_assume!(comparable(&p, Protocol::V5));
        ours_then_theirs(&p, Protocol::V5)?;
    }

    #[test]
    fn v5_mqttbytes_read_by_ours(p in strategies::packet(Protocol::V5)) {
        prop_assume!(comparable(&p, Protocol::V5));
        theirs_then_ours(&p, Protocol::V5)?;
    }
}

/// The fixtures mqttbytes can read give the same packet through it.
#[test]
fn fixtures_read_by_mqttbytes() {
    use sluice_codec::fixtures::FIXTURES;
    let mut compared = 0;
    for f in FIXTURES.iter().filter(|f| f.protocol != Protocol::V31) {
        let packet = (f.packet)();
        if !comparable(&packet, f.protocol) {
            continue;
        }
        let mut buf = BytesMut::from(f.bytes);
        let theirs = if f.protocol.is_v5() {
            v5::read(&mut buf, usize::MAX).map(from_v5)
        } else {
            v4::read(&mut buf, usize::MAX).map(from_v4)
        };
        assert_eq!(theirs.as_ref().ok(), Some(&packet), "{}", f.name);
        compared += 1;
    }
    assert!(compared >= 20, "{compared}");
}
