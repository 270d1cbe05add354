//! The server's state behind one interface: users, cards, registered devices, challenges, the audit log, enrollment codes, the revocation list, the flow-control counters and the token signing keys.
//!
//! [`Store`] is object safe (`Arc<dyn Store>`): every method returns a boxed
//! future. [`SqliteStore`] is the embedded implementation. Times are kept in UTC
//! to the microsecond.

pub mod bulk;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod database;
mod postgres;
pub mod postgres_tls;
pub mod sessions;
pub mod snapshot;
mod sqlite;
pub mod url;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::mapping::UserAttribute;
use pivtap_protocol::certificate::CertificateFacts;

pub use database::DatabaseError;
pub use pivtap_protocol::audit::{AuditKind, AuditOutcome};
pub use postgres::PostgresStore;
pub use sessions::{
    CodeRedemption, DeliveryOutcome, KIOSK_CLIENT_ID, LogoutDelivery, NewAuthorizationCode,
    NewSession, OidcClient, RefreshUse, Session, SessionEndReason, SessionQuery, SessionSelector,
    secret_hash,
};
pub use sqlite::SqliteStore;

/// The future every [`Store`] method returns: boxed so the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a user may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserState {
    /// The user may sign in.
    Active,
    /// An administrator locked the user; unlocking makes them active again.
    Locked,
}

impl UserState {
    /// The state as stored and shown (`active`, `locked`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Locked => "locked",
        }
    }
}

impl fmt::Display for UserState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UserState {
    type Err = InvalidState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "active" => Ok(UserState::Active),
            "locked" => Ok(UserState::Locked),
            _ => Err(InvalidState {
                text: text.to_owned(),
            }),
        }
    }
}

/// Whether a card may be used to sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardState {
    /// The card may be used.
    Active,
    /// An administrator locked the card; unlocking makes it active again.
    Locked,
    /// The card is revoked for good: no state change leaves this one.
    Revoked,
}

impl CardState {
    /// The state as stored and shown (`active`, `locked`, `revoked`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CardState::Active => "active",
            CardState::Locked => "locked",
            CardState::Revoked => "revoked",
        }
    }
}

impl fmt::Display for CardState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CardState {
    type Err = InvalidState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "active" => Ok(CardState::Active),
            "locked" => Ok(CardState::Locked),
            "revoked" => Ok(CardState::Revoked),
            _ => Err(InvalidState {
                text: text.to_owned(),
            }),
        }
    }
}

/// A text that names no [`UserState`] or [`CardState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {text:?}")]
pub struct InvalidState {
    /// The text that was given.
    pub text: String,
}

/// Someone who may sign in; certificates map to users through one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The unique, case-sensitive user id (`uid`).
    pub id: String,
    /// The name shown on the device.
    pub display_name: String,
    /// E-mail address; matched case-insensitively (ASCII).
    pub mail: Option<String>,
    /// User principal name; matched case-insensitively (ASCII).
    pub upn: Option<String>,
    /// Employee number; matched exactly.
    pub employee_id: Option<String>,
    /// Whether the user may sign in.
    pub state: UserState,
}

/// The name of the admin credential of the server's admin token file.
pub const INITIAL_ADMIN_CREDENTIAL: &str = "initial";

/// A named admin credential as stored: only its token's hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCredential {
    /// Its name, recorded in the audit of every admin action it takes.
    pub name: String,
    /// SHA-256 of its token, lower-case hex.
    pub token_hash: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
}

/// Days ahead in which an issued certificate counts as expiring ([`StoreStats`]).
pub const EXPIRING_DAYS: i64 = 30;

/// Counts of what the store holds ([`Store::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Users by state (`active`, `locked`), every state listed.
    pub users: Vec<(UserState, u64)>,
    /// Cards by state (`active`, `locked`, `revoked`), every state listed.
    pub cards: Vec<(CardState, u64)>,
    /// Successful sign-ins in the hour before.
    pub sign_ins_last_hour: u64,
    /// Certificates this server issued, of cards not revoked, that are valid now and
    /// expire within [`EXPIRING_DAYS`] days.
    pub certificates_expiring: u64,
}

/// What an import did with one user ([`Store::import_users`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserWritten {
    /// A new user.
    Added,
    /// An existing user whose fields changed: these (`display_name`, `mail`, `upn`,
    /// `employee_id`).
    Updated(Vec<&'static str>),
    /// An existing user as given already.
    Unchanged,
}

/// Users who share a value of a mapped attribute, so that a card certificate with that
/// value maps to all of them (and signs in none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConflict {
    /// The attribute they share.
    pub attribute: UserAttribute,
    /// Their ids, in order.
    pub user_ids: Vec<String>,
}

/// Hex digits of an issuer id: the first 64 bits of the SHA-256 of the issuer name.
const ISSUER_ID_HEX: usize = 16;

/// The short id of a certificate issuer: the first 16 hex digits of the SHA-256 of its
/// name as [`CertificateFacts::issuer`] writes it (RFC 4514).
#[must_use]
pub fn issuer_id(issuer: &str) -> String {
    use sha2::Digest as _;
    let mut id = hex::encode(sha2::Sha256::digest(issuer.as_bytes()));
    id.truncate(ISSUER_ID_HEX);
    id
}

/// What names one card: its certificate's issuer and serial number, which RFC 5280 makes
/// unique together (two CAs may both issue serial 1001). Shown as `serial@issuer-id`
/// ([`issuer_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardId {
    /// The certificate's issuer (RFC 4514), as [`CertificateFacts::issuer`].
    pub issuer: String,
    /// The certificate's serial number (lower-case hex).
    pub serial: String,
}

impl CardId {
    /// The card of a certificate.
    #[must_use]
    pub fn of(facts: &CertificateFacts) -> Self {
        CardId {
            issuer: facts.issuer.clone(),
            serial: facts.serial.clone(),
        }
    }

    /// The issuer's short id ([`issuer_id`]).
    #[must_use]
    pub fn issuer_id(&self) -> String {
        issuer_id(&self.issuer)
    }

    /// `serial@issuer-id`, what the admin API and CLI accept and show.
    #[must_use]
    pub fn qualified(&self) -> String {
        format!("{}@{}", self.serial, self.issuer_id())
    }
}

impl fmt::Display for CardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.qualified())
    }
}

/// A card, known by its certificate's issuer and serial number since it was first seen in
/// an assertion (or issued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// The certificate's serial number (lower-case hex).
    pub serial: String,
    /// SHA-256 of the certificate last seen with this serial (lower-case hex).
    pub fingerprint: String,
    /// The certificate's issuer (RFC 4514).
    pub issuer: String,
    /// The certificate's subject (RFC 4514).
    pub subject: String,
    /// The user the card last mapped to, if any.
    pub user_id: Option<String>,
    /// Whether the card may be used.
    pub state: CardState,
    /// When the card was first seen.
    pub first_seen: OffsetDateTime,
    /// When the card was last seen.
    pub last_seen: OffsetDateTime,
}

impl Card {
    /// Its issuer and serial.
    #[must_use]
    pub fn id(&self) -> CardId {
        CardId {
            issuer: self.issuer.clone(),
            serial: self.serial.clone(),
        }
    }
}

/// What happened when a device redeemed a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeUse {
    /// The challenge was fresh, belonged to this device, and is now used.
    Accepted,
    /// This server never issued the nonce (or purged it long ago).
    Unknown,
    /// The challenge expired before it was used.
    Expired,
    /// The challenge was used already: a replay. Wins over [`ChallengeUse::Expired`].
    Reused,
    /// The challenge was issued to another device. Wins over the other refusals.
    OtherDevice,
}

/// What [`Store::begin_sign_in`] takes and looks up for one sign-in attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInLookup {
    /// The challenge's nonce, to be used up.
    pub nonce: String,
    /// The device the assertion names.
    pub device: String,
    /// The time of the attempt.
    pub now: OffsetDateTime,
    /// The card's certificate: its issuer and serial number.
    pub card: CardId,
    /// The user attribute the certificate maps to.
    pub user_attribute: UserAttribute,
    /// The certificate's values for that attribute: a user matching any of them is found.
    pub user_values: Vec<String>,
}

/// What the store holds for one sign-in attempt, read in the same write that takes its
/// challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInRecords {
    /// What became of the challenge (as [`Store::use_challenge`]).
    pub challenge: ChallengeUse,
    /// The card's record, if it has one.
    pub card: Option<Card>,
    /// The certificate's entry on the revocation list, looked up when the card has no
    /// record (the list outlives deleted records).
    pub revocation: Option<RevokedCertificate>,
    /// When the certificate is a renewal's new certificate not yet in use (it has no record
    /// yet): the record of the card it renews, whose state it has until then.
    pub renews: Option<Card>,
    /// Every user matching one of the values, each once, ordered by id.
    pub users: Vec<User>,
}

/// One stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Increases with every event.
    pub id: i64,
    /// When it happened.
    pub time: OffsetDateTime,
    /// What it records (stored as [`AuditKind::as_str`]).
    pub kind: AuditKind,
    /// `ok`, or the [`ErrorCode`](pivtap_protocol::wire::ErrorCode) of the refusal (stored as
    /// [`AuditOutcome::as_str`]).
    pub outcome: AuditOutcome,
    /// The device id, when one was involved.
    pub device: Option<String>,
    /// The card's serial number, when one was involved.
    pub card_serial: Option<String>,
    /// The user id, when one was involved.
    pub user_id: Option<String>,
    /// Free text for people.
    pub detail: Option<String>,
}

/// Most characters of an audit event's `detail` the store keeps.
pub const MAX_AUDIT_DETAIL_CHARS: usize = 512;
/// Most characters of an audit event's other fields the store keeps.
pub const MAX_AUDIT_FIELD_CHARS: usize = 128;

/// An audit event to record.
///
/// The store keeps it [bounded](NewAuditEvent::bounded): whatever a client put in it
/// (a path, a device id, a quoted field name) cannot make a row large or hide
/// control or bidi characters in it. Callers never pass a PIN, a token, a
/// credential or a whole nonce (at most a short nonce prefix, in `detail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// When it happened.
    pub time: OffsetDateTime,
    /// What it records (stored as [`AuditKind::as_str`]).
    pub kind: AuditKind,
    /// `ok`, or the [`ErrorCode`](pivtap_protocol::wire::ErrorCode) of the refusal (stored as
    /// [`AuditOutcome::as_str`]).
    pub outcome: AuditOutcome,
    /// The device id, when one was involved.
    pub device: Option<String>,
    /// The card's serial number, when one was involved.
    pub card_serial: Option<String>,
    /// The user id, when one was involved.
    pub user_id: Option<String>,
    /// Free text for people; never secrets, at most a nonce prefix.
    pub detail: Option<String>,
}

impl NewAuditEvent {
    /// The event as the store keeps it: every text field [escaped](pivtap_protocol::escape::escape)
    /// and cut to [`MAX_AUDIT_FIELD_CHARS`] (`detail` to [`MAX_AUDIT_DETAIL_CHARS`]).
    #[must_use]
    pub fn bounded(&self) -> NewAuditEvent {
        let field = |text: &str| pivtap_protocol::escape::bounded(text, MAX_AUDIT_FIELD_CHARS);
        NewAuditEvent {
            time: self.time,
            kind: self.kind,
            outcome: self.outcome,
            device: self.device.as_deref().map(field),
            card_serial: self.card_serial.as_deref().map(field),
            user_id: self.user_id.as_deref().map(field),
            detail: self
                .detail
                .as_deref()
                .map(|detail| pivtap_protocol::escape::bounded(detail, MAX_AUDIT_DETAIL_CHARS)),
        }
    }
}

/// An enrollment code to store. Only the code's hash is kept: the code itself
/// is shown to the admin once and never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnrollmentCode {
    /// SHA-256 of the code, lower-case hex.
    pub code_hash: String,
    /// The user the code enrolls.
    pub user_id: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

/// A stored enrollment code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentCodeRecord {
    /// SHA-256 of the code, lower-case hex.
    pub code_hash: String,
    /// The user the code enrolls.
    pub user_id: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
    /// When it was used, if it was.
    pub used_at: Option<OffsetDateTime>,
    /// The serial of the certificate issued with it, if it was used.
    pub used_by: Option<String>,
}

/// What happened when an enrollment code was redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnrollmentCodeUse {
    /// The code was fresh and is now used; the certificate is registered.
    Accepted,
    /// No such code.
    Unknown,
    /// The code was used already. Wins over [`EnrollmentCodeUse::Expired`].
    Used,
    /// The code expired.
    Expired,
}

/// A certificate this server issued, to register with its card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The certificate.
    pub facts: CertificateFacts,
    /// Whom it names.
    pub user_id: String,
    /// The card's own serial number (YubiKey), when the device sent it.
    pub card_serial_number: Option<u32>,
    /// The card's CHUID GUID (hex), when the device sent it.
    pub chuid_guid: Option<String>,
}

/// Why a certificate is on the revocation list (RFC 5280 §5.3.1 CRLReason): the reasons
/// an administrator or a renewal may give (not the CA's own, nor `certificateHold`, which
/// is not final).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// No reason given (`unspecified`, 0).
    Unspecified,
    /// The card's key is known or suspected to be exposed (`keyCompromise`, 1).
    KeyCompromise,
    /// The holder's name or affiliation changed, such as leaving (`affiliationChanged`, 3).
    AffiliationChanged,
    /// A new certificate replaced it, such as a renewal (`superseded`, 4).
    Superseded,
    /// The card is no longer needed: returned or destroyed (`cessationOfOperation`, 5).
    CessationOfOperation,
    /// The holder may no longer sign in with it (`privilegeWithdrawn`, 9).
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in the order of their RFC 5280 codes.
    pub const ALL: [RevocationReason; 6] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// The RFC 5280 name, as stored and shown (`unspecified`, `keyCompromise`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }

    /// The RFC 5280 reason code.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::PrivilegeWithdrawn => 9,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = InvalidState;

    /// The RFC 5280 name in any case (`keyCompromise`, `keycompromise`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RevocationReason::ALL
            .into_iter()
            .find(|reason| reason.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| InvalidState {
                text: text.to_owned(),
            })
    }
}

/// A revoked certificate: stays on the list after its card record is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// The certificate's issuer (RFC 4514); empty for a revocation recorded before store
    /// version 4 whose issuer could not be told, which then counts for every issuer.
    pub issuer: String,
    /// The certificate's serial number (lower-case hex).
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

/// Whether a registered device may ask for challenges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// The device may ask for challenges (once it holds its credential).
    Enabled,
    /// An administrator disabled it: no challenges; enabling it again restores it.
    Disabled,
}

impl DeviceState {
    /// The state as stored and shown (`enabled`, `disabled`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Enabled => "enabled",
            DeviceState::Disabled => "disabled",
        }
    }
}

impl FromStr for DeviceState {
    type Err = InvalidState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "enabled" => Ok(DeviceState::Enabled),
            "disabled" => Ok(DeviceState::Disabled),
            _ => Err(InvalidState {
                text: text.to_owned(),
            }),
        }
    }
}

/// A device to register, with its one-time enrollment code (its hash only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// The device id.
    pub id: String,
    /// SHA-256 of the device enrollment code, lower-case hex.
    pub code_hash: String,
    /// When it was registered.
    pub created_at: OffsetDateTime,
    /// When the code stops being accepted.
    pub code_expires_at: OffsetDateTime,
}

/// A device's credential: the certificate the server issued for the device's own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCredentialRecord {
    /// The certificate, DER.
    pub certificate: Vec<u8>,
    /// Its serial number (lower-case hex).
    pub serial: String,
    /// Its SHA-256 (lower-case hex).
    pub fingerprint: String,
    /// When it expires.
    pub not_after: OffsetDateTime,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device id.
    pub id: String,
    /// Whether it may ask for challenges.
    pub state: DeviceState,
    /// When it was registered.
    pub created_at: OffsetDateTime,
    /// When its enrollment code expires.
    pub code_expires_at: OffsetDateTime,
    /// When its enrollment code was used, if it was.
    pub code_used_at: Option<OffsetDateTime>,
    /// Its credential, once it enrolled.
    pub credential: Option<DeviceCredentialRecord>,
}

/// What happened when a device enrollment code was redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceCodeUse {
    /// The code was fresh and is now used; the credential is registered for this device.
    Accepted {
        /// The device the code was for.
        device: String,
    },
    /// No such code (or its device was removed).
    Unknown,
    /// The code was used already. Wins over [`DeviceCodeUse::Expired`].
    Used,
    /// The code expired.
    Expired,
}

/// A kind filter of [`AuditQuery`]: a stored kind, or one of the names for sign-ins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditKindFilter {
    /// Events of this kind.
    Kind(AuditKind),
    /// `sign_in`: assertions that signed someone in (kind `assertion`, outcome `ok`).
    SignIn,
    /// `sign_in_refused`: assertions that were refused (kind `assertion`, outcome not `ok`).
    SignInRefused,
}

impl AuditKindFilter {
    /// Every text a filter reads: the kinds, then `sign_in` and `sign_in_refused`.
    #[must_use]
    pub fn names() -> String {
        format!("{}, sign_in or sign_in_refused", AuditKind::names())
    }
}

impl FromStr for AuditKindFilter {
    type Err = InvalidState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sign_in" => Ok(AuditKindFilter::SignIn),
            "sign_in_refused" => Ok(AuditKindFilter::SignInRefused),
            kind => kind
                .parse()
                .map(AuditKindFilter::Kind)
                .map_err(|_| InvalidState {
                    text: text.to_owned(),
                }),
        }
    }
}

/// Which audit events to return: every filter that is set must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events of this user.
    pub user_id: Option<String>,
    /// Only events of this card.
    pub card_serial: Option<String>,
    /// Only events of this device.
    pub device: Option<String>,
    /// Only events with this outcome.
    pub outcome: Option<AuditOutcome>,
    /// Only events of this kind (see [`AuditKindFilter`]).
    pub kind: Option<AuditKindFilter>,
    /// Only events older than this one (by time, then id): the next page after a page
    /// whose last event this is. An id no longer stored (purged) pages by id alone.
    pub before: Option<i64>,
    /// Only events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only events strictly before this time.
    pub until: Option<OffsetDateTime>,
    /// At most this many events, newest first; 0 means [`AuditQuery::DEFAULT_LIMIT`], and
    /// anything above [`AuditQuery::MAX_LIMIT`] is cut to it.
    pub limit: u32,
}

impl AuditQuery {
    /// The number of events returned when the query does not say.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// The most events one query returns.
    pub const MAX_LIMIT: u32 = 1000;

    /// The limit the store applies: `limit`, defaulted and capped.
    #[must_use]
    pub fn effective_limit(&self) -> u32 {
        match self.limit {
            0 => Self::DEFAULT_LIMIT,
            limit => limit.min(Self::MAX_LIMIT),
        }
    }
}

impl Default for AuditQuery {
    fn default() -> Self {
        AuditQuery {
            user_id: None,
            card_serial: None,
            device: None,
            outcome: None,
            kind: None,
            before: None,
            since: None,
            until: None,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

/// A failure counter of the flow control ([`Store::record_failures`]): the failed sign-ins
/// counted against one key (`card:<fingerprint>`, `device:<id>@<source>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCount {
    /// The key counted against.
    pub key: String,
    /// Failures counted since the counter last started.
    pub count: u32,
    /// When the last of them happened.
    pub last: OffsetDateTime,
}

/// What became of a [`Store::spend_budget`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetUse {
    /// One request was spent from every key's budget.
    Spent,
    /// A budget had no room: nothing was spent. `horizon` is the furthest horizon of the
    /// keys that had none (see [`Store::spend_budget`]), from which the wait follows.
    Empty {
        /// The bucket's horizon (its theoretical arrival time).
        horizon: OffsetDateTime,
    },
}

/// The token-signing key set as the store keeps it: the key file's text (secret) and a
/// version that every replacement increases.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredTokenKeys {
    /// Increases with every replacement; a node compares it with the one it holds.
    pub version: i64,
    /// The key set in the key file's form ([`TokenKeys::to_text`](crate::token::TokenKeys::to_text)): holds the private key.
    pub keys: zeroize::Zeroizing<String>,
}

impl fmt::Debug for StoredTokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTokenKeys")
            .field("version", &self.version)
            .field("keys", &"REDACTED")
            .finish()
    }
}

/// Why a store operation failed. Messages name users and cards, never secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The user or card does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, such as `user "alice"`.
        what: String,
    },
    /// The change contradicts what is stored (an existing id, a revoked card).
    #[error("{what}")]
    Conflict {
        /// What clashed.
        what: String,
    },
    /// A new user's mail, UPN or employee id is another user's already, compared as the
    /// mapping rules compare it: a certificate could then map to both.
    #[error("user {holder:?} has this {attribute} already")]
    AttributeTaken {
        /// The user attribute (`mail`, `upn`, `employee_id`).
        attribute: UserAttribute,
        /// The id of the user who has it.
        holder: String,
    },
    /// The database failed or holds data this program cannot read.
    #[error("database error")]
    Database(#[source] DatabaseError),
}

/// The server's state: users, cards, challenges and the audit log.
///
/// Every node of a deployment shares one store; challenge use is atomic across them.
pub trait Store: Send + Sync {
    /// Adds a user. [`StoreError::Conflict`] if the id exists;
    /// [`StoreError::AttributeTaken`] if another user has its mail or UPN (ASCII case
    /// folded) or its employee id (exactly): every attribute a mapping rule looks users up
    /// by stays unique.
    fn add_user(&self, user: &User) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Imports users in one write, in order, each with its audit event: a new id is added
    /// with the checks of [`Store::add_user`]; an existing one is [`StoreError::Conflict`],
    /// or with `update` has its name and attributes replaced (its state kept) with the
    /// checks of [`Store::update_user`]. Checks see the users before and those written
    /// before in the same import. An unchanged user gets no event; an updated one gets
    /// `event` with the changed fields added to its detail. With `dry_run` every check
    /// runs and nothing is kept. One result per user; `Err` only if the write as a whole
    /// failed (nothing was written).
    fn import_users(
        &self,
        users: Vec<(User, NewAuditEvent)>,
        update: bool,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<Vec<Result<UserWritten, StoreError>>, StoreError>>;

    /// Replaces user `id`'s record with `user` (its state is kept), with its audit event,
    /// in one write. A new id renames the user: their cards, enrollment codes, issued
    /// certificates, sessions and audit events move to the new id (so that locking or
    /// deleting them by the new id ends their sessions). [`StoreError::NotFound`] if
    /// there is no user `id`; [`StoreError::Conflict`] if the new id is another user's;
    /// [`StoreError::AttributeTaken`] if another user has one of its mapped attributes.
    fn update_user(
        &self,
        id: &str,
        user: &User,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Deletes user `id` with its audit event, in one write: their cards that are not
    /// revoked are revoked (`affiliationChanged`, on the revocation list with their pending
    /// renewals), every card of theirs keeps its record without a user, and their
    /// enrollment codes are deleted. Returns the cards it revoked. The audit keeps their
    /// events. [`StoreError::NotFound`] if there is no such user.
    fn delete_user(
        &self,
        id: &str,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<Vec<CardId>, StoreError>>;

    /// Groups of users who share a value of a mapped attribute (mail or UPN, ASCII case
    /// folded; employee id), each group's ids in order: left over from before the
    /// uniqueness checks, reported at start so an administrator can resolve them.
    fn user_conflicts(&self) -> BoxFuture<'_, Result<Vec<UserConflict>, StoreError>>;

    /// The user with this id, if any.
    fn get_user(&self, id: &str) -> BoxFuture<'_, Result<Option<User>, StoreError>>;

    /// Every user, ordered by id.
    fn list_users(&self) -> BoxFuture<'_, Result<Vec<User>, StoreError>>;

    /// Every user whose `attribute` equals `value`, ordered by id: the id and the
    /// employee id match exactly, mail and UPN case-insensitively (ASCII). The
    /// caller refuses anything but exactly one match.
    fn find_users(
        &self,
        attribute: UserAttribute,
        value: &str,
    ) -> BoxFuture<'_, Result<Vec<User>, StoreError>>;

    /// Locks or unlocks a user. [`StoreError::NotFound`] if there is no such user.
    fn set_user_state(&self, id: &str, state: UserState) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Records a card seen in an assertion: inserts it as active, or updates its
    /// certificate details and `last_seen`, keeping its state. `user_id` replaces the
    /// stored user when given; `None` keeps the user seen before.
    /// [`StoreError::NotFound`] if `user_id` names no user.
    fn record_card(
        &self,
        facts: &CertificateFacts,
        user_id: Option<&str>,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Card, StoreError>>;

    /// The card with this issuer and serial number, if any.
    fn get_card(&self, id: &CardId) -> BoxFuture<'_, Result<Option<Card>, StoreError>>;

    /// Every card whose certificate has this serial number (of any issuer), ordered by issuer.
    fn find_cards(&self, serial: &str) -> BoxFuture<'_, Result<Vec<Card>, StoreError>>;

    /// Every card, ordered by serial number, then issuer.
    fn list_cards(&self) -> BoxFuture<'_, Result<Vec<Card>, StoreError>>;

    /// Locks, unlocks or revokes a card. [`StoreError::NotFound`] if there is no such
    /// card; [`StoreError::Conflict`] when leaving [`CardState::Revoked`], which is final.
    /// Revoking puts the certificate on the revocation list (reason unspecified), and with
    /// it the new certificates of the card's pending renewals.
    fn set_card_state(
        &self,
        id: &CardId,
        state: CardState,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Revokes a card as [`Store::set_card_state`] does, with `reason` on the revocation
    /// list (for the card and its pending renewals).
    fn revoke_card(
        &self,
        id: &CardId,
        reason: RevocationReason,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Stores a fresh challenge for `device` and its audit event, in one write.
    /// [`StoreError::Conflict`] (and no event) if the nonce exists. Only a [`Nonce`] the
    /// server made is stored; lookups take the text a client claims.
    ///
    /// [`Nonce`]: pivtap_protocol::nonce::Nonce
    fn add_challenge(
        &self,
        nonce: &pivtap_protocol::nonce::Nonce,
        device: &str,
        expires_at: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The store's part of a sign-in, in one write: uses up the challenge exactly as
    /// [`Store::use_challenge`] does, and reads the card's record, its revocation and the
    /// users the certificate maps to (whatever became of the challenge).
    fn begin_sign_in(
        &self,
        lookup: &SignInLookup,
    ) -> BoxFuture<'_, Result<SignInRecords, StoreError>>;

    /// The end of a successful sign-in, in one write: records the card as
    /// [`Store::record_card`] does, for `user_id`, stores `session` (active) with its kiosk
    /// refresh token (client [`KIOSK_CLIENT_ID`], scope empty, current), and appends
    /// `event` to the audit log. When the certificate is a pending renewal's new one, this
    /// first use completes the renewal as [`Store::confirm_renewal`] does (with its own
    /// `renewal` audit event). [`StoreError::Conflict`] (nothing written) if the session id
    /// or the refresh token's hash exists.
    fn finish_sign_in(
        &self,
        facts: &CertificateFacts,
        user_id: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
        session: &NewSession,
    ) -> BoxFuture<'_, Result<Card, StoreError>>;

    /// Marks the challenge used, atomically: of any number of concurrent calls on
    /// any node, at most one gets [`ChallengeUse::Accepted`]. A challenge is fresh
    /// while `now` is before its `expires_at`.
    fn use_challenge(
        &self,
        nonce: &str,
        device: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<ChallengeUse, StoreError>>;

    /// Deletes the challenges that expired before `older_than`, used or not, and
    /// returns how many. A purged nonce is then [`ChallengeUse::Unknown`], still a refusal.
    fn purge_challenges(
        &self,
        older_than: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Deletes at most `limit` audit events from before `older_than`, oldest first, and
    /// returns how many (the server's upkeep calls it in batches).
    fn purge_audit(
        &self,
        older_than: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The bytes the store takes on disk (SQLite: the database file and its write-ahead
    /// log), if it keeps files.
    fn size_bytes(&self) -> Option<u64> {
        None
    }

    /// Compacts the store's files after writes (SQLite: moves the write-ahead
    /// log into the database and truncates it, which a busy server's own
    /// automatic checkpoints can starve). Stores without such files do nothing.
    fn compact(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Stores an enrollment code. [`StoreError::NotFound`] if the user does not
    /// exist; [`StoreError::Conflict`] if the hash exists.
    fn add_enrollment_code(
        &self,
        code: &NewEnrollmentCode,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The enrollment code with this hash, if any.
    fn get_enrollment_code(
        &self,
        code_hash: &str,
    ) -> BoxFuture<'_, Result<Option<EnrollmentCodeRecord>, StoreError>>;

    /// Uses the code up, registers the issued certificate's card as active for its
    /// user and appends `event` (the enrollment's audit event) to the audit log,
    /// atomically: of any number of concurrent calls at most one gets
    /// [`EnrollmentCodeUse::Accepted`], and a refused call changes nothing (and writes
    /// no event: the caller audits the refusal). [`StoreError::Conflict`] if a card with
    /// the certificate's issuer and serial exists.
    fn redeem_enrollment_code(
        &self,
        code_hash: &str,
        issued: &IssuedCertificate,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<EnrollmentCodeUse, StoreError>>;

    /// The first step of a renewal, atomically: records the old card as a sign-in
    /// does (for `user_id`), registers the issued certificate as issued and as the
    /// old card's pending renewal (its card record comes when it is first used), and
    /// appends `event`. The old card stays active until the renewal completes
    /// ([`Store::confirm_renewal`], or the new certificate's first sign-in); earlier
    /// pending renewals of the old card are revoked (superseded), since the old key
    /// signed this one. When the old certificate is itself a pending renewal's new
    /// one, that renewal completes first. [`StoreError::Conflict`] if the old card
    /// is not active or the new certificate exists.
    fn begin_renewal(
        &self,
        old: &CertificateFacts,
        user_id: &str,
        issued: &IssuedCertificate,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The new certificates (DER) of the card's pending renewals, newest first.
    fn pending_renewals(&self, old: &CardId) -> BoxFuture<'_, Result<Vec<Vec<u8>>, StoreError>>;

    /// The second step of a renewal, atomically: when `new` is a pending renewal's
    /// certificate, the old card becomes revoked (superseded, on the revocation list)
    /// with a `renewal` audit event; then `new`'s card is recorded as a sign-in
    /// records it, and `event` appended. Returns whether a pending renewal completed
    /// (`false`: done before, which is no error).
    fn confirm_renewal(
        &self,
        new: &CertificateFacts,
        user_id: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// The revocation of this certificate, if it is on the list (an entry recorded
    /// without its issuer, before store version 4, counts for every issuer).
    fn revocation(
        &self,
        id: &CardId,
    ) -> BoxFuture<'_, Result<Option<RevokedCertificate>, StoreError>>;

    /// Every revoked certificate this server issued as `issuer` (what its CRL lists),
    /// ordered by serial: another CA's certificates with the same serials are not listed.
    fn revoked_issued_certificates(
        &self,
        issuer: &str,
    ) -> BoxFuture<'_, Result<Vec<RevokedCertificate>, StoreError>>;

    /// Deletes a revoked card's record; it stays on the revocation list.
    /// [`StoreError::NotFound`] if there is no such card; [`StoreError::Conflict`]
    /// if it is not revoked.
    fn delete_card(&self, id: &CardId) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Registers a device and its enrollment code, with its audit event, in one write.
    /// [`StoreError::Conflict`] if the id (or the code hash) exists.
    fn add_device(
        &self,
        device: &NewDevice,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The device with this id, if any.
    fn get_device(&self, id: &str) -> BoxFuture<'_, Result<Option<Device>, StoreError>>;

    /// The device whose enrollment code has this hash, if any (used or not).
    fn device_for_code(&self, code_hash: &str)
    -> BoxFuture<'_, Result<Option<Device>, StoreError>>;

    /// Every device, ordered by id.
    fn list_devices(&self) -> BoxFuture<'_, Result<Vec<Device>, StoreError>>;

    /// Enables or disables a device, with its audit event, in one write. Disabling also
    /// deletes the device's unused challenges, so that none it was given is accepted.
    /// [`StoreError::NotFound`] if there is no such device.
    fn set_device_state(
        &self,
        id: &str,
        state: DeviceState,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes a device and its unused challenges, with its audit event, in one write.
    /// [`StoreError::NotFound`] if there is no such device.
    fn remove_device(
        &self,
        id: &str,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Uses the device enrollment code up and registers the credential for its device,
    /// atomically (at most one of concurrent calls is accepted); `event` (its `device`
    /// filled in) is audited in the same write when accepted.
    fn redeem_device_code(
        &self,
        code_hash: &str,
        credential: &DeviceCredentialRecord,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<DeviceCodeUse, StoreError>>;

    /// Adds a named admin credential (the SHA-256 of its token, hex) with its audit event.
    /// [`StoreError::Conflict`] if the name or the token is taken (revoked ones too).
    fn add_admin_credential(
        &self,
        name: &str,
        token_hash: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every stored admin credential, ordered by name.
    fn admin_credentials(&self) -> BoxFuture<'_, Result<Vec<AdminCredential>, StoreError>>;

    /// The stored admin credential whose token has this hash, if any (revoked or not).
    fn find_admin_credential(
        &self,
        token_hash: &str,
    ) -> BoxFuture<'_, Result<Option<AdminCredential>, StoreError>>;

    /// Revokes admin credential `name` for good, with its audit event. The
    /// [`INITIAL_ADMIN_CREDENTIAL`] (the token file's, hash `initial_hash`) gets a record
    /// to revoke if it has none. [`StoreError::NotFound`] for an unknown name;
    /// [`StoreError::Conflict`] if it is revoked already, or is the last active one.
    fn revoke_admin_credential(
        &self,
        name: &str,
        initial_hash: &str,
        now: OffsetDateTime,
        event: NewAuditEvent,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Counts for the metrics at `now`: users and cards by state, sign-ins in the last
    /// hour, certificates this server issued that expire within [`EXPIRING_DAYS`] days.
    fn stats(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<StoreStats, StoreError>>;

    /// Appends an event to the audit log.
    fn audit(&self, event: NewAuditEvent) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Writes `now` into the store's one heartbeat record and commits it, as a
    /// sign-in's write would be: an error says no sign-in could be recorded
    /// now (readiness, and the check at start-up).
    fn heartbeat(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The audit events matching `query`, newest first, at most
    /// [`AuditQuery::effective_limit`] of them.
    fn query_audit(&self, query: &AuditQuery)
    -> BoxFuture<'_, Result<Vec<AuditEvent>, StoreError>>;

    /// Counts one failed sign-in against every one of `keys`, atomically across nodes: a
    /// key's counter starts again at 1 when its last failure was before `forget_before`,
    /// and otherwise grows by one; its last failure becomes `now`.
    fn record_failures(
        &self,
        keys: &[String],
        now: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The failure counters of those of `keys` that have one, in no set order.
    fn failures(&self, keys: &[String]) -> BoxFuture<'_, Result<Vec<FailureCount>, StoreError>>;

    /// Deletes the failure counters of `keys` (a successful sign-in).
    fn clear_failures(&self, keys: &[String]) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Spends one request from budget `kind` of every one of `keys`, all or none, atomically
    /// across nodes. A budget is a horizon (GCRA's theoretical arrival time, a missing one
    /// is `now`): spending moves it to `max(horizon, now) + step`, allowed while that is at
    /// most `now + tolerance` (a token bucket of `tolerance / step` requests refilled one
    /// per `step`). Refused, nothing moves and [`BudgetUse::Empty`] tells the furthest
    /// horizon of the keys without room.
    fn spend_budget(
        &self,
        kind: &str,
        keys: &[String],
        now: OffsetDateTime,
        step: std::time::Duration,
        tolerance: std::time::Duration,
    ) -> BoxFuture<'_, Result<BudgetUse, StoreError>>;

    /// Remembers device proof id `id` until `remember_until`, atomically across nodes:
    /// `true` when it is new (or remembered only until before `now`), `false` when it was
    /// seen already (a replay).
    fn use_proof_id(
        &self,
        id: &str,
        now: OffsetDateTime,
        remember_until: OffsetDateTime,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Deletes what the flow control no longer needs at `now`, and returns how many rows:
    /// budgets whose horizon passed (a full bucket is a missing one), proof ids remembered
    /// until before `now`, and failure counters whose last failure was before `failures_before`.
    fn purge_flow_control(
        &self,
        now: OffsetDateTime,
        failures_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The token-signing key set, if the store has one.
    fn token_keys(&self) -> BoxFuture<'_, Result<Option<StoredTokenKeys>, StoreError>>;

    /// Stores `keys` (the key file's text) as the token-signing key set, atomically across
    /// nodes, and returns its version: with `replaces` `None` only when the store has none
    /// yet, with `Some(version)` only when the stored set is that version.
    /// [`StoreError::Conflict`] otherwise (another node stored a set first), with nothing
    /// changed.
    fn replace_token_keys(
        &self,
        keys: &str,
        replaces: Option<i64>,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// The session with this id, if any (ended or not), with its participating clients.
    fn get_session(&self, id: &str) -> BoxFuture<'_, Result<Option<Session>, StoreError>>;

    /// The sessions matching `query`, newest first (by `created_at`, then id), at most
    /// [`SessionQuery::effective_limit`] of them.
    fn list_sessions(
        &self,
        query: &SessionQuery,
    ) -> BoxFuture<'_, Result<Vec<Session>, StoreError>>;

    /// Ends the sessions selected that have not ended, in one write, atomically across
    /// nodes: sets their `ended_at` (`now`) and `ended_reason`, revokes every refresh token of
    /// theirs not revoked, queues one logout delivery (due `now`) per participating client
    /// that has a back-channel logout URI, and appends `event` (if any) to the audit. A
    /// session is ended once: of concurrent calls, each session is returned by one only.
    /// [`SessionSelector::Expired`] selects those with `expires_at <= now`; the others select
    /// whatever their `expires_at`. Returns the sessions it ended, as they are now (empty:
    /// none was; `event` is then still appended).
    fn end_sessions(
        &self,
        selector: &SessionSelector,
        reason: SessionEndReason,
        now: OffsetDateTime,
        event: Option<NewAuditEvent>,
    ) -> BoxFuture<'_, Result<Vec<Session>, StoreError>>;

    /// Uses refresh token `token_hash` of `client_id` in one step, atomically across nodes:
    /// when it is the current token (neither replaced nor revoked) of an active session, it
    /// is marked replaced and `replacement_hash` stored as the current one (same session,
    /// client and scope): [`RefreshUse::Rotated`]. Of concurrent uses of one token at most
    /// one rotates. A token of another client is [`RefreshUse::Unknown`]; a revoked one or
    /// one whose session is not active [`RefreshUse::Ended`]; a replaced one of an active
    /// session ends the session as [`Store::end_sessions`] does ([`RefreshUse::Reused`],
    /// reason [`SessionEndReason::RefreshReused`], no audit event: the caller audits).
    fn use_refresh_token(
        &self,
        token_hash: &str,
        client_id: &str,
        replacement_hash: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<RefreshUse, StoreError>>;

    /// Stores a current refresh token of `client_id` for the session and records the client
    /// as taking part ([`Store::record_session_client`]), in one write.
    /// [`StoreError::Conflict`] (nothing written) if the session is not active at `now`
    /// (ended, unknown or expired) or the hash exists.
    fn add_refresh_token(
        &self,
        session_id: &str,
        client_id: &str,
        token_hash: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Revokes refresh token `token_hash` if it is `client_id`'s and not revoked; returns
    /// whether it did (RFC 7009: the caller answers the same either way).
    fn revoke_refresh_token(
        &self,
        token_hash: &str,
        client_id: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Records `client_id` as taking part in the session (first time kept), so that the
    /// session's end queues it a logout delivery. [`StoreError::Conflict`] if the session is
    /// not active at `now`: a client is never added to a session whose end it would miss.
    fn record_session_client(
        &self,
        session_id: &str,
        client_id: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Registers a client. [`StoreError::Conflict`] if the id exists.
    fn add_client(&self, client: &OidcClient) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The client with this id, if any.
    fn get_client(&self, id: &str) -> BoxFuture<'_, Result<Option<OidcClient>, StoreError>>;

    /// Every client, ordered by id.
    fn list_clients(&self) -> BoxFuture<'_, Result<Vec<OidcClient>, StoreError>>;

    /// Removes a client with its unredeemed codes and revokes its refresh tokens (its
    /// pending logout deliveries stay). [`StoreError::NotFound`] if there is no such client.
    fn remove_client(&self, id: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Stores an authorization code. [`StoreError::Conflict`] if the hash exists.
    fn add_authorization_code(
        &self,
        code: &NewAuthorizationCode,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Redeems a code in one step, atomically across nodes: of concurrent calls at most one
    /// gets [`CodeRedemption::Redeemed`] (the code is then used). A code is fresh while
    /// `now` is before its `expires_at`. The caller checks the client, the redirect URI, the
    /// PKCE verifier and that the session is active. A code that was used already answers
    /// [`CodeRedemption::Used`] and revokes its client's refresh tokens in its session.
    fn redeem_authorization_code(
        &self,
        code_hash: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<CodeRedemption, StoreError>>;

    /// Records access token `jti` as revoked until `expires_at` (its `exp`); again is no error.
    fn revoke_access_token(
        &self,
        jti: &str,
        expires_at: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether access token `jti` was revoked (and not purged).
    fn is_access_token_revoked(&self, jti: &str) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Claims up to `limit` due deliveries (neither delivered nor given up, next attempt at or
    /// before `now`), oldest due first, atomically across nodes: each claimed one's next
    /// attempt moves to `now + lease` and its attempts grow by one, so no other claimer gets
    /// it within the lease.
    fn claim_logout_deliveries(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<LogoutDelivery>, StoreError>>;

    /// Records how an attempt went: delivered, due again at a time, or given up (each with
    /// the error kept as `last_error`). [`StoreError::NotFound`] if there is no such delivery.
    fn finish_logout_delivery(
        &self,
        id: i64,
        outcome: &DeliveryOutcome,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Deletes, in one write, and returns how many rows: sessions ended before `ended_before`
    /// with their refresh tokens, codes and client rows; deliveries delivered or given up
    /// before it; revoked access tokens that expired before it; codes that expired before it.
    fn purge_sessions(
        &self,
        ended_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_states_round_trip_through_text() {
        for state in [UserState::Active, UserState::Locked] {
            assert_eq!(state.as_str().parse::<UserState>(), Ok(state));
            assert_eq!(state.to_string(), state.as_str());
        }
        assert_eq!(
            "revoked".parse::<UserState>(),
            Err(InvalidState {
                text: "revoked".to_owned()
            })
        );
    }

    #[test]
    fn card_states_round_trip_through_text() {
        for state in [CardState::Active, CardState::Locked, CardState::Revoked] {
            assert_eq!(state.as_str().parse::<CardState>(), Ok(state));
            assert_eq!(state.to_string(), state.as_str());
        }
        assert!("Active".parse::<CardState>().is_err());
    }

    #[test]
    fn states_serialize_as_their_text() {
        assert_eq!(
            serde_json::to_string(&CardState::Revoked).ok().as_deref(),
            Some("\"revoked\"")
        );
        assert_eq!(
            serde_json::from_str::<UserState>("\"locked\"").ok(),
            Some(UserState::Locked)
        );
    }

    #[test]
    fn audit_events_are_kept_escaped_and_cut() {
        let event = NewAuditEvent {
            time: OffsetDateTime::UNIX_EPOCH,
            kind: AuditKind::Admin,
            outcome: pivtap_protocol::wire::ErrorCode::Unauthorized.into(),
            device: Some("k\u{202e}1".to_owned()),
            card_serial: Some("0a".repeat(100)),
            user_id: None,
            detail: Some(format!("POST /{}\u{7}", "x".repeat(16_384))),
        };
        let kept = event.bounded();
        assert_eq!(kept.device.as_deref(), Some("k\\u{202e}1"));
        assert_eq!(
            kept.card_serial.as_ref().map(|s| s.chars().count()),
            Some(MAX_AUDIT_FIELD_CHARS)
        );
        let detail = kept.detail.expect("a detail");
        assert_eq!(detail.chars().count(), MAX_AUDIT_DETAIL_CHARS);
        assert!(detail.starts_with("POST /xxx") && detail.ends_with('…'));
        assert_eq!((kept.kind, kept.outcome), (event.kind, event.outcome));
    }

    #[test]
    fn audit_limit_defaults_and_caps() {
        let with_limit = |limit| AuditQuery {
            limit,
            ..AuditQuery::default()
        };
        assert_eq!(AuditQuery::default().effective_limit(), 100);
        assert_eq!(with_limit(0).effective_limit(), 100);
        assert_eq!(with_limit(7).effective_limit(), 7);
        assert_eq!(with_limit(5000).effective_limit(), 1000);
    }

    #[test]
    fn revocation_reasons_read_their_rfc_5280_names_in_any_case() {
        for reason in RevocationReason::ALL {
            assert_eq!(reason.as_str().parse::<RevocationReason>(), Ok(reason));
            assert_eq!(
                reason.as_str().to_uppercase().parse::<RevocationReason>(),
                Ok(reason)
            );
        }
        assert_eq!(
            "keyCompromise"
                .parse::<RevocationReason>()
                .map(RevocationReason::code),
            Ok(1)
        );
        assert!("certificateHold".parse::<RevocationReason>().is_err());
        assert!("".parse::<RevocationReason>().is_err());
    }

    #[test]
    fn errors_say_what_without_database_internals() {
        let not_found = StoreError::NotFound {
            what: "user \"alice\"".to_owned(),
        };
        assert_eq!(not_found.to_string(), "user \"alice\" not found");
        let database = StoreError::Database(DatabaseError::Closed);
        assert_eq!(database.to_string(), "database error");
        assert!(std::error::Error::source(&database).is_some());
    }
}
