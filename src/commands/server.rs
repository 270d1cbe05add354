//! `pivtap server`: set up and run the authentication server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use pivtap_server_client::config::ServerConfig;
use pivtap_server_client::init::{InitOptions, init_server};
use pivtap_server_client::server;
use pivtap_server_client::token::TokenKeys;

/// `pivtap server ...`
#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Write a ready-to-run server into DIR: server.toml, a TLS certificate and
    /// key, token signing keys, an admin credential, the issuing CA that
    /// enrollment signs card certificates with (trusted automatically), and any
    /// further trusted card CAs.
    Init {
        /// The directory (created; must be empty unless --force).
        dir: PathBuf,
        /// A further CA certificate (PEM) whose worker cards may sign in, besides
        /// the issuing CA `init` makes; repeat for several.
        #[arg(long = "trust", value_name = "CA.pem")]
        trust: Vec<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Extra host names for the TLS certificate (127.0.0.1, ::1 and localhost are always in it).
        #[arg(long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
        /// Write into DIR even if it is not empty (existing files are replaced).
        #[arg(long)]
        force: bool,
    },
    /// Start signing session tokens with a new key. The previous key stays in
    /// the JWKS until the last token it signed expires, so apps keep
    /// accepting those tokens. Restart the server to sign with the new key.
    RotateKeys {
        /// The server configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the server (HTTPS; stops cleanly on Ctrl-C or SIGTERM).
    Run {
        /// The configuration written by `pivtap server init`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Listen here instead of the configured address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// How log lines are written: text (for people) or json (one JSON object per
        /// line, each request with its request_id, route template and client address).
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        log_format: crate::log_format::LogFormat,
    },
}

impl ServerCommand {
    /// Whether the command keeps running (and so logs requests by default).
    #[must_use]
    pub fn is_long_running(&self) -> bool {
        matches!(self, ServerCommand::Run { .. })
    }

    /// The log format asked for (`server run --log-format`; text otherwise).
    #[must_use]
    pub fn log_format(&self) -> crate::log_format::LogFormat {
        match self {
            ServerCommand::Run { log_format, .. } => *log_format,
            _ => crate::log_format::LogFormat::Text,
        }
    }
}

/// Runs a `server` subcommand.
pub fn run(command: ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::Init {
            dir,
            trust,
            listen,
            hostnames,
            force,
        } => {
            let report = init_server(
                &dir,
                &InitOptions {
                    trust,
                    listen,
                    hostnames,
                    force,
                },
            )?;
            println!("Server ready in {}.", dir.display());
            println!("  configuration:    {}", report.config_path.display());
            println!("  origin:           {}", report.origin);
            println!(
                "  admin credential: {} (keep it secret)",
                report.admin_token_path.display()
            );
            println!("  server key pin:   sha256//{}", report.spki_sha256_pin);
            println!(
                "  issuing CA:       {}{} (cards enrolled with `pivtap admin enroll` chain to it; keep ca.key secret)",
                report.ca_certificate_path.display(),
                if report.ca_created { "" } else { ", kept" }
            );
            println!();
            println!(
                "Start it:  pivtap server run --config {}",
                report.config_path.display()
            );
            println!(
                "Clients trust it with --ca {} or --pin-sha256 sha256//{}",
                dir.join("tls.crt").display(),
                report.spki_sha256_pin
            );
            println!(
                "Health: GET /livez (the process answers), GET /readyz (a sign-in can be recorded). \
                 GET /metrics is served nowhere until [metrics] in server.toml sets \
                 listen = \"127.0.0.1:9464\" (loopback) or token_file (a bearer credential)."
            );
            println!(
                "Devices: challenges go only to registered devices. Register each kiosk with \
                 `pivtap admin devices add ID`, then run `pivtap kiosk enroll-device` on it."
            );
            Ok(())
        }
        ServerCommand::RotateKeys { config } => {
            let configuration = ServerConfig::load(&config)?;
            let path = &configuration.tokens.key_file;
            let mut keys =
                TokenKeys::load(path).with_context(|| format!("cannot load {}", path.display()))?;
            let previous = keys.current_kid().to_owned();
            keys.rotate(
                time::OffsetDateTime::now_utc(),
                configuration.tokens.lifetime(),
            );
            keys.save(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "New token signing key {} (previous {previous} stays published until its tokens expire). \
                 Restart the server to sign with it.",
                keys.current_kid()
            );
            Ok(())
        }
        ServerCommand::Run { config, listen, .. } => {
            let mut configuration = ServerConfig::load(&config)?;
            if let Some(listen) = listen {
                configuration.listen = listen;
                configuration.validate(&config)?;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let (state, listener) = server::from_config(&configuration).await?;
                let scheme = if configuration.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                println!(
                    "pivtap server listening on {scheme}://{} (origin {})",
                    configuration.listen, configuration.origin
                );
                if let Some(metrics) = configuration.metrics.listen {
                    println!("metrics on http://{metrics}/metrics");
                }
                server::serve(state, listener, shutdown_signal()).await?;
                println!("pivtap server stopped.");
                anyhow::Ok(())
            })
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
