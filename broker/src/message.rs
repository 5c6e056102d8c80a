//! The application message as the broker stores it: one [`Message`] per PUBLISH received,
//! shared by `Arc` between the retained store and every session it is queued for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_codec::{PublishProperties, QoS, TopicName};

/// A client identifier, shared cheaply between the registry, the subscription tree and messages.
pub type ClientId = Arc<str>;

/// An application message. Built once from the publisher's PUBLISH; never copied again.
#[derive(Debug, Clone)]
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
    /// When the broker received it (or read it back from the store): the start of its
    /// PUBLISH→delivery latency (`sluice_delivery_latency_seconds`).
    pub received_at: Instant,
    /// The publisher's client id, for No Local [MQTT-3.8.3-3]. Empty for wills of
    /// connections that never completed CONNECT (none today) and for internal messages.
    pub origin: ClientId,
    /// Unique id (also across restarts: the store continues above the highest id it
    /// recovered); names the message in the persistent log.
    pub id: u64,
    /// Its rank in session queues (`mqtt.priorities`: higher is sent first), decided once when
    /// it is published; 0 unless a rule matched.
    pub priority: u8,
    /// Its PUBLISH as encoded for its deliveries, one per wire form, shared by every
    /// subscriber that gets that form (protocol/outbound.rs). Not part of the message's value.
    pub encoded: EncodedForms,
}

impl PartialEq for Message {
    fn eq(&self, other: &Message) -> bool {
        // `encoded` is a cache derived from the rest.
        self.topic == other.topic
            && self.payload == other.payload
            && self.qos == other.qos
            && self.retain == other.retain
            && self.properties == other.properties
            && self.expires_at == other.expires_at
            && self.origin == other.origin
            && self.id == other.id
            && self.priority == other.priority
    }
}

impl Eq for Message {}

/// What distinguishes one encoded PUBLISH of a message from another, besides the packet
/// identifier (patched per delivery): everything in the first byte and the variable header
/// that can differ between subscribers. Deliveries whose PUBLISH carries something unique to
/// them (a Topic Alias, Subscription Identifiers) are not shared and have no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WireForm {
    /// 5.0 (properties written) or 3.1 / 3.1.1 (the same bytes for both).
    pub v5: bool,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// The Message Expiry Interval written (5.0): the remaining seconds at the time of sending.
    pub expiry: Option<u32>,
}

/// One encoded PUBLISH of a message.
#[derive(Debug, Clone)]
pub struct EncodedForm {
    /// The whole packet; for QoS 1/2 with packet identifier 1 as a placeholder.
    pub bytes: Bytes,
    /// Where the two bytes of the packet identifier are (QoS 1/2), to patch per delivery.
    pub pkid_at: Option<usize>,
}

/// The most wire forms cached per message: a broadcast to 3.1.1 and 5.0 subscribers at two
/// QoS levels is four. A fifth form is encoded per delivery, as before.
pub const MAX_ENCODED_FORMS: usize = 4;

/// The largest PUBLISH cached (fixed header included). Above it the copy into the write
/// buffer dominates the cost of encoding anyway, and a cached copy would double the memory a
/// large message holds.
pub const MAX_ENCODED_FORM_BYTES: usize = 64 * 1024;

/// The encoded forms of a message, filled from its second delivery on (a message delivered to
/// one subscriber never holds a second copy of itself). Bounded: at most
/// [`MAX_ENCODED_FORMS`] forms of at most [`MAX_ENCODED_FORM_BYTES`] each, freed with the
/// message; empty it costs 24 bytes.
///
/// Read without writing anything shared: the subscribers' tasks on every core copy the same
/// forms at once, and a lock or a reference count bumped per delivery would bounce its cache
/// line between them. A slot is written once and never changed; they fill in order.
#[derive(Debug, Default)]
pub struct EncodedForms {
    /// Set by the first delivery, so that the second one caches its form.
    delivered: AtomicBool,
    /// The forms, allocated by the first one cached.
    forms: OnceLock<Box<FormSlots>>,
}

/// Write-once slots, filled in order.
type FormSlots = [OnceLock<(WireForm, EncodedForm)>; MAX_ENCODED_FORMS];

/// What [`EncodedForms::lookup`] found.
#[derive(Debug)]
pub enum FormLookup<'a> {
    /// The form is cached: copy it (and patch the packet identifier).
    Hit(&'a EncodedForm),
    /// Encode the delivery; hand the bytes to [`EncodedForms::insert`] when `cache` is true.
    Miss { cache: bool },
}

impl Clone for EncodedForms {
    /// A copy of a message is a new message as far as its deliveries go: it starts empty.
    fn clone(&self) -> EncodedForms {
        EncodedForms::default()
    }
}

impl EncodedForms {
    /// The cached form for `key`, or whether the one about to be encoded should be cached.
    pub fn lookup(&self, key: &WireForm) -> FormLookup<'_> {
        if let Some(slots) = self.forms.get() {
            for slot in slots.iter() {
                match slot.get() {
                    Some((k, form)) if k == key => return FormLookup::Hit(form),
                    Some(_) => {}
                    None => return FormLookup::Miss { cache: true },
                }
            }
            return FormLookup::Miss { cache: false };
        }
        if self.delivered.load(Ordering::Relaxed) {
            FormLookup::Miss { cache: true }
        } else {
            self.delivered.store(true, Ordering::Relaxed);
            FormLookup::Miss { cache: false }
        }
    }

    /// Caches `form` for `key` in the first free slot (none left, or cached meanwhile by
    /// another delivery: not cached).
    pub fn insert(&self, key: WireForm, form: EncodedForm) {
        if form.bytes.len() > MAX_ENCODED_FORM_BYTES {
            return;
        }
        let slots = self.forms.get_or_init(Default::default);
        let mut entry = (key, form);
        for slot in slots.iter() {
            if slot.get().is_some_and(|(k, _)| *k == key) {
                return;
            }
            match slot.set(entry) {
                Ok(()) => return,
                // Taken (by another form, or by another delivery just now): the next one,
                // unless it holds this form.
                Err(_) if slot.get().is_some_and(|(k, _)| *k == key) => return,
                Err(back) => entry = back,
            }
        }
    }

    /// How many forms are cached (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.forms.get().map_or(0, |slots| {
            slots.iter().filter(|s| s.get().is_some()).count()
        })
    }

    /// True when no form is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
            received_at: now,
            origin,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            priority: 0,
            encoded: EncodedForms::default(),
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

    fn key(n: u8) -> WireForm {
        WireForm {
            v5: n % 2 == 1,
            qos: QoS::from_u8(n / 2 % 3).unwrap(),
            retain: n >= 6,
            dup: false,
            expiry: None,
        }
    }

    /// Subscribers on several threads cache forms at once: each form is cached once, in at
    /// most `MAX_ENCODED_FORMS` slots, and every lookup finds the bytes stored for its key.
    #[test]
    fn encoded_forms_under_concurrent_deliveries() {
        for _ in 0..50 {
            let forms = Arc::new(EncodedForms::default());
            let threads: Vec<_> = (0..4u8)
                .map(|t| {
                    let forms = forms.clone();
                    std::thread::spawn(move || {
                        for i in 0..8u8 {
                            let n = (i + t * 3) % 8;
                            let k = key(n);
                            match forms.lookup(&k) {
                                FormLookup::Hit(f) => assert_eq!(f.bytes[..], [n]),
                                FormLookup::Miss { cache: true } => forms.insert(
                                    k,
                                    EncodedForm {
                                        bytes: Bytes::from(vec![n]),
                                        pkid_at: None,
                                    },
                                ),
                                FormLookup::Miss { cache: false } => {}
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(!forms.is_empty());
            assert!(forms.len() <= MAX_ENCODED_FORMS);
            let slots = forms.forms.get().unwrap();
            let keys: Vec<WireForm> = slots.iter().filter_map(|s| s.get()).map(|e| e.0).collect();
            for (i, k) in keys.iter().enumerate() {
                assert!(!keys[i + 1..].contains(k), "{k:?} cached twice");
            }
            for n in 0..8u8 {
                if let FormLookup::Hit(f) = forms.lookup(&key(n)) {
                    assert_eq!(f.bytes[..], [n]);
                }
            }
        }
    }

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
