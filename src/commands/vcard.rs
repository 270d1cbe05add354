//! `pivtap vcard`: create virtual PIV cards, provisioned through the same APDUs a real card gets.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use pivtap_apdu::piv::{Algorithm, Pin, Puk};
use pivtap_card::ManagementKey;
use pivtap_client::client::Client;
use pivtap_protocol::pin_policy::PinPolicy;
use pivtap_vcard::protection::KdfParams;
use pivtap_vcard::provision::{Provisioning, provision};
use pivtap_vcard::quirks::UnknownQuirk;
use pivtap_vcard::vpcd;
use pivtap_vcard::{
    CardOptions, Interface, NewCard, Quirk, Quirks, VirtualCard, VirtualCardBackend,
};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use super::auth::{OptionalServerArgs, explain, flow_error};
use super::card::{Secret, SecretReader};
use pivtap_client::enrollment::{
    CardSecrets, EnrollOptions, EnrollOutcome, EnrollStep, enroll_card,
};
use pivtap_server::issuance::profile::{self as issuer, CertificateAuthority, CertificateProfile};

/// `pivtap vcard ...`
#[derive(Subcommand, Debug)]
pub enum VcardCommand {
    /// Create a virtual card with a fresh key in slot 9A and a certificate
    /// for it, or (--blank) a card in factory state.
    ///
    /// The key is generated on the card (GENERATE ASYMMETRIC KEY PAIR after
    /// management-key authentication), the certificate is issued by the given
    /// CA and written with PUT DATA, and a CHUID and Discovery object are
    /// added: the card is provisioned exactly as a real one would be.
    /// With --blank the card is as new cards ship: no keys, no certificates,
    /// no CHUID, PIN 123456, PUK 12345678 and the default management key;
    /// `pivtap card enroll --vcard FILE` can then enroll it.
    New(Box<NewCardArgs>),
    /// Make a new protected virtual card and enroll it with an enrollment
    /// code from your administrator, as `pivtap card enroll` does a real card.
    ///
    /// You choose the PIN (asked twice on a terminal; else PIVTAP_NEW_PIN or
    /// one line of standard input), checked against the server's PIN policy
    /// before anything is made. The PUK is random and printed once; the
    /// management key is random and stays in the file. The card's private
    /// keys are sealed under its PIN and PUK (see the image format). FILE
    /// must not exist.
    Enroll(Box<EnrollVcardArgs>),
    /// Put the card in pcscd's virtual reader (vsmartcard vpcd), where every
    /// PC/SC program sees it as a real card.
    ///
    /// The card stays until Ctrl-C (or --tap runs out); every change a
    /// program makes (PIN counters, keys, certificates) is saved to FILE.
    /// Port 35963 is reader "Virtual PCD 00 00", 35964 is "Virtual PCD 00 01".
    Attach {
        /// The card image (made with `pivtap vcard new`).
        file: PathBuf,
        /// vpcd's port.
        #[arg(long, default_value_t = vpcd::DEFAULT_PORT)]
        port: u16,
        /// vpcd's host. vpcd listens on every interface: use virtual readers
        /// for tests and demos only.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// Refuse extended-length APDUs for this attachment, like many NFC readers.
        #[arg(long)]
        no_extended: bool,
        /// Present the card as contactless for this attachment (contactless
        /// ATR, SP 800-73-4 contactless restrictions).
        #[arg(long)]
        contactless: bool,
        /// Stay in the reader this many seconds, then leave, like a badge
        /// briefly held to a reader.
        #[arg(long, value_name = "SECONDS")]
        tap: Option<f64>,
    },
}

/// Options of `pivtap vcard new`.
#[derive(Args, Debug)]
pub struct NewCardArgs {
    /// Where to write the card image (TOML; it holds the card's secrets).
    file: PathBuf,
    /// A card in factory state: no keys, certificates or CHUID; PIN 123456,
    /// PUK 12345678, the default management key, three tries each.
    #[arg(long, conflicts_with_all = [
        "subject", "email", "upn", "alg", "pin", "puk", "retries", "management_key",
        "ca_cert", "ca_key", "valid_days", "not_before", "not_after",
    ])]
    blank: bool,
    /// Certificate subject, e.g. "CN=Alice Example,O=Example Corp,serialNumber=E1001".
    #[arg(long, required_unless_present = "blank")]
    subject: Option<String>,
    /// E-mail address for the certificate's subjectAltName.
    #[arg(long)]
    email: Option<String>,
    /// Microsoft UPN for the certificate's subjectAltName.
    #[arg(long)]
    upn: Option<String>,
    /// Key algorithm for slot 9A.
    #[arg(long, default_value = "rsa2048", value_parser = parse_key_algorithm)]
    alg: Algorithm,
    /// Card PIN (6-8 digits).
    #[arg(long, default_value = pivtap_card::factory::PIN)]
    pin: String,
    /// Card PUK (6-8 characters).
    #[arg(long, default_value = pivtap_card::factory::PUK)]
    puk: String,
    /// Tries before the PIN blocks (and before the PUK blocks).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=15))]
    retries: u8,
    /// Card management key as hex (3DES, 24 bytes); default: the well-known default key.
    #[arg(long, value_name = "HEX")]
    management_key: Option<String>,
    /// CA certificate (PEM) that issues the card certificate.
    #[arg(long, value_name = "PEM", required_unless_present = "blank")]
    ca_cert: Option<PathBuf>,
    /// CA private key (PKCS#8 PEM).
    #[arg(long, value_name = "PEM", required_unless_present = "blank")]
    ca_key: Option<PathBuf>,
    /// Certificate validity in days from now.
    #[arg(long, default_value_t = 365, conflicts_with_all = ["not_before", "not_after"])]
    valid_days: u32,
    /// Certificate start of validity (RFC 3339), with --not-after.
    #[arg(long, requires = "not_after", value_parser = parse_time)]
    not_before: Option<OffsetDateTime>,
    /// Certificate end of validity (RFC 3339), with --not-before.
    #[arg(long, requires = "not_before", value_parser = parse_time)]
    not_after: Option<OffsetDateTime>,
    /// Card serial number (default: random).
    #[arg(long)]
    serial: Option<u32>,
    /// Act as a contactless card (SP 800-73-4 contactless restrictions).
    #[arg(long)]
    contactless: bool,
    /// Refuse extended-length APDUs, like many NFC readers.
    #[arg(long)]
    no_extended: bool,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
    /// Protect the card: its private keys are sealed under a data key that
    /// only its PIN or PUK unwraps (Argon2id, AES-256-GCM), and the PIN and
    /// PUK are not stored.
    #[arg(long)]
    protect: bool,
    /// Make the card behave like a third-party PIV card, in these ways
    /// (comma-separated, or the option repeated; kept in the card image as
    /// `[card] quirks`): `strict-7c` refuses the management-key answer with
    /// an empty response request (`82 00`) with 6A80; `plain-6300` answers a
    /// wrong PIN or PUK with 6300, without the tries left; `keep-pin-on-reset`
    /// keeps a verified PIN across a card reset (until VERIFY P1=FF or the
    /// card leaves the reader). Example: --quirk strict-7c,plain-6300
    #[arg(long = "quirk", value_name = "QUIRKS", value_delimiter = ',', value_parser = parse_quirk)]
    quirks: Vec<Quirk>,
    /// A ready-made set of behaviours: `third-party` is every --quirk.
    #[arg(long, value_enum)]
    profile: Option<CardProfile>,
}

/// `pivtap vcard new --profile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CardProfile {
    /// A third-party PIV card: strict-7c, plain-6300 and keep-pin-on-reset.
    ThirdParty,
}

fn parse_quirk(text: &str) -> Result<Quirk, String> {
    text.parse()
        .map_err(|error: UnknownQuirk| error.to_string())
}

/// Options of `pivtap vcard enroll`.
#[derive(Args, Debug)]
pub struct EnrollVcardArgs {
    #[command(flatten)]
    server: OptionalServerArgs,
    /// The enrollment code, or the whole pivtap://enroll?server=...&code=... link
    /// (its server is used when --server is not given).
    #[arg(long, env = "PIVTAP_ENROLL_CODE", hide_env_values = true)]
    code: String,
    /// Where to write the new card image; must not exist.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// This device's id, for the server's audit log.
    #[arg(long, env = "PIVTAP_DEVICE")]
    device: Option<String>,
    /// Print JSON instead of text (it holds the PUK).
    #[arg(long)]
    json: bool,
}

fn parse_key_algorithm(text: &str) -> Result<Algorithm, String> {
    let algorithm: Algorithm = text
        .parse()
        .map_err(|e: pivtap_apdu::piv::UnknownName| e.to_string())?;
    match algorithm {
        Algorithm::Rsa2048 | Algorithm::EccP256 | Algorithm::EccP384 => Ok(algorithm),
        other => Err(format!(
            "{other} is not a card key algorithm; use rsa2048, p256 or p384"
        )),
    }
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2030-01-31T00:00:00Z"))
}

/// Runs a `vcard` subcommand.
pub fn run(command: VcardCommand) -> anyhow::Result<()> {
    match command {
        VcardCommand::Attach {
            file,
            port,
            host,
            no_extended,
            contactless,
            tap,
        } => attach(
            &file,
            SocketAddr::new(host, port),
            no_extended,
            contactless,
            tap,
        ),
        VcardCommand::Enroll(args) => enroll(&args),
        VcardCommand::New(new) => {
            let NewCardArgs {
                file,
                blank,
                subject,
                email,
                upn,
                alg,
                pin,
                puk,
                retries,
                management_key,
                ca_cert,
                ca_key,
                valid_days,
                not_before,
                not_after,
                serial,
                contactless,
                no_extended,
                force,
                protect,
                quirks,
                profile,
            } = *new;
            let quirks = match profile {
                Some(CardProfile::ThirdParty) => Quirks::third_party(),
                None => Quirks::NONE,
            }
            .union(quirks.into_iter().collect());
            let kdf = protect.then_some(KdfParams::RECOMMENDED);
            if file.exists() && !force {
                bail!("{} exists; use --force to overwrite it", file.display());
            }
            let options = CardOptions {
                extended_length: !no_extended,
                interface: if contactless {
                    Interface::Contactless
                } else {
                    Interface::Contact
                },
            };
            if blank {
                let mut new_card = NewCard::factory(options);
                if let Some(serial) = serial {
                    new_card.serial = serial;
                }
                let serial = new_card.serial;
                save(
                    pivtap_vcard::provision::blank(new_card, kdf, quirks)?,
                    &file,
                )?;
                println!(
                    "Created blank {}virtual card {} (serial {serial}): no keys, no certificates; \
                     PIN {}, PUK {}, default management key.{}",
                    if protect { "protected " } else { "" },
                    file.display(),
                    pivtap_card::factory::PIN,
                    pivtap_card::factory::PUK,
                    quirks_note(quirks)
                );
                return Ok(());
            }
            let (Some(subject), Some(ca_cert), Some(ca_key)) = (subject, ca_cert, ca_key) else {
                bail!("--subject, --ca-cert and --ca-key are needed unless --blank is given");
            };
            let now = OffsetDateTime::now_utc();
            let (not_before, not_after) = match (not_before, not_after) {
                (Some(start), Some(end)) => (start, end),
                _ => (now, now + time::Duration::days(i64::from(valid_days))),
            };
            let management_key = match management_key {
                Some(hex) => ManagementKey::from_hex(Algorithm::TripleDes, &hex)?,
                None => ManagementKey::default_key(),
            };
            let new_card = NewCard {
                pin: Pin::new(&pin).context("--pin")?,
                puk: Puk::new(&puk).context("--puk")?,
                retries,
                management_key: management_key.clone(),
                serial: serial.unwrap_or_else(rand_serial),
                label: Some(subject.clone()),
                options,
            };
            let ca = CertificateAuthority::from_files(&ca_cert, &ca_key)?;
            let profile = CertificateProfile {
                subject,
                email,
                upn,
                not_before,
                not_after,
            };
            let chuid = pivtap_client::enrollment::new_chuid(profile.not_after)?;
            let how = Provisioning {
                management_key: &management_key,
                algorithm: alg,
                protection: kdf,
                quirks,
                chuid: &chuid,
            };
            let card = provision(new_card, &how, |spki| issuer::issue(&ca, spki, &profile))?;
            save(card, &file)?;
            println!(
                "Created virtual card {} (slot 9a: {alg}).{}",
                file.display(),
                quirks_note(quirks)
            );
            Ok(())
        }
    }
}

fn attach(
    file: &Path,
    address: SocketAddr,
    no_extended: bool,
    contactless: bool,
    tap: Option<f64>,
) -> anyhow::Result<()> {
    let tap = tap
        .map(|seconds| {
            Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| anyhow::anyhow!("--tap takes a positive number of seconds"))
        })
        .transpose()?;
    let mut card = super::open_virtual_card(file)?;
    let mut options = card.options();
    options.extended_length &= !no_extended;
    if contactless {
        options.interface = Interface::Contactless;
    }
    card.present_as(options);
    let backend = VirtualCardBackend::new(card, file.display().to_string());
    let (attachment, detacher) = vpcd::Attachment::connect(address)?;
    let detacher = Arc::new(detacher);
    let on_signal = Arc::clone(&detacher);
    ctrlc::set_handler(move || on_signal.detach()).context("cannot install the Ctrl-C handler")?;
    if let Some(duration) = tap {
        let on_timer = Arc::clone(&detacher);
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            on_timer.detach();
        });
    }
    let reader = address
        .port()
        .checked_sub(vpcd::DEFAULT_PORT)
        .map(|index| format!("reader \"Virtual PCD 00 {index:02}\""))
        .unwrap_or_else(|| "the vpcd reader".to_owned());
    let interface = match options.interface {
        Interface::Contact => "contact",
        Interface::Contactless => "contactless",
    };
    let length = if options.extended_length {
        "extended length"
    } else {
        "short APDUs only"
    };
    match tap {
        Some(duration) => println!(
            "Card {} is in {reader} ({address}; {interface}, {length}) for {:.1} s.",
            file.display(),
            duration.as_secs_f64()
        ),
        None => println!(
            "Card {} is in {reader} ({address}; {interface}, {length}). Ctrl-C removes it.",
            file.display()
        ),
    }
    let summary = attachment.serve(&backend)?;
    if summary.detached {
        println!(
            "Card removed after {} APDUs; its state is saved in {}.",
            summary.apdus,
            file.display()
        );
        Ok(())
    } else {
        bail!(
            "vpcd closed the connection after {} APDUs (pcscd stopped?); the card's state is saved in {}",
            summary.apdus,
            file.display()
        )
    }
}

fn rand_serial() -> u32 {
    // Eight decimal digits, like printed card serials.
    10_000_000 + rand::random_range(0..90_000_000)
}

/// A card with no keys: protected with `kdf`, or not.
/// " Behaves as a third-party card: ..." for a card with quirks, else nothing.
fn quirks_note(quirks: Quirks) -> String {
    if quirks.is_empty() {
        String::new()
    } else {
        format!(" Behaves as a third-party card: {quirks}.")
    }
}

/// Writes `card` to `file` (its error names the file: no context is added, which would say it twice).
fn save(mut card: VirtualCard, file: &Path) -> anyhow::Result<()> {
    Ok(card.save_as(file)?)
}

/// A current-thread runtime for the server requests of one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The PUK of a new enrolled card: eight random digits the PUK policy accepts.
fn random_puk() -> anyhow::Result<Puk> {
    let digits = PinPolicy::puk()
        .random(8)
        .context("no random PUK met the PUK policy")?;
    Ok(Puk::new(&digits)?)
}

/// `pivtap vcard enroll`
fn enroll(args: &EnrollVcardArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        bail!("{} exists; choose another --out file", args.out.display());
    }
    let (client, code) = args.server.enrollment_client(&args.code)?;
    let runtime = runtime()?;
    let policy = runtime
        .block_on(client.pin_policy())
        .map_err(explain)
        .context("cannot fetch the server's PIN policy")?;
    let pin = SecretReader::new().read(Secret::NewPin)?;
    policy
        .check(&pin)
        .map_err(|rule| anyhow::anyhow!("the PIN is refused: {rule}; no card was made"))?;
    let pin = Pin::new(&pin).context("the PIN")?;
    let request = NewEnrollment {
        code: &code,
        pin,
        device: args.device.clone(),
        out: &args.out,
        kdf: KdfParams::RECOMMENDED,
    };
    let enrolled = runtime.block_on(enroll_new_card(&client, request, &mut |step| {
        eprintln!("{step}...");
    }))?;
    print_enrolled(&enrolled, &args.out, args.json)
}

/// What [`enroll_new_card`] needs.
struct NewEnrollment<'a> {
    /// The enrollment code.
    code: &'a str,
    /// The PIN the worker chose (already checked against the policy).
    pin: Pin,
    /// This device's id, for the audit log.
    device: Option<String>,
    /// The new image file; must not exist.
    out: &'a Path,
    /// Argon2id parameters of the card's protection.
    kdf: KdfParams,
}

/// A new enrolled card: what the server said, and the PUK to show once.
struct Enrolled {
    outcome: EnrollOutcome,
    puk: Puk,
}

/// Makes a protected card with `request.pin`, a random PUK and a random
/// AES-192 management key, writes it to `request.out` (which must not
/// exist), and enrolls it. A failure before the server issued the
/// certificate removes the file again; after that the file stays (the code is used up).
async fn enroll_new_card(
    client: &Client,
    request: NewEnrollment<'_>,
    progress: &mut dyn FnMut(EnrollStep),
) -> anyhow::Result<Enrolled> {
    let NewEnrollment {
        code,
        pin,
        device,
        out,
        kdf,
    } = request;
    let puk = random_puk()?;
    let mut key = Zeroizing::new([0u8; 24]);
    rand::fill(key.as_mut_slice());
    let management_key = ManagementKey::new(Algorithm::Aes192, key.as_slice())?;
    let new_card = NewCard {
        pin: pin.clone(),
        puk: puk.clone(),
        management_key: management_key.clone(),
        ..NewCard::factory(CardOptions::default())
    };
    let mut card = VirtualCard::blank_protected(new_card, kdf)?;
    claim_new_file(out)?;
    if let Err(error) = card.save_as(out) {
        remove_claimed(out);
        return Err(error).with_context(|| format!("cannot write {}", out.display()));
    }
    let mut backend = VirtualCardBackend::new(card, out.display().to_string());
    let options = EnrollOptions {
        secrets: CardSecrets {
            pin,
            management_key,
        },
        device,
    };
    let mut last = None;
    let result = enroll_card(&mut backend, client, code, &options, &mut |step| {
        last = Some(step);
        progress(step);
    })
    .await;
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => {
            let issued = matches!(
                last,
                Some(EnrollStep::StoringCertificate | EnrollStep::WritingChuid)
            );
            let error = flow_error(error);
            if issued {
                return Err(error.context(format!(
                    "the certificate was issued but the card in {} is not complete; \
                     ask your administrator for a new enrollment code",
                    out.display()
                )));
            }
            drop(backend);
            remove_claimed(out);
            return Err(error.context("no card was made"));
        }
    };
    let Ok(mut card) = backend.into_card() else {
        bail!("the new card is still in use");
    };
    card.reset();
    card.set_label(Some(outcome.user.display_name.clone()));
    card.save_as(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(Enrolled { outcome, puk })
}

/// Creates `path` empty and private, failing if it exists: no card is
/// written over another file, even one that appears meanwhile.
fn claim_new_file(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} exists; choose another --out file", path.display())
        }
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Removes the file this command created, when enrollment failed.
fn remove_claimed(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), %error, "cannot remove the unfinished card image");
    }
}

#[derive(Serialize)]
struct EnrolledJson<'a> {
    file: String,
    puk: &'a str,
    #[serde(flatten)]
    outcome: &'a EnrollOutcome,
}

fn print_enrolled(enrolled: &Enrolled, out: &Path, json: bool) -> anyhow::Result<()> {
    let puk = String::from_utf8_lossy(enrolled.puk.as_bytes());
    let outcome = &enrolled.outcome;
    if json {
        let document = EnrolledJson {
            file: out.display().to_string(),
            puk: &puk,
            outcome,
        };
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!(
        "Enrolled a new virtual card for {} ({}): {}",
        outcome.user.display_name,
        outcome.user.id,
        out.display()
    );
    println!(
        "Certificate:  serial {}, valid until {}",
        outcome.serial, outcome.not_after
    );
    println!(
        "Key:          {} in slot 9a, sealed under the PIN",
        outcome.algorithm
    );
    if let Some(serial) = outcome.card_serial {
        println!("Card serial:  {serial}");
    }
    println!("PUK:          {puk}");
    println!(
        "Write the PUK down now: it is shown only this once, and it unblocks the PIN \
         (pivtap card unblock-pin --vcard {}).",
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use pivtap_testkit::server::{active_user, with_users};
    use pivtap_vcard::image::CardImage;

    use super::*;
    use pivtap_apdu::piv::{KeyReference, ObjectTag};
    use pivtap_card::PivSession;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: VcardCommand,
    }

    fn parse(args: &[&str]) -> Result<VcardCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("vcard").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn blank_needs_no_ca_and_refuses_provisioning_options() {
        assert!(parse(&["new", "card.toml", "--blank"]).is_ok());
        assert!(parse(&["new", "card.toml", "--blank", "--serial", "12345678"]).is_ok());
        assert!(parse(&["new", "card.toml"]).is_err());
        for extra in [
            ["--subject", "CN=A"],
            ["--pin", "918273"],
            ["--ca-cert", "ca.pem"],
            ["--alg", "p256"],
        ] {
            let mut args = vec!["new", "card.toml", "--blank"];
            args.extend(extra);
            assert!(parse(&args).is_err(), "{extra:?}");
        }
    }

    #[test]
    fn blank_card_is_written_in_factory_state() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("blank.toml");
        let path = file.to_str().unwrap();
        let command = parse(&["new", path, "--blank", "--serial", "20261123"]).unwrap();
        run(command).unwrap();
        let image = CardImage::load(&file).unwrap();
        assert_eq!(image.card.serial, 20_261_123);
        assert!(image.keys.is_empty() && image.objects.is_empty());
        assert_eq!(image.pin.value.as_bytes(), b"123456");
        assert_eq!(image.puk.value.as_bytes(), b"12345678");
        assert!(image.management_key.ct_eq(&ManagementKey::default_key()));
        // An existing file is kept unless --force.
        let again = parse(&["new", path, "--blank"]).unwrap();
        assert!(run(again).unwrap_err().to_string().contains("exists"));
        assert_eq!(CardImage::load(&file).unwrap(), image);
    }

    /// An embedded server with the user `dana`, a client, and one enrollment code for her.
    async fn server_with_code(
        dir: &Path,
    ) -> (
        pivtap_server::server::embedded::EmbeddedServer,
        Client,
        String,
    ) {
        let server = with_users(
            dir,
            &[active_user("dana", "Dana Example", "dana@example.com")],
        )
        .await;
        let client = server.client(Duration::from_secs(30)).unwrap();
        let port = server.origin.rsplit(':').next().unwrap();
        let token = std::fs::read_to_string(dir.join(format!("server-{port}")).join("admin.token"))
            .unwrap();
        let code = client
            .admin(token.trim())
            .create_enrollment("dana", Duration::from_secs(600))
            .await
            .unwrap()
            .code;
        (server, client, code)
    }

    fn request<'a>(code: &'a str, out: &'a Path) -> NewEnrollment<'a> {
        NewEnrollment {
            code,
            pin: Pin::new("240913").unwrap(),
            device: None,
            out,
            kdf: KdfParams::new(8, 1, 1).unwrap(),
        }
    }

    #[tokio::test]
    async fn enroll_makes_a_protected_card_that_signs_for_its_certificate() {
        use p256::ecdsa::signature::Verifier as _;
        use p256::pkcs8::DecodePublicKey as _;
        use pivtap_protocol::wire::KeyAlgorithm;
        use x509_parser::prelude::{FromDer as _, X509Certificate};

        let dir = tempfile::tempdir().unwrap();
        let (_server, client, code) = server_with_code(dir.path()).await;
        let out = dir.path().join("dana.toml");
        let mut steps = Vec::new();
        let enrolled = enroll_new_card(&client, request(&code, &out), &mut |step| steps.push(step))
            .await
            .unwrap();
        assert_eq!(enrolled.outcome.user.id, "dana");
        assert_eq!(enrolled.outcome.algorithm, KeyAlgorithm::P256);
        assert!(steps.contains(&EnrollStep::StoringCertificate), "{steps:?}");
        let puk = String::from_utf8(enrolled.puk.as_bytes().to_vec()).unwrap();
        assert!(puk.len() == 8 && puk.bytes().all(|b| b.is_ascii_digit()));

        let text = std::fs::read_to_string(&out).unwrap();
        for secret in ["240913", puk.as_str(), "BEGIN PRIVATE KEY"] {
            assert!(!text.contains(secret), "{secret} in the image");
        }
        let image = CardImage::load(&out).unwrap();
        assert!(image.is_protected());
        assert_eq!(image.card.label.as_deref(), Some("Dana Example"));
        assert_eq!(image.keys.len(), 1);
        assert!(image.keys[0].sealed_key().is_some());
        assert!(!image.management_key.ct_eq(&ManagementKey::default_key()));
        for object in [ObjectTag::Chuid, ObjectTag::from_tag(0x5FC105)] {
            assert!(image.objects.iter().any(|o| o.tag == object), "{object:?}");
        }

        // The sealed key opens with the PIN and signs for the issued certificate.
        let mut backend = VirtualCardBackend::new(VirtualCard::open(&out).unwrap(), "dana");
        let mut session = PivSession::open(&mut backend).unwrap();
        let certificate = session
            .certificate(KeyReference::PivAuthentication)
            .unwrap();
        let (_, parsed) = X509Certificate::from_der(&certificate).unwrap();
        let verifier = p256::ecdsa::VerifyingKey::from(
            p256::PublicKey::from_public_key_der(parsed.public_key().raw).unwrap(),
        );
        let sign = |session: &mut PivSession<'_>| {
            session
                .sign(
                    KeyReference::PivAuthentication,
                    Algorithm::EccP256,
                    pivtap_card::JwsAlgorithm::Es256,
                    b"sign-in",
                )
                .unwrap()
        };
        session.verify_pin(&Pin::new("240913").unwrap()).unwrap();
        let signature = p256::ecdsa::Signature::from_slice(&sign(&mut session)).unwrap();
        verifier.verify(b"sign-in", &signature).unwrap();
        // The PUK printed once unblocks the card and the key still opens.
        session
            .unblock_pin(&enrolled.puk, &Pin::new("135790").unwrap())
            .unwrap();
        session.verify_pin(&Pin::new("135790").unwrap()).unwrap();
        let signature = p256::ecdsa::Signature::from_slice(&sign(&mut session)).unwrap();
        verifier.verify(b"sign-in", &signature).unwrap();
    }

    #[tokio::test]
    async fn enroll_leaves_no_file_on_refusal_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, client, code) = server_with_code(dir.path()).await;
        let out = dir.path().join("first.toml");
        enroll_new_card(&client, request(&code, &out), &mut |_| {})
            .await
            .unwrap();
        let before = std::fs::read(&out).unwrap();

        let again = dir.path().join("second.toml");
        let error = enroll_new_card(&client, request(&code, &again), &mut |_| {})
            .await
            .err()
            .expect("a used code is refused");
        assert!(
            format!("{error:#}").contains("no card was made"),
            "{error:#}"
        );
        assert!(!again.exists(), "a refused enrollment leaves no file");

        let error = enroll_new_card(&client, request("unknown-code", &out), &mut |_| {})
            .await
            .err()
            .expect("an existing file is refused");
        assert!(error.to_string().contains("exists"), "{error:#}");
        assert_eq!(std::fs::read(&out).unwrap(), before);
    }

    #[test]
    fn protect_makes_a_protected_blank_card() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("protected.toml");
        let command = parse(&["new", file.to_str().unwrap(), "--blank", "--protect"]).unwrap();
        run(command).unwrap();
        let image = CardImage::load(&file).unwrap();
        assert!(image.is_protected());
        assert!(image.keys.is_empty());
    }

    #[test]
    fn random_puks_are_eight_digits_the_policy_accepts() {
        let puks: Vec<_> = (0..20).map(|_| random_puk().unwrap()).collect();
        for puk in &puks {
            let text = std::str::from_utf8(puk.as_bytes()).unwrap();
            assert_eq!(text.len(), 8);
            PinPolicy::puk().check(text).unwrap();
        }
        assert!(puks.windows(2).any(|pair| pair[0] != pair[1]));
    }
}
