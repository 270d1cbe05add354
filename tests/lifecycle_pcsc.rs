//! The whole badge lifecycle end to end over real HTTPS and the system pcscd with vpcd: a blank virtual card enrolled through a PC/SC reader, signing in at a headless kiosk, renewed, signing in again, revoked, refused; the CRL lists both retired certificates.
//!
//! Every step is the `pivtap` binary as an administrator, a worker and a
//! kiosk would run it: `server init` + `server run`, `vcard new --blank`,
//! `vcard attach` (the card in "Virtual PCD 00 00" or "00 01"), `admin
//! enroll`, `card enroll --reader`, `kiosk --headless`, `card renew
//! --reader`, `admin cards revoke`, and `GET /v1/crl` read by `openssl crl`.
//!
//! Needs pcscd with the vsmartcard vpcd driver (Debian packages pcscd and
//! vsmartcard-vpcd; scripts/setup-debian) and fails, saying so, without it.
//! The machine has one pcscd: run it alone, under the pcscd lock:
//! `flock /tmp/pivtap-pcscd.lock cargo test --test lifecycle_pcsc`.
//!
//! The kiosk watches "Virtual PCD 00 00" only; the renewal happens at
//! "Virtual PCD 00 01" (an IT desk's reader) while the kiosk keeps
//! running, so its first tap after the renewal meets a card whose key and
//! certificate changed under the same CHUID. Lock, unlock and revoke act
//! at the kiosk's next tap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pivtap_card::pcsc::PcscContext;
use pivtap_client::client::{Client, ServerTrust};
use serde_json::Value;

mod common;
use common::kiosk::{HeadlessKiosk, KIOSK_READER, WAIT};
use common::{KIOSK, RunningServer, interrupt, path_str, pivtap_command, run};
use pivtap_card::factory;
use pivtap_testkit::pcscd::{
    VPCD_READER_1, VpcdReader, context, pcscd_turn, reader_states, wait_for_reader,
};

/// The IT desk's reader (renewal), and its port.
const DESK_READER: VpcdReader = VPCD_READER_1;
/// The PIN of a blank card.
const FACTORY_PIN: &str = factory::PIN;

/// `pivtap vcard attach FILE --port PORT`: the card in a vpcd reader until [`Attached::remove`].
struct Attached<'a> {
    child: Child,
    reader: VpcdReader,
    context: &'a PcscContext,
    log: PathBuf,
}

impl<'a> Attached<'a> {
    /// Attaches `card` to `reader` and waits until pcscd sees it.
    fn attach(context: &'a PcscContext, card: &Path, reader: VpcdReader) -> Self {
        let (name, port) = (reader.name, reader.port);
        let log = card.with_extension(format!("attach-{port}.log"));
        let child = pivtap_command(&[
            "vcard",
            "attach",
            path_str(card),
            "--port",
            &port.to_string(),
        ])
        .stdout(std::fs::File::create(&log).expect("a log file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("pivtap vcard attach starts");
        let mut attached = Attached {
            child,
            reader,
            context,
            log,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = attached
                .child
                .try_wait()
                .expect("the attach process is there")
            {
                let mut stderr = String::new();
                if let Some(mut pipe) = attached.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!(
                    "pivtap vcard attach exited ({status}) before {name:?} held the card: {stderr}"
                );
            }
            let present = reader_states(context, &[reader])
                .iter()
                .any(|info| info.card_present);
            if present {
                return attached;
            }
            assert!(
                Instant::now() < deadline,
                "pcscd did not see the card in {name:?} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Takes the card out (SIGINT, as Ctrl-C), checks the process saved it
    /// and ended cleanly, and waits until pcscd sees the reader empty.
    fn remove(mut self) {
        let status = interrupt(&mut self.child, "vcard attach", WAIT);
        let printed = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            status.success() && printed.contains("its state is saved"),
            "vcard attach ended with {status}: {printed}"
        );
        wait_for_reader(self.context, self.reader, false, WAIT);
    }
}

impl Drop for Attached<'_> {
    /// A test that failed half-way leaves no card in a reader.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `PIVTAP_PIN=PIN pivtap card SUBCOMMAND --reader READER --server URL --ca tls.crt ARGS --json`
fn card_at_reader(
    server: &RunningServer,
    subcommand: &str,
    reader: &str,
    pin: &str,
    args: &[&str],
) -> Value {
    let mut command = pivtap_command(&[
        "card",
        subcommand,
        "--reader",
        reader,
        "--server",
        &server.url,
        "--ca",
        path_str(&server.ca),
        "--json",
    ]);
    command.args(args).env("PIVTAP_PIN", pin);
    run(command)
        .success(&format!("card {subcommand} at {reader}"))
        .json()
}

/// A serial number without separators or leading zeros, lower case.
fn plain_serial(serial: &str) -> String {
    serial
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .trim_start_matches('0')
        .to_ascii_lowercase()
}

/// The server's CRL (`GET /v1/crl`, DER), fetched over TLS trusting tls.crt.
fn fetch_crl(server: &RunningServer) -> Vec<u8> {
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
        .block_on(client.crl())
        .expect("the server serves its CRL")
}

/// `openssl crl` on the CRL: verified against the issuing CA; returns each
/// revoked serial (plain) with its reason, if any.
fn openssl_crl(server: &RunningServer, crl: &[u8]) -> Vec<(String, Option<String>)> {
    let path = server.dir.path().join("pivtap.crl");
    std::fs::write(&path, crl).expect("the CRL is written");
    let issuing_ca = server.dir.path().join("server/ca.crt");
    let output = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in", path_str(&path), "-CAfile"])
        .arg(&issuing_ca)
        .args(["-noout", "-text"])
        .output()
        .expect("openssl runs (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("verify OK"),
        "openssl crl: {text}"
    );
    let mut revoked: Vec<(String, Option<String>)> = Vec::new();
    let mut lines = text.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        if let Some(serial) = line.strip_prefix("Serial Number:") {
            revoked.push((plain_serial(serial), None));
        } else if line.starts_with("X509v3 CRL Reason Code") {
            let reason = lines.next().map(str::to_owned);
            if let Some(last) = revoked.last_mut() {
                last.1 = reason;
            }
        }
    }
    revoked
}

#[test]
fn a_reader_filter_that_matches_no_reader_says_so_and_names_the_readers_it_sees() {
    // The readers are checked below, with the patience a kiosk's last tap needs.
    let _readers = pcscd_turn(&[]);
    let context = context();
    wait_for_reader(&context, KIOSK_READER, false, WAIT);
    let server = RunningServer::start();
    let mut kiosk = HeadlessKiosk::start_with_filter(&server, "Reader Nobody Has");
    let notice = loop {
        let event = kiosk.next("the no_matching_reader error");
        if event["event"] == "error" && event["code"] != "server_unreachable" {
            break event;
        }
    };
    assert_eq!(notice["code"], "no_matching_reader", "{}", kiosk.story());
    let message = notice["message"].as_str().expect("a message");
    assert!(message.contains(KIOSK_READER.name), "{}", kiosk.story());
    let stderr = std::fs::read_to_string(&kiosk.stderr).expect("the kiosk's log");
    assert!(
        stderr.contains("[readers] name_contains") && stderr.contains(KIOSK_READER.name),
        "{}",
        kiosk.story()
    );
    kiosk.quit();
}

#[test]
fn a_blank_card_enrolled_over_pcsc_signs_in_at_the_kiosk_through_renewal_lock_and_revocation() {
    // The readers are checked below, with the patience a kiosk's last tap needs.
    let _readers = pcscd_turn(&[]);
    let context = context();
    for reader in [KIOSK_READER, DESK_READER] {
        wait_for_reader(&context, reader, false, WAIT);
    }
    let server = RunningServer::start();
    server.add_user("erin", "Erin Example", "erin@example.com");

    // A card as new cards ship, enrolled through the PC/SC reader.
    let card = server.dir.path().join("erin-card.toml");
    run(pivtap_command(&[
        "vcard",
        "new",
        path_str(&card),
        "--blank",
    ]))
    .success("vcard new --blank");
    let (code, _) = server.enrollment_code("erin");
    let in_reader = Attached::attach(&context, &card, KIOSK_READER);
    let enrolled = card_at_reader(
        &server,
        "enroll",
        KIOSK_READER.name,
        FACTORY_PIN,
        &["--code", &code],
    );
    in_reader.remove();
    assert_eq!(enrolled["user"]["id"], "erin", "{enrolled}");
    assert_eq!(enrolled["chuid_written"], true, "{enrolled}");
    let first_serial = enrolled["serial"].as_str().expect("a serial").to_owned();

    // The kiosk: tap, PIN, signed in; the badge leaves, signed out.
    let mut kiosk = HeadlessKiosk::start(&server);
    let tap = Attached::attach(&context, &card, KIOSK_READER);
    kiosk.expect_tap();
    kiosk.sign_in(FACTORY_PIN, "erin");
    tap.remove();
    let out = kiosk.expect("signed_out");
    assert_eq!(out["reason"], "card_removed", "{}", kiosk.story());

    // Renewal at the IT desk's reader while the kiosk keeps running.
    let at_desk = Attached::attach(&context, &card, DESK_READER);
    let renewed = card_at_reader(
        &server,
        "renew",
        DESK_READER.name,
        FACTORY_PIN,
        &["--device", KIOSK],
    );
    at_desk.remove();
    let info = run(pivtap_command(&[
        "card",
        "info",
        "--vcard",
        path_str(&card),
        "--json",
    ]))
    .success("card info")
    .json();
    let in_9a = info["slots"]
        .as_array()
        .and_then(|slots| slots.iter().find(|slot| slot["slot"] == "9a"))
        .and_then(|slot| slot["serial"].as_str())
        .map(plain_serial);
    assert_eq!(
        in_9a,
        Some(plain_serial(renewed["serial"].as_str().unwrap_or_default())),
        "vcard attach saved the renewed certificate: {info}"
    );
    let second_serial = renewed["serial"].as_str().expect("a serial").to_owned();
    assert_ne!(plain_serial(&second_serial), plain_serial(&first_serial));
    assert_eq!(renewed["user"]["id"], "erin", "{renewed}");

    // The first tap with the renewed key signs in.
    let tap = Attached::attach(&context, &card, KIOSK_READER);
    kiosk.expect_tap();
    kiosk.sign_in(FACTORY_PIN, "erin");
    tap.remove();
    kiosk.expect("signed_out");

    // Locked by the admin: the next tap is refused; unlocked: the next one signs in.
    server
        .admin(&["cards", "lock", &second_serial])
        .success("cards lock");
    let tap = Attached::attach(&context, &card, KIOSK_READER);
    kiosk.expect_tap();
    kiosk.line(FACTORY_PIN);
    let refused = kiosk.expect("error");
    assert_eq!(refused["server_code"], "card_locked", "{}", kiosk.story());
    tap.remove();
    server
        .admin(&["cards", "unlock", &second_serial])
        .success("cards unlock");
    let tap = Attached::attach(&context, &card, KIOSK_READER);
    kiosk.expect_tap();
    kiosk.sign_in(FACTORY_PIN, "erin");
    tap.remove();
    kiosk.expect("signed_out");

    // Revoked by the admin: the next tap is refused by the server.
    server
        .admin(&["cards", "revoke", &second_serial, "--yes"])
        .success("cards revoke");
    let tap = Attached::attach(&context, &card, KIOSK_READER);
    kiosk.expect_tap();
    kiosk.line(FACTORY_PIN);
    let refused = kiosk.expect("error");
    assert_eq!(refused["code"], "server_refused", "{}", kiosk.story());
    assert_eq!(
        refused["server_code"],
        "certificate_revoked",
        "{}",
        kiosk.story()
    );
    tap.remove();
    assert!(
        kiosk
            .seen
            .iter()
            .filter(|event| event["event"] == "signed_in")
            .count()
            == 3,
        "{}",
        kiosk.story()
    );
    // No event carries the PIN (tokens aside: base64 may hold any digits).
    for event in &kiosk.seen {
        let mut event = event.clone();
        if let Some(object) = event.as_object_mut() {
            object.remove("token");
        }
        assert!(
            !event.to_string().contains(FACTORY_PIN),
            "the PIN leaked: {event}"
        );
    }
    kiosk.quit();

    // The CRL lists the renewed-away certificate (superseded) and the revoked one.
    let listed = openssl_crl(&server, &fetch_crl(&server));
    let reason_of = |serial: &str| {
        listed
            .iter()
            .find(|(listed, _)| *listed == plain_serial(serial))
            .map(|(_, reason)| reason.clone())
    };
    assert_eq!(
        reason_of(&first_serial),
        Some(Some("Superseded".to_owned())),
        "the old certificate ({first_serial}) in {listed:?}"
    );
    assert!(
        reason_of(&second_serial).is_some(),
        "the revoked certificate ({second_serial}) in {listed:?}"
    );
    assert_eq!(listed.len(), 2, "{listed:?}");

    // The kiosk's two sign-ins used the first, then the renewed certificate.
    let successes = server
        .admin(&["audit", "--outcome", "ok", "--json"])
        .success("audit")
        .json();
    let signed_in_with: Vec<String> = successes
        .as_array()
        .expect("a JSON array of events")
        .iter()
        .rev() // newest first
        .filter(|event| event["kind"] == "assertion" && event["device"] == KIOSK)
        .map(|event| plain_serial(event["card_serial"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        signed_in_with,
        [
            plain_serial(&first_serial),
            plain_serial(&second_serial),
            plain_serial(&second_serial)
        ],
        "{successes}"
    );
    let refusals = server
        .admin(&["audit", "--outcome", "certificate_revoked", "--json"])
        .success("audit")
        .json();
    let refusals = refusals.as_array().expect("a JSON array of events");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["device"], KIOSK, "{refusals:?}");
}

#[test]
fn the_headless_kiosk_outlives_its_stdin_and_signs_the_worker_out_on_sigterm() {
    // The readers are checked below, with the patience a kiosk's last tap needs.
    let _readers = pcscd_turn(&[]);
    let context = context();
    wait_for_reader(&context, KIOSK_READER, false, WAIT);
    let server = RunningServer::start();
    server.add_user("alice", "Alice Example", "alice@example.com");
    let card = server.dir.path().join("alice-card.toml");
    std::fs::copy(common::fixture("cards/alice.toml"), &card).expect("the card image is copied");

    let mut kiosk = HeadlessKiosk::start(&server);
    let tap = Attached::attach(&context, &card, KIOSK_READER);
    kiosk.expect_tap();
    kiosk.sign_in(FACTORY_PIN, "alice");
    // Standard input closes, as under a service manager: the kiosk carries on.
    kiosk.close_stdin();
    // An app on the device follows the local API's event stream.
    let mut app = std::net::TcpStream::connect(("127.0.0.1", kiosk.api_port))
        .expect("the local session API listens");
    write!(
        app,
        "GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        kiosk.api_port
    )
    .expect("the request is sent");
    app.set_read_timeout(Some(WAIT)).expect("a read timeout");
    let app_heard = std::thread::spawn(move || {
        let mut heard = String::new();
        let mut buffer = [0u8; 4096];
        while let Ok(read) = std::io::Read::read(&mut app, &mut buffer) {
            if read == 0 {
                break;
            }
            heard.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
        heard
    });
    std::thread::sleep(Duration::from_millis(1500));
    let status = kiosk.child.try_wait().expect("the kiosk process is there");
    assert!(
        status.is_none(),
        "stopped when stdin closed: {status:?}; {}",
        kiosk.story()
    );
    // The service manager stops it: the worker is signed out first, then it exits 0.
    let killed = Command::new("kill")
        .args(["-TERM", &kiosk.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let out = kiosk.expect("signed_out");
    assert_eq!(out["reason"], "shutdown", "{}", kiosk.story());
    assert_eq!(out["user"]["id"], "alice", "{}", kiosk.story());
    assert_eq!(
        out["user"]["display_name"],
        "Alice Example",
        "{}",
        kiosk.story()
    );
    assert!(out["at"].is_string(), "{out}");
    kiosk.expect_clean_exit();
    // The app heard it too, before the kiosk closed the stream.
    let heard = app_heard.join().expect("the app's reader");
    assert!(
        heard.contains("event: signed_out") && heard.contains("\"reason\":\"shutdown\""),
        "{heard}"
    );
    // And the server recorded the sign-out before the kiosk ended.
    let audit = server
        .admin(&["audit", "--kind", "sign_out", "--json"])
        .success("audit --kind sign_out");
    let sign_outs: Vec<Value> = serde_json::from_str(&audit.stdout).expect("audit JSON");
    assert!(
        sign_outs.iter().any(|event| event["user_id"] == "alice"
            && event["device"] == KIOSK
            && event["detail"]
                .as_str()
                .is_some_and(|detail| detail.ends_with("reason shutdown"))),
        "no sign_out for the shutdown at the server: {sign_outs:?}"
    );
    tap.remove();
}
