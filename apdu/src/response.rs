//! ISO 7816-4 response APDUs: response data followed by a status word.

use std::fmt;

use crate::error::ApduError;
use crate::status::StatusWord;

/// A response APDU: data (possibly empty) and SW1 SW2.
#[derive(Clone, PartialEq, Eq)]
pub struct ResponseApdu {
    data: Vec<u8>,
    status: StatusWord,
}

impl ResponseApdu {
    /// A response with data and a status.
    #[must_use]
    pub fn new(data: Vec<u8>, status: StatusWord) -> Self {
        ResponseApdu { data, status }
    }

    /// A response with no data.
    #[must_use]
    pub fn status_only(status: StatusWord) -> Self {
        ResponseApdu::new(Vec::new(), status)
    }

    /// The response data.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the response data.
    #[must_use]
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The status word.
    #[must_use]
    pub fn status(&self) -> StatusWord {
        self.status
    }

    /// Encodes data followed by SW1 SW2.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.status.to_bytes());
        out
    }

    /// Decodes a response: everything before the last two bytes is data.
    ///
    /// # Errors
    /// [`ApduError::ResponseTooShort`] for fewer than two bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ApduError> {
        match bytes.split_last_chunk::<2>() {
            Some((data, [sw1, sw2])) => Ok(ResponseApdu::new(
                data.to_vec(),
                StatusWord::from_bytes(*sw1, *sw2),
            )),
            None => Err(ApduError::ResponseTooShort { len: bytes.len() }),
        }
    }
}

impl fmt::Debug for ResponseApdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseApdu")
            .field("data", &format_args!("{} bytes", self.data.len()))
            .field("status", &format_args!("{}", self.status))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_data_and_status() {
        let r = ResponseApdu::from_bytes(&[0x01, 0x02, 0x63, 0xC2]).unwrap();
        assert_eq!(r.data(), [1, 2]);
        assert_eq!(r.status(), StatusWord::RetriesLeft(2));
        assert_eq!(
            ResponseApdu::from_bytes(&[0x90]),
            Err(ApduError::ResponseTooShort { len: 1 })
        );
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 2..400)) {
            let r = ResponseApdu::from_bytes(&bytes).unwrap();
            prop_assert_eq!(r.to_bytes(), bytes);
        }
    }
}
