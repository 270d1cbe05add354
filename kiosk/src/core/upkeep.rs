//! When the runtime refreshes the session's short-lived access token and asks the server whether the session is still active: a pure schedule, driven by the runtime's clock.
//!
//! The access token is refreshed at [`REFRESH_SHARE_PERCENT`] of its life; a refresh that
//! did not reach the server is tried again after 1 s, 2 s, 4 s, ... (at most
//! [`LONGEST_REFRESH_RETRY`]): the session stays, the server decides. The session is checked
//! (`GET /v1/sessions/current`) every check interval, also after a failed check. One refresh
//! and one check are under way at most.

use std::time::{Duration, Instant};

/// The share of the access token's life after which it is refreshed, in percent.
pub const REFRESH_SHARE_PERCENT: u32 = 80;
/// The longest wait between two attempts of a refresh that did not reach the server.
pub const LONGEST_REFRESH_RETRY: Duration = Duration::from_secs(30);

/// What the runtime should send to the server now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpkeepTask {
    /// `POST /v1/sessions/refresh` with the refresh token.
    Refresh,
    /// `GET /v1/sessions/current` with the access token.
    Check,
}

/// The schedule of one signed-in session's refreshes and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUpkeep {
    check_interval: Duration,
    next_refresh: Instant,
    next_check: Instant,
    refresh_failures: u32,
    refreshing: bool,
    checking: bool,
}

impl SessionUpkeep {
    /// The schedule of a session whose access token, issued at `now`, lives `token_lifetime`;
    /// checked every `check_interval`, the first time one interval from now.
    #[must_use]
    pub fn new(now: Instant, token_lifetime: Duration, check_interval: Duration) -> Self {
        SessionUpkeep {
            check_interval,
            next_refresh: refresh_time(now, token_lifetime),
            next_check: now + check_interval,
            refresh_failures: 0,
            refreshing: false,
            checking: false,
        }
    }

    /// The tasks due at `now`; each is marked under way until its outcome is reported.
    pub fn due(&mut self, now: Instant) -> Vec<UpkeepTask> {
        let mut tasks = Vec::new();
        if !self.refreshing && self.next_refresh <= now {
            self.refreshing = true;
            tasks.push(UpkeepTask::Refresh);
        }
        if !self.checking && self.next_check <= now {
            self.checking = true;
            tasks.push(UpkeepTask::Check);
        }
        tasks
    }

    /// When the next task is due (one under way is not counted).
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        let refresh = (!self.refreshing).then_some(self.next_refresh);
        let check = (!self.checking).then_some(self.next_check);
        refresh.into_iter().chain(check).min()
    }

    /// The refresh worked at `now`: the new access token lives `token_lifetime`.
    pub fn refreshed(&mut self, now: Instant, token_lifetime: Duration) {
        self.refreshing = false;
        self.refresh_failures = 0;
        self.next_refresh = refresh_time(now, token_lifetime);
    }

    /// The refresh did not reach the server (or it failed): tried again after a back-off.
    pub fn refresh_failed(&mut self, now: Instant) {
        self.refreshing = false;
        let delay = Duration::from_secs(1u64 << self.refresh_failures.min(6));
        self.refresh_failures = self.refresh_failures.saturating_add(1);
        self.next_refresh = now + delay.min(LONGEST_REFRESH_RETRY);
    }

    /// The access token is not accepted any more (too old): refresh at once.
    pub fn refresh_now(&mut self, now: Instant) {
        if !self.refreshing {
            self.next_refresh = now;
        }
    }

    /// The check was answered (or failed) at `now`: the next one an interval later.
    pub fn checked(&mut self, now: Instant) {
        self.checking = false;
        self.next_check = now + self.check_interval;
    }
}

/// When a token issued at `now` for `lifetime` is refreshed.
fn refresh_time(now: Instant, lifetime: Duration) -> Instant {
    now + lifetime * REFRESH_SHARE_PERCENT / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn the_token_is_refreshed_at_four_fifths_of_its_life_and_the_session_checked_each_interval() {
        let start = Instant::now();
        let mut upkeep = SessionUpkeep::new(start, secs(300), secs(5));
        assert_eq!(upkeep.next_due(), Some(start + secs(5)));
        assert!(upkeep.due(start + secs(4)).is_empty());
        assert_eq!(upkeep.due(start + secs(5)), vec![UpkeepTask::Check]);
        // Under way: not asked again until answered.
        assert!(upkeep.due(start + secs(9)).is_empty());
        upkeep.checked(start + secs(6));
        assert_eq!(upkeep.next_due(), Some(start + secs(11)));
        assert!(upkeep.due(start + secs(239)).contains(&UpkeepTask::Check));
        upkeep.checked(start + secs(239));
        assert_eq!(upkeep.due(start + secs(240)), vec![UpkeepTask::Refresh]);
        assert!(upkeep.due(start + secs(241)).is_empty());
        upkeep.refreshed(start + secs(241), secs(300));
        assert_eq!(upkeep.next_due(), Some(start + secs(244)));
        upkeep.checked(start + secs(300));
        assert_eq!(upkeep.next_due(), Some(start + secs(305)));
        assert!(!upkeep.due(start + secs(480)).contains(&UpkeepTask::Refresh));
        assert!(upkeep.due(start + secs(481)).contains(&UpkeepTask::Refresh));
    }

    #[test]
    fn a_refresh_that_fails_is_retried_with_a_growing_pause_up_to_thirty_seconds() {
        let start = Instant::now();
        let mut upkeep = SessionUpkeep::new(start, secs(10), secs(3600));
        let mut now = start + secs(8);
        let mut pauses = Vec::new();
        for _ in 0..8 {
            assert_eq!(upkeep.due(now), vec![UpkeepTask::Refresh]);
            upkeep.refresh_failed(now);
            let next = upkeep.next_due().unwrap();
            pauses.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(pauses, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        // Once it works, the next refresh is at 80 % of the new token's life again.
        upkeep.due(now);
        upkeep.refreshed(now, secs(100));
        assert_eq!(upkeep.next_due(), Some(now + secs(80)));
        upkeep.refresh_failed(now + secs(80));
        assert_eq!(upkeep.next_due(), Some(now + secs(81)));
    }

    #[test]
    fn a_token_the_server_no_longer_takes_is_refreshed_at_once() {
        let start = Instant::now();
        let mut upkeep = SessionUpkeep::new(start, secs(300), secs(5));
        upkeep.refresh_now(start + secs(5));
        assert_eq!(
            upkeep.due(start + secs(5)),
            vec![UpkeepTask::Refresh, UpkeepTask::Check]
        );
    }
}
