//! Host-side signature formats: JOSE algorithms, the PKCS#1 v1.5 block an RSA card signs raw, and ECDSA DER to JOSE `r || s`.

use std::fmt;
use std::str::FromStr;

use pivtap_apdu::piv::Algorithm;
use sha2::{Digest, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

/// The JWS signature algorithms a PIV card can produce (RFC 7518 §3.1), on the card's side:
/// what the card is given to sign ([`SignatureAlgorithm::card_input`]) and how its answer
/// becomes a JOSE signature ([`SignatureAlgorithm::jose_signature`]).
///
/// The algorithm vocabulary itself (names, which key fits, the RSA size rule, which PIV
/// key signs which algorithm) is `pivtap_protocol::jose::JwsAlgorithm`; this crate
/// cannot depend on that one (it would link the server), so this enum mirrors its four
/// variants for the card-side work only, and `pivtap_kiosk::card_signer::card_algorithm`
/// is the one bridge. [`SignatureAlgorithm::check_key`] is the card's guard against
/// signing with a PIV key of another kind; PIV keys of this crate are RSA-2048, P-256 and
/// P-384, so it agrees with `JwsAlgorithm`'s rule on every key a card holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
}

/// A signature could not be built or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The algorithm does not fit the key on the card.
    #[error("{jose} cannot be made with a {key} key")]
    AlgorithmMismatch {
        /// JOSE algorithm asked for.
        jose: SignatureAlgorithm,
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

impl SignatureAlgorithm {
    /// The JOSE name (`RS256`, ...).
    #[must_use]
    pub fn jose_name(self) -> &'static str {
        match self {
            SignatureAlgorithm::Rs256 => "RS256",
            SignatureAlgorithm::Rs512 => "RS512",
            SignatureAlgorithm::Es256 => "ES256",
            SignatureAlgorithm::Es384 => "ES384",
        }
    }

    /// Checks that this algorithm can be made with a key of `key`.
    ///
    /// # Errors
    /// [`SignatureError::AlgorithmMismatch`].
    pub fn check_key(self, key: Algorithm) -> Result<(), SignatureError> {
        let fits = match self {
            SignatureAlgorithm::Rs256 | SignatureAlgorithm::Rs512 => key == Algorithm::Rsa2048,
            SignatureAlgorithm::Es256 => key == Algorithm::EccP256,
            SignatureAlgorithm::Es384 => key == Algorithm::EccP384,
        };
        if fits {
            Ok(())
        } else {
            Err(SignatureError::AlgorithmMismatch { jose: self, key })
        }
    }

    /// The message hash this algorithm signs.
    #[must_use]
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            SignatureAlgorithm::Rs256 | SignatureAlgorithm::Es256 => {
                Sha256::digest(message).to_vec()
            }
            SignatureAlgorithm::Rs512 => Sha512::digest(message).to_vec(),
            SignatureAlgorithm::Es384 => Sha384::digest(message).to_vec(),
        }
    }

    /// What the card is given to sign for `message` with a key of
    /// `key_len` bytes: for RSA the whole PKCS#1 v1.5 block (RFC 8017
    /// §9.2), which the card raises to its private exponent; for ECDSA the hash.
    #[must_use]
    pub fn card_input(self, message: &[u8], key_len: usize) -> Zeroizing<Vec<u8>> {
        let digest = self.digest(message);
        let prefix: &[u8] = match self {
            SignatureAlgorithm::Es256 | SignatureAlgorithm::Es384 => return Zeroizing::new(digest),
            SignatureAlgorithm::Rs256 => &DIGEST_INFO_SHA256,
            SignatureAlgorithm::Rs512 => &DIGEST_INFO_SHA512,
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

    /// Turns the card's answer into the JWS signature bytes: RSA as is
    /// (checked for length), ECDSA from DER to fixed-width `r || s` (RFC 7518 §3.4).
    ///
    /// # Errors
    /// [`SignatureError::MalformedEcdsa`] or [`SignatureError::RsaLength`].
    pub fn jose_signature(
        self,
        card_output: &[u8],
        key_len: usize,
    ) -> Result<Vec<u8>, SignatureError> {
        match self {
            SignatureAlgorithm::Rs256 | SignatureAlgorithm::Rs512 => {
                if card_output.len() == key_len {
                    Ok(card_output.to_vec())
                } else {
                    Err(SignatureError::RsaLength {
                        len: card_output.len(),
                        expected: key_len,
                    })
                }
            }
            SignatureAlgorithm::Es256 => p256::ecdsa::Signature::from_der(card_output)
                .map(|s| s.to_bytes().to_vec())
                .map_err(|_| SignatureError::MalformedEcdsa),
            SignatureAlgorithm::Es384 => p384::ecdsa::Signature::from_der(card_output)
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

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jose_name())
    }
}

impl FromStr for SignatureAlgorithm {
    type Err = pivtap_apdu::piv::UnknownName;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_uppercase().as_str() {
            "RS256" => Ok(SignatureAlgorithm::Rs256),
            "RS512" => Ok(SignatureAlgorithm::Rs512),
            "ES256" => Ok(SignatureAlgorithm::Es256),
            "ES384" => Ok(SignatureAlgorithm::Es384),
            _ => Err(pivtap_apdu::piv::UnknownName {
                kind: "signature algorithm",
                text: text.to_owned(),
                expected: "RS256, RS512, ES256, ES384",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs1_block_layout() {
        let block = SignatureAlgorithm::Rs256.card_input(b"hello", 256);
        assert_eq!(block.len(), 256);
        assert_eq!(&block[..2], [0x00, 0x01]);
        assert!(block[2..256 - 52].iter().all(|b| *b == 0xFF));
        assert_eq!(block[256 - 52], 0x00);
        assert_eq!(&block[256 - 51..256 - 32], DIGEST_INFO_SHA256);
        assert_eq!(&block[256 - 32..], Sha256::digest(b"hello").as_slice());
        let block512 = SignatureAlgorithm::Rs512.card_input(b"hello", 256);
        assert_eq!(&block512[256 - 64..], Sha512::digest(b"hello").as_slice());
    }

    #[test]
    fn ecdsa_der_to_jose() {
        // SEQUENCE { INTEGER 1, INTEGER 2 }: small values are left-padded to the field size.
        let der = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02];
        let jose = SignatureAlgorithm::Es256.jose_signature(&der, 32).unwrap();
        assert_eq!(jose.len(), 64);
        assert_eq!(jose[31], 1);
        assert_eq!(jose[63], 2);
        assert_eq!(
            SignatureAlgorithm::Es256.jose_signature(&der[..5], 32),
            Err(SignatureError::MalformedEcdsa)
        );
        assert_eq!(
            SignatureAlgorithm::Es384
                .jose_signature(&der, 48)
                .unwrap()
                .len(),
            96
        );
    }

    #[test]
    fn algorithms_match_keys() {
        assert!(
            SignatureAlgorithm::Rs512
                .check_key(Algorithm::Rsa2048)
                .is_ok()
        );
        assert!(
            SignatureAlgorithm::Es256
                .check_key(Algorithm::Rsa2048)
                .is_err()
        );
        assert_eq!("es384".parse(), Ok(SignatureAlgorithm::Es384));
        assert!("none".parse::<SignatureAlgorithm>().is_err());
        assert!("HS256".parse::<SignatureAlgorithm>().is_err());
    }
}
