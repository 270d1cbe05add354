//! The embedded [`Store`]: SQLite (rusqlite, one writer thread with group commit), with versioned migrations run on open.
//!
//! Times are stored as RFC 3339 UTC text with exactly six fraction digits
//! (`2025-01-02T03:04:05.000006Z`), so comparing the text orders the times.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params, params_from_iter};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::database::{Database, DatabaseError};
use super::sessions::{
    CodeRedemption, DeliveryOutcome, LogoutDelivery, NewAuthorizationCode, NewSession, OidcClient,
    RefreshUse, Session, SessionEndReason, SessionQuery, SessionSelector,
};
use super::{
    AdminCredential, AuditEvent, AuditKindFilter, AuditQuery, BoxFuture, BudgetUse, Card, CardId,
    CardState, ChallengeUse, Device, DeviceCodeUse, DeviceCredentialRecord, DeviceState,
    EnrollmentCodeRecord, EnrollmentCodeUse, FailureCount, INITIAL_ADMIN_CREDENTIAL,
    IssuedCertificate, NewAuditEvent, NewDevice, NewEnrollmentCode, RevocationReason,
    RevokedCertificate, SignInLookup, SignInRecords, Store, StoreError, StoreStats,
    StoredTokenKeys, User, UserConflict, UserState, UserWritten,
};
use crate::mapping::UserAttribute;
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::nonce::Nonce;

mod sessions;
pub(super) use sessions::PURGE_SESSIONS;

/// Version 1: users, cards, challenges and the audit log.
const MIGRATION_1: &str = "
CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    display_name TEXT NOT NULL,
    mail TEXT COLLATE NOCASE,
    upn TEXT COLLATE NOCASE,
    employee_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('active', 'locked')),
    created_at TEXT NOT NULL
) STRICT;
CREATE INDEX users_mail ON users (mail);
CREATE INDEX users_upn ON users (upn);
CREATE INDEX users_employee_id ON users (employee_id);

CREATE TABLE cards (
    serial TEXT PRIMARY KEY NOT NULL,
    fingerprint TEXT NOT NULL,
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT REFERENCES users (id),
    state TEXT NOT NULL CHECK (state IN ('active', 'locked', 'revoked')),
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL
) STRICT;
CREATE INDEX cards_user_id ON cards (user_id);

CREATE TABLE challenges (
    nonce TEXT PRIMARY KEY NOT NULL,
    device TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
) STRICT;
CREATE INDEX challenges_expires_at ON challenges (expires_at);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    device TEXT,
    card_serial TEXT,
    user_id TEXT,
    detail TEXT
) STRICT;
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_user_id ON audit (user_id, time);
CREATE INDEX audit_card_serial ON audit (card_serial, time);
CREATE INDEX audit_device ON audit (device, time);
CREATE INDEX audit_outcome ON audit (outcome, time);
";

/// Version 2: enrollment codes (hashes only), the certificates this server
/// issued, and the revocation list, which outlives card records. Cards revoked
/// before this version go on the list.
const MIGRATION_2: &str = "
CREATE TABLE enrollment_codes (
    code_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    used_by TEXT
) STRICT;
CREATE INDEX enrollment_codes_user_id ON enrollment_codes (user_id);

CREATE TABLE issued_certificates (
    serial TEXT PRIMARY KEY NOT NULL,
    fingerprint TEXT NOT NULL,
    user_id TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    not_after TEXT NOT NULL,
    card_serial_number INTEGER,
    chuid_guid TEXT
) STRICT;
CREATE INDEX issued_certificates_user_id ON issued_certificates (user_id);

CREATE TABLE revoked_certificates (
    serial TEXT PRIMARY KEY NOT NULL,
    revoked_at TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('unspecified', 'superseded'))
) STRICT;

INSERT INTO revoked_certificates (serial, revoked_at, reason)
    SELECT serial, last_seen, 'unspecified' FROM cards WHERE state = 'revoked';
";

/// Version 3: the audit log's user and card indexes leave out the rows without a user or a
/// card (every challenge's event), so those events write two b-trees fewer. A query for a
/// user or card (`= ?`, which implies `IS NOT NULL`) still uses them.
const MIGRATION_3: &str = "
DROP INDEX audit_user_id;
CREATE INDEX audit_user_id ON audit (user_id, time) WHERE user_id IS NOT NULL;
DROP INDEX audit_card_serial;
CREATE INDEX audit_card_serial ON audit (card_serial, time) WHERE card_serial IS NOT NULL;
";

/// Version 4: a card is its certificate's issuer and serial number, not the serial alone
/// (two CAs may both issue serial 1001), in the cards, the issued certificates and the
/// revocation list; and renewals are pending until the new certificate is in use.
///
/// Existing rows keep their data. A card row has its issuer already. An issued
/// certificate takes the issuer of its card row; without one (deleted), the issuer of
/// another issued certificate's card (all were issued by this server's CA); else `''`.
/// A revocation takes the issuer of its card row, else of its issued certificate; else
/// `''`, which counts for every issuer (fail closed: before this version the serial alone
/// was revoked).
const MIGRATION_4: &str = "
CREATE TABLE cards_v4 (
    issuer TEXT NOT NULL,
    serial TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT REFERENCES users (id),
    state TEXT NOT NULL CHECK (state IN ('active', 'locked', 'revoked')),
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    PRIMARY KEY (issuer, serial)
) STRICT;
INSERT INTO cards_v4 (issuer, serial, fingerprint, subject, user_id, state, first_seen, last_seen)
    SELECT issuer, serial, fingerprint, subject, user_id, state, first_seen, last_seen FROM cards;

CREATE TABLE issued_certificates_v4 (
    issuer TEXT NOT NULL,
    serial TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    user_id TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    not_after TEXT NOT NULL,
    card_serial_number INTEGER,
    chuid_guid TEXT,
    PRIMARY KEY (issuer, serial)
) STRICT;
INSERT INTO issued_certificates_v4
    (issuer, serial, fingerprint, user_id, issued_at, not_after, card_serial_number, chuid_guid)
    SELECT coalesce(
               (SELECT c.issuer FROM cards c WHERE c.serial = i.serial),
               (SELECT c.issuer FROM cards c JOIN issued_certificates j ON j.serial = c.serial
                ORDER BY j.issued_at DESC LIMIT 1),
               ''),
           serial, fingerprint, user_id, issued_at, not_after, card_serial_number, chuid_guid
    FROM issued_certificates i;

CREATE TABLE revoked_certificates_v4 (
    issuer TEXT NOT NULL,
    serial TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('unspecified', 'superseded')),
    PRIMARY KEY (issuer, serial)
) STRICT;
INSERT INTO revoked_certificates_v4 (issuer, serial, revoked_at, reason)
    SELECT coalesce(
               (SELECT c.issuer FROM cards c WHERE c.serial = r.serial),
               (SELECT i.issuer FROM issued_certificates_v4 i WHERE i.serial = r.serial),
               ''),
           serial, revoked_at, reason
    FROM revoked_certificates r;

DROP TABLE cards;
ALTER TABLE cards_v4 RENAME TO cards;
CREATE INDEX cards_user_id ON cards (user_id);
CREATE INDEX cards_serial ON cards (serial);
DROP TABLE issued_certificates;
ALTER TABLE issued_certificates_v4 RENAME TO issued_certificates;
CREATE INDEX issued_certificates_user_id ON issued_certificates (user_id);
CREATE INDEX issued_certificates_serial ON issued_certificates (serial);
DROP TABLE revoked_certificates;
ALTER TABLE revoked_certificates_v4 RENAME TO revoked_certificates;
CREATE INDEX revoked_certificates_serial ON revoked_certificates (serial);

CREATE TABLE pending_renewals (
    issuer TEXT NOT NULL,
    serial TEXT NOT NULL,
    old_issuer TEXT NOT NULL,
    old_serial TEXT NOT NULL,
    user_id TEXT NOT NULL,
    certificate BLOB NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (issuer, serial)
) STRICT;
CREATE INDEX pending_renewals_old ON pending_renewals (old_issuer, old_serial);
";

/// Version 5: the heartbeat record readiness writes (one row, rewritten).
const MIGRATION_5: &str = "
CREATE TABLE heartbeat (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    at TEXT NOT NULL
) STRICT;
";

/// Version 6: registered devices, each with its one-time enrollment code (hash only) and,
/// once enrolled, its credential (the certificate issued for the device's own key).
const MIGRATION_6: &str = "
CREATE TABLE devices (
    id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('enabled', 'disabled')),
    created_at TEXT NOT NULL,
    code_hash TEXT NOT NULL UNIQUE,
    code_expires_at TEXT NOT NULL,
    code_used_at TEXT,
    certificate BLOB,
    certificate_serial TEXT,
    certificate_fingerprint TEXT,
    not_after TEXT
) STRICT;
CREATE INDEX challenges_device ON challenges (device) WHERE used_at IS NULL;
";

/// Version 7: the revocation list takes every RFC 5280 reason an administrator may give
/// (its rows are kept); the audit log is indexed by kind, for the kind filter.
const MIGRATION_7: &str = "
CREATE TABLE revoked_certificates_v7 (
    issuer TEXT NOT NULL,
    serial TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('unspecified', 'keyCompromise', 'affiliationChanged',
        'superseded', 'cessationOfOperation', 'privilegeWithdrawn')),
    PRIMARY KEY (issuer, serial)
) STRICT;
INSERT INTO revoked_certificates_v7 (issuer, serial, revoked_at, reason)
    SELECT issuer, serial, revoked_at, reason FROM revoked_certificates;
DROP TABLE revoked_certificates;
ALTER TABLE revoked_certificates_v7 RENAME TO revoked_certificates;
CREATE INDEX revoked_certificates_serial ON revoked_certificates (serial);
CREATE INDEX audit_kind ON audit (kind, time);
";

/// Version 8: named admin credentials (token hashes only); revoked ones stay, so a name
/// or a token is never used twice.
const MIGRATION_8: &str = "
CREATE TABLE admin_credentials (
    name TEXT PRIMARY KEY NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
) STRICT;
";

/// Version 9: what decides a sign-in and lived in one node's memory before: failure
/// counters, request budgets (GCRA horizons in microseconds since 1970), device proof ids
/// seen, and the token-signing key set.
const MIGRATION_9: &str = "
CREATE TABLE flow_failures (
    key TEXT PRIMARY KEY NOT NULL,
    count INTEGER NOT NULL,
    last_at TEXT NOT NULL
) STRICT;
CREATE INDEX flow_failures_last_at ON flow_failures (last_at);
CREATE TABLE flow_budgets (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    horizon INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) STRICT;
CREATE INDEX flow_budgets_horizon ON flow_budgets (horizon);
CREATE TABLE device_proofs (
    id TEXT PRIMARY KEY NOT NULL,
    expires_at TEXT NOT NULL
) STRICT;
CREATE INDEX device_proofs_expires_at ON device_proofs (expires_at);
CREATE TABLE token_keys (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version INTEGER NOT NULL,
    keys TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
";

/// Version 10: sessions (issue 15) and the OpenID Connect provider: refresh tokens (hashes
/// only; the current one of a session and client is neither replaced nor revoked), the
/// clients taking part in each session, registered clients, authorization codes (hashes
/// only), revoked access token ids, and back-channel logout deliveries.
const MIGRATION_10: &str = "
CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device TEXT NOT NULL,
    card_issuer TEXT NOT NULL,
    card_serial TEXT NOT NULL,
    amr TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    ended_at TEXT,
    ended_reason TEXT CHECK (ended_reason IN ('signed_out', 'admin', 'card_locked',
        'card_revoked', 'user_locked', 'user_deleted', 'max_age', 'refresh_reused')),
    CHECK ((ended_at IS NULL) = (ended_reason IS NULL))
) STRICT;
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_card_serial ON sessions (card_serial);
CREATE INDEX sessions_device ON sessions (device);
CREATE INDEX sessions_created_at ON sessions (created_at);
CREATE INDEX sessions_active ON sessions (expires_at) WHERE ended_at IS NULL;
CREATE INDEX sessions_ended_at ON sessions (ended_at) WHERE ended_at IS NOT NULL;
CREATE TABLE session_refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at TEXT NOT NULL,
    replaced_at TEXT,
    revoked_at TEXT
) STRICT;
CREATE INDEX session_refresh_tokens_session ON session_refresh_tokens (session_id);
CREATE INDEX session_refresh_tokens_client ON session_refresh_tokens (client_id);
CREATE TABLE session_clients (
    session_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    first_at TEXT NOT NULL,
    PRIMARY KEY (session_id, client_id)
) STRICT;
CREATE TABLE oidc_clients (
    id TEXT PRIMARY KEY NOT NULL,
    secret_hash TEXT,
    redirect_uris TEXT NOT NULL,
    backchannel_logout_uri TEXT,
    created_at TEXT NOT NULL
) STRICT;
CREATE TABLE authorization_codes (
    code_hash TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    scope TEXT NOT NULL,
    nonce TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
) STRICT;
CREATE INDEX authorization_codes_session ON authorization_codes (session_id);
CREATE INDEX authorization_codes_expires_at ON authorization_codes (expires_at);
CREATE TABLE revoked_access_tokens (
    jti TEXT PRIMARY KEY NOT NULL,
    expires_at TEXT NOT NULL
) STRICT;
CREATE INDEX revoked_access_tokens_expires_at ON revoked_access_tokens (expires_at);
CREATE TABLE logout_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    uri TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    delivered_at TEXT,
    given_up_at TEXT,
    last_error TEXT
) STRICT;
CREATE INDEX logout_deliveries_due ON logout_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
";

/// Every migration, by version, oldest first. Never edit one that shipped: add the next.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, MIGRATION_1),
    (2, MIGRATION_2),
    (3, MIGRATION_3),
    (4, MIGRATION_4),
    (5, MIGRATION_5),
    (6, MIGRATION_6),
    (7, MIGRATION_7),
    (8, MIGRATION_8),
    (9, MIGRATION_9),
    (10, MIGRATION_10),
];

/// The newest migration this program knows.
pub(super) fn newest_known_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
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

/// `SELECT` of every [`User`] column, followed by the rest of the statement.
macro_rules! select_users {
    ($rest:literal) => {
        concat!(
            "SELECT id, display_name, mail, upn, employee_id, state FROM users ",
            $rest
        )
    };
}

/// `SELECT` of every [`Card`] column, followed by the rest of the statement.
macro_rules! select_cards {
    ($rest:literal) => {
        concat!(
            "SELECT serial, fingerprint, issuer, subject, user_id, state, first_seen, last_seen FROM cards ",
            $rest
        )
    };
}

/// The SQLite store. Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct SqliteStore {
    pub(super) database: Arc<Database>,
    /// The database file (`None` in memory).
    path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` in WAL mode and
    /// brings its schema up to date. Several stores, in one process or several,
    /// may open the same file.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let database = Database::open(path, migrate).await?;
        Ok(SqliteStore {
            database: Arc::new(database),
            path: Some(path.to_path_buf()),
        })
    }

    /// A fresh, private database in memory, for tests: it lives as long as the store.
    pub async fn in_memory() -> Result<Self, StoreError> {
        let database = Database::in_memory(migrate).await?;
        Ok(SqliteStore {
            database: Arc::new(database),
            path: None,
        })
    }

    /// Closes every connection once the writes already given are done; later calls fail
    /// with [`StoreError::Database`].
    pub async fn close(&self) {
        self.database.close().await;
    }
}

/// Applies the migrations this database lacks, each in its own write transaction,
/// so concurrent openers apply each one once.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY NOT NULL,
            applied_at TEXT NOT NULL
        ) STRICT",
    )?;
    let newest_known = newest_known_version();
    let newest_applied: Option<i64> =
        connection.query_row("SELECT max(version) FROM schema_migrations", [], |row| {
            row.get(0)
        })?;
    if let Some(newest_applied) = newest_applied.filter(|applied| *applied > newest_known) {
        return Err(StoreError::Conflict {
            what: format!(
                "the database has schema version {newest_applied}, newer than this program's {newest_known}"
            ),
        });
    }
    for &(version, sql) in MIGRATIONS {
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied: Option<i64> = transaction
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?",
                [version],
                |row| row.get(0),
            )
            .optional()?;
        if applied.is_none() {
            transaction.execute_batch(sql)?;
            transaction.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                params![version, encode_time(OffsetDateTime::now_utc())?],
            )?;
        }
        transaction.commit()?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn add_user(&self, user: &User) -> BoxFuture<'_, Result<(), StoreError>> {
        let user = user.clone();
        Box::pin(
            self.database
                .write(move |connection| insert_user(connection, &user)),
        )
    }

    fn import_users(
        &self,
        users: Vec<(User, NewAuditEvent)>,
        update: bool,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<Vec<Result<UserWritten, StoreError>>, StoreError>> {
        Box::pin(self.database.write(move |connection| {
            connection.execute_batch("SAVEPOINT import")?;
            let written = import_users(connection, users, update);
            let end = if dry_run || written.is_err() {
                "ROLLBACK TO import; RELEASE import"
            } else {
                "RELEASE import"
            };
            connection.execute_batch(end)?;
            written
        }))
    }

    fn update_user(
        &self,
        id: &str,
        user: &User,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (id, user) = (id.to_owned(), user.clone());
        Box::pin(self.database.write(move |connection| {
            update_user(connection, &id, &user)?;
            insert_audit(connection, &event)
        }))
    }

    fn delete_user(
        &self,
        id: &str,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<Vec<CardId>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.database.write(move |connection| {
            let revoked = delete_user(connection, &id)?;
            end_sessions_of(
                connection,
                &SessionSelector::User(id),
                SessionEndReason::UserDeleted,
            )?;
            insert_audit(connection, &event)?;
            Ok(revoked)
        }))
    }

    fn user_conflicts(&self) -> BoxFuture<'_, Result<Vec<UserConflict>, StoreError>> {
        Box::pin(self.database.read(user_conflicts))
    }

    fn get_user(&self, id: &str) -> BoxFuture<'_, Result<Option<User>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.database.read(move |connection| {
            connection
                .prepare_cached(select_users!("WHERE id = ?"))?
                .query_row([id], user_from_row)
                .optional()?
                .transpose()
        }))
    }

    fn list_users(&self) -> BoxFuture<'_, Result<Vec<User>, StoreError>> {
        Box::pin(self.database.read(move |connection| {
            collect_rows(
                &mut connection.prepare_cached(select_users!("ORDER BY id"))?,
                [],
                user_from_row,
            )
        }))
    }

    fn find_users(
        &self,
        attribute: UserAttribute,
        value: &str,
    ) -> BoxFuture<'_, Result<Vec<User>, StoreError>> {
        let value = value.to_owned();
        Box::pin(
            self.database
                .read(move |connection| find_users(connection, attribute, &value)),
        )
    }

    fn set_user_state(&self, id: &str, state: UserState) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(self.database.write(move |connection| {
            let changed = connection
                .prepare_cached("UPDATE users SET state = ? WHERE id = ?")?
                .execute(params![state.as_str(), id])?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    what: format!("user {id:?}"),
                });
            }
            if state == UserState::Locked {
                end_sessions_of(
                    connection,
                    &SessionSelector::User(id),
                    SessionEndReason::UserLocked,
                )?;
            }
            Ok(())
        }))
    }

    fn record_card(
        &self,
        facts: &CertificateFacts,
        user_id: Option<&str>,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Card, StoreError>> {
        let seen = SeenCard::new(facts, user_id.map(str::to_owned), now);
        Box::pin(
            self.database
                .write(move |connection| record_card(connection, seen)),
        )
    }

    fn get_card(&self, id: &CardId) -> BoxFuture<'_, Result<Option<Card>, StoreError>> {
        let id = id.clone();
        Box::pin(
            self.database
                .read(move |connection| get_card(connection, &id)),
        )
    }

    fn find_cards(&self, serial: &str) -> BoxFuture<'_, Result<Vec<Card>, StoreError>> {
        let serial = serial.to_owned();
        Box::pin(self.database.read(move |connection| {
            collect_rows(
                &mut connection
                    .prepare_cached(select_cards!("WHERE serial = ? ORDER BY issuer"))?,
                [serial],
                card_from_row,
            )
        }))
    }

    fn list_cards(&self) -> BoxFuture<'_, Result<Vec<Card>, StoreError>> {
        Box::pin(self.database.read(move |connection| {
            collect_rows(
                &mut connection.prepare_cached(select_cards!("ORDER BY serial, issuer"))?,
                [],
                card_from_row,
            )
        }))
    }

    fn set_card_state(
        &self,
        id: &CardId,
        state: CardState,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.clone();
        Box::pin(self.database.write(move |connection| {
            set_card_state(connection, &id, state, RevocationReason::Unspecified)?;
            let reason = match state {
                CardState::Active => return Ok(()),
                CardState::Locked => SessionEndReason::CardLocked,
                CardState::Revoked => SessionEndReason::CardRevoked,
            };
            end_sessions_of(connection, &SessionSelector::Card(id), reason)
        }))
    }

    fn revoke_card(
        &self,
        id: &CardId,
        reason: RevocationReason,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.clone();
        Box::pin(self.database.write(move |connection| {
            set_card_state(connection, &id, CardState::Revoked, reason)?;
            end_sessions_of(
                connection,
                &SessionSelector::Card(id),
                SessionEndReason::CardRevoked,
            )
        }))
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
        Box::pin(self.database.write(move |connection| {
            let result = connection
                .prepare_cached(
                    "INSERT INTO challenges (nonce, device, issued_at, expires_at) VALUES (?, ?, ?, ?)",
                )?
                .execute(params![
                    nonce,
                    device,
                    encode_time(OffsetDateTime::now_utc())?,
                    encode_time(expires_at)?,
                ]);
            match result {
                // The message leaves the nonce out: it is a live challenge.
                Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
                    what: "the challenge exists already".to_owned(),
                }),
                other => other.map(drop).map_err(StoreError::from),
            }?;
            insert_audit(connection, &event)
        }))
    }

    fn use_challenge(
        &self,
        nonce: &str,
        device: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<ChallengeUse, StoreError>> {
        let nonce = nonce.to_owned();
        let device = device.to_owned();
        Box::pin(
            self.database
                .write(move |connection| use_challenge(connection, &nonce, &device, now)),
        )
    }

    fn begin_sign_in(
        &self,
        lookup: &SignInLookup,
    ) -> BoxFuture<'_, Result<SignInRecords, StoreError>> {
        let lookup = lookup.clone();
        Box::pin(self.database.write(move |connection| {
            let challenge = use_challenge(connection, &lookup.nonce, &lookup.device, lookup.now)?;
            let card = get_card(connection, &lookup.card)?;
            let revocation = match card {
                Some(_) => None,
                None => revocation(connection, &lookup.card)?,
            };
            let renews = match (&card, pending_predecessor(connection, &lookup.card)?) {
                (None, Some(old)) => get_card(connection, &old)?,
                _ => None,
            };
            let mut users: Vec<User> = Vec::new();
            for value in &lookup.user_values {
                for user in find_users(connection, lookup.user_attribute, value)? {
                    if !users.iter().any(|known| known.id == user.id) {
                        users.push(user);
                    }
                }
            }
            users.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(SignInRecords {
                challenge,
                card,
                revocation,
                renews,
                users,
            })
        }))
    }

    fn finish_sign_in(
        &self,
        facts: &CertificateFacts,
        user_id: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
        session: &NewSession,
    ) -> BoxFuture<'_, Result<Card, StoreError>> {
        let seen = SeenCard::new(facts, Some(user_id.to_owned()), now);
        let session = session.clone();
        Box::pin(self.database.write(move |connection| {
            complete_renewal(connection, &seen.id(), &event)?;
            let card = record_card(connection, seen)?;
            sessions::insert_session(connection, &session)?;
            insert_audit(connection, &event)?;
            Ok(card)
        }))
    }

    fn purge_challenges(
        &self,
        older_than: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.database.write(move |connection| {
            let purged = connection
                .prepare_cached("DELETE FROM challenges WHERE expires_at < ?")?
                .execute([encode_time(older_than)?])?;
            Ok(purged as u64)
        }))
    }

    fn purge_audit(
        &self,
        older_than: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.database.write(move |connection| {
            let purged = connection
                .prepare_cached(
                    "DELETE FROM audit WHERE id IN
                     (SELECT id FROM audit WHERE time < ? ORDER BY time LIMIT ?)",
                )?
                .execute(params![encode_time(older_than)?, limit])?;
            Ok(purged as u64)
        }))
    }

    fn size_bytes(&self) -> Option<u64> {
        let path = self.path.as_ref()?;
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let database = std::fs::metadata(path).ok()?.len();
        let log = std::fs::metadata(wal).map_or(0, |metadata| metadata.len());
        Some(database + log)
    }

    fn compact(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.database.alone(|connection| {
            // Busy (readers still need old frames): the next round tries again.
            connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        }))
    }

    fn add_enrollment_code(
        &self,
        code: &NewEnrollmentCode,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let code = code.clone();
        Box::pin(self.database.write(move |connection| {
            let result = connection
                .prepare_cached(
                    "INSERT INTO enrollment_codes (code_hash, user_id, created_at, expires_at)
                     VALUES (?, ?, ?, ?)",
                )?
                .execute(params![
                    code.code_hash,
                    code.user_id,
                    encode_time(code.created_at)?,
                    encode_time(code.expires_at)?,
                ]);
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
        }))
    }

    fn get_enrollment_code(
        &self,
        code_hash: &str,
    ) -> BoxFuture<'_, Result<Option<EnrollmentCodeRecord>, StoreError>> {
        let code_hash = code_hash.to_owned();
        Box::pin(self.database.read(move |connection| {
            connection
                .prepare_cached(
                    "SELECT code_hash, user_id, created_at, expires_at, used_at, used_by
                     FROM enrollment_codes WHERE code_hash = ?",
                )?
                .query_row([code_hash], enrollment_code_from_row)
                .optional()?
                .transpose()
        }))
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
        Box::pin(self.database.write(move |connection| {
            let now = encode_time(now)?;
            // The single atomic step: only one caller can turn `used_at` from NULL.
            let changed = connection
                .prepare_cached(
                    "UPDATE enrollment_codes SET used_at = ?1, used_by = ?2
                     WHERE code_hash = ?3 AND user_id = ?4 AND used_at IS NULL AND expires_at > ?1",
                )?
                .execute(params![now, issued.facts.serial, code_hash, issued.user_id])?;
            if changed == 0 {
                let used_at: Option<Option<String>> = connection
                    .prepare_cached("SELECT used_at FROM enrollment_codes WHERE code_hash = ?")?
                    .query_row([&code_hash], |row| row.get(0))
                    .optional()?;
                return Ok(match used_at {
                    None => EnrollmentCodeUse::Unknown,
                    Some(Some(_)) => EnrollmentCodeUse::Used,
                    Some(None) => EnrollmentCodeUse::Expired,
                });
            }
            register_card(connection, &issued, &now)?;
            insert_issued(connection, &issued, &now)?;
            insert_audit(connection, &event)?;
            Ok(EnrollmentCodeUse::Accepted)
        }))
    }

    fn begin_renewal(
        &self,
        old: &CertificateFacts,
        user_id: &str,
        issued: &IssuedCertificate,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let seen = SeenCard::new(old, Some(user_id.to_owned()), now);
        let issued = issued.clone();
        Box::pin(self.database.write(move |connection| {
            let old = seen.id();
            // The old certificate's first use, if it is a renewal's new one itself.
            complete_renewal(connection, &old, &event)?;
            let card = record_card(connection, seen)?;
            if card.state != CardState::Active {
                return Err(StoreError::Conflict {
                    what: format!("card {old} is {}, not active", card.state),
                });
            }
            let now = encode_time(now)?;
            // The old key signed this renewal, so no earlier pending one is on the card.
            revoke_pending_renewals(connection, &old, None, RevocationReason::Superseded, &now)?;
            insert_issued(connection, &issued, &now)?;
            let new = CardId::of(&issued.facts);
            connection
                .prepare_cached(
                    "INSERT INTO pending_renewals
                         (issuer, serial, old_issuer, old_serial, user_id, certificate, created_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )?
                .execute(params![
                    new.issuer,
                    new.serial,
                    old.issuer,
                    old.serial,
                    issued.user_id,
                    issued.facts.der,
                    now
                ])?;
            insert_audit(connection, &event)
        }))
    }

    fn pending_renewals(&self, old: &CardId) -> BoxFuture<'_, Result<Vec<Vec<u8>>, StoreError>> {
        let old = old.clone();
        Box::pin(self.database.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT certificate FROM pending_renewals WHERE old_issuer = ? AND old_serial = ?
                 ORDER BY created_at DESC, rowid DESC",
            )?;
            let rows = statement
                .query_map(params![old.issuer, old.serial], |row| row.get(0))?
                .collect::<Result<Vec<Vec<u8>>, _>>()?;
            Ok(rows)
        }))
    }

    fn confirm_renewal(
        &self,
        new: &CertificateFacts,
        user_id: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let seen = SeenCard::new(new, Some(user_id.to_owned()), now);
        Box::pin(self.database.write(move |connection| {
            let completed = complete_renewal(connection, &seen.id(), &event)?;
            record_card(connection, seen)?;
            insert_audit(connection, &event)?;
            Ok(completed)
        }))
    }

    fn revocation(
        &self,
        id: &CardId,
    ) -> BoxFuture<'_, Result<Option<RevokedCertificate>, StoreError>> {
        let id = id.clone();
        Box::pin(
            self.database
                .read(move |connection| revocation(connection, &id)),
        )
    }

    fn revoked_issued_certificates(
        &self,
        issuer: &str,
    ) -> BoxFuture<'_, Result<Vec<RevokedCertificate>, StoreError>> {
        let issuer = issuer.to_owned();
        Box::pin(self.database.read(move |connection| {
            // `''`: an issuer not recorded before version 4 (of an issued certificate: this
            // server's CA; of a revocation: any issuer).
            let mut revoked = collect_rows(
                &mut connection.prepare_cached(
                    "SELECT r.issuer, r.serial, r.revoked_at, r.reason FROM revoked_certificates r
                     JOIN issued_certificates i ON i.serial = r.serial
                         AND (i.issuer = r.issuer OR i.issuer = '' OR r.issuer = '')
                     WHERE i.issuer IN (?1, '') AND r.issuer IN (?1, '')
                     ORDER BY r.serial, r.issuer DESC",
                )?,
                [issuer],
                revoked_from_row,
            )?;
            revoked.dedup_by(|later, earlier| later.serial == earlier.serial);
            Ok(revoked)
        }))
    }

    fn delete_card(&self, id: &CardId) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.clone();
        Box::pin(self.database.write(move |connection| {
            let state: Option<String> = connection
                .prepare_cached("SELECT state FROM cards WHERE issuer = ? AND serial = ?")?
                .query_row(params![id.issuer, id.serial], |row| row.get(0))
                .optional()?;
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
            add_revocation(
                connection,
                &id,
                RevocationReason::Unspecified,
                &encode_time(OffsetDateTime::now_utc())?,
            )?;
            connection
                .prepare_cached("DELETE FROM cards WHERE issuer = ? AND serial = ?")?
                .execute(params![id.issuer, id.serial])?;
            Ok(())
        }))
    }

    fn add_device(
        &self,
        device: &NewDevice,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let device = device.clone();
        Box::pin(self.database.write(move |connection| {
            let result = connection
                .prepare_cached(
                    "INSERT INTO devices (id, state, created_at, code_hash, code_expires_at)
                     VALUES (?, 'enabled', ?, ?, ?)",
                )?
                .execute(params![
                    device.id,
                    encode_time(device.created_at)?,
                    device.code_hash,
                    encode_time(device.code_expires_at)?,
                ]);
            match result {
                // The message leaves the code hash out.
                Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
                    what: format!("device {:?} exists already", device.id),
                }),
                other => other.map(drop).map_err(StoreError::from),
            }?;
            insert_audit(connection, &event)
        }))
    }

    fn get_device(&self, id: &str) -> BoxFuture<'_, Result<Option<Device>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.database.read(move |connection| {
            connection
                .prepare_cached(select_devices!("WHERE id = ?"))?
                .query_row([id], device_from_row)
                .optional()?
                .transpose()
        }))
    }

    fn device_for_code(
        &self,
        code_hash: &str,
    ) -> BoxFuture<'_, Result<Option<Device>, StoreError>> {
        let code_hash = code_hash.to_owned();
        Box::pin(self.database.read(move |connection| {
            connection
                .prepare_cached(select_devices!("WHERE code_hash = ?"))?
                .query_row([code_hash], device_from_row)
                .optional()?
                .transpose()
        }))
    }

    fn list_devices(&self) -> BoxFuture<'_, Result<Vec<Device>, StoreError>> {
        Box::pin(self.database.read(|connection| {
            let mut statement = connection.prepare_cached(select_devices!("ORDER BY id"))?;
            collect_rows(&mut statement, [], device_from_row)
        }))
    }

    fn set_device_state(
        &self,
        id: &str,
        state: DeviceState,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(self.database.write(move |connection| {
            let changed = connection
                .prepare_cached("UPDATE devices SET state = ? WHERE id = ?")?
                .execute(params![state.as_str(), id])?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    what: format!("device {id:?}"),
                });
            }
            if state == DeviceState::Disabled {
                delete_unused_challenges(connection, &id)?;
            }
            insert_audit(connection, &event)
        }))
    }

    fn remove_device(
        &self,
        id: &str,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(self.database.write(move |connection| {
            let changed = connection
                .prepare_cached("DELETE FROM devices WHERE id = ?")?
                .execute([&id])?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    what: format!("device {id:?}"),
                });
            }
            delete_unused_challenges(connection, &id)?;
            insert_audit(connection, &event)
        }))
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
        Box::pin(self.database.write(move |connection| {
            let now = encode_time(now)?;
            // The single atomic step: only one caller can turn `code_used_at` from NULL.
            let device: Option<String> = connection
                .prepare_cached(
                    "UPDATE devices SET code_used_at = ?1, certificate = ?2,
                         certificate_serial = ?3, certificate_fingerprint = ?4, not_after = ?5
                     WHERE code_hash = ?6 AND code_used_at IS NULL AND code_expires_at > ?1
                     RETURNING id",
                )?
                .query_row(
                    params![
                        now,
                        credential.certificate,
                        credential.serial,
                        credential.fingerprint,
                        encode_time(credential.not_after)?,
                        code_hash
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(device) = device {
                insert_audit(
                    connection,
                    &NewAuditEvent {
                        device: Some(device.clone()),
                        ..event
                    },
                )?;
                return Ok(DeviceCodeUse::Accepted { device });
            }
            let used_at: Option<Option<String>> = connection
                .prepare_cached("SELECT code_used_at FROM devices WHERE code_hash = ?")?
                .query_row([&code_hash], |row| row.get(0))
                .optional()?;
            Ok(match used_at {
                None => DeviceCodeUse::Unknown,
                Some(Some(_)) => DeviceCodeUse::Used,
                Some(None) => DeviceCodeUse::Expired,
            })
        }))
    }

    fn add_admin_credential(
        &self,
        name: &str,
        token_hash: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (name, token_hash) = (name.to_owned(), token_hash.to_owned());
        Box::pin(self.database.write(move |connection| {
            let result = connection
                .prepare_cached(
                    "INSERT INTO admin_credentials (name, token_hash, created_at) VALUES (?, ?, ?)",
                )?
                .execute(params![name, token_hash, encode_time(now)?]);
            match result {
                Err(error) if is_unique_violation(&error) => {
                    return Err(StoreError::Conflict {
                        what: format!("an admin credential named {name:?} exists already"),
                    });
                }
                other => other?,
            };
            insert_audit(connection, &event)
        }))
    }

    fn admin_credentials(&self) -> BoxFuture<'_, Result<Vec<AdminCredential>, StoreError>> {
        Box::pin(self.database.read(move |connection| {
            collect_rows(
                &mut connection.prepare_cached(
                    "SELECT name, token_hash, created_at, revoked_at FROM admin_credentials ORDER BY name",
                )?,
                [],
                admin_credential_from_row,
            )
        }))
    }

    fn find_admin_credential(
        &self,
        token_hash: &str,
    ) -> BoxFuture<'_, Result<Option<AdminCredential>, StoreError>> {
        let token_hash = token_hash.to_owned();
        Box::pin(self.database.read(move |connection| {
            connection
                .prepare_cached(
                    "SELECT name, token_hash, created_at, revoked_at FROM admin_credentials
                     WHERE token_hash = ?",
                )?
                .query_row([token_hash], admin_credential_from_row)
                .optional()?
                .transpose()
        }))
    }

    fn revoke_admin_credential(
        &self,
        name: &str,
        initial_hash: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (name, initial_hash) = (name.to_owned(), initial_hash.to_owned());
        Box::pin(self.database.write(move |connection| {
            let now = encode_time(now)?;
            if name == INITIAL_ADMIN_CREDENTIAL {
                // The token file's credential has a record once it is revoked.
                connection
                    .prepare_cached(
                        "INSERT INTO admin_credentials (name, token_hash, created_at)
                         VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![name, initial_hash, now])?;
            }
            let revoked: Option<Option<String>> = connection
                .prepare_cached("SELECT revoked_at FROM admin_credentials WHERE name = ?")?
                .query_row([&name], |row| row.get(0))
                .optional()?;
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
            connection
                .prepare_cached("UPDATE admin_credentials SET revoked_at = ? WHERE name = ?")?
                .execute(params![now, name])?;
            // The token file's credential is active until it has a (revoked) record.
            let active: i64 = connection
                .prepare_cached(
                    "SELECT count(*) FROM admin_credentials WHERE revoked_at IS NULL AND name <> ?1
                     UNION ALL
                     SELECT NOT EXISTS (SELECT 1 FROM admin_credentials WHERE name = ?1)",
                )?
                .query_map([INITIAL_ADMIN_CREDENTIAL], |row| row.get::<_, i64>(0))?
                .sum::<rusqlite::Result<i64>>()?;
            if active == 0 {
                return Err(StoreError::Conflict {
                    what: format!(
                        "admin credential {name:?} is the last active one; add another first"
                    ),
                });
            }
            insert_audit(connection, &event)
        }))
    }

    fn stats(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<StoreStats, StoreError>> {
        Box::pin(self.database.read(move |connection| {
            let count = |sql: &str, values: &[&dyn rusqlite::ToSql]| -> Result<u64, StoreError> {
                let n: i64 = connection
                    .prepare_cached(sql)?
                    .query_row(values, |row| row.get(0))?;
                Ok(u64::try_from(n).unwrap_or(0))
            };
            let mut users = Vec::new();
            for state in [UserState::Active, UserState::Locked] {
                let n = count(
                    "SELECT count(*) FROM users WHERE state = ?",
                    &[&state.as_str()],
                )?;
                users.push((state, n));
            }
            let mut cards = Vec::new();
            for state in [CardState::Active, CardState::Locked, CardState::Revoked] {
                let n = count(
                    "SELECT count(*) FROM cards WHERE state = ?",
                    &[&state.as_str()],
                )?;
                cards.push((state, n));
            }
            let hour_ago = encode_time(now - time::Duration::hours(1))?;
            let sign_ins_last_hour = count(
                "SELECT count(*) FROM audit
                 WHERE kind = 'assertion' AND outcome = 'ok' AND time >= ?",
                &[&hour_ago],
            )?;
            let (now_text, horizon) = (
                encode_time(now)?,
                encode_time(now + time::Duration::days(super::EXPIRING_DAYS))?,
            );
            let certificates_expiring = count(
                "SELECT count(*) FROM issued_certificates i
                 WHERE i.not_after > ?1 AND i.not_after <= ?2
                   AND NOT EXISTS (SELECT 1 FROM cards c WHERE c.issuer = i.issuer
                                   AND c.serial = i.serial AND c.state = 'revoked')
                   AND NOT EXISTS (SELECT 1 FROM revoked_certificates r WHERE r.serial = i.serial
                                   AND r.issuer IN (i.issuer, ''))",
                &[&now_text, &horizon],
            )?;
            Ok(StoreStats {
                users,
                cards,
                sign_ins_last_hour,
                certificates_expiring,
            })
        }))
    }

    fn audit(&self, event: NewAuditEvent) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(
            self.database
                .write(move |connection| insert_audit(connection, &event)),
        )
    }

    fn heartbeat(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.database.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO heartbeat (id, at) VALUES (1, ?)
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                )?
                .execute([encode_time(now)?])?;
            Ok(())
        }))
    }

    fn query_audit(
        &self,
        query: &AuditQuery,
    ) -> BoxFuture<'_, Result<Vec<AuditEvent>, StoreError>> {
        let query = query.clone();
        Box::pin(self.database.read(move |connection| {
            let mut sql = String::from(
                "SELECT id, time, kind, outcome, device, card_serial, user_id, detail FROM audit WHERE 1 = 1",
            );
            let limit = i64::from(query.effective_limit());
            let mut values: Vec<Value> = Vec::new();
            let equal_filters = [
                (" AND user_id = ?", query.user_id),
                (" AND card_serial = ?", query.card_serial),
                (" AND device = ?", query.device),
                (" AND outcome = ?", query.outcome.map(|o| o.as_str().to_owned())),
            ];
            for (condition, value) in equal_filters {
                if let Some(value) = value {
                    sql.push_str(condition);
                    values.push(Value::Text(value));
                }
            }
            match query.kind {
                Some(AuditKindFilter::Kind(kind)) => {
                    let kind = kind.as_str().to_owned();
                    sql.push_str(" AND kind = ?");
                    values.push(Value::Text(kind));
                }
                Some(AuditKindFilter::SignIn) => {
                    sql.push_str(" AND kind = 'assertion' AND outcome = 'ok'");
                }
                Some(AuditKindFilter::SignInRefused) => {
                    sql.push_str(" AND kind = 'assertion' AND outcome <> 'ok'");
                }
                None => {}
            }
            if let Some(before) = query.before {
                let time: Option<String> = connection
                    .prepare_cached("SELECT time FROM audit WHERE id = ?")?
                    .query_row([before], |row| row.get(0))
                    .optional()?;
                match time {
                    Some(time) => {
                        sql.push_str(" AND (time < ? OR (time = ? AND id < ?))");
                        values.push(Value::Text(time.clone()));
                        values.push(Value::Text(time));
                    }
                    None => sql.push_str(" AND id < ?"),
                }
                values.push(Value::Integer(before));
            }
            if let Some(since) = query.since {
                sql.push_str(" AND time >= ?");
                values.push(Value::Text(encode_time(since)?));
            }
            if let Some(until) = query.until {
                sql.push_str(" AND time < ?");
                values.push(Value::Text(encode_time(until)?));
            }
            sql.push_str(" ORDER BY time DESC, id DESC LIMIT ?");
            values.push(Value::Integer(limit));
            collect_rows(
                &mut connection.prepare_cached(&sql)?,
                params_from_iter(values),
                audit_event_from_row,
            )
        }))
    }

    fn record_failures(
        &self,
        keys: &[String],
        now: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let keys = each_once(keys);
        Box::pin(self.database.write(move |connection| {
            let (now, forget_before) = (encode_time(now)?, encode_time(forget_before)?);
            let mut statement = connection.prepare_cached(
                "INSERT INTO flow_failures (key, count, last_at) VALUES (?1, 1, ?2)
                 ON CONFLICT (key) DO UPDATE SET
                     count = CASE WHEN last_at < ?3 THEN 1 ELSE count + 1 END,
                     last_at = ?2",
            )?;
            for key in &keys {
                statement.execute(params![key, now, forget_before])?;
            }
            Ok(())
        }))
    }

    fn failures(&self, keys: &[String]) -> BoxFuture<'_, Result<Vec<FailureCount>, StoreError>> {
        let keys = keys.to_vec();
        Box::pin(self.database.read(move |connection| {
            let mut statement = connection
                .prepare_cached("SELECT count, last_at FROM flow_failures WHERE key = ?")?;
            let mut counts = Vec::new();
            for key in keys {
                let row: Option<(i64, String)> = statement
                    .query_row([&key], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                if let Some((count, last)) = row {
                    counts.push(FailureCount {
                        key,
                        count: u32::try_from(count).unwrap_or(u32::MAX),
                        last: decode_time("last_at", &last)?,
                    });
                }
            }
            Ok(counts)
        }))
    }

    fn clear_failures(&self, keys: &[String]) -> BoxFuture<'_, Result<(), StoreError>> {
        let keys = keys.to_vec();
        Box::pin(self.database.write(move |connection| {
            let mut statement =
                connection.prepare_cached("DELETE FROM flow_failures WHERE key = ?")?;
            for key in &keys {
                statement.execute([key])?;
            }
            Ok(())
        }))
    }

    fn spend_budget(
        &self,
        kind: &str,
        keys: &[String],
        now: OffsetDateTime,
        step: std::time::Duration,
        tolerance: std::time::Duration,
    ) -> BoxFuture<'_, Result<BudgetUse, StoreError>> {
        let kind = kind.to_owned();
        let keys = each_once(keys);
        Box::pin(self.database.write(move |connection| {
            let now = unix_micros(now);
            let (step, limit) = (micros(step), now.saturating_add(micros(tolerance)));
            let mut read = connection
                .prepare_cached("SELECT horizon FROM flow_budgets WHERE kind = ? AND key = ?")?;
            let mut furthest: Option<i64> = None;
            for key in &keys {
                let horizon: i64 = read
                    .query_row(params![kind, key], |row| row.get(0))
                    .optional()?
                    .unwrap_or(now);
                if horizon.max(now).saturating_add(step) > limit {
                    furthest = Some(furthest.map_or(horizon, |seen| seen.max(horizon)));
                }
            }
            if let Some(horizon) = furthest {
                return Ok(BudgetUse::Empty {
                    horizon: from_unix_micros(horizon)?,
                });
            }
            let mut write = connection.prepare_cached(
                "INSERT INTO flow_budgets (kind, key, horizon) VALUES (?1, ?2, ?3 + ?4)
                 ON CONFLICT (kind, key) DO UPDATE SET horizon = max(horizon, ?3) + ?4",
            )?;
            for key in &keys {
                write.execute(params![kind, key, now, step])?;
            }
            Ok(BudgetUse::Spent)
        }))
    }

    fn use_proof_id(
        &self,
        id: &str,
        now: OffsetDateTime,
        remember_until: OffsetDateTime,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.database.write(move |connection| {
            let changed = connection
                .prepare_cached(
                    "INSERT INTO device_proofs (id, expires_at) VALUES (?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
                     WHERE expires_at < ?3",
                )?
                .execute(params![id, encode_time(remember_until)?, encode_time(now)?])?;
            Ok(changed > 0)
        }))
    }

    fn purge_flow_control(
        &self,
        now: OffsetDateTime,
        failures_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.database.write(move |connection| {
            let budgets = connection
                .prepare_cached("DELETE FROM flow_budgets WHERE horizon < ?")?
                .execute([unix_micros(now)])?;
            let proofs = connection
                .prepare_cached("DELETE FROM device_proofs WHERE expires_at < ?")?
                .execute([encode_time(now)?])?;
            let failures = connection
                .prepare_cached("DELETE FROM flow_failures WHERE last_at < ?")?
                .execute([encode_time(failures_before)?])?;
            Ok((budgets + proofs + failures) as u64)
        }))
    }

    fn token_keys(&self) -> BoxFuture<'_, Result<Option<StoredTokenKeys>, StoreError>> {
        Box::pin(self.database.read(move |connection| {
            Ok(connection
                .prepare_cached("SELECT version, keys FROM token_keys WHERE id = 1")?
                .query_row([], |row| {
                    Ok(StoredTokenKeys {
                        version: row.get(0)?,
                        keys: zeroize::Zeroizing::new(row.get(1)?),
                    })
                })
                .optional()?)
        }))
    }

    fn replace_token_keys(
        &self,
        keys: &str,
        replaces: Option<i64>,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<i64, StoreError>> {
        let keys = zeroize::Zeroizing::new(keys.to_owned());
        Box::pin(self.database.write(move |connection| {
            let now = encode_time(now)?;
            let changed = match replaces {
                None => connection
                    .prepare_cached(
                        "INSERT INTO token_keys (id, version, keys, updated_at) VALUES (1, 1, ?, ?)
                         ON CONFLICT (id) DO NOTHING",
                    )?
                    .execute(params![keys.as_str(), now])?,
                Some(version) => connection
                    .prepare_cached(
                        "UPDATE token_keys SET version = version + 1, keys = ?, updated_at = ?
                         WHERE id = 1 AND version = ?",
                    )?
                    .execute(params![keys.as_str(), now, version])?,
            };
            if changed == 0 {
                return Err(token_keys_conflict(replaces));
            }
            Ok(replaces.map_or(1, |version| version + 1))
        }))
    }

    fn get_session(&self, id: &str) -> BoxFuture<'_, Result<Option<Session>, StoreError>> {
        let id = id.to_owned();
        Box::pin(
            self.database
                .read(move |connection| sessions::get_session(connection, &id)),
        )
    }

    fn list_sessions(
        &self,
        query: &SessionQuery,
    ) -> BoxFuture<'_, Result<Vec<Session>, StoreError>> {
        let query = query.clone();
        Box::pin(
            self.database
                .read(move |connection| sessions::list_sessions(connection, &query)),
        )
    }

    fn end_sessions(
        &self,
        selector: &SessionSelector,
        reason: SessionEndReason,
        now: OffsetDateTime,
        event: Option<NewAuditEvent>,
    ) -> BoxFuture<'_, Result<Vec<Session>, StoreError>> {
        let selector = selector.clone();
        Box::pin(self.database.write(move |connection| {
            sessions::end_sessions(connection, &selector, reason, now, event.as_ref())
        }))
    }

    fn use_refresh_token(
        &self,
        token_hash: &str,
        client_id: &str,
        replacement_hash: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<RefreshUse, StoreError>> {
        let (token_hash, client_id, replacement_hash) = (
            token_hash.to_owned(),
            client_id.to_owned(),
            replacement_hash.to_owned(),
        );
        Box::pin(self.database.write(move |connection| {
            sessions::use_refresh_token(connection, &token_hash, &client_id, &replacement_hash, now)
        }))
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
        Box::pin(self.database.write(move |connection| {
            sessions::add_refresh_token(
                connection,
                &session_id,
                &client_id,
                &token_hash,
                &scope,
                now,
            )
        }))
    }

    fn revoke_refresh_token(
        &self,
        token_hash: &str,
        client_id: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (token_hash, client_id) = (token_hash.to_owned(), client_id.to_owned());
        Box::pin(self.database.write(move |connection| {
            sessions::revoke_refresh_token(connection, &token_hash, &client_id, now)
        }))
    }

    fn record_session_client(
        &self,
        session_id: &str,
        client_id: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (session_id, client_id) = (session_id.to_owned(), client_id.to_owned());
        Box::pin(self.database.write(move |connection| {
            sessions::record_session_client(connection, &session_id, &client_id, now)
        }))
    }

    fn add_client(&self, client: &OidcClient) -> BoxFuture<'_, Result<(), StoreError>> {
        let client = client.clone();
        Box::pin(
            self.database
                .write(move |connection| sessions::add_client(connection, &client)),
        )
    }

    fn get_client(&self, id: &str) -> BoxFuture<'_, Result<Option<OidcClient>, StoreError>> {
        let id = id.to_owned();
        Box::pin(
            self.database
                .read(move |connection| sessions::get_client(connection, &id)),
        )
    }

    fn list_clients(&self) -> BoxFuture<'_, Result<Vec<OidcClient>, StoreError>> {
        Box::pin(self.database.read(sessions::list_clients))
    }

    fn remove_client(&self, id: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(self.database.write(move |connection| {
            sessions::remove_client(connection, &id, OffsetDateTime::now_utc())
        }))
    }

    fn add_authorization_code(
        &self,
        code: &NewAuthorizationCode,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let code = code.clone();
        Box::pin(
            self.database
                .write(move |connection| sessions::add_authorization_code(connection, &code)),
        )
    }

    fn redeem_authorization_code(
        &self,
        code_hash: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<CodeRedemption, StoreError>> {
        let code_hash = code_hash.to_owned();
        Box::pin(self.database.write(move |connection| {
            sessions::redeem_authorization_code(connection, &code_hash, now)
        }))
    }

    fn revoke_access_token(
        &self,
        jti: &str,
        expires_at: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let jti = jti.to_owned();
        Box::pin(
            self.database.write(move |connection| {
                sessions::revoke_access_token(connection, &jti, expires_at)
            }),
        )
    }

    fn is_access_token_revoked(&self, jti: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let jti = jti.to_owned();
        Box::pin(
            self.database
                .read(move |connection| sessions::is_access_token_revoked(connection, &jti)),
        )
    }

    fn claim_logout_deliveries(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<LogoutDelivery>, StoreError>> {
        Box::pin(self.database.write(move |connection| {
            sessions::claim_logout_deliveries(connection, now, lease, limit)
        }))
    }

    fn finish_logout_delivery(
        &self,
        id: i64,
        outcome: &DeliveryOutcome,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let outcome = outcome.clone();
        Box::pin(self.database.write(move |connection| {
            sessions::finish_logout_delivery(connection, id, &outcome, now)
        }))
    }

    fn purge_sessions(
        &self,
        ended_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(
            self.database
                .write(move |connection| sessions::purge_sessions(connection, ended_before)),
        )
    }
}

/// The conflict of a [`Store::replace_token_keys`] that found another key set than it replaces.
/// Ends the selected sessions now, inside the caller's write (a lock, revocation or deletion).
fn end_sessions_of(
    connection: &Connection,
    selector: &SessionSelector,
    reason: SessionEndReason,
) -> Result<(), StoreError> {
    sessions::end_sessions(
        connection,
        selector,
        reason,
        OffsetDateTime::now_utc(),
        None,
    )
    .map(drop)
}

pub(super) fn token_keys_conflict(replaces: Option<i64>) -> StoreError {
    StoreError::Conflict {
        what: match replaces {
            None => "the store has token keys already".to_owned(),
            Some(version) => format!(
                "the token keys changed since version {version} was read (another node rotated them)"
            ),
        },
    }
}

/// The keys, each once, in order: a key named twice counts once (and one PostgreSQL
/// statement may update a row only once).
pub(super) fn each_once(keys: &[String]) -> Vec<String> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Microseconds since 1970 (a budget horizon).
pub(super) fn unix_micros(time: OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// A duration in microseconds, saturating.
pub(super) fn micros(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The time `micros` microseconds after 1970.
pub(super) fn from_unix_micros(micros: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|_| StoreError::Database(DatabaseError::TimeOutOfRange))
}

/// A card seen in an assertion, as [`record_card`] stores it.
struct SeenCard {
    serial: String,
    fingerprint: String,
    issuer: String,
    subject: String,
    user_id: Option<String>,
    now: OffsetDateTime,
}

impl SeenCard {
    fn id(&self) -> CardId {
        CardId {
            issuer: self.issuer.clone(),
            serial: self.serial.clone(),
        }
    }

    fn new(facts: &CertificateFacts, user_id: Option<String>, now: OffsetDateTime) -> Self {
        SeenCard {
            serial: facts.serial.clone(),
            fingerprint: facts.fingerprint.clone(),
            issuer: facts.issuer.clone(),
            subject: facts.subject.clone(),
            user_id,
            now,
        }
    }
}

// One function per statement the trait's methods share; each runs on the connection it
// is given, inside the caller's write or read.

/// Inserts `user` after the checks of [`Store::add_user`]: the id, then each mapped
/// attribute, compared as [`find_users`] compares it.
fn insert_user(connection: &Connection, user: &User) -> Result<(), StoreError> {
    let exists = || StoreError::Conflict {
        what: format!("user {:?} exists already", user.id),
    };
    let id_taken = connection
        .prepare_cached("SELECT 1 FROM users WHERE id = ?")?
        .exists([&user.id])?;
    if id_taken {
        return Err(exists());
    }
    if let Some(taken) = attribute_taken(connection, user, None)? {
        return Err(taken);
    }
    let result = connection
        .prepare_cached(
            "INSERT INTO users (id, display_name, mail, upn, employee_id, state, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            user.id,
            user.display_name,
            user.mail,
            user.upn,
            user.employee_id,
            user.state.as_str(),
            encode_time(OffsetDateTime::now_utc())?,
        ]);
    match result {
        Err(error) if is_unique_violation(&error) => Err(exists()),
        other => other.map(drop).map_err(StoreError::from),
    }
}

/// [`Store::import_users`] without its savepoint.
fn import_users(
    connection: &Connection,
    users: Vec<(User, NewAuditEvent)>,
    update: bool,
) -> Result<Vec<Result<UserWritten, StoreError>>, StoreError> {
    let mut results = Vec::with_capacity(users.len());
    for (user, mut event) in users {
        let stored = connection
            .prepare_cached(select_users!("WHERE id = ?"))?
            .query_row([&user.id], user_from_row)
            .optional()?
            .transpose()?;
        let result = match stored {
            None => insert_user(connection, &user).map(|()| UserWritten::Added),
            Some(_) if !update => Err(StoreError::Conflict {
                what: format!("user {:?} exists already", user.id),
            }),
            Some(stored) => {
                let changed = changed_fields(&stored, &user);
                if changed.is_empty() {
                    results.push(Ok(UserWritten::Unchanged));
                    continue;
                }
                event.detail = Some(format!(
                    "{}: updated {}",
                    event.detail.unwrap_or_default(),
                    changed.join(", ")
                ));
                update_user(connection, &user.id, &user).map(|()| UserWritten::Updated(changed))
            }
        };
        match result {
            Ok(written) => {
                insert_audit(connection, &event)?;
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

/// The fields of `stored` that `new` changes (the id and the state aside).
pub(super) fn changed_fields(stored: &User, new: &User) -> Vec<&'static str> {
    [
        ("display_name", stored.display_name == new.display_name),
        ("mail", stored.mail == new.mail),
        ("upn", stored.upn == new.upn),
        ("employee_id", stored.employee_id == new.employee_id),
    ]
    .into_iter()
    .filter_map(|(field, same)| (!same).then_some(field))
    .collect()
}

/// The first mapped attribute of `user` that a user other than `except` has, compared as
/// [`find_users`] compares it.
fn attribute_taken(
    connection: &Connection,
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
        if let Some(holder) = find_users(connection, attribute, value)?
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

/// [`Store::update_user`] without its audit event.
fn update_user(connection: &Connection, id: &str, user: &User) -> Result<(), StoreError> {
    let exists = connection
        .prepare_cached("SELECT 1 FROM users WHERE id = ?")?
        .exists([id])?;
    if !exists {
        return Err(StoreError::NotFound {
            what: format!("user {id:?}"),
        });
    }
    if user.id != id {
        let taken = connection
            .prepare_cached("SELECT 1 FROM users WHERE id = ?")?
            .exists([&user.id])?;
        if taken {
            return Err(StoreError::Conflict {
                what: format!("user {:?} exists already", user.id),
            });
        }
    }
    if let Some(taken) = attribute_taken(connection, user, Some(id))? {
        return Err(taken);
    }
    if user.id == id {
        connection
            .prepare_cached(
                "UPDATE users SET display_name = ?, mail = ?, upn = ?, employee_id = ? WHERE id = ?",
            )?
            .execute(params![
                user.display_name,
                user.mail,
                user.upn,
                user.employee_id,
                id
            ])?;
        return Ok(());
    }
    // A rename: the new row first, so that the references can move to it.
    connection
        .prepare_cached(
            "INSERT INTO users (id, display_name, mail, upn, employee_id, state, created_at)
             SELECT ?, ?, ?, ?, ?, state, created_at FROM users WHERE id = ?",
        )?
        .execute(params![
            user.id,
            user.display_name,
            user.mail,
            user.upn,
            user.employee_id,
            id
        ])?;
    for table in [
        "cards",
        "enrollment_codes",
        "issued_certificates",
        "pending_renewals",
        "audit",
        "sessions",
    ] {
        connection
            .prepare_cached(&format!("UPDATE {table} SET user_id = ? WHERE user_id = ?"))?
            .execute(params![user.id, id])?;
    }
    connection
        .prepare_cached("DELETE FROM users WHERE id = ?")?
        .execute([id])?;
    Ok(())
}

/// [`Store::delete_user`] without its audit event.
fn delete_user(connection: &Connection, id: &str) -> Result<Vec<CardId>, StoreError> {
    let exists = connection
        .prepare_cached("SELECT 1 FROM users WHERE id = ?")?
        .exists([id])?;
    if !exists {
        return Err(StoreError::NotFound {
            what: format!("user {id:?}"),
        });
    }
    let live: Vec<CardId> = collect_rows(
        &mut connection.prepare_cached(select_cards!(
            "WHERE user_id = ? AND state <> 'revoked' ORDER BY serial, issuer"
        ))?,
        [id],
        card_from_row,
    )?
    .iter()
    .map(Card::id)
    .collect();
    for card in &live {
        set_card_state(
            connection,
            card,
            CardState::Revoked,
            RevocationReason::AffiliationChanged,
        )?;
    }
    connection
        .prepare_cached("UPDATE cards SET user_id = NULL WHERE user_id = ?")?
        .execute([id])?;
    connection
        .prepare_cached("DELETE FROM enrollment_codes WHERE user_id = ?")?
        .execute([id])?;
    connection
        .prepare_cached("DELETE FROM users WHERE id = ?")?
        .execute([id])?;
    Ok(live)
}

/// [`Store::set_card_state`]; a revocation goes on the list with `reason`.
fn set_card_state(
    connection: &Connection,
    id: &CardId,
    state: CardState,
    reason: RevocationReason,
) -> Result<(), StoreError> {
    // One statement, so a concurrent revocation cannot be undone.
    let changed = connection
        .prepare_cached(
            "UPDATE cards SET state = ?1
             WHERE issuer = ?2 AND serial = ?3 AND (state <> 'revoked' OR ?1 = 'revoked')",
        )?
        .execute(params![state.as_str(), id.issuer, id.serial])?;
    if changed > 0 {
        if state == CardState::Revoked {
            let now = encode_time(OffsetDateTime::now_utc())?;
            add_revocation(connection, id, reason, &now)?;
            revoke_pending_renewals(connection, id, None, reason, &now)?;
        }
        return Ok(());
    }
    let exists = connection
        .prepare_cached("SELECT 1 FROM cards WHERE issuer = ? AND serial = ?")?
        .exists(params![id.issuer, id.serial])?;
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

/// Users sharing a mail or UPN (NOCASE, as the columns compare) or an employee id.
fn user_conflicts(connection: &Connection) -> Result<Vec<UserConflict>, StoreError> {
    let queries = [
        (
            UserAttribute::Mail,
            "SELECT mail, id FROM users WHERE mail IN
                 (SELECT mail FROM users WHERE mail IS NOT NULL GROUP BY mail HAVING count(*) > 1)
             ORDER BY mail, id",
        ),
        (
            UserAttribute::Upn,
            "SELECT upn, id FROM users WHERE upn IN
                 (SELECT upn FROM users WHERE upn IS NOT NULL GROUP BY upn HAVING count(*) > 1)
             ORDER BY upn, id",
        ),
        (
            UserAttribute::EmployeeId,
            "SELECT employee_id, id FROM users WHERE employee_id IN
                 (SELECT employee_id FROM users WHERE employee_id IS NOT NULL
                  GROUP BY employee_id HAVING count(*) > 1)
             ORDER BY employee_id, id",
        ),
    ];
    let mut conflicts: Vec<UserConflict> = Vec::new();
    for (attribute, sql) in queries {
        let mut statement = connection.prepare_cached(sql)?;
        let mut rows = statement.query([])?;
        let mut group: Option<String> = None;
        while let Some(row) = rows.next()? {
            let (value, id): (String, String) = (row.get(0)?, row.get(1)?);
            let same = group.as_deref().is_some_and(|known| {
                attribute == UserAttribute::EmployeeId && known == value
                    || attribute != UserAttribute::EmployeeId && known.eq_ignore_ascii_case(&value)
            });
            match conflicts.last_mut() {
                Some(conflict) if same => conflict.user_ids.push(id),
                _ => conflicts.push(UserConflict {
                    attribute,
                    user_ids: vec![id],
                }),
            }
            group = Some(value);
        }
    }
    Ok(conflicts)
}

fn find_users(
    connection: &Connection,
    attribute: UserAttribute,
    value: &str,
) -> Result<Vec<User>, StoreError> {
    // The columns `mail` and `upn` compare with NOCASE; `id` and `employee_id` exactly.
    let sql = match attribute {
        UserAttribute::Uid => select_users!("WHERE id = ? ORDER BY id"),
        UserAttribute::Mail => select_users!("WHERE mail = ? ORDER BY id"),
        UserAttribute::Upn => select_users!("WHERE upn = ? ORDER BY id"),
        UserAttribute::EmployeeId => select_users!("WHERE employee_id = ? ORDER BY id"),
    };
    collect_rows(&mut connection.prepare_cached(sql)?, [value], user_from_row)
}

fn record_card(connection: &Connection, seen: SeenCard) -> Result<Card, StoreError> {
    let result = connection
        .prepare_cached(
            "INSERT INTO cards (serial, fingerprint, issuer, subject, user_id, state, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?6)
             ON CONFLICT (issuer, serial) DO UPDATE SET
                 fingerprint = excluded.fingerprint,
                 subject = excluded.subject,
                 user_id = coalesce(excluded.user_id, cards.user_id),
                 last_seen = excluded.last_seen
             RETURNING serial, fingerprint, issuer, subject, user_id, state, first_seen, last_seen",
        )?
        .query_row(
            params![
                seen.serial,
                seen.fingerprint,
                seen.issuer,
                seen.subject,
                seen.user_id,
                encode_time(seen.now)?
            ],
            card_from_row,
        );
    match result {
        Ok(card) => card,
        Err(error) if is_foreign_key_violation(&error) => Err(StoreError::NotFound {
            what: format!("user {:?}", seen.user_id.unwrap_or_default()),
        }),
        Err(error) => Err(error.into()),
    }
}

fn get_card(connection: &Connection, id: &CardId) -> Result<Option<Card>, StoreError> {
    connection
        .prepare_cached(select_cards!("WHERE issuer = ? AND serial = ?"))?
        .query_row(params![id.issuer, id.serial], card_from_row)
        .optional()?
        .transpose()
}

/// The card whose pending renewal issued `new`, if `new` is one.
fn pending_predecessor(
    connection: &Connection,
    new: &CardId,
) -> Result<Option<CardId>, StoreError> {
    Ok(connection
        .prepare_cached(
            "SELECT old_issuer, old_serial FROM pending_renewals WHERE issuer = ? AND serial = ?",
        )?
        .query_row(params![new.issuer, new.serial], |row| {
            Ok(CardId {
                issuer: row.get(0)?,
                serial: row.get(1)?,
            })
        })
        .optional()?)
}

/// Completes the renewal whose new certificate is `new`, if one is pending: the old card
/// becomes revoked (superseded, on the revocation list; a card revoked before keeps its
/// state), its other pending renewals are revoked, and a `renewal` event (time, device
/// and user of `cause`, the event of the use that completes it) is appended. Returns
/// whether one was pending. The caller records `new`'s card.
fn complete_renewal(
    connection: &Connection,
    new: &CardId,
    cause: &NewAuditEvent,
) -> Result<bool, StoreError> {
    let Some(old) = pending_predecessor(connection, new)? else {
        return Ok(false);
    };
    let now = encode_time(cause.time)?;
    connection
        .prepare_cached(
            "UPDATE cards SET state = 'revoked' WHERE issuer = ? AND serial = ? AND state <> 'revoked'",
        )?
        .execute(params![old.issuer, old.serial])?;
    add_revocation(connection, &old, RevocationReason::Superseded, &now)?;
    revoke_pending_renewals(
        connection,
        &old,
        Some(new),
        RevocationReason::Superseded,
        &now,
    )?;
    connection
        .prepare_cached("DELETE FROM pending_renewals WHERE issuer = ? AND serial = ?")?
        .execute(params![new.issuer, new.serial])?;
    insert_audit(
        connection,
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
    )?;
    Ok(true)
}

/// Revokes (and forgets) the pending renewals of `old`, but for `except`.
fn revoke_pending_renewals(
    connection: &Connection,
    old: &CardId,
    except: Option<&CardId>,
    reason: RevocationReason,
    revoked_at: &str,
) -> Result<(), StoreError> {
    let pending: Vec<CardId> = connection
        .prepare_cached(
            "SELECT issuer, serial FROM pending_renewals WHERE old_issuer = ? AND old_serial = ?",
        )?
        .query_map(params![old.issuer, old.serial], |row| {
            Ok(CardId {
                issuer: row.get(0)?,
                serial: row.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    for new in pending.iter().filter(|new| Some(*new) != except) {
        add_revocation(connection, new, reason, revoked_at)?;
        connection
            .prepare_cached("DELETE FROM pending_renewals WHERE issuer = ? AND serial = ?")?
            .execute(params![new.issuer, new.serial])?;
    }
    Ok(())
}

fn use_challenge(
    connection: &Connection,
    nonce: &str,
    device: &str,
    now: OffsetDateTime,
) -> Result<ChallengeUse, StoreError> {
    let now = encode_time(now)?;
    // The single atomic step: only one caller can turn `used_at` from NULL.
    let changed = connection
        .prepare_cached(
            "UPDATE challenges SET used_at = ?1
             WHERE nonce = ?2 AND device = ?3 AND used_at IS NULL AND expires_at > ?1",
        )?
        .execute(params![now, nonce, device])?;
    if changed > 0 {
        return Ok(ChallengeUse::Accepted);
    }
    // Refused: read why. Challenges only ever move towards refusal, so the
    // answer cannot contradict the UPDATE.
    let stored: Option<(String, Option<String>)> = connection
        .prepare_cached("SELECT device, used_at FROM challenges WHERE nonce = ?")?
        .query_row([nonce], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((issued_to, used_at)) = stored else {
        return Ok(ChallengeUse::Unknown);
    };
    Ok(if issued_to != device {
        ChallengeUse::OtherDevice
    } else if used_at.is_some() {
        ChallengeUse::Reused
    } else {
        ChallengeUse::Expired
    })
}

fn revocation(
    connection: &Connection,
    id: &CardId,
) -> Result<Option<RevokedCertificate>, StoreError> {
    // An entry without its issuer (before version 4) counts for every issuer.
    connection
        .prepare_cached(
            "SELECT issuer, serial, revoked_at, reason FROM revoked_certificates
             WHERE serial = ?1 AND issuer IN (?2, '') ORDER BY issuer DESC LIMIT 1",
        )?
        .query_row(params![id.serial, id.issuer], revoked_from_row)
        .optional()?
        .transpose()
}

/// Puts a certificate on the revocation list; one already there keeps its entry.
fn add_revocation(
    connection: &Connection,
    id: &CardId,
    reason: RevocationReason,
    revoked_at: &str,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO revoked_certificates (issuer, serial, revoked_at, reason)
             VALUES (?, ?, ?, ?) ON CONFLICT (issuer, serial) DO NOTHING",
        )?
        .execute(params![id.issuer, id.serial, revoked_at, reason.as_str()])?;
    Ok(())
}

/// Deletes the challenges given to `device` that were not used (used ones stay, so a
/// replay is still told apart).
fn delete_unused_challenges(connection: &Connection, device: &str) -> Result<(), StoreError> {
    connection
        .prepare_cached("DELETE FROM challenges WHERE device = ? AND used_at IS NULL")?
        .execute([device])?;
    Ok(())
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Device, StoreError>> {
    let id: String = row.get(0)?;
    let state: String = row.get(1)?;
    let created_at: String = row.get(2)?;
    let code_expires_at: String = row.get(3)?;
    let code_used_at: Option<String> = row.get(4)?;
    let certificate: Option<Vec<u8>> = row.get(5)?;
    let serial: Option<String> = row.get(6)?;
    let fingerprint: Option<String> = row.get(7)?;
    let not_after: Option<String> = row.get(8)?;
    Ok((|| {
        let credential = match (certificate, serial, fingerprint, not_after) {
            (Some(certificate), Some(serial), Some(fingerprint), Some(not_after)) => {
                Some(DeviceCredentialRecord {
                    certificate,
                    serial,
                    fingerprint,
                    not_after: decode_time("not_after", &not_after)?,
                })
            }
            _ => None,
        };
        Ok(Device {
            id,
            state: decode_state("state", &state)?,
            created_at: decode_time("created_at", &created_at)?,
            code_expires_at: decode_time("code_expires_at", &code_expires_at)?,
            code_used_at: code_used_at
                .map(|text| decode_time("code_used_at", &text))
                .transpose()?,
            credential,
        })
    })())
}

fn insert_audit(connection: &Connection, event: &NewAuditEvent) -> Result<(), StoreError> {
    let event = event.bounded();
    connection
        .prepare_cached(
            "INSERT INTO audit (time, kind, outcome, device, card_serial, user_id, detail)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            encode_time(event.time)?,
            event.kind.as_str(),
            event.outcome.as_str(),
            event.device,
            event.card_serial,
            event.user_id,
            event.detail,
        ])?;
    Ok(())
}

/// Every row of `statement` run with `params`, each read by `read`.
fn collect_rows<T>(
    statement: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    read: fn(&Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
) -> Result<Vec<T>, StoreError> {
    let mut rows = Vec::new();
    for row in statement.query_map(params, read)? {
        rows.push(row??);
    }
    Ok(rows)
}

// The row readers answer in two layers: SQLite's own errors (a missing column, a wrong
// type) outside, this program's (an unreadable time or state) inside.

fn admin_credential_from_row(
    row: &Row<'_>,
) -> rusqlite::Result<Result<AdminCredential, StoreError>> {
    let created_at: String = row.get("created_at")?;
    let revoked_at: Option<String> = row.get("revoked_at")?;
    let (name, token_hash) = (row.get("name")?, row.get("token_hash")?);
    Ok((|| {
        Ok(AdminCredential {
            name,
            token_hash,
            created_at: decode_time("created_at", &created_at)?,
            revoked_at: revoked_at
                .map(|text| decode_time("revoked_at", &text))
                .transpose()?,
        })
    })())
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<Result<User, StoreError>> {
    let state: String = row.get("state")?;
    Ok(Ok(User {
        id: row.get("id")?,
        display_name: row.get("display_name")?,
        mail: row.get("mail")?,
        upn: row.get("upn")?,
        employee_id: row.get("employee_id")?,
        state: match decode_state("state", &state) {
            Ok(state) => state,
            Err(error) => return Ok(Err(error)),
        },
    }))
}

fn card_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Card, StoreError>> {
    let state: String = row.get("state")?;
    let first_seen: String = row.get("first_seen")?;
    let last_seen: String = row.get("last_seen")?;
    let serial = row.get("serial")?;
    let fingerprint = row.get("fingerprint")?;
    let issuer = row.get("issuer")?;
    let subject = row.get("subject")?;
    let user_id = row.get("user_id")?;
    Ok((|| {
        Ok(Card {
            serial,
            fingerprint,
            issuer,
            subject,
            user_id,
            state: decode_state("state", &state)?,
            first_seen: decode_time("first_seen", &first_seen)?,
            last_seen: decode_time("last_seen", &last_seen)?,
        })
    })())
}

/// Registers an issued certificate's card (active, for its user), inside the caller's write.
fn register_card(
    connection: &Connection,
    issued: &IssuedCertificate,
    now: &str,
) -> Result<(), StoreError> {
    let facts = &issued.facts;
    let inserted = connection
        .prepare_cached(
            "INSERT INTO cards (serial, fingerprint, issuer, subject, user_id, state, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?6)",
        )?
        .execute(params![
            facts.serial,
            facts.fingerprint,
            facts.issuer,
            facts.subject,
            issued.user_id,
            now
        ]);
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

/// Registers a certificate this server issued (what its CRL covers), inside the caller's
/// write.
fn insert_issued(
    connection: &Connection,
    issued: &IssuedCertificate,
    now: &str,
) -> Result<(), StoreError> {
    let facts = &issued.facts;
    let not_after = encode_time(facts.not_after)?;
    let inserted = connection
        .prepare_cached(
            "INSERT INTO issued_certificates
                 (issuer, serial, fingerprint, user_id, issued_at, not_after, card_serial_number, chuid_guid)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            facts.issuer,
            facts.serial,
            facts.fingerprint,
            issued.user_id,
            now,
            not_after,
            issued.card_serial_number.map(i64::from),
            issued.chuid_guid,
        ]);
    match inserted {
        Err(error) if is_unique_violation(&error) => Err(StoreError::Conflict {
            what: format!("certificate {} exists already", CardId::of(facts)),
        }),
        other => other.map(drop).map_err(StoreError::from),
    }
}

fn enrollment_code_from_row(
    row: &Row<'_>,
) -> rusqlite::Result<Result<EnrollmentCodeRecord, StoreError>> {
    let created_at: String = row.get("created_at")?;
    let expires_at: String = row.get("expires_at")?;
    let used_at: Option<String> = row.get("used_at")?;
    let code_hash = row.get("code_hash")?;
    let user_id = row.get("user_id")?;
    let used_by = row.get("used_by")?;
    Ok((|| {
        Ok(EnrollmentCodeRecord {
            code_hash,
            user_id,
            created_at: decode_time("created_at", &created_at)?,
            expires_at: decode_time("expires_at", &expires_at)?,
            used_at: used_at
                .map(|text| decode_time("used_at", &text))
                .transpose()?,
            used_by,
        })
    })())
}

fn revoked_from_row(row: &Row<'_>) -> rusqlite::Result<Result<RevokedCertificate, StoreError>> {
    let issuer = row.get("issuer")?;
    let serial = row.get("serial")?;
    let revoked_at: String = row.get("revoked_at")?;
    let reason: String = row.get("reason")?;
    Ok((|| {
        Ok(RevokedCertificate {
            issuer,
            serial,
            revoked_at: decode_time("revoked_at", &revoked_at)?,
            reason: reason
                .parse::<RevocationReason>()
                .map_err(|error| column_error("reason", error))?,
        })
    })())
}

fn audit_event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<AuditEvent, StoreError>> {
    let time: String = row.get("time")?;
    let id = row.get("id")?;
    let kind: String = row.get("kind")?;
    let outcome: String = row.get("outcome")?;
    let device = row.get("device")?;
    let card_serial = row.get("card_serial")?;
    let user_id = row.get("user_id")?;
    let detail = row.get("detail")?;
    Ok((|| {
        Ok(AuditEvent {
            id,
            time: decode_time("time", &time)?,
            kind: kind.parse().map_err(|error| column_error("kind", error))?,
            outcome: outcome
                .parse()
                .map_err(|error| column_error("outcome", error))?,
            device,
            card_serial,
            user_id,
            detail,
        })
    })())
}

/// A time as stored: UTC, whole microseconds, fixed width.
pub(super) fn encode_time(time: OffsetDateTime) -> Result<String, StoreError> {
    let utc = time
        .checked_to_offset(UtcOffset::UTC)
        .filter(|utc| (0..=9999).contains(&utc.year()))
        .ok_or(StoreError::Database(DatabaseError::TimeOutOfRange))?;
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.microsecond()
    ))
}

pub(super) fn decode_time(column: &str, text: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|error| column_error(column, error))
}

fn decode_state<S>(column: &str, text: &str) -> Result<S, StoreError>
where
    S: FromStr<Err = super::InvalidState>,
{
    text.parse().map_err(|error| column_error(column, error))
}

fn column_error(column: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(DatabaseError::Column {
        column: column.to_owned(),
        reason: error.to_string(),
    })
}

/// The extended result code of a constraint violation, if `error` is one.
fn constraint_violation(error: &rusqlite::Error) -> Option<std::ffi::c_int> {
    match error {
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Some(failure.extended_code)
        }
        _ => None,
    }
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    constraint_violation(error).is_some_and(|code| {
        code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    })
}

fn is_foreign_key_violation(error: &rusqlite::Error) -> bool {
    constraint_violation(error) == Some(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use time::Duration as TimeSpan;

    use super::*;
    use crate::store::conformance::{at, challenge_event, event, facts, id, nonce, user};

    /// The shared [`Store`] suite on SQLite: in memory, and two nodes on one file.
    mod conformance {
        use std::sync::Arc;

        use super::SqliteStore;
        use crate::store::{Store, StoreError};

        async fn fresh() -> Result<((), Arc<dyn Store>), StoreError> {
            Ok(((), Arc::new(SqliteStore::in_memory().await?)))
        }

        async fn nodes() -> Result<
            (tempfile::TempDir, [Arc<dyn Store>; 2]),
            Box<dyn std::error::Error + Send + Sync>,
        > {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("pivtap.db");
            let first = SqliteStore::open(&path).await?;
            let second = SqliteStore::open(&path).await?;
            Ok((dir, [Arc::new(first), Arc::new(second)]))
        }

        crate::store_conformance_suite! { fresh: fresh(), nodes: nodes() }
    }

    type TestResult = Result<(), Box<dyn Error>>;
    async fn migration_versions(store: &SqliteStore) -> Result<Vec<i64>, StoreError> {
        store
            .database
            .read(|connection| {
                let mut statement =
                    connection.prepare("SELECT version FROM schema_migrations ORDER BY version")?;
                let versions = statement
                    .query_map([], |row| row.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok(versions)
            })
            .await
    }

    /// One value a statement reads, on a reader connection.
    async fn read_value<T: rusqlite::types::FromSql + Send + 'static>(
        store: &SqliteStore,
        sql: &'static str,
    ) -> Result<T, StoreError> {
        store
            .database
            .read(move |connection| Ok(connection.query_row(sql, [], |row| row.get(0))?))
            .await
    }

    /// Runs a statement on the writer.
    async fn execute(store: &SqliteStore, sql: &'static str) -> Result<(), StoreError> {
        store
            .database
            .write(move |connection| Ok(connection.execute_batch(sql)?))
            .await
    }

    #[tokio::test]
    async fn migrations_apply_once_however_often_the_file_is_opened() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pivtap.db");
        let first = SqliteStore::open(&path).await?;
        let (second, third) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
        let (second, third) = (second?, third?);
        let every: Vec<i64> = MIGRATIONS.iter().map(|(version, _)| *version).collect();
        assert_eq!(every[..3], [1, 2, 3]);
        for store in [&first, &second, &third] {
            assert_eq!(migration_versions(store).await?, every);
        }
        let journal_mode: String = read_value(&first, "PRAGMA journal_mode").await?;
        assert_eq!(journal_mode, "wal");
        let foreign_keys: i64 = read_value(&second, "PRAGMA foreign_keys").await?;
        assert_eq!(foreign_keys, 1);
        Ok(())
    }

    /// Issue 11, item 9: users sharing a mapped attribute in a database from before the
    /// uniqueness checks are kept and listed; a new user with such a value is refused.
    #[tokio::test]
    async fn users_sharing_a_mapped_attribute_are_listed_and_no_more_are_added() -> TestResult {
        let store = SqliteStore::in_memory().await?;
        execute(
            &store,
            "INSERT INTO users (id, display_name, mail, upn, employee_id, state, created_at) VALUES
                 ('alice', 'Alice', 'alice@example.com', NULL, 'E-1', 'active', '2026-01-01T00:00:00.000000Z'),
                 ('mallory', 'Mallory', 'ALICE@example.com', NULL, 'E-2', 'active', '2026-01-01T00:00:00.000000Z'),
                 ('bob', 'Bob', 'bob@example.com', 'bob@corp', 'E-1', 'active', '2026-01-01T00:00:00.000000Z'),
                 ('carol', 'Carol', 'carol@example.com', 'BOB@CORP', 'e-1', 'active', '2026-01-01T00:00:00.000000Z')",
        )
        .await?;
        let conflicts = store.user_conflicts().await?;
        let listed: Vec<(UserAttribute, Vec<&str>)> = conflicts
            .iter()
            .map(|c| (c.attribute, c.user_ids.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            listed,
            [
                (UserAttribute::Mail, vec!["alice", "mallory"]),
                (UserAttribute::Upn, vec!["bob", "carol"]),
                (UserAttribute::EmployeeId, vec!["alice", "bob"]),
            ]
        );
        let user = |id: &str, mail: &str| User {
            id: id.to_owned(),
            display_name: id.to_owned(),
            mail: Some(mail.to_owned()),
            upn: None,
            employee_id: None,
            state: UserState::Active,
        };
        match store.add_user(&user("eve", "Alice@Example.COM")).await {
            Err(StoreError::AttributeTaken { attribute, holder }) => {
                assert_eq!(attribute, UserAttribute::Mail);
                assert_eq!(holder, "alice");
            }
            other => panic!("{other:?}"),
        }
        store.add_user(&user("dave", "dave@example.com")).await?;
        assert_eq!(store.user_conflicts().await?.len(), 3);
        Ok(())
    }

    /// Item 13 of issue 11: a sign-in is answered only after its commit, and the commit
    /// must survive an operating-system crash or power cut: the writer runs
    /// `synchronous = FULL` (2), which in WAL mode syncs the log on every commit.
    #[tokio::test]
    async fn the_writer_syncs_every_commit_to_disk() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("pivtap.db")).await?;
        let writer: i64 = store
            .database
            .write(|connection| {
                Ok(connection.query_row("PRAGMA synchronous", [], |row| row.get(0))?)
            })
            .await?;
        assert_eq!(writer, 2, "PRAGMA synchronous on the writer (2 = FULL)");
        Ok(())
    }

    #[tokio::test]
    async fn compacting_empties_the_write_ahead_log() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pivtap.db");
        let store = SqliteStore::open(&path).await?;
        for index in 0..200 {
            store
                .audit(NewAuditEvent {
                    time: OffsetDateTime::UNIX_EPOCH,
                    kind: AuditKind::Challenge,
                    outcome: AuditOutcome::Ok,
                    device: Some(format!("kiosk-{index}")),
                    card_serial: None,
                    user_id: None,
                    detail: None,
                })
                .await?;
        }
        let wal = dir.path().join("pivtap.db-wal");
        assert!(std::fs::metadata(&wal)?.len() > 0, "writes went to the log");
        store.compact().await?;
        assert_eq!(std::fs::metadata(&wal)?.len(), 0);
        let events = store.query_audit(&AuditQuery::default()).await?;
        assert_eq!(events.len(), 100, "the data stays, in the database");
        Ok(())
    }

    #[tokio::test]
    async fn a_database_from_a_newer_program_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pivtap.db");
        let store = SqliteStore::open(&path).await?;
        // One above the newest this program knows.
        execute(
            &store,
            "INSERT INTO schema_migrations (version, applied_at)
             SELECT max(version) + 1, 'x' FROM schema_migrations",
        )
        .await?;
        store.close().await;
        let newer = MIGRATIONS.last().map_or(0, |(version, _)| *version) + 1;
        let reopened = SqliteStore::open(&path).await;
        assert!(
            matches!(&reopened, Err(StoreError::Conflict { what }) if what.contains(&format!("schema version {newer}"))),
            "{reopened:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_reopened_database_keeps_its_data() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pivtap.db");
        let store = SqliteStore::open(&path).await?;
        store.add_user(&user("alice", "alice@example.org")).await?;
        let card = store
            .record_card(&facts("0a1b", "f1"), Some("alice"), at(0))
            .await?;
        store
            .add_challenge(
                &nonce("nonce-1"),
                "kiosk-1",
                at(60),
                challenge_event("kiosk-1"),
            )
            .await?;
        store
            .audit(event(0, AuditOutcome::Ok, "kiosk-1", "0a1b", "alice"))
            .await?;
        store.close().await;

        let reopened = SqliteStore::open(&path).await?;
        assert_eq!(
            reopened.get_user("alice").await?,
            Some(user("alice", "alice@example.org"))
        );
        assert_eq!(reopened.get_card(&id("0a1b")).await?, Some(card));
        assert_eq!(
            reopened
                .use_challenge(nonce("nonce-1").as_str(), "kiosk-1", at(1))
                .await?,
            ChallengeUse::Accepted
        );
        assert_eq!(
            reopened.query_audit(&AuditQuery::default()).await?.len(),
            2,
            "the challenge's event and the other one"
        );
        Ok(())
    }

    /// A database from before the uniqueness checks (issue 11, item 9) may hold two users
    /// with one mail; a lookup finds both. (The rest of the lookups are the shared suite's
    /// `users_are_found_by_each_attribute`.)
    #[tokio::test]
    async fn users_sharing_a_mail_from_before_the_checks_are_both_found() -> TestResult {
        let store = SqliteStore::in_memory().await?;
        store.add_user(&user("bob", "bob@example.org")).await?;
        execute(
            &store,
            "INSERT INTO users (id, display_name, mail, state, created_at)
             VALUES ('robert', 'robert display', 'BOB@example.org', 'active', '2026-01-01T00:00:00.000000Z')",
        )
        .await?;
        let ids: Vec<String> = store
            .find_users(UserAttribute::Mail, "bob@example.org")
            .await?
            .into_iter()
            .map(|user| user.id)
            .collect();
        assert_eq!(ids, ["bob", "robert"]);
        Ok(())
    }

    /// A database at `path` with the first `version` migrations applied, as an older pivtap
    /// left it, for the tests that upgrade one.
    fn database_at_version(path: &Path, version: usize) -> rusqlite::Result<Connection> {
        let mut connection = Connection::open(path)?;
        connection.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY NOT NULL, applied_at TEXT NOT NULL) STRICT",
        )?;
        for (version, sql) in &MIGRATIONS[..version] {
            let transaction = connection.transaction()?;
            transaction.execute_batch(sql)?;
            transaction.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, 'x')",
                [version],
            )?;
            transaction.commit()?;
        }
        Ok(connection)
    }

    #[tokio::test]
    async fn version_4_keys_existing_cards_and_revocations_by_issuer() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("old.db");
        // A version 3 database with an issued card, a revoked and deleted issued
        // certificate, and a card seen at sign-in from another CA.
        {
            let connection = database_at_version(&path, 3)?;
            connection.execute_batch(
                "INSERT INTO users (id, display_name, state, created_at) VALUES ('alice', 'A', 'active', 'x');
                 INSERT INTO cards VALUES ('01', 'f1', 'CN=pivtap CA', 'CN=a', 'alice', 'active', '2023-11-14T22:13:20.000000Z', '2023-11-14T22:13:20.000000Z');
                 INSERT INTO cards VALUES ('0e', 'f2', 'CN=Other CA', 'CN=a', 'alice', 'revoked', '2023-11-14T22:13:20.000000Z', '2023-11-14T22:13:20.000000Z');
                 INSERT INTO issued_certificates VALUES ('01', 'f1', 'alice', '2023-11-14T22:13:20.000000Z', '2024-11-14T22:13:20.000000Z', NULL, NULL);
                 INSERT INTO issued_certificates VALUES ('02', 'f3', 'alice', '2023-11-14T22:13:20.000000Z', '2024-11-14T22:13:20.000000Z', NULL, NULL);
                 INSERT INTO revoked_certificates VALUES ('02', '2023-11-14T22:13:20.000000Z', 'superseded');
                 INSERT INTO revoked_certificates VALUES ('0e', '2023-11-14T22:13:20.000000Z', 'unspecified');
                 INSERT INTO revoked_certificates VALUES ('77', '2023-11-14T22:13:20.000000Z', 'unspecified');",
            )?;
        }
        let store = SqliteStore::open(&path).await?;
        assert_eq!(
            migration_versions(&store).await?,
            MIGRATIONS
                .iter()
                .map(|(version, _)| *version)
                .collect::<Vec<_>>()
        );
        let card = |issuer: &str, serial: &str| CardId {
            issuer: issuer.to_owned(),
            serial: serial.to_owned(),
        };
        let cards = store.list_cards().await?;
        assert_eq!(cards.len(), 2);
        assert_eq!(cards[0].id(), card("CN=pivtap CA", "01"));
        // The deleted issued certificate got its issuer from the other issued one's card.
        let crl: Vec<_> = store
            .revoked_issued_certificates("CN=pivtap CA")
            .await?
            .into_iter()
            .map(|revoked| (revoked.issuer, revoked.serial))
            .collect();
        assert_eq!(crl, [("CN=pivtap CA".to_owned(), "02".to_owned())]);
        assert!(
            store
                .revocation(&card("CN=Other CA", "0e"))
                .await?
                .is_some()
        );
        assert!(
            store
                .revocation(&card("CN=pivtap CA", "0e"))
                .await?
                .is_none()
        );
        // Unknown issuer: revoked for every issuer.
        assert!(store.revocation(&card("CN=Any", "77")).await?.is_some());
        Ok(())
    }

    #[tokio::test]
    async fn audit_queries_by_user_or_card_use_their_partial_indexes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("pivtap.db")).await?;
        for (column, index) in [
            ("user_id", "audit_user_id"),
            ("card_serial", "audit_card_serial"),
        ] {
            // The statement query_audit builds for this filter.
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT id, time, kind, outcome, device, card_serial, user_id, detail \
                 FROM audit WHERE 1 = 1 AND {column} = ? ORDER BY time DESC, id DESC LIMIT ?"
            );
            let plan: Vec<String> = store
                .database
                .read(move |connection| {
                    let mut statement = connection.prepare(&sql)?;
                    let details = statement
                        .query_map(params!["x", 10], |row| row.get::<_, String>(3))?
                        .collect::<Result<_, _>>()?;
                    Ok(details)
                })
                .await?;
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "{column}: {plan:?}"
            );
        }
        Ok(())
    }

    /// Issue 12: version 7 widens the revocation list's reasons and keeps its rows (and
    /// their reasons); version 8 adds the admin credentials, none stored at first.
    #[tokio::test]
    async fn versions_7_and_8_keep_the_revocation_list() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("v6.db");
        {
            let connection = database_at_version(&path, 6)?;
            connection.execute_batch(
                "INSERT INTO revoked_certificates VALUES ('CN=Test CA', '0a', '2023-11-14T22:13:20.000000Z', 'superseded');
                 INSERT INTO revoked_certificates VALUES ('', '0b', '2023-11-14T22:13:20.000000Z', 'unspecified');",
            )?;
        }
        let store = SqliteStore::open(&path).await?;
        let versions = migration_versions(&store).await?;
        assert!(
            versions.contains(&7) && versions.contains(&8),
            "{versions:?}"
        );
        assert_eq!(versions.last(), Some(&newest_known_version()));
        assert_eq!(
            store.revocation(&id("0a")).await?.map(|r| r.reason),
            Some(RevocationReason::Superseded)
        );
        assert_eq!(
            store
                .revocation(&id("0b"))
                .await?
                .map(|r| (r.issuer, r.reason)),
            Some((String::new(), RevocationReason::Unspecified))
        );
        assert!(store.admin_credentials().await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn the_size_counts_the_database_file_and_its_write_ahead_log() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pivtap.db");
        let store = SqliteStore::open(&path).await?;
        store
            .audit(event(0, AuditOutcome::Ok, "kiosk-1", "0a", "alice"))
            .await?;
        let wal = std::fs::metadata(dir.path().join("pivtap.db-wal"))?.len();
        assert!(wal > 0);
        assert_eq!(
            store.size_bytes(),
            Some(std::fs::metadata(&path)?.len() + wal)
        );
        Ok(())
    }

    #[test]
    fn stored_times_have_a_fixed_width_that_sorts_like_the_times() -> TestResult {
        let whole = at(0);
        let fraction = whole + TimeSpan::nanoseconds(500_000_999);
        let (whole_text, fraction_text) = (encode_time(whole)?, encode_time(fraction)?);
        assert_eq!(whole_text, "2023-11-14T22:13:20.000000Z");
        assert_eq!(fraction_text, "2023-11-14T22:13:20.500000Z");
        assert!(whole_text < fraction_text);
        assert_eq!(
            OffsetDateTime::parse(&fraction_text, &Rfc3339)?,
            whole + TimeSpan::microseconds(500_000),
            "kept to the microsecond"
        );

        let in_paris = fraction.to_offset(UtcOffset::from_hms(1, 0, 0)?);
        assert_eq!(encode_time(in_paris)?, fraction_text);

        let before_year_zero = OffsetDateTime::new_utc(
            time::Date::from_calendar_date(-1, time::Month::January, 1)?,
            time::Time::MIDNIGHT,
        );
        assert!(matches!(
            encode_time(before_year_zero),
            Err(StoreError::Database(DatabaseError::TimeOutOfRange))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn unreadable_stored_values_are_database_errors() -> TestResult {
        let store = SqliteStore::in_memory().await?;
        store.record_card(&facts("0a1b", "f1"), None, at(0)).await?;
        execute(&store, "UPDATE cards SET last_seen = 'yesterday'").await?;
        let result = store.get_card(&id("0a1b")).await;
        assert!(
            matches!(&result, Err(StoreError::Database(DatabaseError::Column { column, .. })) if column == "last_seen"),
            "{result:?}"
        );
        Ok(())
    }

    /// Audit rows are read back as the enums, from the same text as before; a kind or
    /// outcome no program wrote is a database error naming the column.
    #[tokio::test]
    async fn audit_kinds_and_outcomes_read_from_their_stored_text() -> TestResult {
        let store = SqliteStore::in_memory().await?;
        execute(
            &store,
            "INSERT INTO audit (time, kind, outcome) VALUES
                 ('2026-01-01T00:00:00.000000Z', 'device-enrollment', 'device_proof_invalid'),
                 ('2026-01-01T00:00:01.000000Z', 'rate_limit', 'ok')",
        )
        .await?;
        let read: Vec<(AuditKind, AuditOutcome)> = store
            .query_audit(&AuditQuery::default())
            .await?
            .into_iter()
            .map(|event| (event.kind, event.outcome))
            .collect();
        assert_eq!(
            read,
            [
                (AuditKind::RateLimit, AuditOutcome::Ok),
                (
                    AuditKind::DeviceEnrollment,
                    pivtap_protocol::wire::ErrorCode::DeviceProofInvalid.into()
                ),
            ]
        );
        for (update, column) in [
            ("UPDATE audit SET kind = 'Sign_Out'", "kind"),
            (
                "UPDATE audit SET kind = 'admin', outcome = 'fine'",
                "outcome",
            ),
        ] {
            execute(&store, update).await?;
            let result = store.query_audit(&AuditQuery::default()).await;
            assert!(
                matches!(&result, Err(StoreError::Database(DatabaseError::Column { column: c, .. })) if c == column),
                "{result:?}"
            );
        }
        Ok(())
    }
}
