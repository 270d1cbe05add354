//! The card worker's test rig: a worker over one virtual desk reader that records every command, and the fixtures its tests share.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pivtap_apdu::piv::{Ins, Pin, Puk};
use pivtap_card::{CardBackend, CardTransaction, LinkCapabilities, PivSession, TransportError};
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::wire::ChallengeResponse;
use pivtap_server::verifier::{AssertionVerifier, VerifiedAssertion, VerifierConfig};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{VirtualCard, VirtualCardBackend};
use time::OffsetDateTime;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::badge::SIGNING_SLOT;
use super::{CardJob, CardJobResult, CardWorker};
use crate::core::{
    AuthFailure, CardReadFailure, CardSummary, CoreConfig, Effect, Event, Kiosk, PinWorkFailure,
    Step, WorkId,
};
use crate::readers::{ReaderSource, ReaderUpdate, ReaderWatch, VirtualReaders};

pub(super) const DESK: &str = "Desk reader";
pub(super) const AUDIENCE: &str = "https://auth.example.test";
pub(super) const NONCE: &str = "q2Vv8y3a1lL3m8W4k9dQeXh7c2VjcmV0LW5vbmNlLTMy";
pub(super) const DEVICE: &str = "kiosk-07";
pub(super) const ALICE_PIN: &str = "123456";
pub(super) const BOB_PIN: &str = "24681357";
/// A sign on the connection kept from the read before it: SELECT, VERIFY, GENERAL
/// AUTHENTICATE, and the PIN's log-out (VERIFY).
pub(super) const SIGN_AFTER_A_READ: [Ins; 4] = [
    Ins::Select,
    Ins::Verify,
    Ins::GeneralAuthenticate,
    Ins::Verify,
];

/// Virtual readers that record every command sent to their cards.
#[derive(Clone, Default)]
pub(super) struct RecordingReaders {
    pub(super) readers: VirtualReaders,
    commands: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RecordingReaders {
    /// The commands sent since the last call.
    pub(super) fn take(&self) -> Recorded {
        Recorded(std::mem::take(&mut *self.commands.lock().unwrap()))
    }

    /// The instructions sent since the last call.
    pub(super) fn take_instructions(&self) -> Vec<Ins> {
        self.take().instructions()
    }
}

/// Commands sent to cards.
pub(super) struct Recorded(Vec<Vec<u8>>);

impl Recorded {
    pub(super) fn instructions(&self) -> Vec<Ins> {
        self.0.iter().map(|command| Ins::from(command[1])).collect()
    }

    /// How many commands read the 9A certificate (GET DATA 5FC105).
    pub(super) fn certificate_reads(&self) -> usize {
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
    fn start(&self, updates: UnboundedSender<ReaderUpdate>) -> Result<ReaderWatch, TransportError> {
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
pub(super) struct Rig {
    pub(super) readers: RecordingReaders,
    pub(super) worker: CardWorker,
    pub(super) results: UnboundedReceiver<CardJobResult>,
    works: std::vec::IntoIter<WorkId>,
}

impl Rig {
    pub(super) fn new() -> Self {
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

    pub(super) fn tap(&self, card: &VirtualCardBackend) {
        self.readers.readers.remove(DESK);
        self.readers.readers.insert(DESK, card.clone());
    }

    pub(super) fn submit_read(&mut self) -> WorkId {
        let work = self.works.next().unwrap();
        self.worker.submit(CardJob::Read {
            work,
            reader: DESK.to_owned(),
        });
        work
    }

    pub(super) fn submit_sign(&mut self, pin: &str) -> WorkId {
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

    pub(super) async fn next(&mut self) -> CardJobResult {
        tokio::time::timeout(Duration::from_secs(60), self.results.recv())
            .await
            .expect("the card thread answers in time")
            .expect("the card thread is running")
    }

    pub(super) async fn read(&mut self) -> Result<(CardSummary, Option<u8>), CardReadFailure> {
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
    pub(super) async fn sign(&mut self, pin: &str) -> Result<String, AuthFailure> {
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

    /// Three wrong PINs: each fails, and the badge on the desk ends up blocked.
    pub(super) async fn block_the_pin(&mut self) {
        for _ in 0..3 {
            assert!(self.sign("000000").await.is_err());
        }
    }

    /// Runs a PIN job and returns its answer.
    pub(super) async fn pin_job(
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

    pub(super) async fn change_pin(
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

    pub(super) async fn unblock(&mut self, puk: &str, new_pin: &str) -> Result<(), PinWorkFailure> {
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

pub(super) fn fixture_der(path: &str) -> Vec<u8> {
    let pem = std::fs::read(format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
}

/// `assertion` as the server verifies it, with the test CA as the only trust anchor.
fn verified(assertion: &str) -> VerifiedAssertion {
    let verifier = AssertionVerifier::new(VerifierConfig::new(
        AUDIENCE,
        vec![fixture_der("ca/test-ca.pem")],
    ))
    .unwrap();
    verifier
        .verify(assertion, OffsetDateTime::now_utc())
        .unwrap()
}

/// Checks `assertion` as the server would and returns its algorithm.
pub(super) fn verify(assertion: &str) -> String {
    let verified = verified(assertion);
    assert_eq!(verified.payload.nonce, NONCE);
    assert_eq!(verified.payload.device, DEVICE);
    assert_eq!(verified.payload.aud, AUDIENCE);
    assert_eq!(verified.payload.slot, "9a");
    verified.alg.name().to_owned()
}

pub(super) fn guid_of(card: &VirtualCardBackend) -> String {
    let mut card = card.clone();
    PivSession::open(&mut card)
        .unwrap()
        .chuid()
        .unwrap()
        .guid_hex()
}

pub(super) fn fixture_image(name: &str) -> CardImage {
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
pub(super) fn renew(card: &VirtualCardBackend, name: &str, keys_from: &str) {
    *card.card() = renewed_image(name, keys_from);
}

/// The common name of the certificate an assertion carries.
pub(super) fn signer_of(assertion: &str) -> String {
    verified(assertion).certificate.common_name.unwrap()
}

/// The SHA-256 of a fixture card's 9A certificate, as the runtime remembers it.
pub(super) fn fingerprint_of(name: &str) -> String {
    CertificateFacts::from_der(&fixture_der(&format!("certs/{name}.pem")))
        .unwrap()
        .fingerprint
}
