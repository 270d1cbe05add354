//! Fuzz target: BER-TLV reading (one level, and nested where values parse), and writing back.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use pivtap_apdu::tlv;

fn check(input: &[u8], depth: usize) {
    let Ok(elements) = tlv::parse_all(input) else {
        return;
    };
    // What was read writes back (in DER length form) and reads the same.
    let mut written = Vec::new();
    for element in &elements {
        tlv::write(&mut written, element.tag, element.value);
        let _ = tlv::tag_hex(element.tag);
    }
    assert!(written.len() <= input.len(), "DER lengths are never longer");
    let again = tlv::parse_all(&written).expect("written TLV reads back");
    assert_eq!(again, elements);
    if let Some(first) = elements.first() {
        let _ = tlv::expect(input, first.tag);
        assert_eq!(tlv::find(&elements, first.tag), Some(first.value));
        assert!(tlv::require(&elements, first.tag).is_ok());
    }
    if depth < 4 {
        for element in &elements {
            check(element.value, depth + 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((element, rest)) = tlv::read(data) {
        assert!(element.value.len() + rest.len() < data.len());
    }
    check(data, 0);
});
