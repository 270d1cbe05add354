//! The SQLite store's sessions, refresh tokens, OpenID Connect clients, authorization codes and logout deliveries (store version 10).
//!
//! Every function runs inside the caller's write (or read): the writer thread commits one
//! write at a time, so each one is a single step across every connection to the file.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use time::OffsetDateTime;

use super::{
    collect_rows, column_error, decode_time, encode_time, insert_audit, is_unique_violation,
};
use crate::store::sessions::{
    CodeRedemption, DeliveryOutcome, KIOSK_CLIENT_ID, LogoutDelivery, NewAuthorizationCode,
    NewSession, OidcClient, RefreshUse, Session, SessionEndReason, SessionQuery, SessionSelector,
};
use crate::store::{CardId, NewAuditEvent, StoreError};

/// `SELECT` of every [`Session`] column (its clients as a JSON array), followed by the rest.
macro_rules! select_sessions {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_id, device, card_issuer, card_serial, amr, created_at, expires_at, \
             ended_at, ended_reason, (SELECT json_group_array(client_id) FROM session_clients \
             WHERE session_id = sessions.id) AS clients FROM sessions ",
            $rest
        )
    };
}

/// `SELECT` of every [`OidcClient`] column, followed by the rest.
macro_rules! select_clients {
    ($rest:literal) => {
        concat!(
            "SELECT id, secret_hash, redirect_uris, backchannel_logout_uri, created_at \
             FROM oidc_clients ",
            $rest
        )
    };
}

fn optional_time(column: &str, text: Option<String>) -> Result<Option<OffsetDateTime>, StoreError> {
    text.map(|text| decode_time(column, &text)).transpose()
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Session, StoreError>> {
    let amr: String = row.get("amr")?;
    let created_at: String = row.get("created_at")?;
    let expires_at: String = row.get("expires_at")?;
    let ended_at: Option<String> = row.get("ended_at")?;
    let ended_reason: Option<String> = row.get("ended_reason")?;
    let clients: String = row.get("clients")?;
    let (id, user_id, device) = (row.get("id")?, row.get("user_id")?, row.get("device")?);
    let card = CardId {
        issuer: row.get("card_issuer")?,
        serial: row.get("card_serial")?,
    };
    Ok((|| {
        let mut clients: Vec<String> =
            serde_json::from_str(&clients).map_err(|error| column_error("clients", error))?;
        clients.sort();
        Ok(Session {
            id,
            user_id,
            device,
            card,
            amr: amr.split_whitespace().map(str::to_owned).collect(),
            created_at: decode_time("created_at", &created_at)?,
            expires_at: decode_time("expires_at", &expires_at)?,
            ended_at: optional_time("ended_at", ended_at)?,
            ended_reason: ended_reason
                .map(|text| {
                    text.parse::<SessionEndReason>()
                        .map_err(|()| column_error("ended_reason", format!("{text:?}")))
                })
                .transpose()?,
            clients,
        })
    })())
}

fn client_from_row(row: &Row<'_>) -> rusqlite::Result<Result<OidcClient, StoreError>> {
    let redirect_uris: String = row.get("redirect_uris")?;
    let created_at: String = row.get("created_at")?;
    let (id, secret_hash, backchannel_logout_uri) = (
        row.get("id")?,
        row.get("secret_hash")?,
        row.get("backchannel_logout_uri")?,
    );
    Ok((|| {
        Ok(OidcClient {
            id,
            secret_hash,
            redirect_uris: serde_json::from_str(&redirect_uris)
                .map_err(|error| column_error("redirect_uris", error))?,
            backchannel_logout_uri,
            created_at: decode_time("created_at", &created_at)?,
        })
    })())
}

fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<Result<LogoutDelivery, StoreError>> {
    let created_at: String = row.get("created_at")?;
    let attempts: i64 = row.get("attempts")?;
    let (id, session_id, client_id, uri, user_id) = (
        row.get("id")?,
        row.get("session_id")?,
        row.get("client_id")?,
        row.get("uri")?,
        row.get("user_id")?,
    );
    Ok((|| {
        Ok(LogoutDelivery {
            id,
            session_id,
            client_id,
            uri,
            user_id,
            attempts: u32::try_from(attempts).map_err(|error| column_error("attempts", error))?,
            created_at: decode_time("created_at", &created_at)?,
        })
    })())
}

pub(super) fn get_session(
    connection: &Connection,
    id: &str,
) -> Result<Option<Session>, StoreError> {
    connection
        .prepare_cached(select_sessions!("WHERE id = ?"))?
        .query_row([id], session_from_row)
        .optional()?
        .transpose()
}

pub(super) fn list_sessions(
    connection: &Connection,
    query: &SessionQuery,
) -> Result<Vec<Session>, StoreError> {
    let mut sql = select_sessions!("WHERE 1 = 1").to_owned();
    let mut values: Vec<Value> = Vec::new();
    for (column, value) in [
        ("user_id", &query.user_id),
        ("device", &query.device),
        ("card_serial", &query.card_serial),
    ] {
        if let Some(value) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            values.push(Value::Text(value.clone()));
        }
    }
    if query.active_only {
        sql.push_str(" AND ended_at IS NULL");
    }
    sql.push_str(" ORDER BY created_at DESC, id LIMIT ?");
    values.push(Value::Integer(
        i64::try_from(query.effective_limit()).unwrap_or(i64::MAX),
    ));
    let mut statement = connection.prepare_cached(&sql)?;
    collect_rows(&mut statement, params_from_iter(values), session_from_row)
}

/// Stores a sign-in's session and the kiosk's first refresh token, after its card was
/// recorded in the same write. When the user or the card is no longer active (locked or
/// revoked since the sign-in's checks read them) the session is stored ended, with the
/// lock's reason, and its token revoked: a lock never misses a session finishing with it.
pub(super) fn insert_session(
    connection: &Connection,
    session: &NewSession,
) -> Result<(), StoreError> {
    let created_at = encode_time(session.created_at)?;
    let ended: Option<&str> = connection
        .prepare_cached(
            "SELECT CASE
                 WHEN (SELECT state FROM cards WHERE issuer = ?1 AND serial = ?2) = 'revoked'
                     THEN 'card_revoked'
                 WHEN (SELECT state FROM cards WHERE issuer = ?1 AND serial = ?2) = 'locked'
                     THEN 'card_locked'
                 WHEN (SELECT state FROM users WHERE id = ?3) = 'locked' THEN 'user_locked'
             END",
        )?
        .query_row(
            params![session.card.issuer, session.card.serial, session.user_id],
            |row| row.get::<_, Option<String>>(0),
        )?
        .and_then(|reason| reason.parse::<SessionEndReason>().ok())
        .map(SessionEndReason::as_str);
    let ended_at = ended.map(|_| created_at.clone());
    let result = connection
        .prepare_cached(
            "INSERT INTO sessions (id, user_id, device, card_issuer, card_serial, amr, created_at,
             expires_at, ended_at, ended_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            session.id,
            session.user_id,
            session.device,
            session.card.issuer,
            session.card.serial,
            session.amr.join(" "),
            created_at,
            encode_time(session.expires_at)?,
            ended_at,
            ended,
        ]);
    match result {
        Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
            what: "the session exists already".to_owned(),
        }),
        other => other.map(drop).map_err(StoreError::from),
    }?;
    insert_refresh_token(
        connection,
        &session.id,
        KIOSK_CLIENT_ID,
        &session.refresh_token_hash,
        "",
        &created_at,
    )?;
    if ended.is_some() {
        connection
            .prepare_cached(
                "UPDATE session_refresh_tokens SET revoked_at = ? WHERE token_hash = ?",
            )?
            .execute(params![created_at, session.refresh_token_hash])?;
    }
    Ok(())
}

fn insert_refresh_token(
    connection: &Connection,
    session_id: &str,
    client_id: &str,
    token_hash: &str,
    scope: &str,
    now: &str,
) -> Result<(), StoreError> {
    let result = connection
        .prepare_cached(
            "INSERT INTO session_refresh_tokens (token_hash, session_id, client_id, scope,
             created_at) VALUES (?, ?, ?, ?, ?)",
        )?
        .execute(params![token_hash, session_id, client_id, scope, now]);
    match result {
        // The message leaves the hash out.
        Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
            what: "the refresh token exists already".to_owned(),
        }),
        other => other.map(drop).map_err(StoreError::from),
    }
}

/// Ends the sessions with these ids (not ended yet): see [`Store::end_sessions`](crate::store::Store::end_sessions).
fn end_these(
    connection: &Connection,
    ids: &[String],
    reason: SessionEndReason,
    now: OffsetDateTime,
) -> Result<Vec<Session>, StoreError> {
    let at = encode_time(now)?;
    let mut ended = Vec::with_capacity(ids.len());
    for id in ids {
        let changed = connection
            .prepare_cached(
                "UPDATE sessions SET ended_at = ?, ended_reason = ? WHERE id = ? AND ended_at IS NULL",
            )?
            .execute(params![at, reason.as_str(), id])?;
        if changed == 0 {
            continue;
        }
        connection
            .prepare_cached(
                "UPDATE session_refresh_tokens SET revoked_at = ?
                 WHERE session_id = ? AND revoked_at IS NULL",
            )?
            .execute(params![at, id])?;
        connection
            .prepare_cached(
                "INSERT INTO logout_deliveries (session_id, client_id, uri, user_id, created_at,
                 attempts, next_attempt_at)
                 SELECT s.id, c.id, c.backchannel_logout_uri, s.user_id, ?1, 0, ?1
                 FROM session_clients sc
                 JOIN sessions s ON s.id = sc.session_id
                 JOIN oidc_clients c ON c.id = sc.client_id
                 WHERE sc.session_id = ?2 AND c.backchannel_logout_uri IS NOT NULL
                 ORDER BY c.id",
            )?
            .execute(params![at, id])?;
        if let Some(session) = get_session(connection, id)? {
            ended.push(session);
        }
    }
    Ok(ended)
}

pub(super) fn end_sessions(
    connection: &Connection,
    selector: &SessionSelector,
    reason: SessionEndReason,
    now: OffsetDateTime,
    event: Option<&NewAuditEvent>,
) -> Result<Vec<Session>, StoreError> {
    let ids: Vec<String> = {
        let read_id = |row: &Row<'_>| row.get::<_, String>(0);
        let mut ids = Vec::new();
        let rows = match selector {
            SessionSelector::Id(id) => connection
                .prepare_cached("SELECT id FROM sessions WHERE id = ? AND ended_at IS NULL")?
                .query_map([id], read_id)?
                .collect::<rusqlite::Result<Vec<_>>>(),
            SessionSelector::User(user) => connection
                .prepare_cached(
                    "SELECT id FROM sessions WHERE user_id = ? AND ended_at IS NULL ORDER BY id",
                )?
                .query_map([user], read_id)?
                .collect(),
            SessionSelector::Card(card) => connection
                .prepare_cached(
                    "SELECT id FROM sessions WHERE card_serial = ? AND card_issuer = ?
                     AND ended_at IS NULL ORDER BY id",
                )?
                .query_map([&card.serial, &card.issuer], read_id)?
                .collect(),
            SessionSelector::Expired => connection
                .prepare_cached(
                    "SELECT id FROM sessions WHERE expires_at <= ? AND ended_at IS NULL ORDER BY id",
                )?
                .query_map([encode_time(now)?], read_id)?
                .collect(),
        };
        ids.extend(rows?);
        ids
    };
    let ended = end_these(connection, &ids, reason, now)?;
    if let Some(event) = event {
        insert_audit(connection, event)?;
    }
    Ok(ended)
}

/// A refresh token's session, client, scope, and when it was replaced and revoked.
type StoredToken = (String, String, String, Option<String>, Option<String>);

pub(super) fn use_refresh_token(
    connection: &Connection,
    token_hash: &str,
    client_id: &str,
    replacement_hash: &str,
    now: OffsetDateTime,
) -> Result<RefreshUse, StoreError> {
    let token: Option<StoredToken> = connection
        .prepare_cached(
            "SELECT session_id, client_id, scope, replaced_at, revoked_at
             FROM session_refresh_tokens WHERE token_hash = ?",
        )?
        .query_row([token_hash], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    let Some((session_id, owner, scope, replaced_at, revoked_at)) = token else {
        return Ok(RefreshUse::Unknown);
    };
    if owner != client_id {
        return Ok(RefreshUse::Unknown);
    }
    let Some(session) = get_session(connection, &session_id)? else {
        return Ok(RefreshUse::Unknown);
    };
    if revoked_at.is_some() || !session.is_active(now) {
        return Ok(RefreshUse::Ended);
    }
    if replaced_at.is_some() {
        end_these(
            connection,
            &[session_id],
            SessionEndReason::RefreshReused,
            now,
        )?;
        return Ok(RefreshUse::Reused);
    }
    let at = encode_time(now)?;
    connection
        .prepare_cached(
            "UPDATE session_refresh_tokens SET replaced_at = ?
             WHERE token_hash = ? AND replaced_at IS NULL AND revoked_at IS NULL",
        )?
        .execute(params![at, token_hash])?;
    insert_refresh_token(
        connection,
        &session_id,
        client_id,
        replacement_hash,
        &scope,
        &at,
    )?;
    Ok(RefreshUse::Rotated {
        session: Box::new(session),
        scope,
    })
}

/// [`StoreError::Conflict`] unless the session exists and is active at `now`.
fn require_active(
    connection: &Connection,
    session_id: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    match get_session(connection, session_id)? {
        Some(session) if session.is_active(now) => Ok(()),
        _ => Err(StoreError::Conflict {
            what: "the session is not active".to_owned(),
        }),
    }
}

pub(super) fn record_session_client(
    connection: &Connection,
    session_id: &str,
    client_id: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    require_active(connection, session_id, now)?;
    connection
        .prepare_cached(
            "INSERT INTO session_clients (session_id, client_id, first_at) VALUES (?, ?, ?)
             ON CONFLICT (session_id, client_id) DO NOTHING",
        )?
        .execute(params![session_id, client_id, encode_time(now)?])?;
    Ok(())
}

pub(super) fn add_refresh_token(
    connection: &Connection,
    session_id: &str,
    client_id: &str,
    token_hash: &str,
    scope: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    record_session_client(connection, session_id, client_id, now)?;
    insert_refresh_token(
        connection,
        session_id,
        client_id,
        token_hash,
        scope,
        &encode_time(now)?,
    )
}

pub(super) fn revoke_refresh_token(
    connection: &Connection,
    token_hash: &str,
    client_id: &str,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let changed = connection
        .prepare_cached(
            "UPDATE session_refresh_tokens SET revoked_at = ?
             WHERE token_hash = ? AND client_id = ? AND revoked_at IS NULL",
        )?
        .execute(params![encode_time(now)?, token_hash, client_id])?;
    Ok(changed > 0)
}

pub(super) fn add_client(connection: &Connection, client: &OidcClient) -> Result<(), StoreError> {
    let redirect_uris = serde_json::to_string(&client.redirect_uris)
        .map_err(|error| column_error("redirect_uris", error))?;
    let result = connection
        .prepare_cached(
            "INSERT INTO oidc_clients (id, secret_hash, redirect_uris, backchannel_logout_uri,
             created_at) VALUES (?, ?, ?, ?, ?)",
        )?
        .execute(params![
            client.id,
            client.secret_hash,
            redirect_uris,
            client.backchannel_logout_uri,
            encode_time(client.created_at)?,
        ]);
    match result {
        Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
            what: format!("client {:?} exists already", client.id),
        }),
        other => other.map(drop).map_err(StoreError::from),
    }
}

pub(super) fn get_client(
    connection: &Connection,
    id: &str,
) -> Result<Option<OidcClient>, StoreError> {
    connection
        .prepare_cached(select_clients!("WHERE id = ?"))?
        .query_row([id], client_from_row)
        .optional()?
        .transpose()
}

pub(super) fn list_clients(connection: &Connection) -> Result<Vec<OidcClient>, StoreError> {
    let mut statement = connection.prepare_cached(select_clients!("ORDER BY id"))?;
    collect_rows(&mut statement, [], client_from_row)
}

pub(super) fn remove_client(
    connection: &Connection,
    id: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let removed = connection
        .prepare_cached("DELETE FROM oidc_clients WHERE id = ?")?
        .execute([id])?;
    if removed == 0 {
        return Err(StoreError::NotFound {
            what: format!("client {id:?}"),
        });
    }
    connection
        .prepare_cached("DELETE FROM authorization_codes WHERE client_id = ? AND used_at IS NULL")?
        .execute([id])?;
    connection
        .prepare_cached(
            "UPDATE session_refresh_tokens SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL",
        )?
        .execute(params![encode_time(now)?, id])?;
    Ok(())
}

pub(super) fn add_authorization_code(
    connection: &Connection,
    code: &NewAuthorizationCode,
) -> Result<(), StoreError> {
    let result = connection
        .prepare_cached(
            "INSERT INTO authorization_codes (code_hash, client_id, session_id, redirect_uri,
             code_challenge, scope, nonce, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            code.code_hash,
            code.client_id,
            code.session_id,
            code.redirect_uri,
            code.code_challenge,
            code.scope,
            code.nonce,
            encode_time(code.created_at)?,
            encode_time(code.expires_at)?,
        ]);
    match result {
        Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
            what: "the authorization code exists already".to_owned(),
        }),
        other => other.map(drop).map_err(StoreError::from),
    }
}

pub(super) fn redeem_authorization_code(
    connection: &Connection,
    code_hash: &str,
    now: OffsetDateTime,
) -> Result<CodeRedemption, StoreError> {
    let row = connection
        .prepare_cached(
            "SELECT code_hash, client_id, session_id, redirect_uri, code_challenge, scope, nonce,
             created_at, expires_at, used_at FROM authorization_codes WHERE code_hash = ?",
        )?
        .query_row([code_hash], |row| {
            let created_at: String = row.get("created_at")?;
            let expires_at: String = row.get("expires_at")?;
            let used_at: Option<String> = row.get("used_at")?;
            let fields = (
                row.get("code_hash")?,
                row.get("client_id")?,
                row.get("session_id")?,
                row.get("redirect_uri")?,
                row.get("code_challenge")?,
                row.get("scope")?,
                row.get("nonce")?,
            );
            Ok((fields, created_at, expires_at, used_at))
        })
        .optional()?;
    let Some((fields, created_at, expires_at, used_at)) = row else {
        return Ok(CodeRedemption::Unknown);
    };
    let (code_hash, client_id, session_id, redirect_uri, code_challenge, scope, nonce) = fields;
    let code = NewAuthorizationCode {
        code_hash,
        client_id,
        session_id,
        redirect_uri,
        code_challenge,
        scope,
        nonce,
        created_at: decode_time("created_at", &created_at)?,
        expires_at: decode_time("expires_at", &expires_at)?,
    };
    if used_at.is_some() {
        connection
            .prepare_cached(
                "UPDATE session_refresh_tokens SET revoked_at = ?
                 WHERE session_id = ? AND client_id = ? AND revoked_at IS NULL",
            )?
            .execute(params![encode_time(now)?, code.session_id, code.client_id])?;
        return Ok(CodeRedemption::Used);
    }
    if now >= code.expires_at {
        return Ok(CodeRedemption::Expired);
    }
    let Some(session) = get_session(connection, &code.session_id)? else {
        return Ok(CodeRedemption::Unknown);
    };
    connection
        .prepare_cached("UPDATE authorization_codes SET used_at = ? WHERE code_hash = ?")?
        .execute(params![encode_time(now)?, code.code_hash])?;
    Ok(CodeRedemption::Redeemed {
        code: Box::new(code),
        session: Box::new(session),
    })
}

pub(super) fn revoke_access_token(
    connection: &Connection,
    jti: &str,
    expires_at: OffsetDateTime,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES (?, ?)
             ON CONFLICT (jti) DO NOTHING",
        )?
        .execute(params![jti, encode_time(expires_at)?])?;
    Ok(())
}

pub(super) fn is_access_token_revoked(
    connection: &Connection,
    jti: &str,
) -> Result<bool, StoreError> {
    Ok(connection
        .prepare_cached("SELECT 1 FROM revoked_access_tokens WHERE jti = ?")?
        .query_row([jti], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn claim_logout_deliveries(
    connection: &Connection,
    now: OffsetDateTime,
    lease: std::time::Duration,
    limit: usize,
) -> Result<Vec<LogoutDelivery>, StoreError> {
    let lease = time::Duration::try_from(lease).map_err(|error| column_error("lease", error))?;
    let until = now.checked_add(lease).ok_or(StoreError::Database(
        crate::store::DatabaseError::TimeOutOfRange,
    ))?;
    let mut statement = connection.prepare_cached(
        "UPDATE logout_deliveries SET attempts = attempts + 1, next_attempt_at = ?1
         WHERE id IN (SELECT id FROM logout_deliveries
             WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= ?2
             ORDER BY next_attempt_at, id LIMIT ?3)
         RETURNING id, session_id, client_id, uri, user_id, attempts, created_at",
    )?;
    let mut claimed = collect_rows(
        &mut statement,
        params![
            encode_time(until)?,
            encode_time(now)?,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        delivery_from_row,
    )?;
    claimed.sort_by_key(|delivery| delivery.id);
    Ok(claimed)
}

pub(super) fn finish_logout_delivery(
    connection: &Connection,
    id: i64,
    outcome: &DeliveryOutcome,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let at = encode_time(now)?;
    let changed = match outcome {
        DeliveryOutcome::Delivered => connection
            .prepare_cached(
                "UPDATE logout_deliveries SET delivered_at = ?, last_error = NULL WHERE id = ?",
            )?
            .execute(params![at, id])?,
        DeliveryOutcome::Retry { at: due, error } => connection
            .prepare_cached(
                "UPDATE logout_deliveries SET next_attempt_at = ?, last_error = ? WHERE id = ?",
            )?
            .execute(params![encode_time(*due)?, error, id])?,
        DeliveryOutcome::GivenUp { error } => connection
            .prepare_cached(
                "UPDATE logout_deliveries SET given_up_at = ?, last_error = ? WHERE id = ?",
            )?
            .execute(params![at, error, id])?,
    };
    if changed == 0 {
        return Err(StoreError::NotFound {
            what: format!("logout delivery {id}"),
        });
    }
    Ok(())
}

pub(super) fn purge_sessions(
    connection: &Connection,
    ended_before: OffsetDateTime,
) -> Result<u64, StoreError> {
    let before = encode_time(ended_before)?;
    let mut purged = 0;
    for sql in PURGE_SESSIONS {
        purged += connection.prepare_cached(sql)?.execute([&before])? as u64;
    }
    Ok(purged)
}

/// The statements of [`Store::purge_sessions`](crate::store::Store::purge_sessions), in both
/// stores' SQL: `$1` is the cut (a positional parameter to SQLite too).
pub(in crate::store) const PURGE_SESSIONS: [&str; 6] = [
    "DELETE FROM session_refresh_tokens WHERE session_id IN
     (SELECT id FROM sessions WHERE ended_at < $1)",
    "DELETE FROM authorization_codes WHERE expires_at < $1 OR session_id IN
     (SELECT id FROM sessions WHERE ended_at < $1)",
    "DELETE FROM session_clients WHERE session_id IN
     (SELECT id FROM sessions WHERE ended_at < $1)",
    "DELETE FROM sessions WHERE ended_at < $1",
    "DELETE FROM logout_deliveries WHERE delivered_at < $1 OR given_up_at < $1",
    "DELETE FROM revoked_access_tokens WHERE expires_at < $1",
];
