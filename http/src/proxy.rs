//! The PROXY protocol (v2, and v1) header a load balancer in TCP mode sends before the client's bytes: a strict parser and a bounded reader.
//!
//! HAProxy (`send-proxy-v2`) and most TCP balancers put one header at the start
//! of each connection that names the client's address, so the node behind it
//! can count budgets and audit under the client rather than the balancer. The
//! reader takes exactly the header's bytes from the stream (none of the TLS or
//! HTTP bytes after it), so the stream can be handed on as it is.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The 12 bytes every v2 header begins with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, `\r\n` included (the specification's limit).
pub const V1_MAX_LENGTH: usize = 107;
/// The longest address block (addresses and TLVs) a v2 header may carry here.
/// HAProxy's headers are far shorter; the protocol would allow 65,535 bytes.
pub const V2_MAX_ADDRESS_BLOCK: usize = 1024;

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A client's connection relayed by the proxy: its source and the address it connected to.
    Proxied {
        /// The client's address.
        source: SocketAddr,
        /// The address the client connected to (the proxy's listener).
        destination: SocketAddr,
    },
    /// The proxy's own connection (a v2 `LOCAL` command, such as a health
    /// check, or v1 `UNKNOWN`): the TCP peer is the client.
    Local,
}

impl ProxyHeader {
    /// The client's address, when the header names one.
    #[must_use]
    pub fn source(&self) -> Option<SocketAddr> {
        match self {
            ProxyHeader::Proxied { source, .. } => Some(*source),
            ProxyHeader::Local => None,
        }
    }
}

/// Why a PROXY header was refused. Nothing of the connection's content is
/// quoted, only sizes and codes.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The header was not complete within the time allowed.
    #[error("no complete PROXY header within {0:?}")]
    TimedOut(Duration),
    /// The peer closed the connection before the header was complete.
    #[error("the connection ended inside the PROXY header")]
    Truncated,
    /// The connection does not begin with a PROXY header.
    #[error("the connection does not begin with a PROXY header (v1 or v2 signature)")]
    WrongSignature,
    /// Longer than this reader accepts.
    #[error("the PROXY header is longer than {limit} bytes")]
    Oversized {
        /// The most accepted.
        limit: usize,
    },
    /// A v2 header of another version.
    #[error("PROXY protocol version {0} is not supported (2 is)")]
    UnsupportedVersion(u8),
    /// A v2 command other than LOCAL and PROXY.
    #[error("PROXY v2 command {0:#x} is neither LOCAL nor PROXY")]
    UnknownCommand(u8),
    /// An address family or transport other than TCP over IPv4 or IPv6.
    #[error(
        "PROXY header for address family and protocol {0:#04x}: only TCP over IPv4 or IPv6 is served"
    )]
    UnsupportedFamily(u8),
    /// The header's fields do not parse.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// Reading the connection failed.
    #[error("reading the PROXY header failed: {0}")]
    Io(#[source] io::Error),
}

impl From<ProxyHeaderError> for io::Error {
    /// An `InvalidData` error (`TimedOut` for a time-out) carrying the cause, which
    /// [`crate::ConnectionGate::note_accept_error`] recognises.
    fn from(error: ProxyHeaderError) -> Self {
        let kind = match error {
            ProxyHeaderError::TimedOut(_) => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, error)
    }
}

/// Reads one PROXY header (v2 or v1) from the start of `stream` within `limit`,
/// taking exactly its bytes.
///
/// # Errors
/// [`ProxyHeaderError`] for a header that is missing, malformed, oversized,
/// truncated or not complete in time.
pub async fn read_proxy_header<R: AsyncRead + Unpin>(
    stream: &mut R,
    limit: Duration,
) -> Result<ProxyHeader, ProxyHeaderError> {
    tokio::time::timeout(limit, read_header(stream))
        .await
        .map_err(|_| ProxyHeaderError::TimedOut(limit))?
}

async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<ProxyHeader, ProxyHeaderError> {
    // Both versions are at least 12 bytes long (v1's shortest is 15).
    let mut start = [0_u8; 12];
    read_exact(stream, &mut start).await?;
    if start == V2_SIGNATURE {
        let mut fixed = [0_u8; 4];
        read_exact(stream, &mut fixed).await?;
        let length = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if length > V2_MAX_ADDRESS_BLOCK {
            return Err(ProxyHeaderError::Oversized {
                limit: 16 + V2_MAX_ADDRESS_BLOCK,
            });
        }
        let mut block = vec![0_u8; length];
        read_exact(stream, &mut block).await?;
        return parse_v2(fixed[0], fixed[1], &block);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::WrongSignature);
    }
    // v1: one byte at a time up to "\r\n", so nothing after the header is taken.
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX_LENGTH {
            return Err(ProxyHeaderError::Oversized {
                limit: V1_MAX_LENGTH,
            });
        }
        let mut byte = [0_u8; 1];
        read_exact(stream, &mut byte).await?;
        line.push(byte[0]);
    }
    parse_v1(&line)
}

async fn read_exact<R: AsyncRead + Unpin>(
    stream: &mut R,
    buffer: &mut [u8],
) -> Result<(), ProxyHeaderError> {
    match stream.read_exact(buffer).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            Err(ProxyHeaderError::Truncated)
        }
        Err(error) => Err(ProxyHeaderError::Io(error)),
    }
}

/// Parses a v2 header's version-and-command byte, family byte and address
/// block (the bytes after the 16 fixed ones).
///
/// # Errors
/// [`ProxyHeaderError`] for another version, an unknown command, a family
/// other than TCP over IPv4/IPv6 (for PROXY), or a short address block.
pub fn parse_v2(
    version_command: u8,
    family: u8,
    block: &[u8],
) -> Result<ProxyHeader, ProxyHeaderError> {
    let version = version_command >> 4;
    if version != 2 {
        return Err(ProxyHeaderError::UnsupportedVersion(version));
    }
    match version_command & 0x0f {
        // LOCAL: the proxy's own connection; the address block is ignored.
        0x0 => return Ok(ProxyHeader::Local),
        0x1 => {}
        command => return Err(ProxyHeaderError::UnknownCommand(command)),
    }
    let short = ProxyHeaderError::Malformed("the address block is shorter than its family needs");
    match family {
        // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes; TLVs may follow.
        0x11 => {
            let block = block.get(..12).ok_or(short)?;
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[at],
                    block[at + 1],
                    block[at + 2],
                    block[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes.
        0x21 => {
            let block = block.get(..36).ok_or(short)?;
            let ip = |at: usize| {
                let mut octets = [0_u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        other => Err(ProxyHeaderError::UnsupportedFamily(other)),
    }
}

/// Parses a whole v1 header line, `PROXY TCP4 SRC DST SPORT DPORT\r\n` (or
/// `TCP6`, or `UNKNOWN` with anything up to the line's end).
///
/// # Errors
/// [`ProxyHeaderError`] for a line that is too long, not a PROXY line, or
/// whose fields do not parse or do not match the family.
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    if line.len() > V1_MAX_LENGTH {
        return Err(ProxyHeaderError::Oversized {
            limit: V1_MAX_LENGTH,
        });
    }
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or(ProxyHeaderError::Malformed(
            "the line does not end with CRLF",
        ))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::Malformed("not ASCII"))?;
    let rest = line
        .strip_prefix("PROXY ")
        .ok_or(ProxyHeaderError::WrongSignature)?;
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Ok(ProxyHeader::Local);
    }
    let fields: Vec<&str> = rest.split(' ').collect();
    let [family, source, destination, source_port, destination_port] = fields[..] else {
        return Err(ProxyHeaderError::Malformed(
            "a TCP4/TCP6 line has a family, two addresses and two ports",
        ));
    };
    let address = |text: &str| -> Result<IpAddr, ProxyHeaderError> {
        let ip: IpAddr = match family {
            "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => text.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => {
                return Err(ProxyHeaderError::Malformed(
                    "the family is not TCP4, TCP6 or UNKNOWN",
                ));
            }
        }
        .map_err(|_| ProxyHeaderError::Malformed("an address does not match its family"))?;
        Ok(ip)
    };
    let port = |text: &str| -> Result<u16, ProxyHeaderError> {
        // Decimal without a sign or leading zeros, as the specification writes them.
        if text.is_empty()
            || text.len() > 5
            || !text.bytes().all(|b| b.is_ascii_digit())
            || (text.len() > 1 && text.starts_with('0'))
        {
            return Err(ProxyHeaderError::Malformed(
                "a port is not a number from 0 to 65535",
            ));
        }
        text.parse()
            .map_err(|_| ProxyHeaderError::Malformed("a port is not a number from 0 to 65535"))
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(address(source)?, port(source_port)?),
        destination: SocketAddr::new(address(destination)?, port(destination_port)?),
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// A v2 PROXY header for TCP over IPv4 from `source` to 10.0.0.1:443, with `tlvs` after the addresses.
    pub(crate) fn v2_ipv4(source: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
        let SocketAddr::V4(source) = source else {
            panic!("an IPv4 source")
        };
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([0x21, 0x11]);
        header.extend(u16::try_from(12 + tlvs.len()).unwrap().to_be_bytes());
        header.extend(source.ip().octets());
        header.extend([10, 0, 0, 1]);
        header.extend(source.port().to_be_bytes());
        header.extend(443_u16.to_be_bytes());
        header.extend(tlvs);
        header
    }

    async fn read_from(bytes: &[u8]) -> (Result<ProxyHeader, ProxyHeaderError>, Vec<u8>) {
        let mut reader = bytes;
        let header = read_proxy_header(&mut reader, Duration::from_secs(1)).await;
        (header, reader.to_vec())
    }

    #[tokio::test]
    async fn a_v2_header_names_the_client_and_leaves_the_rest_of_the_stream() {
        let source: SocketAddr = "192.0.2.7:50123".parse().unwrap();
        let mut bytes = v2_ipv4(source, &[0x04, 0x00, 0x01, 0xaa]);
        bytes.extend(b"\x16\x03\x01rest");
        let (header, rest) = read_from(&bytes).await;
        assert_eq!(header.unwrap().source(), Some(source));
        assert_eq!(rest, b"\x16\x03\x01rest");
    }

    #[tokio::test]
    async fn a_v2_ipv6_header_and_a_local_one() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend([0x21, 0x21, 0, 36]);
        let source: Ipv6Addr = "2001:db8::7".parse().unwrap();
        bytes.extend(source.octets());
        bytes.extend(Ipv6Addr::LOCALHOST.octets());
        bytes.extend([0x1f, 0x90, 0x01, 0xbb]);
        let (header, rest) = read_from(&bytes).await;
        assert_eq!(
            header.unwrap(),
            ProxyHeader::Proxied {
                source: SocketAddr::new(source.into(), 8080),
                destination: "[::1]:443".parse().unwrap(),
            }
        );
        assert!(rest.is_empty());
        // LOCAL (a health check), with no addresses.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(read_from(&local).await.0.unwrap(), ProxyHeader::Local);
    }

    #[tokio::test]
    async fn a_v1_header_is_read_up_to_its_line_end_only() {
        let (header, rest) =
            read_from(b"PROXY TCP4 192.0.2.7 10.0.0.1 50123 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(
            header.unwrap().source(),
            Some("192.0.2.7:50123".parse().unwrap())
        );
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (header, _) = read_from(b"PROXY TCP6 2001:db8::7 ::1 1 443\r\n").await;
        assert_eq!(
            header.unwrap().source(),
            Some("[2001:db8::7]:1".parse().unwrap())
        );
        let (header, _) = read_from(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(header.unwrap(), ProxyHeader::Local);
    }

    #[tokio::test]
    async fn truncated_headers_are_refused() {
        let full = v2_ipv4("192.0.2.7:1".parse().unwrap(), &[]);
        for cut in [0, 5, 12, 15, 20, full.len() - 1] {
            let (header, _) = read_from(&full[..cut]).await;
            assert!(
                matches!(header, Err(ProxyHeaderError::Truncated)),
                "cut at {cut}: {header:?}"
            );
        }
        let (header, _) = read_from(b"PROXY TCP4 192.0.2.7 10.0.0.1 1 443").await;
        assert!(
            matches!(header, Err(ProxyHeaderError::Truncated)),
            "{header:?}"
        );
    }

    #[tokio::test]
    async fn oversized_headers_are_refused_without_reading_them() {
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([0x21, 0x11, 0xff, 0xff]);
        let (header, _) = read_from(&v2).await;
        assert!(
            matches!(header, Err(ProxyHeaderError::Oversized { limit: 1040 })),
            "{header:?}"
        );
        let mut v1 = b"PROXY TCP4 ".to_vec();
        v1.extend([b'1'; 200]);
        let (header, rest) = read_from(&v1).await;
        assert!(
            matches!(
                header,
                Err(ProxyHeaderError::Oversized {
                    limit: V1_MAX_LENGTH
                })
            ),
            "{header:?}"
        );
        assert_eq!(
            rest.len(),
            211 - V1_MAX_LENGTH,
            "no more than the limit was read"
        );
    }

    #[tokio::test]
    async fn other_starts_versions_commands_and_families_are_refused() {
        // A TLS ClientHello and an HTTP request are not PROXY headers.
        for start in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00rest"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            let (header, _) = read_from(start).await;
            assert!(
                matches!(header, Err(ProxyHeaderError::WrongSignature)),
                "{header:?}"
            );
        }
        let mut wrong = v2_ipv4("192.0.2.7:1".parse().unwrap(), &[]);
        wrong[3] = b'X';
        assert!(matches!(
            read_from(&wrong).await.0,
            Err(ProxyHeaderError::WrongSignature)
        ));
        assert!(matches!(
            parse_v2(0x11, 0x11, &[0; 12]),
            Err(ProxyHeaderError::UnsupportedVersion(1))
        ));
        assert!(matches!(
            parse_v2(0x22, 0x11, &[0; 12]),
            Err(ProxyHeaderError::UnknownCommand(2))
        ));
        assert!(
            matches!(
                parse_v2(0x21, 0x12, &[0; 12]),
                Err(ProxyHeaderError::UnsupportedFamily(0x12))
            ),
            "UDP"
        );
        assert!(
            matches!(
                parse_v2(0x21, 0x31, &[0; 216]),
                Err(ProxyHeaderError::UnsupportedFamily(0x31))
            ),
            "Unix"
        );
        assert!(matches!(
            parse_v2(0x21, 0x11, &[0; 11]),
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse_v2(0x21, 0x21, &[0; 35]),
            Err(ProxyHeaderError::Malformed(_))
        ));
        for line in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 1 443\n"[..],
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 443\r\n",
            b"PROXY TCP6 192.0.2.7 ::1 1 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 01 443\r\n",
            b"PROXY TCP4  192.0.2.7 10.0.0.1 1 443\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 443\r\n",
        ] {
            assert!(
                matches!(parse_v1(line), Err(ProxyHeaderError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[tokio::test]
    async fn a_slow_sender_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let header = v2_ipv4("192.0.2.7:1".parse().unwrap(), &[]);
        client.write_all(&header[..10]).await.unwrap();
        let started = std::time::Instant::now();
        let result = read_proxy_header(&mut server, Duration::from_millis(200)).await;
        assert!(
            matches!(result, Err(ProxyHeaderError::TimedOut(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let error = io::Error::from(result.unwrap_err());
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }
}
