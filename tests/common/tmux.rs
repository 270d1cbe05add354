//! Drives a command in a tmux session, as a person at a terminal would: keys in, screen text out.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Sessions started by this test binary so far (each gets its own name).
static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// A tmux session running one command on a 100×30 terminal; killed when dropped.
pub struct Tmux {
    session: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a new detached session.
    pub fn start(command: &str) -> Self {
        let session = format!(
            "pivtap-test-{}-{}",
            std::process::id(),
            SESSIONS.fetch_add(1, Ordering::Relaxed)
        );
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", "100", "-y", "30", command])
            .status()
            .unwrap_or_else(|e| panic!("tmux is needed for this test (apt-get install tmux; scripts/setup-debian does): {e}"));
        assert!(status.success(), "tmux new-session failed");
        Tmux { session }
    }

    /// Types `keys` (tmux key names, such as `Enter` or `F1`, or text).
    pub fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The text on the screen now.
    pub fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits (at most 10 s) until the screen shows `text`.
    pub fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {text:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}
