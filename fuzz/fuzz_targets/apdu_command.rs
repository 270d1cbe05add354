//! Fuzz target: command APDU decoding, re-encoding in both length modes, and chaining.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use pivtap_apdu::{CommandApdu, LengthMode};

fuzz_target!(|data: &[u8]| {
    let Ok(command) = CommandApdu::from_bytes(data) else {
        return;
    };
    // Whatever decodes encodes again, in its natural mode, to the same command.
    let natural = command.natural_mode();
    let encoded = command
        .to_bytes(natural)
        .expect("a decoded command encodes in its natural mode");
    let again = CommandApdu::from_bytes(&encoded).expect("an encoded command decodes");
    assert_eq!(again, command, "natural-mode round trip");
    let extended = command
        .to_bytes(LengthMode::Extended)
        .expect("a decoded command encodes as extended");
    assert_eq!(
        CommandApdu::from_bytes(&extended).expect("an extended command decodes"),
        command,
        "extended round trip"
    );
    // Short mode: data over 255 bytes is refused, Ne is clamped to 256.
    if let Ok(short) = command.to_bytes(LengthMode::Short) {
        let decoded = CommandApdu::from_bytes(&short).expect("a short command decodes");
        assert_eq!(decoded.data(), command.data());
        assert_eq!(decoded.ne(), command.ne().min(256));
    }
    // A chain carries the same data, every part fits a short APDU, only the last has Ne.
    let parts = command.chain(255);
    let joined: Vec<u8> = parts.iter().flat_map(|part| part.data().to_vec()).collect();
    assert_eq!(joined, command.data());
    if let Some((last, first)) = parts.split_last() {
        assert_eq!(last.ne(), command.ne());
        assert_eq!(last.cla, command.cla);
        for part in first {
            assert!(part.is_chained() && part.ne() == 0 && part.data().len() == 255);
            assert!(part.to_bytes(LengthMode::Short).is_ok());
        }
    }
    let _ = format!("{command:?}");
});
