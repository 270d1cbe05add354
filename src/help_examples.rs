//! Examples shown at the end of `--help` for every command a user types, kept in one table that a test parses line by line.
//!
//! They live here, not beside each command's arguments, so that adding a command is one
//! entry and the test below fails for a command without examples (or with an example that
//! no longer parses).

use clap::Command;

/// (command path below `pivtap`, example lines). Each line is a whole command line; text
/// after two spaces and `#` is a comment.
const EXAMPLES: &[(&[&str], &[&str])] = &[
    (
        &["vcard", "new"],
        &[
            "pivtap vcard new alice.toml --subject \"CN=Alice Example\" --ca-cert ca.pem --ca-key ca.key",
            "pivtap vcard new blank.toml --blank  # factory state, for `card enroll`",
        ],
    ),
    (
        &["vcard", "enroll"],
        &[
            "pivtap vcard enroll --code 'pivtap://enroll?server=...&code=...' --out alice.toml",
            "pivtap vcard enroll --server https://auth.example.com:8443 --ca tls.crt --code K7QF-2M9X --out alice.toml",
        ],
    ),
    (
        &["vcard", "attach"],
        &[
            "pivtap vcard attach alice.toml  # into \"Virtual PCD 00 00\"",
            "pivtap vcard attach bob.toml --port 35964 --contactless  # \"Virtual PCD 00 01\", as a badge",
        ],
    ),
    (
        &["card", "info"],
        &[
            "pivtap card info",
            "pivtap card info --reader acr122 --json",
            "pivtap card info --vcard alice.toml",
        ],
    ),
    (
        &["card", "verify-pin"],
        &[
            "pivtap card verify-pin  # asks for the PIN",
            "PIVTAP_PIN=123456 pivtap card verify-pin --vcard alice.toml --json",
        ],
    ),
    (
        &["card", "list"],
        &["pivtap card list", "pivtap card list --json"],
    ),
    (
        &["card", "bench"],
        &["pivtap card bench --vcard alice.toml --count 200"],
    ),
    (
        &["card", "enroll"],
        &[
            "pivtap card enroll --code 'pivtap://enroll?server=...&code=...'",
            "pivtap card enroll --reader \"Virtual PCD 00 01\" --server https://auth.example.com:8443 --code K7QF-2M9X",
        ],
    ),
    (
        &["card", "renew"],
        &["pivtap card renew --server https://auth.example.com:8443 --ca tls.crt --device it-desk"],
    ),
    (
        &["card", "change-pin"],
        &[
            "pivtap card change-pin",
            "pivtap card change-pin --server https://auth.example.com:8443  # the server's PIN rules",
        ],
    ),
    (
        &["card", "change-puk"],
        &["pivtap card change-puk --reader acr122"],
    ),
    (
        &["card", "unblock-pin"],
        &["pivtap card unblock-pin  # asks for the PUK and a new PIN"],
    ),
    (
        &["card", "reset"],
        &[
            "pivtap card reset  # asks to confirm",
            "pivtap card reset --vcard old.toml --yes",
        ],
    ),
    (
        &["card", "export-cert"],
        &[
            "pivtap card export-cert > alice.pem",
            "pivtap card export-cert --slot 9c --der --out signing.der",
        ],
    ),
    (
        &["auth"],
        &[
            "pivtap auth --server https://auth.example.com:8443 --ca tls.crt --device kiosk-07",
            "pivtap auth --server https://127.0.0.1:8443 --ca server/tls.crt --device kiosk-07 --vcard alice.toml --json",
        ],
    ),
    (
        &["server", "init"],
        &[
            "pivtap server init ./server  # listens on 127.0.0.1:8443",
            "pivtap server init /etc/pivtap --listen 0.0.0.0:8443 --hostname auth.example.com --trust corp-ca.pem",
            "pivtap server init /etc/pivtap --store 'postgres://pivtap@db.example:5432/pivtap?sslmode=verify-full&sslrootcert=/etc/pivtap/db-ca.crt' --store-password-file /etc/pivtap/store.password",
        ],
    ),
    (
        &["server", "check"],
        &[
            "pivtap server check /var/lib/pivtap/server",
            "pivtap server check server.toml --json  # a PostgreSQL store: reachable? schema current?",
        ],
    ),
    (
        &["server", "renew-tls"],
        &[
            "pivtap server renew-tls --config /var/lib/pivtap/server/server.toml",
            "pivtap server renew-tls --config server.toml --new-key  # the key pin changes",
        ],
    ),
    (
        &["server", "backup"],
        &[
            "pivtap server backup --config /var/lib/pivtap/server/server.toml /backup/pivtap-2026-12-07.backup",
        ],
    ),
    (
        &["server", "restore"],
        &[
            "pivtap server restore /backup/pivtap-2026-12-07.backup /var/lib/pivtap/server  # after systemctl stop pivtap-server",
        ],
    ),
    (
        &["server", "install-service"],
        &[
            "pivtap server install-service  # as root: both units, user pivtap",
            "pivtap server install-service --service kiosk --user kiosk",
            "pivtap server install-service --unit-dir /tmp/units --no-create-user  # to look at them",
        ],
    ),
    (
        &["server", "rotate-keys"],
        &[
            "pivtap server rotate-keys --config /etc/pivtap/server.toml",
            "pivtap server rotate-keys --config /etc/pivtap/server.toml --json",
        ],
    ),
    (
        &["server", "migrate-store"],
        &[
            "PIVTAP_STORE_PASSWORD=... pivtap server migrate-store --from sqlite:/var/lib/pivtap/server/pivtap.db --to 'postgres://pivtap@db.example.com:5432/pivtap'",
            "pivtap server migrate-store --from sqlite:pivtap.db --to 'postgres://pivtap@127.0.0.1:5432/pivtap' --json",
        ],
    ),
    (
        &["server", "run"],
        &[
            "pivtap server run --config ./server/server.toml",
            "pivtap server run --config ./server/server.toml --listen 0.0.0.0:8443",
        ],
    ),
    (
        &["admin", "users", "add"],
        &["pivtap admin users add --id alice --name \"Alice Example\" --mail alice@example.com"],
    ),
    (
        &["admin", "users", "import"],
        &[
            "pivtap admin users import staff.csv  # header: id,display_name,mail,upn,employee_id",
            "pivtap admin users import staff.csv --update --dry-run  # what would change",
        ],
    ),
    (
        &["admin", "users", "list"],
        &[
            "pivtap admin users list --server https://auth.example.com:8443 --ca tls.crt --token-file admin.token",
            "pivtap admin users list --json",
        ],
    ),
    (
        &["admin", "users", "update"],
        &[
            "pivtap admin users update erin --mail erin.new@example.com",
            "pivtap admin users update erin --rename erin.b --name \"Erin B\"",
        ],
    ),
    (
        &["admin", "users", "delete"],
        &["pivtap admin users delete erin --yes  # revokes her cards"],
    ),
    (
        &["admin", "users", "lock"],
        &["pivtap admin users lock alice"],
    ),
    (
        &["admin", "users", "unlock"],
        &["pivtap admin users unlock alice"],
    ),
    (
        &["admin", "cards", "list"],
        &["pivtap admin cards list --json"],
    ),
    (
        &["admin", "cards", "lock"],
        &["pivtap admin cards lock 767fc752e205af92@3f2a9c0d"],
    ),
    (
        &["admin", "cards", "unlock"],
        &["pivtap admin cards unlock 767fc752e205af92@3f2a9c0d"],
    ),
    (
        &["admin", "cards", "revoke"],
        &[
            "pivtap admin cards revoke 767fc752e205af92@3f2a9c0d --reason keyCompromise",
            "pivtap admin cards revoke 767fc752e205af92 --reason cessationOfOperation --yes",
        ],
    ),
    (
        &["admin", "cards", "delete"],
        &["pivtap admin cards delete 767fc752e205af92@3f2a9c0d"],
    ),
    (
        &["admin", "devices", "add"],
        &[
            "pivtap admin devices add kiosk-07",
            "pivtap admin devices add kiosk-08 --valid-for 2h",
        ],
    ),
    (
        &["admin", "devices", "list"],
        &["pivtap admin devices list"],
    ),
    (
        &["admin", "devices", "disable"],
        &["pivtap admin devices disable kiosk-07"],
    ),
    (
        &["admin", "devices", "enable"],
        &["pivtap admin devices enable kiosk-07"],
    ),
    (
        &["admin", "devices", "remove"],
        &["pivtap admin devices remove kiosk-07"],
    ),
    (
        &["admin", "sessions", "list"],
        &[
            "pivtap admin sessions list",
            "pivtap admin sessions list --user erin --all --json",
            "pivtap admin sessions list --device kiosk-07",
        ],
    ),
    (
        &["admin", "sessions", "show"],
        &["pivtap admin sessions show Xr3c9V0m2QeL7kZpA1bN4w"],
    ),
    (
        &["admin", "sessions", "end"],
        &["pivtap admin sessions end Xr3c9V0m2QeL7kZpA1bN4w"],
    ),
    (
        &["admin", "clients", "add"],
        &[
            "pivtap admin clients add --id wiki --redirect-uri https://wiki.example.com/oidc/callback > wiki.secret",
            "pivtap admin clients add --id scanner-app --public --redirect-uri http://127.0.0.1:8400/callback",
            "pivtap admin clients add --id erp --redirect-uri https://erp.example.com/cb --backchannel-logout-uri https://erp.example.com/logout --json",
        ],
    ),
    (
        &["admin", "clients", "list"],
        &["pivtap admin clients list --json"],
    ),
    (
        &["admin", "clients", "show"],
        &["pivtap admin clients show wiki"],
    ),
    (
        &["admin", "clients", "remove"],
        &["pivtap admin clients remove wiki"],
    ),
    (
        &["admin", "enroll"],
        &[
            "pivtap admin enroll alice",
            "pivtap admin enroll alice --valid-for 2h --json",
        ],
    ),
    (
        &["admin", "credentials", "add"],
        &["pivtap admin credentials add erin-laptop > erin.token"],
    ),
    (
        &["admin", "credentials", "list"],
        &["pivtap admin credentials list --json"],
    ),
    (
        &["admin", "credentials", "revoke"],
        &["pivtap admin credentials revoke erin-laptop"],
    ),
    (
        &["admin", "audit"],
        &[
            "pivtap admin audit --user erin --limit 20",
            "pivtap admin audit --user erin --kind sign_in_refused  # why can't Erin sign in?",
            "pivtap admin audit --limit 50 --before 1234  # the page after event 1234",
            "pivtap admin audit --outcome challenge_reused --since 2026-01-01T00:00:00Z --json",
        ],
    ),
    (
        &["kiosk"],
        &[
            "pivtap kiosk --config /etc/pivtap/kiosk.toml",
            "pivtap kiosk --config kiosk.toml --headless  # JSON lines, for a service manager",
        ],
    ),
    (
        &["kiosk", "set-exit-passcode"],
        &[
            "pivtap kiosk set-exit-passcode --config /etc/pivtap/kiosk.toml  # asks twice, no echo",
            "pivtap kiosk set-exit-passcode --config kiosk.toml --json  # reads PIVTAP_EXIT_PASSCODE or a line of stdin",
        ],
    ),
    (
        &["kiosk", "enroll-device"],
        &[
            "pivtap kiosk enroll-device --server https://auth.example.com:8443 --ca tls.crt --code 4HJW-PX2D --out /etc/pivtap/device",
        ],
    ),
    (
        &["demo"],
        &[
            "pivtap demo",
            "pivtap demo --headless  # the scripted story as JSON events",
        ],
    ),
    (
        &["bench", "server"],
        &[
            "pivtap bench server --server https://127.0.0.1:8443 --ca server/tls.crt --config server/server.toml",
            "pivtap bench server --server https://127.0.0.1:8443 --ca server/tls.crt --config server/server.toml --populated pop  # as populated users",
        ],
    ),
    (
        &["bench", "populate"],
        &[
            "pivtap bench populate --config server/server.toml  # 100,000 users and cards, 10 million audit events",
            "pivtap bench populate --config server/server.toml --users 20000 --audit-events 1000000 --json",
        ],
    ),
    (
        &["bench", "tap"],
        &[
            "pivtap bench tap --server https://127.0.0.1:8443 --ca server/tls.crt --vcard alice.toml",
        ],
    ),
];

/// `command` (the whole `pivtap` command) with each entry of [`EXAMPLES`] as the
/// "Examples:" section at the end of its command's help; a command that only groups others
/// (`pivtap admin`, `pivtap admin users`) shows the first example of each command below it.
#[must_use]
pub fn with_examples(mut command: Command) -> Command {
    for (path, lines) in EXAMPLES {
        command = add_examples(command, path, lines);
    }
    let mut groups: Vec<&[&str]> = EXAMPLES
        .iter()
        .flat_map(|(path, _)| (1..path.len()).map(|end| &path[..end]))
        .filter(|group| EXAMPLES.iter().all(|(path, _)| path != group))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    for group in groups {
        let firsts: Vec<&str> = EXAMPLES
            .iter()
            .filter(|(path, _)| path.starts_with(group))
            .filter_map(|(_, lines)| lines.first().copied())
            .collect();
        command = add_examples(command, group, &firsts);
    }
    command
}

fn add_examples(command: Command, path: &[&str], lines: &[&str]) -> Command {
    match path.split_first() {
        None => {
            let text = lines
                .iter()
                .fold(String::from("Examples:"), |text, line| text + "\n  " + line);
            command.after_help(text)
        }
        Some((first, rest)) => command.mut_subcommand(*first, |sub| add_examples(sub, rest, lines)),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::Cli;

    /// The words of a shell command line: double- and single-quoted parts kept whole,
    /// `VAR=value` prefixes and `# comments` and redirections dropped.
    fn words(line: &str) -> Vec<String> {
        let line = line.split("  #").next().unwrap_or(line);
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quote = None;
        let mut in_word = false;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '"' | '\'') => {
                    quote = Some(c);
                    in_word = true;
                }
                (None, ' ') => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                (None, c) => {
                    word.push(c);
                    in_word = true;
                }
            }
        }
        if in_word {
            words.push(word);
        }
        let start = words.iter().position(|w| w == "pivtap").unwrap_or(0);
        let end = words.iter().position(|w| w == ">").unwrap_or(words.len());
        words[start..end].to_vec()
    }

    /// Every command path a user can type that runs something (leaf commands, and commands
    /// that run without a subcommand).
    fn runnable(command: &Command, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
        let subcommands: Vec<&Command> = command
            .get_subcommands()
            .filter(|sub| sub.get_name() != "help")
            .collect();
        if !path.is_empty() && (subcommands.is_empty() || !command.is_subcommand_required_set()) {
            found.push(path.clone());
        }
        for sub in subcommands {
            path.push(sub.get_name().to_owned());
            runnable(sub, path, found);
            path.pop();
        }
    }

    #[test]
    fn every_command_has_examples_that_parse() {
        let command = with_examples(Cli::command());
        let mut found = Vec::new();
        runnable(&command, &mut Vec::new(), &mut found);
        let listed: Vec<Vec<String>> = EXAMPLES
            .iter()
            .map(|(path, _)| path.iter().map(|w| (*w).to_owned()).collect())
            .collect();
        let missing: Vec<String> = found
            .iter()
            .filter(|path| !listed.contains(path))
            .map(|path| path.join(" "))
            .collect();
        assert!(
            missing.is_empty(),
            "commands without examples in src/help_examples.rs: {missing:?}"
        );
        for (path, lines) in EXAMPLES {
            for line in *lines {
                let words = words(line);
                assert_eq!(
                    &words[1..=path.len()],
                    *path,
                    "{line:?} is not an example of {path:?}"
                );
                if let Err(error) = command.clone().try_get_matches_from(&words) {
                    panic!("the example {line:?} does not parse:\n{error}");
                }
            }
        }
    }

    #[test]
    fn help_ends_with_the_examples() {
        let mut command = with_examples(Cli::command());
        let help = command
            .find_subcommand_mut("admin")
            .and_then(|admin| admin.find_subcommand_mut("audit"))
            .expect("admin audit")
            .render_help()
            .to_string();
        assert!(
            help.contains("Examples:\n  pivtap admin audit --user erin --limit 20"),
            "{help}"
        );
        let users = command
            .find_subcommand_mut("admin")
            .and_then(|admin| admin.find_subcommand_mut("users"))
            .expect("admin users")
            .render_help()
            .to_string();
        assert!(
            users.contains("Examples:\n  pivtap admin users add --id alice")
                && users.contains("\n  pivtap admin users unlock alice"),
            "{users}"
        );
    }
}
