//! `pivtap vcard`: create virtual PIV cards, provisioned through the same APDUs a real card gets.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use pivtap_apdu::piv::objects::chuid::Chuid;
use pivtap_apdu::piv::objects::discovery::{Discovery, POLICY_APPLICATION_PIN};
use pivtap_apdu::piv::objects::fascn::Fascn;
use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, PIV_AID, Pin, Puk};
use pivtap_card::virtual_card::{CardOptions, Interface, NewCard, VirtualCard, VirtualCardBackend};
use pivtap_card::{ManagementKey, PivSession, spki, vpcd};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::issuer::{self, CertificateAuthority, CertificateProfile};

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
    #[arg(long, default_value = "123456")]
    pin: String,
    /// Card PUK (6-8 characters).
    #[arg(long, default_value = "12345678")]
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
            } = *new;
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
                save(VirtualCard::blank(new_card), &file)?;
                println!(
                    "Created blank virtual card {} (serial {serial}): no keys, no certificates; \
                     PIN 123456, PUK 12345678, default management key.",
                    file.display()
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
            let card = provision(new_card, &management_key, alg, &ca, &profile)?;
            save(card, &file)?;
            println!("Created virtual card {} (slot 9a: {alg}).", file.display());
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
    let mut card = VirtualCard::open(file)
        .with_context(|| format!("cannot open virtual card {}", file.display()))?;
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

/// The FASC-N of cards outside the US federal PIV system (PIV-I style:
/// agency, system and credential all nines); the CHUID GUID identifies the card.
const NON_FEDERAL_FASCN: &str = "99999999999999010000000000300001";

/// Builds the card and provisions it over APDUs, as an issuer would a real card.
fn provision(
    new_card: NewCard,
    management_key: &ManagementKey,
    algorithm: Algorithm,
    ca: &CertificateAuthority,
    profile: &CertificateProfile,
) -> anyhow::Result<VirtualCard> {
    // Provisioning needs the contact interface; the card's own options are
    // restored afterwards.
    let options = new_card.options;
    let card = VirtualCard::blank(NewCard {
        options: CardOptions {
            interface: Interface::Contact,
            ..options
        },
        ..new_card
    });
    let mut backend = VirtualCardBackend::new(card, "new virtual card");
    {
        let mut session = PivSession::open(&mut backend)?;
        session
            .authenticate_management_key(management_key)
            .context("management key authentication")?;
        let public_key = session
            .generate_key(KeyReference::PivAuthentication, algorithm)
            .context("key generation in slot 9a")?;
        let spki = spki::subject_public_key_info(&public_key)?;
        let certificate = issuer::issue(ca, &spki, profile)?;
        session.put_certificate(KeyReference::PivAuthentication, &certificate)?;
        let mut guid = [0u8; 16];
        rand::fill(&mut guid);
        let chuid = Chuid {
            fascn_raw: NON_FEDERAL_FASCN.parse::<Fascn>()?.encode(),
            guid,
            expiration: expiration_date(profile.not_after),
            ..Chuid::default()
        };
        session.put_object(ObjectTag::Chuid, &chuid.encode())?;
        session.put_discovery(&Discovery {
            aid: PIV_AID.to_vec(),
            pin_usage_policy: [POLICY_APPLICATION_PIN, 0x00],
        })?;
    }
    let Ok(mut card) = backend.into_card() else {
        bail!("the new card is still in use");
    };
    card.set_options(options);
    card.reset();
    Ok(card)
}

/// The CHUID expiration date (YYYYMMDD): the certificate's end of validity.
fn expiration_date(not_after: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}",
        not_after.year(),
        u8::from(not_after.month()),
        not_after.day()
    )
}

fn save(mut card: VirtualCard, file: &Path) -> anyhow::Result<()> {
    card.save_as(file)
        .with_context(|| format!("cannot write the card image {}", file.display()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use pivtap_card::virtual_card::image::CardImage;

    use super::*;

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
}
