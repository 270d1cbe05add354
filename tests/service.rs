//! End-to-end tests of running pivtap as a service through the `pivtap` binary: the systemd units and their installer, `server init --force` and its secrets, `server renew-tls`, `server check`, `server backup` and `server restore`, and reloading on SIGHUP.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{Run, RunningServer, path_str, pivtap_command, run};

/// `systemd-analyze verify` on `units`: its exit status and everything it said.
/// It reports most mistakes (unknown settings, bad values) as warnings with
/// exit status 0, so a unit passes only when it says nothing at all.
fn systemd_analyze_verify(units: &[PathBuf]) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
        .expect("systemd-analyze runs (scripts/setup-debian installs the systemd package)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn install_service_writes_units_naming_this_binary_that_systemd_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    let installed = run(pivtap_command(&[
        "server",
        "install-service",
        "--unit-dir",
        path_str(&units),
        "--no-create-user",
    ]))
    .success("install-service");
    let binary = std::fs::canonicalize(env!("CARGO_BIN_EXE_pivtap")).unwrap();
    let server_unit = units.join("pivtap-server.service");
    let kiosk_unit = units.join("pivtap-kiosk.service");
    for unit in [&server_unit, &kiosk_unit] {
        assert!(
            installed.stdout.contains(path_str(unit)),
            "{}",
            installed.stdout
        );
        assert_eq!(mode(unit), 0o644);
    }
    assert!(
        installed
            .stdout
            .contains("systemctl enable --now pivtap-server.service")
    );
    let server = std::fs::read_to_string(&server_unit).unwrap();
    let kiosk = std::fs::read_to_string(&kiosk_unit).unwrap();
    for (unit, arguments) in [
        (
            &server,
            "server run --config /var/lib/pivtap/server/server.toml",
        ),
        (
            &kiosk,
            "kiosk --headless --config /var/lib/pivtap/kiosk/kiosk.toml",
        ),
    ] {
        let exec_start = format!("\nExecStart={} {arguments}\n", binary.display());
        assert!(unit.contains(&exec_start), "{exec_start} missing:\n{unit}");
    }
    for unit in [&server, &kiosk] {
        for setting in [
            "User=pivtap",
            "Restart=on-failure",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "StateDirectory=pivtap",
            "CapabilityBoundingSet=\n",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "SystemCallFilter=@system-service",
            "StandardOutput=journal",
            "KillSignal=SIGTERM",
        ] {
            assert!(unit.contains(setting), "{setting} missing:\n{unit}");
        }
    }
    assert!(server.contains("ExecReload=/bin/kill -HUP $MAINPID"));

    let (ok, said) = systemd_analyze_verify(&[server_unit.clone(), kiosk_unit.clone()]);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // The check can fail: a unit with a misspelt setting is reported.
    let broken = dir.path().join("pivtap-broken.service");
    std::fs::write(
        &broken,
        server.replace("Restart=on-failure", "Restart=sometimes"),
    )
    .unwrap();
    let (_, said) = systemd_analyze_verify(&[broken]);
    assert!(said.contains("sometimes"), "{said}");

    // Only the kiosk, for another user.
    let only_kiosk = dir.path().join("kiosk-only");
    run(pivtap_command(&[
        "server",
        "install-service",
        "--service",
        "kiosk",
        "--user",
        "badge",
        "--unit-dir",
        path_str(&only_kiosk),
        "--no-create-user",
    ]))
    .success("install-service --service kiosk");
    let kiosk = std::fs::read_to_string(only_kiosk.join("pivtap-kiosk.service")).unwrap();
    assert!(kiosk.contains("\nUser=badge\n"), "{kiosk}");
    assert!(!kiosk.contains("User=pivtap"), "{kiosk}");
    assert!(!only_kiosk.join("pivtap-server.service").exists());
}

#[test]
fn install_service_refuses_an_unsafe_user_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    run(pivtap_command(&[
        "server",
        "install-service",
        "--user",
        "root\nExecStartPre=/bin/sh",
        "--unit-dir",
        path_str(&units),
    ]))
    .failure("install-service with a bad user", "not a usable user name");
    assert!(!units.exists());
}

/// `pivtap server init DIR` with `extra` arguments.
fn init(dir: &Path, extra: &[&str]) -> Run {
    let mut command = pivtap_command(&["server", "init", path_str(dir)]);
    command.args(extra);
    run(command)
}

#[test]
fn init_force_replaces_only_the_secrets_it_is_told_to_and_says_what_breaks() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("server");
    init(&dir, &[]).success("init");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let (tls_key, tokens, admin) = (read("tls.key"), read("tokens.key"), read("admin.token"));

    let refused = init(&dir, &["--force"]);
    let refused = refused.failure("init --force", "--replace tls-key,token-key,admin-token");
    for needle in [
        "pins the server key",
        "session token",
        "admin scripts",
        "--keep-secrets",
    ] {
        assert!(
            refused.stderr.contains(needle),
            "{needle}: {}",
            refused.stderr
        );
    }
    assert_eq!(read("tls.key"), tls_key);
    assert_eq!(read("tokens.key"), tokens);
    assert_eq!(read("admin.token"), admin);

    let replaced = init(
        &dir,
        &["--force", "--replace", "admin-token", "--keep-secrets"],
    )
    .success("init --force --replace admin-token --keep-secrets");
    assert!(
        replaced
            .stdout
            .contains("replaced admin.token (admin-token): admin scripts"),
        "{}",
        replaced.stdout
    );
    assert!(
        replaced.stdout.contains("kept tls.key"),
        "{}",
        replaced.stdout
    );
    assert_eq!(read("tls.key"), tls_key);
    assert_eq!(read("tokens.key"), tokens);
    assert_ne!(read("admin.token"), admin);

    init(&dir, &["--force", "--replace", "ca-key"]).failure("--replace ca-key", "ca-key");
    init(&dir, &["--replace", "tls-key"]).failure("--replace without --force", "--force");
}

#[test]
fn renew_tls_keeps_the_pin_and_the_server_serves_the_new_certificate() {
    let mut server = RunningServer::start();
    let config = server.dir.path().join("server/server.toml");
    let pin_of = |text: &str| {
        let start = text.find("sha256//").expect("a pin") + "sha256//".len();
        text[start..]
            .split(|c: char| c.is_whitespace() || c == '.' || c == ';')
            .next()
            .unwrap()
            .to_owned()
    };
    let before = std::fs::read(&server.ca).unwrap();
    let renewed = run(pivtap_command(&[
        "server",
        "renew-tls",
        "--config",
        path_str(&config),
    ]))
    .success("renew-tls");
    assert!(
        renewed.stdout.contains("The key is kept"),
        "{}",
        renewed.stdout
    );
    let pin = pin_of(&renewed.stdout);
    assert_ne!(std::fs::read(&server.ca).unwrap(), before);
    server.restart();
    // Clients pinning the key (not the certificate) keep connecting.
    let mut pinned = pivtap_command(&[
        "admin",
        "--server",
        &server.url,
        "--pin-sha256",
        &format!("sha256//{pin}"),
        "--token-file",
        path_str(&server.token_file),
        "users",
        "list",
        "--json",
    ]);
    pinned.env_remove("PIVTAP_ADMIN_TOKEN");
    run(pinned).success("admin with the same pin after renew-tls");
    // Clients trusting tls.crt itself keep connecting too.
    server
        .admin(&["users", "list", "--json"])
        .success("admin trusting the renewed tls.crt");

    let rekeyed = run(pivtap_command(&[
        "server",
        "renew-tls",
        "--config",
        path_str(&config),
        "--new-key",
    ]))
    .success("renew-tls --new-key");
    assert!(rekeyed.stdout.contains("NEW KEY"), "{}", rekeyed.stdout);
    let new_pin = pin_of(&rekeyed.stdout);
    assert_ne!(new_pin, pin);

    let json = run(pivtap_command(&[
        "server",
        "renew-tls",
        "--config",
        path_str(&config),
        "--json",
    ]))
    .success("renew-tls --json")
    .json();
    assert_eq!(json["pin_sha256"], format!("sha256//{new_pin}"));
    assert_eq!(json["new_key"], false);
    assert_eq!(json["names"][2], "localhost");
    assert!(json["not_after"].as_str().unwrap().ends_with('Z'), "{json}");
}

const ALICE_PIN: &str = "123456";

#[test]
fn a_backup_taken_while_signing_in_restores_into_a_server_that_signs_in() {
    let mut server = RunningServer::start();
    server.add_user("alice", "Alice Example", "alice@example.com");
    let alice = server.card_copy("alice");
    server
        .auth(&alice, ALICE_PIN)
        .success("auth before the backup");
    let config = server.dir.path().join("server/server.toml");
    let file = server.dir.path().join("pivtap.backup");

    // Sign-ins go on while the backup is taken.
    let backup = std::thread::scope(|scope| {
        let signing_in = scope.spawn(|| {
            for _ in 0..3 {
                server
                    .auth(&alice, ALICE_PIN)
                    .success("auth during the backup");
            }
        });
        let backup = run(pivtap_command(&[
            "server",
            "backup",
            "--config",
            path_str(&config),
            path_str(&file),
            "--json",
        ]))
        .success("backup");
        signing_in.join().unwrap();
        backup.json()
    });
    assert_eq!(mode(&file), 0o600);
    let files: Vec<&str> = backup["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file.as_str().unwrap())
        .collect();
    for expected in [
        "server.toml",
        "tls.crt",
        "tls.key",
        "tokens.key",
        "admin.token",
        "ca.crt",
        "ca.key",
        "trust/test-ca.pem",
    ] {
        assert!(files.contains(&expected), "{expected} not in {files:?}");
    }
    assert_eq!(backup["left_out"], serde_json::json!([]));
    // A second backup never overwrites the first.
    run(pivtap_command(&[
        "server",
        "backup",
        "--config",
        path_str(&config),
        path_str(&file),
    ]))
    .failure("backup onto an existing file", "exists");

    // After the backup: a user the restore will not have.
    server.add_user("later", "Added Later", "later@example.com");

    let server_dir = server.dir.path().join("server");
    run(pivtap_command(&[
        "server",
        "restore",
        path_str(&file),
        path_str(&server_dir),
    ]))
    .failure("restore while the server runs", "is running");
    assert!(
        server_dir.join("server.toml").exists(),
        "nothing was touched"
    );

    server.stop();
    let restored = run(pivtap_command(&[
        "server",
        "restore",
        path_str(&file),
        path_str(&server_dir),
    ]))
    .success("restore");
    assert!(
        restored.stdout.contains(".before-restore-"),
        "{}",
        restored.stdout
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(server.dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains("server.before-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old directory is kept aside");
    assert!(aside[0].join("pivtap.db").exists());
    assert_eq!(mode(&server_dir), 0o700);
    assert_eq!(mode(&server_dir.join("tls.key")), 0o600);
    assert_eq!(mode(&server_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&server_dir.join("pivtap.db")), 0o600);
    assert_eq!(
        std::fs::read(server_dir.join("ca.key")).unwrap(),
        std::fs::read(aside[0].join("ca.key")).unwrap()
    );

    run(pivtap_command(&["server", "check", path_str(&server_dir)]))
        .success("check the restored directory");
    server.restart();
    let signed_in = server
        .auth(&alice, ALICE_PIN)
        .success("auth after the restore")
        .json();
    assert_eq!(signed_in["user"]["id"], "alice");
    let users = server
        .admin(&["users", "list", "--json"])
        .success("users list")
        .json();
    let ids: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice"], "the backup's users, not the later one");

    // Not a backup: refused, the directory untouched.
    let fresh = server.dir.path().join("fresh");
    run(pivtap_command(&[
        "server",
        "restore",
        path_str(&config),
        path_str(&fresh),
    ]))
    .failure("restore of a non-backup", "not a pivtap backup");
    assert!(!fresh.exists());
}

#[test]
fn check_validates_a_server_directory_without_starting_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("server");
    init(&dir, &[]).success("init");
    let checked = run(pivtap_command(&["server", "check", path_str(&dir)])).success("check");
    assert!(checked.stdout.contains("checks out"), "{}", checked.stdout);
    assert!(!checked.stdout.contains("ERROR"), "{}", checked.stdout);

    let key = dir.join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = run(pivtap_command(&["server", "check", path_str(&dir)]));
    loose.expect_code(1, "check with a loose key");
    assert!(
        loose.stdout.contains(&format!(
            "ERROR   issuing ca key mode: mode 0644: others may read it; chmod 600 {}",
            key.display()
        )),
        "{}",
        loose.stdout
    );
    let config = dir.join("server.toml");
    let json = run(pivtap_command(&[
        "server",
        "check",
        path_str(&config),
        "--json",
    ]));
    json.expect_code(1, "check --json with a loose key");
    let report = json.json();
    assert_eq!(report["level"], "error");
    let errors: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|finding| finding["level"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{report:#}");
    assert_eq!(errors[0]["path"], path_str(&key));

    std::fs::remove_file(dir.join("tokens.key")).unwrap();
    let missing = run(pivtap_command(&["server", "check", path_str(&dir)]));
    missing.expect_code(1, "check without tokens.key");
    assert!(
        missing.stdout.contains("ERROR   token keys"),
        "{}",
        missing.stdout
    );
    assert!(missing.stderr.contains("error(s)"), "{}", missing.stderr);
}

/// Sends SIGHUP to the server and waits until its log has one more line containing
/// `needle` than it had before (the server logs every reload, good or bad).
fn hang_up_and_wait_for(server: &RunningServer, needle: &str) -> String {
    let before = std::fs::read_to_string(&server.stderr)
        .unwrap_or_default()
        .matches(needle)
        .count();
    let pid = server.child.id().to_string();
    let signalled = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill runs");
    assert!(signalled.success(), "kill -HUP {pid}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
        if log.matches(needle).count() > before {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log after SIGHUP:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_trust_and_a_bad_file_keeps_the_state_in_force() {
    let server = RunningServer::start();
    server.add_user("alice", "Alice Example", "alice@example.com");
    let alice = server.card_copy("alice");
    server
        .auth(&alice, ALICE_PIN)
        .success("auth before any reload");
    let config = server.dir.path().join("server/server.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let trusting_both = "ca_certificates = [\"ca.crt\", \"trust/test-ca.pem\"]";
    assert!(original.contains(trusting_both), "{original}");

    // A CRL file that is not there: the reload fails, the old trust stays.
    std::fs::write(
        &config,
        original.replace("crl_files = []", "crl_files = [\"missing.crl\"]"),
    )
    .unwrap();
    let log = hang_up_and_wait_for(&server, "reload failed");
    assert!(
        log.contains("missing.crl"),
        "the log names the file:\n{log}"
    );
    assert!(
        std::process::Command::new("kill")
            .args(["-0", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success(),
        "SIGHUP does not end the server"
    );
    server
        .auth(&alice, ALICE_PIN)
        .success("auth after a failed reload");

    // The badge CA is no longer trusted: alice's card is refused without a restart.
    std::fs::write(
        &config,
        original.replace(trusting_both, "ca_certificates = [\"ca.crt\"]"),
    )
    .unwrap();
    let log = hang_up_and_wait_for(&server, "reloaded the trusted CAs");
    assert!(log.contains("trust_anchors=1"), "{log}");
    server
        .auth(&alice, ALICE_PIN)
        .failure("auth once the CA is untrusted", "certificate_untrusted");

    // And trusted again.
    std::fs::write(&config, &original).unwrap();
    let log = hang_up_and_wait_for(&server, "reloaded the trusted CAs");
    assert!(log.contains("trust_anchors=2"), "{log}");
    server
        .auth(&alice, ALICE_PIN)
        .success("auth once trusted again");
}
