//! What the kiosk is doing now, as the views show it: one [`State`] per screen, never holding the PIN itself.

use std::time::Instant;

use pivtap_protocol::wire::{ErrorCode, UserInfo};
use time::OffsetDateTime;

use super::effect::SignOutReason;
use super::event::WorkId;
use super::notice::Notice;

/// The kiosk's current state. Views render it; only the core changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
// One State lives in the kiosk and is replaced, not collected: boxing the signed-in variant
// would buy nothing but indirection.
#[allow(clippy::large_enum_variant)]
pub enum State {
    /// No card reader is usable: none is connected, or the smart card service is down.
    ReaderMissing {
        /// Which, in words for the worker ([`NoticeCode::NoReader`](super::NoticeCode::NoReader) or
        /// [`NoticeCode::ReaderServiceDown`](super::NoticeCode::ReaderServiceDown)).
        notice: Notice,
    },
    /// Waiting for a tap. With [`Flow::PinThenTap`](super::Flow::PinThenTap) the view says "Type
    /// your PIN, then tap your badge".
    WaitingForCard {
        /// What just happened (signed out, badge removed too soon...), shown for a while.
        notice: Option<Notice>,
    },
    /// PIN then tap: digits typed and held until the tap ("now tap your badge" once there are
    /// enough of them).
    PinFirst {
        /// The PIN being typed.
        prompt: PinPrompt,
    },
    /// Tap then PIN: reading the badge that was just tapped.
    ReadingCard {
        /// The reader holding it.
        reader: String,
        /// The work reading it.
        work: WorkId,
        /// When the read started.
        started_at: Instant,
    },
    /// Tap then PIN: the badge was read, the PIN is being typed.
    PinEntry {
        /// The reader holding the badge.
        reader: String,
        /// Whose badge it is, for "Hello, Alice".
        card: CardSummary,
        /// The PIN being typed.
        prompt: PinPrompt,
    },
    /// The card and the server are at work: PIN check, signature, sign-in.
    Working {
        /// The reader holding the badge.
        reader: String,
        /// The work in progress.
        work: WorkId,
        /// How far it got.
        step: Step,
        /// Whose badge it is, when it was read first (tap then PIN).
        card: Option<CardSummary>,
        /// When the work started.
        started_at: Instant,
    },
    /// A worker is signed in.
    SignedIn {
        /// The session.
        session: Session,
        /// PIN then tap with fast user switch: the next worker's PIN, typed while this session
        /// lasts, used when they tap.
        next_worker: Option<PinPrompt>,
        /// The signed-in worker is changing their PIN ([`PinFormPurpose::ChangePin`]).
        pin_change: Option<PinForm>,
    },
    /// The badge's PIN is blocked; shown until the badge leaves the reader (or, while the
    /// worker unblocks it, until the unblock ends).
    PinBlocked {
        /// The reader holding the badge.
        reader: String,
        /// What happened and whom to ask.
        notice: Notice,
        /// The worker is unblocking the PIN with the PUK ([`PinFormPurpose::Unblock`]).
        unblock: Option<PinForm>,
    },
    /// The sign-in server cannot be used: it cannot be reached, this device does not trust it,
    /// or it refuses this device ([`ServerStatus`]; the notice says which). A tap still tries;
    /// the kiosk returns to waiting as soon as the server answers again, and carries on with a
    /// badge left on the reader whose sign-in the server's absence stopped.
    ServerUnreachable {
        /// What to tell the worker: [`NoticeCode::ServerUnreachable`](super::NoticeCode::ServerUnreachable),
        /// [`NoticeCode::ServerUntrusted`](super::NoticeCode::ServerUntrusted) or
        /// [`NoticeCode::ServerRefused`](super::NoticeCode::ServerRefused).
        notice: Notice,
    },
    /// A sign-in failed. Returns to waiting when the badge leaves, on Escape, or after
    /// [`CoreConfig::message_duration`](super::CoreConfig::message_duration).
    Error {
        /// The reader holding the badge.
        reader: String,
        /// What went wrong.
        notice: Notice,
    },
}

/// A PIN being typed: the number of digits only, never the digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinPrompt {
    /// How many digits are typed (0 to 8).
    pub digits: usize,
    /// Tries left on the card, when known.
    pub tries_left: Option<u8>,
    /// After a wrong PIN: no new attempt is accepted before this time.
    pub retry_at: Option<Instant>,
    /// A message about the PIN (wrong PIN, too short...).
    pub notice: Option<Notice>,
    /// When the typed digits are forgotten if nothing else happens.
    pub forget_at: Instant,
}

/// A PIN change or an unblock with the PUK being typed and carried out: which value is asked
/// for and how many digits it has so far, never the digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinForm {
    /// A PIN change or an unblock.
    pub purpose: PinFormPurpose,
    /// Where it got to.
    pub step: PinFormStep,
    /// How many digits of the value asked for are typed (0 to 8).
    pub digits: usize,
    /// After a wrong PIN or PUK: the tries the card has left for it.
    pub tries_left: Option<u8>,
    /// What to tell the worker now (new PIN refused by the policy, PINs differ, done...).
    pub notice: Option<Notice>,
    /// When the form is given up (nothing typed or tapped for a while), the card work is
    /// abandoned, or a finished form's message goes away, depending on the step.
    pub deadline: Instant,
}

/// What a [`PinForm`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinFormPurpose {
    /// A signed-in worker changes their PIN: current PIN, new PIN twice, CHANGE REFERENCE DATA.
    ChangePin,
    /// A worker whose PIN is blocked sets a new one with the PUK: PUK, new PIN twice, RESET
    /// RETRY COUNTER.
    Unblock,
}

/// The steps of a [`PinForm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinFormStep {
    /// Typing the current PIN (PIN change).
    CurrentPin,
    /// Typing the PUK (unblock).
    Puk,
    /// Typing the new PIN; it is checked against the PIN policy on Enter.
    NewPin,
    /// Typing the new PIN again.
    RepeatNewPin,
    /// All typed, but the badge is not on a reader: tap it.
    TapBadge,
    /// The card is at work.
    Working {
        /// The card work.
        work: WorkId,
        /// The reader holding the card.
        reader: String,
    },
    /// Done, or failed for good: the notice says which. Any key closes it.
    Finished,
}

/// Who a card belongs to, as read from it (no PIN needed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardSummary {
    /// The holder's name from the authentication certificate's subject CN.
    pub holder_name: Option<String>,
    /// The card's GUID from its CHUID, as hex.
    pub card_guid: Option<String>,
}

/// The steps of signing in once the PIN is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The card checks the PIN.
    Verifying,
    /// The card signs the assertion.
    Signing,
    /// The server checks the assertion.
    SigningIn,
}

/// A signed-in worker's session. The token itself stays in the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who is signed in.
    pub user: UserInfo,
    /// The reader their badge was tapped on.
    pub reader: String,
    /// Whether the badge is still on that reader.
    pub card_present: bool,
    /// When the sign-in happened (wall clock).
    pub signed_in_at: OffsetDateTime,
    /// When the session ends on its own (wall clock): the server's maximum session age (the
    /// runtime refreshes the short-lived access token until then).
    pub expires_at: OffsetDateTime,
    /// When the session ends for expiry, on the monotonic clock.
    pub ends_at: Instant,
    /// The last key input or tap.
    pub last_activity: Instant,
    /// The session is about to end: shown with a countdown until then, or until activity
    /// (idle) keeps it.
    pub warning: Option<SessionWarning>,
}

/// A session about to end, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWarning {
    /// [`SignOutReason::Idle`] (a key or a tap keeps the worker signed in) or
    /// [`SignOutReason::Expired`] (the token ends; tapping the badge and typing the PIN signs in
    /// again).
    pub reason: SignOutReason,
    /// When the session ends if nothing happens.
    pub ends_at: Instant,
}

/// What the kiosk knows of the sign-in server, from its last answer or failure to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerStatus {
    /// It answers and gives this device challenges.
    Connected,
    /// It cannot be reached: nothing listens, no answer in time, the name does not resolve, or
    /// what answers is not a pivtap server.
    Unreachable,
    /// Its TLS certificate is not trusted by this device (another CA, a key that does not match
    /// the pin, or not valid for the host name).
    Untrusted,
    /// It answers but refuses this device.
    Refusing {
        /// The server's stable code (`device_unknown`, `device_disabled`, `unavailable`...).
        code: ErrorCode,
    },
}
