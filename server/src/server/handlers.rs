//! The sign-in endpoints: challenges, assertions, sign-outs, the JWKS, health and metrics.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::ServerState;
use super::client_address::ClientAddress;
use super::error::ApiError;
use super::rate_limit::Spend;
use crate::mapping::MappingRule;
use crate::store::{
    Card, CardId, CardState, ChallengeUse, NewAuditEvent, NewSession, SessionSelector,
    SignInLookup, SignInRecords, User, UserState,
};
use crate::verifier::VerifiedAssertion;
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::nonce::{Nonce, random_base64url};
use pivtap_protocol::wire::{
    AssertionRequest, AssertionResponse, ChallengeRequest, ChallengeResponse, ErrorCode,
    SessionEndReason, SignOutRecorded, SignOutRequest, UserInfo,
};

/// Checks a device id: 1 to 64 of `A-Z a-z 0-9 . _ : -`.
pub fn validate_device(device: &str) -> Result<(), ApiError> {
    if pivtap_protocol::wire::is_valid_device_id(device) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "the device id must be 1 to 64 characters: letters, digits, '.', '_', ':' or '-'",
        ))
    }
}

/// Most characters of an extractor's complaint quoted back: it can echo the
/// client's own text (an unknown field name), which must not flood the answer or the audit.
const MAX_REJECTION_CHARS: usize = 200;

/// An extractor's complaint as an `invalid_request`, cut short and without control characters.
pub fn rejection_error(what: &str, rejection_text: &str) -> ApiError {
    let mut text: String = rejection_text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REJECTION_CHARS)
        .collect();
    if rejection_text.chars().nth(MAX_REJECTION_CHARS).is_some() {
        text.push('…');
    }
    ApiError::invalid(format!("{what} is not acceptable: {text}"))
}

/// Unwraps a JSON body, turning axum's rejection into `invalid_request`.
pub fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(value)| value).map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large()
        } else {
            rejection_error("the request body", &rejection.body_text())
        }
    })
}

/// A time as the API writes it (RFC 3339).
pub(crate) fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_default()
}

/// Spends one challenge from the budget of `key`; past it, the request is counted for
/// the source's summary, not audited, and answered `rate_limited`.
async fn spend_challenge(
    state: &ServerState,
    source: &ClientAddress,
    key: String,
) -> Result<(), ApiError> {
    state
        .limiter()
        .spend(
            state.store(),
            Spend::Challenge,
            &[key],
            OffsetDateTime::now_utc(),
        )
        .await?
        .map_err(|wait| {
            state.limiter().count_unaudited(&source.key());
            ApiError::too_many_requests(wait)
        })
}

/// `POST /v1/challenges`: a fresh nonce bound to the device, which must prove itself
/// first ([`super::devices::authenticate_device`]).
///
/// Every challenge is a row in the store, so each source address has a budget of them
/// (spent before the device's proof is checked), and so has each device that proved
/// itself with a proof: neither a flood from one address nor a leaked device credential can make the
/// server store challenges without bound.
pub async fn create_challenge(
    State(state): State<ServerState>,
    source: ClientAddress,
    body: Result<Json<ChallengeRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    spend_challenge(&state, &source, source.key()).await?;
    let now = OffsetDateTime::now_utc();
    let request = match json_body(body)
        .and_then(|request| validate_device(&request.device).map(|()| request))
    {
        Ok(request) => super::devices::authenticate_device(
            &state,
            &request.device,
            request.proof.as_deref(),
            now,
        )
        .await
        .map(|()| request),
        Err(error) => Err(error),
    };
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            // Refused requests are audited too; their device id is not
            // recorded, since it failed the checks (or was not proven).
            let event = NewAuditEvent {
                time: OffsetDateTime::now_utc(),
                kind: AuditKind::Challenge,
                outcome: error.code.into(),
                device: None,
                card_serial: None,
                user_id: None,
                detail: Some(error.message.clone()),
            };
            return Err(state.refused(&source, event, error).await);
        }
    };
    if request.proof.is_some() {
        // Proven (an unproven id, in open mode or for a renewal, could be anyone's).
        spend_challenge(&state, &source, format!("device:{}", request.device)).await?;
    }
    let nonce = Nonce::generate();
    let expires_at = now + state.settings().challenge_lifetime;
    let event = NewAuditEvent {
        time: now,
        kind: AuditKind::Challenge,
        outcome: AuditOutcome::Ok,
        device: Some(request.device.clone()),
        card_serial: None,
        user_id: None,
        detail: Some(format!("nonce {}…", nonce.audit_prefix())),
    };
    state
        .store()
        .add_challenge(&nonce, &request.device, expires_at, event)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ChallengeResponse {
            nonce: nonce.into_string(),
            aud: state.settings().origin.clone(),
            expires_at: rfc3339(expires_at),
        }),
    ))
}

/// What the audit records of an assertion attempt.
#[derive(Default)]
pub(crate) struct AttemptRecord {
    pub(crate) device: Option<String>,
    pub(crate) card_serial: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) nonce_prefix: Option<String>,
    /// The device and card were read from an assertion that failed verification.
    pub(crate) unverified: bool,
    /// The device proved itself: the challenge was issued to it and unused.
    pub(crate) device_proven: bool,
}

/// `POST /v1/assertions`: checks a card-signed assertion and answers with a session token.
pub async fn submit_assertion(
    State(state): State<ServerState>,
    source: ClientAddress,
    body: Result<Json<AssertionRequest>, JsonRejection>,
) -> Result<Json<AssertionResponse>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut record = AttemptRecord::default();
    let result = match json_body(body) {
        Ok(request) => sign_in(&state, &source, &request.assertion, now, &mut record).await,
        Err(error) => Err(error),
    };
    let error = match result {
        Ok((response, verified, session)) => {
            // A sign-in that cannot be recorded and audited is not handed out: the card,
            // the session and the audit event go in one write, and its failure is audited
            // as such.
            let event = attempt_event(now, &record, None);
            let finished = state
                .store()
                .finish_sign_in(
                    &verified.certificate,
                    &response.user.id,
                    now,
                    event,
                    &session,
                )
                .await;
            match finished {
                Ok(_) => {
                    state.metrics().observe_outcome(AuditOutcome::Ok);
                    return Ok(Json(response));
                }
                Err(error) => ApiError::from(error),
            }
        }
        Err(error) => error,
    };
    state.metrics().observe_outcome(error.code.into());
    let event = attempt_event(now, &record, Some(&error));
    Err(state.refused(&source, event, error).await)
}

/// The audit event of an assertion attempt: `error` is `None` for a sign-in.
fn attempt_event(
    now: OffsetDateTime,
    record: &AttemptRecord,
    error: Option<&ApiError>,
) -> NewAuditEvent {
    let nonce = record.nonce_prefix.as_deref();
    NewAuditEvent {
        time: now,
        kind: AuditKind::Assertion,
        outcome: AuditOutcome::of(error.map(|error| error.code)),
        device: record.device.clone(),
        card_serial: record.card_serial.clone(),
        user_id: record.user_id.clone(),
        detail: match (error, nonce) {
            (Some(error), Some(nonce)) => Some(format!("nonce {nonce}…: {}", error.message)),
            (Some(error), None) if record.unverified => Some(format!(
                "{} (device and card as claimed, unverified)",
                error.message
            )),
            (Some(error), None) => Some(error.message.clone()),
            (None, Some(nonce)) => Some(format!("nonce {nonce}…")),
            (None, None) => None,
        },
    }
}

async fn sign_in(
    state: &ServerState,
    source: &ClientAddress,
    compact: &str,
    now: OffsetDateTime,
    record: &mut AttemptRecord,
) -> Result<(AssertionResponse, VerifiedAssertion, NewSession), ApiError> {
    // A renewal challenge (issued to anyone) never signs anyone in: refused before it
    // is looked at, so it is not used up either.
    if let (Some(device), _) = claimed_device_and_card(compact)
        && device.starts_with(pivtap_protocol::wire::RENEWAL_DEVICE_PREFIX)
    {
        return Err(ApiError::new(
            ErrorCode::ChallengeUnknown,
            "a renewal challenge cannot be used to sign in",
        ));
    }
    let (verified, user) = authenticate(state, source, compact, now, record).await?;
    let (response, session) = issue_token(state, &user, &verified, now)?;
    Ok((response, verified, session))
}

/// Every check of a sign-in, short of issuing the token: the assertion
/// (signature, chain, audience, time), flow control, the single-use challenge,
/// the card's state and revocation, the mapping to one active user. Apart from
/// using up the challenge it records nothing: the caller records the card it
/// accepts. Renewals use it too.
///
/// A failure counts only against what proved itself: the card when its signature
/// verified (a trusted card signed it), the device when the challenge was issued to it
/// and unused (a device proves itself to get a challenge; in open mode anyone may name
/// one, so "the device" is always the device id as asked for from this source address,
/// and nobody elsewhere can get a kiosk held back by naming it). An assertion that proves nothing counts against its source address
/// only (its refusal spends the source's budget, see [`ServerState::refused`]).
pub(crate) async fn authenticate(
    state: &ServerState,
    source: &ClientAddress,
    compact: &str,
    now: OffsetDateTime,
    record: &mut AttemptRecord,
) -> Result<(VerifiedAssertion, User), ApiError> {
    let verified = state
        .verifier()
        .verify(compact, now)
        .map_err(|rejection| refused_unverified(compact, record, rejection))?;
    authenticate_verified(state, source, verified, now, record).await
}

/// The answer to an assertion that failed verification; the audit gets what it claims,
/// marked as unverified.
pub(crate) fn refused_unverified(
    compact: &str,
    record: &mut AttemptRecord,
    rejection: crate::verifier::Rejection,
) -> ApiError {
    let (device, card_serial) = claimed_device_and_card(compact);
    record.unverified = device.is_some() || card_serial.is_some();
    record.device = device;
    record.card_serial = card_serial;
    ApiError::new(rejection.code, rejection.message)
}

/// [`authenticate`] from a verified assertion on: flow control, the challenge, the card,
/// the user.
pub(crate) async fn authenticate_verified(
    state: &ServerState,
    source: &ClientAddress,
    verified: VerifiedAssertion,
    now: OffsetDateTime,
    record: &mut AttemptRecord,
) -> Result<(VerifiedAssertion, User), ApiError> {
    let payload = &verified.payload;
    let facts = &verified.certificate;
    record.device = Some(payload.device.clone());
    record.card_serial = Some(facts.serial.clone());
    record.nonce_prefix = Some(Nonce::audit_prefix_of(&payload.nonce));
    validate_device(&payload.device)?;

    // From here the assertion is authentic (trusted card, valid signature), so
    // its card may be held back after repeated failures; the device as claimed from
    // this source too, once its challenge shows it is that device.
    let card_key = format!("card:{}", facts.fingerprint);
    let device_key = device_key(&payload.device, source);
    let keys = [card_key.clone(), device_key.clone()];
    let held = state
        .limiter()
        .retry_after(state.store(), &keys, now)
        .await?;
    if let Some(retry_after) = held.retry_after {
        return Err(ApiError::rate_limited(retry_after));
    }
    let result = authorise(state, &verified, now, record).await;
    let counted = match &result {
        Ok(_) => {
            state
                .limiter()
                .record_success(state.store(), &keys, held)
                .await
        }
        Err(error) if error.code != ErrorCode::Internal => {
            let proven: &[String] = if record.device_proven {
                &keys
            } else {
                std::slice::from_ref(&card_key)
            };
            state
                .limiter()
                .record_failure(state.store(), proven, now)
                .await
        }
        Err(_) => Ok(()),
    };
    if let Err(error) = counted {
        // The answer stands (a sign-in recorded is recorded); the counters miss one.
        tracing::warn!(%error, "the failure counters could not be updated");
    }
    result.map(|user| (verified, user))
}

/// The failure-counter key of `device` as claimed from `source`: `device:<id>@<source>`.
fn device_key(device: &str, source: &ClientAddress) -> String {
    format!("device:{device}@{}", source.key())
}

/// The device and card serial an assertion claims, read without verifying
/// anything: only for the audit of a refused assertion. The device must pass
/// the device-id checks; the serial comes from the first `x5c` certificate.
fn claimed_device_and_card(compact: &str) -> (Option<String>, Option<String>) {
    let Ok(jws) = pivtap_protocol::jose::CompactJws::parse(compact) else {
        return (None, None);
    };
    let device = serde_json::from_slice::<serde_json::Value>(&jws.payload)
        .ok()
        .and_then(|payload| payload.get("device")?.as_str().map(str::to_owned))
        .filter(|device| validate_device(device).is_ok());
    let card = serde_json::from_slice::<serde_json::Value>(&jws.header)
        .ok()
        .and_then(|header| header.get("x5c")?.get(0)?.as_str().map(str::to_owned))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|der| pivtap_protocol::certificate::CertificateFacts::from_der(&der).ok())
        .map(|facts| facts.serial);
    (device, card)
}

/// The checks that need the store: the challenge, the card's state, the mapping to one
/// active user; one write to the store takes the challenge and reads the rest.
async fn authorise(
    state: &ServerState,
    verified: &VerifiedAssertion,
    now: OffsetDateTime,
    record: &mut AttemptRecord,
) -> Result<User, ApiError> {
    let payload = &verified.payload;
    let facts = &verified.certificate;
    let rule = &state.mapping();
    let records = state
        .store()
        .begin_sign_in(&SignInLookup {
            nonce: payload.nonce.clone(),
            device: payload.device.clone(),
            now,
            card: CardId::of(facts),
            user_attribute: rule.user,
            user_values: rule.values(facts),
        })
        .await?;
    // Every refusal from here on is the user's the certificate maps to, so that the audit
    // by user answers why they cannot sign in.
    record.user_id = attributed_user(&records);
    match records.challenge {
        ChallengeUse::Accepted => record.device_proven = true,
        ChallengeUse::Unknown | ChallengeUse::OtherDevice => {
            return Err(ApiError::new(
                ErrorCode::ChallengeUnknown,
                "this server did not issue that challenge to this device",
            ));
        }
        ChallengeUse::Expired => {
            return Err(ApiError::new(
                ErrorCode::ChallengeExpired,
                "the challenge expired; ask for a new one",
            ));
        }
        ChallengeUse::Reused => {
            return Err(ApiError::new(
                ErrorCode::ChallengeReused,
                "the challenge was used already",
            ));
        }
    }
    // A renewal's new certificate not yet in use has the state of the card it renews.
    check_card(
        records.card.as_ref().or(records.renews.as_ref()),
        records.revocation.is_some(),
    )?;
    let user = one_user(rule, records.users)?;
    if user.state == UserState::Locked {
        return Err(ApiError::new(
            ErrorCode::UserLocked,
            "this user is locked; ask your administrator",
        ));
    }
    Ok(user)
}

/// The user an attempt with these records is audited as: the one user the certificate
/// maps to; failing that (no user, or several sharing the attribute) the user the card
/// signed in as last, if it has a record.
fn attributed_user(records: &SignInRecords) -> Option<String> {
    match records.users.as_slice() {
        [user] => Some(user.id.clone()),
        _ => records
            .card
            .as_ref()
            .or(records.renews.as_ref())
            .and_then(|card| card.user_id.clone()),
    }
}

/// Longest sign-out reason.
const MAX_SIGN_OUT_REASON: usize = 32;

/// `POST /v1/sign-outs`: a device reports the end of a session, which ends it at the
/// server (`signed_out`). Authenticated by the session's token as the bearer credential
/// (an expired one within the grace), or by `session_id` with a device proof of the
/// session's own device (a sign-out kept on disk while the server was unreachable: it
/// works until the session's max age). Audited as `sign_out` for the session's user,
/// device and card, with the reason. A sign-out of a session that has ended already is
/// answered `recorded: false` and writes nothing.
pub async fn sign_out(
    State(state): State<ServerState>,
    source: ClientAddress,
    headers: HeaderMap,
    body: Result<Json<SignOutRequest>, JsonRejection>,
) -> Result<Json<SignOutRecorded>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let claims = super::sessions::bearer_claims(&state, &headers, now);
    let request = match (&claims, body) {
        (Some(_), body) => json_body(body)?,
        (None, Ok(Json(request))) if request.session_id.is_some() => request,
        (None, _) => {
            let event = super::sessions::anonymous_event(
                AuditKind::SignOut,
                ErrorCode::Unauthorized,
                now,
                "no valid session token".to_owned(),
            );
            let refusal = ApiError::new(
                ErrorCode::Unauthorized,
                "a sign-out needs the session's token as its bearer credential, or the \
                 session_id with a device proof",
            );
            return Err(state.refused(&source, event, refusal).await);
        }
    };
    let reason = &request.reason;
    if reason.is_empty()
        || reason.len() > MAX_SIGN_OUT_REASON
        || !reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ApiError::invalid(format!(
            "the reason must be 1 to {MAX_SIGN_OUT_REASON} of a-z, 0-9 and '_'"
        )));
    }
    let session_id = match (&claims, &request.session_id) {
        (Some(claims), Some(named)) if *named != claims.sid => {
            return Err(ApiError::invalid(
                "the session_id is not the bearer token's session",
            ));
        }
        (Some(claims), _) => claims.sid.clone(),
        (None, Some(named)) => named.clone(),
        (None, None) => unreachable!("a request without a token names its session"),
    };
    let session = state.store().get_session(&session_id).await?;
    if claims.is_none() {
        // The device proves itself, and must be the session's own device.
        let proven = match (&session, request.device_proof.as_deref()) {
            (_, None) => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "a sign-out by session_id needs a device_proof of the session's device",
            )),
            (None, Some(_)) => Err(ApiError::new(ErrorCode::Unauthorized, "no such session")),
            (Some(session), Some(proof)) => {
                super::devices::verify_proof(&state, &session.device, proof, now).await
            }
        };
        if let Err(refusal) = proven {
            let event = NewAuditEvent {
                time: now,
                kind: AuditKind::SignOut,
                outcome: refusal.code.into(),
                device: session.as_ref().map(|session| session.device.clone()),
                card_serial: None,
                user_id: None,
                detail: Some(format!(
                    "sign-out by session id refused: {}",
                    refusal.message
                )),
            };
            return Err(state.refused(&source, event, refusal).await);
        }
    }
    let Some(session) = session.filter(|session| {
        session.is_active(now)
            && claims
                .as_ref()
                .is_none_or(|claims| claims.sub == session.user_id)
    }) else {
        // Ended already (a replay), or a genuine token of a session that is gone (purged):
        // nothing to end, nothing audited.
        return Ok(Json(SignOutRecorded { recorded: false }));
    };
    let event = NewAuditEvent {
        time: now,
        kind: AuditKind::SignOut,
        outcome: AuditOutcome::Ok,
        device: Some(session.device.clone()),
        card_serial: Some(session.card.serial.clone()),
        user_id: Some(session.user_id.clone()),
        detail: Some(format!("session {}, reason {reason}", session.id)),
    };
    let ended = state
        .store()
        .end_sessions(
            &SessionSelector::Id(session.id.clone()),
            SessionEndReason::SignedOut,
            now,
            Some(event),
        )
        .await?;
    Ok(Json(SignOutRecorded {
        recorded: !ended.is_empty(),
    }))
}

/// Refuses a card that is locked or revoked, or whose certificate is on the
/// revocation list (which outlives deleted card records).
fn check_card(card: Option<&Card>, on_revocation_list: bool) -> Result<(), ApiError> {
    let revoked = || ApiError::new(ErrorCode::CertificateRevoked, "this card has been revoked");
    match card.map(|card| card.state) {
        Some(CardState::Active) => Ok(()),
        Some(CardState::Locked) => Err(ApiError::new(
            ErrorCode::CardLocked,
            "this card is locked; ask your administrator",
        )),
        Some(CardState::Revoked) => Err(revoked()),
        None if on_revocation_list => Err(revoked()),
        None => Ok(()),
    }
}

/// The one user the certificate maps to, of those the store found.
fn one_user(rule: &MappingRule, mut users: Vec<User>) -> Result<User, ApiError> {
    match users.len() {
        1 => Ok(users.remove(0)),
        0 => Err(ApiError::new(
            ErrorCode::UserUnknown,
            format!("no user matches this card's certificate (mapping {rule})"),
        )),
        _ => Err(ApiError::new(
            ErrorCode::UserUnknown,
            format!(
                "this card's certificate matches more than one user (mapping {rule}); ask your administrator"
            ),
        )),
    }
}

/// The session token for `user`, signed in on the assertion's device, and the session to
/// store with it (its id is the token's `sid`; the kiosk's refresh token is kept as its
/// SHA-256 only); `amr` states what the assertion's key slot proves (smart card and PIN
/// for `9a`).
fn issue_token(
    state: &ServerState,
    user: &User,
    verified: &VerifiedAssertion,
    now: OffsetDateTime,
) -> Result<(AssertionResponse, NewSession), ApiError> {
    let max_age = state.settings().session_max_age;
    let refresh_token = random_base64url::<32>();
    let session = NewSession {
        id: random_base64url::<16>(),
        user_id: user.id.clone(),
        device: verified.payload.device.clone(),
        card: CardId::of(&verified.certificate),
        amr: verified.amr.clone(),
        created_at: now,
        expires_at: now + max_age,
        refresh_token_hash: crate::store::secret_hash(&refresh_token),
    };
    let (token, expires_in) = super::sessions::session_token(
        state,
        user,
        (&session.id, &session.device, &session.amr),
        now,
    )?;
    let response = AssertionResponse {
        token,
        token_type: "Bearer".to_owned(),
        expires_in,
        user: UserInfo {
            id: user.id.clone(),
            display_name: user.display_name.clone(),
            mail: user.mail.clone(),
        },
        session_id: session.id.clone(),
        refresh_token,
        session_expires_in: max_age.as_secs(),
    };
    Ok((response, session))
}

/// `GET /.well-known/jwks.json`
pub async fn jwks(State(state): State<ServerState>) -> impl IntoResponse {
    let keys = state.tokens().jwks();
    ([(header::CACHE_CONTROL, "max-age=300")], Json(keys))
}

/// `GET /v1/pin-policy`: the rules devices enforce on new PINs (public).
pub async fn pin_policy(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "max-age=300")],
        Json(state.settings().pin_policy),
    )
}

/// `GET /livez`: the process answers (nothing else is checked).
pub async fn liveness() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz` and `GET /healthz`: a sign-in can be recorded now, i.e. a real
/// write to the store succeeds (checked at most once a second, see
/// [`ServerState::is_ready`]); otherwise 503 `unavailable`.
pub async fn readiness(State(state): State<ServerState>) -> Result<impl IntoResponse, ApiError> {
    if state.is_ready().await {
        match state.tls_warning(OffsetDateTime::now_utc()) {
            Some(warning) => Ok(Json(
                serde_json::json!({"status": "ok", "warnings": [warning]}),
            )),
            None => Ok(Json(serde_json::json!({"status": "ok"}))),
        }
    } else {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server cannot record sign-ins now",
        ))
    }
}

/// `GET /metrics` on the public listener: served only to requests presenting
/// the metrics credential, when one is configured; `not_found` otherwise, as
/// if there were no such endpoint.
pub async fn public_metrics(State(state): State<ServerState>, headers: HeaderMap) -> Response {
    if presents_metrics_token(&state, &headers) {
        render_metrics(&state).await.into_response()
    } else {
        not_found().await.into_response()
    }
}

/// `GET /metrics` on the loopback metrics listener: open, unless a metrics
/// credential is configured; then `unauthorized` without it.
pub async fn loopback_metrics(State(state): State<ServerState>, headers: HeaderMap) -> Response {
    if state.http().has_metrics_token() && !presents_metrics_token(&state, &headers) {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "the metrics credential is missing or wrong",
        )
        .into_response();
    }
    render_metrics(&state).await.into_response()
}

fn presents_metrics_token(state: &ServerState, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(super::admin::bearer_token)
        .is_some_and(|token| state.is_metrics_token(token))
}

async fn render_metrics(state: &ServerState) -> impl IntoResponse + use<> {
    let mut text = state
        .metrics()
        .render_with_database(state.store().size_bytes());
    let now = OffsetDateTime::now_utc();
    let ca_expiry_days = state
        .settings()
        .issuer
        .as_ref()
        .map(|issuer| (issuer.ca_not_after() - now).whole_days());
    match state.store().stats(now).await {
        Ok(stats) => text.push_str(&super::metrics::Metrics::render_state(
            &stats,
            ca_expiry_days,
        )),
        // The counters still answer; the gauges are left out (and the failure logged).
        Err(error) => tracing::warn!(%error, "cannot read the store's counts for the metrics"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Anything else.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// A known endpoint asked with a method it does not take (axum adds `Allow`).
pub async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        ApiError::invalid("this endpoint does not take that method"),
    )
}
