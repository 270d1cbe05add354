//! Single sign-on in a real browser: Debian's chromium (headless, through chromedriver and selenium) signs in to a small web app through the kiosk's loopback authorization endpoint with the badge signed in at the kiosk (no second PIN), is signed out when the badge leaves, and waits on "tap your badge" when nobody is signed in.
//!
//! The web app is `tests/oidc/rp.py` (Authlib's client; its session ends on the
//! back-channel logout token). Screenshots of each step are kept in
//! `target/test-logs/browser/`.
//!
//! Needs Debian's chromium and chromium-driver, the Python venv (`export
//! PIVTAP_OIDC_PYTHON=$(scripts/oidc-env)`) and pcscd with vsmartcard-vpcd
//! (scripts/setup-debian); fails, saying so, without them. Run it alone:
//! `flock /tmp/pivtap-pcscd.lock cargo test --test browser_sso`.

use pivtap_testkit::badge::ALICE;
use serde_json::{Value, json};

mod common;
use common::oidc::{Sso, WEB_APP, require_browser, test_logs};

/// How long the browser may take to reach a page (the kiosk's waiting page included).
const PAGE_WAIT: u64 = 30;

/// The signed-in line of the web app.
fn signed_in_as() -> String {
    format!("{} ({})", ALICE.display_name, ALICE.user_id)
}

/// Starts the harness and the browser; screenshots go under `target/test-logs/browser/NAME-*`.
fn start(name: &str) -> Sso {
    require_browser();
    let mut sso = Sso::start(&format!("browser_sso-{name}"));
    let shots = test_logs("browser").join(name);
    sso.driver
        .call(json!({"cmd": "browser_start", "screenshots": shots}));
    sso
}

/// Waits until the page shows `text`; fails with the page, the kiosk's and the server's logs.
#[track_caller]
fn wait_for(sso: &mut Sso, text: &str, shot: &str) -> Value {
    let page = sso
        .driver
        .call(json!({"cmd": "browser_wait", "contains": text, "timeout": PAGE_WAIT}));
    sso.driver
        .call(json!({"cmd": "browser_shot", "name": shot}));
    assert_eq!(
        page["found"],
        true,
        "the page never showed {text:?}: {page}\n{}",
        sso.story()
    );
    page
}

/// Opens the web app and checks it offers the login.
fn open_signed_out(sso: &mut Sso, shot: &str) {
    let home = format!("{}/", sso.rp);
    let page = sso.driver.call(json!({"cmd": "browser_open", "url": home}));
    assert!(
        page["text"]
            .as_str()
            .is_some_and(|text| text.contains("Signed out")),
        "{page}"
    );
    sso.driver
        .call(json!({"cmd": "browser_shot", "name": shot}));
}

#[test]
fn the_browser_signs_in_with_the_badge_at_the_kiosk_and_out_when_it_leaves() {
    let mut sso = start("signed-in");
    sso.sign_in(&ALICE);
    open_signed_out(&mut sso, "1-app-signed-out");

    // The app's login goes to the kiosk's endpoint, which sends the browser straight back
    // with a code: the app shows the worker, and the kiosk asked for no second PIN.
    sso.driver
        .call(json!({"cmd": "browser_click", "id": "login"}));
    let page = wait_for(&mut sso, &signed_in_as(), "2-app-signed-in");
    assert!(
        page["url"]
            .as_str()
            .is_some_and(|url| url.starts_with(&sso.rp)),
        "back at the app: {page}"
    );
    let since = sso.kiosk.pending();
    assert!(
        !since
            .iter()
            .any(|event| event["event"] == "pin_required" || event["event"] == "signed_out"),
        "no second PIN, the worker still signed in: {}",
        sso.kiosk.story()
    );

    // The badge leaves: the server ends the session, the app's back-channel logout ends
    // its local session, and a reload shows the login again.
    sso.remove_badge();
    let logouts = sso.driver.wait_for_logouts(WEB_APP);
    assert_eq!(logouts[0]["error"], Value::Null, "{logouts:?}");
    assert_eq!(logouts[0]["ended_local_sessions"], 1, "{logouts:?}");
    let home = format!("{}/", sso.rp);
    sso.driver.call(json!({"cmd": "browser_open", "url": home}));
    let page = wait_for(&mut sso, "Signed out", "3-app-signed-out-after-badge-left");
    assert!(
        !page["text"]
            .as_str()
            .is_some_and(|text| text.contains(&signed_in_as())),
        "{page}"
    );
}

#[test]
fn with_nobody_at_the_kiosk_the_browser_waits_for_the_badge() {
    let mut sso = start("tap-your-badge");
    open_signed_out(&mut sso, "1-app-signed-out");

    // Nobody is signed in at the kiosk: its page asks for the badge and keeps waiting.
    sso.driver
        .call(json!({"cmd": "browser_click", "id": "login"}));
    let page = wait_for(&mut sso, "Tap your badge", "2-kiosk-tap-your-badge");
    assert!(
        page["url"]
            .as_str()
            .is_some_and(|url| url.starts_with(&sso.authorize)),
        "at the kiosk's endpoint: {page}"
    );
    assert!(
        page["text"]
            .as_str()
            .is_some_and(|text| text.contains(WEB_APP)),
        "the page names the app: {page}"
    );

    // The worker taps the badge and types the PIN at the kiosk: the browser goes on by
    // itself and comes back to the app signed in.
    sso.sign_in(&ALICE);
    let page = wait_for(&mut sso, &signed_in_as(), "3-app-signed-in");
    assert!(
        page["url"]
            .as_str()
            .is_some_and(|url| url.starts_with(&sso.rp)),
        "back at the app: {page}"
    );
}
