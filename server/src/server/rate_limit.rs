//! Flow control: failed sign-ins counted per card and per device with delays that double, and per-source budgets (token buckets) for challenges and refusals.
//!
//! The card itself counts wrong PINs; the failure counters protect the server and
//! the directory from a device or card that keeps presenting refused assertions.
//! A failure counts only against what proved itself (see
//! [`handlers::authenticate`](super::handlers)); everything else a client does
//! is bounded by its source address's budgets, which is what keeps one client
//! from filling the audit log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// Challenges one source may ask for.
    pub challenges: Budget,
    /// Refusals (audited 4xx answers) one source may cause; past it they are
    /// answered `rate_limited` and counted, not audited one by one.
    pub refusals: Budget,
}

impl Default for RateLimitPolicy {
    fn default() -> Self {
        RateLimitPolicy {
            failures_before_delay: 5,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(300),
            window: Duration::from_secs(900),
            challenges: Budget::DEFAULT_CHALLENGES,
            refusals: Budget::DEFAULT_REFUSALS,
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The bucket's size: requests allowed in a burst.
    pub burst: u32,
    /// Requests allowed per minute once the burst is spent.
    pub per_minute: u32,
}

impl Budget {
    /// Challenges per source: 600 a minute after a burst of 300, room for some 300
    /// kiosks behind one address (a kiosk asks for one a minute, and one per tap).
    pub const DEFAULT_CHALLENGES: Budget = Budget {
        burst: 300,
        per_minute: 600,
    };
    /// Refusals per source: 60 a minute after a burst of 120. Refusals are rare in
    /// normal use (the card counts wrong PINs itself).
    pub const DEFAULT_REFUSALS: Budget = Budget {
        burst: 120,
        per_minute: 60,
    };
}

/// Which budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spend {
    /// Asking for a challenge.
    Challenge,
    /// Being refused (an audited 4xx answer).
    Refusal,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// Adds what `budget` refills since the last update, up to its size.
    fn refill(&mut self, budget: Budget, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(budget.per_minute) / 60.0)
            .min(f64::from(budget.burst));
        self.updated = now;
    }

    /// How long until one token is there.
    fn wait(&self, budget: Budget) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing * 60.0 / f64::from(budget.per_minute.max(1)))
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: OffsetDateTime,
    blocked_until: Option<OffsetDateTime>,
}

/// Failure counters by key (`card:<fingerprint>`, `device:<id>@<source>`), and
/// budgets by key (`source:<address>`).
#[derive(Debug, Default)]
pub struct RateLimiter {
    policy: RateLimitPolicy,
    failures: Mutex<HashMap<String, Failures>>,
    buckets: Mutex<HashMap<(Spend, String), Bucket>>,
    /// Refusals not audited one by one since the last summary, by key.
    unaudited: Mutex<BTreeMap<String, u64>>,
}

/// Most keys tracked at once; the oldest are forgotten beyond it.
const MAX_TRACKED_KEYS: usize = 100_000;
/// Most keys whose unaudited refusals are counted apart; the rest are counted together.
const MAX_SUMMARISED_KEYS: usize = 1_000;
/// The key the refusals of every key beyond [`MAX_SUMMARISED_KEYS`] are counted under.
pub const OTHER_SOURCES: &str = "other sources";

impl RateLimiter {
    /// A limiter with a policy.
    #[must_use]
    pub fn new(policy: RateLimitPolicy) -> Self {
        RateLimiter {
            policy,
            failures: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            unaudited: Mutex::new(BTreeMap::new()),
        }
    }

    /// Spends one request of `spend`'s budget from every one of `keys` (each key has its
    /// own bucket, e.g. the source address, or a device that proved itself): all of them or,
    /// if one is empty, none, and then how long until it has room again.
    ///
    /// # Errors
    /// The wait, when one of the buckets is empty.
    pub fn spend(&self, spend: Spend, keys: &[String], now: Instant) -> Result<(), Duration> {
        let budget = match spend {
            Spend::Challenge => self.policy.challenges,
            Spend::Refusal => self.policy.refusals,
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_KEYS {
            // A bucket that has filled up again is the same as a missing one.
            let policy = self.policy;
            buckets.retain(|(spend, _), bucket| {
                let budget = match spend {
                    Spend::Challenge => policy.challenges,
                    Spend::Refusal => policy.refusals,
                };
                bucket.refill(budget, now);
                bucket.tokens < f64::from(budget.burst)
            });
        }
        let mut wait = Duration::ZERO;
        for key in keys {
            let bucket = buckets.entry((spend, key.clone())).or_insert(Bucket {
                tokens: f64::from(budget.burst),
                updated: now,
            });
            bucket.refill(budget, now);
            if bucket.tokens < 1.0 {
                wait = wait.max(bucket.wait(budget));
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for key in keys {
            if let Some(bucket) = buckets.get_mut(&(spend, key.clone())) {
                bucket.tokens -= 1.0;
            }
        }
        Ok(())
    }

    /// Counts a refusal under `key` that was answered `rate_limited` instead of audited.
    pub fn count_unaudited(&self, key: &str) {
        let mut unaudited = self
            .unaudited
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = if unaudited.len() < MAX_SUMMARISED_KEYS || unaudited.contains_key(key) {
            key
        } else {
            OTHER_SOURCES
        };
        *unaudited.entry(key.to_owned()).or_default() += 1;
    }

    /// The unaudited refusals counted since the last call, by key; the counts restart.
    pub fn take_unaudited(&self) -> BTreeMap<String, u64> {
        std::mem::take(
            &mut *self
                .unaudited
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
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
            ..RateLimitPolicy::default()
        })
    }

    #[test]
    fn budgets_allow_a_burst_then_refill_per_key() {
        let limiter = RateLimiter::new(RateLimitPolicy {
            refusals: Budget {
                burst: 3,
                per_minute: 60,
            },
            ..RateLimitPolicy::default()
        });
        let t0 = Instant::now();
        let a = ["source:192.0.2.1".to_owned()];
        let b = ["source:192.0.2.2".to_owned()];
        for _ in 0..3 {
            assert_eq!(limiter.spend(Spend::Refusal, &a, t0), Ok(()));
        }
        let wait = limiter.spend(Spend::Refusal, &a, t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert_eq!(
            limiter.spend(Spend::Refusal, &b, t0),
            Ok(()),
            "b has its own"
        );
        assert_eq!(
            limiter.spend(Spend::Challenge, &a, t0),
            Ok(()),
            "challenges have their own budget"
        );
        let later = t0 + Duration::from_secs(2);
        assert_eq!(limiter.spend(Spend::Refusal, &a, later), Ok(()));
        assert_eq!(limiter.spend(Spend::Refusal, &a, later), Ok(()));
        assert!(limiter.spend(Spend::Refusal, &a, later).is_err());
        // With several keys, one empty bucket refuses and spends none of the others.
        let both = [a[0].clone(), b[0].clone()];
        assert!(limiter.spend(Spend::Refusal, &both, later).is_err());
        assert_eq!(limiter.spend(Spend::Refusal, &b, later), Ok(()));
        assert_eq!(limiter.spend(Spend::Refusal, &b, later), Ok(()));
    }

    #[test]
    fn unaudited_refusals_are_counted_per_key_until_taken() {
        let limiter = RateLimiter::default();
        limiter.count_unaudited("source:192.0.2.1");
        limiter.count_unaudited("source:192.0.2.1");
        limiter.count_unaudited("source:192.0.2.2");
        let counts = limiter.take_unaudited();
        assert_eq!(counts.get("source:192.0.2.1"), Some(&2));
        assert_eq!(counts.get("source:192.0.2.2"), Some(&1));
        assert!(limiter.take_unaudited().is_empty(), "taking restarts them");
        for n in 0..MAX_SUMMARISED_KEYS + 5 {
            limiter.count_unaudited(&format!("source:{n}"));
        }
        let counts = limiter.take_unaudited();
        assert_eq!(counts.len(), MAX_SUMMARISED_KEYS + 1);
        assert_eq!(counts.get(OTHER_SOURCES), Some(&5));
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
