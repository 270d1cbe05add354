//! End-to-end tests of the `pivtap` binary: virtual card creation, card inspection, PIN verification and its exit codes, and secrets kept out of logs.
//!
//! Every test works on copies in a temporary directory: fixture card images
//! record PIN tries, so they are never used in place.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tempfile::TempDir;

mod common;
use common::{Run, fixture, path_str, pivtap_command, run};

/// The test CA's subject CN, as issued into every card certificate.
const TEST_CA_CN: &str = "pivtap Test CA";
/// The PIN of the fixture card `alice.toml` and the default PIN of `vcard new`.
const ALICE_PIN: &str = "123456";
/// The well-known default PIV management key, used by `vcard new` by default.
const DEFAULT_MANAGEMENT_KEY_HEX: &str = "010203040506070801020304050607080102030405060708";

/// Runs `pivtap` with `args`.
fn pivtap(args: &[&str]) -> Run {
    run(pivtap_command(args))
}

/// Runs `pivtap` with `args` and `PIVTAP_PIN` set to `pin`.
fn pivtap_with_pin(pin: &str, args: &[&str]) -> Run {
    let mut command = pivtap_command(args);
    command.env("PIVTAP_PIN", pin);
    run(command)
}

/// Runs `pivtap` with `args`, the PIN `pin` and the log filter `rust_log`.
fn pivtap_traced(rust_log: &str, pin: Option<&str>, args: &[&str]) -> Run {
    let mut command = pivtap_command(args);
    command.env("RUST_LOG", rust_log);
    if let Some(pin) = pin {
        command.env("PIVTAP_PIN", pin);
    }
    run(command)
}

/// Copies the fixture card `cards/NAME.toml` into `dir` and returns the copy.
fn copy_fixture_card(dir: &TempDir, name: &str) -> PathBuf {
    let copy = dir.path().join(format!("{name}.toml"));
    std::fs::copy(fixture(&format!("cards/{name}.toml")), &copy).expect("copy the fixture card");
    copy
}

/// Creates a card image with `vcard new`, issued by the test CA, and returns its path.
fn new_card(dir: &TempDir, file_name: &str, subject: &str, extra_args: &[&str]) -> PathBuf {
    let file = dir.path().join(file_name);
    let ca_cert = fixture("ca/test-ca.pem");
    let ca_key = fixture("ca/test-ca.key");
    let mut args = vec![
        "vcard",
        "new",
        path_str(&file),
        "--subject",
        subject,
        "--ca-cert",
        path_str(&ca_cert),
        "--ca-key",
        path_str(&ca_key),
    ];
    args.extend_from_slice(extra_args);
    pivtap(&args).expect_code(0, "vcard new");
    file
}

/// `retries_left` of the `[SECTION]` table (`pin` or `puk`) of a card image on disk.
fn image_retries_left(image: &Path, section: &str) -> u8 {
    let text = std::fs::read_to_string(image).expect("read the card image");
    let header = format!("[{section}]");
    let mut lines = text.lines().map(str::trim);
    lines
        .by_ref()
        .find(|line| *line == header)
        .unwrap_or_else(|| panic!("no {header} table in {}", image.display()));
    lines
        .take_while(|line| !line.starts_with('['))
        .find_map(|line| {
            let (key, value) = line.split_once('=')?;
            if key.trim() == "retries_left" {
                value.trim().parse().ok()
            } else {
                None
            }
        })
        .unwrap_or_else(|| panic!("no retries_left under {header} in {}", image.display()))
}

/// `card info --json` of a card image.
fn card_info(image: &Path) -> Value {
    let run = pivtap(&["card", "info", "--vcard", path_str(image), "--json"]);
    run.expect_code(0, "card info --json");
    serde_json::from_str(&run.stdout).expect("card info --json prints JSON")
}

/// Runs `card verify-pin` on `image` with `pin`.
fn verify_pin(image: &Path, pin: &str) -> Run {
    pivtap_with_pin(pin, &["card", "verify-pin", "--vcard", path_str(image)])
}

fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|group| group.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|group| group.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Runs `openssl ARGS`, failing the test (not skipping it) when openssl is missing.
fn openssl(args: &[&str]) -> Run {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("these tests need the openssl command-line tool ({error}); install openssl")
        });
    Run::from_output(output)
}

/// The upper-case hex of the ASCII bytes of `text`, as an APDU trace would show them.
fn ascii_hex(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02X}")).collect()
}

/// Panics if `secret`, or its ASCII hex in either case, appears in `output`.
fn assert_secret_absent(output: &str, secret: &str, what: &str) {
    let hex = ascii_hex(secret);
    for needle in [secret.to_owned(), hex.clone(), hex.to_lowercase()] {
        assert!(
            !output.contains(&needle),
            "{what}: the secret {secret:?} leaked as {needle:?} in:\n{output}"
        );
    }
}

#[test]
fn vcard_new_creates_a_card_that_info_and_openssl_accept_for_each_algorithm() {
    let dir = TempDir::new().unwrap();
    for (alg, algorithm_name) in [
        ("rsa2048", "RSA-2048"),
        ("p256", "ECC P-256"),
        ("p384", "ECC P-384"),
    ] {
        let common_name = format!("Test Holder {alg}");
        let subject = format!("CN={common_name},OU=Field,O=Example Corp");
        let image = new_card(&dir, &format!("{alg}.toml"), &subject, &["--alg", alg]);

        let info = card_info(&image);
        let slots = info["slots"].as_array().expect("slots is an array");
        let slot = slots
            .iter()
            .find(|slot| slot["slot"] == "9a")
            .unwrap_or_else(|| panic!("{alg}: no slot 9a in {info:#}"));
        assert_eq!(slot["algorithm"], algorithm_name, "{alg}: {slot:#}");
        let subject_shown = slot["subject"].as_str().expect("subject is text");
        assert!(
            subject_shown.contains(&format!("CN={common_name}")),
            "{alg}: subject {subject_shown:?} lacks CN={common_name}"
        );
        let issuer = slot["issuer"].as_str().expect("issuer is text");
        assert!(issuer.contains(TEST_CA_CN), "{alg}: issuer {issuer:?}");
        let guid = info["chuid"]["guid"].as_str().expect("CHUID GUID is text");
        assert!(
            is_guid(guid),
            "{alg}: CHUID GUID {guid:?} is not 8-4-4-4-12 hex"
        );
        assert_eq!(info["pin"]["retries_left"], 3, "{alg}: {info:#}");
        assert_eq!(info["puk"]["retries_left"], 3, "{alg}: {info:#}");

        let pem = dir.path().join(format!("{alg}.pem"));
        pivtap(&[
            "card",
            "export-cert",
            "--vcard",
            path_str(&image),
            "--slot",
            "9a",
            "--out",
            path_str(&pem),
        ])
        .expect_code(0, "card export-cert");
        let pem_text = std::fs::read_to_string(&pem).expect("read the exported PEM");
        assert!(
            pem_text.starts_with("-----BEGIN CERTIFICATE-----\n"),
            "{pem_text}"
        );
        openssl(&[
            "verify",
            "-CAfile",
            path_str(&fixture("ca/test-ca.pem")),
            path_str(&pem),
        ])
        .expect_code(0, "openssl verify of the exported certificate");

        let der = dir.path().join(format!("{alg}.der"));
        pivtap(&[
            "card",
            "export-cert",
            "--vcard",
            path_str(&image),
            "--slot",
            "9a",
            "--out",
            path_str(&der),
            "--der",
        ])
        .expect_code(0, "card export-cert --der");
        let der_bytes = std::fs::read(&der).expect("read the exported DER");
        assert_eq!(
            der_bytes.first(),
            Some(&0x30),
            "{alg}: DER must open with a SEQUENCE"
        );
        let der_from_pem = openssl(&[
            "x509",
            "-in",
            path_str(&pem),
            "-outform",
            "DER",
            "-out",
            path_str(&dir.path().join(format!("{alg}.openssl.der"))),
        ]);
        der_from_pem.expect_code(0, "openssl x509 PEM to DER");
        let openssl_der = std::fs::read(dir.path().join(format!("{alg}.openssl.der"))).unwrap();
        assert_eq!(
            der_bytes, openssl_der,
            "{alg}: --der and PEM exports differ"
        );
    }
}

#[test]
fn vcard_new_refuses_an_existing_file_unless_forced() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("taken.toml");
    let original = b"this file is not a card and must survive\n";
    std::fs::write(&file, original).unwrap();
    let ca_cert = fixture("ca/test-ca.pem");
    let ca_key = fixture("ca/test-ca.key");
    let args = [
        "vcard",
        "new",
        path_str(&file),
        "--subject",
        "CN=Existing File",
        "--alg",
        "p256",
        "--ca-cert",
        path_str(&ca_cert),
        "--ca-key",
        path_str(&ca_key),
    ];

    let refused = pivtap(&args);
    assert_ne!(refused.code, 0, "vcard new overwrote an existing file");
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), original, "the file changed");

    let forced = pivtap(&[&args[..], &["--force"]].concat());
    forced.expect_code(0, "vcard new --force");
    assert_eq!(card_info(&file)["pin"]["retries_left"], 3);
}

#[test]
fn vcard_new_rejects_bad_inputs_with_clear_errors() {
    let dir = TempDir::new().unwrap();
    let image = dir.path().join("never.toml");
    let ca_cert = fixture("ca/test-ca.pem");
    let ca_key = fixture("ca/test-ca.key");
    let missing_ca = dir.path().join("no-such-ca.pem");
    // (extra arguments, CA certificate, allowed exit codes, text stderr must contain)
    let cases: [(&[&str], &Path, &[i32], &str); 6] = [
        (&["--pin", "12ab56"], &ca_cert, &[1, 2], "--pin"),
        (&["--pin", "123"], &ca_cert, &[1, 2], "--pin"),
        (&["--alg", "ed25519"], &ca_cert, &[2], "ed25519"),
        (&["--alg", "aes128"], &ca_cert, &[2], "aes128"),
        (&[], &missing_ca, &[1], path_str(&missing_ca)),
        (
            &["--not-before", "2020-01-01T00:00:00Z"],
            &ca_cert,
            &[2],
            "--not-after",
        ),
    ];
    for (extra, ca, allowed_codes, expected_text) in cases {
        let mut args = vec![
            "vcard",
            "new",
            path_str(&image),
            "--subject",
            "CN=Bad Input",
            "--ca-cert",
            path_str(ca),
            "--ca-key",
            path_str(&ca_key),
        ];
        args.extend_from_slice(extra);
        let run = pivtap(&args);
        assert!(
            allowed_codes.contains(&run.code),
            "{extra:?}: exit {} not in {allowed_codes:?}\nstderr:\n{}",
            run.code,
            run.stderr
        );
        assert!(
            run.stderr.contains(expected_text),
            "{extra:?}: stderr lacks {expected_text:?}:\n{}",
            run.stderr
        );
        assert!(
            !image.exists(),
            "{extra:?}: a card image was written anyway"
        );
    }
}

#[test]
fn verify_pin_exit_codes_track_and_persist_the_retry_counter() {
    let dir = TempDir::new().unwrap();
    let image = copy_fixture_card(&dir, "alice");

    let accepted = verify_pin(&image, ALICE_PIN);
    accepted.expect_code(0, "right PIN");
    assert!(
        accepted.stdout.contains("PIN verified."),
        "{}",
        accepted.stdout
    );
    assert_eq!(image_retries_left(&image, "pin"), 3);

    let wrong = verify_pin(&image, "654321");
    wrong.expect_code(3, "wrong PIN");
    assert!(wrong.stderr.contains("2 tries left"), "{}", wrong.stderr);
    assert_eq!(
        image_retries_left(&image, "pin"),
        2,
        "the wrong try was not saved"
    );

    verify_pin(&image, ALICE_PIN).expect_code(0, "right PIN after a wrong one");
    assert_eq!(
        image_retries_left(&image, "pin"),
        3,
        "the right PIN must reset the counter"
    );

    verify_pin(&image, "000000").expect_code(3, "first wrong PIN");
    let second = verify_pin(&image, "000000");
    second.expect_code(3, "second wrong PIN");
    assert!(second.stderr.contains("1 try left"), "{}", second.stderr);
    let third = verify_pin(&image, "000000");
    third.expect_code(4, "third wrong PIN");
    assert!(third.stderr.contains("blocked"), "{}", third.stderr);
    assert_eq!(image_retries_left(&image, "pin"), 0);

    let after_block = verify_pin(&image, ALICE_PIN);
    after_block.expect_code(4, "right PIN on a blocked card");
    assert!(
        after_block.stderr.contains("blocked"),
        "{}",
        after_block.stderr
    );
    assert!(!after_block.stdout.contains("PIN verified."));
    assert_eq!(image_retries_left(&image, "pin"), 0);
    assert_eq!(
        image_retries_left(&image, "puk"),
        3,
        "the PUK was never tried"
    );
}

#[test]
fn verify_pin_json_reports_each_outcome() {
    let dir = TempDir::new().unwrap();
    let image = copy_fixture_card(&dir, "bob");
    let verify_json = |pin: &str, expected_code: i32| -> Value {
        let run = pivtap_with_pin(
            pin,
            &["card", "verify-pin", "--vcard", path_str(&image), "--json"],
        );
        run.expect_code(expected_code, "verify-pin --json");
        serde_json::from_str(run.stdout.trim()).expect("verify-pin --json prints JSON")
    };

    let bob_pin = "24681357";
    assert_eq!(
        verify_json(bob_pin, 0),
        json!({"verified": true, "blocked": false, "retries_left": null})
    );
    assert_eq!(
        verify_json("11111111", 3),
        json!({"verified": false, "blocked": false, "retries_left": 2})
    );
    assert_eq!(
        verify_json("11111111", 3),
        json!({"verified": false, "blocked": false, "retries_left": 1})
    );
    assert_eq!(
        verify_json("11111111", 4),
        json!({"verified": false, "blocked": true, "retries_left": 0})
    );
    assert_eq!(
        verify_json(bob_pin, 4),
        json!({"verified": false, "blocked": true, "retries_left": 0})
    );
}

#[test]
fn a_third_party_card_provisions_and_its_plain_6300_is_a_wrong_pin() {
    let dir = TempDir::new().unwrap();
    // Provisioning authenticates with the management key: the strict card
    // refuses the `82 00` pivtap once sent.
    let image = new_card(
        &dir,
        "third-party.toml",
        "CN=Dana Example",
        &["--profile", "third-party", "--alg", "p256"],
    );
    let text = std::fs::read_to_string(&image).unwrap();
    assert!(
        text.contains(r#"quirks = ["strict-7c", "plain-6300", "keep-pin-on-reset"]"#),
        "{text}"
    );
    let wrong = verify_pin(&image, "654321");
    wrong.expect_code(3, "wrong PIN on a card that answers 6300");
    assert!(
        wrong
            .stderr
            .contains("the card does not say how many tries are left"),
        "{}",
        wrong.stderr
    );
    assert_eq!(image_retries_left(&image, "pin"), 2, "a try was spent");
    let json = pivtap_with_pin(
        "654321",
        &["card", "verify-pin", "--vcard", path_str(&image), "--json"],
    );
    json.expect_code(3, "verify-pin --json");
    assert_eq!(
        serde_json::from_str::<Value>(json.stdout.trim()).unwrap(),
        json!({"verified": false, "blocked": false, "retries_left": null})
    );
    verify_pin(&image, ALICE_PIN).expect_code(0, "right PIN");
}

#[test]
fn verify_pin_without_a_pin_or_terminal_asks_for_pivtap_pin() {
    let dir = TempDir::new().unwrap();
    let image = copy_fixture_card(&dir, "alice");
    let before = std::fs::read(&image).unwrap();

    let run = pivtap(&["card", "verify-pin", "--vcard", path_str(&image)]);
    run.expect_code(1, "verify-pin with no PIN");
    assert!(run.stderr.contains("PIVTAP_PIN"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(&image).unwrap(),
        before,
        "the card image changed"
    );
}

#[test]
fn apdu_trace_never_shows_a_wrong_pin() {
    let dir = TempDir::new().unwrap();
    let image = copy_fixture_card(&dir, "alice");
    let wrong_pin = "918273";

    let run = pivtap_traced(
        "pivtap=trace",
        Some(wrong_pin),
        &["card", "verify-pin", "--vcard", path_str(&image)],
    );
    run.expect_code(3, "traced wrong PIN");
    assert!(
        run.stderr.contains(">> 00A40400"),
        "the APDU trace is off, so this test proves nothing:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(">> 00200080"),
        "no VERIFY traced:\n{}",
        run.stderr
    );
    assert_secret_absent(&run.all_output(), wrong_pin, "wrong PIN");
}

#[test]
fn apdu_trace_never_shows_a_right_pin() {
    let dir = TempDir::new().unwrap();
    let image = copy_fixture_card(&dir, "alice");

    let run = pivtap_traced(
        "pivtap=trace",
        Some(ALICE_PIN),
        &["card", "verify-pin", "--vcard", path_str(&image)],
    );
    run.expect_code(0, "traced right PIN");
    assert!(
        run.stderr.contains(">> 00200080"),
        "no VERIFY traced:\n{}",
        run.stderr
    );
    assert_secret_absent(&run.all_output(), ALICE_PIN, "right PIN");
}

#[test]
fn vcard_new_trace_never_shows_pin_puk_or_management_key() {
    let dir = TempDir::new().unwrap();
    let image = dir.path().join("traced.toml");
    let (pin, puk) = ("24681357", "97531864");
    let ca_cert = fixture("ca/test-ca.pem");
    let ca_key = fixture("ca/test-ca.key");

    let run = pivtap_traced(
        "trace",
        None,
        &[
            "vcard",
            "new",
            path_str(&image),
            "--subject",
            "CN=Traced Provisioning",
            "--alg",
            "p256",
            "--pin",
            pin,
            "--puk",
            puk,
            "--ca-cert",
            path_str(&ca_cert),
            "--ca-key",
            path_str(&ca_key),
        ],
    );
    run.expect_code(0, "traced vcard new");
    assert!(
        run.stderr.contains(">> 00A40400"),
        "the APDU trace is off:\n{}",
        run.stderr
    );
    let output = run.all_output();
    assert_secret_absent(&output, pin, "PIN");
    assert_secret_absent(&output, puk, "PUK");
    for key_hex in [
        DEFAULT_MANAGEMENT_KEY_HEX.to_uppercase(),
        DEFAULT_MANAGEMENT_KEY_HEX.to_owned(),
    ] {
        assert!(
            !output.contains(&key_hex),
            "the management key leaked:\n{output}"
        );
    }
    // The secrets did reach the image, where they belong.
    let image_text = std::fs::read_to_string(&image).unwrap();
    assert!(image_text.contains(pin) && image_text.contains(puk));
}

#[test]
fn card_info_on_a_file_that_is_not_a_card_image_fails_naming_it() {
    let dir = TempDir::new().unwrap();
    let text_file = dir.path().join("notes.txt");
    let contents = b"shopping list: milk, eggs\n";
    std::fs::write(&text_file, contents).unwrap();
    let missing = dir.path().join("missing.toml");

    for (file, what) in [(&text_file, "a text file"), (&missing, "a missing file")] {
        let run = pivtap(&["card", "info", "--vcard", path_str(file)]);
        run.expect_code(1, what);
        assert!(
            run.stderr.contains(path_str(file)),
            "{what}: the error does not name the file:\n{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{what}: printed {}", run.stdout);
    }
    assert_eq!(
        std::fs::read(&text_file).unwrap(),
        contents,
        "the text file changed"
    );
    assert!(!missing.exists(), "card info created the missing file");
}

#[test]
fn card_errors_state_their_cause_once() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing.toml");
    let run = pivtap(&["card", "info", "--vcard", path_str(&missing)]);
    run.expect_code(1, "card info on a missing file");
    let cause = "No such file or directory";
    assert_eq!(
        run.stderr.matches(cause).count(),
        1,
        "the cause is repeated:\n{}",
        run.stderr
    );
}

#[test]
fn help_texts_mention_the_key_options() {
    let cases: [(&[&str], &[&str]); 3] = [
        (&["--help"], &["vcard", "card", "Exit codes"]),
        (
            &["vcard", "new", "--help"],
            &["--ca-cert", "--ca-key", "--subject", "--alg", "--force"],
        ),
        (
            &["card", "verify-pin", "--help"],
            &["PIVTAP_PIN", "--vcard", "--json", "blocked"],
        ),
    ];
    for (args, expected) in cases {
        let run = pivtap(args);
        run.expect_code(0, &format!("pivtap {}", args.join(" ")));
        for text in expected {
            assert!(
                run.stdout.contains(text),
                "pivtap {}: help lacks {text:?}:\n{}",
                args.join(" "),
                run.stdout
            );
        }
    }
}

#[test]
fn contactless_card_refuses_pin_verification_without_using_a_try() {
    let dir = TempDir::new().unwrap();
    let image = new_card(
        &dir,
        "contactless.toml",
        "CN=Contactless Holder",
        &["--alg", "p256", "--contactless"],
    );

    let run = verify_pin(&image, ALICE_PIN);
    assert!(
        ![0, 3, 4].contains(&run.code),
        "a contactless card must refuse the PIN, not judge it: exit {}\n{}",
        run.code,
        run.stderr
    );
    assert!(!run.stdout.contains("PIN verified."), "{}", run.stdout);
    assert!(
        run.stderr.to_lowercase().contains("contactless"),
        "the error does not say the card refuses the PIN over contactless:\n{}",
        run.stderr
    );
    assert_eq!(
        image_retries_left(&image, "pin"),
        3,
        "a PIN try was used up"
    );

    let wrong = verify_pin(&image, "000000");
    assert_ne!(wrong.code, 3, "a wrong PIN was checked over contactless");
    assert_eq!(
        image_retries_left(&image, "pin"),
        3,
        "a wrong PIN try was used up"
    );
}

#[test]
fn card_info_on_a_contactless_card_shows_what_it_may_and_says_so() {
    let dir = TempDir::new().unwrap();
    let image = new_card(
        &dir,
        "contactless.toml",
        "CN=Contactless Holder",
        &["--alg", "p256", "--contactless"],
    );
    let info = card_info(&image);
    assert_eq!(info["restricted"], true, "{info:#}");
    assert!(info["pin"].is_null(), "{info:#}");
    assert!(is_guid(info["chuid"]["guid"].as_str().unwrap()), "{info:#}");
    assert_eq!(
        info["slots"].as_array().unwrap().len(),
        0,
        "the 9A certificate is contact-only: {info:#}"
    );
    let text = pivtap(&["card", "info", "--vcard", path_str(&image)]);
    text.expect_code(0, "card info (text)");
    assert!(text.stdout.contains("contactless"), "{}", text.stdout);
}

/// Runs `pivtap ARGS` with its standard output a pipe whose reader has gone (as `| head -1`
/// does once it has its line), and returns (pivtap's exit status, its standard error).
fn pivtap_into_closed_pipe(args: &[&str]) -> (i32, String) {
    // `true` reads nothing and exits at once; pivtap starts writing a second later.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("{ sleep 1; \"$0\" \"$@\"; echo \"status=$?\" >&2; } | true")
        .arg(env!("CARGO_BIN_EXE_pivtap"))
        .args(args)
        .env_remove("RUST_LOG");
    let output = command.output().expect("sh runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let status = stderr
        .lines()
        .find_map(|line| line.strip_prefix("status="))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line:\n{stderr}"));
    (status, stderr)
}

#[test]
fn a_closed_output_pipe_ends_quietly_with_141() {
    let dir = TempDir::new().unwrap();
    let card = copy_fixture_card(&dir, "alice");
    // println! paths (text and JSON) and a writer path (the certificate to `-`).
    for args in [
        &["card", "info", "--vcard", path_str(&card)][..],
        &["card", "info", "--json", "--vcard", path_str(&card)][..],
        &["card", "export-cert", "--vcard", path_str(&card)][..],
    ] {
        let (status, stderr) = pivtap_into_closed_pipe(args);
        assert_eq!(status, 141, "pivtap {}:\n{stderr}", args.join(" "));
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "pivtap {} said more than nothing:\n{stderr}",
            args.join(" ")
        );
    }
}

#[test]
fn errors_state_their_cause_once_across_commands() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = path_str(&missing);
    let in_missing_dir = dir.path().join("no-such-dir").join("card.toml");
    let cases: [&[&str]; 5] = [
        &["server", "run", "--config", missing],
        &["server", "rotate-keys", "--config", missing],
        &["kiosk", "--config", missing],
        &["card", "export-cert", "--vcard", missing],
        &["vcard", "new", path_str(&in_missing_dir), "--blank"],
    ];
    for args in cases {
        let run = pivtap(args);
        run.expect_code(1, &args.join(" "));
        assert_eq!(
            run.stderr.matches("No such file or directory").count(),
            1,
            "pivtap {}: the cause is not stated exactly once:\n{}",
            args.join(" "),
            run.stderr
        );
        let named = args.iter().find(|arg| arg.ends_with(".toml")).unwrap();
        assert_eq!(run.stderr.matches(named).count(), 1, "{}", run.stderr);
    }
}

#[test]
fn listen_addresses_and_server_urls_say_what_to_write_instead() {
    let dir = TempDir::new().unwrap();
    let server_dir = dir.path().join("server");
    let bare_port = pivtap(&["server", "init", path_str(&server_dir), "--listen", "8443"]);
    bare_port.expect_code(2, "server init --listen 8443");
    assert!(
        bare_port.stderr.contains("0.0.0.0:8443") && bare_port.stderr.contains("127.0.0.1:8443"),
        "{}",
        bare_port.stderr
    );
    assert!(
        !server_dir.exists(),
        "nothing is written for a refused --listen"
    );
    let run_bare = pivtap(&["server", "run", "--config", "x.toml", "--listen", "8443"]);
    run_bare.expect_code(2, "server run --listen 8443");
    assert!(
        run_bare.stderr.contains("only a port"),
        "{}",
        run_bare.stderr
    );

    for server in ["pivtap.example:8443", "127.0.0.1:8443"] {
        let run = pivtap(&["admin", "--server", server, "users", "list"]);
        run.expect_code(1, &format!("admin --server {server}"));
        assert!(
            run.stderr.contains(&format!("https://{server}")) && run.stderr.contains("no scheme"),
            "{}",
            run.stderr
        );
    }
}

/// `admin audit --kind`'s help lists every kind the store records, from the one enum.
#[test]
fn the_audit_help_lists_every_audit_kind() {
    let run = pivtap(&["admin", "audit", "--help"]);
    run.expect_code(0, "admin audit --help");
    for kind in pivtap_protocol::audit::AuditKind::ALL
        .map(|kind| kind.as_str())
        .into_iter()
        .chain(["sign_in", "sign_in_refused"])
    {
        assert!(run.stdout.contains(kind), "{kind}:\n{}", run.stdout);
    }
}

#[test]
fn every_command_shows_examples_in_its_help() {
    for args in [
        &["admin", "audit", "--help"][..],
        &["admin", "users", "add", "--help"][..],
        &["card", "info", "--help"][..],
        &["server", "init", "--help"][..],
        &["kiosk", "--help"][..],
        &["vcard", "new", "-h"][..],
    ] {
        let run = pivtap(args);
        run.expect_code(0, &args.join(" "));
        let command = args[..args.len() - 1].join(" ");
        assert!(
            run.stdout.contains("Examples:") && run.stdout.contains(&format!("pivtap {command}")),
            "pivtap {}:\n{}",
            args.join(" "),
            run.stdout
        );
    }
}

#[test]
fn the_server_says_listening_only_once_bound_and_admin_flags_go_after_the_subcommand() {
    // Durations in server.toml: the challenge lifetime as "2m", the token lifetime as before.
    let server = common::RunningServer::start_with(|config| {
        config.replacen("lifetime_seconds = 60", "lifetime_seconds = \"2m\"", 1)
    });
    let written = std::fs::read_to_string(server.ca.with_file_name("server.toml")).unwrap();
    assert!(written.contains("lifetime_seconds = \"2m\""), "{written}");

    // The global flags after the subcommand, --timeout as a duration.
    let listed = run(pivtap_command(&[
        "admin",
        "users",
        "add",
        "--id",
        "erin",
        "--name",
        "Erin",
        "--mail",
        "erin@example.com",
        "--server",
        &server.url,
        "--ca",
        path_str(&server.ca),
        "--token-file",
        path_str(&server.token_file),
        "--timeout",
        "30s",
    ]))
    .success("admin users add with the flags last");
    assert!(listed.stdout.contains("erin"), "{}", listed.stdout);
    let json = server
        .admin(&["users", "list", "--json"])
        .success("users list --json");
    assert_eq!(json.json()[0]["id"], "erin");

    // A conflict names its code once.
    let again = server.admin(&["users", "add", "--id", "erin", "--name", "Erin"]);
    again.expect_code(1, "a second erin");
    assert_eq!(
        again.stderr.matches("conflict").count(),
        1,
        "{}",
        again.stderr
    );
    let taken = server.admin(&[
        "users",
        "add",
        "--id",
        "e2",
        "--name",
        "E",
        "--mail",
        "erin@example.com",
    ]);
    taken.expect_code(1, "erin's mail again");
    assert_eq!(
        taken.stderr.matches("conflict").count(),
        1,
        "{}",
        taken.stderr
    );

    // A second server on the same port fails to bind and never says it is listening.
    let config = server.ca.with_file_name("server.toml");
    let second = pivtap(&["server", "run", "--config", path_str(&config)]);
    second.expect_code(1, "a second server on a taken port");
    assert!(second.stderr.contains("in use"), "{}", second.stderr);
    assert!(!second.stdout.contains("listening"), "{}", second.stdout);
}

/// Starts `pivtap kiosk --headless` with a local API on `port` (a server that is not there;
/// `timeout_seconds` as a duration), waits until its log shows `needle`, stops it and
/// returns the log.
fn kiosk_log_until(dir: &TempDir, port: u16, needle: &str) -> String {
    let config = dir.path().join(format!("kiosk-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            "device = \"k1\"\n[server]\nurl = \"https://127.0.0.1:1\"\ntimeout_seconds = \"5s\"\n\
             [local_api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"api.token\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join(format!("kiosk-{port}.log"));
    let mut child = pivtap_command(&["kiosk", "--headless", "--config", path_str(&config)])
        .env("RUST_LOG", "warn,pivtap::kiosk=info")
        // stdin stays open (a closed stdin ends a headless kiosk).
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the kiosk starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(needle) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains(needle),
        "the kiosk's log lacks {needle:?}:\n{text}"
    );
    text
}

#[test]
fn the_kiosk_says_its_local_api_listens_only_once_bound() {
    let dir = TempDir::new().unwrap();
    let port = common::free_port();
    kiosk_log_until(
        &dir,
        port,
        &format!("local API listening on http://127.0.0.1:{port}"),
    );
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let log = kiosk_log_until(&dir, taken_port, "cannot listen on");
    assert!(!log.contains("local API listening"), "{log}");
}

#[test]
fn rotate_keys_writes_the_rotation_into_the_database_without_a_restart() {
    let dir = TempDir::new().unwrap();
    let server_dir = dir.path().join("server");
    pivtap(&["server", "init", path_str(&server_dir)]).expect_code(0, "server init");
    let config = server_dir.join("server.toml");
    let key_file = std::fs::read(server_dir.join("tokens.key")).unwrap();
    // "New token signing key NEW (previous OLD stays published ...". Restart not asked for.
    let rotate = || {
        let run = pivtap(&["server", "rotate-keys", "--config", path_str(&config)]);
        run.expect_code(0, "server rotate-keys");
        assert!(
            run.stdout.contains("no restart") && !run.stdout.contains("Restart"),
            "{}",
            run.stdout
        );
        let word_after = |marker: &str| {
            let rest = &run.stdout[run.stdout.find(marker).expect(marker) + marker.len()..];
            rest.split_whitespace().next().unwrap().to_owned()
        };
        (
            word_after("New token signing key "),
            word_after("(previous "),
        )
    };
    let (first, first_previous) = rotate();
    let (second, second_previous) = rotate();
    assert_ne!(first, first_previous);
    assert_eq!(
        second_previous, first,
        "the second rotation goes on from the first, kept in the database"
    );
    assert_ne!(second, first);
    let run = pivtap(&[
        "server",
        "rotate-keys",
        "--config",
        path_str(&config),
        "--json",
    ]);
    run.expect_code(0, "server rotate-keys --json");
    let rotated: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(rotated["previous_kid"], second.as_str(), "{rotated}");
    assert_eq!(
        rotated["version"], 3,
        "the third rotation stored: {rotated}"
    );
    assert_ne!(rotated["current_kid"], second.as_str());
    assert_eq!(
        std::fs::read(server_dir.join("tokens.key")).unwrap(),
        key_file,
        "the key file only seeds an empty database"
    );
}
