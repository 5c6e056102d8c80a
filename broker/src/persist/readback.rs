//! Reading message records back from the log: a queue kept on disk is read back span by span
//! when its subscriber drains it, and decoded by a [`MessageDecoder`].

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_codec::{PublishProperties, QoS, Str, TopicName};

use crate::message::{ClientId, Message};

use super::format::{check_frame, unix_to_deadline, Fields, TAG_MESSAGE};
use super::*;

/// Reads the frame of `slot` from `file` and decodes its message.
pub(super) fn read_message(
    file: &File,
    slot: &MsgSlot,
    now: Instant,
) -> Result<Arc<Message>, ReadError> {
    use std::os::unix::fs::FileExt;
    let mut frame = vec![0u8; slot.len as usize];
    file.read_exact_at(&mut frame, slot.at)
        .map_err(|source| ReadError::Io {
            at: slot.at,
            len: slot.len,
            source,
        })?;
    MessageDecoder::default().decode(&frame, slot.at, now)
}

/// Largest span [`read_messages`] reads at once.
const SPAN: u64 = 1024 * 1024;
/// Largest hole inside one span.
const GAP: u64 = 64 * 1024;
/// Most bytes of span buffer a thread keeps between read-backs (a drain reads half of
/// `persistence.queue_memory_bytes`, 256 KiB by default, at a time).
const KEEP: usize = 256 * 1024;

thread_local! {
    /// The span buffer of [`read_messages`], kept per thread: growing a fresh one zeroed it for
    /// every read-back (~3 % of a durable drain's instructions, issue 16). At most [`KEEP`]
    /// bytes stay, on the blocking pool's threads (which end after 10 s idle).
    static SPAN_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads many messages back with few reads: the slots are taken in file order and records close
/// to each other (a session's queue was mostly written in a row) are read with one positioned
/// read of the span that covers them.
pub(super) fn read_messages(
    file: &File,
    slots: &[Option<MsgSlot>],
    now: Instant,
    shared_blocks: bool,
) -> Vec<Option<Arc<Message>>> {
    use std::os::unix::fs::FileExt;
    let mut order: Vec<(usize, MsgSlot)> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, (*s)?)))
        .collect();
    order.sort_unstable_by_key(|(_, s)| s.at);
    SPAN_BUF.with(|b| {
        // A read-back on this thread cannot be running already (nothing here awaits); if it
        // were, a buffer of its own.
        let mut own = Vec::new();
        let mut guard = b.try_borrow_mut().ok();
        let buf = guard.as_deref_mut().unwrap_or(&mut own);
        let mut out = vec![None; slots.len()];
        let mut decoder = MessageDecoder::default();
        if shared_blocks {
            decoder.block = Some(BytesMut::new());
        }
        let mut i = 0;
        while i < order.len() {
            let start = order[i].1.at;
            let mut end = start + u64::from(order[i].1.len);
            let mut j = i + 1;
            while j < order.len() {
                let s = order[j].1;
                let s_end = (s.at + u64::from(s.len)).max(end);
                if s.at > end + GAP || s_end - start > SPAN {
                    break;
                }
                end = s_end;
                j += 1;
            }
            let n = (end - start) as usize;
            if buf.len() < n {
                buf.resize(n, 0);
            }
            let span = &mut buf[..n];
            let span_ok = file.read_exact_at(span, start).is_ok();
            for &(k, slot) in &order[i..j] {
                out[k] = if span_ok {
                    let from = (slot.at - start) as usize;
                    decoder
                        .decode(&span[from..from + slot.len as usize], slot.at, now)
                        .ok()
                } else {
                    // Part of the span is missing (not written yet?): each on its own.
                    read_message(file, &slot, now).ok()
                };
            }
            i = j;
        }
        if buf.len() > KEEP {
            *buf = Vec::new();
        }
        out
    })
}

/// Decodes message frames read back from the log, copying each message out right-sized (its
/// payload alone, not the frame). A queue read back is mostly one publisher's messages on a
/// few topics: a topic or client id equal to the previous message's is shared with it (one
/// `Bytes`/`Arc` clone) instead of being validated and allocated again; that was most of the
/// cost of reading a backlog back (issue 16). Checksums are always verified.
#[derive(Default)]
pub(super) struct MessageDecoder {
    /// The last topic decoded, as stored and as validated.
    topic: Option<(Bytes, TopicName)>,
    /// The last origin decoded.
    origin: Option<ClientId>,
    /// Where small payloads are copied to when they may share one allocation (see
    /// [`MessageDecoder::payload`]); None: each payload is copied out on its own.
    block: Option<BytesMut>,
}

/// Payloads up to this size share a block when the decoder has one.
const SHARED_MAX: usize = 256;
/// The size of a block of shared payloads: what one payload held alone can keep alive.
const BLOCK: usize = 2048;

impl MessageDecoder {
    /// Decodes the message in a whole frame at `at` (checksum verified).
    pub(super) fn decode(
        &mut self,
        frame: &[u8],
        at: u64,
        now: Instant,
    ) -> Result<Arc<Message>, ReadError> {
        let bad = |source| ReadError::Bad { at, source };
        check_frame(frame).map_err(bad)?;
        self.decode_payload(&frame[8..], now).map_err(bad)
    }

    /// A payload read back. For messages about to be sent ([`Store::load_drain`]), payloads of
    /// up to [`SHARED_MAX`] bytes are copied one after the other into blocks of [`BLOCK`] bytes
    /// and handed out as `Bytes` of them: one allocation per block (and one for its shared
    /// reference count), where [`payload_bytes`] makes one per message, on the blocking thread
    /// that reads back while the connection's thread frees, so glibc serves each from its slow
    /// path (~280 instructions, plus the free; issue 16). The price is pinning: a payload kept
    /// while its neighbours are gone keeps its block, at most [`BLOCK`] bytes, alive. These
    /// messages are sent now and freed when acknowledged, so a block lives about as long as
    /// the inflight window that holds its messages (at most Receive Maximum messages, each
    /// pinning at most one block); messages that may be kept long (read back into memory for
    /// good, delayed messages) are copied out right-sized instead.
    fn payload(&mut self, p: &[u8]) -> Bytes {
        match &mut self.block {
            Some(block) if !p.is_empty() && p.len() <= SHARED_MAX => {
                if block.capacity() - block.len() < p.len() {
                    *block = BytesMut::with_capacity(BLOCK);
                }
                block.extend_from_slice(p);
                block.split().freeze()
            }
            _ => payload_bytes(p),
        }
    }

    /// A message record's payload (tag first); the same fields as [`decode_record`] reads.
    fn decode_payload(&mut self, p: &[u8], now: Instant) -> Result<Arc<Message>, DecodeError> {
        let mut r = Slice(p);
        if r.u8()? != TAG_MESSAGE {
            return Err(DecodeError::NotAMessage);
        }
        let id = r.u64()?;
        let topic_raw = r.bytes()?;
        let topic = match &self.topic {
            Some((raw, topic)) if raw[..] == *topic_raw => topic.clone(),
            _ => {
                let raw = Bytes::copy_from_slice(topic_raw);
                let s = Str::from_bytes(raw.clone()).map_err(|e| DecodeError::bad("string", e))?;
                let topic = TopicName::new(s).map_err(|e| DecodeError::bad("topic", e))?;
                self.topic = Some((raw, topic.clone()));
                topic
            }
        };
        let payload = self.payload(r.bytes()?);
        let qos = QoS::from_u8(r.u8()?).ok_or(DecodeError::BadQos)?;
        let retain = r.u8()? != 0;
        let origin_raw = r.bytes()?;
        let origin = match &self.origin {
            Some(o) if o.as_bytes() == origin_raw => o.clone(),
            _ => {
                let o: ClientId = std::str::from_utf8(origin_raw)
                    .map_err(|_| DecodeError::NotUtf8)?
                    .into();
                self.origin = Some(o.clone());
                o
            }
        };
        let expires = r.u64()?;
        // No properties (the common case) is 1 + 8 + 1 + 1 + 1 + 4 bytes: 0xFF, u64::MAX,
        // three absent fields and no user property.
        const NONE: [u8; 16] = [
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0,
        ];
        let properties = if r.0 == NONE {
            PublishProperties::default()
        } else {
            Fields {
                b: Bytes::copy_from_slice(r.0),
            }
            .props()?
        };
        Ok(Arc::new(Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at: unix_to_deadline(expires, now),
            // Read back from the log: its delivery latency counts from now (not logged).
            received_at: now,
            origin,
            id,
            // Set from the image (`Record::Priority`) by whoever reads the message back.
            priority: 0,
            encoded: Default::default(),
        }))
    }
}

/// A payload read back from the log, copied out with its reference count in one allocation.
///
/// `Bytes::copy_from_slice` allocates the payload alone, and the first clone of such a `Bytes`
/// (the PUBLISH built to send it, `protocol/outbound.rs`) allocates its shared reference count
/// separately: two allocations per message read back, and two frees, ~270 instructions a
/// message in a durable drain (issue 16). A small payload is copied instead into an
/// [`Inline`] of the next size class, which `Bytes::from_owner` boxes together with the count:
/// one allocation, and clones that only count. The size classes grow by half at most, so a
/// payload holds at most half its size again (plus 24 bytes; at least 32 bytes) and keeps
/// nothing else alive: still a right-sized copy per message, not a slice of the read buffer.
/// Larger payloads are copied as before.
fn payload_bytes(p: &[u8]) -> Bytes {
    match p.len() {
        0 => Bytes::new(),
        1..=32 => Inline::<32>::bytes(p),
        33..=48 => Inline::<48>::bytes(p),
        49..=64 => Inline::<64>::bytes(p),
        65..=96 => Inline::<96>::bytes(p),
        97..=128 => Inline::<128>::bytes(p),
        129..=192 => Inline::<192>::bytes(p),
        193..=256 => Inline::<256>::bytes(p),
        257..=384 => Inline::<384>::bytes(p),
        385..=512 => Inline::<512>::bytes(p),
        _ => Bytes::copy_from_slice(p),
    }
}

/// Up to `N` bytes of payload, held inline (see [`payload_bytes`]).
struct Inline<const N: usize> {
    len: usize,
    buf: [u8; N],
}

impl<const N: usize> Inline<N> {
    /// `p` (at most `N` bytes) as a `Bytes` owning an `Inline<N>`.
    fn bytes(p: &[u8]) -> Bytes {
        let mut inline = Inline {
            len: p.len(),
            buf: [0; N],
        };
        inline.buf[..p.len()].copy_from_slice(p);
        Bytes::from_owner(inline)
    }
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Reads fields of a record payload in place.
struct Slice<'a>(&'a [u8]);

impl<'a> Slice<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Short);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;

    #[test]
    fn payloads_read_back_keep_their_bytes_in_every_size_class() {
        for len in [
            0usize, 1, 31, 32, 33, 48, 49, 64, 65, 96, 100, 128, 129, 192, 193, 256, 300, 384, 385,
            512, 513, 4096,
        ] {
            let p: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let b = payload_bytes(&p);
            assert_eq!(&b[..], &p[..], "len {len}");
            let clone = b.clone();
            drop(b);
            assert_eq!(
                &clone[..],
                &p[..],
                "len {len}: a clone outlives the original"
            );
            assert_eq!(clone.slice(len / 2..), p[len / 2..], "len {len}: a slice");
        }
    }

    #[test]
    fn drained_payloads_share_blocks_and_keep_their_bytes() {
        let mut d = MessageDecoder {
            block: Some(BytesMut::new()),
            ..MessageDecoder::default()
        };
        let mut kept = Vec::new();
        for n in 0..100usize {
            let len = [0, 1, 100, SHARED_MAX, SHARED_MAX + 1, 4096][n % 6];
            let p: Vec<u8> = (0..len).map(|i| (i + n) as u8).collect();
            kept.push((d.payload(&p), p));
        }
        drop(d);
        // Every other payload goes; the rest keep their bytes.
        let kept: Vec<_> = kept.into_iter().step_by(2).collect();
        for (b, p) in &kept {
            assert_eq!(&b[..], &p[..]);
            assert_eq!(b.clone(), p[..]);
        }
        // Two small payloads in a row sit in one block: 100 B then SHARED_MAX B.
        let mut d = MessageDecoder {
            block: Some(BytesMut::new()),
            ..MessageDecoder::default()
        };
        let a = d.payload(&[1; 100]);
        let b = d.payload(&[2; SHARED_MAX]);
        assert_eq!(a.as_ptr() as usize + 100, b.as_ptr() as usize, "one block");
        // A block never holds more than BLOCK bytes: the next one starts a new block.
        let mut total = 100 + SHARED_MAX;
        let mut last = b;
        while total + SHARED_MAX <= BLOCK {
            let next = d.payload(&[3; SHARED_MAX]);
            assert_eq!(last.as_ptr() as usize + last.len(), next.as_ptr() as usize);
            total += SHARED_MAX;
            last = next;
        }
        let next = d.payload(&[4; SHARED_MAX]);
        assert_ne!(last.as_ptr() as usize + last.len(), next.as_ptr() as usize);
        assert_eq!(next, [4; SHARED_MAX][..]);
    }
}
