//! The server's listeners on the shared connection hygiene of [`pivtap_http`]: an axum-server accept step over a [`ConnectionGate`] (under the TLS acceptor, or alone for plain HTTP) and the HTTP time-outs on an axum-server `Server`.
//!
//! What the limits guarantee, and what is logged, is documented in [`pivtap_http`];
//! the TLS handshake time-out is axum-server's rustls acceptor's, whose failures go to
//! [`LimitedAcceptor::note_accept_error`].
//!
//! Behind a load balancer in TCP mode (`[connections] proxy_protocol_from`), a
//! connection from one of the [`TrustedProxies`] must begin with a PROXY
//! protocol header (v2 or v1), read before TLS within the header time-out; the
//! client it names is the connection's source for the caps and reaches handlers
//! as [`ProxiedSource`] (see `ClientAddress`). A connection from any other peer
//! is never read as one: a PROXY header from it fails the TLS handshake (or is a
//! bad HTTP request on a plain listener) and the connection is closed.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use ipnet::IpNet;
use pivtap_http::{ConnectionGate, read_proxy_header};
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

/// One entry of `[connections] proxy_protocol_from`: an IP address
/// (`10.0.0.5`, `::1`) or a network (`10.0.1.0/24`, `fd00::/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyNetwork(IpNet);

/// Why an entry of `proxy_protocol_from` is not an address or network.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IP address or network (such as 10.0.0.5 or 10.0.1.0/24)")]
pub struct ProxyNetworkError(String);

impl std::str::FromStr for ProxyNetwork {
    type Err = ProxyNetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(|network| ProxyNetwork(network.trunc()))
            .map_err(|_| ProxyNetworkError(text.to_owned()))
    }
}

impl TryFrom<String> for ProxyNetwork {
    type Error = ProxyNetworkError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<ProxyNetwork> for String {
    fn from(network: ProxyNetwork) -> Self {
        if network.0.prefix_len() == network.0.max_prefix_len() {
            network.0.addr().to_string()
        } else {
            network.0.to_string()
        }
    }
}

/// The peers whose connections must begin with a PROXY header (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    /// The proxies at `networks`.
    #[must_use]
    pub fn new(networks: &[ProxyNetwork]) -> Self {
        Self(networks.iter().map(|network| network.0).collect())
    }

    /// Whether a connection from `peer` comes from a trusted proxy (an IPv4
    /// address mapped into IPv6 counts as the IPv4 address).
    #[must_use]
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|network| network.contains(&peer))
    }

    /// Whether no proxy is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client's address a trusted proxy's PROXY header named, in a request's
/// extensions: it takes the place of the TCP peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedSource(pub SocketAddr);

/// A connection's service that adds its [`ProxiedSource`], when it has one, to every request.
#[derive(Debug, Clone)]
pub struct WithSource<S> {
    inner: S,
    source: Option<ProxiedSource>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for WithSource<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        if let Some(source) = self.source {
            request.extensions_mut().insert(source);
        }
        self.inner.call(request)
    }
}

/// The accept step that enforces the connection caps and the idle time-out of a
/// [`ConnectionGate`], after reading the PROXY header of a trusted proxy's
/// connection; put it under the TLS acceptor (`RustlsAcceptor::acceptor`)
/// or use it alone for plain HTTP. Clones share their counts.
#[derive(Debug, Clone)]
pub struct LimitedAcceptor {
    gate: ConnectionGate,
    proxies: TrustedProxies,
}

impl LimitedAcceptor {
    /// An acceptor for the listener called `listener` in log lines, trusting no proxy.
    #[must_use]
    pub fn new(listener: &'static str, limits: ConnectionLimits) -> Self {
        Self {
            gate: ConnectionGate::new(listener, limits),
            proxies: TrustedProxies::default(),
        }
    }

    /// This acceptor, requiring a PROXY header from `proxies` (and only from them).
    #[must_use]
    pub fn trusting(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = proxies;
        self
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

type Accepted<S> = io::Result<(LimitedStream, WithSource<S>)>;

impl<S: Send + 'static> Accept<TcpStream, S> for LimitedAcceptor {
    type Stream = LimitedStream;
    type Service = WithSource<S>;
    type Future = Pin<Box<dyn Future<Output = Accepted<S>> + Send>>;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        let peer = match stream.peer_addr() {
            Ok(peer) => peer,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        if !self.proxies.trusts(peer.ip()) {
            let admitted = self.gate.admit_as(stream, peer.ip());
            let service = WithSource {
                inner: service,
                source: None,
            };
            return Box::pin(std::future::ready(admitted.map(|stream| (stream, service))));
        }
        let gate = self.gate.clone();
        Box::pin(async move {
            let limit = gate.limits().header_read_timeout;
            let header = read_proxy_header(&mut stream, limit).await?;
            let source = header.source();
            let admitted = gate.admit_as(stream, source.unwrap_or(peer).ip())?;
            let service = WithSource {
                inner: service,
                source: source.map(ProxiedSource),
            };
            Ok((admitted, service))
        })
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
        let (first, _) = acceptor
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
