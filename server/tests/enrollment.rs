//! Enrollment and card lifecycle end to end over real HTTPS on loopback: admin enrollment codes, inspecting and redeeming them with software-key CSRs, the key policy, signing in with the issued certificate, renewal superseding the old certificate, the CRL, and deleting revoked cards; certificates and CSRs also checked with `openssl`.
//!
//! Each test starts its own embedded server (made by `init_server`, so with
//! the issuing CA and `[issuance]` defaults: P-256 and RSA-2048 allowed). The
//! "card" is a software key: its CSR and assertions are signed the way a card
//! signs them.

use std::error::Error;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pivtap_client::client::{AuditFilter, CardAction, Client, ClientError};
use pivtap_protocol::assertion::AssertionDraft;
use pivtap_protocol::certificate::pem;
use pivtap_protocol::certificate::{CertificateFacts, KeyKind};
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_protocol::wire::{
    AssertionPayload, CardIdentity, EnrollmentRequest, EnrollmentResult, ErrorCode, KeyAlgorithm,
    RenewalRequest,
};
use pivtap_server::server::embedded::EmbeddedServer;
use pivtap_server::server::enrollment::{code_hash, new_code};
use pivtap_server::store::{NewEnrollmentCode, User, UserState};
use pivtap_testkit::server::install_crypto_provider;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SigningKey};
use time::OffsetDateTime;
use zeroize::Zeroizing;

type TestResult = Result<(), Box<dyn Error>>;

const TIMEOUT: Duration = Duration::from_secs(20);
const DEVICE: &str = "kiosk-07";
const FIFTEEN_MINUTES: Duration = Duration::from_secs(900);

fn user(id: &str, name: &str, mail: Option<&str>) -> User {
    User {
        id: id.to_owned(),
        display_name: name.to_owned(),
        mail: mail.map(str::to_owned),
        upn: Some(format!("{id}@corp.example")),
        employee_id: Some(format!("E-{id}")),
        state: UserState::Active,
    }
}

/// A server with alice, bob, carol (locked) and nomail (no mail address).
struct Fixture {
    _dir: tempfile::TempDir,
    server: EmbeddedServer,
    client: Client,
    token: Zeroizing<String>,
}

impl Fixture {
    async fn start() -> Result<Self, Box<dyn Error>> {
        Self::start_trusting(Vec::new()).await
    }

    /// As [`Fixture::start`], the server also trusting the CA certificates in `trust` (PEM).
    async fn start_trusting(trust: Vec<std::path::PathBuf>) -> Result<Self, Box<dyn Error>> {
        install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let mut carol = user("carol", "Carol Example", Some("carol@example.com"));
        carol.state = UserState::Locked;
        let server = EmbeddedServer::start(
            dir.path(),
            trust,
            &[
                user("alice", "Alice Example", Some("alice@example.com")),
                user("bob", "Bob Example", Some("bob@example.com")),
                carol,
                user("nomail", "No Mail", None),
            ],
        )
        .await?;
        let client = server.device_client(DEVICE, TIMEOUT).await?;
        let token = Zeroizing::new(
            std::fs::read_to_string(&server.admin_token)?
                .trim()
                .to_owned(),
        );
        Ok(Fixture {
            _dir: dir,
            server,
            client,
            token,
        })
    }

    async fn code(&self, user: &str) -> Result<String, ClientError> {
        Ok(self
            .client
            .admin(&self.token)
            .create_enrollment(user, FIFTEEN_MINUTES)
            .await?
            .code)
    }

    /// Enrolls `key` with a fresh code for `user`.
    async fn enroll(&self, user: &str, key: &KeyPair) -> Result<EnrollmentResult, Box<dyn Error>> {
        let code = self.code(user).await?;
        Ok(self
            .client
            .complete_enrollment(&request(&code, &csr(key)?))
            .await?)
    }

    /// Signs in with `key` and its certificate.
    async fn sign_in(
        &self,
        key: &KeyPair,
        certificate: &[u8],
    ) -> Result<pivtap_protocol::wire::AssertionResponse, Box<dyn Error>> {
        let assertion = self.assertion(key, certificate).await?;
        Ok(self.client.sign_in(&assertion).await?)
    }

    /// A fresh assertion signed by `key` for `certificate`.
    async fn assertion(&self, key: &KeyPair, certificate: &[u8]) -> Result<String, Box<dyn Error>> {
        let challenge = self.client.challenge(DEVICE).await?;
        let alg = if key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
            JwsAlgorithm::Rs256
        } else {
            JwsAlgorithm::Es256
        };
        let draft = AssertionDraft::new(
            alg,
            certificate,
            AssertionPayload::for_challenge(
                &challenge,
                DEVICE,
                "9a",
                OffsetDateTime::now_utc().unix_timestamp(),
            ),
        );
        let signature = key.sign(draft.signing_input().as_bytes())?;
        let signature = if alg == JwsAlgorithm::Es256 {
            // rcgen signs ECDSA as DER; JOSE wants r || s.
            p256::ecdsa::Signature::from_der(&signature)?
                .to_bytes()
                .to_vec()
        } else {
            signature
        };
        Ok(draft.finish(&signature))
    }

    async fn audit(&self, kind: &str) -> Result<Vec<(String, String)>, Box<dyn Error>> {
        Ok(self
            .client
            .admin(&self.token)
            .audit(&AuditFilter::default())
            .await?
            .into_iter()
            .filter(|event| event.kind == kind)
            .map(|event| (event.outcome, event.detail.unwrap_or_default()))
            .collect())
    }

    async fn card_state(&self, serial: &str) -> Result<Option<String>, Box<dyn Error>> {
        Ok(self
            .client
            .admin(&self.token)
            .list_cards()
            .await?
            .into_iter()
            .find(|card| card.serial == serial)
            .map(|card| card.state))
    }
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key")
}

/// A CSR as a card makes it: a subject the server ignores, signed by the key.
fn csr(key: &impl SigningKey) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Administrator");
    Ok(params.serialize_request(key)?.der().to_vec())
}

fn request(code: &str, csr: &[u8]) -> EnrollmentRequest {
    EnrollmentRequest {
        code: code.to_owned(),
        csr: URL_SAFE_NO_PAD.encode(csr),
        card: CardIdentity {
            serial: Some(12_345_678),
            chuid_guid: Some("00112233445566778899aabbccddeeff".to_owned()),
        },
        device: Some(DEVICE.to_owned()),
    }
}

fn refused_code(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, ErrorCode) {
    match result {
        Err(ClientError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn der(b64: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(b64).expect("base64url DER")
}

/// Runs openssl; its exit status and output.
fn openssl(args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// An RSA key of any size as an rcgen signer (aws-lc-rs will not make RSA-1024).
struct RsaKey {
    key: rsa::RsaPrivateKey,
    public: Vec<u8>,
}

impl RsaKey {
    fn new(bits: usize) -> Self {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).expect("an RSA key");
        let public = key
            .to_public_key()
            .to_pkcs1_der()
            .expect("PKCS#1")
            .as_bytes()
            .to_vec();
        RsaKey { key, public }
    }
}

impl PublicKeyData for RsaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl SigningKey for RsaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(self.key.clone());
        Ok(signer.sign(msg).to_vec())
    }
}

#[tokio::test]
async fn an_enrolled_key_signs_in_and_its_code_is_used_once() -> TestResult {
    let fixture = Fixture::start().await?;
    let admin = fixture.client.admin(&fixture.token);
    let made = admin.create_enrollment("alice", FIFTEEN_MINUTES).await?;
    assert_eq!(made.user.id, "alice");
    assert!(
        made.url
            .starts_with("pivtap://enroll?server=https%3A%2F%2F127.0.0.1%3A"),
        "{}",
        made.url
    );
    let (server, code) = pivtap_protocol::wire::parse_enrollment_url(&made.url)?;
    assert_eq!(server.as_deref(), Some(fixture.server.origin.as_str()));
    assert_eq!(code, made.code);

    // Inspecting does not use the code up, and tells the card what to do.
    for _ in 0..2 {
        let offer = fixture.client.inspect_enrollment(&made.code).await?;
        assert_eq!(offer.user.id, "alice");
        assert_eq!(offer.user.mail.as_deref(), Some("alice@example.com"));
        assert_eq!(offer.key_algorithm, KeyAlgorithm::P256);
        assert_eq!(offer.slot, "9a");
        assert_eq!(offer.pin_policy, fixture.client.pin_policy().await?);
        assert_eq!(offer.expires_at, made.expires_at);
    }
    // The code is typed loosely: lower case, spaces for dashes.
    let typed = made.code.replace('-', " ").to_ascii_lowercase();
    assert_eq!(
        fixture.client.inspect_enrollment(&typed).await?.user.id,
        "alice"
    );

    let key = p256();
    let csr_der = csr(&key)?;
    let result = fixture
        .client
        .complete_enrollment(&request(&made.code, &csr_der))
        .await?;
    let certificate = der(&result.certificate);
    let facts = CertificateFacts::from_der(&certificate)?;
    assert_eq!(facts.serial, result.serial);
    assert_eq!(facts.common_name.as_deref(), Some("Alice Example"));
    assert!(
        !facts.subject.contains("Administrator"),
        "{}",
        facts.subject
    );
    assert_eq!(facts.emails, ["alice@example.com"]);
    assert_eq!(facts.upns, ["alice@corp.example"]);
    assert_eq!(facts.subject_serial_number.as_deref(), Some("E-alice"));
    assert_eq!(facts.key, KeyKind::EcP256);
    assert_eq!(result.user.id, "alice");
    let (_, ca_der) =
        x509_parser::pem::parse_x509_pem(&std::fs::read(&fixture.server.ca_certificate)?)?;
    assert_eq!(der(&result.ca_certificate), ca_der.contents);
    // The card is registered for alice before it ever signed in.
    assert_eq!(
        fixture.card_state(&result.serial).await?.as_deref(),
        Some("active")
    );

    // openssl agrees: the CSR's self-signature and the chain to the issuing CA.
    let work = tempfile::tempdir()?;
    let csr_path = work.path().join("card.csr");
    let certificate_path = work.path().join("card.crt");
    std::fs::write(&csr_path, pem("CERTIFICATE REQUEST", &csr_der))?;
    std::fs::write(&certificate_path, pem("CERTIFICATE", &certificate))?;
    let (ok, output) = openssl(&["req", "-in", path_str(&csr_path), "-verify", "-noout"]);
    assert!(ok, "openssl req -verify: {output}");
    let (ok, output) = openssl(&[
        "verify",
        "-CAfile",
        path_str(&fixture.server.ca_certificate),
        "-purpose",
        "sslclient",
        path_str(&certificate_path),
    ]);
    assert!(ok && output.contains(": OK"), "openssl verify: {output}");
    let (_, text) = openssl(&[
        "x509",
        "-in",
        path_str(&certificate_path),
        "-noout",
        "-text",
    ]);
    assert!(
        text.contains("Microsoft Smartcard Login") || text.contains("1.3.6.1.4.1.311.20.2.2"),
        "{text}"
    );
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");

    // The issued certificate signs in as alice.
    let signed_in = fixture.sign_in(&key, &certificate).await?;
    assert_eq!(signed_in.user.id, "alice");

    // Once only: redeeming or inspecting again is refused.
    let again = fixture
        .client
        .complete_enrollment(&request(&made.code, &csr(&p256())?))
        .await;
    assert_eq!(refused_code(again), (410, ErrorCode::EnrollmentCodeUsed));
    assert_eq!(
        refused_code(fixture.client.inspect_enrollment(&made.code).await),
        (410, ErrorCode::EnrollmentCodeUsed)
    );
    assert_eq!(admin.list_cards().await?.len(), 1);

    let audit = fixture.audit("enrollment").await?;
    let outcomes: Vec<&str> = audit.iter().map(|(outcome, _)| outcome.as_str()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "ok").count(),
        4,
        "{audit:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == "enrollment_code_used")
            .count(),
        2,
        "{audit:?}"
    );
    // The audit names codes by a hash prefix, never the code.
    let hash = code_hash(&made.code);
    for (_, detail) in &audit {
        assert!(!detail.contains(&made.code), "{detail}");
        assert!(!detail.contains(&made.code.replace('-', "")), "{detail}");
        assert!(detail.contains(&hash[..8]), "{detail}");
    }
    let admin_audit = fixture.audit("admin").await?;
    assert!(
        admin_audit
            .iter()
            .any(|(outcome, detail)| outcome == "ok" && detail.contains("enrollment code #")),
        "{admin_audit:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_expired_and_refused_codes() -> TestResult {
    let fixture = Fixture::start().await?;
    let admin = fixture.client.admin(&fixture.token);
    let unknown = new_code();
    assert_eq!(
        refused_code(fixture.client.inspect_enrollment(&unknown).await),
        (404, ErrorCode::EnrollmentCodeUnknown)
    );
    assert_eq!(
        refused_code(
            fixture
                .client
                .complete_enrollment(&request(&unknown, &csr(&p256())?))
                .await
        ),
        (404, ErrorCode::EnrollmentCodeUnknown)
    );

    // An expired code (stored directly: the API gives at least a minute).
    let expired = new_code();
    fixture
        .server
        .state
        .store()
        .add_enrollment_code(&NewEnrollmentCode {
            code_hash: code_hash(&expired),
            user_id: "alice".to_owned(),
            created_at: OffsetDateTime::now_utc() - time::Duration::hours(1),
            expires_at: OffsetDateTime::now_utc() - time::Duration::seconds(1),
        })
        .await?;
    assert_eq!(
        refused_code(fixture.client.inspect_enrollment(&expired).await),
        (410, ErrorCode::EnrollmentCodeExpired)
    );
    assert_eq!(
        refused_code(
            fixture
                .client
                .complete_enrollment(&request(&expired, &csr(&p256())?))
                .await
        ),
        (410, ErrorCode::EnrollmentCodeExpired)
    );

    let audit = fixture.audit("enrollment").await?;
    for outcome in ["enrollment_code_unknown", "enrollment_code_expired"] {
        assert_eq!(
            audit.iter().filter(|(o, _)| o == outcome).count(),
            2,
            "{outcome}: {audit:?}"
        );
    }
    assert!(admin.list_cards().await?.is_empty());

    // Codes are made only for active users whose certificate would map back.
    assert_eq!(
        refused_code(admin.create_enrollment("nobody", FIFTEEN_MINUTES).await),
        (401, ErrorCode::UserUnknown)
    );
    assert_eq!(
        refused_code(admin.create_enrollment("carol", FIFTEEN_MINUTES).await),
        (401, ErrorCode::UserLocked)
    );
    // No mail: under `san.email -> mail` its certificate could never sign in.
    assert_eq!(
        refused_code(admin.create_enrollment("nomail", FIFTEEN_MINUTES).await),
        (401, ErrorCode::UserUnknown)
    );
    for bad in [Duration::from_secs(10), Duration::from_secs(8 * 24 * 3600)] {
        assert_eq!(
            refused_code(admin.create_enrollment("alice", bad).await),
            (400, ErrorCode::InvalidRequest)
        );
    }
    let admin_audit = fixture.audit("admin").await?;
    for outcome in ["user_unknown", "user_locked", "invalid_request"] {
        assert!(
            admin_audit.iter().any(|(o, _)| o == outcome),
            "{outcome}: {admin_audit:?}"
        );
    }

    // A user locked after the code was made cannot use it.
    let code = fixture.code("bob").await?;
    admin.set_user_locked("bob", true).await?;
    assert_eq!(
        refused_code(fixture.client.inspect_enrollment(&code).await),
        (401, ErrorCode::UserLocked)
    );
    assert_eq!(
        refused_code(
            fixture
                .client
                .complete_enrollment(&request(&code, &csr(&p256())?))
                .await
        ),
        (401, ErrorCode::UserLocked)
    );
    let locked = fixture
        .client
        .admin(&fixture.token)
        .audit(&AuditFilter {
            user: Some("bob".to_owned()),
            outcome: Some("user_locked".to_owned()),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(
        locked
            .iter()
            .filter(|event| event.kind == "enrollment")
            .count(),
        2,
        "{locked:?}"
    );
    // Unlocked again, the code still works.
    admin.set_user_locked("bob", false).await?;
    let result = fixture
        .client
        .complete_enrollment(&request(&code, &csr(&p256())?))
        .await?;
    assert_eq!(result.user.id, "bob");
    Ok(())
}

#[tokio::test]
async fn forged_csrs_and_keys_outside_the_policy_are_refused_and_keep_the_code() -> TestResult {
    let fixture = Fixture::start().await?;
    let code = fixture.code("alice").await?;
    let enroll = |csr: Vec<u8>| {
        let request = request(&code, &csr);
        let client = fixture.client.clone();
        async move { client.complete_enrollment(&request).await }
    };

    // The self-signature does not cover a changed subject.
    let mut forged = csr(&p256())?;
    let at = forged
        .windows(13)
        .position(|window| window == b"Administrator")
        .ok_or("the subject is in the CSR")?;
    forged[at] ^= 0x20;
    assert_eq!(
        refused_code(enroll(forged).await),
        (400, ErrorCode::CsrInvalid)
    );
    assert_eq!(
        refused_code(enroll(b"not a certificate request".to_vec()).await),
        (400, ErrorCode::CsrInvalid)
    );
    let mut not_base64 = request(&code, &[]);
    not_base64.csr = "***".to_owned();
    assert_eq!(
        refused_code(fixture.client.complete_enrollment(&not_base64).await),
        (400, ErrorCode::CsrInvalid)
    );

    // RSA-1024 is too small; P-384 and P-521 are not in the default policy.
    let rsa1024 = RsaKey::new(1024);
    let rsa1024_csr = csr(&rsa1024)?;
    let work = tempfile::tempdir()?;
    let csr_path = work.path().join("rsa1024.csr");
    std::fs::write(&csr_path, pem("CERTIFICATE REQUEST", &rsa1024_csr))?;
    let (ok, output) = openssl(&["req", "-in", path_str(&csr_path), "-verify", "-noout"]);
    assert!(ok, "the RSA-1024 CSR itself is sound: {output}");
    assert_eq!(
        refused_code(enroll(rsa1024_csr).await),
        (400, ErrorCode::KeyNotAllowed)
    );
    for algorithm in [
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ECDSA_P521_SHA512,
    ] {
        let key = KeyPair::generate_for(algorithm)?;
        assert_eq!(
            refused_code(enroll(csr(&key)?).await),
            (400, ErrorCode::KeyNotAllowed)
        );
    }
    let audit = fixture.audit("enrollment").await?;
    assert_eq!(
        audit.iter().filter(|(o, _)| o == "csr_invalid").count(),
        3,
        "{audit:?}"
    );
    assert_eq!(
        audit.iter().filter(|(o, _)| o == "key_not_allowed").count(),
        3,
        "{audit:?}"
    );
    assert!(
        fixture
            .client
            .admin(&fixture.token)
            .list_cards()
            .await?
            .is_empty()
    );

    // The code is still good: RSA-2048 is allowed and signs in.
    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
    let result = enroll(csr(&rsa)?).await?;
    let certificate = der(&result.certificate);
    assert_eq!(
        CertificateFacts::from_der(&certificate)?.key,
        KeyKind::Rsa { bits: 2048 }
    );
    assert_eq!(fixture.sign_in(&rsa, &certificate).await?.user.id, "alice");
    Ok(())
}

#[tokio::test]
async fn renewal_supersedes_the_old_certificate_and_the_crl_lists_it() -> TestResult {
    let fixture = Fixture::start().await?;
    let old_key = p256();
    let old = fixture.enroll("alice", &old_key).await?;
    let old_certificate = der(&old.certificate);
    fixture.sign_in(&old_key, &old_certificate).await?;

    // Renewing with the same key is refused, and leaves the card as it was.
    let same = RenewalRequest {
        assertion: fixture.assertion(&old_key, &old_certificate).await?,
        csr: URL_SAFE_NO_PAD.encode(csr(&old_key)?),
    };
    assert_eq!(
        refused_code(fixture.client.renew(&same).await),
        (400, ErrorCode::KeyNotAllowed)
    );
    assert_eq!(
        fixture.card_state(&old.serial).await?.as_deref(),
        Some("active")
    );
    // A forged CSR is refused before the challenge is spent.
    let assertion = fixture.assertion(&old_key, &old_certificate).await?;
    let refused = fixture
        .client
        .renew(&RenewalRequest {
            assertion: assertion.clone(),
            csr: URL_SAFE_NO_PAD.encode(b"junk"),
        })
        .await;
    assert_eq!(refused_code(refused), (400, ErrorCode::CsrInvalid));

    let new_key = p256();
    let renewed = fixture
        .client
        .renew(&RenewalRequest {
            assertion: assertion.clone(),
            csr: URL_SAFE_NO_PAD.encode(csr(&new_key)?),
        })
        .await?;
    assert_ne!(renewed.serial, old.serial);
    assert_eq!(renewed.user.id, "alice");
    let new_certificate = der(&renewed.certificate);
    assert_eq!(
        CertificateFacts::from_der(&new_certificate)?.emails,
        ["alice@example.com"]
    );
    // The assertion was a sign-in: its challenge is spent.
    let replay = fixture
        .client
        .renew(&RenewalRequest {
            assertion,
            csr: URL_SAFE_NO_PAD.encode(csr(&p256())?),
        })
        .await;
    assert_eq!(refused_code(replay), (401, ErrorCode::ChallengeReused));

    // Issue 11, item 5: the new certificate is pending, and the old one keeps working until
    // the card confirms it holds the new one (before, the old one was revoked at once, so a
    // cut before the card stored the new certificate left a dead badge).
    assert_eq!(
        fixture.card_state(&old.serial).await?.as_deref(),
        Some("active")
    );
    assert_eq!(fixture.card_state(&renewed.serial).await?, None);
    assert_eq!(
        fixture.sign_in(&old_key, &old_certificate).await?.user.id,
        "alice"
    );
    // A card cut before it stored the new certificate signs with its new key while showing
    // the old certificate: it gets the pending certificate again. Another key does not.
    let resumed = fixture
        .client
        .resume_renewal(&fixture.assertion(&new_key, &old_certificate).await?)
        .await?;
    assert_eq!(resumed.certificate, renewed.certificate);
    let stranger = fixture
        .client
        .resume_renewal(&fixture.assertion(&p256(), &old_certificate).await?)
        .await;
    assert_eq!(refused_code(stranger), (401, ErrorCode::SignatureInvalid));
    // Until it is in use, the new certificate has the old card's state.
    let admin = fixture.client.admin(&fixture.token);
    admin.card_action(&old.serial, CardAction::Lock).await?;
    let locked = fixture
        .client
        .confirm_renewal(&fixture.assertion(&new_key, &new_certificate).await?)
        .await;
    assert_eq!(refused_code(locked), (401, ErrorCode::CardLocked));
    admin.card_action(&old.serial, CardAction::Unlock).await?;
    let confirmed = fixture
        .client
        .confirm_renewal(&fixture.assertion(&new_key, &new_certificate).await?)
        .await?;
    assert_eq!(
        (confirmed.serial.as_str(), confirmed.completed),
        (renewed.serial.as_str(), true)
    );
    assert_eq!(
        fixture.card_state(&old.serial).await?.as_deref(),
        Some("revoked")
    );
    assert_eq!(
        fixture.card_state(&renewed.serial).await?.as_deref(),
        Some("active")
    );
    let old_again = fixture.sign_in(&old_key, &old_certificate).await;
    assert!(
        matches!(&old_again, Err(error) if error.to_string().contains("certificate_revoked")),
        "{old_again:?}"
    );
    assert_eq!(
        fixture.sign_in(&new_key, &new_certificate).await?.user.id,
        "alice"
    );
    // The old certificate cannot renew again either.
    let again = RenewalRequest {
        assertion: fixture.assertion(&old_key, &old_certificate).await?,
        csr: URL_SAFE_NO_PAD.encode(csr(&p256())?),
    };
    assert_eq!(
        refused_code(fixture.client.renew(&again).await),
        (401, ErrorCode::CertificateRevoked)
    );
    let audit = fixture.audit("renewal").await?;
    for outcome in [
        "ok",
        "key_not_allowed",
        "csr_invalid",
        "challenge_reused",
        "certificate_revoked",
    ] {
        assert!(
            audit.iter().any(|(o, _)| o == outcome),
            "{outcome}: {audit:?}"
        );
    }

    // Bob's card is revoked by the admin: unspecified reason.
    let bob_key = p256();
    let bob = fixture.enroll("bob", &bob_key).await?;
    fixture
        .client
        .admin(&fixture.token)
        .card_action(&bob.serial, CardAction::Revoke)
        .await?;

    let crl = fixture.client.crl().await?;
    let (rest, parsed) = x509_parser::parse_x509_crl(&crl)?;
    assert!(rest.is_empty());
    let ca_pem = std::fs::read(&fixture.server.ca_certificate)?;
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(&ca_pem)?;
    let ca = ca_pem.parse_x509()?;
    parsed.verify_signature(ca.public_key())?;
    assert_eq!(parsed.issuer(), ca.subject());
    let this_update = parsed.last_update().to_datetime();
    let next_update = parsed.next_update().ok_or("a nextUpdate")?.to_datetime();
    assert_eq!(next_update - this_update, time::Duration::days(1));
    let mut listed: Vec<(String, Option<u8>)> = parsed
        .iter_revoked_certificates()
        .map(|entry| {
            (
                hex::encode(entry.raw_serial()),
                entry.reason_code().map(|(_, reason)| reason.0),
            )
        })
        .collect();
    listed.sort();
    let mut expected = vec![(old.serial.clone(), Some(4)), (bob.serial.clone(), None)];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(!listed.iter().any(|(serial, _)| *serial == renewed.serial));

    // openssl reads and verifies it too.
    let work = tempfile::tempdir()?;
    let crl_path = work.path().join("pivtap.crl");
    std::fs::write(&crl_path, &crl)?;
    let (ok, output) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        path_str(&crl_path),
        "-CAfile",
        path_str(&fixture.server.ca_certificate),
        "-noout",
    ]);
    assert!(ok && output.contains("verify OK"), "openssl crl: {output}");
    Ok(())
}

#[tokio::test]
async fn only_revoked_cards_are_deleted_and_their_serial_stays_revoked() -> TestResult {
    let fixture = Fixture::start().await?;
    let admin = fixture.client.admin(&fixture.token);
    let key = p256();
    let enrolled = fixture.enroll("alice", &key).await?;
    let certificate = der(&enrolled.certificate);

    assert_eq!(
        refused_code(admin.delete_card(&enrolled.serial).await),
        (409, ErrorCode::Conflict)
    );
    admin
        .card_action(&enrolled.serial, CardAction::Lock)
        .await?;
    assert_eq!(
        refused_code(admin.delete_card(&enrolled.serial).await),
        (409, ErrorCode::Conflict)
    );
    assert_eq!(
        refused_code(admin.delete_card("0badc0de").await),
        (404, ErrorCode::NotFound)
    );
    admin
        .card_action(&enrolled.serial, CardAction::Revoke)
        .await?;
    admin.delete_card(&enrolled.serial).await?;
    assert_eq!(fixture.card_state(&enrolled.serial).await?, None);
    assert_eq!(
        refused_code(admin.delete_card(&enrolled.serial).await),
        (404, ErrorCode::NotFound)
    );

    // The record is gone, the revocation is not.
    let refused = fixture.sign_in(&key, &certificate).await;
    assert!(
        matches!(&refused, Err(error) if error.to_string().contains("certificate_revoked")),
        "{refused:?}"
    );
    assert_eq!(
        fixture.card_state(&enrolled.serial).await?,
        None,
        "not re-recorded"
    );
    let crl = fixture.client.crl().await?;
    let (_, parsed) = x509_parser::parse_x509_crl(&crl)?;
    assert!(
        parsed
            .iter_revoked_certificates()
            .any(|entry| hex::encode(entry.raw_serial()) == enrolled.serial)
    );
    let audit = fixture.audit("admin").await?;
    assert!(
        audit
            .iter()
            .any(|(outcome, detail)| outcome == "ok" && detail.starts_with("deleted card")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|(outcome, _)| outcome == "conflict"),
        "{audit:?}"
    );
    Ok(())
}

/// A CA of its own (not the server's issuing CA) that issues card certificates with
/// serial numbers of its choosing.
struct OtherCa {
    issuer: rcgen::Issuer<'static, KeyPair>,
    pem: String,
}

impl OtherCa {
    fn new(name: &str) -> Result<Self, rcgen::Error> {
        let key = p256();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let pem = params.self_signed(&key)?.pem();
        Ok(OtherCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        })
    }

    /// A card certificate for `mail` with the serial number `serial` (big-endian bytes).
    fn card(&self, key: &KeyPair, mail: &str, serial: &[u8]) -> Result<Vec<u8>, Box<dyn Error>> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, mail);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        params
            .subject_alt_names
            .push(rcgen::SanType::Rfc822Name(mail.try_into()?));
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        Ok(params.signed_by(key, &self.issuer)?.der().to_vec())
    }
}

/// How the admin API qualifies a card: `serial@` the first 16 hex digits of the SHA-256 of
/// its certificate's issuer name (RFC 4514 text).
fn qualified(certificate: &[u8]) -> Result<String, Box<dyn Error>> {
    use sha2::Digest as _;
    let facts = CertificateFacts::from_der(certificate)?;
    let issuer = hex::encode(sha2::Sha256::digest(facts.issuer.as_bytes()));
    Ok(format!("{}@{}", facts.serial, &issuer[..16]))
}

/// Issue 11, item 4: two trusted CAs that each issue serial 1001 are two cards. Before, they
/// shared one record: locking "1001" locked both, and Bob renewing revoked Alice's card.
#[tokio::test]
async fn two_cas_issuing_the_same_serial_make_two_cards() -> TestResult {
    let work = tempfile::tempdir()?;
    let (org_a, org_b) = (
        OtherCa::new("Org A Card CA")?,
        OtherCa::new("Org B Card CA")?,
    );
    let trust = [("a.pem", &org_a), ("b.pem", &org_b)]
        .into_iter()
        .map(|(name, ca)| {
            let path = work.path().join(name);
            std::fs::write(&path, &ca.pem).map(|()| path)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fixture = Fixture::start_trusting(trust).await?;
    let admin = fixture.client.admin(&fixture.token);
    let (alice_key, bob_key) = (p256(), p256());
    let alice = org_a.card(&alice_key, "alice@example.com", &[0x10, 0x01])?;
    let bob = org_b.card(&bob_key, "bob@example.com", &[0x10, 0x01])?;
    assert_eq!(fixture.sign_in(&alice_key, &alice).await?.user.id, "alice");
    assert_eq!(fixture.sign_in(&bob_key, &bob).await?.user.id, "bob");

    let cards = admin.list_cards().await?;
    let mut owners: Vec<_> = cards
        .iter()
        .filter(|card| card.serial == "1001")
        .map(|card| card.user_id.clone().unwrap_or_default())
        .collect();
    owners.sort();
    assert_eq!(owners, ["alice", "bob"], "two cards: {cards:?}");

    // A bare serial that names two cards is refused, naming the ids to use instead.
    let ambiguous = admin.card_action("1001", CardAction::Lock).await;
    let message = match &ambiguous {
        Err(ClientError::Refused {
            status, message, ..
        }) => {
            assert_eq!(*status, 409, "{ambiguous:?}");
            message.clone()
        }
        other => panic!("a bare ambiguous serial must be refused: {other:?}"),
    };
    assert_eq!(refused_code(ambiguous).1.as_str(), "card_ambiguous");
    assert!(message.contains(&qualified(&alice)?), "{message}");
    assert!(message.contains(&qualified(&bob)?), "{message}");
    assert_eq!(fixture.sign_in(&alice_key, &alice).await?.user.id, "alice");

    // Locking Alice's card locks hers only.
    let locked = admin
        .card_action(&qualified(&alice)?, CardAction::Lock)
        .await?;
    assert_eq!(
        (locked.user_id.as_deref(), locked.state.as_str()),
        (Some("alice"), "locked")
    );
    let refused = fixture.sign_in(&alice_key, &alice).await;
    assert!(
        matches!(&refused, Err(error) if error.to_string().contains("card_locked")),
        "{refused:?}"
    );
    assert_eq!(fixture.sign_in(&bob_key, &bob).await?.user.id, "bob");

    // Bob renews (and the new certificate is used): his old card is superseded, Alice's is
    // untouched, and this server's CRL lists neither (it issued neither).
    let new_key = p256();
    let renewed = fixture
        .client
        .renew(&RenewalRequest {
            assertion: fixture.assertion(&bob_key, &bob).await?,
            csr: URL_SAFE_NO_PAD.encode(csr(&new_key)?),
        })
        .await?;
    let renewed_certificate = der(&renewed.certificate);
    assert_eq!(
        fixture
            .sign_in(&new_key, &renewed_certificate)
            .await?
            .user
            .id,
        "bob"
    );
    let states: Vec<_> = admin
        .list_cards()
        .await?
        .into_iter()
        .filter(|card| card.serial == "1001")
        .map(|card| (card.user_id.unwrap_or_default(), card.state))
        .collect();
    assert!(
        states.contains(&("alice".to_owned(), "locked".to_owned())),
        "{states:?}"
    );
    assert!(
        states.contains(&("bob".to_owned(), "revoked".to_owned())),
        "{states:?}"
    );
    admin
        .card_action(&qualified(&alice)?, CardAction::Unlock)
        .await?;
    assert_eq!(fixture.sign_in(&alice_key, &alice).await?.user.id, "alice");
    let old_bob = fixture.sign_in(&bob_key, &bob).await;
    assert!(
        matches!(&old_bob, Err(error) if error.to_string().contains("certificate_revoked")),
        "{old_bob:?}"
    );
    let crl = fixture.client.crl().await?;
    let (_, parsed) = x509_parser::parse_x509_crl(&crl)?;
    assert_eq!(parsed.iter_revoked_certificates().count(), 0);

    // Revoking and deleting Bob's old card by its qualified id leaves Alice's alone.
    let bob_id = qualified(&bob)?;
    admin.delete_card(&bob_id).await?;
    assert_eq!(fixture.sign_in(&alice_key, &alice).await?.user.id, "alice");
    let old_bob = fixture.sign_in(&bob_key, &bob).await;
    assert!(
        matches!(&old_bob, Err(error) if error.to_string().contains("certificate_revoked")),
        "{old_bob:?}"
    );
    // Now that "1001" names one card, the bare serial is accepted.
    let locked = admin.card_action("10:01", CardAction::Lock).await?;
    assert_eq!(locked.user_id.as_deref(), Some("alice"));
    Ok(())
}

/// Makes every write of `statement` (`INSERT`, `UPDATE` or `DELETE`) on `table` in the
/// server's database fail, until [`heal`]: a fault in the middle of one of its transactions.
fn inject_fault(database: &Path, statement: &str, table: &str) -> Result<(), Box<dyn Error>> {
    let connection = rusqlite::Connection::open(database)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    connection.execute_batch(&format!(
        "CREATE TRIGGER injected_fault BEFORE {statement} ON {table}
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
    ))?;
    Ok(())
}

fn heal(database: &Path) -> Result<(), Box<dyn Error>> {
    let connection = rusqlite::Connection::open(database)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    connection.execute_batch("DROP TRIGGER injected_fault")?;
    Ok(())
}

/// Issue 11, item 5, server side: a store write that fails at any table an enrollment, a
/// renewal or its confirmation writes leaves nothing of that step behind (no used code, no
/// pending certificate, no revocation, no audit event of an effect that did not happen), the
/// badge signs in with what it holds, and the step then succeeds when tried again.
#[tokio::test]
async fn a_store_write_failing_in_any_table_of_enrollment_or_renewal_leaves_a_working_badge()
-> TestResult {
    let fixture = Fixture::start().await?;
    let database = fixture
        .server
        .certificate
        .parent()
        .ok_or("a server directory")?
        .join("pivtap.db");
    let ok_events = async |kind: &str| -> Result<usize, Box<dyn Error>> {
        Ok(fixture
            .audit(kind)
            .await?
            .iter()
            .filter(|(outcome, detail)| outcome == "ok" && !detail.starts_with("inspect"))
            .count())
    };

    // Enrollment: the code's use, the card, the issued certificate, the audit event.
    let key = p256();
    let code = fixture.code("alice").await?;
    for (statement, table) in [
        ("UPDATE", "enrollment_codes"),
        ("INSERT", "cards"),
        ("INSERT", "issued_certificates"),
        ("INSERT", "audit"),
    ] {
        inject_fault(&database, statement, table)?;
        let refused = fixture
            .client
            .complete_enrollment(&request(&code, &csr(&key)?))
            .await;
        heal(&database)?;
        assert_eq!(
            refused_code(refused),
            (500, ErrorCode::Internal),
            "{statement} {table}"
        );
        fixture.client.inspect_enrollment(&code).await?;
        assert_eq!(ok_events("enrollment").await?, 0, "{statement} {table}");
        assert!(
            fixture
                .client
                .admin(&fixture.token)
                .list_cards()
                .await?
                .is_empty()
        );
    }
    let enrolled = fixture
        .client
        .complete_enrollment(&request(&code, &csr(&key)?))
        .await?;
    let mut certificate = der(&enrolled.certificate);
    let mut key = key;
    assert_eq!(ok_events("enrollment").await?, 1);

    // Renewal, step one: the old card's record, the issued certificate, the pending
    // renewal, the audit event. Step two: the old card revoked, the revocation, the pending
    // renewal gone, the new card, the audit events.
    let renewal_faults = [
        ("INSERT", "issued_certificates"),
        ("INSERT", "pending_renewals"),
        ("INSERT", "audit"),
    ];
    let confirm_faults = [
        ("UPDATE", "cards"),
        ("INSERT", "revoked_certificates"),
        ("DELETE", "pending_renewals"),
        ("INSERT", "cards"),
    ];
    for (statement, table) in renewal_faults {
        let new_key = p256();
        let assertion = fixture.assertion(&key, &certificate).await?;
        inject_fault(&database, statement, table)?;
        let refused = fixture
            .client
            .renew(&RenewalRequest {
                assertion,
                csr: URL_SAFE_NO_PAD.encode(csr(&new_key)?),
            })
            .await;
        heal(&database)?;
        assert_eq!(
            refused_code(refused),
            (500, ErrorCode::Internal),
            "{statement} {table}"
        );
        // Nothing pending, nothing audited as done: the card signs in as it was.
        assert!(
            !fixture
                .audit("renewal")
                .await?
                .iter()
                .any(|(outcome, detail)| outcome == "ok" && detail.contains("pending")),
            "{statement} {table}"
        );
        assert_eq!(fixture.sign_in(&key, &certificate).await?.user.id, "alice");
    }
    for (statement, table) in confirm_faults {
        let new_key = p256();
        let renewed = fixture
            .client
            .renew(&RenewalRequest {
                assertion: fixture.assertion(&key, &certificate).await?,
                csr: URL_SAFE_NO_PAD.encode(csr(&new_key)?),
            })
            .await?;
        let new_certificate = der(&renewed.certificate);
        let confirmation = fixture.assertion(&new_key, &new_certificate).await?;
        let superseded_before = fixture
            .audit("renewal")
            .await?
            .iter()
            .filter(|(_, detail)| detail.contains("superseded"))
            .count();
        inject_fault(&database, statement, table)?;
        let refused = fixture.client.confirm_renewal(&confirmation).await;
        heal(&database)?;
        assert_eq!(
            refused_code(refused),
            (500, ErrorCode::Internal),
            "{statement} {table}"
        );
        // Both certificates still sign in; the old card is not revoked, with no event
        // saying so.
        let superseded_after = fixture
            .audit("renewal")
            .await?
            .iter()
            .filter(|(_, detail)| detail.contains("superseded"))
            .count();
        assert_eq!(superseded_after, superseded_before, "{statement} {table}");
        assert_eq!(fixture.sign_in(&key, &certificate).await?.user.id, "alice");
        // The new certificate's first sign-in completes the renewal.
        assert_eq!(
            fixture.sign_in(&new_key, &new_certificate).await?.user.id,
            "alice"
        );
        let old_again = fixture.sign_in(&key, &certificate).await;
        assert!(
            matches!(&old_again, Err(error) if error.to_string().contains("certificate_revoked")),
            "{statement} {table}: {old_again:?}"
        );
        (key, certificate) = (new_key, new_certificate);
    }
    Ok(())
}
