//! Device identity on the server: registering devices (admin API), device enrollment (a one-time code and a CSR for the device's own key in, a device certificate out), and the device proof every challenge request must carry.
//!
//! A device proves itself by signing its challenge request (a compact JWS,
//! see `pivtap_client::device`) with the P-256 key it generated itself, whose
//! certificate this server's issuing CA made at enrollment. Request signing,
//! not mutual TLS: it works through a TLS-terminating load balancer, over the
//! loopback plain-HTTP mode and on a reused HTTP/2 connection, and it binds the
//! proof to this server (`aud`), to a time (`iat`) and to one use (`jti`).
//!
//! Device enrollment codes are made and stored as card enrollment codes are
//! ([`super::enrollment::new_code`], SHA-256 only, single use, expiring, audited).

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use super::ServerState;
use super::client_address::ClientAddress;
use super::enrollment::{code_hash, code_label, decode_csr, issuer, new_code};
use super::error::ApiError;
use super::handlers::{json_body, rejection_error, rfc3339};
use crate::issuance::verify_csr;
use crate::store::{
    Device, DeviceCodeUse, DeviceCredentialRecord, DeviceState, NewAuditEvent, NewDevice,
};
#[cfg(feature = "embedded")]
use pivtap_client::device::{DeviceCredential, NewDeviceKey};
use pivtap_protocol::assertion::signature_verifies;
use pivtap_protocol::audit::{AuditKind, AuditOutcome};
use pivtap_protocol::certificate::{CertificateFacts, TrustStore};
use pivtap_protocol::jose::CompactJws;
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_protocol::wire::{
    CreateDeviceRequest, DEVICE_PROOF_TYPE, DeviceCode, DeviceEnrollmentRequest,
    DeviceEnrollmentResult, DeviceProofClaims, DeviceProofHeader, DeviceRecord, ErrorCode,
    RENEWAL_DEVICE_PREFIX,
};

/// How often open mode is logged again, at most.
const OPEN_MODE_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// What the device checks keep on this node: the issuing CA as a trust store (the
/// configuration's, fixed until a restart), and when open mode was last logged. The proof
/// ids seen (replays) are the store's ([`Store::use_proof_id`](crate::store::Store::use_proof_id)),
/// so a proof used at one node is refused at every other.
#[derive(Default)]
pub(crate) struct DeviceGate {
    trust: OnceLock<Option<TrustStore>>,
    last_open_warning: Mutex<Option<Instant>>,
}

impl DeviceGate {
    /// Logs open mode, at most once a minute.
    fn warn_open_mode(&self, device: &str) {
        let mut last = self
            .last_open_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= OPEN_MODE_WARNING_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(
                device,
                "OPEN MODE: a challenge went to a device that did not prove itself \
                 ([devices] require_registration = false); anyone can ask for challenges \
                 in any device's name. Register devices and turn this off."
            );
        }
    }
}

fn unknown(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::DeviceUnknown, message)
}

fn proof_invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::DeviceProofInvalid, message)
}

fn disabled(device: &str) -> ApiError {
    ApiError::new(
        ErrorCode::DeviceDisabled,
        format!("device {device} is disabled; ask your administrator"),
    )
}

/// Checks that the device asking for a challenge is who it says: a registered,
/// enabled device whose proof verifies with its registered certificate. Renewal
/// challenges ([`RENEWAL_DEVICE_PREFIX`]) need no proof: they cannot sign anyone in.
/// In open mode a device id nobody registered passes without a proof (logged).
pub(crate) async fn authenticate_device(
    state: &ServerState,
    device: &str,
    proof: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    if device.starts_with(RENEWAL_DEVICE_PREFIX) {
        return Ok(());
    }
    if let Some(proof) = proof {
        return verify_proof(state, device, proof, now).await;
    }
    if state.settings().devices.require_registration {
        return Err(unknown(
            "this server gives challenges only to registered devices that sign their request; \
             enroll this device (pivtap kiosk enroll-device) and give it its credential",
        ));
    }
    match state.store().get_device(device).await? {
        Some(record) if record.state == DeviceState::Disabled => Err(disabled(device)),
        Some(record) if record.credential.is_some() => Err(proof_invalid(format!(
            "device {device} is registered: its challenge requests must carry its proof"
        ))),
        _ => {
            state.device_gate().warn_open_mode(device);
            Ok(())
        }
    }
}

/// Every check of a device proof (module documentation).
pub(crate) async fn verify_proof(
    state: &ServerState,
    device: &str,
    proof: &str,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    let jws = CompactJws::parse(proof)
        .map_err(|_| proof_invalid("the device proof is not a compact JWS"))?;
    let header: DeviceProofHeader = serde_json::from_slice(&jws.header).map_err(|_| {
        proof_invalid("the device proof's header must hold exactly alg, typ and kid")
    })?;
    if header.alg != "ES256" || header.typ != DEVICE_PROOF_TYPE {
        return Err(proof_invalid(format!(
            "a device proof is ES256 with typ {DEVICE_PROOF_TYPE}"
        )));
    }
    if header.kid != device {
        return Err(proof_invalid(
            "the device proof is signed for another device",
        ));
    }
    let record = state
        .store()
        .get_device(device)
        .await?
        .ok_or_else(|| unknown(format!("no device {device} is registered")))?;
    if record.state == DeviceState::Disabled {
        return Err(disabled(device));
    }
    let credential = record.credential.ok_or_else(|| {
        unknown(format!(
            "device {device} is registered but has not enrolled its credential yet"
        ))
    })?;
    let (facts, public_key) = CertificateFacts::with_public_key(&credential.certificate)
        .map_err(|_| proof_invalid("the device's registered certificate cannot be read"))?;
    if !signature_verifies(
        JwsAlgorithm::Es256,
        &public_key,
        jws.signing_input.as_bytes(),
        &jws.signature,
    ) {
        return Err(proof_invalid(
            "the device proof does not verify with the device's registered key",
        ));
    }
    let claims: DeviceProofClaims = serde_json::from_slice(&jws.payload).map_err(|_| {
        proof_invalid("the device proof's claims must hold exactly aud, device, iat and jti")
    })?;
    if claims.device != device {
        return Err(proof_invalid(
            "the device proof is signed for another device",
        ));
    }
    if claims.aud != state.settings().origin {
        return Err(proof_invalid(
            "the device proof is meant for another server (aud)",
        ));
    }
    let skew = i64::try_from(state.verifier().max_clock_skew().as_secs()).unwrap_or(i64::MAX);
    let now_seconds = now.unix_timestamp();
    if claims.iat.abs_diff(now_seconds) > skew.unsigned_abs() {
        return Err(proof_invalid(
            "the device proof's iat is too far from the server's clock",
        ));
    }
    if !facts.is_valid_at(now) || facts.device.as_deref() != Some(device) {
        return Err(proof_invalid(
            "the device's certificate expired; enroll the device again",
        ));
    }
    let trust = state.device_gate().trust.get_or_init(|| {
        state
            .settings()
            .issuer
            .as_ref()
            .and_then(|issuer| TrustStore::new(&[issuer.ca_der().to_vec()], &[]).ok())
    });
    let chains = trust
        .as_ref()
        .is_some_and(|trust| trust.validate(&credential.certificate, &[], now).is_ok());
    if !chains {
        return Err(proof_invalid(
            "the device's certificate does not chain to this server's issuing CA; enroll the device again",
        ));
    }
    if claims.jti.is_empty() || claims.jti.len() > 64 {
        return Err(proof_invalid(
            "the device proof's jti must be 1 to 64 characters",
        ));
    }
    let remember_until = now + state.verifier().max_clock_skew().saturating_mul(2);
    if !state
        .store()
        .use_proof_id(&format!("{device}/{}", claims.jti), now, remember_until)
        .await?
    {
        return Err(proof_invalid("the device proof was used already"));
    }
    Ok(())
}

/// A device as the admin API shows it.
pub(crate) fn device_record(device: &Device) -> DeviceRecord {
    DeviceRecord {
        id: device.id.clone(),
        state: device.state.as_str().to_owned(),
        created_at: rfc3339(device.created_at),
        enrolled: device.credential.is_some(),
        code_expires_at: device
            .code_used_at
            .is_none()
            .then(|| rfc3339(device.code_expires_at)),
        certificate_serial: device.credential.as_ref().map(|c| c.serial.clone()),
        not_after: device.credential.as_ref().map(|c| rfc3339(c.not_after)),
    }
}

/// An admin action on a device, for the audit log.
fn admin_event(outcome: AuditOutcome, device: &str, detail: String) -> NewAuditEvent {
    NewAuditEvent {
        time: OffsetDateTime::now_utc(),
        kind: AuditKind::Admin,
        outcome,
        device: Some(device.to_owned()),
        card_serial: None,
        user_id: None,
        detail: Some(super::admin::acting(detail)),
    }
}

/// Checks an id an admin registers: a device id, not in the renewal namespace.
fn check_new_device_id(id: &str) -> Result<(), ApiError> {
    super::handlers::validate_device(id)?;
    if id.starts_with(RENEWAL_DEVICE_PREFIX) {
        return Err(ApiError::invalid(format!(
            "device ids starting with {RENEWAL_DEVICE_PREFIX} are reserved for renewal challenges"
        )));
    }
    Ok(())
}

/// Registers `id` with a fresh code valid `validity`; answers the code.
async fn register(
    state: &ServerState,
    id: &str,
    validity: std::time::Duration,
) -> Result<(String, Device), ApiError> {
    check_new_device_id(id)?;
    let code = new_code();
    let hash = code_hash(&code);
    let now = OffsetDateTime::now_utc();
    let new = NewDevice {
        id: id.to_owned(),
        code_hash: hash.clone(),
        created_at: now,
        code_expires_at: now + validity,
    };
    state
        .store()
        .add_device(
            &new,
            admin_event(
                AuditOutcome::Ok,
                id,
                format!(
                    "devices add {id}: {} valid {} s",
                    code_label(&hash),
                    validity.as_secs()
                ),
            ),
        )
        .await?;
    let device = state
        .store()
        .get_device(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the device vanished"))?;
    Ok((code, device))
}

/// `GET /v1/admin/devices`
pub(crate) async fn list_devices(
    State(state): State<ServerState>,
) -> Result<Json<Vec<DeviceRecord>>, ApiError> {
    let devices = state.store().list_devices().await?;
    Ok(Json(devices.iter().map(device_record).collect()))
}

/// `POST /v1/admin/devices`: registers a device; answers its one-time enrollment code.
pub(crate) async fn add_device(
    State(state): State<ServerState>,
    body: Result<Json<CreateDeviceRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let request = json_body(body)?;
    let validity = match request.validity_seconds {
        None => state.settings().devices.code_validity(),
        Some(seconds) if (60..=30 * 24 * 3600).contains(&seconds) => {
            std::time::Duration::from_secs(seconds)
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "validity_seconds must be 60 s to 30 days",
            ));
        }
    };
    let (code, device) = register(&state, &request.id, validity).await?;
    let expires_at = rfc3339(device.code_expires_at);
    Ok((
        StatusCode::CREATED,
        Json(DeviceCode {
            device: device_record(&device),
            code,
            expires_at,
        }),
    ))
}

fn device_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) =
        path.map_err(|rejection| rejection_error("the device id", &rejection.body_text()))?;
    super::handlers::validate_device(&id)?;
    Ok(id)
}

async fn set_state(
    state: &ServerState,
    id: &str,
    new_state: DeviceState,
) -> Result<Json<DeviceRecord>, ApiError> {
    let verb = match new_state {
        DeviceState::Enabled => "enable",
        DeviceState::Disabled => "disable",
    };
    state
        .store()
        .set_device_state(
            id,
            new_state,
            admin_event(AuditOutcome::Ok, id, format!("devices {verb} {id}")),
        )
        .await?;
    let device =
        state.store().get_device(id).await?.ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("device {id:?} not found"))
        })?;
    Ok(Json(device_record(&device)))
}

/// `POST /v1/admin/devices/{id}/disable`: no more challenges; its unused ones are void.
pub(crate) async fn disable_device(
    State(state): State<ServerState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceRecord>, ApiError> {
    set_state(&state, &device_id(path)?, DeviceState::Disabled).await
}

/// `POST /v1/admin/devices/{id}/enable`
pub(crate) async fn enable_device(
    State(state): State<ServerState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceRecord>, ApiError> {
    set_state(&state, &device_id(path)?, DeviceState::Enabled).await
}

/// `DELETE /v1/admin/devices/{id}`: forgets the device and voids its unused challenges.
pub(crate) async fn remove_device(
    State(state): State<ServerState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = device_id(path)?;
    state
        .store()
        .remove_device(
            &id,
            admin_event(AuditOutcome::Ok, &id, format!("devices remove {id}")),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The device enrollment: the code's device gets a certificate for the CSR's key.
async fn enroll(
    state: &ServerState,
    code: &str,
    csr: &[u8],
    now: OffsetDateTime,
    audit_device: &mut Option<String>,
    detail: &mut Vec<String>,
) -> Result<DeviceEnrollmentResult, ApiError> {
    let issuer = issuer(state)?;
    let hash = code_hash(code);
    detail.push(code_label(&hash));
    let code_unknown = || {
        ApiError::new(
            ErrorCode::EnrollmentCodeUnknown,
            "no such device enrollment code; check it, or ask your administrator for a new one",
        )
    };
    let code_used = || {
        ApiError::new(
            ErrorCode::EnrollmentCodeUsed,
            "this device enrollment code was used already; ask your administrator for a new one",
        )
    };
    let code_expired = || {
        ApiError::new(
            ErrorCode::EnrollmentCodeExpired,
            "this device enrollment code expired; ask your administrator for a new one",
        )
    };
    let device = state
        .store()
        .device_for_code(&hash)
        .await?
        .ok_or_else(code_unknown)?;
    *audit_device = Some(device.id.clone());
    if device.code_used_at.is_some() {
        return Err(code_used());
    }
    if device.code_expires_at <= now {
        return Err(code_expired());
    }
    let key = verify_csr(csr).map_err(|error| ApiError::new(error.code(), error.to_string()))?;
    let der = issuer
        .issue_device(
            &key,
            &device.id,
            now,
            state.settings().devices.certificate_validity_days,
        )
        .map_err(|error| match error.code() {
            ErrorCode::Internal => {
                tracing::error!(%error, "device certificate issuance failed");
                ApiError::new(
                    ErrorCode::Internal,
                    "the server could not issue the certificate",
                )
            }
            code => ApiError::new(code, error.to_string()),
        })?;
    let facts = CertificateFacts::from_der(&der).map_err(|_| {
        ApiError::new(
            ErrorCode::Internal,
            "the server could not issue the certificate",
        )
    })?;
    let credential = DeviceCredentialRecord {
        certificate: der.clone(),
        serial: facts.serial.clone(),
        fingerprint: facts.fingerprint.clone(),
        not_after: facts.not_after,
    };
    let event = NewAuditEvent {
        time: now,
        kind: AuditKind::DeviceEnrollment,
        outcome: AuditOutcome::Ok,
        device: None,
        card_serial: None,
        user_id: None,
        detail: Some(format!(
            "{}: device certificate {}",
            detail.join(": "),
            facts.serial
        )),
    };
    match state
        .store()
        .redeem_device_code(&hash, &credential, now, event)
        .await?
    {
        DeviceCodeUse::Accepted { device } => Ok(DeviceEnrollmentResult {
            device,
            certificate: URL_SAFE_NO_PAD.encode(&der),
            ca_certificate: URL_SAFE_NO_PAD.encode(issuer.ca_der()),
            not_after: rfc3339(facts.not_after),
        }),
        DeviceCodeUse::Used => Err(code_used()),
        DeviceCodeUse::Expired => Err(code_expired()),
        DeviceCodeUse::Unknown => Err(code_unknown()),
    }
}

/// `POST /v1/devices/enroll`: a device enrollment code and a CSR in, the device
/// certificate out. The success is audited with its effect; refusals on their own,
/// through [`ServerState::refused`] (anyone may call this: past the source's refusal
/// budget a refusal is answered `rate_limited` and counted, not audited one by one).
pub async fn enroll_device(
    State(state): State<ServerState>,
    source: ClientAddress,
    body: Result<Json<DeviceEnrollmentRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut device = None;
    let mut detail = Vec::new();
    let result = async {
        let request = json_body(body)?;
        let csr = decode_csr(&request.csr)?;
        enroll(&state, &request.code, &csr, now, &mut device, &mut detail).await
    }
    .await;
    match result {
        Ok(answer) => Ok((StatusCode::CREATED, Json(answer))),
        Err(error) => {
            detail.push(error.message.clone());
            let event = NewAuditEvent {
                time: now,
                kind: AuditKind::DeviceEnrollment,
                outcome: error.code.into(),
                device,
                card_serial: None,
                user_id: None,
                detail: Some(detail.join(": ")),
            };
            Err(state.refused(&source, event, error).await)
        }
    }
}

/// Registers and enrolls device `id` in-process, as `pivtap admin devices add` and
/// `pivtap kiosk enroll-device` would: for the embedded demo server and tests. The key
/// is made here; answers the key (PKCS#8 PEM) and the certificate (DER).
///
/// # Errors
/// [`ApiError`] as the two steps would answer (e.g. `conflict` for a registered id).
#[cfg(feature = "embedded")]
pub async fn enroll_locally(
    state: &ServerState,
    id: &str,
) -> Result<(zeroize::Zeroizing<String>, Vec<u8>), ApiError> {
    let (code, _) = register(state, id, state.settings().devices.code_validity()).await?;
    let key = NewDeviceKey::generate()
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))?;
    let now = OffsetDateTime::now_utc();
    let result = enroll(state, &code, &key.csr_der, now, &mut None, &mut Vec::new()).await?;
    let der = URL_SAFE_NO_PAD
        .decode(&result.certificate)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the certificate does not decode"))?;
    Ok((key.key_pem, der))
}

/// [`enroll_locally`], as a credential ready to sign proofs.
///
/// # Errors
/// As [`enroll_locally`].
#[cfg(feature = "embedded")]
pub async fn credential_locally(
    state: &ServerState,
    id: &str,
) -> Result<DeviceCredential, ApiError> {
    let (key_pem, der) = enroll_locally(state, id).await?;
    DeviceCredential::from_parts(&key_pem, &der)
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))
}
