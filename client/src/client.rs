//! The HTTP client devices and admins use: challenges, assertions, the JWKS and the admin API, over TLS that trusts the system roots, given CA certificates, or one pinned server key.
//!
//! Retries with back-off happen only when the request never reached the
//! server (connection refused, DNS, TLS set-up), never on an HTTP answer:
//! a 4xx is final.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use pivtap_protocol::oidc::{self, OAuthErrorBody, OAuthErrorCode, TokenResponse};
use pivtap_protocol::pin_policy::PinPolicy;
use pivtap_protocol::wire::{
    self, AssertionRequest, AssertionResponse, AuditRecord, CardRecord, ChallengeRequest,
    ChallengeResponse, CreateEnrollmentRequest, EnrollmentCode, EnrollmentOffer, EnrollmentRequest,
    EnrollmentResult, ErrorBody, ErrorCode, ImportReport, InspectEnrollmentRequest, RenewalRequest,
    UserRecord,
};

/// How the client decides to trust the server.
#[derive(Clone)]
pub enum ServerTrust {
    /// The operating system's trusted roots.
    SystemRoots,
    /// These certificates (DER) as roots: a CA, or the server's own
    /// self-signed certificate (`tls.crt` from `pivtap server init`).
    Certificates(Vec<Vec<u8>>),
    /// Exactly one server key: the SHA-256 of its SubjectPublicKeyInfo.
    PinnedSpkiSha256([u8; 32]),
}

impl fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTrust::SystemRoots => f.write_str("SystemRoots"),
            ServerTrust::Certificates(certs) => write!(f, "Certificates({})", certs.len()),
            ServerTrust::PinnedSpkiSha256(hash) => {
                write!(f, "PinnedSpkiSha256({})", hex::encode(hash))
            }
        }
    }
}

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client could not be set up (URL, trust material).
    #[error("{reason}")]
    Config {
        /// Why.
        reason: String,
    },
    /// The server could not be reached (after retries), or the connection failed.
    #[error("cannot reach the server at {url}")]
    Network {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server's certificate is not trusted: not issued by the given CA,
    /// or its key does not match the pin.
    #[error(
        "the server at {url} is not the one this client trusts ({reason}); check --ca or --pin-sha256"
    )]
    UntrustedServer {
        /// The URL.
        url: String,
        /// What TLS reported.
        reason: String,
    },
    /// The server refused the request with a stable error code.
    #[error("the server refused: {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The stable code.
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// For `rate_limited`: when to try again.
        retry_after: Option<Duration>,
    },
    /// The server's OpenID Connect token endpoint refused with an OAuth error
    /// (RFC 6749 §5.2, RFC 8693 §2.2.2).
    #[error("the server refused: {error}{}", description.as_deref().map(|text| format!(": {}", pivtap_protocol::escape::escape(text))).unwrap_or_default())]
    OAuthRefused {
        /// HTTP status.
        status: u16,
        /// The OAuth error code.
        error: OAuthErrorCode,
        /// The server's sentence for people (never a secret).
        description: Option<String>,
    },
    /// The server answered something that is not pivtap's protocol.
    #[error("unexpected answer from the server: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
}

/// What kind of failure a [`ClientError`] is: the one place that tells a server that cannot
/// be reached from one that is not trusted and from one that refuses, so callers (the kiosk's
/// screen and log) never guess from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// This client's own settings are wrong (URL, trust material): nothing was sent.
    Setup,
    /// The server was not reached, or the connection failed before an answer.
    Network(NetworkFailure),
    /// TLS: the server's certificate is not issued by a trusted CA, its key does not match
    /// the pin, or it is not valid for the host name in the URL.
    Trust,
    /// The server answered with a refusal and this stable code.
    Refused(ErrorCode),
    /// The token endpoint answered with this OAuth error.
    OAuthRefused(OAuthErrorCode),
    /// Something answered that does not speak pivtap's protocol (a wrong URL or a proxy).
    Protocol,
}

/// How a request failed to reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkFailure {
    /// Nothing listens at the address (the server is down, or a wrong port).
    ConnectionRefused,
    /// No answer in time (the server or the network is silent).
    TimedOut,
    /// Another failure: the name did not resolve, no route, the connection was dropped.
    Other,
}

impl ClientError {
    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> FailureKind {
        match self {
            ClientError::Config { .. } => FailureKind::Setup,
            ClientError::Network { source, .. } => FailureKind::Network(network_failure(source)),
            ClientError::UntrustedServer { .. } => FailureKind::Trust,
            ClientError::Refused { code, .. } => FailureKind::Refused(*code),
            ClientError::OAuthRefused { error, .. } => FailureKind::OAuthRefused(*error),
            ClientError::Protocol { .. } => FailureKind::Protocol,
        }
    }
}

/// Sorts a transport error by what the network did, from the typed errors in its chain.
fn network_failure(error: &reqwest::Error) -> NetworkFailure {
    if error.is_timeout() {
        return NetworkFailure::TimedOut;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return NetworkFailure::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return NetworkFailure::TimedOut,
                _ => {}
            }
        }
        source = current.source();
    }
    NetworkFailure::Other
}

impl ServerTrust {
    /// Roots from a PEM file (one or more certificates).
    ///
    /// # Errors
    /// [`ClientError::Config`] when the file cannot be read or holds no certificate.
    pub fn from_pem_file(path: &std::path::Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|error| ClientError::Config {
            reason: format!("cannot read {}: {error}", path.display()),
        })?;
        let certificates: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
            .filter_map(Result::ok)
            .filter(|pem| pem.label == "CERTIFICATE")
            .map(|pem| pem.contents)
            .collect();
        if certificates.is_empty() {
            return Err(ClientError::Config {
                reason: format!("{} holds no PEM certificate", path.display()),
            });
        }
        Ok(ServerTrust::Certificates(certificates))
    }

    /// A pin as `pivtap server init` prints it: `sha256//BASE64`, plain base64, or hex.
    ///
    /// # Errors
    /// [`ClientError::Config`] when it is not 32 bytes in one of those forms.
    pub fn from_pin(text: &str) -> Result<Self, ClientError> {
        let trimmed = text.trim();
        let value = trimmed.strip_prefix("sha256//").unwrap_or(trimmed);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()
            .filter(|b| b.len() == 32)
            .or_else(|| hex::decode(value).ok().filter(|b| b.len() == 32));
        match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            Some(hash) => Ok(ServerTrust::PinnedSpkiSha256(hash)),
            None => Err(ClientError::Config {
                reason: "a server pin is the SHA-256 of its public key: sha256//BASE64 (as `pivtap server init` prints it), base64 or hex".to_owned(),
            }),
        }
    }
}

/// Talks to one pivtap server.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    retries: u32,
    /// The device's own credential: challenge requests carry its proof.
    device: Option<Arc<crate::device::DeviceCredential>>,
    /// The server's origin (the `aud` of device proofs), when it is not `base`.
    origin: Option<String>,
}

/// Network attempts for a request that never reached the server.
const DEFAULT_RETRIES: u32 = 3;

/// How long an idle connection to the server is kept for the next request: less than
/// the server's default header time-out (10 s), which also ends an idle HTTP/1.1
/// keep-alive connection, so the client lets go first and never sends a request on a
/// connection the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(8);

impl Client {
    /// A client for `server` (`https://host:port`; `http://` only for a loopback address).
    ///
    /// # Errors
    /// [`ClientError::Config`] for a bad URL or trust material.
    pub fn new(server: &str, trust: ServerTrust, timeout: Duration) -> Result<Self, ClientError> {
        let base = server.trim_end_matches('/').to_owned();
        // No scheme is guessed: it decides whether the connection is encrypted, and
        // `host:port` would otherwise parse as a URL whose scheme is the host name.
        if !base.contains("://") {
            return Err(ClientError::Config {
                reason: format!(
                    "{server:?} has no scheme: write the URL in full, such as https://{base}"
                ),
            });
        }
        let url = reqwest::Url::parse(&base).map_err(|error| ClientError::Config {
            reason: format!("{server:?} is not a URL: {error}"),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&url) => {}
            "http" => {
                return Err(ClientError::Config {
                    reason: "plain http is only for a server on this machine (loopback); use https"
                        .to_owned(),
                });
            }
            other => {
                return Err(ClientError::Config {
                    reason: format!("unsupported URL scheme {other:?}; use https"),
                });
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!("pivtap/", env!("CARGO_PKG_VERSION")));
        let builder = match trust {
            ServerTrust::SystemRoots => builder,
            ServerTrust::Certificates(certificates) => {
                let mut roots = rustls::RootCertStore::empty();
                for der in certificates {
                    roots
                        .add(CertificateDer::from(der))
                        .map_err(|error| ClientError::Config {
                            reason: format!("a trusted certificate is not usable: {error}"),
                        })?;
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(tls_config_error)?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.tls_backend_preconfigured(config)
            }
            ServerTrust::PinnedSpkiSha256(pin) => {
                let verifier = Arc::new(PinnedKey {
                    pin,
                    provider: Arc::clone(&provider),
                });
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(tls_config_error)?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
                builder.tls_backend_preconfigured(config)
            }
        };
        let http = builder.build().map_err(|error| ClientError::Config {
            reason: format!("cannot set up HTTPS: {error}"),
        })?;
        Ok(Client {
            base,
            http,
            retries: DEFAULT_RETRIES,
            device: None,
            origin: None,
        })
    }

    /// This client, for a server whose origin (`server.toml` `origin`) is not the URL it
    /// is reached at (a relay or a proxy that rewrites the host): device proofs name it.
    #[must_use]
    pub fn with_origin(mut self, origin: &str) -> Self {
        self.origin = Some(origin.trim_end_matches('/').to_owned());
        self
    }

    /// This client with a device credential: its challenge requests are signed with it.
    #[must_use]
    pub fn with_device_credential(
        mut self,
        credential: Arc<crate::device::DeviceCredential>,
    ) -> Self {
        self.device = Some(credential);
        self
    }

    /// The device credential, if the client has one.
    #[must_use]
    pub fn device_credential(&self) -> Option<&Arc<crate::device::DeviceCredential>> {
        self.device.as_ref()
    }

    /// The server's base URL.
    #[must_use]
    pub fn server(&self) -> &str {
        &self.base
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<RequestBody<'_, B>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.request_bytes(method, path, bearer, body).await?;
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Protocol {
            reason: format!("HTTP {status}: {error}"),
        })
    }

    /// Sends a request and answers the body of a successful answer as bytes;
    /// an error answer becomes [`ClientError::Refused`].
    async fn request_bytes<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<RequestBody<'_, B>>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            let mut request = self.http.request(method.clone(), &url);
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            request = match &body {
                Some(RequestBody::Json(value)) => request.json(value),
                Some(RequestBody::Csv(text)) => request
                    .header("content-type", "text/csv")
                    .body(text.to_string()),
                Some(RequestBody::Form(text)) => request
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(text.to_string()),
                None => request,
            };
            match request.send().await {
                Ok(response) => {
                    let refusals = match body {
                        Some(RequestBody::Form(_)) => Refusals::OAuth,
                        _ => Refusals::Pivtap,
                    };
                    return decode(response, refusals).await;
                }
                // A server that fails the trust check will fail it again: no retry.
                Err(error)
                    if error.is_connect()
                        && attempt < self.retries
                        && tls_refusal(&error).is_none() =>
                {
                    attempt += 1;
                    let delay = Duration::from_millis(200 << attempt);
                    tracing::debug!(%url, attempt, ?delay, "server unreachable, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(source) => {
                    return Err(match tls_refusal(&source) {
                        Some(reason) => ClientError::UntrustedServer { url, reason },
                        None => ClientError::Network { url, source },
                    });
                }
            }
        }
    }

    /// `GET /readyz`: whether the server answers and can record a sign-in now; a cheap
    /// probe (no credential, nothing recorded).
    ///
    /// # Errors
    /// [`ClientError`]; a server that cannot record sign-ins is
    /// [`ClientError::Refused`] with [`ErrorCode::Unavailable`].
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.request_bytes::<()>(Method::GET, wire::PATH_READY, None, None)
            .await
            .map(|_| ())
    }

    /// `POST /v1/challenges`
    ///
    /// # Errors
    /// [`ClientError`].
    /// With a device credential for `device`, the request carries a fresh device proof
    /// (for this client's server URL, the server's origin, or [`Client::with_origin`]).
    pub async fn challenge(&self, device: &str) -> Result<ChallengeResponse, ClientError> {
        let proof = self
            .device
            .as_ref()
            .filter(|credential| credential.device() == device)
            .and_then(|_| self.device_proof());
        let body = ChallengeRequest {
            device: device.to_owned(),
            proof,
        };
        self.request(
            Method::POST,
            wire::PATH_CHALLENGES,
            None,
            Some(RequestBody::Json(&body)),
        )
        .await
    }

    /// `POST /v1/devices/enroll`: a device enrollment code and a CSR (DER) for the
    /// device's own key in, the device certificate out.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the server's code for a refused code or CSR.
    pub async fn enroll_device(
        &self,
        code: &str,
        csr_der: &[u8],
    ) -> Result<wire::DeviceEnrollmentResult, ClientError> {
        let body = wire::DeviceEnrollmentRequest {
            code: code.to_owned(),
            csr: pivtap_protocol::jose::base64url_encode(csr_der),
        };
        self.request(
            Method::POST,
            wire::PATH_DEVICE_ENROLLMENTS,
            None,
            Some(RequestBody::Json(&body)),
        )
        .await
    }

    /// The whole device enrollment: a new P-256 key made here, its CSR and `code` sent,
    /// the device certificate back; answers the key (it never left this process) and the
    /// certificate (DER), checked to belong together.
    ///
    /// # Errors
    /// [`ClientError::Refused`] for a refused code; [`ClientError::Protocol`] when the
    /// answer is not a certificate for the key.
    #[cfg(feature = "enroll")]
    pub async fn enroll_new_device(
        &self,
        code: &str,
    ) -> Result<(crate::device::NewDeviceKey, Vec<u8>), ClientError> {
        let protocol = |reason: String| ClientError::Protocol { reason };
        let key =
            crate::device::NewDeviceKey::generate().map_err(|error| protocol(error.to_string()))?;
        let result = self.enroll_device(code, &key.csr_der).await?;
        let der = pivtap_protocol::jose::base64url_decode(&result.certificate)
            .map_err(|_| protocol("the device certificate is not base64url".to_owned()))?;
        crate::device::DeviceCredential::from_parts(&key.key_pem, &der)
            .map_err(|error| protocol(error.to_string()))?;
        Ok((key, der))
    }

    /// `POST /v1/assertions`: trades a card-signed assertion for a session token.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the server's code for a refused assertion.
    pub async fn sign_in(&self, assertion: &str) -> Result<AssertionResponse, ClientError> {
        let body = AssertionRequest {
            assertion: assertion.to_owned(),
        };
        self.request(
            Method::POST,
            wire::PATH_ASSERTIONS,
            None,
            Some(RequestBody::Json(&body)),
        )
        .await
    }

    /// A fresh device proof of this client's device credential, for this client's server
    /// URL, the server's origin, or [`Client::with_origin`]; `None` without a credential.
    fn device_proof(&self) -> Option<String> {
        let credential = self.device.as_ref()?;
        let aud = self.origin.as_deref().unwrap_or(&self.base);
        Some(credential.proof(aud, time::OffsetDateTime::now_utc()))
    }

    /// `POST /v1/sign-outs`: reports the end of the session `token` opened, with why
    /// (`card_removed`, `idle`, ...). Answers whether it was recorded (`false` for a
    /// replay).
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `unauthorized` for a token the server does not
    /// accept (more than a few minutes past its expiry, or not its own).
    pub async fn sign_out(&self, token: &str, reason: &str) -> Result<bool, ClientError> {
        let body = wire::SignOutRequest {
            reason: reason.to_owned(),
            session_id: None,
            device_proof: None,
        };
        self.post_sign_out(Some(token), &body).await
    }

    /// `POST /v1/sign-outs` without a token: ends session `session_id`, proven by a fresh
    /// proof of this client's device credential (the session's device). For a sign-out kept
    /// while the server could not be reached, whose tokens have long expired. Answers whether
    /// it was recorded (`false` when the session had ended already).
    ///
    /// # Errors
    /// [`ClientError::Config`] without a device credential; [`ClientError::Refused`] with
    /// `unauthorized` or `device_proof_invalid` when the server does not take the proof.
    pub async fn sign_out_session(
        &self,
        session_id: &str,
        reason: &str,
    ) -> Result<bool, ClientError> {
        let device_proof = self.device_proof().ok_or_else(|| ClientError::Config {
            reason: "a sign-out by session id needs the device credential ([server] device_key)"
                .to_owned(),
        })?;
        let body = wire::SignOutRequest {
            reason: reason.to_owned(),
            session_id: Some(session_id.to_owned()),
            device_proof: Some(device_proof),
        };
        self.post_sign_out(None, &body).await
    }

    async fn post_sign_out(
        &self,
        token: Option<&str>,
        body: &wire::SignOutRequest,
    ) -> Result<bool, ClientError> {
        let recorded: wire::SignOutRecorded = self
            .request(
                Method::POST,
                wire::PATH_SIGN_OUTS,
                token,
                Some(RequestBody::Json(body)),
            )
            .await?;
        Ok(recorded.recorded)
    }

    /// `POST /v1/sessions/refresh`: trades the session's refresh token for a new access
    /// token and the refresh token that replaces it.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `session_ended` once the session has ended (or the
    /// refresh token was used already).
    pub async fn refresh_session(
        &self,
        refresh_token: &str,
    ) -> Result<wire::SessionRefreshed, ClientError> {
        let body = wire::SessionRefreshRequest {
            refresh_token: refresh_token.to_owned(),
        };
        self.request(
            Method::POST,
            wire::PATH_SESSIONS_REFRESH,
            None,
            Some(RequestBody::Json(&body)),
        )
        .await
    }

    /// `GET /v1/sessions/current`: whether the session of `token` (the kiosk's session
    /// access token) is still active, and why it ended.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `unauthorized` for a token the server does not accept,
    /// `session_ended` for a session that has ended.
    pub async fn session_status(&self, token: &str) -> Result<wire::SessionStatus, ClientError> {
        self.request::<(), _>(Method::GET, wire::PATH_SESSIONS_CURRENT, Some(token), None)
            .await
    }

    /// `POST /v1/sessions/authorizations`: an authorization code for a registered client,
    /// from the session of `token` (the kiosk's loopback authorization endpoint).
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `client_unknown`, `redirect_uri_not_registered`,
    /// `invalid_request` (PKCE, scope) or `session_ended`.
    pub async fn authorization_code(
        &self,
        token: &str,
        request: &wire::AuthorizationCodeRequest,
    ) -> Result<wire::AuthorizationCodeGranted, ClientError> {
        self.request(
            Method::POST,
            wire::PATH_SESSIONS_AUTHORIZATIONS,
            Some(token),
            Some(RequestBody::Json(request)),
        )
        .await
    }

    /// `POST /oidc/token`, token exchange (RFC 8693): trades the session's access token
    /// `token` for an access token for registered client `client_id` (a native app on the
    /// device).
    ///
    /// # Errors
    /// [`ClientError::OAuthRefused`] with `invalid_target` for a client that is not
    /// registered, `invalid_grant` for a session that has ended.
    pub async fn exchange_token(
        &self,
        token: &str,
        client_id: &str,
    ) -> Result<TokenResponse, ClientError> {
        let form = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", oidc::GRANT_TOKEN_EXCHANGE)
                .append_pair("subject_token", token)
                .append_pair("subject_token_type", oidc::TOKEN_TYPE_ACCESS_TOKEN)
                .append_pair("audience", client_id)
                .finish(),
        );
        self.request::<(), _>(
            Method::POST,
            oidc::PATH_TOKEN,
            None,
            Some(RequestBody::Form(&form)),
        )
        .await
    }

    /// `GET /.well-known/jwks.json`
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn jwks(&self) -> Result<serde_json::Value, ClientError> {
        self.request::<(), _>(Method::GET, wire::PATH_JWKS, None, None)
            .await
    }

    /// `GET /v1/pin-policy`: the rules new PINs must follow.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn pin_policy(&self) -> Result<PinPolicy, ClientError> {
        self.request::<(), _>(Method::GET, wire::PATH_PIN_POLICY, None, None)
            .await
    }

    /// `POST /v1/enrollments/inspect`: what an enrollment code offers (user,
    /// key algorithm, slot, PIN policy). Does not use the code up.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `enrollment_code_unknown`, `enrollment_code_used`,
    /// `enrollment_code_expired`, `enrollment_disabled`, `user_locked`.
    pub async fn inspect_enrollment(&self, code: &str) -> Result<EnrollmentOffer, ClientError> {
        let body = InspectEnrollmentRequest {
            code: code.to_owned(),
        };
        self.request(
            Method::POST,
            wire::PATH_ENROLLMENTS_INSPECT,
            None,
            Some(RequestBody::Json(&body)),
        )
        .await
    }

    /// `POST /v1/enrollments`: trades an enrollment code and a CSR for a certificate.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the enrollment codes, `csr_invalid` or `key_not_allowed`.
    pub async fn complete_enrollment(
        &self,
        request: &EnrollmentRequest,
    ) -> Result<EnrollmentResult, ClientError> {
        self.request(
            Method::POST,
            wire::PATH_ENROLLMENTS,
            None,
            Some(RequestBody::Json(request)),
        )
        .await
    }

    /// `POST /v1/renewals`: trades a sign-in assertion made with the current
    /// key and a CSR for the new key for a new certificate.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with any sign-in code, `csr_invalid` or `key_not_allowed`.
    pub async fn renew(&self, request: &RenewalRequest) -> Result<EnrollmentResult, ClientError> {
        self.request(
            Method::POST,
            wire::PATH_RENEWALS,
            None,
            Some(RequestBody::Json(request)),
        )
        .await
    }

    /// `POST /v1/renewals/confirm`: an assertion made with the new key and certificate
    /// completes the renewal (the old certificate is revoked, superseded).
    ///
    /// # Errors
    /// [`ClientError::Refused`] with any sign-in code.
    pub async fn confirm_renewal(
        &self,
        assertion: &str,
    ) -> Result<wire::RenewalConfirmation, ClientError> {
        let body = wire::AssertionRequest {
            assertion: assertion.to_owned(),
        };
        self.request(
            Method::POST,
            wire::PATH_RENEWALS_CONFIRM,
            None,
            Some(RequestBody::Json(&body)),
        )
        .await
    }

    /// `POST /v1/renewals/resume`: an assertion presenting the old certificate, signed by
    /// the card's new key, fetches the pending certificate of a renewal that was cut.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `signature_invalid` when no pending renewal has the
    /// key, or any sign-in code.
    pub async fn resume_renewal(&self, assertion: &str) -> Result<EnrollmentResult, ClientError> {
        let body = wire::AssertionRequest {
            assertion: assertion.to_owned(),
        };
        self.request(
            Method::POST,
            wire::PATH_RENEWALS_RESUME,
            None,
            Some(RequestBody::Json(&body)),
        )
        .await
    }

    /// `GET /v1/crl`: the issuing CA's revocation list, DER.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `enrollment_disabled` when the server issues nothing.
    pub async fn crl(&self) -> Result<Vec<u8>, ClientError> {
        let (_, bytes) = self
            .request_bytes::<()>(Method::GET, wire::PATH_CRL, None, None)
            .await?;
        Ok(bytes)
    }

    /// The admin API with the admin credential.
    #[must_use]
    pub fn admin<'a>(&'a self, token: &'a str) -> AdminClient<'a> {
        AdminClient {
            client: self,
            token,
        }
    }
}

enum RequestBody<'a, B> {
    Json(&'a B),
    Csv(&'a str),
    /// `application/x-www-form-urlencoded`, already encoded (may hold secrets: never logged);
    /// its error answers are OAuth's.
    Form(&'a str),
}

/// The TLS certificate error behind a failed request, if that is what it was.
fn tls_refusal(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(rustls::Error::InvalidCertificate(problem)) =
            current.downcast_ref::<rustls::Error>()
        {
            return Some(match problem {
                rustls::CertificateError::ApplicationVerificationFailure => {
                    "its key does not match the pin".to_owned()
                }
                other => format!("{other:?}"),
            });
        }
        source = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    None
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn tls_config_error(error: rustls::Error) -> ClientError {
    ClientError::Config {
        reason: format!("cannot set up TLS: {error}"),
    }
}

/// How an endpoint words its refusals.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusals {
    /// pivtap's [`ErrorBody`].
    Pivtap,
    /// OAuth's [`OAuthErrorBody`] (the token endpoint).
    OAuth,
}

async fn decode(
    response: reqwest::Response,
    refusals: Refusals,
) -> Result<(StatusCode, Vec<u8>), ClientError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let url = response.url().to_string();
    let bytes = response
        .bytes()
        .await
        .map_err(|source| ClientError::Network { url, source })?;
    if status.is_success() {
        return Ok((status, bytes.to_vec()));
    }
    if refusals == Refusals::OAuth {
        return Err(match serde_json::from_slice::<OAuthErrorBody>(&bytes) {
            Ok(body) => ClientError::OAuthRefused {
                status: status.as_u16(),
                error: body.error,
                description: body.error_description,
            },
            Err(_) => ClientError::Protocol {
                reason: format!("HTTP {status} without an OAuth error body"),
            },
        });
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Err(ClientError::Refused {
            status: status.as_u16(),
            code: body.error,
            message: body.message,
            retry_after,
        }),
        Err(_) => Err(ClientError::Protocol {
            reason: format!(
                "HTTP {} without a pivtap error body{}",
                status,
                if status == StatusCode::NOT_FOUND {
                    " (is this a pivtap server?)"
                } else {
                    ""
                }
            ),
        }),
    }
}

/// The admin API (`/v1/admin/`), with the admin bearer credential.
#[derive(Debug)]
pub struct AdminClient<'a> {
    client: &'a Client,
    token: &'a str,
}

impl AdminClient<'_> {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let path = format!("{}{path}", wire::PATH_ADMIN);
        self.client
            .request::<(), T>(Method::GET, &path, Some(self.token), None)
            .await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let path = format!("{}{path}", wire::PATH_ADMIN);
        self.client
            .request(
                Method::POST,
                &path,
                Some(self.token),
                body.map(RequestBody::Json),
            )
            .await
    }

    /// Every user.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, ClientError> {
        self.get("/users").await
    }

    /// Adds a user.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `conflict` when the id exists.
    pub async fn add_user(&self, user: &UserRecord) -> Result<UserRecord, ClientError> {
        self.post("/users", Some(user)).await
    }

    /// Imports users from JSON records.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn import_users(&self, users: &[UserRecord]) -> Result<ImportReport, ClientError> {
        self.import(ImportSource::Json(users), ImportOptions::default())
            .await
    }

    /// Imports users from CSV text (header `id,display_name,mail,upn,employee_id`).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn import_users_csv(&self, csv: &str) -> Result<ImportReport, ClientError> {
        self.import(ImportSource::Csv(csv), ImportOptions::default())
            .await
    }

    /// Imports users from JSON records or CSV text, updating existing users and only
    /// trying (a dry run) as `options` say.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn import(
        &self,
        source: ImportSource<'_>,
        options: ImportOptions,
    ) -> Result<ImportReport, ClientError> {
        let mut path = format!("{}/users/import", wire::PATH_ADMIN);
        let query: Vec<&str> = [
            options.update.then_some("update=true"),
            options.dry_run.then_some("dry_run=true"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let body: RequestBody<'_, &[UserRecord]> = match &source {
            ImportSource::Json(users) => RequestBody::Json(users),
            ImportSource::Csv(text) => RequestBody::Csv(text),
        };
        self.client
            .request(Method::POST, &path, Some(self.token), Some(body))
            .await
    }

    /// Changes user `id` (fields of `change` that are set; `id` renames).
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found`, `conflict` (the new id or an attribute
    /// is another user's) or `invalid_request`.
    pub async fn update_user(
        &self,
        id: &str,
        change: &wire::UserUpdate,
    ) -> Result<UserRecord, ClientError> {
        let path = format!("{}/users/{}", wire::PATH_ADMIN, path_segment(id));
        self.client
            .request(
                Method::PATCH,
                &path,
                Some(self.token),
                Some(RequestBody::Json(change)),
            )
            .await
    }

    /// Deletes user `id`; the server revokes their cards and answers which.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found`.
    pub async fn delete_user(&self, id: &str) -> Result<wire::UserDeleted, ClientError> {
        let path = format!("{}/users/{}", wire::PATH_ADMIN, path_segment(id));
        self.client
            .request::<(), _>(Method::DELETE, &path, Some(self.token), None)
            .await
    }

    /// Locks (`true`) or unlocks a user.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found` for an unknown id.
    pub async fn set_user_locked(&self, id: &str, locked: bool) -> Result<UserRecord, ClientError> {
        let verb = if locked { "lock" } else { "unlock" };
        self.post::<(), _>(&format!("/users/{}/{verb}", path_segment(id)), None)
            .await
    }

    /// Every card seen.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn list_cards(&self) -> Result<Vec<CardRecord>, ClientError> {
        self.get("/cards").await
    }

    /// `lock`, `unlock` or `revoke` a card: `card` is its id (`serial@issuer-id`, as
    /// [`CardRecord::id`]) or its certificate serial when no other issuer's card has it.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found`, `card_ambiguous` for a serial of several
    /// issuers, or `conflict` to unlock a revoked card.
    pub async fn card_action(
        &self,
        serial: &str,
        action: CardAction,
    ) -> Result<CardRecord, ClientError> {
        let verb = match action {
            CardAction::Lock => "lock",
            CardAction::Unlock => "unlock",
            CardAction::Revoke => "revoke",
        };
        self.post::<(), _>(&format!("/cards/{}/{verb}", path_segment(serial)), None)
            .await
    }

    /// Revokes a card for good, with an RFC 5280 reason name (`keyCompromise`, ...) that
    /// goes into its CRL entry and the audit; `None` is `unspecified`.
    ///
    /// # Errors
    /// As [`AdminClient::card_action`]; `invalid_request` for an unknown reason.
    pub async fn revoke_card(
        &self,
        card: &str,
        reason: Option<&str>,
    ) -> Result<CardRecord, ClientError> {
        let body = wire::RevokeCardRequest {
            reason: reason.map(str::to_owned),
        };
        self.post(
            &format!("/cards/{}/revoke", path_segment(card)),
            Some(&body),
        )
        .await
    }

    /// Makes a single-use enrollment code for `user`, accepted for `valid_for`.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `user_unknown`, `user_locked`,
    /// `enrollment_disabled`, or `invalid_request` for a validity out of range.
    pub async fn create_enrollment(
        &self,
        user: &str,
        valid_for: Duration,
    ) -> Result<EnrollmentCode, ClientError> {
        let body = CreateEnrollmentRequest {
            user: user.to_owned(),
            valid_for_seconds: valid_for.as_secs(),
        };
        self.post(wire::PATH_ADMIN_ENROLLMENTS, Some(&body)).await
    }

    /// Every registered device.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn list_devices(&self) -> Result<Vec<wire::DeviceRecord>, ClientError> {
        self.get(wire::PATH_ADMIN_DEVICES).await
    }

    /// Registers a device; answers its one-time enrollment code (the server's default
    /// validity when `valid_for` is `None`).
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `conflict` when the id is registered, or
    /// `invalid_request` for a bad id or validity.
    pub async fn add_device(
        &self,
        id: &str,
        valid_for: Option<Duration>,
    ) -> Result<wire::DeviceCode, ClientError> {
        let body = wire::CreateDeviceRequest {
            id: id.to_owned(),
            validity_seconds: valid_for.map(|valid| valid.as_secs()),
        };
        self.post(wire::PATH_ADMIN_DEVICES, Some(&body)).await
    }

    /// Enables (`true`) or disables a device.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found` for an unknown id.
    pub async fn set_device_enabled(
        &self,
        id: &str,
        enabled: bool,
    ) -> Result<wire::DeviceRecord, ClientError> {
        let verb = if enabled { "enable" } else { "disable" };
        self.post::<(), _>(
            &format!("{}/{}/{verb}", wire::PATH_ADMIN_DEVICES, path_segment(id)),
            None,
        )
        .await
    }

    /// Removes a device.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found` for an unknown id.
    pub async fn remove_device(&self, id: &str) -> Result<(), ClientError> {
        let path = format!(
            "{}{}/{}",
            wire::PATH_ADMIN,
            wire::PATH_ADMIN_DEVICES,
            path_segment(id)
        );
        self.client
            .request_bytes::<()>(Method::DELETE, &path, Some(self.token), None)
            .await?;
        Ok(())
    }

    /// Deletes a revoked card's record (`serial@issuer-id`, or an unambiguous serial); it
    /// stays on the revocation list.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found`, `card_ambiguous`, or `conflict` for a
    /// card not revoked.
    pub async fn delete_card(&self, serial: &str) -> Result<(), ClientError> {
        let path = format!("{}/cards/{}", wire::PATH_ADMIN, path_segment(serial));
        self.client
            .request_bytes::<()>(Method::DELETE, &path, Some(self.token), None)
            .await?;
        Ok(())
    }

    /// Every admin credential (`initial` is the server's token file).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn list_credentials(&self) -> Result<Vec<wire::AdminCredentialRecord>, ClientError> {
        self.get(wire::PATH_ADMIN_CREDENTIALS).await
    }

    /// Adds a named admin credential; the answer holds its token, shown this once.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `conflict` for a name in use, `invalid_request` for a
    /// bad name.
    pub async fn add_credential(
        &self,
        name: &str,
    ) -> Result<wire::AdminCredentialRecord, ClientError> {
        let body = wire::CreateAdminCredential {
            name: name.to_owned(),
        };
        self.post(wire::PATH_ADMIN_CREDENTIALS, Some(&body)).await
    }

    /// Revokes an admin credential for good.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found`, or `conflict` when it is revoked already
    /// or the last active one.
    pub async fn revoke_credential(
        &self,
        name: &str,
    ) -> Result<wire::AdminCredentialRecord, ClientError> {
        self.post::<(), _>(
            &format!(
                "{}/{}/revoke",
                wire::PATH_ADMIN_CREDENTIALS,
                path_segment(name)
            ),
            None,
        )
        .await
    }

    /// Audit events, newest first.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, ClientError> {
        let limit = filter.limit.map(|limit| limit.to_string());
        let before = filter.before.map(|before| before.to_string());
        let path = with_query(
            "/audit",
            &[
                ("user", filter.user.as_deref()),
                ("card", filter.card.as_deref()),
                ("device", filter.device.as_deref()),
                ("outcome", filter.outcome.as_deref()),
                ("kind", filter.kind.as_deref()),
                ("since", filter.since.as_deref()),
                ("until", filter.until.as_deref()),
                ("limit", limit.as_deref()),
                ("before", before.as_deref()),
            ],
        );
        self.get(&path).await
    }

    /// Sessions, newest first (at most 1000): by user, device and card (serial), active
    /// ones only with `active_only`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn list_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<wire::SessionRecord>, ClientError> {
        let path = with_query(
            wire::PATH_ADMIN_SESSIONS,
            &[
                ("user", filter.user.as_deref()),
                ("device", filter.device.as_deref()),
                ("card", filter.card.as_deref()),
                ("active", filter.active_only.then_some("true")),
            ],
        );
        self.get(&path).await
    }

    /// One session.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found` for an unknown id.
    pub async fn get_session(&self, id: &str) -> Result<wire::SessionRecord, ClientError> {
        self.get(&format!(
            "{}/{}",
            wire::PATH_ADMIN_SESSIONS,
            path_segment(id)
        ))
        .await
    }

    /// Ends a session (reason `admin`); answers it as it is now.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found` for an unknown id.
    pub async fn end_session(&self, id: &str) -> Result<wire::SessionRecord, ClientError> {
        let path = format!(
            "{}{}/{}",
            wire::PATH_ADMIN,
            wire::PATH_ADMIN_SESSIONS,
            path_segment(id)
        );
        self.client
            .request::<(), _>(Method::DELETE, &path, Some(self.token), None)
            .await
    }

    /// Registers an OpenID Connect client; the answer holds a confidential client's
    /// secret, shown this once.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `conflict` for an id in use, `invalid_request` for a
    /// bad id or URI.
    pub async fn add_client(
        &self,
        client: &wire::NewClient,
    ) -> Result<wire::CreatedClient, ClientError> {
        self.post(wire::PATH_ADMIN_CLIENTS, Some(client)).await
    }

    /// Every registered OpenID Connect client.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn list_clients(&self) -> Result<Vec<wire::ClientRecord>, ClientError> {
        self.get(wire::PATH_ADMIN_CLIENTS).await
    }

    /// One client.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found` for an unknown id.
    pub async fn get_client(&self, id: &str) -> Result<wire::ClientRecord, ClientError> {
        self.get(&format!(
            "{}/{}",
            wire::PATH_ADMIN_CLIENTS,
            path_segment(id)
        ))
        .await
    }

    /// Removes a client.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `not_found` for an unknown id.
    pub async fn remove_client(&self, id: &str) -> Result<(), ClientError> {
        let path = format!(
            "{}{}/{}",
            wire::PATH_ADMIN,
            wire::PATH_ADMIN_CLIENTS,
            path_segment(id)
        );
        self.client
            .request_bytes::<()>(Method::DELETE, &path, Some(self.token), None)
            .await?;
        Ok(())
    }
}

/// Which sessions to list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// By user id.
    pub user: Option<String>,
    /// By device id.
    pub device: Option<String>,
    /// By card serial (or `serial@issuer-id`).
    pub card: Option<String>,
    /// Active sessions only.
    pub active_only: bool,
}

/// `path` with the query of the `pairs` that have a value (URL-encoded).
fn with_query(path: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| value.map(|value| format!("{name}={}", url_encode(value))))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// The users of an import: JSON records or CSV text.
#[derive(Debug, Clone, Copy)]
pub enum ImportSource<'a> {
    /// User records.
    Json(&'a [UserRecord]),
    /// CSV with the header `id,display_name,mail,upn,employee_id`.
    Csv(&'a str),
}

/// How an import treats existing users.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Update existing users (else they are refused as existing).
    pub update: bool,
    /// Check everything, keep nothing.
    pub dry_run: bool,
}

/// What to do with a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardAction {
    /// Refuse it until unlocked.
    Lock,
    /// Accept it again.
    Unlock,
    /// Refuse it for good.
    Revoke,
}

/// Which audit events to fetch.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// By user id.
    pub user: Option<String>,
    /// By card serial.
    pub card: Option<String>,
    /// By device id.
    pub device: Option<String>,
    /// By outcome (`ok` or an error code).
    pub outcome: Option<String>,
    /// By kind: an [`AuditKind`](pivtap_protocol::audit::AuditKind)'s text, or `sign_in` /
    /// `sign_in_refused` (assertions by outcome; the server's `store::AuditKindFilter`).
    pub kind: Option<String>,
    /// Only events older than the event with this id (the last of the page before).
    pub before: Option<i64>,
    /// From this time (RFC 3339).
    pub since: Option<String>,
    /// Until this time (RFC 3339).
    pub until: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
}

fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn path_segment(value: &str) -> String {
    url_encode(value)
}

/// Trusts exactly one server key, by the SHA-256 of its SubjectPublicKeyInfo.
#[derive(Debug)]
struct PinnedKey {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use x509_parser::prelude::FromDer;
        let (_, certificate) = x509_parser::certificate::X509Certificate::from_der(
            end_entity.as_ref(),
        )
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let hash: [u8; 32] = Sha256::digest(certificate.public_key().raw).into();
        if bool::from(hash.ct_eq(&self.pin)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_read_in_every_printed_form() {
        let hash = [7u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(hash);
        for text in [format!("sha256//{b64}"), b64.clone(), hex::encode(hash)] {
            assert!(
                matches!(ServerTrust::from_pin(&text), Ok(ServerTrust::PinnedSpkiSha256(h)) if h == hash),
                "{text}"
            );
        }
        assert!(ServerTrust::from_pin("sha256//short").is_err());
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let t = Duration::from_secs(1);
        assert!(Client::new("http://127.0.0.1:8080", ServerTrust::SystemRoots, t).is_ok());
        assert!(Client::new("http://localhost:8080", ServerTrust::SystemRoots, t).is_ok());
        assert!(Client::new("http://[::1]:8080", ServerTrust::SystemRoots, t).is_ok());
        let refused =
            Client::new("http://auth.example.com", ServerTrust::SystemRoots, t).unwrap_err();
        assert!(refused.to_string().contains("loopback"), "{refused}");
        assert!(Client::new("ftp://x", ServerTrust::SystemRoots, t).is_err());
        assert!(Client::new("not a url", ServerTrust::SystemRoots, t).is_err());
    }

    #[test]
    fn a_url_without_a_scheme_is_refused_with_the_url_to_write() {
        let t = Duration::from_secs(1);
        for (given, suggested) in [
            ("pivtap.example:8443", "https://pivtap.example:8443"),
            ("127.0.0.1:8443/", "https://127.0.0.1:8443"),
            ("localhost", "https://localhost"),
        ] {
            let refused = Client::new(given, ServerTrust::SystemRoots, t).unwrap_err();
            let message = refused.to_string();
            assert!(
                message.contains("no scheme") && message.contains(suggested),
                "{given}: {message}"
            );
        }
    }

    /// Serves one HTTP request on loopback with `answer` (status line, headers and body);
    /// hands back the request as it arrived.
    async fn answer_once(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                let read = stream.read(&mut buffer).await.unwrap();
                request.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
                if read == 0 {
                    break;
                }
            }
            stream.write_all(answer.as_bytes()).await.unwrap();
            stream.shutdown().await.ok();
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, task)
    }

    fn json_answer(status: &str, body: &str) -> &'static str {
        Box::leak(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    }

    #[tokio::test]
    async fn token_exchange_is_a_form_post_and_its_oauth_error_is_typed_without_the_token() {
        let body = r#"{"error":"invalid_target","error_description":"no such client"}"#;
        let (url, served) = answer_once(json_answer("400 Bad Request", body)).await;
        let client = Client::new(&url, ServerTrust::SystemRoots, Duration::from_secs(5)).unwrap();
        let error = client
            .exchange_token("session-token-SECRET", "payroll app")
            .await
            .unwrap_err();
        let request = served.await.unwrap();
        assert!(request.starts_with("POST /oidc/token "), "{request}");
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/x-www-form-urlencoded"),
            "{request}"
        );
        let form = request.split_once("\r\n\r\n").unwrap().1;
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        let value = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(value("grant_type"), Some(oidc::GRANT_TOKEN_EXCHANGE));
        assert_eq!(value("subject_token"), Some("session-token-SECRET"));
        assert_eq!(
            value("subject_token_type"),
            Some(oidc::TOKEN_TYPE_ACCESS_TOKEN)
        );
        assert_eq!(value("audience"), Some("payroll app"));
        assert!(
            matches!(
                &error,
                ClientError::OAuthRefused {
                    status: 400,
                    error: OAuthErrorCode::InvalidTarget,
                    description: Some(text),
                } if text == "no such client"
            ),
            "{error:?}"
        );
        assert_eq!(
            error.kind(),
            FailureKind::OAuthRefused(OAuthErrorCode::InvalidTarget)
        );
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains("SECRET"), "{shown}");
        }
        assert!(error.to_string().contains("invalid_target"), "{error}");
    }

    #[tokio::test]
    async fn token_exchange_answers_the_token_response() {
        let body = r#"{"access_token":"at-SECRET","token_type":"Bearer","expires_in":300,"scope":"openid profile email","issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#;
        let (url, served) = answer_once(json_answer("200 OK", body)).await;
        let client = Client::new(&url, ServerTrust::SystemRoots, Duration::from_secs(5)).unwrap();
        let answer = client.exchange_token("t", "app").await.unwrap();
        served.await.unwrap();
        assert_eq!(answer.access_token, "at-SECRET");
        assert_eq!(answer.expires_in, 300);
        assert!(!format!("{answer:?}").contains("SECRET"));
    }

    #[tokio::test]
    async fn session_refresh_status_and_authorization_use_their_paths() {
        let refreshed =
            r#"{"token":"t2","token_type":"Bearer","expires_in":300,"refresh_token":"r2-SECRET"}"#;
        let (url, served) = answer_once(json_answer("200 OK", refreshed)).await;
        let client = Client::new(&url, ServerTrust::SystemRoots, Duration::from_secs(5)).unwrap();
        let answer = client.refresh_session("r1-SECRET").await.unwrap();
        let request = served.await.unwrap();
        assert!(
            request.starts_with("POST /v1/sessions/refresh "),
            "{request}"
        );
        assert!(
            request.ends_with(r#"{"refresh_token":"r1-SECRET"}"#),
            "{request}"
        );
        assert_eq!(answer.refresh_token, "r2-SECRET");

        let ended = r#"{"error":"session_ended","message":"the session has ended"}"#;
        let (url, served) = answer_once(json_answer("401 Unauthorized", ended)).await;
        let client = Client::new(&url, ServerTrust::SystemRoots, Duration::from_secs(5)).unwrap();
        let error = client.refresh_session("r1-SECRET").await.unwrap_err();
        served.await.unwrap();
        assert_eq!(error.kind(), FailureKind::Refused(ErrorCode::SessionEnded));
        assert!(!format!("{error:?}{error}").contains("SECRET"));

        let status = r#"{"session_id":"s1","active":false,"ended_reason":"card_locked"}"#;
        let (url, served) = answer_once(json_answer("200 OK", status)).await;
        let client = Client::new(&url, ServerTrust::SystemRoots, Duration::from_secs(5)).unwrap();
        let answer = client.session_status("kiosk-token").await.unwrap();
        let request = served.await.unwrap();
        assert!(
            request.starts_with("GET /v1/sessions/current "),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer kiosk-token"),
            "{request}"
        );
        assert!(!answer.active);
        assert_eq!(
            answer.ended_reason,
            Some(wire::SessionEndReason::CardLocked)
        );

        let granted = r#"{"code":"c-SECRET","expires_in":60,"iss":"https://auth.example"}"#;
        let (url, served) = answer_once(json_answer("200 OK", granted)).await;
        let client = Client::new(&url, ServerTrust::SystemRoots, Duration::from_secs(5)).unwrap();
        let request = wire::AuthorizationCodeRequest {
            client_id: "app".to_owned(),
            redirect_uri: "http://127.0.0.1:9000/cb".to_owned(),
            code_challenge: "c".repeat(43),
            code_challenge_method: "S256".to_owned(),
            scope: "openid".to_owned(),
            nonce: None,
        };
        let answer = client
            .authorization_code("kiosk-token", &request)
            .await
            .unwrap();
        let sent = served.await.unwrap();
        assert!(
            sent.starts_with("POST /v1/sessions/authorizations "),
            "{sent}"
        );
        assert_eq!(answer.code, "c-SECRET");
    }

    #[tokio::test]
    async fn a_sign_out_by_session_id_needs_the_device_credential() {
        let client = Client::new(
            "http://127.0.0.1:9",
            ServerTrust::SystemRoots,
            Duration::from_secs(1),
        )
        .unwrap();
        let error = client.sign_out_session("s1", "idle").await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::Setup);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            url_encode("2026-11-22T08:00:00+01:00"),
            "2026-11-22T08%3A00%3A00%2B01%3A00"
        );
        assert_eq!(path_segment("a/b"), "a%2Fb");
    }
}
