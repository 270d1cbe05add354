//! The authentication server: an axum app that issues challenges, accepts card-signed assertions and hands out session tokens, plus the admin API.
//!
//! [`app`] builds the router over a [`ServerState`], so tests drive it with
//! `oneshot` and no socket; [`serve`] puts it on HTTPS (rustls) or, on
//! loopback only, plain HTTP.
//!
//! # Several nodes
//!
//! Every piece of state that decides a sign-in is the store's, so any number of nodes on
//! one store answer alike: challenges (used once across nodes), failure counters and
//! request budgets ([`rate_limit`]), device proof ids ([`devices`]), card and user states,
//! revocations, devices, enrollment codes, admin credentials, the audit, and the token
//! signing keys. The issuing CA, the TLS certificate, trusted CAs and CRLs are the shared
//! configuration directory's files. Times are wall-clock: keep the nodes' clocks in step (NTP).
//!
//! # Caches
//!
//! What a node keeps in memory, and how long it may lag behind the store or the files:
//!
//! - Card and user states, revocations, devices and their states, admin credentials:
//!   none; read from the store on every request, so a lock or revocation through any node
//!   refuses the next sign-in at every node.
//! - Token signing keys (what signs, and the JWKS): read from the store every
//!   [`TOKEN_KEYS_REFRESH`] (500 ms): a rotation is in force on every node within about
//!   half a second. The JWKS answer says `max-age=300`: a relying party that caches it
//!   must fetch it again when a token names a `kid` it does not have.
//! - Trust anchors, CRLs and challenge rules ([`ServerState::verifier`]) and the mapping:
//!   from the configuration's files at start, replaced on SIGHUP ([`ServerState::reload`]):
//!   after changing those files, send SIGHUP to every node. They lag until then; they
//!   hold no state the store or an administrator's lock changes.
//! - The issuing CA as the device checks' trust store: the configuration's, fixed until a
//!   restart (as the issuing CA itself is).
//! - Readiness ([`ServerState::is_ready`]): a store write's answer is reused for
//!   [`READINESS_CACHE`] (1 s); it decides no sign-in.
//! - `GET /v1/crl` is made from the store on every request; its `max-age=60` lets HTTP
//!   caches and relying parties keep it a minute.
//! - Node-local, and deciding nothing: the refusals answered `rate_limited` and summarised
//!   in the audit once a minute (each node summarises its own), metrics, the open-mode
//!   warning's timer.

pub mod admin;
pub mod body;
pub mod client_address;
pub mod devices;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod enrollment;
pub mod error;
pub mod handlers;
pub mod logout;
pub mod metrics;
pub mod rate_limit;
pub mod service;
pub mod sessions;

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

use crate::connections::{LimitedAcceptor, apply_http_timeouts};
use crate::issuance::Issuer;
use crate::mapping::MappingRule;
use crate::store::Store;
use crate::token::TokenKeys;
use crate::verifier::AssertionVerifier;
use client_address::ClientAddress;
use metrics::Metrics;
use pivtap_protocol::audit::AuditKind;
use pivtap_protocol::oidc;
use pivtap_protocol::pin_policy::PinPolicy;
use pivtap_protocol::wire;
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
    /// The longest a session lasts after its sign-in (`[sessions] max_age_seconds`).
    pub session_max_age: Duration,
    /// Certificate attribute -> user attribute, at start ([`ServerState::mapping`] is
    /// the one in force: SIGHUP reloads it).
    pub mapping: MappingRule,
    /// Rules for new PINs (`GET /v1/pin-policy`, enrollment offers).
    pub pin_policy: PinPolicy,
    /// The issuing CA and policy (`[issuance]`); `None` disables enrollment,
    /// renewal and the CRL.
    pub issuer: Option<Arc<Issuer>>,
    /// How long audit events are kept (`[audit] retention_days`).
    pub audit_retention: Duration,
    /// Device identity (`[devices]`).
    pub devices: crate::config::DevicesConfig,
    /// The OpenID Connect provider (`[oidc]`).
    pub oidc: crate::config::OidcConfig,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ServerState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    store: Arc<dyn Store>,
    /// The trust anchors, CRLs and challenge rules in force (replaced by [`ServerState::reload`]).
    verifier: RwLock<Arc<AssertionVerifier>>,
    /// The mapping in force (replaced by [`ServerState::reload`]).
    mapping: RwLock<MappingRule>,
    /// When the TLS certificate served ends, if known (see [`ServerState::tls_warning`]).
    tls_not_after: RwLock<Option<time::OffsetDateTime>>,
    tokens: RwLock<TokenKeys>,
    /// The store's version of the key set in `tokens` (0: not read from the store yet).
    token_version: std::sync::atomic::AtomicI64,
    /// SHA-256 of the admin credential: compared in constant time, never kept in clear.
    admin_token_hash: [u8; 32],
    limiter: RateLimiter,
    metrics: Metrics,
    http: HttpSettings,
    /// When the store last took a write, for readiness (cached a moment).
    readiness: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// What the device-proof checks remember (see [`devices::DeviceGate`]).
    device_gate: devices::DeviceGate,
}

/// How the server's listeners behave (`[connections]`, `[metrics]`).
#[derive(Clone, Default)]
pub struct HttpSettings {
    /// Time-outs and connection caps of every listener.
    pub connections: crate::connections::ConnectionLimits,
    /// A loopback address where a separate plain-HTTP listener serves `GET /metrics` only.
    pub metrics_listen: Option<SocketAddr>,
    /// The load balancers whose connections to the server's listener begin with a PROXY header.
    pub proxies: crate::connections::TrustedProxies,
    /// SHA-256 of the metrics credential; with it, `GET /metrics` is served on the
    /// public listener too, to requests presenting it.
    metrics_token_hash: Option<[u8; 32]>,
    /// Extra CAs (PEM) back-channel logout deliveries trust besides the system's
    /// (`[oidc] ca_file`).
    logout_ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("connections", &self.connections)
            .field("metrics_listen", &self.metrics_listen)
            .field("proxies", &self.proxies)
            .field(
                "metrics_token",
                &self.metrics_token_hash.map(|_| "REDACTED"),
            )
            .finish()
    }
}

impl HttpSettings {
    /// Whether `GET /metrics` asks for a credential.
    #[must_use]
    pub fn has_metrics_token(&self) -> bool {
        self.metrics_token_hash.is_some()
    }

    /// Settings whose `GET /metrics` asks for `token` (`None`: no credential; then
    /// `/metrics` is served only by the loopback listener, if any).
    #[must_use]
    pub fn new(
        connections: crate::connections::ConnectionLimits,
        metrics_listen: Option<SocketAddr>,
        metrics_token: Option<&str>,
    ) -> Self {
        Self {
            connections,
            metrics_listen,
            proxies: crate::connections::TrustedProxies::default(),
            logout_ca_file: None,
            metrics_token_hash: metrics_token
                .map(|token| Sha256::digest(token.trim().as_bytes()).into()),
        }
    }

    /// These settings, requiring a PROXY header from `proxies` on the server's listener.
    #[must_use]
    pub fn trusting_proxies(mut self, proxies: crate::connections::TrustedProxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// These settings, back-channel logout deliveries trusting the CAs of `ca_file` (PEM)
    /// besides the system's.
    #[must_use]
    pub fn with_logout_ca_file(mut self, ca_file: Option<std::path::PathBuf>) -> Self {
        self.logout_ca_file = ca_file;
        self
    }
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
                mapping: RwLock::new(settings.mapping),
                settings,
                store,
                verifier: RwLock::new(Arc::new(verifier)),
                tls_not_after: RwLock::new(None),
                tokens: RwLock::new(tokens),
                token_version: std::sync::atomic::AtomicI64::new(0),
                admin_token_hash: Sha256::digest(admin_token.trim().as_bytes()).into(),
                limiter,
                metrics: Metrics::default(),
                http: HttpSettings::default(),
                readiness: tokio::sync::Mutex::new(None),
                device_gate: devices::DeviceGate::default(),
            }),
        }
    }

    /// The same state with the listeners' settings `http`. Call it before the
    /// state is cloned: a state already shared keeps its settings (and says so
    /// in the log).
    #[must_use]
    pub fn with_http(mut self, http: HttpSettings) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.http = http,
            None => tracing::error!("HTTP settings given to a server state already shared"),
        }
        self
    }

    /// The listeners' settings.
    #[must_use]
    pub fn http(&self) -> &HttpSettings {
        &self.inner.http
    }

    /// Whether `presented` is the metrics credential (constant time); `false`
    /// when none is configured.
    #[must_use]
    pub fn is_metrics_token(&self, presented: &str) -> bool {
        let Some(expected) = &self.inner.http.metrics_token_hash else {
            return false;
        };
        let hash: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        bool::from(hash.ct_eq(expected))
    }

    /// Whether a sign-in could be recorded now: a real write to the store
    /// succeeds. The answer is kept for [`READINESS_CACHE`], so probes cannot
    /// load the store's writer.
    pub async fn is_ready(&self) -> bool {
        let mut last = self.inner.readiness.lock().await;
        if let Some((at, ready)) = *last
            && at.elapsed() < READINESS_CACHE
        {
            return ready;
        }
        let ready = match self
            .store()
            .heartbeat(time::OffsetDateTime::now_utc())
            .await
        {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "readiness: the database cannot be written");
                false
            }
        };
        *last = Some((Instant::now(), ready));
        ready
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

    /// The assertion verifier in force.
    #[must_use]
    pub fn verifier(&self) -> Arc<AssertionVerifier> {
        Arc::clone(
            &self
                .inner
                .verifier
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The mapping in force.
    #[must_use]
    pub fn mapping(&self) -> MappingRule {
        *self
            .inner
            .mapping
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the trust anchors, CRLs, challenge rules and mapping with those of
    /// `config`, all or nothing: when any of them cannot be loaded, the state in force
    /// is kept and the error returned. Other settings take a restart.
    ///
    /// # Errors
    /// [`StartError::Config`] or [`StartError::Trust`] naming what could not be loaded.
    pub fn reload(&self, config: &crate::config::ServerConfig) -> Result<ReloadReport, StartError> {
        let (verifier, report) = verifier_from_config(config)?;
        let mapping = config.mapping.rule;
        *self
            .inner
            .verifier
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(verifier);
        *self
            .inner
            .mapping
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mapping;
        Ok(ReloadReport { mapping, ..report })
    }

    /// Records when the TLS certificate served ends.
    pub fn set_tls_not_after(&self, not_after: time::OffsetDateTime) {
        *self
            .inner
            .tls_not_after
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(not_after);
    }

    /// A warning when the TLS certificate served ends within
    /// [`crate::check::EXPIRY_WARNING_DAYS`] of `now` (or has ended).
    #[must_use]
    pub fn tls_warning(&self, now: time::OffsetDateTime) -> Option<String> {
        let not_after = (*self
            .inner
            .tls_not_after
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))?;
        let days = (not_after - now).whole_days();
        let date = not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        if not_after <= now {
            Some(format!(
                "the TLS certificate expired on {date}; renew it with `pivtap server renew-tls` and restart"
            ))
        } else if days < crate::check::EXPIRY_WARNING_DAYS {
            Some(format!(
                "the TLS certificate expires in {days} days, on {date}; renew it with `pivtap server renew-tls` and restart"
            ))
        } else {
            None
        }
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

    /// Brings the token keys in force up to the store's key set, and returns whether they
    /// changed: a newer version in the store replaces them; an empty store takes the keys
    /// this state holds (the key file's, at start), so tokens issued before stay valid.
    /// The server calls it at start and every [`TOKEN_KEYS_REFRESH`].
    ///
    /// # Errors
    /// [`StartError::TokenKeys`] when the store fails, [`StartError::Tokens`] when its key
    /// set cannot be read (the keys in force are kept).
    pub async fn sync_token_keys(&self) -> Result<bool, StartError> {
        use std::sync::atomic::Ordering;
        // Two rounds at most: an empty store another node filled first is read again.
        for _ in 0..2 {
            let held = self.inner.token_version.load(Ordering::Acquire);
            match self
                .store()
                .token_keys()
                .await
                .map_err(StartError::TokenKeys)?
            {
                Some(stored) if stored.version == held => return Ok(false),
                Some(stored) => {
                    let keys = TokenKeys::from_text(&stored.keys).map_err(|problem| {
                        StartError::Tokens(crate::token::TokenError::StoredKeysInvalid(problem))
                    })?;
                    let kid = keys.current_kid().to_owned();
                    let held_kid = self.tokens().current_kid().to_owned();
                    if held == 0 && !keys.publishes(&held_kid) {
                        // The keys held are the key file's: it was replaced (or is another
                        // directory's) after the store took its keys.
                        tracing::warn!(
                            file_kid = held_kid,
                            "the token key file holds a key the database's key set does not \
                             publish; the database's keys are in force (the key file only seeds \
                             an empty database): make a new key with `pivtap server rotate-keys`"
                        );
                    }
                    *self.tokens_mut() = keys;
                    self.inner
                        .token_version
                        .store(stored.version, Ordering::Release);
                    tracing::info!(
                        version = stored.version,
                        kid,
                        "token signing keys loaded from the store"
                    );
                    return Ok(true);
                }
                None => {
                    let text = self.tokens().to_text().map_err(StartError::Tokens)?;
                    match self
                        .store()
                        .replace_token_keys(&text, None, time::OffsetDateTime::now_utc())
                        .await
                    {
                        Ok(version) => {
                            self.inner.token_version.store(version, Ordering::Release);
                            tracing::info!("the store took the key file's token signing keys");
                            return Ok(false);
                        }
                        Err(crate::store::StoreError::Conflict { .. }) => {}
                        Err(error) => return Err(StartError::TokenKeys(error)),
                    }
                }
            }
        }
        Ok(false)
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

    /// Records the refusal `error` of a request from `source` with its audit `event`, and
    /// gives the answer: `error` itself while the source is within its refusal budget
    /// (server errors are always audited and never held back); past the budget, nothing
    /// is audited (the refusal is counted for the source's summary, see [`upkeep`]) and
    /// the answer is `rate_limited`. A failure to write the audit is the answer if it happens.
    pub async fn refused(
        &self,
        source: &client_address::ClientAddress,
        event: crate::store::NewAuditEvent,
        error: error::ApiError,
    ) -> error::ApiError {
        if error.code.http_status() < 500 {
            let key = source.key();
            match self
                .limiter()
                .spend(
                    self.store(),
                    rate_limit::Spend::Refusal,
                    std::slice::from_ref(&key),
                    time::OffsetDateTime::now_utc(),
                )
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(wait)) => {
                    self.limiter().count_unaudited(&key);
                    return error::ApiError::too_many_requests(wait);
                }
                Err(store_error) => return store_error.into(),
            }
        }
        match self.store().audit(event).await {
            Ok(()) => error,
            Err(store_error) => store_error.into(),
        }
    }

    /// What the device-proof checks remember.
    pub(crate) fn device_gate(&self) -> &devices::DeviceGate {
        &self.inner.device_gate
    }

    /// Whether `presented` is the admin token file's credential (constant time).
    #[must_use]
    pub fn is_admin_token(&self, presented: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        bool::from(hash.ct_eq(&self.inner.admin_token_hash))
    }

    /// SHA-256 (hex) of the admin token file's credential, [`INITIAL_ADMIN_CREDENTIAL`].
    #[must_use]
    pub fn initial_admin_hash(&self) -> String {
        hex::encode(self.inner.admin_token_hash)
    }

    /// The name of the active admin credential `presented` is, if it is one: a named
    /// credential of the store, or the token file's ([`INITIAL_ADMIN_CREDENTIAL`]) until
    /// that is revoked.
    ///
    /// # Errors
    /// [`StoreError`](crate::store::StoreError) when the store cannot be read.
    pub async fn admin_credential(
        &self,
        presented: &str,
    ) -> Result<Option<String>, crate::store::StoreError> {
        use crate::store::INITIAL_ADMIN_CREDENTIAL;
        let hash = hex::encode(Sha256::digest(presented.trim().as_bytes()));
        // The stored hashes are looked up by value: they are hashes of random tokens, so
        // the lookup's timing tells nothing about a token.
        if let Some(stored) = self.store().find_admin_credential(&hash).await? {
            return Ok(stored.revoked_at.is_none().then_some(stored.name));
        }
        if !self.is_admin_token(presented) {
            return Ok(None);
        }
        let initial_revoked = self
            .store()
            .admin_credentials()
            .await?
            .iter()
            .any(|stored| stored.name == INITIAL_ADMIN_CREDENTIAL);
        Ok((!initial_revoked).then(|| INITIAL_ADMIN_CREDENTIAL.to_owned()))
    }
}

/// How long a readiness answer is reused before the store is written again.
pub const READINESS_CACHE: Duration = Duration::from_secs(1);

/// Why a configured server could not be assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration's files could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A trusted CA certificate or CRL is unusable.
    #[error("the trusted CA certificates or CRLs are unusable")]
    Trust(#[source] pivtap_protocol::certificate::CertificateError),
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
    /// The store could not be opened or migrated (or its password read).
    #[error(transparent)]
    OpenStore(#[from] crate::store::url::OpenStoreError),
    /// The store opened but failed.
    #[error("the store failed")]
    Store(#[source] crate::store::StoreError),
    /// The token keys could not be read from or written to the database.
    #[error("cannot read or write the token signing keys in the database")]
    TokenKeys(#[source] crate::store::StoreError),
    /// The database opened but cannot be written (a read-only file or
    /// directory, a full disk): no sign-in could be recorded.
    #[error("the database {} cannot be written", .path.display())]
    DatabaseNotWritable {
        /// The database file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: crate::store::StoreError,
    },
    /// The metrics credential file could not be read.
    #[error("cannot read the metrics credential {}", .path.display())]
    MetricsToken {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The issuing CA of `[issuance]` could not be loaded.
    #[error("cannot load the issuing CA")]
    Issuance(#[source] crate::issuance::IssuanceError),
}

/// What [`ServerState::reload`] (or the start) loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Trusted CA certificates.
    pub trust_anchors: usize,
    /// CRLs.
    pub crls: usize,
    /// The mapping.
    pub mapping: MappingRule,
}

/// The assertion verifier of `config` (trust anchors, CRLs, challenge rules).
fn verifier_from_config(
    config: &crate::config::ServerConfig,
) -> Result<(AssertionVerifier, ReloadReport), StartError> {
    let trust_anchors = config.trust_anchors()?;
    let crls = config.crls()?;
    let report = ReloadReport {
        trust_anchors: trust_anchors.len(),
        crls: crls.len(),
        mapping: config.mapping.rule,
    };
    let verifier = AssertionVerifier::new(crate::verifier::VerifierConfig {
        audience: config.origin.clone(),
        trust_anchors,
        crls,
        max_clock_skew: config.challenges.max_clock_skew(),
        allowed_slots: config.challenges.allowed_slots.clone(),
    })
    .map_err(StartError::Trust)?;
    Ok((verifier, report))
}

/// Assembles a server from its configuration: opens (and migrates) the
/// database, loads the trusted CAs, CRLs, token keys and admin credential.
///
/// # Errors
/// [`StartError`] naming what could not be loaded.
pub async fn from_config(
    config: &crate::config::ServerConfig,
) -> Result<(ServerState, Listener), StartError> {
    let (verifier, _) = verifier_from_config(config)?;
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
    let metrics_token = match &config.metrics.token_file {
        Some(path) => {
            let token =
                zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                    StartError::MetricsToken {
                        path: path.clone(),
                        source,
                    }
                })?);
            if token.trim().is_empty() {
                return Err(StartError::MetricsToken {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the file is empty",
                    ),
                });
            }
            Some(token)
        }
        None => None,
    };
    let store = config.open_store().await?;
    // A store that opens may still be read-only (SQLite falls back to reading a
    // file it may not write): refuse to start rather than fail every sign-in.
    store
        .heartbeat(time::OffsetDateTime::now_utc())
        .await
        .map_err(|source| match config.sqlite_database() {
            Some(path) => StartError::DatabaseNotWritable {
                path: path.to_owned(),
                source,
            },
            None => StartError::Store(source),
        })?;
    report_user_conflicts(&*store).await;
    let settings = Settings {
        origin: config.origin.clone(),
        token_audience: config.tokens.audience.clone(),
        token_lifetime: config.tokens.lifetime(),
        challenge_lifetime: config.challenges.lifetime(),
        session_max_age: config.sessions.max_age(),
        mapping: config.mapping.rule,
        pin_policy: config.pin_policy,
        issuer,
        audit_retention: config.audit.retention(),
        devices: config.devices.clone(),
        oidc: config.oidc.clone(),
    };
    if !config.devices.require_registration {
        tracing::warn!(
            "OPEN MODE: [devices] require_registration = false: any caller gets challenges \
             in any unregistered device's name, and the `device` of its tokens is unproven. \
             For trials only."
        );
    }
    let limiter = RateLimiter::new(config.rate_limit.policy());
    let state = ServerState::new(settings, store, verifier, tokens, &admin_token, limiter)
        .with_http(
            HttpSettings::new(
                config.connections.limits(),
                config.metrics.listen,
                metrics_token.as_deref().map(String::as_str),
            )
            .trusting_proxies(config.connections.trusted_proxies())
            .with_logout_ca_file(config.oidc.ca_file.clone()),
        );
    state.sync_token_keys().await?;
    if let Some(tls) = &config.tls {
        match std::fs::read(&tls.certificate)
            .map_err(|error| error.to_string())
            .and_then(|bytes| crate::check::certificate_not_after(&bytes))
        {
            Ok(not_after) => state.set_tls_not_after(not_after),
            Err(reason) => tracing::warn!(
                certificate = %tls.certificate.display(),
                reason,
                "cannot read the TLS certificate's end of validity; no warning before it expires"
            ),
        }
    }
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

/// What [`rotate_token_keys`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedKeys {
    /// The `kid` of the key that signed until now (published until its tokens expire).
    pub previous_kid: String,
    /// The `kid` of the new signing key.
    pub current_kid: String,
    /// The store's version of the new key set.
    pub version: i64,
}

/// Rotates the token signing keys in the store at `now` ([`TokenKeys::rotate`]): every
/// running node signs with the new key within [`TOKEN_KEYS_REFRESH`], no restart. An empty
/// store starts from the key file's keys. A rotation another node stored meanwhile is read
/// again and rotated on (a few tries).
///
/// # Errors
/// [`StartError::TokenKeys`] when the store fails (or keeps changing under it),
/// [`StartError::Tokens`] when the keys cannot be read or written.
pub async fn rotate_token_keys(
    store: &dyn Store,
    key_file: &std::path::Path,
    max_token_lifetime: Duration,
    now: time::OffsetDateTime,
) -> Result<RotatedKeys, StartError> {
    const TRIES: usize = 5;
    let mut conflict = None;
    for _ in 0..TRIES {
        let (mut keys, replaces) = match store.token_keys().await.map_err(StartError::TokenKeys)? {
            Some(stored) => (
                TokenKeys::from_text(&stored.keys).map_err(|problem| {
                    StartError::Tokens(crate::token::TokenError::StoredKeysInvalid(problem))
                })?,
                Some(stored.version),
            ),
            None => (TokenKeys::load(key_file).map_err(StartError::Tokens)?, None),
        };
        let previous_kid = keys.current_kid().to_owned();
        keys.rotate(now, max_token_lifetime);
        let text = keys.to_text().map_err(StartError::Tokens)?;
        match store.replace_token_keys(&text, replaces, now).await {
            Ok(version) => {
                return Ok(RotatedKeys {
                    previous_kid,
                    current_kid: keys.current_kid().to_owned(),
                    version,
                });
            }
            Err(error @ crate::store::StoreError::Conflict { .. }) => conflict = Some(error),
            Err(error) => return Err(StartError::TokenKeys(error)),
        }
    }
    Err(StartError::TokenKeys(conflict.unwrap_or(
        crate::store::StoreError::Conflict {
            what: "the token keys kept changing".to_owned(),
        },
    )))
}

/// Logs a warning for each group of users who share a mapped attribute: a database from
/// before the uniqueness checks may hold them (they are kept; new ones are refused). A card
/// whose value is one of these signs in nobody until an administrator resolves it.
async fn report_user_conflicts(store: &dyn Store) {
    match store.user_conflicts().await {
        Ok(conflicts) => {
            for conflict in conflicts {
                tracing::warn!(
                    attribute = %conflict.attribute,
                    users = %conflict.user_ids.join(", "),
                    "users share one {}: a card with it signs in none of them; give each user their own \
                     (`pivtap admin users update ID --{} VALUE`, or `users delete ID`)",
                    conflict.attribute,
                    conflict.attribute.to_string().replace('_', "-")
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot look for users who share a mapped attribute"),
    }
}

/// Largest request body accepted (an assertion with a chain is a few KB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The largest request body `path` takes: [`admin::MAX_IMPORT_BYTES`] for
/// the admin user import, [`MAX_BODY_BYTES`] for everything else.
#[must_use]
pub fn max_body_bytes(path: &str) -> usize {
    match path.strip_prefix(wire::PATH_ADMIN) {
        Some(admin::PATH_IMPORT) => admin::MAX_IMPORT_BYTES,
        _ => MAX_BODY_BYTES,
    }
}

/// The whole HTTP API.
pub fn app(state: ServerState) -> Router {
    Router::new()
        .route(wire::PATH_CHALLENGES, post(handlers::create_challenge))
        .route(wire::PATH_ASSERTIONS, post(handlers::submit_assertion))
        .route(wire::PATH_SIGN_OUTS, post(handlers::sign_out))
        .route(wire::PATH_SESSIONS_REFRESH, post(sessions::refresh))
        .route(wire::PATH_SESSIONS_CURRENT, get(sessions::current))
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
        .route(
            wire::PATH_RENEWALS_CONFIRM,
            post(enrollment::confirm_renewal),
        )
        .route(wire::PATH_RENEWALS_RESUME, post(enrollment::resume_renewal))
        .route(wire::PATH_CRL, get(enrollment::crl))
        .route(wire::PATH_DEVICE_ENROLLMENTS, post(devices::enroll_device))
        .route(wire::PATH_HEALTH, get(handlers::readiness))
        .route(wire::PATH_READY, get(handlers::readiness))
        .route(wire::PATH_LIVE, get(handlers::liveness))
        .route(wire::PATH_METRICS, get(handlers::public_metrics))
        .route(
            wire::PATH_SESSIONS_AUTHORIZATIONS,
            post(crate::oidc::endpoints::authorize),
        )
        .route(oidc::PATH_DISCOVERY, get(crate::oidc::endpoints::discovery))
        .route(oidc::PATH_TOKEN, post(crate::oidc::token_endpoint::token))
        .route(
            oidc::PATH_USERINFO,
            get(crate::oidc::endpoints::userinfo).post(crate::oidc::endpoints::userinfo),
        )
        .route(oidc::PATH_REVOCATION, post(crate::oidc::endpoints::revoke))
        .route(
            oidc::PATH_INTROSPECTION,
            post(crate::oidc::endpoints::introspect),
        )
        .nest(wire::PATH_ADMIN, admin::router(state.clone()))
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .fallback(handlers::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(body::answer_whole_body))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The metrics listener's app: `GET /metrics` only (with the credential, when
/// one is configured), everything else `not_found`.
pub fn metrics_app(state: ServerState) -> Router {
    Router::new()
        .route(wire::PATH_METRICS, get(handlers::loopback_metrics))
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .fallback(handlers::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(body::answer_whole_body))
        .with_state(state)
}

/// The header that carries a request's id in every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A fresh request id: 16 random hex digits.
fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

/// Counts every request and its latency, and logs it with a fresh request id (also
/// answered as `X-Request-Id`), the client address and the route template (such as
/// `/v1/admin/users/{id}`: the template, never the path as sent).
async fn observe(State(state): State<ServerState>, request: Request, next: Next) -> Response {
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let route = template.as_deref().map_or("other", route_label);
    let method = request.method().clone();
    let client = ClientAddress::of(request.extensions())
        .0
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_canonical().to_string());
    let request_id = new_request_id();
    let started = Instant::now();
    let mut response = next.run(request).await;
    let latency = started.elapsed();
    let status = response.status().as_u16();
    state.metrics().observe_request(route, status, latency);
    if let Ok(value) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    tracing::info!(
        target: "pivtap::server",
        request_id,
        %method,
        route = template.as_deref().unwrap_or("other"),
        client,
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
        wire::PATH_SIGN_OUTS => wire::PATH_SIGN_OUTS,
        wire::PATH_SESSIONS_REFRESH => wire::PATH_SESSIONS_REFRESH,
        wire::PATH_SESSIONS_CURRENT => wire::PATH_SESSIONS_CURRENT,
        wire::PATH_JWKS => wire::PATH_JWKS,
        wire::PATH_PIN_POLICY => wire::PATH_PIN_POLICY,
        wire::PATH_ENROLLMENTS_INSPECT => wire::PATH_ENROLLMENTS_INSPECT,
        wire::PATH_ENROLLMENTS => wire::PATH_ENROLLMENTS,
        wire::PATH_RENEWALS => wire::PATH_RENEWALS,
        wire::PATH_RENEWALS_CONFIRM => wire::PATH_RENEWALS_CONFIRM,
        wire::PATH_RENEWALS_RESUME => wire::PATH_RENEWALS_RESUME,
        wire::PATH_CRL => wire::PATH_CRL,
        wire::PATH_DEVICE_ENROLLMENTS => wire::PATH_DEVICE_ENROLLMENTS,
        wire::PATH_HEALTH => wire::PATH_HEALTH,
        wire::PATH_READY => wire::PATH_READY,
        wire::PATH_LIVE => wire::PATH_LIVE,
        wire::PATH_METRICS => wire::PATH_METRICS,
        wire::PATH_SESSIONS_AUTHORIZATIONS => wire::PATH_SESSIONS_AUTHORIZATIONS,
        oidc::PATH_DISCOVERY => oidc::PATH_DISCOVERY,
        oidc::PATH_TOKEN => oidc::PATH_TOKEN,
        oidc::PATH_USERINFO => oidc::PATH_USERINFO,
        oidc::PATH_REVOCATION => oidc::PATH_REVOCATION,
        oidc::PATH_INTROSPECTION => oidc::PATH_INTROSPECTION,
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
    /// The back-channel logout client could not be set up (`[oidc] ca_file`).
    #[error(transparent)]
    LogoutClient(logout::LogoutClientError),
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
    serve_announcing(state, listener, shutdown, |_| {}).await
}

/// Serves the app until `shutdown` resolves, calling `on_listening` with the bound address
/// once the port is bound (and the metrics listener, if any, too): never when binding fails,
/// so "listening on" is only ever said of a port that is listening.
///
/// # Errors
/// [`ServeError`] when the listener cannot start.
pub async fn serve_announcing(
    state: ServerState,
    listener: Listener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<(), ServeError> {
    let handle = axum_server::Handle::new();
    let on_shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_shutdown.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let announcer = handle.clone();
    tokio::spawn(async move {
        if let Some(address) = announcer.listening().await {
            on_listening(address);
        }
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
    let limits = state.http().connections;
    let metrics = match state.http().metrics_listen {
        Some(address) => Some(start_metrics_listener(state.clone(), address, limits)?),
        None => None,
    };
    let logout_http = logout::http_client(state.http().logout_ca_file.as_deref())
        .map_err(ServeError::LogoutClient)?;
    let maintenance = tokio::spawn(maintain(state.clone()));
    let key_refresh = tokio::spawn(keep_token_keys_current(state.clone()));
    let logouts = tokio::spawn(logout::run(state.clone(), logout_http));
    let proxies = state.http().proxies.clone();
    let served = serve_router(app(state.clone()), listener, handle, &limits, proxies).await;
    maintenance.abort();
    key_refresh.abort();
    logouts.abort();
    if let Some((metrics_handle, metrics_task)) = metrics {
        metrics_handle.shutdown();
        let _ = metrics_task.await;
    }
    // The refusals counted since the last round are summarised before the server stops.
    summarise_unaudited(&state, time::OffsetDateTime::now_utc()).await;
    served
}

/// Binds the metrics listener (plain HTTP, loopback only) and serves
/// [`metrics_app`] on it until its handle is shut down.
fn start_metrics_listener(
    state: ServerState,
    address: SocketAddr,
    limits: crate::connections::ConnectionLimits,
) -> Result<
    (
        axum_server::Handle<SocketAddr>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    ServeError,
> {
    if !address.ip().is_loopback() {
        return Err(ServeError::PlainHttpNotLoopback(address));
    }
    let io_error = |source| ServeError::Io { address, source };
    let socket = std::net::TcpListener::bind(address).map_err(io_error)?;
    socket.set_nonblocking(true).map_err(io_error)?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp(socket)
        .map_err(io_error)?
        .acceptor(LimitedAcceptor::new("metrics", limits))
        .handle(handle.clone());
    let app = metrics_app(state).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(apply_http_timeouts(server, &limits).serve(app));
    Ok((handle, task))
}

/// How often a running server reads the store's token key set version: a rotation at
/// any node is signed with and published by every node within this time (plus one read).
pub const TOKEN_KEYS_REFRESH: Duration = Duration::from_millis(500);

/// Runs [`ServerState::sync_token_keys`] every [`TOKEN_KEYS_REFRESH`] while the server
/// runs; a failure is logged once until a round succeeds again (the keys in force stay).
pub async fn keep_token_keys_current(state: ServerState) {
    let mut ticks = tokio::time::interval(TOKEN_KEYS_REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        match state.sync_token_keys().await {
            Ok(_) => failing = false,
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(
                    error = %crate::check::error_chain(&error),
                    "cannot read the token signing keys from the store; the keys in force stay"
                );
            }
            Err(_) => {}
        }
    }
}

/// How often the store is tidied while the server runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// How long expired challenges are kept: a late replay of one within this
/// time is still answered `challenge_reused` or `challenge_expired`; after it,
/// `challenge_unknown` (refused all the same).
const EXPIRED_CHALLENGE_RETENTION: Duration = Duration::from_secs(3600);

/// How long an ended session is kept (shown by `admin sessions list --all`, answered by
/// `GET /v1/sessions/current` with its reason), with what ended with it: delivered or
/// given-up logouts, revoked access token ids past their expiry, expired codes.
const ENDED_SESSION_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Audit events deleted per write when old ones are pruned: each batch is one short write,
/// so sign-ins are not held up behind a long delete.
const AUDIT_PRUNE_BATCH: u32 = 5_000;
/// Most batches pruned per round; a backlog (a lowered retention) is worked off over rounds.
const AUDIT_PRUNE_BATCHES_PER_ROUND: u32 = 20;

/// How often the log repeats that the TLS certificate is near its end.
const TLS_WARNING_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Runs [`upkeep`] every [`MAINTENANCE_INTERVAL`] while the server runs, and logs
/// [`ServerState::tls_warning`] at start and then daily while it holds.
async fn maintain(state: ServerState) {
    let mut ticks = tokio::time::interval(MAINTENANCE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut warned: Option<Instant> = None;
    loop {
        if let Some(warning) = state.tls_warning(time::OffsetDateTime::now_utc())
            && warned.is_none_or(|at| at.elapsed() >= TLS_WARNING_INTERVAL)
        {
            tracing::warn!("{warning}");
            warned = Some(Instant::now());
        }
        ticks.tick().await;
        upkeep(&state, time::OffsetDateTime::now_utc()).await;
    }
}

/// One round of the server's upkeep at `now` (the server runs one a minute): one audit
/// event per source whose refusals went unaudited since the last round, the spent
/// flow-control records purged ([`Store::purge_flow_control`]), the sessions past their
/// max age ended (`max_age`) and those ended over [`ENDED_SESSION_RETENTION`] ago purged,
/// then [`tidy`].
pub async fn upkeep(state: &ServerState, now: time::OffsetDateTime) {
    summarise_unaudited(state, now).await;
    match state
        .store()
        .purge_flow_control(now, state.limiter().failures_forgotten_before(now))
        .await
    {
        Ok(purged) => tracing::debug!(purged, "spent flow-control records purged"),
        Err(error) => tracing::warn!(%error, "purging the flow-control records failed"),
    }
    end_sessions_past_max_age(state, now).await;
    match state
        .store()
        .purge_sessions(now - ENDED_SESSION_RETENTION)
        .await
    {
        Ok(purged) => tracing::debug!(purged, "long-ended sessions purged"),
        Err(error) => tracing::warn!(%error, "purging long-ended sessions failed"),
    }
    tidy(state.store(), now, state.settings().audit_retention).await;
}

/// Ends the sessions whose `expires_at` has passed (`max_age`), each audited as `session`.
async fn end_sessions_past_max_age(state: &ServerState, now: time::OffsetDateTime) {
    let reason = wire::SessionEndReason::MaxAge;
    match state
        .store()
        .end_sessions(&crate::store::SessionSelector::Expired, reason, now, None)
        .await
    {
        Ok(ended) => {
            for session in &ended {
                let event = sessions::session_event(
                    session,
                    crate::store::AuditOutcome::Ok,
                    now,
                    format!("session {} ended: {reason}", session.id),
                );
                if let Err(error) = state.store().audit(event).await {
                    tracing::warn!(%error, "auditing a session ended at its max age failed");
                }
            }
        }
        Err(error) => tracing::warn!(%error, "ending the sessions past their max age failed"),
    }
}

/// Writes one audit event per source whose refusals were answered `rate_limited`
/// instead of audited since the last call: "N requests refused, rate limited".
async fn summarise_unaudited(state: &ServerState, now: time::OffsetDateTime) {
    for (key, count) in state.limiter().take_unaudited() {
        let source = key.strip_prefix("source:").unwrap_or(&key);
        tracing::warn!(source, count, "requests refused, rate limited");
        let event = crate::store::NewAuditEvent {
            time: now,
            kind: AuditKind::RateLimit,
            outcome: wire::ErrorCode::RateLimited.into(),
            device: None,
            card_serial: None,
            user_id: None,
            detail: Some(format!(
                "{count} requests refused, rate limited (source {source})"
            )),
        };
        if let Err(error) = state.store().audit(event).await {
            tracing::warn!(%error, "recording the rate-limited refusals failed");
        }
    }
}

/// One round of upkeep at `now`: deletes the challenges that expired more
/// than [`EXPIRED_CHALLENGE_RETENTION`] ago and the audit events older than
/// `audit_retention` (in batches), and compacts the store (SQLite's
/// write-ahead log grows without bound under steady load otherwise). Failures
/// are logged; the next round tries again.
async fn tidy(store: &dyn Store, now: time::OffsetDateTime, audit_retention: Duration) {
    match store
        .purge_challenges(now - EXPIRED_CHALLENGE_RETENTION)
        .await
    {
        Ok(purged) => tracing::debug!(purged, "expired challenges purged"),
        Err(error) => tracing::warn!(%error, "purging expired challenges failed"),
    }
    let cutoff = now - audit_retention;
    for _ in 0..AUDIT_PRUNE_BATCHES_PER_ROUND {
        match store.purge_audit(cutoff, AUDIT_PRUNE_BATCH).await {
            Ok(pruned) => {
                tracing::debug!(pruned, "old audit events pruned");
                if pruned < u64::from(AUDIT_PRUNE_BATCH) {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "pruning old audit events failed");
                break;
            }
        }
    }
    if let Err(error) = store.compact().await {
        tracing::warn!(%error, "compacting the store failed");
    }
}

/// Serves `router` on `listener` with the time-outs and caps of `limits`
/// (see [`crate::connections`]), requiring a PROXY header from `proxies`;
/// handlers get the client's address as `ClientAddress`.
///
/// # Errors
/// [`ServeError`] when the listener cannot start.
pub async fn serve_router(
    router: Router,
    listener: Listener,
    handle: axum_server::Handle<SocketAddr>,
    limits: &crate::connections::ConnectionLimits,
    proxies: crate::connections::TrustedProxies,
) -> Result<(), ServeError> {
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    let acceptor = LimitedAcceptor::new("server", *limits).trusting(proxies);
    match listener {
        Listener::Tls {
            address,
            certificate,
            key,
        } => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(certificate, key)
                .await
                .map_err(ServeError::Tls)?;
            let on_error = acceptor.clone();
            let server = axum_server::bind_rustls(address, tls)
                .map(|tls| {
                    tls.handshake_timeout(limits.tls_handshake_timeout)
                        .acceptor(acceptor)
                })
                .accept_error_handler(move |_, error| on_error.note_accept_error(error))
                .handle(handle);
            apply_http_timeouts(server, limits)
                .serve(app)
                .await
                .map_err(|source| ServeError::Io { address, source })
        }
        Listener::PlainLoopback { address } => {
            if !address.ip().is_loopback() {
                return Err(ServeError::PlainHttpNotLoopback(address));
            }
            let server = axum_server::bind(address).acceptor(acceptor).handle(handle);
            apply_http_timeouts(server, limits)
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

    #[test]
    fn the_session_endpoints_have_metric_labels_of_their_own() {
        for path in [wire::PATH_SESSIONS_REFRESH, wire::PATH_SESSIONS_CURRENT] {
            assert_eq!(route_label(path), path);
        }
        assert_eq!(route_label("/v1/sessions/made-up"), "other");
    }

    fn challenge_event() -> crate::store::NewAuditEvent {
        crate::store::NewAuditEvent {
            time: time::OffsetDateTime::now_utc(),
            kind: AuditKind::Challenge,
            outcome: pivtap_protocol::audit::AuditOutcome::Ok,
            device: Some("kiosk-1".to_owned()),
            card_serial: None,
            user_id: None,
            detail: None,
        }
    }

    #[tokio::test]
    async fn reload_replaces_trust_and_mapping_all_or_nothing_and_tls_expiry_is_warned() {
        let dir = tempfile::tempdir().unwrap();
        let written =
            crate::init::init_server(dir.path(), &crate::init::InitOptions::default()).unwrap();
        let mut config = crate::config::ServerConfig::load(&written.config_path).unwrap();
        let (state, _) = from_config(&config).await.unwrap();
        let before = state.mapping();
        let verifier_before = state.verifier();

        config.mapping.rule = "san.upn -> upn".parse().unwrap();
        assert_ne!(config.mapping.rule, before);
        config.trust.crl_files = vec![dir.path().join("missing.crl")];
        assert!(state.reload(&config).is_err());
        assert_eq!(state.mapping(), before, "a failed reload changes nothing");
        assert!(Arc::ptr_eq(&state.verifier(), &verifier_before));

        config.trust.crl_files.clear();
        let report = state.reload(&config).unwrap();
        assert_eq!(report.trust_anchors, 1);
        assert_eq!(report.crls, 0);
        assert_eq!(state.mapping(), config.mapping.rule);
        assert!(!Arc::ptr_eq(&state.verifier(), &verifier_before));

        // init's certificate is valid a year: no warning now, one near its end.
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(state.tls_warning(now), None);
        let soon = state.tls_warning(now + time::Duration::days(350)).unwrap();
        assert!(soon.contains("expires in 14 days"), "{soon}");
        assert!(soon.contains("pivtap server renew-tls"), "{soon}");
        let late = state.tls_warning(now + time::Duration::days(400)).unwrap();
        assert!(late.contains("expired"), "{late}");

        // Readiness carries the warning.
        let ready = |state: ServerState| async move {
            use axum::response::IntoResponse as _;
            let response = handlers::readiness(axum::extract::State(state))
                .await
                .unwrap()
                .into_response();
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        };
        assert_eq!(
            ready(state.clone()).await,
            serde_json::json!({"status": "ok"})
        );
        state.set_tls_not_after(now + time::Duration::days(10));
        let answer = ready(state.clone()).await;
        assert_eq!(answer["status"], "ok");
        let warning = answer["warnings"][0].as_str().unwrap();
        assert!(warning.contains("expires in 9 days"), "{answer}");
    }

    #[tokio::test]
    async fn upkeep_prunes_audit_events_past_their_retention_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("pivtap.db"))
            .await
            .unwrap();
        let now = time::OffsetDateTime::now_utc();
        let retention = Duration::from_secs(30 * 86_400);
        let old = u64::from(AUDIT_PRUNE_BATCH) + 10;
        for age_days in std::iter::repeat_n(31, old as usize).chain([29, 1]) {
            let mut event = challenge_event();
            event.time = now - time::Duration::days(age_days);
            store.audit(event).await.unwrap();
        }
        tidy(&store, now, retention).await;
        let left = store
            .query_audit(&crate::store::AuditQuery {
                limit: 1000,
                ..crate::store::AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 2, "only the events within 30 days are kept");
        assert!(left.iter().all(|event| now - event.time < retention));
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
            .add_challenge(
                &crate::store::conformance::nonce("old"),
                "kiosk-1",
                now - two_hours,
                challenge_event(),
            )
            .await
            .unwrap();
        store
            .add_challenge(
                &crate::store::conformance::nonce("recent"),
                "kiosk-1",
                now - ten_minutes,
                challenge_event(),
            )
            .await
            .unwrap();
        tidy(&store, now, Duration::from_secs(400 * 86_400)).await;
        assert_eq!(
            store
                .use_challenge(
                    crate::store::conformance::nonce("old").as_str(),
                    "kiosk-1",
                    now
                )
                .await
                .unwrap(),
            ChallengeUse::Unknown
        );
        assert_eq!(
            store
                .use_challenge(
                    crate::store::conformance::nonce("recent").as_str(),
                    "kiosk-1",
                    now
                )
                .await
                .unwrap(),
            ChallengeUse::Expired,
            "a challenge that expired within the hour is still known"
        );
    }
}
