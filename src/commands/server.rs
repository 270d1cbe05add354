//! `pivtap server`: set up and run the authentication server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use pivtap_server::config::ServerConfig;
use pivtap_server::init::{CONFIG_FILE, InitOptions, Secret, init_server, renew_tls};
use pivtap_server::server;
use pivtap_server::store::PostgresStore;
use pivtap_server::store::url::{StorePassword, StoreUrl};
use pivtap_server::{backup, check};

mod service;

/// `pivtap server ...`
#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Write a ready-to-run server into DIR: server.toml, a TLS certificate and
    /// key, token signing keys, an admin credential, the issuing CA that
    /// enrollment signs card certificates with (trusted automatically), and any
    /// further trusted card CAs.
    Init {
        /// The directory (created; must be empty unless --force).
        dir: PathBuf,
        /// A further CA certificate (PEM) whose worker cards may sign in, besides
        /// the issuing CA `init` makes; repeat for several.
        #[arg(long = "trust", value_name = "CA.pem")]
        trust: Vec<PathBuf>,
        /// Address and port to listen on: 0.0.0.0:8443 for every interface.
        #[arg(long, value_name = "ADDRESS:PORT", default_value = "127.0.0.1:8443", value_parser = crate::cli_input::listen_address)]
        listen: SocketAddr,
        /// Extra host names for the TLS certificate (127.0.0.1, ::1 and localhost are always in it).
        #[arg(long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
        /// Write into DIR even if it is not empty: the configuration and the TLS
        /// certificate are rewritten; the database and the issuing CA are kept;
        /// existing secrets are replaced only when named in --replace (or kept
        /// with --keep-secrets), otherwise init refuses and says what would break.
        #[arg(long)]
        force: bool,
        /// With --force, the existing secrets to replace, comma-separated:
        /// tls-key (kiosks pinning the server key stop connecting), token-key
        /// (issued session tokens stop verifying), admin-token (admin scripts are
        /// refused).
        #[arg(
            long,
            value_delimiter = ',',
            value_name = "SECRET,...",
            requires = "force"
        )]
        replace: Vec<Secret>,
        /// With --force, keep the existing secrets not named in --replace.
        #[arg(long, requires = "force")]
        keep_secrets: bool,
        /// Where the store lives, written to [store] url: sqlite:PATH, or
        /// postgres://USER@HOST:5432/DB?sslmode=verify-full&sslrootcert=CA.crt
        /// (never with a password in it). Default: the SQLite file pivtap.db in DIR.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// The file holding the PostgreSQL password (mode 0600), written to
        /// [store] password_file; without it the server reads PIVTAP_STORE_PASSWORD.
        #[arg(long, value_name = "PATH", requires = "store")]
        store_password_file: Option<PathBuf>,
    },
    /// Renew the server's own TLS certificate: a new self-signed certificate for
    /// the same names, valid a year, with the same key, so kiosks' key pins keep
    /// working (unless --new-key). Restart the server to serve it.
    RenewTls {
        /// The server configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Make a new key too: the key pin changes and every kiosk and client
        /// pinning the old one must be given the new pin.
        #[arg(long)]
        new_key: bool,
        /// Print the result as JSON (certificate, names, not_after, pin, new_key).
        #[arg(long)]
        json: bool,
    },
    /// Start signing session tokens with a new key. The previous key stays in
    /// the JWKS until the last token it signed expires, so apps keep
    /// accepting those tokens. The rotation is written to the database: every
    /// running server signs with the new key within a second, no restart.
    RotateKeys {
        /// The server configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print the result as JSON (current_kid, previous_kid, version).
        #[arg(long)]
        json: bool,
    },
    /// Install the systemd units: pivtap-server.service (`server run`) and
    /// pivtap-kiosk.service (`kiosk --headless`), run as a dedicated system user
    /// (created if missing), hardened, logging to the journal, restarted on
    /// failure. The units name this binary's real path. Run as root.
    InstallService {
        /// Which units to install (repeat or comma-separate); both by default.
        #[arg(
            long = "service",
            value_enum,
            value_delimiter = ',',
            value_name = "SERVICE"
        )]
        services: Vec<service::Service>,
        /// The system user the services run as.
        #[arg(long, default_value = "pivtap")]
        user: String,
        /// Where the units are written.
        #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// Do not create the user (it must exist when the services start).
        #[arg(long)]
        no_create_user: bool,
    },
    /// Check a server's configuration without starting it: it parses, its
    /// files are there and secrets are readable by their owner only,
    /// certificates parse and are in date (a warning within 30 days of their
    /// end), the TLS key matches its certificate, the issuing CA loads, and the
    /// database opens with a schema this pivtap knows. Exits 1 on any error.
    Check {
        /// The server directory (its server.toml) or the configuration file.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Back the server up into FILE (new, mode 0600) while it runs: a consistent
    /// copy of the database, and every file of the server directory the
    /// configuration names, the issuing CA key, TLS key, token keys and admin
    /// credential included. Keep it as safe as the CA key.
    Backup {
        /// The server configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The backup file to write (must not exist).
        file: PathBuf,
        /// Print what was backed up as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into DIR, the directory of a stopped server (or a new
    /// one): refused while a server runs on it; what DIR held is moved aside to
    /// DIR.before-restore-TIME first.
    Restore {
        /// The backup file (from `pivtap server backup`).
        file: PathBuf,
        /// The server directory to restore into.
        dir: PathBuf,
    },
    /// Copy a stopped server's SQLite store into an empty PostgreSQL store, in one
    /// transaction: users, cards, the audit (its ids kept), enrollment codes, issued and
    /// revoked certificates, renewals, devices, admin credentials. Pending challenges are
    /// not copied (kiosks ask the new store for new ones). Every table's count is checked
    /// against the source before the copy commits. Refused while a server runs on the
    /// source, or when the target holds data. The PostgreSQL password comes from
    /// --to-password-file, else PIVTAP_STORE_PASSWORD.
    MigrateStore {
        /// The source: sqlite:PATH (the store server.toml names).
        #[arg(long, value_name = "URL")]
        from: String,
        /// The target: postgres://USER@HOST:PORT/DATABASE?sslmode=verify-full (a new,
        /// empty database).
        #[arg(long, value_name = "URL")]
        to: String,
        /// The file holding the target database's password (mode 0600).
        #[arg(long, value_name = "FILE")]
        to_password_file: Option<PathBuf>,
        /// Print the tables and their counts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the server (HTTPS; stops cleanly on Ctrl-C or SIGTERM; on SIGHUP
    /// reloads the trusted CAs, CRLs and mapping, keeping them if one is bad).
    Run {
        /// The configuration written by `pivtap server init`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Listen here instead of the configured address (such as 0.0.0.0:8443).
        #[arg(long, value_name = "ADDRESS:PORT", value_parser = crate::cli_input::listen_address)]
        listen: Option<SocketAddr>,
        /// How log lines are written: text (for people) or json (one JSON object per
        /// line, each request with its request_id, route template and client address).
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        log_format: crate::log_format::LogFormat,
    },
}

impl ServerCommand {
    /// Whether the command keeps running (and so logs requests by default).
    #[must_use]
    pub fn is_long_running(&self) -> bool {
        matches!(self, ServerCommand::Run { .. })
    }

    /// The log format asked for (`server run --log-format`; text otherwise).
    #[must_use]
    pub fn log_format(&self) -> crate::log_format::LogFormat {
        match self {
            ServerCommand::Run { log_format, .. } => *log_format,
            _ => crate::log_format::LogFormat::Text,
        }
    }
}

/// Runs a `server` subcommand.
pub fn run(command: ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::Init {
            dir,
            trust,
            listen,
            hostnames,
            force,
            replace,
            keep_secrets,
            store,
            store_password_file,
        } => {
            let store = match store {
                // Parsed here rather than by clap, whose errors would echo a password.
                Some(url) => Some(pivtap_server::config::StoreConfig {
                    url: pivtap_server::store::url::StoreUrl::parse(&url).context("--store")?,
                    password_file: store_password_file
                        .map(|file| std::path::absolute(&file))
                        .transpose()
                        .context("--store-password-file")?,
                }),
                None => None,
            };
            let store_text = store.as_ref().map_or_else(
                || "sqlite:pivtap.db (beside server.toml)".to_owned(),
                |store| store.url.to_string(),
            );
            let report = init_server(
                &dir,
                &InitOptions {
                    trust,
                    listen,
                    hostnames,
                    force,
                    replace: replace.into_iter().collect(),
                    keep_secrets,
                    store,
                },
            )?;
            println!("Server ready in {}.", dir.display());
            for secret in &report.replaced {
                println!(
                    "  replaced {} ({}): {}",
                    secret.file(),
                    secret.name(),
                    secret.what_breaks()
                );
            }
            for secret in &report.kept {
                println!("  kept {} ({})", secret.file(), secret.name());
            }
            println!("  configuration:    {}", report.config_path.display());
            println!("  origin:           {}", report.origin);
            println!("  store:            {store_text}");
            println!(
                "  admin credential: {} (keep it secret)",
                report.admin_token_path.display()
            );
            println!("  server key pin:   sha256//{}", report.spki_sha256_pin);
            println!(
                "  issuing CA:       {}{} (cards enrolled with `pivtap admin enroll` chain to it; keep ca.key secret)",
                report.ca_certificate_path.display(),
                if report.ca_created { "" } else { ", kept" }
            );
            println!();
            println!(
                "Start it:  pivtap server run --config {}",
                report.config_path.display()
            );
            println!(
                "Clients trust it with --ca {} or --pin-sha256 sha256//{}",
                dir.join("tls.crt").display(),
                report.spki_sha256_pin
            );
            println!(
                "Health: GET /livez (the process answers), GET /readyz (a sign-in can be recorded). \
                 GET /metrics is served nowhere until [metrics] in server.toml sets \
                 listen = \"127.0.0.1:9464\" (loopback) or token_file (a bearer credential)."
            );
            println!(
                "Devices: challenges go only to registered devices. Register each kiosk with \
                 `pivtap admin devices add ID`, then run `pivtap kiosk enroll-device` on it."
            );
            Ok(())
        }
        ServerCommand::InstallService {
            mut services,
            user,
            unit_dir,
            no_create_user,
        } => {
            if services.is_empty() {
                services = vec![service::Service::Server, service::Service::Kiosk];
            }
            services.sort_unstable();
            services.dedup();
            let binary = std::env::current_exe()
                .and_then(std::fs::canonicalize)
                .context("cannot find the path of this pivtap binary")?;
            let installed =
                service::install(&services, &binary, &user, &unit_dir, !no_create_user)?;
            for path in &installed.units {
                println!("wrote {}", path.display());
            }
            if installed.created_user {
                println!("created the system user {user}");
            }
            println!("Next:");
            println!("  systemctl daemon-reload");
            for service in &services {
                let dir = format!("{}/{}", service::STATE_DIRECTORY, service.directory());
                match service {
                    service::Service::Server => println!(
                        "  install -d -o {user} -m 0700 {state}\n  \
                         sudo -u {user} {bin} server init {dir} --hostname HOST --listen 0.0.0.0:8443",
                        state = service::STATE_DIRECTORY,
                        bin = binary.display()
                    ),
                    service::Service::Kiosk => println!(
                        "  install -d -o {user} -m 0700 {dir}   (then put kiosk.toml there, \
                         owned by {user}, and run `sudo -u {user} {bin} kiosk enroll-device` as the README says)",
                        bin = binary.display()
                    ),
                }
                println!("  systemctl enable --now {}", service.unit_name());
            }
            Ok(())
        }
        ServerCommand::Check { path, json } => {
            let config = if path.is_dir() {
                path.join(CONFIG_FILE)
            } else {
                path
            };
            let report = check::check(&config, time::OffsetDateTime::now_utc());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for finding in &report.findings {
                    let level = match finding.level {
                        check::Level::Ok => "ok     ",
                        check::Level::Warning => "WARNING",
                        check::Level::Error => "ERROR  ",
                    };
                    match &finding.path {
                        Some(file) => println!(
                            "{level} {}: {} ({})",
                            finding.what,
                            finding.detail,
                            file.display()
                        ),
                        None => println!("{level} {}: {}", finding.what, finding.detail),
                    }
                }
            }
            let errors = report
                .findings
                .iter()
                .filter(|finding| finding.level == check::Level::Error)
                .count();
            if errors > 0 {
                anyhow::bail!(
                    "{} has {errors} error(s); the server would not start or not work as configured",
                    config.display()
                );
            }
            if !json {
                println!("{} checks out.", config.display());
            }
            Ok(())
        }
        ServerCommand::Backup { config, file, json } => {
            let report = backup::backup(&config, &file)?;
            if json {
                let value = serde_json::json!({
                    "file": file,
                    "size": report.size,
                    "files": report.files,
                    "left_out": report.left_out,
                    "database_copy_ms": report.database_copy.as_secs_f64() * 1000.0,
                });
                println!("{value:#}");
            } else {
                println!(
                    "Backed up to {} ({} bytes, mode 0600): the database and {}.",
                    file.display(),
                    report.size,
                    report
                        .files
                        .iter()
                        .map(|path| path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                println!(
                    "It holds the issuing CA key, the TLS key, the token keys and the admin \
                     credential: keep it as safe as they are."
                );
            }
            for path in &report.left_out {
                eprintln!(
                    "warning: {} is outside the server directory and not in the backup; back it up yourself",
                    path.display()
                );
            }
            Ok(())
        }
        ServerCommand::Restore { file, dir } => {
            let report = backup::restore(&file, &dir, CONFIG_FILE)?;
            println!(
                "Restored the backup of {} into {}.",
                report.created_at,
                dir.display()
            );
            if let Some(previous) = &report.previous {
                println!(
                    "What {} held is now in {}.",
                    dir.display(),
                    previous.display()
                );
            }
            println!(
                "Start it:  pivtap server run --config {}   (or systemctl start pivtap-server)",
                report.config_path.display()
            );
            Ok(())
        }
        ServerCommand::RenewTls {
            config,
            new_key,
            json,
        } => {
            let configuration = ServerConfig::load(&config)?;
            let report = renew_tls(&configuration, new_key)?;
            let not_after = report
                .not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            if json {
                let value = serde_json::json!({
                    "certificate": report.certificate_path,
                    "names": report.names,
                    "not_after": not_after,
                    "pin_sha256": format!("sha256//{}", report.spki_sha256_pin),
                    "new_key": report.new_key,
                });
                println!("{value:#}");
                return Ok(());
            }
            println!(
                "Renewed {} for {} until {}.",
                report.certificate_path.display(),
                report.names.join(", "),
                not_after
            );
            if report.new_key {
                println!(
                    "NEW KEY: the key pin is now sha256//{}; give it to every kiosk and client \
                     that pins the old one.",
                    report.spki_sha256_pin
                );
            } else {
                println!(
                    "The key is kept: the pin stays sha256//{}.",
                    report.spki_sha256_pin
                );
            }
            println!("Restart the server to serve it.");
            Ok(())
        }
        ServerCommand::RotateKeys { config, json } => {
            let configuration = ServerConfig::load(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let rotated = runtime.block_on(async {
                let store = configuration.open_store().await?;
                pivtap_server::server::rotate_token_keys(
                    store.as_ref(),
                    &configuration.tokens.key_file,
                    configuration.tokens.lifetime(),
                    time::OffsetDateTime::now_utc(),
                )
                .await
            })?;
            if json {
                let value = serde_json::json!({
                    "current_kid": rotated.current_kid,
                    "previous_kid": rotated.previous_kid,
                    "version": rotated.version,
                });
                println!("{value:#}");
                return Ok(());
            }
            println!(
                "New token signing key {} (previous {} stays published until its tokens expire). \
                 Running servers sign with it within a second; no restart.",
                rotated.current_kid, rotated.previous_kid
            );
            Ok(())
        }
        ServerCommand::MigrateStore {
            from,
            to,
            to_password_file,
            json,
        } => migrate_store(&from, &to, to_password_file.as_deref(), json),
        ServerCommand::Run { config, listen, .. } => {
            let mut configuration = ServerConfig::load(&config)?;
            if let Some(listen) = listen {
                configuration.listen = listen;
                configuration.validate(&config)?;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let scheme = if configuration.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let (origin, metrics) =
                    (configuration.origin.clone(), configuration.metrics.listen);
                let announce = move |address| {
                    println!("pivtap server listening on {scheme}://{address} (origin {origin})");
                    if let Some(metrics) = metrics {
                        println!("metrics on http://{metrics}/metrics");
                    }
                };
                server::service::run_until_stopped(config, &configuration, announce).await?;
                println!("pivtap server stopped.");
                anyhow::Ok(())
            })
        }
    }
}

/// `pivtap server migrate-store`.
fn migrate_store(
    from: &str,
    to: &str,
    to_password_file: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    let StoreUrl::Sqlite(from) = StoreUrl::parse(from).context("--from")? else {
        anyhow::bail!(
            "--from must be the SQLite store to copy (sqlite:PATH); migrate-store copies from SQLite into PostgreSQL"
        );
    };
    let StoreUrl::Postgres(to) = StoreUrl::parse(to).context("--to")? else {
        anyhow::bail!(
            "--to must be a PostgreSQL store (postgres://USER@HOST:PORT/DATABASE); migrate-store copies from SQLite into PostgreSQL"
        );
    };
    let password = StorePassword::locate(to_password_file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let migration = runtime.block_on(async {
        let target = PostgresStore::connect(&to, password.as_ref())
            .await
            .with_context(|| format!("cannot open the target store {to}"))?;
        let migration = pivtap_server::store::bulk::migrate_store(&from, &target).await?;
        anyhow::Ok(migration)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&migration)?);
        return Ok(());
    }
    println!(
        "Copied {} into PostgreSQL in {:.1} s; counts checked:",
        from.display(),
        migration.elapsed.as_secs_f64()
    );
    for table in &migration.tables {
        println!("  {:<22} {:>12} rows", table.table, table.after);
    }
    for left_out in &migration.left_out {
        println!("  {:<22} not copied: {}", left_out.table, left_out.why);
    }
    println!(
        "Next: point [store] in server.toml at the PostgreSQL URL and start the servers; \
         keep {} until they run.",
        from.display()
    );
    Ok(())
}
