//! Card transports, the virtual PIV card and the PIV session API.
#![forbid(unsafe_code)]
