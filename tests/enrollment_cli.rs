//! End-to-end tests of the card lifecycle through the `pivtap` binary: a blank virtual card enrolled with an admin's code, signing in, renewal (the old certificate refused afterwards), PIN and PUK changes under the PIN policy, unblocking with the PUK, and reset.
//!
//! Cards are `--vcard` image files (no pcscd); each server test runs its
//! own `pivtap server run` on loopback in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

mod common;
use common::{KIOSK, Run, RunningServer, path_str, pivtap_command, run};

/// The PIN of a card as it leaves the factory.
const FACTORY_PIN: &str = "123456";
/// The PUK of a card as it leaves the factory.
const FACTORY_PUK: &str = "12345678";
/// A PIN the default policy accepts.
const GOOD_PIN: &str = "240913";

/// The card commands these tests run against a [`RunningServer`].
trait CardLifecycle {
    /// A `pivtap card SUBCOMMAND --vcard CARD --ca tls.crt [--server URL]` command.
    fn card_command(&self, subcommand: &str, card: &Path, with_server: bool) -> Command;
    /// `PIVTAP_PIN=PIN pivtap card enroll --code CODE --json`.
    fn enroll(&self, card: &Path, code: &str, pin: &str, with_server: bool) -> Run;
    /// `PIVTAP_PIN=PIN pivtap card renew --device kiosk-07 --json`.
    fn renew(&self, card: &Path, pin: &str) -> Run;
}

impl CardLifecycle for RunningServer {
    fn card_command(&self, subcommand: &str, card: &Path, with_server: bool) -> Command {
        let mut command = pivtap_command(&[
            "card",
            subcommand,
            "--vcard",
            path_str(card),
            "--ca",
            path_str(&self.ca),
        ]);
        if with_server {
            command.args(["--server", &self.url]);
        }
        command
    }

    fn enroll(&self, card: &Path, code: &str, pin: &str, with_server: bool) -> Run {
        let mut command = self.card_command("enroll", card, with_server);
        command
            .args(["--code", code, "--json"])
            .env("PIVTAP_PIN", pin);
        run(command)
    }

    fn renew(&self, card: &Path, pin: &str) -> Run {
        let mut command = self.card_command("renew", card, true);
        command
            .args(["--device", KIOSK, "--json"])
            .env("PIVTAP_PIN", pin);
        run(command)
    }
}

/// `pivtap vcard new FILE --blank`: a card as new cards ship.
fn blank_card(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    run(pivtap_command(&[
        "vcard",
        "new",
        path_str(&path),
        "--blank",
    ]))
    .success("vcard new --blank");
    path
}

/// `pivtap card info --vcard CARD --json`.
fn card_info(card: &Path) -> Value {
    run(pivtap_command(&[
        "card",
        "info",
        "--vcard",
        path_str(card),
        "--json",
    ]))
    .success("card info")
    .json()
}

/// The certificate serial in slot 9a, if any.
fn slot_9a_serial(card: &Path) -> Option<String> {
    card_info(card)["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .find(|slot| slot["slot"] == "9a")
        .and_then(|slot| slot["serial"].as_str())
        .map(str::to_owned)
}

/// The PIN's tries left, as `card info` shows them.
fn pin_tries(card: &Path) -> Value {
    card_info(card)["pin"]["retries_left"].clone()
}

/// A `pivtap card SUBCOMMAND --vcard CARD` run with the given environment
/// and APDU tracing on.
fn card_run(subcommand: &str, card: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = pivtap_command(&["card", subcommand, "--vcard", path_str(card)]);
    command.args(args).env("RUST_LOG", "pivtap=trace");
    for (name, value) in env {
        command.env(name, value);
    }
    run(command)
}

/// Serial numbers as `card info` and the server print them, compared without separators.
fn same_serial(a: &str, b: &str) -> bool {
    let plain = |s: &str| {
        s.chars()
            .filter(char::is_ascii_hexdigit)
            .collect::<String>()
            .trim_start_matches('0')
            .to_ascii_lowercase()
    };
    plain(a) == plain(b)
}

#[test]
fn a_blank_card_is_enrolled_signs_in_is_renewed_and_reset() {
    let server = RunningServer::start();
    server.add_user("alice", "Alice Example", "alice@example.com");
    let cards = server.dir.path();
    let card = blank_card(cards, "alice-card");
    assert!(
        slot_9a_serial(&card).is_none(),
        "a blank card has no certificate"
    );

    let (code, _) = server.enrollment_code("alice");
    // A wrong PIN stops enrollment before the key (exit 3) and does not use the code up.
    let wrong = server.enroll(&card, &code, "999999", true);
    wrong.expect_code(3, "enroll with a wrong PIN");
    assert!(wrong.stderr.contains("2 tries left"), "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("Generating"), "{}", wrong.stderr);
    let enrolled = server
        .enroll(&card, &code, FACTORY_PIN, true)
        .success("card enroll");
    assert!(
        !enrolled.all_output().contains(&code),
        "the code is not echoed"
    );
    assert!(
        enrolled.stderr.contains("Generating the key on the card"),
        "{}",
        enrolled.stderr
    );
    let enrolled = enrolled.json();
    assert_eq!(enrolled["user"]["id"], "alice", "{enrolled}");
    assert_eq!(enrolled["chuid_written"], true, "{enrolled}");
    assert!(
        enrolled["pin_policy_problem"]
            .as_str()
            .is_some_and(|rule| rule.contains("consecutive")),
        "the factory PIN breaks the policy: {enrolled}"
    );
    let first_serial = enrolled["serial"].as_str().expect("a serial").to_owned();
    let info = card_info(&card);
    assert_eq!(
        info["chuid"]["guid"]
            .as_str()
            .map(|g| g.replace('-', ""))
            .as_deref(),
        enrolled["chuid_guid"].as_str(),
        "{info}"
    );
    let on_card = slot_9a_serial(&card).expect("a certificate in 9a");
    assert!(
        same_serial(&on_card, &first_serial),
        "{on_card} vs {first_serial}"
    );

    let signed_in = server
        .auth(&card, FACTORY_PIN)
        .success("auth after enroll")
        .json();
    assert_eq!(signed_in["user"]["id"], "alice");

    // A code is good once: a second card cannot use it, and keeps its (absent) key.
    let other = blank_card(cards, "other-card");
    let reused = server
        .enroll(&other, &code, FACTORY_PIN, true)
        .failure("reused code", "enrollment_code_used");
    assert!(
        !reused.stderr.contains("slot 9a now holds"),
        "refused before any key was generated: {}",
        reused.stderr
    );
    assert!(slot_9a_serial(&other).is_none());

    server
        .enroll(&other, "NOPE-NOPE-NOPE-NOPE", FACTORY_PIN, true)
        .failure("unknown code", "enrollment_code_unknown");
    assert_eq!(pin_tries(&other), 3, "the card was not touched");

    // The link form carries the server.
    let (_, link) = server.enrollment_code("alice");
    let by_link = server
        .enroll(&other, &link, FACTORY_PIN, false)
        .success("enroll with the link")
        .json();
    assert_eq!(by_link["user"]["id"], "alice");

    // Renewal: the card keeps working with a new certificate; the old one is revoked.
    let before_renewal = cards.join("alice-card-before-renewal.toml");
    std::fs::copy(&card, &before_renewal).expect("copy the card image");
    let renewed = server
        .renew(&card, FACTORY_PIN)
        .success("card renew")
        .json();
    let second_serial = renewed["serial"].as_str().expect("a serial").to_owned();
    assert_ne!(second_serial, first_serial);
    assert_eq!(renewed["user"]["id"], "alice");
    let on_card = slot_9a_serial(&card).expect("a certificate in 9a");
    assert!(same_serial(&on_card, &second_serial));
    server
        .auth(&card, FACTORY_PIN)
        .success("auth after renewal");
    server
        .auth(&before_renewal, FACTORY_PIN)
        .failure("the old certificate", "certificate_revoked");
    // Renewing the old copy is refused before its key is touched (the CRL lists it).
    let refused = server
        .renew(&before_renewal, FACTORY_PIN)
        .failure("renewing with the old certificate", "is revoked");
    assert!(
        refused.stderr.contains("nothing on the card was changed"),
        "{}",
        refused.stderr
    );
    let still = slot_9a_serial(&before_renewal).expect("the old certificate is still there");
    assert!(same_serial(&still, &first_serial));

    // The server's PIN policy is enforced before the card is touched.
    let mut change = server.card_command("change-pin", &card, true);
    change
        .env("PIVTAP_PIN", FACTORY_PIN)
        .env("PIVTAP_NEW_PIN", "111111");
    run(change).failure("server policy", "one digit repeated");

    // Reset: back to a blank card that no longer signs in.
    card_run("reset", &card, &[], &["--yes"]).success("card reset");
    assert!(slot_9a_serial(&card).is_none());
    assert!(card_info(&card)["chuid"].is_null());
    server
        .auth(&card, FACTORY_PIN)
        .failure("auth after reset", "certificate");
}

#[test]
fn pin_changes_follow_the_policy_and_a_blocked_pin_is_unblocked_with_the_puk() {
    let dir = TempDir::new().unwrap();
    let card = blank_card(dir.path(), "card");

    for (new, rule) in [
        ("123456", "consecutive digits"),
        ("111111", "one digit repeated"),
        ("12345", "at least 6"),
        ("123456789", "at most 8"),
    ] {
        let refused = card_run(
            "change-pin",
            &card,
            &[("PIVTAP_PIN", FACTORY_PIN), ("PIVTAP_NEW_PIN", new)],
            &[],
        )
        .failure("policy refusal", rule);
        assert!(
            refused.stderr.contains("the card was not touched"),
            "{}",
            refused.stderr
        );
        assert!(
            !refused.stderr.contains(">> "),
            "no APDU was sent:\n{}",
            refused.stderr
        );
    }
    assert_eq!(pin_tries(&card), 3, "no PIN try was spent");

    // A wrong current PIN: exit 3 and the tries left.
    let wrong = card_run(
        "change-pin",
        &card,
        &[("PIVTAP_PIN", "999999"), ("PIVTAP_NEW_PIN", GOOD_PIN)],
        &[],
    );
    wrong.expect_code(3, "wrong current PIN");
    assert!(wrong.stderr.contains("2 tries left"), "{}", wrong.stderr);

    // Secrets on standard input, one a line.
    let mut command = pivtap_command(&["card", "change-pin", "--vcard", path_str(&card)]);
    command
        .env("RUST_LOG", "pivtap=trace")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("pivtap runs");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{FACTORY_PIN}\n{GOOD_PIN}").expect("write the PINs");
    }
    let changed = Run::from_output(child.wait_with_output().expect("pivtap ends"))
        .success("change-pin from stdin");
    assert!(changed.stdout.contains("PIN changed"), "{}", changed.stdout);
    assert!(
        changed.stderr.contains(">> 0024"),
        "CHANGE REFERENCE DATA sent"
    );
    for secret in [FACTORY_PIN, GOOD_PIN] {
        assert!(!changed.all_output().contains(secret), "a PIN leaked");
    }
    let mut verify = pivtap_command(&["card", "verify-pin", "--vcard", path_str(&card)]);
    verify.env("PIVTAP_PIN", GOOD_PIN);
    run(verify).success("the new PIN works");

    // Block the PIN, then unblock it with the PUK.
    for _ in 0..3 {
        let mut wrong = pivtap_command(&["card", "verify-pin", "--vcard", path_str(&card)]);
        wrong.env("PIVTAP_PIN", "999999");
        run(wrong);
    }
    assert_eq!(pin_tries(&card), 0, "blocked");
    card_run(
        "unblock-pin",
        &card,
        &[("PIVTAP_PUK", "87654321"), ("PIVTAP_NEW_PIN", GOOD_PIN)],
        &[],
    )
    .failure("wrong PUK", "wrong PUK: 2 tries left");
    card_run(
        "unblock-pin",
        &card,
        &[("PIVTAP_PUK", FACTORY_PUK), ("PIVTAP_NEW_PIN", "000000")],
        &[],
    )
    .failure("unblock to a repeated PIN", "one digit repeated");
    let unblocked = card_run(
        "unblock-pin",
        &card,
        &[("PIVTAP_PUK", FACTORY_PUK), ("PIVTAP_NEW_PIN", "86420135")],
        &["--json"],
    )
    .success("unblock-pin");
    assert_eq!(unblocked.json()["changed"], "pin");
    let mut verify = pivtap_command(&["card", "verify-pin", "--vcard", path_str(&card)]);
    verify.env("PIVTAP_PIN", "86420135");
    run(verify).success("the PIN set by unblock-pin works");

    // The PUK itself.
    card_run(
        "change-puk",
        &card,
        &[("PIVTAP_PUK", FACTORY_PUK), ("PIVTAP_NEW_PUK", "12a45678")],
        &[],
    )
    .failure("a PUK with a letter", "PUK must be digits only");
    card_run(
        "change-puk",
        &card,
        &[("PIVTAP_PUK", FACTORY_PUK), ("PIVTAP_NEW_PUK", "97531864")],
        &[],
    )
    .success("change-puk");
    card_run(
        "change-puk",
        &card,
        &[("PIVTAP_PUK", FACTORY_PUK), ("PIVTAP_NEW_PUK", "11223344")],
        &[],
    )
    .failure("the old PUK", "wrong PUK");
}

#[test]
fn reset_needs_confirmation_and_restores_the_factory_defaults() {
    let dir = TempDir::new().unwrap();
    let card = blank_card(dir.path(), "card");
    card_run(
        "change-pin",
        &card,
        &[("PIVTAP_PIN", FACTORY_PIN), ("PIVTAP_NEW_PIN", GOOD_PIN)],
        &[],
    )
    .success("change-pin");

    let refused = card_run("reset", &card, &[], &[]).failure("reset without --yes", "--yes");
    assert!(!refused.stderr.contains(">> "), "nothing was sent");
    let mut verify = pivtap_command(&["card", "verify-pin", "--vcard", path_str(&card)]);
    verify.env("PIVTAP_PIN", GOOD_PIN);
    run(verify).success("the card is untouched");

    let reset = card_run("reset", &card, &[], &["--yes", "--json"]).success("reset --yes");
    let outcome = reset.json();
    assert_eq!(outcome["reset"], true);
    assert_eq!(outcome["pin"], FACTORY_PIN);
    assert_eq!(outcome["puk"], FACTORY_PUK);
    assert!(
        reset.stderr.contains(">> 00FB"),
        "RESET was sent:\n{}",
        reset.stderr
    );
    let mut verify = pivtap_command(&["card", "verify-pin", "--vcard", path_str(&card)]);
    verify.env("PIVTAP_PIN", FACTORY_PIN);
    run(verify).success("the factory PIN works again");
    card_run(
        "change-puk",
        &card,
        &[("PIVTAP_PUK", FACTORY_PUK), ("PIVTAP_NEW_PUK", "97531864")],
        &[],
    )
    .success("the factory PUK works again");
}

#[test]
fn the_key_algorithm_is_the_servers_choice_and_renewal_can_change_it() {
    let server = RunningServer::start_with(|config| {
        let edited = config.replace(
            r#"key_algorithms = ["p256", "rsa2048"]"#,
            r#"key_algorithms = ["rsa2048", "p384"]"#,
        );
        assert_ne!(edited, config, "init writes key_algorithms as expected");
        edited
    });
    server.add_user("bob", "Bob Example", "bob@example.com");
    let card = blank_card(server.dir.path(), "bob-card");
    let (code, _) = server.enrollment_code("bob");
    let enrolled = server
        .enroll(&card, &code, FACTORY_PIN, true)
        .success("enroll with RSA")
        .json();
    assert_eq!(enrolled["algorithm"], "rsa2048", "{enrolled}");
    let slot = |card: &Path| {
        card_info(card)["slots"]
            .as_array()
            .and_then(|slots| slots.iter().find(|s| s["slot"] == "9a").cloned())
            .expect("a certificate in 9a")
    };
    assert_eq!(slot(&card)["algorithm"], "RSA-2048");
    server.auth(&card, FACTORY_PIN).success("RSA sign-in");

    let mut renew = server.card_command("renew", &card, true);
    renew
        .args(["--device", KIOSK, "--algorithm", "p384", "--json"])
        .env("PIVTAP_PIN", FACTORY_PIN);
    let renewed = run(renew).success("renew to P-384").json();
    assert_eq!(renewed["algorithm"], "p384", "{renewed}");
    assert_eq!(slot(&card)["algorithm"], "ECC P-384");
    server.auth(&card, FACTORY_PIN).success("P-384 sign-in");

    // A key the server does not allow is refused; the message says what the card is left with.
    let mut renew = server.card_command("renew", &card, true);
    renew
        .args(["--device", KIOSK, "--algorithm", "p256"])
        .env("PIVTAP_PIN", FACTORY_PIN);
    let refused = run(renew).failure("renew to a key not allowed", "key_not_allowed");
    assert!(
        refused.stderr.contains("slot 9a now holds a new key"),
        "{}",
        refused.stderr
    );
}

/// The factory-default management key (3DES), in hex.
const DEFAULT_MANAGEMENT_KEY: &str = "010203040506070801020304050607080102030405060708";

#[test]
fn a_virtual_card_renews_and_re_enrolls_with_the_management_key_its_image_keeps() {
    let server = RunningServer::start();
    server.add_user("dave", "Dave Example", "dave@example.com");
    let card = server.dir.path().join("dave-card.toml");
    let (code, _) = server.enrollment_code("dave");
    let mut made = pivtap_command(&[
        "vcard",
        "enroll",
        "--server",
        &server.url,
        "--ca",
        path_str(&server.ca),
        "--code",
        &code,
        "--out",
        path_str(&card),
        "--json",
    ]);
    made.env("PIVTAP_NEW_PIN", GOOD_PIN);
    let made = run(made).success("vcard enroll").json();
    let first_serial = made["serial"].as_str().expect("a serial").to_owned();
    // `vcard enroll` keeps a random AES-192 management key in the image, not the default.
    let image = std::fs::read_to_string(&card).expect("the card image");
    assert!(image.contains(r#"algorithm = "aes192""#), "{image}");
    assert!(!image.contains(DEFAULT_MANAGEMENT_KEY), "{image}");
    // Its private key is sealed under the PIN: a wrong PIN opens nothing and spends a try.
    assert!(
        image.contains("sealed_private_key") && !image.contains("PRIVATE KEY-----"),
        "{image}"
    );
    let wrong = server.auth(&card, "999999");
    wrong.expect_code(3, "auth with a wrong PIN");
    assert!(wrong.stderr.contains("2 tries left"), "{}", wrong.stderr);
    assert!(!wrong.all_output().contains(GOOD_PIN));

    // The default key is refused by this card: renewal stops before a new key.
    let mut renew = server.card_command("renew", &card, true);
    renew
        .args([
            "--device",
            KIOSK,
            "--management-key",
            DEFAULT_MANAGEMENT_KEY,
        ])
        .env("PIVTAP_PIN", GOOD_PIN);
    run(renew).failure(
        "renew with the default management key",
        "did not accept the management key",
    );
    let still = slot_9a_serial(&card).expect("a certificate in 9a");
    assert!(
        same_serial(&still, &first_serial),
        "{still} vs {first_serial}"
    );

    // Without --management-key, the image's own key is used.
    let renewed = server.renew(&card, GOOD_PIN).success("renew").json();
    let second_serial = renewed["serial"].as_str().expect("a serial").to_owned();
    assert_ne!(second_serial, first_serial);
    let on_card = slot_9a_serial(&card).expect("a certificate in 9a");
    assert!(same_serial(&on_card, &second_serial));
    server.auth(&card, GOOD_PIN).success("auth after renewal");

    // And so does enrolling it again with a new code.
    let (code, _) = server.enrollment_code("dave");
    let again = server
        .enroll(&card, &code, GOOD_PIN, true)
        .success("enroll again")
        .json();
    assert_eq!(again["user"]["id"], "dave", "{again}");
    assert_eq!(again["chuid_written"], false, "the CHUID stays: {again}");
    server
        .auth(&card, GOOD_PIN)
        .success("auth after enrolling again");
}

/// The serials the server's CRL (`GET /v1/crl`) lists, plain hex.
fn crl_serials(server: &RunningServer) -> Vec<String> {
    let client = pivtap_client::client::Client::new(
        &server.url,
        pivtap_client::client::ServerTrust::from_pem_file(&server.ca)
            .expect("tls.crt is a PEM certificate"),
        std::time::Duration::from_secs(10),
    )
    .expect("the client builds");
    let crl = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(client.crl())
        .expect("the server serves its CRL");
    let (_, parsed) = x509_parser::parse_x509_crl(&crl).expect("a DER CRL");
    parsed
        .iter_revoked_certificates()
        .map(|entry| hex::encode(entry.raw_serial()))
        .collect()
}

#[test]
fn code_lifetimes_and_card_deletion_from_the_admin_command_line() {
    let server = RunningServer::start();
    server.add_user("frank", "Frank Example", "frank@example.com");

    // A code lives at least a minute, and as long as asked.
    server
        .admin(&["enroll", "frank", "--valid-for", "30s"])
        .failure("a 30-second code", "between 60");
    server
        .admin(&["enroll", "frank", "--valid-for", "soon"])
        .failure("not a duration", "not a duration");
    let asked_at = time::OffsetDateTime::now_utc();
    let made = server
        .admin(&["enroll", "frank", "--valid-for", "2h", "--json"])
        .success("a two-hour code")
        .json();
    let expires_at = time::OffsetDateTime::parse(
        made["expires_at"].as_str().expect("expires_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("expires_at is RFC 3339");
    let lifetime = expires_at - asked_at;
    assert!(
        (time::Duration::minutes(119)..=time::Duration::minutes(121)).contains(&lifetime),
        "{made}"
    );
    let text = server.admin(&["enroll", "frank"]).success("a code as text");
    assert!(
        text.stdout.contains("pivtap://enroll?server=") && text.stdout.contains('▀'),
        "the link and its QR code: {}",
        text.stdout
    );

    let card = blank_card(server.dir.path(), "frank-card");
    let code = made["code"].as_str().expect("a code");
    let enrolled = server
        .enroll(&card, code, FACTORY_PIN, true)
        .success("enroll")
        .json();
    let serial = enrolled["serial"].as_str().expect("a serial").to_owned();
    server.auth(&card, FACTORY_PIN).success("auth");

    // A card is named by its issuer and serial: `serial@issuer-id`, which the admin
    // commands take as well as the bare serial (unambiguous here).
    let listed = server
        .admin(&["cards", "list", "--json"])
        .success("cards list")
        .json();
    let id = listed[0]["id"].as_str().expect("a card id").to_owned();
    assert_eq!(id.split_once('@').map(|(s, _)| s), Some(serial.as_str()));
    assert_eq!(
        id.split_once('@').map(|(_, issuer)| issuer),
        listed[0]["issuer_id"].as_str()
    );
    let locked = server
        .admin(&["cards", "lock", &id, "--json"])
        .success("cards lock by id")
        .json();
    assert_eq!(locked["state"], "locked");
    server
        .admin(&["cards", "lock", &format!("{serial}@0000000000000000")])
        .failure("another issuer's card", "not_found");
    server
        .admin(&["cards", "unlock", &serial])
        .success("cards unlock by serial");

    // Only a revoked card's record can be deleted; its serial stays revoked.
    server
        .admin(&["cards", "delete", &serial])
        .failure("deleting an active card", "conflict");
    server
        .admin(&["cards", "revoke", &serial, "--yes"])
        .success("cards revoke");
    let deleted = server
        .admin(&["cards", "delete", &serial, "--json"])
        .success("cards delete");
    assert_eq!(deleted.json()["deleted"], serial.as_str());
    let cards = server
        .admin(&["cards", "list", "--json"])
        .success("cards list")
        .json();
    assert_eq!(cards.as_array().map(Vec::len), Some(0), "{cards}");
    server
        .admin(&["cards", "delete", &serial])
        .failure("deleting it again", "not_found");
    server
        .auth(&card, FACTORY_PIN)
        .failure("a deleted card", "certificate_revoked");
    assert!(
        crl_serials(&server)
            .iter()
            .any(|listed| same_serial(listed, &serial)),
        "the CRL still lists {serial}"
    );
}

/// Runs `pivtap ARGS` on a pseudo-terminal (util-linux `script`) with
/// `input` typed into it. Fails the test, saying why, when `script` is
/// missing or no pseudo-terminal can be had.
fn on_a_terminal(args: &[&str], input: &str) -> Run {
    use std::io::Write as _;
    let line = std::iter::once(env!("CARGO_BIN_EXE_pivtap"))
        .chain(args.iter().copied())
        .map(|arg| format!("'{}'", arg.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("PIVTAP_PIN")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "this test needs util-linux `script` (Debian package bsdutils): cannot run it: {error}"
            )
        });
    let mut stdin = child.stdin.take().expect("script's stdin");
    stdin
        .write_all(input.as_bytes())
        .expect("typing into script");
    let output = child.wait_with_output().expect("script ends");
    drop(stdin);
    let run = Run::from_output(output);
    assert!(
        !run.all_output().contains("pseudo-terminal"),
        "this test needs a pseudo-terminal (/dev/pts): {}",
        run.all_output()
    );
    run
}

#[test]
fn reset_on_a_terminal_asks_for_the_serial_or_the_word_reset() {
    let dir = TempDir::new().unwrap();
    let card = blank_card(dir.path(), "card");
    card_run(
        "change-pin",
        &card,
        &[("PIVTAP_PIN", FACTORY_PIN), ("PIVTAP_NEW_PIN", GOOD_PIN)],
        &[],
    )
    .success("change-pin");
    let pin_works = |pin: &str| {
        let mut verify = pivtap_command(&["card", "verify-pin", "--vcard", path_str(&card)]);
        verify.env("PIVTAP_PIN", pin);
        run(verify).code == 0
    };
    let args = ["card", "reset", "--vcard", path_str(&card)];
    let refused = on_a_terminal(&args, "nope\n");
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    // `script` puts the terminal's output, standard error included, on its standard output.
    assert!(
        refused.stdout.contains("Type the serial number")
            && refused.stdout.contains("not confirmed"),
        "{}",
        refused.stdout
    );
    assert!(pin_works(GOOD_PIN), "not reset");
    let reset = on_a_terminal(&args, "reset\n");
    assert_eq!(reset.code, 0, "{}", reset.stdout);
    assert!(reset.stdout.contains("factory state"), "{}", reset.stdout);
    assert!(pin_works(FACTORY_PIN), "reset to the factory PIN");
}
