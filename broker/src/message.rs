//! The application message as the broker stores it: one [`Message`] per PUBLISH received,
//! shared by `Arc` between the retained store and every session it is queued for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_codec::{PublishProperties, QoS, TopicName};

/// A client identifier, shared cheaply between the registry, the subscription tree and messages.
pub type ClientId = Arc<str>;

/// An application message. Built once from the publisher's PUBLISH; never copied again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The resolved topic (never empty: a Topic Alias is resolved before this is built).
    pub topic: TopicName,
    /// The payload, copied out of the read buffer once at decode.
    pub payload: Bytes,
    /// The QoS it was published with; each delivery is downgraded to its subscription's QoS.
    pub qos: QoS,
    /// The RETAIN flag as published (forwarded under Retain As Published).
    pub retain: bool,
    /// Properties forwarded to subscribers (3.3.2.3), with Topic Alias and Subscription
    /// Identifiers cleared: those are per connection and per delivery.
    pub properties: PublishProperties,
    /// When the Message Expiry Interval runs out; None: never [MQTT-3.3.2-5].
    pub expires_at: Option<Instant>,
    /// The publisher's client id, for No Local [MQTT-3.8.3-3]. Empty for wills of
    /// connections that never completed CONNECT (none today) and for internal messages.
    pub origin: ClientId,
    /// Unique id (also across restarts: the store continues above the highest id it
    /// recovered); names the message in the persistent log.
    pub id: u64,
    /// Its rank in session queues (`mqtt.priorities`: higher is sent first), decided once when
    /// it is published; 0 unless a rule matched.
    pub priority: u8,
}

/// Source of message ids.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Makes every id handed out from now on larger than `max` (after recovery).
pub fn ensure_ids_above(max: u64) {
    NEXT_ID.fetch_max(max.saturating_add(1), Ordering::Relaxed);
}

/// Fixed bytes charged per message on top of topic and payload when bounding queues.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 16;

impl Message {
    /// Builds a message, turning the Message Expiry Interval into a deadline from `now`.
    pub fn new(
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: PublishProperties,
        origin: ClientId,
        now: Instant,
    ) -> Message {
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at,
            origin,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            priority: 0,
        }
    }

    /// Bytes charged against queue limits for one queued copy of this message.
    pub fn cost(&self) -> usize {
        self.topic.len() + self.payload.len() + MESSAGE_OVERHEAD
    }

    /// True once the Message Expiry Interval has passed [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The Message Expiry Interval to send now: the remaining time rounded up to whole
    /// seconds, at least 1 while the message is alive [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_interval_becomes_deadline_and_counts_down() {
        let now = Instant::now();
        let props = PublishProperties {
            message_expiry_interval: Some(10),
            topic_alias: Some(3),
            subscription_identifiers: vec![7],
            ..Default::default()
        };
        let topic = TopicName::try_from("a/b").unwrap();
        let m = Message::new(
            topic,
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            props,
            "c".into(),
            now,
        );
        assert_eq!(m.properties.topic_alias, None, "aliases are per connection");
        assert!(m.properties.subscription_identifiers.is_empty());
        assert_eq!(m.remaining_expiry(now + Duration::from_secs(4)), Some(6));
        assert!(!m.is_expired(now + Duration::from_secs(9)));
        assert!(m.is_expired(now + Duration::from_secs(10)));
    }
}
