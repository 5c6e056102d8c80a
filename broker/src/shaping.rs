//! Egress shaping (`[[shaping]]`): how fast messages may leave the broker towards a client or
//! a shared-subscription group.
//!
//! Sans-IO: [`TokenBucket`] takes the time as an argument and answers "go" or "not before
//! this instant"; the connection task (protocol/shaping.rs, connection/) asks it before each
//! message it takes from a queue, and sleeps until the instant it is told when the bucket is
//! empty. The publisher is never slowed: what is over the rate waits in the subscriber's
//! queue, within that queue's bounds and overflow policy.
//!
//! [`Shaping`] holds the rules in force (replaced whole on SIGHUP) and one bucket per shaped
//! group, shared by the group's members: a `group` rule's rate is the group's total.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::{QueueFullPolicy, ShapingRule};

/// The byte bucket holds this long's worth of `bytes_per_second`: enough that a wake-up a
/// little late (timer granularity, a busy runtime) loses no budget, short enough that a quiet
/// spell does not turn into a large burst.
const BYTE_BURST: Duration = Duration::from_millis(100);

/// A token bucket for messages and bytes. Messages: up to `burst` tokens, `rate` per second,
/// one per message. Bytes: the bucket may go into debt (a message larger than what is left
/// passes when the bucket is not empty, and the next waits until the debt is paid), so no
/// message is ever too large to pass.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Messages per second; 0: unlimited.
    rate: f64,
    burst: f64,
    tokens: f64,
    /// Bytes per second; 0: unlimited.
    byte_rate: f64,
    byte_burst: f64,
    byte_tokens: f64,
    /// When the tokens were last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rule`.
    pub fn new(rule: &ShapingRule, now: Instant) -> TokenBucket {
        let burst = f64::from(rule.burst());
        let byte_burst = (rule.bytes_per_second * BYTE_BURST.as_secs_f64()).max(1.0);
        TokenBucket {
            rate: rule.messages_per_second,
            burst,
            tokens: burst,
            byte_rate: rule.bytes_per_second,
            byte_burst,
            byte_tokens: byte_burst,
            last: now,
        }
    }

    /// Adopts `rule`'s rates (a reload), keeping what is left of the tokens (within the new
    /// burst).
    pub fn set_rule(&mut self, rule: &ShapingRule, now: Instant) {
        self.refill(now);
        let fresh = TokenBucket::new(rule, now);
        self.rate = fresh.rate;
        self.burst = fresh.burst;
        self.tokens = self.tokens.min(fresh.burst);
        self.byte_rate = fresh.byte_rate;
        self.byte_burst = fresh.byte_burst;
        self.byte_tokens = self.byte_tokens.min(fresh.byte_burst);
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        if self.rate > 0.0 {
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        if self.byte_rate > 0.0 {
            self.byte_tokens = (self.byte_tokens + dt * self.byte_rate).min(self.byte_burst);
        }
    }

    /// Takes one message of `bytes` if the bucket allows it at `now`; else the instant the
    /// next one may go.
    pub fn try_take(&mut self, now: Instant, bytes: usize) -> Result<(), Instant> {
        self.refill(now);
        let mut wait = 0.0f64;
        if self.rate > 0.0 && self.tokens < 1.0 {
            wait = wait.max((1.0 - self.tokens) / self.rate);
        }
        if self.byte_rate > 0.0 && self.byte_tokens <= 0.0 {
            // Strictly positive again: a microsecond's worth past paying the debt.
            wait = wait.max(-self.byte_tokens / self.byte_rate + 1e-6);
        }
        if wait > 0.0 {
            return Err(now + Duration::from_secs_f64(wait));
        }
        if self.rate > 0.0 {
            self.tokens -= 1.0;
        }
        self.charge_bytes(bytes);
        Ok(())
    }

    /// Charges `bytes` taken after [`TokenBucket::try_take`] (a group queue's message is known
    /// only once taken).
    pub fn charge_bytes(&mut self, bytes: usize) {
        if self.byte_rate > 0.0 {
            self.byte_tokens -= bytes as f64;
        }
    }

    /// Gives back the message token of a [`TokenBucket::try_take`] that found nothing to send.
    pub fn refund(&mut self) {
        if self.rate > 0.0 {
            self.tokens = (self.tokens + 1.0).min(self.burst);
        }
    }
}

/// A group's bucket, shared by its members' connection tasks (locked for a few instructions
/// per message, never across an await).
pub type SharedBucket = Arc<Mutex<TokenBucket>>;

/// Whether `text` matches `glob` (`*`: any run of characters, `?`: one character).
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point (the last `*`): linear in practice, and
    // never exponential.
    let (mut gi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, ti));
                gi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                gi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    gi = sg + 1;
                    ti = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    g[gi.min(g.len())..].iter().all(|&c| c == '*')
}

/// Which rule applies, as a connection task resolves it.
#[derive(Debug, Clone)]
pub enum Applies {
    /// A `client_id` or `username` rule: the session's own bucket.
    Session(usize, ShapingRule),
    /// A `group` rule: the group's shared bucket.
    Group(usize, SharedBucket),
}

/// The rules in force and the buckets of shaped groups (see the module docs).
#[derive(Debug, Default)]
pub struct Shaping {
    /// The rules, replaced whole on reload; readers clone the `Arc` under a short read lock.
    rules: RwLock<Arc<Vec<ShapingRule>>>,
    /// Bumped by every reload: connection tasks resolve their rules again when it changes.
    generation: AtomicU64,
    /// Whether any rule is in force: unshaped brokers check only this.
    active: AtomicBool,
    /// Whether some rule sets `overflow = "reject"` (routing then checks each subscriber's
    /// policy before queueing a QoS 1/2 message).
    any_reject: AtomicBool,
    /// One bucket per shaped group, by group name; rebuilt (keeping their tokens) on reload.
    groups: Mutex<HashMap<String, SharedBucket>>,
}

impl Shaping {
    /// Shaping with `rules` in force (validated by the caller).
    pub fn new(rules: Vec<ShapingRule>) -> Shaping {
        let s = Shaping::default();
        s.replace(rules, Instant::now());
        s
    }

    /// Puts `rules` in force (SIGHUP): connections see them at their next drain; groups keep
    /// their tokens when their rule stays.
    pub fn replace(&self, rules: Vec<ShapingRule>, now: Instant) {
        {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            let mut kept = HashMap::new();
            for (name, rule) in rules
                .iter()
                .filter_map(|r| r.group.as_ref().map(|g| (g, r)))
            {
                if kept.contains_key(name) {
                    continue; // first match wins: a later rule for the same group never applies
                }
                let bucket = match groups.remove(name) {
                    Some(b) => {
                        b.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .set_rule(rule, now);
                        b
                    }
                    None => Arc::new(Mutex::new(TokenBucket::new(rule, now))),
                };
                kept.insert(name.clone(), bucket);
            }
            *groups = kept;
        }
        self.active.store(!rules.is_empty(), Ordering::Release);
        self.any_reject.store(
            rules
                .iter()
                .any(|r| r.overflow == Some(QueueFullPolicy::Reject)),
            Ordering::Release,
        );
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether any rule is in force.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Whether some rule's overflow policy is `reject`.
    pub fn any_reject(&self) -> bool {
        self.any_reject.load(Ordering::Acquire)
    }

    /// Changes with every reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Vec<ShapingRule>> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first rule that matches the client (`client_id` glob or `username`), or, with
    /// `group`, that matches the client or the shared-subscription group `group`.
    pub fn applies(
        &self,
        client_id: &str,
        username: Option<&str>,
        group: Option<&str>,
    ) -> Option<Applies> {
        let rules = self.rules();
        for (i, r) in rules.iter().enumerate() {
            let client = r
                .client_id
                .as_deref()
                .is_some_and(|g| glob_matches(g, client_id))
                || (r.username.is_some() && r.username.as_deref() == username);
            if client {
                return Some(Applies::Session(i, r.clone()));
            }
            if let (Some(name), Some(g)) = (group, &r.group) {
                if name == g {
                    let bucket = self
                        .groups
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(name)
                        .cloned()?;
                    return Some(Applies::Group(i, bucket));
                }
            }
        }
        None
    }

    /// The overflow policy a `group` rule sets for the group's queue, if any.
    pub fn group_overflow(&self, group: &str) -> Option<QueueFullPolicy> {
        self.rules()
            .iter()
            .find(|r| r.group.as_deref() == Some(group))
            .and_then(|r| r.overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(mps: f64, bps: f64, burst: u32) -> ShapingRule {
        ShapingRule {
            client_id: Some("*".into()),
            username: None,
            group: None,
            messages_per_second: mps,
            bytes_per_second: bps,
            burst: Some(burst),
            overflow: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `r` is an error at `at`, within a microsecond (float rounding).
    fn due_at(r: Result<(), Instant>, at: Instant) -> bool {
        r.is_err_and(|t| t.max(at) - t.min(at) < Duration::from_micros(1))
    }

    #[test]
    fn a_full_bucket_lets_a_burst_pass_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&rule(10.0, 0.0, 3), t0);
        for _ in 0..3 {
            assert_eq!(b.try_take(t0, 100), Ok(()));
        }
        // Empty: the next token is due in 1/10 s.
        assert!(due_at(b.try_take(t0, 100), t0 + ms(100)));
        assert!(b.try_take(t0 + ms(99), 100).is_err());
        assert_eq!(b.try_take(t0 + ms(100), 100), Ok(()));
        // Over 10 s at most burst + rate x 10 s pass, and at least rate x 10 s.
        let mut passed = 0;
        let mut now = t0 + ms(100);
        while now < t0 + ms(10_100) {
            match b.try_take(now, 1) {
                Ok(()) => passed += 1,
                Err(at) => now = at,
            }
        }
        // Tokens due at 200, 300, ..., 10,000 ms (the one at 10,100 is past the window).
        assert!((99..=100).contains(&passed), "{passed}");
    }

    #[test]
    fn tokens_never_pile_up_past_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&rule(100.0, 0.0, 5), t0);
        let later = t0 + Duration::from_secs(60);
        let passed = (0..50).filter(|_| b.try_take(later, 1).is_ok()).count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn bytes_go_into_debt_so_a_large_message_still_passes() {
        let t0 = Instant::now();
        // 1000 bytes/s: the bucket holds 100 bytes.
        let mut b = TokenBucket::new(&rule(0.0, 1000.0, 1), t0);
        assert_eq!(
            b.try_take(t0, 600),
            Ok(()),
            "larger than the bucket: passes"
        );
        // 500 bytes of debt: paid after half a second.
        let at = b.try_take(t0, 1).unwrap_err();
        assert!(at > t0 + ms(500) && at < t0 + ms(501), "{:?}", at - t0);
        assert_eq!(b.try_take(at, 10), Ok(()));
    }

    #[test]
    fn unlimited_passes_everything_and_a_refund_gives_the_token_back() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&rule(0.0, 0.0, 1), t0);
        assert!((0..10_000).all(|_| b.try_take(t0, 1 << 20).is_ok()));
        let mut b = TokenBucket::new(&rule(1.0, 0.0, 1), t0);
        assert_eq!(b.try_take(t0, 1), Ok(()));
        b.refund();
        assert_eq!(b.try_take(t0, 1), Ok(()));
        assert!(b.try_take(t0, 1).is_err());
    }

    #[test]
    fn a_reload_keeps_the_tokens_within_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&rule(10.0, 0.0, 10), t0);
        b.set_rule(&rule(1000.0, 0.0, 2), t0);
        assert_eq!((0..10).filter(|_| b.try_take(t0, 1).is_ok()).count(), 2);
        assert!(due_at(b.try_take(t0, 1), t0 + ms(1)));
    }

    #[test]
    fn globs() {
        assert!(glob_matches("sms-*", "sms-1"));
        assert!(glob_matches("sms-*", "sms-"));
        assert!(!glob_matches("sms-*", "sm"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("*-worker-*", "sms-worker-12"));
        assert!(!glob_matches("*-worker-*", "sms-worker"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
    }

    #[test]
    fn first_match_wins_and_a_group_rule_shares_one_bucket() {
        let mut a = rule(5.0, 0.0, 1);
        a.client_id = Some("sms-*".into());
        let mut g = rule(50.0, 0.0, 1);
        g.client_id = None;
        g.group = Some("sms".into());
        let mut later = rule(1.0, 0.0, 1);
        later.client_id = Some("sms-1".into());
        let s = Shaping::new(vec![g, a, later]);
        // The group rule comes first for its shared deliveries...
        let Some(Applies::Group(0, b1)) = s.applies("sms-1", None, Some("sms")) else {
            panic!("group rule first");
        };
        let Some(Applies::Group(0, b2)) = s.applies("sms-2", None, Some("sms")) else {
            panic!("group rule first");
        };
        assert!(Arc::ptr_eq(&b1, &b2), "one bucket per group");
        // ...and the client rule for the session's own.
        assert!(matches!(
            s.applies("sms-1", None, None),
            Some(Applies::Session(1, _))
        ));
        assert!(s.applies("other", None, None).is_none());
        let gen = s.generation();
        s.replace(Vec::new(), Instant::now());
        assert!(!s.is_active() && s.generation() != gen);
    }
}
