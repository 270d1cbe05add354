//! `POST /oidc/token`: the authorization code (PKCE S256), refresh (rotation; reuse ends the session) and token exchange (RFC 8693) grants.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use super::client_auth::authenticate;
use super::form::Form;
use super::{AuditSubject, EXCHANGE_SCOPE, OAuthError, audit_ok, has_scope, no_store, refuse};
use crate::server::ServerState;
use crate::server::client_address::ClientAddress;
use crate::store::{CodeRedemption, RefreshUse, Session, secret_hash};
use pivtap_protocol::nonce::random_base64url;
use pivtap_protocol::oidc::{
    ACCESS_TOKEN_JWT_TYPE, AccessTokenClaims, GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN,
    GRANT_TOKEN_EXCHANGE, IdTokenClaims, OAuthErrorCode, TOKEN_TYPE_ACCESS_TOKEN, TokenResponse,
    acr_for_amr,
};

/// Shortest and longest PKCE code verifier (RFC 7636 §4.1).
const VERIFIER_CHARS: std::ops::RangeInclusive<usize> = 43..=128;

/// The handler of `POST /oidc/token`.
pub async fn token(
    State(state): State<ServerState>,
    source: ClientAddress,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match grant(&state, &source, &headers, body).await {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(error) => error.into_response(),
    }
}

async fn grant(
    state: &ServerState,
    source: &ClientAddress,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<TokenResponse, OAuthError> {
    let form = Form::parse(headers, body)?;
    match form.require("grant_type", "grant_type is required")? {
        GRANT_AUTHORIZATION_CODE => authorization_code(state, source, headers, &form).await,
        GRANT_REFRESH_TOKEN => refresh(state, source, headers, &form).await,
        GRANT_TOKEN_EXCHANGE => exchange(state, source, &form).await,
        _ => Err(OAuthError::new(
            OAuthErrorCode::UnsupportedGrantType,
            "the grant types are authorization_code, refresh_token and token exchange",
        )),
    }
}

/// Whether `verifier` (RFC 7636 §4.1: 43-128 unreserved characters) hashes to `challenge`.
#[must_use]
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = VERIFIER_CHARS.contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    well_formed
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            computed.as_bytes(),
            challenge.as_bytes(),
        ))
}

async fn authorization_code(
    state: &ServerState,
    source: &ClientAddress,
    headers: &HeaderMap,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    const WHAT: &str = "authorization code redemption";
    let client = authenticate(state, source, headers, form, WHAT).await?;
    let code = form.require("code", "code is required")?;
    let redirect_uri = form.require("redirect_uri", "redirect_uri is required")?;
    let verifier = form.require("code_verifier", "code_verifier is required (PKCE)")?;
    let now = OffsetDateTime::now_utc();
    let subject = AuditSubject {
        client: Some(client.id.clone()),
        ..AuditSubject::default()
    };
    // Redeemed first, once across nodes: a code presented wrongly is used up too.
    let (code, session) = match state
        .store()
        .redeem_authorization_code(&secret_hash(code), now)
        .await?
    {
        CodeRedemption::Redeemed { code, session } => (code, session),
        CodeRedemption::Unknown | CodeRedemption::Expired => {
            let error = OAuthError::invalid_grant("the code is unknown or has expired");
            return Err(refuse(state, source, &subject, WHAT, error).await);
        }
        CodeRedemption::Used => {
            let error = OAuthError::invalid_grant("the code was used already");
            return Err(refuse(state, source, &subject, WHAT, error).await);
        }
    };
    let subject = AuditSubject::of(&session, &client.id);
    let problem = if code.client_id != client.id {
        Some("the code was given to another client")
    } else if code.redirect_uri != redirect_uri {
        Some("redirect_uri differs from the authorization request's")
    } else if !pkce_matches(verifier, &code.code_challenge) {
        Some("code_verifier does not match the code challenge")
    } else if !session.is_active(now) {
        Some("the session has ended")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(refuse(
            state,
            source,
            &subject,
            WHAT,
            OAuthError::invalid_grant(problem),
        )
        .await);
    }
    let refresh_token = random_base64url::<32>();
    state
        .store()
        .add_refresh_token(
            &session.id,
            &client.id,
            &secret_hash(&refresh_token),
            &code.scope,
            now,
        )
        .await?;
    let mut answer = mint(state, &session, &client.id, &code.scope, now)?;
    answer.refresh_token = Some(refresh_token);
    if has_scope(&code.scope, "openid") {
        answer.id_token =
            Some(id_token(state, &session, &client.id, &code.scope, code.nonce, now).await?);
    }
    audit_ok(state, &subject, "tokens issued for an authorization code").await?;
    Ok(answer)
}

async fn refresh(
    state: &ServerState,
    source: &ClientAddress,
    headers: &HeaderMap,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    const WHAT: &str = "refresh";
    let client = authenticate(state, source, headers, form, WHAT).await?;
    let presented = form.require("refresh_token", "refresh_token is required")?;
    let now = OffsetDateTime::now_utc();
    let replacement = random_base64url::<32>();
    let subject = AuditSubject {
        client: Some(client.id.clone()),
        ..AuditSubject::default()
    };
    let (session, scope) = match state
        .store()
        .use_refresh_token(
            &secret_hash(presented),
            &client.id,
            &secret_hash(&replacement),
            now,
        )
        .await?
    {
        RefreshUse::Rotated { session, scope } => (session, scope),
        RefreshUse::Unknown => {
            let error = OAuthError::invalid_grant("the refresh token is unknown");
            return Err(refuse(state, source, &subject, WHAT, error).await);
        }
        RefreshUse::Ended => {
            let error = OAuthError::invalid_grant("the refresh token's session has ended");
            return Err(refuse(state, source, &subject, WHAT, error).await);
        }
        RefreshUse::Reused => {
            let error = OAuthError::invalid_grant(
                "the refresh token was replaced before; its session has ended",
            );
            return Err(refuse(state, source, &subject, "refresh token reused", error).await);
        }
    };
    let mut answer = mint(state, &session, &client.id, &scope, now)?;
    answer.refresh_token = Some(replacement);
    if has_scope(&scope, "openid") {
        answer.id_token = Some(id_token(state, &session, &client.id, &scope, None, now).await?);
    }
    audit_ok(
        state,
        &AuditSubject::of(&session, &client.id),
        "tokens refreshed",
    )
    .await?;
    Ok(answer)
}

async fn exchange(
    state: &ServerState,
    source: &ClientAddress,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    const WHAT: &str = "token exchange";
    let subject_token = form.require("subject_token", "subject_token is required")?;
    if form.get("subject_token_type") != Some(TOKEN_TYPE_ACCESS_TOKEN) {
        return Err(OAuthError::invalid_request(
            "subject_token_type must be urn:ietf:params:oauth:token-type:access_token",
        ));
    }
    if form
        .get("requested_token_type")
        .is_some_and(|requested| requested != TOKEN_TYPE_ACCESS_TOKEN)
    {
        return Err(OAuthError::invalid_request(
            "only access tokens are issued by token exchange",
        ));
    }
    let audience = form.require("audience", "audience (a registered client id) is required")?;
    let now = OffsetDateTime::now_utc();
    let settings = state.settings();
    let claims = state
        .tokens()
        .verify(subject_token, now)
        .ok()
        .filter(|claims| claims.iss == settings.origin && claims.aud == settings.token_audience);
    let Some(claims) = claims else {
        let error = OAuthError::invalid_grant("the subject token is not a valid session token");
        return Err(refuse(state, source, &AuditSubject::default(), WHAT, error).await);
    };
    let subject = AuditSubject {
        client: None,
        user: Some(claims.sub.clone()),
        device: Some(claims.device.clone()),
    };
    let Some(client) = state.store().get_client(audience).await? else {
        let error = OAuthError::new(
            OAuthErrorCode::InvalidTarget,
            "the audience is not a registered client",
        );
        return Err(refuse(state, source, &subject, WHAT, error).await);
    };
    let session = state
        .store()
        .get_session(&claims.sid)
        .await?
        .filter(|session| session.is_active(now) && session.user_id == claims.sub);
    let Some(session) = session else {
        let subject = AuditSubject {
            client: Some(client.id),
            ..subject
        };
        let error = OAuthError::invalid_grant("the subject token's session has ended");
        return Err(refuse(state, source, &subject, WHAT, error).await);
    };
    match state
        .store()
        .record_session_client(&session.id, &client.id, now)
        .await
    {
        Ok(()) => {}
        // The session ended in between.
        Err(crate::store::StoreError::Conflict { .. }) => {
            let error = OAuthError::invalid_grant("the subject token's session has ended");
            let subject = AuditSubject::of(&session, &client.id);
            return Err(refuse(state, source, &subject, WHAT, error).await);
        }
        Err(error) => return Err(error.into()),
    }
    let mut answer = mint(state, &session, &client.id, EXCHANGE_SCOPE, now)?;
    answer.issued_token_type = Some(TOKEN_TYPE_ACCESS_TOKEN.to_owned());
    audit_ok(
        state,
        &AuditSubject::of(&session, &client.id),
        "token exchanged",
    )
    .await?;
    Ok(answer)
}

/// An answer with a fresh access token for `client_id` in `session` (no refresh or ID token).
fn mint(
    state: &ServerState,
    session: &Session,
    client_id: &str,
    scope: &str,
    now: OffsetDateTime,
) -> Result<TokenResponse, OAuthError> {
    let settings = state.settings();
    let lifetime = settings.token_lifetime;
    let claims = AccessTokenClaims {
        iss: settings.origin.clone(),
        sub: session.user_id.clone(),
        aud: client_id.to_owned(),
        client_id: client_id.to_owned(),
        exp: (now + lifetime).unix_timestamp(),
        iat: now.unix_timestamp(),
        jti: random_base64url::<16>(),
        auth_time: session.created_at.unix_timestamp(),
        sid: session.id.clone(),
        scope: scope.to_owned(),
        amr: session.amr.clone(),
        acr: acr_for_amr(&session.amr).to_owned(),
        device: session.device.clone(),
    };
    let access_token = sign(state, ACCESS_TOKEN_JWT_TYPE, &claims)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: lifetime.as_secs(),
        refresh_token: None,
        id_token: None,
        scope: Some(scope.to_owned()),
        issued_token_type: None,
    })
}

/// An ID token for `client_id` in `session`; `name` and `email` by scope.
async fn id_token(
    state: &ServerState,
    session: &Session,
    client_id: &str,
    scope: &str,
    nonce: Option<String>,
    now: OffsetDateTime,
) -> Result<String, OAuthError> {
    let settings = state.settings();
    let user = state.store().get_user(&session.user_id).await?;
    let claims = IdTokenClaims {
        iss: settings.origin.clone(),
        sub: session.user_id.clone(),
        aud: client_id.to_owned(),
        azp: client_id.to_owned(),
        exp: (now + settings.token_lifetime).unix_timestamp(),
        iat: now.unix_timestamp(),
        auth_time: session.created_at.unix_timestamp(),
        nonce,
        sid: session.id.clone(),
        amr: session.amr.clone(),
        acr: acr_for_amr(&session.amr).to_owned(),
        device: session.device.clone(),
        name: user
            .as_ref()
            .filter(|_| has_scope(scope, "profile"))
            .map(|user| user.display_name.clone()),
        email: user
            .as_ref()
            .filter(|_| has_scope(scope, "email"))
            .and_then(|user| user.mail.clone()),
    };
    sign(state, crate::token::TOKEN_TYPE, &claims)
}

fn sign<T: serde::Serialize>(
    state: &ServerState,
    typ: &str,
    claims: &T,
) -> Result<String, OAuthError> {
    state.tokens().sign(typ, claims).map_err(|error| {
        tracing::error!(%error, "cannot sign a token for a client");
        OAuthError::server_error()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_takes_only_the_s256_of_a_well_formed_verifier() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(challenge, challenge));
        assert!(!pkce_matches(verifier, verifier));
        let short = &verifier[..42];
        let short_challenge =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(short));
        assert!(!pkce_matches(short, &short_challenge));
    }
}
