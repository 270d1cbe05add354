//! pivtap's kiosk: the app on the shared device that waits for badges, takes PINs, and signs field workers in and out.
//!
//! [`core`] is the pure state machine (events in, effects out, no I/O); the
//! runtime, the terminal UI, the headless mode and the local session API are
//! built on it, and [`builder::KioskBuilder`] is the one way to start a kiosk
//! (`pivtap kiosk`, `pivtap demo`, `pivtap bench tap` through [`tap_bench`], the
//! tests).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin_exit;
pub mod builder;
pub mod card_worker;
pub mod config;
pub mod core;
pub mod headless;
pub mod local_api;
pub mod pending_sign_outs;
pub mod readers;
pub mod runtime;
pub mod tap_bench;
pub mod terminal;
pub mod tui;
