//! The dynamic authentication template `7C` of GENERAL AUTHENTICATE (SP 800-73-4 Part 2 §3.2.4, Table 7).

use zeroize::Zeroizing;

use crate::error::TlvError;
use crate::tlv;

/// Tag of the dynamic authentication template.
pub const TAG_TEMPLATE: u32 = 0x7C;
/// `80`: witness.
pub const TAG_WITNESS: u32 = 0x80;
/// `81`: challenge (the data to sign, or the challenge to encrypt).
pub const TAG_CHALLENGE: u32 = 0x81;
/// `82`: response (the signature or the encrypted challenge).
pub const TAG_RESPONSE: u32 = 0x82;
/// `85`: exponentiation (the peer's public point for key agreement).
pub const TAG_EXPONENTIATION: u32 = 0x85;

/// One element of the template: absent, present but empty (a request: "send me
/// this"), or present with a value.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Field {
    /// Not in the template.
    #[default]
    Absent,
    /// Present with length zero: the host asks the card for this element.
    Requested,
    /// Present with a value (zeroized on drop: witnesses are key material).
    Value(Zeroizing<Vec<u8>>),
}

impl Field {
    /// A field holding a value.
    #[must_use]
    pub fn value(bytes: impl Into<Vec<u8>>) -> Self {
        Field::Value(Zeroizing::new(bytes.into()))
    }

    /// The value, when there is one.
    #[must_use]
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }

    fn write(&self, out: &mut Vec<u8>, tag: u32) {
        match self {
            Field::Absent => {}
            Field::Requested => tlv::write(out, tag, &[]),
            Field::Value(v) => tlv::write(out, tag, v),
        }
    }

    fn read(elements: &[tlv::Tlv<'_>], tag: u32) -> Field {
        match tlv::find(elements, tag) {
            None => Field::Absent,
            Some([]) => Field::Requested,
            Some(v) => Field::value(v.to_vec()),
        }
    }
}

/// Shows only which elements are present and their lengths: values may be key material.
impl std::fmt::Debug for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Absent => f.write_str("Absent"),
            Field::Requested => f.write_str("Requested"),
            Field::Value(v) => write!(f, "Value({} bytes)", v.len()),
        }
    }
}

/// The dynamic authentication template: witness, challenge, response and exponentiation.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AuthTemplate {
    /// `80` witness.
    pub witness: Field,
    /// `81` challenge.
    pub challenge: Field,
    /// `82` response.
    pub response: Field,
    /// `85` exponentiation.
    pub exponentiation: Field,
}

impl AuthTemplate {
    /// Encodes as `7C len { ... }`: requested (empty) elements first, then the
    /// elements with values, each group in tag order. This is the order of
    /// SP 800-73-4 Part 2 Appendix A (`7C { 82 00, 81 data }` for a signature)
    /// and of OpenSC. The returned buffer is zeroized on drop.
    #[must_use]
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let fields = [
            (&self.witness, TAG_WITNESS),
            (&self.challenge, TAG_CHALLENGE),
            (&self.response, TAG_RESPONSE),
            (&self.exponentiation, TAG_EXPONENTIATION),
        ];
        let mut inner = Zeroizing::new(Vec::new());
        for (field, tag) in fields.iter().filter(|(f, _)| **f == Field::Requested) {
            field.write(&mut inner, *tag);
        }
        for (field, tag) in fields.iter().filter(|(f, _)| matches!(f, Field::Value(_))) {
            field.write(&mut inner, *tag);
        }
        let mut out = Zeroizing::new(Vec::with_capacity(inner.len() + 4));
        tlv::write(&mut out, TAG_TEMPLATE, &inner);
        out
    }

    /// Parses a `7C` template. Unknown inner tags are an error, as are trailing bytes.
    ///
    /// # Errors
    /// [`TlvError`] for malformed input.
    pub fn parse(bytes: &[u8]) -> Result<Self, TlvError> {
        let inner = tlv::expect(bytes, TAG_TEMPLATE)?;
        let elements = tlv::parse_all(inner)?;
        if let Some(other) = elements.iter().find(|e| {
            !matches!(
                e.tag,
                TAG_WITNESS | TAG_CHALLENGE | TAG_RESPONSE | TAG_EXPONENTIATION
            )
        }) {
            return Err(TlvError::InvalidValue {
                what: "dynamic authentication template",
                reason: format!("unexpected element {}", tlv::tag_hex(other.tag)),
            });
        }
        Ok(AuthTemplate {
            witness: Field::read(&elements, TAG_WITNESS),
            challenge: Field::read(&elements, TAG_CHALLENGE),
            response: Field::read(&elements, TAG_RESPONSE),
            exponentiation: Field::read(&elements, TAG_EXPONENTIATION),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signature_request_layout() {
        let template = AuthTemplate {
            response: Field::Requested,
            challenge: Field::value(vec![0xAB; 32]),
            ..AuthTemplate::default()
        };
        let bytes = template.encode();
        assert_eq!(&bytes[..6], [0x7C, 36, 0x82, 0x00, 0x81, 32]);
        assert!(AuthTemplate::parse(&bytes).unwrap() == template);
    }

    #[test]
    fn rejects_foreign_elements() {
        let bytes = tlv::encode(0x7C, &tlv::encode(0x83, &[1]));
        assert!(AuthTemplate::parse(&bytes).is_err());
        assert!(AuthTemplate::parse(&[0x7C, 0x05, 0x82]).is_err());
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            Just(Field::Absent),
            Just(Field::Requested),
            proptest::collection::vec(any::<u8>(), 1..300).prop_map(Field::value),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(witness in field(), challenge in field(), response in field(), exponentiation in field()) {
            let template = AuthTemplate { witness, challenge, response, exponentiation };
            prop_assert!(AuthTemplate::parse(&template.encode()).unwrap() == template);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = AuthTemplate::parse(&bytes);
        }
    }
}
