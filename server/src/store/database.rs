//! The SQLite connections behind [`SqliteStore`](super::SqliteStore): one writer thread that commits the writes of concurrent requests together, and reader connections on tokio's blocking pool.
//!
//! Every write goes to the writer thread, which owns the only writing connection of this
//! store. It takes every write that is waiting, runs each in a savepoint of its own inside one
//! `BEGIN IMMEDIATE` transaction, commits once, and only then answers: a caller never sees a
//! write succeed that was not committed. A write that fails rolls back its own savepoint and
//! no one else's; a commit that fails fails every write of its batch. With one writer per
//! store there is no lock contention between this store's connections, and under load one
//! commit serves many requests (group commit). Other stores on the same file, in this process
//! or another, take turns through SQLite's lock with a busy timeout.
//!
//! Reads run on reader connections, taken from a small idle list on tokio's blocking pool, so
//! a long audit query never holds up a sign-in's writes. A store in memory has no file for
//! other connections to open: its reads go to the writer too.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::StoreError;

/// How long a statement waits for another store's write lock, at most.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most writes committed together.
const MAX_BATCH: usize = 256;

/// Reader connections kept open between reads.
const MAX_IDLE_READERS: usize = 4;

/// Pages in the write-ahead log after which the writer copies them into the database file
/// (SQLite's default is 1000). The writer does it after a commit while the next batch
/// waits, so a checkpoint's length is the longest wait: measured on two cores at half the
/// peak sign-in rate, p99 7 to 9 ms with 250 pages, 11 to 13 ms with 1000, 27 ms with
/// 4000, for a few percent of the peak rate. A separate checkpoint thread was tried: it
/// raised the peak but its fsyncs stalled the writer's log writes (p99 24 to 35 ms).
const CHECKPOINT_PAGES: i64 = 250;

/// Prepared statements each connection keeps.
const STATEMENT_CACHE: usize = 64;

/// The largest the write-ahead log is left after a checkpoint, bytes: under steady load
/// SQLite reuses the file rather than shrinking it, so without a limit it keeps its
/// high-water mark.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// What went wrong below the store's own checks.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// SQLite refused or failed (shared: a failed commit fails every write of its batch).
    #[error("SQLite: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// PostgreSQL refused or failed, or its connection did.
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] Arc<tokio_postgres::Error>),
    /// The TLS settings for PostgreSQL could not be made (the CA file of `sslrootcert`).
    #[error("PostgreSQL TLS: {0}")]
    PostgresTls(#[source] Arc<super::postgres_tls::PostgresTlsError>),
    /// No PostgreSQL connection could be had from the pool.
    #[error("PostgreSQL connection pool: {reason}")]
    Pool {
        /// Why not.
        reason: String,
    },
    /// The store was closed, or its writer thread is gone.
    #[error("the store is closed")]
    Closed,
    /// A stored value this program cannot read.
    #[error("column {column} holds a value this program cannot read: {reason}")]
    Column {
        /// The column's name.
        column: String,
        /// Why the value is unreadable.
        reason: String,
    },
    /// A time that does not fit the stored form (years 0000 to 9999, UTC).
    #[error("time outside the years 0000 to 9999")]
    TimeOutOfRange,
    /// The store's own code panicked while running this operation.
    #[error("a database operation panicked")]
    Panicked,
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Database(DatabaseError::Sqlite(Arc::new(error)))
    }
}

impl From<DatabaseError> for StoreError {
    fn from(error: DatabaseError) -> Self {
        StoreError::Database(error)
    }
}

/// Told to each write of a batch once the batch's transaction is over.
type Completion = Box<dyn FnOnce(Result<(), Arc<rusqlite::Error>>) + Send>;

/// A write: runs in the batch's transaction (or learns that it could not begin).
type WriteWork = Box<dyn FnOnce(Result<&Connection, Arc<rusqlite::Error>>) -> Completion + Send>;

/// Work for the writer thread.
enum Job {
    /// Committed with the other writes waiting at the time.
    Write(WriteWork),
    /// Run on its own, outside any transaction (a checkpoint, say).
    Alone(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// One store's connections: the writer thread and the readers.
pub(super) struct Database {
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    readers: Option<Arc<ReaderPool>>,
}

impl Database {
    /// Opens the database file at `path` (creating it if missing) in WAL mode, runs `setup`
    /// on the writer connection (the migrations) and starts the writer thread.
    pub(super) async fn open(
        path: &Path,
        setup: fn(&mut Connection) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let file = path.to_path_buf();
        let database = Self::start(move || open_file(&file, false), setup).await?;
        Ok(Database {
            readers: Some(Arc::new(ReaderPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            })),
            ..database
        })
    }

    /// A private database in memory, which lives as long as the store.
    pub(super) async fn in_memory(
        setup: fn(&mut Connection) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        Self::start(
            || {
                let connection = Connection::open_in_memory()?;
                configure(&connection)?;
                Ok(connection)
            },
            setup,
        )
        .await
    }

    async fn start(
        connect: impl FnOnce() -> Result<Connection, StoreError> + Send + 'static,
        setup: fn(&mut Connection) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::channel();
        let (ready, started) = oneshot::channel();
        let writer_thread = thread::Builder::new()
            .name("pivtap-db-writer".to_owned())
            .spawn(move || {
                let opened = connect().and_then(|mut connection| {
                    setup(&mut connection)?;
                    Ok(connection)
                });
                match opened {
                    Ok(connection) => {
                        if ready.send(Ok(())).is_ok() {
                            run_writer(connection, &queue);
                        }
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                    }
                }
            })
            .map_err(|_| DatabaseError::Closed)?;
        started.await.map_err(|_| DatabaseError::Panicked)??;
        Ok(Database {
            writer: Mutex::new(Some(jobs)),
            writer_thread: Mutex::new(Some(writer_thread)),
            readers: None,
        })
    }

    /// Runs `work` on the writer connection, committed with the other writes waiting; its
    /// result comes back once the commit is done (and is a database error if it failed).
    pub(super) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job: WriteWork = Box::new(move |connection| {
            let outcome = match connection {
                Ok(connection) => in_savepoint(connection, work),
                Err(error) => Err(StoreError::Database(DatabaseError::Sqlite(error))),
            };
            Box::new(move |committed| {
                let result = match committed {
                    Ok(()) => outcome,
                    Err(error) => Err(StoreError::Database(DatabaseError::Sqlite(error))),
                };
                let _ = reply.send(result);
            })
        });
        self.send(Job::Write(job))?;
        answer.await.map_err(|_| DatabaseError::Closed)?
    }

    /// Runs `work` on the writer connection outside any transaction.
    pub(super) async fn alone<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Alone(Box::new(move |connection| {
            let result = unless_panicked(|| work(connection));
            let _ = reply.send(result);
        })))?;
        answer.await.map_err(|_| DatabaseError::Closed)?
    }

    /// Runs `work` on a reader connection (on the writer, for a store in memory).
    pub(super) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(readers) = &self.readers else {
            return self.write(work).await;
        };
        let readers = Arc::clone(readers);
        tokio::task::spawn_blocking(move || readers.run(work))
            .await
            .map_err(|_| DatabaseError::Panicked)?
    }

    /// Lets the writer finish what it was given, then closes every connection; later calls
    /// fail with [`DatabaseError::Closed`].
    pub(super) async fn close(&self) {
        drop(lock(&self.writer).take());
        if let Some(readers) = &self.readers {
            readers.closed.store(true, Ordering::SeqCst);
            lock(&readers.idle).clear();
        }
        let writer_thread = lock(&self.writer_thread).take();
        if let Some(writer_thread) = writer_thread {
            let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        }
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        lock(&self.writer)
            .as_ref()
            .ok_or(DatabaseError::Closed)?
            .send(job)
            .map_err(|_| StoreError::Database(DatabaseError::Closed))
    }
}

/// The writer thread: batches of writes, each batch one transaction.
fn run_writer(mut connection: Connection, queue: &mpsc::Receiver<Job>) {
    let mut held_back = None;
    loop {
        let first = match held_back.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                // Every sender is gone: the store was closed or dropped.
                Err(mpsc::RecvError) => return,
            },
        };
        let mut batch = match first {
            Job::Alone(work) => {
                work(&mut connection);
                continue;
            }
            Job::Write(work) => vec![work],
        };
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Job::Write(work)) => batch.push(work),
                Ok(alone) => {
                    held_back = Some(alone);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&connection, batch);
    }
}

/// Runs `batch` in one transaction and tells each write how the commit went.
fn commit_batch(connection: &Connection, batch: Vec<WriteWork>) {
    let completions: Vec<Completion> = match run(connection, "BEGIN IMMEDIATE") {
        Ok(()) => batch.into_iter().map(|work| work(Ok(connection))).collect(),
        Err(error) => {
            let error = Arc::new(error);
            let completions: Vec<Completion> = batch
                .into_iter()
                .map(|work| work(Err(Arc::clone(&error))))
                .collect();
            for completion in completions {
                completion(Ok(()));
            }
            return;
        }
    };
    let committed = match run(connection, "COMMIT") {
        Ok(()) => Ok(()),
        Err(error) => {
            tracing::error!(%error, "a batch of writes could not be committed");
            let _ = run(connection, "ROLLBACK");
            Err(Arc::new(error))
        }
    };
    for completion in completions {
        completion(committed.clone());
    }
}

/// Runs `work`; a panic in it becomes [`DatabaseError::Panicked`] for its caller alone,
/// and the thread running it goes on.
fn unless_panicked<T>(work: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or(Err(DatabaseError::Panicked.into()))
}

/// Runs one statement of the writer's own (prepared once, then taken from the cache).
fn run(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs one write in a savepoint: its changes are undone alone when it fails or panics.
fn in_savepoint<T>(
    connection: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    run(connection, "SAVEPOINT write")?;
    let outcome = unless_panicked(|| work(connection));
    if outcome.is_err() {
        run(connection, "ROLLBACK TO write")?;
    }
    run(connection, "RELEASE write")?;
    outcome
}

/// Reader connections to one database file.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

impl ReaderPool {
    fn run<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(DatabaseError::Closed.into());
        }
        let idle = lock(&self.idle).pop();
        let connection = match idle {
            Some(connection) => connection,
            None => open_file(&self.path, true)?,
        };
        let outcome = unless_panicked(|| work(&connection));
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_READERS && !self.closed.load(Ordering::SeqCst) {
            idle.push(connection);
        }
        outcome
    }
}

/// Opens the file: WAL mode, foreign keys on, the busy timeout set; a reader also refuses
/// to write.
fn open_file(path: &Path, reader: bool) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_handler(Some(wait_when_busy))?;
    configure(&connection)?;
    if reader {
        connection.pragma_update(None, "query_only", true)?;
    } else {
        let mode: String =
            connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "the database is not in WAL mode");
        }
        // FULL: in WAL mode every commit syncs the log before it returns, so a write the
        // server has answered for survives an operating-system crash or a power cut (NORMAL
        // syncs only at checkpoints: the last commits could be lost, and with them used
        // nonces and codes and their audit). The group commit shares one sync among the
        // writes of a batch.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
        connection.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    }
    Ok(connection)
}

/// How long a connection sleeps before it tries a busy lock again.
const BUSY_RETRY: Duration = Duration::from_micros(250);

/// The busy handler of every file connection: tries again every [`BUSY_RETRY`] for up to
/// [`BUSY_TIMEOUT`]. SQLite's own (`busy_timeout`) sleeps longer and longer, up to 100 ms at
/// a time, so a store waiting for another's write of a millisecond could wait for tens.
fn wait_when_busy(attempts: i32) -> bool {
    let waited = BUSY_RETRY * u32::try_from(attempts).unwrap_or(u32::MAX);
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    thread::sleep(BUSY_RETRY);
    true
}

/// What every connection needs, in a file or in memory.
fn configure(connection: &Connection) -> Result<(), StoreError> {
    connection.pragma_update(None, "foreign_keys", true)?;
    // Each write's savepoint keeps the pages it changes in a statement journal: in memory,
    // not in a temporary file.
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    type TestResult = Result<(), Box<dyn Error>>;

    /// Two tables; `child.parent` is checked only at commit (a deferred foreign key), which
    /// gives a test a commit that fails.
    fn schema(connection: &mut Connection) -> Result<(), StoreError> {
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS child (
                 id INTEGER PRIMARY KEY,
                 parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED
             );",
        )?;
        Ok(())
    }

    async fn parents(database: &Database) -> Result<Vec<i64>, StoreError> {
        database
            .read(|connection| {
                let mut statement = connection.prepare("SELECT id FROM parent ORDER BY id")?;
                let ids = statement
                    .query_map([], |row| row.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok(ids)
            })
            .await
    }

    fn insert_parent(connection: &Connection, id: i64) -> Result<(), StoreError> {
        connection.execute("INSERT INTO parent (id) VALUES (?)", [id])?;
        Ok(())
    }

    /// Holds the writer thread until the returned sender is dropped, so that the writes
    /// sent meanwhile wait and are committed as one batch.
    fn hold_writer(database: &Arc<Database>) -> mpsc::Sender<()> {
        let (release, held) = mpsc::channel::<()>();
        let database = Arc::clone(database);
        tokio::spawn(async move {
            database
                .alone(move |_| {
                    let _ = held.recv();
                    Ok(())
                })
                .await
        });
        release
    }

    /// A write for [`batch`].
    type TestWrite = Box<dyn FnOnce(&Connection) -> Result<(), StoreError> + Send>;

    /// Sends `works` to the writer while it is held, then lets it go: one batch.
    async fn batch(database: &Arc<Database>, works: Vec<TestWrite>) -> Vec<Result<(), StoreError>> {
        let release = hold_writer(database);
        tokio::task::yield_now().await;
        let mut tasks = Vec::new();
        for work in works {
            let database = Arc::clone(database);
            tasks.push(tokio::spawn(async move { database.write(work).await }));
        }
        // Every write is queued before the writer is let go.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(release);
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap_or(Err(DatabaseError::Panicked.into())));
        }
        results
    }

    #[tokio::test]
    async fn a_failed_write_is_undone_alone_and_the_rest_of_its_batch_commits() -> TestResult {
        let dir = tempfile::tempdir()?;
        let database = Arc::new(Database::open(&dir.path().join("t.db"), schema).await?);
        let results = batch(
            &database,
            vec![
                Box::new(|connection: &Connection| insert_parent(connection, 1)),
                Box::new(|connection: &Connection| {
                    // Writes, then fails: its row must not stay.
                    insert_parent(connection, 2)?;
                    Err(StoreError::Conflict {
                        what: "refused".to_owned(),
                    })
                }),
                Box::new(|connection: &Connection| insert_parent(connection, 1)),
                Box::new(|connection: &Connection| insert_parent(connection, 3)),
            ],
        )
        .await;
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(
            matches!(&results[1], Err(StoreError::Conflict { what }) if what == "refused"),
            "{:?}",
            results[1]
        );
        assert!(
            matches!(
                &results[2],
                Err(StoreError::Database(DatabaseError::Sqlite(_)))
            ),
            "the duplicate is SQLite's refusal: {:?}",
            results[2]
        );
        assert!(results[3].is_ok(), "{:?}", results[3]);
        assert_eq!(parents(&database).await?, vec![1, 3]);
        Ok(())
    }

    #[tokio::test]
    async fn a_commit_that_fails_fails_every_write_of_its_batch_and_keeps_none() -> TestResult {
        let dir = tempfile::tempdir()?;
        let database = Arc::new(Database::open(&dir.path().join("t.db"), schema).await?);
        let results = batch(
            &database,
            vec![
                Box::new(|connection: &Connection| insert_parent(connection, 1)),
                // Succeeds as a statement; its dangling reference fails the commit.
                Box::new(|connection: &Connection| {
                    connection.execute("INSERT INTO child (id, parent) VALUES (1, 99)", [])?;
                    Ok(())
                }),
                Box::new(|connection: &Connection| insert_parent(connection, 2)),
            ],
        )
        .await;
        for result in &results {
            assert!(
                matches!(result, Err(StoreError::Database(DatabaseError::Sqlite(_)))),
                "{result:?}"
            );
        }
        assert_eq!(parents(&database).await?, Vec::<i64>::new());
        // The writer goes on.
        database
            .write(|connection| insert_parent(connection, 4))
            .await?;
        assert_eq!(parents(&database).await?, vec![4]);
        Ok(())
    }

    #[tokio::test]
    async fn a_panicking_write_is_undone_and_reported_and_the_writer_goes_on() -> TestResult {
        let database = Database::in_memory(schema).await?;
        let panicked = database
            .write(|connection| -> Result<(), StoreError> {
                insert_parent(connection, 1)?;
                panic!("a bug in a write")
            })
            .await;
        assert!(
            matches!(panicked, Err(StoreError::Database(DatabaseError::Panicked))),
            "{panicked:?}"
        );
        database
            .write(|connection| insert_parent(connection, 2))
            .await?;
        assert_eq!(parents(&database).await?, vec![2]);
        Ok(())
    }

    #[tokio::test]
    async fn a_write_is_answered_only_once_committed_and_seen_by_readers() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("t.db");
        let database = Database::open(&path, schema).await?;
        database
            .write(|connection| insert_parent(connection, 7))
            .await?;
        // Another connection (another process, say) sees it at once.
        let other = Connection::open(&path)?;
        let seen: i64 = other.query_row("SELECT id FROM parent", [], |row| row.get(0))?;
        assert_eq!(seen, 7);
        assert_eq!(parents(&database).await?, vec![7]);
        Ok(())
    }

    #[tokio::test]
    async fn readers_refuse_to_write() -> TestResult {
        let dir = tempfile::tempdir()?;
        let database = Database::open(&dir.path().join("t.db"), schema).await?;
        let written = database
            .read(|connection| insert_parent(connection, 1))
            .await;
        assert!(written.is_err(), "{written:?}");
        assert_eq!(parents(&database).await?, Vec::<i64>::new());
        Ok(())
    }

    #[tokio::test]
    async fn a_closed_database_refuses_everything_after_finishing_its_writes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("t.db");
        let database = Database::open(&path, schema).await?;
        database
            .write(|connection| insert_parent(connection, 1))
            .await?;
        database.close().await;
        let write = database
            .write(|connection| insert_parent(connection, 2))
            .await;
        let read = parents(&database).await;
        for result in [write.map(drop), read.map(drop)] {
            assert!(
                matches!(result, Err(StoreError::Database(DatabaseError::Closed))),
                "{result:?}"
            );
        }
        let reopened = Database::open(&path, schema).await?;
        assert_eq!(parents(&reopened).await?, vec![1]);
        Ok(())
    }
}
