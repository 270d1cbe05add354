//! Helpers shared by the end-to-end tests of the `pivtap` binary: running it with a clean environment and checking what it did.
// Each test crate uses only some of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

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
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs a prepared command to the end.
pub fn run(mut command: Command) -> Run {
    Run::from_output(command.output().expect("the pivtap binary runs"))
}

/// A path under the repository's `fixtures/`.
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(relative)
}

/// A test path as text.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
