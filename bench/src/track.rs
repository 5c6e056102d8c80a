//! The payload format and what a subscriber keeps about what it received.
//!
//! Payload: bytes 0..8 = publisher id (high 24 bits) | sequence number (low 40 bits), big endian;
//! bytes 8..16 = send time in nanoseconds since [`epoch`], big endian; the rest is filler.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Smallest payload: sequence number and timestamp.
pub const MIN_PAYLOAD: usize = 16;
/// Bits of the sequence number; the publisher id is above them.
pub const SEQ_BITS: u32 = 40;
/// Sequence numbers at or above this are treated as corrupt (keeps the bitmaps bounded: 32 MiB).
pub const MAX_SEQ: u64 = 1 << 28;

/// The generator's time origin (the same process sends and receives, so one monotonic clock).
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Writes id/sequence and timestamp into the first 16 bytes of `payload`.
pub fn stamp(payload: &mut [u8], publisher: u32, seq: u64, ts_ns: u64) {
    let id = (u64::from(publisher) << SEQ_BITS) | seq;
    payload[..8].copy_from_slice(&id.to_be_bytes());
    payload[8..16].copy_from_slice(&ts_ns.to_be_bytes());
}

/// Reads (publisher, sequence, timestamp) back; `None` if the payload is too short.
pub fn unstamp(payload: &[u8]) -> Option<(u32, u64, u64)> {
    if payload.len() < MIN_PAYLOAD {
        return None;
    }
    let id = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let ts = u64::from_be_bytes(payload[8..16].try_into().ok()?);
    Some(((id >> SEQ_BITS) as u32, id & ((1 << SEQ_BITS) - 1), ts))
}

/// What one subscriber saw of one publisher's sequence.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    bits: Vec<u64>,
    pub unique: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    max_seen: Option<u64>,
}

impl Stream {
    /// Records one received sequence number (< [`MAX_SEQ`]).
    pub fn see(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            let len = (word + 1).max(self.bits.len() * 2);
            self.bits.resize(len, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return;
        }
        self.bits[word] |= 1 << bit;
        self.unique += 1;
        match self.max_seen {
            Some(m) if seq < m => self.out_of_order += 1,
            _ => self.max_seen = Some(seq),
        }
    }
}

impl Stream {
    /// Adds what another subscriber saw of the same publisher (the members of a shared
    /// subscription): a sequence number both saw counts as duplicated.
    pub fn absorb(&mut self, other: &Stream) {
        if self.bits.len() < other.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        for (mine, theirs) in self.bits.iter_mut().zip(&other.bits) {
            self.duplicated += u64::from((*mine & theirs).count_ones());
            self.unique += u64::from((theirs & !*mine).count_ones());
            *mine |= theirs;
        }
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.max_seen = match (self.max_seen, other.max_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Everything one subscriber measured.
#[derive(Debug)]
pub struct SubStats {
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    pub streams: HashMap<u32, Stream>,
    /// PUBLISH packets received (duplicates included).
    pub received: u64,
    /// Payloads too short, with a sequence number out of range, or from an unknown publisher.
    pub corrupt: u64,
    /// Other unexpected packets from the broker.
    pub unexpected: u64,
    /// Payload bytes received (duplicates included).
    pub bytes: u64,
    /// Time of the last PUBLISH received, ns since epoch.
    pub last_recv_ns: Option<u64>,
    /// Time of the first PUBLISH received, ns since epoch.
    pub first_recv_ns: Option<u64>,
}

impl SubStats {
    pub fn new() -> SubStats {
        SubStats {
            latency: new_histogram(),
            streams: HashMap::new(),
            received: 0,
            corrupt: 0,
            unexpected: 0,
            bytes: 0,
            last_recv_ns: None,
            first_recv_ns: None,
        }
    }

    /// Records one PUBLISH payload received at `now_ns`.
    pub fn record(&mut self, payload: &[u8], now_ns: u64, publishers: u32) {
        self.received += 1;
        self.bytes += payload.len() as u64;
        self.last_recv_ns = Some(now_ns);
        self.first_recv_ns.get_or_insert(now_ns);
        match unstamp(payload) {
            Some((publisher, seq, ts)) if seq < MAX_SEQ && publisher < publishers => {
                self.streams.entry(publisher).or_default().see(seq);
                self.latency
                    .saturating_record(now_ns.saturating_sub(ts) / 1000);
            }
            _ => self.corrupt += 1,
        }
    }

    pub fn unique(&self) -> u64 {
        self.streams.values().map(|s| s.unique).sum()
    }
}

/// A latency histogram: 1 µs .. 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}
