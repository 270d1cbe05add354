//! `pivtap kiosk`: the shared-device app, with its terminal UI or headless.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use pivtap_client::device::DeviceCredential;
use pivtap_kiosk::admin_exit::ExitPasscodeHash;
use pivtap_kiosk::builder::{FaceChoice, KioskBuilder};
use pivtap_kiosk::config::{KioskConfig, with_exit_passcode_hash};

use super::auth::ServerArgs;

/// `pivtap kiosk`
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KioskArgs {
    /// The kiosk configuration (every option is documented in the README).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// No terminal UI: session events as JSON lines on stdout; PINs (and
    /// `sign-out`, `quit`) as lines on stdin. It keeps running when stdin
    /// closes: stop it with SIGTERM or SIGINT (as a service manager does).
    #[arg(long)]
    headless: bool,
    #[command(subcommand)]
    command: Option<KioskCommand>,
}

#[derive(Subcommand, Debug)]
enum KioskCommand {
    /// Give this device its own credential: a P-256 key made here (it never
    /// leaves the device) and its certificate from the server, for the one-time
    /// code of `pivtap admin devices add`. Writes DIR/device.key and
    /// DIR/device.crt (0600); kiosk.toml's [server] device_key and
    /// device_certificate name them.
    EnrollDevice {
        #[command(flatten)]
        server: ServerArgs,
        /// The device enrollment code.
        #[arg(long, env = "PIVTAP_DEVICE_CODE", hide_env_values = true)]
        code: String,
        /// The directory for device.key and device.crt (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set the passcode of the administrator's exit: asked twice without echo
    /// in a terminal, else read from PIVTAP_EXIT_PASSCODE or one line of
    /// standard input (8 to 128 characters). Its Argon2id hash is written to
    /// the configuration's [admin] exit_passcode_hash; the rest of the file
    /// is left as it is.
    SetExitPasscode {
        /// The kiosk configuration to write the hash into.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `pivtap kiosk` without a terminal for its screen (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error(
    "pivtap kiosk needs a terminal for its screen, and {0} is not one. Without a terminal, run \
     it headless: `pivtap kiosk --config FILE --headless` (session events as JSON lines on \
     stdout; stop it with SIGTERM)"
)]
pub struct NoTerminal(&'static str);

/// Runs `pivtap kiosk set-exit-passcode`.
fn set_exit_passcode(config: &Path, json: bool) -> anyhow::Result<()> {
    // The file must be a valid configuration before and after.
    KioskConfig::load(config)?;
    let passcode = super::card::SecretReader::new().read(super::card::Secret::ExitPasscode)?;
    let hash = ExitPasscodeHash::new(&passcode)?;
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let updated = with_exit_passcode_hash(&text, &hash);
    let dir = config.parent().unwrap_or(Path::new("."));
    let mut temporary = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut temporary, updated.as_bytes())?;
    if let Ok(metadata) = std::fs::metadata(config) {
        temporary
            .as_file()
            .set_permissions(metadata.permissions())?;
    }
    KioskConfig::load(temporary.path())
        .context("the updated configuration would not load; nothing was changed")?;
    temporary
        .persist(config)
        .with_context(|| format!("cannot replace {}", config.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"changed": "exit_passcode", "config": config})
        );
    } else {
        println!(
            "The exit passcode is set in {} ([admin] exit_passcode_hash). Restart the kiosk to use it.",
            config.display()
        );
    }
    Ok(())
}

/// Runs `pivtap kiosk enroll-device`.
fn enroll_device(server: &ServerArgs, code: &str, out: &Path, json: bool) -> anyhow::Result<()> {
    let client = server.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (key, certificate) = runtime
        .block_on(client.enroll_new_device(code.trim()))
        .map_err(super::auth::explain)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot make {}", out.display()))?;
    let key_path = out.join(pivtap_client::device::KEY_FILE);
    let certificate_path = out.join(pivtap_client::device::CERTIFICATE_FILE);
    let credential =
        DeviceCredential::save(&key.key_pem, &certificate, &key_path, &certificate_path)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "device": credential.device(),
                "device_key": key_path,
                "device_certificate": certificate_path,
                "not_after": super::card::rfc3339(credential.not_after()),
            })
        );
    } else {
        println!(
            "Device {} is enrolled; its certificate is valid until {}.\n\
             In kiosk.toml, under [server]:\n    device_key = {:?}\n    device_certificate = {:?}",
            credential.device(),
            super::card::rfc3339(credential.not_after()),
            key_path.display().to_string(),
            certificate_path.display().to_string()
        );
    }
    Ok(())
}

/// Runs the kiosk.
pub fn run(args: KioskArgs) -> anyhow::Result<()> {
    if let Some(KioskCommand::EnrollDevice {
        server,
        code,
        out,
        json,
    }) = &args.command
    {
        return enroll_device(server, code, out, *json);
    }
    if let Some(KioskCommand::SetExitPasscode { config, json }) = &args.command {
        return set_exit_passcode(config, *json);
    }
    let config_path = args
        .config
        .as_ref()
        .context("give --config FILE (or a subcommand such as enroll-device)")?;
    let config = KioskConfig::load(config_path)?;
    if !args.headless {
        if !std::io::stdin().is_terminal() {
            return Err(NoTerminal("standard input").into());
        }
        if !std::io::stdout().is_terminal() {
            return Err(NoTerminal("standard output").into());
        }
    }
    let face = if args.headless {
        FaceChoice::Headless { read_stdin: true }
    } else {
        KioskBuilder::terminal_face(&config)
    };
    let kiosk = KioskBuilder::from_config(&config)?
        .face(face)
        .quit_on_signals();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(kiosk.run())?)
}
