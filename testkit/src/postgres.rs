//! A real PostgreSQL for tests: the throw-away cluster `scripts/postgres` started (found through two environment variables) and a fresh empty database per test, dropped afterwards.
//!
//! `scripts/test` starts the cluster and exports [`URL_VAR`] (its URL, no
//! password) and [`PASSWORD_FILE_VAR`] (the file holding the role's password);
//! by hand:
//!
//! ```text
//! dir=$(mktemp -d) && scripts/postgres start "$dir"
//! export PIVTAP_TEST_POSTGRES_URL=$(scripts/postgres url "$dir")
//! export PIVTAP_TEST_POSTGRES_PASSWORD_FILE=$dir/password
//! ```
//!
//! [`test_database`] hands out that URL and password, and panics saying how to
//! start a cluster when either variable is missing, so a test that needs
//! PostgreSQL fails rather than skips. [`FreshDatabase`] makes a database of
//! its own for one test (tests run in parallel) and drops it when it goes.
//!
//! The set-up talks to PostgreSQL through `psql` (Debian's `postgresql-client`,
//! which `scripts/setup-debian` installs), so testkit needs no PostgreSQL
//! driver: the stores under test bring their own.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable holding the cluster's URL (`postgres://pivtap@127.0.0.1:PORT/pivtap?sslmode=verify-full&sslrootcert=...`).
pub const URL_VAR: &str = "PIVTAP_TEST_POSTGRES_URL";
/// The environment variable naming the file that holds the role's password.
pub const PASSWORD_FILE_VAR: &str = "PIVTAP_TEST_POSTGRES_PASSWORD_FILE";

/// The password of the test cluster's role: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The password itself, for the driver's configuration or `PGPASSWORD`.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Password(<redacted>)")
    }
}

/// Why the test cluster cannot be found: what [`test_database`] panics with.
#[derive(Debug, PartialEq, Eq)]
pub enum SetupError {
    /// An environment variable is unset or empty.
    Missing {
        /// Its name.
        variable: &'static str,
    },
    /// The password file cannot be read.
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The password file holds no password.
    EmptyPassword {
        /// The file.
        path: PathBuf,
    },
}

impl fmt::Display for SetupError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { variable } => write!(formatter, "{variable} is not set")?,
            Self::PasswordFile { path, reason } => write!(
                formatter,
                "cannot read the password file {} ({PASSWORD_FILE_VAR}): {reason}",
                path.display()
            )?,
            Self::EmptyPassword { path } => write!(
                formatter,
                "the password file {} ({PASSWORD_FILE_VAR}) is empty",
                path.display()
            )?,
        }
        write!(
            formatter,
            ". This test needs a real PostgreSQL: `scripts/test` starts one; by hand, \
             dir=$(mktemp -d) && scripts/postgres start \"$dir\" && \
             export {URL_VAR}=$(scripts/postgres url \"$dir\") {PASSWORD_FILE_VAR}=$dir/password \
             (stop it with scripts/postgres stop \"$dir\")"
        )
    }
}

impl std::error::Error for SetupError {}

/// The URL and password of the test cluster, from [`URL_VAR`] and [`PASSWORD_FILE_VAR`].
///
/// # Errors
/// [`SetupError`] when a variable is missing or the password file cannot be read.
pub fn locate(
    url: Option<OsString>,
    password_file: Option<OsString>,
) -> Result<(String, Password), SetupError> {
    let present = |value: Option<OsString>, variable| {
        value
            .filter(|value| !value.is_empty())
            .ok_or(SetupError::Missing { variable })
    };
    let url = present(url, URL_VAR)?.to_string_lossy().into_owned();
    let path = PathBuf::from(present(password_file, PASSWORD_FILE_VAR)?);
    let text = std::fs::read_to_string(&path).map_err(|error| SetupError::PasswordFile {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(SetupError::EmptyPassword { path });
    }
    Ok((url, Password(password.to_owned())))
}

/// The test cluster's URL (its database `pivtap`, no password in it) and the role's password.
///
/// # Panics
/// When [`URL_VAR`] or [`PASSWORD_FILE_VAR`] is missing or the password file
/// cannot be read, saying how to start a cluster.
#[must_use]
pub fn test_database() -> (String, Password) {
    locate(
        std::env::var_os(URL_VAR),
        std::env::var_os(PASSWORD_FILE_VAR),
    )
    .unwrap_or_else(|error| panic!("no test PostgreSQL: {error}"))
}

/// The URL `url` with its database (the path) replaced by `database`; the query is kept.
///
/// # Panics
/// When `url` is not `postgres://...` or `postgresql://...` with a host.
#[must_use]
pub fn with_database(url: &str, database: &str) -> String {
    let scheme_end = ["postgres://", "postgresql://"]
        .iter()
        .find(|scheme| url.starts_with(**scheme))
        .map(|scheme| scheme.len())
        .unwrap_or_else(|| panic!("{url:?} is not a postgres:// URL"));
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    assert!(authority_end > 0, "{url:?} names no host");
    let query = rest[authority_end..]
        .find('?')
        .map_or("", |at| &rest[authority_end + at..]);
    format!(
        "{}{}/{database}{query}",
        &url[..scheme_end],
        &rest[..authority_end]
    )
}

/// Runs `sql` with `psql` against `url` and returns what it prints, unaligned,
/// tuples only (`a|b`, one row a line).
///
/// # Panics
/// When `psql` cannot run or the statement fails, with psql's message.
#[must_use]
pub fn psql(url: &str, password: &Password, sql: &str) -> String {
    try_psql(url, password, sql).unwrap_or_else(|error| panic!("{error}"))
}

/// Why a [`psql`] run failed.
#[derive(Debug)]
enum PsqlError {
    /// `psql` could not be started.
    Spawn(std::io::Error),
    /// It ran and failed (psql's message: no password in it).
    Failed {
        sql: String,
        url: String,
        said: String,
    },
}

impl fmt::Display for PsqlError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn(error) => write!(
                formatter,
                "cannot run psql ({error}): install postgresql-client (scripts/setup-debian)"
            ),
            Self::Failed { sql, url, said } => {
                write!(formatter, "psql failed on {sql:?} at {url}: {said}")
            }
        }
    }
}

fn try_psql(url: &str, password: &Password, sql: &str) -> Result<String, PsqlError> {
    let output = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password.expose())
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .env_remove("PGSERVICEFILE")
        .output()
        .map_err(PsqlError::Spawn)?;
    if !output.status.success() {
        return Err(PsqlError::Failed {
            sql: sql.to_owned(),
            url: url.to_owned(),
            said: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned())
}

/// An empty database of its own in the test cluster, owned by the cluster's
/// role, dropped (closing its connections) when this goes.
///
/// ```no_run
/// let database = pivtap_testkit::postgres::FreshDatabase::create();
/// // connect the store under test to database.url() with database.password()
/// ```
#[derive(Debug)]
pub struct FreshDatabase {
    name: String,
    url: String,
    cluster_url: String,
    password: Password,
}

impl FreshDatabase {
    /// Creates a database with a name no other test uses, in the cluster of [`test_database`].
    ///
    /// # Panics
    /// When there is no test cluster (see [`test_database`]) or it refuses.
    #[must_use]
    pub fn create() -> Self {
        let (cluster_url, password) = test_database();
        Self::create_in(cluster_url, password)
    }

    /// Creates a database with a fresh name in the cluster at `cluster_url`.
    ///
    /// # Panics
    /// When the cluster refuses.
    #[must_use]
    pub fn create_in(cluster_url: String, password: Password) -> Self {
        let name = unique_name();
        let _created = psql(&cluster_url, &password, &format!("CREATE DATABASE {name}"));
        let url = with_database(&cluster_url, &name);
        Self {
            name,
            url,
            cluster_url,
            password,
        }
    }

    /// The database's name (`pivtap_test_...`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL: the cluster's URL with this database (no password in it).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The role's password.
    #[must_use]
    pub fn password(&self) -> &Password {
        &self.password
    }

    /// Runs `sql` in this database (see [`psql`]).
    ///
    /// # Panics
    /// When the statement fails.
    #[must_use]
    pub fn query(&self, sql: &str) -> String {
        psql(&self.url, &self.password, sql)
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // No panic here: a second one while a failed test unwinds would abort.
        if let Err(error) = try_psql(&self.cluster_url, &self.password, &drop) {
            eprintln!("the test database {} stays behind: {error}", self.name);
        }
    }
}

/// A database name unique across test processes and threads: this process, a
/// counter and the clock (lower case, no quoting needed, under 63 bytes).
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!(
        "pivtap_test_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_variable_says_how_to_start_a_cluster() {
        let error = locate(None, Some("/nowhere".into())).unwrap_err();
        assert_eq!(error, SetupError::Missing { variable: URL_VAR });
        let message = error.to_string();
        assert!(
            message.contains("PIVTAP_TEST_POSTGRES_URL is not set"),
            "{message}"
        );
        assert!(message.contains("scripts/postgres start"), "{message}");
        assert!(message.contains(PASSWORD_FILE_VAR), "{message}");

        let error = locate(Some("postgres://h/db".into()), Some(OsString::new())).unwrap_err();
        assert_eq!(
            error,
            SetupError::Missing {
                variable: PASSWORD_FILE_VAR
            }
        );
    }

    #[test]
    fn the_password_comes_from_its_file_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "0123abcd\n").unwrap();
        let (url, password) =
            locate(Some("postgres://h/db".into()), Some(file.clone().into())).unwrap();
        assert_eq!(url, "postgres://h/db");
        assert_eq!(password.expose(), "0123abcd");
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");

        std::fs::write(&file, "\n").unwrap();
        let error = locate(Some("postgres://h/db".into()), Some(file.into())).unwrap_err();
        assert!(matches!(error, SetupError::EmptyPassword { .. }), "{error}");

        let missing = dir.path().join("absent");
        let error = locate(Some("postgres://h/db".into()), Some(missing.into())).unwrap_err();
        assert!(matches!(error, SetupError::PasswordFile { .. }), "{error}");
        assert!(
            error.to_string().contains("scripts/postgres start"),
            "{error}"
        );
    }

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database(
                "postgres://pivtap@127.0.0.1:5432/pivtap?sslmode=verify-full&sslrootcert=/d/ca.crt",
                "pivtap_test_1"
            ),
            "postgres://pivtap@127.0.0.1:5432/pivtap_test_1?sslmode=verify-full&sslrootcert=/d/ca.crt"
        );
        assert_eq!(
            with_database("postgresql://u@h:1?sslmode=require", "x"),
            "postgresql://u@h:1/x?sslmode=require"
        );
        assert_eq!(with_database("postgres://u@h/", "x"), "postgres://u@h/x");
    }

    #[test]
    fn unique_names_differ_and_need_no_quoting() {
        let (first, second) = (unique_name(), unique_name());
        assert_ne!(first, second);
        for name in [first, second] {
            assert!(name.len() < 63, "{name}");
            assert!(
                name.bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'),
                "{name}"
            );
        }
    }

    /// The cluster of `scripts/postgres`, when its variables are set; under CI
    /// (`CI=true`, as `scripts/test` runs) their absence fails the test.
    fn cluster() -> Option<(String, Password)> {
        let configured = std::env::var_os(URL_VAR).is_some();
        if !configured && std::env::var("CI").as_deref() != Ok("true") {
            eprintln!(
                "{URL_VAR} is not set: this test needs `scripts/postgres start` (CI runs it)"
            );
            return None;
        }
        Some(test_database())
    }

    fn databases_named(cluster: &(String, Password), name: &str) -> String {
        psql(
            &cluster.0,
            &cluster.1,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        )
    }

    #[test]
    fn fresh_databases_are_empty_apart_and_dropped() {
        let Some(cluster) = cluster() else { return };
        let first = FreshDatabase::create_in(cluster.0.clone(), cluster.1.clone());
        let second = FreshDatabase::create_in(cluster.0.clone(), cluster.1.clone());
        assert_ne!(first.name(), second.name());
        assert!(first.url().contains(first.name()), "{}", first.url());

        // Each is empty, connects over TLS with the cluster's CA, and is its own.
        let tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'";
        assert_eq!(first.query(tables), "0");
        assert_eq!(
            first.query("SELECT current_database(), current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"),
            format!("{}|pivtap|t", first.name())
        );
        assert_eq!(
            first.query("CREATE TABLE t (x int); INSERT INTO t VALUES (7); SELECT x FROM t"),
            "7"
        );
        assert_eq!(second.query(tables), "0");

        // Dropped when it goes, even with a connection still open (WITH (FORCE)).
        let name = first.name().to_owned();
        let mut open = Command::new("psql")
            .args(["-X", "-q", "-d", first.url(), "-c", "SELECT pg_sleep(30)"])
            .env("PGPASSWORD", first.password().expose())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        let sleeping = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' AND query LIKE '%pg_sleep%'"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while psql(&cluster.0, &cluster.1, &sleeping) != "1" {
            assert!(std::time::Instant::now() < deadline, "psql never connected");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(databases_named(&cluster, &name), "1");
        drop(first);
        assert_eq!(databases_named(&cluster, &name), "0");
        assert!(
            !open.wait().expect("psql exits").success(),
            "its connection was closed"
        );
        assert_eq!(databases_named(&cluster, second.name()), "1");
    }

    /// A TLS handshake with the cluster as the stores' driver makes it: rustls
    /// (stricter than libpq's OpenSSL) trusting only `roots`, naming 127.0.0.1.
    fn rustls_handshake(url: &str, roots: &std::path::Path) -> Result<(), rustls::Error> {
        use std::io::{Read, Write};
        let authority = url
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once('/'))
            .expect("the URL has user@host:port/")
            .0;
        let mut socket = std::net::TcpStream::connect(authority).expect("the cluster listens");
        // PostgreSQL's SSLRequest; 'S': go ahead with TLS.
        socket
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .expect("SSLRequest");
        let mut answer = [0_u8];
        socket.read_exact(&mut answer).expect("an answer");
        assert_eq!(answer, *b"S", "the cluster offers TLS");

        let pem = std::fs::read(roots).expect("the CA file");
        let mut store = rustls::RootCertStore::empty();
        for certificate in x509_parser::pem::Pem::iter_from_buffer(&pem) {
            let der = certificate.expect("PEM").contents;
            store
                .add(rustls::pki_types::CertificateDer::from(der))
                .expect("a CA certificate");
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(store)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
        while connection.is_handshaking() {
            connection
                .complete_io(&mut socket)
                .map_err(|error| match error.into_inner() {
                    Some(inner) => match inner.downcast::<rustls::Error>() {
                        Ok(tls) => *tls,
                        Err(other) => panic!("the handshake's I/O failed: {other}"),
                    },
                    None => panic!("the handshake's I/O failed"),
                })?;
        }
        Ok(())
    }

    #[test]
    fn rustls_verifies_the_cluster_certificate_against_its_ca_only() {
        let Some((url, _)) = cluster() else { return };
        let ca = url
            .split_once("sslrootcert=")
            .map(|(_, rest)| rest.split('&').next().unwrap_or(rest))
            .expect("the URL names its CA");
        rustls_handshake(&url, std::path::Path::new(ca)).expect("rustls trusts the cluster");
        let error = rustls_handshake(&url, &crate::test_ca()).expect_err("another CA");
        assert!(
            matches!(error, rustls::Error::InvalidCertificate(_)),
            "{error:?}"
        );
    }

    #[test]
    fn the_cluster_wants_tls_and_the_password() {
        let Some((url, password)) = cluster() else {
            return;
        };
        let refused = |url: &str, password: &str| {
            let output = Command::new("psql")
                .args(["-X", "-q", "-A", "-t", "-d", url, "-c", "SELECT 1"])
                .env("PGPASSWORD", password)
                .env("PGCONNECT_TIMEOUT", "10")
                .output()
                .expect("psql runs");
            assert!(!output.status.success(), "{url} let psql in");
            String::from_utf8_lossy(&output.stderr).into_owned()
        };
        assert_eq!(psql(&url, &password, "SELECT 1"), "1");
        let said = refused(&url.replace("verify-full", "disable"), password.expose());
        assert!(said.contains("no encryption"), "{said}");
        let said = refused(&url, "not-the-password");
        assert!(said.contains("password authentication failed"), "{said}");
        // Another CA: verify-full refuses the server's certificate.
        let (before, after) = url
            .split_once("sslrootcert=")
            .expect("the URL names its CA");
        let rest = after.find('&').map_or("", |at| &after[at..]);
        let other_ca = format!("{before}sslrootcert={}{rest}", crate::test_ca().display());
        let said = refused(&other_ca, password.expose());
        assert!(said.contains("certificate verify failed"), "{said}");
    }
}
