//! Measures taps through the real kiosk (built by [`KioskBuilder`]): APDUs, bytes and card time of each tap's read and sign, card present to session token, and the challenge request (`pivtap bench tap`).
//!
//! The badge stays where it is; [`measure_taps`] plays its arrival and departure to the
//! runtime as the reader would ([`ReaderUpdate::CardPresent`], then
//! [`ReaderUpdate::CardRemoved`], which signs the worker out), answers the PIN prompt at once,
//! and counts what the card connections exchange. Before each tap the kiosk holds its
//! challenge and has reported the previous sign-out, as a kiosk between two workers does, so
//! a tap's figures are the card's and the sign-in's alone. The challenge figure is the
//! request the runtime makes during the tap for the next one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pivtap_card::{CardBackend, CardTransaction, LinkCapabilities, TransportError};
use pivtap_client::client::Client;
use serde::Serialize;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use zeroize::Zeroizing;

use crate::builder::{KioskBuilder, KioskError, RunningKiosk};
use crate::core::{NoticeCode, SessionEvent};
use crate::readers::{ReaderSource, ReaderUpdate, ReaderWatch};
use crate::runtime::{Input, Request, RequestTiming};

/// The longest wait for one step of a tap (the kiosk's answer, the server's).
const STEP_WAIT: Duration = Duration::from_secs(30);

/// APDUs, bytes and time spent in `transmit`, over every card connection of a tap's part.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Tally {
    /// Commands sent.
    pub apdus: u64,
    /// Bytes sent (whole APDUs).
    pub bytes_sent: u64,
    /// Bytes received (status words included).
    pub bytes_received: u64,
    /// Inside `transmit`: the card (and the transport to it), milliseconds.
    pub card_ms: f64,
    /// When the last response came back.
    #[serde(skip)]
    pub last_response: Option<Instant>,
}

/// One tap's figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TapFigures {
    /// The read: SELECT, CHUID, certificate (unless cached), PIN tries.
    pub read: Tally,
    /// The sign: SELECT, VERIFY, GENERAL AUTHENTICATE.
    pub sign: Tally,
    /// Card present to session token, milliseconds.
    pub total_ms: f64,
    /// Card present to the last card response, milliseconds (the kiosk holds its challenge
    /// before the tap, so no challenge request falls in between).
    pub in_field_ms: f64,
    /// The challenge request the kiosk made during the tap (for the next one), milliseconds.
    pub challenge_ms: f64,
}

/// Why the taps could not be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TapBenchError {
    /// The kiosk could not run, or stopped.
    #[error(transparent)]
    Kiosk(#[from] KioskError),
    /// The kiosk stopped before the taps were done.
    #[error("the kiosk stopped while waiting for {0}")]
    Stopped(&'static str),
    /// Nothing came in time.
    #[error("no {what} within {} s", STEP_WAIT.as_secs())]
    TimedOut {
        /// What was awaited.
        what: &'static str,
    },
    /// The server gave no challenge.
    #[error("the server gave the kiosk no challenge (see the log above)")]
    NoChallenge,
    /// The kiosk reported a problem during a tap (a wrong PIN, a refused sign-in, a card error).
    #[error("tap {tap}: {message} ({})", .code.as_str())]
    Refused {
        /// Which tap (1 is the first).
        tap: usize,
        /// The kiosk's notice code.
        code: NoticeCode,
        /// The kiosk's message.
        message: String,
    },
}

/// A reader source for measuring: the card stays in `reader` of `inner`, the taps are played
/// to the runtime by [`BenchReaders::tap`] and [`BenchReaders::take_away`], and every card
/// connection counts what it exchanges.
struct BenchReaders {
    inner: Arc<dyn ReaderSource>,
    reader: String,
    updates: Mutex<Option<UnboundedSender<ReaderUpdate>>>,
    tally: Arc<Mutex<Tally>>,
}

impl BenchReaders {
    /// The figures since the last call, and a fresh count.
    fn take(&self) -> Tally {
        std::mem::take(&mut *lock(&self.tally))
    }

    fn send(&self, update: ReaderUpdate) {
        if let Some(updates) = lock(&self.updates).as_ref() {
            let _ = updates.send(update);
        }
    }

    /// The badge arrives.
    fn tap(&self) {
        self.send(ReaderUpdate::CardPresent {
            reader: self.reader.clone(),
            atr: Vec::new(),
            contactless: false,
        });
    }

    /// The badge leaves.
    fn take_away(&self) {
        self.send(ReaderUpdate::CardRemoved(self.reader.clone()));
    }
}

impl ReaderSource for BenchReaders {
    fn start(&self, updates: UnboundedSender<ReaderUpdate>) -> Result<ReaderWatch, TransportError> {
        let _ = updates.send(ReaderUpdate::Added(self.reader.clone()));
        *lock(&self.updates) = Some(updates);
        Ok(ReaderWatch::idle())
    }

    fn connect(&self, reader: &str) -> Result<Box<dyn CardBackend>, TransportError> {
        Ok(Box::new(CountingBackend {
            inner: self.inner.connect(reader)?,
            tally: Arc::clone(&self.tally),
        }))
    }
}

struct CountingBackend {
    inner: Box<dyn CardBackend>,
    tally: Arc<Mutex<Tally>>,
}

impl CardBackend for CountingBackend {
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
        Ok(Box::new(CountingTransaction {
            inner: self.inner.transaction()?,
            tally: Arc::clone(&self.tally),
        }))
    }

    fn capabilities(&self) -> LinkCapabilities {
        self.inner.capabilities()
    }

    fn name(&self) -> String {
        self.inner.name()
    }
}

struct CountingTransaction<'a> {
    inner: Box<dyn CardTransaction + 'a>,
    tally: Arc<Mutex<Tally>>,
}

impl CardTransaction for CountingTransaction<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let started = Instant::now();
        let response = self.inner.transmit(command);
        let answered = Instant::now();
        let mut tally = lock(&self.tally);
        tally.apdus += 1;
        tally.bytes_sent += command.len() as u64;
        tally.bytes_received += response.as_ref().map_or(0, |r| r.len() as u64);
        tally.card_ms += (answered - started).as_secs_f64() * 1e3;
        tally.last_response = Some(answered);
        response
    }
}

/// What one tap measurement needs.
pub struct TapBench {
    /// Where the badge is (it stays there).
    pub readers: Arc<dyn ReaderSource>,
    /// The reader holding it.
    pub reader: String,
    /// The server (its connection already made, as a running kiosk has it).
    pub client: Client,
    /// This device's id at the server.
    pub device: String,
    /// The badge's PIN, typed at each prompt.
    pub pin: Zeroizing<String>,
    /// Taps to time (the first one with an empty certificate cache).
    pub taps: u32,
}

/// Runs a kiosk and times `bench.taps` taps through it, one after the other.
///
/// # Errors
/// [`TapBenchError`]: the kiosk could not start or stopped, the server gave no challenge,
/// a step took longer than 30 s, or a tap did not end signed in (wrong PIN, refused).
pub async fn measure_taps(bench: TapBench) -> Result<Vec<TapFigures>, TapBenchError> {
    let source = Arc::new(BenchReaders {
        inner: bench.readers,
        reader: bench.reader,
        updates: Mutex::new(None),
        tally: Arc::default(),
    });
    let (events_tx, events) = unbounded_channel();
    let (timings_tx, timings) = unbounded_channel();
    let kiosk = KioskBuilder::new(
        bench.device,
        bench.client,
        Arc::clone(&source) as Arc<dyn ReaderSource>,
    )
    .event_sink(events_tx)
    .request_timings(timings_tx)
    .spawn();
    let mut run = TapRun {
        source,
        kiosk,
        events,
        timings: TimingLog {
            timings,
            challenges: Vec::new(),
            sign_outs: 0,
        },
    };
    let measured = run.all(bench.taps as usize, &bench.pin).await;
    let stopped = run.kiosk.stop().await;
    let figures = measured?;
    stopped?;
    Ok(figures)
}

/// The requests the runtime timed so far.
struct TimingLog {
    timings: UnboundedReceiver<RequestTiming>,
    /// How long each challenge request took, in order.
    challenges: Vec<Duration>,
    /// Sign-outs reported.
    sign_outs: usize,
}

impl TimingLog {
    /// Waits until `challenges` challenge requests and `sign_outs` sign-out reports are done.
    async fn until(&mut self, challenges: usize, sign_outs: usize) -> Result<(), TapBenchError> {
        while self.challenges.len() < challenges || self.sign_outs < sign_outs {
            let timing = tokio::time::timeout(STEP_WAIT, self.timings.recv())
                .await
                .map_err(|_| TapBenchError::TimedOut {
                    what: "answer from the server",
                })?
                .ok_or(TapBenchError::Stopped("the server's answer"))?;
            match timing.request {
                Request::Challenge if timing.ok => self.challenges.push(timing.took),
                Request::Challenge => return Err(TapBenchError::NoChallenge),
                Request::SignOut => self.sign_outs += 1,
                _ => {}
            }
        }
        Ok(())
    }
}

struct TapRun {
    source: Arc<BenchReaders>,
    kiosk: RunningKiosk,
    events: UnboundedReceiver<SessionEvent>,
    timings: TimingLog,
}

impl TapRun {
    async fn all(
        &mut self,
        taps: usize,
        pin: &Zeroizing<String>,
    ) -> Result<Vec<TapFigures>, TapBenchError> {
        let mut figures = Vec::with_capacity(taps);
        for tap in 0..taps {
            // A challenge in hand (the first from start-up, then the one the last tap asked
            // for) and the last sign-out reported.
            self.timings.until(tap + 1, tap).await?;
            figures.push(self.one(tap, pin).await?);
        }
        Ok(figures)
    }

    async fn next_event(&mut self, what: &'static str) -> Result<SessionEvent, TapBenchError> {
        tokio::time::timeout(STEP_WAIT, self.events.recv())
            .await
            .map_err(|_| TapBenchError::TimedOut { what })?
            .ok_or(TapBenchError::Stopped(what))
    }

    /// Tap number `tap` (from 0): present, PIN, signed in; then the badge leaves.
    async fn one(
        &mut self,
        tap: usize,
        pin: &Zeroizing<String>,
    ) -> Result<TapFigures, TapBenchError> {
        self.source.take();
        let present = Instant::now();
        self.source.tap();
        let mut read = None;
        let (total_ms, sign) = loop {
            match self.next_event("the PIN prompt or the sign-in").await? {
                SessionEvent::PinRequired { .. } if read.is_none() => {
                    read = Some(self.source.take());
                    let _ = self.kiosk.inputs.send(Input::Pin(pin.clone()));
                }
                SessionEvent::SignedIn { .. } => {
                    break (present.elapsed().as_secs_f64() * 1e3, self.source.take());
                }
                SessionEvent::Error(notice) => {
                    return Err(TapBenchError::Refused {
                        tap: tap + 1,
                        code: notice.code,
                        message: notice.message,
                    });
                }
                _ => {}
            }
        };
        let read = read.unwrap_or_default();
        let last_response = sign.last_response.or(read.last_response).unwrap_or(present);
        let in_field_ms = last_response
            .saturating_duration_since(present)
            .as_secs_f64()
            * 1e3;
        // The challenge the kiosk asked for during this tap, for the next one.
        self.timings.until(tap + 2, tap).await?;
        let challenge_ms = self.timings.challenges[tap + 1].as_secs_f64() * 1e3;
        self.source.take_away();
        while !matches!(
            self.next_event("the sign-out").await?,
            SessionEvent::SignedOut { .. }
        ) {}
        Ok(TapFigures {
            read,
            sign,
            total_ms,
            in_field_ms,
            challenge_ms,
        })
    }
}

/// Locks a mutex; a panic elsewhere while it was held leaves data that is still whole here.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
