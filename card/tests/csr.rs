//! Certificate requests signed by the card (`csr::certificate_request`) against the virtual card, checked by x509-parser, rcgen and openssl.

use std::process::Command;

use pivtap_apdu::piv::{Algorithm, KeyReference};
use pivtap_card::csr::{CsrError, certificate_request};
use pivtap_card::spki::subject_public_key_info;
use pivtap_card::{ManagementKey, PivError, PivSession, factory};
use pivtap_vcard::{CardOptions, NewCard, VirtualCard, VirtualCardBackend};
use x509_parser::prelude::FromDer;

fn blank_card() -> VirtualCardBackend {
    VirtualCardBackend::new(
        VirtualCard::blank(NewCard::factory(CardOptions::default())),
        "csr test card",
    )
}

/// A session on `backend` that has authenticated with the default management key.
fn authenticated(backend: &mut VirtualCardBackend) -> PivSession<'_> {
    let mut session = PivSession::open(backend).unwrap();
    session
        .authenticate_management_key(&ManagementKey::default_key())
        .unwrap();
    session
}

/// Generates a key in 9A, verifies the PIN and makes a request.
fn request_for(algorithm: Algorithm) -> (Vec<u8>, Vec<u8>) {
    let mut backend = blank_card();
    let mut session = authenticated(&mut backend);
    let public_key = session
        .generate_key(KeyReference::PivAuthentication, algorithm)
        .unwrap();
    session.verify_pin(&factory::pin()).unwrap();
    let der = certificate_request(
        &mut session,
        KeyReference::PivAuthentication,
        &public_key,
        "alice",
    )
    .unwrap();
    (der, subject_public_key_info(&public_key).unwrap())
}

fn check_request(algorithm: Algorithm, signature_oid: &str) {
    let (der, spki) = request_for(algorithm);
    let (rest, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
    assert!(rest.is_empty());
    request.verify_signature().unwrap();
    assert_eq!(
        request.certification_request_info.subject_pki.raw,
        spki.as_slice(),
        "the request carries the card's key"
    );
    assert_eq!(
        request.signature_algorithm.algorithm.to_id_string(),
        signature_oid
    );
    assert_eq!(
        request.certification_request_info.subject.to_string(),
        "CN=alice"
    );
    let params = rcgen::CertificateSigningRequestParams::from_der(&der.as_slice().into());
    assert!(params.is_ok(), "rcgen accepts it: {:?}", params.err());
    openssl_verifies(&der);
}

/// `openssl req -verify` on the request, when openssl is installed.
fn openssl_verifies(der: &[u8]) {
    if let Some((ok, said)) = openssl_verify(der) {
        assert!(ok, "openssl req -verify: {said}");
    }
}

/// Runs `openssl req -verify`: whether it succeeded and what it said;
/// `None` when openssl is not installed.
fn openssl_verify(der: &[u8]) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("request.der");
    std::fs::write(&path, der).unwrap();
    let output = match Command::new("openssl")
        .args(["req", "-inform", "DER", "-noout", "-verify", "-in"])
        .arg(&path)
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            eprintln!("openssl not run ({error}); skipping its check");
            return None;
        }
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // openssl 3.0 exits 0 even when the self-signature fails: read what it says.
    let ok = output.status.success() && said.contains("verify OK") && !said.contains("failure");
    Some((ok, said))
}

#[test]
fn openssl_refuses_a_tampered_request() {
    let (mut der, _) = request_for(Algorithm::EccP256);
    // The subject's "alice" becomes "alicf": the signature no longer matches.
    let at = der
        .windows(5)
        .position(|w| w == b"alice")
        .expect("the subject is in the request");
    der[at + 4] = b'f';
    if let Some((ok, said)) = openssl_verify(&der) {
        assert!(!ok, "openssl accepted a tampered request: {said}");
    }
    assert_eq!(
        rcgen::CertificateSigningRequestParams::from_der(&der.as_slice().into()).err(),
        Some(rcgen::Error::InvalidCertificationRequestSignature)
    );
}

#[test]
fn p256_requests_are_signed_by_the_card() {
    check_request(Algorithm::EccP256, "1.2.840.10045.4.3.2");
}

#[test]
fn p384_requests_are_signed_by_the_card() {
    check_request(Algorithm::EccP384, "1.2.840.10045.4.3.3");
}

#[test]
fn rsa_requests_are_signed_by_the_card() {
    check_request(Algorithm::Rsa2048, "1.2.840.113549.1.1.11");
}

#[test]
fn a_request_with_someone_elses_key_does_not_verify() {
    let mut backend = blank_card();
    let mut session = authenticated(&mut backend);
    let other = session
        .generate_key(KeyReference::DigitalSignature, Algorithm::EccP256)
        .unwrap();
    session
        .generate_key(KeyReference::PivAuthentication, Algorithm::EccP256)
        .unwrap();
    session.verify_pin(&factory::pin()).unwrap();
    // The 9A key signs, but the request claims the 9C key.
    let error = certificate_request(
        &mut session,
        KeyReference::PivAuthentication,
        &other,
        "mallory",
    )
    .unwrap_err();
    assert!(matches!(error, CsrError::Build(_)), "{error:?}");
}

#[test]
fn without_the_pin_the_card_error_comes_through() {
    let mut backend = blank_card();
    let mut session = authenticated(&mut backend);
    let public_key = session
        .generate_key(KeyReference::PivAuthentication, Algorithm::EccP256)
        .unwrap();
    let error = certificate_request(
        &mut session,
        KeyReference::PivAuthentication,
        &public_key,
        "alice",
    )
    .unwrap_err();
    assert!(
        matches!(error, CsrError::Card(PivError::AccessDenied { .. })),
        "{error:?}"
    );
}
