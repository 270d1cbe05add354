//! The authentication server: an axum app that issues challenges, accepts card-signed assertions and hands out session tokens, plus the admin API.
//!
//! [`app`] builds the router over a [`ServerState`], so tests drive it with
//! `oneshot` and no socket; [`serve`] puts it on HTTPS (rustls) or, on
//! loopback only, plain HTTP.

pub mod admin;
pub mod devices;
pub mod embedded;
pub mod enrollment;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod rate_limit;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::assertion::AssertionVerifier;
use crate::issuance::Issuer;
use crate::mapping::MappingRule;
use crate::pin_policy::PinPolicy;
use crate::store::Store;
use crate::token::TokenKeys;
use crate::wire;
use metrics::Metrics;
use rate_limit::RateLimiter;

/// Settings the handlers need (resolved from `server.toml`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This server's origin: the `aud` of assertions and the `iss` of tokens.
    pub origin: String,
    /// The `aud` of session tokens.
    pub token_audience: String,
    /// How long a session token lives.
    pub token_lifetime: Duration,
    /// How long a challenge is accepted.
    pub challenge_lifetime: Duration,
    /// Certificate attribute -> user attribute.
    pub mapping: MappingRule,
    /// Rules for new PINs (`GET /v1/pin-policy`, enrollment offers).
    pub pin_policy: PinPolicy,
    /// The issuing CA and policy (`[issuance]`); `None` disables enrollment,
    /// renewal and the CRL.
    pub issuer: Option<Arc<Issuer>>,
    /// Device identity (`[devices]`).
    pub devices: crate::config::DevicesConfig,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ServerState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    store: Arc<dyn Store>,
    verifier: AssertionVerifier,
    tokens: RwLock<TokenKeys>,
    /// SHA-256 of the admin credential: compared in constant time, never kept in clear.
    admin_token_hash: [u8; 32],
    limiter: RateLimiter,
    metrics: Metrics,
    device_gate: devices::DeviceGate,
}

impl ServerState {
    /// Assembles the state.
    #[must_use]
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        verifier: AssertionVerifier,
        tokens: TokenKeys,
        admin_token: &str,
        limiter: RateLimiter,
    ) -> Self {
        ServerState {
            inner: Arc::new(Inner {
                settings,
                store,
                verifier,
                tokens: RwLock::new(tokens),
                admin_token_hash: Sha256::digest(admin_token.trim().as_bytes()).into(),
                limiter,
                metrics: Metrics::default(),
                device_gate: devices::DeviceGate::default(),
            }),
        }
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The assertion verifier.
    #[must_use]
    pub fn verifier(&self) -> &AssertionVerifier {
        &self.inner.verifier
    }

    /// The token keys (read).
    pub fn tokens(&self) -> std::sync::RwLockReadGuard<'_, TokenKeys> {
        self.inner
            .tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token keys (for rotation).
    pub fn tokens_mut(&self) -> std::sync::RwLockWriteGuard<'_, TokenKeys> {
        self.inner
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The failure counters.
    #[must_use]
    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// The metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What the device-proof checks remember.
    pub(crate) fn device_gate(&self) -> &devices::DeviceGate {
        &self.inner.device_gate
    }

    /// Whether `presented` is the admin credential (constant time).
    #[must_use]
    pub fn is_admin_token(&self, presented: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        bool::from(hash.ct_eq(&self.inner.admin_token_hash))
    }
}

/// Why a configured server could not be assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration's files could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A trusted CA certificate or CRL is unusable.
    #[error("the trusted CA certificates or CRLs are unusable")]
    Trust(#[source] crate::certificate::CertificateError),
    /// The token keys could not be loaded.
    #[error("cannot load the token signing keys")]
    Tokens(#[source] crate::token::TokenError),
    /// The admin credential file could not be read.
    #[error("cannot read the admin credential {}", .path.display())]
    AdminToken {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("cannot open the database")]
    Store(#[source] crate::store::StoreError),
    /// The issuing CA of `[issuance]` could not be loaded.
    #[error("cannot load the issuing CA")]
    Issuance(#[source] crate::issuance::IssuanceError),
}

/// Assembles a server from its configuration: opens (and migrates) the
/// database, loads the trusted CAs, CRLs, token keys and admin credential.
///
/// # Errors
/// [`StartError`] naming what could not be loaded.
pub async fn from_config(
    config: &crate::config::ServerConfig,
) -> Result<(ServerState, Listener), StartError> {
    let verifier = AssertionVerifier::new(crate::assertion::VerifierConfig {
        audience: config.origin.clone(),
        trust_anchors: config.trust_anchors()?,
        crls: config.crls()?,
        max_clock_skew: config.challenges.max_clock_skew(),
    })
    .map_err(StartError::Trust)?;
    let tokens = TokenKeys::load(&config.tokens.key_file).map_err(StartError::Tokens)?;
    let admin_token =
        zeroize::Zeroizing::new(std::fs::read_to_string(&config.admin_token_file).map_err(
            |source| StartError::AdminToken {
                path: config.admin_token_file.clone(),
                source,
            },
        )?);
    let issuer = match &config.issuance {
        Some(issuance) => Some(Arc::new(
            Issuer::load(issuance).map_err(StartError::Issuance)?,
        )),
        None => None,
    };
    let store = crate::store::SqliteStore::open(&config.database)
        .await
        .map_err(StartError::Store)?;
    let settings = Settings {
        origin: config.origin.clone(),
        token_audience: config.tokens.audience.clone(),
        token_lifetime: config.tokens.lifetime(),
        challenge_lifetime: config.challenges.lifetime(),
        mapping: config.mapping.rule,
        pin_policy: config.pin_policy,
        issuer,
        devices: config.devices.clone(),
    };
    if !config.devices.require_registration {
        tracing::warn!(
            "OPEN MODE: [devices] require_registration = false: any caller gets challenges \
             in any unregistered device's name, and the `device` of its tokens is unproven. \
             For trials only."
        );
    }
    let limiter = RateLimiter::new(rate_limit::RateLimitPolicy {
        failures_before_delay: config.rate_limit.failures_before_delay,
        base_delay: config.rate_limit.base_delay(),
        max_delay: config.rate_limit.max_delay(),
        window: config.rate_limit.window(),
    });
    let state = ServerState::new(
        settings,
        Arc::new(store),
        verifier,
        tokens,
        &admin_token,
        limiter,
    );
    let listener = match (&config.tls, config.plain_http) {
        (Some(tls), _) => Listener::Tls {
            address: config.listen,
            certificate: tls.certificate.clone(),
            key: tls.key.clone(),
        },
        (None, _) => Listener::PlainLoopback {
            address: config.listen,
        },
    };
    Ok((state, listener))
}

/// Largest request body accepted (an assertion with a chain is a few KB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The whole HTTP API.
pub fn app(state: ServerState) -> Router {
    Router::new()
        .route(wire::PATH_CHALLENGES, post(handlers::create_challenge))
        .route(wire::PATH_ASSERTIONS, post(handlers::submit_assertion))
        .route(wire::PATH_JWKS, get(handlers::jwks))
        .route(wire::PATH_PIN_POLICY, get(handlers::pin_policy))
        .route(
            wire::PATH_ENROLLMENTS_INSPECT,
            post(enrollment::inspect_enrollment),
        )
        .route(
            wire::PATH_ENROLLMENTS,
            post(enrollment::complete_enrollment),
        )
        .route(wire::PATH_RENEWALS, post(enrollment::renew))
        .route(wire::PATH_CRL, get(enrollment::crl))
        .route(wire::PATH_DEVICE_ENROLLMENTS, post(devices::enroll_device))
        .route(wire::PATH_HEALTH, get(handlers::health))
        .route(wire::PATH_METRICS, get(handlers::metrics))
        .nest(wire::PATH_ADMIN, admin::router(state.clone()))
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .fallback(handlers::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts every request and its latency.
async fn observe(State(state): State<ServerState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| route_label(path.as_str()))
        .unwrap_or("other");
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let latency = started.elapsed();
    let status = response.status().as_u16();
    state.metrics().observe_request(route, status, latency);
    tracing::info!(
        target: "pivtap::server",
        %method,
        route,
        status,
        latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    response
}

/// A fixed label per route, so metrics cannot be flooded with made-up paths.
fn route_label(path: &str) -> &'static str {
    match path {
        wire::PATH_CHALLENGES => wire::PATH_CHALLENGES,
        wire::PATH_ASSERTIONS => wire::PATH_ASSERTIONS,
        wire::PATH_JWKS => wire::PATH_JWKS,
        wire::PATH_PIN_POLICY => wire::PATH_PIN_POLICY,
        wire::PATH_ENROLLMENTS_INSPECT => wire::PATH_ENROLLMENTS_INSPECT,
        wire::PATH_ENROLLMENTS => wire::PATH_ENROLLMENTS,
        wire::PATH_RENEWALS => wire::PATH_RENEWALS,
        wire::PATH_CRL => wire::PATH_CRL,
        wire::PATH_DEVICE_ENROLLMENTS => wire::PATH_DEVICE_ENROLLMENTS,
        wire::PATH_HEALTH => wire::PATH_HEALTH,
        wire::PATH_METRICS => wire::PATH_METRICS,
        admin if admin.starts_with(wire::PATH_ADMIN) => wire::PATH_ADMIN,
        _ => "other",
    }
}

/// How the server listens.
#[derive(Debug, Clone)]
pub enum Listener {
    /// HTTPS with a certificate and key (PEM files).
    Tls {
        /// The address.
        address: SocketAddr,
        /// Certificate chain, PEM.
        certificate: std::path::PathBuf,
        /// Private key, PEM.
        key: std::path::PathBuf,
    },
    /// Plain HTTP: only on a loopback address.
    PlainLoopback {
        /// The address (must be loopback).
        address: SocketAddr,
    },
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Plain HTTP was asked for on a non-loopback address.
    #[error("plain HTTP is only allowed on a loopback address, not {0}; configure TLS")]
    PlainHttpNotLoopback(SocketAddr),
    /// The TLS certificate or key could not be loaded.
    #[error("cannot load the TLS certificate or key")]
    Tls(#[source] std::io::Error),
    /// The address could not be bound, or serving failed.
    #[error("cannot serve on {address}")]
    Io {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Serves the app until `shutdown` resolves.
///
/// # Errors
/// [`ServeError`] when the listener cannot start.
pub async fn serve(
    state: ServerState,
    listener: Listener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let handle = axum_server::Handle::new();
    let on_shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_shutdown.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    serve_with_handle(state, listener, handle).await
}

/// Serves the app under an [`axum_server::Handle`]: `handle.listening()`
/// gives the bound address (useful with port 0), `handle.graceful_shutdown`
/// stops it.
///
/// # Errors
/// [`ServeError`] when the listener cannot start.
pub async fn serve_with_handle(
    state: ServerState,
    listener: Listener,
    handle: axum_server::Handle<SocketAddr>,
) -> Result<(), ServeError> {
    let maintenance = tokio::spawn(maintain(state.clone()));
    let app = app(state).into_make_service();
    let served = serve_app(app, listener, handle).await;
    maintenance.abort();
    served
}

/// How often the store is tidied while the server runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// How long expired challenges are kept: a late replay of one within this
/// time is still answered `challenge_reused` or `challenge_expired`; after it,
/// `challenge_unknown` (refused all the same).
const EXPIRED_CHALLENGE_RETENTION: Duration = Duration::from_secs(3600);

/// Runs [`tidy`] every [`MAINTENANCE_INTERVAL`] while the server runs.
async fn maintain(state: ServerState) {
    let mut ticks = tokio::time::interval(MAINTENANCE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        tidy(state.inner.store.as_ref(), time::OffsetDateTime::now_utc()).await;
    }
}

/// One round of upkeep at `now`: deletes the challenges that expired more
/// than [`EXPIRED_CHALLENGE_RETENTION`] ago, and compacts the store (SQLite's
/// write-ahead log grows without bound under steady load otherwise). Failures
/// are logged; the next round tries again.
async fn tidy(store: &dyn Store, now: time::OffsetDateTime) {
    match store
        .purge_challenges(now - EXPIRED_CHALLENGE_RETENTION)
        .await
    {
        Ok(purged) => tracing::debug!(purged, "expired challenges purged"),
        Err(error) => tracing::warn!(%error, "purging expired challenges failed"),
    }
    if let Err(error) = store.compact().await {
        tracing::warn!(%error, "compacting the store failed");
    }
}

async fn serve_app(
    app: axum::routing::IntoMakeService<axum::Router>,
    listener: Listener,
    handle: axum_server::Handle<SocketAddr>,
) -> Result<(), ServeError> {
    match listener {
        Listener::Tls {
            address,
            certificate,
            key,
        } => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(certificate, key)
                .await
                .map_err(ServeError::Tls)?;
            axum_server::bind_rustls(address, tls)
                .handle(handle)
                .serve(app)
                .await
                .map_err(|source| ServeError::Io { address, source })
        }
        Listener::PlainLoopback { address } => {
            if !address.ip().is_loopback() {
                return Err(ServeError::PlainHttpNotLoopback(address));
            }
            axum_server::bind(address)
                .handle(handle)
                .serve(app)
                .await
                .map_err(|source| ServeError::Io { address, source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChallengeUse;
    use crate::store::SqliteStore;

    fn challenge_event() -> crate::store::NewAuditEvent {
        crate::store::NewAuditEvent {
            time: time::OffsetDateTime::now_utc(),
            kind: "challenge".to_owned(),
            outcome: "ok".to_owned(),
            device: Some("kiosk-1".to_owned()),
            card_serial: None,
            user_id: None,
            detail: None,
        }
    }

    #[tokio::test]
    async fn upkeep_forgets_only_long_expired_challenges() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("pivtap.db"))
            .await
            .unwrap();
        let now = time::OffsetDateTime::now_utc();
        let two_hours = time::Duration::hours(2);
        let ten_minutes = time::Duration::minutes(10);
        store
            .add_challenge("old", "kiosk-1", now - two_hours, challenge_event())
            .await
            .unwrap();
        store
            .add_challenge("recent", "kiosk-1", now - ten_minutes, challenge_event())
            .await
            .unwrap();
        tidy(&store, now).await;
        assert_eq!(
            store.use_challenge("old", "kiosk-1", now).await.unwrap(),
            ChallengeUse::Unknown
        );
        assert_eq!(
            store.use_challenge("recent", "kiosk-1", now).await.unwrap(),
            ChallengeUse::Expired,
            "a challenge that expired within the hour is still known"
        );
    }
}
