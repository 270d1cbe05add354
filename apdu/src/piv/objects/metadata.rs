//! The answer to GET METADATA (YubiKey extension `F7`): algorithm, policy, origin, public key, default state and retries of one key reference.

use crate::error::TlvError;
use crate::piv::Algorithm;
use crate::tlv;

/// `01`: algorithm (`FF` for a PIN or PUK).
pub const TAG_ALGORITHM: u32 = 0x01;
/// `02`: PIN policy and touch policy, one byte each.
pub const TAG_POLICY: u32 = 0x02;
/// `03`: origin, `01` generated on the card, `02` imported.
pub const TAG_ORIGIN: u32 = 0x03;
/// `04`: the public key, as the content of a `7F49` template.
pub const TAG_PUBLIC_KEY: u32 = 0x04;
/// `05`: `01` when the PIN, PUK or management key still has its factory value.
pub const TAG_IS_DEFAULT: u32 = 0x05;
/// `06`: retries, two bytes: the total and the remaining.
pub const TAG_RETRIES: u32 = 0x06;

/// Algorithm byte that marks a PIN or PUK in metadata.
pub const ALGORITHM_PIN: u8 = 0xFF;

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Generated on the card.
    Generated,
    /// Imported from outside.
    Imported,
}

/// Metadata of one key reference. Absent elements are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// The algorithm byte; [`ALGORITHM_PIN`] for PIN and PUK.
    pub algorithm: Option<u8>,
    /// PIN policy and touch policy bytes.
    pub policy: Option<[u8; 2]>,
    /// Where the key came from.
    pub origin: Option<KeyOrigin>,
    /// The public key, as the content of `7F49` (`81`/`82` or `86`).
    pub public_key: Option<Vec<u8>>,
    /// Whether the factory value is still set.
    pub is_default: Option<bool>,
    /// Total and remaining retries.
    pub retries: Option<(u8, u8)>,
}

impl Metadata {
    /// The algorithm, when it is a PIV algorithm (not a PIN marker).
    #[must_use]
    pub fn piv_algorithm(&self) -> Option<Algorithm> {
        self.algorithm.and_then(|a| Algorithm::try_from(a).ok())
    }

    /// Parses the answer; unknown elements are skipped.
    ///
    /// # Errors
    /// [`TlvError`] for malformed TLV or elements of the wrong size.
    pub fn parse(bytes: &[u8]) -> Result<Self, TlvError> {
        let elements = tlv::parse_all(bytes)?;
        let fixed = |tag: u32, what: &'static str, len: usize| -> Result<Option<&[u8]>, TlvError> {
            match tlv::find(&elements, tag) {
                None => Ok(None),
                Some(value) if value.len() == len => Ok(Some(value)),
                Some(value) => Err(TlvError::InvalidValue {
                    what,
                    reason: format!("{} bytes, expected {len}", value.len()),
                }),
            }
        };
        let origin = match fixed(TAG_ORIGIN, "metadata origin", 1)? {
            None => None,
            Some([1]) => Some(KeyOrigin::Generated),
            Some([2]) => Some(KeyOrigin::Imported),
            Some(other) => {
                return Err(TlvError::InvalidValue {
                    what: "metadata origin",
                    reason: format!("unknown origin {other:02X?}"),
                });
            }
        };
        Ok(Metadata {
            algorithm: fixed(TAG_ALGORITHM, "metadata algorithm", 1)?.map(|v| v[0]),
            policy: fixed(TAG_POLICY, "metadata policy", 2)?.map(|v| [v[0], v[1]]),
            origin,
            public_key: tlv::find(&elements, TAG_PUBLIC_KEY).map(<[u8]>::to_vec),
            is_default: fixed(TAG_IS_DEFAULT, "metadata default flag", 1)?.map(|v| v[0] != 0),
            retries: fixed(TAG_RETRIES, "metadata retries", 2)?.map(|v| (v[0], v[1])),
        })
    }

    /// Encodes the present elements in tag order.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(algorithm) = self.algorithm {
            tlv::write(&mut out, TAG_ALGORITHM, &[algorithm]);
        }
        if let Some(policy) = self.policy {
            tlv::write(&mut out, TAG_POLICY, &policy);
        }
        if let Some(origin) = self.origin {
            let byte = match origin {
                KeyOrigin::Generated => 1,
                KeyOrigin::Imported => 2,
            };
            tlv::write(&mut out, TAG_ORIGIN, &[byte]);
        }
        if let Some(public_key) = &self.public_key {
            tlv::write(&mut out, TAG_PUBLIC_KEY, public_key);
        }
        if let Some(is_default) = self.is_default {
            tlv::write(&mut out, TAG_IS_DEFAULT, &[u8::from(is_default)]);
        }
        if let Some((total, remaining)) = self.retries {
            tlv::write(&mut out, TAG_RETRIES, &[total, remaining]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pin_metadata() {
        // A PIN with its default value, 3 tries of 3 left.
        let bytes = [0x01, 0x01, 0xFF, 0x05, 0x01, 0x01, 0x06, 0x02, 0x03, 0x03];
        let metadata = Metadata::parse(&bytes).unwrap();
        assert_eq!(metadata.algorithm, Some(ALGORITHM_PIN));
        assert_eq!(metadata.piv_algorithm(), None);
        assert_eq!(metadata.is_default, Some(true));
        assert_eq!(metadata.retries, Some((3, 3)));
        assert_eq!(metadata.encode(), bytes);
        assert!(Metadata::parse(&[0x06, 0x01, 0x03]).is_err());
        assert!(Metadata::parse(&[0x03, 0x01, 0x07]).is_err());
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Metadata::parse(&bytes);
        }

        #[test]
        fn round_trips(algorithm in any::<Option<u8>>(), retries in any::<Option<(u8, u8)>>(), is_default in any::<Option<bool>>()) {
            let metadata = Metadata { algorithm, retries, is_default, ..Metadata::default() };
            prop_assert_eq!(Metadata::parse(&metadata.encode()).unwrap(), metadata);
        }
    }
}
