//! Handler tests of the whole HTTP API, driven with `oneshot` (no socket, no TLS): challenges, refused assertions, the JWKS, health, metrics, the admin API and the shape of every error answer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pivtap_testkit::server::admin_request;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower::ServiceExt as _;

use pivtap_protocol::pin_policy::PinPolicy;
use pivtap_server::config::read_ca_certificates;
use pivtap_server::mapping::MappingRule;
use pivtap_server::server::admin::MAX_IMPORT_BYTES;
use pivtap_server::server::rate_limit::RateLimiter;
use pivtap_server::server::{self, MAX_BODY_BYTES, ServerState, Settings};
use pivtap_server::store::SqliteStore;
use pivtap_server::token::TokenKeys;
use pivtap_server::verifier::{AssertionVerifier, VerifierConfig};

const ORIGIN: &str = "https://auth.example.test";
const ADMIN_TOKEN: &str = "admin-credential-for-tests-0123456789";
const JSON: &str = "application/json";

/// A fresh server (in-memory store, new keys) per test.
async fn app() -> Router {
    server::app(state().await)
}

/// The state of [`app`].
async fn state() -> ServerState {
    let ca_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ca/test-ca.pem");
    let trust_anchors = read_ca_certificates(&ca_path).expect("the test CA loads");
    let verifier = AssertionVerifier::new(VerifierConfig::new(ORIGIN, trust_anchors))
        .expect("the test CA is a usable trust anchor");
    let store = SqliteStore::in_memory()
        .await
        .expect("an in-memory store opens");
    let settings = Settings {
        origin: ORIGIN.to_owned(),
        token_audience: "pivtap-apps".to_owned(),
        token_lifetime: Duration::from_secs(3600),
        challenge_lifetime: Duration::from_secs(60),
        session_max_age: Duration::from_secs(12 * 3600),
        mapping: MappingRule::DEFAULT,
        pin_policy: PinPolicy {
            min_length: 7,
            ..PinPolicy::default()
        },
        issuer: None,
        audit_retention: Duration::from_secs(400 * 86_400),
        // This suite drives the API's shapes with made-up device ids and no issuing CA
        // to enroll devices: open mode. Device identity is tested in tests/devices.rs.
        devices: pivtap_server::config::DevicesConfig {
            require_registration: false,
            ..Default::default()
        },
        oidc: Default::default(),
    };
    ServerState::new(
        settings,
        Arc::new(store),
        verifier,
        TokenKeys::generate(),
        ADMIN_TOKEN,
        RateLimiter::default(),
    )
}

/// Builds a request; `headers` are name/value pairs.
fn request(
    method: Method,
    path: &str,
    headers: &[(header::HeaderName, &str)],
    body: impl Into<Body>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(name, *value);
    }
    builder.body(body.into()).expect("a valid test request")
}

fn post_json(path: &str, body: impl Into<Body>) -> Request<Body> {
    request(
        Method::POST,
        path,
        &[(header::CONTENT_TYPE, JSON)],
        body.into(),
    )
}

fn admin(method: Method, path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    admin_request(ADMIN_TOKEN, method, path, content_type, body)
}

/// An answer, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts a successful JSON answer and returns its body.
    #[track_caller]
    fn ok_json(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert!(
            self.header(header::CONTENT_TYPE).starts_with(JSON),
            "content type {:?}",
            self.header(header::CONTENT_TYPE)
        );
        self.json()
    }

    /// Asserts an error answer: the status, a JSON body with exactly `error`
    /// (the code) and `message`, and a message without internals. Returns the message.
    #[track_caller]
    fn error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        let message = self.error_body(code);
        assert_eq!(self.status.as_u16(), expected_status(code), "{code}");
        message
    }

    /// Like [`Reply::error`] for a status that may be any of `statuses`.
    #[track_caller]
    fn error_in(&self, statuses: &[StatusCode], code: &str) -> String {
        assert!(
            statuses.contains(&self.status),
            "status {} body: {}",
            self.status,
            self.text()
        );
        self.error_body(code)
    }

    #[track_caller]
    fn error_body(&self, code: &str) -> String {
        assert!(
            self.header(header::CONTENT_TYPE).starts_with(JSON),
            "content type {:?}",
            self.header(header::CONTENT_TYPE)
        );
        let body = self.json();
        let mut keys: Vec<&str> = body
            .as_object()
            .expect("an error body is a JSON object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["error", "message"], "body: {body}");
        assert_eq!(body["error"], code, "body: {body}");
        let message = body["message"].as_str().expect("the message is a string");
        assert!(!message.trim().is_empty(), "empty message");
        assert_no_internals(message);
        message.to_owned()
    }
}

fn expected_status(code: &str) -> u16 {
    match code {
        "invalid_request" | "csr_invalid" | "key_not_allowed" => 400,
        "not_found" | "enrollment_code_unknown" | "enrollment_disabled" => 404,
        "enrollment_code_used" | "enrollment_code_expired" => 410,
        "conflict" => 409,
        "rate_limited" => 429,
        "internal" => 500,
        "payload_too_large" => 413,
        "unavailable" => 503,
        _ => 401,
    }
}

/// A message for people never shows the server's insides.
#[track_caller]
fn assert_no_internals(message: &str) {
    let lower = message.to_lowercase();
    for word in [
        "sqlx",
        "sqlite",
        "panicked",
        "backtrace",
        ".rs:",
        "/src/",
        "/home/",
        "/work/",
        "/tmp/",
        "/usr/",
        "/root/",
        "cargo",
    ] {
        assert!(!lower.contains(word), "{word:?} in the message {message:?}");
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router never fails");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body reads")
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// `GET /v1/admin{path}` with the right credential; asserts 200 and returns the JSON.
async fn admin_get(app: &Router, path: &str) -> Value {
    send(app, admin(Method::GET, path, JSON, Body::empty()))
        .await
        .ok_json(StatusCode::OK)
}

/// The audit events for a query string such as `?outcome=ok`, newest first.
async fn audit(app: &Router, query: &str) -> Vec<Value> {
    admin_get(app, &format!("/audit{query}"))
        .await
        .as_array()
        .expect("the audit is a JSON array")
        .clone()
}

/// The ids of the users, in the listed order.
async fn user_ids(app: &Router) -> Vec<String> {
    admin_get(app, "/users")
        .await
        .as_array()
        .expect("the users are a JSON array")
        .iter()
        .map(|user| user["id"].as_str().expect("an id").to_owned())
        .collect()
}

async fn new_challenge(app: &Router, device: &str) -> Value {
    send(
        app,
        post_json("/v1/challenges", json!({ "device": device }).to_string()),
    )
    .await
    .ok_json(StatusCode::CREATED)
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).expect("formats")
}

#[tokio::test]
async fn challenges_are_fresh_nonces_for_this_origin() {
    let app = app().await;
    let before = OffsetDateTime::now_utc();
    let first = new_challenge(&app, "kiosk-07").await;
    let second = new_challenge(&app, "kiosk-07").await;

    for challenge in [&first, &second] {
        let nonce = challenge["nonce"].as_str().expect("a nonce");
        assert_eq!(nonce.len(), 43, "32 bytes in base64url without padding");
        assert!(
            nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{nonce}"
        );
        assert_eq!(challenge["aud"], ORIGIN);
        let expires_at = OffsetDateTime::parse(
            challenge["expires_at"].as_str().expect("expires_at"),
            &Rfc3339,
        )
        .expect("expires_at is RFC 3339");
        let ahead = expires_at - before;
        assert!(
            ahead >= time::Duration::seconds(59) && ahead <= time::Duration::seconds(62),
            "expires {ahead} ahead"
        );
    }
    assert_ne!(first["nonce"], second["nonce"]);

    let accepted = send(
        &app,
        request(
            Method::POST,
            "/v1/challenges",
            &[(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            json!({ "device": "a".repeat(64) }).to_string(),
        ),
    )
    .await;
    accepted.ok_json(StatusCode::CREATED);
}

#[tokio::test]
async fn malformed_challenge_requests_are_invalid() {
    let app = app().await;
    let valid = r#"{"device":"kiosk-07"}"#.to_owned();
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("bad JSON", Some(JSON), b"{\"device\":".to_vec()),
        ("text/plain", Some("text/plain"), valid.clone().into_bytes()),
        ("no content type", None, valid.into_bytes()),
        ("missing device", Some(JSON), b"{}".to_vec()),
        (
            "extra field",
            Some(JSON),
            br#"{"device":"kiosk-07","admin":true}"#.to_vec(),
        ),
        (
            "device not a string",
            Some(JSON),
            br#"{"device":7}"#.to_vec(),
        ),
        ("an array", Some(JSON), b"[]".to_vec()),
        ("empty device", Some(JSON), br#"{"device":""}"#.to_vec()),
        (
            "65 characters",
            Some(JSON),
            json!({ "device": "a".repeat(65) }).to_string().into_bytes(),
        ),
        ("spaces", Some(JSON), br#"{"device":"kiosk 07"}"#.to_vec()),
        (
            "non-ASCII",
            Some(JSON),
            json!({ "device": "kiosk-\u{e9}" }).to_string().into_bytes(),
        ),
        ("slash", Some(JSON), br#"{"device":"../kiosk"}"#.to_vec()),
    ];
    for (label, content_type, body) in cases {
        let headers: Vec<(header::HeaderName, &str)> = content_type
            .map(|value| (header::CONTENT_TYPE, value))
            .into_iter()
            .collect();
        let reply = send(
            &app,
            request(Method::POST, "/v1/challenges", &headers, body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{label}");
        reply.error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let issued = audit(&app, "").await;
    assert!(
        issued.iter().all(|event| event["outcome"] != "ok"),
        "no challenge was issued: {issued:?}"
    );
}

#[tokio::test]
async fn challenges_are_audited_with_a_nonce_prefix_only() {
    let app = app().await;
    let challenge = new_challenge(&app, "kiosk-07").await;
    let nonce = challenge["nonce"].as_str().expect("a nonce");

    let events = audit(&app, "?device=kiosk-07").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["kind"], "challenge");
    assert_eq!(event["outcome"], "ok");
    assert_eq!(event["device"], "kiosk-07");
    let detail = event["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&nonce[..8]), "{detail}");
    assert!(
        !admin_get(&app, "/audit").await.to_string().contains(nonce),
        "the whole nonce is never audited"
    );
}

#[tokio::test]
async fn malformed_assertions_are_refused_audited_and_store_nothing() {
    let app = app().await;
    let oversized = format!(r#"{{"assertion":"{}"}}"#, "a".repeat(MAX_BODY_BYTES + 1));
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("bad JSON", Some(JSON), b"{\"assertion\":".to_vec()),
        ("not a string", Some(JSON), br#"{"assertion":42}"#.to_vec()),
        ("null", Some(JSON), br#"{"assertion":null}"#.to_vec()),
        ("empty", Some(JSON), br#"{"assertion":""}"#.to_vec()),
        ("two parts", Some(JSON), br#"{"assertion":"a.b"}"#.to_vec()),
        (
            "four parts",
            Some(JSON),
            br#"{"assertion":"a.b.c.d"}"#.to_vec(),
        ),
        (
            "three parts of garbage",
            Some(JSON),
            br#"{"assertion":"e30.e30.AAAA"}"#.to_vec(),
        ),
        (
            "non-UTF-8 bytes",
            Some(JSON),
            b"{\"assertion\":\"\xff\xfe.\xc3.x\"}".to_vec(),
        ),
        (
            "duplicate keys",
            Some(JSON),
            br#"{"assertion":"x","assertion":"y"}"#.to_vec(),
        ),
        (
            "extra field",
            Some(JSON),
            br#"{"assertion":"a.b.c","user":"alice"}"#.to_vec(),
        ),
        ("missing field", Some(JSON), b"{}".to_vec()),
        (
            "text/plain",
            Some("text/plain"),
            br#"{"assertion":"a.b.c"}"#.to_vec(),
        ),
        (
            "no content type",
            None,
            br#"{"assertion":"a.b.c"}"#.to_vec(),
        ),
    ];
    let refused = cases.len() + 2;
    for (label, content_type, body) in cases {
        let headers: Vec<(header::HeaderName, &str)> = content_type
            .map(|value| (header::CONTENT_TYPE, value))
            .into_iter()
            .collect();
        let reply = send(
            &app,
            request(Method::POST, "/v1/assertions", &headers, body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{label}");
        reply.error(StatusCode::BAD_REQUEST, "invalid_request");
    }

    let too_large = send(&app, post_json("/v1/assertions", oversized)).await;
    too_large.error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let health = send(&app, request(Method::GET, "/healthz", &[], Body::empty())).await;
    assert_eq!(health.status, StatusCode::OK, "the server still answers");

    let echoing_key = format!(
        r#"{{"assertion":"x","\u0007\n{}":1}}"#,
        "k".repeat(MAX_BODY_BYTES / 2)
    );
    let message = send(&app, post_json("/v1/assertions", echoing_key))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(message.len() < 1024, "the body is not echoed whole");
    assert!(!message.chars().any(char::is_control), "{message:?}");

    assert_eq!(admin_get(&app, "/cards").await, json!([]), "no card stored");
    let too_large = audit(&app, "?outcome=payload_too_large").await;
    assert_eq!(too_large.len(), 1, "{too_large:?}");
    let events = audit(&app, "?outcome=invalid_request").await;
    assert_eq!(events.len(), refused - 1, "{events:?}");
    for event in events.iter().chain(&too_large) {
        assert_eq!(event["kind"], "assertion");
        assert_eq!(event["user_id"], Value::Null);
        assert_eq!(event["card_serial"], Value::Null);
        let detail = event["detail"].as_str().unwrap_or_default();
        assert!(detail.len() < 1024, "the body is not echoed: {detail}");
    }
    let all = audit(&app, "").await;
    assert_eq!(all.len(), refused, "nothing but the refusals: {all:?}");
}

#[tokio::test]
async fn jwks_publishes_the_public_signing_key() {
    let app = app().await;
    let reply = send(
        &app,
        request(Method::GET, "/.well-known/jwks.json", &[], Body::empty()),
    )
    .await;
    let jwks = reply.ok_json(StatusCode::OK);
    assert!(
        reply.header(header::CACHE_CONTROL).contains("max-age="),
        "cache control {:?}",
        reply.header(header::CACHE_CONTROL)
    );
    let keys = jwks["keys"].as_array().expect("keys is an array");
    assert_eq!(keys.len(), 1, "{jwks}");
    let key = &keys[0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert!(!key["kid"].as_str().unwrap_or_default().is_empty());
    for coordinate in ["x", "y"] {
        assert_eq!(
            key[coordinate].as_str().map(str::len),
            Some(43),
            "{coordinate}"
        );
    }
    assert!(key.get("d").is_none(), "never the private key");
}

#[tokio::test]
async fn pin_policy_is_public_and_the_configured_one() {
    let app = app().await;
    let reply = send(
        &app,
        request(Method::GET, "/v1/pin-policy", &[], Body::empty()),
    )
    .await;
    let policy: PinPolicy =
        serde_json::from_value(reply.ok_json(StatusCode::OK)).expect("a PinPolicy");
    assert_eq!(policy.min_length, 7);
    assert_eq!(policy.max_length, 8);
    assert!(policy.forbid_sequences && policy.forbid_repeats && policy.digits_only);
}

#[tokio::test]
async fn without_issuance_enrollment_is_disabled_and_audited() {
    let app = app().await;
    let code = r#"{"code":"ABCD-EFGH-JKLM-NPQR-STUV"}"#;
    let enroll = r#"{"code":"ABCD-EFGH-JKLM-NPQR-STUV","csr":"MIIB"}"#;
    for request in [
        post_json("/v1/enrollments/inspect", code),
        post_json("/v1/enrollments", enroll),
        post_json("/v1/renewals", r#"{"assertion":"a.b.c","csr":"MIIB"}"#),
        request(Method::GET, "/v1/crl", &[], Body::empty()),
        admin(
            Method::POST,
            "/enrollments",
            JSON,
            r#"{"user":"alice","valid_for_seconds":900}"#,
        ),
    ] {
        let reply = send(&app, request).await;
        let message = reply.error(StatusCode::NOT_FOUND, "enrollment_disabled");
        assert!(message.contains("[issuance]"), "{message}");
    }
    let events = audit(&app, "?outcome=enrollment_disabled").await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "enrollment").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "renewal").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "admin").count(),
        1,
        "{kinds:?}"
    );
    // Unknown fields and bad JSON are refused before anything else.
    let reply = send(
        &app,
        post_json("/v1/enrollments", r#"{"code":"x","csr":"y","admin":true}"#),
    )
    .await;
    reply.error(StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn health_answers_ok() {
    let app = app().await;
    let reply = send(&app, request(Method::GET, "/healthz", &[], Body::empty())).await;
    assert_eq!(reply.ok_json(StatusCode::OK), json!({"status": "ok"}));
}

#[tokio::test]
async fn metrics_count_requests_and_sign_in_outcomes() {
    let state = state().await;
    let app = server::app(state.clone());
    send(&app, post_json("/v1/assertions", r#"{"assertion":"a.b"}"#))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_request");
    // Not on the public API without a metrics credential: on the metrics listener's app.
    send(&app, request(Method::GET, "/metrics", &[], Body::empty()))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    // Issue 12: the metrics also count users, cards, recent sign-ins and expiries.
    send(
        &app,
        admin(
            Method::POST,
            "/users",
            JSON,
            json!({"id": "alice", "display_name": "Alice"}).to_string(),
        ),
    )
    .await
    .ok_json(StatusCode::CREATED);
    let now = OffsetDateTime::now_utc();
    for serial in ["0a", "0b"] {
        state
            .store()
            .record_card(&card_facts(serial), Some("alice"), now)
            .await
            .expect("the card is recorded");
    }
    send(
        &app,
        admin(Method::POST, "/cards/0b/lock", JSON, Body::empty()),
    )
    .await
    .ok_json(StatusCode::OK);
    let metrics = server::metrics_app(state);
    let reply = send(
        &metrics,
        request(Method::GET, "/metrics", &[], Body::empty()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.header(header::CONTENT_TYPE).starts_with("text/plain"),
        "{:?}",
        reply.header(header::CONTENT_TYPE)
    );
    let text = reply.text();
    for line in [
        "pivtap_requests_total{route=\"/v1/assertions\",status=\"400\"} 1",
        "pivtap_signins_total{outcome=\"invalid_request\"} 1",
        "pivtap_request_duration_seconds_count ",
        "\npivtap_users{state=\"active\"} 1\n",
        "\npivtap_users{state=\"locked\"} 0\n",
        "\npivtap_cards{state=\"active\"} 1\n",
        "\npivtap_cards{state=\"locked\"} 1\n",
        "\npivtap_cards{state=\"revoked\"} 0\n",
        "\npivtap_sign_ins_last_hour 0\n",
        "\npivtap_certificates_expiring 0\n",
    ] {
        assert!(text.contains(line), "{line:?} missing in\n{text}");
    }
    assert!(
        !text.contains("pivtap_ca_expiry_days"),
        "no issuing CA here"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let app = app().await;
    for path in ["/nope", "/v1/challenges/extra", "/v1/admin/nope", "/"] {
        send(&app, request(Method::GET, path, &[], Body::empty()))
            .await
            .error(StatusCode::NOT_FOUND, "not_found");
    }
    let wrong_method = send(
        &app,
        request(Method::GET, "/v1/challenges", &[], Body::empty()),
    )
    .await;
    wrong_method.error_in(&[StatusCode::METHOD_NOT_ALLOWED], "invalid_request");
    assert!(
        wrong_method.header(header::ALLOW).contains("POST"),
        "allow {:?}",
        wrong_method.header(header::ALLOW)
    );
    let delete_health = send(
        &app,
        request(Method::DELETE, "/healthz", &[], Body::empty()),
    )
    .await;
    delete_health.error_in(&[StatusCode::METHOD_NOT_ALLOWED], "invalid_request");
    assert!(delete_health.header(header::ALLOW).contains("GET"));
    let put_admin = send(&app, admin(Method::PUT, "/users", JSON, Body::empty())).await;
    put_admin.error_in(&[StatusCode::METHOD_NOT_ALLOWED], "invalid_request");
}

#[tokio::test]
async fn admin_refuses_wrong_credentials_audits_and_changes_nothing() {
    let app = app().await;
    let basic = format!("Basic {}", STANDARD.encode(format!("admin:{ADMIN_TOKEN}")));
    let garbage = format!("Bearer {ADMIN_TOKEN}garbage");
    let spaced_garbage = format!("Bearer {ADMIN_TOKEN} x");
    let scheme_missing = ADMIN_TOKEN.to_owned();
    let basic_token = format!("Basic {ADMIN_TOKEN}");
    let authorizations: [Option<&str>; 8] = [
        None,
        Some("Bearer wrong"),
        Some("Bearer "),
        Some(&basic),
        Some(&basic_token),
        Some(&garbage),
        Some(&spaced_garbage),
        Some(&scheme_missing),
    ];
    let new_user = json!({"id": "mallory", "display_name": "Mallory"}).to_string();
    let mut refusals = 0;
    for authorization in authorizations {
        let attempts = [
            (Method::GET, "/v1/admin/users", String::new()),
            (Method::POST, "/v1/admin/users", new_user.clone()),
            (Method::POST, "/v1/admin/users/alice/lock", String::new()),
            (Method::GET, "/v1/admin/audit", String::new()),
        ];
        for (method, path, body) in attempts {
            let mut headers = vec![(header::CONTENT_TYPE, JSON)];
            if let Some(value) = authorization {
                headers.push((header::AUTHORIZATION, value));
            }
            send(&app, request(method, path, &headers, body))
                .await
                .error(StatusCode::UNAUTHORIZED, "unauthorized");
            refusals += 1;
        }
    }

    assert_eq!(user_ids(&app).await, Vec::<String>::new(), "no user added");
    let events = audit(&app, "?outcome=unauthorized").await;
    assert_eq!(events.len(), refusals, "{events:?}");
    for event in &events {
        assert_eq!(event["kind"], "admin");
        let detail = event["detail"].as_str().unwrap_or_default();
        assert!(
            !detail.contains(ADMIN_TOKEN) && !detail.contains("wrong"),
            "the presented credential is never audited: {detail}"
        );
    }
    let everything = audit(&app, "?limit=1000").await;
    assert!(
        everything.iter().all(|event| event["outcome"] != "ok"),
        "no admin action succeeded: {everything:?}"
    );
}

#[tokio::test]
async fn admin_adds_lists_locks_and_unlocks_users() {
    let app = app().await;
    let alice = json!({
        "id": "alice",
        "display_name": "Alice Example",
        "mail": "alice@example.com",
        "upn": "alice@corp.example",
    });
    let added = send(&app, admin(Method::POST, "/users", JSON, alice.to_string()))
        .await
        .ok_json(StatusCode::CREATED);
    assert_eq!(added["id"], "alice");
    assert_eq!(added["mail"], "alice@example.com");
    assert_eq!(added["state"], "active");

    send(&app, admin(Method::POST, "/users", JSON, alice.to_string()))
        .await
        .error(StatusCode::CONFLICT, "conflict");

    let invalid = [
        (json!({"id": "", "display_name": "Nobody"}), "id"),
        (json!({"id": "   ", "display_name": "Nobody"}), "id"),
        (json!({"id": "bob", "display_name": ""}), "name"),
        (
            json!({"id": "bob", "display_name": "Bob", "mail": "bob.example.com"}),
            "@",
        ),
        (
            json!({"id": "bob", "display_name": "Bob\u{7}Bell"}),
            "control",
        ),
        (json!({"id": "bob\nx", "display_name": "Bob"}), "control"),
        (
            json!({"id": "bob", "display_name": "Bob", "upn": "bob\u{0}@corp"}),
            "control",
        ),
        (json!({"id": "bob"}), "display_name"),
        (
            json!({"id": "bob", "display_name": "Bob", "role": "admin"}),
            "role",
        ),
    ];
    for (body, hint) in invalid {
        let message = send(&app, admin(Method::POST, "/users", JSON, body.to_string()))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_request");
        assert!(message.contains(hint), "{hint:?} not in {message:?}");
    }
    send(
        &app,
        admin(
            Method::POST,
            "/users",
            "text/plain",
            json!({"id": "bob", "display_name": "Bob"}).to_string(),
        ),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(user_ids(&app).await, ["alice"]);

    let users = admin_get(&app, "/users").await;
    assert_eq!(users[0]["display_name"], "Alice Example");
    assert_eq!(users[0]["upn"], "alice@corp.example");

    let locked = send(
        &app,
        admin(Method::POST, "/users/alice/lock", JSON, Body::empty()),
    )
    .await
    .ok_json(StatusCode::OK);
    assert_eq!(locked["state"], "locked");
    assert_eq!(admin_get(&app, "/users").await[0]["state"], "locked");
    let unlocked = send(
        &app,
        admin(Method::POST, "/users/alice/unlock", JSON, Body::empty()),
    )
    .await
    .ok_json(StatusCode::OK);
    assert_eq!(unlocked["state"], "active");

    for action in ["lock", "unlock"] {
        send(
            &app,
            admin(
                Method::POST,
                &format!("/users/nobody/{action}"),
                JSON,
                Body::empty(),
            ),
        )
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    }

    let details: Vec<String> = audit(&app, "?outcome=ok")
        .await
        .iter()
        .filter(|event| event["kind"] == "admin")
        .map(|event| event["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    for expected in [
        "added user alice",
        "locked user alice",
        "unlocked user alice",
    ] {
        assert!(
            details.iter().any(|detail| detail.contains(expected)),
            "{expected:?} not audited: {details:?}"
        );
    }
}

#[tokio::test]
async fn admin_imports_users_from_json_and_csv() {
    let app = app().await;
    send(
        &app,
        admin(
            Method::POST,
            "/users",
            JSON,
            json!({"id": "alice", "display_name": "Alice"}).to_string(),
        ),
    )
    .await
    .ok_json(StatusCode::CREATED);

    let import = json!([
        {"id": "alice", "display_name": "Alice Again"},
        {"id": "bob", "display_name": "Bob", "mail": "bob@example.com"},
        {"id": "bob", "display_name": "Bob Twice"},
        {"id": "carol", "display_name": "Carol", "mail": "carol-at-example.com"},
    ]);
    let report = send(
        &app,
        admin(Method::POST, "/users/import", JSON, import.to_string()),
    )
    .await
    .ok_json(StatusCode::OK);
    assert_eq!(report["added"], 1, "{report}");
    let skipped = report["skipped"].as_array().expect("skipped is an array");
    let reason_for = |id: &str| -> Vec<String> {
        skipped
            .iter()
            .filter(|skip| skip["id"] == id)
            .map(|skip| skip["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(reason_for("alice"), ["exists already"]);
    assert_eq!(reason_for("bob"), ["exists already"]);
    assert_eq!(reason_for("carol").len(), 1);
    assert!(reason_for("carol")[0].contains('@'), "{report}");
    assert_eq!(skipped.len(), 3, "{report}");

    let csv = "id,display_name,mail,upn,employee_id\r\n\
               dave,\"Example, Dave\",dave@example.com,,E-1\r\n\
               erin,\"Erin \"\"E\"\" Example\",erin@example.com,erin@corp.example,\r\n\
               bob,Bob,,,\r\n";
    let report = send(&app, admin(Method::POST, "/users/import", "text/csv", csv))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(report["added"], 2, "{report}");
    assert_eq!(
        report["skipped"],
        json!([{"id": "bob", "reason": "exists already"}])
    );

    let users = admin_get(&app, "/users").await;
    assert_eq!(user_ids(&app).await, ["alice", "bob", "dave", "erin"]);
    let dave = &users[2];
    assert_eq!(dave["display_name"], "Example, Dave");
    assert_eq!(dave["mail"], "dave@example.com");
    assert_eq!(dave["upn"], Value::Null);
    assert_eq!(dave["employee_id"], "E-1");
    let erin = &users[3];
    assert_eq!(erin["display_name"], "Erin \"E\" Example");
    assert_eq!(erin["upn"], "erin@corp.example");
    assert_eq!(users[0]["display_name"], "Alice", "kept, not replaced");

    for (content_type, body) in [
        (JSON, "{\"id\":\"zed\"}"),
        (JSON, "not json"),
        ("text/csv", "name,mail\nzed,zed@example.com\n"),
        ("text/csv", "id,display_name\nzed,\"open"),
        ("text/csv", ""),
    ] {
        send(
            &app,
            admin(Method::POST, "/users/import", content_type, body),
        )
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_eq!(user_ids(&app).await.len(), 4, "failed imports add nobody");

    let mut large = String::from("id,display_name,mail\n");
    for n in 0..2000 {
        large.push_str(&format!(
            "worker-{n:04},\"Field Worker {n}, Site B\",worker-{n:04}@example.com\n"
        ));
    }
    assert!(large.len() > MAX_BODY_BYTES, "larger than a sign-in body");
    let report = send(
        &app,
        admin(Method::POST, "/users/import", "text/csv", large),
    )
    .await
    .ok_json(StatusCode::OK);
    assert_eq!(report["added"], 2000, "{report}");
    assert_eq!(user_ids(&app).await.len(), 2004);
}

#[tokio::test]
async fn admin_extractor_refusals_are_json_errors() {
    let app = app().await;
    let refusals = [
        admin(
            Method::POST,
            "/users/import",
            "text/csv",
            vec![0xff, 0xfe, b'\n'],
        ),
        admin(Method::POST, "/users/import", JSON, vec![b'[', 0xc3]),
        admin(Method::POST, "/users/%FF/lock", JSON, Body::empty()),
        admin(Method::POST, "/users/%C3/unlock", JSON, Body::empty()),
        admin(Method::POST, "/cards/%FF/lock", JSON, Body::empty()),
        admin(Method::POST, "/cards/%FF/unlock", JSON, Body::empty()),
        admin(Method::POST, "/cards/%FF/revoke", JSON, Body::empty()),
        admin(Method::GET, "/audit?limit=99999999999", JSON, Body::empty()),
    ];
    for refusal in refusals {
        let path = refusal.uri().to_string();
        let reply = send(&app, refusal).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        reply.error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let oversized = admin(
        Method::POST,
        "/users/import",
        "text/csv",
        vec![b'a'; MAX_IMPORT_BYTES + 1],
    );
    send(&app, oversized)
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(user_ids(&app).await.is_empty());
}

#[tokio::test]
async fn admin_cards_start_empty_and_unknown_serials_are_not_found() {
    let app = app().await;
    assert_eq!(admin_get(&app, "/cards").await, json!([]));
    for serial in ["0a1b2c", "0A:1B:2C", "nope"] {
        for action in ["lock", "unlock", "revoke"] {
            send(
                &app,
                admin(
                    Method::POST,
                    &format!("/cards/{serial}/{action}"),
                    JSON,
                    Body::empty(),
                ),
            )
            .await
            .error(StatusCode::NOT_FOUND, "not_found");
        }
    }
    assert_eq!(admin_get(&app, "/cards").await, json!([]));
}

#[tokio::test]
async fn admin_audit_queries_filter() {
    let app = app().await;
    let before = OffsetDateTime::now_utc() - Duration::from_secs(1);
    for device in [
        "kiosk-1", "kiosk-2", "kiosk-1", "kiosk-3", "kiosk-1", "kiosk-2",
    ] {
        new_challenge(&app, device).await;
    }
    send(&app, post_json("/v1/assertions", r#"{"assertion":"a.b"}"#))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_request");

    let all = audit(&app, "").await;
    assert_eq!(all.len(), 7, "{all:?}");
    let ids: Vec<i64> = all
        .iter()
        .map(|event| event["id"].as_i64().expect("an id"))
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] > pair[1]), "newest first");

    let kiosk_1 = audit(&app, "?device=kiosk-1").await;
    assert_eq!(kiosk_1.len(), 3);
    assert!(kiosk_1.iter().all(|event| event["device"] == "kiosk-1"));

    let refused = audit(&app, "?outcome=invalid_request").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["kind"], "assertion");
    assert_eq!(audit(&app, "?outcome=ok").await.len(), 6);

    assert_eq!(audit(&app, "?user=nobody").await, Vec::<Value>::new());
    assert_eq!(audit(&app, "?limit=5").await, all[..5].to_vec());
    // Issue 12: `limit=0` asked for none and got one; kinds and pages were not offered.
    assert_eq!(audit(&app, "?limit=0").await, Vec::<Value>::new());
    assert_eq!(audit(&app, "?kind=challenge").await.len(), 6);
    let refused = audit(&app, "?kind=sign_in_refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["outcome"], "invalid_request");
    assert!(audit(&app, "?kind=sign_in").await.is_empty());
    let page_1 = audit(&app, "?limit=4").await;
    let cursor = page_1[3]["id"].as_i64().expect("an id");
    let page_2 = audit(&app, &format!("?limit=4&before={cursor}")).await;
    assert_eq!(
        [page_1, page_2].concat(),
        all,
        "two pages hold every event once"
    );

    let since_before = format!("?since={}", rfc3339(before));
    assert_eq!(audit(&app, &since_before).await.len(), 7);
    let future = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    assert!(
        audit(&app, &format!("?since={}", rfc3339(future)))
            .await
            .is_empty()
    );
    assert!(
        audit(&app, &format!("?until={}", rfc3339(before)))
            .await
            .is_empty()
    );
    assert_eq!(
        audit(&app, &format!("?device=kiosk-2&since={}", rfc3339(before)))
            .await
            .len(),
        2
    );

    for query in [
        "?since=yesterday",
        "?since=2026-13-01T00:00:00Z",
        "?until=2026-01-01",
        "?limit=abc",
        "?limit=-1",
        "?bogus=1",
        "?kind=nonsense",
        "?outcome=nonsense",
        "?outcome=OK",
        "?before=abc",
    ] {
        send(
            &app,
            admin(Method::GET, &format!("/audit{query}"), JSON, Body::empty()),
        )
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_request");
    }
}

/// Issue 11, item 9: a second user with the first one's mail in another case was accepted
/// (and the first user's sign-ins then failed); ids with zero-width or bidi characters were
/// accepted; a CSV with a byte-order mark was refused as having no 'id' column; an import
/// was audited as one count. Now every attribute a mapping rule uses is unique as the rule
/// compares it, ids are `[A-Za-z0-9._@-]{1,64}`, a BOM is read, and each imported user
/// has an audit event.
#[tokio::test]
async fn the_directory_refuses_duplicates_and_lookalike_ids() {
    let app = app().await;
    let add = |body: Value| admin(Method::POST, "/users", JSON, body.to_string());
    send(
        &app,
        add(json!({
            "id": "alice",
            "display_name": "Alice",
            "mail": "alice@example.com",
            "upn": "alice@corp.example",
            "employee_id": "E-1",
        })),
    )
    .await
    .ok_json(StatusCode::CREATED);
    for (body, attribute) in [
        (
            json!({"id": "alice2", "display_name": "Mallory", "mail": "ALICE@Example.com"}),
            "mail",
        ),
        (
            json!({"id": "alice3", "display_name": "Mallory", "upn": "Alice@CORP.example"}),
            "upn",
        ),
        (
            json!({"id": "alice4", "display_name": "Mallory", "employee_id": "E-1"}),
            "employee_id",
        ),
    ] {
        let message = send(&app, add(body))
            .await
            .error(StatusCode::CONFLICT, "conflict");
        assert!(
            message.contains(attribute) && message.contains("\"alice\""),
            "{attribute}: the conflicting user is named: {message:?}"
        );
    }
    // Another case of an employee id is another employee id (the rule compares it exactly).
    send(
        &app,
        add(json!({"id": "e1", "display_name": "E One", "employee_id": "e-1"})),
    )
    .await
    .ok_json(StatusCode::CREATED);
    for id in [
        "ali\u{200b}ce",
        "\u{202e}ecila",
        "alice\u{2066}",
        "al ice",
        "alice/..",
        "ａlice",
        &"a".repeat(65),
    ] {
        let message = send(&app, add(json!({"id": id, "display_name": "Lookalike"})))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_request");
        assert!(message.contains("1 to 64"), "{id:?}: {message:?}");
    }
    let message = send(
        &app,
        add(json!({"id": "bob", "display_name": "Bob", "mail": "b\u{200b}ob@example.com"})),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(message.contains("zero-width"), "{message:?}");
    assert_eq!(user_ids(&app).await, ["alice", "e1"]);

    // A CSV saved with a byte-order mark; one user clashes with alice's mail in another
    // case, two clash with each other.
    let csv = "\u{feff}id,display_name,mail\r\n\
               carol,Carol,carol@example.com\r\n\
               mallory,Mallory,Alice@EXAMPLE.com\r\n\
               dave,Dave,dave@example.com\r\n\
               dave2,Dave Again,DAVE@example.com\r\n";
    let report = send(&app, admin(Method::POST, "/users/import", "text/csv", csv))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(report["added"], 2, "{report}");
    let skipped = report["skipped"].as_array().expect("an array");
    assert_eq!(skipped.len(), 2, "{report}");
    assert_eq!(skipped[0]["id"], "mallory");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("\"alice\""),
        "{report}"
    );
    assert_eq!(skipped[1]["id"], "dave2");
    assert!(
        skipped[1]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("\"dave\""),
        "{report}"
    );
    let bom_json = format!(
        "\u{feff}{}",
        json!([{"id": "erin", "display_name": "Erin"}])
    );
    let report = send(&app, admin(Method::POST, "/users/import", JSON, bom_json))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(report["added"], 1, "{report}");
    assert_eq!(
        user_ids(&app).await,
        ["alice", "carol", "dave", "e1", "erin"]
    );

    // One audit event per imported user, naming the user.
    let events = audit(&app, "?outcome=ok").await;
    for id in ["carol", "dave", "erin"] {
        let imported = events
            .iter()
            .filter(|event| event["kind"] == "admin" && event["user_id"] == id)
            .count();
        assert_eq!(imported, 1, "{id}: {events:#?}");
    }
}

/// A card certificate's facts as the store records them (no DER needed).
fn card_facts(serial: &str) -> pivtap_protocol::certificate::CertificateFacts {
    pivtap_protocol::certificate::CertificateFacts {
        der: Vec::new(),
        serial: serial.to_owned(),
        fingerprint: format!("{serial:0>64}"),
        subject: format!("CN=card {serial}"),
        issuer: "CN=Test CA".to_owned(),
        common_name: Some(format!("card {serial}")),
        subject_serial_number: None,
        emails: Vec::new(),
        upns: Vec::new(),
        device: None,
        not_before: OffsetDateTime::now_utc() - Duration::from_secs(86_400),
        not_after: OffsetDateTime::now_utc() + Duration::from_secs(86_400),
        key: pivtap_protocol::certificate::KeyKind::EcP256,
    }
}

/// Issue 12: users could be added and locked but never changed, renamed or deleted, so a
/// wrong mail (the duplicate-attribute trap) left only editing SQLite. Now `PATCH` changes
/// or renames (cards and audit follow), `DELETE` deletes and revokes the user's cards,
/// and both keep every attribute unique.
#[tokio::test]
async fn admin_updates_renames_and_deletes_users() {
    let state = state().await;
    let app = server::app(state.clone());
    for (id, mail) in [("alice", "alice@example.com"), ("bob", "bob@example.com")] {
        send(
            &app,
            admin(
                Method::POST,
                "/users",
                JSON,
                json!({"id": id, "display_name": id, "mail": mail}).to_string(),
            ),
        )
        .await
        .ok_json(StatusCode::CREATED);
    }
    let now = OffsetDateTime::now_utc();
    let store = state.store();
    store
        .record_card(&card_facts("0a"), Some("alice"), now)
        .await
        .expect("alice's card is recorded");
    store
        .record_card(&card_facts("0b"), Some("bob"), now)
        .await
        .expect("bob's card is recorded");
    let patch = |id: &str, body: Value| {
        admin(
            Method::PATCH,
            &format!("/users/{id}"),
            JSON,
            body.to_string(),
        )
    };

    let taken = send(&app, patch("alice", json!({"mail": "BOB@example.com"})))
        .await
        .error(StatusCode::CONFLICT, "conflict");
    assert!(taken.contains("\"bob\" has this mail"), "{taken}");
    send(&app, patch("alice", json!({"id": "bob"})))
        .await
        .error(StatusCode::CONFLICT, "conflict");
    send(&app, patch("nobody", json!({"display_name": "N"})))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    for bad in [
        json!({"mail": "no-at-sign"}),
        json!({"id": "al ice"}),
        json!({"display_name": " "}),
        json!({"state": "locked"}),
    ] {
        send(&app, patch("alice", bad))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_eq!(
        admin_get(&app, "/users").await[0]["mail"],
        "alice@example.com",
        "refused changes change nothing"
    );

    let updated = send(
        &app,
        patch(
            "alice",
            json!({"display_name": "Alice B", "upn": "alice@corp.example", "mail": ""}),
        ),
    )
    .await
    .ok_json(StatusCode::OK);
    assert_eq!(updated["display_name"], "Alice B");
    assert_eq!(updated["upn"], "alice@corp.example");
    assert_eq!(updated["mail"], Value::Null, "an empty mail removes it");
    // The freed mail may now be bob's second address... or anyone's.
    let renamed = send(&app, patch("alice", json!({"id": "alice.b"})))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(renamed["id"], "alice.b");
    assert_eq!(
        renamed["upn"], "alice@corp.example",
        "a rename keeps the rest"
    );
    assert_eq!(user_ids(&app).await, ["alice.b", "bob"]);
    let cards = admin_get(&app, "/cards").await;
    assert_eq!(
        cards[0]["user_id"], "alice.b",
        "the card follows the rename"
    );
    let history = audit(&app, "?user=alice.b").await;
    let details: Vec<&str> = history
        .iter()
        .map(|event| event["detail"].as_str().unwrap_or_default())
        .collect();
    assert!(
        details[0].contains("renamed from alice"),
        "the rename is audited: {details:?}"
    );
    assert!(
        details.iter().any(|d| d.contains("added user alice")),
        "the audit follows the rename: {details:?}"
    );
    assert!(audit(&app, "?user=alice").await.is_empty());

    let deleted = send(
        &app,
        admin(Method::DELETE, "/users/bob", JSON, Body::empty()),
    )
    .await
    .ok_json(StatusCode::OK);
    assert_eq!(deleted["deleted"], "bob");
    let card_0b = cards[1]["id"].as_str().expect("a card id").to_owned();
    assert_eq!(deleted["revoked_cards"], json!([card_0b]));
    assert_eq!(user_ids(&app).await, ["alice.b"]);
    let cards = admin_get(&app, "/cards").await;
    assert_eq!(cards[1]["state"], "revoked");
    assert_eq!(cards[1]["user_id"], Value::Null);
    let revocation = store
        .revocation(&pivtap_server::store::CardId {
            issuer: "CN=Test CA".to_owned(),
            serial: "0b".to_owned(),
        })
        .await
        .expect("the store answers")
        .expect("bob's card is on the revocation list");
    assert_eq!(
        revocation.reason,
        pivtap_server::store::RevocationReason::AffiliationChanged
    );
    assert!(
        audit(&app, "?user=bob").await[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("deleted user bob"))
    );
    send(
        &app,
        admin(Method::DELETE, "/users/bob", JSON, Body::empty()),
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");
    // bob's mail is free again.
    send(
        &app,
        admin(
            Method::POST,
            "/users",
            JSON,
            json!({"id": "bob2", "display_name": "Bob", "mail": "bob@example.com"}).to_string(),
        ),
    )
    .await
    .ok_json(StatusCode::CREATED);
}

/// Issue 12: an import could only add; now `update=true` updates existing users, the
/// report says what was added, updated (which fields), unchanged or refused, and
/// `dry_run=true` checks it all and keeps nothing.
#[tokio::test]
async fn admin_imports_update_existing_users_and_dry_runs_keep_nothing() {
    let app = app().await;
    let first = json!([
        {"id": "alice", "display_name": "Alice", "mail": "alice@example.com"},
        {"id": "bob", "display_name": "Bob", "mail": "bob@example.com"},
    ]);
    send(
        &app,
        admin(Method::POST, "/users/import", JSON, first.to_string()),
    )
    .await
    .ok_json(StatusCode::OK);
    let second = json!([
        {"id": "alice", "display_name": "Alice", "mail": "alice@example.com"},
        {"id": "bob", "display_name": "Bob Example", "mail": "bob@example.com", "upn": "bob@corp"},
        {"id": "carol", "display_name": "Carol", "mail": "carol@example.com"},
        {"id": "dave", "display_name": "Dave", "mail": "ALICE@example.com"},
    ]);
    let import = |query: &str| {
        admin(
            Method::POST,
            &format!("/users/import{query}"),
            JSON,
            second.to_string(),
        )
    };
    let dry = send(&app, import("?update=true&dry_run=true"))
        .await
        .ok_json(StatusCode::OK);
    let expected_users = json!([
        {"id": "alice", "outcome": "unchanged"},
        {"id": "bob", "outcome": "updated", "changed": ["display_name", "upn"]},
        {"id": "carol", "outcome": "added"},
    ]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (&dry["added"], &dry["updated"], &dry["unchanged"]),
        (&json!(1), &json!(1), &json!(1)),
        "{dry}"
    );
    assert_eq!(dry["users"], expected_users);
    assert_eq!(
        dry["skipped"],
        json!([{"id": "dave", "reason": "user \"alice\" has this mail already"}])
    );
    assert_eq!(
        user_ids(&app).await,
        ["alice", "bob"],
        "a dry run keeps nothing"
    );
    assert_eq!(admin_get(&app, "/users").await[1]["display_name"], "Bob");

    let without_update = send(&app, import("")).await.ok_json(StatusCode::OK);
    assert_eq!(without_update["added"], 1);
    assert_eq!(without_update["updated"], 0);
    assert_eq!(
        without_update["skipped"][0],
        json!({"id": "alice", "reason": "exists already"})
    );
    let updated = send(&app, import("?update=true"))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(updated["dry_run"], false);
    assert_eq!(
        updated["users"],
        json!([
            {"id": "alice", "outcome": "unchanged"},
            {"id": "bob", "outcome": "updated", "changed": ["display_name", "upn"]},
            {"id": "carol", "outcome": "unchanged"},
        ])
    );
    let users = admin_get(&app, "/users").await;
    assert_eq!(users[1]["display_name"], "Bob Example");
    assert_eq!(users[1]["upn"], "bob@corp");
    let bob_events = audit(&app, "?user=bob").await;
    assert!(
        bob_events[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("updated display_name, upn")),
        "{bob_events:?}"
    );
    send(
        &app,
        admin(Method::POST, "/users/import?update=yes", JSON, "[]"),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_request");
}

/// Issue 12: a revocation takes an RFC 5280 reason, kept on the revocation list (and so
/// in the CRL entry) and in the audit; a reason that is not one is refused.
#[tokio::test]
async fn admin_revokes_a_card_with_a_reason() {
    let state = state().await;
    let app = server::app(state.clone());
    let store = state.store();
    let now = OffsetDateTime::now_utc();
    for serial in ["0c", "0d"] {
        store
            .record_card(&card_facts(serial), None, now)
            .await
            .expect("the card is recorded");
    }
    let revoke = |serial: &str, body: &str| {
        admin(
            Method::POST,
            &format!("/cards/{serial}/revoke"),
            JSON,
            body.to_owned(),
        )
    };
    for bad in [r#"{"reason":"certificateHold"}"#, r#"{"why":"x"}"#, "nope"] {
        send(&app, revoke("0c", bad))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_eq!(admin_get(&app, "/cards").await[0]["state"], "active");
    let revoked = send(&app, revoke("0c", r#"{"reason":"keyCompromise"}"#))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(revoked["state"], "revoked");
    send(&app, revoke("0d", "")).await.ok_json(StatusCode::OK);
    let reason = async |serial: &str| {
        store
            .revocation(&pivtap_server::store::CardId {
                issuer: "CN=Test CA".to_owned(),
                serial: serial.to_owned(),
            })
            .await
            .expect("the store answers")
            .expect("on the list")
            .reason
    };
    use pivtap_server::store::RevocationReason;
    assert_eq!(reason("0c").await, RevocationReason::KeyCompromise);
    assert_eq!(reason("0d").await, RevocationReason::Unspecified);
    let events = audit(&app, "?card=0c").await;
    assert!(
        events[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("reason keyCompromise")),
        "{events:?}"
    );
}

/// A session token from `state`'s keys for `user` on `device`, issued `age` ago and
/// living `lifetime`.
fn session_token(
    state: &ServerState,
    user: &str,
    device: &str,
    age: Duration,
    lifetime: Duration,
) -> String {
    let issued = OffsetDateTime::now_utc() - age;
    let claims = pivtap_protocol::wire::SessionClaims {
        iss: ORIGIN.to_owned(),
        sub: user.to_owned(),
        aud: "pivtap-apps".to_owned(),
        iat: issued.unix_timestamp(),
        exp: (issued + lifetime).unix_timestamp(),
        jti: format!("jti-{user}-{}", age.as_secs()),
        name: user.to_owned(),
        email: None,
        amr: vec!["sc".to_owned(), "pin".to_owned()],
        device: device.to_owned(),
        sid: format!("sid-{user}-{}", age.as_secs()),
    };
    state.tokens().issue(&claims).expect("a token is issued")
}

/// Issue 12: sign-outs were not recorded. Now a device reports them with the session's
/// token: audited as `sign_out` for the token's user and device, with the card that
/// signed in and the reason; a replay writes nothing; no token, a foreign token or a
/// long-expired one is refused, and the body cannot name another user. (Issue 15: the
/// sign-out ends the token's stored session, which names the card.)
#[tokio::test]
async fn sign_outs_are_audited_for_the_tokens_user_once() {
    let state = state().await;
    let app = server::app(state.clone());
    // The sessions the tokens below belong to, stored as a sign-in stores them.
    let signed_in_at = OffsetDateTime::now_utc() - Duration::from_secs(120);
    for (user, device, serial, sid) in [
        ("alice", "kiosk-1", "4a0b", "sid-alice-119"),
        ("carol", "kiosk-2", "5c0d", "sid-carol-3700"),
    ] {
        state
            .store()
            .add_user(&pivtap_testkit::server::active_user(
                user,
                user,
                &format!("{user}@example.com"),
            ))
            .await
            .expect("the user is added");
        let facts = card_facts(serial);
        let event = pivtap_server::store::NewAuditEvent {
            time: signed_in_at,
            kind: pivtap_server::store::AuditKind::Assertion,
            outcome: pivtap_server::store::AuditOutcome::Ok,
            device: Some(device.to_owned()),
            card_serial: Some(serial.to_owned()),
            user_id: Some(user.to_owned()),
            detail: None,
        };
        let session = pivtap_server::store::NewSession {
            id: sid.to_owned(),
            user_id: user.to_owned(),
            device: device.to_owned(),
            card: pivtap_server::store::CardId::of(&facts),
            amr: vec!["sc".to_owned(), "pin".to_owned()],
            created_at: signed_in_at,
            expires_at: signed_in_at + Duration::from_secs(12 * 3600),
            refresh_token_hash: pivtap_server::store::secret_hash(sid),
        };
        state
            .store()
            .finish_sign_in(&facts, user, signed_in_at, event, &session)
            .await
            .expect("the sign-in is stored");
    }
    let token = session_token(
        &state,
        "alice",
        "kiosk-1",
        Duration::from_secs(119),
        Duration::from_secs(3600),
    );
    let sign_out = |token: &str, body: &str| {
        let bearer = format!("Bearer {token}");
        request(
            Method::POST,
            "/v1/sign-outs",
            &[
                (header::AUTHORIZATION, bearer.as_str()),
                (header::CONTENT_TYPE, JSON),
            ],
            body.to_owned(),
        )
    };
    let recorded = send(&app, sign_out(&token, r#"{"reason":"card_removed"}"#))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(recorded, json!({"recorded": true}));
    let events = audit(&app, "?kind=sign_out").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["outcome"], "ok");
    assert_eq!(events[0]["user_id"], "alice");
    assert_eq!(events[0]["device"], "kiosk-1");
    assert_eq!(events[0]["card_serial"], "4a0b");
    let detail = events[0]["detail"].as_str().expect("a detail");
    assert!(detail.ends_with("reason card_removed"), "{detail}");
    assert!(
        !detail.contains("jti-"),
        "no token id in the audit: {detail}"
    );

    let replay = send(&app, sign_out(&token, r#"{"reason":"idle"}"#))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(replay, json!({"recorded": false}));
    assert_eq!(
        audit(&app, "?kind=sign_out").await.len(),
        1,
        "a replay writes nothing"
    );

    for body in [
        r#"{"reason":"idle","user":"bob"}"#,
        r#"{"reason":"Not A Reason"}"#,
        r#"{"reason":""}"#,
    ] {
        send(&app, sign_out(&token, body))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let foreign = {
        let other_state = self::state().await;
        session_token(
            &other_state,
            "bob",
            "kiosk-1",
            Duration::ZERO,
            Duration::from_secs(3600),
        )
    };
    let just_expired = session_token(
        &state,
        "carol",
        "kiosk-2",
        Duration::from_secs(3700),
        Duration::from_secs(3600),
    );
    let long_expired = session_token(
        &state,
        "dave",
        "kiosk-2",
        Duration::from_secs(7200),
        Duration::from_secs(3600),
    );
    send(&app, sign_out(&just_expired, r#"{"reason":"expired"}"#))
        .await
        .ok_json(StatusCode::OK);
    for refused in [foreign.as_str(), long_expired.as_str(), "not-a-token"] {
        send(&app, sign_out(refused, r#"{"reason":"idle"}"#))
            .await
            .error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    send(
        &app,
        post_json("/v1/sign-outs", r#"{"reason":"idle"}"#.to_owned()),
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let recorded: Vec<String> = audit(&app, "?kind=sign_out&outcome=ok")
        .await
        .iter()
        .map(|event| event["user_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(recorded, ["carol", "alice"]);
    assert_eq!(
        audit(&app, "?kind=sign_out&outcome=unauthorized")
            .await
            .len(),
        4
    );
}

/// `METHOD /v1/admin{path}` with `token` as the bearer credential, a JSON body.
fn admin_request_as(
    token: &str,
    method: Method,
    path: &str,
    body: impl Into<Body>,
) -> Request<Body> {
    admin_request(token, method, path, JSON, body)
}

/// Issue 12: one shared admin token, and the audit could not say who acted. Now named
/// admin credentials are added (token shown once, stored hashed), listed and revoked; the
/// token file is the credential `initial`; each admin action's audit names the credential;
/// the last active credential cannot be revoked.
#[tokio::test]
async fn named_admin_credentials_act_are_audited_by_name_and_are_revoked() {
    let app = app().await;
    assert_eq!(
        admin_get(&app, "/credentials").await,
        json!([{"name": "initial", "created_at": null, "revoked_at": null}])
    );
    let made = send(
        &app,
        admin(
            Method::POST,
            "/credentials",
            JSON,
            r#"{"name":"erin-laptop"}"#,
        ),
    )
    .await
    .ok_json(StatusCode::CREATED);
    let erin = made["token"].as_str().expect("the token, once").to_owned();
    assert!(erin.len() >= 43, "a 256-bit token: {erin}");
    for (body, status, code) in [
        (
            r#"{"name":"erin-laptop"}"#,
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            r#"{"name":"initial"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"name":"erin laptop"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        send(&app, admin(Method::POST, "/credentials", JSON, body))
            .await
            .error(status, code);
    }
    let listed = admin_get(&app, "/credentials").await;
    assert_eq!(listed[1]["name"], "erin-laptop");
    assert!(listed[1].get("token").is_none(), "never listed: {listed}");

    send(
        &app,
        admin_request_as(
            &erin,
            Method::POST,
            "/users",
            json!({"id": "zoe", "display_name": "Zoe"}).to_string(),
        ),
    )
    .await
    .ok_json(StatusCode::CREATED);
    send(
        &app,
        admin(Method::POST, "/users/zoe/lock", JSON, Body::empty()),
    )
    .await
    .ok_json(StatusCode::OK);
    let zoe = audit(&app, "?user=zoe").await;
    assert_eq!(
        zoe[1]["detail"], "added user zoe [admin credential erin-laptop]",
        "{zoe:?}"
    );
    assert_eq!(
        zoe[0]["detail"],
        "locked user zoe [admin credential initial]"
    );
    let everything = serde_json::to_string(&audit(&app, "?limit=1000").await).unwrap();
    assert!(!everything.contains(&erin), "no token in the audit");

    let revoke = |token: &str, name: &str| {
        admin_request_as(
            token,
            Method::POST,
            &format!("/credentials/{name}/revoke"),
            Body::empty(),
        )
    };
    let revoked = send(&app, revoke(ADMIN_TOKEN, "erin-laptop"))
        .await
        .ok_json(StatusCode::OK);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    send(
        &app,
        admin_request_as(&erin, Method::GET, "/users", Body::empty()),
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    send(&app, revoke(ADMIN_TOKEN, "erin-laptop"))
        .await
        .error(StatusCode::CONFLICT, "conflict");
    send(&app, revoke(ADMIN_TOKEN, "nobody"))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    let last = send(&app, revoke(ADMIN_TOKEN, "initial"))
        .await
        .error(StatusCode::CONFLICT, "conflict");
    assert!(last.contains("last active"), "{last}");

    let frank = send(
        &app,
        admin(Method::POST, "/credentials", JSON, r#"{"name":"frank"}"#),
    )
    .await
    .ok_json(StatusCode::CREATED)["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    send(&app, revoke(&frank, "initial"))
        .await
        .ok_json(StatusCode::OK);
    send(&app, admin(Method::GET, "/users", JSON, Body::empty()))
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let listed = admin_get_as(&app, &frank, "/credentials").await;
    let states: Vec<(String, bool)> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["revoked_at"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("initial".to_owned(), true),
            ("erin-laptop".to_owned(), true),
            ("frank".to_owned(), false)
        ]
    );
    send(&app, revoke(&frank, "frank"))
        .await
        .error(StatusCode::CONFLICT, "conflict");
}

async fn admin_get_as(app: &Router, token: &str, path: &str) -> Value {
    send(
        app,
        admin_request_as(token, Method::GET, path, Body::empty()),
    )
    .await
    .ok_json(StatusCode::OK)
}

/// A log writer for one test: keeps what is written.
#[derive(Clone, Default)]
struct KeptLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for KeptLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("the log lock")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue 12: requests were logged without an id or the client's address, and every admin
/// route as "/v1/admin". Now each answer carries `X-Request-Id`, and its log line has
/// that id, the client address and the route template (not the path as sent).
///
/// The log is this test binary's global subscriber (a scoped one misses events whose
/// callsites other test threads registered first).
#[tokio::test]
async fn requests_are_logged_with_an_id_the_client_and_the_route_template() {
    static KEPT: std::sync::OnceLock<KeptLog> = std::sync::OnceLock::new();
    let kept = KEPT
        .get_or_init(|| {
            let kept = KeptLog::default();
            let writer = kept.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
            kept
        })
        .clone();
    let app = app().await;
    let first = send(
        &app,
        admin(Method::POST, "/users/erin/lock", JSON, Body::empty()),
    )
    .await;
    first.error(StatusCode::NOT_FOUND, "not_found");
    let second = send(&app, request(Method::GET, "/healthz", &[], Body::empty())).await;
    let id = |reply: &Reply| {
        reply
            .header(header::HeaderName::from_static("x-request-id"))
            .to_owned()
    };
    let (first_id, second_id) = (id(&first), id(&second));
    assert_eq!(first_id.len(), 16, "{first_id:?}");
    assert!(first_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(first_id, second_id, "each request has its own id");
    let log = String::from_utf8(kept.0.lock().expect("the log lock").clone()).expect("UTF-8");
    let line = log
        .lines()
        .find(|line| line.contains(&first_id))
        .unwrap_or_else(|| panic!("no log line with {first_id}: {log}"));
    assert!(line.contains("/v1/admin/users/{id}/lock"), "{line}");
    assert!(!line.contains("erin"), "the template, not the path: {line}");
    assert!(line.contains("client="), "{line}");
    assert!(line.contains("status=404"), "{line}");
}
