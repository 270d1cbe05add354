//! Durability of the server: stopped and restarted in the middle of a tap, and a server process killed with SIGKILL under sign-in load, then started again on the same database.
//!
//! What must hold: every sign-in a client saw succeed is in the audit log after the restart;
//! no nonce is ever accepted twice (replays after the restart are refused, and the audit log
//! never shows two successful sign-ins for one nonce); SQLite's `PRAGMA integrity_check` says
//! `ok`.
//!
//! The killed server is a separate process running the same code as `pivtap server run`
//! (`server::from_config` then `server::serve`, multi-threaded runtime): this test binary
//! started again with only the ignored [`server_process`] test selected and the server
//! configuration in [`CHILD_CONFIG`]. Its output goes to `target/test-logs/durability/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pivtap_client::client::{AuditFilter, Client, ClientError, ServerTrust};
use pivtap_protocol::wire::ErrorCode;
use pivtap_server::config::ServerConfig;
use pivtap_testkit::badge::{ALICE, BOB, Badge, CAROL};
use pivtap_testkit::free_port;
use pivtap_testkit::server::{
    admin_token, init_directory_listening, install_crypto_provider, with_badge_users,
};

/// The environment variable that makes [`server_process`] serve this configuration.
const CHILD_CONFIG: &str = "PIVTAP_DURABILITY_SERVER_CONFIG";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The SIGKILL comes once the clients saw this many sign-ins (the audit, a challenge and a
/// sign-in event each, is read back in one page of 1000).
const SIGNINS_BEFORE_KILL: usize = 150;
/// Characters of the nonce the audit log records.
const AUDIT_NONCE_PREFIX: usize = 8;

/// Where this suite's captured output goes (the secret scan reads it).
fn log_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-logs/durability");
    std::fs::create_dir_all(&dir).expect("the log directory can be made");
    dir
}

/// The badges signing in under load.
const CARDS: [Badge; 3] = [ALICE, BOB, CAROL];

fn refusal_code<T: std::fmt::Debug>(result: &Result<T, ClientError>) -> Option<ErrorCode> {
    match result {
        Err(ClientError::Refused { code, .. }) => Some(*code),
        _ => None,
    }
}

/// The child process: serves [`CHILD_CONFIG`] exactly as `pivtap server run` does, until killed.
#[test]
#[ignore = "the server process of the SIGKILL test; that test starts it, it never runs alone"]
fn server_process() {
    let config = std::env::var_os(CHILD_CONFIG)
        .map(PathBuf::from)
        .expect("PIVTAP_DURABILITY_SERVER_CONFIG names the server configuration");
    install_crypto_provider();
    let configuration = ServerConfig::load(&config).expect("server.toml loads");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the runtime starts");
    runtime.block_on(async {
        let (state, listener) = pivtap_server::server::from_config(&configuration)
            .await
            .expect("the server state builds");
        println!("pivtap server listening on {}", configuration.origin);
        pivtap_server::server::serve(state, listener, std::future::pending())
            .await
            .expect("the server serves");
    });
}

/// A server process on `config`, its output appended to `log`.
struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    fn start(config: &Path, log: &Path) -> Self {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the log file opens");
        let child = Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--exact", "server_process", "--ignored", "--nocapture"])
            .env(CHILD_CONFIG, config)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("the log file"))
            .stderr(output)
            .spawn()
            .expect("the server process starts");
        ServerProcess { child }
    }

    fn kill(&mut self) {
        // `Child::kill` is SIGKILL on Unix: no shutdown code runs.
        self.child.kill().expect("SIGKILL is delivered");
        self.child.wait().expect("the killed server is reaped");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until_up(client: &Client) {
    let started = Instant::now();
    while client.jwks().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server process did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one load worker saw.
#[derive(Default)]
struct Seen {
    /// Assertions the server accepted (the client got a token).
    accepted: Vec<String>,
    /// Assertions sent whose answer never came (the server died meanwhile).
    unanswered: Vec<String>,
}

fn nonce_of(assertion: &str) -> String {
    let payload = assertion.split('.').nth(1).expect("a compact JWS");
    let bytes = pivtap_protocol::jose::base64url_decode(payload).expect("base64url");
    let payload: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    payload["nonce"].as_str().expect("a nonce").to_owned()
}

/// Registers `device` through the admin API and enrolls it over HTTPS as a kiosk would;
/// answers `client` signing its challenge requests as that device.
async fn as_enrolled_device(client: Client, admin_token: &str, device: &str) -> Client {
    let code = client
        .admin(admin_token)
        .add_device(device, None)
        .await
        .expect("the device is registered")
        .code;
    let (key, certificate) = client
        .enroll_new_device(&code)
        .await
        .expect("the device enrolls");
    let credential =
        pivtap_client::device::DeviceCredential::from_parts(&key.key_pem, &certificate)
            .expect("a credential");
    client.with_device_credential(Arc::new(credential))
}

/// Signs in with `card` in a loop until the server stops answering.
async fn load(
    client: Client,
    card: Badge,
    device: String,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::SeqCst) {
        let Ok(challenge) = client.challenge(&device).await else {
            break;
        };
        let device_id = device.clone();
        let assertion = tokio::task::spawn_blocking(move || card.assertion(&challenge, &device_id))
            .await
            .expect("the card signs");
        match client.sign_in(&assertion).await {
            Ok(answer) => {
                assert_eq!(answer.user.id, card.user_id);
                seen.accepted.push(assertion);
                total.fetch_add(1, Ordering::SeqCst);
            }
            Err(ClientError::Refused { code, message, .. }) => {
                panic!("{} refused under load: {code}: {message}", card.name)
            }
            Err(_) => {
                seen.unanswered.push(assertion);
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_load_loses_no_sign_in_and_accepts_no_nonce_twice() {
    install_crypto_provider();
    let port = free_port();
    let (_dir, report) =
        init_directory_listening(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let mut config = ServerConfig::load(&report.config_path).expect("server.toml loads");
    // Replays are refused on purpose below: the failure delays, and the budgets of the one
    // loopback address every worker sends from, must not get in their way.
    config.rate_limit.failures_before_delay = 100_000;
    config.rate_limit.refusal_burst = 1_000_000;
    config.rate_limit.challenge_burst = 1_000_000;
    std::fs::write(
        &report.config_path,
        config.to_toml().expect("the configuration serialises"),
    )
    .expect("server.toml is written");
    assert_eq!(config.origin, format!("https://127.0.0.1:{port}"));
    let log = log_dir().join(format!("server-{port}.log"));
    let trust = || ServerTrust::from_pem_file(&report.certificate_path).expect("tls.crt");
    let client = Client::new(&config.origin, trust(), CLIENT_TIMEOUT).expect("a client");
    let admin_token = admin_token(&report);

    let mut server = ServerProcess::start(&report.config_path, &log);
    wait_until_up(&client).await;
    for card in CARDS {
        client
            .admin(&admin_token)
            .add_user(&card.user_record())
            .await
            .expect("the user is added");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (index, card) in CARDS.iter().enumerate() {
        let device = format!("load-{index}");
        let client = Client::new(&config.origin, trust(), CLIENT_TIMEOUT).expect("a client");
        let client = as_enrolled_device(client, &admin_token, &device).await;
        workers.push(tokio::spawn(load(
            client,
            *card,
            device,
            Arc::clone(&stop),
            Arc::clone(&total),
        )));
    }
    let started = Instant::now();
    while total.load(Ordering::SeqCst) < SIGNINS_BEFORE_KILL {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {} sign-ins in 120 s",
            total.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    stop.store(true, Ordering::SeqCst);
    let mut accepted = Vec::new();
    let mut unanswered = Vec::new();
    for worker in workers {
        let seen = worker.await.expect("a load worker ends");
        accepted.extend(seen.accepted);
        unanswered.extend(seen.unanswered);
    }
    assert!(
        accepted.len() >= 10,
        "too little load before the kill: {} sign-ins",
        accepted.len()
    );
    eprintln!(
        "killed under load: {} sign-ins seen, {} unanswered",
        accepted.len(),
        unanswered.len()
    );

    let mut server = ServerProcess::start(&report.config_path, &log);
    wait_until_up(&client).await;
    let admin = client.admin(&admin_token);
    let ok_signins = |events: Vec<pivtap_protocol::wire::AuditRecord>| -> Vec<String> {
        events
            .into_iter()
            .filter(|event| event.kind == "assertion" && event.outcome == "ok")
            .map(|event| event.detail.unwrap_or_default())
            .collect()
    };
    let filter = AuditFilter {
        outcome: Some("ok".to_owned()),
        limit: Some(1000),
        ..AuditFilter::default()
    };
    let recorded = ok_signins(admin.audit(&filter).await.expect("the audit answers"));
    for assertion in &accepted {
        let prefix = &nonce_of(assertion)[..AUDIT_NONCE_PREFIX];
        assert_eq!(
            recorded
                .iter()
                .filter(|detail| detail.contains(prefix))
                .count(),
            1,
            "a sign-in the client saw is audited once (nonce {prefix}…)"
        );
    }
    assert!(
        recorded.len() <= accepted.len() + unanswered.len(),
        "{} audited, {} seen, {} unanswered",
        recorded.len(),
        accepted.len(),
        unanswered.len()
    );

    // Replays after the restart: what was accepted is refused; an unanswered one is
    // accepted at most once, and only if it was not accepted before the kill.
    for assertion in &accepted {
        let replay = client.sign_in(assertion).await;
        assert_eq!(
            refusal_code(&replay),
            Some(ErrorCode::ChallengeReused),
            "{replay:?}"
        );
    }
    for assertion in &unanswered {
        let prefix = &nonce_of(assertion)[..AUDIT_NONCE_PREFIX];
        let before = recorded.iter().any(|detail| detail.contains(prefix));
        let replay = client.sign_in(assertion).await;
        match refusal_code(&replay) {
            None if !before => {
                assert!(replay.is_ok(), "{replay:?}");
            }
            Some(ErrorCode::ChallengeReused) => {}
            _ => panic!("an unanswered assertion replayed: {replay:?} (audited before: {before})"),
        }
        let again = client.sign_in(assertion).await;
        assert_eq!(refusal_code(&again), Some(ErrorCode::ChallengeReused));
    }
    let recorded = ok_signins(admin.audit(&filter).await.expect("the audit answers"));
    let mut nonces: Vec<&str> = recorded
        .iter()
        .filter_map(|detail| detail.strip_prefix("nonce "))
        .collect();
    assert_eq!(
        nonces.len(),
        recorded.len(),
        "every sign-in names its nonce"
    );
    nonces.sort_unstable();
    let total = nonces.len();
    nonces.dedup();
    assert_eq!(nonces.len(), total, "no nonce was accepted twice");

    // The restarted server still signs in, then the database is checked closed.
    let client = as_enrolled_device(client, &admin_token, "after-restart").await;
    let challenge = client
        .challenge("after-restart")
        .await
        .expect("a challenge");
    let assertion = CARDS[0].assertion(&challenge, "after-restart");
    client
        .sign_in(&assertion)
        .await
        .expect("a sign-in after the restart");
    server.kill();
    assert_eq!(integrity(&config.database).await, ["ok"]);
}

/// `PRAGMA integrity_check` and `PRAGMA foreign_key_check` of the SQLite database at `path`.
async fn integrity(path: &Path) -> Vec<String> {
    let connection =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the database opens");
    let mut foreign_key_check = connection
        .prepare("PRAGMA foreign_key_check")
        .expect("foreign_key_check prepares");
    let dangling = foreign_key_check
        .query_map([], |_| Ok(()))
        .expect("foreign_key_check runs")
        .count();
    assert_eq!(dangling, 0, "{dangling} dangling references");
    let mut integrity_check = connection
        .prepare("PRAGMA integrity_check")
        .expect("integrity_check prepares");
    integrity_check
        .query_map([], |row| row.get(0))
        .expect("integrity_check runs")
        .collect::<Result<_, _>>()
        .expect("integrity_check answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_tap_takes_the_assertion_once() {
    install_crypto_provider();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let alice = CARDS[0];
    let mut server = with_badge_users(dir.path(), &[alice]).await;
    let client = server
        .device_client("kiosk-07", Duration::from_secs(2))
        .await
        .expect("a client");

    // The tap: challenge, then the server goes away while the card signs.
    let challenge = client.challenge("kiosk-07").await.expect("a challenge");
    server.stop();
    let assertion = alice.assertion(&challenge, "kiosk-07");
    let started = Instant::now();
    while client.jwks().await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the server never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lost = client.sign_in(&assertion).await;
    assert!(
        matches!(lost, Err(ref error) if refusal_code(&lost).is_none() && !matches!(error, ClientError::Refused { .. })),
        "the stopped server answered: {lost:?}"
    );
    server.restart().await.expect("the server restarts");
    wait_until_up(&client).await;
    // The challenge outlived the restart (it is in the database): the tap completes once.
    let answer = client
        .sign_in(&assertion)
        .await
        .expect("the restarted server takes the assertion");
    assert_eq!(answer.user.id, "alice");
    let replay = client.sign_in(&assertion).await;
    assert_eq!(refusal_code(&replay), Some(ErrorCode::ChallengeReused));

    // Restarted again right after the sign-in: the nonce stays used.
    server.restart().await.expect("the server restarts again");
    // A connection pooled from before the restart may fail once: wait until the server answers.
    wait_until_up(&client).await;
    let replay = client.sign_in(&assertion).await;
    assert_eq!(refusal_code(&replay), Some(ErrorCode::ChallengeReused));
    let events = server
        .state
        .store()
        .query_audit(&pivtap_server::store::AuditQuery {
            outcome: Some(pivtap_server::store::AuditOutcome::Ok),
            limit: 100,
            ..pivtap_server::store::AuditQuery::default()
        })
        .await
        .expect("the audit answers");
    assert_eq!(
        events
            .iter()
            .filter(|event| event.kind == pivtap_server::store::AuditKind::Assertion)
            .count(),
        1,
        "one sign-in"
    );
}
