//! Set-up the server-client suites share: fixture paths and a server directory written by `init_server`, trusting the test CA.

// Each suite is its own crate and uses only part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pivtap_server_client::init::{InitOptions, InitReport, init_server};
use tempfile::TempDir;

/// A file under the workspace's `fixtures/`.
pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

/// A server directory written by `init_server` in a fresh temporary directory, trusting
/// the test CA, listening on `listen`.
pub fn init_directory_listening(listen: SocketAddr) -> (TempDir, InitReport) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = init_server(
        dir.path(),
        &InitOptions {
            trust: vec![fixture("ca/test-ca.pem")],
            listen,
            ..InitOptions::default()
        },
    )
    .expect("init_server writes the server directory");
    (dir, report)
}

/// [`init_directory_listening`] on a port chosen when the server binds (port 0).
pub fn init_directory() -> (TempDir, InitReport) {
    init_directory_listening(SocketAddr::from(([127, 0, 0, 1], 0)))
}
