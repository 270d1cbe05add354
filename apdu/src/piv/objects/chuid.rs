//! The Card Holder Unique Identifier (CHUID, object `5FC102`): FASC-N, GUID, expiration date and issuer signature (SP 800-73-4 Part 1 Table 9).

use std::fmt::Write as _;

use super::fascn::{FASCN_LEN, Fascn};
use crate::error::TlvError;
use crate::tlv;

/// `30`: FASC-N.
pub const TAG_FASCN: u32 = 0x30;
/// `32`: organizational identifier (deprecated).
pub const TAG_ORGANIZATION_IDENTIFIER: u32 = 0x32;
/// `33`: DUNS (deprecated).
pub const TAG_DUNS: u32 = 0x33;
/// `34`: GUID.
pub const TAG_GUID: u32 = 0x34;
/// `35`: expiration date, `YYYYMMDD` in ASCII.
pub const TAG_EXPIRATION: u32 = 0x35;
/// `36`: cardholder UUID.
pub const TAG_CARDHOLDER_UUID: u32 = 0x36;
/// `3E`: issuer asymmetric signature (a CMS signed data object, or empty).
pub const TAG_SIGNATURE: u32 = 0x3E;
/// `FE`: error detection code, always empty.
pub const TAG_ERROR_DETECTION_CODE: u32 = 0xFE;

/// The CHUID: the content of the `53` element of object `5FC102`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Chuid {
    /// `30`: the FASC-N as stored. Some cards store 25 bytes that are not a
    /// valid FASC-N; [`Chuid::fascn`] decodes them.
    pub fascn_raw: [u8; FASCN_LEN],
    /// `32`: organizational identifier (deprecated), if present.
    pub organization_identifier: Option<Vec<u8>>,
    /// `33`: DUNS (deprecated), if present.
    pub duns: Option<Vec<u8>>,
    /// `34`: the card's GUID.
    pub guid: [u8; 16],
    /// `35`: the expiration date, eight ASCII digits `YYYYMMDD`.
    pub expiration: String,
    /// `36`: the cardholder UUID, if present.
    pub cardholder_uuid: Option<[u8; 16]>,
    /// `3E`: the issuer asymmetric signature; empty when the card carries none.
    pub signature: Vec<u8>,
}

impl Chuid {
    /// Parses the CHUID content (without the `53` wrapper). `30`, `34` and
    /// `35` are required; a missing `3E` reads as an empty signature, and
    /// other elements (such as the deprecated `3D` authentication key map)
    /// are ignored.
    ///
    /// # Errors
    /// [`TlvError`] for malformed TLV, missing elements, a FASC-N that is not
    /// 25 bytes, a GUID or UUID that is not 16 bytes, or an expiration date
    /// that is not eight digits.
    pub fn parse(content: &[u8]) -> Result<Self, TlvError> {
        let elements = tlv::parse_all(content)?;
        let fascn_raw = fixed(tlv::require(&elements, TAG_FASCN)?, "CHUID FASC-N")?;
        let guid = fixed(tlv::require(&elements, TAG_GUID)?, "CHUID GUID")?;
        let expiration = tlv::require(&elements, TAG_EXPIRATION)?;
        if expiration.len() != 8 || !expiration.iter().all(u8::is_ascii_digit) {
            return Err(TlvError::InvalidValue {
                what: "CHUID expiration date",
                reason: "expected eight ASCII digits YYYYMMDD".to_owned(),
            });
        }
        let cardholder_uuid = tlv::find(&elements, TAG_CARDHOLDER_UUID)
            .map(|uuid| fixed(uuid, "CHUID cardholder UUID"))
            .transpose()?;
        Ok(Chuid {
            fascn_raw,
            organization_identifier: tlv::find(&elements, TAG_ORGANIZATION_IDENTIFIER)
                .map(<[u8]>::to_vec),
            duns: tlv::find(&elements, TAG_DUNS).map(<[u8]>::to_vec),
            guid,
            expiration: expiration.iter().map(|b| char::from(*b)).collect(),
            cardholder_uuid,
            signature: tlv::find(&elements, TAG_SIGNATURE)
                .unwrap_or_default()
                .to_vec(),
        })
    }

    /// Encodes the CHUID content (without the `53` wrapper) in tag order,
    /// ending with an empty signature if there is none and the empty `FE`.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.signature.len());
        tlv::write(&mut out, TAG_FASCN, &self.fascn_raw);
        if let Some(identifier) = &self.organization_identifier {
            tlv::write(&mut out, TAG_ORGANIZATION_IDENTIFIER, identifier);
        }
        if let Some(duns) = &self.duns {
            tlv::write(&mut out, TAG_DUNS, duns);
        }
        tlv::write(&mut out, TAG_GUID, &self.guid);
        tlv::write(&mut out, TAG_EXPIRATION, self.expiration.as_bytes());
        if let Some(uuid) = &self.cardholder_uuid {
            tlv::write(&mut out, TAG_CARDHOLDER_UUID, uuid);
        }
        tlv::write(&mut out, TAG_SIGNATURE, &self.signature);
        tlv::write(&mut out, TAG_ERROR_DETECTION_CODE, &[]);
        out
    }

    /// Decodes the stored FASC-N.
    ///
    /// # Errors
    /// As [`Fascn::parse`], when the card's 25 bytes are not a valid FASC-N.
    pub fn fascn(&self) -> Result<Fascn, TlvError> {
        Fascn::parse(&self.fascn_raw)
    }

    /// The GUID in the 8-4-4-4-12 form of RFC 4122, lower-case
    /// (`00112233-4455-6677-8899-aabbccddeeff`).
    #[must_use]
    pub fn guid_hex(&self) -> String {
        hyphenated(&self.guid)
    }
}

/// Sixteen bytes in the 8-4-4-4-12 hexadecimal form.
fn hyphenated(bytes: &[u8; 16]) -> String {
    let mut text = String::with_capacity(36);
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn fixed<const N: usize>(value: &[u8], what: &'static str) -> Result<[u8; N], TlvError> {
    value.try_into().map_err(|_| TlvError::InvalidValue {
        what,
        reason: format!("{} bytes, expected {N}", value.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piv::objects::unwrap_data_object;
    use proptest::prelude::*;

    /// GET DATA answer for the CHUID of a YubiKey as `ykman` sets it up,
    /// captured from a real card: FASC-N 9999-9999-999999-0-1-0000000000300001,
    /// a random GUID, expiry 2030-01-01, an empty signature and `FE 00`.
    const YUBIKEY_CHUID: &str = "533B3019D4E739DA739CED39CE739D836858210842108421C84210C3EB\
        34107F0563C809A4CF5E04D618AF5D67CBE8350832303330303130313E00FE00";

    #[test]
    fn parses_a_yubikey_chuid() {
        let response = hex::decode(YUBIKEY_CHUID).unwrap();
        let content = unwrap_data_object(&response).unwrap();
        let chuid = Chuid::parse(content).unwrap();
        assert_eq!(chuid.guid_hex(), "7f0563c8-09a4-cf5e-04d6-18af5d67cbe8");
        assert_eq!(chuid.expiration, "20300101");
        assert!(chuid.signature.is_empty());
        assert_eq!(chuid.cardholder_uuid, None);
        assert_eq!(
            chuid.fascn().unwrap().to_string(),
            "99999999999999010000000000300001"
        );
        assert_eq!(chuid.encode(), content);
    }

    #[test]
    fn encodes_every_element_in_tag_order() {
        let chuid = Chuid {
            fascn_raw: [0xAB; 25],
            organization_identifier: Some(vec![1, 2, 3, 4]),
            duns: Some(vec![9; 9]),
            guid: [0x11; 16],
            expiration: "20991231".to_owned(),
            cardholder_uuid: Some([0x22; 16]),
            signature: vec![0x30, 0x00],
        };
        let mut expected = vec![0x30, 25];
        expected.extend([0xAB; 25]);
        expected.extend([0x32, 4, 1, 2, 3, 4]);
        expected.extend([0x33, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
        expected.extend([0x34, 16]);
        expected.extend([0x11; 16]);
        expected.extend([0x35, 8]);
        expected.extend(b"20991231");
        expected.extend([0x36, 16]);
        expected.extend([0x22; 16]);
        expected.extend([0x3E, 2, 0x30, 0x00, 0xFE, 0x00]);
        assert_eq!(chuid.encode(), expected);
        let parsed = Chuid::parse(&expected).unwrap();
        assert_eq!(parsed, chuid);
        // 0xAB bytes are not a FASC-N, but the CHUID still parses.
        assert!(parsed.fascn().is_err());
    }

    fn minimal() -> Vec<u8> {
        let mut bytes = tlv::encode(0x30, &[0xD4; 25]);
        bytes.extend(tlv::encode(0x34, &[0x33; 16]));
        bytes.extend(tlv::encode(0x35, b"20300101"));
        bytes
    }

    #[test]
    fn missing_signature_and_edc_are_accepted() {
        let chuid = Chuid::parse(&minimal()).unwrap();
        assert!(chuid.signature.is_empty());
        assert_eq!(chuid.guid, [0x33; 16]);
    }

    #[test]
    fn rejects_missing_or_malformed_elements() {
        let without = |tag: u8| -> Vec<u8> {
            tlv::parse_all(&minimal())
                .unwrap()
                .iter()
                .filter(|e| e.tag != u32::from(tag))
                .flat_map(|e| tlv::encode(e.tag, e.value))
                .collect()
        };
        for tag in [0x30, 0x34, 0x35] {
            assert!(matches!(
                Chuid::parse(&without(tag)),
                Err(TlvError::Missing { .. })
            ));
        }
        let mut short_guid = without(0x34);
        short_guid.extend(tlv::encode(0x34, &[0x33; 15]));
        assert!(
            Chuid::parse(&short_guid)
                .unwrap_err()
                .to_string()
                .contains("15 bytes")
        );
        let mut long_fascn = without(0x30);
        long_fascn.extend(tlv::encode(0x30, &[0xD4; 26]));
        assert!(Chuid::parse(&long_fascn).is_err());
        let mut bad_date = without(0x35);
        bad_date.extend(tlv::encode(0x35, b"2030-1-1"));
        assert!(Chuid::parse(&bad_date).is_err());
        let mut bad_uuid = minimal();
        bad_uuid.extend(tlv::encode(0x36, &[1; 4]));
        assert!(Chuid::parse(&bad_uuid).is_err());
        let full = minimal();
        assert!(matches!(
            Chuid::parse(&full[..full.len() - 2]),
            Err(TlvError::Truncated { .. })
        ));
    }

    fn chuid() -> impl Strategy<Value = Chuid> {
        (
            any::<[u8; 25]>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
            any::<[u8; 16]>(),
            "[0-9]{8}",
            proptest::option::of(any::<[u8; 16]>()),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(
                    fascn_raw,
                    organization_identifier,
                    duns,
                    guid,
                    expiration,
                    cardholder_uuid,
                    signature,
                )| Chuid {
                    fascn_raw,
                    organization_identifier,
                    duns,
                    guid,
                    expiration,
                    cardholder_uuid,
                    signature,
                },
            )
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(chuid in chuid()) {
            prop_assert_eq!(Chuid::parse(&chuid.encode()).unwrap(), chuid);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Chuid::parse(&bytes);
        }

        #[test]
        fn guid_hex_has_the_uuid_shape(guid in any::<[u8; 16]>()) {
            let text = Chuid { guid, ..Chuid::default() }.guid_hex();
            let groups: Vec<usize> = text.split('-').map(str::len).collect();
            prop_assert_eq!(groups, vec![8, 4, 4, 4, 12]);
            prop_assert_eq!(hex::decode(text.replace('-', "")).unwrap(), guid.to_vec());
        }
    }
}
