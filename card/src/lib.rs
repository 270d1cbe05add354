//! Card transports, the APDU exchange and trace, and the typed PIV session API.
//!
//! PC/SC is the transport of real readers; the virtual card (`pivtap-vcard`) plugs in
//! through [`CardBackend`]. The JWS algorithm vocabulary is `pivtap-protocol`'s
//! ([`JwsAlgorithm`], re-exported), this crate adds the card's side ([`CardSignature`]).
//! Certificate requests signed by the card ([`csr`]) are behind the `csr` feature, which
//! enrollment needs and signing in does not.
//!
//! Everything here is synchronous: PC/SC is blocking, and so is the card.
//! Async callers run it on a card thread or with `spawn_blocking`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "csr")]
pub mod csr;
pub mod error;
pub mod exchange;
pub mod factory;
pub mod management_key;
pub mod pcsc;
pub mod reader_choice;
pub mod reader_monitor;
pub mod session;
pub mod signature;
pub mod spki;
pub mod trace;
pub mod transport;

pub use error::PivError;
pub use management_key::ManagementKey;
pub use session::{PinStatus, PivSession};
pub use signature::{CardSignature, JwsAlgorithm};
pub use transport::{CardBackend, CardTransaction, LinkCapabilities, TransportError};
