//! The PostgreSQL store: the [`Store`] of a deployment whose server nodes share one database.
//!
//! # Driver
//!
//! `tokio-postgres` 0.7 with `deadpool-postgres` 0.14 as the pool, not sqlx's PostgreSQL
//! driver: tokio-postgres is the stable, widely used async driver (sqlx 0.9 is still an
//! alpha, and its checked `query!` macros need a database or `cargo sqlx prepare` at build
//! time, which the 2-core CI and offline builds cannot offer), its error type gives the
//! SQLSTATE codes this store maps to [`StoreError`] (unique and foreign-key violations,
//! serialization failures), and deadpool adds only a small pool with a per-connection
//! statement cache on top. Neither pulls a second TLS stack or crypto provider. TLS to the
//! database is [`PostgresTls`](super::postgres_tls::PostgresTls), a rustls connector on
//! the workspace's rustls with its one aws-lc-rs provider (a Unix socket carries none).
//! The statement cache uses named prepared statements: behind PgBouncer use its session
//! mode (transaction mode breaks named prepared statements).
//!
//! # Schema and migrations
//!
//! The schema is SQLite's ([`SqliteStore`](super::SqliteStore); version 1 is its migrations
//! 1 to 8, version 2 its 9, version 3 its 10) in PostgreSQL types: times are `timestamptz`
//! (microseconds, UTC, years 0000 to 9999 as SQLite keeps them), certificates `bytea`, audit
//! and logout delivery ids `bigint` identities. Mail and UPN
//! compare ASCII-case-folded as SQLite's `NOCASE` does, through an index on the folded
//! value. Migrations are versioned in `schema_migrations`; [`PostgresStore::connect`] runs
//! the missing ones under a session advisory lock, so of several nodes starting at once
//! one migrates and the others wait and then find nothing to do.
//!
//! # Transactions
//!
//! Every [`Store`] call that writes is one transaction, as SQLite's writer makes it one
//! savepoint, at PostgreSQL's default isolation (read committed). What must happen once
//! across nodes is one atomic statement, never a read and then a write: a challenge, an
//! enrollment code or a device code is taken by `UPDATE ... WHERE used_at IS NULL` (the
//! row lock makes a concurrent caller re-check the condition and find it false), and a
//! pending renewal is completed by whoever `DELETE`s its row. Writes that check before
//! they insert lock what they check: a user's id and mapped attributes (the users table,
//! against other writers of users), the user a deletion or rename removes (its row, so a
//! card recorded for them meanwhile waits and then finds them gone), the card a deletion
//! removes, and the admin credentials a revocation counts (so two nodes cannot each
//! revoke one of the last two). A transaction PostgreSQL aborts as a serialization
//! failure or a deadlock (40001, 40P01) runs again, a few times at most.
//!
//! # The sign-in path
//!
//! A sign-in's calls take one round trip each, through the connection's cache of prepared
//! statements, and no `BEGIN`/`COMMIT`: a single statement is atomic on its own.
//! [`Store::add_challenge`] writes the challenge and its audit event in one statement;
//! [`Store::begin_sign_in`] sends the challenge's `UPDATE` and its four reads together
//! (pipelined on one connection; a refused challenge costs one more read to tell why);
//! [`Store::finish_sign_in`] records the card and its audit event in one statement, which
//! writes nothing when the certificate is a pending renewal's new one: that first use
//! then completes the renewal in a transaction, as [`Store::confirm_renewal`] does.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use time::{OffsetDateTime, UtcOffset};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::SessionEndReason;
use super::database::DatabaseError;
use super::postgres_tls::PostgresTls;
use super::snapshot::SchemaVersion;
use super::url::{PostgresUrl, StorePassword};
use super::{
    AdminCredential, AuditEvent, AuditKind, AuditKindFilter, AuditOutcome, AuditQuery, BoxFuture,
    Card, CardId, CardState, ChallengeUse, Device, DeviceCodeUse, DeviceCredentialRecord,
    DeviceState, EnrollmentCodeRecord, EnrollmentCodeUse, INITIAL_ADMIN_CREDENTIAL,
    IssuedCertificate, NewAuditEvent, NewDevice, NewEnrollmentCode, RevocationReason,
    RevokedCertificate, SignInLookup, SignInRecords, Store, StoreError, StoreStats, User,
    UserConflict, UserState, UserWritten,
};
use crate::mapping::UserAttribute;
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::nonce::Nonce;

/// Connections the pool keeps open, at most.
const POOL_SIZE: usize = 16;

/// The advisory lock key migrations run under (`pivtap` in ASCII).
const MIGRATION_LOCK: i64 = 0x7069_7674_6170;

/// Folds ASCII capitals of a text column or parameter to lower case, as SQLite's `NOCASE`
/// compares (PostgreSQL's `lower` would fold other letters too, by the database's locale).
macro_rules! ascii_fold {
    ($value:literal) => {
        concat!(
            "translate(",
            $value,
            ", 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
        )
    };
}

/// Version 1: SQLite's schema as of its migration 8, in PostgreSQL types.
const MIGRATION_1: &str = concat!(
    "
CREATE TABLE users (
    id text PRIMARY KEY NOT NULL,
    display_name text NOT NULL,
    mail text,
    upn text,
    employee_id text,
    state text NOT NULL CHECK (state IN ('active', 'locked')),
    created_at timestamptz NOT NULL
);
CREATE INDEX users_mail ON users (",
    ascii_fold!("mail"),
    ");
CREATE INDEX users_upn ON users (",
    ascii_fold!("upn"),
    ");
CREATE INDEX users_employee_id ON users (employee_id);

CREATE TABLE cards (
    issuer text NOT NULL,
    serial text NOT NULL,
    fingerprint text NOT NULL,
    subject text NOT NULL,
    user_id text REFERENCES users (id),
    state text NOT NULL CHECK (state IN ('active', 'locked', 'revoked')),
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (issuer, serial)
);
CREATE INDEX cards_user_id ON cards (user_id);
CREATE INDEX cards_serial ON cards (serial);

CREATE TABLE challenges (
    nonce text PRIMARY KEY NOT NULL,
    device text NOT NULL,
    issued_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
CREATE INDEX challenges_expires_at ON challenges (expires_at);
CREATE INDEX challenges_device ON challenges (device) WHERE used_at IS NULL;

CREATE TABLE audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time timestamptz NOT NULL,
    kind text NOT NULL,
    outcome text NOT NULL,
    device text,
    card_serial text,
    user_id text,
    detail text
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_user_id ON audit (user_id, time) WHERE user_id IS NOT NULL;
CREATE INDEX audit_card_serial ON audit (card_serial, time) WHERE card_serial IS NOT NULL;
CREATE INDEX audit_device ON audit (device, time);
CREATE INDEX audit_outcome ON audit (outcome, time);
CREATE INDEX audit_kind ON audit (kind, time);

CREATE TABLE enrollment_codes (
    code_hash text PRIMARY KEY NOT NULL,
    user_id text NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    used_by text
);
CREATE INDEX enrollment_codes_user_id ON enrollment_codes (user_id);

CREATE TABLE issued_certificates (
    issuer text NOT NULL,
    serial text NOT NULL,
    fingerprint text NOT NULL,
    user_id text NOT NULL,
    issued_at timestamptz NOT NULL,
    not_after timestamptz NOT NULL,
    card_serial_number bigint,
    chuid_guid text,
    PRIMARY KEY (issuer, serial)
);
CREATE INDEX issued_certificates_user_id ON issued_certificates (user_id);
CREATE INDEX issued_certificates_serial ON issued_certificates (serial);

CREATE TABLE revoked_certificates (
    issuer text NOT NULL,
    serial text NOT NULL,
    revoked_at timestamptz NOT NULL,
    reason text NOT NULL CHECK (reason IN ('unspecified', 'keyCompromise', 'affiliationChanged',
        'superseded', 'cessationOfOperation', 'privilegeWithdrawn')),
    PRIMARY KEY (issuer, serial)
);
CREATE INDEX revoked_certificates_serial ON revoked_certificates (serial);

CREATE TABLE pending_renewals (
    issuer text NOT NULL,
    serial text NOT NULL,
    old_issuer text NOT NULL,
    old_serial text NOT NULL,
    user_id text NOT NULL,
    certificate bytea NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, serial)
);
CREATE INDEX pending_renewals_old ON pending_renewals (old_issuer, old_serial);

CREATE TABLE heartbeat (
    id integer PRIMARY KEY NOT NULL CHECK (id = 1),
    at timestamptz NOT NULL
);

CREATE TABLE devices (
    id text PRIMARY KEY NOT NULL,
    state text NOT NULL CHECK (state IN ('enabled', 'disabled')),
    created_at timestamptz NOT NULL,
    code_hash text NOT NULL UNIQUE,
    code_expires_at timestamptz NOT NULL,
    code_used_at timestamptz,
    certificate bytea,
    certificate_serial text,
    certificate_fingerprint text,
    not_after timestamptz
);

CREATE TABLE admin_credentials (
    name text PRIMARY KEY NOT NULL,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
"
);

/// Every migration, by version, oldest first. Never edit one that shipped: add the next.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, MIGRATION_1),
    (2, shared::MIGRATION_2),
    (3, sessions::MIGRATION_3),
];

#[path = "postgres_shared.rs"]
mod shared;

/// The reason a sign-in's session is stored ended (`NULL`: it is not), from the states of
/// the card (CTE `card`, its row as the upsert left it) and the user (CTE `holder`, read
/// under a share lock): both the latest committed, so a lock or revocation committed while
/// the sign-in finished still ends its session, and one committing after it waits for the
/// sign-in and then ends the session it stored.
macro_rules! session_gate {
    () => {
        "SELECT CASE
             WHEN (SELECT state FROM card) = 'revoked' THEN 'card_revoked'
             WHEN (SELECT state FROM card) = 'locked' THEN 'card_locked'
             WHEN (SELECT state FROM holder) = 'locked' THEN 'user_locked'
         END AS reason"
    };
}

#[path = "postgres_sessions.rs"]
mod sessions;

/// `SELECT` of every [`User`] column, followed by the rest of the statement.
macro_rules! select_users {
    ($rest:expr) => {
        concat!(
            "SELECT id, display_name, mail, upn, employee_id, state FROM users ",
            $rest
        )
    };
}

/// The PostgreSQL store. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection settings may hold a password: never shown.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database of `url` (TLS as its `sslmode` says, with `password`
    /// when the database asks for one) and brings its schema up to date.
    pub async fn connect(
        url: &PostgresUrl,
        password: Option<&StorePassword>,
    ) -> Result<Self, StoreError> {
        let tls = PostgresTls::new(url.ssl_mode, url.ssl_root_cert.as_deref())
            .map_err(|error| StoreError::Database(DatabaseError::PostgresTls(Arc::new(error))))?;
        Self::connect_with(url.driver_config(password), tls).await
    }

    /// The schema version of the database of `url`, read over one connection of its own
    /// without migrating anything (`pivtap server check`).
    pub async fn schema_version(
        url: &PostgresUrl,
        password: Option<&StorePassword>,
    ) -> Result<SchemaVersion, StoreError> {
        let tls = PostgresTls::new(url.ssl_mode, url.ssl_root_cert.as_deref())
            .map_err(|error| StoreError::Database(DatabaseError::PostgresTls(Arc::new(error))))?;
        let (client, connection) = url.driver_config(password).connect(tls).await?;
        let connection = tokio::spawn(connection);
        let has_table: bool = client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await?
            .try_get(0)?;
        let applied: Option<i32> = if has_table {
            client
                .query_one("SELECT max(version) FROM schema_migrations", &[])
                .await?
                .try_get(0)?
        } else {
            None
        };
        drop(client);
        let _closed = connection.await;
        Ok(SchemaVersion {
            applied: applied.map(i64::from),
            known: MIGRATIONS
                .last()
                .map_or(0, |(version, _)| i64::from(*version)),
        })
    }

    /// Connects with the driver's `config` and `tls` (used when the config's `sslmode`
    /// is not `disable`) and brings the schema up to date.
    pub async fn connect_with(
        config: tokio_postgres::Config,
        tls: PostgresTls,
    ) -> Result<Self, StoreError> {
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|error| {
                StoreError::Database(DatabaseError::Pool {
                    reason: error.to_string(),
                })
            })?;
        let store = PostgresStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// The rows `sql` (a statement prepared once per connection) selects, each read by
    /// `from_row`.
    async fn rows<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        from_row: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        client
            .query(&statement, params)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// The one row `sql` selects, if any, read by `from_row`.
    async fn optional_row<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        from_row: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        client
            .query_opt(&statement, params)
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// A connection from the pool.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|error| match error {
            deadpool_postgres::PoolError::Backend(error) => StoreError::from(error),
            other => StoreError::Database(DatabaseError::Pool {
                reason: other.to_string(),
            }),
        })
    }

    /// Applies the migrations this database lacks, each in its own transaction, under the
    /// migration advisory lock.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let migrated = migrate(&mut client).await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        migrated?;
        unlocked?;
        Ok(())
    }
}

/// [`PostgresStore::migrate`] with the lock held.
async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY NOT NULL,
                applied_at timestamptz NOT NULL
            )",
        )
        .await?;
    let newest_known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    let newest_applied: Option<i32> = client
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await?
        .try_get(0)?;
    if let Some(newest_applied) = newest_applied.filter(|applied| *applied > newest_known) {
        return Err(StoreError::Conflict {
            what: format!(
                "the database has schema version {newest_applied}, newer than this program's {newest_known}"
            ),
        });
    }
    for &(version, sql) in MIGRATIONS {
        if newest_applied.is_some_and(|applied| applied >= version) {
            continue;
        }
        let transaction = client.transaction().await?;
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())",
                &[&version],
            )
            .await?;
        transaction.commit().await?;
    }
    Ok(())
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        StoreError::Database(DatabaseError::Postgres(Arc::new(error)))
    }
}

/// `time` in UTC, refused outside the years 0000 to 9999 (the range SQLite keeps).
fn utc(time: OffsetDateTime) -> Result<OffsetDateTime, StoreError> {
    time.checked_to_offset(UtcOffset::UTC)
        .filter(|utc| (0..=9999).contains(&utc.year()))
        .ok_or(StoreError::Database(DatabaseError::TimeOutOfRange))
}

fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn user_from_row(row: &Row) -> Result<User, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(User {
        id: row.try_get("id")?,
        display_name: row.try_get("display_name")?,
        mail: row.try_get("mail")?,
        upn: row.try_get("upn")?,
        employee_id: row.try_get("employee_id")?,
        state: state.parse().map_err(|error: super::InvalidState| {
            StoreError::Database(DatabaseError::Column {
                column: "state".to_owned(),
                reason: error.to_string(),
            })
        })?,
    })
}

/// [`StoreError::AttributeTaken`] if a user other than `except` has one of `user`'s
/// mapped attributes.
async fn attribute_taken(
    client: &impl deadpool_postgres::GenericClient,
    user: &User,
    except: Option<&str>,
) -> Result<Option<StoreError>, StoreError> {
    let attributes = [
        (UserAttribute::Mail, &user.mail),
        (UserAttribute::Upn, &user.upn),
        (UserAttribute::EmployeeId, &user.employee_id),
    ];
    for (attribute, value) in attributes {
        let Some(value) = value else { continue };
        if let Some(holder) = find_users(client, attribute, std::slice::from_ref(value))
            .await?
            .into_iter()
            .find(|holder| Some(holder.id.as_str()) != except)
        {
            return Ok(Some(StoreError::AttributeTaken {
                attribute,
                holder: holder.id,
            }));
        }
    }
    Ok(None)
}

/// Adds `user` in `transaction`, which holds the users lock.
async fn insert_user(
    transaction: &deadpool_postgres::Transaction<'_>,
    user: &User,
) -> Result<(), StoreError> {
    let exists = || StoreError::Conflict {
        what: format!("user {:?} exists already", user.id),
    };
    let taken = transaction
        .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user.id])
        .await?;
    if taken.is_some() {
        return Err(exists());
    }
    if let Some(taken) = attribute_taken(transaction, user, None).await? {
        return Err(taken);
    }
    let statement = transaction
        .prepare_cached(
            "INSERT INTO users (id, display_name, mail, upn, employee_id, state, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, now())",
        )
        .await?;
    let result = transaction
        .execute(
            &statement,
            &[
                &user.id,
                &user.display_name,
                &user.mail,
                &user.upn,
                &user.employee_id,
                &user.state.as_str(),
            ],
        )
        .await;
    match result {
        Err(error) if is_unique_violation(&error) => Err(exists()),
        other => other.map(drop).map_err(StoreError::from),
    }
}

/// `INSERT` of an audit event whose fields are parameters `$1` to `$7` (time, kind, outcome,
/// device, card serial, user id, detail), as a `SELECT` a statement may add a `WHERE` to.
macro_rules! insert_audit {
    () => {
        "INSERT INTO audit (time, kind, outcome, device, card_serial, user_id, detail)
         SELECT $1::timestamptz, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text"
    };
}

/// Writes `event` (cut to its bounds) with `client`.
async fn insert_audit(
    client: &impl deadpool_postgres::GenericClient,
    event: &NewAuditEvent,
) -> Result<(), StoreError> {
    let event = event.bounded();
    let statement = client.prepare_cached(insert_audit!()).await?;
    client
        .execute(
            &statement,
            &[
                &utc(event.time)?,
                &event.kind.as_str(),
                &event.outcome.as_str(),
                &event.device,
                &event.card_serial,
                &event.user_id,
                &event.detail,
            ],
        )
        .await?;
    Ok(())
}

/// Every [`Card`] column, each prefixed with `$table` when given (`"c."`).
macro_rules! card_columns {
    () => {
        card_columns!("")
    };
    ($table:literal) => {
        concat!(
            $table,
            "serial, ",
            $table,
            "fingerprint, ",
            $table,
            "issuer, ",
            $table,
            "subject, ",
            $table,
            "user_id, ",
            $table,
            "state, ",
            $table,
            "first_seen, ",
            $table,
            "last_seen"
        )
    };
}

/// `SELECT` of every [`Card`] column, followed by the rest of the statement.
macro_rules! select_cards {
    ($rest:literal) => {
        concat!("SELECT ", card_columns!(), " FROM cards ", $rest)
    };
}

fn card_from_row(row: &Row) -> Result<Card, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(Card {
        serial: row.try_get("serial")?,
        fingerprint: row.try_get("fingerprint")?,
        issuer: row.try_get("issuer")?,
        subject: row.try_get("subject")?,
        user_id: row.try_get("user_id")?,
        state: state.parse().map_err(|error: super::InvalidState| {
            StoreError::Database(DatabaseError::Column {
                column: "state".to_owned(),
                reason: error.to_string(),
            })
        })?,
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
    })
}

/// Puts `id` on the revocation list (kept if it is there already).
async fn add_revocation(
    client: &impl deadpool_postgres::GenericClient,
    id: &CardId,
    reason: RevocationReason,
    revoked_at: OffsetDateTime,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO revoked_certificates (issuer, serial, revoked_at, reason)
             VALUES ($1, $2, $3, $4) ON CONFLICT (issuer, serial) DO NOTHING",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&id.issuer, &id.serial, &revoked_at, &reason.as_str()],
        )
        .await?;
    Ok(())
}

/// Revokes the pending renewals of `old`, all but `except`, and forgets them, in one
/// statement (a renewal taken by a concurrent write is not revoked twice).
async fn revoke_pending_renewals(
    client: &impl deadpool_postgres::GenericClient,
    old: &CardId,
    except: Option<&CardId>,
    reason: RevocationReason,
    revoked_at: OffsetDateTime,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM pending_renewals
                 WHERE old_issuer = $1 AND old_serial = $2
                   AND ($3::text IS NULL OR (issuer, serial) <> ($3::text, $4::text))
                 RETURNING issuer, serial
             )
             INSERT INTO revoked_certificates (issuer, serial, revoked_at, reason)
             SELECT issuer, serial, $5::timestamptz, $6::text FROM gone
             ON CONFLICT (issuer, serial) DO NOTHING",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &old.issuer,
                &old.serial,
                &except.map(|new| new.issuer.as_str()),
                &except.map(|new| new.serial.as_str()),
                &revoked_at,
                &reason.as_str(),
            ],
        )
        .await?;
    Ok(())
}

/// Sets card `id`'s state in `client`'s transaction; revoking puts it and its pending
/// renewals on the revocation list. Revocation is final.
async fn set_card_state(
    client: &impl deadpool_postgres::GenericClient,
    id: &CardId,
    state: CardState,
    reason: RevocationReason,
) -> Result<(), StoreError> {
    // One statement, so a concurrent revocation cannot be undone.
    let statement = client
        .prepare_cached(
            "UPDATE cards SET state = $1
             WHERE issuer = $2 AND serial = $3 AND (state <> 'revoked' OR $1 = 'revoked')",
        )
        .await?;
    let changed = client
        .execute(&statement, &[&state.as_str(), &id.issuer, &id.serial])
        .await?;
    if changed > 0 {
        if state == CardState::Revoked {
            let now = utc(OffsetDateTime::now_utc())?;
            add_revocation(client, id, reason, now).await?;
            revoke_pending_renewals(client, id, None, reason, now).await?;
        }
        return Ok(());
    }
    let exists = client
        .query_opt(
            "SELECT 1 FROM cards WHERE issuer = $1 AND serial = $2",
            &[&id.issuer, &id.serial],
        )
        .await?
        .is_some();
    Err(if exists {
        StoreError::Conflict {
            what: format!("card {id} is revoked, which is final"),
        }
    } else {
        StoreError::NotFound {
            what: format!("card {id}"),
        }
    })
}

/// A stored value this program cannot read, as [`DatabaseError::Column`].
fn column_error(column: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(DatabaseError::Column {
        column: column.to_owned(),
        reason: error.to_string(),
    })
}

fn audit_event_from_row(row: &Row) -> Result<AuditEvent, StoreError> {
    let kind: String = row.try_get("kind")?;
    let outcome: String = row.try_get("outcome")?;
    Ok(AuditEvent {
        id: row.try_get("id")?,
        time: row.try_get("time")?,
        kind: kind.parse().map_err(|error| column_error("kind", error))?,
        outcome: outcome
            .parse()
            .map_err(|error| column_error("outcome", error))?,
        device: row.try_get("device")?,
        card_serial: row.try_get("card_serial")?,
        user_id: row.try_get("user_id")?,
        detail: row.try_get("detail")?,
    })
}

/// A statement's parameter of any type [`AuditQuery`] filters by.
type Parameter = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// Uses challenge `nonce` for `device` at `now`: accepted once, before it expires.
async fn use_challenge(
    client: &impl deadpool_postgres::GenericClient,
    nonce: &str,
    device: &str,
    now: OffsetDateTime,
) -> Result<ChallengeUse, StoreError> {
    let now = utc(now)?;
    // The single atomic step: only one caller can turn `used_at` from NULL (PostgreSQL
    // re-checks the condition on the locked row).
    let statement = client
        .prepare_cached(
            "UPDATE challenges SET used_at = $1
             WHERE nonce = $2 AND device = $3 AND used_at IS NULL AND expires_at > $1",
        )
        .await?;
    if client.execute(&statement, &[&now, &nonce, &device]).await? > 0 {
        return Ok(ChallengeUse::Accepted);
    }
    // Refused: read why. Challenges only ever move towards refusal, so the answer cannot
    // contradict the UPDATE.
    let statement = client
        .prepare_cached("SELECT device, used_at FROM challenges WHERE nonce = $1")
        .await?;
    let Some(row) = client.query_opt(&statement, &[&nonce]).await? else {
        return Ok(ChallengeUse::Unknown);
    };
    let issued_to: String = row.try_get(0)?;
    let used_at: Option<OffsetDateTime> = row.try_get(1)?;
    Ok(if issued_to != device {
        ChallengeUse::OtherDevice
    } else if used_at.is_some() {
        ChallengeUse::Reused
    } else {
        ChallengeUse::Expired
    })
}

fn revoked_from_row(row: &Row) -> Result<RevokedCertificate, StoreError> {
    let reason: String = row.try_get("reason")?;
    Ok(RevokedCertificate {
        issuer: row.try_get("issuer")?,
        serial: row.try_get("serial")?,
        revoked_at: row.try_get("revoked_at")?,
        reason: reason
            .parse()
            .map_err(|error| column_error("reason", error))?,
    })
}

/// The revocation of card `id`, if it is on the list.
async fn revocation(
    client: &impl deadpool_postgres::GenericClient,
    id: &CardId,
) -> Result<Option<RevokedCertificate>, StoreError> {
    // An entry without its issuer (migrated from SQLite before its version 4) counts for
    // every issuer.
    let statement = client
        .prepare_cached(
            "SELECT issuer, serial, revoked_at, reason FROM revoked_certificates
             WHERE serial = $1 AND issuer IN ($2, '') ORDER BY issuer DESC LIMIT 1",
        )
        .await?;
    client
        .query_opt(&statement, &[&id.serial, &id.issuer])
        .await?
        .as_ref()
        .map(revoked_from_row)
        .transpose()
}

/// Attempts of a write that PostgreSQL aborted as a serialization failure or a deadlock.
const WRITE_ATTEMPTS: u32 = 4;

/// Whether `error` aborted a transaction that may simply run again: a serialization
/// failure (40001) or a deadlock (40P01), which PostgreSQL rolled back whole.
fn is_retryable(error: &StoreError) -> bool {
    match error {
        StoreError::Database(DatabaseError::Postgres(error)) => error.code().is_some_and(|code| {
            *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
        }),
        _ => false,
    }
}

/// Runs `write` (one transaction) until it succeeds, fails for good, or has hit a
/// serialization failure or deadlock [`WRITE_ATTEMPTS`] times; a short random pause
/// between attempts keeps two nodes from colliding again.
async fn retried<T, F, Fut>(mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(error) if attempt < WRITE_ATTEMPTS && is_retryable(&error) => {
                let pause = rand::random_range(1..=5 * u64::from(attempt));
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Records `facts`' card as [`Store::record_card`] does.
async fn record_card(
    client: &impl deadpool_postgres::GenericClient,
    facts: &CertificateFacts,
    user_id: Option<&str>,
    now: OffsetDateTime,
) -> Result<Card, StoreError> {
    let now = utc(now)?;
    let statement = client
        .prepare_cached(concat!(
            "INSERT INTO cards (serial, fingerprint, issuer, subject, user_id, state, first_seen, last_seen)
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)
             ON CONFLICT (issuer, serial) DO UPDATE SET
                 fingerprint = excluded.fingerprint,
                 subject = excluded.subject,
                 user_id = coalesce(excluded.user_id, cards.user_id),
                 last_seen = excluded.last_seen
             RETURNING ",
            card_columns!()
        ))
        .await?;
    let result = client
        .query_one(
            &statement,
            &[
                &facts.serial,
                &facts.fingerprint,
                &facts.issuer,
                &facts.subject,
                &user_id,
                &now,
            ],
        )
        .await;
    match result {
        Ok(row) => card_from_row(&row),
        Err(error) if is_foreign_key_violation(&error) => Err(StoreError::NotFound {
            what: format!("user {:?}", user_id.unwrap_or_default()),
        }),
        Err(error) => Err(error.into()),
    }
}

fn is_foreign_key_violation(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION)
}

/// Completes the renewal whose new certificate is `new`, if one is pending, as SQLite's
/// store does: see [`supersede`]. Returns whether one was pending. Of concurrent calls on
/// any node only one completes it: the `DELETE` of its pending row is the single step.
async fn complete_renewal(
    client: &impl deadpool_postgres::GenericClient,
    new: &CardId,
    cause: &NewAuditEvent,
) -> Result<bool, StoreError> {
    let statement = client
        .prepare_cached(
            "DELETE FROM pending_renewals WHERE issuer = $1 AND serial = $2
             RETURNING old_issuer, old_serial",
        )
        .await?;
    let Some(row) = client
        .query_opt(&statement, &[&new.issuer, &new.serial])
        .await?
    else {
        return Ok(false);
    };
    let old = CardId {
        issuer: row.try_get(0)?,
        serial: row.try_get(1)?,
    };
    supersede(client, &old, new, cause).await?;
    Ok(true)
}

/// The rest of a renewal whose pending row (`old` to `new`) was just deleted: the old card
/// becomes revoked (superseded, on the revocation list; a card revoked before keeps its
/// state), its other pending renewals are revoked, and a `renewal` event (time, device
/// and user of `cause`, the event of the use that completes it) is appended.
async fn supersede(
    client: &impl deadpool_postgres::GenericClient,
    old: &CardId,
    new: &CardId,
    cause: &NewAuditEvent,
) -> Result<(), StoreError> {
    let now = utc(cause.time)?;
    let statement = client
        .prepare_cached(
            "UPDATE cards SET state = 'revoked'
             WHERE issuer = $1 AND serial = $2 AND state <> 'revoked'",
        )
        .await?;
    client
        .execute(&statement, &[&old.issuer, &old.serial])
        .await?;
    add_revocation(client, old, RevocationReason::Superseded, now).await?;
    revoke_pending_renewals(client, old, Some(new), RevocationReason::Superseded, now).await?;
    insert_audit(
        client,
        &NewAuditEvent {
            time: cause.time,
            kind: AuditKind::Renewal,
            outcome: AuditOutcome::Ok,
            device: cause.device.clone(),
            card_serial: Some(new.serial.clone()),
            user_id: cause.user_id.clone(),
            detail: Some(format!(
                "new certificate {new} in use ({}): {old} superseded",
                cause.kind
            )),
        },
    )
    .await
}

/// Registers the issued certificate's card as active for its user.
async fn register_card(
    client: &impl deadpool_postgres::GenericClient,
    issued: &IssuedCertificate,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let facts = &issued.facts;
    let statement = client
        .prepare_cached(
            "INSERT INTO cards (serial, fingerprint, issuer, subject, user_id, state, first_seen, last_seen)
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)",
        )
        .await?;
    let inserted = client
        .execute(
            &statement,
            &[
                &facts.serial,
                &facts.fingerprint,
                &facts.issuer,
                &facts.subject,
                &issued.user_id,
                &now,
            ],
        )
        .await;
    match inserted {
        Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
            what: format!("card {} exists already", CardId::of(facts)),
        }),
        Err(error) if is_foreign_key_violation(&error) => Err(StoreError::NotFound {
            what: format!("user {:?}", issued.user_id),
        }),
        other => other.map(drop).map_err(StoreError::from),
    }
}

/// Registers a certificate this server issued (what its CRL covers).
async fn insert_issued(
    client: &impl deadpool_postgres::GenericClient,
    issued: &IssuedCertificate,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let facts = &issued.facts;
    let statement = client
        .prepare_cached(
            "INSERT INTO issued_certificates
                 (issuer, serial, fingerprint, user_id, issued_at, not_after, card_serial_number, chuid_guid)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    let inserted = client
        .execute(
            &statement,
            &[
                &facts.issuer,
                &facts.serial,
                &facts.fingerprint,
                &issued.user_id,
                &now,
                &utc(facts.not_after)?,
                &issued.card_serial_number.map(i64::from),
                &issued.chuid_guid,
            ],
        )
        .await;
    match inserted {
        Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
            what: format!("certificate {} exists already", CardId::of(facts)),
        }),
        other => other.map(drop).map_err(StoreError::from),
    }
}

/// Deletes the challenges given to `device` that were not used (used ones stay, so a
/// replay is still told apart).
async fn delete_unused_challenges(
    client: &impl deadpool_postgres::GenericClient,
    device: &str,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached("DELETE FROM challenges WHERE device = $1 AND used_at IS NULL")
        .await?;
    client.execute(&statement, &[&device]).await?;
    Ok(())
}

/// `SELECT` of every [`Device`] column, followed by the rest of the statement.
macro_rules! select_devices {
    ($rest:literal) => {
        concat!(
            "SELECT id, state, created_at, code_expires_at, code_used_at, certificate, \
             certificate_serial, certificate_fingerprint, not_after FROM devices ",
            $rest
        )
    };
}

fn device_from_row(row: &Row) -> Result<Device, StoreError> {
    let state: String = row.try_get("state")?;
    let certificate: Option<Vec<u8>> = row.try_get("certificate")?;
    let serial: Option<String> = row.try_get("certificate_serial")?;
    let fingerprint: Option<String> = row.try_get("certificate_fingerprint")?;
    let not_after: Option<OffsetDateTime> = row.try_get("not_after")?;
    let credential = match (certificate, serial, fingerprint, not_after) {
        (Some(certificate), Some(serial), Some(fingerprint), Some(not_after)) => {
            Some(DeviceCredentialRecord {
                certificate,
                serial,
                fingerprint,
                not_after,
            })
        }
        _ => None,
    };
    Ok(Device {
        id: row.try_get("id")?,
        state: state
            .parse()
            .map_err(|error| column_error("state", error))?,
        created_at: row.try_get("created_at")?,
        code_expires_at: row.try_get("code_expires_at")?,
        code_used_at: row.try_get("code_used_at")?,
        credential,
    })
}

fn enrollment_code_from_row(row: &Row) -> Result<EnrollmentCodeRecord, StoreError> {
    Ok(EnrollmentCodeRecord {
        code_hash: row.try_get("code_hash")?,
        user_id: row.try_get("user_id")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
        used_by: row.try_get("used_by")?,
    })
}

fn admin_credential_from_row(row: &Row) -> Result<AdminCredential, StoreError> {
    Ok(AdminCredential {
        name: row.try_get("name")?,
        token_hash: row.try_get("token_hash")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// A count read from the database as the unsigned number [`StoreStats`] holds.
fn count(row: &Row, column: usize) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(column)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The users whose `attribute` is one of `values`, as the mapping rules compare it, each
/// once, ordered by id as the bytes compare (as SQLite's store orders them, whatever the
/// database's collation).
async fn find_users(
    client: &impl deadpool_postgres::GenericClient,
    attribute: UserAttribute,
    values: &[String],
) -> Result<Vec<User>, StoreError> {
    let sql = match attribute {
        UserAttribute::Uid => select_users!("WHERE id = ANY($1)"),
        UserAttribute::Mail => select_users!(concat!(
            "WHERE ",
            ascii_fold!("mail"),
            " IN (SELECT ",
            ascii_fold!("value"),
            " FROM unnest($1::text[]) AS v(value))"
        )),
        UserAttribute::Upn => select_users!(concat!(
            "WHERE ",
            ascii_fold!("upn"),
            " IN (SELECT ",
            ascii_fold!("value"),
            " FROM unnest($1::text[]) AS v(value))"
        )),
        UserAttribute::EmployeeId => select_users!("WHERE employee_id = ANY($1)"),
    };
    let statement = client.prepare_cached(sql).await?;
    let mut users = client
        .query(&statement, &[&values])
        .await?
        .iter()
        .map(user_from_row)
        .collect::<Result<Vec<User>, StoreError>>()?;
    users.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(users)
}

/// The card a pending renewal's new certificate `new` renews, if `new` is one.
async fn renewed_card(
    client: &impl deadpool_postgres::GenericClient,
    new: &CardId,
) -> Result<Option<Card>, StoreError> {
    let sql = concat!(
        "SELECT ",
        card_columns!("c."),
        " FROM pending_renewals p JOIN cards c
             ON c.issuer = p.old_issuer AND c.serial = p.old_serial
         WHERE p.issuer = $1 AND p.serial = $2"
    );
    query_card(client, sql, new).await
}

/// Checks a user's existence and locks their row until the commit: a concurrent write that
/// refers to them (a card or enrollment code of theirs) waits, and then sees the change.
async fn lock_user(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .await?;
    match client.query_opt(&statement, &[&id]).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound {
            what: format!("user {id:?}"),
        }),
    }
}

/// [`Store::update_user`] without its audit event, in a transaction holding the users lock.
async fn update_user(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
    user: &User,
) -> Result<(), StoreError> {
    lock_user(client, id).await?;
    if user.id != id {
        let taken = client
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user.id])
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict {
                what: format!("user {:?} exists already", user.id),
            });
        }
    }
    if let Some(taken) = attribute_taken(client, user, Some(id)).await? {
        return Err(taken);
    }
    if user.id == id {
        let statement = client
            .prepare_cached(
                "UPDATE users SET display_name = $1, mail = $2, upn = $3, employee_id = $4
                 WHERE id = $5",
            )
            .await?;
        client
            .execute(
                &statement,
                &[
                    &user.display_name,
                    &user.mail,
                    &user.upn,
                    &user.employee_id,
                    &id,
                ],
            )
            .await?;
        return Ok(());
    }
    // A rename: the new row first, so that the references can move to it.
    client
        .execute(
            "INSERT INTO users (id, display_name, mail, upn, employee_id, state, created_at)
             SELECT $1, $2, $3, $4, $5, state, created_at FROM users WHERE id = $6",
            &[
                &user.id,
                &user.display_name,
                &user.mail,
                &user.upn,
                &user.employee_id,
                &id,
            ],
        )
        .await?;
    for sql in [
        "UPDATE cards SET user_id = $1 WHERE user_id = $2",
        "UPDATE enrollment_codes SET user_id = $1 WHERE user_id = $2",
        "UPDATE issued_certificates SET user_id = $1 WHERE user_id = $2",
        "UPDATE pending_renewals SET user_id = $1 WHERE user_id = $2",
        "UPDATE audit SET user_id = $1 WHERE user_id = $2",
        "UPDATE sessions SET user_id = $1 WHERE user_id = $2",
    ] {
        client.execute(sql, &[&user.id, &id]).await?;
    }
    client
        .execute("DELETE FROM users WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// [`Store::import_users`] in a transaction holding the users lock (kept or rolled back
/// by the caller).
async fn import_users(
    client: &deadpool_postgres::Transaction<'_>,
    users: Vec<(User, NewAuditEvent)>,
    update: bool,
) -> Result<Vec<Result<UserWritten, StoreError>>, StoreError> {
    let mut results = Vec::with_capacity(users.len());
    let stored_statement = client
        .prepare_cached(select_users!("WHERE id = $1"))
        .await?;
    for (user, mut event) in users {
        let stored = client
            .query_opt(&stored_statement, &[&user.id])
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()?;
        let result = match stored {
            None => insert_user(client, &user)
                .await
                .map(|()| UserWritten::Added),
            Some(_) if !update => Err(StoreError::Conflict {
                what: format!("user {:?} exists already", user.id),
            }),
            Some(stored) => {
                let changed = super::sqlite::changed_fields(&stored, &user);
                if changed.is_empty() {
                    results.push(Ok(UserWritten::Unchanged));
                    continue;
                }
                event.detail = Some(format!(
                    "{}: updated {}",
                    event.detail.unwrap_or_default(),
                    changed.join(", ")
                ));
                update_user(client, &user.id, &user)
                    .await
                    .map(|()| UserWritten::Updated(changed))
            }
        };
        match result {
            Ok(written) => {
                insert_audit(client, &event).await?;
                results.push(Ok(written));
            }
            Err(refused @ (StoreError::Conflict { .. } | StoreError::AttributeTaken { .. })) => {
                results.push(Err(refused));
            }
            Err(failure) => return Err(failure),
        }
    }
    Ok(results)
}

/// [`Store::delete_user`] without its audit event.
async fn delete_user(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<Vec<CardId>, StoreError> {
    lock_user(client, id).await?;
    let statement = client
        .prepare_cached(select_cards!(
            "WHERE user_id = $1 AND state <> 'revoked' FOR UPDATE"
        ))
        .await?;
    let mut live = client
        .query(&statement, &[&id])
        .await?
        .iter()
        .map(|row| card_from_row(row).map(|card| card.id()))
        .collect::<Result<Vec<CardId>, StoreError>>()?;
    // By serial, then issuer, as the bytes compare (whatever the database's collation).
    live.sort_by(|a, b| (&a.serial, &a.issuer).cmp(&(&b.serial, &b.issuer)));
    for card in &live {
        set_card_state(
            client,
            card,
            CardState::Revoked,
            RevocationReason::AffiliationChanged,
        )
        .await?;
    }
    for sql in [
        "UPDATE cards SET user_id = NULL WHERE user_id = $1",
        "DELETE FROM enrollment_codes WHERE user_id = $1",
        "DELETE FROM users WHERE id = $1",
    ] {
        client.execute(sql, &[&id]).await?;
    }
    Ok(live)
}

/// The card with this issuer and serial, if any.
async fn get_card(
    client: &impl deadpool_postgres::GenericClient,
    id: &CardId,
) -> Result<Option<Card>, StoreError> {
    query_card(
        client,
        select_cards!("WHERE issuer = $1 AND serial = $2"),
        id,
    )
    .await
}

/// The card the query `sql` finds for `id` (its issuer `$1`, its serial `$2`), if any.
async fn query_card(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    id: &CardId,
) -> Result<Option<Card>, StoreError> {
    let statement = client.prepare_cached(sql).await?;
    client
        .query_opt(&statement, &[&id.issuer, &id.serial])
        .await?
        .as_ref()
        .map(card_from_row)
        .transpose()
}

/// [`Store::finish_sign_in`] in one statement on its own (atomic without a transaction):
/// records the card as [`record_card`] does for `user_id` and appends `event`, unless the
/// certificate is a pending renewal's new one: then it writes nothing and answers `None`,
/// and the caller completes the renewal in a transaction ([`confirm_renewal`]).
async fn finish_sign_in(
    client: &impl deadpool_postgres::GenericClient,
    facts: &CertificateFacts,
    user_id: &str,
    now: OffsetDateTime,
    event: &NewAuditEvent,
    session: &super::NewSession,
) -> Result<Option<Card>, StoreError> {
    let now = utc(now)?;
    let event = event.bounded();
    let statement = client
        .prepare_cached(concat!(
            "WITH pending AS (
                 SELECT 1 FROM pending_renewals WHERE issuer = $10 AND serial = $8
             ), card AS (
                 INSERT INTO cards
                     (serial, fingerprint, issuer, subject, user_id, state, first_seen, last_seen)
                 SELECT $8::text, $9::text, $10::text, $11::text, $12::text, 'active',
                     $13::timestamptz, $13::timestamptz
                 WHERE NOT EXISTS (SELECT 1 FROM pending)
                 ON CONFLICT (issuer, serial) DO UPDATE SET
                     fingerprint = excluded.fingerprint,
                     subject = excluded.subject,
                     user_id = coalesce(excluded.user_id, cards.user_id),
                     last_seen = excluded.last_seen
                 RETURNING ",
            card_columns!(),
            "
             ), event AS (",
            insert_audit!(),
            " WHERE NOT EXISTS (SELECT 1 FROM pending)
             ), holder AS (
                 SELECT state FROM users WHERE id = $15 FOR SHARE
             ), gate AS (",
            session_gate!(),
            "
             ), session AS (
                 INSERT INTO sessions (id, user_id, device, card_issuer, card_serial, amr,
                     created_at, expires_at, ended_at, ended_reason)
                 SELECT $14::text, $15::text, $16::text, $17::text, $18::text, $19::text,
                     $20::timestamptz, $21::timestamptz,
                     CASE WHEN gate.reason IS NULL THEN NULL ELSE $20::timestamptz END,
                     gate.reason
                 FROM gate WHERE NOT EXISTS (SELECT 1 FROM pending)
             ), refresh AS (
                 INSERT INTO session_refresh_tokens (token_hash, session_id, client_id, scope,
                     created_at, revoked_at)
                 SELECT $22::text, $14::text, $23::text, '', $20::timestamptz,
                     CASE WHEN gate.reason IS NULL THEN NULL ELSE $20::timestamptz END
                 FROM gate WHERE NOT EXISTS (SELECT 1 FROM pending)
             )
             SELECT * FROM card"
        ))
        .await?;
    let result = client
        .query_opt(
            &statement,
            &[
                &utc(event.time)?,
                &event.kind.as_str(),
                &event.outcome.as_str(),
                &event.device,
                &event.card_serial,
                &event.user_id,
                &event.detail,
                &facts.serial,
                &facts.fingerprint,
                &facts.issuer,
                &facts.subject,
                &user_id,
                &now,
                &session.id,
                &session.user_id,
                &session.device,
                &session.card.issuer,
                &session.card.serial,
                &session.amr.join(" "),
                &utc(session.created_at)?,
                &utc(session.expires_at)?,
                &session.refresh_token_hash,
                &super::KIOSK_CLIENT_ID,
            ],
        )
        .await;
    match result {
        Ok(row) => row.as_ref().map(card_from_row).transpose(),
        Err(error) if is_foreign_key_violation(&error) => Err(StoreError::NotFound {
            what: format!("user {user_id:?}"),
        }),
        Err(error) if is_unique_violation(&error) => Err(sessions::session_taken()),
        Err(error) => Err(error.into()),
    }
}

/// [`Store::confirm_renewal`] in `transaction`, which the caller commits: completes the
/// renewal `facts` is the new certificate of, if one is pending, records its card and
/// appends `event`. Returns whether a renewal completed, and the card.
async fn confirm_renewal(
    transaction: &deadpool_postgres::Transaction<'_>,
    facts: &CertificateFacts,
    user_id: &str,
    now: OffsetDateTime,
    event: &NewAuditEvent,
) -> Result<(bool, Card), StoreError> {
    let completed = complete_renewal(transaction, &CardId::of(facts), event).await?;
    let card = record_card(transaction, facts, Some(user_id), now).await?;
    insert_audit(transaction, event).await?;
    Ok((completed, card))
}

/// Ends the selected sessions now, in the caller's transaction (a lock, revocation or
/// deletion).
async fn end_sessions_now(
    transaction: &deadpool_postgres::Transaction<'_>,
    selector: &super::SessionSelector,
    reason: SessionEndReason,
) -> Result<(), StoreError> {
    sessions::end_sessions(transaction, selector, reason, OffsetDateTime::now_utc())
        .await
        .map(drop)
}

/// Locks the users table against other writers of users (reads go on) for the rest of
/// `transaction`, so a check of ids and attributes holds until the commit.
const LOCK_USERS: &str = "LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE";

impl Store for PostgresStore {
    fn add_user(&self, user: &User) -> BoxFuture<'_, Result<(), StoreError>> {
        let user = user.clone();
        Box::pin(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await?;
            transaction.batch_execute(LOCK_USERS).await?;
            insert_user(&transaction, &user).await?;
            transaction.commit().await?;
            Ok(())
        })
    }

    fn get_user(&self, id: &str) -> BoxFuture<'_, Result<Option<User>, StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            self.optional_row(select_users!("WHERE id = $1"), &[&id], user_from_row)
                .await
        })
    }

    fn list_users(&self) -> BoxFuture<'_, Result<Vec<User>, StoreError>> {
        Box::pin(async move {
            self.rows(select_users!("ORDER BY id"), &[], user_from_row)
                .await
        })
    }

    fn find_users(
        &self,
        attribute: UserAttribute,
        value: &str,
    ) -> BoxFuture<'_, Result<Vec<User>, StoreError>> {
        let value = value.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            find_users(&client, attribute, std::slice::from_ref(&value)).await
        })
    }

    fn set_user_state(&self, id: &str, state: UserState) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            let id = &id;
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let statement = transaction
                    .prepare_cached("UPDATE users SET state = $1 WHERE id = $2")
                    .await?;
                let changed = transaction
                    .execute(&statement, &[&state.as_str(), id])
                    .await?;
                if changed == 0 {
                    return Err(StoreError::NotFound {
                        what: format!("user {id:?}"),
                    });
                }
                if state == UserState::Locked {
                    let selector = super::SessionSelector::User(id.clone());
                    end_sessions_now(&transaction, &selector, SessionEndReason::UserLocked).await?;
                }
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn audit(&self, event: NewAuditEvent) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            insert_audit(&client, &event).await
        })
    }

    fn heartbeat(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "INSERT INTO heartbeat (id, at) VALUES (1, $1)
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                )
                .await?;
            client.execute(&statement, &[&utc(now)?]).await?;
            Ok(())
        })
    }

    fn record_card(
        &self,
        facts: &CertificateFacts,
        user_id: Option<&str>,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Card, StoreError>> {
        let facts = facts.clone();
        let user_id = user_id.map(str::to_owned);
        Box::pin(async move {
            let client = self.client().await?;
            record_card(&client, &facts, user_id.as_deref(), now).await
        })
    }

    fn get_card(&self, id: &CardId) -> BoxFuture<'_, Result<Option<Card>, StoreError>> {
        let id = id.clone();
        Box::pin(async move {
            let client = self.client().await?;
            get_card(&client, &id).await
        })
    }

    fn find_cards(&self, serial: &str) -> BoxFuture<'_, Result<Vec<Card>, StoreError>> {
        let serial = serial.to_owned();
        Box::pin(async move {
            self.rows(
                select_cards!("WHERE serial = $1 ORDER BY issuer"),
                &[&serial],
                card_from_row,
            )
            .await
        })
    }

    fn list_cards(&self) -> BoxFuture<'_, Result<Vec<Card>, StoreError>> {
        Box::pin(async move {
            self.rows(select_cards!("ORDER BY serial, issuer"), &[], card_from_row)
                .await
        })
    }

    fn set_card_state(
        &self,
        id: &CardId,
        state: CardState,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.clone();
        Box::pin(async move {
            let id = &id;
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                set_card_state(&transaction, id, state, RevocationReason::Unspecified).await?;
                let reason = match state {
                    CardState::Active => None,
                    CardState::Locked => Some(SessionEndReason::CardLocked),
                    CardState::Revoked => Some(SessionEndReason::CardRevoked),
                };
                if let Some(reason) = reason {
                    let selector = super::SessionSelector::Card(id.clone());
                    end_sessions_now(&transaction, &selector, reason).await?;
                }
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn revoke_card(
        &self,
        id: &CardId,
        reason: RevocationReason,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.clone();
        Box::pin(async move {
            let id = &id;
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                set_card_state(&transaction, id, CardState::Revoked, reason).await?;
                let selector = super::SessionSelector::Card(id.clone());
                end_sessions_now(&transaction, &selector, SessionEndReason::CardRevoked).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn purge_challenges(
        &self,
        older_than: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let older_than = utc(older_than)?;
            let client = self.client().await?;
            let statement = client
                .prepare_cached("DELETE FROM challenges WHERE expires_at < $1")
                .await?;
            Ok(client.execute(&statement, &[&older_than]).await?)
        })
    }

    fn purge_audit(
        &self,
        older_than: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let older_than = utc(older_than)?;
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "DELETE FROM audit WHERE id IN
                     (SELECT id FROM audit WHERE time < $1 ORDER BY time LIMIT $2)",
                )
                .await?;
            Ok(client
                .execute(&statement, &[&older_than, &i64::from(limit)])
                .await?)
        })
    }

    fn query_audit(
        &self,
        query: &AuditQuery,
    ) -> BoxFuture<'_, Result<Vec<AuditEvent>, StoreError>> {
        let query = query.clone();
        Box::pin(async move {
            let mut sql = String::from(
                "SELECT id, time, kind, outcome, device, card_serial, user_id, detail FROM audit WHERE true",
            );
            let limit = i64::from(query.effective_limit());
            let mut values: Vec<Parameter> = Vec::new();
            // Appends `condition` with `$n` standing for the next parameter.
            let mut filter = |sql: &mut String, condition: &str, value: Parameter| {
                values.push(value);
                sql.push_str(&condition.replace("$n", &format!("${}", values.len())));
            };
            let equal_filters = [
                (" AND user_id = $n", query.user_id),
                (" AND card_serial = $n", query.card_serial),
                (" AND device = $n", query.device),
                (
                    " AND outcome = $n",
                    query.outcome.map(|o| o.as_str().to_owned()),
                ),
            ];
            for (condition, value) in equal_filters {
                if let Some(value) = value {
                    filter(&mut sql, condition, Box::new(value));
                }
            }
            match query.kind {
                Some(AuditKindFilter::Kind(kind)) => {
                    filter(
                        &mut sql,
                        " AND kind = $n",
                        Box::new(kind.as_str().to_owned()),
                    );
                }
                Some(AuditKindFilter::SignIn) => {
                    sql.push_str(" AND kind = 'assertion' AND outcome = 'ok'");
                }
                Some(AuditKindFilter::SignInRefused) => {
                    sql.push_str(" AND kind = 'assertion' AND outcome <> 'ok'");
                }
                None => {}
            }
            let client = self.client().await?;
            if let Some(before) = query.before {
                let time: Option<OffsetDateTime> = client
                    .query_opt("SELECT time FROM audit WHERE id = $1", &[&before])
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
                match time {
                    Some(time) => {
                        filter(&mut sql, " AND (time < $n", Box::new(time));
                        filter(&mut sql, " OR (time = $n", Box::new(time));
                        filter(&mut sql, " AND id < $n))", Box::new(before));
                    }
                    None => filter(&mut sql, " AND id < $n", Box::new(before)),
                }
            }
            if let Some(since) = query.since {
                filter(&mut sql, " AND time >= $n", Box::new(utc(since)?));
            }
            if let Some(until) = query.until {
                filter(&mut sql, " AND time < $n", Box::new(utc(until)?));
            }
            filter(
                &mut sql,
                " ORDER BY time DESC, id DESC LIMIT $n",
                Box::new(limit),
            );
            let parameters: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
                .iter()
                .map(|value| &**value as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let statement = client.prepare_cached(&sql).await?;
            client
                .query(&statement, &parameters)
                .await?
                .iter()
                .map(audit_event_from_row)
                .collect()
        })
    }

    fn add_challenge(
        &self,
        nonce: &Nonce,
        device: &str,
        expires_at: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let nonce = nonce.as_str().to_owned();
        let device = device.to_owned();
        Box::pin(async move {
            let (issued_at, expires_at) = (utc(OffsetDateTime::now_utc())?, utc(expires_at)?);
            let event = event.bounded();
            let client = self.client().await?;
            // One statement, atomic on its own: the event is written with the challenge.
            let statement = client
                .prepare_cached(concat!(
                    "WITH challenge AS (
                         INSERT INTO challenges (nonce, device, issued_at, expires_at)
                         VALUES ($8, $9, $10, $11)
                     )
                     ",
                    insert_audit!()
                ))
                .await?;
            let result = client
                .execute(
                    &statement,
                    &[
                        &utc(event.time)?,
                        &event.kind.as_str(),
                        &event.outcome.as_str(),
                        &event.device,
                        &event.card_serial,
                        &event.user_id,
                        &event.detail,
                        &nonce,
                        &device,
                        &issued_at,
                        &expires_at,
                    ],
                )
                .await;
            match result {
                // The message leaves the nonce out: it is a live challenge.
                Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
                    what: "the challenge exists already".to_owned(),
                }),
                other => other.map(drop).map_err(StoreError::from),
            }
        })
    }

    fn use_challenge(
        &self,
        nonce: &str,
        device: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<ChallengeUse, StoreError>> {
        let (nonce, device) = (nonce.to_owned(), device.to_owned());
        Box::pin(async move {
            let client = self.client().await?;
            use_challenge(&client, &nonce, &device, now).await
        })
    }

    fn revocation(
        &self,
        id: &CardId,
    ) -> BoxFuture<'_, Result<Option<RevokedCertificate>, StoreError>> {
        let id = id.clone();
        Box::pin(async move {
            let client = self.client().await?;
            revocation(&client, &id).await
        })
    }

    fn import_users(
        &self,
        users: Vec<(User, NewAuditEvent)>,
        update: bool,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<Vec<Result<UserWritten, StoreError>>, StoreError>> {
        Box::pin(async move {
            let users = &users;
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                transaction.batch_execute(LOCK_USERS).await?;
                let written = import_users(&transaction, users.clone(), update).await?;
                if dry_run {
                    transaction.rollback().await?;
                } else {
                    transaction.commit().await?;
                }
                Ok(written)
            })
            .await
        })
    }

    fn update_user(
        &self,
        id: &str,
        user: &User,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (id, user) = (id.to_owned(), user.clone());
        Box::pin(async move {
            let (id, user, event) = (&id, &user, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                transaction.batch_execute(LOCK_USERS).await?;
                update_user(&transaction, id, user).await?;
                insert_audit(&transaction, event).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn delete_user(
        &self,
        id: &str,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<Vec<CardId>, StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            let (id, event) = (&id, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let revoked = delete_user(&transaction, id).await?;
                let selector = super::SessionSelector::User(id.clone());
                end_sessions_now(&transaction, &selector, SessionEndReason::UserDeleted).await?;
                insert_audit(&transaction, event).await?;
                transaction.commit().await?;
                Ok(revoked)
            })
            .await
        })
    }

    fn user_conflicts(&self) -> BoxFuture<'_, Result<Vec<UserConflict>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            // Groups ordered by attribute, then by value as SQLite orders them (bytes of the
            // ASCII-folded value), ids by their bytes.
            let statement = client
                .prepare_cached(concat!(
                    "SELECT 0 AS attribute, ",
                    ascii_fold!("mail"),
                    " COLLATE \"C\" AS value, array_agg(id ORDER BY id COLLATE \"C\") AS ids
                     FROM users WHERE mail IS NOT NULL GROUP BY 2 HAVING count(*) > 1
                     UNION ALL
                     SELECT 1, ",
                    ascii_fold!("upn"),
                    " COLLATE \"C\", array_agg(id ORDER BY id COLLATE \"C\")
                     FROM users WHERE upn IS NOT NULL GROUP BY 2 HAVING count(*) > 1
                     UNION ALL
                     SELECT 2, employee_id COLLATE \"C\", array_agg(id ORDER BY id COLLATE \"C\")
                     FROM users WHERE employee_id IS NOT NULL GROUP BY 2 HAVING count(*) > 1
                     ORDER BY attribute, value"
                ))
                .await?;
            const ATTRIBUTES: [UserAttribute; 3] = [
                UserAttribute::Mail,
                UserAttribute::Upn,
                UserAttribute::EmployeeId,
            ];
            client
                .query(&statement, &[])
                .await?
                .iter()
                .map(|row| {
                    let attribute: i32 = row.try_get("attribute")?;
                    Ok(UserConflict {
                        attribute: usize::try_from(attribute)
                            .ok()
                            .and_then(|index| ATTRIBUTES.get(index).copied())
                            .ok_or_else(|| column_error("attribute", attribute))?,
                        user_ids: row.try_get("ids")?,
                    })
                })
                .collect()
        })
    }

    fn begin_sign_in(
        &self,
        lookup: &SignInLookup,
    ) -> BoxFuture<'_, Result<SignInRecords, StoreError>> {
        let lookup = lookup.clone();
        Box::pin(async move {
            let client = self.client().await?;
            // The challenge's use commits on its own, atomically; the reads are sent right
            // behind it on the same connection (pipelined: one round trip for all), each
            // seeing the database as committed when it runs.
            let (challenge, card, revocation, renews, users) = tokio::try_join!(
                use_challenge(&client, &lookup.nonce, &lookup.device, lookup.now),
                get_card(&client, &lookup.card),
                revocation(&client, &lookup.card),
                renewed_card(&client, &lookup.card),
                find_users(&client, lookup.user_attribute, &lookup.user_values),
            )?;
            let has_card = card.is_some();
            Ok(SignInRecords {
                challenge,
                card,
                revocation: revocation.filter(|_| !has_card),
                renews: renews.filter(|_| !has_card),
                users,
            })
        })
    }

    fn finish_sign_in(
        &self,
        facts: &CertificateFacts,
        user_id: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
        session: &super::NewSession,
    ) -> BoxFuture<'_, Result<Card, StoreError>> {
        let facts = facts.clone();
        let user_id = user_id.to_owned();
        let session = session.clone();
        Box::pin(async move {
            let (facts, user_id, event, session) = (&facts, &user_id, &event, &session);
            retried(|| async move {
                let mut client = self.client().await?;
                if let Some(card) =
                    finish_sign_in(&client, facts, user_id, now, event, session).await?
                {
                    return Ok(card);
                }
                // The first use of a renewal's new certificate (or a use racing it).
                let transaction = client.transaction().await?;
                let (_, card) = confirm_renewal(&transaction, facts, user_id, now, event).await?;
                sessions::insert_session(&transaction, session).await?;
                transaction.commit().await?;
                Ok(card)
            })
            .await
        })
    }

    fn add_enrollment_code(
        &self,
        code: &NewEnrollmentCode,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let code = code.clone();
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "INSERT INTO enrollment_codes (code_hash, user_id, created_at, expires_at)
                     VALUES ($1, $2, $3, $4)",
                )
                .await?;
            let result = client
                .execute(
                    &statement,
                    &[
                        &code.code_hash,
                        &code.user_id,
                        &utc(code.created_at)?,
                        &utc(code.expires_at)?,
                    ],
                )
                .await;
            match result {
                Err(error) if is_foreign_key_violation(&error) => Err(StoreError::NotFound {
                    what: format!("user {:?}", code.user_id),
                }),
                // The message leaves the hash out.
                Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
                    what: "the enrollment code exists already".to_owned(),
                }),
                other => other.map(drop).map_err(StoreError::from),
            }
        })
    }

    fn get_enrollment_code(
        &self,
        code_hash: &str,
    ) -> BoxFuture<'_, Result<Option<EnrollmentCodeRecord>, StoreError>> {
        let code_hash = code_hash.to_owned();
        Box::pin(async move {
            self.optional_row(
                "SELECT code_hash, user_id, created_at, expires_at, used_at, used_by
                     FROM enrollment_codes WHERE code_hash = $1",
                &[&code_hash],
                enrollment_code_from_row,
            )
            .await
        })
    }

    fn redeem_enrollment_code(
        &self,
        code_hash: &str,
        issued: &IssuedCertificate,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<EnrollmentCodeUse, StoreError>> {
        let code_hash = code_hash.to_owned();
        let issued = issued.clone();
        Box::pin(async move {
            let now = utc(now)?;
            let (code_hash, issued, event) = (&code_hash, &issued, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                // The single atomic step: only one caller can turn `used_at` from NULL
                // (PostgreSQL re-checks the condition on the locked row).
                let statement = transaction
                    .prepare_cached(
                        "UPDATE enrollment_codes SET used_at = $1, used_by = $2
                         WHERE code_hash = $3 AND user_id = $4 AND used_at IS NULL
                           AND expires_at > $1",
                    )
                    .await?;
                let changed = transaction
                    .execute(
                        &statement,
                        &[&now, &issued.facts.serial, code_hash, &issued.user_id],
                    )
                    .await?;
                if changed == 0 {
                    let statement = transaction
                        .prepare_cached("SELECT used_at FROM enrollment_codes WHERE code_hash = $1")
                        .await?;
                    let used_at: Option<Option<OffsetDateTime>> = transaction
                        .query_opt(&statement, &[code_hash])
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?;
                    transaction.rollback().await?;
                    return Ok(match used_at {
                        None => EnrollmentCodeUse::Unknown,
                        Some(Some(_)) => EnrollmentCodeUse::Used,
                        Some(None) => EnrollmentCodeUse::Expired,
                    });
                }
                register_card(&transaction, issued, now).await?;
                insert_issued(&transaction, issued, now).await?;
                insert_audit(&transaction, event).await?;
                transaction.commit().await?;
                Ok(EnrollmentCodeUse::Accepted)
            })
            .await
        })
    }

    fn begin_renewal(
        &self,
        old: &CertificateFacts,
        user_id: &str,
        issued: &IssuedCertificate,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (old, user_id, issued) = (old.clone(), user_id.to_owned(), issued.clone());
        Box::pin(async move {
            let now = utc(now)?;
            let (facts, user_id, issued, event) = (&old, &user_id, &issued, &event);
            retried(|| async move {
                let old = CardId::of(facts);
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                // The old certificate's first use, if it is a renewal's new one itself.
                complete_renewal(&transaction, &old, event).await?;
                // Locks the old card's row: renewals of one card take turns.
                let card = record_card(&transaction, facts, Some(user_id), now).await?;
                if card.state != CardState::Active {
                    return Err(StoreError::Conflict {
                        what: format!("card {old} is {}, not active", card.state),
                    });
                }
                // The old key signed this renewal, so no earlier pending one is on the card.
                revoke_pending_renewals(&transaction, &old, None, RevocationReason::Superseded, now)
                    .await?;
                insert_issued(&transaction, issued, now).await?;
                let new = CardId::of(&issued.facts);
                let statement = transaction
                    .prepare_cached(
                        "INSERT INTO pending_renewals
                             (issuer, serial, old_issuer, old_serial, user_id, certificate, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .await?;
                transaction
                    .execute(
                        &statement,
                        &[
                            &new.issuer,
                            &new.serial,
                            &old.issuer,
                            &old.serial,
                            &issued.user_id,
                            &issued.facts.der,
                            &now,
                        ],
                    )
                    .await?;
                insert_audit(&transaction, event).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn pending_renewals(&self, old: &CardId) -> BoxFuture<'_, Result<Vec<Vec<u8>>, StoreError>> {
        let old = old.clone();
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT certificate FROM pending_renewals WHERE old_issuer = $1 AND old_serial = $2
                     ORDER BY created_at DESC, issuer, serial",
                )
                .await?;
            client
                .query(&statement, &[&old.issuer, &old.serial])
                .await?
                .iter()
                .map(|row| Ok(row.try_get(0)?))
                .collect()
        })
    }

    fn confirm_renewal(
        &self,
        new: &CertificateFacts,
        user_id: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (new, user_id) = (new.clone(), user_id.to_owned());
        Box::pin(async move {
            let (facts, user_id, event) = (&new, &user_id, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let (completed, _) =
                    confirm_renewal(&transaction, facts, user_id, now, event).await?;
                transaction.commit().await?;
                Ok(completed)
            })
            .await
        })
    }

    fn revoked_issued_certificates(
        &self,
        issuer: &str,
    ) -> BoxFuture<'_, Result<Vec<RevokedCertificate>, StoreError>> {
        let issuer = issuer.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            // `''`: an issuer not recorded (SQLite before its version 4): of an issued
            // certificate, this server's CA; of a revocation, any issuer.
            let statement = client
                .prepare_cached(
                    "SELECT r.issuer, r.serial, r.revoked_at, r.reason FROM revoked_certificates r
                     JOIN issued_certificates i ON i.serial = r.serial
                         AND (i.issuer = r.issuer OR i.issuer = '' OR r.issuer = '')
                     WHERE i.issuer IN ($1, '') AND r.issuer IN ($1, '')
                     ORDER BY r.serial COLLATE \"C\", r.issuer COLLATE \"C\" DESC",
                )
                .await?;
            let mut revoked = client
                .query(&statement, &[&issuer])
                .await?
                .iter()
                .map(revoked_from_row)
                .collect::<Result<Vec<_>, StoreError>>()?;
            revoked.dedup_by(|later, earlier| later.serial == earlier.serial);
            Ok(revoked)
        })
    }

    fn delete_card(&self, id: &CardId) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.clone();
        Box::pin(async move {
            let id = &id;
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let statement = transaction
                    .prepare_cached(
                        "SELECT state FROM cards WHERE issuer = $1 AND serial = $2 FOR UPDATE",
                    )
                    .await?;
                let state: Option<String> = transaction
                    .query_opt(&statement, &[&id.issuer, &id.serial])
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
                match state.as_deref() {
                    None => {
                        return Err(StoreError::NotFound {
                            what: format!("card {id}"),
                        });
                    }
                    Some("revoked") => {}
                    Some(state) => {
                        return Err(StoreError::Conflict {
                            what: format!("card {id} is {state}; revoke it first"),
                        });
                    }
                }
                // Revoked before the list existed: it goes on it now.
                let now = utc(OffsetDateTime::now_utc())?;
                add_revocation(&transaction, id, RevocationReason::Unspecified, now).await?;
                transaction
                    .execute(
                        "DELETE FROM cards WHERE issuer = $1 AND serial = $2",
                        &[&id.issuer, &id.serial],
                    )
                    .await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn add_device(
        &self,
        device: &NewDevice,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let device = device.clone();
        Box::pin(async move {
            let (created_at, code_expires_at) =
                (utc(device.created_at)?, utc(device.code_expires_at)?);
            let (device, event) = (&device, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let statement = transaction
                    .prepare_cached(
                        "INSERT INTO devices (id, state, created_at, code_hash, code_expires_at)
                         VALUES ($1, 'enabled', $2, $3, $4)",
                    )
                    .await?;
                let result = transaction
                    .execute(
                        &statement,
                        &[&device.id, &created_at, &device.code_hash, &code_expires_at],
                    )
                    .await;
                match result {
                    // The message leaves the code hash out.
                    Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
                        what: format!("device {:?} exists already", device.id),
                    }),
                    other => other.map(drop).map_err(StoreError::from),
                }?;
                insert_audit(&transaction, event).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn get_device(&self, id: &str) -> BoxFuture<'_, Result<Option<Device>, StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            self.optional_row(select_devices!("WHERE id = $1"), &[&id], device_from_row)
                .await
        })
    }

    fn device_for_code(
        &self,
        code_hash: &str,
    ) -> BoxFuture<'_, Result<Option<Device>, StoreError>> {
        let code_hash = code_hash.to_owned();
        Box::pin(async move {
            self.optional_row(
                select_devices!("WHERE code_hash = $1"),
                &[&code_hash],
                device_from_row,
            )
            .await
        })
    }

    fn list_devices(&self) -> BoxFuture<'_, Result<Vec<Device>, StoreError>> {
        Box::pin(async move {
            self.rows(select_devices!("ORDER BY id"), &[], device_from_row)
                .await
        })
    }

    fn set_device_state(
        &self,
        id: &str,
        state: DeviceState,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            let (id, event) = (&id, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let statement = transaction
                    .prepare_cached("UPDATE devices SET state = $1 WHERE id = $2")
                    .await?;
                let changed = transaction
                    .execute(&statement, &[&state.as_str(), id])
                    .await?;
                if changed == 0 {
                    return Err(StoreError::NotFound {
                        what: format!("device {id:?}"),
                    });
                }
                if state == DeviceState::Disabled {
                    delete_unused_challenges(&transaction, id).await?;
                }
                insert_audit(&transaction, event).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn remove_device(
        &self,
        id: &str,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            let (id, event) = (&id, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let statement = transaction
                    .prepare_cached("DELETE FROM devices WHERE id = $1")
                    .await?;
                if transaction.execute(&statement, &[id]).await? == 0 {
                    return Err(StoreError::NotFound {
                        what: format!("device {id:?}"),
                    });
                }
                delete_unused_challenges(&transaction, id).await?;
                insert_audit(&transaction, event).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn redeem_device_code(
        &self,
        code_hash: &str,
        credential: &DeviceCredentialRecord,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<DeviceCodeUse, StoreError>> {
        let code_hash = code_hash.to_owned();
        let credential = credential.clone();
        Box::pin(async move {
            let (now, not_after) = (utc(now)?, utc(credential.not_after)?);
            let (code_hash, credential, event) = (&code_hash, &credential, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                // The single atomic step: only one caller can turn `code_used_at` from NULL.
                let statement = transaction
                    .prepare_cached(
                        "UPDATE devices SET code_used_at = $1, certificate = $2,
                             certificate_serial = $3, certificate_fingerprint = $4, not_after = $5
                         WHERE code_hash = $6 AND code_used_at IS NULL AND code_expires_at > $1
                         RETURNING id",
                    )
                    .await?;
                let device: Option<String> = transaction
                    .query_opt(
                        &statement,
                        &[
                            &now,
                            &credential.certificate,
                            &credential.serial,
                            &credential.fingerprint,
                            &not_after,
                            code_hash,
                        ],
                    )
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
                if let Some(device) = device {
                    insert_audit(
                        &transaction,
                        &NewAuditEvent {
                            device: Some(device.clone()),
                            ..event.clone()
                        },
                    )
                    .await?;
                    transaction.commit().await?;
                    return Ok(DeviceCodeUse::Accepted { device });
                }
                let statement = transaction
                    .prepare_cached("SELECT code_used_at FROM devices WHERE code_hash = $1")
                    .await?;
                let used_at: Option<Option<OffsetDateTime>> = transaction
                    .query_opt(&statement, &[code_hash])
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
                transaction.rollback().await?;
                Ok(match used_at {
                    None => DeviceCodeUse::Unknown,
                    Some(Some(_)) => DeviceCodeUse::Used,
                    Some(None) => DeviceCodeUse::Expired,
                })
            })
            .await
        })
    }

    fn add_admin_credential(
        &self,
        name: &str,
        token_hash: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (name, token_hash) = (name.to_owned(), token_hash.to_owned());
        Box::pin(async move {
            let now = utc(now)?;
            let (name, token_hash, event) = (&name, &token_hash, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let statement = transaction
                    .prepare_cached(
                        "INSERT INTO admin_credentials (name, token_hash, created_at)
                         VALUES ($1, $2, $3)",
                    )
                    .await?;
                let result = transaction
                    .execute(&statement, &[name, token_hash, &now])
                    .await;
                match result {
                    Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
                        what: format!("an admin credential named {name:?} exists already"),
                    }),
                    other => other.map(drop).map_err(StoreError::from),
                }?;
                insert_audit(&transaction, event).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn admin_credentials(&self) -> BoxFuture<'_, Result<Vec<AdminCredential>, StoreError>> {
        Box::pin(async move {
            self.rows(
                "SELECT name, token_hash, created_at, revoked_at FROM admin_credentials
                     ORDER BY name COLLATE \"C\"",
                &[],
                admin_credential_from_row,
            )
            .await
        })
    }

    fn find_admin_credential(
        &self,
        token_hash: &str,
    ) -> BoxFuture<'_, Result<Option<AdminCredential>, StoreError>> {
        let token_hash = token_hash.to_owned();
        Box::pin(async move {
            self.optional_row(
                "SELECT name, token_hash, created_at, revoked_at FROM admin_credentials
                     WHERE token_hash = $1",
                &[&token_hash],
                admin_credential_from_row,
            )
            .await
        })
    }

    fn revoke_admin_credential(
        &self,
        name: &str,
        initial_hash: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (name, initial_hash) = (name.to_owned(), initial_hash.to_owned());
        Box::pin(async move {
            let now = utc(now)?;
            let (name, initial_hash, event) = (&name, &initial_hash, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                // Revocations take turns, so two nodes cannot each revoke one of the last two
                // active credentials.
                transaction
                    .batch_execute("LOCK TABLE admin_credentials IN SHARE ROW EXCLUSIVE MODE")
                    .await?;
                if name == INITIAL_ADMIN_CREDENTIAL {
                    // The token file's credential has a record once it is revoked.
                    transaction
                        .execute(
                            "INSERT INTO admin_credentials (name, token_hash, created_at)
                             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                            &[name, initial_hash, &now],
                        )
                        .await?;
                }
                let revoked: Option<Option<OffsetDateTime>> = transaction
                    .query_opt(
                        "SELECT revoked_at FROM admin_credentials WHERE name = $1",
                        &[name],
                    )
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
                match revoked {
                    None => {
                        return Err(StoreError::NotFound {
                            what: format!("admin credential {name:?}"),
                        });
                    }
                    Some(Some(_)) => {
                        return Err(StoreError::Conflict {
                            what: format!("admin credential {name:?} is revoked already"),
                        });
                    }
                    Some(None) => {}
                }
                transaction
                    .execute(
                        "UPDATE admin_credentials SET revoked_at = $1 WHERE name = $2",
                        &[&now, name],
                    )
                    .await?;
                // The token file's credential is active until it has a (revoked) record.
                let active: i64 = transaction
                    .query_one(
                        "SELECT (SELECT count(*) FROM admin_credentials
                                 WHERE revoked_at IS NULL AND name <> $1)
                              + (NOT EXISTS (SELECT 1 FROM admin_credentials WHERE name = $1))::int",
                        &[&INITIAL_ADMIN_CREDENTIAL],
                    )
                    .await?
                    .try_get(0)?;
                if active == 0 {
                    return Err(StoreError::Conflict {
                        what: format!(
                            "admin credential {name:?} is the last active one; add another first"
                        ),
                    });
                }
                insert_audit(&transaction, event).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn stats(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<StoreStats, StoreError>> {
        Box::pin(async move {
            let (hour_ago, now, horizon) = (
                utc(now - time::Duration::hours(1))?,
                utc(now)?,
                utc(now + time::Duration::days(super::EXPIRING_DAYS))?,
            );
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT
                         (SELECT count(*) FROM users WHERE state = 'active'),
                         (SELECT count(*) FROM users WHERE state = 'locked'),
                         (SELECT count(*) FROM cards WHERE state = 'active'),
                         (SELECT count(*) FROM cards WHERE state = 'locked'),
                         (SELECT count(*) FROM cards WHERE state = 'revoked'),
                         (SELECT count(*) FROM audit
                          WHERE kind = 'assertion' AND outcome = 'ok' AND time >= $1),
                         (SELECT count(*) FROM issued_certificates i
                          WHERE i.not_after > $2 AND i.not_after <= $3
                            AND NOT EXISTS (SELECT 1 FROM cards c WHERE c.issuer = i.issuer
                                            AND c.serial = i.serial AND c.state = 'revoked')
                            AND NOT EXISTS (SELECT 1 FROM revoked_certificates r
                                            WHERE r.serial = i.serial
                                              AND r.issuer IN (i.issuer, '')))",
                )
                .await?;
            let row = client
                .query_one(&statement, &[&hour_ago, &now, &horizon])
                .await?;
            Ok(StoreStats {
                users: vec![
                    (UserState::Active, count(&row, 0)?),
                    (UserState::Locked, count(&row, 1)?),
                ],
                cards: vec![
                    (CardState::Active, count(&row, 2)?),
                    (CardState::Locked, count(&row, 3)?),
                    (CardState::Revoked, count(&row, 4)?),
                ],
                sign_ins_last_hour: count(&row, 5)?,
                certificates_expiring: count(&row, 6)?,
            })
        })
    }
    fn record_failures(
        &self,
        keys: &[String],
        now: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let keys = keys.to_vec();
        Box::pin(async move {
            shared::record_failures(&self.client().await?, &keys, now, forget_before).await
        })
    }

    fn failures(
        &self,
        keys: &[String],
    ) -> BoxFuture<'_, Result<Vec<super::FailureCount>, StoreError>> {
        let keys = keys.to_vec();
        Box::pin(async move { shared::failures(&self.client().await?, &keys).await })
    }

    fn clear_failures(&self, keys: &[String]) -> BoxFuture<'_, Result<(), StoreError>> {
        let keys = keys.to_vec();
        Box::pin(async move { shared::clear_failures(&self.client().await?, &keys).await })
    }

    fn spend_budget(
        &self,
        kind: &str,
        keys: &[String],
        now: OffsetDateTime,
        step: std::time::Duration,
        tolerance: std::time::Duration,
    ) -> BoxFuture<'_, Result<super::BudgetUse, StoreError>> {
        let (kind, keys) = (kind.to_owned(), keys.to_vec());
        Box::pin(async move {
            let mut client = self.client().await?;
            shared::spend_budget(&mut client, &kind, &keys, now, step, tolerance).await
        })
    }

    fn use_proof_id(
        &self,
        id: &str,
        now: OffsetDateTime,
        remember_until: OffsetDateTime,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            shared::use_proof_id(&self.client().await?, &id, now, remember_until).await
        })
    }

    fn purge_flow_control(
        &self,
        now: OffsetDateTime,
        failures_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            shared::purge_flow_control(&self.client().await?, now, failures_before).await
        })
    }

    fn token_keys(&self) -> BoxFuture<'_, Result<Option<super::StoredTokenKeys>, StoreError>> {
        Box::pin(async move { shared::token_keys(&self.client().await?).await })
    }

    fn replace_token_keys(
        &self,
        keys: &str,
        replaces: Option<i64>,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<i64, StoreError>> {
        let keys = zeroize::Zeroizing::new(keys.to_owned());
        Box::pin(async move {
            shared::replace_token_keys(&self.client().await?, &keys, replaces, now).await
        })
    }

    fn get_session(&self, id: &str) -> BoxFuture<'_, Result<Option<super::Session>, StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            self.optional_row(sessions::SELECT_SESSION, &[&id], sessions::session_from_row)
                .await
        })
    }

    fn list_sessions(
        &self,
        query: &super::SessionQuery,
    ) -> BoxFuture<'_, Result<Vec<super::Session>, StoreError>> {
        let query = query.clone();
        Box::pin(async move {
            let limit = i64::try_from(query.effective_limit()).unwrap_or(i64::MAX);
            self.rows(
                sessions::LIST_SESSIONS,
                &[
                    &query.user_id,
                    &query.device,
                    &query.card_serial,
                    &query.active_only,
                    &limit,
                ],
                sessions::session_from_row,
            )
            .await
        })
    }

    fn end_sessions(
        &self,
        selector: &super::SessionSelector,
        reason: super::SessionEndReason,
        now: OffsetDateTime,
        event: Option<NewAuditEvent>,
    ) -> BoxFuture<'_, Result<Vec<super::Session>, StoreError>> {
        let selector = selector.clone();
        Box::pin(async move {
            let (selector, event) = (&selector, &event);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let ended = sessions::end_sessions(&transaction, selector, reason, now).await?;
                if let Some(event) = event {
                    insert_audit(&transaction, event).await?;
                }
                transaction.commit().await?;
                Ok(ended)
            })
            .await
        })
    }

    fn use_refresh_token(
        &self,
        token_hash: &str,
        client_id: &str,
        replacement_hash: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<super::RefreshUse, StoreError>> {
        let (token_hash, client_id, replacement_hash) = (
            token_hash.to_owned(),
            client_id.to_owned(),
            replacement_hash.to_owned(),
        );
        Box::pin(async move {
            let (token_hash, client_id, replacement_hash) =
                (&token_hash, &client_id, &replacement_hash);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let used = sessions::use_refresh_token(
                    &transaction,
                    token_hash,
                    client_id,
                    replacement_hash,
                    now,
                )
                .await?;
                transaction.commit().await?;
                Ok(used)
            })
            .await
        })
    }

    fn add_refresh_token(
        &self,
        session_id: &str,
        client_id: &str,
        token_hash: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (session_id, client_id, token_hash, scope) = (
            session_id.to_owned(),
            client_id.to_owned(),
            token_hash.to_owned(),
            scope.to_owned(),
        );
        Box::pin(async move {
            let (session_id, client_id, token_hash, scope) =
                (&session_id, &client_id, &token_hash, &scope);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                sessions::add_refresh_token(
                    &transaction,
                    session_id,
                    client_id,
                    token_hash,
                    scope,
                    now,
                )
                .await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn revoke_refresh_token(
        &self,
        token_hash: &str,
        client_id: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (token_hash, client_id) = (token_hash.to_owned(), client_id.to_owned());
        Box::pin(async move {
            sessions::revoke_refresh_token(&self.client().await?, &token_hash, &client_id, now)
                .await
        })
    }

    fn record_session_client(
        &self,
        session_id: &str,
        client_id: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (session_id, client_id) = (session_id.to_owned(), client_id.to_owned());
        Box::pin(async move {
            let (session_id, client_id) = (&session_id, &client_id);
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                sessions::record_session_client(&transaction, session_id, client_id, now).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn add_client(&self, client: &super::OidcClient) -> BoxFuture<'_, Result<(), StoreError>> {
        let oidc_client = client.clone();
        Box::pin(async move { sessions::add_client(&self.client().await?, &oidc_client).await })
    }

    fn get_client(&self, id: &str) -> BoxFuture<'_, Result<Option<super::OidcClient>, StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            self.optional_row(sessions::SELECT_CLIENT, &[&id], sessions::client_from_row)
                .await
        })
    }

    fn list_clients(&self) -> BoxFuture<'_, Result<Vec<super::OidcClient>, StoreError>> {
        Box::pin(async move {
            self.rows(sessions::SELECT_CLIENTS, &[], sessions::client_from_row)
                .await
        })
    }

    fn remove_client(&self, id: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            let id = &id;
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                sessions::remove_client(&transaction, id, OffsetDateTime::now_utc()).await?;
                transaction.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn add_authorization_code(
        &self,
        code: &super::NewAuthorizationCode,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let code = code.clone();
        Box::pin(
            async move { sessions::add_authorization_code(&self.client().await?, &code).await },
        )
    }

    fn redeem_authorization_code(
        &self,
        code_hash: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<super::CodeRedemption, StoreError>> {
        let code_hash = code_hash.to_owned();
        Box::pin(async move {
            sessions::redeem_authorization_code(&self.client().await?, &code_hash, now).await
        })
    }

    fn revoke_access_token(
        &self,
        jti: &str,
        expires_at: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let jti = jti.to_owned();
        Box::pin(async move {
            sessions::revoke_access_token(&self.client().await?, &jti, expires_at).await
        })
    }

    fn is_access_token_revoked(&self, jti: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let jti = jti.to_owned();
        Box::pin(async move {
            let found = self
                .optional_row(sessions::SELECT_REVOKED_JTI, &[&jti], |_| Ok(()))
                .await?;
            Ok(found.is_some())
        })
    }

    fn claim_logout_deliveries(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<super::LogoutDelivery>, StoreError>> {
        Box::pin(async move {
            sessions::claim_logout_deliveries(&self.client().await?, now, lease, limit).await
        })
    }

    fn finish_logout_delivery(
        &self,
        id: i64,
        outcome: &super::DeliveryOutcome,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let outcome = outcome.clone();
        Box::pin(async move {
            sessions::finish_logout_delivery(&self.client().await?, id, &outcome, now).await
        })
    }

    fn purge_sessions(
        &self,
        ended_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            retried(|| async move {
                let mut client = self.client().await?;
                let transaction = client.transaction().await?;
                let purged = sessions::purge_sessions(&transaction, ended_before).await?;
                transaction.commit().await?;
                Ok(purged)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    mod conformance {
        //! The shared suite against a real PostgreSQL: each test gets a scratch schema of
        //! the test cluster's database (`testkit::postgres::test_database`: TLS with
        //! verify-full and the password file), dropped afterwards.

        use std::sync::Arc;

        use std::sync::atomic::{AtomicUsize, Ordering};

        use super::super::PostgresStore;
        use crate::mapping::UserAttribute;
        use crate::store::postgres_tls::PostgresTls;
        use crate::store::url::{StorePassword, StoreUrl};
        use crate::store::{Store, StoreError, User, UserState};

        type BoxError = Box<dyn std::error::Error + Send + Sync>;

        /// A scratch schema, dropped (with everything in it) when the test ends.
        struct Scratch {
            config: tokio_postgres::Config,
            tls: PostgresTls,
            schema: String,
        }

        impl Drop for Scratch {
            fn drop(&mut self) {
                let (config, tls, schema) =
                    (self.config.clone(), self.tls.clone(), self.schema.clone());
                // Drop runs inside the test's runtime, which must go on: a connection of
                // the test may still have to send the rollback of a transaction that was
                // dropped, and DROP SCHEMA waits for its locks. So a thread of its own,
                // with a runtime of its own, drops the schema, and no one waits for it
                // (a schema left by the last test of a run goes with the throw-away cluster).
                std::thread::spawn(move || -> Result<(), BoxError> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async {
                        let (client, connection) = config.connect(tls).await?;
                        tokio::spawn(connection);
                        client
                            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                            .await?;
                        Ok(())
                    })
                });
            }
        }

        /// The test cluster's settings (over TCP with TLS, verify-full, and the password
        /// of its file). Missing, every test here fails saying how to start the cluster:
        /// the suite is never skipped without a word.
        fn test_config() -> Result<(tokio_postgres::Config, PostgresTls), BoxError> {
            let (url, password) = pivtap_testkit::postgres::test_database();
            let StoreUrl::Postgres(url) = StoreUrl::parse(&url)? else {
                return Err(format!("{url} is not a PostgreSQL URL").into());
            };
            let password = StorePassword::new(password.expose().to_owned());
            let tls = PostgresTls::new(url.ssl_mode, url.ssl_root_cert.as_deref())?;
            Ok((url.driver_config(Some(&password)), tls))
        }

        /// A new, empty scratch schema and the settings that connect into it.
        async fn scratch() -> Result<(Scratch, tokio_postgres::Config, PostgresTls), BoxError> {
            let (config, tls) = test_config()?;
            let schema = format!("pivtap_test_{:016x}", rand::random::<u64>());
            let (client, connection) = config.connect(tls.clone()).await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await?;
            let mut scoped = config.clone();
            scoped.options(format!("-c search_path={schema}"));
            let scratch = Scratch {
                config,
                tls: tls.clone(),
                schema,
            };
            Ok((scratch, scoped, tls))
        }

        async fn fresh() -> Result<(Scratch, Arc<dyn Store>), BoxError> {
            let (scratch, config, tls) = scratch().await?;
            let store = PostgresStore::connect_with(config, tls).await?;
            Ok((scratch, Arc::new(store)))
        }

        async fn nodes() -> Result<(Scratch, [Arc<dyn Store>; 2]), BoxError> {
            let (scratch, config, tls) = scratch().await?;
            let first = PostgresStore::connect_with(config.clone(), tls.clone()).await?;
            let second = PostgresStore::connect_with(config, tls).await?;
            Ok((scratch, [Arc::new(first), Arc::new(second)]))
        }

        crate::store_conformance_suite! { fresh: fresh(), nodes: nodes() }

        /// A write PostgreSQL aborts as a serialization failure or a deadlock runs again,
        /// a few times at most; any other failure is answered at once.
        #[tokio::test]
        async fn writes_aborted_as_serialization_failures_or_deadlocks_run_again()
        -> Result<(), BoxError> {
            let (_scratch, store) = fresh_store().await?;
            // Fails with `code` (raised by PostgreSQL itself) on its first `failures` calls.
            let attempt = |code: &'static str, failures: usize, calls: &AtomicUsize| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                let store = store.clone();
                async move {
                    if call < failures {
                        let raise = format!(
                            "DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{code}'; END $$"
                        );
                        store.client().await?.batch_execute(&raise).await?;
                    }
                    Ok::<usize, crate::store::StoreError>(call)
                }
            };
            for code in ["40001", "40P01"] {
                let calls = AtomicUsize::new(0);
                assert_eq!(super::super::retried(|| attempt(code, 2, &calls)).await?, 2);
                let calls = AtomicUsize::new(0);
                let gave_up = super::super::retried(|| attempt(code, usize::MAX, &calls)).await;
                assert!(gave_up.is_err());
                let attempts = usize::try_from(super::super::WRITE_ATTEMPTS)?;
                assert_eq!(calls.load(Ordering::SeqCst), attempts);
            }
            let calls = AtomicUsize::new(0);
            let refused = super::super::retried(|| attempt("23505", 1, &calls)).await;
            assert!(refused.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1, "not a failure to retry");
            Ok(())
        }

        async fn fresh_store() -> Result<(Scratch, PostgresStore), BoxError> {
            let (scratch, config, tls) = scratch().await?;
            Ok((scratch, PostgresStore::connect_with(config, tls).await?))
        }

        /// Users sharing a mapped attribute from before the checks (written past the
        /// store) are listed in groups as SQLite's store lists them, and no more are added.
        #[tokio::test]
        async fn users_sharing_a_mapped_attribute_are_listed_and_no_more_are_added()
        -> Result<(), BoxError> {
            let (_scratch, store) = fresh_store().await?;
            store
                .client()
                .await?
                .batch_execute(
                    "INSERT INTO users (id, display_name, mail, upn, employee_id, state, created_at)
                     VALUES
                         ('mallory', 'Mallory', 'ALICE@example.com', NULL, 'E-2', 'active', now()),
                         ('alice', 'Alice', 'alice@example.com', NULL, 'E-1', 'active', now()),
                         ('bob', 'Bob', 'bob@example.com', 'bob@corp', 'E-1', 'active', now()),
                         ('carol', 'Carol', 'carol@example.com', 'BOB@CORP', 'e-1', 'active', now()),
                         ('Zed', 'Zed', 'Zed@example.com', NULL, NULL, 'active', now()),
                         ('zed', 'zed', 'zED@example.com', NULL, NULL, 'active', now())",
                )
                .await?;
            let listed: Vec<(UserAttribute, Vec<String>)> = store
                .user_conflicts()
                .await?
                .into_iter()
                .map(|conflict| (conflict.attribute, conflict.user_ids))
                .collect();
            let ids = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>();
            assert_eq!(
                listed,
                [
                    (UserAttribute::Mail, ids(&["alice", "mallory"])),
                    (UserAttribute::Mail, ids(&["Zed", "zed"])),
                    (UserAttribute::Upn, ids(&["bob", "carol"])),
                    (UserAttribute::EmployeeId, ids(&["alice", "bob"])),
                ]
            );
            let eve = User {
                id: "eve".to_owned(),
                display_name: "Eve".to_owned(),
                mail: Some("Alice@Example.COM".to_owned()),
                upn: None,
                employee_id: None,
                state: UserState::Active,
            };
            assert!(matches!(
                store.add_user(&eve).await,
                Err(StoreError::AttributeTaken { attribute: UserAttribute::Mail, ref holder })
                    if holder == "alice"
            ));
            assert_eq!(store.user_conflicts().await?.len(), 4);
            Ok(())
        }
    }
}
