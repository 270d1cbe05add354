//! The OpenID Connect interop harness: a server whose discovery names the kiosk's loopback endpoint, registered clients, a headless kiosk with a virtual badge, and the Python relying party (Authlib, selenium) driven line by line.
//!
//! The Python side is `tests/oidc/driver.py`, run by the venv's python that
//! `scripts/oidc-env` prints (`PIVTAP_OIDC_PYTHON`; `scripts/test` sets it). The badge
//! is a fixture card served into the first vpcd reader by this process, so every test
//! here takes its turn on pcscd ([`pcscd_turn`]). Without the venv, pcscd, chromium or
//! chromedriver the tests fail and say how to get them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use pivtap_testkit::badge::{ALICE, Badge};
use pivtap_testkit::pcscd::{InReader, PcscdTurn, pcscd_turn};
use serde_json::{Value, json};

use super::kiosk::{HeadlessKiosk, KIOSK_READER};
use super::{RunningServer, free_port};

/// The longest a driver command may take (a browser page that waits for a badge included).
pub const DRIVER_WAIT: Duration = Duration::from_secs(60);
/// How long a back-channel logout may take to reach the relying party.
pub const LOGOUT_WAIT: Duration = Duration::from_secs(30);
/// The scopes the relying parties ask for.
pub const SCOPE: &str = "openid profile email";
/// The browser app's client (its login button, its callback, its back-channel logout).
pub const WEB_APP: &str = "web-app";
/// The Authlib test client: two redirect URIs, a back-channel logout URI.
pub const AUTHLIB_RP: &str = "authlib-rp";
/// Another confidential client, without a back-channel logout URI.
pub const OTHER_RP: &str = "other-rp";

/// The python of the OpenID Connect test venv: `PIVTAP_OIDC_PYTHON`, else the venv
/// `scripts/oidc-env` makes by default (`target/oidc-env`); fails the test, saying how to
/// make it, when neither is there.
pub fn oidc_python() -> PathBuf {
    let python = std::env::var_os("PIVTAP_OIDC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/oidc-env/bin/python")
        });
    assert!(
        python.is_file(),
        "the OpenID Connect interop tests need their Python venv ({} is missing): run \
         `export PIVTAP_OIDC_PYTHON=$(scripts/oidc-env)` (Authlib, requests and selenium from \
         PyPI; Debian's python3-venv, from scripts/setup-debian)",
        python.display()
    );
    python
}

/// Fails the test, saying how to install them, unless Debian's chromium and chromedriver
/// are there.
pub fn require_browser() {
    for (path, package) in [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ] {
        assert!(
            Path::new(path).is_file(),
            "the browser single sign-on tests need {path}: install Debian's {package} \
             (scripts/setup-debian)"
        );
    }
}

/// Where this test binary's Python side writes its log and the browser its screenshots.
pub fn test_logs(kind: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-logs")
        .join(kind);
    std::fs::create_dir_all(&dir).expect("target/test-logs is writable");
    dir
}

/// `tests/oidc/driver.py`: one JSON command a line in, one JSON answer a line out.
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
    log: PathBuf,
}

impl Driver {
    /// Starts the driver; its standard error goes to `target/test-logs/oidc/NAME.log`.
    pub fn start(name: &str) -> Self {
        let python = oidc_python();
        let log = test_logs("oidc").join(format!("{name}.log"));
        let mut child = Command::new(&python)
            .arg("-u")
            .arg("driver.py")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // Selenium never fetches a driver or a browser: both paths are given.
            .env("SE_OFFLINE", "true")
            // Only the server's own CA is trusted (requests prefers these to `verify`).
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .unwrap_or_else(|error| panic!("{} does not start: {error}", python.display()));
        let stdin = child.stdin.take().expect("the driver's stdin");
        let stdout = child.stdout.take().expect("the driver's stdout");
        let (sender, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Driver {
            child,
            stdin,
            answers,
            log,
        }
    }

    /// The driver's log, for failure messages.
    pub fn story(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("driver log ({}):\n{log}", self.log.display())
    }

    /// Sends `command` and returns the answer, which may report an exception.
    pub fn try_call(&mut self, command: Value) -> Value {
        let name = command["cmd"].as_str().unwrap_or("?").to_owned();
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|error| panic!("the driver is gone ({error}); {}", self.story()));
        match self.answers.recv_timeout(DRIVER_WAIT) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|error| panic!("{name}: not JSON ({error}): {line}")),
            Err(RecvTimeoutError::Timeout) => {
                panic!("{name}: no answer within {DRIVER_WAIT:?}; {}", self.story())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait();
                panic!("{name}: the driver ended ({status:?}); {}", self.story())
            }
        }
    }

    /// Sends `command`; fails the test when the driver reports an exception.
    #[track_caller]
    pub fn call(&mut self, command: Value) -> Value {
        let answer = self.try_call(command.clone());
        if let Some(exception) = answer.get("exception") {
            panic!(
                "{}: {exception}; {}",
                command["cmd"].as_str().unwrap_or("?"),
                self.story()
            );
        }
        answer
    }

    /// The back-channel logout deliveries the relying party received for `client_id`,
    /// waiting up to [`LOGOUT_WAIT`] for at least one.
    pub fn wait_for_logouts(&mut self, client_id: &str) -> Vec<Value> {
        let deadline = Instant::now() + LOGOUT_WAIT;
        loop {
            let answer = self.call(json!({"cmd": "logouts"}));
            let received: Vec<Value> = answer["logouts"]
                .as_array()
                .expect("a list of logouts")
                .iter()
                .filter(|logout| logout["client_id"] == client_id)
                .cloned()
                .collect();
            if !received.is_empty() {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "no back-channel logout reached {client_id} within {LOGOUT_WAIT:?}: {answer}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Quits the browser (chromium and chromedriver are its children), then the driver.
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `server.toml` text with `key = value` (value as TOML) in `[section]`, replacing the
/// key if the section had it.
pub fn set_config(config: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("[{section}]");
    let mut out = Vec::new();
    let mut in_section = false;
    let mut placed = false;
    for line in config.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_section = trimmed == header;
        }
        let is_key = trimmed
            .split_once('=')
            .is_some_and(|(name, _)| name.trim() == key);
        if in_section && is_key {
            continue;
        }
        out.push(line.to_owned());
        if in_section && trimmed == header {
            out.push(format!("{key} = {value}"));
            placed = true;
        }
    }
    if !placed {
        out.push(String::new());
        out.push(header);
        out.push(format!("{key} = {value}"));
    }
    out.join("\n") + "\n"
}

/// A registered client as the relying party knows it.
pub struct ClientSpec {
    /// The client id.
    pub id: &'static str,
    /// Its redirect URIs (paths on the relying party).
    pub redirect_paths: &'static [&'static str],
    /// Whether it has a back-channel logout URI (`/backchannel-logout/ID`).
    pub backchannel: bool,
    /// The browser app's client.
    pub web: bool,
}

/// The clients every harness registers.
pub const CLIENTS: [ClientSpec; 3] = [
    ClientSpec {
        id: WEB_APP,
        redirect_paths: &["/callback"],
        backchannel: true,
        web: true,
    },
    ClientSpec {
        id: AUTHLIB_RP,
        redirect_paths: &["/authlib/callback", "/authlib/second"],
        backchannel: true,
        web: false,
    },
    ClientSpec {
        id: OTHER_RP,
        redirect_paths: &["/other/callback"],
        backchannel: false,
        web: false,
    },
];

/// Everything an interop test needs, started in order: the pcscd turn, the server (its
/// discovery naming this kiosk's endpoint), the relying party, the clients, the kiosk.
/// Fields drop in order: the driver (browser) first, the turn last.
pub struct Sso {
    /// The Python relying party and browser.
    pub driver: Driver,
    /// The headless kiosk.
    pub kiosk: HeadlessKiosk,
    /// The server.
    pub server: RunningServer,
    /// The relying party's origin, `http://127.0.0.1:PORT`.
    pub rp: String,
    /// The discovery document as the relying party read it.
    pub metadata: Value,
    /// The kiosk's loopback authorization endpoint.
    pub authorize: String,
    /// The badge while it is on the kiosk's reader.
    badge: Option<InReader>,
    _turn: PcscdTurn,
}

impl Sso {
    /// Starts it all, with nobody signed in; the driver's log is named `name`.
    pub fn start(name: &str) -> Self {
        // Fails early, before waiting for pcscd, when the venv is missing.
        oidc_python();
        let turn = pcscd_turn(&[KIOSK_READER]);
        let kiosk_port = free_port();
        let authorize = format!(
            "http://127.0.0.1:{kiosk_port}{}",
            pivtap_protocol::oidc::KIOSK_AUTHORIZE_PATH
        );
        let server = RunningServer::start_with(|config| {
            set_config(
                &config,
                "oidc",
                "authorization_endpoint",
                &format!("{authorize:?}"),
            )
        });
        server.add_user(ALICE.user_id, ALICE.display_name, ALICE.mail);
        let mut driver = Driver::start(name);
        let started = driver.call(json!({
            "cmd": "start",
            "issuer": server.url,
            "ca": server.ca,
        }));
        let rp = started["rp"]
            .as_str()
            .expect("the relying party's origin")
            .to_owned();
        for client in &CLIENTS {
            let secret = register(&server, &rp, client);
            driver.call(json!({
                "cmd": "client",
                "client_id": client.id,
                "secret": secret,
                "redirect_uri": format!("{rp}{}", client.redirect_paths[0]),
                "scope": SCOPE,
                "web": client.web,
            }));
        }
        let mut kiosk = HeadlessKiosk::start_with(&server, KIOSK_READER.name, kiosk_port);
        kiosk.wait_for_local_api();
        Sso {
            driver,
            kiosk,
            server,
            rp,
            metadata: started["metadata"].clone(),
            authorize,
            badge: None,
            _turn: turn,
        }
    }

    /// The badge goes onto the kiosk's reader: the kiosk reads it and asks for the PIN.
    pub fn tap(&mut self, badge: &Badge) {
        assert!(self.badge.is_none(), "a badge is on the reader already");
        self.badge = Some(InReader::attach(&badge.backend(), KIOSK_READER));
        self.kiosk.expect_tap();
    }

    /// Taps `badge` and types its PIN at the kiosk: its user is signed in there.
    pub fn sign_in(&mut self, badge: &Badge) {
        self.tap(badge);
        self.kiosk.sign_in(badge.pin, badge.user_id);
    }

    /// Takes the badge away: the kiosk signs the worker out (`card_removed`).
    pub fn remove_badge(&mut self) {
        let mut badge = self.badge.take().expect("a badge on the reader");
        badge.take_out();
        let out = self.kiosk.expect_skipping("signed_out");
        assert_eq!(out["reason"], "card_removed", "{}", self.kiosk.story());
    }

    /// What went wrong, with everything the kiosk and the driver said and the server's log.
    pub fn story(&self) -> String {
        let server = std::fs::read_to_string(&self.server.stderr).unwrap_or_default();
        format!(
            "{}\n{}\nserver stderr:\n{server}",
            self.kiosk.story(),
            self.driver.story()
        )
    }
}

/// `pivtap admin clients add` for `client` on the relying party at `rp`; its secret.
fn register(server: &RunningServer, rp: &str, client: &ClientSpec) -> String {
    let mut args: Vec<String> = vec![
        "clients".into(),
        "add".into(),
        "--id".into(),
        client.id.into(),
    ];
    for path in client.redirect_paths {
        args.push("--redirect-uri".into());
        args.push(format!("{rp}{path}"));
    }
    if client.backchannel {
        args.push("--backchannel-logout-uri".into());
        args.push(format!("{rp}/backchannel-logout/{}", client.id));
    }
    args.push("--json".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let created = server.admin(&args).success("admin clients add").json();
    assert_eq!(created["client"]["id"], client.id, "{created}");
    created["secret"]
        .as_str()
        .expect("a confidential client's secret")
        .to_owned()
}
