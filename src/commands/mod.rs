//! The CLI's subcommands, one module per noun.

pub mod admin;
pub mod auth;
pub mod bench;
pub mod card;
pub mod demo;
pub mod kiosk;
pub mod server;
pub mod vcard;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use pivtap_card::CardBackend;
use pivtap_card::pcsc::{PcscCard, PcscContext, ReaderInfo};
use pivtap_card::virtual_card::{VirtualCard, VirtualCardBackend};

/// Which card a command talks to.
#[derive(Args, Debug, Clone)]
pub struct CardArgs {
    /// A virtual card image (made with `pivtap vcard new`); changes the card
    /// makes (PIN counters, keys, objects) are saved back to it.
    #[arg(long, value_name = "FILE", conflicts_with = "reader")]
    pub vcard: Option<PathBuf>,
    /// A PC/SC reader: its name or part of it, any case (see `pivtap card
    /// list`). Without --vcard and --reader: the one reader holding a card.
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,
}

impl CardArgs {
    /// Opens the card as a backend.
    pub fn open(&self) -> anyhow::Result<Box<dyn CardBackend>> {
        if let Some(path) = &self.vcard {
            let card = VirtualCard::open(path)
                .with_context(|| format!("cannot open virtual card {}", path.display()))?;
            return Ok(Box::new(VirtualCardBackend::new(
                card,
                format!("virtual card {}", path.display()),
            )));
        }
        let context = PcscContext::establish()?;
        let readers = context.list_readers()?;
        let reader = choose_reader(&readers, self.reader.as_deref())?;
        Ok(Box::new(PcscCard::connect(&context, &reader.name)?))
    }
}

/// Picks the reader a command means: by name (exact, else a unique
/// case-insensitive part of it), or the only reader holding a card.
fn choose_reader<'a>(
    readers: &'a [ReaderInfo],
    wanted: Option<&str>,
) -> anyhow::Result<&'a ReaderInfo> {
    let names = || {
        readers
            .iter()
            .map(|r| format!("\"{}\"", r.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if readers.is_empty() {
        bail!("no smart card reader is connected (or pcscd does not see it)");
    }
    match wanted {
        Some(wanted) => {
            if let Some(exact) = readers.iter().find(|r| r.name == wanted) {
                return Ok(exact);
            }
            let lower = wanted.to_lowercase();
            let matching: Vec<&ReaderInfo> = readers
                .iter()
                .filter(|r| r.name.to_lowercase().contains(&lower))
                .collect();
            match matching.as_slice() {
                [one] => Ok(one),
                [] => bail!("no reader matches \"{wanted}\"; readers: {}", names()),
                several => bail!(
                    "\"{wanted}\" matches several readers: {}; give more of the name",
                    several
                        .iter()
                        .map(|r| format!("\"{}\"", r.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        None => {
            let with_card: Vec<&ReaderInfo> = readers.iter().filter(|r| r.card_present).collect();
            match with_card.as_slice() {
                [one] => Ok(one),
                [] => bail!(
                    "no card in any reader ({}); insert or tap a card, or use --vcard FILE",
                    names()
                ),
                several => bail!(
                    "cards are in several readers ({}); choose one with --reader",
                    several
                        .iter()
                        .map(|r| format!("\"{}\"", r.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(name: &str, card_present: bool) -> ReaderInfo {
        ReaderInfo {
            name: name.to_owned(),
            card_present,
            atr: None,
            contactless: false,
        }
    }

    #[test]
    fn readers_are_chosen_by_name_or_by_the_card_in_them() {
        let readers = [
            reader("Virtual PCD 00 00", false),
            reader("Virtual PCD 00 01", true),
            reader("ACS ACR122U PICC", false),
        ];
        assert_eq!(
            choose_reader(&readers, None).unwrap().name,
            "Virtual PCD 00 01"
        );
        assert_eq!(
            choose_reader(&readers, Some("acr122")).unwrap().name,
            "ACS ACR122U PICC"
        );
        assert_eq!(
            choose_reader(&readers, Some("Virtual PCD 00 00"))
                .unwrap()
                .name,
            "Virtual PCD 00 00"
        );
        let several = choose_reader(&readers, Some("virtual"))
            .unwrap_err()
            .to_string();
        assert!(several.contains("several"), "{several}");
        let none = choose_reader(&readers, Some("omnikey"))
            .unwrap_err()
            .to_string();
        assert!(
            none.contains("no reader matches") && none.contains("ACR122U"),
            "{none}"
        );
        let empty = [reader("Virtual PCD 00 00", false)];
        assert!(
            choose_reader(&empty, None)
                .unwrap_err()
                .to_string()
                .contains("no card in any reader")
        );
        let two_cards = [reader("A", true), reader("B", true)];
        assert!(
            choose_reader(&two_cards, None)
                .unwrap_err()
                .to_string()
                .contains("--reader")
        );
        assert!(
            choose_reader(&[], None)
                .unwrap_err()
                .to_string()
                .contains("no smart card reader")
        );
    }
}
