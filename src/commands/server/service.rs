//! `pivtap server install-service`: writes the systemd units of `dist/systemd/` with this binary's path and the service user, and creates that user.
//!
//! The units are compiled into the binary, so the installer needs no source
//! tree and always writes the units of the version it belongs to. The shipped
//! files name `/usr/local/bin/pivtap` and the user `pivtap`; installing puts
//! the real path of the running binary and the chosen user in their place.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::ValueEnum;

/// The server unit as shipped.
const SERVER_UNIT: &str = include_str!("../../../dist/systemd/pivtap-server.service");
/// The kiosk unit as shipped.
const KIOSK_UNIT: &str = include_str!("../../../dist/systemd/pivtap-kiosk.service");
/// The binary path the shipped units name.
const SHIPPED_BINARY: &str = "/usr/local/bin/pivtap";
/// The user the shipped units name.
const SHIPPED_USER: &str = "pivtap";
/// Where the units keep their directories (`StateDirectory=pivtap`).
pub const STATE_DIRECTORY: &str = "/var/lib/pivtap";

/// A service pivtap ships a unit for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Service {
    /// `pivtap-server.service`: `pivtap server run`.
    Server,
    /// `pivtap-kiosk.service`: `pivtap kiosk --headless`.
    Kiosk,
}

impl Service {
    /// The unit's file name.
    #[must_use]
    pub fn unit_name(self) -> &'static str {
        match self {
            Service::Server => "pivtap-server.service",
            Service::Kiosk => "pivtap-kiosk.service",
        }
    }

    fn shipped(self) -> &'static str {
        match self {
            Service::Server => SERVER_UNIT,
            Service::Kiosk => KIOSK_UNIT,
        }
    }

    /// The directory under [`STATE_DIRECTORY`] its files go in.
    #[must_use]
    pub fn directory(self) -> &'static str {
        match self {
            Service::Server => "server",
            Service::Kiosk => "kiosk",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.unit_name())
    }
}

/// Why the units could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The user name would not be safe in a unit file or `useradd`.
    #[error(
        "{0:?} is not a usable user name: use lower-case letters, digits, '-' and '_', starting with a letter"
    )]
    BadUser(String),
    /// The binary's path has characters a unit file would misread.
    #[error("the binary's path {} has spaces or characters systemd would misread; install pivtap somewhere plain, e.g. /usr/local/bin", .0.display())]
    BadBinaryPath(PathBuf),
    /// The user is missing and could not be created.
    #[error("cannot create the system user {user}: {reason}")]
    CreateUser {
        /// The user.
        user: String,
        /// Why.
        reason: String,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// `service`'s unit for `binary` run as `user`.
pub fn render(service: Service, binary: &Path, user: &str) -> Result<String, InstallError> {
    check_user(user)?;
    let binary_text = binary
        .to_str()
        .filter(|text| {
            text.starts_with('/')
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
        })
        .ok_or_else(|| InstallError::BadBinaryPath(binary.to_owned()))?;
    let mut unit = String::with_capacity(service.shipped().len());
    for line in service.shipped().lines() {
        let line = if let Some(rest) = line.strip_prefix("ExecStart=") {
            format!(
                "ExecStart={}",
                rest.replacen(SHIPPED_BINARY, binary_text, 1)
            )
        } else if line == format!("User={SHIPPED_USER}") {
            // No Group=: the service runs with the user's primary group.
            format!("User={user}")
        } else {
            line.to_owned()
        };
        unit.push_str(&line);
        unit.push('\n');
    }
    Ok(unit)
}

/// A system user name: `[a-z_][a-z0-9_-]*`, at most 32 characters.
fn check_user(user: &str) -> Result<(), InstallError> {
    let mut chars = user.chars();
    let ok = user.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(InstallError::BadUser(user.to_owned()))
    }
}

/// Whether `user` exists (`getent passwd`).
fn user_exists(user: &str) -> bool {
    Command::new("getent")
        .args(["passwd", user])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Creates `user` as a system user (its own group, no login, home [`STATE_DIRECTORY`])
/// unless it exists; returns whether it was created.
pub fn ensure_user(user: &str) -> Result<bool, InstallError> {
    check_user(user)?;
    if user_exists(user) {
        return Ok(false);
    }
    let failed = |reason: String| InstallError::CreateUser {
        user: user.to_owned(),
        reason,
    };
    let output = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            STATE_DIRECTORY,
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "pivtap service",
            user,
        ])
        .output()
        .map_err(|error| failed(format!("cannot run useradd: {error}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(format!(
            "useradd said: {} (run as root, or create the user and pass --no-create-user)",
            stderr.trim()
        )));
    }
    Ok(true)
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The unit files written.
    pub units: Vec<PathBuf>,
    /// Whether the user was created now.
    pub created_user: bool,
}

/// Writes `services`' units for `binary` and `user` into `unit_dir` (mode 0644),
/// creating the user first when `create_user` (see [`ensure_user`]). Nothing is
/// done unless every unit renders.
pub fn install(
    services: &[Service],
    binary: &Path,
    user: &str,
    unit_dir: &Path,
    create_user: bool,
) -> Result<Installed, InstallError> {
    let units = services
        .iter()
        .map(|service| Ok((*service, render(*service, binary, user)?)))
        .collect::<Result<Vec<_>, InstallError>>()?;
    let created_user = create_user && ensure_user(user)?;
    std::fs::create_dir_all(unit_dir).map_err(|source| InstallError::Write {
        path: unit_dir.to_owned(),
        source,
    })?;
    let mut written = Vec::with_capacity(units.len());
    for (service, unit) in units {
        let path = unit_dir.join(service.unit_name());
        pivtap_files::write_atomically(&path, unit.as_bytes(), 0o644).map_err(|source| {
            InstallError::Write {
                path: path.clone(),
                source,
            }
        })?;
        written.push(path);
    }
    Ok(Installed {
        units: written,
        created_user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_puts_the_binary_and_user_in_place_and_changes_nothing_else() {
        let unit = render(
            Service::Server,
            Path::new("/opt/pivtap/bin/pivtap"),
            "badge",
        )
        .unwrap();
        assert!(unit.contains(
            "\nExecStart=/opt/pivtap/bin/pivtap server run --config /var/lib/pivtap/server/server.toml\n"
        ));
        assert!(unit.contains("\nUser=badge\n"));
        assert!(!unit.contains(SHIPPED_BINARY));
        let changed: Vec<_> = SERVER_UNIT
            .lines()
            .zip(unit.lines())
            .filter(|(shipped, rendered)| shipped != rendered)
            .collect();
        assert_eq!(changed.len(), 2, "{changed:?}");
        let kiosk = render(Service::Kiosk, Path::new("/usr/bin/pivtap"), "pivtap").unwrap();
        assert!(kiosk.contains("\nExecStart=/usr/bin/pivtap kiosk --headless --config"));
    }

    #[test]
    fn unsafe_users_and_paths_are_refused() {
        for user in ["", "Root", "a b", "x\nExecStartPre=/bin/sh", "1abc"] {
            assert!(
                matches!(
                    render(Service::Server, Path::new("/usr/bin/pivtap"), user),
                    Err(InstallError::BadUser(_))
                ),
                "{user:?}"
            );
        }
        for path in ["relative/pivtap", "/opt/my pivtap/pivtap", "/opt/%i/pivtap"] {
            assert!(
                matches!(
                    render(Service::Server, Path::new(path), "pivtap"),
                    Err(InstallError::BadBinaryPath(_))
                ),
                "{path}"
            );
        }
    }
}
