//! The virtual PIV card: a full card in software that answers real APDUs.

pub mod image;
pub mod keys;
