//! The FASC-N (Federal Agency Smart Credential Number) of the CHUID: 25 bytes of 5-bit BCD characters with parity and LRC (SP 800-73-4 Part 1 Table 9, encoding of TIG SCEPACS v2.3).
//!
//! The 200 bits are 40 characters of 5 bits, read from the most significant
//! bit of the first byte. Each character is four data bits, least significant
//! first, then an odd parity bit. Digits are 0-9; the start sentinel SS is 11,
//! the field separator FS is 13 and the end sentinel ES is 15. The last
//! character is the LRC: the XOR of the data bits of all the others, with its
//! own odd parity bit.
//!
//! Layout: `SS agency(4) FS system(4) FS credential(6) FS series(1) FS
//! issue(1) FS person(10) org-category(1) org-id(4) association(1) ES LRC`.

use std::fmt;
use std::str::FromStr;

use crate::error::TlvError;

/// Size of an encoded FASC-N.
pub const FASCN_LEN: usize = 25;
/// Number of digits in a FASC-N (all fields, without sentinels, separators and LRC).
pub const DIGIT_COUNT: usize = 32;

const START_SENTINEL: u8 = 11;
const FIELD_SEPARATOR: u8 = 13;
const END_SENTINEL: u8 = 15;
const CHARACTER_COUNT: usize = 40;

/// Digits in each field, in order, and whether a field separator follows it.
const FIELDS: [(usize, bool); 9] = [
    (4, true),   // agency code
    (4, true),   // system code
    (6, true),   // credential number
    (1, true),   // credential series
    (1, true),   // individual credential issue
    (10, false), // person identifier
    (1, false),  // organizational category
    (4, false),  // organizational identifier
    (1, false),  // person/organization association category
];

/// A decoded FASC-N: nine fields of decimal digits.
///
/// Built by [`Fascn::parse`] from the 25-byte form or by [`str::parse`] from
/// the 32-digit form, so every value is well-formed and [`Fascn::encode`]
/// cannot fail.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fascn {
    /// The 32 digits of all fields, in order (ASCII `0`-`9`).
    digits: String,
}

impl Fascn {
    /// Decodes the 25-byte FASC-N, checking every character's parity, the
    /// sentinels and separators, that the fields hold only digits, and the LRC.
    ///
    /// # Errors
    /// [`TlvError::InvalidValue`] saying which character is wrong, or a length
    /// other than 25 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, TlvError> {
        if bytes.len() != FASCN_LEN {
            return Err(invalid(format!(
                "{} bytes, a FASC-N has {FASCN_LEN}",
                bytes.len()
            )));
        }
        let bits: Vec<u8> = bytes
            .iter()
            .flat_map(|byte| (0..8).rev().map(move |shift| (byte >> shift) & 1))
            .collect();
        let mut digits = String::with_capacity(DIGIT_COUNT);
        let mut lrc = 0;
        let layout = layout();
        for (position, character) in bits.chunks_exact(5).enumerate() {
            if character.iter().sum::<u8>() % 2 == 0 {
                return Err(invalid(format!(
                    "character {position} fails its parity check"
                )));
            }
            let value = character[..4]
                .iter()
                .rev()
                .fold(0u8, |acc, bit| (acc << 1) | bit);
            match layout.get(position) {
                Some(Some(sentinel)) if value != *sentinel => {
                    return Err(invalid(format!(
                        "character {position} is {value}, expected {} ({sentinel})",
                        sentinel_name(*sentinel)
                    )));
                }
                Some(None) if value > 9 => {
                    return Err(invalid(format!(
                        "character {position} is {value}, expected a digit"
                    )));
                }
                Some(None) => digits.push(char::from(b'0' + value)),
                Some(Some(_)) => {}
                None if value != lrc => {
                    return Err(invalid(format!(
                        "LRC is {value}, the characters give {lrc}"
                    )));
                }
                None => {}
            }
            lrc ^= value;
        }
        Ok(Fascn { digits })
    }

    /// Encodes as the 25-byte form with parity bits and LRC.
    #[must_use]
    pub fn encode(&self) -> [u8; FASCN_LEN] {
        let mut digits = self.digits.bytes().map(|d| d - b'0');
        let mut characters: Vec<u8> = layout()
            .into_iter()
            .map(|slot| slot.or_else(|| digits.next()).unwrap_or_default())
            .collect();
        characters.push(characters.iter().fold(0, |lrc, c| lrc ^ c));

        let mut out = [0u8; FASCN_LEN];
        let bits = characters.iter().flat_map(|&value| {
            let data = [
                value & 1,
                (value >> 1) & 1,
                (value >> 2) & 1,
                (value >> 3) & 1,
            ];
            let parity = 1 - data.iter().sum::<u8>() % 2;
            data.into_iter().chain([parity])
        });
        for (index, bit) in bits.enumerate() {
            if let Some(byte) = out.get_mut(index / 8) {
                *byte |= bit << (7 - index % 8);
            }
        }
        out
    }

    /// Agency code (4 digits): the agency that issued the credential.
    #[must_use]
    pub fn agency_code(&self) -> &str {
        self.field(0)
    }

    /// System code (4 digits): the issuing system within the agency.
    #[must_use]
    pub fn system_code(&self) -> &str {
        self.field(1)
    }

    /// Credential number (6 digits), unique within the system.
    #[must_use]
    pub fn credential_number(&self) -> &str {
        self.field(2)
    }

    /// Credential series (1 digit).
    #[must_use]
    pub fn credential_series(&self) -> &str {
        self.field(3)
    }

    /// Individual credential issue (1 digit), incremented when a card is replaced.
    #[must_use]
    pub fn individual_credential_issue(&self) -> &str {
        self.field(4)
    }

    /// Person identifier (10 digits).
    #[must_use]
    pub fn person_identifier(&self) -> &str {
        self.field(5)
    }

    /// Organizational category (1 digit): 1 federal, 2 state, 3 commercial, 4 foreign.
    #[must_use]
    pub fn organizational_category(&self) -> &str {
        self.field(6)
    }

    /// Organizational identifier (4 digits).
    #[must_use]
    pub fn organizational_identifier(&self) -> &str {
        self.field(7)
    }

    /// Person/organization association category (1 digit): 1 employee,
    /// 2 civil, 3 executive staff, 4 uniformed service, 5 contractor, ...
    #[must_use]
    pub fn association_category(&self) -> &str {
        self.field(8)
    }

    fn field(&self, index: usize) -> &str {
        let start: usize = FIELDS.iter().take(index).map(|(len, _)| len).sum();
        let len = FIELDS.get(index).map_or(0, |(len, _)| *len);
        self.digits.get(start..start + len).unwrap_or_default()
    }
}

/// Parses the 32-digit form that [`Fascn`]'s `Display` writes.
impl FromStr for Fascn {
    type Err = TlvError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != DIGIT_COUNT || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TlvError::InvalidValue {
                what: "FASC-N digits",
                reason: format!("expected {DIGIT_COUNT} decimal digits"),
            });
        }
        Ok(Fascn {
            digits: text.to_owned(),
        })
    }
}

/// The 32 digits of all fields, without sentinels, separators or LRC, as
/// FASC-Ns are conventionally written (`9999 9999 999999 0 1 0000000000 3 0000 1`
/// without the spaces).
impl fmt::Display for Fascn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.digits)
    }
}

/// The 39 characters before the LRC: `Some(sentinel)` where a sentinel or
/// separator belongs, `None` where a digit does.
fn layout() -> Vec<Option<u8>> {
    let mut slots = Vec::with_capacity(CHARACTER_COUNT - 1);
    slots.push(Some(START_SENTINEL));
    for (len, separated) in FIELDS {
        slots.extend(std::iter::repeat_n(None, len));
        if separated {
            slots.push(Some(FIELD_SEPARATOR));
        }
    }
    slots.push(Some(END_SENTINEL));
    slots
}

fn sentinel_name(value: u8) -> &'static str {
    match value {
        START_SENTINEL => "start sentinel",
        FIELD_SEPARATOR => "field separator",
        _ => "end sentinel",
    }
}

fn invalid(reason: String) -> TlvError {
    TlvError::InvalidValue {
        what: "FASC-N",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The worked example of TIG SCEPACS v2.3, as 40 five-bit characters (data
    /// bits least significant first, then parity): agency 0032, system 0001,
    /// credential 092446, series 0, issue 1, person 1112223333, category 1,
    /// organization 1223, association 2.
    const TIG_EXAMPLE_BITS: &str = "11010 00001 00001 11001 01000 10110 00001 00001 \
        00001 10000 10110 00001 10011 01000 00100 00100 \
        01101 10110 00001 10110 10000 10110 10000 10000 \
        10000 01000 01000 01000 11001 11001 11001 11001 \
        10000 10000 01000 01000 11001 01000 11111 11100";

    /// The FASC-N of the CHUID a YubiKey writes by default (`ykman`,
    /// `yubico-piv-tool`): a non-federal issuer, 9999-9999-999999-0-1-0000000000300001.
    const YUBIKEY_DEFAULT: [u8; 25] = [
        0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58, 0x21,
        0x08, 0x42, 0x10, 0x84, 0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
    ];

    fn bytes_from_bits(bits: &str) -> Vec<u8> {
        let bits: Vec<u8> = bits
            .bytes()
            .filter(|b| *b != b' ')
            .map(|b| b - b'0')
            .collect();
        bits.chunks(8)
            .map(|byte| byte.iter().fold(0, |acc, bit| (acc << 1) | bit))
            .collect()
    }

    #[test]
    fn decodes_the_tig_example() {
        let bytes = bytes_from_bits(TIG_EXAMPLE_BITS);
        assert_eq!(bytes.len(), 25);
        assert_eq!(&bytes[..4], [0xD0, 0x43, 0x94, 0x58]);
        let fascn = Fascn::parse(&bytes).unwrap();
        assert_eq!(fascn.agency_code(), "0032");
        assert_eq!(fascn.system_code(), "0001");
        assert_eq!(fascn.credential_number(), "092446");
        assert_eq!(fascn.credential_series(), "0");
        assert_eq!(fascn.individual_credential_issue(), "1");
        assert_eq!(fascn.person_identifier(), "1112223333");
        assert_eq!(fascn.organizational_category(), "1");
        assert_eq!(fascn.organizational_identifier(), "1223");
        assert_eq!(fascn.association_category(), "2");
        assert_eq!(fascn.to_string(), "00320001092446011112223333112232");
        assert_eq!(fascn.encode().to_vec(), bytes);
    }

    #[test]
    fn decodes_the_yubikey_default() {
        let fascn = Fascn::parse(&YUBIKEY_DEFAULT).unwrap();
        assert_eq!(fascn.to_string(), "99999999999999010000000000300001");
        assert_eq!(fascn.organizational_category(), "3");
        assert_eq!(fascn.association_category(), "1");
        assert_eq!(fascn.encode(), YUBIKEY_DEFAULT);
        assert_eq!(
            "99999999999999010000000000300001".parse::<Fascn>().unwrap(),
            fascn
        );
    }

    fn error_text(bytes: &[u8]) -> String {
        Fascn::parse(bytes).unwrap_err().to_string()
    }

    #[test]
    fn reports_parity_errors_by_character() {
        let mut bytes = YUBIKEY_DEFAULT;
        bytes[0] ^= 0x80; // first bit of the start sentinel
        assert!(error_text(&bytes).contains("character 0 fails its parity"));
        let mut bytes = YUBIKEY_DEFAULT;
        bytes[24] ^= 0x01; // parity bit of the LRC
        assert!(error_text(&bytes).contains("character 39 fails its parity"));
    }

    #[test]
    fn reports_lrc_errors() {
        let mut characters = bytes_from_bits(TIG_EXAMPLE_BITS);
        // Character 1 is the digit 0 (00001); make it 3 (11001): the parity
        // still holds, so only the LRC (7) catches the change.
        characters[0] |= 0b0000_0110;
        assert!(error_text(&characters).contains("LRC is 7, the characters give 4"));
    }

    #[test]
    fn reports_misplaced_separators_and_non_digits() {
        let mut bits: Vec<&str> = TIG_EXAMPLE_BITS.split_whitespace().collect();
        bits[5] = "00001"; // a digit where the first field separator belongs
        assert!(error_text(&bytes_from_bits(&bits.join(""))).contains("character 5 is 0"));
        let mut bits: Vec<&str> = TIG_EXAMPLE_BITS.split_whitespace().collect();
        bits[2] = "10110"; // a separator inside the agency code
        assert!(error_text(&bytes_from_bits(&bits.join(""))).contains("expected a digit"));
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert!(error_text(&YUBIKEY_DEFAULT[..24]).contains("24 bytes"));
        assert!(Fascn::parse(&[]).is_err());
        assert!(Fascn::parse(&[0xD4; 26]).is_err());
        assert!("1234".parse::<Fascn>().is_err());
        assert!("9999999999999901000000000030000a".parse::<Fascn>().is_err());
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(digits in "[0-9]{32}") {
            let fascn: Fascn = digits.parse().unwrap();
            let decoded = Fascn::parse(&fascn.encode()).unwrap();
            prop_assert_eq!(decoded.to_string(), digits);
            prop_assert_eq!(decoded, fascn);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..30)) {
            let _ = Fascn::parse(&bytes);
        }

        #[test]
        fn single_bit_flips_are_detected(position in 0usize..200) {
            let mut bytes = YUBIKEY_DEFAULT;
            bytes[position / 8] ^= 0x80 >> (position % 8);
            prop_assert!(Fascn::parse(&bytes).is_err());
        }
    }
}
