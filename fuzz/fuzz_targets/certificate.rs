//! Fuzz target: certificate and CRL parsing and chain validation as the server does it: the facts read from a card certificate (SAN, key, dates, mapping values), the path to the test CA through intermediates, CA and CRL files in PEM or DER.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pivtap_fuzz::Frames;
use pivtap_protocol::certificate::{CertificateFacts, TrustStore};
use pivtap_server::config::{parse_ca_certificates, parse_crls};
use pivtap_server::mapping::{CertificateAttribute, MappingRule, UserAttribute};
use time::OffsetDateTime;

/// 2026-12-01T00:00:00Z, inside the fixture certificates' validity.
const NOW: i64 = 1_796_083_200;

static ANCHORS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    parse_ca_certificates(include_bytes!("../../fixtures/ca/test-ca.pem")).expect("the test CA")
});
static TRUST: LazyLock<TrustStore> =
    LazyLock::new(|| TrustStore::new(&ANCHORS, &[]).expect("a trust store"));

fuzz_target!(|data: &[u8]| {
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("a valid time");
    // The whole input as one certificate.
    if let Ok(facts) = CertificateFacts::from_der(data) {
        let _ = facts.is_valid_at(now);
        for certificate in CertificateAttribute::ALL {
            for user in UserAttribute::ALL {
                let _ = MappingRule { certificate, user }.values(&facts);
            }
        }
        let _ = TRUST.validate(data, &[], now);
    }
    // Framed: a card certificate and intermediates.
    let mut frames = Frames::new(data);
    if let Some(end_entity) = frames.next() {
        let intermediates: Vec<Vec<u8>> = frames.take(8).map(<[u8]>::to_vec).collect();
        if !intermediates.is_empty() {
            let _ = TRUST.validate(end_entity, &intermediates, now);
        }
    }
    // As a CA file and as a CRL file, then as a trust store.
    if let Ok(anchors) = parse_ca_certificates(data) {
        let _ = TrustStore::new(&anchors, &[]);
    }
    if let Ok(crls) = parse_crls(data) {
        let _ = TrustStore::new(&ANCHORS, &crls);
    }
});
