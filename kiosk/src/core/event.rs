//! What the runtime tells the core: readers and cards coming and going, results of card work, keys, the server's reachability, and time passing.

use pivtap_protocol::pin_policy::PinPolicy;
use pivtap_protocol::wire::{ErrorCode, SessionEndReason, UserInfo};
use time::OffsetDateTime;

use super::state::{CardSummary, Step};

/// Names one piece of card work the core asked for ([`Effect::ReadCard`](super::Effect::ReadCard),
/// [`Effect::Authenticate`](super::Effect::Authenticate)). The runtime echoes it in the result, so a
/// late answer to abandoned work is recognised and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkId(pub(super) u64);

/// One thing that happened, fed to [`Kiosk::handle_event`](super::Kiosk::handle_event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A reader was connected (or was there at start).
    ReaderAdded {
        /// The reader's name.
        reader: String,
    },
    /// A reader was connected that the kiosk's reader filter (`[readers] name_contains`) leaves
    /// out; `ReaderRemoved` follows when it goes.
    ReaderFilteredOut {
        /// The reader's name.
        reader: String,
    },
    /// A reader was disconnected.
    ReaderRemoved {
        /// The reader's name.
        reader: String,
    },
    /// The smart card service (pcscd) went away: every reader and card is gone.
    ReaderServiceLost,
    /// The smart card service is back; its readers and cards follow as events.
    ReaderServiceRestored,
    /// A card was inserted or tapped.
    CardPresent {
        /// The reader holding it.
        reader: String,
    },
    /// A card left its reader.
    CardRemoved {
        /// The reader it left.
        reader: String,
    },
    /// [`Effect::ReadCard`](super::Effect::ReadCard) succeeded.
    CardRead {
        /// The work this answers.
        work: WorkId,
        /// Who the card belongs to, as far as the card says.
        card: CardSummary,
        /// PIN tries left on the card, when the card tells without a PIN.
        pin_tries_left: Option<u8>,
    },
    /// [`Effect::ReadCard`](super::Effect::ReadCard) failed.
    CardReadFailed {
        /// The work this answers.
        work: WorkId,
        /// What went wrong.
        failure: CardReadFailure,
    },
    /// [`Effect::Authenticate`](super::Effect::Authenticate) moved on to its next step.
    AuthProgress {
        /// The work this reports on.
        work: WorkId,
        /// The step it is now at.
        step: Step,
    },
    /// [`Effect::Authenticate`](super::Effect::Authenticate) succeeded. The token stays in the
    /// runtime; the core only knows a session exists and when it ends.
    AuthSucceeded {
        /// The work this answers.
        work: WorkId,
        /// Who signed in.
        user: UserInfo,
        /// When the server's answer arrived (wall clock), for display.
        signed_in_at: OffsetDateTime,
        /// When the session ends on its own (wall clock): `signed_in_at` plus the server's
        /// `session_expires_in` (its maximum session age; the runtime refreshes the short-lived
        /// access token until then). The core ends the session after
        /// `expires_at - signed_in_at` on its monotonic clock.
        expires_at: OffsetDateTime,
    },
    /// [`Effect::Authenticate`](super::Effect::Authenticate) failed.
    AuthFailed {
        /// The work this answers.
        work: WorkId,
        /// What went wrong.
        failure: AuthFailure,
    },
    /// A key was pressed (or, in headless mode, a character read from stdin).
    Key(KeyInput),
    /// Sign the current worker out: the sign-out key, or `POST /v1/session/sign-out` on the local API.
    SignOutRequested,
    /// The server ended the session of the signed-in worker (or of the worker waiting for a
    /// fast user switch): `GET /v1/sessions/current` answered `active: false`, or a refresh
    /// was refused. The worker is signed out with a message naming `reason`
    /// ([`SignOutReason::EndedAtServer`](super::SignOutReason::EndedAtServer)); nothing is
    /// reported back to the server.
    SessionEndedAtServer {
        /// Why, when the server said.
        reason: Option<SessionEndReason>,
    },
    /// The kiosk is stopping (an administrator's exit, or a signal from the service manager):
    /// any session ends with [`SignOutReason::Shutdown`](super::SignOutReason::Shutdown).
    Shutdown,
    /// The signed-in worker wants to change their PIN (a key in the terminal UI, `change-pin`
    /// in headless mode).
    ChangePinRequested,
    /// The worker on the blocked screen wants to unblock the PIN with the PUK (a key in the
    /// terminal UI, `unblock` in headless mode).
    UnblockRequested,
    /// The server's PIN policy (`GET /v1/pin-policy`), for new PINs from now on.
    PinPolicyKnown(PinPolicy),
    /// [`Effect::ChangePin`](super::Effect::ChangePin) or
    /// [`Effect::UnblockPin`](super::Effect::UnblockPin) is done.
    PinWorkDone {
        /// The work this answers.
        work: WorkId,
        /// Whether the card took the new PIN, or why not.
        result: Result<(), PinWorkFailure>,
    },
    /// The server answered (a challenge was fetched, or a probe answered while one is held);
    /// sent again on every answer, so the views know when it was last seen.
    ServerReachable,
    /// The server stopped answering (a challenge or a probe failed on the network).
    ServerUnreachable,
    /// The server's TLS certificate is not trusted by this device.
    ServerUntrusted,
    /// The server answers but refuses this device (a challenge or a probe was refused).
    ServerRefusing {
        /// The server's stable code.
        code: ErrorCode,
    },
    /// Time passed: the runtime's wake-up asked for by [`Effect::ScheduleTick`](super::Effect::ScheduleTick).
    Tick,
}

/// A key the core reacts to. Everything else stays in the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyInput {
    /// A digit 0-9 (other values are ignored).
    Digit(u8),
    /// Delete the last digit.
    Backspace,
    /// Submit the PIN.
    Enter,
    /// Cancel: leave PIN entry, forget a held PIN, dismiss a message.
    Escape,
    /// Any other key: it closes a finished PIN change or unblock ("press any key") and counts
    /// as activity (keeping a signed-in worker from the idle sign-out).
    Other,
}

/// Why reading a card (SELECT, CHUID, certificate) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardReadFailure {
    /// The card left before it was read.
    CardRemoved,
    /// The card has no PIV application: not a sign-in badge.
    NotPiv,
    /// The card answered badly or not at all.
    Unreadable,
}

/// Why the card did not take a new PIN (CHANGE REFERENCE DATA or RESET RETRY COUNTER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinWorkFailure {
    /// The current PIN was wrong.
    WrongPin {
        /// Tries left before the PIN blocks (`None`: the card does not say).
        tries_left: Option<u8>,
    },
    /// The PIN is blocked.
    PinBlocked,
    /// The PUK was wrong.
    WrongPuk {
        /// Tries left before the PUK blocks (`None`: the card does not say).
        tries_left: Option<u8>,
    },
    /// The PUK is blocked: only a reset (or a new badge) helps.
    PukBlocked,
    /// The card left before the work was done.
    CardRemoved,
    /// The card on the reader is not the signed-in worker's badge.
    OtherCard,
    /// The card answered badly or not at all (details go to the runtime's log).
    CardError,
}

/// Why signing in failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The card refused the PIN.
    WrongPin {
        /// Tries left before the card blocks the PIN (`None`: the card
        /// answered a plain `6300`, which does not say).
        tries_left: Option<u8>,
    },
    /// The card's PIN is blocked.
    PinBlocked,
    /// The card left before the work was done.
    CardRemoved,
    /// The card answered badly or not at all (details go to the runtime's log).
    CardError,
    /// The server could not be reached.
    ServerUnreachable,
    /// The server's TLS certificate is not trusted by this device.
    ServerUntrusted,
    /// The server refused the sign-in with this code.
    ServerRefused {
        /// The server's stable error code.
        code: ErrorCode,
    },
}
