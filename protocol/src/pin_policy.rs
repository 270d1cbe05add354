//! The PIN policy: which new PINs (and PUKs) a worker may choose, set by the admin in `server.toml`, announced to devices at enrollment, and enforced wherever a PIN is changed (CLI, kiosk).
//!
//! The defaults follow the seeds: 6 to 8 digits, no ascending or descending
//! run (123456, 987654) and no single repeated digit (111111). Checks never
//! echo the PIN: refusals say which rule was broken, not what was typed.

use pivtap_apdu::piv::reference_data::{PIN_MAX_LEN, PIN_MIN_LEN};
use serde::{Deserialize, Serialize};

/// The shortest PIN a PIV card accepts (the apdu crate's PIN rule).
pub const PIV_MIN_LENGTH: u8 = PIN_MIN_LEN as u8;
/// The longest PIN a PIV card accepts (the apdu crate's PIN rule).
pub const PIV_MAX_LENGTH: u8 = PIN_MAX_LEN as u8;

/// Rules for new PINs. Every field has a default, so a partial `[pin_policy]`
/// table in `server.toml` is enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PinPolicy {
    /// Fewest characters (at least 6, the PIV minimum).
    pub min_length: u8,
    /// Most characters (at most 8, the PIV maximum).
    pub max_length: u8,
    /// Only the digits 0-9 (what a PIN pad can type).
    pub digits_only: bool,
    /// Refuse PINs whose digits all go up or all go down by one (123456, 987654).
    pub forbid_sequences: bool,
    /// Refuse PINs made of one repeated character (111111).
    pub forbid_repeats: bool,
}

impl Default for PinPolicy {
    fn default() -> Self {
        PinPolicy {
            min_length: PIV_MIN_LENGTH,
            max_length: PIV_MAX_LENGTH,
            digits_only: true,
            forbid_sequences: true,
            forbid_repeats: true,
        }
    }
}

/// Why a new PIN was refused. The message names the rule, never the PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinPolicyViolation {
    /// Shorter than the policy allows.
    #[error("the PIN must have at least {min} characters")]
    TooShort {
        /// The policy's minimum.
        min: u8,
    },
    /// Longer than the policy allows.
    #[error("the PIN must have at most {max} characters")]
    TooLong {
        /// The policy's maximum.
        max: u8,
    },
    /// Something other than a digit, where only digits are allowed.
    #[error("the PIN must be digits only (0-9)")]
    NotDigits,
    /// Digits that count up or down by one.
    #[error("the PIN must not be a run of consecutive digits, up or down (like 1-2-3-4-5-6)")]
    Sequence,
    /// One character repeated.
    #[error("the PIN must not be one digit repeated, such as 111111")]
    Repeated,
    /// The new PIN is the same as the current one.
    #[error("the new PIN must differ from the current one")]
    Unchanged,
}

/// A policy that cannot be enforced on a PIV card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "PIN length limits must satisfy {PIV_MIN_LENGTH} <= min_length <= max_length <= {PIV_MAX_LENGTH} \
     (got min_length {min_length}, max_length {max_length})"
)]
pub struct InvalidPinPolicy {
    /// The configured minimum.
    pub min_length: u8,
    /// The configured maximum.
    pub max_length: u8,
}

impl PinPolicy {
    /// The policy for PUKs: 8 digits on most cards, 6 to 8 by the standard;
    /// only the length and character rules apply.
    #[must_use]
    pub fn puk() -> Self {
        PinPolicy {
            min_length: PIV_MIN_LENGTH,
            max_length: PIV_MAX_LENGTH,
            digits_only: true,
            forbid_sequences: false,
            forbid_repeats: false,
        }
    }

    /// Checks that the limits fit what a PIV card can hold.
    ///
    /// # Errors
    /// [`InvalidPinPolicy`] when they do not.
    pub fn validate(&self) -> Result<(), InvalidPinPolicy> {
        if PIV_MIN_LENGTH <= self.min_length
            && self.min_length <= self.max_length
            && self.max_length <= PIV_MAX_LENGTH
        {
            Ok(())
        } else {
            Err(InvalidPinPolicy {
                min_length: self.min_length,
                max_length: self.max_length,
            })
        }
    }

    /// A random secret of `digits` decimal digits that this policy accepts (a PUK made for
    /// a new card, say); `None` when a thousand tries found none (a policy no secret of
    /// that length meets).
    #[must_use]
    pub fn random(&self, digits: usize) -> Option<zeroize::Zeroizing<String>> {
        (0..1000).find_map(|_| {
            let secret = zeroize::Zeroizing::new(
                (0..digits)
                    .map(|_| char::from(b'0' + rand::random_range(0..10_u8)))
                    .collect::<String>(),
            );
            self.check(&secret).is_ok().then_some(secret)
        })
    }

    /// Checks a new PIN against the policy.
    ///
    /// # Errors
    /// The first rule the PIN breaks, in the order length, characters,
    /// repeats, sequences.
    pub fn check(&self, pin: &str) -> Result<(), PinPolicyViolation> {
        let length = pin.chars().count();
        if length < usize::from(self.min_length) {
            return Err(PinPolicyViolation::TooShort {
                min: self.min_length,
            });
        }
        if length > usize::from(self.max_length) {
            return Err(PinPolicyViolation::TooLong {
                max: self.max_length,
            });
        }
        if self.digits_only && !pin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PinPolicyViolation::NotDigits);
        }
        let bytes = pin.as_bytes();
        if self.forbid_repeats && bytes.windows(2).all(|pair| pair[0] == pair[1]) {
            return Err(PinPolicyViolation::Repeated);
        }
        if self.forbid_sequences && is_run(bytes) {
            return Err(PinPolicyViolation::Sequence);
        }
        Ok(())
    }

    /// Checks a PIN change: the policy, and that the PIN actually changes.
    ///
    /// # Errors
    /// As [`PinPolicy::check`], or [`PinPolicyViolation::Unchanged`].
    pub fn check_change(&self, current: &str, new: &str) -> Result<(), PinPolicyViolation> {
        self.check(new)?;
        if subtle_equal(current.as_bytes(), new.as_bytes()) {
            return Err(PinPolicyViolation::Unchanged);
        }
        Ok(())
    }
}

/// Whether every digit is one more (or every digit one less) than the one
/// before it.
fn is_run(bytes: &[u8]) -> bool {
    if bytes.len() < 2 || !bytes.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let ascending = bytes.windows(2).all(|pair| pair[1] == pair[0] + 1);
    let descending = bytes.windows(2).all(|pair| pair[0] == pair[1] + 1);
    ascending || descending
}

/// Equality without an early exit, as for any secret comparison.
fn subtle_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_secrets_meet_the_policy_and_an_impossible_length_gives_none() {
        let policy = PinPolicy::puk();
        for _ in 0..50 {
            let secret = policy.random(8).expect("an 8-digit PUK");
            assert_eq!(secret.len(), 8);
            assert!(policy.check(&secret).is_ok(), "{}", secret.as_str());
        }
        assert!(PinPolicy::default().random(5).is_none());
    }

    #[test]
    fn the_default_policy_follows_the_seeds() {
        let policy = PinPolicy::default();
        for good in ["240913", "1357924", "86420135", "123457", "112233"] {
            assert_eq!(policy.check(good), Ok(()), "{good}");
        }
        let refused = [
            ("12345", PinPolicyViolation::TooShort { min: 6 }),
            ("123456789", PinPolicyViolation::TooLong { max: 8 }),
            ("12a456", PinPolicyViolation::NotDigits),
            ("123456", PinPolicyViolation::Sequence),
            ("23456789", PinPolicyViolation::Sequence),
            ("987654", PinPolicyViolation::Sequence),
            ("111111", PinPolicyViolation::Repeated),
            ("00000000", PinPolicyViolation::Repeated),
        ];
        for (pin, why) in refused {
            assert_eq!(policy.check(pin), Err(why), "{pin}");
        }
    }

    #[test]
    fn a_relaxed_policy_allows_what_it_says() {
        let relaxed = PinPolicy {
            forbid_sequences: false,
            forbid_repeats: false,
            digits_only: false,
            ..PinPolicy::default()
        };
        for pin in ["123456", "111111", "pa55word"] {
            assert_eq!(relaxed.check(pin), Ok(()), "{pin}");
        }
    }

    #[test]
    fn refusals_never_contain_the_pin() {
        let policy = PinPolicy::default();
        for pin in ["987654", "4", "123456789", "12x456", "777777"] {
            let message = policy.check(pin).unwrap_err().to_string();
            assert!(!message.contains(pin), "{message}");
        }
    }

    #[test]
    fn a_change_must_change_something() {
        let policy = PinPolicy::default();
        assert_eq!(
            policy.check_change("240913", "240913"),
            Err(PinPolicyViolation::Unchanged)
        );
        assert_eq!(policy.check_change("240913", "240914"), Ok(()));
        assert_eq!(
            policy.check_change("240913", "123456"),
            Err(PinPolicyViolation::Sequence)
        );
    }

    #[test]
    fn puks_need_only_length_and_digits() {
        assert_eq!(PinPolicy::puk().check("12345678"), Ok(()));
        assert_eq!(
            PinPolicy::puk().check("1234567x"),
            Err(PinPolicyViolation::NotDigits)
        );
    }

    #[test]
    fn limits_outside_piv_are_invalid() {
        assert!(PinPolicy::default().validate().is_ok());
        for (min_length, max_length) in [(5, 8), (6, 9), (8, 6)] {
            let policy = PinPolicy {
                min_length,
                max_length,
                ..PinPolicy::default()
            };
            assert_eq!(
                policy.validate(),
                Err(InvalidPinPolicy {
                    min_length,
                    max_length
                })
            );
        }
    }

    #[test]
    fn a_partial_toml_table_keeps_the_other_defaults() {
        let policy: PinPolicy = toml::from_str("forbid_sequences = false").unwrap();
        assert_eq!(
            policy,
            PinPolicy {
                forbid_sequences: false,
                ..PinPolicy::default()
            }
        );
    }
}
