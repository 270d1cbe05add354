//! End-to-end tests of changing and unblocking the PIN at the kiosk: the runtime (headless inputs) against the embedded server on loopback, with badges in in-process virtual readers (no pcscd).

use std::sync::Arc;
use std::time::Duration;

use pivtap_apdu::piv::Pin;
use pivtap_card::PivSession;
use pivtap_kiosk::builder::{KioskBuilder, KioskError};
use pivtap_kiosk::core::{NoticeCode, PinFormFailure, SessionEvent};
use pivtap_kiosk::local_api::SessionBoard;
use pivtap_kiosk::readers::VirtualReaders;
use pivtap_kiosk::runtime::Input;
use pivtap_server::server::embedded::EmbeddedServer;
use pivtap_testkit::badge::ALICE;
use pivtap_testkit::server::with_badge_users;
use pivtap_vcard::VirtualCardBackend;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

const DESK: &str = "Desk reader";
const ALICE_PIN: &str = ALICE.pin;
const ALICE_PUK: &str = ALICE.puk;
/// The longest wait for one expected event.
const EVENT_WAIT: Duration = Duration::from_secs(20);

/// Whether `pin` verifies on the badge (it shares its card with the reader's copy).
fn pin_works(badge: &VirtualCardBackend, pin: &str) -> bool {
    let mut card = badge.clone();
    let mut session = PivSession::open(&mut card).expect("the badge answers");
    session.verify_pin(&Pin::new(pin).expect("a PIN")).is_ok()
}

/// The server knowing alice, and the kiosk over one virtual desk reader.
struct Harness {
    _server: EmbeddedServer,
    readers: VirtualReaders,
    inputs: UnboundedSender<Input>,
    events: UnboundedReceiver<SessionEvent>,
    running: JoinHandle<Result<(), KioskError>>,
    board: SessionBoard,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server = with_badge_users(dir.path(), &[ALICE]).await;
        let readers = VirtualReaders::new(&[DESK]);
        let board = SessionBoard::new();
        let client = server
            .device_client("pin-kiosk", Duration::from_secs(5))
            .await
            .expect("the kiosk is registered");
        let (events_tx, events) = unbounded_channel();
        let kiosk = KioskBuilder::new("pin-kiosk", client, Arc::new(readers.clone()))
            .board(board.clone())
            .event_sink(events_tx)
            .spawn();
        let (inputs, running) = (kiosk.inputs, kiosk.task);
        Harness {
            _server: server,
            readers,
            inputs,
            events,
            running,
            board,
            _dir: dir,
        }
    }

    fn send(&self, input: Input) {
        self.inputs.send(input).expect("the kiosk is running");
    }

    /// A line of digits, as headless mode reads it.
    fn digits(&self, digits: &str) {
        self.send(Input::Pin(Zeroizing::new(digits.to_owned())));
    }

    /// Waits for the next event `wanted` accepts, skipping others; returns it.
    async fn expect(&mut self, what: &str, wanted: impl Fn(&SessionEvent) -> bool) -> SessionEvent {
        loop {
            let event = tokio::time::timeout(EVENT_WAIT, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {EVENT_WAIT:?}"))
                .expect("the kiosk is running");
            if wanted(&event) {
                return event;
            }
        }
    }

    /// Taps `badge` and signs in with `pin`.
    async fn sign_in(&mut self, badge: &VirtualCardBackend, pin: &str) {
        self.readers.insert(DESK, badge.clone());
        self.expect("pin_required", |e| {
            matches!(e, SessionEvent::PinRequired { .. })
        })
        .await;
        self.digits(pin);
        self.expect("signed_in", |e| matches!(e, SessionEvent::SignedIn { .. }))
            .await;
    }

    async fn stop(self) {
        self.send(Input::Quit);
        self.running
            .await
            .expect("the kiosk task ends")
            .expect("the kiosk ends cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_worker_changes_the_pin_at_the_kiosk() {
    let mut k = Harness::start().await;
    let badge = ALICE.backend();
    k.sign_in(&badge, ALICE_PIN).await;

    k.send(Input::ChangePin);
    k.expect("current_pin_required", |e| {
        matches!(e, SessionEvent::CurrentPinRequired { tries_left: None })
    })
    .await;
    k.digits(ALICE_PIN);
    k.expect("new_pin_required", |e| {
        matches!(e, SessionEvent::NewPinRequired { repeat: false })
    })
    .await;
    // The server's (default) policy refuses a run of digits before the card sees it.
    k.digits("345678");
    let refused = k
        .expect("pin_change_failed", |e| {
            matches!(e, SessionEvent::PinChangeFailed { .. })
        })
        .await;
    assert!(
        matches!(
            refused,
            SessionEvent::PinChangeFailed {
                reason: PinFormFailure::Policy,
                ..
            }
        ),
        "{refused:?}"
    );
    k.digits("240913");
    k.expect("the repetition", |e| {
        matches!(e, SessionEvent::NewPinRequired { repeat: true })
    })
    .await;
    k.digits("240913");
    let outcome = k
        .expect("the outcome", |e| {
            matches!(
                e,
                SessionEvent::PinChanged | SessionEvent::PinChangeFailed { .. }
            )
        })
        .await;
    assert_eq!(outcome, SessionEvent::PinChanged);
    assert!(pin_works(&badge, "240913"), "the card has the new PIN");
    assert!(!pin_works(&badge, ALICE_PIN), "and not the old one");
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_current_pin_is_reported_with_the_tries_left() {
    let mut k = Harness::start().await;
    let badge = ALICE.backend();
    k.sign_in(&badge, ALICE_PIN).await;
    k.send(Input::ChangePin);
    k.digits("918273");
    k.digits("240913");
    k.digits("240913");
    let failed = k
        .expect("pin_change_failed", |e| {
            matches!(e, SessionEvent::PinChangeFailed { .. })
        })
        .await;
    assert!(
        matches!(
            failed,
            SessionEvent::PinChangeFailed {
                reason: PinFormFailure::WrongPin,
                tries_left: Some(2),
                ..
            }
        ),
        "{failed:?}"
    );
    k.expect("current_pin_required again", |e| {
        matches!(
            e,
            SessionEvent::CurrentPinRequired {
                tries_left: Some(2)
            }
        )
    })
    .await;
    assert!(pin_works(&badge, ALICE_PIN), "the PIN is unchanged");
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_badge_is_unblocked_with_the_puk_and_signs_in() {
    let mut k = Harness::start().await;
    let badge = ALICE.backend();
    for _ in 0..3 {
        let _ = pin_works(&badge, "000000");
    }
    k.readers.insert(DESK, badge.clone());
    let blocked = k
        .expect("pin_blocked", |e| matches!(e, SessionEvent::Error(_)))
        .await;
    assert!(
        matches!(&blocked, SessionEvent::Error(notice) if notice.code == NoticeCode::PinBlocked),
        "{blocked:?}"
    );
    k.send(Input::Unblock);
    k.expect("puk_required", |e| {
        matches!(e, SessionEvent::PukRequired { tries_left: None })
    })
    .await;
    k.digits("87654321");
    k.digits("579135");
    k.digits("579135");
    let failed = k
        .expect("unblock_failed", |e| {
            matches!(e, SessionEvent::UnblockFailed { .. })
        })
        .await;
    assert!(
        matches!(
            failed,
            SessionEvent::UnblockFailed {
                reason: PinFormFailure::WrongPuk,
                tries_left: Some(2),
                ..
            }
        ),
        "{failed:?}"
    );
    k.digits(ALICE_PUK);
    k.digits("579135");
    k.digits("579135");
    k.expect("card_unblocked", |e| {
        matches!(e, SessionEvent::CardUnblocked)
    })
    .await;
    // The badge is still on the reader: straight on to the PIN prompt.
    k.expect("pin_required", |e| {
        matches!(
            e,
            SessionEvent::PinRequired {
                tries_left: Some(3)
            }
        )
    })
    .await;
    k.digits("579135");
    k.expect("signed_in", |e| matches!(e, SessionEvent::SignedIn { .. }))
        .await;
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_kiosk_signs_the_worker_out_first() {
    let mut k = Harness::start().await;
    let badge = ALICE.backend();
    k.sign_in(&badge, ALICE_PIN).await;
    assert!(k.board.current().is_some(), "the local API shows Alice");
    k.send(Input::Quit);
    let event = k
        .expect("signed_out", |e| {
            matches!(e, SessionEvent::SignedOut { .. })
        })
        .await;
    assert_eq!(
        serde_json::to_value(&event).unwrap()["reason"],
        "shutdown",
        "{event:?}"
    );
    assert!(k.board.current().is_none(), "the local API shows nobody");
    k.running
        .await
        .expect("the kiosk task ends")
        .expect("the kiosk ends cleanly");
}
