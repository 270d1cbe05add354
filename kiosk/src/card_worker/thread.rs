//! The card thread itself: it runs jobs one at a time, keeps a read's connection for the sign that follows, lets go of cards, and reports every answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use pivtap_card::{CardBackend, PivSession};
use tokio::sync::mpsc::UnboundedSender;

use super::badge::{self, KnownCertificate, SignRequest};
use super::cache::CertificateCache;
use super::cancel::{Cancellable, Ticket};
use super::failure::{CardFailure, CardFailureKind};
use super::pin::{self, PinChange};
use super::{CardJob, CardJobResult};
use crate::core::{CardSummary, PinWorkFailure, WorkId};
use crate::readers::ReaderSource;

/// What the card thread is told.
pub(super) enum Instruction {
    /// Do this job, unless its ticket is cancelled by then.
    Run { job: CardJob, ticket: Ticket },
    /// Let go of the card connection kept for this reader.
    Release { reader: String },
}

/// A card connection kept from a read, for the sign that follows on the same reader.
struct HeldCard {
    backend: Box<dyn CardBackend>,
    certificate: KnownCertificate,
}

/// The card thread's state.
pub(super) struct Worker {
    readers: Arc<dyn ReaderSource>,
    results: UnboundedSender<CardJobResult>,
    held: HashMap<String, HeldCard>,
    cache: CertificateCache,
    /// The SHA-256 of the certificate of the badge last found with a blocked PIN: an unblock
    /// spends a PUK try on that badge only, never on another one tapped instead.
    blocked_badge: Option<String>,
}

impl Worker {
    /// The card thread's state at start: no card held, nothing cached.
    pub(super) fn new(
        readers: Arc<dyn ReaderSource>,
        results: UnboundedSender<CardJobResult>,
    ) -> Self {
        Worker {
            readers,
            results,
            held: HashMap::new(),
            cache: CertificateCache::default(),
            blocked_badge: None,
        }
    }

    /// Runs instructions until the [`super::CardWorker`] is dropped.
    pub(super) fn run(mut self, instructions: Receiver<Instruction>) {
        for instruction in instructions {
            match instruction {
                Instruction::Run { job, ticket } => self.run_job(job, &ticket),
                Instruction::Release { reader } => {
                    self.held.remove(&reader);
                }
            }
        }
    }

    fn run_job(&mut self, job: CardJob, ticket: &Ticket) {
        match job {
            CardJob::Read { work, reader } => {
                let result = self
                    .read(&reader, ticket)
                    .map_err(|failure| shown(&reader, "reading the card", &failure));
                self.report(CardJobResult::Read { work, result });
            }
            CardJob::Sign {
                work,
                reader,
                pin,
                challenge,
                device,
            } => {
                let request = SignRequest {
                    pin,
                    challenge,
                    device,
                };
                let result = self
                    .sign(&reader, request, work, ticket)
                    .map_err(|failure| shown(&reader, "signing on the card", &failure));
                self.report(CardJobResult::Signed { work, result });
            }
            CardJob::ChangePin {
                work,
                reader,
                current,
                new,
                expect,
            } => {
                let change = PinChange::Change { current, new };
                let result = self.change_pin(&reader, ticket, expect.as_deref(), &change);
                self.report(CardJobResult::PinWork { work, result });
            }
            CardJob::UnblockPin {
                work,
                reader,
                puk,
                new_pin,
            } => {
                let change = PinChange::Unblock { puk, new_pin };
                let blocked_badge = self.blocked_badge.clone();
                let result = self.change_pin(&reader, ticket, blocked_badge.as_deref(), &change);
                if result.is_ok() {
                    self.blocked_badge = None;
                }
                self.report(CardJobResult::PinWork { work, result });
            }
        }
    }

    /// Makes the PIN `change` on a new connection to `reader`'s card (one kept from a read is
    /// stale for this), on `badge` only when given, then lets go of the card.
    fn change_pin(
        &mut self,
        reader: &str,
        ticket: &Ticket,
        badge: Option<&str>,
        change: &PinChange,
    ) -> Result<(), PinWorkFailure> {
        let mut changed = || {
            self.held.remove(reader);
            ticket.check()?;
            let mut backend = self.readers.connect(reader)?;
            let mut card = Cancellable::new(backend.as_mut(), ticket);
            let mut session = PivSession::open(&mut card)?;
            pin::change_pin(&mut session, &mut self.cache, badge, change)
        };
        changed().map_err(|failure| shown(reader, change.doing(), &failure))
    }

    fn report(&self, result: CardJobResult) {
        report_to(&self.results, result);
    }

    fn read(
        &mut self,
        reader: &str,
        ticket: &Ticket,
    ) -> Result<(CardSummary, Option<u8>), CardFailure> {
        // A new tap: a connection kept from the last one is stale.
        self.held.remove(reader);
        ticket.check()?;
        let mut backend = self.readers.connect(reader)?;
        let read = badge::read_badge(
            &mut Cancellable::new(backend.as_mut(), ticket),
            &mut self.cache,
        )?;
        let certificate = read.certificate;
        if read.tries_left == Some(0) {
            self.blocked_badge = Some(certificate.certificate.facts.fingerprint.clone());
        }
        self.held.insert(
            reader.to_owned(),
            HeldCard {
                backend,
                certificate,
            },
        );
        Ok((read.summary, read.tries_left))
    }

    fn sign(
        &mut self,
        reader: &str,
        request: SignRequest,
        work: WorkId,
        ticket: &Ticket,
    ) -> Result<String, CardFailure> {
        ticket.check()?;
        // The connection kept from reading this card, unless the card left (or was reset)
        // since: then a fresh connection, which reads the card again.
        let held = self.held.remove(reader).and_then(|mut held| {
            let reachable = held.backend.transaction().is_ok();
            reachable.then_some(held)
        });
        let (mut backend, mut certificate) = match held {
            Some(held) => (held.backend, Some(held.certificate)),
            None => (self.readers.connect(reader)?, None),
        };
        let results = &self.results;
        let signed = badge::sign_in(
            &mut Cancellable::new(backend.as_mut(), ticket),
            &mut self.cache,
            &mut certificate,
            request,
            |step| report_to(results, CardJobResult::Progress { work, step }),
        );
        let kind = signed.as_ref().err().map(CardFailure::kind);
        if let Some(guid) = certificate.as_ref().and_then(|known| known.guid) {
            match kind {
                None => self.cache.set_pin_known_good(&guid, true),
                Some(CardFailureKind::WrongPin { .. } | CardFailureKind::PinBlocked) => {
                    self.cache.set_pin_known_good(&guid, false);
                }
                Some(_) => {}
            }
        }
        if let (
            Some(
                CardFailureKind::PinBlocked
                | CardFailureKind::WrongPin {
                    tries_left: Some(0),
                },
            ),
            Some(known),
        ) = (kind, &certificate)
        {
            self.blocked_badge = Some(known.certificate.facts.fingerprint.clone());
        }
        // After a wrong PIN the holder may try again at once: keep the card for that.
        // Otherwise the connection goes, and with it the verified PIN.
        if let (Some(CardFailureKind::WrongPin { .. }), Some(certificate)) = (kind, certificate) {
            self.held.insert(
                reader.to_owned(),
                HeldCard {
                    backend,
                    certificate,
                },
            );
        }
        signed
    }
}

/// Logs why `doing` failed on `reader`'s card and says what the kiosk shows for it.
fn shown<T>(reader: &str, doing: &str, failure: &CardFailure) -> T
where
    T: for<'a> From<&'a CardFailure>,
{
    tracing::info!(reader, error = %failure, "{doing} failed");
    T::from(failure)
}

/// Sends `result` to the kiosk.
fn report_to(results: &UnboundedSender<CardJobResult>, result: CardJobResult) {
    // Nobody listening means the kiosk is stopping: there is no one left to tell.
    let _ = results.send(result);
}

#[cfg(test)]
mod tests {
    use pivtap_apdu::piv::Ins;

    use crate::card_worker::test_rig::{ALICE_PIN, BOB_PIN, DESK, Rig, verify};
    use crate::core::{AuthFailure, CardReadFailure};
    use crate::readers::tests::fixture_card;

    #[tokio::test]
    async fn wrong_pins_count_down_then_block_the_card() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("alice"));
        rig.read().await.unwrap();
        assert_eq!(
            rig.sign("654321").await,
            Err(AuthFailure::WrongPin {
                tries_left: Some(2)
            })
        );
        // The card is kept after a wrong PIN: trying again is SELECT, VERIFY.
        rig.readers.take_instructions();
        assert_eq!(
            rig.sign("111111").await,
            Err(AuthFailure::WrongPin {
                tries_left: Some(1)
            })
        );
        assert_eq!(rig.readers.take_instructions(), [Ins::Select, Ins::Verify]);
        assert_eq!(rig.sign("222222").await, Err(AuthFailure::PinBlocked));
        assert_eq!(rig.sign(ALICE_PIN).await, Err(AuthFailure::PinBlocked));
        rig.tap(&fixture_card("alice"));
        let (_, tries_left) = rig.read().await.unwrap();
        assert_eq!(tries_left, Some(3), "a fresh card from the fixture");
    }

    #[tokio::test]
    async fn a_blocked_card_reads_with_no_tries_left() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.block_the_pin().await;
        rig.tap(&alice);
        let (summary, tries_left) = rig.read().await.unwrap();
        assert_eq!(summary.holder_name.as_deref(), Some("Alice Example"));
        assert_eq!(tries_left, Some(0));
        assert_eq!(rig.sign(ALICE_PIN).await, Err(AuthFailure::PinBlocked));
    }

    #[tokio::test]
    async fn a_card_removed_after_its_read_fails_the_sign_as_removed() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("alice"));
        rig.read().await.unwrap();
        rig.readers.readers.remove(DESK);
        assert_eq!(rig.sign(ALICE_PIN).await, Err(AuthFailure::CardRemoved));
        assert_eq!(rig.read().await, Err(CardReadFailure::CardRemoved));
        rig.readers.readers.unplug(DESK);
        assert_eq!(rig.read().await, Err(CardReadFailure::CardRemoved));
    }

    #[tokio::test]
    async fn a_card_swapped_after_a_read_is_read_again_before_signing() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("alice"));
        rig.read().await.unwrap();
        rig.tap(&fixture_card("bob"));
        let assertion = rig.sign(BOB_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "ES256");
    }
}
