//! `pivtap kiosk --headless` for the end-to-end tests: a kiosk.toml for a running server, its JSON events read line by line, PINs typed on its standard input.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use pivtap_testkit::pcscd::{VPCD_READER_0, VpcdReader};
use serde_json::Value;

use super::{KIOSK, RunningServer, free_port, path_str, pivtap_command};

/// The kiosk's reader: the first vpcd reader, "Virtual PCD 00 00".
pub const KIOSK_READER: VpcdReader = VPCD_READER_0;

/// The longest wait for a kiosk event.
pub const WAIT: Duration = Duration::from_secs(20);

/// `pivtap kiosk --config kiosk.toml --headless`: JSON events out, PINs in.
pub struct HeadlessKiosk {
    /// The kiosk's process.
    pub child: Child,
    /// `None` once closed ([`HeadlessKiosk::close_stdin`]).
    stdin: Option<ChildStdin>,
    /// The local session API's port on 127.0.0.1.
    pub api_port: u16,
    events: Receiver<Value>,
    /// Every event so far, for failure messages.
    pub seen: Vec<Value>,
    /// The kiosk's log (its standard error).
    pub stderr: PathBuf,
}

impl HeadlessKiosk {
    /// Writes a kiosk.toml for `server` watching only the kiosk's reader, and starts the kiosk.
    pub fn start(server: &RunningServer) -> Self {
        HeadlessKiosk::start_with_filter(server, KIOSK_READER.name)
    }

    /// As [`start`](Self::start), watching the readers whose name contains `name_contains`.
    pub fn start_with_filter(server: &RunningServer, name_contains: &str) -> Self {
        HeadlessKiosk::start_with(server, name_contains, free_port())
    }

    /// As [`start_with_filter`](Self::start_with_filter), its local API on `api_port`.
    pub fn start_with(server: &RunningServer, name_contains: &str, api_port: u16) -> Self {
        let dir = server.dir.path().join("kiosk");
        std::fs::create_dir_all(&dir).expect("the kiosk's directory");
        let config = dir.join("kiosk.toml");
        // The kiosk's own credential, as `pivtap kiosk enroll-device` writes it.
        let credential = server.device_credential(KIOSK);
        let toml = format!(
            "device = {device:?}\n\n[server]\nurl = {url:?}\nca = {ca:?}\n\
             device_key = {key:?}\ndevice_certificate = {certificate:?}\n\n\
             [readers]\nname_contains = {reader:?}\n\n\
             [local_api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"local-api.token\"\n",
            device = KIOSK,
            url = server.url,
            ca = path_str(&server.ca),
            key = path_str(&credential.join("device.key")),
            certificate = path_str(&credential.join("device.crt")),
            reader = name_contains,
            port = api_port,
        );
        std::fs::write(&config, toml).expect("kiosk.toml is written");
        let stderr = dir.join("kiosk.err");
        let mut child = pivtap_command(&["kiosk", "--config", path_str(&config), "--headless"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("a log file"))
            .spawn()
            .expect("pivtap kiosk starts");
        let stdin = child.stdin.take().expect("the kiosk's stdin");
        let stdout = child.stdout.take().expect("the kiosk's stdout");
        let (sender, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "not_json", "line": line}));
                if sender.send(event).is_err() {
                    return;
                }
            }
        });
        HeadlessKiosk {
            child,
            stdin: Some(stdin),
            api_port,
            events,
            seen: Vec::new(),
            stderr,
        }
    }

    /// What went wrong, with everything the kiosk said.
    pub fn story(&self) -> String {
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!(
            "events:\n{}\nkiosk stderr:\n{log}",
            self.seen
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// The next event, failing after [`WAIT`] or when the kiosk stopped.
    pub fn next(&mut self, waiting_for: &str) -> Value {
        match self.events.recv_timeout(WAIT) {
            Ok(event) => {
                assert_ne!(event["event"], "not_json", "{}", self.story());
                self.seen.push(event.clone());
                event
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("no {waiting_for} within {WAIT:?}; {}", self.story())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait();
                panic!(
                    "the kiosk stopped ({status:?}) before {waiting_for}; {}",
                    self.story()
                )
            }
        }
    }

    /// The events the kiosk has sent and no test read yet, without waiting.
    pub fn pending(&mut self) -> Vec<Value> {
        let events: Vec<Value> = self.events.try_iter().collect();
        self.seen.extend(events.iter().cloned());
        events
    }

    /// Waits until the local API accepts connections on 127.0.0.1.
    pub fn wait_for_local_api(&mut self) {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.api_port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the kiosk ended ({status}); {}", self.story());
            }
            assert!(
                Instant::now() < deadline,
                "the kiosk's local API did not listen within {WAIT:?}; {}",
                self.story()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The next event, which must be of `kind`.
    pub fn expect(&mut self, kind: &str) -> Value {
        let event = self.next(kind);
        assert_eq!(event["event"], kind, "{}", self.story());
        event
    }

    /// The next event of `kind`, passing over others (notices the kiosk may add on the way).
    pub fn expect_skipping(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let event = self.next(kind);
            if event["event"] == kind {
                return event;
            }
            assert!(Instant::now() < deadline, "no {kind}; {}", self.story());
        }
    }

    /// Types a line (a PIN, `quit`) on the kiosk.
    pub fn line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("the kiosk's stdin is open");
        writeln!(stdin, "{text}").expect("the kiosk reads its stdin");
        stdin.flush().expect("the kiosk reads its stdin");
    }

    /// Closes the kiosk's standard input, as a service manager's /dev/null does.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The badge was tapped on the kiosk's reader: it is read and the PIN asked for.
    pub fn expect_tap(&mut self) {
        let present = self.expect("card_present");
        assert_eq!(present["reader"], KIOSK_READER.name, "{}", self.story());
        let prompt = self.expect("pin_required");
        // `null`: not read, for a badge whose PIN was right at its last sign-in here.
        assert!(
            prompt["tries_left"] == 3 || prompt["tries_left"].is_null(),
            "{}",
            self.story()
        );
    }

    /// Types the PIN and waits for `user`'s sign-in; returns the session token.
    pub fn sign_in(&mut self, pin: &str, user: &str) -> String {
        self.line(pin);
        let signed_in = self.expect("signed_in");
        assert_eq!(signed_in["user"]["id"], user, "{}", self.story());
        let token = signed_in["token"].as_str().expect("a session token");
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        token.to_owned()
    }

    /// Quits and checks the kiosk ended cleanly.
    pub fn quit(mut self) {
        self.line("quit");
        self.expect_clean_exit();
    }

    /// Waits for the kiosk to end, which it must do cleanly (exit 0).
    pub fn expect_clean_exit(mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("the kiosk process is there") {
                assert!(
                    status.success(),
                    "the kiosk ended with {status}; {}",
                    self.story()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the kiosk did not quit; {}",
                self.story()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HeadlessKiosk {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
