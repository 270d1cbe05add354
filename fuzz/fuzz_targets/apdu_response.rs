//! Fuzz target: response APDU and status word decoding.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use pivtap_apdu::{ResponseApdu, StatusWord};

fuzz_target!(|data: &[u8]| {
    match ResponseApdu::from_bytes(data) {
        Ok(response) => {
            assert_eq!(
                response.to_bytes(),
                data,
                "a response re-encodes to its bytes"
            );
            let status = response.status();
            let [sw1, sw2] = status.to_bytes();
            assert_eq!(StatusWord::from_bytes(sw1, sw2), status);
            assert_eq!(StatusWord::from(u16::from(status)), status);
            let _ = (
                status.description(),
                status.to_string(),
                status.is_success(),
            );
            let _ = format!("{response:?}");
        }
        Err(error) => {
            assert!(data.len() < 2, "only responses under two bytes are refused");
            let _ = error.to_string();
        }
    }
});
