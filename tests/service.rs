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
    assert!(
        server.contains(&format!(
            "\nExecStart={} server run --config /var/lib/pivtap/server/server.toml\n",
            binary.display()
        )),
        "{server}"
    );
    let kiosk = std::fs::read_to_string(&kiosk_unit).unwrap();
    assert!(
        kiosk.contains(&format!(
            "\nExecStart={} kiosk --headless --config /var/lib/pivtap/kiosk/kiosk.toml\n",
            binary.display()
        )),
        "{kiosk}"
    );
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
    assert!(kiosk.contains("\nUser=badge\nGroup=badge\n"), "{kiosk}");
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
    assert_ne!(pin_of(&rekeyed.stdout), pin);
}
