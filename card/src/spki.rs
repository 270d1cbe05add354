//! Converts a card's public key (`7F49` form) into an X.509 SubjectPublicKeyInfo, for certificates and CSRs.

use p256::pkcs8::EncodePublicKey;
use pivtap_apdu::piv::Algorithm;
use pivtap_apdu::piv::objects::public_key::PublicKey;

/// The public key could not be turned into a SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpkiError {
    /// The modulus, exponent or point is not a valid key.
    #[error("the card's {kind} public key is invalid")]
    InvalidKey {
        /// The kind of key: RSA, P-256 or P-384.
        kind: &'static str,
    },
}

/// DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) of a card public key.
///
/// # Errors
/// [`SpkiError::InvalidKey`] when the numbers do not make a valid key.
pub fn subject_public_key_info(key: &PublicKey) -> Result<Vec<u8>, SpkiError> {
    let kind = match key {
        PublicKey::Rsa { .. } => "RSA",
        PublicKey::Ec {
            curve: Algorithm::EccP384,
            ..
        } => "P-384",
        PublicKey::Ec { .. } => "P-256",
    };
    let invalid = || SpkiError::InvalidKey { kind };
    match key {
        PublicKey::Rsa { modulus, exponent } => {
            use rsa::pkcs8::EncodePublicKey as _;
            let n = rsa::BigUint::from_bytes_be(modulus);
            let e = rsa::BigUint::from_bytes_be(exponent);
            let public = rsa::RsaPublicKey::new(n, e).map_err(|_| invalid())?;
            public
                .to_public_key_der()
                .map(|der| der.as_bytes().to_vec())
                .map_err(|_| invalid())
        }
        PublicKey::Ec {
            curve: Algorithm::EccP256,
            point,
        } => p256::PublicKey::from_sec1_bytes(point)
            .map_err(|_| invalid())?
            .to_public_key_der()
            .map(|der| der.as_bytes().to_vec())
            .map_err(|_| invalid()),
        PublicKey::Ec {
            curve: Algorithm::EccP384,
            point,
        } => {
            use p384::pkcs8::EncodePublicKey as _;
            p384::PublicKey::from_sec1_bytes(point)
                .map_err(|_| invalid())?
                .to_public_key_der()
                .map(|der| der.as_bytes().to_vec())
                .map_err(|_| invalid())
        }
        PublicKey::Ec { .. } => Err(invalid()),
    }
}
