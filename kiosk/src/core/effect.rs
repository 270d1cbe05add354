//! What the core asks the runtime to do, and the session events it publishes to the headless output and the local API.

use std::time::Instant;

use pivtap_apdu::piv::{Pin, Puk};
use pivtap_protocol::wire::UserInfo;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::event::WorkId;
use super::notice::Notice;

/// One thing for the runtime to do. `Debug` shows no PIN: [`Pin`] prints `Pin(REDACTED)`.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// On the card thread: SELECT the PIV application, read the CHUID and the 9A certificate
    /// (cached by card GUID and certificate hash), read the PIN retry counter if the card tells
    /// it without a PIN; answer with [`Event::CardRead`](super::Event::CardRead) or
    /// [`Event::CardReadFailed`](super::Event::CardReadFailed).
    ReadCard {
        /// Echo this in the answer.
        work: WorkId,
        /// The reader holding the card.
        reader: String,
    },
    /// On the card thread: SELECT (and the certificate, from the cache when possible), VERIFY
    /// the PIN, sign the assertion over the held challenge, post it to the server; report
    /// [`Event::AuthProgress`](super::Event::AuthProgress) along the way and answer with
    /// [`Event::AuthSucceeded`](super::Event::AuthSucceeded) or
    /// [`Event::AuthFailed`](super::Event::AuthFailed). The runtime keeps the token.
    Authenticate {
        /// Echo this in the answers.
        work: WorkId,
        /// The reader holding the card.
        reader: String,
        /// The PIN, zeroized when dropped.
        pin: Pin,
    },
    /// On the card thread: SELECT, check that the card is the signed-in worker's badge, CHANGE
    /// REFERENCE DATA for the PIN; answer with [`Event::PinWorkDone`](super::Event::PinWorkDone).
    ChangePin {
        /// Echo this in the answer.
        work: WorkId,
        /// The reader holding the card.
        reader: String,
        /// The current PIN, zeroized when dropped.
        current: Pin,
        /// The new PIN, already checked against the PIN policy.
        new: Pin,
    },
    /// On the card thread: SELECT, RESET RETRY COUNTER with the PUK and the new PIN; answer
    /// with [`Event::PinWorkDone`](super::Event::PinWorkDone).
    UnblockPin {
        /// Echo this in the answer.
        work: WorkId,
        /// The reader holding the card.
        reader: String,
        /// The PUK, zeroized when dropped.
        puk: Puk,
        /// The new PIN, already checked against the PIN policy.
        new_pin: Pin,
    },
    /// Abandon any work on this reader's card and let go of the card; the core ignores results
    /// still to come for it.
    CancelCardWork {
        /// The reader.
        reader: String,
    },
    /// Tell the headless output and the local API's event stream.
    Publish(SessionEvent),
    /// Forget the session token: the session ended.
    DropSession,
    /// Send [`Event::Tick`](super::Event::Tick) at or after `at`. Replaces any earlier request.
    ScheduleTick {
        /// When.
        at: Instant,
    },
}

/// A session event for line-of-business apps and the headless output: one JSON object,
/// `{"event": "signed_in", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SessionEvent {
    /// A badge was tapped.
    CardPresent {
        /// The reader.
        reader: String,
    },
    /// A PIN is wanted now.
    PinRequired {
        /// Tries left on the card, when known.
        tries_left: Option<u8>,
    },
    /// A worker signed in. The runtime adds the token where its consumers need it.
    SignedIn {
        /// Who.
        user: UserInfo,
        /// When the session ends on its own (the server's maximum session age).
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    /// The session ends soon (`reason` `idle`: a key or a tap of the badge keeps it;
    /// `expired`: tap the badge and type the PIN to sign in again).
    SessionEnding {
        /// Who.
        user_id: String,
        /// Why it would end.
        reason: SignOutReason,
        /// Seconds until it ends.
        seconds_left: u64,
    },
    /// A worker was signed out.
    SignedOut {
        /// Who: the same fields as `signed_in`'s `user`.
        user: UserInfo,
        /// The user id (`sub` of their token), as `user.id` (kept for existing consumers).
        user_id: String,
        /// Why.
        reason: SignOutReason,
    },
    /// Something went wrong: a stable code and a message for people.
    Error(Notice),
    /// PIN change: the current PIN is wanted now.
    CurrentPinRequired {
        /// Tries left on the card, after a wrong one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tries_left: Option<u8>,
    },
    /// Unblock: the PUK is wanted now.
    PukRequired {
        /// Tries left on the card, after a wrong one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tries_left: Option<u8>,
    },
    /// PIN change or unblock: the new PIN is wanted now (`repeat`: the second time).
    NewPinRequired {
        /// Whether this is the repetition.
        repeat: bool,
    },
    /// PIN change or unblock: everything is typed; tap the badge.
    TapRequired,
    /// The signed-in worker's PIN is changed.
    PinChanged,
    /// A PIN change attempt failed. With `policy` or `mismatch` the new PIN is asked for again,
    /// with `wrong_pin` the current PIN, with `card_removed` or `other_card` a tap; the others
    /// end the change.
    PinChangeFailed {
        /// Why, for programs.
        reason: PinFormFailure,
        /// Why, for people (a policy refusal names the rule, never the PIN).
        message: String,
        /// With `wrong_pin`: the tries left.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tries_left: Option<u8>,
    },
    /// The blocked PIN is replaced by a new one: the worker can sign in.
    CardUnblocked,
    /// An unblock attempt failed; as [`SessionEvent::PinChangeFailed`], with `wrong_puk`
    /// asking for the PUK again and `puk_blocked` ending it.
    UnblockFailed {
        /// Why, for programs.
        reason: PinFormFailure,
        /// Why, for people.
        message: String,
        /// With `wrong_puk`: the tries left.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tries_left: Option<u8>,
    },
}

impl SessionEvent {
    /// The event as JSON with the wall-clock time it happened, `"at"` in RFC 3339: what the
    /// headless output and the local API's event stream carry.
    #[must_use]
    pub fn to_json_at(&self, at: OffsetDateTime) -> serde_json::Value {
        let mut value =
            serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({"event": "error"}));
        if let (Some(object), Ok(at)) = (
            value.as_object_mut(),
            at.format(&time::format_description::well_known::Rfc3339),
        ) {
            object.insert("at".to_owned(), serde_json::Value::String(at));
        }
        value
    }
}

/// Why a PIN change or an unblock attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinFormFailure {
    /// The new PIN breaks the PIN policy.
    Policy,
    /// The repeated new PIN differs from the first.
    Mismatch,
    /// The current PIN was wrong.
    WrongPin,
    /// The PIN is blocked.
    PinBlocked,
    /// The PUK was wrong.
    WrongPuk,
    /// The PUK is blocked.
    PukBlocked,
    /// The badge left before the card was done.
    CardRemoved,
    /// The badge tapped is not the signed-in worker's.
    OtherCard,
    /// The card answered badly or not at all.
    CardError,
    /// Nothing happened for too long.
    TimedOut,
    /// The worker cancelled.
    Cancelled,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignOutReason {
    /// The badge left the reader.
    CardRemoved,
    /// The reader or the smart card service went away, so the badge's presence is unknown.
    ReaderLost,
    /// No key input or tap for the idle time-out.
    Idle,
    /// The sign-out key or the local API.
    Explicit,
    /// Another worker tapped in.
    Switched,
    /// The same worker signed in again before the session ended (a fresh token).
    Renewed,
    /// The session reached the server's maximum session age.
    Expired,
    /// The kiosk stopped (an administrator's exit, or a signal from the service manager).
    Shutdown,
    /// The server ended the session (an administrator, the badge or the account locked or
    /// revoked, the maximum session age): the notice says which.
    EndedAtServer,
}
