//! The log's format: record kinds, frame encoding and decoding, checksums (message records
//! are read back in `readback.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_codec::{
    LastWill, PublishProperties, QoS, RetainHandling, Str, SubscriptionOptions, TopicFilter,
    TopicName,
};

use crate::message::{ClientId, Message};

use super::*;

/// One change to the persistent state.
#[derive(Debug, Clone)]
pub enum Record {
    /// A message that some session queues or the retained store keeps; written once.
    Message(Arc<Message>),
    /// The retained message of `topic` is message `id` (0: deleted).
    Retain { topic: Str, id: u64 },
    /// A persistent session exists with these settings (replaces earlier ones, keeps its
    /// subscriptions and queue).
    Session {
        client: ClientId,
        expiry: u32,
        username: Option<Arc<str>>,
        /// The will that fires if the client does not come back (with its delay). Boxed: it
        /// is large and rare, and every record pays for the largest variant.
        will: Option<Box<LastWill>>,
        /// When the client went away (Unix ms), 0 while it is connected: session expiry and
        /// will delay count from then, also across a restart.
        since: u64,
    },
    /// The session ended: everything of it is gone.
    SessionGone { client: ClientId },
    Subscribe {
        client: ClientId,
        filter: TopicFilter,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    },
    Unsubscribe {
        client: ClientId,
        filter: TopicFilter,
    },
    /// Message `id` queued for `client` as its delivery number `seq` (per session, rising:
    /// one message can be queued twice for one session, e.g. through a plain and a shared
    /// subscription, and the records after this one must name the right delivery).
    Enqueue {
        client: ClientId,
        seq: u64,
        id: u64,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        shared: Option<TopicFilter>,
    },
    /// Queued delivery `seq` was sent with packet id `pkid`.
    Sent {
        client: ClientId,
        seq: u64,
        pkid: u16,
    },
    /// Several deliveries sent, in this order: `(seq, pkid)` as in [`Record::Sent`]. A drain
    /// logs one of these per batch of PUBLISHes written at once, not one record each
    /// ([`Store::append`] merges them): the client id is written and looked up once.
    SentMany {
        client: ClientId,
        sent: Vec<(u64, u16)>,
    },
    /// Several inflight entries done, in this order, as in [`Record::Acked`] (the PUBACKs
    /// read at once).
    AckedMany { client: ClientId, pkids: Vec<u16> },
    /// Queued delivery `seq` was dropped unsent (expired, too large, moved to another
    /// shared-subscription member, queue full).
    Skip { client: ClientId, seq: u64 },
    /// PUBACK / PUBCOMP: the inflight entry `pkid` is done.
    Acked { client: ClientId, pkid: u16 },
    /// PUBREC: inflight `pkid` now awaits PUBCOMP (its message is no longer needed).
    Released { client: ClientId, pkid: u16 },
    /// Inbound QoS 2 `pkid` received and PUBREC'd: a resend must not be delivered again.
    Qos2In { client: ClientId, pkid: u16 },
    /// Inbound QoS 2 `pkid` released by PUBREL.
    Qos2InDone { client: ClientId, pkid: u16 },
    /// Message `id` waits in the queue of shared subscription `group` (every online member's
    /// window was full) as the group's delivery `seq`.
    GroupEnqueue {
        group: TopicFilter,
        seq: u64,
        id: u64,
        qos: QoS,
        retain: bool,
    },
    /// The group's delivery `seq` left its queue (a member took it: logged as queued for that
    /// member first, if it is persistent; or it was dropped).
    GroupTaken { group: TopicFilter, seq: u64 },
    /// `client`'s deliveries numbered up to `seq` may have been sent (logged before they go,
    /// so a crash that loses their `Sent` records still knows to resend them with DUP); lowered
    /// again when a connection ends cleanly, having logged what it really sent.
    SentHorizon { client: ClientId, seq: u64 },
    /// Message `id` (logged before) is a `$delayed` PUBLISH waiting until `due` (Unix ms) to be
    /// routed to its topic (the message's own topic: the target, without the prefix).
    Delayed { id: u64, due: u64 },
    /// Delayed message `id` was routed (its queue entries are logged before this), or dropped.
    DelayedDone { id: u64 },
    /// Message `id` (logged before) has `priority` in session queues (`mqtt.priorities`):
    /// logged only for a priority other than 0, so queues recovered on disk come back in their
    /// lanes without reading the messages.
    Priority { id: u64, priority: u8 },
}

// ---- encoding --------------------------------------------------------------------------------

/// Now, in Unix milliseconds (for `Record::Session::since`).
pub fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Converts a monotonic deadline to wall-clock milliseconds (0: none) for storage.
fn deadline_to_unix(deadline: Option<Instant>) -> u64 {
    deadline.map_or(0, |d| {
        let now = Instant::now();
        let wall = SystemTime::now();
        let wall_deadline = if d >= now {
            wall + (d - now)
        } else {
            wall.checked_sub(now - d).unwrap_or(UNIX_EPOCH)
        };
        unix_ms(wall_deadline).max(1)
    })
}

/// Converts stored wall-clock milliseconds back to a monotonic deadline.
pub(super) fn unix_to_deadline(ms: u64, now: Instant) -> Option<Instant> {
    if ms == 0 {
        return None;
    }
    let wall_now = unix_ms(SystemTime::now());
    Some(if ms >= wall_now {
        now + Duration::from_millis(ms - wall_now)
    } else {
        now.checked_sub(Duration::from_millis(wall_now - ms))
            .unwrap_or(now)
    })
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32_le(v.len() as u32);
    b.put_slice(v);
}

fn put_opt_bytes(b: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            b.put_u8(1);
            put_bytes(b, v);
        }
        None => b.put_u8(0),
    }
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    let rh = match o.retain_handling {
        RetainHandling::OnSubscribe => 0,
        RetainHandling::OnNewSubscription => 1,
        RetainHandling::Never => 2,
    };
    o.qos as u8 | (u8::from(o.no_local) << 2) | (u8::from(o.retain_as_published) << 3) | (rh << 4)
}

fn options_from(b: u8) -> Result<SubscriptionOptions, DecodeError> {
    Ok(SubscriptionOptions {
        qos: QoS::from_u8(b & 3).ok_or(DecodeError::BadQos)?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscription,
            2 => RetainHandling::Never,
            _ => return Err(DecodeError::BadRetainHandling),
        },
    })
}

fn put_props(b: &mut BytesMut, p: &PublishProperties) {
    b.put_u8(p.payload_format_indicator.map_or(0xFF, |v| v));
    b.put_u64_le(p.message_expiry_interval.map_or(u64::MAX, u64::from));
    put_opt_bytes(b, p.response_topic.as_deref().map(str::as_bytes));
    put_opt_bytes(b, p.correlation_data.as_deref());
    put_opt_bytes(b, p.content_type.as_deref().map(str::as_bytes));
    b.put_u32_le(p.user_properties.len() as u32);
    for (k, v) in &p.user_properties {
        put_bytes(b, k.as_bytes());
        put_bytes(b, v.as_bytes());
    }
}

fn put_will(b: &mut BytesMut, w: &LastWill) {
    put_bytes(b, w.topic.as_bytes());
    put_bytes(b, &w.payload);
    b.put_u8(w.qos as u8);
    b.put_u8(u8::from(w.retain));
    b.put_u32_le(w.delay_interval);
    put_props(b, &w.properties);
}

/// Appends one framed record to `out`: the payload is encoded in place and the frame header
/// (length, CRC) filled in afterwards, so a record costs no allocation of its own.
pub fn encode_record(rec: &Record, out: &mut BytesMut) {
    let start = out.len();
    out.put_u64_le(0); // length and CRC, patched below
    encode_payload(rec, out);
    let len = (out.len() - start - 8) as u32;
    let crc = crc32(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn encode_payload(rec: &Record, b: &mut BytesMut) {
    match rec {
        Record::Message(m) => {
            b.put_u8(TAG_MESSAGE);
            b.put_u64_le(m.id);
            put_bytes(b, m.topic.as_bytes());
            put_bytes(b, &m.payload);
            b.put_u8(m.qos as u8);
            b.put_u8(u8::from(m.retain));
            put_bytes(b, m.origin.as_bytes());
            b.put_u64_le(deadline_to_unix(m.expires_at));
            put_props(b, &m.properties);
        }
        Record::Retain { topic, id } => {
            b.put_u8(2);
            put_bytes(b, topic.as_bytes());
            b.put_u64_le(*id);
        }
        Record::Session {
            client,
            expiry,
            username,
            will,
            since,
        } => {
            b.put_u8(3);
            put_bytes(b, client.as_bytes());
            b.put_u32_le(*expiry);
            put_opt_bytes(b, username.as_deref().map(str::as_bytes));
            match will {
                Some(w) => {
                    b.put_u8(1);
                    put_will(b, w);
                }
                None => b.put_u8(0),
            }
            b.put_u64_le(*since);
        }
        Record::SessionGone { client } => {
            b.put_u8(4);
            put_bytes(b, client.as_bytes());
        }
        Record::Subscribe {
            client,
            filter,
            options,
            identifier,
        } => {
            b.put_u8(5);
            put_bytes(b, client.as_bytes());
            put_bytes(b, filter.as_bytes());
            b.put_u8(options_byte(options));
            b.put_u32_le(identifier.unwrap_or(0));
        }
        Record::Unsubscribe { client, filter } => {
            b.put_u8(6);
            put_bytes(b, client.as_bytes());
            put_bytes(b, filter.as_bytes());
        }
        Record::Enqueue {
            client,
            seq,
            id,
            qos,
            retain,
            subscription_ids,
            shared,
        } => {
            put_entry(b, TAG_ENQUEUE, client.as_bytes(), *seq, *id, *qos, *retain);
            b.put_u32_le(subscription_ids.len() as u32);
            for s in subscription_ids {
                b.put_u32_le(*s);
            }
            put_opt_bytes(b, shared.as_deref().map(str::as_bytes));
        }
        Record::Sent { client, seq, pkid } => {
            b.put_u8(8);
            put_bytes(b, client.as_bytes());
            b.put_u64_le(*seq);
            b.put_u16_le(*pkid);
        }
        Record::Skip { client, seq } => {
            b.put_u8(9);
            put_bytes(b, client.as_bytes());
            b.put_u64_le(*seq);
        }
        Record::Acked { client, pkid } => client_pkid(b, 10, client, *pkid),
        Record::Released { client, pkid } => client_pkid(b, 11, client, *pkid),
        Record::Qos2In { client, pkid } => client_pkid(b, 12, client, *pkid),
        Record::Qos2InDone { client, pkid } => client_pkid(b, 13, client, *pkid),
        Record::GroupEnqueue {
            group,
            seq,
            id,
            qos,
            retain,
        } => {
            put_entry(b, 14, group.as_bytes(), *seq, *id, *qos, *retain);
        }
        Record::GroupTaken { group, seq } => {
            b.put_u8(15);
            put_bytes(b, group.as_bytes());
            b.put_u64_le(*seq);
        }
        Record::SentMany { client, sent } => {
            b.put_u8(TAG_SENT_MANY);
            put_bytes(b, client.as_bytes());
            b.put_u32_le(sent.len() as u32);
            for (seq, pkid) in sent {
                b.put_u64_le(*seq);
                b.put_u16_le(*pkid);
            }
        }
        Record::AckedMany { client, pkids } => {
            b.put_u8(TAG_ACKED_MANY);
            put_bytes(b, client.as_bytes());
            b.put_u32_le(pkids.len() as u32);
            for pkid in pkids {
                b.put_u16_le(*pkid);
            }
        }
        Record::SentHorizon { client, seq } => {
            b.put_u8(TAG_SENT_HORIZON);
            put_bytes(b, client.as_bytes());
            b.put_u64_le(*seq);
        }
        Record::Delayed { id, due } => {
            b.put_u8(TAG_DELAYED);
            b.put_u64_le(*id);
            b.put_u64_le(*due);
        }
        Record::DelayedDone { id } => {
            b.put_u8(TAG_DELAYED_DONE);
            b.put_u64_le(*id);
        }
        Record::Priority { id, priority } => {
            b.put_u8(TAG_PRIORITY);
            b.put_u64_le(*id);
            b.put_u8(*priority);
        }
    }
}

/// The fields a session's and a group's queue entries share.
fn put_entry(b: &mut BytesMut, tag: u8, owner: &[u8], seq: u64, id: u64, qos: QoS, retain: bool) {
    b.put_u8(tag);
    put_bytes(b, owner);
    b.put_u64_le(seq);
    b.put_u64_le(id);
    b.put_u8(qos as u8);
    b.put_u8(u8::from(retain));
}

fn client_pkid(b: &mut BytesMut, tag: u8, client: &str, pkid: u16) {
    b.put_u8(tag);
    put_bytes(b, client.as_bytes());
    b.put_u16_le(pkid);
}

/// Reads fields of one record payload.
pub(super) struct Fields {
    pub(super) b: Bytes,
}

impl Fields {
    pub(super) fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.b.remaining() < n {
            Err(DecodeError::Short)
        } else {
            Ok(())
        }
    }
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.b.get_u16_le())
    }
    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.b.get_u32_le())
    }
    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.b.get_u64_le())
    }
    pub(super) fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.b.split_to(n))
    }
    fn opt_bytes(&mut self) -> Result<Option<Bytes>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.bytes().map(Some),
        }
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }
    pub(super) fn client(&mut self) -> Result<ClientId, DecodeError> {
        let b = self.bytes()?;
        Ok(std::str::from_utf8(&b)
            .map_err(|_| DecodeError::NotUtf8)?
            .into())
    }
    /// An MQTT string sharing the record's buffer (no copy).
    pub(super) fn str(&mut self) -> Result<Str, DecodeError> {
        Str::from_bytes(self.bytes()?).map_err(|e| DecodeError::bad("string", e))
    }
    pub(super) fn topic(&mut self) -> Result<TopicName, DecodeError> {
        TopicName::new(self.str()?).map_err(|e| DecodeError::bad("topic", e))
    }
    pub(super) fn filter(&mut self) -> Result<TopicFilter, DecodeError> {
        TopicFilter::try_from(self.string()?.as_str()).map_err(|e| DecodeError::bad("filter", e))
    }
    pub(super) fn qos(&mut self) -> Result<QoS, DecodeError> {
        QoS::from_u8(self.u8()?).ok_or(DecodeError::BadQos)
    }
    pub(super) fn props(&mut self) -> Result<PublishProperties, DecodeError> {
        let pfi = self.u8()?;
        let expiry = self.u64()?;
        let response_topic = match self.opt_bytes()? {
            Some(b) => Some(
                TopicName::try_from(std::str::from_utf8(&b).map_err(|_| DecodeError::NotUtf8)?)
                    .map_err(|e| DecodeError::bad("response topic", e))?,
            ),
            None => None,
        };
        let correlation_data = self.opt_bytes()?;
        let content_type = match self.opt_bytes()? {
            Some(b) => Some(
                Str::try_from(String::from_utf8(b.to_vec()).map_err(|_| DecodeError::NotUtf8)?)
                    .map_err(|e| DecodeError::bad("content type", e))?,
            ),
            None => None,
        };
        let n = self.u32()?;
        let mut user_properties = Vec::new();
        for _ in 0..n {
            user_properties.push((self.str()?, self.str()?));
        }
        Ok(PublishProperties {
            payload_format_indicator: (pfi != 0xFF).then_some(pfi),
            message_expiry_interval: u32::try_from(expiry).ok(),
            response_topic,
            correlation_data,
            content_type,
            user_properties,
            ..Default::default()
        })
    }
    pub(super) fn will(&mut self) -> Result<LastWill, DecodeError> {
        Ok(LastWill {
            topic: self.topic()?,
            payload: self.bytes()?,
            qos: self.qos()?,
            retain: self.u8()? != 0,
            delay_interval: self.u32()?,
            properties: self.props()?,
        })
    }
}

/// Decodes one record payload (without the frame).
pub fn decode_record(payload: Bytes, now: Instant) -> Result<Record, DecodeError> {
    let mut f = Fields { b: payload };
    let rec = match f.u8()? {
        1 => {
            let id = f.u64()?;
            let topic = f.topic()?;
            let payload = f.bytes()?;
            let qos = f.qos()?;
            let retain = f.u8()? != 0;
            let origin = f.client()?;
            let expires = f.u64()?;
            let properties = f.props()?;
            let mut m = Message::new(topic, payload, qos, retain, properties, origin, now);
            m.id = id;
            m.expires_at = unix_to_deadline(expires, now);
            Record::Message(Arc::new(m))
        }
        2 => Record::Retain {
            topic: f.str()?,
            id: f.u64()?,
        },
        3 => Record::Session {
            client: f.client()?,
            expiry: f.u32()?,
            username: match f.opt_bytes()? {
                Some(b) => Some(
                    String::from_utf8(b.to_vec())
                        .map_err(|_| DecodeError::NotUtf8)?
                        .into(),
                ),
                None => None,
            },
            will: match f.u8()? {
                0 => None,
                _ => Some(Box::new(f.will()?)),
            },
            since: f.u64()?,
        },
        4 => Record::SessionGone {
            client: f.client()?,
        },
        5 => Record::Subscribe {
            client: f.client()?,
            filter: f.filter()?,
            options: options_from(f.u8()?)?,
            identifier: match f.u32()? {
                0 => None,
                v => Some(v),
            },
        },
        6 => Record::Unsubscribe {
            client: f.client()?,
            filter: f.filter()?,
        },
        7 => {
            let client = f.client()?;
            let seq = f.u64()?;
            let id = f.u64()?;
            let qos = f.qos()?;
            let retain = f.u8()? != 0;
            let n = f.u32()?;
            let mut subscription_ids = Vec::new();
            for _ in 0..n.min(1024) {
                subscription_ids.push(f.u32()?);
            }
            let shared = match f.opt_bytes()? {
                Some(b) => Some(
                    TopicFilter::try_from(
                        std::str::from_utf8(&b).map_err(|_| DecodeError::NotUtf8)?,
                    )
                    .map_err(|e| DecodeError::bad("filter", e))?,
                ),
                None => None,
            };
            Record::Enqueue {
                client,
                seq,
                id,
                qos,
                retain,
                subscription_ids,
                shared,
            }
        }
        8 => Record::Sent {
            client: f.client()?,
            seq: f.u64()?,
            pkid: f.u16()?,
        },
        9 => Record::Skip {
            client: f.client()?,
            seq: f.u64()?,
        },
        t @ 10..=13 => {
            let (client, pkid) = (f.client()?, f.u16()?);
            match t {
                10 => Record::Acked { client, pkid },
                11 => Record::Released { client, pkid },
                12 => Record::Qos2In { client, pkid },
                _ => Record::Qos2InDone { client, pkid },
            }
        }
        14 => Record::GroupEnqueue {
            group: f.filter()?,
            seq: f.u64()?,
            id: f.u64()?,
            qos: f.qos()?,
            retain: f.u8()? != 0,
        },
        15 => Record::GroupTaken {
            group: f.filter()?,
            seq: f.u64()?,
        },
        TAG_SENT_HORIZON => Record::SentHorizon {
            client: f.client()?,
            seq: f.u64()?,
        },
        TAG_DELAYED => Record::Delayed {
            id: f.u64()?,
            due: f.u64()?,
        },
        TAG_DELAYED_DONE => Record::DelayedDone { id: f.u64()? },
        TAG_PRIORITY => Record::Priority {
            id: f.u64()?,
            priority: f.u8()?,
        },
        TAG_SENT_MANY => {
            let client = f.client()?;
            let n = f.u32()? as usize;
            // Each entry takes 10 bytes: a count the payload cannot hold is damage.
            f.need(n.checked_mul(10).ok_or(DecodeError::BadCount)?)?;
            let mut sent = Vec::with_capacity(n);
            for _ in 0..n {
                sent.push((f.u64()?, f.u16()?));
            }
            Record::SentMany { client, sent }
        }
        TAG_ACKED_MANY => {
            let client = f.client()?;
            let n = f.u32()? as usize;
            f.need(n.checked_mul(2).ok_or(DecodeError::BadCount)?)?;
            let mut pkids = Vec::with_capacity(n);
            for _ in 0..n {
                pkids.push(f.u16()?);
            }
            Record::AckedMany { client, pkids }
        }
        t => return Err(DecodeError::UnknownTag(t)),
    };
    Ok(rec)
}

/// The tag byte of a message record.
pub(super) const TAG_MESSAGE: u8 = 1;
/// The tag byte of a queue entry record.
const TAG_ENQUEUE: u8 = 7;
/// The tag byte of a frame holding several records that count together (never messages).
pub(super) const TAG_BATCH: u8 = 16;
/// The tag byte of a `SentHorizon` record.
const TAG_SENT_HORIZON: u8 = 17;
// Delayed publish and priorities: tags far above the others, so kinds added elsewhere meanwhile
// do not collide.
const TAG_DELAYED: u8 = 0x40;
const TAG_DELAYED_DONE: u8 = 0x41;
const TAG_PRIORITY: u8 = 0x42;
/// The tag byte of a `SentMany` record.
const TAG_SENT_MANY: u8 = 18;
/// The tag byte of an `AckedMany` record.
const TAG_ACKED_MANY: u8 = 19;

/// Applies one record's payload other than a message's: queue entries read in place (the most
/// common record of a long queue), the others decoded (copied: a record must not keep the read
/// buffer alive).
pub(super) fn apply_meta_payload(
    image: &mut Image,
    payload: &[u8],
    now: Instant,
) -> Result<(), DecodeError> {
    if payload.first() == Some(&TAG_ENQUEUE) {
        let (client, q) = parse_enqueue(&payload[1..])?;
        image.enqueue(client, q);
    } else {
        let rec = decode_record(Bytes::copy_from_slice(payload), now)?;
        if matches!(rec, Record::Message(_)) {
            return Err(DecodeError::MessageInBatch);
        }
        image.apply_meta(&rec);
    }
    Ok(())
}

/// Encodes `recs` (no messages) as one batch frame.
pub(super) fn encode_batch<'a>(recs: impl Iterator<Item = &'a Record>, out: &mut BytesMut) {
    let start = out.len();
    out.put_u64_le(0); // length and CRC, patched below
    out.put_u8(TAG_BATCH);
    for rec in recs {
        let at = out.len();
        out.put_u32_le(0);
        encode_payload(rec, out);
        let n = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    let len = (out.len() - start - 8) as u32;
    let crc = crc32(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// An `Enqueue` record's fields (after the tag), read in place: the client id borrowed, no
/// allocation unless the entry has subscription identifiers or a shared filter.
pub(super) fn parse_enqueue(mut p: &[u8]) -> Result<(&str, QueuedImage), DecodeError> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
        if p.len() < n {
            return Err(DecodeError::Short);
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Ok(head)
    }
    fn u32_of(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn u64_of(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    }
    let n = u32_of(take(&mut p, 4)?) as usize;
    let client = std::str::from_utf8(take(&mut p, n)?).map_err(|_| DecodeError::NotUtf8)?;
    let seq = u64_of(take(&mut p, 8)?);
    let id = u64_of(take(&mut p, 8)?);
    let qos = QoS::from_u8(take(&mut p, 1)?[0]).ok_or(DecodeError::BadQos)?;
    let retain = take(&mut p, 1)?[0] != 0;
    let n = u32_of(take(&mut p, 4)?) as usize;
    let ids = take(&mut p, n.checked_mul(4).ok_or(DecodeError::BadCount)?)?;
    let subscription_ids: Box<[u32]> = ids.chunks_exact(4).map(u32_of).collect();
    let shared = match take(&mut p, 1)?[0] {
        0 => None,
        _ => {
            let n = u32_of(take(&mut p, 4)?) as usize;
            let f = std::str::from_utf8(take(&mut p, n)?).map_err(|_| DecodeError::NotUtf8)?;
            Some(Box::new(
                TopicFilter::try_from(f).map_err(|e| DecodeError::bad("filter", e))?,
            ))
        }
    };
    let q = QueuedImage {
        seq,
        id,
        qos,
        retain,
        subscription_ids,
        shared,
    };
    Ok((client, q))
}

/// The CRC-32 of a frame's payload. `crc32fast::hash` detects the CPU's features anew on every
/// call; a hasher detected once and cloned skips that for every frame written and read back
/// (a durable drain checksums each message it reads, issue 16). Same checksum, same SIMD path.
fn crc32(data: &[u8]) -> u32 {
    static DETECTED: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    let mut h = DETECTED.get_or_init(crc32fast::Hasher::new).clone();
    h.update(data);
    h.finalize()
}

/// Checks a whole frame's length and checksum.
pub(super) fn check_frame(frame: &[u8]) -> Result<(), DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::ShortFrame);
    }
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len + 8 != frame.len() || crc32(&frame[8..]) != crc {
        return Err(DecodeError::BadFrame);
    }
    Ok(())
}
