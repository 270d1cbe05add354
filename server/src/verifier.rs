//! The server's stateless checks of a card-signed assertion ([`AssertionVerifier`]); the device's side is `pivtap_protocol::assertion`.
//!
//! The verifier checks cheap things first and the signature before the
//! certificate chain, so a forged assertion never costs a path build. The
//! nonce, the device binding, card and user state and the user mapping need
//! the store and are the caller's.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use time::OffsetDateTime;

use pivtap_protocol::assertion::signature_verifies;
use pivtap_protocol::certificate::{
    CertificateError, CertificateFacts, ChainError, TrustStore, is_card_authentication_certificate,
};
use pivtap_protocol::jose::{CompactJws, JoseError, JwsAlgorithm};
use pivtap_protocol::wire::{
    ASSERTION_TYPE, AssertionPayload, DEFAULT_SIGN_IN_SLOTS, ErrorBody, ErrorCode, amr_for_slot,
};

/// How far `iat` may be from the server's clock unless configured otherwise.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The most certificates `x5c` may hold: the card's and three intermediates.
pub const MAX_CHAIN_CERTIFICATES: usize = 4;
/// The largest certificate accepted in `x5c`, DER bytes.
pub const MAX_CERTIFICATE_LEN: usize = 16 * 1024;
pub use pivtap_protocol::jose::{MAX_RSA_BITS, MIN_RSA_BITS};

/// What the server accepts assertions against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// This server's origin: the `aud` every assertion must carry.
    pub audience: String,
    /// CA certificates that issue cards, DER.
    pub trust_anchors: Vec<Vec<u8>>,
    /// Certificate revocation lists, DER.
    pub crls: Vec<Vec<u8>>,
    /// How far `iat` may be from the server's clock, either way.
    pub max_clock_skew: Duration,
    /// The key slots an assertion's `slot` may name (lower-case hex, of
    /// [`PIV_SIGNING_SLOTS`](pivtap_protocol::wire::PIV_SIGNING_SLOTS)); by default only `9a`.
    pub allowed_slots: Vec<String>,
}

impl VerifierConfig {
    /// A configuration with no CRLs, [`DEFAULT_MAX_CLOCK_SKEW`] and only slot `9a` allowed.
    #[must_use]
    pub fn new(audience: impl Into<String>, trust_anchors: Vec<Vec<u8>>) -> Self {
        VerifierConfig {
            audience: audience.into(),
            trust_anchors,
            crls: Vec::new(),
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            allowed_slots: DEFAULT_SIGN_IN_SLOTS.map(str::to_owned).to_vec(),
        }
    }
}

/// Why an assertion was refused: a stable code and a sentence for people,
/// without internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// The stable code.
    pub code: ErrorCode,
    /// What is wrong, for people.
    pub message: String,
}

impl Rejection {
    /// A rejection with `code` and `message`.
    #[must_use]
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Rejection::new(ErrorCode::InvalidRequest, message)
    }
}

impl From<Rejection> for ErrorBody {
    fn from(rejection: Rejection) -> Self {
        ErrorBody {
            error: rejection.code,
            message: rejection.message,
        }
    }
}

/// An assertion that passed every stateless check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The claims (the nonce and device are still to be checked against the store).
    pub payload: AssertionPayload,
    /// The card certificate.
    pub certificate: CertificateFacts,
    /// The algorithm the card signed with.
    pub alg: JwsAlgorithm,
    /// What the signature proves (RFC 8176), from the key slot: `["hwk", "sc", "pin"]` for `9a`.
    pub amr: Vec<String>,
}

/// The header as received: every member optional so that each missing one
/// gets its own answer, and nothing unknown (no `crit`, no `jwk`, no `kid`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceivedHeader {
    alg: Option<String>,
    typ: Option<String>,
    x5c: Option<Vec<String>>,
}

/// The most card certificates whose chain [`AssertionVerifier`] remembers as validated.
const MAX_VALIDATED_CHAINS: usize = 10_000;

/// Checks assertions statelessly. Built once from the configuration; cheap
/// to share between requests (`Send + Sync`).
///
/// A card certificate issued directly by a trust anchor (`x5c` holds it alone) has its
/// chain built and its CA signature checked once: its SHA-256 is remembered, and later
/// assertions with the same certificate skip the path building. Everything else is
/// checked every time: the assertion's signature, claims and time, the card
/// certificate's validity at `now`; with CRLs configured nothing is remembered, so the
/// CRLs are consulted on every assertion (the server checks its own revocation list and
/// card state on every sign-in, outside the verifier).
#[derive(Debug)]
pub struct AssertionVerifier {
    audience: String,
    max_clock_skew: Duration,
    allowed_slots: Vec<String>,
    trust: TrustStore,
    validated: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl AssertionVerifier {
    /// Parses the trust anchors and CRLs.
    ///
    /// # Errors
    /// [`CertificateError`] naming a trust anchor or CRL that cannot be used,
    /// or [`CertificateError::NoTrustAnchors`].
    pub fn new(config: VerifierConfig) -> Result<Self, CertificateError> {
        Ok(AssertionVerifier {
            trust: TrustStore::new(&config.trust_anchors, &config.crls)?,
            audience: config.audience,
            max_clock_skew: config.max_clock_skew,
            allowed_slots: config.allowed_slots,
            validated: std::sync::Mutex::default(),
        })
    }

    /// The `aud` assertions must carry.
    #[must_use]
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// How far an `iat` may be from the server's clock, either way.
    #[must_use]
    pub fn max_clock_skew(&self) -> Duration {
        self.max_clock_skew
    }

    /// Every stateless check, in this order, each with its code:
    ///
    /// 1. structure (three base64url parts, at most 64 KiB), header JSON
    ///    (no unknown members), `typ` == [`ASSERTION_TYPE`]: `invalid_request`;
    /// 2. `alg` is RS256, RS512, ES256 or ES384 (never `none`, never HMAC): `invalid_request`;
    /// 3. `x5c` present, at most 4 certificates of at most 16 KiB, the first
    ///    one readable: `invalid_request`;
    /// 4. `alg` fits the certificate's key (RS* an RSA key of 2048 to 8192
    ///    bits, ES256 P-256, ES384 P-384): `invalid_request`;
    /// 5. the signature verifies with the certificate's key: `signature_invalid`;
    /// 6. payload JSON with exactly the expected members: `invalid_request`;
    /// 7. `aud` is this server's audience: `invalid_request`;
    /// 8. `iat` is within `max_clock_skew` of `now`, either way: `invalid_request`;
    /// 9. `slot` is one of the allowed slots (only `9a` unless configured), and only `9e`
    ///    if the certificate is a card-authentication one (EKU id-PIV-cardAuth): `slot_not_allowed`;
    /// 10. `now` lies in the card certificate's validity period: `certificate_expired`;
    /// 11. keyUsage digitalSignature (when the extension is present), a path
    ///     to a trust anchor through `x5c[1..]` with clientAuth EKU (when
    ///     present) and every CA within its validity, with basicConstraints cA and
    ///     keyCertSign (when it has keyUsage): `certificate_untrusted`
    ///     (`certificate_expired` for an expired CA);
    /// 12. no configured CRL lists a certificate of the path: `certificate_revoked`.
    ///
    /// The nonce, the device binding, card/user state and mapping are the caller's.
    ///
    /// # Errors
    /// The first [`Rejection`] met.
    pub fn verify(
        &self,
        compact: &str,
        now: OffsetDateTime,
    ) -> Result<VerifiedAssertion, Rejection> {
        self.verify_signed_by(compact, now, None)
    }

    /// As [`AssertionVerifier::verify`], except that the signature must verify with the key
    /// of `signer` (DER; checked for nothing else, so only a certificate the caller trusts
    /// already, such as a pending renewal's) instead of the key of `x5c[0]`, whose every other
    /// check still applies. A renewal cut after the card's new key replaced the old one, but
    /// before the new certificate reached the card, resumes with this: the card still
    /// presents its old certificate and signs with its new key.
    ///
    /// # Errors
    /// The first [`Rejection`] met; `signature_invalid` when `signer` cannot be read.
    pub fn verify_signed_by_successor(
        &self,
        compact: &str,
        now: OffsetDateTime,
        signer: &[u8],
    ) -> Result<VerifiedAssertion, Rejection> {
        self.verify_signed_by(compact, now, Some(signer))
    }

    fn verify_signed_by(
        &self,
        compact: &str,
        now: OffsetDateTime,
        signer: Option<&[u8]>,
    ) -> Result<VerifiedAssertion, Rejection> {
        let jws = CompactJws::parse(compact).map_err(|error| {
            Rejection::invalid(match error {
                JoseError::TooLarge { .. } => "the assertion is too large",
                _ => "the assertion is not a compact JWS (three base64url parts separated by dots)",
            })
        })?;
        let header: ReceivedHeader = serde_json::from_slice(&jws.header).map_err(|_| {
            Rejection::invalid("the assertion header is not a JSON object with alg, typ and x5c")
        })?;
        if header.typ.as_deref() != Some(ASSERTION_TYPE) {
            return Err(Rejection::invalid(format!(
                "the assertion's typ must be {ASSERTION_TYPE}"
            )));
        }
        let algorithm = header
            .alg
            .as_deref()
            .and_then(|name| JwsAlgorithm::from_name(name).ok())
            .ok_or_else(|| {
                Rejection::invalid("the assertion's alg must be RS256, RS512, ES256 or ES384")
            })?;
        let chain = decode_chain(header.x5c.as_deref().unwrap_or_default())?;
        let Some((card_der, intermediates)) = chain.split_first() else {
            return Err(Rejection::invalid(
                "the assertion header must carry the card certificate in x5c",
            ));
        };
        let (certificate, public_key) = CertificateFacts::with_public_key(card_der)
            .map_err(|_| Rejection::invalid("the card certificate in x5c cannot be read"))?;
        if certificate.device.is_some() {
            // A device's own certificate (issued by the same CA) never signs anyone in.
            return Err(Rejection::new(
                ErrorCode::CertificateUntrusted,
                "a device certificate is not a card certificate",
            ));
        }
        let (signing_key, public_key) = match signer {
            None => (certificate.key, public_key),
            Some(der) => {
                let (successor, key) = CertificateFacts::with_public_key(der).map_err(|_| {
                    Rejection::new(
                        ErrorCode::SignatureInvalid,
                        "the new certificate cannot be read",
                    )
                })?;
                if !successor.is_valid_at(now) {
                    return Err(Rejection::new(
                        ErrorCode::CertificateExpired,
                        "the new certificate is outside its validity period",
                    ));
                }
                (successor.key, key)
            }
        };
        if algorithm.check_key(signing_key).is_err() {
            return Err(Rejection::invalid(format!(
                "{algorithm} cannot be used with the certificate's {signing_key} key"
            )));
        }
        if !signature_verifies(
            algorithm,
            &public_key,
            jws.signing_input.as_bytes(),
            &jws.signature,
        ) {
            return Err(Rejection::new(
                ErrorCode::SignatureInvalid,
                "the signature does not verify with the certificate's key",
            ));
        }
        let payload: AssertionPayload = serde_json::from_slice(&jws.payload).map_err(|_| {
            Rejection::invalid(
                "the assertion payload must hold exactly aud, nonce, device, iat and slot",
            )
        })?;
        if payload.aud != self.audience {
            return Err(Rejection::invalid(
                "the assertion is meant for another server (aud)",
            ));
        }
        if payload.iat.abs_diff(now.unix_timestamp()) > self.max_clock_skew.as_secs() {
            return Err(Rejection::invalid(
                "the assertion's iat is too far from the server's clock",
            ));
        }
        let amr = self
            .allowed_slots
            .contains(&payload.slot)
            .then(|| amr_for_slot(&payload.slot))
            .flatten()
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::SlotNotAllowed,
                    format!(
                        "this server accepts only assertions signed with the key of slot {}",
                        self.allowed_slots.join(" or ")
                    ),
                )
            })?;
        // The claim is the signer's word; a card-authentication certificate says which key
        // signed: it may not stand in for the PIN-protected keys.
        if payload.slot != "9e" && is_card_authentication_certificate(card_der) {
            return Err(Rejection::new(
                ErrorCode::SlotNotAllowed,
                "the card certificate is a card-authentication (9e) certificate, which signs without a PIN",
            ));
        }
        if !certificate.is_valid_at(now) {
            return Err(Rejection::new(
                ErrorCode::CertificateExpired,
                "the card certificate is outside its validity period",
            ));
        }
        // Only a lone card certificate, with no CRLs, is remembered: its validity is
        // checked above on every call and nothing else in its chain depends on the time.
        let rememberable = intermediates.is_empty() && !self.trust.has_crls();
        if !(rememberable && self.chain_known(&certificate.fingerprint)) {
            self.trust
                .validate(card_der, intermediates, now)
                .map_err(|error| {
                    tracing::debug!(%error, serial = %certificate.serial, "card certificate refused");
                    chain_rejection(&error)
                })?;
            if rememberable {
                self.remember_chain(&certificate.fingerprint);
            }
        }
        Ok(VerifiedAssertion {
            payload,
            certificate,
            alg: algorithm,
            amr: amr.iter().map(|method| (*method).to_owned()).collect(),
        })
    }
}

impl AssertionVerifier {
    fn chain_known(&self, fingerprint: &str) -> bool {
        self.validated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(fingerprint)
    }

    fn remember_chain(&self, fingerprint: &str) {
        let mut validated = self
            .validated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if validated.len() >= MAX_VALIDATED_CHAINS {
            validated.clear();
        }
        validated.insert(fingerprint.to_owned());
    }
}

/// Decodes `x5c` (standard base64 DER), refusing long chains and large
/// certificates (the whole JWS is already capped at 64 KiB).
fn decode_chain(x5c: &[String]) -> Result<Vec<Vec<u8>>, Rejection> {
    if x5c.len() > MAX_CHAIN_CERTIFICATES {
        return Err(Rejection::invalid(format!(
            "x5c may hold at most {MAX_CHAIN_CERTIFICATES} certificates"
        )));
    }
    x5c.iter()
        .map(|encoded| {
            let der = STANDARD.decode(encoded).map_err(|_| {
                Rejection::invalid("x5c must hold certificates in standard base64 (DER)")
            })?;
            if der.len() > MAX_CERTIFICATE_LEN {
                return Err(Rejection::invalid(format!(
                    "a certificate in x5c is larger than {MAX_CERTIFICATE_LEN} bytes"
                )));
            }
            Ok(der)
        })
        .collect()
}

fn chain_rejection(error: &ChainError) -> Rejection {
    match error {
        ChainError::Expired => Rejection::new(
            ErrorCode::CertificateExpired,
            "a certificate in the card's chain is outside its validity period",
        ),
        ChainError::Revoked => Rejection::new(
            ErrorCode::CertificateRevoked,
            "the card certificate is revoked",
        ),
        ChainError::KeyUsage => Rejection::new(
            ErrorCode::CertificateUntrusted,
            "the card certificate's key usage does not allow signing in",
        ),
        ChainError::NotACertificateSigner => Rejection::new(
            ErrorCode::CertificateUntrusted,
            "a CA certificate in the card's chain may not sign certificates (keyCertSign, cA)",
        ),
        ChainError::Untrusted(_) => Rejection::new(
            ErrorCode::CertificateUntrusted,
            "the card certificate is not issued by a trusted CA for client authentication",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pivtap_apdu::piv::{Algorithm, KeyReference, Pin};
    use pivtap_card::JwsAlgorithm;
    use pivtap_card::PivSession;
    use pivtap_protocol::assertion::AssertionDraft;
    use pivtap_protocol::certificate::KeyKind;
    use pivtap_protocol::jose::{base64url_decode, base64url_encode};
    use pivtap_protocol::wire::AssertionHeader;
    use pivtap_testkit::fixture;
    use pivtap_testkit::pki::{fixture_der, test_ca_crl};
    use pivtap_vcard::image::CardImage;
    use pivtap_vcard::{VirtualCard, VirtualCardBackend};
    use proptest::prelude::*;
    use serde_json::Value;
    use serde_json::json;
    use std::sync::OnceLock;

    const AUDIENCE: &str = "https://auth.example.com";
    const SLOT: KeyReference = KeyReference::PivAuthentication;

    /// A fixture card and its PIN.
    struct TestCard {
        name: &'static str,
        pin: &'static str,
    }

    const ALICE: TestCard = TestCard {
        name: "alice",
        pin: "123456",
    };
    const BOB: TestCard = TestCard {
        name: "bob",
        pin: "24681357",
    };
    const CAROL: TestCard = TestCard {
        name: "carol",
        pin: "123456",
    };
    const EXPIRED: TestCard = TestCard {
        name: "expired",
        pin: "123456",
    };
    const UNTRUSTED: TestCard = TestCard {
        name: "untrusted",
        pin: "123456",
    };

    impl TestCard {
        /// Opens the card image in memory (nothing is written back to the
        /// fixture) and runs `work` with the 9A key's algorithm.
        fn with_session<T>(&self, work: impl FnOnce(&mut PivSession<'_>, Algorithm) -> T) -> T {
            let image = CardImage::load(fixture(&format!("cards/{}.toml", self.name))).unwrap();
            let key = image
                .keys
                .iter()
                .find(|entry| entry.slot() == SLOT)
                .unwrap()
                .algorithm();
            let card = VirtualCard::from_image(&image).unwrap();
            let mut backend = VirtualCardBackend::new(card, self.name);
            let mut session = PivSession::open(&mut backend).unwrap();
            work(&mut session, key)
        }

        fn certificate(&self) -> Vec<u8> {
            self.with_session(|session, _| session.certificate(SLOT).unwrap())
        }

        /// Signs `message` with the card's 9A key as `algorithm` after the PIN.
        fn sign(&self, algorithm: JwsAlgorithm, message: &[u8]) -> Vec<u8> {
            self.with_session(|session, key| {
                session.verify_pin(&Pin::new(self.pin).unwrap()).unwrap();
                session.sign(SLOT, key, algorithm, message).unwrap()
            })
        }

        /// A draft as a device would make it, claiming `alg`.
        fn draft(&self, alg: JwsAlgorithm) -> AssertionDraft {
            AssertionDraft::new(alg, &self.certificate(), payload())
        }

        /// `draft` signed by the card as `algorithm`.
        fn signed(&self, draft: &AssertionDraft, algorithm: JwsAlgorithm) -> String {
            draft.finish(&self.sign(algorithm, draft.signing_input().as_bytes()))
        }

        /// A valid assertion signed with `algorithm`.
        fn assertion(&self, algorithm: JwsAlgorithm) -> String {
            self.signed(&self.draft(algorithm), algorithm)
        }

        /// Any header and payload JSON, signed by the card as `algorithm`.
        fn sign_raw(&self, algorithm: JwsAlgorithm, header: &Value, payload: &Value) -> String {
            let input = format!(
                "{}.{}",
                base64url_encode(header.to_string().as_bytes()),
                base64url_encode(payload.to_string().as_bytes())
            );
            let signature = self.sign(algorithm, input.as_bytes());
            format!("{input}.{}", base64url_encode(&signature))
        }

        fn header(&self, alg: &str) -> Value {
            json!({"alg": alg, "typ": ASSERTION_TYPE, "x5c": [STANDARD.encode(self.certificate())]})
        }
    }

    fn payload() -> AssertionPayload {
        AssertionPayload {
            aud: AUDIENCE.to_owned(),
            nonce: base64url_encode([7; 32]),
            device: "kiosk-07".to_owned(),
            iat: OffsetDateTime::now_utc().unix_timestamp(),
            slot: "9a".to_owned(),
        }
    }

    fn payload_json() -> Value {
        serde_json::to_value(payload()).unwrap()
    }

    fn config() -> VerifierConfig {
        VerifierConfig::new(AUDIENCE, vec![fixture_der("ca/test-ca.pem")])
    }

    fn verifier() -> AssertionVerifier {
        AssertionVerifier::new(config()).unwrap()
    }

    fn verify(compact: &str) -> Result<VerifiedAssertion, Rejection> {
        verifier().verify(compact, OffsetDateTime::now_utc())
    }

    /// The code of the rejection, failing the test if the assertion passed.
    fn code(compact: &str) -> ErrorCode {
        verify(compact).unwrap_err().code
    }

    /// Splits a compact JWS into its three texts.
    fn parts(compact: &str) -> [String; 3] {
        let parts: Vec<String> = compact.split('.').map(str::to_owned).collect();
        parts.try_into().unwrap()
    }

    #[test]
    fn alices_rs256_assertion_verifies() {
        let verified = verify(&ALICE.assertion(JwsAlgorithm::Rs256)).unwrap();
        assert_eq!(verified.alg, JwsAlgorithm::Rs256);
        assert_eq!(verified.payload.aud, AUDIENCE);
        assert_eq!(verified.payload.device, "kiosk-07");
        assert_eq!(verified.certificate.emails, ["alice@example.com"]);
        assert_eq!(verified.certificate.der, fixture_der("certs/alice.pem"));
    }

    #[test]
    fn alices_rs512_assertion_verifies() {
        let verified = verify(&ALICE.assertion(JwsAlgorithm::Rs512)).unwrap();
        assert_eq!(verified.alg, JwsAlgorithm::Rs512);
    }

    #[test]
    fn bobs_es256_assertion_verifies() {
        let verified = verify(&BOB.assertion(JwsAlgorithm::Es256)).unwrap();
        assert_eq!(verified.alg, JwsAlgorithm::Es256);
        assert_eq!(verified.certificate.key, KeyKind::EcP256);
        assert_eq!(verified.payload, {
            let mut expected = payload();
            expected.iat = verified.payload.iat;
            expected
        });
    }

    #[test]
    fn the_draft_is_what_the_verifier_reads() {
        let draft = BOB.draft(JwsAlgorithm::Es256);
        let input = draft.signing_input();
        let [header, payload, signature] = parts(&draft.finish(&[1, 2, 3]));
        assert_eq!(format!("{header}.{payload}"), input);
        assert_eq!(base64url_decode(&signature).unwrap(), [1, 2, 3]);
        let header: AssertionHeader =
            serde_json::from_slice(&base64url_decode(&header).unwrap()).unwrap();
        assert_eq!(header, draft.header);
        assert_eq!(header.typ, ASSERTION_TYPE);
        assert_eq!(
            STANDARD.decode(&header.x5c[0]).unwrap(),
            fixture_der("certs/bob.pem")
        );
        let payload: AssertionPayload =
            serde_json::from_slice(&base64url_decode(&payload).unwrap()).unwrap();
        assert_eq!(payload, draft.payload);
        // And once the card signs it, the verifier accepts it.
        assert!(verify(&BOB.signed(&draft, JwsAlgorithm::Es256)).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let unsigned = format!(
            "{}.{}.",
            base64url_encode(ALICE.header("none").to_string().as_bytes()),
            base64url_encode(payload_json().to_string().as_bytes())
        );
        let rejection = verify(&unsigned).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidRequest);
        assert_eq!(
            rejection.message,
            "the assertion's alg must be RS256, RS512, ES256 or ES384"
        );
    }

    #[test]
    fn hs256_keyed_with_the_certificates_public_key_is_refused_as_an_alg() {
        let (_, public_key) =
            CertificateFacts::with_public_key(&fixture_der("certs/alice.pem")).unwrap();
        let input = format!(
            "{}.{}",
            base64url_encode(ALICE.header("HS256").to_string().as_bytes()),
            base64url_encode(payload_json().to_string().as_bytes())
        );
        for hmac_key in [public_key, fixture_der("certs/alice.pem")] {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &hmac_key);
            let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
            let forged = format!("{input}.{}", base64url_encode(tag.as_ref()));
            let rejection = verify(&forged).unwrap_err();
            assert_eq!(rejection.code, ErrorCode::InvalidRequest);
            assert!(rejection.message.contains("alg must be"), "{rejection}");
        }
    }

    #[test]
    fn rs256_on_a_p256_key_is_refused() {
        // Whatever the signature, the header's alg does not fit bob's key.
        let draft = BOB.draft(JwsAlgorithm::Rs256);
        let rejection = verify(&BOB.signed(&draft, JwsAlgorithm::Es256)).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidRequest);
        assert_eq!(
            rejection.message,
            "RS256 cannot be used with the certificate's P-256 key"
        );
    }

    #[test]
    fn es384_on_a_p256_key_is_refused() {
        let draft = BOB.draft(JwsAlgorithm::Es384);
        let rejection = verify(&BOB.signed(&draft, JwsAlgorithm::Es256)).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidRequest);
        assert!(rejection.message.contains("ES384"));
    }

    #[test]
    fn es256_on_an_rsa_key_is_refused() {
        let draft = ALICE.draft(JwsAlgorithm::Es256);
        let rejection = verify(&ALICE.signed(&draft, JwsAlgorithm::Rs256)).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidRequest);
        assert!(rejection.message.contains("RSA-2048"));
    }

    #[test]
    fn a_card_from_an_untrusted_ca_is_refused() {
        assert_eq!(
            code(&UNTRUSTED.assertion(JwsAlgorithm::Es256)),
            ErrorCode::CertificateUntrusted
        );
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let rejection = verify(&EXPIRED.assertion(JwsAlgorithm::Es256)).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::CertificateExpired);
        assert_eq!(
            rejection.message,
            "the card certificate is outside its validity period"
        );
    }

    /// A verifier with the test CA's CRL, on which Alice's certificate is revoked.
    fn verifier_with_a_crl_revoking_alice() -> AssertionVerifier {
        let serial = CertificateFacts::from_der(&ALICE.certificate())
            .unwrap()
            .serial;
        let mut config = config();
        config.crls = vec![test_ca_crl(&[&serial])];
        AssertionVerifier::new(config).unwrap()
    }

    #[test]
    fn a_certificate_revoked_by_a_crl_is_refused() {
        let verifier = verifier_with_a_crl_revoking_alice();
        let now = OffsetDateTime::now_utc();
        let rejection = verifier
            .verify(&ALICE.assertion(JwsAlgorithm::Rs256), now)
            .unwrap_err();
        assert_eq!(rejection.code, ErrorCode::CertificateRevoked);
        assert!(
            verifier
                .verify(&BOB.assertion(JwsAlgorithm::Es256), now)
                .is_ok()
        );
    }

    /// A P-256 card certificate from the fixture test CA with `ekus`, and an assertion
    /// claiming `slot` signed by its key (software: the certificate is not on a card).
    fn software_card_assertion(ekus: Vec<rcgen::ExtendedKeyUsagePurpose>, slot: &str) -> String {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(fixture("ca/test-ca.key")).unwrap())
                .unwrap();
        let ca_pem = std::fs::read_to_string(fixture("ca/test-ca.pem")).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Card Auth");
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        let certificate = params.signed_by(&key, &issuer).unwrap().der().to_vec();
        let mut payload = payload();
        payload.slot = slot.to_owned();
        let draft = AssertionDraft::new(JwsAlgorithm::Es256, &certificate, payload);
        let signer =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der())
                .unwrap();
        let signature = signer
            .sign(
                &aws_lc_rs::rand::SystemRandom::new(),
                draft.signing_input().as_bytes(),
            )
            .unwrap();
        draft.finish(signature.as_ref())
    }

    /// Issue 11, item 7: the `slot` claim is the signer's word; a certificate for the card
    /// authentication key (EKU id-PIV-cardAuth, FIPS 201: the 9e key, no PIN) may not
    /// claim another slot, or its token would say `pin` when none was asked for.
    #[test]
    fn a_card_authentication_certificate_cannot_claim_the_pin_slot() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, Other};
        let card_auth = || vec![ClientAuth, Other(vec![2, 16, 840, 1, 101, 3, 6, 8])];
        let now = OffsetDateTime::now_utc();
        let rejection = verifier()
            .verify(&software_card_assertion(card_auth(), "9a"), now)
            .unwrap_err();
        assert_eq!(rejection.code, ErrorCode::SlotNotAllowed, "{rejection}");
        let mut config = config();
        config.allowed_slots = vec!["9a".to_owned(), "9e".to_owned()];
        let both = AssertionVerifier::new(config).unwrap();
        let verified = both
            .verify(&software_card_assertion(card_auth(), "9e"), now)
            .unwrap();
        assert_eq!(verified.amr, ["hwk", "sc"]);
        let verified = verifier()
            .verify(&software_card_assertion(vec![ClientAuth], "9a"), now)
            .unwrap();
        assert_eq!(verified.amr, ["hwk", "sc", "pin"]);
    }

    #[test]
    fn a_remembered_chain_still_has_the_certificate_validity_checked_every_time() {
        let verifier = verifier();
        let now = OffsetDateTime::now_utc();
        let compact = ALICE.assertion(JwsAlgorithm::Rs256);
        let first = verifier.verify(&compact, now).unwrap();
        assert!(verifier.chain_known(&first.certificate.fingerprint));
        assert!(verifier.verify(&compact, now).is_ok());
        // Past the certificate's end, the remembered chain does not help.
        let after = first.certificate.not_after + time::Duration::seconds(1);
        let mut payload = payload_json();
        payload["iat"] = json!(after.unix_timestamp());
        let late = ALICE.sign_raw(JwsAlgorithm::Rs256, &ALICE.header("RS256"), &payload);
        assert_eq!(
            verifier.verify(&late, after).unwrap_err().code,
            ErrorCode::CertificateExpired
        );
    }

    #[test]
    fn with_crls_nothing_is_remembered_and_every_assertion_meets_the_crl() {
        let verifier = verifier_with_a_crl_revoking_alice();
        let now = OffsetDateTime::now_utc();
        let bob = verifier
            .verify(&BOB.assertion(JwsAlgorithm::Es256), now)
            .unwrap();
        assert!(!verifier.chain_known(&bob.certificate.fingerprint));
        for _ in 0..2 {
            assert_eq!(
                verifier
                    .verify(&ALICE.assertion(JwsAlgorithm::Rs256), now)
                    .unwrap_err()
                    .code,
                ErrorCode::CertificateRevoked
            );
        }
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let [header, _, signature] = parts(&ALICE.assertion(JwsAlgorithm::Rs256));
        let mut other = payload();
        other.device = "kiosk-99".to_owned();
        let tampered = format!(
            "{header}.{}.{signature}",
            base64url_encode(serde_json::to_vec(&other).unwrap())
        );
        assert_eq!(code(&tampered), ErrorCode::SignatureInvalid);
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        for card in [ALICE, BOB] {
            let algorithm = if card.name == "alice" {
                JwsAlgorithm::Rs256
            } else {
                JwsAlgorithm::Es256
            };
            let [header, payload, signature] = parts(&card.assertion(algorithm));
            let mut signature = base64url_decode(&signature).unwrap();
            signature[10] ^= 1;
            let tampered = format!("{header}.{payload}.{}", base64url_encode(&signature));
            assert_eq!(
                code(&tampered),
                ErrorCode::SignatureInvalid,
                "{}",
                card.name
            );
            signature.pop();
            let short = format!("{header}.{payload}.{}", base64url_encode(&signature));
            assert_eq!(code(&short), ErrorCode::SignatureInvalid, "{}", card.name);
        }
    }

    #[test]
    fn a_swapped_x5c_is_refused() {
        // Alice signs, then carol's certificate (also RSA-2048, same CA) is put in the header.
        let [_, payload, signature] = parts(&ALICE.assertion(JwsAlgorithm::Rs256));
        let swapped = base64url_encode(CAROL.header("RS256").to_string().as_bytes());
        assert_eq!(
            code(&format!("{swapped}.{payload}.{signature}")),
            ErrorCode::SignatureInvalid
        );
    }

    #[test]
    fn a_corrupt_x5c_is_refused() {
        let mut der = fixture_der("certs/alice.pem");
        der.truncate(der.len() / 2);
        let corrupt =
            json!({"alg": "RS256", "typ": ASSERTION_TYPE, "x5c": [STANDARD.encode(&der)]});
        let rejection =
            verify(&ALICE.sign_raw(JwsAlgorithm::Rs256, &corrupt, &payload_json())).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidRequest);
        assert_eq!(
            rejection.message,
            "the card certificate in x5c cannot be read"
        );

        let not_base64 = json!({"alg": "RS256", "typ": ASSERTION_TYPE, "x5c": ["not base64!"]});
        let rejection =
            verify(&ALICE.sign_raw(JwsAlgorithm::Rs256, &not_base64, &payload_json())).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidRequest);
        assert!(rejection.message.contains("standard base64"));
    }

    #[test]
    fn x5c_must_be_present_short_and_small() {
        let certificate = STANDARD.encode(ALICE.certificate());
        let oversized = STANDARD.encode(vec![0x30; MAX_CERTIFICATE_LEN + 1]);
        let cases = [
            (json!({"alg": "RS256", "typ": ASSERTION_TYPE}), "x5c"),
            (
                json!({"alg": "RS256", "typ": ASSERTION_TYPE, "x5c": []}),
                "x5c",
            ),
            (
                json!({"alg": "RS256", "typ": ASSERTION_TYPE, "x5c": vec![certificate; 5]}),
                "at most 4",
            ),
            (
                json!({"alg": "RS256", "typ": ASSERTION_TYPE, "x5c": [oversized]}),
                "larger than",
            ),
        ];
        for (header, expected) in cases {
            let compact = format!(
                "{}.{}.AAAA",
                base64url_encode(header.to_string().as_bytes()),
                base64url_encode(payload_json().to_string().as_bytes())
            );
            let rejection = verify(&compact).unwrap_err();
            assert_eq!(rejection.code, ErrorCode::InvalidRequest, "{header}");
            assert!(rejection.message.contains(expected), "{rejection}");
        }
    }

    #[test]
    fn a_wrong_or_missing_typ_is_refused() {
        for typ in [json!("JWT"), json!("PIVTAP-ASSERTION+JWT"), Value::Null] {
            let mut header = ALICE.header("RS256");
            header["typ"] = typ.clone();
            let compact = ALICE.sign_raw(JwsAlgorithm::Rs256, &header, &payload_json());
            let rejection = verify(&compact).unwrap_err();
            assert_eq!(rejection.code, ErrorCode::InvalidRequest, "{typ}");
            assert!(rejection.message.contains("typ"), "{rejection}");
        }
    }

    #[test]
    fn unknown_header_members_are_refused() {
        let mut header = ALICE.header("RS256");
        header["crit"] = json!(["exp"]);
        let compact = ALICE.sign_raw(JwsAlgorithm::Rs256, &header, &payload_json());
        assert_eq!(code(&compact), ErrorCode::InvalidRequest);
    }

    #[test]
    fn a_wrong_aud_is_refused() {
        let mut draft = ALICE.draft(JwsAlgorithm::Rs256);
        draft.payload.aud = "https://elsewhere.example.com".to_owned();
        let rejection = verify(&ALICE.signed(&draft, JwsAlgorithm::Rs256)).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidRequest);
        assert!(rejection.message.contains("aud"));
    }

    #[test]
    fn iat_must_be_within_the_clock_skew() {
        let compact = BOB.assertion(JwsAlgorithm::Es256);
        let iat = parts(&compact)[1].clone();
        let iat: AssertionPayload =
            serde_json::from_slice(&base64url_decode(&iat).unwrap()).unwrap();
        let signed_at = OffsetDateTime::from_unix_timestamp(iat.iat).unwrap();
        let verifier = verifier();
        let skew = time::Duration::seconds(60);
        for accepted in [signed_at - skew, signed_at, signed_at + skew] {
            assert!(verifier.verify(&compact, accepted).is_ok(), "{accepted}");
        }
        let second = time::Duration::seconds(1);
        for (now, what) in [
            (signed_at + skew + second, "too old"),
            (signed_at - skew - second, "from the future"),
        ] {
            let rejection = verifier.verify(&compact, now).unwrap_err();
            assert_eq!(rejection.code, ErrorCode::InvalidRequest, "{what}");
            assert!(rejection.message.contains("iat"), "{what}");
        }
    }

    #[test]
    fn iat_far_from_now_is_refused_when_signed_so() {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for iat in [now - 3600, now + 3600, i64::MIN, i64::MAX] {
            let mut draft = BOB.draft(JwsAlgorithm::Es256);
            draft.payload.iat = iat;
            assert_eq!(
                code(&BOB.signed(&draft, JwsAlgorithm::Es256)),
                ErrorCode::InvalidRequest,
                "iat {iat}"
            );
        }
    }

    #[test]
    fn unknown_payload_members_are_refused() {
        let mut payload = payload_json();
        payload["admin"] = json!(true);
        let compact = ALICE.sign_raw(JwsAlgorithm::Rs256, &ALICE.header("RS256"), &payload);
        let rejection = verify(&compact).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidRequest);
        assert!(rejection.message.contains("exactly aud, nonce"));
    }

    #[test]
    fn malformed_compact_strings_are_refused() {
        let good = BOB.assertion(JwsAlgorithm::Es256);
        let [header, payload, signature] = parts(&good);
        let header_json = base64url_decode(&header).unwrap();
        let cases = [
            String::new(),
            header.clone(),
            format!("{header}.{payload}"),
            format!("{good}.{signature}"),
            format!("{header}.{payload}.{signature}="),
            format!("{header}!.{payload}.{signature}"),
            format!("{header}.{payload} .{signature}"),
            format!("{}.{payload}.{signature}", base64url_encode(b"not json")),
            format!("{}.{payload}.{signature}", base64url_encode(b"[1,2]")),
            format!(
                "{}.{payload}.{signature}",
                base64url_encode(&header_json[..header_json.len() - 1])
            ),
            "a".repeat(pivtap_protocol::jose::MAX_COMPACT_LEN + 1),
        ];
        for compact in cases {
            let shown: String = compact.chars().take(60).collect();
            assert_eq!(code(&compact), ErrorCode::InvalidRequest, "{shown}");
        }
        assert_eq!(
            verify(&"a".repeat(pivtap_protocol::jose::MAX_COMPACT_LEN + 1))
                .unwrap_err()
                .message,
            "the assertion is too large"
        );
    }

    #[test]
    fn the_signature_is_checked_before_the_chain() {
        // A forged assertion for an untrusted or expired card is a signature
        // failure: no path building happens for it.
        for (card, algorithm) in [
            (UNTRUSTED, JwsAlgorithm::Es256),
            (EXPIRED, JwsAlgorithm::Es256),
        ] {
            let [header, payload, _] = parts(&card.assertion(algorithm));
            let forged = format!("{header}.{payload}.{}", base64url_encode([0; 64]));
            assert_eq!(code(&forged), ErrorCode::SignatureInvalid, "{}", card.name);
        }
        // And the claims come before the certificate's dates.
        let mut draft = EXPIRED.draft(JwsAlgorithm::Es256);
        draft.payload.aud = "https://elsewhere.example.com".to_owned();
        assert_eq!(
            code(&EXPIRED.signed(&draft, JwsAlgorithm::Es256)),
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn a_verifier_needs_a_usable_trust_configuration() {
        let mut config = config();
        config.trust_anchors.clear();
        assert_eq!(
            AssertionVerifier::new(config).unwrap_err(),
            CertificateError::NoTrustAnchors
        );
        let mut config = self::config();
        config.crls = vec![b"not a CRL".to_vec()];
        assert!(matches!(
            AssertionVerifier::new(config),
            Err(CertificateError::Crl { index: 0, .. })
        ));
        assert_eq!(verifier().audience(), AUDIENCE);
        assert_eq!(self::config().max_clock_skew, Duration::from_secs(60));
    }

    #[test]
    fn rejections_become_error_bodies() {
        let body = ErrorBody::from(Rejection::new(ErrorCode::SignatureInvalid, "bad"));
        assert_eq!(body.error, ErrorCode::SignatureInvalid);
        assert_eq!(body.message, "bad");
        assert_eq!(
            Rejection::new(ErrorCode::CertificateRevoked, "gone").to_string(),
            "certificate_revoked: gone"
        );
    }

    #[test]
    fn the_verifier_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<AssertionVerifier>();
        let verifier = std::sync::Arc::new(verifier());
        let compact = BOB.assertion(JwsAlgorithm::Es256);
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let verifier = verifier.clone();
                let compact = compact.clone();
                std::thread::spawn(move || verifier.verify(&compact, OffsetDateTime::now_utc()))
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap().is_ok());
        }
    }

    /// One valid assertion for the property tests (signing is not free).
    fn valid_assertion() -> &'static str {
        static ASSERTION: OnceLock<String> = OnceLock::new();
        ASSERTION.get_or_init(|| BOB.assertion(JwsAlgorithm::Es256))
    }

    fn shared_verifier() -> &'static AssertionVerifier {
        static VERIFIER: OnceLock<AssertionVerifier> = OnceLock::new();
        VERIFIER.get_or_init(verifier)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_strings_never_panic(text in ".{0,400}") {
            let result = shared_verifier().verify(&text, OffsetDateTime::now_utc());
            prop_assert!(result.is_err());
        }

        #[test]
        fn arbitrary_json_parts_never_panic(
            header in prop::collection::vec(any::<u8>(), 0..300),
            payload in prop::collection::vec(any::<u8>(), 0..300),
            signature in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let compact = format!(
                "{}.{}.{}",
                base64url_encode(&header),
                base64url_encode(&payload),
                base64url_encode(&signature)
            );
            prop_assert!(shared_verifier().verify(&compact, OffsetDateTime::now_utc()).is_err());
        }

        #[test]
        fn any_changed_character_is_refused(position in any::<prop::sample::Index>(), replacement in "[A-Za-z0-9_.=+/-]") {
            let valid = valid_assertion();
            let position = position.index(valid.len());
            let mut changed = valid.to_owned();
            changed.replace_range(position..=position, &replacement);
            prop_assume!(changed != valid);
            prop_assert!(shared_verifier().verify(&changed, OffsetDateTime::now_utc()).is_err());
        }
    }
}
