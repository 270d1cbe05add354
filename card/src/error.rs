//! Errors of the PIV session API: what went wrong, in terms a caller can act on.

use pivtap_apdu::piv::{KeyReference, ObjectTag};
use pivtap_apdu::{StatusWord, TlvError};

use crate::exchange::ExchangeError;
use crate::management_key::ManagementKeyError;
use crate::signature::SignatureError;
use crate::transport::TransportError;

/// An error of a [`crate::session::PivSession`] operation. Never carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PivError {
    /// Talking to the card failed (card removed, reader gone, ...).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The APDU exchange failed (malformed or endless answers).
    #[error(transparent)]
    Exchange(ExchangeError),
    /// The card has no PIV application.
    #[error("the card has no PIV application")]
    NoPivApplication,
    /// The PIN was wrong; the card allows this many more tries (`None`: the
    /// card answered a plain `6300`, which spends a try but does not say how
    /// many are left).
    #[error("wrong PIN: {}", tries_left_text(*.retries_left, "PIN"))]
    WrongPin {
        /// Tries left, when the card says.
        retries_left: Option<u8>,
    },
    /// The PIN is blocked; the PUK (or an administrator) can unblock it.
    #[error("the PIN is blocked; unblock it with the PUK or ask your administrator")]
    PinBlocked,
    /// The PUK was wrong (tries left as for [`PivError::WrongPin`]).
    #[error("wrong PUK: {}", tries_left_text(*.retries_left, "PUK"))]
    WrongPuk {
        /// Tries left, when the card says.
        retries_left: Option<u8>,
    },
    /// The PUK is blocked; the card can no longer be unblocked.
    #[error("the PUK is blocked; the card must be reset or replaced")]
    PukBlocked,
    /// The card refused because the PIN (or management key) was not presented,
    /// or because the interface (contactless) does not allow the operation.
    #[error("the card refused to {operation}: {requirement}")]
    AccessDenied {
        /// What was attempted.
        operation: &'static str,
        /// What the card needs first.
        requirement: &'static str,
    },
    /// The management key was not accepted.
    #[error("the card did not accept the management key")]
    ManagementKeyRejected,
    /// The card did not prove it holds the management key (mutual authentication failed).
    #[error("the card failed to prove it holds the management key")]
    CardAuthenticationFailed,
    /// A data object is absent.
    #[error("the card has no {object}")]
    ObjectNotFound {
        /// The object.
        object: ObjectTag,
    },
    /// A slot holds no key.
    #[error("slot {slot} ({}) holds no key", .slot.description())]
    NoKey {
        /// The slot.
        slot: KeyReference,
    },
    /// The card answered with an unexpected status word.
    #[error("the card answered {status} to {operation}")]
    Card {
        /// What was attempted.
        operation: &'static str,
        /// The status word.
        status: StatusWord,
    },
    /// The card's answer could not be parsed.
    #[error("the card's {what} is malformed")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// Why.
        #[source]
        source: TlvError,
    },
    /// A signature could not be made or converted.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A management key operation failed on the host.
    #[error(transparent)]
    ManagementKey(#[from] ManagementKeyError),
}

impl From<ExchangeError> for PivError {
    fn from(error: ExchangeError) -> Self {
        match error {
            ExchangeError::Transport(transport) => PivError::Transport(transport),
            other => PivError::Exchange(other),
        }
    }
}

/// "2 tries left before the PIN is blocked", or, for a card that does not
/// say, that the count is unknown.
fn tries_left_text(retries_left: Option<u8>, what: &str) -> String {
    match retries_left {
        Some(1) => format!("1 try left before the {what} is blocked"),
        Some(n) => format!("{n} tries left before the {what} is blocked"),
        None => {
            format!("the card does not say how many tries are left before the {what} is blocked")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PivError;

    #[test]
    fn wrong_pin_and_puk_messages_give_the_tries_or_say_they_are_unknown() {
        let message = |error: PivError| error.to_string();
        assert_eq!(
            message(PivError::WrongPin {
                retries_left: Some(2)
            }),
            "wrong PIN: 2 tries left before the PIN is blocked"
        );
        assert_eq!(
            message(PivError::WrongPuk {
                retries_left: Some(1)
            }),
            "wrong PUK: 1 try left before the PUK is blocked"
        );
        assert_eq!(
            message(PivError::WrongPin { retries_left: None }),
            "wrong PIN: the card does not say how many tries are left before the PIN is blocked"
        );
    }
}
