//! Set-up the server suites share: fixture paths, a server directory written by `init_server` trusting the test CA, and a fixture card's assertion signature.

// Each suite is its own crate and uses only part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pivtap_apdu::piv::{Algorithm, KeyReference};
use pivtap_card::PivSession;
use pivtap_protocol::assertion::AssertionDraft;
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_server::init::{InitOptions, InitReport, init_server};
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

/// The JOSE signature of a fixture card (PIN verified) over `message` with its 9A `key`,
/// as `algorithm`.
pub fn card_signature(
    session: &mut PivSession<'_>,
    key: Algorithm,
    algorithm: JwsAlgorithm,
    message: &[u8],
) -> Vec<u8> {
    let algorithm: JwsAlgorithm = algorithm
        .name()
        .parse()
        .expect("the card knows every JWS name");
    session
        .sign(KeyReference::PivAuthentication, key, algorithm, message)
        .expect("the card signs")
}

/// `draft` signed by a fixture card (PIN verified) with its 9A `key`.
pub fn card_signs(session: &mut PivSession<'_>, key: Algorithm, draft: &AssertionDraft) -> String {
    draft
        .sign(|algorithm, message| {
            Ok::<_, std::convert::Infallible>(card_signature(session, key, algorithm, message))
        })
        .unwrap_or_else(|never| match never {})
}
