//! BER-TLV reading and writing, one level at a time, with tags checked by `iso7816-tlv`.
//!
//! PIV data objects are BER-TLV, but not always *recursively* valid BER: the
//! certificate container puts gzip bytes under tag `70`, whose constructed bit
//! is set. A recursive parser (such as `iso7816_tlv::ber::Tlv::parse`) rejects
//! such objects and recurses without a depth limit on hostile input. So this
//! module reads one level at a time, returning each value as a byte slice that
//! the caller parses further only where the spec says it is TLV. Tags are
//! validated with [`iso7816_tlv::ber::Tag`].

use iso7816_tlv::ber::Tag;

use crate::error::TlvError;

/// One BER-TLV element: its tag (as a number, such as `0x5FC102`) and its value bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag, its bytes read as a big-endian number (`7F49` is `0x7F49`).
    pub tag: u32,
    /// The value field.
    pub value: &'a [u8],
}

/// Reads one element from the front of `input`, returning it and the rest.
///
/// # Errors
/// [`TlvError::Truncated`], [`TlvError::InvalidTag`] or [`TlvError::InvalidLength`].
pub fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlvError> {
    let (tag, rest) = read_tag(input)?;
    let (length, rest) = read_length(rest)?;
    if rest.len() < length {
        return Err(TlvError::Truncated {
            what: "value",
            needed: length - rest.len(),
            available: rest.len(),
        });
    }
    let (value, rest) = rest.split_at(length);
    Ok((Tlv { tag, value }, rest))
}

/// Reads every element of `input`; trailing bytes that are not a whole element are an error.
///
/// # Errors
/// As [`read`].
pub fn parse_all(mut input: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut elements = Vec::new();
    while !input.is_empty() {
        let (element, rest) = read(input)?;
        elements.push(element);
        input = rest;
    }
    Ok(elements)
}

/// The value of the first element with `tag`, if any.
#[must_use]
pub fn find<'a>(elements: &[Tlv<'a>], tag: u32) -> Option<&'a [u8]> {
    elements.iter().find(|e| e.tag == tag).map(|e| e.value)
}

/// The value of the first element with `tag`.
///
/// # Errors
/// [`TlvError::Missing`] when there is none.
pub fn require<'a>(elements: &[Tlv<'a>], tag: u32) -> Result<&'a [u8], TlvError> {
    find(elements, tag).ok_or_else(|| TlvError::Missing { tag: tag_hex(tag) })
}

/// Parses `input` as exactly one element with the given tag and returns its value.
///
/// # Errors
/// [`TlvError::Unexpected`] for another tag, [`TlvError::InvalidValue`] for
/// trailing bytes, and the errors of [`read`].
pub fn expect(input: &[u8], tag: u32) -> Result<&[u8], TlvError> {
    let (element, rest) = read(input)?;
    if element.tag != tag {
        return Err(TlvError::Unexpected {
            expected: tag_hex(tag),
            found: tag_hex(element.tag),
        });
    }
    if !rest.is_empty() {
        return Err(TlvError::InvalidValue {
            what: "TLV element",
            reason: format!("{} trailing bytes after {}", rest.len(), tag_hex(tag)),
        });
    }
    Ok(element.value)
}

/// Appends one element (tag, definite length, value) to `out`.
///
/// # Panics
/// If `tag` is not a valid ISO 7816 BER tag of one to three bytes; tags are
/// compile-time constants of this crate, so this is a programming error.
pub fn write(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    let checked = Tag::try_from(u64::from(tag)).expect("pivtap uses only valid BER tags");
    out.extend_from_slice(checked.to_bytes());
    write_length(out, value.len());
    out.extend_from_slice(value);
}

/// One element as a new vector.
#[must_use]
pub fn encode(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    write(&mut out, tag, value);
    out
}

/// A tag as upper-case hex, as the specs write it (`5FC102`).
#[must_use]
pub fn tag_hex(tag: u32) -> String {
    match tag {
        0..=0xFF => format!("{tag:02X}"),
        0x100..=0xFFFF => format!("{tag:04X}"),
        _ => format!("{tag:06X}"),
    }
}

/// Writes a DER definite length: short form below 128, else `81 xx` or `82 xx xx`
/// (values above 65535 take `83`).
pub fn write_length(out: &mut Vec<u8>, length: usize) {
    match length {
        0..=0x7F => out.push(length as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, length as u8]),
        0x100..=0xFFFF => {
            out.push(0x82);
            out.extend_from_slice(&(length as u16).to_be_bytes());
        }
        _ => {
            out.push(0x83);
            out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
        }
    }
}

fn read_tag(input: &[u8]) -> Result<(u32, &[u8]), TlvError> {
    let Some(&first) = input.first() else {
        return Err(TlvError::Truncated {
            what: "tag",
            needed: 1,
            available: 0,
        });
    };
    let mut length = 1;
    if first & 0x1F == 0x1F {
        // Subsequent bytes follow while bit 8 is set; ISO 7816 allows three bytes in all.
        loop {
            let Some(&next) = input.get(length) else {
                return Err(TlvError::Truncated {
                    what: "tag",
                    needed: 1,
                    available: 0,
                });
            };
            length += 1;
            if next & 0x80 == 0 {
                break;
            }
            if length == 3 {
                return Err(TlvError::InvalidTag);
            }
        }
    }
    let number = input[..length]
        .iter()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    Tag::try_from(u64::from(number)).map_err(|_| TlvError::InvalidTag)?;
    Ok((number, &input[length..]))
}

fn read_length(input: &[u8]) -> Result<(usize, &[u8]), TlvError> {
    let Some((&first, rest)) = input.split_first() else {
        return Err(TlvError::Truncated {
            what: "length",
            needed: 1,
            available: 0,
        });
    };
    if first < 0x80 {
        return Ok((usize::from(first), rest));
    }
    let count = usize::from(first & 0x7F);
    if count == 0 || count > 3 {
        return Err(TlvError::InvalidLength { first_byte: first });
    }
    if rest.len() < count {
        return Err(TlvError::Truncated {
            what: "length",
            needed: count - rest.len(),
            available: rest.len(),
        });
    }
    let length = rest[..count]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Ok((length, &rest[count..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_multi_byte_tags_and_long_lengths() {
        let mut bytes = encode(0x5FC102, &[1, 2, 3]);
        bytes.extend(encode(0x7F49, &[0xAA; 300]));
        bytes.extend(encode(0x7E, &[]));
        let all = parse_all(&bytes).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].tag, 0x5FC102);
        assert_eq!(all[0].value, [1, 2, 3]);
        assert_eq!(all[1].tag, 0x7F49);
        assert_eq!(all[1].value.len(), 300);
        assert_eq!(&bytes[7..11], [0x7F, 0x49, 0x82, 0x01]);
        assert_eq!(find(&all, 0x7E), Some(&[][..]));
        assert!(require(&all, 0x53).is_err());
    }

    #[test]
    fn rejects_truncation_and_bad_lengths() {
        assert!(matches!(
            read(&[0x53, 0x05, 1, 2]),
            Err(TlvError::Truncated { .. })
        ));
        assert!(matches!(
            read(&[0x53, 0x80]),
            Err(TlvError::InvalidLength { .. })
        ));
        assert!(matches!(
            read(&[0x53, 0x84, 0, 0, 0, 1]),
            Err(TlvError::InvalidLength { .. })
        ));
        assert!(matches!(read(&[0x5F]), Err(TlvError::Truncated { .. })));
        assert!(matches!(
            read(&[0x5F, 0x81, 0x81, 0x01, 0x00]),
            Err(TlvError::InvalidTag)
        ));
        assert!(matches!(
            parse_all(&[0x53, 0x00, 0x53]),
            Err(TlvError::Truncated { .. })
        ));
    }

    #[test]
    fn expect_checks_tag_and_trailing_bytes() {
        assert_eq!(expect(&encode(0x53, &[9]), 0x53).unwrap(), [9]);
        assert!(matches!(
            expect(&encode(0x53, &[9]), 0x7E),
            Err(TlvError::Unexpected { .. })
        ));
        let mut two = encode(0x53, &[9]);
        two.push(0);
        assert!(matches!(
            expect(&two, 0x53),
            Err(TlvError::InvalidValue { .. })
        ));
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_all(&bytes);
        }

        #[test]
        fn encode_then_parse_round_trips(
            tag in prop_oneof![Just(0x53u32), Just(0x7Eu32), Just(0x7F49u32), Just(0x5FC102u32), Just(0x80u32)],
            value in proptest::collection::vec(any::<u8>(), 0..70_000),
        ) {
            let bytes = encode(tag, &value);
            let (element, rest) = read(&bytes).unwrap();
            prop_assert!(rest.is_empty());
            prop_assert_eq!(element.tag, tag);
            prop_assert_eq!(element.value, &value[..]);
        }
    }
}
