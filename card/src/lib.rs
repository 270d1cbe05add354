//! Card transports, the virtual PIV card, and the typed PIV session API.
//!
//! Everything here is synchronous: PC/SC is blocking, and so is the card.
//! Async callers run it on a card thread or with `spawn_blocking`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod exchange;
pub mod management_key;
pub mod trace;
pub mod transport;
pub mod virtual_card;
