//! Reading what people type on the command line: listen addresses (durations are `pivtap_protocol::duration`).

use std::net::SocketAddr;

/// Why a `--listen` value is not an address and port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// Only a port: which interfaces to listen on is not guessed (everyone, or this machine
    /// only, is a security decision).
    #[error(
        "{port} is only a port: write an address and the port, 0.0.0.0:{port} (every interface) \
         or 127.0.0.1:{port} (this machine only)"
    )]
    PortOnly {
        /// The port given.
        port: u16,
    },
    /// A URL where an address belongs.
    #[error("{text:?} is a URL: --listen takes an address and port, such as 0.0.0.0:8443")]
    Url {
        /// What was given.
        text: String,
    },
    /// Anything else.
    #[error(
        "{text:?} is not an address and port: write an IP address and the port, such as \
         0.0.0.0:8443, 127.0.0.1:8443 or [::]:8443"
    )]
    Malformed {
        /// What was given.
        text: String,
    },
}

/// Reads `--listen`: an IP address and a port (`0.0.0.0:8443`, `[::1]:8443`).
///
/// # Errors
/// [`ListenError`] saying what to write instead of a bare port, a URL or anything else.
pub fn listen_address(text: &str) -> Result<SocketAddr, ListenError> {
    let text = text.trim();
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    if let Ok(port) = text.trim_start_matches(':').parse::<u16>() {
        return Err(ListenError::PortOnly { port });
    }
    if text.contains("://") {
        return Err(ListenError::Url {
            text: text.to_owned(),
        });
    }
    Err(ListenError::Malformed {
        text: text.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_ports_are_read_and_the_rest_explained() {
        assert_eq!(
            listen_address("0.0.0.0:8443").unwrap(),
            "0.0.0.0:8443".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(listen_address(" [::1]:7 ").unwrap().port(), 7);
        for bare in ["8443", ":8443"] {
            let error = listen_address(bare).unwrap_err();
            assert_eq!(error, ListenError::PortOnly { port: 8443 });
            assert!(
                error.to_string().contains("0.0.0.0:8443")
                    && error.to_string().contains("127.0.0.1:8443"),
                "{error}"
            );
        }
        assert!(matches!(
            listen_address("https://0.0.0.0:8443"),
            Err(ListenError::Url { .. })
        ));
        for other in ["localhost:8443", "", "1.2.3.4", "0.0.0.0:99999"] {
            assert!(
                matches!(listen_address(other), Err(ListenError::Malformed { .. })),
                "{other}"
            );
        }
    }
}
