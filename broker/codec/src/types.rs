//! Validated, `Bytes`-backed string types and reason codes.
//!
//! A decoded string shares no memory with the connection's read buffer: the decoder copies each
//! field out once, right-sized, so a stored message never pins a read buffer (rumqtt issue 1001).
//! Cloning any of these types is a reference-count increment, not an allocation.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// Why a string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StrError {
    #[error("not valid UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8,
    #[error("contains U+0000 [MQTT-1.5.4-2]")]
    ContainsNul,
    #[error("longer than 65,535 bytes [MQTT-1.5.4]")]
    TooLong,
    #[error("topic name contains a wildcard character [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    #[error("topic filter is empty [MQTT-4.7.3-1]")]
    EmptyFilter,
    #[error(
        "'#' is not the last character of the filter or not alone in its level [MQTT-4.7.1-1]"
    )]
    InvalidMultiLevelWildcard,
    #[error("'+' does not occupy an entire level of the filter [MQTT-4.7.1-2]")]
    InvalidSingleLevelWildcard,
    #[error("shared subscription filter is not $share/{{ShareName}}/{{filter}} [MQTT-4.8.2-1]")]
    InvalidSharedSubscription,
}

/// An MQTT UTF-8 Encoded String: valid UTF-8, no U+0000, at most 65,535 bytes (1.5.4).
///
/// Held as a [`ByteString`] (`Bytes` known to be UTF-8): validated once when it is made, so
/// reading it as `&str` costs nothing (a hot path: every topic match and every encode).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Str(ByteString);

impl Str {
    /// Validates `bytes` as an MQTT UTF-8 string.
    pub fn from_bytes(bytes: Bytes) -> Result<Str, StrError> {
        if bytes.len() > u16::MAX as usize {
            return Err(StrError::TooLong);
        }
        let s = ByteString::try_from(bytes).map_err(|_| StrError::InvalidUtf8)?;
        if s.as_bytes().contains(&0) {
            return Err(StrError::ContainsNul);
        }
        Ok(Str(s))
    }

    /// A string the decoder has already checked (no U+0000, short enough; UTF-8 because it is a
    /// `&str`), copied out once, right-sized.
    pub(crate) fn from_checked(s: &str) -> Str {
        Str(ByteString::from(s))
    }

    /// A string from a static literal (checked the same way; panics only on a bad literal).
    pub fn from_static(s: &'static str) -> Str {
        Str::from_bytes(Bytes::from_static(s.as_bytes())).expect("invalid static MQTT string")
    }

    /// The string; valid UTF-8 by construction.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying bytes (a cheap clone).
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<&str> for Str {
    type Error = StrError;
    fn try_from(s: &str) -> Result<Str, StrError> {
        Str::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for Str {
    type Error = StrError;
    fn try_from(s: String) -> Result<Str, StrError> {
        Str::from_bytes(Bytes::from(s))
    }
}

impl Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic name as used in PUBLISH: an MQTT string without `+` or `#` [MQTT-3.3.2-2].
///
/// It may be empty only where 5.0 allows it (a PUBLISH carrying a Topic Alias); the protocol
/// layer rejects an empty topic everywhere else [MQTT-4.7.3-1].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicName(Str);

impl TopicName {
    /// Validates an MQTT string as a topic name.
    pub fn new(s: Str) -> Result<TopicName, StrError> {
        if s.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
            return Err(StrError::WildcardInTopicName);
        }
        Ok(TopicName(s))
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The validated string.
    pub fn as_mqtt_str(&self) -> &Str {
        &self.0
    }

    /// True for a topic starting with `$`, which leading wildcards never match [MQTT-4.7.2-1].
    pub fn is_system(&self) -> bool {
        self.0.as_bytes().first() == Some(&b'$')
    }
}

impl TryFrom<&str> for TopicName {
    type Error = StrError;
    fn try_from(s: &str) -> Result<TopicName, StrError> {
        TopicName::new(Str::try_from(s)?)
    }
}

impl Deref for TopicName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A syntactically valid topic filter (4.7.1), possibly a shared subscription `$share/g/f` (4.8.2).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Str);

impl TopicFilter {
    /// Validates an MQTT string as a topic filter.
    pub fn new(s: Str) -> Result<TopicFilter, StrError> {
        validate_filter(s.as_str())?;
        if let Some(rest) = s.as_str().strip_prefix("$share/") {
            // $share/{ShareName}/{filter}: the name is non-empty with no wildcard or '/',
            // and a filter follows [MQTT-4.8.2-1], [MQTT-4.8.2-2].
            match rest.split_once('/') {
                Some((name, filter))
                    if !name.is_empty() && !name.contains(['+', '#']) && !filter.is_empty() => {}
                _ => return Err(StrError::InvalidSharedSubscription),
            }
        }
        Ok(TopicFilter(s))
    }

    /// The whole filter as written by the client, `$share/` prefix included.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The validated string.
    pub fn as_mqtt_str(&self) -> &Str {
        &self.0
    }

    /// For `$share/{group}/{filter}`: the group name and the filter that is matched.
    pub fn shared(&self) -> Option<(&str, &str)> {
        self.as_str()
            .strip_prefix("$share/")
            .and_then(|rest| rest.split_once('/'))
    }

    /// The filter that is matched against topic names (the part after `$share/{group}/`).
    pub fn match_filter(&self) -> &str {
        self.shared().map_or(self.as_str(), |(_, f)| f)
    }

    /// True if the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.match_filter().contains(['+', '#'])
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = StrError;
    fn try_from(s: &str) -> Result<TopicFilter, StrError> {
        TopicFilter::new(Str::try_from(s)?)
    }
}

impl Deref for TopicFilter {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks topic filter syntax (4.7.1): `#` alone in the last level, `+` alone in its level.
fn validate_filter(filter: &str) -> Result<(), StrError> {
    if filter.is_empty() {
        return Err(StrError::EmptyFilter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(StrError::InvalidMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(StrError::InvalidSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Does topic name `topic` match filter `filter` (4.7)? Works on levels, so multibyte UTF-8 is
/// handled like any other text; a leading wildcard never matches a `$` topic [MQTT-4.7.2-1].
/// `filter` is the matched part of a filter (see [`TopicFilter::match_filter`]).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A 5.0 reason code (2.4). 3.1.1 return codes are derived from it by the encoder.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    pub const SUCCESS: ReasonCode = ReasonCode(0x00);
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
    pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
    pub const DISCONNECT_WITH_WILL: ReasonCode = ReasonCode(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
    pub const CONTINUE_AUTHENTICATION: ReasonCode = ReasonCode(0x18);
    pub const RE_AUTHENTICATE: ReasonCode = ReasonCode(0x19);
    pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
    pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
    pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = ReasonCode(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = ReasonCode(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
    pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
    pub const BANNED: ReasonCode = ReasonCode(0x8A);
    pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = ReasonCode(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
    pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
    pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
    pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: ReasonCode = ReasonCode(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: ReasonCode = ReasonCode(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
    pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
    pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: ReasonCode = ReasonCode(0x96);
    pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
    pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
    pub const RETAIN_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9A);
    pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
    pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);
    pub const SERVER_MOVED: ReasonCode = ReasonCode(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: ReasonCode = ReasonCode(0x9F);
    pub const MAXIMUM_CONNECT_TIME: ReasonCode = ReasonCode(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA2);

    /// True for codes of 0x80 and above.
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X}", self.0)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X}", self.0)
    }
}
