//! The kiosk's pure core: a state machine that turns [`Event`]s into [`Effect`]s, with no I/O, no threads and no clock of its own.
//!
//! The runtime feeds [`Kiosk::handle_event`] what happened (readers, cards, results of card
//! work, keys, the server's reachability, ticks) together with the current monotonic time,
//! carries out the effects it gets back (card work, session events to publish, a wake-up to
//! schedule), and renders [`Kiosk::state`]. The terminal UI and the headless mode are two views
//! of that one state.
//!
//! The PIN is typed into the core one digit at a time and kept in a zeroizing buffer that is
//! cleared whenever PIN entry ends; it leaves the core only inside [`Effect::Authenticate`].
//! [`State`] shows the number of digits, never the digits.
//!
//! A signed-in worker can change their PIN ([`Event::ChangePinRequested`]) and a worker on the
//! blocked screen can unblock it with the PUK ([`Event::UnblockRequested`]): a [`PinForm`] in
//! [`State::SignedIn`] or [`State::PinBlocked`] asks for each value in turn, checks the new
//! PIN against [`CoreConfig::pin_policy`] before the card is touched, and hands the values to
//! the runtime only inside [`Effect::ChangePin`] or [`Effect::UnblockPin`] (see `pin_form.rs`).

mod config;
mod effect;
mod event;
mod notice;
mod pin_form;
mod state;
#[cfg(test)]
mod tests;
mod upkeep;

use std::collections::BTreeSet;
use std::fmt;
use std::mem;
use std::time::{Duration, Instant};

use pivtap_apdu::piv::Pin;
use pivtap_protocol::wire::{SessionEndReason, UserInfo};
use time::OffsetDateTime;
use zeroize::{Zeroize, Zeroizing};

pub use config::{CoreConfig, Flow, SessionPolicy, WrongPinDelay};
pub use effect::{Effect, PinFormFailure, SessionEvent, SignOutReason};
pub use event::{AuthFailure, CardReadFailure, Event, KeyInput, PinWorkFailure, WorkId};
pub use notice::{Notice, NoticeCode};
pub use state::{
    CardSummary, PinForm, PinFormPurpose, PinFormStep, PinPrompt, ServerStatus, Session,
    SessionWarning, State, Step,
};
pub use upkeep::{LONGEST_REFRESH_RETRY, REFRESH_SHARE_PERCENT, SessionUpkeep, UpkeepTask};

/// The fewest digits a PIN has (the PIV rule of the apdu crate's `Pin`).
pub const PIN_MIN_DIGITS: usize = pivtap_apdu::piv::reference_data::PIN_MIN_LEN;
/// The most digits a PIN has; further digits are ignored.
pub const PIN_MAX_DIGITS: usize = pivtap_apdu::piv::reference_data::PIN_MAX_LEN;

/// Deadlines further away than this are treated as this far away (so adding never overflows).
const LONGEST_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The kiosk state machine. Create it with [`Kiosk::new`], feed it with [`Kiosk::handle_event`].
pub struct Kiosk {
    config: CoreConfig,
    state: State,
    /// The digits typed so far; empty outside PIN entry. Its capacity is reserved up front so
    /// typing never reallocates (which would leave a copy behind).
    typed_pin: Zeroizing<String>,
    /// A PIN change's current PIN or an unblock's PUK, once accepted; empty outside a form.
    form_first: Zeroizing<String>,
    /// A PIN change's or unblock's new PIN, once accepted; empty outside a form.
    form_new: Zeroizing<String>,
    readers: BTreeSet<String>,
    /// Readers connected that the reader filter leaves out.
    filtered_out: BTreeSet<String>,
    /// Readers holding a card.
    cards: BTreeSet<String>,
    reader_service_available: bool,
    /// What the server did last time it was asked.
    server: ServerStatus,
    /// When the server last answered (monotonic), if ever.
    server_seen: Option<Instant>,
    /// A badge whose sign-in stopped because the server could not be used: tried again when
    /// the server answers, if the badge is still on this reader and nothing else began.
    resume_reader: Option<String>,
    wrong_pins_in_a_row: u32,
    /// After a wrong PIN: no attempt before this, on any badge.
    retry_not_before: Option<Instant>,
    /// When the notice of [`State::WaitingForCard`] or [`State::Error`] has been shown long enough.
    notice_until: Option<Instant>,
    last_work: u64,
    /// The wake-up last asked of the runtime.
    scheduled_tick: Option<Instant>,
    /// Fast user switch: the signed-in worker's session while another worker signs in. It
    /// ends ([`SignOutReason::Switched`]) only once the new worker's PIN is accepted; if the
    /// new sign-in is cancelled or fails, the kiosk returns to it.
    switching_from: Option<Session>,
    /// PIN then tap: the held PIN, taken out of the typing buffer while the tapped badge is
    /// read to learn whose it is (see [`Kiosk::on_card_read`]).
    pin_awaiting_read: Option<Pin>,
    /// PIN then tap, after a wrong PIN: the badge that refused it. The PIN typed next is for that
    /// badge; another badge arriving clears it instead of spending one of its tries.
    pin_badge: Option<CardSummary>,
    /// The signed-in worker's badge, as read before their PIN was checked.
    session_badge: Option<CardSummary>,
    /// Tap then PIN, right after an unblock: the PIN prompt of the badge still on the reader
    /// says the unblock worked.
    unblocked_prompt_notice: Option<Notice>,
    /// Effects of the event being handled.
    effects: Vec<Effect>,
}

/// Something the core waits for.
#[derive(Debug, Clone, Copy)]
enum Timer {
    NoticeOver,
    WorkTimedOut,
    RetryAllowed,
    PinForgotten,
    SessionExpired,
    SessionIdle,
    ExpiryWarning,
    IdleWarning,
    PinFormDeadline,
}

impl Kiosk {
    /// A kiosk that has not seen a reader yet ([`State::ReaderMissing`]). The runtime reports the
    /// readers and cards already present as `ReaderAdded` and `CardPresent` events.
    #[must_use]
    pub fn new(config: CoreConfig) -> Self {
        Kiosk {
            config,
            state: State::ReaderMissing {
                notice: Notice::no_reader(),
            },
            typed_pin: Zeroizing::new(String::with_capacity(PIN_MAX_DIGITS)),
            form_first: Zeroizing::new(String::with_capacity(PIN_MAX_DIGITS)),
            form_new: Zeroizing::new(String::with_capacity(PIN_MAX_DIGITS)),
            readers: BTreeSet::new(),
            filtered_out: BTreeSet::new(),
            cards: BTreeSet::new(),
            reader_service_available: true,
            server: ServerStatus::Connected,
            server_seen: None,
            resume_reader: None,
            wrong_pins_in_a_row: 0,
            retry_not_before: None,
            notice_until: None,
            last_work: 0,
            scheduled_tick: None,
            switching_from: None,
            pin_awaiting_read: None,
            pin_badge: None,
            session_badge: None,
            unblocked_prompt_notice: None,
            effects: Vec::new(),
        }
    }

    /// Takes in one event that happened at `now` and returns what the runtime must do, in order.
    /// Events that do not apply to the current state change nothing. Deadlines that passed by
    /// `now` are handled first, whatever the event.
    pub fn handle_event(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        self.advance_time(now);
        match event {
            Event::ReaderAdded { reader } => self.on_reader_added(reader, now),
            Event::ReaderFilteredOut { reader } => self.on_reader_filtered_out(reader, now),
            Event::ReaderRemoved { reader } => self.on_reader_removed(&reader, now),
            Event::ReaderServiceLost => self.on_reader_service_lost(now),
            Event::ReaderServiceRestored => self.on_reader_service_restored(now),
            Event::CardPresent { reader } => self.on_card_present(reader, now),
            Event::CardRemoved { reader } => self.on_card_removed(&reader, now),
            Event::CardRead {
                work,
                card,
                pin_tries_left,
            } => self.on_card_read(work, card, pin_tries_left, now),
            Event::CardReadFailed { work, failure } => self.on_card_read_failed(work, failure, now),
            Event::AuthProgress { work, step } => self.on_auth_progress(work, step),
            Event::AuthSucceeded {
                work,
                user,
                signed_in_at,
                expires_at,
            } => self.on_auth_succeeded(work, user, signed_in_at, expires_at, now),
            Event::AuthFailed { work, failure } => self.on_auth_failed(work, failure, now),
            Event::Key(key) => self.on_key(key, now),
            Event::SignOutRequested => self.sign_out(SignOutReason::Explicit, now),
            Event::SessionEndedAtServer { reason } => self.ended_at_server(reason, now),
            Event::Shutdown => self.shut_down(now),
            Event::ChangePinRequested => self.on_change_pin_requested(now),
            Event::UnblockRequested => self.on_unblock_requested(now),
            Event::PinPolicyKnown(policy) => {
                if policy.validate().is_ok() {
                    self.config.pin_policy = policy;
                }
            }
            Event::PinWorkDone { work, result } => self.on_pin_work_done(work, result, now),
            Event::ServerReachable => self.on_server_reachable(now),
            Event::ServerUnreachable => self.on_server_problem(ServerStatus::Unreachable, now),
            Event::ServerUntrusted => self.on_server_problem(ServerStatus::Untrusted, now),
            Event::ServerRefusing { code } => {
                self.on_server_problem(ServerStatus::Refusing { code }, now);
            }
            // The runtime's wake-up is used up: announce the next one again.
            Event::Tick => self.scheduled_tick = None,
        }
        self.advance_time(now);
        self.withdraw_idle_warning(now);
        self.schedule_next_tick();
        mem::take(&mut self.effects)
    }

    /// The current state, for the views.
    #[must_use]
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The configuration the kiosk runs with.
    #[must_use]
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The signed-in worker's session, if any.
    #[must_use]
    pub fn session(&self) -> Option<&Session> {
        match &self.state {
            State::SignedIn { session, .. } => Some(session),
            _ => None,
        }
    }

    /// Fast user switch: the session that stays signed in while another worker signs in.
    #[must_use]
    pub fn switching_from(&self) -> Option<&Session> {
        self.switching_from.as_ref()
    }

    /// The connected readers, by name.
    #[must_use]
    pub fn readers(&self) -> &BTreeSet<String> {
        &self.readers
    }

    /// Whether the smart card service is running (as far as the last events said).
    #[must_use]
    pub fn reader_service_available(&self) -> bool {
        self.reader_service_available
    }

    /// Whether the sign-in server answered last time it was asked.
    #[must_use]
    pub fn server_reachable(&self) -> bool {
        self.server == ServerStatus::Connected
    }

    /// What the sign-in server did last time it was asked: answered, could not be reached,
    /// was not trusted, or refused this device.
    #[must_use]
    pub fn server_status(&self) -> ServerStatus {
        self.server
    }

    /// When the sign-in server last answered (monotonic clock), if it ever did.
    #[must_use]
    pub fn server_last_seen(&self) -> Option<Instant> {
        self.server_seen
    }

    // --- readers and cards ---

    fn on_reader_added(&mut self, reader: String, now: Instant) {
        self.reader_service_available = true;
        self.readers.insert(reader);
        if matches!(self.state, State::ReaderMissing { .. }) {
            self.rest(None, now);
        }
    }

    fn on_reader_filtered_out(&mut self, reader: String, now: Instant) {
        self.reader_service_available = true;
        self.filtered_out.insert(reader);
        if matches!(self.state, State::ReaderMissing { .. }) {
            self.rest(None, now);
        }
    }

    fn on_reader_removed(&mut self, reader: &str, now: Instant) {
        if self.filtered_out.remove(reader) && !self.readers.contains(reader) {
            if matches!(self.state, State::ReaderMissing { .. }) {
                self.rest(None, now);
            }
            return;
        }
        self.readers.remove(reader);
        self.cards.remove(reader);
        self.lose_card(
            reader,
            Notice::reader_removed(),
            SignOutReason::ReaderLost,
            now,
        );
        self.rest_if_no_reader(now);
    }

    fn on_reader_service_lost(&mut self, now: Instant) {
        self.reader_service_available = false;
        self.readers.clear();
        self.filtered_out.clear();
        self.cards.clear();
        if let Some(reader) = self.reader_in_use() {
            let notice = Notice::reader_service_down(&self.config.help_contact);
            self.lose_card(&reader, notice, SignOutReason::ReaderLost, now);
        }
        self.rest_if_no_reader(now);
    }

    fn on_reader_service_restored(&mut self, now: Instant) {
        self.reader_service_available = true;
        self.rest_if_no_reader(now);
    }

    fn on_card_present(&mut self, reader: String, now: Instant) {
        self.reader_service_available = true;
        self.readers.insert(reader.clone());
        if !self.cards.insert(reader.clone()) {
            return; // Already known: a repeated report, not a new tap.
        }
        if self.pin_form_active() {
            // A PIN change or unblock is under way: the tap is for it, never a user switch.
            if let State::SignedIn { session, .. } = &mut self.state {
                session.last_activity = now;
                if session.reader == reader {
                    session.card_present = true;
                }
            }
            self.tap_for_form(&reader, now);
            return;
        }
        match &mut self.state {
            State::ReaderMissing { .. }
            | State::WaitingForCard { .. }
            | State::ServerUnreachable { .. }
            | State::Error { .. }
            | State::PinFirst { .. } => self.start_sign_in(reader, now),
            State::SignedIn { session, .. } => {
                session.last_activity = now;
                if self.config.session.fast_user_switch {
                    // The current worker stays signed in until the new worker's PIN is accepted.
                    self.switching_from = Some(session.clone());
                    self.start_sign_in(reader, now);
                } else if session.reader == reader {
                    session.card_present = true;
                }
            }
            State::ReadingCard { .. }
            | State::PinEntry { .. }
            | State::Working { .. }
            | State::PinBlocked { .. } => {}
        }
    }

    fn on_card_removed(&mut self, reader: &str, now: Instant) {
        self.cards.remove(reader);
        if self.resume_reader.as_deref() == Some(reader) {
            self.resume_reader = None;
        }
        self.lose_card(
            reader,
            Notice::card_removed(),
            SignOutReason::CardRemoved,
            now,
        );
    }

    /// The card on `reader` is gone (removed, or its reader or the service went away).
    fn lose_card(&mut self, reader: &str, notice: Notice, reason: SignOutReason, now: Instant) {
        let sign_out_on_removal = self.config.session.sign_out_on_removal;
        if let Some(waiting) = self
            .switching_from
            .as_mut()
            .filter(|session| session.reader == reader)
        {
            waiting.card_present = false;
            if sign_out_on_removal {
                self.end_waiting_session(reason);
            }
        }
        match &mut self.state {
            State::ReadingCard { reader: used, .. } | State::PinEntry { reader: used, .. }
                if used.as_str() == reader =>
            {
                self.abandon(reader, notice, now);
            }
            // Once the card has signed, signing in needs only the server: carry on, unless
            // the session would end at once for the removal anyway.
            State::Working {
                reader: used, step, ..
            } if used.as_str() == reader && (*step != Step::SigningIn || sign_out_on_removal) => {
                self.abandon(reader, notice, now);
            }
            // An unblock under way outlives the badge: it asks for a tap when it needs one.
            State::PinBlocked {
                reader: used,
                unblock: None,
                ..
            }
            | State::Error { reader: used, .. }
                if used.as_str() == reader =>
            {
                self.rest(None, now);
            }
            State::SignedIn { session, .. } if session.reader == reader => {
                session.card_present = false;
                if sign_out_on_removal {
                    self.sign_out(reason, now);
                }
            }
            _ => {}
        }
    }

    /// The reader the current state is about, if any.
    fn reader_in_use(&self) -> Option<String> {
        match &self.state {
            State::ReadingCard { reader, .. }
            | State::PinEntry { reader, .. }
            | State::Working { reader, .. }
            | State::PinBlocked { reader, .. }
            | State::Error { reader, .. } => Some(reader.clone()),
            State::SignedIn { session, .. } => Some(session.reader.clone()),
            State::ReaderMissing { .. }
            | State::WaitingForCard { .. }
            | State::PinFirst { .. }
            | State::ServerUnreachable { .. } => None,
        }
    }

    /// With no reader left, everything but a session gives way to [`State::ReaderMissing`].
    fn rest_if_no_reader(&mut self, now: Instant) {
        if self.readers.is_empty() && !matches!(self.state, State::SignedIn { .. }) {
            self.rest(None, now);
        }
    }

    // --- signing in ---

    /// A new tap on `reader`, in a state that accepts one.
    fn start_sign_in(&mut self, reader: String, now: Instant) {
        self.resume_reader = None;
        self.publish(SessionEvent::CardPresent {
            reader: reader.clone(),
        });
        match self.config.flow {
            Flow::TapThenPin => {
                self.clear_pin();
                self.read_card(reader, now);
            }
            Flow::PinThenTap => self.use_held_pin(reader, now),
        }
    }

    /// Asks for the badge on `reader` to be read (no PIN needed) and waits for it.
    fn read_card(&mut self, reader: String, now: Instant) {
        let work = self.next_work();
        self.effects.push(Effect::ReadCard {
            work,
            reader: reader.clone(),
        });
        self.enter(
            State::ReadingCard {
                reader,
                work,
                started_at: now,
            },
            now,
        );
    }

    /// PIN then tap: a badge is on `reader`; sign in with the held PIN if there is one. The
    /// badge is read first (no PIN needed), so the PIN is only spent on it once it is known
    /// whose badge it is ([`Kiosk::on_card_read`]).
    fn use_held_pin(&mut self, reader: String, now: Instant) {
        let retry_pending = self.retry_pending(now);
        if !retry_pending && let Some(pin) = self.take_pin() {
            self.pin_awaiting_read = Some(pin);
            self.read_card(reader, now);
            return;
        }
        let tries_left = match &self.state {
            State::PinFirst { prompt } => prompt.tries_left,
            _ => None,
        };
        let notice = if retry_pending {
            self.notify(Notice::wait_before_retry())
        } else {
            let notice = self.notify(Notice::type_pin_first());
            self.publish(SessionEvent::PinRequired { tries_left });
            notice
        };
        if self.typed_pin.is_empty() && !matches!(self.state, State::PinFirst { .. }) {
            self.rest(Some(notice), now);
        } else {
            let prompt =
                self.new_prompt(now, tries_left, Some(notice), self.config.pin_hold_timeout);
            self.enter(State::PinFirst { prompt }, now);
        }
    }

    fn on_card_read(
        &mut self,
        work: WorkId,
        card: CardSummary,
        pin_tries_left: Option<u8>,
        now: Instant,
    ) {
        let Some(reader) = self.reader_reading(work) else {
            return;
        };
        if pin_tries_left == Some(0) {
            self.block(reader, now);
            return;
        }
        if let Some(pin) = self.pin_awaiting_read.take() {
            self.spend_held_pin(reader, card, pin, now);
            return;
        }
        if self.own_badge_keeps_session(&card) {
            // The signed-in worker tapped their own badge: they stay signed in.
            self.rest(None, now);
            return;
        }
        let notice = self.unblocked_prompt_notice.take();
        let prompt = self.new_prompt(now, pin_tries_left, notice, self.config.pin_entry_timeout);
        if prompt.retry_at.is_none() {
            self.publish(SessionEvent::PinRequired {
                tries_left: pin_tries_left,
            });
        }
        self.enter(
            State::PinEntry {
                reader,
                card,
                prompt,
            },
            now,
        );
    }

    /// PIN then tap: the tapped badge is read; its holder is known. The held PIN is spent on
    /// it unless it is the signed-in worker's own badge (a next worker's PIN is kept for the next
    /// worker) or the PIN was typed for another badge after a wrong PIN (it is cleared, and the
    /// worker told whose badge this is).
    fn spend_held_pin(&mut self, reader: String, card: CardSummary, pin: Pin, now: Instant) {
        if self.own_badge_keeps_session(&card) {
            // The signed-in worker tapped their own badge: they stay, the PIN waits.
            self.rest(None, now);
            if let State::SignedIn {
                session,
                next_worker,
                ..
            } = &mut self.state
            {
                session.last_activity = now;
                self.typed_pin
                    .push_str(&String::from_utf8_lossy(pin.as_bytes()));
                let digits = self.typed_pin.len();
                *next_worker = Some(PinPrompt {
                    digits,
                    tries_left: None,
                    retry_at: None,
                    notice: None,
                    forget_at: later(now, self.config.pin_hold_timeout),
                });
            }
            return;
        }
        if same_badge(self.pin_badge.as_ref(), &card) == Some(false) {
            drop(pin);
            let notice = Notice::pin_for_another_badge(card.holder_name.as_deref());
            self.give_up(notice, now);
            return;
        }
        self.authenticate(reader, pin, Some(card), now);
    }

    /// During a fast user switch: whether the badge read is the waiting worker's own, tapped to
    /// stay signed in. Not when their session is about to expire: then the tap signs them in
    /// again (PIN and a fresh token).
    fn own_badge_keeps_session(&self, card: &CardSummary) -> bool {
        self.switching_from.as_ref().is_some_and(|waiting| {
            !matches!(
                waiting.warning,
                Some(SessionWarning {
                    reason: SignOutReason::Expired,
                    ..
                })
            )
        }) && same_badge(self.session_badge.as_ref(), card) == Some(true)
    }

    fn on_card_read_failed(&mut self, work: WorkId, failure: CardReadFailure, now: Instant) {
        let Some(reader) = self.reader_reading(work) else {
            return;
        };
        match failure {
            CardReadFailure::CardRemoved => self.give_up(Notice::card_removed(), now),
            CardReadFailure::NotPiv => self.show_error(reader, Notice::card_not_supported(), now),
            CardReadFailure::Unreadable => self.show_error(reader, Notice::card_unreadable(), now),
        }
    }

    fn on_auth_progress(&mut self, work: WorkId, step: Step) {
        if let State::Working {
            work: current,
            step: shown,
            ..
        } = &mut self.state
            && *current == work
        {
            *shown = step;
        }
    }

    fn on_auth_succeeded(
        &mut self,
        work: WorkId,
        user: UserInfo,
        signed_in_at: OffsetDateTime,
        expires_at: OffsetDateTime,
        now: Instant,
    ) {
        let Some((reader, card)) = self.reader_working(work) else {
            return;
        };
        self.session_badge = card;
        self.pin_badge = None;
        self.wrong_pins_in_a_row = 0;
        self.retry_not_before = None;
        let same_worker = self
            .switching_from
            .as_ref()
            .is_some_and(|waiting| waiting.user.id == user.id);
        self.end_waiting_session(if same_worker {
            SignOutReason::Renewed
        } else {
            SignOutReason::Switched
        });
        let lifetime = Duration::try_from(expires_at - signed_in_at).unwrap_or(Duration::ZERO);
        self.publish(SessionEvent::SignedIn {
            user: user.clone(),
            expires_at,
        });
        let session = Session {
            user,
            card_present: self.cards.contains(&reader),
            reader,
            signed_in_at,
            expires_at,
            ends_at: later(now, lifetime),
            last_activity: now,
            warning: None,
        };
        self.enter(
            State::SignedIn {
                session,
                next_worker: None,
                pin_change: None,
            },
            now,
        );
    }

    fn on_auth_failed(&mut self, work: WorkId, failure: AuthFailure, now: Instant) {
        let Some((reader, card)) = self.reader_working(work) else {
            return;
        };
        match failure {
            AuthFailure::WrongPin {
                tries_left: Some(0),
            }
            | AuthFailure::PinBlocked => {
                self.block(reader, now);
            }
            AuthFailure::WrongPin { tries_left } => self.wrong_pin(reader, card, tries_left, now),
            AuthFailure::CardRemoved => self.give_up(Notice::card_removed(), now),
            AuthFailure::CardError => self.show_error(reader, Notice::card_unreadable(), now),
            AuthFailure::ServerUnreachable => {
                self.server = ServerStatus::Unreachable;
                self.resume_reader = Some(reader);
                self.rest(None, now);
            }
            AuthFailure::ServerUntrusted => {
                self.server = ServerStatus::Untrusted;
                self.resume_reader = Some(reader);
                self.rest(None, now);
            }
            AuthFailure::ServerRefused { code } => {
                let notice = Notice::server_refused(code, &self.config.help_contact);
                self.show_error(reader, notice, now);
            }
        }
    }

    fn wrong_pin(
        &mut self,
        reader: String,
        card: Option<CardSummary>,
        tries_left: Option<u8>,
        now: Instant,
    ) {
        self.wrong_pins_in_a_row = self.wrong_pins_in_a_row.saturating_add(1);
        if self.config.flow == Flow::PinThenTap {
            self.pin_badge.clone_from(&card);
        }
        let delay = self.config.wrong_pin_delay.after(self.wrong_pins_in_a_row);
        self.retry_not_before = Some(later(now, delay));
        let notice = self.notify(Notice::wrong_pin(tries_left));
        let timeout = match self.config.flow {
            Flow::TapThenPin => self.config.pin_entry_timeout,
            Flow::PinThenTap => self.config.pin_hold_timeout,
        };
        let prompt = self.new_prompt(now, tries_left, Some(notice.clone()), timeout);
        if prompt.retry_at.is_none() {
            self.publish(SessionEvent::PinRequired { tries_left });
        }
        match self.config.flow {
            Flow::TapThenPin if self.cards.contains(&reader) => {
                let card = card.unwrap_or_default();
                let next = State::PinEntry {
                    reader,
                    card,
                    prompt,
                };
                self.enter(next, now);
            }
            // The badge already left: the next tap starts over.
            Flow::TapThenPin => self.rest(Some(notice), now),
            Flow::PinThenTap => self.enter(State::PinFirst { prompt }, now),
        }
    }

    /// The badge on `reader` has a blocked PIN: say so until it leaves.
    fn block(&mut self, reader: String, now: Instant) {
        self.clear_pin();
        let notice = self.notify(Notice::pin_blocked(&self.config.help_contact));
        if self.cards.contains(&reader) {
            let unblock = None;
            self.enter(
                State::PinBlocked {
                    reader,
                    notice,
                    unblock,
                },
                now,
            );
        } else {
            self.rest(Some(notice), now);
        }
    }

    fn authenticate(&mut self, reader: String, pin: Pin, card: Option<CardSummary>, now: Instant) {
        let work = self.next_work();
        self.effects.push(Effect::Authenticate {
            work,
            reader: reader.clone(),
            pin,
        });
        self.enter(
            State::Working {
                reader,
                work,
                step: Step::Verifying,
                card,
                started_at: now,
            },
            now,
        );
    }

    /// The reader of the card read `work` is doing, if that is what is going on.
    fn reader_reading(&self, work: WorkId) -> Option<String> {
        match &self.state {
            State::ReadingCard {
                reader,
                work: current,
                ..
            } if *current == work => Some(reader.clone()),
            _ => None,
        }
    }

    /// The reader and card of the authentication `work`, if that is what is going on.
    fn reader_working(&self, work: WorkId) -> Option<(String, Option<CardSummary>)> {
        match &self.state {
            State::Working {
                reader,
                work: current,
                card,
                ..
            } if *current == work => Some((reader.clone(), card.clone())),
            _ => None,
        }
    }

    fn next_work(&mut self) -> WorkId {
        self.last_work = self.last_work.wrapping_add(1);
        WorkId(self.last_work)
    }

    // --- keys ---

    fn on_key(&mut self, key: KeyInput, now: Instant) {
        if self.pin_form().is_some() {
            self.key_in_form(key, now);
            return;
        }
        match &self.state {
            State::PinEntry { .. } => self.key_in_pin_entry(key, now),
            State::PinFirst { .. } => self.key_in_pin_first(key, now),
            State::SignedIn { .. } => self.key_while_signed_in(key, now),
            State::WaitingForCard { .. }
            | State::ServerUnreachable { .. }
            | State::Error { .. } => {
                self.key_while_waiting(key, now);
            }
            State::ReadingCard { reader, .. } | State::Working { reader, .. } => {
                if key == KeyInput::Escape {
                    let reader = reader.clone();
                    self.abandon(&reader, Notice::cancelled(), now);
                }
            }
            State::ReaderMissing { .. } | State::PinBlocked { .. } => {}
        }
    }

    fn key_in_pin_entry(&mut self, key: KeyInput, now: Instant) {
        let State::PinEntry { reader, card, .. } = &self.state else {
            return;
        };
        match key {
            KeyInput::Enter if self.retry_pending(now) => {}
            KeyInput::Enter => {
                let (reader, card) = (reader.clone(), card.clone());
                match self.take_pin() {
                    Some(pin) => self.authenticate(reader, pin, Some(card), now),
                    None => self.tell_pin_too_short(),
                }
            }
            KeyInput::Escape => {
                let reader = reader.clone();
                self.abandon(&reader, Notice::cancelled(), now);
            }
            KeyInput::Other => {}
            KeyInput::Digit(_) | KeyInput::Backspace => {
                self.edit_pin(key, now, self.config.pin_entry_timeout);
            }
        }
    }

    fn key_in_pin_first(&mut self, key: KeyInput, now: Instant) {
        match key {
            KeyInput::Enter if self.typed_pin.len() < PIN_MIN_DIGITS => self.tell_pin_too_short(),
            // A badge already resting on a reader is used at once.
            KeyInput::Enter => {
                if let Some(reader) = self.cards.first().cloned() {
                    self.use_held_pin(reader, now);
                }
            }
            KeyInput::Escape => self.rest(None, now),
            KeyInput::Other => {}
            KeyInput::Digit(_) | KeyInput::Backspace => {
                self.edit_pin(key, now, self.config.pin_hold_timeout);
            }
        }
    }

    fn key_while_signed_in(&mut self, key: KeyInput, now: Instant) {
        let State::SignedIn {
            session,
            next_worker,
            ..
        } = &mut self.state
        else {
            return;
        };
        session.last_activity = now;
        let collects_next_pin =
            self.config.flow == Flow::PinThenTap && self.config.session.fast_user_switch;
        if !collects_next_pin {
            return;
        }
        match key {
            KeyInput::Escape => {
                *next_worker = None;
                self.clear_pin();
            }
            KeyInput::Enter | KeyInput::Other => {}
            KeyInput::Digit(_) | KeyInput::Backspace => {
                if next_worker.is_none() {
                    let prompt = self.new_prompt(now, None, None, self.config.pin_hold_timeout);
                    if let State::SignedIn { next_worker, .. } = &mut self.state {
                        *next_worker = Some(prompt);
                    }
                }
                self.edit_pin(key, now, self.config.pin_hold_timeout);
                if self.typed_pin.is_empty()
                    && let State::SignedIn { next_worker, .. } = &mut self.state
                {
                    *next_worker = None;
                }
            }
        }
    }

    fn key_while_waiting(&mut self, key: KeyInput, now: Instant) {
        match key {
            KeyInput::Digit(_) if self.config.flow == Flow::PinThenTap => {
                self.clear_pin();
                if apply_key_to_pin(&mut self.typed_pin, key) {
                    let prompt = self.new_prompt(now, None, None, self.config.pin_hold_timeout);
                    self.enter(State::PinFirst { prompt }, now);
                }
            }
            KeyInput::Escape => self.rest(None, now),
            KeyInput::Digit(_) | KeyInput::Backspace | KeyInput::Enter | KeyInput::Other => {}
        }
    }

    /// Applies a digit or Backspace to the typed PIN and the prompt showing it.
    fn edit_pin(&mut self, key: KeyInput, now: Instant, timeout: Duration) {
        if !apply_key_to_pin(&mut self.typed_pin, key) {
            return;
        }
        let digits = self.typed_pin.len();
        if let Some(prompt) = self.prompt_mut() {
            prompt.digits = digits;
            prompt.notice = None;
            prompt.forget_at = later(prompt.retry_at.map_or(now, |at| at.max(now)), timeout);
        }
    }

    fn tell_pin_too_short(&mut self) {
        let notice = self.notify(Notice::pin_too_short());
        if let Some(prompt) = self.prompt_mut() {
            prompt.notice = Some(notice);
        }
    }

    fn prompt_mut(&mut self) -> Option<&mut PinPrompt> {
        match &mut self.state {
            State::PinEntry { prompt, .. }
            | State::PinFirst { prompt }
            | State::SignedIn {
                next_worker: Some(prompt),
                ..
            } => Some(prompt),
            _ => None,
        }
    }

    fn new_prompt(
        &self,
        now: Instant,
        tries_left: Option<u8>,
        notice: Option<Notice>,
        timeout: Duration,
    ) -> PinPrompt {
        let retry_at = self.retry_not_before.filter(|at| *at > now);
        PinPrompt {
            digits: self.typed_pin.len(),
            tries_left,
            retry_at,
            notice,
            forget_at: later(retry_at.unwrap_or(now), timeout),
        }
    }

    fn retry_pending(&self, now: Instant) -> bool {
        self.retry_not_before.is_some_and(|at| at > now)
    }

    /// The typed PIN, if it is a valid one; the buffer is cleared when it is taken.
    fn take_pin(&mut self) -> Option<Pin> {
        let pin = Pin::new(&self.typed_pin).ok()?;
        self.clear_pin();
        Some(pin)
    }

    fn clear_pin(&mut self) {
        self.typed_pin.zeroize();
    }

    // --- sessions ---

    fn sign_out(&mut self, reason: SignOutReason, now: Instant) {
        if let Some(session) = self.end_session(reason) {
            let notice = Notice::signed_out(&session.user.display_name, reason);
            self.rest(Some(notice), now);
        } else {
            // During a fast user switch: the waiting worker is signed out, the new sign-in goes on.
            self.end_waiting_session(reason);
        }
    }

    /// The server ended the session: the worker is signed out with a message naming why.
    /// During a fast user switch the session the runtime checks is the waiting worker's.
    fn ended_at_server(&mut self, reason: Option<SessionEndReason>, now: Instant) {
        if let Some(session) = self.end_session(SignOutReason::EndedAtServer) {
            let notice = Notice::ended_at_server(&session.user.display_name, reason);
            self.rest(Some(notice), now);
        } else {
            self.end_waiting_session(SignOutReason::EndedAtServer);
        }
    }

    /// The kiosk is stopping: any session ends ([`SignOutReason::Shutdown`]), card work stops
    /// and a typed PIN is wiped.
    fn shut_down(&mut self, now: Instant) {
        self.end_waiting_session(SignOutReason::Shutdown);
        self.end_session(SignOutReason::Shutdown);
        if let Some(reader) = self.reader_in_use() {
            self.effects.push(Effect::CancelCardWork { reader });
        }
        self.rest(None, now);
    }

    /// Ends the session waiting for a fast user switch, if there is one.
    fn end_waiting_session(&mut self, reason: SignOutReason) {
        if let Some(session) = self.switching_from.take() {
            self.publish_signed_out(&session, reason);
        }
    }

    fn publish_signed_out(&mut self, session: &Session, reason: SignOutReason) {
        self.publish(SessionEvent::SignedOut {
            user: session.user.clone(),
            user_id: session.user.id.clone(),
            reason,
        });
        self.effects.push(Effect::DropSession);
    }

    /// Publishes the end of the current session, if there is one; the caller moves on.
    fn end_session(&mut self, reason: SignOutReason) -> Option<Session> {
        let State::SignedIn { session, .. } = &self.state else {
            return None;
        };
        let session = session.clone();
        self.publish_signed_out(&session, reason);
        Some(session)
    }

    fn idle_deadline(&self, session: &Session) -> Option<Instant> {
        let kept_by_badge = self.config.session.sign_out_on_removal && session.card_present;
        let timeout = self
            .config
            .session
            .idle_timeout
            .filter(|_| !kept_by_badge)?;
        Some(later(session.last_activity, timeout))
    }

    /// The session ends soon for `reason`: show it and publish `session_ending`.
    fn warn(&mut self, reason: SignOutReason, now: Instant) {
        let State::SignedIn { session, .. } = &self.state else {
            return;
        };
        let ends_at = match reason {
            SignOutReason::Idle => match self.idle_deadline(session) {
                Some(at) => at,
                None => return,
            },
            _ => session.ends_at,
        };
        let user_id = session.user.id.clone();
        if let State::SignedIn { session, .. } = &mut self.state {
            session.warning = Some(SessionWarning { reason, ends_at });
        }
        let seconds_left = ends_at
            .saturating_duration_since(now)
            .as_millis()
            .div_ceil(1000);
        self.publish(SessionEvent::SessionEnding {
            user_id,
            reason,
            seconds_left: u64::try_from(seconds_left).unwrap_or(u64::MAX),
        });
    }

    /// Activity (a key, a tap) moved the idle sign-out away: the idle warning goes.
    fn withdraw_idle_warning(&mut self, now: Instant) {
        let State::SignedIn { session, .. } = &self.state else {
            return;
        };
        let Some(SessionWarning {
            reason: SignOutReason::Idle,
            ..
        }) = session.warning
        else {
            return;
        };
        let lead = self.config.session.warning_lead;
        let still_due = self
            .idle_deadline(session)
            .is_some_and(|at| at <= later(now, lead));
        if !still_due && let State::SignedIn { session, .. } = &mut self.state {
            session.warning = None;
        }
    }

    // --- the server ---

    fn on_server_reachable(&mut self, now: Instant) {
        self.server = ServerStatus::Connected;
        self.server_seen = Some(now);
        if matches!(self.state, State::ServerUnreachable { .. }) {
            self.rest(None, now);
        }
        self.resume_sign_in(now);
    }

    /// The server is back: a badge still on the reader whose sign-in the server's absence
    /// stopped is read again (tap then PIN), as if tapped anew. Nothing was spent on the
    /// card: the PIN goes to the card only once a challenge is in hand, and a PIN checked
    /// before the server failed was right (the card counts only wrong ones). With PIN then
    /// tap the resting badge is used as soon as the PIN is typed, so nothing is needed.
    fn resume_sign_in(&mut self, now: Instant) {
        if self.config.flow != Flow::TapThenPin
            || !matches!(self.state, State::WaitingForCard { notice: None })
        {
            return;
        }
        if let Some(reader) = self.resume_reader.take()
            && self.cards.contains(&reader)
        {
            self.start_sign_in(reader, now);
        }
    }

    /// The server cannot be used (`status` says why): a resting kiosk says so; work under way
    /// finds out by itself.
    fn on_server_problem(&mut self, status: ServerStatus, now: Instant) {
        self.server = status;
        if matches!(
            self.state,
            State::WaitingForCard { notice: None } | State::ServerUnreachable { .. }
        ) {
            self.rest(None, now);
        }
    }

    /// What to tell the worker while the server cannot be used.
    fn server_notice(&self) -> Option<Notice> {
        match self.server {
            ServerStatus::Connected => None,
            ServerStatus::Unreachable => Some(Notice::server_unreachable()),
            ServerStatus::Untrusted => Some(Notice::server_untrusted(&self.config.help_contact)),
            ServerStatus::Refusing { code } => {
                Some(Notice::server_refused(code, &self.config.help_contact))
            }
        }
    }

    // --- time ---

    fn next_timer(&self) -> Option<(Instant, Timer)> {
        let mut timers = Vec::with_capacity(3);
        if let Some(at) = self.notice_until {
            timers.push((at, Timer::NoticeOver));
        }
        if let Some(waiting) = &self.switching_from {
            timers.push((waiting.ends_at, Timer::SessionExpired));
        }
        match &self.state {
            State::ReadingCard { started_at, .. } | State::Working { started_at, .. } => {
                timers.push((
                    later(*started_at, self.config.work_timeout),
                    Timer::WorkTimedOut,
                ));
            }
            State::PinEntry { prompt, .. } | State::PinFirst { prompt } => {
                if let Some(at) = prompt.retry_at {
                    timers.push((at, Timer::RetryAllowed));
                }
                timers.push((prompt.forget_at, Timer::PinForgotten));
            }
            State::SignedIn {
                session,
                next_worker,
                pin_change,
            } => {
                timers.push((session.ends_at, Timer::SessionExpired));
                if let Some(at) = self.idle_deadline(session) {
                    timers.push((at, Timer::SessionIdle));
                }
                let lead = self.config.session.warning_lead;
                let warned = session.warning.map(|warning| warning.reason);
                if !lead.is_zero() && warned != Some(SignOutReason::Expired) {
                    let at = session.ends_at.checked_sub(lead).unwrap_or(session.ends_at);
                    timers.push((at, Timer::ExpiryWarning));
                }
                if let Some(idle_at) = self
                    .idle_deadline(session)
                    .filter(|_| !lead.is_zero() && warned.is_none())
                {
                    let at = idle_at.checked_sub(lead).unwrap_or(idle_at);
                    timers.push((at.max(session.last_activity), Timer::IdleWarning));
                }
                if let Some(prompt) = next_worker {
                    timers.push((prompt.forget_at, Timer::PinForgotten));
                }
                if let Some(form) = pin_change {
                    timers.push((form.deadline, Timer::PinFormDeadline));
                }
            }
            State::PinBlocked {
                unblock: Some(form),
                ..
            } => timers.push((form.deadline, Timer::PinFormDeadline)),
            State::ReaderMissing { .. }
            | State::WaitingForCard { .. }
            | State::PinBlocked { .. }
            | State::ServerUnreachable { .. }
            | State::Error { .. } => {}
        }
        timers.into_iter().min_by_key(|(at, _)| *at)
    }

    /// Fires every deadline due by `now`, earliest first. Each firing removes its deadline.
    fn advance_time(&mut self, now: Instant) {
        while let Some((at, timer)) = self.next_timer() {
            if at > now {
                break;
            }
            self.fire(timer, now);
        }
    }

    fn fire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::NoticeOver => {
                self.notice_until = None;
                if matches!(
                    self.state,
                    State::Error { .. } | State::WaitingForCard { notice: Some(_) }
                ) {
                    self.rest(None, now);
                }
            }
            Timer::WorkTimedOut => {
                if let State::ReadingCard { reader, .. } | State::Working { reader, .. } =
                    &self.state
                {
                    let reader = reader.clone();
                    self.effects.push(Effect::CancelCardWork {
                        reader: reader.clone(),
                    });
                    self.show_error(reader, Notice::work_timed_out(), now);
                }
            }
            Timer::RetryAllowed => {
                if let Some(prompt) = self.prompt_mut() {
                    prompt.retry_at = None;
                    let tries_left = prompt.tries_left;
                    self.publish(SessionEvent::PinRequired { tries_left });
                }
            }
            Timer::PinForgotten => match &mut self.state {
                State::PinEntry { reader, .. } => {
                    let reader = reader.clone();
                    self.clear_pin();
                    self.effects.push(Effect::CancelCardWork {
                        reader: reader.clone(),
                    });
                    self.show_error(reader, Notice::pin_entry_timed_out(), now);
                }
                State::PinFirst { .. } => self.give_up(Notice::pin_forgotten(), now),
                State::SignedIn { next_worker, .. } => {
                    *next_worker = None;
                    self.clear_pin();
                }
                _ => {}
            },
            Timer::SessionExpired => self.sign_out(SignOutReason::Expired, now),
            Timer::SessionIdle => self.sign_out(SignOutReason::Idle, now),
            Timer::ExpiryWarning => self.warn(SignOutReason::Expired, now),
            Timer::IdleWarning => self.warn(SignOutReason::Idle, now),
            Timer::PinFormDeadline => self.pin_form_deadline(now),
        }
    }

    fn schedule_next_tick(&mut self) {
        let next = self.next_timer().map(|(at, _)| at);
        if next != self.scheduled_tick {
            if let Some(at) = next {
                self.effects.push(Effect::ScheduleTick { at });
            }
            self.scheduled_tick = next;
        }
    }

    // --- moving between states ---

    /// Stops the work on `reader`'s card and returns to waiting, saying why.
    fn abandon(&mut self, reader: &str, notice: Notice, now: Instant) {
        self.effects.push(Effect::CancelCardWork {
            reader: reader.to_owned(),
        });
        self.give_up(notice, now);
    }

    /// Returns to waiting, saying why.
    fn give_up(&mut self, notice: Notice, now: Instant) {
        let notice = self.notify(notice);
        self.rest(Some(notice), now);
    }

    fn show_error(&mut self, reader: String, notice: Notice, now: Instant) {
        let notice = self.notify(notice);
        self.enter(State::Error { reader, notice }, now);
    }

    /// Goes to the state the kiosk rests in when nothing is going on, clearing any typed PIN:
    /// no reader, a notice to show, the server down, or waiting for a tap.
    fn rest(&mut self, notice: Option<Notice>, now: Instant) {
        self.clear_pin();
        self.pin_badge = None;
        self.pin_awaiting_read = None;
        self.unblocked_prompt_notice = None;
        if let Some(mut session) = self.switching_from.take() {
            // The new worker's sign-in did not happen: the waiting worker carries on.
            session.card_present = self.cards.contains(&session.reader);
            let next = State::SignedIn {
                session,
                next_worker: None,
                pin_change: None,
            };
            self.enter(next, now);
            return;
        }
        let told = notice.as_ref().map(|notice| notice.code);
        let next = if self.readers.is_empty() {
            State::ReaderMissing {
                notice: if !self.reader_service_available {
                    Notice::reader_service_down(&self.config.help_contact)
                } else if self.filtered_out.is_empty() {
                    Notice::no_reader()
                } else {
                    Notice::no_matching_reader(&self.filtered_out, &self.config.help_contact)
                },
            }
        } else if notice.is_some() {
            State::WaitingForCard { notice }
        } else if let Some(notice) = self.server_notice() {
            State::ServerUnreachable { notice }
        } else {
            State::WaitingForCard { notice: None }
        };
        if let State::ReaderMissing { notice: shown } | State::ServerUnreachable { notice: shown } =
            &next
        {
            // A server problem that changes its kind (unreachable, then not trusted) is news,
            // and so is another reader seen that the filter leaves out.
            let newly = mem::discriminant(&self.state) != mem::discriminant(&next)
                || matches!(&self.state, State::ServerUnreachable { notice } if notice != shown)
                || (shown.code == NoticeCode::NoMatchingReader
                    && matches!(&self.state, State::ReaderMissing { notice } if notice != shown));
            if newly && told != Some(shown.code) {
                self.publish(SessionEvent::Error(shown.clone()));
            }
        }
        self.enter(next, now);
    }

    /// Replaces the state, starting the notice's display time where it has one. Leaving a
    /// PIN change or unblock wipes the values it held.
    fn enter(&mut self, state: State, now: Instant) {
        if !matches!(state, State::ReadingCard { .. }) {
            // The badge's read is over, whichever way: a PIN held for it is wiped.
            self.pin_awaiting_read = None;
        }
        if !matches!(
            state,
            State::SignedIn {
                pin_change: Some(_),
                ..
            } | State::PinBlocked {
                unblock: Some(_),
                ..
            }
        ) {
            self.clear_form();
        }
        self.notice_until = match &state {
            State::WaitingForCard { notice: Some(_) } | State::Error { .. } => {
                Some(later(now, self.config.message_duration))
            }
            _ => None,
        };
        self.state = state;
    }

    fn publish(&mut self, event: SessionEvent) {
        self.effects.push(Effect::Publish(event));
    }

    /// Publishes `notice` as an `error` event and hands it back for the state.
    fn notify(&mut self, notice: Notice) -> Notice {
        self.publish(SessionEvent::Error(notice.clone()));
        notice
    }
}

impl fmt::Debug for Kiosk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kiosk")
            .field("state", &self.state)
            .field("readers", &self.readers)
            .field("cards", &self.cards)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Applies a digit (0-9, up to [`PIN_MAX_DIGITS`]) or Backspace to `typed_pin`; whether it changed.
fn apply_key_to_pin(typed_pin: &mut String, key: KeyInput) -> bool {
    match key {
        KeyInput::Digit(digit) if digit <= 9 && typed_pin.len() < PIN_MAX_DIGITS => {
            typed_pin.push(char::from(b'0' + digit));
            true
        }
        KeyInput::Backspace => typed_pin.pop().is_some(),
        KeyInput::Digit(_) | KeyInput::Enter | KeyInput::Escape | KeyInput::Other => false,
    }
}

/// Whether two reads are of the same badge: by card GUID, else by holder name; `None` when the
/// reads cannot tell.
fn same_badge(known: Option<&CardSummary>, card: &CardSummary) -> Option<bool> {
    let known = known?;
    match (&known.card_guid, &card.card_guid) {
        (Some(a), Some(b)) => Some(a == b),
        _ => match (&known.holder_name, &card.holder_name) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        },
    }
}

/// `delay` after `from`, saturating far in the future instead of overflowing.
fn later(from: Instant, delay: Duration) -> Instant {
    from.checked_add(delay.min(LONGEST_WAIT)).unwrap_or(from)
}
