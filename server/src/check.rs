//! `pivtap server check`: validates a server's configuration without starting it — the configuration parses, its files are there with safe modes, certificates parse and are in date, keys match certificates, the database opens with a known schema.

use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::ServerConfig;
use crate::issuance::Issuer;
use crate::store::PostgresStore;
use crate::store::snapshot::{SchemaVersion, schema_version};
use crate::store::url::{PostgresUrl, StorePassword, StoreUrl};
use crate::token::TokenKeys;

/// A certificate ending within this many days is reported (and warned about by a running server).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Checked and fine.
    Ok,
    /// Works, but needs attention soon (a certificate near its end).
    Warning,
    /// The server would not start, or would not work as configured.
    Error,
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked, e.g. `tls certificate`.
    pub what: String,
    /// The file concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The verdict.
    pub level: Level,
    /// What was found (never key material).
    pub detail: String,
}

/// Everything [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The configuration checked.
    pub config: PathBuf,
    /// The worst finding's level.
    pub level: Level,
    /// Each check, in order.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Whether any check failed.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.level == Level::Error
    }
}

/// Collects findings.
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, what: &str, path: Option<&Path>, level: Level, detail: impl Into<String>) {
        self.0.push(Finding {
            what: what.to_owned(),
            path: path.map(Path::to_owned),
            level,
            detail: detail.into(),
        });
    }

    /// Adds the finding of `result`: `Ok` with its detail, or an error.
    fn result<E: std::fmt::Display>(
        &mut self,
        what: &str,
        path: Option<&Path>,
        result: Result<String, E>,
    ) {
        match result {
            Ok(detail) => self.add(what, path, Level::Ok, detail),
            Err(error) => self.add(what, path, Level::Error, error.to_string()),
        }
    }
}

/// An error and its sources, one after the other (a source already quoted is not repeated).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The end of validity of the (first) certificate in the PEM or DER file's `bytes`.
///
/// # Errors
/// A description of why the bytes hold no readable certificate.
pub fn certificate_not_after(bytes: &[u8]) -> Result<OffsetDateTime, String> {
    let der = match CertificateDer::from_pem_slice(bytes) {
        Ok(der) => der,
        Err(_) => CertificateDer::from(bytes.to_vec()),
    };
    let (_, certificate) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| "no PEM or DER certificate in it".to_owned())?;
    OffsetDateTime::from_unix_timestamp(certificate.validity().not_after.timestamp())
        .map_err(|_| "its end of validity is out of range".to_owned())
}

/// Finding for a certificate ending at `not_after`, seen at `now`.
fn validity(
    findings: &mut Findings,
    what: &str,
    path: &Path,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) {
    let days = (not_after - now).whole_days();
    let date = not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    if not_after <= now {
        findings.add(what, Some(path), Level::Error, format!("expired on {date}"));
    } else if days < EXPIRY_WARNING_DAYS {
        findings.add(
            what,
            Some(path),
            Level::Warning,
            format!("expires in {days} days, on {date}"),
        );
    } else {
        findings.add(
            what,
            Some(path),
            Level::Ok,
            format!("valid until {date} ({days} days)"),
        );
    }
}

/// Finding for a secret file's mode: readable by its owner only.
#[cfg(unix)]
fn secret_mode(findings: &mut Findings, what: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::metadata(path) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 == 0 {
                findings.add(what, Some(path), Level::Ok, format!("mode {mode:04o}"));
            } else {
                findings.add(
                    what,
                    Some(path),
                    Level::Error,
                    format!(
                        "mode {mode:04o}: others may read it; chmod 600 {}",
                        path.display()
                    ),
                );
            }
        }
        Err(error) => findings.add(
            what,
            Some(path),
            Level::Error,
            format!("cannot read it: {error}"),
        ),
    }
}

#[cfg(not(unix))]
fn secret_mode(_: &mut Findings, _: &str, _: &Path) {}

/// Checks the TLS certificate and key: they parse, the key matches, the certificate is in date.
fn check_tls(findings: &mut Findings, certificate: &Path, key: &Path, now: OffsetDateTime) {
    secret_mode(findings, "tls key mode", key);
    let bytes = match std::fs::read(certificate) {
        Ok(bytes) => bytes,
        Err(error) => {
            findings.add(
                "tls certificate",
                Some(certificate),
                Level::Error,
                format!("cannot read it: {error}"),
            );
            return;
        }
    };
    match certificate_not_after(&bytes) {
        Ok(not_after) => validity(findings, "tls certificate", certificate, not_after, now),
        Err(reason) => {
            findings.add("tls certificate", Some(certificate), Level::Error, reason);
            return;
        }
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    let key_der = match PrivateKeyDer::from_pem_file(key) {
        Ok(key_der) => key_der,
        Err(_) => {
            findings.add(
                "tls key",
                Some(key),
                Level::Error,
                "cannot read a PEM private key from it",
            );
            return;
        }
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let verdict = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| format!("unusable key: {error}"))
        .and_then(|signing_key| {
            rustls::sign::CertifiedKey::new(chain, signing_key)
                .keys_match()
                .map_err(|error| match error {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        "the key does not match the certificate".to_owned()
                    }
                    other => format!("cannot compare the key with the certificate: {other}"),
                })
        });
    match verdict {
        Ok(()) => findings.add("tls key", Some(key), Level::Ok, "matches the certificate"),
        Err(reason) => findings.add("tls key", Some(key), Level::Error, reason),
    }
}

/// Checks the server configured by `config_path` at `now`; nothing is written.
#[must_use]
pub fn check(config_path: &Path, now: OffsetDateTime) -> CheckReport {
    let mut findings = Findings(Vec::new());
    match ServerConfig::load(config_path) {
        Ok(config) => check_config(&mut findings, &config, now),
        Err(error) => findings.add(
            "configuration",
            Some(config_path),
            Level::Error,
            error_chain(&error),
        ),
    }
    let level = findings
        .0
        .iter()
        .map(|finding| finding.level)
        .max()
        .unwrap_or(Level::Ok);
    CheckReport {
        config: config_path.to_owned(),
        level,
        findings: findings.0,
    }
}

fn check_config(findings: &mut Findings, config: &ServerConfig, now: OffsetDateTime) {
    findings.add(
        "configuration",
        None,
        Level::Ok,
        format!(
            "parses; listens on {}, origin {}",
            config.listen, config.origin
        ),
    );
    match &config.tls {
        Some(tls) => check_tls(findings, &tls.certificate, &tls.key, now),
        None => findings.add("tls", None, Level::Ok, "none: plain HTTP on loopback"),
    }
    secret_mode(findings, "token keys mode", &config.tokens.key_file);
    findings.result(
        "token keys",
        Some(&config.tokens.key_file),
        TokenKeys::load(&config.tokens.key_file)
            .map(|keys| format!("load; signing with {}", keys.current_kid()))
            .map_err(|error| error_chain(&error)),
    );
    secret_mode(findings, "admin credential mode", &config.admin_token_file);
    findings.result(
        "admin credential",
        Some(&config.admin_token_file),
        std::fs::read_to_string(&config.admin_token_file)
            .map_err(|error| format!("cannot read it: {error}"))
            .and_then(|token| {
                let token = zeroize::Zeroizing::new(token);
                if token.trim().is_empty() {
                    Err("the file is empty".to_owned())
                } else {
                    Ok("present".to_owned())
                }
            }),
    );
    if let Some(path) = &config.metrics.token_file {
        secret_mode(findings, "metrics credential mode", path);
    }
    for path in &config.trust.ca_certificates {
        match crate::config::read_ca_certificates(path) {
            Ok(certificates) => {
                for der in certificates {
                    match certificate_not_after(&der) {
                        Ok(not_after) => validity(findings, "trusted ca", path, not_after, now),
                        Err(reason) => findings.add("trusted ca", Some(path), Level::Error, reason),
                    }
                }
            }
            Err(error) => findings.add("trusted ca", Some(path), Level::Error, error_chain(&error)),
        }
    }
    for path in &config.trust.crl_files {
        findings.result(
            "crl",
            Some(path),
            crate::config::read_crls(path)
                .map(|crls| format!("{} CRL(s) parse", crls.len()))
                .map_err(|error| error_chain(&error)),
        );
    }
    if let Some(issuance) = &config.issuance {
        secret_mode(findings, "issuing ca key mode", &issuance.ca_key);
        match Issuer::load(issuance) {
            Ok(_) => {
                findings.add(
                    "issuing ca",
                    Some(&issuance.ca_certificate),
                    Level::Ok,
                    "loads; the key matches",
                );
                if let Ok(bytes) = std::fs::read(&issuance.ca_certificate)
                    && let Ok(not_after) = certificate_not_after(&bytes)
                {
                    validity(
                        findings,
                        "issuing ca validity",
                        &issuance.ca_certificate,
                        not_after,
                        now,
                    );
                }
            }
            Err(error) => findings.add(
                "issuing ca",
                Some(&issuance.ca_certificate),
                Level::Error,
                error_chain(&error),
            ),
        }
    }
    match config.store_url() {
        StoreUrl::Sqlite(path) => check_database(findings, &path),
        StoreUrl::Postgres(url) => {
            let password_file = config
                .store
                .as_ref()
                .and_then(|store| store.password_file.as_deref());
            check_postgres(findings, &url, password_file);
        }
    }
}

/// Connects to the PostgreSQL store (TLS and password as the server would) and reports
/// whether it is reachable and its schema is current; nothing is written.
fn check_postgres(findings: &mut Findings, url: &PostgresUrl, password_file: Option<&Path>) {
    if let Some(file) = password_file {
        secret_mode(findings, "store password file mode", file);
    }
    let password = match StorePassword::locate(password_file) {
        Ok(password) => password,
        Err(error) => {
            findings.add("store", password_file, Level::Error, error_chain(&error));
            return;
        }
    };
    // A runtime of its own, on a thread of its own: the caller may be inside one.
    let version = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| format!("cannot start a runtime: {error}"))?;
                runtime
                    .block_on(PostgresStore::schema_version(url, password.as_ref()))
                    .map_err(|error| error_chain(&error))
            })
            .join()
            .unwrap_or_else(|_| Err("the connection attempt panicked".to_owned()))
    });
    match version {
        Ok(version) => findings.add(
            "store",
            None,
            if version.is_known() {
                Level::Ok
            } else {
                Level::Error
            },
            schema_detail(&format!("{url}: reachable"), version),
        ),
        Err(reason) => findings.add(
            "store",
            None,
            Level::Error,
            format!(
                "{url}: cannot connect{}: {reason}",
                if password.is_none() {
                    " with no password (neither [store] password_file nor PIVTAP_STORE_PASSWORD is set)"
                } else {
                    ""
                }
            ),
        ),
    }
}

/// What a store's schema version means: `reached` followed by the version's story.
fn schema_detail(reached: &str, version: SchemaVersion) -> String {
    match version.applied {
        Some(applied) if applied > version.known => format!(
            "{reached}; schema {applied} is newer than this program's {}: run the newer pivtap",
            version.known
        ),
        Some(applied) if applied < version.known => format!(
            "{reached}; schema {applied}, brought up to {} on start",
            version.known
        ),
        Some(applied) => format!("{reached}; schema {applied}"),
        None => format!("{reached}; empty (tables are made on start)"),
    }
}

fn check_database(findings: &mut Findings, path: &Path) {
    if !path.exists() {
        let parent_ok = path
            .parent()
            .is_none_or(|parent| parent.as_os_str().is_empty() || parent.is_dir());
        if parent_ok {
            findings.add(
                "database",
                Some(path),
                Level::Ok,
                "missing: the server creates it on start",
            );
        } else {
            findings.add(
                "database",
                Some(path),
                Level::Error,
                "missing, and so is its directory",
            );
        }
        return;
    }
    secret_mode(findings, "database mode", path);
    match schema_version(path) {
        Ok(version) => findings.add(
            "database",
            Some(path),
            if version.is_known() {
                Level::Ok
            } else {
                Level::Error
            },
            schema_detail("opens", version),
        ),
        Err(error) => findings.add(
            "database",
            Some(path),
            Level::Error,
            format!("cannot open it: {}", error_chain(&error)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{InitOptions, init_server};

    fn level_of(report: &CheckReport, what: &str) -> Level {
        report
            .findings
            .iter()
            .filter(|finding| finding.what == what)
            .map(|finding| finding.level)
            .max()
            .unwrap_or_else(|| panic!("no {what} finding: {report:#?}"))
    }

    #[test]
    fn a_fresh_server_checks_out_and_each_fault_is_named() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let report = init_server(dir.path(), &InitOptions::default()).unwrap();
        let now = OffsetDateTime::now_utc();
        let checked = check(&report.config_path, now);
        assert_eq!(checked.level, Level::Ok, "{checked:#?}");
        assert!(checked.findings.len() >= 10, "{checked:#?}");

        // Near the end of the TLS certificate's year: a warning; past it: an error.
        let later = check(&report.config_path, now + time::Duration::days(350));
        assert_eq!(level_of(&later, "tls certificate"), Level::Warning);
        assert_eq!(later.level, Level::Warning);
        let expired = check(&report.config_path, now + time::Duration::days(400));
        assert_eq!(level_of(&expired, "tls certificate"), Level::Error);
        assert!(expired.has_errors());

        // A key readable by others.
        let key = dir.path().join("tls.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loose = check(&report.config_path, now);
        assert_eq!(level_of(&loose, "tls key mode"), Level::Error);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        // A key that is not the certificate's.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let original = std::fs::read(&key).unwrap();
        std::fs::write(&key, other.serialize_pem()).unwrap();
        let mismatch = check(&report.config_path, now);
        let finding = mismatch
            .findings
            .iter()
            .find(|f| f.what == "tls key")
            .unwrap();
        assert_eq!(finding.level, Level::Error);
        assert!(finding.detail.contains("does not match"), "{finding:?}");
        assert!(!format!("{mismatch:?}").contains("PRIVATE KEY"));
        std::fs::write(&key, original).unwrap();

        // A database from a newer pivtap.
        crate::store::snapshot::write_future_schema(&dir.path().join("pivtap.db"));
        let newer = check(&report.config_path, now);
        assert_eq!(level_of(&newer, "database"), Level::Error);

        // A configuration that does not parse stops there.
        std::fs::write(&report.config_path, "listen = 'nowhere'\n").unwrap();
        let broken = check(&report.config_path, now);
        assert_eq!(broken.findings.len(), 1);
        assert_eq!(broken.findings[0].what, "configuration");
        assert!(broken.has_errors());
    }
}
