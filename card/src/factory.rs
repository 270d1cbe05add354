//! Factory state of a PIV card: the PIN, PUK and management key cards ship with, and the reset that restores them.
//!
//! The one place for these defaults: the virtual card starts from them and
//! restores them on RESET, `pivtap card reset` prints them, tests sign in with
//! them. [`PivSession::factory_reset`] lives here too: it spends the PIN and
//! PUK tries a RESET needs and sends it.

use pivtap_apdu::StatusWord;
use pivtap_apdu::piv::{Pin, Puk};

use crate::error::PivError;
use crate::management_key::{DEFAULT_MANAGEMENT_KEY, ManagementKey};
use crate::session::{PinStatus, PivSession};

/// The PIN a new or reset card has (as YubiKeys ship).
pub const PIN: &str = "123456";
/// The PUK a new or reset card has.
pub const PUK: &str = "12345678";
/// The management key a new or reset card has: 3DES `0102030405060708` three times.
pub const MANAGEMENT_KEY: [u8; 24] = DEFAULT_MANAGEMENT_KEY;

/// The most wrong tries a PIN or PUK counter can take (15 on YubiKeys).
pub const MAX_BLOCKING_TRIES: usize = 16;

/// The factory PIN as a [`Pin`].
#[must_use]
pub fn pin() -> Pin {
    Pin::new(PIN).unwrap_or_else(|_| unreachable!("the factory PIN is valid"))
}

/// The factory PUK as a [`Puk`].
#[must_use]
pub fn puk() -> Puk {
    Puk::new(PUK).unwrap_or_else(|_| unreachable!("the factory PUK is valid"))
}

/// The factory management key (3DES).
#[must_use]
pub fn management_key() -> ManagementKey {
    ManagementKey::default_key()
}

/// Why [`PivSession::factory_reset`] did not reset the card.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactoryResetError {
    /// The card has no RESET command (a YubiKey extension); nothing was changed.
    #[error(
        "this card has no RESET command (a YubiKey extension); nothing was changed. \
         Ask the card's issuer how to reset it"
    )]
    Unsupported,
    /// The PIN or PUK did not block after [`MAX_BLOCKING_TRIES`] wrong tries.
    #[error("the {secret} did not block after {MAX_BLOCKING_TRIES} wrong tries; nothing was reset")]
    DidNotBlock {
        /// `"PIN"` or `"PUK"`.
        secret: &'static str,
    },
    /// The card refused RESET although both the PIN and the PUK are blocked.
    #[error(
        "the card refused RESET (6985, conditions of use not satisfied): it resets only while \
         both the PIN and the PUK are blocked, and they did not block"
    )]
    Refused,
    /// Blocking the PIN or the PUK failed.
    #[error("cannot block the {secret}")]
    Blocking {
        /// `"PIN"` or `"PUK"`.
        secret: &'static str,
        /// What the card or the link said.
        #[source]
        source: PivError,
    },
    /// The RESET command itself failed.
    #[error("RESET failed")]
    Reset(#[source] PivError),
}

/// A random eight-digit value, almost surely not the card's PIN or PUK.
fn wrong_value() -> String {
    format!("{:08}", rand::random_range(0..100_000_000u32))
}

impl PivSession<'_> {
    /// Resets the PIV application to factory state ([`PIN`], [`PUK`],
    /// [`MANAGEMENT_KEY`], no keys, certificates or data objects). RESET is
    /// sent first: a card without it says so before anything is blocked; a
    /// card that wants the PIN and PUK blocked gets every try spent with
    /// random values and RESET again.
    ///
    /// # Errors
    /// [`FactoryResetError`]; on [`FactoryResetError::Unsupported`] nothing
    /// on the card changed.
    pub fn factory_reset(&mut self) -> Result<(), FactoryResetError> {
        match self.reset_application() {
            Ok(()) => return Ok(()),
            Err(PivError::Card {
                status: StatusWord::ConditionsNotSatisfied,
                ..
            }) => {}
            Err(PivError::Card {
                status: StatusWord::InstructionNotSupported | StatusWord::ClassNotSupported,
                ..
            }) => return Err(FactoryResetError::Unsupported),
            Err(error) => return Err(FactoryResetError::Reset(error)),
        }
        self.block_pin_and_puk()?;
        match self.reset_application() {
            Ok(()) => Ok(()),
            Err(PivError::Card {
                status: StatusWord::ConditionsNotSatisfied,
                ..
            }) => Err(FactoryResetError::Refused),
            Err(error) => Err(FactoryResetError::Reset(error)),
        }
    }

    /// Spends every PIN try and every PUK try with random values. A value
    /// that happens to be right changes nothing (VERIFY; a PUK "changed" to
    /// itself) and the next try goes on. [`PivSession::factory_reset`] does
    /// this when the card resets only with both blocked.
    ///
    /// # Errors
    /// [`FactoryResetError::DidNotBlock`] or [`FactoryResetError::Blocking`].
    pub fn block_pin_and_puk(&mut self) -> Result<(), FactoryResetError> {
        let blocking = |secret| move |source| FactoryResetError::Blocking { secret, source };
        let mut pin_blocked = false;
        for _ in 0..MAX_BLOCKING_TRIES {
            if self.pin_status().map_err(blocking("PIN"))? == PinStatus::Blocked {
                pin_blocked = true;
                break;
            }
            let wrong = Pin::new(&wrong_value()).expect("eight digits are a valid PIN");
            match self.verify_pin(&wrong) {
                Ok(()) | Err(PivError::WrongPin { .. }) => {}
                Err(PivError::PinBlocked) => {
                    pin_blocked = true;
                    break;
                }
                Err(error) => return Err(blocking("PIN")(error)),
            }
        }
        if !pin_blocked {
            return Err(FactoryResetError::DidNotBlock { secret: "PIN" });
        }
        for _ in 0..MAX_BLOCKING_TRIES {
            let wrong = Puk::new(&wrong_value()).expect("eight digits are a valid PUK");
            match self.change_puk(&wrong, &wrong) {
                Ok(()) | Err(PivError::WrongPuk { .. }) => {}
                Err(PivError::PukBlocked) => return Ok(()),
                Err(error) => return Err(blocking("PUK")(error)),
            }
        }
        Err(FactoryResetError::DidNotBlock { secret: "PUK" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_values_are_eight_digits() {
        for _ in 0..100 {
            let value = wrong_value();
            assert_eq!(value.len(), 8);
            assert!(Pin::new(&value).is_ok() && Puk::new(&value).is_ok());
        }
    }
}
