//! PIV (NIST SP 800-73-4): identifiers, command constructors and data objects.

pub mod algorithm;
pub mod commands;
pub mod ins;
pub mod key_reference;
pub mod object;
pub mod objects;
pub mod reference_data;

pub use algorithm::Algorithm;
pub use ins::Ins;
pub use key_reference::KeyReference;
pub use object::ObjectTag;
pub use reference_data::{Pin, Puk, ReferenceDataError};

/// The full PIV application identifier (SP 800-73-4 Part 1 §2.2): NIST RID
/// `A0 00 00 03 08`, PIX `00 00 10 00 01 00` (version 01.00).
pub const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];

/// The AID without its version (`A0 00 00 03 08 00 00 10 00`), which SELECT
/// may use as a right-truncated name (SP 800-73-4 Part 2 §3.1.1).
pub const PIV_AID_TRUNCATED: [u8; 9] = [0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00];

/// An identifier byte that is not one of the values this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:#04x}")]
pub struct UnknownValue {
    /// What kind of identifier it was.
    pub kind: &'static str,
    /// The value.
    pub value: u8,
}

/// A name that is not one of the accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {text:?}; expected one of: {expected}")]
pub struct UnknownName {
    /// What kind of identifier it was.
    pub kind: &'static str,
    /// What was given.
    pub text: String,
    /// The accepted spellings.
    pub expected: &'static str,
}
