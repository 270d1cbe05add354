//! `pivtap bench populate`: a server's store (SQLite, and PostgreSQL on the test cluster) loaded with users, cards and audit events in bulk; `bench server --populated` then signs in as those users.
//!
//! The PostgreSQL test needs the test cluster (`PIVTAP_TEST_POSTGRES_URL`,
//! `PIVTAP_TEST_POSTGRES_PASSWORD_FILE`) and fails saying how to start it otherwise.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use pivtap_testkit::postgres::FreshDatabase;
use serde_json::Value;

mod common;
use common::{Run, RunningServer, path_str, pivtap_command, run};

fn populate(config: &Path, args: &[&str]) -> Run {
    let mut command = pivtap_command(&["bench", "populate", "--config", path_str(config)]);
    command.args(args);
    run(command)
}

/// `(table, written, after)` of each table a populate --json reported.
fn tables(report: &Value) -> Vec<(String, u64, u64)> {
    report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|table| {
            (
                table["table"].as_str().expect("a name").to_owned(),
                table["written"].as_u64().expect("written"),
                table["after"].as_u64().expect("after"),
            )
        })
        .collect()
}

fn owned(rows: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
    rows.iter()
        .map(|(table, written, after)| ((*table).to_owned(), *written, *after))
        .collect()
}

#[test]
fn a_populated_sqlite_store_is_signed_in_to_by_its_users() {
    let mut server = RunningServer::start_for_load();
    let (status, _) = server.stop();
    assert!(status.success());
    let config = server.dir.path().join("server/server.toml");

    let report = populate(
        &config,
        &["--users", "300", "--audit-events", "2001", "--json"],
    )
    .success("bench populate")
    .json();
    assert_eq!(
        tables(&report),
        owned(&[
            ("users", 300, 300),
            ("cards", 300, 300),
            ("audit", 2001, 2001)
        ]),
        "{report}"
    );
    assert!(
        report["size_bytes"].as_u64().expect("a size") > 100_000,
        "{report}"
    );
    assert!(report["seconds"].as_f64().is_some(), "{report}");

    // Not again into a store with data, unless told; then added.
    populate(&config, &["--users", "10", "--audit-events", "10"])
        .failure("bench populate into a full store", "--add");
    populate(
        &config,
        &[
            "--users",
            "10",
            "--audit-events",
            "10",
            "--add",
            "--prefix",
            "more",
        ],
    )
    .success("bench populate --add");
    // A clash with what is there (the same prefix) writes nothing.
    populate(&config, &["--users", "10", "--audit-events", "10", "--add"])
        .failure("bench populate --add with taken ids", "constraint");

    server.restart();
    let users = server
        .admin(&["users", "list", "--json"])
        .success("users list")
        .json();
    assert_eq!(users.as_array().map(Vec::len), Some(310));
    let bench = run(pivtap_command(&[
        "bench",
        "server",
        "--server",
        &server.url,
        "--ca",
        path_str(&server.ca),
        "--config",
        path_str(&config),
        "--populated",
        "pop",
        "--populated-users",
        "300",
        "--cards",
        "3",
        "--requests",
        "30",
        "--concurrency",
        "2",
        "--algorithm",
        "p256",
        "--json",
    ]))
    .success("bench server --populated")
    .json();
    assert_eq!(bench["signins"], 30, "{bench}");
    assert_eq!(bench["errors"], 0, "{bench}");
    let alice_like = server
        .admin(&["audit", "--user", "pop-000100", "--json"])
        .success("audit of a populated user")
        .json();
    assert!(
        alice_like
            .as_array()
            .is_some_and(|events| events.iter().any(|event| event["device"]
                .as_str()
                .is_some_and(|device| device.starts_with("bench-")))),
        "the load signed in as pop-000100: {alice_like}"
    );
    let (status, _) = server.stop();
    assert!(status.success());
}

#[test]
fn a_postgresql_store_is_populated_with_copy() {
    let database = FreshDatabase::create();
    let mut server = RunningServer::start();
    let (status, _) = server.stop();
    assert!(status.success());
    let config = server.dir.path().join("server/server.toml");
    let password_file = server.dir.path().join("server/store.password");
    std::fs::write(&password_file, database.password().expose()).expect("the password file");
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod 600");
    let text = std::fs::read_to_string(&config).expect("server.toml");
    let text = text.replace("database = \"pivtap.db\"", "")
        + &format!(
            "\n[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
            database.url(),
            path_str(&password_file)
        );
    std::fs::write(&config, text).expect("server.toml is written");

    let report = populate(
        &config,
        &["--users", "500", "--audit-events", "3000", "--json"],
    )
    .success("bench populate into PostgreSQL")
    .json();
    assert_eq!(
        tables(&report),
        owned(&[
            ("users", 500, 500),
            ("cards", 500, 500),
            ("audit", 3000, 3000)
        ]),
        "{report}"
    );
    assert_eq!(database.query("SELECT count(*) FROM audit"), "3000");
    assert_eq!(
        database
            .query("SELECT count(*) FROM audit WHERE kind = 'assertion' AND user_id IS NOT NULL"),
        "1500"
    );
    // Every sign-in's card is its user's card.
    assert_eq!(
        database.query(
            "SELECT count(*) FROM audit a JOIN cards c ON c.serial = a.card_serial \
             AND c.user_id = a.user_id"
        ),
        "1500"
    );
    populate(&config, &["--users", "1", "--audit-events", "1"])
        .failure("bench populate into a full PostgreSQL store", "--add");
    assert_eq!(database.query("SELECT count(*) FROM users"), "500");
}
