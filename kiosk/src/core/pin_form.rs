//! PIN change after sign-in and unblock with the PUK on the blocked screen: the core's transitions for a [`PinForm`], from the request to the card's answer.
//!
//! A change asks for the current PIN, then the new PIN twice; an unblock asks for the PUK, then
//! the new PIN twice. The new PIN is checked against the [`PinPolicy`](pivtap_protocol::pin_policy::PinPolicy)
//! (and, for a change, against the current PIN) before the card is touched. The values are typed
//! into the same zeroizing buffer as a sign-in PIN and moved into two more zeroizing buffers as
//! each is accepted; they leave the core only inside [`Effect::ChangePin`] and
//! [`Effect::UnblockPin`], and are wiped when the form ends (or the kiosk leaves the state
//! holding it). When everything is typed but the badge is not on a reader, the form asks for a
//! tap and goes on with it; a badge that leaves during the card work is asked for again with the
//! values still held.

use std::time::Instant;

use pivtap_apdu::piv::{Pin, Puk};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::event::KeyInput;
use super::{
    Effect, Flow, Kiosk, Notice, PIN_MIN_DIGITS, PinForm, PinFormFailure, PinFormPurpose,
    PinFormStep, PinWorkFailure, SessionEvent, State, apply_key_to_pin, later,
};

impl Kiosk {
    /// The open form, if the state has one.
    pub(super) fn pin_form(&self) -> Option<&PinForm> {
        match &self.state {
            State::SignedIn {
                pin_change: Some(form),
                ..
            }
            | State::PinBlocked {
                unblock: Some(form),
                ..
            } => Some(form),
            _ => None,
        }
    }

    fn pin_form_mut(&mut self) -> Option<&mut PinForm> {
        match &mut self.state {
            State::SignedIn {
                pin_change: Some(form),
                ..
            }
            | State::PinBlocked {
                unblock: Some(form),
                ..
            } => Some(form),
            _ => None,
        }
    }

    /// Whether a form is open and not just showing how it ended.
    pub(super) fn pin_form_active(&self) -> bool {
        self.pin_form()
            .is_some_and(|form| form.step != PinFormStep::Finished)
    }

    /// Wipes the values a form holds.
    pub(super) fn clear_form(&mut self) {
        self.form_first.zeroize();
        self.form_new.zeroize();
    }

    // --- starting ---

    pub(super) fn on_change_pin_requested(&mut self, now: Instant) {
        if self.pin_form_active() {
            return;
        }
        let deadline = later(now, self.config.pin_entry_timeout);
        let State::SignedIn {
            session,
            next_worker,
            pin_change,
        } = &mut self.state
        else {
            return;
        };
        session.last_activity = now;
        *next_worker = None;
        *pin_change = Some(PinForm {
            purpose: PinFormPurpose::ChangePin,
            step: PinFormStep::CurrentPin,
            digits: 0,
            tries_left: None,
            notice: None,
            deadline,
        });
        self.clear_pin();
        self.clear_form();
        self.publish(SessionEvent::CurrentPinRequired { tries_left: None });
    }

    pub(super) fn on_unblock_requested(&mut self, now: Instant) {
        let deadline = later(now, self.config.pin_entry_timeout);
        let State::PinBlocked { unblock, .. } = &mut self.state else {
            return;
        };
        if unblock.is_some() {
            return;
        }
        *unblock = Some(PinForm {
            purpose: PinFormPurpose::Unblock,
            step: PinFormStep::Puk,
            digits: 0,
            tries_left: None,
            notice: None,
            deadline,
        });
        self.clear_pin();
        self.clear_form();
        self.publish(SessionEvent::PukRequired { tries_left: None });
    }

    // --- typing ---

    /// A key while a form is open.
    pub(super) fn key_in_form(&mut self, key: KeyInput, now: Instant) {
        if let State::SignedIn { session, .. } = &mut self.state {
            session.last_activity = now;
        }
        let Some(form) = self.pin_form() else {
            return;
        };
        let purpose = form.purpose;
        match (&form.step, key) {
            (PinFormStep::Finished, _) => self.close_form(),
            (PinFormStep::Working { .. }, _) => {}
            (_, KeyInput::Escape) => {
                self.fail_form(
                    PinFormFailure::Cancelled,
                    Notice::form_cancelled(purpose),
                    now,
                );
            }
            (PinFormStep::TapBadge, _) | (_, KeyInput::Other) => {}
            (_, KeyInput::Enter) => self.submit_form_field(now),
            (_, KeyInput::Digit(_) | KeyInput::Backspace) => {
                if apply_key_to_pin(&mut self.typed_pin, key) {
                    let digits = self.typed_pin.len();
                    let deadline = later(now, self.config.pin_entry_timeout);
                    if let Some(form) = self.pin_form_mut() {
                        form.digits = digits;
                        form.deadline = deadline;
                    }
                }
            }
        }
    }

    /// Enter on a typing step: accept the value and ask for the next, or say what is wrong.
    fn submit_form_field(&mut self, now: Instant) {
        let Some(form) = self.pin_form() else {
            return;
        };
        let (purpose, step) = (form.purpose, form.step.clone());
        match step {
            PinFormStep::CurrentPin => {
                if Pin::new(&self.typed_pin).is_err() {
                    self.form_notice(Notice::pin_too_short());
                    return;
                }
                self.accept_first_value();
                self.ask_new_pin(None, false);
            }
            PinFormStep::Puk => {
                if self.typed_pin.len() < PIN_MIN_DIGITS || Puk::new(&self.typed_pin).is_err() {
                    self.form_notice(Notice::puk_too_short());
                    return;
                }
                self.accept_first_value();
                self.ask_new_pin(None, false);
            }
            PinFormStep::NewPin => {
                let policy = self.config.pin_policy;
                let checked = match purpose {
                    PinFormPurpose::ChangePin => {
                        policy.check_change(&self.form_first, &self.typed_pin)
                    }
                    PinFormPurpose::Unblock => policy.check(&self.typed_pin),
                };
                if let Err(violation) = checked {
                    self.clear_pin();
                    let notice = Notice::pin_policy(violation);
                    self.publish_form_failure(purpose, PinFormFailure::Policy, &notice, None);
                    self.ask_new_pin(Some(notice), false);
                    return;
                }
                if Pin::new(&self.typed_pin).is_err() {
                    self.form_notice(Notice::pin_too_short());
                    return;
                }
                self.form_new.zeroize();
                self.form_new.push_str(&self.typed_pin);
                self.clear_pin();
                self.ask_new_pin(None, true);
            }
            PinFormStep::RepeatNewPin => {
                let same = self.typed_pin.len() == self.form_new.len()
                    && bool::from(self.typed_pin.as_bytes().ct_eq(self.form_new.as_bytes()));
                self.clear_pin();
                if !same {
                    self.form_new.zeroize();
                    let notice = Notice::pins_differ();
                    self.publish_form_failure(purpose, PinFormFailure::Mismatch, &notice, None);
                    self.ask_new_pin(Some(notice), false);
                    return;
                }
                self.start_pin_work(now);
            }
            PinFormStep::TapBadge | PinFormStep::Working { .. } | PinFormStep::Finished => {}
        }
    }

    /// Moves the typed current PIN or PUK into the form's first value.
    fn accept_first_value(&mut self) {
        self.form_first.zeroize();
        self.form_first.push_str(&self.typed_pin);
        self.clear_pin();
    }

    fn ask_new_pin(&mut self, notice: Option<Notice>, repeat: bool) {
        if let Some(form) = self.pin_form_mut() {
            form.step = if repeat {
                PinFormStep::RepeatNewPin
            } else {
                PinFormStep::NewPin
            };
            form.digits = 0;
            form.notice = notice;
        }
        self.publish(SessionEvent::NewPinRequired { repeat });
    }

    /// Shows `notice` on the form without changing its step.
    fn form_notice(&mut self, notice: Notice) {
        if let Some(form) = self.pin_form_mut() {
            form.notice = Some(notice);
        }
    }

    // --- the card ---

    /// Everything is typed: to the card if the badge is on a reader, else ask for a tap.
    fn start_pin_work(&mut self, now: Instant) {
        let reader = match &self.state {
            State::SignedIn { session, .. } => Some(&session.reader)
                .filter(|reader| self.cards.contains(*reader))
                .or_else(|| self.cards.first())
                .cloned(),
            State::PinBlocked { reader, .. } => Some(reader)
                .filter(|reader| self.cards.contains(*reader))
                .cloned(),
            _ => None,
        };
        match reader {
            Some(reader) => self.run_pin_work(reader, now),
            None => self.ask_for_tap(None, now),
        }
    }

    fn ask_for_tap(&mut self, notice: Option<Notice>, now: Instant) {
        let deadline = later(now, self.config.pin_entry_timeout);
        if let Some(form) = self.pin_form_mut() {
            let notice = notice.unwrap_or_else(|| Notice::tap_badge(form.purpose));
            form.step = PinFormStep::TapBadge;
            form.digits = 0;
            form.notice = Some(notice);
            form.deadline = deadline;
        }
        self.publish(SessionEvent::TapRequired);
    }

    /// Hands the held values to the card on `reader`.
    fn run_pin_work(&mut self, reader: String, now: Instant) {
        let Some(purpose) = self.pin_form().map(|form| form.purpose) else {
            return;
        };
        let work = self.next_work();
        let effect = match purpose {
            PinFormPurpose::ChangePin => Pin::new(&self.form_first)
                .and_then(|current| {
                    Ok(Effect::ChangePin {
                        work,
                        reader: reader.clone(),
                        current,
                        new: Pin::new(&self.form_new)?,
                    })
                })
                .ok(),
            PinFormPurpose::Unblock => Puk::new(&self.form_first)
                .and_then(|puk| {
                    Ok(Effect::UnblockPin {
                        work,
                        reader: reader.clone(),
                        puk,
                        new_pin: Pin::new(&self.form_new)?,
                    })
                })
                .ok(),
        };
        // The values were checked as they were typed, so this does not happen.
        let Some(effect) = effect else {
            self.fail_form(
                PinFormFailure::CardError,
                Notice::pin_work_failed(purpose),
                now,
            );
            return;
        };
        self.effects.push(effect);
        let deadline = later(now, self.config.work_timeout);
        if let Some(form) = self.pin_form_mut() {
            form.step = PinFormStep::Working { work, reader };
            form.digits = 0;
            form.notice = None;
            form.deadline = deadline;
        }
    }

    /// A tap while a form is open: when it waits for one, the card work starts.
    pub(super) fn tap_for_form(&mut self, reader: &str, now: Instant) {
        if self
            .pin_form()
            .is_some_and(|form| form.step == PinFormStep::TapBadge)
        {
            self.run_pin_work(reader.to_owned(), now);
        }
    }

    pub(super) fn on_pin_work_done(
        &mut self,
        work: super::WorkId,
        result: Result<(), PinWorkFailure>,
        now: Instant,
    ) {
        let Some(form) = self.pin_form() else {
            return;
        };
        if !matches!(&form.step, PinFormStep::Working { work: current, .. } if *current == work) {
            return;
        }
        let purpose = form.purpose;
        let help = self.config.help_contact.clone();
        match (purpose, result) {
            (PinFormPurpose::ChangePin, Ok(())) => {
                self.publish(SessionEvent::PinChanged);
                self.end_form(Notice::pin_changed(), now);
            }
            (PinFormPurpose::Unblock, Ok(())) => self.unblocked(now),
            (PinFormPurpose::ChangePin, Err(PinWorkFailure::WrongPin { tries_left }))
                if tries_left != Some(0) =>
            {
                self.clear_form();
                let notice = Notice::wrong_current_pin(tries_left);
                self.publish_form_failure(purpose, PinFormFailure::WrongPin, &notice, tries_left);
                let deadline = later(now, self.config.pin_entry_timeout);
                if let Some(form) = self.pin_form_mut() {
                    form.step = PinFormStep::CurrentPin;
                    form.digits = 0;
                    form.tries_left = tries_left;
                    form.notice = Some(notice);
                    form.deadline = deadline;
                }
                self.publish(SessionEvent::CurrentPinRequired { tries_left });
            }
            (PinFormPurpose::Unblock, Err(PinWorkFailure::WrongPuk { tries_left }))
                if tries_left != Some(0) =>
            {
                self.clear_form();
                let notice = Notice::wrong_puk(tries_left);
                self.publish_form_failure(purpose, PinFormFailure::WrongPuk, &notice, tries_left);
                let deadline = later(now, self.config.pin_entry_timeout);
                if let Some(form) = self.pin_form_mut() {
                    form.step = PinFormStep::Puk;
                    form.digits = 0;
                    form.tries_left = tries_left;
                    form.notice = Some(notice);
                    form.deadline = deadline;
                }
                self.publish(SessionEvent::PukRequired { tries_left });
            }
            (
                PinFormPurpose::ChangePin,
                Err(PinWorkFailure::WrongPin { .. } | PinWorkFailure::PinBlocked),
            ) => {
                let notice = Notice::pin_blocked_while_changing(&help);
                self.fail_form(PinFormFailure::PinBlocked, notice, now);
            }
            (
                PinFormPurpose::Unblock,
                Err(PinWorkFailure::WrongPuk { .. } | PinWorkFailure::PukBlocked),
            ) => {
                self.fail_form(PinFormFailure::PukBlocked, Notice::puk_blocked(&help), now);
            }
            (_, Err(PinWorkFailure::CardRemoved)) => {
                let notice = Notice::badge_left(purpose);
                self.publish_form_failure(purpose, PinFormFailure::CardRemoved, &notice, None);
                self.ask_for_tap(Some(notice), now);
            }
            (_, Err(PinWorkFailure::OtherCard)) => {
                let notice = Notice::other_card();
                self.publish_form_failure(purpose, PinFormFailure::OtherCard, &notice, None);
                self.ask_for_tap(Some(notice), now);
            }
            (_, Err(_)) => {
                self.fail_form(
                    PinFormFailure::CardError,
                    Notice::pin_work_failed(purpose),
                    now,
                );
            }
        }
    }

    /// The PUK set a new PIN: the badge can sign in again.
    fn unblocked(&mut self, now: Instant) {
        let State::PinBlocked { reader, .. } = &self.state else {
            return;
        };
        let reader = reader.clone();
        self.clear_form();
        self.wrong_pins_in_a_row = 0;
        self.retry_not_before = None;
        self.publish(SessionEvent::CardUnblocked);
        if self.config.flow == Flow::TapThenPin && self.cards.contains(&reader) {
            // The badge is still there: straight on to the PIN prompt, which confirms the unblock.
            self.start_sign_in(reader, now);
            self.unblocked_prompt_notice = Some(Notice::card_unblocked_enter_pin());
        } else {
            // Not an error: the event stream already heard `card_unblocked`.
            self.rest(Some(Notice::card_unblocked(self.config.flow)), now);
        }
    }

    // --- ending ---

    /// Ends the form for good, saying why, and tells the event stream.
    fn fail_form(&mut self, reason: PinFormFailure, notice: Notice, now: Instant) {
        if let Some(purpose) = self.pin_form().map(|form| form.purpose) {
            self.publish_form_failure(purpose, reason, &notice, None);
        }
        self.end_form(notice, now);
    }

    /// Ends the form with `notice`: a PIN change shows it for a while; an unblock puts it on
    /// the blocked screen (or, when the badge has left, on the waiting screen).
    fn end_form(&mut self, notice: Notice, now: Instant) {
        self.clear_pin();
        self.clear_form();
        let deadline = later(now, self.config.message_duration);
        let mut badge_gone = false;
        match &mut self.state {
            State::SignedIn {
                pin_change: Some(form),
                ..
            } => {
                form.step = PinFormStep::Finished;
                form.digits = 0;
                form.tries_left = None;
                form.notice = Some(notice.clone());
                form.deadline = deadline;
            }
            State::PinBlocked {
                reader,
                notice: shown,
                unblock,
            } => {
                *unblock = None;
                *shown = notice.clone();
                badge_gone = !self.cards.contains(reader.as_str());
            }
            _ => {}
        }
        if badge_gone {
            self.rest(Some(notice), now);
        }
    }

    /// Closes a form without a word (a finished one, on a key or when its message is over).
    fn close_form(&mut self) {
        self.clear_pin();
        self.clear_form();
        match &mut self.state {
            State::SignedIn { pin_change, .. } => *pin_change = None,
            State::PinBlocked { unblock, .. } => *unblock = None,
            _ => {}
        }
    }

    /// The form's deadline passed.
    pub(super) fn pin_form_deadline(&mut self, now: Instant) {
        let Some(form) = self.pin_form() else {
            return;
        };
        let purpose = form.purpose;
        match form.step.clone() {
            PinFormStep::Finished => self.close_form(),
            PinFormStep::Working { reader, .. } => {
                self.effects.push(Effect::CancelCardWork { reader });
                self.fail_form(
                    PinFormFailure::TimedOut,
                    Notice::pin_work_timed_out(purpose),
                    now,
                );
            }
            _ => self.fail_form(
                PinFormFailure::TimedOut,
                Notice::form_timed_out(purpose),
                now,
            ),
        }
    }

    fn publish_form_failure(
        &mut self,
        purpose: PinFormPurpose,
        reason: PinFormFailure,
        notice: &Notice,
        tries_left: Option<u8>,
    ) {
        let message = notice.message.clone();
        self.publish(match purpose {
            PinFormPurpose::ChangePin => SessionEvent::PinChangeFailed {
                reason,
                message,
                tries_left,
            },
            PinFormPurpose::Unblock => SessionEvent::UnblockFailed {
                reason,
                message,
                tries_left,
            },
        });
    }
}
