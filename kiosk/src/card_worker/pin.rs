//! The PIN jobs on a badge: changing the PIN, and unblocking it with the PUK, each only on the badge the job is for.

use pivtap_apdu::piv::{Pin, Puk};
use pivtap_card::PivSession;

use super::badge::check_card;
use super::cache::CertificateCache;
use super::failure::CardFailure;

/// The new PIN a PIN job sets, and how.
pub(super) enum PinChange {
    /// CHANGE REFERENCE DATA: the current PIN sets the new one.
    Change {
        /// The current PIN.
        current: Pin,
        /// The new PIN.
        new: Pin,
    },
    /// RESET RETRY COUNTER: the PUK sets a new PIN and unblocks it.
    Unblock {
        /// The PUK.
        puk: Puk,
        /// The new PIN.
        new_pin: Pin,
    },
}

impl PinChange {
    /// What the job does, for the log.
    pub(super) fn doing(&self) -> &'static str {
        match self {
            PinChange::Change { .. } => "changing the PIN",
            PinChange::Unblock { .. } => "unblocking the PIN",
        }
    }
}

/// When `badge` is given, checks that the card is that badge (its 9A certificate's SHA-256;
/// another one gets [`CardFailure::OtherCard`] and no PIN or PUK try is spent), then makes
/// the `change`.
pub(super) fn change_pin(
    session: &mut PivSession<'_>,
    cache: &mut CertificateCache,
    badge: Option<&str>,
    change: &PinChange,
) -> Result<(), CardFailure> {
    if let Some(expected) = badge {
        check_card(session, cache, expected)?;
    }
    match change {
        PinChange::Change { current, new } => session.change_pin(current, new)?,
        PinChange::Unblock { puk, new_pin } => session.unblock_pin(puk, new_pin)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pivtap_apdu::piv::Ins;

    use super::*;
    use crate::card_worker::test_rig::{ALICE_PIN, DESK, Rig, fingerprint_of};
    use crate::core::{AuthFailure, PinWorkFailure};
    use crate::readers::tests::fixture_card;

    #[tokio::test]
    async fn a_pin_change_checks_the_badge_then_changes_the_pin() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.sign(ALICE_PIN).await.unwrap();
        rig.readers.take();
        assert_eq!(
            rig.change_pin(ALICE_PIN, "240913", Some(fingerprint_of("alice")))
                .await,
            Ok(())
        );
        let recorded = rig.readers.take();
        assert_eq!(
            recorded.instructions(),
            [Ins::Select, Ins::GetData, Ins::ChangeReferenceData],
            "SELECT, CHUID (the certificate comes from the cache), CHANGE REFERENCE DATA"
        );
        // The new PIN signs; the old one no longer does.
        rig.tap(&alice);
        assert!(rig.sign("240913").await.is_ok());
        rig.tap(&alice);
        assert_eq!(
            rig.sign(ALICE_PIN).await,
            Err(AuthFailure::WrongPin {
                tries_left: Some(2)
            })
        );
    }

    #[tokio::test]
    async fn a_pin_change_on_someone_elses_badge_sends_no_pin() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("bob"));
        rig.readers.take();
        assert_eq!(
            rig.change_pin(ALICE_PIN, "240913", Some(fingerprint_of("alice")))
                .await,
            Err(PinWorkFailure::OtherCard)
        );
        let instructions = rig.readers.take_instructions();
        assert!(
            !instructions.contains(&Ins::ChangeReferenceData),
            "{instructions:?}"
        );
        let mut card = fixture_card("bob");
        let mut session = PivSession::open(&mut card).unwrap();
        assert_eq!(session.pin_retries().unwrap(), Some(3), "no try spent");
    }

    #[tokio::test]
    async fn a_wrong_current_pin_counts_down_and_a_removed_card_is_reported() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("alice"));
        assert_eq!(
            rig.change_pin("654321", "240913", None).await,
            Err(PinWorkFailure::WrongPin {
                tries_left: Some(2)
            })
        );
        rig.readers.readers.remove(DESK);
        assert_eq!(
            rig.change_pin(ALICE_PIN, "240913", None).await,
            Err(PinWorkFailure::CardRemoved)
        );
    }

    #[tokio::test]
    async fn the_puk_unblocks_a_blocked_pin_with_a_new_one() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.block_the_pin().await;
        rig.tap(&alice);
        assert_eq!(rig.read().await.unwrap().1, Some(0));
        assert_eq!(
            rig.unblock("87654321", "240913").await,
            Err(PinWorkFailure::WrongPuk {
                tries_left: Some(2)
            })
        );
        rig.readers.take();
        assert_eq!(rig.unblock("12345678", "240913").await, Ok(()));
        assert_eq!(
            rig.readers.take_instructions(),
            [Ins::Select, Ins::GetData, Ins::ResetRetryCounter],
            "SELECT, CHUID (is it the blocked badge? its certificate is cached), RESET RETRY COUNTER"
        );
        rig.tap(&alice);
        assert_eq!(rig.read().await.unwrap().1, Some(3));
        assert!(rig.sign("240913").await.is_ok());
    }

    #[tokio::test]
    async fn an_unblock_spends_no_puk_try_on_another_badge_than_the_blocked_one() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.block_the_pin().await;
        // Bob's badge is tapped instead of Alice's blocked one.
        let bob = fixture_card("bob");
        rig.tap(&bob);
        rig.readers.take();
        assert_eq!(
            rig.unblock("12345678", "240913").await,
            Err(PinWorkFailure::OtherCard)
        );
        let instructions = rig.readers.take_instructions();
        assert!(
            !instructions.contains(&Ins::ResetRetryCounter),
            "{instructions:?}"
        );
        {
            let mut card = bob.clone();
            let mut session = PivSession::open(&mut card).unwrap();
            assert_eq!(
                session.pin_retries().unwrap(),
                Some(3),
                "Bob's PIN untouched"
            );
            assert!(
                session.verify_pin(&Pin::new("24681357").unwrap()).is_ok(),
                "Bob's PIN unchanged"
            );
        }
        // Alice's badge back: the unblock goes through.
        rig.tap(&alice);
        assert_eq!(rig.unblock("12345678", "240913").await, Ok(()));
        rig.tap(&alice);
        assert!(rig.sign("240913").await.is_ok());
    }

    #[tokio::test]
    async fn a_blocked_puk_is_reported() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("alice"));
        for tries_left in [2, 1] {
            assert_eq!(
                rig.unblock("87654321", "240913").await,
                Err(PinWorkFailure::WrongPuk {
                    tries_left: Some(tries_left)
                })
            );
        }
        let last = rig.unblock("87654321", "240913").await;
        assert!(
            matches!(
                last,
                Err(PinWorkFailure::PukBlocked
                    | PinWorkFailure::WrongPuk {
                        tries_left: Some(0)
                    })
            ),
            "{last:?}"
        );
        assert_eq!(
            rig.unblock("12345678", "240913").await,
            Err(PinWorkFailure::PukBlocked)
        );
    }
}
