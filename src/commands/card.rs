//! `pivtap card`: read what is on a PIV card, verify its PIN, export certificates, and the lifecycle commands (enroll, renew, change PIN or PUK, unblock, reset) on pivtap-client and pivtap-card.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use pivtap_apdu::piv::{KeyReference, Pin, Puk};
use pivtap_card::pcsc::PcscContext;
use pivtap_card::session::PinStatus;
use pivtap_card::{ManagementKey, PivError, PivSession, factory};
use pivtap_protocol::certificate::rfc4514;
use pivtap_protocol::pin_policy::{PinPolicy, PinPolicyViolation};
use pivtap_protocol::wire::{KeyAlgorithm, UnknownKeyAlgorithm};
use pivtap_vcard::image::CardImage;
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey as X509PublicKey;
use zeroize::Zeroizing;

use super::CardArgs;
use super::auth::{DeviceCredentialArgs, OptionalServerArgs, ServerArgs, explain, flow_error};
use pivtap_client::enrollment::{
    CardSecrets, EnrollOptions, EnrollOutcome, EnrollStep, RenewOptions, enroll_card, renew_card,
};

/// `pivtap card ...`
#[derive(Subcommand, Debug)]
pub enum CardCommand {
    /// Show what is on the card: CHUID, certificates per slot, PIN and PUK tries left.
    Info {
        #[command(flatten)]
        card: CardArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the card PIN (from PIVTAP_PIN, else asked for without echo).
    ///
    /// Exits 0 when the card accepts the PIN, 3 when it is wrong (the message
    /// says how many tries are left) and 4 when the PIN is blocked.
    VerifyPin {
        #[command(flatten)]
        card: CardArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the PC/SC readers, and the card in each (ATR, contact or contactless).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure APDU round trips: COUNT empty VERIFYs (one APDU each, no PIN
    /// sent), with the time of each; prints the median and percentiles.
    Bench {
        #[command(flatten)]
        card: CardArgs,
        /// Round trips to time (after 20 untimed ones).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Enroll the card with an enrollment code from your administrator.
    ///
    /// Generates a new key in slot 9a on the card (the key never leaves it),
    /// has the card sign a certificate request, trades it and the code for a
    /// certificate, stores the certificate and, when the card has none, a
    /// CHUID. The PIN comes from PIVTAP_PIN, standard input or a prompt.
    Enroll(Box<EnrollArgs>),
    /// Renew the card's sign-in key and certificate (slot 9a).
    ///
    /// The current key signs a sign-in assertion that authorises the
    /// renewal; then a new key is generated on the card and the server issues
    /// a certificate for it. The old certificate is revoked by the server.
    Renew(Box<RenewArgs>),
    /// Change the card PIN: current PIN, then the new one (twice on a terminal).
    ///
    /// The new PIN is checked against the PIN policy (the server's with
    /// --server, else the default: 6-8 digits, no runs such as 123456, no
    /// repeats such as 111111) before the card is touched. From PIVTAP_PIN
    /// and PIVTAP_NEW_PIN, else lines of standard input, else prompts.
    ChangePin {
        #[command(flatten)]
        card: CardArgs,
        #[command(flatten)]
        server: OptionalServerArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the card PUK: current PUK, then the new one (6-8 digits).
    /// From PIVTAP_PUK and PIVTAP_NEW_PUK, else standard input, else prompts.
    ChangePuk {
        #[command(flatten)]
        card: CardArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unblock the PIN with the PUK and set a new PIN (checked as for change-pin).
    /// From PIVTAP_PUK and PIVTAP_NEW_PIN, else standard input, else prompts.
    UnblockPin {
        #[command(flatten)]
        card: CardArgs,
        #[command(flatten)]
        server: OptionalServerArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reset the PIV application to factory state: every key, certificate and
    /// data object erased; PIN, PUK and management key back to the defaults.
    ///
    /// Cards (YubiKey) accept RESET only once the PIN and the PUK are both
    /// blocked, so this blocks them first with wrong values. Asks for
    /// confirmation (the card's serial number, or "reset") unless --yes.
    Reset {
        #[command(flatten)]
        card: CardArgs,
        /// Do not ask for confirmation (for scripts).
        #[arg(long)]
        yes: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a slot's certificate to a file (PEM, or DER with --der).
    ExportCert {
        #[command(flatten)]
        card: CardArgs,
        /// The key slot: 9a, 9c, 9d, 9e or 82-95.
        #[arg(long, default_value = "9a")]
        slot: KeyReference,
        /// Output file; `-` for standard output.
        #[arg(long, value_name = "FILE", default_value = "-")]
        out: PathBuf,
        /// Write DER instead of PEM.
        #[arg(long)]
        der: bool,
    },
}

/// Runs a `card` subcommand.
pub fn run(command: CardCommand) -> anyhow::Result<()> {
    match command {
        CardCommand::Info { card, json } => info(&card, json),
        CardCommand::VerifyPin { card, json } => verify_pin(&card, json),
        CardCommand::ExportCert {
            card,
            slot,
            out,
            der,
        } => export_certificate(&card, slot, &out, der),
        CardCommand::List { json } => list(json),
        CardCommand::Enroll(args) => enroll(&args),
        CardCommand::Renew(args) => renew(&args),
        CardCommand::ChangePin { card, server, json } => change_pin(&card, &server, json),
        CardCommand::ChangePuk { card, json } => change_puk(&card, json),
        CardCommand::UnblockPin { card, server, json } => unblock_pin(&card, &server, json),
        CardCommand::Reset { card, yes, json } => reset(&card, yes, json),
        CardCommand::Bench { card, count, json } => bench(&card, count, json),
    }
}

#[derive(Serialize)]
struct ReaderListing {
    reader: String,
    card_present: bool,
    atr: Option<String>,
    contactless: bool,
}

fn list(json: bool) -> anyhow::Result<()> {
    let readers = PcscContext::establish()?.list_readers()?;
    let listing: Vec<ReaderListing> = readers
        .into_iter()
        .map(|r| ReaderListing {
            reader: r.name,
            card_present: r.card_present,
            atr: r.atr.map(hex::encode_upper),
            contactless: r.contactless,
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    if listing.is_empty() {
        println!("No smart card readers.");
    }
    for reader in &listing {
        match &reader.atr {
            Some(atr) if reader.card_present => println!(
                "{}: card present ({}), ATR {atr}",
                reader.reader,
                if reader.contactless {
                    "contactless"
                } else {
                    "contact"
                }
            ),
            _ => println!("{}: no card", reader.reader),
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct BenchReport {
    card: String,
    round_trips: usize,
    min_us: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn bench(args: &CardArgs, count: u32, json: bool) -> anyhow::Result<()> {
    let mut backend = args.open()?;
    let card = backend.name();
    let mut session = PivSession::open(backend.as_mut())?;
    for _ in 0..20 {
        session.pin_status()?;
    }
    let mut times = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let start = std::time::Instant::now();
        session.pin_status()?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let at = |fraction: f64| super::bench::nearest_rank(&times, fraction);
    let report = BenchReport {
        card,
        round_trips: times.len(),
        min_us: times[0],
        p50_us: at(0.5),
        p90_us: at(0.9),
        p99_us: at(0.99),
        max_us: at(1.0),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: {} APDU round trips: min {:.0} us, median {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
            report.card,
            report.round_trips,
            report.min_us,
            report.p50_us,
            report.p90_us,
            report.p99_us,
            report.max_us
        );
    }
    Ok(())
}

/// Everything `card info` reports.
#[derive(Serialize)]
struct CardInfo {
    card: String,
    /// The card withheld objects or PIN state (contactless without secure messaging).
    restricted: bool,
    chuid: Option<ChuidInfo>,
    pin: Option<RetryInfo>,
    puk: Option<RetryInfo>,
    slots: Vec<SlotInfo>,
}

#[derive(Serialize)]
struct ChuidInfo {
    guid: String,
    fascn: Option<String>,
    expiration: String,
}

#[derive(Serialize)]
struct RetryInfo {
    verified: bool,
    blocked: bool,
    retries_left: Option<u8>,
}

#[derive(Serialize)]
struct SlotInfo {
    slot: String,
    name: &'static str,
    algorithm: String,
    subject: String,
    issuer: String,
    serial: String,
    not_before: String,
    not_after: String,
}

fn info(args: &CardArgs, json: bool) -> anyhow::Result<()> {
    let mut backend = args.open()?;
    let card_name = backend.name();
    let mut session = PivSession::open(backend.as_mut())?;
    let chuid = match session.chuid() {
        Ok(chuid) => Some(ChuidInfo {
            guid: chuid.guid_hex(),
            fascn: chuid.fascn().ok().map(|f| f.to_string()),
            expiration: iso_date(&chuid.expiration),
        }),
        Err(PivError::ObjectNotFound { .. }) => None,
        Err(error) => return Err(error).context("cannot read the CHUID"),
    };
    // Over contactless a PIV card hides its PIN state and most certificates
    // (SP 800-73-4): report what it shows and say so.
    let mut restricted = false;
    let pin = match session.pin_status() {
        Ok(status) => Some(retry_info(status)),
        Err(PivError::AccessDenied { .. }) => {
            restricted = true;
            None
        }
        Err(error) => return Err(error.into()),
    };
    let puk = session.puk_status()?.map(retry_info);
    let mut slots = Vec::new();
    for slot in KeyReference::asymmetric_slots() {
        match session.certificate(slot) {
            Ok(der) => slots.push(describe_certificate(slot, &der)?),
            Err(PivError::ObjectNotFound { .. }) => {}
            Err(PivError::AccessDenied { .. }) => restricted = true,
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot read the certificate of slot {slot}"));
            }
        }
    }
    let info = CardInfo {
        card: card_name,
        restricted,
        chuid,
        pin,
        puk,
        slots,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_info(&info);
    }
    Ok(())
}

fn retry_info(status: PinStatus) -> RetryInfo {
    match status {
        PinStatus::Verified => RetryInfo {
            verified: true,
            blocked: false,
            retries_left: None,
        },
        PinStatus::RetriesLeft(n) => RetryInfo {
            verified: false,
            blocked: false,
            retries_left: Some(n),
        },
        PinStatus::Blocked => RetryInfo {
            verified: false,
            blocked: true,
            retries_left: Some(0),
        },
    }
}

fn describe_retries(info: &RetryInfo) -> String {
    match (info.verified, info.blocked, info.retries_left) {
        (true, _, _) => "verified".to_owned(),
        (_, true, _) => "BLOCKED".to_owned(),
        (_, _, Some(1)) => "1 try left".to_owned(),
        (_, _, Some(n)) => format!("{n} tries left"),
        _ => "unknown".to_owned(),
    }
}

fn print_info(info: &CardInfo) {
    println!("Card:        {}", info.card);
    match &info.chuid {
        Some(chuid) => {
            println!("CHUID GUID:  {}", chuid.guid);
            if let Some(fascn) = &chuid.fascn {
                println!("FASC-N:      {fascn}");
            }
            println!("Expires:     {}", chuid.expiration);
        }
        None => println!("CHUID:       none"),
    }
    match &info.pin {
        Some(pin) => println!("PIN:         {}", describe_retries(pin)),
        None => println!("PIN:         not shown over this interface"),
    }
    match &info.puk {
        Some(puk) => println!("PUK:         {}", describe_retries(puk)),
        None => println!("PUK:         unknown (the card does not report it)"),
    }
    if info.slots.is_empty() {
        println!("Slots:       no certificates");
    }
    if info.restricted {
        println!(
            "Note:        the card withholds its PIN state and some certificates over this \
             interface (contactless, SP 800-73-4); use a contact reader to see everything."
        );
    }
    for slot in &info.slots {
        println!();
        println!("Slot {} ({}): {}", slot.slot, slot.name, slot.algorithm);
        println!("  Subject:   {}", slot.subject);
        println!("  Issuer:    {}", slot.issuer);
        println!("  Serial:    {}", slot.serial);
        println!("  Valid:     {} to {}", slot.not_before, slot.not_after);
    }
}

fn describe_certificate(slot: KeyReference, der: &[u8]) -> anyhow::Result<SlotInfo> {
    let (_, certificate) = X509Certificate::from_der(der).map_err(|error| {
        anyhow::anyhow!("the certificate in slot {slot} is not valid X.509: {error}")
    })?;
    let algorithm = match certificate.public_key().parsed() {
        Ok(X509PublicKey::RSA(rsa)) => format!("RSA-{}", rsa.key_size()),
        Ok(X509PublicKey::EC(point)) => match point.key_size() {
            256 => "ECC P-256".to_owned(),
            384 => "ECC P-384".to_owned(),
            bits => format!("ECC {bits}-bit"),
        },
        _ => "unknown".to_owned(),
    };
    let validity = certificate.validity();
    Ok(SlotInfo {
        slot: slot.to_string(),
        name: slot.description(),
        algorithm,
        subject: rfc4514(certificate.subject()),
        issuer: rfc4514(certificate.issuer()),
        serial: certificate.raw_serial_as_string(),
        not_before: rfc3339(validity.not_before.to_datetime()),
        not_after: rfc3339(validity.not_after.to_datetime()),
    })
}

/// `YYYYMMDD` as `YYYY-MM-DD` (left as is when it is not eight digits).
fn iso_date(compact: &str) -> String {
    if compact.len() == 8 && compact.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}-{}-{}", &compact[..4], &compact[4..6], &compact[6..])
    } else {
        compact.to_owned()
    }
}

/// A time as the CLI prints it (RFC 3339).
pub(crate) fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| time.to_string())
}

/// The PIN from `PIVTAP_PIN`, else asked for on the terminal without echo,
/// else a line of standard input.
pub fn read_pin() -> anyhow::Result<Pin> {
    let text = SecretReader::new().read(Secret::Pin)?;
    Ok(Pin::new(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_print_most_specific_first() {
        let pem = std::fs::read_to_string(pivtap_testkit::fixture("certs/alice.pem")).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let certificate = pem.parse_x509().unwrap();
        assert_eq!(
            rfc4514(certificate.subject()),
            "CN=Alice Example,serialNumber=E1001,OU=Field,O=Example Corp"
        );
        assert_eq!(
            rfc4514(certificate.issuer()),
            "CN=pivtap Test CA,O=pivtap test"
        );
    }

    #[test]
    fn chuid_dates_read_as_iso() {
        assert_eq!(iso_date("20461117"), "2046-11-17");
        assert_eq!(iso_date("2046111"), "2046111");
    }
}

#[derive(Serialize)]
struct VerifyOutcome {
    verified: bool,
    blocked: bool,
    retries_left: Option<u8>,
}

fn verify_pin(args: &CardArgs, json: bool) -> anyhow::Result<()> {
    let pin = read_pin()?;
    let mut backend = args.open()?;
    let mut session = PivSession::open(backend.as_mut())?;
    let result = session.verify_pin(&pin);
    let outcome = match &result {
        Ok(()) => VerifyOutcome {
            verified: true,
            blocked: false,
            retries_left: None,
        },
        Err(PivError::WrongPin { retries_left }) => VerifyOutcome {
            verified: false,
            blocked: false,
            retries_left: *retries_left,
        },
        Err(PivError::PinBlocked) => VerifyOutcome {
            verified: false,
            blocked: true,
            retries_left: Some(0),
        },
        Err(_) => return Ok(result?),
    };
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else if outcome.verified {
        println!("PIN verified.");
    }
    Ok(result?)
}

fn export_certificate(
    args: &CardArgs,
    slot: KeyReference,
    out: &PathBuf,
    der: bool,
) -> anyhow::Result<()> {
    let mut backend = args.open()?;
    let mut session = PivSession::open(backend.as_mut())?;
    let certificate = session.certificate(slot)?;
    let bytes = if der {
        certificate
    } else {
        pivtap_protocol::certificate::pem("CERTIFICATE", &certificate).into_bytes()
    };
    if out.as_os_str() == "-" {
        std::io::stdout().write_all(&bytes)?;
    } else {
        std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Card lifecycle: enroll, renew, PIN and PUK changes, unblock, reset.

/// A secret the card commands read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secret {
    /// The current PIN.
    Pin,
    /// A new PIN.
    NewPin,
    /// The current PUK.
    Puk,
    /// A new PUK.
    NewPuk,
    /// A new exit passcode for the kiosk's administrator exit.
    ExitPasscode,
}

impl Secret {
    /// The environment variable that holds it.
    fn variable(self) -> &'static str {
        match self {
            Secret::Pin => "PIVTAP_PIN",
            Secret::NewPin => "PIVTAP_NEW_PIN",
            Secret::Puk => "PIVTAP_PUK",
            Secret::NewPuk => "PIVTAP_NEW_PUK",
            Secret::ExitPasscode => "PIVTAP_EXIT_PASSCODE",
        }
    }

    /// What it is called in prompts and messages.
    fn name(self) -> &'static str {
        match self {
            Secret::Pin => "PIN",
            Secret::NewPin => "new PIN",
            Secret::Puk => "PUK",
            Secret::NewPuk => "new PUK",
            Secret::ExitPasscode => "exit passcode",
        }
    }

    fn is_new(self) -> bool {
        matches!(self, Secret::NewPin | Secret::NewPuk | Secret::ExitPasscode)
    }
}

/// Reads PINs and PUKs: from their environment variable, else asked on the
/// terminal without echo (new values twice), else one line of standard input
/// each, in the order the command asks for them.
pub struct SecretReader {
    terminal: bool,
}

impl SecretReader {
    /// A reader for this process's standard input.
    #[must_use]
    pub fn new() -> Self {
        SecretReader {
            terminal: std::io::stdin().is_terminal(),
        }
    }

    /// Reads `secret`, surrounding white space removed.
    pub fn read(&mut self, secret: Secret) -> anyhow::Result<Zeroizing<String>> {
        if let Ok(value) = std::env::var(secret.variable()) {
            return Ok(Zeroizing::new(value.trim().to_owned()));
        }
        if self.terminal {
            let prompt = |label: &str| -> anyhow::Result<Zeroizing<String>> {
                let text = Zeroizing::new(
                    rpassword::prompt_password(label)
                        .with_context(|| format!("cannot read the {}", secret.name()))?,
                );
                Ok(Zeroizing::new(text.trim().to_owned()))
            };
            let mut label = secret.name().to_owned();
            if let Some(first) = label.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            let value = prompt(&format!("{label}: "))?;
            if secret.is_new() {
                let again = prompt(&format!("{label} again: "))?;
                if again.as_bytes() != value.as_bytes() {
                    bail!("the two {}s differ; nothing was changed", secret.name());
                }
            }
            return Ok(value);
        }
        let mut line = Zeroizing::new(String::new());
        let read = std::io::stdin()
            .read_line(&mut line)
            .with_context(|| format!("cannot read the {}", secret.name()))?;
        if read == 0 || line.trim().is_empty() {
            bail!(
                "no {}: set {}, give it on a line of standard input, or run in a terminal to be asked for it",
                secret.name(),
                secret.variable()
            );
        }
        Ok(Zeroizing::new(line.trim().to_owned()))
    }
}

impl Default for SecretReader {
    fn default() -> Self {
        Self::new()
    }
}

/// A current-thread runtime for the server requests of one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The PIN policy: the server's (`GET /v1/pin-policy`) when one is named, else the default.
fn pin_policy(server: &OptionalServerArgs) -> anyhow::Result<PinPolicy> {
    match server.client()? {
        Some(client) => runtime()?
            .block_on(client.pin_policy())
            .map_err(explain)
            .context("cannot fetch the server's PIN policy"),
        None => Ok(PinPolicy::default()),
    }
}

/// A policy refusal for the command line: which rule, and that the card was not touched.
fn refused(what: &str, rule: &PinPolicyViolation) -> anyhow::Error {
    let rule = rule.to_string();
    let rule = if what.contains("PUK") {
        rule.replace("PIN", "PUK")
    } else {
        rule
    };
    anyhow::anyhow!("the {what} is refused: {rule}; the card was not touched")
}

#[derive(Serialize)]
struct Changed {
    changed: &'static str,
}

fn print_changed(json: bool, changed: &'static str, text: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&Changed { changed })?);
    } else {
        println!("{text}");
    }
    Ok(())
}

pub(super) fn change_pin(
    card: &CardArgs,
    server: &OptionalServerArgs,
    json: bool,
) -> anyhow::Result<()> {
    let policy = pin_policy(server)?;
    let mut secrets = SecretReader::new();
    let current = secrets.read(Secret::Pin)?;
    let new = secrets.read(Secret::NewPin)?;
    policy
        .check_change(&current, &new)
        .map_err(|rule| refused("new PIN", &rule))?;
    let current = Pin::new(&current).context("the current PIN")?;
    let new = Pin::new(&new).context("the new PIN")?;
    let mut backend = card.open()?;
    let mut session = PivSession::open(backend.as_mut())?;
    session.change_pin(&current, &new)?;
    print_changed(json, "pin", "PIN changed.")
}

pub(super) fn change_puk(card: &CardArgs, json: bool) -> anyhow::Result<()> {
    let mut secrets = SecretReader::new();
    let current = secrets.read(Secret::Puk)?;
    let new = secrets.read(Secret::NewPuk)?;
    PinPolicy::puk()
        .check_change(&current, &new)
        .map_err(|rule| refused("new PUK", &rule))?;
    let current = Puk::new(&current).context("the current PUK")?;
    let new = Puk::new(&new).context("the new PUK")?;
    let mut backend = card.open()?;
    let mut session = PivSession::open(backend.as_mut())?;
    session.change_puk(&current, &new)?;
    print_changed(json, "puk", "PUK changed.")
}

pub(super) fn unblock_pin(
    card: &CardArgs,
    server: &OptionalServerArgs,
    json: bool,
) -> anyhow::Result<()> {
    let policy = pin_policy(server)?;
    let mut secrets = SecretReader::new();
    let puk = secrets.read(Secret::Puk)?;
    let new = secrets.read(Secret::NewPin)?;
    policy
        .check(&new)
        .map_err(|rule| refused("new PIN", &rule))?;
    let puk = Puk::new(&puk).context("the PUK")?;
    let new = Pin::new(&new).context("the new PIN")?;
    let mut backend = card.open()?;
    let mut session = PivSession::open(backend.as_mut())?;
    session.unblock_pin(&puk, &new)?;
    print_changed(
        json,
        "pin",
        "PIN unblocked and set; the card signs in with the new PIN.",
    )
}

#[derive(Serialize)]
struct ResetOutcome {
    reset: bool,
    card_serial: Option<u32>,
    pin: &'static str,
    puk: &'static str,
    management_key: String,
}

pub(super) fn reset(card: &CardArgs, yes: bool, json: bool) -> anyhow::Result<()> {
    if !yes && !std::io::stdin().is_terminal() {
        bail!(
            "reset erases every key and certificate on the card: run it in a terminal to \
             confirm, or pass --yes"
        );
    }
    let mut backend = card.open()?;
    let name = backend.name();
    let serial = PivSession::open(backend.as_mut())?.serial()?;
    if !yes {
        confirm_reset(&name, serial)?;
    }
    PivSession::open(backend.as_mut())?.factory_reset()?;
    let outcome = ResetOutcome {
        reset: true,
        card_serial: serial,
        pin: factory::PIN,
        puk: factory::PUK,
        management_key: hex::encode(factory::MANAGEMENT_KEY),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("The card is reset to factory state: no keys, no certificates, no CHUID.");
        println!("PIN:            {}", factory::PIN);
        println!("PUK:            {}", factory::PUK);
        println!(
            "Management key: {} (3DES; AES-192 on YubiKey 5.7 and later)",
            outcome.management_key
        );
        println!("Enroll it again with `pivtap card enroll`, and change the PIN and the PUK.");
    }
    Ok(())
}

/// Asks on the terminal for the card's serial number or "reset".
fn confirm_reset(name: &str, serial: Option<u32>) -> anyhow::Result<()> {
    let serial_text = serial.map(|s| s.to_string());
    eprintln!(
        "This erases every key, certificate and data object on {name}{} and sets the PIN, \
         PUK and management key back to the factory defaults.",
        serial_text
            .as_deref()
            .map(|s| format!(" (serial {s})"))
            .unwrap_or_default()
    );
    eprint!(
        "Type {} to go on: ",
        serial_text
            .as_deref()
            .map(|s| format!("the serial number ({s}) or \"reset\""))
            .unwrap_or_else(|| "\"reset\"".to_owned())
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    let answer = answer.trim();
    if answer == "reset" || serial_text.as_deref() == Some(answer) {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}

/// `pivtap card enroll`
#[derive(clap::Args, Debug)]
pub struct EnrollArgs {
    #[command(flatten)]
    card: CardArgs,
    #[command(flatten)]
    server: OptionalServerArgs,
    /// The enrollment code, or the whole pivtap://enroll?server=...&code=... link
    /// (its server is used when --server is not given).
    #[arg(long, env = "PIVTAP_ENROLL_CODE", hide_env_values = true)]
    code: String,
    /// The card management key, hex (default: with --vcard, the key the
    /// image keeps; else the factory default key).
    #[arg(long, value_name = "HEX")]
    management_key: Option<String>,
    /// This device's id, for the server's audit log.
    #[arg(long, env = "PIVTAP_DEVICE")]
    device: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `pivtap card renew`
#[derive(clap::Args, Debug)]
pub struct RenewArgs {
    #[command(flatten)]
    card: CardArgs,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    device_credential: DeviceCredentialArgs,
    /// The card management key, hex (default: with --vcard, the key the
    /// image keeps; else the factory default key).
    #[arg(long, value_name = "HEX")]
    management_key: Option<String>,
    /// This device's id (the renewal signs in like `pivtap auth`): with its
    /// --device-credential the challenge is the device's, without one a
    /// renewal challenge (which can renew but never sign in).
    #[arg(long, env = "PIVTAP_DEVICE")]
    device: String,
    /// The new key's algorithm (rsa2048, p256, p384); default: the current key's.
    #[arg(long, value_parser = parse_key_algorithm)]
    algorithm: Option<KeyAlgorithm>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_key_algorithm(text: &str) -> Result<KeyAlgorithm, String> {
    text.parse()
        .map_err(|error: UnknownKeyAlgorithm| error.to_string())
}

/// A management key in hex: 16 bytes AES-128, 24 bytes 3DES (AES-192 when
/// the card says so), 32 bytes AES-256; `None` is the factory default.
fn management_key(hex_text: Option<&str>) -> anyhow::Result<ManagementKey> {
    let Some(text) = hex_text else {
        return Ok(ManagementKey::default_key());
    };
    ManagementKey::from_hex_by_length(text)
        .map_err(|error| anyhow::anyhow!("--management-key: {error}"))
}

/// The management key for `card`: `--management-key` when given, else a
/// virtual card's own (its image keeps it: `pivtap vcard enroll` makes a
/// random one), else the factory default.
fn management_key_for(card: &CardArgs, hex_text: Option<&str>) -> anyhow::Result<ManagementKey> {
    match (hex_text, &card.vcard) {
        (None, Some(path)) => Ok(CardImage::load(path)
            .map_err(|error| super::naming_card_image(error.into(), path))?
            .management_key),
        _ => management_key(hex_text),
    }
}

/// Prints each step on standard error and remembers the last.
struct Progress {
    last: Option<EnrollStep>,
}

impl Progress {
    fn report(&mut self, step: EnrollStep) {
        eprintln!("{step}...");
        self.last = Some(step);
    }

    /// Adds what the card is left with when the old key was already replaced.
    fn explain(&self, error: anyhow::Error, what_now: &str) -> anyhow::Error {
        if self.last.is_some_and(EnrollStep::key_replaced) {
            error.context(format!(
                "slot 9a now holds a new key without a certificate for it; {what_now}"
            ))
        } else {
            error
        }
    }
}

pub(super) fn enroll(args: &EnrollArgs) -> anyhow::Result<()> {
    let (client, code) = args.server.enrollment_client(&args.code)?;
    let options = EnrollOptions {
        secrets: CardSecrets {
            pin: read_pin()?,
            management_key: management_key_for(&args.card, args.management_key.as_deref())?,
        },
        device: args.device.clone(),
    };
    let mut backend = args.card.open()?;
    let mut progress = Progress { last: None };
    let outcome = runtime()?
        .block_on(enroll_card(
            backend.as_mut(),
            &client,
            &code,
            &options,
            &mut |step| progress.report(step),
        ))
        .map_err(|error| {
            progress.explain(
                flow_error(error),
                "ask your administrator for a new enrollment code and enroll again",
            )
        })?;
    drop(backend);
    print_outcome(&outcome, "Enrolled", args.json)
}

pub(super) fn renew(args: &RenewArgs) -> anyhow::Result<()> {
    let client = args.device_credential.apply(args.server.client()?)?;
    let options = RenewOptions {
        secrets: CardSecrets {
            pin: read_pin()?,
            management_key: management_key_for(&args.card, args.management_key.as_deref())?,
        },
        device: args.device.clone(),
        algorithm: args.algorithm,
    };
    let mut backend = args.card.open()?;
    let mut progress = Progress { last: None };
    let outcome = runtime()?
        .block_on(renew_card(
            backend.as_mut(),
            &client,
            &options,
            &mut |step| progress.report(step),
        ))
        .map_err(|error| {
            progress.explain(
                flow_error(error),
                "run `pivtap card renew` again: it resumes a renewal the server recorded; \
                 if it cannot, the card signs in only once enrolled again (ask your administrator for an enrollment code)",
            )
        })?;
    drop(backend);
    print_outcome(&outcome, "Renewed", args.json)
}

fn print_outcome(outcome: &EnrollOutcome, done: &str, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
        return Ok(());
    }
    println!(
        "{done}: {} ({}){}",
        outcome.user.display_name,
        outcome.user.id,
        outcome
            .user
            .mail
            .as_deref()
            .map(|m| format!(" <{m}>"))
            .unwrap_or_default()
    );
    println!(
        "Certificate:  serial {}, valid until {}",
        outcome.serial, outcome.not_after
    );
    println!("Key:          {} in slot 9a", outcome.algorithm);
    if let Some(serial) = outcome.card_serial {
        println!("Card serial:  {serial}");
    }
    if let Some(guid) = &outcome.chuid_guid {
        let written = if outcome.chuid_written {
            " (written now)"
        } else {
            ""
        };
        println!("CHUID GUID:   {guid}{written}");
    }
    if let Some(rule) = &outcome.pin_policy_problem {
        println!(
            "Warning: the card's PIN does not meet the server's PIN policy ({rule}); \
             change it now with `pivtap card change-pin`."
        );
    }
    Ok(())
}

#[cfg(test)]
mod lifecycle_tests {
    use super::*;
    use pivtap_apdu::piv::Algorithm;

    #[test]
    fn management_keys_are_read_by_length() {
        assert_eq!(
            management_key(None).unwrap().algorithm(),
            Algorithm::TripleDes
        );
        let aes128 = "00112233445566778899aabbccddeeff";
        assert_eq!(
            management_key(Some(aes128)).unwrap().algorithm(),
            Algorithm::Aes128
        );
        let long = aes128.repeat(2);
        assert_eq!(
            management_key(Some(&long)).unwrap().algorithm(),
            Algorithm::Aes256
        );
        let triple = "010203040506070801020304050607080102030405060708";
        assert_eq!(
            management_key(Some(triple)).unwrap().algorithm(),
            Algorithm::TripleDes
        );
        let error = management_key(Some("0011")).unwrap_err().to_string();
        assert!(error.contains("16, 24 or 32 bytes"), "{error}");
        let error = format!("{:#}", management_key(Some(&"zz".repeat(16))).unwrap_err());
        assert!(error.contains("not valid hex"), "{error}");
        assert!(!error.contains("zz"), "the key is not echoed: {error}");
    }

    #[test]
    fn refusals_name_the_secret_and_the_rule() {
        let pin = refused("new PIN", &PinPolicyViolation::Repeated).to_string();
        assert!(
            pin.contains("the PIN must not be one digit repeated"),
            "{pin}"
        );
        assert!(pin.contains("not touched"), "{pin}");
        let puk = refused("new PUK", &PinPolicyViolation::NotDigits).to_string();
        assert!(puk.contains("the PUK must be digits only"), "{puk}");
        assert!(!puk.contains("PIN"), "{puk}");
    }

    #[test]
    fn key_algorithm_names() {
        assert_eq!(parse_key_algorithm("P256"), Ok(KeyAlgorithm::P256));
        assert_eq!(parse_key_algorithm("rsa2048"), Ok(KeyAlgorithm::Rsa2048));
        assert!(parse_key_algorithm("ed25519").is_err());
    }
}
