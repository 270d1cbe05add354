//! Bounded soak: several kiosks (the headless runtime, in this process, each with its own in-process virtual reader and badge) sign workers in and out in a loop against one `pivtap server run` process on loopback; zero unexpected errors, flat memory, and the counts of taps, sign-ins, sign-outs and audit records agree.
//!
//! A second test kills `pivtap server run` with SIGKILL under the kiosks and starts it again.
//!
//! `cargo test --test soak` runs the short form (30 s, 3 kiosks) that CI runs; `scripts/soak`
//! runs it longer. `PIVTAP_SOAK_SECONDS` and `PIVTAP_SOAK_KIOSKS` set the length and the
//! number of kiosks. The figures (taps, sign-ins per second, tap-to-signed-in median and p99,
//! resident memory of this process and of the server, first and last) are printed; each kiosk's
//! events (without the session token) and the server's output are kept under
//! `target/test-logs/soak/` for `scripts/secret-scan`.

mod common;

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RunningServer;
use pivtap_client::client::{AuditFilter, Client, ServerTrust};
use pivtap_client::device::DeviceCredential;
use pivtap_kiosk::builder::{FaceChoice, KioskBuilder, KioskError};
use pivtap_kiosk::core::{Kiosk, SessionEvent};
use pivtap_kiosk::headless::event_line;
use pivtap_kiosk::readers::VirtualReaders;
use pivtap_kiosk::runtime::{Face, Input};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{VirtualCard, VirtualCardBackend};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use zeroize::Zeroizing;

/// The badges, their PINs and users, handed out to the kiosks in turn.
const BADGES: [(&str, &str, &str); 3] = [
    ("alice", "123456", "Alice Example"),
    ("bob", "24681357", "Bob Example"),
    ("carol", "123456", "Carol Example"),
];
/// The longest wait for one kiosk event.
const EVENT_WAIT: Duration = Duration::from_secs(30);
/// Memory may grow this much after the warm-up before the soak fails (allocator noise,
/// connection pools, caches filling).
const RSS_SLACK_KIB: u64 = 24 * 1024;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn log_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs/soak");
    std::fs::create_dir_all(&dir).expect("the log directory can be made");
    dir
}

/// Resident memory of process `pid`, KiB (Linux `/proc`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status is readable (Linux)");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Forwards events to the driver and writes them, as headless mode prints them but without
/// the session token, to the kiosk's log.
struct LoggingFace {
    events: UnboundedSender<SessionEvent>,
    log: File,
}

impl Face for LoggingFace {
    fn refresh(&mut self, _kiosk: &Kiosk, _server_reachable: bool, _now: Instant) {}

    fn session_event(&mut self, event: &SessionEvent, _token: Option<&str>) {
        let _ = writeln!(
            self.log,
            "{}",
            event_line(event, None, time::OffsetDateTime::now_utc())
        );
        let _ = self.events.send(event.clone());
    }
}

/// What one kiosk did.
#[derive(Debug, Default)]
struct Tally {
    taps: u64,
    signed_in: u64,
    signed_out: u64,
    unexpected: Vec<String>,
    /// Tap to signed in (the PIN is typed as soon as it is asked for), milliseconds.
    latencies_ms: Vec<f64>,
}

async fn next(events: &mut UnboundedReceiver<SessionEvent>, what: &str) -> SessionEvent {
    tokio::time::timeout(EVENT_WAIT, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {EVENT_WAIT:?}"))
        .expect("the kiosk is running")
}

/// Taps, signs in and out until `deadline`; every event not on the happy path is unexpected.
/// What [`start_kiosk`] started: the kiosk's reader, input and event channels, and task.
struct StartedKiosk {
    readers: VirtualReaders,
    inputs: UnboundedSender<Input>,
    events: UnboundedReceiver<SessionEvent>,
    task: tokio::task::JoinHandle<Result<(), KioskError>>,
}

/// A kiosk runtime with one virtual reader of its own, `reader`, signing in as `device`
/// against `server` with a client time-out of `timeout`, its events logged to
/// `logs/DEVICE.jsonl`.
fn start_kiosk(
    server: &RunningServer,
    logs: &Path,
    reader: &str,
    device: &str,
    timeout: Duration,
) -> StartedKiosk {
    let readers = VirtualReaders::new(&[reader]);
    let trust = ServerTrust::from_pem_file(&server.ca).expect("tls.crt");
    let client = Client::new(&server.url, trust, timeout)
        .expect("a client")
        .with_device_credential(Arc::new(
            DeviceCredential::load_dir(&server.device_credential(device))
                .expect("the device's credential"),
        ));
    let (events_tx, events) = unbounded_channel();
    let log = File::create(logs.join(format!("{device}.jsonl"))).expect("a log");
    let face = LoggingFace {
        events: events_tx,
        log,
    };
    let kiosk = KioskBuilder::new(device, client, Arc::new(readers.clone()))
        .face(FaceChoice::Custom(Box::new(face)))
        .spawn();
    StartedKiosk {
        readers,
        inputs: kiosk.inputs,
        events,
        task: kiosk.task,
    }
}

async fn drive(
    index: usize,
    readers: VirtualReaders,
    inputs: UnboundedSender<Input>,
    mut events: UnboundedReceiver<SessionEvent>,
    deadline: Instant,
) -> Tally {
    let (name, pin, _) = BADGES[index % BADGES.len()];
    let image = CardImage::load(common::fixture(&format!("cards/{name}.toml")))
        .expect("the fixture badge loads");
    let badge = VirtualCardBackend::new(VirtualCard::from_image(&image).expect("a card"), name);
    let reader = format!("Desk {index}");
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        tally.taps += 1;
        let tapped = Instant::now();
        readers.insert(&reader, badge.clone());
        loop {
            match next(&mut events, "pin_required").await {
                SessionEvent::PinRequired { .. } => break,
                SessionEvent::CardPresent { .. } => {}
                other => tally.unexpected.push(format!("{other:?}")),
            }
        }
        inputs
            .send(Input::Pin(Zeroizing::new(pin.to_owned())))
            .expect("the kiosk is running");
        loop {
            match next(&mut events, "signed_in").await {
                SessionEvent::SignedIn { user, .. } => {
                    assert_eq!(user.id, name);
                    tally.signed_in += 1;
                    tally
                        .latencies_ms
                        .push(tapped.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                other => {
                    tally.unexpected.push(format!("{other:?}"));
                    if matches!(other, SessionEvent::Error(_)) {
                        break;
                    }
                }
            }
        }
        // Every other round the worker signs out on the screen, else by taking the badge.
        if tally.taps % 2 == 0 {
            inputs.send(Input::SignOut).expect("the kiosk is running");
        }
        readers.remove(&reader);
        loop {
            match next(&mut events, "signed_out").await {
                SessionEvent::SignedOut { .. } => {
                    tally.signed_out += 1;
                    break;
                }
                other => tally.unexpected.push(format!("{other:?}")),
            }
        }
    }
    let _ = inputs.send(Input::Quit);
    tally
}

/// Every successful sign-in the audit log holds for `device` (paged by time, 1000 at a time).
async fn audited_signins(client: &Client, admin_token: &str, device: &str) -> u64 {
    let admin = client.admin(admin_token);
    let mut seen = std::collections::BTreeSet::new();
    let mut until: Option<String> = None;
    loop {
        let page = admin
            .audit(&AuditFilter {
                device: Some(device.to_owned()),
                outcome: Some("ok".to_owned()),
                until: until.clone(),
                limit: Some(1000),
                ..AuditFilter::default()
            })
            .await
            .expect("the audit log answers");
        let full = page.len() == 1000;
        let before = seen.len();
        let mut oldest = None;
        for event in page {
            oldest = Some(event.time.clone());
            if event.kind == "assertion" {
                seen.insert(event.id);
            }
        }
        if !full {
            break;
        }
        // Strictly before the next instant: events at exactly `oldest` come again (deduplicated).
        let oldest =
            OffsetDateTime::parse(&oldest.expect("a full page"), &Rfc3339).expect("RFC 3339 times");
        until = Some(
            (oldest + time::Duration::nanoseconds(1))
                .format(&Rfc3339)
                .expect("formats"),
        );
        assert!(
            seen.len() > before || until.is_some(),
            "the audit pages make progress"
        );
    }
    u64::try_from(seen.len()).expect("fits")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[test]
fn kiosks_sign_in_and_out_in_a_loop_with_flat_memory_and_counts_that_agree() {
    let seconds = setting("PIVTAP_SOAK_SECONDS", 30);
    let kiosks = usize::try_from(setting("PIVTAP_SOAK_KIOSKS", 3)).expect("a count");
    assert!(kiosks >= 1 && seconds >= 5, "at least 1 kiosk and 5 s");
    let server = RunningServer::start_for_load();
    for (name, _, display) in BADGES {
        server.add_user(name, display, &format!("{name}@example.com"));
    }
    let admin_token = std::fs::read_to_string(&server.token_file)
        .expect("admin.token")
        .trim()
        .to_owned();
    let server_pid = server.child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let logs = log_dir();

    let (tallies, samples) = runtime.block_on(async {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let mut drivers = Vec::new();
        let mut kiosk_tasks = Vec::new();
        for index in 0..kiosks {
            let StartedKiosk {
                readers,
                inputs,
                events,
                task,
            } = start_kiosk(
                &server,
                &logs,
                &format!("Desk {index}"),
                &format!("soak-{index}"),
                Duration::from_secs(10),
            );
            kiosk_tasks.push(task);
            drivers.push(tokio::spawn(drive(
                index, readers, inputs, events, deadline,
            )));
        }
        // Resident memory (this process: the kiosks; the server process), once a second.
        let sampler = tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                samples.push((rss_kib(std::process::id()), rss_kib(server_pid)));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        });
        let mut tallies = Vec::new();
        for driver in drivers {
            tallies.push(driver.await.expect("a driver ends"));
        }
        for task in kiosk_tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a kiosk stops")
                .expect("the kiosk task ends")
                .expect("the kiosk stops cleanly");
        }
        (tallies, sampler.await.expect("the sampler ends"))
    });

    let trust = ServerTrust::from_pem_file(&server.ca).expect("tls.crt");
    let client = Client::new(&server.url, trust, Duration::from_secs(10)).expect("a client");
    let audited = runtime.block_on(async {
        let mut audited = 0;
        for index in 0..kiosks {
            audited += audited_signins(&client, &admin_token, &format!("soak-{index}")).await;
        }
        audited
    });
    std::fs::copy(&server.stdout, logs.join("server.out")).expect("the server log is kept");
    std::fs::copy(&server.stderr, logs.join("server.err")).expect("the server log is kept");

    let taps: u64 = tallies.iter().map(|tally| tally.taps).sum();
    let signed_in: u64 = tallies.iter().map(|tally| tally.signed_in).sum();
    let signed_out: u64 = tallies.iter().map(|tally| tally.signed_out).sum();
    let unexpected: Vec<&String> = tallies.iter().flat_map(|t| &t.unexpected).collect();
    let mut latencies: Vec<f64> = tallies
        .iter()
        .flat_map(|tally| tally.latencies_ms.iter().copied())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let warm = samples.len() / 5;
    let (first_kiosk, first_server) = samples.get(warm).copied().unwrap_or((0, 0));
    let (last_kiosk, last_server) = samples.last().copied().unwrap_or((0, 0));
    let peak_kiosk = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let peak_server = samples.iter().map(|s| s.1).max().unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let rate = signed_in as f64 / seconds as f64;
    println!(
        "soak: {kiosks} kiosks, {seconds} s: {taps} taps, {signed_in} sign-ins ({rate:.1}/s), \
         {signed_out} sign-outs, {audited} audited sign-ins, {} unexpected events",
        unexpected.len()
    );
    println!(
        "soak: tap to signed in median {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "soak: RSS KiB after warm-up / last / peak: kiosks {first_kiosk} / {last_kiosk} / {peak_kiosk}, \
         server {first_server} / {last_server} / {peak_server} ({} samples)",
        samples.len()
    );

    assert!(unexpected.is_empty(), "unexpected events: {unexpected:?}");
    assert!(signed_in > 0, "nobody signed in");
    assert_eq!(taps, signed_in, "every tap signed in");
    assert_eq!(signed_out, signed_in, "every sign-in ended");
    assert_eq!(audited, signed_in, "the audit log holds every sign-in");
    assert!(
        last_kiosk <= first_kiosk + RSS_SLACK_KIB,
        "the kiosks' memory grew from {first_kiosk} to {last_kiosk} KiB"
    );
    assert!(
        last_server <= first_server + RSS_SLACK_KIB,
        "the server's memory grew from {first_server} to {last_server} KiB"
    );
}

/// What one kiosk saw while the server was killed and started again under it.
#[derive(Debug, Default)]
struct CrashTally {
    signed_in: u64,
    signed_in_after_restart: u64,
    /// Taps that ended in `server_unreachable` (the server was down, or died mid-request).
    unreachable: u64,
    unexpected: Vec<String>,
}

/// Like [`drive`], but a tap may end in `server_unreachable` while the server is down.
async fn drive_through_crash(
    index: usize,
    readers: VirtualReaders,
    inputs: UnboundedSender<Input>,
    mut events: UnboundedReceiver<SessionEvent>,
    restarted: Arc<std::sync::atomic::AtomicBool>,
    deadline: Instant,
) -> CrashTally {
    use pivtap_kiosk::core::NoticeCode;
    use std::sync::atomic::Ordering;
    let (name, pin, _) = BADGES[index % BADGES.len()];
    let image = CardImage::load(common::fixture(&format!("cards/{name}.toml")))
        .expect("the fixture badge loads");
    let badge = VirtualCardBackend::new(VirtualCard::from_image(&image).expect("a card"), name);
    let reader = format!("Desk {index}");
    let mut tally = CrashTally::default();
    let unreachable = |event: &SessionEvent| matches!(event, SessionEvent::Error(notice) if notice.code == NoticeCode::ServerUnreachable);
    while Instant::now() < deadline {
        let after_restart = restarted.load(Ordering::SeqCst);
        readers.insert(&reader, badge.clone());
        loop {
            match next(&mut events, "pin_required").await {
                SessionEvent::PinRequired { .. } => break,
                SessionEvent::CardPresent { .. } => {}
                event if unreachable(&event) => {}
                other => tally.unexpected.push(format!("{other:?}")),
            }
        }
        inputs
            .send(Input::Pin(Zeroizing::new(pin.to_owned())))
            .expect("the kiosk is running");
        let signed_in = loop {
            match next(&mut events, "signed_in").await {
                SessionEvent::SignedIn { .. } => break true,
                event if unreachable(&event) => break false,
                other => {
                    tally.unexpected.push(format!("{other:?}"));
                    if matches!(other, SessionEvent::Error(_)) {
                        break false;
                    }
                }
            }
        };
        readers.remove(&reader);
        if signed_in {
            tally.signed_in += 1;
            tally.signed_in_after_restart += u64::from(after_restart);
            loop {
                if let SessionEvent::SignedOut { .. } = next(&mut events, "signed_out").await {
                    break;
                }
            }
        } else {
            tally.unreachable += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _ = inputs.send(Input::Quit);
    tally
}

/// `pivtap server run` killed with SIGKILL while kiosks sign in, then started again on the
/// same configuration and database 2 s later: a tap while it is down may end in
/// `server_unreachable` (nothing else is expected), every kiosk signs in again by itself once
/// it is back, and every sign-in a kiosk saw is in the audit log (a sign-in the server recorded
/// but could not answer shows as one more audited than seen, at most one per refused tap).
#[test]
fn kiosks_carry_on_after_pivtap_server_run_is_killed_and_every_sign_in_they_saw_is_audited() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let kiosks = 3;
    let mut server = RunningServer::start_for_load();
    for (name, _, display) in BADGES {
        server.add_user(name, display, &format!("{name}@example.com"));
    }
    let admin_token = std::fs::read_to_string(&server.token_file)
        .expect("admin.token")
        .trim()
        .to_owned();
    let config = server.dir.path().join("server/server.toml");
    let logs = log_dir();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let restarted = Arc::new(AtomicBool::new(false));
    let tallies = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(12);
        let mut drivers = Vec::new();
        let mut kiosk_tasks = Vec::new();
        for index in 0..kiosks {
            let StartedKiosk {
                readers,
                inputs,
                events,
                task,
            } = start_kiosk(
                &server,
                &logs,
                &format!("Desk {index}"),
                &format!("crash-{index}"),
                Duration::from_secs(2),
            );
            kiosk_tasks.push(task);
            drivers.push(tokio::spawn(drive_through_crash(
                index,
                readers,
                inputs,
                events,
                Arc::clone(&restarted),
                deadline,
            )));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        // SIGKILL: no shutdown code runs.
        server.child.kill().expect("SIGKILL is delivered");
        server.child.wait().expect("the killed server is reaped");
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.child =
            common::pivtap_command(&["server", "run", "--config", common::path_str(&config)])
                .stdout(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(&server.stdout)
                        .expect("the server log"),
                )
                .stderr(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(&server.stderr)
                        .expect("the server log"),
                )
                .spawn()
                .expect("the server starts again");
        restarted.store(true, Ordering::SeqCst);
        let mut tallies = Vec::new();
        for driver in drivers {
            tallies.push(driver.await.expect("a driver ends"));
        }
        for task in kiosk_tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a kiosk stops")
                .expect("the kiosk task ends")
                .expect("the kiosk stops cleanly");
        }
        tallies
    });
    let trust = ServerTrust::from_pem_file(&server.ca).expect("tls.crt");
    let client = Client::new(&server.url, trust, Duration::from_secs(10)).expect("a client");
    for (index, tally) in tallies.iter().enumerate() {
        let audited = runtime.block_on(audited_signins(
            &client,
            &admin_token,
            &format!("crash-{index}"),
        ));
        println!(
            "crash: kiosk {index}: {} sign-ins ({} after the restart), {} taps refused while the server was down, {audited} audited",
            tally.signed_in, tally.signed_in_after_restart, tally.unreachable
        );
        assert!(
            tally.unexpected.is_empty(),
            "kiosk {index}: {:?}",
            tally.unexpected
        );
        assert!(
            tally.signed_in_after_restart > 0,
            "kiosk {index} never signed in again"
        );
        assert!(
            audited >= tally.signed_in && audited <= tally.signed_in + tally.unreachable,
            "kiosk {index}: every sign-in it saw is audited ({tally:?}, {audited} audited)"
        );
    }
    std::fs::copy(&server.stderr, logs.join("crash-server.err")).expect("the server log is kept");
}
