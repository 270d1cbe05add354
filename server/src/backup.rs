//! `pivtap server backup` and `restore`: one file holding a consistent copy of the database and every file of the server directory the configuration names (its keys and credentials included), and its restore into a stopped server's directory.
//!
//! The backup is itself a SQLite database: the copy of the server's database
//! (taken online, see [`crate::store::snapshot`]) with two more tables,
//! `pivtap_backup` (what it is) and `pivtap_backup_files` (each file by its
//! path in the server directory, its mode and its contents). It is written
//! with mode 0600: it holds the issuing CA key, the TLS key, the token keys
//! and the admin credential. Files the configuration names outside the server
//! directory are not in it; [`BackupReport::left_out`] lists them.
//!
//! A running server holds a shared lock on `DATABASE-server.lock` ([`ServerLock`]);
//! restore takes it exclusively, so it refuses while a server runs and a
//! server refuses to start while a restore runs.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use time::OffsetDateTime;

use crate::config::{ConfigError, ServerConfig};
use crate::store::StoreError;
use crate::store::snapshot::{copy_database, schema_version};

/// What `pivtap_backup.format` says in a backup this program writes.
const FORMAT: &str = "pivtap-backup-1";

/// Why a backup or restore did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backup file exists already.
    #[error("{} exists; choose a new file name", .0.display())]
    Exists(PathBuf),
    /// The store is PostgreSQL, which this command does not copy.
    #[error(
        "the store is PostgreSQL ({url}): `pivtap server backup` copies only a SQLite store; \
         back the database up with pg_dump (pg_dump --format=custom --file=pivtap.dump \
         \"$URL\"; restore with pg_restore) and the server directory's files with your \
         file backup"
    )]
    PostgresStore {
        /// The store's URL (no password in it).
        url: String,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// What was being done ("read", "write", "move aside").
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The database (or the backup, which is one) failed.
    #[error("the database {} failed", .path.display())]
    Store {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The file is not a backup this program wrote.
    #[error("{} is not a pivtap backup ({reason})", .path.display())]
    NotABackup {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A server is running on the directory.
    #[error(
        "a pivtap server is running on {}; stop it first (systemctl stop pivtap-server)",
        .0.display()
    )]
    ServerRunning(PathBuf),
}

impl BackupError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| BackupError::Io {
            action,
            path,
            source,
        }
    }

    fn store(path: &Path) -> impl FnOnce(StoreError) -> Self + use<> {
        let path = path.to_owned();
        move |source| BackupError::Store { path, source }
    }
}

/// The lock a running server holds on its database, and restore takes exclusively.
#[derive(Debug)]
pub struct ServerLock {
    _file: File,
}

/// `DATABASE-server.lock`, next to the database (whose directory the server may write).
#[must_use]
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push("-server.lock");
    database.with_file_name(name)
}

impl ServerLock {
    fn open(database: &Path) -> io::Result<File> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        options.open(lock_path(database))
    }

    /// Takes the lock (`flock`) without waiting; `Ok(None)` when it is held the other way.
    fn take(database: &Path, operation: rustix::fs::FlockOperation) -> io::Result<Option<Self>> {
        let file = Self::open(database)?;
        match rustix::fs::flock(&file, operation) {
            Ok(()) => Ok(Some(ServerLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Taken by a server for as long as it runs (several may share it). `Ok(None)`:
    /// a restore holds it.
    ///
    /// # Errors
    /// When the lock file cannot be created.
    pub fn shared(database: &Path) -> io::Result<Option<Self>> {
        Self::take(database, rustix::fs::FlockOperation::NonBlockingLockShared)
    }

    /// Taken by restore. `Ok(None)`: a server holds it.
    ///
    /// # Errors
    /// When the lock file cannot be created.
    pub fn exclusive(database: &Path) -> io::Result<Option<Self>> {
        Self::take(
            database,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
    }
}

/// What [`backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The files of the server directory in the backup, by their path in it.
    pub files: Vec<PathBuf>,
    /// Files the configuration names outside the server directory: not in the backup.
    pub left_out: Vec<PathBuf>,
    /// How long the database copy's read transaction lasted (writers go on meanwhile).
    pub database_copy: Duration,
    /// The backup's size in bytes.
    pub size: u64,
}

/// The configuration file and every file it names.
fn named_files(config_path: &Path, config: &ServerConfig) -> Vec<PathBuf> {
    let mut files = vec![config_path.to_owned(), config.admin_token_file.clone()];
    if let Some(tls) = &config.tls {
        files.extend([tls.certificate.clone(), tls.key.clone()]);
    }
    files.push(config.tokens.key_file.clone());
    files.extend(config.trust.ca_certificates.iter().cloned());
    files.extend(config.trust.crl_files.iter().cloned());
    files.extend(config.metrics.token_file.iter().cloned());
    if let Some(issuance) = &config.issuance {
        files.extend([issuance.ca_certificate.clone(), issuance.ca_key.clone()]);
    }
    let mut seen = BTreeSet::new();
    files.retain(|file| seen.insert(file.clone()));
    files
}

/// The directory of the configuration file `config_path`.
fn server_directory(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Whether `path` is a non-empty relative path of plain names (no `..`, no root).
fn is_plain_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
}

/// `path` relative to `dir` when it is inside it.
fn inside(dir: &Path, path: &Path) -> Option<PathBuf> {
    let relative = if dir == Path::new(".") && path.is_relative() {
        path.strip_prefix(".").unwrap_or(path)
    } else {
        path.strip_prefix(dir).ok()?
    };
    is_plain_relative(relative).then(|| relative.to_owned())
}

#[cfg(unix)]
fn mode_of(metadata: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    metadata.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode_of(_: &fs::Metadata) -> u32 {
    0o600
}

/// Writes a backup of the server configured by `config_path` to `out` (a new file,
/// mode 0600) while the server may keep running; see the module documentation.
///
/// # Errors
/// [`BackupError`] naming what failed; `out` is then not left behind.
pub fn backup(config_path: &Path, out: &Path) -> Result<BackupReport, BackupError> {
    let config = ServerConfig::load(config_path)?;
    if config.sqlite_database().is_none() {
        return Err(BackupError::PostgresStore {
            url: config.store_url().to_string(),
        });
    }
    if out.exists() {
        return Err(BackupError::Exists(out.to_owned()));
    }
    let dir = server_directory(config_path);
    let mut files = Vec::new();
    let mut left_out = Vec::new();
    for path in named_files(config_path, &config) {
        match inside(&dir, &path) {
            Some(relative) => {
                let contents = zeroize::Zeroizing::new(
                    fs::read(&path).map_err(BackupError::io("read", &path))?,
                );
                let metadata = fs::metadata(&path).map_err(BackupError::io("read", &path))?;
                files.push((relative, mode_of(&metadata), contents));
            }
            None => left_out.push(path),
        }
    }
    let database = inside(&dir, &config.database).unwrap_or_else(|| config.database.clone());

    let mut partial_name = out.file_name().unwrap_or_default().to_os_string();
    partial_name.push(".partial");
    let partial = out.with_file_name(partial_name);
    let _ = fs::remove_file(&partial);
    let written = (|| {
        create_private(&partial)?;
        let database_copy = copy_database(&config.database, &partial)
            .map_err(BackupError::store(&config.database))?;
        let mut connection = Connection::open(&partial)
            .map_err(|error| BackupError::store(&partial)(error.into()))?;
        add_files(&mut connection, &database, &files)
            .map_err(|error| BackupError::store(&partial)(error.into()))?;
        drop(connection);
        restrict(&partial)?;
        if out.exists() {
            return Err(BackupError::Exists(out.to_owned()));
        }
        fs::rename(&partial, out).map_err(BackupError::io("write", out))?;
        Ok(database_copy)
    })();
    let database_copy = match written {
        Ok(duration) => duration,
        Err(error) => {
            let _ = fs::remove_file(&partial);
            return Err(error);
        }
    };
    let size = fs::metadata(out)
        .map_err(BackupError::io("read", out))?
        .len();
    Ok(BackupReport {
        files: files.into_iter().map(|(path, _, _)| path).collect(),
        left_out,
        database_copy,
        size,
    })
}

/// Creates `path` empty with mode 0600 (it must not exist).
fn create_private(path: &Path) -> Result<(), BackupError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(BackupError::io("write", path))
}

/// Sets `path`'s mode to 0600.
fn restrict(path: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(BackupError::io("write", path))?;
    }
    Ok(())
}

/// Adds the backup's own tables to the database copy.
fn add_files(
    connection: &mut Connection,
    database: &Path,
    files: &[(PathBuf, u32, zeroize::Zeroizing<Vec<u8>>)],
) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    transaction.execute_batch(
        "CREATE TABLE pivtap_backup (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
         CREATE TABLE pivtap_backup_files (
             path TEXT PRIMARY KEY NOT NULL, mode INTEGER NOT NULL, contents BLOB NOT NULL);",
    )?;
    let created = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    for (key, value) in [
        ("format", FORMAT.to_owned()),
        ("created_at", created),
        ("database", database.to_string_lossy().into_owned()),
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
    ] {
        transaction.execute(
            "INSERT INTO pivtap_backup (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
    }
    for (path, mode, contents) in files {
        transaction.execute(
            "INSERT INTO pivtap_backup_files (path, mode, contents) VALUES (?1, ?2, ?3)",
            params![path.to_string_lossy(), mode, contents.as_slice()],
        )?;
    }
    transaction.commit()
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The restored configuration file.
    pub config_path: PathBuf,
    /// The files written into the directory (the database included).
    pub files: Vec<PathBuf>,
    /// Where the directory's previous contents were moved (`None`: it was empty or missing).
    pub previous: Option<PathBuf>,
    /// When the backup was made (RFC 3339).
    pub created_at: String,
}

/// A backup read into memory (the database stays in the file).
struct Backup {
    database: PathBuf,
    created_at: String,
    files: Vec<(PathBuf, u32, zeroize::Zeroizing<Vec<u8>>)>,
}

fn read_backup(file: &Path) -> Result<Backup, BackupError> {
    let not_a_backup = |reason: &str| BackupError::NotABackup {
        path: file.to_owned(),
        reason: reason.to_owned(),
    };
    if !file.is_file() {
        return Err(BackupError::Io {
            action: "read",
            path: file.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        });
    }
    let connection = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|_| not_a_backup("not a SQLite file"))?;
    let meta = |key: &str| -> Result<Option<String>, BackupError> {
        connection
            .query_row(
                "SELECT value FROM pivtap_backup WHERE key = ?1",
                [key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|_| not_a_backup("no pivtap_backup table"))
    };
    match meta("format")? {
        Some(format) if format == FORMAT => {}
        Some(_) => {
            return Err(not_a_backup(
                "written in a format this program does not know",
            ));
        }
        None => return Err(not_a_backup("no format")),
    }
    let database = PathBuf::from(meta("database")?.ok_or_else(|| not_a_backup("no database"))?);
    let created_at = meta("created_at")?.unwrap_or_default();
    let mut statement = connection
        .prepare("SELECT path, mode, contents FROM pivtap_backup_files ORDER BY path")
        .map_err(|_| not_a_backup("no pivtap_backup_files table"))?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                PathBuf::from(row.get::<_, String>(0)?),
                row.get::<_, u32>(1)?,
                zeroize::Zeroizing::new(row.get::<_, Vec<u8>>(2)?),
            ))
        })
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(|_| not_a_backup("unreadable file list"))?;
    if !rows.iter().all(|(path, _, _)| is_plain_relative(path))
        || !(backup_database_is_plain(&database))
    {
        return Err(not_a_backup("a file path leaves the server directory"));
    }
    if !rows
        .iter()
        .any(|(path, _, _)| path.extension().is_some_and(|ext| ext == "toml"))
    {
        return Err(not_a_backup("no configuration file in it"));
    }
    Ok(Backup {
        database,
        created_at,
        files: rows,
    })
}

/// Copies the backup `file` to a new file beside `dir` (mode 0600) and strips the
/// backup's own tables from it: the database to restore. Removed again on failure.
fn staged_database(file: &Path, dir: &Path, stamp: i64) -> Result<PathBuf, BackupError> {
    let mut name = std::ffi::OsString::from(".");
    name.push(dir.file_name().unwrap_or_default());
    name.push(format!(".restore-{stamp}.db"));
    let staging = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(name),
        _ => PathBuf::from(name),
    };
    let prepared = (|| {
        create_private(&staging)?;
        fs::copy(file, &staging).map_err(BackupError::io("write", &staging))?;
        restrict(&staging)?;
        let connection = Connection::open(&staging)
            .map_err(|error| BackupError::store(&staging)(error.into()))?;
        connection
            .execute_batch("DROP TABLE pivtap_backup; DROP TABLE pivtap_backup_files; VACUUM;")
            .map_err(|error| BackupError::store(&staging)(error.into()))?;
        drop(connection);
        schema_version(&staging).map_err(BackupError::store(&staging))
    })();
    match prepared {
        Ok(_) => Ok(staging),
        Err(error) => {
            let _ = fs::remove_file(&staging);
            Err(error)
        }
    }
}

/// The backup's database path: inside the server directory, or absolute.
fn backup_database_is_plain(database: &Path) -> bool {
    database.is_absolute() || is_plain_relative(database)
}

/// Restores the backup `file` into `dir`, the directory of a stopped server (or a new
/// one): what `dir` holds is moved aside to `DIR.before-restore-TIME` first, and a
/// database the configuration keeps outside `dir` too. `config_name` is the
/// configuration's file name in the backup (`server.toml`).
///
/// # Errors
/// [`BackupError::ServerRunning`] while a server uses `dir`; [`BackupError`] naming what
/// failed otherwise.
pub fn restore(file: &Path, dir: &Path, config_name: &str) -> Result<RestoreReport, BackupError> {
    let backup = read_backup(file)?;
    if !backup
        .files
        .iter()
        .any(|(path, _, _)| path == Path::new(config_name))
    {
        return Err(BackupError::NotABackup {
            path: file.to_owned(),
            reason: format!("it holds no {config_name}"),
        });
    }
    let database = if backup.database.is_absolute() {
        backup.database.clone()
    } else {
        dir.join(&backup.database)
    };
    // The database the directory's server uses now: its lock tells whether it runs.
    let current_database = ServerConfig::load(&dir.join(config_name))
        .map(|config| config.database)
        .unwrap_or_else(|_| database.clone());
    let has_contents = fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    let _lock = if current_database.parent().is_some_and(Path::is_dir) {
        match ServerLock::exclusive(&current_database)
            .map_err(BackupError::io("lock", &current_database))?
        {
            Some(lock) => Some(lock),
            None => return Err(BackupError::ServerRunning(dir.to_owned())),
        }
    } else {
        None
    };

    let stamp = OffsetDateTime::now_utc().unix_timestamp();
    // The database is made ready beside DIR before anything is moved: the backup file
    // may be inside DIR, and a database that fails here leaves DIR as it was.
    let staging = staged_database(file, dir, stamp)?;
    let aside = |path: &Path| {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".before-restore-{stamp}"));
        path.with_file_name(name)
    };
    let previous = if has_contents {
        let target = aside(dir);
        fs::rename(dir, &target).map_err(BackupError::io("move aside", dir))?;
        Some(target)
    } else {
        None
    };
    if !database.starts_with(dir) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = database.as_os_str().to_os_string();
            name.push(suffix);
            let path = PathBuf::from(name);
            if path.exists() {
                fs::rename(&path, aside(&path)).map_err(BackupError::io("move aside", &path))?;
            }
        }
    }

    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(BackupError::io("write", dir))?;
    let mut written = Vec::new();
    for (relative, mode, contents) in &backup.files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            builder
                .create(parent)
                .map_err(BackupError::io("write", parent))?;
        }
        pivtap_files::write_atomically(&path, contents, *mode)
            .map_err(BackupError::io("write", &path))?;
        written.push(path);
    }
    if let Some(parent) = database.parent() {
        builder
            .create(parent)
            .map_err(BackupError::io("write", parent))?;
    }
    if fs::rename(&staging, &database).is_err() {
        // Another file system: copy, then drop the staged copy.
        create_private(&database)?;
        fs::copy(&staging, &database).map_err(BackupError::io("write", &database))?;
        restrict(&database)?;
        let _ = fs::remove_file(&staging);
    }
    written.push(database.clone());

    // What was restored must load as the server will load it.
    let config_path = dir.join(config_name);
    ServerConfig::load(&config_path)?;
    Ok(RestoreReport {
        config_path,
        files: written,
        previous,
        created_at: backup.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup file written by hand with `files` (path, contents).
    fn crafted(path: &Path, format: &str, files: &[(&str, &str)]) {
        let connection = Connection::open(path).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE pivtap_backup (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
                 CREATE TABLE pivtap_backup_files (
                     path TEXT PRIMARY KEY NOT NULL, mode INTEGER NOT NULL, contents BLOB NOT NULL);",
            )
            .unwrap();
        for (key, value) in [("format", format), ("database", "pivtap.db")] {
            connection
                .execute("INSERT INTO pivtap_backup VALUES (?1, ?2)", [key, value])
                .unwrap();
        }
        for (name, contents) in files {
            connection
                .execute(
                    "INSERT INTO pivtap_backup_files VALUES (?1, 420, ?2)",
                    params![name, contents.as_bytes()],
                )
                .unwrap();
        }
    }

    #[test]
    fn backups_that_would_write_outside_the_directory_or_are_unknown_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("server");
        let cases: [(&str, &[(&str, &str)]); 4] = [
            (FORMAT, &[("server.toml", ""), ("../evil", "x")]),
            (FORMAT, &[("server.toml", ""), ("/tmp/evil", "x")]),
            (FORMAT, &[("tls.crt", "")]),
            ("pivtap-backup-99", &[("server.toml", "")]),
        ];
        for (index, (format, files)) in cases.into_iter().enumerate() {
            let file = root.path().join(format!("crafted-{index}.backup"));
            crafted(&file, format, files);
            let refused = restore(&file, &dir, "server.toml").unwrap_err();
            assert!(
                matches!(refused, BackupError::NotABackup { .. }),
                "{index}: {refused:?}"
            );
            assert!(!dir.exists(), "{index}: nothing is written");
            assert!(!root.path().join("evil").exists());
        }
        let missing = restore(&root.path().join("none.backup"), &dir, "server.toml");
        assert!(matches!(missing, Err(BackupError::Io { .. })));
    }

    #[tokio::test]
    async fn a_backup_kept_inside_the_directory_restores_into_it() {
        use crate::store::Store as _;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("server");
        let written = crate::init::init_server(&dir, &crate::init::InitOptions::default()).unwrap();
        let config = ServerConfig::load(&written.config_path).unwrap();
        let store = crate::store::SqliteStore::open(&config.database)
            .await
            .unwrap();
        store.heartbeat(OffsetDateTime::now_utc()).await.unwrap();
        store.close().await;
        fs::create_dir(dir.join("backups")).unwrap();
        let file = dir.join("backups/today.backup");
        let report = backup(&written.config_path, &file).unwrap();
        assert!(report.left_out.is_empty());
        assert!(report.files.contains(&PathBuf::from("ca.key")));

        let restored = restore(&file, &dir, "server.toml").unwrap();
        let previous = restored.previous.unwrap();
        assert!(previous.join("backups/today.backup").exists());
        assert_eq!(
            fs::read(dir.join("tokens.key")).unwrap(),
            fs::read(previous.join("tokens.key")).unwrap()
        );
        let version = schema_version(&dir.join("pivtap.db")).unwrap();
        assert_eq!(version.applied, Some(version.known));
        // Only the restored files and the database: no staging copy is left beside it.
        let beside: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("restore-") && name.ends_with(".db"))
            .collect();
        assert!(beside.is_empty(), "{beside:?}");
        let tables: i64 = Connection::open(dir.join("pivtap.db"))
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'pivtap_backup%'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the backup's own tables are not restored");
    }

    #[test]
    fn the_lock_is_shared_by_servers_and_exclusive_for_restore() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("pivtap.db");
        assert_eq!(
            lock_path(&database),
            dir.path().join("pivtap.db-server.lock")
        );
        let first = ServerLock::shared(&database).unwrap().unwrap();
        let second = ServerLock::shared(&database).unwrap();
        assert!(second.is_some(), "two servers may share a database");
        assert!(ServerLock::exclusive(&database).unwrap().is_none());
        drop((first, second));
        let restoring = ServerLock::exclusive(&database).unwrap().unwrap();
        assert!(ServerLock::shared(&database).unwrap().is_none());
        drop(restoring);
        assert!(ServerLock::shared(&database).unwrap().is_some());
    }
}
