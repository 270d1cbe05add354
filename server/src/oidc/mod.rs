//! The OpenID Connect provider: discovery, authorization codes for the kiosk, the token endpoint, userinfo, revocation and introspection.
//!
//! Only the kiosk gets authorization codes (`POST /v1/sessions/authorizations`, bearer = its
//! session's access token): the browser on the device is sent to the kiosk's loopback
//! authorization endpoint, which asks here. Apps redeem codes at `POST /oidc/token` (PKCE
//! S256 always), refresh there (rotation: a replaced token presented again ends the
//! session), and native apps trade the kiosk's token for one of their own (RFC 8693).
//! Every token is valid only while its session is active: each endpoint that takes one
//! reads the session row.
//!
//! Secrets (codes, refresh tokens, client secrets, access and ID tokens, PKCE verifiers)
//! never reach a log, an error message or the audit; the store keeps SHA-256 of codes,
//! refresh tokens and client secrets only.

pub mod client_auth;
pub mod endpoints;
pub mod form;
pub mod token_endpoint;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use crate::server::ServerState;
use crate::server::client_address::ClientAddress;
use crate::server::error::ApiError;
use crate::store::{NewAuditEvent, Session};
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::oidc::{OAuthErrorBody, OAuthErrorCode};
use pivtap_protocol::wire::ErrorCode;

/// The scopes a client may ask for.
pub const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// The scope of an access token from token exchange.
pub const EXCHANGE_SCOPE: &str = "openid profile email";

/// An OAuth error answer (RFC 6749 §5.2): 400 with [`OAuthErrorBody`], or 401 with
/// `WWW-Authenticate: Basic` for `invalid_client` after HTTP Basic authentication, or 429
/// with `Retry-After` when the source is over its refusal budget. Never cached.
#[derive(Debug)]
pub struct OAuthError {
    /// The code.
    pub code: OAuthErrorCode,
    /// A sentence for people (never a secret).
    pub description: &'static str,
    /// The status.
    pub status: StatusCode,
    /// For a 401: the `WWW-Authenticate` challenge.
    pub challenge: Option<&'static str>,
    /// For a 429: seconds to wait.
    pub retry_after: Option<u64>,
}

impl OAuthError {
    /// A 400 answer.
    #[must_use]
    pub fn new(code: OAuthErrorCode, description: &'static str) -> Self {
        Self {
            code,
            description,
            status: StatusCode::BAD_REQUEST,
            challenge: None,
            retry_after: None,
        }
    }

    /// `invalid_request`.
    #[must_use]
    pub fn invalid_request(description: &'static str) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, description)
    }

    /// `invalid_grant`.
    #[must_use]
    pub fn invalid_grant(description: &'static str) -> Self {
        Self::new(OAuthErrorCode::InvalidGrant, description)
    }

    /// `server_error` (500); the cause goes to the log.
    #[must_use]
    pub fn server_error() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..Self::new(OAuthErrorCode::ServerError, "the server failed; try again")
        }
    }

    /// The code the audit records this refusal with.
    fn audit_code(&self) -> ErrorCode {
        match self.code {
            OAuthErrorCode::InvalidClient => ErrorCode::Unauthorized,
            OAuthErrorCode::InvalidTarget => ErrorCode::ClientUnknown,
            OAuthErrorCode::InvalidToken => ErrorCode::Unauthorized,
            OAuthErrorCode::ServerError => ErrorCode::Internal,
            OAuthErrorCode::TemporarilyUnavailable => ErrorCode::RateLimited,
            _ => ErrorCode::InvalidRequest,
        }
    }
}

impl From<crate::store::StoreError> for OAuthError {
    fn from(error: crate::store::StoreError) -> Self {
        tracing::error!(%error, "store failure at the OpenID Connect provider");
        Self::server_error()
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = OAuthErrorBody {
            error: self.code,
            error_description: Some(self.description.to_owned()),
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(challenge) = self.challenge
            && let Ok(value) = HeaderValue::from_str(challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        no_store(response)
    }
}

/// `response` with `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
pub fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// Who an `oidc` audit event is about.
#[derive(Debug, Default, Clone)]
pub struct AuditSubject {
    /// The client, if known.
    pub client: Option<String>,
    /// The user, if known.
    pub user: Option<String>,
    /// The device, if known.
    pub device: Option<String>,
}

impl AuditSubject {
    /// The user and device of `session`, for `client`.
    #[must_use]
    pub fn of(session: &Session, client: &str) -> Self {
        Self {
            client: Some(client.to_owned()),
            user: Some(session.user_id.clone()),
            device: Some(session.device.clone()),
        }
    }

    fn event(&self, now: OffsetDateTime, outcome: AuditOutcome, what: &str) -> NewAuditEvent {
        let detail = match &self.client {
            Some(client) => format!("{what}, client {client}"),
            None => what.to_owned(),
        };
        NewAuditEvent {
            time: now,
            kind: AuditKind::Oidc,
            outcome,
            device: self.device.clone(),
            card_serial: None,
            user_id: self.user.clone(),
            detail: Some(detail),
        }
    }
}

/// Audits a successful `what` (never a token: names and ids only).
///
/// # Errors
/// `server_error` when the audit cannot be written.
pub async fn audit_ok(
    state: &ServerState,
    subject: &AuditSubject,
    what: &str,
) -> Result<(), OAuthError> {
    let event = subject.event(OffsetDateTime::now_utc(), AuditOutcome::Ok, what);
    state.store().audit(event).await.map_err(OAuthError::from)
}

/// Audits the refusal `error` of `what` and spends one of the source's refusals (so client
/// secrets, codes and tokens cannot be guessed fast): the answer is `error`, or 429
/// `temporarily_unavailable` past the budget (then nothing is audited).
pub async fn refuse(
    state: &ServerState,
    source: &ClientAddress,
    subject: &AuditSubject,
    what: &str,
    error: OAuthError,
) -> OAuthError {
    let code = error.audit_code();
    let event = subject.event(OffsetDateTime::now_utc(), AuditOutcome::Refused(code), what);
    let answer = state
        .refused(source, event, ApiError::new(code, error.description))
        .await;
    match answer.code {
        ErrorCode::RateLimited => OAuthError {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(answer.retry_after.map_or(1, |wait| wait.as_secs().max(1))),
            ..OAuthError::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "too many refused requests from this address; try again later",
            )
        },
        code if code == error.audit_code() => error,
        _ => OAuthError::server_error(),
    }
}

/// Whether `scope` is a space-separated list of known scopes, each once, not empty.
#[must_use]
pub fn is_valid_scope(scope: &str) -> bool {
    let scopes: Vec<&str> = scope.split(' ').collect();
    !scope.is_empty()
        && scopes
            .iter()
            .enumerate()
            .all(|(index, s)| SCOPES.contains(s) && !scopes[..index].contains(s))
}

/// Whether the space-separated `scope` includes `wanted`.
#[must_use]
pub fn has_scope(scope: &str, wanted: &str) -> bool {
    scope.split(' ').any(|s| s == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_known_ones_each_once() {
        assert!(is_valid_scope("openid"));
        assert!(is_valid_scope("openid profile email offline_access"));
        for bad in [
            "",
            "openid  profile",
            "openid admin",
            "openid openid",
            " openid",
        ] {
            assert!(!is_valid_scope(bad), "{bad:?}");
        }
        assert!(has_scope("openid email", "email"));
        assert!(!has_scope("openid emails", "email"));
    }
}
