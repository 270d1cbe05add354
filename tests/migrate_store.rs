//! `pivtap server migrate-store`: a server directory used on SQLite (users, cards, sign-ins, enrollment codes, devices, admin credentials) copied into a fresh PostgreSQL database of the test cluster, counts checked.
//!
//! Needs the test PostgreSQL (`PIVTAP_TEST_POSTGRES_URL`, `PIVTAP_TEST_POSTGRES_PASSWORD_FILE`):
//! without it the test fails saying how to start one.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use pivtap_server::store::bulk::{OWN_TABLES, TABLES};
use pivtap_testkit::postgres::FreshDatabase;

mod common;
use common::{Run, RunningServer, path_str, pivtap_command, run};

const ALICE_PIN: &str = "123456";

/// The database's URL for `migrate-store --to` (TLS, verify-full against the cluster's CA).
fn target_url(database: &FreshDatabase) -> String {
    database.url().to_owned()
}

fn migrate(from: &Path, database: &FreshDatabase, extra: &[&str]) -> Run {
    let from = format!("sqlite:{}", path_str(from));
    let to = target_url(database);
    let mut command = pivtap_command(&["server", "migrate-store", "--from", &from, "--to", &to]);
    command
        .args(extra)
        .env("PIVTAP_STORE_PASSWORD", database.password().expose());
    run(command)
}

fn count(database: &FreshDatabase, table: &str) -> u64 {
    database
        .query(&format!("SELECT count(*) FROM {table}"))
        .parse()
        .expect("a count")
}

#[test]
fn an_sqlite_deployment_is_copied_into_an_empty_postgresql_store() {
    let database = FreshDatabase::create();
    let mut server = RunningServer::start();
    server.add_user("alice", "Alice Example", "alice@example.com");
    server.add_user("carol", "Carol Example", "carol@example.com");
    let _code = server.enrollment_code("carol");
    server
        .admin(&["credentials", "add", "ops"])
        .success("credentials add");
    server
        .admin(&["devices", "add", "kiosk-09", "--json"])
        .success("devices add");
    let alice = server.card_copy("alice");
    server.auth(&alice, ALICE_PIN).success("auth alice");
    server.auth(&alice, ALICE_PIN).success("auth alice again");
    let audit_before = server
        .admin(&["audit", "--limit", "1000", "--json"])
        .success("audit")
        .json();
    let events = audit_before.as_array().expect("a JSON array of events");
    assert!(events.len() >= 4, "{audit_before}");
    let sqlite = server.dir.path().join("server/pivtap.db");

    // Not while the server runs on it.
    migrate(&sqlite, &database, &[])
        .failure("migrate-store with the server running", "stop it first");
    let (status, _) = server.stop();
    assert!(status.success());

    let migrated = migrate(&sqlite, &database, &["--json"])
        .success("migrate-store")
        .json();
    let tables = migrated["tables"].as_array().expect("tables");
    let copied = |table: &str| -> u64 {
        let entry = tables
            .iter()
            .find(|entry| entry["table"] == table)
            .unwrap_or_else(|| panic!("{table} in {migrated}"));
        assert_eq!(entry["before"], 0, "{entry}");
        assert_eq!(entry["written"], entry["after"], "{entry}");
        entry["after"].as_u64().expect("a count")
    };
    assert_eq!(copied("users"), 2);
    assert_eq!(copied("cards"), 1);
    assert_eq!(copied("enrollment_codes"), 1);
    // ops (the initial credential is the server directory's admin.token file); the kiosk
    // the sign-ins came from and kiosk-09.
    assert_eq!(copied("admin_credentials"), 1);
    assert_eq!(copied("devices"), 2);
    assert_eq!(copied("audit"), events.len() as u64);
    // Each sign-in's session and the kiosk's refresh token of it.
    assert_eq!(copied("sessions"), 2);
    assert_eq!(copied("session_refresh_tokens"), 2);
    for table in [
        "users",
        "cards",
        "enrollment_codes",
        "admin_credentials",
        "devices",
        "audit",
        "issued_certificates",
        "revoked_certificates",
        "pending_renewals",
        "sessions",
        "session_refresh_tokens",
    ] {
        assert_eq!(count(&database, table), copied(table), "{table}");
    }
    assert_eq!(
        count(&database, "challenges"),
        0,
        "challenges are not copied"
    );
    let left_out: Vec<&str> = migrated["left_out"]
        .as_array()
        .expect("left_out")
        .iter()
        .map(|table| table["table"].as_str().expect("a table"))
        .collect();
    assert_eq!(left_out, ["challenges", "heartbeat"], "{migrated}");

    // The table list copies read is PostgreSQL's schema too (table by table, column by column).
    let schema = database.query(
        "SELECT table_name || ':' || string_agg(column_name::text, ',' ORDER BY ordinal_position) \
         FROM information_schema.columns WHERE table_schema = current_schema() \
         GROUP BY table_name ORDER BY table_name",
    );
    let mut listed: Vec<String> = TABLES
        .iter()
        .map(|table| {
            let columns: Vec<&str> = table.columns.iter().map(|column| column.name).collect();
            format!("{}:{}", table.name, columns.join(","))
        })
        .chain(
            OWN_TABLES
                .iter()
                .map(|name| format!("{name}:version,applied_at")),
        )
        .collect();
    listed.sort();
    assert_eq!(schema, listed.join("\n"));

    // The audit keeps its ids, and the next id follows the last one.
    let newest_id = events[0]["id"].as_i64().expect("an event id");
    assert_eq!(
        database.query("SELECT max(id) FROM audit"),
        newest_id.to_string()
    );
    assert_eq!(
        database.query("SELECT last_value FROM audit_id_seq"),
        newest_id.to_string()
    );
    assert_eq!(
        database.query(
            "SELECT user_id || ' ' || outcome FROM audit WHERE kind = 'assertion' ORDER BY id"
        ),
        "alice ok\nalice ok"
    );

    // A server started on the copy signs the same card in and lists the same audit.
    let config = server.dir.path().join("server/server.toml");
    let password_file = server.dir.path().join("server/store.password");
    std::fs::write(&password_file, database.password().expose()).expect("the password file");
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod 600");
    let text = std::fs::read_to_string(&config).expect("server.toml");
    assert!(text.contains("database = \"pivtap.db\""), "{text}");
    let text = text.replace("database = \"pivtap.db\"", "")
        + &format!(
            "\n[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
            target_url(&database),
            path_str(&password_file)
        );
    std::fs::write(&config, text).expect("server.toml is written");
    server.restart();
    let signed_in = server
        .auth(&alice, ALICE_PIN)
        .success("auth alice on PostgreSQL")
        .json();
    assert_eq!(signed_in["user"]["id"], "alice");
    let audit_after = server
        .admin(&["audit", "--limit", "1000", "--json"])
        .success("audit on PostgreSQL")
        .json();
    let after = audit_after.as_array().expect("a JSON array of events");
    assert!(after.len() > events.len(), "{audit_after}");
    assert_eq!(
        &after[after.len() - events.len()..],
        events.as_slice(),
        "the copied events, as they were"
    );
    assert!(
        after[0]["id"].as_i64().expect("an id") > newest_id,
        "new events continue the ids: {}",
        after[0]
    );
    assert_eq!(count(&database, "users"), 2);
    assert_eq!(count(&database, "cards"), 1, "the same card signed in");
    let (status, _) = server.stop();
    assert!(status.success());

    // A second copy into the same store is refused and changes nothing.
    migrate(&sqlite, &database, &[]).failure("migrate-store into a full store", "not empty");
    assert_eq!(count(&database, "users"), 2);

    // A missing source and a wrong URL are refused clearly.
    migrate(&server.dir.path().join("nothing.db"), &database, &[])
        .failure("migrate-store from a missing file", "does not exist");
    run(pivtap_command(&[
        "server",
        "migrate-store",
        "--from",
        path_str(&sqlite),
        "--to",
        &target_url(&database),
    ]))
    .failure("migrate-store without sqlite:", "starts with sqlite:");
    run(pivtap_command(&[
        "server",
        "migrate-store",
        "--from",
        &target_url(&database),
        "--to",
        &target_url(&database),
    ]))
    .failure("migrate-store from PostgreSQL", "copies from SQLite");
}
