//! The transport abstraction: one card in one reader ([`CardBackend`]) and an uninterrupted run of APDUs to it ([`CardTransaction`]), whatever carries them (PC/SC, the in-process virtual card).
//!
//! Both traits are small, synchronous and object-safe. They move raw bytes
//! only: GET RESPONSE, 6Cxx retries, command chaining and the APDU trace all
//! live in one place, [`crate::exchange::send`].

use thiserror::Error;

/// An exclusive run of APDUs to one card: no other program may interleave its
/// own commands until this value is dropped (for PC/SC, the span between
/// `SCardBeginTransaction` and `SCardEndTransaction`).
pub trait CardTransaction {
    /// Sends one encoded command APDU and returns the raw response: the
    /// response data followed by SW1 SW2.
    ///
    /// # Errors
    /// A [`TransportError`] when the bytes could not be exchanged (card
    /// removed or reset, reader gone, service down, timeout).
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError>;
}

/// One card in one reader: a PC/SC card connection or an in-process virtual card.
pub trait CardBackend: Send {
    /// Starts a transaction: APDUs sent through it reach the card without
    /// another program's commands in between.
    ///
    /// # Errors
    /// A [`TransportError`] when the card cannot be reached or is held by
    /// another program.
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError>;

    /// What the reader and card are believed to support.
    fn capabilities(&self) -> LinkCapabilities;

    /// A name for people: the reader's name, or the virtual card's label.
    fn name(&self) -> String;
}

/// What a card connection is believed to support, as far as the send path cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkCapabilities {
    /// Whether reader and card are believed to take extended-length APDUs.
    /// The send path still falls back to short APDUs when the card answers
    /// `6700` to an extended one.
    pub extended_length: bool,
    /// Whether the card is reached over a contactless (NFC) interface.
    pub contactless: bool,
}

/// Why bytes could not be exchanged with a card. Each message says what a
/// person can do about it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The card left the reader.
    #[error("the card was removed; insert or tap it again")]
    CardRemoved,
    /// Another program reset the card, so every verified PIN and
    /// authenticated key was forgotten.
    #[error("another program reset the card; the PIN must be entered again")]
    CardReset,
    /// The reader holds no card.
    #[error("there is no card in the reader; insert or tap a card")]
    NoCard,
    /// The reader is gone or cannot be used.
    #[error("the card reader {reader:?} is not available; check that it is connected")]
    ReaderUnavailable {
        /// The reader's name.
        reader: String,
    },
    /// No card reader is connected at all.
    #[error("no card reader is connected; connect one")]
    NoReaders,
    /// A card is in the reader but does not answer (mute, unpowered, or
    /// speaking no protocol the reader knows).
    #[error("the card does not respond ({reason}); take it out and insert or tap it again")]
    CardUnresponsive {
        /// What the reader reported.
        reason: String,
    },
    /// The smart card service (pcscd) cannot be reached.
    #[error(
        "the smart card service is not available ({reason}); start it with \
         `sudo systemctl start pcscd` or `sudo pcscd`"
    )]
    ServiceUnavailable {
        /// What the service layer reported.
        reason: String,
    },
    /// Another program holds the card exclusively.
    #[error("another program is using the card; close it and try again")]
    SharingViolation,
    /// The card did not answer in time.
    #[error("the card did not answer in time; hold it still on the reader and try again")]
    Timeout,
    /// The bytes on the wire broke the transmission protocol (T=0, T=1, vpcd).
    #[error("card communication failed: {reason}")]
    Protocol {
        /// What went wrong.
        reason: String,
    },
    /// Any other transport failure.
    #[error("card transport error: {reason}")]
    Other {
        /// What went wrong.
        reason: String,
    },
}

/// A test card that plays a fixed script: it checks each command it receives
/// against the next expected one and answers with the scripted response.
#[cfg(test)]
pub(crate) mod scripted {
    use std::collections::VecDeque;

    use super::{CardTransaction, TransportError};

    /// Commands expected and responses given, as uppercase-insensitive hex.
    /// Spaces in the hex are ignored. Dropping it with steps left fails the test.
    pub(crate) struct ScriptedCard {
        steps: VecDeque<(String, String)>,
    }

    impl ScriptedCard {
        /// A card that expects `steps` in order.
        pub(crate) fn new<C: AsRef<str>, R: AsRef<str>>(steps: Vec<(C, R)>) -> Self {
            let normalise = |hex: &str| hex.replace(' ', "").to_uppercase();
            ScriptedCard {
                steps: steps
                    .into_iter()
                    .map(|(command, response)| {
                        (normalise(command.as_ref()), normalise(response.as_ref()))
                    })
                    .collect(),
            }
        }
    }

    impl CardTransaction for ScriptedCard {
        fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
            let received = hex::encode_upper(command);
            let (expected, response) = self
                .steps
                .pop_front()
                .unwrap_or_else(|| panic!("unexpected command after the script ended: {received}"));
            assert_eq!(received, expected, "command does not match the script");
            Ok(hex::decode(response).expect("scripted response is hex"))
        }
    }

    impl Drop for ScriptedCard {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                assert!(
                    self.steps.is_empty(),
                    "script not consumed, next expected command: {:?}",
                    self.steps.front().map(|(command, _)| command)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose transactions answer every command with `9000` and
    /// count the commands in the backend itself (so a transaction borrows it).
    struct AlwaysSucceeds {
        commands_seen: usize,
    }

    struct SucceedingTransaction<'a> {
        commands: &'a mut usize,
    }

    impl CardTransaction for SucceedingTransaction<'_> {
        fn transmit(&mut self, _command: &[u8]) -> Result<Vec<u8>, TransportError> {
            *self.commands += 1;
            Ok(vec![0x90, 0x00])
        }
    }

    impl CardBackend for AlwaysSucceeds {
        fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
            Ok(Box::new(SucceedingTransaction {
                commands: &mut self.commands_seen,
            }))
        }

        fn capabilities(&self) -> LinkCapabilities {
            LinkCapabilities {
                extended_length: true,
                contactless: false,
            }
        }

        fn name(&self) -> String {
            format!("always succeeds ({} commands)", self.commands_seen)
        }
    }

    #[test]
    fn traits_are_object_safe() {
        let mut backend: Box<dyn CardBackend> = Box::new(AlwaysSucceeds { commands_seen: 0 });
        assert_eq!(backend.name(), "always succeeds (0 commands)");
        assert!(backend.capabilities().extended_length);
        {
            let mut transaction = backend.transaction().unwrap();
            assert_eq!(
                transaction.transmit(&[0, 0xA4, 4, 0]).unwrap(),
                [0x90, 0x00]
            );
            assert_eq!(
                transaction.transmit(&[0, 0xA4, 4, 0]).unwrap(),
                [0x90, 0x00]
            );
        }
        {
            let mut transaction = backend.transaction().unwrap();
            assert!(transaction.transmit(&[0, 0xCB, 0x3F, 0xFF]).is_ok());
        }
        assert_eq!(backend.name(), "always succeeds (3 commands)");
    }

    #[test]
    fn service_error_says_how_to_start_pcscd() {
        let message = TransportError::ServiceUnavailable {
            reason: "no service".to_owned(),
        }
        .to_string();
        assert!(message.contains("sudo systemctl start pcscd"), "{message}");
        assert!(message.contains("sudo pcscd"), "{message}");
        assert!(message.contains("no service"), "{message}");
    }

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(
            TransportError::CardRemoved.to_string(),
            "the card was removed; insert or tap it again"
        );
        assert!(
            TransportError::ReaderUnavailable {
                reader: "ACS ACR122U 00 00".to_owned()
            }
            .to_string()
            .contains("\"ACS ACR122U 00 00\"")
        );
    }

    #[test]
    fn scripted_card_plays_its_script() {
        let mut card = scripted::ScriptedCard::new(vec![("00a4 0400", "9000")]);
        assert_eq!(card.transmit(&[0, 0xA4, 4, 0]).unwrap(), [0x90, 0x00]);
    }

    #[test]
    #[should_panic(expected = "command does not match the script")]
    fn scripted_card_rejects_an_unexpected_command() {
        let mut card = scripted::ScriptedCard::new(vec![("00A40400", "9000")]);
        let _ = card.transmit(&[0, 0xCB, 0x3F, 0xFF]);
    }

    #[test]
    #[should_panic(expected = "script not consumed")]
    fn scripted_card_fails_when_steps_are_left() {
        drop(scripted::ScriptedCard::new(vec![("00A40400", "9000")]));
    }
}
