//! The pivtap command-line interface.
#![forbid(unsafe_code)]
fn main() {}
