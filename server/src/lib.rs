//! pivtap's authentication server: the HTTPS API, the store, certificate issuance, session tokens, and the server's configuration and operations.
//!
//! The server never touches a card; devices send it card-signed assertions. The wire
//! types it speaks are `pivtap_protocol`'s; `pivtap_client` is the other end.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backup;
pub mod check;
pub mod config;
pub mod connections;
pub mod init;
pub mod issuance;
pub mod mapping;
pub mod oidc;
pub mod server;
pub mod store;
pub mod token;
pub mod verifier;
