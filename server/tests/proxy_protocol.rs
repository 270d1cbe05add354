//! The PROXY protocol on the server's listener: the client a trusted load balancer names is the request's client address, and bad or untrusted headers are refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum_server::Handle;
use pivtap_http::proxy::V2_SIGNATURE;
use pivtap_http::testing::closed_within;
use pivtap_server::connections::{ConnectionLimits, ProxyNetwork, TrustedProxies};
use pivtap_server::server::client_address::ClientAddress;
use pivtap_server::server::{self, Listener};
use pivtap_testkit::server::{init_directory, install_crypto_provider};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A v2 PROXY header for TCP over IPv4 from `source` to 10.0.0.1:443.
fn v2_header(source: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(source) = source else {
        panic!("an IPv4 source")
    };
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(source.ip().octets());
    header.extend([10, 0, 0, 1]);
    header.extend(source.port().to_be_bytes());
    header.extend(443_u16.to_be_bytes());
    header
}

fn trusted(entries: &[&str]) -> TrustedProxies {
    let networks: Vec<ProxyNetwork> = entries
        .iter()
        .map(|entry| entry.parse().expect("a network"))
        .collect();
    TrustedProxies::new(&networks)
}

/// A plain-HTTP loopback listener whose `GET /who` answers the request's `ClientAddress`.
async fn serve_who(
    proxies: TrustedProxies,
    limits: ConnectionLimits,
) -> (SocketAddr, Handle<SocketAddr>) {
    let router = axum::Router::new().route(
        "/who",
        axum::routing::get(|ClientAddress(client): ClientAddress| async move {
            client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
        }),
    );
    let handle = Handle::new();
    let listener = Listener::PlainLoopback {
        address: "127.0.0.1:0".parse().expect("an address"),
    };
    let serving = handle.clone();
    tokio::spawn(
        async move { server::serve_router(router, listener, serving, &limits, proxies).await },
    );
    let address = handle.listening().await.expect("listens");
    (address, handle)
}

/// Sends `prefix` then `GET /who`, and returns everything the server answered.
async fn ask_who(address: SocketAddr, prefix: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connects");
    let mut request = prefix.to_vec();
    request.extend(b"GET /who HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    // The server may close before all is written (a refused header): that is an answer too.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers or closes in time");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_the_client_a_trusted_proxy_names() {
    let (address, handle) = serve_who(trusted(&["127.0.0.0/8"]), ConnectionLimits::default()).await;
    let answer = ask_who(address, &v2_header("198.51.100.7:50123".parse().unwrap())).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n198.51.100.7"), "{answer}");
    let answer = ask_who(address, b"PROXY TCP4 203.0.113.9 10.0.0.1 4000 443\r\n").await;
    assert!(answer.ends_with("\r\n\r\n203.0.113.9"), "{answer}");
    // LOCAL (HAProxy's health checks) and UNKNOWN: the proxy itself is the client.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend([0x20, 0x00, 0, 0]);
    let answer = ask_who(address, &local).await;
    assert!(answer.ends_with("\r\n\r\n127.0.0.1"), "{answer}");
    let answer = ask_who(address, b"PROXY UNKNOWN\r\n").await;
    assert!(answer.ends_with("\r\n\r\n127.0.0.1"), "{answer}");
    handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_connection_without_a_valid_header_is_closed_unanswered() {
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let (address, handle) = serve_who(trusted(&["127.0.0.1"]), limits).await;
    let header = v2_header("198.51.100.7:1".parse().unwrap());
    let mut oversized = V2_SIGNATURE.to_vec();
    oversized.extend([0x21, 0x11, 0xff, 0xff]);
    let mut udp = header.clone();
    udp[13] = 0x12;
    for (what, prefix) in [
        ("no header", &b""[..]),
        ("a wrong signature", b"PROXY TCP9 1 2 3 4\r\n"),
        ("an oversized header", &oversized),
        ("a UDP header", &udp),
        (
            "a v1 line too long",
            &[b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(),
        ),
    ] {
        let answer = ask_who(address, prefix).await;
        assert_eq!(
            answer, "",
            "{what}: the connection is closed without an answer"
        );
    }
    // Truncated: part of a header, then the client's end of the connection closes.
    let mut truncated = TcpStream::connect(address).await.expect("connects");
    truncated.write_all(&header[..20]).await.expect("sends");
    truncated.shutdown().await.expect("half-closes");
    assert!(
        closed_within(&mut truncated, Duration::from_secs(3)).await,
        "a truncated header"
    );
    // A slow sender: part of a header, then nothing; closed after the header time-out.
    let mut slow = TcpStream::connect(address).await.expect("connects");
    slow.write_all(&header[..10]).await.expect("sends");
    let started = std::time::Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "a slow header"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    // The listener still serves a proper header.
    let answer = ask_who(address, &header).await;
    assert!(answer.ends_with("\r\n\r\n198.51.100.7"), "{answer}");
    handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_from_an_untrusted_peer_is_refused() {
    // Only 192.0.2.1 is trusted: the test's own loopback connection is not.
    let (address, handle) = serve_who(trusted(&["192.0.2.1"]), ConnectionLimits::default()).await;
    let answer = ask_who(address, &v2_header("198.51.100.7:1".parse().unwrap())).await;
    assert!(!answer.contains("198.51.100.7"), "{answer}");
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = ask_who(address, b"PROXY TCP4 203.0.113.9 10.0.0.1 4000 443\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.is_empty(),
        "{answer}"
    );
    // Without a header it is served as itself.
    let answer = ask_who(address, b"").await;
    assert!(answer.ends_with("\r\n\r\n127.0.0.1"), "{answer}");
    handle.shutdown();
}

/// The real server (TLS, `[connections] proxy_protocol_from`): the header is read
/// before TLS and the per-source cap counts the client it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_reads_the_header_first_and_caps_the_named_client() {
    install_crypto_provider();
    let (dir, report) = init_directory();
    let mut config = pivtap_server::config::ServerConfig::load(&report.config_path).expect("loads");
    config.connections.proxy_protocol_from = vec!["127.0.0.1".parse().expect("an address")];
    config.connections.max_connections_per_source = 1;
    config.validate(&report.config_path).expect("valid");
    let (state, listener) = server::from_config(&config)
        .await
        .expect("the state builds");
    let handle = Handle::new();
    tokio::spawn(server::serve_with_handle(state, listener, handle.clone()));
    let address = handle.listening().await.expect("listens");
    let tls = config.tls.as_ref().expect("init configures TLS");
    let certificate = CertificateDer::from_pem_file(&tls.certificate)
        .expect("tls.crt")
        .into_owned();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate).expect("a root");
    let client = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let connect = |prefix: Vec<u8>| {
        let client = Arc::clone(&client);
        async move {
            let mut tcp = TcpStream::connect(address).await?;
            tcp.write_all(&prefix).await?;
            let name = ServerName::try_from("127.0.0.1").expect("a name");
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await?;
            tls.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await?;
            let mut buffer = [0_u8; 12];
            tls.read_exact(&mut buffer).await?;
            assert_eq!(&buffer, b"HTTP/1.1 200");
            Ok::<_, std::io::Error>(tls)
        }
    };
    let first = connect(v2_header("198.51.100.7:1".parse().unwrap()))
        .await
        .expect("a proxied client is served over TLS");
    let _second = connect(v2_header("198.51.100.8:1".parse().unwrap()))
        .await
        .expect("another proxied client is served beside it, though both come from 127.0.0.1");
    assert!(
        connect(v2_header("198.51.100.7:2".parse().unwrap()))
            .await
            .is_err(),
        "a second connection of the first client is over its cap"
    );
    assert!(
        connect(Vec::new()).await.is_err(),
        "the proxy's connection without a header is refused"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    connect(v2_header("198.51.100.7:3".parse().unwrap()))
        .await
        .expect("its place came back");
    handle.shutdown();
    drop(dir);
}
