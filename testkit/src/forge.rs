//! An assertion forger for hostile tests: compact JWS from any header, payload and signature bytes, and card signatures over any signing input.

use std::convert::Infallible;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pivtap_apdu::piv::Algorithm;
use pivtap_card::PivSession;
use pivtap_protocol::assertion::AssertionDraft;
use pivtap_protocol::jose::{JwsAlgorithm, base64url_encode};
use pivtap_protocol::wire::ASSERTION_TYPE;
use serde_json::{Value, json};

use crate::badge::{Badge, SLOT};

/// A compact JWS from any header and payload JSON and any signature bytes.
#[must_use]
pub fn compact(header: &Value, payload: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        base64url_encode(header.to_string().as_bytes()),
        base64url_encode(payload.to_string().as_bytes()),
        base64url_encode(signature)
    )
}

/// The three parts of a compact JWS, as they are (still base64url).
#[must_use]
pub fn parts(compact: &str) -> [String; 3] {
    let parts: Vec<String> = compact.split('.').map(str::to_owned).collect();
    parts.try_into().expect("three parts")
}

/// An assertion header as text: `alg` (any text, even one no server accepts), the pivtap
/// `typ`, and `x5c` holding the DER certificates given.
#[must_use]
pub fn header_json(alg: &str, x5c: &[Vec<u8>]) -> String {
    json!({
        "alg": alg,
        "typ": ASSERTION_TYPE,
        "x5c": x5c.iter().map(|der| STANDARD.encode(der)).collect::<Vec<_>>(),
    })
    .to_string()
}

/// `header` and `payload` (any text) signed by `badge` with the algorithm of its key,
/// whatever the header claims.
#[must_use]
pub fn signed_by(badge: &Badge, header: &str, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        base64url_encode(header.as_bytes()),
        base64url_encode(payload.as_bytes())
    );
    let signature = badge.sign(badge.algorithm(), input.as_bytes());
    format!("{input}.{}", base64url_encode(&signature))
}

/// The DER of the first certificate in a PEM file.
#[must_use]
pub fn pem_der(path: &Path) -> Vec<u8> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body).expect("PEM base64")
}

/// The JOSE signature of a card (PIN verified) over `message` with its 9A `key`, as
/// `algorithm`.
#[must_use]
pub fn card_signature(
    session: &mut PivSession<'_>,
    key: Algorithm,
    algorithm: JwsAlgorithm,
    message: &[u8],
) -> Vec<u8> {
    session
        .sign(SLOT, key, algorithm, message)
        .expect("the card signs")
}

/// `draft` signed by a card (PIN verified) with its 9A `key`.
#[must_use]
pub fn card_signs(session: &mut PivSession<'_>, key: Algorithm, draft: &AssertionDraft) -> String {
    draft
        .sign(|algorithm, message| {
            Ok::<_, Infallible>(card_signature(session, key, algorithm, message))
        })
        .unwrap_or_else(|never| match never {})
}
