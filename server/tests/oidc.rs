//! The OpenID Connect provider driven with `oneshot`: authorization codes for the kiosk, each grant of the token endpoint, userinfo, revocation, introspection, and every refusal with its code.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use pivtap_protocol::oidc::{self, TOKEN_TYPE_ACCESS_TOKEN};
use pivtap_protocol::wire::{AssertionPayload, SessionEndReason};
use pivtap_server::config::ServerConfig;
use pivtap_server::server::{self, ServerState};
use pivtap_server::store::{OidcClient, SessionSelector, secret_hash};
use pivtap_testkit::badge::ALICE;
use pivtap_testkit::server::{init_directory, state_with_users};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use time::OffsetDateTime;
use tower::ServiceExt as _;

const ORIGIN: &str = "https://auth.example.test";
const WIKI_SECRET: &str = "wiki-secret-0123456789-abcdefghijklmnop";
const MAIL_SECRET: &str = "mail-secret-0123456789-abcdefghijklmnop";
const WIKI_REDIRECT: &str = "https://wiki.example/callback";
const MAIL_REDIRECT: &str = "https://mail.example/callback";
const APP_REDIRECT: &str = "http://127.0.0.1:9000/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// Well-formed, but not the verifier of [`CHALLENGE`].
const OTHER_VERIFIER: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// A server (open device mode) with Alice, two confidential clients (`wiki`, `mail`) and a
/// public one (`app`).
struct Provider {
    _dir: TempDir,
    state: ServerState,
}

/// An answer, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    #[track_caller]
    fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .or_else(|| self.body["code"].as_str())
            .unwrap_or_else(|| panic!("no error in {}", self.body))
    }

    #[track_caller]
    fn text(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} in {}", self.body))
            .to_owned()
    }
}

/// A signed-in kiosk session: its access token and id.
struct Kiosk {
    token: String,
    session_id: String,
}

async fn provider() -> Provider {
    let (dir, report) = init_directory();
    let mut config = ServerConfig::load(&report.config_path).expect("server.toml loads");
    config.origin = ORIGIN.to_owned();
    config.devices.require_registration = false;
    let state = state_with_users(&config, &[ALICE.user()]).await;
    let clients = [
        ("wiki", Some(WIKI_SECRET), WIKI_REDIRECT),
        ("mail", Some(MAIL_SECRET), MAIL_REDIRECT),
        ("app", None, APP_REDIRECT),
    ];
    for (id, secret, redirect) in clients {
        state
            .store()
            .add_client(&OidcClient {
                id: id.to_owned(),
                secret_hash: secret.map(secret_hash),
                redirect_uris: vec![redirect.to_owned()],
                backchannel_logout_uri: None,
                created_at: OffsetDateTime::now_utc(),
            })
            .await
            .expect("the client registers");
    }
    Provider { _dir: dir, state }
}

impl Provider {
    async fn send(&self, request: Request<Body>) -> Reply {
        let app: Router = server::app(self.state.clone());
        let response = app.oneshot(request).await.expect("answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body reads");
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        }
    }

    async fn post_json(&self, path: &str, bearer: Option<&str>, body: &Value) -> Reply {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(
            request
                .body(Body::from(body.to_string()))
                .expect("a request"),
        )
        .await
    }

    /// Signs Alice in through kiosk-1 with her card: the kiosk's session.
    async fn sign_in(&self) -> Kiosk {
        let device = "kiosk-1";
        let challenge = self
            .post_json("/v1/challenges", None, &json!({"device": device}))
            .await;
        assert_eq!(challenge.status, StatusCode::CREATED, "{}", challenge.body);
        let assertion = ALICE.signed(&ALICE.draft_with(AssertionPayload {
            aud: ORIGIN.to_owned(),
            nonce: challenge.text("nonce"),
            device: device.to_owned(),
            iat: OffsetDateTime::now_utc().unix_timestamp(),
            slot: "9a".to_owned(),
        }));
        let signed_in = self
            .post_json("/v1/assertions", None, &json!({"assertion": assertion}))
            .await;
        assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.body);
        Kiosk {
            token: signed_in.text("token"),
            session_id: signed_in.text("session_id"),
        }
    }

    /// The kiosk asks for a code.
    async fn authorize(&self, kiosk: &Kiosk, request: Value) -> Reply {
        self.post_json("/v1/sessions/authorizations", Some(&kiosk.token), &request)
            .await
    }

    /// A code for `client` with its redirect URI, PKCE S256 and `scope`.
    async fn code(&self, kiosk: &Kiosk, client: &str, redirect: &str, scope: &str) -> String {
        let granted = self
            .authorize(kiosk, authorization(client, redirect, scope))
            .await;
        assert_eq!(granted.status, StatusCode::OK, "{}", granted.body);
        assert_eq!(granted.body["iss"], ORIGIN);
        assert_eq!(granted.body["expires_in"], 60);
        granted.text("code")
    }

    /// `POST path` with a form body, optionally with HTTP Basic credentials.
    async fn form(
        &self,
        path: &str,
        basic: Option<(&str, &str)>,
        fields: &[(&str, &str)],
    ) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some((id, secret)) = basic {
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
            request = request.header(header::AUTHORIZATION, format!("Basic {credentials}"));
        }
        self.send(request.body(Body::from(body)).expect("a request"))
            .await
    }

    /// `wiki` redeems `code`.
    async fn redeem(&self, code: &str) -> Reply {
        self.form(
            oidc::PATH_TOKEN,
            Some(("wiki", WIKI_SECRET)),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", WIKI_REDIRECT),
                ("code_verifier", VERIFIER),
            ],
        )
        .await
    }

    async fn userinfo(&self, access_token: &str) -> Reply {
        self.send(
            Request::builder()
                .uri(oidc::PATH_USERINFO)
                .header(header::AUTHORIZATION, format!("Bearer {access_token}"))
                .body(Body::empty())
                .expect("a request"),
        )
        .await
    }

    async fn introspect(&self, client: (&str, &str), token: &str) -> Reply {
        let reply = self
            .form(oidc::PATH_INTROSPECTION, Some(client), &[("token", token)])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply
    }

    async fn end_session(&self, kiosk: &Kiosk) {
        let ended = self
            .state
            .store()
            .end_sessions(
                &SessionSelector::Id(kiosk.session_id.clone()),
                SessionEndReason::Admin,
                OffsetDateTime::now_utc(),
                None,
            )
            .await
            .expect("the session ends");
        assert_eq!(ended.len(), 1);
    }

    /// Verifies `token` with the JWKS as an app would, with `jsonwebtoken`.
    async fn verify(&self, token: &str, typ: &str, audience: &str) -> Value {
        let jwks = self
            .send(
                Request::builder()
                    .uri("/.well-known/jwks.json")
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await;
        let jwks: JwkSet = serde_json::from_value(jwks.body).expect("a JWKS");
        let header = jsonwebtoken::decode_header(token).expect("a JWT header");
        assert_eq!(header.typ.as_deref(), Some(typ));
        let kid = header.kid.expect("a kid");
        let jwk = jwks.find(&kid).expect("the kid is published");
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[ORIGIN]);
        jsonwebtoken::decode::<Value>(
            token,
            &DecodingKey::from_jwk(jwk).expect("a key"),
            &validation,
        )
        .expect("the token verifies with the JWKS")
        .claims
    }
}

fn authorization(client: &str, redirect: &str, scope: &str) -> Value {
    json!({
        "client_id": client,
        "redirect_uri": redirect,
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "scope": scope,
        "nonce": "n-0S6_WzA2Mj",
    })
}

#[track_caller]
fn assert_no_store(reply: &Reply) {
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(reply.headers[header::PRAGMA], "no-cache");
}

#[test]
fn pkce_test_vector_is_rfc_7636s() {
    let computed =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER));
    assert_eq!(computed, CHALLENGE);
}

#[tokio::test]
async fn discovery_names_the_endpoints_under_the_origin() {
    let provider = provider().await;
    let reply = provider
        .send(
            Request::builder()
                .uri(oidc::PATH_DISCOVERY)
                .body(Body::empty())
                .expect("a request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let metadata: oidc::ProviderMetadata = serde_json::from_value(reply.body).expect("metadata");
    assert_eq!(metadata.issuer, ORIGIN);
    assert_eq!(metadata.token_endpoint, format!("{ORIGIN}/oidc/token"));
    assert_eq!(metadata.jwks_uri, format!("{ORIGIN}/.well-known/jwks.json"));
    assert_eq!(
        metadata.introspection_endpoint,
        format!("{ORIGIN}/oidc/introspect")
    );
    assert_eq!(
        metadata.authorization_endpoint,
        oidc::DEFAULT_AUTHORIZATION_ENDPOINT
    );
    assert_eq!(metadata.code_challenge_methods_supported, ["S256"]);
    assert_eq!(metadata.id_token_signing_alg_values_supported, ["ES256"]);
}

#[tokio::test]
async fn authorization_code_gives_tokens_that_verify_and_work_once() {
    let provider = provider().await;
    let kiosk = provider.sign_in().await;
    let code = provider
        .code(&kiosk, "wiki", WIKI_REDIRECT, "openid profile email")
        .await;
    let reply = provider.redeem(&code).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_no_store(&reply);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["scope"], "openid profile email");

    let id_token = provider
        .verify(&reply.text("id_token"), "JWT", "wiki")
        .await;
    assert_eq!(id_token["sub"], "alice");
    assert_eq!(id_token["azp"], "wiki");
    assert_eq!(id_token["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id_token["sid"], kiosk.session_id.as_str());
    assert_eq!(id_token["amr"], json!(["hwk", "sc", "pin"]));
    assert_eq!(id_token["acr"], oidc::ACR_CARD_AND_PIN);
    assert_eq!(id_token["device"], "kiosk-1");
    assert_eq!(id_token["name"], "Alice Example");
    assert_eq!(id_token["email"], "alice@example.com");
    let access_token = reply.text("access_token");
    let access = provider.verify(&access_token, "at+jwt", "wiki").await;
    assert_eq!(access["client_id"], "wiki");
    assert_eq!(access["scope"], "openid profile email");

    let userinfo = provider.userinfo(&access_token).await;
    assert_eq!(userinfo.status, StatusCode::OK, "{}", userinfo.body);
    assert_eq!(
        userinfo.body,
        json!({"sub": "alice", "name": "Alice Example", "email": "alice@example.com"})
    );
    let introspection = provider
        .introspect(("wiki", WIKI_SECRET), &access_token)
        .await;
    assert_eq!(introspection.body["active"], true);
    assert_eq!(introspection.body["sid"], kiosk.session_id.as_str());
    // The client takes part in the session (a back-channel logout would reach it).
    let session = provider
        .state
        .store()
        .get_session(&kiosk.session_id)
        .await
        .expect("the store answers")
        .expect("the session");
    assert_eq!(session.clients, ["wiki"]);

    let again = provider.redeem(&code).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.error(), "invalid_grant");
    assert_no_store(&again);
    // A code presented twice is abroad: the refresh token issued from it is revoked
    // (RFC 6749 4.1.2), so whoever redeemed it first cannot keep the session's tokens.
    let refreshed = provider
        .form(
            oidc::PATH_TOKEN,
            Some(("wiki", WIKI_SECRET)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", reply.text("refresh_token").as_str()),
            ],
        )
        .await;
    assert_eq!(refreshed.error(), "invalid_grant", "{}", refreshed.body);
}

#[tokio::test]
async fn a_public_client_redeems_with_its_id_alone_and_no_openid_means_no_id_token() {
    let provider = provider().await;
    let kiosk = provider.sign_in().await;
    let code = provider.code(&kiosk, "app", APP_REDIRECT, "email").await;
    let fields = [
        ("grant_type", "authorization_code"),
        ("client_id", "app"),
        ("code", code.as_str()),
        ("redirect_uri", APP_REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let reply = provider.form(oidc::PATH_TOKEN, None, &fields).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.get("id_token").is_none());
    let access_token = reply.text("access_token");
    let userinfo = provider.userinfo(&access_token).await;
    assert_eq!(
        userinfo.body,
        json!({"sub": "alice", "email": "alice@example.com"})
    );
    // A secret for a public client is refused.
    let code = provider.code(&kiosk, "app", APP_REDIRECT, "email").await;
    let with_secret = provider
        .form(
            oidc::PATH_TOKEN,
            Some(("app", "guess")),
            &[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", APP_REDIRECT),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
    assert_eq!(with_secret.error(), "invalid_client");
    // A removed client's tokens end with it.
    provider
        .state
        .store()
        .remove_client("app")
        .await
        .expect("the client is removed");
    let removed = provider.userinfo(&access_token).await;
    assert_eq!(removed.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_kiosk_gets_no_code_for_what_is_not_registered_or_without_pkce() {
    let provider = provider().await;
    let kiosk = provider.sign_in().await;
    let cases = [
        (
            authorization("nobody", WIKI_REDIRECT, "openid"),
            "client_unknown",
        ),
        (
            authorization("wiki", "https://wiki.example/callback/", "openid"),
            "redirect_uri_not_registered",
        ),
        (
            authorization("wiki", MAIL_REDIRECT, "openid"),
            "redirect_uri_not_registered",
        ),
        (
            authorization("wiki", WIKI_REDIRECT, "openid admin"),
            "invalid_request",
        ),
        (
            json!({"client_id": "wiki", "redirect_uri": WIKI_REDIRECT, "code_challenge": CHALLENGE,
                   "code_challenge_method": "plain", "scope": "openid"}),
            "invalid_request",
        ),
        (
            json!({"client_id": "wiki", "redirect_uri": WIKI_REDIRECT, "code_challenge": "",
                   "code_challenge_method": "S256", "scope": "openid"}),
            "invalid_request",
        ),
        (
            json!({"client_id": "wiki", "redirect_uri": WIKI_REDIRECT, "scope": "openid"}),
            "invalid_request",
        ),
    ];
    for (request, code) in cases {
        let reply = provider.authorize(&kiosk, request.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{request}");
        assert_eq!(reply.error(), code, "{request}");
    }
    let stranger = provider
        .post_json(
            "/v1/sessions/authorizations",
            Some("not-a-token"),
            &authorization("wiki", WIKI_REDIRECT, "openid"),
        )
        .await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stranger.error(), "unauthorized");
    provider.end_session(&kiosk).await;
    let ended = provider
        .authorize(&kiosk, authorization("wiki", WIKI_REDIRECT, "openid"))
        .await;
    assert_eq!(ended.status, StatusCode::UNAUTHORIZED);
    assert_eq!(ended.error(), "session_ended");
}

/// Basic credentials, redirect URI, code verifier; the status and error expected.
type Case<'a> = (
    Option<(&'a str, &'a str)>,
    &'a str,
    Option<&'a str>,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn codes_are_refused_for_the_wrong_verifier_redirect_client_or_credentials() {
    let provider = provider().await;
    let kiosk = provider.sign_in().await;
    let redeem = |code: String, basic: Option<(&'static str, &'static str)>, redirect, verifier| {
        let provider = &provider;
        async move {
            let mut fields = vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect),
            ];
            if let Some(verifier) = verifier {
                fields.push(("code_verifier", verifier));
            }
            provider.form(oidc::PATH_TOKEN, basic, &fields).await
        }
    };
    let wiki = Some(("wiki", WIKI_SECRET));
    let cases: [Case<'static>; 6] = [
        (
            wiki,
            WIKI_REDIRECT,
            Some(OTHER_VERIFIER),
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            wiki,
            WIKI_REDIRECT,
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            wiki,
            "https://wiki.example/other",
            Some(VERIFIER),
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        // The code was given to wiki; mail authenticates fine but may not redeem it.
        (
            Some(("mail", MAIL_SECRET)),
            WIKI_REDIRECT,
            Some(VERIFIER),
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            Some(("wiki", "wrong-secret")),
            WIKI_REDIRECT,
            Some(VERIFIER),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            Some(("nobody", "x")),
            WIKI_REDIRECT,
            Some(VERIFIER),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
    ];
    for (basic, redirect, verifier, status, error) in cases {
        let code = provider.code(&kiosk, "wiki", WIKI_REDIRECT, "openid").await;
        let reply = redeem(code, basic, redirect, verifier).await;
        assert_eq!(reply.status, status, "{basic:?} {redirect} {}", reply.body);
        assert_eq!(reply.error(), error, "{basic:?} {redirect}");
        assert_no_store(&reply);
        if status == StatusCode::UNAUTHORIZED {
            assert!(
                reply.headers[header::WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic")
            );
        }
    }
    // Both authentication methods at once, and a repeated parameter.
    let code = provider.code(&kiosk, "wiki", WIKI_REDIRECT, "openid").await;
    let both = provider
        .form(
            oidc::PATH_TOKEN,
            wiki,
            &[
                ("grant_type", "authorization_code"),
                ("client_secret", WIKI_SECRET),
                ("code", code.as_str()),
                ("redirect_uri", WIKI_REDIRECT),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
    assert_eq!(both.error(), "invalid_request");
    let repeated = provider
        .form(
            oidc::PATH_TOKEN,
            wiki,
            &[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("code", code.as_str()),
                ("redirect_uri", WIKI_REDIRECT),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
    assert_eq!(repeated.error(), "invalid_request");
    // client_secret_post works for the same code: neither refusal used it up.
    let by_post = provider
        .form(
            oidc::PATH_TOKEN,
            None,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "wiki"),
                ("client_secret", WIKI_SECRET),
                ("code", code.as_str()),
                ("redirect_uri", WIKI_REDIRECT),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
    assert_eq!(by_post.status, StatusCode::OK, "{}", by_post.body);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_ends_the_session() {
    let provider = provider().await;
    let kiosk = provider.sign_in().await;
    let code = provider
        .code(&kiosk, "wiki", WIKI_REDIRECT, "openid email")
        .await;
    let first = provider.redeem(&code).await.text("refresh_token");
    let refresh = |token: String| {
        let provider = &provider;
        async move {
            provider
                .form(
                    oidc::PATH_TOKEN,
                    Some(("wiki", WIKI_SECRET)),
                    &[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", token.as_str()),
                    ],
                )
                .await
        }
    };
    let rotated = refresh(first.clone()).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    assert_no_store(&rotated);
    let second = rotated.text("refresh_token");
    assert_ne!(second, first);
    let id_token = provider
        .verify(&rotated.text("id_token"), "JWT", "wiki")
        .await;
    assert!(id_token.get("nonce").is_none());
    // Another client cannot use wiki's token.
    let by_mail = provider
        .form(
            oidc::PATH_TOKEN,
            Some(("mail", MAIL_SECRET)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", second.as_str()),
            ],
        )
        .await;
    assert_eq!(by_mail.error(), "invalid_grant");

    let reused = refresh(first).await;
    assert_eq!(reused.error(), "invalid_grant");
    let session = provider
        .state
        .store()
        .get_session(&kiosk.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.ended_reason, Some(SessionEndReason::RefreshReused));
    let after = refresh(second).await;
    assert_eq!(after.error(), "invalid_grant");
    let access = provider.userinfo(&rotated.text("access_token")).await;
    assert_eq!(access.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn nothing_refreshes_after_the_session_ended() {
    let provider = provider().await;
    let kiosk = provider.sign_in().await;
    let code = provider.code(&kiosk, "wiki", WIKI_REDIRECT, "openid").await;
    let tokens = provider.redeem(&code).await;
    let access_token = tokens.text("access_token");
    provider.end_session(&kiosk).await;
    let reply = provider
        .form(
            oidc::PATH_TOKEN,
            Some(("wiki", WIKI_SECRET)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &tokens.text("refresh_token")),
            ],
        )
        .await;
    assert_eq!(reply.error(), "invalid_grant");
    let userinfo = provider.userinfo(&access_token).await;
    assert_eq!(userinfo.status, StatusCode::UNAUTHORIZED);
    let introspection = provider
        .introspect(("wiki", WIKI_SECRET), &access_token)
        .await;
    assert_eq!(introspection.body, json!({"active": false}));
}

#[tokio::test]
async fn revoked_and_foreign_tokens_are_inactive() {
    let provider = provider().await;
    let kiosk = provider.sign_in().await;
    let code = provider.code(&kiosk, "wiki", WIKI_REDIRECT, "openid").await;
    let tokens = provider.redeem(&code).await;
    let access_token = tokens.text("access_token");
    let refresh_token = tokens.text("refresh_token");
    // Another client's token: inactive for mail, and mail's revocation changes nothing.
    let foreign = provider
        .introspect(("mail", MAIL_SECRET), &access_token)
        .await;
    assert_eq!(foreign.body, json!({"active": false}));
    let by_mail = provider
        .form(
            oidc::PATH_REVOCATION,
            Some(("mail", MAIL_SECRET)),
            &[("token", &access_token)],
        )
        .await;
    assert_eq!(by_mail.status, StatusCode::OK);
    let still = provider
        .introspect(("wiki", WIKI_SECRET), &access_token)
        .await;
    assert_eq!(still.body["active"], true);

    let revoked = provider
        .form(
            oidc::PATH_REVOCATION,
            Some(("wiki", WIKI_SECRET)),
            &[("token", &access_token)],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let inactive = provider
        .introspect(("wiki", WIKI_SECRET), &access_token)
        .await;
    assert_eq!(inactive.body, json!({"active": false}));
    let userinfo = provider.userinfo(&access_token).await;
    assert_eq!(userinfo.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        userinfo.headers[header::WWW_AUTHENTICATE],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(userinfo.error(), "invalid_token");

    let unknown = provider
        .form(
            oidc::PATH_REVOCATION,
            Some(("wiki", WIKI_SECRET)),
            &[("token", "no-such-token")],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::OK);
    let refresh_revoked = provider
        .form(
            oidc::PATH_REVOCATION,
            Some(("wiki", WIKI_SECRET)),
            &[
                ("token", &refresh_token),
                ("token_type_hint", "refresh_token"),
            ],
        )
        .await;
    assert_eq!(refresh_revoked.status, StatusCode::OK);
    let refresh = provider
        .form(
            oidc::PATH_TOKEN,
            Some(("wiki", WIKI_SECRET)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
            ],
        )
        .await;
    assert_eq!(refresh.error(), "invalid_grant");
    let wrong_secret = provider
        .form(
            oidc::PATH_INTROSPECTION,
            Some(("wiki", "guess")),
            &[("token", &access_token)],
        )
        .await;
    assert_eq!(wrong_secret.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_secret.error(), "invalid_client");
}

#[tokio::test]
async fn token_exchange_gives_a_registered_app_a_token_of_the_session() {
    let provider = provider().await;
    let kiosk = provider.sign_in().await;
    let exchange = |audience: &'static str, subject: String| {
        let provider = &provider;
        async move {
            provider
                .form(
                    oidc::PATH_TOKEN,
                    None,
                    &[
                        ("grant_type", oidc::GRANT_TOKEN_EXCHANGE),
                        ("subject_token", subject.as_str()),
                        ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
                        ("audience", audience),
                    ],
                )
                .await
        }
    };
    let reply = exchange("app", kiosk.token.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_no_store(&reply);
    assert_eq!(reply.body["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN);
    assert!(reply.body.get("refresh_token").is_none());
    let access = provider
        .verify(&reply.text("access_token"), "at+jwt", "app")
        .await;
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["scope"], "openid profile email");
    let session = provider
        .state
        .store()
        .get_session(&kiosk.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.clients, ["app"]);

    let unknown = exchange("nobody", kiosk.token.clone()).await;
    assert_eq!(unknown.error(), "invalid_target");
    // A client's access token is no subject token.
    let not_kiosk = exchange("wiki", reply.text("access_token")).await;
    assert_eq!(not_kiosk.error(), "invalid_grant");
    provider.end_session(&kiosk).await;
    let ended = exchange("app", kiosk.token.clone()).await;
    assert_eq!(ended.error(), "invalid_grant");
}

#[tokio::test]
async fn unknown_grants_and_non_form_bodies_are_refused() {
    let provider = provider().await;
    let unknown = provider
        .form(oidc::PATH_TOKEN, None, &[("grant_type", "password")])
        .await;
    assert_eq!(unknown.error(), "unsupported_grant_type");
    let json_body = provider
        .post_json(
            oidc::PATH_TOKEN,
            None,
            &json!({"grant_type": "refresh_token"}),
        )
        .await;
    assert_eq!(json_body.status, StatusCode::BAD_REQUEST);
    assert_eq!(json_body.error(), "invalid_request");
    assert_no_store(&json_body);
}

#[tokio::test]
async fn wrong_client_secrets_spend_the_sources_refusals_and_big_bodies_are_refused() {
    let (dir, report) = init_directory();
    let mut config = ServerConfig::load(&report.config_path).expect("server.toml loads");
    config.origin = ORIGIN.to_owned();
    config.rate_limit.refusal_burst = 2;
    config.rate_limit.refusals_per_minute = 1;
    let state = state_with_users(&config, &[ALICE.user()]).await;
    state
        .store()
        .add_client(&OidcClient {
            id: "wiki".to_owned(),
            secret_hash: Some(secret_hash(WIKI_SECRET)),
            redirect_uris: vec![WIKI_REDIRECT.to_owned()],
            backchannel_logout_uri: None,
            created_at: OffsetDateTime::now_utc(),
        })
        .await
        .expect("the client registers");
    let provider = Provider { _dir: dir, state };
    let guess = |secret: &'static str| {
        let provider = &provider;
        async move {
            provider
                .form(
                    oidc::PATH_INTROSPECTION,
                    Some(("wiki", secret)),
                    &[("token", "x")],
                )
                .await
        }
    };
    for _ in 0..2 {
        assert_eq!(guess("guess").await.error(), "invalid_client");
    }
    let held_back = guess("guess").await;
    assert_eq!(held_back.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(held_back.error(), "temporarily_unavailable");
    assert!(held_back.headers.contains_key(header::RETRY_AFTER));
    // The right secret still works: only refusals are spent.
    let right = guess(WIKI_SECRET).await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);

    let big = format!(
        "grant_type=refresh_token&refresh_token={}",
        "a".repeat(70 * 1024)
    );
    let reply = provider
        .send(
            Request::builder()
                .method(Method::POST)
                .uri(oidc::PATH_TOKEN)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(big))
                .expect("a request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}
