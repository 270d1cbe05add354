//! Public keys as GENERATE ASYMMETRIC KEY PAIR returns them: `7F49 { 81 modulus, 82 exponent }` or `7F49 { 86 point }` (SP 800-73-4 Part 2 §3.3.2, Table 10).

use crate::piv::Algorithm;

/// A public key in the card's form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA: big-endian modulus and public exponent, without leading zeros.
    Rsa {
        /// `81`: the modulus.
        modulus: Vec<u8>,
        /// `82`: the public exponent.
        exponent: Vec<u8>,
    },
    /// ECC: the uncompressed point `04 || X || Y`.
    Ec {
        /// [`Algorithm::EccP256`] or [`Algorithm::EccP384`].
        curve: Algorithm,
        /// `86`: the point.
        point: Vec<u8>,
    },
}
