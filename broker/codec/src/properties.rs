//! 5.0 properties (2.2.2): one decoder and one emitter per property set.
//!
//! Decoding reads the Property Length, then only the bytes it covers: a property that runs past
//! the block, or a block that runs past the packet, is malformed and nothing is read from the
//! payload. A property not allowed in the packet is malformed; a repeated single-valued property
//! and an out-of-range value are protocol errors, as the standard says for each property.
//!
//! Emitting is generic over [`Sink`] so the same code measures and writes a property block and
//! the two can never disagree about its length.

use bytes::Bytes;

use crate::encode::Sink;
use crate::error::{DecodeError, EncodeError};
use crate::packet::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, QoS, SubscribeProperties, UserProperty,
};
use crate::read::{malformed, protocol, Reader};
use crate::types::{Str, TopicName};
use crate::MAX_REMAINING_LENGTH;

// Property identifiers (2.2.2.2).
const PAYLOAD_FORMAT_INDICATOR: u32 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u32 = 0x02;
const CONTENT_TYPE: u32 = 0x03;
const RESPONSE_TOPIC: u32 = 0x08;
const CORRELATION_DATA: u32 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u32 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u32 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u32 = 0x12;
const SERVER_KEEP_ALIVE: u32 = 0x13;
const AUTHENTICATION_METHOD: u32 = 0x15;
const AUTHENTICATION_DATA: u32 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u32 = 0x17;
const WILL_DELAY_INTERVAL: u32 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u32 = 0x19;
const RESPONSE_INFORMATION: u32 = 0x1A;
const SERVER_REFERENCE: u32 = 0x1C;
const REASON_STRING: u32 = 0x1F;
const RECEIVE_MAXIMUM: u32 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u32 = 0x22;
const TOPIC_ALIAS: u32 = 0x23;
const MAXIMUM_QOS: u32 = 0x24;
const RETAIN_AVAILABLE: u32 = 0x25;
const USER_PROPERTY: u32 = 0x26;
const MAXIMUM_PACKET_SIZE: u32 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u32 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u32 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u32 = 0x2A;

const DUPLICATE: DecodeError = protocol("property included more than once", "(2.2.2.2)");
const NOT_ALLOWED: DecodeError = malformed("property not allowed in this packet", "(2.2.2.2)");

/// Stores a single-valued property; a second occurrence is a protocol error.
macro_rules! once {
    ($slot:expr, $value:expr) => {{
        if $slot.is_some() {
            return Err(DUPLICATE);
        }
        $slot = Some($value);
    }};
}

/// Reads the Property Length and returns a reader over exactly that block.
fn block<'a>(r: &mut Reader<'a>) -> Result<Reader<'a>, DecodeError> {
    let len = r.varint()? as usize;
    r.sub(len, "property length runs past the end of the packet")
}

/// A Byte property that must be 0 or 1.
fn boolean(p: &mut Reader<'_>) -> Result<bool, DecodeError> {
    match p.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(protocol(
            "boolean property other than 0 or 1",
            "(3.1.2.11 / 3.2.2.3)",
        )),
    }
}

fn non_zero_u16(p: &mut Reader<'_>, what: &'static str) -> Result<u16, DecodeError> {
    match p.u16()? {
        0 => Err(protocol(what, "(3.1.2.11.3 / 3.3.2.3.4)")),
        v => Ok(v),
    }
}

fn user_property(p: &mut Reader<'_>) -> Result<UserProperty, DecodeError> {
    Ok((p.string()?, p.string()?))
}

fn subscription_identifier(p: &mut Reader<'_>) -> Result<u32, DecodeError> {
    match p.varint()? {
        0 => Err(protocol("subscription identifier 0", "(3.8.2.1.2)")),
        v => Ok(v),
    }
}

/// Reads a property that may appear in PUBLISH and in the will properties. Returns false when
/// `id` is not one of them.
fn publish_property(
    id: u32,
    p: &mut Reader<'_>,
    props: &mut PublishProperties,
) -> Result<bool, DecodeError> {
    match id {
        PAYLOAD_FORMAT_INDICATOR => match p.u8()? {
            v @ (0 | 1) => once!(props.payload_format_indicator, v),
            _ => {
                return Err(protocol(
                    "payload format indicator not 0 or 1",
                    "(3.3.2.3.2)",
                ))
            }
        },
        MESSAGE_EXPIRY_INTERVAL => once!(props.message_expiry_interval, p.u32()?),
        CONTENT_TYPE => once!(props.content_type, p.string()?),
        RESPONSE_TOPIC => {
            let topic = TopicName::new(p.string()?)
                .map_err(|_| protocol("response topic contains a wildcard", "[MQTT-3.3.2-14]"))?;
            once!(props.response_topic, topic)
        }
        CORRELATION_DATA => once!(props.correlation_data, p.binary()?),
        USER_PROPERTY => props.user_properties.push(user_property(p)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// PUBLISH properties (3.3.2.3).
pub(crate) fn decode_publish(r: &mut Reader<'_>) -> Result<PublishProperties, DecodeError> {
    let mut p = block(r)?;
    let mut props = PublishProperties::default();
    while !p.is_empty() {
        let id = p.varint()?;
        if publish_property(id, &mut p, &mut props)? {
            continue;
        }
        match id {
            TOPIC_ALIAS => once!(
                props.topic_alias,
                match p.u16()? {
                    0 => return Err(DecodeError::TopicAliasZero),
                    v => v,
                }
            ),
            SUBSCRIPTION_IDENTIFIER => {
                let v = subscription_identifier(&mut p)?;
                props.subscription_identifiers.push(v)
            }
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(props)
}

/// Will properties (3.1.3.2): the publish-like properties and the Will Delay Interval.
pub(crate) fn decode_will(r: &mut Reader<'_>) -> Result<(PublishProperties, u32), DecodeError> {
    let mut p = block(r)?;
    let mut props = PublishProperties::default();
    let mut delay = None;
    while !p.is_empty() {
        let id = p.varint()?;
        if publish_property(id, &mut p, &mut props)? {
            continue;
        }
        match id {
            WILL_DELAY_INTERVAL => once!(delay, p.u32()?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok((props, delay.unwrap_or(0)))
}

/// CONNECT properties (3.1.2.11).
pub(crate) fn decode_connect(r: &mut Reader<'_>) -> Result<ConnectProperties, DecodeError> {
    let mut p = block(r)?;
    let mut props = ConnectProperties::default();
    while !p.is_empty() {
        match p.varint()? {
            SESSION_EXPIRY_INTERVAL => once!(props.session_expiry_interval, p.u32()?),
            RECEIVE_MAXIMUM => {
                once!(
                    props.receive_maximum,
                    non_zero_u16(&mut p, "receive maximum 0")?
                )
            }
            MAXIMUM_PACKET_SIZE => once!(props.maximum_packet_size, max_packet_size(&mut p)?),
            TOPIC_ALIAS_MAXIMUM => once!(props.topic_alias_maximum, p.u16()?),
            REQUEST_RESPONSE_INFORMATION => {
                once!(props.request_response_information, boolean(&mut p)?)
            }
            REQUEST_PROBLEM_INFORMATION => {
                once!(props.request_problem_information, boolean(&mut p)?)
            }
            USER_PROPERTY => props.user_properties.push(user_property(&mut p)?),
            AUTHENTICATION_METHOD => once!(props.authentication_method, p.string()?),
            AUTHENTICATION_DATA => once!(props.authentication_data, p.binary()?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(protocol(
            "authentication data without a method",
            "(3.1.2.11.10)",
        ));
    }
    Ok(props)
}

fn max_packet_size(p: &mut Reader<'_>) -> Result<u32, DecodeError> {
    match p.u32()? {
        0 => Err(protocol("maximum packet size 0", "(3.1.2.11.4)")),
        v => Ok(v),
    }
}

/// CONNACK properties (3.2.2.3).
pub(crate) fn decode_connack(r: &mut Reader<'_>) -> Result<ConnAckProperties, DecodeError> {
    let mut p = block(r)?;
    let mut props = ConnAckProperties::default();
    while !p.is_empty() {
        match p.varint()? {
            SESSION_EXPIRY_INTERVAL => once!(props.session_expiry_interval, p.u32()?),
            RECEIVE_MAXIMUM => {
                once!(
                    props.receive_maximum,
                    non_zero_u16(&mut p, "receive maximum 0")?
                )
            }
            MAXIMUM_QOS => match p.u8()? {
                0 => once!(props.maximum_qos, QoS::AtMostOnce),
                1 => once!(props.maximum_qos, QoS::AtLeastOnce),
                _ => return Err(protocol("maximum QoS other than 0 or 1", "(3.2.2.3.4)")),
            },
            RETAIN_AVAILABLE => once!(props.retain_available, boolean(&mut p)?),
            MAXIMUM_PACKET_SIZE => once!(props.maximum_packet_size, max_packet_size(&mut p)?),
            ASSIGNED_CLIENT_IDENTIFIER => {
                once!(props.assigned_client_identifier, p.string()?)
            }
            TOPIC_ALIAS_MAXIMUM => once!(props.topic_alias_maximum, p.u16()?),
            REASON_STRING => once!(props.reason_string, p.string()?),
            USER_PROPERTY => props.user_properties.push(user_property(&mut p)?),
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                once!(props.wildcard_subscription_available, boolean(&mut p)?)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                once!(props.subscription_identifiers_available, boolean(&mut p)?)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                once!(props.shared_subscription_available, boolean(&mut p)?)
            }
            SERVER_KEEP_ALIVE => once!(props.server_keep_alive, p.u16()?),
            RESPONSE_INFORMATION => once!(props.response_information, p.string()?),
            SERVER_REFERENCE => once!(props.server_reference, p.string()?),
            AUTHENTICATION_METHOD => once!(props.authentication_method, p.string()?),
            AUTHENTICATION_DATA => once!(props.authentication_data, p.binary()?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(props)
}

/// Reason String and User Properties: PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK.
pub(crate) fn decode_ack(r: &mut Reader<'_>) -> Result<AckProperties, DecodeError> {
    let mut p = block(r)?;
    let mut props = AckProperties::default();
    while !p.is_empty() {
        match p.varint()? {
            REASON_STRING => once!(props.reason_string, p.string()?),
            USER_PROPERTY => props.user_properties.push(user_property(&mut p)?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(props)
}

/// SUBSCRIBE properties (3.8.2.1).
pub(crate) fn decode_subscribe(r: &mut Reader<'_>) -> Result<SubscribeProperties, DecodeError> {
    let mut p = block(r)?;
    let mut props = SubscribeProperties::default();
    while !p.is_empty() {
        match p.varint()? {
            SUBSCRIPTION_IDENTIFIER => {
                once!(
                    props.subscription_identifier,
                    subscription_identifier(&mut p)?
                )
            }
            USER_PROPERTY => props.user_properties.push(user_property(&mut p)?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(props)
}

/// UNSUBSCRIBE properties (3.10.2.1): only User Properties.
pub(crate) fn decode_unsubscribe(r: &mut Reader<'_>) -> Result<Vec<UserProperty>, DecodeError> {
    let mut p = block(r)?;
    let mut user_properties = Vec::new();
    while !p.is_empty() {
        match p.varint()? {
            USER_PROPERTY => user_properties.push(user_property(&mut p)?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(user_properties)
}

/// DISCONNECT properties (3.14.2.2).
pub(crate) fn decode_disconnect(r: &mut Reader<'_>) -> Result<DisconnectProperties, DecodeError> {
    let mut p = block(r)?;
    let mut props = DisconnectProperties::default();
    while !p.is_empty() {
        match p.varint()? {
            SESSION_EXPIRY_INTERVAL => once!(props.session_expiry_interval, p.u32()?),
            REASON_STRING => once!(props.reason_string, p.string()?),
            USER_PROPERTY => props.user_properties.push(user_property(&mut p)?),
            SERVER_REFERENCE => once!(props.server_reference, p.string()?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(props)
}

/// AUTH properties (3.15.2.2).
pub(crate) fn decode_auth(r: &mut Reader<'_>) -> Result<AuthProperties, DecodeError> {
    let mut p = block(r)?;
    let mut props = AuthProperties::default();
    while !p.is_empty() {
        match p.varint()? {
            AUTHENTICATION_METHOD => once!(props.authentication_method, p.string()?),
            AUTHENTICATION_DATA => once!(props.authentication_data, p.binary()?),
            REASON_STRING => once!(props.reason_string, p.string()?),
            USER_PROPERTY => props.user_properties.push(user_property(&mut p)?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(props)
}

// ---------------------------------------------------------------------------------------------
// Emitting. Each function writes the properties only (no length); `Sink::props` adds the length.
// Values the decoder would refuse are refused here too, so what we send is what we accept.

fn byte<S: Sink>(s: &mut S, id: u32, v: Option<u8>) {
    if let Some(v) = v {
        s.u8(id as u8);
        s.u8(v);
    }
}

fn boolean_prop<S: Sink>(s: &mut S, id: u32, v: Option<bool>) {
    byte(s, id, v.map(u8::from));
}

fn two<S: Sink>(s: &mut S, id: u32, v: Option<u16>) {
    if let Some(v) = v {
        s.u8(id as u8);
        s.u16(v);
    }
}

fn four<S: Sink>(s: &mut S, id: u32, v: Option<u32>) {
    if let Some(v) = v {
        s.u8(id as u8);
        s.u32(v);
    }
}

fn string<S: Sink>(
    s: &mut S,
    id: u32,
    field: &'static str,
    v: Option<&Str>,
) -> Result<(), EncodeError> {
    if let Some(v) = v {
        s.u8(id as u8);
        s.prefixed(field, v.as_bytes())?;
    }
    Ok(())
}

fn binary<S: Sink>(
    s: &mut S,
    id: u32,
    field: &'static str,
    v: Option<&Bytes>,
) -> Result<(), EncodeError> {
    if let Some(v) = v {
        s.u8(id as u8);
        s.prefixed(field, v)?;
    }
    Ok(())
}

fn users<S: Sink>(s: &mut S, users: &[UserProperty]) -> Result<(), EncodeError> {
    for (k, v) in users {
        s.u8(USER_PROPERTY as u8);
        s.prefixed("user property name", k.as_bytes())?;
        s.prefixed("user property value", v.as_bytes())?;
    }
    Ok(())
}

fn non_zero(v: Option<impl Into<u32> + Copy>, what: &'static str) -> Result<(), EncodeError> {
    match v {
        Some(v) if v.into() == 0 => Err(EncodeError::InvalidValue(what)),
        _ => Ok(()),
    }
}

/// PUBLISH properties, or the will properties when `will_delay` is given.
pub(crate) fn emit_publish<S: Sink>(
    s: &mut S,
    p: &PublishProperties,
    will_delay: Option<u32>,
) -> Result<(), EncodeError> {
    if matches!(p.payload_format_indicator, Some(v) if v > 1) {
        return Err(EncodeError::InvalidValue(
            "payload format indicator must be 0 or 1",
        ));
    }
    non_zero(p.topic_alias, "topic alias 0")?;
    if will_delay.is_some() && (p.topic_alias.is_some() || !p.subscription_identifiers.is_empty()) {
        return Err(EncodeError::InvalidValue(
            "will properties cannot carry a topic alias or subscription identifier",
        ));
    }
    if let Some(delay) = will_delay.filter(|&d| d != 0) {
        four(s, WILL_DELAY_INTERVAL, Some(delay));
    }
    byte(s, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    four(s, MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    two(s, TOPIC_ALIAS, p.topic_alias);
    string(
        s,
        RESPONSE_TOPIC,
        "response topic",
        p.response_topic.as_ref().map(|t| t.as_mqtt_str()),
    )?;
    binary(
        s,
        CORRELATION_DATA,
        "correlation data",
        p.correlation_data.as_ref(),
    )?;
    users(s, &p.user_properties)?;
    for &id in &p.subscription_identifiers {
        if id == 0 || id as usize > MAX_REMAINING_LENGTH {
            return Err(EncodeError::InvalidValue(
                "subscription identifier outside 1..=268,435,455",
            ));
        }
        s.u8(SUBSCRIPTION_IDENTIFIER as u8);
        s.varint(id);
    }
    string(s, CONTENT_TYPE, "content type", p.content_type.as_ref())
}

pub(crate) fn emit_connect<S: Sink>(s: &mut S, p: &ConnectProperties) -> Result<(), EncodeError> {
    non_zero(p.receive_maximum, "receive maximum 0")?;
    non_zero(p.maximum_packet_size, "maximum packet size 0")?;
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(EncodeError::InvalidValue(
            "authentication data without a method",
        ));
    }
    four(s, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    two(s, RECEIVE_MAXIMUM, p.receive_maximum);
    four(s, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    two(s, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    boolean_prop(
        s,
        REQUEST_RESPONSE_INFORMATION,
        p.request_response_information,
    );
    boolean_prop(
        s,
        REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information,
    );
    users(s, &p.user_properties)?;
    string(
        s,
        AUTHENTICATION_METHOD,
        "authentication method",
        p.authentication_method.as_ref(),
    )?;
    binary(
        s,
        AUTHENTICATION_DATA,
        "authentication data",
        p.authentication_data.as_ref(),
    )
}

pub(crate) fn emit_connack<S: Sink>(s: &mut S, p: &ConnAckProperties) -> Result<(), EncodeError> {
    non_zero(p.receive_maximum, "receive maximum 0")?;
    non_zero(p.maximum_packet_size, "maximum packet size 0")?;
    let max_qos = match p.maximum_qos {
        None => None,
        Some(QoS::AtMostOnce) => Some(0),
        Some(QoS::AtLeastOnce) => Some(1),
        Some(QoS::ExactlyOnce) => {
            return Err(EncodeError::InvalidValue(
                "maximum QoS 2 is expressed by leaving it out",
            ))
        }
    };
    four(s, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    two(s, RECEIVE_MAXIMUM, p.receive_maximum);
    byte(s, MAXIMUM_QOS, max_qos);
    boolean_prop(s, RETAIN_AVAILABLE, p.retain_available);
    four(s, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    string(
        s,
        ASSIGNED_CLIENT_IDENTIFIER,
        "assigned client identifier",
        p.assigned_client_identifier.as_ref(),
    )?;
    two(s, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    string(s, REASON_STRING, "reason string", p.reason_string.as_ref())?;
    users(s, &p.user_properties)?;
    boolean_prop(
        s,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    boolean_prop(
        s,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifiers_available,
    );
    boolean_prop(
        s,
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    two(s, SERVER_KEEP_ALIVE, p.server_keep_alive);
    string(
        s,
        RESPONSE_INFORMATION,
        "response information",
        p.response_information.as_ref(),
    )?;
    string(
        s,
        SERVER_REFERENCE,
        "server reference",
        p.server_reference.as_ref(),
    )?;
    string(
        s,
        AUTHENTICATION_METHOD,
        "authentication method",
        p.authentication_method.as_ref(),
    )?;
    binary(
        s,
        AUTHENTICATION_DATA,
        "authentication data",
        p.authentication_data.as_ref(),
    )
}

pub(crate) fn emit_ack<S: Sink>(s: &mut S, p: &AckProperties) -> Result<(), EncodeError> {
    string(s, REASON_STRING, "reason string", p.reason_string.as_ref())?;
    users(s, &p.user_properties)
}

pub(crate) fn emit_subscribe<S: Sink>(
    s: &mut S,
    p: &SubscribeProperties,
) -> Result<(), EncodeError> {
    if let Some(id) = p.subscription_identifier {
        if id == 0 || id as usize > MAX_REMAINING_LENGTH {
            return Err(EncodeError::InvalidValue(
                "subscription identifier outside 1..=268,435,455",
            ));
        }
        s.u8(SUBSCRIPTION_IDENTIFIER as u8);
        s.varint(id);
    }
    users(s, &p.user_properties)
}

pub(crate) fn emit_users<S: Sink>(s: &mut S, p: &[UserProperty]) -> Result<(), EncodeError> {
    users(s, p)
}

pub(crate) fn emit_disconnect<S: Sink>(
    s: &mut S,
    p: &DisconnectProperties,
) -> Result<(), EncodeError> {
    four(s, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    string(s, REASON_STRING, "reason string", p.reason_string.as_ref())?;
    users(s, &p.user_properties)?;
    string(
        s,
        SERVER_REFERENCE,
        "server reference",
        p.server_reference.as_ref(),
    )
}

pub(crate) fn emit_auth<S: Sink>(s: &mut S, p: &AuthProperties) -> Result<(), EncodeError> {
    string(
        s,
        AUTHENTICATION_METHOD,
        "authentication method",
        p.authentication_method.as_ref(),
    )?;
    binary(
        s,
        AUTHENTICATION_DATA,
        "authentication data",
        p.authentication_data.as_ref(),
    )?;
    string(s, REASON_STRING, "reason string", p.reason_string.as_ref())?;
    users(s, &p.user_properties)
}
