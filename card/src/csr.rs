//! Certificate signing requests (PKCS#10, RFC 2986) signed by the card: the host builds the request, the key in the slot signs it and never leaves the card.
//!
//! [`CardSigner`] implements rcgen's [`rcgen::SigningKey`] over a
//! [`PivSession`]: RSA-2048 signs PKCS#1 v1.5 with SHA-256 (the host builds
//! the padded `DigestInfo` block, the card raises it to its private exponent,
//! as [`PivSession::sign`] does), ECDSA P-256 / P-384 sign the SHA-256 /
//! SHA-384 hash and the signature goes into the request as DER. The PIN must
//! be verified before [`certificate_request`] is called (slot 9A needs it).
//!
//! The request is checked before it is returned: it must parse, and its
//! signature must verify under the public key it carries, so a card that
//! signed with some other key is caught here rather than by the server.

use std::cell::RefCell;

use pivtap_apdu::piv::objects::public_key::PublicKey;
use pivtap_apdu::piv::{Algorithm, KeyReference};

use crate::error::PivError;
use crate::session::PivSession;
use crate::signature::JwsAlgorithm;
use crate::spki::{SpkiError, subject_public_key_info};

/// Why a certificate request could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The key is not one a request can be made for (RSA-2048, P-256, P-384).
    #[error("a certificate request needs an RSA-2048, P-256 or P-384 key, not {key}")]
    UnsupportedKey {
        /// The card key's algorithm.
        key: Algorithm,
    },
    /// The card's public key is not a valid key.
    #[error(transparent)]
    PublicKey(#[from] SpkiError),
    /// The card could not sign the request.
    #[error("the card could not sign the certificate request")]
    Card(#[source] PivError),
    /// The card's signature was not in the expected form.
    #[error("the card returned a malformed signature for the certificate request")]
    MalformedSignature,
    /// The request could not be encoded, or did not verify afterwards (the
    /// card signed with a key other than the one it reported).
    #[error("the certificate request could not be built or does not verify")]
    Build(#[source] rcgen::Error),
}

/// A card key as an rcgen signing key: the public key the card reported,
/// and the session that makes the signatures.
pub struct CardSigner<'s, 'a> {
    session: RefCell<&'s mut PivSession<'a>>,
    slot: KeyReference,
    key: Algorithm,
    signature: JwsAlgorithm,
    rcgen_algorithm: &'static rcgen::SignatureAlgorithm,
    public_key: rcgen::SubjectPublicKeyInfo,
    /// The card error behind the last failed signature (rcgen's error type
    /// cannot carry it).
    failure: RefCell<Option<PivError>>,
}

impl<'s, 'a> CardSigner<'s, 'a> {
    /// A signer for the key in `slot`, whose public key the card reported as `public_key`
    /// (the answer to GENERATE ASYMMETRIC KEY PAIR).
    ///
    /// # Errors
    /// [`CsrError::UnsupportedKey`] or [`CsrError::PublicKey`].
    pub fn new(
        session: &'s mut PivSession<'a>,
        slot: KeyReference,
        public_key: &PublicKey,
    ) -> Result<Self, CsrError> {
        let key = match public_key {
            PublicKey::Rsa { .. } => Algorithm::Rsa2048,
            PublicKey::Ec { curve, .. } => *curve,
        };
        let (signature, rcgen_algorithm) = match key {
            Algorithm::Rsa2048 => (JwsAlgorithm::Rs256, &rcgen::PKCS_RSA_SHA256),
            Algorithm::EccP256 => (JwsAlgorithm::Es256, &rcgen::PKCS_ECDSA_P256_SHA256),
            Algorithm::EccP384 => (JwsAlgorithm::Es384, &rcgen::PKCS_ECDSA_P384_SHA384),
            other => return Err(CsrError::UnsupportedKey { key: other }),
        };
        if let PublicKey::Rsa { modulus, .. } = public_key {
            let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
            if bits != 2048 {
                return Err(CsrError::UnsupportedKey { key });
            }
        }
        let spki = subject_public_key_info(public_key)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&spki).map_err(CsrError::Build)?;
        Ok(CardSigner {
            session: RefCell::new(session),
            slot,
            key,
            signature,
            rcgen_algorithm,
            public_key,
            failure: RefCell::new(None),
        })
    }

    /// The card error of the last signature that failed, if any.
    fn take_failure(&self) -> Option<PivError> {
        self.failure.borrow_mut().take()
    }
}

impl rcgen::PublicKeyData for CardSigner<'_, '_> {
    fn der_bytes(&self) -> &[u8] {
        self.public_key.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.rcgen_algorithm
    }
}

impl rcgen::SigningKey for CardSigner<'_, '_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signed = self
            .session
            .borrow_mut()
            .sign(self.slot, self.key, self.signature, message);
        let jose = match signed {
            Ok(jose) => jose,
            Err(error) => {
                *self.failure.borrow_mut() = Some(error);
                return Err(rcgen::Error::RemoteKeyError);
            }
        };
        // X.509 carries RSA signatures as they are and ECDSA ones as DER
        // (the session turned the card's DER into JOSE r || s).
        let der = match self.signature {
            JwsAlgorithm::Rs256 | JwsAlgorithm::Rs512 => Some(jose),
            JwsAlgorithm::Es256 => p256::ecdsa::Signature::from_slice(&jose)
                .ok()
                .map(|s| s.to_der().as_bytes().to_vec()),
            JwsAlgorithm::Es384 => p384::ecdsa::Signature::from_slice(&jose)
                .ok()
                .map(|s| s.to_der().as_bytes().to_vec()),
        };
        der.ok_or(rcgen::Error::RemoteKeyError)
    }
}

/// A DER PKCS#10 request for the key in `slot` (public key `public_key`, as
/// GENERATE returned it), subject `CN=common_name`, signed by the card.
/// The issuer builds the certificate from its own records; the subject here
/// only helps people reading the request.
///
/// # Errors
/// [`CsrError::Card`] when the card refuses to sign (PIN not verified, no
/// key), [`CsrError::Build`] when the request does not verify under its own key.
pub fn certificate_request(
    session: &mut PivSession<'_>,
    slot: KeyReference,
    public_key: &PublicKey,
    common_name: &str,
) -> Result<Vec<u8>, CsrError> {
    let signer = CardSigner::new(session, slot, public_key)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let request = match params.serialize_request(&signer) {
        Ok(request) => request,
        Err(error) => {
            return Err(match signer.take_failure() {
                Some(card) => CsrError::Card(card),
                None if error == rcgen::Error::RemoteKeyError => CsrError::MalformedSignature,
                None => CsrError::Build(error),
            });
        }
    };
    let der = request.der().to_vec();
    rcgen::CertificateSigningRequestParams::from_der(&der.as_slice().into())
        .map_err(CsrError::Build)?;
    Ok(der)
}
