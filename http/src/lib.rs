//! Connection hygiene for pivtap's HTTP listeners (caps per source and in all, header, first-request and idle time-outs, rate-limited warnings) and a plain-HTTP [`serve`] built on it.
//!
//! A slowloris client opens many connections and sends each request a byte at
//! a time, or never finishes its headers, until the process runs out of file
//! descriptors. Four things bound what it can hold:
//!
//! - [`ConnectionLimits::tls_handshake_timeout`]: a TLS handshake not done in
//!   time drops the connection (applied by the TLS acceptor the server stacks
//!   on a [`ConnectionGate`]; [`serve`] speaks plain HTTP and has none);
//! - [`ConnectionLimits::header_read_timeout`]: a request whose headers are not
//!   all in within this time ends the connection. The first request of a
//!   connection is bounded whatever the protocol (HTTP/1.1 or HTTP/2, also
//!   while the protocol is still being detected); later requests of an HTTP/1.1
//!   connection by hyper's own header time-out ([`configure_http`]);
//! - [`ConnectionLimits::idle_timeout`]: a connection on which nothing was read
//!   or written for this long is closed (any protocol: it is measured on the
//!   socket, under TLS, by [`LimitedStream`]);
//! - [`ConnectionLimits::max_connections`] and
//!   [`ConnectionLimits::max_connections_per_source`]: a connection beyond
//!   either cap is closed as soon as it is accepted, before any TLS or HTTP work
//!   ([`ConnectionGate::admit`]).
//!
//! Connections refused by a cap, closed for idleness, or dropped during the
//! TLS handshake (time-out or failure; see [`ConnectionGate::note_accept_error`])
//! are logged as a warning at most once per [`WARNING_INTERVAL`] per listener
//! and kind, with how many happened since the last line, so a flood cannot
//! flood the log too. A request whose headers time out is closed by hyper,
//! which gives no hook to log it.
//!
//! Behind a load balancer in TCP mode, [`read_proxy_header`] reads the PROXY
//! protocol header (v2 or v1) that names the client, before TLS; the server
//! reads it only from the proxies it trusts and counts the connection under
//! the client's address ([`ConnectionGate::admit_as`]).
//!
//! [`serve`] gives a plain-HTTP listener (the kiosk's local API) all of the
//! above but the TLS handshake time-out, speaks HTTP/1.1 and HTTP/2 (detected
//! per connection), hands axum handlers the client's address as
//! `ConnectInfo<SocketAddr>`, and on shutdown stops accepting, lets every
//! request under way finish and returns once every connection has closed. The
//! server's TLS listener uses the same gate through its own accept step.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod gate;
pub mod proxy;
mod serve;
mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use gate::{ConnectionGate, ConnectionLimits, WARNING_INTERVAL};
pub use proxy::{ProxyHeader, ProxyHeaderError, read_proxy_header};
pub use serve::{configure_http, serve};
pub use stream::LimitedStream;
