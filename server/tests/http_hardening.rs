//! The server over real sockets against slow, many and oversized clients: half-sent requests (slowloris), oversized bodies on HTTP/1.1 and HTTP/2, who may read `/metrics`, readiness while the database cannot be written, and the client address reaching handlers.
//!
//! Each server is the real one (`init_server` + `from_config` + `serve_with_handle`)
//! on 127.0.0.1, port 0. Floods are bounded (a few hundred connections).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum_server::Handle;
use pivtap_http::testing::closed_within;
use pivtap_protocol::wire;
use pivtap_server::config::ServerConfig;
use pivtap_server::server::{self, Listener, StartError};
use pivtap_testkit::free_port;
use pivtap_testkit::server::{init_directory as init_server_directory, install_crypto_provider};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Another loopback address than the server's own, to be another source.
const OTHER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A server directory written by `init_server`, its configuration loaded.
fn init_directory() -> (TempDir, ServerConfig, PathBuf) {
    install_crypto_provider();
    let (dir, report) = init_server_directory();
    let config = ServerConfig::load(&report.config_path).expect("server.toml loads");
    (dir, config, report.config_path)
}

/// A server running in this process.
struct Served {
    _dir: TempDir,
    config: ServerConfig,
    address: SocketAddr,
    handle: Handle<SocketAddr>,
    admin_token: String,
    certificate: CertificateDer<'static>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Http {
    One,
    Two,
}

impl Served {
    async fn start(adjust: impl FnOnce(&Path, &mut ServerConfig)) -> Self {
        let (dir, mut config, config_path) = init_directory();
        // These tests are about connections, bodies and health: kiosk-07 asks for its
        // challenges in open mode (device identity is tested in tests/devices.rs).
        config.devices.require_registration = false;
        adjust(dir.path(), &mut config);
        config
            .validate(&config_path)
            .expect("the adjusted configuration is valid");
        let (state, listener) = server::from_config(&config)
            .await
            .expect("the server state builds");
        let handle = Handle::new();
        tokio::spawn(server::serve_with_handle(state, listener, handle.clone()));
        let address = tokio::time::timeout(Duration::from_secs(10), handle.listening())
            .await
            .expect("the server starts in time")
            .expect("the server listens");
        let admin_token = std::fs::read_to_string(&config.admin_token_file)
            .expect("admin.token reads")
            .trim()
            .to_owned();
        let tls = config.tls.as_ref().expect("init configures TLS");
        let certificate = CertificateDer::from_pem_file(&tls.certificate)
            .expect("tls.crt is a PEM certificate")
            .into_owned();
        Served {
            _dir: dir,
            config,
            address,
            handle,
            admin_token,
            certificate,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.address.port())
    }

    /// A client over `version` (HTTP/2 without falling back), from `source`.
    fn client(&self, version: Http, source: IpAddr) -> reqwest::Client {
        let certificate = reqwest::Certificate::from_der(&self.certificate).expect("a certificate");
        let builder = reqwest::Client::builder()
            .tls_certs_only([certificate])
            .local_address(source)
            .timeout(Duration::from_secs(60));
        let builder = match version {
            Http::One => builder.http1_only(),
            Http::Two => builder.http2_prior_knowledge(),
        };
        builder.build().expect("the client builds")
    }

    /// A TLS connection to the server (ALPN `alpn`), from `source`.
    async fn tls_connect(
        &self,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.certificate.clone())
            .expect("the certificate is a root");
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(self.address).await?;
        let name = ServerName::try_from("127.0.0.1").expect("a server name");
        connector.connect(name, tcp).await
    }
}

/// What came back, or how the exchange failed.
#[derive(Debug)]
struct Reply {
    status: u16,
    version: reqwest::Version,
    json: Value,
}

/// A body of `size` bytes: declared (`Content-Length`) or streamed in 64 KiB
/// chunks without a length (chunked on HTTP/1.1).
fn body(size: usize, streamed: bool) -> reqwest::Body {
    if streamed {
        let chunks = (0..size.div_ceil(64 * KIB)).map(move |index| {
            let length = (size - index * 64 * KIB).min(64 * KIB);
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; length]))
        });
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    } else {
        reqwest::Body::from(vec![b' '; size])
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    body: reqwest::Body,
) -> Result<Reply, reqwest::Error> {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let version = response.version();
    let text = response.text().await?;
    Ok(Reply {
        status,
        version,
        json: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    })
}

/// Every size above the 64 KiB limit, declared and streamed, on both
/// protocols: a JSON `413 payload_too_large`, and the connection still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_json_on_http1_and_http2() {
    let served = Served::start(|_, _| {}).await;
    let admin = Some(served.admin_token.as_str());
    let admin_path = |path: &str| format!("{}{path}", wire::PATH_ADMIN);
    // Every POST route that takes a body, with the most it takes.
    let with_bodies = [
        (wire::PATH_CHALLENGES.to_owned(), 64 * KIB),
        (wire::PATH_ASSERTIONS.to_owned(), 64 * KIB),
        (wire::PATH_ENROLLMENTS_INSPECT.to_owned(), 64 * KIB),
        (wire::PATH_ENROLLMENTS.to_owned(), 64 * KIB),
        (wire::PATH_RENEWALS.to_owned(), 64 * KIB),
        (admin_path("/users"), 64 * KIB),
        (admin_path(wire::PATH_ADMIN_ENROLLMENTS), 64 * KIB),
        (admin_path("/users/import"), 4 * MIB),
    ];
    // POST routes that take no body: a declared length beyond the limit is refused all the same.
    let without_bodies = [
        admin_path("/users/alice/lock"),
        admin_path("/users/alice/unlock"),
        admin_path("/cards/1001/lock"),
        admin_path("/cards/1001/unlock"),
        admin_path("/cards/1001/revoke"),
    ];
    let mut failures = Vec::new();
    for version in [Http::One, Http::Two] {
        let client = served.client(version, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut cases: Vec<(String, usize, bool)> = Vec::new();
        for size in [100 * KIB, 300 * KIB, 2 * MIB, 16 * MIB] {
            for streamed in [false, true] {
                cases.push((wire::PATH_ASSERTIONS.to_owned(), size, streamed));
            }
        }
        for (path, limit) in &with_bodies {
            for streamed in [false, true] {
                cases.push((path.clone(), limit + MIB, streamed));
            }
        }
        for path in &without_bodies {
            cases.push((path.clone(), 2 * MIB, false));
        }
        for (path, size, streamed) in cases {
            let started = Instant::now();
            let reply = post(&client, &served.url(&path), admin, body(size, streamed)).await;
            let case = format!(
                "{version:?} POST {path} {} KiB {}",
                size / KIB,
                if streamed { "streamed" } else { "declared" }
            );
            match reply {
                Ok(reply)
                    if reply.status == 413
                        && reply.json["error"] == "payload_too_large"
                        && reply.json["message"].is_string() =>
                {
                    let expected = match version {
                        Http::One => reqwest::Version::HTTP_11,
                        Http::Two => reqwest::Version::HTTP_2,
                    };
                    assert_eq!(reply.version, expected, "{case}");
                    println!("{case}: 413 in {:?}", started.elapsed());
                }
                other => failures.push(format!("{case}: {other:?}")),
            }
        }
        let live = client
            .get(served.url(wire::PATH_LIVE))
            .send()
            .await
            .expect("the client still gets answers");
        assert_eq!(live.status().as_u16(), 200, "{version:?}");
    }
    assert!(
        failures.is_empty(),
        "{} oversized requests got no 413:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The warnings the process logs, kept in memory (installed once, by the slowloris test).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn lines_with(&self, text: &str) -> Vec<String> {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(text))
            .map(str::to_owned)
            .collect()
    }
}

/// Slowloris: 200 TLS connections each send half a request's headers and
/// wait, against caps of 64 per source and 100 in all with a 3 s header
/// time-out. At most 64 get through; a client from another address is still
/// answered meanwhile; the slow ones are closed by the time-out; a silent TCP
/// connection is dropped by the TLS handshake time-out, and an HTTP/2
/// connection that never sends a request by the header time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_capped_and_closed_while_others_are_served() {
    const SLOW: usize = 200;
    let log = Captured::default();
    tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .try_init()
        .expect("the only test that installs a subscriber");
    let served = Served::start(|_, config| {
        config.connections.tls_handshake_timeout_seconds = 1;
        config.connections.header_read_timeout_seconds = 3;
        config.connections.idle_timeout_seconds = 5;
        config.connections.max_connections = 100;
        config.connections.max_connections_per_source = 64;
    })
    .await;

    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..SLOW {
        match served.tls_connect(b"http/1.1").await {
            Ok(mut stream) => {
                let sent = stream
                    .write_all(b"POST /v1/challenges HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    .await;
                if sent.is_ok() && stream.flush().await.is_ok() {
                    held.push(stream);
                } else {
                    refused += 1;
                }
            }
            Err(_) => refused += 1,
        }
    }
    // A connection over a cap is closed at once: find those among the ones that seemed to get in.
    let mut open = Vec::new();
    for mut stream in held {
        if closed_within(&mut stream, Duration::from_millis(20)).await {
            refused += 1;
        } else {
            open.push(stream);
        }
    }
    println!(
        "{SLOW} half-sent requests in {:?}: {} held, {refused} refused",
        started.elapsed(),
        open.len()
    );
    assert!(
        open.len() <= 64,
        "{} slow connections from one source are held (cap 64)",
        open.len()
    );
    assert!(!open.is_empty(), "the first connections get in");
    // The refusals are logged, once per 10 s, with their count: not once per connection.
    let warnings = log.lines_with("connection limit reached");
    println!("{warnings:#?}");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("refused=1"), "{warnings:#?}");

    // Meanwhile a worker's client on another address is served, over either protocol.
    for version in [Http::One, Http::Two] {
        let asked = Instant::now();
        let reply = served
            .client(version, OTHER_SOURCE)
            .post(served.url(wire::PATH_CHALLENGES))
            .json(&serde_json::json!({"device": "kiosk-07"}))
            .send()
            .await
            .expect("a normal request is answered during the flood");
        assert_eq!(reply.status().as_u16(), 201, "{version:?}");
        println!(
            "{version:?} challenge during the flood: {:?}",
            asked.elapsed()
        );
    }

    // The slow ones are closed by the header time-out (3 s from their start; 5 s allowed).
    let waiting = Instant::now();
    let mut still_open = 0;
    for mut stream in open {
        let left = Duration::from_secs(5).saturating_sub(waiting.elapsed());
        if !closed_within(&mut stream, left.max(Duration::from_millis(10))).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "slow connections outlived the header time-out"
    );
    println!(
        "all slow connections closed {:?} after the flood",
        waiting.elapsed()
    );

    // A TCP connection that never starts TLS is dropped by the handshake time-out.
    let mut silent = TcpStream::connect(served.address).await.expect("connects");
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "a silent TCP connection outlived the TLS handshake time-out"
    );
    let handshakes = log.lines_with("during the TLS handshake");
    assert!(
        handshakes
            .iter()
            .any(|line| line.contains("timed_out=true")),
        "{handshakes:#?}"
    );
    // An HTTP/2 connection that sends its preface and no request is closed too.
    let mut h2 = served.tls_connect(b"h2").await.expect("an h2 connection");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("the preface is sent");
    assert!(
        closed_within(&mut h2, Duration::from_secs(6)).await,
        "an HTTP/2 connection without a request outlived the header time-out"
    );

    // The flood over, the flooding address is served again.
    let reply = served
        .client(Http::One, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .get(served.url(wire::PATH_LIVE))
        .send()
        .await
        .expect("answered after the flood");
    assert_eq!(reply.status().as_u16(), 200);
}

/// Handlers can read the client's address (`ConnectInfo<SocketAddr>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_the_client_address() {
    use axum::extract::ConnectInfo;
    let router = axum::Router::new().route(
        "/who",
        axum::routing::get(|ConnectInfo(client): ConnectInfo<SocketAddr>| async move {
            client.ip().to_string()
        }),
    );
    let handle = Handle::new();
    let listener = Listener::PlainLoopback {
        address: "127.0.0.1:0".parse().expect("an address"),
    };
    let limits = pivtap_server::connections::ConnectionLimits::default();
    let serving = handle.clone();
    tokio::spawn(async move {
        server::serve_router(router, listener, serving, &limits, Default::default()).await
    });
    let address = handle.listening().await.expect("listens");
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(OTHER_SOURCE, 0))
        .expect("binds 127.0.0.2");
    let mut stream = socket.connect(address).await.expect("connects");
    stream
        .write_all(b"GET /who HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("sends");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("127.0.0.2"), "{answer}");
    handle.shutdown();
}

async fn get(client: &reqwest::Client, url: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = client.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// `/metrics` is not on the public listener by default; a credential or a
/// separate loopback listener serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_not_public_unless_configured() {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let by_default = Served::start(|_, _| {}).await;
    let client = by_default.client(Http::One, localhost);
    let (status, body) = get(&client, &by_default.url(wire::PATH_METRICS), None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");
    assert!(!body.contains("pivtap_requests_total"), "{body}");

    let port = free_port();
    let guarded = Served::start(|dir, config| {
        std::fs::write(dir.join("metrics.token"), "metrics-credential-0123456789\n")
            .expect("the token file is written");
        config.metrics.token_file = Some(dir.join("metrics.token"));
        config.metrics.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    })
    .await;
    let client = guarded.client(Http::Two, localhost);
    let public = guarded.url(wire::PATH_METRICS);
    assert_eq!(get(&client, &public, None).await.0, 404);
    assert_eq!(get(&client, &public, Some("wrong-credential")).await.0, 404);
    let (status, body) = get(&client, &public, Some("metrics-credential-0123456789")).await;
    assert_eq!(status, 200);
    assert!(body.contains("pivtap_requests_total"), "{body}");

    let plain = reqwest::Client::new();
    let loopback = format!("http://127.0.0.1:{port}{}", wire::PATH_METRICS);
    assert_eq!(get(&plain, &loopback, None).await.0, 401);
    let (status, body) = get(&plain, &loopback, Some("metrics-credential-0123456789")).await;
    assert_eq!(status, 200);
    assert!(body.contains("pivtap_requests_total"), "{body}");
    let other = format!("http://127.0.0.1:{port}{}", wire::PATH_JWKS);
    assert_eq!(
        get(&plain, &other, None).await.0,
        404,
        "only /metrics there"
    );

    let port = free_port();
    let loopback_only = Served::start(|_, config| {
        config.metrics.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    })
    .await;
    let client = loopback_only.client(Http::One, localhost);
    assert_eq!(
        get(&client, &loopback_only.url(wire::PATH_METRICS), None)
            .await
            .0,
        404
    );
    let loopback = format!("http://127.0.0.1:{port}{}", wire::PATH_METRICS);
    let (status, body) = get(&plain, &loopback, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("pivtap_requests_total"), "{body}");
}

/// Triggers that make every write the server does fail, as a read-only or full
/// database would (file modes do not stop root, who runs CI).
const REFUSE_WRITES: &str = "
    CREATE TRIGGER refuse_heartbeat_insert BEFORE INSERT ON heartbeat
    BEGIN SELECT RAISE(ABORT, 'the test made the database read-only'); END;
    CREATE TRIGGER refuse_heartbeat_update BEFORE UPDATE ON heartbeat
    BEGIN SELECT RAISE(ABORT, 'the test made the database read-only'); END;
    CREATE TRIGGER refuse_challenges BEFORE INSERT ON challenges
    BEGIN SELECT RAISE(ABORT, 'the test made the database read-only'); END;
    CREATE TRIGGER refuse_audit BEFORE INSERT ON audit
    BEGIN SELECT RAISE(ABORT, 'the test made the database read-only'); END;
";
const ALLOW_WRITES: &str = "
    DROP TRIGGER refuse_heartbeat_insert;
    DROP TRIGGER refuse_heartbeat_update;
    DROP TRIGGER refuse_challenges;
    DROP TRIGGER refuse_audit;
";

/// While nothing can be written, readiness (`/readyz`, `/healthz`) says 503
/// and liveness 200; once writes work again, readiness is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_whether_the_database_can_be_written() {
    let served = Served::start(|_, _| {}).await;
    let client = served.client(Http::One, IpAddr::V4(Ipv4Addr::LOCALHOST));
    for path in [wire::PATH_LIVE, wire::PATH_READY, wire::PATH_HEALTH] {
        assert_eq!(get(&client, &served.url(path), None).await.0, 200, "{path}");
    }
    let database = rusqlite::Connection::open(&served.config.database).expect("opens");
    database.execute_batch(REFUSE_WRITES).expect("the triggers");
    tokio::time::sleep(server::READINESS_CACHE + Duration::from_millis(100)).await;

    let challenge = client
        .post(served.url(wire::PATH_CHALLENGES))
        .json(&serde_json::json!({"device": "kiosk-07"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        challenge.status().as_u16(),
        500,
        "no challenge can be stored"
    );
    for path in [wire::PATH_READY, wire::PATH_HEALTH] {
        let (status, body) = get(&client, &served.url(path), None).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body.contains("\"unavailable\""), "{path}: {body}");
    }
    assert_eq!(
        get(&client, &served.url(wire::PATH_LIVE), None).await.0,
        200
    );

    database
        .execute_batch(ALLOW_WRITES)
        .expect("the triggers go");
    tokio::time::sleep(server::READINESS_CACHE + Duration::from_millis(100)).await;
    for path in [wire::PATH_READY, wire::PATH_HEALTH] {
        assert_eq!(get(&client, &served.url(path), None).await.0, 200, "{path}");
    }
}

/// Readiness probes are answered from a cache for a second: a burst of 200
/// costs the store's writer a write or two, not 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_probes_do_not_load_the_writer() {
    let served = Served::start(|_, _| {}).await;
    let client = served.client(Http::Two, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(
        get(&client, &served.url(wire::PATH_READY), None).await.0,
        200
    );
    let database = rusqlite::Connection::open(&served.config.database).expect("opens");
    database
        .execute_batch(
            "CREATE TABLE heartbeat_log (at TEXT NOT NULL);
             CREATE TRIGGER log_heartbeat AFTER UPDATE ON heartbeat
             BEGIN INSERT INTO heartbeat_log VALUES (NEW.at); END;",
        )
        .expect("the counting trigger");
    let started = Instant::now();
    let url = served.url(wire::PATH_READY);
    let probes = (0..200).map(|_| get(&client, &url, None));
    let statuses = futures_util::future::join_all(probes).await;
    let took = started.elapsed();
    assert!(statuses.iter().all(|(status, _)| *status == 200));
    let writes: i64 = database
        .query_row("SELECT count(*) FROM heartbeat_log", [], |row| row.get(0))
        .expect("a count");
    println!("200 readiness probes in {took:?}: {writes} heartbeat writes");
    assert!(
        writes <= i64::try_from(took.as_secs()).unwrap_or(i64::MAX) + 2,
        "{writes} writes for 200 probes in {took:?}"
    );
}

/// A database that cannot be written stops the server at start, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_written_stops_the_start() {
    let (_dir, config, _) = init_directory();
    // The first start creates the database; then writes are refused.
    drop(server::from_config(&config).await.expect("the first start"));
    let database = rusqlite::Connection::open(&config.database).expect("opens");
    database.execute_batch(REFUSE_WRITES).expect("the triggers");
    drop(database);
    match server::from_config(&config).await {
        Err(error @ StartError::DatabaseNotWritable { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(&config.database.display().to_string()),
                "{message}"
            );
            assert!(message.contains("cannot be written"), "{message}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("the server started on a database it cannot write"),
    }
}
