//! Discovery, the kiosk's authorization codes, userinfo, revocation (RFC 7009) and introspection (RFC 7662).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::client_auth::authenticate;
use super::form::Form;
use super::{OAuthError, SCOPES, has_scope, is_valid_scope, no_store};
use crate::server::ServerState;
use crate::server::client_address::ClientAddress;
use crate::server::error::ApiError;
use crate::server::handlers::json_body;
use crate::server::sessions::{anonymous_event, session_ended};
use crate::store::{NewAuditEvent, NewAuthorizationCode, Session, secret_hash};
use crate::token::unverified_audience;
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::nonce::random_base64url;
use pivtap_protocol::oidc::{
    ACCESS_TOKEN_JWT_TYPE, ACR_CARD, ACR_CARD_AND_PIN, AccessTokenClaims, GRANT_AUTHORIZATION_CODE,
    GRANT_REFRESH_TOKEN, GRANT_TOKEN_EXCHANGE, Introspection, OAuthErrorCode, PATH_INTROSPECTION,
    PATH_REVOCATION, PATH_TOKEN, PATH_USERINFO, PKCE_METHOD_S256, ProviderMetadata,
};
use pivtap_protocol::wire::{
    AuthorizationCodeGranted, AuthorizationCodeRequest, ErrorCode, PATH_JWKS, SessionClaims,
};

/// Longest `nonce` an app may pass through to its ID token.
pub const MAX_NONCE_CHARS: usize = 256;

/// Length of a PKCE S256 challenge: base64url of 32 bytes.
const CHALLENGE_CHARS: usize = 43;

/// `GET /.well-known/openid-configuration`: the provider's metadata, URLs from the origin.
pub async fn discovery(State(state): State<ServerState>) -> impl IntoResponse {
    let settings = state.settings();
    let url = |path: &str| format!("{}{path}", settings.origin);
    let strings = |items: &[&str]| items.iter().map(|item| (*item).to_owned()).collect();
    let auth_methods = strings(&["client_secret_basic", "client_secret_post", "none"]);
    let metadata = ProviderMetadata {
        issuer: settings.origin.clone(),
        authorization_endpoint: settings.oidc.authorization_endpoint.clone(),
        token_endpoint: url(PATH_TOKEN),
        userinfo_endpoint: url(PATH_USERINFO),
        jwks_uri: url(PATH_JWKS),
        revocation_endpoint: url(PATH_REVOCATION),
        introspection_endpoint: url(PATH_INTROSPECTION),
        response_types_supported: strings(&["code"]),
        response_modes_supported: strings(&["query"]),
        grant_types_supported: strings(&[
            GRANT_AUTHORIZATION_CODE,
            GRANT_REFRESH_TOKEN,
            GRANT_TOKEN_EXCHANGE,
        ]),
        subject_types_supported: strings(&["public"]),
        id_token_signing_alg_values_supported: strings(&[crate::token::TOKEN_ALGORITHM]),
        token_endpoint_auth_methods_supported: auth_methods.clone(),
        revocation_endpoint_auth_methods_supported: auth_methods.clone(),
        introspection_endpoint_auth_methods_supported: auth_methods,
        code_challenge_methods_supported: strings(&[PKCE_METHOD_S256]),
        scopes_supported: strings(&SCOPES),
        claims_supported: strings(&[
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "sid",
            "amr",
            "acr",
            "azp",
            "device",
            "name",
            "email",
        ]),
        acr_values_supported: strings(&[ACR_CARD_AND_PIN, ACR_CARD]),
        backchannel_logout_supported: true,
        backchannel_logout_session_supported: true,
        authorization_response_iss_parameter_supported: true,
    };
    ([(header::CACHE_CONTROL, "max-age=300")], Json(metadata))
}

/// The kiosk session a request's bearer token belongs to: a valid session token of this
/// server (issuer and audience) whose session is active now (read from the store).
///
/// # Errors
/// `unauthorized` without a valid token (audited, spends the source's refusals),
/// `session_ended` (401) when its session is not active.
pub async fn kiosk_session(
    state: &ServerState,
    source: &ClientAddress,
    headers: &HeaderMap,
    what: &str,
) -> Result<(SessionClaims, Session), ApiError> {
    let now = OffsetDateTime::now_utc();
    let claims = crate::server::sessions::bearer_claims(state, headers, now, false);
    let Some(claims) = claims else {
        let event = anonymous_event(
            AuditKind::Oidc,
            ErrorCode::Unauthorized,
            now,
            format!("{what}: no valid session token"),
        );
        let refusal = ApiError::new(
            ErrorCode::Unauthorized,
            "this needs the session's access token as its bearer credential",
        );
        return Err(state.refused(source, event, refusal).await);
    };
    match state.store().get_session(&claims.sid).await? {
        Some(session) if session.is_active(now) && session.user_id == claims.sub => {
            Ok((claims, session))
        }
        _ => Err(session_ended()),
    }
}

/// `POST /v1/sessions/authorizations`: the kiosk asks for an authorization code for a
/// registered client, on behalf of its active session.
pub async fn authorize(
    State(state): State<ServerState>,
    source: ClientAddress,
    headers: HeaderMap,
    body: Result<Json<AuthorizationCodeRequest>, JsonRejection>,
) -> Result<Json<AuthorizationCodeGranted>, ApiError> {
    const WHAT: &str = "authorization code";
    let (_, session) = kiosk_session(&state, &source, &headers, WHAT).await?;
    let request = json_body(body)?;
    let now = OffsetDateTime::now_utc();
    let refuse = |code: ErrorCode, message: &'static str| {
        let event = NewAuditEvent {
            time: now,
            kind: AuditKind::Oidc,
            outcome: AuditOutcome::Refused(code),
            device: Some(session.device.clone()),
            card_serial: Some(session.card.serial.clone()),
            user_id: Some(session.user_id.clone()),
            detail: Some(format!("{WHAT}: {message}")),
        };
        (event, ApiError::new(code, message))
    };
    let client = state.store().get_client(&request.client_id).await?;
    let problem = match &client {
        None => Some((ErrorCode::ClientUnknown, "the client is not registered")),
        Some(client) if !client.redirect_uris.contains(&request.redirect_uri) => Some((
            ErrorCode::RedirectUriNotRegistered,
            "the redirect URI is not one the client registered",
        )),
        Some(_) if request.code_challenge_method != PKCE_METHOD_S256 => Some((
            ErrorCode::InvalidRequest,
            "code_challenge_method must be S256 (PKCE)",
        )),
        Some(_)
            if request.code_challenge.len() != CHALLENGE_CHARS
                || !request
                    .code_challenge
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) =>
        {
            Some((
                ErrorCode::InvalidRequest,
                "code_challenge must be 43 base64url characters (PKCE S256)",
            ))
        }
        Some(_) if !is_valid_scope(&request.scope) => Some((
            ErrorCode::InvalidRequest,
            "scope must list openid, profile, email or offline_access, each once",
        )),
        Some(_)
            if request
                .nonce
                .as_ref()
                .is_some_and(|nonce| nonce.is_empty() || nonce.len() > MAX_NONCE_CHARS) =>
        {
            Some((
                ErrorCode::InvalidRequest,
                "nonce must be 1 to 256 characters",
            ))
        }
        Some(_) => None,
    };
    if let Some((code, message)) = problem {
        let (event, error) = refuse(code, message);
        return Err(state.refused(&source, event, error).await);
    }
    let lifetime = state.settings().oidc.code_lifetime();
    let code = random_base64url::<32>();
    state
        .store()
        .add_authorization_code(&NewAuthorizationCode {
            code_hash: secret_hash(&code),
            client_id: request.client_id.clone(),
            session_id: session.id.clone(),
            redirect_uri: request.redirect_uri,
            code_challenge: request.code_challenge,
            scope: request.scope,
            nonce: request.nonce,
            created_at: now,
            expires_at: now + lifetime,
        })
        .await?;
    state
        .store()
        .audit(NewAuditEvent {
            time: now,
            kind: AuditKind::Oidc,
            outcome: AuditOutcome::Ok,
            device: Some(session.device.clone()),
            card_serial: Some(session.card.serial.clone()),
            user_id: Some(session.user_id.clone()),
            detail: Some(format!("{WHAT} given, client {}", request.client_id)),
        })
        .await?;
    Ok(Json(AuthorizationCodeGranted {
        code,
        expires_in: lifetime.as_secs(),
        iss: state.settings().origin.clone(),
    }))
}

/// A client access token that is valid now: signature, `typ` `at+jwt`, issuer, audience
/// (`audience`, or the one it names when any client's will do), not revoked, its client
/// still registered, its session active.
async fn valid_access_token(
    state: &ServerState,
    token: &str,
    audience: Option<&str>,
) -> Result<Option<AccessTokenClaims>, OAuthError> {
    let now = OffsetDateTime::now_utc();
    let Some(audience) = audience
        .map(str::to_owned)
        .or_else(|| unverified_audience(token))
    else {
        return Ok(None);
    };
    let claims = state.tokens().verify_as::<AccessTokenClaims>(
        token,
        ACCESS_TOKEN_JWT_TYPE,
        &audience,
        &state.settings().origin,
        now,
    );
    let Ok(claims) = claims else {
        return Ok(None);
    };
    if claims.client_id != claims.aud
        || state.store().is_access_token_revoked(&claims.jti).await?
        // A removed client's tokens end with it.
        || state.store().get_client(&claims.client_id).await?.is_none()
    {
        return Ok(None);
    }
    let active = state
        .store()
        .get_session(&claims.sid)
        .await?
        .is_some_and(|session| session.is_active(now) && session.user_id == claims.sub);
    Ok(active.then_some(claims))
}

/// `401` with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3.1).
fn invalid_token() -> Response {
    let mut response = OAuthError {
        status: StatusCode::UNAUTHORIZED,
        ..OAuthError::new(
            OAuthErrorCode::InvalidToken,
            "the access token is invalid, expired, revoked or its session has ended",
        )
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    response
}

/// `GET|POST /oidc/userinfo`: the user's claims for a client's access token (bearer),
/// `name` with `profile` and `email` with `email` in its scope.
pub async fn userinfo(State(state): State<ServerState>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(crate::server::admin::bearer_token);
    let Some(token) = token else {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return no_store(response);
    };
    let claims = match valid_access_token(&state, token, None).await {
        Ok(Some(claims)) => claims,
        Ok(None) => return invalid_token(),
        Err(error) => return error.into_response(),
    };
    let user = match state.store().get_user(&claims.sub).await {
        Ok(Some(user)) => user,
        Ok(None) => return invalid_token(),
        Err(error) => return OAuthError::from(error).into_response(),
    };
    let mut answer = serde_json::json!({ "sub": claims.sub });
    if has_scope(&claims.scope, "profile") {
        answer["name"] = user.display_name.into();
    }
    if has_scope(&claims.scope, "email")
        && let Some(mail) = user.mail
    {
        answer["email"] = mail.into();
    }
    no_store(Json(answer).into_response())
}

/// The `token_type_hint` of revocation and introspection: absent or one we know.
fn check_hint(form: &Form) -> Result<(), OAuthError> {
    match form.get("token_type_hint") {
        None | Some("access_token" | "refresh_token") => Ok(()),
        Some(_) => Err(OAuthError::new(
            OAuthErrorCode::UnsupportedTokenType,
            "token_type_hint must be access_token or refresh_token",
        )),
    }
}

/// `POST /oidc/revoke` (RFC 7009): the calling client revokes one of its refresh tokens
/// (marked revoked) or access tokens (its `jti` recorded until it expires). A token that
/// is unknown or another client's is left alone, and the answer is 200 all the same.
pub async fn revoke(
    State(state): State<ServerState>,
    source: ClientAddress,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let outcome = async {
        let form = Form::parse(&headers, body)?;
        let client = authenticate(&state, &source, &headers, &form, "revocation").await?;
        let token = form.require("token", "token is required")?;
        check_hint(&form)?;
        let now = OffsetDateTime::now_utc();
        if let Some(claims) = valid_access_token(&state, token, Some(&client.id)).await? {
            let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp).unwrap_or(now);
            state
                .store()
                .revoke_access_token(&claims.jti, expires_at)
                .await?;
        } else {
            state
                .store()
                .revoke_refresh_token(&secret_hash(token), &client.id, now)
                .await?;
        }
        Ok::<_, OAuthError>(())
    }
    .await;
    match outcome {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(error) => error.into_response(),
    }
}

/// `POST /oidc/introspect` (RFC 7662): `active: true` only for a valid access token of the
/// calling client whose session is active and which is not revoked; anything else (refresh
/// tokens included) is `{"active": false}`.
pub async fn introspect(
    State(state): State<ServerState>,
    source: ClientAddress,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let outcome = async {
        let form = Form::parse(&headers, body)?;
        let client = authenticate(&state, &source, &headers, &form, "introspection").await?;
        let token = form.require("token", "token is required")?;
        check_hint(&form)?;
        let answer = match valid_access_token(&state, token, Some(&client.id)).await? {
            Some(claims) => Introspection {
                active: true,
                scope: Some(claims.scope),
                client_id: Some(claims.client_id),
                token_type: Some("access_token".to_owned()),
                exp: Some(claims.exp),
                iat: Some(claims.iat),
                sub: Some(claims.sub),
                aud: Some(claims.aud),
                iss: Some(claims.iss),
                sid: Some(claims.sid),
            },
            None => Introspection::default(),
        };
        Ok::<_, OAuthError>(answer)
    }
    .await;
    match outcome {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(error) => error.into_response(),
    }
}
