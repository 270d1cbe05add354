//! `pivtap card`: read what is on a PIV card, verify its PIN, export certificates.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use pivtap_apdu::piv::{KeyReference, Pin};
use pivtap_card::pcsc::PcscContext;
use pivtap_card::session::PinStatus;
use pivtap_card::{PivError, PivSession};
use serde::Serialize;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::prelude::{AttributeTypeAndValue, FromDer, X509Certificate, X509Name};
use x509_parser::public_key::PublicKey as X509PublicKey;
use zeroize::Zeroizing;

use super::CardArgs;

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
    let at = |fraction: f64| times[((times.len() - 1) as f64 * fraction).round() as usize];
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

/// A distinguished name as RFC 4514 writes it: most specific first, as it was given to `vcard new`.
fn rfc4514(name: &X509Name<'_>) -> String {
    let registry = oid_registry();
    let attribute = |attr: &AttributeTypeAndValue<'_>| {
        let key = oid2abbrev(attr.attr_type(), registry)
            .map(str::to_owned)
            .unwrap_or_else(|_| attr.attr_type().to_id_string());
        let value = match attr.as_str() {
            Ok(text) => escape_dn_value(text),
            Err(_) => format!("#{}", hex::encode(attr.attr_value().data)),
        };
        format!("{key}={value}")
    };
    let mut rdns: Vec<String> = name
        .iter()
        .map(|rdn| rdn.iter().map(attribute).collect::<Vec<_>>().join("+"))
        .collect();
    rdns.reverse();
    rdns.join(",")
}

/// Escapes a DN attribute value (RFC 4514 §2.4).
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (index, c) in value.chars().enumerate() {
        let leading = index == 0 && (c == ' ' || c == '#');
        let trailing = index + 1 == value.chars().count() && c == ' ';
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') || leading || trailing {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `YYYYMMDD` as `YYYY-MM-DD` (left as is when it is not eight digits).
fn iso_date(compact: &str) -> String {
    if compact.len() == 8 && compact.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}-{}-{}", &compact[..4], &compact[4..6], &compact[6..])
    } else {
        compact.to_owned()
    }
}

fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| time.to_string())
}

/// The PIN from `PIVTAP_PIN`, or asked for on the terminal without echo.
pub fn read_pin() -> anyhow::Result<Pin> {
    let text = match std::env::var("PIVTAP_PIN") {
        Ok(pin) => Zeroizing::new(pin),
        Err(_) => {
            if !std::io::stdin().is_terminal() {
                bail!("no PIN: set PIVTAP_PIN or run in a terminal to be asked for it");
            }
            Zeroizing::new(rpassword::prompt_password("Card PIN: ").context("cannot read the PIN")?)
        }
    };
    Ok(Pin::new(text.trim())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("Example, Inc"), "Example\\, Inc");
        assert_eq!(escape_dn_value(" #x "), "\\ #x\\ ");
        assert_eq!(escape_dn_value("plain"), "plain");
    }

    #[test]
    fn names_print_most_specific_first() {
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/certs/alice.pem"
        ))
        .unwrap();
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
            retries_left: Some(*retries_left),
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
        pem_encode("CERTIFICATE", &certificate).into_bytes()
    };
    if out.as_os_str() == "-" {
        std::io::stdout().write_all(&bytes)?;
    } else {
        std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

/// PEM armour (RFC 7468) with 64-character lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}
