//! Where the store lives: `sqlite:PATH` or `postgres://user@host:port/database?sslmode=...`, parsed and checked, with the database password kept out of the URL.
//!
//! # Forms
//!
//! - `sqlite:/var/lib/pivtap/pivtap.db` (also `sqlite://PATH`): the embedded SQLite
//!   store. A relative path is relative to the configuration's directory, as the older
//!   top-level `database = "pivtap.db"` is (see [`StoreUrl::resolve`]).
//! - `postgres://user@host:port/database?sslmode=verify-full&sslrootcert=PATH` (also
//!   `postgresql://`): a PostgreSQL store. The port defaults to 5432, the database to
//!   the user's name. `?host=/run/postgresql` names a Unix socket's directory instead of
//!   a TCP host, as libpq does (`postgres://user@/database?host=/dir`).
//!
//! Query parameters: `sslmode` (`disable`, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert` (PEM file of the CAs the database's certificate must chain to; relative
//! to the configuration's directory), `host`, `port`, `connect_timeout` (seconds, default
//! 10) and `application_name`. Anything else is refused, as are libpq's downgradable
//! `prefer` and `allow` modes.
//!
//! # TLS
//!
//! Over TCP the default `sslmode` is `verify-full`: encrypted, the certificate chains
//! to `sslrootcert` (or, without it, to the system's trusted CAs) and names the host.
//! `verify-ca` skips the name check, `require` only encrypts (anyone in the path can
//! pose as the database; unlike libpq, which then quietly checks the chain when it finds
//! a CA file, `require` with `sslrootcert` is refused: say `verify-ca`). `disable` is plain text and allowed only to a loopback host;
//! a Unix socket carries no TLS, so there only `disable` (the default) is allowed.
//!
//! # The password
//!
//! Never in the URL: a URL with a password (`user:secret@host`, `?password=`) is refused,
//! saying where to put it. [`StorePassword::locate`] takes it from the `[store]`
//! `password_file` when one is configured, otherwise from the environment variable
//! [`PASSWORD_ENV`]; the file wins when both are there. The file must be readable by its
//! owner only (mode 0600).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

/// The environment variable the database password is read from when no `password_file`
/// is configured.
pub const PASSWORD_ENV: &str = "PIVTAP_STORE_PASSWORD";

/// PostgreSQL's port unless the URL names another.
pub const DEFAULT_PORT: u16 = 5432;

/// How long connecting to PostgreSQL may take unless `connect_timeout` says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the password goes instead of the URL: said by every refusal of one.
const PASSWORD_ADVICE: &str = "a store URL must not hold the password: put it in a file \
     named by `password_file` in `[store]` (mode 0600), or in the environment variable \
     PIVTAP_STORE_PASSWORD";

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded SQLite store in this file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PostgresUrl),
}

/// A PostgreSQL URL: where, as whom, and how the connection is secured. No password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// The role to connect as.
    pub user: String,
    /// The server: a TCP host or a Unix socket directory.
    pub host: PostgresHost,
    /// The TCP port, or the number in the socket file's name (`.s.PGSQL.PORT`).
    pub port: u16,
    /// The database's name.
    pub database: String,
    /// How the connection is secured.
    pub ssl_mode: SslMode,
    /// The CAs (PEM) the database's certificate must chain to; `None`: the system's.
    pub ssl_root_cert: Option<PathBuf>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Shown in `pg_stat_activity`.
    pub application_name: Option<String>,
}

/// Where the PostgreSQL server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresHost {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// The directory holding the server's Unix socket.
    Socket(PathBuf),
}

/// libpq's `sslmode`, less the modes that fall back to plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS: a Unix socket, or a loopback host.
    Disable,
    /// TLS, any certificate (encryption only).
    Require,
    /// TLS, the certificate chains to the trusted CAs; its name is not checked.
    VerifyCa,
    /// TLS, the certificate chains to the trusted CAs and names the host.
    VerifyFull,
}

impl SslMode {
    /// The mode as the URL spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a store URL is refused. None of them repeats a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreUrlError {
    /// Neither `sqlite:` nor `postgres://` / `postgresql://`.
    #[error(
        "a store URL starts with sqlite: (sqlite:/var/lib/pivtap/pivtap.db) or postgres:// \
         (postgres://pivtap@db.example:5432/pivtap?sslmode=verify-full)"
    )]
    Scheme,
    /// `sqlite:` with no path.
    #[error("sqlite: names no database file (sqlite:/var/lib/pivtap/pivtap.db)")]
    SqliteNoPath,
    /// A password in the URL.
    #[error("{PASSWORD_ADVICE}")]
    Password,
    /// No user before the host.
    #[error("the PostgreSQL URL names no user (postgres://USER@host/database)")]
    NoUser,
    /// Neither a host nor `?host=/socket/dir`.
    #[error(
        "the PostgreSQL URL names no host (postgres://user@HOST/database or ?host=/socket/dir)"
    )]
    NoHost,
    /// Several hosts (libpq's `host1,host2` fail-over list).
    #[error(
        "the PostgreSQL URL names several hosts; give one (put a load balancer or proxy in front for fail-over)"
    )]
    SeveralHosts,
    /// A host given both before the path and as `?host=`.
    #[error("the PostgreSQL URL names its host twice (before the path and as ?host=)")]
    HostTwice,
    /// The port is not a number from 1 to 65535.
    #[error("the PostgreSQL URL's port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// A `%` escape that is not two hex digits or does not decode to UTF-8.
    #[error("the PostgreSQL URL's {0} has a broken %-escape")]
    Escape(&'static str),
    /// A query parameter this program does not know.
    #[error(
        "the PostgreSQL URL's parameter {0:?} is not supported (known: sslmode, sslrootcert, \
         host, port, connect_timeout, application_name)"
    )]
    UnknownParameter(String),
    /// A query parameter given twice.
    #[error("the PostgreSQL URL gives {0} twice")]
    Repeated(String),
    /// An `sslmode` this program does not offer.
    #[error(
        "sslmode={0:?} is not supported: use verify-full (the default), verify-ca, require, \
         or disable (Unix socket or loopback only)"
    )]
    SslMode(String),
    /// `sslmode=disable` to a host that is not loopback.
    #[error(
        "sslmode=disable would send the password and every sign-in in plain text to {0}: \
         it is allowed only for a Unix socket or a loopback host; use verify-full"
    )]
    PlainTextRemote(String),
    /// TLS asked for over a Unix socket.
    #[error("a Unix socket carries no TLS: leave sslmode out (or set disable) with ?host=/dir")]
    TlsOnSocket,
    /// `sslrootcert` given with `sslmode=disable`.
    #[error("sslrootcert is given but sslmode=disable makes no TLS connection")]
    RootCertWithoutTls,
    /// `sslrootcert` given with `sslmode=require`, which checks no certificate.
    #[error(
        "sslrootcert is given but sslmode=require checks no certificate: use verify-full \
         (or verify-ca) to check the database's certificate against it"
    )]
    RootCertWithRequire,
    /// `connect_timeout` is not a number of seconds from 1 to 3600.
    #[error("connect_timeout {0:?} is not a number of seconds from 1 to 3600")]
    ConnectTimeout(String),
    /// Something after the database name (`/db/more`) or a fragment.
    #[error("the PostgreSQL URL's database name {0:?} holds a / or #")]
    Database(String),
}

impl StoreUrl {
    /// Parses a store URL (see the module documentation). Relative paths stay relative
    /// until [`StoreUrl::resolve`].
    ///
    /// # Errors
    /// [`StoreUrlError`], saying what is wrong; a URL holding a password is always refused.
    pub fn parse(text: &str) -> Result<Self, StoreUrlError> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StoreUrlError::SqliteNoPath);
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        let rest = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|scheme| text.strip_prefix(scheme))
            .ok_or(StoreUrlError::Scheme)?;
        PostgresUrl::parse(rest).map(StoreUrl::Postgres)
    }

    /// Makes relative paths (the SQLite file, `sslrootcert`) relative to `base_dir`.
    #[must_use]
    pub fn resolve(mut self, base_dir: &Path) -> Self {
        match &mut self {
            StoreUrl::Sqlite(path) => *path = base_dir.join(&*path),
            StoreUrl::Postgres(url) => {
                if let Some(root) = &mut url.ssl_root_cert {
                    *root = base_dir.join(&*root);
                }
            }
        }
        self
    }

    /// The SQLite file, for a SQLite store.
    #[must_use]
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StoreUrl::Sqlite(path) => Some(path),
            StoreUrl::Postgres(_) => None,
        }
    }

    /// `sqlite` or `postgres`: the kind of store, for messages and `--json`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            StoreUrl::Sqlite(_) => "sqlite",
            StoreUrl::Postgres(_) => "postgres",
        }
    }
}

impl fmt::Display for StoreUrl {
    /// The URL again, in its canonical form (it never holds a password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `sqlite://` before a path that starts with `//` itself: it parses back the same.
            StoreUrl::Sqlite(path) if path.starts_with("//") => {
                write!(f, "sqlite://{}", path.display())
            }
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreUrl::Postgres(url) => url.fmt(f),
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = StoreUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        StoreUrl::parse(text)
    }
}

impl serde::Serialize for StoreUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StoreUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        StoreUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl PostgresUrl {
    /// Parses what follows `postgres://`.
    fn parse(rest: &str) -> Result<Self, StoreUrlError> {
        if rest.contains('#') {
            return Err(StoreUrlError::Database(rest.to_owned()));
        }
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = before_query.split_once('/').unwrap_or((before_query, ""));
        let (user_info, host_port) = authority.rsplit_once('@').unwrap_or(("", authority));
        if user_info.contains(':') {
            return Err(StoreUrlError::Password);
        }
        let user = decode(user_info, "user")?;
        if user.is_empty() {
            return Err(StoreUrlError::NoUser);
        }
        let database = decode(database, "database name")?;
        if database.contains('/') {
            return Err(StoreUrlError::Database(database));
        }
        let (mut host, mut port) = split_host_port(host_port)?;

        let mut ssl_mode = None;
        let mut ssl_root_cert = None;
        let mut connect_timeout = None;
        let mut application_name = None;
        let mut seen: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key, "parameter")?;
            let value = decode(value, "parameter")?;
            if key == "password" {
                return Err(StoreUrlError::Password);
            }
            if seen.contains(&key) {
                return Err(StoreUrlError::Repeated(key));
            }
            match key.as_str() {
                "sslmode" => ssl_mode = Some(parse_ssl_mode(&value)?),
                "sslrootcert" => ssl_root_cert = Some(PathBuf::from(value)),
                "host" => {
                    if host.is_some() {
                        return Err(StoreUrlError::HostTwice);
                    }
                    host = Some(if value.starts_with('/') {
                        PostgresHost::Socket(PathBuf::from(value))
                    } else {
                        check_one_host(&value)?;
                        PostgresHost::Tcp(value)
                    });
                }
                "port" => {
                    if port.is_some() {
                        return Err(StoreUrlError::Repeated(key));
                    }
                    port = Some(parse_port(&value)?);
                }
                "connect_timeout" => {
                    let seconds = value
                        .parse::<u64>()
                        .ok()
                        .filter(|seconds| (1..=3600).contains(seconds))
                        .ok_or_else(|| StoreUrlError::ConnectTimeout(value.clone()))?;
                    connect_timeout = Some(Duration::from_secs(seconds));
                }
                "application_name" => application_name = Some(value),
                _ => return Err(StoreUrlError::UnknownParameter(key)),
            }
            seen.push(key);
        }

        let host = host.ok_or(StoreUrlError::NoHost)?;
        let ssl_mode = match (&host, ssl_mode) {
            (PostgresHost::Socket(_), None | Some(SslMode::Disable)) => SslMode::Disable,
            (PostgresHost::Socket(_), Some(_)) => return Err(StoreUrlError::TlsOnSocket),
            (PostgresHost::Tcp(name), Some(SslMode::Disable)) => {
                if !is_loopback(name) {
                    return Err(StoreUrlError::PlainTextRemote(name.clone()));
                }
                SslMode::Disable
            }
            (PostgresHost::Tcp(_), mode) => mode.unwrap_or(SslMode::VerifyFull),
        };
        if ssl_root_cert.is_some() {
            match ssl_mode {
                SslMode::Disable => return Err(StoreUrlError::RootCertWithoutTls),
                // libpq would quietly check the chain then; here the URL says what it does.
                SslMode::Require => return Err(StoreUrlError::RootCertWithRequire),
                SslMode::VerifyCa | SslMode::VerifyFull => {}
            }
        }
        let database = if database.is_empty() {
            user.clone()
        } else {
            database
        };
        Ok(PostgresUrl {
            user,
            host,
            port: port.unwrap_or(DEFAULT_PORT),
            database,
            ssl_mode,
            ssl_root_cert,
            connect_timeout: connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            application_name,
        })
    }

    /// The driver's settings for this URL, with `password` when there is one.
    #[must_use]
    pub fn driver_config(&self, password: Option<&StorePassword>) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .user(&self.user)
            .dbname(&self.database)
            .port(self.port)
            .connect_timeout(self.connect_timeout)
            .ssl_mode(match self.ssl_mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                // The connector decides what is checked; the driver must insist on TLS.
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            });
        match &self.host {
            PostgresHost::Tcp(name) => config.host(name),
            PostgresHost::Socket(dir) => config.host_path(dir),
        };
        if let Some(name) = &self.application_name {
            config.application_name(name);
        }
        if let Some(password) = password {
            config.password(password.0.as_bytes());
        }
        config
    }
}

impl fmt::Display for PostgresUrl {
    /// `postgres://user@host:port/database?sslmode=...` (no password: it never has one).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = encode(&self.user, b"");
        let database = encode(&self.database, b"");
        match &self.host {
            PostgresHost::Tcp(name) if name.contains(':') => {
                write!(f, "postgres://{user}@[{name}]:{}/{database}", self.port)?;
            }
            PostgresHost::Tcp(name) => {
                let name = encode(name, b"");
                write!(f, "postgres://{user}@{name}:{}/{database}", self.port)?;
            }
            PostgresHost::Socket(dir) => write!(
                f,
                "postgres://{user}@/{database}?host={}&port={}",
                encode(&dir.display().to_string(), b"/"),
                self.port
            )?,
        }
        let mut separator = if matches!(self.host, PostgresHost::Socket(_)) {
            '&'
        } else {
            '?'
        };
        let mut parameter = |f: &mut fmt::Formatter<'_>, key: &str, value: &str| {
            let written = write!(f, "{separator}{key}={}", encode(value, b"/"));
            separator = '&';
            written
        };
        if !matches!(self.host, PostgresHost::Socket(_)) {
            parameter(f, "sslmode", self.ssl_mode.as_str())?;
        }
        if let Some(root) = &self.ssl_root_cert {
            parameter(f, "sslrootcert", &root.display().to_string())?;
        }
        if self.connect_timeout != DEFAULT_CONNECT_TIMEOUT {
            parameter(
                f,
                "connect_timeout",
                &self.connect_timeout.as_secs().to_string(),
            )?;
        }
        if let Some(name) = &self.application_name {
            parameter(f, "application_name", name)?;
        }
        Ok(())
    }
}

fn parse_ssl_mode(value: &str) -> Result<SslMode, StoreUrlError> {
    match value {
        "disable" => Ok(SslMode::Disable),
        "require" => Ok(SslMode::Require),
        "verify-ca" => Ok(SslMode::VerifyCa),
        "verify-full" => Ok(SslMode::VerifyFull),
        other => Err(StoreUrlError::SslMode(other.to_owned())),
    }
}

fn parse_port(text: &str) -> Result<u16, StoreUrlError> {
    text.parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| StoreUrlError::Port(text.to_owned()))
}

fn check_one_host(host: &str) -> Result<(), StoreUrlError> {
    if host.contains(',') {
        Err(StoreUrlError::SeveralHosts)
    } else {
        Ok(())
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or nothing, from between `@` and `/`.
fn split_host_port(text: &str) -> Result<(Option<PostgresHost>, Option<u16>), StoreUrlError> {
    check_one_host(text)?;
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(StoreUrlError::NoHost)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(StoreUrlError::Port(after.to_owned())),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let host = decode(host, "host")?;
    let port = port.map(parse_port).transpose()?;
    Ok(((!host.is_empty()).then_some(PostgresHost::Tcp(host)), port))
}

/// Whether connecting to `host` stays on this machine.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Decodes `%XX` escapes; `what` names the part for the error.
fn decode(text: &str, what: &'static str) -> Result<String, StoreUrlError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or(StoreUrlError::Escape(what))?;
            out.push(hex);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).map_err(|_| StoreUrlError::Escape(what))
}

/// Escapes what would end a URL part (`%`, `@`, `/`, `?`, `&`, `#`, `=`, `:`, spaces),
/// except the bytes of `keep`.
fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The database password: wiped from memory when dropped, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct StorePassword(Zeroizing<String>);

impl fmt::Debug for StorePassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorePassword(<redacted>)")
    }
}

/// Why the database password could not be had. None shows the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorePasswordError {
    /// The password file cannot be read.
    #[error("cannot read the database password file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The password file may be read by others.
    #[error(
        "the database password file {} has mode {mode:04o}: others may read it; chmod 600 {}",
        path.display(),
        path.display()
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The password file holds nothing.
    #[error("the database password file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The environment variable is set but empty or not UTF-8.
    #[error("{PASSWORD_ENV} is set but empty or not UTF-8")]
    Environment,
}

impl StorePassword {
    /// The password itself, for a test's check that it shows nowhere.
    #[cfg(test)]
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// A password given directly (a test's, say).
    #[must_use]
    pub fn new(password: String) -> Self {
        StorePassword(Zeroizing::new(password))
    }

    /// The password of `password_file` when it is `Some` (the file wins), otherwise of
    /// the environment variable [`PASSWORD_ENV`], otherwise none (the database then
    /// must not ask for one: peer or certificate authentication).
    ///
    /// # Errors
    /// [`StorePasswordError`]: an unreadable, empty or loosely permitted file, or an
    /// empty variable.
    pub fn locate(password_file: Option<&Path>) -> Result<Option<Self>, StorePasswordError> {
        match password_file {
            Some(path) => Self::read_file(path).map(Some),
            None => Self::from_environment(std::env::var_os(PASSWORD_ENV)),
        }
    }

    /// The password in the environment variable's value `value`, if set.
    fn from_environment(
        value: Option<std::ffi::OsString>,
    ) -> Result<Option<Self>, StorePasswordError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let value = Zeroizing::new(
            value
                .into_string()
                .map_err(|_| StorePasswordError::Environment)?,
        );
        if value.is_empty() {
            return Err(StorePasswordError::Environment);
        }
        Ok(Some(StorePassword(value)))
    }

    /// The password in `path`: its first line, which must not be empty; the file must be
    /// readable by its owner only.
    ///
    /// # Errors
    /// [`StorePasswordError`].
    pub fn read_file(path: &Path) -> Result<Self, StorePasswordError> {
        let read_error = |source| StorePasswordError::Read {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path)
                .map_err(read_error)?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(StorePasswordError::Mode {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_error)?);
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(StorePasswordError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(StorePassword(Zeroizing::new(line.to_owned())))
    }
}

/// Why the configured store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStoreError {
    /// The database password could not be had.
    #[error(transparent)]
    Password(#[from] StorePasswordError),
    /// `password_file` is configured for a SQLite store, which has no password.
    #[error("password_file is set, but a SQLite store ({0}) takes no password")]
    PasswordForSqlite(PathBuf),
    /// The store refused to open, connect or migrate.
    #[error("cannot open the store {url}{}", if *.without_password {
        " (with no password: neither [store] password_file nor PIVTAP_STORE_PASSWORD is set)"
    } else {
        ""
    })]
    Store {
        /// Whether no password was given (a PostgreSQL store asking for one fails).
        without_password: bool,
        /// The store's URL (it holds no password).
        url: String,
        /// Why.
        #[source]
        source: super::StoreError,
    },
}

/// Opens the store at `url`: SQLite's file (created on first use), or a PostgreSQL
/// database with the password of `password_file` or [`PASSWORD_ENV`] (see
/// [`StorePassword::locate`]). Either way the schema is brought up to date.
///
/// # Errors
/// [`OpenStoreError`].
pub async fn open_store(
    url: &StoreUrl,
    password_file: Option<&Path>,
) -> Result<std::sync::Arc<dyn super::Store>, OpenStoreError> {
    Ok(super::bulk::BulkStore::open(url, password_file)
        .await?
        .into_store())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn postgres(text: &str) -> PostgresUrl {
        match StoreUrl::parse(text) {
            Ok(StoreUrl::Postgres(url)) => url,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn sqlite_urls_name_a_file_relative_to_the_configuration() {
        assert_eq!(
            StoreUrl::parse("sqlite:/var/lib/pivtap/pivtap.db").unwrap(),
            StoreUrl::Sqlite("/var/lib/pivtap/pivtap.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///var/x.db").unwrap(),
            StoreUrl::Sqlite("/var/x.db".into())
        );
        let relative = StoreUrl::parse("sqlite:data/pivtap.db").unwrap();
        assert_eq!(relative.sqlite_path(), Some(Path::new("data/pivtap.db")));
        assert_eq!(
            relative.resolve(Path::new("/etc/pivtap")),
            StoreUrl::Sqlite("/etc/pivtap/data/pivtap.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:").unwrap_err(),
            StoreUrlError::SqliteNoPath
        );
        assert_eq!(
            StoreUrl::parse("mysql://x@y/z").unwrap_err(),
            StoreUrlError::Scheme
        );
        assert_eq!(
            StoreUrl::parse("/var/lib/pivtap.db").unwrap_err(),
            StoreUrlError::Scheme
        );
    }

    #[test]
    fn postgres_urls_default_to_verify_full_over_tcp() {
        let url = postgres("postgres://pivtap@db.example/pivtap");
        assert_eq!(url.user, "pivtap");
        assert_eq!(url.host, PostgresHost::Tcp("db.example".into()));
        assert_eq!(url.port, DEFAULT_PORT);
        assert_eq!(url.database, "pivtap");
        assert_eq!(url.ssl_mode, SslMode::VerifyFull);
        assert_eq!(url.ssl_root_cert, None);
        assert_eq!(url.connect_timeout, DEFAULT_CONNECT_TIMEOUT);

        let url = postgres(
            "postgresql://svc%40corp@127.0.0.1:6543/sign%20in?sslmode=verify-ca&sslrootcert=ca.crt\
             &connect_timeout=3&application_name=node%201",
        );
        assert_eq!(url.user, "svc@corp");
        assert_eq!(url.host, PostgresHost::Tcp("127.0.0.1".into()));
        assert_eq!(url.port, 6543);
        assert_eq!(url.database, "sign in");
        assert_eq!(url.ssl_mode, SslMode::VerifyCa);
        assert_eq!(url.ssl_root_cert, Some(PathBuf::from("ca.crt")));
        assert_eq!(url.connect_timeout, Duration::from_secs(3));
        assert_eq!(url.application_name.as_deref(), Some("node 1"));
        // The canonical form parses back to the same.
        let again = StoreUrl::parse(&StoreUrl::Postgres(url.clone()).to_string()).unwrap();
        assert_eq!(again, StoreUrl::Postgres(url));

        let url = postgres("postgres://u@[::1]:5433/d?sslmode=require");
        assert_eq!(url.host, PostgresHost::Tcp("::1".into()));
        assert_eq!(url.port, 5433);
        assert_eq!(url.ssl_mode, SslMode::Require);
        assert_eq!(
            StoreUrl::parse(&StoreUrl::Postgres(url.clone()).to_string()).unwrap(),
            StoreUrl::Postgres(url)
        );
        // The database defaults to the user's name.
        assert_eq!(postgres("postgres://alice@h").database, "alice");
    }

    #[test]
    fn a_unix_socket_is_named_by_the_host_parameter() {
        let url = postgres("postgres://pivtap@/pivtap?host=/run/postgresql&port=5433");
        assert_eq!(url.host, PostgresHost::Socket("/run/postgresql".into()));
        assert_eq!(url.port, 5433);
        assert_eq!(url.ssl_mode, SslMode::Disable);
        assert_eq!(
            StoreUrl::parse(&StoreUrl::Postgres(url.clone()).to_string()).unwrap(),
            StoreUrl::Postgres(url)
        );
        assert_eq!(
            StoreUrl::parse("postgres://p@/d?host=/run/postgresql&sslmode=verify-full")
                .unwrap_err(),
            StoreUrlError::TlsOnSocket
        );
        assert_eq!(
            StoreUrl::parse("postgres://p@h/d?host=/run/postgresql").unwrap_err(),
            StoreUrlError::HostTwice
        );
        // A host parameter that is not a directory is a TCP host.
        assert_eq!(
            postgres("postgres://p@/d?host=db.example").host,
            PostgresHost::Tcp("db.example".into())
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_saying_where_it_goes() {
        for text in [
            "postgres://pivtap:secret@db/pivtap",
            "postgres://pivtap:@db/pivtap",
            "postgres://pivtap@db/pivtap?password=secret",
            "postgresql://pivtap@db/pivtap?sslmode=require&password=secret",
        ] {
            let error = StoreUrl::parse(text).unwrap_err();
            assert_eq!(error, StoreUrlError::Password, "{text}");
            let message = error.to_string();
            assert!(message.contains("password_file"), "{message}");
            assert!(message.contains(PASSWORD_ENV), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn plain_text_is_refused_to_a_remote_host() {
        let error = StoreUrl::parse("postgres://p@db.example/d?sslmode=disable").unwrap_err();
        assert_eq!(error, StoreUrlError::PlainTextRemote("db.example".into()));
        assert!(error.to_string().contains("verify-full"), "{error}");
        assert_eq!(
            StoreUrl::parse("postgres://p@10.0.0.7/d?sslmode=disable").unwrap_err(),
            StoreUrlError::PlainTextRemote("10.0.0.7".into())
        );
        for loopback in ["127.0.0.1", "localhost", "[::1]", "127.0.0.9"] {
            let url = postgres(&format!("postgres://p@{loopback}/d?sslmode=disable"));
            assert_eq!(url.ssl_mode, SslMode::Disable, "{loopback}");
        }
        assert_eq!(
            StoreUrl::parse("postgres://p@127.0.0.1/d?sslmode=disable&sslrootcert=ca.crt")
                .unwrap_err(),
            StoreUrlError::RootCertWithoutTls
        );
        assert_eq!(
            StoreUrl::parse("postgres://p@db/d?sslmode=require&sslrootcert=ca.crt").unwrap_err(),
            StoreUrlError::RootCertWithRequire
        );
    }

    #[test]
    fn bad_urls_are_refused_with_what_is_wrong() {
        let cases = [
            ("postgres://db/pivtap", StoreUrlError::NoUser),
            ("postgres://p@/d", StoreUrlError::NoHost),
            ("postgres://p@a,b/d", StoreUrlError::SeveralHosts),
            ("postgres://p@h:0/d", StoreUrlError::Port("0".into())),
            (
                "postgres://p@h:99999/d",
                StoreUrlError::Port("99999".into()),
            ),
            ("postgres://p@h:x/d", StoreUrlError::Port("x".into())),
            (
                "postgres://p@h/d?sslmode=prefer",
                StoreUrlError::SslMode("prefer".into()),
            ),
            (
                "postgres://p@h/d?sslmode=allow",
                StoreUrlError::SslMode("allow".into()),
            ),
            (
                "postgres://p@h/d?sslcert=x",
                StoreUrlError::UnknownParameter("sslcert".into()),
            ),
            (
                "postgres://p@h/d?sslmode=require&sslmode=disable",
                StoreUrlError::Repeated("sslmode".into()),
            ),
            (
                "postgres://p@h:5432/d?port=1",
                StoreUrlError::Repeated("port".into()),
            ),
            (
                "postgres://p@h/d?connect_timeout=0",
                StoreUrlError::ConnectTimeout("0".into()),
            ),
            ("postgres://p%zz@h/d", StoreUrlError::Escape("user")),
            ("postgres://p@h/d/e", StoreUrlError::Database("d/e".into())),
            (
                "postgres://p@h/d#x",
                StoreUrlError::Database("p@h/d#x".into()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(StoreUrl::parse(text).unwrap_err(), expected, "{text}");
        }
    }

    #[test]
    fn the_driver_gets_tls_required_and_the_password_only_from_outside() {
        let url = postgres("postgres://pivtap@127.0.0.1:6000/db?sslmode=verify-full");
        let config = url.driver_config(Some(&StorePassword::new("hunter2".into())));
        assert_eq!(config.get_user(), Some("pivtap"));
        assert_eq!(config.get_dbname(), Some("db"));
        assert_eq!(config.get_ports(), [6000]);
        assert_eq!(config.get_password(), Some(&b"hunter2"[..]));
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let socket = postgres("postgres://pivtap@/db?host=/tmp/pg").driver_config(None);
        assert_eq!(socket.get_password(), None);
        assert_eq!(
            socket.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        assert_eq!(
            socket.get_hosts(),
            [tokio_postgres::config::Host::Unix("/tmp/pg".into())]
        );
    }

    #[test]
    fn the_password_file_wins_must_be_private_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        pivtap_files::write_atomically(&file, b"s3cret\n", 0o600).unwrap();
        let password = StorePassword::locate(Some(&file)).unwrap().unwrap();
        assert_eq!(password, StorePassword::new("s3cret".into()));
        assert_eq!(format!("{password:?}"), "StorePassword(<redacted>)");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
            let error = StorePassword::read_file(&file).unwrap_err();
            assert!(matches!(
                error,
                StorePasswordError::Mode { mode: 0o640, .. }
            ));
            assert!(error.to_string().contains("chmod 600"), "{error}");
            assert!(!error.to_string().contains("s3cret"), "{error}");
        }

        let empty = dir.path().join("empty");
        pivtap_files::write_atomically(&empty, b"\n", 0o600).unwrap();
        assert!(matches!(
            StorePassword::read_file(&empty).unwrap_err(),
            StorePasswordError::Empty { .. }
        ));
        assert!(matches!(
            StorePassword::read_file(&dir.path().join("absent")).unwrap_err(),
            StorePasswordError::Read { .. }
        ));

        // Without a file: the environment's value, if any.
        assert_eq!(
            StorePassword::from_environment(Some("from-env".into())).unwrap(),
            Some(StorePassword::new("from-env".into()))
        );
        assert_eq!(StorePassword::from_environment(None).unwrap(), None);
        assert!(matches!(
            StorePassword::from_environment(Some("".into())).unwrap_err(),
            StorePasswordError::Environment
        ));
    }
}
