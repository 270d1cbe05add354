//! Criterion benches of the card layer's hot pieces: APDU encoding and decoding, PIV object parsing, and the virtual card's PIN check and signature (`cargo bench -p pivtap-card`).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use pivtap_apdu::piv::objects::{CertificateObject, Chuid};
use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, Pin};
use pivtap_apdu::{CommandApdu, LengthMode, ResponseApdu};
use pivtap_card::{JwsAlgorithm, PivSession};
use pivtap_vcard::{VirtualCard, VirtualCardBackend};

/// A fixture card, copied to a temporary directory so the bench never writes the fixture.
fn fixture_card(name: &str, dir: &Path) -> VirtualCardBackend {
    let source: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "fixtures", "cards", name]
        .iter()
        .collect();
    let copy = dir.join(name);
    std::fs::copy(&source, &copy).expect("the fixture card copies");
    let card = VirtualCard::open(&copy).expect("the fixture card opens");
    VirtualCardBackend::new(card, name)
}

fn apdus(c: &mut Criterion) {
    let general_authenticate = CommandApdu::new(0x00, 0x87, 0x07, 0x9a)
        .with_data(vec![0x5a; 262])
        .with_ne(256);
    let verify = CommandApdu::new(0x00, 0x20, 0x00, 0x80).with_data(vec![0x31; 8]);
    c.bench_function("apdu/encode GENERAL AUTHENTICATE (262 B, extended)", |b| {
        b.iter(|| black_box(&general_authenticate).to_bytes(LengthMode::Extended))
    });
    c.bench_function("apdu/encode VERIFY (short)", |b| {
        b.iter(|| black_box(&verify).to_bytes(LengthMode::Short))
    });
    let encoded = general_authenticate
        .to_bytes(LengthMode::Extended)
        .expect("the command encodes");
    c.bench_function("apdu/decode command (262 B, extended)", |b| {
        b.iter(|| CommandApdu::from_bytes(black_box(&encoded)))
    });
    let mut response = vec![0x30; 1024];
    response.extend_from_slice(&[0x90, 0x00]);
    c.bench_function("apdu/decode response (1024 B)", |b| {
        b.iter(|| ResponseApdu::from_bytes(black_box(&response)))
    });
}

fn objects(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut backend = fixture_card("alice.toml", dir.path());
    let mut session = PivSession::open(&mut backend).expect("the card selects");
    let chuid = session
        .read_object(ObjectTag::Chuid)
        .expect("the CHUID reads");
    let certificate = session
        .read_object(ObjectTag::PivAuthenticationCertificate)
        .expect("the certificate reads");
    c.bench_function("piv/parse CHUID", |b| {
        b.iter(|| Chuid::parse(black_box(&chuid)).expect("the CHUID parses"))
    });
    c.bench_function("piv/parse certificate object (RSA-2048)", |b| {
        b.iter(|| CertificateObject::parse(black_box(&certificate)).expect("the object parses"))
    });
}

fn signatures(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, key, algorithm, label) in [
        (
            "alice.toml",
            Algorithm::Rsa2048,
            JwsAlgorithm::Rs256,
            "RSA-2048",
        ),
        ("bob.toml", Algorithm::EccP256, JwsAlgorithm::Es256, "P-256"),
    ] {
        let mut backend = fixture_card(name, dir.path());
        let mut session = PivSession::open(&mut backend).expect("the card selects");
        let pin = Pin::new(if name == "alice.toml" {
            "123456"
        } else {
            "24681357"
        })
        .expect("a PIN");
        let message = vec![0x41; 700];
        c.bench_function(
            &format!("virtual card/VERIFY + GENERAL AUTHENTICATE ({label})"),
            |b| {
                b.iter(|| {
                    session.verify_pin(&pin).expect("the PIN is right");
                    session
                        .sign(KeyReference::PivAuthentication, key, algorithm, &message)
                        .expect("the card signs")
                })
            },
        );
    }
}

criterion_group!(benches, apdus, objects, signatures);
criterion_main!(benches);
