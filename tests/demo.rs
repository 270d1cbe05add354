//! `pivtap demo` end to end: the kiosk against a real server over HTTPS on loopback with in-process virtual cards — headless (the JSON events) and the terminal UI driven under tmux as a person would; and `pivtap kiosk`'s terminal UI under tmux when its server or its reader filter is wrong.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::tmux::Tmux;
use pivtap_testkit::pcscd::{VPCD_READERS, pcscd_turn};

fn pivtap() -> &'static str {
    env!("CARGO_BIN_EXE_pivtap")
}

#[test]
fn the_headless_demo_tells_the_whole_story() {
    check_story(&["demo", "--headless"]);
}

/// The same story with the cards attached to the real pcscd through vpcd and
/// read over PC/SC (needs pcscd with vsmartcard-vpcd: scripts/setup-debian).
#[test]
fn the_headless_demo_over_pcscd_tells_the_same_story() {
    let _turn = pcscd_turn(&VPCD_READERS);
    check_story(&["demo", "--headless", "--pcsc"]);
}

fn check_story(args: &[&str]) {
    let output = Command::new(pivtap())
        .args(args)
        .output()
        .expect("pivtap demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        kinds,
        [
            "card_present",
            "pin_required",
            "signed_in",
            "signed_out", // Alice, badge taken away
            "card_present",
            "pin_required",
            "error",
            "pin_required",
            "signed_in",
            "signed_out", // Bob, a wrong PIN first
            "card_present",
            "pin_required",
            "signed_in",
            "signed_out", // Carol, signs out with the key
        ],
        "{stdout}"
    );
    let signed_in: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "signed_in")
        .collect();
    let users: Vec<&str> = signed_in
        .iter()
        .map(|e| e["user"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob", "carol"]);
    for event in &signed_in {
        let token = event["token"]
            .as_str()
            .expect("signed_in carries the session token");
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    }
    let wrong_pin = &events[6];
    assert_eq!(wrong_pin["code"], "wrong_pin");
    assert!(
        wrong_pin["message"]
            .as_str()
            .unwrap()
            .contains("2 tries left"),
        "{wrong_pin}"
    );
    assert_eq!(events[7]["tries_left"], 2);
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "signed_out")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["card_removed", "card_removed", "explicit"]);
    // The PINs typed never appear in the output.
    for pin in ["123456", "24681357", "999999"] {
        assert!(!stdout.contains(pin), "{pin} leaked");
    }
}

#[test]
fn the_terminal_ui_signs_a_worker_in_and_out_under_tmux() {
    let tmux = Tmux::start(&format!("{} demo", pivtap()));
    tmux.wait_for("Tap your badge");
    tmux.wait_for("F1: tap/remove Alice Example");
    tmux.wait_for("PUK 12345678");
    tmux.wait_for("On the reader: no badge");
    tmux.keys(&["F1"]);
    tmux.wait_for("Hello, Alice Example");
    tmux.wait_for("On the reader: Alice");
    tmux.keys(&["1", "2", "3", "4"]);
    let screen = tmux.wait_for("●●●●");
    let pin_line = screen
        .lines()
        .find(|line| line.contains("●●●●"))
        .unwrap_or_default();
    // The demo panel beside it lists the demo PINs; the entry itself is masked.
    let entry = pin_line.split('│').nth(1).unwrap_or(pin_line);
    assert!(
        !entry.chars().any(|c| c.is_ascii_digit()),
        "the PIN is masked: {pin_line:?}"
    );
    tmux.keys(&["5", "6", "Enter"]);
    tmux.wait_for("Signed in: Alice Example");
    tmux.keys(&["s"]);
    tmux.wait_for("Tap your badge");
    // F1 toggles Alice's badge: take it away, tap again; a wrong PIN shows the tries left.
    tmux.keys(&["F1"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["F1"]);
    tmux.wait_for("Hello, Alice Example");
    tmux.keys(&["9", "9", "9", "9", "9", "9", "Enter"]);
    tmux.wait_for("2 tries left");
    tmux.keys(&["q"]);
}

/// `pivtap kiosk` on the vpcd readers of the system pcscd (needs pcscd with vsmartcard-vpcd:
/// scripts/setup-debian), with a server URL where nothing listens: the screen and the status
/// line say the server cannot be reached and was never seen, not "connected"; with a reader
/// filter that matches no reader, they say so and name the readers there are.
#[test]
fn the_kiosk_terminal_tells_an_unreachable_server_and_a_filter_matching_no_reader() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let kiosk = |name: &str, name_contains: &str| {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "device = \"kiosk-07\"\n[server]\nurl = \"https://127.0.0.1:{port}\"\n\
                 [readers]\nname_contains = {name_contains:?}\n[local_api]\nlisten = \"127.0.0.1:0\"\n\
                 token_file = \"{name}.token\"\n"
            ),
        )
        .unwrap();
        Tmux::start(&format!(
            "{} kiosk --config {} 2>{}",
            pivtap(),
            config.display(),
            dir.path().join(format!("{name}.log")).display()
        ))
    };

    let tmux = kiosk("unreachable", "virtual pcd");
    let screen = tmux.wait_for("Cannot reach the sign-in server");
    for expected in ["Retrying…", "Server unreachable — retrying · never reached"] {
        assert!(screen.contains(expected), "{expected:?} in\n{screen}");
    }
    assert!(!screen.contains("Server: connected"), "{screen}");
    drop(tmux);

    let tmux = kiosk("filtered", "Reader Nobody Has");
    let screen = tmux.wait_for("No reader this kiosk is set up for");
    assert!(screen.contains("Virtual PCD 00 00"), "{screen}");
    drop(tmux);
    let log = std::fs::read_to_string(dir.path().join("filtered.log")).unwrap();
    assert!(log.contains("[readers] name_contains"), "{log}");
}

#[test]
fn the_demo_quits_with_q_or_capital_q() {
    for key in ["q", "Q"] {
        let tmux = Tmux::start(&format!("{} demo; echo \"EXITED $?\"; sleep 30", pivtap()));
        tmux.wait_for("Tap your badge");
        tmux.keys(&[key]);
        tmux.wait_for("EXITED 0");
    }
}
