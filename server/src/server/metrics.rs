//! Prometheus metrics: requests by route, sign-in outcomes by code, a latency histogram, and gauges of users, cards, sign-ins and expiries, written in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::store::{EXPIRING_DAYS, StoreStats};
use pivtap_protocol::audit::AuditOutcome;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    outcomes: Mutex<BTreeMap<String, u64>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    /// Counts a request to `route` answered with `status`, and its latency.
    pub fn observe_request(&self, route: &'static str, status: u16, latency: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((route, status))
            .or_default() += 1;
        let seconds = latency.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts a sign-in outcome: `ok` or an error code.
    pub fn observe_outcome(&self, outcome: AuditOutcome) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(outcome.as_str().to_owned())
            .or_default() += 1;
    }

    /// The Prometheus text exposition, with the database's size on disk when the store
    /// knows it (`pivtap_database_bytes`: the file and its write-ahead log).
    #[must_use]
    pub fn render_with_database(&self, database_bytes: Option<u64>) -> String {
        let mut out = self.render();
        if let Some(bytes) = database_bytes {
            out.push_str(
                "# HELP pivtap_database_bytes Size of the database on disk, write-ahead log included.\n",
            );
            out.push_str("# TYPE pivtap_database_bytes gauge\n");
            let _ = writeln!(out, "pivtap_database_bytes {bytes}");
        }
        out
    }

    /// The Prometheus text exposition of what the store holds (see [`StoreStats`]) and
    /// the days until the issuing CA certificate expires (when the server issues).
    #[must_use]
    pub fn render_state(stats: &StoreStats, ca_expiry_days: Option<i64>) -> String {
        let mut out = String::new();
        out.push_str("# HELP pivtap_users Users by state.\n# TYPE pivtap_users gauge\n");
        for (state, count) in &stats.users {
            let _ = writeln!(out, "pivtap_users{{state=\"{state}\"}} {count}");
        }
        out.push_str("# HELP pivtap_cards Cards by state.\n# TYPE pivtap_cards gauge\n");
        for (state, count) in &stats.cards {
            let _ = writeln!(out, "pivtap_cards{{state=\"{state}\"}} {count}");
        }
        out.push_str(
            "# HELP pivtap_sign_ins_last_hour Successful sign-ins in the last hour.\n\
             # TYPE pivtap_sign_ins_last_hour gauge\n",
        );
        let _ = writeln!(
            out,
            "pivtap_sign_ins_last_hour {}",
            stats.sign_ins_last_hour
        );
        let _ = writeln!(
            out,
            "# HELP pivtap_certificates_expiring Issued card certificates, not revoked, that \
             expire within {EXPIRING_DAYS} days.\n# TYPE pivtap_certificates_expiring gauge\n\
             pivtap_certificates_expiring {}",
            stats.certificates_expiring
        );
        if let Some(days) = ca_expiry_days {
            out.push_str(
                "# HELP pivtap_ca_expiry_days Days until the issuing CA certificate expires.\n\
                 # TYPE pivtap_ca_expiry_days gauge\n",
            );
            let _ = writeln!(out, "pivtap_ca_expiry_days {days}");
        }
        out
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP pivtap_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE pivtap_requests_total counter\n");
        for ((route, status), count) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "pivtap_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP pivtap_signins_total Sign-in attempts by outcome (ok or the error code).\n",
        );
        out.push_str("# TYPE pivtap_signins_total counter\n");
        for (outcome, count) in self
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(out, "pivtap_signins_total{{outcome=\"{outcome}\"}} {count}");
        }
        out.push_str("# HELP pivtap_request_duration_seconds Time to answer a request.\n");
        out.push_str("# TYPE pivtap_request_duration_seconds histogram\n");
        for (bucket, bound) in self.latency_buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "pivtap_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "pivtap_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "pivtap_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "pivtap_request_duration_seconds_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CardState, UserState};

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = Metrics::default();
        metrics.observe_request("/v1/assertions", 200, Duration::from_micros(800));
        metrics.observe_request("/v1/assertions", 401, Duration::from_millis(30));
        metrics.observe_outcome(AuditOutcome::Ok);
        metrics.observe_outcome(pivtap_protocol::wire::ErrorCode::ChallengeReused.into());
        let text = metrics.render();
        assert!(
            text.contains("pivtap_requests_total{route=\"/v1/assertions\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pivtap_signins_total{outcome=\"challenge_reused\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pivtap_request_duration_seconds_bucket{le=\"0.001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pivtap_request_duration_seconds_bucket{le=\"0.05\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pivtap_request_duration_seconds_count 2"),
            "{text}"
        );
        let with = metrics.render_with_database(Some(4096));
        assert!(
            with.starts_with(&text) && with.ends_with("\npivtap_database_bytes 4096\n"),
            "{with}"
        );
        assert_eq!(metrics.render_with_database(None), text);
    }

    #[test]
    fn renders_the_state_gauges() {
        let stats = StoreStats {
            users: vec![(UserState::Active, 3), (UserState::Locked, 1)],
            cards: vec![
                (CardState::Active, 2),
                (CardState::Locked, 0),
                (CardState::Revoked, 5),
            ],
            sign_ins_last_hour: 7,
            certificates_expiring: 1,
        };
        let text = Metrics::render_state(&stats, Some(364));
        for line in [
            "pivtap_users{state=\"locked\"} 1",
            "pivtap_cards{state=\"revoked\"} 5",
            "pivtap_cards{state=\"locked\"} 0",
            "pivtap_sign_ins_last_hour 7",
            "pivtap_certificates_expiring 1",
            "pivtap_ca_expiry_days 364",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        assert!(!Metrics::render_state(&stats, None).contains("pivtap_ca_expiry_days"));
    }
}
