//! Two server nodes on one store decide alike: failure counters, device proof ids and the token signing keys are the store's, not one node's.
//!
//! Each test builds two [`ServerState`]s from one configuration directory, so both open the
//! same SQLite file, as two `pivtap server run` processes would (the PostgreSQL store gives
//! the same guarantees, checked by the store conformance suite's two-node tests).

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use pivtap_protocol::wire::AssertionPayload;
use pivtap_server::config::ServerConfig;
use pivtap_server::server::{self, ServerState, devices};
use pivtap_server::token::TokenVerifier;
use pivtap_testkit::badge::ALICE;
use pivtap_testkit::server::{init_directory, state_with_users};
use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;
use tower::ServiceExt as _;

const ORIGIN: &str = "https://auth.example.test";

/// Two nodes on one configuration directory (and so one database).
struct Nodes {
    _dir: TempDir,
    config: ServerConfig,
    a: ServerState,
    b: ServerState,
}

async fn nodes(require_registration: bool) -> Nodes {
    let (dir, report) = init_directory();
    let mut config = ServerConfig::load(&report.config_path).expect("server.toml loads");
    config.origin = ORIGIN.to_owned();
    config.devices.require_registration = require_registration;
    let a = state_with_users(&config, &[ALICE.user()]).await;
    let (b, _listener) = server::from_config(&config)
        .await
        .expect("the second node starts on the same directory");
    Nodes {
        _dir: dir,
        config,
        a,
        b,
    }
}

async fn send(state: &ServerState, request: Request<Body>) -> (StatusCode, Value) {
    let app: Router = server::app(state.clone());
    let response = app.oneshot(request).await.expect("answers");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body reads");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request")
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .body(Body::empty())
        .expect("a request")
}

/// Alice's card signs an assertion over `nonce` for `device`.
fn alice_assertion(nonce: &str, device: &str) -> String {
    ALICE.signed(&ALICE.draft_with(AssertionPayload {
        aud: ORIGIN.to_owned(),
        nonce: nonce.to_owned(),
        device: device.to_owned(),
        iat: OffsetDateTime::now_utc().unix_timestamp(),
        slot: "9a".to_owned(),
    }))
}

/// A nonce no node issued, of the right form.
fn unknown_nonce(n: u8) -> String {
    pivtap_protocol::jose::base64url_encode([n; 32])
}

/// Signs Alice in at `state` through kiosk `device` (open mode): the session token.
async fn sign_in(state: &ServerState, device: &str) -> String {
    let (status, challenge) = send(state, post("/v1/challenges", &json!({"device": device}))).await;
    assert_eq!(status, StatusCode::CREATED, "{challenge}");
    let nonce = challenge["nonce"].as_str().expect("a nonce");
    let (status, signed_in) = send(
        state,
        post(
            "/v1/assertions",
            &json!({"assertion": alice_assertion(nonce, device)}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    signed_in["token"].as_str().expect("a token").to_owned()
}

/// The `kid` of a token's header.
fn kid(token: &str) -> String {
    let header = token.split('.').next().expect("a JWT");
    let header: Value = serde_json::from_slice(
        &pivtap_protocol::jose::base64url_decode(header).expect("base64url"),
    )
    .expect("JSON");
    header["kid"].as_str().expect("a kid").to_owned()
}

/// The kids a node's JWKS publishes, and a verifier of them.
async fn jwks(state: &ServerState) -> (Vec<String>, TokenVerifier) {
    let (status, keys) = send(state, get("/.well-known/jwks.json")).await;
    assert_eq!(status, StatusCode::OK);
    let kids = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| key["kid"].as_str().expect("a kid").to_owned())
        .collect();
    (kids, TokenVerifier::from_jwks(&keys).expect("a valid JWKS"))
}

#[tokio::test]
async fn failures_at_one_node_hold_the_card_back_at_the_other() {
    let nodes = nodes(false).await;
    let limit = nodes.config.rate_limit.failures_before_delay;
    // One failure past the limit, all at node A: an authentic card, a nonce nobody issued.
    for n in 0..=limit {
        let n = u8::try_from(n).expect("a small limit");
        let (status, body) = send(
            &nodes.a,
            post(
                "/v1/assertions",
                &json!({"assertion": alice_assertion(&unknown_nonce(n), "kiosk-07")}),
            ),
        )
        .await;
        assert_eq!(body["error"], "challenge_unknown", "{body}");
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Node B holds the card back, even with a challenge it issued itself.
    let (status, challenge) = send(
        &nodes.b,
        post("/v1/challenges", &json!({"device": "kiosk-08"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{challenge}");
    let nonce = challenge["nonce"].as_str().expect("a nonce");
    let (status, body) = send(
        &nodes.b,
        post(
            "/v1/assertions",
            &json!({"assertion": alice_assertion(nonce, "kiosk-08")}),
        ),
    )
    .await;
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_device_proof_used_at_one_node_is_refused_at_the_other() {
    let nodes = nodes(true).await;
    let credential = devices::credential_locally(&nodes.a, "kiosk-07")
        .await
        .expect("kiosk-07 is registered and enrolled");
    let proof = credential.proof(ORIGIN, OffsetDateTime::now_utc());
    let request = json!({"device": "kiosk-07", "proof": proof});
    let (status, body) = send(&nodes.a, post("/v1/challenges", &request)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(&nodes.b, post("/v1/challenges", &request)).await;
    assert_eq!(
        body["error"], "device_proof_invalid",
        "a replay at the other node: {body}"
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let fresh =
        json!({"device": "kiosk-07", "proof": credential.proof(ORIGIN, OffsetDateTime::now_utc())});
    let (status, body) = send(&nodes.b, post("/v1/challenges", &fresh)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a fresh proof passes at B: {body}"
    );
}

#[tokio::test]
async fn a_rotation_at_one_node_is_served_and_signed_with_by_the_other_within_a_second() {
    let nodes = nodes(false).await;
    let refresh = tokio::spawn(server::keep_token_keys_current(nodes.b.clone()));
    let before = sign_in(&nodes.b, "kiosk-07").await;
    let (kids_a, _) = jwks(&nodes.a).await;
    let (kids_b, _) = jwks(&nodes.b).await;
    assert_eq!(
        kids_a, kids_b,
        "both nodes took the store's key set at start"
    );

    let rotated = server::rotate_token_keys(
        nodes.a.store(),
        &nodes.config.tokens.key_file,
        nodes.config.tokens.lifetime(),
        OffsetDateTime::now_utc(),
    )
    .await
    .expect("the keys rotate");
    assert_eq!(rotated.previous_kid, kid(&before));
    let rotated_at = Instant::now();
    loop {
        let (kids, _) = jwks(&nodes.b).await;
        if kids.first() == Some(&rotated.current_kid) {
            assert!(
                kids.contains(&rotated.previous_kid),
                "the old key stays published: {kids:?}"
            );
            break;
        }
        assert!(
            rotated_at.elapsed() < 2 * server::TOKEN_KEYS_REFRESH,
            "node B did not pick up the rotation within a second: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refresh.abort();
    let after = sign_in(&nodes.b, "kiosk-08").await;
    assert_eq!(kid(&after), rotated.current_kid, "B signs with the new key");
    // A reads the store now (its own refresh task would within the same second).
    nodes.a.sync_token_keys().await.expect("A reads the store");
    let (kids_a, verifier_a) = jwks(&nodes.a).await;
    assert_eq!(kids_a.first(), Some(&rotated.current_kid));
    let now = OffsetDateTime::now_utc();
    for token in [&before, &after] {
        let claims = verifier_a
            .verify(token, now)
            .expect("A's JWKS verifies B's tokens");
        assert_eq!(claims.sub, "alice");
    }
    // A second rotation, through B's store handle, goes on from the version stored.
    let again = server::rotate_token_keys(
        nodes.b.store(),
        &nodes.config.tokens.key_file,
        nodes.config.tokens.lifetime(),
        OffsetDateTime::now_utc(),
    )
    .await
    .expect("the keys rotate again");
    assert_eq!(again.version, rotated.version + 1);
    assert_eq!(again.previous_kid, rotated.current_kid);
}
