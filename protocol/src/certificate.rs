//! Card certificates: the facts the server keeps and maps users by (serial, names, SAN e-mails and UPNs, validity, key), and chain validation to the configured trust anchors with rustls-webpki.

use std::fmt;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::asn1_rs::{Any, Class, FromDer, Tag, ToDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::X509Name;

/// `id-ms-san-upn`: the Microsoft user principal name in a SAN otherName.
const OID_UPN: &str = "1.3.6.1.4.1.311.20.2.3";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_CURVE_P256: &str = "1.2.840.10045.3.1.7";
const OID_CURVE_P384: &str = "1.3.132.0.34";
const OID_COMMON_NAME: &str = "2.5.4.3";
const OID_SERIAL_NUMBER: &str = "2.5.4.5";

/// `der` as a PEM block labelled `label` (RFC 7468: base64 in lines of 64 characters).
#[must_use]
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// The arcs of the OIDs pivtap writes into the certificates it issues (the
/// server's issuance and `pivtap vcard new` alike); the reader above
/// compares dotted strings, the tests tie both forms together.
pub mod oid {
    /// `id-ms-san-upn`: Microsoft user principal name, a SAN otherName.
    pub const UPN: [u64; 10] = [1, 3, 6, 1, 4, 1, 311, 20, 2, 3];
    /// `id-ms-kp-sc-logon`: Microsoft smart card logon, an extended key usage.
    pub const SMARTCARD_LOGON: [u64; 10] = [1, 3, 6, 1, 4, 1, 311, 20, 2, 2];
    /// X.520 `serialNumber`, the subject attribute for an employee id.
    pub const SERIAL_NUMBER: [u64; 4] = [2, 5, 4, 5];
}

/// Short names of DN attributes (RFC 4514 §3, plus the two every card
/// tool prints); any other attribute is written as its dotted OID.
const ATTRIBUTE_NAMES: [(&str, &str); 11] = [
    (OID_COMMON_NAME, "CN"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.6", "C"),
    ("2.5.4.9", "STREET"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    (OID_SERIAL_NUMBER, "serialNumber"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
];

/// A certificate that cannot be used, or a trust configuration that cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// Not a DER X.509 certificate.
    #[error("the certificate is not a valid DER X.509 certificate")]
    Malformed,
    /// Bytes follow the certificate.
    #[error("the certificate is followed by {len} extra bytes")]
    TrailingData {
        /// How many bytes follow.
        len: usize,
    },
    /// An extension the server reads is malformed or repeated.
    #[error("the certificate's {extension} extension is malformed")]
    MalformedExtension {
        /// `subjectAltName`, `keyUsage`.
        extension: &'static str,
    },
    /// The public key cannot be read.
    #[error("the certificate's public key is malformed")]
    MalformedPublicKey,
    /// A validity date is out of range.
    #[error("the certificate's validity dates are out of range")]
    MalformedValidity,
    /// A configured trust anchor is unusable.
    #[error("trust anchor {index} is not a usable CA certificate: {source}")]
    TrustAnchor {
        /// Position in the configured list, from 0.
        index: usize,
        /// What webpki found.
        source: webpki::Error,
    },
    /// A configured trust anchor may not issue certificates (RFC 5280 4.2.1.3 and 4.2.1.9).
    #[error(
        "trust anchor {index} may not issue certificates: it needs basicConstraints cA=true and, when it has keyUsage, keyCertSign"
    )]
    TrustAnchorNotCa {
        /// Position in the configured list, from 0.
        index: usize,
    },
    /// A configured CRL is unusable.
    #[error("CRL {index} cannot be read: {source}")]
    Crl {
        /// Position in the configured list, from 0.
        index: usize,
        /// What webpki found.
        source: webpki::Error,
    },
    /// No trust anchor is configured, so no card could ever be accepted.
    #[error("no trust anchor is configured")]
    NoTrustAnchors,
}

/// The kind and size of a certificate's public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA with a modulus of `bits` bits.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// Anything else (other curves, Ed25519, DSA...).
    Other,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::EcP256 => f.write_str("P-256"),
            KeyKind::EcP384 => f.write_str("P-384"),
            KeyKind::Other => f.write_str("other"),
        }
    }
}

/// What the server reads from a card certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Serial number, lower-case hex without separators or a leading sign byte.
    pub serial: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    /// Subject DN, RFC 4514 (most specific first): `CN=Alice Example,OU=Field,O=Example Corp`.
    pub subject: String,
    /// Issuer DN, RFC 4514.
    pub issuer: String,
    /// The subject's (most specific) common name.
    pub common_name: Option<String>,
    /// The subject's `serialNumber` attribute (often an employee number).
    pub subject_serial_number: Option<String>,
    /// SAN rfc822Name entries, as written.
    pub emails: Vec<String>,
    /// SAN otherName user principal names (1.3.6.1.4.1.311.20.2.3).
    pub upns: Vec<String>,
    /// The device id of a pivtap device certificate (SAN URI `urn:pivtap:device:<id>`);
    /// such a certificate is never a card's.
    pub device: Option<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The public key's kind.
    pub key: KeyKind,
}

impl CertificateFacts {
    /// Reads the facts from a DER certificate.
    ///
    /// # Errors
    /// [`CertificateError`] when the DER, the SAN extension, the key or the dates cannot be read.
    pub fn from_der(der: &[u8]) -> Result<Self, CertificateError> {
        Self::with_public_key(der).map(|(facts, _)| facts)
    }

    /// Reads the facts and the raw public key: for RSA the DER
    /// `RSAPublicKey`, for EC the SEC1 point (the SPKI's BIT STRING content),
    /// as [`signature_verifies`](crate::assertion::signature_verifies) takes it.
    ///
    /// # Errors
    /// As [`CertificateFacts::from_der`].
    pub fn with_public_key(der: &[u8]) -> Result<(Self, Vec<u8>), CertificateError> {
        let certificate = parse(der)?;
        let subject = certificate.subject();
        let (emails, upns, device) = subject_alternative_names(&certificate)?;
        let spki = certificate.public_key();
        let facts = CertificateFacts {
            der: der.to_vec(),
            serial: serial_hex(certificate.raw_serial()),
            fingerprint: hex::encode(Sha256::digest(der)),
            subject: rfc4514(subject),
            issuer: rfc4514(certificate.issuer()),
            common_name: last_attribute(subject, OID_COMMON_NAME),
            subject_serial_number: last_attribute(subject, OID_SERIAL_NUMBER),
            emails,
            upns,
            device,
            not_before: certificate.validity().not_before.to_datetime(),
            not_after: certificate.validity().not_after.to_datetime(),
            key: key_kind(&certificate)?,
        };
        Ok((facts, spki.subject_public_key.data.to_vec()))
    }

    /// Whether `now` lies within the validity period (both ends included).
    #[must_use]
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// Why a certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The card certificate, or a CA certificate above it, is outside its validity period.
    #[error("a certificate in the chain is outside its validity period")]
    Expired,
    /// A configured CRL lists the card certificate or an intermediate.
    #[error("a certificate in the chain is revoked")]
    Revoked,
    /// The card certificate has a keyUsage extension without digitalSignature.
    #[error("the certificate's key usage does not allow digital signatures")]
    KeyUsage,
    /// A CA certificate of the path may not sign certificates: no basicConstraints
    /// cA=true, or a keyUsage extension without keyCertSign (RFC 5280 4.2.1.3, 4.2.1.9).
    #[error("a CA certificate in the chain may not sign certificates")]
    NotACertificateSigner,
    /// No path to a trust anchor: unknown issuer, a bad signature on the way,
    /// no clientAuth EKU, a CA certificate used as the card's, malformed DER...
    #[error("the certificate does not chain to a trusted CA: {0}")]
    Untrusted(webpki::Error),
}

/// The configured trust anchors and CRLs, parsed once; validates card
/// certificate chains with rustls-webpki.
pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<CertRevocationList<'static>>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("anchors", &self.anchors.len())
            .field("crls", &self.crls.len())
            .finish()
    }
}

impl TrustStore {
    /// Parses the trust anchors (CA certificates, DER) and CRLs (DER).
    ///
    /// # Errors
    /// [`CertificateError::NoTrustAnchors`], [`CertificateError::TrustAnchor`]
    /// or [`CertificateError::Crl`] naming the entry that cannot be used.
    pub fn new(trust_anchors: &[Vec<u8>], crls: &[Vec<u8>]) -> Result<Self, CertificateError> {
        if trust_anchors.is_empty() {
            return Err(CertificateError::NoTrustAnchors);
        }
        let anchors = trust_anchors
            .iter()
            .enumerate()
            .map(|(index, der)| {
                let anchor =
                    webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                        .map(|anchor| anchor.to_owned())
                        .map_err(|source| CertificateError::TrustAnchor { index, source })?;
                if may_sign_certificates(der) {
                    Ok(anchor)
                } else {
                    Err(CertificateError::TrustAnchorNotCa { index })
                }
            })
            .collect::<Result<_, _>>()?;
        let crls = crls
            .iter()
            .enumerate()
            .map(|(index, der)| {
                OwnedCertRevocationList::from_der(der)
                    .map(CertRevocationList::from)
                    .map_err(|source| CertificateError::Crl { index, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustStore { anchors, crls })
    }

    /// Whether any CRL is configured.
    #[must_use]
    pub fn has_crls(&self) -> bool {
        !self.crls.is_empty()
    }

    /// Checks that `end_entity` (DER) has digitalSignature in its keyUsage
    /// when it has a keyUsage extension, then that it chains to a trust anchor
    /// through `intermediates` at `now`, with every certificate within its
    /// validity, clientAuth in its extended key usage when it has one, and
    /// none of them listed by a configured CRL; then that every intermediate CA
    /// of the path found has basicConstraints cA=true and, when it has a keyUsage
    /// extension, keyCertSign (RFC 5280 4.2.1.3: rustls-webpki checks cA but not the key
    /// usage of CA certificates). Trust anchors are checked so when the store is made.
    ///
    /// Revocation: the card certificate and the intermediates are checked
    /// against the CRLs of their issuers; a CA with no configured CRL is not
    /// checked (status unknown is allowed), and a CRL past its nextUpdate is
    /// still used.
    ///
    /// # Errors
    /// [`ChainError`].
    pub fn validate(
        &self,
        end_entity: &[u8],
        intermediates: &[Vec<u8>],
        now: OffsetDateTime,
    ) -> Result<(), ChainError> {
        if !allows_digital_signature(end_entity) {
            return Err(ChainError::KeyUsage);
        }
        let end_entity_der = CertificateDer::from(end_entity);
        let end_entity = EndEntityCert::try_from(&end_entity_der).map_err(ChainError::Untrusted)?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        let crls: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = RevocationOptionsBuilder::new(&crls).ok().map(|builder| {
            builder
                .with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(ExpirationPolicy::Ignore)
                .build()
        });
        let seconds = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        let path = end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                &intermediates,
                UnixTime::since_unix_epoch(Duration::from_secs(seconds)),
                KeyUsage::client_auth(),
                revocation,
                None,
            )
            .map_err(|error| match error {
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                    ChainError::Expired
                }
                webpki::Error::CertRevoked => ChainError::Revoked,
                other => ChainError::Untrusted(other),
            })?;
        if path
            .intermediate_certificates()
            .all(|ca| may_sign_certificates(ca.der().as_ref()))
        {
            Ok(())
        } else {
            Err(ChainError::NotACertificateSigner)
        }
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertificateError> {
    let (rest, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CertificateError::Malformed)?;
    if rest.is_empty() {
        Ok(certificate)
    } else {
        Err(CertificateError::TrailingData { len: rest.len() })
    }
}

/// id-PIV-cardAuth (FIPS 201-3, 4.2.2): the extended key usage of the certificate of a PIV
/// card's card-authentication key (slot `9e`, which signs without a PIN).
pub const PIV_CARD_AUTH_EKU: &str = "2.16.840.1.101.3.6.8";

/// Whether the certificate is a PIV card-authentication certificate (its extended key usage
/// lists [`PIV_CARD_AUTH_EKU`]); false for anything that cannot be read.
#[must_use]
pub fn is_card_authentication_certificate(der: &[u8]) -> bool {
    let Ok(certificate) = parse(der) else {
        return false;
    };
    matches!(
        certificate.extended_key_usage(),
        Ok(Some(usage)) if usage.value.other.iter().any(|oid| oid.to_id_string() == PIV_CARD_AUTH_EKU)
    )
}

/// True when the certificate may sign certificates: basicConstraints cA=true, and
/// keyCertSign when it has a keyUsage extension (RFC 5280 4.2.1.3, 4.2.1.9); false for a
/// malformed certificate or extension.
fn may_sign_certificates(der: &[u8]) -> bool {
    let Ok(certificate) = parse(der) else {
        return false;
    };
    let is_ca =
        matches!(certificate.basic_constraints(), Ok(Some(constraints)) if constraints.value.ca);
    let key_usage_allows = match certificate.key_usage() {
        Ok(None) => true,
        Ok(Some(usage)) => usage.value.key_cert_sign(),
        Err(_) => false,
    };
    is_ca && key_usage_allows
}

/// True when the certificate has no keyUsage extension or one with
/// digitalSignature; false for a malformed certificate or extension.
fn allows_digital_signature(der: &[u8]) -> bool {
    let Ok(certificate) = parse(der) else {
        return false;
    };
    match certificate.key_usage() {
        Ok(None) => true,
        Ok(Some(usage)) => usage.value.digital_signature(),
        Err(_) => false,
    }
}

/// The serial as an unsigned big-endian number in hex, without the sign byte
/// DER adds when the top bit is set (at least one byte is kept).
fn serial_hex(raw: &[u8]) -> String {
    let first_significant = raw
        .iter()
        .position(|&byte| byte != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(raw.get(first_significant..).unwrap_or_default())
}

fn key_kind(certificate: &X509Certificate<'_>) -> Result<KeyKind, CertificateError> {
    spki_key_kind(certificate.public_key())
}

/// The kind and size of a SubjectPublicKeyInfo's key (certificates and CSRs).
///
/// # Errors
/// [`CertificateError`] for a key that is not RSA, P-256 or P-384.
pub fn spki_key_kind(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<KeyKind, CertificateError> {
    let kind = match spki.algorithm.algorithm.to_id_string().as_str() {
        OID_RSA_ENCRYPTION => match spki.parsed() {
            Ok(PublicKey::RSA(key)) => KeyKind::Rsa {
                bits: bit_length(key.modulus),
            },
            _ => return Err(CertificateError::MalformedPublicKey),
        },
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some(OID_CURVE_P256) => KeyKind::EcP256,
                Some(OID_CURVE_P384) => KeyKind::EcP384,
                _ => KeyKind::Other,
            }
        }
        _ => KeyKind::Other,
    };
    Ok(kind)
}

/// Bits of a big-endian unsigned integer, leading zero bytes ignored.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&byte| byte != 0) {
        Some(first) => {
            let leading_zero_bits = bytes.get(first).map_or(0, |byte| byte.leading_zeros());
            (bytes.len() - first) * 8 - leading_zero_bits as usize
        }
        None => 0,
    }
}

/// The SAN e-mails and UPNs.
/// The rfc822Names, the UPNs and the device id (of a `urn:pivtap:device:` URI) of the SAN.
type SubjectAlternativeNames = (Vec<String>, Vec<String>, Option<String>);

fn subject_alternative_names(
    certificate: &X509Certificate<'_>,
) -> Result<SubjectAlternativeNames, CertificateError> {
    let san = certificate.subject_alternative_name().map_err(|_| {
        CertificateError::MalformedExtension {
            extension: "subjectAltName",
        }
    })?;
    let mut emails = Vec::new();
    let mut upns = Vec::new();
    let mut device = None;
    for name in san.iter().flat_map(|san| &san.value.general_names) {
        match name {
            GeneralName::RFC822Name(email) => emails.push((*email).to_owned()),
            GeneralName::URI(uri) => {
                if let Some(id) = uri.strip_prefix(crate::wire::DEVICE_URI_PREFIX) {
                    device = Some(id.to_owned());
                }
            }
            GeneralName::OtherName(oid, value) if oid.to_id_string() == OID_UPN => {
                upns.push(
                    upn_value(value).ok_or(CertificateError::MalformedExtension {
                        extension: "subjectAltName",
                    })?,
                );
            }
            _ => {}
        }
    }
    Ok((emails, upns, device))
}

/// The UPN in an otherName value: `[0] EXPLICIT UTF8String`.
fn upn_value(value: &[u8]) -> Option<String> {
    let (_, explicit) = Any::from_der(value).ok()?;
    if explicit.header.class() != Class::ContextSpecific || explicit.header.tag() != Tag(0) {
        return None;
    }
    let (_, inner) = Any::from_der(explicit.data).ok()?;
    if inner.header.tag() != Tag::Utf8String {
        return None;
    }
    std::str::from_utf8(inner.data).ok().map(str::to_owned)
}

/// The value of the last (most specific) attribute of type `oid`, when it is a string.
fn last_attribute(name: &X509Name<'_>, oid: &str) -> Option<String> {
    name.iter_attributes()
        .filter(|attribute| attribute.attr_type().to_id_string() == oid)
        .last()
        .and_then(|attribute| attribute.as_str().ok())
        .map(str::to_owned)
}

/// A DN as RFC 4514 text: RDNs most specific first, separated by `,`;
/// multi-valued RDNs joined by `+`; special characters escaped; values that
/// are not strings as `#` and the hex of their DER. The one printer for names:
/// `pivtap card info`, the admin API and issuance all print with it.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let oid = attribute.attr_type().to_id_string();
                    let kind = ATTRIBUTE_NAMES
                        .iter()
                        .find(|(known, _)| *known == oid)
                        .map_or(oid.clone(), |(_, short)| (*short).to_owned());
                    let value = match attribute.as_str() {
                        Ok(text) => escape_dn_value(text),
                        Err(_) => {
                            let value = attribute.attr_value();
                            let der = value.to_der_vec().unwrap_or_else(|_| value.data.to_vec());
                            format!("#{}", hex::encode(der))
                        }
                    };
                    format!("{kind}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// Escapes a DN attribute value (RFC 4514 §2.4).
fn escape_dn_value(value: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut escaped = String::with_capacity(value.len());
    for (position, character) in value.chars().enumerate() {
        match character {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                escaped.push('\\');
                escaped.push(character);
            }
            '#' if position == 0 => escaped.push_str("\\#"),
            ' ' if position == 0 || position == last => escaped.push_str("\\ "),
            '\0' => escaped.push_str("\\00"),
            _ => escaped.push(character),
        }
    }
    escaped
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use pivtap_testkit::pki::{fixture_der, test_ca_crl};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    };

    fn store(crls: &[Vec<u8>]) -> TrustStore {
        TrustStore::new(&[fixture_der("ca/test-ca.pem")], crls).unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// A CA made for the test, with its key.
    struct TestCa {
        certificate: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn test_ca(name: &str) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).unwrap().der().to_vec();
        TestCa {
            certificate,
            issuer: Issuer::new(params, key),
        }
    }

    /// A card certificate for a fresh key, issued by `ca`, shaped by `edit`.
    fn issue(ca: &TestCa, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Test Card");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut params);
        params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
    }

    #[test]
    fn alices_facts_are_read() {
        let der = fixture_der("certs/alice.pem");
        let facts = CertificateFacts::from_der(&der).unwrap();
        assert_eq!(facts.der, der);
        assert_eq!(
            facts.subject,
            "CN=Alice Example,serialNumber=E1001,OU=Field,O=Example Corp"
        );
        assert_eq!(facts.issuer, "CN=pivtap Test CA,O=pivtap test");
        assert_eq!(facts.common_name.as_deref(), Some("Alice Example"));
        assert_eq!(facts.subject_serial_number.as_deref(), Some("E1001"));
        assert_eq!(facts.emails, ["alice@example.com"]);
        assert!(facts.upns.is_empty());
        assert_eq!(facts.key, KeyKind::Rsa { bits: 2048 });
        assert_eq!(facts.key.to_string(), "RSA-2048");
        assert_eq!(facts.fingerprint, hex::encode(Sha256::digest(&der)));
        assert_eq!(facts.fingerprint.len(), 64);
        assert!(facts.not_before < facts.not_after);
        assert!(facts.is_valid_at(now()));
        let parsed = x509_parser::parse_x509_certificate(&der).unwrap().1;
        assert_eq!(
            facts.serial,
            parsed
                .raw_serial_as_string()
                .replace(':', "")
                .trim_start_matches("00")
        );
        assert!(
            facts
                .serial
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    #[test]
    fn carols_upn_and_bobs_curve_are_read() {
        let carol = CertificateFacts::from_der(&fixture_der("certs/carol.pem")).unwrap();
        assert_eq!(carol.upns, ["carol@corp.example.com"]);
        assert_eq!(carol.emails, ["carol@example.com"]);
        assert_eq!(carol.subject_serial_number, None);
        let bob = CertificateFacts::from_der(&fixture_der("certs/bob.pem")).unwrap();
        assert_eq!(bob.key, KeyKind::EcP256);
        assert_eq!(bob.subject, "CN=Bob Example,OU=Field,O=Example Corp");
    }

    #[test]
    fn the_expired_card_is_outside_its_validity() {
        let facts = CertificateFacts::from_der(&fixture_der("certs/expired.pem")).unwrap();
        let new_year_2021 = OffsetDateTime::from_unix_timestamp(1_609_459_200).unwrap();
        assert_eq!(facts.not_after, new_year_2021);
        assert!(!facts.is_valid_at(now()));
        assert!(facts.is_valid_at(new_year_2021 - time::Duration::days(180)));
    }

    #[test]
    fn the_public_key_is_the_spki_bit_string() {
        let (facts, key) =
            CertificateFacts::with_public_key(&fixture_der("certs/bob.pem")).unwrap();
        assert_eq!(facts.key, KeyKind::EcP256);
        assert_eq!(key.len(), 65);
        assert_eq!(key.first(), Some(&0x04));
        let (_, rsa) = CertificateFacts::with_public_key(&fixture_der("certs/alice.pem")).unwrap();
        // DER RSAPublicKey: SEQUENCE { INTEGER modulus, INTEGER exponent }.
        assert_eq!(rsa.first(), Some(&0x30));
    }

    #[test]
    fn bad_der_is_refused() {
        let der = fixture_der("certs/alice.pem");
        assert_eq!(
            CertificateFacts::from_der(&der[..der.len() - 1]),
            Err(CertificateError::Malformed)
        );
        assert_eq!(
            CertificateFacts::from_der(b""),
            Err(CertificateError::Malformed)
        );
        let mut trailing = der.clone();
        trailing.extend_from_slice(b"xx");
        assert_eq!(
            CertificateFacts::from_der(&trailing),
            Err(CertificateError::TrailingData { len: 2 })
        );
    }

    #[test]
    fn names_with_special_characters_are_escaped() {
        let ca = test_ca("Escapes CA");
        let der = issue(&ca, |params| {
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::OrganizationName, "Smith, Jones & Co");
            params
                .distinguished_name
                .push(DnType::CommonName, "#1 \"Boss\" ");
        });
        let facts = CertificateFacts::from_der(&der).unwrap();
        assert_eq!(facts.subject, r#"CN=\#1 \"Boss\"\ ,O=Smith\, Jones & Co"#);
        assert_eq!(facts.common_name.as_deref(), Some("#1 \"Boss\" "));
        assert_eq!(facts.issuer, "CN=Escapes CA");
        assert!(facts.emails.is_empty());
    }

    /// DER of a TLV with a short length.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        assert!(content.len() < 128);
        let mut der = vec![tag, content.len() as u8];
        der.extend_from_slice(content);
        der
    }

    /// One attribute of a test name: OID content, value tag, value content.
    type TestAttribute<'a> = (&'a [u8], u8, &'a [u8]);

    /// DER of a Name: RDNs in order (least specific first), each a set of attributes.
    fn name_der(rdns: &[&[TestAttribute<'_>]]) -> Vec<u8> {
        let rdns: Vec<u8> = rdns
            .iter()
            .flat_map(|rdn| {
                let set: Vec<u8> = rdn
                    .iter()
                    .flat_map(|(oid, tag, value)| {
                        tlv(0x30, &[tlv(0x06, oid), tlv(*tag, value)].concat())
                    })
                    .collect();
                tlv(0x31, &set)
            })
            .collect();
        tlv(0x30, &rdns)
    }

    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    const OU: &[u8] = &[0x55, 0x04, 0x0b];
    const UTF8: u8 = 0x0c;

    /// The RFC 4514 text of a one-attribute name `CN=<value>` (UTF8String).
    fn printed(value: &[u8]) -> String {
        let der = name_der(&[&[(CN, UTF8, value)]]);
        let (rest, name) = X509Name::from_der(&der).unwrap();
        assert!(rest.is_empty());
        rfc4514(&name)
    }

    #[test]
    fn oid_arcs_match_the_dotted_forms_the_reader_uses() {
        let dotted = |arcs: &[u64]| {
            arcs.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(".")
        };
        assert_eq!(dotted(&oid::UPN), OID_UPN);
        assert_eq!(dotted(&oid::SERIAL_NUMBER), OID_SERIAL_NUMBER);
        assert_eq!(dotted(&oid::SMARTCARD_LOGON), "1.3.6.1.4.1.311.20.2.2");
    }

    #[test]
    fn rfc4514_escapes_the_special_characters_anywhere() {
        for special in [',', '+', '"', '\\', '<', '>', ';'] {
            let value = format!("a{special}b");
            assert_eq!(printed(value.as_bytes()), format!("CN=a\\{special}b"));
        }
        // '=' may stay as it is (RFC 4514 §2.4 requires no escape for it).
        assert_eq!(printed(b"a=b"), "CN=a=b");
        assert_eq!(printed(b"a\0b"), "CN=a\\00b");
        assert_eq!(printed("Zoë".as_bytes()), "CN=Zoë");
    }

    #[test]
    fn rfc4514_escapes_leading_and_trailing_spaces_and_a_leading_hash() {
        assert_eq!(printed(b" x"), "CN=\\ x");
        assert_eq!(printed(b"x "), "CN=x\\ ");
        assert_eq!(printed(b" "), "CN=\\ ");
        assert_eq!(printed(b"a b"), "CN=a b");
        assert_eq!(printed(b"#x"), "CN=\\#x");
        assert_eq!(printed(b"x#"), "CN=x#");
        assert_eq!(printed(b" #x "), "CN=\\ #x\\ ");
        assert_eq!(printed(b""), "CN=");
    }

    #[test]
    fn rfc4514_prints_rdns_most_specific_first_and_joins_multi_valued_ones() {
        let der = name_der(&[
            &[(O, 0x13, b"Example")],
            &[(OU, UTF8, b"Field"), (CN, UTF8, b"Alice")],
        ]);
        let (_, name) = X509Name::from_der(&der).unwrap();
        assert_eq!(rfc4514(&name), "OU=Field+CN=Alice,O=Example");
    }

    #[test]
    fn rfc4514_prints_values_that_are_not_text_as_hex_der() {
        // A UTF8String whose bytes are not UTF-8, an OCTET STRING, and an
        // attribute type without a short name (givenName, 2.5.4.42).
        let der = name_der(&[
            &[(CN, UTF8, &[0xff, 0xfe])],
            &[(O, 0x04, &[0x01, 0x02])],
            &[(&[0x55, 0x04, 0x2a], UTF8, b"Al")],
        ]);
        let (_, name) = X509Name::from_der(&der).unwrap();
        assert_eq!(rfc4514(&name), "2.5.4.42=Al,O=#04020102,CN=#0c02fffe");
    }

    #[test]
    fn several_sans_and_long_serials_are_read() {
        let ca = test_ca("SAN CA");
        let der = issue(&ca, |params| {
            params.serial_number = Some(SerialNumber::from_slice(&[0x80, 0x01]));
            params.subject_alt_names = vec![
                SanType::Rfc822Name("one@example.com".try_into().unwrap()),
                SanType::DnsName("host.example.com".try_into().unwrap()),
                SanType::Rfc822Name("two@example.com".try_into().unwrap()),
            ];
        });
        let facts = CertificateFacts::from_der(&der).unwrap();
        assert_eq!(facts.emails, ["one@example.com", "two@example.com"]);
        assert_eq!(facts.serial, "8001");
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "");
    }

    #[test]
    fn bit_length_ignores_leading_zeros() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x01, 0x00]), 9);
        assert_eq!(bit_length(&[0x00]), 0);
        assert_eq!(bit_length(&[]), 0);
    }

    #[test]
    fn fixture_cards_chain_to_the_test_ca() {
        let store = store(&[]);
        for card in ["alice", "bob", "carol"] {
            let der = fixture_der(&format!("certs/{card}.pem"));
            assert_eq!(store.validate(&der, &[], now()), Ok(()), "{card}");
        }
    }

    #[test]
    fn a_card_from_another_ca_is_untrusted() {
        let result = store(&[]).validate(&fixture_der("certs/untrusted.pem"), &[], now());
        assert_eq!(
            result,
            Err(ChainError::Untrusted(webpki::Error::UnknownIssuer))
        );
        // Sending the rogue CA along as an "intermediate" changes nothing.
        let result = store(&[]).validate(
            &fixture_der("certs/untrusted.pem"),
            &[fixture_der("ca/rogue-ca.pem")],
            now(),
        );
        assert!(matches!(result, Err(ChainError::Untrusted(_))));
    }

    #[test]
    fn an_expired_card_is_expired() {
        let result = store(&[]).validate(&fixture_der("certs/expired.pem"), &[], now());
        assert_eq!(result, Err(ChainError::Expired));
    }

    #[test]
    fn a_card_listed_in_a_crl_is_revoked_and_others_are_not() {
        let alice = fixture_der("certs/alice.pem");
        let serial = CertificateFacts::from_der(&alice).unwrap().serial;
        let store = store(&[test_ca_crl(&[&serial])]);
        assert_eq!(store.validate(&alice, &[], now()), Err(ChainError::Revoked));
        assert_eq!(
            store.validate(&fixture_der("certs/bob.pem"), &[], now()),
            Ok(())
        );
    }

    #[test]
    fn a_card_of_a_ca_without_a_crl_is_not_refused_for_that() {
        let ca = test_ca("No CRL CA");
        let der = issue(&ca, |_| {});
        let store = TrustStore::new(
            &[fixture_der("ca/test-ca.pem"), ca.certificate.clone()],
            &[test_ca_crl(&[])],
        )
        .unwrap();
        assert_eq!(store.validate(&der, &[], now()), Ok(()));
    }

    #[test]
    fn intermediates_come_from_the_chain_sent() {
        let root = test_ca("Root CA");
        let (intermediate_der, card) = intermediate_and_card(&root, |_| {});
        let store = TrustStore::new(&[root.certificate], &[]).unwrap();
        assert_eq!(store.validate(&card, &[intermediate_der], now()), Ok(()));
        assert_eq!(
            store.validate(&card, &[], now()),
            Err(ChainError::Untrusted(webpki::Error::UnknownIssuer))
        );
    }

    /// An intermediate CA of `root` shaped by `edit`, and a card it issued.
    fn intermediate_and_card(
        root: &TestCa,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Issuing CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        edit(&mut params);
        let der = params.signed_by(&key, &root.issuer).unwrap().der().to_vec();
        let intermediate = TestCa {
            certificate: der.clone(),
            issuer: Issuer::new(params, key),
        };
        (der, issue(&intermediate, |_| {}))
    }

    /// What `openssl verify` says of the chain, or `None` without openssl.
    fn openssl_accepts(root: &[u8], intermediate: &[u8], card: &[u8]) -> Option<bool> {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, der: &[u8]| {
            let body = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = body
                .as_bytes()
                .chunks(64)
                .map(|line| std::str::from_utf8(line).unwrap())
                .collect();
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                ),
            )
            .unwrap();
            path
        };
        let (root, intermediate, card) = (
            write("root.pem", root),
            write("intermediate.pem", intermediate),
            write("card.pem", card),
        );
        let output = std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(root)
            .arg("-untrusted")
            .arg(intermediate)
            .arg(card)
            .output()
            .ok()?;
        Some(output.status.success())
    }

    /// Issue 11, item 8: an intermediate CA whose keyUsage lacks keyCertSign was accepted
    /// (rustls-webpki does not check a CA's key usage); RFC 5280 4.2.1.3 forbids verifying
    /// certificate signatures with its key, and openssl refuses the chain.
    #[test]
    fn an_intermediate_without_key_cert_sign_is_refused() {
        let root = test_ca("Root CA");
        let store = TrustStore::new(std::slice::from_ref(&root.certificate), &[]).unwrap();
        let (good_ca, good_card) = intermediate_and_card(&root, |_| {});
        assert_eq!(
            store.validate(&good_card, std::slice::from_ref(&good_ca), now()),
            Ok(())
        );
        let (signing_only_ca, card) = intermediate_and_card(&root, |params| {
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        });
        assert_eq!(
            store.validate(&card, std::slice::from_ref(&signing_only_ca), now()),
            Err(ChainError::NotACertificateSigner)
        );
        // openssl agrees on both chains, where it is installed.
        if let Some(accepted) = openssl_accepts(&root.certificate, &good_ca, &good_card) {
            assert!(accepted, "openssl accepts the chain with keyCertSign");
            assert_eq!(
                openssl_accepts(&root.certificate, &signing_only_ca, &card),
                Some(false),
                "openssl refuses the chain without keyCertSign"
            );
        }
        // An intermediate without keyUsage may sign certificates (RFC 5280 4.2.1.3).
        let (no_key_usage_ca, card) =
            intermediate_and_card(&root, |params| params.key_usages.clear());
        assert_eq!(
            store.validate(&card, std::slice::from_ref(&no_key_usage_ca), now()),
            Ok(())
        );
    }

    /// basicConstraints cA=true is required of every CA in the path (webpki checks it for
    /// intermediates; pivtap checks again, and checks trust anchors when loading them).
    #[test]
    fn every_ca_of_the_path_needs_basic_constraints_ca() {
        let root = test_ca("Root CA");
        let store = TrustStore::new(std::slice::from_ref(&root.certificate), &[]).unwrap();
        for is_ca in [IsCa::NoCa, IsCa::ExplicitNoCa] {
            let (not_ca, card) = intermediate_and_card(&root, |params| params.is_ca = is_ca);
            assert!(
                store
                    .validate(&card, std::slice::from_ref(&not_ca), now())
                    .is_err()
            );
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "Anchor");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let signing_only = params.self_signed(&key).unwrap().der().to_vec();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let not_ca = params.self_signed(&key).unwrap().der().to_vec();
        for anchor in [signing_only, not_ca] {
            assert_eq!(
                TrustStore::new(&[root.certificate.clone(), anchor], &[]).unwrap_err(),
                CertificateError::TrustAnchorNotCa { index: 1 }
            );
        }
    }

    #[test]
    fn key_usage_without_digital_signature_is_refused() {
        let ca = test_ca("KU CA");
        let store = TrustStore::new(std::slice::from_ref(&ca.certificate), &[]).unwrap();
        let encipher_only = issue(&ca, |params| {
            params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        });
        assert_eq!(
            store.validate(&encipher_only, &[], now()),
            Err(ChainError::KeyUsage)
        );
        let no_key_usage = issue(&ca, |params| params.key_usages.clear());
        assert_eq!(store.validate(&no_key_usage, &[], now()), Ok(()));
    }

    #[test]
    fn extended_key_usage_must_allow_client_auth() {
        let ca = test_ca("EKU CA");
        let store = TrustStore::new(std::slice::from_ref(&ca.certificate), &[]).unwrap();
        let server_only = issue(&ca, |params| {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        assert!(matches!(
            store.validate(&server_only, &[], now()),
            Err(ChainError::Untrusted(_))
        ));
    }

    #[test]
    fn a_ca_certificate_cannot_be_a_card() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let ca = params.self_signed(&key).unwrap().der().to_vec();
        let store = TrustStore::new(std::slice::from_ref(&ca), &[]).unwrap();
        assert_eq!(
            store.validate(&ca, &[], now()),
            Err(ChainError::Untrusted(webpki::Error::CaUsedAsEndEntity))
        );
        // Without digitalSignature, the key usage check refuses it first.
        let test_ca = fixture_der("ca/test-ca.pem");
        assert_eq!(
            store.validate(&test_ca, &[], now()),
            Err(ChainError::KeyUsage)
        );
    }

    #[test]
    fn a_card_not_yet_valid_is_expired() {
        let ca = test_ca("Future CA");
        let store = TrustStore::new(std::slice::from_ref(&ca.certificate), &[]).unwrap();
        let future = issue(&ca, |params| {
            params.not_before = now() + time::Duration::days(1);
            params.not_after = now() + time::Duration::days(2);
        });
        assert_eq!(
            store.validate(&future, &[], now()),
            Err(ChainError::Expired)
        );
    }

    #[test]
    fn bad_trust_configuration_names_the_entry() {
        assert_eq!(
            TrustStore::new(&[], &[]).unwrap_err(),
            CertificateError::NoTrustAnchors
        );
        let good = fixture_der("ca/test-ca.pem");
        assert!(matches!(
            TrustStore::new(&[good.clone(), b"junk".to_vec()], &[]),
            Err(CertificateError::TrustAnchor { index: 1, .. })
        ));
        assert!(matches!(
            TrustStore::new(&[good], &[b"junk".to_vec()]),
            Err(CertificateError::Crl { index: 0, .. })
        ));
    }
}
