//! Sign-outs the server has not heard of yet: kept in a small file as `{session_id, reason, time}` only, and sent again with a back-off until the server answers.
//!
//! Every sign-out the kiosk reports is written here first and removed once the server
//! answered it (recorded, or already ended: both are answers), so a kiosk stopped or crashed
//! while the server was unreachable still delivers it after its restart. The file holds no
//! token and no user: a retry proves itself with the session id and a fresh proof of the
//! device's own credential, which the server accepts until the session's maximum age. The
//! file is written crash-safely (a new file renamed over the old) with mode `0600`.
//!
//! Retries wait 2 s, 4 s, 8 s, ... at most [`LONGEST_RETRY`]; an entry older than
//! [`GIVE_UP_AFTER`] is past any session's maximum age and dropped. At most [`MOST_KEPT`]
//! entries are kept (the oldest go first).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The longest wait between two attempts.
pub const LONGEST_RETRY: Duration = Duration::from_secs(300);
/// An entry this old is dropped: no session lives that long.
pub const GIVE_UP_AFTER: time::Duration = time::Duration::days(30);
/// The most entries kept.
pub const MOST_KEPT: usize = 1000;
/// The file's name unless configured otherwise (beside `kiosk.toml`).
pub const DEFAULT_FILE: &str = "pending-sign-outs.json";
/// The largest file read.
const FILE_MAX_BYTES: u64 = 1 << 20;

/// One sign-out to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingSignOut {
    /// The server's session id.
    pub session_id: String,
    /// Why it ended, as sent (`card_removed`, `idle`, ...).
    pub reason: String,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PendingSignOutsError {
    /// Reading failed.
    #[error("cannot read the pending sign-outs file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a list of pending sign-outs (it is replaced at the next write).
    #[error("the pending sign-outs file {} is not a list of sign-outs", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
    },
    /// Writing failed: the sign-out is kept in memory only.
    #[error("cannot write the pending sign-outs file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    sign_out: PendingSignOut,
    failures: u32,
    next_attempt: Instant,
    in_flight: bool,
}

/// The sign-outs still to deliver, and where they are kept.
#[derive(Debug)]
pub struct PendingSignOuts {
    entries: Vec<Entry>,
    file: Option<PathBuf>,
}

impl PendingSignOuts {
    /// A list kept in memory only (a kiosk without a state file).
    #[must_use]
    pub fn in_memory() -> Self {
        PendingSignOuts {
            entries: Vec::new(),
            file: None,
        }
    }

    /// The list kept in `path`, with what it holds (a missing file is an empty list); every
    /// entry is due at `now`.
    ///
    /// # Errors
    /// [`PendingSignOutsError::Read`] or [`PendingSignOutsError::Invalid`]; the caller may
    /// go on with [`PendingSignOuts::empty_at`] (the file is replaced at the next write).
    pub fn load(path: &Path, now: Instant) -> Result<Self, PendingSignOutsError> {
        let read_error = |source| PendingSignOutsError::Read {
            path: path.to_owned(),
            source,
        };
        let text = match std::fs::File::open(path) {
            Ok(file) => {
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(file, FILE_MAX_BYTES),
                    &mut text,
                )
                .map_err(read_error)?;
                text
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(read_error(error)),
        };
        let sign_outs: Vec<PendingSignOut> = if text.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&text).map_err(|_| PendingSignOutsError::Invalid {
                path: path.to_owned(),
            })?
        };
        let mut list = PendingSignOuts::empty_at(path);
        list.entries = sign_outs
            .into_iter()
            .map(|sign_out| Entry {
                sign_out,
                failures: 0,
                next_attempt: now,
                in_flight: false,
            })
            .collect();
        Ok(list)
    }

    /// An empty list kept in `path` (nothing is read).
    #[must_use]
    pub fn empty_at(path: &Path) -> Self {
        PendingSignOuts {
            entries: Vec::new(),
            file: Some(path.to_owned()),
        }
    }

    /// Adds a sign-out (it is being sent now: not due until it fails) and writes the file.
    ///
    /// # Errors
    /// [`PendingSignOutsError::Write`]: it is kept in memory.
    pub fn add(
        &mut self,
        sign_out: PendingSignOut,
        now: Instant,
    ) -> Result<(), PendingSignOutsError> {
        self.entries
            .retain(|entry| entry.sign_out.session_id != sign_out.session_id);
        self.entries.push(Entry {
            sign_out,
            failures: 0,
            next_attempt: now,
            in_flight: true,
        });
        let excess = self.entries.len().saturating_sub(MOST_KEPT);
        self.entries.drain(..excess);
        self.save()
    }

    /// The sign-outs due at `now` (each marked under way until [`PendingSignOuts::answered`]
    /// or [`PendingSignOuts::failed`]); those older than [`GIVE_UP_AFTER`] at `wall` are
    /// dropped first (and the file written, if any went).
    ///
    /// # Errors
    /// [`PendingSignOutsError::Write`] when dropping old ones could not be written (the due
    /// ones are still handed out: call again to get them).
    pub fn due(
        &mut self,
        now: Instant,
        wall: OffsetDateTime,
    ) -> Result<Vec<PendingSignOut>, PendingSignOutsError> {
        let before = self.entries.len();
        self.entries
            .retain(|entry| wall - entry.sign_out.time < GIVE_UP_AFTER);
        let saved = if self.entries.len() == before {
            Ok(())
        } else {
            self.save()
        };
        let due = self
            .entries
            .iter_mut()
            .filter(|entry| !entry.in_flight && entry.next_attempt <= now)
            .map(|entry| {
                entry.in_flight = true;
                entry.sign_out.clone()
            })
            .collect();
        saved.map(|()| due)
    }

    /// The server answered the sign-out of `session_id`: it is removed and the file written.
    ///
    /// # Errors
    /// [`PendingSignOutsError::Write`].
    pub fn answered(&mut self, session_id: &str) -> Result<(), PendingSignOutsError> {
        let before = self.entries.len();
        self.entries
            .retain(|entry| entry.sign_out.session_id != session_id);
        if self.entries.len() == before {
            return Ok(());
        }
        self.save()
    }

    /// The sign-out of `session_id` did not reach the server: tried again after a back-off.
    pub fn failed(&mut self, session_id: &str, now: Instant) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|entry| entry.sign_out.session_id == session_id)
        {
            entry.in_flight = false;
            let delay = Duration::from_secs(2u64 << entry.failures.min(8));
            entry.failures = entry.failures.saturating_add(1);
            entry.next_attempt = now + delay.min(LONGEST_RETRY);
        }
    }

    /// The sign-outs kept.
    #[must_use]
    pub fn sign_outs(&self) -> Vec<PendingSignOut> {
        self.entries
            .iter()
            .map(|entry| entry.sign_out.clone())
            .collect()
    }

    /// When the next one not under way is due.
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|entry| !entry.in_flight)
            .map(|entry| entry.next_attempt)
            .min()
    }

    fn save(&self) -> Result<(), PendingSignOutsError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let sign_outs = self.sign_outs();
        let mut json = serde_json::to_vec_pretty(&sign_outs).unwrap_or_else(|_| b"[]".to_vec());
        json.push(b'\n');
        pivtap_files::write_atomically(path, &json, pivtap_files::PRIVATE_FILE_MODE).map_err(
            |source| PendingSignOutsError::Write {
                path: path.clone(),
                source,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_out(id: &str, time: OffsetDateTime) -> PendingSignOut {
        PendingSignOut {
            session_id: id.to_owned(),
            reason: "card_removed".to_owned(),
            time,
        }
    }

    fn wall() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap()
    }

    #[test]
    fn a_failed_sign_out_is_retried_with_a_growing_pause_until_answered() {
        let start = Instant::now();
        let mut list = PendingSignOuts::in_memory();
        list.add(sign_out("s1", wall()), start).unwrap();
        // Being sent: not due again until it fails.
        assert!(list.due(start, wall()).unwrap().is_empty());
        let mut now = start;
        let mut pauses = Vec::new();
        for _ in 0..10 {
            list.failed("s1", now);
            let next = list.next_due().unwrap();
            pauses.push((next - now).as_secs());
            assert!(
                list.due(next - Duration::from_millis(1), wall())
                    .unwrap()
                    .is_empty()
            );
            now = next;
            assert_eq!(list.due(now, wall()).unwrap(), vec![sign_out("s1", wall())]);
        }
        assert_eq!(pauses, vec![2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        list.answered("s1").unwrap();
        assert!(list.sign_outs().is_empty());
        assert_eq!(list.next_due(), None);
    }

    #[test]
    fn sign_outs_older_than_thirty_days_are_dropped() {
        let start = Instant::now();
        let mut list = PendingSignOuts::in_memory();
        list.add(sign_out("old", wall() - time::Duration::days(30)), start)
            .unwrap();
        list.add(sign_out("young", wall() - time::Duration::days(29)), start)
            .unwrap();
        list.failed("old", start);
        list.failed("young", start);
        let due = list.due(start + LONGEST_RETRY, wall()).unwrap();
        assert_eq!(
            due,
            vec![sign_out("young", wall() - time::Duration::days(29))]
        );
        assert_eq!(list.sign_outs().len(), 1);
    }

    #[test]
    fn the_file_survives_a_restart_holds_no_secret_and_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(DEFAULT_FILE);
        let start = Instant::now();
        let mut list = PendingSignOuts::load(&path, start).unwrap();
        assert!(list.sign_outs().is_empty());
        list.add(sign_out("s1", wall()), start).unwrap();
        list.add(sign_out("s2", wall()), start).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let stored: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        for entry in &stored {
            let mut keys: Vec<&str> = entry
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            assert_eq!(keys, ["reason", "session_id", "time"]);
        }
        // A new kiosk reads them back, all due at once.
        let later = start + Duration::from_secs(1);
        let mut restarted = PendingSignOuts::load(&path, later).unwrap();
        assert_eq!(
            restarted.due(later, wall()).unwrap(),
            vec![sign_out("s1", wall()), sign_out("s2", wall())]
        );
        restarted.answered("s1").unwrap();
        let again = PendingSignOuts::load(&path, later).unwrap();
        assert_eq!(again.sign_outs(), vec![sign_out("s2", wall())]);
    }

    #[test]
    fn a_garbled_file_is_refused_and_replaced_at_the_next_write() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(DEFAULT_FILE);
        std::fs::write(&path, "not json").unwrap();
        let start = Instant::now();
        assert!(matches!(
            PendingSignOuts::load(&path, start),
            Err(PendingSignOutsError::Invalid { .. })
        ));
        let mut list = PendingSignOuts::empty_at(&path);
        list.add(sign_out("s1", wall()), start).unwrap();
        let again = PendingSignOuts::load(&path, start).unwrap();
        assert_eq!(again.sign_outs(), vec![sign_out("s1", wall())]);
    }

    #[test]
    fn no_more_than_the_most_kept_are_kept_the_oldest_going_first() {
        let start = Instant::now();
        let mut list = PendingSignOuts::in_memory();
        for index in 0..=MOST_KEPT {
            list.add(sign_out(&format!("s{index}"), wall()), start)
                .unwrap();
        }
        let kept = list.sign_outs();
        assert_eq!(kept.len(), MOST_KEPT);
        assert_eq!(kept[0].session_id, "s1");
    }
}
