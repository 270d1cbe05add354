//! Several `pivtap server run` processes from one configuration directory on a fresh test PostgreSQL database, with HAProxy (scripts/haproxy) in front.

use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pivtap_testkit::postgres::FreshDatabase;
use tempfile::TempDir;

use super::{
    KIOSK, Run, SERVER_TIMEOUT, card_copy_in, device_credential_in, fixture, free_port, path_str,
    pivtap_command, run,
};

/// The local address HAProxy connects to the nodes from: the nodes trust it
/// (and only it) to send a PROXY header, so tests can still reach a node directly
/// from 127.0.0.1.
pub const BALANCER_SOURCE: &str = "127.0.0.2";

/// One `pivtap server run` process.
pub struct Node {
    /// The process.
    pub child: Child,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// Its port.
    pub port: u16,
    /// What it printed on standard output.
    pub stdout: PathBuf,
    /// What it printed on standard error.
    pub stderr: PathBuf,
}

/// `count` nodes from one `pivtap server init --store URL` directory whose store is a
/// [`FreshDatabase`], HAProxy in front of them. Dropped, it kills the nodes and
/// stops HAProxy (the database is dropped with it).
pub struct Nodes {
    /// The test's temporary directory: `server/` (the configuration), `haproxy/`, logs.
    pub dir: TempDir,
    /// The nodes' database.
    pub database: FreshDatabase,
    /// `server/server.toml`, shared by every node.
    pub config: PathBuf,
    /// The servers' TLS certificate, which clients trust.
    pub ca: PathBuf,
    /// The admin token file.
    pub token_file: PathBuf,
    /// The nodes, in the order HAProxy lists them.
    pub nodes: Vec<Node>,
    /// `https://127.0.0.1:PORT` of HAProxy (the configured origin).
    pub balancer: String,
    haproxy_dir: PathBuf,
}

impl Nodes {
    /// Initialises one configuration, points it at a fresh database, starts
    /// `count` nodes and HAProxy, and waits until HAProxy sees every node up.
    /// `edit` changes `server.toml` (as `init` wrote it) first.
    ///
    /// Ports are found free first (bind port 0, let go); should another process take
    /// one in between, everything is started again on new ports (up to
    /// [`super::PORT_ATTEMPTS`] times).
    pub fn start(count: usize, edit: impl Fn(String) -> String) -> Self {
        for _ in 0..super::PORT_ATTEMPTS {
            if let Some(nodes) = Self::try_start(count, &edit) {
                return nodes;
            }
        }
        panic!(
            "no free ports on 127.0.0.1 after {} attempts",
            super::PORT_ATTEMPTS
        );
    }

    /// [`Self::start`] once; `None` when a port was taken meanwhile.
    fn try_start(count: usize, edit: &impl Fn(String) -> String) -> Option<Self> {
        let database = FreshDatabase::create();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server_dir = dir.path().join("server");
        let balancer_port = free_port();
        let balancer_listen = format!("127.0.0.1:{balancer_port}");
        let password_file = dir.path().join("store.password");
        write_private(&password_file, database.password().expose());
        // The origin is the balancer's: clients see one service.
        run(pivtap_command(&[
            "server",
            "init",
            path_str(&server_dir),
            "--trust",
            path_str(&fixture("ca/test-ca.pem")),
            "--listen",
            &balancer_listen,
            "--store",
            database.url(),
            "--store-password-file",
            path_str(&password_file),
        ]))
        .success("server init --store");
        let config = server_dir.join("server.toml");
        let written = std::fs::read_to_string(&config).expect("server.toml");
        assert!(
            written.contains(&format!("url = \"{}\"", database.url())),
            "init wrote the store URL:\n{written}"
        );
        std::fs::write(&config, edit(trusting_balancer(&written))).expect("server.toml is written");
        let mut nodes = Self {
            ca: server_dir.join("tls.crt"),
            token_file: server_dir.join("admin.token"),
            config,
            haproxy_dir: dir.path().join("haproxy"),
            balancer: format!("https://{balancer_listen}"),
            nodes: Vec::new(),
            database,
            dir,
        };
        for index in 0..count {
            let node = nodes.spawn(index, free_port());
            nodes.nodes.push(node);
        }
        for index in 0..count {
            if !nodes.wait_until_listening(index) {
                return None;
            }
        }
        let mut args = vec![
            "start".to_owned(),
            path_str(&nodes.haproxy_dir).to_owned(),
            "--listen".to_owned(),
            balancer_listen,
            "--ca-file".to_owned(),
            path_str(&nodes.ca).to_owned(),
            "--source".to_owned(),
            BALANCER_SOURCE.to_owned(),
        ];
        for node in &nodes.nodes {
            args.push("--node".to_owned());
            args.push(format!("127.0.0.1:{}", node.port));
        }
        let started = haproxy(&args);
        let port_taken = started.stderr.contains("cannot bind socket")
            || started.stderr.contains("already listens");
        if started.code != 0 && port_taken {
            return None;
        }
        started.success("scripts/haproxy start");
        nodes.wait_for_balancer(count);
        Some(nodes)
    }

    fn spawn(&self, index: usize, port: u16) -> Node {
        let stdout = self.dir.path().join(format!("node{index}.out"));
        let stderr = self.dir.path().join(format!("node{index}.err"));
        let listen = format!("127.0.0.1:{port}");
        let child = pivtap_command(&[
            "server",
            "run",
            "--config",
            path_str(&self.config),
            "--listen",
            &listen,
        ])
        .stdout(File::create(&stdout).expect("a log file"))
        .stderr(File::create(&stderr).expect("a log file"))
        .spawn()
        .expect("the server starts");
        Node {
            child,
            url: format!("https://{listen}"),
            port,
            stdout,
            stderr,
        }
    }

    /// True once node `index` listens; false when its port was taken.
    fn wait_until_listening(&mut self, index: usize) -> bool {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        let node = &mut self.nodes[index];
        while Instant::now() < deadline {
            if let Some(status) = node.child.try_wait().expect("the node process is there") {
                let log = std::fs::read_to_string(&node.stderr).unwrap_or_default();
                if log.contains("in use") {
                    return false;
                }
                panic!("node {index} exited ({status}):\n{log}");
            }
            let said_listening = std::fs::read_to_string(&node.stdout)
                .is_ok_and(|output| output.contains("listening"));
            if said_listening && TcpStream::connect((Ipv4Addr::LOCALHOST, node.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {index} did not start listening within {SERVER_TIMEOUT:?}");
    }

    /// Waits until HAProxy has exactly `up` nodes UP.
    pub fn wait_for_balancer(&self, up: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = haproxy(&["status", path_str(&self.haproxy_dir), "--json"]);
            let counted = serde_json::from_str::<serde_json::Value>(&status.stdout)
                .ok()
                .and_then(|status| {
                    status["nodes"].as_array().map(|nodes| {
                        nodes
                            .iter()
                            .filter(|node| node["state"].as_str().is_some_and(|s| s == "UP"))
                            .count()
                    })
                });
            if counted == Some(up) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not see {up} nodes up: {}{}",
                status.stdout,
                status.stderr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `pivtap admin --server URL ...` against `url` (a node's, or the balancer's).
    pub fn admin(&self, url: &str, args: &[&str]) -> Run {
        let mut command = pivtap_command(&[
            "admin",
            "--server",
            url,
            "--ca",
            path_str(&self.ca),
            "--token-file",
            path_str(&self.token_file),
        ]);
        command.args(args);
        run(command)
    }

    /// A copy of the fixture card `cards/NAME.toml` in the test's directory.
    pub fn card_copy(&self, name: &str) -> PathBuf {
        card_copy_in(self.dir.path(), name)
    }

    /// The credential directory of `device`, registered and enrolled (through the balancer) on
    /// first use ([`device_credential_in`]).
    pub fn device_credential(&self, device: &str) -> PathBuf {
        device_credential_in(self.dir.path(), device, &self.balancer, &self.ca, |args| {
            self.admin(&self.balancer, args)
        })
    }

    /// `PIVTAP_PIN=PIN pivtap auth --server URL --vcard CARD --device DEVICE ... --json`.
    pub fn auth(&self, url: &str, device: &str, card: &Path, pin: &str) -> Run {
        let credential = self.device_credential(device);
        let mut command = pivtap_command(&[
            "auth",
            "--server",
            url,
            "--ca",
            path_str(&self.ca),
            "--device",
            device,
            "--device-credential",
            path_str(&credential),
            "--vcard",
            path_str(card),
            "--json",
        ]);
        command.env("PIVTAP_PIN", pin);
        run(command)
    }

    /// [`Self::auth`] from the usual kiosk.
    pub fn auth_kiosk(&self, url: &str, card: &Path, pin: &str) -> Run {
        self.auth(url, KIOSK, card, pin)
    }

    /// SIGKILLs node `index`: no graceful shutdown, connections cut.
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.child.kill().expect("the node is killed");
        node.child.wait().expect("the node is reaped");
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if matches!(node.child.try_wait(), Ok(None)) {
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        }
        let _ = haproxy(&["stop", path_str(&self.haproxy_dir)]);
    }
}

/// Runs scripts/haproxy with `args` to the end.
pub fn haproxy<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/haproxy"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("scripts/haproxy runs");
    Run::from_output(output)
}

/// `server.toml` as `init` wrote it, trusting [`BALANCER_SOURCE`] to send PROXY headers.
pub fn trusting_balancer(config: &str) -> String {
    let trusted = format!("proxy_protocol_from = [\"{BALANCER_SOURCE}\"]");
    let written_by_init = config.contains("\nproxy_protocol_from =");
    let mut edited: Vec<String> = Vec::new();
    for line in config.lines() {
        if line.starts_with("proxy_protocol_from =") {
            edited.push(trusted.clone());
            continue;
        }
        edited.push(line.to_owned());
        if line == "[connections]" && !written_by_init {
            edited.push(trusted.clone());
        }
    }
    assert!(
        edited.contains(&trusted),
        "init wrote no [connections]:\n{config}"
    );
    edited.join("\n") + "\n"
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("the password file is created");
    writeln!(file, "{text}").expect("the password file is written");
}
