//! Per-connection ingress rate limits (`limits.publish_rate`, `limits.publish_bytes_rate`):
//! token buckets charged after each PUBLISH is read. A bucket may run into debt by one batch;
//! the connection then stops reading until it is paid back, so TCP flow control pushes back on
//! the flooding client while every other connection keeps being served. Time is an argument,
//! so the arithmetic is tested without sleeping.

use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// One token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    burst: f64,
    /// May go negative: debt from a batch read before the limit could be checked.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst_seconds: u32, now: Instant) -> Bucket {
        let burst = rate * f64::from(burst_seconds.max(1));
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// How long until the debt is paid; zero when not in debt.
    fn wait(&self) -> Duration {
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The rate limits of one connection (both optional).
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl RateLimiter {
    /// Limits from the configuration; a rate of 0 means unlimited.
    pub fn new(limits: &LimitsConfig, now: Instant) -> RateLimiter {
        let b = limits.publish_burst_seconds;
        RateLimiter {
            messages: (limits.publish_rate > 0)
                .then(|| Bucket::new(f64::from(limits.publish_rate), b, now)),
            bytes: (limits.publish_bytes_rate > 0)
                .then(|| Bucket::new(limits.publish_bytes_rate as f64, b, now)),
        }
    }

    /// Whether any limit is set (so the connection can skip the bookkeeping).
    pub fn is_active(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    /// Charges one PUBLISH of `size` bytes read at `now`.
    pub fn charge(&mut self, now: Instant, size: usize) {
        if let Some(m) = &mut self.messages {
            m.refill(now);
            m.tokens -= 1.0;
        }
        if let Some(b) = &mut self.bytes {
            b.refill(now);
            b.tokens -= size as f64;
        }
    }

    /// If over a limit, how long reading must pause for the budget to recover.
    pub fn pause(&mut self, now: Instant) -> Option<Duration> {
        let mut wait = Duration::ZERO;
        for b in [&mut self.messages, &mut self.bytes].into_iter().flatten() {
            b.refill(now);
            wait = wait.max(b.wait());
        }
        (!wait.is_zero()).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, bytes: u64, burst: u32) -> LimitsConfig {
        LimitsConfig {
            publish_rate: rate,
            publish_bytes_rate: bytes,
            publish_burst_seconds: burst,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn unlimited_never_pauses() {
        let now = Instant::now();
        let mut r = RateLimiter::new(&LimitsConfig::default(), now);
        assert!(!r.is_active());
        for _ in 0..10_000 {
            r.charge(now, 1_000_000);
        }
        assert_eq!(r.pause(now), None);
    }

    #[test]
    fn burst_then_pause_until_refilled() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(&limits(100, 0, 2), t0);
        // 200 messages of burst pass without a pause.
        for _ in 0..200 {
            r.charge(t0, 10);
        }
        assert_eq!(r.pause(t0), None);
        // 50 more: 0.5 s of debt.
        for _ in 0..50 {
            r.charge(t0, 10);
        }
        let p = r.pause(t0).unwrap();
        assert!((p.as_secs_f64() - 0.5).abs() < 1e-6, "{p:?}");
        // After the pause, reading resumes.
        assert_eq!(r.pause(t0 + p), None);
        // The sustained rate: 100 per second.
        let t1 = t0 + p + Duration::from_secs(1);
        for _ in 0..100 {
            r.charge(t1, 10);
        }
        assert_eq!(r.pause(t1), None);
        r.charge(t1, 10);
        assert!(r.pause(t1).is_some());
    }

    #[test]
    fn byte_rate_limits_large_messages() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(&limits(0, 1000, 1), t0);
        r.charge(t0, 3000);
        let p = r.pause(t0).unwrap();
        assert!((p.as_secs_f64() - 2.0).abs() < 1e-6, "{p:?}");
    }
}
