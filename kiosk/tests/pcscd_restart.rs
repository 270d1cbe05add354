//! pcscd is stopped and started again while the kiosk runs (PC/SC readers, vpcd badges, embedded server): the kiosk says the reader service is down, then resumes by itself and signs the next badge in.
//!
//! It stops the system pcscd (by its process id) and starts it again as `scripts/setup-debian`
//! does (`pcscd`, as root), so it runs only when asked for by name, under the machine's pcscd
//! lock: `flock /tmp/pivtap-pcscd.lock cargo test -p pivtap-kiosk --test pcscd_restart --
//! --ignored`. Without pcscd and vpcd it fails, saying so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pivtap_card::reader_monitor::MonitorFilter;
use pivtap_kiosk::builder::{KioskBuilder, KioskError};
use pivtap_kiosk::core::{NoticeCode, SessionEvent};
use pivtap_kiosk::readers::PcscReaders;
use pivtap_kiosk::runtime::Input;
use pivtap_testkit::badge::ALICE;
use pivtap_testkit::pcscd::{
    InReader, PcscdBack, VPCD_NAME, VPCD_READER_0, pcscd_turn, start_pcscd, stop_pcscd,
};
use pivtap_testkit::server::with_badge_users;
use pivtap_vcard::VirtualCardBackend;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle as TaskHandle;
use zeroize::Zeroizing;

const ALICE_PIN: &str = ALICE.pin;
const EVENT_WAIT: Duration = Duration::from_secs(20);

async fn expect(
    events: &mut UnboundedReceiver<SessionEvent>,
    what: &str,
    wanted: impl Fn(&SessionEvent) -> bool,
) -> Vec<SessionEvent> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(EVENT_WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {EVENT_WAIT:?}; saw {seen:?}"))
            .expect("the kiosk is running");
        let done = wanted(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

async fn sign_in(
    events: &mut UnboundedReceiver<SessionEvent>,
    inputs: &UnboundedSender<Input>,
    badge: &VirtualCardBackend,
    patience: Duration,
) -> InReader {
    let attached = InReader::attach_within(badge, VPCD_READER_0, patience);
    expect(events, "pin_required", |e| {
        matches!(e, SessionEvent::PinRequired { .. })
    })
    .await;
    inputs
        .send(Input::Pin(Zeroizing::new(ALICE_PIN.to_owned())))
        .expect("the kiosk is running");
    let seen = expect(events, "signed_in", |e| {
        matches!(e, SessionEvent::SignedIn { .. } | SessionEvent::Error(_))
    })
    .await;
    assert!(
        matches!(seen.last(), Some(SessionEvent::SignedIn { user, .. }) if user.id == "alice"),
        "{seen:?}"
    );
    attached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the system pcscd (needs root and the pcscd lock); run it by name"]
async fn the_kiosk_says_pcscd_stopped_and_resumes_when_it_is_back() {
    let _turn = pcscd_turn(&[VPCD_READER_0]);
    let _back = PcscdBack;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = with_badge_users(dir.path(), &[ALICE]).await;
    let badge = ALICE.backend();
    let client = server
        .device_client("pcscd-kiosk", Duration::from_secs(5))
        .await
        .expect("the kiosk is registered");
    let readers = Arc::new(PcscReaders::new(MonitorFilter {
        reader_name_contains: Some(VPCD_NAME.to_owned()),
        contactless_only: false,
    }));
    let (events_tx, mut events) = unbounded_channel();
    let kiosk = KioskBuilder::new("pcscd-kiosk", client, readers)
        .event_sink(events_tx)
        .spawn();
    let (inputs, running): (_, TaskHandle<Result<(), KioskError>>) = (kiosk.inputs, kiosk.task);

    let attached = sign_in(&mut events, &inputs, &badge, Duration::ZERO).await;
    drop(attached);
    expect(&mut events, "signed_out", |e| {
        matches!(e, SessionEvent::SignedOut { .. })
    })
    .await;

    let stopped = Instant::now();
    tokio::task::spawn_blocking(stop_pcscd)
        .await
        .expect("pcscd stops");
    let seen = expect(&mut events, "reader_service_down", |e| {
        matches!(e, SessionEvent::Error(notice) if notice.code == NoticeCode::ReaderServiceDown)
    })
    .await;
    eprintln!(
        "the kiosk reported pcscd gone {:?} after the stop began: {seen:?}",
        stopped.elapsed()
    );
    assert!(!running.is_finished(), "the kiosk keeps running");

    tokio::task::spawn_blocking(start_pcscd)
        .await
        .expect("pcscd starts");
    let restarted = Instant::now();
    // The kiosk watches pcscd again by itself: the next badge signs in.
    let attached = sign_in(&mut events, &inputs, &badge, Duration::from_secs(15)).await;
    eprintln!(
        "signed in again {:?} after pcscd was started",
        restarted.elapsed()
    );
    drop(attached);
    expect(&mut events, "signed_out", |e| {
        matches!(e, SessionEvent::SignedOut { .. })
    })
    .await;
    inputs.send(Input::Quit).expect("the kiosk is running");
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the kiosk quits within 10 s");
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
}
