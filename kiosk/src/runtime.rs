//! The kiosk runtime: the one place where the pure core meets the world — readers, the card thread, the server, the local session API, time, and a face (terminal UI or headless JSON).
//!
//! A fresh challenge is always held in advance, so a tap never waits on the
//! network for one; the card thread does the card's part, the runtime posts
//! the assertion, and the core decides what it all means. The server's PIN
//! policy is fetched at start-up (and again once the server answers, if it
//! did not then); until it is known the core checks new PINs against the
//! default policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pivtap_server_client::certificate::CertificateFacts;
use pivtap_server_client::client::{Client, ClientError};
use pivtap_server_client::jose::CompactJws;
use pivtap_server_client::pin_policy::PinPolicy;
use pivtap_server_client::wire::{AssertionHeader, ChallengeResponse};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use zeroize::Zeroizing;

use crate::card_worker::{CardJob, CardJobResult, CardWorker};
use crate::core::{AuthFailure, CoreConfig, Effect, Event, KeyInput, Kiosk, SessionEvent, WorkId};
use crate::local_api::SessionBoard;
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

/// Everything the runtime needs.
pub struct RuntimeParts {
    /// The core's settings.
    pub core: CoreConfig,
    /// Where cards come from.
    pub readers: Arc<dyn ReaderSource>,
    /// The server.
    pub client: Client,
    /// This device's id.
    pub device: String,
    /// The session board the local API reads.
    pub board: SessionBoard,
    /// Called with the function key's number (the demo taps cards with F-keys).
    pub on_function_key: Option<FunctionKeyHandler>,
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
        result: Result<pivtap_server_client::wire::AssertionResponse, ClientError>,
        /// The SHA-256 of the certificate that signed the assertion.
        card: Option<String>,
    },
    PinPolicy(Result<PinPolicy, ClientError>),
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
    server_reachable: bool,
    /// An authentication waiting for a challenge.
    waiting_for_challenge: Option<(WorkId, String, pivtap_apdu::piv::Pin)>,
    /// The token of a sign-in the server accepted, until the core publishes it.
    accepted_token: Option<Zeroizing<String>>,
    /// The current session's token.
    token: Option<Zeroizing<String>>,
    /// The certificate (SHA-256) of a sign-in the server accepted, until the core publishes it.
    accepted_card: Option<String>,
    /// The certificate (SHA-256) the current session signed in with: a PIN change is only
    /// done on that badge.
    session_card: Option<String>,
    /// Whether the server's PIN policy is known (or being fetched).
    pin_policy: PolicyFetch,
    tick_at: Option<Instant>,
    on_function_key: Option<FunctionKeyHandler>,
}

/// Runs the kiosk until [`Input::Quit`] (or the input channel or the readers' updates end);
/// before it returns, any session ends cleanly ([`Event::Shutdown`]).
///
/// # Errors
/// [`RuntimeError`] when the readers cannot be watched at all.
pub async fn run(
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
        server_reachable: true,
        waiting_for_challenge: None,
        accepted_token: None,
        token: None,
        accepted_card: None,
        session_card: None,
        pin_policy: PolicyFetch::Unknown,
        tick_at: None,
        on_function_key: parts.on_function_key,
    };
    runtime.keep_challenge_fresh(now);
    runtime.fetch_pin_policy();
    face.refresh(&runtime.kiosk, runtime.server_reachable, now);
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
                face.refresh(&runtime.kiosk, runtime.server_reachable, now);
            }
        }
    }
    runtime.core_event(Event::Shutdown, face);
    Ok(())
}

impl Runtime {
    fn reader_update(&mut self, update: ReaderUpdate, face: &mut dyn Face) {
        let event = match update {
            ReaderUpdate::Added(reader) => Event::ReaderAdded { reader },
            ReaderUpdate::Removed(reader) => Event::ReaderRemoved { reader },
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
                    let client = self.client.clone();
                    let network = self.network.clone();
                    let card = signer_fingerprint(&assertion);
                    tokio::spawn(async move {
                        let result = client.sign_in(&assertion).await;
                        let _ = network.send(Network::SignIn { work, result, card });
                    });
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
        match result {
            Network::Challenge(Ok(challenge)) => {
                self.fetching_challenge = false;
                self.retry_delay = Duration::from_secs(1);
                self.challenge = Some(challenge);
                self.server_is(true, face);
                if let Some((work, reader, pin)) = self.waiting_for_challenge.take() {
                    self.start_signing(work, reader, pin);
                }
            }
            Network::Challenge(Err(error)) => {
                self.fetching_challenge = false;
                tracing::warn!(target: "pivtap::kiosk", %error, "cannot get a challenge");
                self.next_fetch = now + self.retry_delay;
                self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY);
                self.server_is(!is_network_failure(&error), face);
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
            Network::SignIn { work, result, card } => {
                let event = match result {
                    Ok(response) => {
                        self.server_is(true, face);
                        let signed_in_at = OffsetDateTime::now_utc();
                        let lifetime = Duration::from_secs(response.expires_in);
                        self.accepted_token = Some(Zeroizing::new(response.token));
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
                        if is_network_failure(&error) {
                            self.server_is(false, face);
                        }
                        Event::AuthFailed {
                            work,
                            failure: failure_of(&error),
                        }
                    }
                };
                self.core_event(event, face);
                self.accepted_token = None;
                self.accepted_card = None;
            }
        }
        self.keep_challenge_fresh(now);
    }

    /// Asks the server for its PIN policy (`GET /v1/pin-policy`), unless it is known or on
    /// its way; the answer becomes [`Event::PinPolicyKnown`].
    fn fetch_pin_policy(&mut self) {
        if self.pin_policy != PolicyFetch::Unknown {
            return;
        }
        self.pin_policy = PolicyFetch::Fetching;
        let client = self.client.clone();
        let network = self.network.clone();
        tokio::spawn(async move {
            let result = client.pin_policy().await;
            let _ = network.send(Network::PinPolicy(result));
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
            Input::Redraw => face.refresh(&self.kiosk, self.server_reachable, Instant::now()),
            Input::Quit => {}
        }
    }

    fn server_is(&mut self, reachable: bool, face: &mut dyn Face) {
        if reachable {
            self.fetch_pin_policy();
        }
        if reachable != self.server_reachable {
            self.server_reachable = reachable;
            let event = if reachable {
                Event::ServerReachable
            } else {
                Event::ServerUnreachable
            };
            self.core_event(event, face);
        }
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
        let client = self.client.clone();
        let device = self.device.clone();
        let network = self.network.clone();
        tokio::spawn(async move {
            let result = client.challenge(&device).await;
            let _ = network.send(Network::Challenge(result));
        });
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

    /// Feeds one event to the core and carries out what it asks.
    fn core_event(&mut self, event: Event, face: &mut dyn Face) {
        let now = Instant::now();
        let effects = self.kiosk.handle_event(event, now);
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
                    }
                    let token = match session_event {
                        SessionEvent::SignedIn { .. } => self.token.as_deref().map(String::as_str),
                        _ => None,
                    };
                    self.board.publish(&session_event, token);
                    face.session_event(&session_event, token);
                }
                Effect::DropSession => {
                    self.token = None;
                    self.session_card = None;
                }
                Effect::ScheduleTick { at } => self.tick_at = Some(at),
            }
        }
        face.refresh(&self.kiosk, self.server_reachable, now);
    }
}

/// The SHA-256 (lower-case hex) of the card certificate an assertion carries in `x5c`.
fn signer_fingerprint(assertion: &str) -> Option<String> {
    let jws = CompactJws::parse(assertion).ok()?;
    let header: AssertionHeader = serde_json::from_slice(&jws.header).ok()?;
    let der = STANDARD.decode(header.x5c.first()?).ok()?;
    Some(CertificateFacts::from_der(&der).ok()?.fingerprint)
}

/// Whether a challenge still has enough life for a tap.
fn usable(challenge: &ChallengeResponse) -> bool {
    OffsetDateTime::parse(&challenge.expires_at, &Rfc3339)
        .is_ok_and(|expires| expires - OffsetDateTime::now_utc() > CHALLENGE_MARGIN)
}

fn is_network_failure(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Network { .. }
            | ClientError::UntrustedServer { .. }
            | ClientError::Protocol { .. }
    )
}

fn failure_of(error: &ClientError) -> AuthFailure {
    match error {
        ClientError::Refused { code, .. } => AuthFailure::ServerRefused { code: *code },
        _ => AuthFailure::ServerUnreachable,
    }
}

#[cfg(test)]
mod tests {
    use pivtap_server_client::assertion::AssertionDraft;
    use pivtap_server_client::wire::AssertionPayload;

    use super::*;

    fn fixture_der(path: &str) -> Vec<u8> {
        let pem =
            std::fs::read(format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
    }

    #[test]
    fn the_session_badge_is_known_by_the_certificate_in_its_assertion() {
        let der = fixture_der("certs/alice.pem");
        let draft = AssertionDraft::new(
            "RS256",
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
