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
//! above is replaced except the database, which is kept with its contents, and
//! the issuing CA (`ca.crt` and `ca.key`), which is kept when both load and
//! match, so certificates it issued stay valid.

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

use crate::{
    config::{
        ConfigError, DEFAULT_LISTEN, IssuanceConfig, MappingConfig, ServerConfig, TlsConfig,
        TokenConfig, TrustConfig, parse_ca_certificates,
    },
    issuance::{IssuanceError, Issuer, create_ca},
    jose::base64url_encode,
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
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            trust: Vec::new(),
            listen: DEFAULT_LISTEN,
            hostnames: Vec::new(),
            force: false,
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
}

/// Why `init_server` did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The directory has files and `force` was not set.
    #[error("{} is not empty; use --force to overwrite the server files in it", .0.display())]
    NotEmpty(PathBuf),
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

/// A TLS certificate and key made by `init_server`.
struct ServerCertificate {
    certificate_pem: String,
    key_pem: Zeroizing<String>,
    spki_sha256_pin: String,
}

/// Writes a ready-to-run server into `dir` (created if missing); see the module documentation.
pub fn init_server(dir: &Path, options: &InitOptions) -> Result<InitReport, InitError> {
    // Everything that can fail on the input is checked before anything is written.
    let trust = read_trust_files(&options.trust)?;
    let names = certificate_names(options)?;
    let origin = origin(options);
    let certificate = make_certificate(names)?;
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
        tls: Some(TlsConfig {
            certificate: PathBuf::from(CERTIFICATE_FILE),
            key: PathBuf::from(CERTIFICATE_KEY_FILE),
        }),
        tokens: TokenConfig {
            key_file: PathBuf::from(TOKEN_KEYS_FILE),
            ..TokenConfig::default()
        },
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
    write(
        CERTIFICATE_KEY_FILE,
        certificate.key_pem.as_bytes(),
        PRIVATE_FILE_MODE,
    )?;
    if let Some((ca_pem, ca_key_pem)) = &new_ca {
        write(CA_KEY_FILE, ca_key_pem.as_bytes(), PRIVATE_FILE_MODE)?;
        write(CA_CERTIFICATE_FILE, ca_pem.as_bytes(), PUBLIC_FILE_MODE)?;
    }
    TokenKeys::generate().save(&dir.join(TOKEN_KEYS_FILE))?;
    write(ADMIN_TOKEN_FILE, admin_token.as_bytes(), PRIVATE_FILE_MODE)?;
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
    create_empty_database(&dir.join(DATABASE_FILE))?;
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

/// A self-signed P-256 server certificate for `names`, valid for a year.
fn make_certificate(names: Vec<String>) -> Result<ServerCertificate, InitError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "pivtap server");
    let now = OffsetDateTime::now_utc();
    // A few minutes of slack for clients whose clocks run behind.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(365);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let certificate = params.self_signed(&key)?;
    Ok(ServerCertificate {
        certificate_pem: certificate.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        spki_sha256_pin: STANDARD.encode(Sha256::digest(key.subject_public_key_info())),
    })
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
        assert_eq!(crate::jose::base64url_decode(encoded).unwrap().len(), 32);

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
        let second = init_server(dir.path(), &options).unwrap();
        assert_ne!(first.spki_sha256_pin, second.spki_sha256_pin);
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
