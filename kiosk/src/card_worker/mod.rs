//! The card thread: all of the kiosk's card I/O (reading badges, checking PINs, signing sign-in assertions) runs on one dedicated thread, so blocking PC/SC calls never run on the async runtime.
//!
//! Jobs go in through [`CardWorker::submit`] and answers come back on a tokio channel. A
//! read keeps its card connection (and the certificate it found) for the sign that follows
//! on the same reader, so a sign after a read is three APDUs: SELECT, VERIFY, GENERAL
//! AUTHENTICATE. Certificates are also cached in memory by the card's CHUID GUID, so a badge
//! tapped again skips reading its certificate. The connection is let go (with a card reset,
//! which forgets the verified PIN) after a signature, a failure other than a wrong PIN, a
//! cancel, or the next read on that reader.
//!
//! A renewed card keeps its GUID but has a new key and certificate, so a cached certificate
//! can be stale. Every signature is therefore checked on the spot against the certificate's
//! public key (microseconds, no APDU). When a cached certificate does not match what the card
//! signed (or the card refuses to sign with the cached key's algorithm), the entry is dropped,
//! the certificate is read from the card and the assertion signed again, within the same tap
//! and with the PIN still verified: the worker sees nothing of it.
//!
//! The module is cut by concern: this file holds the job protocol and the [`CardWorker`]
//! handle; `thread` the card thread (running jobs, keeping and letting go of connections);
//! `cancel` cancellation; `badge` reading a badge and signing with it; `pin` the PIN jobs;
//! `cache` the certificate cache; `failure` the one failure enum and what each failure shows.

mod badge;
mod cache;
mod cancel;
mod failure;
mod pin;
#[cfg(test)]
mod test_rig;
mod thread;

use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use pivtap_apdu::piv::{Pin, Puk};
use pivtap_protocol::wire::ChallengeResponse;
use tokio::sync::mpsc::UnboundedSender;

use self::cancel::Cancellation;
use self::thread::{Instruction, Worker};
use crate::core::{AuthFailure, CardReadFailure, CardSummary, PinWorkFailure, Step, WorkId};
use crate::readers::ReaderSource;

/// Card work for the card thread.
#[derive(Debug)]
pub enum CardJob {
    /// SELECT the PIV application, read the CHUID and the 9A certificate (from the cache when
    /// the CHUID GUID is known), and the PIN tries left when the card tells them without a PIN.
    /// Answered with [`CardJobResult::Read`].
    Read {
        /// Echoed in the answer.
        work: WorkId,
        /// The reader holding the card.
        reader: String,
    },
    /// SELECT (plus the CHUID and certificate when this card was not just read), VERIFY the
    /// PIN, then sign the assertion for `challenge` with the 9A key. Reports
    /// [`CardJobResult::Progress`] ([`Step::Verifying`], [`Step::Signing`]) as it goes and
    /// answers with [`CardJobResult::Signed`].
    Sign {
        /// Echoed in the answers.
        work: WorkId,
        /// The reader holding the card.
        reader: String,
        /// The PIN; dropped (zeroized) as soon as VERIFY is sent.
        pin: Pin,
        /// The server's challenge: its nonce and audience go into the assertion.
        challenge: ChallengeResponse,
        /// This device's id, as the server knows it.
        device: String,
    },
    /// SELECT; when `expect` is given, check that the card's 9A certificate has that SHA-256
    /// (the signed-in worker's badge, not someone else's); CHANGE REFERENCE DATA for the PIN.
    /// Answered with [`CardJobResult::PinWork`].
    ChangePin {
        /// Echoed in the answer.
        work: WorkId,
        /// The reader holding the card.
        reader: String,
        /// The current PIN.
        current: Pin,
        /// The new PIN.
        new: Pin,
        /// The SHA-256 (lower-case hex) of the certificate the session signed in with.
        expect: Option<String>,
    },
    /// SELECT; when a badge was found blocked on this card thread, check that this is that badge
    /// (its 9A certificate's SHA-256; another badge gets `OtherCard` and no PUK try is spent);
    /// then RESET RETRY COUNTER: the PUK sets a new PIN and unblocks it. Answered with
    /// [`CardJobResult::PinWork`].
    UnblockPin {
        /// Echoed in the answer.
        work: WorkId,
        /// The reader holding the card.
        reader: String,
        /// The PUK.
        puk: Puk,
        /// The new PIN.
        new_pin: Pin,
    },
}

impl CardJob {
    fn reader(&self) -> &str {
        match self {
            CardJob::Read { reader, .. }
            | CardJob::Sign { reader, .. }
            | CardJob::ChangePin { reader, .. }
            | CardJob::UnblockPin { reader, .. } => reader,
        }
    }
}

/// What the card thread reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardJobResult {
    /// The answer to [`CardJob::Read`]: whose card it is and the PIN tries left (`None` when
    /// the card does not tell, e.g. over a contactless interface).
    Read {
        /// The job's work id.
        work: WorkId,
        /// The card's summary and PIN tries left, or why it could not be read.
        result: Result<(CardSummary, Option<u8>), CardReadFailure>,
    },
    /// [`CardJob::Sign`] reached this step.
    Progress {
        /// The job's work id.
        work: WorkId,
        /// The step now under way.
        step: Step,
    },
    /// The answer to [`CardJob::Sign`]: the compact JWS assertion to post to the server.
    Signed {
        /// The job's work id.
        work: WorkId,
        /// The assertion, or why there is none.
        result: Result<String, AuthFailure>,
    },
    /// The answer to [`CardJob::ChangePin`] and [`CardJob::UnblockPin`].
    PinWork {
        /// The job's work id.
        work: WorkId,
        /// Whether the card took the new PIN, or why not.
        result: Result<(), PinWorkFailure>,
    },
}

/// The card thread. Dropping it cancels the work in progress (it stops at its next APDU),
/// answers the jobs still queued with "card removed", and waits for the thread to end.
pub struct CardWorker {
    /// `None` only while dropping: closing the channel ends the thread.
    instructions: Option<Sender<Instruction>>,
    cancellation: Arc<Cancellation>,
    thread: Option<JoinHandle<()>>,
}

impl CardWorker {
    /// Starts the card thread. It connects to cards through `readers` and sends every
    /// answer and progress report to `results`.
    ///
    /// # Panics
    /// When the operating system cannot start a thread.
    #[must_use]
    pub fn start(readers: Arc<dyn ReaderSource>, results: UnboundedSender<CardJobResult>) -> Self {
        let (sender, receiver) = mpsc::channel();
        let worker = Worker::new(readers, results);
        let thread = std::thread::Builder::new()
            .name("pivtap-card-worker".to_owned())
            .spawn(move || worker.run(receiver))
            .expect("the operating system starts the card thread");
        CardWorker {
            instructions: Some(sender),
            cancellation: Arc::new(Cancellation::default()),
            thread: Some(thread),
        }
    }

    /// Queues `job`; jobs run one at a time, in order.
    pub fn submit(&self, job: CardJob) {
        let reader = job.reader().to_owned();
        self.cancellation.submit(&reader, |ticket| {
            self.send(Instruction::Run { job, ticket })
        });
    }

    /// Abandons the work on `reader`'s card and lets go of the card: a job in progress stops
    /// at its next APDU and jobs queued for that reader are skipped, each answered as if the
    /// card had been removed ([`CardReadFailure::CardRemoved`], [`AuthFailure::CardRemoved`]).
    /// Jobs submitted afterwards run normally.
    pub fn cancel(&self, reader: &str) {
        self.cancellation.cancel(reader, || {
            self.send(Instruction::Release {
                reader: reader.to_owned(),
            });
        });
    }

    fn send(&self, instruction: Instruction) {
        let sent = self
            .instructions
            .as_ref()
            .is_some_and(|instructions| instructions.send(instruction).is_ok());
        if !sent {
            tracing::error!("the card thread has stopped; card work is not done");
        }
    }
}

impl Drop for CardWorker {
    fn drop(&mut self) {
        self.cancellation.stop();
        self.instructions = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the card thread panicked");
        }
    }
}

impl std::fmt::Debug for CardWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardWorker")
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card_worker::test_rig::Rig;
    use crate::readers::tests::fixture_card;

    #[tokio::test]
    async fn dropping_the_worker_ends_the_thread() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("alice"));
        rig.submit_read();
        drop(rig.worker);
        // Every answer still queued is delivered, then the channel closes.
        while let Some(result) = rig.results.recv().await {
            assert!(matches!(result, CardJobResult::Read { .. }), "{result:?}");
        }
    }
}
