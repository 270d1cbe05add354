//! Fixture certificates as DER and certificate revocation lists signed by the fixture test CA.

use rcgen::{CertificateRevocationListParams, Issuer, KeyPair, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;

use crate::fixture;

/// The DER of a PEM certificate under `fixtures/`.
#[must_use]
pub fn fixture_der(path: &str) -> Vec<u8> {
    let pem = std::fs::read(fixture(path)).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    pem.contents
}

/// A CRL signed by the fixture test CA, revoking `serials` (hex).
#[must_use]
pub fn test_ca_crl(serials: &[&str]) -> Vec<u8> {
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(fixture("ca/test-ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(fixture("ca/test-ca.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).unwrap();
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(1_u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&hex::decode(serial).unwrap()),
                revocation_time: now - time::Duration::minutes(5),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .der()
    .to_vec()
}
