//! Cryptographic algorithm identifiers (SP 800-78-4 Table 6-2, as used by SP 800-73-4).

use std::fmt;
use std::str::FromStr;

use super::{UnknownName, UnknownValue};

/// A PIV algorithm identifier, as in P1 of GENERAL AUTHENTICATE and in
/// GENERATE ASYMMETRIC KEY PAIR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `03`: Triple DES (3 keys), ECB; the traditional management key algorithm.
    TripleDes,
    /// `06`: RSA 1024 bits (legacy; read but never generated).
    Rsa1024,
    /// `07`: RSA 2048 bits.
    Rsa2048,
    /// `08`: AES-128, ECB.
    Aes128,
    /// `0A`: AES-192, ECB.
    Aes192,
    /// `0C`: AES-256, ECB.
    Aes256,
    /// `11`: ECC curve P-256.
    EccP256,
    /// `14`: ECC curve P-384.
    EccP384,
}

impl Algorithm {
    /// All identifiers this crate knows.
    pub const ALL: [Algorithm; 8] = [
        Algorithm::TripleDes,
        Algorithm::Rsa1024,
        Algorithm::Rsa2048,
        Algorithm::Aes128,
        Algorithm::Aes192,
        Algorithm::Aes256,
        Algorithm::EccP256,
        Algorithm::EccP384,
    ];

    /// Whether this is a symmetric (management key) algorithm.
    #[must_use]
    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            Algorithm::TripleDes | Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256
        )
    }

    /// Whether this is an RSA algorithm.
    #[must_use]
    pub fn is_rsa(self) -> bool {
        matches!(self, Algorithm::Rsa1024 | Algorithm::Rsa2048)
    }

    /// Whether this is an ECC algorithm.
    #[must_use]
    pub fn is_ecc(self) -> bool {
        matches!(self, Algorithm::EccP256 | Algorithm::EccP384)
    }

    /// Key length in bytes: the modulus for RSA, the field size for ECC, the
    /// key for symmetric algorithms.
    #[must_use]
    pub fn key_len(self) -> usize {
        match self {
            Algorithm::TripleDes | Algorithm::Aes192 => 24,
            Algorithm::Rsa1024 => 128,
            Algorithm::Rsa2048 => 256,
            Algorithm::Aes128 => 16,
            Algorithm::Aes256 | Algorithm::EccP256 => 32,
            Algorithm::EccP384 => 48,
        }
    }

    /// Block size of a symmetric algorithm (the witness and challenge length), else `None`.
    #[must_use]
    pub fn block_len(self) -> Option<usize> {
        match self {
            Algorithm::TripleDes => Some(8),
            Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 => Some(16),
            _ => None,
        }
    }

    /// The lower-case name used on the command line and in card images.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::TripleDes => "3des",
            Algorithm::Rsa1024 => "rsa1024",
            Algorithm::Rsa2048 => "rsa2048",
            Algorithm::Aes128 => "aes128",
            Algorithm::Aes192 => "aes192",
            Algorithm::Aes256 => "aes256",
            Algorithm::EccP256 => "p256",
            Algorithm::EccP384 => "p384",
        }
    }
}

impl TryFrom<u8> for Algorithm {
    type Error = UnknownValue;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Ok(match value {
            0x03 => Algorithm::TripleDes,
            0x06 => Algorithm::Rsa1024,
            0x07 => Algorithm::Rsa2048,
            0x08 => Algorithm::Aes128,
            0x0A => Algorithm::Aes192,
            0x0C => Algorithm::Aes256,
            0x11 => Algorithm::EccP256,
            0x14 => Algorithm::EccP384,
            _ => {
                return Err(UnknownValue {
                    kind: "algorithm",
                    value,
                });
            }
        })
    }
}

impl From<Algorithm> for u8 {
    fn from(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::TripleDes => 0x03,
            Algorithm::Rsa1024 => 0x06,
            Algorithm::Rsa2048 => 0x07,
            Algorithm::Aes128 => 0x08,
            Algorithm::Aes192 => 0x0A,
            Algorithm::Aes256 => 0x0C,
            Algorithm::EccP256 => 0x11,
            Algorithm::EccP384 => 0x14,
        }
    }
}

impl FromStr for Algorithm {
    type Err = UnknownName;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.to_ascii_lowercase().replace(['-', '_'], "");
        let wanted = match wanted.as_str() {
            "tdes" | "tripledes" | "des3" => "3des",
            "eccp256" | "secp256r1" | "prime256v1" => "p256",
            "eccp384" | "secp384r1" => "p384",
            "rsa" => "rsa2048",
            other => other,
        };
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == wanted)
            .ok_or_else(|| UnknownName {
                kind: "algorithm",
                text: text.to_owned(),
                expected: "rsa2048, p256, p384, 3des, aes128, aes192, aes256",
            })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_and_name_round_trip() {
        for algorithm in Algorithm::ALL {
            assert_eq!(Algorithm::try_from(u8::from(algorithm)), Ok(algorithm));
            assert_eq!(algorithm.name().parse::<Algorithm>(), Ok(algorithm));
        }
        assert!(Algorithm::try_from(0x42).is_err());
        assert_eq!("ECC-P256".parse::<Algorithm>(), Ok(Algorithm::EccP256));
        assert!("ed25519".parse::<Algorithm>().is_err());
    }
}
