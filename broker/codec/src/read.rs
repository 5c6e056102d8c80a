//! A bounds-checked cursor over one frame. Every read that runs past the end of the frame (or of
//! a property block) is a Malformed Packet, never "need more bytes": the frame is already whole.
//!
//! Fields are copied out right-sized (`Bytes::copy_from_slice`) so nothing decoded pins the
//! connection's read buffer.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::types::{Str, StrError, TopicFilter, TopicName};

/// A Malformed Packet error.
pub(crate) const fn malformed(what: &'static str, clause: &'static str) -> DecodeError {
    DecodeError::Malformed { what, clause }
}

/// A Protocol Error.
pub(crate) const fn protocol(what: &'static str, clause: &'static str) -> DecodeError {
    DecodeError::Protocol { what, clause }
}

/// The decode error for a string that failed validation. Bad UTF-8 and U+0000 are malformed
/// (1.5.4); a wildcard in a topic name is malformed too [MQTT-3.3.2-2].
pub(crate) fn str_error(e: StrError) -> DecodeError {
    let (what, clause) = match e {
        StrError::InvalidUtf8 => ("string is not valid UTF-8", "[MQTT-1.5.4-1]"),
        StrError::ContainsNul => ("string contains U+0000", "[MQTT-1.5.4-2]"),
        StrError::TooLong => ("string longer than 65,535 bytes", "[MQTT-1.5.4]"),
        StrError::WildcardInTopicName => {
            return DecodeError::TopicNameInvalid {
                what: "topic name contains '+' or '#'",
                clause: "[MQTT-3.3.2-2]",
            }
        }
        StrError::EmptyFilter => ("topic filter is empty", "[MQTT-4.7.3-1]"),
        StrError::InvalidMultiLevelWildcard => ("invalid '#' in topic filter", "[MQTT-4.7.1-1]"),
        StrError::InvalidSingleLevelWildcard => ("invalid '+' in topic filter", "[MQTT-4.7.1-2]"),
        StrError::InvalidSharedSubscription => ("invalid shared subscription", "[MQTT-4.8.2-1]"),
    };
    malformed(what, clause)
}

const PAST_END: DecodeError = malformed("field runs past the end of the packet", "(2.1.4)");

/// Reads a Variable Byte Integer (1.5.5) from the start of `buf`.
///
/// `Ok(None)`: `buf` ends before the integer does. `Err`: a fifth byte would be needed, or the
/// encoding is longer than necessary [MQTT-1.5.5-1].
/// `Ok(Some((value, bytes used)))` otherwise.
pub(crate) fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                // A last byte of 0 after a continuation: not the shortest encoding.
                return Err(malformed(
                    "variable byte integer not in its shortest form",
                    "[MQTT-1.5.5-1]",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(malformed(
        "variable byte integer longer than 4 bytes",
        "(1.5.5)",
    ))
}

/// The number of bytes `value` takes as a Variable Byte Integer.
pub(crate) const fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over a complete frame body (or a part of it).
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(PAST_END);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, tail) = self.buf.split_first().ok_or(PAST_END)?;
        self.buf = tail;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A Variable Byte Integer; running out of bytes is malformed here.
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let (value, used) = read_varint(self.buf)?.ok_or(PAST_END)?;
        self.buf = &self.buf[used..];
        Ok(value)
    }

    /// A non-zero Packet Identifier [MQTT-2.2.1-3].
    pub(crate) fn pkid(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(malformed("packet identifier 0", "[MQTT-2.2.1-3]")),
            id => Ok(id),
        }
    }

    /// A two-byte length followed by that many bytes (1.5.6), not copied.
    pub(crate) fn prefixed(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// Binary Data (1.5.6), copied out.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        Ok(Bytes::copy_from_slice(self.prefixed()?))
    }

    /// A UTF-8 Encoded String (1.5.4), validated before it is copied out.
    pub(crate) fn string(&mut self) -> Result<Str, DecodeError> {
        let raw = self.prefixed()?;
        Ok(Str::from_checked(check_str(raw)?))
    }

    /// A topic name (may be empty; the caller decides whether that is allowed).
    pub(crate) fn topic_name(&mut self) -> Result<TopicName, DecodeError> {
        TopicName::new(self.string()?).map_err(str_error)
    }

    /// A topic filter: `Ok(Err(..))` when the string is well formed but not a valid filter.
    pub(crate) fn topic_filter(
        &mut self,
    ) -> Result<Result<TopicFilter, (Str, StrError)>, DecodeError> {
        let s = self.string()?;
        Ok(TopicFilter::new(s.clone()).map_err(|e| (s, e)))
    }

    /// A sub-reader over the next `len` bytes (a property block); malformed if they are not there.
    pub(crate) fn sub(
        &mut self,
        len: usize,
        what: &'static str,
    ) -> Result<Reader<'a>, DecodeError> {
        if len > self.buf.len() {
            return Err(malformed(what, "(2.2.2.1)"));
        }
        Ok(Reader::new(self.take(len)?))
    }

    /// Fails if anything is left: trailing bytes after a packet's last field are malformed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                "unexpected bytes after the end of the packet",
                "(2.1.4)",
            ))
        }
    }
}

/// Validates MQTT UTF-8 on a slice, before copying, so a bad string costs no allocation. The
/// length is at most 65,535 because it came from a two-byte prefix.
fn check_str(raw: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(raw).map_err(|_| str_error(StrError::InvalidUtf8))?;
    if s.as_bytes().contains(&0) {
        return Err(str_error(StrError::ContainsNul));
    }
    Ok(s)
}
