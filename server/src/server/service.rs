//! Running the server until it is told to stop: the server lock a restore respects, SIGHUP reloads of the trust configuration, and a graceful stop on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{ServeError, ServerState, StartError, from_config, serve_announcing};
use crate::backup::{ServerLock, lock_path};
use crate::config::ServerConfig;

/// Why the server did not run to a requested stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// `pivtap server restore` is replacing the database's files.
    #[error("a restore is writing {}; start the server when it is done", .0.display())]
    RestoreRunning(PathBuf),
    /// The configuration, database or keys could not be opened.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The listener could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the server of `configuration` (loaded from `config_path`) until SIGTERM or
/// Ctrl-C, then stops gracefully. While it runs it holds the server lock (shared, so
/// several processes may serve one database; a restore waits for them), and on each
/// SIGHUP reloads the trusted CAs, CRLs and mapping from `config_path`, keeping the
/// previous ones when the new ones do not load. `on_listening` hears the bound address
/// once the port listens.
///
/// # Errors
/// [`RunError`].
pub async fn run_until_stopped(
    config_path: PathBuf,
    configuration: &ServerConfig,
    on_listening: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<(), RunError> {
    // The lock is a file beside SQLite's; PostgreSQL's nodes need none (pg_dump works live).
    let _lock = match configuration.sqlite_database() {
        Some(database) => server_lock(database)?,
        None => None,
    };
    // Before anything else: SIGHUP's default action ends the process.
    let hangups = hangup_signal();
    let (state, listener) = from_config(configuration).await?;
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_hangup(hangups, state.clone(), config_path));
    }
    serve_announcing(state, listener, shutdown_signal(), on_listening).await?;
    Ok(())
}

/// The shared server lock, or `None` (logged) when the lock file cannot be made: the
/// server still runs, but a restore cannot tell.
fn server_lock(database: &Path) -> Result<Option<ServerLock>, RunError> {
    match ServerLock::shared(database) {
        Ok(Some(lock)) => Ok(Some(lock)),
        Ok(None) => Err(RunError::RestoreRunning(database.to_owned())),
        Err(error) => {
            tracing::warn!(
                %error,
                lock = %lock_path(database).display(),
                "cannot take the server lock; `pivtap server restore` cannot tell this server runs"
            );
            Ok(None)
        }
    }
}

/// The stream of SIGHUPs (`None` off Unix, or if it cannot be set up: logged).
#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: reloading takes a restart");
            None
        }
    }
}

/// Off Unix there is no SIGHUP.
#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

/// On each SIGHUP, reloads the trusted CAs, CRLs and mapping from `config`
/// ([`ServerState::reload`]) and logs what it loaded, or why it kept the previous ones.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    state: ServerState,
    config: PathBuf,
) {
    while hangups.recv().await.is_some() {
        let reloaded = ServerConfig::load(&config)
            .map_err(StartError::from)
            .and_then(|configuration| state.reload(&configuration));
        match reloaded {
            Ok(report) => tracing::info!(
                config = %config.display(),
                trust_anchors = report.trust_anchors,
                crls = report.crls,
                mapping = %report.mapping,
                "SIGHUP: reloaded the trusted CAs, CRLs and mapping"
            ),
            Err(error) => tracing::error!(
                config = %config.display(),
                error = %crate::check::error_chain(&error),
                "SIGHUP: reload failed; the previous trusted CAs, CRLs and mapping stay in force"
            ),
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_: (), _: ServerState, _: PathBuf) {}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
