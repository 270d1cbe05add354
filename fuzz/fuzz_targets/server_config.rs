//! Fuzz target: `server.toml` parsing and checking (nothing is read from disk), and writing a configuration that was accepted back out.
#![no_main]
#![forbid(unsafe_code)]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pivtap_server::config::ServerConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/pivtap/server.toml");
    match ServerConfig::parse(text, path) {
        Ok(config) => {
            let written = config.to_toml().expect("an accepted configuration writes");
            // Paths are absolute now, so reading it again from anywhere gives the same.
            let again = ServerConfig::parse(&written, Path::new("/elsewhere/server.toml"))
                .expect("a written configuration reads back");
            assert_eq!(again, config);
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
