//! `pivtap kiosk`: the shared-device app, with its terminal UI or headless.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pivtap_card::reader_monitor::MonitorFilter;
use pivtap_kiosk::config::KioskConfig;
use pivtap_kiosk::headless::{HeadlessFace, read_stdin};
use pivtap_kiosk::local_api::{LocalApiConfig, SessionBoard, load_or_create_access_token};
use pivtap_kiosk::readers::{PcscReaders, ReaderSource};
use pivtap_kiosk::runtime::{self, RuntimeParts};
use pivtap_kiosk::terminal::TerminalFace;
use pivtap_kiosk::tui::Branding;
use pivtap_server_client::client::{Client, ServerTrust};
use tokio::sync::mpsc::unbounded_channel;

/// `pivtap kiosk`
#[derive(Args, Debug)]
pub struct KioskArgs {
    /// The kiosk configuration (every option is documented in the README).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// No terminal UI: session events as JSON lines on stdout; PINs (and
    /// `sign-out`, `quit`) as lines on stdin.
    #[arg(long)]
    headless: bool,
}

/// Runs the kiosk.
pub fn run(args: KioskArgs) -> anyhow::Result<()> {
    let config = KioskConfig::load(&args.config)?;
    let trust = match (&config.server.ca, &config.server.pin_sha256) {
        (Some(ca), _) => ServerTrust::from_pem_file(ca)?,
        (None, Some(pin)) => ServerTrust::from_pin(pin)?,
        (None, None) => ServerTrust::SystemRoots,
    };
    let client = Client::new(
        &config.server.url,
        trust,
        Duration::from_secs(config.server.timeout_seconds),
    )?;
    let readers = PcscReaders::new(MonitorFilter {
        reader_name_contains: (!config.readers.name_contains.is_empty())
            .then(|| config.readers.name_contains.clone()),
        contactless_only: config.readers.contactless_only,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let board = SessionBoard::new();
        let api = LocalApiConfig {
            listen: config.local_api.listen,
            access_token: load_or_create_access_token(&config.local_api.token_file)?,
            device: config.device.clone(),
            connections: config.local_api.connection_limits(),
        };
        let api_board = board.clone();
        tokio::spawn(async move {
            if let Err(error) =
                pivtap_kiosk::local_api::serve(api_board, api, std::future::pending()).await
            {
                tracing::error!(%error, "the local session API stopped");
            }
        });
        let (inputs_tx, inputs_rx) = unbounded_channel();
        let parts = RuntimeParts {
            core: config.core(),
            readers: Arc::new(readers) as Arc<dyn ReaderSource>,
            client,
            device: config.device.clone(),
            board,
            on_function_key: None,
        };
        if args.headless {
            read_stdin(inputs_tx);
            let mut face = HeadlessFace::new(std::io::stdout());
            runtime::run(parts, &mut face, inputs_rx).await?;
        } else {
            let branding = Branding {
                organisation: config.branding.organisation.clone(),
                primary: parse_colour(&config.branding.primary),
                accent: parse_colour(&config.branding.accent),
            };
            let mut face = TerminalFace::new(branding, config.device.clone(), None);
            TerminalFace::read_keys(inputs_tx);
            runtime::run(parts, &mut face, inputs_rx).await?;
        }
        anyhow::Ok(())
    })
}

/// A colour name or `#RRGGBB` (unknown names fall back to the default colour).
fn parse_colour(text: &str) -> ratatui::style::Color {
    text.parse().unwrap_or(ratatui::style::Color::Reset)
}
