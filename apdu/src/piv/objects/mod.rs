//! Parsers and builders for the PIV data objects a host and a card exchange.

pub mod auth_template;
pub mod public_key;
