//! Not a fuzz target: writes the seeds that need a card or a key (card answers recorded while the host runs its operations on the fixture virtual cards for host_session; signed assertions, a token, a JWKS and an enrollment link for assertion), then exits. It is a libFuzzer binary only to reuse the fuzz build: `scripts/fuzz --seeds` runs it with `-runs=0`, so that only the initialisation runs.
#![no_main]
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pivtap_apdu::piv::{Algorithm, KeyReference, Pin};
use pivtap_card::{CardBackend, CardTransaction, LinkCapabilities, PivSession, TransportError};
use pivtap_fuzz::{OPERATIONS, host_operation};
use pivtap_protocol::assertion::AssertionDraft;
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_protocol::jose::base64url_decode;
use pivtap_protocol::wire::{AssertionPayload, SessionClaims, enrollment_url};
use pivtap_server::config::parse_ca_certificates;
use pivtap_server::token::TokenKeys;
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{CardOptions, NewCard, VirtualCard, VirtualCardBackend};

const NOW: i64 = 1_796_083_200;
const AUDIENCE: &str = "https://auth.example.test";

/// A virtual card that records every raw answer.
struct Recording {
    card: VirtualCardBackend,
    answers: Arc<Mutex<Vec<Vec<u8>>>>,
}

struct RecordingTransaction<'a> {
    inner: Box<dyn CardTransaction + 'a>,
    answers: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CardTransaction for RecordingTransaction<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let answer = self.inner.transmit(command)?;
        if let Ok(mut answers) = self.answers.lock() {
            answers.push(answer.clone());
        }
        Ok(answer)
    }
}

impl CardBackend for Recording {
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
        Ok(Box::new(RecordingTransaction {
            inner: self.card.transaction()?,
            answers: Arc::clone(&self.answers),
        }))
    }

    fn capabilities(&self) -> LinkCapabilities {
        self.card.capabilities()
    }

    fn name(&self) -> String {
        self.card.name()
    }
}

fn fixture_card(name: &str) -> VirtualCard {
    let text = std::fs::read_to_string(root().join(format!("fixtures/cards/{name}.toml")))
        .expect("fixture");
    VirtualCard::from_image(&CardImage::from_toml_str(&text).expect("image")).expect("card")
}

fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(data.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(data);
    out
}

fn write(target: &str, name: &str, data: &[u8]) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&folder).expect("seed folder");
    std::fs::write(folder.join(name), data).expect("seed written");
}

fn host_session_seeds() {
    for card_name in ["alice", "bob", "blank"] {
        for extended in [true, false] {
            for start in [0, 9, 14, 18] {
                let mut card = if card_name == "blank" {
                    let mut new = NewCard::factory(CardOptions::default());
                    new.serial = 12_345_678;
                    VirtualCard::blank(new)
                } else {
                    fixture_card(card_name)
                };
                let mut options = card.options();
                options.extended_length = extended;
                card.set_options(options);
                let answers = Arc::new(Mutex::new(Vec::new()));
                let mut recording = Recording {
                    card: VirtualCardBackend::new(card, "seed"),
                    answers: Arc::clone(&answers),
                };
                {
                    let mut session = PivSession::without_select(&mut recording).expect("session");
                    for index in (0..OPERATIONS).map(|step| (start + step) % OPERATIONS) {
                        // Skip the reset (24th operation): it would wipe the card mid-recording.
                        if index != OPERATIONS - 1 {
                            host_operation(&mut session, index);
                        }
                    }
                }
                let flags = u8::from(extended) | u8::try_from(start << 2).expect("small");
                let mut seed = vec![flags];
                for answer in answers.lock().expect("answers").iter() {
                    seed.extend(frame(answer));
                }
                write(
                    "host_session",
                    &format!(
                        "recorded-{card_name}-{}-{start}",
                        if extended { "extended" } else { "short" }
                    ),
                    &seed,
                );
            }
        }
    }
}

fn assertion_seeds() {
    let ca = parse_ca_certificates(include_bytes!("../../fixtures/ca/test-ca.pem")).expect("CA");
    for (name, pin, key, algorithm) in [
        ("alice", "123456", Algorithm::Rsa2048, JwsAlgorithm::Rs256),
        ("bob", "24681357", Algorithm::EccP256, JwsAlgorithm::Es256),
    ] {
        let pem =
            std::fs::read(root().join(format!("fixtures/certs/{name}.pem"))).expect("certificate");
        let certificate = pem_to_der(&pem);
        let payload = AssertionPayload {
            aud: AUDIENCE.to_owned(),
            nonce: "q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6".to_owned(),
            device: "kiosk-07".to_owned(),
            iat: NOW,
            slot: "9a".to_owned(),
        };
        let mut backend = VirtualCardBackend::new(fixture_card(name), "seed");
        let mut session = PivSession::open(&mut backend).expect("session");
        session
            .verify_pin(&Pin::new(pin).expect("PIN"))
            .expect("PIN verified");
        for (suffix, chain) in [("card", false), ("chain", true)] {
            let mut draft = AssertionDraft::new(algorithm, &certificate, payload.clone());
            if chain {
                let encoded = AssertionDraft::new(JwsAlgorithm::Rs256, &ca[0], payload.clone())
                    .header
                    .x5c;
                draft.header.x5c.extend(encoded);
            }
            let signature = session
                .sign(
                    KeyReference::PivAuthentication,
                    key,
                    algorithm,
                    draft.signing_input().as_bytes(),
                )
                .expect("signed");
            write(
                "assertion",
                &format!("{name}-{suffix}"),
                draft.finish(&signature).as_bytes(),
            );
        }
    }
    let keys = TokenKeys::generate();
    let claims = SessionClaims {
        iss: AUDIENCE.to_owned(),
        sub: "u-alice".to_owned(),
        aud: "pivtap".to_owned(),
        iat: NOW,
        exp: NOW + 3600,
        jti: "t-0001".to_owned(),
        name: "Alice Example".to_owned(),
        email: Some("alice@example.com".to_owned()),
        amr: vec!["hwk".to_owned(), "sc".to_owned(), "pin".to_owned()],
        device: "kiosk-07".to_owned(),
        sid: "s-0001".to_owned(),
    };
    write(
        "assertion",
        "token",
        keys.issue(&claims).expect("token").as_bytes(),
    );
    write("assertion", "jwks", keys.jwks().to_string().as_bytes());
    write(
        "assertion",
        "enrollment-link",
        enrollment_url(AUDIENCE, "ABCD-EFGH-JKLM").as_bytes(),
    );
}

/// The DER of a one-certificate PEM file (base64 made base64url for the JOSE decoder).
fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect::<String>()
        .replace('+', "-")
        .replace('/', "_")
        .replace('=', "");
    base64url_decode(&body).expect("a PEM certificate")
}

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

libfuzzer_sys::fuzz_target!(
    init: {
        host_session_seeds();
        assertion_seeds();
    },
    |_data: &[u8]| {}
);
