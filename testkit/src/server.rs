//! Servers for tests: an embedded server (real HTTPS on a loopback port) trusting the test CA with the fixture badges' users, and server directories written by `init_server`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Method, Request, header};
use std::path::Path;

use pivtap_protocol::wire::UserRecord;
use pivtap_server::config::ServerConfig;
use pivtap_server::init::{InitOptions, InitReport, init_server};
use pivtap_server::server::embedded::EmbeddedServer;
use pivtap_server::server::{self, ServerState};
use pivtap_server::store::{User, UserState};

use crate::badge::Badge;
use crate::test_ca;
use tempfile::TempDir;

/// Starts an embedded server in `dir`, trusting the test CA, whose directory holds the
/// users of `badges` (active).
pub async fn with_badge_users(dir: &Path, badges: &[Badge]) -> EmbeddedServer {
    let users: Vec<User> = badges.iter().map(Badge::user).collect();
    with_users(dir, &users).await
}

/// Starts an embedded server in `dir`, trusting the test CA, whose directory holds `users`.
pub async fn with_users(dir: &Path, users: &[User]) -> EmbeddedServer {
    EmbeddedServer::start(dir, vec![test_ca()], users)
        .await
        .expect("the embedded server starts")
}

/// An active user with a mail address, no UPN and no employee id.
#[must_use]
pub fn active_user(id: &str, display_name: &str, mail: &str) -> User {
    User {
        id: id.to_owned(),
        display_name: display_name.to_owned(),
        mail: Some(mail.to_owned()),
        upn: None,
        employee_id: None,
        state: UserState::Active,
    }
}

/// An active user with a mail address as the admin API sends them (`POST /admin/users`).
#[must_use]
pub fn user_record(id: &str, display_name: &str, mail: &str) -> UserRecord {
    UserRecord {
        id: id.to_owned(),
        display_name: display_name.to_owned(),
        mail: Some(mail.to_owned()),
        upn: None,
        employee_id: None,
        state: "active".to_owned(),
    }
}

/// A server directory written by `init_server` in a fresh temporary directory, trusting
/// the test CA, listening on `listen`.
#[must_use]
pub fn init_directory_listening(listen: SocketAddr) -> (TempDir, InitReport) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = init_server(
        dir.path(),
        &InitOptions {
            trust: vec![test_ca()],
            listen,
            ..InitOptions::default()
        },
    )
    .expect("init_server writes the server directory");
    (dir, report)
}

/// [`init_directory_listening`] on a port chosen when the server binds (port 0).
#[must_use]
pub fn init_directory() -> (TempDir, InitReport) {
    init_directory_listening(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The server state built from `config` (a directory `init_server` wrote) with `users` in
/// its store, for tests that drive the app with `oneshot`, without a socket.
pub async fn state_with_users(config: &ServerConfig, users: &[User]) -> ServerState {
    let (state, _listener) = server::from_config(config)
        .await
        .expect("the server state builds");
    for user in users {
        state
            .store()
            .add_user(user)
            .await
            .expect("the user is added");
    }
    state
}

/// The admin token `init_server` wrote (`admin.token`), trimmed.
#[must_use]
pub fn admin_token(report: &InitReport) -> String {
    std::fs::read_to_string(&report.admin_token_path)
        .expect("admin.token reads")
        .trim()
        .to_owned()
}

/// `METHOD /v1/admin{path}` with `token` as the bearer credential and a body of
/// `content_type`, for `oneshot`.
#[must_use]
pub fn admin_request(
    token: &str,
    method: Method,
    path: &str,
    content_type: &str,
    body: impl Into<Body>,
) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("/v1/admin{path}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .expect("a request")
}

/// Installs the process-wide TLS provider (aws-lc-rs) the server's and clients' rustls
/// needs; a second call changes nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
