//! Flow control: failed sign-ins counted per card and per device with delays that double, and per-source budgets (token buckets) for challenges and refusals.
//!
//! The card itself counts wrong PINs; the failure counters protect the server and
//! the directory from a device or card that keeps presenting refused assertions.
//! A failure counts only against what proved itself (see
//! [`handlers::authenticate`](super::handlers)); everything else a client does
//! is bounded by its source address's budgets, which is what keeps one client
//! from filling the audit log.
//!
//! The counters and budgets live in the store ([`Store::record_failures`],
//! [`Store::spend_budget`]), so every node of a deployment counts the same failures and
//! spends the same budgets; the maths here (delays, GCRA steps, waits) is pure. Times are
//! wall-clock: the nodes' clocks must agree (NTP).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use crate::store::{BudgetUse, FailureCount, Store, StoreError};

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

impl Budget {
    /// The GCRA step of the budget: one request is refilled per step.
    #[must_use]
    pub fn step(self) -> Duration {
        Duration::from_secs(60) / self.per_minute.max(1)
    }

    /// The GCRA tolerance: how far a bucket's horizon may run ahead of now, `burst` steps.
    #[must_use]
    pub fn tolerance(self) -> Duration {
        self.step().saturating_mul(self.burst)
    }

    /// How long a request must wait when its bucket's horizon is `horizon` at `now`
    /// (at least one step when there will never be room, a budget of nothing).
    #[must_use]
    pub fn wait(self, horizon: OffsetDateTime, now: OffsetDateTime) -> Duration {
        let room_at = horizon + self.step() - self.tolerance();
        Duration::try_from(room_at - now)
            .ok()
            .filter(|wait| !wait.is_zero())
            .unwrap_or_else(|| self.step())
    }
}

/// Which budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spend {
    /// Asking for a challenge.
    Challenge,
    /// Being refused (an audited 4xx answer).
    Refusal,
}

impl Spend {
    /// The budget's kind as the store names it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Spend::Challenge => "challenge",
            Spend::Refusal => "refusal",
        }
    }
}

/// The failure counters of some keys as read before a sign-in
/// ([`RateLimiter::retry_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// How long the caller must still wait, if any key is held back.
    pub retry_after: Option<Duration>,
    /// Whether any of the keys has a failure counter (a success then clears them).
    pub counted: bool,
}

/// The flow control's policy over the store's shared counters: failure counters by key
/// (`card:<fingerprint>`, `device:<id>@<source>`) and budgets by key (`source:<address>`,
/// `device:<id>`) live in the store, so every node decides alike; only the summary of
/// refusals not audited one by one is this node's own (a log summary, not a decision).
#[derive(Debug, Default)]
pub struct RateLimiter {
    policy: RateLimitPolicy,
    /// Refusals not audited one by one since the last summary, by key.
    unaudited: Mutex<BTreeMap<String, u64>>,
}

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
            unaudited: Mutex::new(BTreeMap::new()),
        }
    }

    /// The policy.
    #[must_use]
    pub fn policy(&self) -> RateLimitPolicy {
        self.policy
    }

    /// Spends one request of `spend`'s budget from every one of `keys` (each key has its
    /// own bucket, e.g. the source address, or a device that proved itself): all of them or,
    /// if one is empty, none, and then how long until it has room again.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails; `Ok(Err(wait))` when a bucket is empty.
    pub async fn spend(
        &self,
        store: &dyn Store,
        spend: Spend,
        keys: &[String],
        now: OffsetDateTime,
    ) -> Result<Result<(), Duration>, StoreError> {
        let budget = match spend {
            Spend::Challenge => self.policy.challenges,
            Spend::Refusal => self.policy.refusals,
        };
        let used = store
            .spend_budget(spend.as_str(), keys, now, budget.step(), budget.tolerance())
            .await?;
        Ok(match used {
            BudgetUse::Spent => Ok(()),
            BudgetUse::Empty { horizon } => Err(budget.wait(horizon, now)),
        })
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

    /// Reads the failure counters of `keys` (one read): how long the caller must still
    /// wait, and whether there are counters to clear after a success.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails.
    pub async fn retry_after(
        &self,
        store: &dyn Store,
        keys: &[String],
        now: OffsetDateTime,
    ) -> Result<Held, StoreError> {
        let counts = store.failures(keys).await?;
        Ok(Held {
            retry_after: self.policy.retry_after(&counts, now),
            counted: !counts.is_empty(),
        })
    }

    /// Counts a failure against every key; past the limit, they are held back for a delay
    /// that doubles with each further failure ([`RateLimitPolicy::retry_after`]).
    ///
    /// # Errors
    /// [`StoreError`] when the store fails.
    pub async fn record_failure(
        &self,
        store: &dyn Store,
        keys: &[String],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        store
            .record_failures(keys, now, now - self.policy.window)
            .await
    }

    /// A success clears the counters of `keys`; `held` (what [`RateLimiter::retry_after`]
    /// read) saves the write when there were none.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails.
    pub async fn record_success(
        &self,
        store: &dyn Store,
        keys: &[String],
        held: Held,
    ) -> Result<(), StoreError> {
        if held.counted {
            store.clear_failures(keys).await?;
        }
        Ok(())
    }

    /// When the store may forget failure counters at `now`: once their last failure is
    /// older than both the window (no longer counted) and the longest delay (no longer
    /// holding anything back).
    #[must_use]
    pub fn failures_forgotten_before(&self, now: OffsetDateTime) -> OffsetDateTime {
        now - self.policy.window.max(self.policy.max_delay)
    }
}

impl RateLimitPolicy {
    /// How long the caller must still wait at `now` given the failure counters of its keys:
    /// the longest delay still running. A counter of `count` failures, the last at `last`,
    /// holds its key back until `last` plus [`RateLimitPolicy::delay_after`] `count`.
    #[must_use]
    pub fn retry_after(&self, counts: &[FailureCount], now: OffsetDateTime) -> Option<Duration> {
        counts
            .iter()
            .filter_map(|count| Some(count.last + self.delay_after(count.count)?))
            .filter(|until| *until > now)
            .map(|until| Duration::try_from(until - now).unwrap_or_default())
            .max()
    }

    /// The delay after `count` failures: none up to the limit, then base, 2 base, 4 base, ... up to max.
    #[must_use]
    pub fn delay_after(&self, count: u32) -> Option<Duration> {
        let over = count.checked_sub(self.failures_before_delay)?;
        if over == 0 {
            return None;
        }
        let factor = 1u32.checked_shl(over - 1).unwrap_or(u32::MAX);
        Some(
            self.base_delay
                .checked_mul(factor)
                .unwrap_or(self.max_delay)
                .min(self.max_delay),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn limiter() -> RateLimiter {
        RateLimiter::new(RateLimitPolicy {
            failures_before_delay: 2,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(10),
            window: Duration::from_secs(60),
            ..RateLimitPolicy::default()
        })
    }

    async fn store() -> Result<SqliteStore, StoreError> {
        SqliteStore::in_memory().await
    }

    /// The wait a failure-free read gives.
    async fn retry_after(
        limiter: &RateLimiter,
        store: &SqliteStore,
        keys: &[String],
        now: OffsetDateTime,
    ) -> Result<Option<Duration>, StoreError> {
        Ok(limiter.retry_after(store, keys, now).await?.retry_after)
    }

    #[test]
    fn budgets_are_gcra_steps_and_waits() {
        let budget = Budget {
            burst: 3,
            per_minute: 60,
        };
        assert_eq!(budget.step(), Duration::from_secs(1));
        assert_eq!(budget.tolerance(), Duration::from_secs(3));
        let t0 = OffsetDateTime::UNIX_EPOCH;
        // Three spent at t0: the horizon is t0 + 3; room again at t0 + 1.
        assert_eq!(
            budget.wait(t0 + Duration::from_secs(3), t0),
            Duration::from_secs(1)
        );
        assert_eq!(
            budget.wait(t0 + Duration::from_millis(3500), t0),
            Duration::from_millis(1500)
        );
        let nothing = Budget {
            burst: 0,
            per_minute: 60,
        };
        assert_eq!(nothing.wait(t0, t0), Duration::from_secs(1), "never zero");
    }

    #[test]
    fn the_policy_holds_back_from_the_last_failure_for_the_delay_of_the_count() {
        let policy = limiter().policy();
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let count = |count, last| FailureCount {
            key: "card:ab".to_owned(),
            count,
            last,
        };
        assert_eq!(policy.retry_after(&[count(2, t0)], t0), None);
        assert_eq!(
            policy.retry_after(&[count(3, t0), count(4, t0)], t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(3)),
            "the longest wait of the keys"
        );
        assert_eq!(
            policy.retry_after(&[count(40, t0)], t0),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            policy.retry_after(&[count(40, t0)], t0 + Duration::from_secs(10)),
            None
        );
    }

    #[tokio::test]
    async fn budgets_allow_a_burst_then_refill_per_key() -> TestResult {
        let store = store().await?;
        let limiter = RateLimiter::new(RateLimitPolicy {
            refusals: Budget {
                burst: 3,
                per_minute: 60,
            },
            ..RateLimitPolicy::default()
        });
        let t0 = OffsetDateTime::now_utc();
        let a = ["source:192.0.2.1".to_owned()];
        let b = ["source:192.0.2.2".to_owned()];
        for _ in 0..3 {
            assert_eq!(limiter.spend(&store, Spend::Refusal, &a, t0).await?, Ok(()));
        }
        let wait = limiter
            .spend(&store, Spend::Refusal, &a, t0)
            .await?
            .unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert_eq!(
            limiter.spend(&store, Spend::Refusal, &b, t0).await?,
            Ok(()),
            "b has its own"
        );
        assert_eq!(
            limiter.spend(&store, Spend::Challenge, &a, t0).await?,
            Ok(()),
            "challenges have their own budget"
        );
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            limiter.spend(&store, Spend::Refusal, &a, later).await?,
            Ok(())
        );
        assert_eq!(
            limiter.spend(&store, Spend::Refusal, &a, later).await?,
            Ok(())
        );
        assert!(
            limiter
                .spend(&store, Spend::Refusal, &a, later)
                .await?
                .is_err()
        );
        // With several keys, one empty bucket refuses and spends none of the others.
        let both = [a[0].clone(), b[0].clone()];
        assert!(
            limiter
                .spend(&store, Spend::Refusal, &both, later)
                .await?
                .is_err()
        );
        assert_eq!(
            limiter.spend(&store, Spend::Refusal, &b, later).await?,
            Ok(())
        );
        assert_eq!(
            limiter.spend(&store, Spend::Refusal, &b, later).await?,
            Ok(())
        );
        Ok(())
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

    #[tokio::test]
    async fn delays_start_after_the_limit_and_double() -> TestResult {
        let store = store().await?;
        let limiter = limiter();
        let keys = ["device:k1".to_owned()];
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        limiter.record_failure(&store, &keys, t0).await?;
        limiter.record_failure(&store, &keys, t0).await?;
        assert_eq!(
            retry_after(&limiter, &store, &keys, t0).await?,
            None,
            "two failures are allowed"
        );
        limiter.record_failure(&store, &keys, t0).await?;
        assert_eq!(
            retry_after(&limiter, &store, &keys, t0).await?,
            Some(Duration::from_secs(2))
        );
        limiter.record_failure(&store, &keys, t0).await?;
        assert_eq!(
            retry_after(&limiter, &store, &keys, t0).await?,
            Some(Duration::from_secs(4))
        );
        limiter.record_failure(&store, &keys, t0).await?;
        limiter.record_failure(&store, &keys, t0).await?;
        assert_eq!(
            retry_after(&limiter, &store, &keys, t0).await?,
            Some(Duration::from_secs(10)),
            "capped"
        );
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            retry_after(&limiter, &store, &keys, later).await?,
            None,
            "the delay runs out"
        );
        Ok(())
    }

    #[tokio::test]
    async fn success_and_the_window_forget_failures() -> TestResult {
        let store = store().await?;
        let limiter = limiter();
        let keys = ["card:ab".to_owned(), "device:k".to_owned()];
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for _ in 0..3 {
            limiter.record_failure(&store, &keys, t0).await?;
        }
        assert!(
            retry_after(&limiter, &store, &keys[..1], t0)
                .await?
                .is_some()
        );
        let held = limiter.retry_after(&store, &keys, t0).await?;
        assert!(held.counted);
        limiter.record_success(&store, &keys, held).await?;
        assert_eq!(retry_after(&limiter, &store, &keys, t0).await?, None);
        assert!(
            !limiter.retry_after(&store, &keys, t0).await?.counted,
            "cleared"
        );
        for _ in 0..2 {
            limiter.record_failure(&store, &keys, t0).await?;
        }
        let much_later = t0 + Duration::from_secs(120);
        limiter.record_failure(&store, &keys, much_later).await?;
        assert_eq!(
            retry_after(&limiter, &store, &keys, much_later).await?,
            None,
            "old failures expired"
        );
        assert_eq!(
            retry_after(&limiter, &store, &["device:other".to_owned()], t0).await?,
            None
        );
        Ok(())
    }
}
