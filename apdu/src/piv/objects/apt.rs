//! The Application Property Template that SELECT returns (SP 800-73-4 Part 2 §3.1.1, Table 3).
//!
//! `61 { 4F AID, 79 { 4F authority AID }, 50 label, 5F50 URL, AC { 80 alg ..., 06 00 } }`.

use crate::error::TlvError;
use crate::piv::Algorithm;
use crate::tlv;

/// `61`: the application property template.
pub const TAG_TEMPLATE: u32 = 0x61;
/// `4F`: application identifier (the PIX, or the full AID), also inside `79`.
pub const TAG_AID: u32 = 0x4F;
/// `79`: coexistent tag allocation authority template.
pub const TAG_AUTHORITY: u32 = 0x79;
/// `50`: application label.
pub const TAG_LABEL: u32 = 0x50;
/// `5F50`: uniform resource locator.
pub const TAG_URL: u32 = 0x5F50;
/// `AC`: cryptographic algorithms supported.
pub const TAG_ALGORITHMS: u32 = 0xAC;
/// `80` inside `AC`: one algorithm identifier.
pub const TAG_ALGORITHM: u32 = 0x80;
/// `06` inside `AC`: object identifier, always empty in PIV.
pub const TAG_OBJECT_IDENTIFIER: u32 = 0x06;

/// The application property template.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ApplicationPropertyTemplate {
    /// `4F`: the application identifier as the card gives it (usually the PIX
    /// `00 00 10 00 01 00`).
    pub aid: Vec<u8>,
    /// `4F` inside `79`: the AID of the coexistent tag allocation authority
    /// (NIST RID `A0 00 00 03 08`), if present.
    pub authority: Option<Vec<u8>>,
    /// `50`: application label, if present.
    pub label: Option<String>,
    /// `5F50`: URL of the application's specification, if present.
    pub url: Option<String>,
    /// `80` elements of `AC`: the algorithms the card supports, in card order;
    /// identifiers this crate does not know are left out.
    pub algorithms: Vec<Algorithm>,
}

impl ApplicationPropertyTemplate {
    /// Parses the `61` template. Only the AID is required. Text that is not
    /// UTF-8 is decoded lossily, and unknown elements are ignored; but every
    /// element present must be well-formed TLV, `79` must hold a `4F`, and
    /// each algorithm identifier must be one byte.
    ///
    /// # Errors
    /// [`TlvError`] for another outer tag, malformed TLV or the violations above.
    pub fn parse(bytes: &[u8]) -> Result<Self, TlvError> {
        let elements = tlv::parse_all(tlv::expect(bytes, TAG_TEMPLATE)?)?;
        let aid = tlv::require(&elements, TAG_AID)?.to_vec();
        let authority = tlv::find(&elements, TAG_AUTHORITY)
            .map(|template| {
                let inner = tlv::parse_all(template)?;
                tlv::require(&inner, TAG_AID).map(<[u8]>::to_vec)
            })
            .transpose()?;
        let text = |tag| tlv::find(&elements, tag).map(|v| String::from_utf8_lossy(v).into_owned());
        let algorithms = match tlv::find(&elements, TAG_ALGORITHMS) {
            Some(template) => parse_algorithms(template)?,
            None => Vec::new(),
        };
        Ok(ApplicationPropertyTemplate {
            aid,
            authority,
            label: text(TAG_LABEL),
            url: text(TAG_URL),
            algorithms,
        })
    }

    /// Encodes the `61` template: `4F`, then `79`, `50`, `5F50` when present,
    /// then `AC { 80 ... 06 00 }` when there are algorithms.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut inner = tlv::encode(TAG_AID, &self.aid);
        if let Some(authority) = &self.authority {
            tlv::write(&mut inner, TAG_AUTHORITY, &tlv::encode(TAG_AID, authority));
        }
        if let Some(label) = &self.label {
            tlv::write(&mut inner, TAG_LABEL, label.as_bytes());
        }
        if let Some(url) = &self.url {
            tlv::write(&mut inner, TAG_URL, url.as_bytes());
        }
        if !self.algorithms.is_empty() {
            let mut algorithms = Vec::with_capacity(3 * self.algorithms.len() + 2);
            for algorithm in &self.algorithms {
                tlv::write(&mut algorithms, TAG_ALGORITHM, &[u8::from(*algorithm)]);
            }
            tlv::write(&mut algorithms, TAG_OBJECT_IDENTIFIER, &[]);
            tlv::write(&mut inner, TAG_ALGORITHMS, &algorithms);
        }
        tlv::encode(TAG_TEMPLATE, &inner)
    }
}

fn parse_algorithms(template: &[u8]) -> Result<Vec<Algorithm>, TlvError> {
    let mut algorithms = Vec::new();
    for element in tlv::parse_all(template)? {
        if element.tag != TAG_ALGORITHM {
            continue;
        }
        let [identifier] = element.value else {
            return Err(TlvError::InvalidValue {
                what: "algorithm identifier",
                reason: format!("{} bytes, expected 1", element.value.len()),
            });
        };
        if let Ok(algorithm) = Algorithm::try_from(*identifier) {
            algorithms.push(algorithm);
        }
    }
    Ok(algorithms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a YubiKey answers to SELECT (without the status word).
    const YUBIKEY_APT: [u8; 19] = [
        0x61, 0x11, 0x4F, 0x06, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x79, 0x07, 0x4F, 0x05, 0xA0,
        0x00, 0x00, 0x03, 0x08,
    ];

    #[test]
    fn parses_a_yubikey_answer() {
        let apt = ApplicationPropertyTemplate::parse(&YUBIKEY_APT).unwrap();
        assert_eq!(apt.aid, [0x00, 0x00, 0x10, 0x00, 0x01, 0x00]);
        assert_eq!(
            apt.authority.as_deref(),
            Some(&[0xA0, 0x00, 0x00, 0x03, 0x08][..])
        );
        assert_eq!(apt.label, None);
        assert_eq!(apt.url, None);
        assert!(apt.algorithms.is_empty());
        assert_eq!(apt.encode(), YUBIKEY_APT);
    }

    #[test]
    fn parses_every_element_of_table_3() {
        // 61 | 4F 06 PIX | 79 07 { 4F 05 RID } | 50 03 "PIV" | 5F50 05 "x.org"
        //    | AC 0B { 80 01 07, 80 01 11, 80 01 42 (unknown), 06 00 }
        let mut inner = vec![0x4F, 0x06, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00];
        inner.extend([0x79, 0x07, 0x4F, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08]);
        inner.extend([0x50, 0x03, b'P', b'I', b'V']);
        inner.extend([0x5F, 0x50, 0x05, b'x', b'.', b'o', b'r', b'g']);
        inner.extend([
            0xAC, 0x0B, 0x80, 0x01, 0x07, 0x80, 0x01, 0x11, 0x80, 0x01, 0x42, 0x06, 0x00,
        ]);
        let mut bytes = vec![0x61, inner.len() as u8];
        bytes.extend(&inner);
        let apt = ApplicationPropertyTemplate::parse(&bytes).unwrap();
        assert_eq!(apt.label.as_deref(), Some("PIV"));
        assert_eq!(apt.url.as_deref(), Some("x.org"));
        assert_eq!(apt.algorithms, [Algorithm::Rsa2048, Algorithm::EccP256]);
        // Re-encoding drops only the unknown algorithm.
        let reencoded = apt.encode();
        assert_eq!(reencoded.len(), bytes.len() - 3);
        assert_eq!(ApplicationPropertyTemplate::parse(&reencoded).unwrap(), apt);
    }

    #[test]
    fn rejects_malformed_templates() {
        let pix = tlv::encode(0x4F, &[0, 0, 0x10, 0]);
        assert!(matches!(
            ApplicationPropertyTemplate::parse(&tlv::encode(0x6F, &pix)),
            Err(TlvError::Unexpected { .. })
        ));
        assert!(matches!(
            ApplicationPropertyTemplate::parse(&tlv::encode(0x61, &tlv::encode(0x50, b"PIV"))),
            Err(TlvError::Missing { .. })
        ));
        let empty_authority = [pix.clone(), tlv::encode(0x79, &[])].concat();
        assert!(ApplicationPropertyTemplate::parse(&tlv::encode(0x61, &empty_authority)).is_err());
        let long_algorithm = [pix.clone(), tlv::encode(0xAC, &tlv::encode(0x80, &[7, 7]))].concat();
        assert!(ApplicationPropertyTemplate::parse(&tlv::encode(0x61, &long_algorithm)).is_err());
        let broken_algorithms = [pix, vec![0xAC, 0x02, 0x80, 0x05]].concat();
        assert!(
            ApplicationPropertyTemplate::parse(&tlv::encode(0x61, &broken_algorithms)).is_err()
        );
        assert!(matches!(
            ApplicationPropertyTemplate::parse(&YUBIKEY_APT[..18]),
            Err(TlvError::Truncated { .. })
        ));
    }

    fn template() -> impl Strategy<Value = ApplicationPropertyTemplate> {
        (
            proptest::collection::vec(any::<u8>(), 0..16),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            proptest::option::of(".{0,20}"),
            proptest::option::of("[a-z:/.]{0,40}"),
            proptest::collection::vec(proptest::sample::select(Algorithm::ALL.to_vec()), 0..8),
        )
            .prop_map(|(aid, authority, label, url, algorithms)| {
                ApplicationPropertyTemplate {
                    aid,
                    authority,
                    label,
                    url,
                    algorithms,
                }
            })
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(apt in template()) {
            prop_assert_eq!(ApplicationPropertyTemplate::parse(&apt.encode()).unwrap(), apt);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ApplicationPropertyTemplate::parse(&bytes);
            let _ = ApplicationPropertyTemplate::parse(&tlv::encode(0x61, &bytes));
        }
    }
}
