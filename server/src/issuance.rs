//! Certificate issuance: the issuing CA (made by `pivtap server init`), checking a card's CSR (self-signature, key policy), building the card certificate from the user record, and the CRL.
//!
//! The certificate never takes anything from the CSR but its public key: the
//! subject and SANs come from the user record, so a device cannot ask for
//! another user's name. Issued certificates carry:
//!
//! - subject `CN` = display name or user id (`[issuance] subject_cn`), and
//!   `serialNumber` = employee id when the user has one;
//! - SAN rfc822Name = mail, SAN otherName Microsoft UPN (1.3.6.1.4.1.311.20.2.3,
//!   UTF8String) = upn when set and `include_upn`;
//! - keyUsage digitalSignature (critical), extendedKeyUsage clientAuth and,
//!   with `smartcard_logon`, Microsoft smart card logon (1.3.6.1.4.1.311.20.2.2);
//! - basicConstraints cA=false, subject and authority key identifiers;
//! - a random positive 16-byte serial; validity from 5 minutes ago (clock skew)
//!   for `validity_days`, cut at the CA's own end.

pub mod profile;

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, OtherNameValue,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::config::{IssuanceConfig, SubjectCn};
use crate::store::{RevocationReason, RevokedCertificate, User};
use pivtap_protocol::certificate::{KeyKind, oid, spki_key_kind};
use pivtap_protocol::wire::{ErrorCode, KeyAlgorithm};

/// The common name of the issuing CA `pivtap server init` makes.
pub const CA_COMMON_NAME: &str = "pivtap issuing CA";
/// How long the issuing CA `pivtap server init` makes is valid.
pub const CA_VALIDITY_DAYS: i64 = 20 * 365;
/// Slack before "now" in `notBefore`, for verifiers whose clocks run behind.
const CLOCK_SLACK: Duration = Duration::minutes(5);
/// How long a CRL is current.
const CRL_LIFETIME: Duration = Duration::days(1);

/// Why a CSR was refused, or issuance failed. Messages never hold key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuanceError {
    /// Not a DER PKCS#10 request.
    #[error("the CSR is not a DER PKCS#10 certificate request")]
    CsrMalformed,
    /// The request's self-signature does not verify with its key.
    #[error("the CSR's signature does not verify with its public key")]
    CsrSignature,
    /// The key is not one the policy allows.
    #[error("a {key} key is not allowed here; allowed: {allowed}")]
    KeyNotAllowed {
        /// The key in the CSR.
        key: KeyKind,
        /// The allowed algorithms, comma-separated.
        allowed: String,
    },
    /// A renewal that keeps the old key.
    #[error("the new key must differ from the current certificate's key")]
    KeyReused,
    /// A user attribute cannot go into a certificate (e.g. a mail address that is not ASCII).
    #[error("the user's {attribute} cannot go into a certificate")]
    UserAttribute {
        /// `mail`, `upn`, `employee_id`.
        attribute: &'static str,
    },
    /// The issuing CA's certificate or key file cannot be used.
    #[error("the issuing CA file {} is unusable: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("the issuing CA's key does not match its certificate")]
    CaKeyMismatch,
    /// The CA expired.
    #[error("the issuing CA's certificate has expired")]
    CaExpired,
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(#[from] rcgen::Error),
}

impl IssuanceError {
    /// The wire error code for this refusal.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            IssuanceError::CsrMalformed | IssuanceError::CsrSignature => ErrorCode::CsrInvalid,
            IssuanceError::KeyNotAllowed { .. } | IssuanceError::KeyReused => {
                ErrorCode::KeyNotAllowed
            }
            IssuanceError::UserAttribute { .. } => ErrorCode::InvalidRequest,
            _ => ErrorCode::Internal,
        }
    }
}

/// The public key of a verified CSR.
#[derive(Clone, PartialEq, Eq)]
pub struct CsrKey {
    spki: Vec<u8>,
    raw: Vec<u8>,
    kind: KeyKind,
    algorithm: &'static SignatureAlgorithm,
}

impl fmt::Debug for CsrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrKey").field("kind", &self.kind).finish()
    }
}

impl CsrKey {
    /// The key's SubjectPublicKeyInfo, DER.
    #[must_use]
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The kind and size of the key.
    #[must_use]
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// Whether `kind` is `algorithm` (RSA: at least the size; the policy's RSA entry is 2048).
fn key_matches(kind: KeyKind, algorithm: KeyAlgorithm) -> bool {
    match (kind, algorithm) {
        (KeyKind::Rsa { bits }, KeyAlgorithm::Rsa2048) => bits >= 2048,
        (KeyKind::EcP256, KeyAlgorithm::P256) | (KeyKind::EcP384, KeyAlgorithm::P384) => true,
        _ => false,
    }
}

/// Every key a card may have.
const ALL_ALGORITHMS: [KeyAlgorithm; 3] = [
    KeyAlgorithm::Rsa2048,
    KeyAlgorithm::P256,
    KeyAlgorithm::P384,
];

/// Parses a DER PKCS#10 request and verifies its self-signature; returns its key.
///
/// # Errors
/// [`IssuanceError::CsrMalformed`], [`IssuanceError::CsrSignature`], or
/// [`IssuanceError::KeyNotAllowed`] for a key no card should have (not RSA of
/// at least 2048 bits, P-256 or P-384).
pub fn verify_csr(der: &[u8]) -> Result<CsrKey, IssuanceError> {
    check_csr_against(der, &ALL_ALGORITHMS)
}

/// [`verify_csr`] with the key checked against `allowed` first: a key outside
/// the policy is `KeyNotAllowed` even when its signature cannot be checked
/// (RSA-1024, which the verifier refuses).
fn check_csr_against(der: &[u8], allowed: &[KeyAlgorithm]) -> Result<CsrKey, IssuanceError> {
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|_| IssuanceError::CsrMalformed)?;
    if !rest.is_empty() {
        return Err(IssuanceError::CsrMalformed);
    }
    let spki = &csr.certification_request_info.subject_pki;
    let kind = spki_key_kind(spki).map_err(|_| IssuanceError::CsrMalformed)?;
    if !allowed
        .iter()
        .any(|algorithm| key_matches(kind, *algorithm))
    {
        return Err(IssuanceError::KeyNotAllowed {
            key: kind,
            allowed: allowed
                .iter()
                .map(|algorithm| algorithm.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    csr.verify_signature()
        .map_err(|_| IssuanceError::CsrSignature)?;
    let algorithm: &'static SignatureAlgorithm = match kind {
        KeyKind::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        // Only the SPKI's algorithm identifier comes from this (rsaEncryption).
        _ => &rcgen::PKCS_RSA_SHA256,
    };
    Ok(CsrKey {
        spki: spki.raw.to_vec(),
        raw: spki.subject_public_key.data.to_vec(),
        kind,
        algorithm,
    })
}

/// The issuing CA and the issuance policy.
pub struct Issuer {
    ca: profile::CertificateAuthority,
    policy: IssuanceConfig,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("ca_not_after", &self.ca.not_after())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads the CA certificate and key named by `[issuance]`.
    ///
    /// # Errors
    /// [`IssuanceError::CaFile`] or [`IssuanceError::CaKeyMismatch`].
    pub fn load(policy: &IssuanceConfig) -> Result<Self, IssuanceError> {
        let ca_file = |path: &Path, reason: String| IssuanceError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let certificates = crate::config::read_ca_certificates(&policy.ca_certificate)
            .map_err(|error| ca_file(&policy.ca_certificate, error.to_string()))?;
        let [ca_der] = certificates.as_slice() else {
            return Err(ca_file(
                &policy.ca_certificate,
                "it must hold exactly one certificate".to_owned(),
            ));
        };
        let key_pem = Zeroizing::new(
            std::fs::read_to_string(&policy.ca_key)
                .map_err(|error| ca_file(&policy.ca_key, error.to_string()))?,
        );
        // The key's parse error is not quoted: it could echo key material.
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|_| ca_file(&policy.ca_key, "not a PKCS#8 PEM private key".to_owned()))?;
        Self::new(ca_der.clone(), key, policy.clone())
    }

    /// An issuer from a CA certificate (DER) and its key, accepted by
    /// [`profile::CertificateAuthority::from_der_and_key`].
    ///
    /// # Errors
    /// [`IssuanceError::CaKeyMismatch`] when the key is not the certificate's;
    /// [`IssuanceError::CaFile`] when the certificate is not a CA that may issue
    /// (CA:TRUE, keyCertSign) or its subject cannot be copied.
    pub fn new(
        ca_der: Vec<u8>,
        key: KeyPair,
        policy: IssuanceConfig,
    ) -> Result<Self, IssuanceError> {
        let ca = profile::CertificateAuthority::from_der_and_key(ca_der, key).map_err(|error| {
            match error {
                profile::IssueError::CaKeyMismatch => IssuanceError::CaKeyMismatch,
                other => IssuanceError::CaFile {
                    path: policy.ca_certificate.clone(),
                    reason: other.to_string(),
                },
            }
        })?;
        Ok(Issuer { ca, policy })
    }

    /// When the issuing CA certificate expires.
    #[must_use]
    pub fn ca_not_after(&self) -> OffsetDateTime {
        self.ca.not_after()
    }

    /// The CA certificate, DER.
    #[must_use]
    pub fn ca_der(&self) -> &[u8] {
        self.ca.certificate_der()
    }

    /// The CA's name (RFC 4514), as the certificates it issues name their issuer
    /// ([`CertificateFacts::issuer`](pivtap_protocol::certificate::CertificateFacts::issuer)).
    #[must_use]
    pub fn ca_name(&self) -> &str {
        self.ca.name()
    }

    /// The issuance policy.
    #[must_use]
    pub fn policy(&self) -> &IssuanceConfig {
        &self.policy
    }

    /// The key algorithm cards generate at enrollment (the policy's first).
    #[must_use]
    pub fn enrollment_algorithm(&self) -> KeyAlgorithm {
        self.policy
            .key_algorithms
            .first()
            .copied()
            .unwrap_or(KeyAlgorithm::P256)
    }

    /// Verifies a CSR (DER) and checks its key against the policy.
    ///
    /// # Errors
    /// [`IssuanceError::CsrMalformed`], [`IssuanceError::CsrSignature`] or
    /// [`IssuanceError::KeyNotAllowed`].
    pub fn check_csr(&self, der: &[u8]) -> Result<CsrKey, IssuanceError> {
        check_csr_against(der, &self.policy.key_algorithms)
    }

    /// The certificate for `key`, naming `user` (see the module documentation), DER.
    ///
    /// # Errors
    /// [`IssuanceError::UserAttribute`], [`IssuanceError::CaExpired`] or [`IssuanceError::Sign`].
    pub fn issue(
        &self,
        key: &CsrKey,
        user: &User,
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, IssuanceError> {
        let not_before = now - CLOCK_SLACK;
        let days = i64::try_from(self.policy.validity_days).unwrap_or(i64::MAX);
        let not_after = (now + Duration::days(days)).min(self.ca.not_after());
        if not_after <= now {
            return Err(IssuanceError::CaExpired);
        }
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.distinguished_name = rcgen::DistinguishedName::new();
        let common_name = match self.policy.subject_cn {
            SubjectCn::DisplayName => &user.display_name,
            SubjectCn::Uid => &user.id,
        };
        params
            .distinguished_name
            .push(DnType::CommonName, DnValue::Utf8String(common_name.clone()));
        if let Some(employee_id) = user.employee_id.as_deref().filter(|id| !id.is_empty()) {
            let value = match rcgen::string::PrintableString::try_from(employee_id) {
                Ok(printable) => DnValue::PrintableString(printable),
                Err(_) => DnValue::Utf8String(employee_id.to_owned()),
            };
            params
                .distinguished_name
                .push(DnType::CustomDnType(oid::SERIAL_NUMBER.to_vec()), value);
        }
        if let Some(mail) = user.mail.as_deref().filter(|mail| !mail.is_empty()) {
            let mail = rcgen::string::Ia5String::try_from(mail)
                .map_err(|_| IssuanceError::UserAttribute { attribute: "mail" })?;
            params.subject_alt_names.push(SanType::Rfc822Name(mail));
        }
        if self.policy.include_upn
            && let Some(upn) = user.upn.as_deref().filter(|upn| !upn.is_empty())
        {
            params.subject_alt_names.push(SanType::OtherName((
                oid::UPN.to_vec(),
                OtherNameValue::Utf8String(upn.to_owned()),
            )));
        }
        end_entity(&mut params, self.policy.smartcard_logon);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let certificate = params.signed_by(key, &self.ca.issuer()?)?;
        Ok(certificate.der().to_vec())
    }

    /// A device certificate for `key` (the device's own P-256 key), naming `device`:
    /// subject CN = the device id, SAN URI `urn:pivtap:device:<id>` (the mark that keeps it
    /// from ever being accepted as a card certificate), keyUsage digitalSignature
    /// (critical), extendedKeyUsage clientAuth, valid `validity_days` (cut at the CA's end).
    ///
    /// # Errors
    /// [`IssuanceError::KeyNotAllowed`] for a key that is not P-256,
    /// [`IssuanceError::CaExpired`] or [`IssuanceError::Sign`].
    pub fn issue_device(
        &self,
        key: &CsrKey,
        device: &str,
        now: OffsetDateTime,
        validity_days: u64,
    ) -> Result<Vec<u8>, IssuanceError> {
        if key.kind != KeyKind::EcP256 {
            return Err(IssuanceError::KeyNotAllowed {
                key: key.kind,
                allowed: KeyAlgorithm::P256.as_str().to_owned(),
            });
        }
        let days = i64::try_from(validity_days).unwrap_or(i64::MAX);
        let not_after = (now + Duration::days(days)).min(self.ca.not_after());
        if not_after <= now {
            return Err(IssuanceError::CaExpired);
        }
        let mut params = CertificateParams::default();
        params.not_before = now - CLOCK_SLACK;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, DnValue::Utf8String(device.to_owned()));
        let uri = rcgen::string::Ia5String::try_from(format!(
            "{}{device}",
            pivtap_protocol::wire::DEVICE_URI_PREFIX
        ))
        .map_err(|_| IssuanceError::UserAttribute {
            attribute: "device id",
        })?;
        params.subject_alt_names.push(SanType::URI(uri));
        end_entity(&mut params, false);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let certificate = params.signed_by(key, &self.ca.issuer()?)?;
        Ok(certificate.der().to_vec())
    }

    /// A CRL listing `revoked` (this server's revoked certificates), signed by
    /// the CA, current for a day. The CRL number is the time in milliseconds, so
    /// it grows with every CRL.
    ///
    /// # Errors
    /// [`IssuanceError::Sign`].
    pub fn crl(
        &self,
        revoked: &[RevokedCertificate],
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, IssuanceError> {
        let crl_number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let revoked_certs = revoked
            .iter()
            .filter_map(|entry| {
                let serial = hex::decode(&entry.serial).ok()?;
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: entry.revoked_at,
                    reason_code: Some(match entry.reason {
                        RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
                        RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
                        RevocationReason::AffiliationChanged => {
                            rcgen::RevocationReason::AffiliationChanged
                        }
                        RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
                        RevocationReason::CessationOfOperation => {
                            rcgen::RevocationReason::CessationOfOperation
                        }
                        RevocationReason::PrivilegeWithdrawn => {
                            rcgen::RevocationReason::PrivilegeWithdrawn
                        }
                    }),
                    invalidity_date: None,
                })
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + CRL_LIFETIME,
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.ca.issuer()?)?.der().to_vec())
    }
}

/// Whether `key` is the private key of `certificate`'s public key (the CA-key check of
/// [`profile::CertificateAuthority`], through which the server's issuer loads its CA).
fn is_key_of(key: &KeyPair, certificate: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    certificate.public_key().raw == key.subject_public_key_info().as_slice()
}

/// The extensions every end-entity certificate pivtap issues carries (card
/// certificates from the server or `pivtap vcard new`, device certificates):
/// basicConstraints cA=false, keyUsage digitalSignature, extendedKeyUsage
/// clientAuth (and Microsoft smart card logon with `smartcard_logon`), and an
/// authority key identifier.
pub fn end_entity(params: &mut CertificateParams, smartcard_logon: bool) {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if smartcard_logon {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::Other(
                oid::SMARTCARD_LOGON.to_vec(),
            ));
    }
    params.use_authority_key_identifier_extension = true;
}

/// 16 random bytes, positive (top bit clear) and without a leading zero byte,
/// so the serial always prints as 32 hex digits: 126 random bits. Every
/// certificate pivtap issues (server, `vcard new`, CA) takes its serial here.
#[must_use]
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// A new issuing CA: a P-256 key and a self-signed CA certificate named
/// [`CA_COMMON_NAME`], valid [`CA_VALIDITY_DAYS`], allowed to sign certificates
/// and CRLs (path length 0). Returns the certificate PEM and the key PEM (PKCS#8).
///
/// # Errors
/// [`IssuanceError::Sign`].
pub fn create_ca(now: OffsetDateTime) -> Result<(String, Zeroizing<String>), IssuanceError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.not_before = now - CLOCK_SLACK;
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    let certificate = params.self_signed(&key)?;
    Ok((certificate.pem(), Zeroizing::new(key.serialize_pem())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappingRule;
    use crate::store::UserState;
    use pivtap_protocol::certificate::CertificateFacts;

    fn policy() -> IssuanceConfig {
        IssuanceConfig::new(PathBuf::from("ca.crt"), PathBuf::from("ca.key"))
    }

    fn issuer_with(policy: IssuanceConfig) -> Issuer {
        let (certificate_pem, key_pem) = create_ca(OffsetDateTime::now_utc()).unwrap();
        let der = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        Issuer::new(der, KeyPair::from_pem(&key_pem).unwrap(), policy).unwrap()
    }

    fn alice() -> User {
        User {
            id: "alice".to_owned(),
            display_name: "Alice Example".to_owned(),
            mail: Some("alice@example.com".to_owned()),
            upn: Some("alice@corp.example".to_owned()),
            employee_id: Some("E-1001".to_owned()),
            state: UserState::Active,
        }
    }

    fn csr_for(key: &KeyPair, subject: &str) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, subject);
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn certificates_name_the_user_record_never_the_csr() {
        let issuer = issuer_with(policy());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = csr_for(&key, "Mallory, the administrator");
        let csr_key = issuer.check_csr(&csr).unwrap();
        assert_eq!(csr_key.spki_der(), key.subject_public_key_info().as_slice());
        let now = OffsetDateTime::now_utc();
        let der = issuer.issue(&csr_key, &alice(), now).unwrap();
        let facts = CertificateFacts::from_der(&der).unwrap();
        assert_eq!(facts.common_name.as_deref(), Some("Alice Example"));
        assert!(!facts.subject.contains("Mallory"), "{}", facts.subject);
        assert_eq!(facts.subject_serial_number.as_deref(), Some("E-1001"));
        assert_eq!(facts.emails, ["alice@example.com"]);
        assert_eq!(facts.upns, ["alice@corp.example"]);
        assert_eq!(facts.serial.len(), 32, "{}", facts.serial);
        assert_eq!(facts.key, KeyKind::EcP256);
        assert_eq!(facts.issuer, format!("CN={CA_COMMON_NAME}"));
        assert!(facts.is_valid_at(now));
        let days = (facts.not_after - now).whole_days();
        assert!((364..=365).contains(&days), "{days}");
        assert_eq!(MappingRule::DEFAULT.values(&facts), ["alice@example.com"]);

        let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
        let usage = certificate.key_usage().unwrap().unwrap();
        assert!(usage.critical && usage.value.digital_signature());
        assert!(!usage.value.key_cert_sign());
        let eku = certificate.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert_eq!(eku.other.len(), 1);
        assert_eq!(eku.other[0].to_id_string(), "1.3.6.1.4.1.311.20.2.2");
        assert!(!certificate.is_ca());
        assert!(certificate.raw_serial()[0] < 0x80, "a positive serial");

        // The chain validates with the server's own trust store.
        let trust = pivtap_protocol::certificate::TrustStore::new(&[issuer.ca_der().to_vec()], &[])
            .unwrap();
        trust.validate(&der, &[], now).unwrap();
    }

    #[test]
    fn the_policy_decides_the_subject_and_extensions() {
        let issuer = issuer_with(IssuanceConfig {
            subject_cn: SubjectCn::Uid,
            include_upn: false,
            smartcard_logon: false,
            validity_days: 30,
            ..policy()
        });
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut user = alice();
        user.employee_id = None;
        let now = OffsetDateTime::now_utc();
        let der = issuer
            .issue(&issuer.check_csr(&csr_for(&key, "x")).unwrap(), &user, now)
            .unwrap();
        let facts = CertificateFacts::from_der(&der).unwrap();
        assert_eq!(facts.common_name.as_deref(), Some("alice"));
        assert_eq!(facts.subject_serial_number, None);
        assert!(facts.upns.is_empty());
        let lifetime = (facts.not_after - now).whole_seconds();
        assert!(
            (30 * 86_400 - 1..=30 * 86_400).contains(&lifetime),
            "{lifetime}"
        );
        let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(
            certificate
                .extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .other
                .is_empty()
        );
        // A mail address that is not ASCII cannot be an rfc822Name.
        user.mail = Some("älice@example.com".to_owned());
        assert!(matches!(
            issuer.issue(&issuer.check_csr(&csr_for(&key, "x")).unwrap(), &user, now),
            Err(IssuanceError::UserAttribute { attribute: "mail" })
        ));
    }

    #[test]
    fn the_key_policy_refuses_other_keys() {
        let issuer = issuer_with(IssuanceConfig {
            key_algorithms: vec![KeyAlgorithm::P256],
            ..policy()
        });
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let refused = issuer.check_csr(&csr_for(&p384, "x")).unwrap_err();
        assert!(matches!(
            refused,
            IssuanceError::KeyNotAllowed {
                key: KeyKind::EcP384,
                ..
            }
        ));
        assert_eq!(refused.code(), ErrorCode::KeyNotAllowed);
        assert!(refused.to_string().contains("p256"), "{refused}");
        // Allowed when listed.
        let both = issuer_with(IssuanceConfig {
            key_algorithms: vec![KeyAlgorithm::P384, KeyAlgorithm::P256],
            ..policy()
        });
        assert_eq!(both.enrollment_algorithm(), KeyAlgorithm::P384);
        assert_eq!(
            both.check_csr(&csr_for(&p384, "x")).unwrap().kind(),
            KeyKind::EcP384
        );
    }

    #[test]
    fn broken_and_forged_csrs_are_refused() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut csr = csr_for(&key, "card");
        assert!(matches!(
            verify_csr(b"not a csr"),
            Err(IssuanceError::CsrMalformed)
        ));
        let mut trailing = csr.clone();
        trailing.push(0);
        assert!(matches!(
            verify_csr(&trailing),
            Err(IssuanceError::CsrMalformed)
        ));
        // Flip a bit of the subject: the signature no longer covers it.
        let at = csr.windows(4).position(|window| window == b"card").unwrap();
        csr[at] ^= 0x01;
        let refused = verify_csr(&csr).unwrap_err();
        assert!(
            matches!(refused, IssuanceError::CsrSignature),
            "{refused:?}"
        );
        assert_eq!(refused.code(), ErrorCode::CsrInvalid);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (certificate_pem, _) = create_ca(OffsetDateTime::now_utc()).unwrap();
        let der = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            Issuer::new(der, other, policy()),
            Err(IssuanceError::CaKeyMismatch)
        ));
    }

    #[test]
    fn the_crl_lists_the_revoked_serials_with_their_reasons() {
        let issuer = issuer_with(policy());
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let revoked = [
            RevokedCertificate {
                issuer: String::new(),
                serial: "4a0b".to_owned(),
                revoked_at: now,
                reason: RevocationReason::Superseded,
            },
            RevokedCertificate {
                issuer: String::new(),
                serial: "7f".to_owned(),
                revoked_at: now,
                reason: RevocationReason::Unspecified,
            },
            RevokedCertificate {
                issuer: String::new(),
                serial: "10".to_owned(),
                revoked_at: now,
                reason: RevocationReason::KeyCompromise,
            },
            RevokedCertificate {
                issuer: String::new(),
                serial: "11".to_owned(),
                revoked_at: now,
                reason: RevocationReason::PrivilegeWithdrawn,
            },
        ];
        let der = issuer.crl(&revoked, now).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(issuer.ca_der()).unwrap();
        crl.verify_signature(ca.public_key()).unwrap();
        assert_eq!(crl.issuer(), ca.subject());
        let next = crl.next_update().unwrap().to_datetime();
        assert_eq!(next - now, Duration::days(1));
        let entries: Vec<(String, Option<u8>)> = crl
            .iter_revoked_certificates()
            .map(|entry| {
                (
                    hex::encode(entry.raw_serial()),
                    entry.reason_code().map(|(_, reason)| reason.0),
                )
            })
            .collect();
        assert_eq!(
            entries,
            // RFC 5280 §5.3.1: reason unspecified is left out.
            [
                ("4a0b".to_owned(), Some(4)),
                ("7f".to_owned(), None),
                ("10".to_owned(), Some(1)),
                ("11".to_owned(), Some(9)),
            ]
        );
        // The server's own trust store reads it.
        pivtap_protocol::certificate::TrustStore::new(&[issuer.ca_der().to_vec()], &[der]).unwrap();
    }
}
