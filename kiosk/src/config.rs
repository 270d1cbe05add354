//! The kiosk's configuration file (`kiosk.toml`): every option, its default, and how it maps onto the core and the runtime.
//!
//! ```toml
//! device = "kiosk-07"                  # required: this device's id at the server
//! flow = "tap_then_pin"                # or "pin_then_tap" (type the PIN, then tap: for phones and NFC)
//!
//! [server]
//! url = "https://auth.example.com:8443"  # required
//! ca = "tls.crt"                       # trust this CA or the server's own certificate (PEM), or
//! # pin_sha256 = "sha256//..."         # trust exactly this server key; neither: the system roots
//! timeout_seconds = 10                 # per request
//! device_key = "device/device.key"     # this device's own credential (from `pivtap kiosk
//! device_certificate = "device/device.crt"  # enroll-device`): its challenge requests are signed
//!                                      # with it; give both or neither (neither: only an open-mode
//!                                      # server, `[devices] require_registration = false`, serves it)
//! session_check_interval_seconds = 5   # ask the server this often whether the signed-in worker's
//!                                      # session still holds (an administrator, a locked badge or
//!                                      # account ends it at once); 1 to 60
//! pending_sign_outs = "pending-sign-outs.json"  # sign-outs the server has not heard of yet
//!                                      # ({session_id, reason, time} only, 0600), sent again until
//!                                      # it answers, also after a restart
//!
//! [session]
//! sign_out_on_removal = true           # the badge leaving the reader signs the worker out
//!                                      # (default: true for tap_then_pin, false for pin_then_tap,
//!                                      # whose badge only touches the reader briefly)
//! idle_timeout_seconds = 900           # sign out after this long without a key or a tap; 0 = never
//!                                      # (default: 900 for tap_then_pin, 300 for pin_then_tap)
//! fast_user_switch = true              # another worker's tap switches to them once their PIN is
//!                                      # accepted (the current worker stays signed in until then)
//! pin_hold_seconds = 30                # pin_then_tap: a typed PIN waits this long for the tap
//!                                      # (5 to 600; the screen counts it down)
//! warning_seconds = 30                 # warn this long before the idle sign-out (a key or a tap
//!                                      # of the badge keeps the worker) and before the session's
//!                                      # end (tap and PIN sign in again); 0 = no warning
//!
//! [readers]
//! name_contains = ""                   # only readers whose name contains this (any case)
//! contactless_only = false             # only contactless (NFC) cards
//!
//! [branding]
//! organisation = "pivtap"              # shown at the top of the screen
//! primary = "blue"                     # colour names: black red green yellow blue magenta cyan gray white
//! accent = "yellow"                    # (or #RRGGBB)
//! help_contact = "your IT service desk"  # "ask ..." when a PIN is blocked
//!
//! [local_api]
//! listen = "127.0.0.1:7420"            # loopback only: line-of-business apps on this device
//! token_file = "local-api.token"       # created (0600) if missing; apps send it to read the session token
//! header_read_timeout_seconds = 10     # a request's headers must be in by then (1 to 3600)
//! idle_timeout_seconds = 60            # nothing read or written for this long: closed (1 to 3600)
//! max_connections = 128                # open at once (every app comes from loopback)
//!
//! [admin]
//! exit_keys = "ctrl-alt-x"             # opens the administrator's exit; keys separated by spaces
//!                                      # ("f10 f10 f10"), each f1-f12 or held with ctrl- or alt-
//! exit_passcode_hash = "$argon2id$..." # written by `pivtap kiosk set-exit-passcode`; unset: only
//!                                      # a signal (SIGTERM from the service manager) stops the kiosk
//! ```
//!
//! Paths are relative to the configuration file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pivtap_client::device::DeviceCredential;
use pivtap_http::ConnectionLimits;
use serde::Deserialize;

use crate::admin_exit::{ExitKeys, ExitPasscodeHash};
use crate::core::{CoreConfig, Flow, SessionPolicy};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KioskConfig {
    /// This device's id at the server.
    pub device: String,
    /// Tap then PIN, or PIN then tap.
    #[serde(default)]
    pub flow: Flow,
    /// The authentication server.
    pub server: ServerSection,
    /// When sessions end.
    #[serde(default)]
    pub session: SessionSection,
    /// Which readers and cards count.
    #[serde(default)]
    pub readers: ReadersSection,
    /// How the screen looks.
    #[serde(default)]
    pub branding: BrandingSection,
    /// The local session API.
    #[serde(default)]
    pub local_api: LocalApiSection,
    /// The administrator's exit.
    #[serde(default)]
    pub admin: AdminSection,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The key sequence that opens the administrator's exit.
    pub exit_keys: String,
    /// The exit passcode's Argon2id hash (PHC string); `None`: only a signal stops the kiosk.
    pub exit_passcode_hash: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            exit_keys: crate::admin_exit::DEFAULT_EXIT_KEYS.to_owned(),
            exit_passcode_hash: None,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The server's URL.
    pub url: String,
    /// A CA (or the server's own certificate) to trust, PEM.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The server key's pin, `sha256//...`.
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// Seconds per request.
    #[serde(default = "default_timeout")]
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub timeout_seconds: u64,
    /// This device's key (PKCS#8 PEM, 0600), from `pivtap kiosk enroll-device`.
    #[serde(default)]
    pub device_key: Option<PathBuf>,
    /// This device's certificate (PEM), from `pivtap kiosk enroll-device`.
    #[serde(default)]
    pub device_certificate: Option<PathBuf>,
    /// How often the signed-in worker's session is checked at the server, in seconds.
    #[serde(
        default = "default_session_check",
        deserialize_with = "pivtap_protocol::duration::seconds"
    )]
    pub session_check_interval_seconds: u64,
    /// Where sign-outs the server has not heard of yet are kept.
    #[serde(default = "default_pending_sign_outs")]
    pub pending_sign_outs: PathBuf,
}

fn default_session_check() -> u64 {
    5
}

fn default_pending_sign_outs() -> PathBuf {
    PathBuf::from(crate::pending_sign_outs::DEFAULT_FILE)
}

fn default_timeout() -> u64 {
    10
}

/// `[session]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    /// Removal signs out; unset: the flow's default ([`SessionSection::defaults_for`]).
    pub sign_out_on_removal: Option<bool>,
    /// Seconds without activity before sign-out; 0 = never; unset: the flow's default.
    #[serde(
        default,
        deserialize_with = "pivtap_protocol::duration::optional_seconds"
    )]
    pub idle_timeout_seconds: Option<u64>,
    /// A new tap switches workers.
    pub fast_user_switch: bool,
    /// PIN then tap: how long a typed PIN waits for the tap.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub pin_hold_seconds: u64,
    /// Warn this many seconds before the idle sign-out and the session's end; 0 = never.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub warning_seconds: u64,
}

impl Default for SessionSection {
    fn default() -> Self {
        SessionSection {
            sign_out_on_removal: None,
            idle_timeout_seconds: None,
            fast_user_switch: true,
            pin_hold_seconds: 30,
            warning_seconds: 30,
        }
    }
}

impl SessionSection {
    /// The defaults that fit `flow`, as (`sign_out_on_removal`, `idle_timeout_seconds`): a badge
    /// resting on a desk reader (tap then PIN) keeps the session while it stays; a badge held
    /// briefly to an NFC reader (PIN then tap) leaves at once, so removal must not sign out and
    /// the idle time-out is shorter.
    #[must_use]
    pub fn defaults_for(flow: Flow) -> (bool, u64) {
        match flow {
            Flow::TapThenPin => (true, 900),
            Flow::PinThenTap => (false, 300),
        }
    }
}

/// `[readers]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadersSection {
    /// Only readers whose name contains this.
    pub name_contains: String,
    /// Only contactless cards.
    pub contactless_only: bool,
}

/// `[branding]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrandingSection {
    /// The organisation's name.
    pub organisation: String,
    /// The main colour.
    pub primary: String,
    /// The highlight colour.
    pub accent: String,
    /// Whom to ask when a PIN is blocked.
    pub help_contact: String,
}

impl Default for BrandingSection {
    fn default() -> Self {
        BrandingSection {
            organisation: "pivtap".to_owned(),
            primary: "blue".to_owned(),
            accent: "yellow".to_owned(),
            help_contact: "your IT service desk".to_owned(),
        }
    }
}

/// `[local_api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalApiSection {
    /// Where apps on this device reach the kiosk (loopback only).
    pub listen: SocketAddr,
    /// The per-install token file.
    pub token_file: PathBuf,
    /// The longest an app may take to send a request's headers.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub header_read_timeout_seconds: u64,
    /// A connection with nothing read or written for this long is closed.
    #[serde(deserialize_with = "pivtap_protocol::duration::seconds")]
    pub idle_timeout_seconds: u64,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for LocalApiSection {
    fn default() -> Self {
        let limits = crate::local_api::local_connection_limits();
        LocalApiSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            token_file: PathBuf::from("local-api.token"),
            header_read_timeout_seconds: limits.header_read_timeout.as_secs(),
            idle_timeout_seconds: limits.idle_timeout.as_secs(),
            max_connections: limits.max_connections,
        }
    }
}

impl LocalApiSection {
    /// The local API's connection limits: every client comes from loopback, so the cap per
    /// source is the cap in all.
    #[must_use]
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections,
            ..crate::local_api::local_connection_limits()
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KioskConfigError {
    /// The file could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is not a kiosk configuration.
    #[error("{}: {message}", .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What is wrong (line, key).
        message: String,
    },
    /// A value is not allowed.
    #[error("{}: {field}: {problem}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The option.
        field: &'static str,
        /// Why.
        problem: String,
    },
}

impl KioskConfig {
    /// Reads and checks a configuration; relative paths are taken from the file's directory.
    ///
    /// # Errors
    /// [`KioskConfigError`] naming the file and the option.
    pub fn load(path: &Path) -> Result<Self, KioskConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KioskConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: KioskConfig =
            toml::from_str(&text).map_err(|error| KioskConfigError::Syntax {
                path: path.to_owned(),
                message: error.message().to_owned()
                    + &error
                        .span()
                        .map(|span| format!(" (at byte {})", span.start))
                        .unwrap_or_default(),
            })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for path in [
            &mut config.server.ca,
            &mut config.server.device_key,
            &mut config.server.device_certificate,
        ]
        .into_iter()
        .flatten()
        {
            *path = base.join(&*path);
        }
        config.local_api.token_file = base.join(&config.local_api.token_file);
        config.server.pending_sign_outs = base.join(&config.server.pending_sign_outs);
        config.validate(path)?;
        Ok(config)
    }

    /// Checks values that serde cannot.
    ///
    /// # Errors
    /// [`KioskConfigError::Invalid`].
    pub fn validate(&self, path: &Path) -> Result<(), KioskConfigError> {
        let invalid = |field, problem: &str| KioskConfigError::Invalid {
            path: path.to_owned(),
            field,
            problem: problem.to_owned(),
        };
        if !pivtap_protocol::wire::is_valid_device_id(&self.device) {
            return Err(invalid(
                "device",
                "1 to 64 letters, digits, '.', '_', ':' or '-'",
            ));
        }
        if self.server.ca.is_some() && self.server.pin_sha256.is_some() {
            return Err(invalid("server", "give ca or pin_sha256, not both"));
        }
        if self.server.device_key.is_some() != self.server.device_certificate.is_some() {
            return Err(invalid(
                "server",
                "give device_key and device_certificate together (from `pivtap kiosk enroll-device`)",
            ));
        }
        if self.session.warning_seconds > 600 {
            return Err(invalid("session.warning_seconds", "0 (never) to 600"));
        }
        if !(5..=600).contains(&self.session.pin_hold_seconds) {
            return Err(invalid("session.pin_hold_seconds", "5 to 600"));
        }
        if !(1..=60).contains(&self.server.session_check_interval_seconds) {
            return Err(invalid("server.session_check_interval_seconds", "1 to 60"));
        }
        if !(1..=300).contains(&self.server.timeout_seconds) {
            return Err(invalid("server.timeout_seconds", "1 to 300"));
        }
        if !(1..=3600).contains(&self.local_api.header_read_timeout_seconds) {
            return Err(invalid(
                "local_api.header_read_timeout_seconds",
                "1 to 3600",
            ));
        }
        if !(1..=3600).contains(&self.local_api.idle_timeout_seconds) {
            return Err(invalid("local_api.idle_timeout_seconds", "1 to 3600"));
        }
        if !(1..=100_000).contains(&self.local_api.max_connections) {
            return Err(invalid("local_api.max_connections", "1 to 100000"));
        }
        if let Err(error) = self.admin.exit_keys.parse::<ExitKeys>() {
            return Err(invalid("admin.exit_keys", &error.to_string()));
        }
        if let Some(Err(error)) = self
            .admin
            .exit_passcode_hash
            .as_deref()
            .map(ExitPasscodeHash::parse)
        {
            return Err(invalid("admin.exit_passcode_hash", &error.to_string()));
        }
        if !self.local_api.listen.ip().is_loopback() {
            return Err(invalid(
                "local_api.listen",
                "must be a loopback address: the session API is for apps on this device only",
            ));
        }
        Ok(())
    }

    /// The device's own credential, when `[server] device_key` and `device_certificate`
    /// name it; it must name this configuration's `device`.
    ///
    /// # Errors
    /// [`KioskConfigError::Invalid`] naming what is wrong with the files.
    pub fn device_credential(&self) -> Result<Option<DeviceCredential>, KioskConfigError> {
        let (Some(key), Some(certificate)) =
            (&self.server.device_key, &self.server.device_certificate)
        else {
            return Ok(None);
        };
        let invalid = |problem: String| KioskConfigError::Invalid {
            path: key.clone(),
            field: "server.device_key",
            problem,
        };
        let credential =
            DeviceCredential::load(key, certificate).map_err(|error| invalid(error.to_string()))?;
        if credential.device() != self.device {
            return Err(invalid(format!(
                "the device certificate names device {}, but this kiosk is {}",
                credential.device(),
                self.device
            )));
        }
        Ok(Some(credential))
    }

    /// The key sequence of the administrator's exit (checked by [`KioskConfig::validate`]).
    #[must_use]
    pub fn exit_keys(&self) -> ExitKeys {
        self.admin.exit_keys.parse().unwrap_or_default()
    }

    /// The exit passcode's hash, when one is set (checked by [`KioskConfig::validate`]).
    #[must_use]
    pub fn exit_passcode_hash(&self) -> Option<ExitPasscodeHash> {
        self.admin
            .exit_passcode_hash
            .as_deref()
            .and_then(|text| ExitPasscodeHash::parse(text).ok())
    }

    /// The core's settings.
    #[must_use]
    pub fn core(&self) -> CoreConfig {
        let (removal, idle) = SessionSection::defaults_for(self.flow);
        let idle = self.session.idle_timeout_seconds.unwrap_or(idle);
        CoreConfig {
            flow: self.flow,
            session: SessionPolicy {
                sign_out_on_removal: self.session.sign_out_on_removal.unwrap_or(removal),
                idle_timeout: (idle > 0).then(|| Duration::from_secs(idle)),
                fast_user_switch: self.session.fast_user_switch,
                warning_lead: Duration::from_secs(self.session.warning_seconds),
            },
            pin_hold_timeout: Duration::from_secs(self.session.pin_hold_seconds),
            help_contact: self.branding.help_contact.clone(),
            ..CoreConfig::default()
        }
    }
}

/// `kiosk.toml`'s text with `[admin] exit_passcode_hash` set to `hash`: the key is replaced
/// where it is, or added under `[admin]` (made at the end if missing); every other line stays
/// as it was.
#[must_use]
pub fn with_exit_passcode_hash(text: &str, hash: &ExitPasscodeHash) -> String {
    let line = format!("exit_passcode_hash = '{}'", hash.as_str());
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let is_header = |l: &str| l.trim_start().starts_with('[');
    let admin = lines
        .iter()
        .position(|l| l.replace([' ', '\t'], "").starts_with("[admin]"));
    match admin {
        Some(start) => {
            let end = lines[start + 1..]
                .iter()
                .position(|l| is_header(l))
                .map_or(lines.len(), |offset| start + 1 + offset);
            let existing = lines[start + 1..end].iter().position(|l| {
                l.trim_start()
                    .strip_prefix("exit_passcode_hash")
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
            match existing {
                Some(offset) => lines[start + 1 + offset] = line,
                None => lines.insert(start + 1, line),
            }
        }
        None => {
            if lines.last().is_some_and(|l| !l.trim().is_empty()) {
                lines.push(String::new());
            }
            lines.push("[admin]".to_owned());
            lines.push(line);
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<KioskConfig, KioskConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiosk.toml");
        std::fs::write(&path, text).unwrap();
        KioskConfig::load(&path)
    }

    #[tokio::test]
    async fn the_device_credential_is_read_and_must_name_this_device() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ca/test-ca.pem");
        let server =
            pivtap_server::server::embedded::EmbeddedServer::start(dir.path(), vec![ca], &[])
                .await
                .unwrap();
        server
            .register_device_files("kiosk-07", &dir.path().join("device"))
            .await
            .unwrap();
        let path = dir.path().join("kiosk.toml");
        let text = |device: &str| {
            format!(
                "device = \"{device}\"\n[server]\nurl = \"{}\"\ndevice_key = \"device/device.key\"\n\
                 device_certificate = \"device/device.crt\"\n",
                server.origin
            )
        };
        std::fs::write(&path, text("kiosk-07")).unwrap();
        let credential = KioskConfig::load(&path)
            .unwrap()
            .device_credential()
            .unwrap()
            .expect("a credential");
        assert_eq!(credential.device(), "kiosk-07");
        std::fs::write(&path, text("kiosk-08")).unwrap();
        match KioskConfig::load(&path).unwrap().device_credential() {
            Err(KioskConfigError::Invalid { problem, .. }) => {
                assert!(problem.contains("kiosk-07"), "{problem}");
            }
            other => panic!("another device's credential: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_relative_paths() {
        let config = load("device = \"kiosk-07\"\n[server]\nurl = \"https://auth.example.com\"\nca = \"tls.crt\"\n").unwrap();
        assert_eq!(config.flow, Flow::TapThenPin);
        assert!(config.server.ca.as_ref().unwrap().is_absolute());
        assert_eq!(
            config.local_api.listen,
            SocketAddr::from(([127, 0, 0, 1], 7420))
        );
        let core = config.core();
        assert!(core.session.sign_out_on_removal);
        assert_eq!(core.session.idle_timeout, Some(Duration::from_secs(900)));
        assert_eq!(core.pin_hold_timeout, Duration::from_secs(30));
        assert_eq!(core.help_contact, "your IT service desk");
        assert_eq!(config.server.session_check_interval_seconds, 5);
        assert!(config.server.pending_sign_outs.is_absolute());
        assert!(
            config
                .server
                .pending_sign_outs
                .ends_with("pending-sign-outs.json")
        );
    }

    #[test]
    fn the_session_check_interval_is_one_to_sixty_seconds() {
        let base =
            "device = \"k\"\n[server]\nurl = \"https://a\"\npending_sign_outs = \"state/p.json\"\n";
        let config = load(&format!("{base}session_check_interval_seconds = \"1m\"\n")).unwrap();
        assert_eq!(config.server.session_check_interval_seconds, 60);
        assert!(config.server.pending_sign_outs.ends_with("state/p.json"));
        for bad in ["0", "61"] {
            match load(&format!("{base}session_check_interval_seconds = {bad}\n")) {
                Err(KioskConfigError::Invalid { field, .. }) => {
                    assert_eq!(field, "server.session_check_interval_seconds");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn each_flow_has_its_own_session_defaults_and_explicit_settings_win() {
        let base = "device = \"k\"\nflow = \"pin_then_tap\"\n[server]\nurl = \"https://a\"\n";
        let core = load(base).unwrap().core();
        assert!(
            !core.session.sign_out_on_removal,
            "a brief NFC tap must not end the session it starts"
        );
        assert_eq!(core.session.idle_timeout, Some(Duration::from_secs(300)));
        let explicit = format!(
            "{base}[session]\nsign_out_on_removal = true\nidle_timeout_seconds = 0\npin_hold_seconds = 45\n"
        );
        let core = load(&explicit).unwrap().core();
        assert!(core.session.sign_out_on_removal);
        assert_eq!(core.session.idle_timeout, None);
        assert_eq!(core.pin_hold_timeout, Duration::from_secs(45));
        let desk = "device = \"k\"\n[server]\nurl = \"https://a\"\n[session]\nsign_out_on_removal = false\n";
        assert!(!load(desk).unwrap().core().session.sign_out_on_removal);
        match load(&format!("{base}[session]\npin_hold_seconds = 2\n")) {
            Err(KioskConfigError::Invalid { field, .. }) => {
                assert_eq!(field, "session.pin_hold_seconds");
            }
            other => panic!("a 2 s hold: {other:?}"),
        }
    }

    #[test]
    fn setting_the_exit_passcode_hash_keeps_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiosk.toml");
        let first = ExitPasscodeHash::new("first passcode").unwrap();
        let second = ExitPasscodeHash::new("second passcode").unwrap();
        let base = "# the kiosk\ndevice = \"k\"\n\n[server]\nurl = \"https://a\"  # here\n";
        let added = with_exit_passcode_hash(base, &first);
        assert!(added.starts_with(base), "{added}");
        std::fs::write(&path, &added).unwrap();
        let config = KioskConfig::load(&path).unwrap();
        assert!(
            config
                .exit_passcode_hash()
                .unwrap()
                .verify("first passcode")
        );

        // An [admin] section in the middle: the key is replaced there, nothing else moves.
        let middle = format!(
            "{base}[admin]\nexit_keys = \"f10 f10\"\nexit_passcode_hash = '{}'\n\n[readers]\nname_contains = \"ACR\"\n",
            first.as_str()
        );
        let replaced = with_exit_passcode_hash(&middle, &second);
        assert_eq!(replaced, middle.replace(first.as_str(), second.as_str()));
        std::fs::write(&path, &replaced).unwrap();
        let config = KioskConfig::load(&path).unwrap();
        assert!(
            config
                .exit_passcode_hash()
                .unwrap()
                .verify("second passcode")
        );
        assert_eq!(config.exit_keys().to_string(), "f10 f10");
        assert_eq!(config.readers.name_contains, "ACR");

        // An [admin] section without the key gets it.
        let without = format!("{base}[admin]\nexit_keys = \"f10 f10\"\n");
        std::fs::write(&path, with_exit_passcode_hash(&without, &first)).unwrap();
        let config = KioskConfig::load(&path).unwrap();
        assert!(
            config
                .exit_passcode_hash()
                .unwrap()
                .verify("first passcode")
        );
    }

    #[test]
    fn the_admin_section_names_the_exit_keys_and_passcode_hash() {
        let base = "device = \"k\"\n[server]\nurl = \"https://a\"\n";
        let config = load(base).unwrap();
        assert_eq!(config.exit_keys(), ExitKeys::default());
        assert!(config.exit_passcode_hash().is_none());
        let hash = ExitPasscodeHash::new("a long passcode").unwrap();
        let text = format!(
            "{base}[admin]\nexit_keys = \"f10 f10 f10\"\nexit_passcode_hash = {:?}\n",
            hash.as_str()
        );
        let config = load(&text).unwrap();
        assert_eq!(config.exit_keys().to_string(), "f10 f10 f10");
        assert!(
            config
                .exit_passcode_hash()
                .unwrap()
                .verify("a long passcode")
        );
    }

    #[test]
    fn every_section_and_the_checks() {
        let full = "device = \"k1\"\nflow = \"pin_then_tap\"\n[server]\nurl = \"https://a\"\npin_sha256 = \"sha256//x\"\ntimeout_seconds = 5\n[session]\nsign_out_on_removal = false\nidle_timeout_seconds = 0\nfast_user_switch = false\n[readers]\nname_contains = \"ACR\"\ncontactless_only = true\n[branding]\norganisation = \"Example\"\nprimary = \"green\"\naccent = \"#ff8800\"\nhelp_contact = \"Site office\"\n[local_api]\nlisten = \"127.0.0.1:7500\"\ntoken_file = \"t\"\n";
        let config = load(full).unwrap();
        assert_eq!(config.flow, Flow::PinThenTap);
        assert_eq!(config.core().session.idle_timeout, None);
        assert!(config.readers.contactless_only);
        for (text, field) in [
            (
                "device = \"bad id\"\n[server]\nurl = \"https://a\"\n",
                "device",
            ),
            (
                "device = \"k\"\n[server]\nurl = \"https://a\"\nca = \"x\"\npin_sha256 = \"y\"\n",
                "server",
            ),
            (
                "device = \"k\"\n[server]\nurl = \"https://a\"\n[local_api]\nlisten = \"0.0.0.0:7420\"\n",
                "local_api.listen",
            ),
            (
                "device = \"k\"\n[server]\nurl = \"https://a\"\n[local_api]\nheader_read_timeout_seconds = 0\n",
                "local_api.header_read_timeout_seconds",
            ),
            (
                "device = \"k\"\n[server]\nurl = \"https://a\"\n[local_api]\nmax_connections = 0\n",
                "local_api.max_connections",
            ),
            (
                "device = \"k\"\n[server]\nurl = \"https://a\"\n[admin]\nexit_keys = \"q\"\n",
                "admin.exit_keys",
            ),
            (
                "device = \"k\"\n[server]\nurl = \"https://a\"\n[admin]\nexit_passcode_hash = \"secret\"\n",
                "admin.exit_passcode_hash",
            ),
        ] {
            match load(text) {
                Err(KioskConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        match load("device = \"k\"\n[server]\nurl = \"https://a\"\ndevice_key = \"k.pem\"\n") {
            Err(KioskConfigError::Invalid { field, .. }) => assert_eq!(field, "server"),
            other => panic!("a device key without its certificate: {other:?}"),
        }
        assert!(matches!(
            load("device = \"k\"\n[server]\nurl = 1\n"),
            Err(KioskConfigError::Syntax { .. })
        ));
        assert!(matches!(
            load("device = \"k\"\nbogus = 1\n[server]\nurl = \"https://a\"\n"),
            Err(KioskConfigError::Syntax { .. })
        ));
    }
}
