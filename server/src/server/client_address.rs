//! The client's address as the server sees it (the TCP peer, or the client a trusted proxy's PROXY header names; never a header such as `X-Forwarded-For`), and the key its budgets are counted under.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::Extensions;
use axum::http::request::Parts;

use crate::connections::ProxiedSource;

/// The peer address of a request, if the server was given one (`None` for requests sent
/// without a socket, e.g. `oneshot` in tests: they all share one budget).
///
/// Headers such as `X-Forwarded-For` are not trusted: behind an HTTP reverse proxy every
/// client has the proxy's address. Behind a TCP load balancer listed in `[connections]
/// proxy_protocol_from`, the client's address comes from the balancer's PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub Option<IpAddr>);

impl ClientAddress {
    /// The client address recorded in a request's extensions: the
    /// [`ProxiedSource`] a trusted proxy named, else axum's [`ConnectInfo`] (the
    /// TCP peer), or a test's [`MockConnectInfo`].
    #[must_use]
    pub fn of(extensions: &Extensions) -> Self {
        let peer = extensions
            .get::<ProxiedSource>()
            .map(|ProxiedSource(address)| *address)
            .or_else(|| {
                extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(address)| *address)
            })
            .or_else(|| {
                extensions
                    .get::<MockConnectInfo<SocketAddr>>()
                    .map(|MockConnectInfo(address)| *address)
            });
        ClientAddress(peer.map(|address| address.ip()))
    }

    /// The key its budgets are counted under: `source:<IPv4 address>`, `source:<IPv6 /64
    /// prefix>::/64` (one host commonly has a whole /64), or `source:unknown`.
    #[must_use]
    pub fn key(&self) -> String {
        match self.0.map(|ip| ip.to_canonical()) {
            None => "source:unknown".to_owned(),
            Some(IpAddr::V4(ip)) => format!("source:{ip}"),
            Some(IpAddr::V6(ip)) => {
                let prefix = u128::from(ip) & !((1u128 << 64) - 1);
                format!("source:{}/64", std::net::Ipv6Addr::from(prefix))
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress::of(&parts.extensions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_address_or_its_ipv6_prefix() {
        let key = |text: &str| ClientAddress(Some(text.parse().expect("an address"))).key();
        assert_eq!(key("192.0.2.7"), "source:192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "source:192.0.2.7");
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "source:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff::1"), "source:2001:db8:1:2::/64");
        assert_eq!(ClientAddress(None).key(), "source:unknown");
    }

    #[test]
    fn the_peer_comes_from_connect_info_or_its_mock() {
        let address: SocketAddr = "192.0.2.9:4000".parse().expect("an address");
        let mut extensions = Extensions::new();
        assert_eq!(ClientAddress::of(&extensions), ClientAddress(None));
        extensions.insert(MockConnectInfo(address));
        assert_eq!(ClientAddress::of(&extensions).0, Some(address.ip()));
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo(address));
        assert_eq!(ClientAddress::of(&extensions).0, Some(address.ip()));
        // A trusted proxy's PROXY header takes the place of the TCP peer.
        let client: SocketAddr = "198.51.100.4:5000".parse().expect("an address");
        extensions.insert(ProxiedSource(client));
        assert_eq!(ClientAddress::of(&extensions).0, Some(client.ip()));
    }
}
