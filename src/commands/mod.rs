//! The CLI's subcommands, one module per noun.

pub mod admin;
pub mod auth;
pub mod bench;
pub mod card;
pub mod demo;
pub mod kiosk;
pub mod populate;
pub mod server;
pub mod vcard;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use pivtap_card::CardBackend;
use pivtap_card::pcsc::{PcscCard, PcscContext, ReaderInfo};
use pivtap_card::reader_choice::{ReaderChoice, ReaderChoiceError, choose_reader};
use pivtap_vcard::{VirtualCard, VirtualCardBackend};

/// Which card a command talks to.
#[derive(Args, Debug, Clone)]
pub struct CardArgs {
    /// A virtual card image (made with `pivtap vcard new`); changes the card
    /// makes (PIN counters, keys, objects) are saved back to it.
    #[arg(long, value_name = "FILE", conflicts_with = "reader")]
    pub vcard: Option<PathBuf>,
    /// A PC/SC reader: its name or part of it, any case (see `pivtap card
    /// list`). Without --vcard and --reader: the one reader holding a card;
    /// with cards in several, you are asked which (without a terminal: refused).
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,
}

impl CardArgs {
    /// Opens the card as a backend.
    pub fn open(&self) -> anyhow::Result<Box<dyn CardBackend>> {
        if let Some(path) = &self.vcard {
            let card = open_virtual_card(path)?;
            return Ok(Box::new(VirtualCardBackend::new(
                card,
                format!("virtual card {}", path.display()),
            )));
        }
        let context = PcscContext::establish()?;
        let reader = pcsc_reader(&context, self.reader.as_deref())?;
        Ok(Box::new(PcscCard::connect(&context, &reader)?))
    }
}

/// Opens the virtual card image at `path`; the error names the file once.
pub fn open_virtual_card(path: &Path) -> anyhow::Result<VirtualCard> {
    VirtualCard::open(path).map_err(|error| naming_card_image(error.into(), path))
}

/// `error`, saying it concerns the virtual card image `path` unless it names the file
/// already (reading and parsing errors do; a bad key or version does not).
pub fn naming_card_image(error: anyhow::Error, path: &Path) -> anyhow::Error {
    if crate::cli_output::error_report(&error).contains(&path.display().to_string()) {
        error
    } else {
        error.context(format!("cannot open virtual card {}", path.display()))
    }
}

/// The name of the PC/SC reader a command means: `wanted` (see
/// [`choose_reader`]), else the one reader holding a card, else the one the
/// person picks ([`ask_which_reader`]).
pub fn pcsc_reader(context: &PcscContext, wanted: Option<&str>) -> anyhow::Result<String> {
    let readers = context.list_readers()?;
    let reader = match choose_reader(&readers, wanted) {
        Ok(ReaderChoice::Chosen(reader)) => reader,
        Ok(ReaderChoice::CardsInSeveral(holding)) => ask_which_reader(&holding)?,
        Err(error @ ReaderChoiceError::NoCard { .. }) => bail!("{error}, or use --vcard FILE"),
        Err(error) => return Err(error.into()),
    };
    Ok(reader.name.clone())
}

/// With cards in several readers, one may be someone else's: on a terminal the person says
/// which (by number or part of the name); without one the command is refused with the
/// `--reader` flags to choose with.
fn ask_which_reader<'a>(holding: &[&'a ReaderInfo]) -> anyhow::Result<&'a ReaderInfo> {
    let listed = holding
        .iter()
        .enumerate()
        .map(|(index, reader)| format!("  {}) {}\n", index + 1, reader.name))
        .collect::<String>();
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        let flags = holding
            .iter()
            .map(|reader| format!("  --reader {:?}\n", reader.name))
            .collect::<String>();
        bail!(
            "cards are in {} readers; say which with one of:\n{}",
            holding.len(),
            flags.trim_end()
        );
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "Cards are in {} readers:\n{listed}", holding.len())?;
    let mut answer = String::new();
    for _ in 0..3 {
        write!(stderr, "Which reader [1-{}]? ", holding.len())?;
        stderr.flush()?;
        answer.clear();
        if std::io::stdin().lock().read_line(&mut answer)? == 0 || answer.trim().is_empty() {
            bail!("no reader chosen; nothing was done");
        }
        match reader_of_answer(holding, &answer) {
            Some(reader) => return Ok(reader),
            None => writeln!(
                stderr,
                "{:?} is not one of them: type its number or part of its name",
                answer.trim()
            )?,
        }
    }
    bail!("no reader chosen; nothing was done")
}

/// The reader an answer to [`ask_which_reader`] names: its number in the list (from 1), or a
/// part of exactly one listed reader's name.
fn reader_of_answer<'a>(holding: &[&'a ReaderInfo], answer: &str) -> Option<&'a ReaderInfo> {
    let answer = answer.trim();
    if let Ok(number) = answer.parse::<usize>() {
        return number
            .checked_sub(1)
            .and_then(|index| holding.get(index))
            .copied();
    }
    let lower = answer.to_lowercase();
    match holding
        .iter()
        .filter(|reader| reader.name.to_lowercase().contains(&lower))
        .collect::<Vec<_>>()
        .as_slice()
    {
        [one] => Some(**one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(name: &str) -> ReaderInfo {
        ReaderInfo {
            name: name.to_owned(),
            card_present: true,
            atr: None,
            contactless: false,
        }
    }

    #[test]
    fn an_answer_names_a_listed_reader_by_number_or_name() {
        let (a, b) = (reader("Virtual PCD 00 00"), reader("ACS ACR122U PICC"));
        let holding = [&a, &b];
        let name = |answer: &str| reader_of_answer(&holding, answer).map(|r| r.name.as_str());
        assert_eq!(name("1\n"), Some("Virtual PCD 00 00"));
        assert_eq!(name(" 2 "), Some("ACS ACR122U PICC"));
        assert_eq!(name("acr"), Some("ACS ACR122U PICC"));
        for wrong in ["0", "3", "omnikey", "c"] {
            assert_eq!(name(wrong), None, "{wrong}");
        }
    }
}
