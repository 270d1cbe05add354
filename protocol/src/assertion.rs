//! Card-signed assertions on the device's side: the draft a device builds and has the card sign ([`AssertionDraft`]), and the signature check both sides make ([`signature_verifies`]).
//!
//! The server's stateless checks of a received assertion are `pivtap_server::verifier`.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA256,
    RSA_PKCS1_2048_8192_SHA512, UnparsedPublicKey, VerificationAlgorithm,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::jose::{JwsAlgorithm, base64url_encode};
use crate::wire::{ASSERTION_TYPE, AssertionHeader, AssertionPayload};

pub use crate::jose::{MAX_RSA_BITS, MIN_RSA_BITS};

/// An assertion before the card has signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionDraft {
    /// The protected header.
    pub header: AssertionHeader,
    /// The claims.
    pub payload: AssertionPayload,
    /// The algorithm the header names, as [`AssertionDraft::sign`] hands it to the signer.
    algorithm: JwsAlgorithm,
}

impl AssertionDraft {
    /// A draft for `alg` carrying the card certificate `certificate_der` in `x5c`.
    #[must_use]
    pub fn new(alg: JwsAlgorithm, certificate_der: &[u8], payload: AssertionPayload) -> Self {
        AssertionDraft {
            header: AssertionHeader {
                alg: alg.name().to_owned(),
                typ: ASSERTION_TYPE.to_owned(),
                x5c: vec![STANDARD.encode(certificate_der)],
            },
            payload,
            algorithm: alg,
        }
    }

    /// The algorithm the draft was made for.
    #[must_use]
    pub fn algorithm(&self) -> JwsAlgorithm {
        self.algorithm
    }

    /// The one way an assertion is signed: `sign` gets the algorithm and the
    /// signing input and returns the JOSE signature (RSA raw, ECDSA `r || s`),
    /// which is appended. A card, a software key or a test forger signs alike.
    ///
    /// # Errors
    /// Whatever `sign` returns.
    pub fn sign<E>(
        &self,
        sign: impl FnOnce(JwsAlgorithm, &[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<String, E> {
        let signing_input = self.signing_input();
        let signature = sign(self.algorithm, signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", base64url_encode(signature)))
    }

    /// `BASE64URL(header) . BASE64URL(payload)`: what the card signs.
    #[must_use]
    pub fn signing_input(&self) -> String {
        let header = json_object([
            ("alg", Value::from(self.header.alg.as_str())),
            ("typ", Value::from(self.header.typ.as_str())),
            ("x5c", Value::from(self.header.x5c.clone())),
        ]);
        let payload = json_object([
            ("aud", Value::from(self.payload.aud.as_str())),
            ("nonce", Value::from(self.payload.nonce.as_str())),
            ("device", Value::from(self.payload.device.as_str())),
            ("iat", Value::from(self.payload.iat)),
            ("slot", Value::from(self.payload.slot.as_str())),
        ]);
        format!(
            "{}.{}",
            base64url_encode(header.to_string().as_bytes()),
            base64url_encode(payload.to_string().as_bytes())
        )
    }

    /// Appends the JOSE signature (RSA: raw; ECDSA: r||s).
    #[must_use]
    pub fn finish(&self, signature: &[u8]) -> String {
        format!("{}.{}", self.signing_input(), base64url_encode(signature))
    }
}

/// A JSON object from its members (serialising it cannot fail).
fn json_object<const N: usize>(members: [(&str, Value); N]) -> Value {
    Value::Object(
        members
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect::<Map<String, Value>>(),
    )
}

/// Whether a card's `signature` (JOSE form: RSA as is, ECDSA `r || s`) over `message`
/// verifies with `public_key` (from [`CertificateFacts::with_public_key`]: RSA the DER
/// `RSAPublicKey`, ECDSA the uncompressed point) under `algorithm`: the check the server
/// makes on an assertion's signature and on a device proof, and a device's own check
/// before it sends.
///
/// [`CertificateFacts::with_public_key`]: crate::certificate::CertificateFacts::with_public_key
#[must_use]
pub fn signature_verifies(
    algorithm: JwsAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    let verification: &'static dyn VerificationAlgorithm = match algorithm {
        JwsAlgorithm::Rs256 => &RSA_PKCS1_2048_8192_SHA256,
        JwsAlgorithm::Rs512 => &RSA_PKCS1_2048_8192_SHA512,
        JwsAlgorithm::Es256 => &ECDSA_P256_SHA256_FIXED,
        JwsAlgorithm::Es384 => &ECDSA_P384_SHA384_FIXED,
    };
    UnparsedPublicKey::new(verification, public_key)
        .verify(message, signature)
        .is_ok()
}
