//! pcscd is stopped and started again while the kiosk runs (PC/SC readers, vpcd badges, embedded server): the kiosk says the reader service is down, then resumes by itself and signs the next badge in.
//!
//! It stops the system pcscd (by its process id) and starts it again as `scripts/setup-debian`
//! does (`pcscd`, as root), so it runs only when asked for by name, under the machine's pcscd
//! lock: `flock /tmp/pivtap-pcscd.lock cargo test -p pivtap-kiosk --test pcscd_restart --
//! --ignored`. Without pcscd and vpcd it fails, saying so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pivtap_card::pcsc::PcscContext;
use pivtap_card::reader_monitor::MonitorFilter;
use pivtap_kiosk::builder::{KioskBuilder, KioskError};
use pivtap_kiosk::core::{NoticeCode, SessionEvent};
use pivtap_kiosk::readers::PcscReaders;
use pivtap_kiosk::runtime::Input;
use pivtap_server::server::embedded::EmbeddedServer;
use pivtap_server::store::{User, UserState};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::vpcd::{Attachment, AttachmentSummary, Detacher, VpcdError};
use pivtap_vcard::{VirtualCard, VirtualCardBackend};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle as TaskHandle;
use zeroize::Zeroizing;

const READER: &str = "Virtual PCD 00 00";
const VPCD_PORT: u16 = 35963;
const ALICE_PIN: &str = "123456";
const EVENT_WAIT: Duration = Duration::from_secs(20);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn pcscd_pid() -> Option<String> {
    let output = Command::new("pgrep").args(["-x", "pcscd"]).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().next().map(str::to_owned)
}

/// Stops the system pcscd by its process id and waits until it is gone.
fn stop_pcscd() {
    let pid = pcscd_pid().expect("pcscd is running");
    let status = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "cannot stop pcscd {pid} ({status:?}): this test needs root"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pcscd_pid().is_some() {
        assert!(Instant::now() < deadline, "pcscd did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts pcscd as `scripts/setup-debian` does (it forks into the background).
fn start_pcscd() {
    let status = Command::new("pcscd").status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "cannot start pcscd: {status:?}"
    );
}

/// Starts pcscd again if the test failed while it was stopped.
struct PcscdBack;

impl Drop for PcscdBack {
    fn drop(&mut self) {
        if pcscd_pid().is_none() {
            let _ = Command::new("pcscd").status();
        }
    }
}

/// Fails unless pcscd answers and lists the vpcd reader, empty.
fn require_pcscd_with_vpcd() {
    let context = PcscContext::establish().unwrap_or_else(|error| {
        panic!(
            "pcscd is not reachable ({error}): this test needs the system pcscd with the \
             vsmartcard vpcd driver (Debian packages pcscd and vsmartcard-vpcd)"
        )
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = context
            .list_readers()
            .unwrap_or_else(|error| panic!("pcscd cannot list its readers ({error})"));
        let reader = listed
            .iter()
            .find(|reader| reader.name == READER)
            .unwrap_or_else(|| panic!("pcscd has no reader {READER:?}: {listed:?}"));
        if !reader.card_present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{READER} holds a card (is `pivtap vcard attach` running?)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A badge in the vpcd reader, served by a thread; taken out on drop.
struct InReader {
    detacher: Detacher,
    serving: Option<JoinHandle<Result<AttachmentSummary, VpcdError>>>,
}

impl InReader {
    /// Attaches `card`, retrying for `patience` while vpcd (restarting with pcscd) is not
    /// listening yet.
    fn attach(card: &VirtualCardBackend, patience: Duration) -> Self {
        let address = SocketAddr::from(([127, 0, 0, 1], VPCD_PORT));
        let deadline = Instant::now() + patience;
        let (attachment, detacher) = loop {
            match Attachment::connect(address) {
                Ok(connected) => break connected,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!("cannot attach a card through vpcd ({error})"),
            }
        };
        let card = card.clone();
        let serving = std::thread::spawn(move || attachment.serve(&card));
        InReader {
            detacher,
            serving: Some(serving),
        }
    }
}

impl Drop for InReader {
    fn drop(&mut self) {
        if let Some(serving) = self.serving.take() {
            self.detacher.detach();
            let _ = serving.join();
            // pcscd polls vpcd readers about every 0.5 s.
            std::thread::sleep(Duration::from_millis(600));
        }
    }
}

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
    let attached = InReader::attach(badge, patience);
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
    require_pcscd_with_vpcd();
    let _back = PcscdBack;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = EmbeddedServer::start(
        dir.path(),
        vec![fixtures().join("ca/test-ca.pem")],
        &[User {
            id: "alice".to_owned(),
            display_name: "Alice Example".to_owned(),
            mail: Some("alice@example.com".to_owned()),
            upn: None,
            employee_id: None,
            state: UserState::Active,
        }],
    )
    .await
    .expect("the embedded server starts");
    let image = CardImage::load(fixtures().join("cards/alice.toml")).expect("alice's image");
    let badge = VirtualCardBackend::new(VirtualCard::from_image(&image).expect("a card"), "alice");
    let client = server
        .device_client("pcscd-kiosk", Duration::from_secs(5))
        .await
        .expect("the kiosk is registered");
    let readers = Arc::new(PcscReaders::new(MonitorFilter {
        reader_name_contains: Some("Virtual PCD".to_owned()),
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
