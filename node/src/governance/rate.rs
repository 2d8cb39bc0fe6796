//! The communication policy's bound on how often a member may message this node (seed
//! §6.1: who talks to whom, and how much): a token bucket per sender. Pure: the driver
//! hands in the sender, the messages it sent and the time.
//!
//! ```text
//!   bucket(sender): up to `burst` messages, refilled at `messages_per_sec`
//!   a batch of n work messages takes n (at most the burst: a larger batch passes on a
//!   full bucket); one that finds fewer is refused whole (the sender tries again later),
//!   and counted
//! ```

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// The communication policy (`[communication]` of the policy document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Communication {
    /// Work messages one member may send this node per second, sustained.
    pub messages_per_sec: u32,
    /// Work messages it may send at once after a quiet spell.
    pub burst: u32,
}

impl Default for Communication {
    fn default() -> Self {
        Communication {
            messages_per_sec: 5_000,
            burst: 20_000,
        }
    }
}

/// The most a policy may set either figure to.
pub const MAX_MESSAGES_PER_SEC: u32 = 1_000_000;
/// Most senders the limiter follows; past it, senders whose buckets are full (idle)
/// are forgotten first.
pub const MAX_SENDERS: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a message.
    milli: u64,
    last_ms: u64,
}

/// Token buckets per sender.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rule: Communication,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter {
            rule: Communication::default(),
            buckets: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// Puts `rule` in force (buckets keep what they hold, up to the new burst).
    pub fn set_rule(&mut self, rule: Communication) {
        self.rule = rule;
    }

    /// The rule in force.
    pub fn rule(&self) -> Communication {
        self.rule
    }

    /// Whether `sender` may send `messages` more at `now_ms`; takes them if so.
    pub fn allow(&mut self, sender: &K, messages: u32, now_ms: u64) -> bool {
        let full = u64::from(self.rule.burst).saturating_mul(1_000);
        if !self.buckets.contains_key(sender) && self.buckets.len() >= MAX_SENDERS {
            self.forget_idle(now_ms);
        }
        let per_ms = u64::from(self.rule.messages_per_sec);
        let bucket = self.buckets.entry(sender.clone()).or_insert(Bucket {
            milli: full,
            last_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.last_ms);
        bucket.milli = bucket
            .milli
            .saturating_add(elapsed.saturating_mul(per_ms))
            .min(full);
        bucket.last_ms = bucket.last_ms.max(now_ms);
        // A batch larger than the burst passes on a full bucket, else it never could.
        let cost = u64::from(messages.min(self.rule.burst)).saturating_mul(1_000);
        if bucket.milli < cost {
            return false;
        }
        bucket.milli -= cost;
        true
    }

    /// Senders followed.
    pub fn senders(&self) -> usize {
        self.buckets.len()
    }

    fn forget_idle(&mut self, now_ms: u64) {
        let (full, per_ms) = (
            u64::from(self.rule.burst).saturating_mul(1_000),
            u64::from(self.rule.messages_per_sec),
        );
        self.buckets.retain(|_, bucket| {
            let refilled = bucket
                .milli
                .saturating_add(now_ms.saturating_sub(bucket.last_ms).saturating_mul(per_ms));
            refilled < full
        });
        if self.buckets.len() >= MAX_SENDERS {
            self.buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_gets_its_burst_then_its_rate_and_others_are_not_held_by_it() {
        let mut limiter: RateLimiter<u8> = RateLimiter::default();
        limiter.set_rule(Communication {
            messages_per_sec: 10,
            burst: 20,
        });
        assert!(limiter.allow(&1, 20, 0));
        assert!(!limiter.allow(&1, 1, 0), "the burst is spent");
        assert!(
            limiter.allow(&2, 20, 0),
            "another sender has its own bucket"
        );
        // 10 per second: one message per 100 ms.
        assert!(!limiter.allow(&1, 1, 99));
        assert!(limiter.allow(&1, 1, 100));
        // A batch larger than what is left is refused whole and takes nothing.
        assert!(!limiter.allow(&1, 5, 300));
        assert!(limiter.allow(&1, 2, 300));
        // A long quiet spell refills to the burst, no more.
        assert!(limiter.allow(&1, 20, 1_000_000));
        assert!(!limiter.allow(&1, 1, 1_000_000));
        // A batch over the burst passes on a full bucket only.
        assert!(!limiter.allow(&1, 50, 1_001_000));
        assert!(limiter.allow(&1, 50, 1_002_000));
        assert!(!limiter.allow(&1, 1, 1_002_000));
    }

    #[test]
    fn the_senders_followed_stay_bounded() {
        let mut limiter: RateLimiter<usize> = RateLimiter::default();
        for sender in 0..MAX_SENDERS + 10 {
            assert!(limiter.allow(&sender, 1, 0));
        }
        assert!(limiter.senders() <= MAX_SENDERS);
    }
}
