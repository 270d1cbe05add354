//! The admin API under `/v1/admin/`: users, cards, devices and the audit log, behind the admin bearer credential.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::ServerState;
use super::client_address::ClientAddress;
use super::error::ApiError;
use super::handlers::{json_body, rejection_error, rfc3339};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::store::{
    AdminCredential, AuditEvent, AuditKindFilter, AuditQuery, Card, CardId, CardState,
    INITIAL_ADMIN_CREDENTIAL, NewAuditEvent, OidcClient, RevocationReason, Session, SessionQuery,
    SessionSelector, StoreError, User, UserState, UserWritten,
};
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::wire::{
    AdminCredentialRecord, AuditRecord, CardRecord, ClientRecord, CreateAdminCredential,
    CreateEnrollmentRequest, CreatedClient, EnrollmentCode, ErrorCode, ImportReport, ImportSkip,
    ImportedUser, NewClient, PATH_ADMIN_CLIENTS, PATH_ADMIN_SESSIONS, RevokeCardRequest,
    SessionEndReason, SessionRecord, UserDeleted, UserInfo, UserRecord, UserUpdate,
};

/// Most users one import takes.
const MAX_IMPORT: usize = 10_000;

/// Largest import body: room for [`MAX_IMPORT`] users (sign-in bodies stay
/// at [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES)).
pub const MAX_IMPORT_BYTES: usize = 4 * 1024 * 1024;

/// The user import, under [`PATH_ADMIN`](pivtap_protocol::wire::PATH_ADMIN).
pub const PATH_IMPORT: &str = "/users/import";

/// The admin routes, all behind [`require_admin`].
pub fn router(state: ServerState) -> Router<ServerState> {
    Router::new()
        .route("/users", get(list_users).post(add_user))
        .route(
            PATH_IMPORT,
            post(import_users).layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route("/users/{id}", patch(update_user).delete(delete_user))
        .route("/users/{id}/lock", post(lock_user))
        .route("/users/{id}/unlock", post(unlock_user))
        .route("/cards", get(list_cards))
        .route("/cards/{card}", delete(delete_card))
        .route("/cards/{card}/lock", post(lock_card))
        .route("/cards/{card}/unlock", post(unlock_card))
        .route("/cards/{card}/revoke", post(revoke_card))
        .route("/audit", get(query_audit))
        .route(
            pivtap_protocol::wire::PATH_ADMIN_CREDENTIALS,
            get(list_credentials).post(add_credential),
        )
        .route("/credentials/{name}/revoke", post(revoke_credential))
        .route(
            pivtap_protocol::wire::PATH_ADMIN_ENROLLMENTS,
            post(create_enrollment),
        )
        .route(
            pivtap_protocol::wire::PATH_ADMIN_DEVICES,
            get(super::devices::list_devices).post(super::devices::add_device),
        )
        .route("/devices/{id}", delete(super::devices::remove_device))
        .route(
            "/devices/{id}/disable",
            post(super::devices::disable_device),
        )
        .route("/devices/{id}/enable", post(super::devices::enable_device))
        .route(PATH_ADMIN_SESSIONS, get(list_sessions))
        .route("/sessions/{id}", get(show_session).delete(end_session))
        .route(PATH_ADMIN_CLIENTS, get(list_clients).post(add_client))
        .route("/clients/{id}", get(show_client).delete(remove_client))
        .route_layer(middleware::from_fn_with_state(state, require_admin))
}

/// Characters of a refused request's path the audit keeps: the path is the caller's text.
const AUDITED_PATH_CHARS: usize = 64;

/// Refuses requests without the admin credential (`Authorization: Bearer ...`); audits the
/// refusal (method and the path's first [`AUDITED_PATH_CHARS`] characters) within the
/// source's refusal budget, and answers `rate_limited` past it.
async fn require_admin(State(state): State<ServerState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    if let Some(token) = presented {
        match state.admin_credential(token).await {
            Ok(Some(name)) => return ACTING_CREDENTIAL.scope(name, next.run(request)).await,
            Ok(None) => {}
            Err(error) => return ApiError::from(error).into_response(),
        }
    }
    let source = ClientAddress::of(request.extensions());
    let path = pivtap_protocol::escape::bounded(request.uri().path(), AUDITED_PATH_CHARS);
    let event = NewAuditEvent {
        time: OffsetDateTime::now_utc(),
        kind: AuditKind::Admin,
        outcome: ErrorCode::Unauthorized.into(),
        device: None,
        card_serial: None,
        user_id: None,
        detail: Some(format!("{} {path}", request.method())),
    };
    let refusal = ApiError::new(
        ErrorCode::Unauthorized,
        "the admin credential is missing or wrong",
    );
    match state.refused(&source, event, refusal).await {
        // The refusal is answered as such even if the audit could not be written.
        error if error.code == ErrorCode::Internal => ApiError::new(
            ErrorCode::Unauthorized,
            "the admin credential is missing or wrong",
        )
        .into_response(),
        answer => answer.into_response(),
    }
}

tokio::task_local! {
    /// The name of the admin credential the request being answered presented.
    static ACTING_CREDENTIAL: String;
}

/// An admin action's audit detail, naming the credential that acted at its end
/// (`... [admin credential NAME]`).
pub(crate) fn acting(detail: String) -> String {
    match ACTING_CREDENTIAL.try_with(Clone::clone) {
        Ok(name) => format!("{detail} [admin credential {name}]"),
        Err(_) => detail,
    }
}

/// The credential of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235 §2.1).
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// A successful admin action's audit event at `time`, about `user_id` if any, its
/// detail naming the credential that acted ([`acting`]).
fn admin_event(time: OffsetDateTime, user_id: Option<String>, detail: String) -> NewAuditEvent {
    NewAuditEvent {
        time,
        kind: AuditKind::Admin,
        outcome: AuditOutcome::Ok,
        device: None,
        card_serial: None,
        user_id,
        detail: Some(acting(detail)),
    }
}

/// What an admin action acted on, so audit queries by user or card find it.
enum Subject<'a> {
    None,
    User(&'a str),
    Card(&'a str),
}

async fn admin_audit(
    state: &ServerState,
    outcome: AuditOutcome,
    subject: Subject<'_>,
    detail: String,
) -> Result<(), ApiError> {
    let (user_id, card_serial) = match subject {
        Subject::None => (None, None),
        Subject::User(id) => (Some(id.to_owned()), None),
        Subject::Card(serial) => (None, Some(serial.to_owned())),
    };
    state
        .store()
        .audit(NewAuditEvent {
            time: OffsetDateTime::now_utc(),
            kind: AuditKind::Admin,
            outcome,
            device: None,
            card_serial,
            user_id,
            detail: Some(acting(detail)),
        })
        .await
        .map_err(ApiError::from)
}

fn user_record(user: User) -> UserRecord {
    UserRecord {
        id: user.id,
        display_name: user.display_name,
        mail: user.mail,
        upn: user.upn,
        employee_id: user.employee_id,
        state: match user.state {
            UserState::Active => "active",
            UserState::Locked => "locked",
        }
        .to_owned(),
    }
}

fn card_record(card: Card) -> CardRecord {
    let id = card.id();
    CardRecord {
        id: id.qualified(),
        issuer_id: id.issuer_id(),
        serial: card.serial,
        fingerprint: card.fingerprint,
        subject: card.subject,
        issuer: card.issuer,
        user_id: card.user_id,
        state: match card.state {
            CardState::Active => "active",
            CardState::Locked => "locked",
            CardState::Revoked => "revoked",
        }
        .to_owned(),
        first_seen: rfc3339(card.first_seen),
        last_seen: rfc3339(card.last_seen),
    }
}

fn audit_record(event: AuditEvent) -> AuditRecord {
    AuditRecord {
        id: event.id,
        time: rfc3339(event.time),
        kind: event.kind.as_str().to_owned(),
        outcome: event.outcome.as_str().to_owned(),
        device: event.device,
        card_serial: event.card_serial,
        user_id: event.user_id,
        detail: event.detail,
    }
}

/// Longest user id.
const MAX_USER_ID_LEN: usize = 64;

/// Whether `id` is a user id: 1 to [`MAX_USER_ID_LEN`] ASCII letters, digits, `.`, `_`,
/// `@` or `-` (nothing invisible, nothing that looks like another character).
fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Checks a user to add: an id of the safe set, a name, no control characters anywhere,
/// and no invisible characters (zero-width, bidi) in the attributes cards map by.
fn new_user(record: UserRecord) -> Result<User, String> {
    let text_fields = [
        Some(&record.id),
        Some(&record.display_name),
        record.mail.as_ref(),
        record.upn.as_ref(),
        record.employee_id.as_ref(),
    ];
    let id_rule = || {
        format!(
            "the id must be 1 to {MAX_USER_ID_LEN} characters: ASCII letters, digits, '.', '_', '@' or '-'"
        )
    };
    if record.id.trim().is_empty() {
        return Err(id_rule());
    }
    if record.display_name.trim().is_empty() {
        return Err("the display name is empty".to_owned());
    }
    if text_fields
        .into_iter()
        .flatten()
        .any(|f| f.chars().any(char::is_control) || f.len() > 256)
    {
        return Err("fields must be at most 256 characters, without control characters".to_owned());
    }
    if !is_valid_user_id(record.id.trim()) {
        return Err(id_rule());
    }
    let mapped = [
        record.mail.as_ref(),
        record.upn.as_ref(),
        record.employee_id.as_ref(),
    ];
    if mapped
        .into_iter()
        .flatten()
        .any(|field| field.chars().any(pivtap_protocol::escape::is_hazard))
    {
        return Err(
            "mail, upn and employee_id must not hold zero-width, bidi or other invisible characters"
                .to_owned(),
        );
    }
    if record.mail.as_ref().is_some_and(|m| !m.contains('@')) {
        return Err("the mail address has no '@'".to_owned());
    }
    Ok(User {
        id: record.id.trim().to_owned(),
        display_name: record.display_name.trim().to_owned(),
        mail: record.mail.filter(|m| !m.is_empty()),
        upn: record.upn.filter(|u| !u.is_empty()),
        employee_id: record.employee_id.filter(|e| !e.is_empty()),
        state: UserState::Active,
    })
}

async fn list_users(State(state): State<ServerState>) -> Result<Json<Vec<UserRecord>>, ApiError> {
    let users = state.store().list_users().await?;
    Ok(Json(users.into_iter().map(user_record).collect()))
}

async fn add_user(
    State(state): State<ServerState>,
    body: Result<Json<UserRecord>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let user = new_user(json_body(body)?).map_err(ApiError::invalid)?;
    state.store().add_user(&user).await?;
    admin_audit(
        &state,
        AuditOutcome::Ok,
        Subject::User(&user.id),
        format!("added user {}", user.id),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user_record(user))))
}

/// `POST /users/import` query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportParams {
    /// Existing users are updated (else refused as existing).
    #[serde(default)]
    update: bool,
    /// Every check runs; nothing is kept.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /users/import[?update=true][&dry_run=true]`: a JSON array of users, or CSV
/// (`Content-Type: text/csv`) with the header `id,display_name,mail,upn,employee_id`.
async fn import_users(
    State(state): State<ServerState>,
    params: Result<Query<ImportParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ImportReport>, ApiError> {
    let Query(params) =
        params.map_err(|rejection| rejection_error("the query", &rejection.body_text()))?;
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large()
        } else {
            rejection_error("the import", &rejection.body_text())
        }
    })?;
    let body = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("the import is not UTF-8 text"))?;
    // Spreadsheets save CSV with a UTF-8 byte-order mark; it is not part of the first column's name.
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    let is_csv = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    let records = if is_csv {
        parse_csv_users(body).map_err(ApiError::invalid)?
    } else {
        serde_json::from_str::<Vec<UserRecord>>(body).map_err(|error| {
            ApiError::invalid(format!("the body is not a JSON array of users: {error}"))
        })?
    };
    if records.len() > MAX_IMPORT {
        return Err(ApiError::invalid(format!(
            "an import takes at most {MAX_IMPORT} users"
        )));
    }
    let mut report = ImportReport {
        added: 0,
        updated: 0,
        unchanged: 0,
        skipped: Vec::new(),
        users: Vec::new(),
        dry_run: params.dry_run,
    };
    // Every row keeps its place: refused ones now, the rest after the one write that
    // writes them, each with its own audit event.
    let mut outcomes: Vec<(String, Option<String>)> = Vec::with_capacity(records.len());
    let mut users = Vec::new();
    let now = OffsetDateTime::now_utc();
    for record in records {
        let id = record.id.clone();
        match new_user(record) {
            Err(reason) => outcomes.push((id, Some(reason))),
            Ok(user) => {
                let event = admin_event(
                    now,
                    Some(user.id.clone()),
                    format!("imported user {}", user.id),
                );
                outcomes.push((user.id.clone(), None));
                users.push((user, event));
            }
        }
    }
    let mut written = state
        .store()
        .import_users(users, params.update, params.dry_run)
        .await?
        .into_iter();
    for (id, refused) in outcomes {
        let reason = match refused {
            Some(reason) => reason,
            None => match written.next() {
                Some(Ok(done)) => {
                    let (outcome, changed) = match done {
                        UserWritten::Added => {
                            report.added += 1;
                            ("added", Vec::new())
                        }
                        UserWritten::Updated(fields) => {
                            report.updated += 1;
                            ("updated", fields.into_iter().map(str::to_owned).collect())
                        }
                        UserWritten::Unchanged => {
                            report.unchanged += 1;
                            ("unchanged", Vec::new())
                        }
                    };
                    report.users.push(ImportedUser {
                        id,
                        outcome: outcome.to_owned(),
                        changed,
                    });
                    continue;
                }
                Some(Err(StoreError::Conflict { .. })) => "exists already".to_owned(),
                Some(Err(StoreError::AttributeTaken { attribute, holder })) => {
                    format!("user {holder:?} has this {attribute} already")
                }
                Some(Err(error)) => return Err(error.into()),
                None => "not added".to_owned(),
            },
        };
        report.skipped.push(ImportSkip { id, reason });
    }
    if !params.dry_run {
        admin_audit(
            &state,
            AuditOutcome::Ok,
            Subject::None,
            format!(
                "imported users: {} added, {} updated, {} unchanged, {} refused",
                report.added,
                report.updated,
                report.unchanged,
                report.skipped.len()
            ),
        )
        .await?;
    }
    Ok(Json(report))
}

/// `PATCH /users/{id}`: changes a user's name and attributes, or renames them.
async fn update_user(
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<UserUpdate>, JsonRejection>,
) -> Result<Json<UserRecord>, ApiError> {
    let id = path_param(id)?;
    let change = json_body(body)?;
    let stored = state
        .store()
        .get_user(&id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no user {}", short(&id))))?;
    let before = user_record(stored);
    // A field given replaces the stored one; given empty, it is removed.
    let attribute = |given: Option<String>, stored: &Option<String>| match given {
        Some(value) if value.is_empty() => None,
        Some(value) => Some(value),
        None => stored.clone(),
    };
    let user = new_user(UserRecord {
        id: change.id.clone().unwrap_or_else(|| before.id.clone()),
        display_name: change
            .display_name
            .clone()
            .unwrap_or_else(|| before.display_name.clone()),
        mail: attribute(change.mail, &before.mail),
        upn: attribute(change.upn, &before.upn),
        employee_id: attribute(change.employee_id, &before.employee_id),
        state: before.state.clone(),
    })
    .map_err(ApiError::invalid)?;
    let mut changes: Vec<String> = [
        ("display_name", before.display_name != user.display_name),
        ("mail", before.mail != user.mail),
        ("upn", before.upn != user.upn),
        ("employee_id", before.employee_id != user.employee_id),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(field, _)| field.to_owned())
    .collect();
    if user.id != id {
        changes.insert(0, format!("renamed from {id}"));
    }
    let detail = if changes.is_empty() {
        format!("updated user {} (no change)", user.id)
    } else {
        format!("updated user {}: {}", user.id, changes.join(", "))
    };
    let event = admin_event(OffsetDateTime::now_utc(), Some(user.id.clone()), detail);
    state.store().update_user(&id, &user, event).await?;
    let updated = state
        .store()
        .get_user(&user.id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no user {}", user.id)))?;
    Ok(Json(user_record(updated)))
}

/// `DELETE /users/{id}`: deletes a user and revokes their cards.
async fn delete_user(
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<UserDeleted>, ApiError> {
    let id = path_param(id)?;
    let event = admin_event(
        OffsetDateTime::now_utc(),
        Some(id.clone()),
        format!("deleted user {id}; their cards are revoked (affiliationChanged)"),
    );
    let revoked = state.store().delete_user(&id, event).await?;
    end_sessions_of(
        &state,
        SessionSelector::User(id.clone()),
        SessionEndReason::UserDeleted,
    )
    .await?;
    Ok(Json(UserDeleted {
        deleted: id,
        revoked_cards: revoked.iter().map(CardId::qualified).collect(),
    }))
}

/// Reads CSV users (RFC 4180: quoted fields, `""` for a quote inside).
fn parse_csv_users(text: &str) -> Result<Vec<UserRecord>, String> {
    let mut rows = parse_csv(text)?.into_iter();
    let header = rows.next().ok_or("the CSV is empty")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let id = column("id").ok_or("the CSV header has no 'id' column")?;
    let name = column("display_name").ok_or("the CSV header has no 'display_name' column")?;
    let (mail, upn, employee) = (column("mail"), column("upn"), column("employee_id"));
    let field = |row: &[String], index: Option<usize>| {
        index
            .and_then(|i| row.get(i))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    Ok(rows
        .filter(|row| !(row.len() == 1 && row[0].trim().is_empty()))
        .map(|row| UserRecord {
            id: field(&row, Some(id)).unwrap_or_default(),
            display_name: field(&row, Some(name)).unwrap_or_default(),
            mail: field(&row, mail),
            upn: field(&row, upn),
            employee_id: field(&row, employee),
            state: "active".to_owned(),
        })
        .collect())
}

fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("the CSV ends inside a quoted field".to_owned());
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// The one path parameter; axum's rejection (such as bad UTF-8) as `invalid_request`.
fn path_param(param: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    param
        .map(|Path(value)| value)
        .map_err(|rejection| rejection_error("the path", &rejection.body_text()))
}

async fn set_user_state(
    state: ServerState,
    id: Result<Path<String>, PathRejection>,
    new: UserState,
    verb: &str,
) -> Result<Json<UserRecord>, ApiError> {
    let id = path_param(id)?;
    state.store().set_user_state(&id, new).await?;
    admin_audit(
        &state,
        AuditOutcome::Ok,
        Subject::User(&id),
        format!("{verb} user {id}"),
    )
    .await?;
    if new == UserState::Locked {
        end_sessions_of(
            &state,
            SessionSelector::User(id.clone()),
            SessionEndReason::UserLocked,
        )
        .await?;
    }
    let user = state
        .store()
        .get_user(&id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no user {id}")))?;
    Ok(Json(user_record(user)))
}

async fn lock_user(
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<UserRecord>, ApiError> {
    set_user_state(state, id, UserState::Locked, "locked").await
}

async fn unlock_user(
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<UserRecord>, ApiError> {
    set_user_state(state, id, UserState::Active, "unlocked").await
}

async fn list_cards(State(state): State<ServerState>) -> Result<Json<Vec<CardRecord>>, ApiError> {
    let cards = state.store().list_cards().await?;
    Ok(Json(cards.into_iter().map(card_record).collect()))
}

/// The card a path names: `serial@issuer-id` (as `GET /cards` shows `id`), or a bare serial
/// when only one card has it. The serial may be upper-case and have `:` between bytes.
/// `not_found` for no such card; `card_ambiguous` (409), naming the qualified ids, when a
/// bare serial names cards of several issuers.
async fn resolve_card(state: &ServerState, text: &str) -> Result<CardId, ApiError> {
    let (serial, issuer_id) = match text.split_once('@') {
        Some((serial, issuer_id)) => (serial, Some(issuer_id.to_ascii_lowercase())),
        None => (text, None),
    };
    let serial = serial.to_ascii_lowercase().replace(':', "");
    let mut ids: Vec<CardId> = state
        .store()
        .find_cards(&serial)
        .await?
        .iter()
        .map(Card::id)
        .filter(|id| {
            issuer_id
                .as_ref()
                .is_none_or(|wanted| id.issuer_id() == *wanted)
        })
        .collect();
    match ids.len() {
        0 => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no card {}", short(text)),
        )),
        1 => Ok(ids.remove(0)),
        _ => Err(ApiError::new(
            ErrorCode::CardAmbiguous,
            format!(
                "serial {serial} names cards of {} issuers; name one as serial@issuer-id: {}",
                ids.len(),
                ids.iter()
                    .map(CardId::qualified)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// A path's card text as messages quote it: at most 80 characters, no control characters.
fn short(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(80).collect()
}

async fn set_card_state(
    state: ServerState,
    card: Result<Path<String>, PathRejection>,
    new: CardState,
    verb: &str,
) -> Result<Json<CardRecord>, ApiError> {
    let id = resolve_card(&state, &path_param(card)?).await?;
    state.store().set_card_state(&id, new).await?;
    if new == CardState::Locked {
        end_sessions_of(
            &state,
            SessionSelector::Card(id.clone()),
            SessionEndReason::CardLocked,
        )
        .await?;
    }
    changed_card(
        &state,
        &id,
        format!("{verb} card {id} (issuer {})", id.issuer),
    )
    .await
}

/// After a change to card `id`: audits it with `detail` and answers the card as it is now.
async fn changed_card(
    state: &ServerState,
    id: &CardId,
    detail: String,
) -> Result<Json<CardRecord>, ApiError> {
    admin_audit(state, AuditOutcome::Ok, Subject::Card(&id.serial), detail).await?;
    let card = state
        .store()
        .get_card(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no card {id}")))?;
    Ok(Json(card_record(card)))
}

async fn lock_card(
    State(state): State<ServerState>,
    card: Result<Path<String>, PathRejection>,
) -> Result<Json<CardRecord>, ApiError> {
    set_card_state(state, card, CardState::Locked, "locked").await
}

async fn unlock_card(
    State(state): State<ServerState>,
    card: Result<Path<String>, PathRejection>,
) -> Result<Json<CardRecord>, ApiError> {
    set_card_state(state, card, CardState::Active, "unlocked").await
}

/// `POST /cards/{card}/revoke`, with an optional [`RevokeCardRequest`] naming the reason.
async fn revoke_card(
    State(state): State<ServerState>,
    card: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CardRecord>, ApiError> {
    let body = body.map_err(|rejection| rejection_error("the body", &rejection.body_text()))?;
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeCardRequest::default()
    } else {
        serde_json::from_slice::<RevokeCardRequest>(&body).map_err(|error| {
            ApiError::invalid(format!("the body is not a revocation request: {error}"))
        })?
    };
    let reason = match request.reason.as_deref() {
        None => RevocationReason::Unspecified,
        Some(text) => text.parse().map_err(|_| {
            ApiError::invalid(format!(
                "the reason must be one of {}",
                RevocationReason::ALL
                    .map(RevocationReason::as_str)
                    .join(", ")
            ))
        })?,
    };
    let id = resolve_card(&state, &path_param(card)?).await?;
    state.store().revoke_card(&id, reason).await?;
    end_sessions_of(
        &state,
        SessionSelector::Card(id.clone()),
        SessionEndReason::CardRevoked,
    )
    .await?;
    let detail = format!("revoked card {id} (issuer {}), reason {reason}", id.issuer);
    changed_card(&state, &id, detail).await
}

/// `DELETE /cards/{card}`: forgets a revoked card; it stays on the revocation list.
async fn delete_card(
    State(state): State<ServerState>,
    card: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let text = path_param(card)?;
    let serial = text
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .replace(':', "");
    let result = async {
        let id = resolve_card(&state, &text).await?;
        state
            .store()
            .delete_card(&id)
            .await
            .map_err(|error| match error {
                StoreError::Conflict { .. } => ApiError::new(
                    ErrorCode::Conflict,
                    format!("card {id} is not revoked; revoke it first"),
                ),
                other => ApiError::from(other),
            })?;
        end_sessions_of(
            &state,
            SessionSelector::Card(id.clone()),
            SessionEndReason::CardRevoked,
        )
        .await?;
        Ok::<_, ApiError>(id)
    }
    .await;
    let (outcome, detail) = match &result {
        Ok(id) => (
            AuditOutcome::Ok,
            format!("deleted card {id} (it stays on the revocation list)"),
        ),
        Err(error) => (
            error.code.into(),
            format!("delete card {}: {}", short(&text), error.message),
        ),
    };
    admin_audit(&state, outcome, Subject::Card(&short(&serial)), detail).await?;
    result.map(|_| StatusCode::NO_CONTENT)
}

/// `POST /enrollments`: a single-use enrollment code for an active user.
async fn create_enrollment(
    State(state): State<ServerState>,
    body: Result<Json<CreateEnrollmentRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<EnrollmentCode>), ApiError> {
    let request = json_body(body)?;
    let now = OffsetDateTime::now_utc();
    let result = async {
        let issuer = super::enrollment::issuer(&state)?;
        let max = issuer.policy().max_code_validity_seconds;
        if !(60..=max).contains(&request.valid_for_seconds) {
            return Err(ApiError::invalid(format!(
                "valid_for_seconds must be between 60 and {max} (the server's max_code_validity_seconds)"
            )));
        }
        let user = super::enrollment::check_enrollable(&state, &issuer, &request.user).await?;
        let code = super::enrollment::new_code();
        // Whole seconds: what is stored and what is shown agree.
        let expires_at = (now + std::time::Duration::from_secs(request.valid_for_seconds))
            .replace_nanosecond(0)
            .unwrap_or(now);
        state
            .store()
            .add_enrollment_code(&crate::store::NewEnrollmentCode {
                code_hash: super::enrollment::code_hash(&code),
                user_id: user.id.clone(),
                created_at: now,
                expires_at,
            })
            .await?;
        Ok((
            EnrollmentCode {
                url: pivtap_protocol::wire::enrollment_url(&state.settings().origin, &code),
                code,
                user: UserInfo {
                    id: user.id.clone(),
                    display_name: user.display_name.clone(),
                    mail: user.mail.clone(),
                },
                expires_at: rfc3339(expires_at),
            },
            expires_at,
        ))
    }
    .await;
    let (outcome, detail) = match &result {
        Ok((made, expires_at)) => (
            AuditOutcome::Ok,
            format!(
                "enrollment code #{} for user {} until {}",
                &super::enrollment::code_hash(&made.code)[..8],
                request.user,
                rfc3339(*expires_at)
            ),
        ),
        Err(error) => (
            error.code.into(),
            format!(
                "enrollment code for user {}: {}",
                request.user, error.message
            ),
        ),
    };
    admin_audit(&state, outcome, Subject::User(&request.user), detail).await?;
    result.map(|(made, _)| (StatusCode::CREATED, Json(made)))
}

/// Whether `name` may name an admin credential: 1 to 64 of ASCII letters, digits, `.`,
/// `_`, `@` and `-` (as user ids).
fn is_valid_credential_name(name: &str) -> bool {
    is_valid_user_id(name)
}

fn credential_record(stored: &AdminCredential) -> AdminCredentialRecord {
    AdminCredentialRecord {
        name: stored.name.clone(),
        created_at: Some(rfc3339(stored.created_at)),
        revoked_at: stored.revoked_at.map(rfc3339),
        token: None,
    }
}

/// `GET /credentials`: the admin credentials, the token file's (`initial`) first.
async fn list_credentials(
    State(state): State<ServerState>,
) -> Result<Json<Vec<AdminCredentialRecord>>, ApiError> {
    let stored = state.store().admin_credentials().await?;
    let mut records = Vec::with_capacity(stored.len() + 1);
    if !stored.iter().any(|c| c.name == INITIAL_ADMIN_CREDENTIAL) {
        records.push(AdminCredentialRecord {
            name: INITIAL_ADMIN_CREDENTIAL.to_owned(),
            created_at: None,
            revoked_at: None,
            token: None,
        });
    }
    records.extend(stored.iter().map(credential_record));
    records.sort_by_key(|record| record.name != INITIAL_ADMIN_CREDENTIAL);
    Ok(Json(records))
}

/// `POST /credentials`: a new named admin credential; its token is in this answer only.
async fn add_credential(
    State(state): State<ServerState>,
    body: Result<Json<CreateAdminCredential>, JsonRejection>,
) -> Result<(StatusCode, Json<AdminCredentialRecord>), ApiError> {
    let name = json_body(body)?.name;
    if !is_valid_credential_name(&name) || name == INITIAL_ADMIN_CREDENTIAL {
        return Err(ApiError::invalid(format!(
            "the name must be 1 to {MAX_USER_ID_LEN} characters: ASCII letters, digits, '.', \
             '_', '@' or '-', and not {INITIAL_ADMIN_CREDENTIAL:?} (the token file's)"
        )));
    }
    let mut bytes = zeroize::Zeroizing::new([0_u8; 32]);
    rand::fill(&mut bytes[..]);
    let token = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(&bytes[..]));
    let hash = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    let now = OffsetDateTime::now_utc();
    let event = admin_event(now, None, format!("added admin credential {name}"));
    state
        .store()
        .add_admin_credential(&name, &hash, now, event)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AdminCredentialRecord {
            name,
            created_at: Some(rfc3339(now)),
            revoked_at: None,
            token: Some(token.to_string()),
        }),
    ))
}

/// `POST /credentials/{name}/revoke`: revokes an admin credential for good.
async fn revoke_credential(
    State(state): State<ServerState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<AdminCredentialRecord>, ApiError> {
    let name = path_param(name)?;
    let now = OffsetDateTime::now_utc();
    let event = admin_event(
        now,
        None,
        format!("revoked admin credential {}", short(&name)),
    );
    state
        .store()
        .revoke_admin_credential(&name, &state.initial_admin_hash(), now, event)
        .await?;
    let stored = state.store().admin_credentials().await?;
    stored
        .iter()
        .find(|c| c.name == name)
        .map(|c| Json(credential_record(c)))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such admin credential"))
}

/// `GET /audit` query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    user: Option<String>,
    card: Option<String>,
    device: Option<String>,
    outcome: Option<String>,
    kind: Option<String>,
    before: Option<i64>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
}

async fn query_audit(
    State(state): State<ServerState>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let Query(params) =
        params.map_err(|rejection| rejection_error("the query", &rejection.body_text()))?;
    let time = |value: Option<String>, name: &str| {
        value
            .map(|text| {
                OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| {
                    ApiError::invalid(format!(
                        "{name} must be an RFC 3339 time, such as 2026-11-22T08:00:00Z"
                    ))
                })
            })
            .transpose()
    };
    let kind = params
        .kind
        .map(|kind| {
            kind.parse::<AuditKindFilter>().map_err(|_| {
                ApiError::invalid(format!("kind must be one of {}", AuditKindFilter::names()))
            })
        })
        .transpose()?;
    let outcome = params
        .outcome
        .map(|outcome| {
            outcome.parse::<AuditOutcome>().map_err(|_| {
                ApiError::invalid("outcome must be ok or an error code, such as challenge_reused")
            })
        })
        .transpose()?;
    let query = AuditQuery {
        user_id: params.user,
        // The audit names a card by serial: a card id (`serial@issuer-id`) is cut to it.
        card_serial: params.card.map(|s| {
            let serial = s.split('@').next().unwrap_or_default();
            serial.to_ascii_lowercase().replace(':', "")
        }),
        device: params.device,
        outcome,
        kind,
        before: params.before,
        since: time(params.since, "since")?,
        until: time(params.until, "until")?,
        limit: params
            .limit
            .unwrap_or(AuditQuery::DEFAULT_LIMIT)
            .min(AuditQuery::MAX_LIMIT),
    };
    // `limit=0` asks for no events (the store reads 0 as its default).
    if query.limit == 0 {
        return Ok(Json(Vec::new()));
    }
    let events = state.store().query_audit(&query).await?;
    Ok(Json(events.into_iter().map(audit_record).collect()))
}

/// Ends the active sessions of a user or card for `reason` (a lock, revocation or deletion
/// just done), in one write with their audit event (`session`, naming the user, the card
/// if one, the sessions and the acting credential). Nothing is written when none is active.
async fn end_sessions_of(
    state: &ServerState,
    selector: SessionSelector,
    reason: SessionEndReason,
) -> Result<(), ApiError> {
    let query = match &selector {
        SessionSelector::User(id) => SessionQuery {
            user_id: Some(id.clone()),
            ..SessionQuery::default()
        },
        SessionSelector::Card(card) => SessionQuery {
            card_serial: Some(card.serial.clone()),
            ..SessionQuery::default()
        },
        SessionSelector::Id(_) | SessionSelector::Expired => {
            unreachable!("only users and cards are ended by an admin change")
        }
    };
    let active: Vec<Session> = state
        .store()
        .list_sessions(&SessionQuery {
            active_only: true,
            limit: crate::store::sessions::MAX_SESSION_LIST,
            ..query
        })
        .await?
        .into_iter()
        .filter(|session| match &selector {
            SessionSelector::Card(card) => session.card == *card,
            _ => true,
        })
        .collect();
    let Some(first) = active.first() else {
        return Ok(());
    };
    let ids: Vec<&str> = active.iter().map(|session| session.id.as_str()).collect();
    let now = OffsetDateTime::now_utc();
    let event = NewAuditEvent {
        time: now,
        kind: AuditKind::Session,
        outcome: AuditOutcome::Ok,
        device: None,
        card_serial: match &selector {
            SessionSelector::Card(card) => Some(card.serial.clone()),
            _ => None,
        },
        user_id: Some(first.user_id.clone()),
        detail: Some(acting(format!(
            "session{} {} ended: {reason}",
            if ids.len() == 1 { "" } else { "s" },
            ids.join(", ")
        ))),
    };
    state
        .store()
        .end_sessions(&selector, reason, now, Some(event))
        .await?;
    Ok(())
}

/// A session as the admin API shows it.
fn session_record(session: Session) -> SessionRecord {
    SessionRecord {
        id: session.id,
        user_id: session.user_id,
        device: session.device,
        card_serial: session.card.serial,
        amr: session.amr,
        created_at: rfc3339(session.created_at),
        expires_at: rfc3339(session.expires_at),
        ended_at: session.ended_at.map(rfc3339),
        ended_reason: session.ended_reason,
        clients: session.clients,
    }
}

/// The filters of `GET /sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionParams {
    user: Option<String>,
    device: Option<String>,
    card: Option<String>,
    active: Option<bool>,
}

/// `GET /sessions?user=&device=&card=&active=true`: sessions, newest first (at most 1000).
async fn list_sessions(
    State(state): State<ServerState>,
    params: Result<Query<SessionParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<SessionRecord>>, ApiError> {
    let Query(params) =
        params.map_err(|rejection| rejection_error("the query", &rejection.body_text()))?;
    let query = SessionQuery {
        user_id: params.user,
        device: params.device,
        // As the audit: a card id (`serial@issuer-id`) is cut to its serial.
        card_serial: params.card.map(|text| {
            let serial = text.split('@').next().unwrap_or_default();
            serial.to_ascii_lowercase().replace(':', "")
        }),
        active_only: params.active.unwrap_or(false),
        limit: crate::store::sessions::MAX_SESSION_LIST,
    };
    let sessions = state.store().list_sessions(&query).await?;
    Ok(Json(sessions.into_iter().map(session_record).collect()))
}

async fn get_session(state: &ServerState, id: &str) -> Result<Session, ApiError> {
    state
        .store()
        .get_session(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no session {}", short(id))))
}

/// `GET /sessions/{id}`.
async fn show_session(
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionRecord>, ApiError> {
    let id = path_param(id)?;
    Ok(Json(session_record(get_session(&state, &id).await?)))
}

/// `DELETE /sessions/{id}`: ends the session (`admin`), audited with the acting
/// credential; answers the session as it is now (one that had ended stays as it was).
async fn end_session(
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionRecord>, ApiError> {
    let id = path_param(id)?;
    let session = get_session(&state, &id).await?;
    let now = OffsetDateTime::now_utc();
    if session.ended_at.is_some() {
        return Ok(Json(session_record(session)));
    }
    let event = super::sessions::session_event(
        &session,
        AuditOutcome::Ok,
        now,
        acting(format!(
            "session {} ended: {}",
            session.id,
            SessionEndReason::Admin
        )),
    );
    let ended = state
        .store()
        .end_sessions(
            &SessionSelector::Id(session.id.clone()),
            SessionEndReason::Admin,
            now,
            Some(event),
        )
        .await?;
    match ended.into_iter().next() {
        Some(ended) => Ok(Json(session_record(ended))),
        None => Ok(Json(session_record(get_session(&state, &id).await?))),
    }
}

/// Whether `text` may be a client's redirect or back-channel logout URI: absolute, no
/// fragment, no user info, `https`, or `http` on a loopback host (127.0.0.1, [::1],
/// localhost). The reason when not.
fn check_client_uri(text: &str) -> Result<(), String> {
    let quoted = short(text);
    let url = url::Url::parse(text).map_err(|_| format!("{quoted:?} is not an absolute URI"))?;
    if url.fragment().is_some() {
        return Err(format!("{quoted:?} has a fragment (#...)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{quoted:?} carries user information"));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{quoted:?} is plain http on a host that is not this machine's loopback; use https"
        )),
        _ => Err(format!("{quoted:?} is not an https URI")),
    }
}

/// Most redirect URIs one client registers.
const MAX_REDIRECT_URIS: usize = 20;
/// Longest redirect or back-channel logout URI.
const MAX_CLIENT_URI_LEN: usize = 2000;

/// Checks a client to register; the reason when it cannot be.
fn check_new_client(client: &NewClient) -> Result<(), String> {
    if !is_valid_user_id(&client.id) {
        return Err(format!(
            "the client id must be 1 to {MAX_USER_ID_LEN} of A-Z a-z 0-9 . _ @ -"
        ));
    }
    if client.id == crate::store::KIOSK_CLIENT_ID {
        return Err(format!(
            "the client id {} is reserved for the kiosk",
            crate::store::KIOSK_CLIENT_ID
        ));
    }
    if client.redirect_uris.is_empty() || client.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(format!(
            "a client has 1 to {MAX_REDIRECT_URIS} redirect URIs"
        ));
    }
    for uri in client
        .redirect_uris
        .iter()
        .chain(client.backchannel_logout_uri.iter())
    {
        if uri.len() > MAX_CLIENT_URI_LEN {
            return Err(format!(
                "a URI is longer than {MAX_CLIENT_URI_LEN} characters"
            ));
        }
        check_client_uri(uri)?;
    }
    Ok(())
}

/// A client as the admin API shows it (never its secret or the secret's hash).
fn client_record(client: OidcClient) -> ClientRecord {
    ClientRecord {
        public: client.secret_hash.is_none(),
        id: client.id,
        redirect_uris: client.redirect_uris,
        backchannel_logout_uri: client.backchannel_logout_uri,
        created_at: rfc3339(client.created_at),
    }
}

/// `POST /clients`: registers an OpenID Connect client; a confidential one's secret is in
/// the answer, this once (the store keeps its SHA-256).
async fn add_client(
    State(state): State<ServerState>,
    body: Result<Json<NewClient>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedClient>), ApiError> {
    let new = json_body(body)?;
    check_new_client(&new).map_err(ApiError::invalid)?;
    let secret = (!new.public)
        .then(|| zeroize::Zeroizing::new(pivtap_protocol::nonce::random_base64url::<32>()));
    let client = OidcClient {
        id: new.id,
        secret_hash: secret
            .as_ref()
            .map(|secret| crate::store::secret_hash(secret)),
        redirect_uris: new.redirect_uris,
        backchannel_logout_uri: new.backchannel_logout_uri,
        created_at: OffsetDateTime::now_utc(),
    };
    state
        .store()
        .add_client(&client)
        .await
        .map_err(|error| match error {
            StoreError::Conflict { .. } => ApiError::new(
                ErrorCode::Conflict,
                format!("a client {} is registered already", client.id),
            ),
            other => ApiError::from(other),
        })?;
    let kind = if secret.is_some() {
        "confidential"
    } else {
        "public"
    };
    admin_audit(
        &state,
        AuditOutcome::Ok,
        Subject::None,
        format!("registered {kind} client {}", client.id),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedClient {
            client: client_record(client),
            secret: secret.map(|secret| secret.to_string()),
        }),
    ))
}

/// `GET /clients`.
async fn list_clients(
    State(state): State<ServerState>,
) -> Result<Json<Vec<ClientRecord>>, ApiError> {
    let clients = state.store().list_clients().await?;
    Ok(Json(clients.into_iter().map(client_record).collect()))
}

/// `GET /clients/{id}`.
async fn show_client(
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ClientRecord>, ApiError> {
    let id = path_param(id)?;
    state
        .store()
        .get_client(&id)
        .await?
        .map(|client| Json(client_record(client)))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no client {}", short(&id))))
}

/// `DELETE /clients/{id}`: removes a client (its tokens stop working: it is unknown).
async fn remove_client(
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_param(id)?;
    state
        .store()
        .remove_client(&id)
        .await
        .map_err(|error| match error {
            StoreError::NotFound { .. } => {
                ApiError::new(ErrorCode::NotFound, format!("no client {}", short(&id)))
            }
            other => ApiError::from(other),
        })?;
    admin_audit(
        &state,
        AuditOutcome::Ok,
        Subject::None,
        format!("removed client {id}"),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn csv_users_with_quotes_and_missing_columns() {
        let csv = "id,display_name,mail\nalice,\"Example, Alice\",alice@example.com\r\nbob,\"Bob \"\"B\"\" Example\",\n\n";
        let users = parse_csv_users(csv).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].display_name, "Example, Alice");
        assert_eq!(users[0].mail.as_deref(), Some("alice@example.com"));
        assert_eq!(users[1].display_name, "Bob \"B\" Example");
        assert_eq!(users[1].mail, None);
        assert!(parse_csv_users("name\nx").unwrap_err().contains("'id'"));
        assert!(
            parse_csv_users("id,display_name\n\"open")
                .unwrap_err()
                .contains("quoted")
        );
        assert!(parse_csv_users("").is_err());
    }

    #[test]
    fn new_users_are_checked() {
        let record = |id: &str, name: &str, mail: Option<&str>| UserRecord {
            id: id.to_owned(),
            display_name: name.to_owned(),
            mail: mail.map(str::to_owned),
            upn: None,
            employee_id: None,
            state: "locked".to_owned(),
        };
        let user = new_user(record(" alice ", "Alice", Some("a@example.com"))).unwrap();
        assert_eq!(user.id, "alice");
        assert_eq!(user.state, UserState::Active, "new users are active");
        assert!(new_user(record("", "Alice", None)).is_err());
        assert!(new_user(record("a", " ", None)).is_err());
        assert!(new_user(record("a", "A\u{7}", None)).is_err());
        assert!(new_user(record("a", "A", Some("not-a-mail"))).is_err());
    }
}
