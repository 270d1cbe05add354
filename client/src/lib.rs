//! The device's side of pivtap: the HTTPS client for the server's API, the device credential that signs its requests, the card-signed assertion, and (feature `enroll`) device and card enrollment and renewal.
//!
//! The kiosk and the `pivtap` command line build on it; it never links the server. The
//! server's all-in-one `embedded` mode (demo, tests) uses it to hand out clients.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod card_signer;
pub mod client;
pub mod device;
#[cfg(feature = "enroll")]
pub mod enrollment;

pub use client::{Client, ClientError, ServerTrust};
pub use device::DeviceCredential;
