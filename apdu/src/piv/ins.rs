//! Instruction bytes of the PIV card command interface (SP 800-73-4 Part 2 §3) and ISO 7816-4.

/// An instruction byte (INS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ins {
    /// `A4` SELECT (ISO 7816-4 §11.1.1; SP 800-73-4 Part 2 §3.1.1).
    Select,
    /// `CB` GET DATA (§3.1.2).
    GetData,
    /// `20` VERIFY (§3.2.1).
    Verify,
    /// `24` CHANGE REFERENCE DATA (§3.2.2).
    ChangeReferenceData,
    /// `2C` RESET RETRY COUNTER (§3.2.3).
    ResetRetryCounter,
    /// `87` GENERAL AUTHENTICATE (§3.2.4).
    GeneralAuthenticate,
    /// `DB` PUT DATA (§3.3.1).
    PutData,
    /// `47` GENERATE ASYMMETRIC KEY PAIR (§3.3.2).
    GenerateAsymmetricKeyPair,
    /// `C0` GET RESPONSE (ISO 7816-4 §7.6.1), for `61xx` answers.
    GetResponse,
    /// `FD` GET VERSION, a YubiKey extension many PIV tools send.
    GetVersion,
    /// `F8` GET SERIAL, a YubiKey extension many PIV tools send.
    GetSerial,
    /// `F7` GET METADATA, a YubiKey extension: PIN/PUK retries, key algorithms.
    GetMetadata,
    /// `FB` RESET, a YubiKey extension: wipes the PIV application back to
    /// factory state, refused unless both PIN and PUK are blocked.
    ResetApplication,
    /// Any other instruction.
    Other(u8),
}

impl From<u8> for Ins {
    fn from(value: u8) -> Self {
        match value {
            0xA4 => Ins::Select,
            0xCB => Ins::GetData,
            0x20 => Ins::Verify,
            0x24 => Ins::ChangeReferenceData,
            0x2C => Ins::ResetRetryCounter,
            0x87 => Ins::GeneralAuthenticate,
            0xDB => Ins::PutData,
            0x47 => Ins::GenerateAsymmetricKeyPair,
            0xC0 => Ins::GetResponse,
            0xFD => Ins::GetVersion,
            0xF8 => Ins::GetSerial,
            0xF7 => Ins::GetMetadata,
            0xFB => Ins::ResetApplication,
            other => Ins::Other(other),
        }
    }
}

impl From<Ins> for u8 {
    fn from(ins: Ins) -> Self {
        match ins {
            Ins::Select => 0xA4,
            Ins::GetData => 0xCB,
            Ins::Verify => 0x20,
            Ins::ChangeReferenceData => 0x24,
            Ins::ResetRetryCounter => 0x2C,
            Ins::GeneralAuthenticate => 0x87,
            Ins::PutData => 0xDB,
            Ins::GenerateAsymmetricKeyPair => 0x47,
            Ins::GetResponse => 0xC0,
            Ins::GetVersion => 0xFD,
            Ins::GetSerial => 0xF8,
            Ins::GetMetadata => 0xF7,
            Ins::ResetApplication => 0xFB,
            Ins::Other(value) => value,
        }
    }
}

impl Ins {
    /// Whether the command data of this instruction carries secrets (PIN,
    /// PUK, management-key witnesses) and must be redacted from traces.
    /// GENERAL AUTHENTICATE counts as sensitive only for management-key
    /// references; see [`crate::piv::commands::is_sensitive`].
    #[must_use]
    pub fn carries_reference_data(self) -> bool {
        matches!(
            self,
            Ins::Verify | Ins::ChangeReferenceData | Ins::ResetRetryCounter
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        for value in 0..=u8::MAX {
            assert_eq!(u8::from(Ins::from(value)), value);
        }
    }
}
