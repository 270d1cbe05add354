//! The device's side of pivtap: the HTTPS client for the server's API, the device credential that signs its requests, and the card-signed assertion.
//!
//! The kiosk and the `pivtap` command line build on it; it never links the server.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod card_signer;
pub mod client;
pub mod device;
#[cfg(feature = "enroll")]
pub mod enrollment;

pub use client::{Client, ClientError, ServerTrust};
pub use device::DeviceCredential;
