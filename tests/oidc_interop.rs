//! pivtap's OpenID Connect provider as an independent relying-party library sees it: Authlib (Python, from PyPI) does discovery, the code flow with PKCE S256 through the kiosk's loopback endpoint, ID token validation, refresh, userinfo, introspection and revocation, and receives the back-channel logout token when the badge leaves; a native app's token from the kiosk's local API dies with the session too.
//!
//! Real parts only: `pivtap server run`, `pivtap admin clients add`, `pivtap kiosk
//! --headless` with a virtual badge in a vpcd reader (pcscd), and Authlib's requests
//! client (`tests/oidc/rp.py`, driven by `tests/oidc/driver.py`). The authorization URL
//! Authlib builds from discovery goes to the kiosk's endpoint and is followed without a
//! browser (requests, no redirects) to get the code.
//!
//! Needs the Python venv (`export PIVTAP_OIDC_PYTHON=$(scripts/oidc-env)`) and pcscd with
//! vsmartcard-vpcd (scripts/setup-debian); fails, saying so, without them. Run it alone:
//! `flock /tmp/pivtap-pcscd.lock cargo test --test oidc_interop`.

use pivtap_protocol::oidc::{
    ACCESS_TOKEN_JWT_TYPE, ACR_CARD_AND_PIN, AccessTokenClaims, BACKCHANNEL_LOGOUT_EVENT,
    IdTokenClaims, Introspection, LOGOUT_TOKEN_JWT_TYPE, LogoutTokenClaims, PATH_TOKEN,
    TOKEN_TYPE_ACCESS_TOKEN,
};
use pivtap_testkit::badge::ALICE;
use serde_json::{Value, json};

mod common;
use common::KIOSK;
use common::oidc::{AUTHLIB_RP, OTHER_RP, Sso};

/// `authorize`: Authlib's authorization URL for `client_id`, changed by `omit`/`set`,
/// fetched from the kiosk without following the redirect.
fn authorize(sso: &mut Sso, flow: &str, client_id: &str, omit: &[&str], set: Value) -> Value {
    sso.driver.call(json!({
        "cmd": "authorize", "flow": flow, "client_id": client_id, "omit": omit, "set": set,
    }))
}

/// Checks a kiosk answer is a redirect back to `target` with a code, the state and `iss`.
#[track_caller]
fn expect_code(sso: &Sso, answer: &Value, target: &str) {
    assert_eq!(answer["status"], 302, "{answer}\n{}", sso.story());
    let back = &answer["location"];
    assert_eq!(back["target"], target, "{answer}");
    assert_eq!(back["state_matches"], true, "{answer}");
    assert_eq!(back["iss"], sso.server.url, "{answer}");
    assert_eq!(back["error"], Value::Null, "{answer}");
    assert_eq!(
        back["code_length"], 43,
        "32 random bytes, base64url: {answer}"
    );
    assert_eq!(answer["headers"]["cache-control"], "no-store", "{answer}");
}

/// Checks the kiosk refused an authorization request with an error page naming `cause`,
/// not a redirect.
#[track_caller]
fn expect_refused_page(sso: &Sso, answer: &Value, what: &str, cause: &str) {
    assert_eq!(answer["status"], 400, "{what}: {answer}\n{}", sso.story());
    assert_eq!(
        answer["location"],
        Value::Null,
        "{what}: never a redirect: {answer}"
    );
    let content_type = answer["headers"]["content-type"].as_str().unwrap_or("");
    assert!(content_type.starts_with("text/html"), "{what}: {answer}");
    assert!(
        answer["body"]
            .as_str()
            .is_some_and(|page| page.contains(cause)),
        "{what}: the page says {cause:?}: {answer}"
    );
}

/// Checks a token endpoint answer is the OAuth error `error`, and not cacheable.
#[track_caller]
fn expect_oauth_error(answer: &Value, error: &str, what: &str) {
    assert_eq!(answer["ok"], false, "{what}: {answer}");
    assert_eq!(answer["error"], error, "{what}: {answer}");
    assert_eq!(answer["status"], 400, "{what}: {answer}");
    assert_eq!(answer["cache_control"], "no-store", "{what}: {answer}");
}

/// The claims of a token answer's ID token, as the protocol types read them.
fn id_claims(answer: &Value) -> IdTokenClaims {
    serde_json::from_value(answer["id_token"]["claims"].clone())
        .unwrap_or_else(|error| panic!("ID token claims ({error}): {answer}"))
}

/// The claims of a token answer's access token.
fn access_claims(answer: &Value) -> AccessTokenClaims {
    serde_json::from_value(answer["access_token"]["claims"].clone())
        .unwrap_or_else(|error| panic!("access token claims ({error}): {answer}"))
}

/// What introspection said of a flow's token, asked by `client_id`.
fn introspect(sso: &mut Sso, flow: &str, token: &str, client_id: &str) -> Introspection {
    let answer = sso.driver.call(json!({
        "cmd": "introspect", "flow": flow, "token": token, "client_id": client_id,
    }));
    assert_eq!(answer["status"], 200, "{answer}");
    serde_json::from_value(answer["json"].clone())
        .unwrap_or_else(|error| panic!("an introspection answer ({error}): {answer}"))
}

/// Checks userinfo refuses a flow's access token as RFC 6750 says.
#[track_caller]
fn expect_userinfo_refused(sso: &mut Sso, flow: &str, what: &str) {
    let answer = sso.driver.call(json!({"cmd": "userinfo", "flow": flow}));
    assert_eq!(answer["status"], 401, "{what}: {answer}");
    let challenge = answer["www_authenticate"].as_str().unwrap_or("");
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""),
        "{what}: {answer}"
    );
}

#[test]
fn authlib_signs_in_through_the_kiosk_refreshes_and_sees_the_session_end_when_the_badge_leaves() {
    let mut sso = Sso::start("oidc_interop-flow");
    let url = sso.server.url.clone();

    // Discovery, as Authlib read it.
    let meta = sso.metadata.clone();
    assert_eq!(meta["issuer"], url, "{meta}");
    assert_eq!(meta["authorization_endpoint"], sso.authorize, "{meta}");
    assert_eq!(
        meta["token_endpoint"],
        format!("{url}{PATH_TOKEN}"),
        "{meta}"
    );
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        meta["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    assert_eq!(meta["backchannel_logout_supported"], true);
    assert_eq!(meta["backchannel_logout_session_supported"], true);
    assert!(
        meta["jwks_uri"]
            .as_str()
            .is_some_and(|jwks| jwks.starts_with(&url)),
        "{meta}"
    );

    sso.sign_in(&ALICE);

    // The URL Authlib builds goes to the kiosk, which answers with a code for the worker
    // signed in there: no second PIN, no browser.
    let rp = sso.rp.clone();
    let answer = authorize(&mut sso, "flow", AUTHLIB_RP, &[], json!({}));
    assert_eq!(answer["authorization_endpoint"], sso.authorize, "{answer}");
    for parameter in ["code_challenge", "code_challenge_method", "nonce", "state"] {
        assert!(
            answer["parameters"]
                .as_array()
                .is_some_and(|sent| sent.contains(&json!(parameter))),
            "Authlib sent {parameter}: {answer}"
        );
    }
    expect_code(&sso, &answer, &format!("{rp}/authlib/callback"));

    // Authlib redeems it (client_secret_basic, the PKCE verifier) and validates the ID
    // token: signature by the JWKS, iss, aud, nonce, exp, iat.
    let tokens = sso.driver.call(json!({"cmd": "token", "flow": "flow"}));
    assert_eq!(tokens["ok"], true, "{tokens}\n{}", sso.story());
    assert_eq!(tokens["status"], 200, "{tokens}");
    assert_eq!(tokens["cache_control"], "no-store", "{tokens}");
    assert!(
        tokens["token_type"]
            .as_str()
            .is_some_and(|kind| kind.eq_ignore_ascii_case("bearer")),
        "{tokens}"
    );
    assert_eq!(tokens["refresh_token"], true, "{tokens}");
    let id = id_claims(&tokens);
    assert_eq!(id.iss, url);
    assert_eq!(id.aud, AUTHLIB_RP);
    assert_eq!(id.sub, ALICE.user_id);
    assert_eq!(id.device, KIOSK);
    assert!(id.nonce.is_some(), "Authlib checked the nonce it sent");
    assert_eq!(id.sid.len(), 22, "16 random bytes, base64url: {}", id.sid);
    assert_eq!(id.amr, ["hwk", "sc", "pin"]);
    assert_eq!(id.acr, ACR_CARD_AND_PIN);
    assert_eq!(tokens["id_token"]["header"]["alg"], "ES256", "{tokens}");
    let access = access_claims(&tokens);
    assert_eq!(
        tokens["access_token"]["header"]["typ"], ACCESS_TOKEN_JWT_TYPE,
        "{tokens}"
    );
    assert_eq!(access.aud, AUTHLIB_RP, "the client's own audience");
    assert_eq!(access.client_id, AUTHLIB_RP);
    assert_eq!(access.sid, id.sid);
    assert_eq!(access.sub, ALICE.user_id);

    // Userinfo and introspection while the worker is at the kiosk.
    let userinfo = sso.driver.call(json!({"cmd": "userinfo", "flow": "flow"}));
    assert_eq!(userinfo["status"], 200, "{userinfo}");
    assert_eq!(userinfo["json"]["sub"], ALICE.user_id, "{userinfo}");
    assert_eq!(userinfo["json"]["name"], ALICE.display_name, "{userinfo}");
    assert_eq!(userinfo["json"]["email"], ALICE.mail, "{userinfo}");
    let active = introspect(&mut sso, "flow", "access", AUTHLIB_RP);
    assert!(active.active, "{active:?}");
    assert_eq!(active.sub.as_deref(), Some(ALICE.user_id));
    assert_eq!(active.client_id.as_deref(), Some(AUTHLIB_RP));
    assert_eq!(active.sid.as_deref(), Some(id.sid.as_str()));
    // Another client may not learn about this client's token.
    let foreign = introspect(&mut sso, "flow", "access", OTHER_RP);
    assert!(!foreign.active, "{foreign:?}");

    // Refresh: a new access token, the refresh token rotated, a fresh ID token of the
    // same session (validated by Authlib, without a nonce).
    let refreshed = sso.driver.call(json!({"cmd": "refresh", "flow": "flow"}));
    assert_eq!(refreshed["ok"], true, "{refreshed}\n{}", sso.story());
    assert_eq!(refreshed["refresh_token_rotated"], true, "{refreshed}");
    let again = id_claims(&refreshed);
    assert_eq!(again.sid, id.sid);
    assert_eq!(again.nonce, None, "{refreshed}");
    assert_eq!(access_claims(&refreshed).sid, id.sid);
    assert_ne!(
        access_claims(&refreshed).jti,
        access.jti,
        "a new access token"
    );
    let userinfo = sso.driver.call(json!({"cmd": "userinfo", "flow": "flow"}));
    assert_eq!(userinfo["status"], 200, "{userinfo}");

    // A native app on the device asks the kiosk's local API for a token of its own client
    // (token exchange at the server): its audience, the same session, no refresh token.
    let kiosk = format!("http://127.0.0.1:{}", sso.kiosk.api_port);
    let local_token = sso.server.dir.path().join("kiosk/local-api.token");
    let native = sso.driver.call(json!({
        "cmd": "native", "flow": "native", "kiosk": kiosk, "token_file": local_token,
        "client_id": OTHER_RP,
    }));
    assert_eq!(native["status"], 200, "{native}\n{}", sso.story());
    assert_eq!(
        native["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN,
        "{native}"
    );
    assert_eq!(native["refresh_token"], false, "{native}");
    let native_claims = access_claims(&native);
    assert_eq!(native_claims.aud, OTHER_RP, "the app's own audience");
    assert_eq!(native_claims.sid, id.sid);
    let userinfo = sso
        .driver
        .call(json!({"cmd": "userinfo", "flow": "native"}));
    assert_eq!(userinfo["json"]["sub"], ALICE.user_id, "{userinfo}");
    let unknown = sso.driver.call(json!({
        "cmd": "native", "flow": "unknown", "kiosk": kiosk, "token_file": local_token,
        "client_id": "no-such-client",
    }));
    assert_eq!(unknown["status"], 400, "{unknown}");
    assert_eq!(unknown["json"]["error"], "invalid_target", "{unknown}");

    // The badge leaves: the kiosk's sign-out ends the session at the server, which sends
    // the relying party a logout token; Authlib's JOSE validates it.
    sso.remove_badge();
    let logouts = sso.driver.wait_for_logouts(AUTHLIB_RP);
    let logout = &logouts[0];
    assert_eq!(
        logout["error"],
        Value::Null,
        "the logout token validates: {logout}"
    );
    assert_eq!(logout["header"]["typ"], LOGOUT_TOKEN_JWT_TYPE, "{logout}");
    assert_eq!(logout["header"]["alg"], "ES256", "{logout}");
    let claims: LogoutTokenClaims = serde_json::from_value(logout["claims"].clone())
        .unwrap_or_else(|error| panic!("logout token claims ({error}): {logout}"));
    assert_eq!(claims.iss, url);
    assert_eq!(claims.aud, AUTHLIB_RP);
    assert_eq!(claims.sid, id.sid);
    assert_eq!(claims.sub, ALICE.user_id);
    assert_eq!(
        claims.events.get(BACKCHANNEL_LOGOUT_EVENT),
        Some(&json!({}))
    );
    assert!(claims.exp > claims.iat, "{logout}");
    assert_eq!(logouts.len(), 1, "one delivery: {logouts:?}");

    // The session is over for every token of it.
    let ended = introspect(&mut sso, "flow", "access", AUTHLIB_RP);
    assert!(!ended.active, "{ended:?}");
    assert_eq!(
        ended.sub, None,
        "an inactive answer says nothing more: {ended:?}"
    );
    expect_userinfo_refused(&mut sso, "flow", "after the session ended");
    expect_userinfo_refused(
        &mut sso,
        "native",
        "a native app's token after the session ended",
    );
    let refused = sso.driver.call(json!({"cmd": "refresh", "flow": "flow"}));
    expect_oauth_error(&refused, "invalid_grant", "refresh after the session ended");
}

#[test]
fn authlib_meets_each_refusal_with_its_error() {
    let mut sso = Sso::start("oidc_interop-refusals");
    let rp = sso.rp.clone();
    sso.sign_in(&ALICE);

    // At the kiosk: a redirect URI that is not registered, no PKCE, the plain method, no
    // state: an error page, never a redirect.
    let unregistered = authorize(
        &mut sso,
        "unregistered",
        AUTHLIB_RP,
        &[],
        json!({"redirect_uri": format!("{rp}/not-registered")}),
    );
    expect_refused_page(
        &sso,
        &unregistered,
        "an unregistered redirect URI",
        "did not register",
    );
    let other_clients = authorize(
        &mut sso,
        "other-clients-uri",
        AUTHLIB_RP,
        &[],
        json!({"redirect_uri": format!("{rp}/other/callback")}),
    );
    expect_refused_page(
        &sso,
        &other_clients,
        "another client's redirect URI",
        "did not register",
    );
    let no_pkce = authorize(
        &mut sso,
        "no-pkce",
        AUTHLIB_RP,
        &["code_challenge", "code_challenge_method"],
        json!({}),
    );
    expect_refused_page(&sso, &no_pkce, "no PKCE", "code_challenge");
    let plain = authorize(
        &mut sso,
        "plain",
        AUTHLIB_RP,
        &[],
        json!({"code_challenge_method": "plain"}),
    );
    expect_refused_page(&sso, &plain, "PKCE plain", "S256");
    let no_state = authorize(&mut sso, "no-state", AUTHLIB_RP, &["state"], json!({}));
    expect_refused_page(&sso, &no_state, "no state", "state");
    let unknown = authorize(
        &mut sso,
        "unknown-client",
        AUTHLIB_RP,
        &[],
        json!({"client_id": "no-such-client"}),
    );
    expect_refused_page(&sso, &unknown, "an unknown client", "not registered");

    // At the token endpoint, each with a code of its own.
    let second = authorize(
        &mut sso,
        "redirect",
        AUTHLIB_RP,
        &[],
        json!({"redirect_uri": format!("{rp}/authlib/second")}),
    );
    expect_code(&sso, &second, &format!("{rp}/authlib/second"));
    let answer = sso.driver.call(json!({
        "cmd": "token", "flow": "redirect", "redirect_uri": format!("{rp}/authlib/callback"),
    }));
    expect_oauth_error(
        &answer,
        "invalid_grant",
        "a redirect URI other than the code's",
    );

    let answer = authorize(&mut sso, "no-verifier", AUTHLIB_RP, &[], json!({}));
    expect_code(&sso, &answer, &format!("{rp}/authlib/callback"));
    let answer = sso.driver.call(json!({
        "cmd": "token", "flow": "no-verifier", "verifier": "omit",
    }));
    expect_oauth_error(&answer, "invalid_request", "no code_verifier");

    let answer = authorize(&mut sso, "wrong-verifier", AUTHLIB_RP, &[], json!({}));
    expect_code(&sso, &answer, &format!("{rp}/authlib/callback"));
    let answer = sso.driver.call(json!({
        "cmd": "token", "flow": "wrong-verifier", "verifier": "wrong",
    }));
    expect_oauth_error(&answer, "invalid_grant", "a wrong code_verifier");

    let answer = authorize(&mut sso, "foreign", OTHER_RP, &[], json!({}));
    expect_code(&sso, &answer, &format!("{rp}/other/callback"));
    let answer = sso.driver.call(json!({
        "cmd": "token", "flow": "foreign", "client_id": AUTHLIB_RP,
        "redirect_uri": format!("{rp}/other/callback"),
    }));
    expect_oauth_error(&answer, "invalid_grant", "a code of another client");

    // A wrong client secret: invalid_client, 401 with a Basic challenge (RFC 6749 5.2).
    let answer = authorize(&mut sso, "wrong-secret", AUTHLIB_RP, &[], json!({}));
    expect_code(&sso, &answer, &format!("{rp}/authlib/callback"));
    let answer = sso.driver.call(json!({
        "cmd": "token", "flow": "wrong-secret", "secret": "not-the-client-secret",
    }));
    assert_eq!(answer["error"], "invalid_client", "{answer}");
    assert_eq!(answer["status"], 401, "{answer}");
    assert!(
        answer["www_authenticate"]
            .as_str()
            .is_some_and(|challenge| challenge.starts_with("Basic")),
        "{answer}"
    );

    // A code redeems once (here with client_secret_post).
    let answer = authorize(&mut sso, "once", AUTHLIB_RP, &[], json!({}));
    expect_code(&sso, &answer, &format!("{rp}/authlib/callback"));
    let first = sso.driver.call(json!({
        "cmd": "token", "flow": "once", "auth": "client_secret_post",
    }));
    assert_eq!(first["ok"], true, "{first}\n{}", sso.story());
    let reused = sso.driver.call(json!({"cmd": "token", "flow": "once"}));
    expect_oauth_error(&reused, "invalid_grant", "a code used twice");

    // Revocation (RFC 7009): the revoked access token is inactive at introspection and
    // refused at userinfo; the revoked refresh token refreshes no more.
    assert!(introspect(&mut sso, "once", "access", AUTHLIB_RP).active);
    let revoked = sso
        .driver
        .call(json!({"cmd": "revoke", "flow": "once", "token": "access"}));
    assert_eq!(revoked["status"], 200, "{revoked}");
    let inactive = introspect(&mut sso, "once", "access", AUTHLIB_RP);
    assert!(!inactive.active, "a revoked access token: {inactive:?}");
    expect_userinfo_refused(&mut sso, "once", "a revoked access token");
    let revoked = sso
        .driver
        .call(json!({"cmd": "revoke", "flow": "once", "token": "refresh"}));
    assert_eq!(revoked["status"], 200, "{revoked}");
    let answer = sso.driver.call(json!({"cmd": "refresh", "flow": "once"}));
    expect_oauth_error(&answer, "invalid_grant", "a revoked refresh token");

    // A replaced refresh token presented again ends the session (RFC 9700 4.14.2): the
    // current one is refused from then on, and the kiosk signs the worker out.
    let answer = authorize(&mut sso, "rotation", AUTHLIB_RP, &[], json!({}));
    expect_code(&sso, &answer, &format!("{rp}/authlib/callback"));
    let tokens = sso.driver.call(json!({"cmd": "token", "flow": "rotation"}));
    assert_eq!(tokens["ok"], true, "{tokens}");
    let refreshed = sso
        .driver
        .call(json!({"cmd": "refresh", "flow": "rotation"}));
    assert_eq!(refreshed["refresh_token_rotated"], true, "{refreshed}");
    let replayed = sso.driver.call(json!({
        "cmd": "refresh", "flow": "rotation", "which": "replaced",
    }));
    expect_oauth_error(&replayed, "invalid_grant", "a replaced refresh token");
    let answer = sso
        .driver
        .call(json!({"cmd": "refresh", "flow": "rotation"}));
    expect_oauth_error(&answer, "invalid_grant", "refresh after the session ended");
    let inactive = introspect(&mut sso, "rotation", "access", AUTHLIB_RP);
    assert!(!inactive.active, "{inactive:?}");
    let out = sso.kiosk.expect_skipping("signed_out");
    assert_ne!(out["reason"], "card_removed", "{}", sso.kiosk.story());
}
