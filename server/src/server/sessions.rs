//! The device's session endpoints: refreshing the kiosk's access token and asking whether its session is still active.
//!
//! A session (a row in the store) begins with a sign-in and ends when the device signs
//! the worker out, an administrator ends it, its card or user is locked, revoked or
//! deleted, it reaches `[sessions] max_age`, or a replaced refresh token is presented
//! again. Every token is worth only as much as its session: each request that presents
//! one reads the session row (no cache), so an end at any node holds at every node.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, header};
use time::OffsetDateTime;

use super::ServerState;
use super::client_address::ClientAddress;
use super::error::ApiError;
use super::handlers::{json_body, rfc3339};
use crate::store::{KIOSK_CLIENT_ID, NewAuditEvent, RefreshUse, Session, User, secret_hash};
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::nonce::random_base64url;
use pivtap_protocol::wire::{
    ErrorCode, SessionClaims, SessionRefreshRequest, SessionRefreshed, SessionStatus,
};

/// How long after its expiry a session token is still accepted to report its sign-out
/// or ask after its session: a session that ends because its token expired is reported
/// a moment after.
pub(crate) const EXPIRED_TOKEN_GRACE: time::Duration = time::Duration::minutes(10);

/// The refusal of a token or refresh token whose session is not active (or unknown).
pub(crate) fn session_ended() -> ApiError {
    ApiError::new(
        ErrorCode::SessionEnded,
        "the session has ended; sign in again",
    )
}

/// The claims of the request's bearer session token, issued by this server for the
/// configured audience; an expired one within [`EXPIRED_TOKEN_GRACE`] too. `None`
/// without one.
pub(crate) fn bearer_claims(
    state: &ServerState,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Option<SessionClaims> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(super::admin::bearer_token)?;
    let tokens = state.tokens();
    match tokens.verify(token, now) {
        Err(crate::token::TokenError::Expired) => tokens.verify(token, now - EXPIRED_TOKEN_GRACE),
        other => other,
    }
    .ok()
    .filter(|claims| {
        claims.iss == state.settings().origin && claims.aud == state.settings().token_audience
    })
}

/// The kiosk's access token for `user` in session `sid`, begun on `device` with what the
/// card proved (`amr`), issued at `now`; and its lifetime in seconds.
///
/// # Errors
/// `internal` when the token cannot be signed (logged).
pub(crate) fn session_token(
    state: &ServerState,
    user: &User,
    (sid, device, amr): (&str, &str, &[String]),
    now: OffsetDateTime,
) -> Result<(String, u64), ApiError> {
    let settings = state.settings();
    let lifetime = settings.token_lifetime;
    let claims = SessionClaims {
        iss: settings.origin.clone(),
        sub: user.id.clone(),
        aud: settings.token_audience.clone(),
        iat: now.unix_timestamp(),
        exp: (now + lifetime).unix_timestamp(),
        jti: random_base64url::<16>(),
        name: user.display_name.clone(),
        email: user.mail.clone(),
        amr: amr.to_vec(),
        device: device.to_owned(),
        sid: sid.to_owned(),
    };
    let token = state.tokens().issue(&claims).map_err(|error| {
        tracing::error!(%error, "cannot sign a session token");
        ApiError::new(ErrorCode::Internal, "the server could not issue a token")
    })?;
    Ok((token, lifetime.as_secs()))
}

/// An audit event of `kind` naming no user, device or card (a refusal of what proved
/// nothing).
pub(crate) fn anonymous_event(
    kind: AuditKind,
    code: ErrorCode,
    now: OffsetDateTime,
    detail: String,
) -> NewAuditEvent {
    NewAuditEvent {
        time: now,
        kind,
        outcome: code.into(),
        device: None,
        card_serial: None,
        user_id: None,
        detail: Some(detail),
    }
}

/// An audit event of kind `session` about `session`.
pub(crate) fn session_event(
    session: &Session,
    outcome: AuditOutcome,
    now: OffsetDateTime,
    detail: String,
) -> NewAuditEvent {
    NewAuditEvent {
        time: now,
        kind: AuditKind::Session,
        outcome,
        device: Some(session.device.clone()),
        card_serial: Some(session.card.serial.clone()),
        user_id: Some(session.user_id.clone()),
        detail: Some(detail),
    }
}

/// `POST /v1/sessions/refresh`: the device presents its session's current refresh token
/// and gets a new access token and the refresh token that replaces it. A replaced token
/// presented again ends the session (`refresh_reused`, audited); anything else not
/// current is `session_ended`.
pub async fn refresh(
    State(state): State<ServerState>,
    source: ClientAddress,
    body: Result<Json<SessionRefreshRequest>, JsonRejection>,
) -> Result<Json<SessionRefreshed>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let request = json_body(body)?;
    let presented = secret_hash(&request.refresh_token);
    let replacement = random_base64url::<32>();
    let used = state
        .store()
        .use_refresh_token(&presented, KIOSK_CLIENT_ID, &secret_hash(&replacement), now)
        .await?;
    let mark = &presented[..8];
    let session = match used {
        RefreshUse::Rotated { session, .. } => session,
        RefreshUse::Reused => {
            // The store ended the session in the same step; which one is not told, so the
            // audit names the token's mark.
            let detail = format!(
                "refresh token #{mark} presented again after it was replaced: its session is \
                 ended (refresh_reused)"
            );
            let event = anonymous_event(AuditKind::Session, ErrorCode::SessionEnded, now, detail);
            return Err(state.refused(&source, event, session_ended()).await);
        }
        RefreshUse::Unknown | RefreshUse::Ended => {
            let detail =
                format!("refresh refused: refresh token #{mark} is unknown or its session ended");
            let event = anonymous_event(AuditKind::Session, ErrorCode::SessionEnded, now, detail);
            return Err(state.refused(&source, event, session_ended()).await);
        }
    };
    let user = state
        .store()
        .get_user(&session.user_id)
        .await?
        .ok_or_else(session_ended)?;
    let (token, expires_in) = session_token(
        &state,
        &user,
        (&session.id, &session.device, &session.amr),
        now,
    )?;
    Ok(Json(SessionRefreshed {
        token,
        token_type: "Bearer".to_owned(),
        expires_in,
        refresh_token: replacement,
    }))
}

/// `GET /v1/sessions/current` (bearer: the session's access token, an expired one within
/// the grace too): whether the session is still active, and why it ended if not.
pub async fn current(
    State(state): State<ServerState>,
    source: ClientAddress,
    headers: HeaderMap,
) -> Result<Json<SessionStatus>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let Some(claims) = bearer_claims(&state, &headers, now) else {
        let event = anonymous_event(
            AuditKind::Session,
            ErrorCode::Unauthorized,
            now,
            "session status asked without a valid session token".to_owned(),
        );
        let refusal = ApiError::new(
            ErrorCode::Unauthorized,
            "the session's status needs its access token as the bearer credential",
        );
        return Err(state.refused(&source, event, refusal).await);
    };
    let session = state
        .store()
        .get_session(&claims.sid)
        .await?
        .filter(|session| session.user_id == claims.sub)
        .ok_or_else(session_ended)?;
    Ok(Json(session_status(&session, now)))
}

/// What `GET /v1/sessions/current` answers about `session` at `now`.
fn session_status(session: &Session, now: OffsetDateTime) -> SessionStatus {
    let active = session.is_active(now);
    SessionStatus {
        session_id: session.id.clone(),
        active,
        expires_at: active.then(|| rfc3339(session.expires_at)),
        ended_reason: if active {
            None
        } else {
            // Past its max age but not yet ended by the upkeep: it ends for that reason.
            Some(
                session
                    .ended_reason
                    .unwrap_or(pivtap_protocol::wire::SessionEndReason::MaxAge),
            )
        },
    }
}
