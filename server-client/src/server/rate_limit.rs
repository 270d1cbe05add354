//! Flow control for failed sign-ins: failures are counted per card and per device, and past a limit each new attempt must wait a delay that doubles with every further failure.
//!
//! The card itself counts wrong PINs; this protects the server and the
//! directory from a device or card that keeps presenting refused assertions.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

/// The limits (from `[rate_limit]` in server.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Failures allowed before delays start.
    pub failures_before_delay: u32,
    /// The first delay; each further failure doubles it.
    pub base_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Failures older than this are forgotten.
    pub window: Duration,
}

impl Default for RateLimitPolicy {
    fn default() -> Self {
        RateLimitPolicy {
            failures_before_delay: 5,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(300),
            window: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: OffsetDateTime,
    blocked_until: Option<OffsetDateTime>,
}

/// Failure counters by key (`card:<fingerprint>`, `device:<id>`).
#[derive(Debug, Default)]
pub struct RateLimiter {
    policy: RateLimitPolicy,
    failures: Mutex<HashMap<String, Failures>>,
}

/// Most keys tracked at once; the oldest are forgotten beyond it.
const MAX_TRACKED_KEYS: usize = 100_000;

impl RateLimiter {
    /// A limiter with a policy.
    #[must_use]
    pub fn new(policy: RateLimitPolicy) -> Self {
        RateLimiter {
            policy,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long the caller must still wait, if any of `keys` is held back.
    pub fn retry_after(&self, keys: &[String], now: OffsetDateTime) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .filter_map(|key| failures.get(key)?.blocked_until)
            .filter(|until| *until > now)
            .map(|until| Duration::try_from(until - now).unwrap_or_default())
            .max()
    }

    /// Counts a failure against every key; past the limit, blocks them for a growing delay.
    pub fn record_failure(&self, keys: &[String], now: OffsetDateTime) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_TRACKED_KEYS {
            let window = self.policy.window;
            failures.retain(|_, f| now - f.last < window);
        }
        for key in keys {
            let entry = failures.entry(key.clone()).or_insert(Failures {
                count: 0,
                last: now,
                blocked_until: None,
            });
            if now - entry.last > self.policy.window {
                entry.count = 0;
                entry.blocked_until = None;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
            if let Some(delay) = self.delay_after(entry.count) {
                entry.blocked_until = Some(now + delay);
            }
        }
    }

    /// A success clears the counters of `keys`.
    pub fn record_success(&self, keys: &[String]) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            failures.remove(key);
        }
    }

    /// The delay after `count` failures: none up to the limit, then base, 2 base, 4 base, ... up to max.
    fn delay_after(&self, count: u32) -> Option<Duration> {
        let over = count.checked_sub(self.policy.failures_before_delay)?;
        if over == 0 {
            return None;
        }
        let factor = 1u32.checked_shl(over - 1).unwrap_or(u32::MAX);
        Some(
            self.policy
                .base_delay
                .checked_mul(factor)
                .unwrap_or(self.policy.max_delay)
                .min(self.policy.max_delay),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> RateLimiter {
        RateLimiter::new(RateLimitPolicy {
            failures_before_delay: 2,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(10),
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn delays_start_after_the_limit_and_double() {
        let limiter = limiter();
        let keys = ["device:k1".to_owned()];
        let t0 = OffsetDateTime::UNIX_EPOCH;
        limiter.record_failure(&keys, t0);
        limiter.record_failure(&keys, t0);
        assert_eq!(
            limiter.retry_after(&keys, t0),
            None,
            "two failures are allowed"
        );
        limiter.record_failure(&keys, t0);
        assert_eq!(limiter.retry_after(&keys, t0), Some(Duration::from_secs(2)));
        limiter.record_failure(&keys, t0);
        assert_eq!(limiter.retry_after(&keys, t0), Some(Duration::from_secs(4)));
        limiter.record_failure(&keys, t0);
        limiter.record_failure(&keys, t0);
        assert_eq!(
            limiter.retry_after(&keys, t0),
            Some(Duration::from_secs(10)),
            "capped"
        );
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            limiter.retry_after(&keys, later),
            None,
            "the delay runs out"
        );
    }

    #[test]
    fn success_and_the_window_forget_failures() {
        let limiter = limiter();
        let keys = ["card:ab".to_owned(), "device:k".to_owned()];
        let t0 = OffsetDateTime::UNIX_EPOCH;
        for _ in 0..3 {
            limiter.record_failure(&keys, t0);
        }
        assert!(limiter.retry_after(&keys[..1], t0).is_some());
        limiter.record_success(&keys);
        assert_eq!(limiter.retry_after(&keys, t0), None);
        for _ in 0..2 {
            limiter.record_failure(&keys, t0);
        }
        let much_later = t0 + Duration::from_secs(120);
        limiter.record_failure(&keys, much_later);
        assert_eq!(
            limiter.retry_after(&keys, much_later),
            None,
            "old failures expired"
        );
        assert_eq!(limiter.retry_after(&["device:other".to_owned()], t0), None);
    }
}
