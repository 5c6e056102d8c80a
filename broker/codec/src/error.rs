//! Decode and encode errors. Each decode error carries the 5.0 reason code the server sends
//! before closing (0x81 Malformed Packet, 0x82 Protocol Error, 0x95 Packet Too Large, ...)
//! and, where one exists, the clause of the standard it enforces.
//!
//! Clauses are the 5.0 normative statement ids (`[MQTT-3.3.1-4]`), with the 3.1.1 id added where
//! it differs; a rule the standard states without an id is cited by its 5.0 section, in
//! parentheses (`(2.1.4)` for the remaining length, `(2.2.2.2)` for the property table).

use crate::types::ReasonCode;

/// Why a byte stream could not be decoded. The connection that sent it must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not form a valid packet.
    #[error("malformed packet: {what} {clause}")]
    Malformed {
        what: &'static str,
        clause: &'static str,
    },
    /// The packet is well formed but breaks a protocol rule checked at the wire.
    #[error("protocol error: {what} {clause}")]
    Protocol {
        what: &'static str,
        clause: &'static str,
    },
    /// The declared packet size exceeds the maximum packet size; nothing was buffered.
    #[error(
        "packet of {size} bytes exceeds the maximum packet size of {max} bytes [MQTT-3.2.2-15]"
    )]
    PacketTooLarge { size: usize, max: usize },
    /// A well-formed string that is not a valid Topic Name: a wildcard in a PUBLISH or Will
    /// topic [MQTT-3.3.2-2]. Reported as 0x90 Topic Name invalid.
    #[error("invalid topic name: {what} {clause}")]
    TopicNameInvalid {
        what: &'static str,
        clause: &'static str,
    },
    /// A PUBLISH with Topic Alias 0 [MQTT-3.3.2-8]: reported as 0x94 Topic Alias Invalid.
    #[error("topic alias 0 [MQTT-3.3.2-8]")]
    TopicAliasZero,
    /// CONNECT with a protocol name/level this server does not speak [MQTT-3.1.2-2].
    #[error("unsupported protocol name or level (level {level}) [MQTT-3.1.2-2]")]
    UnsupportedProtocol { level: u8 },
}

impl DecodeError {
    /// The 5.0 reason code for the CONNACK or DISCONNECT that reports this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed { .. } => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol { .. } => ReasonCode::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::TopicNameInvalid { .. } => ReasonCode::TOPIC_NAME_INVALID,
            DecodeError::TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Why a packet could not be encoded. Nothing was written to the buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "{field} is {len} bytes; MQTT strings and binary data hold at most 65,535 [MQTT-1.5.4]"
    )]
    FieldTooLong { field: &'static str, len: usize },
    #[error("packet needs a remaining length of {0} bytes, above 268,435,455 (2.1.4)")]
    PacketTooLarge(usize),
    #[error("{0} cannot be sent at this protocol level")]
    NotInProtocol(&'static str),
    #[error("invalid value: {0}")]
    InvalidValue(&'static str),
}
