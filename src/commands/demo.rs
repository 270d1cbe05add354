//! `pivtap demo`: the whole story on one machine — an embedded server, three workers' virtual cards, and the kiosk.
//!
//! The fixture CA and cards are built into the binary, so the demo needs
//! nothing but the build. Function keys tap and remove each worker's card.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pivtap_card::reader_monitor::MonitorFilter;
use pivtap_kiosk::builder::{FaceChoice, KioskBuilder};
use pivtap_kiosk::core::SessionEvent;
use pivtap_kiosk::local_api::LocalApiConfig;
use pivtap_kiosk::readers::{PcscReaders, ReaderSource, VirtualReaders};
use pivtap_kiosk::runtime::{Face, FunctionKeyHandler, Input};
use pivtap_kiosk::terminal::{DemoHelp, QuitKeys};
use pivtap_kiosk::tui::Branding;
use pivtap_server::server::embedded::EmbeddedServer;
use pivtap_server::store::{User, UserState};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::vpcd;
use pivtap_vcard::{VirtualCard, VirtualCardBackend};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use zeroize::Zeroizing;

/// `pivtap demo`
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pivtap demo                # the kiosk's screen: F1-F3 tap badges, Q quits\n  \
    pivtap demo --headless     # the scripted story as JSON events\n  \
    pivtap demo | cat          # no terminal: the scripted story in words")]
pub struct DemoArgs {
    /// No terminal UI: run a scripted sequence of taps and print the JSON events.
    /// Without a terminal (and without --headless) the same story is told in words.
    #[arg(long)]
    headless: bool,
    /// Put the cards in pcscd's virtual reader "Virtual PCD 00 00" (vsmartcard
    /// vpcd) and have the kiosk read them over PC/SC, as it reads real readers.
    #[arg(long)]
    pcsc: bool,
}

/// A demo worker: their card image (built in), PIN and PUK.
struct Worker {
    name: &'static str,
    id: &'static str,
    mail: &'static str,
    pin: &'static str,
    puk: &'static str,
    image: &'static str,
}

const WORKERS: [Worker; 3] = [
    Worker {
        name: "Alice Example",
        id: "alice",
        mail: "alice@example.com",
        pin: "123456",
        puk: "12345678",
        image: include_str!("../../fixtures/cards/alice.toml"),
    },
    Worker {
        name: "Bob Example",
        id: "bob",
        mail: "bob@example.com",
        pin: "24681357",
        puk: "12345678",
        image: include_str!("../../fixtures/cards/bob.toml"),
    },
    Worker {
        name: "Carol Example",
        id: "carol",
        mail: "carol@example.com",
        pin: "123456",
        puk: "12345678",
        image: include_str!("../../fixtures/cards/carol.toml"),
    },
];

const TEST_CA: &str = include_str!("../../fixtures/ca/test-ca.pem");
const DEVICE: &str = "demo-kiosk";
const READER: &str = "Desk reader";
/// The vpcd reader `--pcsc` uses (vpcd port 35963).
const VPCD_READER: &str = "Virtual PCD 00 00";

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let ca = dir.path().join("demo-ca.pem");
    std::fs::write(&ca, TEST_CA)?;
    let users: Vec<User> = WORKERS
        .iter()
        .map(|worker| User {
            id: worker.id.to_owned(),
            display_name: worker.name.to_owned(),
            mail: Some(worker.mail.to_owned()),
            upn: None,
            employee_id: None,
            state: UserState::Active,
        })
        .collect();
    let server = EmbeddedServer::start(dir.path(), vec![ca], &users).await?;
    // The demo's kiosk is registered and enrolled by the embedded server itself.
    let client = server
        .device_client(DEVICE, Duration::from_secs(10))
        .await?;

    let cards: Vec<VirtualCardBackend> = WORKERS
        .iter()
        .map(|worker| {
            let image = CardImage::from_toml_str(worker.image)
                .context("a built-in demo card is invalid")?;
            Ok(VirtualCardBackend::new(
                VirtualCard::from_image(&image)?,
                worker.name,
            ))
        })
        .collect::<anyhow::Result<_>>()?;

    let on_reader = OnReader::default();
    let (readers, toggle): (Arc<dyn ReaderSource>, FunctionKeyHandler) = if args.pcsc {
        let readers = PcscReaders::new(MonitorFilter {
            reader_name_contains: Some(VPCD_READER.to_owned()),
            contactless_only: false,
        });
        (
            Arc::new(readers),
            Box::new(vpcd_toggle(cards, on_reader.clone())),
        )
    } else {
        let readers = VirtualReaders::new(&[READER]);
        (
            Arc::new(readers.clone()),
            Box::new(virtual_toggle(readers, cards, on_reader.clone())),
        )
    };

    let mut kiosk = KioskBuilder::new(DEVICE, client, readers)
        .on_function_key(toggle)
        .quit_on_signals();
    if let Some(api) = local_api(dir.path()) {
        kiosk = kiosk.local_api_if_free(api);
    }
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let result = if args.headless || !terminal {
        let (events_tx, events_rx) = unbounded_channel();
        let narrate = !args.headless;
        let face = if narrate {
            println!(
                "pivtap demo: no terminal, so here is the scripted story in words \
                 (run it in a terminal for the kiosk's screen, or with --headless for JSON)."
            );
            FaceChoice::Custom(Box::new(TextFace))
        } else {
            FaceChoice::Headless { read_stdin: false }
        };
        let kiosk = kiosk.face(face).event_sink(events_tx);
        let script = tokio::spawn(script(kiosk.inputs(), events_rx, narrate));
        let run = kiosk.run().await;
        let outcome = script.await.context("the demo script failed")?;
        run?;
        outcome
    } else {
        let help: DemoHelp = Box::new(move || demo_help(&on_reader));
        let face = FaceChoice::Terminal {
            branding: Branding {
                organisation: "pivtap demo — Example Corp".to_owned(),
                primary: ratatui::style::Color::Blue,
                accent: ratatui::style::Color::Yellow,
            },
            help: Some(help),
            quit: QuitKeys::Demo,
        };
        Ok(kiosk.face(face).run().await?)
    };
    server.stop();
    result
}

/// Which worker's badge is on the reader (an index into [`WORKERS`]), shared by the function
/// keys that move the badges and the help panel that shows it.
#[derive(Clone, Default)]
struct OnReader(Arc<std::sync::Mutex<Option<usize>>>);

impl OnReader {
    fn get(&self) -> Option<usize> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, index: Option<usize>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = index;
    }
}

/// The demo panel: each worker's key, PIN and PUK, which badge is on the reader, the keys.
fn demo_help(on_reader: &OnReader) -> Vec<String> {
    let on = on_reader
        .get()
        .and_then(|index| WORKERS.get(index))
        .map_or("no badge", |worker| worker.name);
    WORKERS
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                "F{}: tap/remove {} (PIN {}, PUK {})",
                i + 1,
                w.name,
                w.pin,
                w.puk
            )
        })
        .chain([
            format!("On the reader: {on}"),
            "S: sign out   C: change PIN   U: unblock   Q: quit".to_owned(),
        ])
        .collect()
}

/// Function key N taps worker N's badge on the one in-process reader, or
/// takes it away if it is on it; another badge is taken away first.
fn virtual_toggle(
    readers: VirtualReaders,
    cards: Vec<VirtualCardBackend>,
    on_reader: OnReader,
) -> impl FnMut(u8) + Send {
    move |key: u8| {
        let index = usize::from(key).wrapping_sub(1);
        if index >= cards.len() {
            return;
        }
        let previous = on_reader.get();
        on_reader.set(None);
        if previous.is_some() {
            readers.remove(READER);
        }
        if previous != Some(index) {
            readers.insert(READER, cards[index].clone());
            on_reader.set(Some(index));
        }
    }
}

/// The same with the cards attached to pcscd's virtual reader through vpcd.
fn vpcd_toggle(cards: Vec<VirtualCardBackend>, on_reader: OnReader) -> impl FnMut(u8) + Send {
    let mut attached: Option<(usize, vpcd::Detacher, std::thread::JoinHandle<()>)> = None;
    move |key: u8| {
        let index = usize::from(key).wrapping_sub(1);
        if index >= cards.len() {
            return;
        }
        on_reader.set(None);
        let previous = attached.take().map(|(previous, detacher, serving)| {
            detacher.detach();
            let _ = serving.join();
            previous
        });
        if previous == Some(index) {
            return;
        }
        if previous.is_some() {
            // pcscd notices a card leaving within about 0.4 s, and does not
            // see a card attached before it has: let the first one go.
            std::thread::sleep(Duration::from_millis(600));
        }
        let address = SocketAddr::from(([127, 0, 0, 1], vpcd::DEFAULT_PORT));
        match vpcd::Attachment::connect(address) {
            Ok((attachment, detacher)) => {
                let card = cards[index].clone();
                let serving = std::thread::spawn(move || {
                    if let Err(error) = attachment.serve(&card) {
                        tracing::warn!(%error, "demo: vpcd attachment failed");
                    }
                });
                attached = Some((index, detacher, serving));
                on_reader.set(Some(index));
            }
            Err(error) => tracing::error!(%error, "demo: cannot attach the card to vpcd"),
        }
    }
}

/// The local session API on its default port (served if it is free: another kiosk may hold it).
fn local_api(dir: &std::path::Path) -> Option<LocalApiConfig> {
    let token =
        match pivtap_kiosk::local_api::load_or_create_access_token(&dir.join("local-api.token")) {
            Ok(token) => token,
            Err(error) => {
                eprintln!("demo: no local session API ({error})");
                return None;
            }
        };
    Some(LocalApiConfig {
        listen: pivtap_kiosk::local_api::DEFAULT_LISTEN,
        access_token: token,
        device: DEVICE.to_owned(),
        connections: pivtap_kiosk::local_api::local_connection_limits(),
    })
}

/// The demo without a terminal: each session event as a sentence.
struct TextFace;

impl Face for TextFace {
    fn refresh(
        &mut self,
        _kiosk: &pivtap_kiosk::core::Kiosk,
        _server_reachable: bool,
        _now: std::time::Instant,
    ) {
    }

    fn session_event(&mut self, event: &SessionEvent, _token: Option<&str>) {
        if let Some(line) = describe(event) {
            println!("   {line}");
        }
    }
}

/// A session event in words (no token, no PIN: events never carry them).
fn describe(event: &SessionEvent) -> Option<String> {
    Some(match event {
        SessionEvent::CardPresent { reader } => format!("The kiosk sees a badge on {reader}."),
        SessionEvent::PinRequired { tries_left } => match tries_left {
            Some(tries) => format!("It asks for the PIN ({tries} tries left)."),
            None => "It asks for the PIN.".to_owned(),
        },
        SessionEvent::SignedIn { user, .. } => {
            format!("Signed in: {} ({}).", user.display_name, user.id)
        }
        SessionEvent::SignedOut { user, reason, .. } => {
            let reason = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(|r| r.replace('_', " ")))
                .unwrap_or_default();
            format!("Signed out: {} ({reason}).", user.display_name)
        }
        SessionEvent::Error(notice) => notice.message.clone(),
        _ => return None,
    })
}

/// The scripted story: Alice signs in and takes her badge away; Bob mistypes
/// his PIN, then signs in; his badge leaves as Carol's arrives; she signs in
/// and signs out with the sign-out key.
async fn script(
    inputs: UnboundedSender<Input>,
    mut events: UnboundedReceiver<SessionEvent>,
    narrate: bool,
) -> anyhow::Result<()> {
    let send = |input: Input| {
        if narrate && let Some(line) = narration(&input) {
            println!("{line}");
        }
        inputs
            .send(input)
            .map_err(|_| anyhow::anyhow!("the kiosk stopped"))
    };
    let pin = |worker: &Worker| Input::Pin(Zeroizing::new(worker.pin.to_owned()));
    let [alice, bob, carol] = &WORKERS;

    send(Input::Function(1))?;
    expect(&mut events, "pin_required").await?;
    send(pin(alice))?;
    expect(&mut events, "signed_in").await?;
    send(Input::Function(1))?;
    expect(&mut events, "signed_out").await?;

    send(Input::Function(2))?;
    expect(&mut events, "pin_required").await?;
    send(Input::Pin(Zeroizing::new("999999".to_owned())))?;
    expect(&mut events, "pin_required").await?;
    send(pin(bob))?;
    expect(&mut events, "signed_in").await?;

    send(Input::Function(3))?;
    expect(&mut events, "signed_out").await?;
    expect(&mut events, "pin_required").await?;
    send(pin(carol))?;
    expect(&mut events, "signed_in").await?;
    send(Input::SignOut)?;
    expect(&mut events, "signed_out").await?;
    send(Input::Function(3))?;
    send(Input::Quit)?;
    Ok(())
}

/// What the script does, in words (the PINs only as dots).
fn narration(input: &Input) -> Option<String> {
    Some(match input {
        Input::Function(key) => {
            let worker = WORKERS.get(usize::from(*key).checked_sub(1)?)?;
            format!(
                "» {} puts their badge on the reader or takes it away (F{key}).",
                worker.name
            )
        }
        Input::Pin(pin) => format!("» The worker types a PIN: {}", "•".repeat(pin.len())),
        Input::SignOut => "» The worker presses S to sign out.".to_owned(),
        Input::Quit => "» The demo ends.".to_owned(),
        _ => return None,
    })
}

/// Waits (at most 20 s) for the next event of a kind, passing over others.
async fn expect(events: &mut UnboundedReceiver<SessionEvent>, kind: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| anyhow::anyhow!("the demo waited 20 s for {kind}"))?
            .ok_or_else(|| anyhow::anyhow!("the kiosk stopped before {kind}"))?;
        let name = serde_json::to_value(&event)?
            .get("event")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if name == kind {
            return Ok(());
        }
    }
}
