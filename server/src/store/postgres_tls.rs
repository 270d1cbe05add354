//! TLS to PostgreSQL on rustls: the driver's connector, checking the database's certificate as the URL's `sslmode` says.
//!
//! `tokio-postgres` asks for a [`MakeTlsConnect`]; [`PostgresTls`] is one over
//! `tokio-rustls`, with the workspace's rustls and its one crypto provider (aws-lc-rs).
//! The CAs come from the URL's `sslrootcert` file (PEM); without one, from the system's
//! trust store (`rustls-native-certs`: `/etc/ssl/certs` on Debian), as libpq's
//! `sslrootcert=system` does.
//!
//! - `verify-full`: the certificate chains to those CAs and names the host (a DNS name,
//!   or an IP address in an IP subject alternative name).
//! - `verify-ca`: it chains to those CAs; the name is not checked.
//! - `require`: any certificate; the connection is encrypted, nothing more.
//!
//! The handshake's signatures are checked in every mode. SCRAM channel binding
//! (`tls-server-end-point`, RFC 5929) is offered, so a server asking for
//! `SCRAM-SHA-256-PLUS` gets it.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::url::SslMode;

/// Why the TLS settings for PostgreSQL could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresTlsError {
    /// The `sslrootcert` file cannot be read.
    #[error("cannot read sslrootcert {}", path.display())]
    ReadRoots {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The `sslrootcert` file holds no usable PEM certificate.
    #[error("sslrootcert {} holds no usable PEM CA certificate", path.display())]
    NoRoots {
        /// The file.
        path: PathBuf,
    },
    /// Without `sslrootcert`, the system's trust store had no certificate.
    #[error(
        "no sslrootcert is given and the system trust store holds no CA certificate: \
         add ?sslrootcert=/path/to/ca.crt to the store URL"
    )]
    NoSystemRoots,
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    /// The host cannot be a TLS server name.
    #[error("{host:?} cannot be checked as a TLS server name")]
    ServerName {
        /// The host.
        host: String,
    },
}

/// The driver's TLS connector for one store URL's `sslmode` and CAs. Cheap to clone.
#[derive(Clone)]
pub struct PostgresTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for PostgresTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTls").finish_non_exhaustive()
    }
}

impl PostgresTls {
    /// The connector checking certificates as `mode` says, against the CAs in
    /// `root_cert` (PEM) or, when `None`, the system's. `mode` is not
    /// [`SslMode::Disable`] (then no connector is needed; it is treated as `require`).
    ///
    /// # Errors
    /// [`PostgresTlsError`]: unreadable or empty CA files, rustls refusing the settings.
    pub fn new(mode: SslMode, root_cert: Option<&Path>) -> Result<Self, PostgresTlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            SslMode::VerifyFull | SslMode::VerifyCa => {
                let roots = Arc::new(roots(root_cert)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|error| {
                        PostgresTlsError::Rustls(rustls::Error::General(error.to_string()))
                    })?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(AnyName(webpki))
                }
            }
            SslMode::Require | SslMode::Disable => Arc::new(AnyCertificate(provider)),
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(PostgresTls {
            config: Arc::new(config),
        })
    }
}

/// The CAs of `path` (PEM), or the system's.
fn roots(path: Option<&Path>) -> Result<RootCertStore, PostgresTlsError> {
    let mut store = RootCertStore::empty();
    match path {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| PostgresTlsError::ReadRoots {
                path: path.to_owned(),
                source,
            })?;
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|_| PostgresTlsError::NoRoots {
                    path: path.to_owned(),
                })?;
            let (added, _) = store.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(PostgresTlsError::NoRoots {
                    path: path.to_owned(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "a system CA certificate could not be read");
            }
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(PostgresTlsError::NoSystemRoots);
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last: a name error means the chain
        // was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`: any certificate; the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type TlsConnect = PostgresTlsConnect;
    type Error = PostgresTlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<PostgresTlsConnect, PostgresTlsError> {
        let name =
            ServerName::try_from(host.to_owned()).map_err(|_| PostgresTlsError::ServerName {
                host: host.to_owned(),
            })?;
        Ok(PostgresTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One connection's handshake.
pub struct PostgresTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PostgresTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PostgresTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.connector.connect(self.name, stream).await?;
            Ok(PostgresTlsStream(stream))
        })
    }
}

/// An encrypted connection to PostgreSQL.
pub struct PostgresTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(context, buffer)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(context)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PostgresTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, connection) = self.0.get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|certificate| server_end_point(certificate))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929's `tls-server-end-point`: the certificate's hash, by the hash of its
/// signature (SHA-256 for MD5, SHA-1 and SHA-256); `None` for other signatures (Ed25519).
fn server_end_point(certificate: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use sha2::Digest as _;
    use x509_parser::oid_registry as oids;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let algorithm = &parsed.signature_algorithm.algorithm;
    let sha256 = [
        oids::OID_PKCS1_MD5WITHRSAENC,
        oids::OID_PKCS1_SHA1WITHRSA,
        oids::OID_PKCS1_SHA256WITHRSA,
        oids::OID_SIG_ECDSA_WITH_SHA256,
    ];
    let sha384 = [
        oids::OID_PKCS1_SHA384WITHRSA,
        oids::OID_SIG_ECDSA_WITH_SHA384,
    ];
    let sha512 = [
        oids::OID_PKCS1_SHA512WITHRSA,
        oids::OID_SIG_ECDSA_WITH_SHA512,
    ];
    if sha256.contains(algorithm) {
        Some(sha2::Sha256::digest(certificate).to_vec())
    } else if sha384.contains(algorithm) {
        Some(sha2::Sha384::digest(certificate).to_vec())
    } else if sha512.contains(algorithm) {
        Some(sha2::Sha512::digest(certificate).to_vec())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    //! Against the test cluster (`testkit::postgres`): its certificate names 127.0.0.1 and
    //! localhost and chains to the CA in its URL's `sslrootcert`.

    use super::*;
    use crate::store::url::{PostgresHost, PostgresUrl, StorePassword, StoreUrl};

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// The test cluster's URL and password; fails saying how to start it when unset.
    fn cluster() -> (PostgresUrl, StorePassword) {
        let (url, password) = pivtap_testkit::postgres::test_database();
        let Ok(StoreUrl::Postgres(url)) = StoreUrl::parse(&url) else {
            panic!("the test cluster's URL {url} is not a PostgreSQL store URL");
        };
        (url, StorePassword::new(password.expose().to_owned()))
    }

    /// Connects with `config` and `tls`; answers whether the session is encrypted.
    async fn encrypted(
        config: &tokio_postgres::Config,
        tls: PostgresTls,
    ) -> Result<bool, BoxError> {
        let (client, connection) = config.connect(tls).await?;
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The whole chain of `error`'s messages.
    fn chain(error: &BoxError) -> String {
        crate::check::error_chain(error.as_ref())
    }

    #[tokio::test]
    async fn verify_full_connects_to_the_cluster_over_tls() -> Result<(), BoxError> {
        let (url, password) = cluster();
        assert_eq!(url.ssl_mode, SslMode::VerifyFull);
        let tls = PostgresTls::new(url.ssl_mode, url.ssl_root_cert.as_deref())?;
        assert!(encrypted(&url.driver_config(Some(&password)), tls).await?);
        // By name too: the certificate names localhost.
        let by_name = PostgresUrl {
            host: PostgresHost::Tcp("localhost".to_owned()),
            ..url.clone()
        }
        .driver_config(Some(&password));
        let tls = PostgresTls::new(SslMode::VerifyFull, url.ssl_root_cert.as_deref())?;
        assert!(encrypted(&by_name, tls).await?);
        Ok(())
    }

    #[tokio::test]
    async fn another_ca_is_refused_unless_only_encryption_is_asked_for() -> Result<(), BoxError> {
        let (url, password) = cluster();
        let config = url.driver_config(Some(&password));
        let other_ca = pivtap_testkit::test_ca();
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
            let tls = PostgresTls::new(mode, Some(&other_ca))?;
            let error = encrypted(&config, tls).await.expect_err("another CA");
            let message = chain(&error);
            assert!(
                message.contains("invalid peer certificate"),
                "{mode}: {message}"
            );
            assert!(message.contains("UnknownIssuer"), "{mode}: {message}");
            assert!(!message.contains(password.expose()), "{message}");
        }
        let tls = PostgresTls::new(SslMode::Require, Some(&other_ca))?;
        assert!(encrypted(&config, tls).await?, "require only encrypts");
        Ok(())
    }

    #[tokio::test]
    async fn a_wrong_host_name_is_refused_by_verify_full_only() -> Result<(), BoxError> {
        let (url, password) = cluster();
        // Reach the cluster's address under a name its certificate does not hold.
        let mut config = PostgresUrl {
            host: PostgresHost::Tcp("db.wrong.example".to_owned()),
            ..url.clone()
        }
        .driver_config(Some(&password));
        config.hostaddr(std::net::Ipv4Addr::LOCALHOST.into());
        let roots = url.ssl_root_cert.as_deref();
        let error = encrypted(&config, PostgresTls::new(SslMode::VerifyFull, roots)?)
            .await
            .expect_err("a name the certificate does not hold");
        let message = chain(&error);
        assert!(
            message.contains("certificate not valid for name \"db.wrong.example\""),
            "{message}"
        );
        assert!(encrypted(&config, PostgresTls::new(SslMode::VerifyCa, roots)?).await?);
        Ok(())
    }

    #[test]
    fn unreadable_or_empty_ca_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.crt");
        assert!(matches!(
            PostgresTls::new(SslMode::VerifyFull, Some(&missing)),
            Err(PostgresTlsError::ReadRoots { .. })
        ));
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = PostgresTls::new(SslMode::VerifyCa, Some(&empty)).unwrap_err();
        assert!(matches!(error, PostgresTlsError::NoRoots { .. }), "{error}");
        // `require` checks no certificate, so it needs no CA file.
        assert!(PostgresTls::new(SslMode::Require, Some(&missing)).is_ok());
    }

    #[test]
    fn channel_binding_hashes_the_certificate_by_its_signature() {
        let pem = std::fs::read(pivtap_testkit::test_ca()).unwrap();
        let certificate = CertificateDer::from_pem_slice(&pem).unwrap();
        let bound = server_end_point(&certificate).expect("an ECDSA or RSA signature");
        assert!([32, 48, 64].contains(&bound.len()), "{}", bound.len());
    }
}
