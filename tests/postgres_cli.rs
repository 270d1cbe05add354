//! The server on PostgreSQL through the `pivtap` binary: `server init --store`, `server check` and `server backup` on a PostgreSQL store, and `server run` on a `[store] url` of the test cluster signing a card in.
//!
//! Each test gets a database of its own in the test cluster (`testkit::postgres`, TLS
//! with verify-full, the password from a file); without the cluster they fail, saying
//! how to start it.

use std::path::{Path, PathBuf};

use pivtap_testkit::postgres::FreshDatabase;
use tempfile::TempDir;

mod common;
use common::{RunningServer, path_str, pivtap_command, run};

const ALICE_PIN: &str = "123456";

/// Writes `contents` to `file`, readable by its owner only.
fn write_private(file: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(file, contents).expect("the file is written");
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The database's password in a file of its own (mode 0600), as a deployment keeps it.
fn password_file(database: &FreshDatabase) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("store.password");
    write_private(&file, &format!("{}\n", database.password().expose()));
    (dir, file)
}

/// `server.toml` as `init` wrote it, moved from its SQLite file to `database`.
fn on_postgres(config: &str, database: &FreshDatabase, password_file: &Path) -> String {
    let without_sqlite = config.replacen("database = \"pivtap.db\"\n", "", 1);
    assert_ne!(without_sqlite, config, "init wrote `database`:\n{config}");
    format!(
        "{without_sqlite}\n[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        database.url(),
        password_file.display()
    )
}

#[test]
fn init_writes_the_store_and_check_connects_to_it() {
    let database = FreshDatabase::create();
    let (_secrets, password) = password_file(&database);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server_dir = dir.path().join("server");

    // A password in the URL is refused without being repeated.
    let with_password = database
        .url()
        .replacen("pivtap@", "pivtap:hunter2-secret@", 1);
    let refused = run(pivtap_command(&[
        "server",
        "init",
        path_str(&server_dir),
        "--store",
        &with_password,
    ]))
    .failure("init with a password in the URL", "password_file");
    assert!(
        !refused.all_output().contains("hunter2"),
        "{}",
        refused.all_output()
    );
    assert!(!server_dir.exists(), "nothing is written");

    let init = run(pivtap_command(&[
        "server",
        "init",
        path_str(&server_dir),
        "--store",
        database.url(),
        "--store-password-file",
        path_str(&password),
    ]))
    .success("server init --store");
    assert!(init.stdout.contains(database.url()), "{}", init.stdout);
    let written = std::fs::read_to_string(server_dir.join("server.toml")).expect("server.toml");
    assert!(written.contains("[store]"), "{written}");
    assert!(
        written.contains(&format!("password_file = \"{}\"", password.display())),
        "{written}"
    );
    assert!(!written.contains("database ="), "{written}");
    assert!(!written.contains(database.password().expose()), "{written}");
    assert!(
        !server_dir.join("pivtap.db").exists(),
        "no SQLite file for PostgreSQL"
    );

    // check connects over TLS with the password and reports the (empty) schema.
    let checked = run(pivtap_command(&[
        "server",
        "check",
        path_str(&server_dir),
        "--json",
    ]))
    .success("server check")
    .json();
    let store = checked["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|finding| finding["what"] == "store")
        .unwrap_or_else(|| panic!("no store finding: {checked}"));
    assert_eq!(store["level"], "ok", "{store}");
    let detail = store["detail"].as_str().expect("a detail");
    assert!(detail.contains("reachable"), "{detail}");
    assert!(
        detail.contains("empty (tables are made on start)"),
        "{detail}"
    );

    // backup says what to do instead.
    let backup = dir.path().join("backup.pivtap");
    run(pivtap_command(&[
        "server",
        "backup",
        "--config",
        path_str(&server_dir.join("server.toml")),
        path_str(&backup),
    ]))
    .failure("server backup of a PostgreSQL store", "pg_dump");
    assert!(!backup.exists());

    // A wrong password: check says the store cannot be reached, and why.
    write_private(&password, "not-the-password\n");
    let checked = run(pivtap_command(&[
        "server",
        "check",
        path_str(&server_dir),
        "--json",
    ]));
    assert_ne!(checked.code, 0, "{}", checked.stdout);
    let report = checked.json();
    let store = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|finding| finding["what"] == "store")
        .unwrap_or_else(|| panic!("no store finding: {report}"));
    assert_eq!(store["level"], "error", "{store}");
    let detail = store["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("password authentication failed"),
        "{detail}"
    );

    // No password_file: the password comes from PIVTAP_STORE_PASSWORD, and its
    // absence is named.
    let config = server_dir.join("server.toml");
    let without_file = std::fs::read_to_string(&config)
        .expect("server.toml")
        .lines()
        .filter(|line| !line.starts_with("password_file"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, without_file).expect("server.toml is written");
    let store_finding = |run: &common::Run| {
        let report = run.json();
        report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .find(|finding| finding["what"] == "store")
            .unwrap_or_else(|| panic!("no store finding: {report}"))
            .clone()
    };
    let checked = run(pivtap_command(&[
        "server",
        "check",
        path_str(&server_dir),
        "--json",
    ]));
    let store = store_finding(&checked);
    assert_eq!(store["level"], "error", "{store}");
    assert!(
        store["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("PIVTAP_STORE_PASSWORD is set")),
        "{store}"
    );
    let mut from_environment =
        pivtap_command(&["server", "check", path_str(&server_dir), "--json"]);
    from_environment.env("PIVTAP_STORE_PASSWORD", database.password().expose());
    let checked = run(from_environment).success("server check with PIVTAP_STORE_PASSWORD");
    assert_eq!(store_finding(&checked)["level"], "ok", "{}", checked.stdout);
}

#[test]
fn a_server_on_postgres_signs_a_card_in() {
    let database = FreshDatabase::create();
    let (_secrets, password) = password_file(&database);
    let mut server = RunningServer::start_with(|config| on_postgres(&config, &database, &password));
    server.add_user("alice", "Alice Example", "alice@example.com");
    let card = server.card_copy("alice");
    let signed_in = server.auth(&card, ALICE_PIN).success("auth").json();
    assert!(signed_in["token"].as_str().is_some(), "{signed_in}");

    // What the server wrote is in PostgreSQL; the SQLite file `init` made stays empty.
    assert_eq!(
        database.query("SELECT count(*) FROM users WHERE id = 'alice'"),
        "1"
    );
    assert_eq!(
        database.query(
            "SELECT count(*) FROM audit WHERE kind = 'assertion' AND outcome = 'ok' \
             AND user_id = 'alice'"
        ),
        "1"
    );
    let sqlite =
        std::fs::metadata(server.dir.path().join("server/pivtap.db")).expect("init's file");
    assert_eq!(sqlite.len(), 0, "the server wrote to SQLite");
    let (status, _) = server.stop();
    assert!(status.success(), "{status}");
}
