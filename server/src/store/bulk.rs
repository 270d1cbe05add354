//! Bulk copies between stores: the one list of the tables a copy carries ([`TABLES`]), rows written in one transaction (SQLite: a prepared `INSERT`; PostgreSQL: binary `COPY`), and [`migrate_store`].
//!
//! A writer ([`load`]) takes a [`Feed`]: for each table its columns, rows in batches, and
//! an end that may carry the number of rows the source holds and the identity counter to
//! continue from. Everything goes in one transaction that also checks, before it commits,
//! that every table holds what it held before plus what was written (and, where the feed
//! says, exactly the source's count); a feed that stops without [`Feed::Done`] writes
//! nothing.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rusqlite::Connection;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::sqlite::{decode_time, encode_time};
use super::url::{OpenStoreError, StorePassword, StoreUrl};
use super::{PostgresStore, SqliteStore, StoreError};
use crate::backup::ServerLock;

/// How a column's values are stored (SQLite type / PostgreSQL type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `TEXT` / `text`.
    Text,
    /// RFC 3339 `TEXT` / `timestamptz`.
    Time,
    /// `BLOB` / `bytea`.
    Bytes,
    /// `INTEGER` / `bigint`.
    BigInt,
    /// `INTEGER` / `integer`.
    Int,
}

impl Kind {
    fn postgres_type(self) -> Type {
        match self {
            Kind::Text => Type::TEXT,
            Kind::Time => Type::TIMESTAMPTZ,
            Kind::Bytes => Type::BYTEA,
            Kind::BigInt => Type::INT8,
            Kind::Int => Type::INT4,
        }
    }
}

/// A column of a [`Table`].
#[derive(Debug)]
pub struct Column {
    /// Its name, the same in every store.
    pub name: &'static str,
    /// How its values are stored.
    pub kind: Kind,
}

const fn column(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

/// Whether a copy carries a table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// Every row.
    Rows,
    /// None, for the reason given.
    LeftOut(&'static str),
}

/// A table of the store's schema, as a bulk copy sees it.
#[derive(Debug)]
pub struct Table {
    /// Its name, the same in every store.
    pub name: &'static str,
    /// Every column, in the order copies write them.
    pub columns: &'static [Column],
    /// Whether the first column is an identity the database numbers (audit ids): a copy
    /// keeps the source's numbers and counter, new rows leave it out.
    pub identity: bool,
    /// Whether copies carry its rows.
    pub carried: Carried,
}

impl Table {
    /// The columns a new row gives (every column but an identity).
    #[must_use]
    pub fn new_row_columns(&self) -> &'static [Column] {
        if self.identity {
            &self.columns[1..]
        } else {
            self.columns
        }
    }
}

/// Every table of the schema (both stores have the same tables and columns), in an order
/// that inserts a row after the rows it refers to. The one place a bulk copy learns the
/// schema: a new table or column goes here (a test compares it with both schemas).
pub const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            column("id", Kind::Text),
            column("display_name", Kind::Text),
            column("mail", Kind::Text),
            column("upn", Kind::Text),
            column("employee_id", Kind::Text),
            column("state", Kind::Text),
            column("created_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "cards",
        columns: &[
            column("issuer", Kind::Text),
            column("serial", Kind::Text),
            column("fingerprint", Kind::Text),
            column("subject", Kind::Text),
            column("user_id", Kind::Text),
            column("state", Kind::Text),
            column("first_seen", Kind::Time),
            column("last_seen", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "challenges",
        columns: &[
            column("nonce", Kind::Text),
            column("device", Kind::Text),
            column("issued_at", Kind::Time),
            column("expires_at", Kind::Time),
            column("used_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::LeftOut(
            "challenges live seconds and the source server is stopped: kiosks ask the new store for new ones, \
             and an assertion for a challenge the new store never issued is refused",
        ),
    },
    Table {
        name: "audit",
        columns: &[
            column("id", Kind::BigInt),
            column("time", Kind::Time),
            column("kind", Kind::Text),
            column("outcome", Kind::Text),
            column("device", Kind::Text),
            column("card_serial", Kind::Text),
            column("user_id", Kind::Text),
            column("detail", Kind::Text),
        ],
        identity: true,
        carried: Carried::Rows,
    },
    Table {
        name: "enrollment_codes",
        columns: &[
            column("code_hash", Kind::Text),
            column("user_id", Kind::Text),
            column("created_at", Kind::Time),
            column("expires_at", Kind::Time),
            column("used_at", Kind::Time),
            column("used_by", Kind::Text),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "issued_certificates",
        columns: &[
            column("issuer", Kind::Text),
            column("serial", Kind::Text),
            column("fingerprint", Kind::Text),
            column("user_id", Kind::Text),
            column("issued_at", Kind::Time),
            column("not_after", Kind::Time),
            column("card_serial_number", Kind::BigInt),
            column("chuid_guid", Kind::Text),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "revoked_certificates",
        columns: &[
            column("issuer", Kind::Text),
            column("serial", Kind::Text),
            column("revoked_at", Kind::Time),
            column("reason", Kind::Text),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "pending_renewals",
        columns: &[
            column("issuer", Kind::Text),
            column("serial", Kind::Text),
            column("old_issuer", Kind::Text),
            column("old_serial", Kind::Text),
            column("user_id", Kind::Text),
            column("certificate", Kind::Bytes),
            column("created_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "heartbeat",
        columns: &[column("id", Kind::Int), column("at", Kind::Time)],
        identity: false,
        carried: Carried::LeftOut(
            "the readiness check's last write: every node rewrites it while it runs",
        ),
    },
    Table {
        name: "devices",
        columns: &[
            column("id", Kind::Text),
            column("state", Kind::Text),
            column("created_at", Kind::Time),
            column("code_hash", Kind::Text),
            column("code_expires_at", Kind::Time),
            column("code_used_at", Kind::Time),
            column("certificate", Kind::Bytes),
            column("certificate_serial", Kind::Text),
            column("certificate_fingerprint", Kind::Text),
            column("not_after", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "admin_credentials",
        columns: &[
            column("name", Kind::Text),
            column("token_hash", Kind::Text),
            column("created_at", Kind::Time),
            column("revoked_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "flow_failures",
        columns: &[
            column("key", Kind::Text),
            column("count", Kind::Int),
            column("last_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "flow_budgets",
        columns: &[
            column("kind", Kind::Text),
            column("key", Kind::Text),
            column("horizon", Kind::BigInt),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "device_proofs",
        columns: &[column("id", Kind::Text), column("expires_at", Kind::Time)],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "token_keys",
        columns: &[
            column("id", Kind::Int),
            column("version", Kind::BigInt),
            column("keys", Kind::Text),
            column("updated_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "sessions",
        columns: &[
            column("id", Kind::Text),
            column("user_id", Kind::Text),
            column("device", Kind::Text),
            column("card_issuer", Kind::Text),
            column("card_serial", Kind::Text),
            column("amr", Kind::Text),
            column("created_at", Kind::Time),
            column("expires_at", Kind::Time),
            column("ended_at", Kind::Time),
            column("ended_reason", Kind::Text),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "session_refresh_tokens",
        columns: &[
            column("token_hash", Kind::Text),
            column("session_id", Kind::Text),
            column("client_id", Kind::Text),
            column("scope", Kind::Text),
            column("created_at", Kind::Time),
            column("replaced_at", Kind::Time),
            column("revoked_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "session_clients",
        columns: &[
            column("session_id", Kind::Text),
            column("client_id", Kind::Text),
            column("first_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "oidc_clients",
        columns: &[
            column("id", Kind::Text),
            column("secret_hash", Kind::Text),
            column("redirect_uris", Kind::Text),
            column("backchannel_logout_uri", Kind::Text),
            column("created_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "authorization_codes",
        columns: &[
            column("code_hash", Kind::Text),
            column("client_id", Kind::Text),
            column("session_id", Kind::Text),
            column("redirect_uri", Kind::Text),
            column("code_challenge", Kind::Text),
            column("scope", Kind::Text),
            column("nonce", Kind::Text),
            column("created_at", Kind::Time),
            column("expires_at", Kind::Time),
            column("used_at", Kind::Time),
        ],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "revoked_access_tokens",
        columns: &[column("jti", Kind::Text), column("expires_at", Kind::Time)],
        identity: false,
        carried: Carried::Rows,
    },
    Table {
        name: "logout_deliveries",
        columns: &[
            column("id", Kind::BigInt),
            column("session_id", Kind::Text),
            column("client_id", Kind::Text),
            column("uri", Kind::Text),
            column("user_id", Kind::Text),
            column("created_at", Kind::Time),
            column("attempts", Kind::Int),
            column("next_attempt_at", Kind::Time),
            column("delivered_at", Kind::Time),
            column("given_up_at", Kind::Time),
            column("last_error", Kind::Text),
        ],
        identity: true,
        carried: Carried::Rows,
    },
];

/// Tables of the schema that hold no deployment data: each store keeps its own.
pub const OWN_TABLES: &[&str] = &["schema_migrations"];

/// The table of [`TABLES`] named `name`.
#[must_use]
pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|table| table.name == name)
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `NULL`.
    Null,
    /// Text.
    Text(String),
    /// A time (UTC).
    Time(OffsetDateTime),
    /// Bytes.
    Bytes(Vec<u8>),
    /// An integer.
    Integer(i64),
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Text(text) => text.to_sql(ty, out),
            Value::Time(time) => time.to_sql(ty, out),
            Value::Bytes(bytes) => bytes.to_sql(ty, out),
            Value::Integer(integer) if *ty == Type::INT4 => {
                i32::try_from(*integer)?.to_sql(ty, out)
            }
            Value::Integer(integer) => integer.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::BYTEA,
            Type::INT8,
            Type::INT4,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

/// What a writer is fed, in order: per table a [`Feed::Table`], its [`Feed::Rows`], a
/// [`Feed::End`]; then [`Feed::Done`].
#[derive(Debug)]
pub enum Feed {
    /// The next table and the columns each of its rows gives, in order.
    Table {
        /// The table.
        table: &'static Table,
        /// Its columns the rows give (all, or [`Table::new_row_columns`]).
        columns: &'static [Column],
    },
    /// Rows of the current table, each one value per column.
    Rows(Vec<Vec<Value>>),
    /// The current table is complete.
    End {
        /// The rows the source holds: what was written must be exactly this many.
        source_rows: Option<u64>,
        /// The identity counter the table continues after (the highest id ever given).
        identity: Option<i64>,
    },
    /// Everything is fed: commit.
    Done,
}

/// Rows per [`Feed::Rows`] batch.
pub const BATCH_ROWS: usize = 1000;

/// Whether a load may go into a store that holds data already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Every table a copy carries must be empty.
    Refuse,
    /// The tables of the directory and its history must be empty; the state a server
    /// keeps for itself from its first start ([`SERVER_STATE_TABLES`]) may be there.
    RefuseDirectoryData,
    /// Rows are added to what is there.
    Add,
}

/// Tables a server fills for itself when it first starts or serves (its token keys, the
/// rate limit's counters, device proof ids): no directory data, so a store holding only
/// them counts as empty for [`Existing::RefuseDirectoryData`].
pub const SERVER_STATE_TABLES: &[&str] = &[
    "flow_failures",
    "flow_budgets",
    "device_proofs",
    "token_keys",
];

/// What a load did to one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Loaded {
    /// The table.
    pub table: &'static str,
    /// Rows it held before.
    pub before: u64,
    /// Rows written.
    pub written: u64,
    /// Rows it holds after (checked: `before + written`).
    pub after: u64,
}

/// Why a bulk copy failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// A store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target holds data and the load must go into an empty store.
    #[error(
        "the target store is not empty (table {table} holds {rows} rows): copy into a new, empty database \
         (createdb), or drop this one's tables first if it is a failed earlier copy"
    )]
    NotEmpty {
        /// The first table with rows.
        table: &'static str,
        /// Its rows.
        rows: u64,
    },
    /// A table does not hold what was written, or not what the source holds.
    #[error("table {table}: {expected} rows expected, {found} found; nothing was written")]
    CountMismatch {
        /// The table.
        table: &'static str,
        /// Rows it should hold.
        expected: u64,
        /// Rows it holds.
        found: u64,
    },
    /// The feed broke its order (rows outside a table, a row of the wrong width).
    #[error("bulk feed out of order: {0}")]
    Feed(&'static str),
    /// The feed stopped before [`Feed::Done`] (its own error says why).
    #[error("the rows stopped coming before the end; nothing was written")]
    FeedStopped,
    /// The source database does not exist.
    #[error("{} does not exist: give the SQLite database of the server to migrate (its server.toml's database)", .0.display())]
    NoSource(PathBuf),
    /// A server runs on the source.
    #[error(
        "a pivtap server is running on {}; stop it first (systemctl stop pivtap-server) so no sign-in happens \
         during the copy, and start the servers on the new store afterwards",
        .0.display()
    )]
    ServerRunning(PathBuf),
    /// The source's server lock cannot be taken.
    #[error("cannot lock {}: {source}", .path.display())]
    Lock {
        /// The database whose lock failed.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for BulkError {
    fn from(error: rusqlite::Error) -> Self {
        BulkError::Store(error.into())
    }
}

impl From<tokio_postgres::Error> for BulkError {
    fn from(error: tokio_postgres::Error) -> Self {
        BulkError::Store(error.into())
    }
}

/// A store a bulk load writes into.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// An SQLite store (its writer connection).
    Sqlite(&'a SqliteStore),
    /// A PostgreSQL store (a connection of its pool).
    Postgres(&'a PostgresStore),
}

/// A store opened by its URL, as its own type (for bulk work; [`super::url::open_store`]
/// hands it out as a [`Store`](super::Store)).
#[derive(Debug)]
pub enum BulkStore {
    /// SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PostgresStore),
}

impl BulkStore {
    /// Opens the store at `url` as the server would ([`super::url::open_store`]: the
    /// schema brought up to date, the password from `password_file` or the environment).
    ///
    /// # Errors
    /// [`OpenStoreError`].
    pub async fn open(
        url: &StoreUrl,
        password_file: Option<&Path>,
    ) -> Result<Self, OpenStoreError> {
        let opened = |without_password| {
            move |source| OpenStoreError::Store {
                without_password,
                url: url.to_string(),
                source,
            }
        };
        match url {
            StoreUrl::Sqlite(path) => {
                if password_file.is_some() {
                    return Err(OpenStoreError::PasswordForSqlite(path.clone()));
                }
                let store = SqliteStore::open(path).await.map_err(opened(false))?;
                Ok(BulkStore::Sqlite(store))
            }
            StoreUrl::Postgres(postgres) => {
                let password = StorePassword::locate(password_file)?;
                let store = PostgresStore::connect(postgres, password.as_ref())
                    .await
                    .map_err(opened(password.is_none()))?;
                Ok(BulkStore::Postgres(store))
            }
        }
    }

    /// The store behind the [`Store`](super::Store) interface.
    #[must_use]
    pub fn into_store(self) -> std::sync::Arc<dyn super::Store> {
        match self {
            BulkStore::Sqlite(store) => std::sync::Arc::new(store),
            BulkStore::Postgres(store) => std::sync::Arc::new(store),
        }
    }

    /// The store as a [`load`] target.
    #[must_use]
    pub fn target(&self) -> Target<'_> {
        match self {
            BulkStore::Sqlite(store) => Target::Sqlite(store),
            BulkStore::Postgres(store) => Target::Postgres(store),
        }
    }

    /// The bytes the store's data takes: SQLite's pages (the file once checkpointed),
    /// PostgreSQL's database (`pg_database_size`).
    ///
    /// # Errors
    /// [`BulkError::Store`].
    pub async fn size_bytes(&self) -> Result<u64, BulkError> {
        match self {
            BulkStore::Sqlite(store) => Ok(store
                .database
                .read(|connection| {
                    let pages: i64 =
                        connection.query_row("PRAGMA page_count", [], |row| row.get(0))?;
                    let size: i64 =
                        connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
                    Ok(u64::try_from(pages * size).unwrap_or(0))
                })
                .await?),
            BulkStore::Postgres(store) => {
                let client = store.client().await?;
                let bytes: i64 = client
                    .query_one("SELECT pg_database_size(current_database())", &[])
                    .await?
                    .try_get(0)?;
                Ok(u64::try_from(bytes).unwrap_or(0))
            }
        }
    }

    /// Rows in each table a copy carries.
    ///
    /// # Errors
    /// [`BulkError::Store`].
    pub async fn counts(&self) -> Result<Vec<(&'static str, u64)>, BulkError> {
        match self {
            BulkStore::Sqlite(store) => Ok(store
                .database
                .read(|connection| {
                    carried_tables()
                        .map(|table| {
                            let rows: i64 = connection.query_row(
                                &format!("SELECT count(*) FROM {}", table.name),
                                [],
                                |row| row.get(0),
                            )?;
                            Ok((table.name, u64::try_from(rows).unwrap_or(0)))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()
                })
                .await?),
            BulkStore::Postgres(store) => {
                let client = store.client().await?;
                let mut counts = Vec::new();
                for table in carried_tables() {
                    counts.push((table.name, postgres_count(&client, table.name).await?));
                }
                Ok(counts)
            }
        }
    }

    /// Closes an SQLite store's connections once its writes are done (PostgreSQL's pool
    /// closes when the store goes).
    pub async fn close(&self) {
        if let BulkStore::Sqlite(store) = self {
            store.close().await;
        }
    }
}

/// The tables a copy carries.
fn carried_tables() -> impl Iterator<Item = &'static Table> {
    TABLES.iter().filter(|table| table.carried == Carried::Rows)
}

/// Writes what `feed` brings into `target` in one transaction (see the module
/// documentation), and returns what it did to each table fed, in order.
///
/// # Errors
/// [`BulkError`]; then nothing was written.
pub async fn load(
    target: Target<'_>,
    feed: mpsc::Receiver<Feed>,
    existing: Existing,
) -> Result<Vec<Loaded>, BulkError> {
    match target {
        Target::Sqlite(store) => {
            store
                .database
                .alone(move |connection| Ok(load_sqlite(connection, feed, existing)))
                .await?
        }
        Target::Postgres(store) => load_postgres(store, feed, existing).await,
    }
}

/// The table being written and what was written to it.
struct Current {
    table: &'static Table,
    columns: &'static [Column],
    written: u64,
}

/// Checks the end of a table and returns what the load did to it.
fn end_table(
    current: Current,
    before: &[(&'static str, u64)],
    after: u64,
    source_rows: Option<u64>,
) -> Result<Loaded, BulkError> {
    let before = before
        .iter()
        .find(|(name, _)| *name == current.table.name)
        .map_or(0, |(_, rows)| *rows);
    if let Some(expected) = source_rows
        && expected != current.written
    {
        return Err(BulkError::CountMismatch {
            table: current.table.name,
            expected,
            found: current.written,
        });
    }
    if after != before + current.written {
        return Err(BulkError::CountMismatch {
            table: current.table.name,
            expected: before + current.written,
            found: after,
        });
    }
    Ok(Loaded {
        table: current.table.name,
        before,
        written: current.written,
        after,
    })
}

/// The first carried table holding rows, when `existing` refuses them.
fn refuse_existing(before: &[(&'static str, u64)], existing: Existing) -> Result<(), BulkError> {
    let counts = |table: &str| match existing {
        Existing::Refuse => true,
        Existing::RefuseDirectoryData => !SERVER_STATE_TABLES.contains(&table),
        Existing::Add => false,
    };
    if let Some((table, rows)) = before
        .iter()
        .find(|(table, rows)| *rows > 0 && counts(table))
    {
        return Err(BulkError::NotEmpty { table, rows: *rows });
    }
    Ok(())
}

fn column_names(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|column| column.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn load_sqlite(
    connection: &mut Connection,
    mut feed: mpsc::Receiver<Feed>,
    existing: Existing,
) -> Result<Vec<Loaded>, BulkError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let count = |table: &str| -> Result<u64, BulkError> {
        Ok(
            transaction.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })? as u64,
        )
    };
    let before = carried_tables()
        .map(|table| Ok((table.name, count(table.name)?)))
        .collect::<Result<Vec<_>, BulkError>>()?;
    refuse_existing(&before, existing)?;
    let mut loaded = Vec::new();
    let mut current: Option<(Current, rusqlite::Statement<'_>)> = None;
    loop {
        match feed.blocking_recv().ok_or(BulkError::FeedStopped)? {
            Feed::Table { table, columns } => {
                if current.is_some() {
                    return Err(BulkError::Feed("a table began before the last one ended"));
                }
                let placeholders = vec!["?"; columns.len()].join(", ");
                let statement = transaction.prepare(&format!(
                    "INSERT INTO {} ({}) VALUES ({placeholders})",
                    table.name,
                    column_names(columns)
                ))?;
                current = Some((
                    Current {
                        table,
                        columns,
                        written: 0,
                    },
                    statement,
                ));
            }
            Feed::Rows(rows) => {
                let (current, statement) = current
                    .as_mut()
                    .ok_or(BulkError::Feed("rows outside a table"))?;
                for row in rows {
                    if row.len() != current.columns.len() {
                        return Err(BulkError::Feed("a row of the wrong width"));
                    }
                    let values = row
                        .into_iter()
                        .map(sqlite_value)
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    statement.execute(rusqlite::params_from_iter(values))?;
                    current.written += 1;
                }
            }
            Feed::End {
                source_rows,
                identity,
            } => {
                let (ended, statement) = current
                    .take()
                    .ok_or(BulkError::Feed("an end outside a table"))?;
                drop(statement);
                if let Some(identity) = identity {
                    let updated = transaction.execute(
                        "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = ?2",
                        rusqlite::params![identity, ended.table.name],
                    )?;
                    if updated == 0 {
                        transaction.execute(
                            "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
                            rusqlite::params![ended.table.name, identity],
                        )?;
                    }
                }
                let after = count(ended.table.name)?;
                loaded.push(end_table(ended, &before, after, source_rows)?);
            }
            Feed::Done => {
                if current.is_some() {
                    return Err(BulkError::Feed("done before the last table ended"));
                }
                break;
            }
        }
    }
    drop(current);
    transaction.commit()?;
    Ok(loaded)
}

fn sqlite_value(value: Value) -> Result<rusqlite::types::Value, StoreError> {
    use rusqlite::types::Value as Sql;
    Ok(match value {
        Value::Null => Sql::Null,
        Value::Text(text) => Sql::Text(text),
        Value::Time(time) => Sql::Text(encode_time(time)?),
        Value::Bytes(bytes) => Sql::Blob(bytes),
        Value::Integer(integer) => Sql::Integer(integer),
    })
}

async fn load_postgres(
    store: &PostgresStore,
    mut feed: mpsc::Receiver<Feed>,
    existing: Existing,
) -> Result<Vec<Loaded>, BulkError> {
    let mut client = store.client().await?;
    let transaction = client.transaction().await?;
    // No server writes meanwhile, and no second load passes the emptiness check.
    transaction
        .batch_execute(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            carried_tables()
                .map(|table| table.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await?;
    let mut before = Vec::new();
    for table in carried_tables() {
        before.push((table.name, postgres_count(&transaction, table.name).await?));
    }
    refuse_existing(&before, existing)?;
    let mut loaded = Vec::new();
    let mut current: Option<(Current, Pin<Box<BinaryCopyInWriter>>)> = None;
    loop {
        match feed.recv().await.ok_or(BulkError::FeedStopped)? {
            Feed::Table { table, columns } => {
                if current.is_some() {
                    return Err(BulkError::Feed("a table began before the last one ended"));
                }
                let sink = transaction
                    .copy_in(&format!(
                        "COPY {} ({}) FROM STDIN (FORMAT binary)",
                        table.name,
                        column_names(columns)
                    ))
                    .await?;
                let types: Vec<Type> = columns
                    .iter()
                    .map(|column| column.kind.postgres_type())
                    .collect();
                current = Some((
                    Current {
                        table,
                        columns,
                        written: 0,
                    },
                    Box::pin(BinaryCopyInWriter::new(sink, &types)),
                ));
            }
            Feed::Rows(rows) => {
                let (current, writer) = current
                    .as_mut()
                    .ok_or(BulkError::Feed("rows outside a table"))?;
                for row in &rows {
                    if row.len() != current.columns.len() {
                        return Err(BulkError::Feed("a row of the wrong width"));
                    }
                    let values: Vec<&(dyn ToSql + Sync)> = row
                        .iter()
                        .map(|value| value as &(dyn ToSql + Sync))
                        .collect();
                    writer.as_mut().write(&values).await?;
                    current.written += 1;
                }
            }
            Feed::End {
                source_rows,
                identity,
            } => {
                let (ended, mut writer) = current
                    .take()
                    .ok_or(BulkError::Feed("an end outside a table"))?;
                writer.as_mut().finish().await?;
                if let Some(identity) = identity.filter(|identity| *identity > 0) {
                    transaction
                        .execute(
                            "SELECT setval(pg_get_serial_sequence($1, $2), $3)",
                            &[&ended.table.name, &ended.table.columns[0].name, &identity],
                        )
                        .await?;
                }
                let after = postgres_count(&transaction, ended.table.name).await?;
                loaded.push(end_table(ended, &before, after, source_rows)?);
            }
            Feed::Done => {
                if current.is_some() {
                    return Err(BulkError::Feed("done before the last table ended"));
                }
                break;
            }
        }
    }
    transaction.commit().await?;
    Ok(loaded)
}

async fn postgres_count(
    client: &impl deadpool_postgres::GenericClient,
    table: &str,
) -> Result<u64, BulkError> {
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .try_get(0)?;
    Ok(u64::try_from(rows).unwrap_or(0))
}

/// Feeds every carried table of the SQLite database on `connection`, read in one
/// snapshot, with each table's count and (audit) identity counter.
fn feed_sqlite(connection: &Connection, feed: &mpsc::Sender<Feed>) -> Result<(), StoreError> {
    let snapshot = connection.unchecked_transaction()?;
    let send = |message: Feed| {
        feed.blocking_send(message)
            .map_err(|_| StoreError::Database(super::DatabaseError::Closed))
    };
    for table in carried_tables() {
        let source_rows: i64 =
            snapshot.query_row(&format!("SELECT count(*) FROM {}", table.name), [], |row| {
                row.get(0)
            })?;
        send(Feed::Table {
            table,
            columns: table.columns,
        })?;
        let mut statement = snapshot.prepare(&format!(
            "SELECT {} FROM {}",
            column_names(table.columns),
            table.name
        ))?;
        let mut rows = statement.query([])?;
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(table.columns.len());
            for (index, column) in table.columns.iter().enumerate() {
                values.push(read_value(row, index, column)?);
            }
            batch.push(values);
            if batch.len() == BATCH_ROWS {
                send(Feed::Rows(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(BATCH_ROWS),
                )))?;
            }
        }
        if !batch.is_empty() {
            send(Feed::Rows(batch))?;
        }
        let identity = if table.identity {
            let counter: Option<i64> = snapshot.query_row(
                &format!(
                    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?1), 0), \
                     coalesce((SELECT max({}) FROM {}), 0))",
                    table.columns[0].name, table.name
                ),
                [table.name],
                |row| row.get(0),
            )?;
            counter
        } else {
            None
        };
        send(Feed::End {
            source_rows: Some(u64::try_from(source_rows).unwrap_or(0)),
            identity,
        })?;
    }
    snapshot.finish()?;
    send(Feed::Done)
}

fn read_value(row: &rusqlite::Row<'_>, index: usize, column: &Column) -> Result<Value, StoreError> {
    Ok(match column.kind {
        Kind::Text => row
            .get::<_, Option<String>>(index)?
            .map_or(Value::Null, Value::Text),
        Kind::Time => match row.get::<_, Option<String>>(index)? {
            Some(text) => Value::Time(decode_time(column.name, &text)?),
            None => Value::Null,
        },
        Kind::Bytes => row
            .get::<_, Option<Vec<u8>>>(index)?
            .map_or(Value::Null, Value::Bytes),
        Kind::BigInt | Kind::Int => row
            .get::<_, Option<i64>>(index)?
            .map_or(Value::Null, Value::Integer),
    })
}

/// What [`migrate_store`] copied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Migration {
    /// Every carried table: rows in the source, and in the target after the copy (equal:
    /// checked before the commit).
    pub tables: Vec<Loaded>,
    /// Tables left out, and why.
    pub left_out: Vec<LeftOut>,
    /// How long the copy took.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

/// A table a copy leaves out.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeftOut {
    /// The table.
    pub table: &'static str,
    /// Why.
    pub why: &'static str,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// Copies the SQLite store at `from` (a stopped server's database: refused while a server
/// runs on it, whose lock this holds meanwhile; brought to this program's schema first)
/// into `to`, which must be empty: every carried table in one transaction, audit ids and
/// the audit counter kept, each table's count checked against the source's before the
/// commit.
///
/// # Errors
/// [`BulkError`]; then nothing was written to `to`.
pub async fn migrate_store(from: &Path, to: &PostgresStore) -> Result<Migration, BulkError> {
    if !from.is_file() {
        return Err(BulkError::NoSource(from.to_owned()));
    }
    let _lock = ServerLock::exclusive(from)
        .map_err(|source| BulkError::Lock {
            path: from.to_owned(),
            source,
        })?
        .ok_or_else(|| BulkError::ServerRunning(from.to_owned()))?;
    let started = Instant::now();
    let source = SqliteStore::open(from).await?;
    let (sender, receiver) = mpsc::channel(8);
    let read = source
        .database
        .read(move |connection| feed_sqlite(connection, &sender));
    let write = load(Target::Postgres(to), receiver, Existing::Refuse);
    let (read, write) = tokio::join!(read, write);
    source.close().await;
    let tables = match (write, read) {
        (Ok(tables), _) => tables,
        (Err(BulkError::FeedStopped), Err(read)) => return Err(read.into()),
        (Err(write), _) => return Err(write),
    };
    Ok(Migration {
        tables,
        left_out: TABLES
            .iter()
            .filter_map(|table| match table.carried {
                Carried::LeftOut(why) => Some(LeftOut {
                    table: table.name,
                    why,
                }),
                Carried::Rows => None,
            })
            .collect(),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store as _;

    /// The server's own state tables are tables copies carry, and none holds directory data.
    #[test]
    fn server_state_tables_are_carried_tables_apart_from_the_directory() {
        for name in SERVER_STATE_TABLES {
            let table = table(name).unwrap_or_else(|| panic!("{name} is in TABLES"));
            assert_eq!(table.carried, Carried::Rows, "{name}");
        }
        for directory in ["users", "cards", "audit", "devices", "admin_credentials"] {
            assert!(!SERVER_STATE_TABLES.contains(&directory), "{directory}");
        }
    }

    /// Every table of the SQLite schema is in [`TABLES`] (or [`OWN_TABLES`]) with the same
    /// columns in the same order: a new table or column cannot be forgotten by copies.
    #[tokio::test]
    async fn the_table_list_is_the_sqlite_schema() {
        let store = SqliteStore::in_memory().await.expect("a store");
        let schema = store
            .database
            .read(|connection| {
                let mut tables = connection.prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )?;
                let names = tables
                    .query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut schema = Vec::new();
                for name in names {
                    let mut columns = connection
                        .prepare(&format!("SELECT name FROM pragma_table_info('{name}')"))?;
                    let columns = columns
                        .query_map([], |row| row.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()?;
                    schema.push((name, columns));
                }
                Ok(schema)
            })
            .await
            .expect("the schema");
        let mut listed: Vec<(String, Vec<String>)> = TABLES
            .iter()
            .map(|table| {
                (
                    table.name.to_owned(),
                    table.columns.iter().map(|c| c.name.to_owned()).collect(),
                )
            })
            .collect();
        listed.extend(OWN_TABLES.iter().map(|name| {
            (
                (*name).to_owned(),
                vec!["version".to_owned(), "applied_at".to_owned()],
            )
        }));
        listed.sort();
        assert_eq!(schema, listed);
    }

    fn user_row(id: &str) -> Vec<Value> {
        vec![
            Value::Text(id.to_owned()),
            Value::Text(format!("User {id}")),
            Value::Text(format!("{id}@example.com")),
            Value::Null,
            Value::Null,
            Value::Text("active".to_owned()),
            Value::Time(OffsetDateTime::UNIX_EPOCH),
        ]
    }

    async fn load_users(
        store: &SqliteStore,
        rows: Vec<Vec<Value>>,
        done: bool,
        existing: Existing,
    ) -> Result<Vec<Loaded>, BulkError> {
        let (sender, receiver) = mpsc::channel(8);
        let users = table("users").expect("users");
        let feed = async move {
            sender
                .send(Feed::Table {
                    table: users,
                    columns: users.columns,
                })
                .await
                .ok();
            sender.send(Feed::Rows(rows)).await.ok();
            sender
                .send(Feed::End {
                    source_rows: None,
                    identity: None,
                })
                .await
                .ok();
            if done {
                sender.send(Feed::Done).await.ok();
            }
        };
        let (_, loaded) = tokio::join!(feed, load(Target::Sqlite(store), receiver, existing));
        loaded
    }

    #[tokio::test]
    async fn a_load_is_one_transaction_that_refuses_a_store_with_data() {
        let store = SqliteStore::in_memory().await.expect("a store");
        // A feed that stops before Done writes nothing.
        let stopped = load_users(&store, vec![user_row("a")], false, Existing::Refuse).await;
        assert!(
            matches!(stopped, Err(BulkError::FeedStopped)),
            "{stopped:?}"
        );
        assert!(store.list_users().await.expect("users").is_empty());

        let loaded = load_users(
            &store,
            vec![user_row("a"), user_row("b")],
            true,
            Existing::Refuse,
        )
        .await
        .expect("loaded");
        assert_eq!(
            loaded,
            vec![Loaded {
                table: "users",
                before: 0,
                written: 2,
                after: 2
            }]
        );
        let again = load_users(&store, vec![user_row("c")], true, Existing::Refuse).await;
        assert!(
            matches!(
                again,
                Err(BulkError::NotEmpty {
                    table: "users",
                    rows: 2
                })
            ),
            "{again:?}"
        );
        // Added to what is there; a clash (an existing id) rolls the whole load back.
        load_users(&store, vec![user_row("c")], true, Existing::Add)
            .await
            .expect("added");
        let clash = load_users(
            &store,
            vec![user_row("d"), user_row("a")],
            true,
            Existing::Add,
        )
        .await;
        assert!(matches!(clash, Err(BulkError::Store(_))), "{clash:?}");
        let ids: Vec<String> = store
            .list_users()
            .await
            .expect("users")
            .into_iter()
            .map(|user| user.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        // A row of the wrong width is refused.
        let narrow = load_users(&store, vec![vec![Value::Null]], true, Existing::Add).await;
        assert!(matches!(narrow, Err(BulkError::Feed(_))), "{narrow:?}");
    }
}
