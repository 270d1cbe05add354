//! The one certificate authority (accepted in one place, for the server and `pivtap vcard new`) and the card certificate profile of `pivtap vcard new` and the fixtures.
//!
//! The card keeps its private key; the issuer sees only the public key, as a
//! DER SubjectPublicKeyInfo. Every certificate follows one smartcard-logon
//! profile: version 3, a random positive 16-byte serial number, keyUsage
//! digitalSignature (critical), extendedKeyUsage clientAuth and Microsoft
//! smartcard logon, basicConstraints CA:FALSE (critical), subject and
//! authority key identifiers, and an optional subjectAltName with the e-mail
//! address (rfc822Name) and the Microsoft user principal name (otherName).

use std::fmt;
use std::path::{Path, PathBuf};

use pivtap_protocol::certificate::oid;
use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, Issuer, KeyPair, OtherNameValue,
    SanType, SubjectPublicKeyInfo,
};
use time::{OffsetDateTime, UtcOffset};
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::parse_x509_pem;
use zeroize::{Zeroize, Zeroizing};

/// Characters that a backslash may escape in a subject string (RFC 4514, section 2.4).
const ESCAPABLE_SUBJECT_CHARS: &str = ",+\"\\<>;=# ";

/// Why a CA could not be loaded or a certificate could not be issued.
///
/// Messages name the file or value at fault but never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// A CA file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// A CA file holds something [`CertificateAuthority::from_pem`] rejects.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        error: Box<IssueError>,
    },
    /// The CA certificate is not a PEM-encoded X.509 certificate.
    #[error("the CA certificate is not a PEM-encoded X.509 certificate")]
    CaCertificateUnreadable,
    /// The CA certificate lacks basicConstraints CA:TRUE.
    #[error("the CA certificate is not a CA certificate: basicConstraints CA:TRUE is missing")]
    NotACaCertificate,
    /// The CA certificate's keyUsage does not allow signing certificates.
    #[error("the CA certificate may not sign certificates: its keyUsage lacks keyCertSign")]
    CaCannotSignCertificates,
    /// The CA's subject cannot be copied, unchanged, into the issuer field.
    #[error(
        "the CA certificate has a subject that cannot be copied into issued certificates: {reason}"
    )]
    CaSubjectUnsupported {
        /// What is wrong with the subject.
        reason: &'static str,
    },
    /// The CA private key is not a readable, unencrypted private key of a supported type.
    #[error(
        "the CA private key is not an unencrypted PEM private key (PKCS#8) of a supported type \
         (ECDSA P-256, P-384, P-521, RSA or Ed25519)"
    )]
    CaKeyUnreadable,
    /// The CA private key is not the key of the CA certificate.
    #[error("the CA private key does not belong to the CA certificate")]
    CaKeyMismatch,
    /// The subject string has no attributes.
    #[error("the subject is empty: give at least one attribute, e.g. CN=Alice Example")]
    EmptySubject,
    /// The subject string has an empty attribute between commas.
    #[error("the subject has an empty attribute (a doubled, leading or trailing comma)")]
    EmptySubjectAttribute,
    /// A subject attribute is not `TYPE=VALUE`.
    #[error("subject attribute `{attribute}` is not of the form TYPE=VALUE")]
    SubjectAttributeSyntax {
        /// The attribute as written.
        attribute: String,
    },
    /// A subject attribute type outside the supported set.
    #[error("unknown subject attribute type `{name}`: use CN, O, OU, C, L, ST or serialNumber")]
    UnknownSubjectAttribute {
        /// The attribute type as written.
        name: String,
    },
    /// A subject attribute type given twice.
    #[error("subject attribute {name} appears more than once")]
    DuplicateSubjectAttribute {
        /// The attribute's keyword.
        name: &'static str,
    },
    /// A subject attribute value that the attribute type does not allow.
    #[error("subject attribute {name}: {problem}")]
    InvalidSubjectValue {
        /// The attribute's keyword.
        name: &'static str,
        /// What is wrong with the value.
        problem: &'static str,
    },
    /// A backslash at the end of the subject or before a character that needs no escape.
    #[error(
        "the subject has a stray backslash: a backslash may only escape one of , + \" \\ < > ; = # or a space"
    )]
    InvalidSubjectEscape,
    /// Several attributes joined with `+` into one RDN.
    #[error(
        "multi-valued subject attributes (joined with an unescaped +) are not supported; write a literal plus as \\+"
    )]
    MultiValuedSubjectAttribute,
    /// The e-mail address is not `local@domain` in printable ASCII.
    #[error("e-mail address `{email}` is not of the form local@domain in printable ASCII")]
    InvalidEmail {
        /// The address as given.
        email: String,
    },
    /// The user principal name is not `user@domain`.
    #[error("user principal name `{upn}` is not of the form user@domain")]
    InvalidUserPrincipalName {
        /// The name as given.
        upn: String,
    },
    /// not_after is not later than not_before.
    #[error("the certificate's not-after time must be later than its not-before time")]
    ValidityReversed,
    /// A validity time outside the years 0 to 9999 (UTC) that X.509 can express.
    #[error("certificate validity times must fall within the years 0 to 9999 (UTC)")]
    ValidityOutOfRange,
    /// The card's public key is malformed or of an algorithm the issuer does not know.
    #[error(
        "the card's public key is not a supported SubjectPublicKeyInfo (RSA, ECDSA P-256, P-384, P-521 or Ed25519)"
    )]
    UnsupportedPublicKey {
        /// What rcgen reported.
        #[source]
        source: rcgen::Error,
    },
    /// Building or signing the certificate failed.
    #[error("signing the certificate failed")]
    Signing {
        /// What rcgen reported.
        #[source]
        source: rcgen::Error,
    },
}

/// A certificate authority: its certificate and its private key.
///
/// The private key is wiped from memory when the value is dropped and is never
/// shown by `Debug`.
pub struct CertificateAuthority {
    certificate_der: Vec<u8>,
    key_pair: KeyPair,
    /// The certificate's subject, RFC 4514.
    name: String,
    /// When the certificate expires.
    not_after: OffsetDateTime,
}

impl CertificateAuthority {
    /// Loads a CA from a PEM certificate (the first `CERTIFICATE` block) and
    /// its unencrypted PEM private key (PKCS#8).
    ///
    /// The certificate must have basicConstraints CA:TRUE, allow keyCertSign
    /// if it has a keyUsage, and match the key.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, IssueError> {
        let certificate_der = match parse_x509_pem(certificate_pem.as_bytes()) {
            Ok((_, pem)) if pem.label == "CERTIFICATE" => pem.contents,
            _ => return Err(IssueError::CaCertificateUnreadable),
        };
        // The certificate is judged before the key is read, so its faults are named first.
        check_ca_certificate(&certificate_der)?;
        let key_pair = KeyPair::from_pem(key_pem).map_err(|_| IssueError::CaKeyUnreadable)?;
        Self::from_der_and_key(certificate_der, key_pair)
    }

    /// A CA from its certificate (DER) and key: the one place a CA is accepted, for the
    /// server's issuer and `pivtap vcard new` alike. The certificate must have
    /// basicConstraints CA:TRUE, allow keyCertSign if it has a keyUsage, and match the key.
    ///
    /// # Errors
    /// [`IssueError::CaCertificateUnreadable`], the CA checks' errors,
    /// [`IssueError::CaKeyMismatch`] or [`IssueError::CaSubjectUnsupported`].
    pub fn from_der_and_key(
        certificate_der: Vec<u8>,
        key_pair: KeyPair,
    ) -> Result<Self, IssueError> {
        let certificate = check_ca_certificate(&certificate_der)?;
        if !super::is_key_of(&key_pair, &certificate) {
            return Err(IssueError::CaKeyMismatch);
        }
        let name = pivtap_protocol::certificate::rfc4514(certificate.subject());
        let not_after = certificate.validity().not_after.to_datetime();
        drop(certificate);
        let authority = Self {
            certificate_der,
            key_pair,
            name,
            not_after,
        };
        authority
            .issuer()
            .map_err(|_| IssueError::CaSubjectUnsupported {
                reason: "an attribute uses a string type that cannot be copied",
            })?;
        Ok(authority)
    }

    /// The CA certificate, DER.
    #[must_use]
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The CA certificate's subject, RFC 4514.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the CA certificate expires.
    #[must_use]
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Loads a CA from a PEM certificate file and a PEM private key file, as
    /// [`from_pem`](Self::from_pem) does; errors name the file at fault.
    pub fn from_files(certificate_path: &Path, key_path: &Path) -> Result<Self, IssueError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| IssueError::ReadFile {
                path: path.to_owned(),
                source,
            })
        };
        let certificate_pem = read(certificate_path)?;
        let key_pem = Zeroizing::new(read(key_path)?);
        Self::from_pem(&certificate_pem, &key_pem).map_err(|error| {
            let path = match error {
                IssueError::CaKeyUnreadable | IssueError::CaKeyMismatch => key_path,
                _ => certificate_path,
            };
            IssueError::InFile {
                path: path.to_owned(),
                error: Box::new(error),
            }
        })
    }

    /// The rcgen issuer: the CA's subject and key identifier, and its key.
    pub(crate) fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, rcgen::Error> {
        Issuer::from_ca_cert_der(&self.certificate_der.as_slice().into(), &self.key_pair)
    }
}

/// The parsed CA certificate, once it is an X.509 certificate that may issue others.
fn check_ca_certificate(der: &[u8]) -> Result<X509Certificate<'_>, IssueError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| IssueError::CaCertificateUnreadable)?;
    check_can_issue(&certificate)?;
    Ok(certificate)
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field(
                "certificate_der",
                &format_args!("{} bytes", self.certificate_der.len()),
            )
            .field("key_pair", &"REDACTED")
            .finish()
    }
}

impl Drop for CertificateAuthority {
    fn drop(&mut self) {
        self.key_pair.zeroize();
    }
}

/// Checks that a certificate may act as a CA, and that its subject survives
/// being copied into the issuer field of the certificates it signs.
fn check_can_issue(certificate: &X509Certificate<'_>) -> Result<(), IssueError> {
    match certificate.basic_constraints() {
        Ok(Some(constraints)) if constraints.value.ca => {}
        _ => return Err(IssueError::NotACaCertificate),
    }
    match certificate.key_usage() {
        Ok(Some(key_usage)) if !key_usage.value.key_cert_sign() => {
            return Err(IssueError::CaCannotSignCertificates);
        }
        Ok(_) => {}
        Err(_) => return Err(IssueError::CaCertificateUnreadable),
    }
    let unsupported = |reason| IssueError::CaSubjectUnsupported { reason };
    let mut attribute_types = Vec::new();
    for rdn in certificate.subject().iter() {
        if rdn.iter().count() != 1 {
            return Err(unsupported("it has a multi-valued RDN"));
        }
        for attribute in rdn.iter() {
            if attribute_types.contains(attribute.attr_type()) {
                return Err(unsupported("an attribute type appears more than once"));
            }
            attribute_types.push(attribute.attr_type().clone());
        }
    }
    Ok(())
}

/// What goes into a card certificate besides its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateProfile {
    /// The subject in RFC 4514 style, most specific attribute first, e.g.
    /// `CN=Alice Example,serialNumber=E1001,OU=Field,O=Example Corp`.
    ///
    /// Supported attribute types (case-insensitive): CN, O, OU, C, L, ST,
    /// serialNumber, each at most once. A backslash escapes a literal
    /// `, + " \ < > ; = #` or space; spaces around types and values are
    /// ignored. As in RFC 4514 the string is the reverse of the DER order, so
    /// the example is encoded as O, OU, serialNumber, CN.
    pub subject: String,
    /// E-mail address, written as a subjectAltName rfc822Name.
    pub email: Option<String>,
    /// Microsoft user principal name, written as a subjectAltName otherName
    /// (OID 1.3.6.1.4.1.311.20.2.3, UTF8String).
    pub upn: Option<String>,
    /// Start of validity (truncated to whole seconds).
    pub not_before: OffsetDateTime,
    /// End of validity (truncated to whole seconds); must be later than `not_before`.
    pub not_after: OffsetDateTime,
}

impl CertificateProfile {
    /// Everything of the certificate except its serial number, key and signature.
    fn certificate_params(&self) -> Result<CertificateParams, IssueError> {
        let not_before = certificate_time(self.not_before)?;
        let not_after = certificate_time(self.not_after)?;
        if not_after <= not_before {
            return Err(IssueError::ValidityReversed);
        }
        let mut subject_alt_names = Vec::new();
        if let Some(email) = &self.email {
            subject_alt_names.push(email_subject_alt_name(email)?);
        }
        if let Some(upn) = &self.upn {
            subject_alt_names.push(upn_subject_alt_name(upn)?);
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = parse_subject(&self.subject)?;
        params.subject_alt_names = subject_alt_names;
        params.not_before = not_before;
        params.not_after = not_after;
        super::end_entity(&mut params, true);
        Ok(params)
    }
}

/// Issues a certificate for the card key `subject_public_key_info_der`
/// (a DER SubjectPublicKeyInfo, RSA keys as rsaEncryption with NULL
/// parameters), signed by `ca`, and returns it DER-encoded.
pub fn issue(
    ca: &CertificateAuthority,
    subject_public_key_info_der: &[u8],
    profile: &CertificateProfile,
) -> Result<Vec<u8>, IssueError> {
    let mut params = profile.certificate_params()?;
    params.serial_number = Some(super::random_serial());
    let public_key = SubjectPublicKeyInfo::from_der(subject_public_key_info_der)
        .map_err(|source| IssueError::UnsupportedPublicKey { source })?;
    let issuer = ca
        .issuer()
        .map_err(|source| IssueError::Signing { source })?;
    let certificate = params
        .signed_by(&public_key, &issuer)
        .map_err(|source| IssueError::Signing { source })?;
    Ok(certificate.der().to_vec())
}

/// Converts a validity time to what X.509 stores: UTC, whole seconds, years 0 to 9999.
fn certificate_time(time: OffsetDateTime) -> Result<OffsetDateTime, IssueError> {
    time.checked_to_offset(UtcOffset::UTC)
        .filter(|utc| (0..=9999).contains(&utc.year()))
        .and_then(|utc| utc.replace_nanosecond(0).ok())
        .ok_or(IssueError::ValidityOutOfRange)
}

/// True if `address` is `local@domain` with both parts non-empty and a single `@`.
fn is_user_at_domain(address: &str) -> bool {
    matches!(address.split_once('@'),
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@'))
}

fn email_subject_alt_name(email: &str) -> Result<SanType, IssueError> {
    let invalid = || IssueError::InvalidEmail {
        email: email.to_owned(),
    };
    if !is_user_at_domain(email) || !email.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ia5String::try_from(email)
        .map(SanType::Rfc822Name)
        .map_err(|_| invalid())
}

fn upn_subject_alt_name(upn: &str) -> Result<SanType, IssueError> {
    if !is_user_at_domain(upn) || upn.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(IssueError::InvalidUserPrincipalName {
            upn: upn.to_owned(),
        });
    }
    Ok(SanType::OtherName((
        oid::UPN.to_vec(),
        OtherNameValue::Utf8String(upn.to_owned()),
    )))
}

/// The subject attribute types a profile may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubjectAttribute {
    CommonName,
    Organization,
    OrganizationalUnit,
    Country,
    Locality,
    StateOrProvince,
    SerialNumber,
}

impl SubjectAttribute {
    const ALL: [Self; 7] = [
        Self::CommonName,
        Self::Organization,
        Self::OrganizationalUnit,
        Self::Country,
        Self::Locality,
        Self::StateOrProvince,
        Self::SerialNumber,
    ];

    /// The RFC 4514 keyword (OpenSSL's for serialNumber).
    fn keyword(self) -> &'static str {
        match self {
            Self::CommonName => "CN",
            Self::Organization => "O",
            Self::OrganizationalUnit => "OU",
            Self::Country => "C",
            Self::Locality => "L",
            Self::StateOrProvince => "ST",
            Self::SerialNumber => "serialNumber",
        }
    }

    fn from_keyword(keyword: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|attribute| attribute.keyword().eq_ignore_ascii_case(keyword))
    }

    /// The RFC 5280 upper bound (ub-*) on the value's length, in characters.
    fn max_len(self) -> usize {
        match self {
            Self::CommonName | Self::Organization | Self::OrganizationalUnit => 64,
            Self::SerialNumber => 64,
            Self::Locality | Self::StateOrProvince => 128,
            Self::Country => 2,
        }
    }

    fn dn_type(self) -> DnType {
        match self {
            Self::CommonName => DnType::CommonName,
            Self::Organization => DnType::OrganizationName,
            Self::OrganizationalUnit => DnType::OrganizationalUnitName,
            Self::Country => DnType::CountryName,
            Self::Locality => DnType::LocalityName,
            Self::StateOrProvince => DnType::StateOrProvinceName,
            Self::SerialNumber => DnType::CustomDnType(oid::SERIAL_NUMBER.to_vec()),
        }
    }

    /// Encodes a value: C and serialNumber as PrintableString (as X.520
    /// requires), everything else as UTF8String (as RFC 5280 recommends).
    fn dn_value(self, value: &str) -> Result<DnValue, IssueError> {
        let invalid = |problem| IssueError::InvalidSubjectValue {
            name: self.keyword(),
            problem,
        };
        if value.is_empty() {
            return Err(invalid("the value is empty"));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid("the value contains a control character"));
        }
        match self {
            Self::Country => {
                if value.len() != 2 || !value.chars().all(|c| c.is_ascii_alphabetic()) {
                    return Err(invalid("must be a two-letter country code such as DE"));
                }
                PrintableString::try_from(value.to_ascii_uppercase())
                    .map(DnValue::PrintableString)
                    .map_err(|_| invalid("must be a two-letter country code such as DE"))
            }
            _ if value.chars().count() > self.max_len() => {
                Err(invalid("the value is longer than RFC 5280 allows"))
            }
            Self::SerialNumber => PrintableString::try_from(value)
                .map(DnValue::PrintableString)
                .map_err(|_| {
                    invalid("may only hold letters, digits, spaces and ' ( ) + , - . / : = ?")
                }),
            _ => Ok(DnValue::Utf8String(value.to_owned())),
        }
    }
}

/// One character of a subject string after escapes are resolved.
#[derive(Debug, Clone, Copy)]
struct SubjectChar {
    value: char,
    escaped: bool,
}

impl SubjectChar {
    fn is_unescaped(self, c: char) -> bool {
        !self.escaped && self.value == c
    }

    fn is_unescaped_space(self) -> bool {
        !self.escaped && self.value.is_whitespace()
    }
}

/// Parses a subject string (see [`CertificateProfile::subject`]) into a
/// distinguished name in DER order.
fn parse_subject(subject: &str) -> Result<DistinguishedName, IssueError> {
    let chars = resolve_subject_escapes(subject)?;
    if chars.iter().all(|c| c.is_unescaped_space()) {
        return Err(IssueError::EmptySubject);
    }
    let mut attributes: Vec<(SubjectAttribute, DnValue)> = Vec::new();
    for raw_attribute in chars.split(|c| c.is_unescaped(',')) {
        let (attribute, value) = parse_subject_attribute(raw_attribute)?;
        if attributes.iter().any(|(seen, _)| *seen == attribute) {
            return Err(IssueError::DuplicateSubjectAttribute {
                name: attribute.keyword(),
            });
        }
        attributes.push((attribute, attribute.dn_value(&value)?));
    }
    let mut name = DistinguishedName::new();
    for (attribute, value) in attributes.into_iter().rev() {
        name.push(attribute.dn_type(), value);
    }
    Ok(name)
}

fn resolve_subject_escapes(subject: &str) -> Result<Vec<SubjectChar>, IssueError> {
    let mut resolved = Vec::with_capacity(subject.len());
    let mut chars = subject.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(escaped) if ESCAPABLE_SUBJECT_CHARS.contains(escaped) => {
                    resolved.push(SubjectChar {
                        value: escaped,
                        escaped: true,
                    });
                }
                _ => return Err(IssueError::InvalidSubjectEscape),
            }
        } else {
            resolved.push(SubjectChar {
                value: c,
                escaped: false,
            });
        }
    }
    Ok(resolved)
}

/// Splits one `TYPE=VALUE` attribute; surrounding unescaped spaces are dropped.
fn parse_subject_attribute(
    raw_attribute: &[SubjectChar],
) -> Result<(SubjectAttribute, String), IssueError> {
    let raw_attribute = trim_unescaped_spaces(raw_attribute);
    if raw_attribute.is_empty() {
        return Err(IssueError::EmptySubjectAttribute);
    }
    let syntax_error = || IssueError::SubjectAttributeSyntax {
        attribute: raw_attribute.iter().map(|c| c.value).collect(),
    };
    let equals = raw_attribute
        .iter()
        .position(|c| c.is_unescaped('='))
        .ok_or_else(syntax_error)?;
    let (raw_type, raw_value) = raw_attribute.split_at(equals);
    let raw_type = trim_unescaped_spaces(raw_type);
    if raw_type.is_empty() || raw_type.iter().any(|c| c.escaped) {
        return Err(syntax_error());
    }
    let type_name: String = raw_type.iter().map(|c| c.value).collect();
    let attribute = SubjectAttribute::from_keyword(&type_name)
        .ok_or(IssueError::UnknownSubjectAttribute { name: type_name })?;
    let raw_value = trim_unescaped_spaces(raw_value.get(1..).unwrap_or_default());
    if raw_value.iter().any(|c| c.is_unescaped('+')) {
        return Err(IssueError::MultiValuedSubjectAttribute);
    }
    Ok((attribute, raw_value.iter().map(|c| c.value).collect()))
}

fn trim_unescaped_spaces(chars: &[SubjectChar]) -> &[SubjectChar] {
    let start = chars
        .iter()
        .position(|c| !c.is_unescaped_space())
        .unwrap_or(chars.len());
    let end = chars
        .iter()
        .rposition(|c| !c.is_unescaped_space())
        .map_or(start, |last| last + 1);
    chars.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, IsCa, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
        PublicKeyData, RsaKeySize,
    };
    use x509_parser::der_parser::asn1_rs::Tag;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    /// A check that an error is the one expected.
    type ErrorCheck = fn(&IssueError) -> bool;

    const ALICE_SUBJECT: &str = "CN=Alice Example,serialNumber=E1001,OU=Field,O=Example Corp";

    /// A self-signed CA made with rcgen, returned with its certificate and key as PEM.
    fn make_ca(key_pair: KeyPair, common_name: &str) -> (String, String) {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "pivtap test");
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key_pair).expect("self-sign the CA");
        (certificate.pem(), key_pair.serialize_pem())
    }

    /// Everything `issue` checks about a profile, without issuing.
    fn check(profile: &CertificateProfile) -> Result<(), IssueError> {
        profile.certificate_params().map(drop)
    }

    fn p256_key() -> KeyPair {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a P-256 key")
    }

    fn rsa2048_key() -> KeyPair {
        KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)
            .expect("generate an RSA-2048 key")
    }

    fn p256_ca() -> CertificateAuthority {
        let (certificate_pem, key_pem) = make_ca(p256_key(), "pivtap Test CA");
        CertificateAuthority::from_pem(&certificate_pem, &key_pem).expect("load the test CA")
    }

    fn alice_profile() -> CertificateProfile {
        CertificateProfile {
            subject: ALICE_SUBJECT.to_owned(),
            email: Some("alice@example.com".to_owned()),
            upn: Some("alice@corp.example.com".to_owned()),
            not_before: rcgen::date_time_ymd(2024, 1, 1),
            not_after: rcgen::date_time_ymd(2044, 1, 1),
        }
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, certificate) =
            x509_parser::parse_x509_certificate(der).expect("parse the certificate");
        assert!(rest.is_empty(), "trailing bytes after the certificate");
        certificate
    }

    /// (OID, value) of every subject attribute, in DER order.
    fn subject_attributes(certificate: &X509Certificate<'_>) -> Vec<(String, String)> {
        certificate
            .subject()
            .iter_attributes()
            .map(|attribute| {
                (
                    attribute.attr_type().to_id_string(),
                    attribute.as_str().expect("string value").to_owned(),
                )
            })
            .collect()
    }

    fn subject_key_identifier(certificate: &X509Certificate<'_>) -> Option<Vec<u8>> {
        certificate
            .iter_extensions()
            .find_map(|extension| match extension.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
    }

    fn authority_key_identifier(certificate: &X509Certificate<'_>) -> Option<Vec<u8>> {
        certificate
            .iter_extensions()
            .find_map(|extension| match extension.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
    }

    /// Checks every property of the profile on a certificate issued for `spki`.
    fn assert_follows_profile(ca: &CertificateAuthority, spki: &[u8], der: &[u8]) {
        let profile = alice_profile();
        let certificate = parse(der);
        let ca_certificate = parse(&ca.certificate_der);

        assert_eq!(certificate.version(), x509_parser::x509::X509Version::V3);
        assert_eq!(
            certificate.issuer().as_raw(),
            ca_certificate.subject().as_raw()
        );
        assert_eq!(
            subject_attributes(&certificate),
            [
                ("2.5.4.10", "Example Corp"),
                ("2.5.4.11", "Field"),
                ("2.5.4.5", "E1001"),
                ("2.5.4.3", "Alice Example"),
            ]
            .map(|(oid, value)| (oid.to_owned(), value.to_owned()))
        );

        let serial = certificate.raw_serial();
        assert_eq!(serial.len(), 16);
        assert_eq!(serial.first().map(|byte| byte & 0xc0), Some(0x40));

        let validity = certificate.validity();
        assert_eq!(validity.not_before.to_datetime(), profile.not_before);
        assert_eq!(validity.not_after.to_datetime(), profile.not_after);
        assert_eq!(certificate.public_key().raw, spki);

        let san = certificate
            .subject_alternative_name()
            .expect("one subjectAltName")
            .expect("subjectAltName present");
        let upn = "alice@corp.example.com".as_bytes();
        let mut upn_value = vec![0xa0, u8::try_from(upn.len() + 2).unwrap(), 0x0c];
        upn_value.push(u8::try_from(upn.len()).unwrap());
        upn_value.extend_from_slice(upn);
        assert!(!san.critical);
        assert!(
            san.value
                .general_names
                .contains(&GeneralName::RFC822Name("alice@example.com"))
        );
        assert!(san.value.general_names.iter().any(|name| matches!(name,
            GeneralName::OtherName(oid, value)
                if oid.to_id_string() == "1.3.6.1.4.1.311.20.2.3" && *value == upn_value.as_slice())));

        let key_usage = certificate
            .key_usage()
            .expect("one keyUsage")
            .expect("keyUsage present");
        assert!(key_usage.critical);
        assert!(key_usage.value.digital_signature());
        assert!(!key_usage.value.key_cert_sign());

        let extended_key_usage = certificate
            .extended_key_usage()
            .expect("one extendedKeyUsage")
            .expect("extendedKeyUsage present");
        assert!(extended_key_usage.value.client_auth);
        assert!(
            extended_key_usage
                .value
                .other
                .iter()
                .any(|oid| oid.to_id_string() == "1.3.6.1.4.1.311.20.2.2")
        );

        let basic_constraints = certificate
            .basic_constraints()
            .expect("one basicConstraints")
            .expect("basicConstraints present");
        assert!(basic_constraints.critical);
        assert!(!basic_constraints.value.ca);

        assert!(subject_key_identifier(&certificate).is_some());
        assert_eq!(
            authority_key_identifier(&certificate),
            subject_key_identifier(&ca_certificate)
        );

        certificate
            .verify_signature(Some(ca_certificate.public_key()))
            .expect("signed by the CA key");
        let (other_ca_pem, _) = make_ca(p256_key(), "Other CA");
        let other_ca_der = parse_x509_pem(other_ca_pem.as_bytes()).unwrap().1.contents;
        assert!(
            certificate
                .verify_signature(Some(parse(&other_ca_der).public_key()))
                .is_err(),
            "the signature must not verify under another key"
        );
    }

    #[test]
    fn issues_a_profile_certificate_for_a_p256_key() {
        let ca = p256_ca();
        let spki = p256_key().subject_public_key_info();
        let der = issue(&ca, &spki, &alice_profile()).unwrap();
        assert_follows_profile(&ca, &spki, &der);
    }

    #[test]
    fn issues_a_profile_certificate_for_an_rsa_2048_key() {
        let ca = p256_ca();
        let spki = rsa2048_key().subject_public_key_info();
        let der = issue(&ca, &spki, &alice_profile()).unwrap();
        assert_follows_profile(&ca, &spki, &der);
    }

    #[test]
    fn an_rsa_ca_signs_with_sha256_with_rsa() {
        let (certificate_pem, key_pem) = make_ca(rsa2048_key(), "RSA CA");
        let ca = CertificateAuthority::from_pem(&certificate_pem, &key_pem).unwrap();
        let spki = p256_key().subject_public_key_info();
        let der = issue(&ca, &spki, &alice_profile()).unwrap();
        assert_follows_profile(&ca, &spki, &der);
        assert_eq!(
            parse(&der).signature_algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.11"
        );
    }

    #[test]
    fn serial_numbers_differ_between_certificates() {
        let ca = p256_ca();
        let spki = p256_key().subject_public_key_info();
        let first = issue(&ca, &spki, &alice_profile()).unwrap();
        let second = issue(&ca, &spki, &alice_profile()).unwrap();
        assert_ne!(parse(&first).raw_serial(), parse(&second).raw_serial());
    }

    #[test]
    fn san_is_omitted_without_email_and_upn() {
        let ca = p256_ca();
        let profile = CertificateProfile {
            email: None,
            upn: None,
            ..alice_profile()
        };
        let der = issue(&ca, &p256_key().subject_public_key_info(), &profile).unwrap();
        assert!(parse(&der).subject_alternative_name().unwrap().is_none());
    }

    #[test]
    fn validity_is_stored_in_utc_whole_seconds() {
        let ca = p256_ca();
        let late_2049_at_minus_one_hour = rcgen::date_time_ymd(2049, 12, 31)
            .replace_time(time::Time::from_hms_nano(23, 30, 0, 123_456_789).unwrap())
            .replace_offset(UtcOffset::from_hms(-1, 0, 0).unwrap());
        let profile = CertificateProfile {
            not_before: rcgen::date_time_ymd(1949, 6, 1),
            not_after: late_2049_at_minus_one_hour,
            ..alice_profile()
        };
        let der = issue(&ca, &p256_key().subject_public_key_info(), &profile).unwrap();
        let certificate = parse(&der);
        let validity = certificate.validity();
        assert_eq!(
            validity.not_before.to_datetime(),
            rcgen::date_time_ymd(1949, 6, 1)
        );
        assert_eq!(
            validity.not_after.to_datetime(),
            rcgen::date_time_ymd(2050, 1, 1).replace_time(time::Time::from_hms(0, 30, 0).unwrap())
        );
    }

    #[test]
    fn not_after_must_be_later_than_not_before() {
        let ca = p256_ca();
        let spki = p256_key().subject_public_key_info();
        for not_after in [
            rcgen::date_time_ymd(2024, 1, 1),
            rcgen::date_time_ymd(2023, 12, 31),
        ] {
            let profile = CertificateProfile {
                not_after,
                ..alice_profile()
            };
            assert!(matches!(
                issue(&ca, &spki, &profile),
                Err(IssueError::ValidityReversed)
            ));
        }
    }

    #[test]
    fn validity_beyond_what_x509_expresses_is_rejected() {
        let profile = CertificateProfile {
            not_before: rcgen::date_time_ymd(-1, 1, 1),
            ..alice_profile()
        };
        assert!(matches!(
            check(&profile),
            Err(IssueError::ValidityOutOfRange)
        ));
    }

    #[test]
    fn subject_parsing_handles_escapes_spaces_and_case() {
        let name = parse_subject(r"cn = Example\, Inc. \+ Co\  , o=A\\B, c=de").unwrap();
        let attributes: Vec<_> = name
            .iter()
            .map(|(ty, value)| (ty.clone(), value.clone()))
            .collect();
        assert_eq!(
            attributes,
            [
                (
                    DnType::CountryName,
                    DnValue::PrintableString(PrintableString::try_from("DE").unwrap())
                ),
                (
                    DnType::OrganizationName,
                    DnValue::Utf8String(r"A\B".to_owned())
                ),
                (
                    DnType::CommonName,
                    DnValue::Utf8String("Example, Inc. + Co ".to_owned())
                ),
            ]
        );
    }

    #[test]
    fn serial_number_and_country_are_printable_strings() {
        let ca = p256_ca();
        let profile = CertificateProfile {
            subject: "CN=Bob,serialNumber=E 1002,C=FI".to_owned(),
            ..alice_profile()
        };
        let der = issue(&ca, &p256_key().subject_public_key_info(), &profile).unwrap();
        let certificate = parse(&der);
        let tags: Vec<(String, Tag)> = certificate
            .subject()
            .iter_attributes()
            .map(|a| (a.attr_type().to_id_string(), a.attr_value().header.tag()))
            .collect();
        assert_eq!(
            tags,
            [
                ("2.5.4.6".to_owned(), Tag::PrintableString),
                ("2.5.4.5".to_owned(), Tag::PrintableString),
                ("2.5.4.3".to_owned(), Tag::Utf8String),
            ]
        );
    }

    #[test]
    fn bad_subjects_are_rejected_with_a_clear_reason() {
        let cases: [(&str, ErrorCheck); 14] = [
            ("", |e| matches!(e, IssueError::EmptySubject)),
            ("  ", |e| matches!(e, IssueError::EmptySubject)),
            ("CN=A,,O=B", |e| {
                matches!(e, IssueError::EmptySubjectAttribute)
            }),
            ("CN=A,", |e| matches!(e, IssueError::EmptySubjectAttribute)),
            (
                "CN Alice",
                |e| matches!(e, IssueError::SubjectAttributeSyntax { attribute } if attribute == "CN Alice"),
            ),
            ("=Alice", |e| {
                matches!(e, IssueError::SubjectAttributeSyntax { .. })
            }),
            (
                "UID=alice",
                |e| matches!(e, IssueError::UnknownSubjectAttribute { name } if name == "UID"),
            ),
            ("CN=A,cn=B", |e| {
                matches!(e, IssueError::DuplicateSubjectAttribute { name: "CN" })
            }),
            ("CN=", |e| {
                matches!(e, IssueError::InvalidSubjectValue { name: "CN", .. })
            }),
            ("CN=A,C=DEU", |e| {
                matches!(e, IssueError::InvalidSubjectValue { name: "C", .. })
            }),
            ("CN=A,serialNumber=E_1001", |e| {
                matches!(
                    e,
                    IssueError::InvalidSubjectValue {
                        name: "serialNumber",
                        ..
                    }
                )
            }),
            (r"CN=A\", |e| matches!(e, IssueError::InvalidSubjectEscape)),
            (r"CN=A\q", |e| matches!(e, IssueError::InvalidSubjectEscape)),
            ("CN=A+O=B", |e| {
                matches!(e, IssueError::MultiValuedSubjectAttribute)
            }),
        ];
        for (subject, expected) in cases {
            let profile = CertificateProfile {
                subject: subject.to_owned(),
                ..alice_profile()
            };
            match check(&profile) {
                Err(error) => assert!(expected(&error), "{subject:?}: unexpected {error:?}"),
                Ok(()) => panic!("{subject:?} was accepted"),
            }
        }
    }

    #[test]
    fn over_long_values_are_rejected() {
        let profile = CertificateProfile {
            subject: format!("CN={}", "x".repeat(65)),
            ..alice_profile()
        };
        assert!(matches!(
            check(&profile),
            Err(IssueError::InvalidSubjectValue { name: "CN", .. })
        ));
    }

    #[test]
    fn bad_email_and_upn_are_rejected() {
        for email in [
            "alice",
            "@example.com",
            "alice@",
            "a@b@c",
            "al ice@example.com",
            "älice@example.com",
        ] {
            let profile = CertificateProfile {
                email: Some(email.to_owned()),
                ..alice_profile()
            };
            assert!(
                matches!(check(&profile), Err(IssueError::InvalidEmail { .. })),
                "{email:?} was accepted"
            );
        }
        for upn in ["carol", "carol@", "carol @corp"] {
            let profile = CertificateProfile {
                upn: Some(upn.to_owned()),
                ..alice_profile()
            };
            assert!(
                matches!(
                    check(&profile),
                    Err(IssueError::InvalidUserPrincipalName { .. })
                ),
                "{upn:?} was accepted"
            );
        }
    }

    #[test]
    fn malformed_public_keys_are_rejected() {
        let ca = p256_ca();
        let mut truncated = p256_key().subject_public_key_info();
        truncated.truncate(20);
        for spki in [Vec::new(), truncated, b"not a key".to_vec()] {
            assert!(matches!(
                issue(&ca, &spki, &alice_profile()),
                Err(IssueError::UnsupportedPublicKey { .. })
            ));
        }
    }

    #[test]
    fn unreadable_ca_inputs_are_rejected() {
        let (certificate_pem, key_pem) = make_ca(p256_key(), "pivtap Test CA");
        assert!(matches!(
            CertificateAuthority::from_pem("not a certificate", &key_pem),
            Err(IssueError::CaCertificateUnreadable)
        ));
        assert!(matches!(
            CertificateAuthority::from_pem(&key_pem, &key_pem),
            Err(IssueError::CaCertificateUnreadable)
        ));
        let error = CertificateAuthority::from_pem(&certificate_pem, &certificate_pem).unwrap_err();
        assert!(matches!(error, IssueError::CaKeyUnreadable));
    }

    #[test]
    fn a_key_of_another_ca_is_rejected() {
        let (certificate_pem, _) = make_ca(p256_key(), "pivtap Test CA");
        let (_, other_key_pem) = make_ca(p256_key(), "Other CA");
        assert!(matches!(
            CertificateAuthority::from_pem(&certificate_pem, &other_key_pem),
            Err(IssueError::CaKeyMismatch)
        ));
    }

    #[test]
    fn a_certificate_that_is_no_ca_cannot_issue() {
        let key_pair = p256_key();
        let leaf = CertificateParams::default().self_signed(&key_pair).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&leaf.pem(), &key_pair.serialize_pem()),
            Err(IssueError::NotACaCertificate)
        ));

        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let no_cert_sign = params.self_signed(&key_pair).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&no_cert_sign.pem(), &key_pair.serialize_pem()),
            Err(IssueError::CaCannotSignCertificates)
        ));
    }

    #[test]
    fn file_errors_name_the_file_and_never_show_key_material() {
        let directory = tempfile::tempdir().unwrap();
        let certificate_path = directory.path().join("ca.pem");
        let key_path = directory.path().join("ca.key");
        let (certificate_pem, key_pem) = make_ca(p256_key(), "pivtap Test CA");
        let key_body = key_pem.lines().nth(1).unwrap();
        std::fs::write(&certificate_path, &certificate_pem).unwrap();
        let load = || CertificateAuthority::from_files(&certificate_path, &key_path);

        let error = load().unwrap_err();
        assert!(matches!(error, IssueError::ReadFile { ref path, .. } if *path == key_path));
        assert_eq!(
            error.to_string(),
            format!("cannot read {}", key_path.display())
        );

        // A key file whose DER is cut short: the message names the file, not the key.
        let mut key_lines: Vec<&str> = key_pem.lines().collect();
        key_lines.remove(key_lines.len() - 2);
        std::fs::write(&key_path, key_lines.join("\n")).unwrap();
        let error = load().unwrap_err();
        assert!(matches!(&error,
            IssueError::InFile { path, error } if *path == key_path
                && matches!(**error, IssueError::CaKeyUnreadable)));
        let message = error.to_string();
        assert!(message.starts_with(&format!("{}: the CA private key", key_path.display())));
        assert!(!message.contains(key_body), "{message}");

        let (_, other_key_pem) = make_ca(p256_key(), "Other CA");
        std::fs::write(&key_path, &other_key_pem).unwrap();
        assert!(matches!(load().unwrap_err(),
            IssueError::InFile { path, error } if path == key_path
                && matches!(*error, IssueError::CaKeyMismatch)));

        std::fs::write(&key_path, &key_pem).unwrap();
        let debug = format!("{:?}", load().unwrap());
        assert!(debug.contains("REDACTED"), "{debug}");
        assert!(!debug.contains(key_body), "{debug}");

        std::fs::write(&certificate_path, "garbage").unwrap();
        assert!(matches!(load().unwrap_err(),
            IssueError::InFile { path, error } if path == certificate_path
                && matches!(*error, IssueError::CaCertificateUnreadable)));
    }

    #[test]
    fn loads_the_fixture_test_ca_made_by_openssl() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ca");
        let ca = CertificateAuthority::from_files(
            &fixtures.join("test-ca.pem"),
            &fixtures.join("test-ca.key"),
        )
        .expect("fixtures/ca/test-ca.{pem,key} load (regenerate with fixtures/generate.sh)");
        let spki = p256_key().subject_public_key_info();
        let der = issue(&ca, &spki, &alice_profile()).unwrap();
        assert_follows_profile(&ca, &spki, &der);
    }
}
