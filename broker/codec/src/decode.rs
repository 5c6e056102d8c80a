//! The resumable decoder: fixed header first (size limit, type, flags), then one parser per
//! packet type working on the complete frame. The protocol level selects the variant of each
//! parser; there is one parser per packet, not one tree per version.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::*;
use crate::properties as props;
use crate::read::{malformed, protocol, read_varint, Reader};
use crate::types::ReasonCode;

/// A resumable decoder for one connection.
///
/// A server-side decoder ([`Decoder::new`]) accepts only CONNECT until one is decoded and then
/// speaks that CONNECT's protocol level; a client-side decoder ([`Decoder::with_protocol`])
/// knows its level from the start. Either accepts every packet type after that: which side may
/// send what is the protocol layer's business.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// The level chosen by CONNECT; `None` until then (only CONNECT is accepted).
    protocol: Option<Protocol>,
    /// The largest whole packet (fixed header included) this side accepts.
    max_packet_size: usize,
}

/// What the fixed header says about the frame at the front of the buffer.
struct FixedHeader {
    /// The first byte: packet type and flags.
    byte: u8,
    /// Length of the fixed header (1 + the remaining length's bytes).
    header_len: usize,
    /// The whole frame: header and remaining length.
    frame_len: usize,
}

impl Decoder {
    /// A decoder that has not seen CONNECT yet.
    pub fn new(max_packet_size: usize) -> Decoder {
        Decoder {
            protocol: None,
            max_packet_size,
        }
    }

    /// A decoder for a known protocol level (client side, tests).
    pub fn with_protocol(protocol: Protocol, max_packet_size: usize) -> Decoder {
        Decoder {
            protocol: Some(protocol),
            max_packet_size,
        }
    }

    /// The protocol level, once known.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// The largest whole packet accepted from now on.
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Changes the largest whole packet accepted (e.g. once CONNECT negotiated a smaller one).
    pub fn set_max_packet_size(&mut self, max_packet_size: usize) {
        self.max_packet_size = max_packet_size;
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// * `Ok(None)`: the frame is not complete yet; nothing was consumed.
    /// * `Ok(Some(packet))`: the frame was consumed.
    /// * `Err(_)`: the connection must be closed. An error found in the body comes after the whole
    ///   frame was consumed; an error in the fixed header itself (bad length encoding, packet too
    ///   large, bad type or flags) consumes nothing, since the stream cannot be resynchronised.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(header) = self.fixed_header(buf)? else {
            return Ok(None);
        };
        if buf.len() < header.frame_len {
            return Ok(None);
        }
        let body = &buf[header.header_len..header.frame_len];
        let result = self.decode_body(header.byte, body);
        buf.advance(header.frame_len);
        let packet = result?;
        if let Packet::Connect(c) = &packet {
            // The first CONNECT fixes the level; a second one is the protocol layer's to refuse.
            self.protocol.get_or_insert(c.protocol);
        }
        Ok(Some(packet))
    }

    /// Parses and checks the fixed header without consuming anything.
    fn fixed_header(&self, buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
        let Some(&byte) = buf.first() else {
            return Ok(None);
        };
        check_type_and_flags(byte, self.protocol)?;
        let Some((remaining, len_bytes)) = read_varint(&buf[1..])? else {
            return Ok(None);
        };
        let header_len = 1 + len_bytes;
        let frame_len = header_len + remaining as usize;
        if frame_len > self.max_packet_size {
            return Err(DecodeError::PacketTooLarge {
                size: frame_len,
                max: self.max_packet_size,
            });
        }
        Ok(Some(FixedHeader {
            byte,
            header_len,
            frame_len,
        }))
    }

    fn decode_body(&self, byte: u8, body: &[u8]) -> Result<Packet, DecodeError> {
        let mut r = Reader::new(body);
        let packet_type = byte >> 4;
        if packet_type == 1 {
            return Ok(Packet::Connect(Box::new(decode_connect(&mut r)?)));
        }
        // check_type_and_flags refused everything but CONNECT while the level is unknown.
        let p = self.protocol.ok_or(BEFORE_CONNECT)?;
        let packet = match packet_type {
            2 => Packet::ConnAck(decode_connack(&mut r, p)?),
            3 => Packet::Publish(decode_publish(byte, &mut r, p)?),
            4 => Packet::PubAck(decode_puback(&mut r, p)?),
            5 => Packet::PubRec(decode_puback(&mut r, p)?),
            6 => Packet::PubRel(decode_puback(&mut r, p)?),
            7 => Packet::PubComp(decode_puback(&mut r, p)?),
            8 => Packet::Subscribe(decode_subscribe(&mut r, p)?),
            9 => Packet::SubAck(decode_suback(&mut r, p)?),
            10 => Packet::Unsubscribe(decode_unsubscribe(&mut r, p)?),
            11 => Packet::UnsubAck(decode_unsuback(&mut r, p)?),
            12 => Packet::PingReq,
            13 => Packet::PingResp,
            14 => Packet::Disconnect(decode_disconnect(&mut r, p)?),
            _ => Packet::Auth(decode_auth(&mut r)?),
        };
        r.finish()?;
        Ok(packet)
    }
}

const BEFORE_CONNECT: DecodeError = protocol("first packet is not CONNECT", "[MQTT-3.1.0-1]");

/// Checks packet type and fixed-header flags (2.1.2, 2.1.3) from the first byte alone.
fn check_type_and_flags(byte: u8, level: Option<Protocol>) -> Result<(), DecodeError> {
    let (packet_type, flags) = (byte >> 4, byte & 0x0F);
    match packet_type {
        0 => return Err(malformed("reserved packet type 0", "(2.1.2)")),
        15 if level.is_some_and(|p| !p.is_v5()) => {
            return Err(malformed(
                "packet type 15 (AUTH) before MQTT 5.0",
                "(2.1.2)",
            ))
        }
        _ => {}
    }
    if packet_type != 1 && level.is_none() {
        return Err(BEFORE_CONNECT);
    }
    let (expected, clause) = match packet_type {
        3 => return Ok(()), // PUBLISH flags are checked with the packet
        6 => (0b0010, "[MQTT-3.6.1-1]"),
        8 => (0b0010, "[MQTT-3.8.1-1]"),
        10 => (0b0010, "[MQTT-3.10.1-1]"),
        _ => (0b0000, "[MQTT-2.1.3-1] (3.1.1: [MQTT-2.2.2-1])"),
    };
    if flags != expected {
        return Err(malformed("invalid fixed header flags", clause));
    }
    Ok(())
}

/// CONNECT (3.1). The protocol name and level choose the parser for the rest of the packet.
fn decode_connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let name = r.prefixed()?;
    let level = r.u8()?;
    let protocol = match (name, level) {
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        _ => return Err(DecodeError::UnsupportedProtocol { level }),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(malformed("CONNECT reserved flag is set", "[MQTT-3.1.2-3]"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos != 0 {
        return Err(malformed(
            "will QoS set without the will flag",
            "[MQTT-3.1.2-11] (3.1.1: [MQTT-3.1.2-13])",
        ));
    }
    if !will_flag && will_retain {
        return Err(malformed(
            "will retain set without the will flag",
            "[MQTT-3.1.2-13] (3.1.1: [MQTT-3.1.2-15])",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(malformed(
        "will QoS 3",
        "[MQTT-3.1.2-12] (3.1.1: [MQTT-3.1.2-14])",
    ))?;
    if password_flag && !username_flag && !protocol.is_v5() {
        return Err(malformed(
            "password flag without user name flag",
            "[MQTT-3.1.2-22]",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        props::decode_connect(r)?
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let (properties, delay_interval) = if protocol.is_v5() {
            props::decode_will(r)?
        } else {
            (PublishProperties::default(), 0)
        };
        let topic = r.topic_name()?;
        if topic.is_empty() {
            return Err(malformed("empty will topic", "[MQTT-4.7.3-1]"));
        }
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            delay_interval,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// CONNACK (3.2). 3.1.1 return codes are mapped to the equivalent 5.0 reason codes.
fn decode_connack(r: &mut Reader<'_>, p: Protocol) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(malformed(
            "CONNACK reserved flags are set",
            "[MQTT-3.2.2-1]",
        ));
    }
    let code = r.u8()?;
    let reason = if p.is_v5() {
        ReasonCode(code)
    } else {
        match code {
            0 => ReasonCode::SUCCESS,
            1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            3 => ReasonCode::SERVER_UNAVAILABLE,
            4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            5 => ReasonCode::NOT_AUTHORIZED,
            _ => return Err(malformed("reserved CONNACK return code", "(3.2.2.3)")),
        }
    };
    // A 5.0 CONNACK always carries a property length; there is no short form.
    let properties = if p.is_v5() {
        props::decode_connack(r)?
    } else {
        ConnAckProperties::default()
    };
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        reason,
        properties,
    })
}

/// PUBLISH (3.3).
fn decode_publish(byte: u8, r: &mut Reader<'_>, p: Protocol) -> Result<Publish, DecodeError> {
    let dup = byte & 0x08 != 0;
    let retain = byte & 0x01 != 0;
    let qos = QoS::from_u8((byte >> 1) & 0x03).ok_or(malformed("QoS 3", "[MQTT-3.3.1-4]"))?;
    if dup && qos == QoS::AtMostOnce {
        // The flags are well formed; the combination breaks a rule: Protocol Error (0x82), as
        // Mosquitto and EMQX answer it.
        return Err(protocol("DUP set on a QoS 0 PUBLISH", "[MQTT-3.3.1-2]"));
    }
    let topic = r.topic_name()?;
    let pkid = if qos == QoS::AtMostOnce { 0 } else { r.pkid()? };
    let properties = if p.is_v5() {
        props::decode_publish(r)?
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() {
        if !p.is_v5() {
            return Err(malformed("empty topic name", "[MQTT-4.7.3-1]"));
        }
        if properties.topic_alias.is_none() {
            return Err(protocol(
                "empty topic name without a topic alias",
                "(3.3.2.1)",
            ));
        }
    }
    let payload = Bytes::copy_from_slice(r.rest());
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        pkid,
        payload,
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (3.4 - 3.7). In 5.0 a remaining length of 2 means Success
/// and of 3 a reason code without properties (3.4.2.1).
fn decode_puback(r: &mut Reader<'_>, p: Protocol) -> Result<PubAck, DecodeError> {
    let pkid = r.pkid()?;
    if !p.is_v5() || r.is_empty() {
        return Ok(PubAck::new(pkid));
    }
    let reason = ReasonCode(r.u8()?);
    let properties = if r.is_empty() {
        AckProperties::default()
    } else {
        props::decode_ack(r)?
    };
    Ok(PubAck {
        pkid,
        reason,
        properties,
    })
}

/// SUBSCRIBE (3.8). Filters that are not valid topic filters go to `rejected`.
fn decode_subscribe(r: &mut Reader<'_>, p: Protocol) -> Result<Subscribe, DecodeError> {
    let pkid = r.pkid()?;
    let properties = if p.is_v5() {
        props::decode_subscribe(r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::new();
    let mut rejected = Vec::new();
    let mut index = 0;
    while !r.is_empty() {
        let filter = r.topic_filter()?;
        let options = subscription_options(r.u8()?, p)?;
        match filter {
            Ok(filter) => {
                if options.no_local && filter.shared().is_some() {
                    return Err(protocol(
                        "no local on a shared subscription",
                        "[MQTT-3.8.3-4]",
                    ));
                }
                filters.push(Subscription { filter, options });
            }
            Err((raw, why)) => rejected.push((index, raw, why)),
        }
        index += 1;
    }
    if index == 0 {
        return Err(protocol(
            "SUBSCRIBE without a topic filter",
            "[MQTT-3.8.3-3]",
        ));
    }
    Ok(Subscribe {
        pkid,
        filters,
        rejected,
        properties,
    })
}

/// The subscription options byte (3.8.3.1); before 5.0 only the QoS bits exist.
fn subscription_options(byte: u8, p: Protocol) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if p.is_v5() { 0xC0 } else { 0xFC };
    if byte & reserved != 0 {
        return Err(malformed(
            "reserved subscription option bits are set",
            "[MQTT-3.8.3-4] / [MQTT-3.8.3-5]",
        ));
    }
    // 3.1.1 calls QoS 3 malformed [MQTT-3.8.3-4]; 5.0 calls it a Protocol Error (3.8.3.1).
    let qos = match QoS::from_u8(byte & 0x03) {
        Some(q) => q,
        None if p.is_v5() => return Err(protocol("subscription QoS 3", "(3.8.3.1)")),
        None => return Err(malformed("subscription QoS 3", "[MQTT-3.8.3-4]")),
    };
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscription,
        2 => RetainHandling::Never,
        _ => return Err(protocol("retain handling 3", "(3.8.3.1)")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

/// SUBACK (3.9). 3.1.1 allows only the return codes 0, 1, 2 and 0x80.
fn decode_suback(r: &mut Reader<'_>, p: Protocol) -> Result<SubAck, DecodeError> {
    let pkid = r.pkid()?;
    let properties = if p.is_v5() {
        props::decode_ack(r)?
    } else {
        AckProperties::default()
    };
    let codes = r.rest();
    if codes.is_empty() {
        return Err(protocol("SUBACK without a return code", "(3.9.3)"));
    }
    if !p.is_v5() && codes.iter().any(|&c| !matches!(c, 0 | 1 | 2 | 0x80)) {
        return Err(malformed("reserved SUBACK return code", "[MQTT-3.9.3-2]"));
    }
    Ok(SubAck {
        pkid,
        reasons: codes.iter().map(|&c| ReasonCode(c)).collect(),
        properties,
    })
}

/// UNSUBSCRIBE (3.10). Filters that are not valid topic filters go to `rejected`.
fn decode_unsubscribe(r: &mut Reader<'_>, p: Protocol) -> Result<Unsubscribe, DecodeError> {
    let pkid = r.pkid()?;
    let user_properties = if p.is_v5() {
        props::decode_unsubscribe(r)?
    } else {
        Vec::new()
    };
    let mut filters = Vec::new();
    let mut rejected = Vec::new();
    let mut index = 0;
    while !r.is_empty() {
        match r.topic_filter()? {
            Ok(filter) => filters.push(filter),
            Err((raw, _)) => rejected.push((index, raw)),
        }
        index += 1;
    }
    if index == 0 {
        return Err(protocol(
            "UNSUBSCRIBE without a topic filter",
            "[MQTT-3.10.3-2]",
        ));
    }
    Ok(Unsubscribe {
        pkid,
        filters,
        rejected,
        user_properties,
    })
}

/// UNSUBACK (3.11): reason codes and properties exist only in 5.0.
fn decode_unsuback(r: &mut Reader<'_>, p: Protocol) -> Result<UnsubAck, DecodeError> {
    let pkid = r.pkid()?;
    if !p.is_v5() {
        return Ok(UnsubAck {
            pkid,
            reasons: Vec::new(),
            properties: AckProperties::default(),
        });
    }
    let properties = props::decode_ack(r)?;
    let reasons = r.rest().iter().map(|&c| ReasonCode(c)).collect();
    Ok(UnsubAck {
        pkid,
        reasons,
        properties,
    })
}

/// DISCONNECT (3.14). In 5.0 a remaining length of 0 is a normal disconnection and of 1 a reason
/// code without properties (3.14.2.1); before 5.0 the remaining length is 0.
fn decode_disconnect(r: &mut Reader<'_>, p: Protocol) -> Result<Disconnect, DecodeError> {
    if !p.is_v5() || r.is_empty() {
        return Ok(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
    }
    let reason = ReasonCode(r.u8()?);
    let properties = if r.is_empty() {
        DisconnectProperties::default()
    } else {
        props::decode_disconnect(r)?
    };
    Ok(Disconnect { reason, properties })
}

/// AUTH (3.15), 5.0 only. A remaining length of 0 means Success with no properties; otherwise
/// both the reason code and the property length are present.
fn decode_auth(r: &mut Reader<'_>) -> Result<Auth, DecodeError> {
    if r.is_empty() {
        return Ok(Auth {
            reason: ReasonCode::SUCCESS,
            properties: AuthProperties::default(),
        });
    }
    let reason = ReasonCode(r.u8()?);
    if !matches!(reason.0, 0x00 | 0x18 | 0x19) {
        return Err(malformed("invalid AUTH reason code", "[MQTT-3.15.2-1]"));
    }
    let properties = props::decode_auth(r)?;
    Ok(Auth { reason, properties })
}
