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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use pivtap_apdu::piv::objects::chuid::Chuid;
use pivtap_apdu::piv::{Algorithm, KeyReference, Pin, Puk};
use pivtap_card::{
    CardBackend, CardTransaction, LinkCapabilities, PivError, PivSession, TransportError,
};
use pivtap_server_client::assertion::{AssertionDraft, card_signature_verifies};
use pivtap_server_client::certificate::{CertificateError, CertificateFacts, KeyKind};
use pivtap_server_client::jose::JwsAlgorithm;

use crate::card_signer::card_signature;
use pivtap_server_client::wire::{AssertionPayload, ChallengeResponse};
use time::OffsetDateTime;
use tokio::sync::mpsc::UnboundedSender;

use crate::core::{AuthFailure, CardReadFailure, CardSummary, PinWorkFailure, Step, WorkId};
use crate::readers::ReaderSource;

/// The key that signs sign-in assertions: PIV authentication.
const SIGNING_SLOT: KeyReference = KeyReference::PivAuthentication;
/// How many card certificates the cache keeps; the least recently used one goes first.
const CACHED_CERTIFICATES: usize = 64;

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

pub use crate::card_signer::signing_algorithms;

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
        let worker = Worker {
            readers,
            results,
            held: HashMap::new(),
            cache: CertificateCache::default(),
            blocked_badge: None,
        };
        let thread = thread::Builder::new()
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
        // Under the lock, so that the channel's order matches the cancels' order.
        let generations = self.cancellation.lock();
        let reader = job.reader().to_owned();
        let generation = generations.get(&reader).copied().unwrap_or_default();
        let ticket = Ticket {
            cancellation: Arc::clone(&self.cancellation),
            reader,
            generation,
        };
        self.send(Instruction::Run { job, ticket });
    }

    /// Abandons the work on `reader`'s card and lets go of the card: a job in progress stops
    /// at its next APDU and jobs queued for that reader are skipped, each answered as if the
    /// card had been removed ([`CardReadFailure::CardRemoved`], [`AuthFailure::CardRemoved`]).
    /// Jobs submitted afterwards run normally.
    pub fn cancel(&self, reader: &str) {
        let mut generations = self.cancellation.lock();
        let generation = generations.entry(reader.to_owned()).or_default();
        *generation = generation.wrapping_add(1);
        self.send(Instruction::Release {
            reader: reader.to_owned(),
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
        self.cancellation.stopping.store(true, Ordering::SeqCst);
        self.instructions = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the card thread panicked");
            }
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

/// What the card thread is told.
enum Instruction {
    /// Do this job, unless its ticket is cancelled by then.
    Run { job: CardJob, ticket: Ticket },
    /// Let go of the card connection kept for this reader.
    Release { reader: String },
}

/// Which work is cancelled: each reader's cancel generation, and whether everything stops.
#[derive(Default)]
struct Cancellation {
    generations: Mutex<HashMap<String, u64>>,
    stopping: AtomicBool,
}

impl Cancellation {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A job's claim to run: valid while no cancel for its reader came after its submission.
struct Ticket {
    cancellation: Arc<Cancellation>,
    reader: String,
    generation: u64,
}

impl Ticket {
    /// Fails as a removed card would once the job is cancelled.
    fn check(&self) -> Result<(), TransportError> {
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
struct Cancellable<'a> {
    backend: &'a mut dyn CardBackend,
    ticket: &'a Ticket,
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

/// Why card work failed, for the log; [`read_failure`] and [`auth_failure`] say what the
/// kiosk shows.
#[derive(Debug, thiserror::Error)]
enum CardProblem {
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

impl From<TransportError> for CardProblem {
    fn from(error: TransportError) -> Self {
        CardProblem::Card(PivError::Transport(error))
    }
}

impl CardProblem {
    /// Whether the card (or its reader) went away, or the work was cancelled.
    fn is_removal(&self) -> bool {
        matches!(
            self,
            CardProblem::Card(PivError::Transport(
                TransportError::CardRemoved
                    | TransportError::NoCard
                    | TransportError::CardReset
                    | TransportError::ReaderUnavailable { .. }
            ))
        )
    }
}

fn read_failure(problem: &CardProblem) -> CardReadFailure {
    match problem {
        _ if problem.is_removal() => CardReadFailure::CardRemoved,
        CardProblem::Card(
            PivError::NoPivApplication | PivError::ObjectNotFound { .. } | PivError::NoKey { .. },
        )
        | CardProblem::UnsupportedKey(_) => CardReadFailure::NotPiv,
        CardProblem::Card(_)
        | CardProblem::Certificate(_)
        | CardProblem::KeyMismatch
        | CardProblem::OtherCard => CardReadFailure::Unreadable,
    }
}

fn auth_failure(problem: &CardProblem) -> AuthFailure {
    match problem {
        _ if problem.is_removal() => AuthFailure::CardRemoved,
        CardProblem::Card(PivError::WrongPin { retries_left }) => AuthFailure::WrongPin {
            tries_left: *retries_left,
        },
        CardProblem::Card(PivError::PinBlocked) => AuthFailure::PinBlocked,
        CardProblem::Card(_)
        | CardProblem::Certificate(_)
        | CardProblem::UnsupportedKey(_)
        | CardProblem::KeyMismatch
        | CardProblem::OtherCard => AuthFailure::CardError,
    }
}

fn pin_work_failure(problem: &CardProblem) -> PinWorkFailure {
    match problem {
        _ if problem.is_removal() => PinWorkFailure::CardRemoved,
        CardProblem::Card(PivError::WrongPin { retries_left }) => PinWorkFailure::WrongPin {
            tries_left: *retries_left,
        },
        CardProblem::Card(PivError::PinBlocked) => PinWorkFailure::PinBlocked,
        CardProblem::Card(PivError::WrongPuk { retries_left }) => PinWorkFailure::WrongPuk {
            tries_left: *retries_left,
        },
        CardProblem::Card(PivError::PukBlocked) => PinWorkFailure::PukBlocked,
        CardProblem::OtherCard => PinWorkFailure::OtherCard,
        CardProblem::Card(_)
        | CardProblem::Certificate(_)
        | CardProblem::UnsupportedKey(_)
        | CardProblem::KeyMismatch => PinWorkFailure::CardError,
    }
}

/// A card's authentication certificate and how its key signs.
struct CardCertificate {
    /// The certificate (`der`), its SHA-256 (`fingerprint`) and holder (`common_name`).
    facts: CertificateFacts,
    key: Algorithm,
    algorithm: JwsAlgorithm,
    /// The public key as signature verification takes it: for RSA the DER `RSAPublicKey`,
    /// for EC the SEC1 point (the content of the SPKI's BIT STRING).
    public_key: Vec<u8>,
}

impl CardCertificate {
    fn from_der(der: &[u8]) -> Result<Self, CardProblem> {
        let (facts, public_key) = CertificateFacts::with_public_key(der)?;
        let (key, algorithm) =
            signing_algorithms(facts.key).ok_or(CardProblem::UnsupportedKey(facts.key))?;
        Ok(CardCertificate {
            facts,
            key,
            algorithm,
            public_key,
        })
    }

    /// Whether `signature` (JOSE form: RSA raw, ECDSA `r || s`) over `message` verifies with
    /// this certificate's public key, exactly as the server will check it.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        card_signature_verifies(self.algorithm.name(), &self.public_key, message, signature)
    }
}

/// A card's certificate as the card thread knows it for one tap, and where it came from.
#[derive(Clone)]
struct KnownCertificate {
    certificate: Arc<CardCertificate>,
    /// The card's CHUID GUID, when it has one that can key the cache.
    guid: Option<[u8; 16]>,
    /// Whether it came from the cache (and may be stale: the card may have been renewed)
    /// rather than from the card during this tap.
    from_cache: bool,
}

/// Certificates by the CHUID GUID of their card, in memory only, least recently used first,
/// and whether the card's PIN was last seen right (so that its tries need not be read).
#[derive(Default)]
struct CertificateCache {
    entries: VecDeque<CacheEntry>,
}

struct CacheEntry {
    guid: [u8; 16],
    certificate: Arc<CardCertificate>,
    /// The last VERIFY this kiosk sent the card succeeded: its PIN tries are full, unless
    /// someone got the PIN wrong elsewhere since.
    pin_known_good: bool,
}

impl CertificateCache {
    fn get(&mut self, guid: &[u8; 16]) -> Option<Arc<CardCertificate>> {
        let index = self.entries.iter().position(|entry| entry.guid == *guid)?;
        let entry = self.entries.remove(index)?;
        let certificate = Arc::clone(&entry.certificate);
        self.entries.push_back(entry);
        Some(certificate)
    }

    fn remove(&mut self, guid: &[u8; 16]) {
        self.entries.retain(|entry| entry.guid != *guid);
    }

    fn put(&mut self, guid: [u8; 16], certificate: Arc<CardCertificate>) {
        self.remove(&guid);
        if self.entries.len() >= CACHED_CERTIFICATES {
            self.entries.pop_front();
        }
        self.entries.push_back(CacheEntry {
            guid,
            certificate,
            pin_known_good: false,
        });
    }

    fn pin_known_good(&self, guid: &[u8; 16]) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.guid == *guid && entry.pin_known_good)
    }

    /// Records how the last VERIFY of the card with this GUID went.
    fn set_pin_known_good(&mut self, guid: &[u8; 16], good: bool) {
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.guid == *guid) {
            entry.pin_known_good = good;
        }
    }
}

/// Who a card belongs to, as read from it.
struct Identity {
    /// The CHUID GUID in its 8-4-4-4-12 form.
    card_guid: Option<String>,
    certificate: KnownCertificate,
}

/// Reads the CHUID, then the 9A certificate unless the cache knows the card's GUID.
fn identify(
    session: &mut PivSession<'_>,
    cache: &mut CertificateCache,
) -> Result<Identity, CardProblem> {
    // An all-zero GUID names no card in particular, so it is not a cache key.
    let chuid = read_chuid(session)?.filter(|chuid| chuid.guid != [0; 16]);
    let guid = chuid.as_ref().map(|chuid| chuid.guid);
    let cached = guid.and_then(|guid| cache.get(&guid));
    let certificate = match cached {
        Some(certificate) => {
            tracing::debug!(
                fingerprint = %certificate.facts.fingerprint,
                "the card's certificate comes from the cache"
            );
            KnownCertificate {
                certificate,
                guid,
                from_cache: true,
            }
        }
        None => read_certificate(session, cache, guid)?,
    };
    Ok(Identity {
        card_guid: chuid.as_ref().map(Chuid::guid_hex),
        certificate,
    })
}

/// Reads the 9A certificate from the card and caches it under `guid`.
fn read_certificate(
    session: &mut PivSession<'_>,
    cache: &mut CertificateCache,
    guid: Option<[u8; 16]>,
) -> Result<KnownCertificate, CardProblem> {
    let certificate = Arc::new(CardCertificate::from_der(
        &session.certificate(SIGNING_SLOT)?,
    )?);
    if let Some(guid) = guid {
        cache.put(guid, Arc::clone(&certificate));
    }
    Ok(KnownCertificate {
        certificate,
        guid,
        from_cache: false,
    })
}

/// Checks that the card's 9A certificate has the SHA-256 `expected`; a cached certificate
/// that differs is read again first (the card may have been renewed since it was cached).
fn check_card(
    session: &mut PivSession<'_>,
    cache: &mut CertificateCache,
    expected: &str,
) -> Result<(), CardProblem> {
    let mut known = identify(session, cache)?.certificate;
    if known.certificate.facts.fingerprint != expected && known.from_cache {
        known = read_certificate(session, cache, known.guid)?;
    }
    if known.certificate.facts.fingerprint == expected {
        Ok(())
    } else {
        Err(CardProblem::OtherCard)
    }
}

/// The CHUID, or `None` when the card has none (or an unreadable one); only a transport
/// failure is an error.
fn read_chuid(session: &mut PivSession<'_>) -> Result<Option<Chuid>, PivError> {
    match session.chuid() {
        Ok(chuid) => Ok(Some(chuid)),
        Err(error @ PivError::Transport(_)) => Err(error),
        Err(error) => {
            tracing::debug!(%error, "no usable CHUID; the certificate is not cached");
            Ok(None)
        }
    }
}

/// The PIN tries left, or `None` when the card does not tell without a PIN (contactless
/// cards refuse); only a transport failure is an error.
fn pin_tries_left(session: &mut PivSession<'_>) -> Result<Option<u8>, PivError> {
    match session.pin_retries() {
        Ok(tries) => Ok(tries),
        Err(error @ PivError::Transport(_)) => Err(error),
        Err(error) => {
            tracing::debug!(%error, "the card does not tell its PIN tries");
            Ok(None)
        }
    }
}

/// What [`CardJob::Sign`] asks for, apart from its reader.
struct SignRequest {
    work: WorkId,
    pin: Pin,
    challenge: ChallengeResponse,
    device: String,
}

/// A card connection kept from a read, for the sign that follows on the same reader.
struct HeldCard {
    backend: Box<dyn CardBackend>,
    certificate: KnownCertificate,
}

/// The card thread's state.
struct Worker {
    readers: Arc<dyn ReaderSource>,
    results: UnboundedSender<CardJobResult>,
    held: HashMap<String, HeldCard>,
    cache: CertificateCache,
    /// The SHA-256 of the certificate of the badge last found with a blocked PIN: an unblock
    /// spends a PUK try on that badge only, never on another one tapped instead.
    blocked_badge: Option<String>,
}

impl Worker {
    /// Runs instructions until the [`CardWorker`] is dropped.
    fn run(mut self, instructions: Receiver<Instruction>) {
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
                let result = self.read(&reader, ticket).map_err(|problem| {
                    tracing::info!(reader, error = %problem, "reading the card failed");
                    read_failure(&problem)
                });
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
                    work,
                    pin,
                    challenge,
                    device,
                };
                let result = self.sign(&reader, request, ticket).map_err(|problem| {
                    tracing::info!(reader, error = %problem, "signing on the card failed");
                    auth_failure(&problem)
                });
                self.report(CardJobResult::Signed { work, result });
            }
            CardJob::ChangePin {
                work,
                reader,
                current,
                new,
                expect,
            } => {
                let result = self
                    .on_fresh_connection(&reader, ticket, |session, cache| {
                        if let Some(expected) = expect {
                            check_card(session, cache, &expected)?;
                        }
                        Ok(session.change_pin(&current, &new)?)
                    })
                    .map_err(|problem| {
                        tracing::info!(reader, error = %problem, "changing the PIN failed");
                        pin_work_failure(&problem)
                    });
                self.report(CardJobResult::PinWork { work, result });
            }
            CardJob::UnblockPin {
                work,
                reader,
                puk,
                new_pin,
            } => {
                let expected = self.blocked_badge.clone();
                let result = self
                    .on_fresh_connection(&reader, ticket, |session, cache| {
                        if let Some(expected) = expected {
                            check_card(session, cache, &expected)?;
                        }
                        Ok(session.unblock_pin(&puk, &new_pin)?)
                    })
                    .map_err(|problem| {
                        tracing::info!(reader, error = %problem, "unblocking the PIN failed");
                        pin_work_failure(&problem)
                    });
                if result.is_ok() {
                    self.blocked_badge = None;
                }
                self.report(CardJobResult::PinWork { work, result });
            }
        }
    }

    /// Runs `work` in a PIV session on a new connection to `reader`'s card (one kept from a
    /// read is stale for this), then lets go of the card.
    fn on_fresh_connection(
        &mut self,
        reader: &str,
        ticket: &Ticket,
        work: impl FnOnce(&mut PivSession<'_>, &mut CertificateCache) -> Result<(), CardProblem>,
    ) -> Result<(), CardProblem> {
        self.held.remove(reader);
        ticket.check()?;
        let mut backend = self.readers.connect(reader)?;
        let mut card = Cancellable {
            backend: backend.as_mut(),
            ticket,
        };
        let mut session = PivSession::open(&mut card)?;
        work(&mut session, &mut self.cache)
    }

    fn report(&self, result: CardJobResult) {
        // Nobody listening means the kiosk is stopping: there is no one left to tell.
        let _ = self.results.send(result);
    }

    fn read(
        &mut self,
        reader: &str,
        ticket: &Ticket,
    ) -> Result<(CardSummary, Option<u8>), CardProblem> {
        // A new tap: a connection kept from the last one is stale.
        self.held.remove(reader);
        ticket.check()?;
        let mut backend = self.readers.connect(reader)?;
        let (identity, tries_left) = {
            let mut card = Cancellable {
                backend: backend.as_mut(),
                ticket,
            };
            let started = std::time::Instant::now();
            let mut session = PivSession::open(&mut card)?;
            let identity = identify(&mut session, &mut self.cache)?;
            // A badge whose PIN was right the last time it was here: its tries are full
            // (wrong PINs elsewhere aside, which VERIFY will tell), so the APDU is saved.
            let known_good = identity.certificate.from_cache
                && identity
                    .certificate
                    .guid
                    .is_some_and(|guid| self.cache.pin_known_good(&guid));
            let tries_left = if known_good {
                None
            } else {
                pin_tries_left(&mut session)?
            };
            log_exchange("read", &session, started);
            (identity, tries_left)
        };
        let summary = CardSummary {
            holder_name: identity.certificate.certificate.facts.common_name.clone(),
            card_guid: identity.card_guid,
        };
        let certificate = identity.certificate;
        if tries_left == Some(0) {
            self.blocked_badge = Some(certificate.certificate.facts.fingerprint.clone());
        }
        self.held.insert(
            reader.to_owned(),
            HeldCard {
                backend,
                certificate,
            },
        );
        Ok((summary, tries_left))
    }

    fn sign(
        &mut self,
        reader: &str,
        request: SignRequest,
        ticket: &Ticket,
    ) -> Result<String, CardProblem> {
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
        let signed = self.sign_on_card(backend.as_mut(), &mut certificate, request, ticket);
        if let Some(guid) = certificate.as_ref().and_then(|known| known.guid) {
            match &signed {
                Ok(_) => self.cache.set_pin_known_good(&guid, true),
                Err(CardProblem::Card(PivError::WrongPin { .. } | PivError::PinBlocked)) => {
                    self.cache.set_pin_known_good(&guid, false);
                }
                Err(_) => {}
            }
        }
        if let (
            Err(CardProblem::Card(
                PivError::PinBlocked
                | PivError::WrongPin {
                    retries_left: Some(0),
                },
            )),
            Some(known),
        ) = (&signed, &certificate)
        {
            self.blocked_badge = Some(known.certificate.facts.fingerprint.clone());
        }
        // After a wrong PIN the holder may try again at once: keep the card for that.
        // Otherwise the connection goes, and with it the verified PIN.
        if let (Err(CardProblem::Card(PivError::WrongPin { .. })), Some(certificate)) =
            (&signed, certificate)
        {
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

    /// SELECT, the certificate unless `certificate` has it, VERIFY, and the signature,
    /// checked against the certificate; a stale cached certificate is replaced by the card's
    /// and the assertion signed again. `certificate` is left holding the card's certificate
    /// once known.
    fn sign_on_card(
        &mut self,
        backend: &mut dyn CardBackend,
        certificate: &mut Option<KnownCertificate>,
        request: SignRequest,
        ticket: &Ticket,
    ) -> Result<String, CardProblem> {
        let SignRequest {
            work,
            pin,
            challenge,
            device,
        } = request;
        let mut card = Cancellable { backend, ticket };
        let started = std::time::Instant::now();
        let mut session = PivSession::open(&mut card)?;
        let signer = match certificate {
            Some(known) => known.clone(),
            None => certificate
                .insert(identify(&mut session, &mut self.cache)?.certificate)
                .clone(),
        };
        self.report(CardJobResult::Progress {
            work,
            step: Step::Verifying,
        });
        let verified = session.verify_pin(&pin);
        drop(pin);
        verified?;
        self.report(CardJobResult::Progress {
            work,
            step: Step::Signing,
        });
        let payload = AssertionPayload::for_challenge(
            &challenge,
            device,
            SIGNING_SLOT,
            OffsetDateTime::now_utc().unix_timestamp(),
        );
        let signed = match sign_assertion(&mut session, &signer.certificate, payload.clone()) {
            Err(problem) if signer.from_cache && hints_at_a_new_key(&problem) => {
                // The card was most likely renewed since its certificate was cached: read
                // the certificate it holds now and sign again (the PIN is still verified).
                tracing::info!(
                    error = %problem,
                    stale = %signer.certificate.facts.fingerprint,
                    "the cached certificate does not fit the card's key; reading it again"
                );
                if let Some(guid) = signer.guid {
                    self.cache.remove(&guid);
                }
                let fresh = certificate.insert(read_certificate(
                    &mut session,
                    &mut self.cache,
                    signer.guid,
                )?);
                sign_assertion(&mut session, &fresh.certificate, payload)
            }
            signed => signed,
        };
        // Some cards keep a verified PIN across the reset that ends the connection: log it
        // out, so the badge is not left PIN-verified for other programs. A badge that leaves
        // during the log-out left before its tap was done.
        let logged_out = session.log_out_pin();
        log_exchange("sign", &session, started);
        let assertion = signed?;
        logged_out?;
        Ok(assertion)
    }
}

/// Debug-logs what a card job exchanged: APDUs, bytes, and the time from opening the
/// session to the last response (`pivtap kiosk` with `RUST_LOG=pivtap_kiosk=debug`).
fn log_exchange(job: &str, session: &PivSession<'_>, started: std::time::Instant) {
    let stats = session.stats();
    tracing::debug!(
        job,
        apdus = stats.apdus,
        bytes_sent = stats.bytes_sent,
        bytes_received = stats.bytes_received,
        card_ms = started.elapsed().as_secs_f64() * 1e3,
        "card exchange"
    );
}

/// Signs the assertion for `payload` with the card's 9A key, as `certificate` says the key
/// signs, and checks the signature with the certificate's public key.
fn sign_assertion(
    session: &mut PivSession<'_>,
    certificate: &CardCertificate,
    payload: AssertionPayload,
) -> Result<String, CardProblem> {
    let draft = AssertionDraft::new(certificate.algorithm, &certificate.facts.der, payload);
    draft.sign(|algorithm, signing_input| {
        let signature = card_signature(
            session,
            SIGNING_SLOT,
            certificate.key,
            algorithm,
            signing_input,
        )?;
        if certificate.verifies(signing_input, &signature) {
            Ok(signature)
        } else {
            Err(CardProblem::KeyMismatch)
        }
    })
}

/// Whether a failed signature suggests the certificate names another key than the card's:
/// the signature does not verify, or the card refuses the certificate's algorithm (its new
/// key has another one) or gives an answer of the wrong shape. Not a removal, nor a PIN or
/// access problem.
fn hints_at_a_new_key(problem: &CardProblem) -> bool {
    matches!(
        problem,
        CardProblem::KeyMismatch
            | CardProblem::Card(
                PivError::Card { .. } | PivError::Signature(_) | PivError::Malformed { .. }
            )
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use pivtap_apdu::piv::Ins;
    use pivtap_server_client::assertion::{AssertionVerifier, VerifierConfig};
    use pivtap_vcard::image::CardImage;
    use pivtap_vcard::{
        CardOptions, Interface, NewCard, Quirk, Quirks, VirtualCard, VirtualCardBackend,
    };
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;
    use crate::core::{CoreConfig, Effect, Event, Kiosk};
    use crate::readers::tests::fixture_card;
    use crate::readers::{ReaderUpdate, ReaderWatch, VirtualReaders};

    const DESK: &str = "Desk reader";
    const AUDIENCE: &str = "https://auth.example.test";
    const NONCE: &str = "q2Vv8y3a1lL3m8W4k9dQeXh7c2VjcmV0LW5vbmNlLTMy";
    const DEVICE: &str = "kiosk-07";
    const ALICE_PIN: &str = "123456";
    const BOB_PIN: &str = "24681357";

    /// Virtual readers that record every command sent to their cards.
    #[derive(Clone, Default)]
    struct RecordingReaders {
        readers: VirtualReaders,
        commands: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl RecordingReaders {
        /// The commands sent since the last call.
        fn take(&self) -> Recorded {
            Recorded(std::mem::take(&mut *self.commands.lock().unwrap()))
        }

        /// The instructions sent since the last call.
        fn take_instructions(&self) -> Vec<Ins> {
            self.take().instructions()
        }
    }

    /// Commands sent to cards.
    struct Recorded(Vec<Vec<u8>>);

    impl Recorded {
        fn instructions(&self) -> Vec<Ins> {
            self.0.iter().map(|command| Ins::from(command[1])).collect()
        }

        /// How many commands read the 9A certificate (GET DATA 5FC105).
        fn certificate_reads(&self) -> usize {
            self.0
                .iter()
                .filter(|command| {
                    command[1] == 0xCB
                        && command
                            .windows(5)
                            .any(|tag| tag == [0x5C, 0x03, 0x5F, 0xC1, 0x05])
                })
                .count()
        }
    }

    impl ReaderSource for RecordingReaders {
        fn start(
            &self,
            updates: UnboundedSender<ReaderUpdate>,
        ) -> Result<ReaderWatch, TransportError> {
            self.readers.start(updates)
        }

        fn connect(&self, reader: &str) -> Result<Box<dyn CardBackend>, TransportError> {
            Ok(Box::new(RecordingBackend {
                inner: self.readers.connect(reader)?,
                commands: Arc::clone(&self.commands),
            }))
        }
    }

    struct RecordingBackend {
        inner: Box<dyn CardBackend>,
        commands: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl CardBackend for RecordingBackend {
        fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
            Ok(Box::new(RecordingTransaction {
                inner: self.inner.transaction()?,
                commands: &self.commands,
            }))
        }

        fn capabilities(&self) -> LinkCapabilities {
            self.inner.capabilities()
        }

        fn name(&self) -> String {
            self.inner.name()
        }
    }

    struct RecordingTransaction<'a> {
        inner: Box<dyn CardTransaction + 'a>,
        commands: &'a Mutex<Vec<Vec<u8>>>,
    }

    impl CardTransaction for RecordingTransaction<'_> {
        fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
            self.commands.lock().unwrap().push(command.to_vec());
            self.inner.transmit(command)
        }
    }

    /// A card worker over one virtual desk reader, with work ids from a real core.
    struct Rig {
        readers: RecordingReaders,
        worker: CardWorker,
        results: UnboundedReceiver<CardJobResult>,
        works: std::vec::IntoIter<WorkId>,
    }

    impl Rig {
        fn new() -> Self {
            let readers = RecordingReaders {
                readers: VirtualReaders::new(&[DESK]),
                ..RecordingReaders::default()
            };
            let (sender, results) = unbounded_channel();
            let worker = CardWorker::start(Arc::new(readers.clone()), sender);
            Rig {
                readers,
                worker,
                results,
                works: work_ids(16).into_iter(),
            }
        }

        fn tap(&self, card: &VirtualCardBackend) {
            self.readers.readers.remove(DESK);
            self.readers.readers.insert(DESK, card.clone());
        }

        fn submit_read(&mut self) -> WorkId {
            let work = self.works.next().unwrap();
            self.worker.submit(CardJob::Read {
                work,
                reader: DESK.to_owned(),
            });
            work
        }

        fn submit_sign(&mut self, pin: &str) -> WorkId {
            let work = self.works.next().unwrap();
            self.worker.submit(CardJob::Sign {
                work,
                reader: DESK.to_owned(),
                pin: Pin::new(pin).unwrap(),
                challenge: challenge(),
                device: DEVICE.to_owned(),
            });
            work
        }

        async fn next(&mut self) -> CardJobResult {
            tokio::time::timeout(Duration::from_secs(60), self.results.recv())
                .await
                .expect("the card thread answers in time")
                .expect("the card thread is running")
        }

        async fn read(&mut self) -> Result<(CardSummary, Option<u8>), CardReadFailure> {
            let work = self.submit_read();
            match self.next().await {
                CardJobResult::Read {
                    work: answered,
                    result,
                } if answered == work => result,
                other => panic!("expected the answer to the read, got {other:?}"),
            }
        }

        /// Signs and returns the answer, checking the progress reports on the way.
        async fn sign(&mut self, pin: &str) -> Result<String, AuthFailure> {
            let work = self.submit_sign(pin);
            let mut steps = Vec::new();
            loop {
                match self.next().await {
                    CardJobResult::Progress {
                        work: reported,
                        step,
                    } if reported == work => {
                        steps.push(step);
                    }
                    CardJobResult::Signed {
                        work: answered,
                        result,
                    } if answered == work => {
                        let expected: &[Step] = match &result {
                            Ok(_) => &[Step::Verifying, Step::Signing],
                            Err(AuthFailure::WrongPin { .. } | AuthFailure::PinBlocked) => {
                                &[Step::Verifying]
                            }
                            Err(_) => &steps,
                        };
                        assert_eq!(steps, expected, "progress reported for {result:?}");
                        return result;
                    }
                    other => panic!("expected progress or the signature, got {other:?}"),
                }
            }
        }
    }

    /// Work ids as the core hands them out: one per tap.
    fn work_ids(count: usize) -> Vec<WorkId> {
        let mut kiosk = Kiosk::new(CoreConfig::default());
        let now = Instant::now();
        let reader = || DESK.to_owned();
        kiosk.handle_event(Event::ReaderAdded { reader: reader() }, now);
        (0..count)
            .map(|_| {
                let effects = kiosk.handle_event(Event::CardPresent { reader: reader() }, now);
                kiosk.handle_event(Event::CardRemoved { reader: reader() }, now);
                effects
                    .into_iter()
                    .find_map(|effect| match effect {
                        Effect::ReadCard { work, .. } => Some(work),
                        _ => None,
                    })
                    .unwrap()
            })
            .collect()
    }

    fn challenge() -> ChallengeResponse {
        ChallengeResponse {
            nonce: NONCE.to_owned(),
            aud: AUDIENCE.to_owned(),
            expires_at: "2099-01-01T00:00:00Z".to_owned(),
        }
    }

    fn fixture_der(path: &str) -> Vec<u8> {
        let pem =
            std::fs::read(format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
    }

    /// Checks `assertion` as the server would and returns its algorithm.
    fn verify(assertion: &str) -> String {
        let verifier = AssertionVerifier::new(VerifierConfig::new(
            AUDIENCE,
            vec![fixture_der("ca/test-ca.pem")],
        ))
        .unwrap();
        let verified = verifier
            .verify(assertion, OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(verified.payload.nonce, NONCE);
        assert_eq!(verified.payload.device, DEVICE);
        assert_eq!(verified.payload.aud, AUDIENCE);
        assert_eq!(verified.payload.slot, "9a");
        verified.alg.name().to_owned()
    }

    fn guid_of(card: &VirtualCardBackend) -> String {
        let mut card = card.clone();
        PivSession::open(&mut card)
            .unwrap()
            .chuid()
            .unwrap()
            .guid_hex()
    }

    #[tokio::test]
    async fn a_read_tells_whose_card_it_is_and_the_pin_tries_left() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        let (summary, tries_left) = rig.read().await.unwrap();
        assert_eq!(summary.holder_name.as_deref(), Some("Alice Example"));
        assert_eq!(summary.card_guid, Some(guid_of(&alice)));
        assert_eq!(tries_left, Some(3));
        assert_eq!(rig.readers.take().certificate_reads(), 1);
    }

    #[tokio::test]
    async fn a_card_tapped_again_comes_from_the_cache() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        let first = rig.read().await.unwrap();
        assert_eq!(rig.readers.take().certificate_reads(), 1);
        rig.tap(&alice);
        assert_eq!(rig.read().await.unwrap(), first);
        let recorded = rig.readers.take();
        assert_eq!(recorded.certificate_reads(), 0);
        assert_eq!(
            recorded.instructions(),
            [Ins::Select, Ins::GetData, Ins::Verify],
            "SELECT, CHUID, PIN status"
        );
    }

    #[tokio::test]
    async fn a_badge_that_signed_in_here_is_read_again_without_its_pin_tries() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.read().await.unwrap();
        rig.sign(ALICE_PIN).await.unwrap();
        rig.readers.take_instructions();

        // The repeat tap: SELECT and CHUID to know the badge, nothing else until the PIN.
        rig.tap(&alice);
        let (summary, tries_left) = rig.read().await.unwrap();
        assert_eq!(summary.holder_name.as_deref(), Some("Alice Example"));
        assert_eq!(tries_left, None, "not read");
        assert_eq!(rig.sign(ALICE_PIN).await.map(|_| ()), Ok(()));
        assert_eq!(
            rig.readers.take_instructions(),
            [
                Ins::Select,
                Ins::GetData,
                Ins::Select,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ],
            "a repeat tap: five APDUs, and the PIN's log-out"
        );

        // After a wrong PIN the tries are worth showing again at the next tap.
        rig.tap(&alice);
        rig.read().await.unwrap();
        assert_eq!(
            rig.sign("654321").await,
            Err(AuthFailure::WrongPin {
                tries_left: Some(2)
            })
        );
        rig.tap(&alice);
        let (_, tries_left) = rig.read().await.unwrap();
        assert_eq!(tries_left, Some(2));
    }

    #[tokio::test]
    async fn a_known_badge_blocked_elsewhere_is_found_blocked_by_its_verify_and_can_be_unblocked() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.read().await.unwrap();
        rig.sign(ALICE_PIN).await.unwrap();
        // Three wrong PINs on another device: this kiosk does not know.
        {
            let mut elsewhere = alice.clone();
            let mut session = PivSession::open(&mut elsewhere).unwrap();
            for _ in 0..3 {
                let _ = session.verify_pin(&Pin::new("000000").unwrap());
            }
            assert_eq!(session.pin_retries().unwrap(), Some(0));
        }
        rig.tap(&alice);
        assert_eq!(rig.read().await.unwrap().1, None, "tries not read");
        assert_eq!(rig.sign(ALICE_PIN).await, Err(AuthFailure::PinBlocked));
        // Found blocked by its VERIFY: the PUK may now unblock this badge, and the next tap
        // reads the tries again.
        assert_eq!(rig.unblock("12345678", "240913").await, Ok(()));
        rig.tap(&alice);
        assert_eq!(rig.read().await.unwrap().1, Some(3));
        assert!(rig.sign("240913").await.is_ok());
    }

    #[tokio::test]
    async fn a_sign_after_a_read_is_three_apdus_and_a_log_out_and_the_server_accepts_it() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("alice"));
        rig.read().await.unwrap();
        rig.readers.take_instructions();
        let assertion = rig.sign(ALICE_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "RS256");
        assert_eq!(
            rig.readers.take_instructions(),
            [
                Ins::Select,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ]
        );
    }

    #[tokio::test]
    async fn a_sign_without_a_read_reads_the_card_first() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("bob"));
        let assertion = rig.sign(BOB_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "ES256");
        assert_eq!(rig.readers.take().certificate_reads(), 1);

        // Tapped again: the certificate comes from the cache.
        rig.tap(&fixture_card("bob"));
        let assertion = rig.sign(BOB_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "ES256");
        assert_eq!(
            rig.readers.take_instructions(),
            [
                Ins::Select,
                Ins::GetData,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ]
        );
    }

    #[tokio::test]
    async fn after_signing_the_card_no_longer_holds_the_verified_pin() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.sign(ALICE_PIN).await.unwrap();
        let mut card = alice.clone();
        let mut session = PivSession::open(&mut card).unwrap();
        assert_eq!(session.pin_retries().unwrap(), Some(3), "not verified");
    }

    #[tokio::test]
    async fn a_badge_that_keeps_its_pin_across_reset_is_logged_out_after_signing() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        alice
            .card()
            .set_quirks(Quirks::NONE.with(Quirk::KeepPinOnReset));
        rig.tap(&alice);
        rig.sign(ALICE_PIN).await.unwrap();
        let mut card = alice.clone();
        let mut session = PivSession::open(&mut card).unwrap();
        assert_eq!(
            session.pin_retries().unwrap(),
            Some(3),
            "another program does not find the PIN verified"
        );
    }

    #[tokio::test]
    async fn a_plain_6300_is_a_wrong_pin_with_the_tries_unknown() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        alice
            .card()
            .set_quirks(Quirks::NONE.with(Quirk::PlainWrongPinStatus));
        rig.tap(&alice);
        assert_eq!(
            rig.sign("000000").await,
            Err(AuthFailure::WrongPin { tries_left: None })
        );
        assert_eq!(rig.sign(ALICE_PIN).await.map(drop), Ok(()));
    }

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
        for _ in 0..3 {
            assert!(rig.sign("000000").await.is_err());
        }
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

    fn fixture_image(name: &str) -> CardImage {
        CardImage::load(format!(
            "{}/../fixtures/cards/{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// The image of `card` renewed: same card (serial, CHUID GUID, PIN), with the 9A key and
    /// certificate of `keys_from` (a fixture whose key is another one, issued by the same CA).
    fn renewed_image(card: &str, keys_from: &str) -> VirtualCard {
        let mut image = fixture_image(card);
        let donor = fixture_image(keys_from);
        let tag = SIGNING_SLOT.certificate_object().unwrap();
        image.keys = donor.keys.clone();
        let certificate = donor.objects.iter().find(|o| o.tag == tag).unwrap().clone();
        image.objects.retain(|object| object.tag != tag);
        image.objects.push(certificate);
        VirtualCard::from_image(&image).unwrap()
    }

    /// Renews `card` in place: its 9A key and certificate become those of `keys_from`.
    fn renew(card: &VirtualCardBackend, name: &str, keys_from: &str) {
        *card.card() = renewed_image(name, keys_from);
    }

    /// The common name of the certificate an assertion carries.
    fn signer_of(assertion: &str) -> String {
        let verifier = AssertionVerifier::new(VerifierConfig::new(
            AUDIENCE,
            vec![fixture_der("ca/test-ca.pem")],
        ))
        .unwrap();
        let verified = verifier
            .verify(assertion, OffsetDateTime::now_utc())
            .unwrap();
        verified.certificate.common_name.unwrap()
    }

    #[tokio::test]
    async fn a_renewed_card_signs_in_on_its_first_tap_after_one_more_certificate_read() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        let guid = guid_of(&alice);
        rig.tap(&alice);
        rig.read().await.unwrap();
        rig.sign(ALICE_PIN).await.unwrap();
        rig.readers.take();

        // Renewed with another RSA-2048 key (Carol's): same GUID, same algorithm.
        renew(&alice, "alice", "carol");
        assert_eq!(guid_of(&alice), guid, "renewal keeps the CHUID");
        rig.tap(&alice);
        let (summary, _) = rig.read().await.unwrap();
        assert_eq!(
            summary.holder_name.as_deref(),
            Some("Alice Example"),
            "the read still comes from the (stale) cache"
        );
        rig.readers.take();
        let assertion = rig.sign(ALICE_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "RS256");
        assert_eq!(signer_of(&assertion), "Carol Example");
        let recorded = rig.readers.take();
        assert_eq!(recorded.certificate_reads(), 1);
        assert_eq!(
            recorded.instructions(),
            [
                Ins::Select,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::GetData,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ],
            "one PIN check; the stale signature, the certificate, the signature again"
        );

        // The cache now holds the new certificate: back to three APDUs (and the log-out) after the read.
        rig.tap(&alice);
        let (summary, _) = rig.read().await.unwrap();
        assert_eq!(summary.holder_name.as_deref(), Some("Carol Example"));
        rig.readers.take();
        let assertion = rig.sign(ALICE_PIN).await.unwrap();
        assert_eq!(signer_of(&assertion), "Carol Example");
        assert_eq!(
            rig.readers.take_instructions(),
            [
                Ins::Select,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ]
        );
    }

    #[tokio::test]
    async fn a_card_renewed_to_another_algorithm_signs_without_a_read_first() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        assert_eq!(verify(&rig.sign(ALICE_PIN).await.unwrap()), "RS256");
        rig.readers.take();

        // Renewed with a P-256 key (Bob's): the card refuses to sign as RSA.
        renew(&alice, "alice", "bob");
        rig.tap(&alice);
        let assertion = rig.sign(ALICE_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "ES256");
        let recorded = rig.readers.take();
        assert_eq!(recorded.certificate_reads(), 1);
        assert_eq!(
            recorded.instructions(),
            [
                Ins::Select,
                Ins::GetData,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::GetData,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ],
            "CHUID, PIN, refused signature, certificate, signature, log-out"
        );
        let mut card = alice.clone();
        let mut session = PivSession::open(&mut card).unwrap();
        assert_eq!(session.pin_retries().unwrap(), Some(3), "no PIN try spent");
    }

    #[tokio::test]
    async fn a_card_whose_key_does_not_match_its_own_certificate_is_refused_once_read() {
        let mut rig = Rig::new();
        // Carol's key under Alice's certificate: the card itself is inconsistent.
        let mut image = fixture_image("alice");
        image.keys = fixture_image("carol").keys;
        let broken = VirtualCardBackend::new(VirtualCard::from_image(&image).unwrap(), "broken");
        rig.tap(&broken);
        rig.read().await.unwrap();
        rig.readers.take();
        assert_eq!(rig.sign(ALICE_PIN).await, Err(AuthFailure::CardError));
        assert_eq!(
            rig.readers.take_instructions(),
            [
                Ins::Select,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ],
            "a certificate read during this tap is not read again"
        );
    }

    impl Rig {
        /// Runs a PIN job and returns its answer.
        async fn pin_job(
            &mut self,
            job: impl FnOnce(WorkId) -> CardJob,
        ) -> Result<(), PinWorkFailure> {
            let work = self.works.next().unwrap();
            self.worker.submit(job(work));
            match self.next().await {
                CardJobResult::PinWork {
                    work: answered,
                    result,
                } if answered == work => result,
                other => panic!("expected the answer to the PIN job, got {other:?}"),
            }
        }

        async fn change_pin(
            &mut self,
            current: &str,
            new: &str,
            expect: Option<String>,
        ) -> Result<(), PinWorkFailure> {
            let (current, new) = (Pin::new(current).unwrap(), Pin::new(new).unwrap());
            self.pin_job(|work| CardJob::ChangePin {
                work,
                reader: DESK.to_owned(),
                current,
                new,
                expect,
            })
            .await
        }

        async fn unblock(&mut self, puk: &str, new_pin: &str) -> Result<(), PinWorkFailure> {
            let (puk, new_pin) = (Puk::new(puk).unwrap(), Pin::new(new_pin).unwrap());
            self.pin_job(|work| CardJob::UnblockPin {
                work,
                reader: DESK.to_owned(),
                puk,
                new_pin,
            })
            .await
        }
    }

    /// The SHA-256 of a fixture card's 9A certificate, as the runtime remembers it.
    fn fingerprint_of(name: &str) -> String {
        CertificateFacts::from_der(&fixture_der(&format!("certs/{name}.pem")))
            .unwrap()
            .fingerprint
    }

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
        for _ in 0..3 {
            assert!(rig.sign("000000").await.is_err());
        }
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
        for _ in 0..3 {
            assert!(rig.sign("000000").await.is_err());
        }
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

    #[tokio::test]
    async fn a_card_without_a_certificate_is_not_a_badge() {
        let mut rig = Rig::new();
        let blank = VirtualCard::blank(NewCard::factory(CardOptions::default()));
        rig.tap(&VirtualCardBackend::new(blank, "blank"));
        assert_eq!(rig.read().await, Err(CardReadFailure::NotPiv));
        assert_eq!(rig.sign(ALICE_PIN).await, Err(AuthFailure::CardError));
    }

    #[tokio::test]
    async fn a_contactless_card_that_will_not_tell_its_tries_still_reads() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.read().await.unwrap();
        // Over contactless the 9A certificate is not readable, but the cache has it.
        alice.card().set_options(CardOptions {
            extended_length: false,
            interface: Interface::Contactless,
        });
        rig.tap(&alice);
        let (summary, tries_left) = rig.read().await.unwrap();
        assert_eq!(summary.holder_name.as_deref(), Some("Alice Example"));
        assert_eq!(tries_left, None);
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

    #[test]
    fn the_cache_keeps_the_most_recently_used_certificates() {
        let certificate =
            Arc::new(CardCertificate::from_der(&fixture_der("certs/alice.pem")).unwrap());
        let guid = |n: usize| {
            let mut guid = [0; 16];
            guid[..8].copy_from_slice(&n.to_be_bytes());
            guid
        };
        let mut cache = CertificateCache::default();
        for n in 0..CACHED_CERTIFICATES {
            cache.put(guid(n), Arc::clone(&certificate));
        }
        assert!(cache.get(&guid(0)).is_some(), "refreshes the oldest");
        cache.put(guid(CACHED_CERTIFICATES), Arc::clone(&certificate));
        assert_eq!(cache.entries.len(), CACHED_CERTIFICATES);
        assert!(cache.get(&guid(0)).is_some());
        assert!(
            cache.get(&guid(1)).is_none(),
            "the least recently used went"
        );
        assert!(cache.get(&guid(CACHED_CERTIFICATES)).is_some());
        assert_eq!(
            certificate.facts.common_name.as_deref(),
            Some("Alice Example")
        );
    }

    #[test]
    fn failures_map_to_what_the_kiosk_shows() {
        let transport = |error| CardProblem::from(error);
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
            read_failure(&CardProblem::Card(PivError::NoPivApplication)),
            CardReadFailure::NotPiv
        );
        assert_eq!(
            read_failure(&CardProblem::UnsupportedKey(KeyKind::Other)),
            CardReadFailure::NotPiv
        );
        assert_eq!(
            auth_failure(&CardProblem::Card(PivError::WrongPin {
                retries_left: Some(1)
            })),
            AuthFailure::WrongPin {
                tries_left: Some(1)
            }
        );
        assert_eq!(
            auth_failure(&CardProblem::Card(PivError::PinBlocked)),
            AuthFailure::PinBlocked
        );
    }
}
