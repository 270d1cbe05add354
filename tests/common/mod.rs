//! Helpers shared by the end-to-end tests of the `pivtap` binary: running it with a clean environment and checking what it did.
// Each test crate uses only some of these helpers.
#![allow(dead_code)]

pub mod kiosk;
pub mod nodes;
pub mod oidc;
pub mod tmux;

use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use pivtap_testkit::{fixture, free_port};
use serde_json::Value;
use tempfile::TempDir;

/// What one run of `pivtap` did.
pub struct Run {
    /// The exit code (-1 when a signal ended it).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Collects a finished process.
    pub fn from_output(output: Output) -> Self {
        Run {
            // A run killed by a signal has no code; -1 fails every assertion on it.
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with the whole output unless the exit code is `expected`.
    #[track_caller]
    pub fn expect_code(&self, expected: i32, what: &str) -> &Self {
        assert_eq!(
            self.code, expected,
            "{what}: expected exit {expected}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Panics with the whole output unless the run succeeded.
    #[track_caller]
    pub fn success(self, what: &str) -> Self {
        self.expect_code(0, what);
        self
    }

    /// Panics unless the run failed with `needle` on standard error.
    #[track_caller]
    pub fn failure(self, what: &str, needle: &str) -> Self {
        assert!(
            self.code != 0 && self.stderr.contains(needle),
            "{what}: expected failure mentioning {needle:?}, got exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Standard output as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("not JSON ({error}):\n{}", self.stdout))
    }

    /// Both output streams, for checks that secrets appear in neither.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A `pivtap` command with none of the variables it reads set, and no standard input.
pub fn pivtap_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pivtap"));
    command
        .args(args)
        .env_remove("PIVTAP_PIN")
        .env_remove("PIVTAP_ADMIN_TOKEN")
        .env_remove("PIVTAP_SERVER")
        .env_remove("PIVTAP_DEVICE")
        .env_remove("PIVTAP_STORE_PASSWORD")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs a prepared command to the end. What it wrote to standard error (its
/// logs and error messages) is also appended to `target/test-logs/cli/`, for
/// `scripts/secret-scan`.
pub fn run(mut command: Command) -> Run {
    let run = Run::from_output(command.output().expect("the pivtap binary runs"));
    keep_stderr(&command, &run.stderr);
    run
}

/// Appends a run's standard error, headed by its arguments, to this test
/// binary's file under `target/test-logs/cli/`.
fn keep_stderr(command: &Command, stderr: &str) {
    use std::io::Write;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs/cli");
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tests".to_owned());
    // Only the subcommand: tests pass PINs and keys as arguments on purpose.
    let subcommand: Vec<String> = command
        .get_args()
        .take(2)
        .map(|arg| arg.to_string_lossy().into_owned())
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{binary}.log")))?;
        writeln!(file, "$ pivtap {} ...\n{stderr}", subcommand.join(" "))
    });
    if let Err(error) = written {
        panic!("cannot keep the run's output in {}: {error}", dir.display());
    }
}

/// A test path as text.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// How long a server may take to start or to stop.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports tried before giving up (see [`RunningServer::start_with`]).
pub const PORT_ATTEMPTS: usize = 5;
/// The device id the tests sign in from.
pub const KIOSK: &str = "kiosk-07";

/// `pivtap server run` in the background, from a directory `pivtap server init`
/// wrote (trusting the fixture CA, with its own issuing CA and `[issuance]`).
/// Dropped, it kills the server.
pub struct RunningServer {
    /// The test's temporary directory; the server's files are in `server/`.
    pub dir: TempDir,
    /// The `pivtap server run` process.
    pub child: Child,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// The server's TLS certificate (`server/tls.crt`), which clients trust.
    pub ca: PathBuf,
    /// The admin token file (`server/admin.token`).
    pub token_file: PathBuf,
    /// What the server printed on standard output.
    pub stdout: PathBuf,
    /// What the server printed on standard error.
    pub stderr: PathBuf,
}

impl RunningServer {
    /// Initialises and starts a server, and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(|config| config)
    }

    /// Starts a server for load from loopback: every client sends from 127.0.0.1, so the
    /// per-address budgets for challenges and refusals, sized for real sites, are raised
    /// out of reach.
    pub fn start_for_load() -> Self {
        Self::start_with(unlimited_budgets)
    }

    /// Starts a server whose `server.toml` (as `init` wrote it) `edit` changes first.
    ///
    /// The origin written by `init` must name the real port, so a free port
    /// is found first (bind port 0, let go) and given to `--listen`. Should
    /// another process take it in between, the server exits with "address in
    /// use" and the next attempt takes another port.
    pub fn start_with(edit: impl Fn(String) -> String) -> Self {
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let port = free_port();
            let server_dir = dir.path().join("server");
            let listen = format!("127.0.0.1:{port}");
            let init = run(pivtap_command(&[
                "server",
                "init",
                path_str(&server_dir),
                "--trust",
                path_str(&fixture("ca/test-ca.pem")),
                "--listen",
                &listen,
            ]))
            .success("server init");
            assert!(init.stdout.contains("sha256//"), "{}", init.stdout);
            let stdout = dir.path().join("server.out");
            let stderr = dir.path().join("server.err");
            let config = server_dir.join("server.toml");
            let written = std::fs::read_to_string(&config).expect("server.toml");
            std::fs::write(&config, edit(written)).expect("server.toml is written");
            let child = pivtap_command(&["server", "run", "--config", path_str(&config)])
                .stdout(File::create(&stdout).expect("a log file"))
                .stderr(File::create(&stderr).expect("a log file"))
                .spawn()
                .expect("the server starts");
            let mut server = RunningServer {
                url: format!("https://{listen}"),
                ca: server_dir.join("tls.crt"),
                token_file: server_dir.join("admin.token"),
                dir,
                child,
                stdout,
                stderr,
            };
            if server.wait_until_listening(port) {
                return server;
            }
        }
        panic!("no free port on 127.0.0.1 after {PORT_ATTEMPTS} attempts");
    }

    /// True once the server said "listening" and accepts connections; false
    /// if it exited because the port was taken; panics on anything else.
    fn wait_until_listening(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("the server process is there") {
                let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                if log.contains("in use") {
                    return false;
                }
                panic!("the server exited ({status}):\n{log}");
            }
            let said_listening = std::fs::read_to_string(&self.stdout)
                .is_ok_and(|output| output.contains("listening"));
            if said_listening && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not start listening within {SERVER_TIMEOUT:?}");
    }

    /// `pivtap admin --server URL --ca tls.crt --token-file admin.token ARGS`
    pub fn admin(&self, args: &[&str]) -> Run {
        let mut command = pivtap_command(&[
            "admin",
            "--server",
            &self.url,
            "--ca",
            path_str(&self.ca),
            "--token-file",
            path_str(&self.token_file),
        ]);
        command.args(args);
        run(command)
    }

    /// `pivtap admin` without `--token-file`, with `PIVTAP_ADMIN_TOKEN` if given.
    pub fn admin_with_env_token(&self, token: Option<&str>, args: &[&str]) -> Run {
        let mut command =
            pivtap_command(&["admin", "--server", &self.url, "--ca", path_str(&self.ca)]);
        command.args(args);
        if let Some(token) = token {
            command.env("PIVTAP_ADMIN_TOKEN", token);
        }
        run(command)
    }

    /// `pivtap admin users add --id ID --name NAME --mail MAIL`, which must succeed.
    pub fn add_user(&self, id: &str, name: &str, mail: &str) {
        self.admin(&["users", "add", "--id", id, "--name", name, "--mail", mail])
            .success("users add");
    }

    /// A fresh enrollment code for `user` (`pivtap admin enroll USER --json`):
    /// (code, pivtap://enroll link).
    pub fn enrollment_code(&self, user: &str) -> (String, String) {
        let made = self
            .admin(&["enroll", user, "--json"])
            .success("admin enroll")
            .json();
        assert_eq!(made["user"]["id"], user, "{made}");
        let code = made["code"].as_str().expect("a code").to_owned();
        let url = made["url"].as_str().expect("a link").to_owned();
        (code, url)
    }

    /// A copy of the fixture card `cards/NAME.toml` in the test's directory.
    pub fn card_copy(&self, name: &str) -> PathBuf {
        card_copy_in(self.dir.path(), name)
    }

    /// The credential directory of `device`, registered and enrolled on first use
    /// ([`device_credential_in`]).
    pub fn device_credential(&self, device: &str) -> PathBuf {
        device_credential_in(self.dir.path(), device, &self.url, &self.ca, |args| {
            self.admin(args)
        })
    }

    /// `PIVTAP_PIN=PIN pivtap auth --server URL --ca tls.crt --vcard CARD --device kiosk-07
    /// --device-credential DIR --json`
    pub fn auth(&self, card: &Path, pin: &str) -> Run {
        self.auth_with(&["--vcard", path_str(card)], pin)
    }

    /// `pivtap auth` as [`Self::auth`] does, with the card named by `card_args`
    /// (`--vcard FILE`, or `--reader NAME` for a card in a PC/SC reader).
    pub fn auth_with(&self, card_args: &[&str], pin: &str) -> Run {
        let credential = self.device_credential(KIOSK);
        let mut command = pivtap_command(&[
            "auth",
            "--server",
            &self.url,
            "--ca",
            path_str(&self.ca),
            "--device",
            KIOSK,
            "--device-credential",
            path_str(&credential),
            "--json",
        ]);
        command.args(card_args).env("PIVTAP_PIN", pin);
        run(command)
    }

    /// Stops the server with SIGINT (Ctrl-C) and returns how it exited and what it printed.
    pub fn stop(&mut self) -> (ExitStatus, String) {
        let status = interrupt(&mut self.child, "the server", SERVER_TIMEOUT);
        let output = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        (status, output)
    }

    /// Starts the server again from its directory (after [`Self::stop`], or a
    /// restore into it), on the same port, and waits until it accepts connections.
    pub fn restart(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
        let config = self.dir.path().join("server/server.toml");
        self.child = pivtap_command(&["server", "run", "--config", path_str(&config)])
            .stdout(File::create(&self.stdout).expect("a log file"))
            .stderr(File::create(&self.stderr).expect("a log file"))
            .spawn()
            .expect("the server starts");
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the URL has a port");
        assert!(
            self.wait_until_listening(port),
            "the server's port {port} was taken while it was stopped"
        );
    }
}

impl Drop for RunningServer {
    /// A test that failed half-way leaves no server behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends SIGINT (as Ctrl-C does) to `child` and waits up to `wait` for it to exit;
/// panics, naming the process as `what`, when it cannot be signalled or does not stop.
pub fn interrupt(child: &mut Child, what: &str, wait: Duration) -> ExitStatus {
    let pid = child.id().to_string();
    let signalled = Command::new("sh")
        .args(["-c", "kill -INT \"$1\"", "sh", &pid])
        .status()
        .expect("sh runs kill");
    assert!(signalled.success(), "kill -INT {pid} failed");
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait().expect("the process is there") {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `server.toml` text with the per-address budgets of `[rate_limit]` at their maximum.
pub fn unlimited_budgets(config: String) -> String {
    let budgets = [
        "challenge_burst",
        "challenges_per_minute",
        "refusal_burst",
        "refusals_per_minute",
    ];
    let edited: Vec<String> = config
        .lines()
        .map(|line| {
            match budgets
                .iter()
                .find(|key| line.starts_with(&format!("{key} =")))
            {
                Some(key) => format!("{key} = 1000000"),
                None => line.to_owned(),
            }
        })
        .collect();
    assert!(
        budgets
            .iter()
            .all(|key| edited.contains(&format!("{key} = 1000000"))),
        "server.toml has every budget: {config}"
    );
    edited.join("\n") + "\n"
}

/// A copy of the fixture card `cards/NAME.toml` in `dir`.
pub fn card_copy_in(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.join(format!("{name}.toml"));
    std::fs::copy(fixture(&format!("cards/{name}.toml")), &copy).expect("copy the fixture card");
    copy
}

/// The credential directory of `device` (`DIR/devices/DEVICE/`), registered and enrolled on
/// first use as an administrator and the device would: `pivtap admin devices add DEVICE`
/// (through `admin`), then `pivtap kiosk enroll-device --server SERVER --ca CA --code CODE
/// --out DIR`.
pub fn device_credential_in(
    dir: &Path,
    device: &str,
    server: &str,
    ca: &Path,
    admin: impl Fn(&[&str]) -> Run,
) -> PathBuf {
    let dir = dir.join("devices").join(device);
    if dir.join("device.crt").exists() {
        return dir;
    }
    let added = admin(&["devices", "add", device, "--json"])
        .success("devices add")
        .json();
    let code = added["code"].as_str().expect("a device enrollment code");
    let enrolled = run(pivtap_command(&[
        "kiosk",
        "enroll-device",
        "--server",
        server,
        "--ca",
        path_str(ca),
        "--code",
        code,
        "--out",
        path_str(&dir),
        "--json",
    ]))
    .success("kiosk enroll-device")
    .json();
    assert_eq!(enrolled["device"], device, "{enrolled}");
    dir
}
