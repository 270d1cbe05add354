//! Key references: the PIV key slots, the PIN, the PUK and the management key (SP 800-73-4 Part 1 Table 4).

use std::fmt;
use std::str::FromStr;

use super::{ObjectTag, UnknownName, UnknownValue};

/// A key reference, as in P2 of VERIFY, CHANGE REFERENCE DATA, GENERAL
/// AUTHENTICATE and GENERATE ASYMMETRIC KEY PAIR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyReference {
    /// `00`: the global PIN.
    GlobalPin,
    /// `80`: the PIV card application PIN.
    Pin,
    /// `81`: the PIN unblocking key (PUK).
    Puk,
    /// `9A`: PIV authentication key (sign-in).
    PivAuthentication,
    /// `9B`: card management key (administers the card).
    ManagementKey,
    /// `9C`: digital signature key (PIN needed before every use).
    DigitalSignature,
    /// `9D`: key management key (key agreement / decryption).
    KeyManagement,
    /// `9E`: card authentication key (no PIN; allowed over contactless).
    CardAuthentication,
    /// `82`-`95`: retired key management keys, numbered 1 to 20.
    Retired(u8),
}

impl KeyReference {
    /// The asymmetric key slots, in the order `card info` lists them.
    #[must_use]
    pub fn asymmetric_slots() -> Vec<KeyReference> {
        let mut slots = vec![
            KeyReference::PivAuthentication,
            KeyReference::DigitalSignature,
            KeyReference::KeyManagement,
            KeyReference::CardAuthentication,
        ];
        slots.extend((1..=20).map(KeyReference::Retired));
        slots
    }

    /// Whether this reference names an asymmetric key slot.
    #[must_use]
    pub fn is_asymmetric_slot(self) -> bool {
        matches!(
            self,
            KeyReference::PivAuthentication
                | KeyReference::DigitalSignature
                | KeyReference::KeyManagement
                | KeyReference::CardAuthentication
                | KeyReference::Retired(_)
        )
    }

    /// The data object that holds this slot's certificate.
    #[must_use]
    pub fn certificate_object(self) -> Option<ObjectTag> {
        Some(match self {
            KeyReference::PivAuthentication => ObjectTag::PivAuthenticationCertificate,
            KeyReference::DigitalSignature => ObjectTag::DigitalSignatureCertificate,
            KeyReference::KeyManagement => ObjectTag::KeyManagementCertificate,
            KeyReference::CardAuthentication => ObjectTag::CardAuthenticationCertificate,
            KeyReference::Retired(n) => ObjectTag::RetiredCertificate(n),
            _ => return None,
        })
    }

    /// A short description for people.
    #[must_use]
    pub fn description(self) -> &'static str {
        match self {
            KeyReference::GlobalPin => "global PIN",
            KeyReference::Pin => "PIN",
            KeyReference::Puk => "PUK",
            KeyReference::PivAuthentication => "PIV authentication",
            KeyReference::ManagementKey => "card management key",
            KeyReference::DigitalSignature => "digital signature",
            KeyReference::KeyManagement => "key management",
            KeyReference::CardAuthentication => "card authentication",
            KeyReference::Retired(_) => "retired key management",
        }
    }
}

impl TryFrom<u8> for KeyReference {
    type Error = UnknownValue;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Ok(match value {
            0x00 => KeyReference::GlobalPin,
            0x80 => KeyReference::Pin,
            0x81 => KeyReference::Puk,
            0x9A => KeyReference::PivAuthentication,
            0x9B => KeyReference::ManagementKey,
            0x9C => KeyReference::DigitalSignature,
            0x9D => KeyReference::KeyManagement,
            0x9E => KeyReference::CardAuthentication,
            0x82..=0x95 => KeyReference::Retired(value - 0x81),
            _ => {
                return Err(UnknownValue {
                    kind: "key reference",
                    value,
                });
            }
        })
    }
}

impl From<KeyReference> for u8 {
    fn from(reference: KeyReference) -> Self {
        match reference {
            KeyReference::GlobalPin => 0x00,
            KeyReference::Pin => 0x80,
            KeyReference::Puk => 0x81,
            KeyReference::PivAuthentication => 0x9A,
            KeyReference::ManagementKey => 0x9B,
            KeyReference::DigitalSignature => 0x9C,
            KeyReference::KeyManagement => 0x9D,
            KeyReference::CardAuthentication => 0x9E,
            KeyReference::Retired(n) => 0x81 + n.clamp(1, 20),
        }
    }
}

impl FromStr for KeyReference {
    type Err = UnknownName;
    /// Accepts the hex value (`9a`, `0x9A`, `82`) or a name (`piv-auth`,
    /// `signature`, `key-management`, `card-auth`, `pin`, `puk`, `management`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.trim().to_ascii_lowercase();
        let named = match lower.as_str() {
            "piv-auth" | "authentication" | "auth" => Some(KeyReference::PivAuthentication),
            "signature" | "sign" | "digital-signature" => Some(KeyReference::DigitalSignature),
            "key-management" | "encryption" => Some(KeyReference::KeyManagement),
            "card-auth" | "card-authentication" => Some(KeyReference::CardAuthentication),
            "pin" => Some(KeyReference::Pin),
            "puk" => Some(KeyReference::Puk),
            "management" | "management-key" | "mgm" => Some(KeyReference::ManagementKey),
            _ => None,
        };
        named
            .or_else(|| {
                let digits = lower.strip_prefix("0x").unwrap_or(&lower);
                u8::from_str_radix(digits, 16)
                    .ok()
                    .filter(|_| digits.len() == 2)
                    .and_then(|b| KeyReference::try_from(b).ok())
            })
            .ok_or_else(|| UnknownName {
                kind: "key reference",
                text: text.to_owned(),
                expected: "9a, 9c, 9d, 9e, 82-95, 80 (pin), 81 (puk), 9b (management)",
            })
    }
}

impl fmt::Display for KeyReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", u8::from(*self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_and_text_round_trip() {
        for value in 0..=u8::MAX {
            if let Ok(reference) = KeyReference::try_from(value) {
                assert_eq!(u8::from(reference), value);
                assert_eq!(reference.to_string().parse::<KeyReference>(), Ok(reference));
            }
        }
        assert_eq!(KeyReference::try_from(0x95), Ok(KeyReference::Retired(20)));
        assert!(KeyReference::try_from(0x96).is_err());
        assert_eq!("piv-auth".parse(), Ok(KeyReference::PivAuthentication));
        assert_eq!("0x9C".parse(), Ok(KeyReference::DigitalSignature));
        assert!("9".parse::<KeyReference>().is_err());
    }

    #[test]
    fn slots_have_certificate_objects() {
        for slot in KeyReference::asymmetric_slots() {
            assert!(slot.certificate_object().is_some(), "{slot}");
        }
        assert_eq!(KeyReference::Pin.certificate_object(), None);
    }
}
