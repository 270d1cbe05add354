//! PIN and PUK values: validated, padded to eight bytes with `FF` (SP 800-73-4 Part 2 §2.4.3), zeroized, never printed.

use std::fmt;

use zeroize::Zeroizing;

/// Length of PIN and PUK reference data on the wire.
pub const REFERENCE_DATA_LEN: usize = 8;

/// The fewest characters of a PIV PIN (and PUK), SP 800-73-4 Part 2 §2.4.3.
/// The one place for the PIV "6 to 8 digits" rule: the [`Pin`] and [`Puk`]
/// types check it, a site's PIN policy and the kiosk's PIN pad stay inside it.
pub const PIN_MIN_LEN: usize = 6;
/// The most characters of a PIV PIN (and PUK): the whole reference data.
pub const PIN_MAX_LEN: usize = REFERENCE_DATA_LEN;

/// Whether `len` characters fit a PIN or PUK.
fn fits(len: usize) -> bool {
    (PIN_MIN_LEN..=PIN_MAX_LEN).contains(&len)
}

/// Why a PIN or PUK was refused before it reached a card. Never contains the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceDataError {
    /// A PIN must be 6 to 8 digits.
    #[error("a PIN must be 6 to 8 digits, got {len} characters")]
    PinLength {
        /// Characters given.
        len: usize,
    },
    /// A PIN holds only the digits 0-9.
    #[error("a PIN may contain only the digits 0-9")]
    PinNotNumeric,
    /// A PUK must be 6 to 8 bytes.
    #[error("a PUK must be 6 to 8 characters, got {len}")]
    PukLength {
        /// Characters given.
        len: usize,
    },
    /// Padded reference data from a card was not a valid value.
    #[error("reference data is not 8 bytes of value padded with FF")]
    BadPadding,
}

/// A PIV application PIN: 6 to 8 ASCII digits. No `Debug` value, no `Serialize`; zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(Zeroizing<Vec<u8>>);

/// A PIN unblocking key: 6 to 8 bytes (usually digits). Zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Puk(Zeroizing<Vec<u8>>);

impl Pin {
    /// Checks and takes a PIN.
    ///
    /// # Errors
    /// [`ReferenceDataError::PinLength`] or [`ReferenceDataError::PinNotNumeric`].
    pub fn new(pin: &str) -> Result<Self, ReferenceDataError> {
        let len = pin.chars().count();
        if !fits(len) {
            return Err(ReferenceDataError::PinLength { len });
        }
        if !pin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReferenceDataError::PinNotNumeric);
        }
        Ok(Pin(Zeroizing::new(pin.as_bytes().to_vec())))
    }

    /// Reads a PIN from its padded wire form.
    ///
    /// # Errors
    /// [`ReferenceDataError::BadPadding`] or the errors of [`Pin::new`].
    pub fn from_padded(padded: &[u8]) -> Result<Self, ReferenceDataError> {
        let value = unpad(padded)?;
        let text = std::str::from_utf8(&value).map_err(|_| ReferenceDataError::PinNotNumeric)?;
        Pin::new(text)
    }

    /// The eight-byte wire form, padded with `FF`.
    #[must_use]
    pub fn padded(&self) -> Zeroizing<[u8; REFERENCE_DATA_LEN]> {
        pad(&self.0)
    }

    /// The digits.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Puk {
    /// Checks and takes a PUK.
    ///
    /// # Errors
    /// [`ReferenceDataError::PukLength`].
    pub fn new(puk: &str) -> Result<Self, ReferenceDataError> {
        let len = puk.len();
        if !fits(len) {
            return Err(ReferenceDataError::PukLength { len });
        }
        Ok(Puk(Zeroizing::new(puk.as_bytes().to_vec())))
    }

    /// Reads a PUK from its padded wire form.
    ///
    /// # Errors
    /// [`ReferenceDataError::BadPadding`] or [`ReferenceDataError::PukLength`].
    pub fn from_padded(padded: &[u8]) -> Result<Self, ReferenceDataError> {
        let value = unpad(padded)?;
        if !fits(value.len()) {
            return Err(ReferenceDataError::PukLength { len: value.len() });
        }
        Ok(Puk(value))
    }

    /// The eight-byte wire form, padded with `FF`.
    #[must_use]
    pub fn padded(&self) -> Zeroizing<[u8; REFERENCE_DATA_LEN]> {
        pad(&self.0)
    }

    /// The value.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn pad(value: &[u8]) -> Zeroizing<[u8; REFERENCE_DATA_LEN]> {
    let mut out = Zeroizing::new([0xFF; REFERENCE_DATA_LEN]);
    out[..value.len()].copy_from_slice(value);
    out
}

fn unpad(padded: &[u8]) -> Result<Zeroizing<Vec<u8>>, ReferenceDataError> {
    if padded.len() != REFERENCE_DATA_LEN {
        return Err(ReferenceDataError::BadPadding);
    }
    let len = padded
        .iter()
        .position(|b| *b == 0xFF)
        .unwrap_or(REFERENCE_DATA_LEN);
    if padded[len..].iter().any(|b| *b != 0xFF) {
        return Err(ReferenceDataError::BadPadding);
    }
    Ok(Zeroizing::new(padded[..len].to_vec()))
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(REDACTED)")
    }
}

impl fmt::Debug for Puk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Puk(REDACTED)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_puks_are_six_to_eight_characters() {
        for len in 0..=REFERENCE_DATA_LEN + 2 {
            let value = "7".repeat(len);
            let fits = (6..=8).contains(&len);
            assert_eq!(Pin::new(&value).is_ok(), fits, "PIN of {len}");
            assert_eq!(Puk::new(&value).is_ok(), fits, "PUK of {len}");
            if fits {
                let padded = Pin::new(&value).unwrap().padded();
                assert_eq!(Puk::from_padded(&*padded).is_ok(), fits);
                assert_eq!(Pin::from_padded(&*padded).is_ok(), fits);
            }
        }
        assert_eq!((PIN_MIN_LEN, PIN_MAX_LEN), (6, 8));
    }

    #[test]
    fn pads_and_unpads() {
        let pin = Pin::new("123456").unwrap();
        assert_eq!(*pin.padded(), *b"123456\xFF\xFF");
        assert_eq!(Pin::from_padded(&*pin.padded()).unwrap(), pin);
        assert_eq!(*Pin::new("12345678").unwrap().padded(), *b"12345678");
        assert_eq!(
            Pin::new("12345"),
            Err(ReferenceDataError::PinLength { len: 5 })
        );
        assert_eq!(Pin::new("12345a"), Err(ReferenceDataError::PinNotNumeric));
        assert_eq!(
            Pin::from_padded(b"1234\xFF56\xFF"),
            Err(ReferenceDataError::BadPadding)
        );
        assert_eq!(
            Puk::from_padded(b"12345678").unwrap().as_bytes(),
            b"12345678"
        );
    }

    #[test]
    fn debug_never_shows_the_value() {
        let shown = format!(
            "{:?} {:?}",
            Pin::new("918273").unwrap(),
            Puk::new("55667788").unwrap()
        );
        assert!(
            !shown.contains("918273") && !shown.contains("55667788"),
            "{shown}"
        );
    }
}
