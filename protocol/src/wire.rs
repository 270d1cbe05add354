//! The wire protocol between devices, admins and the server: request and response bodies, error codes, the assertion's JWS header and payload, and the session token's claims.
//!
//! Everything that both sides must agree on lives here once (DESIGN.md,
//! "Wire protocol").

use std::fmt;

use serde::{Deserialize, Serialize};

/// The JWS `typ` of a card-signed assertion.
pub const ASSERTION_TYPE: &str = "pivtap-assertion+jwt";
/// The JWS `typ` of a device proof (a challenge request signed by the device's own key).
pub const DEVICE_PROOF_TYPE: &str = "pivtap-device+jwt";
/// The prefix of the device ids renewal challenges are issued to: anyone may ask for
/// one (a worker renews on their own workstation, which is no registered device), and
/// a renewal challenge cannot be used to sign in. Devices cannot be registered under it.
pub const RENEWAL_DEVICE_PREFIX: &str = "renewal:";
/// The URI SAN prefix of a device certificate: `urn:pivtap:device:<device id>`. A
/// certificate carrying it is never accepted as a card certificate.
pub const DEVICE_URI_PREFIX: &str = "urn:pivtap:device:";

/// `POST /v1/challenges`
pub const PATH_CHALLENGES: &str = "/v1/challenges";
/// `POST /v1/assertions`
pub const PATH_ASSERTIONS: &str = "/v1/assertions";
/// `GET /.well-known/jwks.json`
pub const PATH_JWKS: &str = "/.well-known/jwks.json";
/// `GET`: readiness, as [`PATH_READY`] (kept for load balancers configured before `/readyz`).
pub const PATH_HEALTH: &str = "/healthz";
/// `GET`: liveness, the process answers (200 `{"status": "ok"}`).
pub const PATH_LIVE: &str = "/livez";
/// `GET`: readiness, a sign-in can be recorded now (200, or 503 `unavailable`).
pub const PATH_READY: &str = "/readyz";
/// `GET /metrics`
pub const PATH_METRICS: &str = "/metrics";
/// Prefix of the admin API.
pub const PATH_ADMIN: &str = "/v1/admin";
/// `GET /v1/pin-policy`: the PIN policy devices enforce on PIN changes.
pub const PATH_PIN_POLICY: &str = "/v1/pin-policy";
/// `POST /v1/enrollments/inspect`: what an enrollment code offers (does not use it up).
pub const PATH_ENROLLMENTS_INSPECT: &str = "/v1/enrollments/inspect";
/// `POST /v1/enrollments`: a CSR and an enrollment code in, a certificate out.
pub const PATH_ENROLLMENTS: &str = "/v1/enrollments";
/// `POST /v1/renewals`: a sign-in assertion and a CSR in, a new certificate out (pending
/// until confirmed or first used).
pub const PATH_RENEWALS: &str = "/v1/renewals";
/// `POST /v1/renewals/confirm`: an assertion signed with the new key and certificate;
/// completes the renewal (the old certificate is revoked, superseded).
pub const PATH_RENEWALS_CONFIRM: &str = "/v1/renewals/confirm";
/// `POST /v1/renewals/resume`: an assertion presenting the old certificate but signed by
/// the new key of one of its pending renewals (a renewal cut before the new certificate
/// was stored); answers with that pending certificate.
pub const PATH_RENEWALS_RESUME: &str = "/v1/renewals/resume";
/// `GET /v1/crl`: the issuing CA's certificate revocation list (DER).
pub const PATH_CRL: &str = "/v1/crl";
/// Admin: `POST {PATH_ADMIN}/enrollments` makes an enrollment code.
pub const PATH_ADMIN_ENROLLMENTS: &str = "/enrollments";
/// Admin: `GET|POST {PATH_ADMIN}/devices` lists or registers devices.
pub const PATH_ADMIN_DEVICES: &str = "/devices";
/// Admin: `GET|POST {PATH_ADMIN}/credentials` lists or adds named admin credentials;
/// `POST {PATH_ADMIN}/credentials/{name}/revoke` revokes one.
pub const PATH_ADMIN_CREDENTIALS: &str = "/credentials";
/// `POST`: a device reports the end of a session, authenticated by its session token.
pub const PATH_SIGN_OUTS: &str = "/v1/sign-outs";
/// `POST /v1/devices/enroll`: a device enrollment code and a CSR in, the device certificate out.
pub const PATH_DEVICE_ENROLLMENTS: &str = "/v1/devices/enroll";
/// The media type of `GET /v1/crl`.
pub const CRL_CONTENT_TYPE: &str = "application/pkix-crl";
/// The start of an enrollment link: `pivtap://enroll?server=...&code=...`.
pub const ENROLL_URL_PREFIX: &str = "pivtap://enroll";
/// The PIV slot enrollment puts the key and certificate in (PIV authentication).
pub const ENROLL_SLOT: &str = "9a";

/// Authentication methods of a session token (RFC 8176): a hardware key on a smart card, and PIN.
pub const AMR: [&str; 3] = ["hwk", "sc", "pin"];

/// The PIV key slots an assertion may name by default: `9a`, PIV authentication.
pub const DEFAULT_SIGN_IN_SLOTS: [&str; 1] = ["9a"];

/// The PIV slots whose keys can sign an assertion (SP 800-73-4): `9a` PIV
/// authentication, `9c` digital signature, `9d` key management, `9e` card authentication.
pub const PIV_SIGNING_SLOTS: [&str; 4] = ["9a", "9c", "9d", "9e"];

/// What a signature by the key in `slot` proves, as RFC 8176 `amr` values: always a
/// hardware-held key (`hwk`) on a smart card (`sc`). Per SP 800-73-4 the card lets the
/// `9a`, `9c` and `9d` keys sign only after the PIN was verified: `["hwk", "sc", "pin"]`.
/// The `9e` key (card authentication) signs without a PIN: `["hwk", "sc"]`. Any other
/// slot: `None`.
#[must_use]
pub fn amr_for_slot(slot: &str) -> Option<&'static [&'static str]> {
    match slot {
        "9a" | "9c" | "9d" => Some(&AMR),
        "9e" => Some(&["hwk", "sc"]),
        _ => None,
    }
}

/// Longest device id.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Whether `device` is a valid device id: 1 to [`MAX_DEVICE_ID_LEN`] ASCII
/// letters, digits, `.`, `_`, `:` or `-` (the server and every device agree on it).
#[must_use]
pub fn is_valid_device_id(device: &str) -> bool {
    !device.is_empty()
        && device.len() <= MAX_DEVICE_ID_LEN
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `POST /v1/challenges` body: which device asks, and its proof.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The device id, e.g. `kiosk-07`.
    pub device: String,
    /// The device proof: a compact JWS (ES256, `typ` [`DEVICE_PROOF_TYPE`], `kid` the
    /// device id) over [`DeviceProofClaims`], signed by the device's own key. Required
    /// unless the server runs with `[devices] require_registration = false` or the
    /// device id starts with [`RENEWAL_DEVICE_PREFIX`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

impl fmt::Debug for ChallengeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChallengeRequest")
            .field("device", &self.device)
            .field("proof", &self.proof.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

/// The protected header of a device proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProofHeader {
    /// Always `ES256` (device keys are P-256).
    pub alg: String,
    /// [`DEVICE_PROOF_TYPE`].
    pub typ: String,
    /// The registered device whose key signed.
    pub kid: String,
}

/// The claims of a device proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProofClaims {
    /// The server origin.
    pub aud: String,
    /// The device id (the same as the header's `kid` and the request's `device`).
    pub device: String,
    /// When the device signed, Unix seconds.
    pub iat: i64,
    /// A random id, so that a proof is used once.
    pub jti: String,
}

/// A device as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device id.
    pub id: String,
    /// `enabled` or `disabled`.
    pub state: String,
    /// When it was registered, RFC 3339.
    pub created_at: String,
    /// Whether it holds a credential (it redeemed its enrollment code).
    pub enrolled: bool,
    /// When its enrollment code expires (until it is used), RFC 3339.
    pub code_expires_at: Option<String>,
    /// The serial number of its certificate (lower-case hex).
    pub certificate_serial: Option<String>,
    /// When its certificate expires, RFC 3339.
    pub not_after: Option<String>,
}

/// `POST /v1/admin/devices` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDeviceRequest {
    /// The device id to register.
    pub id: String,
    /// How long the enrollment code stays valid; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_seconds: Option<u64>,
}

/// `201` answer to `POST /v1/admin/devices`: the one-time device enrollment code.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCode {
    /// The device.
    pub device: DeviceRecord,
    /// The code, shown once (`XXXX-XXXX-XXXX-XXXX-XXXX`).
    pub code: String,
    /// When it expires, RFC 3339.
    pub expires_at: String,
}

impl fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCode")
            .field("device", &self.device)
            .field("code", &"REDACTED")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `POST /v1/devices/enroll` body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEnrollmentRequest {
    /// The device enrollment code.
    pub code: String,
    /// A PKCS#10 request for the device's P-256 key, DER in base64url.
    pub csr: String,
}

impl fmt::Debug for DeviceEnrollmentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceEnrollmentRequest")
            .field("code", &"REDACTED")
            .finish_non_exhaustive()
    }
}

/// `201` answer to `POST /v1/devices/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEnrollmentResult {
    /// The device id the certificate names.
    pub device: String,
    /// The device certificate, DER in base64url.
    pub certificate: String,
    /// The issuing CA's certificate, DER in base64url.
    pub ca_certificate: String,
    /// When the certificate expires, RFC 3339.
    pub not_after: String,
}

/// `201` answer to `POST /v1/challenges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// 32 random bytes, base64url without padding.
    pub nonce: String,
    /// The server origin the assertion's `aud` must name.
    pub aud: String,
    /// When the challenge stops being accepted, RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/assertions` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionRequest {
    /// The compact JWS signed by the card.
    pub assertion: String,
}

/// Who signed in, as the server's directory knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user id (`sub` of the token).
    pub id: String,
    /// The name to show.
    pub display_name: String,
    /// E-mail address, when known.
    pub mail: Option<String>,
}

/// `200` answer to `POST /v1/assertions`: the session the sign-in began.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionResponse {
    /// The session's access token (a JWT signed by the server, with the session's `sid`),
    /// short-lived: the device refreshes it with `refresh_token` while the worker is present.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// Who signed in.
    pub user: UserInfo,
    /// The server-side session (`sid` in every token issued from it).
    pub session_id: String,
    /// Refreshes the access token at `POST /v1/sessions/refresh`; bound to the session and
    /// replaced at every use. Kept in memory only.
    pub refresh_token: String,
    /// Seconds until the session ends on its own (the server's maximum session age).
    pub session_expires_in: u64,
}

impl fmt::Debug for AssertionResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionResponse")
            .field("token", &"REDACTED")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("user", &self.user)
            .field("session_id", &self.session_id)
            .field("refresh_token", &"REDACTED")
            .field("session_expires_in", &self.session_expires_in)
            .finish()
    }
}

/// `POST`: the device replaces its session's access token (and refresh token).
pub const PATH_SESSIONS_REFRESH: &str = "/v1/sessions/refresh";
/// `GET`, bearer: the session's access token (an expired one too, within the sign-out
/// grace): whether the session is still active ([`SessionStatus`]).
pub const PATH_SESSIONS_CURRENT: &str = "/v1/sessions/current";
/// `POST`, bearer: the session's access token: an authorization code for a registered
/// client, for the kiosk's loopback authorization endpoint ([`AuthorizationCodeRequest`]).
pub const PATH_SESSIONS_AUTHORIZATIONS: &str = "/v1/sessions/authorizations";
/// Admin: `GET {PATH_ADMIN}/sessions` lists sessions (`?user=&device=&card=&active=true`);
/// `GET|DELETE {PATH_ADMIN}/sessions/{id}` shows or ends one.
pub const PATH_ADMIN_SESSIONS: &str = "/sessions";
/// Admin: `GET|POST {PATH_ADMIN}/clients` lists or registers OpenID Connect clients;
/// `GET|DELETE {PATH_ADMIN}/clients/{id}` shows or removes one.
pub const PATH_ADMIN_CLIENTS: &str = "/clients";

/// Why a session ended, as stored, audited and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEndReason {
    /// The device signed the worker out (badge removed, idle, key, switch, shutdown...).
    SignedOut,
    /// An administrator ended it.
    Admin,
    /// Its card was locked.
    CardLocked,
    /// Its card was revoked (or deleted).
    CardRevoked,
    /// Its user was locked.
    UserLocked,
    /// Its user was deleted.
    UserDeleted,
    /// It reached the server's maximum session age.
    MaxAge,
    /// A refresh token it had replaced was presented again (a stolen copy is assumed).
    RefreshReused,
}

impl SessionEndReason {
    /// Every reason.
    pub const ALL: [SessionEndReason; 8] = [
        SessionEndReason::SignedOut,
        SessionEndReason::Admin,
        SessionEndReason::CardLocked,
        SessionEndReason::CardRevoked,
        SessionEndReason::UserLocked,
        SessionEndReason::UserDeleted,
        SessionEndReason::MaxAge,
        SessionEndReason::RefreshReused,
    ];

    /// The reason as stored and sent (`card_locked`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEndReason::SignedOut => "signed_out",
            SessionEndReason::Admin => "admin",
            SessionEndReason::CardLocked => "card_locked",
            SessionEndReason::CardRevoked => "card_revoked",
            SessionEndReason::UserLocked => "user_locked",
            SessionEndReason::UserDeleted => "user_deleted",
            SessionEndReason::MaxAge => "max_age",
            SessionEndReason::RefreshReused => "refresh_reused",
        }
    }
}

impl fmt::Display for SessionEndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SessionEndReason {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
            .ok_or(())
    }
}

/// The body of `POST /v1/sessions/refresh`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRefreshRequest {
    /// The session's current refresh token.
    pub refresh_token: String,
}

impl fmt::Debug for SessionRefreshRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRefreshRequest")
            .field("refresh_token", &"REDACTED")
            .finish()
    }
}

/// `200` answer to `POST /v1/sessions/refresh`: a new access token and the refresh token
/// that replaces the one presented. A refused refresh answers `session_ended`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRefreshed {
    /// The new access token.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until `token` expires.
    pub expires_in: u64,
    /// The refresh token to present next time (the one presented is used up).
    pub refresh_token: String,
}

impl fmt::Debug for SessionRefreshed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRefreshed")
            .field("token", &"REDACTED")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &"REDACTED")
            .finish()
    }
}

/// `200` answer to `GET /v1/sessions/current`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// The session id.
    pub session_id: String,
    /// Whether it is still active.
    pub active: bool,
    /// When it ends on its own (RFC 3339), while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Why it ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_reason: Option<SessionEndReason>,
}

/// The body of `POST /v1/sessions/authorizations` (the kiosk's loopback authorization
/// endpoint passes on what the app's login asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationCodeRequest {
    /// The registered client.
    pub client_id: String,
    /// One of the client's registered redirect URIs, exactly.
    pub redirect_uri: String,
    /// The PKCE challenge: base64url SHA-256 of the verifier (43 characters).
    pub code_challenge: String,
    /// Must be `S256`.
    pub code_challenge_method: String,
    /// Space-separated scopes; `openid` for an ID token.
    pub scope: String,
    /// The app's `nonce`, put into the ID token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `200` answer to `POST /v1/sessions/authorizations`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationCodeGranted {
    /// The one-time authorization code (the app redeems it at the token endpoint).
    pub code: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The `iss` to put in the redirect (RFC 9207).
    pub iss: String,
}

impl fmt::Debug for AuthorizationCodeGranted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCodeGranted")
            .field("code", &"REDACTED")
            .field("expires_in", &self.expires_in)
            .field("iss", &self.iss)
            .finish()
    }
}

/// A session as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id (`sid`).
    pub id: String,
    /// The user.
    pub user_id: String,
    /// The device it was begun on.
    pub device: String,
    /// The serial of the card that signed it in.
    pub card_serial: String,
    /// What the sign-in proved (RFC 8176).
    pub amr: Vec<String>,
    /// When it began, RFC 3339.
    pub created_at: String,
    /// When it ends on its own, RFC 3339.
    pub expires_at: String,
    /// When it ended, RFC 3339.
    #[serde(default)]
    pub ended_at: Option<String>,
    /// Why it ended.
    #[serde(default)]
    pub ended_reason: Option<SessionEndReason>,
    /// The OpenID Connect clients that took part (they get a back-channel logout).
    #[serde(default)]
    pub clients: Vec<String>,
}

/// An OpenID Connect client as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The client id.
    pub id: String,
    /// A public client (no secret; PKCE is its only proof).
    pub public: bool,
    /// Its redirect URIs (exact match).
    pub redirect_uris: Vec<String>,
    /// Where back-channel logout tokens are posted.
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
    /// When it was registered, RFC 3339.
    pub created_at: String,
}

/// The body of `POST {PATH_ADMIN}/clients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// The client id (as a user id: letters, digits, `.`, `_`, `@`, `-`).
    pub id: String,
    /// Its redirect URIs: `https://...`, or `http://` on a loopback host.
    pub redirect_uris: Vec<String>,
    /// A public client (no secret).
    #[serde(default)]
    pub public: bool,
    /// Where back-channel logout tokens are posted (`https://...`, or `http://` on loopback).
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
}

/// `201` answer to `POST {PATH_ADMIN}/clients`: the client and, for a confidential one, its
/// secret, shown this once (the server keeps a hash).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedClient {
    /// The client.
    pub client: ClientRecord,
    /// Its secret (`None` for a public client).
    pub secret: Option<String>,
}

impl fmt::Debug for CreatedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedClient")
            .field("client", &self.client)
            .field("secret", &self.secret.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

/// A stable error code: the `error` of every error answer. Clients match on
/// it; the `message` beside it is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed (JSON, fields, JWS structure, `typ`, `alg`, `aud`, `iat`).
    InvalidRequest,
    /// The nonce was not issued by this server.
    ChallengeUnknown,
    /// The challenge expired.
    ChallengeExpired,
    /// The challenge was used already (a replay).
    ChallengeReused,
    /// The signature does not verify with the certificate's key.
    SignatureInvalid,
    /// The certificate does not chain to a trusted CA, or lacks the key usage.
    CertificateUntrusted,
    /// The certificate is outside its validity period.
    CertificateExpired,
    /// The certificate is revoked (CRL, or the card was revoked).
    CertificateRevoked,
    /// No single active user matches the certificate.
    UserUnknown,
    /// The user is locked.
    UserLocked,
    /// The card is locked.
    CardLocked,
    /// Too many failures from this card or device; retry later.
    RateLimited,
    /// Admin endpoints: no or a wrong credential.
    Unauthorized,
    /// Admin endpoints: no such user or card.
    NotFound,
    /// Admin endpoints: the user or card exists already.
    Conflict,
    /// Something failed on the server; details are in its log.
    Internal,
    /// Enrollment: no such enrollment code.
    EnrollmentCodeUnknown,
    /// Enrollment: the code was used already (codes are single use).
    EnrollmentCodeUsed,
    /// Enrollment: the code expired.
    EnrollmentCodeExpired,
    /// Enrollment or renewal: the CSR is not a DER PKCS#10 request, or its self-signature is bad.
    CsrInvalid,
    /// Enrollment or renewal: the key's algorithm or size is not allowed, or a renewal reuses the old key.
    KeyNotAllowed,
    /// Enrollment or renewal: this server does not issue certificates (no `[issuance]`).
    EnrollmentDisabled,
    /// Admin endpoints: a bare serial names cards of several issuers; the message names
    /// the qualified ids (`serial@issuer-id`) to use instead.
    CardAmbiguous,
    /// The assertion names a key slot this server does not accept for sign-in (only `9a` by default).
    SlotNotAllowed,
    /// The request body is larger than the endpoint takes.
    PayloadTooLarge,
    /// Readiness: the server cannot record a sign-in now (its database cannot be written).
    Unavailable,
    /// Challenges: the device is not registered (or has no credential yet), or sent no proof.
    DeviceUnknown,
    /// Challenges: an administrator disabled the device.
    DeviceDisabled,
    /// Challenges: the device proof is malformed, forged, expired, replayed, or made
    /// with a key that is not the device's registered one.
    DeviceProofInvalid,
    /// Sessions: the session has ended (signed out, ended by an administrator, its card or
    /// user locked or revoked, past its maximum age) or the refresh token is not its current one.
    SessionEnded,
    /// OpenID Connect: no registered client has this id.
    ClientUnknown,
    /// OpenID Connect: the redirect URI is not one the client registered (exact match).
    RedirectUriNotRegistered,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 32] = [
        ErrorCode::InvalidRequest,
        ErrorCode::ChallengeUnknown,
        ErrorCode::ChallengeExpired,
        ErrorCode::ChallengeReused,
        ErrorCode::SignatureInvalid,
        ErrorCode::CertificateUntrusted,
        ErrorCode::CertificateExpired,
        ErrorCode::CertificateRevoked,
        ErrorCode::UserUnknown,
        ErrorCode::UserLocked,
        ErrorCode::CardLocked,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Internal,
        ErrorCode::EnrollmentCodeUnknown,
        ErrorCode::EnrollmentCodeUsed,
        ErrorCode::EnrollmentCodeExpired,
        ErrorCode::CsrInvalid,
        ErrorCode::KeyNotAllowed,
        ErrorCode::EnrollmentDisabled,
        ErrorCode::CardAmbiguous,
        ErrorCode::SlotNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unavailable,
        ErrorCode::DeviceUnknown,
        ErrorCode::DeviceDisabled,
        ErrorCode::DeviceProofInvalid,
        ErrorCode::SessionEnded,
        ErrorCode::ClientUnknown,
        ErrorCode::RedirectUriNotRegistered,
    ];

    /// The code as it appears on the wire (`challenge_reused`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ChallengeUnknown => "challenge_unknown",
            ErrorCode::ChallengeExpired => "challenge_expired",
            ErrorCode::ChallengeReused => "challenge_reused",
            ErrorCode::SignatureInvalid => "signature_invalid",
            ErrorCode::CertificateUntrusted => "certificate_untrusted",
            ErrorCode::CertificateExpired => "certificate_expired",
            ErrorCode::CertificateRevoked => "certificate_revoked",
            ErrorCode::UserUnknown => "user_unknown",
            ErrorCode::UserLocked => "user_locked",
            ErrorCode::CardLocked => "card_locked",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
            ErrorCode::EnrollmentCodeUnknown => "enrollment_code_unknown",
            ErrorCode::EnrollmentCodeUsed => "enrollment_code_used",
            ErrorCode::EnrollmentCodeExpired => "enrollment_code_expired",
            ErrorCode::CsrInvalid => "csr_invalid",
            ErrorCode::KeyNotAllowed => "key_not_allowed",
            ErrorCode::EnrollmentDisabled => "enrollment_disabled",
            ErrorCode::CardAmbiguous => "card_ambiguous",
            ErrorCode::SlotNotAllowed => "slot_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DeviceUnknown => "device_unknown",
            ErrorCode::DeviceDisabled => "device_disabled",
            ErrorCode::DeviceProofInvalid => "device_proof_invalid",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::ClientUnknown => "client_unknown",
            ErrorCode::RedirectUriNotRegistered => "redirect_uri_not_registered",
        }
    }

    /// The HTTP status that carries this code.
    #[must_use]
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::CsrInvalid
            | ErrorCode::KeyNotAllowed
            | ErrorCode::ClientUnknown
            | ErrorCode::RedirectUriNotRegistered => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound
            | ErrorCode::EnrollmentCodeUnknown
            | ErrorCode::EnrollmentDisabled => 404,
            ErrorCode::EnrollmentCodeUsed | ErrorCode::EnrollmentCodeExpired => 410,
            ErrorCode::Conflict | ErrorCode::CardAmbiguous => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unavailable => 503,
            ErrorCode::DeviceDisabled => 403,
            // Authentication refusals: the request was understood and refused.
            _ => 401,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error answer: `{"error": code, "message": text}`. Never internal details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The stable code.
    pub error: ErrorCode,
    /// A sentence for people.
    pub message: String,
}

/// The JWS protected header of an assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionHeader {
    /// `RS256`, `RS512`, `ES256` or `ES384`.
    pub alg: String,
    /// [`ASSERTION_TYPE`].
    pub typ: String,
    /// The card certificate, standard base64 DER (RFC 7515 §4.1.6); the first
    /// entry is the card's, any further entries are intermediates.
    pub x5c: Vec<String>,
}

/// The JWS payload of an assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionPayload {
    /// The server origin, from the challenge.
    pub aud: String,
    /// The challenge nonce.
    pub nonce: String,
    /// The device id the challenge was issued to.
    pub device: String,
    /// When the card signed, Unix seconds.
    pub iat: i64,
    /// The key slot that signed, lower-case hex (`9a`).
    pub slot: String,
}

impl AssertionPayload {
    /// The claims answering `challenge` for `device`, signed at `iat` (Unix
    /// seconds) with the key in `slot` (lower-case hex, `9a`).
    #[must_use]
    pub fn for_challenge(
        challenge: &ChallengeResponse,
        device: impl Into<String>,
        slot: impl fmt::Display,
        iat: i64,
    ) -> Self {
        AssertionPayload {
            aud: challenge.aud.clone(),
            nonce: challenge.nonce.clone(),
            device: device.into(),
            iat,
            slot: slot.to_string(),
        }
    }
}

/// The claims of a session token (a JWT, ES256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The server origin that issued the token.
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// Who the token is for (the server's configured token audience).
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// The user's display name.
    pub name: String,
    /// The user's e-mail address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Authentication methods (RFC 8176), what the assertion's key slot proves:
    /// `["hwk", "sc", "pin"]` for `9a` (see [`amr_for_slot`]).
    pub amr: Vec<String>,
    /// The device the user signed in on.
    pub device: String,
    /// The server-side session the token was issued from.
    pub sid: String,
}

/// The body of `POST /v1/admin/credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminCredential {
    /// The credential's name (as a user id: letters, digits, `.`, `_`, `@`, `-`).
    pub name: String,
}

/// A named admin credential as the admin API shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCredentialRecord {
    /// Its name; `initial` is the server's admin token file.
    pub name: String,
    /// When it was made, RFC 3339 (unknown for `initial`).
    #[serde(default)]
    pub created_at: Option<String>,
    /// When it was revoked, RFC 3339; `None` while active.
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// The bearer token: only in the answer that made it, never again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminCredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCredentialRecord")
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("revoked_at", &self.revoked_at)
            .field("token", &self.token.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

/// The body of `POST /v1/sign-outs`: ends the session at the server. The session is the
/// bearer token's; or, when its tokens have long expired (a sign-out kept on disk while the
/// server was unreachable), `session_id` with a `device_proof` of the device it began on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignOutRequest {
    /// Why the session ended: 1 to 32 of `a-z`, `0-9` and `_`, such as `card_removed`,
    /// `idle`, `explicit`, `switched`, `expired`.
    pub reason: String,
    /// The session to end, without a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// A device proof (as for challenges) of the session's device, with `session_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_proof: Option<String>,
}

/// The answer to `POST /v1/sign-outs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignOutRecorded {
    /// `false` when this token's sign-out was recorded already (a replay changes nothing).
    pub recorded: bool,
}

/// A user as the admin API shows and takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// The user id (`uid`; the token's `sub`).
    pub id: String,
    /// The name to show.
    pub display_name: String,
    /// E-mail address.
    #[serde(default)]
    pub mail: Option<String>,
    /// Microsoft user principal name.
    #[serde(default)]
    pub upn: Option<String>,
    /// Employee number.
    #[serde(default)]
    pub employee_id: Option<String>,
    /// `active` or `locked` (ignored when adding: new users are active).
    #[serde(default = "active")]
    pub state: String,
}

fn active() -> String {
    "active".to_owned()
}

/// The answer to a user import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Users added.
    pub added: u32,
    /// Existing users whose fields changed (imports with `update=true`).
    #[serde(default)]
    pub updated: u32,
    /// Existing users the import left as they were (imports with `update=true`).
    #[serde(default)]
    pub unchanged: u32,
    /// Users refused, with the reason (such as "exists already").
    pub skipped: Vec<ImportSkip>,
    /// Every user not refused, in the import's order, with what was done.
    #[serde(default)]
    pub users: Vec<ImportedUser>,
    /// A dry run: every check ran, nothing was kept.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an import did (or, in a dry run, would do) with one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedUser {
    /// The user id.
    pub id: String,
    /// `added`, `updated` or `unchanged`.
    pub outcome: String,
    /// For `updated`: the fields that changed (`display_name`, `mail`, `upn`, `employee_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// The body of `PATCH /v1/admin/users/{id}`: each field given replaces the user's; an
/// empty `mail`, `upn` or `employee_id` removes it; `id` renames the user (their cards
/// and audit events follow).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// The new user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The new name to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The new e-mail address (`""` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    /// The new UPN (`""` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
    /// The new employee number (`""` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employee_id: Option<String>,
}

/// The answer to `DELETE /v1/admin/users/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeleted {
    /// The user id deleted.
    pub deleted: String,
    /// The user's cards this revoked (`serial@issuer-id`, reason `affiliationChanged`).
    pub revoked_cards: Vec<String>,
}

/// One user an import did not add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSkip {
    /// The user id (or the line, when there was none).
    pub id: String,
    /// Why.
    pub reason: String,
}

/// A card as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardRecord {
    /// What names the card unambiguously: `serial@issuer-id`.
    #[serde(default)]
    pub id: String,
    /// The certificate serial number (lower-case hex); unique per issuer only.
    pub serial: String,
    /// The first 16 hex digits of the SHA-256 of `issuer`.
    #[serde(default)]
    pub issuer_id: String,
    /// SHA-256 of the certificate (lower-case hex).
    pub fingerprint: String,
    /// The certificate subject.
    pub subject: String,
    /// The certificate issuer.
    pub issuer: String,
    /// The user it signed in as last.
    pub user_id: Option<String>,
    /// `active`, `locked` or `revoked`.
    pub state: String,
    /// First sign-in, RFC 3339.
    pub first_seen: String,
    /// Last sign-in, RFC 3339.
    pub last_seen: String,
}

/// The body of `POST /v1/admin/cards/{card}/revoke` (optional: no body is reason
/// `unspecified`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeCardRequest {
    /// The RFC 5280 reason name: `unspecified`, `keyCompromise`, `affiliationChanged`,
    /// `superseded`, `cessationOfOperation` or `privilegeWithdrawn`. It goes into the CRL
    /// entry's reason code and the audit.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An audit event as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number.
    pub id: i64,
    /// When, RFC 3339.
    pub time: String,
    /// What it records: an [`AuditKind`](crate::audit::AuditKind)'s text (`sign_out`).
    pub kind: String,
    /// `ok` or an error code: an [`AuditOutcome`](crate::audit::AuditOutcome)'s text.
    pub outcome: String,
    /// The device.
    pub device: Option<String>,
    /// The card's certificate serial.
    pub card_serial: Option<String>,
    /// The user.
    pub user_id: Option<String>,
    /// More, for people (never a PIN, a token or a whole nonce).
    pub detail: Option<String>,
}

/// The key a card generates for enrollment.
///
/// A key type on the wire and in `server.toml`, not a signature algorithm: which JWS
/// algorithm such a key signs is [`JwsAlgorithm`](crate::jose::JwsAlgorithm)'s business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
}

impl KeyAlgorithm {
    /// The name on the wire and in `server.toml` (`rsa2048`, `p256`, `p384`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not `rsa2048`, `p256` or `p384`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not rsa2048, p256 or p384")]
pub struct UnknownKeyAlgorithm {
    /// The name given.
    pub name: String,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = UnknownKeyAlgorithm;
    /// The wire name, in any case (`rsa2048`, `P256`, ...): a person may type it.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::P256,
            KeyAlgorithm::P384,
        ]
        .into_iter()
        .find(|algorithm| algorithm.as_str().eq_ignore_ascii_case(text))
        .ok_or_else(|| UnknownKeyAlgorithm {
            name: text.to_owned(),
        })
    }
}

/// An enrollment code with only its first characters shown.
fn redacted_code(code: &str) -> String {
    let shown: String = code.chars().take(4).collect();
    format!("{shown}… (redacted)")
}

/// `POST /v1/enrollments/inspect` body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectEnrollmentRequest {
    /// The enrollment code.
    pub code: String,
}

impl fmt::Debug for InspectEnrollmentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InspectEnrollmentRequest")
            .field("code", &redacted_code(&self.code))
            .finish()
    }
}

/// `200` answer to `POST /v1/enrollments/inspect`: what the card must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentOffer {
    /// Whom the certificate will name.
    pub user: UserInfo,
    /// The key the card must generate.
    pub key_algorithm: KeyAlgorithm,
    /// The PIV slot, lower-case hex (`9a`).
    pub slot: String,
    /// The PIN policy the card's new PIN must follow.
    pub pin_policy: crate::pin_policy::PinPolicy,
    /// When the code stops being accepted, RFC 3339.
    pub expires_at: String,
}

/// The card an enrollment is for, as the device read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardIdentity {
    /// The card's serial number (YubiKey GET SERIAL), when it has one.
    #[serde(default)]
    pub serial: Option<u32>,
    /// The CHUID GUID, lower-case hex, when the card has a CHUID.
    #[serde(default)]
    pub chuid_guid: Option<String>,
}

/// `POST /v1/enrollments` body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRequest {
    /// The enrollment code.
    pub code: String,
    /// The PKCS#10 request signed by the card's new key: DER, base64url without padding.
    pub csr: String,
    /// Which card.
    #[serde(default)]
    pub card: CardIdentity,
    /// The device doing the enrollment, when it has an id.
    #[serde(default)]
    pub device: Option<String>,
}

impl fmt::Debug for EnrollmentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentRequest")
            .field("code", &redacted_code(&self.code))
            .field("csr", &format_args!("{} base64 characters", self.csr.len()))
            .field("card", &self.card)
            .field("device", &self.device)
            .finish()
    }
}

/// `POST /v1/renewals` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalRequest {
    /// A compact JWS signed by the card's current key, exactly as for `POST /v1/assertions`.
    pub assertion: String,
    /// The PKCS#10 request signed by the card's new key: DER, base64url without padding.
    pub csr: String,
}

/// `200` answer to `POST /v1/renewals/confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalConfirmation {
    /// The new certificate's serial, lower-case hex.
    pub serial: String,
    /// Whether this call completed the renewal (`false`: it was complete already).
    pub completed: bool,
}

/// `201` answer to `POST /v1/enrollments` and `POST /v1/renewals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentResult {
    /// The card's new certificate: DER, base64url without padding.
    pub certificate: String,
    /// The issuing CA's certificate: DER, base64url without padding.
    pub ca_certificate: String,
    /// The new certificate's serial number, lower-case hex (as the admin API shows cards).
    pub serial: String,
    /// Whom the certificate names.
    pub user: UserInfo,
    /// When the certificate expires, RFC 3339.
    pub not_after: String,
}

/// Admin: `POST /v1/admin/enrollments` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentRequest {
    /// The user id.
    pub user: String,
    /// How long the code is accepted, seconds (at most the server's maximum).
    pub valid_for_seconds: u64,
}

/// Admin: `201` answer to `POST /v1/admin/enrollments`. The code is shown
/// once, here; the server keeps only its hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentCode {
    /// The enrollment code to give the worker.
    pub code: String,
    /// The code as a link: `pivtap://enroll?server=<origin>&code=<code>`.
    pub url: String,
    /// Whom it enrolls.
    pub user: UserInfo,
    /// When it stops being accepted, RFC 3339.
    pub expires_at: String,
}

impl fmt::Debug for EnrollmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentCode")
            .field("code", &redacted_code(&self.code))
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The enrollment link for `code` on the server at `origin`.
#[must_use]
pub fn enrollment_url(origin: &str, code: &str) -> String {
    let mut url = format!("{ENROLL_URL_PREFIX}?");
    url.push_str(
        &url::form_urlencoded::Serializer::new(String::new())
            .append_pair("server", origin)
            .append_pair("code", code)
            .finish(),
    );
    url
}

/// A `pivtap://enroll?...` link that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an enrollment link: expected pivtap://enroll?server=URL&code=CODE")]
pub struct BadEnrollmentUrl;

/// The server (when given) and the code of an enrollment link.
///
/// # Errors
/// [`BadEnrollmentUrl`] when it is not `pivtap://enroll?...` with a `code`.
pub fn parse_enrollment_url(link: &str) -> Result<(Option<String>, String), BadEnrollmentUrl> {
    let query = link
        .trim()
        .strip_prefix(ENROLL_URL_PREFIX)
        .and_then(|rest| rest.strip_prefix('?'))
        .ok_or(BadEnrollmentUrl)?;
    let mut server = None;
    let mut code = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "server" => server = Some(value.into_owned()),
            "code" => code = Some(value.into_owned()),
            _ => {}
        }
    }
    match code {
        Some(code) if !code.is_empty() => Ok((server.filter(|s| !s.is_empty()), code)),
        _ => Err(BadEnrollmentUrl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_algorithms_parse_from_their_wire_names_in_any_case() {
        for algorithm in [
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::P256,
            KeyAlgorithm::P384,
        ] {
            assert_eq!(algorithm.as_str().parse(), Ok(algorithm));
            assert_eq!(algorithm.as_str().to_uppercase().parse(), Ok(algorithm));
        }
        let error = "ed25519".parse::<KeyAlgorithm>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"ed25519\" is not rsa2048, p256 or p384"
        );
    }

    #[test]
    fn error_codes_serialise_as_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        let body = ErrorBody {
            error: ErrorCode::ChallengeReused,
            message: "This challenge was used already.".to_owned(),
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": "challenge_reused", "message": "This challenge was used already."})
        );
    }

    #[test]
    fn enrollment_links_round_trip() {
        let url = enrollment_url("https://auth.example.com:8443", "ABCD-EFGH+/");
        assert!(
            url.starts_with("pivtap://enroll?server=https%3A%2F%2Fauth"),
            "{url}"
        );
        let (server, code) = parse_enrollment_url(&url).unwrap();
        assert_eq!(server.as_deref(), Some("https://auth.example.com:8443"));
        assert_eq!(code, "ABCD-EFGH+/");
        assert_eq!(
            parse_enrollment_url("pivtap://enroll?code=XY").unwrap(),
            (None, "XY".to_owned())
        );
        for bad in [
            "https://x?code=1",
            "pivtap://enroll?server=x",
            "pivtap://enroll",
        ] {
            assert!(parse_enrollment_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn enrollment_codes_never_print_in_full() {
        let code = "K7QW-3MZP-XR9T-LD4F".to_owned();
        let request = EnrollmentRequest {
            code: code.clone(),
            csr: "MIIB".to_owned(),
            card: CardIdentity::default(),
            device: None,
        };
        assert!(!format!("{request:?}").contains(&code));
        let inspect = InspectEnrollmentRequest { code: code.clone() };
        assert!(!format!("{inspect:?}").contains(&code));
        let made = EnrollmentCode {
            url: enrollment_url("https://a", &code),
            code: code.clone(),
            user: UserInfo {
                id: "alice".to_owned(),
                display_name: "Alice".to_owned(),
                mail: None,
            },
            expires_at: "2026-01-01T00:00:00Z".to_owned(),
        };
        assert!(!format!("{made:?}").contains("MZP"));
        assert_eq!(
            serde_json::to_value(KeyAlgorithm::Rsa2048).unwrap(),
            serde_json::json!("rsa2048")
        );
    }

    #[test]
    fn device_ids() {
        assert!(is_valid_device_id("kiosk-07"));
        assert!(is_valid_device_id(&"k".repeat(64)));
        assert!(!is_valid_device_id(&"k".repeat(65)));
        for bad in ["", "kiosk 07", "../kiosk", "kiosk/07", "kïosk"] {
            assert!(!is_valid_device_id(bad), "{bad}");
        }
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        assert!(serde_json::from_str::<ChallengeRequest>(r#"{"device":"k","extra":1}"#).is_err());
        let with_proof: ChallengeRequest =
            serde_json::from_str(r#"{"device":"k","proof":"a.b.c"}"#).unwrap();
        assert_eq!(with_proof.proof.as_deref(), Some("a.b.c"));
        assert!(!format!("{with_proof:?}").contains("a.b.c"));
        let without = ChallengeRequest {
            device: "k".to_owned(),
            proof: None,
        };
        assert_eq!(
            serde_json::to_string(&without).unwrap(),
            r#"{"device":"k"}"#
        );
        assert!(
            serde_json::from_str::<AssertionPayload>(
                r#"{"aud":"a","nonce":"n","device":"d","iat":1,"slot":"9a","admin":true}"#
            )
            .is_err()
        );
    }

    #[test]
    fn tokens_never_print() {
        let response = AssertionResponse {
            token: "eyJhbGciOiJFUzI1NiJ9.secret.sig".to_owned(),
            token_type: "Bearer".to_owned(),
            expires_in: 3600,
            user: UserInfo {
                id: "alice".to_owned(),
                display_name: "Alice".to_owned(),
                mail: None,
            },
            session_id: "session-1".to_owned(),
            refresh_token: "secret-refresh".to_owned(),
            session_expires_in: 43_200,
        };
        assert!(!format!("{response:?}").contains("secret"));
    }
}
