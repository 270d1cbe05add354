//! The private keys inside the virtual card: generation, the card-side operations (raw RSA, ECDSA over a hash, ECDH) and PKCS#8 storage.
//!
//! These are the operations a PIV card performs in GENERAL AUTHENTICATE
//! (SP 800-73-4 Part 2 §3.2.4, Appendix A): for RSA the host sends a block
//! already padded to the modulus length and the card applies the raw private
//! key; for ECC the host sends a hash and the card returns a DER ECDSA
//! signature, or the peer's public point and the card returns the ECDH secret.

use std::fmt;

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::pkcs8::{
    DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding as EcLineEnding,
};
use pivtap_apdu::piv::Algorithm;
use pivtap_apdu::piv::objects::public_key::PublicKey;
use rsa::pkcs8::{
    DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding,
    ObjectIdentifier, PrivateKeyInfo,
};
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey};
use zeroize::Zeroizing;

/// The only RSA size the card generates and accepts.
const RSA_BITS: usize = 2048;
/// The public exponent of generated RSA keys.
const RSA_EXPONENT: u64 = 65537;
/// PKCS#8 algorithm `rsaEncryption` (RFC 8017 Appendix A.1).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// PKCS#8 algorithm `id-ecPublicKey` (RFC 5480 §2.1.1).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// Named curve `secp256r1` (P-256).
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// Named curve `secp384r1` (P-384).
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Why a key operation was refused or failed. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The card holds only RSA-2048, P-256 and P-384 keys.
    #[error("the card cannot hold {algorithm} keys; it supports rsa2048, p256 and p384")]
    UnsupportedAlgorithm {
        /// The algorithm asked for.
        algorithm: Algorithm,
    },
    /// Key generation failed (the system random number generator failed).
    #[error("generating a {algorithm} key failed")]
    Generation {
        /// The algorithm asked for.
        algorithm: Algorithm,
    },
    /// The operation does not fit the key's algorithm (e.g. ECDSA with an RSA key).
    #[error("{operation} needs {needed}, but this is a {actual} key")]
    WrongKeyType {
        /// The operation asked for.
        operation: &'static str,
        /// The kind of key it needs.
        needed: &'static str,
        /// The key's algorithm.
        actual: Algorithm,
    },
    /// The input is not the length the key's algorithm requires.
    #[error("{operation} with a {algorithm} key takes {expected} bytes, got {actual}")]
    InputLength {
        /// The operation asked for.
        operation: &'static str,
        /// The key's algorithm.
        algorithm: Algorithm,
        /// The length required.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The RSA input, read as a number, is not less than the modulus.
    #[error("the RSA input is not less than the key's modulus")]
    InputNotBelowModulus,
    /// The RSA private-key operation failed its consistency check.
    #[error("the RSA private-key operation failed")]
    RsaOperation,
    /// ECDSA signing failed.
    #[error("ECDSA signing failed")]
    Signing,
    /// The peer's public key is not an uncompressed point on the key's curve.
    #[error("the peer public key is not an uncompressed point on {curve}")]
    BadPeerPoint {
        /// The curve of our key.
        curve: Algorithm,
    },
    /// The text is not PEM with the label `PRIVATE KEY`.
    #[error("expected a PKCS#8 PEM private key (\"-----BEGIN PRIVATE KEY-----\"){}", found_label(.label))]
    NotPkcs8Pem {
        /// The PEM label found, if the text was PEM at all.
        label: Option<String>,
    },
    /// The PKCS#8 structure or the key inside it is malformed.
    #[error("the PKCS#8 private key is malformed or inconsistent")]
    MalformedPrivateKey,
    /// The PKCS#8 key is of an algorithm or curve the card does not hold.
    #[error("the private key's algorithm ({oid}) is not rsa2048, p256 or p384")]
    UnsupportedKeyAlgorithm {
        /// The algorithm or curve object identifier.
        oid: String,
    },
    /// An RSA key that is not 2048 bits.
    #[error("the card holds only 2048-bit RSA keys; this one has {bits} bits")]
    RsaKeySize {
        /// The modulus size in bits.
        bits: usize,
    },
    /// Encoding a key (PKCS#8, SubjectPublicKeyInfo) failed.
    #[error("encoding the {algorithm} key failed")]
    Encoding {
        /// The key's algorithm.
        algorithm: Algorithm,
    },
    /// The key is sealed (a protected card) and opens only with the card's data key.
    #[error("the private key is sealed; only the card's PIN or PUK opens it")]
    Sealed,
}

fn found_label(label: &Option<String>) -> String {
    label
        .as_ref()
        .map(|label| format!(", found \"{label}\""))
        .unwrap_or_default()
}

/// A private key held in one of the card's asymmetric slots. Zeroized on
/// drop (by the underlying crates); `Debug` shows only the algorithm.
#[derive(Clone)]
pub enum SlotKey {
    /// RSA-2048.
    Rsa(Box<RsaPrivateKey>),
    /// ECC P-256.
    P256(p256::SecretKey),
    /// ECC P-384.
    P384(p384::SecretKey),
}

impl SlotKey {
    /// Generates a fresh key: RSA-2048 (e = 65537), P-256 or P-384.
    ///
    /// # Errors
    /// [`KeyError::UnsupportedAlgorithm`] for any other algorithm,
    /// [`KeyError::Generation`] if the random number generator fails.
    pub fn generate(algorithm: Algorithm) -> Result<Self, KeyError> {
        let failed = KeyError::Generation { algorithm };
        match algorithm {
            Algorithm::Rsa2048 => {
                RsaPrivateKey::new_with_exp(&mut OsRng, RSA_BITS, &BigUint::from(RSA_EXPONENT))
                    .map(|key| SlotKey::Rsa(Box::new(key)))
                    .map_err(|_| failed)
            }
            Algorithm::EccP256 => p256::SecretKey::try_generate()
                .map(SlotKey::P256)
                .map_err(|_| failed),
            Algorithm::EccP384 => p384::SecretKey::try_generate()
                .map(SlotKey::P384)
                .map_err(|_| failed),
            _ => Err(KeyError::UnsupportedAlgorithm { algorithm }),
        }
    }

    /// The key's PIV algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SlotKey::Rsa(_) => Algorithm::Rsa2048,
            SlotKey::P256(_) => Algorithm::EccP256,
            SlotKey::P384(_) => Algorithm::EccP384,
        }
    }

    /// The public key in the card's form, as GENERATE ASYMMETRIC KEY PAIR returns it.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        match self {
            SlotKey::Rsa(key) => PublicKey::Rsa {
                modulus: key.n().to_bytes_be(),
                exponent: key.e().to_bytes_be(),
            },
            SlotKey::P256(key) => PublicKey::Ec {
                curve: Algorithm::EccP256,
                point: key.public_key().to_sec1_point(false).as_bytes().to_vec(),
            },
            SlotKey::P384(key) => PublicKey::Ec {
                curve: Algorithm::EccP384,
                point: key.public_key().to_sec1_point(false).as_bytes().to_vec(),
            },
        }
    }

    /// The public key as a DER SubjectPublicKeyInfo (RFC 5280), for certificates.
    ///
    /// # Errors
    /// [`KeyError::Encoding`] if the encoder fails (not expected for valid keys).
    pub fn spki_der(&self) -> Result<Vec<u8>, KeyError> {
        let encoded = match self {
            SlotKey::Rsa(key) => key
                .to_public_key()
                .to_public_key_der()
                .map(|document| document.into_vec())
                .ok(),
            SlotKey::P256(key) => key
                .public_key()
                .to_public_key_der()
                .map(|document| document.into_vec())
                .ok(),
            SlotKey::P384(key) => key
                .public_key()
                .to_public_key_der()
                .map(|document| document.into_vec())
                .ok(),
        };
        encoded.ok_or(KeyError::Encoding {
            algorithm: self.algorithm(),
        })
    }

    /// The raw RSA private-key operation (`input ^ d mod n`, with blinding),
    /// as a PIV card performs it for GENERAL AUTHENTICATE: `input` is exactly
    /// the modulus length and below the modulus; the result is left-padded
    /// with zeros to the modulus length.
    ///
    /// # Errors
    /// [`KeyError::WrongKeyType`] for an EC key, [`KeyError::InputLength`],
    /// [`KeyError::InputNotBelowModulus`], or [`KeyError::RsaOperation`].
    pub fn raw_rsa(&self, input: &[u8]) -> Result<Vec<u8>, KeyError> {
        let SlotKey::Rsa(key) = self else {
            return Err(self.wrong_key_type("a raw RSA operation", "an RSA key"));
        };
        let modulus_len = key.size();
        if input.len() != modulus_len {
            return Err(KeyError::InputLength {
                operation: "a raw RSA operation",
                algorithm: self.algorithm(),
                expected: modulus_len,
                actual: input.len(),
            });
        }
        let number = BigUint::from_bytes_be(input);
        if &number >= key.n() {
            return Err(KeyError::InputNotBelowModulus);
        }
        let result = rsa::hazmat::rsa_decrypt_and_check(key.as_ref(), Some(&mut OsRng), &number)
            .map_err(|_| KeyError::RsaOperation)?;
        let digits = result.to_bytes_be();
        let padding = modulus_len
            .checked_sub(digits.len())
            .ok_or(KeyError::RsaOperation)?;
        let mut output = vec![0; padding];
        output.extend_from_slice(&digits);
        Ok(output)
    }

    /// ECDSA over a hash the host computed (32 bytes for P-256, 48 for
    /// P-384), returning the DER `ECDSA-Sig-Value`. Signatures are
    /// deterministic (RFC 6979).
    ///
    /// # Errors
    /// [`KeyError::WrongKeyType`] for an RSA key, [`KeyError::InputLength`],
    /// or [`KeyError::Signing`].
    pub fn sign_prehash(&self, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.check_ecc_input("ECDSA signing", digest.len(), self.algorithm().key_len())?;
        let signature = match self {
            SlotKey::P256(key) => {
                let signature: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(key)
                    .sign_prehash(digest)
                    .map_err(|_| KeyError::Signing)?;
                signature.to_der().as_bytes().to_vec()
            }
            SlotKey::P384(key) => {
                let signature: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(key)
                    .sign_prehash(digest)
                    .map_err(|_| KeyError::Signing)?;
                signature.to_der().as_bytes().to_vec()
            }
            SlotKey::Rsa(_) => return Err(self.wrong_key_type("ECDSA signing", "an EC key")),
        };
        Ok(signature)
    }

    /// ECDH key agreement (SP 800-73-4 Part 2 Appendix A.5, key 9D) with the
    /// peer's uncompressed point `04 || X || Y`; returns the shared secret's
    /// X coordinate.
    ///
    /// # Errors
    /// [`KeyError::WrongKeyType`] for an RSA key, [`KeyError::InputLength`]
    /// or [`KeyError::BadPeerPoint`].
    pub fn ecdh(&self, peer_point: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let curve = self.algorithm();
        self.check_ecc_input("ECDH", peer_point.len(), 1 + 2 * curve.key_len())?;
        if peer_point.first() != Some(&0x04) {
            return Err(KeyError::BadPeerPoint { curve });
        }
        let bad_point = KeyError::BadPeerPoint { curve };
        let secret = match self {
            SlotKey::P256(key) => {
                let peer = p256::PublicKey::from_sec1_bytes(peer_point).map_err(|_| bad_point)?;
                key.diffie_hellman(&peer).raw_secret_bytes().to_vec()
            }
            SlotKey::P384(key) => {
                let peer = p384::PublicKey::from_sec1_bytes(peer_point).map_err(|_| bad_point)?;
                key.diffie_hellman(&peer).raw_secret_bytes().to_vec()
            }
            SlotKey::Rsa(_) => return Err(self.wrong_key_type("ECDH", "an EC key")),
        };
        Ok(Zeroizing::new(secret))
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, LF line ends),
    /// readable by `openssl pkey`.
    ///
    /// # Errors
    /// [`KeyError::Encoding`] if the encoder fails (not expected for valid keys).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let encoded = match self {
            SlotKey::Rsa(key) => key.to_pkcs8_pem(LineEnding::LF).ok(),
            SlotKey::P256(key) => key.to_pkcs8_pem(EcLineEnding::LF).ok(),
            SlotKey::P384(key) => key.to_pkcs8_pem(EcLineEnding::LF).ok(),
        };
        encoded.ok_or(KeyError::Encoding {
            algorithm: self.algorithm(),
        })
    }

    /// Reads a PKCS#8 PEM private key (as `openssl genpkey` writes it) and
    /// tells RSA, P-256 and P-384 apart by its algorithm identifier.
    ///
    /// # Errors
    /// [`KeyError::NotPkcs8Pem`], [`KeyError::MalformedPrivateKey`],
    /// [`KeyError::UnsupportedKeyAlgorithm`] or [`KeyError::RsaKeySize`].
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = rsa::pkcs8::der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|_| KeyError::NotPkcs8Pem { label: None })?;
        let der = Zeroizing::new(der);
        if label != "PRIVATE KEY" {
            return Err(KeyError::NotPkcs8Pem {
                label: Some(label.to_owned()),
            });
        }
        SlotKey::from_pkcs8_der(&der)
    }

    /// The key as PKCS#8 DER (what a protected card seals).
    ///
    /// # Errors
    /// [`KeyError::Encoding`] if the encoder fails (not expected for valid keys).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let encoded = match self {
            SlotKey::Rsa(key) => key
                .to_pkcs8_der()
                .ok()
                .map(|document| Zeroizing::new(document.as_bytes().to_vec())),
            SlotKey::P256(key) => key
                .to_pkcs8_der()
                .ok()
                .map(|document| Zeroizing::new(document.as_bytes().to_vec())),
            SlotKey::P384(key) => key
                .to_pkcs8_der()
                .ok()
                .map(|document| Zeroizing::new(document.as_bytes().to_vec())),
        };
        encoded.ok_or(KeyError::Encoding {
            algorithm: self.algorithm(),
        })
    }

    /// Reads a PKCS#8 DER private key: RSA-2048, P-256 or P-384.
    ///
    /// # Errors
    /// [`KeyError::MalformedPrivateKey`], [`KeyError::UnsupportedKeyAlgorithm`]
    /// or [`KeyError::RsaKeySize`].
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let info = PrivateKeyInfo::try_from(der).map_err(|_| KeyError::MalformedPrivateKey)?;
        let algorithm = info.algorithm.oid;
        if algorithm == RSA_ENCRYPTION {
            let key =
                RsaPrivateKey::from_pkcs8_der(der).map_err(|_| KeyError::MalformedPrivateKey)?;
            let bits = key.n().bits();
            if bits != RSA_BITS {
                return Err(KeyError::RsaKeySize { bits });
            }
            return Ok(SlotKey::Rsa(Box::new(key)));
        }
        if algorithm != EC_PUBLIC_KEY {
            return Err(KeyError::UnsupportedKeyAlgorithm {
                oid: algorithm.to_string(),
            });
        }
        let curve = info
            .algorithm
            .parameters_oid()
            .map_err(|_| KeyError::MalformedPrivateKey)?;
        if curve == SECP256R1 {
            p256::SecretKey::from_pkcs8_der(der)
                .map(SlotKey::P256)
                .map_err(|_| KeyError::MalformedPrivateKey)
        } else if curve == SECP384R1 {
            p384::SecretKey::from_pkcs8_der(der)
                .map(SlotKey::P384)
                .map_err(|_| KeyError::MalformedPrivateKey)
        } else {
            Err(KeyError::UnsupportedKeyAlgorithm {
                oid: curve.to_string(),
            })
        }
    }

    fn wrong_key_type(&self, operation: &'static str, needed: &'static str) -> KeyError {
        KeyError::WrongKeyType {
            operation,
            needed,
            actual: self.algorithm(),
        }
    }

    /// Refuses RSA keys and inputs of the wrong length for an ECC operation.
    fn check_ecc_input(
        &self,
        operation: &'static str,
        actual: usize,
        expected: usize,
    ) -> Result<(), KeyError> {
        if !self.algorithm().is_ecc() {
            return Err(self.wrong_key_type(operation, "an EC key"));
        }
        if actual != expected {
            return Err(KeyError::InputLength {
                operation,
                algorithm: self.algorithm(),
                expected,
                actual,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotKey({}, REDACTED)", self.algorithm())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::pkcs8::DecodePublicKey as _;
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::{Pkcs1v15Sign, RsaPublicKey};

    use super::*;

    /// One RSA-2048 key for the whole file: generation takes a while.
    fn rsa_key() -> &'static SlotKey {
        static KEY: OnceLock<SlotKey> = OnceLock::new();
        KEY.get_or_init(|| SlotKey::generate(Algorithm::Rsa2048).unwrap())
    }

    /// DER prefix of `DigestInfo { sha256, OCTET STRING (32) }` (RFC 8017 §9.2 note 1).
    const SHA256_DIGEST_INFO: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];

    /// The PKCS#1 v1.5 signature block a PIV host sends: `00 01 FF.. 00 || DigestInfo || hash`.
    fn pkcs1_v15_block(hash: &[u8], modulus_len: usize) -> Vec<u8> {
        let fill = modulus_len - 3 - SHA256_DIGEST_INFO.len() - hash.len();
        let mut block = vec![0x00, 0x01];
        block.extend(std::iter::repeat_n(0xFF, fill));
        block.push(0x00);
        block.extend_from_slice(&SHA256_DIGEST_INFO);
        block.extend_from_slice(hash);
        block
    }

    fn sha256(data: &[u8]) -> Vec<u8> {
        use rsa::sha2::Digest as _;
        rsa::sha2::Sha256::digest(data).to_vec()
    }

    fn sha384(data: &[u8]) -> Vec<u8> {
        use rsa::sha2::Digest as _;
        rsa::sha2::Sha384::digest(data).to_vec()
    }

    #[test]
    fn rsa_key_signs_pkcs1_v15_blocks_that_verify() {
        let key = rsa_key();
        assert_eq!(key.algorithm(), Algorithm::Rsa2048);
        let PublicKey::Rsa { modulus, exponent } = key.public_key() else {
            panic!("an RSA key must have an RSA public key");
        };
        assert_eq!(modulus.len(), 256);
        assert_ne!(modulus.first(), Some(&0));
        assert_eq!(exponent, vec![0x01, 0x00, 0x01]);

        let hash = sha256(b"pivtap challenge");
        let signature = key.raw_rsa(&pkcs1_v15_block(&hash, 256)).unwrap();
        assert_eq!(signature.len(), 256);
        let public = RsaPublicKey::new(
            BigUint::from_bytes_be(&modulus),
            BigUint::from_bytes_be(&exponent),
        )
        .unwrap();
        public
            .verify(Pkcs1v15Sign::new::<rsa::sha2::Sha256>(), &hash, &signature)
            .unwrap();
        let mut tampered = signature.clone();
        tampered[100] ^= 1;
        assert!(
            public
                .verify(Pkcs1v15Sign::new::<rsa::sha2::Sha256>(), &hash, &tampered)
                .is_err()
        );
    }

    #[test]
    fn raw_rsa_pads_small_results_and_checks_its_input() {
        let key = rsa_key();
        // 1 ^ d = 1: the result must come back as 255 zeros and a one.
        let mut one = vec![0; 256];
        one[255] = 1;
        assert_eq!(key.raw_rsa(&one).unwrap(), one);

        assert_eq!(
            key.raw_rsa(&[1; 255]),
            Err(KeyError::InputLength {
                operation: "a raw RSA operation",
                algorithm: Algorithm::Rsa2048,
                expected: 256,
                actual: 255
            })
        );
        assert_eq!(
            key.raw_rsa(&[0xFF; 256]),
            Err(KeyError::InputNotBelowModulus)
        );
        let PublicKey::Rsa { modulus, .. } = key.public_key() else {
            panic!("an RSA key must have an RSA public key");
        };
        assert_eq!(key.raw_rsa(&modulus), Err(KeyError::InputNotBelowModulus));
        assert!(matches!(
            key.sign_prehash(&[0; 32]),
            Err(KeyError::WrongKeyType { .. })
        ));
        assert!(matches!(
            key.ecdh(&[4; 65]),
            Err(KeyError::WrongKeyType { .. })
        ));
    }

    #[test]
    fn p256_signature_verifies() {
        let key = SlotKey::generate(Algorithm::EccP256).unwrap();
        let PublicKey::Ec { curve, point } = key.public_key() else {
            panic!("an EC key must have an EC public key");
        };
        assert_eq!(curve, Algorithm::EccP256);
        assert_eq!((point.len(), point.first()), (65, Some(&0x04)));

        let hash = sha256(b"pivtap challenge");
        let signature = key.sign_prehash(&hash).unwrap();
        let signature = p256::ecdsa::DerSignature::try_from(signature.as_slice()).unwrap();
        let verifier = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
        verifier.verify_prehash(&hash, &signature).unwrap();
        assert!(
            verifier
                .verify_prehash(&sha256(b"other"), &signature)
                .is_err()
        );
    }

    #[test]
    fn p384_signature_verifies() {
        let key = SlotKey::generate(Algorithm::EccP384).unwrap();
        let PublicKey::Ec { curve, point } = key.public_key() else {
            panic!("an EC key must have an EC public key");
        };
        assert_eq!(curve, Algorithm::EccP384);
        assert_eq!((point.len(), point.first()), (97, Some(&0x04)));

        let hash = sha384(b"pivtap challenge");
        let signature = key.sign_prehash(&hash).unwrap();
        let signature = p384::ecdsa::DerSignature::try_from(signature.as_slice()).unwrap();
        let verifier = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
        verifier.verify_prehash(&hash, &signature).unwrap();
        assert!(
            verifier
                .verify_prehash(&sha384(b"other"), &signature)
                .is_err()
        );
    }

    #[test]
    fn ecdsa_refuses_digests_of_the_wrong_length() {
        let p256_key = SlotKey::generate(Algorithm::EccP256).unwrap();
        assert_eq!(
            p256_key.sign_prehash(&[1; 48]),
            Err(KeyError::InputLength {
                operation: "ECDSA signing",
                algorithm: Algorithm::EccP256,
                expected: 32,
                actual: 48
            })
        );
        let p384_key = SlotKey::generate(Algorithm::EccP384).unwrap();
        assert!(matches!(
            p384_key.sign_prehash(&[1; 32]),
            Err(KeyError::InputLength { expected: 48, .. })
        ));
        assert!(matches!(
            p384_key.raw_rsa(&[1; 256]),
            Err(KeyError::WrongKeyType { .. })
        ));
    }

    #[test]
    fn ecdh_agrees_with_the_host() {
        let card_key = SlotKey::generate(Algorithm::EccP256).unwrap();
        let PublicKey::Ec {
            point: card_point, ..
        } = card_key.public_key()
        else {
            panic!("an EC key must have an EC public key");
        };
        let host_secret = p256::SecretKey::generate();
        let host_point = host_secret.public_key().to_sec1_point(false);
        let card_shared = card_key.ecdh(host_point.as_bytes()).unwrap();

        let card_public = p256::PublicKey::from_sec1_bytes(&card_point).unwrap();
        let host_shared = host_secret.diffie_hellman(&card_public);
        assert_eq!(
            card_shared.as_slice(),
            host_shared.raw_secret_bytes().as_slice()
        );
        assert_eq!(card_shared.len(), 32);

        let p384_key = SlotKey::generate(Algorithm::EccP384).unwrap();
        let p384_host = p384::SecretKey::generate();
        let p384_shared = p384_key
            .ecdh(p384_host.public_key().to_sec1_point(false).as_bytes())
            .unwrap();
        let PublicKey::Ec { point, .. } = p384_key.public_key() else {
            panic!("an EC key must have an EC public key");
        };
        let host_view =
            p384_host.diffie_hellman(&p384::PublicKey::from_sec1_bytes(&point).unwrap());
        assert_eq!(
            p384_shared.as_slice(),
            host_view.raw_secret_bytes().as_slice()
        );
    }

    #[test]
    fn ecdh_refuses_bad_points() {
        let key = SlotKey::generate(Algorithm::EccP256).unwrap();
        let bad = KeyError::BadPeerPoint {
            curve: Algorithm::EccP256,
        };
        // Right length, not on the curve.
        let mut off_curve = vec![0x04];
        off_curve.extend([0x11; 64]);
        assert_eq!(key.ecdh(&off_curve), Err(bad.clone()));
        // Right length, wrong form byte.
        let mut point = key.public_key();
        if let PublicKey::Ec { point, .. } = &mut point {
            point[0] = 0x05;
            assert_eq!(key.ecdh(point), Err(bad));
        }
        // A compressed point is not what PIV sends.
        assert!(matches!(
            key.ecdh(&[0x02; 33]),
            Err(KeyError::InputLength { expected: 65, .. })
        ));
    }

    #[test]
    fn pkcs8_pem_round_trips_every_algorithm() {
        let keys = [
            rsa_key().clone(),
            SlotKey::generate(Algorithm::EccP256).unwrap(),
            SlotKey::generate(Algorithm::EccP384).unwrap(),
        ];
        for key in keys {
            let pem = key.to_pkcs8_pem().unwrap();
            assert!(
                pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
                "{}",
                key.algorithm()
            );
            let read = SlotKey::from_pkcs8_pem(&pem).unwrap();
            assert_eq!(read.algorithm(), key.algorithm());
            assert_eq!(read.public_key(), key.public_key());
            assert_eq!(read.to_pkcs8_pem().unwrap(), pem);
        }
    }

    #[test]
    fn pkcs8_der_round_trips_every_algorithm() {
        for key in [
            rsa_key().clone(),
            SlotKey::generate(Algorithm::EccP256).unwrap(),
            SlotKey::generate(Algorithm::EccP384).unwrap(),
        ] {
            let der = key.to_pkcs8_der().unwrap();
            let read = SlotKey::from_pkcs8_der(&der).unwrap();
            assert_eq!(read.public_key(), key.public_key());
            assert_eq!(read.to_pkcs8_der().unwrap(), der);
        }
        assert_eq!(
            SlotKey::from_pkcs8_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).unwrap_err(),
            KeyError::MalformedPrivateKey
        );
    }

    #[test]
    fn spki_der_matches_the_public_key() {
        let rsa_spki = rsa_key().spki_der().unwrap();
        let public = RsaPublicKey::from_public_key_der(&rsa_spki).unwrap();
        let PublicKey::Rsa { modulus, .. } = rsa_key().public_key() else {
            panic!("an RSA key must have an RSA public key");
        };
        assert_eq!(public.n().to_bytes_be(), modulus);

        let key = SlotKey::generate(Algorithm::EccP384).unwrap();
        let public = p384::PublicKey::from_public_key_der(&key.spki_der().unwrap()).unwrap();
        let PublicKey::Ec { point, .. } = key.public_key() else {
            panic!("an EC key must have an EC public key");
        };
        assert_eq!(public.to_sec1_point(false).as_bytes(), point.as_slice());
    }

    #[test]
    fn from_pkcs8_pem_explains_what_is_wrong() {
        assert_eq!(
            SlotKey::from_pkcs8_pem("not a key").unwrap_err(),
            KeyError::NotPkcs8Pem { label: None }
        );
        let sec1 = match SlotKey::generate(Algorithm::EccP256).unwrap() {
            SlotKey::P256(key) => key.to_sec1_pem(EcLineEnding::LF).unwrap(),
            _ => unreachable!("generated a P-256 key"),
        };
        assert_eq!(
            SlotKey::from_pkcs8_pem(&sec1).unwrap_err(),
            KeyError::NotPkcs8Pem {
                label: Some("EC PRIVATE KEY".to_owned())
            }
        );
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            SlotKey::from_pkcs8_pem(garbage).unwrap_err(),
            KeyError::MalformedPrivateKey
        );
        // An Ed25519 key written by `openssl genpkey -algorithm ed25519` (RFC 8410 §10.3).
        let ed25519 = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEIPymSN/vtJGSIF96p6ZFiNnfu0zQTPL12ntaUz8RVq3K\n\
            -----END PRIVATE KEY-----\n";
        assert_eq!(
            SlotKey::from_pkcs8_pem(ed25519).unwrap_err(),
            KeyError::UnsupportedKeyAlgorithm {
                oid: "1.3.101.112".to_owned()
            }
        );
        let small_rsa = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let small_pem = small_rsa.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(
            SlotKey::from_pkcs8_pem(&small_pem).unwrap_err(),
            KeyError::RsaKeySize { bits: 1024 }
        );
    }

    #[test]
    fn generate_refuses_other_algorithms() {
        for algorithm in [Algorithm::Rsa1024, Algorithm::TripleDes, Algorithm::Aes256] {
            assert_eq!(
                SlotKey::generate(algorithm).unwrap_err(),
                KeyError::UnsupportedAlgorithm { algorithm }
            );
        }
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = SlotKey::generate(Algorithm::EccP256).unwrap();
        let SlotKey::P256(secret) = &key else {
            unreachable!("generated a P-256 key");
        };
        let scalar_hex = hex::encode(secret.to_bytes());
        let shown = format!("{key:?}");
        assert_eq!(shown, "SlotKey(p256, REDACTED)");
        assert!(!shown.contains(&scalar_hex[..8]));
        assert_eq!(format!("{:?}", rsa_key()), "SlotKey(rsa2048, REDACTED)");
    }
}
