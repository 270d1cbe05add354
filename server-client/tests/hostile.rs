//! Hostile-input catalogue against every server endpoint: malformed and malicious requests each get the right 4xx and error code, and nothing else changes (users, cards, enrollment codes, tokens; only refusals are audited).
//!
//! The server is the real one (`init_server` + `from_config`, issuance on, the
//! test CA trusted) driven with `oneshot`, so every case is one request and no
//! socket. The rate limiter is set out of reach so each case is refused for its
//! own reason, not for the ones before it. At the end a well-formed sign-in
//! still works: the hostile requests left no state behind that could lock it out.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pivtap_apdu::piv::{Algorithm, KeyReference, Pin};
use pivtap_card::virtual_card::image::CardImage;
use pivtap_card::virtual_card::{VirtualCard, VirtualCardBackend};
use pivtap_card::{PivSession, SignatureAlgorithm};
use pivtap_server_client::assertion::AssertionDraft;
use pivtap_server_client::config::ServerConfig;
use pivtap_server_client::init::{InitOptions, init_server};
use pivtap_server_client::jose::base64url_encode;
use pivtap_server_client::server::{self, MAX_BODY_BYTES};
use pivtap_server_client::store::{User, UserState};
use pivtap_server_client::wire::AssertionPayload;
use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;
use tower::ServiceExt as _;

const SLOT: KeyReference = KeyReference::PivAuthentication;
const DEVICE: &str = "kiosk-07";
const JSON: &str = "application/json";

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

/// A fixture card (in memory; the fixture file is never written).
struct Card {
    name: &'static str,
    pin: &'static str,
}

const ALICE: Card = Card {
    name: "alice",
    pin: "123456",
};
const UNTRUSTED: Card = Card {
    name: "untrusted",
    pin: "123456",
};
const CAROL: Card = Card {
    name: "carol",
    pin: "123456",
};

impl Card {
    fn with_session<T>(&self, work: impl FnOnce(&mut PivSession<'_>, Algorithm) -> T) -> T {
        let image = CardImage::load(fixture(&format!("cards/{}.toml", self.name)))
            .expect("the fixture card image loads");
        let key = image
            .keys
            .iter()
            .find(|entry| entry.slot() == SLOT)
            .expect("a 9A key")
            .algorithm();
        let card = VirtualCard::from_image(&image).expect("the fixture card opens");
        let mut backend = VirtualCardBackend::new(card, self.name);
        let mut session = PivSession::open(&mut backend).expect("the PIV applet selects");
        work(&mut session, key)
    }

    fn certificate(&self) -> Vec<u8> {
        self.with_session(|session, _| session.certificate(SLOT).expect("a 9A certificate"))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.with_session(|_, key| key) {
            Algorithm::Rsa2048 => SignatureAlgorithm::Rs256,
            Algorithm::EccP256 => SignatureAlgorithm::Es256,
            other => panic!("no fixture card has a {other:?} key"),
        }
    }

    fn sign(&self, algorithm: SignatureAlgorithm, message: &[u8]) -> Vec<u8> {
        self.with_session(|session, key| {
            session
                .verify_pin(&Pin::new(self.pin).expect("a valid PIN"))
                .expect("the fixture PIN verifies");
            session
                .sign(SLOT, key, algorithm, message)
                .expect("the card signs")
        })
    }
}

/// The server under attack and what the checks need.
struct Target {
    _dir: TempDir,
    app: Router,
    origin: String,
    admin_token: String,
    /// The kiosk's own credential: its challenge requests carry its proof.
    device: pivtap_server_client::device::DeviceCredential,
    /// Every answer body, kept for `target/test-logs/hostile/` (the secret scan reads it).
    answers: std::sync::Mutex<Vec<String>>,
}

async fn target() -> Target {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = init_server(
        dir.path(),
        &InitOptions {
            trust: vec![fixture("ca/test-ca.pem")],
            listen: "127.0.0.1:0".parse().expect("an address"),
            ..InitOptions::default()
        },
    )
    .expect("init_server writes the directory");
    let mut config = ServerConfig::load(&report.config_path).expect("server.toml loads");
    config.origin = "https://auth.example.test".to_owned();
    config.rate_limit.failures_before_delay = 100_000;
    config
        .validate(&report.config_path)
        .expect("the adjusted configuration is valid");
    let (state, _listener) = server::from_config(&config)
        .await
        .expect("the server state builds");
    for (id, name, mail) in [
        ("alice", "Alice Example", "alice@example.com"),
        ("bob", "Bob Example", "bob@example.com"),
    ] {
        state
            .store()
            .add_user(&User {
                id: id.to_owned(),
                display_name: name.to_owned(),
                mail: Some(mail.to_owned()),
                upn: None,
                employee_id: None,
                state: UserState::Active,
            })
            .await
            .expect("the user is added");
    }
    let admin_token = std::fs::read_to_string(&report.admin_token_path)
        .expect("admin.token reads")
        .trim()
        .to_owned();
    let device = server::devices::credential_locally(&state, DEVICE)
        .await
        .expect("the kiosk is registered");
    Target {
        _dir: dir,
        app: server::app(state),
        origin: config.origin,
        admin_token,
        device,
        answers: std::sync::Mutex::default(),
    }
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Target {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body reads")
            .to_vec();
        self.answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(format!("{status} {}", String::from_utf8_lossy(&body)));
        Reply {
            status,
            content_type,
            body,
        }
    }

    fn admin(&self, method: Method, path: &str, body: impl Into<Body>) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(format!("/v1/admin{path}"))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.admin_token),
            )
            .header(header::CONTENT_TYPE, JSON)
            .body(body.into())
            .expect("a request")
    }

    async fn admin_json(&self, path: &str) -> Value {
        let reply = self
            .send(self.admin(Method::GET, path, Body::empty()))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "GET /v1/admin{path}");
        reply.json()
    }

    /// Writes every answer and the whole audit log to `target/test-logs/hostile/NAME.log`.
    async fn keep_logs(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-logs/hostile");
        std::fs::create_dir_all(&dir).expect("the log directory can be made");
        let audit = self.admin_json("/audit?limit=1000").await;
        let answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n");
        std::fs::write(
            dir.join(format!("{name}.log")),
            format!("{answers}\n{audit:#}\n"),
        )
        .expect("the log is written");
    }

    /// What must not change: users, cards and every audit record that is not a refusal.
    async fn snapshot(&self) -> (Value, Value, Vec<Value>) {
        let audit = self.admin_json("/audit?limit=1000").await;
        let kept = audit
            .as_array()
            .expect("an array")
            .iter()
            .filter(|event| event["outcome"] == "ok" && event["kind"] != "admin")
            .cloned()
            .collect();
        (
            self.admin_json("/users").await,
            self.admin_json("/cards").await,
            kept,
        )
    }

    async fn challenge(&self) -> Value {
        let reply = self
            .send(post(
                "/v1/challenges",
                Some(JSON),
                json!({
                    "device": DEVICE,
                    "proof": self.device.proof(&self.origin, OffsetDateTime::now_utc()),
                })
                .to_string(),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        reply.json()
    }

    fn payload(&self, challenge: &Value) -> AssertionPayload {
        AssertionPayload {
            aud: self.origin.clone(),
            nonce: challenge["nonce"].as_str().expect("a nonce").to_owned(),
            device: DEVICE.to_owned(),
            iat: OffsetDateTime::now_utc().unix_timestamp(),
            slot: "9a".to_owned(),
        }
    }

    /// A correct assertion by `card` over a fresh challenge.
    async fn good_assertion(&self, card: &Card) -> String {
        let challenge = self.challenge().await;
        let draft = AssertionDraft::new(
            card.algorithm().jose_name(),
            &card.certificate(),
            self.payload(&challenge),
        );
        draft.finish(&card.sign(card.algorithm(), draft.signing_input().as_bytes()))
    }

    /// An assertion with any header and payload JSON (text, so duplicate keys
    /// survive), over a fresh challenge, signed by `card` with its own key.
    async fn crafted(&self, card: &Card, header: &str, payload: Option<&str>) -> String {
        let challenge = self.challenge().await;
        let payload = payload.map_or_else(
            || serde_json::to_string(&self.payload(&challenge)).expect("serialises"),
            |text| text.replace("NONCE", challenge["nonce"].as_str().expect("nonce")),
        );
        let input = format!(
            "{}.{}",
            base64url_encode(header.as_bytes()),
            base64url_encode(payload.as_bytes())
        );
        let signature = card.sign(card.algorithm(), input.as_bytes());
        format!("{input}.{}", base64url_encode(&signature))
    }
}

fn post(path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::builder().method(Method::POST).uri(path);
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(body.into()).expect("a request")
}

fn assertion_body(jws: &str) -> String {
    json!({ "assertion": jws }).to_string()
}

/// Checks one refusal: status, JSON error body with `code`, a short message without internals.
#[track_caller]
fn assert_refused(label: &str, reply: &Reply, status: StatusCode, code: &str) {
    let body = reply.json();
    assert_eq!(
        (reply.status, body["error"].as_str()),
        (status, Some(code)),
        "{label}: {body}"
    );
    assert!(reply.content_type.starts_with(JSON), "{label}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty() && message.len() < 1024,
        "{label}: {message:?}"
    );
    for word in ["sqlx", "sqlite", "panicked", ".rs:", "/tmp/", "serde"] {
        assert!(
            !message.to_lowercase().contains(word),
            "{label}: {word} in {message:?}"
        );
    }
}

fn header_json(alg: &str, x5c: &[Vec<u8>]) -> String {
    json!({
        "alg": alg,
        "typ": "pivtap-assertion+jwt",
        "x5c": x5c.iter().map(|der| STANDARD.encode(der)).collect::<Vec<_>>(),
    })
    .to_string()
}

fn ca_der() -> Vec<u8> {
    pem_der(&fixture("ca/test-ca.pem"))
}

fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).expect("a PEM file");
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body).expect("PEM base64")
}

#[tokio::test]
async fn hostile_assertions_are_refused_with_their_code_and_change_nothing() {
    let target = target().await;
    let before = target.snapshot().await;
    let alice = ALICE.certificate();
    let carol = CAROL.certificate();
    let ca = ca_der();
    let rogue = pem_der(&fixture("ca/rogue-ca.pem"));
    let alg = ALICE.algorithm().jose_name();
    let other_alg = if alg == "ES256" { "RS256" } else { "ES256" };
    let good = target.good_assertion(&ALICE).await;
    let [head, body, signature]: [&str; 3] = good
        .split('.')
        .collect::<Vec<_>>()
        .try_into()
        .expect("three parts");

    let mut cases: Vec<(String, String, &str)> = Vec::new();
    let mut case = |label: &str, jws: String, code: &'static str| {
        cases.push((label.to_owned(), jws, code));
    };
    // Truncated: every cut of the compact JWS is refused.
    for cut in [
        1,
        head.len(),
        head.len() + 1,
        good.len() / 2,
        good.len() - 1,
    ] {
        case(
            &format!("truncated at {cut}"),
            good[..cut].to_owned(),
            // A base64url text of 4n+1 characters cannot be decoded at all.
            if cut == good.len() - 1 && (signature.len() - 1) % 4 != 1 {
                "signature_invalid"
            } else {
                "invalid_request"
            },
        );
    }
    case(
        "signature dropped",
        format!("{head}.{body}."),
        "signature_invalid",
    );
    case(
        "signature with 1 KB appended",
        format!("{head}.{body}.{signature}{}", "A".repeat(1024)),
        "signature_invalid",
    );
    case(
        "padded base64",
        format!("{head}.{body}.{signature}=="),
        "invalid_request",
    );
    case(
        "standard base64 alphabet",
        format!(
            "{head}.{body}.{}",
            signature.replace('-', "+").replace('_', "/")
        ),
        if signature.contains(['-', '_']) {
            "invalid_request"
        } else {
            "signature_invalid"
        },
    );
    case(
        "whitespace inside",
        format!("{head} .{body}.{signature}"),
        "invalid_request",
    );
    // Algorithms the server never accepts, and one that does not fit the key.
    for bad in [
        "none", "None", "HS256", "EdDSA", "PS256", "es256", "ES512", "",
    ] {
        case(
            &format!("alg {bad:?}"),
            target
                .crafted(
                    &ALICE,
                    &header_json(bad, std::slice::from_ref(&alice)),
                    None,
                )
                .await,
            "invalid_request",
        );
    }
    case(
        "alg of the other key type",
        target
            .crafted(
                &ALICE,
                &header_json(other_alg, std::slice::from_ref(&alice)),
                None,
            )
            .await,
        "invalid_request",
    );
    case(
        "alg as a number",
        target
            .crafted(
                &ALICE,
                &format!(
                    r#"{{"alg":256,"typ":"pivtap-assertion+jwt","x5c":["{}"]}}"#,
                    STANDARD.encode(&alice)
                ),
                None,
            )
            .await,
        "invalid_request",
    );
    // Duplicate keys: serde refuses them rather than picking one.
    case(
        "duplicate alg (none first)",
        target
            .crafted(
                &ALICE,
                &format!(
                    r#"{{"alg":"none","alg":"{alg}","typ":"pivtap-assertion+jwt","x5c":["{}"]}}"#,
                    STANDARD.encode(&alice)
                ),
                None,
            )
            .await,
        "invalid_request",
    );
    case(
        "duplicate nonce in the payload",
        target
            .crafted(
                &ALICE,
                &header_json(alg, std::slice::from_ref(&alice)),
                Some(&format!(
                    r#"{{"aud":"{}","nonce":"NONCE","nonce":"AAAA","device":"{DEVICE}","iat":{},"slot":"9a"}}"#,
                    target.origin,
                    OffsetDateTime::now_utc().unix_timestamp()
                )),
            )
            .await,
        "invalid_request",
    );
    case(
        "payload not UTF-8",
        target
            .crafted(
                &ALICE,
                &header_json(alg, std::slice::from_ref(&alice)),
                Some("{\"aud\":\"\u{fffd}"),
            )
            .await,
        "invalid_request",
    );
    case(
        "payload iat far in the future",
        target
            .crafted(
                &ALICE,
                &header_json(alg, std::slice::from_ref(&alice)),
                Some(&format!(
                    r#"{{"aud":"{}","nonce":"NONCE","device":"{DEVICE}","iat":{},"slot":"9a"}}"#,
                    target.origin,
                    i64::MAX
                )),
            )
            .await,
        "invalid_request",
    );
    case(
        "payload with an extra claim",
        target
            .crafted(
                &ALICE,
                &header_json(alg, std::slice::from_ref(&alice)),
                Some(&format!(
                    r#"{{"aud":"{}","nonce":"NONCE","device":"{DEVICE}","iat":{},"slot":"9a","sub":"bob"}}"#,
                    target.origin,
                    OffsetDateTime::now_utc().unix_timestamp()
                )),
            )
            .await,
        "invalid_request",
    );
    // x5c: missing, empty, garbage, someone else's, loops and very long chains.
    case(
        "x5c missing",
        target
            .crafted(
                &ALICE,
                &json!({"alg": alg, "typ": "pivtap-assertion+jwt"}).to_string(),
                None,
            )
            .await,
        "invalid_request",
    );
    case(
        "x5c empty",
        target.crafted(&ALICE, &header_json(alg, &[]), None).await,
        "invalid_request",
    );
    case(
        "x5c not DER",
        target
            .crafted(
                &ALICE,
                &header_json(alg, &[b"not a certificate".to_vec()]),
                None,
            )
            .await,
        "invalid_request",
    );
    case(
        "x5c not base64",
        target
            .crafted(
                &ALICE,
                &json!({"alg": alg, "typ": "pivtap-assertion+jwt", "x5c": ["%%%"]}).to_string(),
                None,
            )
            .await,
        "invalid_request",
    );
    case(
        "x5c names carol (same key type), alice signs",
        target
            .crafted(
                &ALICE,
                &header_json(alg, std::slice::from_ref(&carol)),
                None,
            )
            .await,
        "signature_invalid",
    );
    case(
        "x5c is the (P-256) CA itself",
        target
            .crafted(&ALICE, &header_json(alg, std::slice::from_ref(&ca)), None)
            .await,
        "invalid_request",
    );
    let looping: Vec<Vec<u8>> = (0..8).flat_map(|_| [alice.clone(), ca.clone()]).collect();
    case(
        "x5c loops (alice, CA, alice, CA, ...)",
        target
            .crafted(&ALICE, &header_json(alg, &looping), None)
            .await,
        "invalid_request",
    );
    let long: Vec<Vec<u8>> = std::iter::once(alice.clone())
        .chain(std::iter::repeat_n(ca.clone(), 40))
        .collect();
    case(
        "x5c with 40 intermediates",
        target.crafted(&ALICE, &header_json(alg, &long), None).await,
        "invalid_request",
    );
    case(
        "a rogue CA's card with the rogue CA in x5c",
        target
            .crafted(
                &UNTRUSTED,
                &header_json(
                    UNTRUSTED.algorithm().jose_name(),
                    &[UNTRUSTED.certificate(), rogue.clone()],
                ),
                None,
            )
            .await,
        "certificate_untrusted",
    );
    let refusals = cases.len();

    for (label, jws, code) in &cases {
        let reply = target
            .send(post("/v1/assertions", Some(JSON), assertion_body(jws)))
            .await;
        let status = if *code == "invalid_request" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_refused(label, &reply, status, code);
    }

    // Oversized: a JWS larger than any body the server reads.
    let huge = format!("{head}.{body}.{}", "A".repeat(MAX_BODY_BYTES));
    let reply = target
        .send(post("/v1/assertions", Some(JSON), assertion_body(&huge)))
        .await;
    assert!(
        matches!(
            reply.status,
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE
        ),
        "oversized: {}",
        reply.status
    );
    assert_eq!(reply.json()["error"], "invalid_request");

    // The untouched good assertion still signs in once, and only once.
    let reply = target
        .send(post("/v1/assertions", Some(JSON), assertion_body(&good)))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());
    let reply = target
        .send(post("/v1/assertions", Some(JSON), assertion_body(&good)))
        .await;
    assert_refused(
        "replay",
        &reply,
        StatusCode::UNAUTHORIZED,
        "challenge_reused",
    );

    // A loop that fits the 4-certificate cap (alice, CA, alice, CA) is harmless: path
    // building ignores what it does not need, finishes at once, and alice chains to the anchor.
    let looped = target
        .crafted(
            &ALICE,
            &header_json(alg, &[alice.clone(), ca.clone(), alice.clone(), ca.clone()]),
            None,
        )
        .await;
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        target.send(post("/v1/assertions", Some(JSON), assertion_body(&looped))),
    )
    .await
    .expect("a looping chain is answered at once");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());

    let (users, cards, kept) = target.snapshot().await;
    assert_eq!(users, before.0, "users unchanged");
    let cards = cards.as_array().expect("cards").clone();
    assert_eq!(
        cards.len(),
        1,
        "only alice's card, from the good sign-in: {cards:?}"
    );
    let signed_in: Vec<&Value> = kept.iter().filter(|e| e["kind"] == "assertion").collect();
    assert_eq!(signed_in.len(), 2, "two successful sign-ins: {kept:?}");
    assert!(signed_in.iter().all(|event| event["user_id"] == "alice"));
    let audit = target.admin_json("/audit?limit=1000").await;
    let refused = audit
        .as_array()
        .expect("an array")
        .iter()
        .filter(|event| event["kind"] == "assertion" && event["outcome"] != "ok")
        .count();
    assert_eq!(
        refused,
        refusals + 2,
        "every refusal is audited, nothing more"
    );
    target
        .keep_logs("hostile_assertions_are_refused_with_their_code_and_change_nothing")
        .await;
}

#[tokio::test]
async fn hostile_bodies_are_refused_on_every_public_endpoint() {
    let target = target().await;
    let before = target.snapshot().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = vec![b'{'; 4 * MAX_BODY_BYTES];
    let endpoints = [
        "/v1/challenges",
        "/v1/assertions",
        "/v1/enrollments/inspect",
        "/v1/enrollments",
        "/v1/renewals",
        "/v1/devices/enroll",
    ];
    let bodies: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("bad JSON", Some(JSON), b"{\"a\":".to_vec()),
        ("empty body", Some(JSON), Vec::new()),
        ("nested 10 000 deep", Some(JSON), deep.into_bytes()),
        ("non-UTF-8", Some(JSON), b"{\"code\":\"\xff\xfe\"}".to_vec()),
        ("a string", Some(JSON), b"\"x\"".to_vec()),
        ("null", Some(JSON), b"null".to_vec()),
        (
            "form encoded",
            Some("application/x-www-form-urlencoded"),
            b"code=x".to_vec(),
        ),
        (
            "multipart",
            Some("multipart/form-data; boundary=x"),
            b"--x--".to_vec(),
        ),
        ("text/plain", Some("text/plain"), b"{}".to_vec()),
        ("no content type", None, b"{}".to_vec()),
        ("content type garbage", Some("\u{1}json"), b"{}".to_vec()),
        (
            "duplicate keys",
            Some(JSON),
            br#"{"code":"a","code":"b","device":"x","device":"y"}"#.to_vec(),
        ),
    ];
    for path in endpoints {
        for (label, content_type, body) in &bodies {
            let label = format!("{path}: {label}");
            let Ok(request) = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(header::CONTENT_TYPE, content_type.unwrap_or(JSON))
                .body(Body::from(body.clone()))
            else {
                continue; // a header value http refuses to build never reaches a server
            };
            let request = if content_type.is_none() {
                post(path, None, body.clone())
            } else {
                request
            };
            let reply = target.send(request).await;
            assert_refused(&label, &reply, StatusCode::BAD_REQUEST, "invalid_request");
        }
        let reply = target.send(post(path, Some(JSON), huge.clone())).await;
        assert!(
            matches!(
                reply.status,
                StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE
            ),
            "{path}: 256 KB body answered {}",
            reply.status
        );
        assert_eq!(reply.json()["error"], "invalid_request", "{path}");
    }
    // Enrollment with well-formed but hostile fields.
    for (label, path, body, status, code) in [
        (
            "unknown code",
            "/v1/enrollments/inspect",
            json!({"code": "AAAA-BBBB-CCCC"}).to_string(),
            StatusCode::NOT_FOUND,
            "enrollment_code_unknown",
        ),
        (
            "1 MB-ish code",
            "/v1/enrollments/inspect",
            json!({"code": "A".repeat(MAX_BODY_BYTES / 2)}).to_string(),
            StatusCode::NOT_FOUND,
            "enrollment_code_unknown",
        ),
        (
            "CSR not base64",
            "/v1/enrollments",
            json!({"code": "AAAA-BBBB-CCCC", "csr": "%%%"}).to_string(),
            StatusCode::NOT_FOUND,
            "enrollment_code_unknown",
        ),
        (
            "renewal with a CSR that is no CSR",
            "/v1/renewals",
            json!({"assertion": "a.b.c", "csr": "AAAA"}).to_string(),
            StatusCode::BAD_REQUEST,
            "csr_invalid",
        ),
    ] {
        let reply = target.send(post(path, Some(JSON), body)).await;
        assert_refused(label, &reply, status, code);
    }
    // Read-only endpoints refuse other methods.
    for (method, path) in [
        (Method::POST, "/v1/crl"),
        (Method::DELETE, "/.well-known/jwks.json"),
        (Method::PUT, "/v1/pin-policy"),
        (Method::GET, "/v1/assertions"),
        (Method::GET, "/v1/challenges"),
    ] {
        let reply = target
            .send(
                Request::builder()
                    .method(method.clone())
                    .uri(path)
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
    }
    for path in [
        "/v1/../v1/admin/users",
        "/v1/admin/%2e%2e/users",
        "/%00",
        "/v1/admin",
    ] {
        let reply = target
            .send(
                Request::builder()
                    .uri(path)
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await;
        assert!(
            matches!(
                reply.status,
                StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED
            ),
            "{path}: {}",
            reply.status
        );
        assert_ne!(
            reply.json()["error"],
            Value::Null,
            "{path} answers a JSON error"
        );
    }
    let after = target.snapshot().await;
    assert_eq!(after.0, before.0, "users unchanged");
    assert_eq!(after.1, before.1, "no card recorded");
    // Only challenge issuance is ever 'ok' here: none were asked for.
    assert_eq!(after.2, before.2, "no successful operation recorded");
    target
        .keep_logs("hostile_bodies_are_refused_on_every_public_endpoint")
        .await;
}

#[tokio::test]
async fn admin_endpoints_refuse_missing_and_wrong_credentials_and_change_nothing() {
    let target = target().await;
    let before = target.snapshot().await;
    let wrong = format!("{}x", target.admin_token);
    let credentials: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("empty bearer", Some("Bearer ".to_owned())),
        (
            "bearer without a space",
            Some(format!("Bearer{}", target.admin_token)),
        ),
        ("wrong token", Some(format!("Bearer {wrong}"))),
        (
            "prefix of the token",
            Some(format!("Bearer {}", &target.admin_token[..8])),
        ),
        (
            "basic scheme",
            Some(format!("Basic {}", STANDARD.encode(&target.admin_token))),
        ),
        ("token alone", Some(target.admin_token.clone())),
        ("8 KB token", Some(format!("Bearer {}", "x".repeat(8192)))),
        (
            "token twice",
            Some(format!(
                "Bearer {} {}",
                target.admin_token, target.admin_token
            )),
        ),
    ];
    let routes = [
        (Method::GET, "/users", ""),
        (
            Method::POST,
            "/users",
            r#"{"id":"mallory","display_name":"M","state":"active"}"#,
        ),
        (
            Method::POST,
            "/users/import",
            r#"[{"id":"mallory","display_name":"M"}]"#,
        ),
        (Method::POST, "/users/alice/lock", ""),
        (Method::POST, "/users/alice/unlock", ""),
        (Method::GET, "/cards", ""),
        (Method::DELETE, "/cards/01", ""),
        (Method::POST, "/cards/01/lock", ""),
        (Method::POST, "/cards/01/unlock", ""),
        (Method::POST, "/cards/01/revoke", ""),
        (Method::GET, "/audit", ""),
        (
            Method::POST,
            "/enrollments",
            r#"{"user":"alice","valid_for_seconds":600}"#,
        ),
        (Method::GET, "/devices", ""),
        (Method::POST, "/devices", r#"{"id":"mallory-kiosk"}"#),
        (Method::POST, "/devices/kiosk-07/disable", ""),
        (Method::POST, "/devices/kiosk-07/enable", ""),
        (Method::DELETE, "/devices/kiosk-07", ""),
    ];
    let mut refused = 0;
    for (method, path, body) in &routes {
        for (label, credential) in &credentials {
            let mut builder = Request::builder()
                .method(method.clone())
                .uri(format!("/v1/admin{path}"))
                .header(header::CONTENT_TYPE, JSON);
            if let Some(credential) = credential {
                builder = builder.header(header::AUTHORIZATION, credential.as_str());
            }
            let reply = target
                .send(builder.body(Body::from(*body)).expect("a request"))
                .await;
            assert_refused(
                &format!("{method} {path} with {label}"),
                &reply,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
            refused += 1;
        }
        // A header value that is not UTF-8.
        let reply = target
            .send(
                Request::builder()
                    .method(method.clone())
                    .uri(format!("/v1/admin{path}"))
                    .header(
                        header::AUTHORIZATION,
                        header::HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("opaque bytes"),
                    )
                    .body(Body::from(*body))
                    .expect("a request"),
            )
            .await;
        assert_refused(
            "non-UTF-8 credential",
            &reply,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        refused += 1;
    }
    // With the credential, hostile admin bodies are refused too.
    for (label, method, path, body, status, code) in [
        (
            "bad JSON",
            Method::POST,
            "/users",
            "{",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "duplicate id",
            Method::POST,
            "/users",
            r#"{"id":"mallory","id":"alice","display_name":"M","state":"active"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "control characters in an id",
            Method::POST,
            "/users",
            "{\"id\":\"a\\u0000b\",\"display_name\":\"M\",\"state\":\"active\"}",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "enrollment for nobody",
            Method::POST,
            "/enrollments",
            r#"{"user":"nobody","valid_for_seconds":600}"#,
            StatusCode::UNAUTHORIZED,
            "user_unknown",
        ),
        (
            "enrollment valid for ever",
            Method::POST,
            "/enrollments",
            &format!(r#"{{"user":"alice","valid_for_seconds":{}}}"#, u64::MAX),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "lock nobody",
            Method::POST,
            "/users/nobody/lock",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "revoke no card",
            Method::POST,
            "/cards/zz/revoke",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "audit limit not a number",
            Method::GET,
            "/audit?limit=-1",
            "",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "audit since not a time",
            Method::GET,
            "/audit?since=yesterday",
            "",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let reply = target
            .send(target.admin(method, path, body.to_owned()))
            .await;
        assert_refused(label, &reply, status, code);
    }
    let after = target.snapshot().await;
    assert_eq!(after, before, "nothing changed");
    let audit = target
        .admin_json("/audit?outcome=unauthorized&limit=1000")
        .await;
    assert_eq!(
        audit
            .as_array()
            .expect("an array")
            .iter()
            .filter(|event| event["kind"] == "admin")
            .count(),
        refused,
        "every refused credential is audited"
    );
    let text = target.admin_json("/audit?limit=1000").await.to_string();
    assert!(
        !text.contains(&wrong),
        "a presented credential is never audited"
    );
    assert!(
        !text.contains(&target.admin_token),
        "the credential is never audited"
    );
    target
        .keep_logs("admin_endpoints_refuse_missing_and_wrong_credentials_and_change_nothing")
        .await;
}
