//! `pivtap bench`: measurements that print figures — `bench server` (full sign-ins per second against a server on loopback), `bench tap` (the kiosk's card path, card present to session token) and `bench populate` (an organisation-sized store to measure on).
//!
//! Neither is a test: they print what they measured (text or `--json`) and
//! fail only when the measurement itself cannot run (a refused sign-in counts
//! as an error in the figures and makes the command exit non-zero).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use clap::{Args, Subcommand, ValueEnum};
use pivtap_apdu::piv::{KeyReference, Pin};
use pivtap_card::reader_monitor::MonitorFilter;
use pivtap_client::client::Client;
use pivtap_kiosk::readers::{PcscReaders, ReaderSource, VirtualReaders};
use pivtap_kiosk::tap_bench::{TapBench, TapFigures, measure_taps};
use pivtap_protocol::assertion::AssertionDraft;
use pivtap_protocol::certificate::KeyKind;
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_protocol::wire::{AssertionPayload, ChallengeResponse, UserRecord};
use pivtap_server::config::ServerConfig;
use pivtap_server::issuance::{Issuer, verify_csr};
use pivtap_server::store::{User, UserState};
use pivtap_vcard::VirtualCardBackend;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
use serde::Serialize;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::CardArgs;
use super::auth::ServerArgs;
use super::card::{Secret, SecretReader};

/// `pivtap bench ...`
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Full sign-ins per second (challenge + assertion over HTTPS with
    /// keep-alive) against a server on loopback, and their latency.
    ///
    /// Makes --cards users (through the admin API) and software keys with
    /// certificates from the server's issuing CA (read from --config), fetches
    /// one challenge per sign-in and signs every assertion before the clock
    /// starts; timed, each sign-in asks for a new challenge and posts a
    /// pre-signed assertion, so the server does a sign-in's full work while
    /// the load generator only sends. Bounded by --requests and --max-seconds.
    Server(Box<ServerBenchArgs>),
    /// Taps through the kiosk itself (its runtime, card thread and server
    /// client, as `pivtap kiosk` runs them): read (CHUID, certificate from the
    /// cache after the first tap, PIN tries), VERIFY and signature with the
    /// challenge the kiosk holds, assertion; from "card present" to the session
    /// token, then the badge leaves (sign-out). Prints the APDUs, bytes and card
    /// time of the first and of the repeat taps, and the challenge request the
    /// kiosk makes during each tap for the next one.
    Tap(Box<TapBenchArgs>),
    /// Load the store of a server (its server.toml) with an organisation's worth of
    /// data, in bulk, in one transaction: --users users each with a card from the
    /// server's issuing CA, and --audit-events audit events spread over the year before
    /// now (sign-ins by those cards from 500 kiosks). Refuses a store that holds data
    /// unless --add. Prints the time taken and the store's size. Then `bench server
    /// --populated PREFIX` signs in as some of these users.
    Populate(Box<super::populate::PopulateArgs>),
}

/// `pivtap bench server`
#[derive(Args, Debug)]
pub struct ServerBenchArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The server's server.toml: its issuing CA signs the load's card
    /// certificates and its admin credential adds the load's users.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Sign-ins under way at once (one keep-alive connection each).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// Sign-ins to make.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
    /// The cards' key.
    #[arg(long, value_enum, default_value_t = BenchKey::Rsa2048)]
    algorithm: BenchKey,
    /// Distinct cards (and users) the sign-ins come from.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    cards: u32,
    /// Sign in as users `bench populate --prefix PREFIX` loaded (spread over the first
    /// --populated-users of them) instead of adding users.
    #[arg(long, value_name = "PREFIX")]
    populated: Option<String>,
    /// How many users `bench populate` loaded (with --populated).
    #[arg(long, default_value_t = 100_000, requires = "populated")]
    populated_users: u32,
    /// Start sign-ins at this fixed rate (per second) instead of as fast as
    /// the server answers; latency is counted from each sign-in's planned start.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: Option<u32>,
    /// Stop starting sign-ins after this many seconds.
    #[arg(long, default_value_t = 45, value_parser = clap::value_parser!(u64).range(1..=600))]
    max_seconds: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A card key for `bench server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchKey {
    /// RSA-2048, RS256 assertions.
    Rsa2048,
    /// ECDSA P-256, ES256 assertions.
    P256,
}

/// `pivtap bench tap`
#[derive(Args, Debug)]
pub struct TapBenchArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    card: CardArgs,
    #[command(flatten)]
    device_credential: super::auth::DeviceCredentialArgs,
    /// This device's id, as the server knows it.
    #[arg(long, env = "PIVTAP_DEVICE", default_value = "bench-kiosk")]
    device: String,
    /// Taps to time (the first one with an empty certificate cache).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    taps: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `pivtap bench ...`.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Server(args) => bench_server(*args),
        BenchCommand::Tap(args) => bench_tap(*args),
        BenchCommand::Populate(args) => super::populate::run(*args),
    }
}

/// Latency figures in milliseconds.
#[derive(Serialize, Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Fastest.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Percentiles {
    /// The figures of `samples` (milliseconds; sorted here), nearest rank.
    fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |fraction: f64| nearest_rank(samples, fraction);
        Percentiles {
            min_ms: samples[0],
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: samples[samples.len() - 1],
        }
    }
}

/// The nearest-rank percentile `fraction` (0 to 1) of `sorted` (ascending, not empty):
/// the one percentile rule of every figure pivtap prints.
pub(crate) fn nearest_rank(sorted: &[f64], fraction: f64) -> f64 {
    let rank = ((sorted.len() as f64) * fraction).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Refuses a server that is not on this machine: the load is for loopback only.
fn require_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .context("the server URL must start with https:// or http://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!(
            "bench server only loads a server on this machine (127.0.0.1, ::1, localhost), not {host:?}"
        );
    }
    Ok(())
}

/// A software card: its key and the certificate the server's CA issued for it.
struct SoftCard {
    key: SoftKey,
    certificate: Vec<u8>,
}

/// A software key pair standing in for a card's key: its job (holding and using a private
/// key in memory) is not the algorithm vocabulary's; which JWS algorithm it signs is
/// [`JwsAlgorithm::for_key`]'s answer for its key.
enum SoftKey {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
}

impl SoftKey {
    fn generate(algorithm: BenchKey) -> anyhow::Result<(Self, KeyPair)> {
        let (signature_algorithm, key) = match algorithm {
            BenchKey::Rsa2048 => (&PKCS_RSA_SHA256, BenchKey::Rsa2048),
            BenchKey::P256 => (&PKCS_ECDSA_P256_SHA256, BenchKey::P256),
        };
        let pair = KeyPair::generate_for(signature_algorithm)
            .context("cannot generate a software card key")?;
        let pkcs8 = pair.serialize_der();
        let soft = match key {
            BenchKey::Rsa2048 => SoftKey::Rsa(
                RsaKeyPair::from_pkcs8(&pkcs8)
                    .map_err(|_| anyhow::anyhow!("the generated RSA key is unusable"))?,
            ),
            BenchKey::P256 => SoftKey::P256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                    .map_err(|_| anyhow::anyhow!("the generated P-256 key is unusable"))?,
            ),
        };
        Ok((soft, pair))
    }

    /// The JWS algorithm this key signs with (the one rule, from its kind and size).
    fn algorithm(&self) -> anyhow::Result<JwsAlgorithm> {
        let key = match self {
            SoftKey::Rsa(key) => KeyKind::Rsa {
                bits: key.public_modulus_len() * 8,
            },
            SoftKey::P256(_) => KeyKind::EcP256,
        };
        Ok(JwsAlgorithm::for_key(key)?)
    }

    fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match self {
            SoftKey::Rsa(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
                Ok(signature)
            }
            SoftKey::P256(key) => Ok(key
                .sign(&rng, message)
                .map_err(|_| anyhow::anyhow!("ECDSA signing failed"))?
                .as_ref()
                .to_vec()),
        }
    }
}

/// What `bench server` reports.
#[derive(Serialize, Debug)]
struct ServerBenchReport {
    server: String,
    algorithm: BenchKey,
    concurrency: u32,
    /// The fixed start rate asked for, if any.
    rate: Option<u32>,
    cards: u32,
    /// Sign-ins started.
    requests: usize,
    /// Sign-ins that ended with a session token.
    signins: usize,
    /// Sign-ins refused or failed.
    errors: usize,
    /// The first few distinct error messages.
    error_samples: Vec<String>,
    elapsed_seconds: f64,
    signins_per_second: f64,
    /// Challenge + assertion, per sign-in.
    #[serde(flatten)]
    latency: Percentiles,
    /// Untimed preparation: challenges fetched and assertions signed.
    prepare_seconds: f64,
}

fn bench_server(args: ServerBenchArgs) -> anyhow::Result<()> {
    require_loopback(&args.server.server)?;
    let config = ServerConfig::load(&args.config)?;
    let issuance = config
        .issuance
        .as_ref()
        .context("the server configuration has no [issuance] CA to issue the load's cards")?;
    let issuer = Issuer::load(issuance)?;
    let admin_token = Zeroizing::new(
        std::fs::read_to_string(&config.admin_token_file)
            .with_context(|| format!("cannot read {}", config.admin_token_file.display()))?
            .trim()
            .to_owned(),
    );
    let lifetime = Duration::from_secs(config.challenges.lifetime_seconds);
    let client = args.server.client()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    // Users and cards.
    let mut tag = [0u8; 4];
    rand::fill(&mut tag);
    let run_tag = hex::encode(tag);
    let now = OffsetDateTime::now_utc();
    let mut cards = Vec::with_capacity(args.cards as usize);
    for index in 0..args.cards {
        let user = match &args.populated {
            // Spread over the population, so lookups touch the whole of the tables.
            Some(prefix) => super::populate::population_user(
                prefix,
                (u64::from(index) * u64::from(args.populated_users) / u64::from(args.cards)) as u32,
            ),
            None => {
                let id = format!("bench-{run_tag}-{index}");
                let user = User {
                    display_name: format!("Bench {index}"),
                    mail: Some(format!("{id}@bench.invalid")),
                    upn: None,
                    employee_id: None,
                    state: UserState::Active,
                    id,
                };
                let record = UserRecord {
                    id: user.id.clone(),
                    display_name: user.display_name.clone(),
                    mail: user.mail.clone(),
                    upn: None,
                    employee_id: None,
                    state: "active".to_owned(),
                };
                runtime
                    .block_on(client.admin(&admin_token).add_user(&record))
                    .map_err(super::auth::explain)
                    .context("cannot add a load user through the admin API")?;
                user
            }
        };
        let (key, pair) = SoftKey::generate(args.algorithm)?;
        let csr = CertificateParams::default()
            .serialize_request(&pair)
            .context("cannot make a certificate request")?;
        let csr_key = verify_csr(csr.der())?;
        let certificate = issuer.issue(&csr_key, &user, now)?;
        cards.push(SoftCard { key, certificate });
    }

    // One challenge per sign-in, then every assertion signed, before the clock starts.
    let prepare_started = Instant::now();
    let requests = args.requests as usize;
    let devices: Vec<String> = (0..args.concurrency)
        .map(|index| format!("bench-{run_tag}-d{index}"))
        .collect();
    // Each load device registered and enrolled as a kiosk would be (admin API, then its
    // own key and certificate over HTTPS), so its challenge requests carry its proof.
    let clients = runtime.block_on(enrolled_clients(&client, &admin_token, &devices))?;
    let challenges = runtime.block_on(fetch_challenges(
        &clients,
        &devices,
        requests,
        args.concurrency as usize,
    ))?;
    let assertions = sign_all(&cards, &devices, &challenges)?;
    let prepare_seconds = prepare_started.elapsed().as_secs_f64();
    if prepare_started.elapsed() + Duration::from_secs(args.max_seconds) > lifetime {
        tracing::warn!(
            "challenges live {} s: sign-ins past that are refused as expired; \
             lower --requests or --max-seconds, or raise [challenges] lifetime_seconds",
            lifetime.as_secs()
        );
    }

    // The timed part.
    let deadline = Duration::from_secs(args.max_seconds);
    let outcome = runtime.block_on(run_load(
        &clients,
        &devices,
        Arc::new(assertions),
        args.concurrency as usize,
        args.rate,
        deadline,
    ));
    let mut latencies = outcome.latencies;
    let report = ServerBenchReport {
        server: args.server.server.clone(),
        algorithm: args.algorithm,
        concurrency: args.concurrency,
        rate: args.rate,
        cards: args.cards,
        requests: outcome.started,
        signins: latencies.len(),
        errors: outcome.errors,
        error_samples: outcome.error_samples,
        elapsed_seconds: outcome.elapsed.as_secs_f64(),
        signins_per_second: latencies.len() as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
        latency: Percentiles::of(&mut latencies),
        prepare_seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} sign-ins ({}, concurrency {}{}) in {:.2} s: {:.0} sign-ins/s; latency ms: \
             min {:.2}, median {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}; {} errors",
            report.signins,
            match report.algorithm {
                BenchKey::Rsa2048 => "RSA-2048",
                BenchKey::P256 => "P-256",
            },
            report.concurrency,
            report
                .rate
                .map(|rate| format!(", {rate}/s fixed rate"))
                .unwrap_or_default(),
            report.elapsed_seconds,
            report.signins_per_second,
            report.latency.min_ms,
            report.latency.p50_ms,
            report.latency.p90_ms,
            report.latency.p99_ms,
            report.latency.max_ms,
            report.errors
        );
        for sample in &report.error_samples {
            println!("  error: {sample}");
        }
    }
    if report.errors > 0 {
        bail!("{} of {} sign-ins failed", report.errors, report.requests);
    }
    Ok(())
}

/// A client per device of `devices`, each registered through the admin API and enrolled.
async fn enrolled_clients(
    client: &Client,
    admin_token: &str,
    devices: &[String],
) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(devices.len());
    for device in devices {
        let code = client
            .admin(admin_token)
            .add_device(device, None)
            .await
            .map_err(super::auth::explain)
            .context("cannot register a load device through the admin API")?
            .code;
        let (key, certificate) = client
            .enroll_new_device(&code)
            .await
            .map_err(super::auth::explain)?;
        let credential =
            pivtap_client::device::DeviceCredential::from_parts(&key.key_pem, &certificate)?;
        clients.push(client.clone().with_device_credential(Arc::new(credential)));
    }
    Ok(clients)
}

/// `count` challenges, round robin over `devices` (each asked by its own client of
/// `clients`), `concurrency` at a time.
async fn fetch_challenges(
    clients: &[Client],
    devices: &[String],
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(usize, ChallengeResponse)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let clients = clients.to_vec();
        let devices = devices.to_vec();
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, anyhow::Error>(got);
                }
                let device = index % devices.len();
                let challenge = clients[device]
                    .challenge(&devices[device])
                    .await
                    .map_err(super::auth::explain)?;
                got.push((index, device, challenge));
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await.context("a challenge task failed")??);
    }
    all.sort_by_key(|(index, _, _)| *index);
    Ok(all
        .into_iter()
        .map(|(_, device, challenge)| (device, challenge))
        .collect())
}

/// The compact assertion for each challenge, card by card in turn, signed on every core.
fn sign_all(
    cards: &[SoftCard],
    devices: &[String],
    challenges: &[(usize, ChallengeResponse)],
) -> anyhow::Result<Vec<(usize, String)>> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let chunk = challenges.len().div_ceil(threads).max(1);
    let iat = OffsetDateTime::now_utc().unix_timestamp();
    std::thread::scope(|scope| {
        let handles: Vec<_> = challenges
            .chunks(chunk)
            .enumerate()
            .map(|(part, slice)| {
                scope.spawn(move || {
                    slice
                        .iter()
                        .enumerate()
                        .map(|(offset, (device, challenge))| {
                            let card = &cards[(part * chunk + offset) % cards.len()];
                            let draft = AssertionDraft::new(
                                card.key.algorithm()?,
                                &card.certificate,
                                AssertionPayload::for_challenge(
                                    challenge,
                                    devices[*device].as_str(),
                                    KeyReference::PivAuthentication,
                                    iat,
                                ),
                            );
                            let assertion = draft.sign(|_, message| card.key.sign(message))?;
                            Ok((*device, assertion))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut assertions = Vec::with_capacity(challenges.len());
        for handle in handles {
            assertions.extend(
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("a signing thread panicked"))??,
            );
        }
        Ok(assertions)
    })
}

/// What the timed part saw.
struct LoadOutcome {
    started: usize,
    latencies: Vec<f64>,
    errors: usize,
    error_samples: Vec<String>,
    elapsed: Duration,
}

async fn run_load(
    clients: &[Client],
    devices: &[String],
    assertions: Arc<Vec<(usize, String)>>,
    concurrency: usize,
    rate: Option<u32>,
    deadline: Duration,
) -> LoadOutcome {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let clients = clients.to_vec();
        let devices = devices.to_vec();
        let assertions = Arc::clone(&assertions);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= assertions.len() || started.elapsed() >= deadline {
                    return (latencies, errors);
                }
                let planned = match rate {
                    Some(rate) => {
                        let at = started + Duration::from_secs_f64(index as f64 / f64::from(rate));
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let (device, assertion) = &assertions[index];
                let result = async {
                    let client = &clients[*device];
                    client.challenge(&devices[*device]).await?;
                    client.sign_in(assertion).await
                }
                .await;
                match result {
                    Ok(_) => latencies.push(planned.elapsed().as_secs_f64() * 1e3),
                    Err(error) => errors.push(super::auth::explain(error).to_string()),
                }
            }
        }));
    }
    let mut outcome = LoadOutcome {
        started: 0,
        latencies: Vec::new(),
        errors: 0,
        error_samples: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        if let Ok((latencies, errors)) = task.await {
            outcome.latencies.extend(latencies);
            outcome.errors += errors.len();
            for error in errors {
                if outcome.error_samples.len() < 5 && !outcome.error_samples.contains(&error) {
                    outcome.error_samples.push(error);
                }
            }
        }
    }
    outcome.elapsed = started.elapsed();
    outcome.started = outcome.latencies.len() + outcome.errors;
    outcome
}

/// What `bench tap` reports.
#[derive(Serialize, Debug)]
struct TapBenchReport {
    card: String,
    taps: usize,
    first_tap: TapFigures,
    /// The second tap (certificate from the cache), when there was one.
    repeat_tap: Option<TapFigures>,
    /// Card present to session token, every tap.
    tap_to_token: Percentiles,
    /// Card present to the last card response, every tap.
    card_in_field: Percentiles,
    /// Time inside `transmit` (card and transport), every tap.
    card_time: Percentiles,
    /// The challenge request, every tap.
    challenge: Percentiles,
}

fn bench_tap(args: TapBenchArgs) -> anyhow::Result<()> {
    let pin = SecretReader::new().read(Secret::Pin)?;
    Pin::new(&pin)?;
    let client = args.device_credential.apply(args.server.client()?)?;
    const VIRTUAL_READER: &str = "bench reader";
    let (readers, reader, card): (Arc<dyn ReaderSource>, String, String) =
        match (&args.card.vcard, &args.card.reader) {
            (Some(path), _) => {
                let card = super::open_virtual_card(path)?;
                let readers = VirtualReaders::new(&[VIRTUAL_READER]);
                readers.insert(
                    VIRTUAL_READER,
                    VirtualCardBackend::new(card, format!("virtual card {}", path.display())),
                );
                (
                    Arc::new(readers),
                    VIRTUAL_READER.to_owned(),
                    format!("virtual card {} (in process)", path.display()),
                )
            }
            (None, wanted) => {
                let context = pivtap_card::pcsc::PcscContext::establish()?;
                let reader = super::pcsc_reader(&context, wanted.as_deref())?;
                (
                    Arc::new(PcscReaders::new(MonitorFilter::default())),
                    reader.clone(),
                    format!("PC/SC reader {reader}"),
                )
            }
        };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The connection to the server is made (TLS) before the first tap, as a running kiosk has it.
    runtime
        .block_on(client.pin_policy())
        .map_err(super::auth::explain)?;
    let taps = runtime.block_on(measure_taps(TapBench {
        readers,
        reader,
        client,
        device: args.device.clone(),
        pin,
        taps: args.taps,
    }))?;
    let first_tap = taps[0];
    let repeat_tap = taps.get(1).copied();
    let column = |pick: fn(&TapFigures) -> f64| {
        let mut values: Vec<f64> = taps.iter().map(pick).collect();
        Percentiles::of(&mut values)
    };
    let report = TapBenchReport {
        card,
        taps: taps.len(),
        first_tap,
        repeat_tap,
        tap_to_token: column(|t| t.total_ms),
        card_in_field: column(|t| t.in_field_ms),
        card_time: column(|t| t.read.card_ms + t.sign.card_ms),
        challenge: column(|t| t.challenge_ms),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let describe = |name: &str, t: &TapFigures| {
            println!(
                "{name}: read {} APDUs ({} B sent, {} B received), sign {} APDUs ({} B sent, {} B \
                 received); card {:.2} ms, in field {:.2} ms, to token {:.2} ms",
                t.read.apdus,
                t.read.bytes_sent,
                t.read.bytes_received,
                t.sign.apdus,
                t.sign.bytes_sent,
                t.sign.bytes_received,
                t.read.card_ms + t.sign.card_ms,
                t.in_field_ms,
                t.total_ms
            );
        };
        println!("{}: {} taps", report.card, report.taps);
        describe("first tap", &report.first_tap);
        if let Some(repeat) = &report.repeat_tap {
            describe("repeat tap", repeat);
        }
        for (name, p) in [
            ("tap to token", &report.tap_to_token),
            ("card in field", &report.card_in_field),
            ("card time", &report.card_time),
            ("challenge", &report.challenge),
        ] {
            println!(
                "{name} ms: min {:.2}, median {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
                p.min_ms, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_servers_on_this_machine_are_loaded() {
        for url in [
            "https://127.0.0.1:8443",
            "https://127.0.0.1",
            "https://localhost:8443/",
            "https://[::1]:8443",
            "http://127.1.2.3:80",
        ] {
            assert!(require_loopback(url).is_ok(), "{url}");
        }
        for url in [
            "https://example.com:8443",
            "https://10.0.0.1",
            "https://[2001:db8::1]:8443",
            "https://127.0.0.1.example.com",
            "ftp://127.0.0.1",
            "127.0.0.1:8443",
        ] {
            assert!(require_loopback(url).is_err(), "{url}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(
            (p.min_ms, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms),
            (1.0, 100.0, 180.0, 198.0, 200.0)
        );
        let empty = Percentiles::of(&mut []);
        assert_eq!(empty.max_ms, 0.0);
    }
}
