//! `server.toml`: the authentication server's configuration, its defaults, its checks, and reading the certificate and CRL files it names.
//!
//! Relative paths are relative to the directory holding `server.toml`;
//! [`ServerConfig::load`] resolves them. Unknown keys are refused. Every
//! option, with its default:
//!
//! ```toml
//! listen = "127.0.0.1:8443"            # socket address to listen on
//! origin = "https://127.0.0.1:8443"    # required: the server's origin, scheme://host[:port];
//!                                      # the `aud` assertions must name and the tokens' `iss`
//! plain_http = false                   # serve HTTP instead of HTTPS; only on a loopback `listen`,
//!                                      # and then without `[tls]` and with an http:// origin
//! admin_token_file = "admin.token"     # the admin API's bearer credential
//! database = "pivtap.db"               # the older spelling of [store] url = "sqlite:pivtap.db";
//!                                      # a file with both `database` and `[store]` is refused
//!
//! [store]                              # optional: absent = the SQLite file of `database`
//! url = "sqlite:pivtap.db"             # sqlite:PATH (created on first start), or
//!                                      # postgres://USER@HOST:5432/DB?sslmode=verify-full
//!                                      # [&sslrootcert=ca.crt] (store::url has every form);
//!                                      # never a password in it
//! password_file = "store.password"     # optional, PostgreSQL only: its first line is the
//!                                      # password (mode 0600); without it the variable
//!                                      # PIVTAP_STORE_PASSWORD is used (the file wins)
//!
//! [tls]                                # required unless plain_http = true
//! certificate = "tls.crt"              # PEM certificate chain, the server's first
//! key = "tls.key"                      # PEM private key
//!
//! [tokens]
//! key_file = "tokens.key"              # the session-token signing keys
//! lifetime_seconds = 300               # access tokens' lifetime (the kiosk refreshes them while the
//!                                      # worker is present; apps refresh theirs), 1 s to 7 days
//! audience = "pivtap"                  # the tokens' `aud`
//!
//! [sessions]
//! max_age_seconds = "12h"              # a session's longest life after sign-in, refreshed
//!                                      # or not: 5 min to 30 days
//!
//! [trust]
//! ca_certificates = ["trust/ca.pem"]   # required, at least one: CAs card certificates chain to
//!                                      # (PEM, possibly several per file, or DER)
//! crl_files = []                       # CRLs checked for revoked card certificates (PEM or DER)
//!
//! [mapping]
//! rule = "san.email -> mail"           # certificate attribute -> user attribute
//!
//! [challenges]
//! lifetime_seconds = 60                # how long a challenge may be answered, 1 s to 10 min
//! max_clock_skew_seconds = 60          # tolerated |iat - now| of an assertion, up to 10 min
//! allowed_slots = ["9a"]               # key slots an assertion's `slot` may name: of 9a, 9c,
//!                                      # 9d, 9e. A token's amr is ["hwk", "sc", "pin"] for 9a,
//!                                      # 9c and 9d (the card asks for the PIN), ["hwk", "sc"] for 9e (card
//!                                      # authentication: no PIN); assertions naming another
//!                                      # slot are refused with `slot_not_allowed`
//!
//! [rate_limit]
//! failures_before_delay = 5            # failed assertions per card or device before delays start
//! base_delay_seconds = 2               # the first delay; it doubles with each further failure
//! max_delay_seconds = 300              # the delay stops growing here (>= base, up to 1 day)
//! window_seconds = 900                 # failures older than this are forgotten (up to 1 day)
//!                                      # Per source address (the TCP peer; X-Forwarded-For is
//!                                      # not trusted), token buckets, each 1 to 1 000 000:
//! challenge_burst = 300                # challenges one address may ask for at once
//! challenges_per_minute = 600          # and per minute after that (~300 kiosks behind one NAT)
//! refusal_burst = 120                  # refused requests (audited 4xx) one address may cause at once
//! refusals_per_minute = 60             # and per minute; past it: 429 rate_limited, not audited
//!                                      # one by one but in one summary a minute per address
//!
//! [audit]
//! retention_days = 400                 # audit events older than this are deleted (1 to 36 500)
//!
//! [pin_policy]                         # rules for new PINs, served at GET /v1/pin-policy
//! min_length = 6                       # 6 <= min_length <= max_length <= 8 (what PIV cards hold)
//! max_length = 8
//! digits_only = true                   # only 0-9
//! forbid_sequences = true              # refuse 123456, 987654, ...
//! forbid_repeats = true                # refuse 111111, ...
//!
//! [issuance]                           # optional: absent = enrollment and renewal disabled
//! ca_certificate = "ca.crt"            # required: the issuing CA's certificate (PEM or DER)
//! ca_key = "ca.key"                    # required: its private key (PKCS#8 PEM; keep it 0600)
//! key_algorithms = ["p256", "rsa2048"] # keys cards may have: p256, p384, rsa2048;
//!                                      # the first is the one cards generate at enrollment
//! validity_days = 365                  # lifetime of issued certificates, 1 to 3650
//! subject_cn = "display_name"          # subject CN: "display_name" or "uid"
//! include_upn = true                   # SAN otherName UPN = the user's upn, when set
//! smartcard_logon = true               # EKU Microsoft smart card logon besides clientAuth
//! code_validity_seconds = 900          # default life of an enrollment code (admin enroll)
//! max_code_validity_seconds = 604800   # longest an admin may ask for (7 days; up to 30 days)
//!
//! [connections]                        # against slow and many clients (slowloris)
//! tls_handshake_timeout_seconds = 10   # a TLS handshake not done by then is dropped (1 to 3600)
//! header_read_timeout_seconds = 10     # a request's headers must be in by then (1 to 3600); also
//!                                      # ends an idle HTTP/1.1 keep-alive connection after this long
//!                                      # (pivtap clients let go after 8 s: keep it above that)
//! idle_timeout_seconds = 60            # nothing read or written for this long: closed (1 to 3600)
//! max_connections = 512                # open at once in all; keep it under the open-file limit
//! max_connections_per_source = 64      # open at once from one IP address (<= max_connections)
//! proxy_protocol_from = []             # load balancers (addresses or networks, "10.0.0.5",
//!                                      # "10.0.1.0/24") whose connections must begin with a PROXY
//!                                      # protocol header (v2 or v1) naming the client; from any
//!                                      # other peer a PROXY header is refused (default: none)
//!
//! [metrics]                            # GET /metrics (Prometheus); by default served nowhere
//! listen = "127.0.0.1:9464"            # optional: a separate plain-HTTP listener serving only
//!                                      # /metrics; loopback addresses only
//! token_file = "metrics.token"         # optional: a bearer credential; then /metrics is served on
//!                                      # the public listener to requests presenting it (and the
//!                                      # loopback listener asks for it too)
//! [devices]                            # device identity (needs [issuance] to enroll devices)
//! require_registration = true          # challenges only for registered devices that sign the
//!                                      # request with their own key; false = open mode for
//!                                      # trials (any device id; loudly logged)
//! certificate_validity_days = 180      # lifetime of device certificates, 1 to 825
//! code_validity_seconds = 86400        # life of a device enrollment code, 60 s to 30 days
//!
//! [oidc]                               # the OpenID Connect provider
//! authorization_endpoint = "http://127.0.0.1:7420/oidc/authorize"
//!                                      # what discovery names: by default each device's kiosk
//!                                      # (absolute http or https URL)
//! code_lifetime_seconds = 60           # life of an authorization code, 10 s to 10 min
//! ca_file = "apps-ca.pem"              # optional: CA certificates (PEM) the server trusts for
//!                                      # back-channel logout deliveries to apps
//! ```
//!
//! The issuing CA is not trusted by itself: list its certificate in
//! `[trust] ca_certificates` too (`pivtap server init` does both).

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer,
    pem::{self, PemObject},
};
use serde::{Deserialize, Serialize};

use crate::mapping::MappingRule;
use crate::store::url::StoreUrl;
use pivtap_protocol::pin_policy::{InvalidPinPolicy, PinPolicy};
use pivtap_protocol::wire::KeyAlgorithm;

/// Where the server listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);

const MAX_TOKEN_LIFETIME_SECONDS: u64 = 7 * 24 * 3600;
const MAX_CHALLENGE_SECONDS: u64 = 600;
const MIN_SESSION_AGE_SECONDS: u64 = 5 * 60;
const MAX_SESSION_AGE_SECONDS: u64 = 30 * 24 * 3600;
const MAX_RATE_LIMIT_SECONDS: u64 = 24 * 3600;
const MAX_BUDGET: u64 = 1_000_000;
const MAX_RETENTION_DAYS: u64 = 36_500;
const MAX_VALIDITY_DAYS: u64 = 3650;
const MIN_CODE_SECONDS: u64 = 60;
const MAX_CODE_SECONDS: u64 = 30 * 24 * 3600;
const MAX_CONNECTION_SECONDS: u64 = 3600;
const MAX_CONNECTIONS: u64 = 1_000_000;
/// Device certificates are short-ish lived (the CA/Browser Forum's old ceiling).
const MAX_DEVICE_VALIDITY_DAYS: u64 = 825;
const MIN_AUTHORIZATION_CODE_SECONDS: u64 = 10;
const MAX_AUTHORIZATION_CODE_SECONDS: u64 = 600;

/// The server's configuration, as read from `server.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The socket address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The server's origin (`https://host:port`): the audience assertions
    /// must name, and the `iss` of the tokens.
    pub origin: String,
    /// Serve plain HTTP (loopback only, for tests and local demos).
    #[serde(default, skip_serializing_if = "is_false")]
    pub plain_http: bool,
    /// The file holding the admin API's bearer credential.
    #[serde(default = "default_admin_token_file")]
    pub admin_token_file: PathBuf,
    /// The SQLite database file: the older spelling of `[store] url = "sqlite:PATH"`.
    /// Once loaded with a SQLite `[store]`, its file; with a PostgreSQL one, unused
    /// (see [`ServerConfig::store_url`]).
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// The TLS certificate and key; required unless `plain_http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Where the store lives; absent: the SQLite file of `database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
    /// Session tokens.
    #[serde(default)]
    pub tokens: TokenConfig,
    /// Sessions.
    #[serde(default, skip_serializing_if = "SessionsConfig::is_default")]
    pub sessions: SessionsConfig,
    /// Trust anchors and revocation lists for card certificates.
    pub trust: TrustConfig,
    /// How a card certificate finds its user.
    #[serde(default)]
    pub mapping: MappingConfig,
    /// Challenges.
    #[serde(default)]
    pub challenges: ChallengeConfig,
    /// Flow control after failed assertions, and per-source budgets.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// The audit log's upkeep.
    #[serde(default, skip_serializing_if = "is_default_audit")]
    pub audit: AuditConfig,
    /// Rules for new PINs, announced to devices.
    #[serde(default, skip_serializing_if = "is_default_pin_policy")]
    pub pin_policy: PinPolicy,
    /// Certificate issuance (enrollment and renewal); absent = disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuance: Option<IssuanceConfig>,
    /// Time-outs and caps of client connections.
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// Where `GET /metrics` is served, and to whom.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Device identity: who may ask for challenges.
    #[serde(default, skip_serializing_if = "DevicesConfig::is_default")]
    pub devices: DevicesConfig,
    /// The OpenID Connect provider.
    #[serde(default, skip_serializing_if = "OidcConfig::is_default")]
    pub oidc: OidcConfig,
}

/// `[oidc]`: the OpenID Connect provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The `authorization_endpoint` discovery names (an absolute `http` or `https` URL):
    /// by default each device's kiosk, [`DEFAULT_AUTHORIZATION_ENDPOINT`](pivtap_protocol::oidc::DEFAULT_AUTHORIZATION_ENDPOINT).
    pub authorization_endpoint: String,
    /// Life of an authorization code, seconds.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub code_lifetime_seconds: u64,
    /// CA certificates (PEM) trusted for back-channel logout deliveries, besides the
    /// system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            authorization_endpoint: pivtap_protocol::oidc::DEFAULT_AUTHORIZATION_ENDPOINT
                .to_owned(),
            code_lifetime_seconds: 60,
            ca_file: None,
        }
    }
}

impl OidcConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// [`OidcConfig::code_lifetime_seconds`] as a duration.
    #[must_use]
    pub fn code_lifetime(&self) -> Duration {
        Duration::from_secs(self.code_lifetime_seconds)
    }
}

/// Whether `endpoint` is an absolute `http` or `https` URL with a host and no fragment.
fn is_absolute_http_url(endpoint: &str) -> bool {
    url::Url::parse(endpoint).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.fragment().is_none()
            && url.username().is_empty()
            && url.password().is_none()
    })
}

/// `[store]`: where the store lives and how to log in to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:PATH` or `postgres://user@host:port/database?sslmode=...` (no password).
    pub url: StoreUrl,
    /// The file holding the PostgreSQL password (first line, mode 0600); without it
    /// the environment variable [`PASSWORD_ENV`](crate::store::url::PASSWORD_ENV).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// `[devices]`: device identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Challenges only for registered, enabled devices that sign the request with
    /// their own key (true, the default); false is the open mode for trials.
    pub require_registration: bool,
    /// Lifetime of device certificates, days.
    pub certificate_validity_days: u64,
    /// Life of a device enrollment code, seconds.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub code_validity_seconds: u64,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            require_registration: true,
            certificate_validity_days: 180,
            code_validity_seconds: 24 * 3600,
        }
    }
}

impl DevicesConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// [`DevicesConfig::code_validity_seconds`] as a duration.
    #[must_use]
    pub fn code_validity(&self) -> Duration {
        Duration::from_secs(self.code_validity_seconds)
    }
}

fn is_default_audit(audit: &AuditConfig) -> bool {
    *audit == AuditConfig::default()
}

fn is_default_pin_policy(policy: &PinPolicy) -> bool {
    *policy == PinPolicy::default()
}

/// What the subject CN of an issued certificate is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectCn {
    /// The user's display name.
    #[default]
    DisplayName,
    /// The user id.
    Uid,
}

/// `[issuance]`: the issuing CA and what it puts in card certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceConfig {
    /// The issuing CA's certificate (PEM or DER).
    pub ca_certificate: PathBuf,
    /// The issuing CA's private key (PKCS#8 PEM).
    pub ca_key: PathBuf,
    /// Keys cards may have; the first is what cards generate at enrollment.
    #[serde(default = "default_key_algorithms")]
    pub key_algorithms: Vec<KeyAlgorithm>,
    /// Lifetime of issued certificates, days.
    #[serde(default = "default_validity_days")]
    pub validity_days: u64,
    /// What the subject CN is.
    #[serde(default)]
    pub subject_cn: SubjectCn,
    /// Put the user's UPN in the SAN (otherName, Microsoft UPN) when it is set.
    #[serde(default = "yes")]
    pub include_upn: bool,
    /// Add the Microsoft smart card logon EKU.
    #[serde(default = "yes")]
    pub smartcard_logon: bool,
    /// Default life of an enrollment code, seconds.
    #[serde(default = "default_code_validity")]
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub code_validity_seconds: u64,
    /// Longest life an admin may give an enrollment code, seconds.
    #[serde(default = "default_max_code_validity")]
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub max_code_validity_seconds: u64,
}

impl IssuanceConfig {
    /// An `[issuance]` table with every default, for the CA files given.
    #[must_use]
    pub fn new(ca_certificate: PathBuf, ca_key: PathBuf) -> Self {
        IssuanceConfig {
            ca_certificate,
            ca_key,
            key_algorithms: default_key_algorithms(),
            validity_days: default_validity_days(),
            subject_cn: SubjectCn::default(),
            include_upn: true,
            smartcard_logon: true,
            code_validity_seconds: default_code_validity(),
            max_code_validity_seconds: default_max_code_validity(),
        }
    }

    /// [`IssuanceConfig::code_validity_seconds`] as a duration.
    #[must_use]
    pub fn code_validity(&self) -> Duration {
        Duration::from_secs(self.code_validity_seconds)
    }

    /// [`IssuanceConfig::max_code_validity_seconds`] as a duration.
    #[must_use]
    pub fn max_code_validity(&self) -> Duration {
        Duration::from_secs(self.max_code_validity_seconds)
    }
}

fn default_key_algorithms() -> Vec<KeyAlgorithm> {
    vec![KeyAlgorithm::P256, KeyAlgorithm::Rsa2048]
}

fn default_validity_days() -> u64 {
    365
}

fn yes() -> bool {
    true
}

fn default_code_validity() -> u64 {
    900
}

fn default_max_code_validity() -> u64 {
    7 * 24 * 3600
}

/// `[tls]`: the server's certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, the server's certificate first.
    pub certificate: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// `[tokens]`: session tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// The signing keys ([`crate::token::TokenKeys`]).
    pub key_file: PathBuf,
    /// How long a token is valid.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub lifetime_seconds: u64,
    /// The tokens' `aud`.
    pub audience: String,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from("tokens.key"),
            lifetime_seconds: 300,
            audience: "pivtap".to_owned(),
        }
    }
}

impl TokenConfig {
    /// [`TokenConfig::lifetime_seconds`] as a duration.
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime_seconds)
    }
}

/// `[sessions]`: what a sign-in's session may last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// The longest a session lasts after its sign-in, refreshed or not (5 min to 30 days).
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub max_age_seconds: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            max_age_seconds: 12 * 3600,
        }
    }
}

impl SessionsConfig {
    /// [`SessionsConfig::max_age_seconds`] as a duration.
    #[must_use]
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_seconds)
    }

    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `[trust]`: what card certificates must chain to and must not be revoked by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// CA certificate files (PEM with one or more certificates, or DER).
    pub ca_certificates: Vec<PathBuf>,
    /// CRL files (PEM with one or more CRLs, or DER).
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
}

/// `[mapping]`: how a card certificate finds its user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingConfig {
    /// `certificate attribute -> user attribute`, e.g. `san.email -> mail`.
    pub rule: MappingRule,
}

/// `[challenges]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengeConfig {
    /// How long a challenge may be answered.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub lifetime_seconds: u64,
    /// How far an assertion's `iat` may be from the server's clock.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub max_clock_skew_seconds: u64,
    /// The key slots an assertion may name (of [`PIV_SIGNING_SLOTS`](pivtap_protocol::wire::PIV_SIGNING_SLOTS)):
    /// only `9a` (PIV authentication, PIN required) by default.
    #[serde(skip_serializing_if = "is_default_slots")]
    pub allowed_slots: Vec<String>,
}

impl Default for ChallengeConfig {
    fn default() -> Self {
        Self {
            lifetime_seconds: 60,
            max_clock_skew_seconds: 60,
            allowed_slots: default_slots(),
        }
    }
}

fn default_slots() -> Vec<String> {
    pivtap_protocol::wire::DEFAULT_SIGN_IN_SLOTS
        .map(str::to_owned)
        .to_vec()
}

fn is_default_slots(slots: &[String]) -> bool {
    slots == default_slots().as_slice()
}

impl ChallengeConfig {
    /// [`ChallengeConfig::lifetime_seconds`] as a duration.
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime_seconds)
    }

    /// [`ChallengeConfig::max_clock_skew_seconds`] as a duration.
    #[must_use]
    pub fn max_clock_skew(&self) -> Duration {
        Duration::from_secs(self.max_clock_skew_seconds)
    }
}

/// `[rate_limit]`: growing delays after failed assertions from one card or device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Failures tolerated before delays start.
    pub failures_before_delay: u32,
    /// The first delay; each further failure doubles it.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub base_delay_seconds: u64,
    /// The longest delay.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub max_delay_seconds: u64,
    /// Failures older than this no longer count.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub window_seconds: u64,
    /// Challenges one source address may ask for at once.
    pub challenge_burst: u64,
    /// Challenges one source address may ask for per minute, after the burst.
    pub challenges_per_minute: u64,
    /// Refused requests (audited 4xx answers) one source address may cause at once.
    pub refusal_burst: u64,
    /// Refused requests one source address may cause per minute, after the burst.
    pub refusals_per_minute: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        use crate::server::rate_limit::Budget;
        Self {
            failures_before_delay: 5,
            base_delay_seconds: 2,
            max_delay_seconds: 300,
            window_seconds: 900,
            challenge_burst: Budget::DEFAULT_CHALLENGES.burst.into(),
            challenges_per_minute: Budget::DEFAULT_CHALLENGES.per_minute.into(),
            refusal_burst: Budget::DEFAULT_REFUSALS.burst.into(),
            refusals_per_minute: Budget::DEFAULT_REFUSALS.per_minute.into(),
        }
    }
}

impl RateLimitConfig {
    /// [`RateLimitConfig::base_delay_seconds`] as a duration.
    #[must_use]
    pub fn base_delay(&self) -> Duration {
        Duration::from_secs(self.base_delay_seconds)
    }

    /// [`RateLimitConfig::max_delay_seconds`] as a duration.
    #[must_use]
    pub fn max_delay(&self) -> Duration {
        Duration::from_secs(self.max_delay_seconds)
    }

    /// [`RateLimitConfig::window_seconds`] as a duration.
    #[must_use]
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_seconds)
    }

    /// The flow-control policy these settings make (budgets are validated to fit a `u32`).
    #[must_use]
    pub fn policy(&self) -> crate::server::rate_limit::RateLimitPolicy {
        use crate::server::rate_limit::{Budget, RateLimitPolicy};
        let count = |value: u64| u32::try_from(value).unwrap_or(u32::MAX);
        RateLimitPolicy {
            failures_before_delay: self.failures_before_delay,
            base_delay: self.base_delay(),
            max_delay: self.max_delay(),
            window: self.window(),
            challenges: Budget {
                burst: count(self.challenge_burst),
                per_minute: count(self.challenges_per_minute),
            },
            refusals: Budget {
                burst: count(self.refusal_burst),
                per_minute: count(self.refusals_per_minute),
            },
        }
    }
}

/// `[audit]`: how long audit events are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events older than this many days are deleted by the server's upkeep.
    pub retention_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 400,
        }
    }
}

impl AuditConfig {
    /// [`AuditConfig::retention_days`] as a duration.
    #[must_use]
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days.saturating_mul(24 * 3600))
    }
}

/// `[connections]`: time-outs and caps that keep slow or many clients from
/// holding the server's connections (see [`crate::connections`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// The longest a TLS handshake may take.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub tls_handshake_timeout_seconds: u64,
    /// The longest a client may take to send a request's headers.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub header_read_timeout_seconds: u64,
    /// A connection with nothing read or written for this long is closed.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub idle_timeout_seconds: u64,
    /// Connections open at once, in all.
    pub max_connections: u64,
    /// Connections open at once from one IP address.
    pub max_connections_per_source: u64,
    /// The load balancers whose connections begin with a PROXY protocol header.
    pub proxy_protocol_from: Vec<crate::connections::ProxyNetwork>,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        let limits = crate::connections::ConnectionLimits::default();
        Self {
            tls_handshake_timeout_seconds: limits.tls_handshake_timeout.as_secs(),
            header_read_timeout_seconds: limits.header_read_timeout.as_secs(),
            idle_timeout_seconds: limits.idle_timeout.as_secs(),
            max_connections: limits.max_connections as u64,
            max_connections_per_source: limits.max_connections_per_source as u64,
            proxy_protocol_from: Vec::new(),
        }
    }
}

impl ConnectionsConfig {
    /// The limits the listener applies.
    #[must_use]
    pub fn limits(&self) -> crate::connections::ConnectionLimits {
        crate::connections::ConnectionLimits {
            tls_handshake_timeout: Duration::from_secs(self.tls_handshake_timeout_seconds),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_connections_per_source: usize::try_from(self.max_connections_per_source)
                .unwrap_or(usize::MAX),
        }
    }

    /// The proxies whose connections must begin with a PROXY header.
    #[must_use]
    pub fn trusted_proxies(&self) -> crate::connections::TrustedProxies {
        crate::connections::TrustedProxies::new(&self.proxy_protocol_from)
    }
}

/// `[metrics]`: `GET /metrics` is not served on the public listener unless a
/// credential guards it; a separate plain-HTTP loopback listener may serve it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A loopback address where a separate plain-HTTP listener serves
    /// `GET /metrics` only (e.g. `127.0.0.1:9464`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// A file holding a bearer credential; when set, `GET /metrics` is served
    /// on the public listener too, to requests presenting it, and the loopback
    /// listener asks for it as well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
}

fn default_admin_token_file() -> PathBuf {
    PathBuf::from("admin.token")
}

fn default_database() -> PathBuf {
    PathBuf::from("pivtap.db")
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Why a configuration, or a file it names, cannot be used. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// `server.toml` is not TOML of the expected shape (the message names the key and line).
    #[error("{}: {source}", path.display())]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// What the TOML reader said.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of bounds or contradicts another.
    #[error("{}: `{field}` {problem}", path.display())]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// The key, e.g. `tokens.lifetime_seconds`.
        field: &'static str,
        /// What is wrong with it.
        problem: ConfigProblem,
    },
    /// A certificate or CRL file does not hold what it should.
    #[error("{} {problem}", path.display())]
    PkiFile {
        /// The certificate or CRL file.
        path: PathBuf,
        /// What is wrong with it.
        problem: PkiFileProblem,
    },
    /// `[store] url` is not a usable store URL (the message never repeats the URL: it
    /// may hold a password).
    #[error("{}: `store.url`: {source}", path.display())]
    StoreUrl {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::store::url::StoreUrlError,
    },
    /// The configuration cannot be written as TOML (a path that is not UTF-8).
    #[error("cannot write the configuration as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// What is wrong with a configuration value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// Neither `[tls]` nor `plain_http = true`.
    #[error(
        "is missing: give `[tls]` with `certificate` and `key`, or `plain_http = true` on a loopback address"
    )]
    TlsMissing,
    /// Both `[tls]` and `plain_http = true`.
    #[error("cannot be combined with `[tls]`")]
    PlainHttpWithTls,
    /// `plain_http = true` with a `listen` address that is not loopback.
    #[error("is allowed only on a loopback `listen` address, and {0} is not one")]
    PlainHttpNotLoopback(SocketAddr),
    /// The origin's scheme does not match how the server serves.
    #[error("must start with {expected}:// (as the server serves)")]
    OriginScheme {
        /// `https` or `http`.
        expected: &'static str,
    },
    /// The origin has a path, query, fragment, user info or no host.
    #[error("must be scheme://host[:port], without path, query or fragment")]
    OriginNotBare,
    /// An empty string or list.
    #[error("must not be empty")]
    Empty,
    /// A number below its minimum.
    #[error("must be at least {min}")]
    TooSmall {
        /// The smallest value allowed.
        min: u64,
    },
    /// A number above its maximum.
    #[error("must be at most {max}")]
    TooLarge {
        /// The largest value allowed.
        max: u64,
    },
    /// The PIN policy's limits do not fit a PIV card.
    #[error("is not a usable PIN policy: {0}")]
    PinPolicy(InvalidPinPolicy),
    /// The same key algorithm listed twice.
    #[error("lists an algorithm twice")]
    Duplicate,
    /// A key slot that is not a PIV signing slot, or one listed twice.
    #[error(
        "must list each of 9a, 9c, 9d or 9e (lower case) at most once; entry {index} is not allowed"
    )]
    Slot {
        /// Position in the list, from 0.
        index: usize,
    },
    /// An address that must be a loopback address is not one.
    #[error("must be a loopback address, and {0} is not one")]
    NotLoopback(SocketAddr),
    /// The address is the server's own `listen` address.
    #[error("must differ from `listen`")]
    SameAsListen,
    /// Both the older `database` and `[store]`.
    #[error(
        "cannot be combined with `[store]`: keep `[store] url` (for SQLite, url = \"sqlite:PATH\")"
    )]
    DatabaseWithStore,
    /// `password_file` for a SQLite store.
    #[error("is for a PostgreSQL store: a SQLite store has no password")]
    PasswordForSqlite,
    /// Not an absolute `http://` or `https://` URL (with a host, without a fragment or
    /// user info).
    #[error("must be an absolute http:// or https:// URL with a host and no fragment")]
    NotHttpUrl,
}

/// What is wrong with a certificate or CRL file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PkiFileProblem {
    /// A PEM section is broken.
    #[error("is not valid PEM: {0}")]
    Pem(String),
    /// No `CERTIFICATE` section, or empty.
    #[error("holds no certificate")]
    NoCertificate,
    /// No `X509 CRL` section, or empty.
    #[error("holds no CRL")]
    NoCrl,
    /// A certificate does not parse as X.509.
    #[error("holds a certificate that is not valid X.509 DER")]
    NotX509,
    /// A certificate lacks `basicConstraints cA=true`.
    #[error("holds a certificate that is not a CA certificate (basicConstraints cA is not set)")]
    NotCa,
    /// A CA certificate's keyUsage lacks keyCertSign (RFC 5280 4.2.1.3).
    #[error(
        "holds a CA certificate whose key usage does not allow signing certificates (keyCertSign)"
    )]
    NoKeyCertSign,
    /// A CRL does not parse.
    #[error("holds a CRL that is not valid X.509 DER")]
    NotCrl,
}

impl ServerConfig {
    /// Reads, checks and resolves `path` (see the module documentation).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text` as the contents of the file `path`, resolving
    /// relative paths against `path`'s directory. Nothing is read from disk.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let syntax = |source| ConfigError::Syntax {
            path: path.to_owned(),
            source: Box::new(source),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(syntax)?;
        if table.contains_key("database") && table.contains_key("store") {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field: "database",
                problem: ConfigProblem::DatabaseWithStore,
            });
        }
        // The store URL is parsed here, not by the TOML reader, whose errors quote the
        // line: a URL holding a password must be refused without repeating it.
        if let Some(toml::Value::Table(store)) = table.get_mut("store")
            && let Some(toml::Value::String(url)) = store.get_mut("url")
        {
            let parsed = StoreUrl::parse(url).map_err(|source| ConfigError::StoreUrl {
                path: path.to_owned(),
                source,
            })?;
            *url = parsed.to_string();
        }
        let mut config: Self = table.try_into().map_err(syntax)?;
        config.validate(path)?;
        config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(config)
    }

    /// Checks the values and how they fit together; errors name `path`.
    /// Call it again after changing a value, e.g. `listen` from the command line.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, problem| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                field,
                problem,
            })
        };
        match (&self.tls, self.plain_http) {
            (None, false) => return invalid("tls", ConfigProblem::TlsMissing),
            (Some(_), true) => return invalid("plain_http", ConfigProblem::PlainHttpWithTls),
            (None, true) if !self.listen.ip().is_loopback() => {
                return invalid(
                    "plain_http",
                    ConfigProblem::PlainHttpNotLoopback(self.listen),
                );
            }
            _ => {}
        }
        let scheme = if self.plain_http { "http" } else { "https" };
        if let Err(problem) = check_origin(&self.origin, scheme) {
            return invalid("origin", problem);
        }
        if self.tokens.audience.is_empty() {
            return invalid("tokens.audience", ConfigProblem::Empty);
        }
        if self.trust.ca_certificates.is_empty() {
            return invalid("trust.ca_certificates", ConfigProblem::Empty);
        }
        let limits = [
            (
                "tokens.lifetime_seconds",
                self.tokens.lifetime_seconds,
                1,
                MAX_TOKEN_LIFETIME_SECONDS,
            ),
            (
                "sessions.max_age_seconds",
                self.sessions.max_age_seconds,
                MIN_SESSION_AGE_SECONDS,
                MAX_SESSION_AGE_SECONDS,
            ),
            (
                "challenges.lifetime_seconds",
                self.challenges.lifetime_seconds,
                1,
                MAX_CHALLENGE_SECONDS,
            ),
            (
                "challenges.max_clock_skew_seconds",
                self.challenges.max_clock_skew_seconds,
                0,
                MAX_CHALLENGE_SECONDS,
            ),
            (
                "rate_limit.base_delay_seconds",
                self.rate_limit.base_delay_seconds,
                1,
                MAX_RATE_LIMIT_SECONDS,
            ),
            (
                "rate_limit.max_delay_seconds",
                self.rate_limit.max_delay_seconds,
                self.rate_limit.base_delay_seconds,
                MAX_RATE_LIMIT_SECONDS,
            ),
            (
                "rate_limit.window_seconds",
                self.rate_limit.window_seconds,
                1,
                MAX_RATE_LIMIT_SECONDS,
            ),
            (
                "devices.certificate_validity_days",
                self.devices.certificate_validity_days,
                1,
                MAX_DEVICE_VALIDITY_DAYS,
            ),
            (
                "devices.code_validity_seconds",
                self.devices.code_validity_seconds,
                MIN_CODE_SECONDS,
                MAX_CODE_SECONDS,
            ),
            (
                "rate_limit.challenge_burst",
                self.rate_limit.challenge_burst,
                1,
                MAX_BUDGET,
            ),
            (
                "rate_limit.challenges_per_minute",
                self.rate_limit.challenges_per_minute,
                1,
                MAX_BUDGET,
            ),
            (
                "rate_limit.refusal_burst",
                self.rate_limit.refusal_burst,
                1,
                MAX_BUDGET,
            ),
            (
                "rate_limit.refusals_per_minute",
                self.rate_limit.refusals_per_minute,
                1,
                MAX_BUDGET,
            ),
            (
                "audit.retention_days",
                self.audit.retention_days,
                1,
                MAX_RETENTION_DAYS,
            ),
            (
                "oidc.code_lifetime_seconds",
                self.oidc.code_lifetime_seconds,
                MIN_AUTHORIZATION_CODE_SECONDS,
                MAX_AUTHORIZATION_CODE_SECONDS,
            ),
        ];
        for (field, value, min, max) in limits {
            if value < min {
                return invalid(field, ConfigProblem::TooSmall { min });
            }
            if value > max {
                return invalid(field, ConfigProblem::TooLarge { max });
            }
        }
        if !is_absolute_http_url(&self.oidc.authorization_endpoint) {
            return invalid("oidc.authorization_endpoint", ConfigProblem::NotHttpUrl);
        }
        if self.challenges.allowed_slots.is_empty() {
            return invalid("challenges.allowed_slots", ConfigProblem::Empty);
        }
        for (index, slot) in self.challenges.allowed_slots.iter().enumerate() {
            if !pivtap_protocol::wire::PIV_SIGNING_SLOTS.contains(&slot.as_str())
                || self.challenges.allowed_slots[..index].contains(slot)
            {
                return invalid("challenges.allowed_slots", ConfigProblem::Slot { index });
            }
        }
        if let Some(listen) = self.metrics.listen {
            if !listen.ip().is_loopback() {
                return invalid("metrics.listen", ConfigProblem::NotLoopback(listen));
            }
            if listen == self.listen {
                return invalid("metrics.listen", ConfigProblem::SameAsListen);
            }
        }
        if let Some(store) = &self.store
            && store.password_file.is_some()
            && store.url.sqlite_path().is_some()
        {
            return invalid("store.password_file", ConfigProblem::PasswordForSqlite);
        }
        let connections = &self.connections;
        let limits = [
            (
                "connections.tls_handshake_timeout_seconds",
                connections.tls_handshake_timeout_seconds,
                1,
                MAX_CONNECTION_SECONDS,
            ),
            (
                "connections.header_read_timeout_seconds",
                connections.header_read_timeout_seconds,
                1,
                MAX_CONNECTION_SECONDS,
            ),
            (
                "connections.idle_timeout_seconds",
                connections.idle_timeout_seconds,
                1,
                MAX_CONNECTION_SECONDS,
            ),
            (
                "connections.max_connections",
                connections.max_connections,
                1,
                MAX_CONNECTIONS,
            ),
            (
                "connections.max_connections_per_source",
                connections.max_connections_per_source,
                1,
                connections.max_connections,
            ),
        ];
        for (field, value, min, max) in limits {
            if value < min {
                return invalid(field, ConfigProblem::TooSmall { min });
            }
            if value > max {
                return invalid(field, ConfigProblem::TooLarge { max });
            }
        }
        if let Err(problem) = self.pin_policy.validate() {
            return invalid("pin_policy", ConfigProblem::PinPolicy(problem));
        }
        if let Some(issuance) = &self.issuance {
            if issuance.key_algorithms.is_empty() {
                return invalid("issuance.key_algorithms", ConfigProblem::Empty);
            }
            for (index, algorithm) in issuance.key_algorithms.iter().enumerate() {
                if issuance.key_algorithms[..index].contains(algorithm) {
                    return invalid("issuance.key_algorithms", ConfigProblem::Duplicate);
                }
            }
            let limits = [
                (
                    "issuance.validity_days",
                    issuance.validity_days,
                    1,
                    MAX_VALIDITY_DAYS,
                ),
                (
                    "issuance.max_code_validity_seconds",
                    issuance.max_code_validity_seconds,
                    MIN_CODE_SECONDS,
                    MAX_CODE_SECONDS,
                ),
                (
                    "issuance.code_validity_seconds",
                    issuance.code_validity_seconds,
                    MIN_CODE_SECONDS,
                    issuance.max_code_validity_seconds,
                ),
            ];
            for (field, value, min, max) in limits {
                if value < min {
                    return invalid(field, ConfigProblem::TooSmall { min });
                }
                if value > max {
                    return invalid(field, ConfigProblem::TooLarge { max });
                }
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base_dir: &Path) {
        let resolve = |path: &mut PathBuf| *path = base_dir.join(&*path);
        resolve(&mut self.admin_token_file);
        resolve(&mut self.database);
        if let Some(store) = &mut self.store {
            store.url = store.url.clone().resolve(base_dir);
            if let Some(file) = &mut store.password_file {
                resolve(file);
            }
            // SQLite's code (backup, check, the server lock) finds its file here.
            if let Some(file) = store.url.sqlite_path() {
                self.database = file.to_owned();
            }
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.certificate);
            resolve(&mut tls.key);
        }
        resolve(&mut self.tokens.key_file);
        self.trust.ca_certificates.iter_mut().for_each(resolve);
        self.trust.crl_files.iter_mut().for_each(resolve);
        if let Some(token_file) = &mut self.metrics.token_file {
            resolve(token_file);
        }
        if let Some(ca_file) = &mut self.oidc.ca_file {
            resolve(ca_file);
        }
        if let Some(issuance) = &mut self.issuance {
            resolve(&mut issuance.ca_certificate);
            resolve(&mut issuance.ca_key);
        }
    }

    /// The configuration as `server.toml` text (with `[store]`, without the older
    /// `database`, which may not stand beside it).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        if self.store.is_none() {
            return Ok(toml::to_string(self)?);
        }
        let mut table = toml::Table::try_from(self)?;
        table.remove("database");
        Ok(toml::to_string(&table)?)
    }

    /// Where the store lives: `[store] url`, or the SQLite file of `database`.
    #[must_use]
    pub fn store_url(&self) -> StoreUrl {
        match &self.store {
            Some(store) => store.url.clone(),
            None => StoreUrl::Sqlite(self.database.clone()),
        }
    }

    /// The SQLite database file, when the store is SQLite (`None` for PostgreSQL).
    #[must_use]
    pub fn sqlite_database(&self) -> Option<&Path> {
        match &self.store {
            Some(store) => store.url.sqlite_path(),
            None => Some(&self.database),
        }
    }

    /// Opens the configured store ([`open_store`](crate::store::url::open_store)).
    ///
    /// # Errors
    /// [`OpenStoreError`](crate::store::url::OpenStoreError).
    pub async fn open_store(
        &self,
    ) -> Result<std::sync::Arc<dyn crate::store::Store>, crate::store::url::OpenStoreError> {
        let password_file = self
            .store
            .as_ref()
            .and_then(|store| store.password_file.as_deref());
        crate::store::url::open_store(&self.store_url(), password_file).await
    }

    /// The trust anchors of [`TrustConfig::ca_certificates`], DER, in file order.
    pub fn trust_anchors(&self) -> Result<Vec<Vec<u8>>, ConfigError> {
        let mut anchors = Vec::new();
        for path in &self.trust.ca_certificates {
            anchors.extend(read_ca_certificates(path)?);
        }
        Ok(anchors)
    }

    /// The CRLs of [`TrustConfig::crl_files`], DER, in file order.
    pub fn crls(&self) -> Result<Vec<Vec<u8>>, ConfigError> {
        let mut crls = Vec::new();
        for path in &self.trust.crl_files {
            crls.extend(read_crls(path)?);
        }
        Ok(crls)
    }
}

/// `origin` must be `scheme://host[:port]` and nothing more.
fn check_origin(origin: &str, scheme: &'static str) -> Result<(), ConfigProblem> {
    let authority = origin
        .strip_prefix(scheme)
        .and_then(|rest| rest.strip_prefix("://"))
        .ok_or(ConfigProblem::OriginScheme { expected: scheme })?;
    let bare = !authority.is_empty()
        && !authority.starts_with(':')
        && !authority
            .chars()
            .any(|c| matches!(c, '/' | '?' | '#' | '@' | '\\') || c.is_whitespace());
    if bare {
        Ok(())
    } else {
        Err(ConfigProblem::OriginNotBare)
    }
}

/// Reads CA certificates from a PEM file (every `CERTIFICATE` section) or a
/// DER file; each must parse as X.509 and be a CA certificate.
pub fn read_ca_certificates(path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    parse_ca_certificates(&read_file(path)?).map_err(|problem| ConfigError::PkiFile {
        path: path.to_owned(),
        problem,
    })
}

/// Reads CRLs from a PEM file (every `X509 CRL` section) or a DER file; each must parse.
pub fn read_crls(path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    parse_crls(&read_file(path)?).map_err(|problem| ConfigError::PkiFile {
        path: path.to_owned(),
        problem,
    })
}

/// The CA certificates in the contents of a PEM or DER file, as [`read_ca_certificates`] takes them.
pub fn parse_ca_certificates(bytes: &[u8]) -> Result<Vec<Vec<u8>>, PkiFileProblem> {
    let certificates = der_sections::<CertificateDer<'static>>(bytes)?;
    if certificates.is_empty() {
        return Err(PkiFileProblem::NoCertificate);
    }
    for der in &certificates {
        match x509_parser::parse_x509_certificate(der) {
            Ok(([], certificate)) => {
                if !certificate.is_ca() {
                    return Err(PkiFileProblem::NotCa);
                }
                if matches!(certificate.key_usage(), Ok(Some(usage)) if !usage.value.key_cert_sign())
                {
                    return Err(PkiFileProblem::NoKeyCertSign);
                }
            }
            _ => return Err(PkiFileProblem::NotX509),
        }
    }
    Ok(certificates)
}

/// The CRLs in the contents of a PEM or DER file, as [`read_crls`] takes them.
pub fn parse_crls(bytes: &[u8]) -> Result<Vec<Vec<u8>>, PkiFileProblem> {
    let crls = der_sections::<CertificateRevocationListDer<'static>>(bytes)?;
    if crls.is_empty() {
        return Err(PkiFileProblem::NoCrl);
    }
    for der in &crls {
        if !matches!(x509_parser::parse_x509_crl(der), Ok(([], _))) {
            return Err(PkiFileProblem::NotCrl);
        }
    }
    Ok(crls)
}

fn read_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The DER objects of type `T` in PEM text, or the whole input if it is not PEM.
fn der_sections<T>(bytes: &[u8]) -> Result<Vec<Vec<u8>>, PkiFileProblem>
where
    T: PemObject + AsRef<[u8]>,
{
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Ok(if bytes.is_empty() {
            Vec::new()
        } else {
            vec![bytes.to_vec()]
        });
    }
    T::pem_slice_iter(bytes)
        .map(|section| section.map(|der| der.as_ref().to_vec()))
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|error| PkiFileProblem::Pem(error.to_string()))
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    use super::*;

    const MINIMAL: &str = r#"
origin = "https://127.0.0.1:8443"

[tls]
certificate = "tls.crt"
key = "tls.key"

[trust]
ca_certificates = ["trust/ca.pem"]
"#;

    fn config_path() -> PathBuf {
        PathBuf::from("/etc/pivtap/server.toml")
    }

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(text, &config_path())
    }

    fn invalid(text: &str) -> (&'static str, ConfigProblem) {
        match parse(text) {
            Err(ConfigError::Invalid { field, problem, .. }) => (field, problem),
            other => panic!("expected an invalid value, got {other:?}"),
        }
    }

    #[test]
    fn the_oidc_section_defaults_to_the_kiosks_endpoint_and_checks_its_values() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(
            config.oidc.authorization_endpoint,
            pivtap_protocol::oidc::DEFAULT_AUTHORIZATION_ENDPOINT
        );
        assert_eq!(config.oidc.code_lifetime(), Duration::from_secs(60));
        assert_eq!(config.oidc.ca_file, None);

        let set = parse(&format!(
            "{MINIMAL}\n[oidc]\nauthorization_endpoint = \"https://sso.example/authorize\"\n\
             code_lifetime_seconds = \"2m\"\nca_file = \"apps-ca.pem\"\n"
        ))
        .unwrap();
        assert_eq!(
            set.oidc.authorization_endpoint,
            "https://sso.example/authorize"
        );
        assert_eq!(set.oidc.code_lifetime(), Duration::from_secs(120));
        assert_eq!(
            set.oidc.ca_file.as_deref(),
            Some(Path::new("/etc/pivtap/apps-ca.pem"))
        );

        for endpoint in [
            "/oidc/authorize",
            "ftp://sso.example/authorize",
            "https://sso.example/authorize#x",
            "https://user@sso.example/authorize",
            "not a url",
        ] {
            let text = format!("{MINIMAL}\n[oidc]\nauthorization_endpoint = \"{endpoint}\"\n");
            assert_eq!(
                invalid(&text),
                ("oidc.authorization_endpoint", ConfigProblem::NotHttpUrl),
                "{endpoint}"
            );
        }
        for (lifetime, problem) in [
            (9, ConfigProblem::TooSmall { min: 10 }),
            (601, ConfigProblem::TooLarge { max: 600 }),
        ] {
            let text = format!("{MINIMAL}\n[oidc]\ncode_lifetime_seconds = {lifetime}\n");
            assert_eq!(invalid(&text), ("oidc.code_lifetime_seconds", problem));
        }
        let unknown = format!("{MINIMAL}\n[oidc]\ncode_lifetime = 60\n");
        assert!(matches!(parse(&unknown), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn the_store_defaults_to_the_sqlite_file_of_database() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.store, None);
        assert_eq!(
            config.store_url(),
            StoreUrl::Sqlite("/etc/pivtap/pivtap.db".into())
        );
        assert_eq!(
            config.sqlite_database(),
            Some(Path::new("/etc/pivtap/pivtap.db"))
        );
        // The older spelling still works, relative to the configuration's directory.
        let older = parse(&format!("database = \"data/x.db\"\n{MINIMAL}")).unwrap();
        assert_eq!(
            older.store_url(),
            StoreUrl::Sqlite("/etc/pivtap/data/x.db".into())
        );
    }

    #[test]
    fn a_store_section_names_sqlite_or_postgres() {
        let sqlite = parse(&format!("{MINIMAL}\n[store]\nurl = \"sqlite:data/p.db\"\n")).unwrap();
        assert_eq!(
            sqlite.store_url(),
            StoreUrl::Sqlite("/etc/pivtap/data/p.db".into())
        );
        // SQLite's code (backup, check, the server lock) finds the file in `database`.
        assert_eq!(sqlite.database, Path::new("/etc/pivtap/data/p.db"));
        assert_eq!(
            sqlite.sqlite_database(),
            Some(Path::new("/etc/pivtap/data/p.db"))
        );

        let text = format!(
            "{MINIMAL}\n[store]\nurl = \"postgres://pivtap@db.example/pivtap?sslrootcert=pg-ca.crt\"\n\
             password_file = \"secrets/store.password\"\n"
        );
        let postgres = parse(&text).unwrap();
        let Some(StoreConfig { url, password_file }) = &postgres.store else {
            panic!("no [store]")
        };
        let crate::store::url::StoreUrl::Postgres(url) = url else {
            panic!("{url:?}")
        };
        assert_eq!(
            url.ssl_root_cert,
            Some(PathBuf::from("/etc/pivtap/pg-ca.crt"))
        );
        assert_eq!(url.ssl_mode, crate::store::url::SslMode::VerifyFull);
        assert_eq!(
            password_file.as_deref(),
            Some(Path::new("/etc/pivtap/secrets/store.password"))
        );
        assert_eq!(postgres.sqlite_database(), None);

        // Written out: [store] without `database`, and it reads back the same.
        let written = postgres.to_toml().unwrap();
        assert!(written.contains("[store]"), "{written}");
        assert!(!written.contains("database ="), "{written}");
        assert_eq!(parse(&written).unwrap(), postgres);
        let written = sqlite.to_toml().unwrap();
        assert_eq!(parse(&written).unwrap(), sqlite);
    }

    #[test]
    fn bad_store_settings_are_refused() {
        let both = format!("database = \"x.db\"\n{MINIMAL}\n[store]\nurl = \"sqlite:y.db\"\n");
        assert_eq!(
            invalid(&both),
            ("database", ConfigProblem::DatabaseWithStore)
        );
        let error = parse(&both).unwrap_err().to_string();
        assert!(error.contains("[store]"), "{error}");

        let password_for_sqlite =
            format!("{MINIMAL}\n[store]\nurl = \"sqlite:y.db\"\npassword_file = \"p\"\n");
        assert_eq!(
            invalid(&password_for_sqlite),
            ("store.password_file", ConfigProblem::PasswordForSqlite)
        );

        for (url, expected) in [
            ("postgres://pivtap:hunter2@db/pivtap", "password_file"),
            (
                "postgres://pivtap@db/pivtap?password=hunter2",
                "password_file",
            ),
            ("postgres://pivtap@db/pivtap?sslmode=disable", "plain text"),
            ("mysql://x", "starts with sqlite:"),
        ] {
            let text = format!("{MINIMAL}\n[store]\nurl = \"{url}\"\n");
            let error = match parse(&text) {
                Err(error @ ConfigError::StoreUrl { .. }) => crate::check::error_chain(&error),
                other => panic!("{url}: {other:?}"),
            };
            assert!(error.contains("store.url"), "{error}");
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        let unknown = format!("{MINIMAL}\n[store]\nurl = \"sqlite:x\"\npassword = \"x\"\n");
        assert!(matches!(parse(&unknown), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn minimal_config_takes_the_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(config.origin, "https://127.0.0.1:8443");
        assert!(!config.plain_http);
        assert_eq!(
            config.admin_token_file,
            Path::new("/etc/pivtap/admin.token")
        );
        assert_eq!(config.database, Path::new("/etc/pivtap/pivtap.db"));
        assert_eq!(
            config.tokens,
            TokenConfig {
                key_file: PathBuf::from("/etc/pivtap/tokens.key"),
                lifetime_seconds: 300,
                audience: "pivtap".to_owned(),
            }
        );
        assert_eq!(config.tokens.lifetime(), Duration::from_secs(300));
        assert_eq!(config.mapping.rule.to_string(), "san.email -> mail");
        assert_eq!(config.challenges.lifetime(), Duration::from_secs(60));
        assert_eq!(config.challenges.max_clock_skew(), Duration::from_secs(60));
        assert_eq!(config.challenges.allowed_slots, ["9a"]);
        assert_eq!(config.rate_limit.failures_before_delay, 5);
        assert_eq!(config.rate_limit.base_delay(), Duration::from_secs(2));
        assert_eq!(config.rate_limit.max_delay(), Duration::from_secs(300));
        assert_eq!(config.rate_limit.window(), Duration::from_secs(900));
        assert!(config.trust.crl_files.is_empty());
        assert!(
            config.devices.require_registration,
            "devices must prove themselves"
        );
        assert_eq!(config.devices.certificate_validity_days, 180);
        assert_eq!(config.devices.code_validity(), Duration::from_secs(86_400));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = format!(
            "{MINIMAL}crl_files = [\"crl/ca.crl\", \"/var/lib/crl/other.crl\"]\n\n[tokens]\nkey_file = \"keys/tokens.key\"\n"
        );
        let config = parse(&text).unwrap();
        let tls = config.tls.as_ref().unwrap();
        assert_eq!(tls.certificate, Path::new("/etc/pivtap/tls.crt"));
        assert_eq!(tls.key, Path::new("/etc/pivtap/tls.key"));
        assert_eq!(
            config.tokens.key_file,
            Path::new("/etc/pivtap/keys/tokens.key")
        );
        assert_eq!(
            config.trust.ca_certificates,
            [PathBuf::from("/etc/pivtap/trust/ca.pem")]
        );
        assert_eq!(
            config.trust.crl_files,
            [
                PathBuf::from("/etc/pivtap/crl/ca.crl"),
                PathBuf::from("/var/lib/crl/other.crl")
            ]
        );
        // A config named without a directory keeps its paths relative to the working directory.
        let local = ServerConfig::parse(MINIMAL, Path::new("server.toml")).unwrap();
        assert_eq!(local.database, Path::new("pivtap.db"));
    }

    #[test]
    fn every_option_is_read() {
        let text = r#"
listen = "[::1]:9443"
origin = "http://localhost:9443"
plain_http = true
admin_token_file = "secrets/admin.token"
database = "/var/lib/pivtap/pivtap.db"

[tokens]
key_file = "keys.toml"
lifetime_seconds = 600
audience = "line-of-business"

[trust]
ca_certificates = ["a.pem", "b.der"]
crl_files = ["a.crl"]

[mapping]
rule = "subject.serial -> employee_id"

[challenges]
lifetime_seconds = 30
max_clock_skew_seconds = 5
allowed_slots = ["9a", "9e"]

[rate_limit]
failures_before_delay = 3
base_delay_seconds = 1
max_delay_seconds = 60
window_seconds = 120
challenge_burst = 50
challenges_per_minute = 100
refusal_burst = 20
refusals_per_minute = 10

[audit]
retention_days = 30
"#;
        let config = parse(text).unwrap();
        assert_eq!(config.listen, "[::1]:9443".parse().unwrap());
        assert!(config.plain_http && config.tls.is_none());
        assert_eq!(
            config.admin_token_file,
            Path::new("/etc/pivtap/secrets/admin.token")
        );
        assert_eq!(config.database, Path::new("/var/lib/pivtap/pivtap.db"));
        assert_eq!(config.tokens.lifetime_seconds, 600);
        assert_eq!(config.tokens.audience, "line-of-business");
        assert_eq!(
            config.mapping.rule.to_string(),
            "subject.serial -> employee_id"
        );
        assert_eq!(
            config.challenges,
            ChallengeConfig {
                lifetime_seconds: 30,
                max_clock_skew_seconds: 5,
                allowed_slots: vec!["9a".to_owned(), "9e".to_owned()],
            }
        );
        assert_eq!(
            config.rate_limit,
            RateLimitConfig {
                failures_before_delay: 3,
                base_delay_seconds: 1,
                max_delay_seconds: 60,
                window_seconds: 120,
                challenge_burst: 50,
                challenges_per_minute: 100,
                refusal_burst: 20,
                refusals_per_minute: 10,
            }
        );
        assert_eq!(config.audit.retention(), Duration::from_secs(30 * 86_400));
        let policy = config.rate_limit.policy();
        assert_eq!(
            (policy.challenges.burst, policy.refusals.per_minute),
            (50, 10)
        );
    }

    #[test]
    fn pin_policy_and_issuance_are_read_and_checked() {
        let minimal = parse(MINIMAL).unwrap();
        assert_eq!(minimal.pin_policy, PinPolicy::default());
        assert!(minimal.issuance.is_none());

        let text = format!(
            "{MINIMAL}\n[pin_policy]\nmin_length = 8\n\n[issuance]\nca_certificate = \"ca.crt\"\nca_key = \"/k/ca.key\"\nkey_algorithms = [\"p384\"]\nsubject_cn = \"uid\"\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.pin_policy.min_length, 8);
        assert_eq!(config.pin_policy.max_length, 8);
        let issuance = config.issuance.clone().unwrap();
        assert_eq!(issuance.ca_certificate, Path::new("/etc/pivtap/ca.crt"));
        assert_eq!(issuance.ca_key, Path::new("/k/ca.key"));
        assert_eq!(issuance.key_algorithms, [KeyAlgorithm::P384]);
        assert_eq!(issuance.subject_cn, SubjectCn::Uid);
        assert_eq!(issuance.validity_days, 365);
        assert!(issuance.include_upn && issuance.smartcard_logon);
        assert_eq!(issuance.code_validity(), Duration::from_secs(900));
        assert_eq!(
            issuance.max_code_validity(),
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(parse(&config.to_toml().unwrap()).unwrap(), config);

        let issuance_table = "\n[issuance]\nca_certificate = \"c\"\nca_key = \"k\"\n";
        for (extra, field) in [
            ("\n[pin_policy]\nmin_length = 4\n", "pin_policy"),
            ("key_algorithms = []\n", "issuance.key_algorithms"),
            (
                "key_algorithms = [\"p256\", \"p256\"]\n",
                "issuance.key_algorithms",
            ),
            ("validity_days = 0\n", "issuance.validity_days"),
            (
                "code_validity_seconds = 10\n",
                "issuance.code_validity_seconds",
            ),
            (
                "code_validity_seconds = 7200\nmax_code_validity_seconds = 3600\n",
                "issuance.code_validity_seconds",
            ),
        ] {
            let text = if field == "pin_policy" {
                format!("{MINIMAL}{extra}")
            } else {
                format!("{MINIMAL}{issuance_table}{extra}")
            };
            assert_eq!(invalid(&text).0, field, "{extra}");
        }
        let unknown = format!("{MINIMAL}{issuance_table}key_algorithms = [\"ed25519\"]\n");
        assert!(matches!(parse(&unknown), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn to_toml_round_trips() {
        let config = parse(MINIMAL).unwrap();
        let text = config.to_toml().unwrap();
        assert_eq!(parse(&text).unwrap(), config);
        assert!(!text.contains("plain_http"));
        assert!(text.contains(r#"rule = "san.email -> mail""#));
    }

    #[test]
    fn tls_and_plain_http_are_checked() {
        let without_tls = r#"
origin = "https://127.0.0.1:8443"
[trust]
ca_certificates = ["ca.pem"]
"#;
        assert_eq!(invalid(without_tls), ("tls", ConfigProblem::TlsMissing));
        let both = MINIMAL.replace("origin", "plain_http = true\norigin");
        assert_eq!(
            invalid(&both),
            ("plain_http", ConfigProblem::PlainHttpWithTls)
        );
        let plain = |listen: &str| {
            format!(
                "listen = \"{listen}\"\nplain_http = true\norigin = \"http://localhost:8080\"\n[trust]\nca_certificates = [\"ca.pem\"]\n"
            )
        };
        assert!(parse(&plain("127.0.0.1:8080")).is_ok());
        assert!(parse(&plain("127.8.9.10:8080")).is_ok());
        assert!(parse(&plain("[::1]:8080")).is_ok());
        for exposed in ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:8080"] {
            assert_eq!(
                invalid(&plain(exposed)),
                (
                    "plain_http",
                    ConfigProblem::PlainHttpNotLoopback(exposed.parse().unwrap())
                )
            );
        }
    }

    #[test]
    fn origin_must_be_a_bare_origin_of_the_right_scheme() {
        let with_origin =
            |origin: &str| MINIMAL.replace("\"https://127.0.0.1:8443\"", &format!("\"{origin}\""));
        assert!(parse(&with_origin("https://auth.example.org")).is_ok());
        assert!(parse(&with_origin("https://[::1]:8443")).is_ok());
        assert_eq!(
            invalid(&with_origin("http://127.0.0.1:8443")),
            ("origin", ConfigProblem::OriginScheme { expected: "https" })
        );
        for not_bare in [
            "https://",
            "https://:8443",
            "https://host/",
            "https://host/path",
            "https://host?query",
            "https://host#fragment",
            "https://user@host",
            "https://two words",
        ] {
            assert_eq!(
                invalid(&with_origin(not_bare)),
                ("origin", ConfigProblem::OriginNotBare),
                "{not_bare}"
            );
        }
    }

    #[test]
    fn connections_and_metrics_take_safe_defaults() {
        let config = parse(MINIMAL).unwrap();
        let limits = config.connections.limits();
        assert_eq!(limits, crate::connections::ConnectionLimits::default());
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.metrics, MetricsConfig::default());
        let with_token = parse(&format!(
            "{MINIMAL}\n[metrics]\ntoken_file = \"metrics.token\"\n"
        ))
        .unwrap();
        assert_eq!(
            with_token.metrics.token_file.as_deref(),
            Some(Path::new("/etc/pivtap/metrics.token"))
        );
    }

    #[test]
    fn proxy_protocol_peers_are_addresses_or_networks() {
        let config = parse(MINIMAL).unwrap();
        assert!(
            config.connections.trusted_proxies().is_empty(),
            "none by default"
        );
        let config = parse(&format!(
            "{MINIMAL}\n[connections]\nproxy_protocol_from = [\"10.0.0.5\", \"10.0.1.7/24\", \"fd00::/64\"]\n"
        ))
        .unwrap();
        let proxies = config.connections.trusted_proxies();
        for (peer, trusted) in [
            ("10.0.0.5", true),
            ("10.0.0.6", false),
            ("10.0.1.200", true),
            ("::ffff:10.0.1.1", true),
            ("fd00::9", true),
            ("fd01::9", false),
        ] {
            let ip: std::net::IpAddr = peer.parse().unwrap();
            assert_eq!(proxies.trusts(ip), trusted, "{peer}");
        }
        let written: Vec<String> = config
            .connections
            .proxy_protocol_from
            .iter()
            .map(|network| String::from(*network))
            .collect();
        assert_eq!(written, ["10.0.0.5", "10.0.1.0/24", "fd00::/64"]);
        for bad in ["\"proxy.example\"", "\"10.0.0.0/33\"", "\"\"", "5"] {
            let error = parse(&format!(
                "{MINIMAL}\n[connections]\nproxy_protocol_from = [{bad}]\n"
            ))
            .unwrap_err();
            assert!(
                matches!(error, ConfigError::Syntax { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn sessions_last_twelve_hours_unless_configured_as_a_duration() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.sessions.max_age(), Duration::from_secs(12 * 3600));
        let config = parse(&format!(
            "{MINIMAL}\n[sessions]\nmax_age_seconds = \"8h\"\n"
        ))
        .unwrap();
        assert_eq!(config.sessions.max_age(), Duration::from_secs(8 * 3600));
        let error = parse(&format!("{MINIMAL}\n[sessions]\nmax_age = 60\n")).unwrap_err();
        assert!(matches!(error, ConfigError::Syntax { .. }), "{error}");
    }

    #[test]
    fn values_out_of_bounds_are_refused() {
        let cases = [
            (
                "[tokens]\nlifetime_seconds = 0",
                "tokens.lifetime_seconds",
                ConfigProblem::TooSmall { min: 1 },
            ),
            (
                "[tokens]\nlifetime_seconds = 604801",
                "tokens.lifetime_seconds",
                ConfigProblem::TooLarge { max: 604_800 },
            ),
            (
                "[tokens]\naudience = \"\"",
                "tokens.audience",
                ConfigProblem::Empty,
            ),
            (
                "[sessions]\nmax_age_seconds = 299",
                "sessions.max_age_seconds",
                ConfigProblem::TooSmall { min: 300 },
            ),
            (
                "[sessions]\nmax_age_seconds = \"30d1s\"",
                "sessions.max_age_seconds",
                ConfigProblem::TooLarge { max: 2_592_000 },
            ),
            (
                "[challenges]\nlifetime_seconds = 0",
                "challenges.lifetime_seconds",
                ConfigProblem::TooSmall { min: 1 },
            ),
            (
                "[challenges]\nmax_clock_skew_seconds = 601",
                "challenges.max_clock_skew_seconds",
                ConfigProblem::TooLarge { max: 600 },
            ),
            (
                "[devices]\ncertificate_validity_days = 0",
                "devices.certificate_validity_days",
                ConfigProblem::TooSmall { min: 1 },
            ),
            (
                "[devices]\ncertificate_validity_days = 826",
                "devices.certificate_validity_days",
                ConfigProblem::TooLarge { max: 825 },
            ),
            (
                "[devices]\ncode_validity_seconds = 59",
                "devices.code_validity_seconds",
                ConfigProblem::TooSmall { min: 60 },
            ),
            (
                "[challenges]\nallowed_slots = []",
                "challenges.allowed_slots",
                ConfigProblem::Empty,
            ),
            (
                "[challenges]\nallowed_slots = [\"9a\", \"82\"]",
                "challenges.allowed_slots",
                ConfigProblem::Slot { index: 1 },
            ),
            (
                "[challenges]\nallowed_slots = [\"9A\"]",
                "challenges.allowed_slots",
                ConfigProblem::Slot { index: 0 },
            ),
            (
                "[challenges]\nallowed_slots = [\"9a\", \"9a\"]",
                "challenges.allowed_slots",
                ConfigProblem::Slot { index: 1 },
            ),
            (
                "[rate_limit]\nbase_delay_seconds = 0",
                "rate_limit.base_delay_seconds",
                ConfigProblem::TooSmall { min: 1 },
            ),
            (
                "[rate_limit]\nbase_delay_seconds = 10\nmax_delay_seconds = 5",
                "rate_limit.max_delay_seconds",
                ConfigProblem::TooSmall { min: 10 },
            ),
            (
                "[rate_limit]\nwindow_seconds = 86401",
                "rate_limit.window_seconds",
                ConfigProblem::TooLarge { max: 86_400 },
            ),
            (
                "[rate_limit]\nrefusals_per_minute = 0",
                "rate_limit.refusals_per_minute",
                ConfigProblem::TooSmall { min: 1 },
            ),
            (
                "[rate_limit]\nchallenge_burst = 1000001",
                "rate_limit.challenge_burst",
                ConfigProblem::TooLarge { max: 1_000_000 },
            ),
            (
                "[audit]\nretention_days = 0",
                "audit.retention_days",
                ConfigProblem::TooSmall { min: 1 },
            ),
            (
                "[connections]\nheader_read_timeout_seconds = 0",
                "connections.header_read_timeout_seconds",
                ConfigProblem::TooSmall { min: 1 },
            ),
            (
                "[connections]\nidle_timeout_seconds = 3601",
                "connections.idle_timeout_seconds",
                ConfigProblem::TooLarge { max: 3600 },
            ),
            (
                "[connections]\nmax_connections = 10\nmax_connections_per_source = 11",
                "connections.max_connections_per_source",
                ConfigProblem::TooLarge { max: 10 },
            ),
            (
                "[metrics]\nlisten = \"0.0.0.0:9464\"",
                "metrics.listen",
                ConfigProblem::NotLoopback(SocketAddr::from(([0, 0, 0, 0], 9464))),
            ),
            (
                "[metrics]\nlisten = \"127.0.0.1:8443\"",
                "metrics.listen",
                ConfigProblem::SameAsListen,
            ),
        ];
        for (extra, field, problem) in cases {
            assert_eq!(
                invalid(&format!("{MINIMAL}\n{extra}\n")),
                (field, problem),
                "{extra}"
            );
        }
        let no_anchors = MINIMAL.replace("[\"trust/ca.pem\"]", "[]");
        assert_eq!(
            invalid(&no_anchors),
            ("trust.ca_certificates", ConfigProblem::Empty)
        );
    }

    #[test]
    fn syntax_errors_name_the_file_and_the_key() {
        let unknown = parse(&format!("{MINIMAL}\n[tokens]\nlifetime = 60\n")).unwrap_err();
        assert!(matches!(unknown, ConfigError::Syntax { .. }));
        let message = unknown.to_string();
        assert!(message.contains("/etc/pivtap/server.toml"), "{message}");
        assert!(message.contains("lifetime"), "{message}");

        let bad_rule = parse(&format!(
            "{MINIMAL}\n[mapping]\nrule = \"san.dns -> mail\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(bad_rule.contains("san.dns"), "{bad_rule}");

        let bad_listen = parse(&format!("listen = \"localhost\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(bad_listen.contains("listen"), "{bad_listen}");

        let missing_origin = parse(&MINIMAL.replace("origin = \"https://127.0.0.1:8443\"", ""))
            .unwrap_err()
            .to_string();
        assert!(missing_origin.contains("origin"), "{missing_origin}");

        let missing_file = ServerConfig::load(Path::new("/nonexistent/server.toml")).unwrap_err();
        assert!(matches!(missing_file, ConfigError::Read { .. }));
        assert!(
            missing_file
                .to_string()
                .contains("/nonexistent/server.toml")
        );
    }

    #[test]
    fn validate_rechecks_a_changed_listen_address() {
        let mut config = ServerConfig::parse(
            "listen = \"127.0.0.1:8080\"\nplain_http = true\norigin = \"http://127.0.0.1:8080\"\n[trust]\nca_certificates = [\"ca.pem\"]\n",
            &config_path(),
        )
        .unwrap();
        config.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(matches!(
            config.validate(&config_path()),
            Err(ConfigError::Invalid {
                field: "plain_http",
                ..
            })
        ));
    }

    fn certificate(is_ca: bool) -> rcgen::Certificate {
        let mut params = CertificateParams::new(vec!["example.org".to_owned()]).unwrap();
        if is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.self_signed(&KeyPair::generate().unwrap()).unwrap()
    }

    #[test]
    fn certificate_files_are_read_as_pem_bundles_or_der() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (certificate(true), certificate(true));
        let bundle = dir.path().join("bundle.pem");
        fs::write(
            &bundle,
            format!("comment line\n{}{}", first.pem(), second.pem()),
        )
        .unwrap();
        let der = dir.path().join("ca.der");
        fs::write(&der, first.der()).unwrap();

        let read = read_ca_certificates(&bundle).unwrap();
        assert_eq!(read, [first.der().to_vec(), second.der().to_vec()]);
        assert_eq!(read_ca_certificates(&der).unwrap(), [first.der().to_vec()]);

        let text = "origin = \"https://a.example\"\n[tls]\ncertificate = \"c\"\nkey = \"k\"\n[trust]\nca_certificates = [\"bundle.pem\", \"ca.der\"]\n";
        let config = ServerConfig::parse(text, &dir.path().join("server.toml")).unwrap();
        assert_eq!(config.trust_anchors().unwrap().len(), 3);
        assert!(config.crls().unwrap().is_empty());
    }

    #[test]
    fn unusable_certificate_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, contents: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, contents).unwrap();
            path
        };
        let leaf = write("leaf.pem", certificate(false).pem().as_bytes());
        let key_only = write(
            "key.pem",
            KeyPair::generate().unwrap().serialize_pem().as_bytes(),
        );
        let garbage = write("garbage.der", b"\x30\x03\x02\x01\x01");
        let broken_pem = write(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let empty = write("empty.pem", b"");
        let mut params = CertificateParams::new(vec!["example.org".to_owned()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let signing_only = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let signing_only = write("signing-only.pem", signing_only.pem().as_bytes());
        let cases = [
            (&leaf, PkiFileProblem::NotCa),
            (&signing_only, PkiFileProblem::NoKeyCertSign),
            (&key_only, PkiFileProblem::NoCertificate),
            (&garbage, PkiFileProblem::NotX509),
            (&empty, PkiFileProblem::NoCertificate),
        ];
        for (path, expected) in cases {
            match read_ca_certificates(path) {
                Err(ConfigError::PkiFile {
                    path: named,
                    problem,
                }) => {
                    assert_eq!(&named, path);
                    assert_eq!(problem, expected, "{}", path.display());
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        assert!(matches!(
            read_ca_certificates(&broken_pem),
            Err(ConfigError::PkiFile {
                problem: PkiFileProblem::Pem(_),
                ..
            })
        ));
        assert!(matches!(
            read_crls(&leaf),
            Err(ConfigError::PkiFile {
                problem: PkiFileProblem::NoCrl,
                ..
            })
        ));
        assert!(matches!(
            read_crls(&garbage),
            Err(ConfigError::PkiFile {
                problem: PkiFileProblem::NotCrl,
                ..
            })
        ));
    }

    #[test]
    fn crl_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let crl = rcgen::CertificateRevocationListParams {
            this_update: time::OffsetDateTime::now_utc(),
            next_update: time::OffsetDateTime::now_utc() + time::Duration::days(7),
            crl_number: rcgen::SerialNumber::from(1_u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap();
        let pem_path = dir.path().join("ca.crl.pem");
        fs::write(&pem_path, crl.pem().unwrap()).unwrap();
        let der_path = dir.path().join("ca.crl");
        fs::write(&der_path, crl.der()).unwrap();
        assert_eq!(read_crls(&pem_path).unwrap(), [crl.der().to_vec()]);
        assert_eq!(read_crls(&der_path).unwrap(), [crl.der().to_vec()]);
    }
}
