//! The one way to start a kiosk: [`KioskBuilder`] gathers the reader source, the server client, the face, the local API, the event sink and shutdown, then runs (or spawns) the runtime with them.
//!
//! `pivtap kiosk` builds it from `kiosk.toml` ([`KioskBuilder::from_config`]), `pivtap demo`
//! and `pivtap bench tap` from their own parts ([`KioskBuilder::new`]), and the tests the
//! same way. What every kiosk does the same (the input channel, stopping on SIGTERM, the
//! local API stopped after the last events, the terminal restored before that) lives here
//! once.
//!
//! ```no_run
//! # async fn example(config: pivtap_kiosk::config::KioskConfig) -> Result<(), pivtap_kiosk::builder::KioskError> {
//! use pivtap_kiosk::builder::{FaceChoice, KioskBuilder};
//!
//! KioskBuilder::from_config(&config)?
//!     .face(FaceChoice::Headless { read_stdin: true })
//!     .quit_on_signals()
//!     .run()
//!     .await
//! # }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pivtap_card::reader_monitor::MonitorFilter;
use pivtap_client::client::{Client, ClientError, ServerTrust};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

use crate::admin_exit::ExitGate;
use crate::config::{KioskConfig, KioskConfigError};
use crate::core::{CoreConfig, Kiosk, SessionEvent};
use crate::headless::{HeadlessFace, read_stdin};
use crate::local_api::{LocalApiConfig, LocalApiError, SessionBoard, load_or_create_access_token};
use crate::readers::{FilteredReaders, PcscReaders, ReaderSource};
use crate::runtime::{
    self, Face, FunctionKeyHandler, Input, RequestTiming, RuntimeError, RuntimeParts,
};
use crate::terminal::{DemoHelp, QuitKeys, TerminalFace};
use crate::tui::Branding;

/// How long a stopping kiosk lets the local API hand its last events (`signed_out`, reason
/// `shutdown`) to event-stream clients; a client that does not read is not waited for longer.
const LOCAL_API_STOP_WAIT: Duration = Duration::from_secs(2);
/// How often the signed-in worker's session is checked at the server unless configured
/// otherwise (`[server] session_check_interval_seconds`).
pub const DEFAULT_SESSION_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How the kiosk shows itself.
// Chosen once per kiosk: the terminal's settings are not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum FaceChoice {
    /// Nothing is shown: session events go only to the event sink (tests, measurements).
    None,
    /// JSON lines on standard output ([`HeadlessFace`]); with `read_stdin`, lines of standard
    /// input become inputs ([`read_stdin`]).
    Headless {
        /// Read PINs and commands from standard input.
        read_stdin: bool,
    },
    /// The terminal UI ([`TerminalFace`]), reading keys from the terminal.
    Terminal {
        /// Organisation and colours.
        branding: Branding,
        /// The demo's help panel (none in production).
        help: Option<DemoHelp>,
        /// How the screen is left.
        quit: QuitKeys,
    },
    /// A face of the caller's own (it reads no input: send inputs through
    /// [`KioskBuilder::inputs`]).
    Custom(Box<dyn Face>),
}

/// Why a kiosk could not be built or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KioskError {
    /// `kiosk.toml` names something unusable (the device credential).
    #[error(transparent)]
    Config(#[from] KioskConfigError),
    /// The server's trust or the client could not be set up.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The local API's access token could not be read or made.
    #[error(transparent)]
    LocalApi(#[from] LocalApiError),
    /// The stop signals (SIGTERM, SIGINT, SIGHUP) could not be handled.
    #[error("cannot handle {signal}")]
    Signals {
        /// The signal.
        signal: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The runtime stopped with an error.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The kiosk's task ended without an answer (it panicked or was cancelled).
    #[error("the kiosk's task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
}

/// A kiosk being put together; [`KioskBuilder::run`] or [`KioskBuilder::spawn`] starts it.
pub struct KioskBuilder {
    core: CoreConfig,
    device: String,
    readers: Arc<dyn ReaderSource>,
    client: Client,
    face: FaceChoice,
    local_api: Option<(LocalApiConfig, LocalApiNeed)>,
    board: SessionBoard,
    on_function_key: Option<FunctionKeyHandler>,
    events: Option<UnboundedSender<SessionEvent>>,
    timings: Option<UnboundedSender<RequestTiming>>,
    quit_on_signals: bool,
    session_check_interval: Duration,
    pending_sign_outs: Option<PathBuf>,
    inputs: UnboundedSender<Input>,
    inputs_rx: UnboundedReceiver<Input>,
}

impl KioskBuilder {
    /// A kiosk for `device` that reads badges from `readers` and signs in at `client`'s server:
    /// the default core settings, no face, no local API, no event sink, no signal handling.
    #[must_use]
    pub fn new(device: impl Into<String>, client: Client, readers: Arc<dyn ReaderSource>) -> Self {
        let (inputs, inputs_rx) = unbounded_channel();
        KioskBuilder {
            core: CoreConfig::default(),
            device: device.into(),
            readers,
            client,
            face: FaceChoice::None,
            local_api: None,
            board: SessionBoard::new(),
            on_function_key: None,
            events: None,
            timings: None,
            quit_on_signals: false,
            session_check_interval: DEFAULT_SESSION_CHECK_INTERVAL,
            pending_sign_outs: None,
            inputs,
            inputs_rx,
        }
    }

    /// The kiosk `kiosk.toml` describes: its server client (trust, time-out, device
    /// credential), the system's PC/SC readers through its reader filter, its core settings
    /// and its local API (the access token read, or made on first start). The face is
    /// chosen by the caller ([`FaceChoice::Headless`] or [`KioskBuilder::terminal_face`]).
    ///
    /// # Errors
    /// [`KioskError::Client`] when the server's CA or pin cannot be used,
    /// [`KioskError::Config`] for an unusable device credential, [`KioskError::LocalApi`]
    /// when the access token cannot be read or made.
    pub fn from_config(config: &KioskConfig) -> Result<Self, KioskError> {
        let trust = match (&config.server.ca, &config.server.pin_sha256) {
            (Some(ca), _) => ServerTrust::from_pem_file(ca)?,
            (None, Some(pin)) => ServerTrust::from_pin(pin)?,
            (None, None) => ServerTrust::SystemRoots,
        };
        let mut client = Client::new(
            &config.server.url,
            trust,
            Duration::from_secs(config.server.timeout_seconds),
        )?;
        match config.device_credential()? {
            Some(credential) => client = client.with_device_credential(Arc::new(credential)),
            None => tracing::warn!(
                target: "pivtap::kiosk",
                device = %config.device,
                "no device credential ([server] device_key and device_certificate): a server that \
                 requires registered devices refuses this kiosk; register it with `pivtap admin \
                 devices add`, run `pivtap kiosk enroll-device`, and name the two files in kiosk.toml"
            ),
        }
        // The name filter is the kiosk's own, so readers it leaves out are said on screen and in
        // the log, and it matches in any case.
        let readers = FilteredReaders::new(
            Arc::new(PcscReaders::new(MonitorFilter {
                reader_name_contains: None,
                contactless_only: config.readers.contactless_only,
            })),
            &config.readers.name_contains,
        );
        let local_api = LocalApiConfig {
            listen: config.local_api.listen,
            access_token: load_or_create_access_token(&config.local_api.token_file)?,
            device: config.device.clone(),
            connections: config.local_api.connection_limits(),
        };
        Ok(
            KioskBuilder::new(config.device.clone(), client, Arc::new(readers))
                .core(config.core())
                .local_api(local_api)
                .session_check_interval(Duration::from_secs(
                    config.server.session_check_interval_seconds,
                ))
                .pending_sign_outs(config.server.pending_sign_outs.clone()),
        )
    }

    /// The terminal face `kiosk.toml` describes: its branding, left only through the
    /// administrator's exit.
    #[must_use]
    pub fn terminal_face(config: &KioskConfig) -> FaceChoice {
        FaceChoice::Terminal {
            branding: Branding {
                organisation: config.branding.organisation.clone(),
                primary: parse_colour(&config.branding.primary),
                accent: parse_colour(&config.branding.accent),
            },
            help: None,
            quit: QuitKeys::Administrator(ExitGate::new(
                config.exit_keys(),
                config.exit_passcode_hash(),
            )),
        }
    }

    /// How often the signed-in worker's session is checked at the server
    /// ([`DEFAULT_SESSION_CHECK_INTERVAL`] unless set).
    #[must_use]
    pub fn session_check_interval(mut self, interval: Duration) -> Self {
        self.session_check_interval = interval;
        self
    }

    /// Keeps sign-outs the server has not heard of yet in this file (see
    /// [`crate::pending_sign_outs`]), so they are delivered after a restart too; unset, they
    /// are kept in memory only.
    #[must_use]
    pub fn pending_sign_outs(mut self, path: PathBuf) -> Self {
        self.pending_sign_outs = Some(path);
        self
    }

    /// The core's settings.
    #[must_use]
    pub fn core(mut self, core: CoreConfig) -> Self {
        self.core = core;
        self
    }

    /// How the kiosk shows itself.
    #[must_use]
    pub fn face(mut self, face: FaceChoice) -> Self {
        self.face = face;
        self
    }

    /// Serves the local session API while the kiosk runs (a failure to serve is logged as an
    /// error and the kiosk keeps running); it is stopped after the kiosk's last events.
    #[must_use]
    pub fn local_api(mut self, config: LocalApiConfig) -> Self {
        self.local_api = Some((config, LocalApiNeed::Required));
        self
    }

    /// The same, when the API is a convenience (the demo: another kiosk may hold its port):
    /// a failure to serve is only a warning.
    #[must_use]
    pub fn local_api_if_free(mut self, config: LocalApiConfig) -> Self {
        self.local_api = Some((config, LocalApiNeed::IfFree));
        self
    }

    /// The session board the local API reads (a new one unless given; tests read it).
    #[must_use]
    pub fn board(mut self, board: SessionBoard) -> Self {
        self.board = board;
        self
    }

    /// Called with the number of a function key (the demo taps its cards with them).
    #[must_use]
    pub fn on_function_key(mut self, handler: FunctionKeyHandler) -> Self {
        self.on_function_key = Some(handler);
        self
    }

    /// Every session event is also sent to `sink` (after the face has shown it).
    #[must_use]
    pub fn event_sink(mut self, sink: UnboundedSender<SessionEvent>) -> Self {
        self.events = Some(sink);
        self
    }

    /// Every request the runtime makes to the server is timed into `sink` (measurements).
    #[must_use]
    pub fn request_timings(mut self, sink: UnboundedSender<RequestTiming>) -> Self {
        self.timings = Some(sink);
        self
    }

    /// SIGTERM, SIGINT and SIGHUP stop the kiosk (the service manager stopping it, Ctrl-C
    /// outside raw mode, the terminal going away); any session is signed out first.
    #[must_use]
    pub fn quit_on_signals(mut self) -> Self {
        self.quit_on_signals = true;
        self
    }

    /// A sender of inputs (keys, PINs, [`Input::Quit`]) to the kiosk. The kiosk stops when
    /// every sender is gone, the face's own included.
    #[must_use]
    pub fn inputs(&self) -> UnboundedSender<Input> {
        self.inputs.clone()
    }

    /// Runs the kiosk here until [`Input::Quit`], a stop signal (with
    /// [`KioskBuilder::quit_on_signals`]) or the end of every input; any session ends
    /// cleanly first, the face is closed (the terminal restored), then the local API stops.
    ///
    /// # Errors
    /// [`KioskError::Signals`] when the stop signals cannot be handled,
    /// [`KioskError::Runtime`] when the readers cannot be watched.
    pub async fn run(self) -> Result<(), KioskError> {
        let KioskBuilder {
            core,
            device,
            readers,
            client,
            face,
            local_api,
            board,
            on_function_key,
            events,
            timings,
            quit_on_signals,
            session_check_interval,
            pending_sign_outs,
            inputs,
            inputs_rx,
        } = self;
        board.set_server(Arc::new(client.clone()));
        let local_api =
            local_api.map(|(config, need)| LocalApi::start(board.clone(), config, need));
        if quit_on_signals {
            quit_on(inputs.clone())?;
        }
        let face: Box<dyn Face> = match face {
            FaceChoice::None => Box::new(NoFace),
            FaceChoice::Headless { read_stdin: stdin } => {
                if stdin {
                    read_stdin(inputs.clone());
                }
                Box::new(HeadlessFace::new(std::io::stdout()))
            }
            FaceChoice::Terminal {
                branding,
                help,
                quit,
            } => {
                let face = TerminalFace::new(branding, device.clone(), help, quit);
                face.read_keys(inputs.clone());
                Box::new(face)
            }
            FaceChoice::Custom(face) => face,
        };
        // Only the face, the signals and the caller hold senders now: the kiosk stops when
        // they are all gone.
        drop(inputs);
        let mut face = match events {
            Some(sink) => Box::new(TeeFace { inner: face, sink }),
            None => face,
        };
        let parts = RuntimeParts {
            core,
            readers,
            client,
            device,
            board,
            on_function_key,
            timings,
            session_check_interval,
            pending_sign_outs,
        };
        let ran = runtime::run(parts, face.as_mut(), inputs_rx).await;
        drop(face);
        if let Some(local_api) = local_api {
            local_api.stop().await;
        }
        Ok(ran?)
    }

    /// Runs the kiosk on a task of its own ([`KioskBuilder::run`]).
    #[must_use]
    pub fn spawn(self) -> RunningKiosk {
        let inputs = self.inputs();
        let board = self.board.clone();
        let task = tokio::spawn(self.run());
        RunningKiosk {
            inputs,
            board,
            task,
        }
    }
}

/// A kiosk running on a task of its own ([`KioskBuilder::spawn`]).
pub struct RunningKiosk {
    /// Inputs to it; dropping every sender stops it.
    pub inputs: UnboundedSender<Input>,
    /// Its session board (what the local API reads).
    pub board: SessionBoard,
    /// The task: the kiosk's result when it stops.
    pub task: JoinHandle<Result<(), KioskError>>,
}

impl RunningKiosk {
    /// Asks the kiosk to stop ([`Input::Quit`]) and waits for it.
    ///
    /// # Errors
    /// The kiosk's own error, or [`KioskError::Task`] when its task did not end normally.
    pub async fn stop(self) -> Result<(), KioskError> {
        let _ = self.inputs.send(Input::Quit);
        self.task.await.map_err(KioskError::Task)?
    }
}

/// Whether the local API failing to serve is an error or only a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalApiNeed {
    Required,
    IfFree,
}

/// The local session API served beside the kiosk.
struct LocalApi {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl LocalApi {
    fn start(board: SessionBoard, config: LocalApiConfig, need: LocalApiNeed) -> Self {
        let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopping = async {
                let _ = stopping.await;
            };
            match crate::local_api::serve(board, config, stopping).await {
                Err(error) if need == LocalApiNeed::Required => {
                    tracing::error!(%error, "the local session API stopped");
                }
                Err(error) => tracing::warn!(%error, "the local session API is not available"),
                Ok(()) => {}
            }
        });
        LocalApi { stop, task }
    }

    /// The last events reach the event-stream clients before the API closes; a client that
    /// does not read is not waited for long.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(LOCAL_API_STOP_WAIT, self.task).await;
    }
}

/// Sends [`Input::Quit`] on SIGTERM, SIGINT or SIGHUP.
fn quit_on(inputs: UnboundedSender<Input>) -> Result<(), KioskError> {
    use tokio::signal::unix::{SignalKind, signal};
    let handle = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| KioskError::Signals {
            signal: name,
            source,
        })
    };
    let mut terminate = handle(SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = handle(SignalKind::interrupt(), "SIGINT")?;
    let mut hangup = handle(SignalKind::hangup(), "SIGHUP")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            _ = hangup.recv() => "SIGHUP",
        };
        tracing::info!(target: "pivtap::kiosk", signal = name, "stopping: any session is signed out first");
        let _ = inputs.send(Input::Quit);
    });
    Ok(())
}

/// A colour name or `#RRGGBB` (unknown names fall back to the default colour).
fn parse_colour(text: &str) -> ratatui::style::Color {
    text.parse().unwrap_or(ratatui::style::Color::Reset)
}

/// Shows nothing.
struct NoFace;

impl Face for NoFace {
    fn refresh(&mut self, _kiosk: &Kiosk, _server_reachable: bool, _now: std::time::Instant) {}

    fn session_event(&mut self, _event: &SessionEvent, _token: Option<&str>) {}
}

/// A face that also sends every session event to a sink.
struct TeeFace {
    inner: Box<dyn Face>,
    sink: UnboundedSender<SessionEvent>,
}

impl Face for TeeFace {
    fn refresh(&mut self, kiosk: &Kiosk, server_reachable: bool, now: std::time::Instant) {
        self.inner.refresh(kiosk, server_reachable, now);
    }

    fn session_event(&mut self, event: &SessionEvent, token: Option<&str>) {
        self.inner.session_event(event, token);
        let _ = self.sink.send(event.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use pivtap_vcard::image::CardImage;
    use pivtap_vcard::{VirtualCard, VirtualCardBackend};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use zeroize::Zeroizing;

    use super::*;
    use crate::local_api::local_connection_limits;
    use crate::readers::VirtualReaders;

    const DESK: &str = "Desk reader";

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
    }

    /// A client of a server that is not there: the kiosk runs, it only cannot sign anyone in.
    fn nowhere() -> Client {
        Client::new(
            "https://127.0.0.1:9",
            ServerTrust::SystemRoots,
            Duration::from_secs(1),
        )
        .expect("a client")
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port()
    }

    /// The status line of `GET path` at `address`.
    async fn status_line(address: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    #[tokio::test]
    async fn the_local_api_is_served_while_the_kiosk_runs_and_closed_when_it_stops() {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let kiosk = KioskBuilder::new(
            "builder-kiosk",
            nowhere(),
            Arc::new(VirtualReaders::new(&[DESK])),
        )
        .local_api(LocalApiConfig {
            listen,
            access_token: Zeroizing::new("t".repeat(32)),
            device: "builder-kiosk".to_owned(),
            connections: local_connection_limits(),
        })
        .spawn();
        let mut answered = None;
        for _ in 0..100 {
            if let Ok(line) = status_line(listen, "/v1/session").await {
                answered = Some(line);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let line = answered.expect("the local API answers while the kiosk runs");
        assert!(line.starts_with("HTTP/1.1 "), "{line}");
        kiosk.stop().await.expect("the kiosk stops cleanly");
        assert!(
            TcpStream::connect(listen).await.is_err(),
            "the local API still listens after the kiosk stopped"
        );
    }

    /// A face that keeps what it was shown.
    struct Shown(Arc<Mutex<Vec<SessionEvent>>>);

    impl Face for Shown {
        fn refresh(&mut self, _kiosk: &Kiosk, _server_reachable: bool, _now: std::time::Instant) {}

        fn session_event(&mut self, event: &SessionEvent, _token: Option<&str>) {
            self.0.lock().expect("not poisoned").push(event.clone());
        }
    }

    #[tokio::test]
    async fn the_event_sink_gets_each_event_the_face_shows_and_ending_the_inputs_stops_the_kiosk() {
        let readers = VirtualReaders::new(&[DESK]);
        let shown = Arc::new(Mutex::new(Vec::new()));
        let (sink, mut events) = unbounded_channel();
        let builder = KioskBuilder::new("builder-kiosk", nowhere(), Arc::new(readers.clone()))
            .face(FaceChoice::Custom(Box::new(Shown(Arc::clone(&shown)))))
            .event_sink(sink);
        let inputs = builder.inputs();
        let task = tokio::spawn(builder.run());
        let image = CardImage::load(fixtures().join("cards/alice.toml")).expect("alice's image");
        readers.insert(
            DESK,
            VirtualCardBackend::new(VirtualCard::from_image(&image).expect("a card"), "alice"),
        );
        let first = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("an event within 20 s")
            .expect("the kiosk runs");
        assert!(
            matches!(&first, SessionEvent::CardPresent { reader } if reader == DESK),
            "{first:?}"
        );
        // The caller's was the last sender: the kiosk stops when it goes.
        drop(inputs);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the kiosk stops within 10 s")
            .expect("the task ends")
            .expect("the kiosk stops cleanly");
        let shown = shown.lock().expect("not poisoned").clone();
        assert_eq!(shown.first(), Some(&first), "{shown:?}");
        let mut sunk = vec![first];
        while let Ok(event) = events.try_recv() {
            sunk.push(event);
        }
        assert_eq!(shown, sunk);
    }

    fn write_config(dir: &Path, server: &str) -> KioskConfig {
        let path = dir.join("kiosk.toml");
        std::fs::write(
            &path,
            format!(
                "device = \"kiosk-07\"\n[server]\nurl = \"https://auth.example.test\"\n{server}"
            ),
        )
        .expect("the configuration is written");
        KioskConfig::load(&path).expect("the configuration loads")
    }

    #[test]
    fn from_config_refuses_a_ca_file_without_a_certificate_and_makes_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("empty.pem"), "no certificate here\n").expect("written");
        let config = write_config(dir.path(), "ca = \"empty.pem\"\n");
        let error = KioskBuilder::from_config(&config)
            .err()
            .expect("a CA file without a certificate is refused");
        assert!(
            matches!(error, KioskError::Client(ClientError::Config { .. })),
            "{error:?}"
        );
        assert!(error.to_string().contains("empty.pem"), "{error}");
        assert!(
            !dir.path().join("local-api.token").exists(),
            "no access token is made for a kiosk that cannot start"
        );
    }

    #[test]
    fn from_config_makes_the_local_api_token_and_keeps_the_device() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::copy(fixtures().join("ca/test-ca.pem"), dir.path().join("ca.pem"))
            .expect("copied");
        let config = write_config(dir.path(), "ca = \"ca.pem\"\n");
        let builder = KioskBuilder::from_config(&config).expect("the kiosk is built");
        assert_eq!(builder.device, "kiosk-07");
        let (api, need) = builder.local_api.as_ref().expect("a local API");
        assert_eq!(*need, LocalApiNeed::Required);
        assert_eq!(api.listen, config.local_api.listen);
        let token =
            std::fs::read_to_string(dir.path().join("local-api.token")).expect("the token file");
        assert_eq!(token.trim(), api.access_token.as_str());
        assert!(matches!(
            KioskBuilder::terminal_face(&config),
            FaceChoice::Terminal {
                help: None,
                quit: QuitKeys::Administrator(_),
                ..
            }
        ));
    }
}
