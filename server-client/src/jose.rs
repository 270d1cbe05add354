//! Compact JWS plumbing (RFC 7515): base64url without padding, and a strict split of a compact serialisation into its three parts.
//!
//! Only the framing lives here; what the header says and which key checks
//! the signature is the business of [`crate::assertion`] and the token code.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The largest compact JWS accepted, in bytes: far above a real assertion
/// (a few KiB with an RSA certificate), small enough that hostile input costs little.
pub const MAX_COMPACT_LEN: usize = 64 * 1024;

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
}
