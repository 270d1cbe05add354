//! Cancelling card work: each reader's cancel generation, the ticket a job runs on, and a card connection that fails as a removed card once its job is cancelled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pivtap_card::{CardBackend, CardTransaction, LinkCapabilities, TransportError};

/// Which work is cancelled: each reader's cancel generation, and whether everything stops.
#[derive(Default)]
pub(super) struct Cancellation {
    generations: Mutex<HashMap<String, u64>>,
    stopping: AtomicBool,
}

impl Cancellation {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `send` the ticket of work on `reader` submitted now. `send` runs under the lock,
    /// so that the order work is sent in matches the order of the cancels.
    pub(super) fn submit(self: &Arc<Self>, reader: &str, send: impl FnOnce(Ticket)) {
        let generations = self.lock();
        let generation = generations.get(reader).copied().unwrap_or_default();
        send(Ticket {
            cancellation: Arc::clone(self),
            reader: reader.to_owned(),
            generation,
        });
    }

    /// Cancels the work submitted so far on `reader`, then runs `send` under the lock (as
    /// [`Cancellation::submit`] does).
    pub(super) fn cancel(&self, reader: &str, send: impl FnOnce()) {
        let mut generations = self.lock();
        let generation = generations.entry(reader.to_owned()).or_default();
        *generation = generation.wrapping_add(1);
        send();
    }

    /// Cancels all work, on every reader, for good.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// A job's claim to run: valid while no cancel for its reader came after its submission.
pub(super) struct Ticket {
    cancellation: Arc<Cancellation>,
    reader: String,
    generation: u64,
}

impl Ticket {
    /// Fails as a removed card would once the job is cancelled.
    pub(super) fn check(&self) -> Result<(), TransportError> {
        let current = self.cancellation.lock().get(&self.reader).copied();
        let cancelled = self.cancellation.stopping.load(Ordering::SeqCst)
            || current.unwrap_or_default() != self.generation;
        if cancelled {
            Err(TransportError::CardRemoved)
        } else {
            Ok(())
        }
    }
}

/// A card connection whose commands stop, as if the card had left, once the job is
/// cancelled: cancelling takes effect at the next APDU.
pub(super) struct Cancellable<'a> {
    backend: &'a mut dyn CardBackend,
    ticket: &'a Ticket,
}

impl<'a> Cancellable<'a> {
    /// `backend`, for the job holding `ticket`.
    pub(super) fn new(backend: &'a mut dyn CardBackend, ticket: &'a Ticket) -> Self {
        Cancellable { backend, ticket }
    }
}

impl CardBackend for Cancellable<'_> {
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
        self.ticket.check()?;
        let inner = self.backend.transaction()?;
        Ok(Box::new(CancellableTransaction {
            inner,
            ticket: self.ticket,
        }))
    }

    fn capabilities(&self) -> LinkCapabilities {
        self.backend.capabilities()
    }

    fn name(&self) -> String {
        self.backend.name()
    }
}

struct CancellableTransaction<'a> {
    inner: Box<dyn CardTransaction + 'a>,
    ticket: &'a Ticket,
}

impl CardTransaction for CancellableTransaction<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.ticket.check()?;
        self.inner.transmit(command)
    }
}

#[cfg(test)]
mod tests {
    use pivtap_apdu::piv::Ins;

    use super::*;
    use crate::card_worker::CardJobResult;
    use crate::card_worker::test_rig::{ALICE_PIN, DESK, Rig};
    use crate::core::{AuthFailure, CardReadFailure};
    use crate::readers::tests::fixture_card;

    fn ticket(cancellation: &Arc<Cancellation>, reader: &str) -> Ticket {
        let mut issued = None;
        cancellation.submit(reader, |ticket| issued = Some(ticket));
        issued.unwrap()
    }

    #[test]
    fn a_cancel_voids_the_tickets_of_its_reader_only_and_stopping_voids_them_all() {
        let cancellation = Arc::new(Cancellation::default());
        let desk = ticket(&cancellation, "desk");
        let door = ticket(&cancellation, "door");
        assert!(desk.check().is_ok());
        let mut sent = false;
        cancellation.cancel("desk", || sent = true);
        assert!(sent, "the cancel's instruction goes out");
        assert_eq!(desk.check(), Err(TransportError::CardRemoved));
        assert!(door.check().is_ok(), "another reader's work goes on");
        let after = ticket(&cancellation, "desk");
        assert!(
            after.check().is_ok(),
            "work submitted after the cancel runs"
        );
        cancellation.stop();
        for ticket in [&after, &door] {
            assert_eq!(ticket.check(), Err(TransportError::CardRemoved));
        }
    }

    #[tokio::test]
    async fn cancel_stops_the_work_in_progress_and_skips_the_queue() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        let (first, second) = {
            // Holding the card keeps the worker from getting anywhere with it.
            let _busy = alice.card();
            let first = rig.submit_read();
            let second = rig.submit_sign(ALICE_PIN);
            rig.worker.cancel(DESK);
            (first, second)
        };
        assert_eq!(
            rig.next().await,
            CardJobResult::Read {
                work: first,
                result: Err(CardReadFailure::CardRemoved)
            }
        );
        assert_eq!(
            rig.next().await,
            CardJobResult::Signed {
                work: second,
                result: Err(AuthFailure::CardRemoved)
            }
        );
        // Work submitted after the cancel runs, and no PIN try was spent.
        assert_eq!(rig.read().await.unwrap().1, Some(3));
    }

    #[tokio::test]
    async fn cancel_lets_go_of_the_card_kept_from_a_read() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("alice"));
        rig.read().await.unwrap();
        rig.worker.cancel(DESK);
        rig.readers.take_instructions();
        assert!(rig.sign(ALICE_PIN).await.is_ok());
        let instructions = rig.readers.take_instructions();
        assert_eq!(instructions.first(), Some(&Ins::Select));
        assert!(
            instructions.contains(&Ins::GetData),
            "a new connection reads the CHUID again: {instructions:?}"
        );
    }
}
