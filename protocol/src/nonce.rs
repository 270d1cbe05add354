//! A challenge nonce: made from the CSPRNG, read back with its length checked, shown in the audit only by a prefix.
//!
//! The module depends on [`crate::jose`]'s base64url only, so it moves with the wire types.

use std::fmt;

use crate::jose::{base64url_decode, base64url_encode};

/// A nonce the server issues with a challenge: [`Nonce::BYTES`] random bytes as base64url
/// without padding. The audit never shows a whole nonce, only its
/// [prefix](Nonce::audit_prefix); so does `Debug`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Nonce(String);

/// A text that is not a [`Nonce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNonce {
    /// Not canonical base64url without padding.
    #[error("a nonce is base64url without padding")]
    NotBase64url,
    /// Decodes to the wrong number of bytes.
    #[error("a nonce is {} bytes, not {bytes}", Nonce::BYTES)]
    Length {
        /// The number of bytes it decodes to.
        bytes: usize,
    },
}

impl Nonce {
    /// Random bytes in a nonce.
    pub const BYTES: usize = 32;
    /// Characters of a nonce the audit log keeps (never the whole nonce).
    pub const AUDIT_PREFIX_CHARS: usize = 8;

    /// A fresh nonce from the operating system's CSPRNG.
    #[must_use]
    pub fn generate() -> Self {
        Nonce(random_base64url::<{ Nonce::BYTES }>())
    }

    /// The nonce of these bytes (a test's fixed nonce; the server's come from
    /// [`Nonce::generate`]).
    #[must_use]
    pub fn from_bytes(bytes: [u8; Nonce::BYTES]) -> Self {
        Nonce(base64url_encode(bytes))
    }

    /// Reads a nonce: base64url without padding of exactly [`Nonce::BYTES`] bytes.
    ///
    /// # Errors
    /// [`InvalidNonce`] for anything else.
    pub fn parse(text: &str) -> Result<Self, InvalidNonce> {
        let bytes = base64url_decode(text).map_err(|_| InvalidNonce::NotBase64url)?;
        if bytes.len() != Nonce::BYTES {
            return Err(InvalidNonce::Length { bytes: bytes.len() });
        }
        Ok(Nonce(text.to_owned()))
    }

    /// The nonce as sent (base64url).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The nonce as sent, owned.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }

    /// What the audit shows of this nonce: its first [`Nonce::AUDIT_PREFIX_CHARS`]
    /// characters.
    #[must_use]
    pub fn audit_prefix(&self) -> String {
        Nonce::audit_prefix_of(&self.0)
    }

    /// What the audit shows of a nonce a client claims (checked or not): its first
    /// [`Nonce::AUDIT_PREFIX_CHARS`] characters.
    #[must_use]
    pub fn audit_prefix_of(claimed: &str) -> String {
        claimed.chars().take(Nonce::AUDIT_PREFIX_CHARS).collect()
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({}…)", self.audit_prefix())
    }
}

/// `N` bytes from the operating system's CSPRNG as base64url without padding: a nonce,
/// a token's or a device proof's `jti`.
#[must_use]
pub fn random_base64url<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes);
    base64url_encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_nonce_parses_back_and_two_differ() {
        assert_eq!(
            Nonce::from_bytes([7u8; 32]).as_str(),
            base64url_encode([7u8; 32])
        );
        let nonce = Nonce::generate();
        assert_eq!(nonce.as_str().len(), 43, "32 bytes in base64url");
        assert_eq!(Nonce::parse(nonce.as_str()), Ok(nonce.clone()));
        assert_ne!(Nonce::generate(), nonce);
        assert_eq!(random_base64url::<16>().len(), 22);
    }

    #[test]
    fn only_base64url_of_thirty_two_bytes_is_a_nonce() {
        let good = base64url_encode([7u8; 32]);
        assert!(Nonce::parse(&good).is_ok());
        assert_eq!(
            Nonce::parse(&base64url_encode([7u8; 31])),
            Err(InvalidNonce::Length { bytes: 31 })
        );
        assert_eq!(
            Nonce::parse(&base64url_encode([7u8; 33])),
            Err(InvalidNonce::Length { bytes: 33 })
        );
        for bad in [
            format!("{good}="),
            good.replace('B', "+"),
            format!(" {good}"),
        ] {
            assert_eq!(Nonce::parse(&bad), Err(InvalidNonce::NotBase64url), "{bad}");
        }
        assert_eq!(Nonce::parse(""), Err(InvalidNonce::Length { bytes: 0 }));
    }

    #[test]
    fn the_audit_and_debug_show_only_a_prefix() -> Result<(), InvalidNonce> {
        let nonce = Nonce::parse(&base64url_encode([0xfbu8; 32]))?;
        assert_eq!(nonce.audit_prefix(), &nonce.as_str()[..8]);
        let debug = format!("{nonce:?}");
        assert_eq!(debug, format!("Nonce({}…)", &nonce.as_str()[..8]));
        assert!(!debug.contains(nonce.as_str()));
        assert_eq!(Nonce::audit_prefix_of("ab"), "ab");
        assert_eq!(Nonce::audit_prefix_of("ééééééééé"), "éééééééé");
        Ok(())
    }
}
