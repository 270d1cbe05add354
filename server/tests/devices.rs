//! Device identity: challenges go only to registered devices that prove themselves with their own key, and the `device` claim of a token is the device that proved itself.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pivtap_client::device::{DeviceCredential, NewDeviceKey};
use pivtap_protocol::jose::base64url_encode;
use pivtap_protocol::wire::AssertionPayload;
use pivtap_server::config::ServerConfig;
use pivtap_server::server::{self, ServerState, devices};
use pivtap_server::store::ChallengeUse;
use pivtap_testkit::badge::ALICE;
use pivtap_testkit::server::{admin_request, admin_token, init_directory, state_with_users};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;
use tower::ServiceExt as _;

const JSON: &str = "application/json";

const ORIGIN: &str = "https://auth.example.test";

struct Target {
    _dir: TempDir,
    app: Router,
    state: ServerState,
    admin_token: String,
}

async fn target() -> Target {
    target_with(true).await
}

async fn target_with(require_registration: bool) -> Target {
    let (dir, report) = init_directory();
    let mut config = ServerConfig::load(&report.config_path).expect("server.toml loads");
    config.origin = ORIGIN.to_owned();
    config.devices.require_registration = require_registration;
    let state = state_with_users(&config, &[ALICE.user()]).await;
    let admin_token = admin_token(&report);
    Target {
        _dir: dir,
        app: server::app(state.clone()),
        state,
        admin_token,
    }
}

impl Target {
    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(request).await.expect("answers");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body reads");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

impl Target {
    fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Request<Body> {
        admin_request(
            &self.admin_token,
            method,
            path,
            JSON,
            body.map_or_else(Body::empty, |body| Body::from(body.to_string())),
        )
    }

    async fn credential(&self, device: &str) -> DeviceCredential {
        devices::credential_locally(&self.state, device)
            .await
            .expect("the device is registered and enrolled")
    }

    async fn challenge(&self, device: &str, proof: Option<String>) -> (StatusCode, Value) {
        let mut body = json!({ "device": device });
        if let Some(proof) = proof {
            body["proof"] = Value::from(proof);
        }
        self.send(post("/v1/challenges", &body)).await
    }

    async fn audit(&self) -> Vec<Value> {
        let (status, audit) = self
            .send(self.admin(Method::GET, "/audit?limit=1000", None))
            .await;
        assert_eq!(status, StatusCode::OK);
        audit.as_array().expect("an array").clone()
    }
}

/// A compact JWS with this header and payload JSON signed by `key` (PKCS#8 PEM, P-256).
fn signed(key_pem: &str, header: &Value, payload: &Value) -> String {
    let input = format!(
        "{}.{}",
        base64url_encode(header.to_string()),
        base64url_encode(payload.to_string())
    );
    let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).expect("a PKCS#8 key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
        .expect("a P-256 key");
    let signature = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .expect("signs");
    format!("{input}.{}", base64url_encode(signature.as_ref()))
}

fn proof_header(device: &str) -> Value {
    json!({"alg": "ES256", "typ": "pivtap-device+jwt", "kid": device})
}

fn proof_claims(device: &str, iat: i64) -> Value {
    json!({"aud": ORIGIN, "device": device, "iat": iat, "jti": format!("j{iat}-{}", rand_id())})
}

fn rand_id() -> String {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).expect("random");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Alice's card signs an assertion over `nonce` for `device`.
fn alice_assertion(nonce: &str, device: &str) -> String {
    ALICE.signed(&ALICE.draft_with(AssertionPayload {
        aud: ORIGIN.to_owned(),
        nonce: nonce.to_owned(),
        device: device.to_owned(),
        iat: now(),
        slot: "9a".to_owned(),
    }))
}

/// The claims of a session token, unverified (the server's own tests check the signature).
fn token_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
        .expect("JSON claims")
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, JSON)
        .body(Body::from(body.to_string()))
        .expect("a request")
}

/// The attack: anyone could ask for a challenge in kiosk-07's name, then sign in (or fail
/// sign-ins) claiming to be kiosk-07.
#[tokio::test]
async fn an_unregistered_client_is_refused_a_challenge() {
    let target = target().await;
    let (status, body) = target
        .send(post("/v1/challenges", &json!({"device": "kiosk-07"})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "device_unknown", "{body}");
}

#[tokio::test]
async fn a_registered_device_without_its_proof_is_refused_too() {
    let target = target().await;
    target.credential("kiosk-07").await;
    let (status, body) = target.challenge("kiosk-07", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "device_unknown", "{body}");
    // Refusals are audited without the unproven device id.
    let refused = target
        .audit()
        .await
        .into_iter()
        .find(|event| event["kind"] == "challenge" && event["outcome"] == "device_unknown")
        .expect("the refusal is audited");
    assert_eq!(refused["device"], Value::Null, "{refused}");
}

#[tokio::test]
async fn a_registered_device_signs_in_and_the_token_names_it() {
    let target = target().await;
    let credential = target.credential("kiosk-07").await;
    let (status, challenge) = target
        .challenge(
            "kiosk-07",
            Some(credential.proof(ORIGIN, OffsetDateTime::now_utc())),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{challenge}");
    let nonce = challenge["nonce"].as_str().expect("a nonce");
    let (status, signed_in) = target
        .send(post(
            "/v1/assertions",
            &json!({"assertion": alice_assertion(nonce, "kiosk-07")}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    let claims = token_claims(signed_in["token"].as_str().expect("a token"));
    assert_eq!(claims["device"], "kiosk-07");
    assert_eq!(claims["sub"], "alice");
}

#[tokio::test]
async fn forged_replayed_stale_and_other_device_proofs_are_refused() {
    let target = target().await;
    let kiosk_07 = target.credential("kiosk-07").await;
    let (kiosk_08_key, _) = devices::enroll_locally(&target.state, "kiosk-08")
        .await
        .expect("kiosk-08 enrolls");
    let stranger = NewDeviceKey::generate().expect("a key");

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "signed by a key nobody registered",
            signed(
                &stranger.key_pem,
                &proof_header("kiosk-07"),
                &proof_claims("kiosk-07", now()),
            ),
            "device_proof_invalid",
        ),
        (
            "signed by kiosk-08's key in kiosk-07's name",
            signed(
                &kiosk_08_key,
                &proof_header("kiosk-07"),
                &proof_claims("kiosk-07", now()),
            ),
            "device_proof_invalid",
        ),
        (
            "kiosk-08's own proof sent for kiosk-07",
            signed(
                &kiosk_08_key,
                &proof_header("kiosk-08"),
                &proof_claims("kiosk-08", now()),
            ),
            "device_proof_invalid",
        ),
        ("not a JWS", "garbage".to_owned(), "device_proof_invalid"),
        (
            "alg none",
            format!(
                "{}.{}.",
                base64url_encode(
                    json!({"alg": "none", "typ": "pivtap-device+jwt", "kid": "kiosk-07"})
                        .to_string()
                ),
                base64url_encode(proof_claims("kiosk-07", now()).to_string())
            ),
            "device_proof_invalid",
        ),
    ];
    for (what, proof, code) in cases {
        let (status, body) = target.challenge("kiosk-07", Some(proof)).await;
        assert_eq!(body["error"], code, "{what}: {body}");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
    }
    // A stale proof of kiosk-08 for kiosk-08 itself.
    let stale = signed(
        &kiosk_08_key,
        &proof_header("kiosk-08"),
        &proof_claims("kiosk-08", now() - 600),
    );
    let (_, body) = target.challenge("kiosk-08", Some(stale)).await;
    assert_eq!(body["error"], "device_proof_invalid", "{body}");
    // Another server's proof.
    let mut elsewhere = proof_claims("kiosk-08", now());
    elsewhere["aud"] = Value::from("https://other.example.test");
    let (_, body) = target
        .challenge(
            "kiosk-08",
            Some(signed(&kiosk_08_key, &proof_header("kiosk-08"), &elsewhere)),
        )
        .await;
    assert_eq!(body["error"], "device_proof_invalid", "{body}");
    // A proof is used once.
    let proof = kiosk_07.proof(ORIGIN, OffsetDateTime::now_utc());
    let (status, _) = target.challenge("kiosk-07", Some(proof.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = target.challenge("kiosk-07", Some(proof)).await;
    assert_eq!(body["error"], "device_proof_invalid", "a replay: {body}");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn disabled_and_removed_devices_get_no_challenges_and_their_outstanding_ones_are_void() {
    let target = target().await;
    let credential = target.credential("kiosk-07").await;
    let fresh = || Some(credential.proof(ORIGIN, OffsetDateTime::now_utc()));
    let (status, outstanding) = target.challenge("kiosk-07", fresh()).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, record) = target
        .send(target.admin(Method::POST, "/devices/kiosk-07/disable", None))
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "disabled");
    let (status, body) = target.challenge("kiosk-07", fresh()).await;
    assert_eq!(body["error"], "device_disabled", "{body}");
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The challenge it held before is refused.
    let (status, body) = target
        .send(post(
            "/v1/assertions",
            &json!({"assertion": alice_assertion(outstanding["nonce"].as_str().expect("nonce"), "kiosk-07")}),
        ))
        .await;
    assert_eq!(body["error"], "challenge_unknown", "{body}");
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Enabled again, it works again.
    let (status, _) = target
        .send(target.admin(Method::POST, "/devices/kiosk-07/enable", None))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, outstanding) = target.challenge("kiosk-07", fresh()).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, _) = target
        .send(target.admin(Method::DELETE, "/devices/kiosk-07", None))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = target.challenge("kiosk-07", fresh()).await;
    assert_eq!(body["error"], "device_unknown", "{body}");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let used = target
        .state
        .store()
        .use_challenge(
            outstanding["nonce"].as_str().expect("nonce"),
            "kiosk-07",
            OffsetDateTime::now_utc(),
        )
        .await
        .expect("the store answers");
    assert_eq!(used, ChallengeUse::Unknown);

    let events: Vec<String> = target
        .audit()
        .await
        .iter()
        .filter(|event| event["kind"] == "admin" && event["device"] == "kiosk-07")
        .map(|event| event["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    for verb in ["add", "disable", "enable", "remove"] {
        assert!(
            events
                .iter()
                .any(|detail| detail.starts_with(&format!("devices {verb} kiosk-07"))),
            "{verb}: {events:?}"
        );
    }
}

#[tokio::test]
async fn a_device_enrolls_once_with_its_code_over_the_api() {
    let target = target().await;
    let (status, added) = target
        .send(target.admin(Method::POST, "/devices", Some(&json!({"id": "kiosk-07"}))))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let code = added["code"].as_str().expect("a code").to_owned();
    assert_eq!(added["device"]["enrolled"], false);
    // The code is stored as a hash only, and never audited.
    let audit = serde_json::to_string(&target.audit().await).expect("JSON");
    assert!(!audit.contains(&code), "{audit}");

    let key = NewDeviceKey::generate().expect("a key");
    let request = json!({"code": code, "csr": URL_SAFE_NO_PAD.encode(&key.csr_der)});
    let (status, enrolled) = target.send(post("/v1/devices/enroll", &request)).await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    assert_eq!(enrolled["device"], "kiosk-07");
    let der = URL_SAFE_NO_PAD
        .decode(enrolled["certificate"].as_str().expect("a certificate"))
        .expect("base64url");
    let credential =
        DeviceCredential::from_parts(&key.key_pem, &der).expect("key and certificate fit");
    assert_eq!(credential.device(), "kiosk-07");
    let (_, certificate) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    let eku = certificate
        .extended_key_usage()
        .expect("parses")
        .expect("an EKU")
        .value;
    assert!(eku.client_auth);
    let days = (credential.not_after() - OffsetDateTime::now_utc()).whole_days();
    assert!((179..=180).contains(&days), "{days}");

    // Single use.
    let (status, body) = target.send(post("/v1/devices/enroll", &request)).await;
    assert_eq!(body["error"], "enrollment_code_used", "{body}");
    assert_eq!(status, StatusCode::GONE);
    let (status, body) = target
        .send(target.admin(Method::POST, "/devices", Some(&json!({"id": "kiosk-07"}))))
        .await;
    assert_eq!(body["error"], "conflict", "{body}");
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = target
        .send(target.admin(Method::POST, "/devices", Some(&json!({"id": "renewal:x"}))))
        .await;
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, listed) = target
        .send(target.admin(Method::GET, "/devices", None))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["id"], "kiosk-07");
    assert_eq!(listed[0]["enrolled"], true);
    assert_eq!(listed[0]["state"], "enabled");
    let (status, _) = target
        .challenge(
            "kiosk-07",
            Some(credential.proof(ORIGIN, OffsetDateTime::now_utc())),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_device_certificate_never_signs_anyone_in() {
    let target = target().await;
    let (key_pem, der) = devices::enroll_locally(&target.state, "alice")
        .await
        .expect("a device named like a user");
    let credential = DeviceCredential::from_parts(&key_pem, &der).expect("a credential");
    let (_, challenge) = target
        .challenge(
            "alice",
            Some(credential.proof(ORIGIN, OffsetDateTime::now_utc())),
        )
        .await;
    let header =
        json!({"alg": "ES256", "typ": "pivtap-assertion+jwt", "x5c": [STANDARD.encode(&der)]});
    let payload = json!({
        "aud": ORIGIN, "nonce": challenge["nonce"], "device": "alice", "iat": now(), "slot": "9a"
    });
    let (status, body) = target
        .send(post(
            "/v1/assertions",
            &json!({"assertion": signed(&key_pem, &header, &payload)}),
        ))
        .await;
    assert_eq!(body["error"], "certificate_untrusted", "{body}");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn renewal_challenges_go_to_anyone_and_sign_nobody_in() {
    let target = target().await;
    let (status, challenge) = target.challenge("renewal:workstation-1", None).await;
    assert_eq!(status, StatusCode::CREATED, "{challenge}");
    let nonce = challenge["nonce"].as_str().expect("a nonce");
    let (status, body) = target
        .send(post(
            "/v1/assertions",
            &json!({"assertion": alice_assertion(nonce, "renewal:workstation-1")}),
        ))
        .await;
    assert_eq!(body["error"], "challenge_unknown", "{body}");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn open_mode_serves_unregistered_ids_but_not_disabled_or_registered_ones() {
    let target = target_with(false).await;
    let (status, body) = target.challenge("kiosk-07", None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    target.credential("kiosk-08").await;
    let (_, body) = target.challenge("kiosk-08", None).await;
    assert_eq!(body["error"], "device_proof_invalid", "{body}");
    let (status, _) = target
        .send(target.admin(Method::POST, "/devices/kiosk-08/disable", None))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = target.challenge("kiosk-08", None).await;
    assert_eq!(body["error"], "device_disabled", "{body}");
}
