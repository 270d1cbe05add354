//! `pivtap admin`: the administrator's command line for users, cards, devices, sessions, OpenID Connect clients, enrollment codes and the audit log.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use pivtap_client::client::{AuditFilter, CardAction, ImportOptions, ImportSource, SessionFilter};
use pivtap_protocol::duration::parse_duration;
use pivtap_protocol::escape::escape_unambiguous;
use pivtap_protocol::wire::{
    AuditRecord, CardRecord, ClientRecord, DeviceRecord, EnrollmentCode, ImportReport, NewClient,
    SessionRecord, UserRecord, UserUpdate,
};
use pivtap_server::store::RevocationReason;
use serde::Serialize;
use zeroize::Zeroizing;

use super::auth::{OptionalServerArgs, explain};

/// `pivtap admin ...`
#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    server: OptionalServerArgs,
    /// The admin credential file (`admin.token` from `pivtap server init`);
    /// or set PIVTAP_ADMIN_TOKEN.
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Users of the directory.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Cards that have signed in or were enrolled (`card` works too).
    #[command(subcommand, alias = "card")]
    Cards(CardsCommand),
    /// Shared devices (kiosks): only registered devices get challenges (`device` works too).
    #[command(subcommand, alias = "device")]
    Devices(DevicesCommand),
    /// Sign-in sessions: list them, show one, end one (`session` works too).
    #[command(subcommand, alias = "session")]
    Sessions(SessionsCommand),
    /// OpenID Connect clients (the apps that sign workers in through pivtap; `client`
    /// works too).
    #[command(subcommand, alias = "client")]
    Clients(ClientsCommand),
    /// Make a single-use enrollment code for USER: prints the code, its
    /// pivtap://enroll link and a QR code of the link for the worker's device.
    Enroll {
        /// The user id.
        user: String,
        /// How long the code is accepted: 90s, 15m, 2h, 7d (at most the
        /// server's max_code_validity_seconds).
        #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
        valid_for: Duration,
    },
    /// Named admin credentials: each admin action's audit names the one that acted
    /// (`credential` works too).
    #[command(subcommand, alias = "credential")]
    Credentials(CredentialsCommand),
    /// The audit log, newest first.
    #[command(verbatim_doc_comment)]
    Audit {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this card (certificate serial).
        #[arg(long)]
        card: Option<String>,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// Only this outcome: ok, or an error code such as challenge_reused.
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long, help = audit_kind_help())]
        kind: Option<String>,
        /// Only events older than event ID: the next page after a page ending at ID.
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
        /// From this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Until this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many events (at most 1000; 0 for none).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
enum UsersCommand {
    /// Add a user.
    Add {
        /// The user id (the token's `sub`).
        #[arg(long)]
        id: String,
        /// The name to show.
        #[arg(long)]
        name: String,
        /// E-mail address.
        #[arg(long)]
        mail: Option<String>,
        /// Microsoft UPN.
        #[arg(long)]
        upn: Option<String>,
        /// Employee number.
        #[arg(long)]
        employee_id: Option<String>,
    },
    /// Add users from a JSON array or a CSV file (header: id,display_name,mail,upn,employee_id).
    ///
    /// Reports each user as added, updated (with the fields), unchanged or refused.
    #[command(verbatim_doc_comment)]
    Import {
        /// The file (.json or .csv).
        file: PathBuf,
        /// Update users that exist already (else they are refused as existing).
        #[arg(long)]
        update: bool,
        /// Check everything and report, but change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Change a user's name or attributes, or rename them.
    ///
    /// Each option given replaces the user's value ("" removes a mail, UPN or
    /// employee id); --rename changes the id (cards and audit events follow).
    #[command(verbatim_doc_comment)]
    Update {
        /// The user id.
        id: String,
        /// The name to show.
        #[arg(long)]
        name: Option<String>,
        /// E-mail address ("" removes it).
        #[arg(long)]
        mail: Option<String>,
        /// Microsoft UPN ("" removes it).
        #[arg(long)]
        upn: Option<String>,
        /// Employee number ("" removes it).
        #[arg(long)]
        employee_id: Option<String>,
        /// The new user id.
        #[arg(long, value_name = "NEW_ID")]
        rename: Option<String>,
    },
    /// Delete a user and revoke their cards.
    ///
    /// Their cards are revoked for good (reason affiliationChanged, in the CRL) and stay
    /// listed without a user; their enrollment codes are void; the audit keeps their
    /// events. Asks for confirmation unless --yes.
    Delete {
        /// The user id.
        id: String,
        /// Do not ask (for scripts).
        #[arg(long)]
        yes: bool,
    },
    /// List users.
    List,
    /// Lock a user: their cards stop signing in.
    Lock {
        /// The user id.
        id: String,
    },
    /// Unlock a user.
    Unlock {
        /// The user id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum CredentialsCommand {
    /// Add a named admin credential and print its token, once: keep it in a file
    /// for --token-file (or in PIVTAP_ADMIN_TOKEN).
    #[command(verbatim_doc_comment)]
    Add {
        /// Its name (letters, digits, '.', '_', '@', '-'), e.g. the admin and machine.
        name: String,
    },
    /// List the admin credentials (`initial` is the server's admin.token).
    List,
    /// Revoke an admin credential for good (the last active one cannot be).
    Revoke {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum CardsCommand {
    /// List cards: each with its id, `serial@issuer-id` (two CAs may issue the same serial).
    List,
    /// Lock a card.
    Lock {
        /// The card: its id as `cards list` shows it (`serial@issuer-id`), or its
        /// certificate serial when no other issuer's card has that serial.
        card: String,
    },
    /// Unlock a card.
    Unlock {
        /// The card: `serial@issuer-id`, or the serial when unambiguous.
        card: String,
    },
    /// Revoke a card for good: it goes on the CRL with the reason. Asks for
    /// confirmation unless --yes.
    #[command(verbatim_doc_comment)]
    Revoke {
        /// The card: `serial@issuer-id`, or the serial when unambiguous.
        card: String,
        /// Why (RFC 5280): unspecified, keyCompromise, affiliationChanged, superseded,
        /// cessationOfOperation, privilegeWithdrawn.
        #[arg(long, default_value = "unspecified", value_parser = parse_reason)]
        reason: RevocationReason,
        /// Do not ask (for scripts).
        #[arg(long)]
        yes: bool,
    },
    /// Delete a revoked card's record (its certificate stays revoked).
    Delete {
        /// The card: `serial@issuer-id`, or the serial when unambiguous.
        card: String,
    },
}

#[derive(Subcommand, Debug)]
enum DevicesCommand {
    /// Register a device: prints its one-time device enrollment code, for
    /// `pivtap kiosk enroll-device` on the device.
    Add {
        /// The device id (e.g. kiosk-07): letters, digits, '.', '_', ':' or '-'.
        id: String,
        /// How long the code is accepted: 90s, 15m, 2h, 7d (the server's
        /// [devices] code_validity_seconds when not given; at most 30d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        valid_for: Option<Duration>,
    },
    /// List the registered devices.
    List,
    /// Disable a device: no more challenges; those it holds are void.
    Disable {
        /// The device id.
        id: String,
    },
    /// Enable a disabled device again.
    Enable {
        /// The device id.
        id: String,
    },
    /// Remove a device (to enroll it again, add it again).
    Remove {
        /// The device id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum SessionsCommand {
    /// List sessions, newest first (at most 1000): the active ones unless --all.
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only those begun on this device.
        #[arg(long)]
        device: Option<String>,
        /// Only those of this card (serial, or serial@issuer-id).
        #[arg(long)]
        card: Option<String>,
        /// Ended sessions too.
        #[arg(long)]
        all: bool,
    },
    /// Show one session.
    Show {
        /// The session id.
        id: String,
    },
    /// End a session: its tokens stop working, its device signs the worker out, and the
    /// apps that took part get a back-channel logout.
    End {
        /// The session id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum ClientsCommand {
    /// Register an OpenID Connect client; a confidential client's secret is printed this
    /// once.
    Add {
        /// The client id: letters, digits, '.', '_', '@' or '-'.
        #[arg(long)]
        id: String,
        /// A redirect URI (exact match): https://..., or http:// on 127.0.0.1, [::1] or
        /// localhost. Repeat for more.
        #[arg(long = "redirect-uri", value_name = "URI", required = true)]
        redirect_uris: Vec<String>,
        /// A public client (a native app): no secret, PKCE only.
        #[arg(long)]
        public: bool,
        /// Where back-channel logout tokens are posted when a session it took part in ends.
        #[arg(long, value_name = "URI")]
        backchannel_logout_uri: Option<String>,
    },
    /// List the registered clients.
    List,
    /// Show one client.
    Show {
        /// The client id.
        id: String,
    },
    /// Remove a client: its tokens stop working.
    Remove {
        /// The client id.
        id: String,
    },
}

/// Reads an RFC 5280 revocation reason name, in any case.
/// The help of `audit --kind`: every kind the store records, from the one list of them.
fn audit_kind_help() -> String {
    format!(
        "Only this kind: {}",
        pivtap_server::store::AuditKindFilter::names()
    )
}

fn parse_reason(text: &str) -> Result<RevocationReason, String> {
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not a revocation reason: use one of {}",
            RevocationReason::ALL
                .map(RevocationReason::as_str)
                .join(", ")
        )
    })
}

/// Asks on the terminal whether to go on (`question` is a yes/no question); without a
/// terminal, refuses: `what` needs `--yes` in scripts.
fn confirm(yes: bool, what: &str, question: &str) -> anyhow::Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{what} asks for confirmation: run it in a terminal, or pass --yes");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}

/// The QR code of `text` in Unicode half blocks (two modules per character
/// cell), light on dark so it scans from a dark terminal; with a quiet zone.
fn qr_text(text: &str) -> anyhow::Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).context("cannot make a QR code of the link")?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

fn enrollment_text(made: &EnrollmentCode, qr: &str) -> String {
    format!(
        "Enrollment code for {} ({}):\n\n    {}\n\nValid once, until {}.\nLink: {}\n\
         On the worker's device (with --ca or --pin-sha256 as for `pivtap auth`):\n    \
         pivtap card enroll --code '{}'\n\n{}\n",
        made.user.id, made.user.display_name, made.code, made.expires_at, made.url, made.url, qr
    )
}

fn admin_token(args: &AdminArgs) -> anyhow::Result<Zeroizing<String>> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(Zeroizing::new(text.trim().to_owned()));
    }
    match std::env::var("PIVTAP_ADMIN_TOKEN") {
        Ok(token) if !token.trim().is_empty() => Ok(Zeroizing::new(token.trim().to_owned())),
        _ => bail!(
            "no admin credential: give --token-file FILE (admin.token from `pivtap server init`) or set PIVTAP_ADMIN_TOKEN"
        ),
    }
}

/// Runs `pivtap admin`.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client = args
        .server
        .client()?
        .context("give the server with --server URL (or set PIVTAP_SERVER)")?;
    let token = admin_token(&args)?;
    let admin = client.admin(&token);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let json = args.json;
    runtime.block_on(async {
        match args.command {
            AdminCommand::Users(UsersCommand::Add {
                id,
                name,
                mail,
                upn,
                employee_id,
            }) => {
                let user = UserRecord {
                    id,
                    display_name: name,
                    mail,
                    upn,
                    employee_id,
                    state: "active".to_owned(),
                };
                let added = admin.add_user(&user).await.map_err(explain)?;
                print_one(json, &added, |u| {
                    format!("Added user {} ({}).", u.id, u.display_name)
                })
            }
            AdminCommand::Users(UsersCommand::Import {
                file,
                update,
                dry_run,
            }) => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                // Spreadsheets and some editors start the file with a UTF-8 byte-order mark.
                let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
                let options = ImportOptions { update, dry_run };
                let report = if file
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                {
                    admin.import(ImportSource::Csv(text), options).await
                } else {
                    let users: Vec<UserRecord> = serde_json::from_str(text).with_context(|| {
                        format!("{} is not a JSON array of users", file.display())
                    })?;
                    admin.import(ImportSource::Json(&users), options).await
                }
                .map_err(explain)?;
                print_one(json, &report, import_text)
            }
            AdminCommand::Users(UsersCommand::Update {
                id,
                name,
                mail,
                upn,
                employee_id,
                rename,
            }) => {
                let change = UserUpdate {
                    id: rename,
                    display_name: name,
                    mail,
                    upn,
                    employee_id,
                };
                if change == UserUpdate::default() {
                    bail!(
                        "nothing to change: give --name, --mail, --upn, --employee-id or --rename"
                    );
                }
                let user = admin.update_user(&id, &change).await.map_err(explain)?;
                print_one(json, &user, |u| {
                    if u.id == id {
                        format!("Updated user {}: {}", u.id, user_line(u))
                    } else {
                        format!("Renamed user {id} to {}: {}", u.id, user_line(u))
                    }
                })
            }
            AdminCommand::Users(UsersCommand::Delete { id, yes }) => {
                confirm(
                    yes,
                    "users delete",
                    &format!(
                        "Delete user {} and revoke their cards for good?",
                        escape_unambiguous(&id)
                    ),
                )?;
                let deleted = admin.delete_user(&id).await.map_err(explain)?;
                print_one(json, &deleted, |d| {
                    if d.revoked_cards.is_empty() {
                        format!("Deleted user {}; they had no cards to revoke.", d.deleted)
                    } else {
                        format!(
                            "Deleted user {}; revoked their cards: {}.",
                            d.deleted,
                            d.revoked_cards.join(", ")
                        )
                    }
                })
            }
            AdminCommand::Users(UsersCommand::List) => {
                let users = admin.list_users().await.map_err(explain)?;
                print_list(json, &users, user_line)
            }
            AdminCommand::Users(UsersCommand::Lock { id }) => {
                let user = admin.set_user_locked(&id, true).await.map_err(explain)?;
                print_one(json, &user, |u| format!("User {} is locked.", u.id))
            }
            AdminCommand::Users(UsersCommand::Unlock { id }) => {
                let user = admin.set_user_locked(&id, false).await.map_err(explain)?;
                print_one(json, &user, |u| format!("User {} is active.", u.id))
            }
            AdminCommand::Cards(CardsCommand::List) => {
                let cards = admin.list_cards().await.map_err(explain)?;
                print_list(json, &cards, card_line)
            }
            AdminCommand::Cards(CardsCommand::Lock { card: serial }) => {
                card_action(&admin, json, &serial, CardAction::Lock).await
            }
            AdminCommand::Cards(CardsCommand::Unlock { card: serial }) => {
                card_action(&admin, json, &serial, CardAction::Unlock).await
            }
            AdminCommand::Cards(CardsCommand::Revoke { card, reason, yes }) => {
                confirm(
                    yes,
                    "cards revoke",
                    &format!(
                        "Revoke card {} for good (reason {reason})?",
                        escape_unambiguous(&card)
                    ),
                )?;
                let revoked = admin
                    .revoke_card(&card, Some(reason.as_str()))
                    .await
                    .map_err(explain)?;
                print_one(json, &revoked, |c| {
                    format!(
                        "Card {} is {} (reason {reason}).",
                        if c.id.is_empty() { &c.serial } else { &c.id },
                        c.state
                    )
                })
            }
            AdminCommand::Cards(CardsCommand::Delete { card: serial }) => {
                admin.delete_card(&serial).await.map_err(explain)?;
                if json {
                    println!("{}", serde_json::json!({"deleted": serial}));
                } else {
                    println!(
                        "Card {serial} is deleted; its certificate stays on the revocation list."
                    );
                }
                Ok(())
            }
            AdminCommand::Devices(DevicesCommand::Add { id, valid_for }) => {
                let made = admin.add_device(&id, valid_for).await.map_err(explain)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&made)?);
                } else {
                    println!(
                        "Device enrollment code for {}:\n\n    {}\n\nValid once, until {}.\n\
                         On the device (with --ca or --pin-sha256 as for `pivtap auth`):\n    \
                         pivtap kiosk enroll-device --server {} --code '{}' --out DIR\n\
                         then set [server] device_key and device_certificate in kiosk.toml.",
                        made.device.id,
                        made.code,
                        made.expires_at,
                        client.server(),
                        made.code
                    );
                }
                Ok(())
            }
            AdminCommand::Devices(DevicesCommand::List) => {
                let devices = admin.list_devices().await.map_err(explain)?;
                print_list(json, &devices, device_line)
            }
            AdminCommand::Devices(DevicesCommand::Disable { id }) => {
                let device = admin
                    .set_device_enabled(&id, false)
                    .await
                    .map_err(explain)?;
                print_one(json, &device, |d| format!("Device {} is disabled.", d.id))
            }
            AdminCommand::Devices(DevicesCommand::Enable { id }) => {
                let device = admin.set_device_enabled(&id, true).await.map_err(explain)?;
                print_one(json, &device, |d| format!("Device {} is enabled.", d.id))
            }
            AdminCommand::Devices(DevicesCommand::Remove { id }) => {
                admin.remove_device(&id).await.map_err(explain)?;
                if json {
                    println!("{}", serde_json::json!({"removed": id}));
                } else {
                    println!("Device {id} is removed.");
                }
                Ok(())
            }
            AdminCommand::Sessions(SessionsCommand::List {
                user,
                device,
                card,
                all,
            }) => {
                let filter = SessionFilter {
                    user,
                    device,
                    card,
                    active_only: !all,
                };
                let sessions = admin.list_sessions(&filter).await.map_err(explain)?;
                print_list(json, &sessions, session_line)
            }
            AdminCommand::Sessions(SessionsCommand::Show { id }) => {
                let session = admin.get_session(&id).await.map_err(explain)?;
                print_one(json, &session, session_line)
            }
            AdminCommand::Sessions(SessionsCommand::End { id }) => {
                let session = admin.end_session(&id).await.map_err(explain)?;
                print_one(json, &session, |s| match (&s.ended_at, s.ended_reason) {
                    (Some(at), Some(reason)) => {
                        format!("Session {} ended at {at} ({reason}).", s.id)
                    }
                    _ => format!("Session {} is still active.", s.id),
                })
            }
            AdminCommand::Clients(ClientsCommand::Add {
                id,
                redirect_uris,
                public,
                backchannel_logout_uri,
            }) => {
                let new = NewClient {
                    id,
                    redirect_uris,
                    public,
                    backchannel_logout_uri,
                };
                let made = admin.add_client(&new).await.map_err(explain)?;
                if json {
                    println!("{}", json_text(&made)?);
                } else {
                    match &made.secret {
                        Some(secret) => {
                            // The secret alone on stdout (for a redirect into a file).
                            let secret = Zeroizing::new(secret.clone());
                            println!("{}", secret.as_str());
                            eprintln!(
                                "Client {} registered; its secret is above and is not shown again.",
                                made.client.id
                            );
                        }
                        None => println!("Public client {} registered.", made.client.id),
                    }
                }
                Ok(())
            }
            AdminCommand::Clients(ClientsCommand::List) => {
                let clients = admin.list_clients().await.map_err(explain)?;
                print_list(json, &clients, client_line)
            }
            AdminCommand::Clients(ClientsCommand::Show { id }) => {
                let client = admin.get_client(&id).await.map_err(explain)?;
                print_one(json, &client, client_line)
            }
            AdminCommand::Clients(ClientsCommand::Remove { id }) => {
                admin.remove_client(&id).await.map_err(explain)?;
                if json {
                    println!("{}", serde_json::json!({"removed": id}));
                } else {
                    println!("Client {id} is removed.");
                }
                Ok(())
            }
            AdminCommand::Credentials(CredentialsCommand::Add { name }) => {
                let made = admin.add_credential(&name).await.map_err(explain)?;
                let token = Zeroizing::new(made.token.clone().unwrap_or_default());
                if json {
                    println!("{}", json_text(&made)?);
                } else {
                    // The token alone on stdout (for a redirect into a file); the rest on stderr.
                    println!("{}", token.as_str());
                    eprintln!(
                        "Admin credential {} added; its token is above and is not shown again. \
                         Use it with --token-file FILE or PIVTAP_ADMIN_TOKEN.",
                        made.name
                    );
                }
                Ok(())
            }
            AdminCommand::Credentials(CredentialsCommand::List) => {
                let credentials = admin.list_credentials().await.map_err(explain)?;
                print_list(json, &credentials, |c| {
                    format!(
                        "{:<24} {:<8} created {}{}",
                        escape_unambiguous(&c.name),
                        if c.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        },
                        c.created_at.as_deref().unwrap_or("(admin.token)"),
                        c.revoked_at
                            .as_deref()
                            .map(|at| format!(", revoked {at}"))
                            .unwrap_or_default()
                    )
                })
            }
            AdminCommand::Credentials(CredentialsCommand::Revoke { name }) => {
                let revoked = admin.revoke_credential(&name).await.map_err(explain)?;
                print_one(json, &revoked, |c| {
                    format!("Admin credential {} is revoked.", c.name)
                })
            }
            AdminCommand::Enroll { user, valid_for } => {
                let made = admin
                    .create_enrollment(&user, valid_for)
                    .await
                    .map_err(explain)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&made)?);
                } else {
                    print!("{}", enrollment_text(&made, &qr_text(&made.url)?));
                }
                Ok(())
            }
            AdminCommand::Audit {
                user,
                card,
                device,
                outcome,
                kind,
                before,
                since,
                until,
                limit,
            } => {
                let filter = AuditFilter {
                    user,
                    card,
                    device,
                    outcome,
                    kind,
                    before,
                    since,
                    until,
                    limit: Some(limit),
                };
                let events = admin.audit(&filter).await.map_err(explain)?;
                print_list(json, &events, audit_line)?;
                // A full page may have more after it: say how to ask (on stderr, so the
                // events alone go down a pipe).
                if let Some(last) = events.last().filter(|_| events.len() == limit as usize) {
                    eprintln!("(more may follow: add --before {})", last.id);
                }
                Ok(())
            }
        }
    })
}

async fn card_action(
    admin: &pivtap_client::client::AdminClient<'_>,
    json: bool,
    serial: &str,
    action: CardAction,
) -> anyhow::Result<()> {
    let card = admin.card_action(serial, action).await.map_err(explain)?;
    print_one(json, &card, |c| {
        format!(
            "Card {} is {}.",
            if c.id.is_empty() { &c.serial } else { &c.id },
            c.state
        )
    })
}

/// An import's report: the counts, then each user not left as it was.
fn import_text(report: &ImportReport) -> String {
    let mut text = format!(
        "{}{} added, {} updated, {} unchanged, {} refused.",
        if report.dry_run {
            "Dry run, nothing changed: "
        } else {
            "Imported users: "
        },
        report.added,
        report.updated,
        report.unchanged,
        report.skipped.len()
    );
    for user in &report.users {
        match user.outcome.as_str() {
            "unchanged" => {}
            "updated" => text.push_str(&format!(
                "\nUpdated {}: {}",
                escape_unambiguous(&user.id),
                user.changed.join(", ")
            )),
            outcome => text.push_str(&format!(
                "\n{}{} {}",
                outcome[..1].to_uppercase(),
                &outcome[1..],
                escape_unambiguous(&user.id)
            )),
        }
    }
    for skip in &report.skipped {
        text.push_str(&format!(
            "\nRefused {}: {}",
            escape_unambiguous(&skip.id),
            skip.reason
        ));
    }
    text
}

fn print_one<T: Serialize>(
    json: bool,
    value: &T,
    text: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", json_text(value)?);
    } else {
        println!("{}", text(value));
    }
    Ok(())
}

fn print_list<T: Serialize>(
    json: bool,
    values: &[T],
    line: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", json_text(values)?);
    } else if values.is_empty() {
        println!("(none)");
    } else {
        for value in values {
            println!("{}", line(value));
        }
    }
    Ok(())
}

/// Pretty JSON with control, zero-width and bidi characters as `\uXXXX` escapes: the
/// same JSON, nothing hidden or reordered in a terminal (`serde_json` leaves all but C0
/// controls raw).
fn json_text<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    let text = serde_json::to_string_pretty(value)?;
    Ok(pivtap_protocol::escape::json_output(&text).into_owned())
}

/// One user of `users list`; invisible characters (zero-width, bidi, controls) are shown
/// escaped, so that two users who look alike read differently.
fn user_line(user: &UserRecord) -> String {
    format!(
        "{:<16} {:<8} {}{}",
        escape_unambiguous(&user.id),
        user.state,
        escape_unambiguous(&user.display_name),
        user.mail
            .as_ref()
            .map(|m| format!(" <{}>", escape_unambiguous(m)))
            .unwrap_or_default()
    )
}

fn card_line(card: &CardRecord) -> String {
    let id = if card.id.is_empty() {
        &card.serial
    } else {
        &card.id
    };
    format!(
        "{id}  {:<8} {:<12} last {}  {}  (issuer {})",
        card.state,
        card.user_id.as_deref().unwrap_or("-"),
        card.last_seen,
        card.subject,
        card.issuer
    )
}

fn device_line(device: &DeviceRecord) -> String {
    let credential = match (&device.certificate_serial, &device.not_after) {
        (Some(serial), Some(not_after)) => format!("certificate {serial} until {not_after}"),
        _ => match &device.code_expires_at {
            Some(expires) => format!("not enrolled, code valid until {expires}"),
            None => "not enrolled".to_owned(),
        },
    };
    format!("{:<20} {:<8} {credential}", device.id, device.state)
}

/// One session as a line: id, user, device, card, what it proved, and when it ends or
/// why it ended.
fn session_line(session: &SessionRecord) -> String {
    let state = match (&session.ended_at, session.ended_reason) {
        (Some(at), Some(reason)) => format!("ended {at} ({reason})"),
        (Some(at), None) => format!("ended {at}"),
        _ => format!("active until {}", session.expires_at),
    };
    let clients = if session.clients.is_empty() {
        String::new()
    } else {
        format!(" clients {}", session.clients.join(","))
    };
    format!(
        "{} {:<16} {:<16} card {} amr {} since {} {state}{clients}",
        session.id,
        escape_unambiguous(&session.user_id),
        escape_unambiguous(&session.device),
        session.card_serial,
        session.amr.join(" "),
        session.created_at,
    )
}

/// One client as a line.
fn client_line(client: &ClientRecord) -> String {
    format!(
        "{:<24} {:<12} redirect {}{}",
        escape_unambiguous(&client.id),
        if client.public {
            "public"
        } else {
            "confidential"
        },
        client.redirect_uris.join(" "),
        client
            .backchannel_logout_uri
            .as_deref()
            .map(|uri| format!(" logout {uri}"))
            .unwrap_or_default()
    )
}

/// One audit event as a line; every field escaped (control, zero-width and bidi
/// characters as `\u{...}`): events written before the server escaped them, or by
/// another server, cannot hide or reorder text in the terminal.
fn audit_line(event: &AuditRecord) -> String {
    use pivtap_protocol::escape::escape;
    format!(
        "{}  {:<9} {:<22} device={} card={} user={}{}",
        escape(&event.time),
        escape(&event.kind),
        escape(&event.outcome),
        escape(event.device.as_deref().unwrap_or("-")),
        escape(event.card_serial.as_deref().unwrap_or("-")),
        escape(event.user_id.as_deref().unwrap_or("-")),
        event
            .detail
            .as_ref()
            .map(|d| format!("  {}", escape(d)))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_and_json_escape_control_and_bidi_characters() {
        let event = AuditRecord {
            id: 1,
            time: "2026-01-01T00:00:00Z".to_owned(),
            kind: "admin".to_owned(),
            outcome: "unauthorized".to_owned(),
            device: Some("kiosk\u{202e}70".to_owned()),
            card_serial: None,
            user_id: Some("al\u{200b}ice".to_owned()),
            detail: Some("GET /x\u{1b}[2J\u{85}\u{2066}".to_owned()),
        };
        let line = audit_line(&event);
        assert!(
            !line.chars().any(pivtap_protocol::escape::is_hazard),
            "{line:?}"
        );
        assert!(line.contains("device=kiosk\\u{202e}70"), "{line}");
        assert!(line.contains("user=al\\u{200b}ice"), "{line}");
        assert!(line.ends_with("GET /x\\u{1b}[2J\\u{85}\\u{2066}"), "{line}");
        let json = json_text(&[&event]).unwrap();
        assert!(
            !json
                .chars()
                .any(|c| c != '\n' && pivtap_protocol::escape::is_hazard(c)),
            "{json:?}"
        );
        let back: Vec<AuditRecord> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0].device, event.device, "the same JSON value");
    }

    /// Issue 11, item 9: names with zero-width or bidi characters looked like others in
    /// `users list`; they are shown escaped, so lookalikes differ on screen.
    #[test]
    fn users_list_shows_invisible_characters_escaped() {
        let user = |id: &str, name: &str, mail: Option<&str>| UserRecord {
            id: id.to_owned(),
            display_name: name.to_owned(),
            mail: mail.map(str::to_owned),
            upn: None,
            employee_id: None,
            state: "active".to_owned(),
        };
        let plain = user_line(&user("alice", "Alice Example", Some("alice@example.com")));
        assert_eq!(
            plain,
            "alice            active   Alice Example <alice@example.com>"
        );
        let lookalike = user_line(&user(
            "alice",
            "Alice\u{200b} Example\u{202e}",
            Some("alice@example.com\u{2066}"),
        ));
        assert_eq!(
            lookalike,
            "alice            active   Alice\\u{200b} Example\\u{202e} <alice@example.com\\u{2066}>"
        );
        let legacy_id = user_line(&user("al\u{200d}ice", "A\\B", None));
        assert!(legacy_id.starts_with("al\\u{200d}ice "), "{legacy_id}");
        assert!(legacy_id.ends_with("A\\\\B"), "{legacy_id}");
    }

    #[test]
    fn the_qr_code_is_half_blocks_with_a_quiet_zone() {
        let qr =
            qr_text("pivtap://enroll?server=https%3A%2F%2F127.0.0.1%3A8443&code=ABCD").unwrap();
        let lines: Vec<&str> = qr.lines().collect();
        assert!(lines.len() > 10);
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|line| line.chars().count() == width));
        assert!(
            qr.chars()
                .all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}' | '\n'))
        );
        // The quiet zone is light, drawn as full blocks on a dark terminal.
        assert!(lines[0].chars().all(|c| c == '\u{2588}'));
    }
}
