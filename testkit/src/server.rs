//! An embedded server (real HTTPS on a loopback port) trusting the test CA, with the fixture badges' users.

use std::path::Path;

use pivtap_server_client::server::embedded::EmbeddedServer;
use pivtap_server_client::store::{User, UserState};

use crate::badge::Badge;
use crate::test_ca;

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
