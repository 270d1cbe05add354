//! `scripts/postgres` as a test set-up and a person use it: start, url, status, stop, start again, and its refusals of bad input.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pivtap_testkit::postgres;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres")
}

fn run(args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .output()
        .expect("scripts/postgres runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

/// A cluster directory, its cluster stopped when the test ends (passed or not).
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn path(&self) -> &str {
        self.dir.path().to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _stopped = run(&["stop", self.path()]);
    }
}

#[test]
fn start_url_status_stop_and_start_again() {
    let cluster = Cluster {
        dir: tempfile::tempdir().expect("a temporary directory"),
    };
    let dir = cluster.path();

    let started = run(&["start", dir, "--no-fsync"]);
    assert_eq!(code(&started), Some(0), "{}", text(&started.stderr));
    let url = text(&started.stdout).trim().to_owned();
    let port = std::fs::read_to_string(cluster.dir.path().join("port")).expect("the port file");
    assert_eq!(
        url,
        format!(
            "postgres://pivtap@127.0.0.1:{}/pivtap?sslmode=verify-full&sslrootcert={dir}/ca.crt",
            port.trim()
        )
    );

    // The password: a file only its owner reads, never in what the script says.
    let password_file = cluster.dir.path().join("password");
    let mode = std::fs::metadata(&password_file)
        .expect("the password file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (_, password) = postgres::locate(
        Some(url.clone().into()),
        Some(password_file.clone().into_os_string()),
    )
    .expect("the password");
    let said = format!("{}{}", text(&started.stdout), text(&started.stderr));
    assert!(
        !said.contains(password.expose()),
        "the password was printed"
    );

    // verify-full against the cluster's CA, as the role pivtap.
    assert_eq!(
        postgres::psql(&url, &password, "SELECT current_user"),
        "pivtap"
    );

    // Starting again changes nothing; url says the same, and where the password is.
    let again = run(&["start", dir]);
    assert_eq!(code(&again), Some(0), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout).trim(), url);
    assert!(
        text(&again.stderr).contains("already running"),
        "{}",
        text(&again.stderr)
    );
    let moved = run(&["start", dir, "--port", "1025"]);
    assert_eq!(code(&moved), Some(1));
    assert!(
        text(&moved.stderr).contains("stop it first"),
        "{}",
        text(&moved.stderr)
    );
    let asked = run(&["url", dir]);
    assert_eq!(text(&asked.stdout).trim(), url);
    assert!(
        text(&asked.stderr).contains(&format!("{dir}/password")),
        "{}",
        text(&asked.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["url", dir, "--json"]).stdout).expect("url --json");
    assert_eq!(json["url"], url.as_str());
    assert_eq!(json["password_file"], format!("{dir}/password").as_str());
    assert_eq!(code(&run(&["status", dir])), Some(0));

    // Stopped: status says so, a second stop is fine, a new start keeps port and password.
    let stopped = run(&["stop", dir]);
    assert_eq!(code(&stopped), Some(0), "{}", text(&stopped.stderr));
    assert_eq!(code(&run(&["status", dir])), Some(3));
    assert_eq!(code(&run(&["stop", dir])), Some(0));
    let restarted = run(&["start", dir]);
    assert_eq!(code(&restarted), Some(0), "{}", text(&restarted.stderr));
    assert_eq!(text(&restarted.stdout).trim(), url);
    assert_eq!(postgres::psql(&url, &password, "SELECT 1"), "1");
    let refused = Command::new("psql")
        .args(["-X", "-d", &url, "-c", "SELECT 1"])
        .env("PGPASSWORD", "0000")
        .output()
        .expect("psql runs");
    assert!(!refused.status.success(), "a wrong password let psql in");
}

#[test]
fn bad_input_is_refused_and_leaves_the_directory_alone() {
    let nothing = run(&[]);
    assert_eq!(code(&nothing), Some(2));
    assert!(text(&nothing.stderr).contains("start, stop, url or status"));
    assert_eq!(code(&run(&["start"])), Some(2));
    assert_eq!(code(&run(&["start", "/tmp/x", "--port", "80"])), Some(2));
    assert_eq!(code(&run(&["url", "/tmp/x", "--no-fsync"])), Some(2));
    assert_eq!(code(&run(&["frob", "/tmp/x"])), Some(2));
    let help = run(&["--help"]);
    assert_eq!(code(&help), Some(0));
    assert!(text(&help.stdout).contains("Examples:"));

    // A directory holding something else is not made into a cluster.
    let other = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(other.path().join("notes"), "mine").expect("a file");
    let path = other.path().to_str().expect("UTF-8");
    let refused = run(&["start", path]);
    assert_eq!(code(&refused), Some(1));
    assert!(
        text(&refused.stderr).contains("not empty and holds no cluster"),
        "{}",
        text(&refused.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(other.path())
        .expect("the directory")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert_eq!(left, ["notes"]);
    for command in ["stop", "url", "status"] {
        let output = run(&[command, path]);
        assert_eq!(code(&output), Some(1), "{command}");
        assert!(
            text(&output.stderr).contains("no cluster in"),
            "{command}: {}",
            text(&output.stderr)
        );
    }
    let file = other.path().join("notes");
    let not_a_directory = run(&["start", file.to_str().expect("UTF-8")]);
    assert_eq!(code(&not_a_directory), Some(1));
    assert!(text(&not_a_directory.stderr).contains("is not a directory"));
    assert_eq!(std::fs::read_to_string(&file).expect("the file"), "mine");
    let spaced = run(&["start", "/tmp/a b"]);
    assert_eq!(code(&spaced), Some(1));
    assert!(text(&spaced.stderr).contains("URL would need escaped"));
}
