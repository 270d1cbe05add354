//! Store URLs on the command line until the server's own store URL type replaces this: `sqlite:PATH` and `postgres://` with the password from PIVTAP_STORE_PASSWORD.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// The environment variable holding the PostgreSQL password.
pub const PASSWORD_VAR: &str = "PIVTAP_STORE_PASSWORD";

/// The database file of a `sqlite:PATH` URL.
pub fn sqlite_path(url: &str) -> anyhow::Result<PathBuf> {
    match url.strip_prefix("sqlite:") {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => bail!(
            "{url:?} is not an SQLite store URL: give sqlite:PATH (such as sqlite:/var/lib/pivtap/pivtap.db)"
        ),
    }
}

/// The connection settings of a `postgres://` (or `postgresql://`, or libpq `key=value`)
/// URL, with the password from [`PASSWORD_VAR`]; a password in the URL is refused.
pub fn postgres_config(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url.parse().with_context(|| {
        "not a PostgreSQL URL: give postgres://USER@HOST:PORT/DATABASE".to_owned()
    })?;
    if config.get_password().is_some() {
        bail!("put the PostgreSQL password in {PASSWORD_VAR}, not in the URL");
    }
    if let Ok(password) = std::env::var(PASSWORD_VAR) {
        config.password(password);
    }
    Ok(config)
}
