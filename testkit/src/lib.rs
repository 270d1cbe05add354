//! Test set-up shared by pivtap's test suites, written once: fixture files and badges, an embedded server with their users, vpcd readers and the pcscd lock, an assertion forger, a real PostgreSQL with a database per test.
//!
//! A dev-dependency only (`publish = false`): every function panics with a clear
//! message instead of returning an error, since a failed set-up fails the test.
//!
//! - [`badge`]: the fixture badges (`fixtures/cards/*.toml`) and the people they belong to.
//! - [`server`]: an [`EmbeddedServer`](pivtap_server::server::embedded::EmbeddedServer)
//!   trusting the test CA, with the badges' users.
//! - [`pcscd`]: the vpcd readers and their ports, the pcscd lock, cards in vpcd readers.
//! - [`forge`]: compact JWS from any header, payload and signature, for hostile tests.
//! - [`pki`]: fixture certificates as DER and CRLs signed by the test CA.
//! - [`postgres`]: the throw-away PostgreSQL of `scripts/postgres` and a fresh database per test.
#![forbid(unsafe_code)]

pub mod badge;
pub mod forge;
pub mod pcscd;
pub mod pki;
pub mod postgres;
pub mod server;

use std::path::{Path, PathBuf};

/// A file under the workspace's `fixtures/` (`relative` such as `"ca/test-ca.pem"`).
#[must_use]
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(relative)
}

/// The test CA (`fixtures/ca/test-ca.pem`) that issued the fixture badges' certificates.
#[must_use]
pub fn test_ca() -> PathBuf {
    fixture("ca/test-ca.pem")
}

/// A port that was free a moment ago on 127.0.0.1 (bound on port 0, let go): another
/// process may take it before the test binds it, so a test tries a few.
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral port on loopback")
        .port()
}
