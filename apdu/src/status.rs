//! ISO 7816-4 status words (SW1 SW2) as a typed enum that round-trips through `u16`.

use std::fmt;

/// A response status word (SW1 SW2), ISO/IEC 7816-4 §5.1.3 and NIST SP 800-73-4 Part 2 §3.
///
/// `From<u16>` is canonical: every value maps to exactly one variant and back,
/// so `u16::from(StatusWord::from(x)) == x` for every `x`. Values with no named
/// variant land in [`StatusWord::Other`].
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusWord {
    /// `9000`: normal processing, no further qualification.
    Success,
    /// `61xx`: `xx` more response bytes are available with GET RESPONSE
    /// (`00` means 256 or more).
    MoreData(u8),
    /// `6281`: part of the returned data may be corrupted.
    DataMayBeCorrupted,
    /// `6283`: the selected file or application is deactivated.
    SelectedFileDeactivated,
    /// `63Cx`: verification failed; `x` retries are left (0 to 15).
    RetriesLeft(u8),
    /// `6300`: verification failed, no information about retries.
    VerificationFailed,
    /// `6581`: memory failure.
    MemoryFailure,
    /// `6700`: wrong length (Lc or Le), no further indication. Also what a card
    /// answers to an extended-length APDU it cannot take.
    IncorrectLength,
    /// `6882`: secure messaging not supported.
    SecureMessagingNotSupported,
    /// `6883`: the last command of a chain was expected.
    LastCommandOfChainExpected,
    /// `6884`: command chaining not supported.
    CommandChainingNotSupported,
    /// `6982`: security status not satisfied (PIN or management key needed,
    /// or the operation is not allowed on this interface).
    SecurityStatusNotSatisfied,
    /// `6983`: authentication method blocked (PIN or PUK retries used up).
    AuthenticationBlocked,
    /// `6984`: reference data not usable.
    ReferenceDataNotUsable,
    /// `6985`: conditions of use not satisfied.
    ConditionsNotSatisfied,
    /// `6986`: command not allowed (no current EF).
    CommandNotAllowed,
    /// `6A80`: incorrect parameters in the command data field.
    IncorrectData,
    /// `6A81`: function not supported.
    FunctionNotSupported,
    /// `6A82`: file or application not found (data object absent).
    NotFound,
    /// `6A84`: not enough memory space in the file.
    NotEnoughMemory,
    /// `6A86`: incorrect parameters P1-P2.
    IncorrectP1P2,
    /// `6A88`: referenced data or reference data not found (no key in the slot).
    ReferencedDataNotFound,
    /// `6B00`: wrong parameters P1-P2.
    WrongP1P2,
    /// `6Cxx`: wrong Le field; `xx` is the exact number of available bytes.
    WrongLength(u8),
    /// `6D00`: instruction code not supported or invalid.
    InstructionNotSupported,
    /// `6E00`: class not supported.
    ClassNotSupported,
    /// `6F00`: no precise diagnosis.
    NoPreciseDiagnosis,
    /// Any other status word, kept as its raw value.
    Other(u16),
}

impl StatusWord {
    /// True for `9000`.
    #[must_use]
    pub fn is_success(self) -> bool {
        self == StatusWord::Success
    }

    /// The two bytes SW1 and SW2.
    #[must_use]
    pub fn to_bytes(self) -> [u8; 2] {
        u16::from(self).to_be_bytes()
    }

    /// Builds a status word from SW1 and SW2.
    #[must_use]
    pub fn from_bytes(sw1: u8, sw2: u8) -> Self {
        StatusWord::from(u16::from_be_bytes([sw1, sw2]))
    }

    /// A short human description, for error messages.
    #[must_use]
    pub fn description(self) -> &'static str {
        match self {
            StatusWord::Success => "success",
            StatusWord::MoreData(_) => "more data available",
            StatusWord::DataMayBeCorrupted => "returned data may be corrupted",
            StatusWord::SelectedFileDeactivated => "selected application is deactivated",
            StatusWord::RetriesLeft(_) | StatusWord::VerificationFailed => "verification failed",
            StatusWord::MemoryFailure => "memory failure",
            StatusWord::IncorrectLength => "wrong length",
            StatusWord::SecureMessagingNotSupported => "secure messaging not supported",
            StatusWord::LastCommandOfChainExpected => "last command of chain expected",
            StatusWord::CommandChainingNotSupported => "command chaining not supported",
            StatusWord::SecurityStatusNotSatisfied => "security status not satisfied",
            StatusWord::AuthenticationBlocked => "authentication method blocked",
            StatusWord::ReferenceDataNotUsable => "reference data not usable",
            StatusWord::ConditionsNotSatisfied => "conditions of use not satisfied",
            StatusWord::CommandNotAllowed => "command not allowed",
            StatusWord::IncorrectData => "incorrect data",
            StatusWord::FunctionNotSupported => "function not supported",
            StatusWord::NotFound => "not found",
            StatusWord::NotEnoughMemory => "not enough memory",
            StatusWord::IncorrectP1P2 | StatusWord::WrongP1P2 => "incorrect P1-P2",
            StatusWord::ReferencedDataNotFound => "referenced data not found",
            StatusWord::WrongLength(_) => "wrong Le",
            StatusWord::InstructionNotSupported => "instruction not supported",
            StatusWord::ClassNotSupported => "class not supported",
            StatusWord::NoPreciseDiagnosis => "no precise diagnosis",
            StatusWord::Other(_) => "unknown status",
        }
    }
}

impl From<u16> for StatusWord {
    fn from(value: u16) -> Self {
        let [sw1, sw2] = value.to_be_bytes();
        match (sw1, sw2) {
            (0x90, 0x00) => StatusWord::Success,
            (0x61, n) => StatusWord::MoreData(n),
            (0x62, 0x81) => StatusWord::DataMayBeCorrupted,
            (0x62, 0x83) => StatusWord::SelectedFileDeactivated,
            (0x63, 0x00) => StatusWord::VerificationFailed,
            (0x63, n) if n & 0xF0 == 0xC0 => StatusWord::RetriesLeft(n & 0x0F),
            (0x65, 0x81) => StatusWord::MemoryFailure,
            (0x67, 0x00) => StatusWord::IncorrectLength,
            (0x68, 0x82) => StatusWord::SecureMessagingNotSupported,
            (0x68, 0x83) => StatusWord::LastCommandOfChainExpected,
            (0x68, 0x84) => StatusWord::CommandChainingNotSupported,
            (0x69, 0x82) => StatusWord::SecurityStatusNotSatisfied,
            (0x69, 0x83) => StatusWord::AuthenticationBlocked,
            (0x69, 0x84) => StatusWord::ReferenceDataNotUsable,
            (0x69, 0x85) => StatusWord::ConditionsNotSatisfied,
            (0x69, 0x86) => StatusWord::CommandNotAllowed,
            (0x6A, 0x80) => StatusWord::IncorrectData,
            (0x6A, 0x81) => StatusWord::FunctionNotSupported,
            (0x6A, 0x82) => StatusWord::NotFound,
            (0x6A, 0x84) => StatusWord::NotEnoughMemory,
            (0x6A, 0x86) => StatusWord::IncorrectP1P2,
            (0x6A, 0x88) => StatusWord::ReferencedDataNotFound,
            (0x6B, 0x00) => StatusWord::WrongP1P2,
            (0x6C, n) => StatusWord::WrongLength(n),
            (0x6D, 0x00) => StatusWord::InstructionNotSupported,
            (0x6E, 0x00) => StatusWord::ClassNotSupported,
            (0x6F, 0x00) => StatusWord::NoPreciseDiagnosis,
            _ => StatusWord::Other(value),
        }
    }
}

impl From<StatusWord> for u16 {
    fn from(status: StatusWord) -> Self {
        match status {
            StatusWord::Success => 0x9000,
            StatusWord::MoreData(n) => 0x6100 | u16::from(n),
            StatusWord::DataMayBeCorrupted => 0x6281,
            StatusWord::SelectedFileDeactivated => 0x6283,
            StatusWord::VerificationFailed => 0x6300,
            StatusWord::RetriesLeft(n) => 0x63C0 | u16::from(n & 0x0F),
            StatusWord::MemoryFailure => 0x6581,
            StatusWord::IncorrectLength => 0x6700,
            StatusWord::SecureMessagingNotSupported => 0x6882,
            StatusWord::LastCommandOfChainExpected => 0x6883,
            StatusWord::CommandChainingNotSupported => 0x6884,
            StatusWord::SecurityStatusNotSatisfied => 0x6982,
            StatusWord::AuthenticationBlocked => 0x6983,
            StatusWord::ReferenceDataNotUsable => 0x6984,
            StatusWord::ConditionsNotSatisfied => 0x6985,
            StatusWord::CommandNotAllowed => 0x6986,
            StatusWord::IncorrectData => 0x6A80,
            StatusWord::FunctionNotSupported => 0x6A81,
            StatusWord::NotFound => 0x6A82,
            StatusWord::NotEnoughMemory => 0x6A84,
            StatusWord::IncorrectP1P2 => 0x6A86,
            StatusWord::ReferencedDataNotFound => 0x6A88,
            StatusWord::WrongP1P2 => 0x6B00,
            StatusWord::WrongLength(n) => 0x6C00 | u16::from(n),
            StatusWord::InstructionNotSupported => 0x6D00,
            StatusWord::ClassNotSupported => 0x6E00,
            StatusWord::NoPreciseDiagnosis => 0x6F00,
            StatusWord::Other(value) => value,
        }
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = u16::from(*self);
        match self {
            StatusWord::RetriesLeft(n) => {
                write!(f, "{value:04X} (verification failed, {n} retries left)")
            }
            StatusWord::MoreData(n) => write!(f, "{value:04X} (more data available: {n} bytes)"),
            StatusWord::WrongLength(n) => write!(f, "{value:04X} (wrong Le, {n} bytes available)"),
            _ => write!(f, "{value:04X} ({})", self.description()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_u16_round_trips() {
        for value in 0..=u16::MAX {
            assert_eq!(u16::from(StatusWord::from(value)), value, "{value:04X}");
        }
    }

    #[test]
    fn payload_variants_decode() {
        assert_eq!(StatusWord::from(0x6110), StatusWord::MoreData(0x10));
        assert_eq!(StatusWord::from(0x6C20), StatusWord::WrongLength(0x20));
        assert_eq!(StatusWord::from(0x63C2), StatusWord::RetriesLeft(2));
        assert_eq!(StatusWord::from(0x63C0), StatusWord::RetriesLeft(0));
        assert_eq!(StatusWord::from(0x6300), StatusWord::VerificationFailed);
        assert_eq!(StatusWord::from(0x6A82), StatusWord::NotFound);
        assert_eq!(StatusWord::from(0x1234), StatusWord::Other(0x1234));
    }

    #[test]
    fn display_names_the_hex_value() {
        assert_eq!(
            StatusWord::SecurityStatusNotSatisfied.to_string(),
            "6982 (security status not satisfied)"
        );
        assert_eq!(
            StatusWord::RetriesLeft(1).to_string(),
            "63C1 (verification failed, 1 retries left)"
        );
    }
}
