//! OpenID Connect as pivtap speaks it: endpoint paths, grant and token types, the discovery document, token answers and errors (RFC 6749, 7009, 7662, 8693), and the claims of ID, access and logout tokens.
//!
//! The server (`pivtap-server`) answers with these types and the kiosk (`pivtap-kiosk`,
//! through `pivtap-client`) asks with them, so each fact is written once. The formats are
//! the standards'; field names are theirs (snake_case, as on the wire).

use std::fmt;

use serde::{Deserialize, Serialize};

/// `GET`: the provider's metadata (OpenID Connect Discovery 1.0).
pub const PATH_DISCOVERY: &str = "/.well-known/openid-configuration";
/// `POST` (form): the token endpoint: `authorization_code`, `refresh_token`, token exchange.
pub const PATH_TOKEN: &str = "/oidc/token";
/// `GET` or `POST`, bearer: a client's access token: the user's claims.
pub const PATH_USERINFO: &str = "/oidc/userinfo";
/// `POST` (form, client authentication): token revocation (RFC 7009).
pub const PATH_REVOCATION: &str = "/oidc/revoke";
/// `POST` (form, client authentication): token introspection (RFC 7662).
pub const PATH_INTROSPECTION: &str = "/oidc/introspect";
/// The kiosk's loopback authorization endpoint, on its local API (a path of the kiosk, not
/// of the server): the browser on the device is sent here by an app's login.
pub const KIOSK_AUTHORIZE_PATH: &str = "/oidc/authorize";
/// The `authorization_endpoint` the discovery document names unless configured otherwise:
/// the kiosk's loopback endpoint on the device the browser runs on.
pub const DEFAULT_AUTHORIZATION_ENDPOINT: &str = "http://127.0.0.1:7420/oidc/authorize";

/// `grant_type` of the authorization code flow.
pub const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
/// `grant_type` of a refresh.
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
/// `grant_type` of token exchange (RFC 8693): the kiosk trades its session's access token
/// for one with a native app's audience.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `subject_token_type` and `issued_token_type` of an access token (RFC 8693).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The only PKCE method accepted.
pub const PKCE_METHOD_S256: &str = "S256";
/// The JWT `typ` of an access token issued to a client (RFC 9068).
pub const ACCESS_TOKEN_JWT_TYPE: &str = "at+jwt";
/// The JWT `typ` of a back-channel logout token.
pub const LOGOUT_TOKEN_JWT_TYPE: &str = "logout+jwt";
/// The event a logout token carries (OpenID Connect Back-Channel Logout 1.0).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// `acr` of a sign-in with a smart card whose key needed the PIN.
pub const ACR_CARD_AND_PIN: &str = "urn:pivtap:acr:card-pin";
/// `acr` of a sign-in with a smart card key that needs no PIN (`9e`).
pub const ACR_CARD: &str = "urn:pivtap:acr:card";

/// The `acr` of a sign-in whose `amr` is `amr`: [`ACR_CARD_AND_PIN`] when it includes
/// `pin`, else [`ACR_CARD`].
#[must_use]
pub fn acr_for_amr(amr: &[String]) -> &'static str {
    if amr.iter().any(|method| method == "pin") {
        ACR_CARD_AND_PIN
    } else {
        ACR_CARD
    }
}

/// The discovery document (`/.well-known/openid-configuration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderMetadata {
    /// The issuer: the server's origin.
    pub issuer: String,
    /// The kiosk's loopback endpoint (on the device), or as configured.
    pub authorization_endpoint: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The userinfo endpoint.
    pub userinfo_endpoint: String,
    /// The JWKS.
    pub jwks_uri: String,
    /// RFC 7009.
    pub revocation_endpoint: String,
    /// RFC 7662.
    pub introspection_endpoint: String,
    /// `["code"]`.
    pub response_types_supported: Vec<String>,
    /// `["query"]`.
    pub response_modes_supported: Vec<String>,
    /// The grants above.
    pub grant_types_supported: Vec<String>,
    /// `["public"]`.
    pub subject_types_supported: Vec<String>,
    /// `["ES256"]`.
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// `client_secret_basic`, `client_secret_post`, `none`.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// As for the token endpoint.
    pub revocation_endpoint_auth_methods_supported: Vec<String>,
    /// As for the token endpoint.
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    /// `["S256"]`.
    pub code_challenge_methods_supported: Vec<String>,
    /// `openid`, `profile`, `email`, `offline_access`.
    pub scopes_supported: Vec<String>,
    /// The claims tokens may carry.
    pub claims_supported: Vec<String>,
    /// [`ACR_CARD_AND_PIN`], [`ACR_CARD`].
    pub acr_values_supported: Vec<String>,
    /// `true`.
    pub backchannel_logout_supported: bool,
    /// `true`: logout tokens carry `sid`.
    pub backchannel_logout_session_supported: bool,
    /// `true` (RFC 9207): redirects carry `iss`.
    pub authorization_response_iss_parameter_supported: bool,
}

/// A successful answer of the token endpoint (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The access token (a JWT with the client's audience).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until `access_token` expires.
    pub expires_in: u64,
    /// A refresh token bound to the session (not for token exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The ID token (with `openid` in the scope, not for token exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The granted scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Token exchange only: [`TOKEN_TYPE_ACCESS_TOKEN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"REDACTED")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "REDACTED"),
            )
            .field("id_token", &self.id_token.as_ref().map(|_| "REDACTED"))
            .field("scope", &self.scope)
            .field("issued_token_type", &self.issued_token_type)
            .finish()
    }
}

/// The `error` of an OAuth error answer (RFC 6749 §5.2, RFC 6750 §3.1, RFC 8693 §2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthErrorCode {
    /// A parameter is missing, repeated or malformed (PKCE missing included).
    InvalidRequest,
    /// Client authentication failed (unknown client, wrong secret, wrong method).
    InvalidClient,
    /// The code, refresh token or subject token is invalid, expired, used, for another
    /// client or redirect URI, fails PKCE, or its session has ended.
    InvalidGrant,
    /// The client may not use this grant.
    UnauthorizedClient,
    /// The grant type is not one pivtap supports.
    UnsupportedGrantType,
    /// A scope is unknown.
    InvalidScope,
    /// Token exchange: the audience is not a registered client.
    InvalidTarget,
    /// Userinfo: the access token is invalid, expired, revoked or its session has ended.
    InvalidToken,
    /// Revocation: the token type hint is not one pivtap knows.
    UnsupportedTokenType,
    /// Authorization: the request was refused.
    AccessDenied,
    /// The server failed.
    ServerError,
    /// Too many requests.
    TemporarilyUnavailable,
}

impl OAuthErrorCode {
    /// The code as it appears on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidGrant => "invalid_grant",
            OAuthErrorCode::UnauthorizedClient => "unauthorized_client",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::InvalidTarget => "invalid_target",
            OAuthErrorCode::InvalidToken => "invalid_token",
            OAuthErrorCode::UnsupportedTokenType => "unsupported_token_type",
            OAuthErrorCode::AccessDenied => "access_denied",
            OAuthErrorCode::ServerError => "server_error",
            OAuthErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth error answer: `{"error": code, "error_description": text}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthErrorBody {
    /// The code.
    pub error: OAuthErrorCode,
    /// A sentence for people (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// The claims of an ID token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdTokenClaims {
    /// The issuer.
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// The client id.
    pub aud: String,
    /// The client id (authorized party).
    pub azp: String,
    /// Expires, Unix seconds.
    pub exp: i64,
    /// Issued, Unix seconds.
    pub iat: i64,
    /// When the card signed the worker in, Unix seconds.
    pub auth_time: i64,
    /// The app's nonce from its authorization request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The session.
    pub sid: String,
    /// What the sign-in proved (RFC 8176: `hwk`, `sc`, `pin`).
    pub amr: Vec<String>,
    /// [`acr_for_amr`].
    pub acr: String,
    /// The device the session began on (the device the challenge was bound to).
    pub device: String,
    /// With `profile`: the display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// With `email`: the e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// The claims of an access token issued to a client (RFC 9068, `typ` [`ACCESS_TOKEN_JWT_TYPE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// The issuer.
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// The client id: each client's tokens are for it alone.
    pub aud: String,
    /// The client id.
    pub client_id: String,
    /// Expires, Unix seconds.
    pub exp: i64,
    /// Issued, Unix seconds.
    pub iat: i64,
    /// Unique token id (revocation records it).
    pub jti: String,
    /// When the card signed the worker in, Unix seconds.
    pub auth_time: i64,
    /// The session: the token is valid only while it is active.
    pub sid: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// What the sign-in proved.
    pub amr: Vec<String>,
    /// [`acr_for_amr`].
    pub acr: String,
    /// The device the session began on.
    pub device: String,
}

/// The claims of a back-channel logout token (`typ` [`LOGOUT_TOKEN_JWT_TYPE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutTokenClaims {
    /// The issuer.
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// The client id.
    pub aud: String,
    /// Issued, Unix seconds.
    pub iat: i64,
    /// Expires, Unix seconds (a few minutes after `iat`).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// The session that ended.
    pub sid: String,
    /// `{BACKCHANNEL_LOGOUT_EVENT: {}}`.
    pub events: serde_json::Map<String, serde_json::Value>,
}

/// The answer of the introspection endpoint (RFC 7662 §2.2): only `active: false` for a
/// token that is not (or no longer) valid, or not the caller's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Introspection {
    /// Whether the token is active.
    pub active: bool,
    /// Granted scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The client the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `access_token` or `refresh_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Expires, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// The user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acr_follows_whether_the_pin_was_proven() {
        let with_pin = ["hwk", "sc", "pin"].map(str::to_owned);
        assert_eq!(acr_for_amr(&with_pin), ACR_CARD_AND_PIN);
        let without = ["hwk", "sc"].map(str::to_owned);
        assert_eq!(acr_for_amr(&without), ACR_CARD);
    }

    #[test]
    fn oauth_errors_are_sent_by_their_rfc_names() {
        let body = OAuthErrorBody {
            error: OAuthErrorCode::InvalidGrant,
            error_description: Some("the code was used already".to_owned()),
        };
        let json = serde_json::to_value(&body).unwrap_or_default();
        assert_eq!(json["error"], "invalid_grant");
        assert_eq!(
            serde_json::to_value(OAuthErrorCode::UnsupportedGrantType).unwrap_or_default(),
            OAuthErrorCode::UnsupportedGrantType.as_str()
        );
    }

    #[test]
    fn token_answers_never_show_their_tokens_in_debug() {
        let answer = TokenResponse {
            access_token: "secret-access".to_owned(),
            token_type: "Bearer".to_owned(),
            expires_in: 300,
            refresh_token: Some("secret-refresh".to_owned()),
            id_token: Some("secret-id".to_owned()),
            scope: None,
            issued_token_type: None,
        };
        let shown = format!("{answer:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
