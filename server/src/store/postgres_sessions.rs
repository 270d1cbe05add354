//! The PostgreSQL side of sessions, refresh tokens, OpenID Connect clients, authorization codes and logout deliveries (SQLite's migration 10).
//!
//! Free functions over a pool's client or a transaction, called from
//! [`PostgresStore`](super::PostgresStore)'s [`Store`](super::Store) methods. What must happen
//! once across nodes is one statement that re-checks its condition on the row it locks: a code
//! is redeemed by `UPDATE ... WHERE used_at IS NULL`, a refresh token rotated by `UPDATE ...
//! WHERE replaced_at IS NULL AND revoked_at IS NULL`, a session ended by `UPDATE ... WHERE
//! ended_at IS NULL`, and deliveries are claimed with `FOR UPDATE SKIP LOCKED`. A client
//! joins a session only while holding a share lock on its active row, so an end either waits
//! for the join (and then queues the client's delivery) or the join finds the session ended.

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::super::sessions::{
    CodeRedemption, DeliveryOutcome, KIOSK_CLIENT_ID, LogoutDelivery, NewAuthorizationCode,
    NewSession, OidcClient, RefreshUse, Session, SessionEndReason, SessionSelector,
};
use super::super::sqlite::PURGE_SESSIONS;
use super::super::{CardId, DatabaseError, StoreError};
use super::{column_error, is_unique_violation, utc};

/// Version 3: SQLite's migration 10 in PostgreSQL types.
pub(super) const MIGRATION_3: &str = "
CREATE TABLE sessions (
    id text PRIMARY KEY NOT NULL,
    user_id text NOT NULL,
    device text NOT NULL,
    card_issuer text NOT NULL,
    card_serial text NOT NULL,
    amr text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    ended_at timestamptz,
    ended_reason text CHECK (ended_reason IN ('signed_out', 'admin', 'card_locked',
        'card_revoked', 'user_locked', 'user_deleted', 'max_age', 'refresh_reused')),
    CHECK ((ended_at IS NULL) = (ended_reason IS NULL))
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_card_serial ON sessions (card_serial);
CREATE INDEX sessions_device ON sessions (device);
CREATE INDEX sessions_created_at ON sessions (created_at);
CREATE INDEX sessions_active ON sessions (expires_at) WHERE ended_at IS NULL;
CREATE INDEX sessions_ended_at ON sessions (ended_at) WHERE ended_at IS NOT NULL;
CREATE TABLE session_refresh_tokens (
    token_hash text PRIMARY KEY NOT NULL,
    session_id text NOT NULL,
    client_id text NOT NULL,
    scope text NOT NULL,
    created_at timestamptz NOT NULL,
    replaced_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX session_refresh_tokens_session ON session_refresh_tokens (session_id);
CREATE INDEX session_refresh_tokens_client ON session_refresh_tokens (client_id);
CREATE TABLE session_clients (
    session_id text NOT NULL,
    client_id text NOT NULL,
    first_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, client_id)
);
CREATE TABLE oidc_clients (
    id text PRIMARY KEY NOT NULL,
    secret_hash text,
    redirect_uris text NOT NULL,
    backchannel_logout_uri text,
    created_at timestamptz NOT NULL
);
CREATE TABLE authorization_codes (
    code_hash text PRIMARY KEY NOT NULL,
    client_id text NOT NULL,
    session_id text NOT NULL,
    redirect_uri text NOT NULL,
    code_challenge text NOT NULL,
    scope text NOT NULL,
    nonce text,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
CREATE INDEX authorization_codes_session ON authorization_codes (session_id);
CREATE INDEX authorization_codes_expires_at ON authorization_codes (expires_at);
CREATE TABLE revoked_access_tokens (
    jti text PRIMARY KEY NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_access_tokens_expires_at ON revoked_access_tokens (expires_at);
CREATE TABLE logout_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id text NOT NULL,
    client_id text NOT NULL,
    uri text NOT NULL,
    user_id text NOT NULL,
    created_at timestamptz NOT NULL,
    attempts integer NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    delivered_at timestamptz,
    given_up_at timestamptz,
    last_error text
);
CREATE INDEX logout_deliveries_due ON logout_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
";

/// `SELECT` of every [`Session`] column (its clients as an array), followed by the rest.
macro_rules! select_sessions {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_id, device, card_issuer, card_serial, amr, created_at, expires_at,
                 ended_at, ended_reason,
                 coalesce((SELECT array_agg(client_id ORDER BY client_id) FROM session_clients
                     WHERE session_id = sessions.id), '{}') AS clients
             FROM sessions ",
            $rest
        )
    };
}

/// `SELECT` of every [`OidcClient`] column, followed by the rest.
macro_rules! select_clients {
    ($rest:literal) => {
        concat!(
            "SELECT id, secret_hash, redirect_uris, backchannel_logout_uri, created_at
             FROM oidc_clients ",
            $rest
        )
    };
}

pub(super) const SELECT_SESSION: &str = select_sessions!("WHERE id = $1");
pub(super) const SELECT_CLIENT: &str = select_clients!("WHERE id = $1");
pub(super) const SELECT_CLIENTS: &str = select_clients!("ORDER BY id");
pub(super) const SELECT_REVOKED_JTI: &str = "SELECT 1 FROM revoked_access_tokens WHERE jti = $1";

/// The sessions [`list_sessions`] reads: each filter a parameter, `NULL` when not set.
pub(super) const LIST_SESSIONS: &str = select_sessions!(
    "WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR device = $2)
       AND ($3::text IS NULL OR card_serial = $3) AND (NOT $4::boolean OR ended_at IS NULL)
     ORDER BY created_at DESC, id LIMIT $5"
);

pub(super) fn session_from_row(row: &Row) -> Result<Session, StoreError> {
    let amr: String = row.try_get("amr")?;
    let ended_reason: Option<String> = row.try_get("ended_reason")?;
    Ok(Session {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        device: row.try_get("device")?,
        card: CardId {
            issuer: row.try_get("card_issuer")?,
            serial: row.try_get("card_serial")?,
        },
        amr: amr.split_whitespace().map(str::to_owned).collect(),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        ended_at: row.try_get("ended_at")?,
        ended_reason: ended_reason
            .map(|text| {
                text.parse::<SessionEndReason>()
                    .map_err(|()| column_error("ended_reason", format!("{text:?}")))
            })
            .transpose()?,
        clients: row.try_get("clients")?,
    })
}

pub(super) fn client_from_row(row: &Row) -> Result<OidcClient, StoreError> {
    let redirect_uris: String = row.try_get("redirect_uris")?;
    Ok(OidcClient {
        id: row.try_get("id")?,
        secret_hash: row.try_get("secret_hash")?,
        redirect_uris: serde_json::from_str(&redirect_uris)
            .map_err(|error| column_error("redirect_uris", error))?,
        backchannel_logout_uri: row.try_get("backchannel_logout_uri")?,
        created_at: row.try_get("created_at")?,
    })
}

fn delivery_from_row(row: &Row) -> Result<LogoutDelivery, StoreError> {
    let attempts: i32 = row.try_get("attempts")?;
    Ok(LogoutDelivery {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        client_id: row.try_get("client_id")?,
        uri: row.try_get("uri")?,
        user_id: row.try_get("user_id")?,
        attempts: u32::try_from(attempts).map_err(|error| column_error("attempts", error))?,
        created_at: row.try_get("created_at")?,
    })
}

/// The session and the kiosk's refresh token of a sign-in, in a write that has already
/// recorded its card (the renewal path; the plain one is one statement): stored ended when
/// the card or the user is no longer active, as the plain path does.
pub(super) async fn insert_session(
    client: &impl GenericClient,
    session: &NewSession,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(concat!(
            "WITH card AS (
                 SELECT state FROM cards WHERE issuer = $4::text AND serial = $5::text FOR SHARE
             ), holder AS (
                 SELECT state FROM users WHERE id = $2::text FOR SHARE
             ), gate AS (",
            session_gate!(),
            "
             ), session AS (
                 INSERT INTO sessions (id, user_id, device, card_issuer, card_serial, amr,
                     created_at, expires_at, ended_at, ended_reason)
                 SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text,
                     $7::timestamptz, $8::timestamptz,
                     CASE WHEN gate.reason IS NULL THEN NULL ELSE $7::timestamptz END,
                     gate.reason
                 FROM gate
             )
             INSERT INTO session_refresh_tokens (token_hash, session_id, client_id, scope,
                 created_at, revoked_at)
             SELECT $9::text, $1::text, $10::text, '', $7::timestamptz,
                 CASE WHEN gate.reason IS NULL THEN NULL ELSE $7::timestamptz END
             FROM gate"
        ))
        .await?;
    let result = client
        .execute(
            &statement,
            &[
                &session.id,
                &session.user_id,
                &session.device,
                &session.card.issuer,
                &session.card.serial,
                &session.amr.join(" "),
                &utc(session.created_at)?,
                &utc(session.expires_at)?,
                &session.refresh_token_hash,
                &KIOSK_CLIENT_ID,
            ],
        )
        .await;
    match result {
        Err(error) if is_unique_violation(&error) => Err(session_taken()),
        other => other.map(drop).map_err(StoreError::from),
    }
}

/// The conflict of a sign-in whose session id or refresh token hash exists (never shown).
pub(super) fn session_taken() -> StoreError {
    StoreError::Conflict {
        what: "the session or its refresh token exists already".to_owned(),
    }
}

/// The `UPDATE` that ends the sessions a selector names, returning their ids; `$1` is the
/// time, `$2` the reason, `$3`/`$4` the selector's values.
fn end_statement(selector: &SessionSelector) -> &'static str {
    match selector {
        SessionSelector::Id(_) => {
            "UPDATE sessions SET ended_at = $1, ended_reason = $2
             WHERE id = $3 AND ended_at IS NULL RETURNING id"
        }
        SessionSelector::User(_) => {
            "UPDATE sessions SET ended_at = $1, ended_reason = $2
             WHERE user_id = $3 AND ended_at IS NULL RETURNING id"
        }
        SessionSelector::Card(_) => {
            "UPDATE sessions SET ended_at = $1, ended_reason = $2
             WHERE card_serial = $3 AND card_issuer = $4 AND ended_at IS NULL RETURNING id"
        }
        SessionSelector::Expired => {
            "UPDATE sessions SET ended_at = $1, ended_reason = $2
             WHERE expires_at <= $1 AND ended_at IS NULL RETURNING id"
        }
    }
}

/// Ends the sessions selected in `transaction` (which the caller commits): see
/// [`Store::end_sessions`](super::super::Store::end_sessions). Returns them as they are now.
pub(super) async fn end_sessions(
    transaction: &impl GenericClient,
    selector: &SessionSelector,
    reason: SessionEndReason,
    now: OffsetDateTime,
) -> Result<Vec<Session>, StoreError> {
    let now = utc(now)?;
    let statement = transaction.prepare_cached(end_statement(selector)).await?;
    let reason = reason.as_str();
    let rows = match selector {
        SessionSelector::Id(value) | SessionSelector::User(value) => {
            transaction
                .query(&statement, &[&now, &reason, value])
                .await?
        }
        SessionSelector::Card(card) => {
            transaction
                .query(&statement, &[&now, &reason, &card.serial, &card.issuer])
                .await?
        }
        SessionSelector::Expired => transaction.query(&statement, &[&now, &reason]).await?,
    };
    let ids = rows
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    after_end(transaction, &ids, now).await
}

/// What follows ending the sessions `ids` (their rows locked by this transaction): their
/// refresh tokens revoked and their clients' deliveries queued, each a statement of its own
/// so that it sees every client that joined before the end took the rows.
async fn after_end(
    transaction: &impl GenericClient,
    ids: &[String],
    now: OffsetDateTime,
) -> Result<Vec<Session>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let revoke = transaction
        .prepare_cached(
            "UPDATE session_refresh_tokens SET revoked_at = $1
             WHERE session_id = ANY($2) AND revoked_at IS NULL",
        )
        .await?;
    transaction.execute(&revoke, &[&now, &ids]).await?;
    let queue = transaction
        .prepare_cached(
            "INSERT INTO logout_deliveries (session_id, client_id, uri, user_id, created_at,
                 attempts, next_attempt_at)
             SELECT s.id, c.id, c.backchannel_logout_uri, s.user_id, $1, 0, $1
             FROM session_clients sc
             JOIN sessions s ON s.id = sc.session_id
             JOIN oidc_clients c ON c.id = sc.client_id
             WHERE sc.session_id = ANY($2) AND c.backchannel_logout_uri IS NOT NULL
             ORDER BY s.id, c.id",
        )
        .await?;
    transaction.execute(&queue, &[&now, &ids]).await?;
    let read = transaction
        .prepare_cached(select_sessions!("WHERE id = ANY($1) ORDER BY id"))
        .await?;
    transaction
        .query(&read, &[&ids])
        .await?
        .iter()
        .map(session_from_row)
        .collect()
}

/// [`Store::use_refresh_token`](super::super::Store::use_refresh_token) in `transaction`,
/// which the caller commits.
pub(super) async fn use_refresh_token(
    transaction: &impl GenericClient,
    token_hash: &str,
    client_id: &str,
    replacement_hash: &str,
    now: OffsetDateTime,
) -> Result<RefreshUse, StoreError> {
    let now = utc(now)?;
    // The single step: of concurrent callers one turns `replaced_at` from NULL (the others
    // wait for its row lock and then find the condition false).
    let rotate = transaction
        .prepare_cached(
            "UPDATE session_refresh_tokens t SET replaced_at = $3
             FROM sessions s
             WHERE t.token_hash = $1 AND t.client_id = $2 AND t.replaced_at IS NULL
               AND t.revoked_at IS NULL AND s.id = t.session_id AND s.ended_at IS NULL
               AND s.expires_at > $3
             RETURNING t.session_id, t.scope",
        )
        .await?;
    if let Some(row) = transaction
        .query_opt(&rotate, &[&token_hash, &client_id, &now])
        .await?
    {
        let (session_id, scope): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        insert_refresh_token(
            transaction,
            replacement_hash,
            &session_id,
            client_id,
            &scope,
            now,
        )
        .await?;
        let session = read_session(transaction, &session_id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "the token's session".to_owned(),
            })?;
        return Ok(RefreshUse::Rotated {
            session: Box::new(session),
            scope,
        });
    }
    // Why not: read after the step, so a concurrent rotation or end is seen committed.
    let why = transaction
        .prepare_cached(
            "SELECT t.session_id, t.client_id, t.replaced_at IS NOT NULL AS replaced,
                 t.revoked_at IS NOT NULL AS revoked,
                 s.ended_at IS NULL AND s.expires_at > $2 AS active
             FROM session_refresh_tokens t JOIN sessions s ON s.id = t.session_id
             WHERE t.token_hash = $1",
        )
        .await?;
    let Some(row) = transaction.query_opt(&why, &[&token_hash, &now]).await? else {
        return Ok(RefreshUse::Unknown);
    };
    let owner: String = row.try_get("client_id")?;
    if owner != client_id {
        return Ok(RefreshUse::Unknown);
    }
    let (replaced, revoked, active): (bool, bool, bool) = (
        row.try_get("replaced")?,
        row.try_get("revoked")?,
        row.try_get("active")?,
    );
    if revoked || !active || !replaced {
        return Ok(RefreshUse::Ended);
    }
    // A replaced token of an active session: the session ends, by this caller only.
    let session_id: String = row.try_get("session_id")?;
    let ended = end_sessions(
        transaction,
        &SessionSelector::Id(session_id),
        SessionEndReason::RefreshReused,
        now,
    )
    .await?;
    Ok(if ended.is_empty() {
        RefreshUse::Ended
    } else {
        RefreshUse::Reused
    })
}

fn token_taken() -> StoreError {
    StoreError::Conflict {
        what: "the refresh token exists already".to_owned(),
    }
}

async fn read_session(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<Session>, StoreError> {
    let statement = client.prepare_cached(SELECT_SESSION).await?;
    client
        .query_opt(&statement, &[&id])
        .await?
        .as_ref()
        .map(session_from_row)
        .transpose()
}

/// [`Store::record_session_client`](super::super::Store::record_session_client) in
/// `transaction`: holds a share lock on the active session's row until the caller commits.
pub(super) async fn record_session_client(
    transaction: &impl GenericClient,
    session_id: &str,
    client_id: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let now = utc(now)?;
    let lock = transaction
        .prepare_cached(
            "SELECT 1 FROM sessions WHERE id = $1 AND ended_at IS NULL AND expires_at > $2
             FOR SHARE",
        )
        .await?;
    if transaction
        .query_opt(&lock, &[&session_id, &now])
        .await?
        .is_none()
    {
        return Err(StoreError::Conflict {
            what: "the session is not active".to_owned(),
        });
    }
    let insert = transaction
        .prepare_cached(
            "INSERT INTO session_clients (session_id, client_id, first_at) VALUES ($1, $2, $3)
             ON CONFLICT (session_id, client_id) DO NOTHING",
        )
        .await?;
    transaction
        .execute(&insert, &[&session_id, &client_id, &now])
        .await?;
    Ok(())
}

/// [`Store::add_refresh_token`](super::super::Store::add_refresh_token) in `transaction`.
pub(super) async fn add_refresh_token(
    transaction: &impl GenericClient,
    session_id: &str,
    client_id: &str,
    token_hash: &str,
    scope: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    record_session_client(transaction, session_id, client_id, now).await?;
    insert_refresh_token(transaction, token_hash, session_id, client_id, scope, now).await
}

/// Stores a current refresh token ([`StoreError::Conflict`] if the hash exists).
async fn insert_refresh_token(
    client: &impl GenericClient,
    token_hash: &str,
    session_id: &str,
    client_id: &str,
    scope: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let insert = client
        .prepare_cached(
            "INSERT INTO session_refresh_tokens (token_hash, session_id, client_id, scope,
                 created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    let result = client
        .execute(
            &insert,
            &[&token_hash, &session_id, &client_id, &scope, &utc(now)?],
        )
        .await;
    match result {
        Err(error) if is_unique_violation(&error) => Err(token_taken()),
        other => other.map(drop).map_err(StoreError::from),
    }
}

/// [`Store::revoke_refresh_token`](super::super::Store::revoke_refresh_token).
pub(super) async fn revoke_refresh_token(
    client: &impl GenericClient,
    token_hash: &str,
    client_id: &str,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let statement = client
        .prepare_cached(
            "UPDATE session_refresh_tokens SET revoked_at = $3
             WHERE token_hash = $1 AND client_id = $2 AND revoked_at IS NULL",
        )
        .await?;
    let changed = client
        .execute(&statement, &[&token_hash, &client_id, &utc(now)?])
        .await?;
    Ok(changed > 0)
}

/// [`Store::add_client`](super::super::Store::add_client).
pub(super) async fn add_client(
    client: &impl GenericClient,
    oidc_client: &OidcClient,
) -> Result<(), StoreError> {
    let redirect_uris = serde_json::to_string(&oidc_client.redirect_uris)
        .map_err(|error| column_error("redirect_uris", error))?;
    let statement = client
        .prepare_cached(
            "INSERT INTO oidc_clients (id, secret_hash, redirect_uris, backchannel_logout_uri,
                 created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    let result = client
        .execute(
            &statement,
            &[
                &oidc_client.id,
                &oidc_client.secret_hash,
                &redirect_uris,
                &oidc_client.backchannel_logout_uri,
                &utc(oidc_client.created_at)?,
            ],
        )
        .await;
    match result {
        Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
            what: format!("client {:?} exists already", oidc_client.id),
        }),
        other => other.map(drop).map_err(StoreError::from),
    }
}

/// [`Store::remove_client`](super::super::Store::remove_client) in `transaction`.
pub(super) async fn remove_client(
    transaction: &impl GenericClient,
    id: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let delete = transaction
        .prepare_cached("DELETE FROM oidc_clients WHERE id = $1")
        .await?;
    if transaction.execute(&delete, &[&id]).await? == 0 {
        return Err(StoreError::NotFound {
            what: format!("client {id:?}"),
        });
    }
    let codes = transaction
        .prepare_cached("DELETE FROM authorization_codes WHERE client_id = $1 AND used_at IS NULL")
        .await?;
    transaction.execute(&codes, &[&id]).await?;
    let tokens = transaction
        .prepare_cached(
            "UPDATE session_refresh_tokens SET revoked_at = $2
             WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .await?;
    transaction.execute(&tokens, &[&id, &utc(now)?]).await?;
    Ok(())
}

/// [`Store::add_authorization_code`](super::super::Store::add_authorization_code).
pub(super) async fn add_authorization_code(
    client: &impl GenericClient,
    code: &NewAuthorizationCode,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO authorization_codes (code_hash, client_id, session_id, redirect_uri,
                 code_challenge, scope, nonce, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    let result = client
        .execute(
            &statement,
            &[
                &code.code_hash,
                &code.client_id,
                &code.session_id,
                &code.redirect_uri,
                &code.code_challenge,
                &code.scope,
                &code.nonce,
                &utc(code.created_at)?,
                &utc(code.expires_at)?,
            ],
        )
        .await;
    match result {
        Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
            what: "the authorization code exists already".to_owned(),
        }),
        other => other.map(drop).map_err(StoreError::from),
    }
}

/// [`Store::redeem_authorization_code`](super::super::Store::redeem_authorization_code).
pub(super) async fn redeem_authorization_code(
    client: &impl GenericClient,
    code_hash: &str,
    now: OffsetDateTime,
) -> Result<CodeRedemption, StoreError> {
    let now = utc(now)?;
    // The single step: of concurrent callers one turns `used_at` from NULL.
    let redeem = client
        .prepare_cached(
            "UPDATE authorization_codes SET used_at = $2
             WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2
             RETURNING code_hash, client_id, session_id, redirect_uri, code_challenge, scope,
                 nonce, created_at, expires_at",
        )
        .await?;
    if let Some(row) = client.query_opt(&redeem, &[&code_hash, &now]).await? {
        let code = NewAuthorizationCode {
            code_hash: row.try_get("code_hash")?,
            client_id: row.try_get("client_id")?,
            session_id: row.try_get("session_id")?,
            redirect_uri: row.try_get("redirect_uri")?,
            code_challenge: row.try_get("code_challenge")?,
            scope: row.try_get("scope")?,
            nonce: row.try_get("nonce")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        };
        return Ok(match read_session(client, &code.session_id).await? {
            Some(session) => CodeRedemption::Redeemed {
                code: Box::new(code),
                session: Box::new(session),
            },
            None => CodeRedemption::Unknown,
        });
    }
    // Not redeemed now: a code used already revokes its client's refresh tokens in its
    // session (one statement); otherwise say whether it is unknown or expired.
    let reused = client
        .prepare_cached(
            "WITH code AS (
                 SELECT session_id, client_id FROM authorization_codes
                 WHERE code_hash = $1 AND used_at IS NOT NULL
             ), revoked AS (
                 UPDATE session_refresh_tokens AS token SET revoked_at = $2
                 FROM code
                 WHERE token.session_id = code.session_id AND token.client_id = code.client_id
                     AND token.revoked_at IS NULL
             )
             SELECT count(*) FROM code",
        )
        .await?;
    if client
        .query_one(&reused, &[&code_hash, &now])
        .await?
        .try_get::<_, i64>(0)?
        > 0
    {
        return Ok(CodeRedemption::Used);
    }
    let known = client
        .prepare_cached("SELECT 1 FROM authorization_codes WHERE code_hash = $1")
        .await?;
    Ok(match client.query_opt(&known, &[&code_hash]).await? {
        None => CodeRedemption::Unknown,
        Some(_) => CodeRedemption::Expired,
    })
}

/// [`Store::revoke_access_token`](super::super::Store::revoke_access_token).
pub(super) async fn revoke_access_token(
    client: &impl GenericClient,
    jti: &str,
    expires_at: OffsetDateTime,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, $2)
             ON CONFLICT (jti) DO NOTHING",
        )
        .await?;
    client
        .execute(&statement, &[&jti, &utc(expires_at)?])
        .await?;
    Ok(())
}

/// [`Store::claim_logout_deliveries`](super::super::Store::claim_logout_deliveries): one
/// statement; rows another claimer holds are skipped, and a row it claimed meanwhile is
/// re-checked (no longer due) once locked.
pub(super) async fn claim_logout_deliveries(
    client: &impl GenericClient,
    now: OffsetDateTime,
    lease: std::time::Duration,
    limit: usize,
) -> Result<Vec<LogoutDelivery>, StoreError> {
    let now = utc(now)?;
    let lease = time::Duration::try_from(lease).map_err(|error| column_error("lease", error))?;
    let until = utc(now
        .checked_add(lease)
        .ok_or(StoreError::Database(DatabaseError::TimeOutOfRange))?)?;
    let statement = client
        .prepare_cached(
            "UPDATE logout_deliveries SET attempts = attempts + 1, next_attempt_at = $1
             WHERE id IN (SELECT id FROM logout_deliveries
                 WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= $2
                 ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id, session_id, client_id, uri, user_id, attempts, created_at",
        )
        .await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut claimed = client
        .query(&statement, &[&until, &now, &limit])
        .await?
        .iter()
        .map(delivery_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|delivery| delivery.id);
    Ok(claimed)
}

/// [`Store::finish_logout_delivery`](super::super::Store::finish_logout_delivery).
pub(super) async fn finish_logout_delivery(
    client: &impl GenericClient,
    id: i64,
    outcome: &DeliveryOutcome,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let now = utc(now)?;
    let changed = match outcome {
        DeliveryOutcome::Delivered => {
            let statement = client
                .prepare_cached(
                    "UPDATE logout_deliveries SET delivered_at = $2, last_error = NULL
                     WHERE id = $1",
                )
                .await?;
            client.execute(&statement, &[&id, &now]).await?
        }
        DeliveryOutcome::Retry { at, error } => {
            let statement = client
                .prepare_cached(
                    "UPDATE logout_deliveries SET next_attempt_at = $2, last_error = $3
                     WHERE id = $1",
                )
                .await?;
            client
                .execute(&statement, &[&id, &utc(*at)?, error])
                .await?
        }
        DeliveryOutcome::GivenUp { error } => {
            let statement = client
                .prepare_cached(
                    "UPDATE logout_deliveries SET given_up_at = $2, last_error = $3
                     WHERE id = $1",
                )
                .await?;
            client.execute(&statement, &[&id, &now, error]).await?
        }
    };
    if changed == 0 {
        return Err(StoreError::NotFound {
            what: format!("logout delivery {id}"),
        });
    }
    Ok(())
}

/// [`Store::purge_sessions`](super::super::Store::purge_sessions) in `transaction`.
pub(super) async fn purge_sessions(
    transaction: &impl GenericClient,
    ended_before: OffsetDateTime,
) -> Result<u64, StoreError> {
    let before = utc(ended_before)?;
    let mut purged = 0;
    for sql in PURGE_SESSIONS {
        let statement = transaction.prepare_cached(sql).await?;
        purged += transaction.execute(&statement, &[&before]).await?;
    }
    Ok(purged)
}
