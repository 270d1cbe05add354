//! The `pivtap` command line: parses arguments and prints results for every role (worker, admin, server operator, tester); the work itself lives in the library crates.
//!
//! `vcard`, `card` and `auth` run on `pivtap-card`, `pivtap-vcard` and `pivtap-client`;
//! `server` and `admin` on `pivtap-server` and `pivtap-client`; `kiosk` and `demo` on
//! `pivtap-kiosk`; `bench` measures all of them.
#![forbid(unsafe_code)]

mod cli_input;
mod cli_output;
mod commands;
mod help_examples;
mod log_format;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use pivtap_card::PivError;

/// Shared-device sign-in with PIV smartcards.
///
/// A worker taps a PIV card and types its PIN; the card verifies the PIN and
/// signs a server challenge. This tool runs the server and the kiosk,
/// administers users, cards and devices, enrolls and inspects cards, and
/// creates virtual PIV cards for testing and demos.
#[derive(Parser)]
#[command(name = "pivtap", version, propagate_version = true)]
#[command(after_help = "Examples:\n  \
pivtap demo  # the whole story on one machine\n  \
pivtap server init ./server --listen 0.0.0.0:8443\n  \
pivtap admin users list --server https://auth.example.com:8443 --ca ./server/tls.crt\n  \
pivtap card info  # the card in the reader\n\
Every command's --help ends with examples of it.\n\n\
Exit codes: 0 success, 1 error, 2 usage error, 3 wrong PIN, 4 PIN blocked, \
141 output cut short (the reader of a pipe stopped, as in `| head`).\n\
Durations: seconds (90) or with a unit: 90s, 15m, 2h, 7d.\n\
Set RUST_LOG=pivtap::apdu=trace to see every APDU (PINs and keys are redacted).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create virtual PIV cards (card images on disk).
    #[command(subcommand)]
    Vcard(Box<commands::vcard::VcardCommand>),
    /// Inspect and use a PIV card.
    #[command(subcommand)]
    Card(commands::card::CardCommand),
    /// Sign in once: challenge, card signature, session token.
    Auth(Box<commands::auth::AuthArgs>),
    /// Set up and run the authentication server.
    #[command(subcommand)]
    Server(commands::server::ServerCommand),
    /// Administer users, cards and the audit log of a running server.
    Admin(Box<commands::admin::AdminArgs>),
    /// Run the shared-device kiosk (terminal UI, or --headless JSON lines).
    ///
    /// Workers cannot quit the kiosk: q and Ctrl-C do nothing. An administrator
    /// presses [admin] exit_keys (default ctrl-alt-x) and types the exit passcode
    /// (`pivtap kiosk set-exit-passcode`); SIGTERM, SIGINT or SIGHUP stop it too.
    /// Every stop signs the current worker out first.
    Kiosk(commands::kiosk::KioskArgs),
    /// The whole story on one machine: server, three workers' cards, kiosk.
    Demo(commands::demo::DemoArgs),
    /// Measure: sign-ins per second of a server on loopback, or taps through the kiosk's card path.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

/// Exit code for a usage error.
const EXIT_USAGE: u8 = 2;
/// Exit code for a wrong PIN.
const EXIT_WRONG_PIN: u8 = 3;
/// Exit code for a blocked PIN.
const EXIT_PIN_BLOCKED: u8 = 4;

fn main() -> ExitCode {
    cli_output::end_quietly_when_output_closes();
    let matches = help_examples::with_examples(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    // One TLS crypto provider for the whole process (aws-lc-rs).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // A running server logs its requests by default; other commands only warnings.
    let default_filter = match &cli.command {
        Command::Server(command) if command.is_long_running() => "warn,pivtap=info",
        _ => "warn",
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file or the journal gets plain text.
        .with_ansi(std::io::stderr().is_terminal());
    match &cli.command {
        Command::Server(command) if command.log_format() == log_format::LogFormat::Json => {
            logs.event_format(log_format::JsonLines).init();
        }
        _ => logs.init(),
    }
    let result = match cli.command {
        Command::Vcard(command) => commands::vcard::run(*command),
        Command::Card(command) => commands::card::run(command),
        Command::Auth(args) => commands::auth::run(*args),
        Command::Server(command) => commands::server::run(command),
        Command::Admin(args) => commands::admin::run(*args),
        Command::Kiosk(args) => commands::kiosk::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Bench(command) => commands::bench::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if cli_output::is_output_closed(&error) => {
            ExitCode::from(cli_output::EXIT_OUTPUT_CLOSED)
        }
        Err(error) => {
            eprintln!("error: {}", cli_output::error_report(&error));
            ExitCode::from(exit_code(&error))
        }
    }
}

fn exit_code(error: &anyhow::Error) -> u8 {
    if error.is::<commands::kiosk::NoTerminal>() {
        return EXIT_USAGE;
    }
    match error.downcast_ref::<PivError>() {
        Some(PivError::WrongPin { .. }) => EXIT_WRONG_PIN,
        Some(PivError::PinBlocked) => EXIT_PIN_BLOCKED,
        _ => 1,
    }
}
