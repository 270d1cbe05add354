//! What the core asks the runtime to do, and the session events it publishes to the headless output and the local API.

use std::time::Instant;

use pivtap_apdu::piv::Pin;
use pivtap_server_client::wire::UserInfo;
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
        /// When the token expires.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    /// A worker was signed out.
    SignedOut {
        /// The user id (`sub` of their token).
        user_id: String,
        /// Why.
        reason: SignOutReason,
    },
    /// Something went wrong: a stable code and a message for people.
    Error(Notice),
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
    /// The token expired.
    Expired,
}
