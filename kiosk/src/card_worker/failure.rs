//! Why card work failed: the one enum every error path of the card thread maps into, and the one place that says what each failure means for the kiosk.

use pivtap_card::{PivError, TransportError};
use pivtap_protocol::certificate::{CertificateError, KeyKind};

use crate::core::{AuthFailure, CardReadFailure, PinWorkFailure};

/// Why card work failed, for the log. What the kiosk shows follows from its
/// [`CardFailure::kind`]: a [`CardReadFailure`], an [`AuthFailure`] or a [`PinWorkFailure`]
/// (each `From<&CardFailure>`), as the job that failed asks.
#[derive(Debug, thiserror::Error)]
pub(super) enum CardFailure {
    #[error(transparent)]
    Card(#[from] PivError),
    #[error("the card's authentication certificate cannot be read")]
    Certificate(#[from] CertificateError),
    #[error("the card's authentication key ({0}) cannot sign assertions")]
    UnsupportedKey(KeyKind),
    /// What the card signed does not verify with the certificate it holds in 9A.
    #[error("the card's authentication key does not match its certificate")]
    KeyMismatch,
    /// The card is not the one the job is for.
    #[error("the card is not the signed-in worker's badge")]
    OtherCard,
}

impl From<TransportError> for CardFailure {
    fn from(error: TransportError) -> Self {
        CardFailure::Card(PivError::Transport(error))
    }
}

/// What a [`CardFailure`] means for the person at the kiosk, whatever the job was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CardFailureKind {
    /// The card (or its reader) went away, or the work was cancelled.
    Removed,
    /// The card is no sign-in badge: no PIV application, no certificate or key in 9A, or a
    /// key that cannot sign assertions.
    NotABadge,
    /// The card refused the PIN.
    WrongPin { tries_left: Option<u8> },
    /// The card's PIN is blocked.
    PinBlocked,
    /// The card refused the PUK.
    WrongPuk { tries_left: Option<u8> },
    /// The card's PUK is blocked.
    PukBlocked,
    /// The card is not the one the job is for.
    OtherCard,
    /// Anything else the card (or its certificate) got wrong.
    CardError,
}

impl CardFailure {
    /// What this failure means: the one place that looks into its cause.
    pub(super) fn kind(&self) -> CardFailureKind {
        match self {
            CardFailure::Card(PivError::Transport(
                TransportError::CardRemoved
                | TransportError::NoCard
                | TransportError::CardReset
                | TransportError::ReaderUnavailable { .. },
            )) => CardFailureKind::Removed,
            CardFailure::Card(
                PivError::NoPivApplication
                | PivError::ObjectNotFound { .. }
                | PivError::NoKey { .. },
            )
            | CardFailure::UnsupportedKey(_) => CardFailureKind::NotABadge,
            CardFailure::Card(PivError::WrongPin { retries_left }) => CardFailureKind::WrongPin {
                tries_left: *retries_left,
            },
            CardFailure::Card(PivError::PinBlocked) => CardFailureKind::PinBlocked,
            CardFailure::Card(PivError::WrongPuk { retries_left }) => CardFailureKind::WrongPuk {
                tries_left: *retries_left,
            },
            CardFailure::Card(PivError::PukBlocked) => CardFailureKind::PukBlocked,
            CardFailure::OtherCard => CardFailureKind::OtherCard,
            CardFailure::Card(_) | CardFailure::Certificate(_) | CardFailure::KeyMismatch => {
                CardFailureKind::CardError
            }
        }
    }

    /// Whether a failed signature suggests the certificate names another key than the card's:
    /// the signature does not verify, or the card refuses the certificate's algorithm (its new
    /// key has another one) or gives an answer of the wrong shape. Not a removal, nor a PIN or
    /// access problem.
    pub(super) fn hints_at_a_new_key(&self) -> bool {
        matches!(
            self,
            CardFailure::KeyMismatch
                | CardFailure::Card(
                    PivError::Card { .. } | PivError::Signature(_) | PivError::Malformed { .. }
                )
        )
    }
}

impl From<&CardFailure> for CardReadFailure {
    fn from(failure: &CardFailure) -> Self {
        match failure.kind() {
            CardFailureKind::Removed => CardReadFailure::CardRemoved,
            CardFailureKind::NotABadge => CardReadFailure::NotPiv,
            CardFailureKind::WrongPin { .. }
            | CardFailureKind::PinBlocked
            | CardFailureKind::WrongPuk { .. }
            | CardFailureKind::PukBlocked
            | CardFailureKind::OtherCard
            | CardFailureKind::CardError => CardReadFailure::Unreadable,
        }
    }
}

impl From<&CardFailure> for AuthFailure {
    fn from(failure: &CardFailure) -> Self {
        match failure.kind() {
            CardFailureKind::Removed => AuthFailure::CardRemoved,
            CardFailureKind::WrongPin { tries_left } => AuthFailure::WrongPin { tries_left },
            CardFailureKind::PinBlocked => AuthFailure::PinBlocked,
            CardFailureKind::NotABadge
            | CardFailureKind::WrongPuk { .. }
            | CardFailureKind::PukBlocked
            | CardFailureKind::OtherCard
            | CardFailureKind::CardError => AuthFailure::CardError,
        }
    }
}

impl From<&CardFailure> for PinWorkFailure {
    fn from(failure: &CardFailure) -> Self {
        match failure.kind() {
            CardFailureKind::Removed => PinWorkFailure::CardRemoved,
            CardFailureKind::WrongPin { tries_left } => PinWorkFailure::WrongPin { tries_left },
            CardFailureKind::PinBlocked => PinWorkFailure::PinBlocked,
            CardFailureKind::WrongPuk { tries_left } => PinWorkFailure::WrongPuk { tries_left },
            CardFailureKind::PukBlocked => PinWorkFailure::PukBlocked,
            CardFailureKind::OtherCard => PinWorkFailure::OtherCard,
            CardFailureKind::NotABadge | CardFailureKind::CardError => PinWorkFailure::CardError,
        }
    }
}

#[cfg(test)]
mod tests {
    use pivtap_apdu::StatusWord;

    use super::*;

    fn read_failure(failure: &CardFailure) -> CardReadFailure {
        CardReadFailure::from(failure)
    }

    fn auth_failure(failure: &CardFailure) -> AuthFailure {
        AuthFailure::from(failure)
    }

    fn pin_work_failure(failure: &CardFailure) -> PinWorkFailure {
        PinWorkFailure::from(failure)
    }

    #[test]
    fn failures_map_to_what_the_kiosk_shows() {
        let transport = |error| CardFailure::from(error);
        for removal in [
            TransportError::CardRemoved,
            TransportError::NoCard,
            TransportError::CardReset,
        ] {
            assert_eq!(
                read_failure(&transport(removal.clone())),
                CardReadFailure::CardRemoved
            );
            assert_eq!(auth_failure(&transport(removal)), AuthFailure::CardRemoved);
        }
        let timeout = transport(TransportError::Timeout);
        assert_eq!(read_failure(&timeout), CardReadFailure::Unreadable);
        assert_eq!(auth_failure(&timeout), AuthFailure::CardError);
        assert_eq!(
            read_failure(&CardFailure::Card(PivError::NoPivApplication)),
            CardReadFailure::NotPiv
        );
        assert_eq!(
            read_failure(&CardFailure::UnsupportedKey(KeyKind::Other)),
            CardReadFailure::NotPiv
        );
        assert_eq!(
            auth_failure(&CardFailure::Card(PivError::WrongPin {
                retries_left: Some(1)
            })),
            AuthFailure::WrongPin {
                tries_left: Some(1)
            }
        );
        assert_eq!(
            auth_failure(&CardFailure::Card(PivError::PinBlocked)),
            AuthFailure::PinBlocked
        );
    }

    #[test]
    fn pin_work_failures_keep_the_puk_and_the_other_card_apart() {
        let card = CardFailure::Card;
        assert_eq!(
            pin_work_failure(&CardFailure::from(TransportError::NoCard)),
            PinWorkFailure::CardRemoved
        );
        assert_eq!(
            pin_work_failure(&card(PivError::WrongPin { retries_left: None })),
            PinWorkFailure::WrongPin { tries_left: None }
        );
        assert_eq!(
            pin_work_failure(&card(PivError::PinBlocked)),
            PinWorkFailure::PinBlocked
        );
        let wrong_puk = card(PivError::WrongPuk {
            retries_left: Some(2),
        });
        assert_eq!(
            pin_work_failure(&wrong_puk),
            PinWorkFailure::WrongPuk {
                tries_left: Some(2)
            }
        );
        assert_eq!(read_failure(&wrong_puk), CardReadFailure::Unreadable);
        assert_eq!(auth_failure(&wrong_puk), AuthFailure::CardError);
        assert_eq!(
            pin_work_failure(&card(PivError::PukBlocked)),
            PinWorkFailure::PukBlocked
        );
        assert_eq!(
            pin_work_failure(&CardFailure::OtherCard),
            PinWorkFailure::OtherCard
        );
        assert_eq!(
            read_failure(&CardFailure::OtherCard),
            CardReadFailure::Unreadable
        );
        assert_eq!(
            auth_failure(&CardFailure::OtherCard),
            AuthFailure::CardError
        );
        for not_a_badge in [
            card(PivError::NoPivApplication),
            CardFailure::UnsupportedKey(KeyKind::Other),
        ] {
            assert_eq!(pin_work_failure(&not_a_badge), PinWorkFailure::CardError);
            assert_eq!(auth_failure(&not_a_badge), AuthFailure::CardError);
        }
        assert_eq!(
            pin_work_failure(&CardFailure::KeyMismatch),
            PinWorkFailure::CardError
        );
    }

    #[test]
    fn only_a_refused_or_unverified_signature_hints_at_a_new_key() {
        assert!(CardFailure::KeyMismatch.hints_at_a_new_key());
        assert!(
            CardFailure::Card(PivError::Card {
                operation: "GENERAL AUTHENTICATE",
                status: StatusWord::from(0x6A80),
            })
            .hints_at_a_new_key()
        );
        for other in [
            CardFailure::from(TransportError::CardRemoved),
            CardFailure::Card(PivError::WrongPin {
                retries_left: Some(2),
            }),
            CardFailure::Card(PivError::PinBlocked),
            CardFailure::OtherCard,
        ] {
            assert!(!other.hints_at_a_new_key(), "{other:?}");
        }
    }
}
