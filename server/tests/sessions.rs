//! Sessions at the server: refresh rotation and reuse, status, sign-out, ending on lock, revocation and deletion, admin sessions and clients, max age, back-channel logout delivery.
//!
//! The server is the real one (`init_server` + `from_config`, issuance on, so the kiosk
//! has a device credential) driven with `oneshot`; sign-ins are real assertions of the
//! fixture badges over challenges the kiosk proved itself for.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pivtap_client::device::DeviceCredential;
use pivtap_protocol::assertion::signature_verifies;
use pivtap_protocol::jose::{CompactJws, JwsAlgorithm};
use pivtap_protocol::wire::{ChallengeResponse, SessionClaims};
use pivtap_server::config::ServerConfig;
use pivtap_server::server::{self, ServerState, logout};
use pivtap_testkit::badge::{ALICE, BOB, Badge};
use pivtap_testkit::server::{admin_request, admin_token, init_directory, state_with_users};
use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;
use tower::ServiceExt as _;

const DEVICE: &str = "kiosk-07";
const OTHER_DEVICE: &str = "kiosk-08";
const ORIGIN: &str = "https://auth.example.test";
const JSON: &str = "application/json";

struct Server {
    _dir: TempDir,
    app: Router,
    state: ServerState,
    admin_token: String,
    device: DeviceCredential,
    other_device: DeviceCredential,
}

struct Reply {
    status: StatusCode,
    body: Value,
}

/// A sign-in's answer: the access token, refresh token and session id.
struct SignedIn {
    token: String,
    refresh_token: String,
    session_id: String,
}

async fn server() -> Server {
    let (dir, report) = init_directory();
    let mut config = ServerConfig::load(&report.config_path).expect("server.toml loads");
    config.origin = ORIGIN.to_owned();
    config.rate_limit.refusal_burst = 100_000;
    config.rate_limit.failures_before_delay = 100_000;
    config
        .validate(&report.config_path)
        .expect("the adjusted configuration is valid");
    let state = state_with_users(&config, &[ALICE.user(), BOB.user()]).await;
    let device = server::devices::credential_locally(&state, DEVICE)
        .await
        .expect("the kiosk is registered");
    let other_device = server::devices::credential_locally(&state, OTHER_DEVICE)
        .await
        .expect("the other kiosk is registered");
    Server {
        _dir: dir,
        app: server::app(state.clone()),
        admin_token: admin_token(&report),
        state,
        device,
        other_device,
    }
}

fn request(method: Method, path: &str, bearer: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = bearer {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, JSON)
            .body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("a request")
}

impl Server {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body reads");
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
        self.send(admin_request(&self.admin_token, method, path, JSON, body))
            .await
    }

    /// `badge` signs in at the kiosk.
    async fn sign_in(&self, badge: &Badge) -> SignedIn {
        let challenge = self
            .send(request(
                Method::POST,
                "/v1/challenges",
                None,
                Some(json!({
                    "device": DEVICE,
                    "proof": self.device.proof(ORIGIN, OffsetDateTime::now_utc()),
                })),
            ))
            .await;
        assert_eq!(challenge.status, StatusCode::CREATED, "{}", challenge.body);
        let challenge: ChallengeResponse =
            serde_json::from_value(challenge.body).expect("a challenge");
        let reply = self
            .send(request(
                Method::POST,
                "/v1/assertions",
                None,
                Some(json!({ "assertion": badge.assertion(&challenge, DEVICE) })),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let text = |name: &str| {
            reply.body[name]
                .as_str()
                .unwrap_or_else(|| panic!("the sign-in answers {name}"))
                .to_owned()
        };
        SignedIn {
            token: text("token"),
            refresh_token: text("refresh_token"),
            session_id: text("session_id"),
        }
    }

    async fn current(&self, token: &str) -> Reply {
        self.send(request(
            Method::GET,
            "/v1/sessions/current",
            Some(token),
            None,
        ))
        .await
    }

    async fn refresh(&self, refresh_token: &str) -> Reply {
        self.send(request(
            Method::POST,
            "/v1/sessions/refresh",
            None,
            Some(json!({ "refresh_token": refresh_token })),
        ))
        .await
    }

    /// The session's status: `(active, ended_reason)`.
    async fn status(&self, token: &str) -> (bool, Option<String>) {
        let reply = self.current(token).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        (
            reply.body["active"].as_bool().expect("active"),
            reply.body["ended_reason"].as_str().map(str::to_owned),
        )
    }

    /// Asserts that the session of `token` has ended for `reason`.
    async fn assert_ended(&self, token: &str, reason: &str) {
        assert_eq!(
            self.status(token).await,
            (false, Some(reason.to_owned())),
            "the session ended: {reason}"
        );
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let reply = self
            .admin(Method::GET, &format!("/audit?{query}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.body.as_array().expect("an array").clone()
    }

    /// A token of `session` signed by the server that expired an hour ago.
    fn long_expired_token(&self, session_id: &str) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.state
            .tokens()
            .issue(&SessionClaims {
                iss: ORIGIN.to_owned(),
                sub: ALICE.user_id.to_owned(),
                aud: self.state.settings().token_audience.clone(),
                iat: now - 7200,
                exp: now - 3600,
                jti: "expired-token-id".to_owned(),
                name: ALICE.display_name.to_owned(),
                email: None,
                amr: vec!["sc".to_owned()],
                device: DEVICE.to_owned(),
                sid: session_id.to_owned(),
            })
            .expect("the token is signed")
    }
}

#[track_caller]
fn assert_code(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(
        (reply.status, reply.body["error"].as_str()),
        (status, Some(code)),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn refresh_rotates_and_a_replaced_token_presented_again_ends_the_session() {
    let server = server().await;
    let signed_in = server.sign_in(&ALICE).await;
    assert_eq!(server.status(&signed_in.token).await, (true, None));

    let first = server.refresh(&signed_in.refresh_token).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let new_token = first.body["token"].as_str().expect("a token").to_owned();
    let new_refresh = first.body["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    assert_ne!(new_refresh, signed_in.refresh_token);
    assert_eq!(first.body["token_type"], "Bearer");
    let claims = server
        .state
        .tokens()
        .verify(&new_token, OffsetDateTime::now_utc())
        .expect("the new token verifies");
    assert_eq!(claims.sid, signed_in.session_id);
    assert_eq!(claims.sub, ALICE.user_id);
    assert_eq!(claims.device, DEVICE);
    assert_eq!(server.status(&new_token).await, (true, None));

    // The replaced token again: a stolen copy is assumed, the session ends.
    let reused = server.refresh(&signed_in.refresh_token).await;
    assert_code(&reused, StatusCode::UNAUTHORIZED, "session_ended");
    server.assert_ended(&new_token, "refresh_reused").await;
    // And the current one is refused too now.
    let after = server.refresh(&new_refresh).await;
    assert_code(&after, StatusCode::UNAUTHORIZED, "session_ended");
    // A body that is not a refresh request.
    let reply = server
        .send(request(
            Method::POST,
            "/v1/sessions/refresh",
            None,
            Some(json!({ "token": "x" })),
        ))
        .await;
    assert_code(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    // A made-up refresh token is refused the same way.
    let unknown = server.refresh("not-a-refresh-token").await;
    assert_code(&unknown, StatusCode::UNAUTHORIZED, "session_ended");
    // The audit never holds a refresh token.
    let audit = server.audit("limit=1000").await;
    let text = serde_json::to_string(&audit).expect("JSON");
    assert!(!text.contains(&signed_in.refresh_token));
    assert!(!text.contains(&new_refresh));
    assert!(text.contains("refresh_reused"), "{text}");
}

#[tokio::test]
async fn session_status_needs_the_sessions_token() {
    let server = server().await;
    let reply = server
        .send(request(Method::GET, "/v1/sessions/current", None, None))
        .await;
    assert_code(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = server.current("junk.token.here").await;
    assert_code(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    // A genuine token of a session the store does not have.
    let reply = server.current(&server.long_expired_token("x")).await;
    assert_code(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn sign_out_with_the_bearer_token_ends_the_session_once() {
    let server = server().await;
    let signed_in = server.sign_in(&ALICE).await;
    // The body cannot name another session than the token's.
    let reply = server
        .send(request(
            Method::POST,
            "/v1/sign-outs",
            Some(&signed_in.token),
            Some(json!({ "reason": "idle", "session_id": "another-session" })),
        ))
        .await;
    assert_code(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(server.status(&signed_in.token).await, (true, None));
    let body = json!({ "reason": "card_removed" });
    let reply = server
        .send(request(
            Method::POST,
            "/v1/sign-outs",
            Some(&signed_in.token),
            Some(body.clone()),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["recorded"], true);
    server.assert_ended(&signed_in.token, "signed_out").await;
    let replay = server
        .send(request(
            Method::POST,
            "/v1/sign-outs",
            Some(&signed_in.token),
            Some(body),
        ))
        .await;
    assert_eq!(replay.body["recorded"], false, "{}", replay.body);
    let sign_outs = server.audit("kind=sign_out&outcome=ok").await;
    assert_eq!(sign_outs.len(), 1, "{sign_outs:?}");
    assert_eq!(sign_outs[0]["user_id"], ALICE.user_id);
    assert_eq!(sign_outs[0]["device"], DEVICE);
    assert_eq!(sign_outs[0]["card_serial"], ALICE.serial());
    let detail = sign_outs[0]["detail"].as_str().expect("a detail");
    assert!(detail.contains("reason card_removed"), "{detail}");
    // The refresh token is refused after the sign-out.
    let refreshed = server.refresh(&signed_in.refresh_token).await;
    assert_code(&refreshed, StatusCode::UNAUTHORIZED, "session_ended");
}

#[tokio::test]
async fn sign_out_by_session_id_needs_a_proof_of_the_sessions_own_device() {
    let server = server().await;
    let signed_in = server.sign_in(&ALICE).await;
    let expired = server.long_expired_token(&signed_in.session_id);
    let sign_out = |proof: Option<String>, session: &str| {
        let mut body = json!({ "reason": "expired", "session_id": session });
        if let Some(proof) = proof {
            body["device_proof"] = json!(proof);
        }
        request(Method::POST, "/v1/sign-outs", Some(&expired), Some(body))
    };
    let now = OffsetDateTime::now_utc;
    // No proof.
    let reply = server.send(sign_out(None, &signed_in.session_id)).await;
    assert_code(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    // Another device's proof.
    let reply = server
        .send(sign_out(
            Some(server.other_device.proof(ORIGIN, now())),
            &signed_in.session_id,
        ))
        .await;
    assert_code(&reply, StatusCode::UNAUTHORIZED, "device_proof_invalid");
    // An unknown session.
    let reply = server
        .send(sign_out(
            Some(server.device.proof(ORIGIN, now())),
            "no-such-session",
        ))
        .await;
    assert_code(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(server.status(&signed_in.token).await, (true, None));
    // The session's own device.
    let proof = server.device.proof(ORIGIN, now());
    let reply = server
        .send(sign_out(Some(proof.clone()), &signed_in.session_id))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["recorded"], true);
    server.assert_ended(&signed_in.token, "signed_out").await;
    // The same proof again is a replay of the proof; a fresh one records nothing.
    let reply = server
        .send(sign_out(Some(proof), &signed_in.session_id))
        .await;
    assert_code(&reply, StatusCode::UNAUTHORIZED, "device_proof_invalid");
    let reply = server
        .send(sign_out(
            Some(server.device.proof(ORIGIN, now())),
            &signed_in.session_id,
        ))
        .await;
    assert_eq!(reply.body["recorded"], false, "{}", reply.body);
}

/// Each of lock card, lock user, revoke card, delete user ends the sessions it concerns
/// (only those), with its reason, audited.
#[tokio::test]
async fn locking_revoking_or_deleting_a_card_or_user_ends_its_sessions() {
    let server = server().await;
    let alice_card = ALICE.serial();
    // (case, whose session, the other's, the change, its undo, reason)
    let cases = [
        (
            &ALICE,
            &BOB,
            Method::POST,
            format!("/cards/{alice_card}/lock"),
            Some(format!("/cards/{alice_card}/unlock")),
            "card_locked",
        ),
        (
            &BOB,
            &ALICE,
            Method::POST,
            "/users/bob/lock".to_owned(),
            Some("/users/bob/unlock".to_owned()),
            "user_locked",
        ),
        (
            &ALICE,
            &BOB,
            Method::POST,
            format!("/cards/{alice_card}/revoke"),
            None,
            "card_revoked",
        ),
        (
            &BOB,
            &ALICE,
            Method::DELETE,
            "/users/bob".to_owned(),
            None,
            "user_deleted",
        ),
    ];
    let mut others = Vec::new();
    for (badge, other_badge, method, path, undo, reason) in cases {
        let signed_in = server.sign_in(badge).await;
        if reason != "user_deleted" {
            // (Alice's card is revoked by then: she cannot sign in again.)
            others.push(server.sign_in(other_badge).await);
        }
        let reply = server.admin(method, &path, None).await;
        assert!(reply.status.is_success(), "{reason}: {}", reply.body);
        assert_eq!(
            server.status(&signed_in.token).await,
            (false, Some(reason.to_owned())),
            "{reason}"
        );
        let reply = server.refresh(&signed_in.refresh_token).await;
        assert_code(&reply, StatusCode::UNAUTHORIZED, "session_ended");
        let audited = server
            .audit(&format!("kind=session&user={}", badge.user_id))
            .await;
        assert!(
            audited
                .iter()
                .any(|event| event["detail"].as_str().is_some_and(|detail| detail
                    .contains(&signed_in.session_id)
                    && detail.contains(reason))),
            "{reason}: {audited:?}"
        );
        // The other user's session goes on.
        let other = others.last().expect("a session of the other user");
        if reason != "user_deleted" {
            assert_eq!(server.status(&other.token).await, (true, None), "{reason}");
        }
        if let Some(undo) = undo {
            let reply = server.admin(Method::POST, &undo, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
    }
}

#[tokio::test]
async fn an_administrator_lists_shows_and_ends_sessions() {
    let server = server().await;
    let alice = server.sign_in(&ALICE).await;
    let bob = server.sign_in(&BOB).await;
    let reply = server.admin(Method::GET, "/sessions", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let ids: Vec<&str> = reply
        .body
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|session| session["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [bob.session_id.as_str(), alice.session_id.as_str()],
        "newest first"
    );
    let reply = server
        .admin(Method::GET, "/sessions?user=alice", None)
        .await;
    assert_eq!(reply.body.as_array().map(Vec::len), Some(1));
    assert_eq!(reply.body[0]["id"], alice.session_id.as_str());
    assert_eq!(reply.body[0]["device"], DEVICE);
    assert_eq!(reply.body[0]["card_serial"], ALICE.serial());
    let reply = server
        .admin(
            Method::GET,
            &format!("/sessions?card={}", BOB.serial()),
            None,
        )
        .await;
    assert_eq!(reply.body[0]["id"], bob.session_id.as_str());
    let reply = server
        .admin(Method::GET, "/sessions?device=kiosk-99", None)
        .await;
    assert_eq!(reply.body, json!([]));
    let reply = server.admin(Method::GET, "/sessions?color=red", None).await;
    assert_code(&reply, StatusCode::BAD_REQUEST, "invalid_request");

    let path = format!("/sessions/{}", alice.session_id);
    let reply = server.admin(Method::DELETE, &path, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["ended_reason"], "admin");
    server.assert_ended(&alice.token, "admin").await;
    let reply = server
        .admin(Method::GET, "/sessions?active=true", None)
        .await;
    assert_eq!(reply.body.as_array().map(Vec::len), Some(1));
    assert_eq!(reply.body[0]["id"], bob.session_id.as_str());
    let reply = server.admin(Method::GET, &path, None).await;
    assert_eq!(reply.body["ended_reason"], "admin");
    let reply = server.admin(Method::GET, "/sessions/nope", None).await;
    assert_code(&reply, StatusCode::NOT_FOUND, "not_found");
    let reply = server.admin(Method::DELETE, "/sessions/nope", None).await;
    assert_code(&reply, StatusCode::NOT_FOUND, "not_found");
    let audited = server.audit("kind=session&user=alice").await;
    assert!(
        audited.iter().any(|event| event["detail"]
            .as_str()
            .is_some_and(|d| d.contains("admin credential"))),
        "{audited:?}"
    );
}

#[tokio::test]
async fn upkeep_ends_sessions_past_their_max_age() {
    let server = server().await;
    let signed_in = server.sign_in(&ALICE).await;
    server::upkeep(&server.state, OffsetDateTime::now_utc()).await;
    assert_eq!(server.status(&signed_in.token).await, (true, None));
    let later = OffsetDateTime::now_utc() + time::Duration::hours(13);
    server::upkeep(&server.state, later).await;
    server.assert_ended(&signed_in.token, "max_age").await;
    let path = format!("/sessions/{}", signed_in.session_id);
    let reply = server.admin(Method::GET, &path, None).await;
    assert_eq!(reply.body["ended_reason"], "max_age", "{}", reply.body);
    let audited = server.audit("kind=session&user=alice").await;
    assert!(
        audited.iter().any(|event| event["detail"]
            .as_str()
            .is_some_and(|d| d.contains("max_age"))),
        "{audited:?}"
    );
    // Kept a week after it ended, then purged.
    server::upkeep(&server.state, later + time::Duration::days(6)).await;
    let reply = server.admin(Method::GET, &path, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    server::upkeep(&server.state, later + time::Duration::days(8)).await;
    let reply = server.admin(Method::GET, &path, None).await;
    assert_code(&reply, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn clients_are_registered_with_a_secret_shown_once_and_checked_uris() {
    let server = server().await;
    let reply = server
        .admin(
            Method::POST,
            "/clients",
            Some(json!({
                "id": "wiki",
                "redirect_uris": ["https://wiki.example.com/cb", "http://127.0.0.1:8400/cb"],
                "backchannel_logout_uri": "https://wiki.example.com/logout",
            })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let secret = reply.body["secret"].as_str().expect("a secret").to_owned();
    assert_eq!(URL_SAFE_NO_PAD.decode(&secret).map(|s| s.len()), Ok(32));
    assert_eq!(reply.body["client"]["public"], false);
    let stored = server
        .state
        .store()
        .get_client("wiki")
        .await
        .expect("the store answers")
        .expect("the client is stored");
    assert_eq!(
        stored.secret_hash.as_deref(),
        Some(pivtap_server::store::secret_hash(&secret).as_str())
    );
    let shown = server.admin(Method::GET, "/clients/wiki", None).await;
    let listed = server.admin(Method::GET, "/clients", None).await;
    for text in [shown.body.to_string(), listed.body.to_string()] {
        assert!(!text.contains(&secret), "{text}");
        assert!(
            !text.contains(stored.secret_hash.as_deref().unwrap_or("-")),
            "{text}"
        );
    }
    assert_eq!(shown.body["redirect_uris"][1], "http://127.0.0.1:8400/cb");
    let audit = serde_json::to_string(&server.audit("limit=1000").await).expect("JSON");
    assert!(!audit.contains(&secret));

    let public = server
        .admin(
            Method::POST,
            "/clients",
            Some(json!({"id": "app", "public": true, "redirect_uris": ["http://[::1]/cb", "http://localhost:9/cb"]})),
        )
        .await;
    assert_eq!(public.status, StatusCode::CREATED, "{}", public.body);
    assert_eq!(public.body["secret"], Value::Null);
    assert_eq!(public.body["client"]["public"], true);

    let refused = [
        json!({"id": "wiki", "redirect_uris": ["https://wiki.example.com/cb"]}),
        json!({"id": "pivtap-kiosk", "redirect_uris": ["https://a.example.com/cb"]}),
        json!({"id": "bad id", "redirect_uris": ["https://a.example.com/cb"]}),
        json!({"id": "a", "redirect_uris": []}),
        json!({"id": "a", "redirect_uris": ["http://a.example.com/cb"]}),
        json!({"id": "a", "redirect_uris": ["https://a.example.com/cb#frag"]}),
        json!({"id": "a", "redirect_uris": ["/cb"]}),
        json!({"id": "a", "redirect_uris": ["javascript:alert(1)"]}),
        json!({"id": "a", "redirect_uris": ["https://a.example.com/cb"], "backchannel_logout_uri": "http://10.0.0.1/logout"}),
        json!({"id": "a", "redirect_uris": ["https://user:pw@a.example.com/cb"]}),
    ];
    for (index, body) in refused.into_iter().enumerate() {
        let reply = server.admin(Method::POST, "/clients", Some(body)).await;
        let code = if index == 0 {
            "conflict"
        } else {
            "invalid_request"
        };
        let status = if index == 0 {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_code(&reply, status, code);
    }
    let listed = server.admin(Method::GET, "/clients", None).await;
    assert_eq!(listed.body.as_array().map(Vec::len), Some(2));

    let reply = server.admin(Method::DELETE, "/clients/app", None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = server.admin(Method::DELETE, "/clients/app", None).await;
    assert_code(&reply, StatusCode::NOT_FOUND, "not_found");
    let reply = server.admin(Method::GET, "/clients/app", None).await;
    assert_code(&reply, StatusCode::NOT_FOUND, "not_found");
}

/// What the test's back-channel logout receiver got: each POST's form body.
#[derive(Default)]
struct Received {
    bodies: Mutex<Vec<String>>,
    /// Answer 500 to this many POSTs first.
    fail_first: Mutex<u32>,
}

/// A receiver on 127.0.0.1; answers its URL.
async fn receiver(received: Arc<Received>) -> String {
    let app = axum::Router::new().route(
        "/logout",
        axum::routing::post(move |body: String| {
            let received = Arc::clone(&received);
            async move {
                received
                    .bodies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(body);
                let mut fail = received
                    .fail_first
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if *fail > 0 {
                    *fail -= 1;
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/logout")
}

/// Checks a logout token against the server's JWKS; answers its header and claims.
async fn verified_logout_token(server: &Server, form: &str) -> (Value, Value) {
    let token = url::form_urlencoded::parse(form.as_bytes())
        .find(|(name, _)| name == "logout_token")
        .map(|(_, value)| value.into_owned())
        .expect("a logout_token field");
    let jws = CompactJws::parse(&token).expect("a compact JWS");
    let header: Value = serde_json::from_slice(&jws.header).expect("a JSON header");
    let claims: Value = serde_json::from_slice(&jws.payload).expect("JSON claims");
    let jwks = server
        .send(request(Method::GET, "/.well-known/jwks.json", None, None))
        .await
        .body;
    let key = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|key| key["kid"] == header["kid"])
        .expect("the kid is published");
    let coordinate = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(key[name].as_str().expect("a coordinate"))
            .expect("base64url")
    };
    let mut public = vec![4_u8];
    public.extend(coordinate("x"));
    public.extend(coordinate("y"));
    assert!(
        signature_verifies(
            JwsAlgorithm::Es256,
            &public,
            jws.signing_input.as_bytes(),
            &jws.signature
        ),
        "the logout token verifies against the JWKS"
    );
    (header, claims)
}

/// Registers `id` with a back-channel logout URI (if any) and makes it take part in
/// `session`.
async fn participating_client(server: &Server, id: &str, logout_uri: Option<&str>, session: &str) {
    let reply = server
        .admin(
            Method::POST,
            "/clients",
            Some(json!({
                "id": id,
                "redirect_uris": ["https://app.example.com/cb"],
                "backchannel_logout_uri": logout_uri,
            })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    server
        .state
        .store()
        .record_session_client(session, id, OffsetDateTime::now_utc())
        .await
        .expect("the client takes part");
}

#[tokio::test]
async fn an_ended_session_is_posted_to_its_clients_back_channel_and_retried() {
    pivtap_testkit::server::install_crypto_provider();
    let server = server().await;
    let received = Arc::new(Received::default());
    *received
        .fail_first
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = 1;
    let uri = receiver(Arc::clone(&received)).await;
    let signed_in = server.sign_in(&ALICE).await;
    participating_client(&server, "erp", Some(&uri), &signed_in.session_id).await;
    participating_client(&server, "quiet", None, &signed_in.session_id).await;
    let http = logout::http_client(None).expect("the delivery client builds");
    let now = OffsetDateTime::now_utc();
    // Nothing is due while the session is active.
    assert_eq!(logout::deliver_due(&server.state, &http, now).await, 0);

    let reply = server
        .admin(
            Method::DELETE,
            &format!("/sessions/{}", signed_in.session_id),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // One delivery (the client without a URI gets none); the receiver answers 500.
    let now = OffsetDateTime::now_utc();
    assert_eq!(logout::deliver_due(&server.state, &http, now).await, 1);
    assert_eq!(received.bodies.lock().map(|b| b.len()).unwrap_or(0), 1);
    // Not again before the backoff (2 s) is over...
    assert_eq!(
        logout::deliver_due(&server.state, &http, now + time::Duration::seconds(1)).await,
        0
    );
    // ...then again, and delivered.
    let later = now + time::Duration::seconds(3);
    assert_eq!(logout::deliver_due(&server.state, &http, later).await, 1);
    assert_eq!(
        logout::deliver_due(&server.state, &http, later + time::Duration::minutes(10)).await,
        0,
        "a delivered logout is not sent again"
    );
    let bodies = received
        .bodies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(bodies.len(), 2);
    for body in &bodies {
        let (header, claims) = verified_logout_token(&server, body).await;
        assert_eq!(header["typ"], "logout+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(claims["aud"], "erp");
        assert_eq!(claims["iss"], ORIGIN);
        assert_eq!(claims["sub"], ALICE.user_id);
        assert_eq!(claims["sid"], signed_in.session_id.as_str());
        assert_eq!(
            claims["events"],
            json!({"http://schemas.openid.net/event/backchannel-logout": {}})
        );
        assert!(claims.get("nonce").is_none());
        let iat = claims["iat"].as_i64().expect("iat");
        assert_eq!(claims["exp"].as_i64(), Some(iat + 300));
    }
}

#[tokio::test]
async fn a_session_whose_clients_have_no_back_channel_queues_nothing() {
    let server = server().await;
    let signed_in = server.sign_in(&ALICE).await;
    participating_client(&server, "quiet", None, &signed_in.session_id).await;
    let reply = server
        .admin(
            Method::POST,
            &format!("/cards/{}/lock", ALICE.serial()),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    server.assert_ended(&signed_in.token, "card_locked").await;
    let http = logout::http_client(None).expect("the delivery client builds");
    let now = OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert_eq!(logout::deliver_due(&server.state, &http, now).await, 0);
}

#[tokio::test]
async fn a_logout_the_client_never_takes_is_given_up_after_a_day_and_audited() {
    pivtap_testkit::server::install_crypto_provider();
    let server = server().await;
    let received = Arc::new(Received::default());
    *received
        .fail_first
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = u32::MAX;
    let uri = receiver(Arc::clone(&received)).await;
    let signed_in = server.sign_in(&BOB).await;
    participating_client(&server, "erp", Some(&uri), &signed_in.session_id).await;
    let reply = server.admin(Method::POST, "/users/bob/lock", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let http = logout::http_client(None).expect("the delivery client builds");
    let now = OffsetDateTime::now_utc();
    assert_eq!(logout::deliver_due(&server.state, &http, now).await, 1);
    assert!(server.audit("kind=oidc").await.is_empty());
    let day_later = now + time::Duration::hours(25);
    assert_eq!(
        logout::deliver_due(&server.state, &http, day_later).await,
        1
    );
    assert_eq!(
        logout::deliver_due(&server.state, &http, day_later + time::Duration::hours(1)).await,
        0,
        "given up: not sent again"
    );
    let audited = server.audit("kind=oidc").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["user_id"], "bob");
    let detail = audited[0]["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("given up") && detail.contains("erp") && detail.contains("500"),
        "{detail}"
    );
    assert_eq!(
        received
            .bodies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len(),
        2
    );
}
