//! Back-channel logout delivery: each node's worker posts a signed logout token to every client that took part in an ended session.
//!
//! Ending a session queues one delivery per participating client with a
//! `backchannel_logout_uri` (in the store write that ends it). The worker claims due
//! deliveries (claiming pushes them back by [`CLAIM_LEASE`], so two nodes never send one
//! at once), posts `logout_token=<JWT>` (OpenID Connect Back-Channel Logout 1.0, typ
//! `logout+jwt`), and records the outcome: any 2xx is delivered; anything else is tried
//! again after 2 s, 4 s, 8 s ... at most [`MAX_BACKOFF`] apart, and given up (audited
//! `oidc`) once the delivery is [`GIVE_UP_AFTER`] old. Redirects are not followed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use time::OffsetDateTime;

use super::ServerState;
use crate::store::{DeliveryOutcome, LogoutDelivery, NewAuditEvent};
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::nonce::random_base64url;
use pivtap_protocol::oidc::{BACKCHANNEL_LOGOUT_EVENT, LOGOUT_TOKEN_JWT_TYPE, LogoutTokenClaims};
use pivtap_protocol::wire::ErrorCode;

/// How long a claimed delivery is this node's before another may claim it again.
pub const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// The first retry's delay; each further one doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest delay between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a delivery is tried before it is given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How long one POST may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a logout token is valid after it is issued.
pub const LOGOUT_TOKEN_LIFETIME: time::Duration = time::Duration::minutes(5);
/// How often the worker looks for due deliveries.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Most deliveries one round claims.
const BATCH: usize = 32;
/// Most characters of a failure the store keeps.
const MAX_ERROR_CHARS: usize = 200;

/// Why the delivery client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogoutClientError {
    /// The CA file could not be read.
    #[error("cannot read the back-channel logout CA file {}: {source}", path.display())]
    ReadCaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("{} holds no usable PEM certificate", path.display())]
    NoCertificates {
        /// The file.
        path: std::path::PathBuf,
    },
    /// TLS or HTTP could not be set up.
    #[error("cannot set up the back-channel logout client: {0}")]
    Setup(String),
}

/// The HTTP client deliveries are posted with: rustls (aws-lc-rs) trusting the system's
/// roots plus those of `ca_file`, a [`DELIVERY_TIMEOUT`], no redirects followed.
///
/// # Errors
/// [`LogoutClientError`].
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, LogoutClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| LogoutClientError::ReadCaFile {
            path: path.to_owned(),
            source,
        })?;
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|_| LogoutClientError::NoCertificates {
                path: path.to_owned(),
            })?;
        let (added, _) = roots.add_parsable_certificates(certificates);
        if added == 0 {
            return Err(LogoutClientError::NoCertificates {
                path: path.to_owned(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| LogoutClientError::Setup(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .connect_timeout(DELIVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pivtap-server/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(config)
        .build()
        .map_err(|error| LogoutClientError::Setup(error.to_string()))
}

/// The delay before attempt `attempts + 1`, after `attempts` failed ones (at least one):
/// 2 s, 4 s, 8 s ... at most [`MAX_BACKOFF`].
#[must_use]
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// What becomes of a delivery whose attempt at `now` failed with `error`, after
/// `attempts` failed attempts in all (this one included).
#[must_use]
pub fn after_failure(
    created_at: OffsetDateTime,
    attempts: u32,
    now: OffsetDateTime,
    error: String,
) -> DeliveryOutcome {
    if now - created_at >= GIVE_UP_AFTER {
        DeliveryOutcome::GivenUp { error }
    } else {
        DeliveryOutcome::Retry {
            at: now + backoff(attempts),
            error,
        }
    }
}

/// The logout token's claims for `delivery`, issued at `now` by `issuer`.
#[must_use]
pub fn logout_claims(
    issuer: &str,
    delivery: &LogoutDelivery,
    now: OffsetDateTime,
) -> LogoutTokenClaims {
    let mut events = serde_json::Map::new();
    events.insert(
        BACKCHANNEL_LOGOUT_EVENT.to_owned(),
        serde_json::Value::Object(serde_json::Map::new()),
    );
    LogoutTokenClaims {
        iss: issuer.to_owned(),
        sub: delivery.user_id.clone(),
        aud: delivery.client_id.clone(),
        iat: now.unix_timestamp(),
        exp: (now + LOGOUT_TOKEN_LIFETIME).unix_timestamp(),
        jti: random_base64url::<16>(),
        sid: delivery.session_id.clone(),
        events,
    }
}

/// Posts one delivery's logout token; `Err` says why it did not arrive (never the token).
async fn post(
    state: &ServerState,
    http: &reqwest::Client,
    delivery: &LogoutDelivery,
    now: OffsetDateTime,
) -> Result<(), String> {
    let claims = logout_claims(&state.settings().origin, delivery, now);
    let token = state
        .tokens()
        .sign(LOGOUT_TOKEN_JWT_TYPE, &claims)
        .map_err(|error| error.to_string())?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", &token)
        .finish();
    let response = http
        .post(&delivery.uri)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await
        .map_err(|error| {
            // Without the URL: reqwest's errors name it, and the store keeps the URI anyway.
            error.without_url().to_string()
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the client answered {status}"))
    }
}

/// One round at `now`: claims the due deliveries, posts each and records its outcome.
/// Answers how many were claimed. Failures to reach the store are logged.
pub async fn deliver_due(
    state: &ServerState,
    http: &reqwest::Client,
    now: OffsetDateTime,
) -> usize {
    let claimed = match state
        .store()
        .claim_logout_deliveries(now, CLAIM_LEASE, BATCH)
        .await
    {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::warn!(%error, "cannot claim back-channel logout deliveries");
            return 0;
        }
    };
    // Posted at once, so that one slow or unreachable client holds up no other and the
    // whole batch ends within DELIVERY_TIMEOUT, well inside the claim's lease.
    let posted = futures_util::future::join_all(
        claimed
            .iter()
            .map(|delivery| post(state, http, delivery, now)),
    )
    .await;
    for (delivery, posted) in claimed.iter().zip(posted) {
        let outcome = match posted {
            Ok(()) => DeliveryOutcome::Delivered,
            Err(error) => {
                let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
                // Claiming counted this attempt in `attempts` already.
                tracing::info!(
                    client = %delivery.client_id,
                    attempt = delivery.attempts,
                    %error,
                    "a back-channel logout did not arrive"
                );
                after_failure(delivery.created_at, delivery.attempts, now, error)
            }
        };
        if let DeliveryOutcome::GivenUp { error } = &outcome {
            let event = NewAuditEvent {
                time: now,
                kind: AuditKind::Oidc,
                outcome: AuditOutcome::from(ErrorCode::Unavailable),
                device: None,
                card_serial: None,
                user_id: Some(delivery.user_id.clone()),
                detail: Some(format!(
                    "back-channel logout of session {} to client {} given up after {} attempts: {error}",
                    delivery.session_id, delivery.client_id, delivery.attempts
                )),
            };
            if let Err(error) = state.store().audit(event).await {
                tracing::warn!(%error, "cannot audit a back-channel logout given up");
            }
        }
        if let Err(error) = state
            .store()
            .finish_logout_delivery(delivery.id, &outcome, now)
            .await
        {
            tracing::warn!(%error, "cannot record a back-channel logout's outcome");
        }
    }
    claimed.len()
}

/// Delivers back-channel logouts while the server runs (spawned beside the upkeep).
pub async fn run(state: ServerState, http: reqwest::Client) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // A full batch: there may be more due now.
        while deliver_due(&state, &http, OffsetDateTime::now_utc()).await == BATCH {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivery_client_trusts_a_ca_file_and_names_an_unusable_one() {
        let ca =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ca/test-ca.pem");
        assert!(http_client(Some(&ca)).is_ok());
        assert!(http_client(None).is_ok());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            http_client(Some(&missing)),
            Err(LogoutClientError::ReadCaFile { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("the file is written");
        let error = http_client(Some(&empty)).expect_err("no certificate");
        assert!(matches!(error, LogoutClientError::NoCertificates { .. }));
        assert!(error.to_string().contains("empty.pem"), "{error}");
    }

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_failed_delivery_is_retried_until_a_day_old_then_given_up() {
        let created = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a time");
        let now = created + time::Duration::minutes(3);
        assert_eq!(
            after_failure(created, 3, now, "503".to_owned()),
            DeliveryOutcome::Retry {
                at: now + time::Duration::seconds(8),
                error: "503".to_owned()
            }
        );
        let late = created + GIVE_UP_AFTER;
        assert_eq!(
            after_failure(created, 40, late, "503".to_owned()),
            DeliveryOutcome::GivenUp {
                error: "503".to_owned()
            }
        );
    }
}
