//! An embedded server for demos and tests: initialised in a directory, trusting given CAs, serving HTTPS on a free loopback port, with users added directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Listener, ServerState, from_config, serve_with_handle};
use crate::config::ServerConfig;
use crate::init::{InitOptions, init_server};
use crate::store::User;
use pivtap_client::client::{Client, ClientError, ServerTrust};
use pivtap_client::device::DeviceCredential;

/// A running embedded server.
pub struct EmbeddedServer {
    /// `https://127.0.0.1:PORT`: the origin assertions must name.
    pub origin: String,
    /// The server's self-signed TLS certificate (clients trust it directly).
    pub certificate: PathBuf,
    /// The admin credential file.
    pub admin_token: PathBuf,
    /// The issuing CA's certificate (PEM), which enrolled cards chain to.
    pub ca_certificate: PathBuf,
    /// The server's state (its store, to add users).
    pub state: ServerState,
    listener: Listener,
    handle: axum_server::Handle<SocketAddr>,
}

/// Why the embedded server did not start.
#[derive(Debug, thiserror::Error)]
#[error("the embedded server did not start: {reason}")]
pub struct EmbeddedError {
    reason: String,
}

fn failed(reason: impl std::fmt::Display) -> EmbeddedError {
    EmbeddedError {
        reason: reason.to_string(),
    }
}

impl EmbeddedServer {
    /// Initialises a server in `dir` trusting the CA certificates in
    /// `trust` (PEM files), adds `users`, and serves it on a free loopback
    /// port until dropped.
    ///
    /// # Errors
    /// [`EmbeddedError`] saying what failed.
    pub async fn start(
        dir: &Path,
        trust: Vec<PathBuf>,
        users: &[User],
    ) -> Result<Self, EmbeddedError> {
        // The origin must name the port, so the port is chosen first; another
        // process could take it in between, so a taken port is tried again.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(failed)?
                .port();
            let listen = SocketAddr::from(([127, 0, 0, 1], port));
            let server_dir = dir.join(format!("server-{port}"));
            let report = init_server(
                &server_dir,
                &InitOptions {
                    trust: trust.clone(),
                    listen,
                    ..InitOptions::default()
                },
            )
            .map_err(failed)?;
            let mut config = ServerConfig::load(&report.config_path).map_err(failed)?;
            config.origin = format!("https://127.0.0.1:{port}");
            config.validate(&report.config_path).map_err(failed)?;
            let (state, listener) = from_config(&config).await.map_err(failed)?;
            for user in users {
                state.store().add_user(user).await.map_err(failed)?;
            }
            if let Some(handle) = serve_in_background(&state, &listener).await {
                return Ok(EmbeddedServer {
                    origin: config.origin,
                    certificate: report.certificate_path,
                    admin_token: report.admin_token_path,
                    ca_certificate: report.ca_certificate_path,
                    state,
                    listener,
                    handle,
                });
            }
        }
        Err(failed("no free loopback port after 5 tries"))
    }

    /// A client that trusts this server.
    ///
    /// # Errors
    /// [`ClientError::Config`] when the certificate cannot be read.
    pub fn client(&self, timeout: Duration) -> Result<Client, ClientError> {
        Client::new(
            &self.origin,
            ServerTrust::from_pem_file(&self.certificate)?,
            timeout,
        )
    }

    /// Registers and enrolls device `id` (as an admin and the device would), and answers
    /// its credential. The demo and tests register their devices here, in one place.
    ///
    /// # Errors
    /// [`EmbeddedError`] when the device cannot be registered (e.g. it exists).
    pub async fn register_device(&self, id: &str) -> Result<Arc<DeviceCredential>, EmbeddedError> {
        super::devices::credential_locally(&self.state, id)
            .await
            .map(Arc::new)
            .map_err(|error| failed(format!("cannot register device {id}: {}", error.message)))
    }

    /// [`register_device`](Self::register_device), with the key and certificate written
    /// (0600) as `dir/device.key` and `dir/device.crt`; answers the two paths.
    ///
    /// # Errors
    /// [`EmbeddedError`].
    pub async fn register_device_files(
        &self,
        id: &str,
        dir: &Path,
    ) -> Result<(PathBuf, PathBuf), EmbeddedError> {
        let (key_pem, der) = super::devices::enroll_locally(&self.state, id)
            .await
            .map_err(|error| failed(format!("cannot register device {id}: {}", error.message)))?;
        std::fs::create_dir_all(dir).map_err(failed)?;
        let key = dir.join(pivtap_client::device::KEY_FILE);
        let certificate = dir.join(pivtap_client::device::CERTIFICATE_FILE);
        DeviceCredential::save(&key_pem, &der, &key, &certificate).map_err(failed)?;
        Ok((key, certificate))
    }

    /// A client that trusts this server and signs its challenge requests as device `id`,
    /// which it registers first.
    ///
    /// # Errors
    /// [`EmbeddedError`].
    pub async fn device_client(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Client, EmbeddedError> {
        let credential = self.register_device(id).await?;
        Ok(self
            .client(timeout)
            .map_err(failed)?
            .with_device_credential(credential))
    }

    /// Stops serving (also on drop).
    pub fn stop(&self) {
        self.handle.graceful_shutdown(Some(Duration::from_secs(1)));
    }

    /// Serves again after [`stop`](Self::stop), as a restarted server would: the same
    /// port, origin, TLS certificate, token keys and database, so clients that knew the
    /// server reach it again. Stops the current serving first if it is still running.
    ///
    /// # Errors
    /// [`EmbeddedError`] when the port stays taken for 5 s (e.g. another process took it).
    pub async fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.stop();
        // The stopped server lets go of its port within its 1 s grace period.
        for _ in 0..50 {
            if let Some(handle) = serve_in_background(&self.state, &self.listener).await {
                self.handle = handle;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(failed("the port was not free again within 5 s"))
    }
}

/// Serves `state` on `listener` on a task of its own; the handle once it listens, `None`
/// when it cannot bind.
async fn serve_in_background(
    state: &ServerState,
    listener: &Listener,
) -> Option<axum_server::Handle<SocketAddr>> {
    let handle = axum_server::Handle::new();
    let serving = handle.clone();
    let (served, listener) = (state.clone(), listener.clone());
    tokio::spawn(async move {
        if let Err(error) = serve_with_handle(served, listener, serving).await {
            tracing::warn!(%error, "embedded server stopped");
        }
    });
    handle.listening().await.map(|_| handle)
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_restarted_server_answers_on_the_same_origin_with_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ca/test-ca.pem");
        let mut server = EmbeddedServer::start(dir.path(), vec![ca], &[])
            .await
            .unwrap();
        let origin = server.origin.clone();
        let client = server.client(Duration::from_secs(2)).unwrap();
        let keys = client.jwks().await.unwrap();

        server.stop();
        let mut stopped = false;
        for _ in 0..30 {
            if client.jwks().await.is_err() {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stopped, "the stopped server still answers");

        server.restart().await.unwrap();
        assert_eq!(server.origin, origin);
        assert_eq!(client.jwks().await.unwrap(), keys);
    }
}
