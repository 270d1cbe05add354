//! End-to-end tests over real HTTPS on loopback: a server started from `init_server`'s directory, the device client, virtual cards signing assertions, and one test per rejection code with the audit event it leaves.
//!
//! Every test starts its own server on a fresh port and database, adds its
//! users through the admin API, and signs in the way a device does:
//! challenge, draft, card signature over the signing input, assertion.
//! Fixture card images are loaded without writing back to them.

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum_server::Handle;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pivtap_client::client::{
    AdminClient, AuditFilter, CardAction, Client, ClientError, FailureKind, NetworkFailure,
    ServerTrust,
};
use pivtap_client::device::DeviceCredential;
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_protocol::jose::{base64url_decode, base64url_encode};
use pivtap_protocol::wire::{
    ASSERTION_TYPE, AssertionResponse, AuditRecord, ChallengeResponse, ErrorCode, UserRecord,
};
use pivtap_server::config::{ConfigError, ConfigProblem, ServerConfig};
use pivtap_server::init::InitReport;
use pivtap_server::server::{self, Listener, ServeError};
use pivtap_server::token::TokenVerifier;
use pivtap_testkit::badge::{ALICE, BOB, Badge, CAROL, EXPIRED, UNTRUSTED};
use pivtap_testkit::forge::{compact, parts};
use pivtap_testkit::server::{admin_token, init_directory, install_crypto_provider, user_record};
use pivtap_testkit::{fixture, free_port};
use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;

type TestResult = Result<(), Box<dyn Error>>;

/// How long a client waits for the server.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Ports tried before giving up (see [`TestServer::start_with`]).
const PORT_ATTEMPTS: usize = 5;
/// The device most tests sign in on.
const KIOSK: &str = "kiosk-07";

/// A server running in this process, from a directory written by `init_server`.
struct TestServer {
    _dir: TempDir,
    report: InitReport,
    config: ServerConfig,
    client: Client,
    admin_token: String,
    handle: Handle<SocketAddr>,
    state: server::ServerState,
    /// The devices registered so far (on first use), with their credentials.
    devices: tokio::sync::Mutex<std::collections::HashMap<String, Arc<DeviceCredential>>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// A refused request, as the client reports it.
#[derive(Debug)]
struct Refusal {
    status: u16,
    message: String,
    retry_after: Option<Duration>,
}

/// Unwraps a refusal with code `expected`, failing on anything else.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>, expected: ErrorCode) -> Refusal {
    match result {
        Err(ClientError::Refused {
            status,
            code,
            message,
            retry_after,
        }) => {
            assert_eq!(code, expected, "refused with {code}: {message}");
            Refusal {
                status,
                message,
                retry_after,
            }
        }
        other => panic!("expected a refusal with {expected}, got {other:?}"),
    }
}

impl TestServer {
    /// A server with the configuration `init_server` writes.
    async fn start() -> Self {
        Self::start_with(|_, _| {}).await
    }

    /// A server whose loaded configuration `adjust` changes first (it gets
    /// the server directory, for files such as a CRL).
    ///
    /// The origin (the assertions' `aud`, the tokens' `iss`) must name the
    /// real port before the state is built, so the port is chosen first: a
    /// free one is found by binding port 0 and letting go of it, and the
    /// server then binds it. Another process could take the port in between;
    /// then the bind fails and the next attempt takes another port.
    async fn start_with(adjust: impl FnOnce(&Path, &mut ServerConfig)) -> Self {
        install_crypto_provider();
        let (dir, report) = init_directory();
        let mut configured = ServerConfig::load(&report.config_path).expect("server.toml loads");
        adjust(dir.path(), &mut configured);
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut config = configured.clone();
            config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let scheme = if config.plain_http { "http" } else { "https" };
            config.origin = format!("{scheme}://127.0.0.1:{port}");
            config
                .validate(&report.config_path)
                .expect("the adjusted configuration is valid");
            let (state, listener) = server::from_config(&config)
                .await
                .expect("the server state builds");
            let handle = Handle::new();
            let task = tokio::spawn(server::serve_with_handle(
                state.clone(),
                listener,
                handle.clone(),
            ));
            let listening = tokio::time::timeout(START_TIMEOUT, handle.listening()).await;
            if let Ok(Some(address)) = listening {
                assert_eq!(address.port(), port);
                let trust = ServerTrust::from_pem_file(&report.certificate_path)
                    .expect("tls.crt is a PEM certificate");
                let client =
                    Client::new(&config.origin, trust, CLIENT_TIMEOUT).expect("the client builds");
                let admin_token = admin_token(&report);
                return TestServer {
                    _dir: dir,
                    report,
                    config,
                    client,
                    admin_token,
                    handle,
                    state,
                    devices: tokio::sync::Mutex::default(),
                };
            }
            task.abort();
            match task.await {
                Ok(Err(ServeError::Io { source, .. }))
                    if source.kind() == std::io::ErrorKind::AddrInUse => {}
                other => panic!("the server did not start: {other:?}"),
            }
        }
        panic!("no free port on 127.0.0.1 after {PORT_ATTEMPTS} attempts");
    }

    fn admin(&self) -> AdminClient<'_> {
        self.client.admin(&self.admin_token)
    }

    async fn add_user(&self, user: &UserRecord) {
        let added = self
            .admin()
            .add_user(user)
            .await
            .expect("the user is added");
        assert_eq!(added.id, user.id);
    }

    /// A challenge for `device` and the card's assertion answering it.
    async fn assertion(&self, card: &Badge, device: &str) -> String {
        let challenge = self.challenge(device).await;
        card.signed(&card.draft(&challenge, device))
    }

    /// The credential of `device`, registered and enrolled on first use.
    async fn device_credential(&self, device: &str) -> Arc<DeviceCredential> {
        let mut devices = self.devices.lock().await;
        if let Some(credential) = devices.get(device) {
            return Arc::clone(credential);
        }
        let credential = Arc::new(
            server::devices::credential_locally(&self.state, device)
                .await
                .expect("the device is registered"),
        );
        devices.insert(device.to_owned(), Arc::clone(&credential));
        credential
    }

    /// `client` signing its challenge requests as `device`.
    async fn as_device(&self, client: &Client, device: &str) -> Client {
        client
            .clone()
            .with_device_credential(self.device_credential(device).await)
    }

    async fn challenge(&self, device: &str) -> ChallengeResponse {
        self.as_device(&self.client, device)
            .await
            .challenge(device)
            .await
            .expect("the server issues a challenge")
    }

    /// One whole sign-in on `device` with `card`.
    async fn sign_in(&self, card: &Badge, device: &str) -> Result<AssertionResponse, ClientError> {
        let assertion = self.assertion(card, device).await;
        self.client.sign_in(&assertion).await
    }

    async fn audit(&self, filter: AuditFilter) -> Vec<AuditRecord> {
        self.admin()
            .audit(&filter)
            .await
            .expect("the audit log answers")
    }

    /// The newest assertion event of the audit log.
    async fn last_assertion_event(&self) -> AuditRecord {
        self.audit(AuditFilter::default())
            .await
            .into_iter()
            .find(|event| event.kind == "assertion")
            .expect("an assertion was audited")
    }

    /// Checks that the newest assertion event records `outcome` for `card` on `device`.
    async fn assert_audited(&self, outcome: ErrorCode, card: &Badge, device: &str) {
        let event = self.last_assertion_event().await;
        assert_eq!(event.outcome, outcome.as_str(), "{event:?}");
        assert_eq!(event.device.as_deref(), Some(device), "{event:?}");
        assert_eq!(event.card_serial, Some(card.serial()), "{event:?}");
    }

    /// Checks that the newest assertion event is `card`'s successful sign-in on [`KIOSK`].
    async fn assert_audited_ok(&self, card: &Badge) {
        let event = self.last_assertion_event().await;
        assert_eq!(event.outcome, "ok", "{event:?}");
        assert_eq!(event.user_id.as_deref(), Some(card.user_id), "{event:?}");
        assert_eq!(event.device.as_deref(), Some(KIOSK), "{event:?}");
        assert_eq!(event.card_serial, Some(card.serial()), "{event:?}");
    }
}

/// Signs in with `card` and checks the answer, the token's claims and the audit event.
async fn assert_signs_in(card: &Badge) -> TestResult {
    let server = TestServer::start().await;
    server.add_user(&card.user_record()).await;
    let challenge = server.challenge(KIOSK).await;
    assert_eq!(challenge.aud, server.config.origin);
    let draft = card.draft(&challenge, KIOSK);
    let signed_in = server.client.sign_in(&card.signed(&draft)).await?;

    assert_eq!(signed_in.token_type, "Bearer");
    assert_eq!(signed_in.user.id, card.user_id);
    assert_eq!(signed_in.user.display_name, card.display_name);
    assert_eq!(signed_in.user.mail.as_deref(), Some(card.mail));

    let verifier = TokenVerifier::from_jwks(&server.client.jwks().await?)?;
    let claims = verifier.verify(&signed_in.token, OffsetDateTime::now_utc())?;
    assert_eq!(claims.sub, card.user_id);
    assert_eq!(claims.name, card.display_name);
    assert_eq!(claims.email.as_deref(), Some(card.mail));
    assert_eq!(claims.amr, ["hwk", "sc", "pin"]);
    assert_eq!(claims.device, KIOSK);
    assert_eq!(claims.aud, server.config.tokens.audience);
    assert_eq!(claims.aud, "pivtap");
    assert_eq!(claims.iss, server.config.origin);
    assert_eq!(
        u64::try_from(claims.exp - claims.iat)?,
        signed_in.expires_in
    );
    assert_eq!(signed_in.expires_in, server.config.tokens.lifetime_seconds);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - 60..=now).contains(&claims.iat), "iat {}", claims.iat);

    // Issue 15: the sign-in's session is stored with it: the token's sid, the card's amr,
    // the configured maximum age, and the kiosk's refresh token (its hash only).
    assert_eq!(claims.sid, signed_in.session_id);
    assert_eq!(signed_in.session_expires_in, 12 * 3600);
    let store = server.state.store();
    let session = store
        .get_session(&signed_in.session_id)
        .await?
        .ok_or("the session is stored")?;
    assert_eq!(
        (session.user_id.as_str(), session.device.as_str()),
        (card.user_id, KIOSK)
    );
    assert_eq!(session.amr, claims.amr);
    assert_eq!(session.created_at.unix_timestamp(), claims.iat);
    assert_eq!(
        session.expires_at - session.created_at,
        time::Duration::hours(12)
    );
    assert!(session.is_active(OffsetDateTime::now_utc()));
    let refreshed = store
        .use_refresh_token(
            &pivtap_server::store::secret_hash(&signed_in.refresh_token),
            pivtap_server::store::KIOSK_CLIENT_ID,
            &pivtap_server::store::secret_hash("the next one"),
            OffsetDateTime::now_utc(),
        )
        .await?;
    assert!(
        matches!(refreshed, pivtap_server::store::RefreshUse::Rotated { .. }),
        "{refreshed:?}"
    );

    server.assert_audited_ok(card).await;
    // The audit log keeps neither the tokens nor the whole nonce.
    let everything = serde_json::to_string(&server.audit(AuditFilter::default()).await)?;
    assert!(!everything.contains(&signed_in.token));
    assert!(!everything.contains(&signed_in.refresh_token));
    assert!(!everything.contains(&challenge.nonce));
    assert!(everything.contains(&challenge.nonce[..8]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_2048_card_signs_in() -> TestResult {
    assert_signs_in(&ALICE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p256_card_signs_in() -> TestResult {
    assert_signs_in(&BOB).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_assertion_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    let assertion = server.assertion(&ALICE, KIOSK).await;
    server
        .client
        .sign_in(&assertion)
        .await
        .expect("the first use signs in");
    let refusal = refused(
        server.client.sign_in(&assertion).await,
        ErrorCode::ChallengeReused,
    );
    assert_eq!(refusal.status, 401);
    server
        .assert_audited(ErrorCode::ChallengeReused, &ALICE, KIOSK)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_challenge_is_refused() {
    let server = TestServer::start_with(|_, config| config.challenges.lifetime_seconds = 1).await;
    server.add_user(&ALICE.user_record()).await;
    let challenge = server.challenge(KIOSK).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let assertion = ALICE.signed(&ALICE.draft(&challenge, KIOSK));
    refused(
        server.client.sign_in(&assertion).await,
        ErrorCode::ChallengeExpired,
    );
    server
        .assert_audited(ErrorCode::ChallengeExpired, &ALICE, KIOSK)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_from_another_device_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    let challenge = server.challenge("kiosk-01").await;
    let assertion = ALICE.signed(&ALICE.draft(&challenge, "kiosk-02"));
    refused(
        server.client.sign_in(&assertion).await,
        ErrorCode::ChallengeUnknown,
    );
    server
        .assert_audited(ErrorCode::ChallengeUnknown, &ALICE, "kiosk-02")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_the_server_never_issued_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    let mut challenge = server.challenge(KIOSK).await;
    challenge.nonce = base64url_encode([0x5a; 32]);
    let assertion = ALICE.signed(&ALICE.draft(&challenge, KIOSK));
    refused(
        server.client.sign_in(&assertion).await,
        ErrorCode::ChallengeUnknown,
    );
    server
        .assert_audited(ErrorCode::ChallengeUnknown, &ALICE, KIOSK)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    let draft = ALICE.draft(&server.challenge(KIOSK).await, KIOSK);
    let header = json!({"alg": "none", "typ": ASSERTION_TYPE, "x5c": draft.header.x5c});
    let unsigned = compact(&header, &serde_json::to_value(&draft.payload).unwrap(), &[]);
    let refusal = refused(
        server.client.sign_in(&unsigned).await,
        ErrorCode::InvalidRequest,
    );
    assert!(refusal.message.contains("alg"), "{}", refusal.message);
    assert_eq!(
        server.last_assertion_event().await.outcome,
        "invalid_request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_keyed_with_the_certificates_public_key_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    let draft = ALICE.draft_as("HS256", &server.challenge(KIOSK).await, KIOSK);
    let certificate = ALICE.certificate();
    let (_, parsed) = x509_parser::parse_x509_certificate(&certificate).unwrap();
    let spki = parsed.public_key();
    let spki_pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(spki.raw)
    );
    // Every form of the public key an attacker might hope the server keys HMAC with.
    let hmac_keys: [&[u8]; 4] = [
        spki.subject_public_key.data.as_ref(),
        spki.raw,
        spki_pem.as_bytes(),
        &certificate,
    ];
    for hmac_key in hmac_keys {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, hmac_key);
        let tag = aws_lc_rs::hmac::sign(&key, draft.signing_input().as_bytes());
        let forged = draft.finish(tag.as_ref());
        let refusal = refused(
            server.client.sign_in(&forged).await,
            ErrorCode::InvalidRequest,
        );
        assert!(
            refusal.message.contains("alg must be"),
            "{}",
            refusal.message
        );
    }
    assert_eq!(
        server.last_assertion_event().await.outcome,
        "invalid_request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_header_on_a_p256_key_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&BOB.user_record()).await;
    let draft = BOB.draft_as("RS256", &server.challenge(KIOSK).await, KIOSK);
    // The card signs as its key can (ES256); the header claims RS256.
    let signed = draft.finish(&BOB.sign(JwsAlgorithm::Es256, draft.signing_input().as_bytes()));
    let refusal = refused(
        server.client.sign_in(&signed).await,
        ErrorCode::InvalidRequest,
    );
    assert_eq!(
        refusal.message,
        "RS256 cannot be used with the certificate's P-256 key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_from_an_untrusted_ca_is_refused() {
    let server = TestServer::start().await;
    // Even with a user its certificate maps to: the chain is checked first.
    server.add_user(&UNTRUSTED.user_record()).await;
    refused(
        server.sign_in(&UNTRUSTED, KIOSK).await,
        ErrorCode::CertificateUntrusted,
    );
    let event = server.last_assertion_event().await;
    assert_eq!(event.outcome, "certificate_untrusted");
    assert_eq!(event.user_id, None, "no user was looked up: {event:?}");
    assert_eq!(event.card_serial, Some(UNTRUSTED.serial()), "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&EXPIRED.user_record()).await;
    let refusal = refused(
        server.sign_in(&EXPIRED, KIOSK).await,
        ErrorCode::CertificateExpired,
    );
    assert!(refusal.message.contains("validity"), "{}", refusal.message);
    let event = server.last_assertion_event().await;
    assert_eq!(event.outcome, "certificate_expired");
    assert_eq!(event.user_id, None, "{event:?}");
    // The audit still says which device and card tried, marked unverified.
    assert_eq!(event.device.as_deref(), Some(KIOSK), "{event:?}");
    assert_eq!(event.card_serial, Some(EXPIRED.serial()), "{event:?}");
    assert!(
        event.detail.as_deref().unwrap_or("").contains("unverified"),
        "{event:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_card_is_refused_for_good() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    server
        .sign_in(&ALICE, KIOSK)
        .await
        .expect("the card signs in before it is revoked");
    let serial = ALICE.serial();
    let card = server
        .admin()
        .card_action(&serial, CardAction::Revoke)
        .await
        .expect("the recorded card is revoked");
    assert_eq!(card.state, "revoked");
    assert_eq!(card.user_id.as_deref(), Some("alice"));

    refused(
        server.sign_in(&ALICE, KIOSK).await,
        ErrorCode::CertificateRevoked,
    );
    server
        .assert_audited(ErrorCode::CertificateRevoked, &ALICE, KIOSK)
        .await;
    refused(
        server
            .admin()
            .card_action(&serial, CardAction::Unlock)
            .await,
        ErrorCode::Conflict,
    );
    refused(
        server.sign_in(&ALICE, KIOSK).await,
        ErrorCode::CertificateRevoked,
    );
}

/// A CRL signed by the fixture test CA, revoking the certificate `serial` (hex).
fn test_ca_crl(serial: &str) -> Vec<u8> {
    use rcgen::{
        CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams,
        SerialNumber,
    };
    let key = KeyPair::from_pem(&std::fs::read_to_string(fixture("ca/test-ca.key")).unwrap())
        .expect("the test CA key loads");
    let ca = std::fs::read_to_string(fixture("ca/test-ca.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca, key).expect("the test CA certificate loads");
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(1_u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from_slice(&hex::decode(serial).unwrap()),
            revocation_time: now - time::Duration::minutes(5),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .expect("the CRL is signed")
    .der()
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_revoked_by_a_crl_file_is_refused() {
    let revoked_serial = ALICE.serial();
    let server = TestServer::start_with(|dir, config| {
        let crl = dir.join("revoked.crl");
        std::fs::write(&crl, test_ca_crl(&revoked_serial)).unwrap();
        config.trust.crl_files = vec![crl];
    })
    .await;
    server.add_user(&ALICE.user_record()).await;
    server.add_user(&BOB.user_record()).await;
    refused(
        server.sign_in(&ALICE, KIOSK).await,
        ErrorCode::CertificateRevoked,
    );
    assert_eq!(
        server.last_assertion_event().await.outcome,
        "certificate_revoked"
    );
    let bob = server
        .sign_in(&BOB, KIOSK)
        .await
        .expect("a card the CRL does not list signs in");
    assert_eq!(bob.user.id, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_that_cannot_be_recorded_is_not_handed_out_and_is_audited() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    // Another connection to the server's database makes the success's audit event fail:
    // the card's record and the event go in one write, so neither may stay.
    let database = rusqlite::Connection::open(&server.config.database).expect("the database opens");
    database
        .execute_batch(
            "CREATE TRIGGER refuse_sign_ins BEFORE INSERT ON audit
             WHEN NEW.kind = 'assertion' AND NEW.outcome = 'ok'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .expect("the trigger is made");
    let refusal = refused(server.sign_in(&ALICE, KIOSK).await, ErrorCode::Internal);
    assert_eq!(refusal.status, 500);
    server
        .assert_audited(ErrorCode::Internal, &ALICE, KIOSK)
        .await;
    let cards = server.admin().list_cards().await.expect("cards are listed");
    assert!(cards.is_empty(), "no card recorded: {cards:?}");

    database
        .execute_batch("DROP TRIGGER refuse_sign_ins")
        .expect("the trigger goes");
    server
        .sign_in(&ALICE, KIOSK)
        .await
        .expect("the next tap signs in");
    server.assert_audited_ok(&ALICE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_card_is_refused_until_unlocked() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    server
        .sign_in(&ALICE, KIOSK)
        .await
        .expect("the card signs in before it is locked");
    let serial = ALICE.serial();
    let card = server
        .admin()
        .card_action(&serial, CardAction::Lock)
        .await
        .expect("the card is locked");
    assert_eq!(card.state, "locked");
    refused(server.sign_in(&ALICE, KIOSK).await, ErrorCode::CardLocked);
    server
        .assert_audited(ErrorCode::CardLocked, &ALICE, KIOSK)
        .await;
    // Issue 12: the refusal is the user's the card maps to, so `audit --user` finds it.
    let event = server.last_assertion_event().await;
    assert_eq!(event.user_id.as_deref(), Some("alice"), "{event:?}");

    let card = server
        .admin()
        .card_action(&serial, CardAction::Unlock)
        .await
        .expect("the card is unlocked");
    assert_eq!(card.state, "active");
    let signed_in = server
        .sign_in(&ALICE, KIOSK)
        .await
        .expect("an unlocked card signs in");
    assert_eq!(signed_in.user.id, "alice");
    server.assert_audited_ok(&ALICE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_user_is_refused_until_unlocked() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    let user = server
        .admin()
        .set_user_locked("alice", true)
        .await
        .expect("the user is locked");
    assert_eq!(user.state, "locked");
    refused(server.sign_in(&ALICE, KIOSK).await, ErrorCode::UserLocked);
    let event = server.last_assertion_event().await;
    assert_eq!(event.outcome, "user_locked");
    assert_eq!(event.user_id.as_deref(), Some("alice"));

    let user = server
        .admin()
        .set_user_locked("alice", false)
        .await
        .expect("the user is unlocked");
    assert_eq!(user.state, "active");
    server
        .sign_in(&ALICE, KIOSK)
        .await
        .expect("an unlocked user signs in");
    server.assert_audited_ok(&ALICE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_that_maps_to_no_user_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&BOB.user_record()).await;
    let refusal = refused(server.sign_in(&ALICE, KIOSK).await, ErrorCode::UserUnknown);
    assert!(
        refusal.message.contains("no user matches"),
        "{}",
        refusal.message
    );
    server
        .assert_audited(ErrorCode::UserUnknown, &ALICE, KIOSK)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_that_maps_to_two_users_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    // The admin API refuses a second user with alice's mail (issue 11, item 9), but a
    // database from before that check may hold one: put it there directly.
    let duplicate = server
        .admin()
        .add_user(&user_record(
            "alice2",
            "Alice Duplicate",
            "alice@example.com",
        ))
        .await;
    assert!(duplicate.is_err(), "{duplicate:?}");
    rusqlite::Connection::open(&server.config.database)
        .expect("the database opens")
        .execute(
            "INSERT INTO users (id, display_name, mail, state, created_at)
             VALUES ('alice2', 'Alice Duplicate', 'alice@example.com', 'active', '2026-01-01T00:00:00.000000Z')",
            [],
        )
        .expect("the duplicate is inserted");
    let refusal = refused(server.sign_in(&ALICE, KIOSK).await, ErrorCode::UserUnknown);
    assert!(
        refusal.message.contains("more than one"),
        "{}",
        refusal.message
    );
    let event = server.last_assertion_event().await;
    assert_eq!(event.outcome, "user_unknown");
    assert_eq!(event.user_id, None, "no user was chosen: {event:?}");
}

/// Issue 12, the duplicate-attribute trap: a second user with alice's mail (left in a
/// database from before the uniqueness checks) made alice's card fail every sign-in, with
/// nothing in `audit --user alice` and no way out but SQLite. Now the refusal is alice's
/// (the card's last user), and changing the other user's mail lets alice in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duplicate_attribute_trap_is_audited_for_its_victim_and_undone_by_an_update() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    server
        .sign_in(&ALICE, KIOSK)
        .await
        .expect("alice signs in while she alone has her mail");
    rusqlite::Connection::open(&server.config.database)
        .expect("the database opens")
        .execute(
            "INSERT INTO users (id, display_name, mail, state, created_at)
             VALUES ('alice2', 'Alice Duplicate', 'alice@example.com', 'active', '2026-01-01T00:00:00.000000Z')",
            [],
        )
        .expect("the duplicate is inserted");
    refused(server.sign_in(&ALICE, KIOSK).await, ErrorCode::UserUnknown);
    let why = server
        .audit(AuditFilter {
            user: Some("alice".to_owned()),
            kind: Some("sign_in_refused".to_owned()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(why.len(), 1, "{why:?}");
    assert_eq!(why[0].outcome, "user_unknown");

    let change = pivtap_protocol::wire::UserUpdate {
        mail: Some("alice2@example.com".to_owned()),
        ..Default::default()
    };
    let fixed = server
        .admin()
        .update_user("alice2", &change)
        .await
        .expect("the duplicate's mail is changed");
    assert_eq!(fixed.mail.as_deref(), Some("alice2@example.com"));
    let signed_in = server
        .sign_in(&ALICE, KIOSK)
        .await
        .expect("alice signs in again");
    assert_eq!(signed_in.user.id, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_payload_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    let [header, payload, signature] = parts(&server.assertion(&ALICE, KIOSK).await);
    let mut claims: Value = serde_json::from_slice(&base64url_decode(&payload).unwrap()).unwrap();
    claims["device"] = json!("kiosk-99");
    let tampered = format!(
        "{header}.{}.{signature}",
        base64url_encode(claims.to_string().as_bytes())
    );
    refused(
        server.client.sign_in(&tampered).await,
        ErrorCode::SignatureInvalid,
    );
    assert_eq!(
        server.last_assertion_event().await.outcome,
        "signature_invalid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_x5c_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    server.add_user(&CAROL.user_record()).await;
    // Alice's card signs; carol's certificate (RSA-2048 too, same CA) is put in the header.
    let [header, payload, signature] = parts(&server.assertion(&ALICE, KIOSK).await);
    let mut header: Value = serde_json::from_slice(&base64url_decode(&header).unwrap()).unwrap();
    header["x5c"] = json!([STANDARD.encode(CAROL.certificate())]);
    let swapped = format!(
        "{}.{payload}.{signature}",
        base64url_encode(header.to_string().as_bytes())
    );
    refused(
        server.client.sign_in(&swapped).await,
        ErrorCode::SignatureInvalid,
    );
    let event = server.last_assertion_event().await;
    assert_eq!(event.outcome, "signature_invalid");
    assert_eq!(event.user_id, None, "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_rate_limited() {
    let server = TestServer::start_with(|_, config| {
        config.rate_limit.failures_before_delay = 2;
        config.rate_limit.base_delay_seconds = 30;
    })
    .await;
    server.add_user(&ALICE.user_record()).await;
    server
        .admin()
        .set_user_locked("alice", true)
        .await
        .expect("the user is locked");
    // Authentic assertions, refused: each counts against the card and the device.
    for attempt in 1..=3 {
        let refusal = refused(server.sign_in(&ALICE, KIOSK).await, ErrorCode::UserLocked);
        assert_eq!(refusal.retry_after, None, "attempt {attempt}");
    }
    let refusal = refused(server.sign_in(&ALICE, KIOSK).await, ErrorCode::RateLimited);
    assert_eq!(refusal.status, 429);
    let retry_after = refusal.retry_after.expect("a Retry-After header");
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(30)).contains(&retry_after),
        "{retry_after:?}"
    );
    server
        .assert_audited(ErrorCode::RateLimited, &ALICE, KIOSK)
        .await;
    // The card is held back on another device too, even once its user is unlocked.
    server
        .admin()
        .set_user_locked("alice", false)
        .await
        .expect("the user is unlocked");
    refused(
        server.sign_in(&ALICE, "kiosk-08").await,
        ErrorCode::RateLimited,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_for_another_server_is_refused() {
    let server = TestServer::start().await;
    server.add_user(&ALICE.user_record()).await;
    let mut challenge = server.challenge(KIOSK).await;
    challenge.aud = "https://auth.elsewhere.example.com".to_owned();
    let assertion = ALICE.signed(&ALICE.draft(&challenge, KIOSK));
    let refusal = refused(
        server.client.sign_in(&assertion).await,
        ErrorCode::InvalidRequest,
    );
    assert!(refusal.message.contains("aud"), "{}", refusal.message);
    assert_eq!(
        server.last_assertion_event().await.outcome,
        "invalid_request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_refused_off_loopback() {
    install_crypto_provider();
    let (_dir, report) = init_directory();
    let mut config = ServerConfig::load(&report.config_path).unwrap();
    config.tls = None;
    config.plain_http = true;
    config.listen = "0.0.0.0:8080".parse().unwrap();
    config.origin = "http://auth.example.com:8080".to_owned();
    match config.validate(&report.config_path) {
        Err(ConfigError::Invalid {
            field: "plain_http",
            problem: ConfigProblem::PlainHttpNotLoopback(address),
            ..
        }) => assert_eq!(address, config.listen),
        other => panic!("plain HTTP on 0.0.0.0 must be refused, got {other:?}"),
    }
    // Should a configuration slip through unchecked, serving refuses it too.
    let (state, _) = server::from_config(&config).await.unwrap();
    let listener = Listener::PlainLoopback {
        address: config.listen,
    };
    let served = server::serve_with_handle(state, listener, Handle::new()).await;
    assert!(
        matches!(served, Err(ServeError::PlainHttpNotLoopback(address)) if address == config.listen),
        "{served:?}"
    );
    // And the client will not send to a plain http:// server off this machine.
    for url in ["http://auth.example.com:8443", "http://10.0.0.5:8443"] {
        let refused = Client::new(url, ServerTrust::SystemRoots, CLIENT_TIMEOUT).unwrap_err();
        assert!(
            matches!(&refused, ClientError::Config { reason } if reason.contains("loopback")),
            "{url}: {refused}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_serves_on_loopback() {
    let server = TestServer::start_with(|_, config| {
        config.tls = None;
        config.plain_http = true;
    })
    .await;
    assert!(server.config.origin.starts_with("http://127.0.0.1:"));
    let client = Client::new(
        &server.config.origin,
        ServerTrust::SystemRoots,
        CLIENT_TIMEOUT,
    )
    .unwrap();
    client
        .admin(&server.admin_token)
        .add_user(&ALICE.user_record())
        .await
        .expect("the admin API answers over HTTP");
    let client = server.as_device(&client, KIOSK).await;
    let challenge = client.challenge(KIOSK).await.unwrap();
    assert_eq!(challenge.aud, server.config.origin);
    let signed_in = client
        .sign_in(&ALICE.signed(&ALICE.draft(&challenge, KIOSK)))
        .await
        .expect("alice signs in over loopback HTTP");
    assert_eq!(signed_in.user.id, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_server_key_is_trusted_and_a_wrong_pin_is_not() {
    let server = TestServer::start().await;
    let pin = &server.report.spki_sha256_pin;
    for printed in [pin.clone(), format!("sha256//{pin}")] {
        let pinned = Client::new(
            &server.config.origin,
            ServerTrust::from_pin(&printed).unwrap(),
            CLIENT_TIMEOUT,
        )
        .unwrap();
        let pinned = server.as_device(&pinned, KIOSK).await;
        let jwks = pinned.jwks().await.expect("the pinned key is trusted");
        assert!(jwks["keys"].as_array().is_some_and(|keys| !keys.is_empty()));
        pinned
            .challenge(KIOSK)
            .await
            .expect("the pinned client gets a challenge");
    }

    let wrong_pin = STANDARD.encode([0x42; 32]);
    let wrong = Client::new(
        &server.config.origin,
        ServerTrust::from_pin(&wrong_pin).unwrap(),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    let started = std::time::Instant::now();
    match wrong.jwks().await {
        Err(ClientError::UntrustedServer { reason, .. }) => {
            assert_eq!(reason, "its key does not match the pin");
        }
        other => panic!("a wrong pin must fail the TLS handshake, got {other:?}"),
    }
    // Not retried: the client's three back-offs alone take 0.4 + 0.8 + 1.6 s.
    assert!(
        started.elapsed() < Duration::from_millis(2800),
        "a trust failure was retried ({:?})",
        started.elapsed()
    );
    // A CA file that did not issue the server's certificate is refused the same way.
    let other_ca = Client::new(
        &server.config.origin,
        ServerTrust::from_pem_file(&fixture("ca/test-ca.pem")).unwrap(),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    assert!(
        matches!(
            other_ca.challenge(KIOSK).await,
            Err(ClientError::UntrustedServer { .. })
        ),
        "a server certificate from another issuer must be refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_told_apart_as_network_trust_or_refusal() {
    let server = TestServer::start().await;
    server
        .client
        .ready()
        .await
        .expect("a ready server answers /readyz");
    fn kind<T: std::fmt::Debug>(result: Result<T, ClientError>) -> FailureKind {
        result.expect_err("the request fails").kind()
    }

    // Trust: a CA that did not issue the server's certificate, and a wrong key pin.
    let other_ca = Client::new(
        &server.config.origin,
        ServerTrust::from_pem_file(&fixture("ca/test-ca.pem")).unwrap(),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(kind(other_ca.ready().await), FailureKind::Trust);
    let wrong_pin = Client::new(
        &server.config.origin,
        ServerTrust::from_pin(&STANDARD.encode([0x42; 32])).unwrap(),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(kind(wrong_pin.challenge(KIOSK).await), FailureKind::Trust);

    // A refusal carries the server's code.
    assert_eq!(
        kind(server.client.challenge("not a device id").await),
        FailureKind::Refused(ErrorCode::InvalidRequest)
    );

    // Network: nothing listens on the port; something listens but never answers.
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let nobody = Client::new(
        &format!("https://127.0.0.1:{closed_port}"),
        ServerTrust::SystemRoots,
        CLIENT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        kind(nobody.ready().await),
        FailureKind::Network(NetworkFailure::ConnectionRefused)
    );
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent_origin = format!("https://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let mute = Client::new(
        &silent_origin,
        ServerTrust::SystemRoots,
        Duration::from_millis(500),
    )
    .unwrap();
    assert_eq!(
        kind(mute.ready().await),
        FailureKind::Network(NetworkFailure::TimedOut)
    );
    drop(silent);

    // A URL with a path the server does not serve: its `not_found`, so the URL is to fix.
    let wrong_path = Client::new(
        &format!("{}/not-pivtap", server.config.origin),
        ServerTrust::from_pem_file(&server.report.certificate_path).unwrap(),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        kind(wrong_path.ready().await),
        FailureKind::Refused(ErrorCode::NotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_past_the_budget_of_the_peer_address_are_summarised_when_the_server_stops() {
    let server = TestServer::start_with(|_, config| config.rate_limit.refusal_burst = 3).await;
    // Over real TLS connections: the budget is the TCP peer's, 127.0.0.1.
    for attempt in 0..3 {
        let refusal = refused(
            server.client.challenge("not a device id").await,
            ErrorCode::InvalidRequest,
        );
        assert_eq!(refusal.status, 400, "attempt {attempt}");
    }
    for attempt in 0..2 {
        let refusal = refused(
            server.client.challenge("not a device id").await,
            ErrorCode::RateLimited,
        );
        assert_eq!(refusal.status, 429, "attempt {attempt}");
        assert!(refusal.retry_after.is_some(), "a Retry-After");
    }
    // A stopping server writes the summary of what it has not audited yet.
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(5)));
    let database = rusqlite::Connection::open(&server.config.database).expect("the database opens");
    let mut summary = None;
    for _ in 0..100 {
        summary = database
            .query_row(
                "SELECT detail FROM audit WHERE kind = 'rate_limit'",
                [],
                |row| row.get::<_, String>(0),
            )
            .ok();
        if summary.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        summary.as_deref(),
        Some("2 requests refused, rate limited (source 127.0.0.1)")
    );
    let refusals: i64 = database
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE kind = 'challenge' AND outcome = 'invalid_request'",
            [],
            |row| row.get(0),
        )
        .expect("the audit reads");
    assert_eq!(
        refusals, 3,
        "only the refusals within the budget are audited one by one"
    );
}
