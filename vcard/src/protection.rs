//! Protected virtual cards: private keys sealed under a data key that only the card's PIN or PUK unwraps.
//!
//! A protected card holds a random 32-byte data key (DEK). Every private key
//! the card protects is sealed with it: AES-256-GCM, a fresh random nonce per
//! seal, and the slot and algorithm as associated data, so a sealed key moved
//! to another slot or relabelled no longer opens. The DEK itself is stored
//! twice, each time wrapped with AES-256-GCM under a key derived from a
//! secret with Argon2id and a random salt: once under the PIN, once under
//! the PUK. The PIN and PUK are not stored at all: a VERIFY succeeds when the
//! PIN unwraps the DEK (a wrong PIN fails GCM's tag check).
//!
//! What this protects against, and what not: someone who copies the file
//! cannot use or read the keys without the PIN or PUK, but the retry
//! counters are in the same file, so they can try PINs offline. Argon2id
//! makes each guess cost time and memory ([`KdfParams::RECOMMENDED`]: 19 MiB,
//! two passes, OWASP's recommendation), which slows that down but does not
//! stop it for a six-digit PIN: a protected virtual card is not a hardware
//! card. The management key stays in the file in the clear (it must be
//! usable without the PIN), and so does a card authentication key (9E),
//! which a PIV card uses without a PIN.

use std::fmt;

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use pivtap_apdu::piv::{Algorithm, KeyReference};
use zeroize::Zeroizing;

use super::keys::{KeyError, SlotKey};

/// Length of the data key (AES-256).
pub const DATA_KEY_LEN: usize = 32;
/// Length of each Argon2id salt.
pub const SALT_LEN: usize = 16;
/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of a wrapped data key: nonce, encrypted key, tag.
pub const WRAPPED_KEY_LEN: usize = NONCE_LEN + DATA_KEY_LEN + TAG_LEN;

/// Why a protected card's secrets could not be derived, wrapped, unwrapped,
/// sealed or opened. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtectionError {
    /// The Argon2id parameters are outside what this card accepts.
    #[error(
        "Argon2id parameters memory_kib = {memory_kib}, iterations = {iterations}, \
         parallelism = {parallelism} are out of range (parallelism 1 to {}, memory \
         8 × parallelism to {} KiB, iterations 1 to {})",
        KdfParams::MAX_PARALLELISM,
        KdfParams::MAX_MEMORY_KIB,
        KdfParams::MAX_ITERATIONS
    )]
    KdfParams {
        /// Memory in KiB.
        memory_kib: u32,
        /// Passes.
        iterations: u32,
        /// Lanes.
        parallelism: u32,
    },
    /// Argon2id failed (e.g. the memory could not be had).
    #[error("Argon2id key derivation failed")]
    Kdf,
    /// The PIN or PUK given does not unwrap the data key.
    #[error("the PIN or PUK does not unwrap the card's data key")]
    WrongSecret,
    /// A salt, wrapped key or sealed key has the wrong length.
    #[error("{what} is {actual} bytes long, expected {expected}")]
    Length {
        /// Which field.
        what: &'static str,
        /// The length it must have (at least, for sealed keys).
        expected: usize,
        /// The length found.
        actual: usize,
    },
    /// A sealed private key does not open with the card's data key: the file
    /// was altered, or the key was moved to another slot.
    #[error("the sealed private key of slot {slot} does not open with the card's data key")]
    Unseal {
        /// The slot.
        slot: KeyReference,
    },
    /// The private key could not be encoded or decoded.
    #[error("the sealed private key of slot {slot} cannot be used")]
    Key {
        /// The slot.
        slot: KeyReference,
        /// Why.
        #[source]
        source: KeyError,
    },
}

/// Argon2id cost parameters, kept in the card image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

impl KdfParams {
    /// What new protected cards use: 19 MiB, two passes, one lane (OWASP's
    /// Argon2id recommendation). One derivation takes some tens of milliseconds.
    pub const RECOMMENDED: KdfParams = KdfParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };
    /// The most memory an image may ask for (1 GiB), so a file cannot make
    /// the card exhaust the host.
    pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    /// The most passes an image may ask for.
    pub const MAX_ITERATIONS: u32 = 64;
    /// The most lanes an image may ask for.
    pub const MAX_PARALLELISM: u32 = 16;

    /// Other parameters, e.g. small ones that make tests fast (`8, 1, 1`).
    /// Anything below [`KdfParams::RECOMMENDED`] makes offline PIN guessing
    /// cheaper: use it for tests only.
    ///
    /// # Errors
    /// [`ProtectionError::KdfParams`] outside parallelism 1 to 16, memory
    /// 8 × parallelism to 1 GiB (in KiB), iterations 1 to 64.
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
    ) -> Result<Self, ProtectionError> {
        let in_range = (1..=Self::MAX_PARALLELISM).contains(&parallelism)
            && (8 * parallelism..=Self::MAX_MEMORY_KIB).contains(&memory_kib)
            && (1..=Self::MAX_ITERATIONS).contains(&iterations);
        if !in_range {
            return Err(ProtectionError::KdfParams {
                memory_kib,
                iterations,
                parallelism,
            });
        }
        Ok(KdfParams {
            memory_kib,
            iterations,
            parallelism,
        })
    }

    /// Memory in KiB.
    #[must_use]
    pub fn memory_kib(&self) -> u32 {
        self.memory_kib
    }

    /// Passes over the memory.
    #[must_use]
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Lanes.
    #[must_use]
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    /// Derives a 32-byte key from `secret` and `salt`.
    fn derive(
        &self,
        secret: &[u8],
        salt: &[u8; SALT_LEN],
    ) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, ProtectionError> {
        let params = argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(DATA_KEY_LEN),
        )
        .map_err(|_| ProtectionError::KdfParams {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
        })?;
        let argon2 =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        argon2
            .hash_password_into(secret, salt, key.as_mut_slice())
            .map_err(|_| ProtectionError::Kdf)?;
        Ok(key)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams::RECOMMENDED
    }
}

/// The data key of a protected card. Zeroized on drop; `Debug` shows nothing.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// A fresh random data key.
    #[must_use]
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        rand::fill(key.as_mut_slice());
        DataKey(key)
    }

    fn cipher(&self) -> Aes256Gcm {
        aes_cipher(&self.0)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(REDACTED)")
    }
}

fn aes_cipher(key: &[u8; DATA_KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(&(*key).into())
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    nonce
}

/// Which secret a wrapped data key is wrapped under; also its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secret {
    /// The PIN.
    Pin,
    /// The PUK.
    Puk,
}

impl Secret {
    fn associated_data(self) -> &'static [u8] {
        match self {
            Secret::Pin => b"pivtap-card-image data key wrapped under the PIN",
            Secret::Puk => b"pivtap-card-image data key wrapped under the PUK",
        }
    }
}

/// The data key wrapped under the PIN or the PUK: the Argon2id parameters
/// and salt, and `nonce || ciphertext || tag`. `Debug` shows the parameters only.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    kdf: KdfParams,
    salt: [u8; SALT_LEN],
    wrapped: [u8; WRAPPED_KEY_LEN],
}

impl WrappedKey {
    /// Wraps `key` under `secret` (the unpadded PIN or PUK) with a fresh salt and nonce.
    ///
    /// # Errors
    /// [`ProtectionError::KdfParams`] or [`ProtectionError::Kdf`].
    pub fn wrap(
        key: &DataKey,
        secret: &[u8],
        kind: Secret,
        kdf: KdfParams,
    ) -> Result<Self, ProtectionError> {
        let mut salt = [0u8; SALT_LEN];
        rand::fill(&mut salt);
        let key_encryption_key = kdf.derive(secret, &salt)?;
        let nonce = random_nonce();
        let ciphertext = aes_cipher(&key_encryption_key)
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: key.0.as_slice(),
                    aad: kind.associated_data(),
                },
            )
            .map_err(|_| ProtectionError::Kdf)?;
        let mut wrapped = [0u8; WRAPPED_KEY_LEN];
        wrapped[..NONCE_LEN].copy_from_slice(&nonce);
        wrapped[NONCE_LEN..].copy_from_slice(&ciphertext);
        Ok(WrappedKey { kdf, salt, wrapped })
    }

    /// Unwraps the data key with `secret` (the unpadded PIN or PUK).
    ///
    /// # Errors
    /// [`ProtectionError::WrongSecret`] when `secret` is not the one the key
    /// was wrapped under (or the file was altered); [`ProtectionError::Kdf`].
    pub fn unwrap(&self, secret: &[u8], kind: Secret) -> Result<DataKey, ProtectionError> {
        let key_encryption_key = self.kdf.derive(secret, &self.salt)?;
        let (nonce, ciphertext) = self.wrapped.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| ProtectionError::WrongSecret)?;
        let plain = Zeroizing::new(
            aes_cipher(&key_encryption_key)
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: kind.associated_data(),
                    },
                )
                .map_err(|_| ProtectionError::WrongSecret)?,
        );
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if plain.len() != DATA_KEY_LEN {
            return Err(ProtectionError::WrongSecret);
        }
        key.copy_from_slice(&plain);
        Ok(DataKey(key))
    }

    /// Rebuilds a wrapped key read from a file.
    ///
    /// # Errors
    /// [`ProtectionError::Length`] for a salt or wrapped key of the wrong length.
    pub fn from_parts(
        kdf: KdfParams,
        salt: &[u8],
        wrapped: &[u8],
    ) -> Result<Self, ProtectionError> {
        let salt = salt.try_into().map_err(|_| ProtectionError::Length {
            what: "the salt",
            expected: SALT_LEN,
            actual: salt.len(),
        })?;
        let wrapped = wrapped.try_into().map_err(|_| ProtectionError::Length {
            what: "the wrapped data key",
            expected: WRAPPED_KEY_LEN,
            actual: wrapped.len(),
        })?;
        Ok(WrappedKey { kdf, salt, wrapped })
    }

    /// The Argon2id parameters.
    #[must_use]
    pub fn kdf(&self) -> KdfParams {
        self.kdf
    }

    /// The Argon2id salt.
    #[must_use]
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// `nonce || ciphertext || tag`.
    #[must_use]
    pub fn wrapped(&self) -> &[u8] {
        &self.wrapped
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WrappedKey(argon2id m={} KiB t={} p={})",
            self.kdf.memory_kib, self.kdf.iterations, self.kdf.parallelism
        )
    }
}

/// A private key sealed with a card's data key: `nonce || ciphertext || tag`
/// of its PKCS#8 DER. `Debug` shows the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedKey {
    algorithm: Algorithm,
    sealed: Vec<u8>,
}

/// The associated data that binds a sealed key to its slot and algorithm.
fn seal_associated_data(slot: KeyReference, algorithm: Algorithm) -> Vec<u8> {
    format!("pivtap-card-image sealed private key slot={slot} algorithm={algorithm}").into_bytes()
}

impl SealedKey {
    /// Seals `key` for `slot` with a fresh nonce.
    ///
    /// # Errors
    /// [`ProtectionError::Key`] if the key cannot be encoded.
    pub fn seal(
        data_key: &DataKey,
        slot: KeyReference,
        key: &SlotKey,
    ) -> Result<Self, ProtectionError> {
        let algorithm = key.algorithm();
        let der = key
            .to_pkcs8_der()
            .map_err(|source| ProtectionError::Key { slot, source })?;
        let nonce = random_nonce();
        let ciphertext = data_key
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: der.as_slice(),
                    aad: &seal_associated_data(slot, algorithm),
                },
            )
            .map_err(|_| ProtectionError::Unseal { slot })?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(SealedKey { algorithm, sealed })
    }

    /// Opens the key of `slot`.
    ///
    /// # Errors
    /// [`ProtectionError::Unseal`] with the wrong data key, slot or
    /// algorithm, or altered bytes; [`ProtectionError::Key`] if what opens
    /// is not a key of the declared algorithm.
    pub fn unseal(
        &self,
        data_key: &DataKey,
        slot: KeyReference,
    ) -> Result<SlotKey, ProtectionError> {
        let (nonce, ciphertext) = self.sealed.split_at(NONCE_LEN.min(self.sealed.len()));
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| ProtectionError::Unseal { slot })?;
        let der = Zeroizing::new(
            data_key
                .cipher()
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &seal_associated_data(slot, self.algorithm),
                    },
                )
                .map_err(|_| ProtectionError::Unseal { slot })?,
        );
        let key = SlotKey::from_pkcs8_der(&der)
            .map_err(|source| ProtectionError::Key { slot, source })?;
        if key.algorithm() != self.algorithm {
            return Err(ProtectionError::Unseal { slot });
        }
        Ok(key)
    }

    /// Rebuilds a sealed key read from a file.
    ///
    /// # Errors
    /// [`ProtectionError::Length`] when the bytes are too short to hold a nonce and a tag.
    pub fn from_bytes(algorithm: Algorithm, sealed: &[u8]) -> Result<Self, ProtectionError> {
        if sealed.len() <= NONCE_LEN + TAG_LEN {
            return Err(ProtectionError::Length {
                what: "a sealed private key",
                expected: NONCE_LEN + TAG_LEN + 1,
                actual: sealed.len(),
            });
        }
        Ok(SealedKey {
            algorithm,
            sealed: sealed.to_vec(),
        })
    }

    /// The key's algorithm (authenticated with the key).
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// `nonce || ciphertext || tag`.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.sealed
    }
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedKey({}, {} bytes)",
            self.algorithm,
            self.sealed.len()
        )
    }
}

/// Whether a key in `slot` is sealed on a protected card: every slot but
/// the card authentication key (9E), which PIV uses without a PIN.
#[must_use]
pub fn seals_slot(slot: KeyReference) -> bool {
    slot != KeyReference::CardAuthentication
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Parameters small enough for fast tests.
    pub(crate) fn fast() -> KdfParams {
        KdfParams::new(8, 1, 1).unwrap()
    }

    #[test]
    fn wrap_unwrap_needs_the_right_secret_and_kind() {
        let key = DataKey::generate();
        let wrapped = WrappedKey::wrap(&key, b"918273", Secret::Pin, fast()).unwrap();
        let opened = wrapped.unwrap(b"918273", Secret::Pin).unwrap();
        assert_eq!(opened.0.as_slice(), key.0.as_slice());
        assert_eq!(
            wrapped.unwrap(b"918274", Secret::Pin).unwrap_err(),
            ProtectionError::WrongSecret
        );
        assert_eq!(
            wrapped.unwrap(b"918273", Secret::Puk).unwrap_err(),
            ProtectionError::WrongSecret
        );
        // A fresh salt and nonce every time.
        let again = WrappedKey::wrap(&key, b"918273", Secret::Pin, fast()).unwrap();
        assert_ne!(again.salt(), wrapped.salt());
        assert_ne!(again.wrapped(), wrapped.wrapped());
        // An altered byte anywhere fails.
        for index in [0, NONCE_LEN, WRAPPED_KEY_LEN - 1] {
            let mut bytes = wrapped.wrapped().to_vec();
            bytes[index] ^= 1;
            let altered = WrappedKey::from_parts(fast(), wrapped.salt(), &bytes).unwrap();
            assert!(altered.unwrap(b"918273", Secret::Pin).is_err(), "{index}");
        }
        let mut salt = wrapped.salt().to_vec();
        salt[0] ^= 1;
        let other_salt = WrappedKey::from_parts(fast(), &salt, wrapped.wrapped()).unwrap();
        assert!(other_salt.unwrap(b"918273", Secret::Pin).is_err());
    }

    #[test]
    fn recommended_parameters_derive_a_different_key_than_small_ones() {
        let salt = [7u8; SALT_LEN];
        let strong = KdfParams::RECOMMENDED.derive(b"918273", &salt).unwrap();
        let weak = fast().derive(b"918273", &salt).unwrap();
        assert_ne!(*strong, *weak);
        assert_eq!(
            *strong,
            *KdfParams::RECOMMENDED.derive(b"918273", &salt).unwrap()
        );
    }

    #[test]
    fn kdf_parameters_are_bounded() {
        assert!(KdfParams::new(8, 1, 1).is_ok());
        assert_eq!(KdfParams::default(), KdfParams::RECOMMENDED);
        for (m, t, p) in [
            (7, 1, 1),
            (8, 0, 1),
            (8, 1, 0),
            (16, 1, 4),
            (8, 65, 1),
            (2 << 20, 1, 1),
        ] {
            assert!(
                matches!(
                    KdfParams::new(m, t, p),
                    Err(ProtectionError::KdfParams { .. })
                ),
                "{m} {t} {p}"
            );
        }
    }

    #[test]
    fn sealed_keys_open_only_with_their_key_slot_and_algorithm() {
        let data_key = DataKey::generate();
        let key = SlotKey::generate(Algorithm::EccP256).unwrap();
        let slot = KeyReference::PivAuthentication;
        let sealed = SealedKey::seal(&data_key, slot, &key).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        assert!(
            !sealed
                .as_bytes()
                .windows(16)
                .any(|window| der.windows(16).any(|d| d == window)),
            "the sealed bytes contain the key"
        );
        let opened = sealed.unseal(&data_key, slot).unwrap();
        assert_eq!(opened.public_key(), key.public_key());

        assert!(matches!(
            sealed.unseal(&DataKey::generate(), slot),
            Err(ProtectionError::Unseal { .. })
        ));
        assert!(matches!(
            sealed.unseal(&data_key, KeyReference::DigitalSignature),
            Err(ProtectionError::Unseal { .. })
        ));
        let relabelled = SealedKey::from_bytes(Algorithm::EccP384, sealed.as_bytes()).unwrap();
        assert!(matches!(
            relabelled.unseal(&data_key, slot),
            Err(ProtectionError::Unseal { .. })
        ));
        let mut bytes = sealed.as_bytes().to_vec();
        bytes[NONCE_LEN + 3] ^= 0x80;
        let altered = SealedKey::from_bytes(Algorithm::EccP256, &bytes).unwrap();
        assert!(altered.unseal(&data_key, slot).is_err());
        assert!(SealedKey::from_bytes(Algorithm::EccP256, &[0; NONCE_LEN + TAG_LEN]).is_err());
        // Two seals of one key differ (fresh nonce).
        let again = SealedKey::seal(&data_key, slot, &key).unwrap();
        assert_ne!(again.as_bytes(), sealed.as_bytes());
    }

    #[test]
    fn debug_shows_no_secret() {
        let data_key = DataKey::generate();
        assert_eq!(format!("{data_key:?}"), "DataKey(REDACTED)");
        let wrapped = WrappedKey::wrap(&data_key, b"918273", Secret::Pin, fast()).unwrap();
        assert_eq!(
            format!("{wrapped:?}"),
            "WrappedKey(argon2id m=8 KiB t=1 p=1)"
        );
        let key = SlotKey::generate(Algorithm::EccP256).unwrap();
        let sealed = SealedKey::seal(&data_key, KeyReference::PivAuthentication, &key).unwrap();
        assert!(format!("{sealed:?}").starts_with("SealedKey(p256, "));
    }
}
