//! A message as it travels between nodes (and sits in the retained bucket).
//!
//! Headers (NATS message headers):
//! * `Sluice-Node`: the publishing node's `cluster.node`; a node ignores messages with its own
//!   name on its plain subscriptions (it delivered them itself already).
//! * `Sluice-Id`: `{boot}.{seq}`, unique per message and publishing node (`boot` is random per
//!   start): a node whose subscriptions overlap (`a/#` and `a/+`) receives a message once per
//!   NATS subscription and routes the first copy only.
//!
//! Body: the publisher's client id (2-byte big-endian length, then UTF-8: for No Local
//! [MQTT-3.8.3-3]) followed by the message as an MQTT 5.0 PUBLISH packet (topic, QoS,
//! RETAIN, payload, properties with the remaining Message Expiry Interval), encoded and decoded
//! by Sluice's own codec: one compact format with every property MQTT has.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use sluice_codec::{Decoder, Packet, Protocol, Publish};

use crate::message::{ClientId, Message};

/// Header naming the publishing node.
pub const NODE_HEADER: &str = "Sluice-Node";
/// Header with the message's cluster-wide identity.
pub const ID_HEADER: &str = "Sluice-Id";

/// Why a body could not be read (a message from something that is not a Sluice node, or from
/// an incompatible version).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message body too short")]
    Short,
    #[error("origin client id is not UTF-8")]
    Origin,
    #[error("not an MQTT 5.0 PUBLISH: {0}")]
    Packet(String),
}

/// Encodes `msg` (its expiry as remaining at `now`).
pub fn encode(msg: &Message, now: Instant) -> Result<Bytes, WireError> {
    let mut properties = msg.properties.clone();
    properties.message_expiry_interval = msg.remaining_expiry(now);
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: msg.qos,
        retain: msg.retain,
        topic: msg.topic.clone(),
        pkid: u16::from(msg.qos != sluice_codec::QoS::AtMostOnce),
        payload: msg.payload.clone(),
        properties,
    });
    let origin = msg.origin.as_bytes();
    let origin_len = u16::try_from(origin.len()).map_err(|_| WireError::Origin)?;
    let mut buf = BytesMut::with_capacity(2 + origin.len() + msg.cost());
    buf.put_u16(origin_len);
    buf.put_slice(origin);
    sluice_codec::encode(&publish, Protocol::V5, &mut buf)
        .map_err(|e| WireError::Packet(e.to_string()))?;
    Ok(buf.freeze())
}

/// Decodes a body made by [`encode`] into a new message of this node (its own id), whose
/// expiry counts from `now` less `age` (how long it waited in the retained bucket).
pub fn decode(body: &[u8], now: Instant, age: Duration) -> Result<Message, WireError> {
    let (len, rest) = body.split_first_chunk::<2>().ok_or(WireError::Short)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(WireError::Short);
    }
    let (origin, packet) = rest.split_at(len);
    let origin: ClientId = std::str::from_utf8(origin)
        .map_err(|_| WireError::Origin)?
        .into();
    let mut buf = BytesMut::from(packet);
    let mut decoder = Decoder::with_protocol(Protocol::V5, usize::MAX);
    let p = match decoder.decode(&mut buf) {
        Ok(Some(Packet::Publish(p))) if buf.is_empty() => p,
        Ok(other) => return Err(WireError::Packet(format!("{other:?}"))),
        Err(e) => return Err(WireError::Packet(e.to_string())),
    };
    let mut properties = p.properties;
    if let Some(secs) = properties.message_expiry_interval {
        let left = Duration::from_secs(u64::from(secs)).saturating_sub(age);
        // At least a second so that Message::new's deadline is not already past when the
        // interval had time left; an interval used up in the bucket is 0: expired.
        properties.message_expiry_interval = Some(u32::try_from(left.as_secs()).unwrap_or(0));
    }
    Ok(Message::new(
        p.topic, p.payload, p.qos, p.retain, properties, origin, now,
    ))
}

/// The retained bucket's key for `topic`: base64url without padding (KV keys allow only
/// `A-Za-z0-9-_=./`, topics anything). Never empty, since a topic never is.
pub fn retained_key(topic: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic.as_bytes())
}

/// The topic of a retained bucket key; None for a key that is not one of [`retained_key`]'s.
pub fn retained_topic(key: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key)
        .ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_codec::{PublishProperties, QoS, Str, TopicName};

    fn message(qos: QoS, expiry: Option<u32>) -> Message {
        Message::new(
            TopicName::new(Str::try_from("a/b").unwrap()).unwrap(),
            Bytes::from_static(b"payload"),
            qos,
            true,
            PublishProperties {
                message_expiry_interval: expiry,
                user_properties: vec![(Str::try_from("k").unwrap(), Str::try_from("v").unwrap())],
                content_type: Some(Str::try_from("text/plain").unwrap()),
                ..Default::default()
            },
            "publisher".into(),
            Instant::now(),
        )
    }

    #[test]
    fn round_trip_keeps_everything_but_the_id() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let m = message(qos, Some(60));
            let now = m.expires_at.unwrap() - Duration::from_secs(60);
            let body = encode(&m, now).unwrap();
            let back = decode(&body, now, Duration::ZERO).unwrap();
            assert_eq!(back.topic, m.topic);
            assert_eq!(back.payload, m.payload);
            assert_eq!(back.qos, qos);
            assert!(back.retain);
            assert_eq!(back.origin, m.origin);
            assert_eq!(
                back.properties.user_properties,
                m.properties.user_properties
            );
            assert_eq!(back.properties.content_type, m.properties.content_type);
            assert_eq!(back.remaining_expiry(now), Some(60));
            assert_ne!(back.id, m.id);
        }
    }

    #[test]
    fn time_in_the_bucket_counts_against_expiry() {
        let m = message(QoS::AtLeastOnce, Some(60));
        let now = m.expires_at.unwrap() - Duration::from_secs(60);
        let body = encode(&m, now).unwrap();
        let back = decode(&body, now, Duration::from_secs(50)).unwrap();
        assert_eq!(back.remaining_expiry(now), Some(10));
        let back = decode(&body, now, Duration::from_secs(70)).unwrap();
        assert!(back.is_expired(now));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"\x00",
            b"\x00\x05ab",
            b"\x00\x00\x30",
            b"\x00\x00\xff\xff",
        ] {
            assert!(decode(body, Instant::now(), Duration::ZERO).is_err());
        }
    }

    #[test]
    fn retained_keys_round_trip() {
        for t in ["a/b", "$SYS/x y", "/", "ü/+"] {
            let k = retained_key(t);
            assert!(k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(retained_topic(&k).as_deref(), Some(t));
        }
    }
}
