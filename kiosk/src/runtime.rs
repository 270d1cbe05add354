//! The kiosk runtime: the one place where the pure core meets the world — readers, the card thread, the server, the local session API, time, and a face (terminal UI or headless JSON).
//!
//! A fresh challenge is always held in advance, so a tap never waits on the
//! network for one; the card thread does the card's part, the runtime posts
//! the assertion, and the core decides what it all means. The server's PIN
//! policy is fetched at start-up (and again once the server answers, if it
//! did not then); until it is known the core checks new PINs against the
//! default policy.
//!
//! What the server does is known from real traffic (challenges, sign-ins) and from a cheap
//! probe (`GET /readyz`) when nothing else went out for [`PROBE_INTERVAL`]. Each failure is
//! sorted by [`ClientError::kind`] into unreachable, not trusted, or refusing; the core shows
//! it in plain words and the log says which `kiosk.toml` key to look at.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pivtap_client::client::{Client, ClientError, FailureKind, NetworkFailure};
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::jose::CompactJws;
use pivtap_protocol::pin_policy::PinPolicy;
use pivtap_protocol::wire::{
    AssertionHeader, ChallengeResponse, ErrorCode, SessionRefreshed, SessionStatus,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use zeroize::Zeroizing;

use crate::card_worker::{CardJob, CardJobResult, CardWorker};
use crate::core::{
    AuthFailure, CoreConfig, Effect, Event, KeyInput, Kiosk, ServerStatus, SessionEvent,
    SessionUpkeep, SignOutReason, UpkeepTask, WorkId,
};
use crate::local_api::SessionBoard;
use crate::pending_sign_outs::{PendingSignOut, PendingSignOuts};
use crate::readers::{ReaderSource, ReaderUpdate};

/// What a face (or the demo) feeds into the runtime.
#[derive(Debug)]
pub enum Input {
    /// A key for the core.
    Key(KeyInput),
    /// A whole PIN at once (headless: a line on standard input).
    Pin(Zeroizing<String>),
    /// The worker asks to sign out.
    SignOut,
    /// The signed-in worker asks to change their PIN.
    ChangePin,
    /// The worker on the blocked screen asks to unblock the PIN with the PUK.
    Unblock,
    /// A function key (the demo taps and removes cards with them).
    Function(u8),
    /// Something only the face shows changed (the administrator's exit): draw again.
    Redraw,
    /// Stop the kiosk: any session ends first ([`Event::Shutdown`]: `signed_out` with reason
    /// `shutdown` is published and the session dropped).
    Quit,
}

/// How the kiosk shows itself: the terminal UI or JSON lines.
pub trait Face: Send {
    /// The core's state changed (or time passed): show it.
    fn refresh(&mut self, kiosk: &Kiosk, server_reachable: bool, now: Instant);
    /// A session event happened; `token` is the session token for `signed_in`.
    fn session_event(&mut self, event: &SessionEvent, token: Option<&str>);
}

/// What the demo does with a function key (taps and removes its cards).
pub type FunctionKeyHandler = Box<dyn FnMut(u8) + Send>;

/// Everything the runtime needs ([`crate::builder::KioskBuilder`] gathers it).
pub(crate) struct RuntimeParts {
    /// The core's settings.
    pub(crate) core: CoreConfig,
    /// Where cards come from.
    pub(crate) readers: Arc<dyn ReaderSource>,
    /// The server.
    pub(crate) client: Client,
    /// This device's id.
    pub(crate) device: String,
    /// The session board the local API reads.
    pub(crate) board: SessionBoard,
    /// Called with the function key's number (the demo taps cards with F-keys).
    pub(crate) on_function_key: Option<FunctionKeyHandler>,
    /// Where each request to the server is timed, if anywhere (`pivtap bench tap`).
    pub(crate) timings: Option<UnboundedSender<RequestTiming>>,
    /// How often the signed-in worker's session is checked at the server.
    pub(crate) session_check_interval: Duration,
    /// Where undelivered sign-outs are kept (in memory only when `None`).
    pub(crate) pending_sign_outs: Option<PathBuf>,
}

/// A request the runtime made to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// `POST /v1/challenges`: the challenge held in advance for the next tap.
    Challenge,
    /// `POST /v1/assertions`: a sign-in.
    SignIn,
    /// `GET /v1/pin-policy`.
    PinPolicy,
    /// `GET /readyz`, when nothing else went out for [`PROBE_INTERVAL`].
    Probe,
    /// `POST /v1/sign-outs`: a session's end reported.
    SignOut,
    /// `POST /v1/sessions/refresh`: the session's access token renewed.
    Refresh,
    /// `GET /v1/sessions/current`: whether the session still holds.
    SessionCheck,
}

/// How long one request to the server took (measurements only: nothing here is secret).
#[derive(Debug, Clone, Copy)]
pub struct RequestTiming {
    /// Which request.
    pub request: Request,
    /// When it was sent.
    pub started: Instant,
    /// Until its answer (or its failure).
    pub took: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Sends one [`RequestTiming`] to an optional sink.
#[derive(Clone, Default)]
struct Timings(Option<UnboundedSender<RequestTiming>>);

impl Timings {
    /// Awaits `request`, timing it into the sink.
    async fn time<T, E>(
        &self,
        request: Request,
        future: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = future.await;
        if let Some(sink) = &self.0 {
            let _ = sink.send(RequestTiming {
                request,
                started,
                took: started.elapsed(),
                ok: result.is_ok(),
            });
        }
        result
    }
}

/// Why the kiosk stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The readers could not be watched.
    #[error("cannot watch the card readers")]
    Readers(#[source] pivtap_card::TransportError),
}

/// Results of network work.
enum Network {
    Challenge(Result<ChallengeResponse, ClientError>),
    SignIn {
        work: WorkId,
        result: Result<pivtap_protocol::wire::AssertionResponse, ClientError>,
        /// The SHA-256 of the certificate that signed the assertion.
        card: Option<String>,
    },
    PinPolicy(Result<PinPolicy, ClientError>),
    /// The answer to `GET /readyz`.
    Probe(Result<(), ClientError>),
    /// The answer to a refresh of session `session_id`.
    Refreshed {
        session_id: String,
        result: Result<SessionRefreshed, ClientError>,
    },
    /// The answer to a check of session `session_id`; `refresh_refused`: asked to learn why
    /// the server refused a refresh.
    Checked {
        session_id: String,
        result: Result<SessionStatus, ClientError>,
        refresh_refused: bool,
    },
}

/// The server's side of the signed-in worker's session: kept in memory only (the refresh
/// token is zeroized when dropped).
struct ServerSession {
    id: String,
    refresh_token: Zeroizing<String>,
    /// The access token's lifetime as the server said.
    token_lifetime: Duration,
}

/// Where fetching the server's PIN policy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyFetch {
    Unknown,
    Fetching,
    Known,
}

/// A challenge is used only while it has this much life left.
const CHALLENGE_MARGIN: Duration = Duration::from_secs(10);
/// The longest wait between attempts to reach an unreachable server.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// The server is probed (`GET /readyz`) when nothing else was sent to it for this long, so a
/// server that goes away (or comes back) is noticed within this time.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a stopping kiosk waits for the server to record its last sign-outs.
const SIGN_OUT_REPORT_WAIT: Duration = Duration::from_secs(3);

struct Runtime {
    kiosk: Kiosk,
    client: Client,
    device: String,
    board: SessionBoard,
    worker: CardWorker,
    network: UnboundedSender<Network>,
    challenge: Option<ChallengeResponse>,
    fetching_challenge: bool,
    next_fetch: Instant,
    retry_delay: Duration,
    /// What the server did last (the core is told of every change).
    server: ServerStatus,
    /// When the next probe is due, unless other traffic comes first.
    next_probe: Instant,
    probing: bool,
    /// An authentication waiting for a challenge.
    waiting_for_challenge: Option<(WorkId, String, pivtap_apdu::piv::Pin)>,
    /// The token of a sign-in the server accepted, until the core publishes it.
    accepted_token: Option<Zeroizing<String>>,
    /// The current session's token.
    token: Option<Zeroizing<String>>,
    /// The server session of a sign-in the server accepted, until the core publishes it.
    accepted_session: Option<ServerSession>,
    /// The current session at the server.
    session: Option<ServerSession>,
    /// When the current session's token is refreshed and the session checked.
    upkeep: Option<SessionUpkeep>,
    session_check_interval: Duration,
    /// Sign-outs the server has not answered yet (shared with the tasks sending them).
    pending: Arc<Mutex<PendingSignOuts>>,
    /// The certificate (SHA-256) of a sign-in the server accepted, until the core publishes it.
    accepted_card: Option<String>,
    /// The certificate (SHA-256) the current session signed in with: a PIN change is only
    /// done on that badge.
    session_card: Option<String>,
    /// Whether the server's PIN policy is known (or being fetched).
    pin_policy: PolicyFetch,
    tick_at: Option<Instant>,
    on_function_key: Option<FunctionKeyHandler>,
    timings: Timings,
    /// Sign-outs being reported to the server; awaited (bounded) before [`run`] returns, so
    /// the one a shutdown makes is not lost with the process.
    sign_out_reports: tokio::task::JoinSet<()>,
}

/// Runs the kiosk until [`Input::Quit`] (or the input channel or the readers' updates end);
/// before it returns, any session ends cleanly ([`Event::Shutdown`]). Kiosks are started
/// through [`crate::builder::KioskBuilder`], the one way in.
///
/// # Errors
/// [`RuntimeError`] when the readers cannot be watched at all.
pub(crate) async fn run(
    parts: RuntimeParts,
    face: &mut dyn Face,
    mut inputs: UnboundedReceiver<Input>,
) -> Result<(), RuntimeError> {
    let (reader_tx, mut reader_rx) = unbounded_channel();
    let _watch = parts
        .readers
        .start(reader_tx)
        .map_err(RuntimeError::Readers)?;
    let (job_tx, mut job_rx) = unbounded_channel();
    let worker = CardWorker::start(Arc::clone(&parts.readers), job_tx);
    let (network_tx, mut network_rx) = unbounded_channel();
    let mut sign_out_requests = parts.board.sign_out_requests();
    let now = Instant::now();
    let pending = match &parts.pending_sign_outs {
        Some(path) => PendingSignOuts::load(path, now).unwrap_or_else(|error| {
            tracing::warn!(target: "pivtap::kiosk", %error, "starting without the sign-outs kept earlier");
            PendingSignOuts::empty_at(path)
        }),
        None => PendingSignOuts::in_memory(),
    };
    let mut runtime = Runtime {
        kiosk: Kiosk::new(parts.core),
        client: parts.client,
        device: parts.device,
        board: parts.board,
        worker,
        network: network_tx,
        challenge: None,
        fetching_challenge: false,
        next_fetch: now,
        retry_delay: Duration::from_secs(1),
        server: ServerStatus::Connected,
        next_probe: now + PROBE_INTERVAL,
        probing: false,
        waiting_for_challenge: None,
        accepted_token: None,
        token: None,
        accepted_session: None,
        session: None,
        upkeep: None,
        session_check_interval: parts.session_check_interval,
        pending: Arc::new(Mutex::new(pending)),
        accepted_card: None,
        session_card: None,
        pin_policy: PolicyFetch::Unknown,
        tick_at: None,
        on_function_key: parts.on_function_key,
        timings: Timings(parts.timings),
        sign_out_reports: tokio::task::JoinSet::new(),
    };
    runtime.keep_challenge_fresh(now);
    runtime.fetch_pin_policy();
    face.refresh(&runtime.kiosk, runtime.kiosk.server_reachable(), now);
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    loop {
        let tick_at = runtime.tick_at;
        let wake = async move {
            match tick_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            update = reader_rx.recv() => match update {
                Some(update) => runtime.reader_update(update, face),
                None => break,
            },
            Some(result) = job_rx.recv() => runtime.card_result(result, face),
            Some(result) = network_rx.recv() => runtime.network_result(result, face),
            input = inputs.recv() => match input {
                None | Some(Input::Quit) => break,
                Some(input) => runtime.input(input, face),
            },
            Some(()) = sign_out_requests.recv() => runtime.core_event(Event::SignOutRequested, face),
            () = wake => {
                runtime.tick_at = None;
                runtime.core_event(Event::Tick, face);
            }
            _ = clock.tick() => {
                let now = Instant::now();
                runtime.keep_challenge_fresh(now);
                runtime.probe_when_quiet(now);
                runtime.keep_session(now);
                runtime.retry_pending_sign_outs(now);
                face.refresh(&runtime.kiosk, runtime.kiosk.server_reachable(), now);
            }
        }
    }
    runtime.core_event(Event::Shutdown, face);
    runtime.finish_sign_out_reports().await;
    Ok(())
}

impl Runtime {
    fn reader_update(&mut self, update: ReaderUpdate, face: &mut dyn Face) {
        let event = match update {
            ReaderUpdate::Added(reader) => Event::ReaderAdded { reader },
            ReaderUpdate::Removed(reader) => Event::ReaderRemoved { reader },
            ReaderUpdate::FilteredOut(reader) => Event::ReaderFilteredOut { reader },
            ReaderUpdate::CardPresent { reader, .. } => Event::CardPresent { reader },
            ReaderUpdate::CardRemoved(reader) => Event::CardRemoved { reader },
            ReaderUpdate::ServiceLost => Event::ReaderServiceLost,
            ReaderUpdate::ServiceRestored => Event::ReaderServiceRestored,
        };
        self.core_event(event, face);
    }

    fn card_result(&mut self, result: CardJobResult, face: &mut dyn Face) {
        match result {
            CardJobResult::Read { work, result } => {
                let event = match result {
                    Ok((card, pin_tries_left)) => Event::CardRead {
                        work,
                        card,
                        pin_tries_left,
                    },
                    Err(failure) => Event::CardReadFailed { work, failure },
                };
                self.core_event(event, face);
            }
            CardJobResult::Progress { work, step } => {
                self.core_event(Event::AuthProgress { work, step }, face)
            }
            CardJobResult::Signed { work, result } => match result {
                Ok(assertion) => {
                    let card = signer_fingerprint(&assertion);
                    self.ask(
                        Request::SignIn,
                        move |client| async move { client.sign_in(&assertion).await },
                        move |result| Network::SignIn { work, result, card },
                    );
                }
                Err(failure) => self.core_event(Event::AuthFailed { work, failure }, face),
            },
            CardJobResult::PinWork { work, result } => {
                self.core_event(Event::PinWorkDone { work, result }, face);
            }
        }
    }

    fn network_result(&mut self, result: Network, face: &mut dyn Face) {
        let now = Instant::now();
        self.next_probe = now + PROBE_INTERVAL;
        match result {
            Network::Challenge(Ok(challenge)) => {
                self.fetching_challenge = false;
                self.retry_delay = Duration::from_secs(1);
                self.challenge = Some(challenge);
                self.server_is(ServerStatus::Connected, face);
                if let Some((work, reader, pin)) = self.waiting_for_challenge.take() {
                    self.start_signing(work, reader, pin);
                }
            }
            Network::Challenge(Err(error)) => {
                self.fetching_challenge = false;
                tracing::debug!(target: "pivtap::kiosk", %error, "cannot get a challenge");
                self.next_fetch = now + self.retry_delay;
                self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY);
                self.server_failed(&error, face);
                if let Some((work, _, _)) = self.waiting_for_challenge.take() {
                    self.core_event(
                        Event::AuthFailed {
                            work,
                            failure: failure_of(&error),
                        },
                        face,
                    );
                }
            }
            Network::PinPolicy(Ok(policy)) => {
                self.pin_policy = PolicyFetch::Known;
                self.core_event(Event::PinPolicyKnown(policy), face);
            }
            Network::PinPolicy(Err(error)) => {
                // The default policy stays in force; asked again once the server answers.
                tracing::warn!(target: "pivtap::kiosk", %error, "cannot get the PIN policy; using the default");
                self.pin_policy = PolicyFetch::Unknown;
            }
            Network::Probe(result) => {
                self.probing = false;
                match result {
                    // A challenge in hand means the device is served: the server is back.
                    Ok(()) if self.challenge.is_some() => {
                        self.server_is(ServerStatus::Connected, face);
                    }
                    // Only a challenge tells whether this device is served: ask for one now
                    // if the network or TLS was the problem. A server refusing this device
                    // is asked again on the back-off only (each refusal is in its audit log).
                    Ok(()) if !matches!(self.server, ServerStatus::Refusing { .. }) => {
                        self.next_fetch = now;
                        self.retry_delay = Duration::from_secs(1);
                    }
                    Ok(()) => {}
                    Err(error) => self.server_failed(&error, face),
                }
            }
            Network::SignIn { work, result, card } => {
                let event = match result {
                    Ok(response) => {
                        self.server_is(ServerStatus::Connected, face);
                        let signed_in_at = OffsetDateTime::now_utc();
                        let token_lifetime = Duration::from_secs(response.expires_in);
                        // The session lasts until the server's maximum age; the access token
                        // is refreshed until then.
                        let lifetime =
                            Duration::from_secs(response.session_expires_in).max(token_lifetime);
                        self.accepted_token = Some(Zeroizing::new(response.token));
                        self.accepted_session = Some(ServerSession {
                            id: response.session_id,
                            refresh_token: Zeroizing::new(response.refresh_token),
                            token_lifetime,
                        });
                        self.accepted_card = card;
                        Event::AuthSucceeded {
                            work,
                            user: response.user,
                            signed_in_at,
                            expires_at: signed_in_at + lifetime,
                        }
                    }
                    Err(error) => {
                        tracing::info!(target: "pivtap::kiosk", %error, "sign-in refused or failed");
                        if !matches!(error.kind(), FailureKind::Refused(_)) {
                            self.server_failed(&error, face);
                        }
                        Event::AuthFailed {
                            work,
                            failure: failure_of(&error),
                        }
                    }
                };
                self.core_event(event, face);
                self.accepted_token = None;
                self.accepted_session = None;
                self.accepted_card = None;
            }
            Network::Refreshed { session_id, result } => {
                self.session_refreshed(&session_id, result, face);
            }
            Network::Checked {
                session_id,
                result,
                refresh_refused,
            } => {
                self.session_checked(&session_id, result, refresh_refused, face);
            }
        }
        self.keep_challenge_fresh(now);
    }

    /// Refreshes the session's access token and checks the session when due.
    fn keep_session(&mut self, now: Instant) {
        let tasks = match self.upkeep.as_mut() {
            Some(upkeep) => upkeep.due(now),
            None => return,
        };
        let (Some(session), Some(token)) = (&self.session, &self.token) else {
            return;
        };
        for task in tasks {
            let session_id = session.id.clone();
            match task {
                UpkeepTask::Refresh => {
                    let refresh_token = session.refresh_token.clone();
                    self.ask(
                        Request::Refresh,
                        move |client| async move { client.refresh_session(&refresh_token).await },
                        move |result| Network::Refreshed { session_id, result },
                    );
                }
                UpkeepTask::Check => self.check_session(session_id, token.clone(), false),
            }
        }
    }

    /// Asks the server whether session `session_id` still holds.
    fn check_session(&self, session_id: String, token: Zeroizing<String>, refresh_refused: bool) {
        self.ask(
            Request::SessionCheck,
            move |client| async move { client.session_status(&token).await },
            move |result| Network::Checked {
                session_id,
                result,
                refresh_refused,
            },
        );
    }

    /// A refresh answered: the new tokens are kept (and given to the local API), or the
    /// session ended at the server; a refresh that did not reach the server is tried again.
    fn session_refreshed(
        &mut self,
        session_id: &str,
        result: Result<SessionRefreshed, ClientError>,
        face: &mut dyn Face,
    ) {
        let now = Instant::now();
        let (Some(session), Some(upkeep)) = (self.session.as_mut(), self.upkeep.as_mut()) else {
            return;
        };
        if session.id != session_id {
            return; // An answer for a session that is over.
        }
        match result {
            Ok(refreshed) => {
                let lifetime = Duration::from_secs(refreshed.expires_in);
                session.refresh_token = Zeroizing::new(refreshed.refresh_token);
                session.token_lifetime = lifetime;
                upkeep.refreshed(now, lifetime);
                self.board.replace_token(&refreshed.token);
                self.token = Some(Zeroizing::new(refreshed.token));
            }
            Err(error) if session_ended(&error) => {
                // The session has ended: the access token (still good for the status within
                // the server's grace) asks why, so the worker is told. No refresh is made
                // meanwhile.
                tracing::info!(target: "pivtap::kiosk", session = session_id, %error, "the server refused the session's refresh: it has ended");
                if let Some(token) = self.token.clone() {
                    self.check_session(session_id.to_owned(), token, true);
                } else {
                    self.core_event(Event::SessionEndedAtServer { reason: None }, face);
                }
            }
            Err(error) => {
                tracing::debug!(target: "pivtap::kiosk", %error, "cannot refresh the session's token; trying again");
                upkeep.refresh_failed(now);
            }
        }
    }

    /// A check answered: a session the server ended signs the worker out, saying why.
    /// Failures keep the session (the server decides) and the check is made again; after a
    /// refused refresh the session ends whatever the check says (only the reason is new).
    fn session_checked(
        &mut self,
        session_id: &str,
        result: Result<SessionStatus, ClientError>,
        refresh_refused: bool,
        face: &mut dyn Face,
    ) {
        let now = Instant::now();
        let (Some(session), Some(upkeep)) = (self.session.as_ref(), self.upkeep.as_mut()) else {
            return;
        };
        if session.id != session_id {
            return;
        }
        if refresh_refused {
            let reason = result
                .ok()
                .filter(|status| !status.active)
                .and_then(|status| status.ended_reason);
            self.core_event(Event::SessionEndedAtServer { reason }, face);
            return;
        }
        upkeep.checked(now);
        match result {
            Ok(status) if status.active => {}
            Ok(status) => {
                tracing::info!(target: "pivtap::kiosk", session = session_id, reason = ?status.ended_reason, "the server ended the session");
                let reason = status.ended_reason;
                self.core_event(Event::SessionEndedAtServer { reason }, face);
            }
            Err(error) if session_ended(&error) => {
                self.core_event(Event::SessionEndedAtServer { reason: None }, face);
            }
            // The access token is too old for the server (a long outage): refresh it.
            Err(error) if error.kind() == FailureKind::Refused(ErrorCode::Unauthorized) => {
                upkeep.refresh_now(now);
            }
            Err(error) => {
                tracing::debug!(target: "pivtap::kiosk", %error, "cannot check the session; trying again");
            }
        }
    }

    /// Asks the server for its PIN policy (`GET /v1/pin-policy`), unless it is known or on
    /// its way; the answer becomes [`Event::PinPolicyKnown`].
    fn fetch_pin_policy(&mut self) {
        if self.pin_policy != PolicyFetch::Unknown {
            return;
        }
        self.pin_policy = PolicyFetch::Fetching;
        self.ask(
            Request::PinPolicy,
            |client| async move { client.pin_policy().await },
            Network::PinPolicy,
        );
    }

    /// Sends one request to the server in the background, timed ([`RequestTiming`]); its
    /// result comes back to the loop as `deliver` makes it.
    fn ask<T, F>(
        &self,
        request: Request,
        call: impl FnOnce(Client) -> F + Send + 'static,
        deliver: impl FnOnce(Result<T, ClientError>) -> Network + Send + 'static,
    ) where
        F: std::future::Future<Output = Result<T, ClientError>> + Send,
    {
        let client = self.client.clone();
        let network = self.network.clone();
        let timings = self.timings.clone();
        tokio::spawn(async move {
            let result = timings.time(request, call(client)).await;
            let _ = network.send(deliver(result));
        });
    }

    fn input(&mut self, input: Input, face: &mut dyn Face) {
        match input {
            Input::Key(key) => self.core_event(Event::Key(key), face),
            Input::Pin(pin) => {
                for digit in pin.trim().bytes().filter(u8::is_ascii_digit) {
                    self.core_event(Event::Key(KeyInput::Digit(digit - b'0')), face);
                }
                self.core_event(Event::Key(KeyInput::Enter), face);
            }
            Input::SignOut => self.core_event(Event::SignOutRequested, face),
            Input::ChangePin => self.core_event(Event::ChangePinRequested, face),
            Input::Unblock => self.core_event(Event::UnblockRequested, face),
            Input::Function(number) => {
                if let Some(hook) = self.on_function_key.as_mut() {
                    hook(number);
                }
            }
            Input::Redraw => {
                face.refresh(&self.kiosk, self.kiosk.server_reachable(), Instant::now());
            }
            Input::Quit => {}
        }
    }

    /// Records what the server did and tells the core: every answer (so the views know when
    /// it was last seen), and each change of problem.
    fn server_is(&mut self, status: ServerStatus, face: &mut dyn Face) {
        let changed = status != self.server;
        self.server = status;
        let event = match status {
            ServerStatus::Connected => {
                self.fetch_pin_policy();
                if changed {
                    tracing::info!(target: "pivtap::kiosk", server = self.client.server(), "the sign-in server answers again");
                }
                Event::ServerReachable
            }
            _ if !changed => return,
            ServerStatus::Unreachable => Event::ServerUnreachable,
            ServerStatus::Untrusted => Event::ServerUntrusted,
            ServerStatus::Refusing { code } => Event::ServerRefusing { code },
        };
        self.core_event(event, face);
    }

    /// A request failed: what that says about the server, logged once per change with the
    /// `kiosk.toml` key to look at.
    fn server_failed(&mut self, error: &ClientError, face: &mut dyn Face) {
        let status = server_status_of(error);
        if status != self.server {
            tracing::warn!(
                target: "pivtap::kiosk",
                %error,
                fix = what_to_fix(error.kind()),
                "the sign-in server cannot be used"
            );
        } else {
            tracing::debug!(target: "pivtap::kiosk", %error, "the sign-in server still cannot be used");
        }
        self.server_is(status, face);
    }

    /// Probes the server (`GET /readyz`) when nothing was sent to it for [`PROBE_INTERVAL`].
    fn probe_when_quiet(&mut self, now: Instant) {
        if self.probing || self.fetching_challenge || now < self.next_probe {
            return;
        }
        self.probing = true;
        self.ask(
            Request::Probe,
            |client| async move { client.ready().await },
            Network::Probe,
        );
    }

    /// Keeps one unexpired challenge in hand, fetching the next before it runs out.
    fn keep_challenge_fresh(&mut self, now: Instant) {
        if self.challenge.as_ref().is_some_and(|c| !usable(c)) {
            self.challenge = None;
        }
        if self.challenge.is_some() || self.fetching_challenge || now < self.next_fetch {
            return;
        }
        self.fetching_challenge = true;
        let device = self.device.clone();
        self.ask(
            Request::Challenge,
            move |client| async move { client.challenge(&device).await },
            Network::Challenge,
        );
    }

    fn start_signing(&mut self, work: WorkId, reader: String, pin: pivtap_apdu::piv::Pin) {
        match self.challenge.take().filter(usable) {
            Some(challenge) => {
                self.worker.submit(CardJob::Sign {
                    work,
                    reader,
                    pin,
                    challenge,
                    device: self.device.clone(),
                });
            }
            None => {
                self.waiting_for_challenge = Some((work, reader, pin));
                self.next_fetch = Instant::now();
            }
        }
        self.keep_challenge_fresh(Instant::now());
    }

    /// Tells the server that the session of `token` ended and why, in the background: the
    /// kiosk does not wait. With a device credential the sign-out is first kept (on disk when
    /// configured) and sent again by session id and device proof until the server answers
    /// ([`crate::pending_sign_outs`]); without one, a server that cannot be reached misses it
    /// (logged). A session the server ended is not reported back.
    fn report_sign_out(
        &mut self,
        token: Option<Zeroizing<String>>,
        session: Option<ServerSession>,
        reason: Option<SignOutReason>,
    ) {
        if reason == Some(SignOutReason::EndedAtServer) {
            return;
        }
        let Some(token) = token else { return };
        let reason = reason_text(reason);
        let kept = session
            .filter(|_| self.client.device_credential().is_some())
            .map(|session| session.id);
        if let Some(session_id) = &kept {
            let sign_out = PendingSignOut {
                session_id: session_id.clone(),
                reason: reason.clone(),
                time: OffsetDateTime::now_utc(),
            };
            if let Err(error) = lock(&self.pending).add(sign_out, Instant::now()) {
                tracing::warn!(target: "pivtap::kiosk", %error, "the sign-out is kept in memory only");
            }
        }
        let client = self.client.clone();
        let timings = self.timings.clone();
        let pending = Arc::clone(&self.pending);
        // Finished reports are reaped here, so the set holds only those under way.
        while self.sign_out_reports.try_join_next().is_some() {}
        self.sign_out_reports.spawn(async move {
            let result = timings
                .time(Request::SignOut, client.sign_out(&token, &reason))
                .await;
            match (&result, &kept) {
                (Ok(_), _) => tracing::debug!(%reason, "the server recorded the sign-out"),
                (Err(error), Some(_)) => {
                    tracing::info!(%error, %reason, "the server did not record the sign-out; it is sent again")
                }
                (Err(error), None) => {
                    tracing::warn!(%error, %reason, "the server did not record the sign-out")
                }
            }
            if let Some(session_id) = kept {
                let mut pending = lock(&pending);
                if result.is_ok() {
                    if let Err(error) = pending.answered(&session_id) {
                        tracing::warn!(target: "pivtap::kiosk", %error, "cannot forget a delivered sign-out");
                    }
                } else {
                    pending.failed(&session_id, Instant::now());
                }
            }
        });
    }

    /// Sends the kept sign-outs that are due, by session id and device proof.
    fn retry_pending_sign_outs(&mut self, now: Instant) {
        if self.client.device_credential().is_none() {
            return;
        }
        let due = match lock(&self.pending).due(now, OffsetDateTime::now_utc()) {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(target: "pivtap::kiosk", %error, "cannot drop old sign-outs from the file");
                return;
            }
        };
        while self.sign_out_reports.try_join_next().is_some() {}
        for sign_out in due {
            let client = self.client.clone();
            let timings = self.timings.clone();
            let pending = Arc::clone(&self.pending);
            self.sign_out_reports.spawn(async move {
                let PendingSignOut {
                    session_id, reason, ..
                } = sign_out;
                let result = timings
                    .time(
                        Request::SignOut,
                        client.sign_out_session(&session_id, &reason),
                    )
                    .await;
                let mut pending = lock(&pending);
                let answered = match &result {
                    Ok(recorded) => {
                        tracing::info!(session = %session_id, recorded, "the server answered a kept sign-out");
                        true
                    }
                    // The server heard it and will never take it: nothing to send again.
                    Err(error) if refused_for_good(error) => {
                        tracing::warn!(session = %session_id, %error, "the server refused a kept sign-out; dropping it");
                        true
                    }
                    Err(error) => {
                        tracing::debug!(session = %session_id, %error, "a kept sign-out still cannot be delivered");
                        false
                    }
                };
                if answered {
                    if let Err(error) = pending.answered(&session_id) {
                        tracing::warn!(target: "pivtap::kiosk", %error, "cannot forget a delivered sign-out");
                    }
                } else {
                    pending.failed(&session_id, Instant::now());
                }
            });
        }
    }

    /// Waits for the sign-out reports under way (the shutdown's own among them), at most
    /// [`SIGN_OUT_REPORT_WAIT`]: a server that does not answer does not hold up a stop.
    async fn finish_sign_out_reports(&mut self) {
        let reports = &mut self.sign_out_reports;
        let all = async { while reports.join_next().await.is_some() {} };
        if tokio::time::timeout(SIGN_OUT_REPORT_WAIT, all)
            .await
            .is_err()
        {
            tracing::warn!(
                target: "pivtap::kiosk",
                "stopping before the server answered a sign-out report ({} s)",
                SIGN_OUT_REPORT_WAIT.as_secs()
            );
        }
    }

    /// Feeds one event to the core and carries out what it asks.
    fn core_event(&mut self, event: Event, face: &mut dyn Face) {
        let now = Instant::now();
        let effects = self.kiosk.handle_event(event, now);
        let sign_out_reason = effects.iter().find_map(|effect| match effect {
            Effect::Publish(SessionEvent::SignedOut { reason, .. }) => Some(*reason),
            _ => None,
        });
        for effect in effects {
            match effect {
                Effect::ReadCard { work, reader } => {
                    self.worker.submit(CardJob::Read { work, reader })
                }
                Effect::Authenticate { work, reader, pin } => self.start_signing(work, reader, pin),
                Effect::ChangePin {
                    work,
                    reader,
                    current,
                    new,
                } => self.worker.submit(CardJob::ChangePin {
                    work,
                    reader,
                    current,
                    new,
                    expect: self.session_card.clone(),
                }),
                Effect::UnblockPin {
                    work,
                    reader,
                    puk,
                    new_pin,
                } => self.worker.submit(CardJob::UnblockPin {
                    work,
                    reader,
                    puk,
                    new_pin,
                }),
                Effect::CancelCardWork { reader } => {
                    if self
                        .waiting_for_challenge
                        .as_ref()
                        .is_some_and(|(_, waiting, _)| *waiting == reader)
                    {
                        self.waiting_for_challenge = None;
                    }
                    self.worker.cancel(&reader);
                }
                Effect::Publish(session_event) => {
                    if matches!(session_event, SessionEvent::SignedIn { .. }) {
                        self.token = self.accepted_token.take();
                        self.session_card = self.accepted_card.take();
                        self.session = self.accepted_session.take();
                        self.upkeep = self.session.as_ref().map(|session| {
                            SessionUpkeep::new(
                                now,
                                session.token_lifetime,
                                self.session_check_interval,
                            )
                        });
                    }
                    let token = match session_event {
                        SessionEvent::SignedIn { .. } => self.token.as_deref().map(String::as_str),
                        _ => None,
                    };
                    self.board.publish(&session_event, token);
                    face.session_event(&session_event, token);
                }
                Effect::DropSession => {
                    let token = self.token.take();
                    let session = self.session.take();
                    self.upkeep = None;
                    self.report_sign_out(token, session, sign_out_reason);
                    self.session_card = None;
                }
                Effect::ScheduleTick { at } => self.tick_at = Some(at),
            }
        }
        face.refresh(&self.kiosk, self.kiosk.server_reachable(), now);
    }
}

/// The SHA-256 (lower-case hex) of the card certificate an assertion carries in `x5c`.
fn signer_fingerprint(assertion: &str) -> Option<String> {
    let jws = CompactJws::parse(assertion).ok()?;
    let header: AssertionHeader = serde_json::from_slice(&jws.header).ok()?;
    let der = STANDARD.decode(header.x5c.first()?).ok()?;
    Some(CertificateFacts::from_der(&der).ok()?.fingerprint)
}

/// A sign-out reason as sent to the server (`card_removed`).
fn reason_text(reason: Option<SignOutReason>) -> String {
    reason
        .and_then(|reason| serde_json::to_value(reason).ok())
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Whether the server said the session has ended (a refresh or a check refused).
fn session_ended(error: &ClientError) -> bool {
    error.kind() == FailureKind::Refused(ErrorCode::SessionEnded)
}

/// Whether a refusal of a kept sign-out is final: a client error other than being rate
/// limited or a device proof refused (a clock set right makes the next one good).
fn refused_for_good(error: &ClientError) -> bool {
    match error {
        ClientError::Refused { status, code, .. } => {
            (400..500).contains(status)
                && !matches!(code, ErrorCode::RateLimited | ErrorCode::DeviceProofInvalid)
        }
        _ => false,
    }
}

/// Locks the kept sign-outs; a panic elsewhere while they were held leaves a whole list.
fn lock(pending: &Mutex<PendingSignOuts>) -> std::sync::MutexGuard<'_, PendingSignOuts> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a challenge still has enough life for a tap.
fn usable(challenge: &ChallengeResponse) -> bool {
    OffsetDateTime::parse(&challenge.expires_at, &Rfc3339)
        .is_ok_and(|expires| expires - OffsetDateTime::now_utc() > CHALLENGE_MARGIN)
}

/// What a failed request says about the server.
fn server_status_of(error: &ClientError) -> ServerStatus {
    match error.kind() {
        FailureKind::Trust => ServerStatus::Untrusted,
        FailureKind::Refused(code) => ServerStatus::Refusing { code },
        _ => ServerStatus::Unreachable,
    }
}

fn failure_of(error: &ClientError) -> AuthFailure {
    match error.kind() {
        FailureKind::Refused(code) => AuthFailure::ServerRefused { code },
        FailureKind::Trust => AuthFailure::ServerUntrusted,
        _ => AuthFailure::ServerUnreachable,
    }
}

/// What the administrator should look at for a failure, naming the `kiosk.toml` key.
#[must_use]
pub fn what_to_fix(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Trust => {
            "the server's certificate is not trusted: check [server] ca (the CA that issued it, \
             or the server's own tls.crt) or [server] pin_sha256 in kiosk.toml, and that \
             [server] url names a host the certificate is for"
        }
        FailureKind::Network(NetworkFailure::ConnectionRefused) => {
            "nothing listens there: is the server running, and are the host and port in \
             [server] url right?"
        }
        FailureKind::Network(NetworkFailure::TimedOut) => {
            "no answer in time: check the network and firewalls to [server] url \
             ([server] timeout_seconds sets the wait)"
        }
        FailureKind::Network(_) => {
            "check [server] url in kiosk.toml (its host name must resolve) and the network"
        }
        FailureKind::Refused(ErrorCode::DeviceUnknown | ErrorCode::DeviceProofInvalid) => {
            "the server does not know this device: check device, [server] device_key and \
             [server] device_certificate in kiosk.toml (`pivtap kiosk enroll-device`)"
        }
        FailureKind::Refused(ErrorCode::DeviceDisabled) => {
            "an administrator disabled this device at the server \
             (`pivtap admin devices enable ID` turns it back on)"
        }
        FailureKind::Refused(ErrorCode::NotFound) | FailureKind::Protocol => {
            "what answers is not a pivtap server: check [server] url in kiosk.toml"
        }
        FailureKind::Refused(ErrorCode::Unavailable) => {
            "the server cannot record sign-ins now: see the server's log"
        }
        FailureKind::Refused(_) => "see the server's log for why it refuses",
        _ => "check [server] in kiosk.toml",
    }
}

#[cfg(test)]
mod tests {
    use pivtap_protocol::assertion::AssertionDraft;
    use pivtap_protocol::wire::AssertionPayload;

    use super::*;

    fn fixture_der(path: &str) -> Vec<u8> {
        let pem =
            std::fs::read(format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
    }

    #[test]
    fn each_kind_of_server_failure_names_the_kiosk_toml_key_to_fix() {
        for (kind, key) in [
            (FailureKind::Trust, "[server] ca"),
            (FailureKind::Trust, "[server] pin_sha256"),
            (
                FailureKind::Network(NetworkFailure::ConnectionRefused),
                "[server] url",
            ),
            (
                FailureKind::Network(NetworkFailure::TimedOut),
                "[server] url",
            ),
            (FailureKind::Network(NetworkFailure::Other), "[server] url"),
            (
                FailureKind::Refused(ErrorCode::DeviceUnknown),
                "[server] device_key",
            ),
            (
                FailureKind::Refused(ErrorCode::DeviceProofInvalid),
                "[server] device_certificate",
            ),
            (FailureKind::Refused(ErrorCode::NotFound), "[server] url"),
            (FailureKind::Protocol, "[server] url"),
            (FailureKind::Setup, "[server]"),
        ] {
            assert!(what_to_fix(kind).contains(key), "{kind:?}: {key}");
        }
    }

    #[test]
    fn failures_become_server_states_and_sign_in_failures() {
        let refused = ClientError::Refused {
            status: 403,
            code: ErrorCode::DeviceDisabled,
            message: "disabled".to_owned(),
            retry_after: None,
        };
        assert_eq!(
            server_status_of(&refused),
            ServerStatus::Refusing {
                code: ErrorCode::DeviceDisabled
            }
        );
        assert_eq!(
            failure_of(&refused),
            AuthFailure::ServerRefused {
                code: ErrorCode::DeviceDisabled
            }
        );
        let untrusted = ClientError::UntrustedServer {
            url: "https://a".to_owned(),
            reason: "UnknownIssuer".to_owned(),
        };
        assert_eq!(server_status_of(&untrusted), ServerStatus::Untrusted);
        assert_eq!(failure_of(&untrusted), AuthFailure::ServerUntrusted);
        let protocol = ClientError::Protocol {
            reason: "HTML".to_owned(),
        };
        assert_eq!(server_status_of(&protocol), ServerStatus::Unreachable);
        assert_eq!(failure_of(&protocol), AuthFailure::ServerUnreachable);
    }

    #[test]
    fn the_session_badge_is_known_by_the_certificate_in_its_assertion() {
        let der = fixture_der("certs/alice.pem");
        let draft = AssertionDraft::new(
            pivtap_protocol::jose::JwsAlgorithm::Rs256,
            &der,
            AssertionPayload {
                aud: "https://auth.example.test".to_owned(),
                nonce: "n".to_owned(),
                device: "kiosk".to_owned(),
                iat: 0,
                slot: "9a".to_owned(),
            },
        );
        let assertion = draft.finish(b"signature");
        let expected = CertificateFacts::from_der(&der).unwrap().fingerprint;
        assert_eq!(signer_fingerprint(&assertion), Some(expected));
        assert_eq!(signer_fingerprint("not.a.jws"), None);
        assert_eq!(signer_fingerprint("garbage"), None);
    }
}
