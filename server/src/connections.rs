//! The server's listeners on the shared connection hygiene of [`pivtap_http`]: an axum-server accept step over a [`ConnectionGate`] (under the TLS acceptor, or alone for plain HTTP) and the HTTP time-outs on an axum-server `Server`.
//!
//! What the limits guarantee, and what is logged, is documented in [`pivtap_http`];
//! the TLS handshake time-out is axum-server's rustls acceptor's, whose failures go to
//! [`LimitedAcceptor::note_accept_error`].

use std::io;

use axum_server::accept::Accept;
use pivtap_http::ConnectionGate;
use tokio::net::TcpStream;

pub use pivtap_http::{ConnectionLimits, LimitedStream, WARNING_INTERVAL};

/// Applies the time-outs of `limits` that live in the HTTP layer to `server`:
/// the first request's headers (every protocol) and later HTTP/1.1 headers.
#[must_use]
pub fn apply_http_timeouts<A, Acc>(
    mut server: axum_server::Server<A, Acc>,
    limits: &ConnectionLimits,
) -> axum_server::Server<A, Acc>
where
    A: axum_server::Address,
{
    pivtap_http::configure_http(server.http_builder(), limits);
    server.first_request_timeout(limits.header_read_timeout)
}

/// The accept step that enforces the connection caps and the idle time-out of a
/// [`ConnectionGate`]; put it under the TLS acceptor (`RustlsAcceptor::acceptor`)
/// or use it alone for plain HTTP. Clones share their counts.
#[derive(Debug, Clone)]
pub struct LimitedAcceptor {
    gate: ConnectionGate,
}

impl LimitedAcceptor {
    /// An acceptor for the listener called `listener` in log lines.
    #[must_use]
    pub fn new(listener: &'static str, limits: ConnectionLimits) -> Self {
        Self {
            gate: ConnectionGate::new(listener, limits),
        }
    }

    /// Logs (rate-limited) a connection that failed before its first request:
    /// a TLS handshake that timed out or failed. Refusals by the caps are
    /// logged already. Give it to `Server::accept_error_handler`.
    pub fn note_accept_error(&self, error: &io::Error) {
        self.gate.note_accept_error(error);
    }

    /// The gate this acceptor admits through.
    #[must_use]
    pub fn gate(&self) -> &ConnectionGate {
        &self.gate
    }
}

impl<S> Accept<TcpStream, S> for LimitedAcceptor {
    type Stream = LimitedStream;
    type Service = S;
    type Future = std::future::Ready<io::Result<(LimitedStream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(self.gate.admit(stream).map(|stream| (stream, service)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_acceptor_admits_through_its_gate_and_clones_share_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = LimitedAcceptor::new(
            "test",
            ConnectionLimits {
                max_connections: 1,
                ..ConnectionLimits::default()
            },
        );
        let _first_client = TcpStream::connect(address).await.unwrap();
        let (first, ()) = acceptor
            .accept(listener.accept().await.unwrap().0, ())
            .await
            .unwrap();
        let _second_client = TcpStream::connect(address).await.unwrap();
        let refused = acceptor
            .clone()
            .accept(listener.accept().await.unwrap().0, ())
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(acceptor.gate().open_connections(), 1);
        drop(first);
        assert_eq!(acceptor.gate().open_connections(), 0);
    }
}
