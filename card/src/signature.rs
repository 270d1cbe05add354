//! Host-side signature formats: JOSE algorithms, the PKCS#1 v1.5 block an RSA card signs raw, and ECDSA DER to JOSE `r || s`.

use pivtap_apdu::piv::Algorithm;
use pivtap_protocol::certificate::KeyKind;
use sha2::{Digest, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

pub use pivtap_protocol::jose::JwsAlgorithm;

/// A signature could not be built or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The algorithm does not fit the key on the card.
    #[error("{jose} cannot be made with a {key} key")]
    AlgorithmMismatch {
        /// JOSE algorithm asked for.
        jose: JwsAlgorithm,
        /// The card key's algorithm.
        key: Algorithm,
    },
    /// The card's ECDSA signature was not valid DER for the curve.
    #[error("the card returned a malformed ECDSA signature")]
    MalformedEcdsa,
    /// The card's RSA signature had the wrong length.
    #[error("the card returned an RSA signature of {len} bytes, expected {expected}")]
    RsaLength {
        /// Length received.
        len: usize,
        /// Modulus length.
        expected: usize,
    },
}

/// The card's side of a JWS algorithm ([`JwsAlgorithm`], the one vocabulary): which card
/// key may make it, what the card is given to sign, and how its answer becomes the JOSE
/// signature.
pub trait CardSignature: Copy {
    /// Checks that this algorithm can be made with the card key `key`, by
    /// [`JwsAlgorithm::check_key`]'s rule (the one rule for which key fits which algorithm).
    ///
    /// # Errors
    /// [`SignatureError::AlgorithmMismatch`].
    fn check_card_key(self, key: Algorithm) -> Result<(), SignatureError>;

    /// The message hash this algorithm signs.
    fn digest(self, message: &[u8]) -> Vec<u8>;

    /// What the card is given to sign for `message` with a key of
    /// `key_len` bytes: for RSA the whole PKCS#1 v1.5 block (RFC 8017
    /// §9.2), which the card raises to its private exponent; for ECDSA the hash.
    fn card_input(self, message: &[u8], key_len: usize) -> Zeroizing<Vec<u8>>;

    /// Turns the card's answer into the JWS signature bytes: RSA as is
    /// (checked for length), ECDSA from DER to fixed-width `r || s` (RFC 7518 §3.4).
    ///
    /// # Errors
    /// [`SignatureError::MalformedEcdsa`] or [`SignatureError::RsaLength`].
    fn jose_signature(self, card_output: &[u8], key_len: usize) -> Result<Vec<u8>, SignatureError>;
}

impl CardSignature for JwsAlgorithm {
    fn check_card_key(self, key: Algorithm) -> Result<(), SignatureError> {
        let kind = match key {
            Algorithm::Rsa1024 => KeyKind::Rsa { bits: 1024 },
            Algorithm::Rsa2048 => KeyKind::Rsa { bits: 2048 },
            Algorithm::EccP256 => KeyKind::EcP256,
            Algorithm::EccP384 => KeyKind::EcP384,
            _ => KeyKind::Other,
        };
        self.check_key(kind)
            .map_err(|_| SignatureError::AlgorithmMismatch { jose: self, key })
    }

    fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            JwsAlgorithm::Rs256 | JwsAlgorithm::Es256 => Sha256::digest(message).to_vec(),
            JwsAlgorithm::Rs512 => Sha512::digest(message).to_vec(),
            JwsAlgorithm::Es384 => Sha384::digest(message).to_vec(),
        }
    }

    fn card_input(self, message: &[u8], key_len: usize) -> Zeroizing<Vec<u8>> {
        let digest = self.digest(message);
        let prefix: &[u8] = match self {
            JwsAlgorithm::Es256 | JwsAlgorithm::Es384 => return Zeroizing::new(digest),
            JwsAlgorithm::Rs256 => &DIGEST_INFO_SHA256,
            JwsAlgorithm::Rs512 => &DIGEST_INFO_SHA512,
        };
        let mut block = Zeroizing::new(vec![0xFF; key_len]);
        let info_len = prefix.len() + digest.len();
        block[0] = 0x00;
        block[1] = 0x01;
        block[key_len - info_len - 1] = 0x00;
        block[key_len - info_len..key_len - digest.len()].copy_from_slice(prefix);
        block[key_len - digest.len()..].copy_from_slice(&digest);
        block
    }

    fn jose_signature(self, card_output: &[u8], key_len: usize) -> Result<Vec<u8>, SignatureError> {
        match self {
            JwsAlgorithm::Rs256 | JwsAlgorithm::Rs512 => {
                if card_output.len() == key_len {
                    Ok(card_output.to_vec())
                } else {
                    Err(SignatureError::RsaLength {
                        len: card_output.len(),
                        expected: key_len,
                    })
                }
            }
            JwsAlgorithm::Es256 => p256::ecdsa::Signature::from_der(card_output)
                .map(|s| s.to_bytes().to_vec())
                .map_err(|_| SignatureError::MalformedEcdsa),
            JwsAlgorithm::Es384 => p384::ecdsa::Signature::from_der(card_output)
                .map(|s| s.to_bytes().to_vec())
                .map_err(|_| SignatureError::MalformedEcdsa),
        }
    }
}

/// DER of `DigestInfo { sha256, NULL }` before the 32-byte hash (RFC 8017 §9.2 note 1).
const DIGEST_INFO_SHA256: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
/// DER of `DigestInfo { sha512, NULL }` before the 64-byte hash.
const DIGEST_INFO_SHA512: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs1_block_layout() {
        let block = JwsAlgorithm::Rs256.card_input(b"hello", 256);
        assert_eq!(block.len(), 256);
        assert_eq!(&block[..2], [0x00, 0x01]);
        assert!(block[2..256 - 52].iter().all(|b| *b == 0xFF));
        assert_eq!(block[256 - 52], 0x00);
        assert_eq!(&block[256 - 51..256 - 32], DIGEST_INFO_SHA256);
        assert_eq!(&block[256 - 32..], Sha256::digest(b"hello").as_slice());
        let block512 = JwsAlgorithm::Rs512.card_input(b"hello", 256);
        assert_eq!(&block512[256 - 64..], Sha512::digest(b"hello").as_slice());
    }

    #[test]
    fn ecdsa_der_to_jose() {
        // SEQUENCE { INTEGER 1, INTEGER 2 }: small values are left-padded to the field size.
        let der = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02];
        let jose = JwsAlgorithm::Es256.jose_signature(&der, 32).unwrap();
        assert_eq!(jose.len(), 64);
        assert_eq!(jose[31], 1);
        assert_eq!(jose[63], 2);
        assert_eq!(
            JwsAlgorithm::Es256.jose_signature(&der[..5], 32),
            Err(SignatureError::MalformedEcdsa)
        );
        assert_eq!(
            JwsAlgorithm::Es384.jose_signature(&der, 48).unwrap().len(),
            96
        );
    }

    #[test]
    fn algorithms_match_keys() {
        assert!(
            JwsAlgorithm::Rs512
                .check_card_key(Algorithm::Rsa2048)
                .is_ok()
        );
        assert!(
            JwsAlgorithm::Es256
                .check_card_key(Algorithm::Rsa2048)
                .is_err()
        );
        assert_eq!("ES384".parse(), Ok(JwsAlgorithm::Es384));
        // JOSE `alg` values are case-sensitive (RFC 7515 §4.1.1); the card's own parser
        // accepted any case, the one JwsAlgorithm does not.
        assert!("es384".parse::<JwsAlgorithm>().is_err());
        assert!("none".parse::<JwsAlgorithm>().is_err());
        assert!("HS256".parse::<JwsAlgorithm>().is_err());
    }
}
