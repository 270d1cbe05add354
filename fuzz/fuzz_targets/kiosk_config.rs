//! Fuzz target: `kiosk.toml` parsing and checking, as `KioskConfig::load` does it after reading the file, and the core settings derived from it.
#![no_main]
#![forbid(unsafe_code)]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pivtap_kiosk::config::KioskConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<KioskConfig>(text) else {
        return;
    };
    if config.validate(Path::new("kiosk.toml")).is_ok() {
        let _ = config.core();
    }
});
