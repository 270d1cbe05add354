//! `pivtap auth`: one whole sign-in from the command line — challenge, card signature, assertion, session token.

use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use clap::Args;
use pivtap_apdu::piv::{Algorithm, KeyReference};
use pivtap_card::{PivSession, SignatureAlgorithm};
use pivtap_kiosk::card_worker::signing_algorithms;
use pivtap_server_client::assertion::AssertionDraft;
use pivtap_server_client::certificate::CertificateFacts;
use pivtap_server_client::client::{Client, ClientError, ServerTrust};
use pivtap_server_client::wire::{ASSERTION_TYPE, AssertionHeader, AssertionPayload};
use serde::Serialize;

use super::CardArgs;
use super::card::read_pin;

/// Where the server is and how to trust it.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server, e.g. https://auth.example.com:8443.
    #[arg(long, value_name = "URL", env = "PIVTAP_SERVER")]
    pub server: String,
    /// Trust this CA (or the server's own tls.crt), PEM, instead of the system roots.
    #[arg(long, value_name = "FILE", conflicts_with = "pin_sha256")]
    pub ca: Option<std::path::PathBuf>,
    /// Trust exactly this server key: the pin `pivtap server init` printed (sha256//...).
    #[arg(long, value_name = "HASH")]
    pub pin_sha256: Option<String>,
    /// Seconds to wait for the server.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

impl ServerArgs {
    /// A client for the server.
    pub fn client(&self) -> anyhow::Result<Client> {
        let trust = match (&self.ca, &self.pin_sha256) {
            (Some(path), _) => ServerTrust::from_pem_file(path)?,
            (None, Some(pin)) => ServerTrust::from_pin(pin)?,
            (None, None) => ServerTrust::SystemRoots,
        };
        Ok(Client::new(
            &self.server,
            trust,
            Duration::from_secs(self.timeout),
        )?)
    }
}

/// `pivtap auth`
#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    card: CardArgs,
    /// This device's id, as the server knows it (e.g. kiosk-07).
    #[arg(long, env = "PIVTAP_DEVICE")]
    device: String,
    /// The key slot that signs.
    #[arg(long, default_value = "9a")]
    slot: KeyReference,
    /// Print JSON (user, token, expires_in).
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct AuthOutput {
    user: pivtap_server_client::wire::UserInfo,
    token: String,
    expires_in: u64,
}

/// Runs `pivtap auth`.
pub fn run(args: AuthArgs) -> anyhow::Result<()> {
    let pin = read_pin()?;
    let client = args.server.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The challenge first, so the card is in use only for the signature.
    let challenge = runtime
        .block_on(client.challenge(&args.device))
        .map_err(explain)?;
    let mut backend = args.card.open()?;
    let compact = {
        let mut session = PivSession::open(backend.as_mut())?;
        let certificate = session
            .certificate(args.slot)
            .with_context(|| format!("cannot read the certificate of slot {}", args.slot))?;
        let (key, algorithm) = key_of(&certificate)?;
        let draft = AssertionDraft {
            header: AssertionHeader {
                alg: algorithm.jose_name().to_owned(),
                typ: ASSERTION_TYPE.to_owned(),
                x5c: vec![base64::engine::general_purpose::STANDARD.encode(&certificate)],
            },
            payload: AssertionPayload {
                aud: challenge.aud.clone(),
                nonce: challenge.nonce.clone(),
                device: args.device.clone(),
                iat: time::OffsetDateTime::now_utc().unix_timestamp(),
                slot: args.slot.to_string(),
            },
        };
        session.verify_pin(&pin)?;
        let signature =
            session.sign(args.slot, key, algorithm, draft.signing_input().as_bytes())?;
        draft.finish(&signature)
    };
    drop(backend);
    let signed_in = runtime
        .block_on(client.sign_in(&compact))
        .map_err(explain)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&AuthOutput {
                user: signed_in.user,
                token: signed_in.token,
                expires_in: signed_in.expires_in,
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
        println!("Token (expires in {} s):", signed_in.expires_in);
        println!("{}", signed_in.token);
    }
    Ok(())
}

/// The card key's algorithm and the JOSE algorithm to sign with, from its certificate.
fn key_of(certificate: &[u8]) -> anyhow::Result<(Algorithm, SignatureAlgorithm)> {
    let facts = CertificateFacts::from_der(certificate)
        .context("the card's certificate is not valid X.509")?;
    signing_algorithms(facts.key).context("the card's key is not RSA-2048, P-256 or P-384")
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
