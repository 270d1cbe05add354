//! `pivtap auth`: one whole sign-in from the command line — challenge, card signature, assertion, session token.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pivtap_apdu::piv::KeyReference;
use pivtap_card::PivSession;
use pivtap_client::client::{Client, ClientError, ServerTrust};
use pivtap_protocol::duration::parse_duration;
use pivtap_protocol::wire::{ENROLL_URL_PREFIX, parse_enrollment_url};
use serde::Serialize;
use zeroize::Zeroizing;

use super::CardArgs;
use super::card::read_pin;
use pivtap_client::enrollment::{EnrollError, sign_in_with_pin};

/// Where the server is and how to trust it.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server, e.g. https://auth.example.com:8443.
    #[arg(long, value_name = "URL", env = "PIVTAP_SERVER")]
    pub server: String,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// A server that may be named (`--server`), and how to trust it.
#[derive(Args, Debug, Clone)]
pub struct OptionalServerArgs {
    /// The server, e.g. https://auth.example.com:8443.
    #[arg(long, value_name = "URL", env = "PIVTAP_SERVER", global = true)]
    pub server: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

impl OptionalServerArgs {
    /// The client and the code for an enrollment: `code` is the code, or the
    /// whole `pivtap://enroll?server=...&code=...` link, whose server is used
    /// when `--server` is not given.
    pub fn enrollment_client(&self, code: &str) -> anyhow::Result<(Client, Zeroizing<String>)> {
        let code = code.trim();
        let (link_server, code) = if code.starts_with(ENROLL_URL_PREFIX) {
            let (server, code) = parse_enrollment_url(code)?;
            (server, Zeroizing::new(code))
        } else {
            (None, Zeroizing::new(code.to_owned()))
        };
        let server =
            self.server.clone().or(link_server).context(
                "no server: give --server URL, or the whole pivtap://enroll link as --code",
            )?;
        Ok((self.trust.client(&server)?, code))
    }
}

/// This device's own credential (from `pivtap kiosk enroll-device`).
#[derive(Args, Debug, Clone)]
pub struct DeviceCredentialArgs {
    /// The directory holding this device's credential (device.key and
    /// device.crt from `pivtap kiosk enroll-device`): challenge requests are
    /// signed with it, as a server requiring registered devices wants.
    #[arg(long, value_name = "DIR", env = "PIVTAP_DEVICE_CREDENTIAL")]
    pub device_credential: Option<std::path::PathBuf>,
}

impl DeviceCredentialArgs {
    /// `client`, signing its challenge requests with the credential when one is given.
    pub fn apply(&self, client: Client) -> anyhow::Result<Client> {
        let Some(dir) = &self.device_credential else {
            return Ok(client);
        };
        let credential = pivtap_client::device::DeviceCredential::load_dir(dir)
            .with_context(|| format!("cannot use the device credential in {}", dir.display()))?;
        Ok(client.with_device_credential(std::sync::Arc::new(credential)))
    }
}

/// How to trust the server.
#[derive(Args, Debug, Clone)]
pub struct TrustArgs {
    /// Trust this CA (or the server's own tls.crt), PEM, instead of the system roots.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "pin_sha256",
        global = true
    )]
    pub ca: Option<std::path::PathBuf>,
    /// Trust exactly this server key: the pin `pivtap server init` printed (sha256//...).
    #[arg(long, value_name = "HASH", global = true)]
    pub pin_sha256: Option<String>,
    /// How long to wait for the server: seconds (10) or a duration (90s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
}

impl TrustArgs {
    /// A client for the server at `server`.
    pub fn client(&self, server: &str) -> anyhow::Result<Client> {
        let trust = match (&self.ca, &self.pin_sha256) {
            (Some(path), _) => ServerTrust::from_pem_file(path)?,
            (None, Some(pin)) => ServerTrust::from_pin(pin)?,
            (None, None) => ServerTrust::SystemRoots,
        };
        Ok(Client::new(server, trust, self.timeout)?)
    }
}

impl ServerArgs {
    /// A client for the server.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.trust.client(&self.server)
    }
}

impl OptionalServerArgs {
    /// A client for the server, when one is named.
    pub fn client(&self) -> anyhow::Result<Option<Client>> {
        self.server
            .as_deref()
            .map(|server| self.trust.client(server))
            .transpose()
    }
}

/// `pivtap auth`
#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    card: CardArgs,
    #[command(flatten)]
    device_credential: DeviceCredentialArgs,
    /// This device's id, as the server knows it (e.g. kiosk-07).
    #[arg(long, env = "PIVTAP_DEVICE")]
    device: String,
    /// The key slot that signs.
    #[arg(long, default_value = "9a")]
    slot: KeyReference,
    /// Print JSON (user, token, expires_in, audit_nonce).
    #[arg(long)]
    json: bool,
    /// Also print what the sign-in cost: APDUs and bytes exchanged with the
    /// card, time with the card and in all (with --json: a `stats` object).
    #[arg(long)]
    stats: bool,
}

/// What one sign-in cost (`pivtap auth --stats`).
#[derive(Serialize, Debug, Clone, Copy)]
pub struct AuthStats {
    /// Command APDUs sent to the card, GET RESPONSE and chained parts included.
    pub apdus: u64,
    /// Bytes of command APDUs sent.
    pub bytes_sent: u64,
    /// Bytes of responses received, status words included.
    pub bytes_received: u64,
    /// From opening the card to its last response, milliseconds.
    pub card_ms: f64,
    /// From the challenge request to the session token, milliseconds.
    pub total_ms: f64,
}

#[derive(Serialize)]
struct AuthOutput {
    user: pivtap_protocol::wire::UserInfo,
    token: String,
    expires_in: u64,
    /// The server-side session the sign-in opened (`pivtap admin sessions end ID` ends it).
    session_id: String,
    /// Seconds until the session ends on its own.
    session_expires_in: u64,
    /// The challenge's nonce as the server's audit shows it (`nonce ABCDEFGH…`): the
    /// audit event of this sign-in.
    audit_nonce: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<AuthStats>,
}

/// Runs `pivtap auth`.
pub fn run(args: AuthArgs) -> anyhow::Result<()> {
    let pin = read_pin()?;
    let client = args.device_credential.apply(args.server.client()?)?;
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The challenge first, so the card is in use only for the signature.
    let challenge = runtime
        .block_on(client.challenge(&args.device))
        .map_err(explain)?;
    let card_started = std::time::Instant::now();
    let mut backend = args.card.open()?;
    let (compact, exchanged) = {
        let mut session = PivSession::open(backend.as_mut())?;
        let certificate = session
            .certificate(args.slot)
            .with_context(|| format!("cannot read the certificate of slot {}", args.slot))?;
        let compact = sign_in_with_pin(
            &mut session,
            args.slot,
            &certificate,
            &pin,
            &challenge,
            &args.device,
        )
        .map_err(flow_error)?;
        (compact, session.stats())
    };
    let card_ms = card_started.elapsed().as_secs_f64() * 1e3;
    drop(backend);
    let signed_in = runtime
        .block_on(client.sign_in(&compact))
        .map_err(explain)?;
    let stats = args.stats.then(|| AuthStats {
        apdus: exchanged.apdus,
        bytes_sent: exchanged.bytes_sent,
        bytes_received: exchanged.bytes_received,
        card_ms,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&AuthOutput {
                user: signed_in.user,
                token: signed_in.token,
                expires_in: signed_in.expires_in,
                session_id: signed_in.session_id,
                session_expires_in: signed_in.session_expires_in,
                audit_nonce: pivtap_protocol::nonce::Nonce::audit_prefix_of(&challenge.nonce),
                stats,
            })?
        );
    } else {
        println!(
            "Signed in: {} ({}){}",
            signed_in.user.display_name,
            signed_in.user.id,
            signed_in
                .user
                .mail
                .map(|m| format!(" <{m}>"))
                .unwrap_or_default()
        );
        println!(
            "Session {} (ends in {} s, or with `pivtap admin sessions end {}`)",
            signed_in.session_id, signed_in.session_expires_in, signed_in.session_id
        );
        println!("Token (expires in {} s):", signed_in.expires_in);
        println!("{}", signed_in.token);
        if let Some(stats) = stats {
            println!(
                "Card: {} APDUs, {} bytes sent, {} bytes received, {:.1} ms; total {:.1} ms",
                stats.apdus, stats.bytes_sent, stats.bytes_received, stats.card_ms, stats.total_ms
            );
        }
    }
    Ok(())
}

/// An enrollment or signing error for the command line: card errors stay
/// [`PivError`]s (for the exit codes), server refusals lead with their code.
pub fn flow_error(error: EnrollError) -> anyhow::Error {
    match error {
        EnrollError::Card(card) => anyhow::Error::new(card),
        EnrollError::Server(server) => explain(server),
        other => anyhow::Error::new(other),
    }
}

/// Turns a refusal into a message that leads with the server's code.
pub fn explain(error: ClientError) -> anyhow::Error {
    match &error {
        ClientError::Refused {
            code,
            message,
            retry_after,
            ..
        } => {
            let retry = retry_after
                .map(|d| format!(" (try again in {} s)", d.as_secs()))
                .unwrap_or_default();
            anyhow::anyhow!("server refused: {code}: {message}{retry}")
        }
        _ => anyhow::Error::new(error),
    }
}
