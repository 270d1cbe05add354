//! Compact JWS plumbing (RFC 7515): base64url without padding, a strict split of a compact serialisation into its three parts, and the one JWS algorithm type ([`JwsAlgorithm`]).
//!
//! Framing and the algorithm vocabulary live here; what the header says and
//! which key checks the signature is the business of [`crate::assertion`] and
//! the token code.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::certificate::KeyKind;

/// The largest compact JWS accepted, in bytes: far above a real assertion
/// (a few KiB with an RSA certificate), small enough that hostile input costs little.
pub const MAX_COMPACT_LEN: usize = 64 * 1024;

/// The smallest RSA key a JWS algorithm accepts, in bits (RFC 7518 §3.3: "a
/// key of size 2048 bits or larger MUST be used").
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA key a JWS algorithm accepts, in bits: the verifier's limit
/// (aws-lc-rs `RSA_PKCS1_2048_8192_*`); verification cost grows with the size.
pub const MAX_RSA_BITS: usize = 8192;

/// The PIV algorithm id of an RSA-2048 key (SP 800-78-4 Table 6-2).
const PIV_RSA_2048: u8 = 0x07;
/// The PIV algorithm id of an ECC P-256 key.
const PIV_ECC_P256: u8 = 0x11;
/// The PIV algorithm id of an ECC P-384 key.
const PIV_ECC_P384: u8 = 0x14;

/// The JWS signature algorithms (RFC 7518 §3.1) a card signs with: the only
/// ones pivtap makes or verifies (never `none`, never HMAC).
///
/// Which key fits which algorithm, one rule for the whole workspace:
/// - `RS256` and `RS512` need an RSA key of [`MIN_RSA_BITS`] to [`MAX_RSA_BITS`]
///   bits: RFC 7518 §3.3 forbids shorter keys (so a PIV `06` RSA-1024 key never
///   signs), and the verifier takes nothing longer. The PIV keys this project
///   generates and reads (`07`) are RSA-2048, inside the range.
/// - `ES256` needs a P-256 key, `ES384` a P-384 key (RFC 7518 §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
}

/// A key that does not fit a JWS algorithm, or that no JWS algorithm signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AlgorithmError {
    /// The algorithm cannot be made or checked with this key.
    #[error("{algorithm} cannot be used with this key: {key}")]
    KeyDoesNotFit {
        /// The algorithm asked for.
        algorithm: JwsAlgorithm,
        /// The key offered.
        key: KeyKind,
    },
    /// No JWS algorithm signs with this key (another curve, RSA outside
    /// 2048 to 8192 bits, ...).
    #[error("no JWS algorithm signs with a {key} key")]
    UnsupportedKey {
        /// The key offered.
        key: KeyKind,
    },
}

/// A name that is not one of the JWS algorithms pivtap knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a JWS algorithm pivtap uses (RS256, RS512, ES256, ES384)")]
pub struct UnknownJwsAlgorithm {
    /// The name given.
    pub name: String,
}

impl JwsAlgorithm {
    /// Every algorithm.
    pub const ALL: [JwsAlgorithm; 4] = [
        JwsAlgorithm::Rs256,
        JwsAlgorithm::Rs512,
        JwsAlgorithm::Es256,
        JwsAlgorithm::Es384,
    ];

    /// The JOSE name, as in a header's `alg` (`RS256`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::Rs256 => "RS256",
            JwsAlgorithm::Rs512 => "RS512",
            JwsAlgorithm::Es256 => "ES256",
            JwsAlgorithm::Es384 => "ES384",
        }
    }

    /// The algorithm a header's `alg` names. Exact: JOSE names are case-sensitive
    /// (RFC 7515 §4.1.1), so `rs256` is refused.
    ///
    /// # Errors
    /// [`UnknownJwsAlgorithm`] for any other name (`none`, `HS256`, ...).
    pub fn from_name(name: &str) -> Result<Self, UnknownJwsAlgorithm> {
        JwsAlgorithm::ALL
            .into_iter()
            .find(|algorithm| algorithm.name() == name)
            .ok_or_else(|| UnknownJwsAlgorithm {
                name: name.to_owned(),
            })
    }

    /// Whether this algorithm is RSASSA-PKCS1-v1_5.
    #[must_use]
    pub fn is_rsa(self) -> bool {
        matches!(self, JwsAlgorithm::Rs256 | JwsAlgorithm::Rs512)
    }

    /// Checks that a `key` fits this algorithm (the rule in the type's docs).
    ///
    /// # Errors
    /// [`AlgorithmError::KeyDoesNotFit`].
    pub fn check_key(self, key: KeyKind) -> Result<(), AlgorithmError> {
        let fits = match (self, key) {
            (JwsAlgorithm::Rs256 | JwsAlgorithm::Rs512, KeyKind::Rsa { bits }) => {
                (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits)
            }
            (JwsAlgorithm::Es256, KeyKind::EcP256) | (JwsAlgorithm::Es384, KeyKind::EcP384) => true,
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(AlgorithmError::KeyDoesNotFit {
                algorithm: self,
                key,
            })
        }
    }

    /// The algorithm a `key` signs with by default: `RS256` for RSA, `ES256`
    /// for P-256, `ES384` for P-384.
    ///
    /// # Errors
    /// [`AlgorithmError::UnsupportedKey`] when no algorithm fits the key.
    pub fn for_key(key: KeyKind) -> Result<Self, AlgorithmError> {
        let algorithm = match key {
            KeyKind::Rsa { .. } => JwsAlgorithm::Rs256,
            KeyKind::EcP256 => JwsAlgorithm::Es256,
            KeyKind::EcP384 => JwsAlgorithm::Es384,
            KeyKind::Other => return Err(AlgorithmError::UnsupportedKey { key }),
        };
        algorithm
            .check_key(key)
            .map(|()| algorithm)
            .map_err(|_| AlgorithmError::UnsupportedKey { key })
    }

    /// The algorithm a PIV card key signs with, from its PIV algorithm id
    /// (SP 800-78-4 Table 6-2, as `pivtap_apdu::piv::Algorithm` converts to
    /// `u8`): `07` RSA-2048 signs `RS256`, `11` P-256 `ES256`, `14` P-384
    /// `ES384`. `None` for every other id: `06` RSA-1024 is below
    /// [`MIN_RSA_BITS`], the rest are management-key (symmetric) algorithms.
    /// The one place card-side ids meet JOSE names.
    #[must_use]
    pub fn for_piv_key(piv_algorithm: u8) -> Option<Self> {
        match piv_algorithm {
            PIV_RSA_2048 => Some(JwsAlgorithm::Rs256),
            PIV_ECC_P256 => Some(JwsAlgorithm::Es256),
            PIV_ECC_P384 => Some(JwsAlgorithm::Es384),
            _ => None,
        }
    }
}

impl std::fmt::Display for JwsAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for JwsAlgorithm {
    type Err = UnknownJwsAlgorithm;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JwsAlgorithm::from_name(text)
    }
}

/// A compact JWS that could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoseError {
    /// The input is longer than [`MAX_COMPACT_LEN`].
    #[error("the JWS is {len} bytes long, more than the {max} allowed")]
    TooLarge {
        /// Length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A compact JWS has exactly three dot-separated parts.
    #[error("a compact JWS has 3 parts separated by dots, this one has {parts}")]
    WrongPartCount {
        /// How many parts the input had.
        parts: usize,
    },
    /// A part is not base64url without padding.
    #[error("the JWS {part} is not base64url without padding")]
    InvalidBase64 {
        /// Which part.
        part: JwsPart,
    },
    /// The header or the payload is empty.
    #[error("the JWS {part} is empty")]
    EmptyPart {
        /// Which part.
        part: JwsPart,
    },
}

/// The parts of a compact JWS, to say which one is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsPart {
    /// The protected header.
    Header,
    /// The payload.
    Payload,
    /// The signature.
    Signature,
}

impl std::fmt::Display for JwsPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwsPart::Header => "header",
            JwsPart::Payload => "payload",
            JwsPart::Signature => "signature",
        })
    }
}

/// A compact JWS split into its decoded parts. Nothing is verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactJws<'a> {
    /// The decoded protected header (JSON bytes, not parsed).
    pub header: Vec<u8>,
    /// The decoded payload (JSON bytes, not parsed).
    pub payload: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// `BASE64URL(header) . BASE64URL(payload)` exactly as received: the
    /// bytes the signature covers.
    pub signing_input: &'a str,
}

impl<'a> CompactJws<'a> {
    /// Splits `compact` into header, payload and signature, strictly: at most
    /// [`MAX_COMPACT_LEN`] bytes, exactly three parts, each canonical base64url
    /// without padding, header and payload not empty (the signature may be
    /// empty here; no accepted algorithm verifies an empty one).
    ///
    /// # Errors
    /// [`JoseError`] saying what is wrong with the framing.
    pub fn parse(compact: &'a str) -> Result<Self, JoseError> {
        if compact.len() > MAX_COMPACT_LEN {
            return Err(JoseError::TooLarge {
                len: compact.len(),
                max: MAX_COMPACT_LEN,
            });
        }
        let wrong_count = || JoseError::WrongPartCount {
            parts: compact.split('.').count(),
        };
        let (signing_input, signature) = compact.rsplit_once('.').ok_or_else(wrong_count)?;
        let (header, payload) = signing_input.split_once('.').ok_or_else(wrong_count)?;
        if payload.contains('.') {
            return Err(wrong_count());
        }
        let decode_part = |text: &str, part: JwsPart| {
            base64url_decode(text).map_err(|InvalidBase64| JoseError::InvalidBase64 { part })
        };
        let header = decode_part(header, JwsPart::Header)?;
        let payload = decode_part(payload, JwsPart::Payload)?;
        let signature = decode_part(signature, JwsPart::Signature)?;
        if header.is_empty() {
            return Err(JoseError::EmptyPart {
                part: JwsPart::Header,
            });
        }
        if payload.is_empty() {
            return Err(JoseError::EmptyPart {
                part: JwsPart::Payload,
            });
        }
        Ok(CompactJws {
            header,
            payload,
            signature,
            signing_input,
        })
    }
}

/// Encodes `bytes` as base64url without padding (RFC 7515 §2).
#[must_use]
pub fn base64url_encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Text that is not canonical base64url without padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not base64url without padding")]
pub struct InvalidBase64;

/// Decodes base64url without padding, strictly: no padding, no whitespace,
/// no standard-alphabet characters, no non-zero trailing bits.
///
/// # Errors
/// [`InvalidBase64`].
pub fn base64url_decode(text: &str) -> Result<Vec<u8>, InvalidBase64> {
    URL_SAFE_NO_PAD.decode(text).map_err(|_| InvalidBase64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn compact(header: &[u8], payload: &[u8], signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            base64url_encode(header),
            base64url_encode(payload),
            base64url_encode(signature)
        )
    }

    #[test]
    fn base64url_has_no_padding_and_uses_the_url_alphabet() {
        assert_eq!(base64url_encode(b"\xfb\xff"), "-_8");
        assert_eq!(base64url_decode("-_8").unwrap(), b"\xfb\xff");
        assert_eq!(base64url_encode(b""), "");
    }

    #[test]
    fn base64url_decoding_is_strict() {
        for bad in ["-_8=", "+/8", "-_ 8", "a", "-_9", "QQ==", "QR"] {
            assert!(base64url_decode(bad).is_err(), "{bad:?} decoded");
        }
        assert_eq!(base64url_decode("QQ").unwrap(), b"A");
    }

    #[test]
    fn a_well_formed_jws_splits_into_its_parts() {
        let text = compact(br#"{"alg":"ES256"}"#, br#"{"a":1}"#, &[1, 2, 3]);
        let jws = CompactJws::parse(&text).unwrap();
        assert_eq!(jws.header, br#"{"alg":"ES256"}"#);
        assert_eq!(jws.payload, br#"{"a":1}"#);
        assert_eq!(jws.signature, [1, 2, 3]);
        assert_eq!(
            jws.signing_input,
            text.rsplit_once('.').map(|(input, _)| input).unwrap()
        );
    }

    #[test]
    fn the_number_of_parts_must_be_three() {
        let three = compact(b"{}", b"{}", b"sig");
        let two = three.rsplit_once('.').unwrap().0.to_owned();
        let one = three.split_once('.').unwrap().0.to_owned();
        let four = format!("{three}.AA");
        for (text, parts) in [(one, 1), (two, 2), (four, 4), ("..".repeat(3), 7)] {
            assert_eq!(
                CompactJws::parse(&text),
                Err(JoseError::WrongPartCount { parts }),
                "{text}"
            );
        }
    }

    #[test]
    fn each_part_must_be_base64url() {
        let good = base64url_encode(b"{}");
        let cases = [
            (format!("{good}=.{good}.AA"), JwsPart::Header),
            (format!("{good}.{good}+.AA"), JwsPart::Payload),
            (format!("{good}.{good}.A"), JwsPart::Signature),
        ];
        for (text, part) in cases {
            assert_eq!(
                CompactJws::parse(&text),
                Err(JoseError::InvalidBase64 { part })
            );
        }
    }

    #[test]
    fn header_and_payload_must_not_be_empty() {
        assert_eq!(
            CompactJws::parse(".e30.AA"),
            Err(JoseError::EmptyPart {
                part: JwsPart::Header
            })
        );
        assert_eq!(
            CompactJws::parse("e30..AA"),
            Err(JoseError::EmptyPart {
                part: JwsPart::Payload
            })
        );
        assert_eq!(CompactJws::parse("e30.e30.").unwrap().signature, b"");
    }

    #[test]
    fn huge_input_is_refused_before_any_decoding() {
        let huge = "A".repeat(MAX_COMPACT_LEN + 1);
        assert_eq!(
            CompactJws::parse(&huge),
            Err(JoseError::TooLarge {
                len: MAX_COMPACT_LEN + 1,
                max: MAX_COMPACT_LEN
            })
        );
    }

    proptest! {
        #[test]
        fn any_three_parts_round_trip(
            header in prop::collection::vec(any::<u8>(), 1..200),
            payload in prop::collection::vec(any::<u8>(), 1..200),
            signature in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let text = compact(&header, &payload, &signature);
            let jws = CompactJws::parse(&text).unwrap();
            prop_assert_eq!(jws.header, header);
            prop_assert_eq!(jws.payload, payload);
            prop_assert_eq!(jws.signature, signature);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = CompactJws::parse(&text);
        }
    }

    #[test]
    fn jws_names_round_trip_exactly() {
        for algorithm in JwsAlgorithm::ALL {
            assert_eq!(JwsAlgorithm::from_name(algorithm.name()), Ok(algorithm));
            assert_eq!(algorithm.to_string().parse::<JwsAlgorithm>(), Ok(algorithm));
        }
        for bad in ["rs256", "none", "HS256", "PS256", "EdDSA", ""] {
            assert_eq!(
                JwsAlgorithm::from_name(bad),
                Err(UnknownJwsAlgorithm {
                    name: bad.to_owned()
                })
            );
        }
    }

    #[test]
    fn piv_algorithm_ids_map_to_one_jws_algorithm_each() {
        assert_eq!(JwsAlgorithm::for_piv_key(0x07), Some(JwsAlgorithm::Rs256));
        assert_eq!(JwsAlgorithm::for_piv_key(0x11), Some(JwsAlgorithm::Es256));
        assert_eq!(JwsAlgorithm::for_piv_key(0x14), Some(JwsAlgorithm::Es384));
        // RSA-1024 is below the JWS minimum; 3DES and AES never sign.
        for id in [0x06, 0x03, 0x08, 0x0A, 0x0C, 0x00, 0xFF] {
            assert_eq!(JwsAlgorithm::for_piv_key(id), None, "{id:02x}");
        }
        // What a PIV key maps to fits that key.
        for (id, key) in [
            (0x07, KeyKind::Rsa { bits: 2048 }),
            (0x11, KeyKind::EcP256),
            (0x14, KeyKind::EcP384),
        ] {
            let algorithm = JwsAlgorithm::for_piv_key(id).unwrap();
            assert_eq!(algorithm.check_key(key), Ok(()));
            assert_eq!(JwsAlgorithm::for_key(key), Ok(algorithm));
        }
    }

    #[test]
    fn rsa_keys_fit_from_2048_to_8192_bits() {
        for algorithm in [JwsAlgorithm::Rs256, JwsAlgorithm::Rs512] {
            for bits in [2048, 3072, 4096, 8192] {
                assert_eq!(algorithm.check_key(KeyKind::Rsa { bits }), Ok(()), "{bits}");
            }
            for bits in [0, 1024, 2047, 8193, 16384] {
                let key = KeyKind::Rsa { bits };
                assert_eq!(
                    algorithm.check_key(key),
                    Err(AlgorithmError::KeyDoesNotFit { algorithm, key }),
                    "{bits}"
                );
            }
        }
        assert_eq!(
            JwsAlgorithm::for_key(KeyKind::Rsa { bits: 1024 }),
            Err(AlgorithmError::UnsupportedKey {
                key: KeyKind::Rsa { bits: 1024 }
            })
        );
        assert_eq!(
            JwsAlgorithm::Rs256
                .check_key(KeyKind::Rsa { bits: 1024 })
                .unwrap_err()
                .to_string(),
            "RS256 cannot be used with this key: RSA-1024"
        );
    }

    #[test]
    fn ec_keys_fit_only_their_curve() {
        let keys = [
            KeyKind::Rsa { bits: 2048 },
            KeyKind::EcP256,
            KeyKind::EcP384,
            KeyKind::Other,
        ];
        for algorithm in JwsAlgorithm::ALL {
            let fitting: Vec<_> = keys
                .into_iter()
                .filter(|key| algorithm.check_key(*key).is_ok())
                .collect();
            let expected = match algorithm {
                JwsAlgorithm::Rs256 | JwsAlgorithm::Rs512 => KeyKind::Rsa { bits: 2048 },
                JwsAlgorithm::Es256 => KeyKind::EcP256,
                JwsAlgorithm::Es384 => KeyKind::EcP384,
            };
            assert_eq!(fitting, [expected], "{algorithm}");
        }
        assert_eq!(
            JwsAlgorithm::for_key(KeyKind::Other),
            Err(AlgorithmError::UnsupportedKey {
                key: KeyKind::Other
            })
        );
    }
}
