//! Fault injection at the kiosk, end to end against the embedded server: the badge leaves the field at every APDU position of a tap (before a command, and after the card acted on it but before its answer arrived); the server goes silent mid-tap, never answers, stops and comes back, is not trusted, or refuses the device.
//!
//! Each time the kiosk must say what happened (`card_removed`, `server_unreachable`), never
//! sign anyone in half-way (the server's audit shows only the clean sign-ins), take the next
//! tap normally, and leave the badge as it was (same image, PIN tries back at 3). No pcscd:
//! the badges sit in in-process virtual readers wrapped by [`FaultyReaders`], which counts
//! the APDUs of a tap and pulls the card out at the chosen one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pivtap_card::{CardBackend, CardTransaction, LinkCapabilities, PivSession, TransportError};
use pivtap_client::client::{Client, ServerTrust};
use pivtap_kiosk::builder::{FaceChoice, KioskBuilder, KioskError};
use pivtap_kiosk::core::{Kiosk, Notice, NoticeCode, SessionEvent};
use pivtap_kiosk::readers::{ReaderSource, ReaderUpdate, ReaderWatch, VirtualReaders};
use pivtap_kiosk::runtime::{self, Face, Input};
use pivtap_protocol::wire::ErrorCode;
use pivtap_server::server::embedded::EmbeddedServer;
use pivtap_server::store::{AuditKind, AuditOutcome, AuditQuery};
use pivtap_vcard::{CardOptions, Interface, VirtualCardBackend};
use std::io::Write as _;

use pivtap_testkit::badge::ALICE;
use pivtap_testkit::server::with_badge_users;
use pivtap_testkit::test_ca;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

const DESK: &str = "Desk reader";
const ALICE_PIN: &str = ALICE.pin;
/// The longest wait for one expected event.
const EVENT_WAIT: Duration = Duration::from_secs(20);
/// The kiosk's HTTP time-out in the silent-server tests.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn image_of(badge: &VirtualCardBackend) -> String {
    badge
        .card()
        .to_image()
        .expect("the card exports its image")
        .to_toml_string()
        .expect("the image serialises")
        .to_string()
}

fn pin_tries(badge: &VirtualCardBackend) -> Option<u8> {
    let mut card = badge.clone();
    let mut session = PivSession::open(&mut card).expect("the badge answers");
    session.pin_retries().expect("the badge tells its tries")
}

/// Where in a command the card leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The card is gone before the command reaches it.
    BeforeCommand,
    /// The card acted on the command, then left before its answer came back.
    AnswerLost,
}

#[derive(Default)]
struct FaultState {
    /// APDUs sent since the last [`FaultyReaders::arm`] or [`FaultyReaders::count_from_zero`].
    sent: AtomicUsize,
    armed: Mutex<Option<(Cut, usize)>>,
    fired: AtomicBool,
}

/// Virtual readers whose connections count APDUs and, when armed, pull the card out of the
/// reader at one of them (as a worker taking the badge away would: `CardRemoved` is reported
/// and the connection fails).
#[derive(Clone)]
struct FaultyReaders {
    readers: VirtualReaders,
    state: Arc<FaultState>,
}

impl FaultyReaders {
    fn new() -> Self {
        FaultyReaders {
            readers: VirtualReaders::new(&[DESK]),
            state: Arc::default(),
        }
    }

    fn count_from_zero(&self) {
        self.state.sent.store(0, Ordering::SeqCst);
    }

    fn sent(&self) -> usize {
        self.state.sent.load(Ordering::SeqCst)
    }

    fn arm(&self, cut: Cut, position: usize) {
        self.count_from_zero();
        self.state.fired.store(false, Ordering::SeqCst);
        *self
            .state
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((cut, position));
    }

    fn fired(&self) -> bool {
        self.state.fired.load(Ordering::SeqCst)
    }
}

impl ReaderSource for FaultyReaders {
    fn start(&self, updates: UnboundedSender<ReaderUpdate>) -> Result<ReaderWatch, TransportError> {
        self.readers.start(updates)
    }

    fn connect(&self, reader: &str) -> Result<Box<dyn CardBackend>, TransportError> {
        Ok(Box::new(FaultyBackend {
            inner: self.readers.connect(reader)?,
            readers: self.clone(),
            reader: reader.to_owned(),
        }))
    }
}

struct FaultyBackend {
    inner: Box<dyn CardBackend>,
    readers: FaultyReaders,
    reader: String,
}

impl CardBackend for FaultyBackend {
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
        Ok(Box::new(FaultyTransaction {
            inner: self.inner.transaction()?,
            readers: &self.readers,
            reader: &self.reader,
        }))
    }

    fn capabilities(&self) -> LinkCapabilities {
        self.inner.capabilities()
    }

    fn name(&self) -> String {
        self.inner.name()
    }
}

struct FaultyTransaction<'a> {
    inner: Box<dyn CardTransaction + 'a>,
    readers: &'a FaultyReaders,
    reader: &'a str,
}

impl CardTransaction for FaultyTransaction<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let state = &self.readers.state;
        let position = state.sent.fetch_add(1, Ordering::SeqCst);
        let cut = {
            let mut armed = state.armed.lock().unwrap_or_else(PoisonError::into_inner);
            match *armed {
                Some((cut, at)) if at == position => armed.take().map(|_| cut),
                _ => None,
            }
        };
        match cut {
            None => self.inner.transmit(command),
            Some(cut) => {
                if cut == Cut::AnswerLost {
                    // The card acts on the command; its answer never comes back.
                    let _ = self.inner.transmit(command);
                }
                // Marked first: the removal is announced at once, and the test may look.
                state.fired.store(true, Ordering::SeqCst);
                self.readers.readers.remove(self.reader);
                Err(TransportError::CardRemoved)
            }
        }
    }
}

/// Forwards events to the test, and writes them as headless mode prints them (without the
/// session token) to `target/test-logs/faults/events.jsonl` for the secret scan.
struct RecordingFace {
    events: UnboundedSender<SessionEvent>,
    log: Option<std::fs::File>,
}

/// Logs every APDU (`pivtap::apdu=trace`: PINs and keys redacted) and the kiosk's own log
/// lines to `target/test-logs/faults/trace.log`, once per process, for the secret scan.
fn trace_to_file() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-logs/faults");
        let Ok(file) = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("trace.log"))
        }) else {
            return;
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "pivtap::apdu=trace,pivtap_kiosk=debug,pivtap::kiosk=debug,pivtap_card=debug",
            ))
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init();
    });
}

impl RecordingFace {
    fn new(events: UnboundedSender<SessionEvent>) -> Self {
        trace_to_file();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-logs/faults");
        let log = std::fs::create_dir_all(&dir).ok().and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("events.jsonl"))
                .ok()
        });
        RecordingFace { events, log }
    }
}

impl Face for RecordingFace {
    fn refresh(&mut self, _kiosk: &Kiosk, _server_reachable: bool, _now: Instant) {}

    fn session_event(&mut self, event: &SessionEvent, _token: Option<&str>) {
        if let Some(log) = &mut self.log {
            let _ = writeln!(
                log,
                "{}",
                pivtap_kiosk::headless::event_line(event, None, time::OffsetDateTime::now_utc())
            );
        }
        let _ = self.events.send(event.clone());
    }
}

async fn start_server(dir: &Path) -> EmbeddedServer {
    with_badge_users(dir, &[ALICE]).await
}

/// Successful sign-ins the server recorded.
async fn signins_recorded(server: &EmbeddedServer) -> usize {
    server
        .state
        .store()
        .query_audit(&AuditQuery {
            outcome: Some(AuditOutcome::Ok),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .expect("the audit log answers")
        .iter()
        .filter(|event| event.kind == AuditKind::Assertion)
        .count()
}

/// One kiosk runtime on `readers`, talking to the server through `client`.
struct TestKiosk {
    inputs: UnboundedSender<Input>,
    events: UnboundedReceiver<SessionEvent>,
    running: JoinHandle<Result<(), KioskError>>,
}

impl TestKiosk {
    fn start(readers: Arc<dyn ReaderSource>, client: Client) -> Self {
        let (events_tx, events) = unbounded_channel();
        let kiosk = KioskBuilder::new("fault-kiosk", client, readers)
            .face(FaceChoice::Custom(Box::new(RecordingFace::new(events_tx))))
            .spawn();
        let (inputs, running) = (kiosk.inputs, kiosk.task);
        TestKiosk {
            inputs,
            events,
            running,
        }
    }

    fn send(&self, input: Input) {
        self.inputs.send(input).expect("the kiosk is running");
    }

    async fn next(&mut self, what: &str) -> SessionEvent {
        tokio::time::timeout(EVENT_WAIT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("no event within {EVENT_WAIT:?} while waiting for {what}"))
            .expect("the kiosk is running")
    }

    /// Answers PIN prompts with alice's PIN until an `error` event; panics on a sign-in.
    /// Returns the error's code and every event seen.
    async fn until_error(&mut self, what: &str) -> (NoticeCode, Vec<SessionEvent>) {
        let mut seen = Vec::new();
        loop {
            let event = self.next(what).await;
            seen.push(event.clone());
            match event {
                SessionEvent::PinRequired { .. } => {
                    self.send(Input::Pin(Zeroizing::new(ALICE_PIN.to_owned())));
                }
                SessionEvent::SignedIn { .. } => panic!("{what}: signed in half-way: {seen:?}"),
                SessionEvent::Error(notice) => return (notice.code, seen),
                _ => {}
            }
        }
    }

    /// A clean tap: PIN, signed in; then the badge leaves and the worker is signed out.
    async fn clean_sign_in(&mut self, readers: &VirtualReaders, badge: &VirtualCardBackend) {
        readers.insert(DESK, badge.clone());
        self.pin_to_sign_in("a clean tap").await;
        readers.remove(DESK);
        loop {
            if let SessionEvent::SignedOut { .. } = self.next("signed_out").await {
                break;
            }
        }
    }

    /// Waits for the PIN prompt, types alice's PIN and waits until she is signed in; panics
    /// on a sign-in without a PIN or an error after the PIN.
    async fn pin_to_sign_in(&mut self, what: &str) {
        loop {
            match self.next(&format!("{what}: pin_required")).await {
                SessionEvent::PinRequired { .. } => break,
                SessionEvent::SignedIn { .. } => panic!("{what}: signed in without a PIN"),
                _ => {}
            }
        }
        self.send(Input::Pin(Zeroizing::new(ALICE_PIN.to_owned())));
        loop {
            match self.next(&format!("{what}: signed_in")).await {
                SessionEvent::SignedIn { user, .. } => {
                    assert_eq!(user.id, "alice");
                    break;
                }
                SessionEvent::Error(notice) => panic!("{what} failed: {notice:?}"),
                _ => {}
            }
        }
    }

    async fn stop(self) {
        self.send(Input::Quit);
        tokio::time::timeout(Duration::from_secs(10), self.running)
            .await
            .expect("the kiosk stops within 10 s")
            .expect("the kiosk task ends")
            .expect("the kiosk stops cleanly");
    }
}

/// The APDUs of one clean tap on `kiosk` (cold or warm cache, as the kiosk is).
async fn apdus_of_a_clean_tap(
    kiosk: &mut TestKiosk,
    faulty: &FaultyReaders,
    badge: &VirtualCardBackend,
) -> usize {
    faulty.count_from_zero();
    kiosk.clean_sign_in(&faulty.readers, badge).await;
    faulty.sent()
}

/// The card leaves at position `position` of a tap: the kiosk says `card_removed`, nobody is
/// signed in, and the next tap signs in.
async fn fault_then_recover(
    kiosk: &mut TestKiosk,
    faulty: &FaultyReaders,
    badge: &VirtualCardBackend,
    cut: Cut,
    position: usize,
    label: &str,
) {
    let what = format!("{label} tap cut {cut:?} at APDU {position}");
    faulty.arm(cut, position);
    faulty.readers.insert(DESK, badge.clone());
    let (code, seen) = kiosk.until_error(&what).await;
    assert!(faulty.fired(), "{what}: the fault never fired: {seen:?}");
    assert_eq!(code, NoticeCode::CardRemoved, "{what}: {seen:?}");
    kiosk.clean_sign_in(&faulty.readers, badge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_badge_leaving_at_every_apdu_of_a_tap_is_reported_and_never_signs_in() {
    every_apdu_position(ALICE.backend(), "extended-length").await;
}

/// Short APDUs only (as many NFC readers): the certificate comes in chunks (61xx / GET
/// RESPONSE), so a first tap has many more positions to be cut at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_badge_leaving_at_every_apdu_of_a_short_apdu_tap_is_reported_too() {
    let badge = ALICE.backend();
    badge.card().set_options(CardOptions {
        extended_length: false,
        interface: Interface::Contact,
    });
    every_apdu_position(badge, "short-APDU").await;
}

async fn every_apdu_position(badge: VirtualCardBackend, link: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = start_server(dir.path()).await;
    let credential = server
        .register_device("fault-kiosk")
        .await
        .expect("the kiosk is registered");
    let client = || {
        server
            .client(Duration::from_secs(5))
            .expect("a client")
            .with_device_credential(Arc::clone(&credential))
    };
    let image_before = image_of(&badge);
    let mut clean_signins = 0;

    // How many APDUs a first (cold cache) and a repeat (warm cache) tap take.
    let faulty = FaultyReaders::new();
    let mut kiosk = TestKiosk::start(Arc::new(faulty.clone()), client());
    let cold = apdus_of_a_clean_tap(&mut kiosk, &faulty, &badge).await;
    let warm = apdus_of_a_clean_tap(&mut kiosk, &faulty, &badge).await;
    clean_signins += 2;
    assert!(cold > warm && warm >= 3, "cold {cold}, warm {warm} APDUs");
    eprintln!("{link}: a first tap takes {cold} APDUs, a repeat tap {warm}");

    // Repeat taps (certificate cached): every position, both cuts, one kiosk.
    for cut in [Cut::BeforeCommand, Cut::AnswerLost] {
        for position in 0..warm {
            fault_then_recover(&mut kiosk, &faulty, &badge, cut, position, "repeat").await;
            clean_signins += 1;
        }
    }
    kiosk.stop().await;

    // First taps (nothing cached): a new kiosk for each position.
    for cut in [Cut::BeforeCommand, Cut::AnswerLost] {
        for position in 0..cold {
            let faulty = FaultyReaders::new();
            let mut kiosk = TestKiosk::start(Arc::new(faulty.clone()), client());
            fault_then_recover(&mut kiosk, &faulty, &badge, cut, position, "first").await;
            clean_signins += 1;
            kiosk.stop().await;
        }
    }

    assert_eq!(
        signins_recorded(&server).await,
        clean_signins,
        "the server saw only the clean sign-ins"
    );
    assert_eq!(pin_tries(&badge), Some(3), "no PIN try lost");
    assert_eq!(
        image_of(&badge),
        image_before,
        "the badge's image is intact"
    );
}

/// A TCP relay in front of the server that can go silent: it then keeps every connection
/// open and passes nothing more, in either direction.
struct Relay {
    origin: String,
    silent: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let origin = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().expect("an address").port()
        );
        let silent = Arc::new(AtomicBool::new(false));
        let quiet = Arc::clone(&silent);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let quiet = Arc::clone(&quiet);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, Arc::clone(&quiet)),
                        pump(server_read, client_write, quiet),
                    );
                });
            }
        });
        Relay {
            origin,
            silent,
            task,
        }
    }

    fn silence(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes until either side closes; while `silent`, holds them back for good.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        if silent.load(Ordering::SeqCst) {
            // Swallow everything from now on, keeping the connection open.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// A listener that accepts connections and never says a word.
async fn silent_listener() -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let origin = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().expect("an address").port()
    );
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    (origin, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_silent_mid_tap_times_out_and_the_kiosk_recovers() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = start_server(dir.path()).await;
    let address: std::net::SocketAddr = server
        .origin
        .trim_start_matches("https://")
        .parse()
        .expect("the origin names an address");
    let relay = Relay::start(address).await;
    let trust = ServerTrust::from_pem_file(&server.certificate).expect("the server certificate");
    let credential = server
        .register_device("fault-kiosk")
        .await
        .expect("the kiosk is registered");
    let client = Client::new(&relay.origin, trust, CLIENT_TIMEOUT)
        .expect("a client")
        .with_origin(&server.origin)
        .with_device_credential(credential);
    let faulty = FaultyReaders::new();
    let badge = ALICE.backend();
    let mut kiosk = TestKiosk::start(Arc::new(faulty.clone()), client);
    kiosk.clean_sign_in(&faulty.readers, &badge).await;

    // The kiosk holds a fresh challenge; the server now never answers the sign-in.
    relay.silence(true);
    faulty.readers.insert(DESK, badge.clone());
    let started = Instant::now();
    let (code, seen) = kiosk.until_error("the silent server").await;
    let waited = started.elapsed();
    assert_eq!(code, NoticeCode::ServerUnreachable, "{seen:?}");
    assert!(
        waited < CLIENT_TIMEOUT * 4,
        "the kiosk took {waited:?} to give up"
    );
    eprintln!("a silent server was given up after {waited:?}");
    assert_eq!(signins_recorded(&server).await, 1, "only the first sign-in");
    faulty.readers.remove(DESK);

    // The server answers again: the next tap signs in.
    relay.silence(false);
    kiosk.clean_sign_in(&faulty.readers, &badge).await;
    assert_eq!(signins_recorded(&server).await, 2);
    assert_eq!(pin_tries(&badge), Some(3));
    kiosk.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_reported_and_the_kiosk_still_stops_at_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = start_server(dir.path()).await;
    let (origin, listener) = silent_listener().await;
    let trust = ServerTrust::from_pem_file(&server.certificate).expect("the server certificate");
    let client = Client::new(&origin, trust, CLIENT_TIMEOUT).expect("a client");
    let faulty = FaultyReaders::new();
    let badge = ALICE.backend();
    let started = Instant::now();
    let mut kiosk = TestKiosk::start(Arc::new(faulty.clone()), client);
    let (code, seen) = kiosk.until_error("server_unreachable at start").await;
    assert_eq!(code, NoticeCode::ServerUnreachable, "{seen:?}");
    assert!(
        started.elapsed() < CLIENT_TIMEOUT * 4,
        "{:?}",
        started.elapsed()
    );

    // A tap still tries, and gives up after the time-out.
    faulty.readers.insert(DESK, badge.clone());
    let started = Instant::now();
    loop {
        match kiosk.next("the tap against a silent server").await {
            SessionEvent::PinRequired { .. } => {
                kiosk.send(Input::Pin(Zeroizing::new(ALICE_PIN.to_owned())));
            }
            SessionEvent::SignedIn { .. } => panic!("signed in without a server"),
            SessionEvent::Error(notice) if notice.code == NoticeCode::ServerUnreachable => break,
            SessionEvent::Error(notice) => panic!("unexpected {notice:?}"),
            _ => {}
        }
        assert!(
            started.elapsed() < CLIENT_TIMEOUT * 6,
            "the tap hangs: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(pin_tries(&badge), Some(3), "no PIN try lost");
    kiosk.stop().await;
    listener.abort();
}

/// Waits for the first `error` event with `code`, answering PIN prompts with alice's PIN;
/// panics on a sign-in or another error. Returns the notice.
async fn until_notice(kiosk: &mut TestKiosk, code: NoticeCode, what: &str) -> Notice {
    let (seen_code, seen) = kiosk.until_error(what).await;
    assert_eq!(seen_code, code, "{what}: {seen:?}");
    match seen.last() {
        Some(SessionEvent::Error(notice)) => notice.clone(),
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_noticed_and_a_badge_left_on_the_reader_signs_in_when_it_returns() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut server = start_server(dir.path()).await;
    let client = server
        .device_client("fault-kiosk", CLIENT_TIMEOUT)
        .await
        .expect("a registered kiosk");
    let faulty = FaultyReaders::new();
    let badge = ALICE.backend();
    let mut kiosk = TestKiosk::start(Arc::new(faulty.clone()), client);
    kiosk.clean_sign_in(&faulty.readers, &badge).await;

    // The server stops while the kiosk is idle, holding a fresh challenge: the probe notices.
    server.stop();
    let stopped = Instant::now();
    let notice = until_notice(&mut kiosk, NoticeCode::ServerUnreachable, "the probe").await;
    let noticed = stopped.elapsed();
    eprintln!("a stopped server was noticed after {noticed:?}");
    // The probe interval, the runtime's 1 s clock, and the client's 2.8 s of connect retries.
    assert!(
        noticed < runtime::PROBE_INTERVAL + Duration::from_secs(8),
        "{noticed:?}"
    );
    assert!(notice.message.contains("Cannot reach"), "{notice:?}");

    // A tap while it is down: the PIN is asked, the sign-in cannot finish.
    faulty.readers.insert(DESK, badge.clone());
    until_notice(&mut kiosk, NoticeCode::ServerUnreachable, "the tap").await;
    assert_eq!(pin_tries(&badge), Some(3), "no PIN try lost");

    // The server comes back; the badge never left: the kiosk carries on without a new tap.
    server.restart().await.expect("the server restarts");
    kiosk.pin_to_sign_in("the badge left on the reader").await;
    assert_eq!(signins_recorded(&server).await, 2);
    assert_eq!(pin_tries(&badge), Some(3));
    kiosk.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_from_another_ca_is_reported_as_not_trusted_not_as_unreachable() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = start_server(dir.path()).await;
    // The test CA issues badges, not the server's TLS certificate.
    let wrong_ca = ServerTrust::from_pem_file(&test_ca()).expect("a CA");
    let client = Client::new(&server.origin, wrong_ca, CLIENT_TIMEOUT).expect("a client");
    let faulty = FaultyReaders::new();
    let badge = ALICE.backend();
    let started = Instant::now();
    let mut kiosk = TestKiosk::start(Arc::new(faulty.clone()), client);
    let notice = until_notice(&mut kiosk, NoticeCode::ServerUntrusted, "at start").await;
    assert!(
        notice.message.contains("does not trust the sign-in server"),
        "{notice:?}"
    );
    // Not retried like an outage: said at once.
    assert!(
        started.elapsed() < CLIENT_TIMEOUT,
        "{:?}",
        started.elapsed()
    );

    // A tap says the same, and costs the badge nothing.
    faulty.readers.insert(DESK, badge.clone());
    until_notice(&mut kiosk, NoticeCode::ServerUntrusted, "the tap").await;
    assert_eq!(pin_tries(&badge), Some(3));
    assert_eq!(signins_recorded(&server).await, 0);
    kiosk.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_this_device_says_so_with_its_code() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = start_server(dir.path()).await;
    // Reachable and trusted, but the kiosk was never registered.
    let client = server.client(CLIENT_TIMEOUT).expect("a client");
    let faulty = FaultyReaders::new();
    let mut kiosk = TestKiosk::start(Arc::new(faulty.clone()), client);
    let notice = until_notice(&mut kiosk, NoticeCode::ServerRefused, "at start").await;
    assert_eq!(
        notice.server_code,
        Some(ErrorCode::DeviceUnknown),
        "{notice:?}"
    );
    assert!(
        notice.message.contains("does not recognise this device"),
        "{notice:?}"
    );
    kiosk.stop().await;
}

/// Issue 12: sign-outs were not recorded at the server. Now the kiosk reports each dropped
/// session (in the background): the server audits `sign_out` for the user, the device and
/// the card that signed in, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_is_recorded_at_the_server() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = start_server(dir.path()).await;
    let credential = server
        .register_device("fault-kiosk")
        .await
        .expect("the kiosk is registered");
    let client = server
        .client(Duration::from_secs(5))
        .expect("a client")
        .with_device_credential(credential);
    let readers = FaultyReaders::new();
    let mut kiosk = TestKiosk::start(Arc::new(readers.clone()), client);
    kiosk
        .clean_sign_in(&readers.readers, &ALICE.backend())
        .await;
    let deadline = Instant::now() + EVENT_WAIT;
    let event = loop {
        let sign_outs = server
            .state
            .store()
            .query_audit(&AuditQuery {
                kind: Some(pivtap_server::store::AuditKindFilter::Kind(
                    AuditKind::SignOut,
                )),
                ..AuditQuery::default()
            })
            .await
            .expect("the audit log answers");
        if let Some(event) = sign_outs.into_iter().next() {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no sign_out recorded within {EVENT_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(event.outcome, AuditOutcome::Ok);
    assert_eq!(event.user_id.as_deref(), Some("alice"));
    assert_eq!(event.device.as_deref(), Some("fault-kiosk"));
    assert!(event.card_serial.is_some(), "{event:?}");
    assert!(
        event
            .detail
            .as_deref()
            .is_some_and(|detail| detail.ends_with("reason card_removed")),
        "{event:?}"
    );
    kiosk.stop().await;
}
