//! The orders themselves: topic, payload, and what was acknowledged to the shop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Regions an order comes from (`orders/<region>/<shop>`).
const REGIONS: [&str; 3] = ["eu", "us", "apac"];
/// Shops per region.
const SHOPS: u32 = 12;
/// Payloads are padded to at least this many bytes (the issue's "~200 bytes of JSON").
const PAYLOAD_BYTES: usize = 200;

/// The topic of order `seq`: `orders/<region>/<shop>`.
pub fn topic(seq: u32) -> String {
    let region = REGIONS[(seq % REGIONS.len() as u32) as usize];
    format!("orders/{region}/shop-{:02}", (seq / 3) % SHOPS)
}

/// Order `seq` of run `run` as ~200 bytes of JSON. `seq` is unique within the run; `run` tells
/// this run's orders from another run's on the same broker.
pub fn payload(run: &str, seq: u32, placed_at_ms: u128) -> Vec<u8> {
    let region = REGIONS[(seq % REGIONS.len() as u32) as usize];
    let mut s = format!(
        r#"{{"run":"{run}","seq":{seq},"order_id":"{run}-{seq:08}","region":"{region}","shop":"shop-{shop:02}","user":"u-{user:06}","items":[{{"sku":"SKU-{sku:05}","qty":{qty}}}],"amount_cents":{amount},"currency":"EUR","placed_at_ms":{placed_at_ms}"#,
        shop = (seq / 3) % SHOPS,
        user = seq.wrapping_mul(7919) % 1_000_000,
        sku = seq.wrapping_mul(31) % 100_000,
        qty = 1 + seq % 4,
        amount = 499 + (seq.wrapping_mul(37) % 20_000),
    );
    if s.len() + 2 < PAYLOAD_BYTES {
        let pad = PAYLOAD_BYTES - s.len() - 11;
        s.push_str(r#","note":""#);
        s.extend(std::iter::repeat_n('.', pad));
        s.push('"');
    }
    s.push('}');
    s.into_bytes()
}

/// What a consumer reads from a payload: the run and the sequence number (None if the payload
/// is not an order of this example).
pub fn parse(payload: &[u8]) -> Option<(&str, u32)> {
    let s = std::str::from_utf8(payload).ok()?;
    let run = s.split(r#""run":""#).nth(1)?.split('"').next()?;
    let seq = s.split(r#""seq":"#).nth(1)?;
    let end = seq.find(|c: char| !c.is_ascii_digit()).unwrap_or(seq.len());
    Some((run, seq[..end].parse().ok()?))
}

/// The orders of one run and which of them the broker acknowledged to the shop (PUBACK with a
/// success code): from then on the broker owns them, and every group must get each one.
#[derive(Debug)]
pub struct Orders {
    pub run: String,
    pub count: u32,
    acked: Vec<AtomicBool>,
    acked_count: AtomicU64,
    /// PUBACKs with an error code (e.g. 0x97 when a queue or the store is full).
    refused: AtomicU64,
}

impl Orders {
    pub fn new(run: String, count: u32) -> Orders {
        Orders {
            run,
            count,
            acked: (0..count).map(|_| AtomicBool::new(false)).collect(),
            acked_count: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn ack(&self, seq: u32) {
        if let Some(flag) = self.acked.get(seq as usize) {
            if !flag.swap(true, Ordering::Relaxed) {
                self.acked_count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn is_acked(&self, seq: u32) -> bool {
        self.acked
            .get(seq as usize)
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    pub fn acked(&self) -> u64 {
        self.acked_count.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Every order has its answer from the broker.
    pub fn all_answered(&self) -> bool {
        self.acked() + self.refused() >= u64::from(self.count)
    }
}
