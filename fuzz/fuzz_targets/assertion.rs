//! Fuzz target: the server's assertion verification without HTTP (compact JWS, header and payload JSON, x5c, certificate parsing, signature, chain and CRL checks), the session-token verifier, JWKS parsing and enrollment links.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pivtap_protocol::jose::{CompactJws, base64url_decode};
use pivtap_protocol::wire::{enrollment_url, parse_enrollment_url};
use pivtap_server::config::parse_ca_certificates;
use pivtap_server::token::{TokenKeys, TokenVerifier};
use pivtap_server::verifier::{AssertionVerifier, VerifierConfig};
use time::OffsetDateTime;

/// 2026-12-01T00:00:00Z: inside the fixture certificates' validity; the seeds' `iat`.
const NOW: i64 = 1_796_083_200;
/// The origin the seeds were made for.
const AUDIENCE: &str = "https://auth.example.test";

static VERIFIER: LazyLock<AssertionVerifier> = LazyLock::new(|| {
    let anchors = parse_ca_certificates(include_bytes!("../../fixtures/ca/test-ca.pem"))
        .expect("the test CA reads");
    AssertionVerifier::new(VerifierConfig::new(AUDIENCE, anchors)).expect("a verifier")
});
static TOKENS: LazyLock<TokenKeys> = LazyLock::new(TokenKeys::generate);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("a valid time");
    match VERIFIER.verify(&text, now) {
        Ok(verified) => {
            // Only a real signature by a fixture card key gets here.
            assert_eq!(verified.payload.aud, AUDIENCE);
            assert!(["RS256", "RS512", "ES256", "ES384"].contains(&verified.alg.name()));
        }
        Err(rejection) => {
            let _ = rejection.to_string();
        }
    }
    if let Ok(jws) = CompactJws::parse(&text) {
        let _ = format!("{jws:?}");
    }
    let _ = base64url_decode(&text);
    let _ = TOKENS.verify(&text, now);
    if text.starts_with('{')
        && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        && let Ok(verifier) = TokenVerifier::from_jwks(&json)
    {
        let _ = verifier.verify(&text, now);
    }
    if let Ok((Some(origin), code)) = parse_enrollment_url(&text) {
        let link = enrollment_url(&origin, &code);
        assert_eq!(parse_enrollment_url(&link).ok(), Some((Some(origin), code)));
    }
});
