//! A device's own credential: a P-256 key generated on the device (it never leaves it), the certificate the server's issuing CA made for it, and the device proof it signs its challenge requests with.
//!
//! The credential is kept as two files, both `0600`, written crash-safely:
//! `device.key` (PKCS#8 PEM) and `device.crt` (PEM). A proof is a compact JWS,
//! `{"alg":"ES256","typ":"pivtap-device+jwt","kid":"<device>"}` over
//! `{"aud","device","iat","jti"}`; the server checks it with the certificate it
//! registered for the device.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use pivtap_protocol::certificate::{CertificateFacts, pem};
use pivtap_protocol::jose::base64url_encode;
use pivtap_protocol::wire::{DEVICE_PROOF_TYPE, DeviceProofClaims, DeviceProofHeader};

/// The key file of a credential directory.
pub const KEY_FILE: &str = "device.key";
/// The certificate file of a credential directory.
pub const CERTIFICATE_FILE: &str = "device.crt";

/// Why a device credential cannot be made, read or written. Never holds key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceCredentialError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The key file can be read or written by others than its owner.
    #[error("{} is open to other users (mode {mode:o}); make it 0600 (chmod 600)", path.display())]
    KeyFileOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key is not a P-256 PKCS#8 PEM private key.
    #[error("the device key is not a P-256 private key (PKCS#8 PEM)")]
    Key,
    /// The certificate is not a pivtap device certificate.
    #[error("the device certificate is not a pivtap device certificate")]
    Certificate,
    /// The key is not the certificate's.
    #[error("the device key does not belong to the device certificate")]
    Mismatch,
    /// A new key could not be made.
    #[error("cannot generate the device key")]
    Generate,
}

/// A device key and its certificate, ready to sign proofs.
pub struct DeviceCredential {
    device: String,
    key: EcdsaKeyPair,
    certificate: Vec<u8>,
    not_after: OffsetDateTime,
}

impl fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCredential")
            .field("device", &self.device)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A freshly generated device key and a CSR for it.
#[cfg(feature = "enroll")]
pub struct NewDeviceKey {
    /// The key, PKCS#8 PEM.
    pub key_pem: Zeroizing<String>,
    /// A PKCS#10 request for it, DER.
    pub csr_der: Vec<u8>,
}

#[cfg(feature = "enroll")]
impl fmt::Debug for NewDeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewDeviceKey").finish_non_exhaustive()
    }
}

#[cfg(feature = "enroll")]
impl NewDeviceKey {
    /// A new P-256 key and its CSR (the server takes only the public key from it).
    ///
    /// # Errors
    /// [`DeviceCredentialError::Generate`].
    pub fn generate() -> Result<Self, DeviceCredentialError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|_| DeviceCredentialError::Generate)?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .map_err(|_| DeviceCredentialError::Generate)?;
        Ok(NewDeviceKey {
            key_pem: Zeroizing::new(key.serialize_pem()),
            csr_der: csr.der().to_vec(),
        })
    }
}

impl DeviceCredential {
    /// A credential from its key (PKCS#8 PEM) and certificate (DER).
    ///
    /// # Errors
    /// [`DeviceCredentialError::Key`], [`DeviceCredentialError::Certificate`] or
    /// [`DeviceCredentialError::Mismatch`].
    pub fn from_parts(
        key_pem: &str,
        certificate_der: &[u8],
    ) -> Result<Self, DeviceCredentialError> {
        let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| DeviceCredentialError::Key)?;
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.secret_pkcs8_der())
                .map_err(|_| DeviceCredentialError::Key)?;
        let (facts, public_key) = CertificateFacts::with_public_key(certificate_der)
            .map_err(|_| DeviceCredentialError::Certificate)?;
        let device = facts.device.ok_or(DeviceCredentialError::Certificate)?;
        if key.public_key().as_ref() != public_key.as_slice() {
            return Err(DeviceCredentialError::Mismatch);
        }
        Ok(DeviceCredential {
            device,
            key,
            certificate: certificate_der.to_vec(),
            not_after: facts.not_after,
        })
    }

    /// Reads a credential from its key file (which only its owner may read or write)
    /// and certificate file (PEM).
    ///
    /// # Errors
    /// [`DeviceCredentialError`].
    pub fn load(key: &Path, certificate: &Path) -> Result<Self, DeviceCredentialError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| DeviceCredentialError::Read {
                path: path.to_owned(),
                source,
            })
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(key)
                .map_err(|source| DeviceCredentialError::Read {
                    path: key.to_owned(),
                    source,
                })?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(DeviceCredentialError::KeyFileOpen {
                    path: key.to_owned(),
                    mode,
                });
            }
        }
        let key_pem = Zeroizing::new(read(key)?);
        let key_pem = std::str::from_utf8(&key_pem).map_err(|_| DeviceCredentialError::Key)?;
        let certificate = CertificateDer::from_pem_slice(&read(certificate)?)
            .map_err(|_| DeviceCredentialError::Certificate)?;
        Self::from_parts(key_pem, certificate.as_ref())
    }

    /// Reads the credential in `dir` ([`KEY_FILE`], [`CERTIFICATE_FILE`]).
    ///
    /// # Errors
    /// [`DeviceCredentialError`].
    pub fn load_dir(dir: &Path) -> Result<Self, DeviceCredentialError> {
        Self::load(&dir.join(KEY_FILE), &dir.join(CERTIFICATE_FILE))
    }

    /// Writes a key (PEM) and its certificate (DER, written as PEM) as `key` and
    /// `certificate`, each `0600` and crash-safe, after checking that they belong together.
    ///
    /// # Errors
    /// [`DeviceCredentialError`].
    pub fn save(
        key_pem: &str,
        certificate_der: &[u8],
        key: &Path,
        certificate: &Path,
    ) -> Result<Self, DeviceCredentialError> {
        let credential = Self::from_parts(key_pem, certificate_der)?;
        let write = |path: &Path, contents: &[u8]| {
            pivtap_files::write_atomically(path, contents, pivtap_files::PRIVATE_FILE_MODE).map_err(
                |source| DeviceCredentialError::Write {
                    path: path.to_owned(),
                    source,
                },
            )
        };
        write(key, key_pem.as_bytes())?;
        write(certificate, pem("CERTIFICATE", certificate_der).as_bytes())?;
        Ok(credential)
    }

    /// The device id the certificate names.
    #[must_use]
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The certificate, DER.
    #[must_use]
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    /// When the certificate expires.
    #[must_use]
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A fresh device proof for the server `aud` (its origin), signed now.
    #[must_use]
    pub fn proof(&self, aud: &str, now: OffsetDateTime) -> String {
        let header = DeviceProofHeader {
            alg: "ES256".to_owned(),
            typ: DEVICE_PROOF_TYPE.to_owned(),
            kid: self.device.clone(),
        };
        let claims = DeviceProofClaims {
            aud: aud.to_owned(),
            device: self.device.clone(),
            iat: now.unix_timestamp(),
            jti: pivtap_protocol::nonce::random_base64url::<16>(),
        };
        let input = format!(
            "{}.{}",
            base64url_encode(serde_json::to_vec(&header).unwrap_or_default()),
            base64url_encode(serde_json::to_vec(&claims).unwrap_or_default())
        );
        // Signing with a valid key and the system's random source does not fail; an
        // empty signature would only be refused by the server.
        let signature = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map(|signature| signature.as_ref().to_vec())
            .unwrap_or_default();
        format!("{input}.{}", base64url_encode(signature))
    }
}
