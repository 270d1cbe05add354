//! The one card assertion signer: a `PivSession`, the certificate of the key in a slot and a challenge's claims make a signed assertion.
//!
//! The kiosk's card worker, `pivtap auth` and `pivtap card renew` sign with
//! this; the JWS algorithm comes from [`JwsAlgorithm`] (the one vocabulary),
//! the draft and its assembly from [`AssertionDraft::sign`]. A software key
//! (`pivtap bench`) and the tests' forgers sign through the same
//! [`AssertionDraft::sign`] with a closure of their own.

use pivtap_apdu::piv::{Algorithm, KeyReference};
use pivtap_card::{PivError, PivSession};
use pivtap_protocol::assertion::AssertionDraft;
use pivtap_protocol::certificate::KeyKind;
use pivtap_protocol::jose::JwsAlgorithm;

/// The PIV key algorithm and the JWS algorithm a card signs assertions with, for the key
/// in its certificate: RSA-2048 signs RS256, P-256 ES256, P-384 ES384; `None` for any
/// other key (PIV cards hold no other RSA size this project uses).
#[must_use]
pub fn signing_algorithms(key: KeyKind) -> Option<(Algorithm, JwsAlgorithm)> {
    let card_key = match key {
        KeyKind::Rsa { bits: 2048 } => Algorithm::Rsa2048,
        KeyKind::EcP256 => Algorithm::EccP256,
        KeyKind::EcP384 => Algorithm::EccP384,
        KeyKind::Rsa { .. } | KeyKind::Other => return None,
    };
    JwsAlgorithm::for_piv_key(u8::from(card_key)).map(|algorithm| (card_key, algorithm))
}

/// The card's JOSE signature (RSA raw, ECDSA `r || s`) over `message` with the `key` in
/// `slot`, as `algorithm`. The PIN must be verified.
///
/// # Errors
/// The card's [`PivError`].
pub fn card_signature(
    session: &mut PivSession<'_>,
    slot: KeyReference,
    key: Algorithm,
    algorithm: JwsAlgorithm,
    message: &[u8],
) -> Result<Vec<u8>, PivError> {
    session.sign(slot, key, algorithm, message)
}

/// Has the card sign `draft` with the `key` in `slot` and returns the compact assertion.
/// The PIN must be verified.
///
/// # Errors
/// The card's [`PivError`].
pub fn sign_assertion(
    session: &mut PivSession<'_>,
    slot: KeyReference,
    key: Algorithm,
    draft: &AssertionDraft,
) -> Result<String, PivError> {
    draft.sign(|algorithm, message| card_signature(session, slot, key, algorithm, message))
}

#[cfg(test)]
mod tests {
    use pivtap_apdu::piv::Pin;
    use pivtap_protocol::assertion::signature_verifies;
    use pivtap_protocol::certificate::CertificateFacts;
    use pivtap_protocol::jose::CompactJws;
    use pivtap_protocol::wire::{AssertionPayload, ChallengeResponse};

    use pivtap_vcard::image::CardImage;
    use pivtap_vcard::{VirtualCard, VirtualCardBackend};

    use super::*;

    /// A fixture card, loaded in memory (nothing is ever written back to the fixture).
    fn fixture_card(name: &str) -> VirtualCardBackend {
        let path = format!(
            "{}/../fixtures/cards/{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let image = CardImage::load(path).unwrap();
        VirtualCardBackend::new(VirtualCard::from_image(&image).unwrap(), name)
    }

    #[test]
    fn a_fixture_card_signs_an_assertion_its_certificate_verifies() {
        let challenge = ChallengeResponse {
            nonce: "bm9uY2U".to_owned(),
            aud: "https://auth.example.test".to_owned(),
            expires_at: "2026-01-01T00:00:00Z".to_owned(),
        };
        // alice holds an RSA-2048 9A key, bob a P-256 one.
        for (name, pin, expected) in [
            ("alice", "123456", JwsAlgorithm::Rs256),
            ("bob", "24681357", JwsAlgorithm::Es256),
        ] {
            let mut backend = fixture_card(name);
            let mut session = PivSession::open(&mut backend).unwrap();
            let certificate = session
                .certificate(KeyReference::PivAuthentication)
                .unwrap();
            let (facts, public_key) = CertificateFacts::with_public_key(&certificate).unwrap();
            let (key, algorithm) = signing_algorithms(facts.key).unwrap();
            assert_eq!(algorithm, expected, "{name}");
            session.verify_pin(&Pin::new(pin).unwrap()).unwrap();
            let payload = AssertionPayload::for_challenge(
                &challenge,
                "kiosk-1",
                KeyReference::PivAuthentication,
                1_700_000_000,
            );
            assert_eq!(payload.slot, "9a");
            let draft = AssertionDraft::new(algorithm, &certificate, payload);
            let compact =
                sign_assertion(&mut session, KeyReference::PivAuthentication, key, &draft).unwrap();
            let jws = CompactJws::parse(&compact).unwrap();
            assert_eq!(jws.signing_input, draft.signing_input());
            assert!(
                signature_verifies(
                    algorithm,
                    &public_key,
                    jws.signing_input.as_bytes(),
                    &jws.signature
                ),
                "{name}"
            );
            // The wrong algorithm for the key is refused by the card, not signed.
            let wrong = if algorithm.is_rsa() {
                JwsAlgorithm::Es256
            } else {
                JwsAlgorithm::Rs256
            };
            let draft = AssertionDraft::new(wrong, &certificate, draft.payload.clone());
            assert!(
                sign_assertion(&mut session, KeyReference::PivAuthentication, key, &draft).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn card_keys_map_to_their_jose_algorithms() {
        assert_eq!(
            signing_algorithms(KeyKind::Rsa { bits: 2048 }),
            Some((Algorithm::Rsa2048, JwsAlgorithm::Rs256))
        );
        assert_eq!(
            signing_algorithms(KeyKind::EcP256),
            Some((Algorithm::EccP256, JwsAlgorithm::Es256))
        );
        assert_eq!(
            signing_algorithms(KeyKind::EcP384),
            Some((Algorithm::EccP384, JwsAlgorithm::Es384))
        );
        assert_eq!(signing_algorithms(KeyKind::Rsa { bits: 3072 }), None);
        assert_eq!(signing_algorithms(KeyKind::Rsa { bits: 1024 }), None);
        assert_eq!(signing_algorithms(KeyKind::Other), None);
    }
}
