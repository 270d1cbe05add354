//! The system pcscd with the vsmartcard vpcd driver: its two readers and their ports, the pcscd lock every test that uses them takes, and virtual cards in those readers.
//!
//! The machine has one pcscd, and vpcd gives it two readers. Any test that
//! attaches cards to them, or restarts pcscd, first takes its turn with
//! [`pcscd_turn`]; the turn is held until the returned [`PcscdTurn`] drops.
//! These tests fail (never skip) when pcscd or vpcd is missing, so CI
//! (`CI=true`, `scripts/test`) cannot pass without them.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pivtap_card::pcsc::{PcscContext, ReaderInfo};
use pivtap_vcard::VirtualCardBackend;
use pivtap_vcard::vpcd::{Attachment, AttachmentSummary, Detacher, VpcdError};

/// A vpcd reader as pcscd lists it, and the loopback port a card attaches to it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpcdReader {
    /// The reader's name in pcscd.
    pub name: &'static str,
    /// The port of `127.0.0.1` vpcd listens on for this reader's card.
    pub port: u16,
}

impl VpcdReader {
    /// The port as command-line text (`pivtap vcard attach --port`).
    #[must_use]
    pub fn port_arg(&self) -> String {
        self.port.to_string()
    }

    /// The address a card attaches to.
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// The first vpcd reader.
pub const VPCD_READER_0: VpcdReader = VpcdReader {
    name: "Virtual PCD 00 00",
    port: 35963,
};
/// The second vpcd reader.
pub const VPCD_READER_1: VpcdReader = VpcdReader {
    name: "Virtual PCD 00 01",
    port: 35964,
};
/// Both vpcd readers, in pcscd's order.
pub const VPCD_READERS: [VpcdReader; 2] = [VPCD_READER_0, VPCD_READER_1];
/// What every vpcd reader's name contains (a reader filter that keeps only them).
pub const VPCD_NAME: &str = "Virtual PCD";

/// The lock file of pcscd's turns, across test binaries and the lead's
/// `flock /tmp/pivtap-pcscd.lock cargo test ...` runs.
pub const PCSCD_LOCK: &str = "/tmp/pivtap-pcscd.lock";

/// How long pcscd may take to notice that a card left a reader before a turn gives up.
const EMPTY_WAIT: Duration = Duration::from_secs(5);
/// How often pcscd looks for cards coming and going in the vpcd readers (at most), with
/// some margin.
pub const PCSCD_POLL: Duration = Duration::from_millis(600);

/// Turns of the tests in this process (one test binary runs its tests on threads).
static TURNS: Mutex<()> = Mutex::new(());

/// One test's turn on pcscd and the vpcd readers; the turn ends when it drops.
#[must_use = "the turn ends when this is dropped"]
pub struct PcscdTurn {
    /// The flock on [`PCSCD_LOCK`], unless this process already holds it by inheritance.
    _lock: Option<File>,
    _turn: MutexGuard<'static, ()>,
}

/// Takes this test's turn on pcscd, then checks that pcscd answers and lists every reader
/// in `readers` empty, waiting a little for a card that just left: a card that leaves
/// takes pcscd about 0.4 s to notice, and one attached before pcscd has is never seen.
///
/// The turn is an exclusive `flock` on [`PCSCD_LOCK`], so test binaries (several
/// `cargo test` at once) take turns, plus a lock for the tests of this process. A process
/// started under `flock /tmp/pivtap-pcscd.lock cargo test ...` inherits the lock's file
/// descriptor: the lock is then already its own, and only the tests of this process take
/// turns (taking it again would wait for ever on the `flock` command).
///
/// # Panics
///
/// When pcscd is not reachable, when a reader of `readers` is missing (vpcd is not
/// installed), or when one still holds a card after 5 s (another program is attached):
/// these tests fail, never skip.
pub fn pcscd_turn(readers: &[VpcdReader]) -> PcscdTurn {
    let turn = TURNS.lock().unwrap_or_else(PoisonError::into_inner);
    let lock = if lock_inherited() {
        None
    } else {
        Some(take_lock())
    };
    let context = context();
    let deadline = Instant::now() + EMPTY_WAIT;
    loop {
        let occupied: Vec<ReaderInfo> = reader_states(&context, readers)
            .into_iter()
            .filter(|reader| reader.card_present)
            .collect();
        if occupied.is_empty() {
            return PcscdTurn {
                _lock: lock,
                _turn: turn,
            };
        }
        assert!(
            Instant::now() < deadline,
            "a card stays in a vpcd reader ({occupied:?}): is another program attached to \
             vpcd (`pivtap vcard attach`)? Stop it first"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether this process inherited an open descriptor of [`PCSCD_LOCK`] (from `flock(1)`).
fn lock_inherited() -> bool {
    !inherited_lock_descriptors().is_empty()
}

/// The numbers of this process's open descriptors of [`PCSCD_LOCK`]: those `flock(1)`
/// passed down (this crate's own are close-on-exec).
fn inherited_lock_descriptors() -> Vec<String> {
    let Ok(descriptors) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    descriptors
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_link(entry.path()).is_ok_and(|target| target == Path::new(PCSCD_LOCK))
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Opens [`PCSCD_LOCK`] and waits for an exclusive `flock` on it.
fn take_lock() -> File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PCSCD_LOCK)
        .unwrap_or_else(|error| panic!("cannot open the pcscd lock {PCSCD_LOCK}: {error}"));
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|error| panic!("cannot lock {PCSCD_LOCK}: {error}"));
    file
}

/// Fails the test: pcscd does not answer.
#[track_caller]
pub fn pcscd_unreachable(error: &dyn std::fmt::Display) -> ! {
    panic!(
        "pcscd is not reachable ({error}): these tests need the system pcscd with the vsmartcard \
         vpcd driver (Debian packages pcscd and vsmartcard-vpcd; scripts/setup-debian)"
    )
}

/// A PC/SC context on the system pcscd; fails the test without pcscd.
#[must_use]
pub fn context() -> PcscContext {
    PcscContext::establish().unwrap_or_else(|error| pcscd_unreachable(&error))
}

/// Every reader pcscd lists; fails the test without pcscd.
#[must_use]
pub fn list_readers(context: &PcscContext) -> Vec<ReaderInfo> {
    context
        .list_readers()
        .unwrap_or_else(|error| pcscd_unreachable(&error))
}

/// The state of each of `readers` as pcscd lists them; fails the test without pcscd or
/// when one is missing (vpcd is not installed).
#[must_use]
pub fn reader_states(context: &PcscContext, readers: &[VpcdReader]) -> Vec<ReaderInfo> {
    let listed = list_readers(context);
    readers
        .iter()
        .map(|wanted| {
            listed
                .iter()
                .find(|reader| reader.name == wanted.name)
                .cloned()
                .unwrap_or_else(|| {
                    panic!(
                        "pcscd has no reader {:?}: is vsmartcard-vpcd installed? Listed: {listed:?}",
                        wanted.name
                    )
                })
        })
        .collect()
}

/// Waits up to `wait` until pcscd reports `reader` with a card (`present`) or without one.
pub fn wait_for_reader(context: &PcscContext, reader: VpcdReader, present: bool, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let state = reader_states(context, &[reader])
            .first()
            .is_some_and(|info| info.card_present);
        if state == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pcscd did not see {:?} {} within {wait:?} (is another program attached to vpcd?)",
            reader.name,
            if present { "take a card" } else { "empty" }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The process id of the system pcscd, if it runs.
#[must_use]
pub fn pcscd_pid() -> Option<String> {
    let output = Command::new("pgrep").args(["-x", "pcscd"]).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().next().map(str::to_owned)
}

/// Stops the system pcscd by its process id and waits until it is gone (needs root).
pub fn stop_pcscd() {
    let pid = pcscd_pid().expect("pcscd is running");
    let status = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "cannot stop pcscd {pid} ({status:?}): this test restarts the system pcscd and needs root"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pcscd_pid().is_some() {
        assert!(Instant::now() < deadline, "pcscd did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts pcscd as `scripts/setup-debian` does (it forks into the background).
pub fn start_pcscd() {
    let status = spawn_pcscd();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "cannot start pcscd: {status:?}"
    );
}

/// Runs `pcscd` (which forks into the background) without the descriptors of
/// [`PCSCD_LOCK`] this process inherited from `flock(1)`: the daemon would keep them
/// open, and with them the lock, for as long as it runs.
fn spawn_pcscd() -> std::io::Result<std::process::ExitStatus> {
    without_lock_descriptors("pcscd").status()
}

/// A shell running `program` with this process's descriptors of [`PCSCD_LOCK`] closed.
fn without_lock_descriptors(program: &str) -> Command {
    let closed: String = inherited_lock_descriptors()
        .iter()
        .map(|fd| format!(" {fd}>&-"))
        .collect();
    let mut command = Command::new("sh");
    command.args(["-c", &format!("exec {program}{closed}")]);
    command
}

/// Starts pcscd again on drop if it is not running: a test that failed while it had
/// stopped pcscd leaves it running.
pub struct PcscdBack;

impl Drop for PcscdBack {
    fn drop(&mut self) {
        if pcscd_pid().is_none() {
            let _ = spawn_pcscd();
        }
    }
}

/// A virtual card in a vpcd reader, served by a thread of this test process; taken out
/// on drop.
pub struct InReader {
    reader: VpcdReader,
    /// The card as it is served (it shares its state with the reader's copy).
    backend: VirtualCardBackend,
    detacher: Detacher,
    serving: Option<JoinHandle<Result<AttachmentSummary, VpcdError>>>,
}

impl InReader {
    /// Puts `card` into `reader`; fails the test when vpcd does not answer.
    #[must_use]
    pub fn attach(card: &VirtualCardBackend, reader: VpcdReader) -> Self {
        Self::attach_within(card, reader, Duration::ZERO)
    }

    /// Puts `card` into `reader`, trying again for `patience` while vpcd does not listen
    /// yet (it restarts with pcscd).
    #[must_use]
    pub fn attach_within(
        card: &VirtualCardBackend,
        reader: VpcdReader,
        patience: Duration,
    ) -> Self {
        let deadline = Instant::now() + patience;
        let (attachment, detacher) = loop {
            match Attachment::connect(reader.address()) {
                Ok(connected) => break connected,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!(
                    "cannot attach a card to {:?} through vpcd ({error}): is vsmartcard-vpcd \
                     installed?",
                    reader.name
                ),
            }
        };
        let backend = card.clone();
        let served = card.clone();
        let serving = std::thread::spawn(move || attachment.serve(&served));
        InReader {
            reader,
            backend,
            detacher,
            serving: Some(serving),
        }
    }

    /// The reader the card is in.
    #[must_use]
    pub fn reader(&self) -> VpcdReader {
        self.reader
    }

    /// Takes the card out of the reader, checks that serving it ended cleanly, and
    /// returns it (with what the reader did to it).
    pub fn take_out(&mut self) -> VirtualCardBackend {
        self.detacher.detach();
        let serving = self.serving.take().map(JoinHandle::join);
        assert!(
            matches!(
                serving,
                Some(Ok(Ok(AttachmentSummary { detached: true, .. })))
            ),
            "vpcd serving ended badly: {serving:?}"
        );
        self.backend.clone()
    }
}

impl Drop for InReader {
    /// A card left in its reader (a test failed, or it simply ends) is taken out, and
    /// pcscd is given the time to notice before another test attaches a card: vpcd does
    /// not notice a new card attached before pcscd saw the last one go.
    fn drop(&mut self) {
        if let Some(serving) = self.serving.take() {
            self.detacher.detach();
            let _ = serving.join();
            std::thread::sleep(PCSCD_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ls -l /proc/self/fd` shows of the process `command` runs.
    fn descriptors_of(mut command: Command) -> String {
        let output = command.output().expect("sh runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A daemon started under `flock /tmp/pivtap-pcscd.lock` must not keep the lock: the
    /// lock file open as `flock(1)` leaves it (inherited, not close-on-exec) reaches a
    /// plain child, and not one started without the lock's descriptors. No lock is taken.
    #[test]
    fn pcscd_is_started_without_the_inherited_lock() {
        let inherited = rustix::fs::open(
            PCSCD_LOCK,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CREATE,
            rustix::fs::Mode::from_raw_mode(0o666),
        )
        .expect("the lock file opens");
        assert!(lock_inherited());
        let mut plain = Command::new("sh");
        plain.args(["-c", "exec ls -l /proc/self/fd"]);
        assert!(descriptors_of(plain).contains(PCSCD_LOCK));
        let cleaned = descriptors_of(without_lock_descriptors("ls -l /proc/self/fd"));
        assert!(!cleaned.contains(PCSCD_LOCK), "{cleaned}");
        drop(inherited);
    }
}
