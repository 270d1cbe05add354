//! Enrollment and renewal endpoints: inspecting and redeeming enrollment codes for a card certificate, renewing with a sign-in assertion in two steps (pending, then confirmed or first used; resumable), and the issuing CA's CRL; plus the code and mapping helpers the admin API uses.
//!
//! Every attempt is audited (kind `enrollment` or `renewal`), refused ones
//! with their error code. Enrollment codes are 20 characters from a 32-letter
//! alphabet without look-alikes (100 random bits), shown as five groups of
//! four; they are compared after upper-casing and dropping `-` and spaces, and
//! only their SHA-256 is stored (their entropy makes a slow hash unnecessary).
//! The audit names a code by the first 8 hex digits of its hash, never the code.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::ServerState;
use super::client_address::ClientAddress;
use super::error::ApiError;
use super::handlers::{
    AttemptRecord, authenticate, authenticate_verified, json_body, refused_unverified, rfc3339,
    validate_device,
};
use crate::config::SubjectCn;
use crate::issuance::{IssuanceError, Issuer};
use crate::mapping::{CertificateAttribute, MappingRule};
use crate::store::{
    CardId, EnrollmentCodeRecord, EnrollmentCodeUse, IssuedCertificate, NewAuditEvent, User,
    UserState,
};
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::wire::{
    AssertionRequest, ENROLL_SLOT, EnrollmentOffer, EnrollmentRequest, EnrollmentResult, ErrorCode,
    InspectEnrollmentRequest, RenewalConfirmation, RenewalRequest, UserInfo,
};

/// The letters of an enrollment code: digits 2-9 and A-Z without I and O.
const CODE_ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
/// Characters of an enrollment code, without separators.
const CODE_LENGTH: usize = 20;
/// Hex digits of a code's hash the audit shows.
const AUDIT_HASH_PREFIX: usize = 8;

/// A fresh enrollment code, `XXXX-XXXX-XXXX-XXXX-XXXX`.
#[must_use]
pub fn new_code() -> String {
    let mut bytes = [0u8; CODE_LENGTH];
    rand::fill(&mut bytes);
    let mut code = String::with_capacity(CODE_LENGTH + CODE_LENGTH / 4);
    for (index, byte) in bytes.iter().enumerate() {
        if index > 0 && index % 4 == 0 {
            code.push('-');
        }
        code.push(char::from(CODE_ALPHABET[usize::from(byte & 31)]));
    }
    code
}

/// The stored form of a code: SHA-256 (hex) of it upper-cased without `-` and spaces.
#[must_use]
pub fn code_hash(code: &str) -> String {
    let normalised: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex::encode(Sha256::digest(normalised.as_bytes()))
}

/// How the audit names a code.
pub(crate) fn code_label(hash: &str) -> String {
    format!("code #{}", &hash[..AUDIT_HASH_PREFIX.min(hash.len())])
}

/// The issuer, or `enrollment_disabled`.
pub(crate) fn issuer(state: &ServerState) -> Result<Arc<Issuer>, ApiError> {
    state.settings().issuer.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::EnrollmentDisabled,
            "this server does not issue card certificates (no [issuance] in its configuration)",
        )
    })
}

fn issuance_error(error: &IssuanceError) -> ApiError {
    match error.code() {
        ErrorCode::Internal => {
            tracing::error!(%error, "certificate issuance failed");
            ApiError::new(
                ErrorCode::Internal,
                "the server could not issue the certificate",
            )
        }
        code => ApiError::new(code, error.to_string()),
    }
}

fn user_info(user: &User) -> UserInfo {
    UserInfo {
        id: user.id.clone(),
        display_name: user.display_name.clone(),
        mail: user.mail.clone(),
    }
}

/// The user must be active.
fn require_active(user: &User) -> Result<(), ApiError> {
    match user.state {
        UserState::Active => Ok(()),
        UserState::Locked => Err(ApiError::new(
            ErrorCode::UserLocked,
            "this user is locked; ask your administrator",
        )),
    }
}

/// The values a certificate issued to `user` would offer for `attribute`.
fn issued_values(issuer: &Issuer, user: &User, attribute: CertificateAttribute) -> Vec<String> {
    let policy = issuer.policy();
    let value = match attribute {
        CertificateAttribute::SanEmail => user.mail.clone(),
        CertificateAttribute::SanUpn => user.upn.clone().filter(|_| policy.include_upn),
        CertificateAttribute::SubjectCn => Some(match policy.subject_cn {
            SubjectCn::DisplayName => user.display_name.clone(),
            SubjectCn::Uid => user.id.clone(),
        }),
        CertificateAttribute::SubjectSerial => user.employee_id.clone(),
    };
    value
        .into_iter()
        .filter(|value| !value.is_empty())
        .collect()
}

/// Refuses when `values` (what a certificate offers under the mapping rule)
/// would not find exactly `user`: such a certificate could not sign in.
async fn require_mapping(
    state: &ServerState,
    rule: &MappingRule,
    values: &[String],
    user: &User,
) -> Result<(), ApiError> {
    let mut found: Vec<String> = Vec::new();
    for value in values {
        for candidate in state.store().find_users(rule.user, value).await? {
            if !found.contains(&candidate.id) {
                found.push(candidate.id);
            }
        }
    }
    if found.len() == 1 && found[0] == user.id {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UserUnknown,
            format!(
                "a certificate for user {} would not map back to it (mapping {rule}); set the user's attribute, or ask your administrator",
                user.id
            ),
        ))
    }
}

/// Checks before an enrollment code is made for `user`: the user exists, is
/// active, and a certificate issued to them would map back to them.
pub(crate) async fn check_enrollable(
    state: &ServerState,
    issuer: &Issuer,
    user_id: &str,
) -> Result<User, ApiError> {
    let user = state
        .store()
        .get_user(user_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::UserUnknown, format!("no user {user_id}")))?;
    require_active(&user)?;
    let rule = state.mapping();
    let values = issued_values(issuer, &user, rule.certificate);
    require_mapping(state, &rule, &values, &user).await?;
    Ok(user)
}

/// A code that can still be used, and its user (who may be locked: callers
/// check, after noting the user for the audit); refusals as their codes.
async fn usable_code(
    state: &ServerState,
    hash: &str,
    now: OffsetDateTime,
) -> Result<(EnrollmentCodeRecord, User), ApiError> {
    let record = state
        .store()
        .get_enrollment_code(hash)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::EnrollmentCodeUnknown,
                "no such enrollment code; check it, or ask your administrator for a new one",
            )
        })?;
    if record.used_at.is_some() {
        return Err(code_used());
    }
    if record.expires_at <= now {
        return Err(code_expired());
    }
    let user = state
        .store()
        .get_user(&record.user_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::UserUnknown, "the code's user no longer exists"))?;
    Ok((record, user))
}

fn code_used() -> ApiError {
    ApiError::new(
        ErrorCode::EnrollmentCodeUsed,
        "this enrollment code was used already; ask your administrator for a new one",
    )
}

fn code_expired() -> ApiError {
    ApiError::new(
        ErrorCode::EnrollmentCodeExpired,
        "this enrollment code expired; ask your administrator for a new one",
    )
}

/// What the audit records of an enrollment or renewal.
#[derive(Default)]
struct Audit {
    device: Option<String>,
    card_serial: Option<String>,
    user_id: Option<String>,
    detail: Vec<String>,
}

impl Audit {
    /// What an enrollment or renewal attempt's `record` says, with `detail`.
    fn of_attempt(record: &AttemptRecord, detail: Vec<String>) -> Self {
        let mut all = Vec::new();
        if let Some(nonce) = &record.nonce_prefix {
            all.push(format!("nonce {nonce}…"));
        }
        all.extend(detail);
        if record.unverified {
            all.push("device and card as claimed, unverified".to_owned());
        }
        Audit {
            device: record.device.clone(),
            card_serial: record.card_serial.clone(),
            user_id: record.user_id.clone(),
            detail: all,
        }
    }

    /// The event: `ok` without an error, else the error's code, its message in the detail.
    fn event(
        &self,
        kind: AuditKind,
        now: OffsetDateTime,
        error: Option<&ApiError>,
    ) -> NewAuditEvent {
        let mut detail = self.detail.clone();
        if let Some(error) = error {
            detail.push(error.message.clone());
        }
        NewAuditEvent {
            time: now,
            kind,
            outcome: AuditOutcome::of(error.map(|error| error.code)),
            device: self.device.clone(),
            card_serial: self.card_serial.clone(),
            user_id: self.user_id.clone(),
            detail: (!detail.is_empty()).then(|| detail.join(": ")),
        }
    }
}

/// Audits `result`, success or refusal (a refusal through [`refuse`]), and gives the answer.
async fn write_audit<T>(
    state: &ServerState,
    source: &ClientAddress,
    kind: AuditKind,
    now: OffsetDateTime,
    audit: Audit,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match result {
        Ok(answer) => {
            state.store().audit(audit.event(kind, now, None)).await?;
            Ok(answer)
        }
        Err(error) => Err(refuse(state, source, kind, now, &audit, error).await),
    }
}

/// Audits a refused step through [`ServerState::refused`] (past the source's budget it is
/// answered `rate_limited`): for the steps whose success is audited in the same write as
/// their effect.
async fn audit_refusal<T>(
    state: &ServerState,
    source: &ClientAddress,
    kind: AuditKind,
    now: OffsetDateTime,
    audit: &Audit,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match result {
        Ok(answer) => Ok(answer),
        Err(error) => Err(refuse(state, source, kind, now, audit, error).await),
    }
}

/// The refusal `error`, audited with `audit` through [`ServerState::refused`].
async fn refuse(
    state: &ServerState,
    source: &ClientAddress,
    kind: AuditKind,
    now: OffsetDateTime,
    audit: &Audit,
    error: ApiError,
) -> ApiError {
    let event = audit.event(kind, now, Some(&error));
    state.refused(source, event, error).await
}

/// `POST /v1/enrollments/inspect`: what a code offers. Does not use it up.
pub async fn inspect_enrollment(
    State(state): State<ServerState>,
    source: ClientAddress,
    body: Result<Json<InspectEnrollmentRequest>, JsonRejection>,
) -> Result<Json<EnrollmentOffer>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut audit = Audit {
        detail: vec!["inspect".to_owned()],
        ..Audit::default()
    };
    let result = async {
        let request = json_body(body)?;
        let issuer = issuer(&state)?;
        let hash = code_hash(&request.code);
        audit.detail.push(code_label(&hash));
        let (record, user) = usable_code(&state, &hash, now).await?;
        audit.user_id = Some(user.id.clone());
        require_active(&user)?;
        Ok(EnrollmentOffer {
            user: user_info(&user),
            key_algorithm: issuer.enrollment_algorithm(),
            slot: ENROLL_SLOT.to_owned(),
            pin_policy: state.settings().pin_policy,
            expires_at: rfc3339(record.expires_at),
        })
    }
    .await;
    write_audit(&state, &source, AuditKind::Enrollment, now, audit, result)
        .await
        .map(Json)
}

/// Decodes a CSR sent as base64url (standard base64 is accepted too).
pub(crate) fn decode_csr(text: &str) -> Result<Vec<u8>, ApiError> {
    let text = text.trim().trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .map_err(|_| {
            ApiError::new(
                ErrorCode::CsrInvalid,
                "the CSR is not base64url-encoded DER",
            )
        })
}

/// Issues a certificate for `key` to `user` and checks it maps back to the user.
async fn issue_checked(
    state: &ServerState,
    issuer: &Issuer,
    key: &crate::issuance::CsrKey,
    user: &User,
    now: OffsetDateTime,
) -> Result<CertificateFacts, ApiError> {
    let der = issuer
        .issue(key, user, now)
        .map_err(|error| issuance_error(&error))?;
    let facts = CertificateFacts::from_der(&der).map_err(|error| {
        tracing::error!(%error, "an issued certificate does not parse");
        ApiError::new(
            ErrorCode::Internal,
            "the server could not issue the certificate",
        )
    })?;
    let rule = state.mapping();
    require_mapping(state, &rule, &rule.values(&facts), user).await?;
    Ok(facts)
}

fn enrollment_result(issuer: &Issuer, facts: &CertificateFacts, user: &User) -> EnrollmentResult {
    EnrollmentResult {
        certificate: URL_SAFE_NO_PAD.encode(&facts.der),
        ca_certificate: URL_SAFE_NO_PAD.encode(issuer.ca_der()),
        serial: facts.serial.clone(),
        user: user_info(user),
        not_after: rfc3339(facts.not_after),
    }
}

/// `POST /v1/enrollments`: a code and a CSR in, the card certificate out. The
/// code is used up only when the certificate is issued and registered.
pub async fn complete_enrollment(
    State(state): State<ServerState>,
    source: ClientAddress,
    body: Result<Json<EnrollmentRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut audit = Audit::default();
    let result = async {
        let request = json_body(body)?;
        if let Some(device) = &request.device {
            validate_device(device)?;
            audit.device = Some(device.clone());
        }
        if let Some(serial) = request.card.serial {
            audit.detail.push(format!("card serial number {serial}"));
        }
        if let Some(guid) = &request.card.chuid_guid {
            if guid.len() != 32 || !guid.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::invalid(
                    "card.chuid_guid must be 32 hexadecimal digits",
                ));
            }
            audit.detail.push(format!("CHUID GUID {guid}"));
        }
        let issuer = issuer(&state)?;
        let hash = code_hash(&request.code);
        audit.detail.insert(0, code_label(&hash));
        let (_, user) = usable_code(&state, &hash, now).await?;
        audit.user_id = Some(user.id.clone());
        require_active(&user)?;
        let csr = decode_csr(&request.csr)?;
        let key = issuer
            .check_csr(&csr)
            .map_err(|error| issuance_error(&error))?;
        let facts = issue_checked(&state, &issuer, &key, &user, now).await?;
        audit.card_serial = Some(facts.serial.clone());
        let issued = IssuedCertificate {
            facts,
            user_id: user.id.clone(),
            card_serial_number: request.card.serial,
            chuid_guid: request
                .card
                .chuid_guid
                .map(|guid| guid.to_ascii_lowercase()),
        };
        // The enrollment's audit event goes in the same write as its effect.
        let event = audit.event(AuditKind::Enrollment, now, None);
        match state
            .store()
            .redeem_enrollment_code(&hash, &issued, now, event)
            .await?
        {
            EnrollmentCodeUse::Accepted => {}
            EnrollmentCodeUse::Used => return Err(code_used()),
            EnrollmentCodeUse::Expired => return Err(code_expired()),
            EnrollmentCodeUse::Unknown => {
                return Err(ApiError::new(
                    ErrorCode::EnrollmentCodeUnknown,
                    "no such enrollment code",
                ));
            }
        }
        Ok(enrollment_result(&issuer, &issued.facts, &user))
    }
    .await;
    if result.is_err() {
        // A certificate made but not handed out is not the card's.
        audit.card_serial = None;
    }
    audit_refusal(&state, &source, AuditKind::Enrollment, now, &audit, result)
        .await
        .map(|answer| (StatusCode::CREATED, Json(answer)))
}

/// `POST /v1/renewals`: an assertion signed with the current key (checked
/// exactly as a sign-in) and a CSR for a new key. The new certificate is issued and
/// recorded as the old card's pending renewal, with the audit event, in one write; the
/// old certificate keeps working until the card confirms the new one
/// (`POST /v1/renewals/confirm`) or first signs in with it, which revokes the old one
/// (superseded). A cut anywhere leaves a card that signs in or renews again.
pub async fn renew(
    State(state): State<ServerState>,
    source: ClientAddress,
    body: Result<Json<RenewalRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut record = AttemptRecord::default();
    let result = async {
        let request = json_body(body)?;
        let issuer = issuer(&state)?;
        // The CSR first: a bad one does not use up the challenge.
        let csr = decode_csr(&request.csr)?;
        let key = issuer
            .check_csr(&csr)
            .map_err(|error| issuance_error(&error))?;
        let (verified, user) =
            authenticate(&state, &source, &request.assertion, now, &mut record).await?;
        let old = &verified.certificate;
        let old_spki = x509_parser::parse_x509_certificate(&old.der)
            .map(|(_, certificate)| certificate.public_key().raw.to_vec())
            .unwrap_or_default();
        if old_spki == key.spki_der() {
            return Err(issuance_error(&IssuanceError::KeyReused));
        }
        let facts = issue_checked(&state, &issuer, &key, &user, now).await?;
        let issued = IssuedCertificate {
            facts,
            user_id: user.id.clone(),
            card_serial_number: None,
            chuid_guid: None,
        };
        let detail = format!(
            "new certificate {} pending: it supersedes this one once confirmed or used",
            issued.facts.serial
        );
        let event = Audit::of_attempt(&record, vec![detail]).event(AuditKind::Renewal, now, None);
        state
            .store()
            .begin_renewal(old, &user.id, &issued, now, event)
            .await?;
        Ok(enrollment_result(&issuer, &issued.facts, &user))
    }
    .await;
    let audit = Audit::of_attempt(&record, Vec::new());
    audit_refusal(&state, &source, AuditKind::Renewal, now, &audit, result)
        .await
        .map(|answer| (StatusCode::CREATED, Json(answer)))
}

/// `POST /v1/renewals/confirm`: an assertion signed with the new key over a fresh
/// challenge, presenting the new certificate (checked exactly as a sign-in). Completes its
/// pending renewal: the old card becomes revoked (superseded), in the same write as the
/// new card's record and the audit events. Confirming again is harmless.
pub async fn confirm_renewal(
    State(state): State<ServerState>,
    source: ClientAddress,
    body: Result<Json<AssertionRequest>, JsonRejection>,
) -> Result<Json<RenewalConfirmation>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut record = AttemptRecord::default();
    let result = async {
        let request = json_body(body)?;
        let (verified, user) =
            authenticate(&state, &source, &request.assertion, now, &mut record).await?;
        let event = Audit::of_attempt(&record, vec!["confirm".to_owned()]).event(
            AuditKind::Renewal,
            now,
            None,
        );
        let completed = state
            .store()
            .confirm_renewal(&verified.certificate, &user.id, now, event)
            .await?;
        Ok(RenewalConfirmation {
            serial: verified.certificate.serial.clone(),
            completed,
        })
    }
    .await;
    let audit = Audit::of_attempt(&record, vec!["confirm".to_owned()]);
    audit_refusal(&state, &source, AuditKind::Renewal, now, &audit, result)
        .await
        .map(Json)
}

/// `POST /v1/renewals/resume`: for a renewal cut after the card's new key replaced the old
/// one but before the new certificate reached the card. The assertion presents the old
/// certificate (every sign-in check applies to it) and is signed by the new key; the
/// server finds the old card's pending renewal whose certificate has that key and hands
/// the certificate out again. `signature_invalid` when there is none.
pub async fn resume_renewal(
    State(state): State<ServerState>,
    source: ClientAddress,
    body: Result<Json<AssertionRequest>, JsonRejection>,
) -> Result<Json<EnrollmentResult>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut record = AttemptRecord::default();
    let mut resumed = None;
    let result = async {
        let request = json_body(body)?;
        let issuer = issuer(&state)?;
        let claimed = claimed_certificate(&request.assertion);
        let pending = match &claimed {
            Some(old) => state.store().pending_renewals(&CardId::of(old)).await?,
            None => Vec::new(),
        };
        let mut refusal = crate::verifier::Rejection::new(
            ErrorCode::SignatureInvalid,
            "no pending renewal of this certificate has the key that signed",
        );
        let mut found = None;
        for der in &pending {
            match state
                .verifier()
                .verify_signed_by_successor(&request.assertion, now, der)
            {
                Ok(verified) => {
                    found = Some((verified, der));
                    break;
                }
                Err(rejection) if rejection.code == ErrorCode::SignatureInvalid => {}
                Err(rejection) => refusal = rejection,
            }
        }
        let Some((verified, der)) = found else {
            return Err(refused_unverified(&request.assertion, &mut record, refusal));
        };
        let (_, user) = authenticate_verified(&state, &source, verified, now, &mut record).await?;
        let facts = CertificateFacts::from_der(der).map_err(|error| {
            tracing::error!(%error, "a pending certificate does not parse");
            ApiError::new(
                ErrorCode::Internal,
                "the server could not read the certificate",
            )
        })?;
        resumed = Some(facts.serial.clone());
        Ok(enrollment_result(&issuer, &facts, &user))
    }
    .await;
    let mut detail = vec!["resume".to_owned()];
    if let Some(serial) = resumed {
        detail.push(format!("pending certificate {serial} handed out again"));
    }
    write_audit(
        &state,
        &source,
        AuditKind::Renewal,
        now,
        Audit::of_attempt(&record, detail),
        result,
    )
    .await
    .map(Json)
}

/// The card certificate an assertion presents (`x5c[0]`), read without checking anything.
fn claimed_certificate(compact: &str) -> Option<CertificateFacts> {
    let jws = pivtap_protocol::jose::CompactJws::parse(compact).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&jws.header).ok()?;
    let b64 = header.get("x5c")?.get(0)?.as_str()?;
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    CertificateFacts::from_der(&der).ok()
}

/// `GET /v1/crl`: the issuing CA's CRL (DER) of every revoked certificate it issued.
pub async fn crl(State(state): State<ServerState>) -> Result<impl IntoResponse, ApiError> {
    let issuer = issuer(&state)?;
    let revoked = state
        .store()
        .revoked_issued_certificates(issuer.ca_name())
        .await?;
    let der = issuer
        .crl(&revoked, OffsetDateTime::now_utc())
        .map_err(|error| issuance_error(&error))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                pivtap_protocol::wire::CRL_CONTENT_TYPE,
            ),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        der,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_random_groups_that_hash_the_same_however_typed() {
        let code = new_code();
        assert_eq!(code.len(), 24, "{code}");
        assert_eq!(code.split('-').count(), 5);
        assert!(
            code.bytes()
                .all(|b| b == b'-' || CODE_ALPHABET.contains(&b)),
            "{code}"
        );
        assert_ne!(code, new_code());
        let typed = code.replace('-', " ").to_ascii_lowercase();
        assert_eq!(code_hash(&code), code_hash(&typed));
        assert_ne!(code_hash(&code), code_hash(&new_code()));
        assert_eq!(code_label(&code_hash(&code)).len(), "code #".len() + 8);
    }
}
