//! Enrollment and renewal of a card's sign-in key (slot 9A) against a pivtap server, over any card backend (PC/SC or virtual), and the card-signed assertion that `pivtap auth` and renewal share.
//!
//! [`enroll_card`] turns a blank (or re-used) card into a sign-in card with
//! an enrollment code: inspect the code, authenticate the management key,
//! verify the PIN, generate a key in 9A, have the card sign a PKCS#10
//! request, trade code and request for a certificate, store it, and write a
//! CHUID if the card has none. [`renew_card`] replaces the 9A key and
//! certificate of an enrolled card: the current key signs a sign-in
//! assertion that authorises the renewal.
//!
//! Renewal is crash-safe in two steps. The server records the new certificate
//! as pending and keeps the old one valid; once the new certificate is on the
//! card, the new key signs a confirmation (`POST /v1/renewals/confirm`), which
//! revokes the old one (a first sign-in with the new one does the same). A
//! renewal cut after the card's new key replaced the old one but before the new
//! certificate was stored is resumed by running it again: the card then signs
//! with its new key while presenting its old certificate, which
//! [`renew_card`] notices (the signature does not verify with the certificate's
//! key), and the server hands the pending certificate out again
//! (`POST /v1/renewals/resume`).
//!
//! PIV cards generate a key only into the slot it is to be used from (no
//! standard command moves a key from a retired slot into 9A, and importing a
//! host-made key would let the private key exist outside the card), so the new
//! key must replace the old one in 9A before the server sees the request it
//! signs. The one cut no retry can undo is the short one between key generation
//! and the server recording the renewal: the card then holds a key no
//! certificate names. Should the server refuse after key generation (code used
//! meanwhile, key policy, user locked), the same holds;
//! [`EnrollStep::key_replaced`] tells callers when that point has been passed,
//! so they can say so. What can be checked first is: enrollment inspects the
//! code, and renewal looks the current certificate up in the server's CRL,
//! before the card is changed.

use std::fmt;

use crate::card_signer::{self, signing_algorithms};
use crate::client::{Client, ClientError};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pivtap_apdu::piv::objects::chuid::Chuid;
use pivtap_apdu::piv::objects::fascn::Fascn;
use pivtap_apdu::piv::objects::public_key::PublicKey;
use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, Pin};
use pivtap_card::csr::{CsrError, certificate_request};
use pivtap_card::{CardBackend, ManagementKey, PivError, PivSession, spki};
use pivtap_protocol::assertion::{AssertionDraft, signature_verifies};
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_protocol::wire::{
    AssertionPayload, CardIdentity, ChallengeResponse, ENROLL_SLOT, EnrollmentRequest,
    EnrollmentResult, KeyAlgorithm, MAX_DEVICE_ID_LEN, RENEWAL_DEVICE_PREFIX, RenewalRequest,
    UserInfo,
};
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};

/// The slot enrollment and renewal use: PIV authentication.
pub const SLOT: KeyReference = KeyReference::PivAuthentication;

/// The FASC-N of cards outside the US federal PIV system (PIV-I style:
/// agency, system and credential all nines); the CHUID GUID identifies the card.
pub const NON_FEDERAL_FASCN: &str = "99999999999999010000000000300001";

/// Where an enrollment or renewal is, for progress messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnrollStep {
    /// Asking the server what the enrollment code offers.
    InspectingCode,
    /// Checking the server's revocation list for the current certificate (renewal).
    CheckingRevocation,
    /// Asking the server for a challenge (renewal).
    FetchingChallenge,
    /// Verifying the PIN.
    VerifyingPin,
    /// The current key signs the renewal's assertion.
    SigningAssertion,
    /// Authenticating with the card management key.
    AuthenticatingManagementKey,
    /// Generating the new key on the card.
    GeneratingKey(KeyAlgorithm),
    /// The card signs the certificate request.
    SigningRequest,
    /// The server issues the certificate.
    RequestingCertificate,
    /// Writing the certificate to the card.
    StoringCertificate,
    /// Writing a CHUID to a card that has none.
    WritingChuid,
    /// Fetching the pending certificate of a renewal that was cut after the new key
    /// replaced the old one (renewal).
    ResumingRenewal,
    /// The new key confirms the new certificate; the old one is revoked (renewal).
    ConfirmingRenewal,
}

impl EnrollStep {
    /// Whether the card's old 9A key (if any) is gone once this step has begun.
    #[must_use]
    pub fn key_replaced(self) -> bool {
        matches!(
            self,
            EnrollStep::GeneratingKey(_)
                | EnrollStep::SigningRequest
                | EnrollStep::RequestingCertificate
                | EnrollStep::StoringCertificate
                | EnrollStep::WritingChuid
                | EnrollStep::ResumingRenewal
        )
    }
}

impl fmt::Display for EnrollStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnrollStep::InspectingCode => f.write_str("Checking the enrollment code"),
            EnrollStep::CheckingRevocation => {
                f.write_str("Checking that the card's certificate is not revoked")
            }
            EnrollStep::FetchingChallenge => f.write_str("Asking the server for a challenge"),
            EnrollStep::VerifyingPin => f.write_str("Verifying the PIN"),
            EnrollStep::SigningAssertion => f.write_str("Signing with the current key"),
            EnrollStep::AuthenticatingManagementKey => {
                f.write_str("Authenticating with the management key")
            }
            EnrollStep::GeneratingKey(algorithm) => write!(
                f,
                "Generating the key on the card ({algorithm}), this can take a while"
            ),
            EnrollStep::SigningRequest => f.write_str("Signing the certificate request"),
            EnrollStep::RequestingCertificate => f.write_str("Requesting the certificate"),
            EnrollStep::StoringCertificate => f.write_str("Storing the certificate on the card"),
            EnrollStep::WritingChuid => f.write_str("Writing the card identifier (CHUID)"),
            EnrollStep::ResumingRenewal => f.write_str(
                "The card's key is newer than its certificate: resuming the renewal that was cut",
            ),
            EnrollStep::ConfirmingRenewal => {
                f.write_str("Confirming the new certificate with the new key")
            }
        }
    }
}

/// What enrollment and renewal need besides the card and the server. `Debug`
/// shows no secret.
pub struct CardSecrets {
    /// The card PIN.
    pub pin: Pin,
    /// The card management key (the factory default unless changed).
    pub management_key: ManagementKey,
}

impl fmt::Debug for CardSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardSecrets")
            .field("pin", &"REDACTED")
            .field("management_key", &self.management_key.algorithm())
            .finish()
    }
}

/// Options of [`enroll_card`].
#[derive(Debug)]
pub struct EnrollOptions {
    /// PIN and management key.
    pub secrets: CardSecrets,
    /// This device's id, reported to the server (audit), when it has one.
    pub device: Option<String>,
}

/// The device id a renewal's challenge is asked for: `device` itself when the client holds
/// that device's credential, else `renewal:<device>` (cut to a valid device id), which any
/// caller may ask for and which no sign-in accepts.
#[must_use]
pub fn renewal_device(client: &Client, device: &str) -> String {
    if client
        .device_credential()
        .is_some_and(|credential| credential.device() == device)
        || device.starts_with(RENEWAL_DEVICE_PREFIX)
    {
        return device.to_owned();
    }
    let room = MAX_DEVICE_ID_LEN - RENEWAL_DEVICE_PREFIX.len();
    format!(
        "{RENEWAL_DEVICE_PREFIX}{}",
        device.get(..room.min(device.len())).unwrap_or(device)
    )
}

/// Options of [`renew_card`].
#[derive(Debug)]
pub struct RenewOptions {
    /// PIN and management key.
    pub secrets: CardSecrets,
    /// This device's id: the renewal's assertion is bound to it like a sign-in.
    pub device: String,
    /// The new key's algorithm; `None` keeps the current key's.
    pub algorithm: Option<KeyAlgorithm>,
}

/// What an enrollment or renewal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollOutcome {
    /// Whom the certificate names.
    pub user: UserInfo,
    /// The new certificate's serial, lower-case hex.
    pub serial: String,
    /// When it expires, RFC 3339.
    pub not_after: String,
    /// The new key's algorithm.
    pub algorithm: KeyAlgorithm,
    /// The card's serial number, when it reports one.
    pub card_serial: Option<u32>,
    /// The card's CHUID GUID, lower-case hex, when it has a CHUID.
    pub chuid_guid: Option<String>,
    /// Whether a CHUID was written because the card had none.
    pub chuid_written: bool,
    /// Which rule of the server's PIN policy the card's PIN breaks, when it
    /// breaks one (a blank card's factory PIN does); enrollment only.
    pub pin_policy_problem: Option<String>,
}

/// Why an enrollment or renewal failed. Never carries the PIN, the
/// management key or the enrollment code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The server could not be reached or refused.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The card refused or failed.
    #[error(transparent)]
    Card(#[from] PivError),
    /// The certificate request could not be made.
    #[error(transparent)]
    Request(#[from] CsrError),
    /// The enrollment is for a slot other than 9A.
    #[error("the enrollment is for slot {slot}; only slot 9a (PIV authentication) is supported")]
    UnsupportedSlot {
        /// The slot the server named.
        slot: String,
    },
    /// The card's certificate cannot sign in (nor, so, authorise a renewal).
    #[error("the card's certificate cannot be used to sign in: {reason}")]
    CurrentCertificate {
        /// Why.
        reason: &'static str,
    },
    /// The server's answer is not what the protocol promises.
    #[error("the server's answer is not usable: {reason}")]
    BadAnswer {
        /// What was wrong.
        reason: &'static str,
    },
    /// The current certificate is on the server's revocation list: renewal
    /// would be refused, so nothing was done.
    #[error(
        "the card's certificate (serial {serial}) is revoked, so it cannot be renewed; \
         nothing on the card was changed. Ask your administrator for an enrollment code"
    )]
    Revoked {
        /// The certificate's serial, lower-case hex.
        serial: String,
    },
    /// The server issued a certificate for some other key.
    #[error("the certificate the server issued is not for the key the card generated")]
    CertificateMismatch,
}

/// The card key's algorithm and the JOSE algorithm it signs with, from its certificate.
///
/// # Errors
/// [`EnrollError::CurrentCertificate`] for certificates that cannot be
/// read or whose key a card does not sign with.
pub fn signing_key_of(certificate: &[u8]) -> Result<(Algorithm, JwsAlgorithm), EnrollError> {
    let facts =
        CertificateFacts::from_der(certificate).map_err(|_| EnrollError::CurrentCertificate {
            reason: "it is not valid X.509",
        })?;
    signing_algorithms(facts.key).ok_or(EnrollError::CurrentCertificate {
        reason: "its key is not RSA-2048, P-256 or P-384",
    })
}

/// Builds a sign-in assertion for `challenge` with `certificate` (the
/// certificate of the key in `slot`) and has the card sign it. The PIN must
/// be verified. `pivtap auth` and [`renew_card`] both sign with this.
///
/// # Errors
/// [`EnrollError::CurrentCertificate`] or the card's [`PivError`].
pub fn sign_assertion(
    session: &mut PivSession<'_>,
    slot: KeyReference,
    certificate: &[u8],
    challenge: &ChallengeResponse,
    device: &str,
) -> Result<String, EnrollError> {
    let (key, algorithm) = signing_key_of(certificate)?;
    let draft = AssertionDraft::new(
        algorithm,
        certificate,
        AssertionPayload::for_challenge(
            challenge,
            device,
            slot,
            OffsetDateTime::now_utc().unix_timestamp(),
        ),
    );
    Ok(card_signer::sign_assertion(session, slot, key, &draft)?)
}

/// The card's part of a sign-in with a PIN (`pivtap auth`): checks that a card key can
/// sign for `certificate` (the certificate of the key in `slot`) before a PIN try is
/// spent, verifies `pin`, has the card sign the assertion for `challenge`, and logs the
/// PIN out again, so the badge is not left PIN-verified for other programs (some cards
/// keep a verified PIN across the reset that ends the connection; a card that refuses is
/// left to that reset, one that leaves fails the sign-in).
///
/// # Errors
/// [`EnrollError::CurrentCertificate`] or the card's [`PivError`] (a wrong PIN among them).
pub fn sign_in_with_pin(
    session: &mut PivSession<'_>,
    slot: KeyReference,
    certificate: &[u8],
    pin: &Pin,
    challenge: &ChallengeResponse,
    device: &str,
) -> Result<String, EnrollError> {
    signing_key_of(certificate)?;
    session.verify_pin(pin)?;
    let compact = sign_assertion(session, slot, certificate, challenge, device);
    let logged_out = session.log_out_pin();
    let compact = compact?;
    logged_out?;
    Ok(compact)
}

/// Enrolls the card with an enrollment code: the steps in the module docs.
/// `progress` hears of every step before it starts.
///
/// # Errors
/// [`EnrollError`]; a wrong PIN comes as [`PivError::WrongPin`] inside
/// [`EnrollError::Card`], before anything on the card changed.
pub async fn enroll_card(
    backend: &mut dyn CardBackend,
    client: &Client,
    code: &str,
    options: &EnrollOptions,
    progress: &mut dyn FnMut(EnrollStep),
) -> Result<EnrollOutcome, EnrollError> {
    progress(EnrollStep::InspectingCode);
    let offer = client.inspect_enrollment(code).await?;
    if !offer.slot.eq_ignore_ascii_case(ENROLL_SLOT) {
        return Err(EnrollError::UnsupportedSlot { slot: offer.slot });
    }
    let mut session = PivSession::open(backend)?;
    let card = card_identity(&mut session)?;
    progress(EnrollStep::AuthenticatingManagementKey);
    let management_key = management_key_for(&mut session, &options.secrets.management_key)?;
    session.authenticate_management_key(&management_key)?;
    progress(EnrollStep::VerifyingPin);
    session.verify_pin(&options.secrets.pin)?;
    let (spki, csr) = new_key_and_request(
        &mut session,
        offer.key_algorithm,
        &offer.user.id,
        &mut *progress,
    )?;
    progress(EnrollStep::RequestingCertificate);
    let issued = client
        .complete_enrollment(&EnrollmentRequest {
            code: code.to_owned(),
            csr,
            card: card.clone(),
            device: options.device.clone(),
        })
        .await?;
    let certificate = store_certificate(&mut session, &issued, &spki, &mut *progress)?;
    let pin_policy_problem = match std::str::from_utf8(options.secrets.pin.as_bytes()) {
        Ok(pin) => offer
            .pin_policy
            .check(pin)
            .err()
            .map(|rule| rule.to_string()),
        Err(_) => None,
    };
    let (chuid_guid, chuid_written) = match card.chuid_guid {
        Some(guid) => (Some(guid), false),
        None => {
            progress(EnrollStep::WritingChuid);
            let chuid = new_chuid(certificate.not_after)?;
            session.put_object(ObjectTag::Chuid, &chuid.encode())?;
            (Some(hex::encode(chuid.guid)), true)
        }
    };
    Ok(EnrollOutcome {
        user: issued.user,
        serial: issued.serial,
        not_after: issued.not_after,
        algorithm: offer.key_algorithm,
        card_serial: card.serial,
        chuid_guid,
        chuid_written,
        pin_policy_problem,
    })
}

/// Renews the card's 9A key and certificate: the steps in the module docs.
///
/// # Errors
/// As [`enroll_card`]; the server refuses with any sign-in code when the
/// current certificate no longer signs in (revoked, user locked, ...).
pub async fn renew_card(
    backend: &mut dyn CardBackend,
    client: &Client,
    options: &RenewOptions,
    progress: &mut dyn FnMut(EnrollStep),
) -> Result<EnrollOutcome, EnrollError> {
    let mut session = PivSession::open(backend)?;
    let card = card_identity(&mut session)?;
    let current = session.certificate(SLOT)?;
    let (current_key, _) = signing_key_of(&current)?;
    let algorithm = match options.algorithm {
        Some(algorithm) => algorithm,
        None => key_algorithm(current_key).ok_or(EnrollError::CurrentCertificate {
            reason: "its key is not RSA-2048, P-256 or P-384",
        })?,
    };
    // A revoked certificate would be refused only after the new key replaced
    // the old one: look it up in the public CRL first.
    progress(EnrollStep::CheckingRevocation);
    let crl = client.crl().await?;
    if let Some(serial) = revoked_serial(&crl, &current)? {
        return Err(EnrollError::Revoked { serial });
    }
    progress(EnrollStep::VerifyingPin);
    session.verify_pin(&options.secrets.pin)?;
    // The challenge only now, so that it is fresh when the server sees the assertion.
    progress(EnrollStep::FetchingChallenge);
    // A registered device (with its credential) asks as itself; anywhere else (a worker's
    // own workstation) the challenge is a renewal challenge, which cannot sign anyone in.
    let device = renewal_device(client, &options.device);
    let challenge = client.challenge(&device).await?;
    progress(EnrollStep::SigningAssertion);
    let assertion = sign_assertion(&mut session, SLOT, &current, &challenge, &device)?;
    let (issued, spki) = if signed_with_key_of(&assertion, &current) {
        progress(EnrollStep::AuthenticatingManagementKey);
        let management_key = management_key_for(&mut session, &options.secrets.management_key)?;
        session.authenticate_management_key(&management_key)?;
        let common_name = CertificateFacts::from_der(&current)
            .ok()
            .and_then(|facts| facts.common_name)
            .unwrap_or_else(|| "pivtap card".to_owned());
        let (spki, csr) =
            new_key_and_request(&mut session, algorithm, &common_name, &mut *progress)?;
        progress(EnrollStep::RequestingCertificate);
        (
            client.renew(&RenewalRequest { assertion, csr }).await?,
            spki,
        )
    } else {
        // 9A holds a key the certificate does not name: a renewal cut before the new
        // certificate was stored. The server checked that the pending certificate is for
        // the key that signed, so its key is the one on the card.
        progress(EnrollStep::ResumingRenewal);
        let issued = client.resume_renewal(&assertion).await?;
        let spki = spki_of(&issued)?;
        progress(EnrollStep::AuthenticatingManagementKey);
        let management_key = management_key_for(&mut session, &options.secrets.management_key)?;
        session.authenticate_management_key(&management_key)?;
        (issued, spki)
    };
    let new = store_certificate(&mut session, &issued, &spki, &mut *progress)?;
    progress(EnrollStep::ConfirmingRenewal);
    let challenge = client.challenge(&device).await?;
    let confirmation = sign_assertion(&mut session, SLOT, &new.der, &challenge, &device)?;
    client.confirm_renewal(&confirmation).await?;
    Ok(EnrollOutcome {
        user: issued.user,
        serial: issued.serial,
        not_after: issued.not_after,
        algorithm,
        card_serial: card.serial,
        chuid_guid: card.chuid_guid,
        chuid_written: false,
        pin_policy_problem: None,
    })
}

/// The management key with the algorithm the card says its key has (GET
/// METADATA), when that differs and the length fits: 24 bytes are 3DES on
/// most cards but AES-192 on YubiKey 5.7 and later.
fn management_key_for(
    session: &mut PivSession<'_>,
    key: &ManagementKey,
) -> Result<ManagementKey, EnrollError> {
    let card_algorithm = session
        .metadata(KeyReference::ManagementKey)?
        .and_then(|metadata| metadata.piv_algorithm())
        .filter(|algorithm| algorithm.is_symmetric() && *algorithm != key.algorithm());
    Ok(card_algorithm
        .and_then(|algorithm| ManagementKey::from_hex(algorithm, &key.to_hex()).ok())
        .unwrap_or_else(|| key.clone()))
}

/// The serial of `certificate` (lower-case hex) when the DER CRL `crl`
/// lists it. The CRL's signature is not checked: this only spares the card a
/// renewal the server would refuse, and the server decides.
///
/// # Errors
/// [`EnrollError::BadAnswer`] when the CRL cannot be parsed,
/// [`EnrollError::CurrentCertificate`] when the certificate cannot.
fn revoked_serial(crl: &[u8], certificate: &[u8]) -> Result<Option<String>, EnrollError> {
    let (_, certificate) =
        X509Certificate::from_der(certificate).map_err(|_| EnrollError::CurrentCertificate {
            reason: "it is not valid X.509",
        })?;
    let (_, list) =
        CertificateRevocationList::from_der(crl).map_err(|_| EnrollError::BadAnswer {
            reason: "the revocation list is not a DER CRL",
        })?;
    let serial = certificate.raw_serial();
    let listed = list
        .iter_revoked_certificates()
        .any(|revoked| strip_zeros(revoked.raw_serial()) == strip_zeros(serial));
    Ok(listed.then(|| hex::encode(strip_zeros(serial))))
}

/// Whether the compact JWS `assertion` verifies with the key of `certificate` (DER): the
/// card's 9A key is the certificate's. `false` when either cannot be read.
fn signed_with_key_of(assertion: &str, certificate: &[u8]) -> bool {
    let Ok((_, public_key)) = CertificateFacts::with_public_key(certificate) else {
        return false;
    };
    let Some((signing_input, signature)) = assertion.rsplit_once('.') else {
        return false;
    };
    let Some(algorithm) = signing_key_of(certificate)
        .ok()
        .map(|(_, algorithm)| algorithm)
    else {
        return false;
    };
    URL_SAFE_NO_PAD.decode(signature).is_ok_and(|signature| {
        signature_verifies(algorithm, &public_key, signing_input.as_bytes(), &signature)
    })
}

/// An issued certificate's DER and its SubjectPublicKeyInfo (DER).
fn decode_issued(issued: &EnrollmentResult) -> Result<(Vec<u8>, Vec<u8>), EnrollError> {
    let der = URL_SAFE_NO_PAD
        .decode(issued.certificate.trim_end_matches('='))
        .map_err(|_| EnrollError::BadAnswer {
            reason: "the certificate is not base64url",
        })?;
    let (_, certificate) = X509Certificate::from_der(&der).map_err(|_| EnrollError::BadAnswer {
        reason: "the certificate is not valid X.509",
    })?;
    let spki = certificate.public_key().raw.to_vec();
    Ok((der, spki))
}

/// The SubjectPublicKeyInfo (DER) of an issued certificate.
fn spki_of(issued: &EnrollmentResult) -> Result<Vec<u8>, EnrollError> {
    decode_issued(issued).map(|(_, spki)| spki)
}

/// A serial's bytes without leading zero bytes (a DER sign byte).
fn strip_zeros(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[start..]
}

/// The card's serial (if it reports one) and CHUID GUID (if it has a CHUID).
fn card_identity(session: &mut PivSession<'_>) -> Result<CardIdentity, EnrollError> {
    let serial = session.serial()?;
    let chuid_guid = match session.chuid() {
        Ok(chuid) => Some(hex::encode(chuid.guid)),
        Err(PivError::ObjectNotFound { .. }) => None,
        Err(error) => return Err(error.into()),
    };
    Ok(CardIdentity { serial, chuid_guid })
}

/// Generates the new 9A key and has the card sign a request for it. The
/// management key and the PIN must be presented. Returns the key's
/// SubjectPublicKeyInfo (DER) and the request, base64url.
fn new_key_and_request(
    session: &mut PivSession<'_>,
    algorithm: KeyAlgorithm,
    common_name: &str,
    progress: &mut dyn FnMut(EnrollStep),
) -> Result<(Vec<u8>, String), EnrollError> {
    progress(EnrollStep::GeneratingKey(algorithm));
    let public_key: PublicKey = session.generate_key(SLOT, card_algorithm(algorithm))?;
    let spki = spki::subject_public_key_info(&public_key).map_err(CsrError::from)?;
    progress(EnrollStep::SigningRequest);
    let request = certificate_request(session, SLOT, &public_key, common_name)?;
    Ok((spki, URL_SAFE_NO_PAD.encode(request)))
}

/// Checks that the issued certificate is for the new key and writes it to 9A.
fn store_certificate(
    session: &mut PivSession<'_>,
    issued: &EnrollmentResult,
    spki: &[u8],
    progress: &mut dyn FnMut(EnrollStep),
) -> Result<CertificateFacts, EnrollError> {
    let (der, issued_spki) = decode_issued(issued)?;
    if issued_spki != spki {
        return Err(EnrollError::CertificateMismatch);
    }
    let facts = CertificateFacts::from_der(&der).map_err(|_| EnrollError::BadAnswer {
        reason: "the certificate cannot be read",
    })?;
    progress(EnrollStep::StoringCertificate);
    session.put_certificate(SLOT, &der)?;
    Ok(facts)
}

/// A CHUID for a card enrolled outside the federal PIV system: the
/// non-federal FASC-N, a random GUID, and the certificate's expiry date.
///
/// # Errors
/// Never in practice ([`NON_FEDERAL_FASCN`] is a valid FASC-N).
pub fn new_chuid(expires: OffsetDateTime) -> Result<Chuid, EnrollError> {
    let fascn: Fascn = NON_FEDERAL_FASCN
        .parse()
        .map_err(|_| EnrollError::BadAnswer {
            reason: "the built-in FASC-N does not parse",
        })?;
    let mut guid = [0u8; 16];
    rand::fill(&mut guid);
    Ok(Chuid {
        fascn_raw: fascn.encode(),
        guid,
        expiration: chuid_date(expires),
        ..Chuid::default()
    })
}

/// The CHUID expiration date (`YYYYMMDD`).
#[must_use]
pub fn chuid_date(time: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}",
        time.year(),
        u8::from(time.month()),
        time.day()
    )
}

/// The card algorithm of an enrollment key algorithm.
#[must_use]
pub fn card_algorithm(algorithm: KeyAlgorithm) -> Algorithm {
    match algorithm {
        KeyAlgorithm::Rsa2048 => Algorithm::Rsa2048,
        KeyAlgorithm::P256 => Algorithm::EccP256,
        KeyAlgorithm::P384 => Algorithm::EccP384,
    }
}

/// The enrollment key algorithm of a card key, if enrollment knows it.
#[must_use]
pub fn key_algorithm(algorithm: Algorithm) -> Option<KeyAlgorithm> {
    match algorithm {
        Algorithm::Rsa2048 => Some(KeyAlgorithm::Rsa2048),
        Algorithm::EccP256 => Some(KeyAlgorithm::P256),
        Algorithm::EccP384 => Some(KeyAlgorithm::P384),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use pivtap_vcard::{CardOptions, NewCard, VirtualCard, VirtualCardBackend};

    use super::*;

    #[test]
    fn a_24_byte_key_is_aes_192_when_the_card_says_so() {
        let bytes = pivtap_card::management_key::DEFAULT_MANAGEMENT_KEY;
        let mut new = NewCard::factory(CardOptions::default());
        new.management_key = ManagementKey::new(Algorithm::Aes192, &bytes).unwrap();
        let mut backend = VirtualCardBackend::new(VirtualCard::blank(new), "aes card");
        let mut session = PivSession::open(&mut backend).unwrap();
        let given = ManagementKey::default_key();
        assert_eq!(given.algorithm(), Algorithm::TripleDes);
        let key = management_key_for(&mut session, &given).unwrap();
        // The virtual card reports its management key's algorithm (GET METADATA), as YubiKeys do.
        assert_eq!(key.algorithm(), Algorithm::Aes192);
        session.authenticate_management_key(&key).unwrap();
        assert!(matches!(
            session.authenticate_management_key(&given),
            Err(PivError::ManagementKeyRejected)
        ));
    }

    #[test]
    fn a_certificate_on_the_crl_is_found_and_others_are_not() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = |serial: &[u8]| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["leaf".to_owned()]).unwrap();
            params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
            params.signed_by(&key, &issuer).unwrap().der().to_vec()
        };
        let now = OffsetDateTime::now_utc();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&[0x8a, 0x01]),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::Superseded),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap()
        .der()
        .to_vec();
        assert_eq!(
            revoked_serial(&crl, &leaf(&[0x8a, 0x01]))
                .unwrap()
                .as_deref(),
            Some("8a01")
        );
        assert_eq!(revoked_serial(&crl, &leaf(&[0x8a, 0x02])).unwrap(), None);
        assert!(matches!(
            revoked_serial(b"not a CRL", &leaf(&[1])),
            Err(EnrollError::BadAnswer { .. })
        ));
    }
}
