//! End-to-end tests of the authentication server through the `pivtap` binary: `server init` and `server run`, the admin CLI, `pivtap auth` with virtual cards, and a session token checked by an independent JWT library (PyJWT) as a line-of-business backend would.
//!
//! Each test runs its own server process on loopback in a temporary
//! directory and stops it with SIGINT. Fixture cards are used as copies:
//! `pivtap auth` writes PIN counters back to the card image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pivtap_client::client::{Client, ServerTrust};
use serde_json::Value;

mod common;
use common::{KIOSK, Run, RunningServer, path_str, run};

const ALICE_PIN: &str = "123456";
const BOB_PIN: &str = "24681357";
/// What PyJWT needs, by Debian package (scripts/setup-debian installs them).
const PYJWT_PACKAGES: &str = "python3-jwt python3-cryptography";

#[test]
fn a_server_is_set_up_administered_and_signed_in_to_from_the_command_line() {
    let mut server = RunningServer::start();

    let added = server
        .admin(&[
            "users",
            "add",
            "--id",
            "alice",
            "--name",
            "Alice Example",
            "--mail",
            "alice@example.com",
        ])
        .success("users add");
    assert!(
        added.stdout.contains("Added user alice"),
        "{}",
        added.stdout
    );
    let users = server
        .admin(&["users", "list", "--json"])
        .success("users list");
    let users = users.json();
    let users = users.as_array().expect("a JSON array of users");
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(users[0]["id"], "alice");
    assert_eq!(users[0]["display_name"], "Alice Example");
    assert_eq!(users[0]["mail"], "alice@example.com");
    assert_eq!(users[0]["state"], "active");

    let alice = server.card_copy("alice");
    let signed_in = server.auth(&alice, ALICE_PIN).success("auth alice").json();
    assert_eq!(signed_in["user"]["id"], "alice");
    assert_eq!(signed_in["user"]["display_name"], "Alice Example");
    let token = signed_in["token"].as_str().expect("a token");
    assert_eq!(token.split('.').count(), 3, "a compact JWT: {token}");
    // Access tokens are short (5 minutes by default); the session lasts 12 hours.
    assert_eq!(signed_in["expires_in"], 300);
    let session_id = signed_in["session_id"].as_str().expect("the session's id");
    assert_eq!(
        session_id.len(),
        22,
        "16 random bytes, base64url: {session_id}"
    );
    assert_eq!(signed_in["session_expires_in"], 12 * 3600);

    // bob's card is trusted, but no user has his address.
    let bob = server.card_copy("bob");
    server
        .auth(&bob, BOB_PIN)
        .failure("auth bob", "user_unknown");

    let cards = server
        .admin(&["cards", "list", "--json"])
        .success("cards list");
    let cards = cards.json();
    let cards = cards.as_array().expect("a JSON array of cards");
    assert_eq!(
        cards.len(),
        1,
        "only cards that signed in are recorded: {cards:?}"
    );
    assert_eq!(cards[0]["user_id"], "alice");
    assert_eq!(cards[0]["state"], "active");
    assert!(
        cards[0]["subject"]
            .as_str()
            .is_some_and(|subject| subject.contains("CN=Alice Example")),
        "{cards:?}"
    );
    let serial = cards[0]["serial"].as_str().expect("a serial").to_owned();

    // Issue 12: without a terminal, a revocation needs --yes.
    server
        .admin(&["cards", "revoke", &serial])
        .failure("cards revoke without --yes", "--yes");
    server
        .admin(&["cards", "revoke", &serial, "--reason", "sideways", "--yes"])
        .failure("cards revoke with a made-up reason", "keyCompromise");
    let revoked = server
        .admin(&[
            "cards",
            "revoke",
            &serial,
            "--reason",
            "keyCompromise",
            "--yes",
        ])
        .success("cards revoke");
    assert!(revoked.stdout.contains("revoked"), "{}", revoked.stdout);
    assert!(
        revoked.stdout.contains("keyCompromise"),
        "{}",
        revoked.stdout
    );
    server
        .auth(&alice, ALICE_PIN)
        .failure("auth with a revoked card", "certificate_revoked");

    let successes = server
        .admin(&["audit", "--outcome", "ok", "--json"])
        .success("audit --outcome ok");
    let successes = successes.json();
    let successes = successes.as_array().expect("a JSON array of events");
    assert!(successes.iter().all(|event| event["outcome"] == "ok"));
    let sign_ins: Vec<&Value> = successes
        .iter()
        .filter(|event| event["kind"] == "assertion")
        .collect();
    assert_eq!(sign_ins.len(), 1, "one successful sign-in: {successes:?}");
    assert_eq!(sign_ins[0]["user_id"], "alice");
    assert_eq!(sign_ins[0]["device"], KIOSK);
    assert_eq!(sign_ins[0]["card_serial"], serial.as_str());
    let refusals = server
        .admin(&["audit", "--outcome", "certificate_revoked", "--json"])
        .success("audit --outcome certificate_revoked")
        .json();
    assert_eq!(refusals.as_array().map(Vec::len), Some(1), "{refusals}");

    server
        .admin_with_env_token(None, &["users", "list"])
        .failure("admin without a credential", "PIVTAP_ADMIN_TOKEN");
    server
        .admin_with_env_token(Some("not-the-admin-token"), &["users", "list"])
        .failure("admin with a wrong credential", "unauthorized");
    server
        .admin_with_env_token(
            Some(std::fs::read_to_string(&server.token_file).unwrap().trim()),
            &["users", "list"],
        )
        .success("admin with PIVTAP_ADMIN_TOKEN");

    let (status, output) = server.stop();
    assert!(
        status.success(),
        "the server exits cleanly on SIGINT: {status}"
    );
    assert!(output.contains("pivtap server stopped."), "{output}");
}

/// Issue 12, the admin day to day: a second user with a taken mail is refused; an import
/// dry run reports and changes nothing, `--update` changes; a rename keeps the card; a
/// refused sign-in is the user's (`audit --user --kind sign_in_refused`); `--limit 0` is
/// none; deleting a user asks for `--yes` and revokes their cards.
#[test]
fn the_directory_is_kept_from_the_command_line() {
    let server = RunningServer::start();
    server.add_user("alice", "Alice Example", "alice@example.com");
    server
        .admin(&[
            "users",
            "add",
            "--id",
            "alice2",
            "--name",
            "A2",
            "--mail",
            "ALICE@example.com",
        ])
        .failure("a second user with alice's mail", "\"alice\" has this mail");
    let alice = server.card_copy("alice");
    server.auth(&alice, ALICE_PIN).success("auth alice");

    let csv = server.dir.path().join("staff.csv");
    std::fs::write(
        &csv,
        "id,display_name,mail\nalice,Alice B. Example,alice@example.com\ncarol,Carol,carol@example.com\n",
    )
    .unwrap();
    let dry = server
        .admin(&["users", "import", path_str(&csv), "--update", "--dry-run"])
        .success("import --update --dry-run");
    assert!(
        dry.stdout
            .contains("Dry run, nothing changed: 1 added, 1 updated, 0 unchanged, 0 refused."),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("Updated alice: display_name"),
        "{}",
        dry.stdout
    );
    let users = server
        .admin(&["users", "list", "--json"])
        .success("users list")
        .json();
    assert_eq!(users.as_array().map(Vec::len), Some(1), "{users}");
    let report = server
        .admin(&["users", "import", path_str(&csv), "--update", "--json"])
        .success("import --update")
        .json();
    assert_eq!(
        (report["added"].as_u64(), report["updated"].as_u64()),
        (Some(1), Some(1))
    );
    server
        .admin(&["users", "update", "alice"])
        .failure("an update without changes", "nothing to change");
    let renamed = server
        .admin(&["users", "update", "alice", "--rename", "alice.b"])
        .success("users update --rename");
    assert!(
        renamed.stdout.contains("Renamed user alice to alice.b"),
        "{}",
        renamed.stdout
    );
    let signed_in = server
        .auth(&alice, ALICE_PIN)
        .success("auth after the rename")
        .json();
    assert_eq!(signed_in["user"]["id"], "alice.b");

    let cards = server
        .admin(&["cards", "list", "--json"])
        .success("cards list")
        .json();
    assert_eq!(cards[0]["user_id"], "alice.b", "{cards}");
    let serial = cards[0]["serial"].as_str().expect("a serial").to_owned();
    server
        .admin(&["cards", "lock", &serial])
        .success("cards lock");
    server
        .auth(&alice, ALICE_PIN)
        .failure("auth with a locked card", "card_locked");
    let why = server
        .admin(&[
            "audit",
            "--user",
            "alice.b",
            "--kind",
            "sign_in_refused",
            "--json",
        ])
        .success("audit --kind sign_in_refused")
        .json();
    assert_eq!(why.as_array().map(Vec::len), Some(1), "{why}");
    assert_eq!(why[0]["outcome"], "card_locked");
    let none = server
        .admin(&["audit", "--limit", "0", "--json"])
        .success("audit --limit 0");
    assert_eq!(none.json(), serde_json::json!([]));
    let page = server
        .admin(&["audit", "--limit", "2"])
        .success("audit --limit 2");
    assert!(page.stderr.contains("--before"), "{}", page.stderr);
    server
        .admin(&["audit", "--kind", "nonsense"])
        .failure("audit --kind nonsense", "sign_in_refused");

    server
        .admin(&["users", "delete", "alice.b"])
        .failure("users delete without --yes", "--yes");
    let deleted = server
        .admin(&["users", "delete", "alice.b", "--yes"])
        .success("users delete --yes");
    assert!(
        deleted.stdout.contains("revoked their cards"),
        "{}",
        deleted.stdout
    );
    let cards = server
        .admin(&["cards", "list", "--json"])
        .success("cards list")
        .json();
    assert_eq!(cards[0]["state"], "revoked", "{cards}");

    // Named admin credentials: the token is printed once, alone on stdout; it acts, and
    // the audit names it; revoked, it no longer acts.
    let made = server
        .admin(&["credentials", "add", "erin-laptop"])
        .success("credentials add");
    let token = made.stdout.trim().to_owned();
    assert_eq!(token.lines().count(), 1, "{}", made.stdout);
    assert!(made.stderr.contains("not shown again"), "{}", made.stderr);
    server
        .admin_with_env_token(Some(&token), &["users", "lock", "carol"])
        .success("a named credential acts");
    let locked = server
        .admin(&["audit", "--user", "carol", "--limit", "1", "--json"])
        .success("audit --user carol")
        .json();
    assert_eq!(
        locked[0]["detail"],
        "locked user carol [admin credential erin-laptop]"
    );
    let listed = server
        .admin(&["credentials", "list"])
        .success("credentials list");
    assert!(listed.stdout.contains("initial"), "{}", listed.stdout);
    assert!(!listed.stdout.contains(&token), "{}", listed.stdout);
    server
        .admin(&["credentials", "revoke", "erin-laptop"])
        .success("credentials revoke");
    server
        .admin_with_env_token(Some(&token), &["users", "list"])
        .failure("a revoked credential", "unauthorized");
}

/// `pivtap admin ARGS` against `server` in a terminal (a pseudo-terminal from `script`),
/// typing `answer` and Enter.
fn admin_in_a_terminal(server: &RunningServer, args: &[&str], answer: &str) -> Run {
    use std::io::Write as _;
    let quote = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
    let mut line = vec![
        quote(env!("CARGO_BIN_EXE_pivtap")),
        "admin".to_owned(),
        "--server".to_owned(),
        quote(&server.url),
        "--ca".to_owned(),
        quote(path_str(&server.ca)),
        "--token-file".to_owned(),
        quote(path_str(&server.token_file)),
    ];
    line.extend(args.iter().map(|arg| quote(arg)));
    let mut child = Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    // Typed ahead, the answer waits in the terminal's input queue until it is read.
    let mut stdin = child.stdin.take().expect("script's stdin");
    stdin
        .write_all(format!("{answer}\n").as_bytes())
        .expect("the answer is typed");
    // stdin stays open until the command ends: its end would reach the command as ^D.
    let output = child.wait_with_output().expect("script ends");
    drop(stdin);
    Run::from_output(output)
}

/// Issue 12: revoking a card and deleting a user ask in a terminal; anything but yes
/// changes nothing.
#[test]
fn revoke_and_delete_ask_in_a_terminal() {
    let server = RunningServer::start();
    server.add_user("alice", "Alice Example", "alice@example.com");
    let alice = server.card_copy("alice");
    server.auth(&alice, ALICE_PIN).success("auth alice");
    let cards = server
        .admin(&["cards", "list", "--json"])
        .success("cards list")
        .json();
    let serial = cards[0]["serial"].as_str().expect("a serial").to_owned();
    let declined = admin_in_a_terminal(&server, &["cards", "revoke", &serial], "n");
    let text = declined.all_output();
    assert!(text.contains("[y/N]"), "{text}");
    assert!(
        text.contains("not confirmed; nothing was changed"),
        "{text}"
    );
    let cards = server
        .admin(&["cards", "list", "--json"])
        .success("cards list")
        .json();
    assert_eq!(cards[0]["state"], "active", "{cards}");
    let accepted = admin_in_a_terminal(
        &server,
        &[
            "cards",
            "revoke",
            &serial,
            "--reason",
            "cessationOfOperation",
        ],
        "y",
    );
    let text = accepted.all_output();
    assert!(
        text.contains("is revoked (reason cessationOfOperation)"),
        "{text}"
    );
    let declined = admin_in_a_terminal(&server, &["users", "delete", "alice"], "");
    assert!(
        declined.all_output().contains("not confirmed"),
        "{}",
        declined.all_output()
    );
    let users = server
        .admin(&["users", "list", "--json"])
        .success("users list")
        .json();
    assert_eq!(users.as_array().map(Vec::len), Some(1), "{users}");
}

/// A Python 3 that has PyJWT: Debian's `/usr/bin/python3` first (a version
/// manager's `python3` earlier on PATH may lack Debian's packages), then `python3`.
fn python_with_pyjwt() -> PathBuf {
    let candidates = [PathBuf::from("/usr/bin/python3"), PathBuf::from("python3")];
    candidates
        .iter()
        .find(|python| {
            Command::new(python)
                .args(["-c", "import jwt, cryptography"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "this test needs Python 3 with PyJWT and cryptography, and neither /usr/bin/python3 \
                 nor python3 on PATH has them: install them with `apt-get install {PYJWT_PACKAGES}` \
                 (scripts/setup-debian does)"
            )
        })
}

/// Runs tests/verify_token.py on a JWKS file and a token file.
fn verify_with_pyjwt(jwks: &Path, token: &Path, audience: &str, issuer: &str) -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verify_token.py");
    let mut command = Command::new(python_with_pyjwt());
    command
        .arg(script)
        .args([path_str(jwks), path_str(token), audience, issuer])
        .stdin(Stdio::null());
    run(command)
}

/// The server's JWKS, fetched as a backend would, over TLS trusting `tls.crt`.
fn fetch_jwks(server: &RunningServer) -> Value {
    let client = Client::new(
        &server.url,
        ServerTrust::from_pem_file(&server.ca).expect("tls.crt is a PEM certificate"),
        Duration::from_secs(10),
    )
    .expect("the client builds");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(client.jwks())
        .expect("the server publishes its JWKS")
}

#[test]
fn a_backend_verifies_the_session_token_with_pyjwt() {
    let python = python_with_pyjwt();
    let mut server = RunningServer::start();
    server
        .admin(&[
            "users",
            "add",
            "--id",
            "alice",
            "--name",
            "Alice Example",
            "--mail",
            "alice@example.com",
        ])
        .success("users add");
    let signed_in = server
        .auth(&server.card_copy("alice"), ALICE_PIN)
        .success("auth alice")
        .json();
    let token = signed_in["token"].as_str().expect("a token").to_owned();

    let jwks = server.dir.path().join("jwks.json");
    std::fs::write(&jwks, fetch_jwks(&server).to_string()).unwrap();
    let token_file = server.dir.path().join("token.jwt");
    std::fs::write(&token_file, &token).unwrap();
    let issuer = server.url.clone();
    let verified = verify_with_pyjwt(&jwks, &token_file, "pivtap", &issuer)
        .success(&format!("PyJWT ({}) verifies the token", python.display()))
        .json();
    assert_eq!(verified["sub"], "alice");
    assert_eq!(verified["name"], "Alice Example");
    assert_eq!(verified["email"], "alice@example.com");
    assert_eq!(verified["amr"], serde_json::json!(["hwk", "sc", "pin"]));
    assert_eq!(verified["device"], KIOSK);
    assert_eq!(verified["aud"], "pivtap");
    assert_eq!(verified["iss"], issuer.as_str());

    // The same signature over other claims.
    let [header, claims, signature]: [&str; 3] = token
        .split('.')
        .collect::<Vec<_>>()
        .try_into()
        .expect("three parts");
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    claims["sub"] = Value::from("mallory");
    let tampered = format!(
        "{header}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let tampered_file = server.dir.path().join("tampered.jwt");
    std::fs::write(&tampered_file, tampered).unwrap();
    verify_with_pyjwt(&jwks, &tampered_file, "pivtap", &issuer)
        .failure("PyJWT refuses a tampered token", "InvalidSignatureError");
    // And the genuine token is refused for another audience.
    verify_with_pyjwt(&jwks, &token_file, "another-app", &issuer)
        .failure("PyJWT refuses another audience", "InvalidAudienceError");

    let (status, _) = server.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn devices_are_registered_enrolled_disabled_and_removed_from_the_command_line() {
    let mut server = RunningServer::start();
    server.add_user("alice", "Alice Example", "alice@example.com");
    let card = server.card_copy("alice");

    // Without its credential the kiosk is told what to do.
    let mut bare = common::pivtap_command(&[
        "auth",
        "--server",
        &server.url,
        "--ca",
        path_str(&server.ca),
        "--vcard",
        path_str(&card),
        "--device",
        KIOSK,
    ]);
    bare.env("PIVTAP_PIN", ALICE_PIN);
    run(bare).failure("auth without a device credential", "enroll-device");

    // Registered and enrolled (the helper runs `admin devices add` and `kiosk enroll-device`).
    let credential = server.device_credential(KIOSK);
    for file in ["device.key", "device.crt"] {
        let mode = std::fs::metadata(credential.join(file))
            .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777)
            .expect("the credential file exists");
        assert_eq!(mode, 0o600, "{file}");
    }
    let listed = server
        .admin(&["devices", "list", "--json"])
        .success("devices list")
        .json();
    assert_eq!(listed[0]["id"], KIOSK, "{listed}");
    assert_eq!(listed[0]["enrolled"], true, "{listed}");
    let signed_in = server.auth(&card, ALICE_PIN).success("auth").json();
    let token = signed_in["token"].as_str().expect("a token");
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("a JWT"))
            .expect("base64url"),
    )
    .expect("claims");
    assert_eq!(claims["device"], KIOSK);

    server
        .admin(&["devices", "disable", KIOSK])
        .success("devices disable");
    server
        .auth(&card, ALICE_PIN)
        .failure("auth on a disabled device", "disabled");
    server
        .admin(&["devices", "enable", KIOSK])
        .success("devices enable");
    server.auth(&card, ALICE_PIN).success("auth once enabled");
    server
        .admin(&["devices", "remove", KIOSK])
        .success("devices remove");
    server
        .auth(&card, ALICE_PIN)
        .failure("auth on a removed device", "device_unknown");
    let (status, _) = server.stop();
    assert!(status.success());
}

#[test]
fn sessions_and_clients_are_administered_from_the_command_line() {
    let mut server = RunningServer::start();
    server.add_user("alice", "Alice Example", "alice@example.com");
    let card = server.card_copy("alice");
    server.auth(&card, ALICE_PIN).success("auth");

    let listed = server
        .admin(&["sessions", "list", "--json"])
        .success("sessions list")
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["user_id"], "alice");
    assert_eq!(listed[0]["device"], KIOSK);
    let id = listed[0]["id"].as_str().expect("a session id").to_owned();
    let text = server
        .admin(&["sessions", "list", "--user", "alice"])
        .success("sessions list as text");
    assert!(
        text.stdout.contains(&id) && text.stdout.contains("active until"),
        "{}",
        text.stdout
    );
    let shown = server
        .admin(&["sessions", "show", &id, "--json"])
        .success("sessions show")
        .json();
    assert_eq!(shown["id"], id.as_str());
    let ended = server
        .admin(&["sessions", "end", &id])
        .success("sessions end");
    assert!(ended.stdout.contains("(admin)"), "{}", ended.stdout);
    let active = server
        .admin(&["sessions", "list", "--json"])
        .success("sessions list after the end")
        .json();
    assert_eq!(active, serde_json::json!([]));
    let all = server
        .admin(&["sessions", "list", "--all", "--json"])
        .success("sessions list --all")
        .json();
    assert_eq!(all[0]["ended_reason"], "admin", "{all}");
    server
        .admin(&["sessions", "end", "no-such-session"])
        .failure("ending an unknown session", "no session");

    // A confidential client: the secret alone on stdout, once.
    let added = server
        .admin(&[
            "clients",
            "add",
            "--id",
            "wiki",
            "--redirect-uri",
            "https://wiki.example.com/cb",
        ])
        .success("clients add");
    let secret = added.stdout.trim().to_owned();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(&secret).map(|bytes| bytes.len()),
        Ok(32),
        "{}",
        added.stdout
    );
    let public = server
        .admin(&[
            "clients",
            "add",
            "--id",
            "scanner",
            "--public",
            "--redirect-uri",
            "http://127.0.0.1:8400/cb",
            "--backchannel-logout-uri",
            "http://127.0.0.1:8400/logout",
            "--json",
        ])
        .success("clients add --public")
        .json();
    assert_eq!(public["secret"], Value::Null);
    assert_eq!(public["client"]["public"], true);
    server
        .admin(&[
            "clients",
            "add",
            "--id",
            "plain",
            "--redirect-uri",
            "http://wiki.example.com/cb",
        ])
        .failure("a plain-http redirect URI", "loopback");
    let clients = server
        .admin(&["clients", "list", "--json"])
        .success("clients list");
    assert!(!clients.stdout.contains(&secret));
    assert_eq!(clients.json().as_array().map(Vec::len), Some(2));
    let shown = server
        .admin(&["clients", "show", "scanner", "--json"])
        .success("clients show")
        .json();
    assert_eq!(
        shown["backchannel_logout_uri"],
        "http://127.0.0.1:8400/logout"
    );
    server
        .admin(&["clients", "remove", "scanner"])
        .success("clients remove");
    server
        .admin(&["clients", "show", "scanner"])
        .failure("a removed client", "no client");
    let (status, _) = server.stop();
    assert!(status.success());
}
