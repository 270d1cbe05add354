//! End-to-end tests of the kiosk in headless mode: the runtime against a real server on loopback, reading virtual badges attached through vpcd to the system pcscd.
//!
//! These tests need pcscd with the vsmartcard vpcd driver (readers "Virtual PCD 00 00" on
//! port 35963 and "Virtual PCD 00 01" on port 35964): they fail, saying so, when it is
//! missing. They take turns on one lock, since the machine has one pcscd and the vpcd
//! readers are shared.

use std::sync::Arc;
use std::time::Duration;

use pivtap_card::reader_monitor::MonitorFilter;
use pivtap_client::client::Client;
use pivtap_kiosk::builder::{FaceChoice, KioskBuilder, KioskError};
use pivtap_kiosk::core::{Kiosk, NoticeCode, SessionEvent, SignOutReason};
use pivtap_kiosk::local_api::SessionBoard;
use pivtap_kiosk::readers::{PcscReaders, ReaderSource, ReaderUpdate, ReaderWatch};
use pivtap_kiosk::runtime::{Face, Input};
use pivtap_server::server::embedded::EmbeddedServer;
use pivtap_server::token::TokenVerifier;
use pivtap_testkit::badge::{ALICE, BOB, Badge, CAROL};
use pivtap_testkit::pcscd::{InReader, PcscdTurn, VPCD_NAME, VPCD_READERS, pcscd_turn};
use pivtap_testkit::server::with_badge_users;
use pivtap_vcard::VirtualCardBackend;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle as TaskHandle;
use zeroize::Zeroizing;

const DEVICE: &str = "e2e-kiosk";
/// The longest wait for one expected event.
const EVENT_WAIT: Duration = Duration::from_secs(15);

fn pin_retries_left(card: &VirtualCardBackend) -> u8 {
    card.card().applet().persistent.pin.retries_left
}

/// The kiosk's readers: the vpcd ones.
fn vpcd_readers() -> PcscReaders {
    PcscReaders::new(MonitorFilter {
        reader_name_contains: Some(VPCD_NAME.to_owned()),
        contactless_only: false,
    })
}

/// A session event as the headless face got it, with the token on `signed_in`.
#[derive(Debug)]
struct Recorded {
    event: SessionEvent,
    token: Option<String>,
}

impl Recorded {
    /// The event's name in the headless JSON (`signed_in`, `error`, ...).
    fn kind(&self) -> String {
        event_kind(&self.event)
    }

    fn error_code(&self) -> Option<NoticeCode> {
        match &self.event {
            SessionEvent::Error(notice) => Some(notice.code),
            _ => None,
        }
    }
}

fn event_kind(event: &SessionEvent) -> String {
    serde_json::to_value(event)
        .ok()
        .and_then(|value| value.get("event")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The headless face of these tests: every session event goes to the test.
struct RecordingFace {
    events: UnboundedSender<Recorded>,
}

impl Face for RecordingFace {
    fn refresh(&mut self, _kiosk: &Kiosk, _server_reachable: bool, _now: std::time::Instant) {}

    fn session_event(&mut self, event: &SessionEvent, token: Option<&str>) {
        let _ = self.events.send(Recorded {
            event: event.clone(),
            token: token.map(str::to_owned),
        });
    }
}

/// The server, the kiosk running on a task of its own, and what it said so far.
struct Harness {
    server: EmbeddedServer,
    /// The test's own client of the server (for its JWKS).
    client: Client,
    board: SessionBoard,
    inputs: UnboundedSender<Input>,
    events: UnboundedReceiver<Recorded>,
    /// Every event received, in order.
    seen: Vec<Recorded>,
    running: TaskHandle<Result<(), KioskError>>,
    /// What pcscd reports about the vpcd readers, watched by the test itself.
    reader_updates: UnboundedReceiver<ReaderUpdate>,
    _reader_watch: ReaderWatch,
    _dir: tempfile::TempDir,
    _turn: PcscdTurn,
}

impl Harness {
    /// Takes this test's turn on pcscd, starts a server knowing alice, bob and carol, and
    /// the kiosk watching the vpcd readers.
    async fn start() -> Self {
        // `RUST_LOG=pivtap::kiosk=info,pivtap_kiosk=info` shows what the kiosk did.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let turn = pcscd_turn(&VPCD_READERS);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server = with_badge_users(dir.path(), &[ALICE, BOB, CAROL]).await;
        let client = server.client(Duration::from_secs(5)).expect("a client");
        let kiosk_client = server
            .device_client(DEVICE, Duration::from_secs(5))
            .await
            .expect("the kiosk is registered");
        let board = SessionBoard::new();
        let (updates, reader_updates) = unbounded_channel();
        let reader_watch = vpcd_readers()
            .start(updates)
            .unwrap_or_else(|error| panic!("cannot watch the vpcd readers: {error}"));
        let (events_tx, events) = unbounded_channel();
        let kiosk = KioskBuilder::new(DEVICE, kiosk_client, Arc::new(vpcd_readers()))
            .board(board.clone())
            .face(FaceChoice::Custom(Box::new(RecordingFace {
                events: events_tx,
            })))
            .spawn();
        let (inputs, running) = (kiosk.inputs, kiosk.task);
        Harness {
            server,
            client,
            board,
            inputs,
            events,
            seen: Vec::new(),
            running,
            reader_updates,
            _reader_watch: reader_watch,
            _dir: dir,
            _turn: turn,
        }
    }

    /// Takes the badge out of its reader and waits (at most 5 s) until pcscd has seen it go,
    /// as it would for a person, who cannot tap again within milliseconds.
    async fn remove(&mut self, mut attached: InReader) {
        attached.take_out();
        let reader = attached.reader().name;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.reader_updates.recv()).await {
                Ok(Some(ReaderUpdate::CardRemoved(gone))) if gone == reader => return,
                Ok(Some(_)) => {}
                Ok(None) => panic!("watching the vpcd readers stopped"),
                Err(_) => panic!("pcscd did not see the card leave {reader:?} within 5 s"),
            }
        }
    }

    /// Taps `worker`'s badge on `slot`, types the PIN and waits for the sign-in.
    async fn sign_in(
        &mut self,
        card: &VirtualCardBackend,
        worker: &Badge,
        slot: usize,
    ) -> InReader {
        let attached = InReader::attach(card, VPCD_READERS[slot]);
        // A badge whose PIN was last right on this kiosk has its tries left unread (`None`);
        // which badges that is depends on how earlier taps raced removals and outages.
        let tries_left = self.expect_pin_prompt(slot).await;
        assert!(matches!(tries_left, Some(3) | None), "{tries_left:?}");
        self.type_pin(worker.pin);
        self.expect_signed_in(worker).await;
        attached
    }

    fn send(&self, input: Input) {
        self.inputs.send(input).expect("the kiosk is running");
    }

    fn type_pin(&self, pin: &str) {
        self.send(Input::Pin(Zeroizing::new(pin.to_owned())));
    }

    /// The next event, or `None` after `wait`. Fails if the kiosk stopped.
    async fn next_within(&mut self, wait: Duration) -> Option<&Recorded> {
        match tokio::time::timeout(wait, self.events.recv()).await {
            Ok(Some(recorded)) => {
                self.seen.push(recorded);
                self.seen.last()
            }
            Ok(None) => panic!(
                "the kiosk stopped (its event channel closed); events: {:#?}",
                self.seen
            ),
            Err(_) => None,
        }
    }

    /// Waits (at most 15 s) for the next event that `wanted` accepts, passing over others.
    async fn expect_that(&mut self, what: &str, wanted: impl Fn(&Recorded) -> bool) -> &Recorded {
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        let from = self.seen.len();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(recorded) if wanted(recorded) => break,
                Some(_) => {}
                None => panic!(
                    "no {what} within {EVENT_WAIT:?}; events since: {:#?}",
                    &self.seen[from..]
                ),
            }
        }
        self.seen.last().expect("just received")
    }

    /// Waits (at most 15 s) for the next event of `kind`, passing over others.
    async fn expect(&mut self, kind: &str) -> &Recorded {
        self.expect_that(kind, |recorded| recorded.kind() == kind)
            .await
    }

    /// Waits (at most 15 s) for the next `error` event with `code`, passing over others.
    async fn expect_error(&mut self, code: NoticeCode) -> &Recorded {
        self.expect_that(&format!("error {code}"), |recorded| {
            recorded.error_code() == Some(code)
        })
        .await
    }

    /// Fails if an event of `kind` arrives within `wait`.
    async fn expect_no(&mut self, kind: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(recorded) if recorded.kind() == kind => {
                    panic!("unexpected {kind} (the last one): {:#?}", self.seen)
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// The badge in `slot` is read and a PIN asked for: returns the tries left shown.
    async fn expect_pin_prompt(&mut self, slot: usize) -> Option<u8> {
        let reader = VPCD_READERS[slot].name;
        let present = self.expect("card_present").await;
        assert!(
            matches!(&present.event, SessionEvent::CardPresent { reader: r } if r == reader),
            "{present:?}"
        );
        self.expect_pin_required().await
    }

    async fn expect_pin_required(&mut self) -> Option<u8> {
        match &self.expect("pin_required").await.event {
            SessionEvent::PinRequired { tries_left } => *tries_left,
            other => unreachable!("{other:?}"),
        }
    }

    /// `worker` is signed in: the event names them, its token verifies with the server's
    /// JWKS and the local session API's board shows the session.
    async fn expect_signed_in(&mut self, worker: &Badge) {
        let signed_in = self.expect("signed_in").await;
        let SessionEvent::SignedIn { user, .. } = &signed_in.event else {
            unreachable!("{signed_in:?}");
        };
        assert_eq!(user.id, worker.user_id);
        assert_eq!(user.display_name, worker.display_name);
        assert_eq!(user.mail.as_deref(), Some(worker.mail));
        let token = signed_in
            .token
            .clone()
            .expect("signed_in carries the token");
        let jwks = self.client.jwks().await.expect("the server's JWKS");
        let claims = TokenVerifier::from_jwks(&jwks)
            .expect("a usable JWKS")
            .verify(&token, time::OffsetDateTime::now_utc())
            .expect("the token verifies with the server's JWKS");
        assert_eq!(claims.sub, worker.user_id);
        assert_eq!(claims.device, DEVICE);
        let current = self.board.current().expect("the board shows the session");
        assert_eq!(current.user.id, worker.user_id);
        assert_eq!(current.token.as_deref(), Some(&token));
    }

    /// `worker`'s session ended for `reason`, and the board shows no session.
    async fn expect_signed_out(&mut self, worker: &Badge, reason: SignOutReason) {
        let signed_out = self.expect("signed_out").await;
        assert!(
            matches!(&signed_out.event, SessionEvent::SignedOut { user_id, reason: r, .. }
                if user_id == worker.user_id && *r == reason),
            "expected {} signed out ({reason:?}): {signed_out:?}",
            worker.user_id
        );
        assert!(self.board.current().is_none(), "{:?}", self.board.current());
    }

    /// The kiosk's task is still running (nothing crashed it).
    fn assert_running(&self) {
        assert!(
            !self.running.is_finished(),
            "the kiosk stopped; events: {:#?}",
            self.seen
        );
    }

    /// Tells the kiosk to quit and checks it ended cleanly.
    async fn quit(self) {
        self.send(Input::Quit);
        let ended = tokio::time::timeout(Duration::from_secs(10), self.running)
            .await
            .expect("the kiosk quits within 10 s");
        assert!(
            matches!(ended, Ok(Ok(()))),
            "the kiosk ended badly: {ended:?}"
        );
        self.server.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badge_signs_in_with_its_pin_and_removing_it_signs_out() {
    let mut kiosk = Harness::start().await;
    let alice = ALICE.backend();
    let attached = InReader::attach(&alice, VPCD_READERS[0]);
    assert_eq!(kiosk.expect_pin_prompt(0).await, Some(3));
    kiosk.type_pin(ALICE.pin);
    kiosk.expect_signed_in(&ALICE).await;

    kiosk.remove(attached).await;
    kiosk
        .expect_signed_out(&ALICE, SignOutReason::CardRemoved)
        .await;
    assert_eq!(pin_retries_left(&alice), 3);
    kiosk.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_shows_the_tries_left_and_the_right_pin_then_signs_in() {
    let mut kiosk = Harness::start().await;
    let bob = BOB.backend();
    let attached = InReader::attach(&bob, VPCD_READERS[0]);
    assert_eq!(kiosk.expect_pin_prompt(0).await, Some(3));
    kiosk.type_pin("11223344");
    let error = kiosk.expect_error(NoticeCode::WrongPin).await;
    assert!(
        matches!(&error.event, SessionEvent::Error(notice) if notice.message.contains("2 tries left")),
        "{error:?}"
    );
    assert_eq!(pin_retries_left(&bob), 2);
    // The prompt comes back after the pause that follows a wrong PIN.
    assert_eq!(kiosk.expect_pin_required().await, Some(2));
    kiosk.type_pin(BOB.pin);
    kiosk.expect_signed_in(&BOB).await;
    assert_eq!(pin_retries_left(&bob), 3, "a right PIN resets the counter");

    kiosk.remove(attached).await;
    kiosk
        .expect_signed_out(&BOB, SignOutReason::CardRemoved)
        .await;
    kiosk.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_wrong_pins_block_the_badge_and_the_next_badge_still_works() {
    let mut kiosk = Harness::start().await;
    let carol = CAROL.backend();
    let attached = InReader::attach(&carol, VPCD_READERS[0]);
    assert_eq!(kiosk.expect_pin_prompt(0).await, Some(3));
    for tries_left in [2, 1] {
        kiosk.type_pin("999999");
        kiosk.expect_error(NoticeCode::WrongPin).await;
        assert_eq!(kiosk.expect_pin_required().await, Some(tries_left));
    }
    kiosk.type_pin("999999");
    kiosk.expect_error(NoticeCode::PinBlocked).await;
    assert_eq!(pin_retries_left(&carol), 0);
    kiosk
        .expect_no("pin_required", Duration::from_secs(2))
        .await;

    kiosk.remove(attached).await;
    // Tapped again, the blocked badge is recognised at once, without a PIN.
    let attached = InReader::attach(&carol, VPCD_READERS[0]);
    kiosk.expect("card_present").await;
    kiosk.expect_error(NoticeCode::PinBlocked).await;
    kiosk.remove(attached).await;
    assert!(
        kiosk
            .seen
            .iter()
            .all(|recorded| recorded.kind() != "signed_in"),
        "{:#?}",
        kiosk.seen
    );

    // The kiosk is back to waiting: the next badge signs in (after the wrong-PIN pause).
    let alice = ALICE.backend();
    let attached = kiosk.sign_in(&alice, &ALICE, 0).await;
    kiosk.remove(attached).await;
    kiosk
        .expect_signed_out(&ALICE, SignOutReason::CardRemoved)
        .await;
    kiosk.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_badge_on_the_second_reader_switches_the_user() {
    let mut kiosk = Harness::start().await;
    let (alice, bob) = (ALICE.backend(), BOB.backend());
    let alice_in = kiosk.sign_in(&alice, &ALICE, 0).await;

    let bob_in = InReader::attach(&bob, VPCD_READERS[1]);
    // Changed on purpose (issue 12): Alice stays signed in until Bob's PIN is accepted.
    assert_eq!(kiosk.expect_pin_prompt(1).await, Some(3));
    let current = kiosk.board.current().map(|session| session.user.id);
    assert_eq!(
        current.as_deref(),
        Some(ALICE.user_id),
        "Alice is still signed in"
    );
    kiosk.type_pin(BOB.pin);
    let signed_out = kiosk.expect("signed_out").await;
    assert!(
        matches!(&signed_out.event, SessionEvent::SignedOut { user_id, reason, .. }
            if user_id == ALICE.user_id && *reason == SignOutReason::Switched),
        "{signed_out:?}"
    );
    kiosk.expect_signed_in(&BOB).await;

    // Alice's badge leaving her reader does not end Bob's session; his leaving does.
    kiosk.remove(alice_in).await;
    kiosk.expect_no("signed_out", Duration::from_secs(2)).await;
    assert_eq!(
        kiosk.board.current().map(|session| session.user.id),
        Some(BOB.user_id.to_owned())
    );
    kiosk.remove(bob_in).await;
    kiosk
        .expect_signed_out(&BOB, SignOutReason::CardRemoved)
        .await;
    kiosk.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_going_down_is_reported_and_sign_in_works_again_when_it_is_back() {
    let mut kiosk = Harness::start().await;
    let (alice, bob) = (ALICE.backend(), BOB.backend());
    let attached = kiosk.sign_in(&alice, &ALICE, 0).await;
    kiosk.remove(attached).await;
    kiosk
        .expect_signed_out(&ALICE, SignOutReason::CardRemoved)
        .await;

    kiosk.server.stop();
    let attached = InReader::attach(&bob, VPCD_READERS[0]);
    assert_eq!(kiosk.expect_pin_prompt(0).await, Some(3));
    kiosk.type_pin(BOB.pin);
    kiosk.expect_error(NoticeCode::ServerUnreachable).await;
    kiosk.expect_no("signed_in", Duration::from_secs(2)).await;
    kiosk.assert_running();
    kiosk.remove(attached).await;

    kiosk
        .server
        .restart()
        .await
        .expect("the server serves again on its port");
    let attached = kiosk.sign_in(&bob, &BOB, 0).await;
    kiosk.remove(attached).await;
    kiosk
        .expect_signed_out(&BOB, SignOutReason::CardRemoved)
        .await;
    kiosk.quit().await;
}

/// How a removal racing the signature ended.
#[derive(Debug, PartialEq, Eq)]
enum RaceOutcome {
    /// The sign-in was abandoned: an `error` with code `card_removed`, no session.
    Abandoned,
    /// The sign-in finished first: `signed_in`, then at once `signed_out` (card removed).
    SignedInThenOut,
}

/// After a removal during sign-in, waits until the kiosk has settled and returns how.
async fn settle_after_removal(kiosk: &mut Harness) -> RaceOutcome {
    let mut signed_in = false;
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(recorded) = kiosk.next_within(left).await else {
            panic!("the removal was not reported: {:#?}", kiosk.seen);
        };
        match (&recorded.event, signed_in) {
            (SessionEvent::SignedIn { .. }, false) => signed_in = true,
            (
                SessionEvent::SignedOut {
                    reason: SignOutReason::CardRemoved,
                    ..
                },
                true,
            ) => return RaceOutcome::SignedInThenOut,
            (SessionEvent::Error(notice), false) if notice.code == NoticeCode::CardRemoved => {
                return RaceOutcome::Abandoned;
            }
            (SessionEvent::PinRequired { .. } | SessionEvent::CardPresent { .. }, _) => {}
            _ => panic!(
                "unexpected event after the removal (the last one): {:#?}",
                kiosk.seen
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badge_removed_during_signing_leaves_no_session_and_the_kiosk_recovers() {
    let mut kiosk = Harness::start().await;
    let alice = ALICE.backend();
    // Removal right after the PIN, and a little later: the card's work and the removal race.
    for delay_ms in [0, 0, 0, 20, 150] {
        let attached = InReader::attach(&alice, VPCD_READERS[0]);
        kiosk.expect_pin_prompt(0).await;
        kiosk.type_pin(ALICE.pin);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        kiosk.remove(attached).await;
        let outcome = settle_after_removal(&mut kiosk).await;
        kiosk.expect_no("signed_in", Duration::from_secs(1)).await;
        assert!(
            kiosk.board.current().is_none(),
            "a session remains after the badge left ({outcome:?}, {delay_ms} ms): {:?}",
            kiosk.board.current()
        );
        kiosk.assert_running();
        eprintln!("removal {delay_ms} ms after the PIN: {outcome:?}");
    }
    assert_eq!(pin_retries_left(&alice), 3);

    let attached = kiosk.sign_in(&alice, &ALICE, 0).await;
    kiosk.remove(attached).await;
    kiosk
        .expect_signed_out(&ALICE, SignOutReason::CardRemoved)
        .await;
    kiosk.quit().await;
}
