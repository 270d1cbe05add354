//! `pivtap bench populate`: loads a server's store with an organisation's worth of data (users each with a card, a year of audit events) in bulk, for `bench server` to measure a realistic database.
//!
//! User `N` is `PREFIX-N` (six digits) with the mail `PREFIX-N@populate.invalid` and one
//! active card from the server's issuing CA (a made-up serial: the load's own
//! certificates for these users, from `bench server --populated PREFIX`, add a card
//! each on first sign-in). The audit is a sign-in every other event: a device's
//! challenge, then the assertion of a user's card (one in fifty refused), evenly spread
//! over the year before now, oldest first, from 500 kiosks.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::wire::ErrorCode;
use pivtap_server::config::ServerConfig;
use pivtap_server::issuance::Issuer;
use pivtap_server::store::bulk::{self, BATCH_ROWS, BulkStore, Existing, Feed, Value};
use pivtap_server::store::{User, UserState};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use tokio::sync::mpsc;

/// `pivtap bench populate`
#[derive(Args, Debug)]
pub struct PopulateArgs {
    /// The server's server.toml: its store is loaded, its issuing CA names the cards' issuer.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Users to add, each with a card.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    users: u32,
    /// Audit events to add, spread over the year before now.
    #[arg(long, default_value_t = 10_000_000)]
    audit_events: u64,
    /// The users' id prefix (`PREFIX-000042`); `bench server --populated PREFIX` signs
    /// in as them.
    #[arg(long, default_value = "pop", value_parser = prefix)]
    prefix: String,
    /// Add to a store that holds data already (refused otherwise).
    #[arg(long)]
    add: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Kiosks the audit's sign-ins come from.
const DEVICES: u64 = 500;
/// One sign-in in this many is refused.
const REFUSED_EVERY: u64 = 50;
/// The made-up issuer of the cards when the server has no issuing CA.
const DEFAULT_ISSUER: &str = "CN=pivtap populate";

fn prefix(text: &str) -> Result<String, String> {
    if !text.is_empty()
        && text.len() <= 32
        && text
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
    {
        Ok(text.to_owned())
    } else {
        Err("1 to 32 lower-case letters, digits or '-'".to_owned())
    }
}

/// The populated user number `index` of `prefix`.
#[must_use]
pub fn population_user(prefix: &str, index: u32) -> User {
    let id = format!("{prefix}-{index:06}");
    User {
        display_name: format!("Population {index}"),
        mail: Some(format!("{id}@populate.invalid")),
        upn: None,
        employee_id: None,
        state: UserState::Active,
        id,
    }
}

/// What `bench populate` reports.
#[derive(Serialize, Debug)]
struct PopulateReport {
    store: String,
    users: u32,
    audit_events: u64,
    tables: Vec<bulk::Loaded>,
    seconds: f64,
    rows_per_second: f64,
    size_bytes: u64,
}

/// Runs `pivtap bench populate`.
pub fn run(args: PopulateArgs) -> anyhow::Result<()> {
    let config = ServerConfig::load(&args.config)?;
    let url = config.store_url();
    let password_file = config
        .store
        .as_ref()
        .and_then(|store| store.password_file.clone());
    let issuer = match &config.issuance {
        Some(issuance) => Issuer::load(issuance)?.ca_name().to_owned(),
        None => DEFAULT_ISSUER.to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let store = BulkStore::open(&url, password_file.as_deref()).await?;
        let started = Instant::now();
        let (sender, receiver) = mpsc::channel(8);
        let population = Population {
            prefix: args.prefix.clone(),
            users: args.users,
            audit_events: args.audit_events,
            issuer,
            now: OffsetDateTime::now_utc(),
        };
        let feed = tokio::task::spawn_blocking(move || population.feed(&sender));
        let existing = if args.add {
            Existing::Add
        } else {
            Existing::RefuseDirectoryData
        };
        let loaded = bulk::load(store.target(), receiver, existing).await;
        let fed = feed.await.context("the row generator failed")?;
        let tables = match (loaded, fed) {
            (Ok(tables), _) => tables,
            (Err(bulk::BulkError::FeedStopped), Err(stopped)) => return Err(stopped),
            (Err(error @ bulk::BulkError::NotEmpty { .. }), _) => {
                return Err(anyhow::Error::new(error).context(
                    "bench populate loads an empty store; give --add to add to this one",
                ));
            }
            (Err(error), _) => return Err(error.into()),
        };
        let seconds = started.elapsed().as_secs_f64();
        let size_bytes = store.size_bytes().await?;
        store.close().await;
        let rows: u64 = tables.iter().map(|table| table.written).sum();
        anyhow::Ok(PopulateReport {
            store: url.to_string(),
            users: args.users,
            audit_events: args.audit_events,
            tables,
            seconds,
            rows_per_second: rows as f64 / seconds.max(1e-9),
            size_bytes,
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "Loaded {} ({} store): {} users with a card each and {} audit events in {:.1} s \
             ({:.0} rows/s); the store now takes {:.1} MB.",
            report.store,
            url.kind(),
            report.users,
            report.audit_events,
            report.seconds,
            report.rows_per_second,
            report.size_bytes as f64 / 1e6
        );
        for table in &report.tables {
            println!(
                "  {:<10} {:>12} rows added, {:>12} now",
                table.table, table.written, table.after
            );
        }
    }
    Ok(())
}

/// What to generate.
struct Population {
    prefix: String,
    users: u32,
    audit_events: u64,
    issuer: String,
    now: OffsetDateTime,
}

/// A well-mixed 64-bit number of `seed` (splitmix64), for serials and fingerprints.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Population {
    /// A number of this population's `index`, different for each prefix and `salt`.
    fn hash(&self, index: u64, salt: u64) -> u64 {
        let prefix = self
            .prefix
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
            });
        mix(prefix ^ mix(index ^ mix(salt)))
    }

    /// The card serial of user `index` (32 hex digits, as certificate serials are kept).
    fn card_serial(&self, index: u64) -> String {
        format!(
            "{:016x}{:016x}",
            self.hash(index, 1) >> 1,
            self.hash(index, 2)
        )
    }

    fn user_row(&self, index: u32) -> Vec<Value> {
        let user = population_user(&self.prefix, index);
        vec![
            Value::Text(user.id),
            Value::Text(user.display_name),
            user.mail.map_or(Value::Null, Value::Text),
            Value::Null,
            Value::Null,
            Value::Text(user.state.as_str().to_owned()),
            Value::Time(self.now - Duration::days(400)),
        ]
    }

    fn card_row(&self, index: u32) -> Vec<Value> {
        let user = population_user(&self.prefix, index);
        let index = u64::from(index);
        vec![
            Value::Text(self.issuer.clone()),
            Value::Text(self.card_serial(index)),
            Value::Text(format!(
                "{:016x}{:016x}{:016x}{:016x}",
                self.hash(index, 3),
                self.hash(index, 4),
                self.hash(index, 5),
                self.hash(index, 6)
            )),
            Value::Text(format!("CN={}", user.display_name)),
            Value::Text(user.id),
            Value::Text("active".to_owned()),
            Value::Time(self.now - Duration::days(365)),
            Value::Time(self.now - Duration::days(1)),
        ]
    }

    /// Audit event `index` (without its id): even ones a challenge, odd ones a sign-in.
    fn audit_row(&self, index: u64) -> Vec<Value> {
        let year = Duration::days(365);
        let step = year / (self.audit_events.max(1) as f64);
        let time = self.now - year + step * (index as f64);
        let sign_in = index / 2;
        let device = Value::Text(format!("{}-kiosk-{:03}", self.prefix, sign_in % DEVICES));
        if index.is_multiple_of(2) {
            return vec![
                Value::Time(time),
                Value::Text(AuditKind::Challenge.as_str().to_owned()),
                Value::Text(AuditOutcome::Ok.as_str().to_owned()),
                device,
                Value::Null,
                Value::Null,
                Value::Null,
            ];
        }
        let user = self.hash(sign_in, 7) % u64::from(self.users);
        let outcome = if sign_in % REFUSED_EVERY == REFUSED_EVERY - 1 {
            AuditOutcome::Refused(ErrorCode::ChallengeExpired)
        } else {
            AuditOutcome::Ok
        };
        vec![
            Value::Time(time),
            Value::Text(AuditKind::Assertion.as_str().to_owned()),
            Value::Text(outcome.as_str().to_owned()),
            device,
            Value::Text(self.card_serial(user)),
            Value::Text(format!("{}-{user:06}", self.prefix)),
            Value::Null,
        ]
    }

    /// Sends every table's rows, then [`Feed::Done`]; stops when the writer is gone.
    fn feed(&self, sender: &mpsc::Sender<Feed>) -> anyhow::Result<()> {
        let send = |message| {
            sender
                .blocking_send(message)
                .map_err(|_| anyhow::anyhow!("the store stopped taking rows"))
        };
        let table = |name| bulk::table(name).with_context(|| format!("no table {name}"));
        let users = table("users")?;
        let cards = table("cards")?;
        let audit = table("audit")?;
        let tables: [(&'static bulk::Table, u64); 3] = [
            (users, u64::from(self.users)),
            (cards, u64::from(self.users)),
            (audit, self.audit_events),
        ];
        for (table, rows) in tables {
            send(Feed::Table {
                table,
                columns: table.new_row_columns(),
            })?;
            let mut batch = Vec::with_capacity(BATCH_ROWS);
            for index in 0..rows {
                batch.push(match table.name {
                    "users" => self.user_row(u32::try_from(index)?),
                    "cards" => self.card_row(u32::try_from(index)?),
                    _ => self.audit_row(index),
                });
                if batch.len() == BATCH_ROWS {
                    send(Feed::Rows(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(BATCH_ROWS),
                    )))?;
                }
            }
            if !batch.is_empty() {
                send(Feed::Rows(batch))?;
            }
            send(Feed::End {
                source_rows: Some(rows),
                identity: None,
            })?;
        }
        send(Feed::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn population(audit_events: u64) -> Population {
        Population {
            prefix: "pop".to_owned(),
            users: 1000,
            audit_events,
            issuer: DEFAULT_ISSUER.to_owned(),
            now: OffsetDateTime::UNIX_EPOCH + Duration::days(1000),
        }
    }

    #[test]
    fn the_audit_is_a_year_of_sign_ins_by_the_populated_users_cards() {
        let population = population(1000);
        let first = population.audit_row(0);
        let last = population.audit_row(999);
        let year_ago = population.now - Duration::days(365);
        assert_eq!(first[0], Value::Time(year_ago));
        let Value::Time(last_time) = last[0] else {
            panic!("{last:?}")
        };
        assert!(last_time < population.now && last_time > population.now - Duration::days(1));
        assert_eq!(first[1], Value::Text("challenge".to_owned()));
        assert_eq!(last[1], Value::Text("assertion".to_owned()));
        // The sign-in's card is its user's card.
        let Value::Text(user) = &last[5] else {
            panic!("{last:?}")
        };
        let index: u32 = user.strip_prefix("pop-").unwrap().parse().unwrap();
        assert_eq!(population.card_row(index)[1], last[4]);
        assert_eq!(population.user_row(index)[0], last[5]);
        let refused = (0..1000)
            .map(|index| population.audit_row(index))
            .filter(|row| row[2] == Value::Text("challenge_expired".to_owned()))
            .count();
        assert_eq!(refused, 10, "one sign-in in fifty refused");
        // Serials differ between users and between prefixes.
        assert_ne!(population.card_serial(1), population.card_serial(2));
        let serial = population.card_serial(1);
        let other = Population {
            prefix: "other".to_owned(),
            ..population
        };
        assert_ne!(other.card_serial(1), serial);
    }

    #[test]
    fn prefixes_are_short_and_plain() {
        assert!(prefix("pop").is_ok());
        assert!(prefix("site-2").is_ok());
        assert!(prefix("").is_err());
        assert!(prefix("Pop").is_err());
        assert!(prefix("a'b").is_err());
    }
}
