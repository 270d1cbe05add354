//! pivtap's wire protocol and the facts both sides share: messages and error codes, compact JWS, the assertion draft, certificate facts and chains, the PIN policy, nonces and the audit vocabulary.
//!
//! Nothing here talks to a network or a card: the card crate (`pivtap-card`, for the JWS
//! algorithms), the device (`pivtap-client`, `pivtap-kiosk`) and the server
//! (`pivtap-server`) build on it, so each protocol fact is written once. Chain validation
//! ([`certificate::TrustStore`]) lives here rather than in the server because the device
//! needs it too: with secure messaging it checks a card's certificates before a PIN
//! is sent.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod assertion;
pub mod audit;
pub mod certificate;
pub mod duration;
pub mod escape;
pub mod jose;
pub mod nonce;
pub mod oidc;
pub mod pin_policy;
pub mod wire;
