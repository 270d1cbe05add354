//! Parsers and builders for the PIV data objects a host and a card exchange.
//!
//! Every object has `parse` (used by the host on what the card returns) and
//! `encode` (used by the virtual card). Objects read with GET DATA arrive
//! wrapped in `53`; [`unwrap_data_object`] and [`wrap_data_object`] are the one
//! place that handles that wrapper, and the object parsers take its content.

pub mod apt;
pub mod auth_template;
pub mod certificate;
pub mod chuid;
pub mod discovery;
pub mod fascn;
pub mod metadata;
pub mod public_key;

pub use apt::ApplicationPropertyTemplate;
pub use certificate::CertificateObject;
pub use chuid::Chuid;
pub use discovery::Discovery;
pub use fascn::Fascn;
pub use public_key::PublicKey;

use crate::error::TlvError;
use crate::piv::commands::TAG_DATA;
use crate::tlv;

/// The content of a GET DATA response `53 len content` (SP 800-73-4 Part 2 §3.1.2).
///
/// # Errors
/// [`TlvError`] when the response is not exactly one `53` element.
pub fn unwrap_data_object(response: &[u8]) -> Result<&[u8], TlvError> {
    tlv::expect(response, TAG_DATA)
}

/// Wraps object content as `53 len content`, the form GET DATA returns.
#[must_use]
pub fn wrap_data_object(content: &[u8]) -> Vec<u8> {
    tlv::encode(TAG_DATA, content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unwraps_short_and_long_forms() {
        assert_eq!(
            unwrap_data_object(&[0x53, 0x02, 0xAA, 0xBB]).unwrap(),
            [0xAA, 0xBB]
        );
        let long = wrap_data_object(&[7; 300]);
        assert_eq!(&long[..4], [0x53, 0x82, 0x01, 0x2C]);
        assert_eq!(unwrap_data_object(&long).unwrap(), [7; 300]);
    }

    #[test]
    fn rejects_other_tags_truncation_and_trailing_bytes() {
        assert!(matches!(
            unwrap_data_object(&[0x7E, 0x00]),
            Err(TlvError::Unexpected { .. })
        ));
        assert!(matches!(
            unwrap_data_object(&[0x53, 0x03, 0x01]),
            Err(TlvError::Truncated { .. })
        ));
        assert!(unwrap_data_object(&[0x53, 0x00, 0x00]).is_err());
        assert!(unwrap_data_object(&[]).is_err());
    }

    proptest! {
        #[test]
        fn wrap_then_unwrap_round_trips(content in proptest::collection::vec(any::<u8>(), 0..1000)) {
            let wrapped = wrap_data_object(&content);
            prop_assert_eq!(unwrap_data_object(&wrapped).unwrap(), &content[..]);
        }

        #[test]
        fn unwrapping_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = unwrap_data_object(&bytes);
        }
    }
}
