//! Card commands with cards in two PC/SC readers and no `--reader`: asked which on a terminal (tmux), refused with the `--reader` flags without one.
//!
//! Needs the system pcscd with the vsmartcard vpcd driver (its two readers "Virtual PCD 00 00"
//! and "00 01", ports 35963 and 35964; scripts/setup-debian) and fails, saying so, without it.
//! The machine has one pcscd: run under the pcscd lock:
//! `flock /tmp/pivtap-pcscd.lock cargo test --test reader_choice_pcsc`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

mod common;
use common::tmux::Tmux;
use common::{fixture, path_str, pivtap_command, run};
use pivtap_testkit::pcscd::{VPCD_READERS, VpcdReader, pcscd_turn};

/// How long a card may take to show up in, or leave, a reader.
const READER_DEADLINE: Duration = Duration::from_secs(10);

/// Whether each vpcd reader holds a card now, by `pivtap card list --json`; fails without
/// pcscd or vpcd.
fn cards_present() -> [bool; 2] {
    let listing = run(pivtap_command(&["card", "list", "--json"]));
    assert_eq!(
        listing.code, 0,
        "pcscd is not running or cannot be reached: run scripts/setup-debian (as root).\n{}",
        listing.stderr
    );
    let readers: Value = serde_json::from_str(&listing.stdout).expect("card list --json");
    VPCD_READERS.map(|VpcdReader { name, .. }| {
        let reader = readers
            .as_array()
            .and_then(|all| all.iter().find(|r| r["reader"] == name))
            .unwrap_or_else(|| {
                panic!("pcscd has no reader {name:?}: install vsmartcard-vpcd (scripts/setup-debian); readers: {readers}")
            });
        reader["card_present"] == Value::Bool(true)
    })
}

/// Waits until pcscd shows cards in the two readers as `wanted`.
fn wait_for_cards(wanted: [bool; 2]) {
    let deadline = Instant::now() + READER_DEADLINE;
    while cards_present() != wanted {
        assert!(
            Instant::now() < deadline,
            "the vpcd readers did not reach {wanted:?} (cards present) within {READER_DEADLINE:?}: \
             is another `pivtap vcard attach` running?"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A card image in a vpcd reader through `pivtap vcard attach`; taken out (SIGINT) when dropped.
struct Attached(Child);

impl Attached {
    fn start(card: &Path, port: &str) -> Self {
        let mut child = pivtap_command(&["vcard", "attach", path_str(card), "--port", port])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pivtap vcard attach starts");
        let stdout = child.stdout.take().expect("attach's stdout is piped");
        let (sender, first_line) = mpsc::channel();
        std::thread::spawn(move || {
            let line = BufReader::new(stdout).lines().next();
            let _ = sender.send(line);
        });
        let line = first_line.recv_timeout(READER_DEADLINE);
        assert!(
            matches!(&line, Ok(Some(Ok(text))) if text.contains("is in reader")),
            "vcard attach --port {port} did not put the card in its reader: {line:?}"
        );
        Attached(child)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A copy of the fixture card `cards/NAME.toml` in `dir`.
fn card_copy(dir: &TempDir, name: &str) -> PathBuf {
    let copy = dir.path().join(format!("{name}.toml"));
    std::fs::copy(fixture(&format!("cards/{name}.toml")), &copy).expect("copy the fixture card");
    copy
}

#[test]
fn with_cards_in_two_readers_the_person_is_asked_and_a_script_is_refused() {
    // The readers are checked below, through `pivtap card list` and with its patience.
    let _turn = pcscd_turn(&[]);
    wait_for_cards([false, false]);
    let dir = TempDir::new().unwrap();
    let alice = Attached::start(&card_copy(&dir, "alice"), &VPCD_READERS[0].port_arg());
    let bob = Attached::start(&card_copy(&dir, "bob"), &VPCD_READERS[1].port_arg());
    wait_for_cards([true, true]);

    // No terminal: refused, with the flags to choose with; no card was read.
    let refused = run(pivtap_command(&["card", "info"]));
    refused.expect_code(1, "card info with cards in two readers and no terminal");
    for VpcdReader { name, .. } in VPCD_READERS {
        assert!(
            refused.stderr.contains(&format!("--reader {name:?}")),
            "the refusal lacks --reader {name:?}:\n{}",
            refused.stderr
        );
    }
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);

    // Naming the reader settles it.
    let named = run(pivtap_command(&["card", "info", "--reader", "00 01"])).success("--reader");
    assert!(named.stdout.contains("CN=Bob"), "{}", named.stdout);

    // On a terminal: asked, by number.
    let command = format!(
        "{} card info; echo \"exit=$?\"; sleep 60",
        env!("CARGO_BIN_EXE_pivtap")
    );
    let tmux = Tmux::start(&command);
    let asked = tmux.wait_for("Which reader [1-2]?");
    assert!(
        asked.contains("1) Virtual PCD 00 00") && asked.contains("2) Virtual PCD 00 01"),
        "{asked}"
    );
    tmux.keys(&["7", "Enter"]);
    tmux.wait_for("\"7\" is not one of them");
    tmux.keys(&["2", "Enter"]);
    let screen = tmux.wait_for("exit=");
    assert!(
        screen.contains("CN=Bob") && !screen.contains("CN=Alice") && screen.contains("exit=0"),
        "{screen}"
    );
    drop(tmux);

    drop((alice, bob));
    wait_for_cards([false, false]);
}
