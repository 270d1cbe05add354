//! `pivtap kiosk` as a service manager and an administrator meet it: without a terminal, stopped by signals, and left only through the administrator's exit (driven under tmux).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod common;
use common::tmux::Tmux;
use common::{free_port, path_str, pivtap_command, run};

const PASSCODE: &str = "lighthouse keeper";

/// A kiosk.toml whose server never answers and whose reader filter matches no reader: the
/// kiosk runs, waits, and touches nobody's cards.
fn kiosk_config(extra: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kiosk.toml");
    let text = format!(
        "device = \"kiosk-07\"\n\n[server]\nurl = \"https://127.0.0.1:{}\"\ntimeout_seconds = 1\n\n\
         [readers]\nname_contains = \"pivtap test: no such reader\"\n\n\
         [local_api]\nlisten = \"127.0.0.1:{}\"\n{extra}",
        free_port(),
        free_port(),
    );
    std::fs::write(&path, text).expect("kiosk.toml is written");
    (dir, path)
}

/// Sets the exit passcode with the CLI, as an administrator would from a script.
fn set_passcode(config: &Path, passcode: &str) -> common::Run {
    let mut command = pivtap_command(&[
        "kiosk",
        "set-exit-passcode",
        "--config",
        path_str(config),
        "--json",
    ]);
    command.env("PIVTAP_EXIT_PASSCODE", passcode);
    run(command)
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("the kiosk's status") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name}");
}

#[test]
fn the_kiosk_without_a_terminal_exits_2_and_says_how_to_run_headless() {
    let (_dir, config) = kiosk_config("");
    let result = run(pivtap_command(&["kiosk", "--config", path_str(&config)]));
    result.expect_code(2, "kiosk without a terminal");
    assert!(
        result.stderr.contains("needs a terminal") && result.stderr.contains("--headless"),
        "{}",
        result.stderr
    );
    assert!(!result.stderr.contains("panicked"), "{}", result.stderr);
}

#[test]
fn the_demo_without_a_terminal_tells_its_story_in_words() {
    let result = run(pivtap_command(&["demo"])).success("demo without a terminal");
    for line in [
        "no terminal, so here is the scripted story in words",
        "» Alice Example puts their badge on the reader",
        "Signed in: Alice Example (alice).",
        "Wrong PIN. 2 tries left",
        "Signed out: Bob Example (card removed).",
        "Signed out: Carol Example (explicit).",
    ] {
        assert!(result.stdout.contains(line), "{line:?}:\n{}", result.stdout);
    }
    for pin in ["123456", "24681357", "999999"] {
        assert!(!result.stdout.contains(pin), "{pin} leaked");
    }
}

#[test]
fn the_headless_kiosk_outlives_its_standard_input_and_stops_on_a_signal() {
    let (dir, config) = kiosk_config("");
    let log = dir.path().join("kiosk.log");
    for signal_name in ["TERM", "INT"] {
        // Logs to a file, with nothing telling it to avoid colour: plain text all the same.
        let mut child = pivtap_command(&["kiosk", "--config", path_str(&config), "--headless"])
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("pivtap kiosk starts");
        // Standard input is closed from the start, as under a service manager.
        assert_eq!(
            wait_with_timeout(&mut child, Duration::from_millis(1500)),
            None,
            "the kiosk stopped when its stdin closed"
        );
        signal(&child, signal_name);
        let status = wait_with_timeout(&mut child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("SIG{signal_name} did not stop the kiosk"));
        assert_eq!(status.code(), Some(0), "SIG{signal_name}: {status:?}");
        let logged = std::fs::read_to_string(&log).expect("the log");
        assert!(logged.contains("no device credential"), "{logged}");
        assert!(
            !logged.contains('\u{1b}'),
            "colour codes in a log file: {logged:?}"
        );
    }
}

#[test]
fn set_exit_passcode_writes_a_hash_and_refuses_short_passcodes() {
    let (_dir, config) = kiosk_config("\n[branding]\norganisation = \"Northwind\"\n");
    let before = std::fs::read_to_string(&config).unwrap();
    set_passcode(&config, "short").failure("a short passcode", "8 to 128 characters");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
    let result = set_passcode(&config, PASSCODE).success("set-exit-passcode");
    assert_eq!(result.json()["changed"], "exit_passcode");
    let after = std::fs::read_to_string(&config).unwrap();
    assert!(after.starts_with(&before), "{after}");
    assert!(
        after.contains("[admin]\nexit_passcode_hash = '$argon2id$"),
        "{after}"
    );
    assert!(!after.contains(PASSCODE));
    assert!(!result.all_output().contains(PASSCODE));
}

/// The kiosk in tmux, with its exit code shown on the screen when it ends.
fn kiosk_in_tmux(config: &Path) -> Tmux {
    let tmux = Tmux::start(&format!(
        "{} kiosk --config {} 2>/dev/null; echo \"EXITED $?\"; sleep 60",
        env!("CARGO_BIN_EXE_pivtap"),
        path_str(config)
    ));
    tmux.wait_for("No card reader");
    tmux
}

#[test]
fn workers_cannot_quit_the_kiosk_and_an_administrator_can() {
    let (_dir, config) = kiosk_config("");
    set_passcode(&config, PASSCODE).success("set-exit-passcode");
    let tmux = kiosk_in_tmux(&config);
    tmux.keys(&["q", "Q", "C-c"]);
    std::thread::sleep(Duration::from_millis(800));
    let screen = tmux.screen();
    assert!(
        !screen.contains("EXITED") && screen.contains("No card reader"),
        "{screen}"
    );
    // The key sequence, then a wrong passcode: refused, and the next try must wait.
    tmux.keys(&["C-M-x"]);
    tmux.wait_for("Enter the exit passcode");
    tmux.keys(&["-l", "not the passcode"]);
    let screen = tmux.wait_for("●●●●●●●●●●●●●●●●");
    assert!(!screen.contains("not the passcode"), "{screen}");
    tmux.keys(&["Enter"]);
    tmux.wait_for("Wrong passcode.");
    tmux.wait_for("Try again in");
    std::thread::sleep(Duration::from_secs(5));
    // Esc leaves the prompt; the kiosk is still there.
    tmux.keys(&["C-M-x"]);
    tmux.wait_for("Enter the exit passcode");
    tmux.keys(&["Escape"]);
    tmux.wait_for("No card reader");
    tmux.keys(&["C-M-x"]);
    tmux.wait_for("Enter the exit passcode");
    tmux.keys(&["-l", PASSCODE]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("EXITED 0");
}

#[test]
fn without_a_passcode_the_exit_keys_say_only_a_signal_stops_the_kiosk() {
    let (_dir, config) = kiosk_config("\n[admin]\nexit_keys = \"f10 f10\"\n");
    let tmux = kiosk_in_tmux(&config);
    tmux.keys(&["C-M-x"]);
    tmux.keys(&["F10", "F10"]);
    tmux.wait_for("No exit passcode is set");
    tmux.wait_for("SIGTERM");
    tmux.keys(&["q", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!tmux.screen().contains("EXITED"));
}
