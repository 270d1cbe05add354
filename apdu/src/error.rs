//! Errors of the pure codec layer: malformed APDUs, TLV and PIV objects.

use thiserror::Error;

/// Why bytes could not be read as, or a value could not be written as, an APDU.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ApduError {
    /// A command APDU needs at least CLA INS P1 P2.
    #[error("command APDU too short: {len} bytes, at least 4 needed")]
    CommandTooShort {
        /// The length that was given.
        len: usize,
    },
    /// A response APDU needs at least SW1 SW2.
    #[error("response APDU too short: {len} bytes, at least 2 needed")]
    ResponseTooShort {
        /// The length that was given.
        len: usize,
    },
    /// The body's length fields do not match the number of bytes present.
    #[error("command APDU body of {body_len} bytes matches no ISO 7816-4 case")]
    MalformedBody {
        /// Bytes after the 4-byte header.
        body_len: usize,
    },
    /// The command data does not fit in the length mode asked for.
    #[error("command data of {len} bytes exceeds the {max}-byte limit of this length mode")]
    DataTooLong {
        /// Data length.
        len: usize,
        /// The limit of the mode.
        max: usize,
    },
    /// Ne (the expected response length) is larger than 65536.
    #[error("expected response length {ne} exceeds 65536")]
    ExpectedLengthTooLarge {
        /// The Ne asked for.
        ne: usize,
    },
}

/// Why bytes could not be read as BER-TLV or as a PIV data object.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TlvError {
    /// Input ended inside a tag, a length or a value.
    #[error("truncated TLV: {what} needs {needed} more bytes, {available} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// A tag longer than three bytes or otherwise invalid for ISO 7816.
    #[error("invalid BER-TLV tag")]
    InvalidTag,
    /// Indefinite length (`80`) or a length of more than three bytes.
    #[error("unsupported BER-TLV length encoding {first_byte:#04x}")]
    InvalidLength {
        /// First byte of the length field.
        first_byte: u8,
    },
    /// A data object that must be present is absent.
    #[error("missing TLV element {tag}")]
    Missing {
        /// Tag in hex, such as `5FC102`.
        tag: String,
    },
    /// A data object was expected but another was found.
    #[error("expected TLV element {expected}, found {found}")]
    Unexpected {
        /// Tag expected, in hex.
        expected: String,
        /// Tag found, in hex.
        found: String,
    },
    /// An element has the wrong size or content.
    #[error("invalid {what}: {reason}")]
    InvalidValue {
        /// Which element.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}
