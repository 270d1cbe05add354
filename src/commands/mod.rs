//! The CLI's subcommands, one module per noun.

pub mod card;
pub mod vcard;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pivtap_card::virtual_card::{VirtualCard, VirtualCardBackend};

/// Which card a command talks to.
#[derive(Args, Debug, Clone)]
pub struct CardArgs {
    /// A virtual card image (made with `pivtap vcard new`); changes the card
    /// makes (PIN counters, keys, objects) are saved back to it.
    #[arg(long, value_name = "FILE")]
    pub vcard: PathBuf,
}

impl CardArgs {
    /// Opens the card as a backend.
    pub fn open(&self) -> anyhow::Result<VirtualCardBackend> {
        let card = VirtualCard::open(&self.vcard)
            .with_context(|| format!("cannot open virtual card {}", self.vcard.display()))?;
        Ok(VirtualCardBackend::new(
            card,
            format!("virtual card {}", self.vcard.display()),
        ))
    }
}
