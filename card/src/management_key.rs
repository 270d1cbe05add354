//! The PIV card management key (key reference 9B): the 3DES or AES key that proves a host may administer the card (SP 800-73-4 Part 2 Appendix A.1).
//!
//! Both sides use it: the virtual card answers the challenge-response of
//! GENERAL AUTHENTICATE with it, and the host session answers the card's
//! witness and challenge with it. Every operation is a single-block ECB
//! encryption or decryption, which is all that authentication needs.

use std::fmt;

use aes::cipher::{Block, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use des::TdesEde3;
use pivtap_apdu::piv::Algorithm;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The well-known default management key of PIV cards as they leave the
/// factory (YubiKey, many test cards, OpenSC's `piv-tool` default):
/// 3DES `01 02 03 04 05 06 07 08` repeated three times. Change it on every
/// card that leaves a test bench.
pub const DEFAULT_MANAGEMENT_KEY: [u8; 24] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, //
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, //
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
];

/// Why a management key or a block was refused. Never contains key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManagementKeyError {
    /// The key has the wrong length for its algorithm.
    #[error("a {algorithm} management key is {expected} bytes long, got {actual} bytes")]
    KeyLength {
        /// The algorithm asked for.
        algorithm: Algorithm,
        /// The key length that algorithm needs.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The algorithm is not a symmetric management key algorithm.
    #[error(
        "{algorithm} is not a management key algorithm; expected 3des, aes128, aes192 or aes256"
    )]
    UnsupportedAlgorithm {
        /// The algorithm asked for.
        algorithm: Algorithm,
    },
    /// The hex text of a key is not an even number of hex digits.
    #[error("the management key is not valid hex (expected an even number of digits 0-9, a-f)")]
    BadHex,
    /// A key given without its algorithm has a length no management key has.
    #[error("a management key is 16, 24 or 32 bytes (32, 48 or 64 hex digits), got {actual} bytes")]
    UnknownLength {
        /// The length given.
        actual: usize,
    },
    /// A block to encrypt or decrypt is not exactly one cipher block.
    #[error("a {algorithm} block is {expected} bytes long, got {actual} bytes")]
    BlockLength {
        /// The key's algorithm.
        algorithm: Algorithm,
        /// The block size of that algorithm.
        expected: usize,
        /// The length given.
        actual: usize,
    },
}

/// A card management key: its algorithm and its key bytes. Zeroized on drop;
/// `Debug` shows only the algorithm; equality is constant-time.
#[derive(Clone)]
pub struct ManagementKey {
    algorithm: Algorithm,
    key: Zeroizing<Vec<u8>>,
}

/// Which way a block goes through the cipher.
#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

impl ManagementKey {
    /// Takes a key for `algorithm`: 3DES 24 bytes, AES-128 16, AES-192 24, AES-256 32.
    ///
    /// # Errors
    /// [`ManagementKeyError::UnsupportedAlgorithm`] for a non-symmetric
    /// algorithm, [`ManagementKeyError::KeyLength`] for a key of the wrong length.
    pub fn new(algorithm: Algorithm, key: &[u8]) -> Result<Self, ManagementKeyError> {
        if !algorithm.is_symmetric() {
            return Err(ManagementKeyError::UnsupportedAlgorithm { algorithm });
        }
        let expected = algorithm.key_len();
        if key.len() != expected {
            return Err(ManagementKeyError::KeyLength {
                algorithm,
                expected,
                actual: key.len(),
            });
        }
        Ok(ManagementKey {
            algorithm,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// Takes a key written in hex (upper or lower case, surrounding white space ignored).
    ///
    /// # Errors
    /// [`ManagementKeyError::BadHex`], or the errors of [`ManagementKey::new`].
    pub fn from_hex(algorithm: Algorithm, hex_text: &str) -> Result<Self, ManagementKeyError> {
        let key =
            Zeroizing::new(hex::decode(hex_text.trim()).map_err(|_| ManagementKeyError::BadHex)?);
        ManagementKey::new(algorithm, &key)
    }

    /// Takes a key written in hex whose algorithm follows from its length, as people give
    /// keys: 16 bytes AES-128, 24 bytes 3DES (the PIV default for that length; a card
    /// that reports AES-192 is met by enrollment, which asks the card), 32 bytes AES-256.
    ///
    /// # Errors
    /// [`ManagementKeyError::BadHex`], or [`ManagementKeyError::UnknownLength`] for any
    /// other length.
    pub fn from_hex_by_length(hex_text: &str) -> Result<Self, ManagementKeyError> {
        let key =
            Zeroizing::new(hex::decode(hex_text.trim()).map_err(|_| ManagementKeyError::BadHex)?);
        let algorithm = match key.len() {
            16 => Algorithm::Aes128,
            24 => Algorithm::TripleDes,
            32 => Algorithm::Aes256,
            actual => return Err(ManagementKeyError::UnknownLength { actual }),
        };
        ManagementKey::new(algorithm, &key)
    }

    /// The factory default key, [`DEFAULT_MANAGEMENT_KEY`] (3DES).
    #[must_use]
    pub fn default_key() -> Self {
        ManagementKey {
            algorithm: Algorithm::TripleDes,
            key: Zeroizing::new(DEFAULT_MANAGEMENT_KEY.to_vec()),
        }
    }

    /// The key's algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The cipher block size: 8 for 3DES, 16 for AES. This is also the length
    /// of the witness and the challenge in management-key authentication.
    #[must_use]
    pub fn block_len(&self) -> usize {
        match self.algorithm {
            Algorithm::TripleDes => 8,
            _ => 16,
        }
    }

    /// Encrypts exactly one block (ECB).
    ///
    /// # Errors
    /// [`ManagementKeyError::BlockLength`] if `block` is not [`Self::block_len`] bytes.
    pub fn encrypt_block(&self, block: &[u8]) -> Result<Zeroizing<Vec<u8>>, ManagementKeyError> {
        self.transform_block(block, Direction::Encrypt)
    }

    /// Decrypts exactly one block (ECB).
    ///
    /// # Errors
    /// [`ManagementKeyError::BlockLength`] if `block` is not [`Self::block_len`] bytes.
    pub fn decrypt_block(&self, block: &[u8]) -> Result<Zeroizing<Vec<u8>>, ManagementKeyError> {
        self.transform_block(block, Direction::Decrypt)
    }

    /// The key as lower-case hex, for the card image file.
    #[must_use]
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.key.as_slice()))
    }

    /// Whether two keys are the same algorithm and key, compared in constant time.
    #[must_use]
    pub fn ct_eq(&self, other: &ManagementKey) -> bool {
        let same_key: bool = self.key.as_slice().ct_eq(other.key.as_slice()).into();
        same_key && self.algorithm == other.algorithm
    }

    fn transform_block(
        &self,
        block: &[u8],
        direction: Direction,
    ) -> Result<Zeroizing<Vec<u8>>, ManagementKeyError> {
        let expected = self.block_len();
        if block.len() != expected {
            return Err(ManagementKeyError::BlockLength {
                algorithm: self.algorithm,
                expected,
                actual: block.len(),
            });
        }
        let mut output = Zeroizing::new(block.to_vec());
        match self.algorithm {
            Algorithm::TripleDes => self.run::<TdesEde3>(&mut output, direction),
            Algorithm::Aes128 => self.run::<Aes128>(&mut output, direction),
            Algorithm::Aes192 => self.run::<Aes192>(&mut output, direction),
            Algorithm::Aes256 => self.run::<Aes256>(&mut output, direction),
            algorithm => Err(ManagementKeyError::UnsupportedAlgorithm { algorithm }),
        }?;
        Ok(output)
    }

    /// Runs one block through cipher `C` in place.
    fn run<C>(&self, data: &mut [u8], direction: Direction) -> Result<(), ManagementKeyError>
    where
        C: KeyInit + BlockCipherEncrypt + BlockCipherDecrypt,
    {
        let key_error = ManagementKeyError::KeyLength {
            algorithm: self.algorithm,
            expected: self.algorithm.key_len(),
            actual: self.key.len(),
        };
        let cipher = C::new_from_slice(&self.key).map_err(|_| key_error)?;
        let actual = data.len();
        let block =
            <&mut Block<C>>::try_from(data).map_err(|_| ManagementKeyError::BlockLength {
                algorithm: self.algorithm,
                expected: self.block_len(),
                actual,
            })?;
        match direction {
            Direction::Encrypt => cipher.encrypt_block(block),
            Direction::Decrypt => cipher.decrypt_block(block),
        }
        Ok(())
    }
}

impl PartialEq for ManagementKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}

impl Eq for ManagementKey {}

impl fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManagementKey({}, REDACTED)", self.algorithm)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_key_by_its_length_takes_the_algorithm_people_mean() {
        let by_length = |bytes: usize| ManagementKey::from_hex_by_length(&"01".repeat(bytes));
        assert_eq!(by_length(16).unwrap().algorithm(), Algorithm::Aes128);
        assert_eq!(by_length(24).unwrap().algorithm(), Algorithm::TripleDes);
        assert_eq!(by_length(32).unwrap().algorithm(), Algorithm::Aes256);
        assert!(matches!(
            by_length(2),
            Err(ManagementKeyError::UnknownLength { actual: 2 })
        ));
        assert!(matches!(
            ManagementKey::from_hex_by_length("zz"),
            Err(ManagementKeyError::BadHex)
        ));
    }

    fn unhex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    /// Encrypts `plaintext` and checks both directions against a published answer.
    fn assert_known_answer(algorithm: Algorithm, key: &str, plaintext: &str, ciphertext: &str) {
        let key = ManagementKey::from_hex(algorithm, key).unwrap();
        let encrypted = key.encrypt_block(&unhex(plaintext)).unwrap();
        assert_eq!(hex::encode(encrypted.as_slice()), ciphertext, "{algorithm}");
        let decrypted = key.decrypt_block(&unhex(ciphertext)).unwrap();
        assert_eq!(hex::encode(decrypted.as_slice()), plaintext, "{algorithm}");
    }

    #[test]
    fn triple_des_matches_sp_800_67_example() {
        // SP 800-67 Rev. 1 Appendix B: K1, K2, K3 and the first block "The qufc".
        assert_known_answer(
            Algorithm::TripleDes,
            "0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123",
            "5468652071756663",
            "a826fd8ce53b855f",
        );
    }

    #[test]
    fn aes_matches_fips_197_appendix_c() {
        let plaintext = "00112233445566778899aabbccddeeff";
        assert_known_answer(
            Algorithm::Aes128,
            "000102030405060708090a0b0c0d0e0f",
            plaintext,
            "69c4e0d86a7b0430d8cdb78070b4c55a",
        );
        assert_known_answer(
            Algorithm::Aes192,
            "000102030405060708090a0b0c0d0e0f1011121314151617",
            plaintext,
            "dda97ca4864cdfe06eaf70a0ec0d7191",
        );
        assert_known_answer(
            Algorithm::Aes256,
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            plaintext,
            "8ea2b7ca516745bfeafc49904b496089",
        );
    }

    #[test]
    fn default_key_is_the_well_known_one() {
        let key = ManagementKey::default_key();
        assert_eq!(key.algorithm(), Algorithm::TripleDes);
        assert_eq!(
            key.to_hex().as_str(),
            "010203040506070801020304050607080102030405060708"
        );
        assert_eq!(key.block_len(), 8);
        assert_eq!(
            ManagementKey::new(Algorithm::TripleDes, &DEFAULT_MANAGEMENT_KEY).unwrap(),
            key
        );
    }

    #[test]
    fn refuses_wrong_lengths_and_algorithms() {
        assert_eq!(
            ManagementKey::new(Algorithm::Aes128, &[0; 24]),
            Err(ManagementKeyError::KeyLength {
                algorithm: Algorithm::Aes128,
                expected: 16,
                actual: 24
            })
        );
        assert_eq!(
            ManagementKey::new(Algorithm::EccP256, &[0; 32]),
            Err(ManagementKeyError::UnsupportedAlgorithm {
                algorithm: Algorithm::EccP256
            })
        );
        assert_eq!(
            ManagementKey::from_hex(Algorithm::TripleDes, "01020g"),
            Err(ManagementKeyError::BadHex)
        );
        assert_eq!(
            ManagementKey::from_hex(Algorithm::TripleDes, "010"),
            Err(ManagementKeyError::BadHex)
        );
        let key = ManagementKey::new(Algorithm::Aes256, &[7; 32]).unwrap();
        assert_eq!(key.block_len(), 16);
        assert_eq!(
            key.encrypt_block(&[0; 8]),
            Err(ManagementKeyError::BlockLength {
                algorithm: Algorithm::Aes256,
                expected: 16,
                actual: 8
            })
        );
        assert!(
            ManagementKey::default_key()
                .decrypt_block(&[0; 16])
                .is_err()
        );
    }

    #[test]
    fn equality_needs_same_algorithm_and_key() {
        let aes192 = ManagementKey::new(Algorithm::Aes192, &DEFAULT_MANAGEMENT_KEY).unwrap();
        assert!(!aes192.ct_eq(&ManagementKey::default_key()));
        let other = ManagementKey::new(Algorithm::Aes192, &[9; 24]).unwrap();
        assert!(!aes192.ct_eq(&other));
        assert!(aes192.ct_eq(&aes192.clone()));
    }

    #[test]
    fn debug_and_errors_show_no_key_bytes() {
        let key =
            ManagementKey::from_hex(Algorithm::Aes128, "A1B2C3D4E5F60718293A4B5C6D7E8F90").unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "ManagementKey(aes128, REDACTED)");
        let error = ManagementKey::from_hex(Algorithm::Aes128, "A1B2C3D4E5F6071Z")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("A1B2"), "{error}");
    }

    fn any_key_and_block() -> impl Strategy<Value = (Algorithm, Vec<u8>, Vec<u8>)> {
        prop_oneof![
            Just(Algorithm::TripleDes),
            Just(Algorithm::Aes128),
            Just(Algorithm::Aes192),
            Just(Algorithm::Aes256),
        ]
        .prop_flat_map(|algorithm| {
            let block_len = algorithm.block_len().unwrap_or_default();
            (
                Just(algorithm),
                proptest::collection::vec(any::<u8>(), algorithm.key_len()),
                proptest::collection::vec(any::<u8>(), block_len),
            )
        })
    }

    proptest! {
        #[test]
        fn decrypt_undoes_encrypt((algorithm, key, block) in any_key_and_block()) {
            let key = ManagementKey::new(algorithm, &key).unwrap();
            prop_assert_eq!(key.block_len(), block.len());
            let encrypted = key.encrypt_block(&block).unwrap();
            prop_assert_eq!(encrypted.len(), block.len());
            let decrypted = key.decrypt_block(&encrypted).unwrap();
            prop_assert_eq!(decrypted.as_slice(), block.as_slice());
        }
    }
}
