//! The encoder. One generic body writer per packet runs twice: over a [`Sizer`], which validates
//! every field and computes the remaining length (and each property block's length), then over a
//! [`Writer`] into space reserved once. Since both passes run the same code, `encoded_len` and
//! the bytes `encode` appends cannot disagree; nothing is allocated besides the reservation.

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::*;
use crate::properties as props;
use crate::read::varint_len;
use crate::types::{ReasonCode, Str};
use crate::MAX_REMAINING_LENGTH;

/// Appends `packet` encoded for `protocol` to `buf`; on error nothing is appended.
///
/// The level written in a CONNECT is `protocol`, not `Connect::protocol`. For 3.1 / 3.1.1 the
/// 5.0-only parts (properties, ack reason codes) are not written; see [`connack_return_code`]
/// for how a CONNACK reason becomes a 3.1.1 return code. AUTH cannot be sent before 5.0.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
    prepare(packet, protocol)?.write(buf)
}

/// The number of bytes [`encode`] would append (fixed header included).
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> Result<usize, EncodeError> {
    Ok(prepare(packet, protocol)?.len())
}

/// Measures `packet` once (validating every field) for a caller that needs its length before
/// deciding where, or whether, to write it: [`Prepared::write`] then writes it without
/// measuring it again. `encode` is `prepare` then `write`.
pub fn prepare(packet: &Packet, protocol: Protocol) -> Result<Prepared<'_>, EncodeError> {
    let sizes = measure(packet, protocol)?;
    Ok(Prepared {
        packet,
        protocol,
        sizes,
    })
}

/// A packet measured by [`prepare`], ready to be written.
#[derive(Debug)]
pub struct Prepared<'a> {
    packet: &'a Packet,
    protocol: Protocol,
    sizes: Sizes,
}

impl Prepared<'_> {
    /// The number of bytes [`Prepared::write`] appends (fixed header included).
    pub fn len(&self) -> usize {
        1 + varint_len(self.sizes.len) + self.sizes.len
    }

    /// Never true: every packet has at least its fixed header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the packet to `buf`; on error nothing is appended.
    pub fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = buf.len();
        buf.reserve(self.len());
        buf.put_u8(first_byte(self.packet));
        put_varint(buf, self.sizes.len as u32);
        let mut writer = Writer {
            buf,
            blocks: self.sizes.blocks,
            next: 0,
        };
        if let Err(e) = body(self.packet, self.protocol, &mut writer) {
            // Unreachable after a successful measure, but never leave a partial packet behind.
            buf.truncate(start);
            return Err(e);
        }
        Ok(())
    }
}

/// The 3.1 / 3.1.1 CONNACK return code (3.2.2.3) for a 5.0 reason code.
///
/// 0x00 -> 0 accepted; 0x84 -> 1 unacceptable protocol version; 0x85 -> 2 identifier rejected;
/// 0x86 -> 4 bad user name or password; 0x87 (not authorized), 0x8A (banned) and 0x8C (bad
/// authentication method) -> 5 not authorized; every other failure, including 0x80 Unspecified
/// error, 0x88 Server unavailable and 0x89 Server busy -> 3 server unavailable.
pub fn connack_return_code(reason: ReasonCode) -> u8 {
    match reason.0 {
        0x00 => 0,
        0x84 => 1,
        0x85 => 2,
        0x86 => 4,
        0x87 | 0x8A | 0x8C => 5,
        _ => 3,
    }
}

/// Result of the measuring pass.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// The remaining length.
    len: usize,
    /// Property block lengths in the order they are written (CONNECT has two).
    blocks: [usize; 2],
}

fn measure(packet: &Packet, protocol: Protocol) -> Result<Sizes, EncodeError> {
    let mut sizer = Sizer {
        len: 0,
        blocks: [0; 2],
        count: 0,
    };
    body(packet, protocol, &mut sizer)?;
    if sizer.len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge(sizer.len));
    }
    Ok(Sizes {
        len: sizer.len,
        blocks: sizer.blocks,
    })
}

fn put_varint(buf: &mut BytesMut, mut v: u32) {
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            buf.put_u8(byte);
            return;
        }
        buf.put_u8(byte | 0x80);
    }
}

/// Where a packet body goes: counted by [`Sizer`], written by [`Writer`].
pub(crate) trait Sink: Sized {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn varint(&mut self, v: u32);
    fn raw(&mut self, b: &[u8]);
    /// A property block: its length, then what `f` emits.
    fn props(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError>;

    /// A UTF-8 string or binary field: two-byte length, then the bytes (1.5.4, 1.5.6).
    fn prefixed(&mut self, field: &'static str, b: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: b.len(),
        })?;
        self.u16(len);
        self.raw(b);
        Ok(())
    }
}

/// Counts bytes and records property block lengths.
struct Sizer {
    len: usize,
    blocks: [usize; 2],
    count: usize,
}

impl Sink for Sizer {
    fn u8(&mut self, _: u8) {
        self.len += 1;
    }
    fn u16(&mut self, _: u16) {
        self.len += 2;
    }
    fn u32(&mut self, _: u32) {
        self.len += 4;
    }
    fn varint(&mut self, v: u32) {
        self.len += varint_len(v as usize);
    }
    fn raw(&mut self, b: &[u8]) {
        self.len += b.len();
    }
    fn props(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let start = self.len;
        f(self)?;
        let block = self.len - start;
        if block > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge(block));
        }
        self.len += varint_len(block);
        let slot = self
            .blocks
            .get_mut(self.count)
            .ok_or(EncodeError::InvalidValue("too many property blocks"))?;
        *slot = block;
        self.count += 1;
        Ok(())
    }
}

/// Writes into reserved space, taking property block lengths from the measuring pass.
struct Writer<'a> {
    buf: &'a mut BytesMut,
    blocks: [usize; 2],
    next: usize,
}

impl Sink for Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.put_u32(v);
    }
    fn varint(&mut self, v: u32) {
        put_varint(self.buf, v);
    }
    fn raw(&mut self, b: &[u8]) {
        self.buf.put_slice(b);
    }
    fn props(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let len = *self
            .blocks
            .get(self.next)
            .ok_or(EncodeError::InvalidValue("too many property blocks"))?;
        self.next += 1;
        put_varint(self.buf, len as u32);
        f(self)
    }
}

/// Packet type and flags (2.1.2, 2.1.3).
fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            // DUP is meaningless for QoS 0 and must not be set [MQTT-3.3.1-2].
            let dup = p.dup && p.qos != QoS::AtMostOnce;
            0x30 | (u8::from(dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

fn pkid<S: Sink>(s: &mut S, id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::InvalidValue(
            "packet identifier 0 [MQTT-2.2.1-3]",
        ));
    }
    s.u16(id);
    Ok(())
}

fn ack_props_empty(p: &AckProperties) -> bool {
    p.reason_string.is_none() && p.user_properties.is_empty()
}

/// Everything after the fixed header.
fn body<S: Sink>(packet: &Packet, protocol: Protocol, s: &mut S) -> Result<(), EncodeError> {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => connect(c, protocol, s)?,
        Packet::ConnAck(c) => {
            s.u8(u8::from(c.session_present));
            if v5 {
                s.u8(c.reason.0);
                s.props(|s| props::emit_connack(s, &c.properties))?;
            } else {
                s.u8(connack_return_code(c.reason));
            }
        }
        Packet::Publish(p) => publish(p, v5, s)?,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            pkid(s, a.pkid)?;
            let no_props = ack_props_empty(&a.properties);
            // 5.0 short forms (3.4.2.1): Success without properties is the packet id alone.
            if v5 && !(a.reason == ReasonCode::SUCCESS && no_props) {
                s.u8(a.reason.0);
                if !no_props {
                    s.props(|s| props::emit_ack(s, &a.properties))?;
                }
            }
        }
        Packet::Subscribe(sub) => subscribe(sub, v5, s)?,
        Packet::SubAck(a) => {
            pkid(s, a.pkid)?;
            if a.reasons.is_empty() {
                return Err(EncodeError::InvalidValue(
                    "SUBACK without a return code (3.9.3)",
                ));
            }
            if v5 {
                s.props(|s| props::emit_ack(s, &a.properties))?;
            }
            for r in &a.reasons {
                // 3.1.1 knows only 0, 1, 2 and 0x80 Failure.
                s.u8(if v5 || r.0 <= 2 { r.0 } else { 0x80 });
            }
        }
        Packet::Unsubscribe(u) => unsubscribe(u, v5, s)?,
        Packet::UnsubAck(a) => {
            pkid(s, a.pkid)?;
            if v5 {
                s.props(|s| props::emit_ack(s, &a.properties))?;
                for r in &a.reasons {
                    s.u8(r.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            let p = &d.properties;
            let no_props = p.session_expiry_interval.is_none()
                && p.reason_string.is_none()
                && p.user_properties.is_empty()
                && p.server_reference.is_none();
            // 5.0 short forms (3.14.2.1): `e0 00` for a normal disconnection, a lone reason code.
            if v5 && !(d.reason == ReasonCode::NORMAL_DISCONNECTION && no_props) {
                s.u8(d.reason.0);
                if !no_props {
                    s.props(|s| props::emit_disconnect(s, p))?;
                }
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotInProtocol("AUTH"));
            }
            if !matches!(a.reason.0, 0x00 | 0x18 | 0x19) {
                return Err(EncodeError::InvalidValue(
                    "AUTH reason code not 0x00, 0x18 or 0x19",
                ));
            }
            let p = &a.properties;
            let no_props = p.authentication_method.is_none()
                && p.authentication_data.is_none()
                && p.reason_string.is_none()
                && p.user_properties.is_empty();
            // Only Success without properties may omit both reason and property length (3.15.2.1).
            if !(a.reason == ReasonCode::SUCCESS && no_props) {
                s.u8(a.reason.0);
                s.props(|s| props::emit_auth(s, p))?;
            }
        }
    }
    Ok(())
}

fn connect<S: Sink>(c: &Connect, protocol: Protocol, s: &mut S) -> Result<(), EncodeError> {
    let v5 = protocol.is_v5();
    let name: &[u8] = if protocol == Protocol::V31 {
        b"MQIsdp"
    } else {
        b"MQTT"
    };
    if !v5 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::InvalidValue(
            "password without user name before 5.0 [MQTT-3.1.2-22]",
        ));
    }
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.prefixed("protocol name", name)?;
    s.u8(protocol.level());
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        s.props(|s| props::emit_connect(s, &c.properties))?;
    }
    s.prefixed("client identifier", c.client_id.as_bytes())?;
    if let Some(w) = &c.will {
        if w.topic.is_empty() {
            return Err(EncodeError::InvalidValue("empty will topic [MQTT-4.7.3-1]"));
        }
        if v5 {
            s.props(|s| props::emit_publish(s, &w.properties, Some(w.delay_interval)))?;
        }
        s.prefixed("will topic", w.topic.as_mqtt_str().as_bytes())?;
        s.prefixed("will payload", &w.payload)?;
    }
    if let Some(u) = &c.username {
        s.prefixed("user name", u.as_bytes())?;
    }
    if let Some(p) = &c.password {
        s.prefixed("password", p)?;
    }
    Ok(())
}

fn publish<S: Sink>(p: &Publish, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    if p.topic.is_empty() && !(v5 && p.properties.topic_alias.is_some()) {
        return Err(EncodeError::InvalidValue(
            "empty topic name without a topic alias",
        ));
    }
    s.prefixed("topic name", p.topic.as_mqtt_str().as_bytes())?;
    if p.qos != QoS::AtMostOnce {
        pkid(s, p.pkid)?;
    }
    if v5 {
        if p.properties.is_empty() {
            // The hot path: most messages carry no properties, only their zero length.
            s.u8(0);
        } else {
            s.props(|s| props::emit_publish(s, &p.properties, None))?;
        }
    }
    s.raw(&p.payload);
    Ok(())
}

/// Writes valid and rejected filters interleaved back at their original positions, so a client
/// (a test, the benchmark) can send invalid filters and a decoded packet re-encodes to itself.
fn filters<'a, S: Sink, T: 'a>(
    s: &mut S,
    valid: &'a [T],
    rejected: impl Iterator<Item = (usize, &'a Str)>,
    mut write: impl FnMut(&mut S, Result<&'a T, &'a Str>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let mut valid = valid.iter();
    let mut rejected = rejected.peekable();
    let mut index = 0;
    loop {
        if let Some((_, raw)) = rejected.next_if(|&(i, _)| i == index) {
            write(s, Err(raw))?;
        } else if let Some(v) = valid.next() {
            write(s, Ok(v))?;
        } else if rejected.peek().is_some() {
            return Err(EncodeError::InvalidValue(
                "rejected filter positions out of order or range",
            ));
        } else if index == 0 {
            return Err(EncodeError::InvalidValue(
                "no topic filter [MQTT-3.8.3-3] [MQTT-3.10.3-2]",
            ));
        } else {
            return Ok(());
        }
        index += 1;
    }
}

fn subscribe<S: Sink>(sub: &Subscribe, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    pkid(s, sub.pkid)?;
    if v5 {
        s.props(|s| props::emit_subscribe(s, &sub.properties))?;
    }
    let rejected = sub.rejected.iter().map(|(i, raw, _)| (*i, raw));
    filters(s, &sub.filters, rejected, |s, f| {
        let (raw, options) = match f {
            Ok(f) => (f.filter.as_mqtt_str(), f.options),
            Err(raw) => (raw, SubscriptionOptions::default()),
        };
        s.prefixed("topic filter", raw.as_bytes())?;
        let mut byte = options.qos as u8;
        if v5 {
            byte |= u8::from(options.no_local) << 2
                | u8::from(options.retain_as_published) << 3
                | (options.retain_handling as u8) << 4;
        }
        s.u8(byte);
        Ok(())
    })
}

fn unsubscribe<S: Sink>(u: &Unsubscribe, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    pkid(s, u.pkid)?;
    if v5 {
        s.props(|s| props::emit_users(s, &u.user_properties))?;
    }
    let rejected = u.rejected.iter().map(|(i, raw)| (*i, raw));
    filters(s, &u.filters, rejected, |s, f| {
        let raw = match f {
            Ok(f) => f.as_mqtt_str(),
            Err(raw) => raw,
        };
        s.prefixed("topic filter", raw.as_bytes())
    })
}
