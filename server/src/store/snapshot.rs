//! Whole-file operations on a store's database that need no running store: a consistent online copy (`VACUUM INTO`) and the schema version check.
//!
//! Both open their own connection, so they work from another process while a
//! server keeps serving from the same file: in WAL mode the copy is one read
//! transaction, and readers do not hold up writers.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

use super::StoreError;

/// How long a connection here waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A database file's schema version against this program's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The newest migration applied to the file (`None`: none, an empty database).
    pub applied: Option<i64>,
    /// The newest migration this program knows.
    pub known: i64,
}

impl SchemaVersion {
    /// Whether this program can use the file: it has no migration newer than the
    /// program's (older ones are brought up to date when a server opens it).
    #[must_use]
    pub fn is_known(&self) -> bool {
        self.applied.is_none_or(|applied| applied <= self.known)
    }
}

/// Opens the existing database file `path` (never creating one).
fn open_existing(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}

/// The schema version of the connection's database.
fn schema_version_of(connection: &Connection) -> Result<SchemaVersion, StoreError> {
    let has_table: Option<i64> = connection
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let applied = match has_table {
        Some(_) => {
            connection.query_row("SELECT max(version) FROM schema_migrations", [], |row| {
                row.get(0)
            })?
        }
        None => None,
    };
    Ok(SchemaVersion {
        applied,
        known: super::sqlite::newest_known_version(),
    })
}

/// The schema version of the database file `path`, read without changing it.
///
/// # Errors
/// [`StoreError::Database`] when the file is missing or not a SQLite database.
pub fn schema_version(path: &Path) -> Result<SchemaVersion, StoreError> {
    let connection = open_existing(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    schema_version_of(&connection)
}

/// Writes a consistent copy of the database file `source` to `destination`, which must
/// be missing or empty, while other connections keep using `source`. The copy is
/// compact (`VACUUM INTO`), in rollback-journal mode, and holds only committed
/// transactions. Returns how long the copy's read transaction lasted.
///
/// # Errors
/// [`StoreError::Conflict`] when the file's schema is newer than this program's;
/// [`StoreError::Database`] when it cannot be read or the copy cannot be written.
pub fn copy_database(source: &Path, destination: &Path) -> Result<Duration, StoreError> {
    // Read-write (never created): a WAL database is read through its shared memory,
    // which a read-only connection may not set up.
    let connection = open_existing(source, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let version = schema_version_of(&connection)?;
    if !version.is_known() {
        return Err(StoreError::Conflict {
            what: format!(
                "the database has schema version {}, newer than this program's {}",
                version.applied.unwrap_or_default(),
                version.known
            ),
        });
    }
    let destination = destination.to_str().ok_or_else(|| StoreError::Conflict {
        what: "the copy's path is not UTF-8".to_owned(),
    })?;
    let started = Instant::now();
    connection.execute("VACUUM INTO ?1", [destination])?;
    Ok(started.elapsed())
}

/// Makes `path` a database whose schema (version 999) is newer than any this program knows.
#[cfg(test)]
pub(crate) fn write_future_schema(path: &Path) {
    Connection::open(path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT);
             INSERT INTO schema_migrations VALUES (999, 'later');",
        )
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store as _, User, UserState};

    fn user(id: &str) -> User {
        User {
            id: id.to_owned(),
            display_name: id.to_owned(),
            mail: Some(format!("{id}@example.com")),
            upn: None,
            employee_id: None,
            state: UserState::Active,
        }
    }

    #[tokio::test]
    async fn the_copy_holds_what_was_committed_while_the_store_keeps_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pivtap.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store.add_user(&user("alice")).await.unwrap();
        let copy = dir.path().join("copy.db");
        copy_database(&path, &copy).unwrap();
        // The store goes on writing; the copy is a store of its own.
        store.add_user(&user("bob")).await.unwrap();
        let restored = SqliteStore::open(&copy).await.unwrap();
        let ids: Vec<String> = restored
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .map(|user| user.id)
            .collect();
        assert_eq!(ids, ["alice"]);
        let version = schema_version(&copy).unwrap();
        assert!(version.is_known());
        assert_eq!(version.applied, Some(version.known));

        // An existing, non-empty destination is refused and kept.
        assert!(copy_database(&path, &copy).is_err());
        assert_eq!(restored.list_users().await.unwrap().len(), 1);
    }

    #[test]
    fn newer_schemas_missing_files_and_non_databases_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.db");
        write_future_schema(&path);
        let version = schema_version(&path).unwrap();
        assert_eq!(version.applied, Some(999));
        assert!(!version.is_known());
        assert!(matches!(
            copy_database(&path, &dir.path().join("copy.db")),
            Err(StoreError::Conflict { .. })
        ));
        assert!(!dir.path().join("copy.db").exists());

        assert!(schema_version(&dir.path().join("missing.db")).is_err());
        assert!(
            !dir.path().join("missing.db").exists(),
            "nothing is created"
        );
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not a database, but long enough to have a header").unwrap();
        assert!(schema_version(&text).is_err());

        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(schema_version(&empty).unwrap().applied, None);
    }
}
