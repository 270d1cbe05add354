//! ISO 7816-4 APDUs, BER-TLV, and PIV (NIST SP 800-73-4) commands and data objects.
//!
//! Pure: no I/O, no clocks, no randomness. Everything that knows a byte of the
//! protocol lives here once: status words, instruction codes, key references,
//! algorithm identifiers, object tags, command layouts and object formats.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod command;
pub mod error;
pub mod piv;
pub mod response;
pub mod status;
pub mod tlv;

pub use command::{Case, CommandApdu, LengthMode};
pub use error::{ApduError, TlvError};
pub use response::ResponseApdu;
pub use status::StatusWord;
