//! One packet model for MQTT 3.1, 3.1.1 and 5.0.
//!
//! The protocol level matters only in [`crate::decode`] and [`crate::encode`]; everything above the
//! wire works with these types. Fields that exist only in 5.0 (properties, reason codes on acks)
//! are simply left at their defaults for the older levels and are not written for them.

use bytes::Bytes;

use crate::types::{ReasonCode, Str, StrError, TopicFilter, TopicName};

/// The protocol level a connection speaks, chosen by its CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl Protocol {
    /// The protocol level byte as written in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }

    /// True for 5.0, the only level with properties and reason codes on every ack.
    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }
}

/// Quality of service of a PUBLISH or the maximum granted for a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a two-bit wire value; `None` for 3, which is malformed [MQTT-3.3.1-4].
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A user property: an ordered name/value pair of UTF-8 strings (5.0 only; order is kept).
pub type UserProperty = (Str, Str);

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// AUTH exists only in 5.0; packet type 15 is malformed for 3.1 / 3.1.1.
    Auth(Auth),
}

impl Packet {
    /// A short name for logs ("PUBLISH", "SUBSCRIBE", ...).
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT (3.1). Boxed inside [`Packet`] because it is large and rare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// Clean Session (3.1 / 3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 disables the keepalive mechanism.
    pub keep_alive: u16,
    /// May be empty: the broker decides whether to assign one [MQTT-3.1.3-6].
    pub client_id: Str,
    pub will: Option<LastWill>,
    pub username: Option<Str>,
    /// Binary data: a password need not be UTF-8 [MQTT-3.1.3.5].
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

/// The Will Message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will Delay Interval in seconds (5.0; 0 when absent).
    pub delay_interval: u32,
    /// Payload Format Indicator, Message Expiry, Content Type, Response Topic, Correlation Data and
    /// User Properties of the will; `topic_alias` and `subscription_identifiers` are always empty.
    pub properties: PublishProperties,
}

/// CONNECT properties (3.1.2.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: Vec<UserProperty>,
    pub authentication_method: Option<Str>,
    pub authentication_data: Option<Bytes>,
}

/// CONNACK (3.2). `reason` is always a 5.0 reason code; the encoder maps it to the 3.1.1 return
/// code with [`crate::connack_return_code`] (0x84 -> 1, 0x85 -> 2, 0x86 -> 4, 0x87 -> 5, other
/// failures -> 3), and the decoder maps 3.1.1 return codes 1..=5 to 0x84, 0x85, 0x88, 0x86, 0x87.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: ConnAckProperties,
}

/// CONNACK properties (3.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<Str>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<Str>,
    pub user_properties: Vec<UserProperty>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<Str>,
    pub server_reference: Option<Str>,
    pub authentication_method: Option<Str>,
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH (3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in a 5.0 PUBLISH that carries a Topic Alias; the protocol layer resolves it.
    pub topic: TopicName,
    /// 0 for QoS 0; never 0 for QoS 1/2 [MQTT-2.2.1-3].
    pub pkid: u16,
    pub payload: Bytes,
    pub properties: PublishProperties,
}

/// PUBLISH properties (3.3.2.3); also the will properties (minus the will delay).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
    /// Present only server -> client; several when several subscriptions matched (3.3.4).
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<Str>,
}

impl PublishProperties {
    /// True when no property is set (the common case: nothing to write but a zero length).
    pub fn is_empty(&self) -> bool {
        *self == PublishProperties::default()
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP (3.4 - 3.7) share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    pub pkid: u16,
    /// 5.0 reason code; 0x00 (Success) for the older levels.
    pub reason: ReasonCode,
    pub properties: AckProperties,
}

impl PubAck {
    /// A successful ack for `pkid` with no properties.
    pub fn new(pkid: u16) -> PubAck {
        PubAck {
            pkid,
            reason: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }
    }
}

/// Reason String and User Properties: the properties of the acks, SUBACK and UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    pub reason_string: Option<Str>,
    pub user_properties: Vec<UserProperty>,
}

/// SUBSCRIBE (3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    /// The well-formed filters, in order. Never empty together with `rejected` [MQTT-3.8.3-3].
    pub filters: Vec<Subscription>,
    /// Filters that are valid UTF-8 but not valid topic filters (`a/#/b`): not a decode error,
    /// the broker answers each with SUBACK 0x8F (0x80 in 3.1.1) at its position. Each entry is
    /// (position in the SUBSCRIBE, the string, why).
    pub rejected: Vec<(usize, Str, StrError)>,
    pub properties: SubscribeProperties,
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
}

/// Subscription options (3.8.3.1). Only `qos` exists before 5.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// When retained messages are sent for a new subscription (3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    OnSubscribe = 0,
    /// 1: send them only if the subscription did not already exist.
    OnNewSubscription = 1,
    /// 2: never send them.
    Never = 2,
}

/// SUBSCRIBE properties (3.8.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 1 ..= 268,435,455; 0 is a protocol error.
    pub subscription_identifier: Option<u32>,
    pub user_properties: Vec<UserProperty>,
}

/// SUBACK (3.9): one reason code per filter, in order. In 3.1.1 the codes are 0, 1, 2 or 0x80;
/// the encoder writes any 5.0 failure code (>= 0x80) as 0x80 for the older levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// UNSUBSCRIBE (3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    /// The well-formed filters, in order. Never empty together with `rejected` [MQTT-3.10.3-2].
    pub filters: Vec<TopicFilter>,
    /// Filters that are not valid topic filters: (position, string); answered with 0x8F.
    pub rejected: Vec<(usize, Str)>,
    pub user_properties: Vec<UserProperty>,
}

/// UNSUBACK (3.11): reason codes exist only in 5.0 and are not written for the older levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// DISCONNECT (3.14). For 3.1 / 3.1.1 only the packet type is on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        }
    }
}

/// DISCONNECT properties (3.14.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<Str>,
    pub user_properties: Vec<UserProperty>,
    pub server_reference: Option<Str>,
}

/// AUTH (3.15), 5.0 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: AuthProperties,
}

/// AUTH properties (3.15.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<Str>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<Str>,
    pub user_properties: Vec<UserProperty>,
}
