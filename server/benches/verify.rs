//! Criterion benches of the server's assertion verification without HTTP: the compact JWS, its header and claims, the card certificate and its chain, the signature (`cargo bench -p pivtap-server`).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use pivtap_apdu::piv::{Algorithm, KeyReference, Pin};
use pivtap_card::PivSession;
use pivtap_protocol::assertion::AssertionDraft;
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_protocol::wire::AssertionPayload;
use pivtap_server::config::read_ca_certificates;
use pivtap_server::verifier::{AssertionVerifier, VerifierConfig};
use pivtap_vcard::{VirtualCard, VirtualCardBackend};
use time::OffsetDateTime;

const AUDIENCE: &str = "https://auth.example.test";

fn fixture(path: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "..", "fixtures", path]
        .iter()
        .collect()
}

/// A valid assertion signed by a fixture card (copied to `dir`, so the fixture is never written).
fn assertion(
    name: &str,
    pin: &str,
    key: Algorithm,
    algorithm: JwsAlgorithm,
    dir: &Path,
) -> (String, Vec<u8>) {
    let copy = dir.join(name);
    std::fs::copy(fixture(&format!("cards/{name}")), &copy).expect("the fixture card copies");
    let mut backend =
        VirtualCardBackend::new(VirtualCard::open(&copy).expect("the card opens"), name);
    let mut session = PivSession::open(&mut backend).expect("the card selects");
    let certificate = session
        .certificate(KeyReference::PivAuthentication)
        .expect("the certificate reads");
    let draft = AssertionDraft::new(
        algorithm,
        &certificate,
        AssertionPayload {
            aud: AUDIENCE.to_owned(),
            nonce: URL_SAFE_NO_PAD.encode([7; 32]),
            device: "kiosk-07".to_owned(),
            iat: OffsetDateTime::now_utc().unix_timestamp(),
            slot: "9a".to_owned(),
        },
    );
    session
        .verify_pin(&Pin::new(pin).expect("a PIN"))
        .expect("the PIN is right");
    let signature = session
        .sign(
            KeyReference::PivAuthentication,
            key,
            algorithm,
            draft.signing_input().as_bytes(),
        )
        .expect("the card signs");
    (draft.finish(&signature), certificate)
}

fn verification(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let anchors = read_ca_certificates(&fixture("ca/test-ca.pem")).expect("the test CA loads");
    let verifier = AssertionVerifier::new(VerifierConfig::new(AUDIENCE, anchors))
        .expect("the test CA is a trust anchor");
    for (name, pin, key, algorithm, label) in [
        (
            "alice.toml",
            "123456",
            Algorithm::Rsa2048,
            JwsAlgorithm::Rs256,
            "RS256",
        ),
        (
            "bob.toml",
            "24681357",
            Algorithm::EccP256,
            JwsAlgorithm::Es256,
            "ES256",
        ),
    ] {
        let (compact, certificate) = assertion(name, pin, key, algorithm, dir.path());
        let now = OffsetDateTime::now_utc();
        verifier
            .verify(&compact, now)
            .expect("the assertion verifies");
        c.bench_function(&format!("assertion/verify ({label})"), |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(&compact), now)
                    .expect("it verifies")
            })
        });
        c.bench_function(&format!("certificate/parse facts ({label} card)"), |b| {
            b.iter(|| CertificateFacts::from_der(black_box(&certificate)).expect("it parses"))
        });
    }
}

criterion_group!(benches, verification);
criterion_main!(benches);
