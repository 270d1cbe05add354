//! pivtap's organisation side: the wire protocol, the authentication server, and the HTTP client devices use.
//!
//! The server never touches a card; devices send it card-signed assertions.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod assertion;
pub mod audit;
pub mod backup;
pub mod certificate;
pub mod check;
pub mod client;
pub mod config;
pub mod connections;
pub mod device;
pub mod duration;
pub mod escape;
pub mod init;
pub mod issuance;
pub mod jose;
pub mod mapping;
pub mod nonce;
pub mod pin_policy;
pub mod server;
pub mod store;
pub mod token;
pub mod wire;
