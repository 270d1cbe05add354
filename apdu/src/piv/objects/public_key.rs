//! Public keys as GENERATE ASYMMETRIC KEY PAIR returns them: `7F49 { 81 modulus, 82 exponent }` or `7F49 { 86 point }` (SP 800-73-4 Part 2 §3.3.2, Table 10).

use crate::error::TlvError;
use crate::piv::Algorithm;
use crate::tlv;

/// `7F49`: the public key data object template.
pub const TAG_PUBLIC_KEY: u32 = 0x7F49;
/// `81`: RSA modulus.
pub const TAG_MODULUS: u32 = 0x81;
/// `82`: RSA public exponent.
pub const TAG_EXPONENT: u32 = 0x82;
/// `86`: ECC point.
pub const TAG_POINT: u32 = 0x86;

/// A public key in the card's form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA: big-endian modulus and public exponent, without leading zeros.
    Rsa {
        /// `81`: the modulus.
        modulus: Vec<u8>,
        /// `82`: the public exponent.
        exponent: Vec<u8>,
    },
    /// ECC: the uncompressed point `04 || X || Y`.
    Ec {
        /// [`Algorithm::EccP256`] or [`Algorithm::EccP384`].
        curve: Algorithm,
        /// `86`: the point.
        point: Vec<u8>,
    },
}

impl PublicKey {
    /// Parses a `7F49` template (SP 800-73-4 Part 2 Table 10). RSA modulus and
    /// exponent lose their leading zeros; the ECC curve follows from the
    /// point's length (65 bytes: P-256, 97 bytes: P-384). Other elements are
    /// ignored.
    ///
    /// # Errors
    /// [`TlvError`] for malformed TLV, a template with both or neither key
    /// kind, an empty modulus or exponent, or a point that is not uncompressed
    /// on a PIV curve.
    pub fn parse(bytes: &[u8]) -> Result<Self, TlvError> {
        let elements = tlv::parse_all(tlv::expect(bytes, TAG_PUBLIC_KEY)?)?;
        let modulus = tlv::find(&elements, TAG_MODULUS);
        let point = tlv::find(&elements, TAG_POINT);
        match (modulus, point) {
            (Some(modulus), None) => {
                let exponent = tlv::require(&elements, TAG_EXPONENT)?;
                Ok(PublicKey::Rsa {
                    modulus: non_zero_integer(modulus, "RSA modulus")?,
                    exponent: non_zero_integer(exponent, "RSA exponent")?,
                })
            }
            (None, Some(point)) => Ok(PublicKey::Ec {
                curve: curve_of_point(point)?,
                point: point.to_vec(),
            }),
            (Some(_), Some(_)) => Err(invalid("both an RSA modulus and an ECC point")),
            (None, None) => Err(invalid("neither an RSA modulus (81) nor an ECC point (86)")),
        }
    }

    /// Parses like [`PublicKey::parse`] and checks that the key is of `algorithm`,
    /// as when the host asked the card to generate that kind of key.
    ///
    /// # Errors
    /// As [`PublicKey::parse`], and [`TlvError::InvalidValue`] when the key is
    /// of another algorithm or size.
    pub fn parse_for(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, TlvError> {
        let key = PublicKey::parse(bytes)?;
        let found = match (&key, key.algorithm()) {
            (_, Some(actual)) if actual == algorithm => return Ok(key),
            (_, Some(actual)) => actual.to_string(),
            (PublicKey::Rsa { modulus, .. }, None) => {
                format!("an RSA key with a {}-byte modulus", modulus.len())
            }
            (PublicKey::Ec { .. }, None) => "an ECC key on an unknown curve".to_owned(),
        };
        Err(invalid(&format!(
            "expected a {algorithm} key, found {found}"
        )))
    }

    /// The algorithm of this key: RSA by modulus size (128 bytes: RSA-1024,
    /// 256 bytes: RSA-2048), ECC by curve. `None` for an RSA key of a size
    /// PIV does not define, or an `Ec` value whose curve is not an ECC algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Option<Algorithm> {
        match self {
            PublicKey::Rsa { modulus, .. } => [Algorithm::Rsa1024, Algorithm::Rsa2048]
                .into_iter()
                .find(|a| a.key_len() == modulus.len()),
            PublicKey::Ec { curve, .. } => Some(*curve).filter(|c| c.is_ecc()),
        }
    }

    /// Encodes as the `7F49` template: `81` and `82` for RSA, `86` for ECC.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut inner = Vec::new();
        match self {
            PublicKey::Rsa { modulus, exponent } => {
                tlv::write(&mut inner, TAG_MODULUS, modulus);
                tlv::write(&mut inner, TAG_EXPONENT, exponent);
            }
            PublicKey::Ec { point, .. } => tlv::write(&mut inner, TAG_POINT, point),
        }
        tlv::encode(TAG_PUBLIC_KEY, &inner)
    }
}

fn invalid(reason: &str) -> TlvError {
    TlvError::InvalidValue {
        what: "public key",
        reason: reason.to_owned(),
    }
}

/// A big-endian unsigned integer without its leading zeros; zero itself is rejected.
fn non_zero_integer(bytes: &[u8], what: &'static str) -> Result<Vec<u8>, TlvError> {
    let first_significant =
        bytes
            .iter()
            .position(|b| *b != 0)
            .ok_or_else(|| TlvError::InvalidValue {
                what,
                reason: "empty or zero".to_owned(),
            })?;
    Ok(bytes[first_significant..].to_vec())
}

fn curve_of_point(point: &[u8]) -> Result<Algorithm, TlvError> {
    let curve = [Algorithm::EccP256, Algorithm::EccP384]
        .into_iter()
        .find(|c| point.len() == 1 + 2 * c.key_len())
        .ok_or_else(|| {
            invalid(&format!(
                "an ECC point of {} bytes is neither P-256 (65) nor P-384 (97)",
                point.len()
            ))
        })?;
    if point.first() != Some(&0x04) {
        return Err(invalid(
            "the ECC point is not in uncompressed form (04 || X || Y)",
        ));
    }
    Ok(curve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rsa_template(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
        let mut inner = tlv::encode(0x81, modulus);
        inner.extend(tlv::encode(0x82, exponent));
        tlv::encode(0x7F49, &inner)
    }

    #[test]
    fn parses_rsa_2048_by_hand_built_bytes() {
        let mut modulus = vec![0xC5; 256];
        modulus[255] = 0x01;
        // 7F49 82 0109 | 81 82 0100 <256 bytes> | 82 03 010001
        let mut bytes = vec![0x7F, 0x49, 0x82, 0x01, 0x09, 0x81, 0x82, 0x01, 0x00];
        bytes.extend_from_slice(&modulus);
        bytes.extend_from_slice(&[0x82, 0x03, 0x01, 0x00, 0x01]);
        let key = PublicKey::parse(&bytes).unwrap();
        assert_eq!(
            key,
            PublicKey::Rsa {
                modulus: modulus.clone(),
                exponent: vec![1, 0, 1]
            }
        );
        assert_eq!(key.algorithm(), Some(Algorithm::Rsa2048));
        assert_eq!(key.encode(), bytes);
        assert!(PublicKey::parse_for(Algorithm::Rsa2048, &bytes).is_ok());
        assert!(PublicKey::parse_for(Algorithm::Rsa1024, &bytes).is_err());
        assert!(PublicKey::parse_for(Algorithm::EccP256, &bytes).is_err());
    }

    #[test]
    fn strips_leading_zeros_of_modulus_and_exponent() {
        let mut modulus = vec![0x00];
        modulus.extend([0xB3; 128]);
        let key = PublicKey::parse(&rsa_template(&modulus, &[0, 0, 1, 0, 1])).unwrap();
        assert_eq!(
            key,
            PublicKey::Rsa {
                modulus: vec![0xB3; 128],
                exponent: vec![1, 0, 1]
            }
        );
        assert_eq!(key.algorithm(), Some(Algorithm::Rsa1024));
    }

    #[test]
    fn rsa_of_undefined_size_parses_but_fails_parse_for() {
        let bytes = rsa_template(&[0xB3; 200], &[3]);
        assert_eq!(PublicKey::parse(&bytes).unwrap().algorithm(), None);
        let error = PublicKey::parse_for(Algorithm::Rsa2048, &bytes).unwrap_err();
        assert!(error.to_string().contains("200-byte modulus"), "{error}");
    }

    #[test]
    fn parses_ecc_points_by_length() {
        let mut p256 = vec![0x04];
        p256.extend([0x11; 64]);
        let bytes = tlv::encode(0x7F49, &tlv::encode(0x86, &p256));
        assert_eq!(&bytes[..5], [0x7F, 0x49, 0x43, 0x86, 0x41]);
        let key = PublicKey::parse_for(Algorithm::EccP256, &bytes).unwrap();
        assert_eq!(
            key,
            PublicKey::Ec {
                curve: Algorithm::EccP256,
                point: p256
            }
        );
        assert_eq!(key.encode(), bytes);
        assert!(PublicKey::parse_for(Algorithm::EccP384, &bytes).is_err());

        let mut p384 = vec![0x04];
        p384.extend([0x22; 96]);
        let key = PublicKey::parse(&tlv::encode(0x7F49, &tlv::encode(0x86, &p384))).unwrap();
        assert_eq!(key.algorithm(), Some(Algorithm::EccP384));
    }

    #[test]
    fn rejects_malformed_templates() {
        let compressed = tlv::encode(0x7F49, &tlv::encode(0x86, &[0x02; 65]));
        assert!(PublicKey::parse(&compressed).is_err());
        let odd_length = tlv::encode(0x7F49, &tlv::encode(0x86, &[0x04; 64]));
        assert!(PublicKey::parse(&odd_length).is_err());
        let no_exponent = tlv::encode(0x7F49, &tlv::encode(0x81, &[0xB3; 256]));
        assert!(matches!(
            PublicKey::parse(&no_exponent),
            Err(TlvError::Missing { .. })
        ));
        assert!(PublicKey::parse(&rsa_template(&[0, 0], &[1, 0, 1])).is_err());
        assert!(PublicKey::parse(&rsa_template(&[0xB3; 256], &[])).is_err());
        let mut both = rsa_template(&[0xB3; 256], &[3]);
        both = tlv::encode(
            0x7F49,
            &[&both[5..], &tlv::encode(0x86, &[4; 65])[..]].concat(),
        );
        assert!(PublicKey::parse(&both).is_err());
        assert!(PublicKey::parse(&tlv::encode(0x7F49, &[])).is_err());
        assert!(matches!(
            PublicKey::parse(&tlv::encode(0x7F48, &tlv::encode(0x86, &[4; 65]))),
            Err(TlvError::Unexpected { .. })
        ));
        let valid = rsa_template(&[0xB3; 256], &[3]);
        assert!(matches!(
            PublicKey::parse(&valid[..valid.len() - 1]),
            Err(TlvError::Truncated { .. })
        ));
    }

    fn public_key() -> impl Strategy<Value = PublicKey> {
        let rsa = (
            prop_oneof![Just(128usize), Just(256usize)],
            any::<u8>(),
            proptest::collection::vec(1u8.., 1..4),
        )
            .prop_map(|(len, fill, exponent)| PublicKey::Rsa {
                modulus: vec![fill | 0x80; len],
                exponent,
            });
        let ecc = (
            prop_oneof![Just(Algorithm::EccP256), Just(Algorithm::EccP384)],
            any::<u8>(),
        )
            .prop_map(|(curve, fill)| {
                let mut point = vec![0x04];
                point.extend(vec![fill; 2 * curve.key_len()]);
                PublicKey::Ec { curve, point }
            });
        prop_oneof![rsa, ecc]
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(key in public_key()) {
            let algorithm = key.algorithm().unwrap();
            prop_assert_eq!(PublicKey::parse_for(algorithm, &key.encode()).unwrap(), key);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = PublicKey::parse(&bytes);
            let _ = PublicKey::parse_for(Algorithm::EccP256, &bytes);
        }

        #[test]
        fn parsing_arbitrary_template_content_never_panics(inner in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = PublicKey::parse(&tlv::encode(0x7F49, &inner));
        }
    }
}
