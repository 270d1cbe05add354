//! `pivtap server init`: writes a ready-to-run server directory — configuration, TLS certificate and key, token-signing keys, admin credential, trust anchors and an empty database.
//!
//! The directory it writes:
//!
//! | file | what | mode |
//! | --- | --- | --- |
//! | `server.toml` | the configuration ([`crate::config`]), written last | 0644 |
//! | `tls.crt` | a self-signed P-256 certificate for 127.0.0.1, ::1, localhost and the given host names, valid one year; clients can trust it directly or pin its key | 0644 |
//! | `tls.key` | its private key, PKCS#8 PEM | 0600 |
//! | `tokens.key` | the session-token signing keys ([`TokenKeys`]) | 0600 |
//! | `admin.token` | the admin API's bearer credential: 32 random bytes, base64url, one line | 0600 |
//! | `ca.crt` | the issuing CA that enrollment signs card certificates with: self-signed P-256, CN "pivtap issuing CA", valid 20 years; trusted by the server (`[trust]`) and named in `[issuance]` | 0644 |
//! | `ca.key` | its private key, PKCS#8 PEM | 0600 |
//! | `trust/NAME` | a copy of each `--trust` CA certificate file (optional: the issuing CA is always trusted) | 0644 |
//! | `pivtap.db` | an empty SQLite database; the server creates its tables on start | 0600 |
//!
//! A non-empty directory is refused unless `force` is set; then every file
//! above is replaced except the database, which is kept with its contents, the
//! issuing CA (`ca.crt` and `ca.key`), which is kept when both load and match,
//! so certificates it issued stay valid, and the secrets others rely on
//! ([`Secret`]: the TLS key, the token keys, the admin credential). An existing
//! secret is replaced only when named in [`InitOptions::replace`], kept with
//! [`InitOptions::keep_secrets`], and otherwise `init` refuses, saying what
//! replacing it would break. A kept TLS key gets a fresh certificate (the key
//! pin stays).

use std::{
    collections::BTreeSet,
    fs::{self, DirBuilder, OpenOptions},
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
    PublicKeyData as _,
};
use rustls_pki_types::ServerName;
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use pivtap_protocol::jose::base64url_encode;

use crate::{
    config::{
        ConfigError, DEFAULT_LISTEN, IssuanceConfig, MappingConfig, ServerConfig, StoreConfig,
        TlsConfig, TokenConfig, TrustConfig, parse_ca_certificates,
    },
    issuance::{IssuanceError, Issuer, create_ca},
    token::{PRIVATE_FILE_MODE, TokenError, TokenKeys, write_file_atomically},
};

/// The configuration file `init_server` writes into the directory.
pub const CONFIG_FILE: &str = "server.toml";
const CERTIFICATE_FILE: &str = "tls.crt";
const CERTIFICATE_KEY_FILE: &str = "tls.key";
const TOKEN_KEYS_FILE: &str = "tokens.key";
const ADMIN_TOKEN_FILE: &str = "admin.token";
const DATABASE_FILE: &str = "pivtap.db";
const TRUST_DIRECTORY: &str = "trust";
/// The issuing CA's certificate `init_server` writes.
pub const CA_CERTIFICATE_FILE: &str = "ca.crt";
/// The issuing CA's private key `init_server` writes.
pub const CA_KEY_FILE: &str = "ca.key";
const PUBLIC_FILE_MODE: u32 = 0o644;
const PRIVATE_DIRECTORY_MODE: u32 = 0o700;

/// What `pivtap server init` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Further CA certificate files (PEM or DER) card certificates may chain
    /// to, besides the issuing CA `init` makes; may be empty.
    pub trust: Vec<PathBuf>,
    /// The address the server will listen on.
    pub listen: SocketAddr,
    /// Further names (DNS names or IP addresses) clients reach the server by;
    /// they go into the TLS certificate, and the first one into the origin.
    pub hostnames: Vec<String>,
    /// Write into a non-empty directory, replacing what `init` writes.
    pub force: bool,
    /// The existing secrets `force` may replace.
    pub replace: BTreeSet<Secret>,
    /// With `force`, keep the existing secrets not named in `replace` (instead of refusing).
    pub keep_secrets: bool,
    /// The `[store]` to write (its URL and password file; never a password); `None`:
    /// the SQLite file `pivtap.db` beside `server.toml`.
    pub store: Option<StoreConfig>,
}

/// A file `init` writes that others depend on: replacing it breaks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Secret {
    /// `tls.key`, the server's TLS key.
    TlsKey,
    /// `tokens.key`, the session-token signing keys.
    TokenKey,
    /// `admin.token`, the admin credential.
    AdminToken,
}

impl Secret {
    /// Every secret, in the order `init` writes them.
    pub const ALL: [Secret; 3] = [Secret::TlsKey, Secret::TokenKey, Secret::AdminToken];

    /// The name `--replace` takes: `tls-key`, `token-key`, `admin-token`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Secret::TlsKey => "tls-key",
            Secret::TokenKey => "token-key",
            Secret::AdminToken => "admin-token",
        }
    }

    /// Its file in the server directory.
    #[must_use]
    pub fn file(self) -> &'static str {
        match self {
            Secret::TlsKey => CERTIFICATE_KEY_FILE,
            Secret::TokenKey => TOKEN_KEYS_FILE,
            Secret::AdminToken => ADMIN_TOKEN_FILE,
        }
    }

    /// What stops working when it is replaced.
    #[must_use]
    pub fn what_breaks(self) -> &'static str {
        match self {
            Secret::TlsKey => {
                "every kiosk and client that pins the server key (sha256//...) stops connecting until it is given the new pin"
            }
            Secret::TokenKey => {
                "every session token issued so far stops verifying at the apps (the JWKS no longer has its key); \
                 a database that holds token keys already keeps them: use `pivtap server rotate-keys` there"
            }
            Secret::AdminToken => {
                "admin scripts and `pivtap admin` using the old admin.token are refused"
            }
        }
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--replace` name that is not a [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a secret init writes; use tls-key, token-key or admin-token")]
pub struct UnknownSecret(pub String);

impl std::str::FromStr for Secret {
    type Err = UnknownSecret;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Secret::ALL
            .into_iter()
            .find(|secret| secret.name() == name)
            .ok_or_else(|| UnknownSecret(name.to_owned()))
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            trust: Vec::new(),
            listen: DEFAULT_LISTEN,
            hostnames: Vec::new(),
            force: false,
            replace: BTreeSet::new(),
            keep_secrets: false,
            store: None,
        }
    }
}

/// What `init_server` wrote, and what clients need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// `DIR/server.toml`.
    pub config_path: PathBuf,
    /// `DIR/tls.crt`, the certificate clients may trust directly.
    pub certificate_path: PathBuf,
    /// `DIR/admin.token`, the admin credential.
    pub admin_token_path: PathBuf,
    /// `DIR/ca.crt`, the issuing CA's certificate.
    pub ca_certificate_path: PathBuf,
    /// Whether the issuing CA was made now (`false`: an existing one was kept).
    pub ca_created: bool,
    /// The server's origin, e.g. `https://127.0.0.1:8443`.
    pub origin: String,
    /// Standard base64 of the SHA-256 of the TLS certificate's
    /// SubjectPublicKeyInfo: the pin of HPKP and `curl --pinnedpubkey sha256//PIN`.
    pub spki_sha256_pin: String,
    /// The secrets that existed and were replaced (see [`Secret::what_breaks`]).
    pub replaced: Vec<Secret>,
    /// The secrets that existed and were kept.
    pub kept: Vec<Secret>,
}

/// Why `init_server` did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The directory has files and `force` was not set.
    #[error("{} is not empty; use --force to overwrite the server files in it", .0.display())]
    NotEmpty(PathBuf),
    /// `force` would replace secrets that were not named in `replace`.
    #[error("{} holds secrets that others depend on; replacing them breaks things:\n{}\nName the ones to replace with --replace {} or keep them with --keep-secrets", .dir.display(), describe_secrets(.secrets), join_secret_names(.secrets))]
    WouldReplaceSecrets {
        /// The directory.
        dir: PathBuf,
        /// The existing secrets not named.
        secrets: Vec<Secret>,
    },
    /// `store.password_file` is set for a SQLite store.
    #[error("--store-password-file is for a PostgreSQL store: a SQLite store has no password")]
    PasswordForSqlite,
    /// The database password file is unusable (missing, empty, readable by others).
    #[error(transparent)]
    StorePassword(#[from] crate::store::url::StorePasswordError),
    /// The existing TLS key could not be read to keep it.
    #[error("cannot keep the TLS key {}: {reason}", .path.display())]
    UnusableTlsKey {
        /// The key file.
        path: PathBuf,
        /// Why (no key material).
        reason: String,
    },
    /// A `--trust` path names no file.
    #[error("{} does not name a file", .0.display())]
    NotAFile(PathBuf),
    /// Two `--trust` files have the same name and would overwrite each other in `trust/`.
    #[error("two trusted certificate files are named {0:?}; rename one")]
    DuplicateTrustFileName(String),
    /// A host name is neither a DNS name nor an IP address.
    #[error("{0:?} is neither a DNS name nor an IP address")]
    InvalidHostname(String),
    /// The TLS certificate could not be made.
    #[error("cannot create the TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A trusted certificate file is unusable, or the configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token keys could not be written.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The issuing CA could not be made.
    #[error("cannot create the issuing CA: {0}")]
    Issuance(#[from] IssuanceError),
}

/// One line per secret: its file and what replacing it breaks.
fn describe_secrets(secrets: &[Secret]) -> String {
    secrets
        .iter()
        .map(|secret| {
            format!(
                "  {} ({}): {}",
                secret.file(),
                secret.name(),
                secret.what_breaks()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `tls-key,token-key`.
fn join_secret_names(secrets: &[Secret]) -> String {
    secrets
        .iter()
        .map(|secret| secret.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// A TLS certificate and key made by `init_server`.
struct ServerCertificate {
    not_after: OffsetDateTime,
    certificate_pem: String,
    key_pem: Zeroizing<String>,
    spki_sha256_pin: String,
}

/// Writes a ready-to-run server into `dir` (created if missing); see the module documentation.
pub fn init_server(dir: &Path, options: &InitOptions) -> Result<InitReport, InitError> {
    // Everything that can fail on the input is checked before anything is written.
    let trust = read_trust_files(&options.trust)?;
    let names = certificate_names(options)?;
    if let Some(store) = &options.store
        && let Some(file) = &store.password_file
    {
        if store.url.sqlite_path().is_some() {
            return Err(InitError::PasswordForSqlite);
        }
        // The server reads it on start: it must be there, private, and hold a password.
        crate::store::url::StorePassword::read_file(&dir.join(file))?;
    }
    let origin = origin(options);
    let existing: Vec<Secret> = if options.force {
        Secret::ALL
            .into_iter()
            .filter(|secret| dir.join(secret.file()).exists())
            .collect()
    } else {
        Vec::new()
    };
    let (replaced, kept): (Vec<Secret>, Vec<Secret>) = existing
        .iter()
        .partition(|secret| options.replace.contains(secret));
    if !kept.is_empty() && !options.keep_secrets {
        return Err(InitError::WouldReplaceSecrets {
            dir: dir.to_owned(),
            secrets: kept,
        });
    }
    let kept_tls_key = if kept.contains(&Secret::TlsKey) {
        Some(read_tls_key(&dir.join(CERTIFICATE_KEY_FILE))?)
    } else {
        None
    };
    let certificate = make_certificate(names, kept_tls_key, CERTIFICATE_DAYS)?;
    let mut admin_token = Zeroizing::new([0_u8; 32]);
    rand::fill(&mut admin_token[..]);
    let admin_token = Zeroizing::new(format!("{}\n", base64url_encode(&admin_token[..])));
    let config_path = dir.join(CONFIG_FILE);
    let existing_ca = if options.force {
        existing_ca(dir)
    } else {
        None
    };
    let new_ca = match existing_ca {
        Some(_) => None,
        None => Some(create_ca(OffsetDateTime::now_utc())?),
    };
    let config = ServerConfig {
        listen: options.listen,
        origin: origin.clone(),
        plain_http: false,
        admin_token_file: PathBuf::from(ADMIN_TOKEN_FILE),
        database: PathBuf::from(DATABASE_FILE),
        store: options.store.clone(),
        tls: Some(TlsConfig {
            certificate: PathBuf::from(CERTIFICATE_FILE),
            key: PathBuf::from(CERTIFICATE_KEY_FILE),
        }),
        tokens: TokenConfig {
            key_file: PathBuf::from(TOKEN_KEYS_FILE),
            ..TokenConfig::default()
        },
        sessions: crate::config::SessionsConfig::default(),
        trust: TrustConfig {
            ca_certificates: std::iter::once(PathBuf::from(CA_CERTIFICATE_FILE))
                .chain(
                    trust
                        .iter()
                        .map(|(name, _)| Path::new(TRUST_DIRECTORY).join(name)),
                )
                .collect(),
            crl_files: Vec::new(),
        },
        mapping: MappingConfig::default(),
        challenges: Default::default(),
        rate_limit: Default::default(),
        audit: Default::default(),
        pin_policy: Default::default(),
        issuance: Some(IssuanceConfig::new(
            PathBuf::from(CA_CERTIFICATE_FILE),
            PathBuf::from(CA_KEY_FILE),
        )),
        connections: Default::default(),
        metrics: Default::default(),
        devices: Default::default(),
        oidc: Default::default(),
    };
    config.validate(&config_path)?;
    let config_text = format!(
        "# pivtap authentication server, written by `pivtap server init`.\n\
         # Relative paths are relative to this file's directory.\n\
         # GET /metrics is served nowhere until [metrics] says where: `listen = \"127.0.0.1:9464\"`\n\
         # (a plain-HTTP loopback listener) and/or `token_file = \"metrics.token\"` (a bearer\n\
         # credential; then also on the public listener).\n\n{}",
        config.to_toml()?
    );

    prepare_directory(dir, options.force)?;
    let write = |name: &str, contents: &[u8], mode: u32| {
        let path = dir.join(name);
        write_file_atomically(&path, contents, mode)
            .map_err(|source| InitError::Write { path, source })
    };
    write(
        CERTIFICATE_FILE,
        certificate.certificate_pem.as_bytes(),
        PUBLIC_FILE_MODE,
    )?;
    if !kept.contains(&Secret::TlsKey) {
        write(
            CERTIFICATE_KEY_FILE,
            certificate.key_pem.as_bytes(),
            PRIVATE_FILE_MODE,
        )?;
    }
    if let Some((ca_pem, ca_key_pem)) = &new_ca {
        write(CA_KEY_FILE, ca_key_pem.as_bytes(), PRIVATE_FILE_MODE)?;
        write(CA_CERTIFICATE_FILE, ca_pem.as_bytes(), PUBLIC_FILE_MODE)?;
    }
    if !kept.contains(&Secret::TokenKey) {
        TokenKeys::generate().save(&dir.join(TOKEN_KEYS_FILE))?;
    }
    if !kept.contains(&Secret::AdminToken) {
        write(ADMIN_TOKEN_FILE, admin_token.as_bytes(), PRIVATE_FILE_MODE)?;
    }
    let trust_dir = dir.join(TRUST_DIRECTORY);
    fs::create_dir_all(&trust_dir).map_err(|source| InitError::Write {
        path: trust_dir.clone(),
        source,
    })?;
    for (name, contents) in &trust {
        write(
            &format!("{TRUST_DIRECTORY}/{name}"),
            contents,
            PUBLIC_FILE_MODE,
        )?;
    }
    // SQLite's file, private from the start (PostgreSQL's database is made by its admin).
    let sqlite_file = match &options.store {
        None => Some(PathBuf::from(DATABASE_FILE)),
        Some(store) => store.url.sqlite_path().map(Path::to_owned),
    };
    if let Some(file) = sqlite_file {
        create_empty_database(&dir.join(file))?;
    }
    write(CONFIG_FILE, config_text.as_bytes(), PUBLIC_FILE_MODE)?;

    // What was written must load as the server will load it.
    let written = ServerConfig::load(&config_path)?;
    if let Some(issuance) = &written.issuance {
        Issuer::load(issuance)?;
    }
    Ok(InitReport {
        config_path,
        certificate_path: dir.join(CERTIFICATE_FILE),
        admin_token_path: dir.join(ADMIN_TOKEN_FILE),
        ca_certificate_path: dir.join(CA_CERTIFICATE_FILE),
        ca_created: new_ca.is_some(),
        origin,
        spki_sha256_pin: certificate.spki_sha256_pin,
        replaced,
        kept,
    })
}

/// The issuing CA already in `dir`, when its certificate and key load and match.
fn existing_ca(dir: &Path) -> Option<Issuer> {
    Issuer::load(&IssuanceConfig::new(
        dir.join(CA_CERTIFICATE_FILE),
        dir.join(CA_KEY_FILE),
    ))
    .ok()
}

/// Reads and checks each `--trust` file; returns its file name and contents.
fn read_trust_files(paths: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, InitError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(|| InitError::NotAFile(path.clone()))?;
        if files.iter().any(|(taken, _)| *taken == name) {
            return Err(InitError::DuplicateTrustFileName(name));
        }
        let contents = fs::read(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        parse_ca_certificates(&contents).map_err(|problem| ConfigError::PkiFile {
            path: path.clone(),
            problem,
        })?;
        files.push((name, contents));
    }
    Ok(files)
}

/// The names the TLS certificate is for: loopback, the listen address if it
/// is a specific one, and every `--hostname`.
fn certificate_names(options: &InitOptions) -> Result<Vec<String>, InitError> {
    let mut names = vec![
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        "localhost".to_owned(),
    ];
    let listen_ip = options.listen.ip();
    if !listen_ip.is_unspecified() {
        names.push(listen_ip.to_string());
    }
    for hostname in &options.hostnames {
        if ServerName::try_from(hostname.as_str()).is_err() {
            return Err(InitError::InvalidHostname(hostname.clone()));
        }
        names.push(hostname.clone());
    }
    let mut seen = BTreeSet::new();
    names.retain(|name| seen.insert(name.clone()));
    Ok(names)
}

/// `https://HOST[:PORT]`: HOST is the first `--hostname`, else the listen
/// address, else (listening on every address) `localhost`.
fn origin(options: &InitOptions) -> String {
    let host = match options.hostnames.first() {
        Some(hostname) => match hostname.parse::<IpAddr>() {
            Ok(ip) => url_host(ip),
            Err(_) => hostname.clone(),
        },
        None if options.listen.ip().is_unspecified() => "localhost".to_owned(),
        None => url_host(options.listen.ip()),
    };
    match options.listen.port() {
        443 => format!("https://{host}"),
        port => format!("https://{host}:{port}"),
    }
}

/// An IP address as a URL host: IPv6 in brackets.
fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// How long the server certificates `init` and `renew-tls` make are valid.
pub const CERTIFICATE_DAYS: i64 = 365;

/// The TLS key in `path` (PKCS#8 PEM), to keep it.
fn read_tls_key(path: &Path) -> Result<KeyPair, InitError> {
    let pem =
        Zeroizing::new(
            fs::read_to_string(path).map_err(|error| InitError::UnusableTlsKey {
                path: path.to_owned(),
                reason: error.to_string(),
            })?,
        );
    KeyPair::from_pem(&pem).map_err(|_| InitError::UnusableTlsKey {
        path: path.to_owned(),
        reason: "not a PEM private key".to_owned(),
    })
}

/// A self-signed server certificate for `names`, valid for `days`, with `key`
/// (kept, so its pin stays) or a new P-256 key.
fn make_certificate(
    names: Vec<String>,
    key: Option<KeyPair>,
    days: i64,
) -> Result<ServerCertificate, InitError> {
    let key = match key {
        Some(key) => key,
        None => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
    };
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "pivtap server");
    let now = OffsetDateTime::now_utc();
    // A few minutes of slack for clients whose clocks run behind.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let certificate = params.self_signed(&key)?;
    Ok(ServerCertificate {
        not_after: params.not_after,
        certificate_pem: certificate.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        spki_sha256_pin: STANDARD.encode(Sha256::digest(key.subject_public_key_info())),
    })
}

/// What `renew_tls` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewReport {
    /// The certificate file rewritten.
    pub certificate_path: PathBuf,
    /// The key pin (unchanged unless a new key was asked for).
    pub spki_sha256_pin: String,
    /// Whether the key is new (the pin changed).
    pub new_key: bool,
    /// The names the certificate is for (those of the old one).
    pub names: Vec<String>,
    /// Its new end of validity.
    pub not_after: OffsetDateTime,
}

/// Why `renew_tls` did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// The configuration has no `[tls]`.
    #[error(
        "the configuration has no [tls] section: the server runs plain HTTP and has no certificate to renew"
    )]
    NoTls,
    /// The current certificate cannot be read or parsed.
    #[error("cannot read the TLS certificate {}: {reason}", .path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Making or writing the new certificate failed.
    #[error(transparent)]
    Init(#[from] InitError),
}

/// Renews the server's own TLS certificate named by `config` (`[tls]`): a new
/// self-signed certificate for the same names, valid [`CERTIFICATE_DAYS`], with
/// the same key (kiosks' key pins keep working) unless `new_key`. A running
/// server picks it up when restarted.
pub fn renew_tls(config: &ServerConfig, new_key: bool) -> Result<RenewReport, RenewError> {
    let tls = config.tls.as_ref().ok_or(RenewError::NoTls)?;
    let names = certificate_names_of(&tls.certificate)?;
    let key = if new_key {
        None
    } else {
        Some(read_tls_key(&tls.key)?)
    };
    let certificate = make_certificate(names.clone(), key, CERTIFICATE_DAYS)?;
    let write = |path: &Path, contents: &[u8], mode: u32| {
        write_file_atomically(path, contents, mode).map_err(|source| InitError::Write {
            path: path.to_owned(),
            source,
        })
    };
    if new_key {
        write(&tls.key, certificate.key_pem.as_bytes(), PRIVATE_FILE_MODE)?;
    }
    write(
        &tls.certificate,
        certificate.certificate_pem.as_bytes(),
        PUBLIC_FILE_MODE,
    )?;
    Ok(RenewReport {
        certificate_path: tls.certificate.clone(),
        spki_sha256_pin: certificate.spki_sha256_pin,
        new_key,
        names,
        not_after: certificate.not_after,
    })
}

/// The DNS names and IP addresses in the certificate file's subject alternative names.
fn certificate_names_of(path: &Path) -> Result<Vec<String>, RenewError> {
    let problem = |reason: String| RenewError::Certificate {
        path: path.to_owned(),
        reason,
    };
    let pem = fs::read(path).map_err(|error| problem(error.to_string()))?;
    let der =
        <rustls_pki_types::CertificateDer<'_> as rustls_pki_types::pem::PemObject>::from_pem_slice(
            &pem,
        )
        .map_err(|_| problem("no PEM certificate in it".to_owned()))?;
    let (_, certificate) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| problem("not an X.509 certificate".to_owned()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        return Err(problem(
            "it names no host (no subject alternative names)".to_owned(),
        ));
    }
    Ok(names)
}

/// Creates `dir` (owner only) if missing; refuses it non-empty unless `force`.
fn prepare_directory(dir: &Path, force: bool) -> Result<(), InitError> {
    let write_error = |source| InitError::Write {
        path: dir.to_owned(),
        source,
    };
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(InitError::NotEmpty(dir.to_owned()));
            }
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut builder = DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt as _;
                builder.mode(PRIVATE_DIRECTORY_MODE);
            }
            builder.create(dir).map_err(write_error)
        }
        Err(error) => Err(write_error(error)),
    }
}

/// An empty file is an empty SQLite database; an existing one is kept.
fn create_empty_database(path: &Path) -> Result<(), InitError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(PRIVATE_FILE_MODE);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(InitError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, IsCa};
    use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject as _};

    use super::*;
    use crate::config::PkiFileProblem;

    fn write_certificate(dir: &Path, name: &str, is_ca: bool) -> PathBuf {
        let mut params = CertificateParams::new(vec![]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test"));
        if is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let certificate = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let path = dir.join(name);
        fs::write(&path, certificate.pem()).unwrap();
        path
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_the_store_it_is_given_and_never_a_password() {
        use crate::store::url::StoreUrl;
        let secrets = tempfile::tempdir().unwrap();
        let password = secrets.path().join("store.password");
        pivtap_files::write_atomically(&password, b"s3cret-pw\n", 0o600).unwrap();
        let url = StoreUrl::parse(
            "postgres://pivtap@db.example:5432/pivtap?sslmode=verify-full&sslrootcert=db-ca.crt",
        )
        .unwrap();
        let store = StoreConfig {
            url: url.clone(),
            password_file: Some(password.clone()),
        };
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("server");
        let options = InitOptions {
            store: Some(store.clone()),
            ..InitOptions::default()
        };
        let report = init_server(&dir, &options).unwrap();
        let text = fs::read_to_string(&report.config_path).unwrap();
        assert!(text.contains("[store]"), "{text}");
        assert!(!text.contains("database ="), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            !dir.join("pivtap.db").exists(),
            "no SQLite file for PostgreSQL"
        );
        let config = ServerConfig::load(&report.config_path).unwrap();
        assert_eq!(config.store_url(), url.resolve(&dir));
        assert_eq!(
            config.store.unwrap().password_file.as_deref(),
            Some(password.as_path())
        );

        // SQLite by URL: its file is made, private, where the URL says.
        let sqlite_dir = root.path().join("sqlite");
        let options = InitOptions {
            store: Some(StoreConfig {
                url: StoreUrl::parse("sqlite:state.db").unwrap(),
                password_file: None,
            }),
            ..InitOptions::default()
        };
        init_server(&sqlite_dir, &options).unwrap();
        assert_eq!(mode(&sqlite_dir.join("state.db")), 0o600);
        assert!(!sqlite_dir.join("pivtap.db").exists());

        // Refused before anything is written: a password file for SQLite, or one that
        // is missing or readable by others.
        let refused = |store: StoreConfig| {
            let target = root.path().join("refused");
            let options = InitOptions {
                store: Some(store),
                ..InitOptions::default()
            };
            let error = init_server(&target, &options).unwrap_err();
            assert!(!target.exists(), "{error}");
            error
        };
        let error = refused(StoreConfig {
            url: StoreUrl::parse("sqlite:x.db").unwrap(),
            password_file: Some(password.clone()),
        });
        assert!(matches!(error, InitError::PasswordForSqlite), "{error}");
        let error = refused(StoreConfig {
            password_file: Some(secrets.path().join("absent")),
            ..store.clone()
        });
        assert!(matches!(error, InitError::StorePassword(_)), "{error}");
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&password, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let error = refused(store);
        assert!(
            crate::check::error_chain(&error).contains("chmod 600"),
            "{error}"
        );
    }

    #[test]
    fn init_writes_a_server_that_loads() {
        let inputs = tempfile::tempdir().unwrap();
        let ca = write_certificate(inputs.path(), "badge-ca.pem", true);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("server");
        let options = InitOptions {
            trust: vec![ca.clone()],
            hostnames: vec!["auth.example.org".to_owned()],
            ..InitOptions::default()
        };
        let report = init_server(&dir, &options).unwrap();

        assert_eq!(report.config_path, dir.join("server.toml"));
        assert_eq!(report.admin_token_path, dir.join("admin.token"));
        assert_eq!(report.certificate_path, dir.join("tls.crt"));
        assert_eq!(report.origin, "https://auth.example.org:8443");
        assert_eq!(mode(&dir), 0o700);
        for (file, expected) in [
            ("server.toml", 0o644),
            ("tls.crt", 0o644),
            ("tls.key", 0o600),
            ("tokens.key", 0o600),
            ("admin.token", 0o600),
            ("pivtap.db", 0o600),
            ("trust/badge-ca.pem", 0o644),
            ("ca.crt", 0o644),
            ("ca.key", 0o600),
        ] {
            assert_eq!(mode(&dir.join(file)), expected, "{file}");
        }
        assert_eq!(fs::metadata(dir.join("pivtap.db")).unwrap().len(), 0);

        let config = ServerConfig::load(&report.config_path).unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert_eq!(config.origin, report.origin);
        assert_eq!(config.tls.as_ref().unwrap().key, dir.join("tls.key"));
        assert_eq!(config.tokens.key_file, dir.join("tokens.key"));
        assert_eq!(config.database, dir.join("pivtap.db"));
        assert_eq!(
            config.trust.ca_certificates,
            [dir.join("ca.crt"), dir.join("trust/badge-ca.pem")]
        );
        let issuing_ca = crate::config::read_ca_certificates(&dir.join("ca.crt")).unwrap();
        assert_eq!(
            config.trust_anchors().unwrap(),
            [
                issuing_ca.clone(),
                crate::config::read_ca_certificates(&ca).unwrap()
            ]
            .concat()
        );
        assert!(report.ca_created);
        assert_eq!(report.ca_certificate_path, dir.join("ca.crt"));
        let issuance = config.issuance.clone().unwrap();
        assert_eq!(issuance.ca_certificate, dir.join("ca.crt"));
        assert_eq!(issuance.ca_key, dir.join("ca.key"));
        let issuer = Issuer::load(&issuance).unwrap();
        assert_eq!(issuer.ca_der(), issuing_ca[0].as_slice());
        let (_, ca_certificate) = x509_parser::parse_x509_certificate(&issuing_ca[0]).unwrap();
        assert!(ca_certificate.is_ca());
        assert_eq!(ca_certificate.subject().to_string(), "CN=pivtap issuing CA");
        assert_eq!(
            fs::read(&ca).unwrap(),
            fs::read(dir.join("trust/badge-ca.pem")).unwrap()
        );

        let keys = TokenKeys::load(&config.tokens.key_file).unwrap();
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 1);

        let admin_token = fs::read_to_string(&report.admin_token_path).unwrap();
        let encoded = admin_token.strip_suffix('\n').unwrap();
        assert_eq!(
            pivtap_protocol::jose::base64url_decode(encoded)
                .unwrap()
                .len(),
            32
        );

        let key_pem = fs::read_to_string(dir.join("tls.key")).unwrap();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn certificate_matches_the_pin_and_names_the_server() {
        let inputs = tempfile::tempdir().unwrap();
        let ca = write_certificate(inputs.path(), "ca.pem", true);
        let dir = tempfile::tempdir().unwrap();
        let options = InitOptions {
            trust: vec![ca],
            listen: "192.0.2.10:443".parse().unwrap(),
            hostnames: vec!["2001:db8::5".to_owned(), "kiosk-gw.example".to_owned()],
            ..InitOptions::default()
        };
        let report = init_server(dir.path(), &options).unwrap();
        assert_eq!(report.origin, "https://[2001:db8::5]");

        let der = CertificateDer::from_pem_file(&report.certificate_path).unwrap();
        let (rest, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(rest.is_empty());
        let pin = STANDARD.encode(Sha256::digest(certificate.tbs_certificate.subject_pki.raw));
        assert_eq!(report.spki_sha256_pin, pin);
        let validity = certificate.validity();
        let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
        assert_eq!(days, 365);

        // Clients trust tls.crt directly: it verifies as a TLS server certificate
        // with itself as the trust anchor, for each of its names.
        let anchor = webpki::anchor_from_trusted_cert(&der).unwrap();
        let end_entity = webpki::EndEntityCert::try_from(&der).unwrap();
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &[],
                UnixTime::now(),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .unwrap();
        for name in [
            "127.0.0.1",
            "::1",
            "localhost",
            "192.0.2.10",
            "2001:db8::5",
            "kiosk-gw.example",
        ] {
            let server_name = ServerName::try_from(name).unwrap();
            end_entity
                .verify_is_valid_for_subject_name(&server_name)
                .unwrap_or_else(|error| panic!("{name}: {error:?}"));
        }
        let other = ServerName::try_from("other.example").unwrap();
        assert!(end_entity.verify_is_valid_for_subject_name(&other).is_err());
    }

    #[test]
    fn without_trust_files_only_the_issuing_ca_is_trusted() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("server");
        let report = init_server(&dir, &InitOptions::default()).unwrap();
        let config = ServerConfig::load(&report.config_path).unwrap();
        assert_eq!(config.trust.ca_certificates, [dir.join("ca.crt")]);
        assert!(config.issuance.is_some());
        assert!(!dir.join("trust").read_dir().unwrap().any(|_| true));
    }

    #[test]
    fn origin_follows_listen_and_hostnames() {
        let origin_for = |listen: &str, hostnames: &[&str]| {
            origin(&InitOptions {
                listen: listen.parse().unwrap(),
                hostnames: hostnames.iter().map(|name| (*name).to_owned()).collect(),
                ..InitOptions::default()
            })
        };
        assert_eq!(origin_for("127.0.0.1:8443", &[]), "https://127.0.0.1:8443");
        assert_eq!(origin_for("[::1]:8443", &[]), "https://[::1]:8443");
        assert_eq!(origin_for("0.0.0.0:8443", &[]), "https://localhost:8443");
        assert_eq!(
            origin_for("0.0.0.0:443", &["auth.example.org"]),
            "https://auth.example.org"
        );
    }

    #[test]
    fn non_empty_directory_is_refused_unless_forced() {
        let inputs = tempfile::tempdir().unwrap();
        let ca = write_certificate(inputs.path(), "ca.pem", true);
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
        let mut options = InitOptions {
            trust: vec![ca],
            ..InitOptions::default()
        };
        let refused = init_server(dir.path(), &options).unwrap_err();
        assert!(matches!(&refused, InitError::NotEmpty(path) if path == dir.path()));
        assert!(!dir.path().join("server.toml").exists());

        options.force = true;
        let first = init_server(dir.path(), &options).unwrap();
        let first_ca = fs::read(dir.path().join("ca.crt")).unwrap();
        fs::write(dir.path().join("pivtap.db"), "existing data").unwrap();
        // Replacing the secrets is asked for by name (it breaks kiosks, tokens, scripts).
        options.replace = Secret::ALL.into_iter().collect();
        let second = init_server(dir.path(), &options).unwrap();
        assert_ne!(first.spki_sha256_pin, second.spki_sha256_pin);
        assert_eq!(second.replaced, Secret::ALL);
        // The issuing CA is kept, so the cards it issued stay valid.
        assert!(first.ca_created && !second.ca_created);
        assert_eq!(fs::read(dir.path().join("ca.crt")).unwrap(), first_ca);
        assert_eq!(
            fs::read_to_string(dir.path().join("pivtap.db")).unwrap(),
            "existing data"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "keep me"
        );
    }

    #[test]
    fn force_refuses_to_replace_secrets_not_named_and_keeps_them_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let first = init_server(dir.path(), &InitOptions::default()).unwrap();
        let read = |name: &str| fs::read(dir.path().join(name)).unwrap();
        let before: Vec<Vec<u8>> = Secret::ALL.iter().map(|s| read(s.file())).collect();
        let certificate_before = read("tls.crt");

        let mut options = InitOptions {
            force: true,
            replace: [Secret::TokenKey].into_iter().collect(),
            ..InitOptions::default()
        };
        let refused = init_server(dir.path(), &options).unwrap_err();
        match &refused {
            InitError::WouldReplaceSecrets { secrets, .. } => {
                assert_eq!(secrets, &[Secret::TlsKey, Secret::AdminToken]);
            }
            other => panic!("{other:?}"),
        }
        let message = refused.to_string();
        for needle in [
            "tls.key",
            "admin.token",
            "pins the server key",
            "--replace tls-key,admin-token",
            "--keep-secrets",
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        assert!(!message.contains("tokens.key"), "{message}");
        let after: Vec<Vec<u8>> = Secret::ALL.iter().map(|s| read(s.file())).collect();
        assert_eq!(before, after, "nothing is written when refused");
        assert_eq!(read("tls.crt"), certificate_before);

        // Keeping the rest: the TLS key and pin stay, the certificate is new, the
        // token keys are replaced as named.
        options.keep_secrets = true;
        let second = init_server(dir.path(), &options).unwrap();
        assert_eq!(second.spki_sha256_pin, first.spki_sha256_pin);
        assert_eq!(second.replaced, [Secret::TokenKey]);
        assert_eq!(second.kept, [Secret::TlsKey, Secret::AdminToken]);
        assert_eq!(read("tls.key"), before[0]);
        assert_ne!(read("tokens.key"), before[1]);
        assert_eq!(read("admin.token"), before[2]);
        assert_ne!(read("tls.crt"), certificate_before);
        assert!(ServerConfig::load(&second.config_path).is_ok());
        assert_eq!("admin-token".parse::<Secret>().unwrap(), Secret::AdminToken);
        assert!("ca-key".parse::<Secret>().is_err());
    }

    #[test]
    fn renew_tls_keeps_the_key_and_names_unless_a_new_key_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let options = InitOptions {
            hostnames: vec!["auth.example.org".to_owned(), "192.0.2.7".to_owned()],
            ..InitOptions::default()
        };
        let first = init_server(dir.path(), &options).unwrap();
        let config = ServerConfig::load(&first.config_path).unwrap();
        let key = fs::read(dir.path().join("tls.key")).unwrap();
        let old = fs::read(dir.path().join("tls.crt")).unwrap();

        let renewed = renew_tls(&config, false).unwrap();
        assert_eq!(renewed.spki_sha256_pin, first.spki_sha256_pin);
        assert!(!renewed.new_key);
        assert_eq!(
            renewed.names,
            [
                "127.0.0.1",
                "::1",
                "localhost",
                "auth.example.org",
                "192.0.2.7"
            ]
        );
        assert_eq!(fs::read(dir.path().join("tls.key")).unwrap(), key);
        let new = fs::read(dir.path().join("tls.crt")).unwrap();
        assert_ne!(new, old);
        assert_eq!(mode(&dir.path().join("tls.crt")), 0o644);
        let der = CertificateDer::from_pem_slice(&new).unwrap();
        let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
        let pin = STANDARD.encode(Sha256::digest(certificate.tbs_certificate.subject_pki.raw));
        assert_eq!(pin, first.spki_sha256_pin);
        let left = certificate.validity().not_after.timestamp()
            - OffsetDateTime::now_utc().unix_timestamp();
        assert!((364 * 86_400..=365 * 86_400).contains(&left), "{left}");

        let rekeyed = renew_tls(&config, true).unwrap();
        assert_ne!(rekeyed.spki_sha256_pin, first.spki_sha256_pin);
        assert_ne!(fs::read(dir.path().join("tls.key")).unwrap(), key);
        assert_eq!(mode(&dir.path().join("tls.key")), 0o600);

        let mut plain = config.clone();
        plain.tls = None;
        assert!(matches!(renew_tls(&plain, false), Err(RenewError::NoTls)));
    }

    #[test]
    fn unusable_trust_files_and_hostnames_are_refused_before_writing() {
        let inputs = tempfile::tempdir().unwrap();
        let leaf = write_certificate(inputs.path(), "leaf.pem", false);
        let ca = write_certificate(inputs.path(), "ca.pem", true);
        let other_dir = inputs.path().join("other");
        fs::create_dir(&other_dir).unwrap();
        let same_name = write_certificate(&other_dir, "ca.pem", true);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("server");
        let init = |trust: Vec<PathBuf>, hostnames: Vec<&str>| {
            init_server(
                &dir,
                &InitOptions {
                    trust,
                    hostnames: hostnames.into_iter().map(str::to_owned).collect(),
                    ..InitOptions::default()
                },
            )
        };

        assert!(matches!(
            init(vec![leaf.clone()], vec![]),
            Err(InitError::Config(ConfigError::PkiFile {
                problem: PkiFileProblem::NotCa,
                path,
            })) if path == leaf
        ));
        assert!(matches!(
            init(vec![inputs.path().join("missing.pem")], vec![]),
            Err(InitError::Config(ConfigError::Read { .. }))
        ));
        assert!(matches!(
            init(vec![ca.clone(), same_name], vec![]),
            Err(InitError::DuplicateTrustFileName(name)) if name == "ca.pem"
        ));
        assert!(matches!(
            init(vec![ca.clone()], vec!["not a host"]),
            Err(InitError::InvalidHostname(name)) if name == "not a host"
        ));
        assert!(!dir.exists());
    }
}
